-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker; ARGV[1] owner token,
-- ARGV[2] release channel.
-- Deletes the lock while it still holds our token: returns the token (so that the
-- client can tell this reply from another's), else nil.
--
-- Wakes waiters only when someone waits, i.e. when the marker was there (no PUBLISH on
-- an uncontended cycle). No wake-up is lost: a waiter's failed attempt writes the
-- marker in the same script that saw the lock held, with the lock's own expiry, and
-- the renew and hand-off scripts extend the marker with the lock; so from that
-- attempt on, until this release, the marker exists (only a release deletes it, and a release publishes
-- when it does). A waiter waits only after a failed attempt (its wake-up future armed
-- before it), and re-arms the marker with every failed attempt. One DEL of the three:
-- its count tells whether the marker was there (lock + owner record = 2; a missing
-- owner record, deleted by hand or evicted, with a marker also counts 2: then the
-- waiter waits out the PTTL it saw, a liveness cost, never a safety one).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) ~= 2 then
    redis.call('PUBLISH', ARGV[2], 'released')
  end
  return ARGV[1]
end
return false
