-- Directory::register_peer. KEYS: peer, node peers. ARGV: "<epoch> <node>", peer.
-- Sets the directory entry and returns the previous one.
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return old
