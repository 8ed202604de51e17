-- Workers::remove_worker. KEYS: worker, workers. ARGV: id, epoch.
-- Returns {0} (nothing, or no partner) or {1, pairing, partner hash}.
local w = redis.call('HMGET', KEYS[1], 'e', 'n', 'pid', 'pt')
if w[1] ~= ARGV[2] then return {0} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', k_node_workers(w[2]), ARGV[1])
local p = free_partner(w[3], w[4])
if p then return {1, w[3], p} end
return {0}
