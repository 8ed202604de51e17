//! The in-memory store of the embedded single node (and of several
//! in-process nodes in unit tests): every registry behind one mutex, so each
//! operation is atomic by construction. It serves one process, so every node
//! it knows is alive (see [`Liveness`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use std::time::Duration;

use super::{
    now_ms, Claim, Claimed, Directory, EndpointUpdate, Enqueued, Liveness, LostPairing, Membership,
    PairError, PeerLocation, Reaped, RoomAccess, RoomPage, RoomRecord, RoomSummary, Rooms,
    SecretHash, Store, StoreError, Unpaired, Which, WorkerConn, WorkerRecord, WorkerState, Workers,
};
use crate::types::Member;
use crate::types::{NodeId, PeerId, PoolName, RoomName};

/// Registries in one mutex: every operation is short and never awaits while holding it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// The dashboard door's registry (its own lock: no operation touches both).
    dash: Mutex<super::dashboard::DashState>,
    /// The coordinator's records (its own lock, like `dash`).
    coord: Mutex<super::coordinator::CoordState>,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<PeerId, PeerLocation>,
    /// peer -> (epoch, secret hash) of the connection that claimed it, so a
    /// reconnect can prove it is that client (see [`Directory::claim_peer`]).
    secrets: HashMap<PeerId, (u64, SecretHash)>,
    /// Every room with its record; ordered by name so `list_rooms` pages
    /// with a range, and listings are stable.
    rooms: BTreeMap<RoomName, Room>,
    /// `(expires_at, room)` of every room with a lifetime, soonest first:
    /// what the sweeper reads. Only explicit rooms have one, and they leave
    /// only through `delete_room` / `expire_room`, which take them out.
    expiry: BTreeSet<(u64, RoomName)>,
    /// Worker records; ordered so listings are stable.
    workers: BTreeMap<PeerId, WorkerRecord>,
    /// Pool -> queued worker ids, oldest first. Entries can go stale (the
    /// worker left, paired or moved): they are skipped and dropped when reached.
    queues: HashMap<PoolName, VecDeque<PeerId>>,
    /// Quota -> member -> until (unix ms): [`Rooms::take_slots`]. Ended
    /// slots go at the quota's next use; an empty quota goes.
    quotas: HashMap<String, HashMap<String, u64>>,
}

/// A room: its record and its members.
#[derive(Debug)]
struct Room {
    record: RoomRecord,
    /// peer -> (epoch, meta); ordered so listings are stable.
    members: BTreeMap<PeerId, (u64, Value)>,
}

impl Room {
    fn implicit(name: &RoomName) -> Self {
        Self {
            record: RoomRecord::implicit(name.clone(), now_ms()),
            members: BTreeMap::new(),
        }
    }

    /// True when the room should go: implicit, and no member left.
    fn vanishes(&self) -> bool {
        !self.record.explicit && self.members.is_empty()
    }

    fn list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(p, (_, meta))| Member {
                peer_id: p.clone(),
                meta: meta.clone(),
            })
            .collect()
    }
}

impl Inner {
    /// Removes a room whole (record, members, its expiry entry) and returns
    /// its memberships.
    fn remove_room(&mut self, room: &RoomName) -> Option<Vec<Membership>> {
        let r = self.rooms.remove(room)?;
        if let Some(x) = r.record.expires_at {
            self.expiry.remove(&(x, room.clone()));
        }
        Some(
            r.members
                .into_iter()
                .map(|(peer_id, (epoch, meta))| Membership {
                    member: Member { peer_id, meta },
                    epoch,
                })
                .collect(),
        )
    }

    /// Frees the partner of `w` if it is still paired with it; returns it.
    fn free_partner(&mut self, w: &WorkerRecord) -> Option<LostPairing> {
        let (Some(pid), Some(partner)) = (&w.pairing_id, &w.partner) else {
            return None;
        };
        let p = self.workers.get_mut(partner)?;
        if p.pairing_id.as_ref() != Some(pid) {
            return None;
        }
        p.state = WorkerState::Idle;
        p.pairing_id = None;
        p.partner = None;
        Some(LostPairing {
            pairing_id: pid.clone(),
            partner: p.clone(),
        })
    }

    /// True when the directory says connection `epoch` of `peer` is not the current one.
    fn superseded(&self, peer: &PeerId, epoch: u64) -> bool {
        self.peers.get(peer).is_some_and(|l| l.epoch != epoch)
    }
}

#[async_trait]
impl Directory for MemoryStore {
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        Ok(self.inner.lock().peers.insert(peer.clone(), loc))
    }

    async fn claim_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
        claim: &Claim,
    ) -> Result<Claimed, StoreError> {
        let mut inner = self.inner.lock();
        if let Some(cur) = inner.peers.get(peer) {
            // One process: every node sharing this store is alive. An entry
            // of the caller's own node was checked against its hub already.
            let proven = claim.token_for_id
                || cur.node == loc.node
                || claim.presented.is_some_and(|p| {
                    inner
                        .secrets
                        .get(peer)
                        .is_some_and(|(e, h)| *e == cur.epoch && *h == p)
                });
            if !proven {
                return Ok(Claimed::Taken(cur.clone()));
            }
        }
        inner
            .secrets
            .insert(peer.clone(), (loc.epoch, claim.secret));
        Ok(Claimed::Registered(inner.peers.insert(peer.clone(), loc)))
    }

    async fn unregister_peer(&self, peer: &PeerId, epoch: u64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        if inner.peers.get(peer).is_some_and(|l| l.epoch == epoch) {
            inner.peers.remove(peer);
            inner.secrets.remove(peer);
            return Ok(true);
        }
        Ok(false)
    }

    async fn locate_peer(&self, peer: &PeerId) -> Result<Option<PeerLocation>, StoreError> {
        Ok(self.inner.lock().peers.get(peer).cloned())
    }

    async fn scan_node_peers(
        &self,
        node: &NodeId,
        cursor: u64,
        search: &str,
        count: usize,
    ) -> Result<(u64, Vec<PeerId>), StoreError> {
        // The cursor is an offset into the node's peers in id order.
        let inner = self.inner.lock();
        let mut ids: Vec<&PeerId> = inner
            .peers
            .iter()
            .filter(|(p, loc)| loc.node == *node && p.as_str().contains(search))
            .map(|(p, _)| p)
            .collect();
        ids.sort_unstable();
        let start = (cursor as usize).min(ids.len());
        let end = start.saturating_add(count.max(1)).min(ids.len());
        let next = if end == ids.len() { 0 } else { end as u64 };
        Ok((next, ids[start..end].iter().map(|p| (*p).clone()).collect()))
    }

    async fn reregister_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        let mut inner = self.inner.lock();
        match inner.peers.get(peer) {
            Some(cur) if cur.node != loc.node => Ok(Some(cur.clone())),
            _ => {
                inner.peers.insert(peer.clone(), loc);
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl Rooms for MemoryStore {
    async fn create_room(&self, record: &RoomRecord) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if inner.rooms.contains_key(&record.name) {
            return Err(StoreError::RoomExists);
        }
        let record = RoomRecord {
            explicit: true,
            ..record.clone()
        };
        if let Some(x) = record.expires_at {
            inner.expiry.insert((x, record.name.clone()));
        }
        inner.rooms.insert(
            record.name.clone(),
            Room {
                record,
                members: BTreeMap::new(),
            },
        );
        Ok(())
    }

    async fn get_room(&self, room: &RoomName) -> Result<Option<RoomRecord>, StoreError> {
        Ok(self.inner.lock().rooms.get(room).map(|r| r.record.clone()))
    }

    async fn delete_room(&self, room: &RoomName) -> Result<Option<Vec<Membership>>, StoreError> {
        Ok(self.inner.lock().remove_room(room))
    }

    async fn take_slots(
        &self,
        quotas: &[(String, usize)],
        member: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<usize>, StoreError> {
        let mut inner = self.inner.lock();
        for (i, (name, most)) in quotas.iter().enumerate() {
            let Some(q) = inner.quotas.get_mut(name) else {
                continue;
            };
            q.retain(|_, until| *until > now_ms);
            if q.is_empty() {
                inner.quotas.remove(name);
            } else if !q.contains_key(member) && q.len() >= *most {
                return Ok(Some(i));
            }
        }
        for (name, _) in quotas {
            inner
                .quotas
                .entry(name.clone())
                .or_default()
                .insert(member.to_string(), until_ms);
        }
        Ok(None)
    }

    async fn expiring_rooms(&self, now_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError> {
        Ok(self
            .inner
            .lock()
            .expiry
            .iter()
            .take_while(|(x, _)| *x <= now_ms)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn expire_room(
        &self,
        room: &RoomName,
        now_ms: u64,
    ) -> Result<Option<Vec<Membership>>, StoreError> {
        let mut inner = self.inner.lock();
        let expired = inner
            .rooms
            .get(room)
            .and_then(|r| r.record.expires_at)
            .is_some_and(|x| x <= now_ms);
        Ok(if expired {
            inner.remove_room(room)
        } else {
            None
        })
    }

    async fn list_rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<RoomPage, StoreError> {
        let inner = self.inner.lock();
        let start: Bound<&RoomName> = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut it = inner.rooms.range::<RoomName, _>((start, Bound::Unbounded));
        let rooms: Vec<RoomSummary> = it
            .by_ref()
            .take(limit)
            .map(|(name, r)| RoomSummary {
                room: name.clone(),
                members: r.members.len(),
                explicit: r.record.explicit,
                expires_at: r.record.expires_at,
                max_peers: r.record.max_peers,
            })
            .collect();
        let next = match (it.next(), rooms.last()) {
            (Some(_), Some(last)) => Some(last.room.clone()),
            _ => None,
        };
        Ok(RoomPage { rooms, next })
    }

    async fn join_room_with(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
        access: &RoomAccess,
        now_ms: u64,
    ) -> Result<Vec<Member>, StoreError> {
        let mut inner = self.inner.lock();
        if let Some(r) = inner.rooms.get(room) {
            if r.record.expires_at.is_some_and(|x| x <= now_ms) {
                return Err(StoreError::RoomExpired);
            }
            if let Some(t) = &r.record.token_hash {
                match access.token {
                    _ if access.granted => {}
                    None => return Err(StoreError::RoomTokenRequired),
                    Some(given) if given != *t => return Err(StoreError::RoomTokenInvalid),
                    Some(_) => {}
                }
            }
        }
        let r = inner
            .rooms
            .entry(room.clone())
            .or_insert_with(|| Room::implicit(room));
        let limit = r.record.max_peers.unwrap_or(max_peers);
        if !r.members.contains_key(&member.peer_id) && r.members.len() >= limit {
            if r.vanishes() {
                inner.rooms.remove(room);
            }
            return Err(StoreError::RoomFull);
        }
        let others = r
            .members
            .iter()
            .filter(|(p, _)| **p != member.peer_id)
            .map(|(p, (_, meta))| Member {
                peer_id: p.clone(),
                meta: meta.clone(),
            })
            .collect();
        r.members
            .insert(member.peer_id.clone(), (epoch, member.meta.clone()));
        Ok(others)
    }

    async fn leave_room(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        let Some(r) = inner.rooms.get_mut(room) else {
            return Ok(false);
        };
        if r.members.get(peer).is_none_or(|(e, _)| *e != epoch) {
            return Ok(false);
        }
        r.members.remove(peer);
        if r.vanishes() {
            inner.rooms.remove(room);
        }
        Ok(true)
    }

    async fn room_members(&self, room: &RoomName) -> Result<Option<Vec<Member>>, StoreError> {
        Ok(self
            .inner
            .lock()
            .rooms
            .get(room)
            .filter(|r| !r.members.is_empty())
            .map(Room::list))
    }

    async fn restore_member(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        let old = inner
            .rooms
            .entry(room.clone())
            .or_insert_with(|| Room::implicit(room))
            .members
            .insert(member.peer_id.clone(), (epoch, member.meta.clone()));
        Ok(old.is_none_or(|(e, _)| e != epoch))
    }
}

/// One process holds the whole embedded cluster: it is alive while it runs.
#[async_trait]
impl Liveness for MemoryStore {
    async fn heartbeat(&self, _node: &NodeId, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn dead_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        Ok(Vec::new())
    }

    async fn reap_node(&self, _dead: &NodeId, _me: &NodeId) -> Result<Option<Reaped>, StoreError> {
        Ok(None)
    }

    async fn goodbye(&self, _node: &NodeId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn try_lease(
        &self,
        _name: &str,
        _holder: &NodeId,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release_lease(&self, _name: &str, _holder: &NodeId) -> Result<(), StoreError> {
        // One process: it always holds every lease.
        Ok(())
    }
}

#[async_trait]
impl Workers for MemoryStore {
    async fn upsert_worker(
        &self,
        conn: &WorkerConn,
        ep: &EndpointUpdate,
    ) -> Result<Option<LostPairing>, StoreError> {
        let mut inner = self.inner.lock();
        if inner.superseded(&conn.peer_id, conn.epoch) {
            return Ok(None);
        }
        let mut lost = None;
        match inner.workers.get_mut(&conn.peer_id) {
            Some(w) if w.epoch == conn.epoch => {
                w.apply(ep);
                return Ok(None);
            }
            Some(_) => {
                let old = inner.workers.remove(&conn.peer_id).expect("present");
                lost = inner.free_partner(&old);
            }
            None => {}
        }
        let mut w = WorkerRecord::new(conn);
        w.apply(ep);
        inner.workers.insert(conn.peer_id.clone(), w);
        Ok(lost)
    }

    async fn enqueue_or_match(
        &self,
        peer: &PeerId,
        epoch: u64,
        pool: &PoolName,
        meta: &Value,
        now_ms: u64,
        pairing_id: &str,
    ) -> Result<Enqueued, PairError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let me = match inner.workers.get_mut(peer) {
            Some(w) if w.epoch == epoch => w,
            _ => return Err(PairError::Stale),
        };
        match me.state {
            WorkerState::Paired => return Err(PairError::AlreadyPaired(Which::A)),
            WorkerState::Queued if me.pool.as_ref() == Some(pool) => {
                me.meta = meta.clone();
                return Ok(Enqueued::Queued);
            }
            _ => {}
        }
        me.meta = meta.clone();
        me.pool = Some(pool.clone());
        me.since_ms = now_ms;
        me.state = WorkerState::Idle;
        let queue = inner.queues.entry(pool.clone()).or_default();
        let mut partner = None;
        while let Some(head) = queue.pop_front() {
            if head == *peer {
                continue;
            }
            if inner
                .workers
                .get(&head)
                .is_some_and(|w| w.state == WorkerState::Queued && w.pool.as_ref() == Some(pool))
            {
                partner = Some(head);
                break;
            }
        }
        let Some(partner) = partner else {
            queue.push_back(peer.clone());
            inner.workers.get_mut(peer).expect("present").state = WorkerState::Queued;
            return Ok(Enqueued::Queued);
        };
        if queue.is_empty() {
            inner.queues.remove(pool);
        }
        let pid = Some(pairing_id.to_string());
        let initiator = {
            let w = inner.workers.get_mut(&partner).expect("checked");
            w.state = WorkerState::Paired;
            w.pairing_id = pid.clone();
            w.partner = Some(peer.clone());
            w.clone()
        };
        let responder = {
            let w = inner.workers.get_mut(peer).expect("present");
            w.state = WorkerState::Paired;
            w.pairing_id = pid;
            w.partner = Some(partner);
            w.clone()
        };
        Ok(Enqueued::Matched {
            pairing_id: pairing_id.to_string(),
            initiator,
            responder,
        })
    }

    async fn pair_workers(
        &self,
        a: &PeerId,
        b: &PeerId,
        pairing_id: &str,
    ) -> Result<(WorkerRecord, WorkerRecord), PairError> {
        if a == b {
            return Err(PairError::SameWorker);
        }
        let mut inner = self.inner.lock();
        for (id, which) in [(a, Which::A), (b, Which::B)] {
            match inner.workers.get(id) {
                None => return Err(PairError::NotFound(which)),
                Some(w) if w.state == WorkerState::Paired => {
                    return Err(PairError::AlreadyPaired(which))
                }
                Some(_) => {}
            }
        }
        let mut set = |id: &PeerId, partner: &PeerId| {
            let w = inner.workers.get_mut(id).expect("checked");
            w.state = WorkerState::Paired;
            w.pairing_id = Some(pairing_id.to_string());
            w.partner = Some(partner.clone());
            w.clone()
        };
        let ra = set(a, b);
        let rb = set(b, a);
        Ok((ra, rb))
    }

    async fn unpair_worker(&self, peer: &PeerId, epoch: u64) -> Result<Unpaired, PairError> {
        let mut inner = self.inner.lock();
        let me = match inner.workers.get_mut(peer) {
            Some(w) if w.epoch == epoch => w,
            _ => return Err(PairError::NotPaired),
        };
        match me.state {
            WorkerState::Idle => Err(PairError::NotPaired),
            WorkerState::Queued => {
                me.state = WorkerState::Idle;
                Ok(Unpaired::Dequeued)
            }
            WorkerState::Paired => {
                let before = me.clone();
                me.state = WorkerState::Idle;
                me.pairing_id = None;
                me.partner = None;
                // A partner already gone was told when it went.
                Ok(inner
                    .free_partner(&before)
                    .map_or(Unpaired::Dequeued, Unpaired::Paired))
            }
        }
    }

    async fn remove_worker(
        &self,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<Option<LostPairing>, StoreError> {
        let mut inner = self.inner.lock();
        if inner.workers.get(peer).is_none_or(|w| w.epoch != epoch) {
            return Ok(None);
        }
        let old = inner.workers.remove(peer).expect("present");
        Ok(inner.free_partner(&old))
    }

    async fn get_worker(&self, peer: &PeerId) -> Result<Option<WorkerRecord>, StoreError> {
        Ok(self.inner.lock().workers.get(peer).cloned())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        Ok(self.inner.lock().workers.values().cloned().collect())
    }

    async fn node_workers(&self, node: &NodeId) -> Result<Vec<(PeerId, u64)>, StoreError> {
        Ok(self
            .inner
            .lock()
            .workers
            .values()
            .filter(|w| w.node == *node)
            .map(|w| (w.peer_id.clone(), w.epoch))
            .collect())
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }
}

#[async_trait]
impl super::dashboard::DashRegistry for MemoryStore {
    async fn dash_create(
        &self,
        room: &super::dashboard::DashRoom,
        limits: &super::dashboard::DashLimits,
    ) -> Result<Result<super::dashboard::DashList, super::dashboard::DashRefusal>, StoreError> {
        Ok(self.dash.lock().create(room, limits))
    }

    async fn dash_join(
        &self,
        node: &NodeId,
        p: &super::dashboard::DashParticipant,
        limits: &super::dashboard::DashLimits,
    ) -> Result<super::dashboard::DashJoin, StoreError> {
        Ok(self.dash.lock().join(node, p, limits))
    }

    async fn dash_leave(
        &self,
        node: &NodeId,
        room: &str,
        user: &str,
    ) -> Result<super::dashboard::DashList, StoreError> {
        Ok(self.dash.lock().leave(node, room, user))
    }

    async fn dash_disconnect(
        &self,
        node: &NodeId,
        joined: &[(String, String)],
        count: super::dashboard::DashCount,
    ) -> Result<super::dashboard::DashList, StoreError> {
        Ok(self.dash.lock().disconnect(node, joined, count))
    }

    async fn dash_set_count(
        &self,
        node: &NodeId,
        count: super::dashboard::DashCount,
    ) -> Result<u64, StoreError> {
        Ok(self.dash.lock().count(node, count))
    }

    async fn dash_list(&self) -> Result<super::dashboard::DashList, StoreError> {
        Ok(self.dash.lock().list())
    }

    async fn dash_clients(&self) -> Result<u64, StoreError> {
        Ok(self.dash.lock().clients_total())
    }

    /// One process: every node this store knows is alive, nothing to sweep.
    async fn dash_sweep(
        &self,
        _me: &NodeId,
        _stale: Duration,
    ) -> Result<super::dashboard::DashSwept, StoreError> {
        Ok(super::dashboard::DashSwept::default())
    }

    async fn dash_restore(
        &self,
        node: &NodeId,
        count: super::dashboard::DashCount,
        held: &[super::dashboard::DashParticipant],
    ) -> Result<super::dashboard::DashList, StoreError> {
        Ok(self.dash.lock().restore(node, count, held))
    }
}

#[async_trait]
impl super::coordinator::CoordStore for MemoryStore {
    async fn coord_next_id(&self, kind: super::coordinator::CoordKind) -> Result<u64, StoreError> {
        Ok(self.coord.lock().next_id(kind))
    }

    async fn coord_get(
        &self,
        kind: super::coordinator::CoordKind,
        key: &str,
    ) -> Result<Option<super::coordinator::Versioned>, StoreError> {
        Ok(self.coord.lock().get(kind, key))
    }

    async fn coord_list(
        &self,
        kind: super::coordinator::CoordKind,
    ) -> Result<Vec<(String, super::coordinator::Versioned)>, StoreError> {
        Ok(self.coord.lock().list(kind))
    }

    async fn coord_put(
        &self,
        kind: super::coordinator::CoordKind,
        key: &str,
        expected: u64,
        json: &str,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self.coord.lock().put(kind, key, expected, json))
    }

    async fn coord_delete(
        &self,
        kind: super::coordinator::CoordKind,
        key: &str,
        expected: u64,
    ) -> Result<bool, StoreError> {
        Ok(self.coord.lock().delete(kind, key, expected))
    }
}

// Tested by the store conformance suite (tests/it/store.rs and its
// siblings), which runs every behaviour against this backend and Redis.
