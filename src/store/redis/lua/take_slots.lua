-- Rooms::take_slots. KEYS: the quotas (sorted sets member -> until, unix
-- ms). ARGV: member, now (unix ms), until (unix ms), then the most slots of
-- each quota. Drops each quota's ended slots; returns the 1-based index of
-- the first quota that is full (nothing taken), else takes a slot of every
-- quota (each key then expires with its last slot) and returns 0.
local member, now, untl = ARGV[1], ARGV[2], ARGV[3]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if not redis.call('ZSCORE', key, member)
    and redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, untl, member)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, last[2])
end
return 0
