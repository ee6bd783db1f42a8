-- renew.lua for a lock with rdlock 1.x compatibility.
-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker, KEYS[4] the 1.x key;
-- ARGV[1] owner token, ARGV[2] lease in ms.
-- Extends all four (the marker when it exists) only while both the lock key and the
-- 1.x key hold our token.
-- Otherwise the lock is no longer ours alone: nil, as for a lost lock (nothing is
-- extended). That includes a 1.x key that is merely gone: 1.x releases with an
-- unconditional DEL, so a 1.x process whose TTL ran out can delete our 1.x key, and
-- another 1.x process can then take it, run and release it again, all between two
-- renewals. Taking it back would hide that overlap; the lease is reported lost instead.
-- Returns the token when renewed, else nil.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
-- pcall: a 1.x key of another type (written by hand) is not ours either.
if redis.pcall('GET', KEYS[4]) ~= ARGV[1] then
  return false
end
redis.call('PEXPIRE', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return ARGV[1]
