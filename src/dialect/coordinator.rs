//! The game P2P coordinator's signaling WebSocket (LEGACY-PROTOCOLS.md
//! §1.5: the WARP client's protocol at `/api/signaling/ws` and
//! `/api/v1/signaling/ws`; docs/DOORS.md, "Coordinator signaling", has the
//! door and every difference from the old service, with its reason).
//!
//! A thin translator onto the core. The peer id comes from the URL
//! (`?peer_id=`), checked by the door before the upgrade; [`Coordinator::open`]
//! checks the optional `token` and registers the connection through
//! [`Node::register`] (a live holder of the id keeps it unless the token is
//! for that id), then joins the `session_id` and `zone_id` of the URL.
//!
//! A signaling session is the core room [`signaling_room`] (`coordinator/session/{id}`),
//! so membership lives in the store and its events reach members on every
//! node; a zone's audience is the core room [`zone_room`]. `offer`,
//! `answer` and `ice-candidate` go to their `to` as core signals through
//! the relay (kind = the frame's `type`, data = the `sdp` or `candidate` as
//! sent), so they cross nodes; the receiving door writes
//! `{"type", "from", "sdp"|"candidate", "timestamp"}`. A native peer reaches
//! a coordinator client with `signal {to, kind: "offer", data: <sdp>}` and
//! receives its signals the same way.
//!
//! Frames in (compact JSON text), each answered as the old service did,
//! its error texts unchanged:
//! - `join {session_id}` → `session-joined {session_id, peers}` (the other
//!   members; on a re-join the peer itself is listed too, as before) and
//!   `peer-joined {peer_id}` to the others; joining another session does
//!   not leave this one, it moves the "current session" pointer that
//!   `leave` acts on. Errors: `session_id required`.
//! - `leave` → `peer-left` to the others, then `session-left {session_id}`;
//!   nothing when not in a session.
//! - `offer`/`answer {to, sdp}`, `ice-candidate {to, candidate}`: relayed;
//!   `to and sdp required`, `to and candidate required`, `Failed to deliver
//!   offer to <to>` (an undeliverable candidate is dropped, as before).
//!   With `doors.coordinator.shared_session_only` (the default) the
//!   target must share a session with the sender, else it is treated as
//!   not connected.
//! - additions: `join-zone {zone_id}` → `zone-joined {zone_id}`,
//!   `leave-zone {zone_id}` → `zone-left {zone_id}` (a zone's audience gets
//!   what `POST /api/publish` sends to the zone).
//! - anything else: `Unknown message type: <type>`; text that is not JSON:
//!   `Invalid JSON`; JSON that is not an object, or a binary frame: an
//!   error frame, and the socket stays usable (the old handler died there
//!   and left the socket open and silent).
//!
//! Frames out besides the answers: `broadcast {session_id|zone_id, data,
//! timestamp}` for what the server publishes to a session or zone (and
//! `from` when a native member broadcast it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::{debug, info};

use super::{ConnInfo, Dialect, Encoded, Encoder, Flow};
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::error::close;
use crate::metrics as m;
use crate::node::{Credentials, Node, Registration};
use crate::payload::Opaque;
use crate::store::Door;
use crate::types::{LeaveReason, PeerId, RoomName, SignalKind};
use crate::ws::Data;

/// The prefix of a zone's core room.
pub const ZONE_PREFIX: &str = "coordinator/zone/";

pub use crate::coordinator::{signaling_room, zone_room, SESSION_PREFIX};

/// The old service's text for a bad or expired `token` (error frame).
pub const INVALID_TOKEN: &str = "Invalid or expired authentication token";
/// The close of a socket whose `token` did not verify: 1008 with the old
/// service's reason.
pub const INVALID_TOKEN_CLOSE: CloseReason = CloseReason {
    code: close::POLICY,
    reason: "Invalid authentication token",
    leave: LeaveReason::Disconnected,
};
/// The close of a socket without a token where the node admits no
/// anonymous peers (`auth.jwt` set, or `auth.anonymous`).
pub const TOKEN_REQUIRED_CLOSE: CloseReason = CloseReason {
    code: close::POLICY,
    reason: "Authentication token required",
    leave: LeaveReason::Disconnected,
};
/// The error text of a socket without a token where one is required.
pub const TOKEN_REQUIRED: &str = "Authentication token required";

/// The kinds of core signal this door relays and writes.
const SIGNALS: [&str; 3] = ["offer", "answer", "ice-candidate"];

/// `{"type":"error","message":...}`, compact.
pub fn error_frame(message: &str) -> String {
    #[derive(Serialize)]
    struct E<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        message: &'a str,
    }
    serde_json::to_string(&E {
        ty: "error",
        message,
    })
    .expect("strings serialize")
}

/// A two-field frame `{"type": ty, key: value}`, compact, in that order.
fn pair_frame(ty: &str, key: &str, value: &str) -> String {
    format!(
        r#"{{"type":{},{}:{}}}"#,
        json_str(ty),
        json_str(key),
        json_str(value)
    )
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `session-joined {session_id, peers}`.
pub fn session_joined(session_id: &str, peers: &[&str]) -> String {
    #[derive(Serialize)]
    struct J<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        session_id: &'a str,
        peers: &'a [&'a str],
    }
    serde_json::to_string(&J {
        ty: "session-joined",
        session_id,
        peers,
    })
    .expect("strings serialize")
}

/// Now as Python's `datetime.utcnow().isoformat()`: naive UTC, with
/// microseconds unless they are zero, no zone (`2025-11-11T03:57:12.491630`).
pub fn naive_iso_now() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    naive_iso(micros)
}

/// [`naive_iso_now`] of a Unix time in microseconds.
pub fn naive_iso(micros: u64) -> String {
    let mut out = crate::time::iso_seconds(micros / 1_000_000);
    let frac = micros % 1_000_000;
    if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out
}

/// JSON text with the whitespace between tokens removed (Python re-dumps
/// what it forwards with compact separators; key order is kept, as there).
fn compact(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Python truthiness of a JSON value (`not x`): `null`, `false`, `0`, `""`,
/// `[]` and `{}` are falsy.
fn truthy(raw: &RawValue) -> bool {
    let t = raw.get().trim();
    match t {
        "null" | "false" | "\"\"" => false,
        _ if t.starts_with('[') => !compact(t).eq("[]"),
        _ if t.starts_with('{') => !compact(t).eq("{}"),
        _ if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            !matches!(t.parse::<f64>(), Ok(n) if n == 0.0)
        }
        _ => true,
    }
}

/// A field as a string, when it is one.
fn as_string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
}

/// A value as Python's f-string shows it (for `Unknown message type`).
fn python_str(raw: Option<&RawValue>) -> String {
    let Some(raw) = raw else {
        return "None".into();
    };
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::String(s)) => s,
        Ok(Value::Null) => "None".into(),
        Ok(Value::Bool(true)) => "True".into(),
        Ok(Value::Bool(false)) => "False".into(),
        _ => compact(raw.get()),
    }
}

/// How a socket was admitted by the door, before the upgrade.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// `?token=`, when given.
    pub token: Option<String>,
    /// `?session_id=`: joined right after registration.
    pub session_id: Option<String>,
    /// `?zone_id=` (an addition): joined right after registration.
    pub zone_id: Option<String>,
}

/// One coordinator signaling connection (reader half).
#[derive(Debug)]
pub struct Coordinator {
    /// The peer id of the URL.
    peer: PeerId,
    /// What the URL carried besides it.
    admission: Admission,
    /// The "current session": where `leave` and the old disconnect acted
    /// (the last session joined).
    current: Option<RoomName>,
}

impl Coordinator {
    /// A connection for `peer`, as the door admitted it.
    pub fn new(peer: PeerId, admission: Admission) -> Self {
        Self {
            peer,
            admission,
            current: None,
        }
    }
}

/// The writer half: the answers as they are, core events in this
/// protocol's shape, nothing else.
#[derive(Debug)]
pub struct CoordinatorEncoder;

/// `{"type", "from", "sdp"|"candidate", "timestamp"}` of a relayed signal.
fn signal_frame(kind: &str, from: &PeerId, data: &Opaque) -> Option<String> {
    if !SIGNALS.contains(&kind) {
        return None;
    }
    let field = if kind == "ice-candidate" {
        "candidate"
    } else {
        "sdp"
    };
    let payload = match data {
        Opaque::Json(raw) => compact(raw.get()),
        other => serde_json::to_string(&other.to_value()).ok()?,
    };
    Some(format!(
        r#"{{"type":{},"from":{},{}:{},"timestamp":{}}}"#,
        json_str(kind),
        json_str(from.as_str()),
        json_str(field),
        payload,
        json_str(&naive_iso_now())
    ))
}

/// `broadcast {session_id|zone_id, [from], data, timestamp}`.
fn broadcast_frame(room: &RoomName, from: &PeerId, data: &Opaque) -> Option<String> {
    let (key, id) = if let Some(s) = room.as_str().strip_prefix(SESSION_PREFIX) {
        ("session_id", s)
    } else if let Some(z) = room.as_str().strip_prefix(ZONE_PREFIX) {
        ("zone_id", z)
    } else {
        return None;
    };
    let payload = match data {
        Opaque::Json(raw) => compact(raw.get()),
        other => serde_json::to_string(&other.to_value()).ok()?,
    };
    let from = if from.as_str().is_empty() {
        String::new()
    } else {
        format!(r#","from":{}"#, json_str(from.as_str()))
    };
    Some(format!(
        r#"{{"type":"broadcast",{}:{}{from},"data":{payload},"timestamp":{}}}"#,
        json_str(key),
        json_str(id),
        json_str(&naive_iso_now())
    ))
}

impl Encoder for CoordinatorEncoder {
    fn encode(&self, event: &Event) -> Option<Encoded> {
        let text = match event {
            Event::Frame(_) => return super::passthrough(event),
            Event::Joined { room, peers, .. } => {
                if let Some(sid) = room.as_str().strip_prefix(SESSION_PREFIX) {
                    let ids: Vec<&str> = peers.iter().map(|p| p.peer_id.as_str()).collect();
                    session_joined(sid, &ids)
                } else if let Some(zid) = room.as_str().strip_prefix(ZONE_PREFIX) {
                    pair_frame("zone-joined", "zone_id", zid)
                } else {
                    return None;
                }
            }
            Event::PeerJoined { room, peer_id, .. }
                if room.as_str().starts_with(SESSION_PREFIX) =>
            {
                pair_frame("peer-joined", "peer_id", peer_id.as_str())
            }
            Event::PeerLeft { room, peer_id, .. } if room.as_str().starts_with(SESSION_PREFIX) => {
                pair_frame("peer-left", "peer_id", peer_id.as_str())
            }
            // A session closed under its members (the store removed it):
            // they are no longer in it.
            Event::RoomClosed { room, .. } => {
                let sid = room.as_str().strip_prefix(SESSION_PREFIX)?;
                pair_frame("session-left", "session_id", sid)
            }
            Event::Signal { from, kind, data } => signal_frame(kind.as_str(), from, data)?,
            Event::Message { room, from, data } => broadcast_frame(room, from, data)?,
            Event::Error { message, .. } => error_frame(message),
            _ => return None,
        };
        Some(Encoded::Text(text))
    }
}

/// The message types this door knows (bounded metric labels).
fn type_label(ty: Option<&str>) -> &'static str {
    match ty {
        Some("join") => "join",
        Some("leave") => "leave",
        Some("offer") => "offer",
        Some("answer") => "answer",
        Some("ice-candidate") => "ice-candidate",
        Some("join-zone") => "join-zone",
        Some("leave-zone") => "leave-zone",
        _ => "unknown",
    }
}

/// Counts a signal that was not relayed, by why.
fn refused(reason: &'static str) {
    metrics::counter!(m::COORDINATOR_UNDELIVERED, "reason" => reason).increment(1);
}

fn send_text(handle: &ConnHandle, text: String) {
    handle.send(Event::Frame(Encoded::Text(text)));
}

impl Dialect for Coordinator {
    type Encoder = CoordinatorEncoder;
    const NAME: &'static str = "coordinator";

    fn encoder(&self) -> CoordinatorEncoder {
        CoordinatorEncoder
    }

    async fn open(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
    ) -> Result<Option<Session>, CloseReason> {
        // The token, when given and a key is configured to check it: it must
        // verify and be for this peer id (its `sub`). Without a key the old
        // service's "JWT validation off": the token is not looked at.
        let token = self.admission.token.clone().filter(|t| !t.is_empty());
        let token_for_id = match token {
            Some(t) if node.verifies_tokens() => {
                match node.verify_token(Some(&t), Some(self.peer.as_str())) {
                    Ok(_) => true,
                    Err(e) => {
                        info!(peer = %self.peer, error = %e, "coordinator: token refused");
                        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "unauthorized")
                            .increment(1);
                        send_text(handle, error_frame(INVALID_TOKEN));
                        return Err(INVALID_TOKEN_CLOSE);
                    }
                }
            }
            _ => false,
        };
        let reg = Registration {
            door: Door::Coordinator,
            observed: info.observed,
            peer_id: Some(self.peer.clone()),
            meta: Value::Null,
            credentials: Credentials {
                token: None,
                token_verified: token_for_id,
                reconnect_secret: None,
            },
        };
        handle.close_gate();
        let registered = node.register(handle, reg).await;
        handle.open_gate(None, None);
        let mut s = match registered {
            Ok(r) => r.session,
            Err(refused) => {
                use crate::error::ErrorCode as C;
                info!(peer = %self.peer, error = %refused.error.message, "coordinator: registration refused");
                return Err(match refused.error.code {
                    C::Unauthorized => {
                        send_text(handle, error_frame(TOKEN_REQUIRED));
                        TOKEN_REQUIRED_CLOSE
                    }
                    C::PeerIdTaken => {
                        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "peer-id-taken")
                            .increment(1);
                        send_text(
                            handle,
                            error_frame(&format!("Peer ID already connected: {}", self.peer)),
                        );
                        CloseReason::PEER_ID_TAKEN
                    }
                    _ => refused.close.unwrap_or(CloseReason::DRAINING),
                });
            }
        };
        debug!(peer = %s.peer, "coordinator peer connected");
        if let Some(sid) = self.admission.session_id.take().filter(|x| !x.is_empty()) {
            self.join_session(node, handle, &mut s, &sid).await;
        }
        if let Some(zid) = self.admission.zone_id.take().filter(|x| !x.is_empty()) {
            self.join_zone(node, handle, &mut s, &zid).await;
        }
        Ok(Some(s))
    }

    async fn frame(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        _info: &ConnInfo,
        session: &mut Option<Session>,
        frame: Data<'_>,
        received: Instant,
    ) -> Flow {
        let Some(s) = session.as_mut() else {
            return Flow::Continue;
        };
        let Data::Text(text) = frame else {
            m::count(m::MESSAGES_IN, "type", "invalid", 1);
            send_text(
                handle,
                error_frame("Invalid message: binary frames are not supported, send JSON text"),
            );
            return Flow::Continue;
        };
        let fields = match serde_json::from_str::<BTreeMap<String, &RawValue>>(text) {
            Ok(f) => f,
            Err(_) => {
                m::count(m::MESSAGES_IN, "type", "invalid", 1);
                let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
                let message = if is_json {
                    "Invalid message: expected a JSON object"
                } else {
                    "Invalid JSON"
                };
                send_text(handle, error_frame(message));
                return Flow::Continue;
            }
        };
        let get = |k: &str| fields.get(k).copied();
        let ty = as_string(get("type"));
        m::count(m::MESSAGES_IN, "type", type_label(ty.as_deref()), 1);
        s.sync_rooms(&node.core.hub);
        match ty.as_deref() {
            Some("join") => match get("session_id").filter(|r| truthy(r)) {
                None => send_text(handle, error_frame("session_id required")),
                Some(raw) => match as_string(Some(raw)) {
                    Some(sid) => self.join_session(node, handle, s, &sid).await,
                    None => send_text(handle, error_frame("session_id must be a string")),
                },
            },
            Some("leave") => self.leave_session(node, handle, s).await,
            Some(ty @ ("offer" | "answer")) => {
                let kind = if ty == "offer" { "offer" } else { "answer" };
                let (to, sdp) = (get("to"), get("sdp"));
                match (to.filter(|r| truthy(r)), sdp.filter(|r| truthy(r))) {
                    (Some(to), Some(sdp)) => {
                        let shown = python_str(Some(to));
                        if !self.relay(node, s, kind, to, sdp, received).await {
                            send_text(
                                handle,
                                error_frame(&format!("Failed to deliver {kind} to {shown}")),
                            );
                        }
                    }
                    _ => send_text(handle, error_frame("to and sdp required")),
                }
            }
            Some("ice-candidate") => {
                let (to, cand) = (get("to"), get("candidate"));
                match (to.filter(|r| truthy(r)), cand.filter(|r| truthy(r))) {
                    (Some(to), Some(cand)) => {
                        // Undeliverable: dropped, as before (counted).
                        let _ = self
                            .relay(node, s, "ice-candidate", to, cand, received)
                            .await;
                    }
                    _ => send_text(handle, error_frame("to and candidate required")),
                }
            }
            Some("join-zone") => match as_string(get("zone_id")).filter(|z| !z.is_empty()) {
                Some(zid) => self.join_zone(node, handle, s, &zid).await,
                None => send_text(handle, error_frame("zone_id required")),
            },
            Some("leave-zone") => match as_string(get("zone_id")).filter(|z| !z.is_empty()) {
                Some(zid) => self.leave_zone(node, handle, s, &zid).await,
                None => send_text(handle, error_frame("zone_id required")),
            },
            _ => {
                let shown = python_str(get("type"));
                send_text(
                    handle,
                    error_frame(&format!("Unknown message type: {shown}")),
                );
            }
        }
        Flow::Continue
    }
}

impl Coordinator {
    /// A session or zone id as its core room (`prefix` + id), or the error
    /// text.
    fn room(node: &Node, id: &str, prefix: &str, what: &str) -> Result<RoomName, String> {
        let max = node.core.cfg.limits.max_name_bytes;
        let name = format!("{prefix}{id}");
        RoomName::parse(&name, max).map_err(|e| match e {
            crate::types::NameError::TooLong(_) => format!(
                "Invalid {what}: must be at most {} bytes",
                max.saturating_sub(prefix.len())
            ),
            e => format!("Invalid {what}: {e}"),
        })
    }

    /// `join`: into the session (see the module docs); `session-joined` is
    /// its answer, queued before the session's later events.
    async fn join_session(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        s: &mut Session,
        sid: &str,
    ) {
        let room = match Self::room(node, sid, SESSION_PREFIX, "session_id") {
            Ok(r) => r,
            Err(text) => return send_text(handle, error_frame(&text)),
        };
        if s.rooms.contains(&room) {
            // A re-join: the old service listed the peer itself this time
            // (its set already held it); nothing changed for the others.
            match node.core.store.room_members(&room).await {
                Ok(members) => {
                    let members = members.unwrap_or_default();
                    let ids: Vec<&str> = members.iter().map(|m| m.peer_id.as_str()).collect();
                    send_text(handle, session_joined(sid, &ids));
                    self.current = Some(room);
                }
                Err(e) => {
                    info!(room = %room, error = %e, "coordinator: members not read");
                    send_text(handle, error_frame("Failed to join session: try again"));
                }
            }
            return;
        }
        match node
            .rooms
            .join(s, None, room.clone(), Value::Null, None)
            .await
        {
            Ok(answer) => {
                if let Some(ev) = answer {
                    handle.send(ev);
                }
                self.current = Some(room);
            }
            Err(e) => {
                info!(room = %room, code = e.code.as_str(), error = %e.message, "coordinator: join refused");
                send_text(
                    handle,
                    error_frame(&format!("Failed to join session: {}", e.message)),
                );
            }
        }
    }

    /// `leave`: out of the current session; nothing when there is none.
    async fn leave_session(&mut self, node: &Arc<Node>, handle: &ConnHandle, s: &mut Session) {
        let Some(room) = self.current.take() else {
            return;
        };
        if !s.rooms.contains(&room) {
            // Closed under the peer meanwhile: it was told `session-left`.
            return;
        }
        let _ = node.rooms.leave(s, &room).await;
        let sid = room.as_str().strip_prefix(SESSION_PREFIX).unwrap_or("");
        send_text(handle, pair_frame("session-left", "session_id", sid));
    }

    async fn join_zone(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        s: &mut Session,
        zid: &str,
    ) {
        let room = match Self::room(node, zid, ZONE_PREFIX, "zone_id") {
            Ok(r) => r,
            Err(text) => return send_text(handle, error_frame(&text)),
        };
        match node
            .rooms
            .join(s, None, room.clone(), Value::Null, None)
            .await
        {
            Ok(Some(_)) => send_text(handle, pair_frame("zone-joined", "zone_id", zid)),
            Ok(None) => {}
            Err(e) => {
                info!(room = %room, code = e.code.as_str(), error = %e.message, "coordinator: zone join refused");
                send_text(
                    handle,
                    error_frame(&format!("Failed to join zone: {}", e.message)),
                );
            }
        }
    }

    async fn leave_zone(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        s: &mut Session,
        zid: &str,
    ) {
        let room = match Self::room(node, zid, ZONE_PREFIX, "zone_id") {
            Ok(r) => r,
            Err(text) => return send_text(handle, error_frame(&text)),
        };
        if node.rooms.leave(s, &room).await.is_err() {
            send_text(handle, error_frame(&format!("Not in zone {zid}")));
            return;
        }
        send_text(handle, pair_frame("zone-left", "zone_id", zid));
    }

    /// True when `target` is in one of the sender's sessions: asked of this
    /// node's hub when the target is connected here, else of the store.
    async fn shares_session(node: &Node, s: &Session, target: &PeerId) -> bool {
        let sessions = s
            .rooms
            .iter()
            .filter(|r| r.as_str().starts_with(SESSION_PREFIX));
        if let Some(h) = node.core.hub.get(target) {
            return sessions
                .into_iter()
                .any(|r| node.core.hub.is_member(r, target, h.epoch));
        }
        for room in sessions {
            match node.core.store.room_members(room).await {
                Ok(Some(members)) if members.iter().any(|m| m.peer_id == *target) => return true,
                Ok(_) => {}
                Err(e) => info!(room = %room, error = %e, "coordinator: members not read"),
            }
        }
        false
    }

    /// Relays `payload` to `to` as a core signal of `kind`; false when it
    /// cannot be delivered (counted).
    async fn relay(
        &self,
        node: &Arc<Node>,
        s: &Session,
        kind: &'static str,
        to: &RawValue,
        payload: &RawValue,
        received: Instant,
    ) -> bool {
        let Some(target) = as_string(Some(to))
            .and_then(|t| PeerId::parse(&t, node.core.cfg.limits.max_name_bytes).ok())
        else {
            refused("invalid-target");
            return false;
        };
        if node.core.cfg.doors.coordinator.shared_session_only
            && !Self::shares_session(node, s, &target).await
        {
            refused("other-session");
            debug!(kind, target = %target, "the target shares no session with the sender: not relayed");
            return false;
        }
        let Ok(data) = RawValue::from_string(compact(payload.get())) else {
            refused("invalid-target");
            return false;
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
        match r {
            Ok(_) => true,
            Err(e) => {
                refused("not-connected");
                debug!(kind, target = %target, code = e.code.as_str(), "not delivered");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn timestamps_are_pythons_naive_isoformat_with_microseconds() {
        assert_eq!(naive_iso(0), "1970-01-01T00:00:00");
        assert_eq!(
            naive_iso(1_762_833_432_491_630),
            "2025-11-11T03:57:12.491630"
        );
        assert_eq!(
            naive_iso(1_709_164_800_000_001),
            "2024-02-29T00:00:00.000001"
        );
    }

    #[test]
    fn frames_are_compact_in_the_old_key_order() {
        assert_eq!(
            error_frame("Invalid JSON"),
            r#"{"type":"error","message":"Invalid JSON"}"#
        );
        assert_eq!(
            session_joined("S1", &["B", "A"]),
            r#"{"type":"session-joined","session_id":"S1","peers":["B","A"]}"#
        );
        assert_eq!(
            pair_frame("peer-left", "peer_id", "B"),
            r#"{"type":"peer-left","peer_id":"B"}"#
        );
        assert_eq!(
            compact("{ \"type\" : \"offer\",\n \"sdp\": \"v=0 \\\" x\\r\\n\" }"),
            r#"{"type":"offer","sdp":"v=0 \" x\r\n"}"#
        );
    }

    #[test]
    fn truthiness_and_type_names_are_pythons() {
        for f in [
            "null", "false", "0", "0.0", "\"\"", "[]", "[ ]", "{}", "{ }",
        ] {
            assert!(!truthy(&raw(f)), "{f}");
        }
        for t in ["true", "1", "-0.5", "\"a\"", "[0]", "{\"a\":1}"] {
            assert!(truthy(&raw(t)), "{t}");
        }
        assert_eq!(python_str(None), "None");
        assert_eq!(python_str(Some(&raw("null"))), "None");
        assert_eq!(python_str(Some(&raw("\"x\""))), "x");
        assert_eq!(python_str(Some(&raw("true"))), "True");
        assert_eq!(python_str(Some(&raw("5"))), "5");
    }

    #[test]
    fn only_session_events_and_this_protocols_signals_are_written() {
        let e = CoordinatorEncoder;
        let session = RoomName::from_trusted(signaling_room("S1"));
        let zone = RoomName::from_trusted(zone_room("Z"));
        let b = PeerId::from_trusted("B");
        let joined = |room: &RoomName| Event::PeerJoined {
            room: room.clone(),
            peer_id: b.clone(),
            meta: Value::Null,
        };
        assert_eq!(
            e.encode(&joined(&session)),
            Some(Encoded::Text(
                r#"{"type":"peer-joined","peer_id":"B"}"#.into()
            ))
        );
        assert_eq!(e.encode(&joined(&zone)), None);
        assert_eq!(e.encode(&joined(&RoomName::from_trusted("lobby"))), None);
        let sig = |kind: &str| Event::Signal {
            from: b.clone(),
            kind: SignalKind::from_trusted(kind),
            data: Opaque::Json(raw(r#"{"type":"offer","sdp":"v=0"}"#)),
        };
        let Some(Encoded::Text(t)) = e.encode(&sig("offer")) else {
            panic!("an offer is written");
        };
        let (head, tail) = t.split_at(t.find(",\"timestamp\":").unwrap());
        assert_eq!(
            head,
            r#"{"type":"offer","from":"B","sdp":{"type":"offer","sdp":"v=0"}"#
        );
        assert!(
            tail.starts_with(",\"timestamp\":\"20") && tail.ends_with("\"}"),
            "{tail}"
        );
        assert_eq!(e.encode(&sig("candidate")), None);
        let msg = Event::Message {
            room: zone,
            from: PeerId::from_trusted(""),
            data: Opaque::Json(raw("{\"npc\":1}")),
        };
        let Some(Encoded::Text(t)) = e.encode(&msg) else {
            panic!("a zone message is written");
        };
        assert!(
            t.starts_with(r#"{"type":"broadcast","zone_id":"Z","data":{"npc":1},"timestamp":""#),
            "{t}"
        );
    }
}
