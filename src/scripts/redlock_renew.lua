-- Redlock, one node. KEYS[1] lock key, KEYS[2] owner key, KEYS[3] revoked key;
-- ARGV[1] owner token, ARGV[2] lease in ms.
-- Returns {1, token} when the key held our token and was extended; {2, token} when
-- the key was missing (the node restarted empty, or our lease ran out on it while it
-- was unreachable) and is ours again: SET NX, never over another token; {0, token}
-- when another token holds it, or when our token was force-released here (the revoked
-- key names it until our lease would have ended).
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, ARGV[1]}
end
if value == false and redis.call('GET', KEYS[3]) ~= ARGV[1]
    and redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2, ARGV[1]}
end
return {0, ARGV[1]}
