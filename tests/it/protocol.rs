//! The native protocol's happy paths: hello, signal, broadcast, ping, ordering.

use serde_json::json;

use crate::helpers::{is_uuid, TestNode};

#[tokio::test]
async fn hello_gets_welcome_with_id_echoed() {
    let node = TestNode::spawn(&[("SWITCHBOARD_SERVER__NODE_ID", "node-under-test")]);
    let mut c = node.client().await;
    c.send_json(json!({"type": "hello", "id": 41, "peer_id": "alice", "meta": {"name": "A"}}))
        .await;
    let w = c.recv_type("welcome").await;
    // The fields every client relies on (later additions such as
    // `stun_username` are not checked here).
    assert_eq!(w["id"], 41);
    assert_eq!(w["peer_id"], "alice");
    assert_eq!(w["node"], "node-under-test");
    assert_eq!(w["observed_addr"], c.local_addr.to_string());
    assert_eq!(w["heartbeat_ms"], 15000, "default heartbeat interval");
}

#[tokio::test]
async fn hello_without_peer_id_gets_a_uuid() {
    let node = TestNode::spawn(&[]);
    let mut a = node.client().await;
    let wa = a.hello_with(json!({"type": "hello"})).await;
    let mut b = node.client().await;
    let wb = b.hello_with(json!({"type": "hello"})).await;
    let (pa, pb) = (
        wa["peer_id"].as_str().unwrap(),
        wb["peer_id"].as_str().unwrap(),
    );
    assert!(is_uuid(pa), "assigned peer id {pa} is not a UUID");
    assert!(is_uuid(pb), "assigned peer id {pb} is not a UUID");
    assert_ne!(pa, pb, "two connections got the same assigned id");
    // The assigned id is a real address: a signal to it arrives.
    a.send_json(json!({"type": "signal", "to": pb, "kind": "offer", "data": 1}))
        .await;
    let s = b.recv_type("signal").await;
    assert_eq!(s["from"], pa);
}

#[tokio::test]
async fn welcome_without_id_has_no_id() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    c.send_json(json!({"type": "hello", "peer_id": "p"})).await;
    let w = c.recv_type("welcome").await;
    assert!(w.get("id").is_none(), "welcome invented an id: {w}");
}

#[tokio::test]
async fn signal_reaches_target_and_sender_gets_ack() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    let data = json!({"sdp": "v=0\r\n", "nested": [1, 2, {"x": null}], "unicode": "héllo ✓"});
    a.send_json(json!({"type": "signal", "id": "s1", "to": "b", "kind": "offer", "data": data}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "ack", "id": "s1"}));
    assert_eq!(
        b.recv().await,
        json!({"type": "signal", "from": "a", "kind": "offer", "data": data})
    );
    // Without an id there is no ack: the next thing `a` reads is its pong.
    a.send_json(json!({"type": "signal", "to": "b", "kind": "candidate", "data": {"c": 1}}))
        .await;
    a.ping().await;
    assert_eq!(
        b.recv().await,
        json!({"type": "signal", "from": "a", "kind": "candidate", "data": {"c": 1}})
    );
    b.ping().await;
}

#[tokio::test]
async fn broadcast_reaches_others_but_not_sender() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    let mut c = node.peer("c").await;
    let mut outsider = node.peer("outsider").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    c.join("r").await;
    a.recv_type("peer-joined").await;
    b.recv_type("peer-joined").await;

    a.send_json(json!({"type": "broadcast", "id": 7, "room": "r", "data": {"hi": true}}))
        .await;
    assert_eq!(a.recv().await, json!({"type": "ack", "id": 7}));
    let expected = json!({"type": "message", "room": "r", "from": "a", "data": {"hi": true}});
    assert_eq!(b.recv().await, expected);
    assert_eq!(c.recv().await, expected);
    // The sender hears nothing more, and neither does a peer outside the room.
    a.ping().await;
    outsider.ping().await;
}

#[tokio::test]
async fn ping_gets_pong_with_id_before_and_after_hello() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    // Before hello, ping is allowed (keep-alive while waiting for a token).
    c.send_json(json!({"type": "ping", "id": "early"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "early"}));
    c.hello("p").await;
    c.send_json(json!({"type": "ping", "id": 99})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 99}));
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn second_hello_is_already_hello() {
    let node = TestNode::spawn(&[]);
    let mut c = node.peer("p").await;
    c.send_json(json!({"type": "hello", "id": "again", "peer_id": "other"}))
        .await;
    let e = c.recv_error("already-hello").await;
    assert_eq!(e["id"], "again");
    // The connection keeps its first identity.
    let mut d = node.peer("d").await;
    d.send_json(json!({"type": "signal", "to": "p", "kind": "k"}))
        .await;
    assert_eq!(c.recv_type("signal").await["from"], "d");
    d.send_json(json!({"type": "signal", "id": 1, "to": "other", "kind": "k"}))
        .await;
    d.recv_error("peer-not-found").await;
}

#[tokio::test]
async fn spoofed_from_is_ignored() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;

    a.send_json(
        json!({"type": "signal", "to": "b", "kind": "offer", "from": "mallory", "data": 1}),
    )
    .await;
    assert_eq!(b.recv_type("signal").await["from"], "a");
    a.send_json(json!({"type": "broadcast", "room": "r", "from": "mallory", "data": 2}))
        .await;
    assert_eq!(b.recv_type("message").await["from"], "a");
    // A `from` of the wrong type is ignored as well, not an error.
    a.send_json(json!({"type": "signal", "to": "b", "kind": "offer", "from": {"x": 1}, "data": 3}))
        .await;
    let s = b.recv_type("signal").await;
    assert_eq!(
        (s["from"].clone(), s["data"].clone()),
        (json!("a"), json!(3))
    );
    a.ping().await;
}

#[tokio::test]
async fn signal_to_unknown_peer_is_peer_not_found() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    a.send_json(json!({"type": "signal", "id": "x1", "to": "nobody", "kind": "offer"}))
        .await;
    let e = a.recv_error("peer-not-found").await;
    assert_eq!(e["id"], "x1");
    // A peer that was connected and left is unknown too.
    let b = node.peer("b").await;
    b.close().await;
    let mut tries = 0;
    loop {
        tries += 1;
        a.send_json(json!({"type": "signal", "id": tries, "to": "b", "kind": "offer"}))
            .await;
        let r = a.recv().await;
        if r["type"] == "error" {
            assert_eq!(r["code"], "peer-not-found");
            assert_eq!(r["id"], tries);
            break;
        }
        // The server may still be cleaning up the closed socket.
        assert_eq!(r, json!({"type": "ack", "id": tries}));
        assert!(
            tries < 1000,
            "closed peer still reachable after {tries} signals"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn thousand_signals_arrive_once_and_in_order() {
    const N: u64 = 1000;
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    let receiver = tokio::spawn(async move {
        for want in 0..N {
            let s = b.recv_type("signal").await;
            assert_eq!(s["from"], "a");
            assert_eq!(s["data"]["seq"], want, "signal out of order or lost: {s}");
        }
        // Nothing after the last one: no duplicates.
        b.ping().await;
        b
    });
    for seq in 0..N {
        a.send_json(json!({"type": "signal", "id": seq, "to": "b", "kind": "candidate", "data": {"seq": seq}}))
            .await;
    }
    for seq in 0..N {
        assert_eq!(a.recv().await, json!({"type": "ack", "id": seq}));
    }
    a.ping().await;
    receiver.await.expect("receiver task");
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let node = TestNode::spawn(&[]);
    let mut c = node.peer("closer").await;
    c.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    })))
    .await;
    // The close handshake completes: the server echoes the client's code
    // (no abrupt end of stream, which clients would see as 1006).
    let (code, _) = c.expect_close().await;
    assert_eq!(code, 1001);
    crate::helpers::wait_metric(
        &node,
        "switchboard_disconnects_total{reason=\"client-closed\"}",
        1.0,
        std::time::Duration::from_secs(20),
    )
    .await;
}
