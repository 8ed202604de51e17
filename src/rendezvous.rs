//! Rendezvous: workers learn their public endpoints and get paired.
//!
//! This is a door onto the same core, not a second system: a worker is a peer
//! (in the hub and the peer directory like any other) that also has a
//! [`WorkerRecord`] in the store. The record is created lazily, when the peer
//! first sends `pair` or `endpoint`, is observed by STUN, or connects through
//! the legacy worker dialect. Pairing is decided atomically by the store
//! (see [`crate::store`]), by whichever node handled the request; that node
//! then tells both sides, pushing to a local socket or publishing one event to
//! the node holding the other side, so both hear `paired` at the same moment.
//!
//! STUN: every connection gets a `stun_username` of the form
//! `<32 hex random>:<node id>`. A Binding request carrying it may reach any
//! node (UDP load balancing); that node reads the owner's node id from the
//! username and forwards the observation there ([`NodeEvent::Observed`]), and
//! the owner, which alone knows the random part, resolves it to the
//! connection. So no store write is needed per connection, and a forged or
//! stale username resolves to nothing.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::bus::NodeEvent;
use crate::config::StunConfig;
use crate::core::event::Event;
use crate::core::hub::CloseReason;
use crate::core::session::{RdvConn, Session};
use crate::core::Core;
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::store::{
    Door, EndpointUpdate, Enqueued, LostPairing, PairError, PeerLocation, SecretHash, Unpaired,
    WorkerConn, WorkerRecord,
};
use crate::stun::Observation;
use crate::types::{PairLostReason, PairPeer, PairedNote, PeerId, PoolName, Role};

/// Pending STUN observations; beyond this, new ones are dropped (and counted)
/// rather than queued without bound under a flood.
const OBSERVATION_QUEUE: usize = 4096;
/// Distinct pool names a node labels its worker gauge with; later ones are
/// counted as `other`, so a client cannot grow the metric without bound.
const MAX_POOL_LABELS: usize = 32;

/// Node-local rendezvous state: connections by peer and by STUN token.
#[derive(Debug)]
pub struct Rendezvous {
    core: Arc<Core>,
    conns: DashMap<PeerId, Arc<RdvConn>>,
    tokens: DashMap<String, Arc<RdvConn>>,
    jobs: mpsc::Sender<Job>,
    pool_labels: Mutex<HashSet<&'static str>>,
}

/// Work for the rendezvous task: observations need store calls, and arrive
/// from places that cannot wait (the STUN loop, the bus inbox).
#[derive(Debug)]
enum Job {
    /// A STUN request with a USERNAME was answered on this node.
    Stun(Observation),
    /// Another node forwarded an observation of one of our connections.
    Observed { token: String, udp: SocketAddr },
}

impl Rendezvous {
    /// The rendezvous of `core`'s node; its observation task runs on the
    /// core's background tasks.
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(OBSERVATION_QUEUE);
        let rdv = Arc::new(Self {
            core: core.clone(),
            conns: DashMap::new(),
            tokens: DashMap::new(),
            jobs: tx,
            pool_labels: Mutex::new(HashSet::new()),
        });
        core.spawn(run_jobs(Arc::downgrade(&rdv), RdvJobs(rx)));
        rdv
    }

    /// A callback for [`crate::stun::serve`]: hands observations to the
    /// rendezvous task without waiting.
    pub fn observer(&self) -> impl Fn(Observation) + Send + Sync + 'static {
        let tx = self.jobs.clone();
        move |obs| {
            if tx.try_send(Job::Stun(obs)).is_err() {
                metrics::counter!(m::STUN_OBSERVATIONS_DROPPED).increment(1);
            }
        }
    }

    fn label_for(&self, pool: Option<&PoolName>) -> &'static str {
        let Some(pool) = pool else { return "none" };
        let mut labels = self.pool_labels.lock();
        if let Some(l) = labels.get(pool.as_str()) {
            return l;
        }
        if labels.len() >= MAX_POOL_LABELS {
            return "other";
        }
        // Leaked once per distinct name, at most MAX_POOL_LABELS times.
        let l: &'static str = Box::leak(pool.as_str().to_string().into_boxed_str());
        labels.insert(l);
        l
    }
}

/// The receiving end of the rendezvous job queue.
#[derive(Debug)]
struct RdvJobs(mpsc::Receiver<Job>);

/// Processes observations one at a time for as long as the node lives.
async fn run_jobs(node: Weak<Rendezvous>, mut jobs: RdvJobs) {
    while let Some(job) = jobs.0.recv().await {
        let Some(node) = node.upgrade() else { return };
        match job {
            Job::Stun(obs) => node.stun_observed(obs).await,
            Job::Observed { token, udp } => node.observed_here(&token, udp).await,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 128 random bits as 32 lowercase hex digits: unguessable, so a STUN
/// request can only be tied to a connection by whoever was told the username
/// (and a reconnect secret proves only that its holder was told it).
pub fn random_token() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 16] = rand::random();
    let mut s = String::with_capacity(32);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// Splits a `stun_username` into its random token and the owner's node id.
fn parse_username(u: &str) -> Option<(&str, &str)> {
    let (token, node) = u.split_once(':')?;
    (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) && !node.is_empty())
        .then_some((token, node))
}

/// What the other side of a pairing is told about `w`.
pub fn pair_peer(w: &WorkerRecord) -> PairPeer {
    PairPeer {
        peer_id: w.peer_id.clone(),
        observed_addr: w.observed_addr.clone(),
        public_ip: w.public_ip.clone(),
        udp: w.udp.clone(),
    }
}

fn pair_err(e: PairError) -> ClientError {
    match e {
        PairError::AlreadyPaired(_) => {
            ClientError::new(ErrorCode::AlreadyPaired, "this worker is already paired")
        }
        PairError::NotPaired => ClientError::new(
            ErrorCode::NotPaired,
            "this worker is neither paired nor queued",
        ),
        PairError::Stale => ClientError::new(
            ErrorCode::ClusterUnavailable,
            "this connection is being replaced or its record is not registered yet; try again",
        ),
        PairError::Store(e) => {
            warn!(error = %e, "cluster backend call failed");
            ClientError::new(
                ErrorCode::ClusterUnavailable,
                "the cluster backend is unavailable; try again",
            )
        }
        PairError::NotFound(_) | PairError::SameWorker => {
            ClientError::new(ErrorCode::Internal, "unexpected pairing error")
        }
    }
}

fn store_unavailable(e: crate::store::StoreError) -> ClientError {
    pair_err(PairError::Store(e))
}

/// Binds the STUN sockets `cfg` asks for (none when disabled). An IPv6 socket
/// on a host without IPv6 is skipped with a warning; any other failure is an error.
pub async fn bind_stun(cfg: &StunConfig) -> Result<Vec<Arc<UdpSocket>>, String> {
    if !cfg.enabled {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let v4 = cfg.listen;
    let bound = udp_socket(v4).and_then(|sock| bind_udp(sock, v4, false));
    out.push(Arc::new(bound.map_err(|e| {
        format!("stun.listen: cannot bind UDP {v4}: {e}")
    })?));
    if let Some(v6) = cfg.listen_v6 {
        match udp_socket(v6) {
            // The host cannot even create an IPv6 socket: IPv6 is off.
            Err(e) => warn!(addr = %v6, error = %e, "no IPv6 on this host; STUN answers IPv4 only"),
            Ok(sock) => out
                .push(Arc::new(bind_udp(sock, v6, true).map_err(|e| {
                    format!("stun.listen_v6: cannot bind UDP {v6}: {e}")
                })?)),
        }
    }
    Ok(out)
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
}

/// Binds a non-blocking UDP socket; an IPv6 one is IPv6-only when `v6only`,
/// so it can share its port with an IPv4 socket.
fn bind_udp(sock: socket2::Socket, addr: SocketAddr, v6only: bool) -> std::io::Result<UdpSocket> {
    if addr.is_ipv6() {
        sock.set_only_v6(v6only)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

impl Rendezvous {
    /// Serves STUN on `sockets` until the node closes every connection, each
    /// source limited to `stun.rate_per_ip` (one limit across the sockets).
    pub fn start_stun(&self, sockets: Vec<Arc<UdpSocket>>) {
        let limit =
            crate::stun::SourceLimit::new(self.core.cfg.stun.rate_per_ip, self.core.cfg.stun.burst)
                .map(Arc::new);
        for socket in sockets {
            if let Ok(addr) = socket.local_addr() {
                info!("STUN responder bound to udp {addr}");
            }
            let observer = self.observer();
            let stop = self.core.close_all.clone();
            self.core
                .spawn(crate::stun::serve(socket, observer, limit.clone(), stop));
        }
    }

    /// Records a new connection; returns its `stun_username` (when STUN is on).
    pub fn register(
        &self,
        peer: &PeerId,
        epoch: u64,
        door: Door,
        observed: SocketAddr,
        secret: SecretHash,
    ) -> (Arc<RdvConn>, Option<String>) {
        let conn = Arc::new(RdvConn::new(
            peer.clone(),
            epoch,
            random_token(),
            door,
            observed,
            secret,
        ));
        self.tokens.insert(conn.token.clone(), conn.clone());
        if let Some(old) = self.conns.insert(peer.clone(), conn.clone()) {
            self.tokens.remove(&old.token);
        }
        let username = self
            .core
            .cfg
            .stun
            .enabled
            .then(|| format!("{}:{}", conn.token, self.core.id));
        (conn, username)
    }

    /// A resumed session's record on this node (see `crate::node::resume`):
    /// a fresh STUN token for its new socket, the session's secret, and
    /// the worker state it had (`worker`: its pool's metric label and its
    /// pairing), without writing the store (the caller rewrites the worker
    /// record when the session moved here from another node).
    pub fn adopt(
        &self,
        peer: &PeerId,
        epoch: u64,
        observed: SocketAddr,
        secret: SecretHash,
        worker: Option<(String, Option<String>)>,
    ) -> (Arc<RdvConn>, Option<String>) {
        let was_worker = self
            .conns
            .get(peer)
            .is_some_and(|c| c.epoch == epoch && c.is_worker());
        let (conn, username) = self.register(peer, epoch, Door::Native, observed, secret);
        if let Some((label, pairing)) = worker {
            let pool = (label != "none")
                .then(|| PoolName::parse(&label, usize::MAX).ok())
                .flatten();
            let label = self.label_for(pool.as_ref());
            *conn.pool_label.lock() = label;
            *conn.pairing.lock() = pairing;
            conn.worker.store(true, Ordering::Release);
            // A session resumed on the node it was on is counted already.
            if !was_worker {
                metrics::gauge!(m::WORKERS, "pool" => label).increment(1.0);
            }
        }
        (conn, username)
    }

    /// The worker state of a session handed to another node (`None`: not a
    /// worker), leaving this node's maps and gauge without touching the
    /// store (the session lives on over there).
    pub fn hand_over(&self, s: &Session) -> Option<(String, Option<String>)> {
        let c = &s.rdv;
        self.tokens.remove(&c.token);
        self.conns.remove_if(&s.peer, |_, cur| cur.epoch == c.epoch);
        let label = (*c.pool_label.lock()).to_string();
        let pairing = c.pairing.lock().clone();
        c.clear_worker().then_some((label, pairing))
    }

    /// Writes the worker record of a session resumed here from another
    /// node (it names this node now).
    pub async fn resumed_here(&self, c: &RdvConn) -> Result<(), crate::store::StoreError> {
        if c.is_worker() {
            self.rewrite_worker(c).await?;
        }
        Ok(())
    }

    /// True when connection `epoch` of `peer` is on this node and its
    /// reconnect secret hashes to `presented`.
    pub fn secret_is(&self, peer: &PeerId, epoch: u64, presented: &SecretHash) -> bool {
        self.conns
            .get(peer)
            .is_some_and(|c| c.epoch == epoch && c.secret == *presented)
    }

    fn worker_conn(&self, c: &RdvConn) -> WorkerConn {
        WorkerConn {
            peer_id: c.peer.clone(),
            node: self.core.id.clone(),
            epoch: c.epoch,
            door: c.door,
            observed_addr: c.observed.to_string(),
        }
    }

    /// Creates the worker record of `c` if needed and applies `ep`.
    pub async fn ensure_worker(&self, c: &RdvConn, ep: &EndpointUpdate) -> Result<(), ClientError> {
        let lost = self
            .core
            .store
            .upsert_worker(&self.worker_conn(c), ep)
            .await
            .map_err(store_unavailable)?;
        if !c.worker.swap(true, Ordering::AcqRel) {
            self.core
                .activity
                .note(crate::core::Note::WorkerRegistered {
                    peer: c.peer.clone(),
                });
            let label = *c.pool_label.lock();
            metrics::gauge!(m::WORKERS, "pool" => label).increment(1.0);
        }
        if ep.udp.is_some() || ep.public_ip.is_some() {
            self.core.activity.note(crate::core::Note::Endpoint {
                peer: c.peer.clone(),
                udp: ep.udp.clone(),
            });
        }
        if let Some(lost) = lost {
            // An older connection of this worker was paired: its partner is free now.
            self.notify_lost(lost, PairLostReason::Replaced).await;
        }
        Ok(())
    }

    fn set_pool_label(&self, c: &RdvConn, pool: &PoolName) {
        let label = self.label_for(Some(pool));
        let mut cur = c.pool_label.lock();
        if *cur != label && c.worker.load(Ordering::Acquire) {
            metrics::gauge!(m::WORKERS, "pool" => *cur).decrement(1.0);
            metrics::gauge!(m::WORKERS, "pool" => label).increment(1.0);
        }
        *cur = label;
    }

    /// `pair`: queue the session's worker in `pool`, or match it at once.
    /// The `ack` (when `id` is given) goes out before any `paired`.
    pub async fn pair(
        &self,
        s: &Session,
        id: Option<Value>,
        pool: PoolName,
        meta: Value,
        received: Instant,
    ) -> Result<(), ClientError> {
        self.core.require_bus()?;
        self.ensure_worker(&s.rdv, &EndpointUpdate::default())
            .await?;
        self.set_pool_label(&s.rdv, &pool);
        let pairing_id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        // Once the store has queued this worker, another node may match it
        // and its `paired` may arrive here (through the bus, on another Redis
        // connection) before the store's answer: hold what arrives until
        // the `ack` is queued.
        if id.is_some() {
            s.handle.close_gate();
        }
        let outcome = match self
            .core
            .store
            .enqueue_or_match(&s.peer, s.epoch, &pool, &meta, now, &pairing_id)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                s.handle.open_gate(None, None);
                return Err(pair_err(e));
            }
        };
        if let Some(id) = id {
            s.handle.open_gate(Some(Event::Ack { id }), None);
        }
        match outcome {
            Enqueued::Queued => Ok(()),
            Enqueued::Matched {
                pairing_id,
                initiator,
                responder,
            } => {
                metrics::counter!(m::PAIRINGS_MADE, "how" => "auto").increment(1);
                let waited = now.saturating_sub(initiator.since_ms) as f64 / 1000.0;
                metrics::histogram!(m::PAIR_WAIT).record(waited);
                metrics::histogram!(m::PAIR_WAIT).record(received.elapsed().as_secs_f64());
                self.announce_pairing(&pairing_id, &initiator, &responder)
                    .await;
                Ok(())
            }
        }
    }

    /// Tells both sides of a new pairing, each through its own node.
    async fn announce_pairing(
        &self,
        pairing_id: &str,
        initiator: &WorkerRecord,
        responder: &WorkerRecord,
    ) {
        debug!(pairing = pairing_id, initiator = %initiator.peer_id, responder = %responder.peer_id, "paired");
        self.core.activity.note(crate::core::Note::Paired {
            pairing_id: pairing_id.to_string(),
            initiator: initiator.peer_id.clone(),
            responder: responder.peer_id.clone(),
        });
        let note = |role, other: &WorkerRecord| PairedNote {
            pairing_id: pairing_id.to_string(),
            role,
            peer: pair_peer(other),
        };
        self.deliver_paired(initiator, note(Role::Initiator, responder))
            .await;
        self.deliver_paired(responder, note(Role::Responder, initiator))
            .await;
    }

    /// Tells a local connection `paired` or `pair-lost` (when it is still
    /// connection `epoch`), remembering which pairing it is in.
    pub fn deliver(&self, peer: &PeerId, epoch: u64, msg: Event) {
        let Some(h) = self.core.hub.get(peer).filter(|h| h.epoch == epoch) else {
            return;
        };
        if let Some(c) = self.conns.get(peer).filter(|c| c.epoch == epoch) {
            let mut cur = c.pairing.lock();
            match &msg {
                Event::Paired(note) => *cur = Some(note.pairing_id.clone()),
                Event::PairLost { pairing_id, .. } if cur.as_ref() == Some(pairing_id) => {
                    *cur = None
                }
                _ => {}
            }
        }
        h.send(msg);
    }

    async fn deliver_paired(&self, to: &WorkerRecord, note: PairedNote) {
        if to.node == self.core.id {
            self.deliver(&to.peer_id, to.epoch, Event::Paired(note));
            return;
        }
        let event = NodeEvent::Paired {
            to: to.peer_id.clone(),
            to_epoch: to.epoch,
            paired: note,
        };
        if let Ok(0) | Err(_) = self.core.publish_node(&to.node, event).await {
            // Its node is gone: it will be reaped, and its partner told `pair-lost`.
            debug!(worker = %to.peer_id, node = %to.node, "paired: the worker's node is not listening");
        }
    }

    /// Tells the partner of a pairing that ended, through its node.
    pub async fn notify_lost(&self, lost: LostPairing, reason: PairLostReason) {
        metrics::counter!(m::PAIRINGS_LOST, "reason" => reason.as_str()).increment(1);
        self.core.activity.note(crate::core::Note::PairEnded {
            pairing_id: lost.pairing_id.clone(),
            peer: lost.partner.peer_id.clone(),
            reason: reason.as_str(),
        });
        let to = lost.partner;
        if to.node == self.core.id {
            let msg = Event::PairLost {
                pairing_id: lost.pairing_id,
                reason,
            };
            self.deliver(&to.peer_id, to.epoch, msg);
            return;
        }
        let event = NodeEvent::PairLost {
            to: to.peer_id.clone(),
            to_epoch: to.epoch,
            pairing_id: lost.pairing_id,
            reason,
        };
        let _ = self.core.publish_node(&to.node, event).await;
    }

    /// `unpair`: end the session's pairing (the partner hears `pair-lost`
    /// with reason `unpaired`) or stop waiting in a queue.
    pub async fn unpair(&self, s: &Session) -> Result<(), ClientError> {
        if !s.rdv.worker.load(Ordering::Acquire) {
            return Err(pair_err(PairError::NotPaired));
        }
        self.core.require_bus()?;
        match self
            .core
            .store
            .unpair_worker(&s.peer, s.epoch)
            .await
            .map_err(pair_err)?
        {
            Unpaired::Dequeued => {}
            Unpaired::Paired(lost) => self.notify_lost(lost, PairLostReason::Unpaired).await,
        }
        *s.rdv.pairing.lock() = None;
        Ok(())
    }

    /// `endpoint`: record endpoints the worker reports itself.
    pub async fn endpoint(
        &self,
        s: &Session,
        public_ip: Option<IpAddr>,
        udp: Option<SocketAddr>,
    ) -> Result<(), ClientError> {
        self.core.require_bus()?;
        let ep = EndpointUpdate {
            public_ip: public_ip.map(|ip| ip.to_string()),
            udp: udp.map(|a| a.to_string()),
        };
        self.ensure_worker(&s.rdv, &ep).await
    }

    /// Queues a legacy worker for auto-pairing (pool `default`); a worker
    /// already paired or queued stays as it is.
    pub async fn auto_pair(&self, s: &Session) {
        let pool = PoolName::from_trusted(crate::core::command::DEFAULT_POOL);
        match self.pair(s, None, pool, Value::Null, Instant::now()).await {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::AlreadyPaired => {}
            Err(e) => warn!(worker = %s.peer, error = %e.message, "auto-pairing failed"),
        }
    }

    /// Pairs two named workers (`POST /api/connect`); `a` initiates.
    pub async fn connect_workers(
        &self,
        a: &PeerId,
        b: &PeerId,
    ) -> Result<(String, WorkerRecord, WorkerRecord), PairError> {
        if a == b {
            return Err(PairError::SameWorker);
        }
        let pairing_id = uuid::Uuid::new_v4().to_string();
        let (ra, rb) = self.core.store.pair_workers(a, b, &pairing_id).await?;
        metrics::counter!(m::PAIRINGS_MADE, "how" => "manual").increment(1);
        self.announce_pairing(&pairing_id, &ra, &rb).await;
        Ok((pairing_id, ra, rb))
    }

    /// Cleans up after a connection: its STUN token, and its worker record
    /// (the partner hears `pair-lost` with the connection's close reason).
    pub async fn disconnect(&self, s: &Session, why: CloseReason) {
        let c = &s.rdv;
        self.tokens.remove(&c.token);
        self.conns.remove_if(&s.peer, |_, cur| cur.epoch == c.epoch);
        if !c.clear_worker() {
            return;
        }
        match self.core.store.remove_worker(&s.peer, s.epoch).await {
            Ok(Some(lost)) => self.notify_lost(lost, why.leave.into()).await,
            Ok(None) => {}
            Err(e) => {
                warn!(peer = %s.peer, error = %e, "could not remove the worker record; will reconcile");
                self.core.mark_dirty();
            }
        }
    }

    /// A STUN observation answered on this node: handle it here, or forward
    /// it to the node that owns the username.
    /// The username names its node, so a sender could make every datagram
    /// cost a publish on a channel of its choosing: only a node whose
    /// heartbeat is alive gets one; other names are dropped and counted.
    async fn stun_observed(&self, obs: Observation) {
        let Some((token, node)) = parse_username(&obs.username) else {
            debug!("STUN username is not one of ours");
            return;
        };
        if node == self.core.id.as_str() {
            self.observed_here(token, obs.addr).await;
            return;
        }
        let node = crate::types::NodeId::from_trusted(node);
        if !self.core.node_is_alive(&node) {
            metrics::counter!(m::STUN_UNKNOWN_NODE).increment(1);
            debug!("STUN username names no live node");
            return;
        }
        let event = NodeEvent::Observed {
            token: token.to_string(),
            udp: obs.addr.to_string(),
        };
        if let Ok(0) = self.core.publish_node(&node, event).await {
            debug!(node = %node, "STUN username names a node that is not listening");
        }
    }

    /// An observation of one of this node's connections: record the UDP
    /// endpoint on its worker record and tell it `endpoint`.
    async fn observed_here(&self, token: &str, udp: SocketAddr) {
        let Some(c) = self.tokens.get(token).map(|c| c.clone()) else {
            debug!("STUN username resolves to no connection");
            return;
        };
        let Some(h) = self.core.hub.get(&c.peer).filter(|h| h.epoch == c.epoch) else {
            return;
        };
        let ep = EndpointUpdate {
            public_ip: None,
            udp: Some(udp.to_string()),
        };
        if let Err(e) = self.ensure_worker(&c, &ep).await {
            debug!(peer = %c.peer, error = %e.message, "could not record the STUN endpoint");
        }
        h.send(Event::Endpoint {
            udp: udp.to_string(),
            source: "stun",
        });
    }

    /// Hands an observation forwarded by another node to the rendezvous task.
    pub fn forwarded(&self, token: String, udp: &str) {
        let Ok(udp) = udp.parse() else { return };
        if self.jobs.try_send(Job::Observed { token, udp }).is_err() {
            metrics::counter!(m::STUN_OBSERVATIONS_DROPPED).increment(1);
        }
    }

    /// Makes the worker records of this node match its live connections
    /// after an outage: a local worker whose pairing the store no longer
    /// holds (Redis restarted, or this node was declared dead and reaped) is
    /// told `pair-lost` (`timeout`); records of closed connections go
    /// (partners told); live workers are written again.
    pub async fn reconcile(&self) -> Result<(), crate::store::StoreError> {
        let live: Vec<Arc<RdvConn>> = self.conns.iter().map(|e| e.value().clone()).collect();
        // Reconnect secrets live next to the directory entries: a Redis that
        // lost the entries lost them too (without them a reconnect is refused
        // until the old connection is gone, never let through).
        for c in &live {
            let loc = PeerLocation {
                node: self.core.id.clone(),
                epoch: c.epoch,
            };
            self.core
                .store
                .restore_secret(&c.peer, &loc, &c.secret)
                .await?;
        }
        for c in &live {
            let Some(pid) = c.pairing.lock().clone() else {
                continue;
            };
            let held = self.core.store.get_worker(&c.peer).await?.is_some_and(|w| {
                w.epoch == c.epoch && w.pairing_id.as_deref() == Some(pid.as_str())
            });
            if !held {
                metrics::counter!(m::PAIRINGS_LOST, "reason" => "timeout").increment(1);
                let msg = Event::PairLost {
                    pairing_id: pid,
                    reason: PairLostReason::Timeout,
                };
                self.deliver(&c.peer, c.epoch, msg);
            }
        }
        // Liveness is asked of the connection map now, not of the snapshot
        // above: a worker that connected meanwhile has a record already, and
        // one whose first write is still on its way has no `worker` flag yet;
        // neither may lose its record.
        for (peer, epoch) in self.core.store.node_workers(&self.core.id).await? {
            if !self.is_current(&peer, epoch) {
                if let Some(lost) = self.core.store.remove_worker(&peer, epoch).await? {
                    self.notify_lost(lost, PairLostReason::Disconnected).await;
                }
            }
        }
        let workers = live
            .iter()
            .filter(|c| c.door == Door::LegacyWorker || c.worker.load(Ordering::Acquire));
        for c in workers {
            self.rewrite_worker(c).await?;
        }
        Ok(())
    }

    /// True while `epoch` is the live connection of `peer` on this node.
    fn is_current(&self, peer: &PeerId, epoch: u64) -> bool {
        self.conns.get(peer).is_some_and(|c| c.epoch == epoch)
    }

    /// Writes a live connection's worker record again (reconcile). A
    /// connection that closes meanwhile must not be left with a record: its
    /// disconnect leaves the connection map before it removes the record, so
    /// asking again after the write catches every interleaving.
    async fn rewrite_worker(&self, c: &RdvConn) -> Result<(), crate::store::StoreError> {
        if !self.is_current(&c.peer, c.epoch) {
            return Ok(());
        }
        self.ensure_worker(c, &EndpointUpdate::default())
            .await
            .map_err(|e| crate::store::StoreError::Unavailable(e.message))?;
        if !self.is_current(&c.peer, c.epoch) {
            c.clear_worker();
            if let Some(lost) = self.core.store.remove_worker(&c.peer, c.epoch).await? {
                self.notify_lost(lost, PairLostReason::Disconnected).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_name_token_and_node() {
        let t = random_token();
        assert_eq!(t.len(), 32);
        let u = format!("{t}:node-1:x");
        assert_eq!(parse_username(&u), Some((t.as_str(), "node-1:x")));
        assert_eq!(parse_username("short:node"), None);
        assert_eq!(parse_username(&format!("{t}:")), None);
        assert_eq!(parse_username(&t), None);
    }

    /// Reconcile (after an outage, and once at start) decides which worker
    /// records of this node are stale by asking the live connection map, so
    /// a record whose connection is still setting itself up survives, and
    /// one whose connection is gone does not.
    #[tokio::test]
    async fn reconcile_keeps_records_of_live_connections_only() {
        let node = crate::node::Node::embedded(crate::config::Config::default()).unwrap();
        let rdv = &node.rdv;
        let peer = PeerId::from_trusted("w1");
        let observed = "127.0.0.1:5000".parse().unwrap();
        let (c, _) = rdv.register(&peer, 7, Door::Native, observed, [0; 32]);
        // The record is written; the connection's `worker` flag is not set
        // yet (its `ensure_worker` has not resumed).
        let ep = EndpointUpdate {
            public_ip: Some("203.0.113.7".into()),
            udp: None,
        };
        let store = &node.core.store;
        store
            .upsert_worker(&rdv.worker_conn(&c), &ep)
            .await
            .unwrap();
        rdv.reconcile().await.unwrap();
        let kept = store.get_worker(&peer).await.unwrap();
        assert_eq!(
            kept.map(|w| (w.epoch, w.public_ip)),
            Some((7, Some("203.0.113.7".into())))
        );

        // Gone from the map (its disconnect has begun): the record goes.
        rdv.conns.remove(&peer);
        rdv.reconcile().await.unwrap();
        assert!(store.get_worker(&peer).await.unwrap().is_none());
    }
}
