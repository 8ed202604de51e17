//! The Redis store: the peer directory, rooms, node heartbeats and workers.
//!
//! Every operation that reads and writes is one Lua script, so it is atomic
//! against every other node. The scripts live in `lua/`, one file each,
//! plus three files of shared helpers (`member.lua`, `room.lua`,
//! `worker.lua`); each file's header says its `KEYS`, `ARGV` and reply.
//!
//! **Key names come from one place.** A script gets some keys in `KEYS`
//! (built by [`crate::cluster::Keys`]) and builds others itself (a dead
//! node's rooms, a partner's record) with the `k_*` functions of
//! [`Keys::lua_prelude`], generated from the same templates as the Rust
//! methods; no script spells a key name. The prefix is baked into each
//! script when the store is built, so scripts are per store (their SHA-1
//! differs per prefix, which Redis caches like any other script) and no
//! call carries the prefix as an argument. Only the `k_*` functions a
//! script calls are put in front of it, since Redis runs the whole chunk,
//! function definitions included, on every call.
//!
//! **Rooms** are a record (hash `room:{r}:record`, see `lua/room.lua` for
//! the fields), the members (hash peer -> `"<epoch> <node>\n<meta JSON>"`,
//! see `lua/member.lua`), a count of members per node (which tells a dead
//! node's reaper where to look without scanning every room) and the name in
//! a sorted set (`room-index`, all scores 0) that `list_rooms` pages through
//! by name.
//!
//! No script ever decodes what a client wrote: Lua reads the epoch and the
//! node by position and keeps `meta` (a member's, a room record's `m`, a
//! worker's `m`) as an opaque string. Redis's Lua JSON decoder (cjson) fails
//! on nesting deeper than 1,000; when member values were JSON it decoded, a
//! `join` with a deeply nested `meta` made every script touching that room
//! fail: the member could not leave, the node's re-registration failed
//! forever, and its peers were never cleaned up after it died.
//!
//! An error reply (a script's runtime or compile error, a key of the wrong
//! type) becomes [`StoreError::Rejected`]; Redis being unreachable, slow or
//! busy becomes [`StoreError::Unavailable`] (see `classify`).

mod coordinator;
mod dashboard;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use tracing::warn;

use super::{
    now_ms, secret_hex, Claim, Claimed, Directory, Door, EndpointUpdate, Enqueued, Liveness,
    LostPairing, Membership, OwnEntries, PairError, PeerLocation, Reaped, RoomAccess, RoomPage,
    RoomRecord, RoomSummary, Rooms, SecretHash, Store, StoreError, Unpaired, Which, WorkerConn,
    WorkerRecord, WorkerState, Workers, ROOM_KEY_GRACE_MS,
};
use crate::bus::WarnEvery;
use crate::cluster::{Keys, Redis};
use crate::types::Member;
use crate::types::{NodeId, PeerId, PoolName, RoomName};

/// Every Lua file, by name (the unit tests check them all).
pub(crate) const LUA_FILES: &[(&str, &str)] = &[
    ("member.lua", MEMBER),
    ("room.lua", ROOM),
    ("worker.lua", WORKER),
    ("register.lua", include_str!("lua/register.lua")),
    ("claim.lua", include_str!("lua/claim.lua")),
    ("restore_secret.lua", include_str!("lua/restore_secret.lua")),
    ("reregister.lua", include_str!("lua/reregister.lua")),
    ("unregister.lua", include_str!("lua/unregister.lua")),
    ("live_nodes.lua", include_str!("lua/live_nodes.lua")),
    ("create_room.lua", include_str!("lua/create_room.lua")),
    ("take_slots.lua", include_str!("lua/take_slots.lua")),
    ("delete_room.lua", include_str!("lua/delete_room.lua")),
    ("expire_room.lua", include_str!("lua/expire_room.lua")),
    ("lease.lua", include_str!("lua/lease.lua")),
    ("release_lease.lua", include_str!("lua/release_lease.lua")),
    ("list_rooms.lua", include_str!("lua/list_rooms.lua")),
    ("join.lua", include_str!("lua/join.lua")),
    ("leave.lua", include_str!("lua/leave.lua")),
    ("own.lua", include_str!("lua/own.lua")),
    ("reap.lua", include_str!("lua/reap.lua")),
    ("upsert_worker.lua", include_str!("lua/upsert_worker.lua")),
    ("enqueue.lua", include_str!("lua/enqueue.lua")),
    ("pair.lua", include_str!("lua/pair.lua")),
    ("unpair.lua", include_str!("lua/unpair.lua")),
    ("remove_worker.lua", include_str!("lua/remove_worker.lua")),
    ("list_workers.lua", include_str!("lua/list_workers.lua")),
    ("node_workers.lua", include_str!("lua/node_workers.lua")),
    ("dash.lua", DASH),
    ("dash_create.lua", include_str!("lua/dash_create.lua")),
    ("dash_join.lua", include_str!("lua/dash_join.lua")),
    ("dash_leave.lua", include_str!("lua/dash_leave.lua")),
    (
        "dash_disconnect.lua",
        include_str!("lua/dash_disconnect.lua"),
    ),
    ("dash_count.lua", include_str!("lua/dash_count.lua")),
    ("dash_list.lua", include_str!("lua/dash_list.lua")),
    ("dash_sweep.lua", include_str!("lua/dash_sweep.lua")),
    ("dash_restore.lua", include_str!("lua/dash_restore.lua")),
    ("coord_put.lua", include_str!("lua/coord_put.lua")),
    ("coord_delete.lua", include_str!("lua/coord_delete.lua")),
];

const MEMBER: &str = include_str!("lua/member.lua");
const ROOM: &str = include_str!("lua/room.lua");
const WORKER: &str = include_str!("lua/worker.lua");
const DASH: &str = include_str!("lua/dash.lua");

/// The Lua file `name` of [`LUA_FILES`].
fn lua(name: &str) -> &'static str {
    LUA_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, src)| *src)
        .expect("a Lua file of LUA_FILES")
}

/// Every script of one store, its key prefix baked in.
#[derive(Debug)]
struct Scripts {
    register: Script,
    claim: Script,
    restore_secret: Script,
    reregister: Script,
    unregister: Script,
    live_nodes: Script,
    create_room: Script,
    take_slots: Script,
    delete_room: Script,
    expire_room: Script,
    lease: Script,
    release_lease: Script,
    list_rooms: Script,
    join: Script,
    leave: Script,
    own: Script,
    reap: Script,
    upsert_worker: Script,
    enqueue: Script,
    pair: Script,
    unpair: Script,
    remove_worker: Script,
    list_workers: Script,
    node_workers: Script,
    dash: dashboard::DashScripts,
    coord: coordinator::CoordScripts,
}

impl Scripts {
    fn new(keys: &Keys) -> Self {
        // The key functions a script calls, then its helpers, then its body.
        let build = |helpers: &[&str], file: &str| {
            let body: String = helpers.iter().copied().chain([lua(file)]).collect();
            Script::from_lua(keys.lua_prelude_for(&body) + &body)
        };
        Self {
            register: build(&[], "register.lua"),
            claim: build(&[], "claim.lua"),
            restore_secret: build(&[], "restore_secret.lua"),
            reregister: build(&[], "reregister.lua"),
            unregister: build(&[], "unregister.lua"),
            live_nodes: build(&[], "live_nodes.lua"),
            create_room: build(&[], "create_room.lua"),
            take_slots: build(&[], "take_slots.lua"),
            delete_room: build(&[MEMBER, ROOM], "delete_room.lua"),
            expire_room: build(&[MEMBER, ROOM], "expire_room.lua"),
            lease: build(&[], "lease.lua"),
            release_lease: build(&[], "release_lease.lua"),
            list_rooms: build(&[], "list_rooms.lua"),
            join: build(&[MEMBER, ROOM], "join.lua"),
            leave: build(&[MEMBER, ROOM], "leave.lua"),
            own: build(&[MEMBER], "own.lua"),
            reap: build(&[MEMBER, ROOM, WORKER], "reap.lua"),
            upsert_worker: build(&[WORKER], "upsert_worker.lua"),
            enqueue: build(&[], "enqueue.lua"),
            pair: build(&[], "pair.lua"),
            unpair: build(&[WORKER], "unpair.lua"),
            remove_worker: build(&[WORKER], "remove_worker.lua"),
            list_workers: build(&[], "list_workers.lua"),
            node_workers: build(&[], "node_workers.lua"),
            dash: dashboard::DashScripts {
                create: build(&[DASH], "dash_create.lua"),
                join: build(&[DASH], "dash_join.lua"),
                leave: build(&[DASH], "dash_leave.lua"),
                disconnect: build(&[DASH], "dash_disconnect.lua"),
                count: build(&[DASH], "dash_count.lua"),
                list: build(&[DASH], "dash_list.lua"),
                sweep: build(&[DASH], "dash_sweep.lua"),
                restore: build(&[DASH], "dash_restore.lua"),
            },
            coord: coordinator::CoordScripts {
                put: build(&[], "coord_put.lua"),
                delete: build(&[], "coord_delete.lua"),
            },
        }
    }

    /// Every script, for the tests.
    #[cfg(test)]
    fn all(&self) -> Vec<&Script> {
        vec![
            &self.register,
            &self.claim,
            &self.restore_secret,
            &self.reregister,
            &self.unregister,
            &self.live_nodes,
            &self.create_room,
            &self.take_slots,
            &self.delete_room,
            &self.expire_room,
            &self.lease,
            &self.list_rooms,
            &self.join,
            &self.leave,
            &self.own,
            &self.reap,
            &self.upsert_worker,
            &self.enqueue,
            &self.pair,
            &self.unpair,
            &self.remove_worker,
            &self.list_workers,
            &self.node_workers,
            &self.dash.create,
            &self.dash.join,
            &self.dash.leave,
            &self.dash.disconnect,
            &self.dash.count,
            &self.dash.list,
            &self.dash.sweep,
            &self.dash.restore,
            &self.coord.put,
            &self.coord.delete,
        ]
    }
}

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
        door: take("d").as_deref().and_then(Door::parse)?,
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

fn pair_err(e: Error) -> PairError {
    PairError::Store(classify(e))
}

fn reply_code(out: &[Value]) -> Option<i64> {
    out.first().and_then(|v| v.as_i64())
}

/// A member value (see `lua/member.lua`).
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

/// The meta JSON text of a member value, in either layout of `lua/member.lua`.
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

/// The epoch of a member value, in either layout of `lua/member.lua`.
fn member_epoch(v: &str) -> Option<u64> {
    if let Some(rest) = v.strip_prefix(r#"{"e":""#) {
        rest.split_once('"')?.0.parse().ok()
    } else {
        v.split_once(' ')?.0.parse().ok()
    }
}

/// Member meta that would not parse is logged at most once per 10 s.
static META_WARN: WarnEvery = WarnEvery::new(10_000);

/// A failure of Redis itself (unreachable, slow, busy) is worth retrying;
/// an error reply to a script or command (a script error, a key of the wrong
/// type) would come back the same.
fn classify(e: Error) -> StoreError {
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

/// The memberships in a `{1, {peer, member value, ...}}` reply of
/// `delete_room.lua` / `expire_room.lua`, by peer id; `None` for `{0}`.
fn removed_members(out: Vec<Value>) -> Option<Vec<Membership>> {
    let mut it = out.into_iter();
    if it.next().and_then(|v| v.as_i64()) != Some(1) {
        return None;
    }
    let strs: Vec<String> = match it.next() {
        Some(Value::Array(a)) => a.into_iter().filter_map(|v| v.as_string()).collect(),
        _ => Vec::new(),
    };
    let mut removed: Vec<Membership> = strs
        .chunks_exact(2)
        .filter_map(|c| {
            Some(Membership {
                epoch: member_epoch(&c[1])?,
                member: member_from(&c[0], &c[1])?,
            })
        })
        .collect();
    removed.sort_by(|a, b| a.member.peer_id.cmp(&b.member.peer_id));
    Some(removed)
}

/// The fields of a room record hash (see `lua/room.lua`), in `HMGET` order.
const RECORD_FIELDS: [&str; 6] = ["c", "x", "max", "tok", "m", "ex"];

/// A room record from its `HMGET` of [`RECORD_FIELDS`]; `None` when absent.
fn record_from(name: &RoomName, v: Vec<Option<String>>) -> Option<RoomRecord> {
    let [c, x, max, tok, m, ex]: [Option<String>; 6] = v.try_into().ok()?;
    let set = |f: Option<String>| f.filter(|s| !s.is_empty());
    Some(RoomRecord {
        name: name.clone(),
        created_at: c?.parse().ok()?,
        expires_at: set(x).and_then(|x| x.parse().ok()),
        max_peers: set(max).and_then(|m| m.parse().ok()),
        token_hash: set(tok).and_then(|t| hex_hash(&t)),
        meta: set(m)
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or(serde_json::Value::Null),
        explicit: ex.as_deref() == Some("1"),
    })
}

/// Parses [`secret_hex`].
fn hex_hash(s: &str) -> Option<SecretHash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// The Redis store.
#[derive(Debug)]
pub struct RedisStore {
    r: Arc<Redis>,
    /// The node this store serves: memberships and directory entries it writes are this node's.
    me: NodeId,
    /// Its scripts, built for `r.keys`' prefix.
    scripts: Scripts,
}

impl RedisStore {
    /// A store on the given connections, for node `me`.
    pub fn new(r: Arc<Redis>, me: NodeId) -> Self {
        let scripts = Scripts::new(&r.keys);
        Self { r, me, scripts }
    }

    /// How long a node's secret hashes outlive its last `keep_secrets`: two
    /// node lifetimes, so they never lapse while the node lives, and go
    /// soon after it dies (its entries are reaped by then).
    fn secrets_ttl_ms(&self) -> u64 {
        2 * self.r.cfg.node_ttl.as_millis() as u64
    }

    /// `JOIN` for `member` (connection `epoch`, this node); `limit` `None`
    /// admits it whatever the room's size, lifetime or token (a restore).
    async fn join(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        limit: Option<usize>,
        access: &RoomAccess,
        now_ms: u64,
    ) -> Result<Vec<Value>, StoreError> {
        let k = &self.r.keys;
        self.scripts
            .join
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.room_members(room),
                    k.room_record(room),
                    k.node_rooms(&self.me),
                ],
                vec![
                    member.peer_id.to_string(),
                    member_value(epoch, &self.me, &member.meta),
                    limit.map_or(String::new(), |m| m.min(i64::MAX as usize).to_string()),
                    room.to_string(),
                    self.me.to_string(),
                    epoch.to_string(),
                    now_ms.to_string(),
                    access.token.as_ref().map_or(String::new(), secret_hex),
                    if access.granted { "1" } else { "0" }.to_string(),
                    ROOM_KEY_GRACE_MS.to_string(),
                ],
            )
            .await
            .map_err(classify)
    }
}

#[async_trait]
impl Directory for RedisStore {
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        let k = &self.r.keys;
        let old: Option<String> = self
            .scripts
            .register
            .evalsha_with_reload(
                self.r.client(),
                vec![k.peer(peer), k.node_peers(&loc.node)],
                vec![loc_value(&loc), peer.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(old.as_deref().and_then(parse_loc))
    }

    async fn claim_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
        claim: &Claim,
    ) -> Result<Claimed, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = self
            .scripts
            .claim
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.peer(peer),
                    k.node_peers(&loc.node),
                    k.node_secrets(&loc.node),
                ],
                vec![
                    loc_value(&loc),
                    peer.to_string(),
                    secret_hex(&claim.secret),
                    match (&claim.presented, claim.token_for_id) {
                        (_, true) => "token".to_string(),
                        (Some(p), false) => secret_hex(p),
                        (None, false) => String::new(),
                    },
                ],
            )
            .await
            .map_err(classify)?;
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
        let _: i64 = self
            .scripts
            .restore_secret
            .evalsha_with_reload(
                self.r.client(),
                vec![k.peer(peer), k.node_secrets(&loc.node)],
                vec![
                    loc_value(loc),
                    peer.to_string(),
                    secret_hex(secret),
                    self.secrets_ttl_ms().to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn keep_secrets(&self, me: &NodeId) -> Result<(), StoreError> {
        let _: i64 = self
            .r
            .client()
            .pexpire(
                self.r.keys.node_secrets(me),
                self.secrets_ttl_ms() as i64,
                None,
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn unregister_peer(&self, peer: &PeerId, epoch: u64) -> Result<bool, StoreError> {
        // The node is part of the value: only this node's registration of that epoch goes.
        let loc = PeerLocation {
            node: self.me.clone(),
            epoch,
        };
        let k = &self.r.keys;
        let n: i64 = self
            .scripts
            .unregister
            .evalsha_with_reload(
                self.r.client(),
                vec![
                    k.peer(peer),
                    k.node_peers(&loc.node),
                    k.node_secrets(&loc.node),
                ],
                vec![loc_value(&loc), peer.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(n == 1)
    }

    async fn locate_peer(&self, peer: &PeerId) -> Result<Option<PeerLocation>, StoreError> {
        let v: Option<String> = self
            .r
            .client()
            .get(self.r.keys.peer(peer))
            .await
            .map_err(classify)?;
        Ok(v.as_deref().and_then(parse_loc))
    }

    async fn scan_node_peers(
        &self,
        node: &NodeId,
        cursor: u64,
        search: &str,
        count: usize,
    ) -> Result<(u64, Vec<PeerId>), StoreError> {
        // SSCAN's MATCH is a glob: the search is a literal substring.
        let mut pattern = String::from("*");
        for c in search.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let (next, ids): (String, Vec<String>) = self
            .r
            .client()
            .custom(
                fred::types::CustomCommand::new_static(
                    "SSCAN",
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                vec![
                    self.r.keys.node_peers(node),
                    cursor.to_string(),
                    "MATCH".into(),
                    pattern,
                    "COUNT".into(),
                    count.max(1).to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        let next = next
            .parse()
            .map_err(|_| StoreError::Rejected(format!("SSCAN answered the cursor `{next}`")))?;
        Ok((next, ids.into_iter().map(PeerId::from_trusted).collect()))
    }

    async fn reregister_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        let k = &self.r.keys;
        let other: Option<String> = self
            .scripts
            .reregister
            .evalsha_with_reload(
                self.r.client(),
                vec![k.peer(peer), k.node_peers(&loc.node)],
                vec![loc_value(&loc), peer.to_string(), loc.node.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(other.as_deref().and_then(parse_loc))
    }
}

#[async_trait]
impl Rooms for RedisStore {
    async fn create_room(&self, record: &RoomRecord) -> Result<(), StoreError> {
        let k = &self.r.keys;
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let created: i64 = self
            .scripts
            .create_room
            .evalsha_with_reload(
                self.r.client(),
                vec![k.room_record(&record.name), k.room_members(&record.name)],
                vec![
                    record.name.to_string(),
                    record.created_at.to_string(),
                    opt(record.expires_at),
                    opt(record.max_peers.map(|m| m.min(i64::MAX as usize) as u64)),
                    record.token_hash.as_ref().map_or(String::new(), secret_hex),
                    record.meta.to_string(),
                    opt(record
                        .expires_at
                        .map(|x| x.saturating_add(ROOM_KEY_GRACE_MS))),
                ],
            )
            .await
            .map_err(classify)?;
        match created {
            1 => Ok(()),
            _ => Err(StoreError::RoomExists),
        }
    }

    async fn get_room(&self, room: &RoomName) -> Result<Option<RoomRecord>, StoreError> {
        let v: Vec<Option<String>> = self
            .r
            .client()
            .hmget(self.r.keys.room_record(room), RECORD_FIELDS.to_vec())
            .await
            .map_err(classify)?;
        Ok(record_from(room, v))
    }

    async fn delete_room(&self, room: &RoomName) -> Result<Option<Vec<Membership>>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = self
            .scripts
            .delete_room
            .evalsha_with_reload(
                self.r.client(),
                vec![k.room_record(room), k.room_members(room)],
                vec![room.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(removed_members(out))
    }

    async fn take_slots(
        &self,
        quotas: &[(String, usize)],
        member: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<usize>, StoreError> {
        if quotas.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = quotas.iter().map(|(q, _)| self.r.keys.quota(q)).collect();
        let mut args = vec![member.to_string(), now_ms.to_string(), until_ms.to_string()];
        args.extend(quotas.iter().map(|(_, most)| most.to_string()));
        let full: i64 = self
            .scripts
            .take_slots
            .evalsha_with_reload(self.r.client(), keys, args)
            .await
            .map_err(classify)?;
        Ok(usize::try_from(full).ok().and_then(|i| i.checked_sub(1)))
    }

    async fn expiring_rooms(&self, now_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let names: Vec<String> = self
            .r
            .client()
            .zrangebyscore(
                self.r.keys.room_expiry(),
                "-inf",
                // An integer bound (fred writes a string as a lex bound).
                now_ms.min(i64::MAX as u64) as i64,
                false,
                Some((0, limit.min(i64::MAX as usize) as i64)),
            )
            .await
            .map_err(classify)?;
        Ok(names.into_iter().map(RoomName::from_trusted).collect())
    }

    async fn expire_room(
        &self,
        room: &RoomName,
        now_ms: u64,
    ) -> Result<Option<Vec<Membership>>, StoreError> {
        let out: Vec<Value> = self
            .scripts
            .expire_room
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.room_record(room)],
                vec![room.to_string(), now_ms.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(removed_members(out))
    }

    async fn list_rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<RoomPage, StoreError> {
        if limit == 0 {
            return Ok(RoomPage::default());
        }
        let k = &self.r.keys;
        // One more than asked, to know whether another page follows.
        let out: Vec<Value> = self
            .scripts
            .list_rooms
            .evalsha_with_reload(
                self.r.client(),
                vec![k.room_index()],
                vec![
                    after.map_or(String::new(), |r| r.to_string()),
                    limit.saturating_add(1).min(i64::MAX as usize).to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        let mut rooms = Vec::with_capacity(out.len() / 5);
        let mut it = out.into_iter();
        let num = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
        while let (Some(name), Some(n), Some(ex), Some(x), Some(max)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        {
            if let (Some(name), Some(n)) = (name.as_string(), n.as_i64()) {
                rooms.push(RoomSummary {
                    room: RoomName::from_trusted(name),
                    members: n.max(0) as usize,
                    explicit: ex.as_string().as_deref() == Some("1"),
                    expires_at: num(x.as_string()),
                    max_peers: num(max.as_string()).map(|m| m as usize),
                });
            }
        }
        let next = if rooms.len() > limit {
            rooms.truncate(limit);
            rooms.last().map(|r| r.room.clone())
        } else {
            None
        };
        Ok(RoomPage { rooms, next })
    }

    async fn join_room_with(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
        access: &RoomAccess,
        now_ms: u64,
    ) -> Result<Vec<Member>, StoreError> {
        let out = self
            .join(room, member, epoch, Some(max_peers), access, now_ms)
            .await?;
        let mut it = out.into_iter();
        match it.next().and_then(|v| v.as_i64()) {
            Some(-1) => Err(StoreError::RoomFull),
            Some(-2) => Err(StoreError::RoomTokenRequired),
            Some(-3) => Err(StoreError::RoomTokenInvalid),
            Some(-4) => Err(StoreError::RoomExpired),
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
        let n: i64 = self
            .scripts
            .leave
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.room_members(room)],
                vec![peer.to_string(), epoch.to_string(), room.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(n == 1)
    }

    async fn room_members(&self, room: &RoomName) -> Result<Option<Vec<Member>>, StoreError> {
        let all: Vec<Value> = self
            .r
            .client()
            .hgetall::<Value, _>(self.r.keys.room_members(room))
            .await
            .map_err(classify)
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

    async fn restore_member(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let out = self
            .join(room, member, epoch, None, &RoomAccess::default(), now_ms())
            .await?;
        Ok(out.first().and_then(|v| v.as_i64()) == Some(1))
    }
}

#[async_trait]
impl Liveness for RedisStore {
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
            .map_err(classify)?;
        let _: i64 = c
            .sadd(self.r.keys.nodes(), node.to_string())
            .await
            .map_err(classify)?;
        if prev.is_none() {
            // This node was gone (or declared dead) and is back: a reaper's
            // claim on it must not outlive that, or a real death in the next
            // minute would go unreaped.
            let _: i64 = c
                .del(self.r.keys.node_reaper(node))
                .await
                .map_err(classify)?;
        }
        Ok(prev.is_some())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        let live: Vec<String> = self
            .scripts
            .live_nodes
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.nodes()],
                Vec::<String>::new(),
            )
            .await
            .map_err(classify)?;
        Ok(live.into_iter().map(NodeId::from_trusted).collect())
    }

    async fn dead_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        let c = self.r.client();
        let nodes: Vec<String> = c.smembers(self.r.keys.nodes()).await.map_err(classify)?;
        let mut dead = Vec::new();
        for n in nodes {
            let id = NodeId::from_trusted(n);
            let alive: i64 = c
                .exists(self.r.keys.node_alive(&id))
                .await
                .map_err(classify)?;
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
            .map_err(classify)?;
        if claimed.is_none() {
            return Ok(None);
        }
        let out: Vec<Value> = match self
            .scripts
            .reap
            .evalsha_with_reload(
                c,
                vec![
                    k.node_rooms(dead),
                    k.node_peers(dead),
                    k.nodes(),
                    k.node_workers(dead),
                ],
                vec![dead.to_string()],
            )
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let e = classify(e);
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

    async fn own_entries(&self, me: &NodeId) -> Result<OwnEntries, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = self
            .scripts
            .own
            .evalsha_with_reload(
                self.r.client(),
                vec![k.node_peers(me), k.node_rooms(me)],
                vec![me.to_string()],
            )
            .await
            .map_err(classify)?;
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

    async fn try_lease(
        &self,
        name: &str,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let held: i64 = self
            .scripts
            .lease
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.lease(name)],
                vec![
                    holder.to_string(),
                    (ttl.as_millis().max(1) as u64).to_string(),
                ],
            )
            .await
            .map_err(classify)?;
        Ok(held == 1)
    }

    async fn release_lease(&self, name: &str, holder: &NodeId) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .release_lease
            .evalsha_with_reload(
                self.r.client(),
                vec![self.r.keys.lease(name)],
                vec![holder.to_string()],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn goodbye(&self, node: &NodeId) -> Result<(), StoreError> {
        let c = self.r.client();
        let _: i64 = c
            .del(self.r.keys.node_alive(node))
            .await
            .map_err(classify)?;
        let _: i64 = c
            .srem(self.r.keys.nodes(), node.to_string())
            .await
            .map_err(classify)?;
        Ok(())
    }
}

#[async_trait]
impl Workers for RedisStore {
    async fn upsert_worker(
        &self,
        conn: &WorkerConn,
        ep: &EndpointUpdate,
    ) -> Result<Option<LostPairing>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = self
            .scripts
            .upsert_worker
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(&conn.peer_id), k.workers(), k.peer(&conn.peer_id)],
                vec![
                    conn.peer_id.to_string(),
                    conn.node.to_string(),
                    conn.epoch.to_string(),
                    conn.door.as_str().to_string(),
                    conn.observed_addr.clone(),
                    ep.public_ip.clone().unwrap_or_default(),
                    ep.udp.clone().unwrap_or_default(),
                ],
            )
            .await
            .map_err(classify)?;
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
        let out: Vec<Value> = self
            .scripts
            .enqueue
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
                ],
            )
            .await
            .map_err(pair_err)?;
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
        let out: Vec<Value> = self
            .scripts
            .pair
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(a), k.worker(b)],
                vec![a.to_string(), b.to_string(), pairing_id.to_string()],
            )
            .await
            .map_err(pair_err)?;
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
        let out: Vec<Value> = self
            .scripts
            .unpair
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(peer)],
                vec![peer.to_string(), epoch.to_string()],
            )
            .await
            .map_err(pair_err)?;
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
        let out: Vec<Value> = self
            .scripts
            .remove_worker
            .evalsha_with_reload(
                self.r.client(),
                vec![k.worker(peer), k.workers()],
                vec![peer.to_string(), epoch.to_string()],
            )
            .await
            .map_err(classify)?;
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
            .map_err(classify)?;
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
        let out: Vec<Value> = self
            .scripts
            .list_workers
            .evalsha_with_reload(self.r.client(), vec![k.workers()], Vec::<String>::new())
            .await
            .map_err(classify)?;
        let mut workers: Vec<WorkerRecord> = out.into_iter().filter_map(worker_from).collect();
        workers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        Ok(workers)
    }

    async fn node_workers(&self, node: &NodeId) -> Result<Vec<(PeerId, u64)>, StoreError> {
        let k = &self.r.keys;
        let out: Vec<Value> = self
            .scripts
            .node_workers
            .evalsha_with_reload(
                self.r.client(),
                vec![k.node_workers(node)],
                vec![node.to_string()],
            )
            .await
            .map_err(classify)?;
        let strs: Vec<String> = out.into_iter().filter_map(|v| v.as_string()).collect();
        Ok(strs
            .chunks_exact(2)
            .filter_map(|c| Some((PeerId::from_trusted(c[0].as_str()), c[1].parse().ok()?)))
            .collect())
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Names of `k_*(` calls and of `local function x(` definitions in `src`.
    fn idents_after(src: &str, marker: &str) -> Vec<String> {
        src.match_indices(marker)
            .map(|(i, _)| {
                src[i + marker.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .collect()
    }

    /// The single-quoted literals of a Lua source (Lua comments skipped).
    fn literals(src: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in src.lines() {
            let code = line.split("--").next().unwrap_or("");
            let mut parts = code.split('\'');
            parts.next();
            while let (Some(lit), _) = (parts.next(), parts.next()) {
                out.push(lit.to_string());
            }
        }
        out
    }

    /// No script spells a key name: every name comes from the prelude
    /// generated from `cluster::Keys`. A literal with a `:` is only allowed
    /// inside the JSON patterns that read an older release's member values,
    /// and no literal is a key template's fixed part.
    #[test]
    fn no_lua_file_builds_a_key_name_by_hand() {
        let words: Vec<&str> = crate::cluster::TEMPLATES
            .iter()
            .flat_map(|(_, t)| t.split("{}"))
            .flat_map(|part| part.split(':'))
            .filter(|w| w.len() > 2)
            .collect();
        assert!(words.contains(&"peer") && words.contains(&"room-index"));
        let mut checked = 0;
        for (file, src) in LUA_FILES {
            for lit in literals(src) {
                assert!(
                    !lit.contains(':') || lit.contains('"'),
                    "{file}: literal '{lit}' looks like part of a key name"
                );
                assert!(
                    !words.contains(&lit.as_str()),
                    "{file}: literal '{lit}' is a key template's word"
                );
                checked += 1;
            }
            assert!(
                !src.contains("ARGV[1] .. ':") && !src.contains("prefix"),
                "{file} builds keys from a prefix"
            );
        }
        assert!(checked > 100, "only {checked} literals found");
    }

    /// Every script defines each key function and helper it calls, and only
    /// the key functions it calls.
    #[test]
    fn every_script_defines_what_it_calls() {
        let templates: Vec<&str> = crate::cluster::TEMPLATES.iter().map(|(n, _)| *n).collect();
        let scripts = Scripts::new(&Keys::new("sb"));
        for script in scripts.all() {
            let src = script.lua().expect("built from source").to_string();
            let defined = idents_after(&src, "local function ");
            let mut called = idents_after(&src, "k_");
            called.retain(|c| src.contains(&format!("k_{c}(")));
            for c in &called {
                assert!(templates.contains(&c.as_str()), "unknown key k_{c}");
                assert!(
                    defined.contains(&format!("k_{c}")),
                    "k_{c} undefined in\n{src}"
                );
            }
            for helper in [
                "member_conn",
                "node_left",
                "vanish_if_empty",
                "free_partner",
            ] {
                if src.contains(&format!("{helper}(")) {
                    assert!(
                        defined.contains(&helper.to_string()),
                        "{helper} undefined in\n{src}"
                    );
                }
            }
            for d in defined.iter().filter(|d| d.starts_with("k_")) {
                assert!(
                    called.contains(&d[2..].to_string()),
                    "{d} defined, never called"
                );
            }
        }
    }

    #[test]
    fn record_fields_and_hashes_round_trip() {
        let h: SecretHash = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(hex_hash(&secret_hex(&h)), Some(h));
        assert_eq!(hex_hash("zz"), None);
        let name = RoomName::from_trusted("r");
        let r = record_from(
            &name,
            vec![
                Some("5".into()),
                Some("".into()),
                Some("3".into()),
                Some(secret_hex(&h)),
                Some(r#"{"a":1}"#.into()),
                Some("1".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            RoomRecord {
                name: name.clone(),
                created_at: 5,
                expires_at: None,
                max_peers: Some(3),
                token_hash: Some(h),
                meta: json!({"a": 1}),
                explicit: true,
            }
        );
        assert_eq!(record_from(&name, vec![None; 6]), None);
        assert_eq!(member_epoch("42 n\nnull"), Some(42));
        assert_eq!(member_epoch(r#"{"e":"7","n":"x","m":null}"#), Some(7));
    }

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
