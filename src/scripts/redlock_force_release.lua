-- Redlock, one node. KEYS[1] lock key, KEYS[2] owner key, KEYS[3] revoked key;
-- ARGV[1] release channel; ARGV[2], optional, the fencing token of the acquisition to
-- delete. As force_release.lua, and it records the deleted token in the revoked key
-- for the rest of its lease, so that the holder's renewal, which puts a missing key
-- back (a node that restarted empty), reports the loss instead of taking it back.
local pttl = redis.call('PTTL', KEYS[1])
if ARGV[2] then
  if pttl == -2 then
    return 0
  end
  local record = redis.call('GET', KEYS[2])
  local fence = record and string.match(record, '^(%d+)\n') or '0'
  if fence ~= ARGV[2] then
    return 0
  end
end
local token = redis.call('GET', KEYS[1])
if token and pttl > 0 then
  redis.call('SET', KEYS[3], token, 'PX', pttl)
end
local held = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[1], 'released')
return held
