-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker, KEYS[4] queue of waiting
-- processes; ARGV[1] the process id, ARGV[2] release channel, ARGV[3] the reservation
-- in ms (queue.lua).
-- A process no longer waits for the lock (its last waiter gave up: a deadline, a
-- cancelled future, shutdown): it leaves the queue, and a turn reserved for it passes
-- on to the next process in line (or, when none, the key is freed). Returns 1 when a
-- reservation of ours was passed on or freed, else 0.
redis.call('LREM', KEYS[4], 0, ARGV[1])
if redis.call('GET', KEYS[1]) ~= 'q:' .. ARGV[1] then
  return 0
end
if not pass_turn(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[3], false) then
  if redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) ~= 1 then
    redis.call('PUBLISH', ARGV[2], 'released')
  end
end
return 1
