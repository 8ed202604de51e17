//! The dashboard door's shared registry (docs/DOORS.md, "Dashboard"): its
//! rooms with their participants, in the order they were created, and how
//! many dashboard sockets each node holds.
//!
//! The store keeps text, not values: a room is the JSON of its fields up to
//! `createdAt` (its *head*, built and escaped by the door) and each
//! participant its own JSON object, so a listing is those texts put
//! together in order ([`list_json`]), and no script ever parses what a
//! client wrote. Every change returns the whole list with a *version*, so a
//! node can drop a list older than one it has already delivered.
//!
//! Who added what is recorded per node (the participants its sockets
//! joined), so the node that finds another node dead removes exactly what
//! that node's sockets had joined ([`DashRegistry::dash_sweep`]).
//!
//! Guarantees every backend keeps:
//! - each operation is atomic, and returns the list as it left it;
//! - versions only grow, across a restart of the backend too (a fresh
//!   registry starts its versions at the creating node's clock in
//!   microseconds), so "newer" is a comparison of versions;
//! - the bounds ([`DashLimits`]) are checked in the same step as the
//!   change, so concurrent changes on several nodes cannot exceed them
//!   together;
//! - a node's socket count is written only by a newer generation of it
//!   ([`DashCount::gen`]), so concurrent updates from one node cannot leave
//!   an older count behind.
//!
//! [`DashState`] is the reference implementation, which the memory store
//! runs as it is; the Redis scripts (`redis/lua/dash*.lua`) follow it step
//! for step, and `tests/it/store.rs` runs the same behaviour tests on both.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;

use super::{now_ms, StoreError};
use crate::types::NodeId;

/// What one room counts for in the list bound besides its head and its
/// participants (`,"participantCount":N,"participants":[`, `]}`, a comma):
/// an upper bound, so the real list is never larger than the bound says.
pub const ROOM_OVERHEAD: usize = 64;

/// A room as the door builds it from a `room-created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashRoom {
    /// Its id (any characters).
    pub id: String,
    /// Its JSON up to `createdAt`, without the closing brace:
    /// `{"id":"r","name":"R","description":"","host":"h","createdAt":"..."`.
    pub head: String,
}

/// A participant as the door builds it from a `user-joined-room`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DashParticipant {
    /// The room's id.
    pub room: String,
    /// The user's id (any characters).
    pub user: String,
    /// Its JSON object, `{"id":"u","name":"n"}` (or `{"id":"u"}`).
    pub json: String,
}

impl DashParticipant {
    /// The participant's key in a node's record of what its sockets joined
    /// (`<bytes of room>:<room><user>`: unambiguous whatever the ids hold).
    pub fn pair(&self) -> String {
        pair_key(&self.room, &self.user)
    }
}

/// See [`DashParticipant::pair`].
pub fn pair_key(room: &str, user: &str) -> String {
    format!("{}:{room}{user}", room.len())
}

/// The registry's bounds, from `[doors.dashboard]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashLimits {
    /// Most rooms.
    pub max_rooms: usize,
    /// Most participants in one room.
    pub max_participants: usize,
    /// Largest list, as JSON, in bytes (an upper bound is checked).
    pub max_list_bytes: usize,
}

/// A node's count of dashboard sockets, with the generation that orders
/// its updates (a node's generations start at its start time in
/// microseconds, so a restarted node's are newer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashCount {
    /// Newer counts have larger generations.
    pub gen: u64,
    /// Sockets on the node.
    pub count: u64,
}

/// The room list after an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashList {
    /// Grows with every change (see the module docs).
    pub version: u64,
    /// How many rooms it holds.
    pub rooms: usize,
    /// The `rooms` array as JSON text, in creation order.
    pub json: String,
}

/// Why a change was refused (nothing was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashRefusal {
    /// A new room beyond `max_rooms`.
    TooManyRooms,
    /// A participant beyond `max_participants` in its room.
    RoomFull,
    /// The list would grow beyond `max_list_bytes`.
    ListTooLarge,
}

/// What [`DashRegistry::dash_join`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DashJoin {
    /// No such room: nothing changed, nothing recorded.
    NoRoom,
    /// Added (or already there, when the first name stays), and recorded
    /// as joined by the calling node.
    Joined(DashList),
    /// Refused.
    Refused(DashRefusal),
}

/// What [`DashRegistry::dash_sweep`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DashSwept {
    /// Dead nodes whose entries were removed.
    pub nodes: usize,
    /// The list, when removing their participants changed it.
    pub list: Option<DashList>,
}

/// The dashboard registry; see the module docs.
#[async_trait]
pub trait DashRegistry: Send + Sync + 'static {
    /// Creates room `room.id`, or replaces it (its participants reset, its
    /// place in the list kept), as the old server did.
    async fn dash_create(
        &self,
        room: &DashRoom,
        limits: &DashLimits,
    ) -> Result<Result<DashList, DashRefusal>, StoreError>;
    /// Adds a participant to an existing room (a user id already there
    /// keeps its first name) and records it as joined by `node`.
    async fn dash_join(
        &self,
        node: &NodeId,
        p: &DashParticipant,
        limits: &DashLimits,
    ) -> Result<DashJoin, StoreError>;
    /// Removes `user` from `room`; a room this leaves empty (or that was
    /// empty) goes. Returns the list (changed or not).
    async fn dash_leave(
        &self,
        node: &NodeId,
        room: &str,
        user: &str,
    ) -> Result<DashList, StoreError>;
    /// A socket of `node` closed: removes the participants it joined
    /// (`(room, user)`), sets the node's count; returns the list.
    async fn dash_disconnect(
        &self,
        node: &NodeId,
        joined: &[(String, String)],
        count: DashCount,
    ) -> Result<DashList, StoreError>;
    /// Sets `node`'s socket count (unless a newer generation is stored)
    /// and returns the count over every node.
    async fn dash_set_count(&self, node: &NodeId, count: DashCount) -> Result<u64, StoreError>;
    /// The room list.
    async fn dash_list(&self) -> Result<DashList, StoreError>;
    /// Dashboard sockets over every node.
    async fn dash_clients(&self) -> Result<u64, StoreError>;
    /// Marks `me` alive for the registry, and removes the entries of every
    /// node that has not done so for `stale` and has no live heartbeat:
    /// its count, and the participants its sockets joined. Idempotent (a
    /// second sweep finds nothing), so any number of nodes may run it.
    async fn dash_sweep(&self, me: &NodeId, stale: Duration) -> Result<DashSwept, StoreError>;
    /// After an outage (or at start): makes the registry hold what `node`
    /// holds now: its count, the participants its live sockets joined
    /// (put back in rooms that still exist), and none of the participants
    /// its earlier sockets (or an earlier run of the node) joined.
    async fn dash_restore(
        &self,
        node: &NodeId,
        count: DashCount,
        held: &[DashParticipant],
    ) -> Result<DashList, StoreError>;
}

/// The list's JSON from its rooms' heads and participants, in order: the
/// room shape of LEGACY-PROTOCOLS.md §3.2 (`participantCount` then
/// `participants` after the head's fields).
pub fn list_json<'a>(rooms: impl Iterator<Item = (&'a str, Vec<&'a str>)>) -> String {
    let mut out = String::from("[");
    for (i, (head, people)) in rooms.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(head);
        out.push_str(",\"participantCount\":");
        out.push_str(&people.len().to_string());
        out.push_str(",\"participants\":[");
        out.push_str(&people.join(","));
        out.push_str("]}");
    }
    out.push(']');
    out
}

/// A room of [`DashState`].
#[derive(Debug, Clone)]
struct StateRoom {
    id: String,
    head: String,
    /// `(user, json)` in arrival order.
    people: Vec<(String, String)>,
}

impl StateRoom {
    fn bytes(&self) -> usize {
        self.head.len()
            + ROOM_OVERHEAD
            + self.people.iter().map(|(_, j)| j.len() + 1).sum::<usize>()
    }
}

/// The registry in memory: the reference semantics, and the memory store's
/// implementation (one process: every node it knows is alive).
#[derive(Debug, Default)]
pub struct DashState {
    /// 0 until the first use, then the list version.
    version: u64,
    /// In creation order.
    rooms: Vec<StateRoom>,
    /// node -> its count.
    clients: HashMap<NodeId, DashCount>,
    /// node -> the participants its sockets joined (`pair` keys).
    joins: HashMap<NodeId, HashSet<(String, String)>>,
}

impl DashState {
    fn version(&mut self) -> u64 {
        if self.version == 0 {
            self.version = now_ms().saturating_mul(1_000);
        }
        self.version
    }

    fn bump(&mut self) {
        self.version();
        self.version += 1;
    }

    fn bytes(&self) -> usize {
        2 + self.rooms.iter().map(StateRoom::bytes).sum::<usize>()
    }

    /// The list now.
    pub fn list(&mut self) -> DashList {
        let version = self.version();
        let json = list_json(self.rooms.iter().map(|r| {
            (
                r.head.as_str(),
                r.people.iter().map(|(_, j)| j.as_str()).collect(),
            )
        }));
        DashList {
            version,
            rooms: self.rooms.len(),
            json,
        }
    }

    /// See [`DashRegistry::dash_create`].
    pub fn create(
        &mut self,
        room: &DashRoom,
        limits: &DashLimits,
    ) -> Result<DashList, DashRefusal> {
        let at = self.rooms.iter().position(|r| r.id == room.id);
        let old = at.map_or(0, |i| self.rooms[i].bytes());
        if at.is_none() && self.rooms.len() >= limits.max_rooms {
            return Err(DashRefusal::TooManyRooms);
        }
        let new = StateRoom {
            id: room.id.clone(),
            head: room.head.clone(),
            people: Vec::new(),
        };
        if self.bytes() - old + new.bytes() > limits.max_list_bytes {
            return Err(DashRefusal::ListTooLarge);
        }
        match at {
            Some(i) => self.rooms[i] = new,
            None => self.rooms.push(new),
        }
        self.bump();
        Ok(self.list())
    }

    /// See [`DashRegistry::dash_join`].
    pub fn join(&mut self, node: &NodeId, p: &DashParticipant, limits: &DashLimits) -> DashJoin {
        let bytes = self.bytes();
        let Some(room) = self.rooms.iter_mut().find(|r| r.id == p.room) else {
            return DashJoin::NoRoom;
        };
        if !room.people.iter().any(|(u, _)| *u == p.user) {
            if room.people.len() >= limits.max_participants {
                return DashJoin::Refused(DashRefusal::RoomFull);
            }
            if bytes + p.json.len() + 1 > limits.max_list_bytes {
                return DashJoin::Refused(DashRefusal::ListTooLarge);
            }
            room.people.push((p.user.clone(), p.json.clone()));
        }
        self.joins
            .entry(node.clone())
            .or_default()
            .insert((p.room.clone(), p.user.clone()));
        self.bump();
        DashJoin::Joined(self.list())
    }

    /// Removes `user` from `room` (the room goes when empty); true when
    /// the list changed.
    fn remove(&mut self, room: &str, user: &str) -> bool {
        let Some(i) = self.rooms.iter().position(|r| r.id == room) else {
            return false;
        };
        let r = &mut self.rooms[i];
        let before = r.people.len();
        r.people.retain(|(u, _)| u != user);
        let removed = r.people.len() != before;
        if r.people.is_empty() {
            self.rooms.remove(i);
            return true;
        }
        removed
    }

    /// See [`DashRegistry::dash_leave`].
    pub fn leave(&mut self, node: &NodeId, room: &str, user: &str) -> DashList {
        if self.remove(room, user) {
            self.bump();
        }
        if let Some(j) = self.joins.get_mut(node) {
            j.remove(&(room.to_string(), user.to_string()));
        }
        self.list()
    }

    fn set_count(&mut self, node: &NodeId, count: DashCount) {
        let cur = self
            .clients
            .entry(node.clone())
            .or_insert(DashCount { gen: 0, count: 0 });
        if count.gen > cur.gen {
            *cur = count;
        }
    }

    /// See [`DashRegistry::dash_set_count`].
    pub fn count(&mut self, node: &NodeId, count: DashCount) -> u64 {
        self.set_count(node, count);
        self.clients_total()
    }

    /// See [`DashRegistry::dash_clients`].
    pub fn clients_total(&self) -> u64 {
        self.clients.values().map(|c| c.count).sum()
    }

    /// See [`DashRegistry::dash_disconnect`].
    pub fn disconnect(
        &mut self,
        node: &NodeId,
        joined: &[(String, String)],
        count: DashCount,
    ) -> DashList {
        let mut changed = false;
        for (room, user) in joined {
            changed |= self.remove(room, user);
            if let Some(j) = self.joins.get_mut(node) {
                j.remove(&(room.clone(), user.clone()));
            }
        }
        if changed {
            self.bump();
        }
        self.set_count(node, count);
        self.list()
    }

    /// See [`DashRegistry::dash_restore`].
    pub fn restore(
        &mut self,
        node: &NodeId,
        count: DashCount,
        held: &[DashParticipant],
    ) -> DashList {
        let keep: HashSet<(String, String)> = held
            .iter()
            .map(|p| (p.room.clone(), p.user.clone()))
            .collect();
        let stale: Vec<(String, String)> = self
            .joins
            .get(node)
            .map(|j| j.difference(&keep).cloned().collect())
            .unwrap_or_default();
        let mut changed = false;
        for (room, user) in &stale {
            changed |= self.remove(room, user);
        }
        for p in held {
            if let Some(r) = self.rooms.iter_mut().find(|r| r.id == p.room) {
                if !r.people.iter().any(|(u, _)| *u == p.user) {
                    r.people.push((p.user.clone(), p.json.clone()));
                    changed = true;
                }
            }
        }
        self.joins.insert(node.clone(), keep);
        if changed {
            self.bump();
        }
        self.set_count(node, count);
        self.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DashLimits = DashLimits {
        max_rooms: 2,
        max_participants: 2,
        max_list_bytes: 1_000,
    };

    fn room(id: &str) -> DashRoom {
        DashRoom {
            id: id.into(),
            head: format!("{{\"id\":\"{id}\""),
        }
    }

    fn person(room: &str, user: &str) -> DashParticipant {
        DashParticipant {
            room: room.into(),
            user: user.into(),
            json: format!("{{\"id\":\"{user}\"}}"),
        }
    }

    #[test]
    fn rooms_keep_creation_order_and_replacing_resets_participants() {
        let n = NodeId::from_trusted("n");
        let mut s = DashState::default();
        let v0 = s.list().version;
        s.create(&room("a"), &LIMITS).unwrap();
        s.create(&room("b"), &LIMITS).unwrap();
        assert!(matches!(
            s.join(&n, &person("a", "u"), &LIMITS),
            DashJoin::Joined(_)
        ));
        let l = s.create(&room("a"), &LIMITS).unwrap();
        assert!(l.version > v0);
        assert_eq!(
            l.json,
            r#"[{"id":"a","participantCount":0,"participants":[]},{"id":"b","participantCount":0,"participants":[]}]"#
        );
        assert_eq!(
            s.create(&room("c"), &LIMITS),
            Err(DashRefusal::TooManyRooms)
        );
    }

    #[test]
    fn participants_are_bounded_and_the_first_name_stays() {
        let n = NodeId::from_trusted("n");
        let mut s = DashState::default();
        s.create(&room("a"), &LIMITS).unwrap();
        assert_eq!(s.join(&n, &person("x", "u"), &LIMITS), DashJoin::NoRoom);
        s.join(&n, &person("a", "u1"), &LIMITS);
        let mut again = person("a", "u1");
        again.json = r#"{"id":"u1","name":"other"}"#.into();
        let DashJoin::Joined(l) = s.join(&n, &again, &LIMITS) else {
            panic!()
        };
        assert!(l.json.contains(r#"[{"id":"u1"}]"#), "{}", l.json);
        s.join(&n, &person("a", "u2"), &LIMITS);
        assert_eq!(
            s.join(&n, &person("a", "u3"), &LIMITS),
            DashJoin::Refused(DashRefusal::RoomFull)
        );
        let tight = DashLimits {
            max_list_bytes: s.bytes() + 5,
            ..LIMITS
        };
        s.leave(&n, "a", "u2");
        assert_eq!(
            s.join(&n, &person("a", "u2-long-enough"), &tight),
            DashJoin::Refused(DashRefusal::ListTooLarge)
        );
    }

    #[test]
    fn an_emptied_room_goes_and_counts_follow_generations() {
        let n = NodeId::from_trusted("n");
        let mut s = DashState::default();
        s.create(&room("a"), &LIMITS).unwrap();
        s.create(&room("b"), &LIMITS).unwrap();
        s.join(&n, &person("a", "u"), &LIMITS);
        let l = s.disconnect(
            &n,
            &[("a".into(), "u".into())],
            DashCount { gen: 5, count: 3 },
        );
        assert_eq!(l.rooms, 1);
        // Leaving an empty room (nobody there) removes it, as the old server did.
        assert_eq!(s.leave(&n, "b", "nobody").rooms, 0);
        assert_eq!(s.count(&n, DashCount { gen: 4, count: 9 }), 3);
        assert_eq!(s.count(&n, DashCount { gen: 6, count: 1 }), 1);
    }

    #[test]
    fn restore_drops_what_is_not_held_and_puts_back_what_is() {
        let n = NodeId::from_trusted("n");
        let other = NodeId::from_trusted("o");
        let limits = DashLimits {
            max_participants: 3,
            ..LIMITS
        };
        let mut s = DashState::default();
        s.create(&room("a"), &limits).unwrap();
        s.join(&other, &person("a", "theirs"), &limits);
        s.join(&n, &person("a", "gone"), &limits);
        s.join(&n, &person("a", "kept"), &limits);
        s.remove("a", "kept");
        let l = s.restore(&n, DashCount { gen: 1, count: 1 }, &[person("a", "kept")]);
        assert_eq!(
            l.json,
            r#"[{"id":"a","participantCount":2,"participants":[{"id":"theirs"},{"id":"kept"}]}]"#
        );
        assert_eq!(pair_key("a:b", "c"), "3:a:bc");
    }
}
