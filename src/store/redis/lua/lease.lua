-- Liveness::try_lease. KEYS: the lease. ARGV: holder, ttl (ms).
-- Renews the lease when the holder has it, takes it when it is free;
-- returns 1 when the holder has it now, else 0.
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
