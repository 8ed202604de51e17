//! Documented behaviours that had no test (issue 22): each test names the
//! part of the docs it holds the binary to. Single-node cases first, then
//! the cluster ones (a real redis-server, several node processes).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cluster_helpers::{cluster_env, spawn_cluster, unique_prefix, wait_ready, RedisServer};
use crate::helpers::{
    http_client, metric, run_cli, wait_metric, within, Client, TestNode, MSGPACK,
};

// ---------------------------------------------------------------------------
// MessagePack, built byte by byte (what no serde encoder writes on its own)
// ---------------------------------------------------------------------------

fn mp_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A fixmap of `entries` (key, encoded value).
fn mp_map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80 | entries.len() as u8];
    for (k, v) in entries {
        mp_str(&mut out, k);
        out.extend_from_slice(v);
    }
    out
}

fn mp_s(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    mp_str(&mut out, s);
    out
}

fn f32_(v: f32) -> Vec<u8> {
    let mut out = vec![0xca];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

fn f64_(v: f64) -> Vec<u8> {
    let mut out = vec![0xcb];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

/// fixext 1 of application type 5.
fn ext() -> Vec<u8> {
    vec![0xd4, 0x05, 0x2a]
}

/// True when `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn msgpack_peer(node: &TestNode, peer: &str) -> Client {
    let mut c = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    c.send_msgpack(json!({"type": "hello", "peer_id": peer}))
        .await;
    assert_eq!(c.recv().await["type"], "welcome");
    c
}

/// PROTOCOL.md §2: float32 is widened to float64, NaN and ±Infinity become
/// `null` for a JSON receiver (in `data` and `meta`); a MessagePack receiver
/// gets `data` byte for byte (the float32 and the NaN as sent), and `meta`
/// through the value tree (float64, `nil`).
#[tokio::test]
async fn msgpack_float32_nan_and_infinity_are_converted_as_documented() {
    let node = TestNode::spawn(&[]);
    let mut json_rx = node.peer("j").await;
    let mut mp_rx = msgpack_peer(&node, "m").await;
    let mut tx = msgpack_peer(&node, "tx").await;
    let data = mp_map(&[
        ("f", f32_(1.5)),
        ("n", f64_(f64::NAN)),
        ("i", f64_(f64::NEG_INFINITY)),
    ]);
    for to in ["j", "m"] {
        tx.send_raw_binary(&mp_map(&[
            ("type", mp_s("signal")),
            ("to", mp_s(to)),
            ("kind", mp_s("k")),
            ("data", data.clone()),
        ]))
        .await;
    }
    let s = json_rx.recv_type("signal").await;
    assert_eq!(s["data"], json!({"f": 1.5, "n": null, "i": null}));
    let raw = mp_rx.recv_binary().await;
    assert!(
        contains(&raw, &data),
        "the MessagePack receiver did not get data byte for byte: {raw:02x?}"
    );
    // `meta` goes through the value tree, for every receiver.
    json_rx.join("meta").await;
    mp_rx
        .send_msgpack(json!({"type": "join", "room": "meta"}))
        .await;
    assert_eq!(mp_rx.recv().await["type"], "joined");
    assert_eq!(json_rx.recv_type("peer-joined").await["peer_id"], "m");
    tx.send_raw_binary(&mp_map(&[
        ("type", mp_s("join")),
        ("room", mp_s("meta")),
        ("meta", mp_map(&[("f", f32_(1.5)), ("n", f64_(f64::NAN))])),
    ]))
    .await;
    assert_eq!(tx.recv().await["type"], "joined");
    let pj = json_rx.recv_type("peer-joined").await;
    assert_eq!(pj["meta"], json!({"f": 1.5, "n": null}), "{pj}");
    let raw = mp_rx.recv_binary().await;
    let mut widened = Vec::new();
    mp_str(&mut widened, "f");
    widened.extend_from_slice(&f64_(1.5));
    let mut nil = Vec::new();
    mp_str(&mut nil, "n");
    nil.push(0xc0);
    assert!(
        contains(&raw, &widened) && contains(&raw, &nil),
        "meta to a MessagePack receiver: {raw:02x?}"
    );
}

/// PROTOCOL.md §2 and §11: a MessagePack `ext` in `data` or `meta` rejects
/// the frame (`malformed`); in a field the server ignores it is skipped.
#[tokio::test]
async fn msgpack_ext_is_malformed_in_data_and_meta_and_skipped_elsewhere() {
    let node = TestNode::spawn(&[]);
    let mut rx = node.peer("rx").await;
    let mut tx = msgpack_peer(&node, "tx").await;
    tx.send_raw_binary(&mp_map(&[
        ("type", mp_s("signal")),
        ("id", vec![0x01]),
        ("to", mp_s("rx")),
        ("kind", mp_s("k")),
        ("data", mp_map(&[("t", ext())])),
    ]))
    .await;
    let e = tx.recv().await;
    assert_eq!(
        (&e["type"], &e["code"]),
        (&json!("error"), &json!("malformed")),
        "{e}"
    );
    tx.send_raw_binary(&mp_map(&[
        ("type", mp_s("join")),
        ("id", vec![0x02]),
        ("room", mp_s("r")),
        ("meta", ext()),
    ]))
    .await;
    assert_eq!(tx.recv().await["code"], "malformed");
    // In a field no message uses, an `ext` is skipped: the signal goes through.
    tx.send_raw_binary(&mp_map(&[
        ("type", mp_s("signal")),
        ("id", vec![0x03]),
        ("to", mp_s("rx")),
        ("kind", mp_s("k")),
        ("data", vec![0x07]),
        ("extra", ext()),
    ]))
    .await;
    assert_eq!(tx.recv().await, json!({"type": "ack", "id": 3}));
    assert_eq!(rx.recv_type("signal").await["data"], 7);
    rx.ping().await;
    tx.ping_msgpack().await;
}

/// PROTOCOL.md §2: in the server's MessagePack maps `type` comes first; the
/// documented bytes of `pong`, with and without `id`.
#[tokio::test]
async fn msgpack_answers_are_type_first_as_in_the_documented_bytes() {
    let node = TestNode::spawn(&[]);
    let mut c = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    let ping: [u8; 15] = [
        0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i', b'd', 0x01,
    ];
    c.send_raw_binary(&ping).await;
    assert_eq!(
        c.recv_binary().await,
        [
            0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'o', b'n', b'g', 0xa2, b'i', b'd',
            0x01
        ]
    );
    c.send_raw_binary(&[
        0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
    ])
    .await;
    assert_eq!(
        c.recv_binary().await,
        [0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'o', b'n', b'g']
    );
    // Every server message starts with its `type` (a welcome, an error).
    c.send_msgpack(json!({"peer_id": "p", "id": 9, "type": "hello"}))
        .await;
    let type_is = |frame: &[u8], ty: &str| {
        assert_eq!(frame[0] & 0xf0, 0x80, "a fixmap: {frame:02x?}");
        let mut want = mp_s("type");
        want.extend(mp_s(ty));
        assert!(frame[1..].starts_with(&want), "`type` first: {frame:02x?}");
    };
    type_is(&c.recv_binary().await, "welcome");
    c.send_msgpack(json!({"id": 10, "type": "nope"})).await;
    type_is(&c.recv_binary().await, "error");
}

/// PROTOCOL.md §1: offered both subprotocols, the server picks
/// `switchboard.v1.json` (its own order, not the client's); unknown names
/// are ignored.
#[tokio::test]
async fn offered_both_subprotocols_the_server_picks_json() {
    let node = TestNode::spawn(&[]);
    for (i, offer) in [
        "switchboard.v1.msgpack, switchboard.v1.json",
        "chat, switchboard.v1.msgpack, switchboard.v1.json",
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = node.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(offer));
        let (mut ws, resp) = within("connect", tokio_tungstenite::connect_async(req))
            .await
            .expect("upgrade");
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "switchboard.v1.json",
            "offered {offer}"
        );
        // A binary hello is decoded as MessagePack, but the answer is JSON text.
        use futures_util::SinkExt;
        let hello =
            rmp_serde::to_vec_named(&json!({"type": "hello", "peer_id": format!("p{i}"), "id": 1}))
                .unwrap();
        within(
            "send",
            ws.send(tokio_tungstenite::tungstenite::Message::binary(hello)),
        )
        .await
        .unwrap();
        let m = within("welcome", ws.next()).await.unwrap().unwrap();
        let t = m.into_text().expect("a text frame");
        let w: Value = serde_json::from_str(&t).unwrap();
        assert_eq!((&w["type"], &w["id"]), (&json!("welcome"), &json!(1)));
    }
    // Only an unknown name: no subprotocol is selected, the first frame decides.
    let mut req = node.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
    match within("connect", tokio_tungstenite::connect_async(req)).await {
        Ok((_, resp)) => assert!(resp.headers().get("sec-websocket-protocol").is_none()),
        // A client library may refuse a server that selected none of its offers.
        Err(tokio_tungstenite::tungstenite::Error::Protocol(_)) => {}
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

/// PROTOCOL.md §4 and §11: control characters (C0, DEL, C1) in a peer id, a
/// room name or a signal kind are refused with the name's own code.
#[tokio::test]
async fn control_characters_in_names_and_kinds_are_refused() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    for (i, bad) in [
        "a\u{0}b",
        "a\u{7}b",
        "line\nbreak",
        "tab\t",
        "del\u{7f}",
        "c1\u{85}",
    ]
    .into_iter()
    .enumerate()
    {
        c.send_json(json!({"type": "hello", "id": i, "peer_id": bad}))
            .await;
        assert_eq!(c.recv_error("invalid-peer-id").await["id"], i, "{bad:?}");
    }
    c.hello("ok").await;
    let mut rx = node.peer("rx").await;
    for (i, bad) in ["off\ner", "k\u{1b}[31m", "\u{7f}", "x\u{9c}"]
        .into_iter()
        .enumerate()
    {
        c.send_json(json!({"type": "signal", "id": i, "to": "rx", "kind": bad}))
            .await;
        assert_eq!(c.recv_error("invalid-kind").await["id"], i, "{bad:?}");
        c.send_json(json!({"type": "join", "id": i, "room": bad}))
            .await;
        assert_eq!(c.recv_error("invalid-room").await["id"], i, "{bad:?}");
        c.send_json(json!({"type": "signal", "id": i, "to": bad, "kind": "k"}))
            .await;
        assert_eq!(c.recv_error("invalid-peer-id").await["id"], i, "{bad:?}");
    }
    // Nothing reached the target; a clean name still works.
    rx.ping().await;
    c.send_json(json!({"type": "signal", "id": "ok", "to": "rx", "kind": "offer"}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ack", "id": "ok"}));
    assert_eq!(rx.recv_type("signal").await["kind"], "offer");
}

/// RENDEZVOUS.md: with `stun.enabled = false` no STUN socket is bound and
/// `welcome` has no `stun_username`.
#[tokio::test]
async fn stun_disabled_binds_nothing_and_welcome_has_no_username() {
    let node = TestNode::spawn(&[("SWITCHBOARD_STUN__ENABLED", "false")]);
    let w = node.client().await.hello("p").await;
    assert!(w.get("stun_username").is_none(), "{w}");
    assert!(
        !node.log().contains("STUN responder bound"),
        "{}",
        node.log()
    );
    let on = TestNode::spawn(&[]);
    let w = on.client().await.hello("p").await;
    assert!(w["stun_username"].is_string(), "{w}");
}

/// RENDEZVOUS.md / lib.rs: a STUN port that is taken stops the start (exit
/// 1), naming the key and the address.
#[test]
fn a_stun_port_that_is_taken_stops_the_start() {
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = run_cli(
        &[],
        &[
            ("SWITCHBOARD_SERVER__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_STUN__LISTEN", &addr),
            ("SWITCHBOARD_STUN__LISTEN_V6", ""),
        ],
        Duration::from_secs(30),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("stun.listen: cannot bind UDP {addr}")),
        "{all}"
    );
    assert!(!all.contains("switchboard: listening on"), "{all}");
}

/// lib.rs / DESIGN.md: the start-up line carries the effective settings,
/// secrets redacted.
#[tokio::test]
async fn the_settings_logged_at_start_are_redacted() {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", "hunter2-jwt"),
        ("SWITCHBOARD_HTTP__ADMIN_TOKEN", "hunter2-admin"),
        ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "77"),
    ]);
    let line = node.wait_log("starting switchboard", Duration::from_secs(5));
    assert!(line.contains("\"outbound_queue\":77"), "{line}");
    assert!(line.contains("[redacted]"), "{line}");
    let log = node.log();
    assert!(!log.contains("hunter2"), "a secret reached the log:\n{log}");
}

/// Reads the STUN address a node logged.
fn stun_addr_of(node: &TestNode) -> SocketAddr {
    let needle = "STUN responder bound to udp 127.";
    let line = node.wait_log(needle, Duration::from_secs(5));
    let rest = &line[line.find("udp ").unwrap() + 4..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ':')))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// A STUN Binding request with `username` (RFC 5389, no FINGERPRINT).
fn binding_request(username: &str, txid: [u8; 12]) -> Vec<u8> {
    let mut attr = Vec::new();
    attr.extend_from_slice(&0x0006u16.to_be_bytes());
    attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attr.extend_from_slice(username.as_bytes());
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&txid);
    m.extend_from_slice(&attr);
    m
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// The first message that is not presence (re-registration may announce
/// members again).
async fn next_not_presence(c: &mut Client) -> Value {
    for _ in 0..100 {
        let m = c.recv().await;
        if m["type"] != "peer-joined" && m["type"] != "peer-left" {
            return m;
        }
    }
    panic!("only presence for 100 messages");
}

/// RENDEZVOUS.md: the pending STUN observations are capped (4,096); beyond,
/// new ones are dropped and counted. The observation task is held up by a
/// paused Redis (its store write waits), while a flood of answered requests
/// with a valid username arrives.
#[tokio::test]
async fn stun_observations_beyond_the_queue_are_dropped_and_counted() {
    const CAP: f64 = 4096.0;
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("obs-cap"),
        1,
        &[
            ("SWITCHBOARD_STUN__RATE_PER_IP", "0"),
            // Every queued observation becomes an `endpoint` for the worker.
            ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "20000"),
            ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE_BYTES", "67108864"),
        ],
    )
    .await;
    let node = &nodes[0];
    let mut w = node.client().await;
    let username = w.hello("w").await["stun_username"]
        .as_str()
        .unwrap()
        .to_string();
    let stun = stun_addr_of(node);
    redis.command(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut answered = 0u64;
    let mut buf = [0u8; 1500];
    // 6,000 requests, 50 at a time, each batch answered before the next.
    for batch in 0..120u32 {
        for i in 0..50u32 {
            let mut txid = [0u8; 12];
            txid[..4].copy_from_slice(&batch.to_be_bytes());
            txid[4..8].copy_from_slice(&i.to_be_bytes());
            sock.send_to(&binding_request(&username, txid), stun)
                .await
                .unwrap();
        }
        for _ in 0..50 {
            match tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await {
                Ok(Ok(_)) => answered += 1,
                _ => break,
            }
        }
    }
    let dropped_q = "switchboard_stun_observations_dropped_total";
    let dropped = wait_metric(node, dropped_q, 1.0, Duration::from_secs(10)).await;
    assert!(answered > 5000, "only {answered} answered");
    // At least the cap was queued: what was dropped is at most the rest.
    assert!(
        dropped <= answered as f64 - CAP,
        "{dropped} dropped of {answered}: the queue held fewer than {CAP}"
    );
    redis.command(&["CLIENT", "UNPAUSE"]);
    // The node recovers: the worker learns its endpoint.
    w.timeout = Duration::from_secs(30);
    let ep = next_not_presence(&mut w).await;
    assert_eq!(
        (&ep["type"], &ep["udp"]),
        (
            &json!("endpoint"),
            &json!(sock.local_addr().unwrap().to_string())
        )
    );
}

/// PROTOCOL.md §11 `cluster-unavailable`: a broadcast during a Redis outage
/// reaches the members on the sender's node, and the sender is told that
/// the other nodes were not reached; the remote member gets nothing.
#[tokio::test]
async fn a_broadcast_during_an_outage_is_cluster_unavailable_for_the_other_nodes() {
    let mut redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("bc-outage"), 2, &[]).await;
    let mut a = nodes[0].peer("a").await;
    let mut c = nodes[0].peer("c").await;
    let mut b = nodes[1].peer("b").await;
    for p in [&mut a, &mut c, &mut b] {
        p.join("r").await;
    }
    a.recv_type("peer-joined").await;
    a.recv_type("peer-joined").await;
    c.recv_type("peer-joined").await;
    // a waits in a pool (so `unpair` has something to undo).
    a.send_json(json!({"type": "pair", "id": "q", "pool": "lonely"}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "ack", "id": "q"}));
    redis.stop();
    crate::cluster_helpers::wait_ready(&nodes[0], false, Duration::from_secs(20)).await;
    a.send_json(json!({"type": "broadcast", "id": 5, "room": "r", "data": "hi"}))
        .await;
    let e = a.recv_error("cluster-unavailable").await;
    assert_eq!(e["id"], 5);
    assert_eq!(
        c.recv().await,
        json!({"type": "message", "room": "r", "from": "a", "data": "hi"})
    );
    b.ping().await;
    // The operator API answers 503 `cluster-unavailable` too, and so do
    // pairing requests (RENDEZVOUS.md).
    for path in ["/api/rooms", "/api/rooms/r", "/api/workers"] {
        let (status, body) = nodes[0].get(path).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (503, json!("cluster-unavailable")),
            "{path}: {body}"
        );
    }
    let r = http_client()
        .post(nodes[0].http("/api/connect"))
        .header("content-type", "application/json")
        .body(r#"{"worker_a_id": "a", "worker_b_id": "c"}"#)
        .send()
        .await
        .expect("POST /api/connect");
    assert_eq!(r.status().as_u16(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cluster-unavailable", "{body}");
    for (i, m) in [
        json!({"type": "pair", "pool": "p"}),
        json!({"type": "unpair"}),
        json!({"type": "endpoint", "public_ip": "198.51.100.1"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = m;
        m["id"] = json!(i);
        a.send_json(m.clone()).await;
        let e = next_not_presence(&mut a).await;
        assert_eq!(
            (&e["type"], &e["code"], &e["id"]),
            (&json!("error"), &json!("cluster-unavailable"), &json!(i)),
            "{m}: {e}"
        );
    }
    a.ping().await;
}

/// PROTOCOL.md §11 `cluster-unavailable`: a signal to a peer whose node died
/// and is not reaped yet (a long `cluster.node_ttl_ms`) is answered
/// `cluster-unavailable`: the target's node is not listening.
#[tokio::test]
async fn a_signal_to_a_dead_node_not_yet_reaped_is_cluster_unavailable() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("dead-target"),
        2,
        &[("SWITCHBOARD_CLUSTER__NODE_TTL_MS", "600000")],
    )
    .await;
    let mut a = nodes[0].peer("a").await;
    let mut b = nodes[1].peer("b").await;
    a.send_json(json!({"type": "signal", "id": 1, "to": "b", "kind": "k"}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "ack", "id": 1}));
    b.recv_type("signal").await;
    nodes[1].sigkill();
    // Redis drops the dead node's subscription when it sees the socket close.
    let channel = format!("{}:ch:node:node-2", unique_prefix("dead-target"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !redis
        .command(&["PUBSUB", "NUMSUB", &channel])
        .ends_with(":0\r\n")
    {
        assert!(std::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its directory entry stays (no reaping for ten minutes).
    for id in 2..4 {
        a.send_json(json!({"type": "signal", "id": id, "to": "b", "kind": "k"}))
            .await;
        let e = a.recv_error("cluster-unavailable").await;
        assert_eq!(e["id"], id);
    }
    assert_eq!(
        metric(&nodes[0], "switchboard_nodes_reaped_total").await,
        0.0
    );
}

/// PROTOCOL.md §11 / relay: an outbox holds at most `cluster.outbox_max`
/// signals for one node; past that the sender gets `cluster-unavailable` at
/// once (counted). Redis is paused for writes, so the first signal's
/// publish hangs in flight and the next fills the outbox. Only the sender's
/// node has the small outbox: the receiver's node sends its answers (the
/// `ack`s) through an outbox of its own, which must not drop them.
#[tokio::test]
async fn a_signal_past_outbox_max_is_cluster_unavailable() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("outbox");
    let mut nodes = Vec::new();
    for (id, outbox) in [("node-1", "1"), ("node-2", "65536")] {
        let mut env = cluster_env(&redis, &prefix, id);
        env.push(("SWITCHBOARD_CLUSTER__OUTBOX_MAX".into(), outbox.into()));
        env.push((
            "SWITCHBOARD_CLUSTER__COMMAND_TIMEOUT_MS".into(),
            "20000".into(),
        ));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        nodes.push(TestNode::spawn(&env));
    }
    for n in &nodes {
        wait_ready(n, true, Duration::from_secs(20)).await;
    }
    let mut a = nodes[0].peer("a").await;
    a.timeout = Duration::from_secs(30);
    let mut b = nodes[1].peer("b").await;
    b.timeout = Duration::from_secs(30);
    // The route to b is learnt (and cached) while Redis works.
    a.send_json(json!({"type": "signal", "id": 0, "to": "b", "kind": "k", "data": 0}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "ack", "id": 0}));
    assert_eq!(b.recv_type("signal").await["data"], 0);
    redis.command(&["CLIENT", "PAUSE", "30000", "WRITE"]);
    const SENT: i64 = 5;
    for id in 1..=SENT {
        a.send_json(json!({"type": "signal", "id": id, "to": "b", "kind": "k", "data": id}))
            .await;
    }
    // The outbox holds the first signal (in flight, or still queued when the
    // next arrives) and at most one more; every other signal is refused at
    // once, while the publish hangs: at least three refusals come first.
    let mut refused = Vec::new();
    for _ in 0..SENT - 2 {
        let m = a.recv().await;
        assert_eq!(
            (&m["type"], &m["code"]),
            (&json!("error"), &json!("cluster-unavailable")),
            "{m}"
        );
        refused.push(m["id"].as_i64().unwrap());
    }
    redis.command(&["CLIENT", "UNPAUSE"]);
    // The last two answers: the accepted ones are acked once Redis resumes.
    let mut acked = Vec::new();
    for _ in 0..2 {
        let m = a.recv().await;
        let id = m["id"].as_i64().expect("an answer with an id");
        match m["type"].as_str() {
            Some("error") => {
                assert_eq!(m["code"], "cluster-unavailable", "{m}");
                refused.push(id);
            }
            Some("ack") => acked.push(id),
            _ => panic!("{m}"),
        }
    }
    acked.sort_unstable();
    assert!(
        (1..=2).contains(&acked.len()) && acked[0] == 1,
        "acked {acked:?}, refused {refused:?}"
    );
    assert_eq!(
        metric(&nodes[0], "switchboard_relay_outbox_full_total").await,
        refused.len() as f64
    );
    // Delivered in the order sent.
    for id in &acked {
        assert_eq!(b.recv_type("signal").await["data"], *id);
    }
    b.ping().await;
}

/// DESIGN.md / cluster config: two clusters in one Redis under different
/// `cluster.key_prefix`es see nothing of each other: the same peer id and
/// room name in both, no signal across, separate pools.
#[tokio::test]
async fn key_prefixes_keep_two_clusters_apart_in_one_redis() {
    let redis = RedisServer::start();
    let one = spawn_cluster(&redis, &unique_prefix("iso-one"), 1, &[]).await;
    let two = spawn_cluster(&redis, &unique_prefix("iso-two"), 1, &[]).await;
    let mut a1 = one[0].peer("alice").await;
    // The same id is free in the other cluster (no `peer-id-taken`).
    let mut a2 = two[0].peer("alice").await;
    let mut b2 = two[0].peer("bob").await;
    a1.join("r").await;
    let j = a2.join("r").await;
    assert_eq!(j["peers"], json!([]), "{j}");
    b2.join("r").await;
    assert_eq!(a2.recv_type("peer-joined").await["peer_id"], "bob");
    let (_, r1) = one[0].get("/api/rooms/r").await;
    assert_eq!(r1["members"].as_array().unwrap().len(), 1, "{r1}");
    let (_, r2) = two[0].get("/api/rooms/r").await;
    assert_eq!(r2["members"].as_array().unwrap().len(), 2, "{r2}");
    // bob exists only in cluster two.
    a1.send_json(json!({"type": "signal", "id": 1, "to": "bob", "kind": "k"}))
        .await;
    assert_eq!(a1.recv_error("peer-not-found").await["id"], 1);
    a1.send_json(json!({"type": "broadcast", "room": "r", "data": 1}))
        .await;
    // Pools are separate: one worker waiting in each cluster stays queued.
    a1.send_json(json!({"type": "pair", "id": 2, "pool": "p"}))
        .await;
    assert_eq!(a1.recv().await, json!({"type": "ack", "id": 2}));
    b2.send_json(json!({"type": "pair", "id": 3, "pool": "p"}))
        .await;
    assert_eq!(b2.recv().await, json!({"type": "ack", "id": 3}));
    let (_, w1) = one[0].get("/api/workers").await;
    let (_, w2) = two[0].get("/api/workers").await;
    assert_eq!(
        (w1["count"].clone(), w2["count"].clone()),
        (json!(1), json!(1)),
        "{w1} {w2}"
    );
    for c in [&mut a1, &mut a2, &mut b2] {
        c.ping().await;
    }
}

/// limits.rs, across nodes on the Redis store (its Lua): a room at
/// `max_peers_per_room` refuses a third member from either node with
/// `room-full`; a proven reconnect of a member takes its place in the full
/// room (the others see it leave as `replaced` and join again).
#[tokio::test]
async fn room_full_and_a_replacement_into_a_full_room_across_nodes() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("full"),
        2,
        &[("SWITCHBOARD_LIMITS__MAX_PEERS_PER_ROOM", "2")],
    )
    .await;
    let mut a = Client::connect(&nodes[0].ws_url()).await;
    let wa = a.hello("a").await;
    let mut b = nodes[1].peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    for n in &nodes {
        let mut c = n.peer(&format!("c-{}", n.addr().port())).await;
        c.send_json(json!({"type": "join", "id": "full", "room": "r"}))
            .await;
        assert_eq!(c.recv_error("room-full").await["id"], "full");
    }
    // a reconnects on the other node and joins the full room again.
    let mut a2 = Client::connect(&nodes[1].ws_url()).await;
    a2.hello_with(
        json!({"type": "hello", "peer_id": "a", "reconnect_secret": wa["reconnect_secret"]}),
    )
    .await;
    let ((code, _), _) = a.expect_close_after(&["peer-left", "peer-joined"]).await;
    assert_eq!(code, 4002);
    assert_eq!(
        b.recv().await,
        json!({"type": "peer-left", "room": "r", "peer_id": "a", "reason": "replaced"})
    );
    let j = a2.join("r").await;
    assert_eq!(j["peers"], json!([{"peer_id": "b", "meta": null}]));
    assert_eq!(b.recv_type("peer-joined").await["peer_id"], "a");
    let mut d = nodes[0].peer("d").await;
    d.send_json(json!({"type": "join", "id": 9, "room": "r"}))
        .await;
    assert_eq!(d.recv_error("room-full").await["id"], 9);
    let (_, r) = nodes[0].get("/api/rooms/r").await;
    assert_eq!(r["members"].as_array().unwrap().len(), 2, "{r}");
}

/// PROTOCOL.md §10 step 4: when a drain's grace period ends, a member's
/// rooms see it leave with reason `disconnected` (seen from another node,
/// which outlives the drain).
#[tokio::test]
async fn the_drain_closes_members_with_peer_left_disconnected() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("drain-left"),
        2,
        &[("SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS", "1000")],
    )
    .await;
    let mut staying = nodes[1].peer("staying").await;
    staying.timeout = Duration::from_secs(30);
    staying.join("r").await;
    let mut leaving = nodes[0].peer("leaving").await;
    leaving.timeout = Duration::from_secs(30);
    leaving.join("r").await;
    assert_eq!(staying.recv_type("peer-joined").await["peer_id"], "leaving");
    nodes[0].sigterm();
    assert_eq!(leaving.recv_type("reconnect").await["reason"], "draining");
    assert_eq!(leaving.expect_close().await, (1012, "draining".to_string()));
    assert_eq!(
        staying.recv().await,
        json!({"type": "peer-left", "room": "r", "peer_id": "leaving", "reason": "disconnected"})
    );
}

/// Publishes `count` copies of `payload` to `channel` in one pipeline (one
/// write), then waits for the replies.
fn publish_burst(redis: &RedisServer, channel: &str, payload: &str, count: usize) {
    use std::io::{Read, Write};
    let port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let one = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    );
    let mut all = one.repeat(count);
    all.push_str("*1\r\n$4\r\nPING\r\n");
    s.write_all(all.as_bytes()).expect("write the burst");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"+PONG\r\n") {
        let n = s.read(&mut buf).expect("redis replies");
        assert!(n > 0, "redis closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
}

/// DESIGN.md / `cluster.subscriber_buffer`: when pub/sub messages arrive
/// faster than the node takes them from a buffer that small, the overflow is
/// counted in `switchboard_bus_lagged_total` (and logged), and reading goes
/// on: the node's readiness probe still makes its round trip afterwards.
#[tokio::test]
async fn a_lagging_subscriber_is_counted_and_keeps_reading() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("lag");
    let nodes = spawn_cluster(
        &redis,
        &prefix,
        1,
        &[("SWITCHBOARD_CLUSTER__SUBSCRIBER_BUFFER", "1")],
    )
    .await;
    let channel = format!("{prefix}:ch:node:node-1");
    let lagged = "switchboard_bus_lagged_total";
    // Bursts until a lag is counted (the node may read them well after
    // Redis has sent them, on a busy machine: the last wait is long).
    for _ in 0..20 {
        publish_burst(&redis, &channel, "not an envelope", 5000);
        if metric(&nodes[0], lagged).await >= 1.0 {
            break;
        }
    }
    wait_metric(&nodes[0], lagged, 1.0, Duration::from_secs(60)).await;
    nodes[0].wait_log("pub/sub receiver lagged", Duration::from_secs(10));
    // Still reading: what was not lost was decoded (and refused), and the
    // probe's round trip works.
    // (The backlog after the lag is decoded as the node reaches it: wait.)
    wait_metric(
        &nodes[0],
        "switchboard_bus_decode_errors_total",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    crate::cluster_helpers::wait_ready(&nodes[0], true, Duration::from_secs(20)).await;
    // And its store calls work again (a node busy with the backlog may
    // still time one out: `cluster-unavailable` means retry, so retry).
    let mut a = nodes[0].peer("a").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for id in 0.. {
        a.send_json(json!({"type": "join", "id": id, "room": "r"}))
            .await;
        let m = a.recv().await;
        if m["type"] == "joined" {
            assert_eq!(m["id"], id);
            break;
        }
        assert_eq!(
            (&m["code"], &m["id"]),
            (&json!("cluster-unavailable"), &json!(id)),
            "{m}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "join kept failing: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.ping().await;
}

/// RENDEZVOUS.md `pair-lost`: reason `replaced` when the partner's id is
/// taken over by a newer connection (its proven reconnect), `timeout` when
/// the partner misses its heartbeats; on the embedded store and on Redis.
async fn pair_lost_replaced_and_timeout(node: &TestNode) {
    // Replaced.
    let mut w1 = node.peer("w1").await;
    let mut w2 = Client::connect(&node.ws_url()).await;
    let welcome = w2.hello("w2").await;
    w1.send_json(json!({"type": "pair", "id": "1", "pool": "lost"}))
        .await;
    assert_eq!(w1.recv().await, json!({"type": "ack", "id": "1"}));
    w2.send_json(json!({"type": "pair", "id": "2", "pool": "lost"}))
        .await;
    assert_eq!(w2.recv().await, json!({"type": "ack", "id": "2"}));
    let p = w1.recv_type("paired").await;
    assert_eq!(w2.recv_type("paired").await["pairing_id"], p["pairing_id"]);
    let mut again = Client::connect(&node.ws_url()).await;
    again
        .hello_with(json!({"type": "hello", "peer_id": "w2", "reconnect_secret": welcome["reconnect_secret"]}))
        .await;
    assert_eq!(w2.expect_close().await, (4002, "replaced".to_string()));
    assert_eq!(
        w1.recv().await,
        json!({"type": "pair-lost", "pairing_id": p["pairing_id"], "reason": "replaced"})
    );
    w1.close().await;
    again.close().await;

    // Timeout: w4 says hello and pairs over a raw socket, then goes silent.
    let mut w3 = node.peer("w3").await;
    w3.timeout = Duration::from_secs(30);
    w3.send_json(json!({"type": "pair", "id": "3", "pool": "lost"}))
        .await;
    assert_eq!(w3.recv().await, json!({"type": "ack", "id": "3"}));
    let mut w4 = crate::helpers::RawWs::connect(node.addr(), "/ws");
    w4.send_json(&json!({"type": "hello", "id": 1, "peer_id": "w4"}));
    assert_eq!(w4.recv_json()["type"], "welcome");
    w4.send_json(&json!({"type": "pair", "id": 4, "pool": "lost"}));
    assert_eq!(w4.recv_json(), json!({"type": "ack", "id": 4}));
    assert_eq!(w4.recv_json()["type"], "paired");
    let p = w3.recv_type("paired").await;
    assert_eq!(
        w3.recv().await,
        json!({"type": "pair-lost", "pairing_id": p["pairing_id"], "reason": "timeout"})
    );
    assert_eq!(
        w4.read_close(),
        Some((4004, "heartbeat-timeout".to_string()))
    );
    assert!(
        metric(
            node,
            r#"switchboard_pairings_lost_total{reason="replaced"}"#
        )
        .await
            >= 1.0
    );
    assert!(metric(node, r#"switchboard_pairings_lost_total{reason="timeout"}"#).await >= 1.0);
}

/// Heartbeats short enough for the timeout case, long enough for a reading
/// client on a busy machine.
const PAIR_HEARTBEAT: [(&str, &str); 2] = [
    ("SWITCHBOARD_LIMITS__HEARTBEAT_INTERVAL_MS", "500"),
    ("SWITCHBOARD_LIMITS__HEARTBEAT_TIMEOUT_MS", "3000"),
];

#[tokio::test]
async fn pair_lost_replaced_and_timeout_on_the_embedded_store() {
    pair_lost_replaced_and_timeout(&TestNode::spawn(&PAIR_HEARTBEAT)).await;
}

#[tokio::test]
async fn pair_lost_replaced_and_timeout_on_redis() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("pair-lost"), 1, &PAIR_HEARTBEAT).await;
    pair_lost_replaced_and_timeout(&nodes[0]).await;
}
