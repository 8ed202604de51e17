-- Rooms::expire_room. KEYS: room record. ARGV: room, now (unix ms).
-- Removes the room as delete_room.lua does, if its record's `x` is at or
-- before now. Returns {0} when it removed nothing (no record, no lifetime,
-- or not due: a room made under that name since), else {1, {peer, member
-- value, ...}}. A name left in the expiry index without a record that
-- expires is taken out of it.
local x = redis.call('HGET', KEYS[1], 'x')
if not x or x == '' then
  redis.call('ZREM', k_room_expiry(), ARGV[1])
  return {0}
end
if tonumber(x) > tonumber(ARGV[2]) then return {0} end
return {1, remove_room(ARGV[1])}
