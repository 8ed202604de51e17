//! Client-visible errors: stable error codes and WebSocket close codes.
//!
//! This is the one place that decides what a client sees when something goes
//! wrong. Codes are part of the protocol (docs/PROTOCOL.md) and never change
//! meaning; internal details are logged, never sent.

use serde::Serialize;

/// Declares [`ErrorCode`] from one list of `Variant => "wire-string"`, so the
/// enum, its wire strings (serde and [`ErrorCode::as_str`]) and
/// [`ErrorCode::ALL`] cannot disagree: a new code is added in one place.
macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => $wire:literal, )+) => {
        /// The stable, machine-readable `code` of an error: of an `error`
        /// message on a WebSocket, and of every HTTP error body
        /// (`{"error": {"code", "message"}}`, whose status
        /// [`crate::http::error::status`] decides).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum ErrorCode {
            $( $(#[$doc])* #[serde(rename = $wire)] $variant, )+
        }

        impl ErrorCode {
            /// Every code, in the order they are declared.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$variant),+];

            /// The code as it appears on the wire (and as a metric label).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }
    };
}

error_codes! {
    /// The frame is not valid JSON (text) or MessagePack (binary).
    Malformed => "malformed",
    /// The frame has no `type`, or a `type` the server does not know.
    UnknownType => "unknown-type",
    /// A field is missing or has the wrong type; over HTTP, a
    /// `POST /api/connect` body that is not JSON or lacks a field.
    InvalidMessage => "invalid-message",
    /// A peer id is empty, too long or contains control characters (also a
    /// worker id in a path or in `POST /api/connect`).
    InvalidPeerId => "invalid-peer-id",
    /// A room name is empty, too long or contains control characters (also
    /// in `GET /api/rooms/{room}`).
    InvalidRoom => "invalid-room",
    /// A signal kind is empty, too long or contains control characters.
    InvalidKind => "invalid-kind",
    /// `meta` is larger than `limits.max_meta_bytes` as JSON.
    MetaTooLarge => "meta-too-large",
    /// A message other than `hello` or `ping` arrived before `hello`.
    HelloRequired => "hello-required",
    /// A second `hello` on a connection that already has a peer id.
    AlreadyHello => "already-hello",
    /// The token is missing, malformed, expired, badly signed or names another
    /// peer; over HTTP also a missing or wrong admin bearer token.
    Unauthorized => "unauthorized",
    /// The target peer of a `signal` is not connected anywhere.
    PeerNotFound => "peer-not-found",
    /// The room has reached `limits.max_peers_per_room`.
    RoomFull => "room-full",
    /// The peer is already in `limits.max_rooms_per_peer` rooms.
    TooManyRooms => "too-many-rooms",
    /// `leave` or `broadcast` for a room the peer has not joined.
    NotInRoom => "not-in-room",
    /// The operation needs the cluster backend (Redis), which is unreachable.
    ClusterUnavailable => "cluster-unavailable",
    /// The node is draining and accepts no new work (nor, over HTTP, a new
    /// WebSocket).
    Draining => "draining",
    /// `pair` from a worker that is already paired, or `POST /api/connect`
    /// naming one.
    AlreadyPaired => "already-paired",
    /// `unpair` from a worker that is neither paired nor queued.
    NotPaired => "not-paired",
    /// `endpoint` with an unparsable `public_ip` (an IP address) or `udp`
    /// (`ip:port`, port not 0), or with neither.
    InvalidEndpoint => "invalid-endpoint",
    /// A pool name is empty, too long or contains control characters.
    InvalidPool => "invalid-pool",
    /// `POST /api/connect` names a worker that is not connected anywhere.
    WorkerNotFound => "worker-not-found",
    /// `POST /api/connect` names the same worker twice.
    SameWorker => "same-worker",
    /// `hello` (or a legacy worker) claims a peer id that a live connection
    /// holds, without its `reconnect_secret` or a token for the id.
    PeerIdTaken => "peer-id-taken",
    /// An operator endpoint was asked from where it does not answer without
    /// `http.admin_token` (not plain loopback).
    Forbidden => "forbidden",
    /// Something failed inside the server; details are in its log.
    Internal => "internal",
    /// Arrays and objects (maps) in the frame nest deeper than
    /// `limits.max_nesting_depth`.
    NestingTooDeep => "nesting-too-deep",
    /// HTTP: no endpoint at this path (whatever the method).
    NotFound => "not-found",
    /// HTTP: `GET /api/rooms/{room}` for a room with no members.
    RoomNotFound => "room-not-found",
    /// HTTP: a WebSocket upgrade while the node holds
    /// `server.max_connections` sockets.
    TooManyConnections => "too-many-connections",
    /// HTTP: the path does not serve this method (the `Allow` header lists
    /// those it does), or a WebSocket upgrade used the wrong one for its
    /// HTTP version (GET on HTTP/1.1, CONNECT on HTTP/2).
    MethodNotAllowed => "method-not-allowed",
    /// HTTP: a request body larger than the API reads
    /// ([`crate::http::MAX_BODY_BYTES`]).
    PayloadTooLarge => "payload-too-large",
    /// HTTP: a request the node could not read: a path segment that is not
    /// UTF-8 once percent-decoded, a WebSocket upgrade without
    /// `Connection: upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Key` or
    /// `Sec-WebSocket-Version: 13` (or, on HTTP/2, `:protocol websocket`), or
    /// a body that could not be read.
    BadRequest => "bad-request",
    /// HTTP: a WebSocket upgrade request on a connection that cannot be
    /// upgraded (no upgrade state: for example HTTP/1.0).
    UpgradeRequired => "upgrade-required",
    /// HTTP: `POST /api/rooms` names a room that exists (one created
    /// before, or one with members).
    RoomExists => "room-exists",
    /// `join` without a `token` into a room that has one (and no JWT
    /// `rooms` claim granting it).
    RoomTokenRequired => "room-token-required",
    /// `join` with a `token` that is not the room's (and no JWT `rooms`
    /// claim granting it).
    RoomTokenInvalid => "room-token-invalid",
    /// `join` into a room whose lifetime has run out (it is closed within
    /// a moment, if it is not already).
    RoomExpired => "room-expired",
    /// HTTP: `POST /api/auth/anonymous` while sign-in is off
    /// (`auth.signin.enabled`).
    SigninUnavailable => "signin-unavailable",
    /// HTTP: too many sign-ins from this client address
    /// (`auth.signin.rate_per_minute`); `Retry-After` says when to retry.
    /// Dashboard door: a frame beyond the socket's rate
    /// (`doors.dashboard.messages_per_second` and `burst`); it was dropped.
    RateLimited => "rate-limited",
    /// Dashboard door: a `subscribe` beyond
    /// `doors.dashboard.max_channels_per_socket` channels on one socket.
    TooManyChannels => "too-many-channels",
    /// Dashboard door: a room beyond `doors.dashboard.max_rooms`, or a
    /// change that would make the room list larger than
    /// `doors.dashboard.max_list_bytes`.
    RegistryFull => "registry-full",
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
    /// A client that broke a policy: a dashboard socket that kept sending
    /// far beyond its rate.
    pub const POLICY: u16 = 1008;
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

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    /// The wire string is the serde one, kebab-case and unique per code.
    #[test]
    fn every_code_has_one_kebab_case_wire_string() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            let s = code.as_str();
            assert_eq!(serde_json::to_value(code).unwrap(), s, "{code:?}");
            assert!(
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    && !s.starts_with('-')
                    && !s.ends_with('-'),
                "{code:?} has wire string {s:?}"
            );
            assert!(seen.insert(s), "{s:?} is used twice");
        }
    }
}
