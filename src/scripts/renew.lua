-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker; ARGV[1] owner token,
-- ARGV[2] lease in ms.
-- Extends the lease only while the key still holds our token: returns the token (so
-- that the client can tell this reply from another's), else nil. The waiters marker is
-- extended with it (a no-op when nobody waits), so that it outlives the lease it
-- announces waiters for (see release.lua).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  return ARGV[1]
end
return false
