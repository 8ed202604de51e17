-- Directory::restore_secret. KEYS: peer, node secrets. ARGV: "<epoch> <node>",
-- peer, secret hash (hex), TTL (ms).
-- Writes a connection's secret hash again if the entry is still that connection.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
