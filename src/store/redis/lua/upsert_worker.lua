-- Workers::upsert_worker. KEYS: worker, workers, peer (directory entry).
-- ARGV: id, node, epoch, door, observed, public ip, udp.
-- Refused ({0}) when the directory names another connection; replaces an
-- older connection's record (freeing its partner); applies non-empty
-- endpoints. Returns {1} or {1, pairing, partner hash}.
local dir = redis.call('GET', KEYS[3])
if dir and dir ~= (ARGV[3] .. ' ' .. ARGV[2]) then return {0} end
local e = redis.call('HGET', KEYS[1], 'e')
local lost = false
local lostpid = false
if e ~= ARGV[3] then
  if e then
    local old = redis.call('HMGET', KEYS[1], 'n', 'pid', 'pt')
    lost = free_partner(old[2], old[3])
    lostpid = old[2]
    if old[1] then redis.call('SREM', k_node_workers(old[1]), ARGV[1]) end
    redis.call('DEL', KEYS[1])
  end
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'n', ARGV[2], 'e', ARGV[3], 'd', ARGV[4],
    'o', ARGV[5], 's', 'idle', 'm', 'null', 't', '0', 'p', '', 'pid', '', 'pt', '', 'ip', '', 'u', '')
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SADD', k_node_workers(ARGV[2]), ARGV[1])
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'ip', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'u', ARGV[7]) end
if lost then return {1, lostpid, lost} end
return {1}
