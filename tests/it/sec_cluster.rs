//! Hostile nesting and bad events must not cross into the cluster (issue 13,
//! item 3): a `meta` or `data` nested a thousand levels deep, accepted by one
//! node's door, must cost nothing on the bus, in Redis's Lua scripts, or in
//! the cleanup after a node dies; an event another node cannot decode costs
//! only itself, and its sender is told.
//!
//! Each test holds whether or not the door refuses such nesting (a depth
//! limit at decode may answer the `join` or `signal` with an error): then the
//! sender gets that error instead, and the rest must behave the same.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_helpers::{spawn_cluster, unique_prefix, RedisServer};
use crate::helpers::{metric, wait_metric, Client, TestNode};

const MSGPACK: &str = "switchboard.v1.msgpack";

/// Runs a test body on a thread with a 256 MiB stack (in a current-thread
/// runtime, as `#[tokio::test]` would): the test itself builds, encodes,
/// decodes and compares the deep values, in a debug build too.
fn on_deep_stack<F>(body: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let t = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body())
        })
        .expect("spawn the test thread");
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `[[[... 1]]]`, `depth` arrays deep.
fn nested_arrays(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

async fn json_peer(node: &TestNode, id: &str) -> Client {
    let mut c = Client::connect(&node.ws_url()).await;
    c.hello(id).await;
    c
}

/// A MessagePack client: the payloads here are nested deeper than a JSON
/// parser's 128 levels, MessagePack carries them.
async fn msgpack_peer(node: &TestNode, id: &str) -> Client {
    let mut c = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    c.send_msgpack(json!({"type": "hello", "peer_id": id}))
        .await;
    assert_eq!(c.recv_type("welcome").await["peer_id"], id);
    c
}

/// The next message that is not presence for another peer's re-announcement
/// (a Redis restart makes every node announce its members again).
async fn next_skipping_joins(c: &mut Client) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] != "peer-joined" {
            return m;
        }
    }
}

/// Waits until `needle` has been logged at least `n` times (bounded).
async fn wait_log_count(node: &TestNode, needle: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let log = node.log();
        if log.lines().filter(|l| l.contains(needle)).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} logged fewer than {n} times within {within:?}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn redis_int(reply: &str) -> i64 {
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {reply:?}"))
}

/// A `join` whose `meta` is nested 1,000 arrays deep (1 KB as MessagePack,
/// 2 KB as JSON, under the 4 KB meta limit) broke every
/// Lua script that touched the room, through Redis's JSON decoder: the
/// member could not leave (a ghost), the node's re-registration failed every
/// heartbeat, and once the node was killed its peers were never cleaned up.
/// Now: either the door refuses the `join` with a code, or the membership
/// behaves like any other: it leaves, re-registers after a Redis restart,
/// and is reaped with its node.
#[test]
fn deep_meta_joins_leave_reregister_and_are_reaped_with_their_node() {
    on_deep_stack(deep_meta_joins);
}

async fn deep_meta_joins() {
    let mut redis = RedisServer::start();
    let prefix = unique_prefix("deepmeta");
    let nodes = spawn_cluster(&redis, &prefix, 2, &[]).await;
    let members_key = format!("{prefix}:room:deep:members");

    let mut watcher = msgpack_peer(&nodes[1], "watcher").await;
    watcher
        .send_msgpack(json!({"type": "join", "id": 1, "room": "deep"}))
        .await;
    assert_eq!(watcher.recv_type("joined").await["peers"], json!([]));
    let mut plain = json_peer(&nodes[0], "plain").await;
    plain.join("deep").await;
    assert_eq!(watcher.recv_type("peer-joined").await["peer_id"], "plain");

    let mut deep = msgpack_peer(&nodes[0], "deep").await;
    let meta = nested_arrays(1_000);
    let join = json!({"type": "join", "id": 2, "room": "deep", "meta": meta});
    deep.send_msgpack(join.clone()).await;
    let answer = deep.recv().await;
    let accepted = match answer["type"].as_str() {
        Some("joined") => true,
        Some("error") => {
            // The door's depth limit: a clear answer, and nothing stored.
            assert!(
                answer["code"].as_str().is_some_and(|c| !c.is_empty()),
                "{answer}"
            );
            assert_eq!(answer["id"], 2);
            false
        }
        _ => panic!("expected `joined` or `error`, got {answer}"),
    };
    let mut on_a = vec!["plain"];
    if accepted {
        on_a.push("deep");
        let j = watcher.recv_type("peer-joined").await;
        assert_eq!(j["peer_id"], "deep");
        assert_eq!(j["meta"], meta, "the meta crosses the bus intact");

        // Leave works: acked, announced, and no ghost left in Redis.
        deep.send_msgpack(json!({"type": "leave", "id": 3, "room": "deep"}))
            .await;
        assert_eq!(deep.recv().await, json!({"type": "ack", "id": 3}));
        let l = watcher.recv_type("peer-left").await;
        assert_eq!(
            (&l["peer_id"], &l["reason"]),
            (&json!("deep"), &json!("left"))
        );
        assert_eq!(
            redis_int(&redis.command(&["HEXISTS", &members_key, "deep"])),
            0,
            "a ghost member stayed in Redis"
        );

        // In again, then Redis restarts empty: node A registers everything
        // again, and its scan of its own entries reads the deep member.
        deep.send_msgpack(join).await;
        assert_eq!(deep.recv_type("joined").await["id"], 2);
        assert_eq!(watcher.recv_type("peer-joined").await["peer_id"], "deep");
        let done = "local peers and rooms registered again";
        wait_log_count(&nodes[0], done, 1, Duration::from_secs(10)).await;
        redis.stop();
        redis.restart();
        wait_log_count(&nodes[0], done, 2, Duration::from_secs(20)).await;
        assert_eq!(
            redis_int(&redis.command(&["HEXISTS", &members_key, "deep"])),
            1,
            "the deep member is registered again"
        );
    }

    // Node A dies: node B cleans up after it within node_ttl_ms +
    // heartbeat_ms (3 s + 250 ms here; generous deadline for a loaded machine).
    nodes[0].sigkill();
    let killed = Instant::now();
    let mut left = HashSet::new();
    watcher.timeout = Duration::from_secs(20);
    while left.len() < on_a.len() {
        let m = next_skipping_joins(&mut watcher).await;
        assert_eq!(m["type"], "peer-left", "{m}");
        assert_eq!(m["reason"], "timeout", "{m}");
        let p = m["peer_id"].as_str().unwrap().to_string();
        assert!(on_a.contains(&p.as_str()), "{m}");
        assert!(left.insert(p), "peer-left twice: {m}");
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "node B took {took:?} to clean up after node A"
    );
    assert_eq!(
        metric(
            &nodes[1],
            r#"switchboard_cleanup_failures_total{op="reap"}"#
        )
        .await,
        0.0
    );

    // Signals to A's peers: not connected anywhere.
    let mut bob = json_peer(&nodes[1], "bob").await;
    for (i, to) in ["plain", "deep"].into_iter().enumerate() {
        bob.send_json(json!({"type": "signal", "id": i, "to": to, "kind": "offer", "data": {}}))
            .await;
        let e = bob.recv_error("peer-not-found").await;
        assert_eq!(e["id"], i);
    }
}

/// A signal whose `data` is nested 1,020 arrays deep, sent across nodes in
/// the middle of another sender's stream of 2,000 signals over the same
/// link. Envelope v2 failed the receiving node's decoding of the whole
/// batch: no answer to the deep signal's sender, and the innocent sender
/// lost 403 of its 2,000. Now the deep signal's sender gets an answer (an
/// `ack`, or an `error` with a code if a door refuses it), and the
/// concurrent stream arrives whole, in order.
#[test]
fn deep_data_across_nodes_is_answered_and_costs_no_other_signal() {
    on_deep_stack(deep_data_across_nodes);
}

async fn deep_data_across_nodes() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(&redis, &unique_prefix("deepdata"), 2, &[]).await;
    let mut sender = msgpack_peer(&nodes[0], "deep-sender").await;
    let mut streamer = json_peer(&nodes[0], "streamer").await;
    let mut target = msgpack_peer(&nodes[1], "deep-target").await;
    let mut sink = json_peer(&nodes[1], "sink").await;

    const N: u64 = 2_000;
    // The sink reads while the stream is sent. The sender keeps at most
    // WINDOW signals ahead of what the sink has read, so a sink slowed down
    // by a loaded machine is never closed as a slow consumer (its queue
    // holds 1,024).
    const WINDOW: u64 = 256;
    let (read_tx, mut read) = tokio::sync::watch::channel(0u64);
    let sink_reads = tokio::spawn(async move {
        let mut got = Vec::new();
        for n in 1..=N {
            got.push(sink.recv().await);
            read_tx.send_replace(n);
        }
        got
    });
    let deep = nested_arrays(1_020);
    for i in 0..N {
        tokio::time::timeout(Duration::from_secs(30), read.wait_for(|n| i < n + WINDOW))
            .await
            .unwrap_or_else(|_| panic!("the sink stopped reading at {i}"))
            .expect("the sink's reader ended early");
        if i == N / 2 {
            sender
                .send_msgpack(json!({"type": "signal", "id": "deep", "to": "deep-target",
                                     "kind": "offer", "data": deep}))
                .await;
        }
        streamer
            .send_json(
                json!({"type": "signal", "to": "sink", "kind": "candidate", "data": {"seq": i}}),
            )
            .await;
    }

    let answer = sender.recv().await;
    match answer["type"].as_str() {
        Some("ack") => {
            assert_eq!(answer["id"], "deep");
            let got = target.recv_type("signal").await;
            assert_eq!(got["from"], "deep-sender");
            assert_eq!(got["data"], deep, "delivered intact");
        }
        Some("error") => {
            assert_eq!(answer["id"], "deep");
            assert!(
                answer["code"].as_str().is_some_and(|c| !c.is_empty()),
                "{answer}"
            );
        }
        _ => panic!("expected an ack or an error for the deep signal, got {answer}"),
    }

    let got = sink_reads
        .await
        .expect("the sink's reader panicked (a signal missing?)");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["type"], "signal", "{m}");
        assert_eq!(m["data"]["seq"], i, "lost or reordered at {i}: {m}");
    }
    // The streamer was told nothing (no error for any of its signals).
    streamer
        .send_json(json!({"type": "ping", "id": "end"}))
        .await;
    assert_eq!(streamer.recv().await, json!({"type": "pong", "id": "end"}));
    assert_eq!(
        metric(&nodes[1], "switchboard_bus_decode_errors_total").await,
        0.0
    );
}

/// Writes a MessagePack string.
fn mp_str(b: &mut Vec<u8>, s: &str) {
    rmp_serde::encode::write(b, s).unwrap();
}

/// Writes a MessagePack byte string.
fn mp_bin(b: &mut Vec<u8>, bytes: &[u8]) {
    b.push(0xc6);
    b.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    b.extend_from_slice(bytes);
}

/// An envelope (version 3) from `origin` carrying a batch of the given
/// encoded events, laid out as docs/DESIGN.md describes it.
fn batch_envelope(origin: &str, events: &[Vec<u8>]) -> Vec<u8> {
    let mut batch = vec![0x81];
    mp_str(&mut batch, "batch");
    batch.push(0x81);
    mp_str(&mut batch, "events");
    batch.push(0x90 | events.len() as u8);
    for e in events {
        mp_bin(&mut batch, e);
    }
    let mut env = vec![0x84];
    mp_str(&mut env, "v");
    rmp_serde::encode::write(&mut env, &3u8).unwrap();
    mp_str(&mut env, "origin");
    mp_str(&mut env, origin);
    mp_str(&mut env, "seq");
    rmp_serde::encode::write(&mut env, &1u64).unwrap();
    mp_str(&mut env, "event");
    mp_bin(&mut env, &batch);
    env
}

/// One bad event in a batch, end to end through real nodes: a batch
/// published on node B's channel in node A's name (as a node of another
/// release, or a bug, could send it) holds two signals from alice that B
/// cannot decode (a `kind` that is a number; `data` nested deeper than any
/// door lets through) between good ones. Bob gets the good ones, in order;
/// alice, on node A, gets an `error` for each bad one, with its `id`.
#[test]
fn undecodable_signals_in_a_batch_are_answered_and_the_rest_delivered() {
    on_deep_stack(undecodable_signals_in_a_batch);
}

async fn undecodable_signals_in_a_batch() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("badevent");
    // Node B's decoder recurses to its depth budget (1,040 levels) before it
    // refuses the deep event: a debug build needs the big stacks for that.
    let nodes = spawn_cluster(&redis, &prefix, 2, &[]).await;
    let mut alice = json_peer(&nodes[0], "alice").await;
    let mut bob = json_peer(&nodes[1], "bob").await;

    let dir = redis.command(&["GET", &format!("{prefix}:peer:alice")]);
    let epoch: u64 = dir
        .lines()
        .nth(1)
        .and_then(|v| v.strip_suffix(" node-1"))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("alice's directory entry: {dir:?}"));
    let signal = |kind: Value, data: Value, id: Option<u64>| {
        let mut s = json!({"from": "alice", "from_epoch": epoch, "to": "bob", "to_epoch": 0,
                           "kind": kind, "data": {"V": data}});
        if let Some(id) = id {
            s["id"] = json!(id);
        }
        rmp_serde::to_vec_named(&json!({ "signal": s })).unwrap()
    };
    let events = [
        signal(json!("offer"), json!({"seq": 1}), None),
        signal(json!(42), json!({"seq": 0}), Some(7)),
        signal(json!("offer"), nested_arrays(1_100), Some(8)),
        signal(json!("offer"), json!({"seq": 2}), None),
    ];
    let env = batch_envelope("node-1", &events);
    let channel = format!("{prefix}:ch:node:node-2");
    let reply = redis.command_bytes(&[b"PUBLISH", channel.as_bytes(), &env]);
    assert_eq!(redis_int(&reply), 1, "node B listens on its channel");

    for seq in [1, 2] {
        let m = bob.recv_type("signal").await;
        assert_eq!(
            (&m["from"], &m["data"]["seq"]),
            (&json!("alice"), &json!(seq))
        );
    }
    for id in [7, 8] {
        let e = alice.recv_error("invalid-message").await;
        assert_eq!(e["id"], id, "{e}");
    }
    assert_eq!(
        metric(&nodes[1], "switchboard_bus_decode_errors_total").await,
        2.0
    );

    // An envelope of version 2 (a node of the previous release): dropped,
    // but counted and named in the log, not mistaken for garbage.
    let v2 = rmp_serde::to_vec_named(&json!({
        "v": 2, "origin": "old-node", "seq": 1,
        "event": {"flush": {"peer_id": "bob"}}
    }))
    .unwrap();
    let reply = redis.command_bytes(&[b"PUBLISH", channel.as_bytes(), &v2]);
    assert_eq!(redis_int(&reply), 1);
    let line = nodes[1]
        .wait_log_async("another envelope version", Duration::from_secs(10))
        .await;
    assert!(line.contains("old-node"), "{line}");
    assert_eq!(
        metric(&nodes[1], "switchboard_bus_version_mismatch_total").await,
        1.0
    );
}

/// Member values left in Redis by a release before envelope v3 (JSON
/// `{"e","n","m"}`, which Lua used to decode with cjson) are still read, by
/// position and without cjson: a dead node's member whose `meta` is nested
/// 1,100 levels deep (too deep for cjson, which stops at 1,000) is reaped,
/// and its room hears `peer-left`.
#[tokio::test]
async fn legacy_member_values_are_read_and_reaped_without_decoding_meta() {
    let redis = RedisServer::start();
    let p = unique_prefix("legacy");
    let nodes = spawn_cluster(&redis, &p, 1, &[]).await;
    let mut watcher = json_peer(&nodes[0], "watcher").await;
    watcher.join("r").await;

    // What an older node ("old-1", now dead: no heartbeat key) left behind.
    let meta = format!("{}1{}", "[".repeat(1_100), "]".repeat(1_100));
    let legacy = format!(r#"{{"e":"5","n":"old-1","m":{meta}}}"#);
    let cmds: [&[&str]; 6] = [
        &["HSET", &format!("{p}:room:r:members"), "ghost", &legacy],
        &["HINCRBY", &format!("{p}:room:r:nodes"), "old-1", "1"],
        &["SADD", &format!("{p}:node:old-1:rooms"), "r"],
        &["SET", &format!("{p}:peer:ghost"), "5 old-1"],
        &["SADD", &format!("{p}:node:old-1:peers"), "ghost"],
        &["SADD", &format!("{p}:nodes"), "old-1"],
    ];
    for c in cmds {
        let reply = redis.command(c);
        assert!(!reply.starts_with('-'), "{c:?}: {reply}");
    }

    watcher.timeout = Duration::from_secs(15);
    let left = watcher.recv_type("peer-left").await;
    assert_eq!(
        (&left["peer_id"], &left["reason"]),
        (&json!("ghost"), &json!("timeout"))
    );
    assert_eq!(
        redis_int(&redis.command(&["HEXISTS", &format!("{p}:room:r:members"), "ghost"])),
        0
    );
    assert_eq!(
        redis_int(&redis.command(&["EXISTS", &format!("{p}:peer:ghost")])),
        0
    );
    assert_eq!(
        redis_int(&redis.command(&["HEXISTS", &format!("{p}:room:r:members"), "watcher"])),
        1,
        "the live member stays"
    );
}

/// A cleanup step the store refuses (here a `leave`, against a room key of
/// the wrong type: an error reply, not an outage) is counted and logged, not
/// retried: it would fail the same way every heartbeat. A re-registration
/// whose listing is refused is retried after 1, 2, 4, ... heartbeats, not at
/// every one.
#[tokio::test]
async fn refused_cleanups_are_counted_and_do_not_loop() {
    let redis = RedisServer::start();
    let p = unique_prefix("refused");
    let nodes = spawn_cluster(&redis, &p, 1, &[]).await;
    let node = &nodes[0];
    let probes = "switchboard_bus_probe_latency_seconds_count";
    let reregs = "switchboard_reregistrations_total";
    let leave_failures = r#"switchboard_cleanup_failures_total{op="leave"}"#;
    let rereg_failures = r#"switchboard_cleanup_failures_total{op="reregister"}"#;
    // Every node registers its state once right after start (its first
    // heartbeat finds no key of its own): wait for that one before the room
    // key is broken, so it neither fails on it nor is mistaken for a
    // re-registration the refused leave started.
    let r0 = wait_metric(node, reregs, 1.0, Duration::from_secs(10)).await;
    let mut x = json_peer(node, "x").await;
    x.join("r").await;
    let members = format!("{p}:room:r:members");
    redis.command(&["DEL", &members]);
    assert!(redis
        .command(&["SET", &members, "not a hash"])
        .starts_with("+OK"));
    x.send_json(json!({"type": "leave", "id": 1, "room": "r"}))
        .await;
    assert_eq!(x.recv().await, json!({"type": "ack", "id": 1}));
    wait_metric(node, leave_failures, 1.0, Duration::from_secs(20)).await;
    // Six heartbeats later: no re-registration was started for it.
    let p0 = metric(node, probes).await;
    wait_metric(node, probes, p0 + 6.0, Duration::from_secs(15)).await;
    assert_eq!(metric(node, reregs).await, r0);
    assert_eq!(metric(node, leave_failures).await, 1.0);

    // Now the node must re-register (its heartbeat key is gone), and the
    // listing of its own entries is refused (the same room key).
    redis.command(&["DEL", &format!("{p}:node:node-1:alive")]);
    wait_metric(node, rereg_failures, 1.0, Duration::from_secs(10)).await;
    let p1 = metric(node, probes).await;
    let r1 = metric(node, reregs).await;
    wait_metric(node, probes, p1 + 16.0, Duration::from_secs(30)).await;
    // Every heartbeat would be 16 more passes; backing off, at most 5.
    let passes = metric(node, reregs).await - r1;
    assert!(passes <= 5.0, "{passes} re-registrations in 16 heartbeats");
    let warned = node
        .log()
        .lines()
        .filter(|l| l.contains("cleanup step failed") && l.contains("reregister"))
        .count();
    assert!(warned <= 2, "{warned} warnings in ~4 s:\n{}", node.log());
}

/// A `leave` whose store call times out (Redis paused: the command is not
/// withdrawn, and runs once Redis resumes) is still announced to the other
/// nodes, once: either re-registration finds and removes the membership, or
/// the owed `peer-left` is published after a clean pass.
#[tokio::test]
async fn a_leave_that_timed_out_is_announced_once_redis_is_back() {
    let redis = RedisServer::start();
    let nodes = spawn_cluster(
        &redis,
        &unique_prefix("leavepause"),
        2,
        &[("SWITCHBOARD_CLUSTER__COMMAND_TIMEOUT_MS", "300")],
    )
    .await;
    let mut w = json_peer(&nodes[1], "w").await;
    w.join("r").await;
    let mut x = json_peer(&nodes[0], "x").await;
    x.join("r").await;
    assert_eq!(w.recv_type("peer-joined").await["peer_id"], "x");

    // Paused until the leave has timed out (an explicit UNPAUSE below): a
    // short pause could end before a starved test sends the leave.
    assert!(redis
        .command(&["CLIENT", "PAUSE", "60000", "WRITE"])
        .starts_with("+OK"));
    x.send_json(json!({"type": "leave", "id": 1, "room": "r"}))
        .await;
    assert_eq!(x.recv().await, json!({"type": "ack", "id": 1}));
    wait_metric(
        &nodes[0],
        r#"switchboard_cleanup_failures_total{op="leave"}"#,
        1.0,
        Duration::from_secs(20),
    )
    .await;
    assert!(redis.command(&["CLIENT", "UNPAUSE"]).starts_with("+OK"));

    w.timeout = Duration::from_secs(15);
    let left = next_skipping_joins(&mut w).await;
    assert_eq!(left["type"], "peer-left", "{left}");
    assert_eq!(left["peer_id"], "x", "{left}");
    // `left` when the owed announcement went out, `disconnected` when
    // re-registration found the membership still there and removed it.
    assert!(
        left["reason"] == "left" || left["reason"] == "disconnected",
        "{left}"
    );

    // Once: the next presence in the room is y's, not x's again.
    let mut y = json_peer(&nodes[0], "y").await;
    y.join("r").await;
    y.send_json(json!({"type": "leave", "id": 2, "room": "r"}))
        .await;
    assert_eq!(y.recv().await, json!({"type": "ack", "id": 2}));
    let next = [w.recv().await, w.recv().await];
    assert_eq!(
        next.map(|m| (m["type"].clone(), m["peer_id"].clone())),
        [
            (json!("peer-joined"), json!("y")),
            (json!("peer-left"), json!("y"))
        ],
        "x's departure announced twice?"
    );
}
