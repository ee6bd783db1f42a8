-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key, KEYS[4] queue of waiting
-- processes; ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] "<pid>\n<host>\n<label>",
-- ARGV[4] the time of the attempt, unix ms by the client's clock (the owner record's
-- acquisition time: reading the server's TIME cost a command per acquisition),
-- ARGV[5] the caller's process id in the queue ('' for an attempt that must not queue:
-- try_lock), ARGV[6] '1' when that process may be in the queue (it leaves it on
-- success), ARGV[7] the lock's release channel.
-- Returns {1, fencing token, token} when the lock is now ours, {0, holder's PTTL, token}
-- otherwise. The token is echoed so that the client can tell this reply from another's.
-- SET NX first: the uncontended acquisition, the common case, costs three commands.
local function take(claimed)
  local queued = claimed or ARGV[6] == '1'
  if queued then
    redis.call('LREM', KEYS[4], 0, ARGV[5])
    -- The queue outlives the lock it queues for (see queue.lua).
    local ttl = redis.call('PTTL', KEYS[4])
    if ttl > 0 and ttl < tonumber(ARGV[2]) then
      redis.call('PEXPIRE', KEYS[4], ARGV[2])
    end
  end
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[3], fence .. '\n' .. ARGV[4] .. '\n' .. ARGV[3], 'PX', ARGV[2])
  if queued and #redis.call('LRANGE', KEYS[4], 0, 0) > 0 then
    -- The standbys named by the last turn message stand down (see queue.lua): this
    -- process claimed its turn, or (after a turn not claimed in time) took the lock.
    redis.call('PUBLISH', ARGV[7], 'claimed')
  end
  return {1, fence, ARGV[1]}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return take(false)
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then
  -- A key without expiry is not one of ours: refuse one that is not even a string,
  -- rather than wait for it forever. (Its waiters poll it: they do not queue.)
  if redis.call('TYPE', KEYS[1]).ok ~= 'string' then
    return redis.error_reply('WRONGTYPE the lock key holds a value that is not a lock')
  end
  return {0, pttl, ARGV[1]}
end
if ARGV[5] == '' then
  return {0, pttl, ARGV[1]}
end
if redis.call('GET', KEYS[1]) == 'q:' .. ARGV[5] then
  -- Our process's turn (reserved for it by queue.lua's pass_turn): ours now.
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return take(true)
end
-- Queued: the holder's release passes the turn to the first process in line and wakes
-- that one only.
enqueue(KEYS[4], ARGV[5], pttl)
return {0, pttl, ARGV[1]}
