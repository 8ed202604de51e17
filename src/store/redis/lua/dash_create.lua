-- DashRegistry::dash_create. ARGV: id, head, now (unix ms), max rooms, max
-- list bytes. Creates or replaces (participants reset, place kept).
-- Returns {2} for too many rooms, {4} for a list too large (nothing
-- written), else the list (dash_reply).
local id, head, now = ARGV[1], ARGV[2], ARGV[3]
local rk = k_dash_room(id)
local old = 0
local exists = redis.call('EXISTS', rk) == 1
if exists then
  old = tonumber(redis.call('HGET', rk, 'b'))
elseif redis.call('ZCARD', k_dash_rooms()) >= tonumber(ARGV[4]) then
  return {2}
end
local b = #head + 64
local total = dash_total_bytes()
if total - old + b > tonumber(ARGV[5]) then return {4} end
if exists then
  redis.call('DEL', k_dash_members(id), k_dash_people(id))
else
  redis.call('ZADD', k_dash_rooms(), redis.call('INCR', k_dash_seq()), id)
end
redis.call('HSET', rk, 'h', head, 'b', b)
redis.call('SET', k_dash_bytes(), total - old + b)
dash_bump(now)
return dash_reply(now)
