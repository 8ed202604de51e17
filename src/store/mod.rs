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
//! - operations keyed by a connection epoch (`unregister_peer`, `leave_room`)
//!   do nothing when a newer connection of the peer owns the entry, so a late
//!   cleanup never removes a newer connection;
//! - `join_room` enforces `max_peers` atomically.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::protocol::Member;
use std::time::Duration;

use crate::types::{NodeId, PeerId, RoomName};

/// Where a peer is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLocation {
    /// The node holding its socket.
    pub node: NodeId,
    /// The connection's epoch.
    pub epoch: u64,
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
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The room is full.
    #[error("room is full")]
    RoomFull,
    /// The backend is unreachable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The store seam; see the module docs for the guarantees.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records `peer` at `loc`; returns the registration it replaced.
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError>;
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
    /// node claimed it. With `claim` false (a node resetting its own entries
    /// before registering again) it removes them unconditionally.
    async fn reap_node(
        &self,
        dead: &NodeId,
        me: &NodeId,
        claim: bool,
    ) -> Result<Option<Reaped>, StoreError>;
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
    /// A short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;
}
