-- DashRegistry::dash_join. ARGV: node, room, user, participant JSON, join
-- entry, now (unix ms), max participants, max list bytes. Returns {1}: no
-- such room, {3}: the room is full, {4}: the list would be too large
-- (nothing written), else the list (dash_reply).
local room, user, pj = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', k_dash_room(room)) == 0 then return {1} end
if redis.call('HEXISTS', k_dash_people(room), user) == 0 then
  if redis.call('ZCARD', k_dash_members(room)) >= tonumber(ARGV[7]) then return {3} end
  if dash_total_bytes() + #pj + 1 > tonumber(ARGV[8]) then return {4} end
  dash_add(room, user, pj)
end
redis.call('SADD', k_dash_node_joins(ARGV[1]), ARGV[5])
dash_bump(ARGV[6])
return dash_reply(ARGV[6])
