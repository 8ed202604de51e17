-- Rooms::delete_room. KEYS: room record, room members, room nodes. ARGV: room.
-- Removes the room, record and members, from the index and from its
-- members' nodes' room sets. Returns {0} when there was no such room, else
-- {1, {peer, member value, ...}}: the memberships removed.
local all = redis.call('HGETALL', KEYS[2])
if #all == 0 and redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
for i = 1, #all, 2 do
  local _, n = member_conn(all[i + 1])
  if n then redis.call('SREM', k_node_rooms(n), ARGV[1]) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', k_room_index(), ARGV[1])
return {1, all}
