//! What the core tells a client: [`Event`], one enum for every door.
//!
//! A door's encoder turns an event into its own wire format (or into
//! nothing, when its dialect has no such message). The serde form of an
//! event (`#[serde(tag = "type")]`, kebab-case) is the native protocol's
//! wire form, because the native protocol is the broker's own vocabulary;
//! other dialects map events by hand (see `crate::dialect`). A reply that
//! exists in one dialect only is not a core event: the door encodes it
//! itself and queues it as [`Event::Frame`].

use serde::Serialize;
use serde_json::Value;

use crate::bus::ReplayMsg;
use crate::error::{ClientError, ErrorCode};
use crate::payload::{self, Opaque};
use crate::turn::IceServer;
use crate::types::{
    LeaveReason, Member, PairLostReason, PairedNote, PeerId, RoomClosedReason, RoomName, SignalKind,
};

/// An encoded frame ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A text frame (JSON).
    Text(String),
    /// A binary frame (MessagePack).
    Binary(Vec<u8>),
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// Answer to `hello`.
    Welcome {
        /// The `hello`'s id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        /// The peer id of this connection (requested or assigned).
        peer_id: PeerId,
        /// The node serving the connection.
        node: String,
        /// The client's address as the server sees it (`ip:port`).
        observed_addr: String,
        /// How often the server pings; answer pongs (browsers do) or send `ping`.
        heartbeat_ms: u64,
        /// Put this in the USERNAME of a STUN Binding request to the broker's
        /// STUN port: the observed UDP endpoint is then recorded and sent back
        /// as `endpoint`. Absent when the STUN responder is disabled.
        #[serde(skip_serializing_if = "Option::is_none")]
        stun_username: Option<String>,
        /// Give this back as `hello.reconnect_secret` to take the peer id
        /// over while this connection still holds it (a reconnect).
        reconnect_secret: String,
        /// STUN and TURN servers for this peer's RTCPeerConnection, with
        /// ephemeral TURN credentials; absent when none are configured.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// Give this back as `hello.resume` (with `last_seq`) to resume this
        /// session after its socket is lost; absent when resume is off.
        #[serde(skip_serializing_if = "String::is_empty")]
        resume_token: String,
        /// True when this `welcome` answers a `hello` that resumed a session:
        /// what it missed follows, in `seq` order.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    /// Answer to `join`: the other members at the time of joining.
    Joined {
        /// The `join`'s id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        /// The room.
        room: RoomName,
        /// The other members.
        peers: Vec<Member>,
    },
    /// Another peer joined a room this client is in.
    PeerJoined {
        /// The room.
        room: RoomName,
        /// The new member.
        peer_id: PeerId,
        /// Its metadata.
        meta: Value,
    },
    /// A peer left a room this client is in.
    PeerLeft {
        /// The room.
        room: RoomName,
        /// The member that left.
        peer_id: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// A signal from another peer.
    Signal {
        /// The sender, stamped by the server.
        from: PeerId,
        /// The kind of signal.
        kind: SignalKind,
        /// The opaque payload.
        data: Opaque,
    },
    /// A room broadcast from another member.
    Message {
        /// The room.
        room: RoomName,
        /// The sender, stamped by the server.
        from: PeerId,
        /// The opaque payload.
        data: Opaque,
    },
    /// Answer to `ping`.
    Pong {
        /// The `ping`'s id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// Success of a `leave`, `signal` or `broadcast` that carried an `id`.
    Ack {
        /// The message's id.
        id: Value,
    },
    /// A request failed.
    Error {
        /// The failed message's id, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// The server asks the client to reconnect (to any node) after `after_ms`.
    Reconnect {
        /// Why (`draining`).
        reason: String,
        /// How long to wait before reconnecting, in milliseconds.
        after_ms: u64,
    },
    /// This worker was paired; both sides get it at the same moment.
    Paired(PairedNote),
    /// This worker's pairing ended without it asking.
    PairLost {
        /// The pairing that ended.
        pairing_id: String,
        /// Why.
        reason: PairLostReason,
    },
    /// The broker learned this worker's public UDP endpoint.
    Endpoint {
        /// `ip:port`.
        udp: String,
        /// How it was learned (`stun`).
        source: &'static str,
    },
    /// A room this client was in was closed under it (its lifetime ran out,
    /// or it was deleted): the client is no longer a member.
    RoomClosed {
        /// The room.
        room: RoomName,
        /// Why.
        reason: RoomClosedReason,
    },
    /// A `hello` asked to resume a session that cannot be resumed: the
    /// `welcome` after it starts a fresh session (no rooms, `seq` from 1).
    ResumeFailed {
        /// `expired`, `overflow`, `unknown-seq`, `node-lost`, `unknown`,
        /// `timeout`, `disabled`.
        reason: String,
        /// How many messages the client lost, when the server knows.
        missed: Option<u64>,
    },
    /// A frame a door encoded itself: a reply that only its own dialect
    /// has (the legacy worker's `echo_response`). It is queued like any
    /// event, so it keeps its place among them and counts against the
    /// queue's bounds; the connection's encoder writes it as it is.
    #[serde(skip)]
    Frame(Encoded),
}

impl Event {
    /// The wire name of the message (a bounded metric label).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Joined { .. } => "joined",
            Self::PeerJoined { .. } => "peer-joined",
            Self::PeerLeft { .. } => "peer-left",
            Self::Signal { .. } => "signal",
            Self::Message { .. } => "message",
            Self::Pong { .. } => "pong",
            Self::Ack { .. } => "ack",
            Self::Error { .. } => "error",
            Self::Reconnect { .. } => "reconnect",
            Self::Paired(_) => "paired",
            Self::PairLost { .. } => "pair-lost",
            Self::Endpoint { .. } => "endpoint",
            Self::RoomClosed { .. } => "room-closed",
            Self::ResumeFailed { .. } => "resume-failed",
            Self::Frame(_) => "frame",
        }
    }

    /// The room a room event belongs to.
    pub fn room(&self) -> Option<&RoomName> {
        match self {
            Self::PeerJoined { room, .. }
            | Self::PeerLeft { room, .. }
            | Self::Message { room, .. }
            | Self::RoomClosed { room, .. } => Some(room),
            _ => None,
        }
    }

    /// True for the messages a session is owed across a resume (they carry
    /// `seq`): what others and the cluster send it, not the answers to its
    /// own requests.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            Self::Signal { .. }
                | Self::Message { .. }
                | Self::PeerJoined { .. }
                | Self::PeerLeft { .. }
                | Self::Paired(_)
                | Self::PairLost { .. }
                | Self::Endpoint { .. }
                | Self::RoomClosed { .. }
        )
    }

    /// The form a resumable message crosses to another node in (`None`
    /// for the others).
    pub fn to_replay(&self) -> Option<ReplayMsg> {
        Some(match self.clone() {
            Self::Signal { from, kind, data } => ReplayMsg::Signal { from, kind, data },
            Self::Message { room, from, data } => ReplayMsg::Message { room, from, data },
            Self::PeerJoined {
                room,
                peer_id,
                meta,
            } => ReplayMsg::PeerJoined {
                room,
                member: Member { peer_id, meta },
            },
            Self::PeerLeft {
                room,
                peer_id,
                reason,
            } => ReplayMsg::PeerLeft {
                room,
                peer_id,
                reason,
            },
            Self::Paired(n) => ReplayMsg::Paired(n),
            Self::PairLost { pairing_id, reason } => ReplayMsg::PairLost { pairing_id, reason },
            Self::Endpoint { udp, .. } => ReplayMsg::Endpoint { udp },
            Self::RoomClosed { room, reason } => ReplayMsg::RoomClosed { room, reason },
            _ => return None,
        })
    }

    /// The message a [`ReplayMsg`] stands for.
    pub fn from_replay(r: ReplayMsg) -> Self {
        match r {
            ReplayMsg::Signal { from, kind, data } => Self::Signal { from, kind, data },
            ReplayMsg::Message { room, from, data } => Self::Message { room, from, data },
            ReplayMsg::PeerJoined { room, member } => Self::PeerJoined {
                room,
                peer_id: member.peer_id,
                meta: member.meta,
            },
            ReplayMsg::PeerLeft {
                room,
                peer_id,
                reason,
            } => Self::PeerLeft {
                room,
                peer_id,
                reason,
            },
            ReplayMsg::Paired(n) => Self::Paired(n),
            ReplayMsg::PairLost { pairing_id, reason } => Self::PairLost { pairing_id, reason },
            ReplayMsg::Endpoint { udp } => Self::Endpoint {
                udp,
                source: "stun",
            },
            ReplayMsg::RoomClosed { room, reason } => Self::RoomClosed { room, reason },
        }
    }

    /// Builds an `error` message.
    pub fn error(id: Option<Value>, e: ClientError) -> Self {
        Self::Error {
            id,
            code: e.code,
            message: e.message,
        }
    }

    /// An upper bound of the heap the message holds beyond its own size
    /// (what a queued message pins; see `hub`). Names are counted though a
    /// clone of one shares its text, and value trees at what their nodes
    /// may take ([`payload::value_heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        let v = payload::value_heap_bytes;
        let id = |i: &Option<Value>| i.as_ref().map_or(0, v);
        match self {
            Self::Welcome {
                id: i,
                peer_id,
                node,
                observed_addr,
                stun_username,
                ..
            } => {
                id(i)
                    + peer_id.as_str().len()
                    + node.capacity()
                    + observed_addr.capacity()
                    + stun_username.as_ref().map_or(0, String::capacity)
            }
            Self::Joined { id: i, room, peers } => {
                id(i)
                    + room.as_str().len()
                    + peers.capacity() * std::mem::size_of::<Member>()
                    + peers
                        .iter()
                        .map(|m| m.peer_id.as_str().len() + v(&m.meta))
                        .sum::<usize>()
            }
            Self::PeerJoined {
                room,
                peer_id,
                meta,
            } => room.as_str().len() + peer_id.as_str().len() + v(meta),
            Self::PeerLeft { room, peer_id, .. } => room.as_str().len() + peer_id.as_str().len(),
            Self::Signal { from, kind, data } => {
                from.as_str().len() + kind.as_str().len() + data.heap_bytes()
            }
            Self::Message { room, from, data } => {
                room.as_str().len() + from.as_str().len() + data.heap_bytes()
            }
            Self::Pong { id: i } => id(i),
            Self::Ack { id: i } => v(i),
            Self::Error { id: i, message, .. } => id(i) + message.capacity(),
            Self::Reconnect { reason, .. } => reason.capacity(),
            Self::Paired(n) => {
                n.pairing_id.capacity()
                    + n.peer.peer_id.as_str().len()
                    + n.peer.observed_addr.capacity()
                    + n.peer.public_ip.as_ref().map_or(0, String::capacity)
                    + n.peer.udp.as_ref().map_or(0, String::capacity)
            }
            Self::PairLost { pairing_id, .. } => pairing_id.capacity(),
            Self::Endpoint { udp, .. } => udp.capacity(),
            Self::RoomClosed { room, .. } => room.as_str().len(),
            Self::ResumeFailed { reason, .. } => reason.capacity(),
            Self::Frame(Encoded::Text(t)) => t.capacity(),
            Self::Frame(Encoded::Binary(b)) => b.capacity(),
        }
    }
}
