-- Workers::list_workers. KEYS: workers. Every worker hash (ids whose hash
-- is gone are dropped from the set).
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', k_worker(id))
  if #h > 0 then table.insert(out, h) else redis.call('SREM', KEYS[1], id) end
end
return out
