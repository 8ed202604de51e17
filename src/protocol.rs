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
//! Text frames carry JSON, binary frames MessagePack (structs as maps). Both
//! decode into the same types, so a JSON client and a MessagePack client in one
//! room hear each other; opaque payloads (`meta`, `data`) are carried as a
//! JSON value tree in either case.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::payload::{Opaque, Payload};

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
/// (`Box<RawValue>`), a value from MessagePack ([`Payload`]). Names borrow
/// from the frame when they can (no escapes), as they are parsed again anyway.
#[derive(Debug, Deserialize)]
pub struct RawClientMsg<'a, D = Payload> {
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
    /// (last, so the positional order of the fields above stays as it was).
    pub reconnect_secret: Option<String>,
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
        Codec::Json => match std::str::from_utf8(frame) {
            Ok(text) => decode_text(text, lim),
            Err(_) => Err(classify_failure(frame, codec)),
        },
        Codec::MsgPack => rmp_serde::from_slice::<RawClientMsg<Payload>>(frame)
            .map(|raw| raw.validate(lim))
            .unwrap_or_else(|_| Err(classify_failure(frame, codec))),
    }
}

/// Decodes a JSON text frame, whose UTF-8 the WebSocket layer has checked
/// (parsing from `str` does not check it again).
pub fn decode_text(frame: &str, lim: NameLimits) -> Result<Inbound, DecodeError> {
    serde_json::from_str::<RawClientMsg<Box<RawValue>>>(frame)
        .map(|raw| raw.validate(lim))
        .unwrap_or_else(|_| Err(classify_failure(frame.as_bytes(), Codec::Json)))
}

/// Slow path: tells a malformed frame from a well-formed one with bad fields.
fn classify_failure(frame: &[u8], codec: Codec) -> DecodeError {
    let generic: Option<Value> = match codec {
        Codec::Json => serde_json::from_slice(frame).ok(),
        Codec::MsgPack => rmp_serde::from_slice(frame).ok(),
    };
    match generic {
        None => DecodeError {
            id: None,
            error: ClientError::new(
                ErrorCode::Malformed,
                match codec {
                    Codec::Json => "frame is not valid JSON",
                    Codec::MsgPack => "frame is not valid MessagePack",
                },
            ),
        },
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
        /// The request's payload, as sent.
        original_payload: Value,
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
        // Serializing our own types into memory cannot fail: every map key is a string.
        Codec::Json => Encoded::Text(serde_json::to_string(msg).expect("server message is JSON")),
        Codec::MsgPack => {
            Encoded::Binary(rmp_serde::to_vec_named(msg).expect("server message is MessagePack"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIM: NameLimits = NameLimits {
        max_name_bytes: 16,
        max_kind_bytes: 8,
        max_meta_bytes: 32,
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
}
