//! Client-visible errors: stable error codes and WebSocket close codes.
//!
//! This is the one place that decides what a client sees when something goes
//! wrong. Codes are part of the protocol (docs/PROTOCOL.md) and never change
//! meaning; internal details are logged, never sent.

use serde::Serialize;

/// The stable, machine-readable `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The frame is not valid JSON (text) or MessagePack (binary).
    Malformed,
    /// The frame has no `type`, or a `type` the server does not know.
    UnknownType,
    /// A field is missing or has the wrong type.
    InvalidMessage,
    /// A peer id is empty, too long or contains control characters.
    InvalidPeerId,
    /// A room name is empty, too long or contains control characters.
    InvalidRoom,
    /// A signal kind is empty, too long or contains control characters.
    InvalidKind,
    /// `meta` is larger than `limits.max_meta_bytes` as JSON.
    MetaTooLarge,
    /// A message other than `hello` or `ping` arrived before `hello`.
    HelloRequired,
    /// A second `hello` on a connection that already has a peer id.
    AlreadyHello,
    /// The token is missing, malformed, expired, badly signed or names another peer.
    Unauthorized,
    /// The target peer of a `signal` is not connected anywhere.
    PeerNotFound,
    /// The room has reached `limits.max_peers_per_room`.
    RoomFull,
    /// The peer is already in `limits.max_rooms_per_peer` rooms.
    TooManyRooms,
    /// `leave` or `broadcast` for a room the peer has not joined.
    NotInRoom,
    /// The operation needs the cluster backend (Redis), which is unreachable.
    ClusterUnavailable,
    /// The node is draining and accepts no new work.
    Draining,
    /// `pair` from a worker that is already paired, or `POST /api/connect`
    /// naming one.
    AlreadyPaired,
    /// `unpair` from a worker that is neither paired nor queued.
    NotPaired,
    /// `endpoint` with an unparsable `public_ip` (an IP address) or `udp`
    /// (`ip:port`, port not 0), or with neither.
    InvalidEndpoint,
    /// A pool name is empty, too long or contains control characters.
    InvalidPool,
    /// `POST /api/connect` names a worker that is not connected anywhere.
    WorkerNotFound,
    /// `POST /api/connect` names the same worker twice.
    SameWorker,
    /// `hello` (or a legacy worker) claims a peer id that a live connection
    /// holds, without its `reconnect_secret` or a token for the id.
    PeerIdTaken,
    /// An operator endpoint was asked from where it does not answer without
    /// `http.admin_token` (not plain loopback).
    Forbidden,
    /// Something failed inside the server; details are in its log.
    Internal,
    /// Arrays and objects (maps) in the frame nest deeper than
    /// `limits.max_nesting_depth`.
    NestingTooDeep,
}

impl ErrorCode {
    /// The code as it appears on the wire (and as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown-type",
            Self::InvalidMessage => "invalid-message",
            Self::InvalidPeerId => "invalid-peer-id",
            Self::InvalidRoom => "invalid-room",
            Self::InvalidKind => "invalid-kind",
            Self::MetaTooLarge => "meta-too-large",
            Self::HelloRequired => "hello-required",
            Self::AlreadyHello => "already-hello",
            Self::Unauthorized => "unauthorized",
            Self::PeerNotFound => "peer-not-found",
            Self::RoomFull => "room-full",
            Self::TooManyRooms => "too-many-rooms",
            Self::NotInRoom => "not-in-room",
            Self::ClusterUnavailable => "cluster-unavailable",
            Self::Draining => "draining",
            Self::AlreadyPaired => "already-paired",
            Self::NotPaired => "not-paired",
            Self::InvalidEndpoint => "invalid-endpoint",
            Self::InvalidPool => "invalid-pool",
            Self::WorkerNotFound => "worker-not-found",
            Self::SameWorker => "same-worker",
            Self::PeerIdTaken => "peer-id-taken",
            Self::Forbidden => "forbidden",
            Self::Internal => "internal",
            Self::NestingTooDeep => "nesting-too-deep",
        }
    }
}

/// An error addressed to one client: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The stable code.
    pub code: ErrorCode,
    /// A short explanation, safe to show (never internal details).
    pub message: String,
}

impl ClientError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// WebSocket close codes the server sends, with their reasons.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The client broke the WebSocket protocol (RFC 6455 7.4.1).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message or a close reason that is not UTF-8 (RFC 6455 8.1).
    pub const INVALID_DATA: u16 = 1007;
    /// A frame or message larger than `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The node is shutting down (drain); reconnect, to any node.
    pub const RESTART: u16 = 1012;
    /// Try again later: the client could not keep up with its outbound queue.
    pub const SLOW: u16 = 1013;
    /// The `hello` token was refused.
    pub const UNAUTHORIZED: u16 = 4001;
    /// A newer connection with the same peer id replaced this one.
    pub const REPLACED: u16 = 4002;
    /// No `hello` arrived within `limits.hello_timeout_ms`.
    pub const HELLO_TIMEOUT: u16 = 4003;
    /// Nothing (not even a pong) arrived within `limits.heartbeat_timeout_ms`.
    pub const HEARTBEAT_TIMEOUT: u16 = 4004;
    /// A legacy worker's id is held by a live connection (the check before
    /// the upgrade passed, but another connection won the id meanwhile).
    pub const PEER_ID_TAKEN: u16 = 4009;
}
