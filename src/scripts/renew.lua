-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker, KEYS[4] queue of
-- waiting processes; ARGV[1] owner token, ARGV[2] lease in ms.
-- Extends the lease only while the key still holds our token: returns the token (so
-- that the client can tell this reply from another's), else nil. The waiters marker and
-- the queue are extended with it (no-ops when nobody waits), so that they outlive the
-- lease they announce waiters for (see release.lua).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('PEXPIRE', KEYS[4], ARGV[2])
  return ARGV[1]
end
return false
