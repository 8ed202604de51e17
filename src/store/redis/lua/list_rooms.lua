-- Rooms::list_rooms. KEYS: room index. ARGV: the name to start after ('':
-- from the first), how many at most. Returns {room, member count, explicit
-- ('1' or not), expires (unix ms or ''), max peers (or ''), ...} in name
-- order: O(log rooms + page).
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local out = {}
for _, r in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], from, '+', 'LIMIT', 0, ARGV[2])) do
  local rec = redis.call('HMGET', k_room_record(r), 'ex', 'x', 'max')
  table.insert(out, r)
  table.insert(out, redis.call('HLEN', k_room_members(r)))
  table.insert(out, rec[1] or '')
  table.insert(out, rec[2] or '')
  table.insert(out, rec[3] or '')
end
return out
