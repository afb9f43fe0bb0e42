-- wipgate: record one instance's report (atomic). Drops stale instances with their grants,
-- stores this instance's demand per dimension, and returns what the split needs.
-- KEYS[1] live (zset id -> last seen ms), KEYS[2] agg (hash: sums of d|DIM and g|DIM),
-- KEYS[3] policy (hash: json, version)
-- ARGV[1] instance key prefix, ARGV[2] id (the instance's key: id, or id and nonce),
-- ARGV[3] stale window ms, ARGV[4] report json, ARGV[5] most live instances, ARGV[6] most
-- joins per second, ARGV[7..] pairs DIM demand
-- returns {now_ms, live_count, policy_json or false, policy_version, born_ms, fleet demand
-- per DIM...}, or {'refused', 'instances' | 'joins'} for a joining instance beyond the caps
-- (nothing recorded). born_ms: when agg was created (the fleet's records started empty).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, id, stale = ARGV[1], ARGV[2], tonumber(ARGV[3])
local first = 7

local function forget(ikey, keep)
  local fields = redis.call('HGETALL', ikey)
  for i = 1, #fields, 2 do
    local f = fields[i]
    local kind = string.sub(f, 1, 2)
    if (kind == 'd|' or kind == 'g|') and not (keep and keep[f]) then
      redis.call('HINCRBY', KEYS[2], f, -tonumber(fields[i + 1]))
      redis.call('HDEL', ikey, f)
    end
  end
end

local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - stale))
for _, other in ipairs(gone) do
  local ikey = prefix .. other
  forget(ikey, nil)
  redis.call('DEL', ikey)
  redis.call('ZREM', KEYS[1], other)
end

if not redis.call('ZSCORE', KEYS[1], id) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then return {'refused', 'instances'} end
  local second = math.floor(now / 1000)
  local joins = redis.call('HMGET', KEYS[2], 'joins_s', 'joins_n')
  local n = 0
  if tonumber(joins[1] or '-1') == second then n = tonumber(joins[2] or '0') end
  if n >= tonumber(ARGV[6]) then return {'refused', 'joins'} end
  redis.call('HSET', KEYS[2], 'joins_s', second, 'joins_n', n + 1)
end
redis.call('HSETNX', KEYS[2], 'born', now)

local me = prefix .. id
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', me, 'report', ARGV[4], 'seen', now)
local keep = {}
for i = first, #ARGV, 2 do keep['d|' .. ARGV[i]] = true end
-- grants of dimensions no longer in the policy are freed here too
local fields = redis.call('HGETALL', me)
for i = 1, #fields, 2 do
  local f = fields[i]
  if string.sub(f, 1, 2) == 'g|' then keep[f] = (keep['d|' .. string.sub(f, 3)] or false) end
end
forget(me, keep)

local out = {now, redis.call('ZCARD', KEYS[1])}
local policy = redis.call('HMGET', KEYS[3], 'json', 'version')
out[3] = policy[1] or false
out[4] = policy[2] or '0'
out[5] = redis.call('HGET', KEYS[2], 'born')
for i = first, #ARGV, 2 do
  local f = 'd|' .. ARGV[i]
  local v = tonumber(ARGV[i + 1])
  local old = tonumber(redis.call('HGET', me, f) or '0')
  if v ~= old then
    redis.call('HINCRBY', KEYS[2], f, v - old)
    redis.call('HSET', me, f, v)
  end
  out[#out + 1] = redis.call('HGET', KEYS[2], f)
end
return out
