-- Rooms::create_room. KEYS: room record, room members. ARGV: room, created
-- (unix ms), expires (unix ms or ''), max peers (or ''), token hash (hex or
-- ''), meta JSON (kept as text), when its keys expire (unix ms, with
-- expires). Returns 0 (and writes nothing) when the room exists: a record,
-- or members (left by an older release), else 1.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'c', ARGV[2], 'x', ARGV[3], 'max', ARGV[4], 'tok', ARGV[5],
  'm', ARGV[6], 'ex', '1')
redis.call('ZADD', k_room_index(), 0, ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', k_room_expiry(), ARGV[3], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], ARGV[7])
end
return 1
