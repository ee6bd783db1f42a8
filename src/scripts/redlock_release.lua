-- Redlock, one node. KEYS[1] lock key, KEYS[2] owner key; ARGV[1] owner token,
-- ARGV[2] release channel.
-- Deletes the lock only while it holds our token, and publishes the SHA-1 of the token
-- (never the token itself: it is the holder's secret), so that a waiter can count the
-- nodes that released the same holder's lock. Returns the token, else nil.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[2], redis.sha1hex(ARGV[1]))
  return ARGV[1]
end
return false
