-- Directory::unregister_peer. KEYS: peer, node peers, node secrets.
-- ARGV: "<epoch> <node>", peer. Removes the entry (and its secret) only if
-- it is that connection of that node.
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 1
end
return 0
