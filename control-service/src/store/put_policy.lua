-- wipgate: compare-and-set of the policy. KEYS[1] policy hash.
-- ARGV[1] expected version, ARGV[2] policy json. Returns the new version, or -1.
local version = redis.call('HGET', KEYS[1], 'version') or '0'
if version ~= ARGV[1] then return -1 end
local next = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'json', ARGV[2])
return next
