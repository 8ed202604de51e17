-- Rooms::leave_room. KEYS: room members. ARGV: peer, epoch, room.
-- Removes the membership if it is that connection's; an implicit room goes
-- with its last member. Returns 1 when removed, else 0.
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local e, n = member_conn(v)
if e ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
node_left(ARGV[3], n)
vanish_if_empty(ARGV[3])
return 1
