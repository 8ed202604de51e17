//! A real Redis Cluster per test: `redis-server --cluster-enabled yes`
//! processes on loopback ports, joined with `redis-cli --cluster create`
//! (N primaries, each with R replicas), killed on drop.
//!
//! Each server gets two ports from [`free_port`]: its client port and its
//! cluster bus port (`--cluster-port`, so the bus does not default to
//! client port + 10000, which may be taken or in the ephemeral range).
//! `cluster-node-timeout` is 1 s, so a killed primary is failed over in
//! about 2 s. Raw commands ([`RedisCluster::command`]) follow `MOVED`
//! like `redis-cli -c`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster_helpers::{free_port, redis_command, RedisBackend};

/// One cluster node process.
struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

/// A Redis Cluster of real redis-server processes on 127.0.0.1.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

/// Why Redis Cluster tests cannot run here (`None`: they can): sharded
/// pub/sub needs redis-server 7 or later, built with cluster support.
pub fn cluster_unsupported() -> Option<String> {
    let out = match Command::new("redis-server").arg("--version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => return Some(format!("redis-server does not run: {e}")),
    };
    let major: u32 = out
        .split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (major < 7).then(|| format!("redis-server {out} has no sharded pub/sub (needs 7+)"))
}

/// Polls `cond` every 50 ms for at most `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each, joins them
    /// and waits until every node reports `cluster_state:ok` and every
    /// replica is in sync.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            nodes.push(start_node(dir.path()));
        }
        let c = Self { nodes, _dir: dir };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// Waits until every running node reports `cluster_state:ok`, knows the
    /// same number of nodes, and every replica's link to its primary is up.
    pub fn wait_healthy(&self, within: Duration) {
        let running: Vec<u16> = self.running_ports();
        wait_until("the Redis Cluster is ok", within, || {
            running.iter().all(|&p| {
                let info = redis_command(p, &["CLUSTER", "INFO"]).unwrap_or_default();
                let repl = redis_command(p, &["INFO", "replication"]).unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })
        });
    }

    /// The client ports of the nodes still running.
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The client port of the primary that serves `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot = self.command(&["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim_start_matches(':').trim().parse().expect("slot");
        self.primary_of_slot(slot)
    }

    /// The client port of the primary that serves `slot` now.
    pub fn primary_of_slot(&self, slot: u16) -> u16 {
        for p in self.running_ports() {
            let nodes = redis_command(p, &["CLUSTER", "NODES"]).unwrap_or_default();
            for line in nodes.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    continue;
                }
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                for range in &f[8..] {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                        if (a..=b).contains(&slot) {
                            return port;
                        }
                    }
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// The client port of a replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> u16 {
        for p in self.running_ports() {
            let repl = redis_command(p, &["INFO", "replication"]).unwrap_or_default();
            if repl.contains(&format!("master_port:{primary}\r\n")) {
                return p;
            }
        }
        panic!("no replica of {primary}");
    }

    /// Kills the node on `port` (SIGKILL, like a crash).
    pub fn kill(&mut self, port: u16) {
        for n in &mut self.nodes {
            if n.port == port {
                if let Some(mut c) = n.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }

    /// Sends one command to the cluster, following `MOVED` and `ASK`
    /// (at most 5 redirections); panics when no node answers.
    pub fn command(&self, args: &[&str]) -> String {
        let mut port = self.running_ports()[0];
        let mut asking = false;
        for _ in 0..5 {
            if asking {
                redis_command(port, &["ASKING"]);
            }
            let r = redis_command(port, args)
                .unwrap_or_else(|| panic!("redis command {args:?} to {port} failed"));
            let redirect = r
                .strip_prefix("-MOVED ")
                .map(|r| (r, false))
                .or_else(|| r.strip_prefix("-ASK ").map(|r| (r, true)));
            match redirect {
                Some((to, ask)) => {
                    port = to
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("redirect port");
                    asking = ask;
                }
                None => return r,
            }
        }
        panic!("redis command {args:?}: too many redirections");
    }

    /// Deletes every key starting with `prefix` in `key`'s slot (the store
    /// keeps all its keys in one slot): `FLUSHALL` for one test's prefix,
    /// without touching anything else.
    pub fn flush_slot_of(&self, key: &str, prefix: &str) {
        let slot = self.command(&["CLUSTER", "KEYSLOT", key]);
        let slot = slot.trim_start_matches(':').trim().to_string();
        let port = self.primary_of_slot(slot.parse().expect("slot"));
        for _ in 0..100 {
            let r = redis_command(port, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"])
                .expect("GETKEYSINSLOT");
            let keys: Vec<&str> = r
                .lines()
                .filter(|l| !l.starts_with(['*', '$']))
                .filter(|l| l.starts_with(prefix))
                .collect();
            if keys.is_empty() {
                return;
            }
            for k in keys {
                redis_command(port, &["DEL", k]);
            }
        }
        panic!("slot {slot} still has keys under {prefix}");
    }
}

/// The node id (`CLUSTER MYID`) of the node on `port`.
fn node_id(port: u16) -> String {
    let r = redis_command(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID");
    r.lines().nth(1).expect("an id").to_string()
}

/// Moves `slot` from the primary on `from` to the primary on `to` the way
/// `redis-cli --cluster reshard` does: `IMPORTING` / `MIGRATING`, the keys
/// with `MIGRATE` in two halves (`halfway` runs between them: meanwhile
/// the migrated keys answer `ASK` on `from` and multi-key commands
/// `TRYAGAIN`), then `SETSLOT NODE` on every primary in `primaries`.
pub fn migrate_slot(slot: u16, from: u16, to: u16, primaries: &[u16], halfway: impl FnOnce()) {
    let (slot, from_id, to_id) = (slot.to_string(), node_id(from), node_id(to));
    let ok = |port: u16, args: &[&str]| {
        let r = redis_command(port, args).unwrap_or_default();
        assert_eq!(r, "+OK\r\n", "{args:?} on {port}");
    };
    ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let r = redis_command(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100000"]).unwrap_or_default();
    let keys: Vec<String> = r
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .map(String::from)
        .collect();
    let (first, second) = keys.split_at(keys.len() / 2);
    let migrate = |keys: &[String]| {
        if keys.is_empty() {
            return;
        }
        let to_port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().map(String::as_str));
        let r = redis_command(from, &args).unwrap_or_default();
        assert_eq!(r, "+OK\r\n", "MIGRATE of {} keys", keys.len());
    };
    migrate(first);
    halfway();
    migrate(second);
    for &p in primaries {
        ok(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
}

impl RedisCluster {
    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        let slot = self.command(&["CLUSTER", "KEYSLOT", key]);
        slot.trim_start_matches(':').trim().parse().expect("slot")
    }

    /// The client ports of the primaries now.
    pub fn primaries(&self) -> Vec<u16> {
        self.running_ports()
            .into_iter()
            .filter(|&p| {
                redis_command(p, &["INFO", "replication"])
                    .is_some_and(|r| r.contains("role:master"))
            })
            .collect()
    }
}

impl RedisBackend for RedisCluster {
    /// `redis-cluster://` naming every node, comma-separated.
    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }
    fn raw(&self, args: &[&str]) -> String {
        self.command(args)
    }
    fn keys(&self, prefix: &str) -> switchboard::cluster::Keys {
        switchboard::cluster::Keys::sharded(prefix)
    }
}

/// Starts one cluster-enabled redis-server in `dir` and waits until it
/// answers (another pair of ports when one was taken).
fn start_node(dir: &std::path::Path) -> ClusterNode {
    for _ in 0..20 {
        let (port, bus) = (free_port(), free_port());
        if port == bus {
            continue;
        }
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--cluster-port",
                &bus.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
                "--dir",
                &dir.display().to_string(),
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if redis_command(port, &["INFO", "server"]).is_some_and(|r| r.contains(&pid)) {
                return ClusterNode {
                    port,
                    child: Some(child),
                };
            }
            if child.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("a cluster redis-server did not start on any of 20 ports");
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
