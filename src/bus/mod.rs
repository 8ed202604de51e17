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
//!
//! On the wire (Redis) an [`Envelope`] is MessagePack in two layers (see
//! [`Envelope::encode`]): a header that always decodes (version, origin,
//! sequence number) around the event as a byte string of its own, and inside a
//! batch every event again as its own byte string. Each event is decoded on
//! its own, so an event that cannot be decoded (hostile nesting, a bug, a
//! newer peer) costs only itself: it becomes [`NodeEvent::Undecodable`], is
//! counted and logged, and when it was a signal whose sender can still be
//! read, the sender is told (`undeliverable`, an `error` at its node).

pub mod local;
pub mod redis;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use async_trait::async_trait;
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::metrics as m;
use crate::payload::Opaque;
use crate::types::{LeaveReason, Member, PairLostReason, PairedNote, RoomClosedReason};
use crate::types::{NodeId, PeerId, RoomName, SignalKind};

/// Version of the inter-node envelope; receivers drop other versions (counted
/// in `switchboard_bus_version_mismatch_total`, logged at warn once per
/// version). 2: relay batches, acknowledgements and bounces between nodes,
/// `data` as JSON text or a value (`crate::payload::wire`), externally tagged
/// events. 3: every event travels as a MessagePack byte string of its own, in
/// the envelope and in a batch, and is decoded on its own (one undecodable
/// event no longer fails its whole batch); `undeliverable` answers a signal
/// the receiving node could not decode. Nodes of versions 2 and 3 do not
/// understand each other: upgrade every node of a cluster together (or run
/// the new version under its own `cluster.key_prefix` and move clients over).
pub const ENVELOPE_VERSION: u8 = 3;

/// Deepest nesting (maps and arrays) a receiver accepts in one event: above
/// the deepest `limits.max_nesting_depth` a door may be configured with
/// ([`crate::config::MAX_NESTING_DEPTH`]) plus the levels an event adds
/// around `data` or `meta`, so whatever one node accepted from a client
/// decodes on every other; deeper events (from a hostile or broken
/// publisher) are answered as undecodable. It also bounds the decoder's
/// recursion, so no event can exhaust a worker's stack.
pub const EVENT_MAX_DEPTH: usize = crate::config::MAX_NESTING_DEPTH + 28;

/// An event between nodes, in a versioned envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// [`ENVELOPE_VERSION`].
    pub v: u8,
    /// The node that published it.
    pub origin: NodeId,
    /// Per-origin sequence number, for diagnostics. Receivers do not drop
    /// by it: seq numbers are taken before concurrent publishes from
    /// different tasks, so one origin's envelopes may arrive out of seq
    /// order, and Redis pub/sub does not duplicate (docs/DESIGN.md,
    /// "Duplicates"). An at-least-once transport would key a dedup window on
    /// `(origin, seq)`.
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
    /// A signal from the receiving node could not be decoded here: tell its
    /// sender (an `error`), instead of letting the signal vanish.
    Undeliverable {
        /// The sender, on the receiving node.
        to: PeerId,
        /// The sender's connection.
        to_epoch: u64,
        /// The `id` of the sender's `signal`, when it had one that could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
        /// The signal's target, when it could be read (for the message).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<PeerId>,
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
    /// Several events for the receiving node, in order (one publish). On the
    /// wire each event is a byte string of its own, decoded on its own.
    Batch {
        /// The events.
        #[serde(serialize_with = "ser_events", deserialize_with = "de_events")]
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
    /// A room was closed (deleted, or expired): these members of it are
    /// members no more; the receiving node tells and drops its own.
    RoomClosed {
        /// Room.
        room: RoomName,
        /// Why.
        reason: RoomClosedReason,
        /// The memberships the store removed: `(peer, connection epoch)`
        /// (so a connection that joined a new room of the same name since
        /// keeps that membership).
        members: Vec<(PeerId, u64)>,
    },
    /// A frame relayed on a dashboard channel, for the receiving node's
    /// subscribers of that channel (see `crate::dashboard`).
    DashRelay {
        /// The channel (any characters).
        channel: String,
        /// The frame, as its sender wrote it.
        text: String,
    },
    /// The dashboard room list changed (see `crate::dashboard`).
    DashRooms {
        /// Its version: a receiver drops a list older than one it delivered.
        version: u64,
        /// The `rooms` array as JSON text.
        rooms: String,
    },
    /// The number of dashboard sockets changed: receivers read it again.
    DashCount {},
    /// A message of the operator console (`crate::console`): node stats
    /// and log entries on the console's bus channel, chat lines to one
    /// node. JSON text the console reads itself (a malformed one is
    /// dropped there).
    Console {
        /// The console message as JSON text.
        text: String,
    },
    /// A step of a session resumed on another node (see `crate::node::resume`).
    Resume(Box<ResumeStep>),
    /// Never sent: what the receiver makes of an event it could not decode.
    #[serde(skip)]
    Undecodable(Box<Undecodable>),
}

/// The steps of handing a parked session from the node that parked it (the
/// old node) to the node its client resumed on (the new node). Each names
/// the session by peer and epoch (a resumed session keeps its epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResumeStep {
    /// New → old: the client resumed here with a proof the directory
    /// accepted and has read up to `last_seq`: hand the session over.
    Ask {
        /// The peer.
        peer: PeerId,
        /// Its session's epoch.
        epoch: u64,
        /// The last `seq` the client has.
        last_seq: u64,
    },
    /// Old → new: direct signals now bounce to the new node; these are the
    /// session's rooms (with the metadata it joined with): join them there,
    /// then answer `ready`.
    Rooms {
        /// The peer.
        peer: PeerId,
        /// Its session's epoch.
        epoch: u64,
        /// `(room, meta)` of every room the session is in.
        rooms: Vec<(RoomName, Value)>,
    },
    /// New → old: the new node receives the session's rooms' events now;
    /// the old node stops and sends `data`.
    Ready {
        /// The peer.
        peer: PeerId,
        /// Its session's epoch.
        epoch: u64,
    },
    /// Old → new: the session, and every message after `last_seq`.
    Data {
        /// The peer.
        peer: PeerId,
        /// Its session's epoch.
        epoch: u64,
        /// What the session was.
        state: Box<ResumedState>,
    },
    /// Old → new: the session cannot be resumed (the client gets a fresh one).
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its session's epoch.
        epoch: u64,
        /// `expired`, `overflow`, `unknown-seq`, ... (`resume-failed.reason`).
        reason: String,
        /// Messages the client lost, when known.
        missed: Option<u64>,
    },
}

/// A parked session as the old node hands it over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumedState {
    /// The metadata given at registration.
    pub meta: Value,
    /// Rooms its token grants.
    pub room_grants: Vec<String>,
    /// The messages after the client's `last_seq`, in order.
    pub replay: Vec<Replayed>,
    /// The `seq` of the session's next message.
    pub next_seq: u64,
    /// The worker it was, if any: its pool's metric label, and its pairing.
    pub worker: Option<(String, Option<String>)>,
}

/// One message handed over with a resumed session: its `seq`, its room
/// event tag (0: none) and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    /// Its `seq`.
    pub seq: u64,
    /// Its tag (`crate::core::hub::event_tag`), 0 for direct messages.
    pub tag: u64,
    /// The message.
    pub msg: ReplayMsg,
}

/// The messages a resumed session can be owed (`Event::resumable`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayMsg {
    /// `signal`.
    Signal {
        /// Sender.
        from: PeerId,
        /// Kind.
        kind: SignalKind,
        /// Payload.
        #[serde(with = "crate::payload::wire")]
        data: Opaque,
    },
    /// `message`.
    Message {
        /// Room.
        room: RoomName,
        /// Sender.
        from: PeerId,
        /// Payload.
        #[serde(with = "crate::payload::wire")]
        data: Opaque,
    },
    /// `peer-joined`.
    PeerJoined {
        /// Room.
        room: RoomName,
        /// The member.
        member: Member,
    },
    /// `peer-left`.
    PeerLeft {
        /// Room.
        room: RoomName,
        /// The peer.
        peer_id: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// `paired`.
    Paired(PairedNote),
    /// `pair-lost`.
    PairLost {
        /// The pairing.
        pairing_id: String,
        /// Why.
        reason: PairLostReason,
    },
    /// `endpoint`.
    Endpoint {
        /// `ip:port`.
        udp: String,
    },
    /// `room-closed`.
    RoomClosed {
        /// Room.
        room: RoomName,
        /// Why.
        reason: RoomClosedReason,
    },
}

impl NodeEvent {
    /// A bounded label for metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Signal(_) => "signal",
            Self::Bounced(_) => "bounced",
            Self::Delivered { .. } => "delivered",
            Self::Undeliverable { .. } => "undeliverable",
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
            Self::RoomClosed { .. } => "room-closed",
            Self::DashRelay { .. } => "dash-relay",
            Self::DashRooms { .. } => "dash-rooms",
            Self::DashCount {} => "dash-count",
            Self::Console { .. } => "console",
            Self::Resume(_) => "resume",
            Self::Undecodable(_) => "undecodable",
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

/// An event that did not decode, and what could still be read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Undecodable {
    /// The event's tag when it is one this node knows (a [`NodeEvent::kind_name`]), else `unknown`.
    pub kind: &'static str,
    /// Why it did not decode (for the log).
    pub error: String,
    /// The sender of a `signal` or `bounced` event, when its header could be read.
    pub sender: Option<SignalSender>,
}

/// The header of a signal that did not decode: enough to answer its sender.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSender {
    /// The sender.
    pub from: PeerId,
    /// The sender's connection.
    pub from_epoch: u64,
    /// The target, if it could be read.
    pub to: Option<PeerId>,
    /// The `id` of the sender's `signal`, if it had one that could be read.
    pub id: Option<Value>,
}

/// Why a bus payload is not an envelope this node can use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// An envelope of another version (a node of another release).
    #[error("envelope version {version}, this node speaks {ENVELOPE_VERSION}")]
    Version {
        /// The version it carries.
        version: u8,
        /// Its origin, when it could be read.
        origin: Option<NodeId>,
    },
    /// Not an envelope at all.
    #[error("not an envelope: {0}")]
    Malformed(String),
}

/// The envelope's outer layer: always shallow, so it always decodes.
#[derive(Deserialize)]
struct WireEnvelope<'a> {
    v: u8,
    origin: NodeId,
    seq: u64,
    #[serde(borrow)]
    event: &'a [u8],
}

/// Enough of any envelope (of any version) to say which version it is.
#[derive(Deserialize)]
struct VersionProbe {
    v: u8,
    #[serde(default)]
    origin: Option<NodeId>,
}

impl Envelope {
    /// Encodes for the bus, as a MessagePack map
    /// `{"v": 3, "origin": str, "seq": uint, "event": bin}`, where the bin
    /// holds the event (externally tagged, structs as maps), except that a
    /// batch is `{"batch": {"events": [bin, ...]}}` with one bin per event.
    /// Events are written in place (the byte string's length is patched
    /// afterwards), so the layering costs five bytes per event, not a copy.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        buf.push(0x84);
        put_str(&mut buf, "v");
        put_uint(&mut buf, self.v.into());
        put_str(&mut buf, "origin");
        put_str(&mut buf, self.origin.as_str());
        put_str(&mut buf, "seq");
        put_uint(&mut buf, self.seq);
        put_str(&mut buf, "event");
        put_bin(&mut buf, |b| encode_event(b, &self.event));
        buf
    }

    /// Decodes what [`Envelope::encode`] wrote. Fails only when the outer
    /// layer is unreadable or of another version; an event inside that does
    /// not decode becomes [`NodeEvent::Undecodable`] and costs only itself.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        match rmp_serde::from_slice::<WireEnvelope<'_>>(bytes) {
            Ok(w) if w.v == ENVELOPE_VERSION => Ok(Envelope {
                v: w.v,
                origin: w.origin,
                seq: w.seq,
                event: decode_event(w.event),
            }),
            Ok(w) => Err(DecodeError::Version {
                version: w.v,
                origin: Some(w.origin),
            }),
            Err(e) => match rmp_serde::from_slice::<VersionProbe>(bytes) {
                Ok(p) if p.v != ENVELOPE_VERSION => Err(DecodeError::Version {
                    version: p.v,
                    origin: p.origin,
                }),
                _ => Err(DecodeError::Malformed(e.to_string())),
            },
        }
    }
}

/// Decodes one event of an envelope or a batch, with its own depth budget.
/// A batch inside a batch is not something a node sends, and is not decoded
/// (each level would start a fresh depth budget on the same stack).
fn decode_event(bytes: &[u8]) -> NodeEvent {
    thread_local! {
        static LEVEL: Cell<u8> = const { Cell::new(0) };
    }
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEVEL.set(self.0);
        }
    }
    let level = LEVEL.get();
    if level >= 2 {
        return NodeEvent::Undecodable(Box::new(Undecodable::read(
            bytes,
            "an event nested in a batch inside a batch".into(),
        )));
    }
    LEVEL.set(level + 1);
    let _restore = Restore(level);
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(EVENT_MAX_DEPTH);
    match NodeEvent::deserialize(&mut de) {
        Ok(e) => e,
        Err(e) => NodeEvent::Undecodable(Box::new(Undecodable::read(bytes, e.to_string()))),
    }
}

fn encode_event(buf: &mut Vec<u8>, event: &NodeEvent) {
    match event {
        NodeEvent::Batch { events } => {
            buf.push(0x81);
            put_str(buf, "batch");
            buf.push(0x81);
            put_str(buf, "events");
            let sendable = |e: &&NodeEvent| !matches!(e, NodeEvent::Undecodable(_));
            put_array_len(buf, events.iter().filter(sendable).count());
            for e in events.iter().filter(sendable) {
                put_bin(buf, |b| encode_event(b, e));
            }
        }
        // Never queued for another node; an empty batch keeps the framing whole.
        NodeEvent::Undecodable(_) => encode_event(buf, &NodeEvent::Batch { events: Vec::new() }),
        e => rmp_serde::encode::write_named(buf, e).expect("a bus event encodes"),
    }
}

/// A `bin 32` whose content `f` writes in place; the length is patched after.
fn put_bin(buf: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    buf.push(0xc6);
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    f(buf);
    let len = u32::try_from(buf.len() - at - 4).expect("an event is smaller than 4 GiB");
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    rmp_serde::encode::write(buf, s).expect("writing to a Vec");
}

fn put_uint(buf: &mut Vec<u8>, n: u64) {
    rmp_serde::encode::write(buf, &n).expect("writing to a Vec");
}

fn put_array_len(buf: &mut Vec<u8>, n: usize) {
    match n {
        0..=15 => buf.push(0x90 | n as u8),
        16..=0xffff => {
            buf.push(0xdc);
            buf.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            buf.push(0xdd);
            buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// One event of a batch, decoded from its own byte string.
struct EventBytes(NodeEvent);

impl<'de> Deserialize<'de> for EventBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EventBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded event (bin)")
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<EventBytes, E> {
                Ok(EventBytes(decode_event(b)))
            }
        }
        d.deserialize_bytes(V)
    }
}

fn de_events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NodeEvent>, D::Error> {
    let events = Vec::<EventBytes>::deserialize(d)?;
    Ok(events.into_iter().map(|e| e.0).collect())
}

/// The serde form of a batch's events (the bus itself uses [`Envelope::encode`],
/// which writes the same bytes without the copies).
fn ser_events<S: Serializer>(events: &[NodeEvent], s: S) -> Result<S::Ok, S::Error> {
    struct Bin(Vec<u8>);
    impl Serialize for Bin {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    s.collect_seq(
        events
            .iter()
            .filter(|e| !matches!(e, NodeEvent::Undecodable(_)))
            .map(|e| {
                let mut b = Vec::new();
                encode_event(&mut b, e);
                Bin(b)
            }),
    )
}

impl Undecodable {
    /// Reads what it can of an event that did not decode: its tag and, for
    /// a signal (or a bounced one), its sender. Without recursion, so no
    /// nesting depth can stop it; a part that cannot be read is left out.
    fn read(bytes: &[u8], error: String) -> Undecodable {
        let mut u = Undecodable {
            kind: "unknown",
            error,
            sender: None,
        };
        let mut rd = peek::Rd(bytes);
        let Some(tag) = rd.map_len().filter(|n| *n == 1).and_then(|_| rd.str()) else {
            return u;
        };
        u.kind = kind_of_tag(tag);
        if matches!(u.kind, "signal" | "bounced") {
            u.sender = read_sender(&mut rd);
        }
        u
    }
}

fn kind_of_tag(tag: &str) -> &'static str {
    const KINDS: [&str; 21] = [
        "signal",
        "bounced",
        "delivered",
        "undeliverable",
        "batch",
        "flush",
        "flushed",
        "message",
        "peer-joined",
        "peer-left",
        "kick",
        "probe",
        "paired",
        "pair-lost",
        "observed",
        "room-closed",
        "dash-relay",
        "dash-rooms",
        "dash-count",
        "console",
        "resume",
    ];
    KINDS.into_iter().find(|k| *k == tag).unwrap_or("unknown")
}

fn read_sender(rd: &mut peek::Rd<'_>) -> Option<SignalSender> {
    let n = rd.map_len()?;
    let (mut from, mut from_epoch, mut to, mut id) = (None, None, None, None);
    for _ in 0..n {
        let (Some(key), Some(raw)) = (rd.str(), rd.skip()) else {
            break;
        };
        let mut v = peek::Rd(raw);
        match key {
            "from" => from = v.str().map(PeerId::from_trusted),
            "from_epoch" => from_epoch = v.uint(),
            "to" => to = v.str().map(PeerId::from_trusted),
            "id" => id = rmp_serde::from_slice::<Value>(raw).ok(),
            _ => {}
        }
    }
    Some(SignalSender {
        from: from?,
        from_epoch: from_epoch?,
        to,
        id,
    })
}

/// Just enough MessagePack reading to name the sender of an event that did
/// not decode, with no recursion.
mod peek {
    /// A reader over the remaining bytes.
    pub(super) struct Rd<'a>(pub(super) &'a [u8]);

    impl<'a> Rd<'a> {
        fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }

        fn take(&mut self, n: u64) -> Option<&'a [u8]> {
            let n = usize::try_from(n).ok()?;
            if self.0.len() < n {
                return None;
            }
            let (a, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(a)
        }

        fn be(&mut self, n: u64) -> Option<u64> {
            Some(
                self.take(n)?
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            )
        }

        /// A map header's length.
        pub(super) fn map_len(&mut self) -> Option<u64> {
            match self.byte()? {
                m @ 0x80..=0x8f => Some(u64::from(m & 0x0f)),
                0xde => self.be(2),
                0xdf => self.be(4),
                _ => None,
            }
        }

        /// A string.
        pub(super) fn str(&mut self) -> Option<&'a str> {
            let n = match self.byte()? {
                m @ 0xa0..=0xbf => u64::from(m & 0x1f),
                0xd9 => self.be(1)?,
                0xda => self.be(2)?,
                0xdb => self.be(4)?,
                _ => return None,
            };
            std::str::from_utf8(self.take(n)?).ok()
        }

        /// An unsigned integer.
        pub(super) fn uint(&mut self) -> Option<u64> {
            match self.byte()? {
                m @ 0x00..=0x7f => Some(u64::from(m)),
                0xcc => self.be(1),
                0xcd => self.be(2),
                0xce => self.be(4),
                0xcf => self.be(8),
                _ => None,
            }
        }

        /// Skips one value, however deeply nested (a count of the items still
        /// owed, not recursion), and returns the bytes it spanned.
        pub(super) fn skip(&mut self) -> Option<&'a [u8]> {
            let start = self.0;
            let mut owed: u64 = 1;
            while owed > 0 {
                owed -= 1;
                let m = self.byte()?;
                let len = match m {
                    0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                    0x80..=0x8f => {
                        owed += 2 * u64::from(m & 0x0f);
                        0
                    }
                    0x90..=0x9f => {
                        owed += u64::from(m & 0x0f);
                        0
                    }
                    0xa0..=0xbf => u64::from(m & 0x1f),
                    0xc4 | 0xd9 => self.be(1)?,
                    0xc5 | 0xda => self.be(2)?,
                    0xc6 | 0xdb => self.be(4)?,
                    0xc7 => self.be(1)? + 1,
                    0xc8 => self.be(2)? + 1,
                    0xc9 => self.be(4)? + 1,
                    0xca => 4,
                    0xcb => 8,
                    0xcc | 0xd0 => 1,
                    0xcd | 0xd1 => 2,
                    0xce | 0xd2 => 4,
                    0xcf | 0xd3 => 8,
                    0xd4 => 2,
                    0xd5 => 3,
                    0xd6 => 5,
                    0xd7 => 9,
                    0xd8 => 17,
                    0xdc => {
                        owed += self.be(2)?;
                        0
                    }
                    0xdd => {
                        owed += self.be(4)?;
                        0
                    }
                    0xde => {
                        owed += 2 * self.be(2)?;
                        0
                    }
                    0xdf => {
                        owed += 2 * self.be(4)?;
                        0
                    }
                    0xc1 => return None,
                };
                self.take(len)?;
            }
            Some(&start[..start.len() - self.0.len()])
        }
    }
}

/// Counts an envelope of another version and says so at warn once per version
/// (a mixed-version cluster must be visible, not a silent loss).
pub fn version_mismatch(version: u8, origin: Option<&NodeId>) {
    metrics::counter!(m::BUS_VERSION_MISMATCH).increment(1);
    static SEEN: [AtomicU64; 4] = [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ];
    let bit = 1u64 << (version % 64);
    if SEEN[usize::from(version / 64)].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
        tracing::warn!(
            version,
            ours = ENVELOPE_VERSION,
            origin = origin.map_or("?", |o| o.as_str()),
            "dropping events from a node of another envelope version (a mixed-version cluster: \
             upgrade every node); counted in switchboard_bus_version_mismatch_total"
        );
    }
}

/// Lets one log line through per period and counts the ones held back, so a
/// flood of the same failure costs a line now and then, not a line each.
#[derive(Debug)]
pub(crate) struct WarnEvery {
    period_ms: u64,
    /// Milliseconds since [`clock_ms`]'s start when the next line may go out.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl WarnEvery {
    /// At most one line per `period_ms`.
    pub(crate) const fn new(period_ms: u64) -> Self {
        Self {
            period_ms,
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this one may be logged.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = clock_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
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
mod tests;
