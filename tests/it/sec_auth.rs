//! Issue 13, items 5-7: who may connect, who may take a peer id over, who may
//! read the operator endpoints, which forwarding header names the client, and
//! what one STUN source (or a forged USERNAME) can cost a node. Real node
//! processes, real sockets, a real redis-server for the cross-node cases.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytecodec::EncodeExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stun_codec::rfc5389::attributes::Username;
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageEncoder, TransactionId};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cluster_helpers::{spawn_cluster, unique_prefix, Nginx, RedisServer};
use crate::helpers::{http_client, metric, wait_metric, Client, TestNode};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const JWT_SECRET: &str = "sec-auth-test-secret";

fn token_for(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now + 600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Connects and says `hello` as `peer`; returns the client and its `welcome`.
async fn hello(node: &TestNode, peer: &str) -> (Client, Value) {
    let mut c = node.client().await;
    let w = c.hello(peer).await;
    (c, w)
}

/// The `reconnect_secret` of a `welcome` (checked: 32 lowercase hex digits).
fn secret_of(welcome: &Value) -> String {
    let s = welcome["reconnect_secret"]
        .as_str()
        .unwrap_or_else(|| panic!("welcome without reconnect_secret: {welcome}"));
    assert!(
        s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "reconnect_secret is not 128 bits of hex: {s}"
    );
    s.to_string()
}

/// Sends `hello` (with an id) and expects `peer-id-taken` answering it; the
/// socket stays open (a ping round-trips afterwards).
async fn expect_taken(c: &mut Client, hello: Value) {
    let mut hello = hello;
    hello["type"] = json!("hello");
    hello["id"] = json!("claim");
    c.send_json(hello).await;
    let e = c.recv_error("peer-id-taken").await;
    assert_eq!(e["id"], "claim", "{e}");
    c.ping().await;
}

/// Sends a signal with an id from `from` to `to` and expects its `ack`.
async fn signal_acked(from: &mut Client, to: &str, data: Value) {
    let id = from.fresh_id();
    from.send_json(json!({"type": "signal", "id": id, "to": to, "kind": "offer", "data": data}))
        .await;
    assert_eq!(from.recv().await, json!({"type": "ack", "id": id}));
}

/// Sends `hello` and expects `unauthorized` (id echoed), then close 4001.
async fn expect_unauthorized(node_url: &str, hello: Value) -> String {
    let mut c = Client::connect(node_url).await;
    let mut hello = hello;
    hello["type"] = json!("hello");
    hello["id"] = json!("anon");
    c.send_json(hello).await;
    let e = c.recv_error("unauthorized").await;
    assert_eq!(e["id"], "anon", "{e}");
    assert_eq!(c.expect_close().await, (4001, "unauthorized".to_string()));
    e["message"].as_str().unwrap().to_string()
}

/// A WebSocket upgrade of the legacy worker door made with a plain HTTP
/// client, so a refusal's status and JSON body can be read.
async fn legacy_raw(node: &TestNode, worker: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut headers = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend_from_slice(extra);
    node.get_with(&format!("/ws/register/{worker}"), &headers)
        .await
}

/// Connects a legacy worker (panics if the upgrade is refused).
async fn legacy(node: &TestNode, worker: &str, token: Option<&str>) -> Client {
    let url = match token {
        Some(t) => format!("ws://{}/ws/register/{worker}?token={t}", node.addr()),
        None => format!("ws://{}/ws/register/{worker}", node.addr()),
    };
    Client::connect(&url).await
}

/// Connects a native client whose upgrade request carries `headers`, and
/// returns its `welcome`.
async fn welcome_with_headers(node: &TestNode, headers: &[(&'static str, &'static str)]) -> Value {
    let mut req = node.ws_url().into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(*k, HeaderValue::from_static(v));
    }
    let (mut ws, _) = crate::helpers::within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    crate::helpers::within(
        "send hello",
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "hello"}).to_string(),
        )),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .expect("welcome within 5 s")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
            return v;
        }
    }
}

/// The error body of a refused HTTP request: `{"error": {"code", "message"}}`.
fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------------------
// 5c. Takeover of a connected peer's id
// ---------------------------------------------------------------------------

/// Without its reconnect secret nobody takes a connected peer's id: the
/// newcomer hears `peer-id-taken` (and may pick another id on the same
/// socket), the owner keeps its socket and its signals.
#[tokio::test]
async fn takeover_without_the_secret_is_refused_and_the_owner_keeps_everything() {
    let node = TestNode::spawn(&[]);
    let (mut owner, w) = hello(&node, "alice").await;
    let secret = secret_of(&w);
    let (mut bob, _) = hello(&node, "bob").await;
    owner.join("r").await;

    let mut thief = node.client().await;
    expect_taken(&mut thief, json!({"peer_id": "alice"})).await;
    // A wrong secret, or one of another connection (bob's), proves nothing.
    expect_taken(
        &mut thief,
        json!({"peer_id": "alice", "reconnect_secret": "0".repeat(32)}),
    )
    .await;
    // A real secret proves only its own connection: alice's does not take bob's id.
    let mut other = node.client().await;
    expect_taken(
        &mut other,
        json!({"peer_id": "bob", "reconnect_secret": secret}),
    )
    .await;

    // The owner still gets its signals, and nothing else happened to it.
    signal_acked(&mut bob, "alice", json!("still-yours")).await;
    assert_eq!(owner.recv_type("signal").await["data"], "still-yours");
    owner.ping().await;
    let (_, room) = node.get("/api/rooms/r").await;
    assert_eq!(room["members"], json!([{"peer_id": "alice", "meta": null}]));

    // The refused socket is still usable under a free id.
    let w2 = thief.hello("mallory").await;
    assert_eq!(w2["peer_id"], "mallory");
    assert_ne!(secret_of(&w2), secret);
}

/// A reconnect that gives the previous connection's secret takes the id over
/// (the old socket closes with 4002), and gets a fresh secret: the old one
/// no longer works.
#[tokio::test]
async fn reconnect_with_the_secret_from_welcome_takes_the_id_over() {
    let node = TestNode::spawn(&[]);
    let (mut old, w) = hello(&node, "alice").await;
    let first = secret_of(&w);
    let (mut bob, _) = hello(&node, "bob").await;

    let mut new = node.client().await;
    let w2 = new
        .hello_with(json!({"type": "hello", "peer_id": "alice", "reconnect_secret": first}))
        .await;
    assert_eq!(w2["peer_id"], "alice");
    let second = secret_of(&w2);
    assert_ne!(first, second, "every connection gets its own secret");
    assert_eq!(old.expect_close().await, (4002, "replaced".to_string()));
    signal_acked(&mut bob, "alice", json!("to-new")).await;
    assert_eq!(new.recv_type("signal").await["data"], "to-new");

    // The first secret belonged to a connection that is gone.
    let mut late = node.client().await;
    expect_taken(
        &mut late,
        json!({"peer_id": "alice", "reconnect_secret": first}),
    )
    .await;
    // The current one works again.
    let mut third = node.client().await;
    third
        .hello_with(json!({"type": "hello", "peer_id": "alice", "reconnect_secret": second}))
        .await;
    assert_eq!(new.expect_close().await, (4002, "replaced".to_string()));
}

/// With auth on, a valid token for the id is the proof: newest wins, as before.
#[tokio::test]
async fn a_token_for_the_id_takes_it_over() {
    let node = TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__HS256_SECRET", JWT_SECRET)]);
    let mut old = node.client().await;
    old.hello_with(json!({"type": "hello", "peer_id": "alice", "token": token_for("alice")}))
        .await;
    let mut new = node.client().await;
    let w = new
        .hello_with(json!({"type": "hello", "peer_id": "alice", "token": token_for("alice")}))
        .await;
    secret_of(&w);
    assert_eq!(old.expect_close().await, (4002, "replaced".to_string()));
    new.ping().await;
}

/// The same across two nodes: the directory check is atomic in Redis, the
/// owner on the other node is untouched, its signals keep arriving, and a
/// proven reconnect on the other node wins. When the owner's node dies, the
/// id is free again without a secret (no lock-out).
#[tokio::test]
async fn takeover_across_nodes_needs_the_secret_until_the_owners_node_dies() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("takeover"), 2, &[]).await;
    let (mut owner, w) = hello(&nodes[0], "alice").await;
    let secret = secret_of(&w);
    let (mut bob, _) = hello(&nodes[1], "bob").await;

    let mut thief = nodes[1].client().await;
    expect_taken(&mut thief, json!({"peer_id": "alice"})).await;
    expect_taken(
        &mut thief,
        json!({"peer_id": "alice", "reconnect_secret": "f".repeat(32)}),
    )
    .await;
    // bob (on the thief's node) still reaches the owner on the other node.
    signal_acked(&mut bob, "alice", json!("cross-node")).await;
    assert_eq!(owner.recv_type("signal").await["data"], "cross-node");
    owner.ping().await;

    // The owner moves to the other node with its secret.
    let mut moved = nodes[1].client().await;
    let w2 = moved
        .hello_with(json!({"type": "hello", "peer_id": "alice", "reconnect_secret": secret}))
        .await;
    assert_eq!(w2["node"], "node-2");
    assert_eq!(owner.expect_close().await, (4002, "replaced".to_string()));
    signal_acked(&mut bob, "alice", json!("moved")).await;
    assert_eq!(moved.recv_type("signal").await["data"], "moved");

    // A peer on node-1, whose node is then killed: once its heartbeat has
    // expired, its id is free for anyone again.
    let (_carol, _) = hello(&nodes[0], "carol").await;
    let mut probe = nodes[1].client().await;
    expect_taken(&mut probe, json!({"peer_id": "carol"})).await;
    nodes[0].sigkill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = nodes[1].client().await;
        c.send_json(json!({"type": "hello", "id": 1, "peer_id": "carol"}))
            .await;
        let m = c.recv().await;
        if m["type"] == "welcome" {
            break;
        }
        assert_eq!(m["code"], "peer-id-taken", "{m}");
        assert!(
            Instant::now() < deadline,
            "carol's id stayed taken after its node died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Redis restarting empty loses the directory and the secrets with it; the
/// node holding the peer writes both again when it re-registers, so the id
/// is protected again and the holder's secret still works.
#[tokio::test]
async fn secrets_are_written_again_after_redis_restarts_empty() {
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("secretsback");
    let nodes = spawn_cluster(&redis, &prefix, 2, &[]).await;
    let (mut owner, w) = hello(&nodes[0], "alice").await;
    let secret = secret_of(&w);
    let key = format!("{prefix}:node:node-1:secrets");
    assert!(redis.command(&["HGET", &key, "alice"]).starts_with('$'));

    redis.stop();
    redis.restart();
    // Bounded poll on the store itself (nothing tells a client when its
    // node has re-registered): the restored entry names this connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = redis.command(&["HGET", &key, "alice"]);
        if !v.starts_with("$-1") {
            assert!(v.contains("node-1"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "secret not written again: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut thief = nodes[1].client().await;
    expect_taken(&mut thief, json!({"peer_id": "alice"})).await;
    let mut again = nodes[1].client().await;
    again
        .hello_with(json!({"type": "hello", "peer_id": "alice", "reconnect_secret": secret}))
        .await;
    let ((code, reason), _) = owner
        .expect_close_after(&["peer-joined", "peer-left"])
        .await;
    assert_eq!((code, reason.as_str()), (4002, "replaced"));
}

/// The legacy worker door: a worker id connected elsewhere is refused before
/// the upgrade (409 `peer-id-taken`), through either door, until that
/// connection ends; the older service's worker simply retries. With a token
/// for the id (auth on) the newer connection replaces the older as before.
#[tokio::test]
async fn legacy_worker_id_held_by_a_live_connection_is_refused_until_it_leaves() {
    let node = TestNode::spawn(&[]);
    let first = legacy(&node, "w1", None).await;
    // Wait until it is registered (its record shows in the listing).
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.get("/api/workers").await.1["count"] != 1 {
        assert!(Instant::now() < deadline, "w1 never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = legacy_raw(&node, "w1", &[]).await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "peer-id-taken"),
        "{body}"
    );
    let mut native = node.client().await;
    expect_taken(&mut native, json!({"peer_id": "w1"})).await;

    first.close().await;
    // The retry loop of the older service's worker: refused (409) until the
    // old connection's clean-up has run, then admitted.
    let url = format!("ws://{}/ws/register/w1", node.addr());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut again = loop {
        match Client::try_connect(&url, None).await {
            Ok(c) => break c,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 409)
            }
            Err(e) => panic!("unexpected refusal: {e}"),
        }
        assert!(Instant::now() < deadline, "w1 still refused after leaving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    again
        .send_json(json!({"type": "echo_request", "payload": "back"}))
        .await;
    assert_eq!(again.recv().await["original_payload"], "back");

    let jwt = TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__HS256_SECRET", JWT_SECRET)]);
    let t = token_for("w2");
    let mut a = legacy(&jwt, "w2", Some(&t)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while jwt.get("/api/workers").await.1["count"] != 1 {
        assert!(Instant::now() < deadline, "w2 never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _b = legacy(&jwt, "w2", Some(&t)).await;
    assert_eq!(
        a.expect_close().await,
        (1000, "New connection from same worker ID".to_string())
    );
}

// ---------------------------------------------------------------------------
// 5a. Anonymous peers
// ---------------------------------------------------------------------------

/// The default: no key, listening on loopback: anonymous peers are admitted,
/// and the start-up log says why.
#[tokio::test]
async fn anonymous_peers_are_admitted_on_loopback_and_the_log_says_why() {
    let node = TestNode::spawn(&[]);
    node.wait_log_async(
        "anonymous peers allowed because listening on loopback",
        Duration::from_secs(20),
    )
    .await;
    let (_, w) = hello(&node, "anyone").await;
    assert_eq!(w["peer_id"], "anyone");
}

/// `auth.anonymous = "deny"`: without a key every hello is refused (as a bad
/// token is: `unauthorized`, close 4001), the legacy door answers 401 JSON
/// before the upgrade, and the node warns at start.
#[tokio::test]
async fn deny_refuses_every_anonymous_peer() {
    let node = TestNode::spawn(&[("SWITCHBOARD_AUTH__ANONYMOUS", "deny")]);
    node.wait_log_async("every hello will be refused", Duration::from_secs(20))
        .await;
    let msg = expect_unauthorized(&node.ws_url(), json!({"peer_id": "x"})).await;
    assert!(msg.contains("token is required"), "{msg}");
    expect_unauthorized(&node.ws_url(), json!({})).await;
    let (status, body) = legacy_raw(&node, "w1", &[]).await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{body}");
}

/// The listen address is what counts: a node bound to every interface
/// (0.0.0.0) without a key refuses anonymous peers even when they come over
/// loopback; `auth.anonymous = "allow"` admits them (with a warning).
#[tokio::test]
async fn a_node_on_every_interface_refuses_anonymous_peers_unless_allowed() {
    let open = [("SWITCHBOARD_SERVER__LISTEN", "0.0.0.0:0")];
    let node = TestNode::spawn(&open);
    node.wait_log_async(
        "anonymous peers refused: every peer needs a token",
        Duration::from_secs(20),
    )
    .await;
    expect_unauthorized(&node.ws_url(), json!({"peer_id": "x"})).await;
    let (status, body) = legacy_raw(&node, "w1", &[]).await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{body}");

    let allowed = TestNode::spawn(&[
        ("SWITCHBOARD_SERVER__LISTEN", "0.0.0.0:0"),
        ("SWITCHBOARD_AUTH__ANONYMOUS", "allow"),
    ]);
    allowed
        .wait_log_async(
            "anonymous peers allowed by auth.anonymous=allow",
            Duration::from_secs(20),
        )
        .await;
    let (_, w) = hello(&allowed, "x").await;
    assert_eq!(w["peer_id"], "x");
    // The older service's worker, unchanged, on a node that allows it.
    let mut w1 = legacy(&allowed, "w1", None).await;
    w1.send_json(json!({"type": "echo_request", "payload": 1}))
        .await;
    assert_eq!(w1.recv().await["type"], "echo_response");
}

// ---------------------------------------------------------------------------
// 5b. Operator endpoints
// ---------------------------------------------------------------------------

const ADMIN_GETS: [&str; 4] = [
    "/api/workers",
    "/debug/list_workers",
    "/api/rooms",
    "/api/rooms/r",
];

async fn post_connect(node: &TestNode, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = http_client()
        .post(node.http("/api/connect"))
        .header("content-type", "application/json")
        .body(r#"{"worker_a_id": "a", "worker_b_id": "b"}"#);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// No admin token: plain loopback requests are served; a request carrying a
/// forwarding header (a proxy on this host, or a client pretending) gets 403
/// `forbidden` naming the setting. Probes and /metrics stay open.
#[tokio::test]
async fn without_an_admin_token_only_plain_loopback_is_served() {
    let node = TestNode::spawn(&[]);
    let (_alice, _) = hello(&node, "alice").await;
    for path in ADMIN_GETS {
        let (status, _) = node.get(path).await;
        assert!(status == 200 || status == 404, "{path}: {status}");
        for h in [
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ] {
            let (status, body) = node.get_with(path, &[h]).await;
            assert_eq!(
                (status, error_code(&body)),
                (403, "forbidden"),
                "{path} {h:?}"
            );
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("http.admin_token"),
                "{body}"
            );
        }
    }
    let (status, body) = post_connect(&node, &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    // Without the header it reaches the handler (the workers do not exist).
    let (status, body) = post_connect(&node, &[]).await;
    assert_eq!(
        (status, error_code(&body)),
        (404, "worker-not-found"),
        "{body}"
    );
    for open in ["/metrics", "/healthz", "/readyz", "/"] {
        let r = http_client()
            .get(node.http(open))
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open}");
    }
    assert!(
        metric(
            &node,
            r#"switchboard_admin_refused_total{reason="forbidden"}"#
        )
        .await
            >= 13.0
    );
}

/// Through the repository's own nginx config (which proxies from loopback and
/// sets X-Forwarded-For), the operator endpoints are refused without a token.
#[tokio::test]
async fn through_the_local_nginx_the_operator_endpoints_are_refused() {
    let nodes = [
        TestNode::spawn(&[]),
        TestNode::spawn(&[]),
        TestNode::spawn(&[]),
    ];
    let nginx = Nginx::start(&nodes);
    let base = nginx
        .ws_url()
        .replace("ws://", "http://")
        .replace("/ws", "");
    for path in ADMIN_GETS {
        let r = http_client()
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!((status, error_code(&body)), (403, "forbidden"), "{path}");
    }
    let r = http_client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// With an admin token: missing or wrong → 401 `unauthorized`; right → 200,
/// also with a forwarding header (the token, not the address, decides).
#[tokio::test]
async fn with_an_admin_token_the_token_decides() {
    let node = TestNode::spawn(&[("SWITCHBOARD_HTTP__ADMIN_TOKEN", "adm-s3cret")]);
    for path in ADMIN_GETS {
        let (status, body) = node.get(path).await;
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{path}");
        let (status, body) = node
            .get_with(path, &[("authorization", "Bearer wrong")])
            .await;
        assert_eq!((status, error_code(&body)), (401, "unauthorized"), "{path}");
        let (status, _) = node
            .get_with(
                path,
                &[
                    ("authorization", "Bearer adm-s3cret"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
            )
            .await;
        assert!(status == 200 || status == 404, "{path}: {status}");
    }
    let (status, _) = post_connect(&node, &[]).await;
    assert_eq!(status, 401);
    let (status, body) = post_connect(&node, &[("authorization", "Bearer adm-s3cret")]).await;
    assert_eq!((status, error_code(&body)), (404, "worker-not-found"));
}

// ---------------------------------------------------------------------------
// 6. The client address behind a proxy
// ---------------------------------------------------------------------------

/// Only `http.client_ip_header` is read: a client-sent `Forwarded` (or
/// X-Real-IP) no longer beats the X-Forwarded-For the proxy appended.
#[tokio::test]
async fn only_the_configured_forwarding_header_names_the_client() {
    let trusted = ("SWITCHBOARD_HTTP__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#);
    let xff = TestNode::spawn(&[trusted]);
    let both: [(&str, &str); 3] = [
        ("forwarded", "for=192.0.2.66"),
        ("x-real-ip", "192.0.2.67"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let w = welcome_with_headers(&xff, &both).await;
    assert_eq!(w["observed_addr"], "198.51.100.7:0");
    let w = welcome_with_headers(&xff, &both[..1]).await;
    assert!(
        w["observed_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "a Forwarded header alone was believed: {w}"
    );

    let fwd = TestNode::spawn(&[trusted, ("SWITCHBOARD_HTTP__CLIENT_IP_HEADER", "forwarded")]);
    let w = welcome_with_headers(&fwd, &both).await;
    assert_eq!(w["observed_addr"], "192.0.2.66:0");

    let real = TestNode::spawn(&[trusted, ("SWITCHBOARD_HTTP__CLIENT_IP_HEADER", "x-real-ip")]);
    let w = welcome_with_headers(&real, &both).await;
    assert_eq!(w["observed_addr"], "192.0.2.67:0");
}

// ---------------------------------------------------------------------------
// 7. STUN: rate per source, and no publish for a node that does not exist
// ---------------------------------------------------------------------------

fn binding_request(username: Option<&str>) -> Vec<u8> {
    let txid: [u8; 12] = rand::random();
    let mut msg =
        Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    if let Some(u) = username {
        msg.add_attribute(Username::new(u.to_owned()).unwrap());
    }
    MessageEncoder::new().encode_into_bytes(msg).unwrap()
}

/// The STUN address a node logged (`127.0.0.1:port`).
async fn stun_addr(node: &TestNode) -> SocketAddr {
    let line = node
        .wait_log_async("STUN responder bound to udp 127.", Duration::from_secs(20))
        .await;
    let rest = &line[line.find("udp ").unwrap() + 4..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ':')))
        .unwrap_or(rest.len());
    rest[..end].parse().expect("STUN address in the log")
}

/// Counts the datagrams that arrive on `sock` until it has been quiet for `quiet`.
async fn count_answers(sock: &UdpSocket, quiet: Duration) -> u64 {
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while tokio::time::timeout(quiet, sock.recv_from(&mut buf))
        .await
        .is_ok()
    {
        n += 1;
        assert!(n < 1_000_000, "unbounded answers");
    }
    n
}

/// A flood from one source gets at most `burst + rate x seconds` answers;
/// the rest is dropped unanswered and counted, and another source is
/// answered meanwhile as usual.
#[tokio::test]
async fn a_stun_flood_from_one_source_is_answered_at_the_configured_rate() {
    let (rate, burst) = (20.0, 10.0);
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_STUN__RATE_PER_IP", "20"),
        ("SWITCHBOARD_STUN__BURST", "10"),
    ]);
    let stun = stun_addr(&node).await;
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req = binding_request(None);
    let sent = 3000u64;
    let start = Instant::now();
    let reader = async {
        // Answers arrive while the flood is being sent: read concurrently so
        // the client's own buffer never drops one.
        count_answers(&flood, Duration::from_millis(700)).await
    };
    let writer = async {
        for i in 0..sent {
            flood.send_to(&req, stun).await.unwrap();
            if i % 100 == 99 {
                // ~1 s of flood in all, spread out so the rate part shows.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        start.elapsed()
    };
    let (answered, flood_time) = tokio::join!(reader, writer);
    // Whatever was answered was answered before the reader's last quiet period.
    let window = start.elapsed().as_secs_f64();
    let bound = burst + rate * window;
    assert!(
        answered as f64 <= bound + 1.0,
        "{answered} answers to one source in {window:.2} s (flood {flood_time:?}); bound {bound:.0}"
    );
    assert!(answered >= 5, "the burst was not answered: {answered}");

    // Another source is answered at once.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other.send_to(&binding_request(None), stun).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), other.recv_from(&mut buf))
        .await
        .expect("another source is answered")
        .unwrap();
    assert_eq!((from, n), (stun, 32));

    // The drops were counted (the kernel may also have dropped some of the
    // flood before the node read it, so at least most of it).
    let limited = metric(&node, "switchboard_stun_rate_limited_total").await;
    assert!(
        limited >= (sent - answered) as f64 * 0.5,
        "rate-limited counter {limited}, sent {sent}, answered {answered}"
    );
    assert!(metric(&node, "switchboard_stun_rate_limit_sources").await <= 2.0);
}

/// A USERNAME naming a node that is not alive costs no publish: the
/// observation is dropped and counted; one naming a live node is forwarded.
/// Checked on the node's publish counter and on Redis's own PUBLISH count.
#[tokio::test]
async fn a_forged_stun_username_naming_no_live_node_publishes_nothing() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("stunghost"),
        2,
        &[("SWITCHBOARD_STUN__RATE_PER_IP", "0")],
    )
    .await;
    let stun = stun_addr(&nodes[0]).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let published = r#"switchboard_bus_published_total{kind="observed"}"#;
    let publishes = || {
        let info = redis.command(&["INFO", "commandstats"]);
        info.lines()
            .find(|l| l.starts_with("cmdstat_publish:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = publishes();
    // Readiness needed a pub/sub probe, so the count is parsed and non-zero.
    assert!(before > 0, "no PUBLISH in INFO commandstats yet");
    let forged = 400u64;
    let mut buf = [0u8; 1500];
    for i in 0..forged {
        let u = format!("{:032x}:node-ghost-{i}", i);
        sock.send_to(&binding_request(Some(&u)), stun)
            .await
            .unwrap();
        // Each is answered (the sender learns its address, as from any STUN server).
        tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("answered")
            .unwrap();
    }
    let dropped = wait_metric(
        &nodes[0],
        "switchboard_stun_unknown_node_total",
        forged as f64,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(dropped, forged as f64);
    assert_eq!(metric(&nodes[0], published).await, 0.0);
    let during = publishes() - before;
    // The nodes' own traffic (pub/sub probes every 250 ms each) continues;
    // 400 forged names would have been 400 more.
    assert!(
        during < forged / 2,
        "{during} PUBLISH calls while {forged} forged usernames were answered"
    );

    // The positive control: a username naming node-2 (alive) is forwarded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let u = format!("{}:node-2", "a".repeat(32));
        sock.send_to(&binding_request(Some(&u)), stun)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        if metric(&nodes[0], published).await >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a live node's username was never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
