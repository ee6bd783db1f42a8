-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker; ARGV[1] owner token,
-- ARGV[2] release channel.
-- release.lua, for the release that ends a budget of local hand-offs: always publishes
-- and returns how many subscribers the release message reached (waiters of other
-- processes), so that the next local task can let them try first. Returns
-- {token, receivers} while the key still held our token (and deletes it with its
-- owner record and waiters marker), else nil.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  local woken = redis.call('PUBLISH', ARGV[2], 'released')
  return {ARGV[1], woken}
end
return false
