-- release.lua for a lock with rdlock 1.x compatibility.
-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker, KEYS[4] the 1.x key;
-- ARGV[1] owner token, ARGV[2] release channel.
-- Deletes each key that still holds our token and wakes waiters: 2.x waiters by the
-- message, 1.x waiters by the keyspace `del` of the 1.x key (they listen for nothing
-- else). Returns the token only when both keys were ours, else nil: a 1.x key that
-- another process holds, or that is gone (a 1.x process's unconditional DEL, after
-- which another 1.x process may have run), means the lock was not ours alone, and the
-- caller is told so, as a renewal would have told it. Unlike release.lua, it publishes
-- whether or not the waiters marker is there (1.x compatibility is a passing state).
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
-- pcall: a 1.x key of another type (written by hand) must not keep us from releasing.
local v1 = redis.pcall('GET', KEYS[4]) == ARGV[1]
if v1 then
  redis.call('DEL', KEYS[4])
end
if ours then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
end
if ours or v1 then
  redis.call('PUBLISH', ARGV[2], 'released')
end
if ours and v1 then
  return ARGV[1]
end
return false
