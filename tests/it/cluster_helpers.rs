//! A real redis-server per test, and node processes clustered through it.
//!
//! Each test gets its own redis-server (no Docker here, so no
//! testcontainers), started with persistence off and killed on drop, and its
//! own key prefix, so nothing leaks between tests.
//!
//! Ports: redis-server and nginx cannot be handed a bound socket, and cannot
//! report a port the system picked. So a port is chosen below the system's
//! ephemeral range (where nodes bound to port 0 and every outgoing
//! connection take theirs, so none of those can take it meanwhile), and the
//! server is started on it; if something else got the port first, the
//! server fails to bind and exits, and another port is tried. "Ready" means
//! *this* server answers: redis-server's `INFO server` names the child's
//! process id, nginx answers a location with a token of this instance.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::TestNode;

/// A redis-server child process on 127.0.0.1.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Holds the port while the server is stopped, so that nothing takes it
    /// before [`RedisServer::restart`].
    held: Option<TcpListener>,
}

/// Ports tried for servers that must bind a port themselves: below the
/// ephemeral range (32768-60999 by default on Linux).
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port in [`PORTS`] that is free right now (bound and released).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = PORTS.start + rand::random::<u16>() % (PORTS.end - PORTS.start);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?} after 1000 tries");
}

/// Waits (bounded) until `ready` holds or `child` exits; true when ready.
fn wait_started(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ready() {
            return true;
        }
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisServer {
    /// Starts a redis-server on a free port and waits until it answers
    /// (this server, by its process id); another port if that one was taken.
    pub fn start() -> Self {
        for _ in 0..20 {
            let mut r = Self {
                port: free_port(),
                child: None,
                held: None,
            };
            if r.try_start() {
                return r;
            }
        }
        panic!("redis-server did not start on any of 20 ports");
    }

    /// The `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again, on the same port (a restart loses all data,
    /// as a real restart without persistence does).
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Starts redis-server on `self.port`; false when it exited (the port
    /// was taken).
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "redis-server already running");
        // Released just before the server binds it (SO_REUSEADDR on both).
        self.held = None;
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run-all.sh installs it)");
        let pid = format!("process_id:{}\r\n", child.id());
        let port = self.port;
        let ours = wait_started(&mut child, "redis-server", || {
            try_command(port, &["INFO", "server"]).is_some_and(|r| r.contains(&pid))
        });
        if ours {
            self.child = Some(child);
        } else {
            let _ = child.wait();
        }
        ours
    }

    /// Kills the server (SIGKILL: no goodbye, like a crash), and holds its
    /// port until [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.held = TcpListener::bind(("127.0.0.1", self.port)).ok();
        }
    }

    /// Sends one command (RESP array of bulk strings) and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis command {args:?} failed"))
    }

    /// Sends one command whose arguments may be any bytes (e.g. a MessagePack
    /// payload to `PUBLISH`) and returns the raw reply.
    pub fn command_bytes(&self, args: &[&[u8]]) -> String {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .expect("connect to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("set read timeout");
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).expect("send redis command");
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).expect("read redis reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        try_command(self.port, args)
    }
}

/// Sends one command to the redis-server on `port`; `None` when nothing answers.
pub fn redis_command(port: u16, args: &[&str]) -> Option<String> {
    try_command(port, args)
}

fn try_command(port: u16, args: &[&str]) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What nodes can be clustered through: one redis-server, or a Redis
/// Cluster (`redis_cluster_fixture`), so one scenario runs on both.
pub trait RedisBackend {
    /// The `cluster.redis_url` of it.
    fn url(&self) -> String;
    /// One raw command (on a cluster, sent where the key's slot is).
    fn raw(&self, args: &[&str]) -> String;
    /// The key names the nodes use under `prefix` (hash-tagged on a cluster).
    fn keys(&self, prefix: &str) -> switchboard::cluster::Keys;
}

impl RedisBackend for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn raw(&self, args: &[&str]) -> String {
        self.command(args)
    }
    fn keys(&self, prefix: &str) -> switchboard::cluster::Keys {
        switchboard::cluster::Keys::new(prefix)
    }
}

/// A unique key prefix for one test.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}-{}", std::process::id(), test)
}

/// The environment that makes a node join the cluster on `redis` under `prefix`,
/// with fast heartbeats so failure tests finish in seconds.
pub fn cluster_env(
    redis: &impl RedisBackend,
    prefix: &str,
    node_id: &str,
) -> Vec<(String, String)> {
    vec![
        ("SWITCHBOARD_CLUSTER__REDIS_URL".into(), redis.url()),
        ("SWITCHBOARD_CLUSTER__KEY_PREFIX".into(), prefix.into()),
        ("SWITCHBOARD_SERVER__NODE_ID".into(), node_id.into()),
        ("SWITCHBOARD_CLUSTER__HEARTBEAT_MS".into(), "250".into()),
        // Short enough for failure tests to finish in seconds, long enough
        // that a node starved of CPU by the parallel suite is not declared dead.
        ("SWITCHBOARD_CLUSTER__NODE_TTL_MS".into(), "3000".into()),
        ("SWITCHBOARD_CLUSTER__PROBE_WINDOW_MS".into(), "1500".into()),
    ]
}

/// Starts `n` nodes clustered through `redis`, each with `extra` env on top,
/// and waits until every one is ready (its pub/sub probe made the round trip).
pub async fn spawn_cluster(
    redis: &impl RedisBackend,
    prefix: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut env = cluster_env(redis, prefix, &format!("node-{}", i + 1));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        nodes.push(TestNode::spawn(&env_ref));
    }
    for node in &nodes {
        wait_ready(node, true, Duration::from_secs(10)).await;
    }
    nodes
}

/// Polls `/readyz` until it reports `ready` (bounded by `within`); returns how long it took.
pub async fn wait_ready(node: &TestNode, ready: bool, within: Duration) -> Duration {
    let start = Instant::now();
    let client = crate::helpers::http_client();
    loop {
        let ok = match client.get(node.http("/readyz")).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        };
        if ok == ready {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "node did not become {} within {within:?}",
            if ready { "ready" } else { "unready" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// nginx in front of some nodes, run from the repo's own `config/nginx.conf`
/// with only its addresses and paths rewritten.
pub struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx balancing over `nodes` and waits until it answers (this
    /// instance, by a token); another port if that one was taken.
    pub fn start(nodes: &[TestNode]) -> Self {
        for _ in 0..20 {
            if let Some(n) = Self::try_start(nodes, free_port()) {
                return n;
            }
        }
        panic!("nginx did not start on any of 20 ports");
    }

    fn try_start(nodes: &[TestNode], port: u16) -> Option<Self> {
        assert_eq!(
            nodes.len(),
            3,
            "config/nginx.conf names three upstream nodes"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("nginx-{}", rand::random::<u64>());
        let mut conf =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nginx.conf"))
                .expect("config/nginx.conf");
        assert!(conf.contains("listen 127.0.0.1:8080;"));
        conf = conf.replace(
            "listen 127.0.0.1:8080;",
            &format!(
                "listen 127.0.0.1:{port};\n        location = /__test_instance {{ return 200 \"{token}\"; }}"
            ),
        );
        for (i, node) in nodes.iter().enumerate() {
            let upstream = format!("server 127.0.0.1:{} ", 8081 + i);
            assert!(
                conf.contains(&upstream),
                "nginx.conf lost its upstream {upstream}"
            );
            conf = conf.replace(&upstream, &format!("server {} ", node.addr()));
        }
        conf = conf.replace(
            "/tmp/switchboard-nginx",
            &dir.path().join("nginx").display().to_string(),
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            // Never inherit the test's pipes: nginx's worker would hold them
            // open after the master is gone, and the test runner would wait.
            .stderr(std::fs::File::create(dir.path().join("error.log")).expect("nginx log file"))
            .spawn()
            .expect("nginx must be installed (tests/run-all.sh installs nginx-light)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let ours = wait_started(&mut child, "nginx", || {
            http_get(addr, "/__test_instance").is_some_and(|body| body.ends_with(&token))
        });
        let n = Self {
            child,
            port,
            _dir: dir,
        };
        // Dropped when not ours: stops what may be left of it.
        ours.then_some(n)
    }

    /// The balanced WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("TEST_LOG").is_some() {
            if let Ok(log) = std::fs::read_to_string(self._dir.path().join("error.log")) {
                eprintln!("[nginx] {log}");
            }
        }
    }
}

/// A plain `GET path` over HTTP/1.0; the raw response, `None` when nothing
/// answers (bounded by short timeouts).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}
