//! Rooms and presence: join, leave, disconnect, and a peer id connected twice.

use serde_json::json;

use crate::helpers::TestNode;

#[tokio::test]
async fn join_lists_members_and_others_get_peer_joined() {
    let node = TestNode::spawn(&[]);
    let mut a = node.client().await;
    a.hello_with(json!({"type": "hello", "peer_id": "a", "meta": {"from": "hello"}}))
        .await;
    let mut b = node.peer("b").await;

    let ja = a.join("lobby").await;
    assert_eq!(ja["peers"], json!([]), "first member sees an empty room");
    // Without its own meta, a member shows its hello meta.
    let jb = b
        .join_with(json!({"type": "join", "room": "lobby", "meta": {"seat": 2}}))
        .await;
    assert_eq!(
        jb["peers"],
        json!([{"peer_id": "a", "meta": {"from": "hello"}}])
    );
    assert_eq!(
        a.recv().await,
        json!({"type": "peer-joined", "room": "lobby", "peer_id": "b", "meta": {"seat": 2}})
    );
    // The joiner is not told about itself.
    b.ping().await;

    let mut c = node.peer("c").await;
    let jc = c.join("lobby").await;
    let mut peers: Vec<String> = jc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer_id"].as_str().unwrap().to_string())
        .collect();
    peers.sort();
    assert_eq!(peers, ["a", "b"]);
    for m in jc["peers"].as_array().unwrap() {
        assert!(m.get("meta").is_some(), "member without meta: {m}");
    }
    assert_eq!(a.recv_type("peer-joined").await["peer_id"], "c");
    assert_eq!(b.recv_type("peer-joined").await["peer_id"], "c");
}

#[tokio::test]
async fn joining_twice_is_harmless() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    let again = b.join("r").await;
    assert_eq!(again["peers"], json!([{"peer_id": "a", "meta": null}]));
    // No second peer-joined for the same member.
    a.ping().await;
}

#[tokio::test]
async fn leave_acks_and_others_get_peer_left_left() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;

    b.send_json(json!({"type": "leave", "id": "bye", "room": "r"}))
        .await;
    assert_eq!(b.recv().await, json!({"type": "ack", "id": "bye"}));
    assert_eq!(
        a.recv().await,
        json!({"type": "peer-left", "room": "r", "peer_id": "b", "reason": "left"})
    );
    // After leaving, the room's broadcasts no longer reach b, and b cannot broadcast there.
    a.send_json(json!({"type": "broadcast", "room": "r", "data": 1}))
        .await;
    a.ping().await;
    b.send_json(json!({"type": "broadcast", "id": 2, "room": "r", "data": 1}))
        .await;
    assert_eq!(b.recv_error("not-in-room").await["id"], 2);

    // Leaving without an id: no ack, still a peer-left for the others.
    b.join("r").await;
    a.recv_type("peer-joined").await;
    b.send_json(json!({"type": "leave", "room": "r"})).await;
    b.ping().await;
    assert_eq!(a.recv_type("peer-left").await["reason"], "left");
}

#[tokio::test]
async fn disconnect_sends_peer_left_disconnected() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r1").await;
    a.join("r2").await;
    b.join("r1").await;
    b.join("r2").await;
    a.recv_type("peer-joined").await;
    a.recv_type("peer-joined").await;
    b.close().await;
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let l = a.recv_type("peer-left").await;
        assert_eq!(l["peer_id"], "b");
        assert_eq!(l["reason"], "disconnected");
        rooms.push(l["room"].as_str().unwrap().to_string());
    }
    rooms.sort();
    assert_eq!(rooms, ["r1", "r2"]);
    a.ping().await;
}

#[tokio::test]
async fn abrupt_disconnect_sends_peer_left_disconnected() {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join("r").await;
    b.join("r").await;
    a.recv_type("peer-joined").await;
    drop(b); // TCP closed without a close frame
    assert_eq!(
        a.recv().await,
        json!({"type": "peer-left", "room": "r", "peer_id": "b", "reason": "disconnected"})
    );
}

/// A peer id connected twice: a reconnect proving itself (the older
/// connection's `reconnect_secret`) wins, the older one is closed with 4002
/// "replaced", its rooms see it leave with reason "replaced", and the newer
/// connection can rejoin and be reached. (Without the secret it is refused:
/// tests/it/sec_auth.rs.)
#[tokio::test]
async fn duplicate_peer_id_replaces_older_connection() {
    let node = TestNode::spawn(&[]);
    let mut obs = node.peer("observer").await;
    let mut old = node.client().await;
    let secret = old.hello("dup").await["reconnect_secret"].clone();
    obs.join("r").await;
    old.join("r").await;
    obs.recv_type("peer-joined").await;

    let mut new = node.client().await;
    let w = new
        .hello_with(json!({"type": "hello", "peer_id": "dup", "reconnect_secret": secret}))
        .await;
    assert_eq!(w["peer_id"], "dup");

    assert_eq!(old.expect_close().await, (4002, "replaced".to_string()));
    assert_eq!(
        obs.recv().await,
        json!({"type": "peer-left", "room": "r", "peer_id": "dup", "reason": "replaced"})
    );

    // The newer connection is the one signals reach.
    obs.send_json(json!({"type": "signal", "id": 1, "to": "dup", "kind": "offer", "data": "x"}))
        .await;
    assert_eq!(obs.recv().await, json!({"type": "ack", "id": 1}));
    assert_eq!(new.recv_type("signal").await["data"], "x");

    // Rejoining works and is seen by the room; the old connection's rooms are not inherited.
    new.send_json(json!({"type": "broadcast", "id": 2, "room": "r", "data": 0}))
        .await;
    assert_eq!(new.recv_error("not-in-room").await["id"], 2);
    let j = new.join("r").await;
    assert_eq!(j["peers"], json!([{"peer_id": "observer", "meta": null}]));
    assert_eq!(obs.recv_type("peer-joined").await["peer_id"], "dup");
    new.send_json(json!({"type": "broadcast", "room": "r", "data": "from-new"}))
        .await;
    assert_eq!(obs.recv_type("message").await["data"], "from-new");

    let (status, room) = node.get("/api/rooms/r").await;
    assert_eq!(status, 200);
    let mut ids: Vec<&str> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["dup", "observer"]);
}

/// The newer connection rejoins at once, racing the older one's cleanup: the
/// end state must still be one member `dup`, reachable on the new socket.
#[tokio::test]
async fn duplicate_peer_id_rejoining_at_once_stays_consistent() {
    let node = TestNode::spawn(&[]);
    let mut obs = node.peer("observer").await;
    let mut old = node.client().await;
    let secret = old.hello("dup").await["reconnect_secret"].clone();
    obs.join("r").await;
    old.join("r").await;
    obs.recv_type("peer-joined").await;

    let mut new = node.client().await;
    new.hello_with(json!({"type": "hello", "peer_id": "dup", "reconnect_secret": secret}))
        .await;
    new.join("r").await;
    assert_eq!(old.expect_close().await, (4002, "replaced".to_string()));

    // The observer may or may not see the old connection leave (depending on
    // which cleanup ran first), but it sees the new one join, and the new one
    // is reachable by signal and by broadcast.
    let j = obs.recv().await;
    let joined = if j["type"] == "peer-left" {
        assert_eq!(j["reason"], "replaced");
        obs.recv().await
    } else {
        j
    };
    assert_eq!(
        joined,
        json!({"type": "peer-joined", "room": "r", "peer_id": "dup", "meta": null})
    );
    obs.send_json(json!({"type": "broadcast", "room": "r", "data": "hi"}))
        .await;
    assert_eq!(new.recv_type("message").await["data"], "hi");
    obs.send_json(json!({"type": "signal", "to": "dup", "kind": "k", "data": 5}))
        .await;
    assert_eq!(new.recv_type("signal").await["data"], 5);
    obs.ping().await;

    let (_, room) = node.get("/api/rooms/r").await;
    assert_eq!(room["members"].as_array().unwrap().len(), 2, "{room}");
    // When the new connection goes, the observer sees dup leave, and the room
    // is left with the observer only.
    new.close().await;
    let l = obs.recv_type("peer-left").await;
    assert_eq!(
        (l["peer_id"].clone(), l["reason"].clone()),
        (json!("dup"), json!("disconnected"))
    );
    let (_, rooms) = node.get("/api/rooms").await;
    assert_eq!(rooms, json!({"rooms": [{"room": "r", "members": 1}]}));
}
