//! The bus seam: how events reach other nodes.
//!
//! Backends: [`local::LocalBus`] (in-process; the embedded single node, and
//! several in-process nodes in unit tests) and, with `cluster.redis_url`, Redis
//! pub/sub. The router never knows which one runs.
//!
//! Guarantees every backend keeps:
//! - events from one publisher to one channel arrive in publish order;
//! - an event is delivered at most once per subscribed node;
//! - a node never receives its own room events (the envelope names the origin,
//!   and receivers drop their own);
//! - `publish_*` returns an error rather than silently dropping when the
//!   backend cannot accept the event.

pub mod local;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::payload::Opaque;
use crate::protocol::{LeaveReason, Member, PairLostReason, PairedNote};
use crate::types::{NodeId, PeerId, RoomName, SignalKind};

/// Version of the inter-node envelope; receivers drop other versions (and
/// count them in `switchboard_bus_decode_errors_total`). 2: relay batches,
/// acknowledgements and bounces between nodes, `data` as JSON text or a
/// value (`crate::payload::wire`), externally tagged events.
pub const ENVELOPE_VERSION: u8 = 2;

/// An event between nodes, in a versioned envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`ENVELOPE_VERSION`].
    pub v: u8,
    /// The node that published it.
    pub origin: NodeId,
    /// Per-origin sequence number, to drop duplicates and spot gaps.
    pub seq: u64,
    /// The event.
    pub event: NodeEvent,
}

/// What one node tells another. Externally tagged (`{"signal": {...}}`):
/// an internally tagged enum would make serde buffer every event (and every
/// event of a batch) into an intermediate tree before decoding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeEvent {
    /// A direct signal for a peer connected to the receiving node.
    Signal(RemoteSignal),
    /// A signal the receiving node sent whose target was not at this node:
    /// the sender's node looks the target up again (see [`crate::relay`]).
    Bounced(RemoteSignal),
    /// A signal with an `id` reached its target's queue: ack it to the sender.
    Delivered {
        /// The sender, on the receiving node.
        to: PeerId,
        /// The sender's connection.
        to_epoch: u64,
        /// The `id` of the sender's `signal`.
        id: Value,
    },
    /// The sender's node stops sending signals for this peer through the
    /// receiving node: stop bouncing them, and answer `flushed`.
    Flush {
        /// The peer.
        peer_id: PeerId,
    },
    /// Answer to `flush`: every earlier signal for this peer was bounced.
    Flushed {
        /// The peer.
        peer_id: PeerId,
    },
    /// Several events for the receiving node, in order (one publish).
    Batch {
        /// The events.
        events: Vec<NodeEvent>,
    },
    /// A room broadcast for the receiving node's local members.
    Message {
        /// Room.
        room: RoomName,
        /// Sender.
        from: PeerId,
        /// Payload.
        #[serde(with = "crate::payload::wire")]
        data: Opaque,
    },
    /// A peer joined a room.
    PeerJoined {
        /// Room.
        room: RoomName,
        /// The member.
        member: Member,
    },
    /// A peer left a room.
    PeerLeft {
        /// Room.
        room: RoomName,
        /// The peer.
        peer_id: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// A readiness probe a node sends itself, proving pub/sub delivers end to end.
    Probe {
        /// Random value the sender waits to see again.
        nonce: u64,
    },
    /// Close the given connection of a local peer: a newer one exists elsewhere.
    Kick {
        /// The peer.
        peer_id: PeerId,
        /// The connection to close (a newer local one is left alone).
        epoch: u64,
    },
    /// A worker of the receiving node was paired (by another node's match or
    /// an operator's request handled elsewhere): tell it.
    Paired {
        /// The worker to tell.
        to: PeerId,
        /// Its connection (a newer one is not told).
        to_epoch: u64,
        /// What to tell it.
        paired: PairedNote,
    },
    /// A worker of the receiving node lost its partner.
    PairLost {
        /// The worker to tell.
        to: PeerId,
        /// Its connection.
        to_epoch: u64,
        /// The pairing that ended.
        pairing_id: String,
        /// Why.
        reason: PairLostReason,
    },
    /// A STUN request carrying the `stun_username` of one of the receiving
    /// node's connections was answered by another node.
    Observed {
        /// The random part of the username (the receiving node resolves it).
        token: String,
        /// The request's source (`ip:port`): the connection's public UDP endpoint.
        udp: String,
    },
}

impl NodeEvent {
    /// A bounded label for metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Signal(_) => "signal",
            Self::Bounced(_) => "bounced",
            Self::Delivered { .. } => "delivered",
            Self::Batch { .. } => "batch",
            Self::Flush { .. } => "flush",
            Self::Flushed { .. } => "flushed",
            Self::Message { .. } => "message",
            Self::PeerJoined { .. } => "peer-joined",
            Self::PeerLeft { .. } => "peer-left",
            Self::Kick { .. } => "kick",
            Self::Probe { .. } => "probe",
            Self::Paired { .. } => "paired",
            Self::PairLost { .. } => "pair-lost",
            Self::Observed { .. } => "observed",
        }
    }
}

/// A direct signal between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteSignal {
    /// Sender.
    pub from: PeerId,
    /// The sender's connection (errors and acks go to it, not to a newer one).
    pub from_epoch: u64,
    /// Target.
    pub to: PeerId,
    /// The target's connection epoch the sender's node resolved.
    pub to_epoch: u64,
    /// Kind.
    pub kind: SignalKind,
    /// Payload.
    #[serde(with = "crate::payload::wire")]
    pub data: Opaque,
    /// The `id` of the sender's `signal`, when it asked for an `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Times the sender's node re-sent it after a bounce (at most 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hops: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Why the bus could not take an event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The backend is unreachable (Redis down, subscriber lost).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// The bus seam; see the module docs for the guarantees.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes an event to one node (direct signals, kicks); returns how many
    /// subscribers received it: 0 means that node is not listening (dead, or
    /// its subscriber is reconnecting), and the event is lost.
    async fn publish_node(&self, node: &NodeId, env: &Envelope) -> Result<usize, BusError>;
    /// Publishes a room event to every node subscribed to the room.
    async fn publish_room(&self, room: &RoomName, env: Envelope) -> Result<(), BusError>;
    /// Starts receiving the room's events (when the room gets its first local member).
    async fn subscribe_room(&self, room: &RoomName) -> Result<(), BusError>;
    /// Stops receiving the room's events (when its last local member leaves).
    async fn unsubscribe_room(&self, room: &RoomName) -> Result<(), BusError>;
    /// True while the bus delivers end to end (for readiness: should this node get traffic?).
    fn is_ready(&self) -> bool;
    /// False when the backend is plainly unreachable (its connections are down),
    /// so operations that need it can fail fast instead of waiting for a timeout.
    /// Weaker than readiness on purpose: a slow probe must not refuse work.
    fn is_connected(&self) -> bool {
        true
    }
    /// A short name for logs (`local`, `redis`).
    fn name(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signal_data_crosses_the_bus_as_json_text_or_as_a_value() {
        let raw = serde_json::value::RawValue::from_string(r#"{"sdp": "v=0\r\n"}"#.into()).unwrap();
        let sig = |data: Opaque| RemoteSignal {
            from: PeerId::from_trusted("a"),
            from_epoch: 1,
            to: PeerId::from_trusted("b"),
            to_epoch: 2,
            kind: SignalKind::from_trusted("offer"),
            data,
            id: Some(json!("s1")),
            hops: 0,
        };
        let env = Envelope {
            v: ENVELOPE_VERSION,
            origin: NodeId::from_trusted("n1"),
            seq: 7,
            event: NodeEvent::Batch {
                events: vec![
                    NodeEvent::Signal(sig(Opaque::Json(raw.clone()))),
                    NodeEvent::Signal(sig(Opaque::Value(json!({"bin": [1, 2]})))),
                    NodeEvent::Message {
                        room: RoomName::from_trusted("r"),
                        from: PeerId::from_trusted("a"),
                        data: Opaque::Json(raw),
                    },
                ],
            },
        };
        let bytes = rmp_serde::to_vec_named(&env).unwrap();
        let back: Envelope = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, env);
        let NodeEvent::Batch { events } = back.event else {
            panic!("a batch")
        };
        // JSON text stays text, byte for byte; a value stays a value.
        match &events[0] {
            NodeEvent::Signal(s) => match &s.data {
                Opaque::Json(r) => assert_eq!(r.get(), r#"{"sdp": "v=0\r\n"}"#),
                other => panic!("expected JSON text, got {other:?}"),
            },
            other => panic!("expected a signal, got {other:?}"),
        }
        match &events[1] {
            NodeEvent::Signal(s) => assert!(matches!(s.data, Opaque::Value(_))),
            other => panic!("expected a signal, got {other:?}"),
        }
        match &events[2] {
            NodeEvent::Message { data, .. } => assert!(matches!(data, Opaque::Json(_))),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}
