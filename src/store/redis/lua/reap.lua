-- Liveness::reap_node (after the caller won the SET NX claim). KEYS: node
-- rooms, node peers, nodes, node workers (of the dead node). ARGV: dead node.
-- Removes every membership (and the implicit records of the rooms this
-- empties), directory entry and worker of the node, and the node from the
-- nodes set; returns {peers removed, {room, peer, room, peer, ...},
-- {pairing, partner hash, ...}, workers removed}.
local left = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local mk = k_room_members(room)
  local all = redis.call('HGETALL', mk)
  for i = 1, #all, 2 do
    local _, n = member_conn(all[i + 1])
    if n == ARGV[1] then
      redis.call('HDEL', mk, all[i])
      table.insert(left, room)
      table.insert(left, all[i])
    end
  end
  redis.call('HDEL', k_room_nodes(room), ARGV[1])
  vanish_if_empty(room)
end
local n = 0
for _, p in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local pk = k_peer(p)
  local cur = redis.call('GET', pk)
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    if sp and string.sub(cur, sp + 1) == ARGV[1] then
      redis.call('DEL', pk)
      n = n + 1
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
local lost = {}
local nw = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local k = k_worker(id)
  local w = redis.call('HMGET', k, 'n', 'pid', 'pt')
  if w[1] == ARGV[1] then
    redis.call('DEL', k)
    redis.call('SREM', k_workers(), id)
    nw = nw + 1
    local p = free_partner(w[2], w[3])
    if p then
      table.insert(lost, w[2])
      table.insert(lost, p)
    end
  end
end
redis.call('DEL', KEYS[4])
return {n, left, lost, nw}
