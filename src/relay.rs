//! Cross-node relay of direct signals: a route cache, one outbox per remote
//! node, bounces and detours.
//!
//! ("Drain" is the node's shutdown; a route that went stale is *detoured*
//! and its held signals *released*.)
//!
//! The straightforward path (look the target up in the peer directory, then
//! publish one event to its node, both awaited by the sender's reader) costs
//! two Redis round trips and two Redis commands per signal. Here:
//!
//! - **Route cache.** `peer → (node, epoch)`, learned from a directory lookup
//!   on first use, at most `cluster.route_cache_max` entries, dropped when
//!   unused for `cluster.route_idle_ms`. A route can go stale (the peer left
//!   or reconnected elsewhere); the node it names then *bounces* the signal.
//! - **Outboxes.** A signal for another node is queued in that node's outbox
//!   and the sender's reader moves on. One task per remote node publishes
//!   whatever is queued as one batch envelope, with at most one publish in
//!   flight: order per node is kept, an idle outbox publishes at once (no
//!   timer), and under load batches grow by themselves, so Redis sees one
//!   `PUBLISH` per batch instead of one per signal. An outbox holds at most
//!   `cluster.outbox_max` events; past that the sender gets
//!   `cluster-unavailable` at once.
//! - **Answers.** A publish that reaches no subscriber (the node is dead or
//!   reconnecting) or fails answers every signal of the batch with
//!   `cluster-unavailable` and forgets the routes through that node. The
//!   receiving node answers a signal that carried an `id` with `delivered`
//!   once it is in the target's queue (the sender's `ack`, as on one node).
//! - **Bounce and detour, keeping order.** A node that gets a signal for a
//!   peer it does not hold bounces it to the sender's node, and from then on
//!   bounces every signal for that peer from that node, until the sender's
//!   node sends `flush`. The sender's node, on the first bounce, turns the
//!   route into a *detour*: new signals for the peer are held, bounced ones
//!   collected, and `flush` is queued behind everything already sent. The
//!   other node answers `flushed` after bouncing all of it (both sides keep
//!   publish order), so when `flushed` arrives nothing is in flight. The
//!   sender's node then looks the peer up again and sends the bounced
//!   signals, then the held ones, in their original order, to where the peer
//!   is now (or answers `peer-not-found` for each). A route changes only this
//!   way, so signals from one peer to another never overtake each other, even
//!   when the target moves. A signal is re-sent at most twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::bus::{NodeEvent, RemoteSignal};
use crate::core::event::Event;
use crate::core::{cluster_err, Core};
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::payload::Opaque;
use crate::types::SignalKind;
use crate::types::{NodeId, PeerId};

/// Most events published in one batch envelope.
const MAX_BATCH: usize = 256;
/// An outbox idle this long ends its task (a new signal starts another).
const OUTBOX_IDLE: Duration = Duration::from_secs(30);
/// A detour whose `flushed` has not come back after this long is released
/// anyway (the other node died after taking the `flush`).
const DETOUR_MAX: Duration = Duration::from_secs(5);
/// How long answers owed to another node (`delivered`, `bounced`, `flushed`)
/// are retried while publishes to it reach nobody, and the pause between tries.
const ANSWER_RETRY: Duration = Duration::from_secs(5);
const ANSWER_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Times a signal may be re-sent after bounces.
const MAX_HOPS: u8 = 2;

/// What the cache knows about one remote peer.
#[derive(Debug)]
enum RouteEntry {
    /// Signals go to this node.
    Via {
        node: NodeId,
        epoch: u64,
        /// [`Relay::clock`] when last used.
        used: u32,
    },
    /// The route went stale: waiting for `flushed` from `via`.
    Detour(Box<Detour>),
}

#[derive(Debug)]
struct Detour {
    id: u64,
    via: NodeId,
    since: Instant,
    /// Signals `via` sent back, in their original order.
    bounced: Vec<RemoteSignal>,
    /// Signals sent since, in order.
    held: Vec<RemoteSignal>,
}

/// A detour to release: look the peer up and send what was held.
#[derive(Debug)]
pub struct Release {
    peer: PeerId,
    detour: u64,
}

/// Cross-node relay of direct signals; see the module docs.
pub struct Relay {
    core: Arc<Core>,
    me: Weak<Relay>,
    routes: DashMap<PeerId, RouteEntry>,
    outboxes: DashMap<NodeId, Arc<Outbox>>,
    /// `(origin node, peer)` pairs this node bounces until the origin's `flush`.
    bouncing: Mutex<HashSet<(NodeId, PeerId)>>,
    bouncing_len: AtomicUsize,
    detours: AtomicUsize,
    next_detour: AtomicU64,
    /// Seconds since `started`, advanced by [`Relay::sweep`].
    clock: AtomicU32,
    started: Instant,
    last_sweep: AtomicU32,
    route_idle_s: u32,
    route_max: usize,
    outbox_max: usize,
    releases: mpsc::UnboundedSender<Release>,
}

#[derive(Debug)]
struct Outbox {
    node: NodeId,
    q: Mutex<Queue>,
    ready: Notify,
    /// Events taken from the queue whose publish has not finished.
    publishing: AtomicUsize,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<NodeEvent>,
    /// Set by the task when it ends; a push that finds it set starts a new outbox.
    closed: bool,
}

/// Why an event could not be queued.
#[derive(Debug)]
pub struct OutboxFull;

/// What [`Relay::send`] did with a signal.
#[derive(Debug)]
enum Sent {
    /// Queued for its node (or held behind a detour).
    Queued,
    /// No route is cached: look the peer up and call [`Relay::send_to`].
    Unknown(RemoteSignal),
}

impl Relay {
    /// The relay of `core`'s node; its detour task runs on the core's
    /// background tasks.
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        let (releases, rx) = mpsc::unbounded_channel();
        let cfg = &core.cfg.cluster;
        let (route_idle, route_max, outbox_max) =
            (cfg.route_idle, cfg.route_cache_max, cfg.outbox_max);
        let relay = Arc::new_cyclic(|me| Self {
            core: core.clone(),
            me: me.clone(),
            routes: DashMap::new(),
            outboxes: DashMap::new(),
            bouncing: Mutex::new(HashSet::new()),
            bouncing_len: AtomicUsize::new(0),
            detours: AtomicUsize::new(0),
            next_detour: AtomicU64::new(1),
            clock: AtomicU32::new(0),
            started: Instant::now(),
            last_sweep: AtomicU32::new(0),
            route_idle_s: route_idle.as_secs().clamp(1, u64::from(u32::MAX / 2)) as u32,
            route_max,
            outbox_max,
            releases,
        });
        core.spawn(run_releases(Arc::downgrade(&relay), rx));
        relay
    }

    /// Routes a direct signal from a local sender: into the target's queue
    /// when it is on this node, else into the outbox of the one node holding
    /// it. Returns the `ack` to send now: a relayed signal is acked by its
    /// target's node once delivered (`delivered`).
    #[allow(clippy::too_many_arguments)] // a signal's parts, as decoded
    pub async fn signal(
        &self,
        from: &PeerId,
        from_epoch: u64,
        id: Option<Value>,
        to: PeerId,
        kind: SignalKind,
        data: Opaque,
        received: Instant,
    ) -> Result<Option<Event>, ClientError> {
        // A target that arrived here while this node still has a route to
        // it elsewhere (its session was resumed on this node): what was sent
        // through that route may still be in flight, so this one follows it
        // (bounced back, or released from the detour, in order; the route is
        // gone after that).
        if let Some(h) = self
            .core
            .hub
            .get(&to)
            .filter(|_| !self.routes.contains_key(&to))
        {
            h.push(
                Arc::new(Event::Signal {
                    from: from.clone(),
                    kind,
                    data,
                }),
                Some(received),
            );
            return Ok(id.map(|id| Event::Ack { id }));
        }
        self.core.require_bus()?;
        let sig = RemoteSignal {
            from: from.clone(),
            from_epoch,
            to,
            to_epoch: 0,
            kind,
            data,
            id,
            hops: 0,
        };
        let sig = match self.send(sig)? {
            Sent::Queued => return Ok(None),
            Sent::Unknown(sig) => sig,
        };
        match self
            .core
            .store
            .locate_peer(&sig.to)
            .await
            .map_err(cluster_err)?
        {
            Some(loc) if loc.node != self.core.id => {
                self.send_to(sig, loc.node, loc.epoch).map(|()| None)
            }
            _ => Err(peer_not_found(&sig.to)),
        }
    }

    /// Forgets every plain route through `node` (it is dead or unreachable);
    /// detours in progress are released on their own.
    pub fn forget_node(&self, node: &NodeId) {
        self.routes
            .retain(|_, r| !matches!(r, RouteEntry::Via { node: n, .. } if n == node));
        let mut b = self.bouncing.lock();
        b.retain(|(origin, _)| origin != node);
        self.bouncing_len.store(b.len(), Ordering::Release);
    }

    fn is_bouncing(&self, origin: &NodeId, peer: &PeerId) -> bool {
        self.bouncing_len.load(Ordering::Acquire) > 0
            && self
                .bouncing
                .lock()
                .contains(&(origin.clone(), peer.clone()))
    }

    fn start_bouncing(&self, origin: &NodeId, peer: &PeerId) {
        let mut b = self.bouncing.lock();
        b.insert((origin.clone(), peer.clone()));
        self.bouncing_len.store(b.len(), Ordering::Release);
    }

    fn stop_bouncing(&self, origin: &NodeId, peer: &PeerId) {
        let mut b = self.bouncing.lock();
        b.remove(&(origin.clone(), peer.clone()));
        self.bouncing_len.store(b.len(), Ordering::Release);
    }

    /// Sends a signal for a peer that is not local along its cached route.
    fn send(&self, sig: RemoteSignal) -> Result<Sent, ClientError> {
        let Some(mut e) = self.routes.get_mut(&sig.to) else {
            return Ok(Sent::Unknown(sig));
        };
        match &mut *e {
            RouteEntry::Detour(d) => d.held.push(sig),
            RouteEntry::Via { node, epoch, used } => {
                *used = self.clock.load(Ordering::Relaxed);
                let mut sig = sig;
                sig.to_epoch = *epoch;
                let to = sig.to.clone();
                self.push(node, NodeEvent::Signal(sig))
                    .map_err(|_| congested(&to))?;
            }
        }
        Ok(Sent::Queued)
    }

    /// Sends a signal to `node` (where a directory lookup found its target),
    /// remembering the route; a route that appeared meanwhile wins.
    pub fn send_to(&self, sig: RemoteSignal, node: NodeId, epoch: u64) -> Result<(), ClientError> {
        let to = sig.to.clone();
        let full = |_| congested(&to);
        if self.route_max == 0 || self.routes.len() >= self.route_max {
            // A full cache is swept at most once per second of the route
            // clock, not on every miss.
            let now = self.clock.load(Ordering::Relaxed);
            if self.last_sweep.swap(now, Ordering::Relaxed) != now {
                self.sweep_routes();
            }
            if self.route_max == 0 || self.routes.len() >= self.route_max {
                // No room to remember it: send it uncached.
                let mut sig = sig;
                sig.to_epoch = epoch;
                return self.push(&node, NodeEvent::Signal(sig)).map_err(full);
            }
        }
        match self.routes.entry(sig.to.clone()) {
            Entry::Occupied(mut e) => match e.get_mut() {
                RouteEntry::Detour(d) => d.held.push(sig),
                RouteEntry::Via {
                    node: n, epoch: ep, ..
                } => {
                    let mut sig = sig;
                    sig.to_epoch = *ep;
                    self.push(n, NodeEvent::Signal(sig)).map_err(full)?;
                }
            },
            Entry::Vacant(v) => {
                let mut sig = sig;
                sig.to_epoch = epoch;
                self.push(&node, NodeEvent::Signal(sig)).map_err(full)?;
                v.insert(RouteEntry::Via {
                    node,
                    epoch,
                    used: self.clock.load(Ordering::Relaxed),
                });
            }
        }
        Ok(())
    }

    /// Queues an event for `to`'s node; starts its outbox task if needed.
    pub fn push(&self, to: &NodeId, event: NodeEvent) -> Result<(), OutboxFull> {
        let mut event = Some(event);
        // At most two rounds: a closed outbox is replaced once.
        for _ in 0..2 {
            let ob = self
                .outboxes
                .entry(to.clone())
                .or_insert_with(|| self.start_outbox(to))
                .clone();
            let mut q = ob.q.lock();
            if q.closed {
                drop(q);
                self.outboxes.remove_if(to, |_, o| Arc::ptr_eq(o, &ob));
                continue;
            }
            if q.events.len() >= self.outbox_max {
                metrics::counter!(m::RELAY_OUTBOX_FULL).increment(1);
                return Err(OutboxFull);
            }
            let was_empty = q.events.is_empty();
            q.events.push_back(event.take().expect("pushed once"));
            drop(q);
            if was_empty {
                ob.ready.notify_one();
            }
            return Ok(());
        }
        // Not reached in practice: a fresh outbox is never closed.
        Err(OutboxFull)
    }

    fn start_outbox(&self, to: &NodeId) -> Arc<Outbox> {
        let ob = Arc::new(Outbox {
            node: to.clone(),
            q: Mutex::new(Queue::default()),
            ready: Notify::new(),
            publishing: AtomicUsize::new(0),
        });
        self.core.spawn(run_outbox(self.me.clone(), ob.clone()));
        ob
    }

    /// Publishes one batch to `to`. When nobody received it, answers its
    /// signals with `cluster-unavailable`, forgets the routes through `to`,
    /// and returns its answers to other nodes' signals (`delivered`,
    /// `bounced`, `flushed`), which the outbox sends again: the other node's
    /// subscriber is probably reconnecting, and its peers are owed them.
    /// With `give_up`, they are dropped instead (and the detours whose `flush`
    /// the batch carried finish without it).
    async fn publish_batch(
        &self,
        to: &NodeId,
        events: Vec<NodeEvent>,
        give_up: bool,
    ) -> Vec<NodeEvent> {
        metrics::histogram!(m::RELAY_BATCH_EVENTS).record(events.len() as f64);
        let env = self.core.envelope(NodeEvent::Batch { events });
        let received = matches!(self.core.publish_env(to, &env).await, Ok(n) if n > 0);
        if received {
            return Vec::new();
        }
        let NodeEvent::Batch { events } = env.event else {
            unreachable!("built above")
        };
        let mut again = Vec::new();
        let mut failed = Vec::new();
        for e in events {
            match e {
                NodeEvent::Signal(s) => failed.push(s),
                // A node no longer alive (it drained and said goodbye, or
                // it was reaped) has nothing in flight to wait for.
                NodeEvent::Flush { peer_id } if give_up || !self.core.node_is_alive(to) => {
                    self.flushed(to, peer_id)
                }
                e if give_up => {
                    metrics::counter!(m::RELAY_ANSWERS_DROPPED, "kind" => e.kind_name())
                        .increment(1);
                }
                e => again.push(e),
            }
        }
        // Nothing of the batch was delivered. A target the directory now
        // places on another node moved there (its session was resumed
        // elsewhere after its node drained): the signals take the detour a
        // bounce would have started, released at once (a node no publish
        // reaches has nothing in flight), so they reach it in order.
        let mut moved: HashMap<PeerId, bool> = HashMap::new();
        let mut rest = Vec::new();
        for s in failed {
            let elsewhere = match moved.get(&s.to) {
                Some(m) => *m,
                None => {
                    let m = matches!(
                        self.core.store.locate_peer(&s.to).await,
                        Ok(Some(loc)) if loc.node != *to && self.core.node_is_alive(&loc.node)
                    );
                    moved.insert(s.to.clone(), m);
                    m
                }
            };
            if elsewhere && s.hops < MAX_HOPS {
                self.bounced(to, s);
            } else {
                rest.push(s);
            }
        }
        for (peer, m) in moved {
            if m {
                self.flushed(to, peer);
            }
        }
        self.forget_node(to);
        // Else say why: the target is gone (its node died and was cleaned
        // up), or its node is unreachable.
        let mut gone: HashMap<PeerId, bool> = HashMap::new();
        for RemoteSignal {
            from,
            from_epoch,
            to: target,
            id,
            ..
        } in rest
        {
            let Some(h) = self.core.hub.get(&from).filter(|h| h.epoch == from_epoch) else {
                continue;
            };
            let is_gone = match gone.get(&target) {
                Some(g) => *g,
                None => {
                    let g = matches!(self.core.store.locate_peer(&target).await, Ok(None));
                    gone.insert(target.clone(), g);
                    g
                }
            };
            let e = if is_gone {
                peer_not_found(&target)
            } else {
                ClientError::new(
                    ErrorCode::ClusterUnavailable,
                    format!(
                        "the node holding peer `{target}` is not reachable right now; try again"
                    ),
                )
            };
            h.send_error(id, e);
        }
        again
    }

    /// Waits (at most `within`) until every outbox has published what it
    /// holds: a draining node's last bounces and answers leave before it
    /// exits.
    pub async fn settle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let busy = self
                .outboxes
                .iter()
                .any(|o| !o.q.lock().events.is_empty() || o.publishing.load(Ordering::Acquire) > 0);
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        debug!("outboxes still busy at the end of the drain");
    }

    /// A signal from another node: deliver it to the local peer, or bounce it.
    pub fn receive(&self, origin: &NodeId, s: RemoteSignal) {
        let target = if self.is_bouncing(origin, &s.to) {
            None
        } else {
            self.core.hub.get(&s.to)
        };
        let Some(h) = target else {
            debug!(peer = %s.to, origin = %origin, "signal bounced");
            metrics::counter!(m::RELAY_BOUNCES, "side" => "sent").increment(1);
            self.start_bouncing(origin, &s.to);
            let _ = self.push(origin, NodeEvent::Bounced(s));
            return;
        };
        let RemoteSignal {
            from,
            from_epoch,
            kind,
            data,
            id,
            ..
        } = s;
        let ack_to = id.map(|id| (from.clone(), id));
        h.push(Arc::new(Event::Signal { from, kind, data }), None);
        if let Some((to, id)) = ack_to {
            let _ = self.push(
                origin,
                NodeEvent::Delivered {
                    to,
                    to_epoch: from_epoch,
                    id,
                },
            );
        }
    }

    /// `flush` from another node: everything it sent before has been bounced.
    pub fn flush(&self, origin: &NodeId, peer: PeerId) {
        self.stop_bouncing(origin, &peer);
        if self
            .push(
                origin,
                NodeEvent::Flushed {
                    peer_id: peer.clone(),
                },
            )
            .is_err()
        {
            debug!(peer = %peer, "outbox full: `flushed` not sent; the detour will time out");
        }
    }

    /// One of our signals came back from `bouncer`: start a detour (or add to one).
    pub fn bounced(&self, bouncer: &NodeId, s: RemoteSignal) {
        debug!(peer = %s.to, bouncer = %bouncer, "signal came back; detour");
        metrics::counter!(m::RELAY_BOUNCES, "side" => "received").increment(1);
        let peer = s.to.clone();
        let mut flush = false;
        match self.routes.entry(peer.clone()) {
            Entry::Occupied(mut e) => match e.get_mut() {
                RouteEntry::Detour(d) => d.bounced.push(s),
                RouteEntry::Via { .. } => {
                    e.insert(self.new_detour(bouncer, s));
                    flush = true;
                }
            },
            Entry::Vacant(v) => {
                v.insert(self.new_detour(bouncer, s));
                flush = true;
            }
        }
        // Queued outside the route lock; nothing is sent to this peer
        // through `bouncer` while the detour stands, so order is the same.
        if flush
            && self
                .push(
                    bouncer,
                    NodeEvent::Flush {
                        peer_id: peer.clone(),
                    },
                )
                .is_err()
        {
            // Cannot ask for the flush; release the detour now (what is still in
            // flight will come back as a bounce and start another).
            self.flushed(bouncer, peer);
        }
    }

    fn new_detour(&self, via: &NodeId, first: RemoteSignal) -> RouteEntry {
        self.detours.fetch_add(1, Ordering::AcqRel);
        RouteEntry::Detour(Box::new(Detour {
            id: self.next_detour.fetch_add(1, Ordering::Relaxed),
            via: via.clone(),
            since: Instant::now(),
            bounced: vec![first],
            held: Vec::new(),
        }))
    }

    /// `flushed` from `via`: the detour of `peer` can be released.
    pub fn flushed(&self, via: &NodeId, peer: PeerId) {
        let detour = match self.routes.get(&peer).as_deref() {
            Some(RouteEntry::Detour(d)) if &d.via == via => d.id,
            _ => return,
        };
        let _ = self.releases.send(Release { peer, detour });
    }

    /// Releases a detour: looks the peer up and sends what was bounced, then
    /// what was held, in order.
    async fn release(&self, r: Release) {
        let loc = match self.core.store.locate_peer(&r.peer).await {
            Ok(loc) => loc.map(|l| (l.node, l.epoch)),
            Err(e) => {
                debug!(error = %e, "directory lookup to release a detour failed");
                None
            }
        };
        let mut entry = match self.routes.entry(r.peer.clone()) {
            Entry::Occupied(e) if matches!(e.get(), RouteEntry::Detour(d) if d.id == r.detour) => e,
            _ => return,
        };
        let RouteEntry::Detour(d) = std::mem::replace(
            entry.get_mut(),
            RouteEntry::Via {
                node: self.core.id.clone(),
                epoch: 0,
                used: 0,
            },
        ) else {
            unreachable!("matched above")
        };
        self.detours.fetch_sub(1, Ordering::AcqRel);
        let d = *d;
        let signals = d
            .bounced
            .into_iter()
            .map(|mut s| {
                s.hops = s.hops.saturating_add(1);
                s
            })
            .chain(d.held);
        let local = self.core.hub.get(&r.peer);
        debug!(peer = %r.peer, to = ?loc, local = local.is_some(), "detour released");
        match loc {
            Some((node, epoch)) if node != self.core.id && local.is_none() => {
                *entry.get_mut() = RouteEntry::Via {
                    node: node.clone(),
                    epoch,
                    used: self.clock.load(Ordering::Relaxed),
                };
                for mut s in signals {
                    if s.hops > MAX_HOPS {
                        self.answer(&s, peer_not_found(&s.to));
                        continue;
                    }
                    s.to_epoch = epoch;
                    let to = s.to.clone();
                    let reply = (s.from.clone(), s.from_epoch, s.id.clone());
                    if self.push(&node, NodeEvent::Signal(s)).is_err() {
                        if let Some(h) = self.core.hub.get(&reply.0).filter(|h| h.epoch == reply.1)
                        {
                            h.send_error(reply.2, congested(&to));
                        }
                    }
                }
            }
            _ => {
                // Local now, or gone. The route is removed only after these
                // are queued, so a new signal cannot overtake them.
                for s in signals {
                    match &local {
                        Some(h) => {
                            let ack = s.id.map(|id| Event::Ack { id });
                            let sender = self
                                .core
                                .hub
                                .get(&s.from)
                                .filter(|h| h.epoch == s.from_epoch);
                            h.push(
                                Arc::new(Event::Signal {
                                    from: s.from,
                                    kind: s.kind,
                                    data: s.data,
                                }),
                                None,
                            );
                            if let (Some(ack), Some(sender)) = (ack, sender) {
                                sender.send(ack);
                            }
                        }
                        None => self.answer(&s, peer_not_found(&s.to)),
                    }
                }
                entry.remove();
            }
        }
    }

    fn answer(&self, s: &RemoteSignal, e: ClientError) {
        if let Some(h) = self
            .core
            .hub
            .get(&s.from)
            .filter(|h| h.epoch == s.from_epoch)
        {
            h.send_error(s.id.clone(), e);
        }
    }

    /// `delivered` from another node: the ack of a signal we relayed.
    pub fn delivered(&self, to: &PeerId, to_epoch: u64, id: Value) {
        if let Some(h) = self.core.hub.get(to).filter(|h| h.epoch == to_epoch) {
            h.send(Event::Ack { id });
        }
    }

    /// Periodic upkeep (every heartbeat): advances the route clock, drops
    /// idle routes, and releases detours whose `flushed` never came.
    pub fn sweep(&self) {
        let now_s = self.started.elapsed().as_secs() as u32;
        self.clock.store(now_s, Ordering::Relaxed);
        if now_s.wrapping_sub(self.last_sweep.load(Ordering::Relaxed)) >= 10 {
            self.last_sweep.store(now_s, Ordering::Relaxed);
            self.sweep_routes();
        }
        if self.detours.load(Ordering::Acquire) > 0 {
            let stuck: Vec<Release> = self
                .routes
                .iter()
                .filter_map(|e| match e.value() {
                    RouteEntry::Detour(d) if d.since.elapsed() > DETOUR_MAX => Some(Release {
                        peer: e.key().clone(),
                        detour: d.id,
                    }),
                    _ => None,
                })
                .collect();
            for r in stuck {
                debug!(peer = %r.peer, "detour timed out; releasing held signals");
                let _ = self.releases.send(r);
            }
        }
    }

    fn sweep_routes(&self) {
        let now = self.clock.load(Ordering::Relaxed);
        let idle = self.route_idle_s;
        self.routes.retain(|_, r| match r {
            RouteEntry::Via { used, .. } => now.wrapping_sub(*used) < idle,
            RouteEntry::Detour(_) => true,
        });
    }
}

/// The error for a signal that found its node's outbox full.
pub fn congested(to: &PeerId) -> ClientError {
    ClientError::new(
        ErrorCode::ClusterUnavailable,
        format!("the link to the node holding peer `{to}` is congested; try again"),
    )
}

/// The error for a signal whose target is connected nowhere.
pub fn peer_not_found(to: &PeerId) -> ClientError {
    ClientError::new(
        ErrorCode::PeerNotFound,
        format!("peer `{to}` is not connected"),
    )
}

async fn run_outbox(node: Weak<Relay>, ob: Arc<Outbox>) {
    // Set while publishes to this node fail: answers are retried until
    // `ANSWER_RETRY` has passed, with a pause between attempts.
    let mut failing_since: Option<Instant> = None;
    loop {
        let batch: Vec<NodeEvent> = {
            let mut q = ob.q.lock();
            let n = q.events.len().min(MAX_BATCH);
            q.events.drain(..n).collect()
        };
        if batch.is_empty() {
            if tokio::time::timeout(OUTBOX_IDLE, ob.ready.notified())
                .await
                .is_ok()
            {
                continue;
            }
            let mut q = ob.q.lock();
            if !q.events.is_empty() {
                continue;
            }
            q.closed = true;
            drop(q);
            if let Some(node) = node.upgrade() {
                node.outboxes
                    .remove_if(&ob.node, |_, o| Arc::ptr_eq(o, &ob));
            }
            return;
        }
        let Some(n) = node.upgrade() else { return };
        let give_up = failing_since.is_some_and(|t| t.elapsed() > ANSWER_RETRY);
        ob.publishing.store(batch.len(), Ordering::Release);
        let again = n.publish_batch(&ob.node, batch, give_up).await;
        ob.publishing.store(0, Ordering::Release);
        drop(n);
        if again.is_empty() {
            failing_since = None;
            continue;
        }
        failing_since.get_or_insert_with(Instant::now);
        {
            let mut q = ob.q.lock();
            for e in again.into_iter().rev() {
                q.events.push_front(e);
            }
        }
        tokio::time::sleep(ANSWER_RETRY_PAUSE).await;
    }
}

/// Releases detours one at a time, in the order their `flushed` arrived.
async fn run_releases(node: Weak<Relay>, mut rx: mpsc::UnboundedReceiver<Release>) {
    while let Some(r) = rx.recv().await {
        let Some(n) = node.upgrade() else { return };
        n.release(r).await;
    }
}
