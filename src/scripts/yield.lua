-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker; ARGV[1] owner token,
-- ARGV[2] release channel.
-- release.lua, for the release that ends a budget of local hand-offs: always publishes
-- and tells whether someone else waits, so that the next local task can let them try
-- first. Someone waits when the waiters marker was there (a failed attempt wrote it,
-- and hand-offs and renewals kept it) or when the message reached a subscriber. The
-- marker is what counts on a Redis Cluster, where PUBLISH counts only the subscribers
-- of this node, not those of waiters subscribed on other nodes.
-- Returns {token, 1 or 0} while the key still held our token (and deletes it with its
-- owner record and waiters marker), else nil.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- Lock + owner record + marker: 3 when the marker was there (as in release.lua).
  local deleted = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  local woken = redis.call('PUBLISH', ARGV[2], 'released')
  if deleted == 3 or woken > 0 then
    return {ARGV[1], 1}
  end
  return {ARGV[1], 0}
end
return false
