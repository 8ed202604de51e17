-- Workers::node_workers. KEYS: node workers. ARGV: node.
-- {id, epoch, ...} of the records that name the node.
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local w = redis.call('HMGET', k_worker(id), 'n', 'e')
  if w[1] == ARGV[1] then
    table.insert(out, id)
    table.insert(out, w[2])
  end
end
return out
