//! Rooms: joining, leaving, broadcasting and presence, on this node and
//! across the cluster.
//!
//! A room's members live in the store (cluster-wide) and in the hub (this
//! node's members, with their connections). Room events reach this node's
//! members from the hub directly and other nodes through one publish to the
//! room's channel, heard only by nodes with members there. The rules that
//! keep presence consistent (join order, the gate, exactly one `peer-left`
//! per membership) are in docs/DESIGN.md ("Join order", "Leave").
//!
//! A room may also be a record made ahead of time (`POST /api/rooms`), with
//! a join token and a lifetime: [`Rooms::join`] shows the store the token
//! (or the connection's grant), which checks it in the same step as the
//! join; [`Rooms::close_room`] tells the members of a room that was deleted
//! or expired, here and on every other node; [`Rooms::sweep_expired`]
//! removes the rooms whose time is up (docs/DESIGN.md, "Rooms with a
//! lifetime").

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::Value;
use tracing::warn;

use crate::bus::NodeEvent;
use crate::core::event::Event;
use crate::core::session::Session;
use crate::core::{cleanup_failed, cluster_err, skip_refused, Core};
use crate::error::{ClientError, ErrorCode};
use crate::metrics as m;
use crate::payload::Opaque;
use crate::store::{now_ms, Membership, RoomAccess, SecretHash, StoreError};
use crate::types::{LeaveReason, Member, PeerId, RoomClosedReason, RoomName};

/// A `peer-left` still owed to other nodes (see `Rooms::pending_left`).
#[derive(Debug)]
struct PendingLeft {
    room: RoomName,
    peer: PeerId,
    reason: LeaveReason,
}

/// Most `peer-left` announcements kept for a retry; older ones are dropped
/// (counted in `switchboard_announcements_dropped_total`) past that.
const MAX_PENDING_LEFT: usize = 65_536;

/// Most `room-closed` announcements kept for a retry (each names every
/// member of its room); older ones are dropped (counted in
/// `switchboard_room_closed_dropped_total`) past that.
const MAX_PENDING_CLOSED: usize = 1_024;

/// Rooms the sweeper asks the store for at a time, and the most pages it
/// takes per pass (what is left waits for the next pass).
const SWEEP_PAGE: usize = 100;
const SWEEP_PAGES: usize = 10;

/// The sender of a message the server itself sends to a room
/// ([`Rooms::publish`]): the empty id, which no peer can hold (a peer id is
/// never empty), so no client passes for the server nor the server for a
/// client.
pub const SERVER_SENDER: &str = "";

/// SHA-256 of a room's join token (the store keeps only this).
pub fn token_hash(token: &str) -> SecretHash {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A fresh room join token: 128 random bits, as 32 lower-case hex digits.
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Rooms on this node; see the module docs.
pub struct Rooms {
    core: Arc<Core>,
    /// `peer-left` announcements still owed to other nodes: their publish
    /// failed after the store removed the membership, or the store call
    /// itself failed (it may still have run: a timed-out command is not
    /// withdrawn). Re-registration cannot find those again; the maintenance
    /// loop publishes them after a clean pass, unless the membership is
    /// still (or again) in the store. Bounded by [`MAX_PENDING_LEFT`].
    pending_left: Mutex<VecDeque<PendingLeft>>,
    /// `room-closed` announcements whose publish failed (the store has
    /// removed the room, so nothing else would tell the members' nodes):
    /// published again by the maintenance loop. Bounded by
    /// [`MAX_PENDING_CLOSED`].
    pending_closed: Mutex<VecDeque<NodeEvent>>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms").finish_non_exhaustive()
    }
}

impl Rooms {
    /// The rooms of `core`'s node.
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            pending_left: Mutex::new(VecDeque::new()),
            pending_closed: Mutex::new(VecDeque::new()),
        }
    }

    /// Joins `s` to `room`, showing `token` (the room's join token, when it
    /// was created with one). The store checks the token, the room's
    /// lifetime and its size in the same step as it adds the member.
    pub async fn join(
        &self,
        s: &mut Session,
        id: Option<Value>,
        room: RoomName,
        meta: Value,
        token: Option<String>,
    ) -> Result<Option<Event>, ClientError> {
        // A room closed under this connection is not one it is in, even if
        // its session has not caught up yet.
        s.sync_rooms(&self.core.hub);
        if s.rooms.contains(&room) && !self.core.hub.is_member(&room, &s.peer, s.epoch) {
            s.rooms.remove(&room);
        }
        let meta = if meta.is_null() { s.meta.clone() } else { meta };
        let member = Member {
            peer_id: s.peer.clone(),
            meta: meta.clone(),
        };
        if s.rooms.contains(&room) {
            // Joining again is harmless: answer with the current members.
            let peers = self
                .core
                .store
                .room_members(&room)
                .await
                .map_err(cluster_err)?
                .unwrap_or_default();
            let peers = peers.into_iter().filter(|p| p.peer_id != s.peer).collect();
            return Ok(Some(Event::Joined { id, room, peers }));
        }
        self.core.require_bus()?;
        if s.rooms.len() >= self.core.cfg.limits.max_rooms_per_peer {
            return Err(ClientError::new(
                ErrorCode::TooManyRooms,
                format!(
                    "a peer may be in at most {} rooms",
                    self.core.cfg.limits.max_rooms_per_peer
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
            .core
            .hub
            .room_add(&room, s.peer.clone(), s.handle.clone(), meta.clone())
        {
            if let Err(e) = self.core.bus.subscribe_room(&room).await {
                self.core.hub.room_remove(&room, &s.peer, s.epoch);
                s.handle.open_gate(None, Some(&room));
                return Err(cluster_err(e));
            }
        }
        let access = RoomAccess {
            token: token.as_deref().map(token_hash),
            granted: s.granted(&room),
        };
        let peers = match self
            .core
            .store
            .join_room_with(
                &room,
                &member,
                s.epoch,
                self.core.cfg.limits.max_peers_per_room,
                &access,
                now_ms(),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                self.drop_local_member(&room, &s.peer, s.epoch).await;
                // A failed join leaks nothing of the room.
                s.handle.open_gate(None, Some(&room));
                return Err(match e {
                    StoreError::RoomFull => {
                        ClientError::new(ErrorCode::RoomFull, format!("room `{room}` is full"))
                    }
                    StoreError::RoomTokenRequired => ClientError::new(
                        ErrorCode::RoomTokenRequired,
                        format!("room `{room}` needs its token: give it as `token` in `join`"),
                    ),
                    StoreError::RoomTokenInvalid => ClientError::new(
                        ErrorCode::RoomTokenInvalid,
                        format!("`token` is not the token of room `{room}`"),
                    ),
                    StoreError::RoomExpired => ClientError::new(
                        ErrorCode::RoomExpired,
                        format!("room `{room}` has expired"),
                    ),
                    e => cluster_err(e),
                });
            }
        };
        s.rooms.insert(room.clone());
        // Announce first, answer second: once the joiner has read `joined`,
        // its `peer-joined` has reached every node, so a peer that joins after
        // that sees it in its own `joined` list and never as a late event.
        let note = Arc::new(Event::PeerJoined {
            room: room.clone(),
            peer_id: s.peer.clone(),
            meta: meta.clone(),
        });
        let (env, tag) = self.core.room_envelope(NodeEvent::PeerJoined {
            room: room.clone(),
            member,
        });
        self.core
            .hub
            .room_fanout_tagged(room.as_str(), Some(s.peer.as_str()), &note, None, tag);
        let _ = self.core.publish_room_env(&room, env).await;
        s.handle.open_gate(
            Some(Event::Joined {
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
        let (removed, emptied) = self.core.hub.room_remove(room, peer, epoch);
        if emptied {
            if let Err(e) = self.core.bus.unsubscribe_room(room).await {
                warn!(room = %room, error = %e, "unsubscribe failed");
            }
        }
        removed
    }

    pub async fn leave(&self, s: &mut Session, room: &RoomName) -> Result<(), ClientError> {
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
    pub async fn leave_room(
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
            let note = Arc::new(Event::PeerLeft {
                room: room.clone(),
                peer_id: peer.clone(),
                reason,
            });
            self.core
                .hub
                .room_fanout(room.as_str(), Some(peer.as_str()), &note, None);
        }
        let removed = match self.core.store.leave_room(room, peer, epoch).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                // The peer has left as far as this node is concerned; the shared
                // view is reconciled when the store is back: re-registration
                // removes the membership if it is still there, and the
                // announcement is owed if the call ran after all.
                cleanup_failed("leave", room, &e);
                self.core.mark_dirty();
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
    pub async fn announce_left(
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
        let r = self.core.publish_room(room, event).await;
        if let Err(e) = &r {
            cleanup_failed("announce", room, &e.message);
            self.owe_left(room, peer, reason);
        }
        r
    }

    /// Remembers a `peer-left` owed to other nodes (see `Rooms::pending_left`).
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

    /// Closes a room the store has just removed (deleted, or expired): its
    /// members on this node get `room-closed` and are dropped from it at
    /// once; the other nodes hear it on the room's channel and do the same
    /// for theirs ([`Self::deliver_remote`]). A publish that fails is kept
    /// and published again by the maintenance loop: the store no longer has
    /// the room, so nothing else would tell them.
    pub async fn close_room(
        &self,
        room: &RoomName,
        reason: RoomClosedReason,
        removed: Vec<Membership>,
    ) {
        if removed.is_empty() {
            return;
        }
        let members: Vec<(PeerId, u64)> = removed
            .into_iter()
            .map(|m| (m.member.peer_id, m.epoch))
            .collect();
        if self.drop_closed(room, reason, &members) {
            if let Err(e) = self.core.bus.unsubscribe_room(room).await {
                warn!(room = %room, error = %e, "unsubscribe failed");
            }
        }
        let event = NodeEvent::RoomClosed {
            room: room.clone(),
            reason,
            members,
        };
        if let Err(e) = self.core.publish_room(room, event.clone()).await {
            cleanup_failed("announce", room, &e.message);
            self.owe_closed(event);
        }
    }

    /// Tells this node's members among `members` that `room` was closed,
    /// and takes them out of it (their sessions drop it before their next
    /// command); true when no local member of the room is left.
    fn drop_closed(
        &self,
        room: &RoomName,
        reason: RoomClosedReason,
        members: &[(PeerId, u64)],
    ) -> bool {
        let note = Arc::new(Event::RoomClosed {
            room: room.clone(),
            reason,
        });
        let mut emptied = false;
        for (peer, epoch) in members {
            let (handle, now_empty) = self.core.hub.room_take(room, peer, *epoch);
            emptied |= now_empty;
            if let Some(h) = handle {
                h.push(note.clone(), None);
                h.note_room_closed();
            }
        }
        emptied
    }

    /// Remembers a `room-closed` owed to other nodes (see `Rooms::pending_closed`).
    fn owe_closed(&self, event: NodeEvent) {
        let mut q = self.pending_closed.lock();
        if q.len() >= MAX_PENDING_CLOSED {
            q.pop_front();
            metrics::counter!(m::ROOM_CLOSED_DROPPED).increment(1);
        }
        q.push_back(event);
    }

    /// Publishes the `room-closed` announcements still owed, in order,
    /// until one fails again.
    async fn flush_pending_closed(&self) {
        // Bounded: at most what was queued when this started.
        let n = self.pending_closed.lock().len();
        for _ in 0..n {
            let Some(event) = self.pending_closed.lock().pop_front() else {
                return;
            };
            let NodeEvent::RoomClosed { room, .. } = &event else {
                continue;
            };
            let room = room.clone();
            if self.core.publish_room(&room, event.clone()).await.is_err() {
                self.pending_closed.lock().push_front(event);
                return;
            }
        }
    }

    /// Removes the rooms whose lifetime has run out, and tells their
    /// members ([`Self::close_room`], reason `expired`). Run by the node
    /// that holds the sweeper's lease; each room is removed by exactly one
    /// caller, whichever node it is on, so two sweepers at once (a lease
    /// that changed hands) still close each room once. At most
    /// `SWEEP_PAGES` pages of `SWEEP_PAGE` rooms per pass. Returns how many
    /// rooms this call removed.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for _ in 0..SWEEP_PAGES {
            let now = now_ms();
            let due = self.core.store.expiring_rooms(now, SWEEP_PAGE).await?;
            let last = due.len() < SWEEP_PAGE;
            for room in due {
                if let Some(removed) = self.core.store.expire_room(&room, now).await? {
                    n += 1;
                    metrics::counter!(m::ROOMS_EXPIRED).increment(1);
                    self.close_room(&room, RoomClosedReason::Expired, removed)
                        .await;
                }
            }
            if last {
                break;
            }
        }
        Ok(n)
    }

    /// Publishes the `peer-left` announcements still owed, in order, until
    /// one fails again. Called only after a clean re-registration pass (or
    /// when none was needed), which has removed, and announced, every
    /// membership of this node the hub no longer holds: one still in the
    /// store now belongs to a newer connection (the peer joined again), and
    /// its announcement is dropped, since it would contradict that
    /// connection's `peer-joined`.
    pub async fn flush_pending_left(&self) {
        self.flush_pending_closed().await;
        // Bounded: at most what was queued when this started.
        let n = self.pending_left.lock().len();
        for _ in 0..n {
            let Some(p) = self.pending_left.lock().pop_front() else {
                return;
            };
            let back = match self.core.store.room_members(&p.room).await {
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
            if self.core.publish_room(&p.room, event).await.is_err() {
                self.pending_left.lock().push_front(p);
                return;
            }
        }
    }

    pub async fn broadcast(
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
        let msg = Arc::new(Event::Message {
            room: room.clone(),
            from: s.peer.clone(),
            data: data.clone(),
        });
        let (env, tag) = self.core.room_envelope(NodeEvent::Message {
            room: room.clone(),
            from: s.peer.clone(),
            data,
        });
        self.core.hub.room_fanout_tagged(
            room.as_str(),
            Some(s.peer.as_str()),
            &msg,
            Some(received),
            tag,
        );
        self.core.publish_room_env(&room, env).await
    }

    /// Sends `data` to every member of `room`, on every node, as a
    /// `message` from [`SERVER_SENDER`] (the server itself: no peer can hold
    /// that id). For `POST /api/publish`, and for telling a session's peers
    /// something from the server side. No member anywhere is not an error:
    /// the publish reaches nobody.
    pub async fn publish(&self, room: &RoomName, data: Value) -> Result<(), ClientError> {
        let text = serde_json::to_string(&data)
            .map_err(|e| ClientError::new(ErrorCode::InvalidMessage, format!("data: {e}")))?;
        let raw = serde_json::value::RawValue::from_string(text)
            .map_err(|e| ClientError::new(ErrorCode::InvalidMessage, format!("data: {e}")))?;
        let data = Opaque::Json(raw);
        let from = PeerId::from_trusted(SERVER_SENDER);
        let msg = Arc::new(Event::Message {
            room: room.clone(),
            from: from.clone(),
            data: data.clone(),
        });
        let (env, tag) = self.core.room_envelope(NodeEvent::Message {
            room: room.clone(),
            from,
            data,
        });
        self.core
            .hub
            .room_fanout_tagged(room.as_str(), None, &msg, None, tag);
        self.core.publish_room_env(room, env).await
    }

    /// A room event from another node: to this node's members of the room,
    /// with its tag ([`crate::core::hub::event_tag`]; 0 when unknown).
    pub fn deliver_remote(&self, event: NodeEvent, tag: u64) {
        let hub = &self.core.hub;
        match event {
            NodeEvent::Message { room, from, data } => {
                let msg = Arc::new(Event::Message {
                    room: room.clone(),
                    from: from.clone(),
                    data,
                });
                hub.room_fanout_tagged(room.as_str(), Some(from.as_str()), &msg, None, tag);
            }
            NodeEvent::PeerJoined { room, member } => {
                let msg = Arc::new(Event::PeerJoined {
                    room: room.clone(),
                    peer_id: member.peer_id.clone(),
                    meta: member.meta,
                });
                hub.room_fanout_tagged(
                    room.as_str(),
                    Some(member.peer_id.as_str()),
                    &msg,
                    None,
                    tag,
                );
            }
            NodeEvent::PeerLeft {
                room,
                peer_id,
                reason,
            } => {
                let msg = Arc::new(Event::PeerLeft {
                    room: room.clone(),
                    peer_id: peer_id.clone(),
                    reason,
                });
                hub.room_fanout_tagged(room.as_str(), Some(peer_id.as_str()), &msg, None, tag);
            }
            NodeEvent::RoomClosed {
                room,
                reason,
                members,
            } => self.closed_remotely(room, reason, &members),
            _ => {}
        }
    }

    /// Another node closed `room`: this node's members among `members` are
    /// told and dropped; when none is left here, the node stops listening
    /// to the room (in a task: this runs on the bus reader's path).
    fn closed_remotely(&self, room: RoomName, reason: RoomClosedReason, members: &[(PeerId, u64)]) {
        if !self.drop_closed(&room, reason, members) {
            return;
        }
        let core = self.core.clone();
        self.core.spawn(async move {
            // Unless a peer here joined a room of that name meanwhile.
            if !core.hub.has_room(&room) {
                if let Err(e) = core.bus.unsubscribe_room(&room).await {
                    warn!(room = %room, error = %e, "unsubscribe failed");
                }
            }
        });
    }

    /// Tells every node (this one included) that members of a dead node
    /// left (reason `timeout`); the store has already removed them.
    pub async fn announce_reaped(&self, left: Vec<(RoomName, PeerId)>) {
        for (room, peer_id) in left {
            let note = Arc::new(Event::PeerLeft {
                room: room.clone(),
                peer_id: peer_id.clone(),
                reason: LeaveReason::Timeout,
            });
            self.core.hub.room_fanout(room.as_str(), None, &note, None);
            // The store no longer has these: a failed publish is kept and
            // published again by the maintenance loop.
            let _ = self
                .announce_left(&room, &peer_id, LeaveReason::Timeout)
                .await;
        }
    }

    /// Re-registration, rooms' part: puts every local membership back in
    /// the store (and resubscribes its room), announcing the ones that were
    /// missing. An outage fails the whole pass (it is tried again later); a
    /// refused step is counted and skipped.
    pub async fn restore_members(&self) -> Result<(), StoreError> {
        for (room, peer, epoch, meta) in &self.core.hub.memberships() {
            if let Err(e) = self.core.bus.subscribe_room(room).await {
                warn!(room = %room, error = %e, "resubscribe failed");
            }
            let member = Member {
                peer_id: peer.clone(),
                meta: meta.clone(),
            };
            let r = self.core.store.restore_member(room, &member, *epoch).await;
            if skip_refused("restore-member", room, r)? == Some(true) {
                let event = NodeEvent::PeerJoined {
                    room: room.clone(),
                    member,
                };
                let _ = self.core.publish_room(room, event).await;
            }
        }
        Ok(())
    }

    /// Re-registration, rooms' part: removes the memberships the store
    /// still lists for this node but the hub no longer holds (asked of the
    /// hub now, not of an earlier snapshot), announcing each once.
    pub async fn remove_stale(&self, stale: &[(RoomName, PeerId, u64)]) -> Result<(), StoreError> {
        for (room, peer, epoch) in stale {
            if self.core.hub.is_member(room, peer, *epoch) {
                continue;
            }
            let r = self.core.store.leave_room(room, peer, *epoch).await;
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
        Ok(())
    }
}
