//! The HTTP door: probes, metrics and the rooms API.

use serde_json::json;

use crate::helpers::{metric, TestNode};

#[tokio::test]
async fn healthz_is_ok_json() {
    let node = TestNode::spawn(&[]);
    let (status, body) = node.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_is_ready() {
    let node = TestNode::spawn(&[("SWITCHBOARD_SERVER__NODE_ID", "ready-node")]);
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["ready"], true);
    assert_eq!(body["node"], "ready-node");
}

#[tokio::test]
async fn metrics_expose_connections_and_messages() {
    let node = TestNode::spawn(&[]);
    let mut c = node.peer("m").await;
    c.ping().await;
    let (status, text) = node.get_text("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_connections",
        "switchboard_messages_in_total",
        "switchboard_messages_out_total",
        "switchboard_peers",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "/metrics lacks {name}:\n{text}"
        );
    }
    assert_eq!(metric(&node, "switchboard_connections").await, 1.0);
    assert_eq!(metric(&node, "switchboard_peers").await, 1.0);
    // State gauges, read at the scrape, and counters that exist at 0 before
    // their first event (so rate() in alert rules sees that event).
    assert_eq!(metric(&node, "switchboard_ready").await, 1.0);
    assert_eq!(metric(&node, "switchboard_bus_ready").await, 1.0);
    assert_eq!(metric(&node, "switchboard_draining").await, 0.0);
    assert!(
        text.lines()
            .any(|l| l == "switchboard_queue_overflows_total 0"),
        "/metrics lacks switchboard_queue_overflows_total at 0:\n{text}"
    );
    let started = metric(&node, "switchboard_start_time_seconds").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && now - started < 600.0,
        "start time {started}, now {now}"
    );
    assert_eq!(
        metric(&node, r#"switchboard_messages_in_total{type="hello"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&node, r#"switchboard_messages_in_total{type="ping"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&node, r#"switchboard_messages_out_total{type="pong"}"#).await,
        1.0
    );
    // Labels stay bounded: no peer id appears in the exposition.
    assert!(!text.contains("\"m\""), "a peer id leaked into a label");
}

/// Per-message metrics count every message, whichever of the node's threads
/// handled it (their handles are cached per thread).
#[tokio::test]
async fn per_message_metrics_count_every_signal() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    for i in 0..300 {
        a.send_json(json!({"type": "signal", "to": "b", "kind": "candidate", "data": i}))
            .await;
    }
    for i in 0..300 {
        assert_eq!(b.recv_type("signal").await["data"], i);
    }
    assert_eq!(
        metric(&node, r#"switchboard_messages_in_total{type="signal"}"#).await,
        300.0
    );
    assert_eq!(
        metric(&node, r#"switchboard_messages_out_total{type="signal"}"#).await,
        300.0
    );
    assert_eq!(
        metric(&node, "switchboard_relay_latency_seconds_count").await,
        300.0
    );
}

#[tokio::test]
async fn rooms_api_lists_rooms_and_members() {
    let node = TestNode::spawn(&[]);
    let (status, body) = node.get("/api/rooms").await;
    assert_eq!((status, body), (200, json!({"rooms": []})));

    let mut a = node.peer("a").await;
    let mut b = node.client().await;
    b.hello_with(json!({"type": "hello", "peer_id": "b", "meta": {"name": "Bee"}}))
        .await;
    a.join_with(json!({"type": "join", "room": "alpha", "meta": {"role": "host"}}))
        .await;
    a.join("beta").await;
    b.join("alpha").await;
    a.recv_type("peer-joined").await;

    let (status, body) = node.get("/api/rooms").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"rooms": [{"room": "alpha", "members": 2}, {"room": "beta", "members": 1}]})
    );
    let (status, body) = node.get("/api/rooms/alpha").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"room": "alpha", "members": [
            {"peer_id": "a", "meta": {"role": "host"}},
            {"peer_id": "b", "meta": {"name": "Bee"}},
        ]})
    );
    // A room name that needs escaping in a path.
    a.join("with space").await;
    let (status, body) = node.get("/api/rooms/with%20space").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], "with space");

    // Empty rooms disappear.
    b.close().await;
    a.recv_type("peer-left").await;
    a.send_json(json!({"type": "leave", "id": 1, "room": "beta"}))
        .await;
    a.recv_type("ack").await;
    let (_, body) = node.get("/api/rooms").await;
    assert_eq!(
        body,
        json!({"rooms": [{"room": "alpha", "members": 1}, {"room": "with space", "members": 1}]})
    );
    let (status, _) = node.get("/api/rooms/beta").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unknown_room_is_404_json() {
    let node = TestNode::spawn(&[]);
    let (status, body) = node.get("/api/rooms/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "room-not-found", "{body}");
    assert!(body["error"]["message"].is_string());
    let long = "r".repeat(129);
    let (status, body) = node.get(&format!("/api/rooms/{long}")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid-room", "{body}");
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let node = TestNode::spawn(&[]);
    for path in ["/nope", "/api", "/api/rooms/a/b"] {
        let (status, body) = node.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not-found", "{path}: {body}");
    }
}

#[tokio::test]
async fn plain_get_on_ws_is_not_an_upgrade() {
    let node = TestNode::spawn(&[]);
    let (status, body) = node.get("/ws").await;
    assert_eq!(status, 400, "GET /ws without upgrade headers: {body}");
    assert_eq!(body["error"]["code"], "bad-request", "{body}");
}

#[tokio::test]
async fn admin_token_guards_the_api() {
    let node = TestNode::spawn(&[("SWITCHBOARD_HTTP__ADMIN_TOKEN", "s3cret-admin")]);
    let mut a = node.peer("a").await;
    a.join("r").await;
    for path in ["/api/rooms", "/api/rooms/r"] {
        let (status, body) = node.get(path).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}: {body}");
        let (status, _) = node
            .get_with(path, &[("authorization", "Bearer wrong")])
            .await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = node
            .get_with(path, &[("authorization", "s3cret-admin")])
            .await;
        assert_eq!(status, 401, "{path} without the Bearer scheme");
        let (status, body) = node
            .get_with(path, &[("authorization", "Bearer s3cret-admin")])
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Probes and metrics stay open for the orchestrator and the scraper.
    assert_eq!(node.get("/healthz").await.0, 200);
    assert_eq!(node.get("/readyz").await.0, 200);
    assert_eq!(node.get_text("/metrics").await.0, 200);
}
