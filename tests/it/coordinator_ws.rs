//! The game coordinator's signaling WebSocket (LEGACY-PROTOCOLS.md §1.5,
//! docs/DOORS.md "Coordinator signaling") and `POST /api/publish`, against
//! real node processes: frames compared byte for byte with the old
//! service's (timestamps apart), and a real redis-server where it crosses
//! nodes.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

use crate::cluster_helpers::{spawn_cluster, unique_prefix, RedisServer};
use crate::helpers::{http_client, metric, Client, TestNode};

/// The door on the main listener (`[doors.coordinator] on_main`), where
/// these tests reach its signaling socket.
const ON_MAIN: (&str, &str) = ("SWITCHBOARD_DOORS__COORDINATOR__ON_MAIN", "true");

const SECRET: &str = "coordinator-test-secret";

fn url(node: &TestNode, query: &str) -> String {
    format!("ws://{}/api/signaling/ws?{query}", node.addr())
}

fn url_v1(node: &TestNode, query: &str) -> String {
    format!("ws://{}/api/v1/signaling/ws?{query}", node.addr())
}

fn token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "player_id": sub, "type": "access", "iat": now, "exp": now + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The frame with its `timestamp` checked (Python's naive
/// `datetime.utcnow().isoformat()`: no zone, microseconds unless zero) and
/// replaced by `TS`.
fn strip_ts(frame: &str) -> String {
    let key = r#","timestamp":""#;
    let at = frame
        .find(key)
        .unwrap_or_else(|| panic!("no timestamp in {frame}"));
    let rest = &frame[at + key.len()..];
    let end = rest.find('"').expect("closing quote");
    let ts = &rest[..end];
    let ok = ts.len() == 19 || (ts.len() == 26 && ts.as_bytes()[19] == b'.');
    assert!(
        ok && ts.as_bytes()[10] == b'T' && !ts.ends_with('Z') && ts.starts_with("20"),
        "timestamp {ts:?} is not a naive ISO time with microseconds"
    );
    format!("{}{key}TS{}", &frame[..at], &rest[end..])
}

/// Proves that nothing was queued for `c` before now: an unknown type is
/// answered at once, after whatever was already queued.
async fn nothing_pending(c: &mut Client) {
    c.send_raw_text(r#"{"type":"sync"}"#).await;
    assert_eq!(
        c.recv_text().await,
        r#"{"type":"error","message":"Unknown message type: sync"}"#
    );
}

async fn join(c: &mut Client, session: &str) -> String {
    c.send_raw_text(&format!(r#"{{"type":"join","session_id":"{session}"}}"#))
        .await;
    c.recv_text().await
}

#[tokio::test]
async fn the_old_transcript_byte_for_byte() {
    let node = TestNode::spawn(&[ON_MAIN]);
    let mut a = Client::connect(&url(&node, "peer_id=A&session_id=S1")).await;
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"session-joined","session_id":"S1","peers":[]}"#
    );
    let mut b = Client::connect(&url_v1(&node, "peer_id=B")).await;
    nothing_pending(&mut b).await;
    assert_eq!(
        join(&mut b, "S1").await,
        r#"{"type":"session-joined","session_id":"S1","peers":["A"]}"#
    );
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"B"}"#
    );
    a.send_raw_text(r#"{"type":"offer","to":"B","sdp":{"type":"offer","sdp":"v=0\r\n"}}"#)
        .await;
    assert_eq!(
        strip_ts(&b.recv_text().await),
        r#"{"type":"offer","from":"A","sdp":{"type":"offer","sdp":"v=0\r\n"},"timestamp":"TS"}"#
    );
    // No ack to the sender.
    nothing_pending(&mut a).await;
    b.send_raw_text(r#"{"type":"answer","to":"A","sdp":"v=0 answer"}"#)
        .await;
    assert_eq!(
        strip_ts(&a.recv_text().await),
        r#"{"type":"answer","from":"B","sdp":"v=0 answer","timestamp":"TS"}"#
    );
    b.send_raw_text(
        r#"{"type":"ice-candidate","to":"A","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
    )
    .await;
    assert_eq!(
        strip_ts(&a.recv_text().await),
        r#"{"type":"ice-candidate","from":"B","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0},"timestamp":"TS"}"#
    );
    b.send_raw_text(r#"{"type":"leave"}"#).await;
    assert_eq!(
        b.recv_text().await,
        r#"{"type":"session-left","session_id":"S1"}"#
    );
    assert_eq!(a.recv_text().await, r#"{"type":"peer-left","peer_id":"B"}"#);
    // Not in a session: no reply at all.
    b.send_raw_text(r#"{"type":"leave"}"#).await;
    nothing_pending(&mut b).await;
    // A disconnect is a leave without the reply.
    b.send_raw_text(r#"{"type":"join","session_id":"S1"}"#)
        .await;
    assert_eq!(
        b.recv_text().await,
        r#"{"type":"session-joined","session_id":"S1","peers":["A"]}"#
    );
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"B"}"#
    );
    b.close().await;
    assert_eq!(a.recv_text().await, r#"{"type":"peer-left","peer_id":"B"}"#);
}

#[tokio::test]
async fn the_handshake_needs_a_peer_id() {
    let node = TestNode::spawn(&[ON_MAIN]);
    for q in ["", "session_id=S1", "peer_id="] {
        for u in [url(&node, q), url_v1(&node, q)] {
            match Client::try_connect(&u, None).await {
                Err(tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status().as_u16(), 403, "{u}");
                }
                Err(e) => panic!("{u}: {e}"),
                Ok(_) => panic!("{u}: accepted without a peer id"),
            }
        }
    }
    // A plain GET of the path: 404, as before.
    let r = http_client()
        .get(node.http("/api/signaling/ws?peer_id=A"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        metric(
            &node,
            r#"switchboard_connections_refused_total{reason="no-peer-id"}"#
        )
        .await,
        6.0
    );
}

#[tokio::test]
async fn tokens_are_checked_and_a_bad_one_closes_with_1008() {
    let node = TestNode::spawn(&[ON_MAIN, ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET)]);
    // Present but invalid: accepted, told, closed 1008.
    for bad in ["not-a-jwt".to_string(), token("someone-else")] {
        let mut c = Client::connect(&url_v1(&node, &format!("peer_id=A&token={bad}"))).await;
        assert_eq!(
            c.recv_text().await,
            r#"{"type":"error","message":"Invalid or expired authentication token"}"#
        );
        assert_eq!(
            c.expect_close().await,
            (1008, "Invalid authentication token".to_string())
        );
    }
    // None, where the node admits no anonymous peers (auth.jwt is set).
    let mut c = Client::connect(&url(&node, "peer_id=A&session_id=S")).await;
    assert_eq!(
        c.recv_text().await,
        r#"{"type":"error","message":"Authentication token required"}"#
    );
    assert_eq!(
        c.expect_close().await,
        (1008, "Authentication token required".to_string())
    );
    // A token for the peer id: in, and the session joined.
    let mut c = Client::connect(&url_v1(
        &node,
        &format!("peer_id=A&session_id=S&token={}", token("A")),
    ))
    .await;
    assert_eq!(
        c.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":[]}"#
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_usable() {
    let node = TestNode::spawn(&[ON_MAIN]);
    let mut a = Client::connect(&url(&node, "peer_id=A")).await;
    let cases: [(&str, &str); 12] = [
        ("{not json", "Invalid JSON"),
        ("[1,2]", "Invalid message: expected a JSON object"),
        ("\"join\"", "Invalid message: expected a JSON object"),
        ("null", "Invalid message: expected a JSON object"),
        (r#"{"session_id":"S"}"#, "Unknown message type: None"),
        (r#"{"type":5}"#, "Unknown message type: 5"),
        (r#"{"type":"join"}"#, "session_id required"),
        (r#"{"type":"join","session_id":""}"#, "session_id required"),
        (r#"{"type":"offer","to":"B"}"#, "to and sdp required"),
        (r#"{"type":"answer","sdp":"x"}"#, "to and sdp required"),
        (
            r#"{"type":"ice-candidate","to":"B"}"#,
            "to and candidate required",
        ),
        (
            r#"{"type":"offer","to":"nobody","sdp":"x"}"#,
            "Failed to deliver offer to nobody",
        ),
    ];
    for (frame, message) in cases {
        a.send_raw_text(frame).await;
        assert_eq!(
            a.recv_text().await,
            format!(r#"{{"type":"error","message":"{message}"}}"#),
            "{frame}"
        );
    }
    a.send_raw_binary(b"\x01\x02").await;
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"error","message":"Invalid message: binary frames are not supported, send JSON text"}"#
    );
    // An undeliverable candidate is dropped, as before.
    a.send_raw_text(r#"{"type":"ice-candidate","to":"nobody","candidate":{"candidate":"c"}}"#)
        .await;
    nothing_pending(&mut a).await;
    // Still usable, and still reachable: the handler did not die.
    assert_eq!(
        join(&mut a, "S").await,
        r#"{"type":"session-joined","session_id":"S","peers":[]}"#
    );
    let mut b = Client::connect(&url(&node, "peer_id=B&session_id=S")).await;
    assert_eq!(
        b.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":["A"]}"#
    );
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"B"}"#
    );
    b.send_raw_text(r#"{"type":"offer","to":"A","sdp":"v=0"}"#)
        .await;
    assert_eq!(
        strip_ts(&a.recv_text().await),
        r#"{"type":"offer","from":"B","sdp":"v=0","timestamp":"TS"}"#
    );
}

#[tokio::test]
async fn rejoins_and_several_sessions_keep_the_old_quirks() {
    let node = TestNode::spawn(&[ON_MAIN]);
    // WARP generation A: the query's session, then a `join` of it again.
    let mut a = Client::connect(&url(&node, "peer_id=A&session_id=S1")).await;
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"session-joined","session_id":"S1","peers":[]}"#
    );
    assert_eq!(
        join(&mut a, "S1").await,
        r#"{"type":"session-joined","session_id":"S1","peers":["A"]}"#
    );
    // S2 does not leave S1: a later joiner of S1 sees A.
    assert_eq!(
        join(&mut a, "S2").await,
        r#"{"type":"session-joined","session_id":"S2","peers":[]}"#
    );
    let mut c = Client::connect(&url(&node, "peer_id=C&session_id=S1")).await;
    assert_eq!(
        c.recv_text().await,
        r#"{"type":"session-joined","session_id":"S1","peers":["A"]}"#
    );
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"C"}"#
    );
    // `leave` acts on the current session, S2: S1's members hear nothing.
    a.send_raw_text(r#"{"type":"leave"}"#).await;
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"session-left","session_id":"S2"}"#
    );
    nothing_pending(&mut c).await;
    // A disconnect leaves every session (the old one left S1's member set stale).
    a.close().await;
    assert_eq!(c.recv_text().await, r#"{"type":"peer-left","peer_id":"A"}"#);
}

#[tokio::test]
async fn signals_reach_only_peers_of_a_shared_session_unless_configured() {
    for (shared_only, delivered) in [("true", false), ("false", true)] {
        let node = TestNode::spawn(&[
            ON_MAIN,
            (
                "SWITCHBOARD_DOORS__COORDINATOR__SHARED_SESSION_ONLY",
                shared_only,
            ),
        ]);
        let mut a = Client::connect(&url(&node, "peer_id=A&session_id=S1")).await;
        a.recv_text().await;
        let mut b = Client::connect(&url(&node, "peer_id=B&session_id=S2")).await;
        b.recv_text().await;
        a.send_raw_text(r#"{"type":"offer","to":"B","sdp":"v=0"}"#)
            .await;
        a.send_raw_text(r#"{"type":"ice-candidate","to":"B","candidate":"c"}"#)
            .await;
        if delivered {
            assert_eq!(
                strip_ts(&b.recv_text().await),
                r#"{"type":"offer","from":"A","sdp":"v=0","timestamp":"TS"}"#
            );
            assert_eq!(
                strip_ts(&b.recv_text().await),
                r#"{"type":"ice-candidate","from":"A","candidate":"c","timestamp":"TS"}"#
            );
        } else {
            // The old text for a peer that is not there; the candidate is dropped.
            assert_eq!(
                a.recv_text().await,
                r#"{"type":"error","message":"Failed to deliver offer to B"}"#
            );
            nothing_pending(&mut a).await;
            nothing_pending(&mut b).await;
            assert_eq!(
                metric(
                    &node,
                    r#"switchboard_coordinator_undelivered_total{reason="other-session"}"#
                )
                .await,
                2.0
            );
        }
    }
}

#[tokio::test]
async fn a_duplicate_peer_id_is_refused_unless_a_token_proves_it() {
    let node = TestNode::spawn(&[ON_MAIN]);
    let mut a = Client::connect(&url(&node, "peer_id=A&session_id=S")).await;
    a.recv_text().await;
    let mut dup = Client::connect(&url(&node, "peer_id=A&session_id=S")).await;
    assert_eq!(
        dup.recv_text().await,
        r#"{"type":"error","message":"Peer ID already connected: A"}"#
    );
    assert_eq!(
        dup.expect_close().await,
        (4009, "peer-id-taken".to_string())
    );
    // The first keeps its id and its routing.
    let mut b = Client::connect(&url(&node, "peer_id=B&session_id=S")).await;
    b.recv_text().await;
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"B"}"#
    );
    b.send_raw_text(r#"{"type":"offer","to":"A","sdp":"v=0"}"#)
        .await;
    assert_eq!(
        strip_ts(&a.recv_text().await),
        r#"{"type":"offer","from":"B","sdp":"v=0","timestamp":"TS"}"#
    );

    // With a token for the id, the newer socket takes it over.
    let node = TestNode::spawn(&[ON_MAIN, ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET)]);
    let q = format!("peer_id=A&session_id=S&token={}", token("A"));
    let mut old = Client::connect(&url(&node, &q)).await;
    old.recv_text().await;
    let mut new = Client::connect(&url(&node, &q)).await;
    assert_eq!(
        new.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":[]}"#
    );
    let (end, _) = old.expect_end(Duration::from_secs(10)).await;
    assert_eq!(
        end,
        crate::helpers::Ending::Close(4002, "replaced".to_string())
    );
    let qb = format!("peer_id=B&session_id=S&token={}", token("B"));
    let mut b = Client::connect(&url(&node, &qb)).await;
    assert_eq!(
        b.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":["A"]}"#
    );
    b.send_raw_text(r#"{"type":"offer","to":"A","sdp":"v=0"}"#)
        .await;
    // The newer socket gets it (the old service's newer socket lost its routing).
    assert_eq!(
        new.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"B"}"#
    );
    assert_eq!(
        strip_ts(&new.recv_text().await),
        r#"{"type":"offer","from":"B","sdp":"v=0","timestamp":"TS"}"#
    );
}

#[tokio::test]
async fn peers_on_different_nodes_join_one_session_and_signal_each_other() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-ws-two-nodes");
    let nodes = spawn_cluster(&redis, &prefix, 2, &[ON_MAIN]).await;
    let mut a = Client::connect(&url(&nodes[0], "peer_id=host-1&session_id=sess-42")).await;
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"session-joined","session_id":"sess-42","peers":[]}"#
    );
    let mut b = Client::connect(&url_v1(&nodes[1], "peer_id=player-7")).await;
    assert_eq!(
        join(&mut b, "sess-42").await,
        r#"{"type":"session-joined","session_id":"sess-42","peers":["host-1"]}"#
    );
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"player-7"}"#
    );
    b.send_raw_text(
        r#"{"type":"offer","to":"host-1","sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}}"#,
    )
    .await;
    assert_eq!(
        strip_ts(&a.recv_text().await),
        r#"{"type":"offer","from":"player-7","sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"},"timestamp":"TS"}"#
    );
    a.send_raw_text(r#"{"type":"answer","to":"player-7","sdp":{"type":"answer","sdp":"v=0\r\n"}}"#)
        .await;
    assert_eq!(
        strip_ts(&b.recv_text().await),
        r#"{"type":"answer","from":"host-1","sdp":{"type":"answer","sdp":"v=0\r\n"},"timestamp":"TS"}"#
    );
    for i in 0..3 {
        a.send_raw_text(&format!(
            r#"{{"type":"ice-candidate","to":"player-7","candidate":{{"candidate":"c{i}","sdpMid":"0","sdpMLineIndex":0}}}}"#
        ))
        .await;
        b.send_raw_text(&format!(
            r#"{{"type":"ice-candidate","to":"host-1","candidate":{{"candidate":"d{i}","sdpMid":"0","sdpMLineIndex":0}}}}"#
        ))
        .await;
    }
    for i in 0..3 {
        assert_eq!(
            strip_ts(&b.recv_text().await),
            format!(
                r#"{{"type":"ice-candidate","from":"host-1","candidate":{{"candidate":"c{i}","sdpMid":"0","sdpMLineIndex":0}},"timestamp":"TS"}}"#
            )
        );
        assert_eq!(
            strip_ts(&a.recv_text().await),
            format!(
                r#"{{"type":"ice-candidate","from":"player-7","candidate":{{"candidate":"d{i}","sdpMid":"0","sdpMLineIndex":0}},"timestamp":"TS"}}"#
            )
        );
    }
    // The membership is cluster-wide: a third peer on node 1 lists both.
    let mut c = Client::connect(&url(&nodes[0], "peer_id=player-8&session_id=sess-42")).await;
    let joined: Value = serde_json::from_str(&c.recv_text().await).unwrap();
    let mut peers: Vec<String> = serde_json::from_value(joined["peers"].clone()).unwrap();
    peers.sort();
    assert_eq!(peers, ["host-1", "player-7"]);
    for x in [&mut a, &mut b] {
        assert_eq!(
            x.recv_text().await,
            r#"{"type":"peer-joined","peer_id":"player-8"}"#
        );
    }
    // A peer on another node leaving is heard here.
    b.send_raw_text(r#"{"type":"leave"}"#).await;
    assert_eq!(
        b.recv_text().await,
        r#"{"type":"session-left","session_id":"sess-42"}"#
    );
    for x in [&mut a, &mut c] {
        assert_eq!(
            x.recv_text().await,
            r#"{"type":"peer-left","peer_id":"player-7"}"#
        );
    }
}

// ---------------------------------------------------------------------------
// POST /api/publish
// ---------------------------------------------------------------------------

const ADMIN: &str = "publish-admin-token";
const KEY: &str = "publish-api-key";

async fn publish(node: &TestNode, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut req = http_client()
        .post(node.http("/api/publish"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A dashboard socket subscribed to `channel` (pings until its pong, so the
/// subscription is in place).
async fn dashboard_subscriber(node: &TestNode, channel: &str) -> Client {
    let mut d = Client::connect(&format!("ws://{}/dashboard/ws/", node.addr())).await;
    d.send_json(json!({"type": "subscribe", "channel": channel}))
        .await;
    d.send_json(json!({"type": "ping"})).await;
    for _ in 0..100 {
        if d.recv().await["type"] == "pong" {
            return d;
        }
    }
    panic!("no pong");
}

/// The next frame of `d` that is not a `client_count`.
async fn next_not_count(d: &mut Client) -> String {
    for _ in 0..100 {
        let t = d.recv_text().await;
        if !t.contains(r#""type":"client_count""#) {
            return t;
        }
    }
    panic!("only client_count frames");
}

#[tokio::test]
async fn publish_reaches_zones_sessions_rooms_and_channels_on_every_node() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-publish");
    let nodes = spawn_cluster(
        &redis,
        &prefix,
        2,
        &[
            ON_MAIN,
            ("SWITCHBOARD_HTTP__ADMIN_TOKEN", ADMIN),
            ("SWITCHBOARD_PUBLISH__API_KEY", KEY),
            ("SWITCHBOARD_DOORS__DASHBOARD__PREFIX", "/dashboard"),
        ],
    )
    .await;
    // Zone hosts on both nodes: one by the query, one by `join-zone`.
    let mut h1 = Client::connect(&url(&nodes[0], "peer_id=h1&zone_id=prontera")).await;
    assert_eq!(
        h1.recv_text().await,
        r#"{"type":"zone-joined","zone_id":"prontera"}"#
    );
    let mut h2 = Client::connect(&url_v1(&nodes[1], "peer_id=h2")).await;
    h2.send_raw_text(r#"{"type":"join-zone","zone_id":"prontera"}"#)
        .await;
    assert_eq!(
        h2.recv_text().await,
        r#"{"type":"zone-joined","zone_id":"prontera"}"#
    );
    // Not in the zone: hears nothing of it.
    let mut other = Client::connect(&url(&nodes[1], "peer_id=x&zone_id=geffen")).await;
    other.recv_text().await;
    let (status, body) = publish(
        &nodes[0],
        &[("x-api-key", KEY)],
        r#"{"zone":"prontera","data":{"npcs":[{"id":1,"x":10}]}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"published": true, "target": "zone", "name": "prontera", "room": "coordinator/zone/prontera", "members": 2})
    );
    for h in [&mut h1, &mut h2] {
        assert_eq!(
            strip_ts(&h.recv_text().await),
            r#"{"type":"broadcast","zone_id":"prontera","data":{"npcs":[{"id":1,"x":10}]},"timestamp":"TS"}"#
        );
    }
    nothing_pending(&mut other).await;

    // A signaling session's members on both nodes.
    let mut s1 = Client::connect(&url(&nodes[0], "peer_id=s1&session_id=sess")).await;
    s1.recv_text().await;
    let mut s2 = Client::connect(&url(&nodes[1], "peer_id=s2&session_id=sess")).await;
    s2.recv_text().await;
    assert_eq!(
        s1.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"s2"}"#
    );
    let (status, body) = publish(
        &nodes[1],
        &[("authorization", &format!("Bearer {ADMIN}"))],
        r#"{"session":"sess","data":"host went offline"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], 2);
    for s in [&mut s1, &mut s2] {
        assert_eq!(
            strip_ts(&s.recv_text().await),
            r#"{"type":"broadcast","session_id":"sess","data":"host went offline","timestamp":"TS"}"#
        );
    }

    // Native room members on both nodes: a `message` from the empty id.
    let mut n1 = Client::connect(&nodes[0].ws_url()).await;
    n1.hello("n1").await;
    n1.join("lobby").await;
    let mut n2 = Client::connect(&nodes[1].ws_url()).await;
    n2.hello("n2").await;
    n2.join("lobby").await;
    n1.recv_type("peer-joined").await;
    let (status, body) = publish(
        &nodes[0],
        &[("x-api-key", KEY)],
        r#"{"room":"lobby","data":{"a":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for n in [&mut n1, &mut n2] {
        assert_eq!(
            n.recv().await,
            json!({"type": "message", "room": "lobby", "from": "", "data": {"a": 1}})
        );
    }

    // Dashboard channel subscribers on both nodes (each node's door
    // listens to the cluster once it says so).
    for n in &nodes {
        n.wait_log_async("dashboard door ready", Duration::from_secs(10))
            .await;
    }
    let mut d1 = dashboard_subscriber(&nodes[0], "world").await;
    let mut d2 = dashboard_subscriber(&nodes[1], "world").await;
    let (status, body) = publish(
        &nodes[1],
        &[("x-api-key", KEY)],
        r#"{"channel":"world","data":[1,2]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"published": true, "target": "channel", "name": "world"})
    );
    for d in [&mut d1, &mut d2] {
        let t = next_not_count(d).await;
        let v: Value = serde_json::from_str(&t).unwrap();
        assert!(
            t.starts_with(r#"{"type":"publish","channel":"world","data":[1,2],"timestamp":""#),
            "{t}"
        );
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn publish_refuses_bad_bodies_and_callers() {
    let node = TestNode::spawn(&[
        ON_MAIN,
        ("SWITCHBOARD_HTTP__ADMIN_TOKEN", ADMIN),
        ("SWITCHBOARD_PUBLISH__API_KEY", KEY),
    ]);
    let ok = r#"{"room":"r","data":1}"#;
    for (headers, status, code) in [
        (vec![], 401, "unauthorized"),
        (vec![("x-api-key", "wrong")], 401, "unauthorized"),
        (vec![("authorization", "Bearer wrong")], 401, "unauthorized"),
    ] {
        let (s, body) = publish(&node, &headers, ok).await;
        assert_eq!(s, status, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], code);
    }
    let key = [("x-api-key", KEY)];
    for bad in [
        "not json",
        "[1]",
        r#"{"data":1}"#,
        r#"{"room":"r"}"#,
        r#"{"room":"r","zone":"z","data":1}"#,
        r#"{"room":"","data":1}"#,
        r#"{"session":7,"data":1}"#,
        // No dashboard door here.
        r#"{"channel":"c","data":1}"#,
    ] {
        let (s, body) = publish(&node, &key, bad).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid-message", "{bad}");
    }
    let (s, body) = publish(&node, &key, ok).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["members"], 0);
    // Without an admin token or key configured: plain loopback only.
    let open = TestNode::spawn(&[ON_MAIN]);
    let (s, _) = publish(&open, &[], ok).await;
    assert_eq!(s, 200);
    let (s, body) = publish(&open, &[("x-forwarded-for", "203.0.113.9")], ok).await;
    assert_eq!(s, 403, "{body}");
}

#[tokio::test]
async fn the_members_of_a_dead_node_leave_its_sessions() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-ws-dead-node");
    let nodes = spawn_cluster(&redis, &prefix, 2, &[ON_MAIN]).await;
    let mut a = Client::connect(&url(&nodes[0], "peer_id=A&session_id=S")).await;
    a.recv_text().await;
    let mut b = Client::connect(&url(&nodes[1], "peer_id=B&session_id=S")).await;
    assert_eq!(
        b.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":["A"]}"#
    );
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"peer-joined","peer_id":"B"}"#
    );
    nodes[1].sigkill();
    // Node TTL 3 s, then the reaper: B is gone from S for the survivors.
    a.timeout = Duration::from_secs(30);
    assert_eq!(a.recv_text().await, r#"{"type":"peer-left","peer_id":"B"}"#);
    a.timeout = crate::helpers::TIMEOUT;
    let mut c = Client::connect(&url(&nodes[0], "peer_id=C&session_id=S")).await;
    assert_eq!(
        c.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":["A"]}"#
    );
    drop(b);
}

#[tokio::test]
async fn native_peers_in_a_session_signal_coordinator_clients() {
    let node = TestNode::spawn(&[ON_MAIN]);
    let mut n = Client::connect(&node.ws_url()).await;
    n.hello("native-1").await;
    n.join("coordinator/session/S").await;
    let mut c = Client::connect(&url(&node, "peer_id=C&session_id=S")).await;
    assert_eq!(
        c.recv_text().await,
        r#"{"type":"session-joined","session_id":"S","peers":["native-1"]}"#
    );
    let joined = n.recv_type("peer-joined").await;
    assert_eq!(joined["peer_id"], "C");
    assert_eq!(joined["room"], "coordinator/session/S");
    // Native → coordinator: a signal whose data is the sdp.
    n.send_raw_text(
        r#"{"type":"signal","to":"C","kind":"offer","data":{"type":"offer","sdp":"v=0"}}"#,
    )
    .await;
    assert_eq!(
        strip_ts(&c.recv_text().await),
        r#"{"type":"offer","from":"native-1","sdp":{"type":"offer","sdp":"v=0"},"timestamp":"TS"}"#
    );
    // Coordinator → native: a signal of the frame's type, data = the value.
    c.send_raw_text(r#"{"type":"ice-candidate","to":"native-1","candidate":{"candidate":"c1"}}"#)
        .await;
    assert_eq!(
        n.recv().await,
        json!({"type": "signal", "from": "C", "kind": "ice-candidate", "data": {"candidate": "c1"}})
    );
    // Other kinds have no frame here.
    n.send_raw_text(r#"{"type":"signal","to":"C","kind":"chat","data":"hi"}"#)
        .await;
    nothing_pending(&mut c).await;
}

/// A tiny HTTP server answering every request with `{"prontera": {"tick": n}}`
/// (n counts the requests); returns its URL.
async fn world_service() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            n += 1;
            let body = format!(r#"{{"prontera":{{"tick":{n}}},"bad\u0001zone":1}}"#);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                // The head only (a GET has no body); bounded.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16_384 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let res = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(res.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/npc-state")
}

/// The `tick` of the next broadcast `c` gets for zone prontera.
async fn next_tick(c: &mut Client) -> u64 {
    let t = strip_ts(&c.recv_text().await);
    let v: Value = serde_json::from_str(&t.replace("\"TS\"", "null")).unwrap();
    assert_eq!(v["type"], "broadcast", "{t}");
    assert_eq!(v["zone_id"], "prontera", "{t}");
    v["data"]["tick"].as_u64().unwrap()
}

#[tokio::test]
async fn a_polled_url_is_published_to_its_zones_by_one_node_at_a_time() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-poll");
    let world = world_service().await;
    let mut nodes = spawn_cluster(
        &redis,
        &prefix,
        2,
        &[
            ON_MAIN,
            ("SWITCHBOARD_PUBLISH__POLL_URL", &world),
            ("SWITCHBOARD_PUBLISH__POLL_INTERVAL_MS", "500"),
        ],
    )
    .await;
    let mut h1 = Client::connect(&url(&nodes[0], "peer_id=h1&zone_id=prontera")).await;
    h1.recv_text().await;
    let mut h2 = Client::connect(&url(&nodes[1], "peer_id=h2&zone_id=prontera")).await;
    h2.recv_text().await;
    // Both hosts, on their two nodes, get the same ticks, in order.
    let first = next_tick(&mut h2).await;
    let mut last = first;
    for _ in 0..3 {
        let t = next_tick(&mut h2).await;
        assert!(t > last, "tick {t} after {last}");
        last = t;
    }
    for _ in 0..100 {
        if next_tick(&mut h1).await == last {
            break;
        }
    }
    // One node polls; the other does not.
    let q = r#"switchboard_publish_polls_total{outcome="published"}"#;
    let polls = [metric(&nodes[0], q).await, metric(&nodes[1], q).await];
    let holder = if polls[0] > 0.0 { 0 } else { 1 };
    assert!(polls[holder] >= 4.0, "{polls:?}");
    assert_eq!(polls[1 - holder], 0.0, "{polls:?}");
    // The zone id with a control character is skipped, counted.
    assert!(
        metric(
            &nodes[holder],
            r#"switchboard_publish_polls_total{outcome="invalid-zone"}"#
        )
        .await
            >= 4.0
    );
    // The poller's node dies: the other takes the lease over and goes on.
    nodes[holder].sigkill();
    let survivor = &mut [&mut h1, &mut h2][1 - holder];
    survivor.timeout = Duration::from_secs(30);
    let mut seen = 0;
    for _ in 0..1_000 {
        if next_tick(survivor).await > last {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    assert_eq!(seen, 2);
    assert!(metric(&nodes[1 - holder], q).await >= 1.0);
    drop(nodes.remove(holder));
}
