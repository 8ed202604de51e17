//! Configuration: built-in defaults, then `config/default.toml` (when present in
//! the working directory), then `--config FILE`, then `SWITCHBOARD_*`
//! environment variables with `__` for nesting
//! (`SWITCHBOARD_LIMITS__MAX_FRAME_BYTES=131072`).
//!
//! [`load`] validates everything before the caller binds a port and reports
//! every bad key at once, one line each, naming the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A string that never prints: `Debug` and [`Config::redacted`] hide it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn redact(&self) -> Self {
        if self.0.is_empty() {
            Self::default()
        } else {
            Self("[redacted]".into())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// `_ms` keys: milliseconds in the file, a [`Duration`] in the program.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An `ip:port` address, as text in the file.
mod addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not an `ip:port` address")))
    }
}

/// An optional IPv6 `[ip]:port` address; the empty string is none.
mod opt_addr_v6 {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        match text.trim().parse() {
            Ok(a @ SocketAddr::V6(_)) => Ok(Some(a)),
            _ => Err(serde::de::Error::custom(format!(
                "`{text}` is not an IPv6 `[ip]:port` address (empty disables it)"
            ))),
        }
    }
}

/// An optional `ip:port` as text; empty is `None` (off).
mod opt_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("`{text}` is not an `ip:port` address (empty: off)"))
        })
    }
}

/// Networks: CIDRs (`10.0.0.0/8`) or single addresses (`127.0.0.1`, a /32
/// or /128), as text in the file.
mod nets {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|text| {
                let t = text.trim();
                t.parse::<IpNet>()
                    .ok()
                    .or_else(|| t.parse::<std::net::IpAddr>().ok().map(IpNet::from))
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "`{text}` is not a CIDR (`10.0.0.0/8`) or an IP address"
                        ))
                    })
            })
            .collect()
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening address, node identity, connection cap.
    pub server: ServerConfig,
    /// Per-connection and per-room limits, heartbeats, deadlines.
    pub limits: Limits,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Session resume after a lost socket.
    pub resume: ResumeConfig,
    /// Authentication of peers.
    pub auth: AuthConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Clustering through Redis.
    pub cluster: ClusterConfig,
    /// The built-in STUN responder.
    pub stun: StunConfig,
    /// Worker rendezvous: pairing and the older rendezvous service's protocol.
    pub rendezvous: RendezvousConfig,
    /// Rooms created ahead of time over HTTP (`POST /api/rooms`).
    pub rooms: RoomsConfig,
    /// The doors for older systems' clients that need listeners or paths of
    /// their own (the room signaling server's, the dashboard server's).
    pub doors: DoorsConfig,
    /// ICE servers handed to clients in `welcome`: STUN URLs and TURN relays
    /// with ephemeral credentials.
    pub turn: TurnConfig,
    /// The operator console (`/admin`, `/admin/chat`, their WebSockets).
    pub console: ConsoleConfig,
    /// `POST /api/publish`: server-side messages to a room, a zone, a
    /// signaling session or a dashboard channel, on every node.
    pub publish: PublishConfig,
}

/// `[publish]`: who may call `POST /api/publish` besides an admin
/// (`http.admin_token` as a bearer, or plain loopback without one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// A key a publisher sends as `X-API-Key` (a world service that should
    /// not hold the admin token); empty: admins only.
    pub api_key: Secret,
    /// An `http://` URL polled every `poll_interval_ms` by one node of the
    /// cluster at a time: its JSON object, `{zone_id: data, ...}`, is
    /// published to each zone (what the old service's NPC broadcast task
    /// promised). Empty: no polling.
    pub poll_url: String,
    /// How often `poll_url` is fetched.
    #[serde(rename = "poll_interval_ms", with = "millis")]
    pub poll_interval: Duration,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            api_key: Secret::default(),
            poll_url: String::new(),
            poll_interval: Duration::from_millis(5_000),
        }
    }
}

impl PublishConfig {
    /// `poll_url` as (host, port, path), when set and well formed
    /// (`http://host[:port][/path]`).
    pub fn poll_target(&self) -> Option<Result<(String, u16, String), String>> {
        if self.poll_url.is_empty() {
            return None;
        }
        let parse = || {
            let rest = self
                .poll_url
                .strip_prefix("http://")
                .ok_or("must start with http:// (https is not supported)")?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            // `[v6]:port`, `host:port`, or either without the port (80).
            let (host, port) = match authority.strip_prefix('[') {
                Some(v6) => {
                    let (h, after) = v6.split_once(']').ok_or("has an unclosed `[`")?;
                    (h, after.strip_prefix(':'))
                }
                None => match authority.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (authority, None),
                },
            };
            let port = match port {
                Some(p) => p
                    .parse::<u16>()
                    .map_err(|_| "has a port that is not a number")?,
                None => 80,
            };
            if host.is_empty() || port == 0 {
                return Err("needs a host and a port other than 0");
            }
            if path.chars().any(|c| c.is_control() || c == ' ') {
                return Err("has a path with spaces or control characters");
            }
            Ok((host.to_string(), port, path.to_string()))
        };
        Some(parse().map_err(|e: &str| format!("publish.poll_url: `{}` {e}", self.poll_url)))
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on for HTTP and WebSocket (`ip:port`; port 0 picks one).
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    /// This node's id on the bus; empty means a random one per start.
    pub node_id: String,
    /// Most concurrent WebSocket connections; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Tokio worker threads; 0 means one per CPU this process may use (or
    /// `TOKIO_WORKER_THREADS` when that is set).
    pub worker_threads: usize,
    /// Time a connection has to send a complete request head, counted from
    /// the accept (or, on a keep-alive connection, from the end of the last
    /// request): a client that sends nothing, or trickles its head, is closed
    /// after it. Also the idle bound of a plain-HTTP keep-alive connection.
    #[serde(rename = "header_read_timeout_ms", with = "millis")]
    pub header_read_timeout: Duration,
    /// Longest a plain HTTP request may take from its complete head to its
    /// response, its body included: a body trickled in holds a connection
    /// no longer than this.
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// Largest HTTP/1 request head (request line and headers), in bytes; a
    /// larger one is answered 431 and the connection closed. On HTTP/2 it is
    /// the advertised `SETTINGS_MAX_HEADER_LIST_SIZE`. Without it hyper
    /// buffers ~400 KB per connection.
    pub max_header_bytes: usize,
    /// Most connections that are not (yet) WebSocket sessions: handshakes
    /// in progress and plain-HTTP (probes, API, HTTP/2) connections. While
    /// all are taken nothing more is accepted (clients wait in the kernel's
    /// accept queue). Bounds the file descriptors besides `max_connections`.
    pub max_pending: usize,
    /// Most of those slots one client address may hold once three quarters
    /// of `max_pending` are taken (trusted proxies excepted): its next
    /// connection is closed at once, so one source cannot crowd out the
    /// others; below that a burst from one address (a NAT, a reconnect
    /// storm) is served.
    pub max_pending_per_ip: usize,
    /// File descriptors kept free of client sockets for everything else
    /// (Redis, STUN, the listener, logs): `max_connections` is lowered at
    /// start until it, `max_pending` and this fit the open-file limit.
    pub reserved_fds: usize,
}

/// Most worker threads `server.worker_threads` accepts.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Smallest `server.max_header_bytes`: hyper's HTTP/1 read buffer cannot be
/// smaller.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest `server.max_header_bytes`.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // Loopback: binding every interface is a decision taken together
            // with `auth.jwt` or `auth.anonymous = "allow"` (see `AuthConfig`).
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: String::new(),
            max_connections: 50_000,
            worker_threads: 0,
            header_read_timeout: Duration::from_millis(5_000),
            request_timeout: Duration::from_millis(30_000),
            max_header_bytes: 16 * 1024,
            max_pending: 512,
            max_pending_per_ip: 64,
            reserved_fds: 128,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted frame or message, in bytes; larger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Most rooms one peer may be in at once (`too-many-rooms`).
    pub max_rooms_per_peer: usize,
    /// Most peers in one room (`room-full`).
    pub max_peers_per_room: usize,
    /// Messages queued for one client before it counts as too slow and is closed with 1013.
    pub outbound_queue: usize,
    /// Longest a peer id, room name or other name may be, in bytes.
    pub max_name_bytes: usize,
    /// Longest a signal kind may be, in bytes.
    pub max_kind_bytes: usize,
    /// Largest `meta` (as JSON) in `hello` or `join`, in bytes; it is repeated in every `joined` list.
    pub max_meta_bytes: usize,
    /// Time a new socket has to send `hello` before it is closed with 4003.
    #[serde(rename = "hello_timeout_ms", with = "millis")]
    pub hello_timeout: Duration,
    /// How often the server pings each socket.
    #[serde(rename = "heartbeat_interval_ms", with = "millis")]
    pub heartbeat_interval: Duration,
    /// A socket silent for this long (no frame, no pong) is closed with 4004.
    #[serde(rename = "heartbeat_timeout_ms", with = "millis")]
    pub heartbeat_timeout: Duration,
    /// Bytes queued for one client before it counts as too slow and is closed
    /// with 1013 (with `outbound_queue`, whichever comes first). Counted as what
    /// each queued message holds in memory (a fan-out counts once per
    /// recipient); a single message larger than this is still taken into an
    /// empty queue.
    pub outbound_queue_bytes: usize,
    /// Bytes waiting to be written to one socket (encoded, or still queued)
    /// above which the server stops reading that socket (TCP backpressure onto
    /// the client) until they are written.
    pub max_write_buffer_bytes: usize,
    /// Deepest nesting of arrays and objects in `meta` and `data` (error
    /// `nesting-too-deep`): value trees are handled recursively, and parsers
    /// further on (Redis's Lua cjson, other nodes) have limits of their own.
    pub max_nesting_depth: usize,
    /// How long the server keeps trying to end a connection it closes: to
    /// write what is queued and its close frame, then to read the client's
    /// answering close frame (so the socket is not reset while the client
    /// still has bytes in flight, which would destroy the close frame).
    /// A client that does not read within this time never sees the close
    /// frame.
    #[serde(rename = "close_timeout_ms", with = "millis")]
    pub close_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_rooms_per_peer: 64,
            max_peers_per_room: 1_000,
            outbound_queue: 1_024,
            max_name_bytes: 128,
            max_kind_bytes: 32,
            max_meta_bytes: 4 * 1024,
            hello_timeout: Duration::from_millis(10_000),
            heartbeat_interval: Duration::from_millis(15_000),
            heartbeat_timeout: Duration::from_millis(45_000),
            outbound_queue_bytes: 1 << 20,
            max_write_buffer_bytes: 256 * 1024,
            max_nesting_depth: 64,
            close_timeout: Duration::from_millis(1_000),
        }
    }
}

/// The deepest `limits.max_nesting_depth` accepted: a frame adds a level, and
/// serde_json refuses trees deeper than 128 levels.
pub const MAX_NESTING_DEPTH: usize = 100;

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long clients get to reconnect elsewhere before their sockets close with 1012.
    #[serde(rename = "grace_period_ms", with = "millis")]
    pub grace_period: Duration,
    /// Upper bound of the random `after_ms` in `reconnect`, spreading reconnects out.
    #[serde(rename = "reconnect_jitter_ms", with = "millis")]
    pub reconnect_jitter: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_millis(10_000),
            reconnect_jitter: Duration::from_millis(1_000),
        }
    }
}

/// `[resume]`: a native session whose socket ends without the client
/// closing it is kept for `window_ms`, collecting what is sent to it, and a
/// `hello` with its `resume` token takes it back on any node (see
/// docs/PROTOCOL.md, "Resume").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// Off: every socket that ends ends its session at once (as before).
    pub enabled: bool,
    /// How long a session waits for its client to resume it.
    #[serde(rename = "window_ms", with = "millis")]
    pub window: Duration,
    /// Messages the node keeps after writing them, until the client's pong
    /// shows it read them (what a resume replays when the socket died with
    /// them unread). More than this since the last pong: a resume that
    /// needs the oldest fails with `overflow`.
    pub replay_max: usize,
    /// How long a resume on another node waits for the old node's answer
    /// before it gives up (`node-lost`) and starts a fresh session.
    #[serde(rename = "handover_timeout_ms", with = "millis")]
    pub handover_timeout: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_millis(30_000),
            replay_max: 1024,
            handover_timeout: Duration::from_millis(3_000),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT verification of `hello` tokens.
    pub jwt: JwtConfig,
    /// Who may connect without a token while no `auth.jwt` key is configured
    /// (with a key, every peer needs a token and this is not consulted).
    pub anonymous: AnonymousPolicy,
    /// Sign-in: tokens the node issues itself (`POST /api/auth/anonymous`,
    /// and the room signaling door's `/anonymous-signin`).
    pub signin: SigninConfig,
}

/// `[auth.signin]`: anonymous sign-in, for apps without an identity
/// provider of their own. Off by default: a node that mints a token for
/// anyone who asks lets anyone in, so it is a decision, like
/// `auth.anonymous = "allow"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigninConfig {
    /// Issue tokens at `POST /api/auth/anonymous` (and the room signaling
    /// door's `/anonymous-signin`); off: those answer 503 `signin-unavailable`.
    pub enabled: bool,
    /// Lifetime of an issued token, in seconds (its `exp`).
    pub token_ttl_s: u64,
    /// Sign-ins answered per minute per client address (an IPv4 address, or
    /// an IPv6 /64), after a burst of `burst`; above it 429. 0: no limit.
    pub rate_per_minute: u32,
    /// Sign-ins a client address may make at once above `rate_per_minute`.
    pub burst: u32,
    /// A private key (PEM text, or the path of a PEM file: RSA, EC P-256 /
    /// P-384, Ed25519) to sign with; its public key must be in
    /// `auth.jwt.public_keys`, so every node verifies what any node
    /// issued. Empty: tokens are signed with `auth.jwt.hs256_secret` (HS256).
    pub private_key: Secret,
    /// `private_key`, read and checked when the configuration is loaded.
    #[serde(skip)]
    pub key: Option<SigningKey>,
}

/// The private key of `auth.signin.private_key`, read and checked at load.
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKey {
    /// The algorithm tokens are signed with (RS256, ES256, ES384 or EdDSA).
    pub alg: jsonwebtoken::Algorithm,
    /// The key as PEM text.
    pub pem: Secret,
}

/// Longest `auth.signin.token_ttl_s`: a week. A sign-in token cannot be
/// revoked, so its lifetime is its exposure.
pub const MAX_SIGNIN_TTL_S: u64 = 7 * 24 * 3600;

impl Default for SigninConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_ttl_s: 3600,
            rate_per_minute: 10,
            burst: 10,
            private_key: Secret::default(),
            key: None,
        }
    }
}

impl SigninConfig {
    /// Reads and checks `private_key` into [`Self::key`]: it must be a
    /// private key in PEM whose tokens one of `jwt`'s loaded public keys
    /// verifies (so that every node accepts what this one signs). One
    /// message per problem.
    pub fn load_key(&mut self, jwt: &JwtConfig) -> Vec<String> {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
        self.key = None;
        let entry = self.private_key.expose();
        if entry.is_empty() {
            return Vec::new();
        }
        let key = "auth.signin.private_key";
        let pem = match pem_or_file(entry) {
            Ok(p) => p,
            // A path is not secret; PEM text would not have failed to read.
            Err(e) => return vec![format!("{key}: cannot read `{entry}`: {e}")],
        };
        let b = pem.as_bytes();
        let candidates: Vec<(EncodingKey, Algorithm)> = [
            EncodingKey::from_rsa_pem(b).map(|k| vec![(k, Algorithm::RS256)]),
            EncodingKey::from_ec_pem(b)
                .map(|k| vec![(k.clone(), Algorithm::ES256), (k, Algorithm::ES384)]),
            EncodingKey::from_ed_pem(b).map(|k| vec![(k, Algorithm::EdDSA)]),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .flatten()
        .collect();
        // A probe token signed with the key (the first algorithm the key
        // signs with), checked against each public key of its family.
        #[derive(Serialize, Deserialize)]
        struct Probe {
            sub: String,
            exp: u64,
        }
        let probe = Probe {
            sub: "probe".into(),
            exp: u64::MAX / 2,
        };
        let Some((alg, token)) = candidates.iter().find_map(|(k, alg)| {
            jsonwebtoken::encode(&Header::new(*alg), &probe, k)
                .ok()
                .map(|t| (*alg, t))
        }) else {
            return vec![format!(
                "{key}: not an RSA, EC (P-256, P-384) or Ed25519 private key in PEM (PKCS#8 for EC and Ed25519)"
            )];
        };
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        v.iss = None;
        let verified = jwt.keys.iter().any(|pk| {
            let b = pk.pem.as_bytes();
            let dk = match pk.family {
                KeyFamily::Rsa => DecodingKey::from_rsa_pem(b),
                KeyFamily::Ec => DecodingKey::from_ec_pem(b),
                KeyFamily::Ed => DecodingKey::from_ed_pem(b),
            };
            dk.is_ok_and(|dk| jsonwebtoken::decode::<Probe>(&token, &dk, &v).is_ok())
        });
        if !verified {
            return vec![format!(
                "{key}: no key in auth.jwt.public_keys verifies its tokens; add its public key there, so every node accepts the tokens any node issues"
            )];
        }
        self.key = Some(SigningKey {
            alg,
            pem: Secret::new(pem),
        });
        Vec::new()
    }
}

/// `auth.anonymous`: peers without a token when no JWT key is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousPolicy {
    /// Accepted only while `server.listen` is a loopback address: a node
    /// reachable only from its own host (or through a local proxy that
    /// authenticates) can run open; one bound to a network cannot by accident.
    #[default]
    Loopback,
    /// Always accepted: the operator decided the network in front is trusted.
    Allow,
    /// Never accepted: every `hello` (and legacy worker) is refused without a key.
    Deny,
}

impl AnonymousPolicy {
    /// The config value, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// `[auth.jwt]`: with no key configured the node runs open (and warns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Secret,
    /// Public keys (PEM text, or paths to PEM files) for RS256, ES256 or EdDSA tokens.
    pub public_keys: Vec<String>,
    /// Required `iss`, when set.
    pub issuer: String,
    /// Required `aud`, when set.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
    /// `public_keys`, read and parsed when the configuration is loaded (a
    /// file that cannot be read, or is no public key, is reported with
    /// every other bad key, by `--check-config` too).
    #[serde(skip)]
    pub keys: Vec<PublicKey>,
}

/// A public key of `auth.jwt.public_keys`, read and checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Which token algorithms it verifies.
    pub family: KeyFamily,
    /// The key as PEM text.
    pub pem: String,
}

/// The algorithm family of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA: RS256/384/512, PS256/384/512.
    Rsa,
    /// EC P-256 / P-384: ES256, ES384.
    Ec,
    /// Ed25519: EdDSA.
    Ed,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: Secret::default(),
            public_keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_s: 30,
            keys: Vec::new(),
        }
    }
}

impl JwtConfig {
    /// Reads and parses `public_keys` into [`Self::keys`]; one message per
    /// entry that cannot be read or is not a public key in PEM.
    pub fn load_keys(&mut self) -> Vec<String> {
        use jsonwebtoken::DecodingKey;
        let mut errs = Vec::new();
        self.keys.clear();
        for (i, entry) in self.public_keys.iter().enumerate() {
            let pem = match pem_or_file(entry) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(format!(
                        "auth.jwt.public_keys[{i}]: cannot read `{entry}`: {e}"
                    ));
                    continue;
                }
            };
            let b = pem.as_bytes();
            let family = if DecodingKey::from_rsa_pem(b).is_ok() {
                KeyFamily::Rsa
            } else if DecodingKey::from_ec_pem(b).is_ok() {
                KeyFamily::Ec
            } else if DecodingKey::from_ed_pem(b).is_ok() {
                KeyFamily::Ed
            } else {
                errs.push(format!(
                    "auth.jwt.public_keys[{i}]: not an RSA, EC or Ed25519 public key in PEM"
                ));
                continue;
            };
            self.keys.push(PublicKey { family, pem });
        }
        errs
    }
}

/// `[http]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// When set, `/api/*` requires `Authorization: Bearer <token>`.
    pub admin_token: Secret,
    /// Proxies (CIDRs, or single addresses) whose `Forwarded` /
    /// `X-Forwarded-For` headers name the client. From any other peer those
    /// headers are ignored: anyone can send them.
    #[serde(with = "nets")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The one forwarding header the trusted proxies set. Only it is read:
    /// a proxy appends to (or overwrites) its own header, and passes any
    /// other one from the client through untouched, so believing a second
    /// header would let the client pick its own address.
    pub client_ip_header: ClientIpHeader,
}

/// `http.client_ip_header`: which forwarding header names the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (nginx `$proxy_add_x_forwarded_for`).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
    /// `X-Real-IP: client` (nginx `$remote_addr`, set rather than appended).
    XRealIp,
}

impl ClientIpHeader {
    /// The header's name (lowercase, as `http` spells it).
    pub fn header_name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
        }
    }
}

/// `[turn]`: what `welcome.ice_servers` holds (see [`crate::turn`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// TURN URLs (`turn:host:port?transport=udp`, `turns:host:5349`) of
    /// relays that share `secret` (coturn `use-auth-secret`). Empty: none.
    pub urls: Vec<String>,
    /// STUN URLs clients should use (the public address of this cluster's
    /// STUN responder, which the node cannot know itself). Empty: none.
    pub stun_urls: Vec<String>,
    /// The shared secret (coturn `static-auth-secret`). Required with `urls`.
    pub secret: Secret,
    /// Lifetime of an issued credential, in seconds.
    pub ttl_s: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            stun_urls: Vec::new(),
            secret: Secret::default(),
            ttl_s: 86_400,
        }
    }
}

/// `[stun]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StunConfig {
    /// Answer STUN Binding requests on UDP (and learn workers' public UDP endpoints).
    pub enabled: bool,
    /// UDP address of the responder (`ip:port`; port 0 picks one).
    #[serde(with = "addr")]
    pub listen: SocketAddr,
    /// A second, IPv6-only UDP address (`[::]:3478`); empty: none.
    #[serde(with = "opt_addr_v6")]
    pub listen_v6: Option<SocketAddr>,
    /// Binding requests answered per second per source (an IPv4 address, or
    /// an IPv6 /64: one subscriber's prefix). Above it datagrams are dropped
    /// without an answer, which bounds both what a forged source can make the
    /// node send to a victim and what one source costs the node. 0: no limit.
    pub rate_per_ip: u32,
    /// Requests a source may send at once above `rate_per_ip` (ICE agents
    /// send a handful together; many hosts behind one NAT share an address).
    pub burst: u32,
}

impl Default for StunConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            listen_v6: Some(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 3478))),
            rate_per_ip: 50,
            burst: 200,
        }
    }
}

/// `[rendezvous]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendezvousConfig {
    /// Queue a worker of the older rendezvous protocol for pairing (pool
    /// `default`) as soon as it reports its UDP endpoint.
    pub auto_pair: bool,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        Self { auto_pair: true }
    }
}

/// `[console]`: the operator console (docs/ADMIN.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at all (with `http.admin_token` set, or
    /// `loopback_without_token`); off: every console path answers 404.
    pub enabled: bool,
    /// Without `http.admin_token` the console is off, since nothing could
    /// tell an operator from anyone who reaches the port. This turns it on
    /// for plain loopback requests only (TCP peer on loopback, no
    /// forwarding header): a developer's own machine.
    pub loopback_without_token: bool,
    /// Lifetime of a console login (its cookie), in seconds.
    pub session_ttl_s: u64,
    /// Chat lines kept per admin session and worker (on the session's node).
    pub chat_history: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            loopback_without_token: false,
            session_ttl_s: 12 * 3600,
            chat_history: 200,
        }
    }
}

/// `[rooms]`: rooms made ahead of time with `POST /api/rooms`, with a
/// lifetime and a join token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Who may create rooms (and delete them with their token); an admin
    /// may always.
    pub create: RoomCreatePolicy,
    /// The longest lifetime a room may be given (`ttl_secs`); also the
    /// lifetime of a room a caller other than an admin creates without one.
    #[serde(rename = "max_ttl_ms", with = "millis")]
    pub max_ttl: Duration,
    /// How often the node holding the sweeper's lease looks for rooms whose
    /// lifetime ran out: a room closes at most about this long after its time.
    #[serde(rename = "sweep_interval_ms", with = "millis")]
    pub sweep_interval: Duration,
    /// The most rooms one caller other than an admin (a JWT `sub`; for
    /// `anyone`, a client address or IPv6 /64) holds a slot for: a room
    /// takes a slot until its lifetime ends (so at most `max_ttl_ms`),
    /// deleted or not. Beyond it `POST /api/rooms` answers 429.
    pub max_rooms_per_creator: usize,
    /// The same for all callers other than admins together.
    pub max_rooms_by_others: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            create: RoomCreatePolicy::Admin,
            max_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_millis(1_000),
            max_rooms_per_creator: 50,
            max_rooms_by_others: 10_000,
        }
    }
}

/// `rooms.create`: who may create rooms over HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomCreatePolicy {
    /// Whoever passes the operator endpoints' guard: `Authorization: Bearer
    /// <http.admin_token>`, or, without an admin token, a plain loopback
    /// request.
    #[default]
    Admin,
    /// Also anyone with a JWT the node's `auth.jwt` keys verify
    /// (`Authorization: Bearer <jwt>`).
    SignedIn,
    /// Anyone who can reach the port.
    Anyone,
}

impl RoomCreatePolicy {
    /// The config value, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::SignedIn => "signed_in",
            Self::Anyone => "anyone",
        }
    }
}

/// `[doors]`: where the doors of older systems' clients are served. Each
/// door can have listeners of its own, where it owns the whole path space
/// (as the old server did, so its clients need only a new host name), and/or
/// a path prefix on the main listener (`server.listen`). Everything is off
/// by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DoorsConfig {
    /// The room signaling server's clients (HTTP sign-in and rooms, and a
    /// WebSocket at any path).
    pub room_signaling: RoomSignalingDoor,
    /// The dashboard server's clients (WebSocket at `/ws/`, `/api/config`,
    /// `/health`).
    pub dashboard: DashboardDoor,
    /// The game P2P coordinator's clients (REST under `/api/` and
    /// `/api/v1/`, `/`, `/health`).
    pub coordinator: CoordinatorDoor,
}

/// `[doors.room_signaling]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSignalingDoor {
    /// Its HTTP listener (the old server's was port 8001); empty: none.
    #[serde(with = "opt_addr")]
    pub http_listen: Option<SocketAddr>,
    /// Its WebSocket listener, any path (the old server's was port 8080);
    /// empty: none.
    #[serde(with = "opt_addr")]
    pub ws_listen: Option<SocketAddr>,
    /// Also (or only) serve it on the main listener under this prefix
    /// (`/signaling`: HTTP at `/signaling/create-room`, ..., the WebSocket at
    /// `/signaling/ws`); empty: not on the main listener.
    pub prefix: String,
    /// Lifetime of a room made by `/create-room`, in seconds (the old
    /// server's was two hours). A `register` into a room past it is refused
    /// with `Room expired`.
    pub room_ttl_s: u64,
}

impl Default for RoomSignalingDoor {
    fn default() -> Self {
        Self {
            http_listen: None,
            ws_listen: None,
            prefix: String::new(),
            room_ttl_s: 7200,
        }
    }
}

impl RoomSignalingDoor {
    /// True when the door is served anywhere (a listener or a prefix).
    pub fn is_served(&self) -> bool {
        self.http_listen.is_some() || self.ws_listen.is_some() || !self.prefix.is_empty()
    }
}

/// `[doors.dashboard]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardDoor {
    /// Its listener (the old server's was port 3001); empty: none.
    #[serde(with = "opt_addr")]
    pub listen: Option<SocketAddr>,
    /// Also (or only) serve it on the main listener under this prefix
    /// (`/dashboard`: the WebSocket at `/dashboard/ws/`, `/dashboard/api/config`,
    /// `/dashboard/health`); empty: not on the main listener.
    pub prefix: String,
    /// The `WEBSOCKET_URL` that `/api/config` gives the browser (the
    /// address clients reach the door at, through whatever proxy); empty:
    /// built from the request's `Host`, the prefix and `/ws/`.
    pub websocket_url: String,
    /// The `STUN_SERVERS` that `/api/config` gives the browser
    /// (`stun:host:port` URLs); empty: `null`, as the old server without
    /// its `STUN_SERVERS` variable.
    pub stun_servers: Vec<String>,
    /// How often every subscriber of `webrtc-dashboard-rooms` gets the room
    /// list while rooms exist (the old server: 5 s).
    #[serde(rename = "room_list_interval_ms", with = "millis")]
    pub room_list_interval: Duration,
    /// Most channels one socket may subscribe to (`too-many-channels`).
    pub max_channels_per_socket: usize,
    /// Most rooms in the registry (`registry-full`).
    pub max_rooms: usize,
    /// Most participants in one room (`room-full`).
    pub max_participants: usize,
    /// Longest text field of a room or a participant (id, name,
    /// description, host, hostId, createdAt, userId, userName), in bytes.
    pub max_field_bytes: usize,
    /// Largest room list (its `rooms` array as JSON), in bytes: it goes to
    /// every subscriber on each change and every `room_list_interval_ms`
    /// (`registry-full` beyond it).
    pub max_list_bytes: usize,
    /// Frames one socket may send per second, on average; frames beyond
    /// it (and `burst`) are dropped with `rate-limited`.
    pub messages_per_second: u32,
    /// Frames one socket may send at once above `messages_per_second`; a
    /// socket that has a further `burst` frames dropped in a row is closed
    /// with 1008.
    pub burst: u32,
}

impl Default for DashboardDoor {
    fn default() -> Self {
        Self {
            listen: None,
            prefix: String::new(),
            websocket_url: String::new(),
            stun_servers: Vec::new(),
            room_list_interval: Duration::from_millis(5_000),
            max_channels_per_socket: 16,
            max_rooms: 1_000,
            max_participants: 100,
            max_field_bytes: 256,
            max_list_bytes: 64 * 1024,
            messages_per_second: 50,
            burst: 200,
        }
    }
}

impl DashboardDoor {
    /// True when the door is served somewhere (its own listener or a prefix).
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || !self.prefix.is_empty()
    }
}

/// Paths of the main listener a door prefix must not take (or shadow).
const RESERVED_PREFIXES: [&str; 9] = [
    "/ws", "/api", "/metrics", "/health", "/healthz", "/readyz", "/debug", "/worker", "/admin",
];

/// Checks a door's `prefix`: empty, or `/` and one or more path segments of
/// `[A-Za-z0-9._~-]`, no trailing `/`, not one of the main listener's own
/// paths.
fn check_prefix(key: &str, prefix: &str, errs: &mut Vec<String>) {
    if prefix.is_empty() {
        return;
    }
    let segments_ok = prefix.starts_with('/')
        && prefix[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
        });
    if !segments_ok {
        errs.push(format!(
            "{key}: `{prefix}` must be `/` and path segments of letters, digits, `.`, `_`, `~`, `-` (no trailing `/`), or empty"
        ));
        return;
    }
    let first = prefix.split('/').nth(1).unwrap_or_default();
    if RESERVED_PREFIXES.contains(&format!("/{first}").as_str()) {
        errs.push(format!(
            "{key}: `{prefix}` is under a path of the main listener ({})",
            RESERVED_PREFIXES.join(", ")
        ));
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `switchboard=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://`, `rediss://`, `redis-sentinel://` or `redis-cluster://`
    /// (`rediss-cluster://`) URL; empty runs the embedded single node.
    pub redis_url: Secret,
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    pub key_prefix: String,
    /// Timeout of every Redis command; a hung Redis becomes an error, not a stuck task.
    #[serde(rename = "command_timeout_ms", with = "millis")]
    pub command_timeout: Duration,
    /// How often a node refreshes its heartbeat, probes pub/sub and looks for dead nodes.
    #[serde(rename = "heartbeat_ms", with = "millis")]
    pub heartbeat: Duration,
    /// Lifetime of a node's heartbeat key: a node silent this long is dead, and
    /// its peers leave their rooms (reason `timeout`) within about `node_ttl_ms + heartbeat_ms`.
    #[serde(rename = "node_ttl_ms", with = "millis")]
    pub node_ttl: Duration,
    /// Readiness fails when no pub/sub probe came back within this window.
    #[serde(rename = "probe_window_ms", with = "millis")]
    pub probe_window: Duration,
    /// Redis connections for commands and publishing.
    pub pool_size: usize,
    /// Pub/sub messages buffered between the subscriber connection and the node;
    /// overflow is counted in `switchboard_bus_lagged_total`.
    pub subscriber_buffer: usize,
    /// A cached `peer → node` route unused this long is dropped (a stale
    /// route is corrected by a bounce, not by expiry; this only bounds memory).
    #[serde(rename = "route_idle_ms", with = "millis")]
    pub route_idle: Duration,
    /// Most cached routes (0 disables the cache: every remote signal looks
    /// its target up in Redis).
    pub route_cache_max: usize,
    /// Most events waiting to be published to one other node; past that,
    /// signals to that node get `cluster-unavailable`.
    pub outbox_max: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: Secret::default(),
            key_prefix: "switchboard".into(),
            command_timeout: Duration::from_millis(2_000),
            heartbeat: Duration::from_millis(1_000),
            node_ttl: Duration::from_millis(5_000),
            probe_window: Duration::from_millis(3_000),
            pool_size: 4,
            subscriber_buffer: 8_192,
            route_idle: Duration::from_millis(60_000),
            route_cache_max: 100_000,
            outbox_max: 65_536,
        }
    }
}

impl Config {
    /// A copy with every secret replaced, for logging.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        c.auth.jwt.hs256_secret = c.auth.jwt.hs256_secret.redact();
        c.auth.signin.private_key = c.auth.signin.private_key.redact();
        c.http.admin_token = c.http.admin_token.redact();
        c.cluster.redis_url = c.cluster.redis_url.redact();
        c.turn.secret = c.turn.secret.redact();
        c.publish.api_key = c.publish.api_key.redact();
        c.doors.coordinator.api_key = c.doors.coordinator.api_key.redact();
        c
    }

    /// `[turn]`: URL schemes, a secret with relays, a lifetime in bounds.
    fn validate_turn(&self, errs: &mut Vec<String>) {
        let t = &self.turn;
        for (key, urls, schemes) in [
            ("turn.urls", &t.urls, &["turn:", "turns:"][..]),
            ("turn.stun_urls", &t.stun_urls, &["stun:", "stuns:"][..]),
        ] {
            for u in urls {
                if !schemes.iter().any(|s| u.starts_with(s)) || u.chars().any(char::is_whitespace) {
                    errs.push(format!(
                        "{key}: `{u}` is not a {} URL",
                        schemes.join(" or ")
                    ));
                }
            }
        }
        if !t.urls.is_empty() && t.secret.expose().len() < 16 {
            errs.push(
                "turn.secret: TURN URLs need the relays' shared secret (coturn static-auth-secret), at least 16 bytes"
                    .into(),
            );
        }
        if !(60..=604_800).contains(&t.ttl_s) {
            errs.push(format!("turn.ttl_s: {} is outside 60..=604800", t.ttl_s));
        }
    }

    /// Whether peers without a token are accepted, and why (see
    /// [`AnonymousPolicy`]). With a JWT key configured nobody is anonymous.
    pub fn anonymous_mode(&self) -> AnonymousMode {
        self.anonymous_mode_at(self.server.listen)
    }

    /// [`Self::anonymous_mode`] for a listener bound to `listen` (a door's
    /// own listener is loopback or not by its own address).
    pub fn anonymous_mode_at(&self, listen: SocketAddr) -> AnonymousMode {
        let has_key =
            !self.auth.jwt.hs256_secret.is_empty() || !self.auth.jwt.public_keys.is_empty();
        if has_key {
            return AnonymousMode::TokenRequired;
        }
        let loopback = listen.ip().to_canonical().is_loopback();
        match self.auth.anonymous {
            AnonymousPolicy::Allow => AnonymousMode::Allowed,
            AnonymousPolicy::Loopback if loopback => AnonymousMode::LoopbackOnly,
            AnonymousPolicy::Loopback => AnonymousMode::RefusedNotLoopback,
            AnonymousPolicy::Deny => AnonymousMode::Refused,
        }
    }

    /// The doors' prefixes are well formed and distinct, and no two
    /// listeners (the main one, the doors', STUN's are UDP) share an address.
    fn validate_doors(&self, errs: &mut Vec<String>) {
        let d = &self.doors;
        check_prefix(
            "doors.room_signaling.prefix",
            &d.room_signaling.prefix,
            errs,
        );
        check_prefix("doors.dashboard.prefix", &d.dashboard.prefix, errs);
        let (a, b) = (&d.room_signaling.prefix, &d.dashboard.prefix);
        if !a.is_empty() && !b.is_empty() {
            let nested = |x: &str, y: &str| x == y || y.starts_with(&format!("{x}/"));
            if nested(a, b) || nested(b, a) {
                errs.push(format!(
                    "doors.dashboard.prefix: `{b}` overlaps doors.room_signaling.prefix `{a}`"
                ));
            }
        }
        if d.room_signaling.room_ttl_s == 0 {
            errs.push("doors.room_signaling.room_ttl_s: must be greater than 0".into());
        }
        let dash = &d.dashboard;
        for (k, v) in [
            (
                "doors.dashboard.max_channels_per_socket",
                dash.max_channels_per_socket as u64,
            ),
            ("doors.dashboard.max_rooms", dash.max_rooms as u64),
            (
                "doors.dashboard.max_participants",
                dash.max_participants as u64,
            ),
            (
                "doors.dashboard.max_field_bytes",
                dash.max_field_bytes as u64,
            ),
            ("doors.dashboard.max_list_bytes", dash.max_list_bytes as u64),
            (
                "doors.dashboard.messages_per_second",
                u64::from(dash.messages_per_second),
            ),
            ("doors.dashboard.burst", u64::from(dash.burst)),
            (
                "doors.dashboard.room_list_interval_ms",
                dash.room_list_interval.as_millis() as u64,
            ),
        ] {
            if v == 0 {
                errs.push(format!("{k}: must be greater than 0"));
            }
        }
        let url = &dash.websocket_url;
        if !url.is_empty()
            && (!(url.starts_with("ws://") || url.starts_with("wss://"))
                || url.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            errs.push(format!(
                "doors.dashboard.websocket_url: `{url}` must be a ws:// or wss:// URL, or empty"
            ));
        }
        for (i, stun) in dash.stun_servers.iter().enumerate() {
            if !(stun.starts_with("stun:")
                || stun.starts_with("turn:")
                || stun.starts_with("turns:"))
                || stun.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                errs.push(format!(
                    "doors.dashboard.stun_servers[{i}]: `{stun}` must be a stun:, turn: or turns: URL"
                ));
            }
        }
        let mut seen: Vec<(&str, SocketAddr)> = vec![("server.listen", self.server.listen)];
        for (key, addr) in self.door_listeners() {
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr && addr.port() != 0) {
                errs.push(format!("{key}: {addr} is also {other}"));
            }
            seen.push((key, addr));
        }
    }

    /// Sign-in has a key to sign with, a bounded token lifetime and a
    /// usable rate limit.
    fn validate_signin(&self, errs: &mut Vec<String>) {
        let si = &self.auth.signin;
        if si.enabled && si.private_key.is_empty() && self.auth.jwt.hs256_secret.is_empty() {
            errs.push(
                "auth.signin.enabled: sign-in needs a key to sign with: auth.jwt.hs256_secret, or auth.signin.private_key (with its public key in auth.jwt.public_keys)"
                    .into(),
            );
        }
        if !(1..=MAX_SIGNIN_TTL_S).contains(&si.token_ttl_s) {
            errs.push(format!(
                "auth.signin.token_ttl_s: must be between 1 and {MAX_SIGNIN_TTL_S} (a week)"
            ));
        }
        if si.rate_per_minute > 0 && si.burst == 0 {
            errs.push(
                "auth.signin.burst: must be greater than 0 while auth.signin.rate_per_minute is set (0 there disables the limit)"
                    .into(),
            );
        }
    }

    /// The doors' own listeners that are configured, by config key.
    pub fn door_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let d = &self.doors;
        [
            (
                "doors.room_signaling.http_listen",
                d.room_signaling.http_listen,
            ),
            ("doors.room_signaling.ws_listen", d.room_signaling.ws_listen),
            ("doors.dashboard.listen", d.dashboard.listen),
            ("doors.coordinator.listen", d.coordinator.listen),
        ]
        .into_iter()
        .filter_map(|(k, a)| a.map(|a| (k, a)))
        .collect()
    }

    /// Semantic checks serde cannot express; one message per bad key.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        self.validate_turn(&mut errs);
        if self.resume.enabled {
            let r = &self.resume;
            if r.window.is_zero() || r.window > Duration::from_secs(3600) {
                errs.push("resume.window_ms must be between 1 and 3600000".into());
            }
            if r.replay_max == 0 || r.replay_max > 65_536 {
                errs.push("resume.replay_max must be between 1 and 65536".into());
            }
            if r.handover_timeout.is_zero() || r.handover_timeout > Duration::from_secs(60) {
                errs.push("resume.handover_timeout_ms must be between 1 and 60000".into());
            }
        }
        if let Some(Err(e)) = self.publish.poll_target() {
            errs.push(e);
        }
        if self.publish.poll_interval < Duration::from_millis(100) {
            errs.push("publish.poll_interval_ms: must be at least 100".into());
        }
        if self.server.node_id.chars().any(char::is_control) {
            // It ends a field in the store's member values (`store::redis`).
            errs.push("server.node_id: must not contain control characters".into());
        }
        if self.server.worker_threads > MAX_WORKER_THREADS {
            errs.push(format!(
                "server.worker_threads: {} is more than {MAX_WORKER_THREADS} (0: one per CPU)",
                self.server.worker_threads
            ));
        }
        let srv = &self.server;
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&srv.max_header_bytes) {
            errs.push(format!(
                "server.max_header_bytes: {} is outside {MIN_HEADER_BYTES}..={MAX_HEADER_BYTES}",
                srv.max_header_bytes
            ));
        }
        if srv.max_pending_per_ip > srv.max_pending {
            errs.push(format!(
                "server.max_pending_per_ip: {} is more than server.max_pending ({})",
                srv.max_pending_per_ip, srv.max_pending
            ));
        }
        for (k, v) in [
            ("server.max_pending", srv.max_pending as u64),
            ("server.max_pending_per_ip", srv.max_pending_per_ip as u64),
            ("server.reserved_fds", srv.reserved_fds as u64),
        ] {
            if v == 0 {
                errs.push(format!("{k}: must be greater than 0"));
            }
        }
        let positive = [
            ("limits.max_meta_bytes", self.limits.max_meta_bytes as u64),
            ("cluster.pool_size", self.cluster.pool_size as u64),
            ("cluster.outbox_max", self.cluster.outbox_max as u64),
            (
                "cluster.subscriber_buffer",
                self.cluster.subscriber_buffer as u64,
            ),
            ("server.max_connections", self.server.max_connections as u64),
            ("limits.max_frame_bytes", self.limits.max_frame_bytes as u64),
            (
                "limits.max_rooms_per_peer",
                self.limits.max_rooms_per_peer as u64,
            ),
            (
                "limits.max_peers_per_room",
                self.limits.max_peers_per_room as u64,
            ),
            ("limits.outbound_queue", self.limits.outbound_queue as u64),
            (
                "rooms.max_rooms_per_creator",
                self.rooms.max_rooms_per_creator as u64,
            ),
            (
                "rooms.max_rooms_by_others",
                self.rooms.max_rooms_by_others as u64,
            ),
            ("limits.max_name_bytes", self.limits.max_name_bytes as u64),
            ("limits.max_kind_bytes", self.limits.max_kind_bytes as u64),
        ];
        for (k, d) in [
            ("server.header_read_timeout_ms", srv.header_read_timeout),
            ("server.request_timeout_ms", srv.request_timeout),
            ("cluster.command_timeout_ms", self.cluster.command_timeout),
            ("cluster.heartbeat_ms", self.cluster.heartbeat),
            ("cluster.node_ttl_ms", self.cluster.node_ttl),
            ("cluster.probe_window_ms", self.cluster.probe_window),
            ("cluster.route_idle_ms", self.cluster.route_idle),
            ("limits.hello_timeout_ms", self.limits.hello_timeout),
            (
                "limits.heartbeat_interval_ms",
                self.limits.heartbeat_interval,
            ),
            ("limits.heartbeat_timeout_ms", self.limits.heartbeat_timeout),
            ("rooms.sweep_interval_ms", self.rooms.sweep_interval),
            ("limits.close_timeout_ms", self.limits.close_timeout),
        ] {
            if d.is_zero() {
                errs.push(format!("{k}: must be greater than 0"));
            }
        }
        for (k, v) in positive {
            if v == 0 {
                errs.push(format!("{k}: must be greater than 0"));
            }
        }
        if self.rooms.max_ttl < Duration::from_secs(1) {
            errs.push(
                "rooms.max_ttl_ms: must be at least 1000 (a lifetime is whole seconds)".into(),
            );
        }
        if self.limits.max_frame_bytes < 1024 {
            errs.push("limits.max_frame_bytes: must be at least 1024".into());
        }
        if self.limits.outbound_queue_bytes < 1024 {
            errs.push("limits.outbound_queue_bytes: must be at least 1024".into());
        }
        if self.limits.max_write_buffer_bytes < 1024 {
            errs.push("limits.max_write_buffer_bytes: must be at least 1024".into());
        }
        if !(1..=MAX_NESTING_DEPTH).contains(&self.limits.max_nesting_depth) {
            errs.push(format!(
                "limits.max_nesting_depth: must be between 1 and {MAX_NESTING_DEPTH}"
            ));
        }
        if self.limits.heartbeat_timeout <= self.limits.heartbeat_interval {
            errs.push(format!(
                "limits.heartbeat_timeout_ms: must be greater than limits.heartbeat_interval_ms ({})",
                self.limits.heartbeat_interval.as_millis()
            ));
        }
        self.validate_doors(&mut errs);
        self.doors.coordinator.validate(&mut errs);
        self.validate_signin(&mut errs);
        let url = self.cluster.redis_url.expose();
        if !url.is_empty()
            && ![
                "redis://",
                "rediss://",
                "redis-sentinel://",
                "rediss-sentinel://",
                "redis-cluster://",
                "rediss-cluster://",
            ]
            .iter()
            .any(|s| url.starts_with(s))
        {
            errs.push(
                "cluster.redis_url: must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://".into(),
            );
        }
        if is_cluster_url(url) && self.cluster.key_prefix.contains(['{', '}']) {
            // The prefix becomes the keys' hash tag `{<prefix>}`.
            errs.push(
                "cluster.key_prefix: must not contain `{` or `}` with a Redis Cluster URL (it becomes the keys' hash tag)".into(),
            );
        }
        if self.cluster.node_ttl <= self.cluster.heartbeat {
            errs.push(format!(
                "cluster.node_ttl_ms: must be greater than cluster.heartbeat_ms ({})",
                self.cluster.heartbeat.as_millis()
            ));
        }
        if !url.is_empty() && fred::types::config::Config::from_url(&fred_url(url)).is_err() {
            errs.push("cluster.redis_url: not a valid Redis URL".into());
        }
        if self.cluster.key_prefix.is_empty() {
            errs.push("cluster.key_prefix: must not be empty".into());
        }
        if self.stun.enabled && self.stun.rate_per_ip > 0 && self.stun.burst == 0 {
            errs.push(
                "stun.burst: must be greater than 0 while stun.rate_per_ip is set (0 there disables the limit)"
                    .into(),
            );
        }
        errs
    }
}

/// What [`Config::anonymous_mode`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousMode {
    /// A JWT key is configured: every peer needs a token.
    TokenRequired,
    /// `auth.anonymous = "allow"`.
    Allowed,
    /// `auth.anonymous = "loopback"` and `server.listen` is a loopback address.
    LoopbackOnly,
    /// `auth.anonymous = "loopback"`, but `server.listen` is not loopback.
    RefusedNotLoopback,
    /// `auth.anonymous = "deny"`.
    Refused,
}

impl AnonymousMode {
    /// True when a peer without a token is accepted.
    pub fn allows_anonymous(self) -> bool {
        matches!(self, Self::Allowed | Self::LoopbackOnly)
    }
}

/// Every problem found in a configuration, one line per bad key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Where configuration comes from; tests point these elsewhere instead of
/// touching the process environment.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The base file, read when it exists (`config/default.toml`).
    pub base_file: PathBuf,
    /// `--config FILE`, which must exist.
    pub file: Option<PathBuf>,
    /// Environment variable prefix (`SWITCHBOARD_`).
    pub env_prefix: String,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            base_file: PathBuf::from("config/default.toml"),
            file: None,
            env_prefix: "SWITCHBOARD_".into(),
        }
    }
}

/// Loads and validates the configuration from `sources`.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if sources.base_file.exists() {
        fig = fig.merge(Toml::file(&sources.base_file));
    }
    if let Some(file) = &sources.file {
        if !file.exists() {
            return Err(ConfigErrors(vec![format!(
                "--config: file `{}` does not exist",
                file.display()
            )]));
        }
        fig = fig.merge(Toml::file(file));
    }
    fig = fig.merge(Env::prefixed(&sources.env_prefix).split("__"));
    from_figment(&fig)
}

/// Loads from a TOML string over the defaults (for tests and `--check-config`).
pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
    from_figment(&Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)))
}

fn from_figment(fig: &Figment) -> Result<Config, ConfigErrors> {
    match fig.extract::<Config>() {
        Ok(mut cfg) => {
            let mut errs = cfg.validate();
            errs.extend(cfg.auth.jwt.load_keys());
            let jwt = cfg.auth.jwt.clone();
            errs.extend(cfg.auth.signin.load_key(&jwt));
            if errs.is_empty() {
                Ok(cfg)
            } else {
                Err(ConfigErrors(errs))
            }
        }
        Err(first) => {
            // serde stops at the first problem; find every bad key by checking
            // each supplied value on its own against the defaults.
            let merged: Result<Value, _> = fig.extract::<Value>();
            let errs = match merged {
                Ok(merged) => per_key_errors(&merged),
                Err(_) => Vec::new(),
            };
            if errs.is_empty() {
                Err(ConfigErrors(vec![first.to_string()]))
            } else {
                Err(ConfigErrors(errs))
            }
        }
    }
}

fn per_key_errors(merged: &Value) -> Vec<String> {
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    let mut leaves = Vec::new();
    collect_leaves(merged, &defaults, String::new(), &mut leaves);
    let mut errs = Vec::new();
    // Every well-typed value, over the defaults: checked together below.
    let mut well_typed = defaults.clone();
    for (path, value, known) in leaves {
        if !known {
            errs.push(format!("{path}: unknown key"));
            continue;
        }
        let mut probe = defaults.clone();
        set_path(&mut probe, &path, value.clone());
        if let Err(e) = serde_json::from_value::<Config>(probe) {
            let msg = e.to_string();
            errs.push(format!("{path}: {msg} (got {value})"));
        } else {
            set_path(&mut well_typed, &path, value);
        }
    }
    // A well-typed value can still be invalid (`server.listen = "nowhere"`):
    // report those too, so every bad key is named at once.
    if let Ok(mut cfg) = serde_json::from_value::<Config>(well_typed) {
        errs.extend(cfg.validate());
        errs.extend(cfg.auth.jwt.load_keys());
        let jwt = cfg.auth.jwt.clone();
        errs.extend(cfg.auth.signin.load_key(&jwt));
    }
    errs
}

fn collect_leaves(
    v: &Value,
    defaults: &Value,
    prefix: String,
    out: &mut Vec<(String, Value, bool)>,
) {
    match (v, defaults) {
        (Value::Object(map), Value::Object(dmap)) => {
            for (k, child) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match dmap.get(k) {
                    Some(d) => collect_leaves(child, d, path, out),
                    None => out.push((path, child.clone(), false)),
                }
            }
        }
        _ => out.push((prefix, v.clone(), true)),
    }
}

fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let Value::Object(map) = cur else { return };
        if i + 1 == parts.len() {
            map.insert((*p).to_string(), value);
            return;
        }
        cur = map
            .entry((*p).to_string())
            .or_insert(Value::Object(Default::default()));
    }
}

/// Reads a PEM key given either as PEM text or as a path to a PEM file.
pub fn pem_or_file(s: &str) -> std::io::Result<String> {
    if s.trim_start().starts_with("-----BEGIN") {
        Ok(s.to_string())
    } else {
        std::fs::read_to_string(Path::new(s))
    }
}

/// Whether `url` names a Redis Cluster (`redis-cluster://`, `rediss-cluster://`).
pub fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
}

/// A cluster URL in fred's form: `redis-cluster://a:1,b:2/?x` (every node
/// in the authority, comma-separated) becomes `redis-cluster://a:1?node=b:2&x`;
/// any other URL is returned as it is.
pub fn fred_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    if !is_cluster_url(url) {
        return url.to_string();
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let mut hosts = hosts.split(',').filter(|h| !h.is_empty());
    let first = hosts.next().unwrap_or_default();
    let extra: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
    if extra.is_empty() {
        return url.to_string();
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, q),
        None => (tail, ""),
    };
    let mut params = extra.join("&");
    if !query.is_empty() {
        params.push('&');
        params.push_str(query);
    }
    format!("{scheme}://{userinfo}{first}{path}?{params}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_toml_matches_built_in_defaults() {
        let text = include_str!("../config/default.toml");
        assert_eq!(from_toml_str(text).unwrap(), Config::default());
    }

    #[test]
    fn door_prefixes_and_listeners_are_checked() {
        let bad = from_toml_str(
            "[doors.room_signaling]\nprefix = \"/api/x\"\nhttp_listen = \"127.0.0.1:9000\"\n\
             ws_listen = \"127.0.0.1:9000\"\n[doors.dashboard]\nprefix = \"dash/\"\n",
        )
        .unwrap_err();
        assert_eq!(
            bad.0,
            vec![
                "doors.room_signaling.prefix: `/api/x` is under a path of the main listener \
                 (/ws, /api, /metrics, /health, /healthz, /readyz, /debug, /worker, /admin)"
                    .to_string(),
                "doors.dashboard.prefix: `dash/` must be `/` and path segments of letters, \
                 digits, `.`, `_`, `~`, `-` (no trailing `/`), or empty"
                    .to_string(),
                "doors.room_signaling.ws_listen: 127.0.0.1:9000 is also doors.room_signaling.http_listen"
                    .to_string(),
            ]
        );
        let overlap = from_toml_str(
            "[doors.room_signaling]\nprefix = \"/legacy\"\n[doors.dashboard]\nprefix = \"/legacy/dash\"\n",
        )
        .unwrap_err();
        assert_eq!(
            overlap.0,
            vec!["doors.dashboard.prefix: `/legacy/dash` overlaps doors.room_signaling.prefix `/legacy`".to_string()]
        );
        let good = from_toml_str(
            "[doors.room_signaling]\nprefix = \"/signaling\"\nhttp_listen = \"127.0.0.1:0\"\n\
             ws_listen = \"127.0.0.1:0\"\n[doors.dashboard]\nprefix = \"/x/dashboard-1.0\"\nlisten = \"[::1]:3001\"\n",
        )
        .unwrap();
        assert_eq!(good.validate(), Vec::<String>::new());
        assert_eq!(good.door_listeners().len(), 3);
        assert!(from_toml_str("[doors.dashboard]\nlisten = \"3001\"\n").is_err());
    }

    #[test]
    fn every_bad_key_is_reported() {
        let err = from_toml_str(
            "[server]\nlisten = 5\nbogus = 1\n[limits]\nmax_frame_bytes = \"big\"\n[log]\nformat = \"xml\"\n[nope]\nx = 1\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "server.listen",
            "server.bogus",
            "limits.max_frame_bytes",
            "log.format",
            "nope",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(key)),
                "{key} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn semantic_errors_are_reported_alongside_type_errors() {
        let err =
            from_toml_str("[server]\nlisten = \"nowhere\"\n[limits]\nmax_frame_bytes = \"big\"\n")
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.lines().any(|l| l.starts_with("server.listen")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("limits.max_frame_bytes")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn rooms_keys_are_checked() {
        let ok = from_toml_str("[rooms]\ncreate = \"signed_in\"\nmax_ttl_ms = 7200000\n").unwrap();
        assert_eq!(ok.rooms.create, RoomCreatePolicy::SignedIn);
        assert_eq!(ok.rooms.max_ttl, Duration::from_secs(7200));
        let err = from_toml_str(
            "[rooms]\ncreate = \"everyone\"\nmax_ttl_ms = 999\nsweep_interval_ms = 0\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "rooms.create",
            "rooms.max_ttl_ms",
            "rooms.sweep_interval_ms",
        ] {
            assert!(text_has(&err, key), "{key} missing in:\n{err}");
        }
    }

    fn text_has(text: &str, key: &str) -> bool {
        text.lines().any(|l| l.starts_with(key))
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = from_toml_str("[server]\nlisten = \"nowhere\"\n[limits]\noutbound_queue = 0\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server.listen"), "{text}");
        assert!(text.contains("limits.outbound_queue"), "{text}");
    }

    #[test]
    fn anonymous_peers_depend_on_key_policy_and_listen_address() {
        use AnonymousMode::*;
        let mode = |toml: &str| from_toml_str(toml).unwrap().anonymous_mode();
        assert_eq!(mode(""), LoopbackOnly);
        assert_eq!(mode("[server]\nlisten = \"[::1]:80\"\n"), LoopbackOnly);
        assert_eq!(mode("[server]\nlisten = \"127.9.9.9:80\"\n"), LoopbackOnly);
        assert_eq!(
            mode("[server]\nlisten = \"0.0.0.0:80\"\n"),
            RefusedNotLoopback
        );
        assert_eq!(mode("[server]\nlisten = \"[::]:80\"\n"), RefusedNotLoopback);
        assert_eq!(
            mode("[server]\nlisten = \"0.0.0.0:80\"\n[auth]\nanonymous = \"allow\"\n"),
            Allowed
        );
        assert_eq!(mode("[auth]\nanonymous = \"deny\"\n"), Refused);
        assert_eq!(
            mode("[server]\nlisten = \"0.0.0.0:80\"\n[auth.jwt]\nhs256_secret = \"k\"\n"),
            TokenRequired
        );
        assert!(!Refused.allows_anonymous() && !TokenRequired.allows_anonymous());
        let err = from_toml_str("[auth]\nanonymous = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().starts_with("auth.anonymous"), "{err}");
        let err = from_toml_str("[http]\nclient_ip_header = \"via\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with("http.client_ip_header"),
            "{err}"
        );
        let err = from_toml_str("[stun]\nburst = 0\n").unwrap_err();
        assert!(err.to_string().starts_with("stun.burst"), "{err}");
        assert!(from_toml_str("[stun]\nrate_per_ip = 0\nburst = 0\n").is_ok());
    }

    #[test]
    fn node_ids_with_control_characters_are_refused() {
        let err = from_toml_str("[server]\nnode_id = \"a\\nb\"\n").unwrap_err();
        assert!(err.to_string().contains("server.node_id"), "{err}");
        assert!(from_toml_str("[server]\nnode_id = \"node 1\"\n").is_ok());
    }

    #[test]
    fn http_bounds_are_validated() {
        let err = from_toml_str(
            "[server]\nmax_header_bytes = 4096\nmax_pending = 10\nmax_pending_per_ip = 11\n\
             header_read_timeout_ms = 0\nrequest_timeout_ms = 0\nreserved_fds = 0\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "server.max_header_bytes: 4096 is outside 8192..=1048576",
            "server.max_pending_per_ip: 11 is more than server.max_pending (10)",
            "server.header_read_timeout_ms: must be greater than 0",
            "server.request_timeout_ms: must be greater than 0",
            "server.reserved_fds: must be greater than 0",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
    }

    #[test]
    fn memory_and_depth_limits_are_checked() {
        let err = from_toml_str(
            "[limits]\noutbound_queue_bytes = 10\nmax_write_buffer_bytes = 0\nmax_nesting_depth = 101\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "limits.outbound_queue_bytes",
            "limits.max_write_buffer_bytes",
            "limits.max_nesting_depth",
        ] {
            assert!(err.lines().any(|l| l.starts_with(key)), "{key}: {err}");
        }
        assert!(from_toml_str("[limits]\nmax_nesting_depth = 0\n").is_err());
        let ok = from_toml_str("[limits]\nmax_nesting_depth = 100\noutbound_queue_bytes = 1024\n")
            .unwrap();
        assert_eq!(ok.limits.max_nesting_depth, 100);
    }

    #[test]
    fn redis_cluster_urls_are_accepted_with_a_prefix_that_can_be_a_hash_tag() {
        for url in [
            "redis-cluster://127.0.0.1:7000",
            "rediss-cluster://h:7000",
            "redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
            "redis-sentinel://h:26379?sentinelServiceName=mymaster",
        ] {
            assert!(
                from_toml_str(&format!("[cluster]\nredis_url = \"{url}\"\n")).is_ok(),
                "{url}"
            );
        }
        let err = from_toml_str(
            "[cluster]\nredis_url = \"redis-cluster://h:7000\"\nkey_prefix = \"a{b}\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("cluster.key_prefix: must not contain"),
            "{err}"
        );
        assert!(
            from_toml_str("[cluster]\nredis_url = \"redis://h\"\nkey_prefix = \"a{b}\"\n").is_ok()
        );
        let err = from_toml_str("[cluster]\nredis_url = \"cluster://h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cluster.redis_url: must start with"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.auth.jwt.hs256_secret = Secret::new("hunter2");
        let shown = format!("{:?} {}", c, serde_json::to_string(&c.redacted()).unwrap());
        assert!(!shown.contains("hunter2"));
    }
}

/// `[doors.coordinator]`: the game P2P coordinator's REST API
/// (docs/DOORS.md, "Coordinator").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorDoor {
    /// Its own listener (the old service's port was 8001), where it owns
    /// `/`, `/health`, `/api/...` and `/api/v1/...`; empty: none.
    #[serde(with = "opt_addr")]
    pub listen: Option<SocketAddr>,
    /// Also serve its `/api/...` and `/api/v1/...` paths on the main
    /// listener (whose `/` and `/health` belong to the node).
    pub on_main: bool,
    /// Signaling: an `offer`, `answer` or `ice-candidate` reaches only a
    /// peer that shares a signaling session with the sender (the old
    /// service let any connected peer id be targeted); `false` restores that.
    pub shared_session_only: bool,
    /// The v1 `X-API-Key` check: every path but its exemptions needs this
    /// value in `api_key_header`; empty: no check (the old service's tests
    /// send no key, and v0 had none). Redacted in logs.
    pub api_key: Secret,
    /// The header the key comes in.
    pub api_key_header: String,
    /// A host without a heartbeat for this long is offline: skipped by
    /// selection and session checks at once, and marked offline by the
    /// background work.
    pub host_offline_after_s: u64,
    /// How often the node holding the coordinator's lease checks sessions'
    /// hosts (the old service: 30 s).
    #[serde(rename = "health_interval_ms", with = "millis")]
    pub health_interval: Duration,
    /// How often it fails stale sessions (the old service: 5 min).
    #[serde(rename = "cleanup_interval_ms", with = "millis")]
    pub cleanup_interval: Duration,
    /// A pending or active session unchanged for this long is stale (the
    /// old service: 30 min).
    pub session_timeout_s: u64,
    /// How often every node asks for the coordinator's lease; the lease
    /// lives three of these, so a dead holder is replaced within that.
    #[serde(rename = "lease_tick_ms", with = "millis")]
    pub lease_tick: Duration,
    /// Lifetime of the access tokens `/api/v1/auth/token` issues (the old
    /// service: 3600 s); refresh tokens live 7 days.
    pub token_ttl_s: u64,
    /// Zones that exist from the start (created when absent, never
    /// overwritten, so API changes survive a restart).
    pub zones: Vec<CoordinatorZone>,
}

impl Default for CoordinatorDoor {
    fn default() -> Self {
        Self {
            listen: None,
            on_main: false,
            shared_session_only: true,
            api_key: Secret::default(),
            api_key_header: "X-API-Key".into(),
            host_offline_after_s: 60,
            health_interval: Duration::from_secs(30),
            cleanup_interval: Duration::from_secs(300),
            session_timeout_s: 1800,
            lease_tick: Duration::from_secs(2),
            token_ttl_s: 3600,
            zones: Vec::new(),
        }
    }
}

/// A zone declared in `[[doors.coordinator.zones]]`: the fields of the old
/// service's `ZoneCreate`, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorZone {
    /// Its id (required).
    pub zone_id: String,
    /// Its name (defaults to the id).
    pub zone_name: String,
    /// Its display name (defaults to the name).
    pub zone_display_name: String,
    /// Its map (defaults to the id).
    pub map_name: String,
    /// Most players in a session of this zone.
    pub max_players: i64,
    /// Echoed.
    pub recommended_players: i64,
    /// Sessions may be created in it.
    pub p2p_enabled: bool,
    /// 1..=10, the listing order.
    pub p2p_priority: i64,
    /// Echoed.
    pub fallback_enabled: bool,
    /// 0..=10: hosts below ten times this score are refused.
    pub min_host_quality_score: f64,
    /// Hosts with less network speed are refused.
    pub min_bandwidth_mbps: i64,
    /// Hosts with more latency are refused.
    pub max_latency_ms: i64,
    /// Echoed.
    pub description: Option<String>,
}

impl Default for CoordinatorZone {
    fn default() -> Self {
        Self {
            zone_id: String::new(),
            zone_name: String::new(),
            zone_display_name: String::new(),
            map_name: String::new(),
            max_players: 100,
            recommended_players: 50,
            p2p_enabled: true,
            p2p_priority: 1,
            fallback_enabled: true,
            min_host_quality_score: 7.0,
            min_bandwidth_mbps: 100,
            max_latency_ms: 100,
            description: None,
        }
    }
}

impl CoordinatorDoor {
    /// True when the door is served somewhere.
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.on_main
    }

    /// Semantic checks of `[doors.coordinator]`.
    fn validate(&self, errs: &mut Vec<String>) {
        let k = "doors.coordinator";
        if self.api_key_header.is_empty()
            || !self
                .api_key_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errs.push(format!(
                "{k}.api_key_header: `{}` must be a header name (letters, digits, `-`, `_`)",
                self.api_key_header
            ));
        }
        for (key, v) in [
            ("host_offline_after_s", self.host_offline_after_s),
            ("session_timeout_s", self.session_timeout_s),
            ("token_ttl_s", self.token_ttl_s),
            (
                "health_interval_ms",
                self.health_interval.as_millis() as u64,
            ),
            (
                "cleanup_interval_ms",
                self.cleanup_interval.as_millis() as u64,
            ),
            ("lease_tick_ms", self.lease_tick.as_millis() as u64),
        ] {
            if v == 0 {
                errs.push(format!("{k}.{key}: must be greater than 0"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            let at = format!("{k}.zones[{i}]");
            if z.zone_id.is_empty() {
                errs.push(format!("{at}.zone_id: required"));
            } else if !seen.insert(z.zone_id.as_str()) {
                errs.push(format!("{at}.zone_id: `{}` is declared twice", z.zone_id));
            }
            if z.max_players < 1 {
                errs.push(format!("{at}.max_players: must be at least 1"));
            }
            if !(1..=10).contains(&z.p2p_priority) {
                errs.push(format!("{at}.p2p_priority: must be between 1 and 10"));
            }
            if !(0.0..=10.0).contains(&z.min_host_quality_score) {
                errs.push(format!(
                    "{at}.min_host_quality_score: must be between 0 and 10 (ten times it is the minimum 0-100 score)"
                ));
            }
        }
    }
}
