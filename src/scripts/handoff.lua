-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key, KEYS[4] waiters marker,
-- KEYS[5] queue of waiting processes;
-- ARGV[1] the holder's token, ARGV[2] the next holder's token, ARGV[3] its lease in ms,
-- ARGV[4] its "<pid>\n<host>\n<label>", ARGV[5] its acquisition time (ms since the epoch,
-- on the client's clock), ARGV[6] '1' when the holder's process has spent its budget of
-- hand-offs in a row, ARGV[7] that process's id in the queue, ARGV[8] the release
-- channel, ARGV[9] the reservation in ms (queue.lua).
-- Passes the lock from the holder to the next holder of the same process in one step,
-- only while it still holds the holder's token: the key never is free, nor owned by
-- both. Returns {fencing token, next token} (the token echoed so that the client can
-- tell this reply from another's), else nil and nothing is written.
--
-- With the budget spent and other processes in the queue, the turn goes to the first
-- of them instead, and the holder's process queues again at the end (its next holder
-- waits for its turn there): returns {0, next token} (no fencing token is 0). With no
-- process queued but the waiters marker there, the key is released: {-1, next token}.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
if ARGV[6] == '1' then
  local queued = redis.call('LREM', KEYS[5], 0, ARGV[7])
  if pass_turn(KEYS[1], KEYS[3], KEYS[5], ARGV[8], ARGV[9], ARGV[7]) then
    return {0, ARGV[2]}
  end
  if queued > 0 then
    -- Nobody else in line: the process keeps its place, which is another waiter's of
    -- its own (a BasicLock, a plain turn's holder): taken out, it would hear of no
    -- release. (The list may have been emptied, and so deleted, by the LREM: it
    -- needs an expiry again, as long as the lease it queues for.)
    redis.call('RPUSH', KEYS[5], ARGV[7])
    redis.call('PEXPIRE', KEYS[5], ARGV[3])
  end
  if redis.call('PTTL', KEYS[4]) ~= -2 then
    -- Waiters with 1.x compatibility that are not in line marked themselves: the
    -- key is freed and they are woken, and the holder's next task lets them try first.
    redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
    redis.call('PUBLISH', ARGV[8], 'released')
    return {-1, ARGV[2]}
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], fence .. '\n' .. ARGV[5] .. '\n' .. ARGV[4], 'PX', ARGV[3])
-- Waiters of other processes stay announced for as long as the new lease, as after a
-- renewal (no-ops when none waits).
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call('PEXPIRE', KEYS[5], ARGV[3])
return {fence, ARGV[2]}
