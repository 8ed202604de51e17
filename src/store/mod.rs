//! The store seam: the registries every node shares.
//!
//! The store is four narrow traits, one per registry, each stating the
//! guarantee every backend keeps (as [`crate::bus`] does for the bus):
//!
//! - [`Directory`]: which node holds a peer id, and which connection of it;
//!   the claim of an id and the reconnect secrets that prove a claim;
//! - [`Rooms`]: room records and their members;
//! - [`Liveness`]: node heartbeats, and the cleanup of a dead node's entries
//!   (and of a node's own entries after an outage);
//! - [`Workers`]: rendezvous workers and their pairing;
//! - [`dashboard::DashRegistry`]: the dashboard door's rooms and socket
//!   counts;
//! - [`coordinator::CoordStore`]: the game coordinator's hosts, zones and
//!   sessions.
//!
//! [`Store`] is their union (plus a name for logs): the node holds an
//! `Arc<dyn Store>`, on which every trait's methods can be called as they
//! are; code holding a concrete backend (tests, benchmarks) brings the four
//! traits into scope with `use switchboard::store::prelude::*`. Backends: [`memory::MemoryStore`] (the
//! embedded default: one process, every node it serves alive while it runs)
//! and, with `cluster.redis_url`, [`redis::RedisStore`] (one Lua script per
//! operation that reads and writes).
//!
//! Every backend runs the same behaviour tests (`tests/it/store.rs`, against
//! the memory store and a real `redis-server`).

pub mod coordinator;
pub mod dashboard;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::types::Member;

use crate::types::{NodeId, PeerId, PoolName, RoomName};

/// The store's traits, for code that calls a concrete backend (a trait
/// object's supertrait methods need no import): `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::coordinator::CoordStore;
    pub use super::dashboard::DashRegistry;
    pub use super::{Directory, Liveness, Rooms, Store, Workers};
}

/// Where a peer is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLocation {
    /// The node holding its socket.
    pub node: NodeId,
    /// The connection's epoch.
    pub epoch: u64,
}

/// SHA-256 of a connection's `reconnect_secret` (the secret itself is never stored).
pub type SecretHash = [u8; 32];

/// What a connection presents when it registers a peer id (see [`Directory::claim_peer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Auth verified a token whose `sub` is this id: it may replace any
    /// owner (with auth on, newest connection wins as before).
    pub token_for_id: bool,
    /// SHA-256 of the `reconnect_secret` the client gave, if any: it may
    /// replace the owner whose secret this is.
    pub presented: Option<SecretHash>,
    /// SHA-256 of the new connection's own secret, recorded with its entry.
    pub secret: SecretHash,
}

/// What [`Directory::claim_peer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Registered; carries the registration it replaced, if any.
    Registered(Option<PeerLocation>),
    /// Refused: this live connection holds the id and the claim proves
    /// nothing for it. Nothing was written.
    Taken(PeerLocation),
}

/// Lower-case hex of a secret hash (how the Redis store keeps it).
pub fn secret_hex(h: &SecretHash) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// A room and its size, for listings (what `GET /api/rooms` shows of it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomSummary {
    /// The room.
    pub room: RoomName,
    /// How many members it has (0 only for an explicit room).
    pub members: usize,
    /// Made by [`Rooms::create_room`] (see [`RoomRecord::explicit`]); the
    /// fields below are set only on such a room.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub explicit: bool,
    /// Unix milliseconds when the room expires, if it has a lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The record's own member limit, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_peers: Option<usize>,
}

impl RoomSummary {
    /// The summary of a room without a record of its own making (implicit):
    /// a name and a size.
    pub fn implicit(room: RoomName, members: usize) -> Self {
        Self {
            room,
            members,
            explicit: false,
            expires_at: None,
            max_peers: None,
        }
    }
}

/// One page of [`Rooms::list_rooms`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoomPage {
    /// Rooms in name order (bytewise), at most the limit asked for.
    pub rooms: Vec<RoomSummary>,
    /// The cursor of the next page (the last name of this one), or `None`
    /// when no room sorts after this page.
    pub next: Option<RoomName>,
}

/// A room as a record of its own, so that a room can exist with no member.
///
/// A join into a room without a record creates an *implicit* record
/// (`explicit: false`, no limits), which goes with the room's last member:
/// rooms come and go with their members, as they always did. A record made
/// by [`Rooms::create_room`] is *explicit*: it stays, empty or not, until
/// [`Rooms::delete_room`].
#[derive(Debug, Clone, PartialEq)]
pub struct RoomRecord {
    /// The room.
    pub name: RoomName,
    /// Unix milliseconds when the record was made.
    pub created_at: u64,
    /// Unix milliseconds when the room goes. From then on a join is refused
    /// ([`StoreError::RoomExpired`]), [`Rooms::expiring_rooms`] lists it and
    /// [`Rooms::expire_room`] removes it: the node holding the sweeper's
    /// lease does, and tells the members. The Redis keys also expire on
    /// their own a while later ([`ROOM_KEY_GRACE_MS`]), should no node sweep.
    pub expires_at: Option<u64>,
    /// Most members at once; when set it replaces the caller's limit in
    /// [`Rooms::join_room`].
    pub max_peers: Option<usize>,
    /// SHA-256 of the token a joiner must show (never the token itself):
    /// [`Rooms::join_room_with`] checks it against the [`RoomAccess`] given.
    pub token_hash: Option<SecretHash>,
    /// What the room's creator attached: opaque to the store (Redis keeps it
    /// as JSON text that no script parses).
    pub meta: serde_json::Value,
    /// Made by `create_room` (stays when empty), not by a join.
    pub explicit: bool,
}

impl RoomRecord {
    /// The implicit record a join creates at `now_ms`.
    pub fn implicit(name: RoomName, now_ms: u64) -> Self {
        Self {
            name,
            created_at: now_ms,
            expires_at: None,
            max_peers: None,
            token_hash: None,
            meta: serde_json::Value::Null,
            explicit: false,
        }
    }
}

/// How long the Redis keys of a room with a lifetime outlive its
/// `expires_at`: they carry a `PEXPIREAT` that much later, a backstop for
/// when no node sweeps (every node down). Not at `expires_at` itself: Redis
/// would then race the sweeper, and a room whose keys Redis dropped first
/// can no longer tell its members (the members hash is gone with it).
pub const ROOM_KEY_GRACE_MS: u64 = 60_000;

/// What a joiner shows for a room that has a token (see
/// [`Rooms::join_room_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomAccess {
    /// SHA-256 of the token the joiner gave, if it gave one.
    pub token: Option<SecretHash>,
    /// The joiner's credentials grant it this room (a JWT's `rooms` claim):
    /// no token is needed.
    pub granted: bool,
}

/// A membership [`Rooms::delete_room`] removed, for the caller to tell.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The member as the room listed it.
    pub member: Member,
    /// Its connection's epoch (so a node drops only that connection's membership).
    pub epoch: u64,
}

/// Unix milliseconds now (0 before 1970, which no clock here reports).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a node learned when it claimed a dead node's cleanup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reaped {
    /// `(room, peer)` memberships removed: each gets exactly one `peer-left`.
    pub left: Vec<(RoomName, PeerId)>,
    /// Directory entries removed.
    pub peers: usize,
    /// Pairings broken because one side was on the dead node: each surviving
    /// partner gets exactly one `pair-lost` (reason `timeout`).
    pub lost: Vec<LostPairing>,
}

/// Which door a worker came through. (Not a wire dialect: a native client
/// may speak JSON or MessagePack, see [`crate::dialect::Dialect`]; a door is
/// the endpoint and protocol family it connected with.)
///
/// Serialized as `"native"` / `"legacy"`: in Redis worker records and in
/// `GET /api/workers`' `dialect` field, both kept from before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Door {
    /// The native protocol at `/ws`.
    #[serde(rename = "native")]
    Native,
    /// The older rendezvous service's worker protocol at `/ws/register/{worker_id}`.
    #[serde(rename = "legacy")]
    LegacyWorker,
    /// The room signaling server's protocol (`[doors.room_signaling]`).
    #[serde(rename = "room-signaling")]
    RoomSignaling,
    /// The dashboard server's clients (`[doors.dashboard]`; never a worker).
    #[serde(rename = "dashboard")]
    Dashboard,
    /// The game P2P coordinator's signaling clients
    /// (`/api[/v1]/signaling/ws`; never a worker).
    #[serde(rename = "coordinator")]
    Coordinator,
}

impl Door {
    /// The stored, wire and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::LegacyWorker => "legacy",
            Self::RoomSignaling => "room-signaling",
            Self::Dashboard => "dashboard",
            Self::Coordinator => "coordinator",
        }
    }

    /// Parses [`Door::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "legacy" => Some(Self::LegacyWorker),
            "room-signaling" => Some(Self::RoomSignaling),
            "dashboard" => Some(Self::Dashboard),
            "coordinator" => Some(Self::Coordinator),
            _ => None,
        }
    }
}

/// Where a worker stands in pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Known, not waiting and not paired.
    Idle,
    /// Waiting in its pool's queue.
    Queued,
    /// In a pairing.
    Paired,
}

impl WorkerState {
    /// The wire label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Queued => "queued",
            Self::Paired => "paired",
        }
    }

    /// Parses [`WorkerState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "idle" => Some(Self::Idle),
            "queued" => Some(Self::Queued),
            "paired" => Some(Self::Paired),
            _ => None,
        }
    }
}

/// What the node holding a worker's socket knows about the connection: written
/// when the record is created, replaced when a newer connection takes the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConn {
    /// The worker's peer id.
    pub peer_id: PeerId,
    /// The node holding its socket.
    pub node: NodeId,
    /// The connection's epoch (newest wins).
    pub epoch: u64,
    /// The door it came through.
    pub door: Door,
    /// The TCP address the broker saw (`ip:port`; port 0 when a proxy did not tell).
    pub observed_addr: String,
}

/// Endpoints a worker reported or was observed at; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointUpdate {
    /// The public IP it reports for itself (validated, canonical text).
    pub public_ip: Option<String>,
    /// Its public UDP endpoint `ip:port` (validated, canonical text).
    pub udp: Option<String>,
}

/// A worker as the store holds it (also the `GET /api/workers` item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its peer id.
    pub peer_id: PeerId,
    /// The node holding its socket.
    pub node: NodeId,
    /// The connection's epoch (so a late event never reaches a newer connection).
    pub epoch: u64,
    /// The door it came through (`dialect` in JSON: the API's name for it).
    #[serde(rename = "dialect")]
    pub door: Door,
    /// The TCP address the broker saw.
    pub observed_addr: String,
    /// The public IP it reported, if any.
    pub public_ip: Option<String>,
    /// Its public UDP endpoint (`ip:port`), reported or observed by STUN.
    pub udp: Option<String>,
    /// The pool it last queued in, if any.
    pub pool: Option<PoolName>,
    /// Idle, queued or paired.
    pub state: WorkerState,
    /// The current pairing, when paired.
    pub pairing_id: Option<String>,
    /// The partner, when paired.
    pub partner: Option<PeerId>,
    /// Metadata given with `pair`.
    pub meta: serde_json::Value,
    /// Unix milliseconds when it last queued (for the pair-to-paired latency).
    pub since_ms: u64,
}

impl WorkerRecord {
    /// A fresh idle record for a connection.
    pub fn new(conn: &WorkerConn) -> Self {
        Self {
            peer_id: conn.peer_id.clone(),
            node: conn.node.clone(),
            epoch: conn.epoch,
            door: conn.door,
            observed_addr: conn.observed_addr.clone(),
            public_ip: None,
            udp: None,
            pool: None,
            state: WorkerState::Idle,
            pairing_id: None,
            partner: None,
            meta: serde_json::Value::Null,
            since_ms: 0,
        }
    }

    /// Applies reported endpoints.
    pub fn apply(&mut self, ep: &EndpointUpdate) {
        if let Some(ip) = &ep.public_ip {
            self.public_ip = Some(ip.clone());
        }
        if let Some(udp) = &ep.udp {
            self.udp = Some(udp.clone());
        }
    }
}

/// A pairing that ended without the partner asking: the partner (as it is now,
/// freed) must be told `pair-lost`.
#[derive(Debug, Clone, PartialEq)]
pub struct LostPairing {
    /// The pairing that ended.
    pub pairing_id: String,
    /// The partner to notify (its node and epoch say where).
    pub partner: WorkerRecord,
}

/// What `enqueue_or_match` did.
// A short-lived return value: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// The worker waits in its pool's queue.
    Queued,
    /// The worker was matched at once with the earliest queued worker of its pool.
    Matched {
        /// The pairing's id (the one the caller proposed).
        pairing_id: String,
        /// The earlier-queued worker.
        initiator: WorkerRecord,
        /// The worker that asked now.
        responder: WorkerRecord,
    },
}

/// What `unpair_worker` did.
// A short-lived return value: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Unpaired {
    /// The worker was paired; the partner is now free and must be told.
    Paired(LostPairing),
    /// The worker was only queued; it no longer is.
    Dequeued,
}

/// First or second worker of a manual pairing (to name it in an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `worker_a_id`.
    A,
    /// `worker_b_id`.
    B,
}

/// Why a pairing operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PairError {
    /// The named worker is not known (not connected, or never a worker).
    #[error("worker not found")]
    NotFound(Which),
    /// The same worker was named twice.
    #[error("same worker")]
    SameWorker,
    /// The named worker is already paired.
    #[error("already paired")]
    AlreadyPaired(Which),
    /// The worker is neither paired nor queued.
    #[error("not paired")]
    NotPaired,
    /// The worker's record belongs to another (newer) connection, or is gone.
    #[error("stale connection")]
    Stale,
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node's entries in the store (see [`Liveness::own_entries`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OwnEntries {
    /// Directory entries: `(peer, epoch)`.
    pub peers: Vec<(PeerId, u64)>,
    /// Memberships: `(room, peer, epoch)`.
    pub memberships: Vec<(RoomName, PeerId, u64)>,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The room is full.
    #[error("room is full")]
    RoomFull,
    /// `create_room`: a room of that name exists (explicit, or implicit
    /// because it has members). Nothing was written.
    #[error("room exists")]
    RoomExists,
    /// A join into a room that has a token, without a token or a grant.
    /// Nothing was written.
    #[error("room needs a token")]
    RoomTokenRequired,
    /// A join into a room that has a token, with another token. Nothing was
    /// written.
    #[error("wrong room token")]
    RoomTokenInvalid,
    /// A join into a room whose `expires_at` has passed (the sweeper has not
    /// removed it yet). Nothing was written.
    #[error("room expired")]
    RoomExpired,
    /// The backend is unreachable (or too slow or busy to answer): trying
    /// again later may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the operation (an error reply to a script or a
    /// command): trying again would fail the same way, so cleanups that meet
    /// it count it, log it and move on instead of retrying forever.
    #[error("store refused the operation: {0}")]
    Rejected(String),
}

impl StoreError {
    /// True when the same call may succeed later (the backend was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The peer directory: which node holds a peer id, and which connection
/// (epoch) of it.
///
/// Guarantees every backend keeps:
/// - each operation is atomic: concurrent callers on any node see it whole;
/// - newest wins: [`Directory::register_peer`] and [`Directory::claim_peer`]
///   return the registration they replaced, so exactly one caller learns of
///   each replaced connection;
/// - `claim_peer` registers only a connection that may take the id: the id
///   is free, its owner's node is dead, the owner is on the calling node
///   (which checked its own hub first), or the claim proves itself (a token
///   for the id, or the owner's reconnect secret). The check and the write
///   are one atomic step, so two nodes can never both take a held id;
/// - operations keyed by a connection epoch ([`Directory::unregister_peer`])
///   do nothing when a newer connection owns the entry, so a late cleanup
///   never removes a newer connection;
/// - a reconnect secret is kept only as its SHA-256, belongs to one
///   connection (entry and epoch), goes with that entry, and outlives a dead
///   node by at most two node lifetimes (`keep_secrets`).
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Records `peer` at `loc` unconditionally; returns the registration it
    /// replaced. (`hello` uses [`Directory::claim_peer`], which checks ownership.)
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError>;
    /// Records `peer` at `loc` if `claim` may take it (see the trait docs),
    /// with the claim's secret hash; `Taken` changes nothing.
    async fn claim_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
        claim: &Claim,
    ) -> Result<Claimed, StoreError>;
    /// Records the secret hash of connection `loc` of `peer` again, if the
    /// directory entry is still that connection (after Redis lost it).
    async fn restore_secret(
        &self,
        _peer: &PeerId,
        _loc: &PeerLocation,
        _secret: &SecretHash,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Keeps node `me`'s secret hashes alive a while longer (call it every
    /// heartbeat): they expire with a dead node rather than waiting for its
    /// reaper.
    async fn keep_secrets(&self, _me: &NodeId) -> Result<(), StoreError> {
        Ok(())
    }
    /// Removes `peer` (and its secret) if its registration is connection
    /// `epoch` of the calling node.
    async fn unregister_peer(&self, peer: &PeerId, epoch: u64) -> Result<bool, StoreError>;
    /// Where `peer` is connected, if anywhere.
    async fn locate_peer(&self, peer: &PeerId) -> Result<Option<PeerLocation>, StoreError>;
    /// Re-records `peer` at `loc` after an outage unless a connection on
    /// another node took the id meanwhile; returns that other owner if so.
    async fn reregister_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError>;
    /// One page of the peers `node` registered whose id contains `search`
    /// (a plain substring), for the operator console: from `cursor` (0 to
    /// start) about `count` ids, and the cursor of the next page (0 at the
    /// end). Redis walks the node's set with SSCAN, so a page may hold
    /// fewer (even none) or a few more than `count` ids while the next
    /// cursor is not 0, and a peer that comes or goes meanwhile may be
    /// missed or listed twice; every peer present throughout is listed.
    async fn scan_node_peers(
        &self,
        node: &NodeId,
        cursor: u64,
        search: &str,
        count: usize,
    ) -> Result<(u64, Vec<PeerId>), StoreError>;
}

/// Rooms: records and members.
///
/// Guarantees every backend keeps:
/// - each operation is atomic, record and members together: no caller ever
///   sees members without a record (except member entries an older release
///   left in Redis, which the next join gives an implicit record), or a
///   deleted room's members;
/// - a room is implicit or explicit (see [`RoomRecord`]): a join into a room
///   without a record creates an implicit one in the same step, the leave
///   (or reap) that removes an implicit room's last member removes its
///   record, and an explicit room stays until [`Rooms::delete_room`];
/// - [`Rooms::join_room`] enforces the limit atomically: the record's
///   `max_peers` when it has one, else the caller's; a peer already in the
///   room (an older connection of it) never counts against it;
/// - newest wins: a join replaces an older connection's membership of the
///   same peer, and [`Rooms::leave_room`] keyed by an older epoch removes
///   nothing;
/// - [`Rooms::create_room`] succeeds for exactly one of several concurrent
///   creators of a name, and never over a room that exists;
/// - [`Rooms::delete_room`] and [`Rooms::expire_room`] return each removed
///   membership exactly once (to the one caller whose call removed it),
///   whichever of them, on whichever node, ran first;
/// - a join checks the record in the same atomic step as it writes: a room
///   whose `expires_at` has passed admits nobody ([`StoreError::RoomExpired`]),
///   and a room with a token admits only a joiner that shows it or whose
///   [`RoomAccess`] grants the room; a restore after an outage checks
///   neither (the member was admitted before);
/// - a room with `expires_at` is listed by [`Rooms::expiring_rooms`] from
///   that time until it is removed; on Redis its keys also expire by
///   themselves [`ROOM_KEY_GRACE_MS`] later.
#[async_trait]
pub trait Rooms: Send + Sync + 'static {
    /// Creates an explicit room from `record` (its `explicit` flag is
    /// ignored: a created room is explicit). Fails with
    /// [`StoreError::RoomExists`] when a room of that name exists.
    async fn create_room(&self, record: &RoomRecord) -> Result<(), StoreError>;
    /// A room's record, or `None` when the room does not exist.
    async fn get_room(&self, room: &RoomName) -> Result<Option<RoomRecord>, StoreError>;
    /// Removes a room, record and memberships in one step, and returns the
    /// memberships it removed, for the caller to tell (their connections'
    /// nodes still list them locally). `None` when there was no such room.
    async fn delete_room(&self, room: &RoomName) -> Result<Option<Vec<Membership>>, StoreError>;
    /// Rooms in name order, `limit` at most, starting after the room named
    /// `after` (`None`: from the first), each with its member count. The
    /// cursor is a name, not a position: a room present for the whole walk
    /// is listed exactly once, whatever is created or deleted meanwhile (a
    /// room that comes or goes during the walk may or may not be). On Redis
    /// a page costs O(log rooms + page) (`ZRANGEBYLEX` on the room index);
    /// in memory a B-tree range.
    async fn list_rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<RoomPage, StoreError>;
    /// [`Rooms::join_room_with`] showing no token, now: a room with a
    /// token refuses it.
    async fn join_room(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.join_room_with(
            room,
            member,
            epoch,
            max_peers,
            &RoomAccess::default(),
            now_ms(),
        )
        .await
    }
    /// Adds a member (replacing an older connection of the same peer) and
    /// returns the other members. Refuses, writing nothing: with
    /// `RoomExpired` when the record's `expires_at` is at or before
    /// `now_ms`; with `RoomTokenRequired` / `RoomTokenInvalid` when the
    /// record has a token and `access` neither shows it nor grants the room;
    /// with `RoomFull` at the record's `max_peers`, or at `max_peers` when
    /// the record has none.
    async fn join_room_with(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
        access: &RoomAccess,
        now_ms: u64,
    ) -> Result<Vec<Member>, StoreError>;
    /// Takes a slot of each quota in `quotas` (`(name, most slots)`) for
    /// `member` until `until_ms`, all or none, in one step: a quota holds
    /// the slots whose `until_ms` is after `now_ms`, each member once (taking
    /// again only moves its end). Returns `None` when taken, else the index
    /// in `quotas` of the first one that is full (nothing was taken). The
    /// caps on rooms made by callers other than admins
    /// (`rooms.max_rooms_per_creator`, `rooms.max_rooms_by_others`).
    async fn take_slots(
        &self,
        quotas: &[(String, usize)],
        member: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<usize>, StoreError>;
    /// Rooms whose `expires_at` is at or before `now_ms`, soonest first, at
    /// most `limit` (what the sweeper removes next).
    async fn expiring_rooms(&self, now_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError>;
    /// Removes a room as [`Rooms::delete_room`] does, but only if its
    /// record's `expires_at` is at or before `now_ms` (a room made under the
    /// same name since is left alone); returns the memberships it removed,
    /// or `None` when it removed nothing.
    async fn expire_room(
        &self,
        room: &RoomName,
        now_ms: u64,
    ) -> Result<Option<Vec<Membership>>, StoreError>;
    /// Removes `peer` from `room` if its membership is connection `epoch`.
    async fn leave_room(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<bool, StoreError>;
    /// The members of a room, ordered by peer id, or `None` when it has none
    /// (an explicit room without members included, as rooms always were).
    async fn room_members(&self, room: &RoomName) -> Result<Option<Vec<Member>>, StoreError>;
    /// Puts a membership back after an outage (no size limit: the member was
    /// admitted before; a missing record comes back implicit); returns true
    /// when it was missing.
    async fn restore_member(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
    ) -> Result<bool, StoreError>;
}

/// Which nodes live, and what happens to the entries of one that died (or
/// of this one, after an outage).
///
/// Guarantees every backend keeps:
/// - a node is alive while its heartbeat is fresher than the TTL it gave;
///   [`Liveness::heartbeat`] says when it had lapsed, so the node writes its
///   state again;
/// - exactly-once reaping: of all nodes calling [`Liveness::reap_node`] for
///   one dead node, exactly one gets `Some`, and its [`Reaped`] lists each
///   removed membership and each broken pairing once, so each gets exactly
///   one `peer-left` / `pair-lost`. Reaping removes the node's directory
///   entries, memberships (and the implicit records of rooms it emptied,
///   never an explicit record) and worker records in one atomic step;
/// - [`Liveness::own_entries`] is read-only;
/// - a lease ([`Liveness::try_lease`]) has at most one holder at a time, so
///   work that must run on one node at a time (the room sweeper) runs there.
///
/// The memory store serves one process, so every node it knows is alive:
/// `heartbeat` is always fresh, nothing is ever dead or reaped,
/// `own_entries` is empty (it cannot lose a node's state), and every lease
/// is the caller's.
#[async_trait]
pub trait Liveness: Send + Sync + 'static {
    /// Refreshes this node's heartbeat (alive for `ttl`); returns false when the
    /// heartbeat had expired or vanished (first beat, Redis restarted, or this
    /// node was declared dead), meaning local state must be registered again.
    async fn heartbeat(&self, node: &NodeId, ttl: Duration) -> Result<bool, StoreError>;
    /// Nodes whose heartbeat is alive now. Backends with one node in one
    /// process return nothing (every id they know is the caller's).
    async fn live_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        Ok(Vec::new())
    }
    /// Nodes known to the cluster whose heartbeat has expired.
    async fn dead_nodes(&self) -> Result<Vec<NodeId>, StoreError>;
    /// Claims the cleanup of a dead node (exactly one claimer wins) and, if
    /// this caller won, removes its peers, memberships and workers; `None`
    /// when another node claimed it.
    async fn reap_node(&self, dead: &NodeId, me: &NodeId) -> Result<Option<Reaped>, StoreError>;
    /// What the store holds as registered by node `me`: directory entries and
    /// memberships, each with its connection epoch. After an outage the node
    /// compares them with what it really holds, and removes the difference.
    /// Read-only. Backends that cannot lose a node's state return nothing.
    async fn own_entries(&self, _me: &NodeId) -> Result<OwnEntries, StoreError> {
        Ok(OwnEntries::default())
    }
    /// Removes this node's heartbeat on a graceful stop.
    async fn goodbye(&self, node: &NodeId) -> Result<(), StoreError>;
    /// Takes or keeps the lease `name` for `holder` for `ttl`: true when
    /// `holder` holds it now (it was free or expired, or `holder` held it
    /// and the lease is renewed), false when another holder does. At most
    /// one holder at a time, as long as each renews within its `ttl` (a
    /// holder that stalls longer may find it taken, and learns so at its
    /// next call). One process (the memory store) always holds it.
    async fn try_lease(
        &self,
        name: &str,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Gives the lease `name` back when `holder` holds it (nothing
    /// otherwise), so another holder may take it at once.
    async fn release_lease(&self, name: &str, holder: &NodeId) -> Result<(), StoreError>;
}

/// Rendezvous workers and their pairing.
///
/// A peer becomes a [`WorkerRecord`] lazily, when it first pairs, reports an
/// endpoint or is observed by STUN (a legacy worker at once).
///
/// Guarantees every backend keeps:
/// - every operation is atomic, so pairing is exactly once across the
///   cluster: a worker is never in two pairings, two nodes matching at the
///   same moment never take the same worker, and both sides of a pairing
///   change in the same step;
/// - matching is first come, first served within a pool;
/// - operations keyed by an epoch do nothing for a stale connection (newest
///   wins), and a record is never written for a connection the directory
///   says was replaced;
/// - a partner freed by an unpair, a removal, a replacement or a reap is
///   returned exactly once, so it is told `pair-lost` once.
#[async_trait]
pub trait Workers: Send + Sync + 'static {
    /// Creates the worker record of connection `conn` (idle) unless it exists,
    /// then applies `ep`. A record of an older connection of the same peer is
    /// replaced; if that one was paired, its partner is freed and returned.
    async fn upsert_worker(
        &self,
        conn: &WorkerConn,
        ep: &EndpointUpdate,
    ) -> Result<Option<LostPairing>, StoreError>;
    /// Queues worker `peer` (connection `epoch`, record already upserted) in
    /// `pool`, or matches it at once with the earliest worker still queued
    /// there (stale queue entries are skipped and dropped). Both sides of a
    /// match become paired under `pairing_id` in the same atomic step.
    /// Queuing again in the same pool keeps the place in line.
    async fn enqueue_or_match(
        &self,
        peer: &PeerId,
        epoch: u64,
        pool: &PoolName,
        meta: &serde_json::Value,
        now_ms: u64,
        pairing_id: &str,
    ) -> Result<Enqueued, PairError>;
    /// Pairs two named workers wherever they are connected (the operator's
    /// `POST /api/connect`); `a` is the initiator. Removes both from queues.
    async fn pair_workers(
        &self,
        a: &PeerId,
        b: &PeerId,
        pairing_id: &str,
    ) -> Result<(WorkerRecord, WorkerRecord), PairError>;
    /// Ends the pairing of `peer` (connection `epoch`), or takes it out of its
    /// queue; both sides become idle.
    async fn unpair_worker(&self, peer: &PeerId, epoch: u64) -> Result<Unpaired, PairError>;
    /// Removes the worker record of connection `epoch` (a stale epoch removes
    /// nothing); a partner is freed and returned.
    async fn remove_worker(
        &self,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<Option<LostPairing>, StoreError>;
    /// One worker.
    async fn get_worker(&self, peer: &PeerId) -> Result<Option<WorkerRecord>, StoreError>;
    /// Every worker in the cluster, ordered by peer id.
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;
    /// `(peer, epoch)` of every worker record that names `node` (to reconcile
    /// after an outage).
    async fn node_workers(&self, node: &NodeId) -> Result<Vec<(PeerId, u64)>, StoreError>;
}

/// The whole store, as the node holds it (`Arc<dyn Store>`).
pub trait Store:
    Directory + Rooms + Liveness + Workers + dashboard::DashRegistry + coordinator::CoordStore
{
    /// A short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;
}

/// Every room with its size, in name order, walking [`Rooms::list_rooms`] a
/// page at a time (what `GET /api/rooms` shows). Bounded: each page starts
/// strictly after the previous one.
pub async fn all_rooms(store: &dyn Store) -> Result<Vec<RoomSummary>, StoreError> {
    const PAGE: usize = 1_000;
    let mut out = Vec::new();
    let mut after: Option<RoomName> = None;
    loop {
        let page = store.list_rooms(after.as_ref(), PAGE).await?;
        out.extend(page.rooms);
        match page.next {
            Some(next) if after.as_ref() != Some(&next) => after = Some(next),
            _ => return Ok(out),
        }
    }
}
