-- renew.lua for a lock with rdlock 1.x compatibility.
-- KEYS[1] lock key, KEYS[2] owner key, KEYS[3] the 1.x key; ARGV[1] owner token,
-- ARGV[2] lease in ms.
-- Extends all three only while the lock key holds our token and the 1.x key holds it
-- too, or is gone: a 1.x process releases with an unconditional DEL, so one whose TTL
-- ran out can delete our 1.x key; nobody holds it then, and it is taken back. If a 1.x
-- process has taken it meanwhile, the lock is no longer ours alone: nil, as for a lost
-- lock (nothing is extended). Returns the token when renewed, else nil.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local v1 = redis.call('GET', KEYS[3])
if v1 == ARGV[1] then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
elseif v1 == false then
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
else
  return false
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return ARGV[1]
