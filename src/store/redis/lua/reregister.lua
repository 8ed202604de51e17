-- Directory::reregister_peer. KEYS: peer, node peers. ARGV: "<epoch> <node>",
-- peer, node. Re-registration after an outage: only when the entry is
-- absent or already this node's; else returns the other node's entry.
local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  if sp and string.sub(cur, sp + 1) ~= ARGV[3] then return cur end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return false
