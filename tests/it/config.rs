//! The command line and configuration loading of the binary.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{run_cli, TestNode};

const CLI_TIMEOUT: Duration = Duration::from_secs(10);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_exits_0_and_describes_the_options() {
    let out = run_cli(&["--help"], &[], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for word in ["--config", "--check-config", "--version"] {
        assert!(stdout.contains(word), "--help lacks {word}:\n{stdout}");
    }
}

#[test]
fn version_exits_0_and_prints_the_version() {
    let out = run_cli(&["--version"], &[], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("switchboard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let out = run_cli(&["--no-such-flag"], &[], CLI_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn bad_config_exits_2_naming_every_bad_key() {
    let out = run_cli(
        &[],
        &[
            ("SWITCHBOARD_LIMITS__MAX_FRAME_BYTES", "abc"),
            ("SWITCHBOARD_SERVER__LISTEN", "nowhere"),
            ("SWITCHBOARD_SERVER__BOGUS", "1"),
        ],
        CLI_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        !text(&out.stdout).contains("listening on"),
        "bound a port with a bad config"
    );
    for key in ["limits.max_frame_bytes", "server.listen", "server.bogus"] {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(key)).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line naming {key} in:\n{stderr}"
        );
    }
}

#[test]
fn semantic_config_errors_exit_2() {
    let out = run_cli(
        &[],
        &[
            ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "0"),
            ("SWITCHBOARD_LIMITS__HEARTBEAT_INTERVAL_MS", "5000"),
            ("SWITCHBOARD_LIMITS__HEARTBEAT_TIMEOUT_MS", "1000"),
            ("SWITCHBOARD_SERVER__WORKER_THREADS", "5000"),
        ],
        CLI_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("server.worker_threads"), "{stderr}");
    assert!(stderr.contains("limits.outbound_queue"), "{stderr}");
    assert!(stderr.contains("limits.heartbeat_timeout_ms"), "{stderr}");
}

#[test]
fn unreadable_public_key_exits_2() {
    let out = run_cli(
        &[],
        &[(
            "SWITCHBOARD_AUTH__JWT__PUBLIC_KEYS",
            "[\"/no/such/key.pem\"]",
        )],
        CLI_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("auth.jwt.public_keys[0]"), "{stderr}");
}

/// Key files are read when the configuration is loaded, so `--check-config`
/// reports a bad one (unreadable, or not a public key) with every other bad
/// key, and exits 2 without starting anything.
#[test]
fn check_config_reports_bad_public_keys_with_the_other_bad_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n",
    )
    .expect("write junk key");
    let keys = format!("[\"/no/such/key.pem\", \"{}\"]", junk.display());
    let out = run_cli(
        &["--check-config"],
        &[
            ("SWITCHBOARD_AUTH__JWT__PUBLIC_KEYS", keys.as_str()),
            ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "0"),
        ],
        CLI_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "nothing printed on stdout");
    for key in [
        "auth.jwt.public_keys[0]: cannot read",
        "auth.jwt.public_keys[1]: not an RSA, EC or Ed25519 public key",
        "limits.outbound_queue",
    ] {
        assert!(stderr.contains(key), "{key} missing:\n{stderr}");
    }
    // A good key passes.
    let good = crate::helpers::fixture("jwt/rs256-public.pem");
    let out = run_cli(
        &["--check-config"],
        &[(
            "SWITCHBOARD_AUTH__JWT__PUBLIC_KEYS",
            format!("[\"{good}\"]").as_str(),
        )],
        CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn missing_config_file_exits_2() {
    let out = run_cli(&["--config", "/no/such/file.toml"], &[], CLI_TIMEOUT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("/no/such/file.toml"), "{stderr}");
}

#[test]
fn check_config_prints_effective_json_with_secrets_redacted() {
    let out = run_cli(
        &["--check-config"],
        &[
            ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", "hunter2-jwt"),
            ("SWITCHBOARD_HTTP__ADMIN_TOKEN", "hunter2-admin"),
            (
                "SWITCHBOARD_CLUSTER__REDIS_URL",
                "redis://:hunter2-redis@127.0.0.1:6379",
            ),
            ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "8"),
        ],
        CLI_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !stdout.contains("hunter2"),
        "a secret was printed:\n{stdout}"
    );
    let cfg: Value = serde_json::from_str(stdout.trim()).expect("--check-config prints JSON");
    assert_eq!(cfg["limits"]["outbound_queue"], 8);
    assert_eq!(cfg["auth"]["jwt"]["hs256_secret"], "[redacted]");
    assert_eq!(cfg["http"]["admin_token"], "[redacted]");
    assert_eq!(cfg["cluster"]["redis_url"], "[redacted]");
    // Empty secrets stay empty, so an operator sees what is unset.
    let out = run_cli(&["--check-config"], &[], CLI_TIMEOUT);
    let cfg: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(cfg["auth"]["jwt"]["hs256_secret"], "");
    // Loopback unless the operator decides otherwise, anonymous peers only there.
    assert_eq!(cfg["server"]["listen"], "127.0.0.1:8080");
    assert_eq!(cfg["auth"]["anonymous"], "loopback");
    assert_eq!(cfg["http"]["client_ip_header"], "x-forwarded-for");
}

#[tokio::test]
async fn config_file_is_layered_under_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[server]\nnode_id = \"from-file\"\n[limits]\nheartbeat_interval_ms = 1234\nheartbeat_timeout_ms = 5000\n",
    )
    .unwrap();
    let node = TestNode::spawn_with_args(
        &["--config", file.to_str().unwrap()],
        &[("SWITCHBOARD_LIMITS__HEARTBEAT_INTERVAL_MS", "2345")],
    );
    let mut c = node.client().await;
    let w = c.hello("p").await;
    assert_eq!(w["node"], "from-file");
    assert_eq!(
        w["heartbeat_ms"], 2345,
        "the environment overrides the file"
    );
}

/// The node's `switchboard_worker_threads` gauge, from `/metrics`.
async fn worker_threads_of(node: &TestNode) -> f64 {
    let (status, body) = node.get_text("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("switchboard_worker_threads "))
        .unwrap_or_else(|| panic!("no switchboard_worker_threads in:\n{body}"))
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn worker_threads_setting_sizes_the_runtime() {
    for n in ["1", "3"] {
        let node = TestNode::spawn(&[("SWITCHBOARD_SERVER__WORKER_THREADS", n)]);
        assert_eq!(worker_threads_of(&node).await, n.parse::<f64>().unwrap());
        // The node works on one thread as on several.
        let mut c = node.client().await;
        let w = c.hello("p").await;
        assert_eq!(w["type"], "welcome");
    }
    // 0 (the default): one per CPU this process may use, or TOKIO_WORKER_THREADS.
    let node = TestNode::spawn(&[("TOKIO_WORKER_THREADS", "2")]);
    assert_eq!(worker_threads_of(&node).await, 2.0);
}

#[test]
fn turn_urls_need_a_secret_and_the_right_schemes() {
    let out = run_cli(
        &["--check-config"],
        &[
            (
                "SWITCHBOARD_TURN__URLS",
                r#"["turn:relay.example:3478", "http://x"]"#,
            ),
            ("SWITCHBOARD_TURN__STUN_URLS", r#"["turn:wrong.example"]"#),
            ("SWITCHBOARD_TURN__TTL_S", "10"),
        ],
        CLI_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    for needle in [
        "turn.secret:",
        "turn.urls: `http://x`",
        "turn.stun_urls: `turn:wrong.example`",
        "turn.ttl_s: 10",
    ] {
        assert!(stderr.contains(needle), "no `{needle}` in:\n{stderr}");
    }
    // With a secret the same relays are accepted, and --check-config never
    // prints the secret.
    let out = run_cli(
        &["--check-config"],
        &[
            ("SWITCHBOARD_TURN__URLS", r#"["turn:relay.example:3478"]"#),
            ("SWITCHBOARD_TURN__SECRET", "a-long-enough-shared-secret"),
        ],
        CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("a-long-enough-shared-secret"));
}
