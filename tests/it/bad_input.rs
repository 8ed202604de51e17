//! Bad input: every malformed or invalid message gets its own error code, and
//! the connection stays usable afterwards (it still answers `ping`).

use serde_json::{json, Value};

use crate::helpers::{Client, TestNode, MSGPACK};

/// A node and a client past `hello` as peer `me`.
async fn setup() -> (TestNode, Client) {
    let node = TestNode::spawn(&[]);
    let c = node.peer("me").await;
    (node, c)
}

/// Sends `msg`, expects `error` with `code` (and `id` when given), then a ping round trip.
async fn rejects(c: &mut Client, msg: Value, code: &str, id: Option<Value>) {
    c.send_json(msg.clone()).await;
    let e = c.recv_error(code).await;
    assert_eq!(e.get("id"), id.as_ref(), "id of the error for {msg}: {e}");
    c.ping().await;
}

#[tokio::test]
async fn invalid_json_is_malformed() {
    let (_node, mut c) = setup().await;
    c.send_raw_text("{\"type\": \"ping\", ").await;
    let e = c.recv_error("malformed").await;
    assert!(e.get("id").is_none());
    c.ping().await;
    c.send_raw_text("").await;
    c.recv_error("malformed").await;
    c.ping().await;
}

#[tokio::test]
async fn invalid_msgpack_is_malformed() {
    let node = TestNode::spawn(&[]);
    let mut c = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    c.send_msgpack(json!({"type": "hello", "peer_id": "m"}))
        .await;
    assert_eq!(c.recv().await["type"], "welcome");
    c.send_raw_binary(&[0xc1]).await; // a byte MessagePack never uses
    let e = c.recv_frame().await;
    assert!(e.binary, "errors to a MessagePack client are binary");
    assert_eq!(e.msg["code"], "malformed");
    c.ping_msgpack().await;
    // Truncated map: header says 3 entries, one follows.
    c.send_raw_binary(&[0x83, 0xa4, b't', b'y', b'p', b'e'])
        .await;
    assert_eq!(c.recv().await["code"], "malformed");
    c.ping_msgpack().await;
}

#[tokio::test]
async fn non_object_message_is_invalid_message() {
    let (_node, mut c) = setup().await;
    rejects(&mut c, json!([1, 2, 3]), "invalid-message", None).await;
    rejects(&mut c, json!("ping"), "invalid-message", None).await;
}

#[tokio::test]
async fn unknown_type_is_unknown_type() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "dance", "id": 3}),
        "unknown-type",
        Some(json!(3)),
    )
    .await;
    // The echo of a huge type name is bounded.
    c.send_json(json!({"type": "x".repeat(10_000)})).await;
    let e = c.recv_error("unknown-type").await;
    assert!(e["message"].as_str().unwrap().len() < 200, "{e}");
    c.ping().await;
}

#[tokio::test]
async fn missing_type_is_unknown_type() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"id": "t", "room": "r"}),
        "unknown-type",
        Some(json!("t")),
    )
    .await;
}

#[tokio::test]
async fn join_without_room_is_invalid_message() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 1}),
        "invalid-message",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 2, "kind": "offer"}),
        "invalid-message",
        Some(json!(2)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 3, "to": "x"}),
        "invalid-message",
        Some(json!(3)),
    )
    .await;
}

#[tokio::test]
async fn room_as_number_is_invalid_message_with_id() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 7, "room": 5}),
        "invalid-message",
        Some(json!(7)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": "s", "to": ["b"], "kind": "o"}),
        "invalid-message",
        Some(json!("s")),
    )
    .await;
}

#[tokio::test]
async fn invalid_id_is_invalid_message() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "ping", "id": {"a": 1}}),
        "invalid-message",
        None,
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "ping", "id": "x".repeat(129)}),
        "invalid-message",
        None,
    )
    .await;
}

#[tokio::test]
async fn empty_room_is_invalid_room() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 1, "room": ""}),
        "invalid-room",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 2, "room": "a\nb"}),
        "invalid-room",
        Some(json!(2)),
    )
    .await;
}

#[tokio::test]
async fn too_long_room_is_invalid_room() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 1, "room": "r".repeat(129)}),
        "invalid-room",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "broadcast", "id": 2, "room": "r".repeat(129), "data": 1}),
        "invalid-room",
        Some(json!(2)),
    )
    .await;
    // The limit is in bytes: 43 three-byte characters are 129 bytes.
    rejects(
        &mut c,
        json!({"type": "join", "id": 3, "room": "€".repeat(43)}),
        "invalid-room",
        Some(json!(3)),
    )
    .await;
    // Exactly 128 bytes is fine.
    c.join(&"r".repeat(128)).await;
}

#[tokio::test]
async fn bad_target_peer_id_is_invalid_peer_id() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 1, "to": "", "kind": "offer"}),
        "invalid-peer-id",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 2, "to": "p".repeat(129), "kind": "offer"}),
        "invalid-peer-id",
        Some(json!(2)),
    )
    .await;
}

#[tokio::test]
async fn bad_hello_peer_id_is_invalid_peer_id() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    rejects(
        &mut c,
        json!({"type": "hello", "id": "h", "peer_id": ""}),
        "invalid-peer-id",
        Some(json!("h")),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "hello", "id": "h2", "peer_id": "p".repeat(129)}),
        "invalid-peer-id",
        Some(json!("h2")),
    )
    .await;
    // The connection may still say hello properly.
    c.hello("fine").await;
}

#[tokio::test]
async fn too_long_kind_is_invalid_kind() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 1, "to": "me", "kind": "k".repeat(33)}),
        "invalid-kind",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 2, "to": "me", "kind": ""}),
        "invalid-kind",
        Some(json!(2)),
    )
    .await;
    // 32 bytes is fine (a signal to oneself is delivered).
    c.send_json(json!({"type": "signal", "to": "me", "kind": "k".repeat(32)}))
        .await;
    assert_eq!(c.recv_type("signal").await["kind"], "k".repeat(32));
}

#[tokio::test]
async fn commands_before_hello_are_hello_required() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 1, "room": "r"}),
        "hello-required",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "signal", "id": 2, "to": "x", "kind": "offer"}),
        "hello-required",
        Some(json!(2)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "broadcast", "room": "r", "data": 1}),
        "hello-required",
        None,
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "leave", "id": 4, "room": "r"}),
        "hello-required",
        Some(json!(4)),
    )
    .await;
    c.hello("late").await;
    c.join("r").await;
}

#[tokio::test]
async fn leave_or_broadcast_unjoined_room_is_not_in_room() {
    let (_node, mut c) = setup().await;
    rejects(
        &mut c,
        json!({"type": "leave", "id": 1, "room": "nowhere"}),
        "not-in-room",
        Some(json!(1)),
    )
    .await;
    rejects(
        &mut c,
        json!({"type": "broadcast", "id": 2, "room": "nowhere", "data": 1}),
        "not-in-room",
        Some(json!(2)),
    )
    .await;
    // Also after leaving a room.
    c.join("r").await;
    c.send_json(json!({"type": "leave", "id": 3, "room": "r"}))
        .await;
    assert_eq!(c.recv().await, json!({"type": "ack", "id": 3}));
    rejects(
        &mut c,
        json!({"type": "leave", "id": 4, "room": "r"}),
        "not-in-room",
        Some(json!(4)),
    )
    .await;
}

#[tokio::test]
async fn oversized_meta_is_meta_too_large() {
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__MAX_META_BYTES", "64")]);
    let mut c = node.client().await;
    let big = json!({"name": "n".repeat(100)});
    rejects(
        &mut c,
        json!({"type": "hello", "id": "h", "peer_id": "p", "meta": big}),
        "meta-too-large",
        Some(json!("h")),
    )
    .await;
    c.hello_with(json!({"type": "hello", "peer_id": "p", "meta": {"name": "small"}}))
        .await;
    rejects(
        &mut c,
        json!({"type": "join", "id": 2, "room": "r", "meta": big}),
        "meta-too-large",
        Some(json!(2)),
    )
    .await;
    // Nothing was joined.
    let (status, _) = node.get("/api/rooms/r").await;
    assert_eq!(status, 404);
    c.join_with(json!({"type": "join", "room": "r", "meta": {"name": "small"}}))
        .await;
}

#[tokio::test]
async fn errors_are_counted_in_metrics() {
    let (node, mut c) = setup().await;
    rejects(&mut c, json!({"type": "dance"}), "unknown-type", None).await;
    rejects(
        &mut c,
        json!({"type": "leave", "room": "x"}),
        "not-in-room",
        None,
    )
    .await;
    use crate::helpers::metric;
    assert_eq!(
        metric(&node, r#"switchboard_errors_total{code="unknown-type"}"#).await,
        1.0
    );
    assert_eq!(
        metric(&node, r#"switchboard_errors_total{code="not-in-room"}"#).await,
        1.0
    );
    assert!(metric(&node, r#"switchboard_messages_in_total{type="invalid"}"#).await >= 1.0);
}
