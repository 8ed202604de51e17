//! A STUN Binding responder (RFC 8489, which obsoletes RFC 5389): it tells a
//! UDP client the public address its datagram came from, and tells the broker
//! which signaling peer that was.
//!
//! # Why it is here
//!
//! A peer behind a NAT learns its server-reflexive address by sending a Binding
//! request to a STUN server. When the request carries a USERNAME that the
//! broker handed to one peer (its `stun_username`), the responder reports an
//! [`Observation`] `{ username, addr }` to a callback, so the broker learns the
//! peer's public UDP endpoint from the network rather than from the peer's own
//! claims. Requests without a USERNAME are answered too: anyone may learn their
//! own address, as from any public STUN server.
//!
//! # What is answered, and how
//!
//! - A *Binding request* (type `0x0001`, the magic cookie `0x2112A442`, a length
//!   that is a multiple of 4 and equal to the rest of the datagram, attributes
//!   that stay inside it) gets a *Binding success response* (`0x0101`) with the
//!   same transaction id and exactly one XOR-MAPPED-ADDRESS. Nothing else: no
//!   SOFTWARE, no MAPPED-ADDRESS, never an error response.
//! - FINGERPRINT: if the request ends in a FINGERPRINT, it must check out (else
//!   the datagram is dropped: telling STUN apart from other traffic on a shared
//!   port is what the attribute is for), and the response then ends in a
//!   FINGERPRINT of its own, as ICE agents expect. A request without one gets a
//!   response without one.
//! - USERNAME (`0x0006`) must be UTF-8 and shorter than 513 bytes (RFC 5389
//!   §15.3; RFC 8489 narrows it to 509 after OpaqueString, which we do not
//!   apply). An over-long or non-UTF-8 USERNAME makes the whole datagram
//!   malformed (dropped, counted): no honest client sends one, and dropping keeps
//!   the rule simple: an answered request with a USERNAME always yields an
//!   observation. An empty USERNAME is answered but observes nothing. Only the
//!   first USERNAME counts (RFC 8489 §14).
//! - There is no authentication: MESSAGE-INTEGRITY(-SHA256) is not checked, and
//!   attributes after it other than FINGERPRINT are ignored, as the RFC says.
//!   Unknown attributes, comprehension-required or not, are ignored rather than
//!   answered with a 420 error: a second kind of reply would be more surface for
//!   no gain, since every client only wants its address.
//! - Anything else (shorter than 20 bytes, top two type bits set, wrong cookie,
//!   bad length, an attribute running past the end, another method or class,
//!   responses and indications included) is dropped without a reply and counted
//!   in [`crate::metrics::STUN_MALFORMED`] by a bounded `reason`. No input can
//!   panic the parser: every read is bounds-checked (and fuzzed in the tests).
//!
//! # No amplification
//!
//! UDP source addresses can be forged, so any UDP responder is a potential
//! reflector. This one answers one datagram with at most one datagram, only to
//! its source, and the answer is built from the transaction id and the source
//! address alone, so its size is fixed: 32 bytes to an IPv4 source, 44 to an
//! IPv6 one, plus 8 when echoing a FINGERPRINT (which the request then carried
//! too). A response therefore never exceeds its request by more than the
//! XOR-MAPPED-ADDRESS attribute (12 bytes for IPv4, 24 for IPv6). The worst
//! ratio is for a bare 20-byte request: 32/20 = 1.6x over IPv4, 44/20 = 2.2x
//! over IPv6, an absolute gain of 12 or 24 bytes per datagram; a request
//! carrying a USERNAME of at least 8 bytes (20 over IPv6) gets a response no
//! larger than itself.
//! That is the unavoidable minimum for a Binding response, and far below the
//! factors that make DNS or NTP attractive reflectors.
//!
//! # Rate per source
//!
//! With a [`SourceLimit`] (`stun.rate_per_ip` per second after a burst of
//! `stun.burst`; the node always sets one unless the rate is 0), each source
//! gets at most `burst + rate x seconds` answers; datagrams above that are
//! dropped before they are parsed, unanswered, and counted in
//! [`crate::metrics::STUN_RATE_LIMITED`]. A source is an IPv4 address or an
//! IPv6 /64 (one subscriber's prefix: a host picks any address in it). That
//! bounds what a forged source address can aim at one victim, and what one
//! sender costs the node, while other sources are answered as before. The
//! limiter keeps a small state per source it saw; sources idle long enough
//! to be back at a full burst are forgotten every second, so its size follows
//! the recent number of sources, not every address ever seen.
//!
//! # Trust
//!
//! The observed address is the datagram's source. An off-path attacker can forge
//! it but never sees the answer, so an observation proves only that *someone who
//! knows the username* sent a datagram claiming that address. The username must
//! therefore be an unguessable secret given to one peer over its authenticated
//! signaling connection, and observations for unknown usernames must be ignored.
//!
//! # Sockets and families
//!
//! [`serve`] (or [`StunServer::run`]) takes one already-bound UDP socket, so
//! tests bind port 0 and the caller decides the families: spawn one server per
//! socket, or bind `[::]`, which on Linux is dual-stack unless
//! `net.ipv6.bindv6only=1`. IPv4 clients of a dual-stack socket appear as
//! `::ffff:a.b.c.d`; such sources are folded back to IPv4, both in the
//! XOR-MAPPED-ADDRESS (family `0x01`) and in the observation.
//!
//! The pure halves, [`parse_binding_request`], [`encode_binding_success`],
//! [`append_fingerprint`] and [`answer`], do no I/O and are what the unit tests,
//! the fuzz test and `benches/stun.rs` exercise.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN message header.
pub const HEADER_LEN: usize = 20;
/// USERNAME values longer than this are malformed ("less than 513 bytes").
pub const MAX_USERNAME_LEN: usize = 512;
/// Size of the receive buffer. A longer datagram is truncated by the kernel,
/// its length field then disagrees with what was read, and it is dropped as
/// malformed; honest Binding requests are far below this (a few dozen bytes).
pub const MAX_DATAGRAM: usize = 2048;
/// Largest response ever produced: header, IPv6 XOR-MAPPED-ADDRESS, FINGERPRINT.
pub const MAX_RESPONSE_LEN: usize = HEADER_LEN + 24 + 8;

/// The 96-bit transaction id a response must echo.
pub type TransactionId = [u8; 12];

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;
/// How long the loop pauses after a failed `recv_from`, so that a persistent
/// socket error cannot spin a core.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A well-formed Binding request, borrowed from the datagram it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Echoed in the response; how the client matches it to its request.
    pub txid: TransactionId,
    /// The first USERNAME attribute, if present and not empty: the key that
    /// links this UDP endpoint to a signaling peer.
    pub username: Option<&'a str>,
    /// Whether the request ended in a (valid) FINGERPRINT, in which case the
    /// response carries one too.
    pub fingerprint: bool,
}

/// Why a datagram was not answered. [`Malformed::reason`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Shorter than the 20-byte header.
    #[error("shorter than the 20-byte STUN header")]
    TooShort,
    /// The top two bits of the message type are not zero: not STUN.
    #[error("top two bits of the message type are set")]
    NotStun,
    /// Bytes 4..8 are not the magic cookie (also what RFC 3489 clients send).
    #[error("wrong magic cookie")]
    BadCookie,
    /// The length field is not a multiple of 4, or not the rest of the datagram.
    #[error("length field is not a multiple of 4 or not the datagram's length")]
    BadLength,
    /// An attribute header, value or padding runs past the end of the message.
    #[error("an attribute runs past the end of the message")]
    TruncatedAttribute,
    /// Valid STUN, but not a Binding request (another method, or a response or
    /// indication).
    #[error("not a Binding request")]
    NotBindingRequest,
    /// USERNAME longer than [`MAX_USERNAME_LEN`] bytes or not UTF-8.
    #[error("USERNAME too long or not UTF-8")]
    BadUsername,
    /// FINGERPRINT not 4 bytes, not the last attribute, or a CRC mismatch.
    #[error("FINGERPRINT misplaced, mis-sized or wrong")]
    BadFingerprint,
}

impl Malformed {
    /// A short, bounded label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::TooShort => "too_short",
            Malformed::NotStun => "not_stun",
            Malformed::BadCookie => "bad_cookie",
            Malformed::BadLength => "bad_length",
            Malformed::TruncatedAttribute => "truncated_attribute",
            Malformed::NotBindingRequest => "not_binding_request",
            Malformed::BadUsername => "bad_username",
            Malformed::BadFingerprint => "bad_fingerprint",
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses one datagram as a Binding request, checking everything listed in the
/// module docs. Borrows the USERNAME from `packet`; never panics.
pub fn parse_binding_request(packet: &[u8]) -> Result<Request<'_>, Malformed> {
    let Some((header, body)) = packet.split_first_chunk::<HEADER_LEN>() else {
        return Err(Malformed::TooShort);
    };
    let msg_type = u16::from_be_bytes([header[0], header[1]]);
    if msg_type & 0xC000 != 0 {
        return Err(Malformed::NotStun);
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
        return Err(Malformed::BadCookie);
    }
    if length % 4 != 0 || length != body.len() {
        return Err(Malformed::BadLength);
    }
    if msg_type != BINDING_REQUEST {
        return Err(Malformed::NotBindingRequest);
    }
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&header[8..20]);

    let mut request = Request {
        txid,
        username: None,
        fingerprint: false,
    };
    let mut seen_username = false;
    let mut after_integrity = false;
    let mut at = 0;
    while at < body.len() {
        if request.fingerprint {
            // Something follows FINGERPRINT, which must be last.
            return Err(Malformed::BadFingerprint);
        }
        let (Some(kind), Some(len)) = (be16(body, at), be16(body, at + 2)) else {
            return Err(Malformed::TruncatedAttribute);
        };
        let len = usize::from(len);
        let start = at + 4;
        let next = start + len.next_multiple_of(4);
        let (Some(value), true) = (body.get(start..start + len), next <= body.len()) else {
            return Err(Malformed::TruncatedAttribute);
        };
        match kind {
            ATTR_FINGERPRINT => {
                // The CRC covers everything before this attribute, with the
                // header's length already counting it (it is last).
                let crc = crc32(&packet[..HEADER_LEN + at]) ^ FINGERPRINT_XOR;
                if value != crc.to_be_bytes() {
                    return Err(Malformed::BadFingerprint);
                }
                request.fingerprint = true;
            }
            _ if after_integrity => {}
            ATTR_MESSAGE_INTEGRITY | ATTR_MESSAGE_INTEGRITY_SHA256 => after_integrity = true,
            ATTR_USERNAME if !seen_username => {
                seen_username = true;
                if len > MAX_USERNAME_LEN {
                    return Err(Malformed::BadUsername);
                }
                let name = std::str::from_utf8(value).map_err(|_| Malformed::BadUsername)?;
                request.username = (!name.is_empty()).then_some(name);
            }
            _ => {}
        }
        at = next;
    }
    Ok(request)
}

/// Folds an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket
/// sees IPv4 clients) back to plain IPv4; other addresses are returned as is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Writes into `out` (cleared first) a Binding success response for `txid`
/// carrying exactly one XOR-MAPPED-ADDRESS for `addr` (after [`canonical`]):
/// 32 bytes for IPv4, 44 for IPv6.
pub fn encode_binding_success(txid: &TransactionId, addr: SocketAddr, out: &mut Vec<u8>) {
    let addr = canonical(addr);
    let (family, value_len): (u8, u16) = match addr.ip() {
        IpAddr::V4(_) => (FAMILY_IPV4, 8),
        IpAddr::V6(_) => (FAMILY_IPV6, 20),
    };
    let cookie = MAGIC_COOKIE.to_be_bytes();
    out.clear();
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&(4 + value_len).to_be_bytes());
    out.extend_from_slice(&cookie);
    out.extend_from_slice(txid);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&value_len.to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            let ip = ip.octets();
            out.extend((0..4).map(|i| ip[i] ^ cookie[i]));
        }
        IpAddr::V6(ip) => {
            let ip = ip.octets();
            let key = cookie.iter().chain(txid.iter());
            out.extend(ip.iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
}

/// Appends a FINGERPRINT attribute to the complete STUN message in `out`,
/// first counting it in the header's length field. Does nothing if `out` is
/// shorter than a header.
pub fn append_fingerprint(out: &mut Vec<u8>) {
    let Some(body_len) = out.len().checked_sub(HEADER_LEN) else {
        return;
    };
    let Ok(length) = u16::try_from(body_len + 8) else {
        return;
    };
    out[2..4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32(out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The whole pure path: parses `packet` from `from` and, if it is a Binding
/// request, writes the response into `out` (with a FINGERPRINT when the request
/// had one). On `Err`, nothing must be sent.
pub fn answer<'a>(
    packet: &'a [u8],
    from: SocketAddr,
    out: &mut Vec<u8>,
) -> Result<Request<'a>, Malformed> {
    let request = parse_binding_request(packet)?;
    encode_binding_success(&request.txid, from, out);
    if request.fingerprint {
        append_fingerprint(out);
    }
    Ok(request)
}

/// CRC-32 (ISO-HDLC, the one FINGERPRINT uses), table-driven.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// A Binding request that carried a USERNAME: who (by username) was seen where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The USERNAME attribute as sent (the peer's `stun_username`).
    pub username: String,
    /// The datagram's source, i.e. the client's public UDP endpoint, with
    /// IPv4-mapped IPv6 folded to IPv4.
    pub addr: SocketAddr,
}

/// A per-source limit on answered requests (GCRA, from `governor`), shared
/// by every STUN socket of a node.
pub struct SourceLimit {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// When idle sources are next forgotten (see [`SourceLimit::sweep_if_due`]).
    next_sweep: parking_lot::Mutex<std::time::Instant>,
}

impl std::fmt::Debug for SourceLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimit")
            .field("sources", &self.limiter.len())
            .finish()
    }
}

/// How often sources that are back at a full burst are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl SourceLimit {
    /// `rate` answers per second per source after a burst of `burst`; `None`
    /// when `rate` is 0 (no limit). A `burst` of 0 counts as 1.
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        let rate = std::num::NonZeroU32::new(rate)?;
        let burst = std::num::NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = governor::Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            limiter: governor::RateLimiter::dashmap(quota),
            next_sweep: parking_lot::Mutex::new(std::time::Instant::now() + SWEEP_EVERY),
        })
    }

    /// The key of a source: an IPv4 address (IPv4-mapped folded), or the /64
    /// of an IPv6 one.
    pub fn source_key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(prefix.into())
                }
            },
            v4 => v4,
        }
    }

    /// Takes one answer from `ip`'s allowance; false when it has none left.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.limiter.check_key(&Self::source_key(ip)).is_ok()
    }

    /// Sources with a state now.
    pub fn sources(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets the sources that are back at a full burst (their state is
    /// the same as none) and gives the memory back, at most once per
    /// second. Keyed limiters keep every key forever otherwise.
    pub fn sweep_if_due(&self) {
        let now = std::time::Instant::now();
        {
            let mut next = self.next_sweep.lock();
            if now < *next {
                return;
            }
            *next = now + SWEEP_EVERY;
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        metrics::gauge!(m::STUN_RATE_SOURCES).set(self.limiter.len() as f64);
    }
}

/// Running totals of one server, readable without a metrics recorder (tests,
/// or a caller that wants them in its own status output). The same events also
/// go to the global `metrics` recorder.
#[derive(Debug, Default)]
pub struct StunCounters {
    answered: AtomicU64,
    malformed: AtomicU64,
    observations: AtomicU64,
    rate_limited: AtomicU64,
}

impl StunCounters {
    /// Binding requests answered (response sent).
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
    /// Datagrams dropped without a reply because they were not a valid Binding request.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
    /// Observations handed to the observer.
    pub fn observations(&self) -> u64 {
        self.observations.load(Ordering::Relaxed)
    }
    /// Datagrams dropped unanswered by the per-source limit.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

/// Boxed observer callback.
type Observer = Box<dyn Fn(Observation) + Send + Sync>;

/// A STUN Binding responder on one already-bound UDP socket.
pub struct StunServer {
    /// The caller binds it (port 0 in tests); shared so the caller may keep a
    /// handle, e.g. to read `local_addr`.
    socket: Arc<UdpSocket>,
    /// Called inline in the receive loop for every USERNAME-carrying request,
    /// before the response is sent: it must not block (push to a channel with
    /// `try_send`, or update a map).
    observer: Observer,
    /// Totals readable by the caller; see [`StunServer::counters`].
    counters: Arc<StunCounters>,
    /// The per-source limit, when one is set ([`StunServer::with_limit`]).
    limit: Option<Arc<SourceLimit>>,
}

impl std::fmt::Debug for StunServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StunServer")
            .field("socket", &self.socket)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl StunServer {
    /// A server for `socket`, reporting USERNAME-carrying requests to `observer`.
    pub fn new(
        socket: Arc<UdpSocket>,
        observer: impl Fn(Observation) + Send + Sync + 'static,
    ) -> Self {
        Self {
            socket,
            observer: Box::new(observer),
            counters: Arc::default(),
            limit: None,
        }
    }

    /// Answers each source at most as `limit` allows (shared between the
    /// servers of one node, so a source counts once across its sockets).
    pub fn with_limit(mut self, limit: Option<Arc<SourceLimit>>) -> Self {
        self.limit = limit;
        self
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// This server's running totals (live: keep the `Arc` and read it later).
    pub fn counters(&self) -> Arc<StunCounters> {
        self.counters.clone()
    }

    /// Answers datagrams until `shutdown` is cancelled. Socket errors are
    /// logged, counted and survived; nothing a client sends can end the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(addr = ?self.socket.local_addr().ok(), "STUN responder listening");
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut out = Vec::with_capacity(MAX_RESPONSE_LEN);
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            let (len, from) = match received {
                Ok(r) => r,
                Err(e) => {
                    metrics::counter!(m::STUN_SOCKET_ERRORS, "op" => "recv").increment(1);
                    tracing::warn!(error = %e, "STUN recv_from failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(RECV_ERROR_PAUSE) => continue,
                    }
                }
            };
            if let Some(limit) = &self.limit {
                limit.sweep_if_due();
                if !limit.allow(from.ip()) {
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(m::STUN_RATE_LIMITED).increment(1);
                    continue;
                }
            }
            let packet = &buf[..len.min(buf.len())];
            let request = match answer(packet, from, &mut out) {
                Ok(request) => request,
                Err(why) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(m::STUN_MALFORMED, "reason" => why.reason()).increment(1);
                    tracing::trace!(%from, len, reason = why.reason(), "STUN datagram dropped");
                    continue;
                }
            };
            let addr = canonical(from);
            if let Some(username) = request.username {
                self.counters.observations.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::STUN_OBSERVATIONS).increment(1);
                (self.observer)(Observation {
                    username: username.to_owned(),
                    addr,
                });
            }
            match self.socket.send_to(&out, from).await {
                Ok(_) => {
                    self.counters.answered.fetch_add(1, Ordering::Relaxed);
                    let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
                    metrics::counter!(m::STUN_REQUESTS, "family" => family).increment(1);
                }
                Err(e) => {
                    metrics::counter!(m::STUN_SOCKET_ERRORS, "op" => "send").increment(1);
                    tracing::debug!(%from, error = %e, "STUN send_to failed");
                }
            }
        }
        tracing::info!("STUN responder stopped");
    }
}

/// Serves Binding requests on `socket` until `shutdown` is cancelled; see
/// [`StunServer`]. Spawn one per socket (per address family, or one on `[::]`).
pub async fn serve(
    socket: Arc<UdpSocket>,
    observer: impl Fn(Observation) + Send + Sync + 'static,
    limit: Option<Arc<SourceLimit>>,
    shutdown: CancellationToken,
) {
    StunServer::new(socket, observer)
        .with_limit(limit)
        .run(shutdown)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const TXID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn v4() -> SocketAddr {
        "192.0.2.1:32853".parse().unwrap()
    }

    /// Builds a request by hand: header, then `attrs` as (type, value), padded
    /// with `pad` bytes.
    fn request(attrs: &[(u16, &[u8])], pad: u8) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(pad);
            }
        }
        let mut p = Vec::new();
        p.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        p.extend_from_slice(&TXID);
        p.extend_from_slice(&body);
        p
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1: a request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT (padding is spaces).
    fn rfc5769_request() -> Vec<u8> {
        hex("0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
             80220010 5354554e 20746573 7420636c 69656e74
             00240004 6e0001ff
             80290008 932ff9b1 51263b36
             00060009 6576746a 3a683676 59202020
             00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
             80280004 e57a3bcf")
    }

    #[test]
    fn source_limit_keys_and_allowance() {
        let k = |s: &str| SourceLimit::source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.1"), "192.0.2.1");
        assert_eq!(k("::ffff:192.0.2.1"), "192.0.2.1");
        // One IPv6 /64 is one source: a host picks any address in it.
        assert_eq!(k("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert!(SourceLimit::new(0, 10).is_none(), "rate 0: no limit");
        let limit = SourceLimit::new(1, 3).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // The burst, then nothing (at 1/s, the next one is a second away).
        assert!((0..3).all(|_| limit.allow(a)));
        assert!(!limit.allow(a));
        // Another source has its own allowance.
        assert!(limit.allow(b));
        assert_eq!(limit.sources(), 2);
        // An IPv6 /64 shares one allowance across its addresses.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!((0..3).all(|i| limit.allow(v6(&format!("2001:db8::{i}")))));
        assert!(!limit.allow(v6("2001:db8::ffff")));
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn minimal_request_parses() {
        let p = request(&[], 0);
        assert_eq!(p.len(), 20);
        let r = parse_binding_request(&p).unwrap();
        assert_eq!(r.txid, TXID);
        assert_eq!(r.username, None);
        assert!(!r.fingerprint);
    }

    #[test]
    fn rfc5769_sample_request() {
        let p = rfc5769_request();
        let r = parse_binding_request(&p).unwrap();
        assert_eq!(r.username, Some("evtj:h6vY"));
        assert!(r.fingerprint, "the vector's FINGERPRINT checks out");
        assert_eq!(r.txid[..4], [0xb7, 0xe7, 0xa7, 0x01]);
        // One flipped bit anywhere before the FINGERPRINT breaks it.
        let mut bad = p.clone();
        bad[30] ^= 1;
        assert_eq!(parse_binding_request(&bad), Err(Malformed::BadFingerprint));
    }

    #[test]
    fn rfc5769_sample_responses_xor_mapped_address() {
        let txid: TransactionId = hex("b7e7a701 bc34d686 fa87dfae").try_into().unwrap();
        let mut out = Vec::new();
        encode_binding_success(&txid, v4(), &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out[..4], hex("0101 000c")[..]);
        assert_eq!(out[20..], hex("00200008 0001a147 e112a643")[..]);

        let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        encode_binding_success(&txid, v6, &mut out);
        assert_eq!(out.len(), 44);
        assert_eq!(out[..4], hex("0101 0018")[..]);
        assert_eq!(
            out[20..],
            hex("00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9")[..]
        );
    }

    #[test]
    fn rfc5769_response_fingerprint_matches_our_crc() {
        // RFC 5769 §2.2, the IPv4 response: our CRC gives the vector's FINGERPRINT.
        let resp = hex("0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
             8022000b 74657374 20766563 746f7220
             00200008 0001a147 e112a643
             00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
             80280004 c07d4c96");
        let n = resp.len();
        assert_eq!(crc32(&resp[..n - 8]) ^ FINGERPRINT_XOR, 0xc07d_4c96);
    }

    #[test]
    fn fingerprint_is_echoed_and_valid() {
        let mut p = request(&[(ATTR_USERNAME, b"alice")], 0);
        append_fingerprint(&mut p);
        let mut out = Vec::new();
        let r = answer(&p, v4(), &mut out).unwrap();
        assert!(r.fingerprint);
        assert_eq!(r.username, Some("alice"));
        assert_eq!(out.len(), 40);
        assert_eq!(out[2..4], 20u16.to_be_bytes());
        let n = out.len();
        assert_eq!(out[n - 8..n - 4], hex("80280004")[..]);
        assert_eq!(
            out[n - 4..],
            (crc32(&out[..n - 8]) ^ FINGERPRINT_XOR).to_be_bytes()
        );
    }

    #[test]
    fn fingerprint_must_be_last_and_right() {
        let mut p = request(&[], 0);
        append_fingerprint(&mut p);
        // Bad CRC.
        let mut bad = p.clone();
        bad[27] ^= 0xff;
        assert_eq!(parse_binding_request(&bad), Err(Malformed::BadFingerprint));
        // Something after it (length fixed up so only placement is wrong).
        let mut after = p.clone();
        after.extend_from_slice(&hex("80220000"));
        after[2..4].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(
            parse_binding_request(&after),
            Err(Malformed::BadFingerprint)
        );
        // Wrong size.
        let wrong = request(&[(ATTR_FINGERPRINT, &[0; 8])], 0);
        assert_eq!(
            parse_binding_request(&wrong),
            Err(Malformed::BadFingerprint)
        );
    }

    #[test]
    fn truncated_headers() {
        let p = request(&[], 0);
        for n in 0..HEADER_LEN {
            assert_eq!(
                parse_binding_request(&p[..n]),
                Err(Malformed::TooShort),
                "{n}"
            );
        }
    }

    #[test]
    fn not_stun_and_bad_cookie() {
        let mut p = request(&[], 0);
        p[0] |= 0x80;
        assert_eq!(parse_binding_request(&p), Err(Malformed::NotStun));
        let mut p = request(&[], 0);
        p[0] = 0x40;
        assert_eq!(parse_binding_request(&p), Err(Malformed::NotStun));
        let mut p = request(&[], 0);
        p[7] ^= 1;
        assert_eq!(parse_binding_request(&p), Err(Malformed::BadCookie));
    }

    #[test]
    fn bad_length() {
        // Not a multiple of 4.
        let mut p = request(&[], 0);
        p.push(0);
        p[3] = 1;
        assert_eq!(parse_binding_request(&p), Err(Malformed::BadLength));
        // Says more than there is.
        let mut p = request(&[(ATTR_USERNAME, b"bob")], 0);
        p[3] += 4;
        assert_eq!(parse_binding_request(&p), Err(Malformed::BadLength));
        // Says less than there is (trailing bytes).
        let mut p = request(&[(ATTR_USERNAME, b"bob")], 0);
        p[3] -= 8;
        assert_eq!(parse_binding_request(&p), Err(Malformed::BadLength));
    }

    #[test]
    fn attribute_running_past_the_end() {
        // Attribute length claims 12 bytes, 4 are there.
        let mut p = request(&[(0x8022, b"abcd")], 0);
        p[23] = 12;
        assert_eq!(
            parse_binding_request(&p),
            Err(Malformed::TruncatedAttribute)
        );
        // Value fits but its padding would not.
        let mut p = request(&[(0x8022, b"abcd")], 0);
        p[23] = 5;
        assert_eq!(
            parse_binding_request(&p),
            Err(Malformed::TruncatedAttribute)
        );
    }

    #[test]
    fn odd_padding_is_accepted_and_ignored() {
        for (name, pad) in [("a", 0xAA), ("ab", 0), ("abc", 0x20), ("abcde", 0xFF)] {
            let p = request(&[(ATTR_USERNAME, name.as_bytes()), (0x8022, b"x")], pad);
            assert_eq!(p.len() % 4, 0);
            assert_eq!(parse_binding_request(&p).unwrap().username, Some(name));
        }
    }

    #[test]
    fn username_limits() {
        let max = "u".repeat(MAX_USERNAME_LEN);
        let p = request(&[(ATTR_USERNAME, max.as_bytes())], 0);
        assert_eq!(parse_binding_request(&p).unwrap().username, Some(&max[..]));
        let over = "u".repeat(MAX_USERNAME_LEN + 1);
        let p = request(&[(ATTR_USERNAME, over.as_bytes())], 0);
        assert_eq!(parse_binding_request(&p), Err(Malformed::BadUsername));
        let p = request(&[(ATTR_USERNAME, &[0x61, 0xff, 0xfe])], 0);
        assert_eq!(parse_binding_request(&p), Err(Malformed::BadUsername));
        // Empty: answered, observes nothing.
        let p = request(&[(ATTR_USERNAME, b"")], 0);
        assert_eq!(parse_binding_request(&p).unwrap().username, None);
        // Only the first USERNAME counts.
        let p = request(&[(ATTR_USERNAME, b"first"), (ATTR_USERNAME, b"second")], 0);
        assert_eq!(parse_binding_request(&p).unwrap().username, Some("first"));
        // After MESSAGE-INTEGRITY, USERNAME is ignored.
        let p = request(
            &[(ATTR_MESSAGE_INTEGRITY, &[0; 20]), (ATTR_USERNAME, b"x")],
            0,
        );
        assert_eq!(parse_binding_request(&p).unwrap().username, None);
        // Unicode is fine.
        let p = request(&[(ATTR_USERNAME, "ünï:😀".as_bytes())], 0);
        assert_eq!(parse_binding_request(&p).unwrap().username, Some("ünï:😀"));
    }

    #[test]
    fn other_methods_and_classes_are_refused() {
        // Binding indication, success and error responses, Allocate request.
        for t in [0x0011u16, 0x0101, 0x0111, 0x0003] {
            let mut p = request(&[], 0);
            p[..2].copy_from_slice(&t.to_be_bytes());
            assert_eq!(
                parse_binding_request(&p),
                Err(Malformed::NotBindingRequest),
                "{t:#06x}"
            );
        }
        // Our own response is not a request either.
        let mut out = Vec::new();
        encode_binding_success(&TXID, v4(), &mut out);
        assert_eq!(
            parse_binding_request(&out),
            Err(Malformed::NotBindingRequest)
        );
    }

    #[test]
    fn unknown_attributes_are_ignored() {
        let p = request(
            &[
                (0x0003, &[0, 0, 0, 6]), // CHANGE-REQUEST (comprehension-required)
                (0x0024, &[1, 2, 3, 4]), // PRIORITY
                (0xC057, &[0, 1, 0, 0]), // GOOG-NETWORK-INFO
                (ATTR_USERNAME, b"ice:frag"),
            ],
            0,
        );
        assert_eq!(
            parse_binding_request(&p).unwrap().username,
            Some("ice:frag")
        );
    }

    #[test]
    fn ipv4_mapped_source_is_encoded_as_ipv4() {
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped()),
            4242,
        );
        assert_eq!(canonical(mapped), "198.51.100.7:4242".parse().unwrap());
        let mut out = Vec::new();
        encode_binding_success(&TXID, mapped, &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out[25], FAMILY_IPV4);
        // Plain IPv6 (including ::1 and v4-compatible ::a.b.c.d) stays IPv6.
        for ip in [Ipv6Addr::LOCALHOST, "::102:304".parse().unwrap()] {
            encode_binding_success(&TXID, SocketAddr::new(IpAddr::V6(ip), 1), &mut out);
            assert_eq!((out.len(), out[25]), (44, FAMILY_IPV6));
        }
    }

    #[test]
    fn append_fingerprint_ignores_non_messages() {
        let mut short = vec![1, 2, 3];
        append_fingerprint(&mut short);
        assert_eq!(short, [1, 2, 3]);
    }

    /// splitmix64: a tiny deterministic generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// Checks what must hold for any accepted datagram: a well-formed success
    /// response for the same transaction, never larger than the request plus
    /// the XOR-MAPPED-ADDRESS attribute.
    fn check_answer(packet: &[u8], from: SocketAddr, out: &mut Vec<u8>) -> bool {
        let Ok(r) = answer(packet, from, out) else {
            return false;
        };
        let xor_attr = if canonical(from).is_ipv4() { 12 } else { 24 };
        assert!(
            out.len() <= packet.len() + xor_attr,
            "amplification: {} -> {}",
            packet.len(),
            out.len()
        );
        assert!(out.len() <= MAX_RESPONSE_LEN);
        assert_eq!(out[..2], BINDING_SUCCESS.to_be_bytes());
        assert_eq!(usize::from(be16(out, 2).unwrap()), out.len() - HEADER_LEN);
        assert_eq!(out[8..20], r.txid);
        assert_eq!(out[8..20], packet[8..20]);
        true
    }

    #[test]
    fn fuzz_parser_never_panics_nor_amplifies() {
        let mut rng = Rng(0x5EED_F00D);
        let mut with_fp = request(&[(ATTR_USERNAME, b"peer-1")], 0);
        append_fingerprint(&mut with_fp);
        let seeds = [
            request(&[], 0),
            request(&[(ATTR_USERNAME, b"peer-1")], 0),
            request(&[(0x8022, b"soft"), (ATTR_USERNAME, b"xyz")], 7),
            with_fp,
            rfc5769_request(),
        ];
        let sources: [SocketAddr; 3] = [
            v4(),
            "[2001:db8::1]:9".parse().unwrap(),
            "[::ffff:10.0.0.1]:7".parse().unwrap(),
        ];
        let mut out = Vec::new();
        let mut accepted = 0;
        for i in 0..6000 {
            let mut p = if i % 10 == 0 {
                // Pure noise, sometimes behind a valid-looking header.
                let n = rng.below(120);
                let mut p: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                if p.len() >= 20 && rng.below(2) == 0 {
                    p[..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
                    let body = (p.len() - 20) as u16;
                    p[2..4].copy_from_slice(&body.to_be_bytes());
                    p[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                }
                p
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 if !p.is_empty() => {
                        let at = rng.below(p.len());
                        p[at] ^= 1 << rng.below(8);
                    }
                    1 if !p.is_empty() => {
                        let at = rng.below(p.len());
                        p[at] = rng.byte();
                    }
                    2 => p.truncate(rng.below(p.len() + 1)),
                    3 => p.extend((0..rng.below(12)).map(|_| rng.byte())),
                    4 if p.len() >= 4 => {
                        // A length field that is plausible, or not.
                        let len = (p.len() as i64 - 20 + rng.below(9) as i64 - 4).max(0);
                        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                    }
                    5 if p.len() >= 24 => {
                        // Corrupt an attribute length in the body.
                        let at = 20 + rng.below(p.len() - 22);
                        p[at..at + 2].copy_from_slice(&(rng.next() as u16).to_be_bytes());
                    }
                    _ => {}
                }
            }
            let from = sources[rng.below(sources.len())];
            if check_answer(&p, from, &mut out) {
                accepted += 1;
            }
        }
        // The mutations keep some packets valid, so both paths were exercised.
        assert!(accepted > 100, "accepted only {accepted}");
    }

    #[test]
    fn minimal_requests_give_the_documented_sizes() {
        let mut out = Vec::new();
        let p = request(&[], 0);
        answer(&p, v4(), &mut out).unwrap();
        assert_eq!(out.len(), 32);
        answer(&p, "[2001:db8::1]:1".parse().unwrap(), &mut out).unwrap();
        assert_eq!(out.len(), 44);
    }

    /// Requests built, and responses decoded, by stun_codec: an independent
    /// implementation.
    mod interop {
        use super::*;
        use bytecodec::{DecodeExt, EncodeExt};
        use stun_codec::rfc5389::attributes::{Fingerprint, Software, Username};
        use stun_codec::rfc5389::{methods::BINDING, Attribute};
        use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder};
        use tokio::sync::mpsc;
        use tokio::task::JoinHandle;

        fn build(txid: TransactionId, username: Option<&str>, fingerprint: bool) -> Vec<u8> {
            let mut msg = Message::<Attribute>::new(
                MessageClass::Request,
                BINDING,
                stun_codec::TransactionId::new(txid),
            );
            if let Some(name) = username {
                msg.add_attribute(Username::new(name.to_owned()).unwrap());
            }
            if fingerprint {
                let fp = Fingerprint::new(&msg).unwrap();
                msg.add_attribute(fp);
            }
            MessageEncoder::new().encode_into_bytes(msg).unwrap()
        }

        /// Decodes a response with stun_codec (which also verifies any
        /// FINGERPRINT) and returns the mapped address, after checking it is a
        /// Binding success for `txid` whose attributes are exactly one
        /// XOR-MAPPED-ADDRESS (plus FINGERPRINT when `fingerprint`).
        fn decode(bytes: &[u8], txid: TransactionId, fingerprint: bool) -> SocketAddr {
            let msg = MessageDecoder::<Attribute>::new()
                .decode_from_bytes(bytes)
                .unwrap()
                .expect("stun_codec accepts the response");
            assert_eq!(msg.class(), MessageClass::SuccessResponse);
            assert_eq!(msg.method(), BINDING);
            assert_eq!(msg.transaction_id().as_bytes(), &txid);
            let attrs: Vec<&Attribute> = msg.attributes().collect();
            assert_eq!(attrs.len(), 1 + usize::from(fingerprint), "{attrs:?}");
            if fingerprint {
                assert!(matches!(attrs[1], Attribute::Fingerprint(_)));
            }
            match attrs[0] {
                Attribute::XorMappedAddress(a) => a.address(),
                other => panic!("unexpected attribute {other:?}"),
            }
        }

        #[test]
        fn stun_codec_requests_parse_with_the_same_username() {
            let mut rng = Rng(42);
            for i in 0..300 {
                let txid: TransactionId = std::array::from_fn(|_| rng.byte());
                let len = rng.below(MAX_USERNAME_LEN + 1);
                // Random UTF-8 of up to 512 bytes, multi-byte chars included.
                let mut name = String::new();
                while name.len() < len {
                    let c = char::from_u32(rng.below(0x3000) as u32).unwrap_or('x');
                    if name.len() + c.len_utf8() > len {
                        break;
                    }
                    name.push(c);
                }
                let mut msg = Message::<Attribute>::new(
                    MessageClass::Request,
                    BINDING,
                    stun_codec::TransactionId::new(txid),
                );
                if i % 3 == 0 {
                    msg.add_attribute(Software::new("interop".into()).unwrap());
                }
                msg.add_attribute(Username::new(name.clone()).unwrap());
                if i % 2 == 0 {
                    let fp = Fingerprint::new(&msg).unwrap();
                    msg.add_attribute(fp);
                }
                let bytes = MessageEncoder::new().encode_into_bytes(msg).unwrap();
                let r = parse_binding_request(&bytes).unwrap();
                assert_eq!(r.txid, txid);
                assert_eq!(r.username, (!name.is_empty()).then_some(&name[..]));
                assert_eq!(r.fingerprint, i % 2 == 0);
                let from = if i % 2 == 0 {
                    v4()
                } else {
                    "[2001:db8::5]:5".parse().unwrap()
                };
                let mut out = Vec::new();
                answer(&bytes, from, &mut out).unwrap();
                assert_eq!(decode(&out, txid, i % 2 == 0), from);
            }
        }

        struct TestServer {
            addr: SocketAddr,
            counters: Arc<StunCounters>,
            observed: mpsc::UnboundedReceiver<Observation>,
            shutdown: CancellationToken,
            task: JoinHandle<()>,
        }

        impl TestServer {
            fn start(socket: UdpSocket) -> Self {
                let addr = socket.local_addr().unwrap();
                let (tx, observed) = mpsc::unbounded_channel();
                let server = StunServer::new(Arc::new(socket), move |o| {
                    let _ = tx.send(o);
                });
                let counters = server.counters();
                let shutdown = CancellationToken::new();
                let task = tokio::spawn(server.run(shutdown.clone()));
                Self {
                    addr,
                    counters,
                    observed,
                    shutdown,
                    task,
                }
            }

            async fn bind(addr: &str, test: &str) -> Option<Self> {
                match UdpSocket::bind(addr).await {
                    Ok(s) => Some(Self::start(s)),
                    // Only IPv6 may be missing here; IPv4 loopback must work.
                    Err(e) if addr.starts_with('[') => {
                        skipped(test, &format!("cannot bind {addr}: {e}"));
                        None
                    }
                    Err(e) => panic!("cannot bind {addr}: {e}"),
                }
            }

            async fn stop(self) {
                self.shutdown.cancel();
                tokio::time::timeout(Duration::from_secs(5), self.task)
                    .await
                    .expect("server stops on shutdown")
                    .unwrap();
            }
        }

        async fn recv(client: &UdpSocket) -> Vec<u8> {
            let mut buf = vec![0u8; 1500];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .expect("a response within 5 s")
                .unwrap();
            buf.truncate(n);
            buf
        }

        /// Records that a test did not run here: a `SKIPPED` line, also
        /// appended to the file named by `TEST_SKIPS_FILE` (tests/run-all.sh
        /// lists those at the end, so no skip is silent).
        fn skipped(test: &str, reason: &str) {
            let line = format!("SKIPPED stun::{test}: {reason}");
            eprintln!("{line}");
            if let Some(path) = std::env::var_os("TEST_SKIPS_FILE") {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open TEST_SKIPS_FILE");
                writeln!(f, "{line}").expect("write TEST_SKIPS_FILE");
            }
        }

        async fn round_trip(server_bind: &str, client_bind: &str, test: &str) {
            let Some(mut server) = TestServer::bind(server_bind, test).await else {
                return;
            };
            let client = UdpSocket::bind(client_bind).await.unwrap();
            let me = client.local_addr().unwrap();
            let target = SocketAddr::new(client.local_addr().unwrap().ip(), server.addr.port());
            let is_v4 = me.is_ipv4();

            // Without USERNAME: answered, nothing observed.
            let txid = [7; 12];
            client
                .send_to(&build(txid, None, false), target)
                .await
                .unwrap();
            let resp = recv(&client).await;
            assert_eq!(resp.len(), if is_v4 { 32 } else { 44 });
            assert_eq!(decode(&resp, txid, false), me);
            assert!(server.observed.try_recv().is_err());

            // With USERNAME: observed (before the answer is sent) at our address.
            let txid = [8; 12];
            let req = build(txid, Some("peer-secret-token"), false);
            client.send_to(&req, target).await.unwrap();
            let resp = recv(&client).await;
            assert_eq!(decode(&resp, txid, false), me);
            assert!(resp.len() <= req.len() + if is_v4 { 12 } else { 24 });
            let seen = server.observed.try_recv().expect("an observation");
            assert_eq!(
                seen,
                Observation {
                    username: "peer-secret-token".into(),
                    addr: me
                }
            );

            // With FINGERPRINT: echoed, and stun_codec verifies it.
            let txid = [9; 12];
            client
                .send_to(&build(txid, Some("fp"), true), target)
                .await
                .unwrap();
            assert_eq!(decode(&recv(&client).await, txid, true), me);

            assert_eq!(server.counters.answered(), 3);
            assert_eq!(server.counters.observations(), 2);
            assert_eq!(server.counters.malformed(), 0);
            server.stop().await;
        }

        #[tokio::test]
        async fn loopback_ipv4() {
            round_trip("127.0.0.1:0", "127.0.0.1:0", "loopback_ipv4").await;
        }

        #[tokio::test]
        async fn loopback_ipv6() {
            round_trip("[::1]:0", "[::1]:0", "loopback_ipv6").await;
        }

        #[tokio::test]
        async fn dual_stack_reports_ipv4_clients_as_ipv4() {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .unwrap();
            if socket.set_only_v6(false).is_err()
                || socket
                    .bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())
                    .is_err()
            {
                skipped(
                    "dual_stack_reports_ipv4_clients_as_ipv4",
                    "no dual-stack IPv6 socket here",
                );
                return;
            }
            socket.set_nonblocking(true).unwrap();
            let socket = UdpSocket::from_std(socket.into()).unwrap();
            let mut server = TestServer::start(socket);

            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let me = client.local_addr().unwrap();
            let target = SocketAddr::from((Ipv4Addr::LOCALHOST, server.addr.port()));
            let txid = [3; 12];
            client
                .send_to(&build(txid, Some("dual"), false), target)
                .await
                .unwrap();
            let resp = recv(&client).await;
            assert_eq!(resp.len(), 32, "family 0x01, not a mapped IPv6");
            assert_eq!(decode(&resp, txid, false), me);
            let seen = server.observed.try_recv().unwrap();
            assert_eq!(seen.addr, me);
            assert!(seen.addr.is_ipv4());
            server.stop().await;
        }

        async fn garbage_gets_no_reply(server_bind: &str, test: &str) {
            let Some(server) = TestServer::bind(server_bind, test).await else {
                return;
            };
            let client_bind = if server.addr.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let client = UdpSocket::bind(client_bind).await.unwrap();
            let valid = build([5; 12], Some("x"), false);
            let mut truncated_attr = valid.clone();
            truncated_attr[23] = 200; // USERNAME length past the end
            let mut bad_cookie = valid.clone();
            bad_cookie[4] ^= 0xff;
            let mut response = Vec::new();
            encode_binding_success(&[5; 12], server.addr, &mut response);
            let mut indication = build([5; 12], None, false);
            indication[1] = 0x11;
            // A valid request (zero-length attributes) larger than the receive
            // buffer: the kernel truncates it, and the length no longer matches.
            let mut oversized = build([5; 12], None, false);
            oversized.resize(3000, 0);
            oversized[2..4].copy_from_slice(&(3000u16 - 20).to_be_bytes());
            assert!(parse_binding_request(&oversized).is_ok());
            let garbage: Vec<Vec<u8>> = vec![
                vec![],
                b"hello".to_vec(),
                valid[..19].to_vec(),
                valid[..valid.len() - 4].to_vec(),
                truncated_attr,
                bad_cookie,
                response,
                indication,
                oversized,
            ];
            for g in &garbage {
                client.send_to(g, server.addr).await.unwrap();
            }
            let txid = [6; 12];
            client
                .send_to(&build(txid, None, false), server.addr)
                .await
                .unwrap();
            // The first datagram back is the valid request's answer: none of the
            // garbage before it was answered (one socket, handled in order).
            let resp = recv(&client).await;
            assert_eq!(decode(&resp, txid, false), client.local_addr().unwrap());
            assert_eq!(server.counters.malformed(), garbage.len() as u64);
            assert_eq!(server.counters.answered(), 1);
            assert_eq!(server.counters.observations(), 0);
            server.stop().await;
        }

        #[tokio::test]
        async fn garbage_and_truncated_datagrams_get_no_reply_ipv4() {
            garbage_gets_no_reply(
                "127.0.0.1:0",
                "garbage_and_truncated_datagrams_get_no_reply_ipv4",
            )
            .await;
        }

        #[tokio::test]
        async fn garbage_and_truncated_datagrams_get_no_reply_ipv6() {
            garbage_gets_no_reply(
                "[::1]:0",
                "garbage_and_truncated_datagrams_get_no_reply_ipv6",
            )
            .await;
        }

        #[tokio::test]
        async fn serve_stops_on_shutdown() {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(socket, |_| {}, None, shutdown.clone()));
            shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("stopped")
                .unwrap();
        }
    }
}
