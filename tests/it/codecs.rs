//! JSON and MessagePack clients in one room hear each other.

use serde_json::json;

use crate::helpers::{Client, TestNode, JSON, MSGPACK};

#[tokio::test]
async fn json_and_msgpack_clients_hear_each_other() {
    let node = TestNode::spawn(&[]);
    // j: JSON text frames (no subprotocol); m: the msgpack subprotocol;
    // b: no subprotocol, but binary frames from its first message on.
    let mut j = node.client().await;
    let mut m = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    let mut b = node.client().await;

    j.hello("j").await;
    m.send_msgpack(json!({"type": "hello", "id": 1, "peer_id": "m", "meta": {"codec": "msgpack"}}))
        .await;
    let w = m.recv_frame().await;
    assert!(
        w.binary,
        "welcome to a msgpack-subprotocol client must be binary"
    );
    assert_eq!(w.msg["type"], "welcome");
    assert_eq!(w.msg["id"], 1);
    b.send_msgpack(json!({"type": "hello", "id": "h", "peer_id": "b"}))
        .await;
    let w = b.recv_frame().await;
    assert!(
        w.binary,
        "a client whose first frame is binary is answered in binary"
    );
    assert_eq!(w.msg["peer_id"], "b");

    j.join("mix").await;
    m.send_msgpack(json!({"type": "join", "id": 2, "room": "mix"}))
        .await;
    let joined = m.recv_frame().await;
    assert!(joined.binary);
    assert_eq!(joined.msg["peers"], json!([{"peer_id": "j", "meta": null}]));
    let pj = j.recv_frame().await;
    assert!(!pj.binary, "JSON client must get text frames");
    assert_eq!(
        pj.msg,
        json!({"type": "peer-joined", "room": "mix", "peer_id": "m", "meta": {"codec": "msgpack"}})
    );
    b.send_msgpack(json!({"type": "join", "id": 3, "room": "mix"}))
        .await;
    assert_eq!(b.recv().await["type"], "joined");
    assert_eq!(j.recv_type("peer-joined").await["peer_id"], "b");
    let pj = m.recv_frame().await;
    assert!(pj.binary);
    assert_eq!(pj.msg["peer_id"], "b");

    // Broadcast from JSON reaches both binary clients, payload intact.
    let data = json!({"n": 1, "f": 1.5, "neg": -3, "s": "ünïcödé", "arr": [true, null], "obj": {"k": "v"}});
    j.send_json(json!({"type": "broadcast", "room": "mix", "data": data}))
        .await;
    for c in [&mut m, &mut b] {
        let r = c.recv_frame().await;
        assert!(r.binary);
        assert_eq!(
            r.msg,
            json!({"type": "message", "room": "mix", "from": "j", "data": data})
        );
    }
    // Broadcast from MessagePack reaches the JSON client as JSON text.
    m.send_msgpack(json!({"type": "broadcast", "room": "mix", "data": data}))
        .await;
    let r = j.recv_frame().await;
    assert!(!r.binary);
    assert_eq!(
        r.msg,
        json!({"type": "message", "room": "mix", "from": "m", "data": data})
    );
    assert_eq!(b.recv().await["from"], "m");

    // Signals both ways.
    m.send_msgpack(
        json!({"type": "signal", "id": 10, "to": "j", "kind": "offer", "data": {"sdp": "x"}}),
    )
    .await;
    assert_eq!(m.recv().await, json!({"type": "ack", "id": 10}));
    let s = j.recv_frame().await;
    assert!(!s.binary);
    assert_eq!(
        s.msg,
        json!({"type": "signal", "from": "m", "kind": "offer", "data": {"sdp": "x"}})
    );
    j.send_json(json!({"type": "signal", "to": "b", "kind": "answer", "data": {"sdp": "y"}}))
        .await;
    let s = b.recv_frame().await;
    assert!(s.binary);
    assert_eq!(
        s.msg,
        json!({"type": "signal", "from": "j", "kind": "answer", "data": {"sdp": "y"}})
    );

    j.ping().await;
    m.ping_msgpack().await;
    b.ping_msgpack().await;
}

#[tokio::test]
async fn json_subprotocol_is_accepted() {
    let node = TestNode::spawn(&[]);
    let mut c = Client::connect_with_protocol(&node.ws_url(), JSON).await;
    c.hello("p").await;
    c.ping().await;
}

/// MessagePack can carry what JSON cannot: a `bin` blob arrives at a JSON peer
/// as an array of byte values, and a non-string map key as its text.
#[tokio::test]
async fn msgpack_bin_and_integer_keys_reach_json_peers() {
    let node = TestNode::spawn(&[]);
    let mut j = node.peer("j").await;
    let mut m = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    m.send_msgpack(json!({"type": "hello", "peer_id": "m"}))
        .await;
    m.recv_type("welcome").await;

    // {"type":"signal","id":5,"to":"j","kind":"blob","data":{"b": bin[1,2,255], 7: "seven"}}
    let mut frame = vec![0x85]; // a map of 5 entries
    for (k, v) in [("type", "signal"), ("to", "j"), ("kind", "blob")] {
        frame.push(0xa0 | k.len() as u8);
        frame.extend_from_slice(k.as_bytes());
        frame.push(0xa0 | v.len() as u8);
        frame.extend_from_slice(v.as_bytes());
    }
    frame.extend_from_slice(&[0xa2, b'i', b'd', 0x05]);
    frame.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0x82]);
    frame.extend_from_slice(&[0xa1, b'b', 0xc4, 0x03, 0x01, 0x02, 0xff]);
    frame.extend_from_slice(&[0x07, 0xa5, b's', b'e', b'v', b'e', b'n']);
    m.send_raw_binary(&frame).await;
    assert_eq!(m.recv().await, json!({"type": "ack", "id": 5}));
    assert_eq!(
        j.recv().await,
        json!({"type": "signal", "from": "m", "kind": "blob", "data": {"b": [1, 2, 255], "7": "seven"}})
    );
}
