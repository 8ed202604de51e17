-- Liveness::live_nodes. KEYS: nodes. The nodes whose heartbeat key exists.
local live = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', k_node_alive(n)) == 1 then
    table.insert(live, n)
  end
end
return live
