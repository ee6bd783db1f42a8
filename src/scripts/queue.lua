-- The Redis-side queue of waiting processes (src/queue.rs), shared by the scripts that
-- pass a lock on: prepended to them, so it takes no KEYS or ARGV of its own.
--
-- The queue is a LIST of process ids (one per manager, each at most once), oldest
-- first. A turn passed to a process is a *reservation*: the lock key holds
-- 'q:<process>' for a short time, which no token equals, so nobody's acquire takes it
-- but that process's (acquire.lua). One message announces it, on the lock's release
-- channel: 'turn <process> [<standby> ...]'. Only the named process acts on it; the
-- standbys, the next processes in line, arm a timer each (1, 2, ... times the
-- reservation plus a margin) and check the key only if neither this process's claim
-- ('claimed', from acquire.lua) nor another turn message came first: a process that
-- died in the queue costs the others one reservation, not a lease.

-- How many of the next processes in line a turn message names as standbys.
local STANDBYS = 4

-- Adds `process` at the end of `queue` unless it is there already; the queue lives at
-- least `ttl` ms more (it must outlive the lock it queues for: see release.lua).
local function enqueue(queue, process, ttl)
  if not redis.call('LPOS', queue, process) then
    redis.call('RPUSH', queue, process)
  end
  if redis.call('PTTL', queue) < tonumber(ttl) then
    redis.call('PEXPIRE', queue, ttl)
  end
end

-- Takes the first process out of `queue` and reserves the lock for it for
-- `reservation` ms (the owner record goes: nobody owns a reservation); `requeue`, when
-- not false, is then added at the end (a process that yields its turn and still has
-- waiters). Publishes the turn on `channel`. Returns the process, or false when the
-- queue was empty (then nothing is written).
local function pass_turn(lock, owner, queue, channel, reservation, requeue)
  local next = redis.call('LPOP', queue)
  if not next then
    return false
  end
  redis.call('SET', lock, 'q:' .. next, 'PX', reservation)
  redis.call('DEL', owner)
  if requeue then
    -- Taken out of the queue by the caller: back at the end, without a look for it
    -- (so that every LPOS is a failed attempt's).
    redis.call('RPUSH', queue, requeue)
    local ttl = redis.call('PTTL', queue)
    if ttl < tonumber(reservation) then
      redis.call('PEXPIRE', queue, reservation)
    end
  else
    local ttl = redis.call('PTTL', queue)
    if ttl > 0 and ttl < tonumber(reservation) then
      redis.call('PEXPIRE', queue, reservation)
    end
  end
  local message = 'turn ' .. next
  for _, standby in ipairs(redis.call('LRANGE', queue, 0, STANDBYS - 1)) do
    message = message .. ' ' .. standby
  end
  redis.call('PUBLISH', channel, message)
  return next
end
