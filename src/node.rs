//! The node: owns the hub, the bus and the store, and routes every command.
//!
//! A connection's reader hands each validated command to [`Node::dispatch`]
//! with the sender's identity stamped from its session. Direct signals go to a
//! local peer's queue, or through the peer directory to the one node holding
//! the target; room events go to local members and, through the bus, to the
//! nodes subscribed to the room. Events from other nodes arrive in
//! [`Node::handle_remote`].

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authenticator};
use crate::bus::local::{LocalBus, LocalNet};
use crate::bus::redis::RedisBus;
use crate::bus::{
    Bus, Envelope, NodeEvent, RemoteSignal, Undecodable, WarnEvery, ENVELOPE_VERSION,
};
use crate::cluster::Redis;
use crate::config::{AnonymousMode, Config};
use crate::error::{ClientError, ErrorCode};
use crate::hub::{CloseReason, ConnHandle, Hub};
use crate::metrics as m;
use crate::payload::Opaque;
use crate::protocol::{Command, LeaveReason, Member, NameLimits, PairLostReason, ServerMsg};
use crate::relay::{peer_not_found, Relay, Sent};
use crate::rendezvous::{RdvConn, Rendezvous};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Claim, Claimed, Door, PeerLocation, Reaped, SecretHash, Store, StoreError};
use crate::types::{new_peer_id, NodeId, PeerId, RoomName};

/// The state of one connection past `hello`, owned by its connection task.
#[derive(Debug)]
pub struct Session {
    /// The peer id (requested, from the token, or assigned).
    pub peer: PeerId,
    /// This connection's epoch.
    pub epoch: u64,
    /// The handle other tasks reach this connection through.
    pub handle: ConnHandle,
    /// Metadata from `hello`, the default for rooms joined without their own.
    pub meta: Value,
    /// Rooms joined on this connection (bounded by `limits.max_rooms_per_peer`).
    pub rooms: HashSet<RoomName>,
    /// Rendezvous state of this connection (STUN token, worker record).
    pub rdv: Arc<RdvConn>,
}

/// A failed `hello`: the error for the client, and whether to close the socket.
#[derive(Debug)]
pub struct HelloRefused {
    /// Sent to the client as `error`.
    pub error: ClientError,
    /// Close the connection with this reason after the error.
    pub close: Option<CloseReason>,
}

/// A peer id claim refused: a live connection holds the id (see [`Node::register`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdTaken;

/// What a peer without a token hears when this node admits none.
const ANONYMOUS_REFUSED: &str = "a token is required: this node accepts no anonymous peers \
     (its operator has set no auth.jwt key and auth.anonymous does not allow them here)";

/// A fresh `reconnect_secret` (128 random bits, hex) and its SHA-256.
fn new_reconnect_secret() -> (String, SecretHash) {
    let secret = crate::rendezvous::random_token();
    let hash = hash_secret(&secret);
    (secret, hash)
}

/// SHA-256 of a `reconnect_secret` as given (the server keeps only this).
fn hash_secret(secret: &str) -> SecretHash {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// One Switchboard node.
pub struct Node {
    /// This node's id on the bus.
    pub id: NodeId,
    /// The validated configuration.
    pub cfg: Arc<Config>,
    /// Local sockets and local room membership.
    pub hub: Hub,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    auth: Option<Authenticator>,
    /// Whether peers without a token are admitted, decided once at start.
    anonymous: AnonymousMode,
    /// Nodes whose heartbeat was alive at the last refresh (see
    /// [`Self::refresh_live_nodes`]): a STUN observation naming another node
    /// is published only to one of these.
    live_nodes: parking_lot::RwLock<HashSet<NodeId>>,
    draining: AtomicBool,
    /// Cancelled at the end of a drain: every connection's token is a child of it.
    pub close_all: CancellationToken,
    /// Tracks connection tasks so shutdown waits for them (axum does not).
    pub tracker: TaskTracker,
    /// Caps concurrent connections at `server.max_connections`; a permit lives as long as its socket.
    pub conn_limit: Arc<Semaphore>,
    next_epoch: AtomicU64,
    seq: AtomicU64,
    /// Set when local state could not be written to the store (outage): the
    /// maintenance loop registers everything again once the bus is back.
    dirty: AtomicBool,
    /// `peer-left` announcements still owed to other nodes: their publish
    /// failed after the store removed the membership, or the store call
    /// itself failed (it may still have run: a timed-out command is not
    /// withdrawn). Re-registration cannot find those again; the maintenance
    /// loop publishes them after a clean pass, unless the membership is
    /// still (or again) in the store. Bounded by [`MAX_PENDING_LEFT`].
    pending_left: Mutex<VecDeque<PendingLeft>>,
    /// Name limits for the protocol decoder.
    pub name_limits: NameLimits,
    /// Parsed `http.trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Node-local rendezvous state (connections by STUN token).
    pub(crate) rdv: Rendezvous,
    /// Cross-node relay state (route cache, outboxes).
    pub(crate) relay: Relay,
    me: Weak<Node>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A `peer-left` still owed to other nodes (see `Node::pending_left`).
#[derive(Debug)]
struct PendingLeft {
    room: RoomName,
    peer: PeerId,
    reason: LeaveReason,
}

/// Most `peer-left` announcements kept for a retry; older ones are dropped
/// (counted in `switchboard_announcements_dropped_total`) past that.
const MAX_PENDING_LEFT: usize = 65_536;

/// The `op` labels of `switchboard_cleanup_failures_total`.
const CLEANUP_OPS: [&str; 8] = [
    "leave",
    "unregister",
    "announce",
    "reregister",
    "reregister-peer",
    "restore-member",
    "reap",
    "list-nodes",
];
/// Cleanup failures are logged at most once per 10 s for each op (all are counted).
static CLEANUP_WARN: [WarnEvery; CLEANUP_OPS.len()] =
    [const { WarnEvery::new(10_000) }; CLEANUP_OPS.len()];
/// Events from other nodes that did not decode: at most one line per 10 s.
static UNDECODABLE_WARN: WarnEvery = WarnEvery::new(10_000);

/// Counts a failed cleanup step (`op`: a bounded label) and logs it at warn,
/// at most once per 10 s.
fn cleanup_failed(op: &'static str, what: &dyn std::fmt::Display, error: &dyn std::fmt::Display) {
    metrics::counter!(m::CLEANUP_FAILURES, "op" => op).increment(1);
    let i = CLEANUP_OPS.iter().position(|o| *o == op).unwrap_or(0);
    if let Some(held) = CLEANUP_WARN[i].allow() {
        warn!(op, what = %what, error = %error, held_back = held, "cleanup step failed");
    }
}

fn cluster_err<E: std::fmt::Display>(e: E) -> ClientError {
    warn!(error = %e, "cluster backend call failed");
    ClientError::new(
        ErrorCode::ClusterUnavailable,
        "the cluster backend is unavailable; try again",
    )
}

impl Node {
    /// A node on the embedded default: in-process bus, in-memory store.
    pub fn embedded(cfg: Config) -> Result<Arc<Self>, Vec<String>> {
        let id = node_id(&cfg);
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Arc::new(LocalBus::new(Arc::new(LocalNet::default()), id.clone(), tx));
        Self::new(cfg, id, Arc::new(MemoryStore::default()), bus, rx)
    }

    /// A node on the given backends; `inbox` receives the bus's events for it.
    pub fn new(
        cfg: Config,
        id: NodeId,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        inbox: mpsc::UnboundedReceiver<Envelope>,
    ) -> Result<Arc<Self>, Vec<String>> {
        let auth = Authenticator::from_config(&cfg.auth.jwt)?;
        let (rdv, rdv_jobs) = Rendezvous::new();
        let (release_tx, release_rx) = mpsc::unbounded_channel();
        let node = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            relay: Relay::new(&cfg.cluster, release_tx),
            id,
            hub: Hub::default(),
            store,
            bus,
            auth,
            anonymous: cfg.anonymous_mode(),
            live_nodes: parking_lot::RwLock::new(HashSet::new()),
            draining: AtomicBool::new(false),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(cfg.server.max_connections)),
            next_epoch: AtomicU64::new(rand::random::<u64>() >> 1),
            seq: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            pending_left: Mutex::new(VecDeque::new()),
            name_limits: NameLimits {
                max_name_bytes: cfg.limits.max_name_bytes,
                max_kind_bytes: cfg.limits.max_kind_bytes,
                max_meta_bytes: cfg.limits.max_meta_bytes,
                max_nesting_depth: cfg.limits.max_nesting_depth,
            },
            trusted_proxies: cfg.http.trusted_nets(),
            cfg: Arc::new(cfg),
            rdv,
        });
        tokio::spawn(crate::rendezvous::run_jobs(Arc::downgrade(&node), rdv_jobs));
        tokio::spawn(inbox_loop(Arc::downgrade(&node), inbox));
        tokio::spawn(crate::relay::run_releases(
            Arc::downgrade(&node),
            release_rx,
        ));
        tokio::spawn(maintenance(Arc::downgrade(&node)));
        tokio::spawn(keep_views(Arc::downgrade(&node)));
        Ok(node)
    }

    /// A node on the backends the configuration names: Redis when
    /// `cluster.redis_url` is set, else the embedded default.
    pub async fn build(cfg: Config) -> Result<Arc<Self>, Vec<String>> {
        if cfg.cluster.redis_url.is_empty() {
            return Self::embedded(cfg);
        }
        let id = node_id(&cfg);
        let redis = Redis::connect(&cfg.cluster).await.map_err(|e| vec![e])?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = RedisBus::start(redis.clone(), id.clone(), tx).await;
        let store = Arc::new(RedisStore::new(redis, id.clone()));
        Self::new(cfg, id, store, bus, rx)
    }

    /// True when `hello` tokens are verified.
    pub fn auth_enabled(&self) -> bool {
        self.auth.is_some()
    }

    /// True when `node` is this node, or had a live heartbeat at the last
    /// refresh of the live-node view.
    pub fn node_is_alive(&self, node: &NodeId) -> bool {
        *node == self.id || self.live_nodes.read().contains(node)
    }

    /// Refreshes the view of live nodes from the store and keeps this
    /// node's reconnect-secret hashes alive. Runs every
    /// `cluster.heartbeat_ms` in its own task ([`keep_views`]); a failed call
    /// keeps the previous view.
    pub async fn refresh_live_nodes(&self) {
        match self.store.live_nodes().await {
            Ok(live) => *self.live_nodes.write() = live.into_iter().collect(),
            Err(e) => debug!(error = %e, "listing live nodes failed"),
        }
        if let Err(e) = self.store.keep_secrets(&self.id).await {
            debug!(error = %e, "refreshing the secrets' lifetime failed");
        }
    }

    /// The shared registries (for the HTTP API).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Names of the backends, for the start-up log.
    pub fn backend_names(&self) -> (&'static str, &'static str) {
        (self.bus.name(), self.store.name())
    }

    /// A fresh connection epoch.
    pub fn next_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
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

    pub(crate) fn envelope(&self, event: NodeEvent) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            origin: self.id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            event,
        }
    }

    async fn publish_room(&self, room: &RoomName, event: NodeEvent) -> Result<(), ClientError> {
        let kind = event.kind_name();
        let r = self.bus.publish_room(room, self.envelope(event)).await;
        metrics::counter!(m::BUS_PUBLISHED, "kind" => kind, "outcome" => if r.is_ok() { "ok" } else { "error" })
            .increment(1);
        r.map_err(cluster_err)
    }

    /// Fails with `cluster-unavailable` while the cluster backend is unreachable.
    pub(crate) fn require_bus(&self) -> Result<(), ClientError> {
        if self.bus.is_connected() {
            Ok(())
        } else {
            Err(unavailable_now())
        }
    }

    /// A weak reference to this node, for tasks it starts.
    pub(crate) fn weak(&self) -> Weak<Node> {
        self.me.clone()
    }

    /// Asks the maintenance loop to register local state again (a store write failed).
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Publishes to one node; returns how many subscribers got it (0: that node is not listening).
    pub(crate) async fn publish_node(
        &self,
        node: &NodeId,
        event: NodeEvent,
    ) -> Result<usize, ClientError> {
        self.publish_env(node, &self.envelope(event)).await
    }

    /// [`Self::publish_node`] of an envelope the caller keeps.
    pub(crate) async fn publish_env(
        &self,
        node: &NodeId,
        env: &Envelope,
    ) -> Result<usize, ClientError> {
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

    /// Handles `hello`: authenticates (or admits an anonymous peer as
    /// `auth.anonymous` allows), claims the peer id (see [`Self::register`])
    /// and sends `welcome` with a fresh `reconnect_secret`.
    #[allow(clippy::too_many_arguments)] // the fields of `hello`, as decoded
    pub async fn hello(
        &self,
        handle: &ConnHandle,
        observed: SocketAddr,
        id: Option<Value>,
        peer_id: Option<PeerId>,
        meta: Value,
        token: Option<String>,
        reconnect_secret: Option<String>,
    ) -> Result<Session, HelloRefused> {
        if self.is_draining() {
            return Err(HelloRefused {
                error: ClientError::new(
                    ErrorCode::Draining,
                    "this node is shutting down; reconnect",
                ),
                close: Some(CloseReason::DRAINING),
            });
        }
        let refuse = |message: String| HelloRefused {
            error: ClientError::new(ErrorCode::Unauthorized, message),
            close: Some(CloseReason::UNAUTHORIZED),
        };
        let mut peer_id = peer_id;
        let token_for_id = if let Some(auth) = &self.auth {
            let claims = auth
                .verify(token.as_deref(), peer_id.as_ref().map(|p| p.as_str()))
                .map_err(|e| refuse(e.to_string()))?;
            if peer_id.is_none() {
                peer_id = Some(
                    PeerId::parse(&claims.sub, self.cfg.limits.max_name_bytes).map_err(|_| {
                        refuse(AuthError::Invalid("`sub` is not a valid peer id").to_string())
                    })?,
                );
            }
            true
        } else if self.anonymous.allows_anonymous() {
            false
        } else {
            return Err(refuse(ANONYMOUS_REFUSED.into()));
        };
        let peer = peer_id.unwrap_or_else(new_peer_id);
        let (secret, secret_hash) = new_reconnect_secret();
        let claim = Claim {
            token_for_id,
            presented: reconnect_secret.as_deref().map(hash_secret),
            secret: secret_hash,
        };
        // `welcome` goes out only once the peer is reachable cluster-wide (so a
        // signal sent to it right after cannot miss), and before anything that
        // reached it meanwhile.
        handle.close_gate();
        let Ok((session, stun_username)) = self
            .register(peer.clone(), handle, meta, Door::Native, observed, claim)
            .await
        else {
            // The socket stays open: the client may say `hello` with another id.
            return Err(HelloRefused {
                error: ClientError::new(
                    ErrorCode::PeerIdTaken,
                    format!(
                        "peer id `{peer}` is held by a live connection; give its \
                         `reconnect_secret` (or a token for the id) to take it over, or use another id"
                    ),
                ),
                close: None,
            });
        };
        let welcome = ServerMsg::Welcome {
            id,
            peer_id: session.peer.clone(),
            node: self.id.to_string(),
            observed_addr: observed.to_string(),
            heartbeat_ms: self.cfg.limits.heartbeat_interval_ms,
            stun_username,
            reconnect_secret: secret,
        };
        handle.open_gate(Some(welcome), None);
        Ok(session)
    }

    /// How this node treats peers without a token (from `auth.anonymous`,
    /// `auth.jwt` and `server.listen`).
    pub fn anonymous_mode(&self) -> AnonymousMode {
        self.anonymous
    }

    /// Admits a connection that has no `hello` (the legacy worker door):
    /// `Ok(true)` when a token for `peer` was verified (it may take the id
    /// over), `Ok(false)` for an anonymous peer the node accepts, else the
    /// reason for the client.
    pub fn admit_without_hello(&self, token: Option<&str>, peer: &PeerId) -> Result<bool, String> {
        match &self.auth {
            Some(auth) => auth
                .verify(token, Some(peer.as_str()))
                .map(|_| true)
                .map_err(|e| e.to_string()),
            None if self.anonymous.allows_anonymous() => Ok(false),
            None => Err(ANONYMOUS_REFUSED.into()),
        }
    }

    /// True when a live connection holds `peer`, here or on a live node (the
    /// legacy door's check before its upgrade; [`Self::register`] decides
    /// again, atomically). A store that cannot be asked counts as "no".
    pub async fn peer_id_held(&self, peer: &PeerId) -> bool {
        if self.hub.get(peer).is_some_and(|h| !h.is_closing()) {
            return true;
        }
        if !self.bus.is_connected() {
            return false;
        }
        match self.store.locate_peer(peer).await {
            Ok(Some(loc)) => loc.node != self.id && self.node_is_alive(&loc.node),
            _ => false,
        }
    }

    /// Connects a worker of the older rendezvous service (no `hello`: the
    /// worker id comes from the URL): claims the id like a `hello` without a
    /// reconnect secret (`token_for_id`: the door verified a token for it)
    /// and creates its worker record.
    pub async fn register_legacy(
        &self,
        handle: &ConnHandle,
        observed: SocketAddr,
        worker: PeerId,
        token_for_id: bool,
    ) -> Result<Session, CloseReason> {
        if self.is_draining() {
            return Err(CloseReason::DRAINING);
        }
        let claim = Claim {
            token_for_id,
            presented: None,
            secret: new_reconnect_secret().1,
        };
        handle.close_gate();
        let registered = self
            .register(
                worker,
                handle,
                Value::Null,
                Door::LegacyWorker,
                observed,
                claim,
            )
            .await;
        let Ok((session, _)) = registered else {
            return Err(CloseReason::PEER_ID_TAKEN);
        };
        handle.open_gate(None, None);
        if let Err(e) = self
            .ensure_worker(&session.rdv, &crate::store::EndpointUpdate::default())
            .await
        {
            warn!(worker = %session.peer, error = %e.message, "worker record not written; will reconcile");
            self.mark_dirty();
        }
        Ok(session)
    }

    /// Makes `peer` reachable on this node and in the directory, if `claim`
    /// may take the id; returns the session and its STUN username.
    ///
    /// A peer id held by a live connection (here, or on a node whose
    /// heartbeat is alive) is taken over only by a claim that proves itself:
    /// a verified token for the id, or the holder's reconnect secret; else
    /// `Err(PeerIdTaken)` and nothing of the holder changes. The hub is
    /// checked and updated first, then the store, atomically (a reconcile
    /// relies on the hub never lagging the store: see `reregister`); when the
    /// store refuses, the hub is put back and whatever reached this
    /// connection meanwhile goes on to the holder. While the cluster backend
    /// is unreachable only the hub decides; re-registration later keeps the
    /// store's owner (the local connection is then closed as replaced).
    /// The caller closes the gate before and opens it after success.
    async fn register(
        &self,
        peer: PeerId,
        handle: &ConnHandle,
        meta: Value,
        dialect: Door,
        observed: SocketAddr,
        claim: Claim,
    ) -> Result<(Session, Option<String>), PeerIdTaken> {
        let replaced = match self.claim_local(&peer, handle, &claim) {
            Ok(r) => r,
            Err(e) => {
                self.pass_on_held(handle, &peer, None);
                return Err(e);
            }
        };
        let secret = claim.secret;
        if !self.bus.is_connected() {
            // Served locally now, registered cluster-wide once the bus is back.
            self.dirty.store(true, Ordering::Release);
        } else {
            let loc = PeerLocation {
                node: self.id.clone(),
                epoch: handle.epoch,
            };
            match self.store.claim_peer(&peer, loc, &claim).await {
                Ok(Claimed::Registered(Some(prev))) if prev.node != self.id => {
                    let kick = NodeEvent::Kick {
                        peer_id: peer.clone(),
                        epoch: prev.epoch,
                    };
                    let _ = self.publish_node(&prev.node, kick).await;
                }
                Ok(Claimed::Registered(_)) => {}
                Ok(Claimed::Taken(owner)) => {
                    debug!(peer = %peer, node = %owner.node, "peer id held on another node; hello refused");
                    let restored = match &replaced {
                        Some(old) => self
                            .hub
                            .register_if(peer.clone(), old.clone(), Some(handle.epoch))
                            .is_ok(),
                        None => self.hub.unregister(&peer, handle.epoch),
                    };
                    if !restored {
                        debug!(peer = %peer, "hub entry changed while the store refused the claim");
                    }
                    self.pass_on_held(handle, &peer, Some(&owner));
                    return Err(PeerIdTaken);
                }
                Err(e) => {
                    warn!(peer = %peer, error = %e, "peer directory unavailable; peer served locally only");
                    self.dirty.store(true, Ordering::Release);
                }
            }
        }
        if let Some(old) = replaced {
            debug!(peer = %peer, "a proven reconnect replaces a local connection");
            old.close(CloseReason::REPLACED);
        }
        handle.mark_registered();
        let (rdv, stun_username) =
            self.rdv_register(&peer, handle.epoch, dialect, observed, secret);
        Ok((
            Session {
                peer,
                epoch: handle.epoch,
                handle: handle.clone(),
                meta,
                rooms: HashSet::new(),
                rdv,
            },
            stun_username,
        ))
    }

    /// Takes `peer` in this node's hub for `handle` if `claim` may: the id is
    /// free here, its connection is closing, or the claim proves itself for
    /// that connection. Returns the connection it displaced (still open: it
    /// is closed once the store agrees).
    fn claim_local(
        &self,
        peer: &PeerId,
        handle: &ConnHandle,
        claim: &Claim,
    ) -> Result<Option<ConnHandle>, PeerIdTaken> {
        // Bounded: each retry means another connection changed the entry in
        // between, which only a racing `hello` for the same id does.
        for _ in 0..3 {
            let cur = self.hub.get(peer);
            if let Some(c) = &cur {
                let proven = claim.token_for_id
                    || c.is_closing()
                    || claim
                        .presented
                        .is_some_and(|p| self.rdv_secret_is(peer, c.epoch, &p));
                if !proven {
                    return Err(PeerIdTaken);
                }
            }
            let expected = cur.as_ref().map(|c| c.epoch);
            if let Ok(old) = self.hub.register_if(peer.clone(), handle.clone(), expected) {
                return Ok(old);
            }
        }
        Err(PeerIdTaken)
    }

    /// After a refused claim: what reached `handle` while it held the id
    /// goes on to the holder (a local connection, or as relayed signals to
    /// `owner`'s node); anything else is dropped and counted.
    fn pass_on_held(&self, handle: &ConnHandle, peer: &PeerId, owner: Option<&PeerLocation>) {
        let held = handle.open_gate_taking_held();
        if held.is_empty() {
            return;
        }
        let local = self.hub.get(peer);
        for out in held {
            if let Some(h) = &local {
                h.push(out.msg, out.received);
                continue;
            }
            let sent = match (&*out.msg, owner) {
                (ServerMsg::Signal { from, kind, data }, Some(loc)) if loc.node != self.id => {
                    let sig = RemoteSignal {
                        from: from.clone(),
                        from_epoch: self.hub.get(from).map_or(0, |h| h.epoch),
                        to: peer.clone(),
                        to_epoch: loc.epoch,
                        kind: kind.clone(),
                        data: data.clone(),
                        // Already acked to its sender when it was queued here.
                        id: None,
                        hops: 0,
                    };
                    self.relay_send_to(sig, loc.node.clone(), loc.epoch).is_ok()
                }
                _ => false,
            };
            if !sent {
                metrics::counter!(m::HELD_FOR_REFUSED_DROPPED).increment(1);
            }
        }
    }

    /// Runs one command of a session past `hello`.
    pub async fn dispatch(
        &self,
        s: &mut Session,
        id: Option<Value>,
        cmd: Command,
        received: Instant,
    ) {
        let result = match cmd {
            Command::Join { room, meta } => self.join(s, id.clone(), room, meta).await,
            Command::Leave { room } => self.leave(s, &room).await.map(|()| ack(id.clone())),
            Command::Signal { to, kind, data } => {
                self.signal(s, id.clone(), to, kind, data, received).await
            }
            Command::Broadcast { room, data } => self
                .broadcast(s, room, data, received)
                .await
                .map(|()| ack(id.clone())),
            Command::Ping => Ok(Some(ServerMsg::Pong { id: id.clone() })),
            // `pair` sends its own `ack`, before any `paired` it causes.
            Command::Pair { pool, meta } => self
                .rdv_pair(s, id.clone(), pool, meta, received)
                .await
                .map(|()| None),
            Command::Unpair => self.rdv_unpair(s).await.map(|()| ack(id.clone())),
            Command::Endpoint { public_ip, udp } => self
                .rdv_endpoint(s, public_ip, udp)
                .await
                .map(|()| ack(id.clone())),
            Command::Hello { .. } => Err(ClientError::new(
                ErrorCode::AlreadyHello,
                "this connection already sent hello",
            )),
        };
        match result {
            Ok(Some(reply)) => {
                s.handle.send(reply);
            }
            Ok(None) => {}
            Err(e) => send_error(&s.handle, id, e),
        }
    }

    async fn join(
        &self,
        s: &mut Session,
        id: Option<Value>,
        room: RoomName,
        meta: Value,
    ) -> Result<Option<ServerMsg>, ClientError> {
        let meta = if meta.is_null() { s.meta.clone() } else { meta };
        let member = Member {
            peer_id: s.peer.clone(),
            meta: meta.clone(),
        };
        if s.rooms.contains(&room) {
            // Joining again is harmless: answer with the current members.
            let peers = self
                .store
                .room_members(&room)
                .await
                .map_err(cluster_err)?
                .unwrap_or_default();
            let peers = peers.into_iter().filter(|p| p.peer_id != s.peer).collect();
            return Ok(Some(ServerMsg::Joined { id, room, peers }));
        }
        if !self.bus.is_connected() {
            return Err(unavailable_now());
        }
        if s.rooms.len() >= self.cfg.limits.max_rooms_per_peer {
            return Err(ClientError::new(
                ErrorCode::TooManyRooms,
                format!(
                    "a peer may be in at most {} rooms",
                    self.cfg.limits.max_rooms_per_peer
                ),
            ));
        }
        // Local membership first, then the shared registry: whichever of two
        // concurrent joiners registers second lists the first, and the first is
        // already reachable for the second's `peer-joined`. The gate holds what
        // reaches the joiner meanwhile, so `joined` is the first thing it reads
        // of the room and the held events apply on top of the list.
        s.handle.close_gate();
        if self
            .hub
            .room_add(&room, s.peer.clone(), s.handle.clone(), meta.clone())
        {
            if let Err(e) = self.bus.subscribe_room(&room).await {
                self.hub.room_remove(&room, &s.peer, s.epoch);
                s.handle.open_gate(None, Some(&room));
                return Err(cluster_err(e));
            }
        }
        let peers = match self
            .store
            .join_room(&room, &member, s.epoch, self.cfg.limits.max_peers_per_room)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                self.drop_local_member(&room, &s.peer, s.epoch).await;
                // A failed join leaks nothing of the room.
                s.handle.open_gate(None, Some(&room));
                return Err(match e {
                    StoreError::RoomFull => ClientError::new(
                        ErrorCode::RoomFull,
                        format!(
                            "room is full ({} peers)",
                            self.cfg.limits.max_peers_per_room
                        ),
                    ),
                    e => cluster_err(e),
                });
            }
        };
        s.rooms.insert(room.clone());
        // Announce first, answer second: once the joiner has read `joined`,
        // its `peer-joined` has reached every node, so a peer that joins after
        // that sees it in its own `joined` list and never as a late event.
        let note = Arc::new(ServerMsg::PeerJoined {
            room: room.clone(),
            peer_id: s.peer.clone(),
            meta: meta.clone(),
        });
        self.hub
            .room_fanout(room.as_str(), Some(s.peer.as_str()), &note, None);
        let _ = self
            .publish_room(
                &room,
                NodeEvent::PeerJoined {
                    room: room.clone(),
                    member,
                },
            )
            .await;
        s.handle.open_gate(
            Some(ServerMsg::Joined {
                id,
                room: room.clone(),
                peers,
            }),
            None,
        );
        Ok(None)
    }

    /// Removes a connection from a room's local members (unsubscribing the
    /// node from the room when it was the last one); true when it was a member.
    async fn drop_local_member(&self, room: &RoomName, peer: &PeerId, epoch: u64) -> bool {
        let (removed, emptied) = self.hub.room_remove(room, peer, epoch);
        if emptied {
            if let Err(e) = self.bus.unsubscribe_room(room).await {
                warn!(room = %room, error = %e, "unsubscribe failed");
            }
        }
        removed
    }

    async fn leave(&self, s: &mut Session, room: &RoomName) -> Result<(), ClientError> {
        if !s.rooms.remove(room) {
            return Err(ClientError::new(
                ErrorCode::NotInRoom,
                format!("not in room `{room}`"),
            ));
        }
        self.leave_room(&s.peer, s.epoch, room, LeaveReason::Left)
            .await
    }

    /// Removes a connection from a room and tells the others, once.
    async fn leave_room(
        &self,
        peer: &PeerId,
        epoch: u64,
        room: &RoomName,
        reason: LeaveReason,
    ) -> Result<(), ClientError> {
        // Local members learn at once, whatever the store says: the hub is the
        // truth for this node. Other nodes learn through the store's verdict
        // (exactly one `peer-left` per membership), or after an outage through
        // re-registration.
        // (When this emptied the room locally, nobody here is left to tell.)
        if self.drop_local_member(room, peer, epoch).await {
            let note = Arc::new(ServerMsg::PeerLeft {
                room: room.clone(),
                peer_id: peer.clone(),
                reason,
            });
            self.hub
                .room_fanout(room.as_str(), Some(peer.as_str()), &note, None);
        }
        let removed = match self.store.leave_room(room, peer, epoch).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                // The peer has left as far as this node is concerned; the shared
                // view is reconciled when the store is back: re-registration
                // removes the membership if it is still there, and the
                // announcement is owed if the call ran after all.
                cleanup_failed("leave", room, &e);
                self.dirty.store(true, Ordering::Release);
                self.owe_left(room, peer, reason);
                return Ok(());
            }
            Err(e) => {
                // Refused: retrying would fail the same way. Counted and
                // logged; the entry goes when this node's entries are reaped.
                cleanup_failed("leave", room, &e);
                return Ok(());
            }
        };
        if removed {
            self.announce_left(room, peer, reason).await?;
        }
        Ok(())
    }

    /// Publishes a `peer-left` for a membership the store has just removed;
    /// when that fails, the announcement is kept and published again by the
    /// maintenance loop (nothing else would tell other nodes).
    async fn announce_left(
        &self,
        room: &RoomName,
        peer: &PeerId,
        reason: LeaveReason,
    ) -> Result<(), ClientError> {
        let event = NodeEvent::PeerLeft {
            room: room.clone(),
            peer_id: peer.clone(),
            reason,
        };
        let r = self.publish_room(room, event).await;
        if let Err(e) = &r {
            cleanup_failed("announce", room, &e.message);
            self.owe_left(room, peer, reason);
        }
        r
    }

    /// Remembers a `peer-left` owed to other nodes (see `pending_left`).
    fn owe_left(&self, room: &RoomName, peer: &PeerId, reason: LeaveReason) {
        let mut q = self.pending_left.lock();
        if q.len() >= MAX_PENDING_LEFT {
            q.pop_front();
            metrics::counter!(m::ANNOUNCEMENTS_DROPPED).increment(1);
        }
        q.push_back(PendingLeft {
            room: room.clone(),
            peer: peer.clone(),
            reason,
        });
    }

    /// Publishes the `peer-left` announcements still owed, in order, until
    /// one fails again. Called only after a clean re-registration pass (or
    /// when none was needed), which has removed, and announced, every
    /// membership of this node the hub no longer holds: one still in the
    /// store now belongs to a newer connection (the peer joined again), and
    /// its announcement is dropped, since it would contradict that
    /// connection's `peer-joined`.
    async fn flush_pending_left(&self) {
        // Bounded: at most what was queued when this started.
        let n = self.pending_left.lock().len();
        for _ in 0..n {
            let Some(p) = self.pending_left.lock().pop_front() else {
                return;
            };
            let back = match self.store.room_members(&p.room).await {
                Ok(members) => members
                    .unwrap_or_default()
                    .iter()
                    .any(|m| m.peer_id == p.peer),
                Err(_) => {
                    self.pending_left.lock().push_front(p);
                    return;
                }
            };
            if back {
                continue;
            }
            let event = NodeEvent::PeerLeft {
                room: p.room.clone(),
                peer_id: p.peer.clone(),
                reason: p.reason,
            };
            if self.publish_room(&p.room, event).await.is_err() {
                self.pending_left.lock().push_front(p);
                return;
            }
        }
    }

    /// Routes a direct signal: a local peer's queue, or the outbox of the one
    /// node holding it (see [`crate::relay`]). Returns the `ack` to send now:
    /// a relayed signal is acked by its target's node once delivered.
    async fn signal(
        &self,
        s: &Session,
        id: Option<Value>,
        to: PeerId,
        kind: crate::types::SignalKind,
        data: Opaque,
        received: Instant,
    ) -> Result<Option<ServerMsg>, ClientError> {
        if let Some(h) = self.hub.get(&to) {
            h.push(
                Arc::new(ServerMsg::Signal {
                    from: s.peer.clone(),
                    kind,
                    data,
                }),
                Some(received),
            );
            return Ok(ack(id));
        }
        if !self.bus.is_connected() {
            return Err(unavailable_now());
        }
        let sig = RemoteSignal {
            from: s.peer.clone(),
            from_epoch: s.epoch,
            to,
            to_epoch: 0,
            kind,
            data,
            id,
            hops: 0,
        };
        let sig = match self.relay_send(sig)? {
            Sent::Queued => return Ok(None),
            Sent::Unknown(sig) => sig,
        };
        match self.store.locate_peer(&sig.to).await.map_err(cluster_err)? {
            Some(loc) if loc.node != self.id => {
                self.relay_send_to(sig, loc.node, loc.epoch).map(|()| None)
            }
            _ => Err(peer_not_found(&sig.to)),
        }
    }

    async fn broadcast(
        &self,
        s: &Session,
        room: RoomName,
        data: Opaque,
        received: Instant,
    ) -> Result<(), ClientError> {
        if !s.rooms.contains(&room) {
            return Err(ClientError::new(
                ErrorCode::NotInRoom,
                format!("not in room `{room}`"),
            ));
        }
        let msg = Arc::new(ServerMsg::Message {
            room: room.clone(),
            from: s.peer.clone(),
            data: data.clone(),
        });
        self.hub
            .room_fanout(room.as_str(), Some(s.peer.as_str()), &msg, Some(received));
        self.publish_room(
            &room,
            NodeEvent::Message {
                room: room.clone(),
                from: s.peer.clone(),
                data,
            },
        )
        .await
    }

    /// Cleans up after a connection: leaves its rooms, removes it from the directory.
    pub async fn disconnect(&self, s: &Session, why: CloseReason) {
        for room in &s.rooms {
            // A failure is counted, logged and retried by `leave_room` itself
            // (re-registration, or the pending `peer-left` announcements).
            let _ = self.leave_room(&s.peer, s.epoch, room, why.leave).await;
        }
        self.rdv_disconnect(s, why).await;
        self.hub.unregister(&s.peer, s.epoch);
        if let Err(e) = self.store.unregister_peer(&s.peer, s.epoch).await {
            cleanup_failed("unregister", &s.peer, &e);
            if e.is_transient() {
                // Re-registration removes directory entries the hub no longer holds.
                self.mark_dirty();
            }
        }
    }

    /// Handles one event from another node.
    pub fn handle_remote(&self, env: Envelope) {
        if env.v != ENVELOPE_VERSION {
            crate::bus::version_mismatch(env.v, Some(&env.origin));
            return;
        }
        if env.origin == self.id {
            return;
        }
        self.handle_event(&env.origin, env.event);
    }

    /// An event from `origin` that did not decode: counted and logged (at
    /// most a line per 10 s), and when it was a signal whose sender could be
    /// read, the sender is told rather than left waiting for an `ack`.
    fn bus_undecodable(&self, origin: &NodeId, u: Undecodable) {
        metrics::counter!(m::BUS_DECODE_ERRORS).increment(1);
        if let Some(held) = UNDECODABLE_WARN.allow() {
            warn!(
                origin = %origin,
                kind = u.kind,
                error = %u.error,
                sender_told = u.sender.is_some(),
                held_back = held,
                "an event from another node did not decode; dropped"
            );
        }
        let Some(s) = u.sender else { return };
        match u.kind {
            // Our peer's signal came back and could not be read: tell it here.
            "bounced" => {
                if let Some(h) = self.hub.get(&s.from).filter(|h| h.epoch == s.from_epoch) {
                    send_error(&h, s.id, undeliverable(s.to.as_ref()));
                }
            }
            _ => {
                let answer = NodeEvent::Undeliverable {
                    to: s.from,
                    to_epoch: s.from_epoch,
                    id: s.id,
                    target: s.to,
                };
                if self.relay_push(origin, answer).is_err() {
                    debug!(origin = %origin, "outbox full: `undeliverable` not sent");
                }
            }
        }
    }

    fn handle_event(&self, origin: &NodeId, event: NodeEvent) {
        m::count(m::BUS_RECEIVED, "kind", event.kind_name(), 1);
        match event {
            NodeEvent::Batch { events } => {
                for e in events {
                    // A batch inside a batch is not something a node sends.
                    if !matches!(e, NodeEvent::Batch { .. }) {
                        self.handle_event(origin, e);
                    }
                }
            }
            NodeEvent::Signal(s) => self.relay_receive(origin, s),
            NodeEvent::Bounced(s) => self.relay_bounced(origin, s),
            NodeEvent::Flush { peer_id } => self.relay_flush(origin, peer_id),
            NodeEvent::Flushed { peer_id } => self.relay_flushed(origin, peer_id),
            NodeEvent::Delivered { to, to_epoch, id } => self.relay_delivered(&to, to_epoch, id),
            NodeEvent::Undeliverable {
                to,
                to_epoch,
                id,
                target,
            } => {
                if let Some(h) = self.hub.get(&to).filter(|h| h.epoch == to_epoch) {
                    send_error(&h, id, undeliverable(target.as_ref()));
                }
            }
            NodeEvent::Undecodable(u) => self.bus_undecodable(origin, *u),
            NodeEvent::Message { room, from, data } => {
                let msg = Arc::new(ServerMsg::Message {
                    room: room.clone(),
                    from: from.clone(),
                    data,
                });
                self.hub
                    .room_fanout(room.as_str(), Some(from.as_str()), &msg, None);
            }
            NodeEvent::PeerJoined { room, member } => {
                let msg = Arc::new(ServerMsg::PeerJoined {
                    room: room.clone(),
                    peer_id: member.peer_id.clone(),
                    meta: member.meta,
                });
                self.hub
                    .room_fanout(room.as_str(), Some(member.peer_id.as_str()), &msg, None);
            }
            NodeEvent::PeerLeft {
                room,
                peer_id,
                reason,
            } => {
                let msg = Arc::new(ServerMsg::PeerLeft {
                    room: room.clone(),
                    peer_id: peer_id.clone(),
                    reason,
                });
                self.hub
                    .room_fanout(room.as_str(), Some(peer_id.as_str()), &msg, None);
            }
            NodeEvent::Probe { .. } => {}
            NodeEvent::Kick { peer_id, epoch } => {
                if let Some(h) = self.hub.get(&peer_id).filter(|h| h.epoch == epoch) {
                    h.close(CloseReason::REPLACED);
                }
            }
            NodeEvent::Paired {
                to,
                to_epoch,
                paired,
            } => self.rdv_deliver(&to, to_epoch, ServerMsg::Paired(paired)),
            NodeEvent::PairLost {
                to,
                to_epoch,
                pairing_id,
                reason,
            } => self.rdv_deliver(&to, to_epoch, ServerMsg::PairLost { pairing_id, reason }),
            NodeEvent::Observed { token, udp } => self.rdv_forwarded(token, &udp),
        }
    }

    /// Drains the node: readiness fails and new sockets are refused at once,
    /// every client is told to reconnect, and after `grace` the remaining
    /// sockets close with 1012. Returns when every connection task has ended
    /// (or a last bounded wait has passed).
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::Release);
        let handles = self.hub.handles();
        info!(
            connections = handles.len(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let jitter = self.cfg.shutdown.reconnect_jitter_ms.max(1);
        for h in &handles {
            h.send(ServerMsg::Reconnect {
                reason: "draining".into(),
                after_ms: rand::random_range(0..jitter),
            });
        }
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            info!(
                remaining = self.tracker.len(),
                "grace period over; closing sockets with 1012"
            );
            self.close_all.cancel();
            if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    remaining = self.tracker.len(),
                    "connection tasks still running after close"
                );
            }
        }
        if let Err(e) = self.store.goodbye(&self.id).await {
            warn!(error = %e, "could not remove this node's heartbeat");
        }
    }
    /// Registers every local peer and membership again after the store lost
    /// them or missed changes (Redis outage or restart, or this node declared
    /// dead). First what this node holds now is written (overwriting, so there
    /// is never a moment when a live peer looks absent); then the entries the
    /// store still has for this node but the node no longer holds are removed.
    /// Other nodes hear `peer-joined` / `peer-left` for the difference.
    ///
    /// A step the store refuses (an error reply, not an outage) is counted,
    /// logged and skipped, so one bad entry cannot make every re-registration
    /// fail; an outage fails the whole pass, which is tried again later.
    async fn reregister(&self) -> Result<(), StoreError> {
        metrics::counter!(m::REREGISTRATIONS).increment(1);
        let peers = self.hub.peers();
        // A connection whose claim is still in progress writes the store
        // itself (or is refused and leaves the hub): re-registering it here
        // could record it, or close it as replaced, behind its claim's back.
        for (peer, h) in peers.iter().filter(|(_, h)| h.is_registered()) {
            let loc = PeerLocation {
                node: self.id.clone(),
                epoch: h.epoch,
            };
            let r = self.store.reregister_peer(peer, loc).await;
            if let Some(Some(other)) = skip_refused("reregister-peer", peer, r)? {
                info!(peer = %peer, node = %other.node, "a newer connection took this peer id during the outage");
                h.close(CloseReason::REPLACED);
            }
        }
        let memberships = self.hub.memberships();
        for (room, peer, epoch, meta) in &memberships {
            if let Err(e) = self.bus.subscribe_room(room).await {
                warn!(room = %room, error = %e, "resubscribe failed");
            }
            let member = Member {
                peer_id: peer.clone(),
                meta: meta.clone(),
            };
            let r = self.store.restore_member(room, &member, *epoch).await;
            if skip_refused("restore-member", room, r)? == Some(true) {
                let event = NodeEvent::PeerJoined {
                    room: room.clone(),
                    member,
                };
                let _ = self.publish_room(room, event).await;
            }
        }
        // Liveness is asked of the hub now, not of the snapshots above: a peer
        // that connected meanwhile is in the store, so it must not look stale.
        // The hub is always updated before the store, so this cannot miss one.
        let own = self.store.own_entries(&self.id).await?;
        for (peer, epoch) in &own.peers {
            if self.hub.get(peer).is_none_or(|h| h.epoch != *epoch) {
                let r = self.store.unregister_peer(peer, *epoch).await;
                skip_refused("unregister", peer, r)?;
            }
        }
        for (room, peer, epoch) in &own.memberships {
            if self.hub.is_member(room, peer, *epoch) {
                continue;
            }
            let r = self.store.leave_room(room, peer, *epoch).await;
            if skip_refused("leave", room, r)? == Some(true) {
                // Announced here, so not again from `pending_left`; a failed
                // publish is owed again.
                self.pending_left
                    .lock()
                    .retain(|p| !(p.room == *room && p.peer == *peer));
                let _ = self
                    .announce_left(room, peer, LeaveReason::Disconnected)
                    .await;
            }
        }
        self.rdv_reconcile().await?;
        info!(
            peers = self.hub.peer_count(),
            rooms = self.hub.room_count(),
            "local peers and rooms registered again"
        );
        Ok(())
    }

    /// Tells every node (this one included) that a dead node's members left.
    async fn announce_reaped(&self, dead: &NodeId, reaped: Reaped) {
        metrics::counter!(m::NODES_REAPED).increment(1);
        self.relay.forget_node(dead);
        info!(node = %dead, peers = reaped.peers, memberships = reaped.left.len(), pairings = reaped.lost.len(), "cleaned up after a dead node");
        for lost in reaped.lost {
            self.notify_lost(lost, PairLostReason::Timeout).await;
        }
        for (room, peer_id) in reaped.left {
            let note = Arc::new(ServerMsg::PeerLeft {
                room: room.clone(),
                peer_id: peer_id.clone(),
                reason: LeaveReason::Timeout,
            });
            self.hub.room_fanout(room.as_str(), None, &note, None);
            // The store no longer has these: a failed publish is kept and
            // published again by the maintenance loop.
            let _ = self
                .announce_left(&room, &peer_id, LeaveReason::Timeout)
                .await;
        }
    }
}

/// The error for a signal its target's node could not decode.
fn undeliverable(target: Option<&PeerId>) -> ClientError {
    let to = target.map_or_else(String::new, |t| format!(" holding peer `{t}`"));
    ClientError::new(
        ErrorCode::InvalidMessage,
        format!("the node{to} could not read this signal; it was not delivered"),
    )
}

fn unavailable_now() -> ClientError {
    ClientError::new(
        ErrorCode::ClusterUnavailable,
        "the cluster backend is unavailable; try again",
    )
}

/// Sorts the result of one re-registration step: an outage is returned (the
/// whole pass is retried later); a refusal is counted, logged and skipped
/// (`Ok(None)`), since retrying would fail the same way.
fn skip_refused<T>(
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

/// Re-registrations that fail in a row wait 1, 2, 4, ... heartbeats before
/// the next attempt, at most this many.
const REREGISTER_MAX_BACKOFF: u32 = 64;

/// Keeps this node's heartbeat fresh, cleans up after dead nodes, and
/// registers local state again after an outage.
///
/// Every failed cleanup is counted in `switchboard_cleanup_failures_total`
/// (by `op`) and logged at warn, at most a line per 10 s: a failure that
/// repeats every heartbeat is visible without flooding the log.
async fn maintenance(node: std::sync::Weak<Node>) {
    let (period, ttl) = match node.upgrade() {
        Some(n) => (
            Duration::from_millis(n.cfg.cluster.heartbeat_ms),
            Duration::from_millis(n.cfg.cluster.node_ttl_ms),
        ),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Re-registrations failed in a row, and heartbeats to wait before the next.
    let mut failed_passes: u32 = 0;
    let mut wait: u32 = 0;
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.relay_sweep();
        match node.store.heartbeat(&node.id, ttl).await {
            Ok(true) => {}
            Ok(false) => node.dirty.store(true, Ordering::Release),
            Err(e) => {
                debug!(error = %e, "heartbeat failed");
                node.dirty.store(true, Ordering::Release);
                continue;
            }
        }
        if node.bus.is_ready() {
            if wait > 0 {
                wait -= 1;
            } else if node.dirty.swap(false, Ordering::AcqRel) {
                match node.reregister().await {
                    Ok(()) => failed_passes = 0,
                    Err(e) => {
                        // An outage is retried at the next heartbeat; a
                        // refusal (which every step but the listing skips)
                        // after 1, 2, 4, ... heartbeats.
                        if !e.is_transient() {
                            failed_passes = failed_passes.saturating_add(1);
                            wait = (1u32 << (failed_passes - 1).min(6)).min(REREGISTER_MAX_BACKOFF)
                                - 1;
                        }
                        cleanup_failed("reregister", &"local state", &e);
                        node.dirty.store(true, Ordering::Release);
                    }
                }
            }
            if !node.dirty.load(Ordering::Acquire) {
                node.flush_pending_left().await;
            }
        }
        match node.store.dead_nodes().await {
            Ok(dead) => {
                for d in dead.into_iter().filter(|d| *d != node.id) {
                    match node.store.reap_node(&d, &node.id).await {
                        Ok(Some(reaped)) => node.announce_reaped(&d, reaped).await,
                        Ok(None) => {}
                        // Retried: at the next heartbeat after an outage (the
                        // claim is given up), a minute later after a refusal.
                        Err(e) => cleanup_failed("reap", &d, &e),
                    }
                }
            }
            Err(e) => cleanup_failed("list-nodes", &"dead nodes", &e),
        }
    }
}

/// Every `cluster.heartbeat_ms`: [`Node::refresh_live_nodes`]. Its own task
/// rather than a step of `maintenance`, so a slow reaping never delays it.
async fn keep_views(node: std::sync::Weak<Node>) {
    let period = match node.upgrade() {
        Some(n) => Duration::from_millis(n.cfg.cluster.heartbeat_ms),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.refresh_live_nodes().await;
    }
}

fn ack(id: Option<Value>) -> Option<ServerMsg> {
    id.map(|id| ServerMsg::Ack { id })
}

/// Sends an `error` to one connection and counts it.
pub fn send_error(handle: &ConnHandle, id: Option<Value>, e: ClientError) {
    metrics::counter!(m::ERRORS, "code" => e.code.as_str()).increment(1);
    handle.send(ServerMsg::error(id, e));
}

fn node_id(cfg: &Config) -> NodeId {
    if cfg.server.node_id.is_empty() {
        NodeId::from_trusted(format!(
            "node-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
    } else {
        NodeId::from_trusted(cfg.server.node_id.as_str())
    }
}

async fn inbox_loop(node: std::sync::Weak<Node>, mut inbox: mpsc::UnboundedReceiver<Envelope>) {
    while let Some(env) = inbox.recv().await {
        let Some(node) = node.upgrade() else { return };
        node.handle_remote(env);
    }
}
