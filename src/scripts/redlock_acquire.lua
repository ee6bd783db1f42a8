-- Redlock, one node. KEYS[1] lock key, KEYS[2] fence key; ARGV[1] owner token,
-- ARGV[2] lease in ms.
-- Returns {1, this node's fence counter, token, ''} when the key is now ours, {0,
-- holder's PTTL, token, SHA-1 of the holder's token} otherwise. The counter is only
-- read here: the fencing token is agreed on by a quorum afterwards (redlock_fence.lua).
-- The token is echoed so that the client can tell this reply from another's. The
-- holder's SHA-1 (never its token: the holder's secret) tells the client one holder's
-- quorum, whose release will wake it, from the minorities of a split vote, whose undos
-- wake nobody.
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  if pttl == -1 and redis.call('TYPE', KEYS[1]).ok ~= 'string' then
    return redis.error_reply('WRONGTYPE the lock key holds a value that is not a lock')
  end
  local holder = redis.pcall('GET', KEYS[1])
  if type(holder) ~= 'string' then
    holder = ''
  end
  return {0, pttl, ARGV[1], redis.sha1hex(holder)}
end
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if fence == nil then
  return redis.error_reply('ERR the fence key does not hold a counter')
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence, ARGV[1], ''}
