-- DashRegistry::dash_disconnect. ARGV: node, count generation, count, now
-- (unix ms), then room, user, join entry for each participant the socket
-- joined. Returns the list (dash_reply).
local node, now = ARGV[1], ARGV[4]
local changed = false
local jk = k_dash_node_joins(node)
for i = 5, #ARGV, 3 do
  if dash_remove(ARGV[i], ARGV[i + 1]) then changed = true end
  redis.call('SREM', jk, ARGV[i + 2])
end
if changed then dash_bump(now) end
dash_set_count(node, ARGV[2], ARGV[3], now)
return dash_reply(now)
