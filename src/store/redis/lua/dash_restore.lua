-- DashRegistry::dash_restore. ARGV: node, count generation, count, now
-- (unix ms), then room, user, participant JSON, join entry for each
-- participant the node's live sockets joined. Returns the list
-- (dash_reply).
local node, now = ARGV[1], ARGV[4]
local jk = k_dash_node_joins(node)
local held = {}
for i = 5, #ARGV, 4 do held[ARGV[i + 3]] = true end
local changed = false
for _, pair in ipairs(redis.call('SMEMBERS', jk)) do
  if not held[pair] then
    local room, user = dash_unpair(pair)
    if dash_remove(room, user) then changed = true end
    redis.call('SREM', jk, pair)
  end
end
for i = 5, #ARGV, 4 do
  local room, user = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', k_dash_room(room)) == 1
    and redis.call('HEXISTS', k_dash_people(room), user) == 0 then
    dash_add(room, user, ARGV[i + 2])
    changed = true
  end
  redis.call('SADD', jk, ARGV[i + 3])
end
if changed then dash_bump(now) end
dash_set_count(node, ARGV[2], ARGV[3], now)
return dash_reply(now)
