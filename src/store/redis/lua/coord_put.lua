-- CoordStore::coord_put. ARGV: kind, key, expected version (0: absent), JSON.
-- Writes `"<version> <JSON>"` with a new version from the shared counter
-- when the stored version is the expected one; returns the new version,
-- or 0 when it is not (nothing written).
local h = k_coord_records(ARGV[1])
local cur = redis.call('HGET', h, ARGV[2])
local v = 0
if cur then v = tonumber(string.match(cur, '^(%d+) ')) or -1 end
if v ~= tonumber(ARGV[3]) then return 0 end
local nv = redis.call('INCR', k_coord_version())
redis.call('HSET', h, ARGV[2], nv .. ' ' .. ARGV[4])
return nv
