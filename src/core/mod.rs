//! The core every part of a node shares, and nothing else: who this node is
//! (id, configuration), its local sockets ([`hub`]), the two cluster seams
//! (store and bus) with the envelope sequence, the dirty flag that asks for
//! re-registration after an outage, the draining flag, and the trackers that
//! let shutdown wait for connection tasks and background tasks.
//!
//! [`crate::relay`], [`crate::rooms`] and [`crate::rendezvous`] each take an
//! `Arc<Core>` and never each other; [`crate::node`] owns all of them and
//! routes between them. Nothing here imports any of those, so the dependency
//! graph has no cycle (a test in `tests/layering.rs` checks it).
//!
//! The vocabulary of the core is here too: what a client asks
//! ([`command::Command`]), what the core tells a client ([`event::Event`]),
//! and the per-connection state a node keeps ([`session`]).

pub mod command;
pub mod event;
pub mod hub;
pub mod session;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::bus::{Bus, Envelope, NodeEvent, WarnEvery, ENVELOPE_VERSION};
use crate::config::Config;
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::store::{Store, StoreError};
use crate::tasks::Tasks;
use crate::types::{NodeId, RoomName};
use hub::Hub;

/// The shared core of one node. See the module docs.
pub struct Core {
    /// This node's id on the bus.
    pub id: NodeId,
    /// The validated configuration.
    pub cfg: Arc<Config>,
    /// Local sockets and local room membership.
    pub hub: Hub,
    /// The shared registries (memory, or Redis in a cluster).
    pub store: Arc<dyn Store>,
    /// How events reach other nodes (in-process, or Redis pub/sub).
    pub bus: Arc<dyn Bus>,
    /// Sequence number of the next envelope this node publishes.
    seq: AtomicU64,
    /// The next connection epoch (random start: epochs of two nodes, or of
    /// one node before and after a restart, do not collide).
    next_epoch: AtomicU64,
    /// Set when local state could not be written to the store (outage): the
    /// maintenance loop registers everything again once the bus is back.
    dirty: AtomicBool,
    /// Set once shutdown has begun: readiness fails, new sockets are refused.
    draining: AtomicBool,
    /// The store leases this node asked for (see [`Core::hold_lease`]), so
    /// that a drain can hand them back ([`Core::release_leases`]).
    leases: parking_lot::Mutex<Vec<&'static str>>,
    /// Nodes whose heartbeat was alive at the last refresh: a STUN
    /// observation naming another node is published only to one of these,
    /// and a peer id held on a dead node is free.
    live_nodes: RwLock<HashSet<NodeId>>,
    /// Cancelled at the end of a drain: every connection's token is a child of it.
    pub close_all: CancellationToken,
    /// Tracks connection tasks so shutdown waits for them (axum does not).
    pub tracker: TaskTracker,
    /// Caps concurrent connections at `server.max_connections`; a permit
    /// lives as long as its socket.
    pub conn_limit: Arc<Semaphore>,
    /// The node's background tasks (maintenance, outboxes, the bus inbox,
    /// STUN; the seams' own tasks too), so shutdown can stop them and wait
    /// for them.
    pub tasks: Tasks,
    /// What happens on this node that an operator watches (the console's
    /// live log and signal rate); see [`Activity`].
    pub activity: Activity,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core on the given backends.
    /// `tasks` are the node's background tasks, which the seams may already
    /// have started on.
    pub fn new(
        cfg: Config,
        id: NodeId,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        tasks: Tasks,
    ) -> Self {
        Self {
            id,
            hub: Hub::default(),
            store,
            bus,
            seq: AtomicU64::new(0),
            next_epoch: AtomicU64::new(rand::random::<u64>() >> 1),
            dirty: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            leases: parking_lot::Mutex::new(Vec::new()),
            live_nodes: RwLock::new(HashSet::new()),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(cfg.server.max_connections)),
            tasks,
            activity: Activity::new(),
            cfg: Arc::new(cfg),
        }
    }

    /// Runs a background task of this node: tracked, and ended (dropped at
    /// its next await) when the node stops ([`Self::stop_tasks`]).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Stops every background task and waits for them, at most `within`.
    pub async fn stop_tasks(&self, within: std::time::Duration) {
        self.tasks.stop(within).await;
    }

    /// Names of the backends, for the start-up log.
    pub fn backend_names(&self) -> (&'static str, &'static str) {
        (self.bus.name(), self.store.name())
    }

    /// A fresh connection epoch.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks for the store lease `name` for `ttl` on behalf of this node (the
    /// one-runner-at-a-time of the cluster's background work): true while
    /// this node holds it; false when another node does, when the store
    /// cannot answer (logged at debug: the next tick asks again), and once
    /// this node drains (a draining node hands its work over: see
    /// [`Core::release_leases`]).
    pub async fn hold_lease(&self, name: &'static str, ttl: std::time::Duration) -> bool {
        if self.is_draining() {
            return false;
        }
        {
            let mut leases = self.leases.lock();
            if !leases.contains(&name) {
                leases.push(name);
            }
        }
        match self.store.try_lease(name, &self.id, ttl).await {
            Ok(held) => held,
            Err(e) => {
                tracing::debug!(lease = name, error = %e, "a lease could not be asked for");
                false
            }
        }
    }

    /// Gives back every lease this node holds (at the start of a drain), so
    /// another node takes the work over at its next tick rather than when
    /// the lease expires. Best effort: a lease the store cannot release now
    /// expires by itself (and a tick that asked just before the drain began
    /// may renew it once, until it expires).
    pub async fn release_leases(&self) {
        let names = self.leases.lock().clone();
        for name in names {
            if let Err(e) = self.store.release_lease(name, &self.id).await {
                tracing::debug!(lease = name, error = %e, "a lease could not be released");
            }
        }
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node as draining (readiness fails, new sockets are refused).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the node should not get traffic, if it should not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if !self.bus.is_ready() {
            Some("bus-unavailable")
        } else {
            None
        }
    }

    /// Asks the maintenance loop to register local state again (a store
    /// write failed, or was skipped during an outage).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Takes the dirty flag (true when re-registration is due).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// True while re-registration is due.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// True when `node` is this node, or had a live heartbeat at the last
    /// refresh of the live-node view.
    pub fn node_is_alive(&self, node: &NodeId) -> bool {
        *node == self.id || self.live_nodes.read().contains(node)
    }

    /// Replaces the view of live nodes.
    pub fn set_live_nodes(&self, live: impl IntoIterator<Item = NodeId>) {
        *self.live_nodes.write() = live.into_iter().collect();
    }

    /// Wraps an event in this node's next envelope.
    pub fn envelope(&self, event: NodeEvent) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            origin: self.id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            event,
        }
    }

    /// Publishes a room event to every node with members in the room.
    pub async fn publish_room(&self, room: &RoomName, event: NodeEvent) -> Result<(), ClientError> {
        self.publish_room_env(room, self.envelope(event)).await
    }

    /// The envelope of a room event this node delivers to its own members
    /// too, and the tag they get it with (the tag other nodes compute from
    /// the envelope: see [`hub::event_tag`]).
    pub fn room_envelope(&self, event: NodeEvent) -> (Envelope, u64) {
        let env = self.envelope(event);
        let tag = hub::event_tag(self.id.as_str(), env.seq);
        (env, tag)
    }

    /// [`Self::publish_room`] of an envelope made by [`Self::room_envelope`].
    pub async fn publish_room_env(
        &self,
        room: &RoomName,
        env: Envelope,
    ) -> Result<(), ClientError> {
        let kind = env.event.kind_name();
        let r = self.bus.publish_room(room, env).await;
        metrics::counter!(m::BUS_PUBLISHED, "kind" => kind, "outcome" => if r.is_ok() { "ok" } else { "error" })
            .increment(1);
        r.map_err(cluster_err)
    }

    /// Publishes to one node; returns how many subscribers got it (0: that
    /// node is not listening).
    pub async fn publish_node(
        &self,
        node: &NodeId,
        event: NodeEvent,
    ) -> Result<usize, ClientError> {
        self.publish_env(node, &self.envelope(event)).await
    }

    /// [`Self::publish_node`] of an envelope the caller keeps.
    pub async fn publish_env(&self, node: &NodeId, env: &Envelope) -> Result<usize, ClientError> {
        let kind = env.event.kind_name();
        let r = self.bus.publish_node(node, env).await;
        let outcome = match &r {
            Ok(0) => "no-receiver",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics::counter!(m::BUS_PUBLISHED, "kind" => kind, "outcome" => outcome).increment(1);
        r.map_err(cluster_err)
    }

    /// Fails with `cluster-unavailable` while the cluster backend is plainly
    /// unreachable (so work that needs it fails fast, not after a timeout).
    pub fn require_bus(&self) -> Result<(), ClientError> {
        if self.bus.is_connected() {
            Ok(())
        } else {
            Err(unavailable_now())
        }
    }
}

/// The client's error for a failed cluster backend call (the details go to
/// the log, not to the client).
pub fn cluster_err<E: std::fmt::Display>(e: E) -> ClientError {
    warn!(error = %e, "cluster backend call failed");
    unavailable_now()
}

/// The client's error while the cluster backend is unreachable.
pub fn unavailable_now() -> ClientError {
    ClientError::new(
        ErrorCode::ClusterUnavailable,
        "the cluster backend is unavailable; try again",
    )
}

/// The `op` labels of `switchboard_cleanup_failures_total`.
const CLEANUP_OPS: [&str; 9] = [
    "leave",
    "unregister",
    "announce",
    "reregister",
    "reregister-peer",
    "restore-member",
    "reap",
    "list-nodes",
    "sweep",
];
/// Cleanup failures are logged at most once per 10 s for each op (all are counted).
static CLEANUP_WARN: [WarnEvery; CLEANUP_OPS.len()] =
    [const { WarnEvery::new(10_000) }; CLEANUP_OPS.len()];

/// Counts a failed cleanup step (`op`: a bounded label) and logs it at warn,
/// at most once per 10 s.
pub fn cleanup_failed(
    op: &'static str,
    what: &dyn std::fmt::Display,
    error: &dyn std::fmt::Display,
) {
    metrics::counter!(m::CLEANUP_FAILURES, "op" => op).increment(1);
    let i = CLEANUP_OPS.iter().position(|o| *o == op).unwrap_or(0);
    if let Some(held) = CLEANUP_WARN[i].allow() {
        warn!(op, what = %what, error = %error, held_back = held, "cleanup step failed");
    }
}

/// Sorts the result of one re-registration step: an outage is returned (the
/// whole pass is retried later); a refusal is counted, logged and skipped
/// (`Ok(None)`), since retrying would fail the same way.
pub fn skip_refused<T>(
    op: &'static str,
    what: &dyn std::fmt::Display,
    r: Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            cleanup_failed(op, what, &e);
            Ok(None)
        }
    }
}

/// Something that happened on this node that an operator watches: the
/// parts tell it here ([`Activity::note`]) and the console
/// (`crate::console`), the only listener, turns it into its live log. Core
/// vocabulary, so the parts need not know the console.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A connection registered a peer id.
    Connected {
        /// The peer.
        peer: crate::types::PeerId,
        /// Its door (`native`, `legacy`, ...).
        door: &'static str,
        /// The address it came from.
        observed: String,
    },
    /// A registered connection ended.
    Disconnected {
        /// The peer.
        peer: crate::types::PeerId,
        /// The close reason (a bounded label).
        reason: &'static str,
    },
    /// A peer became a worker (its record was written the first time).
    WorkerRegistered {
        /// The worker.
        peer: crate::types::PeerId,
    },
    /// A worker's endpoints changed (it reported them, or STUN observed it).
    Endpoint {
        /// The worker.
        peer: crate::types::PeerId,
        /// Its UDP endpoint, when this change set it.
        udp: Option<String>,
    },
    /// Two workers were paired (told by the node that made the pairing).
    Paired {
        /// The pairing.
        pairing_id: String,
        /// Its initiator.
        initiator: crate::types::PeerId,
        /// Its responder.
        responder: crate::types::PeerId,
    },
    /// A pairing ended (told by the node that ended it).
    PairEnded {
        /// The pairing.
        pairing_id: String,
        /// The worker whose partner went away.
        peer: crate::types::PeerId,
        /// Why (a bounded label).
        reason: &'static str,
    },
}

/// Notes waiting for the console before the oldest are dropped (a burst of
/// connections costs memory up to this, never more).
const NOTE_BUFFER: usize = 4096;

/// The node's activity feed: a bounded, lossy broadcast of [`Note`]s (no
/// cost beyond a failed send while nobody listens) and a signal counter.
#[derive(Debug)]
pub struct Activity {
    notes: tokio::sync::broadcast::Sender<Note>,
    /// Signals routed by this node since start (the console's signals/s).
    pub signals: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            notes: tokio::sync::broadcast::channel(NOTE_BUFFER).0,
            signals: AtomicU64::new(0),
        }
    }

    /// Tells the listeners, if any (never waits).
    pub fn note(&self, n: Note) {
        let _ = self.notes.send(n);
    }

    /// A new listener of the notes from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Note> {
        self.notes.subscribe()
    }
}
