//! `loadgen`: a load generator for Switchboard's native protocol (`/ws`).
//!
//! Five scenarios, each bounded in count and time, each printing one JSON
//! summary object on stdout (human progress goes to stderr):
//!
//! - `idle`: opens N sockets, each sends `hello` and one `join`, then holds
//!   them (answering the server's pings). Reports the connect rate and, with
//!   `--server-pid`, the server's RSS before and after, i.e. RSS per connection.
//! - `relay`: P pairs; each A sends `signal`s to its B carrying a sequence
//!   number and a send timestamp; B checks order and records the one-way
//!   latency. Open-loop at `--rate` msgs/s in total, or saturating (`--rate 0`)
//!   with at most `--window` signals in flight per pair.
//! - `connect`: a connect storm: connect, `hello`, `welcome`, close, with
//!   `--concurrency` workers.
//! - `pairing`: N rendezvous workers (round robin over the URLs) each send
//!   `pair` (all at once or at `--rate`) and wait for `paired`; reports the
//!   `pair` → `paired` latency, pairings/s, the time until all are paired, and
//!   checks that every worker was paired exactly once and symmetrically.
//! - `stun`: STUN Binding requests over UDP from a few sockets, each keeping
//!   `--window` requests in flight; reports responses/s and round-trip times.
//!
//! Sockets can be bound to a range of source addresses (`--source-ips
//! 127.0.0.2-127.0.0.40`, round robin) so that tens of thousands of sockets do
//! not exhaust the ephemeral ports of one address. One process may hold at
//! most as many sockets as its open-files limit allows (20,000 here, so about
//! 19,000 connections); run several processes, each with its own source range,
//! for more (see loadtest/README.md).
//!
//! Exit status: 0 when the run was clean, 3 when it completed but saw
//! failures, losses, duplicates or reordering, 1 when it could not run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// The subprotocol that selects MessagePack binary frames.
const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";
/// Kernel clock ticks per second in /proc (USER_HZ, fixed at 100 on Linux).
const USER_HZ: f64 = 100.0;

type Ws = WebSocketStream<TcpStream>;

/// Load generator for Switchboard's native WebSocket protocol.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N sockets (hello + one join each) and hold them; report connect rate and server RSS.
    Idle(IdleArgs),
    /// P pairs exchanging signals; report throughput, loss, order and latency.
    Relay(RelayArgs),
    /// Connect storm: connect, hello, welcome, close; report rate and failures.
    Connect(ConnectArgs),
    /// Rendezvous: N workers send `pair` and wait for `paired`; report latency and check symmetry.
    Pairing(PairingArgs),
    /// STUN Binding requests over UDP at a node's STUN port; report responses/s and RTT.
    Stun(StunArgs),
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
struct Common {
    /// Target WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Several target URLs, comma-separated (overrides --url); connections are
    /// spread round robin, and in `relay` A and B of a pair sit on different URLs.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// Source addresses to bind sockets to, round robin: a range `A-B` of IPv4
    /// addresses, or a comma-separated list.
    #[arg(long)]
    source_ips: Option<String>,
    /// Server process ids whose RSS and CPU time are reported (summed), comma-separated.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Speak MessagePack (subprotocol switchboard.v1.msgpack) instead of JSON.
    #[arg(long)]
    msgpack: bool,
    /// Connections set up at once (connect storm: concurrent workers). Above
    /// the server's listen backlog (128 with tokio's default), SYNs overflow
    /// the accept queue and are retried after 1 s.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Timeout of each step (TCP connect, upgrade, welcome, joined), in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    step_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How long to hold the sockets once all are connected, in seconds.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Peers per room (socket i joins room `i / room-size`).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Wait this long after the last connect before reading the server's RSS, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Give up on the setup phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    setup_timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
struct RelayArgs {
    #[command(flatten)]
    common: Common,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Signals per second in total (spread evenly over the pairs); 0 saturates.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Sending time, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// With --rate: send signals in bursts of this many back-to-back frames
    /// (like an answer followed by trickled candidates), at the same average rate.
    #[arg(long, default_value_t = 1)]
    burst: u64,
    /// Write every signal to the socket on its own (one TCP write each, as
    /// browsers do) instead of batching what is due into one write.
    #[arg(long)]
    flush_each: bool,
    /// Padding bytes in each signal's `data` (beyond `seq` and `ts`).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Most signals in flight (sent, not yet received) per pair. Keep it below
    /// the server's `limits.outbound_queue`, or saturating closes slow receivers.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// After sending stops, wait at most this long for the last deliveries, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Before sending, measure the servers' CPU for this many seconds with every
    /// socket connected and silent (heartbeats, timers, other connected peers):
    /// `cpu_per_signal.net_us` subtracts that idle cost. 0: no baseline.
    #[arg(long, default_value_t = 0)]
    baseline_secs: u64,
    /// Read buffer per socket, in bytes (0: 16 KiB when saturating, 2 KiB at a
    /// fixed rate). tungstenite zeroes the whole buffer before every read, so
    /// at a fixed rate, where each read finds one or a few frames, a large
    /// buffer costs the generator more than the frames do.
    #[arg(long, default_value_t = 0)]
    read_buffer: usize,
}

#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to make in total.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Stop starting new connections after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// Keep every connection open until all are made, then close them all
    /// (outside the measured window): the shape of clients reconnecting after
    /// a restart. Without it each worker closes a connection (close handshake)
    /// before making the next: the shape of churn.
    #[arg(long)]
    hold: bool,
}

#[derive(Debug, Clone, Args)]
struct PairingArgs {
    #[command(flatten)]
    common: Common,
    /// Workers (an even number pairs them all).
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Pool every worker queues in.
    #[arg(long, default_value = "bench")]
    pool: String,
    /// `pair` requests per second in total; 0 sends them all at once.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// After the last `pair`, wait at most this long for the `paired`s, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// Keep listening this long after the last `paired` (to catch duplicates), in milliseconds.
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
    /// Give up on the setup phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    setup_timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
struct StunArgs {
    /// STUN responder address (ip:port, loopback).
    #[arg(long, default_value = "127.0.0.1:3478")]
    target: String,
    /// UDP sockets sending at once (one task each).
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Requests in flight per socket.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Sending time, in seconds.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// A response not seen within this many milliseconds counts as lost.
    #[arg(long, default_value_t = 200)]
    loss_ms: u64,
    /// Server process ids whose CPU time and RSS are reported (summed), comma-separated.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

// ---------------------------------------------------------------------------
// Wire messages (only the fields the generator needs).

#[derive(Serialize)]
struct Hello<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    peer_id: &'a str,
}

#[derive(Serialize)]
struct Join<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    room: &'a str,
}

#[derive(Serialize)]
struct PairOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    pool: &'a str,
}

#[derive(Serialize)]
struct SignalOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    to: &'a str,
    kind: &'static str,
    data: SignalData<'a>,
}

#[derive(Serialize)]
struct SignalData<'a> {
    seq: u64,
    ts: u64,
    pad: &'a str,
}

/// A server message, loosely: unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    data: Option<InData>,
    /// `paired`: the pairing's id.
    #[serde(default)]
    pairing_id: Option<String>,
    /// `paired`: `initiator` or `responder`.
    #[serde(default)]
    role: Option<String>,
    /// `paired`: the partner (`{peer_id, ...}`); other messages use `peer` differently.
    #[serde(default)]
    peer: Option<Value>,
}

/// The `data` of a relayed signal.
#[derive(Debug, Deserialize)]
struct InData {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    ts: u64,
}

fn encode<T: Serialize>(msgpack: bool, v: &T) -> Message {
    if msgpack {
        Message::Binary(rmp_serde::to_vec_named(v).expect("message encodes").into())
    } else {
        Message::Text(serde_json::to_string(v).expect("message encodes").into())
    }
}

/// Decodes a data frame; `None` for control frames.
fn decode(m: &Message) -> Option<Result<Incoming, String>> {
    let r = match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).map_err(|e| e.to_string()),
        Message::Binary(b) => rmp_serde::from_slice(b).map_err(|e| e.to_string()),
        _ => return None,
    };
    Some(r)
}

// ---------------------------------------------------------------------------
// Dialing.

/// A resolved target.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    addr: SocketAddr,
}

/// Opens sockets to the targets from the configured source addresses.
struct Dialer {
    targets: Vec<Target>,
    sources: Vec<IpAddr>,
    next_src: AtomicUsize,
    msgpack: bool,
    step: Duration,
    read_buf: usize,
}

fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().context("start of --source-ips range")?;
        let b: Ipv4Addr = b.trim().parse().context("end of --source-ips range")?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65_535 {
            bail!("--source-ips range must go upwards and hold at most 65,536 addresses");
        }
        Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
    } else {
        s.split(',')
            .map(|p| {
                p.trim()
                    .parse::<IpAddr>()
                    .with_context(|| format!("bad source address `{p}`"))
            })
            .collect()
    }
}

impl Dialer {
    async fn new(c: &Common, read_buf: usize) -> Result<Self> {
        let urls: Vec<String> = if c.urls.is_empty() {
            vec![c.url.clone()]
        } else {
            c.urls.iter().filter(|u| !u.is_empty()).cloned().collect()
        };
        if urls.is_empty() {
            bail!("no target URL");
        }
        let mut targets = Vec::new();
        for url in urls {
            let req = url
                .as_str()
                .into_client_request()
                .with_context(|| format!("bad URL `{url}`"))?;
            let uri = req.uri();
            if uri.scheme_str() != Some("ws") {
                bail!("only ws:// URLs are supported (`{url}`)");
            }
            let host = uri
                .host()
                .ok_or_else(|| anyhow!("URL `{url}` has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await
                .with_context(|| format!("cannot resolve `{host}`"))?
                .next()
                .ok_or_else(|| anyhow!("`{host}` resolves to nothing"))?;
            if !addr.ip().is_loopback() {
                bail!("{addr} is not a loopback address; this generator only targets this machine");
            }
            targets.push(Target { url, addr });
        }
        let sources = match &c.source_ips {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        for t in &targets {
            if sources.iter().any(|s| s.is_ipv4() != t.addr.is_ipv4()) {
                bail!(
                    "source addresses and target {} differ in IP version",
                    t.addr
                );
            }
        }
        Ok(Self {
            targets,
            sources,
            next_src: AtomicUsize::new(0),
            msgpack: c.msgpack,
            step: Duration::from_millis(c.step_timeout_ms),
            read_buf,
        })
    }

    fn urls(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.url.as_str()).collect()
    }

    /// TCP connect and WebSocket upgrade to target `ti` (modulo the target count).
    async fn dial(&self, ti: usize) -> Result<Ws, String> {
        let t = &self.targets[ti % self.targets.len()];
        let sock = if t.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io_kind("socket", &e))?;
        if !self.sources.is_empty() {
            let i = self.next_src.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            sock.set_reuseaddr(true)
                .map_err(|e| io_kind("socket", &e))?;
            sock.bind(SocketAddr::new(self.sources[i], 0))
                .map_err(|e| io_kind("bind", &e))?;
        }
        let stream = timeout(self.step, sock.connect(t.addr))
            .await
            .map_err(|_| "connect-timeout".to_string())?
            .map_err(|e| io_kind("connect", &e))?;
        let _ = stream.set_nodelay(true);
        let mut req = t
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| "bad-url".to_string())?;
        if self.msgpack {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL_MSGPACK),
            );
        }
        let cfg = WebSocketConfig::default()
            .read_buffer_size(self.read_buf)
            .write_buffer_size(16 * 1024);
        let (ws, _resp) = timeout(
            self.step,
            tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)),
        )
        .await
        .map_err(|_| "upgrade-timeout".to_string())?
        .map_err(|e| match e {
            WsError::Http(r) => format!("http-{}", r.status().as_u16()),
            WsError::Io(e) => io_kind("upgrade", &e),
            _ => "upgrade-failed".to_string(),
        })?;
        Ok(ws)
    }

    /// Sends `m` and waits for the answer of type `want`, skipping other messages.
    async fn request(&self, ws: &mut Ws, m: Message, want: &str) -> Result<(), String> {
        ws.send(m).await.map_err(|e| ws_kind("send", &e))?;
        let deadline = TokioInstant::now() + self.step;
        loop {
            let frame = match timeout(deadline - TokioInstant::now(), ws.next()).await {
                Err(_) => return Err(format!("{want}-timeout")),
                Ok(None) => return Err("closed".into()),
                Ok(Some(Err(e))) => return Err(ws_kind("read", &e)),
                Ok(Some(Ok(f))) => f,
            };
            if let Message::Close(c) = &frame {
                return Err(match c {
                    Some(c) => format!("closed-{}", u16::from(c.code)),
                    None => "closed".into(),
                });
            }
            match decode(&frame) {
                None => continue,
                Some(Err(_)) => return Err("undecodable".into()),
                Some(Ok(inc)) if inc.ty == want => return Ok(()),
                Some(Ok(inc)) if inc.ty == "error" => {
                    return Err(format!("error-{}", inc.code.unwrap_or_default()))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Dials target `ti` and sends `hello` as `peer`, waiting for `welcome`.
    async fn hello(&self, ti: usize, peer: &str) -> Result<Ws, String> {
        let mut ws = self.dial(ti).await?;
        let hello = encode(
            self.msgpack,
            &Hello {
                ty: "hello",
                peer_id: peer,
            },
        );
        self.request(&mut ws, hello, "welcome").await?;
        Ok(ws)
    }

    async fn join(&self, ws: &mut Ws, room: &str) -> Result<(), String> {
        let join = encode(self.msgpack, &Join { ty: "join", room });
        self.request(ws, join, "joined").await
    }
}

fn io_kind(step: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let k = match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset => "reset",
        K::AddrInUse => "addr-in-use",
        K::AddrNotAvailable => "addr-not-available",
        K::TimedOut => "timeout",
        K::BrokenPipe => "broken-pipe",
        K::UnexpectedEof => "eof",
        _ => {
            if e.raw_os_error() == Some(24) {
                "too-many-open-files"
            } else {
                "io"
            }
        }
    };
    format!("{step}-{k}")
}

fn ws_kind(step: &str, e: &WsError) -> String {
    match e {
        WsError::Io(io) => io_kind(step, io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => format!("{step}-closed"),
        WsError::Protocol(_) => format!("{step}-protocol"),
        _ => format!("{step}-error"),
    }
}

/// Closes a socket politely, bounded in time.
async fn close_ws(mut ws: Ws) {
    let _ = timeout(Duration::from_secs(2), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Measuring.

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process (`self` or a pid), in seconds.
fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / USER_HZ)
}

/// Summed RSS (KiB) of the server processes, when all could be read.
fn servers_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

fn servers_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(&p.to_string())).sum()
}

/// Busy CPU time of the whole machine (all cores), in seconds, from /proc/stat.
fn machine_busy_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    Some(busy as f64 / USER_HZ)
}

/// CPU usage over a window, in percent of one core (200 = two cores busy).
struct CpuWindow {
    at: Instant,
    server: Option<f64>,
    by_pid: Vec<Option<f64>>,
    me: Option<f64>,
    machine: Option<f64>,
}

impl CpuWindow {
    fn start(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            server: servers_cpu(pids),
            by_pid: pids.iter().map(|p| cpu_secs(&p.to_string())).collect(),
            me: cpu_secs("self"),
            machine: machine_busy_secs(),
        }
    }

    /// Server, generator and whole-machine CPU over the window. `others_cpu_pct`
    /// is what the rest of the machine used: a noisy neighbour shows up there.
    fn finish(&self, pids: &[u32]) -> Value {
        let secs = self.at.elapsed().as_secs_f64().max(1e-6);
        let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(((b - a) / secs * 1000.0).round() / 10.0),
            _ => None,
        };
        let server = pct(self.server, servers_cpu(pids));
        let me = pct(self.me, cpu_secs("self"));
        let machine = pct(self.machine, machine_busy_secs());
        let others = machine.map(|m| {
            ((m - server.unwrap_or(0.0) - me.unwrap_or(0.0)).max(0.0) * 10.0).round() / 10.0
        });
        let server_secs = match (self.server, servers_cpu(pids)) {
            (Some(a), Some(b)) => Some(round2(b - a)),
            _ => None,
        };
        let now_by_pid: Vec<Option<f64>> = pids.iter().map(|p| cpu_secs(&p.to_string())).collect();
        let by_pid: Vec<Option<f64>> = self
            .by_pid
            .iter()
            .zip(&now_by_pid)
            .map(|(a, b)| pct(*a, *b))
            .collect();
        let secs_by_pid: Vec<Option<f64>> = self
            .by_pid
            .iter()
            .zip(&now_by_pid)
            .map(|(a, b)| Some(round2((*b)? - (*a)?)))
            .collect();
        json!({
            "window_secs": (secs * 100.0).round() / 100.0,
            "server_cpu_secs": server_secs,
            "server_cpu_pct": server,
            "server_cpu_pct_by_pid": if pids.len() > 1 { json!(by_pid) } else { Value::Null },
            "server_cpu_secs_by_pid": if pids.len() > 1 { json!(secs_by_pid) } else { Value::Null },
            "loadgen_cpu_pct": me,
            "machine_cpu_pct": machine,
            "others_cpu_pct": if pids.is_empty() { None } else { others },
        })
    }
}

/// The soft limit on open files of this process.
fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn check_sockets(n: usize) -> Result<()> {
    if let Some(lim) = nofile_limit() {
        if n as u64 + 64 > lim {
            bail!(
                "{n} sockets need more than this process's open-files limit ({lim}) allows; \
                 run several loadgen processes with distinct --source-ips ranges"
            );
        }
    }
    Ok(())
}

/// Failure counts by kind.
#[derive(Default)]
struct Failures(Mutex<HashMap<String, u64>>);

impl Failures {
    fn add(&self, kind: impl Into<String>) {
        *self
            .0
            .lock()
            .expect("failures lock")
            .entry(kind.into())
            .or_default() += 1;
    }
    fn total(&self) -> u64 {
        self.0.lock().expect("failures lock").values().sum()
    }
    fn json(&self) -> Value {
        json!(*self.0.lock().expect("failures lock"))
    }
}

fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------
// idle

async fn idle(a: IdleArgs) -> Result<(Value, bool)> {
    check_sockets(a.conns)?;
    let c = &a.common;
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let room_size = a.room_size.max(1);
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let failures = Arc::new(Failures::default());
    let connected = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let last_done_us = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(new_hist()));

    let rss_before = servers_rss(&c.server_pid);
    eprintln!(
        "idle: {} sockets to {:?}, rooms of {room_size}, run {run}",
        a.conns,
        dialer.urls()
    );
    let start = Instant::now();
    let cpu = CpuWindow::start(&c.server_pid);
    let mut tasks = JoinSet::new();
    for i in 0..a.conns {
        let (dialer, gate, stop, failures) =
            (dialer.clone(), gate.clone(), stop.clone(), failures.clone());
        let (connected, dropped, done, last_done_us, lat) = (
            connected.clone(),
            dropped.clone(),
            done.clone(),
            last_done_us.clone(),
            lat.clone(),
        );
        let run = run.clone();
        tasks.spawn(async move {
            let setup = async {
                let _permit = gate.acquire().await.expect("gate open");
                if stop.is_cancelled() {
                    return Err("cancelled".to_string());
                }
                let t0 = Instant::now();
                let mut ws = dialer.hello(i, &format!("lg{run}-i{i}")).await?;
                lat.lock()
                    .expect("hist lock")
                    .saturating_record(micros(t0.elapsed()));
                dialer
                    .join(&mut ws, &format!("lg{run}-room{}", i / room_size))
                    .await?;
                Ok(ws)
            };
            let res = setup.await;
            done.fetch_add(1, Ordering::Relaxed);
            last_done_us.fetch_max(micros(start.elapsed()), Ordering::Relaxed);
            let mut ws = match res {
                Ok(ws) => ws,
                Err(e) => {
                    failures.add(e);
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        close_ws(ws).await;
                        return;
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        });
    }

    // Setup phase, bounded.
    let setup_deadline = Instant::now() + Duration::from_secs(a.setup_timeout_secs);
    let mut last_print = Instant::now();
    while done.load(Ordering::Relaxed) < a.conns as u64 {
        if Instant::now() >= setup_deadline {
            eprintln!("idle: setup timed out");
            stop.cancel();
            break;
        }
        sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  {:>6.1}s connected {} failed {}",
                start.elapsed().as_secs_f64(),
                connected.load(Ordering::Relaxed),
                failures.total()
            );
        }
    }
    let setup_secs = last_done_us.load(Ordering::Relaxed) as f64 / 1e6;
    let setup_cpu = cpu.finish(&c.server_pid);
    let n_ok = connected.load(Ordering::Relaxed);
    eprintln!(
        "idle: {n_ok} connected in {setup_secs:.2}s ({:.0}/s), {} failed; settling",
        n_ok as f64 / setup_secs.max(1e-6),
        failures.total()
    );
    sleep(Duration::from_millis(a.settle_ms)).await;
    let rss_after = servers_rss(&c.server_pid);
    let still = n_ok - dropped.load(Ordering::Relaxed);
    eprintln!("idle: holding {still} sockets for {}s", a.hold_secs);
    let hold_end = Instant::now() + Duration::from_secs(a.hold_secs);
    while Instant::now() < hold_end {
        sleep(Duration::from_millis(250).min(hold_end - Instant::now())).await;
    }
    let rss_end = servers_rss(&c.server_pid);
    let held = n_ok - dropped.load(Ordering::Relaxed);
    stop.cancel();
    let _ = timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if n_ok > 0 => {
            json!(round2((a.saturating_sub(b)) as f64 * 1024.0 / n_ok as f64))
        }
        _ => Value::Null,
    };
    let failed = failures.total();
    let ok = failed == 0 && held == a.conns as u64;
    let lat = lat.lock().expect("hist lock");
    Ok((
        json!({
            "scenario": "idle",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "conns": a.conns,
            "room_size": room_size,
            "connected": n_ok,
            "failed": failed,
            "failures": failures.json(),
            "held_to_end": held,
            "dropped_while_held": n_ok - held,
            "setup_secs": round2(setup_secs),
            "connects_per_sec": round2(n_ok as f64 / setup_secs.max(1e-6)),
            "hello_latency": hist_json(&lat),
            "setup_cpu": setup_cpu,
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
            "server_rss_end_kib": rss_end,
            "server_rss_per_conn_bytes": per_conn,
        }),
        ok,
    ))
}

// ---------------------------------------------------------------------------
// relay

/// State a pair's sender and receiver share.
struct Pair {
    /// Signals A has handed to its socket.
    sent: AtomicU64,
    /// Distinct signals B has received.
    delivered: AtomicU64,
    /// Permits for signals in flight: A takes one per signal, B returns it.
    window: Semaphore,
}

/// What a receiver saw.
struct RecvStats {
    hist: Histogram<u64>,
    duplicated: u64,
    reordered: u64,
    disconnected: bool,
}

/// Relay parameters shared by all tasks.
struct RelayRun {
    msgpack: bool,
    /// Per-pair interval between bursts; `None` saturates.
    interval: Option<Duration>,
    /// Signals per burst (rate mode).
    burst: u64,
    /// Write each signal to the socket on its own instead of batching.
    flush_each: bool,
    pad: String,
    clock: Instant,
    go: TokioInstant,
    deadline: TokioInstant,
    stop: CancellationToken,
    failures: Failures,
    last_recv_us: AtomicU64,
    senders_done: AtomicU64,
    disconnects: AtomicU64,
}

/// Handles a frame arriving on a sender's socket; false when the socket ended.
fn sender_frame(r: &RelayRun, m: Option<Result<Message, WsError>>) -> bool {
    match m {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
            r.failures.add("sender-disconnected");
            r.disconnects.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(Ok(m)) => {
            if let Some(Ok(inc)) = decode(&m) {
                if inc.ty == "error" {
                    r.failures
                        .add(format!("error-{}", inc.code.unwrap_or_default()));
                }
            }
            true
        }
    }
}

/// Sends pair `phase`'s signals. In rate mode, the pairs' schedules are offset
/// by `phase` (0..1) of an interval so that the total rate is smooth.
async fn sender(mut ws: Ws, pair: Arc<Pair>, to: String, phase: f64, r: Arc<RelayRun>) {
    let start = r.go + r.interval.map_or(Duration::ZERO, |iv| iv.mul_f64(phase));
    sleep_until(start).await;
    let mut seq: u64 = 0;
    let mut alive = true;
    'send: while alive {
        let now = TokioInstant::now();
        if now >= r.deadline || r.stop.is_cancelled() {
            break;
        }
        // How many signals are due now.
        let due = match r.interval {
            Some(iv) => {
                let next_at = start + iv.mul_f64((seq / r.burst) as f64);
                if next_at > now {
                    tokio::select! {
                        biased;
                        _ = r.stop.cancelled() => break 'send,
                        m = ws.next() => alive = sender_frame(&r, m),
                        _ = sleep_until(next_at.min(r.deadline)) => {}
                    }
                    continue;
                }
                let elapsed = (now - start).as_secs_f64();
                (((elapsed / iv.as_secs_f64()) as u64 + 1) * r.burst)
                    .saturating_sub(seq)
                    .clamp(1, 64.max(r.burst))
            }
            None => 64,
        };
        // Take window permits: at least one (waiting), then what is free.
        let mut got = 0;
        while got < due {
            match pair.window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    got += 1;
                }
                Err(_) => break,
            }
        }
        if got == 0 {
            tokio::select! {
                biased;
                _ = r.stop.cancelled() => break 'send,
                m = ws.next() => { alive = sender_frame(&r, m); continue 'send; }
                p = pair.window.acquire() => {
                    p.expect("window open").forget();
                    got = 1;
                }
                _ = sleep_until(r.deadline) => break 'send,
            }
        }
        for _ in 0..got {
            let msg = encode(
                r.msgpack,
                &SignalOut {
                    ty: "signal",
                    to: &to,
                    kind: "candidate",
                    data: SignalData {
                        seq,
                        ts: micros(r.clock.elapsed()),
                        pad: &r.pad,
                    },
                },
            );
            pair.sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            let res = if r.flush_each {
                ws.send(msg).await
            } else {
                ws.feed(msg).await
            };
            if res.is_err() {
                r.failures.add("send-failed");
                r.disconnects.fetch_add(1, Ordering::Relaxed);
                alive = false;
                break;
            }
        }
        if alive && ws.flush().await.is_err() {
            r.failures.add("send-failed");
            r.disconnects.fetch_add(1, Ordering::Relaxed);
            alive = false;
        }
    }
    r.senders_done.fetch_add(1, Ordering::Relaxed);
    // Keep reading (errors, pings) until the run stops.
    while alive {
        tokio::select! {
            _ = r.stop.cancelled() => break,
            m = ws.next() => alive = sender_frame(&r, m),
        }
    }
    if alive {
        close_ws(ws).await;
    }
}

async fn receiver(mut ws: Ws, pair: Arc<Pair>, r: Arc<RelayRun>) -> RecvStats {
    let mut st = RecvStats {
        hist: new_hist(),
        duplicated: 0,
        reordered: 0,
        disconnected: false,
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut max_seen: Option<u64> = None;
    loop {
        let m = tokio::select! {
            biased;
            _ = r.stop.cancelled() => break,
            m = ws.next() => m,
        };
        let m = match m {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                r.failures.add("receiver-disconnected");
                r.disconnects.fetch_add(1, Ordering::Relaxed);
                st.disconnected = true;
                return st;
            }
            Some(Ok(m)) => m,
        };
        let inc = match decode(&m) {
            None => continue,
            Some(Err(_)) => {
                r.failures.add("undecodable");
                continue;
            }
            Some(Ok(inc)) => inc,
        };
        match inc.ty.as_str() {
            "signal" => {
                let now = micros(r.clock.elapsed());
                let Some(d) = inc.data else {
                    r.failures.add("signal-without-data");
                    continue;
                };
                let (word, bit) = ((d.seq / 64) as usize, 1u64 << (d.seq % 64));
                if word >= seen.len() {
                    seen.resize(word + 1, 0);
                }
                if seen[word] & bit != 0 {
                    st.duplicated += 1;
                    continue;
                }
                seen[word] |= bit;
                if max_seen.is_some_and(|m| d.seq < m) {
                    st.reordered += 1;
                }
                max_seen = Some(max_seen.map_or(d.seq, |m| m.max(d.seq)));
                st.hist.saturating_record(now.saturating_sub(d.ts).max(1));
                pair.delivered.fetch_add(1, Ordering::Relaxed);
                pair.window.add_permits(1);
                r.last_recv_us.fetch_max(now, Ordering::Relaxed);
            }
            "error" => r
                .failures
                .add(format!("error-{}", inc.code.unwrap_or_default())),
            _ => {}
        }
    }
    close_ws(ws).await;
    st
}

async fn relay(a: RelayArgs) -> Result<(Value, bool)> {
    check_sockets(a.pairs * 2)?;
    let c = &a.common;
    if a.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let read_buf = match (a.read_buffer, a.rate) {
        (0, 0) => 16 * 1024,
        (0, _) => 2 * 1024,
        (n, _) => n,
    };
    let dialer = Arc::new(Dialer::new(c, read_buf).await?);
    let n_targets = dialer.targets.len();
    let run = run_id();
    let clock = Instant::now();
    eprintln!(
        "relay: {} pairs on {:?}, rate {}, {}s, run {run}",
        a.pairs,
        dialer.urls(),
        if a.rate == 0 {
            "saturating".to_string()
        } else {
            format!("{}/s", a.rate)
        },
        a.secs
    );

    // Setup: every B, then every A. A of pair i sits on target i, B on target i + 1.
    let failures = Failures::default();
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut setup = JoinSet::new();
    for i in 0..a.pairs {
        for (role, ti) in [("b", i + 1), ("a", i)] {
            let (dialer, gate, run) = (dialer.clone(), gate.clone(), run.clone());
            let ti = if n_targets > 1 { ti % n_targets } else { 0 };
            setup.spawn(async move {
                let _p = gate.acquire().await.expect("gate open");
                let r = dialer.hello(ti, &format!("lg{run}-{role}{i}")).await;
                (i, role, r)
            });
        }
    }
    let mut socks: Vec<(Option<Ws>, Option<Ws>)> = (0..a.pairs).map(|_| (None, None)).collect();
    let setup_deadline = TokioInstant::now() + Duration::from_secs(120);
    loop {
        match timeout(setup_deadline - TokioInstant::now(), setup.join_next()).await {
            Err(_) => {
                setup.abort_all();
                bail!("relay setup did not finish in 120 s");
            }
            Ok(None) => break,
            Ok(Some(j)) => {
                let (i, role, r) = j.context("setup task")?;
                match r {
                    Ok(ws) if role == "a" => socks[i].0 = Some(ws),
                    Ok(ws) => socks[i].1 = Some(ws),
                    Err(e) => failures.add(format!("setup-{e}")),
                }
            }
        }
    }
    let setup_failed = failures.total();
    eprintln!(
        "relay: setup done in {:.2}s, {setup_failed} failures",
        clock.elapsed().as_secs_f64()
    );

    // Idle cost of the servers with every socket connected, before any signal.
    let baseline = if a.baseline_secs > 0 && !c.server_pid.is_empty() {
        sleep(Duration::from_millis(500)).await;
        eprintln!(
            "relay: measuring the servers' idle CPU for {}s",
            a.baseline_secs
        );
        let w = CpuWindow::start(&c.server_pid);
        sleep(Duration::from_secs(a.baseline_secs)).await;
        Some(w.finish(&c.server_pid))
    } else {
        None
    };

    let go = TokioInstant::now() + Duration::from_millis(200);
    let burst = a.burst.max(1);
    let interval = if a.rate == 0 {
        None
    } else {
        Some(Duration::from_secs_f64(
            (a.pairs as u64 * burst) as f64 / a.rate as f64,
        ))
    };
    let r = Arc::new(RelayRun {
        msgpack: c.msgpack,
        interval,
        burst,
        flush_each: a.flush_each,
        pad: "x".repeat(a.payload_bytes),
        clock,
        go,
        deadline: go + Duration::from_secs(a.secs),
        stop: CancellationToken::new(),
        failures,
        last_recv_us: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
    });
    let window = a.window.clamp(1, Semaphore::MAX_PERMITS);
    let mut pairs = Vec::new();
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for (i, (sa, sb)) in socks.into_iter().enumerate() {
        let (Some(sa), Some(sb)) = (sa, sb) else {
            continue;
        };
        let pair = Arc::new(Pair {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            window: Semaphore::new(window),
        });
        pairs.push(pair.clone());
        receivers.spawn(receiver(sb, pair.clone(), r.clone()));
        let phase = i as f64 / a.pairs as f64;
        senders.spawn(sender(sa, pair, format!("lg{run}-b{i}"), phase, r.clone()));
    }
    let n_pairs = pairs.len();
    let totals = |pairs: &[Arc<Pair>]| {
        pairs.iter().fold((0u64, 0u64), |(s, d), p| {
            (
                s + p.sent.load(Ordering::Relaxed),
                d + p.delivered.load(Ordering::Relaxed),
            )
        })
    };

    sleep_until(go).await;
    let cpu = CpuWindow::start(&c.server_pid);
    let go_us = micros(clock.elapsed());
    let mut prev = (0u64, 0u64, Instant::now());
    while TokioInstant::now() < r.deadline {
        sleep(Duration::from_secs(1).min(r.deadline - TokioInstant::now())).await;
        let (s, d) = totals(&pairs);
        let dt = prev.2.elapsed().as_secs_f64().max(1e-6);
        eprintln!(
            "  {:>5.1}s sent {s} ({:.0}/s) delivered {d} ({:.0}/s) in flight {} errors {}",
            (micros(clock.elapsed()) - go_us) as f64 / 1e6,
            (s - prev.0) as f64 / dt,
            (d - prev.1) as f64 / dt,
            s.saturating_sub(d),
            r.failures.total()
        );
        prev = (s, d, Instant::now());
    }
    let cpu = cpu.finish(&c.server_pid);
    let (_, delivered_in_window) = totals(&pairs);
    let cpu_per_signal = cpu_per_signal(&cpu, baseline.as_ref(), delivered_in_window);
    // Drain: wait for the senders to stop and the last signals to arrive.
    let drain_end = TokioInstant::now() + Duration::from_secs(a.drain_secs);
    loop {
        let (s, d) = totals(&pairs);
        let senders_done = r.senders_done.load(Ordering::Relaxed) as usize == n_pairs;
        if (senders_done && d >= s) || TokioInstant::now() >= drain_end {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    r.stop.cancel();
    let mut hist = new_hist();
    let (mut duplicated, mut reordered) = (0u64, 0u64);
    let joined = timeout(Duration::from_secs(15), async {
        while let Some(j) = receivers.join_next().await {
            if let Ok(st) = j {
                hist.add(&st.hist).expect("histograms share bounds");
                duplicated += st.duplicated;
                reordered += st.reordered;
                let _ = st.disconnected;
            }
        }
        while senders.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        receivers.abort_all();
        senders.abort_all();
    }
    let (sent, delivered) = totals(&pairs);
    let lost: u64 = pairs
        .iter()
        .map(|p| {
            p.sent
                .load(Ordering::Relaxed)
                .saturating_sub(p.delivered.load(Ordering::Relaxed))
        })
        .sum();
    let recv_secs = (r.last_recv_us.load(Ordering::Relaxed).saturating_sub(go_us)) as f64 / 1e6;
    let failures_total = r.failures.total();
    let ok = lost == 0
        && duplicated == 0
        && reordered == 0
        && failures_total == 0
        && n_pairs == a.pairs
        && delivered > 0;
    Ok((
        json!({
            "scenario": "relay",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "pairs": a.pairs,
            "pairs_running": n_pairs,
            "read_buffer": read_buf,
            "target_rate": a.rate,
            "burst": burst,
            "flush_each": a.flush_each,
            "secs": a.secs,
            "payload_bytes": a.payload_bytes,
            "window": window,
            "sent": sent,
            "delivered": delivered,
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "sent_per_sec": round2(sent as f64 / a.secs.max(1) as f64),
            "delivered_per_sec": round2(delivered as f64 / recv_secs.max(1e-6)),
            "latency": hist_json(&hist),
            "failures": r.failures.json(),
            "disconnects": r.disconnects.load(Ordering::Relaxed),
            "cpu": cpu,
            "baseline_cpu": baseline,
            "cpu_per_signal": cpu_per_signal,
            "server_rss_kib": servers_rss(&c.server_pid),
        }),
        ok,
    ))
}

/// The servers' CPU time per signal delivered during the sending window: `us`
/// counts everything the servers did (idle work such as heartbeats included),
/// `net_us` first subtracts the idle rate measured by `--baseline-secs`.
fn cpu_per_signal(cpu: &Value, baseline: Option<&Value>, delivered: u64) -> Value {
    let (Some(secs), Some(window)) = (cpu["server_cpu_secs"].as_f64(), cpu["window_secs"].as_f64())
    else {
        return Value::Null;
    };
    if delivered == 0 {
        return Value::Null;
    }
    let per = |s: f64| (s * 1e6 / delivered as f64 * 100.0).round() / 100.0;
    let idle_rate = baseline
        .and_then(|b| Some(b["server_cpu_secs"].as_f64()? / b["window_secs"].as_f64()?.max(1e-6)));
    json!({
        "delivered": delivered,
        "server_cpu_secs": secs,
        "us": per(secs),
        "idle_cpu_pct": idle_rate.map(|r| (r * 1000.0).round() / 10.0),
        "net_us": idle_rate.map(|r| per((secs - r * window).max(0.0))),
    })
}

// ---------------------------------------------------------------------------
// connect

/// Closes with a close handshake and waits for the server's end of it, at
/// most 2 s; true when it ended cleanly.
async fn close_clean(mut ws: Ws) -> bool {
    timeout(Duration::from_secs(2), async {
        ws.close(None).await.is_ok()
            && loop {
                match ws.next().await {
                    Some(Ok(_)) => continue,
                    None => break true,
                    Some(Err(WsError::ConnectionClosed)) => break true,
                    Some(Err(_)) => break false,
                }
            }
    })
    .await
    .unwrap_or(false)
}

async fn connect(a: ConnectArgs) -> Result<(Value, bool)> {
    let c = &a.common;
    let workers = c.concurrency.clamp(1, a.conns.max(1));
    check_sockets(if a.hold { a.conns } else { workers })?;
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let next = Arc::new(AtomicUsize::new(0));
    let ok_count = Arc::new(AtomicU64::new(0));
    let unclean = Arc::new(AtomicU64::new(0));
    let last_done_us = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    eprintln!(
        "connect: {} connections to {:?} with {workers} workers, run {run}",
        a.conns,
        dialer.urls()
    );
    let start = Instant::now();
    let give_up = start + Duration::from_secs(a.max_secs);
    let cpu = CpuWindow::start(&c.server_pid);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (dialer, next, ok_count, unclean, last_done_us, failures, run) = (
            dialer.clone(),
            next.clone(),
            ok_count.clone(),
            unclean.clone(),
            last_done_us.clone(),
            failures.clone(),
            run.clone(),
        );
        let hold = a.hold;
        tasks.spawn(async move {
            let mut hist = new_hist();
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.conns || Instant::now() >= give_up {
                    return (hist, held);
                }
                let t0 = Instant::now();
                match dialer.hello(i, &format!("lg{run}-c{i}")).await {
                    Ok(ws) => {
                        hist.saturating_record(micros(t0.elapsed()));
                        ok_count.fetch_add(1, Ordering::Relaxed);
                        if hold {
                            held.push(ws);
                        } else if !close_clean(ws).await {
                            unclean.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => failures.add(e),
                }
                last_done_us.fetch_max(micros(start.elapsed()), Ordering::Relaxed);
            }
        });
    }
    let mut hist = new_hist();
    let mut held = Vec::new();
    let mut last_print = Instant::now();
    let hard_end = TokioInstant::now() + Duration::from_secs(a.max_secs + 30);
    loop {
        tokio::select! {
            j = tasks.join_next() => match j {
                None => break,
                Some(Ok((h, ws))) => {
                    hist.add(&h).expect("histograms share bounds");
                    held.extend(ws);
                }
                Some(Err(_)) => failures.add("worker-panicked"),
            },
            _ = sleep(Duration::from_millis(200)) => {
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    eprintln!(
                        "  {:>5.1}s ok {} failed {}",
                        start.elapsed().as_secs_f64(),
                        ok_count.load(Ordering::Relaxed),
                        failures.total()
                    );
                }
            }
            _ = sleep_until(hard_end) => {
                tasks.abort_all();
                failures.add("workers-stuck");
                break;
            }
        }
    }
    let cpu = cpu.finish(&c.server_pid);
    // Held connections close now, outside the measured window, all at once
    // (each close is bounded by close_clean's 2 s).
    let closing: Vec<_> = held.into_iter().map(close_clean).collect();
    let clean = futures_util::future::join_all(closing).await;
    unclean.fetch_add(
        clean.iter().filter(|ok| !**ok).count() as u64,
        Ordering::Relaxed,
    );
    let secs = last_done_us.load(Ordering::Relaxed) as f64 / 1e6;
    let n_ok = ok_count.load(Ordering::Relaxed);
    let failed = failures.total();
    let ok = failed == 0 && n_ok == a.conns as u64;
    Ok((
        json!({
            "scenario": "connect",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "conns": a.conns,
            "concurrency": workers,
            "hold": a.hold,
            "succeeded": n_ok,
            "failed": failed,
            "failures": failures.json(),
            "unclean_closes": unclean.load(Ordering::Relaxed),
            "secs": round2(secs),
            "connects_per_sec": round2(n_ok as f64 / secs.max(1e-6)),
            "hello_latency": hist_json(&hist),
            "cpu": cpu,
        }),
        ok,
    ))
}

// ---------------------------------------------------------------------------
// pairing

/// What one worker saw after sending `pair`.
#[derive(Default)]
struct WorkerSeen {
    /// `pair` sent, µs on the run clock.
    sent_us: Option<u64>,
    /// First `paired`: when (µs), pairing id, role, partner's peer id.
    paired: Option<(u64, String, String, String)>,
    /// `paired` messages received (more than one is a duplicate).
    paired_count: u64,
    error: Option<String>,
}

async fn pairing(a: PairingArgs) -> Result<(Value, bool)> {
    check_sockets(a.workers)?;
    let c = &a.common;
    if a.workers < 2 {
        bail!("--workers must be at least 2");
    }
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let clock = Instant::now();
    let pool = Arc::new(a.pool.clone());
    eprintln!(
        "pairing: {} workers on {:?}, pool {}, {}, run {run}",
        a.workers,
        dialer.urls(),
        a.pool,
        if a.rate == 0 {
            "all at once".to_string()
        } else {
            format!("{}/s", a.rate)
        }
    );

    // Setup: connect and hello, round robin over the targets.
    let failures = Arc::new(Failures::default());
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut setup = JoinSet::new();
    for i in 0..a.workers {
        let (dialer, gate, run) = (dialer.clone(), gate.clone(), run.clone());
        setup.spawn(async move {
            let _p = gate.acquire().await.expect("gate open");
            (i, dialer.hello(i, &format!("lg{run}-w{i}")).await)
        });
    }
    let mut socks: Vec<Option<Ws>> = (0..a.workers).map(|_| None).collect();
    let setup_deadline = TokioInstant::now() + Duration::from_secs(a.setup_timeout_secs);
    loop {
        match timeout(setup_deadline - TokioInstant::now(), setup.join_next()).await {
            Err(_) => {
                setup.abort_all();
                bail!("pairing setup did not finish in {} s", a.setup_timeout_secs);
            }
            Ok(None) => break,
            Ok(Some(j)) => {
                let (i, r) = j.context("setup task")?;
                match r {
                    Ok(ws) => socks[i] = Some(ws),
                    Err(e) => failures.add(format!("setup-{e}")),
                }
            }
        }
    }
    let setup_secs = clock.elapsed().as_secs_f64();
    let setup_failed = failures.total();
    eprintln!("pairing: setup done in {setup_secs:.2}s, {setup_failed} failures");

    // Every worker sends `pair` at its time and listens until the run stops.
    let go = TokioInstant::now() + Duration::from_millis(300);
    let go_us = micros(clock.elapsed()) + 300_000;
    let stop = CancellationToken::new();
    let paired_n = Arc::new(AtomicU64::new(0));
    let last_paired_us = Arc::new(AtomicU64::new(0));
    let last_sent_us = Arc::new(AtomicU64::new(0));
    let msgpack = c.msgpack;
    let mut tasks = JoinSet::new();
    let mut started = 0u64;
    for (i, ws) in socks.into_iter().enumerate() {
        let Some(mut ws) = ws else { continue };
        started += 1;
        let at = match a.rate {
            0 => go,
            r => go + Duration::from_secs_f64(i as f64 / r as f64),
        };
        let (stop, pool, failures) = (stop.clone(), pool.clone(), failures.clone());
        let (paired_n, last_paired_us, last_sent_us) = (
            paired_n.clone(),
            last_paired_us.clone(),
            last_sent_us.clone(),
        );
        tasks.spawn(async move {
            let mut seen = WorkerSeen::default();
            sleep_until(at).await;
            let m = encode(
                msgpack,
                &PairOut {
                    ty: "pair",
                    pool: &pool,
                },
            );
            let t = micros(clock.elapsed());
            if let Err(e) = ws.send(m).await {
                seen.error = Some(ws_kind("send", &e));
                failures.add(ws_kind("pair-send", &e));
                return (i, seen);
            }
            seen.sent_us = Some(t);
            last_sent_us.fetch_max(t, Ordering::Relaxed);
            loop {
                let m = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let m = match m {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        failures.add("disconnected");
                        seen.error = Some("disconnected".into());
                        return (i, seen);
                    }
                    Some(Ok(m)) => m,
                };
                let inc = match decode(&m) {
                    None => continue,
                    Some(Err(_)) => {
                        failures.add("undecodable");
                        continue;
                    }
                    Some(Ok(inc)) => inc,
                };
                match inc.ty.as_str() {
                    "paired" => {
                        let now = micros(clock.elapsed());
                        seen.paired_count += 1;
                        if seen.paired.is_none() {
                            let partner = inc
                                .peer
                                .as_ref()
                                .and_then(|p| p.get("peer_id"))
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string();
                            seen.paired = Some((
                                now,
                                inc.pairing_id.unwrap_or_default(),
                                inc.role.unwrap_or_default(),
                                partner,
                            ));
                            paired_n.fetch_add(1, Ordering::Relaxed);
                            last_paired_us.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    "error" => {
                        let e = format!("error-{}", inc.code.unwrap_or_default());
                        failures.add(e.clone());
                        seen.error = Some(e);
                    }
                    _ => {}
                }
            }
            close_ws(ws).await;
            (i, seen)
        });
    }

    // Wait until all (but an odd one out) are paired, or the time is up.
    sleep_until(go).await;
    let want = started - started % 2;
    let send_end = go
        + match a.rate {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(a.workers as f64 / r as f64),
        };
    let wait_end = send_end + Duration::from_secs(a.wait_secs);
    let cpu = CpuWindow::start(&c.server_pid);
    let mut last_print = Instant::now();
    while paired_n.load(Ordering::Relaxed) < want && TokioInstant::now() < wait_end {
        sleep(Duration::from_millis(5)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  {:>5.1}s paired {} of {want}, failures {}",
                (micros(clock.elapsed()).saturating_sub(go_us)) as f64 / 1e6,
                paired_n.load(Ordering::Relaxed),
                failures.total()
            );
        }
    }
    let cpu = cpu.finish(&c.server_pid);
    sleep(Duration::from_millis(a.linger_ms)).await;
    stop.cancel();
    let mut seen: Vec<Option<WorkerSeen>> = (0..a.workers).map(|_| None).collect();
    let joined = timeout(Duration::from_secs(30), async {
        while let Some(j) = tasks.join_next().await {
            if let Ok((i, s)) = j {
                seen[i] = Some(s);
            }
        }
    })
    .await;
    if joined.is_err() {
        tasks.abort_all();
        failures.add("workers-stuck");
    }

    // Checks: exactly once, symmetric.
    let peer_of = |i: usize| format!("lg{run}-w{i}");
    let index: HashMap<String, usize> = (0..a.workers).map(|i| (peer_of(i), i)).collect();
    let mut hist = new_hist();
    let mut by_pairing: HashMap<&str, Vec<usize>> = HashMap::new();
    let (mut paired, mut paired_twice, mut never_paired) = (0u64, 0u64, 0u64);
    let mut first_sent = u64::MAX;
    for (i, s) in seen.iter().enumerate() {
        let Some(s) = s else { continue };
        if let Some(t) = s.sent_us {
            first_sent = first_sent.min(t);
        }
        if s.paired_count > 1 {
            paired_twice += 1;
        }
        match (&s.paired, s.sent_us) {
            (Some((at, id, _, _)), Some(sent)) => {
                paired += 1;
                hist.saturating_record(at.saturating_sub(sent).max(1));
                by_pairing.entry(id.as_str()).or_default().push(i);
            }
            _ => never_paired += 1,
        }
    }
    let mut asymmetric = 0u64;
    for members in by_pairing.values() {
        let ok = match members.as_slice() {
            [x, y] => {
                let sx = seen[*x].as_ref().and_then(|s| s.paired.as_ref());
                let sy = seen[*y].as_ref().and_then(|s| s.paired.as_ref());
                match (sx, sy) {
                    (Some((_, _, rx, px)), Some((_, _, ry, py))) => {
                        index.get(px) == Some(y)
                            && index.get(py) == Some(x)
                            && rx != ry
                            && ["initiator", "responder"].contains(&rx.as_str())
                            && ["initiator", "responder"].contains(&ry.as_str())
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !ok {
            asymmetric += members.len() as u64;
        }
    }
    let last_paired = last_paired_us.load(Ordering::Relaxed);
    let all_secs = if paired == want && first_sent != u64::MAX {
        Some(round2(last_paired.saturating_sub(first_sent) as f64 / 1e6))
    } else {
        None
    };
    let span = last_paired.saturating_sub(first_sent.min(last_paired)) as f64 / 1e6;
    let pairings = by_pairing.len() as u64;
    // Time the generator took to write every `pair` (0 when none was sent).
    let sending_secs = last_sent_us
        .load(Ordering::Relaxed)
        .saturating_sub(first_sent) as f64
        / 1e6;
    let failed = failures.total();
    let ok = failed == 0 && paired == want && paired_twice == 0 && asymmetric == 0;
    Ok((
        json!({
            "scenario": "pairing",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "workers": a.workers,
            "connected": started,
            "pool": a.pool,
            "rate": a.rate,
            "setup_secs": round2(setup_secs),
            "pair_sending_secs": round2(sending_secs),
            "paired": paired,
            "expected_paired": want,
            "never_paired": never_paired,
            "pairings": pairings,
            "paired_twice": paired_twice,
            "asymmetric": asymmetric,
            "all_paired_secs": all_secs,
            "pairings_per_sec": round2(pairings as f64 / span.max(1e-6)),
            "pair_latency": hist_json(&hist),
            "failed": failed,
            "failures": failures.json(),
            "cpu": cpu,
            "server_rss_kib": servers_rss(&c.server_pid),
        }),
        ok,
    ))
}

// ---------------------------------------------------------------------------
// stun

/// STUN magic cookie (RFC 8489).
const STUN_COOKIE: u32 = 0x2112_A442;

/// A Binding request whose transaction id carries the send time (µs) and a counter.
fn stun_request(ts_us: u64, n: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    b[4..8].copy_from_slice(&STUN_COOKIE.to_be_bytes());
    b[8..16].copy_from_slice(&ts_us.to_be_bytes());
    b[16..20].copy_from_slice(&n.to_be_bytes());
    b
}

/// The send time in a Binding success response's transaction id, if it is one.
fn stun_response_ts(b: &[u8]) -> Option<u64> {
    if b.len() < 20 || b[0..2] != 0x0101u16.to_be_bytes() || b[4..8] != STUN_COOKIE.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(b[8..16].try_into().ok()?))
}

async fn stun(a: StunArgs) -> Result<(Value, bool)> {
    let target: SocketAddr = a.target.parse().context("--target must be ip:port")?;
    if !target.ip().is_loopback() {
        bail!("{target} is not a loopback address; this generator only targets this machine");
    }
    let window = a.window.max(1);
    let clock = Instant::now();
    let deadline = clock + Duration::from_secs(a.secs);
    let loss = Duration::from_millis(a.loss_ms.max(1));
    eprintln!(
        "stun: {} sockets, {window} in flight each, {}s at {target}",
        a.sockets, a.secs
    );
    let cpu = CpuWindow::start(&a.server_pid);
    let mut tasks = JoinSet::new();
    for _ in 0..a.sockets.max(1) {
        tasks.spawn(async move {
            let bind = if target.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(target).await?;
            let (mut sent, mut recv, mut bad) = (0u64, 0u64, 0u64);
            let mut hist = new_hist();
            let mut in_flight = 0usize;
            let mut buf = [0u8; 1500];
            let mut n = 0u32;
            while Instant::now() < deadline {
                while in_flight < window {
                    n = n.wrapping_add(1);
                    sock.send(&stun_request(micros(clock.elapsed()), n)).await?;
                    sent += 1;
                    in_flight += 1;
                }
                match timeout(loss, sock.recv(&mut buf)).await {
                    Err(_) => in_flight = 0, // the outstanding ones are lost
                    Ok(r) => {
                        let len = r?;
                        match stun_response_ts(&buf[..len]) {
                            Some(ts) => {
                                recv += 1;
                                hist.saturating_record(
                                    micros(clock.elapsed()).saturating_sub(ts).max(1),
                                );
                            }
                            None => bad += 1,
                        }
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
            }
            // Drain the last answers (also late ones of a window given up on).
            while recv < sent {
                match timeout(loss, sock.recv(&mut buf)).await {
                    Ok(Ok(len)) => {
                        if stun_response_ts(&buf[..len]).is_some() {
                            recv += 1;
                        } else {
                            bad += 1;
                        }
                    }
                    _ => break,
                }
            }
            Ok::<_, std::io::Error>((sent, recv, bad, hist))
        });
    }
    let (mut sent, mut recv, mut bad) = (0u64, 0u64, 0u64);
    let mut hist = new_hist();
    let mut errors = Vec::new();
    while let Some(j) = tasks.join_next().await {
        match j {
            Ok(Ok((s, r, b, h))) => {
                sent += s;
                recv += r;
                bad += b;
                hist.add(&h).expect("histograms share bounds");
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let cpu = cpu.finish(&a.server_pid);
    let lost = sent.saturating_sub(recv);
    let ok = errors.is_empty() && bad == 0 && recv > 0;
    Ok((
        json!({
            "scenario": "stun",
            "ok": ok,
            "target": target.to_string(),
            "sockets": a.sockets,
            "window": window,
            "secs": a.secs,
            "sent": sent,
            "responses": recv,
            "lost": lost,
            "loss_pct": round2(lost as f64 * 100.0 / sent.max(1) as f64),
            "bad_responses": bad,
            "responses_per_sec": round2(recv as f64 / a.secs.max(1) as f64),
            "rtt": hist_json(&hist),
            "errors": errors,
            "cpu": cpu,
            "server_rss_kib": servers_rss(&a.server_pid),
        }),
        ok,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.scenario {
            Scenario::Idle(a) => idle(a).await,
            Scenario::Relay(a) => relay(a).await,
            Scenario::Connect(a) => connect(a).await,
            Scenario::Pairing(a) => pairing(a).await,
            Scenario::Stun(a) => stun(a).await,
        }
    });
    // Sockets still held by aborted tasks are dropped here, bounded.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok((summary, ok)) => {
            println!("{summary}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
