-- Workers::enqueue_or_match. KEYS: worker, pool queue. ARGV: id, epoch,
-- pool, meta, now ms, pairing id.
-- Returns {-2} stale, {-1} already paired, {0} queued, or {1, initiator
-- hash, responder hash} when matched with the queue's earliest valid entry
-- (stale entries are popped and dropped on the way).
local w = redis.call('HMGET', KEYS[1], 'e', 's', 'p')
if w[1] ~= ARGV[2] then return {-2} end
if w[2] == 'paired' then return {-1} end
if w[2] == 'queued' and w[3] == ARGV[3] then
  redis.call('HSET', KEYS[1], 'm', ARGV[4])
  return {0}
end
redis.call('HSET', KEYS[1], 'm', ARGV[4], 'p', ARGV[3], 't', ARGV[5], 's', 'idle')
while true do
  local head = redis.call('LPOP', KEYS[2])
  if not head then break end
  if head ~= ARGV[1] then
    local hk = k_worker(head)
    local h = redis.call('HMGET', hk, 's', 'p')
    if h[1] == 'queued' and h[2] == ARGV[3] then
      redis.call('HSET', hk, 's', 'paired', 'pid', ARGV[6], 'pt', ARGV[1])
      redis.call('HSET', KEYS[1], 's', 'paired', 'pid', ARGV[6], 'pt', head)
      return {1, redis.call('HGETALL', hk), redis.call('HGETALL', KEYS[1])}
    end
  end
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 's', 'queued')
return {0}
