-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker, KEYS[4] queue of waiting
-- processes; ARGV[1] owner token, ARGV[2] release channel, ARGV[3] the reservation in
-- ms (queue.lua).
-- Releases the lock while it still holds our token: returns the token (so that the
-- client can tell this reply from another's), else nil.
--
-- If processes queue for the lock, the first in line gets the turn (a short
-- reservation, announced by one message that wakes that process only). Otherwise the
-- key is deleted, and nothing published unless the waiters marker was there: only
-- waiters with 1.x compatibility (acquire_v1.lua) set it too, as 1.x-compatible
-- holders release without passing turns.
-- No wake-up is lost: a waiter queues (or sets the marker) in the same script that saw
-- the lock held, and the queue and the marker live at least as long as the lock (the
-- renew and hand-off scripts extend them with it), so from that attempt on, until this
-- release, they exist. One DEL of the three keys: its count tells whether the marker
-- was there (lock + owner record = 2).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
if not pass_turn(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[3], false) then
  if redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) ~= 2 then
    redis.call('PUBLISH', ARGV[2], 'released')
  end
end
return ARGV[1]
