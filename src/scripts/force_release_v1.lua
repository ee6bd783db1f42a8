-- force_release.lua for a lock with rdlock 1.x compatibility.
-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker, KEYS[4] the 1.x key;
-- ARGV[1] release channel; ARGV[2], optional, the fencing token of the acquisition to
-- delete. The marker is deleted with the owner record, as in force_release.lua.
-- Without ARGV[2], deletes both keys whoever holds them (a 1.x holder too). With it,
-- as force_release.lua, deleting the 1.x key together with the lock key when it holds
-- the same token (that acquisition's); a 1.x holder alone (no lock key) has no owner
-- record and counts as fencing token 0, as Lock::holder shows it. 1.x stores a
-- constant, so one 1.x holder cannot be told from the next.
-- Returns 1 if a lock was deleted, 0 if it was not held or held by another acquisition.
local held = 0
if ARGV[2] then
  if redis.call('PTTL', KEYS[1]) == -2 then
    if ARGV[2] ~= '0' or redis.call('PTTL', KEYS[4]) == -2 then
      return 0
    end
    held = redis.call('DEL', KEYS[4])
  else
    local record = redis.call('GET', KEYS[2])
    local fence = record and string.match(record, '^(%d+)\n') or '0'
    if fence ~= ARGV[2] then
      return 0
    end
    local token = redis.pcall('GET', KEYS[1])
    if type(token) == 'string' and redis.pcall('GET', KEYS[4]) == token then
      redis.call('DEL', KEYS[4])
    end
    held = redis.call('DEL', KEYS[1])
    redis.call('DEL', KEYS[2], KEYS[3])
  end
else
  if redis.call('DEL', KEYS[1]) + redis.call('DEL', KEYS[4]) > 0 then
    held = 1
  end
  redis.call('DEL', KEYS[2], KEYS[3])
end
redis.call('PUBLISH', ARGV[1], 'released')
return held
