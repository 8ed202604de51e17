//! The node: the router between the doors and the parts of the core.
//!
//! A node owns the [`Core`] (id, hub, store, bus, flags) and the three
//! parts that work on it: [`Relay`] (direct signals across nodes),
//! [`Rooms`] (rooms and presence) and [`Rendezvous`] (workers, pairing,
//! STUN). None of those knows the others; the node routes between them:
//!
//! - [`Node::register`] is the one way a connection gets a peer id,
//!   whatever its door: authentication (a token, or the anonymous policy),
//!   the peer-id claim (newest wins only with proof), and the connection's
//!   records;
//! - [`Node::dispatch`] runs one command of a registered connection;
//! - events from other nodes arrive in [`Node::handle_remote`];
//! - the maintenance loop keeps the heartbeat, re-registers after an
//!   outage, and reaps dead nodes; the room sweeper closes rooms whose
//!   lifetime ran out, on the one node holding its lease;
//!   [`Node::drain`] is the shutdown.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authenticator, Claims};
use crate::bus::local::{LocalBus, LocalNet};
use crate::bus::redis::RedisBus;
use crate::bus::{Envelope, NodeEvent, RemoteSignal, Undecodable, WarnEvery, ENVELOPE_VERSION};
use crate::cluster::Redis;
use crate::config::{AnonymousMode, Config};
use crate::core::command::Command;
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::core::{cleanup_failed, skip_refused, Core};
use crate::dashboard::Dashboard;
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::relay::Relay;
use crate::rendezvous::Rendezvous;
use crate::rooms::Rooms;
use crate::signin::SignIn;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{
    now_ms, Claim, Claimed, Door, PeerLocation, Reaped, SecretHash, Store, StoreError,
};
use crate::tasks::Tasks;
use crate::turn::IceServer;
use crate::types::{new_peer_id, NodeId, PairLostReason, PeerId};

pub mod resume;

/// A connection asking for a peer id ([`Node::register`]), from any door.
#[derive(Debug)]
pub struct Registration {
    /// The door it came through.
    pub door: Door,
    /// The client's address (the socket's, or a trusted proxy's header's).
    pub observed: SocketAddr,
    /// The id it asks for; `None`: the token's `sub`, or a fresh UUID.
    pub peer_id: Option<PeerId>,
    /// Metadata other peers see (the default for rooms joined without their own).
    pub meta: Value,
    /// What proves who it is.
    pub credentials: Credentials,
}

/// What a connection offers to prove its identity.
#[derive(Debug, Default)]
pub struct Credentials {
    /// A JWT (verified against `auth.jwt`, when a key is configured).
    pub token: Option<String>,
    /// The door already verified a token for the requested id (the legacy
    /// worker door checks it before the upgrade, to answer 401).
    pub token_verified: bool,
    /// The `reconnect_secret` of an earlier connection of this peer id: it
    /// may take the id over from that connection.
    pub reconnect_secret: Option<String>,
}

/// A registered connection: its session, and what its `welcome` says.
#[derive(Debug)]
pub struct Registered {
    /// The session, owned by the connection's task from now on.
    pub session: Session,
    /// The parts of a `welcome`.
    pub welcome: Welcome,
}

/// What a connection is told once registered (the native `welcome`; other
/// dialects use what they have a place for).
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    /// The peer id of the connection.
    pub peer_id: PeerId,
    /// This node's id.
    pub node: NodeId,
    /// The client's address as the node sees it.
    pub observed_addr: SocketAddr,
    /// How often the node pings.
    pub heartbeat_ms: u64,
    /// The STUN USERNAME that ties a Binding request to this connection.
    pub stun_username: Option<String>,
    /// The secret a reconnect gives to take the peer id over.
    pub reconnect_secret: String,
    /// STUN and TURN servers with this peer's TURN credentials (`[turn]`).
    pub ice_servers: Vec<IceServer>,
    /// What a `hello` gives back to resume this session (native sessions
    /// with `[resume]` on; else empty).
    pub resume_token: String,
    /// This `welcome` answers a resume.
    pub resumed: bool,
}

impl Welcome {
    /// The native `welcome` event, answering the `hello` with `id`.
    pub fn into_event(self, id: Option<Value>) -> Event {
        Event::Welcome {
            id,
            peer_id: self.peer_id,
            node: self.node.to_string(),
            observed_addr: self.observed_addr.to_string(),
            heartbeat_ms: self.heartbeat_ms,
            stun_username: self.stun_username,
            reconnect_secret: self.reconnect_secret,
            ice_servers: self.ice_servers,
            resume_token: self.resume_token,
            resumed: self.resumed,
        }
    }
}

/// A refused registration: the error for the client, and whether to close
/// the socket.
#[derive(Debug)]
pub struct Refused {
    /// Sent to the client (as an `error`, or in its dialect's shape).
    pub error: ClientError,
    /// Close the connection with this reason after the error; `None`: the
    /// connection may try again (another id).
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

/// One Switchboard node. See the module docs.
pub struct Node {
    /// The shared core.
    pub core: Arc<Core>,
    /// Direct signals across nodes.
    pub relay: Arc<Relay>,
    /// Rooms and presence.
    pub rooms: Rooms,
    /// Workers, pairing, STUN observations.
    pub rdv: Arc<Rendezvous>,
    /// The dashboard door's channels and room registry.
    pub dashboard: Dashboard,
    /// The operator console's cluster view, live log and chat routing.
    pub console: Arc<crate::console::Console>,
    /// Verifies tokens; `None` without a configured key.
    auth: Option<Authenticator>,
    /// Issues sign-in tokens (`auth.signin`), verified by `auth`.
    pub signin: SignIn,
    /// Whether peers without a token are admitted, decided once at start.
    anonymous: AnonymousMode,
    /// Parsed `http.trusted_proxies` (read by the HTTP doors).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Parked sessions and resumes in progress ([`resume`]).
    resumes: resume::Resumes,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.core.id)
            .finish_non_exhaustive()
    }
}

/// Events from other nodes that did not decode: at most one line per 10 s.
static UNDECODABLE_WARN: WarnEvery = WarnEvery::new(10_000);

impl Node {
    /// A node on the embedded default: in-process bus, in-memory store.
    pub fn embedded(cfg: Config) -> Result<Arc<Self>, Vec<String>> {
        let id = node_id(&cfg);
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Arc::new(LocalBus::new(Arc::new(LocalNet::default()), id.clone(), tx));
        Self::new(
            cfg,
            id,
            Arc::new(MemoryStore::default()),
            bus,
            rx,
            Tasks::default(),
        )
    }

    /// A node on the given backends; `inbox` receives the bus's events for
    /// it. Its background tasks run on the core's tracker.
    pub fn new(
        cfg: Config,
        id: NodeId,
        store: Arc<dyn Store>,
        bus: Arc<dyn crate::bus::Bus>,
        inbox: mpsc::UnboundedReceiver<Envelope>,
        tasks: Tasks,
    ) -> Result<Arc<Self>, Vec<String>> {
        let auth = Authenticator::from_config(&cfg.auth.jwt)?;
        let signin = SignIn::from_config(&cfg.auth)?;
        let anonymous = cfg.anonymous_mode();
        let trusted_proxies = cfg.http.trusted_proxies.clone();
        let core = Arc::new(Core::new(cfg, id, store, bus, tasks));
        let node = Arc::new(Self {
            relay: Relay::new(core.clone()),
            rooms: Rooms::new(core.clone()),
            rdv: Rendezvous::new(core.clone()),
            dashboard: Dashboard::new(core.clone()),
            console: crate::console::Console::new(core.clone()),
            core: core.clone(),
            auth,
            signin,
            anonymous,
            trusted_proxies,
            resumes: resume::Resumes::default(),
        });
        node.resumes.set_node(Arc::downgrade(&node));
        core.spawn(inbox_loop(Arc::downgrade(&node), inbox));
        core.spawn(maintenance(Arc::downgrade(&node)));
        core.spawn(keep_views(Arc::downgrade(&node)));
        core.spawn(sweep_rooms(Arc::downgrade(&node)));
        core.spawn(resume::expire_parked(Arc::downgrade(&node)));
        node.dashboard.start();
        Ok(node)
    }

    /// A node on the backends the configuration names: Redis when
    /// `cluster.redis_url` is set, else the embedded default.
    pub async fn build(cfg: Config) -> Result<Arc<Self>, Vec<String>> {
        if cfg.cluster.redis_url.is_empty() {
            return Self::embedded(cfg);
        }
        let id = node_id(&cfg);
        let tasks = Tasks::default();
        let redis = Redis::connect(&cfg.cluster, &tasks)
            .await
            .map_err(|e| vec![e])?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = RedisBus::start(redis.clone(), id.clone(), tx, &tasks).await;
        let store = Arc::new(RedisStore::new(redis, id.clone()));
        Self::new(cfg, id, store, bus, rx, tasks)
    }

    /// Refreshes the view of live nodes from the store and keeps this
    /// node's reconnect-secret hashes alive. Runs every
    /// `cluster.heartbeat_ms` in its own task (`keep_views`); a failed call
    /// keeps the previous view.
    pub async fn refresh_live_nodes(&self) {
        match self.core.store.live_nodes().await {
            Ok(live) => self.core.set_live_nodes(live),
            Err(e) => debug!(error = %e, "listing live nodes failed"),
        }
        if let Err(e) = self.core.store.keep_secrets(&self.core.id).await {
            debug!(error = %e, "refreshing the secrets' lifetime failed");
        }
    }

    /// Registers a connection, whatever its door: refuses while draining,
    /// authenticates (a token, or the anonymous policy), claims the peer id
    /// (a live holder keeps it unless the claim proves itself: see
    /// `claim_id`) and records the connection. The connection's gate
    /// must be closed by the caller before (so nothing reaches the client
    /// before its answer) and opened after, with the answer first; on
    /// refusal, what reached it meanwhile has been passed on already.
    pub async fn register(
        &self,
        handle: &ConnHandle,
        reg: Registration,
    ) -> Result<Registered, Refused> {
        if self.core.is_draining() {
            return Err(Refused {
                error: ClientError::new(
                    ErrorCode::Draining,
                    "this node is shutting down; reconnect",
                ),
                close: Some(CloseReason::DRAINING),
            });
        }
        let refuse = |message: String| Refused {
            error: ClientError::new(ErrorCode::Unauthorized, message),
            close: Some(CloseReason::UNAUTHORIZED),
        };
        let Registration {
            door,
            observed,
            mut peer_id,
            meta,
            credentials,
        } = reg;
        // Rooms the token grants (its `rooms` claim).
        let mut grants: Vec<String> = Vec::new();
        let token_for_id = if credentials.token_verified {
            true
        } else if let Some(auth) = &self.auth {
            let claims = auth
                .verify(
                    credentials.token.as_deref(),
                    peer_id.as_ref().map(|p| p.as_str()),
                )
                .map_err(|e| refuse(e.to_string()))?;
            if peer_id.is_none() {
                peer_id = Some(
                    PeerId::parse(&claims.sub, self.core.cfg.limits.max_name_bytes).map_err(
                        |_| refuse(AuthError::Invalid("`sub` is not a valid peer id").to_string()),
                    )?,
                );
            }
            grants = claims.rooms;
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
            presented: credentials.reconnect_secret.as_deref().map(hash_secret),
            secret: secret_hash,
        };
        let Ok((mut session, stun_username)) = self
            .claim_id(peer.clone(), handle, meta, door, observed, claim)
            .await
        else {
            // The socket stays open: the client may try another id.
            return Err(Refused {
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
        session.room_grants = grants.into_boxed_slice();
        self.core.activity.note(crate::core::Note::Connected {
            peer: session.peer.clone(),
            door: door.as_str(),
            observed: observed.to_string(),
        });
        let welcome = self.welcome(&session, observed, stun_username, secret, String::new());
        Ok(Registered { session, welcome })
    }

    /// The `welcome` of a registered (or resumed) session.
    fn welcome(
        &self,
        session: &Session,
        observed: SocketAddr,
        stun_username: Option<String>,
        reconnect_secret: String,
        resume_token: String,
    ) -> Welcome {
        Welcome {
            peer_id: session.peer.clone(),
            node: self.core.id.clone(),
            observed_addr: observed,
            heartbeat_ms: self.core.cfg.limits.heartbeat_interval.as_millis() as u64,
            stun_username,
            reconnect_secret,
            ice_servers: crate::turn::ice_servers(
                &self.core.cfg.turn,
                &session.peer,
                now_ms() / 1000,
            ),
            resume_token,
            resumed: false,
        }
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

    /// True when a key is configured to verify tokens with (`auth.jwt`).
    pub fn verifies_tokens(&self) -> bool {
        self.auth.is_some()
    }

    /// Verifies `token` with the configured keys (operator-issued tokens and
    /// sign-in tokens alike), for `peer` when given (its `sub` must be it).
    /// Without a configured key nothing verifies: a door that needs a
    /// verified identity (the room signaling door's `id_token`) refuses.
    pub fn verify_token(
        &self,
        token: Option<&str>,
        peer: Option<&str>,
    ) -> Result<Claims, AuthError> {
        match &self.auth {
            Some(auth) => auth.verify(token, peer),
            None => Err(AuthError::Invalid("no key is configured to verify tokens")),
        }
    }

    /// Admits a connection of a door whose clients have no identity of
    /// their own (the dashboard's): `anonymous` says whether the door's
    /// listener admits peers without a token (see
    /// [`crate::config::Config::anonymous_mode_at`]); otherwise a token
    /// verified against `auth.jwt` (any `sub`) is needed.
    pub fn admit_door(&self, token: Option<&str>, anonymous: bool) -> Result<(), String> {
        match (&self.auth, token) {
            (Some(auth), Some(t)) => auth
                .verify(Some(t), None)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ if anonymous => Ok(()),
            (Some(_), None) => Err("a token is required (auth.jwt is configured)".into()),
            (None, _) => Err(ANONYMOUS_REFUSED.into()),
        }
    }

    /// True when a live connection holds `peer`, here or on a live node (the
    /// legacy door's check before its upgrade; [`Self::register`] decides
    /// again, atomically). A store that cannot be asked counts as "no".
    pub async fn peer_id_held(&self, peer: &PeerId) -> bool {
        if self.core.hub.get(peer).is_some_and(|h| !h.is_closing()) {
            return true;
        }
        if !self.core.bus.is_connected() {
            return false;
        }
        match self.core.store.locate_peer(peer).await {
            Ok(Some(loc)) => loc.node != self.core.id && self.core.node_is_alive(&loc.node),
            _ => false,
        }
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
    async fn claim_id(
        &self,
        peer: PeerId,
        handle: &ConnHandle,
        meta: Value,
        door: Door,
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
        if !self.core.bus.is_connected() {
            // Served locally now, registered cluster-wide once the bus is back.
            self.core.mark_dirty();
        } else {
            let loc = PeerLocation {
                node: self.core.id.clone(),
                epoch: handle.epoch,
            };
            match self.core.store.claim_peer(&peer, loc, &claim).await {
                Ok(Claimed::Registered(Some(prev))) if prev.node != self.core.id => {
                    let kick = NodeEvent::Kick {
                        peer_id: peer.clone(),
                        epoch: prev.epoch,
                    };
                    let _ = self.core.publish_node(&prev.node, kick).await;
                }
                Ok(Claimed::Registered(_)) => {}
                Ok(Claimed::Taken(owner)) => {
                    debug!(peer = %peer, node = %owner.node, "peer id held on another node; hello refused");
                    let restored = match &replaced {
                        Some(old) => self
                            .core
                            .hub
                            .register_if(peer.clone(), old.clone(), Some(handle.epoch))
                            .is_ok(),
                        None => self.core.hub.unregister(&peer, handle.epoch),
                    };
                    if !restored {
                        debug!(peer = %peer, "hub entry changed while the store refused the claim");
                    }
                    self.pass_on_held(handle, &peer, Some(&owner));
                    return Err(PeerIdTaken);
                }
                Err(e) => {
                    warn!(peer = %peer, error = %e, "peer directory unavailable; peer served locally only");
                    self.core.mark_dirty();
                }
            }
        }
        if let Some(old) = replaced {
            debug!(peer = %peer, "a proven reconnect replaces a local connection");
            old.close(CloseReason::REPLACED);
            self.end_replaced_parked(&peer, old.epoch);
        }
        handle.mark_registered();
        let (rdv, stun_username) = self
            .rdv
            .register(&peer, handle.epoch, door, observed, secret);
        Ok((
            Session {
                peer,
                epoch: handle.epoch,
                handle: handle.clone(),
                meta,
                rooms: HashSet::new(),
                rdv,
                room_grants: Box::default(),
                resumable: false,
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
            let cur = self.core.hub.get(peer);
            if let Some(c) = &cur {
                // A parked session's socket is closed, but the session is not
                // over: it is taken only with proof, like a live one.
                let proven = claim.token_for_id
                    || (c.is_closing() && !c.is_parked())
                    || claim
                        .presented
                        .is_some_and(|p| self.rdv.secret_is(peer, c.epoch, &p));
                if !proven {
                    return Err(PeerIdTaken);
                }
            }
            let expected = cur.as_ref().map(|c| c.epoch);
            if let Ok(old) = self
                .core
                .hub
                .register_if(peer.clone(), handle.clone(), expected)
            {
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
        let local = self.core.hub.get(peer);
        for out in held {
            if let Some(h) = &local {
                h.push(out.msg, out.received);
                continue;
            }
            let sent = match (&*out.msg, owner) {
                (Event::Signal { from, kind, data }, Some(loc)) if loc.node != self.core.id => {
                    let sig = RemoteSignal {
                        from: from.clone(),
                        from_epoch: self.core.hub.get(from).map_or(0, |h| h.epoch),
                        to: peer.clone(),
                        to_epoch: loc.epoch,
                        kind: kind.clone(),
                        data: data.clone(),
                        // Already acked to its sender when it was queued here.
                        id: None,
                        hops: 0,
                    };
                    self.relay.send_to(sig, loc.node.clone(), loc.epoch).is_ok()
                }
                _ => false,
            };
            if !sent {
                metrics::counter!(m::HELD_FOR_REFUSED_DROPPED).increment(1);
            }
        }
    }

    /// Runs one command of a registered connection.
    pub async fn dispatch(
        &self,
        s: &mut Session,
        id: Option<Value>,
        cmd: Command,
        received: Instant,
    ) {
        let ack = |id: &Option<Value>| id.clone().map(|id| Event::Ack { id });
        s.sync_rooms(&self.core.hub);
        let result = match cmd {
            Command::Join { room, meta, token } => {
                self.rooms.join(s, id.clone(), room, meta, token).await
            }
            Command::Leave { room } => self.rooms.leave(s, &room).await.map(|()| ack(&id)),
            Command::Signal { to, kind, data } => {
                self.core
                    .activity
                    .signals
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.relay
                    .signal(&s.peer, s.epoch, id.clone(), to, kind, data, received)
                    .await
            }
            Command::Broadcast { room, data } => self
                .rooms
                .broadcast(s, room, data, received)
                .await
                .map(|()| ack(&id)),
            Command::Ping => Ok(Some(Event::Pong { id: id.clone() })),
            // `pair` sends its own `ack`, before any `paired` it causes.
            Command::Pair { pool, meta } => self
                .rdv
                .pair(s, id.clone(), pool, meta, received)
                .await
                .map(|()| None),
            Command::Unpair => self.rdv.unpair(s).await.map(|()| ack(&id)),
            Command::Endpoint { public_ip, udp } => self
                .rdv
                .endpoint(s, public_ip, udp)
                .await
                .map(|()| ack(&id)),
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
            Err(e) => {
                s.handle.send_error(id, e);
            }
        }
    }

    /// Cleans up after a connection: leaves its rooms, ends its worker
    /// record, removes it from the directory.
    pub async fn disconnect(&self, s: &Session, why: CloseReason) {
        for room in &s.rooms {
            // A failure is counted, logged and retried by `leave_room` itself
            // (re-registration, or the pending `peer-left` announcements).
            let _ = self
                .rooms
                .leave_room(&s.peer, s.epoch, room, why.leave)
                .await;
        }
        self.rdv.disconnect(s, why).await;
        self.core.activity.note(crate::core::Note::Disconnected {
            peer: s.peer.clone(),
            reason: why.reason,
        });
        self.core.hub.unregister(&s.peer, s.epoch);
        if let Err(e) = self.core.store.unregister_peer(&s.peer, s.epoch).await {
            cleanup_failed("unregister", &s.peer, &e);
            if e.is_transient() {
                // Re-registration removes directory entries the hub no longer holds.
                self.core.mark_dirty();
            }
        }
    }

    /// Handles one event from another node.
    pub fn handle_remote(&self, env: Envelope) {
        if env.v != ENVELOPE_VERSION {
            crate::bus::version_mismatch(env.v, Some(&env.origin));
            return;
        }
        if env.origin == self.core.id {
            return;
        }
        let tag = crate::core::hub::event_tag(env.origin.as_str(), env.seq);
        self.handle_event(&env.origin, env.event, tag);
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
                if let Some(h) = self
                    .core
                    .hub
                    .get(&s.from)
                    .filter(|h| h.epoch == s.from_epoch)
                {
                    h.send_error(s.id, undeliverable(s.to.as_ref()));
                }
            }
            _ => {
                let answer = NodeEvent::Undeliverable {
                    to: s.from,
                    to_epoch: s.from_epoch,
                    id: s.id,
                    target: s.to,
                };
                if self.relay.push(origin, answer).is_err() {
                    debug!(origin = %origin, "outbox full: `undeliverable` not sent");
                }
            }
        }
    }

    /// `tag`: the room event tag of the envelope it came in (0 inside a batch).
    fn handle_event(&self, origin: &NodeId, event: NodeEvent, tag: u64) {
        m::count(m::BUS_RECEIVED, "kind", event.kind_name(), 1);
        match event {
            NodeEvent::Batch { events } => {
                for e in events {
                    // A batch inside a batch is not something a node sends.
                    if !matches!(e, NodeEvent::Batch { .. }) {
                        self.handle_event(origin, e, 0);
                    }
                }
            }
            NodeEvent::Signal(s) => self.relay.receive(origin, s),
            NodeEvent::Bounced(s) => self.relay.bounced(origin, s),
            NodeEvent::Flush { peer_id } => self.relay.flush(origin, peer_id),
            NodeEvent::Flushed { peer_id } => self.relay.flushed(origin, peer_id),
            NodeEvent::Delivered { to, to_epoch, id } => self.relay.delivered(&to, to_epoch, id),
            NodeEvent::Undeliverable {
                to,
                to_epoch,
                id,
                target,
            } => {
                if let Some(h) = self.core.hub.get(&to).filter(|h| h.epoch == to_epoch) {
                    h.send_error(id, undeliverable(target.as_ref()));
                }
            }
            NodeEvent::Undecodable(u) => self.bus_undecodable(origin, *u),
            e @ (NodeEvent::Message { .. }
            | NodeEvent::PeerJoined { .. }
            | NodeEvent::PeerLeft { .. }
            | NodeEvent::RoomClosed { .. }) => self.rooms.deliver_remote(e, tag),
            NodeEvent::Probe { .. } => {}
            NodeEvent::Kick { peer_id, epoch } => {
                if let Some(h) = self.core.hub.get(&peer_id).filter(|h| h.epoch == epoch) {
                    h.close(CloseReason::REPLACED);
                }
                self.end_replaced_parked(&peer_id, epoch);
            }
            NodeEvent::Paired {
                to,
                to_epoch,
                paired,
            } => self.rdv.deliver(&to, to_epoch, Event::Paired(paired)),
            NodeEvent::PairLost {
                to,
                to_epoch,
                pairing_id,
                reason,
            } => self
                .rdv
                .deliver(&to, to_epoch, Event::PairLost { pairing_id, reason }),
            NodeEvent::Observed { token, udp } => self.rdv.forwarded(token, &udp),
            e @ (NodeEvent::DashRelay { .. }
            | NodeEvent::DashRooms { .. }
            | NodeEvent::DashCount {}) => self.dashboard.deliver_remote(e),
            NodeEvent::Console { text } => self.console.remote(origin, &text),
            NodeEvent::Resume(step) => self.resume_step(origin, *step),
        }
    }

    /// Drains the node: readiness fails and new sockets are refused at once,
    /// every client is told to reconnect, and after `grace` the remaining
    /// sockets close with 1012. Returns when every connection task has ended
    /// (or a last bounded wait has passed).
    pub async fn drain(&self, grace: Duration) {
        self.core.start_draining();
        // Background work (room sweeper, coordinator, publish poller) moves
        // to another node at its next tick.
        self.core.release_leases().await;
        let handles = self.core.hub.handles();
        info!(
            connections = handles.len(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let jitter = (self.core.cfg.shutdown.reconnect_jitter.as_millis() as u64).max(1);
        for h in &handles {
            h.send(Event::Reconnect {
                reason: "draining".into(),
                after_ms: rand::random_range(0..jitter),
            });
        }
        let deadline = tokio::time::Instant::now() + grace;
        self.core.tracker.close();
        if tokio::time::timeout(grace, self.core.tracker.wait())
            .await
            .is_err()
        {
            info!(
                remaining = self.core.tracker.len(),
                "grace period over; closing sockets with 1012"
            );
            self.core.close_all.cancel();
            if tokio::time::timeout(Duration::from_secs(5), self.core.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    remaining = self.core.tracker.len(),
                    "connection tasks still running after close"
                );
            }
        }
        // Sessions parked by the drain wait for their clients to resume them
        // on another node, within the grace period.
        self.drain_parked(deadline).await;
        // Signals still routed here bounce to their senders' nodes (which
        // then find where the peers went): a moment for the last of them,
        // and for the outboxes to publish them, before the node goes.
        tokio::time::sleep(
            DRAIN_LINGER.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        self.relay.settle(Duration::from_secs(2)).await;
        if let Err(e) = self.core.store.goodbye(&self.core.id).await {
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
        let peers = self.core.hub.peers();
        // A connection whose claim is still in progress writes the store
        // itself (or is refused and leaves the hub): re-registering it here
        // could record it, or close it as replaced, behind its claim's back.
        for (peer, h) in peers.iter().filter(|(_, h)| h.is_registered()) {
            let loc = PeerLocation {
                node: self.core.id.clone(),
                epoch: h.epoch,
            };
            let r = self.core.store.reregister_peer(peer, loc).await;
            if let Some(Some(other)) = skip_refused("reregister-peer", peer, r)? {
                info!(peer = %peer, node = %other.node, "a newer connection took this peer id during the outage");
                h.close(CloseReason::REPLACED);
            }
        }
        self.rooms.restore_members().await?;
        // Liveness is asked of the hub now, not of the snapshots above: a peer
        // that connected meanwhile is in the store, so it must not look stale.
        // The hub is always updated before the store, so this cannot miss one.
        let own = self.core.store.own_entries(&self.core.id).await?;
        for (peer, epoch) in &own.peers {
            if self.core.hub.get(peer).is_none_or(|h| h.epoch != *epoch) {
                let r = self.core.store.unregister_peer(peer, *epoch).await;
                skip_refused("unregister", peer, r)?;
            }
        }
        self.rooms.remove_stale(&own.memberships).await?;
        self.rdv.reconcile().await?;
        let restored = self.dashboard.restore().await;
        skip_refused("reregister", &"dashboard", restored)?;
        info!(
            peers = self.core.hub.peer_count(),
            rooms = self.core.hub.room_count(),
            "local peers and rooms registered again"
        );
        Ok(())
    }

    /// Tells every node (this one included) that a dead node's members
    /// left, and the partners of its workers that their pairing ended.
    async fn announce_reaped(&self, dead: &NodeId, reaped: Reaped) {
        metrics::counter!(m::NODES_REAPED).increment(1);
        self.relay.forget_node(dead);
        info!(node = %dead, peers = reaped.peers, memberships = reaped.left.len(), pairings = reaped.lost.len(), "cleaned up after a dead node");
        for lost in reaped.lost {
            self.rdv.notify_lost(lost, PairLostReason::Timeout).await;
        }
        self.rooms.announce_reaped(reaped.left).await;
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

/// How long a draining node keeps bouncing signals after its last session
/// left (see [`Node::drain`]).
const DRAIN_LINGER: Duration = Duration::from_millis(500);

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
        Some(n) => (n.core.cfg.cluster.heartbeat, n.core.cfg.cluster.node_ttl),
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
        node.relay.sweep();
        match node.core.store.heartbeat(&node.core.id, ttl).await {
            Ok(true) => {}
            Ok(false) => node.core.mark_dirty(),
            Err(e) => {
                debug!(error = %e, "heartbeat failed");
                node.core.mark_dirty();
                continue;
            }
        }
        if node.core.bus.is_ready() {
            if wait > 0 {
                wait -= 1;
            } else if node.core.take_dirty() {
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
                        node.core.mark_dirty();
                    }
                }
            }
            if !node.core.is_dirty() {
                node.rooms.flush_pending_left().await;
            }
        }
        match node.core.store.dead_nodes().await {
            Ok(dead) => {
                for d in dead.into_iter().filter(|d| *d != node.core.id) {
                    match node.core.store.reap_node(&d, &node.core.id).await {
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
        Some(n) => n.core.cfg.cluster.heartbeat,
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

/// The lease behind which one node at a time sweeps expired rooms.
pub const SWEEPER_LEASE: &str = "room-sweeper";

/// Every `rooms.sweep_interval_ms`: takes or renews the sweeper's lease
/// and, holding it, closes the rooms whose lifetime ran out
/// ([`Rooms::sweep_expired`]). The lease lives three intervals, so a
/// sweeper that dies is replaced within about that; one that only stalls
/// and finds the lease taken stops sweeping, and if two ever sweep at once
/// the store still closes each room once.
async fn sweep_rooms(node: std::sync::Weak<Node>) {
    let period = match node.upgrade() {
        Some(n) => n.core.cfg.rooms.sweep_interval,
        None => return,
    };
    let lease = period.saturating_mul(3);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if !node.core.bus.is_connected() || !node.core.hold_lease(SWEEPER_LEASE, lease).await {
            continue;
        }
        match node.rooms.sweep_expired().await {
            Ok(0) => {}
            Ok(n) => info!(rooms = n, "closed rooms whose lifetime ran out"),
            // Retried at the next tick.
            Err(e) => cleanup_failed("sweep", &"expired rooms", &e),
        }
    }
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
