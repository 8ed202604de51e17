//! What a node keeps per connection past registration: the [`Session`],
//! owned by the connection's task, and the [`RdvConn`] record the node's
//! maps share (the STUN token, the reconnect secret, worker state).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use super::hub::{ConnHandle, Hub};
use crate::metrics as m;
use crate::store::{Door, SecretHash};
use crate::types::{PeerId, RoomName};

/// The state of one connection past registration, owned by its connection task.
#[derive(Debug)]
pub struct Session {
    /// The peer id (requested, from the token, or assigned).
    pub peer: PeerId,
    /// This connection's epoch.
    pub epoch: u64,
    /// The handle other tasks reach this connection through.
    pub handle: ConnHandle,
    /// Metadata given at registration, the default for rooms joined without their own.
    pub meta: Value,
    /// Rooms joined on this connection (bounded by `limits.max_rooms_per_peer`).
    pub rooms: HashSet<RoomName>,
    /// The node's record of this connection (STUN token, worker state).
    pub rdv: Arc<RdvConn>,
    /// Rooms its token grants (the JWT's `rooms` claim): it joins them
    /// without the room's own token. Empty (no allocation) for most.
    pub room_grants: Box<[String]>,
    /// Its client can resume it: when its socket ends without the client
    /// saying it is done, it is parked (see `crate::node::resume`).
    pub resumable: bool,
}

impl Session {
    /// Drops from [`Session::rooms`] the rooms closed under this connection
    /// (deleted or expired: the hub no longer lists it there). Costs one
    /// atomic load unless a room was closed.
    pub fn sync_rooms(&mut self, hub: &Hub) {
        if self.handle.take_rooms_closed() {
            let (peer, epoch) = (&self.peer, self.epoch);
            self.rooms.retain(|r| hub.is_member(r, peer, epoch));
        }
    }

    /// True when the connection's token grants `room` (see
    /// [`Session::room_grants`]).
    pub fn granted(&self, room: &RoomName) -> bool {
        self.room_grants.iter().any(|g| g == room.as_str())
    }
}

/// What this node knows about one of its connections, beyond its socket:
/// shared by the node's maps (by peer, by STUN token) and the session.
#[derive(Debug)]
pub struct RdvConn {
    /// The peer.
    pub peer: PeerId,
    /// The connection's epoch.
    pub epoch: u64,
    /// The random half of its STUN username.
    pub token: String,
    /// The door it came through.
    pub door: Door,
    /// The TCP address the broker saw (after trusted-proxy headers).
    pub observed: SocketAddr,
    /// SHA-256 of the connection's `reconnect_secret`: a registration on this
    /// node that gives the secret may take the peer id over.
    pub secret: SecretHash,
    /// Set once this connection has a worker record (so disconnect removes it
    /// and the gauge counts it once).
    pub(crate) worker: AtomicBool,
    /// The gauge label it is counted under while it is a worker.
    pub(crate) pool_label: Mutex<&'static str>,
    /// The pairing this connection was last told about (`paired` without a
    /// `pair-lost` since), so it can be told `pair-lost` if the store lost the
    /// pairing while this node was cut off (see `Rendezvous::reconcile`).
    pub(crate) pairing: Mutex<Option<String>>,
}

impl RdvConn {
    /// A record for a new connection, not (yet) a worker.
    pub fn new(
        peer: PeerId,
        epoch: u64,
        token: String,
        door: Door,
        observed: SocketAddr,
        secret: SecretHash,
    ) -> Self {
        Self {
            peer,
            epoch,
            token,
            door,
            observed,
            secret,
            worker: AtomicBool::new(false),
            pool_label: Mutex::new("none"),
            pairing: Mutex::new(None),
        }
    }

    /// True once the connection has a worker record.
    pub fn is_worker(&self) -> bool {
        self.worker.load(Ordering::Acquire)
    }

    /// Clears the worker flag and takes the connection out of the workers
    /// gauge; true when it was a worker.
    pub(crate) fn clear_worker(&self) -> bool {
        let was = self.worker.swap(false, Ordering::AcqRel);
        if was {
            metrics::gauge!(m::WORKERS, "pool" => *self.pool_label.lock()).decrement(1.0);
        }
        was
    }
}
