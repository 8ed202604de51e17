//! The native wire protocol (`GET /ws`): client commands in, server messages out.
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

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::payload::{self, MsgPackValue, Opaque};

use crate::error::{ClientError, ErrorCode};
use std::net::{IpAddr, SocketAddr};

use crate::types::{NameError, PeerId, PoolName, RoomName, SignalKind};

/// The WebSocket subprotocol that selects JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";
/// The WebSocket subprotocol that selects MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";

/// The encoding a client speaks; the server answers in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// JSON in text frames.
    Json,
    /// MessagePack (structs as maps) in binary frames.
    MsgPack,
}

impl Codec {
    /// The codec named by a negotiated subprotocol.
    pub fn from_subprotocol(p: &str) -> Option<Self> {
        match p {
            SUBPROTOCOL_JSON => Some(Self::Json),
            SUBPROTOCOL_MSGPACK => Some(Self::MsgPack),
            _ => None,
        }
    }

    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MsgPack => "msgpack",
        }
    }
}

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
    /// `hello`: a JWT.
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
    },
    /// Join a room.
    Join {
        /// The room.
        room: RoomName,
        /// Per-room metadata, shown to the other members.
        meta: Value,
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
                },
                "join" => Command::Join {
                    room: room(self.room)?,
                    meta: meta(self.meta)?,
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

/// A member of a room as shown in `joined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The member's peer id.
    pub peer_id: PeerId,
    /// The metadata the member gave when joining (or in `hello` when absent).
    pub meta: Value,
}

/// Why a peer left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its connection closed (by the client, an error, a slow queue or a drain).
    Disconnected,
    /// A newer connection with the same peer id replaced it.
    Replaced,
    /// It stopped answering heartbeats, or its node died.
    Timeout,
}

/// Why a pairing ended, as told to the worker that did not end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairLostReason {
    /// The partner sent `unpair`.
    Unpaired,
    /// The partner's connection closed.
    Disconnected,
    /// The partner stopped answering heartbeats, or its node died.
    Timeout,
    /// A newer connection with the partner's id replaced it.
    Replaced,
}

impl PairLostReason {
    /// The wire and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unpaired => "unpaired",
            Self::Disconnected => "disconnected",
            Self::Timeout => "timeout",
            Self::Replaced => "replaced",
        }
    }
}

impl From<LeaveReason> for PairLostReason {
    fn from(r: LeaveReason) -> Self {
        match r {
            LeaveReason::Left | LeaveReason::Disconnected => Self::Disconnected,
            LeaveReason::Replaced => Self::Replaced,
            LeaveReason::Timeout => Self::Timeout,
        }
    }
}

/// A worker's side of a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The earlier-queued worker (or `worker_a_id` of a manual pairing).
    Initiator,
    /// The other one.
    Responder,
}

/// The partner's endpoints, as given in `paired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPeer {
    /// The partner's peer id (a legacy worker's worker id).
    pub peer_id: PeerId,
    /// The TCP address the broker saw for it (`ip:port`).
    pub observed_addr: String,
    /// The public IP it reported, or null.
    pub public_ip: Option<String>,
    /// Its public UDP endpoint (`ip:port`), or null.
    pub udp: Option<String>,
}

/// The body of `paired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairedNote {
    /// The pairing's id (a UUID).
    pub pairing_id: String,
    /// This worker's side.
    pub role: Role,
    /// The partner.
    pub peer: PairPeer,
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMsg {
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
    /// Answer to the legacy worker dialect's `echo_request` (native clients
    /// never receive it; the legacy encoder writes it as `echo_response`).
    Echo {
        /// The request's payload, as sent (JSON text: never a tree).
        original_payload: Opaque,
        /// Text naming the worker.
        processed_by_rendezvous: String,
    },
}

impl ServerMsg {
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
            Self::Echo { .. } => "echo",
        }
    }

    /// The room a room event belongs to.
    pub fn room(&self) -> Option<&RoomName> {
        match self {
            Self::PeerJoined { room, .. }
            | Self::PeerLeft { room, .. }
            | Self::Message { room, .. } => Some(room),
            _ => None,
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
            Self::Echo {
                original_payload,
                processed_by_rendezvous,
            } => original_payload.heap_bytes() + processed_by_rendezvous.capacity(),
        }
    }
}

/// An encoded frame ready for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A text frame (JSON).
    Text(String),
    /// A binary frame (MessagePack).
    Binary(Vec<u8>),
}

/// Encodes a server message in the client's codec.
pub fn encode(msg: &ServerMsg, codec: Codec) -> Encoded {
    match codec {
        // Serializing our own types into memory cannot fail: every map key is
        // a string, and MessagePack `data` was checked when it was read.
        Codec::Json => Encoded::Text(serde_json::to_string(msg).expect("server message is JSON")),
        Codec::MsgPack => Encoded::Binary(match msg {
            ServerMsg::Signal {
                from,
                kind,
                data: Opaque::MsgPack(data),
            } => msgpack_with_data(
                "signal",
                &[("from", from.as_str()), ("kind", kind.as_str())],
                data,
            ),
            ServerMsg::Message {
                room,
                from,
                data: Opaque::MsgPack(data),
            } => msgpack_with_data(
                "message",
                &[("room", room.as_str()), ("from", from.as_str())],
                data,
            ),
            _ => rmp_serde::to_vec_named(msg).expect("server message is MessagePack"),
        }),
    }
}

/// A `signal` or `message` for a MessagePack client whose `data` came from
/// one: the map rmp-serde would write (`type` first, then the fields in
/// order), with the sender's `data` bytes copied in as they are.
fn msgpack_with_data(ty: &str, fields: &[(&str, &str); 2], data: &MsgPackValue) -> Vec<u8> {
    fn str(out: &mut Vec<u8>, s: &str) {
        let n = s.len();
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n <= 0xff {
            out.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= 0xffff {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }
    let d = data.as_bytes();
    let names: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(d.len() + ty.len() + names + 20);
    out.push(0x84); // a map of four entries
    str(&mut out, "type");
    str(&mut out, ty);
    for (k, v) in fields {
        str(&mut out, k);
        str(&mut out, v);
    }
    str(&mut out, "data");
    out.extend_from_slice(d);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIM: NameLimits = NameLimits {
        max_name_bytes: 16,
        max_kind_bytes: 8,
        max_meta_bytes: 32,
        max_nesting_depth: 64,
    };

    fn dj(v: Value) -> Result<Inbound, DecodeError> {
        decode(v.to_string().as_bytes(), Codec::Json, LIM)
    }

    #[test]
    fn decodes_every_command() {
        let hello = dj(json!({"type":"hello","id":1,"peer_id":"a","meta":{"n":1}})).unwrap();
        assert_eq!(hello.id, Some(json!(1)));
        assert!(
            matches!(hello.cmd, Command::Hello { peer_id: Some(ref p), .. } if p.as_str() == "a")
        );
        assert!(matches!(
            dj(json!({"type":"hello"})).unwrap().cmd,
            Command::Hello { peer_id: None, .. }
        ));
        assert!(matches!(
            dj(json!({"type":"join","room":"r"})).unwrap().cmd,
            Command::Join { .. }
        ));
        assert!(matches!(
            dj(json!({"type":"leave","room":"r"})).unwrap().cmd,
            Command::Leave { .. }
        ));
        assert!(matches!(
            dj(json!({"type":"signal","to":"b","kind":"offer","data":{"sdp":"x"}}))
                .unwrap()
                .cmd,
            Command::Signal { .. }
        ));
        assert!(matches!(
            dj(json!({"type":"broadcast","room":"r","data":1}))
                .unwrap()
                .cmd,
            Command::Broadcast { .. }
        ));
        assert_eq!(
            dj(json!({"type":"ping","id":"x"})).unwrap().cmd,
            Command::Ping
        );
    }

    #[test]
    fn classifies_bad_input() {
        let code = |r: Result<Inbound, DecodeError>| r.unwrap_err().error.code;
        assert_eq!(
            code(decode(b"{nope", Codec::Json, LIM)),
            ErrorCode::Malformed
        );
        assert_eq!(
            code(decode(&[0xc1], Codec::MsgPack, LIM)),
            ErrorCode::Malformed
        );
        assert_eq!(code(dj(json!({"type":"dance"}))), ErrorCode::UnknownType);
        assert_eq!(code(dj(json!({"id":3}))), ErrorCode::UnknownType);
        assert_eq!(code(dj(json!({"type":"join"}))), ErrorCode::InvalidMessage);
        assert_eq!(
            code(dj(json!({"type":"join","room":""}))),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(dj(json!({"type":"join","room":"x".repeat(17)}))),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(dj(json!({"type":"signal","to":"","kind":"o"}))),
            ErrorCode::InvalidPeerId
        );
        assert_eq!(
            code(dj(json!({"type":"signal","to":"b","kind":"123456789"}))),
            ErrorCode::InvalidKind
        );
        assert_eq!(code(dj(json!([1, 2]))), ErrorCode::InvalidMessage);
        assert_eq!(
            code(dj(
                json!({"type":"join","room":"r","meta":{"k":"x".repeat(40)}})
            )),
            ErrorCode::MetaTooLarge
        );
        let wrong = dj(json!({"type":"join","id":7,"room":5})).unwrap_err();
        assert_eq!(
            (wrong.id, wrong.error.code),
            (Some(json!(7)), ErrorCode::InvalidMessage)
        );
        assert_eq!(
            code(dj(json!({"type":"ping","id":{"a":1}}))),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn msgpack_bin_and_integer_keys_reach_json_peers() {
        let mut frame = vec![0x84];
        for s in ["type", "signal", "to", "b", "kind", "o", "data"] {
            frame.push(0xa0 | s.len() as u8);
            frame.extend_from_slice(s.as_bytes());
        }
        // data: {"bin": <bin 01 02 03>, 1: "x"}
        frame.extend_from_slice(&[
            0x82, 0xa3, b'b', b'i', b'n', 0xc4, 3, 1, 2, 3, 0x01, 0xa1, b'x',
        ]);
        match decode(&frame, Codec::MsgPack, LIM).unwrap().cmd {
            Command::Signal { data, .. } => assert_eq!(data, json!({"bin": [1, 2, 3], "1": "x"})),
            other => panic!("expected a signal, got {other:?}"),
        }
    }

    #[test]
    fn json_data_passes_through_as_sent() {
        // Whitespace, escapes, key order and number spelling are kept: the
        // payload is not rebuilt, it is the client's own text.
        let frame = br#"{"type":"signal","to":"b","kind":"offer","data": {"z":1, "a":"v=0\r\n\u00e9", "n":1.50}}"#;
        let cmd = decode(frame, Codec::Json, LIM).unwrap().cmd;
        let Command::Signal { data, .. } = cmd else {
            panic!("expected a signal, got {cmd:?}")
        };
        assert!(
            matches!(data, Opaque::Json(_)),
            "JSON data kept as text: {data:?}"
        );
        let out = ServerMsg::Signal {
            from: PeerId::from_trusted("a"),
            kind: SignalKind::from_trusted("offer"),
            data,
        };
        let Encoded::Text(text) = encode(&out, Codec::Json) else {
            panic!("JSON encodes to text")
        };
        assert_eq!(
            text,
            r#"{"type":"signal","from":"a","kind":"offer","data":{"z":1, "a":"v=0\r\n\u00e9", "n":1.50}}"#
        );
        // A MessagePack recipient gets the value it stands for.
        let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
            panic!("MessagePack encodes to binary")
        };
        let v: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"type":"signal","from":"a","kind":"offer","data":{"z":1,"a":"v=0\r\né","n":1.5}})
        );
    }

    #[test]
    fn json_data_without_a_value_form_reaches_msgpack_as_text() {
        for data in [r#"{"n":1e400}"#, r#""\ud800""#] {
            let frame = format!(r#"{{"type":"signal","to":"b","kind":"k","data":{data}}}"#);
            let Command::Signal { data: d, .. } =
                decode(frame.as_bytes(), Codec::Json, LIM).unwrap().cmd
            else {
                panic!("expected a signal")
            };
            let out = ServerMsg::Signal {
                from: PeerId::from_trusted("a"),
                kind: SignalKind::from_trusted("k"),
                data: d,
            };
            let Encoded::Text(text) = encode(&out, Codec::Json) else {
                panic!("text")
            };
            assert!(text.ends_with(&format!(r#""data":{data}}}"#)), "{text}");
            let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
                panic!("binary")
            };
            let v: Value = rmp_serde::from_slice(&b).unwrap();
            assert_eq!(v["data"], json!(data), "{v}");
        }
    }

    #[test]
    fn escaped_names_decode_like_plain_ones() {
        // Names borrow from the frame unless they hold escapes.
        let frame = r#"{"type":"sig\u006eal","to":"\u0062","kind":"of\u0066er","data":1}"#;
        assert_eq!(
            decode_text(frame, LIM).unwrap().cmd,
            Command::Signal {
                to: PeerId::from_trusted("b"),
                kind: SignalKind::from_trusted("offer"),
                data: json!(1).into()
            }
        );
        let frame = r#"{"type":"join","room":"r\u00e9"}"#;
        assert!(
            matches!(decode_text(frame, LIM).unwrap().cmd, Command::Join { room, .. } if room.as_str() == "r\u{e9}")
        );
        // Invalid UTF-8 given as bytes is malformed.
        assert_eq!(
            decode(b"{\"type\":\"p\xffng\"}", Codec::Json, LIM)
                .unwrap_err()
                .error
                .code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn invalid_json_data_is_malformed_not_passed_on() {
        let e = decode(
            br#"{"type":"signal","to":"b","kind":"offer","data":{"a":}}"#,
            Codec::Json,
            LIM,
        )
        .unwrap_err();
        assert_eq!(e.error.code, ErrorCode::Malformed);
        // Absent and null data are both null.
        for frame in [
            &br#"{"type":"signal","to":"b","kind":"offer"}"#[..],
            br#"{"type":"signal","to":"b","kind":"offer","data":null}"#,
        ] {
            match decode(frame, Codec::Json, LIM).unwrap().cmd {
                Command::Signal { data, .. } => assert_eq!(data, Value::Null),
                other => panic!("expected a signal, got {other:?}"),
            }
        }
    }

    #[test]
    fn msgpack_round_trips_and_ignores_from() {
        let frame = rmp_serde::to_vec_named(
            &json!({"type":"signal","to":"b","kind":"offer","data":{"sdp":"v=0"},"from":"spoof"}),
        )
        .unwrap();
        let cmd = decode(&frame, Codec::MsgPack, LIM).unwrap().cmd;
        assert_eq!(
            cmd,
            Command::Signal {
                to: PeerId::from_trusted("b"),
                kind: SignalKind::from_trusted("offer"),
                data: json!({"sdp":"v=0"}).into()
            }
        );
        let out = ServerMsg::Pong { id: Some(json!(2)) };
        match encode(&out, Codec::MsgPack) {
            Encoded::Binary(b) => {
                let v: Value = rmp_serde::from_slice(&b).unwrap();
                assert_eq!(v, json!({"type":"pong","id":2}));
            }
            Encoded::Text(_) => panic!("msgpack must be binary"),
        }
        assert_eq!(
            encode(&out, Codec::Json),
            Encoded::Text(r#"{"type":"pong","id":2}"#.into())
        );
    }

    /// `[[...[1]...]]`, `depth` arrays deep, as JSON text.
    fn json_nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// The same in MessagePack.
    fn msgpack_nested(depth: usize) -> Vec<u8> {
        let mut v = vec![0x91; depth];
        v.push(0x01);
        v
    }

    /// A MessagePack map of `(key, value)` with string keys, values as encoded bytes.
    fn mp_map(fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut f = vec![0x80 | fields.len() as u8];
        for (k, v) in fields {
            f.push(0xa0 | k.len() as u8);
            f.extend_from_slice(k.as_bytes());
            f.extend_from_slice(v);
        }
        f
    }

    fn mp_str(s: &str) -> Vec<u8> {
        let mut v = vec![0xa0 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn nesting_up_to_the_limit_passes_one_more_is_refused_in_both_codecs() {
        let lim = NameLimits {
            max_meta_bytes: 4096,
            ..LIM
        };
        for depth in [64, 65] {
            let ok = depth <= 64;
            // JSON: `meta` of hello and join, `data` of signal and broadcast,
            // with the `id` before or after the deep value.
            let deep = json_nested(depth);
            for frame in [
                format!(r#"{{"type":"hello","id":7,"meta":{deep}}}"#),
                format!(r#"{{"type":"join","room":"r","meta":{deep},"id":7}}"#),
                format!(r#"{{"type":"signal","to":"b","kind":"k","data":{deep},"id":7}}"#),
                format!(r#"{{"id":7,"type":"broadcast","room":"r","data":{{"a":{deep}}}}}"#),
            ] {
                // A key adds a level in the last frame.
                let ok = ok && !frame.contains(r#"{"a":"#) || depth < 64;
                let r = decode_text(&frame, lim);
                if ok {
                    assert!(r.is_ok(), "depth {depth}: {frame}: {r:?}");
                } else {
                    let e = r.unwrap_err();
                    assert_eq!(
                        (e.error.code, e.id),
                        (ErrorCode::NestingTooDeep, Some(json!(7))),
                        "depth {depth}: {frame}"
                    );
                }
            }
            // MessagePack: the same, `id` before and after.
            let deep = msgpack_nested(depth);
            let id: &[u8] = &[0x07];
            for frame in [
                mp_map(&[("type", &mp_str("hello")), ("id", id), ("meta", &deep)]),
                mp_map(&[
                    ("type", &mp_str("join")),
                    ("room", &mp_str("r")),
                    ("meta", &deep),
                    ("id", id),
                ]),
                mp_map(&[
                    ("type", &mp_str("signal")),
                    ("to", &mp_str("b")),
                    ("kind", &mp_str("k")),
                    ("data", &deep),
                    ("id", id),
                ]),
            ] {
                let r = decode(&frame, Codec::MsgPack, lim);
                if ok {
                    assert!(r.is_ok(), "depth {depth}: {frame:x?}: {r:?}");
                } else {
                    let e = r.unwrap_err();
                    assert_eq!(
                        (e.error.code, e.id),
                        (ErrorCode::NestingTooDeep, Some(json!(7))),
                        "depth {depth}: {frame:x?}"
                    );
                }
            }
        }
        // Far deeper than any parser's own limit: refused by the scan, the
        // `id` still found (serde_json gives up at 128, rmp-serde at 1024).
        let frame = format!(
            r#"{{"type":"signal","to":"b","kind":"k","data":{},"id":"x"}}"#,
            json_nested(20_000)
        );
        let e = decode_text(&frame, lim).unwrap_err();
        assert_eq!(
            (e.error.code, e.id),
            (ErrorCode::NestingTooDeep, Some(json!("x")))
        );
        let frame = mp_map(&[
            ("type", &mp_str("signal")),
            ("data", &msgpack_nested(20_000)),
            ("id", &mp_str("x")),
        ]);
        let e = decode(&frame, Codec::MsgPack, lim).unwrap_err();
        assert_eq!(
            (e.error.code, e.id),
            (ErrorCode::NestingTooDeep, Some(json!("x")))
        );
        // A deep `id` is not echoed.
        let e = decode_text(
            &format!(r#"{{"type":"ping","id":{}}}"#, json_nested(70)),
            lim,
        )
        .unwrap_err();
        assert_eq!((e.error.code, e.id), (ErrorCode::NestingTooDeep, None));
        // Brackets inside strings do not count.
        let frame = format!(
            r#"{{"type":"signal","to":"b","kind":"k","data":"{}\"[["}}"#,
            "[".repeat(100)
        );
        assert!(decode_text(&frame, lim).is_ok());
    }

    #[test]
    fn msgpack_data_is_kept_as_sent_and_copied_to_msgpack_recipients() {
        // data: {"n": 1 as a uint16 (not the smallest form), "b": bin 01 02}
        let data: &[u8] = &[
            0x82, 0xa1, b'n', 0xcd, 0x00, 0x01, 0xa1, b'b', 0xc4, 2, 1, 2,
        ];
        let frame = mp_map(&[
            ("type", &mp_str("signal")),
            ("to", &mp_str("b")),
            ("kind", &mp_str("offer")),
            ("data", data),
        ]);
        let Command::Signal { data: d, .. } = decode(&frame, Codec::MsgPack, LIM).unwrap().cmd
        else {
            panic!("a signal")
        };
        match &d {
            Opaque::MsgPack(m) => assert_eq!(m.as_bytes(), data),
            other => panic!("expected MessagePack bytes, got {other:?}"),
        }
        // About its size on the wire when queued.
        assert_eq!(d.heap_bytes(), data.len());
        let out = ServerMsg::Signal {
            from: PeerId::from_trusted("a"),
            kind: SignalKind::from_trusted("offer"),
            data: d,
        };
        let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
            panic!("binary")
        };
        // The bytes as sent, at the end of the map rmp-serde would write.
        assert!(b.ends_with(data), "{b:x?}");
        let mut want = mp_map(&[
            ("type", &mp_str("signal")),
            ("from", &mp_str("a")),
            ("kind", &mp_str("offer")),
        ]);
        want[0] = 0x84;
        want.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a']);
        want.extend_from_slice(data);
        assert_eq!(b, want);
        // A JSON recipient gets it transcoded: bin as an array of byte values.
        let Encoded::Text(t) = encode(&out, Codec::Json) else {
            panic!("text")
        };
        assert_eq!(
            t,
            r#"{"type":"signal","from":"a","kind":"offer","data":{"n":1,"b":[1,2]}}"#
        );
        // A broadcast is copied the same way; long names take longer headers.
        let room = "r".repeat(40);
        let out = ServerMsg::Message {
            room: RoomName::from_trusted(room.as_str()),
            from: PeerId::from_trusted("a"),
            data: Opaque::MsgPack(MsgPackValue::new(data, 64).unwrap()),
        };
        let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
            panic!("binary")
        };
        // What serializing the message value by value gives (bin and all).
        let generic = rmp_serde::to_vec_named(&out).unwrap();
        let read = |b: &[u8]| {
            rmp_serde::from_slice::<crate::payload::Payload>(b)
                .unwrap()
                .0
        };
        assert_eq!(read(&b), read(&generic));
        assert_eq!(read(&b)["room"], json!(room));
        assert!(b.ends_with(data));
    }

    #[test]
    fn msgpack_data_reaches_json_recipients_like_a_lenient_value() {
        // Every kind of value, and keys that are not strings.
        let v = json!({"s": "t", "neg": -5, "big": u64::MAX, "f": 1.5, "nil": null, "t": true,
            "arr": [1, [2, {"k": -300}]]});
        let mut data = rmp_serde::to_vec_named(&v).unwrap();
        // Append to the map: 1: "x", true: 2, bin key, a float32, an invalid-UTF-8 str, a nested int key.
        let extra: &[u8] = &[
            0x01, 0xa1, b'x', 0xc3, 0x02, 0xc4, 1, 9, 0x03, 0xa2, b'f', b'4', 0xca, 0x3f, 0xc0, 0,
            0, 0xa3, b'b', b'a', b'd', 0xa2, 0xff, 0xfe, 0xa1, b'm', 0x81, 0xd0, 0x80, 0xc0,
        ];
        assert_eq!(data[0] & 0xf0, 0x80);
        data[0] += 6;
        data.extend_from_slice(extra);
        let m = MsgPackValue::new(&data, 64).unwrap();
        let text = serde_json::to_string(&m).unwrap();
        let got: Value = serde_json::from_str(&text).unwrap();
        // The same as the value tree `Payload` builds.
        let tree = Opaque::MsgPack(m).to_value();
        assert_eq!(got, tree);
        assert_eq!(got["1"], "x");
        assert_eq!(got["true"], 2);
        assert_eq!(got["[9]"], 3);
        assert_eq!(got["f4"], 1.5);
        assert_eq!(got["bad"], json!([255, 254]));
        assert_eq!(got["m"], json!({"-128": null}));
        assert_eq!(got["big"], json!(u64::MAX));
    }

    #[test]
    fn msgpack_ext_is_refused_in_data_and_skipped_elsewhere() {
        let ts: &[u8] = &[0xd6, 0xff, 0, 0, 0, 1]; // timestamp 32
        let frame = mp_map(&[
            ("type", &mp_str("signal")),
            ("to", &mp_str("b")),
            ("kind", &mp_str("k")),
            ("data", ts),
        ]);
        assert_eq!(
            decode(&frame, Codec::MsgPack, LIM).unwrap_err().error.code,
            ErrorCode::Malformed
        );
        let frame = mp_map(&[("type", &mp_str("ping")), ("at", ts)]);
        assert_eq!(
            decode(&frame, Codec::MsgPack, LIM).unwrap().cmd,
            Command::Ping
        );
    }

    #[test]
    fn msgpack_data_however_serde_finds_it() {
        // Positional (a struct as an array): `data` is field 8.
        let frame = rmp_serde::to_vec(&("signal", 3, (), (), (), (), "b", "k", [1, 2], (), (), ()))
            .unwrap();
        let i = decode(&frame, Codec::MsgPack, LIM).unwrap();
        assert_eq!(i.id, Some(json!(3)));
        assert!(matches!(i.cmd, Command::Signal { ref data, .. } if *data == json!([1, 2])));
        // Keyed by its index: serde takes it, the scan does not; refused.
        let mut frame = mp_map(&[
            ("type", &mp_str("signal")),
            ("to", &mp_str("b")),
            ("kind", &mp_str("k")),
        ]);
        frame[0] += 1;
        frame.extend_from_slice(&[0x08, 0x01]);
        assert_eq!(
            decode(&frame, Codec::MsgPack, LIM).unwrap_err().error.code,
            ErrorCode::InvalidMessage
        );
        // nil and absent are both null.
        for frame in [
            mp_map(&[
                ("type", &mp_str("signal")),
                ("to", &mp_str("b")),
                ("kind", &mp_str("k")),
            ]),
            mp_map(&[
                ("type", &mp_str("signal")),
                ("to", &mp_str("b")),
                ("kind", &mp_str("k")),
                ("data", &[0xc0]),
            ]),
        ] {
            let Command::Signal { data, .. } = decode(&frame, Codec::MsgPack, LIM).unwrap().cmd
            else {
                panic!("a signal")
            };
            assert!(matches!(data, Opaque::Value(Value::Null)), "{data:?}");
        }
    }

    #[test]
    fn a_queued_message_counts_what_it_holds() {
        // The probe's payload: 65,000 one-byte integers.
        let mut data = vec![0xdc, 0xfd, 0xe8];
        data.extend(std::iter::repeat_n(0x01, 65_000));
        let m = Opaque::MsgPack(MsgPackValue::new(&data, 64).unwrap());
        let msg = ServerMsg::Signal {
            from: PeerId::from_trusted("a"),
            kind: SignalKind::from_trusted("k"),
            data: m.clone(),
        };
        assert!(
            (65_003..66_000).contains(&msg.heap_bytes()),
            "{}",
            msg.heap_bytes()
        );
        // As a tree it holds 32 bytes per element: the estimate says so.
        let tree = ServerMsg::Signal {
            from: PeerId::from_trusted("a"),
            kind: SignalKind::from_trusted("k"),
            data: Opaque::Value(m.to_value()),
        };
        assert!(tree.heap_bytes() >= 65_000 * 32, "{}", tree.heap_bytes());
    }
}
