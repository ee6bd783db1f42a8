-- Redlock, one node: one round of the quorum compare-and-set on the fence counter.
-- KEYS[1] lock key, KEYS[2] fence key, KEYS[3] owner key; ARGV[1] owner token,
-- ARGV[2] proposed fencing token, ARGV[3] "<pid>\n<host>\n<label>".
-- The counter only ever goes up: it takes the proposal only if it is greater. While
-- the lock key holds our token, the owner record names the proposal.
-- Returns {1 if the proposal was taken here else 0, the counter now, token}.
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current == nil then
  return redis.error_reply('ERR the fence key does not hold a counter')
end
local proposal = tonumber(ARGV[2])
local taken = 0
if current < proposal then
  redis.call('SET', KEYS[2], ARGV[2])
  current = proposal
  taken = 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    local now = redis.call('TIME')
    local ms = string.format('%d%03d', now[1], math.floor(tonumber(now[2]) / 1000))
    redis.call('SET', KEYS[3], ARGV[2] .. '\n' .. ms .. '\n' .. ARGV[3], 'PX', pttl)
  end
end
return {taken, current, ARGV[1]}
