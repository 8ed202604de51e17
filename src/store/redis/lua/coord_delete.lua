-- CoordStore::coord_delete. ARGV: kind, key, expected version.
-- Removes the record when its stored version is the expected one;
-- returns 1 when removed, else 0.
local h = k_coord_records(ARGV[1])
local cur = redis.call('HGET', h, ARGV[2])
if not cur then return 0 end
if tonumber(string.match(cur, '^(%d+) ')) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', h, ARGV[2])
return 1
