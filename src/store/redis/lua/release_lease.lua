-- Liveness::release_lease. KEYS: the lease. ARGV: holder.
-- Deletes the lease when the holder has it; returns 1 then, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
