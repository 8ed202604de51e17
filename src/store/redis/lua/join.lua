-- Rooms::join_room_with and Rooms::restore_member. KEYS: room members, room
-- record, node rooms (of the joining node). ARGV: peer, member value, the
-- caller's limit ('' for none at all: a restore), room, node, epoch, now
-- (unix ms), the token hash shown (hex, or ''), '1' when the joiner's
-- credentials grant the room, how long the keys outlive `x` (ms).
-- A join (not a restore) is refused, writing nothing, when the record's `x`
-- is at or before now ({-4}), or when the record has a token and the joiner
-- is not granted the room and shows none ({-2}) or another ({-3}). The
-- record's `max`, when set, replaces the caller's limit ({-1} when full). A
-- room without a record gets an implicit one. Else returns {added (0: this
-- connection was already a member, 1), {peer, value, ...} as they were
-- before}. The keys of a room with a lifetime expire with its record.
local rec = redis.call('HMGET', KEYS[2], 'max', 'tok', 'x')
local max, tok, x = rec[1], rec[2], rec[3]
if x == '' then x = false end
if ARGV[3] ~= '' then
  if x and tonumber(x) <= tonumber(ARGV[7]) then return {-4} end
  if tok and tok ~= '' and ARGV[9] ~= '1' then
    if ARGV[8] == '' then return {-2} end
    if ARGV[8] ~= tok then return {-3} end
  end
end
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
if x then
  local at = string.format('%.0f', tonumber(x) + tonumber(ARGV[10]))
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', k_room_nodes(ARGV[4]), at)
end
local added = 1
if old and oldepoch == ARGV[6] then added = 0 end
return {added, all}
