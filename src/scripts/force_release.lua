-- KEYS[1] lock key, KEYS[2] owner key; ARGV[1] release channel.
-- The administrator's escape hatch: deletes the lock whoever holds it and wakes waiters.
-- Returns 1 if the lock was held.
local held = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[1], 'released')
return held
