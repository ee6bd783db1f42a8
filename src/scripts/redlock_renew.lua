-- Redlock, one node. KEYS[1] lock key, KEYS[2] owner key; ARGV[1] owner token,
-- ARGV[2] lease in ms.
-- Returns {1, token} when the key held our token and was extended, {2, token} when the
-- key was missing (the node restarted empty, or was unreachable while it expired) and
-- is ours again (SET NX: never over another token), {0, token} when another token
-- holds it.
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, ARGV[1]}
end
if value == false and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, ARGV[1]}
end
return {0, ARGV[1]}
