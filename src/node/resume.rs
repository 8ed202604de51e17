//! Session resume: a native session outlives its socket for
//! `resume.window_ms`, and a `hello` with its resume token takes it back
//! on any node, with every message it missed, in order, none twice.
//!
//! **Parking.** A native connection that ends without its client saying it
//! is done (see [`CloseReason::resumable`]) does not leave its rooms, its
//! pairing or the directory: its session is *parked* on its node. Its hub
//! entry and room memberships stay, so whatever is sent to it (direct
//! signals, room events, `paired`...) keeps collecting in its queue, within
//! the queue's bounds (past them it is counted, and a resume fails with
//! `overflow`). Nobody sees a leave or a join. Every resumable message is
//! numbered (`seq`) as it enters the queue, and the connection keeps what
//! it wrote until a pong shows the client read it
//! ([`Written`]), so a resume can send again what died
//! in the socket.
//!
//! **Resuming on the same node** swaps the new socket in: same epoch, the
//! parked queue and the unread written messages replayed first.
//!
//! **Resuming on another node** (the new node) moves the session from the
//! node that parked it (the old node), through the bus:
//!
//! 1. the new node takes the peer id in its hub under the session's epoch
//!    (gate closed: what arrives is held) and in the directory, proving
//!    itself with the token's secret, then asks the old node (`ask`);
//! 2. the old node takes the session out of its peer map (direct signals
//!    now bounce to the new node, in order: see [`crate::relay`]) and
//!    answers with its rooms (`rooms`);
//! 3. the new node joins those rooms locally and in the store (no
//!    `peer-joined`), subscribes to them, and answers `ready`;
//! 4. the old node takes the session out of its rooms and sends everything
//!    after the client's `last_seq` (`data`). Room events published
//!    between step 3 and 4 reach both nodes: each carries a tag
//!    ([`crate::core::hub::event_tag`]), and the new node drops the held
//!    copies of those the old node sent.
//!
//! A session that cannot be resumed (window over, overflow, a `last_seq`
//! from the future, an old node that does not answer) gives
//! `resume-failed {reason, missed}` and a fresh session: never a silent gap.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info};

use super::{hash_secret, Node, Welcome};
use crate::bus::{NodeEvent, Replayed, ResumeStep, ResumedState};
use crate::core::event::Event;
use crate::core::hub::{queued_cost, CloseReason, ConnHandle, Outbound, OutboundRx, Written};
use crate::core::session::Session;
use crate::metrics as m;
use crate::store::{Claim, Claimed, PeerLocation};
use crate::types::{Member, NodeId, PeerId, RoomName};

/// Hex digits of the secret at the start of a resume token.
const SECRET_LEN: usize = 32;

/// The resume token of a session: its reconnect secret, then its peer id.
pub fn token(secret: &str, peer: &PeerId) -> String {
    format!("{secret}{peer}")
}

/// The secret and the peer id of a resume token.
fn parse_token(t: &str, max_name: usize) -> Option<(&str, PeerId)> {
    if t.len() <= SECRET_LEN || !t.is_char_boundary(SECRET_LEN) {
        return None;
    }
    let (secret, peer) = t.split_at(SECRET_LEN);
    if !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((secret, PeerId::parse(peer, max_name).ok()?))
}

/// Every `resume-failed.reason` (and `outcome` label of
/// `switchboard_resumes_total`).
const FAILURES: [&str; 8] = [
    "expired",
    "overflow",
    "unknown-seq",
    "node-lost",
    "disabled",
    "draining",
    "unavailable",
    "unknown",
];

/// A session waiting for its client.
struct Parked {
    session: Session,
    /// Keeps the queue open: pushes still land in it.
    _rx: OutboundRx,
    /// What its socket wrote and the client may not have read.
    written: Written,
    /// How its socket ended (the leave reason if it is never resumed).
    why: CloseReason,
    /// When it ends unless resumed.
    until: Instant,
    /// A resume on another node is taking it: that node, the client's
    /// `last_seq`, since when.
    handing: Option<(NodeId, u64, Instant)>,
}

/// A resume that could not be done: the client gets `resume-failed` and a
/// fresh session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFailed {
    /// `resume-failed.reason`.
    pub reason: String,
    /// `resume-failed.missed`.
    pub missed: Option<u64>,
}

impl ResumeFailed {
    fn new(reason: &str, missed: Option<u64>) -> Self {
        Self {
            reason: reason.to_string(),
            missed,
        }
    }

    /// The message for the client.
    pub fn into_event(self) -> Event {
        Event::ResumeFailed {
            reason: self.reason,
            missed: self.missed,
        }
    }
}

/// A resumed session, ready to be answered.
#[derive(Debug)]
pub struct Resumed {
    /// The session, owned by the new socket's task from now on.
    pub session: Session,
    /// Its `welcome` (`resumed: true`).
    pub welcome: Welcome,
    /// What the client missed, numbered, in order.
    pub replay: Vec<Outbound>,
    /// Tags of the room events in `replay` (see the module docs, step 4).
    pub seen: HashSet<u64>,
    /// The session's next `seq`.
    pub next_seq: u64,
}

/// A resume of a socket that still looked alive: its epoch, the node that
/// asked (`None`: this one), the client's `last_seq`.
type LiveAsk = (u64, Option<NodeId>, u64);

/// The node's parked sessions and the resumes it waits on.
#[derive(Default)]
pub struct Resumes {
    node: OnceLock<Weak<Node>>,
    parked: Mutex<HashMap<PeerId, Parked>>,
    /// Resumes on this node waiting for the old node: `(peer, epoch)` →
    /// where its answers go.
    waiting: Mutex<HashMap<(PeerId, u64), mpsc::UnboundedSender<ResumeStep>>>,
    /// Resumes of a session whose socket still looked alive here (its
    /// client knew better): `peer` → `(epoch, the node that asked (None:
    /// this one), last_seq)`, served once that socket has parked.
    asked_live: Mutex<HashMap<PeerId, LiveAsk>>,
    /// Woken whenever a session parks or stops being parked.
    changed: Notify,
}

impl std::fmt::Debug for Resumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumes")
            .field("parked", &self.parked.lock().len())
            .finish_non_exhaustive()
    }
}

impl Resumes {
    /// Records the node (once, right after it is built).
    pub fn set_node(&self, node: Weak<Node>) {
        let _ = self.node.set(node);
    }

    /// Sessions parked here now.
    pub fn parked_count(&self) -> usize {
        self.parked.lock().len()
    }
}

/// Checks that the parked session has everything after `last_seq`.
fn check(p: &Parked, last_seq: u64) -> Result<(), ResumeFailed> {
    let missed = p.session.handle.missed();
    if missed > 0 {
        return Err(ResumeFailed::new("overflow", Some(missed)));
    }
    let next = p.session.handle.next_seq();
    if last_seq >= next.max(1) {
        return Err(ResumeFailed::new("unknown-seq", None));
    }
    if last_seq < p.written.dropped {
        return Err(ResumeFailed::new(
            "overflow",
            Some(p.written.dropped - last_seq),
        ));
    }
    Ok(())
}

/// Everything numbered after `last_seq`: what was written (unread), then
/// what is still queued. Answers and other unnumbered messages are not
/// owed (they answered the old socket's requests).
fn owed(p: &mut Parked, last_seq: u64) -> (Vec<Outbound>, u64) {
    let (queued, next_seq, _) = p.session.handle.take_parked();
    let ring = std::mem::take(&mut p.written.ring);
    let replay = ring
        .into_iter()
        .chain(queued)
        .filter(|o| o.seq > last_seq)
        .collect();
    (replay, next_seq)
}

impl Node {
    /// Keeps a session whose socket ended (see the module docs): its queue
    /// goes on collecting until a resume or the end of the window.
    pub fn park(&self, session: Session, rx: OutboundRx, written: Written, why: CloseReason) {
        session.handle.park();
        let (peer, epoch) = (session.peer.clone(), session.epoch);
        debug!(peer = %peer, reason = why.reason, "session parked");
        metrics::gauge!(m::PARKED).increment(1.0);
        let until = Instant::now() + self.core.cfg.resume.window;
        self.resumes.parked.lock().insert(
            peer.clone(),
            Parked {
                session,
                _rx: rx,
                written,
                why,
                until,
                handing: None,
            },
        );
        self.resumes.changed.notify_waiters();
        // A resume elsewhere asked while the socket still looked alive.
        let asked = self.resumes.asked_live.lock().remove(&peer);
        if let Some((e, Some(from), last_seq)) = asked.filter(|a| a.0 == epoch) {
            self.step_later(
                from,
                ResumeStep::Ask {
                    peer,
                    epoch: e,
                    last_seq,
                },
            );
        }
    }

    /// Ends a parked session as its socket's end would have without
    /// resume: its rooms hear it left, its partner that the pairing ended.
    async fn end_parked(&self, p: Parked) {
        metrics::gauge!(m::PARKED).decrement(1.0);
        metrics::counter!(m::PARKED_EXPIRED).increment(1);
        self.resumes.changed.notify_waiters();
        let _ = p.session.handle.take_parked();
        self.disconnect(&p.session, p.why).await;
    }

    /// A newer connection took the peer id of session `epoch` (a proven
    /// `hello` without `resume`): if it was parked here, it ends now (its
    /// rooms hear it left), in a task.
    pub(super) fn end_replaced_parked(&self, peer: &PeerId, epoch: u64) {
        let p = {
            let mut parked = self.resumes.parked.lock();
            match parked.get(peer) {
                Some(p) if p.session.epoch == epoch && p.handing.is_none() => parked.remove(peer),
                _ => None,
            }
        };
        let (Some(mut p), Some(node)) = (p, self.resumes.node.get().and_then(Weak::upgrade)) else {
            return;
        };
        p.why = CloseReason::REPLACED;
        self.core.spawn(async move { node.end_parked(p).await });
    }

    /// Ends the parked sessions whose window is over (and those a resume
    /// elsewhere took but never finished: its node gave up long ago).
    async fn expire(&self) {
        let now = Instant::now();
        let stuck = self.core.cfg.resume.handover_timeout.saturating_mul(2);
        let over: Vec<Parked> = {
            let mut parked = self.resumes.parked.lock();
            let peers: Vec<PeerId> = parked
                .iter()
                .filter(|(_, p)| match &p.handing {
                    None => p.until <= now,
                    Some((_, _, since)) => since.elapsed() > stuck,
                })
                .map(|(k, _)| k.clone())
                .collect();
            peers.iter().filter_map(|k| parked.remove(k)).collect()
        };
        for p in over {
            debug!(peer = %p.session.peer, "parked session not resumed in time; ended");
            self.end_parked(p).await;
        }
    }

    /// At the end of a drain: waits until every parked session was resumed
    /// elsewhere, at most until `deadline`, then ends the rest.
    pub(super) async fn drain_parked(&self, deadline: tokio::time::Instant) {
        loop {
            let changed = self.resumes.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let n = self.resumes.parked_count();
            if n == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                info!(
                    parked = n,
                    "grace period over; ending sessions nobody resumed"
                );
                break;
            }
        }
        let rest: Vec<Parked> = self.resumes.parked.lock().drain().map(|(_, p)| p).collect();
        for p in rest {
            self.end_parked(p).await;
        }
    }

    /// Resumes the session of `token` on the connection of `handle` (whose
    /// gate the caller closed), wherever it is parked.
    pub async fn resume(
        &self,
        handle: &ConnHandle,
        token: &str,
        last_seq: u64,
        observed: SocketAddr,
    ) -> Result<Resumed, ResumeFailed> {
        let r = self.resume_inner(handle, token, last_seq, observed).await;
        let outcome = match &r {
            Ok(_) => "resumed",
            Err(f) => FAILURES
                .into_iter()
                .find(|known| *known == f.reason)
                .unwrap_or("unknown"),
        };
        metrics::counter!(m::RESUMES, "outcome" => outcome).increment(1);
        r
    }

    /// [`Self::resume`], before it is counted.
    async fn resume_inner(
        &self,
        handle: &ConnHandle,
        token: &str,
        last_seq: u64,
        observed: SocketAddr,
    ) -> Result<Resumed, ResumeFailed> {
        if !self.core.cfg.resume.enabled {
            return Err(ResumeFailed::new("disabled", None));
        }
        if self.core.is_draining() {
            return Err(ResumeFailed::new("draining", None));
        }
        let Some((secret, peer)) = parse_token(token, self.core.cfg.limits.max_name_bytes) else {
            return Err(ResumeFailed::new("unknown", None));
        };
        let proof = hash_secret(secret);
        // Here, parked; or here, on a socket its client has already given up
        // (closed as taken over, then parked: asked once).
        for attempt in 0..2 {
            let found = {
                let mut parked = self.resumes.parked.lock();
                match parked.get(&peer) {
                    Some(p)
                        if p.handing.is_none()
                            && self.rdv.secret_is(&peer, p.session.epoch, &proof) =>
                    {
                        parked.remove(&peer)
                    }
                    _ => None,
                }
            };
            if let Some(mut p) = found {
                if let Err(f) = check(&p, last_seq) {
                    self.end_parked(p).await;
                    return Err(f);
                }
                metrics::gauge!(m::PARKED).decrement(1.0);
                self.resumes.changed.notify_waiters();
                return Ok(self.resume_here(handle, &mut p, secret, token, last_seq, observed));
            }
            let live = self
                .core
                .hub
                .get(&peer)
                .filter(|h| !h.is_parked() && self.rdv.secret_is(&peer, h.epoch, &proof));
            match live {
                Some(h) if attempt == 0 => {
                    let parked = self.resumes.changed.notified();
                    tokio::pin!(parked);
                    parked.as_mut().enable();
                    self.resumes
                        .asked_live
                        .lock()
                        .insert(peer.clone(), (h.epoch, None, last_seq));
                    h.close(CloseReason::RESUMED);
                    let within = self.core.cfg.resume.handover_timeout;
                    // Bounded: the socket's task parks it within its close timeout.
                    let _ = tokio::time::timeout(within, async {
                        while !self.resumes.parked.lock().contains_key(&peer) {
                            parked.as_mut().await;
                            parked.set(self.resumes.changed.notified());
                            parked.as_mut().enable();
                        }
                    })
                    .await;
                    self.resumes.asked_live.lock().remove(&peer);
                }
                _ => break,
            }
        }
        if self.core.hub.get(&peer).is_some() {
            // Held here, and the proof did not match it.
            return Err(ResumeFailed::new("unknown", None));
        }
        if !self.core.bus.is_connected() {
            return Err(ResumeFailed::new("unavailable", None));
        }
        let loc = match self.core.store.locate_peer(&peer).await {
            Ok(Some(loc)) if loc.node != self.core.id => loc,
            Ok(_) => return Err(ResumeFailed::new("expired", None)),
            Err(_) => return Err(ResumeFailed::new("unavailable", None)),
        };
        if !self.core.node_is_alive(&loc.node) {
            return Err(ResumeFailed::new("node-lost", None));
        }
        self.resume_from(handle, peer, loc, proof, secret, token, last_seq, observed)
            .await
    }

    /// Swaps the new socket into a session parked here.
    fn resume_here(
        &self,
        handle: &ConnHandle,
        p: &mut Parked,
        secret: &str,
        token: &str,
        last_seq: u64,
        observed: SocketAddr,
    ) -> Resumed {
        let (peer, epoch) = (p.session.peer.clone(), p.session.epoch);
        let (replay, next_seq) = owed(p, last_seq);
        let rebound = handle.with_epoch(epoch);
        // Swapped in the same breath as the room memberships below: the
        // parked queue refuses pushes from now on, and the new one takes them.
        if self
            .core
            .hub
            .register_if(peer.clone(), rebound.clone(), Some(epoch))
            .is_err()
        {
            self.core.hub.register(peer.clone(), rebound.clone());
        }
        for room in &p.session.rooms {
            self.core
                .hub
                .room_rebind(room, &peer, epoch, rebound.clone());
        }
        rebound.mark_registered();
        let worker = p.session.rdv.is_worker().then(|| {
            (
                (*p.session.rdv.pool_label.lock()).to_string(),
                p.session.rdv.pairing.lock().clone(),
            )
        });
        let (rdv, stun) = self
            .rdv
            .adopt(&peer, epoch, observed, p.session.rdv.secret, worker);
        let session = Session {
            peer,
            epoch,
            handle: rebound,
            meta: std::mem::take(&mut p.session.meta),
            rooms: std::mem::take(&mut p.session.rooms),
            rdv,
            room_grants: std::mem::take(&mut p.session.room_grants),
            resumable: true,
        };
        self.resumed_note(&session, observed);
        let mut welcome = self.welcome(&session, observed, stun, secret.into(), token.into());
        welcome.resumed = true;
        Resumed {
            session,
            welcome,
            replay,
            seen: HashSet::new(),
            next_seq,
        }
    }

    fn resumed_note(&self, s: &Session, observed: SocketAddr) {
        debug!(peer = %s.peer, "session resumed");
        self.core.activity.note(crate::core::Note::Connected {
            peer: s.peer.clone(),
            door: "native",
            observed: observed.to_string(),
        });
    }

    /// Moves a session parked on another node here (see the module docs).
    #[allow(clippy::too_many_arguments)]
    async fn resume_from(
        &self,
        handle: &ConnHandle,
        peer: PeerId,
        loc: PeerLocation,
        proof: crate::store::SecretHash,
        secret: &str,
        token: &str,
        last_seq: u64,
        observed: SocketAddr,
    ) -> Result<Resumed, ResumeFailed> {
        let epoch = loc.epoch;
        let rebound = handle.with_epoch(epoch);
        // The hub first: it never lags the directory (see `Node::reregister`).
        if self
            .core
            .hub
            .register_if(peer.clone(), rebound.clone(), None)
            .is_err()
        {
            return Err(ResumeFailed::new("unknown", None));
        }
        let (tx, mut steps) = mpsc::unbounded_channel();
        let key = (peer.clone(), epoch);
        self.resumes.waiting.lock().insert(key.clone(), tx);
        let mut rooms: Vec<RoomName> = Vec::new();
        let r = async {
            let here = PeerLocation {
                node: self.core.id.clone(),
                epoch,
            };
            let claim = Claim {
                token_for_id: false,
                presented: Some(proof),
                secret: proof,
            };
            match self.core.store.claim_peer(&peer, here, &claim).await {
                Ok(Claimed::Registered(Some(prev))) if prev == loc => {}
                Ok(Claimed::Registered(_)) => return Err(ResumeFailed::new("expired", None)),
                Ok(Claimed::Taken(_)) => return Err(ResumeFailed::new("unknown", None)),
                Err(_) => return Err(ResumeFailed::new("unavailable", None)),
            }
            let ask = ResumeStep::Ask {
                peer: peer.clone(),
                epoch,
                last_seq,
            };
            match self
                .core
                .publish_node(&loc.node, NodeEvent::Resume(Box::new(ask)))
                .await
            {
                Ok(n) if n > 0 => {}
                _ => return Err(ResumeFailed::new("node-lost", None)),
            }
            let deadline = tokio::time::Instant::now() + self.core.cfg.resume.handover_timeout;
            macro_rules! next {
                () => {
                    tokio::time::timeout_at(deadline, steps.recv())
                        .await
                        .ok()
                        .flatten()
                };
            }
            match next!() {
                Some(ResumeStep::Rooms { rooms: list, .. }) => {
                    for (room, meta) in list {
                        if self
                            .core
                            .hub
                            .room_add(&room, peer.clone(), rebound.clone(), meta.clone())
                        {
                            if let Err(e) = self.core.bus.subscribe_room(&room).await {
                                debug!(room = %room, error = %e, "subscribe failed");
                                rooms.push(room);
                                return Err(ResumeFailed::new("unavailable", None));
                            }
                        }
                        let member = Member {
                            peer_id: peer.clone(),
                            meta,
                        };
                        if let Err(e) = self.core.store.restore_member(&room, &member, epoch).await
                        {
                            debug!(room = %room, error = %e, "membership not moved; re-registering");
                            self.core.mark_dirty();
                        }
                        rooms.push(room);
                    }
                }
                Some(ResumeStep::Refused { reason, missed, .. }) => {
                    return Err(ResumeFailed { reason, missed })
                }
                _ => return Err(ResumeFailed::new("node-lost", None)),
            }
            let ready = ResumeStep::Ready {
                peer: peer.clone(),
                epoch,
            };
            if self
                .core
                .publish_node(&loc.node, NodeEvent::Resume(Box::new(ready)))
                .await
                .is_err()
            {
                return Err(ResumeFailed::new("node-lost", None));
            }
            match next!() {
                Some(ResumeStep::Data { state, .. }) => Ok(state),
                Some(ResumeStep::Refused { reason, missed, .. }) => {
                    Err(ResumeFailed { reason, missed })
                }
                _ => Err(ResumeFailed::new("node-lost", None)),
            }
        }
        .await;
        self.resumes.waiting.lock().remove(&key);
        let state = match r {
            Ok(state) => state,
            Err(f) => {
                // Undone as a disconnect would: what the session had here is
                // lost with it, and its rooms hear it left.
                for room in &rooms {
                    let _ = self
                        .rooms
                        .leave_room(&peer, epoch, room, crate::types::LeaveReason::Disconnected)
                        .await;
                }
                self.core.hub.unregister(&peer, epoch);
                if let Err(e) = self.core.store.unregister_peer(&peer, epoch).await {
                    debug!(peer = %peer, error = %e, "directory entry of a failed resume left");
                    self.core.mark_dirty();
                }
                return Err(f);
            }
        };
        let ResumedState {
            meta,
            room_grants,
            replay,
            next_seq,
            worker,
        } = *state;
        let (rdv, stun) = self.rdv.adopt(&peer, epoch, observed, proof, worker);
        if let Err(e) = self.rdv.resumed_here(&rdv).await {
            debug!(peer = %peer, error = %e, "worker record not moved; re-registering");
            self.core.mark_dirty();
        }
        rebound.mark_registered();
        let mut seen = HashSet::new();
        let replay = replay
            .into_iter()
            .map(|r| {
                if r.tag != 0 {
                    seen.insert(r.tag);
                }
                let msg = Event::from_replay(r.msg);
                Outbound {
                    cost: queued_cost(&msg),
                    msg: Arc::new(msg),
                    received: None,
                    forced: false,
                    seq: r.seq,
                    tag: r.tag,
                }
            })
            .collect();
        let session = Session {
            peer,
            epoch,
            handle: rebound,
            meta,
            rooms: rooms.into_iter().collect(),
            rdv,
            room_grants: room_grants.into_boxed_slice(),
            resumable: true,
        };
        self.resumed_note(&session, observed);
        let mut welcome = self.welcome(&session, observed, stun, secret.into(), token.into());
        welcome.resumed = true;
        Ok(Resumed {
            session,
            welcome,
            replay,
            seen,
            next_seq,
        })
    }

    /// A resume step from another node (handled in a task of its own: the
    /// bus reader's path does not wait).
    pub(super) fn resume_step(&self, origin: &NodeId, step: ResumeStep) {
        match step {
            // Answers to a resume waiting here.
            ResumeStep::Rooms {
                ref peer, epoch, ..
            }
            | ResumeStep::Data {
                ref peer, epoch, ..
            }
            | ResumeStep::Refused {
                ref peer, epoch, ..
            } => {
                let tx = self
                    .resumes
                    .waiting
                    .lock()
                    .get(&(peer.clone(), epoch))
                    .cloned();
                match tx {
                    Some(tx) => {
                        let _ = tx.send(step);
                    }
                    None => debug!(peer = %peer, "resume step for no waiting resume; dropped"),
                }
            }
            step => self.step_later(origin.clone(), step),
        }
    }

    /// Runs an `ask` or `ready` from `from` in a task.
    fn step_later(&self, from: NodeId, step: ResumeStep) {
        let Some(node) = self.resumes.node.get().and_then(Weak::upgrade) else {
            return;
        };
        self.core.spawn(async move {
            let answer = node.old_side(&from, step).await;
            if let Some(answer) = answer {
                if node
                    .core
                    .publish_node(&from, NodeEvent::Resume(Box::new(answer)))
                    .await
                    .is_err()
                {
                    debug!(node = %from, "resume answer not published");
                }
            }
        });
    }

    /// The old node's side of a resume elsewhere: `ask` and `ready`.
    async fn old_side(&self, from: &NodeId, step: ResumeStep) -> Option<ResumeStep> {
        match step {
            ResumeStep::Ask {
                peer,
                epoch,
                last_seq,
            } => {
                let refused = |reason: &str, missed| ResumeStep::Refused {
                    peer: peer.clone(),
                    epoch,
                    reason: reason.into(),
                    missed,
                };
                let failed = {
                    let mut parked = self.resumes.parked.lock();
                    match parked.get_mut(&peer) {
                        Some(p) if p.session.epoch == epoch && p.handing.is_none() => {
                            match check(p, last_seq) {
                                Ok(()) => {
                                    p.handing = Some((from.clone(), last_seq, Instant::now()));
                                    // Direct signals bounce to the new node from now on.
                                    self.core.hub.unregister(&peer, epoch);
                                    let rooms = p
                                        .session
                                        .rooms
                                        .iter()
                                        .map(|r| {
                                            let meta = self
                                                .core
                                                .hub
                                                .member_meta(r, &peer, epoch)
                                                .unwrap_or_else(|| p.session.meta.clone());
                                            (r.clone(), meta)
                                        })
                                        .collect();
                                    return Some(ResumeStep::Rooms { peer, epoch, rooms });
                                }
                                Err(f) => Some((parked.remove(&peer), f)),
                            }
                        }
                        _ => None,
                    }
                };
                if let Some((Some(p), f)) = failed {
                    self.end_parked(p).await;
                    return Some(refused(&f.reason, f.missed));
                }
                // A socket that still looks alive here: close it, and answer
                // once it has parked.
                if let Some(h) = self
                    .core
                    .hub
                    .get(&peer)
                    .filter(|h| h.epoch == epoch && !h.is_parked())
                {
                    self.resumes
                        .asked_live
                        .lock()
                        .insert(peer.clone(), (epoch, Some(from.clone()), last_seq));
                    h.close(CloseReason::RESUMED);
                    return None;
                }
                Some(refused("expired", None))
            }
            ResumeStep::Ready { peer, epoch } => {
                let taken = {
                    let mut parked = self.resumes.parked.lock();
                    match parked.get(&peer) {
                        Some(p)
                            if p.session.epoch == epoch
                                && p.handing.as_ref().is_some_and(|(n, _, _)| n == from) =>
                        {
                            parked.remove(&peer)
                        }
                        _ => None,
                    }
                };
                let Some(mut p) = taken else {
                    // Nothing to hand over (it expired meanwhile): the other
                    // node times out and starts a fresh session.
                    return Some(ResumeStep::Refused {
                        peer,
                        epoch,
                        reason: "expired".into(),
                        missed: None,
                    });
                };
                metrics::gauge!(m::PARKED).decrement(1.0);
                self.resumes.changed.notify_waiters();
                for room in &p.session.rooms {
                    let (_, emptied) = self.core.hub.room_remove(room, &peer, epoch);
                    if emptied {
                        if let Err(e) = self.core.bus.unsubscribe_room(room).await {
                            debug!(room = %room, error = %e, "unsubscribe failed");
                        }
                    }
                }
                let last_seq = p.handing.as_ref().map_or(0, |h| h.1);
                let (replay, next_seq) = owed(&mut p, last_seq);
                let replay = replay
                    .into_iter()
                    .filter_map(|o| {
                        Some(Replayed {
                            seq: o.seq,
                            tag: o.tag,
                            msg: o.msg.to_replay()?,
                        })
                    })
                    .collect();
                let worker = self.rdv.hand_over(&p.session);
                self.core.activity.note(crate::core::Note::Disconnected {
                    peer: peer.clone(),
                    reason: "resumed-elsewhere",
                });
                debug!(peer = %peer, node = %from, "parked session handed over");
                let state = ResumedState {
                    meta: std::mem::take(&mut p.session.meta),
                    room_grants: p.session.room_grants.to_vec(),
                    replay,
                    next_seq,
                    worker,
                };
                Some(ResumeStep::Data {
                    peer,
                    epoch,
                    state: Box::new(state),
                })
            }
            _ => None,
        }
    }
}

/// Ends parked sessions whose window is over, four times per window (at
/// least every second).
pub(super) async fn expire_parked(node: Weak<Node>) {
    let period = match node.upgrade() {
        Some(n) => {
            (n.core.cfg.resume.window / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
        }
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.expire().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_secret_and_peer() {
        let secret = "0123456789abcdef0123456789abcdef";
        let peer = PeerId::parse("alice.example", 128).expect("peer");
        let t = token(secret, &peer);
        let (s, p) = parse_token(&t, 128).expect("parses");
        assert_eq!((s, p), (secret, peer));
        assert!(parse_token(secret, 128).is_none(), "no peer");
        assert!(parse_token("zz", 128).is_none());
        let bad = format!("{}alice", "g".repeat(32));
        assert!(parse_token(&bad, 128).is_none(), "not hex");
        assert!(parse_token("é".repeat(20).as_str(), 128).is_none());
    }
}
