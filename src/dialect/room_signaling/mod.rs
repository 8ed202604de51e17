//! The room signaling server's WebSocket protocol (webRTC-connect, as its
//! sleap-RTC clients speak it; docs/DOORS.md has the whole door and every
//! difference from the old server, with its reason).
//!
//! A thin translator onto the core: `register` checks the peer's id_token
//! and the room's token and lifetime, registers the connection through
//! [`Node::register`] (the id_token proves the peer id, so a newer
//! connection of the same peer replaces the older one, on any node) and
//! joins the core room named by `room_id`, so native members see it and
//! members on other nodes reach it. `offer`, `answer` and `candidate` go to
//! their `target` as core signals (kind = the frame's `type`, data = the
//! whole frame), through the relay, so they cross nodes; the receiving
//! door writes the frame again. Frames of one connection are handled
//! strictly in order (the connection loop awaits each), which the clients
//! rely on: they send an offer right after `register` without waiting.
//!
//! Everything this door writes is Python `json.dumps` output
//! ([`pyjson`]), as the old server's frames were, forwarded frames included.
//!
//! Frames in:
//! - `register {peer_id, room_id, token, id_token}` (and v2's `role`,
//!   `metadata`), checked in the old order, each failure answered and the
//!   socket left open: a missing or falsy field
//!   `{"type": "error", "reason": "Missing required fields during registration."}`;
//!   an id_token that does not verify, or whose `sub` is not `peer_id`,
//!   `{"error": "Invalid token"}` (no `type`, as before); no such room
//!   `Room not found`; a wrong room token `Invalid token`; a room past its
//!   lifetime `Room expired`; the store unreachable `DynamoDB error` (the
//!   old text: clients only log it). Success:
//!   `{"type": "registered_auth", "room_id", "token", "peer_id"}`, queued
//!   before anything sent to the peer meanwhile;
//! - `offer`, `answer`, `candidate {sender, target, ...}`: forwarded whole
//!   to `target` if `sender` is this connection's peer and `target` is a
//!   member of its room; otherwise not forwarded, counted
//!   (`switchboard_room_signaling_dropped_total{reason}`) and logged, with
//!   no error frame (the old server was silent there, and the sleap-RTC
//!   worker exits on any error frame);
//! - v2: `discover_peers` → `peer_list`, `update_metadata` →
//!   `metadata_updated`, `peer_message` → the target's `peer_message`, with
//!   v2's `{"type": "error", "code", "message"}` errors (only v2 clients send
//!   these, and they read them);
//! - anything else (another type, a frame that is not a JSON object, a
//!   binary frame) is ignored, as the old server did, and counted.
//!
//! Frames out: the answers above, and each core signal whose kind is
//! `offer`, `answer`, `candidate` (or `peer_message`) whose data is such a
//! frame with this peer as `target` and the core-stamped sender as
//! `sender`: so a native peer reaches a room signaling client by sending
//! `signal {to, kind: "offer", data: {"type": "offer", "sender": <its own
//! id>, "target": <to>, "sdp": ...}}`, and receives the clients' frames as
//! signals of that shape. Every other core event has no equivalent here and
//! is not sent.

pub mod pyjson;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::Value;
use tracing::{debug, info, warn};

use self::pyjson::{Dict, Py};
use super::{ConnInfo, Dialect, Encoded, Encoder, Flow};
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::metrics as m;
use crate::node::{Credentials, Node, Registration};
use crate::payload::Opaque;
use crate::rooms::token_hash;
use crate::store::{now_ms, Door, RoomAccess, StoreError};
use crate::types::{Member, PeerId, RoomClosedReason, RoomName, SignalKind};
use crate::ws::Data;

/// `reason` of a `register` without all four fields (the old text).
pub const MISSING_FIELDS: &str = "Missing required fields during registration.";
/// `reason` of a `register` into a room that does not exist.
pub const ROOM_NOT_FOUND: &str = "Room not found";
/// `reason` of a `register` with the wrong room token (and the text of the
/// type-less answer to a bad id_token).
pub const INVALID_TOKEN: &str = "Invalid token";
/// `reason` of a `register` into a room past its lifetime.
pub const ROOM_EXPIRED: &str = "Room expired";
/// `reason` when the store cannot be asked (the old server's text for any
/// storage failure; its clients only log it).
pub const STORAGE_ERROR: &str = "DynamoDB error";
/// `reason` of a `register` into a full room (`limits.max_peers_per_room`).
pub const ROOM_FULL: &str = "Room is full";

/// The kinds of core signal this door writes to its clients.
const FORWARDED: [&str; 3] = ["offer", "answer", "candidate"];

/// The frame of an error with a `reason` (`{"type": "error", "reason": ...}`).
pub fn reason_frame(reason: &str) -> String {
    Dict::new()
        .with("type", "error")
        .with("reason", reason)
        .dumps()
}

/// The answer to a `register` whose id_token does not verify: no `type`.
pub fn invalid_id_token_frame() -> String {
    Dict::new().with("error", INVALID_TOKEN).dumps()
}

/// A v2 error (`{"type": "error", "code", "message"}`).
pub fn code_frame(code: &str, message: &str) -> String {
    Dict::new()
        .with("type", "error")
        .with("code", code)
        .with("message", message)
        .dumps()
}

/// What the door sends when the core tells it that the room of a
/// registered peer was closed (its lifetime ended, or it was deleted); the
/// encoder then closes the socket (1000 `room-closed`). Why both: the
/// sleap-RTC worker exits on any error frame (it logs `reason`), the client
/// ignores unknown frames but ends when the socket closes; so the reason
/// reaches the logs and neither is left registered in a room that no longer
/// exists.
pub fn room_closed_frame(expired: bool) -> String {
    reason_frame(if expired { ROOM_EXPIRED } else { "Room closed" })
}

/// The metadata a member of a room carries in the core (what native peers
/// see in `joined`/`peer-joined`, and what `discover_peers` reads).
fn member_meta(role: &str, metadata: Value, connected_at: f64) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("role".into(), Value::from(role));
    m.insert("metadata".into(), metadata);
    m.insert(
        "connected_at".into(),
        serde_json::Number::from_f64(connected_at).map_or(Value::Null, Value::Number),
    );
    Value::Object(m)
}

/// True when a member's metadata is within `limits.max_meta_bytes` as JSON
/// (as a native `meta` must be: every `joined` list repeats it).
fn meta_fits(node: &Node, meta: &Value) -> bool {
    serde_json::to_string(meta).is_ok_and(|t| t.len() <= node.core.cfg.limits.max_meta_bytes)
}

/// A room to join at `register`, checked.
struct Entry {
    room: RoomName,
    /// The member's metadata (role, metadata, connected_at).
    meta: Value,
    /// The `registered_auth` frame, queued as the join's answer.
    answer: String,
    /// The room's token, as the client gave it.
    token: String,
}

/// Where a registered connection is.
#[derive(Debug, Clone)]
struct Registered {
    /// Its room.
    room: RoomName,
}

/// The room signaling protocol on one connection (reader half).
#[derive(Debug, Default)]
pub struct RoomSignaling {
    /// Set by a successful `register`.
    registered: Option<Registered>,
    /// This connection's peer id, once registered (shared with the encoder,
    /// which writes only frames addressed to it).
    me: Arc<OnceLock<PeerId>>,
    /// This connection's handle, once registered (shared with the encoder,
    /// which closes the connection when its room is closed).
    conn: Arc<OnceLock<ConnHandle>>,
}

impl RoomSignaling {
    /// A new connection.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The writer half.
#[derive(Debug)]
pub struct RoomSignalingEncoder {
    me: Arc<OnceLock<PeerId>>,
    conn: Arc<OnceLock<ConnHandle>>,
}

/// Counts a frame that is not forwarded.
fn dropped(reason: &'static str) {
    metrics::counter!(m::ROOM_SIGNALING_DROPPED, "reason" => reason).increment(1);
}

impl Encoder for RoomSignalingEncoder {
    fn encode(&self, event: &Event) -> Option<Encoded> {
        match event {
            Event::Frame(_) => super::passthrough(event),
            // The answer to `register`: the frame travels in the join's
            // `id`, so that it is queued before whatever the gate held.
            Event::Joined {
                id: Some(Value::String(frame)),
                ..
            } => Some(Encoded::Text(frame.clone())),
            Event::Signal { from, kind, data } => self.signal(from, kind.as_str(), data),
            // A door peer is in one room: this is it. The frame is written
            // in this batch; the close then delivers what is queued after it.
            Event::RoomClosed { reason, .. } => {
                if let Some(conn) = self.conn.get() {
                    conn.close(CloseReason::ROOM_CLOSED);
                }
                Some(Encoded::Text(room_closed_frame(
                    *reason == RoomClosedReason::Expired,
                )))
            }
            _ => None,
        }
    }
}

impl RoomSignalingEncoder {
    /// A core signal as this protocol's frame, if it is one: kind and the
    /// frame's `type` agree, the frame names the core-stamped sender as its
    /// sender and this connection as its target. Anything else (a native
    /// peer's other signals, a spoofed sender) is not written.
    fn signal(&self, from: &PeerId, kind: &str, data: &Opaque) -> Option<Encoded> {
        let (sender_key, target_key) = if FORWARDED.contains(&kind) {
            ("sender", "target")
        } else if kind == "peer_message" {
            ("from_peer_id", "to_peer_id")
        } else {
            dropped("foreign-signal");
            return None;
        };
        let parsed = match data {
            Opaque::Json(raw) => pyjson::loads(raw.get(), 128).ok(),
            other => Some(Py::from_json(&other.to_value())),
        };
        let Some(Py::Dict(d)) = parsed else {
            dropped("invalid");
            return None;
        };
        let me = self.me.get()?;
        let ok = d.get_str("type").as_deref() == Some(kind)
            && d.get_str(target_key).as_deref() == Some(me.as_str());
        if !ok {
            dropped("invalid");
            return None;
        }
        if d.get_str(sender_key).as_deref() != Some(from.as_str()) {
            dropped("spoofed-sender");
            info!(from = %from, "a signal whose frame names another sender; not written");
            return None;
        }
        Some(Encoded::Text(d.dumps()))
    }
}

/// The message types this dialect knows (bounded metric labels).
fn type_label(ty: Option<&str>) -> &'static str {
    match ty {
        Some("register") => "register",
        Some("offer") => "offer",
        Some("answer") => "answer",
        Some("candidate") => "candidate",
        Some("discover_peers") => "discover_peers",
        Some("update_metadata") => "update_metadata",
        Some("peer_message") => "peer_message",
        Some(_) => "unknown",
        None => "invalid",
    }
}

fn send_text(handle: &ConnHandle, text: String) {
    handle.send(Event::Frame(Encoded::Text(text)));
}

fn registers(outcome: &'static str) {
    metrics::counter!(m::ROOM_SIGNALING_REGISTERS, "outcome" => outcome).increment(1);
}

impl Dialect for RoomSignaling {
    type Encoder = RoomSignalingEncoder;
    const NAME: &'static str = "room-signaling";

    fn encoder(&self) -> RoomSignalingEncoder {
        RoomSignalingEncoder {
            me: self.me.clone(),
            conn: self.conn.clone(),
        }
    }

    async fn open(
        &mut self,
        _node: &Arc<Node>,
        _handle: &ConnHandle,
        _info: &ConnInfo,
    ) -> Result<Option<Session>, CloseReason> {
        Ok(None)
    }

    async fn frame(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
        session: &mut Option<Session>,
        frame: Data<'_>,
        received: Instant,
    ) -> Flow {
        let Data::Text(text) = frame else {
            m::count(m::MESSAGES_IN, "type", "invalid", 1);
            dropped("invalid");
            debug!("ignoring a binary frame");
            return Flow::Continue;
        };
        let depth = node.core.cfg.limits.max_nesting_depth;
        let d = match pyjson::loads(text, depth) {
            Ok(Py::Dict(d)) => d,
            Ok(_) => {
                m::count(m::MESSAGES_IN, "type", "invalid", 1);
                dropped("invalid");
                debug!("ignoring a frame that is not a JSON object");
                return Flow::Continue;
            }
            Err(e) => {
                m::count(m::MESSAGES_IN, "type", "invalid", 1);
                dropped("invalid");
                debug!(error = %e, "ignoring a frame that is not JSON");
                return Flow::Continue;
            }
        };
        let ty = d.get_str("type");
        m::count(m::MESSAGES_IN, "type", type_label(ty.as_deref()), 1);
        match ty.as_deref() {
            Some("register") => Box::pin(self.register(node, handle, info, session, &d)).await,
            Some("offer") | Some("answer") | Some("candidate") => {
                let kind = type_label(ty.as_deref());
                self.forward(node, session.as_ref(), &d, kind, received)
                    .await;
                Flow::Continue
            }
            Some("discover_peers") => {
                self.discover(node, handle, session.as_ref(), &d).await;
                Flow::Continue
            }
            Some("update_metadata") => {
                self.update_metadata(node, handle, session.as_mut(), &d)
                    .await;
                Flow::Continue
            }
            Some("peer_message") => {
                self.peer_message(node, handle, session.as_ref(), &d, received)
                    .await;
                Flow::Continue
            }
            other => {
                dropped("unknown-type");
                let shown: String = other.unwrap_or("").chars().take(64).collect();
                debug!(r#type = %shown, "ignoring a message of unknown type");
                Flow::Continue
            }
        }
    }
}

impl RoomSignaling {
    /// `register`, in the old server's order of checks (see the module docs).
    async fn register(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
        session: &mut Option<Session>,
        d: &Dict,
    ) -> Flow {
        let reason = |outcome: &'static str, text: &str| {
            registers(outcome);
            send_text(handle, reason_frame(text));
            Flow::Continue
        };
        // (1) Every field present and truthy, as `if not all(...)` checked.
        if ["peer_id", "room_id", "token", "id_token"]
            .iter()
            .any(|f| !d.get(f).is_some_and(Py::truthy))
        {
            return reason("missing-fields", MISSING_FIELDS);
        }
        // (2) The id_token verifies, and is for this peer id: any valid
        // id_token could register any peer id before.
        let peer_text = d.get_str("peer_id");
        let verified = match (&peer_text, d.get_str("id_token")) {
            (Some(p), Some(t)) => node
                .verify_token(Some(&t), Some(p))
                .map_err(|e| e.to_string()),
            _ => Err("peer_id and id_token must be strings".to_string()),
        };
        if let Err(why) = verified {
            registers("invalid-id-token");
            info!(error = %why, "register refused: id_token");
            send_text(handle, invalid_id_token_frame());
            return Flow::Continue;
        }
        let peer_text = peer_text.expect("verified above");
        // (3) The room exists (a room of this door, or an HTTP room: one
        // made with a token; rooms made by a first native join have none).
        let limits = &node.core.cfg.limits;
        let Some(room) = d
            .get_str("room_id")
            .and_then(|r| RoomName::parse(&r, limits.max_name_bytes).ok())
        else {
            return reason("room-not-found", ROOM_NOT_FOUND);
        };
        let record = match node.core.store.get_room(&room).await {
            Ok(Some(r)) if r.explicit => r,
            Ok(_) => return reason("room-not-found", ROOM_NOT_FOUND),
            Err(e) => {
                warn!(room = %room, error = %e, "register: the room could not be read");
                return reason("storage-error", STORAGE_ERROR);
            }
        };
        // (4) The room's token.
        let token = d.get_str("token");
        let token_ok = token
            .as_deref()
            .is_some_and(|t| record.token_hash == Some(token_hash(t)));
        if !token_ok {
            return reason("invalid-token", INVALID_TOKEN);
        }
        let token = token.expect("checked above");
        // (5) Its lifetime.
        if record.expires_at.is_some_and(|at| now_ms() > at) {
            return reason("room-expired", ROOM_EXPIRED);
        }
        let Ok(peer) = PeerId::parse(&peer_text, limits.max_name_bytes) else {
            return reason("refused", "Invalid peer_id");
        };
        let role = d.get_str("role").unwrap_or_else(|| "peer".into());
        let metadata = match d.get("metadata") {
            Some(Py::Dict(m)) => Py::Dict(m.clone()).to_json(),
            _ => Value::Object(Default::default()),
        };
        let meta = member_meta(&role, metadata, now_ms() as f64 / 1000.0);
        if !meta_fits(node, &meta) {
            // v2's role and metadata are what every member's list repeats.
            return reason("refused", "Metadata too large");
        }
        let answer = Dict::new()
            .with("type", "registered_auth")
            .with("room_id", room.as_str())
            .with("token", token.as_str())
            .with("peer_id", peer.as_str())
            .dumps();

        if let Some(s) = session.as_mut() {
            // Registered already, on this connection.
            if s.peer != peer {
                return reason("refused", "Already registered as another peer");
            }
            if self.registered.as_ref().is_some_and(|r| r.room == room) {
                registers("registered");
                send_text(handle, answer);
                return Flow::Continue;
            }
            // Another room: this connection moves (the old server kept a
            // stale entry in the room it left).
            if let Some(old) = self.registered.take() {
                let _ = node.rooms.leave(s, &old.room).await;
            }
            s.meta = meta.clone();
            return match self
                .join(
                    node,
                    handle,
                    s,
                    Entry {
                        room,
                        meta,
                        answer,
                        token,
                    },
                )
                .await
            {
                Ok(()) => Flow::Continue,
                Err(text) => {
                    // Not in any room now: the peer keeps its id until it
                    // registers again or disconnects.
                    registers("refused");
                    send_text(handle, reason_frame(text));
                    Flow::Continue
                }
            };
        }

        // (6) The connection takes the peer id (the id_token proves it: a
        // connection of the same peer elsewhere is replaced), then joins.
        let reg = Registration {
            door: Door::RoomSignaling,
            observed: info.observed,
            peer_id: Some(peer.clone()),
            meta: meta.clone(),
            credentials: Credentials {
                token: None,
                token_verified: true,
                reconnect_secret: None,
            },
        };
        // Closed until `registered_auth` is queued (by the join below), so
        // it is the first frame the peer reads.
        handle.close_gate();
        let mut s = match Box::pin(node.register(handle, reg)).await {
            Ok(r) => r.session,
            Err(refused) => {
                handle.open_gate(None, None);
                registers("refused");
                info!(peer = %peer, error = %refused.error.message, "register refused");
                send_text(handle, reason_frame(&refused.error.message));
                return match refused.close {
                    Some(c) => Flow::Close(c),
                    None => Flow::Continue,
                };
            }
        };
        let _ = self.me.set(peer.clone());
        let _ = self.conn.set(handle.clone());
        tracing::Span::current().record("peer", tracing::field::display(&peer));
        match self
            .join(
                node,
                handle,
                &mut s,
                Entry {
                    room,
                    meta,
                    answer,
                    token,
                },
            )
            .await
        {
            Ok(()) => {
                *session = Some(s);
                Flow::Registered
            }
            Err(text) => {
                registers("refused");
                // Nothing joined: the peer id is given back.
                node.disconnect(&s, CloseReason::CLIENT_GONE).await;
                send_text(handle, reason_frame(text));
                Flow::Continue
            }
        }
    }

    /// Joins the core room and queues `registered_auth` as the join's
    /// answer; the error text for the client otherwise.
    async fn join(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        s: &mut Session,
        entry: Entry,
    ) -> Result<(), &'static str> {
        let Entry {
            room,
            meta,
            answer,
            token,
        } = entry;
        // The store checks the token and the lifetime again, atomically with
        // the join (the checks above give the old server's error frames).
        let joined = node
            .rooms
            .join(
                s,
                Some(Value::String(answer)),
                room.clone(),
                meta,
                Some(token),
            )
            .await;
        match joined {
            Ok(None) => {}
            // In the room already (a re-register): the answer comes back.
            Ok(Some(ev)) => {
                handle.send(ev);
            }
            Err(e) => {
                // The join opens the gate on its own failures, but not on
                // those before it touched the room.
                handle.open_gate(None, Some(&room));
                warn!(room = %room, code = e.code.as_str(), error = %e.message, "register: joining the room failed");
                use crate::error::ErrorCode as C;
                return Err(match e.code {
                    C::RoomFull => ROOM_FULL,
                    // Expired or re-created between the checks and the join.
                    C::RoomExpired => ROOM_EXPIRED,
                    C::RoomTokenInvalid | C::RoomTokenRequired => INVALID_TOKEN,
                    _ => STORAGE_ERROR,
                });
            }
        }
        registers("registered");
        debug!(room = %room, "registered");
        self.registered = Some(Registered { room });
        Ok(())
    }

    /// True when `target` is a member of `room`: asked of this node's hub
    /// when the target is connected here (the hub is updated before the
    /// store on a join), else of the store.
    async fn is_member(node: &Node, room: &RoomName, target: &PeerId) -> bool {
        if let Some(h) = node.core.hub.get(target) {
            return node.core.hub.is_member(room, target, h.epoch);
        }
        match node.core.store.room_members(room).await {
            Ok(members) => members
                .unwrap_or_default()
                .iter()
                .any(|m| m.peer_id == *target),
            Err(e) => {
                warn!(room = %room, error = %e, "the room's members could not be read");
                false
            }
        }
    }

    /// `offer`, `answer`, `candidate`: forwarded whole to `target` within
    /// the sender's room, or counted and logged.
    async fn forward(
        &self,
        node: &Arc<Node>,
        session: Option<&Session>,
        d: &Dict,
        kind: &'static str,
        received: Instant,
    ) {
        let (Some(s), Some(reg)) = (session, &self.registered) else {
            dropped("unregistered");
            debug!(kind, "not registered: not forwarded");
            return;
        };
        let (Some(sender), Some(target)) = (
            d.get_str("sender").filter(|v| !v.is_empty()),
            d.get_str("target").filter(|v| !v.is_empty()),
        ) else {
            dropped("invalid");
            debug!(kind, "no sender or target: not forwarded");
            return;
        };
        if sender != s.peer.as_str() {
            dropped("spoofed-sender");
            info!(
                kind,
                "a frame names another peer as its sender: not forwarded"
            );
            return;
        }
        let target = match PeerId::parse(&target, node.core.cfg.limits.max_name_bytes) {
            Ok(t) if Self::is_member(node, &reg.room, &t).await => t,
            _ => {
                dropped("bad-target");
                info!(kind, room = %reg.room, "the target is not in the sender's room: not forwarded");
                return;
            }
        };
        let Ok(data) = RawValue::from_string(d.dumps()) else {
            // NaN or Infinity, which Python writes and JSON has not.
            dropped("invalid");
            debug!(kind, "not JSON once written: not forwarded");
            return;
        };
        let r = node
            .relay
            .signal(
                &s.peer,
                s.epoch,
                None,
                target.clone(),
                SignalKind::from_trusted(kind),
                Opaque::Json(data),
                received,
            )
            .await;
        if let Err(e) = r {
            dropped("undeliverable");
            info!(kind, target = %target, code = e.code.as_str(), "not delivered");
        }
    }

    /// v2 `discover_peers`: the other members of the room, filtered.
    async fn discover(
        &self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        session: Option<&Session>,
        d: &Dict,
    ) {
        let (Some(s), Some(reg)) = (session, &self.registered) else {
            send_text(
                handle,
                code_frame("NOT_IN_ROOM", "Peer is not registered in a room"),
            );
            return;
        };
        if d.get_str("from_peer_id")
            .is_some_and(|f| f != s.peer.as_str())
        {
            dropped("spoofed-sender");
            send_text(
                handle,
                code_frame(
                    "INVALID_MESSAGE",
                    "from_peer_id is not this connection's peer",
                ),
            );
            return;
        }
        let members = match node.core.store.room_members(&reg.room).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                send_text(handle, code_frame("ROOM_NOT_FOUND", "Room not found"));
                return;
            }
            Err(e) => {
                warn!(room = %reg.room, error = %e, "discover_peers: the room's members could not be read");
                send_text(
                    handle,
                    code_frame("ROOM_NOT_FOUND", "Room could not be read"),
                );
                return;
            }
        };
        let filters = match d.get("filters") {
            Some(Py::Dict(f)) => Py::Dict(f.clone()).to_json(),
            _ => Value::Null,
        };
        let peers: Vec<Py> = members
            .iter()
            .filter(|m| m.peer_id != s.peer)
            .map(peer_entry)
            .filter(|(role, metadata, _)| matches_filters(&filters, role, metadata))
            .map(|(role, metadata, member)| {
                Py::Dict(
                    Dict::new()
                        .with("peer_id", member.peer_id.as_str())
                        .with("role", role)
                        .with("metadata", Py::from_json(&metadata))
                        .with(
                            "connected_at",
                            member
                                .meta
                                .get("connected_at")
                                .and_then(Value::as_f64)
                                .map_or(Py::Null, Py::Float),
                        ),
                )
            })
            .collect();
        let count = peers.len() as u64;
        let frame = Dict::new()
            .with("type", "peer_list")
            .with("to_peer_id", s.peer.as_str())
            .with("peers", peers)
            .with("count", count)
            .dumps();
        send_text(handle, frame);
    }

    /// v2 `update_metadata`: tags are merged as a set (in order), properties
    /// shallowly, other keys replaced; stored with the membership (so other
    /// nodes' `discover_peers` see it) and echoed.
    async fn update_metadata(
        &self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        session: Option<&mut Session>,
        d: &Dict,
    ) {
        let (Some(peer), Some(Py::Dict(update))) = (d.get_str("peer_id"), d.get("metadata")) else {
            send_text(
                handle,
                code_frame("INVALID_MESSAGE", "peer_id and metadata are required"),
            );
            return;
        };
        let (Some(s), Some(reg)) = (session, &self.registered) else {
            send_text(
                handle,
                code_frame("NOT_IN_ROOM", "Peer is not registered in a room"),
            );
            return;
        };
        if peer != s.peer.as_str() {
            dropped("spoofed-sender");
            send_text(
                handle,
                code_frame("PEER_NOT_FOUND", "peer_id is not this connection's peer"),
            );
            return;
        }
        let mut meta = s.meta.clone();
        let merged = merge_metadata(
            meta.get("metadata").cloned().unwrap_or(Value::Null),
            Py::Dict(update.clone()).to_json(),
        );
        meta["metadata"] = merged.clone();
        if !meta_fits(node, &meta) {
            send_text(
                handle,
                code_frame(
                    "INVALID_MESSAGE",
                    &format!(
                        "metadata must be at most {} bytes as JSON",
                        node.core.cfg.limits.max_meta_bytes
                    ),
                ),
            );
            return;
        }
        // Same peer and connection: the store replaces the member's value
        // (no event: v2 told no one either); the hub keeps it for
        // re-registration after an outage.
        let member = Member {
            peer_id: s.peer.clone(),
            meta: meta.clone(),
        };
        let max = node.core.cfg.limits.max_peers_per_room;
        // A member already: admitted with the room's token at register.
        let admitted = RoomAccess {
            token: None,
            granted: true,
        };
        if let Err(e) = node
            .core
            .store
            .join_room_with(&reg.room, &member, s.epoch, max, &admitted, now_ms())
            .await
        {
            warn!(room = %reg.room, error = %e, "update_metadata: not stored");
            let code = if matches!(e, StoreError::RoomFull) {
                "NOT_IN_ROOM"
            } else {
                "PEER_NOT_FOUND"
            };
            send_text(handle, code_frame(code, "Metadata could not be stored"));
            return;
        }
        node.core
            .hub
            .room_add(&reg.room, s.peer.clone(), s.handle.clone(), meta.clone());
        s.meta = meta;
        let frame = Dict::new()
            .with("type", "metadata_updated")
            .with("peer_id", s.peer.as_str())
            .with("metadata", Py::from_json(&merged))
            .dumps();
        send_text(handle, frame);
    }

    /// v2 `peer_message`: a payload to another member of the room.
    async fn peer_message(
        &self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        session: Option<&Session>,
        d: &Dict,
        received: Instant,
    ) {
        let fields = ["from_peer_id", "to_peer_id", "payload"];
        if fields.iter().any(|f| !d.get(f).is_some_and(Py::truthy)) {
            send_text(
                handle,
                code_frame(
                    "INVALID_MESSAGE",
                    "from_peer_id, to_peer_id and payload are required",
                ),
            );
            return;
        }
        let (Some(s), Some(reg)) = (session, &self.registered) else {
            send_text(
                handle,
                code_frame("NOT_IN_ROOM", "Peer is not registered in a room"),
            );
            return;
        };
        if d.get_str("from_peer_id").as_deref() != Some(s.peer.as_str()) {
            dropped("spoofed-sender");
            send_text(
                handle,
                code_frame(
                    "INVALID_MESSAGE",
                    "from_peer_id is not this connection's peer",
                ),
            );
            return;
        }
        let target = d
            .get_str("to_peer_id")
            .and_then(|t| PeerId::parse(&t, node.core.cfg.limits.max_name_bytes).ok());
        let target = match target {
            Some(t) if Self::is_member(node, &reg.room, &t).await => t,
            _ => {
                dropped("bad-target");
                send_text(
                    handle,
                    code_frame("PEER_NOT_IN_ROOM", "Target peer is not in the room"),
                );
                return;
            }
        };
        let frame = Dict::new()
            .with("type", "peer_message")
            .with("from_peer_id", s.peer.as_str())
            .with("to_peer_id", target.as_str())
            .with("payload", d.get("payload").cloned().unwrap_or(Py::Null))
            .dumps();
        let Ok(data) = RawValue::from_string(frame) else {
            dropped("invalid");
            send_text(handle, code_frame("INVALID_MESSAGE", "payload is not JSON"));
            return;
        };
        let r = node
            .relay
            .signal(
                &s.peer,
                s.epoch,
                None,
                target,
                SignalKind::from_trusted("peer_message"),
                Opaque::Json(data),
                received,
            )
            .await;
        if let Err(e) = r {
            dropped("undeliverable");
            let code = if e.code == crate::error::ErrorCode::PeerNotFound {
                "PEER_NOT_FOUND"
            } else {
                "DELIVERY_FAILED"
            };
            send_text(handle, code_frame(code, "Message could not be delivered"));
        }
    }
}

/// A member as `discover_peers` lists it: its role and metadata (a native
/// member's `meta` is its metadata, its role `peer`).
fn peer_entry(m: &Member) -> (String, Value, &Member) {
    let role = m.meta.get("role").and_then(Value::as_str);
    match (role, m.meta.get("metadata")) {
        (Some(role), Some(md)) => (role.to_string(), md.clone(), m),
        _ => {
            let md = if m.meta.is_object() {
                m.meta.clone()
            } else {
                Value::Object(Default::default())
            };
            ("peer".to_string(), md, m)
        }
    }
}

/// v2's filters: `role` equal; `tags` any of; `properties` each equal, or
/// `{"$gte"|"$lte"|"$eq": v}` (numbers compared as numbers).
fn matches_filters(filters: &Value, role: &str, metadata: &Value) -> bool {
    let Some(f) = filters.as_object() else {
        return true;
    };
    if let Some(want) = f.get("role").and_then(Value::as_str) {
        if want != role {
            return false;
        }
    }
    if let Some(tags) = f.get("tags").and_then(Value::as_array) {
        let have = metadata.get("tags").and_then(Value::as_array);
        if !have.is_some_and(|have| tags.iter().any(|t| have.contains(t))) {
            return false;
        }
    }
    if let Some(props) = f.get("properties").and_then(Value::as_object) {
        let have = metadata.get("properties");
        for (k, cond) in props {
            let v = have.and_then(|h| h.get(k));
            let ok = match (cond.as_object(), v) {
                (_, None) => false,
                (Some(ops), Some(v)) if ops.keys().all(|k| k.starts_with('$')) => ops.iter().all(
                    |(op, bound)| match (op.as_str(), v.as_f64(), bound.as_f64()) {
                        ("$gte", Some(a), Some(b)) => a >= b,
                        ("$lte", Some(a), Some(b)) => a <= b,
                        ("$eq", _, _) => v == bound,
                        _ => false,
                    },
                ),
                (_, Some(v)) => v == cond,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// v2's merge: `tags` union (old order, then new ones), `properties`
/// shallow-merged, every other key replaced.
fn merge_metadata(old: Value, update: Value) -> Value {
    let mut out = match old {
        Value::Object(o) => o,
        _ => Default::default(),
    };
    let Value::Object(update) = update else {
        return Value::Object(out);
    };
    for (k, v) in update {
        match (k.as_str(), out.get_mut(&k), v) {
            ("tags", Some(Value::Array(have)), Value::Array(new)) => {
                for t in new {
                    if !have.contains(&t) {
                        have.push(t);
                    }
                }
            }
            ("properties", Some(Value::Object(have)), Value::Object(new)) => {
                have.extend(new);
            }
            (_, _, v) => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_frames_are_the_old_servers_bytes() {
        assert_eq!(
            reason_frame(MISSING_FIELDS),
            r#"{"type": "error", "reason": "Missing required fields during registration."}"#
        );
        assert_eq!(invalid_id_token_frame(), r#"{"error": "Invalid token"}"#);
        assert_eq!(
            code_frame("NOT_IN_ROOM", "x"),
            r#"{"type": "error", "code": "NOT_IN_ROOM", "message": "x"}"#
        );
        assert_eq!(
            room_closed_frame(true),
            r#"{"type": "error", "reason": "Room expired"}"#
        );
    }

    fn enc(me: &str) -> RoomSignalingEncoder {
        let e = RoomSignalingEncoder {
            me: Arc::new(OnceLock::new()),
            conn: Arc::new(OnceLock::new()),
        };
        e.me.set(PeerId::from_trusted(me)).unwrap();
        e
    }

    fn signal(from: &str, kind: &str, data: &str) -> Event {
        Event::Signal {
            from: PeerId::from_trusted(from),
            kind: SignalKind::from_trusted(kind),
            data: Opaque::Json(RawValue::from_string(data.into()).unwrap()),
        }
    }

    #[test]
    fn signals_are_written_only_as_this_protocols_frames_for_this_peer() {
        let e = enc("W");
        let ok = signal(
            "C",
            "offer",
            r#"{"type":"offer","sender":"C","target":"W","sdp":"v=0","x":1.0}"#,
        );
        assert_eq!(
            e.encode(&ok),
            Some(Encoded::Text(
                r#"{"type": "offer", "sender": "C", "target": "W", "sdp": "v=0", "x": 1.0}"#.into()
            ))
        );
        for bad in [
            // The frame names someone else as its sender.
            signal(
                "C",
                "offer",
                r#"{"type":"offer","sender":"X","target":"W"}"#,
            ),
            // For another target.
            signal(
                "C",
                "answer",
                r#"{"type":"answer","sender":"C","target":"Z"}"#,
            ),
            // Kind and type disagree.
            signal(
                "C",
                "offer",
                r#"{"type":"answer","sender":"C","target":"W"}"#,
            ),
            // Not this protocol's.
            signal("C", "ice", r#"{"type":"ice","sender":"C","target":"W"}"#),
            signal("C", "offer", r#"[1]"#),
        ] {
            assert_eq!(e.encode(&bad), None, "{bad:?}");
        }
        let pm = signal(
            "C",
            "peer_message",
            r#"{"type":"peer_message","from_peer_id":"C","to_peer_id":"W","payload":{"a":[1]}}"#,
        );
        assert_eq!(
            e.encode(&pm),
            Some(Encoded::Text(
                r#"{"type": "peer_message", "from_peer_id": "C", "to_peer_id": "W", "payload": {"a": [1]}}"#.into()
            ))
        );
        // Other core events have no frame here; the register answer does.
        assert_eq!(e.encode(&Event::Pong { id: None }), None);
        let joined = Event::Joined {
            id: Some(Value::String("{\"type\": \"registered_auth\"}".into())),
            room: RoomName::from_trusted("r"),
            peers: vec![],
        };
        assert_eq!(
            e.encode(&joined),
            Some(Encoded::Text("{\"type\": \"registered_auth\"}".into()))
        );
    }

    #[test]
    fn filters_and_merges_are_v2s() {
        let md = json!({"tags": ["gpu", "a"], "properties": {"mem": 8192, "status": "available"}});
        let f = |v: Value| matches_filters(&v, "worker", &md);
        assert!(f(Value::Null));
        assert!(f(json!({"role": "worker", "tags": ["x", "gpu"]})));
        assert!(!f(json!({"role": "client"})));
        assert!(!f(json!({"tags": ["x"]})));
        assert!(f(
            json!({"properties": {"mem": {"$gte": 4096, "$lte": 8192}, "status": "available"}})
        ));
        assert!(!f(json!({"properties": {"mem": {"$gte": 9000}}})));
        assert!(!f(json!({"properties": {"missing": 1}})));
        assert!(f(json!({"properties": {"status": {"$eq": "available"}}})));
        assert_eq!(
            merge_metadata(
                md.clone(),
                json!({"tags": ["a", "b"], "properties": {"status": "busy"}, "name": "n"})
            ),
            json!({"tags": ["gpu", "a", "b"], "properties": {"mem": 8192, "status": "busy"}, "name": "n"})
        );
    }

    #[test]
    fn a_room_token_is_kept_as_its_sha256() {
        assert_eq!(
            crate::store::secret_hex(&token_hash("abc123")),
            "6ca13d52ca70c883e0f0bb101e425a89e8624de51db2d2392593af6a84118090"
        );
    }
}
