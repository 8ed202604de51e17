-- Rooms::join_room and Rooms::restore_member. KEYS: room members, room
-- record, node rooms (of the joining node). ARGV: peer, member value, the
-- caller's limit ('' for none at all: a restore), room, node, epoch, now
-- (unix ms).
-- The record's `max`, when set, replaces the caller's limit; a room without
-- a record gets an implicit one. Returns {-1} when full (nothing written),
-- else {added (0: this connection was already a member, 1), {peer, value,
-- ...} as they were before}.
local max = redis.call('HGET', KEYS[2], 'max')
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and ARGV[3] ~= '' then
  local limit = tonumber(ARGV[3])
  if max and max ~= '' then limit = tonumber(max) end
  if redis.call('HLEN', KEYS[1]) >= limit then return {-1} end
end
if not max then
  redis.call('HSET', KEYS[2], 'c', ARGV[7], 'x', '', 'max', '', 'tok', '', 'm', 'null', 'ex', '0')
  redis.call('ZADD', k_room_index(), 0, ARGV[4])
end
local all = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local oldepoch, oldnode = nil, nil
if old then oldepoch, oldnode = member_conn(old) end
if oldnode ~= ARGV[5] then
  if oldnode then node_left(ARGV[4], oldnode) end
  redis.call('HINCRBY', k_room_nodes(ARGV[4]), ARGV[5], 1)
end
redis.call('SADD', KEYS[3], ARGV[4])
local added = 1
if old and oldepoch == ARGV[6] then added = 0 end
return {added, all}
