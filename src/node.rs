//! The node: owns the hub, the bus and the store, and routes every command.
//!
//! A connection's reader hands each validated command to [`Node::dispatch`]
//! with the sender's identity stamped from its session. Direct signals go to a
//! local peer's queue, or through the peer directory to the one node holding
//! the target; room events go to local members and, through the bus, to the
//! nodes subscribed to the room. Events from other nodes arrive in
//! [`Node::handle_remote`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authenticator};
use crate::bus::local::{LocalBus, LocalNet};
use crate::bus::redis::RedisBus;
use crate::bus::{Bus, Envelope, NodeEvent, RemoteSignal, ENVELOPE_VERSION};
use crate::cluster::Redis;
use crate::config::Config;
use crate::error::{ClientError, ErrorCode};
use crate::hub::{CloseReason, ConnHandle, Hub};
use crate::metrics as m;
use crate::payload::Opaque;
use crate::protocol::{Command, LeaveReason, Member, NameLimits, PairLostReason, ServerMsg};
use crate::relay::{peer_not_found, Relay, Sent};
use crate::rendezvous::{RdvConn, Rendezvous};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Dialect, PeerLocation, Reaped, Store, StoreError};
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
            draining: AtomicBool::new(false),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(cfg.server.max_connections)),
            next_epoch: AtomicU64::new(rand::random::<u64>() >> 1),
            seq: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
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

    /// Checks a token for a connection that has no `hello` (the legacy worker
    /// door): with auth configured, it must be valid and name `peer`.
    pub fn verify_token(&self, token: Option<&str>, peer: &PeerId) -> Result<(), AuthError> {
        match &self.auth {
            None => Ok(()),
            Some(auth) => auth.verify(token, Some(peer.as_str())).map(|_| ()),
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

    /// Handles `hello`: authenticates, registers the peer (replacing an older
    /// connection of the same id, on any node) and sends `welcome`.
    pub async fn hello(
        &self,
        handle: &ConnHandle,
        observed: SocketAddr,
        id: Option<Value>,
        peer_id: Option<PeerId>,
        meta: Value,
        token: Option<String>,
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
        let mut peer_id = peer_id;
        if let Some(auth) = &self.auth {
            let refuse = |e: AuthError| HelloRefused {
                error: ClientError::new(ErrorCode::Unauthorized, e.to_string()),
                close: Some(CloseReason::UNAUTHORIZED),
            };
            let claims = auth
                .verify(token.as_deref(), peer_id.as_ref().map(|p| p.as_str()))
                .map_err(refuse)?;
            if peer_id.is_none() {
                peer_id = Some(
                    PeerId::parse(&claims.sub, self.cfg.limits.max_name_bytes)
                        .map_err(|_| refuse(AuthError::Invalid("`sub` is not a valid peer id")))?,
                );
            }
        }
        let peer = peer_id.unwrap_or_else(new_peer_id);
        let (rdv, stun_username) =
            self.rdv_register(&peer, handle.epoch, Dialect::Native, observed);
        // `welcome` goes out only once the peer is reachable cluster-wide (so a
        // signal sent to it right after cannot miss), and before anything that
        // reached it meanwhile.
        let welcome = ServerMsg::Welcome {
            id,
            peer_id: peer.clone(),
            node: self.id.to_string(),
            observed_addr: observed.to_string(),
            heartbeat_ms: self.cfg.limits.heartbeat_interval_ms,
            stun_username,
        };
        handle.close_gate();
        let session = self.register(peer, handle, meta, rdv).await;
        handle.open_gate(Some(welcome), None);
        Ok(session)
    }

    /// Connects a worker of the older rendezvous service (no `hello`: the
    /// worker id comes from the URL): registers it like a peer and creates
    /// its worker record.
    pub async fn register_legacy(
        &self,
        handle: &ConnHandle,
        observed: SocketAddr,
        worker: PeerId,
    ) -> Result<Session, CloseReason> {
        if self.is_draining() {
            return Err(CloseReason::DRAINING);
        }
        let (rdv, _) = self.rdv_register(&worker, handle.epoch, Dialect::Legacy, observed);
        let session = self.register(worker, handle, Value::Null, rdv).await;
        if let Err(e) = self
            .ensure_worker(&session.rdv, &crate::store::EndpointUpdate::default())
            .await
        {
            warn!(worker = %session.peer, error = %e.message, "worker record not written; will reconcile");
            self.mark_dirty();
        }
        Ok(session)
    }

    /// Makes `peer` reachable on this node and in the directory (newest
    /// connection wins, here and on other nodes).
    async fn register(
        &self,
        peer: PeerId,
        handle: &ConnHandle,
        meta: Value,
        rdv: Arc<RdvConn>,
    ) -> Session {
        if let Some(old) = self.hub.register(peer.clone(), handle.clone()) {
            debug!(peer = %peer, "newer connection replaces a local one");
            old.close(CloseReason::REPLACED);
        }
        let session = Session {
            peer: peer.clone(),
            epoch: handle.epoch,
            handle: handle.clone(),
            meta,
            rooms: HashSet::new(),
            rdv,
        };
        if !self.bus.is_connected() {
            // Served locally now, registered cluster-wide once the bus is back.
            self.dirty.store(true, Ordering::Release);
            return session;
        }
        let loc = PeerLocation {
            node: self.id.clone(),
            epoch: handle.epoch,
        };
        match self.store.register_peer(&peer, loc).await {
            Ok(Some(prev)) if prev.node != self.id => {
                let kick = NodeEvent::Kick {
                    peer_id: peer.clone(),
                    epoch: prev.epoch,
                };
                let _ = self.publish_node(&prev.node, kick).await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(peer = %peer, error = %e, "peer directory unavailable; peer served locally only");
                self.dirty.store(true, Ordering::Release);
            }
        }
        session
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
            Err(e) => {
                // The peer has left as far as this node is concerned; the shared
                // view is reconciled when the store is back (re-registration).
                warn!(room = %room, error = %e, "store unavailable during leave; will reconcile");
                self.dirty.store(true, Ordering::Release);
                return Ok(());
            }
        };
        if removed {
            self.publish_room(
                room,
                NodeEvent::PeerLeft {
                    room: room.clone(),
                    peer_id: peer.clone(),
                    reason,
                },
            )
            .await?;
        }
        Ok(())
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
            if let Err(e) = self.leave_room(&s.peer, s.epoch, room, why.leave).await {
                debug!(room = %room, error = %e.message, "leave during disconnect failed");
            }
        }
        self.rdv_disconnect(s, why).await;
        self.hub.unregister(&s.peer, s.epoch);
        if let Err(e) = self.store.unregister_peer(&s.peer, s.epoch).await {
            warn!(peer = %s.peer, error = %e, "could not remove peer from the directory");
        }
    }

    /// Handles one event from another node.
    pub fn handle_remote(&self, env: Envelope) {
        if env.v != ENVELOPE_VERSION || env.origin == self.id {
            return;
        }
        self.handle_event(&env.origin, env.event);
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
    async fn reregister(&self) -> Result<(), StoreError> {
        metrics::counter!(m::REREGISTRATIONS).increment(1);
        let peers = self.hub.peers();
        for (peer, h) in &peers {
            let loc = PeerLocation {
                node: self.id.clone(),
                epoch: h.epoch,
            };
            if let Some(other) = self.store.reregister_peer(peer, loc).await? {
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
            if self.store.restore_member(room, &member, *epoch).await? {
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
                self.store.unregister_peer(peer, *epoch).await?;
            }
        }
        for (room, peer, epoch) in &own.memberships {
            if !self.hub.is_member(room, peer, *epoch)
                && self.store.leave_room(room, peer, *epoch).await?
            {
                let event = NodeEvent::PeerLeft {
                    room: room.clone(),
                    peer_id: peer.clone(),
                    reason: LeaveReason::Disconnected,
                };
                let _ = self.publish_room(room, event).await;
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
            let _ = self
                .publish_room(
                    &room,
                    NodeEvent::PeerLeft {
                        room: room.clone(),
                        peer_id,
                        reason: LeaveReason::Timeout,
                    },
                )
                .await;
        }
    }
}

fn unavailable_now() -> ClientError {
    ClientError::new(
        ErrorCode::ClusterUnavailable,
        "the cluster backend is unavailable; try again",
    )
}

/// Keeps this node's heartbeat fresh, cleans up after dead nodes, and
/// registers local state again after an outage.
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
        if node.bus.is_ready() && node.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = node.reregister().await {
                warn!(error = %e, "re-registration failed; will retry");
                node.dirty.store(true, Ordering::Release);
            }
        }
        match node.store.dead_nodes().await {
            Ok(dead) => {
                for d in dead.into_iter().filter(|d| *d != node.id) {
                    match node.store.reap_node(&d, &node.id).await {
                        Ok(Some(reaped)) => node.announce_reaped(&d, reaped).await,
                        Ok(None) => {}
                        Err(e) => debug!(node = %d, error = %e, "reaping failed"),
                    }
                }
            }
            Err(e) => debug!(error = %e, "listing nodes failed"),
        }
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
