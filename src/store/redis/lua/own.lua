-- Liveness::own_entries. KEYS: node peers, node rooms. ARGV: node.
-- Lists (without changing anything) the node's directory entries and
-- memberships: {{peer, epoch, ...}, {room, peer, epoch, ...}}.
local peers = {}
for _, p in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local cur = redis.call('GET', k_peer(p))
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    if sp and string.sub(cur, sp + 1) == ARGV[1] then
      table.insert(peers, p)
      table.insert(peers, string.sub(cur, 1, sp - 1))
    end
  end
end
local members = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local all = redis.call('HGETALL', k_room_members(room))
  for i = 1, #all, 2 do
    local e, n = member_conn(all[i + 1])
    if n == ARGV[1] then
      table.insert(members, room)
      table.insert(members, all[i])
      table.insert(members, e)
    end
  end
end
return {peers, members}
