//! `[turn]`: `welcome.ice_servers` with TURN REST credentials, checked
//! against a real coturn (`turnserver` with `use-auth-secret`, Debian's
//! coturn; tests/run-all.sh installs it): the credential from `welcome`
//! allocates a relay and moves data through it; an expired or forged one is
//! refused.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_helpers::free_port;
use crate::helpers::{skipped, TestNode};

const SECRET: &str = "turn-test-shared-secret";

/// A coturn on loopback, killed on drop.
struct Coturn {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Coturn {
    fn start() -> Option<Coturn> {
        if Command::new("turnserver")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // Relay ports above the ephemeral range, so they do not collide with
        // other tests' client sockets.
        let relay = 61_000 + (rand::random::<u16>() % 40) * 100;
        let child = Command::new("turnserver")
            .args([
                "--use-auth-secret",
                "--static-auth-secret",
                SECRET,
                "--realm",
                "switchboard.test",
            ])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args([
                "--min-port",
                &relay.to_string(),
                "--max-port",
                &(relay + 99).to_string(),
            ])
            .args([
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
                "--simple-log",
            ])
            .args(["--log-file", "stdout"])
            .arg("--pidfile")
            .arg(dir.path().join("turn.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let mut c = Coturn {
            child,
            port,
            _dir: dir,
        };
        // Ready when its TCP listener (same port as UDP) accepts.
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                c.child.try_wait().expect("turnserver status").is_none(),
                "turnserver exited at start"
            );
            assert!(
                Instant::now() < deadline,
                "turnserver did not listen on {port} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(c)
    }

    /// Allocates a relay with `username`/`credential` and sends a few
    /// packets through it (turnutils_uclient, client-to-client through two
    /// allocations); Ok(stdout) when data went through, Err(stdout) when
    /// the allocation was refused.
    async fn allocate(&self, username: &str, credential: &str) -> Result<String, String> {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("turnutils_uclient")
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-u",
                    username,
                    "-w",
                    credential,
                ])
                .args(["-n", "1", "-m", "1", "-y", "-e", "127.0.0.1", "127.0.0.1"])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("turnutils_uclient finished within 30 s")
        .expect("run turnutils_uclient");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.contains("Total lost packets 0") {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn welcome_turn_credentials_allocate_on_coturn_and_expired_ones_are_refused() {
    let Some(turn) = Coturn::start() else {
        skipped(
            "turn::welcome_turn_credentials_allocate_on_coturn",
            "turnserver (coturn) is not installed",
        );
        return;
    };
    let url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let stun = format!("stun:127.0.0.1:{}", turn.port);
    let urls = format!("[\"{url}\"]");
    let stun_urls = format!("[\"{stun}\"]");
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_TURN__URLS", urls.as_str()),
        ("SWITCHBOARD_TURN__STUN_URLS", stun_urls.as_str()),
        ("SWITCHBOARD_TURN__SECRET", SECRET),
        ("SWITCHBOARD_TURN__TTL_S", "600"),
    ]);
    let mut c = node.client().await;
    let before = now_s();
    let w = c.hello("alice").await;
    assert_eq!(w["type"], "welcome", "{w}");
    let ice = &w["ice_servers"];
    assert_eq!(ice[0], json!({"urls": [stun]}), "{w}");
    assert_eq!(ice[1]["urls"], json!([url]), "{w}");
    let username = ice[1]["username"].as_str().expect("username").to_string();
    let credential = ice[1]["credential"]
        .as_str()
        .expect("credential")
        .to_string();
    let (expiry, peer) = username.split_once(':').expect("EXPIRY:PEER");
    assert_eq!(peer, "alice");
    let expiry: u64 = expiry.parse().expect("expiry is a number");
    assert!(
        (before + 600..=now_s() + 600).contains(&expiry),
        "expiry {expiry}, now {before}"
    );
    assert_eq!(credential, switchboard::turn::credential(SECRET, &username));

    // The credential from welcome allocates a relay on the real coturn, and
    // data crosses it.
    if let Err(out) = turn.allocate(&username, &credential).await {
        panic!("coturn refused welcome's credential:\n{out}");
    }
    // Expired (same secret, expiry a minute ago): refused.
    let expired = format!("{}:alice", now_s() - 60);
    let out = turn
        .allocate(&expired, &switchboard::turn::credential(SECRET, &expired))
        .await;
    assert!(
        out.is_err(),
        "coturn accepted an expired credential:\n{out:?}"
    );
    // Forged (valid expiry, another secret): refused.
    let forged = switchboard::turn::credential("not-the-secret-at-all", &username);
    let out = turn.allocate(&username, &forged).await;
    assert!(
        out.is_err(),
        "coturn accepted a forged credential:\n{out:?}"
    );
}

#[tokio::test]
async fn welcome_has_no_ice_servers_without_turn_config() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    let w: Value = c.hello("bob").await;
    assert_eq!(w["type"], "welcome");
    assert!(w.get("ice_servers").is_none(), "{w}");
}
