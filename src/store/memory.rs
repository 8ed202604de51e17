//! The in-memory store of the embedded single node.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use std::time::Duration;

use super::{PeerLocation, Reaped, RoomSummary, Store, StoreError};
use crate::protocol::Member;
use crate::types::{NodeId, PeerId, RoomName};

/// Registries in one mutex: every operation is short and never awaits while holding it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    peers: HashMap<PeerId, PeerLocation>,
    /// room -> peer -> (epoch, meta); ordered so listings are stable.
    rooms: HashMap<RoomName, BTreeMap<PeerId, (u64, Value)>>,
}

#[async_trait]
impl Store for MemoryStore {
    async fn register_peer(
        &self,
        peer: &PeerId,
        loc: PeerLocation,
    ) -> Result<Option<PeerLocation>, StoreError> {
        Ok(self.inner.lock().peers.insert(peer.clone(), loc))
    }

    async fn unregister_peer(&self, peer: &PeerId, epoch: u64) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        if inner.peers.get(peer).is_some_and(|l| l.epoch == epoch) {
            inner.peers.remove(peer);
            return Ok(true);
        }
        Ok(false)
    }

    async fn locate_peer(&self, peer: &PeerId) -> Result<Option<PeerLocation>, StoreError> {
        Ok(self.inner.lock().peers.get(peer).cloned())
    }

    async fn join_room(
        &self,
        room: &RoomName,
        member: &Member,
        epoch: u64,
        max_peers: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let mut inner = self.inner.lock();
        let members = inner.rooms.entry(room.clone()).or_default();
        if !members.contains_key(&member.peer_id) && members.len() >= max_peers {
            if members.is_empty() {
                inner.rooms.remove(room);
            }
            return Err(StoreError::RoomFull);
        }
        let others = members
            .iter()
            .filter(|(p, _)| **p != member.peer_id)
            .map(|(p, (_, meta))| Member {
                peer_id: p.clone(),
                meta: meta.clone(),
            })
            .collect();
        members.insert(member.peer_id.clone(), (epoch, member.meta.clone()));
        Ok(others)
    }

    async fn leave_room(
        &self,
        room: &RoomName,
        peer: &PeerId,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        let Some(members) = inner.rooms.get_mut(room) else {
            return Ok(false);
        };
        if members.get(peer).is_none_or(|(e, _)| *e != epoch) {
            return Ok(false);
        }
        members.remove(peer);
        if members.is_empty() {
            inner.rooms.remove(room);
        }
        Ok(true)
    }

    async fn room_members(&self, room: &RoomName) -> Result<Option<Vec<Member>>, StoreError> {
        Ok(self.inner.lock().rooms.get(room).map(|m| {
            m.iter()
                .map(|(p, (_, meta))| Member {
                    peer_id: p.clone(),
                    meta: meta.clone(),
                })
                .collect()
        }))
    }

    async fn list_rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        let mut rooms: Vec<RoomSummary> = self
            .inner
            .lock()
            .rooms
            .iter()
            .map(|(r, m)| RoomSummary {
                room: r.clone(),
                members: m.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(rooms)
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

    /// One process holds the whole embedded cluster: it is alive while it runs.
    async fn heartbeat(&self, _node: &NodeId, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn dead_nodes(&self) -> Result<Vec<NodeId>, StoreError> {
        Ok(Vec::new())
    }

    async fn reap_node(
        &self,
        _dead: &NodeId,
        _me: &NodeId,
        _claim: bool,
    ) -> Result<Option<Reaped>, StoreError> {
        Ok(None)
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
            .or_default()
            .insert(member.peer_id.clone(), (epoch, member.meta.clone()));
        Ok(old.is_none_or(|(e, _)| e != epoch))
    }

    async fn goodbye(&self, _node: &NodeId) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(p: &str) -> Member {
        Member {
            peer_id: PeerId::from_trusted(p),
            meta: Value::Null,
        }
    }

    #[tokio::test]
    async fn room_capacity_and_epochs() {
        let s = MemoryStore::default();
        let r = RoomName::from_trusted("r");
        assert!(s
            .join_room(&r, &member("a"), 1, 2)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(s.join_room(&r, &member("b"), 2, 2).await.unwrap().len(), 1);
        assert!(matches!(
            s.join_room(&r, &member("c"), 3, 2).await,
            Err(StoreError::RoomFull)
        ));
        // a newer connection of `a` re-joins: allowed at capacity, old epoch can no longer leave
        assert_eq!(s.join_room(&r, &member("a"), 4, 2).await.unwrap().len(), 1);
        assert!(!s
            .leave_room(&r, &PeerId::from_trusted("a"), 1)
            .await
            .unwrap());
        assert!(s
            .leave_room(&r, &PeerId::from_trusted("a"), 4)
            .await
            .unwrap());
        let p = PeerId::from_trusted("p");
        let loc = |e| PeerLocation {
            node: NodeId::from_trusted("n"),
            epoch: e,
        };
        assert_eq!(s.register_peer(&p, loc(1)).await.unwrap(), None);
        assert_eq!(s.register_peer(&p, loc(2)).await.unwrap(), Some(loc(1)));
        assert!(!s.unregister_peer(&p, 1).await.unwrap());
        assert!(s.unregister_peer(&p, 2).await.unwrap());
    }
}
