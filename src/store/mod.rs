//! The store seam: the registries every node shares.
//!
//! The peer directory (which node holds a peer, and which connection of it),
//! room membership with metadata. Backends: [`memory::MemoryStore`] (the
//! embedded default) and, with `cluster.redis_url`, Redis.
//!
//! Guarantees every backend keeps:
//! - each operation is atomic: concurrent callers on any node see it whole;
//! - `register_peer` returns the registration it replaced, so exactly one
//!   caller learns of each replaced connection (newest wins);
//! - `claim_peer` registers only a connection that may take the id: the id is
//!   free, its owner's node is dead, the owner is on the calling node (which
//!   checked its own hub first), or the claim proves itself (a token for the
//!   id, or the owner's reconnect secret). The check and the write are one
//!   atomic step, so two nodes can never both take a held id;
//! - operations keyed by a connection epoch (`unregister_peer`, `leave_room`)
//!   do nothing when a newer connection of the peer owns the entry, so a late
//!   cleanup never removes a newer connection;
//! - `join_room` enforces `max_peers` atomically.
//!
//! Workers (rendezvous): a peer becomes a [`WorkerRecord`] lazily, when it
//! first pairs, reports an endpoint or is observed by STUN (a legacy worker at
//! once). Every worker operation is atomic, so pairing is exactly once across
//! the cluster: a worker is never in two pairings, and two nodes matching at
//! the same moment never take the same worker. Matching is first come, first
//! served within a pool. Operations keyed by an epoch do nothing for a stale
//! connection (newest wins).

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::types::Member;
use std::time::Duration;

use crate::types::{NodeId, PeerId, PoolName, RoomName};

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

/// What a connection presents when it registers a peer id (see [`Store::claim_peer`]).
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

/// What [`Store::claim_peer`] did.
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

/// A room and its size, for listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomSummary {
    /// The room.
    pub room: RoomName,
    /// How many members it has.
    pub members: usize,
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

/// Which door a connection came through (what a worker record says of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Door {
    /// The native protocol at `/ws`.
    #[serde(rename = "native")]
    Native,
    /// The older rendezvous service's worker protocol at `/ws/register/{worker_id}`.
    #[serde(rename = "legacy")]
    LegacyWorker,
}

impl Door {
    /// The wire and metric label (`native`, `legacy`; stored in Redis and
    /// shown by `GET /api/workers`, so it stays as it was).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::LegacyWorker => "legacy",
        }
    }

    /// Parses [`Door::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "native" => Some(Self::Native),
            "legacy" => Some(Self::LegacyWorker),
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
    pub dialect: Door,
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
    /// The door it came through.
    pub dialect: Door,
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
            dialect: conn.dialect,
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

/// A node's entries in the store (see [`Store::own_entries`]).
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

/// The store seam; see the module docs for the guarantees.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records `peer` at `loc` unconditionally; returns the registration it
    /// replaced. (`hello` uses [`Store::claim_peer`], which checks ownership.)
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError>;
    /// Records `peer` at `loc` if `claim` may take it (see the module docs),
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
    /// Nodes whose heartbeat is alive now. Backends with one node in one
    /// process return nothing (every id they know is the caller's).
    async fn live_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        Ok(Vec::new())
    }
    /// Removes `peer` if its registration is connection `epoch`.
    async fn unregister_peer(&self, peer: &PeerId, epoch: u64) -> Result<bool, StoreError>;
    /// Where `peer` is connected, if anywhere.
    async fn locate_peer(&self, peer: &PeerId) -> Result<Option<PeerLocation>, StoreError>;
    /// Adds a member (replacing an older connection of the same peer) and
    /// returns the other members; fails with `RoomFull` at `max_peers`.
    async fn join_room(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
    ) -> Result<Vec<Member>, StoreError>;
    /// Removes `peer` from `room` if its membership is connection `epoch`.
    async fn leave_room(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<bool, StoreError>;
    /// The members of a room, or `None` when it has none.
    async fn room_members(&self, room: &RoomName) -> Result<Option<Vec<Member>>, StoreError>;
    /// Every room with its size.
    async fn list_rooms(&self) -> Result<Vec<RoomSummary>, StoreError>;
    /// Re-records `peer` at `loc` after an outage unless a newer connection
    /// elsewhere took the id meanwhile; returns that other owner if so.
    async fn reregister_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError>;
    /// Refreshes this node's heartbeat (alive for `ttl`); returns false when the
    /// heartbeat had expired or vanished (first beat, Redis restarted, or this
    /// node was declared dead), meaning local state must be registered again.
    async fn heartbeat(&self, node: &NodeId, ttl: Duration) -> Result<bool, StoreError>;
    /// Nodes known to the cluster whose heartbeat has expired.
    async fn dead_nodes(&self) -> Result<Vec<NodeId>, StoreError>;
    /// Claims the cleanup of a dead node (exactly one claimer wins) and, if
    /// this caller won, removes its peers and memberships; `None` when another
    /// node claimed it.
    async fn reap_node(&self, dead: &NodeId, me: &NodeId) -> Result<Option<Reaped>, StoreError>;
    /// What the store holds as registered by node `me`: directory entries and
    /// memberships, each with its connection epoch. After an outage the node
    /// compares them with what it really holds, and removes the difference.
    /// Read-only. Backends that cannot lose a node's state return nothing.
    async fn own_entries(&self, _me: &NodeId) -> Result<OwnEntries, StoreError> {
        Ok(OwnEntries::default())
    }
    /// Puts a membership back after an outage (no size limit: the member was
    /// admitted before); returns true when it was missing.
    async fn restore_member(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
    ) -> Result<bool, StoreError>;
    /// Removes this node's heartbeat on a graceful stop.
    async fn goodbye(&self, node: &NodeId) -> Result<(), StoreError>;

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
    /// A short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;
}
