//! Redis behind Sentinel (`redis-sentinel://` URLs): a real master, a real
//! replica and three real redis-sentinel processes. The master is killed
//! while two peers on two nodes signal each other: the nodes follow the
//! promoted replica by themselves, readiness drops and comes back within the
//! bound docs/DESIGN.md gives, no node exits, and every signal is answered:
//! `ack` (then delivered, once, in order) or `error` (`cluster-unavailable`),
//! never silence.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_helpers::{free_port, unique_prefix, wait_ready, RedisServer};
use crate::helpers::{skipped, Client, TestNode};

/// A redis-server or redis-sentinel process, killed on drop.
struct Proc {
    child: Child,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `cond` every 100 ms for at most `within`.
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(bin: &str, args: &[String]) -> Proc {
    let port: u16 = args[args.iter().position(|a| a == "--port").expect("--port") + 1]
        .parse()
        .expect("port");
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let p = Proc { child, port };
    wait_for(
        &format!("{bin} on {port} answers"),
        Duration::from_secs(10),
        || cli(port, &["PING"]).is_some_and(|r| r.trim() == "PONG"),
    );
    p
}

/// A replica of the master on `master`, and three sentinels watching it
/// (quorum 2, down after 1 s), ready to fail over.
fn sentinels(master: u16, dir: &std::path::Path) -> (Proc, Vec<Proc>) {
    let port = free_port();
    let replica = start(
        "redis-server",
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &master.to_string(),
        ]
        .map(String::from),
    );
    wait_for("the replica is in sync", Duration::from_secs(15), || {
        cli(replica.port, &["INFO", "replication"])
            .is_some_and(|r| r.contains("master_link_status:up"))
    });
    let mut s = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
            ),
        )
        .expect("write sentinel config");
        s.push(start(
            "redis-sentinel",
            &[
                conf.to_string_lossy().into_owned(),
                "--port".into(),
                port.to_string(),
            ],
        ));
    }
    // A failover needs each sentinel to know the replica and the others.
    for x in &s {
        wait_for(
            "the sentinels know each other and the replica",
            Duration::from_secs(20),
            || {
                let m = cli(x.port, &["SENTINEL", "master", "mymaster"]).unwrap_or_default();
                let field = |name: &str| {
                    let lines: Vec<&str> = m.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.trim().to_string())
                };
                field("num-other-sentinels").as_deref() == Some("2")
                    && field("num-slaves").as_deref() == Some("1")
            },
        );
    }
    (replica, s)
}

#[tokio::test]
async fn nodes_follow_a_sentinel_failover_and_answer_every_signal() {
    if Command::new("redis-sentinel")
        .arg("--version")
        .output()
        .is_err()
    {
        skipped(
            "sentinel::nodes_follow_a_sentinel_failover",
            "redis-sentinel is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut master = RedisServer::start();
    let master_port: u16 = master.url().rsplit(':').next().unwrap().parse().unwrap();
    let (replica, sentinels) = sentinels(master_port, dir.path());
    let url = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster&node=127.0.0.1:{}&node=127.0.0.1:{}",
        sentinels[0].port, sentinels[1].port, sentinels[2].port
    );
    let prefix = unique_prefix("sentinel");
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(TestNode::spawn(&[
            ("SWITCHBOARD_CLUSTER__REDIS_URL", url.as_str()),
            ("SWITCHBOARD_CLUSTER__KEY_PREFIX", prefix.as_str()),
            (
                "SWITCHBOARD_SERVER__NODE_ID",
                if i == 0 { "sn-1" } else { "sn-2" },
            ),
            ("SWITCHBOARD_CLUSTER__HEARTBEAT_MS", "250"),
            ("SWITCHBOARD_CLUSTER__NODE_TTL_MS", "10000"),
            ("SWITCHBOARD_CLUSTER__PROBE_WINDOW_MS", "1500"),
            ("SWITCHBOARD_CLUSTER__COMMAND_TIMEOUT_MS", "1000"),
        ]));
    }
    for n in &nodes {
        wait_ready(n, true, Duration::from_secs(15)).await;
    }
    let mut a = Client::connect(&nodes[0].ws_url()).await;
    a.hello("a").await;
    let mut b = Client::connect(&nodes[1].ws_url()).await;
    b.hello("b").await;

    let mut acked = Vec::new();
    let mut failed = 0u32;
    // Signals before the failure are delivered.
    for i in 0..20u64 {
        send_signal(&mut a, i).await;
        let r = reply(&mut a).await;
        assert_eq!(r["type"], "ack", "{r}");
        acked.push(i);
    }

    master.stop();
    let killed = Instant::now();
    let mut unready_at = None;
    let mut ready_again = None;
    let mut i = 20u64;
    let mut acks_after = 0;
    // Until readiness came back and 50 signals in a row were acked after it
    // (bounded: 60 s).
    while acks_after < 50 {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no recovery within 60 s (unready at {unready_at:?})"
        );
        send_signal(&mut a, i).await;
        let r = reply(&mut a).await;
        match r["type"].as_str() {
            Some("ack") => {
                acked.push(i);
                if ready_again.is_some() {
                    acks_after += 1;
                }
            }
            Some("error") => {
                assert_eq!(r["code"], "cluster-unavailable", "{r}");
                failed += 1;
                acks_after = 0;
            }
            _ => panic!("unexpected answer {r}"),
        }
        i += 1;
        let (status, _) = nodes[1].get("/readyz").await;
        if status == 503 && unready_at.is_none() {
            unready_at = Some(killed.elapsed());
        }
        if status == 200 && unready_at.is_some() && ready_again.is_none() {
            ready_again = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (unready_at, ready_again) = (
        unready_at.expect("readiness never dropped"),
        ready_again.unwrap(),
    );
    eprintln!(
        "sentinel failover: unready at {unready_at:?}, ready again at {ready_again:?}, {} acked, {failed} answered cluster-unavailable",
        acked.len()
    );
    // Sentinel promotes the replica (down after 1 s, then the election).
    let promoted = cli(
        sentinels[0].port,
        &["SENTINEL", "get-master-addr-by-name", "mymaster"],
    )
    .unwrap_or_default();
    assert!(
        promoted.contains(&replica.port.to_string()),
        "the replica was not promoted: {promoted}"
    );
    // docs/DESIGN.md ("Sentinel failover"): ready again within 20 s of the
    // master's death with these settings.
    assert!(
        ready_again < Duration::from_secs(20),
        "ready again only after {ready_again:?}"
    );
    delivered_once_in_order(&mut b, &acked).await;
    // Both nodes are alive and ready.
    for n in &nodes {
        wait_ready(n, true, Duration::from_secs(5)).await;
    }
    drop(sentinels);
}

/// A signal to `b` with id and payload `i`.
async fn send_signal(a: &mut Client, i: u64) {
    a.send_json(json!({"type": "signal", "id": i, "to": "b", "kind": "offer", "data": {"i": i}}))
        .await;
}

/// The `ack` or `error` answering the last signal.
async fn reply(c: &mut Client) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == "ack" || m["type"] == "error" {
            return m;
        }
    }
}

/// Every acked signal (`data.i` in `acked`) reaches `b` once, in order, and
/// nothing else does (presence aside): the next thing after them is the
/// pong of a ping.
pub(crate) async fn delivered_once_in_order(b: &mut Client, acked: &[u64]) {
    for want in acked {
        let m = next_signal(b).await;
        assert_eq!(m["data"]["i"], *want, "expected signal {want}, got {m}");
    }
    b.ping().await;
}

/// The next `signal`, skipping presence re-announced after the outage.
async fn next_signal(c: &mut Client) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == "signal" {
            return m;
        }
        assert!(
            m["type"] == "peer-joined" || m["type"] == "peer-left",
            "expected a signal, got {m}"
        );
    }
}
