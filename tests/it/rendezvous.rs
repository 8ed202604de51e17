//! Rendezvous: STUN observations, pairing (automatic, manual, across nodes),
//! partner loss, the older rendezvous service's worker protocol, and trusted
//! proxy headers. Real node processes, real sockets (TCP and UDP), and a real
//! redis-server for the cross-node tests.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use futures_util::StreamExt;
use serde_json::{json, Value};
use stun_codec::rfc5389::attributes::Username;
use stun_codec::rfc5389::{methods::BINDING, Attribute};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cluster_helpers::{spawn_cluster, unique_prefix, wait_ready, RedisBackend, RedisServer};
use crate::helpers::{http_client, metric, within, Client, TestNode};

// ---------------------------------------------------------------------------
// STUN helpers (requests built and responses checked by stun_codec)
// ---------------------------------------------------------------------------

/// The STUN address a node logged whose text starts with `prefix` (`127.` or `[`).
async fn stun_addr(node: &TestNode, prefix: &str) -> SocketAddr {
    let needle = format!("STUN responder bound to udp {prefix}");
    let line = node.wait_log_async(&needle, Duration::from_secs(20)).await;
    let rest = &line[line.find("udp ").unwrap() + 4..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().expect("STUN address in the log")
}

fn binding_request(username: Option<&str>) -> (Vec<u8>, [u8; 12]) {
    let txid: [u8; 12] = rand::random();
    let mut msg =
        Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    if let Some(u) = username {
        msg.add_attribute(Username::new(u.to_owned()).unwrap());
    }
    (MessageEncoder::new().encode_into_bytes(msg).unwrap(), txid)
}

/// Decodes a Binding success for `txid`, returning its XOR-MAPPED-ADDRESS.
fn mapped_address(bytes: &[u8], txid: [u8; 12]) -> SocketAddr {
    let msg = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(bytes)
        .unwrap()
        .expect("stun_codec accepts the response");
    assert_eq!(msg.class(), MessageClass::SuccessResponse);
    assert_eq!(msg.method(), BINDING);
    assert_eq!(msg.transaction_id().as_bytes(), &txid);
    let mapped = msg
        .attributes()
        .find_map(|a| match a {
            Attribute::XorMappedAddress(x) => Some(x.address()),
            _ => None,
        })
        .expect("XOR-MAPPED-ADDRESS");
    mapped
}

/// Sends a Binding request from `sock` to `to` and returns the mapped address.
async fn stun_bind(sock: &UdpSocket, to: SocketAddr, username: Option<&str>) -> SocketAddr {
    let (req, txid) = binding_request(username);
    sock.send_to(&req, to).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("STUN response within 5 s")
        .unwrap();
    assert_eq!(from, to);
    mapped_address(&buf[..n], txid)
}

/// True when nothing arrives on `sock` within `dur`.
async fn silent(sock: &UdpSocket, dur: Duration) -> bool {
    let mut buf = [0u8; 1500];
    tokio::time::timeout(dur, sock.recv_from(&mut buf))
        .await
        .is_err()
}

// ---------------------------------------------------------------------------
// WebSocket and HTTP helpers
// ---------------------------------------------------------------------------

/// The next message of type `ty`, skipping `ack`s.
async fn next_of(c: &mut Client, ty: &str) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == ty {
            return m;
        }
        assert_eq!(m["type"], "ack", "expected {ty}, got {m}");
    }
}

/// POST `path` with a JSON body; returns the status and the JSON answer.
async fn post(node: &TestNode, path: &str, body: &str) -> (u16, Value) {
    let r = http_client()
        .post(node.http(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The worker records by id, from `GET /api/workers`.
async fn workers(node: &TestNode) -> HashMap<String, Value> {
    let (status, body) = node.get("/api/workers").await;
    assert_eq!(status, 200, "{body}");
    body["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["peer_id"].as_str().unwrap().to_string(), w.clone()))
        .collect()
}

/// A client of the older rendezvous service's worker protocol.
async fn legacy(node: &TestNode, id: &str) -> Client {
    Client::connect(&format!("ws://{}/ws/register/{id}", node.addr())).await
}

/// Connects to `url` with extra request headers; returns the `welcome` to a `hello`.
async fn welcome_with_headers(url: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, HeaderValue::from_str(v).unwrap());
    }
    let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .expect("connect");
    use futures_util::SinkExt;
    within(
        "send hello",
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "hello"}).to_string(),
        )),
    )
    .await
    .unwrap();
    for _ in 0..100 {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("welcome in time")
            .expect("open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
    panic!("no text frame among the first 100 frames")
}

// ---------------------------------------------------------------------------
// STUN
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stun_observation_lands_on_the_worker_on_another_node_ipv4_and_ipv6() {
    let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
    if !v6 {
        crate::helpers::skipped(
            "rendezvous::stun_observation_lands_on_the_worker_on_another_node_ipv4_and_ipv6 (the IPv6 half)",
            "no IPv6 loopback (cannot bind [::1])",
        );
    }
    let redis = RedisServer::start();
    let extra: &[(&str, &str)] = if v6 {
        &[("SWITCHBOARD_STUN__LISTEN_V6", "[::1]:0")]
    } else {
        &[]
    };
    let nodes = spawn_cluster(&redis, &unique_prefix("rdv-stun"), 2, extra).await;
    let mut worker = nodes[0].client().await;
    let welcome = worker.hello("stun-w").await;
    let username = welcome["stun_username"]
        .as_str()
        .expect("stun_username")
        .to_string();
    assert!(username.len() > 32, "{username}");
    let other_node = stun_addr(&nodes[1], "127.").await;

    // A forged username (right node, wrong secret) is answered but observes nothing.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let forged = format!("{}:node-1", "0".repeat(32));
    assert_eq!(
        stun_bind(&sock, other_node, Some(&forged)).await,
        sock.local_addr().unwrap()
    );

    // The real one, sent to the OTHER node, reaches the worker's node.
    let mapped = stun_bind(&sock, other_node, Some(&username)).await;
    assert_eq!(mapped, sock.local_addr().unwrap());
    let ep = worker.recv_type("endpoint").await;
    assert_eq!(
        ep,
        json!({"type": "endpoint", "udp": mapped.to_string(), "source": "stun"})
    );
    let w = &workers(&nodes[1]).await["stun-w"];
    assert_eq!(
        (w["udp"].clone(), w["node"].clone()),
        (json!(mapped.to_string()), json!("node-1"))
    );
    assert_eq!(w["dialect"], "native");

    // An observation answered by the worker's own node takes the local path.
    let sock_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let own = stun_addr(&nodes[0], "127.").await;
    let mapped_b = stun_bind(&sock_b, own, Some(&username)).await;
    assert_eq!(
        worker.recv_type("endpoint").await["udp"],
        mapped_b.to_string()
    );

    if v6 {
        let other_v6 = stun_addr(&nodes[1], "[").await;
        let sock6 = UdpSocket::bind("[::1]:0").await.unwrap();
        let mapped6 = stun_bind(&sock6, other_v6, Some(&username)).await;
        assert_eq!(mapped6, sock6.local_addr().unwrap());
        let ep = worker.recv_type("endpoint").await;
        assert_eq!(ep["udp"], mapped6.to_string());
        assert!(mapped6.to_string().starts_with("[::1]:"), "{mapped6}");
    }
    // No other message was queued (the forged username produced nothing).
    worker.ping().await;
}

#[tokio::test]
async fn stun_ignores_garbage_and_truncated_packets() {
    let node = TestNode::spawn(&[]);
    let stun = stun_addr(&node, "127.").await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (req, _) = binding_request(Some("someone"));
    for bad in [
        &b"hello, stun?"[..],
        &[0u8; 3][..],
        &req[..req.len() - 3],
        &req[..20],
    ] {
        sock.send_to(bad, stun).await.unwrap();
    }
    assert!(
        silent(&sock, Duration::from_millis(300)).await,
        "garbage was answered"
    );
    // Still serving.
    assert_eq!(
        stun_bind(&sock, stun, None).await,
        sock.local_addr().unwrap()
    );
    assert!(metric(&node, "switchboard_stun_malformed_total").await >= 4.0);
    assert!(metric(&node, "switchboard_stun_requests_total").await >= 1.0);
}

// ---------------------------------------------------------------------------
// Pairing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn thousand_workers_auto_pair_exactly_once_across_three_nodes() {
    workers_pair_exactly_once(&RedisServer::start(), &unique_prefix("rdv-1000"), 1000).await;
}

/// `n` workers (even) over three nodes clustered through `redis` ask to be
/// paired at once: each is in exactly one pairing, both sides agree, and a
/// partner's disconnect or node's death is heard once (`pair-lost`).
pub(crate) async fn workers_pair_exactly_once(redis: &impl RedisBackend, prefix: &str, n: usize) {
    let nodes = spawn_cluster(redis, prefix, 3, &[]).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.ws_url()).collect();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = urls[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.timeout = Duration::from_secs(30);
            let me = format!("w{i}");
            c.hello(&me).await;
            c.send_json(json!({"type": "pair", "id": 1, "meta": {"i": i}}))
                .await;
            // The `ack` first, then the `paired`, even when another node
            // matches this worker before its own node has read the store's
            // answer (PROTOCOL.md "Rendezvous", RENDEZVOUS.md ordering note).
            assert_eq!(c.recv().await, json!({"type": "ack", "id": 1}), "{me}");
            let paired = c.recv_type("paired").await;
            (me, paired, c)
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    // Every worker is in exactly one pairing, both sides agree, one initiator each.
    let mut by_pairing: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for (me, p, _) in &got {
        by_pairing
            .entry(p["pairing_id"].as_str().unwrap().to_string())
            .or_default()
            .push((
                me.clone(),
                p["role"].as_str().unwrap().to_string(),
                p["peer"]["peer_id"].as_str().unwrap().to_string(),
            ));
    }
    assert_eq!(by_pairing.len(), n / 2);
    let mut seen = HashSet::new();
    for (id, sides) in &by_pairing {
        assert_eq!(sides.len(), 2, "pairing {id}: {sides:?}");
        let (a, b) = (&sides[0], &sides[1]);
        assert_eq!((&a.2, &b.2), (&b.0, &a.0), "pairing {id} is not symmetric");
        let mut roles = [a.1.as_str(), b.1.as_str()];
        roles.sort();
        assert_eq!(roles, ["initiator", "responder"]);
        assert!(seen.insert(a.0.clone()) && seen.insert(b.0.clone()));
    }
    assert_eq!(seen.len(), n);
    // Nothing more arrives for anyone (no second `paired`): every worker's
    // next message is the pong to a ping sent now (all pings go out first,
    // so the round trips overlap).
    let mut clients: HashMap<String, (Client, Value)> =
        got.into_iter().map(|(me, p, c)| (me, (c, p))).collect();
    for (c, _) in clients.values_mut() {
        c.send_json(json!({"type": "ping", "id": "after"})).await;
    }
    for (me, (c, _)) in clients.iter_mut() {
        assert_eq!(
            c.recv().await,
            json!({"type": "pong", "id": "after"}),
            "{me}: something came before the pong"
        );
    }

    // Partner loss across nodes: w0 leaves, its partner hears `disconnected`.
    let partner = clients["w0"].1["peer"]["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pairing = clients["w0"].1["pairing_id"].clone();
    let (w0, _) = clients.remove("w0").unwrap();
    w0.close().await;
    let lost = clients
        .get_mut(&partner)
        .unwrap()
        .0
        .recv_type("pair-lost")
        .await;
    assert_eq!(
        lost,
        json!({"type": "pair-lost", "pairing_id": pairing, "reason": "disconnected"})
    );

    // Node death: node-3 is killed; each survivor paired with one of its
    // workers hears `timeout` once its heartbeat expires.
    let on_node3 = |i: usize| i % 3 == 2;
    let idx = |w: &str| w[1..].parse::<usize>().unwrap();
    let orphans: Vec<String> = clients
        .iter()
        .filter(|(me, (_, p))| {
            !on_node3(idx(me)) && on_node3(idx(p["peer"]["peer_id"].as_str().unwrap()))
        })
        .map(|(me, _)| me.clone())
        .collect();
    assert!(!orphans.is_empty());
    nodes[2].sigkill();
    for me in &orphans {
        let (c, p) = clients.get_mut(me).unwrap();
        c.timeout = Duration::from_secs(10);
        let lost = c.recv_type("pair-lost").await;
        assert_eq!(
            (lost["pairing_id"].clone(), lost["reason"].clone()),
            (p["pairing_id"].clone(), json!("timeout"))
        );
    }
}

/// Runs a single-node scenario on the embedded backends and on Redis (one
/// node of a cluster), so the Lua scripts face the same checks as the memory store.
macro_rules! on_both_backends {
    ($embedded:ident, $redis:ident, $scenario:ident) => {
        #[tokio::test]
        async fn $embedded() {
            $scenario(&TestNode::spawn(&[])).await;
        }

        #[tokio::test]
        async fn $redis() {
            let redis = RedisServer::start();
            let nodes = spawn_cluster(&redis, &unique_prefix(stringify!($redis)), 1, &[]).await;
            $scenario(&nodes[0]).await;
        }
    };
}

on_both_backends!(
    manual_pairing_errors_and_success,
    manual_pairing_errors_and_success_on_redis,
    manual_pairing
);

async fn manual_pairing(node: &TestNode) {
    let mut a = node.peer("ma").await;
    let mut b = node.peer("mb").await;
    let mut c = node.peer("mc").await;
    a.send_json(
        json!({"type": "endpoint", "id": 1, "udp": "192.0.2.1:4000", "public_ip": "192.0.2.1"}),
    )
    .await;
    assert_eq!(a.recv().await, json!({"type": "ack", "id": 1}));
    b.send_json(json!({"type": "endpoint", "id": 1, "udp": "[2001:db8::2]:5000"}))
        .await;
    assert_eq!(b.recv().await, json!({"type": "ack", "id": 1}));
    c.send_json(json!({"type": "pair", "id": 1, "pool": "elsewhere"}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ack", "id": 1}));
    // Bad endpoints are refused with invalid-endpoint.
    a.send_json(json!({"type": "endpoint", "id": 2, "udp": "192.0.2.1"}))
        .await;
    a.recv_error("invalid-endpoint").await;
    a.send_json(json!({"type": "endpoint", "id": 3, "public_ip": "nope"}))
        .await;
    a.recv_error("invalid-endpoint").await;
    a.send_json(json!({"type": "endpoint", "id": 4})).await;
    a.recv_error("invalid-endpoint").await;

    let (s, e) = post(node, "/api/connect", "not json").await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (400, json!("invalid-message"))
    );
    let (s, e) = post(node, "/api/connect", r#"{"worker_a_id": "ma"}"#).await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = post(
        node,
        "/api/connect",
        r#"{"worker_a_id": "ma", "worker_b_id": "ghost"}"#,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (404, json!("worker-not-found"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("worker_b_id"),
        "{e}"
    );
    let (s, e) = post(
        node,
        "/api/connect",
        r#"{"worker_a_id": "ma", "worker_b_id": "ma"}"#,
    )
    .await;
    assert_eq!((s, e["error"]["code"].clone()), (409, json!("same-worker")));

    let (s, ok) = post(
        node,
        "/api/connect",
        r#"{"worker_a_id": "ma", "worker_b_id": "mb"}"#,
    )
    .await;
    assert_eq!(s, 200, "{ok}");
    let pid = ok["pairing_id"].clone();
    assert_eq!(
        (
            ok["initiator"]["peer_id"].clone(),
            ok["responder"]["peer_id"].clone()
        ),
        (json!("ma"), json!("mb"))
    );
    let pa = a.recv_type("paired").await;
    let pb = b.recv_type("paired").await;
    assert_eq!(pa["pairing_id"], pid);
    assert_eq!(pb["pairing_id"], pid);
    assert_eq!(pa["role"], "initiator");
    assert_eq!(pb["role"], "responder");
    assert_eq!(pa["peer"]["peer_id"], "mb");
    assert_eq!(pa["peer"]["udp"], "[2001:db8::2]:5000");
    assert_eq!(pa["peer"]["public_ip"], Value::Null);
    assert_eq!(pb["peer"]["udp"], "192.0.2.1:4000");
    assert_eq!(pb["peer"]["public_ip"], "192.0.2.1");
    assert_eq!(pb["peer"]["observed_addr"], a.local_addr.to_string());

    let (s, e) = post(
        node,
        "/api/connect",
        r#"{"worker_a_id": "mc", "worker_b_id": "mb"}"#,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (409, json!("already-paired"))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("worker_b_id"),
        "{e}"
    );

    let w = workers(node).await;
    assert_eq!(w.len(), 3);
    assert_eq!(
        (
            w["ma"]["state"].clone(),
            w["ma"]["partner"].clone(),
            w["ma"]["pairing_id"].clone()
        ),
        (json!("paired"), json!("mb"), pid)
    );
    assert_eq!(
        (w["mc"]["state"].clone(), w["mc"]["pool"].clone()),
        (json!("queued"), json!("elsewhere"))
    );
    // A queued worker can be paired by the operator; it leaves its queue.
    let (s, _) = post(
        node,
        "/api/connect",
        r#"{"worker_a_id": "mc", "worker_b_id": "ma"}"#,
    )
    .await;
    assert_eq!(s, 409);
    let mut d = node.peer("md").await;
    d.send_json(json!({"type": "endpoint", "id": 1, "udp": "192.0.2.9:9"}))
        .await;
    assert_eq!(d.recv().await, json!({"type": "ack", "id": 1}));
    let (s, ok) = post(
        node,
        "/api/connect",
        r#"{"worker_a_id": "mc", "worker_b_id": "md"}"#,
    )
    .await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(c.recv_type("paired").await["peer"]["peer_id"], "md");
    assert_eq!(next_of(&mut d, "paired").await["peer"]["peer_id"], "mc");
}

#[tokio::test]
async fn pairing_lost_with_a_restarted_redis_is_reported_and_workers_recover() {
    let mut redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("rdv-restart"), 2, &[]).await;
    let mut a = nodes[0].peer("ra").await;
    let mut b = nodes[1].peer("rb").await;
    a.send_json(json!({"type": "pair", "pool": "r"})).await;
    b.send_json(json!({"type": "pair", "id": 1, "pool": "r"}))
        .await;
    let p = next_of(&mut b, "paired").await;
    assert_eq!(a.recv_type("paired").await["pairing_id"], p["pairing_id"]);
    // Redis restarts empty: the pairing is gone from the store, and each side
    // hears so from its own node once it has registered again.
    redis.stop();
    redis.restart();
    for c in [&mut a, &mut b] {
        c.timeout = Duration::from_secs(10);
        assert_eq!(
            c.recv().await,
            json!({"type": "pair-lost", "pairing_id": p["pairing_id"], "reason": "timeout"})
        );
        c.timeout = Duration::from_secs(5);
    }
    // The workers are known again (idle) and can pair afresh.
    wait_ready(&nodes[0], true, Duration::from_secs(10)).await;
    wait_ready(&nodes[1], true, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let w = workers(&nodes[0]).await;
        let state = |id: &str| w.get(id).map(|r| r["state"].clone());
        if state("ra") == Some(json!("idle")) && state("rb") == Some(json!("idle")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers not registered again: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.send_json(json!({"type": "pair", "pool": "r"})).await;
    b.send_json(json!({"type": "pair", "pool": "r"})).await;
    let again = next_of(&mut b, "paired").await;
    assert_ne!(again["pairing_id"], p["pairing_id"]);
    assert_eq!(
        next_of(&mut a, "paired").await["pairing_id"],
        again["pairing_id"]
    );
}

on_both_backends!(
    partner_hears_pair_lost_on_unpair_and_on_disconnect,
    partner_hears_pair_lost_on_unpair_and_on_disconnect_on_redis,
    partner_loss
);

async fn partner_loss(node: &TestNode) {
    let mut p1 = node.peer("p1").await;
    let mut p2 = node.peer("p2").await;
    p2.send_json(json!({"type": "unpair", "id": 1})).await;
    p2.recv_error("not-paired").await;
    p1.send_json(json!({"type": "pair", "id": 1, "pool": "lab"}))
        .await;
    assert_eq!(p1.recv().await, json!({"type": "ack", "id": 1}));
    p2.send_json(json!({"type": "pair", "id": 2, "pool": "lab"}))
        .await;
    assert_eq!(p2.recv().await, json!({"type": "ack", "id": 2}));
    let a = p2.recv_type("paired").await;
    let b = p1.recv_type("paired").await;
    assert_eq!(a["pairing_id"], b["pairing_id"]);
    assert_eq!(
        (b["role"].clone(), a["role"].clone()),
        (json!("initiator"), json!("responder"))
    );
    p1.send_json(json!({"type": "pair", "id": 3, "pool": "lab"}))
        .await;
    p1.recv_error("already-paired").await;
    p1.send_json(json!({"type": "pair", "id": 3, "pool": ""}))
        .await;
    p1.recv_error("invalid-pool").await;

    p1.send_json(json!({"type": "unpair", "id": 4})).await;
    assert_eq!(p1.recv().await, json!({"type": "ack", "id": 4}));
    assert_eq!(
        p2.recv().await,
        json!({"type": "pair-lost", "pairing_id": a["pairing_id"], "reason": "unpaired"})
    );
    p2.send_json(json!({"type": "unpair", "id": 5})).await;
    p2.recv_error("not-paired").await;

    // Paired again (default pool), then p2 disconnects.
    p1.send_json(json!({"type": "pair"})).await;
    p2.send_json(json!({"type": "pair"})).await;
    let again = p1.recv_type("paired").await;
    assert_ne!(again["pairing_id"], a["pairing_id"]);
    assert_eq!(
        p2.recv_type("paired").await["pairing_id"],
        again["pairing_id"]
    );
    p2.close().await;
    assert_eq!(
        p1.recv().await,
        json!({"type": "pair-lost", "pairing_id": again["pairing_id"], "reason": "disconnected"})
    );
    assert_eq!(workers(node).await["p1"]["state"], "idle");
    assert!(
        metric(
            node,
            r#"switchboard_pairings_lost_total{reason="unpaired"}"#
        )
        .await
            >= 1.0
    );
    assert!(metric(node, "switchboard_pair_wait_seconds_count").await >= 4.0);
}

// ---------------------------------------------------------------------------
// The older rendezvous service's worker protocol
// ---------------------------------------------------------------------------

on_both_backends!(
    legacy_worker_protocol_message_by_message,
    legacy_worker_protocol_message_by_message_on_redis,
    legacy_protocol
);

async fn legacy_protocol(node: &TestNode) {
    let (s, root) = node.get("/").await;
    assert_eq!((s, root["status"].clone()), (200, json!("ok")));

    let mut w1 = legacy(node, "w1").await;
    w1.send_json(json!({"type": "register_public_ip", "ip": "203.0.113.7"}))
        .await;
    // Invalid or missing ip, non-JSON, unknown types: logged and ignored.
    w1.send_json(json!({"type": "register_public_ip", "ip": "not-an-ip"}))
        .await;
    w1.send_json(json!({"type": "register_public_ip"})).await;
    w1.send_raw_text("this is not JSON").await;
    w1.send_json(json!({"type": "what_is_this"})).await;
    w1.send_json(json!({"no_type": 1})).await;
    w1.send_json(json!({"type": "echo_request", "payload": {"n": 1, "s": "x"}}))
        .await;
    let echo = w1.recv().await;
    assert_eq!(echo["type"], "echo_response");
    assert_eq!(echo["original_payload"], json!({"n": 1, "s": "x"}));
    assert!(
        echo["processed_by_rendezvous"]
            .as_str()
            .unwrap()
            .contains("w1"),
        "{echo}"
    );
    assert_eq!(echo.as_object().unwrap().len(), 3, "{echo}");

    let (s, list) = node.get("/debug/list_workers").await;
    assert_eq!(s, 200);
    assert_eq!(
        list,
        json!({"connected_workers_count": 1, "workers": {"w1": {
            "websocket_observed_ip": "127.0.0.1",
            "websocket_observed_port": w1.local_addr.port(),
            "http_reported_public_ip": "203.0.113.7",
            "websocket_connected": true,
        }}})
    );

    // Two workers report UDP endpoints: auto-paired, each offered the other.
    let mut w2 = legacy(node, "w2").await;
    w1.send_json(
        json!({"type": "update_udp_endpoint", "udp_ip": "198.51.100.1", "udp_port": 40001}),
    )
    .await;
    w1.send_json(json!({"type": "echo_request", "payload": 1}))
        .await;
    assert_eq!(w1.recv().await["type"], "echo_response"); // queued, not paired yet
    w2.send_json(
        json!({"type": "update_udp_endpoint", "udp_ip": "198.51.100.2", "udp_port": 40002}),
    )
    .await;
    assert_eq!(
        w1.recv().await,
        json!({"type": "p2p_connection_offer", "peer_worker_id": "w2", "peer_udp_ip": "198.51.100.2", "peer_udp_port": 40002})
    );
    assert_eq!(
        w2.recv().await,
        json!({"type": "p2p_connection_offer", "peer_worker_id": "w1", "peer_udp_ip": "198.51.100.1", "peer_udp_port": 40001})
    );
    let w = workers(node).await;
    assert_eq!(
        (
            w["w1"]["dialect"].clone(),
            w["w1"]["state"].clone(),
            w["w1"]["pool"].clone()
        ),
        (json!("legacy"), json!("paired"), json!("default"))
    );

    // Same worker id again while w1 is connected: refused before the upgrade
    // (409 peer-id-taken), as the older service's worker retries anyway; once
    // w1 has left, the retry gets in. (With a token for the id the newer one
    // replaces the older instead, closing it with 1000 and the old text:
    // tests/it/sec_auth.rs.)
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (s, refused) = node.get_with("/ws/register/w1", &upgrade).await;
    assert_eq!(
        (s, refused["error"]["code"].clone()),
        (409, json!("peer-id-taken"))
    );
    w1.close().await;
    let url = format!("ws://{}/ws/register/w1", node.addr());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut w1b = loop {
        match Client::try_connect(&url, None).await {
            Ok(c) => break c,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "w1 still refused after it left: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    w1b.send_json(json!({"type": "echo_request", "payload": "again"}))
        .await;
    assert_eq!(w1b.recv().await["original_payload"], "again");
    let (_, list) = node.get("/debug/list_workers").await;
    assert_eq!(list["connected_workers_count"], 2);
    assert_eq!(
        list["workers"]["w1"]["websocket_observed_port"],
        w1b.local_addr.port()
    );
    assert_eq!(
        list["workers"]["w1"]["http_reported_public_ip"],
        Value::Null
    );
    // w2's partner left: it is free again (legacy has no pair-lost message,
    // so nothing tells the test when). Bounded poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = workers(node).await["w2"]["state"].clone();
        if state == "idle" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "w2 stayed {state} after its partner left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn legacy_worker_pairs_with_native_worker() {
    let node = TestNode::spawn(&[]);
    let mut n1 = node.peer("n1").await;
    n1.send_json(json!({"type": "endpoint", "udp": "192.0.2.10:5000", "public_ip": "192.0.2.10"}))
        .await;
    n1.send_json(json!({"type": "pair", "id": 1})).await;
    assert_eq!(n1.recv().await, json!({"type": "ack", "id": 1}));
    let mut l1 = legacy(&node, "l1").await;
    l1.send_json(json!({"type": "register_public_ip", "ip": "198.51.100.5"}))
        .await;
    l1.send_json(
        json!({"type": "update_udp_endpoint", "udp_ip": "198.51.100.5", "udp_port": 6000}),
    )
    .await;
    let p = n1.recv_type("paired").await;
    assert_eq!(p["role"], "initiator");
    assert_eq!(
        p["peer"],
        json!({"peer_id": "l1", "observed_addr": l1.local_addr.to_string(), "public_ip": "198.51.100.5", "udp": "198.51.100.5:6000"})
    );
    assert_eq!(
        l1.recv().await,
        json!({"type": "p2p_connection_offer", "peer_worker_id": "n1", "peer_udp_ip": "192.0.2.10", "peer_udp_port": 5000})
    );
    l1.close().await;
    assert_eq!(
        n1.recv().await,
        json!({"type": "pair-lost", "pairing_id": p["pairing_id"], "reason": "disconnected"})
    );
}

// ---------------------------------------------------------------------------
// Trusted proxies
// ---------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let trusting = TestNode::spawn(&[("SWITCHBOARD_HTTP__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#)]);
    let plain = TestNode::spawn(&[]);

    let w = welcome_with_headers(&trusting.ws_url(), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(w["observed_addr"], "203.0.113.9:0");
    // Rightmost untrusted hop wins; a client-supplied left part is not believed.
    let w = welcome_with_headers(
        &trusting.ws_url(),
        &[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 127.0.0.5")],
    )
    .await;
    assert_eq!(w["observed_addr"], "198.51.100.7:0");
    // `Forwarded` is read only where it is the configured header.
    let forwarded = TestNode::spawn(&[
        ("SWITCHBOARD_HTTP__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#),
        ("SWITCHBOARD_HTTP__CLIENT_IP_HEADER", "forwarded"),
    ]);
    let w = welcome_with_headers(
        &forwarded.ws_url(),
        &[("forwarded", r#"for="[2001:db8::7]:4711";proto=http"#)],
    )
    .await;
    assert_eq!(w["observed_addr"], "[2001:db8::7]:4711");

    let w = welcome_with_headers(&plain.ws_url(), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert!(
        w["observed_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{w}"
    );

    // The legacy door too.
    let url = format!("ws://{}/ws/register/fw", trusting.addr());
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.10"));
    let (_ws, _) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    let mut list = Value::Null;
    for _ in 0..500 {
        list = trusting.get("/debug/list_workers").await.1;
        if list["connected_workers_count"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        list["workers"]["fw"]["websocket_observed_ip"], "203.0.113.10",
        "{list}"
    );
}
