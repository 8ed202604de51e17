//! Session resume (docs/PROTOCOL.md, "Resume"): a native session outlives
//! its socket for `resume.window_ms`; a `hello` with its `resume` token and
//! `last_seq` takes it back, on the same node or another, with what it
//! missed in order and none twice, while the others see no leave or join.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_helpers::{spawn_cluster, unique_prefix, RedisServer};
use crate::helpers::{metric, Client, TestNode};

/// The `seq` of a delivered message (absent: 0).
fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or(0)
}

/// Waits until `node` has `n` parked sessions (bounded).
async fn wait_parked(node: &TestNode, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(node, "switchboard_parked_sessions").await;
        if v == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "parked sessions stayed at {v}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `hello` asking for a resumable session; returns the welcome.
async fn hello(c: &mut Client, peer: &str) -> Value {
    c.hello_with(json!({"type": "hello", "peer_id": peer, "resumable": true}))
        .await
}

/// `hello` resuming with `token` after `last_seq`; returns the welcome.
async fn resume(c: &mut Client, token: &Value, last_seq: u64) -> Value {
    c.send_json(json!({"type": "hello", "id": "r", "resume": token, "last_seq": last_seq}))
        .await;
    c.recv().await
}

/// The next message of type `ty`, past `peer-joined`s (a member that joined
/// on another node just before may be announced after its `joined`).
async fn next_of(c: &mut Client, ty: &str) -> Value {
    for _ in 0..4 {
        let m = c.recv().await;
        if m["type"] != "peer-joined" {
            assert_eq!(m["type"], ty, "{m}");
            return m;
        }
    }
    panic!("no `{ty}` after four peer-joined");
}

/// Reads `n` messages and checks that they are numbered `from`, `from + 1`, ...
async fn numbered(c: &mut Client, from: u64, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for i in 0..n {
        let m = c.recv().await;
        assert_eq!(
            seq(&m),
            from + i as u64,
            "out of sequence: {m} after {got:?}"
        );
        got.push(m);
    }
    got
}

#[tokio::test]
async fn a_dropped_socket_resumes_on_its_node_with_what_it_missed() {
    let node = TestNode::spawn(&[]);
    let mut alice = node.client().await;
    let welcome = hello(&mut alice, "alice").await;
    let token = welcome["resume_token"].clone();
    assert!(
        token.is_string(),
        "welcome carries a resume token: {welcome}"
    );
    let mut bob = node.peer("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    let joined = alice.recv_type("peer-joined").await;
    assert_eq!(seq(&joined), 1, "deliveries are numbered from 1: {joined}");
    // Three signals alice reads; then her socket dies (no close frame).
    for i in 0..3 {
        bob.send_json(json!({"type": "signal", "to": "alice", "kind": "offer", "data": {"n": i}}))
            .await;
    }
    let read = numbered(&mut alice, 2, 3).await;
    assert_eq!(read[2]["data"]["n"], 2);
    drop(alice);
    wait_parked(&node, 1.0).await;
    // While she is away: signals (acked: they reached her session) and a broadcast.
    for i in 3..8 {
        bob.send_json(
            json!({"type": "signal", "id": i, "to": "alice", "kind": "offer", "data": {"n": i}}),
        )
        .await;
        assert_eq!(bob.recv_type("ack").await["id"], i);
    }
    bob.send_json(json!({"type": "broadcast", "room": "r", "data": "while away"}))
        .await;
    // She says she read only the first of the three: the other two come again.
    let mut alice = node.client().await;
    let w = resume(&mut alice, &token, 2).await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["peer_id"], "alice");
    assert_eq!(w["id"], "r");
    let got = numbered(&mut alice, 3, 8).await;
    let ns: Vec<Value> = got[..7].iter().map(|m| m["data"]["n"].clone()).collect();
    assert_eq!(ns, (1..8).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(got[7]["type"], "message");
    assert_eq!(got[7]["data"], "while away");
    alice.ping().await;
    // Bob saw no leave and no join, and the session goes on numbering.
    bob.ping().await;
    bob.send_json(json!({"type": "signal", "to": "alice", "kind": "answer", "data": 1}))
        .await;
    assert_eq!(seq(&alice.recv_type("signal").await), 11);
    alice
        .send_json(json!({"type": "broadcast", "room": "r", "data": "back"}))
        .await;
    assert_eq!(bob.recv_type("message").await["data"], "back");
    assert_eq!(metric(&node, "switchboard_parked_sessions").await, 0.0);
    assert_eq!(
        metric(&node, "switchboard_resumes_total{outcome=\"resumed\"}").await,
        1.0
    );
}

#[tokio::test]
async fn answers_carry_no_seq_and_msgpack_deliveries_do() {
    let node = TestNode::spawn(&[]);
    let mut alice = Client::connect_with_protocol(&node.ws_url(), "switchboard.v1.msgpack").await;
    alice
        .send_msgpack(json!({"type": "hello", "id": 1, "peer_id": "alice", "resumable": true}))
        .await;
    let w = alice.recv_frame().await;
    assert!(w.binary);
    assert!(w.msg["resume_token"].is_string());
    assert!(
        w.msg.get("seq").is_none(),
        "welcome is an answer: {}",
        w.msg
    );
    let mut bob = node.peer("bob").await;
    bob.send_json(json!({"type": "signal", "to": "alice", "kind": "offer", "data": {"x": [1, 2]}}))
        .await;
    let s = alice.recv_frame().await;
    assert_eq!(s.msg["type"], "signal");
    assert_eq!(s.msg["seq"], 1, "{}", s.msg);
    assert_eq!(s.msg["data"], json!({"x": [1, 2]}));
    alice.ping_msgpack().await;
    bob.ping().await;
}

#[tokio::test]
async fn a_session_resumes_on_another_node_without_a_leave() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("resume-x"), 3, &[]).await;
    let mut alice = nodes[0].client().await;
    let token = hello(&mut alice, "alice").await["resume_token"].clone();
    let mut bob = nodes[1].peer("bob").await;
    let mut carol = nodes[0].peer("carol").await;
    alice.join("r").await;
    bob.join("r").await;
    carol.join("r").await;
    assert_eq!(alice.recv_type("peer-joined").await["peer_id"], "bob");
    let last = seq(&alice.recv_type("peer-joined").await);
    bob.recv_type("peer-joined").await;
    drop(alice);
    wait_parked(&nodes[0], 1.0).await;
    for i in 0..20 {
        bob.send_json(
            json!({"type": "signal", "id": i, "to": "alice", "kind": "candidate", "data": i}),
        )
        .await;
        assert_eq!(bob.recv_type("ack").await["id"], i);
    }
    carol
        .send_json(json!({"type": "broadcast", "room": "r", "data": "from node 1"}))
        .await;
    bob.send_json(json!({"type": "broadcast", "room": "r", "data": "from node 2"}))
        .await;
    // Carol's broadcast reached bob: it is in alice's parked queue too.
    assert_eq!(bob.recv_type("message").await["data"], "from node 1");
    assert_eq!(next_of(&mut carol, "message").await["data"], "from node 2");
    let mut alice = nodes[2].client().await;
    let w = resume(&mut alice, &token, last).await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["node"], "node-3");
    let got = numbered(&mut alice, last + 1, 22).await;
    let signals: Vec<Value> = got
        .iter()
        .filter(|m| m["type"] == "signal")
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(signals, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    let mut messages: Vec<Value> = got
        .iter()
        .filter(|m| m["type"] == "message")
        .map(|m| m["data"].clone())
        .collect();
    messages.sort_by_key(|v| v.to_string());
    assert_eq!(messages, vec![json!("from node 1"), json!("from node 2")]);
    alice.ping().await;
    wait_parked(&nodes[0], 0.0).await;
    // The room is whole on its new node: both ways, nothing twice, no presence.
    carol
        .send_json(json!({"type": "broadcast", "room": "r", "data": "after"}))
        .await;
    let m = alice.recv_type("message").await;
    assert_eq!((m["data"].clone(), seq(&m)), (json!("after"), last + 23));
    bob.send_json(json!({"type": "signal", "to": "alice", "kind": "offer", "data": "direct"}))
        .await;
    assert_eq!(alice.recv_type("signal").await["data"], "direct");
    assert_eq!(bob.recv_type("message").await["data"], "after");
    alice
        .send_json(json!({"type": "broadcast", "room": "r", "data": "hi"}))
        .await;
    assert_eq!(bob.recv_type("message").await["data"], "hi");
    assert_eq!(carol.recv_type("message").await["data"], "hi");
    bob.ping().await;
    carol.ping().await;
    alice.ping().await;
    let members = nodes[1].get("/api/rooms/r").await.1;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(3),
        "{members}"
    );
}

#[tokio::test]
async fn a_drained_node_hands_its_sessions_over() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("resume-drain"),
        2,
        &[("SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS", "20000")],
    )
    .await;
    let mut alice = nodes[0].client().await;
    let token = hello(&mut alice, "alice").await["resume_token"].clone();
    let mut bob = nodes[1].peer("bob").await;
    bob.send_json(json!({"type": "signal", "to": "alice", "kind": "offer", "data": 0}))
        .await;
    assert_eq!(seq(&alice.recv_type("signal").await), 1);
    nodes[0].sigterm();
    alice.recv_type("reconnect").await;
    // A client that will resume closes with a code of its own (not 1000).
    alice.close_with(4000).await;
    wait_parked(&nodes[0], 1.0).await;
    for i in 1..=10 {
        bob.send_json(
            json!({"type": "signal", "id": i, "to": "alice", "kind": "offer", "data": i}),
        )
        .await;
        assert_eq!(bob.recv_type("ack").await["id"], i);
    }
    let mut alice = nodes[1].client().await;
    let w = resume(&mut alice, &token, 1).await;
    assert_eq!(w["resumed"], true, "{w}");
    let got = numbered(&mut alice, 2, 10).await;
    let data: Vec<Value> = got.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, (1..=10).map(|n| json!(n)).collect::<Vec<_>>());
    // Handed over: the drained node exits long before its grace period ends.
    let mut nodes = nodes;
    let mut old = nodes.remove(0);
    let status = old.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    bob.send_json(json!({"type": "signal", "to": "alice", "kind": "offer", "data": 11}))
        .await;
    assert_eq!(seq(&alice.recv_type("signal").await), 12);
}

#[tokio::test]
async fn a_window_that_ran_out_gives_resume_failed_and_the_others_a_leave() {
    let node = TestNode::spawn(&[("SWITCHBOARD_RESUME__WINDOW_MS", "300")]);
    let mut alice = node.client().await;
    let token = hello(&mut alice, "alice").await["resume_token"].clone();
    let mut bob = node.peer("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    drop(alice);
    let left = bob.recv_type("peer-left").await;
    assert_eq!(left["peer_id"], "alice");
    let mut alice = node.client().await;
    let f = resume(&mut alice, &token, 1).await;
    assert_eq!(f["type"], "resume-failed", "{f}");
    assert_eq!(f["reason"], "expired");
    let w = alice.recv_type("welcome").await;
    assert!(w.get("resumed").is_none(), "a fresh session: {w}");
    // A fresh session: in no room.
    alice
        .send_json(json!({"type": "broadcast", "id": 1, "room": "r", "data": 1}))
        .await;
    alice.recv_error("not-in-room").await;
    assert_eq!(
        metric(&node, "switchboard_resumes_total{outcome=\"expired\"}").await,
        1.0
    );
}

#[tokio::test]
async fn an_overflowing_parked_queue_gives_resume_failed_with_the_count() {
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "8")]);
    let mut alice = node.client().await;
    let token = hello(&mut alice, "alice").await["resume_token"].clone();
    let mut bob = node.peer("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    drop(alice);
    wait_parked(&node, 1.0).await;
    for i in 0..20 {
        bob.send_json(json!({"type": "signal", "to": "alice", "kind": "offer", "data": i}))
            .await;
    }
    bob.ping().await;
    let mut alice = node.client().await;
    let f = resume(&mut alice, &token, 0).await;
    assert_eq!(f["type"], "resume-failed", "{f}");
    assert_eq!(f["reason"], "overflow");
    assert_eq!(f["missed"], 12, "{f}");
    assert!(alice.recv_type("welcome").await.get("resumed").is_none());
    // Its old session ended: the room heard it leave.
    assert_eq!(bob.recv_type("peer-left").await["peer_id"], "alice");
}

#[tokio::test]
async fn a_client_that_says_goodbye_ends_its_session() {
    let node = TestNode::spawn(&[]);
    let mut alice = node.client().await;
    let token = hello(&mut alice, "alice").await["resume_token"].clone();
    let mut bob = node.peer("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    alice.close().await;
    assert_eq!(bob.recv_type("peer-left").await["peer_id"], "alice");
    assert_eq!(metric(&node, "switchboard_parked_sessions").await, 0.0);
    let mut again = node.client().await;
    let f = resume(&mut again, &token, 0).await;
    assert_eq!(f["reason"], "expired", "{f}");
    again.recv_type("welcome").await;
}

#[tokio::test]
async fn a_wrong_token_or_a_seq_from_the_future_never_resumes() {
    let node = TestNode::spawn(&[]);
    let mut alice = node.client().await;
    let token = hello(&mut alice, "alice").await["resume_token"]
        .as_str()
        .expect("token")
        .to_string();
    drop(alice);
    wait_parked(&node, 1.0).await;
    // Someone else's guess: the secret is wrong.
    let forged = format!("{}alice", "0".repeat(32));
    let mut mallory = node.client().await;
    mallory
        .send_json(json!({"type": "hello", "peer_id": "alice", "resume": forged, "last_seq": 0}))
        .await;
    let f = mallory.recv().await;
    assert_eq!(f["type"], "resume-failed");
    assert_eq!(f["reason"], "unknown", "{f}");
    // Its fresh session cannot take the parked id either.
    mallory.recv_error("peer-id-taken").await;
    let mut garbage = node.client().await;
    let f = resume(&mut garbage, &json!("not a token"), 0).await;
    assert_eq!(f["reason"], "unknown", "{f}");
    garbage.recv_type("welcome").await;
    // The owner claiming messages that were never sent.
    let mut alice = node.client().await;
    let f = resume(&mut alice, &json!(token), 99).await;
    assert_eq!(f["reason"], "unknown-seq", "{f}");
    alice.recv_type("welcome").await;
}

#[tokio::test]
async fn a_session_that_did_not_ask_is_neither_numbered_nor_parked() {
    let node = TestNode::spawn(&[]);
    let mut alice = node.client().await;
    let w = alice.hello("alice").await;
    assert!(w.get("resume_token").is_none(), "{w}");
    let mut bob = node.peer("bob").await;
    alice.join("r").await;
    bob.join("r").await;
    let j = alice.recv_type("peer-joined").await;
    assert!(j.get("seq").is_none(), "{j}");
    drop(alice);
    // Its rooms hear at once: a client that cannot resume gains nothing
    // from a parked session, and its peers would see it late.
    assert_eq!(bob.recv_type("peer-left").await["peer_id"], "alice");
    assert_eq!(metric(&node, "switchboard_parked_sessions").await, 0.0);
}

#[tokio::test]
async fn resume_switched_off_answers_resume_failed_disabled() {
    let node = TestNode::spawn(&[("SWITCHBOARD_RESUME__ENABLED", "false")]);
    let mut alice = node.client().await;
    let w = hello(&mut alice, "alice").await;
    assert!(w.get("resume_token").is_none(), "{w}");
    let mut again = node.client().await;
    let f = resume(&mut again, &json!(format!("{}alice", "a".repeat(32))), 0).await;
    assert_eq!(f["reason"], "disabled", "{f}");
    again.recv_type("welcome").await;
}
