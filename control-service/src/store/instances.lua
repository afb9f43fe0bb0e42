-- wipgate: the live instances with their last report and grants (read only).
-- KEYS[1] live, KEYS[2] policy, ARGV[1] instance key prefix, ARGV[2] stale window ms
-- returns {now_ms, policy json or false, policy version, {id, seen, report json, {DIM, grant, ...}}, ...}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf', 'WITHSCORES')
local policy = redis.call('HMGET', KEYS[2], 'json', 'version')
local out = {now, policy[1] or false, policy[2] or '0'}
for i = 1, #ids, 2 do
  local h = redis.call('HGETALL', ARGV[1] .. ids[i])
  local grants = {}
  local report = false
  for j = 1, #h, 2 do
    if string.sub(h[j], 1, 2) == 'g|' then
      grants[#grants + 1] = string.sub(h[j], 3)
      grants[#grants + 1] = h[j + 1]
    elseif h[j] == 'report' then
      report = h[j + 1]
    end
  end
  out[#out + 1] = {ids[i], ids[i + 1], report, grants}
end
return out
