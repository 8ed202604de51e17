//! The WebRTC dashboard server's WebSocket protocol (LEGACY-PROTOCOLS.md
//! §3.2, the 0e626e5 server its browser client runs against), so that
//! client connects unchanged at `/ws/`.
//!
//! A thin translator onto [`crate::dashboard`]: the socket gets a peer id of
//! its own when it opens (registered through [`Node::register`] like any
//! door's), and each frame is handled by the old server's rules, in order,
//! the first that matches winning:
//!
//! 1. `subscribe`: adds `channel` to the socket's channels (no reply);
//! 2. `unsubscribe`: removes it (no reply);
//! 3. `ping`: `{"type":"pong","timestamp":"<iso>"}`;
//! 4. to 7. on channel `webrtc-dashboard-rooms`: `room-created` (not
//!    relayed), `user-joined-room` and `user-left-room` (registry updated,
//!    then the frame relayed), `room-list-request` (the list, to the
//!    requester);
//! 8. any other frame with a non-empty string `channel`: relayed byte for
//!    byte to the other subscribers of that channel, on every node;
//! 9. other JSON: ignored;
//! 10. not JSON (and JSON `null`, which made the old server throw):
//!     `{"type":"echo","original":"<text>","timestamp":"<iso>"}`.
//!
//! Room fields come from `data`, or from the frame itself when `data` is
//! missing or falsy (`data.data || data`). What the old server did not
//! bound is bounded here (docs/DOORS.md lists every difference): channels
//! per socket, the size of each room field, participants, rooms, the room
//! list, and the frames a socket may send per second. Bad input is
//! answered with an error frame
//! `{"type":"error","code","message","timestamp"}` (no `channel`, so the
//! browser client ignores it).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::debug;

use super::{ConnInfo, Dialect, Encoded, Encoder, Flow};
use crate::config::DashboardDoor;
use crate::core::event::Event;
use crate::core::hub::{CloseReason, ConnHandle};
use crate::core::session::Session;
use crate::dashboard::{self as dash, RoomFields, ROOMS_CHANNEL};
use crate::error::{close, ClientError, ErrorCode};
use crate::metrics as m;
use crate::node::{Credentials, Node, Registration};
use crate::store::Door;
use crate::types::{new_peer_id, LeaveReason};
use crate::ws::Data;

/// The close of a socket that kept sending far beyond its rate.
pub const RATE_LIMITED: CloseReason = CloseReason {
    code: close::POLICY,
    reason: "rate-limited",
    leave: LeaveReason::Disconnected,
};

/// A token bucket: `rate` frames a second on average, `burst` at once.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + refill).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One dashboard connection (reader half).
#[derive(Debug)]
pub struct DashboardConn {
    /// The channels it subscribed to (at most
    /// `doors.dashboard.max_channels_per_socket`).
    channels: Vec<String>,
    /// Its rate.
    bucket: Bucket,
    /// Frames dropped in a row for the rate.
    dropped: u32,
    /// Its epoch, once [`crate::dashboard::Dashboard::connect`] counted it.
    epoch: Option<u64>,
}

impl DashboardConn {
    /// A new connection under the door's settings.
    pub fn new(door: &DashboardDoor) -> Self {
        Self {
            channels: Vec::new(),
            bucket: Bucket::full(door.burst),
            dropped: 0,
            epoch: None,
        }
    }
}

/// The dashboard writer half: door frames as they are, errors in the door's
/// shape, nothing else (the core's events have no equivalent here).
#[derive(Debug)]
pub struct DashboardEncoder;

impl Encoder for DashboardEncoder {
    fn encode(&self, event: &Event) -> Option<Encoded> {
        match event {
            Event::Frame(_) => super::passthrough(event),
            Event::Error { code, message, .. } => Some(Encoded::Text(dash::error(
                &ClientError::new(*code, message.clone()),
            ))),
            _ => None,
        }
    }

    fn encode_ref<'a>(&self, event: &'a Event, _seq: u64) -> Option<Cow<'a, Encoded>> {
        match event {
            // Every door frame, the room list to thousands of subscribers
            // included, goes out from the one shared copy.
            Event::Frame(_) => super::borrow_frame(event),
            _ => self.encode(event).map(Cow::Owned),
        }
    }
}

/// The envelope fields the rules read. `data` stays text; the frame is
/// relayed as it came, never re-serialized.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default)]
    ty: Option<Value>,
    #[serde(default)]
    channel: Option<Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The room and participant fields of rules 4 to 6 (from `data` or the
/// frame).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Fields {
    id: Option<Value>,
    name: Option<Value>,
    description: Option<Value>,
    host: Option<Value>,
    #[serde(rename = "hostId")]
    host_id: Option<Value>,
    #[serde(rename = "createdAt")]
    created_at: Option<Value>,
    #[serde(rename = "roomId")]
    room_id: Option<Value>,
    #[serde(rename = "userId")]
    user_id: Option<Value>,
    #[serde(rename = "userName")]
    user_name: Option<Value>,
}

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::InvalidMessage, message)
}

/// An optional text field: absent or `null` is `None`; a string at most
/// `max` bytes; anything else is refused.
fn optional<'v>(
    v: &'v Option<Value>,
    name: &str,
    max: usize,
) -> Result<Option<&'v str>, ClientError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s)),
        Some(Value::String(_)) => Err(invalid(format!("`{name}` is longer than {max} bytes"))),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
    }
}

/// A required, non-empty text field.
fn required<'v>(v: &'v Option<Value>, name: &str, max: usize) -> Result<&'v str, ClientError> {
    optional(v, name, max)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("`{name}` is required (a non-empty string)")))
}

/// JavaScript truthiness of a JSON value's text (`data.data || data`).
fn truthy(raw: &RawValue) -> bool {
    let t = raw.get().trim();
    !(t == "null"
        || t == "false"
        || t == "\"\""
        || (t.starts_with(|c: char| c == '-' || c.is_ascii_digit())
            && t.parse::<f64>().is_ok_and(|n| n == 0.0)))
}

/// The fields of rules 4 to 6: from `data` when it is truthy, else from
/// the frame; an object's fields, none for anything else.
fn fields(env: &Envelope<'_>, frame: &str) -> Fields {
    let src = match env.data {
        Some(d) if truthy(d) => d.get(),
        _ => frame,
    };
    if src.trim_start().starts_with('{') {
        serde_json::from_str(src).unwrap_or_default()
    } else {
        Fields::default()
    }
}

impl Dialect for DashboardConn {
    type Encoder = DashboardEncoder;
    const NAME: &'static str = "dashboard";

    fn encoder(&self) -> DashboardEncoder {
        DashboardEncoder
    }

    async fn open(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        info: &ConnInfo,
    ) -> Result<Option<Session>, CloseReason> {
        // The dashboard protocol has no identity: each socket is a peer of
        // its own (a browser tab opens one per channel), admitted by the
        // door before the upgrade.
        let reg = Registration {
            door: Door::Dashboard,
            observed: info.observed,
            peer_id: Some(new_peer_id()),
            meta: Value::Null,
            credentials: Credentials {
                token: None,
                token_verified: true,
                reconnect_secret: None,
            },
        };
        handle.close_gate();
        let registered = node.register(handle, reg).await;
        handle.open_gate(None, None);
        let session = match registered {
            Ok(r) => r.session,
            // Draining (1012); a fresh id cannot be taken, but should it be,
            // the socket closes as a legacy worker's would.
            Err(refused) => return Err(refused.close.unwrap_or(CloseReason::PEER_ID_TAKEN)),
        };
        node.dashboard.connect(handle).await;
        self.epoch = Some(handle.epoch);
        debug!(peer = %session.peer, "dashboard connected");
        Ok(Some(session))
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
        if session.is_none() {
            return Flow::Continue;
        }
        let door = &node.core.cfg.doors.dashboard;
        if !self
            .bucket
            .take(door.messages_per_second, door.burst, received)
        {
            m::count(m::DASHBOARD_FRAMES, "kind", "rate-limited", 1);
            self.dropped += 1;
            if self.dropped == 1 {
                handle.send_error(
                    None,
                    ClientError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} frames a second (burst {}): frames are dropped until the rate falls",
                            door.messages_per_second, door.burst
                        ),
                    ),
                );
            }
            if self.dropped >= door.burst {
                return Flow::Close(RATE_LIMITED);
            }
            return Flow::Continue;
        }
        self.dropped = 0;
        // The old server read every frame as UTF-8 text (`toString()`).
        let text: Cow<'_, str> = match frame {
            Data::Text(t) => Cow::Borrowed(t),
            Data::Binary(b) => String::from_utf8_lossy(b),
        };
        if let Err(e) = self.handle(node, handle, &text, received).await {
            m::count(m::DASHBOARD_FRAMES, "kind", "invalid", 1);
            handle.send_error(None, e);
        }
        Flow::Continue
    }

    async fn closed(&mut self, node: &Arc<Node>) {
        if let Some(epoch) = self.epoch.take() {
            node.dashboard.disconnect(epoch, &self.channels).await;
        }
    }
}

impl DashboardConn {
    /// The rules of the module docs, for one frame.
    async fn handle(
        &mut self,
        node: &Arc<Node>,
        handle: &ConnHandle,
        text: &str,
        received: Instant,
    ) -> Result<(), ClientError> {
        let kind = |k: &'static str| m::count(m::DASHBOARD_FRAMES, "kind", k, 1);
        let echo = || {
            kind("echo");
            handle.send(dash::frame(dash::echo(text)));
            Ok(())
        };
        if !text.trim_start().starts_with('{') {
            // Rule 9 for JSON that is not an object (the old server found no
            // `type` in it), except `null`, on which it threw (rule 10).
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) if text.trim() != "null" => {
                    kind("dropped");
                    Ok(())
                }
                _ => echo(),
            };
        }
        let Ok(env) = serde_json::from_str::<Envelope<'_>>(text) else {
            return echo();
        };
        let cfg = &node.core.cfg;
        let door = &cfg.doors.dashboard;
        let ty = env.ty.as_ref().and_then(Value::as_str);
        let channel = env.channel.as_ref().and_then(Value::as_str);
        match ty {
            Some("subscribe") => {
                kind("subscribe");
                let c = required(&env.channel, "channel", cfg.limits.max_name_bytes)?;
                if !self.channels.iter().any(|x| x == c) {
                    if self.channels.len() >= door.max_channels_per_socket {
                        return Err(ClientError::new(
                            ErrorCode::TooManyChannels,
                            format!(
                                "a socket may subscribe to at most {} channels",
                                door.max_channels_per_socket
                            ),
                        ));
                    }
                    self.channels.push(c.to_string());
                    node.dashboard.subscribe(handle, c);
                }
                return Ok(());
            }
            Some("unsubscribe") => {
                kind("unsubscribe");
                if let Some(c) = channel {
                    if let Some(at) = self.channels.iter().position(|x| x == c) {
                        self.channels.swap_remove(at);
                        node.dashboard.unsubscribe(handle.epoch, c);
                    }
                }
                return Ok(());
            }
            Some("ping") => {
                kind("ping");
                handle.send(dash::frame(dash::pong()));
                return Ok(());
            }
            _ => {}
        }
        let max = door.max_field_bytes;
        if channel == Some(ROOMS_CHANNEL) {
            match ty {
                Some("room-created") => {
                    kind("room-created");
                    let f = fields(&env, text);
                    let room = RoomFields {
                        id: required(&f.id, "id", max)?,
                        name: optional(&f.name, "name", max)?,
                        description: optional(&f.description, "description", max)?,
                        host: optional(&f.host, "host", max)?,
                        host_id: optional(&f.host_id, "hostId", max)?,
                        created_at: optional(&f.created_at, "createdAt", max)?,
                    }
                    .room();
                    return node.dashboard.create_room(&room).await;
                }
                Some("user-joined-room") => {
                    kind("user-joined-room");
                    let f = fields(&env, text);
                    let p = dash::participant(
                        required(&f.room_id, "roomId", max)?,
                        required(&f.user_id, "userId", max)?,
                        optional(&f.user_name, "userName", max)?,
                    );
                    if !node.dashboard.join_room(handle.epoch, &p).await? {
                        // No such room: nothing at all, as the old server.
                        return Ok(());
                    }
                    return node
                        .dashboard
                        .relay(handle.epoch, ROOMS_CHANNEL, text, received)
                        .await;
                }
                Some("user-left-room") => {
                    kind("user-left-room");
                    let f = fields(&env, text);
                    let room = required(&f.room_id, "roomId", max)?;
                    let user = required(&f.user_id, "userId", max)?;
                    node.dashboard.leave_room(handle.epoch, room, user).await?;
                    return node
                        .dashboard
                        .relay(handle.epoch, ROOMS_CHANNEL, text, received)
                        .await;
                }
                Some("room-list-request") => {
                    kind("room-list-request");
                    return node.dashboard.send_list(handle).await;
                }
                _ => {}
            }
        }
        match channel.filter(|c| !c.is_empty()) {
            Some(c) => {
                kind("relay");
                node.dashboard.relay(handle.epoch, c, text, received).await
            }
            None => {
                kind("dropped");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_used_when_truthy_as_javascript_decides() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        for falsy in ["null", "false", "\"\"", "0", "-0", "0.0", "0e5"] {
            assert!(!truthy(&raw(falsy)), "{falsy}");
        }
        for t in ["true", "1", "\"x\"", "{}", "[]", "-1"] {
            assert!(truthy(&raw(t)), "{t}");
        }
        let frame = r#"{"type":"room-created","id":"top","data":0}"#;
        let env: Envelope<'_> = serde_json::from_str(frame).unwrap();
        assert_eq!(fields(&env, frame).id, Some(Value::from("top")));
        let frame = r#"{"type":"room-created","id":"top","data":{"id":"inner"}}"#;
        let env: Envelope<'_> = serde_json::from_str(frame).unwrap();
        assert_eq!(fields(&env, frame).id, Some(Value::from("inner")));
        // A truthy `data` that is no object has no fields (no positional read).
        let frame = r#"{"type":"room-created","id":"top","data":["a","b"]}"#;
        let env: Envelope<'_> = serde_json::from_str(frame).unwrap();
        assert_eq!(fields(&env, frame).id, None);
    }

    #[test]
    fn text_fields_are_strings_within_bounds() {
        assert_eq!(optional(&None, "x", 3).unwrap(), None);
        assert_eq!(optional(&Some(Value::Null), "x", 3).unwrap(), None);
        assert_eq!(
            optional(&Some(Value::from("abc")), "x", 3).unwrap(),
            Some("abc")
        );
        assert_eq!(
            optional(&Some(Value::from("abcd")), "x", 3)
                .unwrap_err()
                .code,
            ErrorCode::InvalidMessage
        );
        assert!(optional(&Some(Value::from(5)), "x", 3).is_err());
        assert!(required(&Some(Value::from("")), "x", 3).is_err());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::full(3);
        let t0 = b.last;
        assert!((0..3).all(|_| b.take(10, 3, t0)));
        assert!(!b.take(10, 3, t0));
        assert!(b.take(10, 3, t0 + std::time::Duration::from_millis(100)));
        assert!(!b.take(10, 3, t0 + std::time::Duration::from_millis(100)));
    }

    #[test]
    fn errors_are_the_doors_frames() {
        let Some(Encoded::Text(t)) = DashboardEncoder.encode(&Event::error(
            None,
            ClientError::new(ErrorCode::RateLimited, "slow down"),
        )) else {
            panic!()
        };
        assert!(t.starts_with(
            r#"{"type":"error","code":"rate-limited","message":"slow down","timestamp":""#
        ));
        assert!(DashboardEncoder.encode(&Event::Pong { id: None }).is_none());
    }
}
