//! Decoding the native protocol: a frame in, a [`Command`] (or a coded error) out.
//!
//! A frame is decoded in two steps. First into [`RawClientMsg`], a flat struct
//! of optional fields that serde fills without buffering; then
//! [`RawClientMsg::validate`] checks the fields the `type` needs and parses
//! names into validated types ([`crate::types`]). Only when the first step
//! fails is the frame decoded again as a generic value, to tell a malformed
//! frame from a well-formed one with a wrongly typed field, and to recover its
//! `id` for the error.
//!
//! Before either step, the frame is scanned for its nesting depth (no tree is
//! built; see [`crate::payload`]): a frame in which a value nests deeper than
//! `limits.max_nesting_depth` is refused whole with `nesting-too-deep`, so
//! no deeper tree is ever built, stored or sent on.
//!
//! Text frames carry JSON, binary frames MessagePack (structs as maps). Both
//! decode into the same types, so a JSON client and a MessagePack client in one
//! room hear each other. `meta` becomes a JSON value tree; `data` stays the
//! bytes the client sent (JSON text or MessagePack, see [`Opaque`]).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::Codec;
use crate::core::command::{Command, DEFAULT_POOL};
use crate::error::{ClientError, ErrorCode};
use crate::payload::{self, MsgPackValue, Opaque};
use crate::types::{NameError, PeerId, PoolName, RoomName, SignalKind};

/// Length limits applied while validating a frame.
#[derive(Debug, Clone, Copy)]
pub struct NameLimits {
    /// Maximum bytes in a peer id or room name.
    pub max_name_bytes: usize,
    /// Maximum bytes in a signal kind.
    pub max_kind_bytes: usize,
    /// Maximum bytes of `meta` (as JSON): it is repeated in every `joined`
    /// list of the room, so it must stay small.
    pub max_meta_bytes: usize,
    /// Deepest nesting of arrays and maps in a value of a frame (`meta`,
    /// `data`): value trees are built and dropped recursively, and parsers
    /// further on (Redis's Lua cjson, other nodes) have limits of their own.
    pub max_nesting_depth: usize,
}

impl NameLimits {
    /// The limits `[limits]` configures.
    pub fn from_config(l: &crate::config::Limits) -> Self {
        Self {
            max_name_bytes: l.max_name_bytes,
            max_kind_bytes: l.max_kind_bytes,
            max_meta_bytes: l.max_meta_bytes,
            max_nesting_depth: l.max_nesting_depth,
        }
    }
}

/// Counts the bytes a value takes as JSON, without building the text.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Every field any client message may carry; `validate` decides which are needed.
/// `D` is how `data` is read: the JSON text itself from JSON
/// (`Box<RawValue>`); from MessagePack only whether it is there
/// ([`Present`]), as its bytes are taken from the frame's scan. Names borrow
/// from the frame when they can (no escapes), as they are parsed again anyway.
#[derive(Debug, Deserialize)]
pub struct RawClientMsg<'a, D = Box<RawValue>> {
    /// The message type.
    #[serde(rename = "type", borrow)]
    pub ty: Option<Cow<'a, str>>,
    /// Correlation id, echoed in the answer.
    pub id: Option<Value>,
    /// `hello`: requested peer id.
    #[serde(borrow)]
    pub peer_id: Option<Cow<'a, str>>,
    /// `hello`, `join`: opaque metadata.
    #[serde(default, deserialize_with = "crate::payload::opt")]
    pub meta: Option<Value>,
    /// `hello`: a JWT; `join`: the room's token.
    pub token: Option<String>,
    /// `join`, `leave`, `broadcast`: the room.
    #[serde(borrow)]
    pub room: Option<Cow<'a, str>>,
    /// `signal`: the target peer.
    #[serde(borrow)]
    pub to: Option<Cow<'a, str>>,
    /// `signal`: the kind (`offer`, `answer`, `candidate`, ...).
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// `signal`, `broadcast`: opaque payload.
    #[serde(default)]
    pub data: Option<D>,
    /// `pair`: the pool to queue in (`default` when absent).
    #[serde(borrow)]
    pub pool: Option<Cow<'a, str>>,
    /// `endpoint`: the public IP the worker reports for itself.
    pub public_ip: Option<String>,
    /// `endpoint`: the public UDP endpoint (`ip:port`) the worker reports.
    pub udp: Option<String>,
    /// Any field the server stamps itself (`from`) is read and ignored, so a
    /// client can never choose it.
    #[serde(default, rename = "from")]
    pub _from: serde::de::IgnoredAny,
    /// `hello`: the `reconnect_secret` of the connection this one replaces
    /// (last, and defaulted, so the positional form of the fields above
    /// stays as it was: a 12-element array still decodes).
    #[serde(default)]
    pub reconnect_secret: Option<String>,
    /// `hello`: the `welcome.resume_token` of the session to resume.
    #[serde(default)]
    pub resume: Option<String>,
    /// `hello` with `resume`: the last `seq` the client received (0: none).
    #[serde(default)]
    pub last_seq: Option<u64>,
    /// `hello`: the client can resume its session (see `Command::Hello`).
    #[serde(default)]
    pub resumable: Option<bool>,
}

/// `data` of a MessagePack frame as serde reads it: skipped, only its
/// presence noted (its bytes are the span [`payload::scan_msgpack_frame`] found).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Present;

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Present)
    }
}

/// A decoded frame: the command and its correlation id.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The client's `id`, echoed in the answer.
    pub id: Option<Value>,
    /// The command.
    pub cmd: Command,
}

/// A frame that could not be turned into a command.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The client's `id`, when it could be recovered.
    pub id: Option<Value>,
    /// What was wrong.
    pub error: ClientError,
}

fn name_err(code: ErrorCode, field: &str, e: NameError) -> ClientError {
    ClientError::new(code, format!("`{field}` {e}"))
}

fn required<T>(v: Option<T>, ty: &str, field: &str) -> Result<T, ClientError> {
    v.ok_or_else(|| {
        ClientError::new(
            ErrorCode::InvalidMessage,
            format!("`{ty}` requires field `{field}`"),
        )
    })
}

fn valid_id(id: Option<Value>) -> Result<Option<Value>, ClientError> {
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(Value::Number(n))),
        Some(Value::String(s)) if s.len() <= 128 => Ok(Some(Value::String(s))),
        Some(_) => Err(ClientError::new(
            ErrorCode::InvalidMessage,
            "`id` must be a number or a string of at most 128 bytes",
        )),
    }
}

impl<'a, D> RawClientMsg<'a, D> {
    /// The same fields with `data` replaced.
    fn with_data<E>(self, data: Option<E>) -> RawClientMsg<'a, E> {
        RawClientMsg {
            ty: self.ty,
            id: self.id,
            peer_id: self.peer_id,
            meta: self.meta,
            token: self.token,
            room: self.room,
            to: self.to,
            kind: self.kind,
            data,
            pool: self.pool,
            public_ip: self.public_ip,
            udp: self.udp,
            _from: self._from,
            reconnect_secret: self.reconnect_secret,
            resume: self.resume,
            last_seq: self.last_seq,
            resumable: self.resumable,
        }
    }
}

impl<D: Into<Opaque>> RawClientMsg<'_, D> {
    /// Checks the fields the message's `type` needs and builds the command.
    pub fn validate(self, lim: NameLimits) -> Result<Inbound, DecodeError> {
        let id = match valid_id(self.id) {
            Ok(id) => id,
            Err(error) => return Err(DecodeError { id: None, error }),
        };
        let cmd = (|| {
            let ty = self
                .ty
                .as_deref()
                .ok_or_else(|| ClientError::new(ErrorCode::UnknownType, "message has no `type`"))?;
            let peer = |s: Cow<'_, str>, field: &str| {
                PeerId::parse(&s, lim.max_name_bytes)
                    .map_err(|e| name_err(ErrorCode::InvalidPeerId, field, e))
            };
            let meta = |m: Option<Value>| {
                let m = m.unwrap_or(Value::Null);
                if json_len(&m) > lim.max_meta_bytes {
                    return Err(ClientError::new(
                        ErrorCode::MetaTooLarge,
                        format!(
                            "`meta` must be at most {} bytes as JSON",
                            lim.max_meta_bytes
                        ),
                    ));
                }
                Ok(m)
            };
            let room = |s: Option<Cow<'_, str>>| {
                let s = required(s, ty, "room")?;
                RoomName::parse(&s, lim.max_name_bytes)
                    .map_err(|e| name_err(ErrorCode::InvalidRoom, "room", e))
            };
            Ok(match ty {
                "hello" => Command::Hello {
                    peer_id: self.peer_id.map(|p| peer(p, "peer_id")).transpose()?,
                    meta: meta(self.meta)?,
                    token: self.token,
                    reconnect_secret: self.reconnect_secret,
                    resume: match self.resume {
                        Some(t) if t.len() > 64 + lim.max_name_bytes => {
                            return Err(ClientError::new(
                                ErrorCode::InvalidMessage,
                                "`resume` is not a resume token",
                            ))
                        }
                        Some(t) => Some((t, self.last_seq.unwrap_or(0))),
                        None => None,
                    },
                    resumable: self.resumable.unwrap_or(false),
                },
                "join" => Command::Join {
                    room: room(self.room)?,
                    meta: meta(self.meta)?,
                    token: self.token,
                },
                "leave" => Command::Leave {
                    room: room(self.room)?,
                },
                "signal" => Command::Signal {
                    to: peer(required(self.to, ty, "to")?, "to")?,
                    kind: SignalKind::parse(&required(self.kind, ty, "kind")?, lim.max_kind_bytes)
                        .map_err(|e| name_err(ErrorCode::InvalidKind, "kind", e))?,
                    data: self.data.map_or(Opaque::NULL, Into::into),
                },
                "broadcast" => Command::Broadcast {
                    room: room(self.room)?,
                    data: self.data.map_or(Opaque::NULL, Into::into),
                },
                "ping" => Command::Ping,
                "pair" => Command::Pair {
                    pool: PoolName::parse(
                        self.pool.as_deref().unwrap_or(DEFAULT_POOL),
                        lim.max_name_bytes,
                    )
                    .map_err(|e| name_err(ErrorCode::InvalidPool, "pool", e))?,
                    meta: meta(self.meta)?,
                },
                "unpair" => Command::Unpair,
                "endpoint" => {
                    let bad = |field: &str, what: &str| {
                        ClientError::new(
                            ErrorCode::InvalidEndpoint,
                            format!("`{field}` must be {what}"),
                        )
                    };
                    let public_ip = self
                        .public_ip
                        .map(|s| {
                            s.parse::<IpAddr>()
                                .map_err(|_| bad("public_ip", "an IP address"))
                        })
                        .transpose()?;
                    let udp = self
                        .udp
                        .map(|s| match s.parse::<SocketAddr>() {
                            Ok(a) if a.port() != 0 => Ok(a),
                            _ => Err(bad("udp", "an `ip:port` address with a port other than 0")),
                        })
                        .transpose()?;
                    if public_ip.is_none() && udp.is_none() {
                        return Err(ClientError::new(
                            ErrorCode::InvalidEndpoint,
                            "`endpoint` requires `public_ip` or `udp`",
                        ));
                    }
                    Command::Endpoint { public_ip, udp }
                }
                other => {
                    let mut shown: String = other.chars().take(64).collect();
                    if shown.len() < other.len() {
                        shown.push('…');
                    }
                    return Err(ClientError::new(
                        ErrorCode::UnknownType,
                        format!("unknown message type `{shown}`"),
                    ));
                }
            })
        })();
        match cmd {
            Ok(cmd) => Ok(Inbound { id, cmd }),
            Err(error) => Err(DecodeError { id, error }),
        }
    }
}

/// Decodes one frame (JSON text or MessagePack binary) into a command.
pub fn decode(frame: &[u8], codec: Codec, lim: NameLimits) -> Result<Inbound, DecodeError> {
    match codec {
        Codec::Json => {
            // The depth first: even the slow path below builds a tree.
            if !payload::json_depth_within(frame, lim.max_nesting_depth + 1) {
                return Err(too_deep(
                    std::str::from_utf8(frame).ok().and_then(json_id),
                    lim,
                ));
            }
            match std::str::from_utf8(frame) {
                Ok(text) => decode_json(text, lim),
                Err(_) => Err(classify_failure(frame, codec)),
            }
        }
        Codec::MsgPack => decode_msgpack(frame, lim),
    }
}

/// Decodes a JSON text frame, whose UTF-8 the WebSocket layer has checked
/// (parsing from `str` does not check it again).
pub fn decode_text(frame: &str, lim: NameLimits) -> Result<Inbound, DecodeError> {
    // The frame's own object is one level; `meta` and `data` get the limit.
    if !payload::json_depth_within(frame.as_bytes(), lim.max_nesting_depth + 1) {
        return Err(too_deep(json_id(frame), lim));
    }
    decode_json(frame, lim)
}

/// [`decode_text`] once the depth is checked.
fn decode_json(frame: &str, lim: NameLimits) -> Result<Inbound, DecodeError> {
    serde_json::from_str::<RawClientMsg<Box<RawValue>>>(frame)
        .map(|raw| raw.validate(lim))
        .unwrap_or_else(|_| Err(classify_failure(frame.as_bytes(), Codec::Json)))
}

/// Decodes a MessagePack frame: one scan checks it (well-formed, depth) and
/// finds where `data` is; serde reads the other fields, and `data` is kept
/// as the bytes the client sent.
fn decode_msgpack(frame: &[u8], lim: NameLimits) -> Result<Inbound, DecodeError> {
    let scan = match payload::scan_msgpack_frame(frame, lim.max_nesting_depth) {
        Ok(scan) => scan,
        Err(_) => return Err(malformed(Codec::MsgPack)),
    };
    if scan.too_deep {
        return Err(too_deep(msgpack_id(frame, scan.id), lim));
    }
    let raw = match rmp_serde::from_slice::<RawClientMsg<Present>>(frame) {
        Ok(raw) => raw,
        Err(_) => return Err(classify_failure(frame, Codec::MsgPack)),
    };
    let data = match (raw.data, scan.data) {
        // Absent, or nil (serde reads a nil `Option` as `None`).
        (None, _) => None,
        (Some(Present), Some(span)) => {
            Some(Opaque::MsgPack(MsgPackValue::from_scanned(&frame[span])))
        }
        // serde also takes a field by its index (`8`) or as `bin`; the scan
        // only knows the string key.
        (Some(Present), None) => {
            return Err(DecodeError {
                id: msgpack_id(frame, scan.id),
                error: ClientError::new(
                    ErrorCode::InvalidMessage,
                    "`data` must be keyed by the string \"data\"",
                ),
            })
        }
    };
    raw.with_data(data).validate(lim)
}

fn too_deep(id: Option<Value>, lim: NameLimits) -> DecodeError {
    DecodeError {
        id,
        error: ClientError::new(
            ErrorCode::NestingTooDeep,
            format!(
                "arrays and objects may nest at most {} levels deep in `meta` and `data`",
                lim.max_nesting_depth
            ),
        ),
    }
}

fn malformed(codec: Codec) -> DecodeError {
    DecodeError {
        id: None,
        error: ClientError::new(
            ErrorCode::Malformed,
            match codec {
                Codec::Json => "frame is not valid JSON",
                Codec::MsgPack => "frame is not valid MessagePack",
            },
        ),
    }
}

/// The `id` of a JSON frame too deep to decode: read without building any
/// other field (serde_json skips values without recursion), and only when it
/// is a scalar.
fn json_id(frame: &str) -> Option<Value> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    if !frame.trim_start().starts_with('{') {
        return None;
    }
    let raw = serde_json::from_str::<IdOnly<'_>>(frame).ok()?.id?;
    if raw.get().starts_with(['[', '{']) {
        return None;
    }
    valid_id(serde_json::from_str(raw.get()).ok())
        .ok()
        .flatten()
}

/// The `id` of a MessagePack frame at `span` (from its scan), when it is a scalar.
fn msgpack_id(frame: &[u8], span: Option<std::ops::Range<usize>>) -> Option<Value> {
    let bytes = &frame[span?];
    if matches!(bytes.first(), Some(0x80..=0x9f | 0xdc..=0xdf)) {
        return None;
    }
    valid_id(rmp_serde::from_slice(bytes).ok()).ok().flatten()
}

/// Slow path: tells a malformed frame from a well-formed one with bad fields.
/// Runs only on frames whose depth was checked.
fn classify_failure(frame: &[u8], codec: Codec) -> DecodeError {
    let generic: Option<Value> = match codec {
        Codec::Json => serde_json::from_slice(frame).ok(),
        Codec::MsgPack => rmp_serde::from_slice(frame).ok(),
    };
    match generic {
        None => malformed(codec),
        Some(Value::Object(map)) => {
            let id = valid_id(map.get("id").cloned()).ok().flatten();
            DecodeError {
                id,
                error: ClientError::new(
                    ErrorCode::InvalidMessage,
                    "a field has the wrong type (names and kinds are strings, `id` a number or string)",
                ),
            }
        }
        Some(_) => DecodeError {
            id: None,
            error: ClientError::new(ErrorCode::InvalidMessage, "a message must be an object"),
        },
    }
}
