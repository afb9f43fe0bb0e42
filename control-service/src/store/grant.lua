-- wipgate: grant one instance its shares (atomic). Each grant is the target clipped to what
-- the other live instances leave of the fleet number, so per dimension the grants of all
-- instances never add up to more than the fleet number (allowance.rs, step 2).
-- KEYS[1] live, KEYS[2] agg, KEYS[3] policy
-- ARGV[1] instance key prefix, ARGV[2] id, ARGV[3] policy version the targets assume,
-- ARGV[4..] triples DIM target limit
-- returns {'ok', grant per DIM...} or {'retry'} when the policy changed or the instance
-- was dropped meanwhile
local version = redis.call('HGET', KEYS[3], 'version') or '0'
if version ~= ARGV[3] or not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return {'retry'}
end
local me = ARGV[1] .. ARGV[2]
local out = {'ok'}
for i = 4, #ARGV, 3 do
  local f = 'g|' .. ARGV[i]
  local target, limit = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local old = tonumber(redis.call('HGET', me, f) or '0')
  local others = tonumber(redis.call('HGET', KEYS[2], f) or '0') - old
  local room = limit - others
  if room < 0 then room = 0 end
  local g = target
  if room < g then g = room end
  if g ~= old then
    redis.call('HINCRBY', KEYS[2], f, g - old)
    redis.call('HSET', me, f, g)
  end
  out[#out + 1] = g
end
return out
