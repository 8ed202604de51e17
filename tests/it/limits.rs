//! Limits: frame size, rooms per peer, peers per room, slow consumers,
//! connection cap, the hello deadline and heartbeats.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

use crate::helpers::{metric, wait_metric, Client, Ending, RawWs, TestNode};

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__MAX_FRAME_BYTES", "4096")]);
    let mut c = node.peer("big").await;
    // Just under the limit is fine.
    c.send_json(json!({"type": "ping", "id": 0, "pad": "p".repeat(4000)}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 0}));
    c.send_json(json!({"type": "ping", "id": 1, "pad": "p".repeat(10 * 1024)}))
        .await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1009, "reason {reason}");
    assert_eq!(
        wait_metric(
            &node,
            r#"switchboard_disconnects_total{reason="message-too-big"}"#,
            1.0,
            Duration::from_secs(20)
        )
        .await,
        1.0
    );
}

/// A client still writing a huge frame when the node closes it with 1009:
/// the node reads (and drops) the rest instead of resetting the socket, so
/// the client's writes succeed and it reads the close frame.
#[tokio::test]
async fn oversized_frame_still_being_written_gets_its_1009() {
    const BIG: usize = 8 << 20;
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_LIMITS__MAX_FRAME_BYTES", "4096"),
        ("SWITCHBOARD_LIMITS__CLOSE_TIMEOUT_MS", "60000"),
    ]);
    let mut raw = RawWs::connect(node.addr(), "/ws");
    raw.send_json(&json!({"type": "hello", "id": 1, "peer_id": "big"}));
    assert_eq!(raw.recv_json()["type"], "welcome");
    let mut writer = raw.stream.try_clone().expect("clone the socket");
    let frame = crate::helpers::client_frame(true, 2, &vec![0u8; BIG], true);
    let wrote = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &frame));
    assert_eq!(raw.read_close(), Some((1009, "message-too-big".into())));
    // Bounded: the socket's write timeout is helpers::TIMEOUT.
    wrote
        .join()
        .unwrap()
        .expect("the node read the rest of the frame rather than resetting the socket");
    // The client ends its side; the node, which was waiting for that, ends too.
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut raw.stream, &mut rest).expect("a clean end of stream");
    assert!(
        rest.is_empty(),
        "{} bytes after the close frame",
        rest.len()
    );
}

#[tokio::test]
async fn third_room_is_too_many_rooms() {
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__MAX_ROOMS_PER_PEER", "2")]);
    let mut c = node.peer("p").await;
    c.join("r1").await;
    c.join("r2").await;
    c.send_json(json!({"type": "join", "id": 3, "room": "r3"}))
        .await;
    assert_eq!(c.recv_error("too-many-rooms").await["id"], 3);
    c.ping().await;
    // Rejoining a room it is in does not count; leaving frees a slot.
    c.join("r2").await;
    c.send_json(json!({"type": "leave", "id": 4, "room": "r1"}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ack", "id": 4}));
    c.join("r3").await;
    let (_, r3) = node.get("/api/rooms/r3").await;
    assert_eq!(r3["members"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn third_peer_is_room_full() {
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__MAX_PEERS_PER_ROOM", "2")]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    let mut c = node.peer("c").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    c.send_json(json!({"type": "join", "id": "full", "room": "r"}))
        .await;
    assert_eq!(c.recv_error("room-full").await["id"], "full");
    c.ping().await;
    // The refused peer is not a member: it is not announced, gets no broadcasts,
    // and cannot broadcast there.
    a.send_json(json!({"type": "broadcast", "room": "r", "data": 1}))
        .await;
    assert_eq!(b.recv_type("message").await["data"], 1);
    c.ping().await;
    a.ping().await;
    c.send_json(json!({"type": "broadcast", "id": 2, "room": "r", "data": 1}))
        .await;
    c.recv_error("not-in-room").await;
    let (_, r) = node.get("/api/rooms/r").await;
    assert_eq!(r["members"].as_array().unwrap().len(), 2, "{r}");
    // When a member leaves, there is room again.
    b.send_json(json!({"type": "leave", "room": "r"})).await;
    a.recv_type("peer-left").await;
    let j = c.join("r").await;
    assert_eq!(j["peers"], json!([{"peer_id": "a", "meta": null}]));
}

/// One member of a room never reads; another reads everything. A sender
/// floods the room: the fast reader gets every message, the slow one is
/// closed as a slow consumer (counted in a metric), and its room sees it leave.
///
/// The sender keeps at most `WINDOW` (< the queue of 16) messages ahead of the
/// fast reader, so the fast reader is never behind by more than its queue
/// holds, however the two processes are scheduled on a busy machine; the slow
/// reader falls behind without bound until its socket buffers and its queue
/// are full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_fast_one_gets_everything() {
    const WINDOW: u64 = 8;
    const CHECK_EVERY: u64 = 500;
    const MAX_MESSAGES: u64 = 50_000;
    // The slow client reads again only after the flood: the node must keep
    // trying to deliver its close frame until then.
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_LIMITS__OUTBOUND_QUEUE", "16"),
        ("SWITCHBOARD_LIMITS__CLOSE_TIMEOUT_MS", "60000"),
    ]);
    let slow_q = r#"switchboard_disconnects_total{reason="slow-consumer"}"#;

    let mut fast = node.peer("fast").await;
    let mut slow = node.peer("slow").await;
    let mut sender = node.peer("sender").await;
    fast.join("flood").await;
    slow.join("flood").await;
    fast.recv_type("peer-joined").await;
    sender.join("flood").await;
    fast.recv_type("peer-joined").await;

    // The fast reader: every message in order until the end marker, reporting
    // its progress; it also sees the slow peer leave.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        let mut others: Vec<Value> = Vec::new();
        loop {
            let m = fast.recv().await;
            if m["type"] != "message" {
                others.push(m);
                continue;
            }
            if m["data"]["end"] == true {
                assert_eq!(m["data"]["total"], next, "fast reader missed messages");
                return (fast, next, others);
            }
            assert_eq!(
                m["data"]["seq"], next,
                "fast reader got messages out of order"
            );
            next += 1;
            let _ = progress_tx.send(next);
        }
    });

    let pad = "x".repeat(1000);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut slow_gone_at = None;
    while sent < MAX_MESSAGES {
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            progress.wait_for(|&got| sent < got + WINDOW),
        )
        .await
        .map(|r| r.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("fast reader ended early"),
            Err(_) => panic!("fast reader stuck at message {}", *progress.borrow()),
        }
        sender
            .send_json(
                json!({"type": "broadcast", "room": "flood", "data": {"seq": sent, "pad": pad}}),
            )
            .await;
        sent += 1;
        if sent.is_multiple_of(CHECK_EVERY)
            && slow_gone_at.is_none()
            && metric(&node, slow_q).await >= 1.0
        {
            slow_gone_at = Some(sent);
        }
        // Keep flooding a while after the slow client is gone: the room still works.
        if slow_gone_at.is_some_and(|at| sent >= at + CHECK_EVERY) {
            break;
        }
    }
    sender
        .send_json(
            json!({"type": "broadcast", "room": "flood", "data": {"end": true, "total": sent}}),
        )
        .await;
    let (mut fast, got, others) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("fast reader did not finish")
        .expect("fast reader task");
    assert!(
        slow_gone_at.is_some(),
        "the slow client was not disconnected after {sent} messages"
    );
    assert_eq!(
        metric(&node, slow_q).await,
        1.0,
        "only the slow client is a slow consumer"
    );
    assert_eq!(got, sent, "the fast reader got every message");
    assert_eq!(
        others,
        vec![
            json!({"type": "peer-left", "room": "flood", "peer_id": "slow", "reason": "disconnected"})
        ],
    );
    fast.ping().await;
    assert!(metric(&node, "switchboard_queue_overflows_total").await >= 1.0);
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!(
            "slow consumer: closed after ~{slow_gone_at:?} of {sent} messages, {:?}",
            started.elapsed()
        );
    }

    // The slow client reads at last: what the socket buffers held, then the
    // close frame, which the node kept trying to deliver (its pongs to the
    // node's pings, written as it reads, do not reset the socket: the node
    // reads until the client answers its close).
    // It says something first, as a live client might: the node, which no
    // longer reads it, must not reset the socket over these unread bytes
    // (a reset would destroy what the client had not received yet).
    slow.send_json(json!({"type": "ping", "id": "late"})).await;
    let (ending, skipped) = slow.expect_end(Duration::from_secs(30)).await;
    assert!(
        (skipped as u64) < sent,
        "slow client got everything ({skipped})?"
    );
    assert_eq!(ending, Ending::Close(1013, "slow-consumer".into()));
    // The sender never read; it is still connected, and its next message is the slow peer leaving.
    assert_eq!(
        sender.recv().await,
        json!({"type": "peer-left", "room": "flood", "peer_id": "slow", "reason": "disconnected"})
    );
    sender.ping().await;
}

#[tokio::test]
async fn connection_cap_refuses_with_503() {
    let node = TestNode::spawn(&[("SWITCHBOARD_SERVER__MAX_CONNECTIONS", "2")]);
    let a = node.client().await;
    let mut b = node.peer("b").await;

    // The raw upgrade shows the JSON body.
    let (status, body) = node.raw_upgrade().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too-many-connections", "{body}");
    // A WebSocket client sees the status in its handshake error.
    match Client::try_connect(&node.ws_url(), None).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("third connection accepted with max_connections = 2"),
    }
    assert_eq!(
        metric(
            &node,
            r#"switchboard_connections_refused_total{reason="limit"}"#
        )
        .await,
        2.0
    );
    // Existing connections are unaffected.
    b.ping().await;
    // A slot frees when a connection ends (the permit is released when its
    // task ends, just after the close handshake: retry briefly).
    a.close().await;
    let mut tries = 0;
    let mut c = loop {
        tries += 1;
        match Client::try_connect(&node.ws_url(), None).await {
            Ok(c) => break c,
            Err(tungstenite::Error::Http(r)) if r.status() == 503 && tries < 500 => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("connection after a slot freed: {e}"),
        }
    };
    c.hello("c").await;
    // Other HTTP endpoints are not capped.
    assert_eq!(node.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn no_hello_within_deadline_closes_with_4003() {
    // 2 s: long enough that a test starved of CPU by the parallel suite
    // still says hello in time where it should.
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__HELLO_TIMEOUT_MS", "2000")]);
    let started = Instant::now();
    let mut c = node.client().await;
    // An application ping does not extend the hello deadline.
    c.ping().await;
    let (code, reason) = c.expect_close().await;
    let waited = started.elapsed();
    assert_eq!((code, reason.as_str()), (4003, "hello-timeout"));
    assert!(
        waited >= Duration::from_millis(1900),
        "closed after only {waited:?}"
    );
    wait_metric(
        &node,
        r#"switchboard_disconnects_total{reason="hello-timeout"}"#,
        1.0,
        Duration::from_secs(20),
    )
    .await;
    // A client that says hello in time is not closed by the deadline.
    let mut ok = node.peer("ok").await;
    let msgs = ok.collect_for(Duration::from_millis(2500)).await;
    assert!(msgs.is_empty(), "{msgs:?}");
    ok.ping().await;
}

/// Pings every 0.5 s, a silent socket closed after 3 s: a client that reads
/// answers several pings within that time even when the suite starves it
/// of CPU for a second or two.
const HEARTBEAT: [(&str, &str); 2] = [
    ("SWITCHBOARD_LIMITS__HEARTBEAT_INTERVAL_MS", "500"),
    ("SWITCHBOARD_LIMITS__HEARTBEAT_TIMEOUT_MS", "3000"),
];

/// A client that never reads never answers the server's pings: it is closed
/// with 4004 and its rooms see it leave with reason "timeout". The silent
/// client is a raw socket that never writes after `join` (a WebSocket
/// library would answer the pings it reads, on a socket the node may have
/// closed by then), so the close frame is read as the node sent it.
#[tokio::test]
async fn silent_client_is_closed_by_heartbeat_timeout() {
    let node = TestNode::spawn(&HEARTBEAT);
    let mut watcher = node.peer("watcher").await;
    watcher.timeout = Duration::from_secs(30);
    watcher.join("r").await;
    let mut silent = RawWs::connect(node.addr(), "/ws");
    silent.send_json(&json!({"type": "hello", "id": 1, "peer_id": "silent"}));
    let welcome = silent.recv_json();
    assert_eq!(
        (&welcome["type"], &welcome["heartbeat_ms"]),
        (&json!("welcome"), &json!(500))
    );
    silent.send_json(&json!({"type": "join", "id": 2, "room": "r"}));
    assert_eq!(silent.recv_json()["type"], "joined");
    assert_eq!(watcher.recv_type("peer-joined").await["peer_id"], "silent");
    // From here on `silent` sends nothing, so no pong.
    let started = Instant::now();
    let left = watcher.recv().await;
    let waited = started.elapsed();
    assert_eq!(
        left,
        json!({"type": "peer-left", "room": "r", "peer_id": "silent", "reason": "timeout"})
    );
    assert!(
        waited >= Duration::from_millis(2500),
        "timed out after only {waited:?}"
    );
    assert_eq!(
        wait_metric(
            &node,
            r#"switchboard_disconnects_total{reason="heartbeat-timeout"}"#,
            1.0,
            Duration::from_secs(20)
        )
        .await,
        1.0
    );
    // What the silent client finds when it reads: pings, then the close frame.
    assert_eq!(
        silent.read_close(),
        Some((4004, "heartbeat-timeout".to_string()))
    );
    watcher.ping().await;
}

/// A client that keeps reading answers pings (tungstenite does it while
/// reading) and stays connected well past the timeout, even sending nothing.
#[tokio::test]
async fn reading_client_survives_heartbeats() {
    let node = TestNode::spawn(&HEARTBEAT);
    let mut live = node.peer("live").await;
    live.join("r").await;
    // 4.5 s is one and a half heartbeat timeouts; here the waiting is the test.
    let msgs = live.collect_for(Duration::from_millis(4500)).await;
    assert!(msgs.is_empty(), "unexpected messages: {msgs:?}");
    live.ping().await;
    assert_eq!(
        metric(
            &node,
            r#"switchboard_disconnects_total{reason="heartbeat-timeout"}"#
        )
        .await,
        0.0
    );
}
