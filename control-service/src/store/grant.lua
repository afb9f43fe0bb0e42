-- wipgate: grant one instance its shares (atomic). Each grant is the target clipped to what
-- the other live instances hold of the fleet number; what the instance holds afterwards is
-- the larger of the grant and what it reported in force, never believed above what it held
-- before (allowance.rs, step 4). So per dimension what all instances hold never adds up to
-- more than the fleet number, and a lost reply never lets the sum in force exceed it.
-- KEYS[1] live, KEYS[2] agg, KEYS[3] policy
-- ARGV[1] instance key prefix, ARGV[2] id, ARGV[3] policy version the targets assume,
-- ARGV[4] '1' while warming up (an instance without a record is believed), ARGV[5..]
-- quads DIM target limit in_force
-- returns {'ok', grant per DIM...} or {'retry'} when the policy changed or the instance
-- was dropped meanwhile
local version = redis.call('HGET', KEYS[3], 'version') or '0'
if version ~= ARGV[3] or not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return {'retry'}
end
local me = ARGV[1] .. ARGV[2]
local warming = ARGV[4] == '1'
local out = {'ok'}
for i = 5, #ARGV, 4 do
  local f = 'g|' .. ARGV[i]
  local target, limit, in_force = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local stored = redis.call('HGET', me, f)
  local old = tonumber(stored or '0')
  local others = tonumber(redis.call('HGET', KEYS[2], f) or '0') - old
  local room = limit - others
  if room < 0 then room = 0 end
  local g = target
  if room < g then g = room end
  if in_force > limit then in_force = limit end
  local acked = in_force
  if stored or not warming then
    if old < acked then acked = old end
  end
  local held = g
  if acked > held then held = acked end
  if held ~= old then
    redis.call('HINCRBY', KEYS[2], f, held - old)
    redis.call('HSET', me, f, held)
  end
  out[#out + 1] = g
end
return out
