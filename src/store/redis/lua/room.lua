-- Shared by the room scripts: what a membership's removal leaves behind.
--
-- A room is a record (hash k_room_record: `c` created unix ms, `x` expires
-- unix ms, `max` most members, `tok` token SHA-256 hex, `m` meta JSON text
-- that no script parses, `ex` '1' explicit / '0' implicit; absent values
-- are ''), its members (hash k_room_members), a count of members per node
-- (hash k_room_nodes) and its name in the index (sorted set k_room_index),
-- and, when it has a lifetime, in the expiry index (sorted set
-- k_room_expiry, scored by `x`); its keys then carry a PEXPIREAT a grace
-- period after `x` (store::ROOM_KEY_GRACE_MS), in case no node sweeps.

-- Node `n` has one member fewer in `room`: at none, the room leaves the
-- node's room set (which tells its reaper where to look).
local function node_left(room, n)
  local nk = k_room_nodes(room)
  if redis.call('HINCRBY', nk, n, -1) <= 0 then
    redis.call('HDEL', nk, n)
    redis.call('SREM', k_node_rooms(n), room)
  end
end

-- A room whose last member went loses its member keys and, unless it is
-- explicit, its record and its place in the index. (A room with members and
-- no record, left by an older release, just goes.)
local function vanish_if_empty(room)
  local mk = k_room_members(room)
  if redis.call('HLEN', mk) > 0 then return end
  redis.call('DEL', mk, k_room_nodes(room))
  local rk = k_room_record(room)
  if redis.call('HGET', rk, 'ex') ~= '1' then
    redis.call('DEL', rk)
    redis.call('ZREM', k_room_index(), room)
  end
end

-- Removes room `room` whole: record, members, per-node counts, its place in
-- both indexes, and its name from its members' nodes' room sets. Returns the
-- members as they were ({peer, member value, ...}). Needs member.lua.
local function remove_room(room)
  local mk = k_room_members(room)
  local all = redis.call('HGETALL', mk)
  for i = 1, #all, 2 do
    local _, n = member_conn(all[i + 1])
    if n then redis.call('SREM', k_node_rooms(n), room) end
  end
  redis.call('DEL', k_room_record(room), mk, k_room_nodes(room))
  redis.call('ZREM', k_room_index(), room)
  redis.call('ZREM', k_room_expiry(), room)
  return all
end
