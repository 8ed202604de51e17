//! Rooms: joining, leaving, broadcasting and presence, on this node and
//! across the cluster.
//!
//! A room's members live in the store (cluster-wide) and in the hub (this
//! node's members, with their connections). Room events reach this node's
//! members from the hub directly and other nodes through one publish to the
//! room's channel, heard only by nodes with members there. The rules that
//! keep presence consistent (join order, the gate, exactly one `peer-left`
//! per membership) are in docs/DESIGN.md ("Join order", "Leave").

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
use crate::store::StoreError;
use crate::types::{LeaveReason, Member, PeerId, RoomName};

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
        }
    }

    pub async fn join(
        &self,
        s: &mut Session,
        id: Option<Value>,
        room: RoomName,
        meta: Value,
    ) -> Result<Option<Event>, ClientError> {
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
        let peers = match self
            .core
            .store
            .join_room(
                &room,
                &member,
                s.epoch,
                self.core.cfg.limits.max_peers_per_room,
            )
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
                            self.core.cfg.limits.max_peers_per_room
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
        let note = Arc::new(Event::PeerJoined {
            room: room.clone(),
            peer_id: s.peer.clone(),
            meta: meta.clone(),
        });
        self.core
            .hub
            .room_fanout(room.as_str(), Some(s.peer.as_str()), &note, None);
        let _ = self
            .core
            .publish_room(
                &room,
                NodeEvent::PeerJoined {
                    room: room.clone(),
                    member,
                },
            )
            .await;
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

    /// Publishes the `peer-left` announcements still owed, in order, until
    /// one fails again. Called only after a clean re-registration pass (or
    /// when none was needed), which has removed, and announced, every
    /// membership of this node the hub no longer holds: one still in the
    /// store now belongs to a newer connection (the peer joined again), and
    /// its announcement is dropped, since it would contradict that
    /// connection's `peer-joined`.
    pub async fn flush_pending_left(&self) {
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
        self.core
            .hub
            .room_fanout(room.as_str(), Some(s.peer.as_str()), &msg, Some(received));
        self.core
            .publish_room(
                &room,
                NodeEvent::Message {
                    room: room.clone(),
                    from: s.peer.clone(),
                    data,
                },
            )
            .await
    }

    /// A room event from another node: to this node's members of the room.
    pub fn deliver_remote(&self, event: NodeEvent) {
        let hub = &self.core.hub;
        match event {
            NodeEvent::Message { room, from, data } => {
                let msg = Arc::new(Event::Message {
                    room: room.clone(),
                    from: from.clone(),
                    data,
                });
                hub.room_fanout(room.as_str(), Some(from.as_str()), &msg, None);
            }
            NodeEvent::PeerJoined { room, member } => {
                let msg = Arc::new(Event::PeerJoined {
                    room: room.clone(),
                    peer_id: member.peer_id.clone(),
                    meta: member.meta,
                });
                hub.room_fanout(room.as_str(), Some(member.peer_id.as_str()), &msg, None);
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
                hub.room_fanout(room.as_str(), Some(peer_id.as_str()), &msg, None);
            }
            _ => {}
        }
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
