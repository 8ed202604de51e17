//! Cluster behaviour: several real node processes through a real redis-server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use switchboard::types::NodeId;

use crate::cluster_helpers::{
    spawn_cluster, unique_prefix, wait_ready, Nginx, RedisBackend, RedisServer,
};
use crate::helpers::{metric, sum_samples, Client, TestNode};
use tokio_tungstenite::tungstenite::Message;

async fn hello(node: &TestNode, peer: &str) -> (Client, Value) {
    let mut c = Client::connect(&node.ws_url()).await;
    let welcome = c.hello(peer).await;
    (c, welcome)
}

/// `hello` as `peer` again, giving the `reconnect_secret` of its last `welcome`.
async fn reconnect(node: &TestNode, peer: &str, last: &Value) -> (Client, Value) {
    let mut c = Client::connect(&node.ws_url()).await;
    let welcome = c
        .hello_with(
            json!({"type": "hello", "peer_id": peer, "reconnect_secret": last["reconnect_secret"]}),
        )
        .await;
    (c, welcome)
}

/// The next message of type `ty`, skipping presence (re-registration after an
/// outage may announce members again).
async fn next_of(c: &mut Client, ty: &str) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == ty {
            return m;
        }
        assert!(
            m["type"] == "peer-joined" || m["type"] == "peer-left",
            "expected {ty}, got {m}"
        );
    }
}

/// Sends a signal with an id and returns the answer (`ack` or `error`).
async fn signal(c: &mut Client, id: u64, to: &str, data: Value) -> Value {
    c.send_json(json!({"type": "signal", "id": id, "to": to, "kind": "offer", "data": data}))
        .await;
    loop {
        let m = c.recv().await;
        if m["type"] == "ack" || m["type"] == "error" {
            return m;
        }
    }
}

/// A JSON payload is relayed as the sender wrote it (spacing, key order,
/// escapes, number spelling), on one node and across nodes; a MessagePack
/// recipient gets the value it stands for.
#[tokio::test]
async fn json_data_arrives_as_sent_across_nodes() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("xraw"), 2, &[]).await;
    let (mut alice, _) = hello(&nodes[0], "alice").await;
    let (mut near, _) = hello(&nodes[0], "near").await;
    let (mut far, _) = hello(&nodes[1], "far").await;
    let mut packed =
        Client::connect_with_protocol(&nodes[1].ws_url(), "switchboard.v1.msgpack").await;
    packed
        .send_msgpack(json!({"type": "hello", "peer_id": "packed"}))
        .await;
    assert_eq!(packed.recv_type("welcome").await["peer_id"], "packed");

    let data = r#"{ "z": 1,"a" : "v=0\r\na=x\u00e9", "n": 1.50, "list": [ true ,null ] }"#;
    for (to, id) in [("near", 1), ("far", 2), ("packed", 3)] {
        alice
            .send_raw_text(&format!(
                r#"{{"type":"signal","id":{id},"to":"{to}","kind":"offer","data":{data}}}"#
            ))
            .await;
        assert_eq!(alice.recv().await, json!({"type": "ack", "id": id}));
    }
    let want = format!(r#"{{"type":"signal","from":"alice","kind":"offer","data":{data}}}"#);
    assert_eq!(near.recv_text().await, want, "same node");
    assert_eq!(far.recv_text().await, want, "across nodes");
    let got = packed.recv_frame().await;
    assert!(got.binary, "MessagePack client gets binary frames");
    assert_eq!(
        got.msg["data"],
        json!({"z": 1, "a": "v=0\r\na=x\u{e9}", "n": 1.5, "list": [true, null]})
    );
}

#[tokio::test]
async fn signal_crosses_nodes_exactly_once_and_in_order() {
    signals_cross_nodes_once_in_order(&RedisServer::start(), &unique_prefix("xsig")).await;
}

/// Signals between two nodes clustered through `redis`: acked, delivered
/// once and in order (500 in a row), `peer-not-found` for an unknown peer.
/// Returns the nodes, still running.
pub(crate) async fn signals_cross_nodes_once_in_order(
    redis: &impl RedisBackend,
    prefix: &str,
) -> Vec<TestNode> {
    let nodes = spawn_cluster(redis, prefix, 2, &[]).await;
    let (mut alice, wa) = hello(&nodes[0], "alice").await;
    let (mut bob, wb) = hello(&nodes[1], "bob").await;
    assert_ne!(wa["node"], wb["node"], "peers must be on different nodes");

    let ack = signal(&mut alice, 1, "bob", json!({"sdp": "offer-sdp"})).await;
    assert_eq!(ack, json!({"type": "ack", "id": 1}));
    let got = bob.recv_type("signal").await;
    assert_eq!(got["from"], "alice");
    assert_eq!(got["data"]["sdp"], "offer-sdp");

    bob.send_json(
        json!({"type": "signal", "to": "alice", "kind": "answer", "data": {"sdp": "answer-sdp"}}),
    )
    .await;
    let got = alice.recv_type("signal").await;
    assert_eq!(
        (got["from"].clone(), got["kind"].clone()),
        (json!("bob"), json!("answer"))
    );

    // 500 signals cross in order, each once.
    for i in 0..500u64 {
        alice
            .send_json(
                json!({"type": "signal", "to": "bob", "kind": "candidate", "data": {"seq": i}}),
            )
            .await;
    }
    for i in 0..500u64 {
        let m = bob.recv_type("signal").await;
        if m["data"]["seq"] != i {
            // Say what the sender was told (an error explains a gap; nothing does not).
            alice.send_json(json!({"type": "ping", "id": "end"})).await;
            let mut told = Vec::new();
            loop {
                let r = alice.recv().await;
                if r["type"] == "pong" {
                    break;
                }
                told.push(r);
            }
            panic!("expected seq {i}, got {m}; sender was told {told:?}");
        }
    }

    let err = signal(&mut alice, 2, "nobody", json!(null)).await;
    assert_eq!(
        (err["code"].clone(), err["id"].clone()),
        (json!("peer-not-found"), json!(2))
    );
    nodes
}

/// Waits until `node` holds no registered peer (bounded).
async fn wait_no_peers(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(node, "switchboard_peers").await > 0.0 {
        assert!(Instant::now() < deadline, "peers stayed registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `n` signals and checks they carry `seq` 0..n in order.
async fn expect_in_order(c: &mut Client, n: u64) {
    for i in 0..n {
        let m = c.recv_type("signal").await;
        assert_eq!(m["data"]["seq"], i, "signal {i} out of order: {m}");
    }
}

#[tokio::test]
async fn moved_peer_gets_signals_in_order_through_a_stale_route() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("moved"), 3, &[]).await;
    let (mut alice, _) = hello(&nodes[0], "alice").await;
    let (mut bob, w) = hello(&nodes[1], "bob").await;
    // Node 0 caches bob's route (node 1).
    assert_eq!(
        signal(&mut alice, 1, "bob", json!(null)).await["type"],
        "ack"
    );
    bob.recv_type("signal").await;

    // Bob moves to node 2; node 0's route now names the wrong node. (Bob
    // reconnects as a client should, with its reconnect secret: node 1 may
    // not have removed its directory entry yet.)
    bob.send(Message::Close(None)).await;
    drop(bob);
    wait_no_peers(&nodes[1]).await;
    let (mut bob, w) = reconnect(&nodes[2], "bob", &w).await;

    // A burst sent at once: the first signals bounce off node 1, later ones
    // are held while node 1 drains; all arrive once, in order, then the ack.
    for i in 0..300u64 {
        alice
            .send_json(
                json!({"type": "signal", "to": "bob", "kind": "candidate", "data": {"seq": i}}),
            )
            .await;
    }
    let ack = signal(&mut alice, 2, "bob", json!({"seq": 300})).await;
    assert_eq!(ack, json!({"type": "ack", "id": 2}));
    expect_in_order(&mut bob, 301).await;
    assert!(metric(&nodes[1], "switchboard_relay_bounces_total{side=\"sent\"}").await >= 1.0);
    assert!(
        metric(
            &nodes[0],
            "switchboard_relay_bounces_total{side=\"received\"}"
        )
        .await
            >= 1.0
    );

    // Bob moves again, this time to the sender's own node.
    bob.send(Message::Close(None)).await;
    drop(bob);
    wait_no_peers(&nodes[2]).await;
    let (mut bob, _) = reconnect(&nodes[0], "bob", &w).await;
    for i in 0..100u64 {
        alice
            .send_json(
                json!({"type": "signal", "to": "bob", "kind": "candidate", "data": {"seq": i}}),
            )
            .await;
    }
    expect_in_order(&mut bob, 100).await;
}

#[tokio::test]
async fn signal_through_a_route_to_a_departed_peer_is_not_found() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("gone"), 2, &[]).await;
    let (mut alice, _) = hello(&nodes[0], "alice").await;
    let (mut bob, _) = hello(&nodes[1], "bob").await;
    assert_eq!(
        signal(&mut alice, 1, "bob", json!(null)).await["type"],
        "ack"
    );
    bob.send(Message::Close(None)).await;
    drop(bob);
    wait_no_peers(&nodes[1]).await;
    // Without an id and with one: each gets its own answer.
    alice
        .send_json(json!({"type": "signal", "to": "bob", "kind": "offer", "data": null}))
        .await;
    let first = alice.recv_type("error").await;
    assert_eq!(
        (first["code"].clone(), first["id"].clone()),
        (json!("peer-not-found"), Value::Null)
    );
    let err = signal(&mut alice, 2, "bob", json!(null)).await;
    assert_eq!(
        (err["code"].clone(), err["id"].clone()),
        (json!("peer-not-found"), json!(2))
    );
}

#[tokio::test]
async fn room_spans_three_nodes_with_presence_and_broadcast() {
    room_spans_three_nodes(&RedisServer::start(), &unique_prefix("room3")).await;
}

/// A room with members on three nodes clustered through `redis`: presence,
/// the same view from every node, a broadcast delivered once to each other
/// member, `peer-left` on leave and on disconnect.
pub(crate) async fn room_spans_three_nodes(redis: &impl RedisBackend, prefix: &str) {
    let nodes = spawn_cluster(redis, prefix, 3, &[]).await;
    let (mut p1, _) = hello(&nodes[0], "p1").await;
    let (mut p2, _) = hello(&nodes[1], "p2").await;
    let (mut p3, _) = hello(&nodes[2], "p3").await;

    p1.send_json(json!({"type": "join", "room": "r", "meta": {"n": 1}}))
        .await;
    assert_eq!(p1.recv_type("joined").await["peers"], json!([]));
    p2.send_json(json!({"type": "join", "room": "r", "meta": {"n": 2}}))
        .await;
    assert_eq!(
        p2.recv_type("joined").await["peers"],
        json!([{"peer_id": "p1", "meta": {"n": 1}}])
    );
    let pj = p1.recv_type("peer-joined").await;
    assert_eq!(
        (pj["peer_id"].clone(), pj["meta"].clone()),
        (json!("p2"), json!({"n": 2}))
    );
    p3.send_json(json!({"type": "join", "room": "r", "meta": {"n": 3}}))
        .await;
    let joined = p3.recv_type("joined").await;
    let mut ids: Vec<String> = joined["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["p1", "p2"]);
    assert_eq!(p1.recv_type("peer-joined").await["peer_id"], "p3");
    assert_eq!(p2.recv_type("peer-joined").await["peer_id"], "p3");

    // The room looks the same from every node.
    let mut views = Vec::new();
    for n in &nodes {
        let v: Value = n.get("/api/rooms/r").await.1;
        views.push(v);
    }
    assert!(views.iter().all(|v| *v == views[0]), "{views:?}");
    assert_eq!(views[0]["members"].as_array().unwrap().len(), 3);

    // A broadcast reaches the other two exactly once, not the sender.
    p1.send_json(json!({"type": "broadcast", "id": 9, "room": "r", "data": {"hi": 1}}))
        .await;
    assert_eq!(p1.recv_type("ack").await["id"], 9);
    for c in [&mut p2, &mut p3] {
        let m = c.recv_type("message").await;
        assert_eq!(
            (m["from"].clone(), m["data"].clone()),
            (json!("p1"), json!({"hi": 1}))
        );
    }
    // Nothing else is pending: the next thing each receives is its own pong.
    for c in [&mut p1, &mut p2, &mut p3] {
        c.send_json(json!({"type": "ping", "id": "flush"})).await;
        assert_eq!(c.recv().await, json!({"type": "pong", "id": "flush"}));
    }

    p3.send_json(json!({"type": "leave", "room": "r"})).await;
    for c in [&mut p1, &mut p2] {
        let m = c.recv_type("peer-left").await;
        assert_eq!(
            (m["peer_id"].clone(), m["reason"].clone()),
            (json!("p3"), json!("left"))
        );
    }
    drop(p2);
    let m = p1.recv_type("peer-left").await;
    assert_eq!(
        (m["peer_id"].clone(), m["reason"].clone()),
        (json!("p2"), json!("disconnected"))
    );
}

#[tokio::test]
async fn duplicate_peer_id_on_two_nodes_keeps_the_newest() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("dup"), 2, &[]).await;
    let (mut watcher, _) = hello(&nodes[1], "watcher").await;
    watcher.join("r").await;
    let (mut old, w) = hello(&nodes[0], "alice").await;
    old.join("r").await;
    assert_eq!(watcher.recv_type("peer-joined").await["peer_id"], "alice");

    // A reconnect on the other node, proving itself with the old connection's
    // secret (without it the id is refused: tests/it/sec_auth.rs).
    let mut new = Client::connect(&nodes[1].ws_url()).await;
    new.hello_with(
        json!({"type": "hello", "peer_id": "alice", "reconnect_secret": w["reconnect_secret"]}),
    )
    .await;
    let (code, reason) = old.expect_close().await;
    assert_eq!((code, reason.as_str()), (4002, "replaced"));
    let left = watcher.recv_type("peer-left").await;
    assert_eq!(
        (left["peer_id"].clone(), left["reason"].clone()),
        (json!("alice"), json!("replaced"))
    );

    // Signals to `alice` reach the new connection.
    let ack = signal(&mut watcher, 5, "alice", json!("to-new")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(new.recv_type("signal").await["data"], "to-new");
}

#[tokio::test]
async fn killed_node_is_cleaned_up_once_within_the_bound() {
    killed_node_cleaned_up_once(&RedisServer::start(), &unique_prefix("kill")).await;
}

/// Three nodes clustered through `redis`; node-1 is killed: each survivor
/// hears each of its peers leave once (`timeout`) within the bound, exactly
/// one survivor reaped it, and the directory and the room forgot it.
pub(crate) async fn killed_node_cleaned_up_once(redis: &impl RedisBackend, prefix: &str) {
    let nodes = spawn_cluster(redis, prefix, 3, &[]).await;
    let (mut w2, _) = hello(&nodes[1], "w2").await;
    let (mut w3, _) = hello(&nodes[2], "w3").await;
    w2.join("r").await;
    w3.join("r").await;
    w2.recv_type("peer-joined").await;
    let (mut v1, _) = hello(&nodes[0], "victim-1").await;
    let (mut v2, _) = hello(&nodes[0], "victim-2").await;
    // Both survivors learn (and cache) the route to victim-1.
    for w in [&mut w2, &mut w3] {
        assert_eq!(signal(w, 1, "victim-1", json!(null)).await["type"], "ack");
        v1.recv_type("signal").await;
    }
    v1.join("r").await;
    v2.join("r").await;
    for w in [&mut w2, &mut w3] {
        for _ in 0..2 {
            w.recv_type("peer-joined").await;
        }
    }

    let killed_at = Instant::now();
    nodes[0].sigkill();
    // Heartbeat TTL 3 s + scan every 0.25 s: each watcher hears each victim leave once.
    for w in [&mut w2, &mut w3] {
        w.timeout = Duration::from_secs(30);
        let mut left = Vec::new();
        for _ in 0..2 {
            let m = w.recv_type("peer-left").await;
            assert_eq!(m["reason"], "timeout");
            left.push(m["peer_id"].as_str().unwrap().to_string());
        }
        left.sort();
        assert_eq!(left, ["victim-1", "victim-2"]);
    }
    // The bound is the TTL plus a scan (3.25 s); the check is generous (a
    // loaded machine), and still far below the reaper claim's minute.
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(20), "cleanup took {took:?}");

    // Exactly one survivor reaped the dead node, and no other can: the
    // reaper's claim (`SET NX`, for a minute) names it, and the dead node is
    // gone from the node set the scans read.
    let k = redis.keys(prefix);
    let claim = redis.raw(&["GET", &k.node_reaper(&NodeId::from_trusted("node-1"))]);
    let reaper = if claim.contains("node-2") {
        1
    } else {
        assert!(claim.contains("node-3"), "no reaper claim: {claim:?}");
        2
    };
    assert_eq!(redis.raw(&["SISMEMBER", &k.nodes(), "node-1"]), ":0\r\n");
    assert_eq!(
        metric(&nodes[reaper], "switchboard_nodes_reaped_total").await,
        1.0
    );
    assert_eq!(
        metric(&nodes[3 - reaper], "switchboard_nodes_reaped_total").await,
        0.0
    );
    // No second `peer-left` follows: a ping's pong is the next message.
    for w in [&mut w2, &mut w3] {
        w.ping().await;
    }
    // The directory forgot the victims and the room lists only the survivors;
    // the routes both survivors cached do not turn that into another error.
    for w in [&mut w2, &mut w3] {
        let err = signal(w, 3, "victim-1", json!(null)).await;
        assert_eq!(
            (err["code"].clone(), err["id"].clone()),
            (json!("peer-not-found"), json!(3))
        );
    }
    let room: Value = nodes[1].get("/api/rooms/r").await.1;
    assert_eq!(room["members"].as_array().unwrap().len(), 2, "{room}");
}

#[tokio::test]
async fn redis_outage_keeps_local_relay_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("outage"), 2, &[]).await;
    let (mut a, _) = hello(&nodes[0], "a").await;
    let (mut c, _) = hello(&nodes[0], "c").await;
    let (mut b, _) = hello(&nodes[1], "b").await;
    for p in [&mut a, &mut b, &mut c] {
        p.join("r").await;
    }

    redis.stop();
    for n in &nodes {
        wait_ready(n, false, Duration::from_secs(20)).await;
    }
    // Same-node relay needs no Redis.
    assert_eq!(signal(&mut a, 1, "c", json!("local")).await["type"], "ack");
    assert_eq!(next_of(&mut c, "signal").await["data"], "local");
    // Anything that needs Redis says so.
    assert_eq!(
        signal(&mut a, 2, "b", json!("remote")).await["code"],
        "cluster-unavailable"
    );
    a.send_json(json!({"type": "join", "id": 3, "room": "other"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["id"].clone(), e["code"].clone()),
        (json!(3), json!("cluster-unavailable"))
    );

    // Redis comes back empty; nodes resubscribe and register again by themselves.
    redis.restart();
    for n in &nodes {
        wait_ready(n, true, Duration::from_secs(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut id = 10;
    loop {
        id += 1;
        let r = signal(&mut a, id, "b", json!({"after": id})).await;
        if r["type"] == "ack" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cross-node signal never recovered: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(next_of(&mut b, "signal").await["data"]["after"], id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let room: Value = nodes[1].get("/api/rooms/r").await.1;
        if room["members"].as_array().map(|m| m.len()) == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "room not re-registered: {room}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn killed_subscriber_connection_resumes_and_readiness_reflects_the_gap() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("subkill"), 2, &[]).await;
    let (mut a, _) = hello(&nodes[0], "a").await;
    let (mut b, _) = hello(&nodes[1], "b").await;

    // While the subscriber connections keep being killed, the probe cannot
    // make its round trip and the nodes report unready.
    let start = Instant::now();
    let mut seen_unready = false;
    while start.elapsed() < Duration::from_secs(8) {
        redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        let (status, body) = nodes[1].get("/readyz").await;
        if status == 503 {
            assert_eq!(body["reason"], "bus-unavailable");
            seen_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_unready, "readiness never reflected the subscriber gap");
    // The gauges alert rules read show the gap too: one scrape with the bus
    // down and the node not ready (and not draining).
    let start = Instant::now();
    let mut seen_gauges = false;
    while start.elapsed() < Duration::from_secs(8) {
        redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        let (_, text) = nodes[1].get_text("/metrics").await;
        // Present, not absent (an absent series would also sum to 0).
        for name in ["switchboard_ready ", "switchboard_bus_ready "] {
            assert!(text.lines().any(|l| l.starts_with(name)), "no {name}");
        }
        let ready = sum_samples(&text, "switchboard_ready");
        let bus = sum_samples(&text, "switchboard_bus_ready");
        if ready == 0.0 && bus == 0.0 {
            assert_eq!(sum_samples(&text, "switchboard_draining"), 0.0);
            seen_gauges = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen_gauges,
        "switchboard_ready/bus_ready never showed the gap"
    );

    // Once the kills stop, fred reconnects and resubscribes by itself.
    wait_ready(&nodes[0], true, Duration::from_secs(10)).await;
    wait_ready(&nodes[1], true, Duration::from_secs(10)).await;
    let signals_out = r#"switchboard_messages_out_total{type="signal"}"#;
    let before = metric(&nodes[1], signals_out).await;
    for i in 0..50u64 {
        let r = signal(&mut a, i, "b", json!({"i": i})).await;
        assert_eq!(r["type"], "ack", "{r}");
        assert_eq!(next_of(&mut b, "signal").await["data"]["i"], i);
    }
    // Each arrived once: nothing more is queued for b, and b's node wrote
    // exactly 50 signals (b is its only client).
    b.ping().await;
    assert_eq!(metric(&nodes[1], signals_out).await - before, 50.0);
    let subs = redis.command(&[
        "PUBSUB",
        "NUMSUB",
        &format!("{}:ch:node:node-2", unique_prefix("subkill")),
    ]);
    assert!(subs.contains(":1\r\n"), "node-2 not resubscribed: {subs:?}");
    assert!(
        metric(
            &nodes[1],
            "switchboard_bus_reconnects_total{conn=\"subscriber\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn three_nodes_300_peers_each_no_loss_duplicate_or_reordering() {
    const PER_NODE: usize = 300;
    const SIGNALS: u64 = 10;
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("mass"), 3, &[]).await;
    let total = PER_NODE * nodes.len();
    let mut clients = Vec::with_capacity(total);
    for i in 0..total {
        let node = &nodes[i % nodes.len()];
        let (c, _) = hello(node, &format!("m{i}")).await;
        clients.push(c);
    }
    // Peer i signals peer (i + 1) % total, which sits on the next node; each
    // receiver checks it gets every sequence number once, in order.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let to = format!("m{}", (i + 1) % total);
            for s in 0..SIGNALS {
                c.send_json(
                    json!({"type": "signal", "to": to, "kind": "candidate", "data": {"s": s}}),
                )
                .await;
            }
            let from = format!("m{}", (i + total - 1) % total);
            let mut next = 0u64;
            let mut errors = HashMap::new();
            while next < SIGNALS {
                let m = c.recv().await;
                match m["type"].as_str() {
                    Some("signal") => {
                        assert_eq!(m["from"], from.as_str());
                        assert_eq!(m["data"]["s"], next, "lost, duplicated or reordered");
                        next += 1;
                    }
                    Some("error") => *errors.entry(m["code"].to_string()).or_insert(0) += 1,
                    _ => {}
                }
            }
            // Nothing after the last one (no late duplicate).
            c.ping().await;
            errors
        }));
    }
    for t in tasks {
        let errors = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("bounded")
            .unwrap();
        assert!(errors.is_empty(), "errors: {errors:?}");
    }
    // What the nodes wrote to their sockets: every signal once.
    let mut written = 0.0;
    for n in &nodes {
        written += metric(n, r#"switchboard_messages_out_total{type="signal"}"#).await;
    }
    assert_eq!(written, (total as u64 * SIGNALS) as f64);
}

#[tokio::test]
async fn offer_and_answer_cross_nodes_through_nginx() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("nginx"), 3, &[]).await;
    let lb = Nginx::start(&nodes);
    let mut alice = Client::connect(&lb.ws_url()).await;
    let wa = alice.hello("alice").await;
    let mut bob = Client::connect(&lb.ws_url()).await;
    let wb = bob.hello("bob").await;
    // Round robin puts consecutive connections on different nodes.
    assert_ne!(wa["node"], wb["node"], "{wa} {wb}");

    alice
        .send_json(json!({"type": "signal", "to": "bob", "kind": "offer", "data": {"sdp": "o"}}))
        .await;
    let offer = bob.recv_type("signal").await;
    assert_eq!(
        (offer["from"].clone(), offer["kind"].clone()),
        (json!("alice"), json!("offer"))
    );
    bob.send_json(json!({"type": "signal", "to": "alice", "kind": "answer", "data": {"sdp": "a"}}))
        .await;
    let answer = alice.recv_type("signal").await;
    assert_eq!(
        (answer["from"].clone(), answer["data"].clone()),
        (json!("bob"), json!({"sdp": "a"}))
    );
}
