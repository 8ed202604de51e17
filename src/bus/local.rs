//! The in-process bus: every node of a [`LocalNet`] lives in this process.
//!
//! The embedded single node runs on a `LocalNet` of one, where publishing
//! reaches nobody else. Unit tests can put several nodes on one net to
//! exercise cross-node routing without Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Bus, BusError, Envelope};
use crate::types::{NodeId, RoomName};

/// Nodes sharing one in-process bus.
#[derive(Debug, Default)]
pub struct LocalNet {
    inner: Mutex<NetInner>,
}

#[derive(Debug, Default)]
struct NetInner {
    inboxes: HashMap<NodeId, mpsc::UnboundedSender<Envelope>>,
    rooms: HashMap<RoomName, HashSet<NodeId>>,
}

/// One node's handle on a [`LocalNet`].
#[derive(Debug)]
pub struct LocalBus {
    me: NodeId,
    net: Arc<LocalNet>,
}

impl LocalBus {
    /// Attaches node `me` to `net`; its events arrive on `inbox`.
    pub fn new(net: Arc<LocalNet>, me: NodeId, inbox: mpsc::UnboundedSender<Envelope>) -> Self {
        net.inner.lock().inboxes.insert(me.clone(), inbox);
        Self { me, net }
    }
}

impl Drop for LocalBus {
    fn drop(&mut self) {
        let mut inner = self.net.inner.lock();
        inner.inboxes.remove(&self.me);
        for nodes in inner.rooms.values_mut() {
            nodes.remove(&self.me);
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish_node(&self, node: &NodeId, env: &Envelope) -> Result<usize, BusError> {
        let inner = self.net.inner.lock();
        // A node that is gone is like a Redis channel with no subscriber: the
        // publish succeeds and reaches nobody.
        Ok(inner
            .inboxes
            .get(node)
            .map_or(0, |tx| usize::from(tx.send(env.clone()).is_ok())))
    }

    async fn publish_room(&self, room: &RoomName, env: Envelope) -> Result<(), BusError> {
        let inner = self.net.inner.lock();
        if let Some(nodes) = inner.rooms.get(room) {
            for n in nodes.iter().filter(|n| **n != self.me) {
                if let Some(tx) = inner.inboxes.get(n) {
                    let _ = tx.send(env.clone());
                }
            }
        }
        Ok(())
    }

    async fn subscribe_room(&self, room: &RoomName) -> Result<(), BusError> {
        self.net
            .inner
            .lock()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(self.me.clone());
        Ok(())
    }

    async fn unsubscribe_room(&self, room: &RoomName) -> Result<(), BusError> {
        let mut inner = self.net.inner.lock();
        if let Some(nodes) = inner.rooms.get_mut(room) {
            nodes.remove(&self.me);
            if nodes.is_empty() {
                inner.rooms.remove(room);
            }
        }
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
