-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key;
-- ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] "<pid>\n<host>\n<label>".
-- Returns {1, fencing token} when the lock is now ours, {0, holder's PTTL} otherwise.
-- GET rather than SET NX: a non-string value at the key is then a WRONGTYPE error
-- instead of a lock that never frees.
if redis.call('GET', KEYS[1]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = string.format('%d%03d', now[1], math.floor(tonumber(now[2]) / 1000))
redis.call('SET', KEYS[3], fence .. '\n' .. ms .. '\n' .. ARGV[3], 'PX', ARGV[2])
return {1, fence}
