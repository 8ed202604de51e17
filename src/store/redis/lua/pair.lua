-- Workers::pair_workers. KEYS: worker a, worker b. ARGV: a, b, pairing id.
-- Returns {-1, 1|2} not found, {-2, 1|2} already paired, or {1, a hash, b hash}.
local sa = redis.call('HGET', KEYS[1], 's')
if not sa then return {-1, 1} end
local sb = redis.call('HGET', KEYS[2], 's')
if not sb then return {-1, 2} end
if sa == 'paired' then return {-2, 1} end
if sb == 'paired' then return {-2, 2} end
redis.call('HSET', KEYS[1], 's', 'paired', 'pid', ARGV[3], 'pt', ARGV[2])
redis.call('HSET', KEYS[2], 's', 'paired', 'pid', ARGV[3], 'pt', ARGV[1])
return {1, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
