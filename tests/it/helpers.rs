//! Fixtures shared by every integration test: a real `switchboard` process
//! per test ([`TestNode`]), a WebSocket client ([`Client`]), and HTTP and
//! Prometheus helpers.
//!
//! Every wait is bounded in time, and waits on an event (a log line, a frame,
//! a process exit) wherever one exists; where none does (a metric, a probe
//! turning false), a bounded poll stands in. Nothing is printed unless
//! `TEST_LOG` is set, except a failed test's node log, which is printed when
//! the [`TestNode`] is dropped during the panic.

#![allow(dead_code)] // each test module uses a different part of the toolbox

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a single expected event may take before the test fails:
/// generous, because the suite runs many nodes at once on a shared machine
/// (functional tests are not timing gates).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to bind and log its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The MessagePack subprotocol.
pub const MSGPACK: &str = "switchboard.v1.msgpack";
/// The JSON subprotocol.
pub const JSON: &str = "switchboard.v1.json";

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn test_log() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

/// The root of the repository (for fixtures).
pub fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------
// Process fixture
// ---------------------------------------------------------------------------

/// The last lines a node printed, and a condition variable to wait on new ones.
#[derive(Default)]
struct LogBuf {
    lines: Mutex<LogLines>,
    grew: Condvar,
}

#[derive(Default)]
struct LogLines {
    tail: VecDeque<String>,
    /// Total lines seen (the tail keeps only the last `LOG_TAIL`).
    seen: usize,
    /// Both pipes reached end of file.
    closed: usize,
}

const LOG_TAIL: usize = 2000;

impl LogBuf {
    fn push(&self, tag: &str, line: String) {
        if test_log() {
            eprintln!("[{tag}] {line}");
        }
        let mut l = self.lines.lock().unwrap();
        if l.tail.len() == LOG_TAIL {
            l.tail.pop_front();
        }
        l.tail.push_back(line);
        l.seen += 1;
        drop(l);
        self.grew.notify_all();
    }

    fn close(&self) {
        self.lines.lock().unwrap().closed += 1;
        self.grew.notify_all();
    }

    fn dump(&self) -> String {
        let l = self.lines.lock().unwrap();
        l.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Reads `r` line by line into `log` until end of file (or a read error).
/// Runs on its own thread for the child's whole life, so its pipe never fills.
fn drain<R: Read>(r: R, tag: String, log: Arc<LogBuf>, mut on_line: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
                on_line(&line);
                log.push(&tag, line);
            }
        }
    }
    log.close();
}

/// Removes ANSI colour escapes (`ESC [ ... letter`), in case a log line carries them.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address in a `listening on ADDR` log line (text or JSON format).
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A command for the binary with a clean environment: no inherited
/// `SWITCHBOARD_*` or `RUST_LOG` (either would change what is under test),
/// no colours, the working directory `dir`.
pub fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the binary to completion (bounded by `timeout`) and returns its output.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = command(dir.path(), args, env)
        .spawn()
        .expect("spawn switchboard");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`switchboard {}` did not exit within {timeout:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// One running `switchboard` process, killed when dropped.
pub struct TestNode {
    child: Child,
    addr: SocketAddr,
    log: Arc<LogBuf>,
    /// The working directory (empty, so no `config/default.toml` is read);
    /// tests may put files here (see [`TestNode::dir`]).
    dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts the binary on `127.0.0.1:0` with `env` (`SWITCHBOARD_<SECTION>__<KEY>`)
    /// and waits until it logs its address.
    pub fn spawn(env: &[(&str, &str)]) -> TestNode {
        Self::spawn_with_args(&[], env)
    }

    /// As [`TestNode::spawn`], with command-line arguments (`--config FILE`).
    pub fn spawn_with_args(args: &[&str], env: &[(&str, &str)]) -> TestNode {
        Self::spawn_in(tempfile::tempdir().expect("temp dir"), args, env)
    }

    /// As [`TestNode::spawn`], with the process's open-file limit (soft and
    /// hard, so the node cannot raise it) set to `limit`.
    pub fn spawn_with_open_files(limit: u64, env: &[(&str, &str)]) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in_with(dir, &[], env, |cmd| limit_open_files(cmd, limit))
    }

    /// As [`TestNode::spawn_with_args`], in a prepared working directory.
    pub fn spawn_in(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> TestNode {
        Self::spawn_in_with(dir, args, env, |_| {})
    }

    /// As [`TestNode::spawn_in`], with `tweak` applied to the command.
    pub fn spawn_in_with(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut Command),
    ) -> TestNode {
        // Loopback and port 0 for every socket the node opens (HTTP and the
        // STUN responder), so tests run in parallel; `env` may override these.
        let mut all: Vec<(&str, &str)> = vec![
            ("SWITCHBOARD_SERVER__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_STUN__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_STUN__LISTEN_V6", ""),
            ("SWITCHBOARD_LOG__LEVEL", "info"),
        ];
        all.extend_from_slice(env);
        let mut cmd = command(dir.path(), args, &all);
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn switchboard");
        let log = Arc::new(LogBuf::default());
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let pid = child.id();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                drain(stdout, format!("{pid} out"), log, |line| {
                    if let Some(addr) = tx.as_ref().and_then(|_| parse_listening(line)) {
                        let _ = tx.take().unwrap().send(addr);
                    }
                });
            });
        }
        {
            let log = log.clone();
            std::thread::spawn(move || drain(stderr, format!("{pid} err"), log, |_| {}));
        }
        let addr = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "node did not log `listening on` ({e:?}; exit status {status:?}); its log:\n{}",
                    log.dump()
                );
            }
        };
        // A node bound to every interface (`0.0.0.0:0`, to test what that
        // changes) is still reached over loopback only.
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        assert!(addr.ip().is_loopback(), "node bound {addr}, not loopback");
        TestNode {
            child,
            addr,
            log,
            dir,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address a door's own listener is bound to, by its configuration
    /// key (`doors.dashboard.listen`), from the node's `KEY: listening at
    /// ADDR` line (printed before the main listener's, so already there).
    pub fn door_addr(&self, key: &str) -> SocketAddr {
        let needle = format!("{key}: listening at ");
        let line = self.wait_log(&needle, Duration::from_secs(1));
        let rest = &line[line.find(&needle).unwrap() + needle.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
            .unwrap_or(rest.len());
        rest[..end].parse().expect("a door address")
    }

    /// The working directory of the process.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://ADDR{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL (a crash, no goodbye).
    pub fn sigkill(&self) {
        self.signal("KILL");
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit (bounded); panics with its log on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return st;
            }
            if Instant::now() > deadline {
                panic!(
                    "node did not exit within {timeout:?}; its log:\n{}",
                    self.log.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The captured log (stdout and stderr, interleaved by arrival), last lines only.
    pub fn log(&self) -> String {
        self.log.dump()
    }

    /// Waits until a log line containing `needle` has been printed (since start).
    /// Blocks the calling thread; use it where nothing else must run meanwhile,
    /// or through [`TestNode::wait_log_async`].
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut l = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = l.tail.iter().find(|s| s.contains(needle)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline || l.closed == 2 {
                drop(l);
                panic!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log.dump()
                );
            }
            l = self.log.grew.wait_timeout(l, deadline - now).unwrap().0;
        }
    }

    /// [`TestNode::wait_log`] without blocking the async runtime.
    pub async fn wait_log_async(&self, needle: &str, timeout: Duration) -> String {
        let log = self.log.clone();
        let needle = needle.to_string();
        let deadline = Instant::now() + timeout;
        tokio::task::spawn_blocking(move || {
            let mut l = log.lines.lock().unwrap();
            loop {
                if let Some(line) = l.tail.iter().find(|s| s.contains(&needle)) {
                    return Ok(line.clone());
                }
                let now = Instant::now();
                if now >= deadline || l.closed == 2 {
                    return Err(needle);
                }
                l = log.grew.wait_timeout(l, deadline - now).unwrap().0;
            }
        })
        .await
        .unwrap()
        .unwrap_or_else(|needle| {
            panic!(
                "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                self.log.dump()
            )
        })
    }

    /// Connects a JSON client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connects a JSON client and sends `hello` for `peer`.
    pub async fn peer(&self, peer: &str) -> Client {
        let mut c = self.client().await;
        c.hello(peer).await;
        c
    }

    /// GET `path`; returns the status and the body parsed as JSON (`Value::Null` when it is not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_with(path, &[]).await
    }

    /// GET `path` with extra headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let (status, body) = self.get_text_with(path, headers).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// GET `path`; returns the status and the raw body.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        self.get_text_with(path, &[]).await
    }

    async fn get_text_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = http_client().get(self.http(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("response body"))
    }

    /// A WebSocket upgrade request made with a plain HTTP client, so a refusal's
    /// status and JSON body can be read whole.
    pub async fn raw_upgrade(&self) -> (u16, Value) {
        self.get_with(
            "/ws",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        )
        .await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() && !test_log() {
            eprintln!(
                "---- log of the node at {} (pid {}) ----\n{}\n---- end of log ----",
                self.addr,
                self.child.id(),
                self.log.dump()
            );
        }
    }
}

/// Sets the open-file limit (RLIMIT_NOFILE, soft and hard) of the process
/// `cmd` starts.
pub fn limit_open_files(cmd: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The number of open file descriptors of process `pid`.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc fd")
        .count()
}

/// A fresh HTTP client: no proxy (loopback only), no pooled connections (a
/// pooled connection would outlive a draining node's listener), bounded.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(TIMEOUT)
        .build()
        .expect("reqwest client")
}

/// Awaits `fut` for at most [`TIMEOUT`]; panics naming `what` otherwise.
/// For network calls that have no timeout of their own (a WebSocket
/// handshake, an HTTP/2 request), so that no test can hang.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {TIMEOUT:?}"))
}

/// A TCP connection to `addr`, bounded by [`TIMEOUT`] (a full accept queue
/// would otherwise keep a connect waiting for minutes).
pub async fn tcp_connect(addr: SocketAddr) -> TcpStream {
    within(&format!("connect to {addr}"), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Splits `name{a="x",b="y"}` into the name and its labels.
fn parse_series(s: &str) -> (String, Vec<(String, String)>) {
    let Some(open) = s.find('{') else {
        return (s.trim().to_string(), Vec::new());
    };
    let name = s[..open].to_string();
    let body = s[open + 1..].trim_end_matches('}');
    let mut labels = Vec::new();
    let mut rest = body;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let after = after.strip_prefix('"').unwrap_or(after);
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key, value));
        rest = &after[end..];
    }
    (name, labels)
}

/// Sums the samples in a Prometheus text exposition that match `query`: a
/// metric name with optional labels, e.g.
/// `switchboard_disconnects_total{reason="slow-consumer"}`. A sample matches
/// when its name is equal and it carries every label of the query. Absent
/// series count as 0.
pub fn sum_samples(text: &str, query: &str) -> f64 {
    let (qname, qlabels) = parse_series(query);
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(split) = line.rfind(' ') else {
            continue;
        };
        let (series, value) = (&line[..split], line[split + 1..].trim());
        let (name, labels) = parse_series(series);
        if name != qname {
            continue;
        }
        if qlabels.iter().all(|q| labels.contains(q)) {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// The current value of a metric on `node` (see [`sum_samples`]).
pub async fn metric(node: &TestNode, query: &str) -> f64 {
    let (status, text) = node.get_text("/metrics").await;
    assert_eq!(status, 200, "/metrics answered {status}");
    sum_samples(&text, query)
}

/// Polls a metric until it reaches `at_least` (bounded by `timeout`); returns its value.
pub async fn wait_metric(node: &TestNode, query: &str, at_least: f64, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = metric(node, query).await;
        if v >= at_least {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{query} stayed at {v} (< {at_least}) for {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the next data frame was.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The decoded message.
    pub msg: Value,
    /// True for a binary (MessagePack) frame, false for text (JSON).
    pub binary: bool,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// A close frame with this code and reason.
    Close(u16, String),
    /// A close frame without a code.
    CloseNoCode,
    /// End of stream or a transport error (reset) without a close frame.
    Eof(String),
}

/// A WebSocket client of the native protocol.
pub struct Client {
    ws: Ws,
    /// The client's own address (what the server should report as `observed_addr`).
    pub local_addr: SocketAddr,
    /// How long each `recv` waits.
    pub timeout: Duration,
    next_id: u64,
}

impl Client {
    /// Connects to `url` (panics on failure).
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url, None)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    /// Connects to `url` offering the subprotocol `proto`.
    pub async fn connect_with_protocol(url: &str, proto: &str) -> Client {
        Self::try_connect(url, Some(proto))
            .await
            .unwrap_or_else(|e| panic!("connect {url} ({proto}): {e}"))
    }

    /// Connects, returning the handshake error (for refusals: `Error::Http`).
    pub async fn try_connect(url: &str, proto: Option<&str>) -> Result<Client, tungstenite::Error> {
        let mut req = url.into_client_request()?;
        if let Some(p) = proto {
            req.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        // `true`: TCP_NODELAY, as browsers do, so the client adds no Nagle delay.
        let (ws, resp) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::connect_async_with_config(req, None, true),
        )
        .await
        .unwrap_or_else(|_| panic!("connect {url}: no handshake within {TIMEOUT:?}"))?;
        if let Some(p) = proto {
            let got = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok());
            assert_eq!(got, Some(p), "server did not select subprotocol {p}");
        }
        let local_addr = match ws.get_ref() {
            MaybeTlsStream::Plain(s) => s.local_addr().expect("local addr"),
            _ => unreachable!("tests use plain ws://"),
        };
        Ok(Client {
            ws,
            local_addr,
            timeout: TIMEOUT,
            next_id: 0,
        })
    }

    /// A fresh correlation id (a string, unique on this client).
    pub fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("c{}", self.next_id)
    }

    /// Sends one WebSocket message.
    pub async fn send(&mut self, msg: Message) {
        tokio::time::timeout(self.timeout, self.ws.send(msg))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends one WebSocket message; the error when the connection is gone.
    pub async fn try_send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        tokio::time::timeout(self.timeout, self.ws.send(msg))
            .await
            .expect("send timed out")
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send(Message::text(v.to_string())).await;
    }

    /// Sends a MessagePack binary frame (structs as maps).
    pub async fn send_msgpack(&mut self, v: Value) {
        let bytes = rmp_serde::to_vec_named(&v).expect("encode msgpack");
        self.send(Message::binary(bytes)).await;
    }

    /// Sends a text frame as is.
    pub async fn send_raw_text(&mut self, s: &str) {
        self.send(Message::text(s.to_string())).await;
    }

    /// Sends a binary frame as is.
    pub async fn send_raw_binary(&mut self, b: &[u8]) {
        self.send(Message::binary(b.to_vec())).await;
    }

    /// The next raw WebSocket message other than ping/pong, or `None` at end
    /// of stream; an error is returned as is. Bounded by `self.timeout`.
    async fn next_raw(&mut self, within: Duration) -> Option<Result<Message, tungstenite::Error>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing received within {within:?}"));
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                other => return other,
            }
        }
    }

    /// The next data message, decoded (text as JSON, binary as MessagePack).
    pub async fn recv_frame(&mut self) -> Received {
        match self.next_raw(self.timeout).await {
            Some(Ok(Message::Text(t))) => Received {
                msg: serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {t}")),
                binary: false,
            },
            Some(Ok(Message::Binary(b))) => Received {
                msg: rmp_serde::from_slice(&b)
                    .unwrap_or_else(|e| panic!("binary frame is not MessagePack ({e}): {b:?}")),
                binary: true,
            },
            Some(Ok(Message::Close(f))) => panic!("expected a message, got close {f:?}"),
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
            Some(Err(e)) => panic!("expected a message, got error {e}"),
            None => panic!("expected a message, got end of stream"),
        }
    }

    /// The next text frame as sent by the server (not re-serialized).
    pub async fn recv_text(&mut self) -> String {
        match self.next_raw(self.timeout).await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next binary frame as sent by the server (not decoded).
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.next_raw(self.timeout).await {
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next data message, decoded.
    pub async fn recv(&mut self) -> Value {
        self.recv_frame().await.msg
    }

    /// The next message, which must have `type == ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], ty, "expected a `{ty}`, got {v}");
        v
    }

    /// The next message must be an `error` with `code`; returns it.
    pub async fn recv_error(&mut self, code: &str) -> Value {
        let v = self.recv_type("error").await;
        assert_eq!(v["code"], code, "expected error code {code}, got {v}");
        assert!(v["message"].is_string(), "error without message: {v}");
        v
    }

    /// Sends `hello` with `peer_id` and returns the `welcome`.
    pub async fn hello(&mut self, peer_id: &str) -> Value {
        self.hello_with(json!({"type": "hello", "peer_id": peer_id}))
            .await
    }

    /// Sends a `hello` message as given (adding an `id`), returns the `welcome`.
    pub async fn hello_with(&mut self, mut hello: Value) -> Value {
        let id = self.fresh_id();
        hello["id"] = json!(id);
        self.send_json(hello).await;
        let w = self.recv_type("welcome").await;
        assert_eq!(w["id"], json!(id), "welcome does not echo the id: {w}");
        w
    }

    /// Joins `room` (waiting for `joined`), returns the `joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        self.join_with(json!({"type": "join", "room": room})).await
    }

    /// Sends a `join` message as given (adding an `id`), returns the `joined`.
    pub async fn join_with(&mut self, mut join: Value) -> Value {
        let id = self.fresh_id();
        join["id"] = json!(id);
        self.send_json(join.clone()).await;
        let j = self.recv_type("joined").await;
        assert_eq!(j["id"], json!(id), "joined does not echo the id: {j}");
        assert_eq!(j["room"], join["room"], "joined names another room: {j}");
        j
    }

    /// Round-trips an application `ping`: the next message must be its `pong`.
    /// Proves the socket is alive and that nothing else was queued before it.
    pub async fn ping(&mut self) {
        let id = self.fresh_id();
        self.send_json(json!({"type": "ping", "id": id})).await;
        let p = self.recv().await;
        assert_eq!(
            p,
            json!({"type": "pong", "id": id}),
            "expected the pong for {id}"
        );
    }

    /// As [`Client::ping`] in MessagePack; the pong must come as a binary frame.
    pub async fn ping_msgpack(&mut self) {
        let id = self.fresh_id();
        self.send_msgpack(json!({"type": "ping", "id": id})).await;
        let p = self.recv_frame().await;
        assert!(p.binary, "pong to a MessagePack client must be binary");
        assert_eq!(p.msg, json!({"type": "pong", "id": id}));
    }

    /// Reads for `dur` (answering pings), returning every data message seen.
    /// Fails if the connection ends meanwhile.
    pub async fn collect_for(&mut self, dur: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return got,
                Ok(Some(Ok(Message::Text(t)))) => got.push(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Binary(b)))) => got.push(rmp_serde::from_slice(&b).unwrap()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(other) => panic!("connection ended while reading: {other:?}"),
            }
        }
    }

    /// The next frame must be a close frame; returns its code and reason.
    /// Pings are skipped; a data message or end of stream fails the test.
    pub async fn expect_close(&mut self) -> (u16, String) {
        match self.next_raw(self.timeout).await {
            Some(Ok(Message::Close(Some(f)))) => (u16::from(f.code), f.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Reads until a close frame, allowing only data messages of the given
    /// types before it; returns the close code and reason and those messages.
    pub async fn expect_close_after(&mut self, allowed: &[&str]) -> ((u16, String), Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.next_raw(self.timeout).await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return ((u16::from(f.code), f.reason.to_string()), seen)
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    assert!(
                        allowed.iter().any(|a| v["type"] == *a),
                        "expected a close frame (after {allowed:?}), got {v}"
                    );
                    seen.push(v);
                }
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Reads until the connection ends (bounded by `within`), skipping data
    /// messages; returns how it ended and how many data messages were skipped.
    pub async fn expect_end(&mut self, within: Duration) -> (Ending, usize) {
        let deadline = tokio::time::Instant::now() + within;
        let mut skipped = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_raw(left).await {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => skipped += 1,
                Some(Ok(Message::Close(Some(f)))) => {
                    return (
                        Ending::Close(u16::from(f.code), f.reason.to_string()),
                        skipped,
                    )
                }
                Some(Ok(Message::Close(None))) => return (Ending::CloseNoCode, skipped),
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(e)) => return (Ending::Eof(e.to_string()), skipped),
                None => return (Ending::Eof("end of stream".into()), skipped),
            }
        }
    }

    /// Closes with a close frame carrying `code`, then waits for the echo.
    pub async fn close_with(mut self, code: u16) {
        let _ = tokio::time::timeout(
            self.timeout,
            self.ws.close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            })),
        )
        .await;
        let _ = tokio::time::timeout(self.timeout, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Closes the connection from the client side (close frame, then waits for the echo).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(
            self.timeout,
            self.ws.close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })),
        )
        .await;
        // Drain until the server's close echo or end of stream.
        let _ = tokio::time::timeout(self.timeout, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// Raw sockets and process memory (attacks a well-behaved client cannot make)
// ---------------------------------------------------------------------------

/// The resident set of process `pid` (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).expect("VmRSS in /proc/<pid>/status")
}

fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the RSS of `pid` every 20 ms on its own thread until the returned
/// guard is stopped; [`RssSampler::stop`] gives the highest value seen, in KiB.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        // Bounded by the stop flag or the process's end (a failed test kills it).
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while let Some(rss) = try_rss_kib(pid) {
                peak = peak.max(rss);
                if s.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling; the peak RSS in KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

/// A client frame (masked, as a client must), or unmasked when `masked` is false.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x5a, 0x13, 0xc7, 0x88];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let bit = if masked { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        f.push(bit | n as u8);
    } else if n <= 0xffff {
        f.push(bit | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(bit | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A WebSocket client on a plain blocking socket, for frames no library
/// sends (unmasked, invalid UTF-8) and for clients that never read.
pub struct RawWs {
    /// The socket (reads and writes time out after [`TIMEOUT`]).
    pub stream: std::net::TcpStream,
}

impl RawWs {
    /// Upgrades `GET path` on `addr` (expects 101).
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let stream = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).expect("tcp connect");
        Self::upgrade(stream, addr, path)
    }

    /// As [`RawWs::connect`], with a receive buffer of `rcvbuf` bytes set
    /// before connecting (so the window is small from the start: shrinking
    /// it later makes the kernel drop segments and back off for seconds).
    pub fn connect_with_rcvbuf(addr: SocketAddr, path: &str, rcvbuf: usize) -> RawWs {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        sock.connect_timeout(&addr.into(), TIMEOUT)
            .expect("tcp connect");
        Self::upgrade(sock.into(), addr, path)
    }

    fn upgrade(mut stream: std::net::TcpStream, addr: SocketAddr, path: &str) -> RawWs {
        use std::io::Write;
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).expect("send upgrade");
        // Read the response head byte by byte, so no frame byte is consumed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut b).expect("read upgrade response");
            head.push(b[0]);
            assert!(head.len() < 4096, "response head too long");
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        RawWs { stream }
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("write to the node");
    }

    /// Reads one server frame: (opcode, payload). `None` at end of stream.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 2];
        self.stream.read_exact(&mut h).ok()?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.stream.read_exact(&mut l).ok()?;
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                self.stream.read_exact(&mut l).ok()?;
                u64::from_be_bytes(l)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        self.stream.read_exact(&mut payload).ok()?;
        Some((h[0] & 0x0f, payload))
    }

    /// Sends one masked text frame holding `v` as JSON.
    pub fn send_json(&mut self, v: &Value) {
        self.send(&client_frame(true, 1, v.to_string().as_bytes(), true));
    }

    /// The next data frame, decoded (text as JSON, binary as MessagePack).
    /// Pings are skipped and not answered (this client never writes on its
    /// own); a close frame or the end of the stream fails the test.
    pub fn recv_json(&mut self) -> Value {
        for _ in 0..10_000 {
            match self.read_frame() {
                Some((1, p)) => return serde_json::from_slice(&p).expect("a JSON text frame"),
                Some((2, p)) => return rmp_serde::from_slice(&p).expect("a MessagePack frame"),
                Some((9 | 10, _)) => continue,
                other => panic!("expected a data frame, got {other:?}"),
            }
        }
        panic!("no data frame within 10,000 frames");
    }

    /// Reads frames until a close frame; returns its code and reason
    /// (`None`: the stream ended first). Data frames before it are skipped.
    pub fn read_close(&mut self) -> Option<(u16, String)> {
        for _ in 0..10_000 {
            let (op, p) = self.read_frame()?;
            if op == 8 {
                let code = u16::from_be_bytes([p[0], p[1]]);
                return Some((code, String::from_utf8_lossy(&p[2..]).into_owned()));
            }
        }
        panic!("no close frame within 10,000 frames");
    }
}

/// Records that (part of) a test did not run here, and why: printed as a
/// `SKIPPED` line, and appended to the file named by `TEST_SKIPS_FILE` when
/// it is set (tests/run-all.sh sets it and lists every skip at the end, so a
/// skip is never silent in the summary).
pub fn skipped(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
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

/// True when `s` is a UUID in its hyphenated form.
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok_and(|u| u.hyphenated().to_string() == s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        assert_eq!(
            parse_listening("2026-01-01T00:00:00Z  INFO switchboard: listening on 127.0.0.1:4321"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(
            parse_listening(r#"{"fields":{"message":"listening on [::1]:80"}}"#),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(strip_ansi("\u{1b}[32mINFO\u{1b}[0m x"), "INFO x");
    }

    #[test]
    fn sums_prometheus_samples() {
        let text = "# HELP x y\n\
            switchboard_disconnects_total{reason=\"slow-consumer\"} 2\n\
            switchboard_disconnects_total{reason=\"client-closed\"} 5\n\
            switchboard_bus_published_total{kind=\"signal\",outcome=\"ok\"} 3\n\
            switchboard_connections 1\n";
        let q = |s| sum_samples(text, s);
        assert_eq!(
            q(r#"switchboard_disconnects_total{reason="slow-consumer"}"#),
            2.0
        );
        assert_eq!(q("switchboard_disconnects_total"), 7.0);
        assert_eq!(q(r#"switchboard_bus_published_total{outcome="ok"}"#), 3.0);
        assert_eq!(q("switchboard_connections"), 1.0);
        assert_eq!(q("switchboard_missing"), 0.0);
    }
}
