-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] waiters marker; ARGV[1] release channel;
-- ARGV[2], optional, the fencing token of the acquisition to delete.
-- The administrator's escape hatch: deletes the lock and wakes waiters. Without ARGV[2]
-- whoever holds it; with it, only while the owner record still names that acquisition
-- (0: a key without an owner record, which rdlock did not write), so that a holder
-- inspected before cannot be confused with whoever took the lock since.
-- Publishes whether or not the waiters marker is there (a rare, administrative act),
-- and deletes the marker too: the waiters it wakes re-arm it if they fail again.
-- Returns 1 if a lock was deleted, 0 if it was not held or held by another acquisition.
if ARGV[2] then
  if redis.call('PTTL', KEYS[1]) == -2 then
    return 0
  end
  local record = redis.call('GET', KEYS[2])
  local fence = record and string.match(record, '^(%d+)\n') or '0'
  if fence ~= ARGV[2] then
    return 0
  end
end
local held = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[1], 'released')
return held
