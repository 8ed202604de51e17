//! The Redis store: the peer directory, room membership and node heartbeats.
//!
//! Every operation that reads and writes is one Lua script, so it is atomic
//! against every other node. Room members are a hash per room (peer ->
//! `"<epoch> <node>\n<meta JSON>"`, see `MEMBER_LUA`); a second hash counts
//! members per node, which tells a dead node's reaper where to look without
//! scanning every room.
//!
//! No script ever decodes what a client wrote: Lua reads the epoch and the
//! node by position and keeps `meta` (and a worker's `m`) as an opaque
//! string. Redis's Lua JSON decoder (cjson) fails on nesting deeper than
//! 1,000; when member values were JSON it decoded, a `join` with a deeply
//! nested `meta` made every script touching that room fail: the member could
//! not leave, the node's re-registration failed forever, and its peers were
//! never cleaned up after it died.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use tracing::warn;

use super::{
    secret_hex, Claim, Claimed, Door, EndpointUpdate, Enqueued, LostPairing, OwnEntries, PairError,
    PeerLocation, Reaped, RoomSummary, SecretHash, Store, StoreError, Unpaired, Which, WorkerConn,
    WorkerRecord, WorkerState,
};
use crate::bus::WarnEvery;
use crate::cluster::Redis;
use crate::types::Member;
use crate::types::{NodeId, PeerId, PoolName, RoomName};

/// KEYS: peer key, node peers set. ARGV: "<epoch> <node>", peer.
/// Sets the directory entry and returns the previous one.
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return old
"#,
    )
});

/// KEYS: peer key, node peers set, node secrets hash. ARGV: "<epoch> <node>",
/// peer, prefix, secret hash (hex), proof: "token" (a token for the id was
/// verified), the presented secret's hash (hex), or "" (none).
/// Registers the peer unless a live connection on another, alive node holds
/// it and the proof is not for that connection: then returns {0, current
/// entry} and writes nothing. Else {1, previous entry or false}.
/// A node's secrets are a hash `{prefix}:node:{node}:secrets` (peer ->
/// "<epoch> <node> <hash>", the entry it belongs to and its hash) that
/// expires with the node: `keep_secrets` gives it its lifetime every
/// heartbeat (not this script: one command less per `hello`). Few arguments
/// on purpose: each one costs Redis about as much as a command.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local cur = redis.call('GET', KEYS[1])
local other = false
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local owner = sp and string.sub(cur, sp + 1)
  local me = string.sub(ARGV[1], string.find(ARGV[1], ' ', 1, true) + 1)
  if owner and owner ~= me then
    other = ARGV[3] .. ':node:' .. owner .. ':secrets'
    if ARGV[5] ~= 'token'
       and redis.call('EXISTS', ARGV[3] .. ':node:' .. owner .. ':alive') == 1
       and (ARGV[5] == '' or redis.call('HGET', other, ARGV[2]) ~= cur .. ' ' .. ARGV[5]) then
      return {0, cur}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1] .. ' ' .. ARGV[4])
if other then redis.call('HDEL', other, ARGV[2]) end
return {1, cur or false}
"#,
    )
});

/// KEYS: peer key, node secrets hash. ARGV: "<epoch> <node>", peer, secret hash (hex), TTL (ms).
/// Writes a connection's secret hash again if the entry is still that connection.
static RESTORE_SECRET: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. ' ' .. ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#,
    )
});

/// KEYS: nodes set. ARGV: prefix. The nodes whose heartbeat key exists.
static LIVE_NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local live = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. ':node:' .. n .. ':alive') == 1 then
    table.insert(live, n)
  end
end
return live
"#,
    )
});

/// KEYS: peer key, node peers set. ARGV: "<epoch> <node>", peer, node.
/// Re-registration after an outage: only when the entry is absent or already this node's.
static REREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  if sp and string.sub(cur, sp + 1) ~= ARGV[3] then return cur end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return false
"#,
    )
});

/// KEYS: peer key, node peers set, node secrets hash. ARGV: "<epoch> <node>", peer.
static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Shared Lua for the room scripts. A member value is `"<epoch> <node>\n<meta
/// JSON>"` (the epoch a decimal string, so Lua's doubles never round it; node
/// ids have no control characters, see `server.node_id`). Values written by
/// releases before envelope v3 are JSON `{"e":"<epoch>","n":"<node>","m":<meta>}`
/// in that fixed layout (serde's field order); they are read by position too,
/// never with `cjson`. `member_conn` returns the epoch and the node, or
/// nothing for a value in neither layout.
const MEMBER_LUA: &str = r#"
local function member_conn(v)
  if string.sub(v, 1, 1) == '{' then
    local e, p = string.match(v, '^{"e":"(%d+)","n":"()')
    if not e then return nil end
    local q = string.find(v, '","m":', p, true)
    if not q then return nil end
    local n = string.sub(v, p, q - 1)
    if string.find(n, '\\', 1, true) then n = string.gsub(n, '\\(.)', '%1') end
    return e, n
  end
  local sp = string.find(v, ' ', 1, true)
  if not sp then return nil end
  local nl = string.find(v, '\n', sp + 1, true)
  if not nl then return nil end
  return string.sub(v, 1, sp - 1), string.sub(v, sp + 1, nl - 1)
end
"#;

fn member_script(body: &str) -> Script {
    Script::from_lua(MEMBER_LUA.to_string() + body)
}

/// KEYS: members, room nodes, rooms index, node rooms. ARGV: peer, member
/// value, max, room, node, prefix, epoch. Returns {added (0/1), {peer, value,
/// ...}} or {-1} when full.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    member_script(
        r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {-1} end
local all = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local oldepoch, oldnode = nil, nil
if old then oldepoch, oldnode = member_conn(old) end
if oldnode ~= ARGV[5] then
  if oldnode then
    if redis.call('HINCRBY', KEYS[2], oldnode, -1) <= 0 then
      redis.call('HDEL', KEYS[2], oldnode)
      redis.call('SREM', ARGV[6] .. ':node:' .. oldnode .. ':rooms', ARGV[4])
    end
  end
  redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
end
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[4])
local added = 1
if old and oldepoch == ARGV[7] then added = 0 end
return {added, all}
"#,
    )
});

/// KEYS: members, room nodes, rooms index. ARGV: peer, epoch, room, prefix.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    member_script(
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local e, n = member_conn(v)
if e ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], n, -1) <= 0 then
  redis.call('HDEL', KEYS[2], n)
  redis.call('SREM', ARGV[4] .. ':node:' .. n .. ':rooms', ARGV[3])
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[3])
end
return 1
"#,
    )
});

/// KEYS: node peers set, node rooms set. ARGV: node, prefix.
/// Lists (without changing anything) the node's directory entries and
/// memberships: {{peer, epoch, ...}, {room, peer, epoch, ...}}.
static OWN: LazyLock<Script> = LazyLock::new(|| {
    member_script(
        r#"
local peers = {}
for _, p in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local cur = redis.call('GET', ARGV[2] .. ':peer:' .. p)
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    if sp and string.sub(cur, sp + 1) == ARGV[1] then
      table.insert(peers, p)
      table.insert(peers, string.sub(cur, 1, sp - 1))
    end
  end
end
local members = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local all = redis.call('HGETALL', ARGV[2] .. ':room:' .. room .. ':members')
  for i = 1, #all, 2 do
    local e, n = member_conn(all[i + 1])
    if n == ARGV[1] then
      table.insert(members, room)
      table.insert(members, all[i])
      table.insert(members, e)
    end
  end
end
return {peers, members}
"#,
    )
});

/// KEYS: node rooms set, node peers set, nodes set, rooms index. ARGV: dead
/// node, prefix. Removes every membership, directory entry and worker of the
/// node, and the node from the nodes set; returns {peers removed,
/// {room, peer, room, peer, ...}, {pairing, partner hash, ...}, workers removed}.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        MEMBER_LUA.to_string()
            + WORKER_LUA
            + r#"
local left = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local mk = ARGV[2] .. ':room:' .. room .. ':members'
  local nk = ARGV[2] .. ':room:' .. room .. ':nodes'
  local all = redis.call('HGETALL', mk)
  for i = 1, #all, 2 do
    local _, n = member_conn(all[i + 1])
    if n == ARGV[1] then
      redis.call('HDEL', mk, all[i])
      table.insert(left, room)
      table.insert(left, all[i])
    end
  end
  redis.call('HDEL', nk, ARGV[1])
  if redis.call('HLEN', mk) == 0 then
    redis.call('DEL', mk, nk)
    redis.call('SREM', KEYS[4], room)
  end
end
local n = 0
for _, p in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local pk = ARGV[2] .. ':peer:' .. p
  local cur = redis.call('GET', pk)
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    if sp and string.sub(cur, sp + 1) == ARGV[1] then
      redis.call('DEL', pk)
      n = n + 1
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
local lost = {}
local nw = 0
local wk = ARGV[2] .. ':node:' .. ARGV[1] .. ':workers'
for _, id in ipairs(redis.call('SMEMBERS', wk)) do
  local k = ARGV[2] .. ':worker:' .. id
  local w = redis.call('HMGET', k, 'n', 'pid', 'pt')
  if w[1] == ARGV[1] then
    redis.call('DEL', k)
    redis.call('SREM', ARGV[2] .. ':workers', id)
    nw = nw + 1
    local p = free_partner(ARGV[2], w[2], w[3])
    if p then
      table.insert(lost, w[2])
      table.insert(lost, p)
    end
  end
end
redis.call('DEL', wk)
return {n, left, lost, nw}
"#,
    )
});

/// Shared Lua for worker scripts. A worker is a hash `{prefix}:worker:{id}`:
/// `id`, `n` node, `e` epoch (a string, so Lua's doubles never round it),
/// `d` dialect, `o` observed address, `ip` public IP, `u` UDP endpoint, `p`
/// pool, `s` state (idle, queued, paired), `pid` pairing id, `pt` partner,
/// `m` meta JSON, `t` unix ms when last queued. Absent values are "".
/// `free_partner` makes the partner idle if it is still in that pairing and
/// returns its hash (flat), else false.
const WORKER_LUA: &str = r#"
local function free_partner(prefix, pid, partner)
  if not pid or pid == '' or not partner or partner == '' then return false end
  local pk = prefix .. ':worker:' .. partner
  if redis.call('HGET', pk, 'pid') ~= pid then return false end
  redis.call('HSET', pk, 's', 'idle', 'pid', '', 'pt', '')
  return redis.call('HGETALL', pk)
end
"#;

fn worker_script(body: &str) -> Script {
    Script::from_lua(WORKER_LUA.to_string() + body)
}

/// KEYS: worker, workers set, peer directory entry. ARGV: id, node, epoch,
/// dialect, observed, public ip, udp, prefix. Refused ({0}) when the directory
/// names another connection; replaces an older connection's record (freeing
/// its partner); applies non-empty endpoints. Returns {1} or {1, pairing, partner hash}.
static UPSERT_WORKER: LazyLock<Script> = LazyLock::new(|| {
    worker_script(
        r#"
local dir = redis.call('GET', KEYS[3])
if dir and dir ~= (ARGV[3] .. ' ' .. ARGV[2]) then return {0} end
local e = redis.call('HGET', KEYS[1], 'e')
local lost = false
local lostpid = false
if e ~= ARGV[3] then
  if e then
    local old = redis.call('HMGET', KEYS[1], 'n', 'pid', 'pt')
    lost = free_partner(ARGV[8], old[2], old[3])
    lostpid = old[2]
    if old[1] then redis.call('SREM', ARGV[8] .. ':node:' .. old[1] .. ':workers', ARGV[1]) end
    redis.call('DEL', KEYS[1])
  end
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'n', ARGV[2], 'e', ARGV[3], 'd', ARGV[4],
    'o', ARGV[5], 's', 'idle', 'm', 'null', 't', '0', 'p', '', 'pid', '', 'pt', '', 'ip', '', 'u', '')
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('SADD', ARGV[8] .. ':node:' .. ARGV[2] .. ':workers', ARGV[1])
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'ip', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'u', ARGV[7]) end
if lost then return {1, lostpid, lost} end
return {1}
"#,
    )
});

/// KEYS: worker, pool queue. ARGV: id, epoch, pool, meta, now ms, pairing id,
/// prefix. Returns {-2} stale, {-1} already paired, {0} queued, or {1,
/// initiator hash, responder hash} when matched with the queue's earliest
/// valid entry (stale entries are popped and dropped on the way).
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    worker_script(
        r#"
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
    local hk = ARGV[7] .. ':worker:' .. head
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
"#,
    )
});

/// KEYS: worker a, worker b. ARGV: a, b, pairing id. Returns {-1, 1|2} not
/// found, {-2, 1|2} already paired, or {1, a hash, b hash}.
static PAIR: LazyLock<Script> = LazyLock::new(|| {
    worker_script(
        r#"
local sa = redis.call('HGET', KEYS[1], 's')
if not sa then return {-1, 1} end
local sb = redis.call('HGET', KEYS[2], 's')
if not sb then return {-1, 2} end
if sa == 'paired' then return {-2, 1} end
if sb == 'paired' then return {-2, 2} end
redis.call('HSET', KEYS[1], 's', 'paired', 'pid', ARGV[3], 'pt', ARGV[2])
redis.call('HSET', KEYS[2], 's', 'paired', 'pid', ARGV[3], 'pt', ARGV[1])
return {1, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"#,
    )
});

/// KEYS: worker. ARGV: id, epoch, prefix. Returns {-1} not paired (or stale),
/// {2} dequeued (or the partner was already gone), {1, pairing, partner hash}.
static UNPAIR: LazyLock<Script> = LazyLock::new(|| {
    worker_script(
        r#"
local w = redis.call('HMGET', KEYS[1], 'e', 's', 'pid', 'pt')
if w[1] ~= ARGV[2] then return {-1} end
if w[2] == 'queued' then
  redis.call('HSET', KEYS[1], 's', 'idle')
  return {2}
end
if w[2] ~= 'paired' then return {-1} end
redis.call('HSET', KEYS[1], 's', 'idle', 'pid', '', 'pt', '')
local p = free_partner(ARGV[3], w[3], w[4])
if p then return {1, w[3], p} end
return {2}
"#,
    )
});

/// KEYS: worker, workers set. ARGV: id, epoch, prefix. Returns {0} (nothing
/// or no partner) or {1, pairing, partner hash}.
static REMOVE_WORKER: LazyLock<Script> = LazyLock::new(|| {
    worker_script(
        r#"
local w = redis.call('HMGET', KEYS[1], 'e', 'n', 'pid', 'pt')
if w[1] ~= ARGV[2] then return {0} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', ARGV[3] .. ':node:' .. w[2] .. ':workers', ARGV[1])
local p = free_partner(ARGV[3], w[3], w[4])
if p then return {1, w[3], p} end
return {0}
"#,
    )
});

/// KEYS: workers set. ARGV: prefix. Every worker hash.
static LIST_WORKERS: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', ARGV[1] .. ':worker:' .. id)
  if #h > 0 then table.insert(out, h) else redis.call('SREM', KEYS[1], id) end
end
return out
"#,
    )
});

/// KEYS: node workers set. ARGV: node, prefix. {id, epoch, ...} of the
/// records that name the node.
static NODE_WORKERS: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local w = redis.call('HMGET', ARGV[2] .. ':worker:' .. id, 'n', 'e')
  if w[1] == ARGV[1] then
    table.insert(out, id)
    table.insert(out, w[2])
  end
end
return out
"#,
    )
});

/// Parses a flat worker hash (`[field, value, ...]`) into a record.
fn worker_from(v: Value) -> Option<WorkerRecord> {
    let Value::Array(flat) = v else { return None };
    let mut f: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let strs: Vec<String> = flat.into_iter().filter_map(|v| v.as_string()).collect();
    for c in strs.chunks_exact(2) {
        f.insert(c[0].clone(), c[1].clone());
    }
    let mut take = |k: &str| f.remove(k).filter(|s| !s.is_empty());
    Some(WorkerRecord {
        peer_id: PeerId::from_trusted(take("id")?),
        node: NodeId::from_trusted(take("n")?),
        epoch: take("e")?.parse().ok()?,
        dialect: take("d").as_deref().and_then(Door::parse)?,
        observed_addr: take("o").unwrap_or_default(),
        public_ip: take("ip"),
        udp: take("u"),
        pool: take("p").map(PoolName::from_trusted),
        state: take("s")
            .as_deref()
            .and_then(WorkerState::parse)
            .unwrap_or(WorkerState::Idle),
        pairing_id: take("pid"),
        partner: take("pt").map(PeerId::from_trusted),
        meta: take("m")
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or(serde_json::Value::Null),
        since_ms: take("t").and_then(|t| t.parse().ok()).unwrap_or(0),
    })
}

/// `{pairing, partner hash}` at `at` in a script's reply, as a lost pairing.
fn lost_at(out: &mut std::vec::IntoIter<Value>) -> Option<LostPairing> {
    let pairing_id = out.next()?.as_string()?;
    let partner = worker_from(out.next()?)?;
    Some(LostPairing {
        pairing_id,
        partner,
    })
}

fn store_err(e: Error) -> PairError {
    PairError::Store(unavailable(e))
}

fn reply_code(out: &[Value]) -> Option<i64> {
    out.first().and_then(|v| v.as_i64())
}

/// A member value (see [`MEMBER_LUA`]).
fn member_value(epoch: u64, node: &NodeId, meta: &serde_json::Value) -> String {
    let meta = serde_json::to_string(meta).expect("a JSON value serializes");
    let mut v = String::with_capacity(meta.len() + node.as_str().len() + 22);
    v.push_str(&epoch.to_string());
    v.push(' ');
    v.push_str(node.as_str());
    v.push('\n');
    v.push_str(&meta);
    v
}

/// The meta JSON text of a member value, in either layout of [`MEMBER_LUA`].
fn member_meta(v: &str) -> Option<&str> {
    if v.starts_with('{') {
        // `{"e":"<epoch>","n":"<node>","m":<meta>}`: the node is JSON-escaped,
        // so the first `","m":` ends it.
        let at = v.find(r#"","m":"#)? + 6;
        v.strip_suffix('}')?.get(at..)
    } else {
        v.split_once('\n').map(|(_, meta)| meta)
    }
}

/// Member meta that would not parse is logged at most once per 10 s.
static META_WARN: WarnEvery = WarnEvery::new(10_000);

/// A failure of Redis itself (unreachable, slow, busy) is worth retrying;
/// an error reply to a script or command (a script error, a key of the wrong
/// type) would come back the same.
fn unavailable(e: Error) -> StoreError {
    let transient = matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Cluster
            | ErrorKind::Routing
            | ErrorKind::Sentinel
    ) || [
        "OOM",
        "BUSY",
        "LOADING",
        "MASTERDOWN",
        "READONLY",
        "TRYAGAIN",
        "NOREPLICAS",
    ]
    .iter()
    .any(|p| e.details().starts_with(p));
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Rejected(e.to_string())
    }
}

/// The hash of node `n`'s connection secrets (peer -> "<epoch> <node> <sha256 hex>").
fn node_secrets(prefix: &str, n: &NodeId) -> String {
    format!("{prefix}:node:{n}:secrets")
}

fn loc_value(loc: &PeerLocation) -> String {
    format!("{} {}", loc.epoch, loc.node)
}

fn parse_loc(v: &str) -> Option<PeerLocation> {
    let (epoch, node) = v.split_once(' ')?;
    Some(PeerLocation {
        node: NodeId::from_trusted(node),
        epoch: epoch.parse().ok()?,
    })
}

/// A member from its hash entry. Meta that does not parse back (JSON nested
/// deeper than serde_json's 128 levels: the door may have taken it from
/// MessagePack) is listed as `null` rather than hiding the member.
fn member_from(peer: &str, value: &str) -> Option<Member> {
    let text = member_meta(value)?;
    let meta = serde_json::from_str(text).unwrap_or_else(|e| {
        if let Some(held) = META_WARN.allow() {
            warn!(peer, error = %e, held_back = held, "stored member meta does not parse; listed as null");
        }
        serde_json::Value::Null
    });
    Some(Member {
        peer_id: PeerId::from_trusted(peer),
        meta,
    })
}

/// Pairs a flat `[field, value, ...]` array into members.
fn members_from(flat: Vec<Value>) -> Vec<Member> {
    let strs: Vec<String> = flat.into_iter().filter_map(|v| v.as_string()).collect();
    strs.chunks_exact(2)
        .filter_map(|c| member_from(&c[0], &c[1]))
        .collect()
}

/// The Redis store.
#[derive(Debug)]
pub struct RedisStore {
    r: Arc<Redis>,
    /// The node this store serves: memberships and directory entries it writes are this node's.
    me: NodeId,
}

impl RedisStore {
    /// A store on the given connections, for node `me`.
    pub fn new(r: Arc<Redis>, me: NodeId) -> Self {
        Self { r, me }
    }

    /// How long a node's secret hashes outlive its last `keep_secrets`: two
    /// node lifetimes, so they never lapse while the node lives, and go
    /// soon after it dies (its entries are reaped by then).
    fn secrets_ttl_ms(&self) -> u64 {
        2 * self.r.cfg.node_ttl.as_millis() as u64
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        let k = &self.r.keys;
        let old: Option<String> = REGISTER
            .evalsha_with_reload(
                self.r.client(),
                vec![k.peer(peer), k.node_peers(&loc.node)],
                vec![loc_value(&loc), peer.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(old.as_deref().and_then(parse_loc))
    }

    async fn claim_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
        claim: &Claim,
    ) -> Result<Claimed, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = CLAIM
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.peer(peer),
                    k.node_peers(&loc.node),
                    node_secrets(k.prefix(), &loc.node),
                ],
                vec![
                    loc_value(&loc),
                    peer.to_string(),
                    k.prefix().to_string(),
                    secret_hex(&claim.secret),
                    match (&claim.presented, claim.token_for_id) {
                        (_, true) => "token".to_string(),
                        (Some(p), false) => secret_hex(p),
                        (None, false) => String::new(),
                    },
                ],
            )
            .await
            .map_err(unavailable)?;
        let mut out = out.into_iter();
        let done = out.next().and_then(|v| v.as_i64());
        let entry = out
            .next()
            .and_then(|v| v.as_string())
            .and_then(|v| parse_loc(&v));
        match (done, entry) {
            (Some(1), prev) => Ok(Claimed::Registered(prev)),
            (Some(0), Some(cur)) => Ok(Claimed::Taken(cur)),
            _ => Err(StoreError::Unavailable(
                "unexpected reply to the claim script".into(),
            )),
        }
    }

    async fn restore_secret(
        &self,
        peer: &PeerId,
        loc: &PeerLocation,
        secret: &SecretHash,
    ) -> Result<(), StoreError> {
        let k = &self.r.keys;
        let _: i64 = RESTORE_SECRET
            .evalsha_with_reload(
                self.r.client(),
                vec![k.peer(peer), node_secrets(k.prefix(), &loc.node)],
                vec![
                    loc_value(loc),
                    peer.to_string(),
                    secret_hex(secret),
                    self.secrets_ttl_ms().to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn keep_secrets(&self, me: &NodeId) -> Result<(), StoreError> {
        let _: i64 = self
            .r
            .client()
            .pexpire(
                node_secrets(self.r.keys.prefix(), me),
                self.secrets_ttl_ms() as i64,
                None,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        let live: Vec<String> = LIVE_NODES
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.nodes()],
                vec![self.r.keys.prefix().to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(live.into_iter().map(NodeId::from_trusted).collect())
    }

    async fn unregister_peer(&self, peer: &PeerId, epoch: u64) -> Result<bool, StoreError> {
        // The node is part of the value: only this node's registration of that epoch goes.
        let loc = PeerLocation {
            node: self.me.clone(),
            epoch,
        };
        let k = &self.r.keys;
        let n: i64 = UNREGISTER
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.peer(peer),
                    k.node_peers(&loc.node),
                    node_secrets(k.prefix(), &loc.node),
                ],
                vec![loc_value(&loc), peer.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn locate_peer(&self, peer: &PeerId) -> Result<Option<PeerLocation>, StoreError> {
        let v: Option<String> = self
            .r
            .client()
            .get(self.r.keys.peer(peer))
            .await
            .map_err(unavailable)?;
        Ok(v.as_deref().and_then(parse_loc))
    }

    async fn join_room(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let node = self.me.clone();
        let k = &self.r.keys;
        let value = member_value(epoch, &node, &member.meta);
        let out: Vec<Value> = JOIN
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.room_members(room),
                    k.room_nodes(room),
                    k.rooms(),
                    k.node_rooms(&node),
                ],
                vec![
                    member.peer_id.to_string(),
                    value,
                    max_peers.min(i64::MAX as usize).to_string(),
                    room.to_string(),
                    node.to_string(),
                    k.prefix().to_string(),
                    epoch.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        let mut it = out.into_iter();
        match it.next().and_then(|v| v.as_i64()) {
            Some(-1) => Err(StoreError::RoomFull),
            Some(_) => {
                let flat = match it.next() {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                Ok(members_from(flat)
                    .into_iter()
                    .filter(|m| m.peer_id != member.peer_id)
                    .collect())
            }
            None => Err(StoreError::Unavailable("unexpected JOIN reply".into())),
        }
    }

    async fn leave_room(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let k = &self.r.keys;
        let n: i64 = LEAVE
            .evalsha_with_reload(
                self.r.client(),
                vec![k.room_members(room), k.room_nodes(room), k.rooms()],
                vec![
                    peer.to_string(),
                    epoch.to_string(),
                    room.to_string(),
                    k.prefix().to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn room_members(&self, room: &RoomName) -> Result<Option<Vec<Member>>, StoreError> {
        let all: Vec<Value> = self
            .r
            .client()
            .hgetall::<Value, _>(self.r.keys.room_members(room))
            .await
            .map_err(unavailable)
            .map(|v| match v {
                Value::Map(m) => m
                    .inner()
                    .into_iter()
                    .flat_map(|(k, v)| [Value::from(k), v])
                    .collect(),
                Value::Array(a) => a,
                _ => Vec::new(),
            })?;
        let mut members = members_from(all);
        members.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Ok((!members.is_empty()).then_some(members))
    }

    async fn list_rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        let c = self.r.client();
        let names: Vec<String> = c.smembers(self.r.keys.rooms()).await.map_err(unavailable)?;
        let mut rooms = Vec::with_capacity(names.len());
        for name in names {
            let room = RoomName::from_trusted(name);
            let n: i64 = c
                .hlen(self.r.keys.room_members(&room))
                .await
                .map_err(unavailable)?;
            if n > 0 {
                rooms.push(RoomSummary {
                    room,
                    members: n as usize,
                });
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(rooms)
    }

    async fn reregister_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        let k = &self.r.keys;
        let other: Option<String> = REREGISTER
            .evalsha_with_reload(
                self.r.client(),
                vec![k.peer(peer), k.node_peers(&loc.node)],
                vec![loc_value(&loc), peer.to_string(), loc.node.to_string()],
            )
            .await
            .map_err(unavailable)?;
        Ok(other.as_deref().and_then(parse_loc))
    }

    async fn heartbeat(&self, node: &NodeId, ttl: Duration) -> Result<bool, StoreError> {
        let c = self.r.client();
        let prev: Option<String> = c
            .set(
                self.r.keys.node_alive(node),
                "1",
                Some(Expiration::PX(ttl.as_millis() as i64)),
                None,
                true,
            )
            .await
            .map_err(unavailable)?;
        let _: i64 = c
            .sadd(self.r.keys.nodes(), node.to_string())
            .await
            .map_err(unavailable)?;
        if prev.is_none() {
            // This node was gone (or declared dead) and is back: a reaper's
            // claim on it must not outlive that, or a real death in the next
            // minute would go unreaped.
            let _: i64 = c
                .del(self.r.keys.node_reaper(node))
                .await
                .map_err(unavailable)?;
        }
        Ok(prev.is_some())
    }

    async fn dead_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        let c = self.r.client();
        let nodes: Vec<String> = c.smembers(self.r.keys.nodes()).await.map_err(unavailable)?;
        let mut dead = Vec::new();
        for n in nodes {
            let id = NodeId::from_trusted(n);
            let alive: i64 = c
                .exists(self.r.keys.node_alive(&id))
                .await
                .map_err(unavailable)?;
            if alive == 0 {
                dead.push(id);
            }
        }
        Ok(dead)
    }

    async fn reap_node(&self, dead: &NodeId, me: &NodeId) -> Result<Option<Reaped>, StoreError> {
        let k = &self.r.keys;
        let c = self.r.client();
        let claimed: Option<String> = c
            .set(
                k.node_reaper(dead),
                me.to_string(),
                Some(Expiration::PX(60_000)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(unavailable)?;
        if claimed.is_none() {
            return Ok(None);
        }
        let out: Vec<Value> = match REAP
            .evalsha_with_reload(
                c,
                vec![k.node_rooms(dead), k.node_peers(dead), k.nodes(), k.rooms()],
                vec![dead.to_string(), k.prefix().to_string()],
            )
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = unavailable(e);
                if e.is_transient() {
                    // Give the claim up, so the next scan (of any node) tries
                    // again at once rather than after the claim's minute. A
                    // refusal keeps it: the next attempt is a minute away.
                    let _: Result<i64, _> = c.del(k.node_reaper(dead)).await;
                }
                return Err(e);
            }
        };
        let mut it = out.into_iter();
        let peers = it.next().and_then(|v| v.as_i64()).unwrap_or(0) as usize;
        let flat: Vec<String> = match it.next() {
            Some(Value::Array(a)) => a.into_iter().filter_map(|v| v.as_string()).collect(),
            _ => Vec::new(),
        };
        let mut lost = Vec::new();
        if let Some(Value::Array(a)) = it.next() {
            let mut pairs = a.into_iter();
            while let Some(l) = lost_at(&mut pairs) {
                // Both sides on the dead node: nobody to tell.
                if l.partner.node != *dead {
                    lost.push(l);
                }
            }
        }
        let left = flat
            .chunks_exact(2)
            .map(|c| {
                (
                    RoomName::from_trusted(c[0].as_str()),
                    PeerId::from_trusted(c[1].as_str()),
                )
            })
            .collect();
        Ok(Some(Reaped { left, peers, lost }))
    }

    async fn restore_member(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let k = &self.r.keys;
        let value = member_value(epoch, &self.me, &member.meta);
        let out: Vec<Value> = JOIN
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.room_members(room),
                    k.room_nodes(room),
                    k.rooms(),
                    k.node_rooms(&self.me),
                ],
                vec![
                    member.peer_id.to_string(),
                    value,
                    i64::MAX.to_string(),
                    room.to_string(),
                    self.me.to_string(),
                    k.prefix().to_string(),
                    epoch.to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(out.first().and_then(|v| v.as_i64()) == Some(1))
    }

    async fn goodbye(&self, node: &NodeId) -> Result<(), StoreError> {
        let c = self.r.client();
        let _: i64 = c
            .del(self.r.keys.node_alive(node))
            .await
            .map_err(unavailable)?;
        let _: i64 = c
            .srem(self.r.keys.nodes(), node.to_string())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn upsert_worker(
        &self,
        conn: &WorkerConn,
        ep: &EndpointUpdate,
    ) -> Result<Option<LostPairing>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = UPSERT_WORKER
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(&conn.peer_id), k.workers(), k.peer(&conn.peer_id)],
                vec![
                    conn.peer_id.to_string(),
                    conn.node.to_string(),
                    conn.epoch.to_string(),
                    conn.dialect.as_str().to_string(),
                    conn.observed_addr.clone(),
                    ep.public_ip.clone().unwrap_or_default(),
                    ep.udp.clone().unwrap_or_default(),
                    k.prefix().to_string(),
                ],
            )
            .await
            .map_err(unavailable)?;
        let mut it = out.into_iter();
        it.next();
        Ok(lost_at(&mut it))
    }

    async fn enqueue_or_match(
        &self,
        peer: &PeerId,
        epoch: u64,
        pool: &PoolName,
        meta: &serde_json::Value,
        now_ms: u64,
        pairing_id: &str,
    ) -> Result<Enqueued, PairError> {
        let k = &self.r.keys;
        let out: Vec<Value> = ENQUEUE
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(peer), k.pool_queue(pool)],
                vec![
                    peer.to_string(),
                    epoch.to_string(),
                    pool.to_string(),
                    meta.to_string(),
                    now_ms.to_string(),
                    pairing_id.to_string(),
                    k.prefix().to_string(),
                ],
            )
            .await
            .map_err(store_err)?;
        match reply_code(&out) {
            Some(-2) => Err(PairError::Stale),
            Some(-1) => Err(PairError::AlreadyPaired(Which::A)),
            Some(0) => Ok(Enqueued::Queued),
            Some(1) => {
                let mut it = out.into_iter().skip(1);
                let initiator = it.next().and_then(worker_from);
                let responder = it.next().and_then(worker_from);
                match (initiator, responder) {
                    (Some(initiator), Some(responder)) => Ok(Enqueued::Matched {
                        pairing_id: pairing_id.to_string(),
                        initiator,
                        responder,
                    }),
                    _ => Err(PairError::Store(StoreError::Unavailable(
                        "unexpected ENQUEUE reply".into(),
                    ))),
                }
            }
            _ => Err(PairError::Store(StoreError::Unavailable(
                "unexpected ENQUEUE reply".into(),
            ))),
        }
    }

    async fn pair_workers(
        &self,
        a: &PeerId,
        b: &PeerId,
        pairing_id: &str,
    ) -> Result<(WorkerRecord, WorkerRecord), PairError> {
        if a == b {
            return Err(PairError::SameWorker);
        }
        let k = &self.r.keys;
        let out: Vec<Value> = PAIR
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(a), k.worker(b)],
                vec![a.to_string(), b.to_string(), pairing_id.to_string()],
            )
            .await
            .map_err(store_err)?;
        let which = |v: Option<&Value>| {
            if v.and_then(|v| v.as_i64()) == Some(2) {
                Which::B
            } else {
                Which::A
            }
        };
        match reply_code(&out) {
            Some(-1) => Err(PairError::NotFound(which(out.get(1)))),
            Some(-2) => Err(PairError::AlreadyPaired(which(out.get(1)))),
            Some(1) => {
                let mut it = out.into_iter().skip(1);
                match (
                    it.next().and_then(worker_from),
                    it.next().and_then(worker_from),
                ) {
                    (Some(ra), Some(rb)) => Ok((ra, rb)),
                    _ => Err(PairError::Store(StoreError::Unavailable(
                        "unexpected PAIR reply".into(),
                    ))),
                }
            }
            _ => Err(PairError::Store(StoreError::Unavailable(
                "unexpected PAIR reply".into(),
            ))),
        }
    }

    async fn unpair_worker(&self, peer: &PeerId, epoch: u64) -> Result<Unpaired, PairError> {
        let k = &self.r.keys;
        let out: Vec<Value> = UNPAIR
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(peer)],
                vec![peer.to_string(), epoch.to_string(), k.prefix().to_string()],
            )
            .await
            .map_err(store_err)?;
        match reply_code(&out) {
            Some(1) => {
                let mut it = out.into_iter();
                it.next();
                Ok(lost_at(&mut it).map_or(Unpaired::Dequeued, Unpaired::Paired))
            }
            Some(2) => Ok(Unpaired::Dequeued),
            _ => Err(PairError::NotPaired),
        }
    }

    async fn remove_worker(
        &self,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<Option<LostPairing>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = REMOVE_WORKER
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(peer), k.workers()],
                vec![peer.to_string(), epoch.to_string(), k.prefix().to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut it = out.into_iter();
        it.next();
        Ok(lost_at(&mut it))
    }

    async fn get_worker(&self, peer: &PeerId) -> Result<Option<WorkerRecord>, StoreError> {
        let v: Value = self
            .r
            .client()
            .hgetall(self.r.keys.worker(peer))
            .await
            .map_err(unavailable)?;
        let flat = match v {
            Value::Map(m) => Value::Array(
                m.inner()
                    .into_iter()
                    .flat_map(|(k, v)| [Value::from(k), v])
                    .collect(),
            ),
            other => other,
        };
        Ok(worker_from(flat))
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = LIST_WORKERS
            .evalsha_with_reload(
                self.r.client(),
                vec![k.workers()],
                vec![k.prefix().to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut workers: Vec<WorkerRecord> = out.into_iter().filter_map(worker_from).collect();
        workers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Ok(workers)
    }

    async fn node_workers(&self, node: &NodeId) -> Result<Vec<(PeerId, u64)>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = NODE_WORKERS
            .evalsha_with_reload(
                self.r.client(),
                vec![k.node_workers(node)],
                vec![node.to_string(), k.prefix().to_string()],
            )
            .await
            .map_err(unavailable)?;
        let strs: Vec<String> = out.into_iter().filter_map(|v| v.as_string()).collect();
        Ok(strs
            .chunks_exact(2)
            .filter_map(|c| Some((PeerId::from_trusted(c[0].as_str()), c[1].parse().ok()?)))
            .collect())
    }

    async fn own_entries(&self, me: &NodeId) -> Result<OwnEntries, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = OWN
            .evalsha_with_reload(
                self.r.client(),
                vec![k.node_peers(me), k.node_rooms(me)],
                vec![me.to_string(), k.prefix().to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut lists = out.into_iter().map(|v| match v {
            Value::Array(a) => a
                .into_iter()
                .filter_map(|v| v.as_string())
                .collect::<Vec<String>>(),
            _ => Vec::new(),
        });
        let peers = lists.next().unwrap_or_default();
        let members = lists.next().unwrap_or_default();
        Ok(OwnEntries {
            peers: peers
                .chunks_exact(2)
                .filter_map(|c| Some((PeerId::from_trusted(c[0].as_str()), c[1].parse().ok()?)))
                .collect(),
            memberships: members
                .chunks_exact(3)
                .filter_map(|c| {
                    Some((
                        RoomName::from_trusted(c[0].as_str()),
                        PeerId::from_trusted(c[1].as_str()),
                        c[2].parse().ok()?,
                    ))
                })
                .collect(),
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_values_keep_meta_as_text_after_the_epoch_and_node() {
        let meta = json!({"name": "a b\nc", "n": [1, {"x": null}]});
        let v = member_value(42, &NodeId::from_trusted("node 1"), &meta);
        assert_eq!(
            v,
            format!("42 node 1\n{}", serde_json::to_string(&meta).unwrap())
        );
        assert_eq!(member_from("p", &v).unwrap().meta, meta);
    }

    /// Values an older release wrote (`{"e","n","m"}` JSON, the node
    /// escaped) are read by position too.
    #[test]
    fn legacy_member_values_are_read() {
        let legacy = r#"{"e":"7","n":"we\"ird\\","m":{"k":"\",\"m\":"}}"#;
        assert_eq!(member_meta(legacy), Some(r#"{"k":"\",\"m\":"}"#));
        assert_eq!(
            member_from("p", legacy).unwrap().meta,
            json!({"k": "\",\"m\":"})
        );
        assert_eq!(member_meta("not a member"), None);
    }

    /// Meta that does not parse back (deeper than serde_json's 128 levels)
    /// lists the member with `null`, rather than hiding it.
    #[test]
    fn unparsable_meta_lists_the_member_as_null() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let m = member_from("p", &format!("1 n\n{deep}")).unwrap();
        assert_eq!((m.peer_id.as_str(), m.meta), ("p", serde_json::Value::Null));
    }
}
