-- KEYS[1] lock key, KEYS[2] fence key; ARGV[1] owner token, ARGV[2] lease in ms.
-- Returns {1, fencing token} when the lock is ours, {0, holder's PTTL} otherwise.
-- GET (not SET NX) first, so that a retry of an attempt whose reply was lost finds its
-- own token and succeeds instead of waiting a whole lease for itself; GET also makes a
-- non-string value at the key a WRONGTYPE error instead of a lock that never frees.
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, redis.call('INCR', KEYS[2])}
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
