//! The HTTP accept loop: every TCP connection of the HTTP/WebSocket port
//! passes here before hyper parses a byte of it, and the open-file budget
//! that keeps the port answering when the node is full.
//!
//! Why not `axum::serve`: it exposes none of hyper's connection settings, so
//! a connection could sit in its handshake for ever (one header byte a second
//! kept 1,000 sockets open past a minute), hyper buffered ~400 KB of an
//! unfinished header per connection, and once the open-file limit was reached
//! `accept` failed for everyone, probes included. Here:
//!
//! - **Slots.** Every connection that is not a WebSocket session holds a slot
//!   from the accept until it is upgraded (HTTP/1.1: hyper hands the socket
//!   over and the connection task ends) or closed: handshakes in progress,
//!   probes, API calls, keep-alive and HTTP/2 connections. There are
//!   `server.max_pending` slots; while all are taken the loop accepts
//!   nothing, so new clients wait in the kernel's accept queue (holding no
//!   descriptor of ours) and are served as slots come back, in arrival
//!   order. Once three quarters are taken, an address that holds
//!   `server.max_pending_per_ip` gets no more: its next connection is closed
//!   at once, before anything is read. Below that mark a burst from one
//!   address (a NAT, a proxy, clients reconnecting after a restart) is
//!   served while there is room; above it no address can crowd out the
//!   rest. Addresses in `http.trusted_proxies` are bound by the total only
//!   (every client behind them shares their address). So the node's sockets
//!   never exceed `max_connections + max_pending`.
//! - **Time.** A connection must complete a request head within
//!   `server.header_read_timeout_ms` of its accept, however it trickles
//!   (hyper's own `header_read_timeout` starts only after the HTTP version is
//!   detected, so the deadline is also kept here); after that, a connection
//!   with no request in flight for the same time is shut down gracefully
//!   (HTTP/1 keep-alive, HTTP/2 `GOAWAY`). An HTTP/2 connection that carries a
//!   WebSocket stream is exempt: it lives as long as its streams. A request
//!   whose response is not produced within `server.request_timeout_ms` of its
//!   head (a body trickled in) closes the connection. A connection accepted
//!   while three quarters of the slots are taken has 1 s for its first head
//!   (`PRESSED_HEAD_TIMEOUT`): under a flood the slots turn over fast, and
//!   real clients and probes waiting in the accept queue get in.
//! - **Size.** The HTTP/1 read buffer is `server.max_header_bytes` (hyper's
//!   `max_buf_size`): a larger head is answered 431. HTTP/2 advertises it as
//!   `SETTINGS_MAX_HEADER_LIST_SIZE`.
//! - **Accept errors** (`EMFILE`, `ENFILE`) pause the loop briefly instead
//!   of spinning, and are logged at most once a second.
//!
//! [`raise_open_files_limit`] and [`plan_fds`] run at start: the soft limit is
//! raised to the hard one, and `server.max_connections` is lowered until it,
//! `max_pending` and `server.reserved_fds` fit under it.
//!
//! The socket handed to hyper is the plain `TokioIo<TcpStream>`, so
//! `ws::Io::from_upgraded` still takes the `TcpStream` back after an upgrade,
//! and the connection task (with its slot) ends with the hand-over: an idle
//! WebSocket holds nothing of this module.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::metrics as m;

/// How long the accept loop pauses after an `accept` error other than a
/// connection aborted before it was taken: long enough not to spin on a
/// listener that stays readable while the process is out of file
/// descriptors, short enough to take the next client soon after one closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The head deadline of a connection accepted while three quarters of the
/// slots are taken (when `header_read_timeout_ms` is longer). A client sends
/// its request right after the TCP handshake, so half a round trip later it
/// is there; an idle or trickling connection gives its slot back this soon,
/// and a flood of them turns slots over fast enough for real clients (and
/// probes) waiting in the accept queue.
const PRESSED_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// At most one warning per this interval for failed accepts.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The bounds of the HTTP side, from `[server]` and `http.trusted_proxies`.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to a complete request head, and the idle bound after a request.
    pub header_read_timeout: Duration,
    /// Time from a request head to its response (a trickled body included).
    pub request_timeout: Duration,
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Slots for connections that are not WebSocket sessions.
    pub max_pending: usize,
    /// The same per client address.
    pub max_pending_per_ip: usize,
    /// Addresses exempt from the per-address bound (reverse proxies).
    pub trusted: Vec<IpNet>,
}

impl HttpLimits {
    /// The limits `cfg` sets; `trusted` are the parsed trusted proxies.
    pub fn new(cfg: &ServerConfig, trusted: Vec<IpNet>) -> Self {
        Self {
            header_read_timeout: cfg.header_read_timeout,
            request_timeout: cfg.request_timeout,
            max_header_bytes: cfg.max_header_bytes,
            max_pending: cfg.max_pending,
            max_pending_per_ip: cfg.max_pending_per_ip,
            trusted,
        }
    }
}

// ---------------------------------------------------------------------------
// Slots
// ---------------------------------------------------------------------------

struct SlotCounts {
    total: usize,
    /// Slots per client address; an address leaves the map with its last slot.
    per_ip: HashMap<IpAddr, usize>,
}

/// The table of slots (see the module header).
struct Slots {
    counts: Mutex<SlotCounts>,
    max_total: usize,
    max_per_ip: usize,
    /// From this many slots taken on, `max_per_ip` applies (three quarters
    /// of `max_total`).
    pressed_at: usize,
    trusted: Vec<IpNet>,
    /// Woken when a slot is given back while all were taken.
    freed: Notify,
    /// `switchboard_http_pending`, kept so the hot path skips the registry.
    gauge: metrics::Gauge,
}

impl Slots {
    fn new(limits: &HttpLimits) -> Self {
        Self {
            // Sized for every slot from a different address: the map then
            // never grows, nor rehashes while addresses come and go.
            counts: Mutex::new(SlotCounts {
                total: 0,
                per_ip: HashMap::with_capacity(limits.max_pending.min(1 << 16)),
            }),
            max_total: limits.max_pending,
            max_per_ip: limits.max_pending_per_ip,
            pressed_at: limits.max_pending - limits.max_pending / 4,
            trusted: limits.trusted.clone(),
            freed: Notify::new(),
            gauge: metrics::gauge!(m::HTTP_PENDING),
        }
    }

    fn full(&self) -> bool {
        self.counts.lock().total >= self.max_total
    }

    /// A slot for a connection from `ip`, or `None` when the node is pressed
    /// and `ip` holds its share. The caller makes sure one is free.
    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        let per_ip = !self.trusted.iter().any(|n| n.contains(&ip));
        let mut c = self.counts.lock();
        debug_assert!(c.total < self.max_total);
        let pressed = c.total >= self.pressed_at;
        if per_ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if pressed && *n >= self.max_per_ip {
                return None;
            }
            *n += 1;
        }
        c.total += 1;
        self.gauge.set(c.total as f64);
        drop(c);
        Some(Slot {
            slots: self.clone(),
            ip: per_ip.then_some(ip),
            pressed,
        })
    }
}

/// One taken slot, given back when dropped (with the connection task).
struct Slot {
    slots: Arc<Slots>,
    /// The address it counts against; `None` for a trusted proxy.
    ip: Option<IpAddr>,
    /// Taken while three quarters of the slots were in use: the connection
    /// gets the short head deadline.
    pressed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock();
        if c.total == self.slots.max_total {
            // The accept loop may be waiting for this one.
            self.slots.freed.notify_one();
        }
        c.total -= 1;
        if let Some(ip) = self.ip {
            if let std::collections::hash_map::Entry::Occupied(mut e) = c.per_ip.entry(ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.slots.gauge.set(c.total as f64);
    }
}

// ---------------------------------------------------------------------------
// Accept loop
// ---------------------------------------------------------------------------

/// Serves `router` on `listener` until `stop` is cancelled; then stops
/// accepting, shuts every connection down gracefully and returns once all
/// have ended. Handlers can extract `ConnectInfo<SocketAddr>` (the peer).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    serve_all(vec![(listener, router)], limits, stop).await
}

/// [`serve`] for several listeners, each with its router (the main one and
/// the doors' own). They share one budget: the pending slots
/// (`server.max_pending`, per address and in total) count the connections
/// of all of them, as the open-file budget does.
pub async fn serve_all(
    listeners: Vec<(TcpListener, Router)>,
    limits: HttpLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let shared = Shared {
        slots: Arc::new(Slots::new(&limits)),
        builder: Arc::new(builder(&limits)),
        timeouts: Timeouts {
            head: limits.header_read_timeout,
            request: limits.request_timeout,
        },
        tracker: TaskTracker::new(),
        stop,
    };
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(listener, router)| tokio::spawn(accept_loop(listener, router, shared.clone())))
        .collect();
    for l in loops {
        if let Err(e) = l.await {
            tracing::error!(error = %e, "an accept loop failed");
        }
    }
    shared.tracker.close();
    shared.tracker.wait().await;
    Ok(())
}

/// What the accept loops of one server share.
#[derive(Clone)]
struct Shared {
    slots: Arc<Slots>,
    builder: Arc<Builder<TokioExecutor>>,
    timeouts: Timeouts,
    /// Every connection of every listener, awaited at the end.
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Accepts on one listener until `stop`; its connections run on the shared
/// tracker.
async fn accept_loop(listener: TcpListener, router: Router, shared: Shared) {
    let Shared {
        slots,
        builder,
        timeouts,
        tracker,
        stop,
    } = shared;
    let mut errors = AcceptErrors::default();
    let refused_ip = metrics::counter!(m::HTTP_REFUSED, "reason" => "pending_per_ip");
    let paused = metrics::counter!(m::HTTP_ACCEPT_PAUSED);
    'serve: loop {
        // All slots taken: accept nothing until one is given back. Clients
        // wait in the kernel's accept queue (no descriptor of ours) instead
        // of being turned away: a burst is served late rather than refused.
        if slots.full() {
            paused.increment(1);
            while slots.full() {
                tokio::select! {
                    _ = stop.cancelled() => break 'serve,
                    _ = slots.freed.notified() => {}
                }
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break 'serve,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if errors.backoff(e) {
                    tokio::select! {
                        _ = stop.cancelled() => break 'serve,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                continue;
            }
        };
        let Some(slot) = slots.try_take(peer.ip()) else {
            refused_ip.increment(1);
            // Closed before anything is read: the client sees the end of
            // the stream (or a reset, if it had already sent bytes).
            drop(stream);
            continue;
        };
        // TCP_NODELAY: a relayed signal is written at once, not held by
        // Nagle's algorithm until the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let svc = ConnService {
            router: router.clone(),
            peer,
            state: Arc::new(ConnState::new(if slot.pressed {
                timeouts.head.min(PRESSED_HEAD_TIMEOUT)
            } else {
                timeouts.head
            })),
        };
        tracker.spawn(connection(
            builder.clone(),
            stream,
            svc,
            timeouts,
            stop.clone(),
            slot,
        ));
    }
}

/// hyper's settings for every connection.
fn builder(limits: &HttpLimits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer is where a request head accumulates: at this size
        // hyper answers 431 (the minimum it accepts is 8 KiB, which config
        // validation enforces).
        .max_buf_size(limits.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        // WebSocket over HTTP/2 (RFC 8441 extended CONNECT).
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Counts failed accepts and rate-limits their warning.
#[derive(Default)]
struct AcceptErrors {
    last_warn: Option<Instant>,
    /// Failures since the last warning.
    unlogged: u64,
}

impl AcceptErrors {
    /// Records `e`; true when the loop should pause before the next accept.
    fn backoff(&mut self, e: io::Error) -> bool {
        // A connection reset or aborted before it was taken: only that
        // client is affected, the next accept may succeed at once.
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return false;
        }
        let kind = match e.raw_os_error() {
            Some(libc::EMFILE) => "emfile",
            Some(libc::ENFILE) => "enfile",
            _ => "other",
        };
        metrics::counter!(m::ACCEPT_ERRORS, "kind" => kind).increment(1);
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY)
        {
            tracing::warn!(error = %e, failures = self.unlogged, "accept failed; pausing before the next");
            self.last_warn = Some(now);
            self.unlogged = 0;
        }
        true
    }
}

// ---------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------

/// The two deadlines of a connection.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// To a complete request head; the idle bound.
    head: Duration,
    /// From a head to its response.
    request: Duration,
}

/// What the connection task learns from its requests, to apply the deadlines.
struct ConnState {
    /// When the connection was accepted.
    start: Instant,
    /// Time from `start` to a complete first request head:
    /// `header_read_timeout_ms`, shorter when the node was pressed for slots.
    head_timeout: Duration,
    /// Requests whose head was complete (the service was called).
    requests: AtomicU32,
    /// Requests whose response is not produced yet.
    in_flight: AtomicU32,
    /// Milliseconds after `start` when the last response was produced.
    last_done_ms: AtomicU64,
    /// Milliseconds after `start` of the last progress while requests are in
    /// flight: the first of them starting, or any of them answered.
    busy_since_ms: AtomicU64,
    /// An HTTP/2 connection that carries a WebSocket stream: never idle.
    carrier: AtomicBool,
}

/// What the connection task does when its timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No complete request head within the timeout of the accept: close.
    Late,
    /// No request for the timeout: shut down gracefully.
    Idle,
    /// Requests in flight and no response for the request timeout (a body
    /// trickled in, a handler that hangs): close.
    Stuck,
    /// Look again then.
    Until(Instant),
}

impl ConnState {
    fn new(head_timeout: Duration) -> Self {
        Self {
            start: Instant::now(),
            head_timeout,
            requests: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
            busy_since_ms: AtomicU64::new(0),
            carrier: AtomicBool::new(false),
        }
    }

    /// Milliseconds since `start`.
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.start + Duration::from_millis(ms.load(Ordering::Acquire))
    }

    fn verdict(&self, now: Instant, t: Timeouts) -> Verdict {
        let timeout = t.head;
        if self.requests.load(Ordering::Acquire) == 0 {
            let deadline = self.start + self.head_timeout;
            return if now >= deadline {
                Verdict::Late
            } else {
                Verdict::Until(deadline)
            };
        }
        if self.carrier.load(Ordering::Acquire) {
            return Verdict::Until(now + timeout);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            let deadline = self.at(&self.busy_since_ms) + t.request;
            return if now >= deadline {
                Verdict::Stuck
            } else {
                Verdict::Until(deadline)
            };
        }
        let idle_since = self.at(&self.last_done_ms);
        if now >= idle_since + timeout {
            Verdict::Idle
        } else {
            Verdict::Until(idle_since + timeout)
        }
    }
}

/// Serves one connection with the deadlines of the module header; `slot` is
/// given back when it ends (or is handed over as a WebSocket).
async fn connection(
    builder: Arc<Builder<TokioExecutor>>,
    stream: TcpStream,
    svc: ConnService,
    t: Timeouts,
    stop: CancellationToken,
    slot: Slot,
) {
    let timeout = t.head;
    let state = svc.state.clone();
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc));
    let mut timer = pin!(tokio::time::sleep_until(state.start + state.head_timeout));
    let mut stopped = pin!(stop.cancelled());
    let mut stopping = false;
    let mut idle_shutdown = false;
    let closed: Option<&'static str> = loop {
        tokio::select! {
            r = conn.as_mut() => match r {
                Ok(()) => break None,
                Err(e) => {
                    let why = classify(&*e);
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                    break why;
                }
            },
            _ = stopped.as_mut(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = timer.as_mut() => {
                let now = Instant::now();
                match state.verdict(now, t) {
                    Verdict::Late => break Some("header_timeout"),
                    Verdict::Stuck => break Some("request_timeout"),
                    // A graceful shutdown that has not finished within
                    // another timeout (a peer that does not read): close.
                    Verdict::Idle if idle_shutdown => break None,
                    Verdict::Idle => {
                        idle_shutdown = true;
                        metrics::counter!(m::HTTP_CLOSED, "reason" => "idle").increment(1);
                        conn.as_mut().graceful_shutdown();
                        timer.as_mut().reset(now + timeout);
                    }
                    Verdict::Until(t) => timer.as_mut().reset(t),
                }
            }
        }
    };
    if let Some(reason) = closed {
        metrics::counter!(m::HTTP_CLOSED, "reason" => reason).increment(1);
    }
    drop(slot);
}

/// The `HTTP_CLOSED` reason of a connection error, if it is one we count.
fn classify(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some("header_too_large");
            }
            if h.is_timeout() {
                return Some("header_timeout");
            }
        }
        cur = err.source();
    }
    None
}

/// The per-connection service: the router, with the peer address as
/// `ConnectInfo` and the request accounting of [`ConnState`].
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Tracked;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.state.requests.fetch_add(1, Ordering::AcqRel);
        if self.state.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            let ms = self.state.now_ms();
            self.state.busy_since_ms.store(ms, Ordering::Release);
        }
        let connect = req.method() == Method::CONNECT;
        let mut router = self.router.clone();
        Tracked {
            inner: tower_service::Service::call(&mut router, req),
            state: Some(self.state.clone()),
            connect,
        }
    }
}

/// The router's future, which marks the request done when it resolves (or
/// is dropped unfinished).
struct Tracked {
    inner: RouteFuture<Infallible>,
    /// Taken when the request is marked done.
    state: Option<Arc<ConnState>>,
    /// An extended CONNECT (WebSocket over HTTP/2).
    connect: bool,
}

impl Tracked {
    fn done(&mut self, carrier: bool) {
        if let Some(state) = self.state.take() {
            if carrier {
                state.carrier.store(true, Ordering::Release);
            }
            let ms = state.now_ms();
            state.last_done_ms.store(ms, Ordering::Release);
            state.busy_since_ms.store(ms, Ordering::Release);
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Future for Tracked {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let carrier = match &res {
            Ok(r) => self.connect && r.status().is_success(),
            Err(never) => match *never {},
        };
        self.done(carrier);
        Poll::Ready(res)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.done(false);
    }
}

// ---------------------------------------------------------------------------
// Open files
// ---------------------------------------------------------------------------

/// Raises the open-file soft limit (RLIMIT_NOFILE) to the hard limit and
/// returns the soft limit in force (`u64::MAX` for unlimited). A failure to
/// raise it is logged and the current limit returned.
#[cfg(unix)]
// `rlim_t` is u64 on Linux, not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files_limit() -> u64 {
    let as_u64 = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v as u64
        }
    };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return as_u64(raised.rlim_cur);
        }
        let e = io::Error::last_os_error();
        tracing::warn!(error = %e, soft = as_u64(lim.rlim_cur), hard = as_u64(lim.rlim_max),
            "cannot raise the open-file soft limit to the hard limit");
    }
    as_u64(lim.rlim_cur)
}

/// Not unix: no limit to raise; treated as unlimited.
#[cfg(not(unix))]
pub fn raise_open_files_limit() -> u64 {
    u64::MAX
}

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    /// The open-file soft limit.
    pub limit: u64,
    /// WebSocket connections allowed: `server.max_connections`, or less when
    /// that does not fit.
    pub max_connections: usize,
}

/// Fits `max_connections + max_pending + reserved_fds` under `limit` by
/// lowering `max_connections`. An error (naming the keys) when not even one
/// WebSocket fits beside `max_pending` and `reserved_fds`: a node that can
/// hold no client is a configuration mistake, better refused at start.
pub fn plan_fds(limit: u64, cfg: &ServerConfig) -> Result<FdPlan, String> {
    let fixed = cfg.max_pending as u64 + cfg.reserved_fds as u64;
    if fixed >= limit {
        return Err(format!(
            "server.max_pending ({}) + server.reserved_fds ({}) leave no file descriptor \
             for a WebSocket under the open-file limit ({limit}); lower them or raise the \
             limit (ulimit -n)",
            cfg.max_pending, cfg.reserved_fds
        ));
    }
    let room = usize::try_from(limit - fixed).unwrap_or(usize::MAX);
    Ok(FdPlan {
        limit,
        max_connections: cfg.max_connections.min(room),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize, trusted: &[&str]) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_pending: total,
            max_pending_per_ip: per_ip,
            trusted: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn slots_are_bounded_per_address_when_pressed_and_given_back() {
        // 8 slots, pressed from 6 on, 2 per address then.
        let slots = Arc::new(Slots::new(&limits(8, 2, &[])));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Not pressed: one address may take more than its share...
        let mut held: Vec<Slot> = (0..6).map(|_| slots.try_take(a).unwrap()).collect();
        assert!(!held[5].pressed);
        // ...until three quarters are taken: then it gets no more.
        assert!(slots.try_take(a).is_none());
        // An IPv4-mapped IPv6 address is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(slots.try_take(mapped).is_none());
        // Another address gets its share.
        held.push(slots.try_take(b).unwrap());
        held.push(slots.try_take(b).unwrap());
        assert!(held[6].pressed && held[7].pressed);
        assert!(slots.full());
        held.truncate(5);
        assert!(!slots.full());
        drop(held);
        let c = slots.counts.lock();
        assert_eq!(c.total, 0);
        assert!(
            c.per_ip.is_empty(),
            "addresses leave the map with their last slot"
        );
    }

    #[test]
    fn a_trusted_proxy_is_bound_by_the_total_only() {
        let slots = Arc::new(Slots::new(&limits(3, 1, &["10.0.0.0/8"])));
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let held: Vec<Slot> = (0..3).map(|_| slots.try_take(proxy).unwrap()).collect();
        assert!(slots.full());
        drop(held);
        assert!(slots.counts.lock().per_ip.is_empty());
    }

    #[test]
    fn the_deadline_runs_from_the_accept_then_from_the_last_response() {
        let t = Timeouts {
            head: Duration::from_secs(5),
            request: Duration::from_secs(30),
        };
        let five = t.head;
        let s = ConnState::new(five);
        assert_eq!(s.verdict(s.start, t), Verdict::Until(s.start + five));
        assert_eq!(s.verdict(s.start + five, t), Verdict::Late);
        // A request in flight since 2 s: bound by the request timeout.
        s.requests.store(1, Ordering::Release);
        s.in_flight.store(1, Ordering::Release);
        s.busy_since_ms.store(2_000, Ordering::Release);
        let later = s.start + Duration::from_secs(7);
        let stuck_at = s.start + Duration::from_secs(32);
        assert_eq!(s.verdict(later, t), Verdict::Until(stuck_at));
        assert_eq!(s.verdict(stuck_at, t), Verdict::Stuck);
        // Answered at 7 s: idle from then.
        s.in_flight.store(0, Ordering::Release);
        s.last_done_ms.store(7_000, Ordering::Release);
        assert_eq!(s.verdict(later, t), Verdict::Until(later + five));
        assert_eq!(s.verdict(later + five, t), Verdict::Idle);
        s.carrier.store(true, Ordering::Release);
        assert_eq!(
            s.verdict(later + five, t),
            Verdict::Until(later + five + five)
        );
        // Accepted while pressed: a shorter first deadline, the rest as before.
        let p = ConnState::new(PRESSED_HEAD_TIMEOUT);
        assert_eq!(p.verdict(p.start + PRESSED_HEAD_TIMEOUT, t), Verdict::Late);
    }

    #[test]
    fn max_connections_is_lowered_to_fit_the_open_file_limit() {
        let cfg = ServerConfig {
            max_connections: 50_000,
            max_pending: 1_024,
            reserved_fds: 128,
            ..ServerConfig::default()
        };
        assert_eq!(plan_fds(1_048_576, &cfg).unwrap().max_connections, 50_000);
        assert_eq!(
            plan_fds(20_000, &cfg).unwrap().max_connections,
            20_000 - 1_152
        );
        assert_eq!(plan_fds(1_153, &cfg).unwrap().max_connections, 1);
        let err = plan_fds(1_152, &cfg).unwrap_err();
        assert!(
            err.contains("server.max_pending") && err.contains("server.reserved_fds"),
            "{err}"
        );
        assert_eq!(plan_fds(u64::MAX, &cfg).unwrap().max_connections, 50_000);
    }
}
