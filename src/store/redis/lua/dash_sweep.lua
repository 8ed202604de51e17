-- DashRegistry::dash_sweep. ARGV: me, now (unix ms), stale (ms). Marks me
-- alive for the registry; removes every other node that has not swept for
-- `stale` ms and has no heartbeat: its count and the participants its
-- sockets joined. Returns {0} when no node was removed, else {nodes
-- removed, version, rooms, list, 1 if the list changed else 0}.
local me, now = ARGV[1], tonumber(ARGV[2])
redis.call('HSET', k_dash_nodes(), me, ARGV[2])
local reaped, changed = 0, false
local all = redis.call('HGETALL', k_dash_nodes())
for i = 1, #all, 2 do
  local n, t = all[i], tonumber(all[i + 1]) or 0
  if n ~= me and t + tonumber(ARGV[3]) < now and redis.call('EXISTS', k_node_alive(n)) == 0 then
    local jk = k_dash_node_joins(n)
    for _, pair in ipairs(redis.call('SMEMBERS', jk)) do
      local room, user = dash_unpair(pair)
      if dash_remove(room, user) then changed = true end
    end
    redis.call('DEL', jk)
    redis.call('HDEL', k_dash_clients(), n)
    redis.call('HDEL', k_dash_nodes(), n)
    reaped = reaped + 1
  end
end
if reaped == 0 then return {0} end
if changed then dash_bump(ARGV[2]) end
local r = dash_reply(ARGV[2])
r[1] = reaped
table.insert(r, changed and 1 or 0)
return r
