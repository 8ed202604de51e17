//! Graceful shutdown of the real process on SIGTERM.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_tungstenite::tungstenite;

use crate::helpers::{metric, Client, TestNode};

/// Polls /readyz until it answers 503 (bounded); returns the body.
async fn wait_not_ready(node: &TestNode, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = node.get("/readyz").await;
        if status == 503 {
            return body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "/readyz still 200 {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a drain does during its grace period. The grace period (60 s) is
/// far longer than the steps take even on a starved machine, so nothing
/// here races the final close; the clients leave at the end, and the node
/// exits without waiting for the rest of it.
#[tokio::test]
async fn sigterm_drains_and_serves_during_the_grace_period() {
    let mut node = TestNode::spawn(&[
        ("SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS", "60000"),
        ("SWITCHBOARD_SHUTDOWN__RECONNECT_JITTER_MS", "500"),
    ]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    // A connection that never said hello is closed too.
    let mut anon = node.client().await;
    anon.ping().await;
    let mut late = node.client().await;
    late.ping().await;

    let started = Instant::now();
    node.sigterm();
    let body = wait_not_ready(&node, Duration::from_secs(10)).await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["reason"], "draining");
    // The state gauges say the same at the scrape (alert rules read them).
    assert_eq!(metric(&node, "switchboard_draining").await, 1.0);
    assert_eq!(metric(&node, "switchboard_ready").await, 0.0);
    assert_eq!(metric(&node, "switchboard_bus_ready").await, 1.0);

    // New sockets are refused while draining.
    let (status, body) = node.raw_upgrade().await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "draining", "{body}");
    match Client::try_connect(&node.ws_url(), None).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        Err(e) => panic!("expected 503 while draining, got {e}"),
        Ok(_) => panic!("a new socket was accepted while draining"),
    }

    // Connected clients are told to reconnect elsewhere...
    for c in [&mut a, &mut b] {
        let r = c.recv_type("reconnect").await;
        assert_eq!(r["reason"], "draining");
        let after = r["after_ms"].as_u64().expect("after_ms is a number");
        assert!(after < 500, "after_ms {after} exceeds the jitter bound");
    }
    // A connection that had not said hello yet is refused if it does now,
    // with the hello's id (PROTOCOL.md "How `id` is answered").
    late.send_json(json!({"type": "hello", "id": "late", "peer_id": "late"}))
        .await;
    assert_eq!(late.recv_error("draining").await["id"], "late");
    assert_eq!(late.expect_close().await, (1012, "draining".to_string()));
    // ...and keep working during the grace period.
    a.send_json(json!({"type": "signal", "to": "b", "kind": "k", "data": 1}))
        .await;
    assert_eq!(b.recv_type("signal").await["data"], 1);
    a.send_json(json!({"type": "join", "id": 7, "room": "after"}))
        .await;
    assert_eq!(a.recv_type("joined").await["id"], 7);
    a.ping().await;
    anon.ping().await;

    // The clients go; b hears a leave with the ordinary reason.
    a.close().await;
    let left = b.recv_type("peer-left").await;
    assert_eq!(
        left,
        json!({"type": "peer-left", "room": "r", "peer_id": "a", "reason": "disconnected"})
    );
    b.close().await;
    anon.close().await;
    let status = node.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(45),
        "exit took {took:?}: it waited for the grace period instead of the last client"
    );
}

/// At the end of the grace period, every socket still open is closed with
/// 1012 "draining" (after the `reconnect` it was sent), its rooms see it
/// leave with reason `disconnected`, and the node exits 0. Nothing has to
/// happen in time here: the clients only read.
#[tokio::test]
async fn end_of_grace_closes_the_rest_with_1012_and_exits_0() {
    let mut node = TestNode::spawn(&[("SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS", "1500")]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    let mut anon = node.client().await;
    anon.ping().await;
    let started = Instant::now();
    node.sigterm();
    for c in [&mut a, &mut b] {
        c.timeout = Duration::from_secs(30);
        assert_eq!(c.recv_type("reconnect").await["reason"], "draining");
    }
    anon.timeout = Duration::from_secs(30);
    // A room member may first hear the other leave, as all sockets close at once.
    let mut left = Vec::new();
    for c in [&mut a, &mut b, &mut anon] {
        let (close, seen) = c.expect_close_after(&["peer-left"]).await;
        assert_eq!(close, (1012, "draining".to_string()));
        left.extend(seen);
    }
    for l in &left {
        assert_eq!(l["reason"], "disconnected", "{l}");
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1400),
        "sockets closed {closed_after:?} after SIGTERM, before the 1.5 s grace period"
    );
    let status = node.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[tokio::test]
async fn exits_early_when_clients_leave_during_grace() {
    let mut node = TestNode::spawn(&[("SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS", "60000")]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    let started = Instant::now();
    node.sigterm();
    a.recv_type("reconnect").await;
    b.recv_type("reconnect").await;
    // The clients do as told and go.
    a.close().await;
    b.close().await;
    let status = node.wait_exit(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took < Duration::from_secs(45),
        "exit took {took:?}: it waited for the grace period instead of the last client"
    );
}

#[tokio::test]
async fn idle_node_exits_at_once_on_sigterm() {
    let mut node = TestNode::spawn(&[("SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS", "60000")]);
    let started = Instant::now();
    node.sigterm();
    let status = node.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    // Far below the 60 s grace period: it did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(45));
    assert!(node.log().contains("SIGTERM received"), "{}", node.log());
}
