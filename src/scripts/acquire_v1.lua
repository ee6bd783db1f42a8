-- acquire.lua for a lock with rdlock 1.x compatibility (Lock::with_v1_compat).
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key, KEYS[4] waiters marker,
-- KEYS[5] the 1.x key (/rdlock/<id>/.lock, which 1.x takes with SET NX EX and releases
-- with DEL); ARGV[1] owner token, ARGV[2] lease in ms, ARGV[3] "<pid>\n<host>\n<label>",
-- ARGV[4] the time of the attempt, unix ms by the client's clock.
-- The lock is free only when both keys are; then both take our token with the same
-- lease, in this one script, so that a 1.x process's SET NX fails while we hold it.
-- A 1.x holder is reported like any holder: {0, PTTL of its key, token}.
-- A failed attempt writes the waiters marker as acquire.lua does (release_v1.lua
-- publishes always, but a lock without compatibility on the same id may hold it).
-- Replies as acquire.lua. Single server only: KEYS[5] is outside the hash tag.
for _, key in ipairs({KEYS[1], KEYS[5]}) do
  local pttl = redis.call('PTTL', key)
  if pttl ~= -2 then
    if pttl == -1 and redis.call('TYPE', key).ok ~= 'string' then
      return redis.error_reply('WRONGTYPE the lock key holds a value that is not a lock')
    end
    if pttl >= 0 then
      redis.call('SET', KEYS[4], '1', 'PX', math.max(pttl, 1))
    end
    return {0, pttl, ARGV[1]}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], fence .. '\n' .. ARGV[4] .. '\n' .. ARGV[3], 'PX', ARGV[2])
return {1, fence, ARGV[1]}
