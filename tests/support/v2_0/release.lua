-- KEYS[1] lock key, KEYS[2] owner key; ARGV[1] owner token, ARGV[2] release channel.
-- Deletes the lock and wakes waiters only while it still holds our token: returns the
-- token (so that the client can tell this reply from another's), else nil.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[2], 'released')
  return ARGV[1]
end
return false
