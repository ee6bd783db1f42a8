-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key;
-- ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] "<pid>\n<host>\n<label>".
-- Returns {1, fencing token, token} when the lock is now ours, {0, holder's PTTL, token}
-- otherwise. The token is echoed so that the client can tell this reply from another's.
-- PTTL first: a failed attempt, the common case under contention, costs one command.
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  -- A key without expiry is not one of ours: refuse one that is not even a string,
  -- rather than wait for it forever.
  if pttl == -1 and redis.call('TYPE', KEYS[1]).ok ~= 'string' then
    return redis.error_reply('WRONGTYPE the lock key holds a value that is not a lock')
  end
  return {0, pttl, ARGV[1]}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local ms = string.format('%d%03d', now[1], math.floor(tonumber(now[2]) / 1000))
redis.call('SET', KEYS[3], fence .. '\n' .. ms .. '\n' .. ARGV[3], 'PX', ARGV[2])
return {1, fence, ARGV[1]}
