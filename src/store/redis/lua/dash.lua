-- Shared by the dashboard registry scripts (store::dashboard, whose
-- DashState these follow step for step).
--
-- The registry: the rooms in k_dash_rooms (sorted set, id -> creation
-- order from the k_dash_seq counter); per room a hash k_dash_room (`h` its
-- JSON up to createdAt, built by the door; `b` the bytes it counts for in
-- the list bound), its participants' order in k_dash_members (sorted set)
-- and their JSON objects in k_dash_people (hash user id -> JSON). No
-- script parses those texts. k_dash_bytes is the list's bound so far (2
-- for the brackets, plus every room's `b`); k_dash_version the list's
-- version (a decimal string: it starts at the creating node's clock in
-- microseconds, so it keeps growing across a restart of Redis);
-- k_dash_clients node -> "<generation> <count>"; k_dash_nodes node -> unix
-- ms of its last sweep; k_dash_node_joins(node) the participants its
-- sockets joined, as "<bytes of room>:<room><user>".

-- The version (created at ARGV `now` ms if missing), as a decimal string.
local function dash_version(now)
  local v = redis.call('GET', k_dash_version())
  if not v then
    v = now .. '000'
    redis.call('SET', k_dash_version(), v)
  end
  return v
end

local function dash_bump(now)
  dash_version(now)
  redis.call('INCR', k_dash_version())
end

-- The list as JSON text, and how many rooms it holds.
local function dash_list()
  local ids = redis.call('ZRANGE', k_dash_rooms(), 0, -1)
  local out = {}
  for i, id in ipairs(ids) do
    local head = redis.call('HGET', k_dash_room(id), 'h')
    local users = redis.call('ZRANGE', k_dash_members(id), 0, -1)
    local ps = {}
    if #users > 0 then ps = redis.call('HMGET', k_dash_people(id), unpack(users)) end
    out[i] = head .. ',"participantCount":' .. #users .. ',"participants":[' .. table.concat(ps, ',') .. ']}'
  end
  return '[' .. table.concat(out, ',') .. ']', #ids
end

-- The reply of every change: {0, version, rooms, list}.
local function dash_reply(now)
  local v = dash_version(now)
  local list, n = dash_list()
  return {0, v, n, list}
end

local function dash_total_bytes()
  return tonumber(redis.call('GET', k_dash_bytes()) or '2')
end

-- Removes room `id` and what it counted for.
local function dash_drop(id)
  local rk = k_dash_room(id)
  local b = tonumber(redis.call('HGET', rk, 'b') or '0')
  redis.call('SET', k_dash_bytes(), dash_total_bytes() - b)
  redis.call('DEL', rk, k_dash_members(id), k_dash_people(id))
  redis.call('ZREM', k_dash_rooms(), id)
end

-- Removes `user` from room `id`; the room goes when it is (or was) empty.
-- True when the list changed.
local function dash_remove(id, user)
  local rk = k_dash_room(id)
  if redis.call('EXISTS', rk) == 0 then return false end
  local changed = false
  local pk = k_dash_people(id)
  local pj = redis.call('HGET', pk, user)
  if pj then
    redis.call('HDEL', pk, user)
    redis.call('ZREM', k_dash_members(id), user)
    redis.call('HINCRBY', rk, 'b', -(#pj + 1))
    redis.call('SET', k_dash_bytes(), dash_total_bytes() - (#pj + 1))
    changed = true
  end
  if redis.call('ZCARD', k_dash_members(id)) == 0 then
    dash_drop(id)
    changed = true
  end
  return changed
end

-- Adds participant `user` (JSON `pj`) to existing room `id`, no checks.
local function dash_add(id, user, pj)
  redis.call('HSET', k_dash_people(id), user, pj)
  redis.call('ZADD', k_dash_members(id), redis.call('INCR', k_dash_seq()), user)
  redis.call('HINCRBY', k_dash_room(id), 'b', #pj + 1)
  redis.call('SET', k_dash_bytes(), dash_total_bytes() + #pj + 1)
end

-- The room and the user of a node's join entry.
local function dash_unpair(pair)
  local digits = string.match(pair, '^%d+')
  local c = #digits + 1
  local n = tonumber(digits)
  return string.sub(pair, c + 1, c + n), string.sub(pair, c + n + 1)
end

-- Sets `node`'s count unless a newer generation is stored, and marks the
-- node as holding dashboard entries (at `now` ms).
local function dash_set_count(node, gen, count, now)
  local cur = redis.call('HGET', k_dash_clients(), node)
  local older = true
  if cur then
    local g = string.match(cur, '^(%d+) ')
    if g and (#g > #gen or (#g == #gen and g >= gen)) then older = false end
  end
  if older then redis.call('HSET', k_dash_clients(), node, gen .. ' ' .. count) end
  redis.call('HSET', k_dash_nodes(), node, now)
end

-- Dashboard sockets over every node.
local function dash_clients_total()
  local total = 0
  for _, v in ipairs(redis.call('HVALS', k_dash_clients())) do
    total = total + tonumber(string.match(v, ' (%d+)$') or '0')
  end
  return total
end
