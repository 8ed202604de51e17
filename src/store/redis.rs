//! The Redis store: the peer directory, room membership and node heartbeats.
//!
//! Every operation that reads and writes is one Lua script, so it is atomic
//! against every other node. Room members are a hash per room (peer -> JSON
//! `{"e": epoch, "n": node, "m": meta}`, the epoch a string so Lua's doubles
//! never round it); a second hash counts members per node, which tells a dead
//! node's reaper where to look without scanning every room.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use serde::{Deserialize, Serialize};

use super::{PeerLocation, Reaped, RoomSummary, Store, StoreError};
use crate::cluster::Redis;
use crate::protocol::Member;
use crate::types::{NodeId, PeerId, RoomName};

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

/// KEYS: peer key, node peers set. ARGV: "<epoch> <node>", peer.
static UNREGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// KEYS: members, room nodes, rooms index, node rooms. ARGV: peer, member JSON,
/// max, room, node, prefix. Returns {added (0/1), {peer, json, ...}} or {-1} when full.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {-1} end
local all = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local oldnode = false
if old then oldnode = cjson.decode(old)['n'] end
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
if old and cjson.decode(old)['e'] == cjson.decode(ARGV[2])['e'] then added = 0 end
return {added, all}
"#,
    )
});

/// KEYS: members, room nodes, rooms index. ARGV: peer, epoch, room, prefix.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local m = cjson.decode(v)
if m['e'] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], m['n'], -1) <= 0 then
  redis.call('HDEL', KEYS[2], m['n'])
  redis.call('SREM', ARGV[4] .. ':node:' .. m['n'] .. ':rooms', ARGV[3])
end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[3])
end
return 1
"#,
    )
});

/// KEYS: node rooms set, node peers set, nodes set, rooms index. ARGV: dead node, prefix.
/// Removes every membership and directory entry of the dead node; returns
/// {peers removed, {room, peer, room, peer, ...}}.
static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local left = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local mk = ARGV[2] .. ':room:' .. room .. ':members'
  local nk = ARGV[2] .. ':room:' .. room .. ':nodes'
  local all = redis.call('HGETALL', mk)
  for i = 1, #all, 2 do
    if cjson.decode(all[i + 1])['n'] == ARGV[1] then
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
return {n, left}
"#,
    )
});

#[derive(Serialize, Deserialize)]
struct StoredMember {
    e: String,
    n: String,
    m: serde_json::Value,
}

fn unavailable(e: Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
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

fn member_from(peer: &str, json: &str) -> Option<Member> {
    let m: StoredMember = serde_json::from_str(json).ok()?;
    Some(Member {
        peer_id: PeerId::from_trusted(peer),
        meta: m.m,
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
                vec![k.peer(peer), k.node_peers(&loc.node)],
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
        let json = serde_json::to_string(&StoredMember {
            e: epoch.to_string(),
            n: node.to_string(),
            m: member.meta.clone(),
        })
        .expect("member serializes");
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
                    json,
                    max_peers.min(i64::MAX as usize).to_string(),
                    room.to_string(),
                    node.to_string(),
                    k.prefix().to_string(),
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

    async fn reap_node(
        &self,
        dead: &NodeId,
        me: &NodeId,
        claim: bool,
    ) -> Result<Option<Reaped>, StoreError> {
        let k = &self.r.keys;
        let c = self.r.client();
        if claim {
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
        }
        let out: Vec<Value> = REAP
            .evalsha_with_reload(
                c,
                vec![k.node_rooms(dead), k.node_peers(dead), k.nodes(), k.rooms()],
                vec![dead.to_string(), k.prefix().to_string()],
            )
            .await
            .map_err(unavailable)?;
        let mut it = out.into_iter();
        let peers = it.next().and_then(|v| v.as_i64()).unwrap_or(0) as usize;
        let flat: Vec<String> = match it.next() {
            Some(Value::Array(a)) => a.into_iter().filter_map(|v| v.as_string()).collect(),
            _ => Vec::new(),
        };
        let left = flat
            .chunks_exact(2)
            .map(|c| {
                (
                    RoomName::from_trusted(c[0].as_str()),
                    PeerId::from_trusted(c[1].as_str()),
                )
            })
            .collect();
        Ok(Some(Reaped { left, peers }))
    }

    async fn restore_member(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let k = &self.r.keys;
        let json = serde_json::to_string(&StoredMember {
            e: epoch.to_string(),
            n: self.me.to_string(),
            m: member.meta.clone(),
        })
        .expect("member serializes");
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
                    json,
                    i64::MAX.to_string(),
                    room.to_string(),
                    self.me.to_string(),
                    k.prefix().to_string(),
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

    fn name(&self) -> &'static str {
        "redis"
    }
}
