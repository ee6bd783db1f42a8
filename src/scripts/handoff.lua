-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key, KEYS[4] waiters marker;
-- ARGV[1] the holder's token, ARGV[2] the next holder's token, ARGV[3] its lease in ms,
-- ARGV[4] its "<pid>\n<host>\n<label>", ARGV[5] its acquisition time (ms since the epoch,
-- on the client's clock).
-- Passes the lock from the holder to the next holder in one step, only while it still
-- holds the holder's token: the key never is free, nor owned by both. Returns
-- {fencing token, next token} (the token echoed so that the client can tell this reply
-- from another's), else nil and nothing is written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], fence .. '\n' .. ARGV[5] .. '\n' .. ARGV[4], 'PX', ARGV[3])
-- Waiters of other processes stay announced for as long as the new lease, as after a
-- renewal (release.lua publishes only while the marker exists; a no-op when none waits).
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {fence, ARGV[2]}
