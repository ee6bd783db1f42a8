-- acquire.lua for a lock with rdlock 1.x compatibility (Lock::with_v1_compat).
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key, KEYS[4] waiters marker,
-- KEYS[5] the 1.x key (/rdlock/<id>/.lock, which 1.x takes with SET NX EX and releases
-- with DEL), KEYS[6] the queue of waiting processes; ARGV[1] owner token, ARGV[2] lease
-- in ms, ARGV[3] "<pid>\n<host>\n<label>", ARGV[4] the time of the attempt, unix ms by
-- the client's clock, ARGV[5] the caller's process id ('' for try_lock: no queue),
-- ARGV[6] '1' when that process may be in the queue, ARGV[7] the release channel.
-- The lock is free only when both keys are; then both take our token with the same
-- lease, in this one script, so that a 1.x process's SET NX fails while we hold it.
-- A 1.x holder is reported like any holder: {0, PTTL of its key, token}.
-- A failed attempt queues the process as acquire.lua does, and takes a turn reserved
-- for it once the 1.x key is free too (waiters that did not queue starved while
-- processes without compatibility took turns: tests/queue_review2.rs); it also writes
-- the waiters marker, which makes a release that frees the key publish `released`.
-- Replies as acquire.lua. Single server only: KEYS[5] is outside the hash tag.
local ours = ARGV[5] ~= '' and 'q:' .. ARGV[5]
local claimed = false
for _, key in ipairs({KEYS[1], KEYS[5]}) do
  local pttl = redis.call('PTTL', key)
  if pttl ~= -2 then
    if pttl == -1 and redis.call('TYPE', key).ok ~= 'string' then
      return redis.error_reply('WRONGTYPE the lock key holds a value that is not a lock')
    end
    if key == KEYS[1] and pttl >= 0 and ours and redis.call('GET', key) == ours then
      -- This process's turn: ours if the 1.x key is free too.
      claimed = true
    else
      if pttl >= 0 then
        redis.call('SET', KEYS[4], '1', 'PX', math.max(pttl, 1))
        if ours then
          enqueue(KEYS[6], ARGV[5], pttl)
        end
      end
      return {0, pttl, ARGV[1]}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], fence .. '\n' .. ARGV[4] .. '\n' .. ARGV[3], 'PX', ARGV[2])
if ours and (claimed or ARGV[6] == '1') then
  redis.call('LREM', KEYS[6], 0, ARGV[5])
  local ttl = redis.call('PTTL', KEYS[6])
  if ttl > 0 and ttl < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[6], ARGV[2])
  end
  if #redis.call('LRANGE', KEYS[6], 0, 0) > 0 then
    redis.call('PUBLISH', ARGV[7], 'claimed')
  end
end
return {1, fence, ARGV[1]}
