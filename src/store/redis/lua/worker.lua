-- Shared by the worker scripts. A worker is a hash k_worker(id): `id`, `n`
-- node, `e` epoch (a string, so Lua's doubles never round it), `d` door
-- ("native" or "legacy"), `o` observed address, `ip` public IP, `u` UDP
-- endpoint, `p` pool, `s` state (idle, queued, paired), `pid` pairing id,
-- `pt` partner, `m` meta JSON (never parsed here), `t` unix ms when last
-- queued. Absent values are ''.

-- Makes the partner idle if it is still in pairing `pid`, and returns its
-- hash (flat); else false.
local function free_partner(pid, partner)
  if not pid or pid == '' or not partner or partner == '' then return false end
  local pk = k_worker(partner)
  if redis.call('HGET', pk, 'pid') ~= pid then return false end
  redis.call('HSET', pk, 's', 'idle', 'pid', '', 'pt', '')
  return redis.call('HGETALL', pk)
end
