-- Directory::claim_peer. KEYS: peer, node peers, node secrets (of the
-- claiming node). ARGV: "<epoch> <node>", peer, secret hash (hex), proof:
-- "token" (a token for the id was verified), the presented secret's hash
-- (hex), or "" (none).
--
-- Registers the peer unless a live connection on another, alive node holds
-- it and the proof is not for that connection: then returns {0, current
-- entry} and writes nothing. Else {1, previous entry or false}.
-- A node's secrets are a hash (peer -> "<epoch> <node> <hash>", the entry it
-- belongs to and its hash) that expires with the node: `keep_secrets` gives
-- it its lifetime every heartbeat (not this script: one command less per
-- `hello`). Few arguments on purpose: each one costs Redis time on every call.
local cur = redis.call('GET', KEYS[1])
local other = false
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local owner = sp and string.sub(cur, sp + 1)
  local me = string.sub(ARGV[1], string.find(ARGV[1], ' ', 1, true) + 1)
  if owner and owner ~= me then
    other = k_node_secrets(owner)
    if ARGV[4] ~= 'token'
       and redis.call('EXISTS', k_node_alive(owner)) == 1
       and (ARGV[4] == '' or redis.call('HGET', other, ARGV[2]) ~= cur .. ' ' .. ARGV[4]) then
      return {0, cur}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1] .. ' ' .. ARGV[3])
if other then redis.call('HDEL', other, ARGV[2]) end
return {1, cur or false}
