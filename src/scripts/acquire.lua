-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key, KEYS[4] waiters marker;
-- ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] "<pid>\n<host>\n<label>",
-- ARGV[4] the time of the attempt, unix ms by the client's clock (the owner record's
-- acquisition time: reading the server's TIME cost a command per acquisition).
-- Returns {1, fencing token, token} when the lock is now ours, {0, holder's PTTL, token}
-- otherwise. The token is echoed so that the client can tell this reply from another's.
-- SET NX first: the uncontended acquisition, the common case, costs three commands.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[3], fence .. '\n' .. ARGV[4] .. '\n' .. ARGV[3], 'PX', ARGV[2])
  return {1, fence, ARGV[1]}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then
  -- A key without expiry is not one of ours: refuse one that is not even a string,
  -- rather than wait for it forever. (Its waiters poll it: no marker.)
  if redis.call('TYPE', KEYS[1]).ok ~= 'string' then
    return redis.error_reply('WRONGTYPE the lock key holds a value that is not a lock')
  end
  return {0, pttl, ARGV[1]}
end
-- Someone waits: the release script publishes only while this marker exists. Its
-- expiry is the lock's own (never shorter: the renew and hand-off scripts extend both), so it is
-- there at every release of this holder; every failed attempt re-arms it.
redis.call('SET', KEYS[4], '1', 'PX', math.max(pttl, 1))
return {0, pttl, ARGV[1]}
