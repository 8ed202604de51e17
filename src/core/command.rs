//! What a client asks of the core: [`Command`], decoded by a door from its
//! wire format, with names already validated (see [`crate::types`]).

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

use crate::payload::Opaque;
use crate::types::{PeerId, PoolName, RoomName, SignalKind};

/// A validated client command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Identify the connection; must come first.
    Hello {
        /// Requested peer id; the server assigns a UUID when absent.
        peer_id: Option<PeerId>,
        /// Metadata other peers see in presence lists.
        meta: Value,
        /// A JWT, required when `auth.jwt` is configured.
        token: Option<String>,
        /// The previous connection's `welcome.reconnect_secret`: proves that
        /// this client may take over the peer id while that one is still
        /// connected.
        reconnect_secret: Option<String>,
        /// A `welcome.resume_token` and the last `seq` the client received:
        /// resume that session (see `crate::node::resume`).
        resume: Option<(String, u64)>,
        /// The client can resume: its session is numbered (`seq`), its
        /// `welcome` carries a `resume_token`, and it is parked when its
        /// socket is lost (implied by `resume`).
        resumable: bool,
    },
    /// Join a room.
    Join {
        /// The room.
        room: RoomName,
        /// Per-room metadata, shown to the other members.
        meta: Value,
        /// The room's join token, for a room created with one.
        token: Option<String>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomName,
    },
    /// Send a payload to one peer.
    Signal {
        /// The target.
        to: PeerId,
        /// The kind of signal.
        kind: SignalKind,
        /// The opaque payload.
        data: Opaque,
    },
    /// Send a payload to every other member of a room.
    Broadcast {
        /// The room.
        room: RoomName,
        /// The opaque payload.
        data: Opaque,
    },
    /// Application-level ping; answered with `pong`.
    Ping,
    /// Queue for pairing with another worker of a pool (rendezvous).
    Pair {
        /// The pool (`default` when absent).
        pool: PoolName,
        /// Metadata stored with the worker record.
        meta: Value,
    },
    /// End the current pairing, or stop waiting in a queue.
    Unpair,
    /// Report endpoints learned elsewhere.
    Endpoint {
        /// The worker's public IP.
        public_ip: Option<IpAddr>,
        /// The worker's public UDP endpoint.
        udp: Option<SocketAddr>,
    },
}

/// The pool a `pair` without `pool` queues in.
pub const DEFAULT_POOL: &str = "default";

impl Command {
    /// The wire name of the command (a bounded metric label).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Signal { .. } => "signal",
            Self::Broadcast { .. } => "broadcast",
            Self::Ping => "ping",
            Self::Pair { .. } => "pair",
            Self::Unpair => "unpair",
            Self::Endpoint { .. } => "endpoint",
        }
    }
}
