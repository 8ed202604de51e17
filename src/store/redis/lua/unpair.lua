-- Workers::unpair_worker. KEYS: worker. ARGV: id, epoch.
-- Returns {-1} not paired (or stale), {2} dequeued (or the partner was
-- already gone), {1, pairing, partner hash}.
local w = redis.call('HMGET', KEYS[1], 'e', 's', 'pid', 'pt')
if w[1] ~= ARGV[2] then return {-1} end
if w[2] == 'queued' then
  redis.call('HSET', KEYS[1], 's', 'idle')
  return {2}
end
if w[2] ~= 'paired' then return {-1} end
redis.call('HSET', KEYS[1], 's', 'idle', 'pid', '', 'pt', '')
local p = free_partner(w[3], w[4])
if p then return {1, w[3], p} end
return {2}
