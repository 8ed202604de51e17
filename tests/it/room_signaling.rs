//! The room signaling server's door (docs/DOORS.md): its clients' HTTP
//! calls and WebSocket frames, byte for byte as the old server (Python
//! `json.dumps` on the WebSocket, FastAPI on HTTP), against real node
//! processes, and a real redis-server where it crosses nodes.
//!
//! The frames the tests send are written as the sleap-RTC clients write
//! them (`json.dumps`: `", "` and `": "` separators).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster_helpers::{spawn_cluster, unique_prefix, RedisServer};
use crate::helpers::{http_client, metric, Client, Ending, TestNode};

const SECRET: &str = "room-signaling-test-secret";

/// The environment of a node serving the door on listeners of its own,
/// with sign-in on.
fn door_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
        ("SWITCHBOARD_AUTH__SIGNIN__ENABLED", "true"),
        ("SWITCHBOARD_AUTH__SIGNIN__RATE_PER_MINUTE", "0"),
        (
            "SWITCHBOARD_DOORS__ROOM_SIGNALING__HTTP_LISTEN",
            "127.0.0.1:0",
        ),
        (
            "SWITCHBOARD_DOORS__ROOM_SIGNALING__WS_LISTEN",
            "127.0.0.1:0",
        ),
    ];
    env.extend_from_slice(extra);
    env
}

/// Where a node serves the door.
#[derive(Clone)]
struct Door {
    /// `http://host:port` plus a prefix, or the HTTP listener.
    http: String,
    /// The WebSocket URL.
    ws: String,
}

fn door(node: &TestNode) -> Door {
    let http: SocketAddr = node.door_addr("doors.room_signaling.http_listen");
    let ws: SocketAddr = node.door_addr("doors.room_signaling.ws_listen");
    Door {
        http: format!("http://{http}"),
        // Any path: the clients use none, or whatever their URL has.
        ws: format!("ws://{ws}"),
    }
}

async fn post(url: String, auth: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut req = http_client().post(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `POST /anonymous-signin` → (id_token, username).
async fn sign_in(d: &Door) -> (String, String) {
    let (status, body) = post(format!("{}/anonymous-signin", d.http), None, None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    // FastAPI's order and compact form.
    let (t, u) = (
        v["id_token"].as_str().unwrap(),
        v["username"].as_str().unwrap(),
    );
    assert_eq!(body, format!(r#"{{"id_token":"{t}","username":"{u}"}}"#));
    (t.to_string(), u.to_string())
}

/// `POST /create-room` → (room_id, token).
async fn create_room(d: &Door, id_token: &str) -> (String, String) {
    let (status, body) = post(
        format!("{}/create-room", d.http),
        Some(&format!("Bearer {id_token}")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let (r, t) = (v["room_id"].as_str().unwrap(), v["token"].as_str().unwrap());
    assert_eq!(body, format!(r#"{{"room_id":"{r}","token":"{t}"}}"#));
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(hex(r, 8) && hex(t, 6), "{body}");
    (r.to_string(), t.to_string())
}

fn register_frame(peer: &str, room: &str, token: &str, id_token: &str) -> String {
    format!(
        r#"{{"type": "register", "peer_id": "{peer}", "room_id": "{room}", "token": "{token}", "id_token": "{id_token}"}}"#
    )
}

fn registered_auth(peer: &str, room: &str, token: &str) -> String {
    format!(
        r#"{{"type": "registered_auth", "room_id": "{room}", "token": "{token}", "peer_id": "{peer}"}}"#
    )
}

/// A signed-in peer registered in a room.
struct Peer {
    id: String,
    id_token: String,
    ws: Client,
}

/// Signs in at `d`, connects and registers into `room`; checks the answer.
async fn join(d: &Door, room: &str, token: &str) -> Peer {
    let (id_token, id) = sign_in(d).await;
    let mut ws = Client::connect(&d.ws).await;
    ws.send_raw_text(&register_frame(&id, room, token, &id_token))
        .await;
    assert_eq!(ws.recv_text().await, registered_auth(&id, room, token));
    Peer { id, id_token, ws }
}

/// Members of a room as the operator API lists them (cluster-wide).
async fn members(node: &TestNode, room: &str) -> Vec<String> {
    let (status, v) = node.get(&format!("/api/rooms/{room}")).await;
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{v}");
    let mut m: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peer_id"].as_str().unwrap().to_string())
        .collect();
    m.sort();
    m
}

/// Polls until `room`'s members are `want` (bounded).
async fn wait_members(node: &TestNode, room: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = members(node, room).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "members of {room}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_peers_on_different_nodes_exchange_offer_answer_and_candidates() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("room_signaling_cross");
    let nodes = spawn_cluster(&redis, &prefix, 2, &door_env(&[])).await;
    let (a, b) = (door(&nodes[0]), door(&nodes[1]));

    // The worker: signs in and creates a room on node 1, registers there.
    let (w_token, w_id) = sign_in(&a).await;
    let (room, token) = create_room(&a, &w_token).await;
    let mut worker = Client::connect(&format!("{}/any/path", a.ws)).await;
    worker
        .send_raw_text(&register_frame(&w_id, &room, &token, &w_token))
        .await;
    assert_eq!(
        worker.recv_text().await,
        registered_auth(&w_id, &room, &token)
    );

    // The client: signs in on node 2, registers into the worker's room and
    // sends its offer at once, without waiting for `registered_auth`.
    let (c_token, c_id) = sign_in(&b).await;
    let mut client = Client::connect(&b.ws).await;
    let offer = format!(
        "{{\"type\": \"offer\", \"sender\": \"{c_id}\", \"target\": \"{w_id}\", \"sdp\": \"v=0\\r\\ns=Zoë 😀\\r\\n\", \"x-extra\": {{\"b\": 1.0, \"a\": [1e16, null]}}}}"
    );
    client
        .send_raw_text(&register_frame(&c_id, &room, &token, &c_token))
        .await;
    client.send_raw_text(&offer).await;
    assert_eq!(
        client.recv_text().await,
        registered_auth(&c_id, &room, &token)
    );
    // The whole frame, written again as Python writes it: key order and
    // extra keys kept, non-ASCII escaped, floats as repr.
    assert_eq!(
        worker.recv_text().await,
        format!(
            "{{\"type\": \"offer\", \"sender\": \"{c_id}\", \"target\": \"{w_id}\", \"sdp\": \"v=0\\r\\ns=Zo\\u00eb \\ud83d\\ude00\\r\\n\", \"x-extra\": {{\"b\": 1.0, \"a\": [1e+16, null]}}}}"
        )
    );

    let answer = format!(
        r#"{{"type": "answer", "sender": "{w_id}", "target": "{c_id}", "sdp": "v=0\r\na=answer\r\n"}}"#
    );
    worker.send_raw_text(&answer).await;
    assert_eq!(client.recv_text().await, answer);

    // Trickled candidates both ways, in order.
    let candidate = |sender: &str, target: &str, i: usize| {
        format!(
            r#"{{"type": "candidate", "sender": "{sender}", "target": "{target}", "candidate": {{"candidate": "candidate:{i} 1 UDP 2122252543 192.0.2.1 5000{i} typ host", "sdpMid": "0", "sdpMLineIndex": 0}}}}"#
        )
    };
    for i in 0..3 {
        let from_client = candidate(&c_id, &w_id, i);
        client.send_raw_text(&from_client).await;
        let from_worker = candidate(&w_id, &c_id, i);
        worker.send_raw_text(&from_worker).await;
        assert_eq!(worker.recv_text().await, from_client);
        assert_eq!(client.recv_text().await, from_worker);
    }
    // Both are members of the room, cluster-wide.
    wait_members(&nodes[0], &room, &[&w_id, &c_id]).await;
}

#[tokio::test]
async fn register_errors_are_the_old_frames_and_the_socket_stays_open() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let (w_token, w_id) = sign_in(&d).await;
    let (room, token) = create_room(&d, &w_token).await;
    let mut ws = Client::connect(&d.ws).await;
    let reason = |r: &str| format!(r#"{{"type": "error", "reason": "{r}"}}"#);
    let missing = reason("Missing required fields during registration.");

    // Each field missing, or falsy as Python sees it.
    for frame in [
        format!(
            r#"{{"type": "register", "room_id": "{room}", "token": "{token}", "id_token": "{w_token}"}}"#
        ),
        format!(
            r#"{{"type": "register", "peer_id": "{w_id}", "token": "{token}", "id_token": "{w_token}"}}"#
        ),
        format!(
            r#"{{"type": "register", "peer_id": "{w_id}", "room_id": "{room}", "id_token": "{w_token}"}}"#
        ),
        format!(
            r#"{{"type": "register", "peer_id": "{w_id}", "room_id": "{room}", "token": "{token}"}}"#
        ),
        register_frame(&w_id, &room, "", &w_token),
        format!(
            r#"{{"type": "register", "peer_id": "{w_id}", "room_id": "{room}", "token": "{token}", "id_token": null}}"#
        ),
    ] {
        ws.send_raw_text(&frame).await;
        assert_eq!(ws.recv_text().await, missing, "{frame}");
    }

    // A bad id_token: no `type`. Forged (another key), not a JWT, or valid
    // but for another peer id (any valid id_token registered any peer id
    // before).
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": w_id, "exp": 4_000_000_000u64, "iss": "switchboard"}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let (other_token, _) = sign_in(&d).await;
    for id_token in [forged.as_str(), "garbage", other_token.as_str()] {
        ws.send_raw_text(&register_frame(&w_id, &room, &token, id_token))
            .await;
        assert_eq!(ws.recv_text().await, r#"{"error": "Invalid token"}"#);
    }

    ws.send_raw_text(&register_frame(&w_id, "0badf00d", &token, &w_token))
        .await;
    assert_eq!(ws.recv_text().await, reason("Room not found"));
    ws.send_raw_text(&register_frame(&w_id, &room, "ffffff", &w_token))
        .await;
    assert_eq!(ws.recv_text().await, reason("Invalid token"));
    // Nothing was joined by any of these.
    assert!(members(&node, &room).await.is_empty());

    // The same socket registers once everything is right.
    ws.send_raw_text(&register_frame(&w_id, &room, &token, &w_token))
        .await;
    assert_eq!(ws.recv_text().await, registered_auth(&w_id, &room, &token));
    assert_eq!(members(&node, &room).await, vec![w_id.clone()]);
    let m = |o: &str| format!("switchboard_room_signaling_registers_total{{outcome=\"{o}\"}}");
    assert_eq!(metric(&node, &m("missing-fields")).await, 6.0);
    assert_eq!(metric(&node, &m("invalid-id-token")).await, 3.0);
    assert_eq!(metric(&node, &m("room-not-found")).await, 1.0);
    assert_eq!(metric(&node, &m("invalid-token")).await, 1.0);
    assert_eq!(metric(&node, &m("registered")).await, 1.0);
}

#[tokio::test]
async fn a_register_into_an_expired_room_is_refused_and_joins_nothing() {
    // The sweeper looks only at start and after a minute: the room is
    // expired but not yet removed when the late peer registers.
    let node = TestNode::spawn(&door_env(&[
        ("SWITCHBOARD_DOORS__ROOM_SIGNALING__ROOM_TTL_S", "1"),
        ("SWITCHBOARD_ROOMS__SWEEP_INTERVAL_MS", "60000"),
    ]));
    let d = door(&node);
    let (w_token, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &w_token).await;
    let early = join(&d, &room, &token).await;
    // The lifetime itself is what is tested: wait it out.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (l_token, l_id) = sign_in(&d).await;
    let mut late = Client::connect(&d.ws).await;
    late.send_raw_text(&register_frame(&l_id, &room, &token, &l_token))
        .await;
    assert_eq!(
        late.recv_text().await,
        r#"{"type": "error", "reason": "Room expired"}"#
    );
    // The operator API says the room's time is over (it is not swept
    // yet); only the peer that registered in time was ever registered, and
    // the late one is not even connected as a peer.
    let (status, body) = node.get(&format!("/api/rooms/{room}")).await;
    assert_eq!(status, 410, "{body}");
    let registered = "switchboard_room_signaling_registers_total{outcome=\"registered\"}";
    assert_eq!(metric(&node, registered).await, 1.0);
    let expired = "switchboard_room_signaling_registers_total{outcome=\"room-expired\"}";
    assert_eq!(metric(&node, expired).await, 1.0);
    drop(early);
    let (status, body) = post(
        format!("{}/delete-peer", d.http),
        None,
        Some(&format!(r#"{{"peer_id": "{l_id}"}}"#)),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"peer not found"}"#)
    );
}

/// A room whose lifetime runs out under its members (the old server let
/// them stay): each, on either node, is told `Room expired` (the error
/// frame its clients log) and its socket is closed (1000 `room-closed`);
/// the room is gone everywhere.
#[tokio::test]
async fn a_room_that_expires_under_its_peers_closes_them_on_every_node() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("room_signaling_expiry");
    let nodes = spawn_cluster(
        &redis,
        &prefix,
        2,
        &door_env(&[
            ("SWITCHBOARD_DOORS__ROOM_SIGNALING__ROOM_TTL_S", "2"),
            ("SWITCHBOARD_ROOMS__SWEEP_INTERVAL_MS", "200"),
        ]),
    )
    .await;
    let (a, b) = (door(&nodes[0]), door(&nodes[1]));
    let (t, _) = sign_in(&a).await;
    let (room, token) = create_room(&a, &t).await;
    let mut peers = vec![join(&a, &room, &token).await, join(&b, &room, &token).await];
    wait_members(&nodes[0], &room, &[&peers[0].id, &peers[1].id]).await;
    for p in &mut peers {
        // Waits for the expiry itself (2 s) and the sweep after it.
        p.ws.timeout = Duration::from_secs(15);
        assert_eq!(
            p.ws.recv_text().await,
            r#"{"type": "error", "reason": "Room expired"}"#,
            "{}",
            p.id
        );
        let (ending, skipped) = p.ws.expect_end(Duration::from_secs(10)).await;
        assert_eq!(
            (ending, skipped),
            (Ending::Close(1000, "room-closed".into()), 0),
            "{}",
            p.id
        );
    }
    for node in &nodes {
        assert_eq!(members(node, &room).await, Vec::<String>::new());
        let (status, _) = node.get(&format!("/api/rooms/{room}")).await;
        assert_eq!(status, 404);
    }
    // Registering into it now finds no room.
    let (t2, id2) = sign_in(&b).await;
    let mut late = Client::connect(&b.ws).await;
    late.send_raw_text(&register_frame(&id2, &room, &token, &t2))
        .await;
    assert_eq!(
        late.recv_text().await,
        r#"{"type": "error", "reason": "Room not found"}"#
    );
}

#[tokio::test]
async fn spoofed_senders_and_targets_outside_the_room_are_not_forwarded() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let (t1, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &t1).await;
    let (room2, token2) = create_room(&d, &t1).await;
    let mut w = join(&d, &room, &token).await;
    let mut c = join(&d, &room, &token).await;
    let x = join(&d, &room2, &token2).await;
    let frame = |sender: &str, target: &str, sdp: &str| {
        format!(
            r#"{{"type": "offer", "sender": "{sender}", "target": "{target}", "sdp": "{sdp}"}}"#
        )
    };
    // C pretends to be X (in another room), then W writing to itself.
    c.ws.send_raw_text(&frame(&x.id, &w.id, "spoofed")).await;
    c.ws.send_raw_text(&frame(&w.id, &w.id, "spoofed")).await;
    // C writes to a peer of another room, and to nobody.
    c.ws.send_raw_text(&frame(&c.id, &x.id, "other-room")).await;
    c.ws.send_raw_text(&frame(&c.id, "nobody", "absent")).await;
    // No sender or target at all.
    c.ws.send_raw_text(r#"{"type": "offer", "sdp": "v=0"}"#)
        .await;
    let good = frame(&c.id, &w.id, "good");
    c.ws.send_raw_text(&good).await;
    // Frames of one sender stay in order: the good one is the first W gets.
    assert_eq!(w.ws.recv_text().await, good);
    // C got no error frame (the old server was silent; its worker exits on
    // any error): the next frame C reads is W's answer.
    let answer = format!(
        r#"{{"type": "answer", "sender": "{}", "target": "{}", "sdp": "a"}}"#,
        w.id, c.id
    );
    w.ws.send_raw_text(&answer).await;
    assert_eq!(c.ws.recv_text().await, answer);
    let dropped = |r: &str| format!("switchboard_room_signaling_dropped_total{{reason=\"{r}\"}}");
    assert_eq!(metric(&node, &dropped("spoofed-sender")).await, 2.0);
    assert_eq!(metric(&node, &dropped("bad-target")).await, 2.0);
    assert_eq!(metric(&node, &dropped("invalid")).await, 1.0);
    drop(x);
}

#[tokio::test]
async fn a_peer_that_disconnects_leaves_the_room() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let (t, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &t).await;
    let mut w = join(&d, &room, &token).await;
    let c = join(&d, &room, &token).await;
    let c_id = c.id.clone();
    wait_members(&node, &room, &[&w.id, &c_id]).await;
    c.ws.close().await;
    wait_members(&node, &room, &[&w.id]).await;
    // An offer to it now is not forwarded.
    w.ws.send_raw_text(&format!(
        r#"{{"type": "offer", "sender": "{}", "target": "{c_id}", "sdp": "late"}}"#,
        w.id
    ))
    .await;
    // Once W's frame is handled (the next one it sends is answered), the
    // drop is counted.
    w.ws.send_raw_text(&register_frame(&w.id, &room, &token, &w.id_token))
        .await;
    assert_eq!(
        w.ws.recv_text().await,
        registered_auth(&w.id, &room, &token)
    );
    assert_eq!(
        metric(
            &node,
            "switchboard_room_signaling_dropped_total{reason=\"bad-target\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn registering_again_with_the_same_peer_id_replaces_the_old_socket() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let (t, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &t).await;
    let mut old = join(&d, &room, &token).await;
    let mut new = Client::connect(&d.ws).await;
    new.send_raw_text(&register_frame(&old.id, &room, &token, &old.id_token))
        .await;
    assert_eq!(
        new.recv_text().await,
        registered_auth(&old.id, &room, &token)
    );
    match old.ws.expect_end(Duration::from_secs(10)).await {
        (Ending::Close(code, reason), 0) => assert_eq!((code, reason.as_str()), (4002, "replaced")),
        other => panic!("{other:?}"),
    }
    let mut c = join(&d, &room, &token).await;
    let offer = format!(
        r#"{{"type": "offer", "sender": "{}", "target": "{}", "sdp": "x"}}"#,
        c.id, old.id
    );
    c.ws.send_raw_text(&offer).await;
    assert_eq!(new.recv_text().await, offer);
}

#[tokio::test]
async fn http_errors_have_fastapis_shapes() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let url = |p: &str| format!("{}{p}", d.http);
    assert_eq!(
        post(url("/create-room"), None, None).await,
        (
            422,
            r#"{"detail":[{"type":"missing","loc":["header","authorization"],"msg":"Field required","input":null}]}"#.into()
        )
    );
    assert_eq!(
        post(url("/create-room"), Some("Bearer garbage"), None).await,
        (
            401,
            r#"{"detail":"Token verification failed: token is invalid: not a JWT"}"#.into()
        )
    );
    // A bare token works too (the old server removed every "Bearer ").
    let (t, _) = sign_in(&d).await;
    let (status, body) = post(url("/create-room"), Some(&t), None).await;
    assert_eq!(status, 200, "{body}");

    for path in ["/delete-peers-and-room", "/delete-peer"] {
        assert_eq!(
            post(url(path), None, Some("[1]")).await,
            (
                422,
                r#"{"detail":[{"type":"dict_type","loc":["body"],"msg":"Input should be a valid dictionary","input":[1]}]}"#.into()
            )
        );
        assert_eq!(post(url(path), None, None).await.0, 422);
        assert_eq!(
            post(url(path), None, Some(r#"{"peer_id": "nobody"}"#)).await,
            (200, r#"{"status":"peer not found"}"#.into())
        );
        assert_eq!(
            post(url(path), None, Some(r#"{"room_id": "0badf00d"}"#)).await,
            (200, r#"{"status":"room not found"}"#.into())
        );
    }
    let r = http_client().get(url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "healthy", "{v}");
    assert!(v["timestamp"].as_str().unwrap().starts_with("20"), "{v}");

    // Sign-in off: the old error shape, 503.
    let off = TestNode::spawn(&[
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
        (
            "SWITCHBOARD_DOORS__ROOM_SIGNALING__HTTP_LISTEN",
            "127.0.0.1:0",
        ),
    ]);
    let http = off.door_addr("doors.room_signaling.http_listen");
    let (status, body) = post(format!("http://{http}/anonymous-signin"), None, None).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        r#"{"detail":"Anonymous sign-in failed: sign-in is off on this server (auth.signin.enabled)"}"#
    );
}

#[tokio::test]
async fn sign_in_at_the_door_is_limited_per_address() {
    let node = TestNode::spawn(&door_env(&[
        ("SWITCHBOARD_AUTH__SIGNIN__RATE_PER_MINUTE", "1"),
        ("SWITCHBOARD_AUTH__SIGNIN__BURST", "1"),
    ]));
    let d = door(&node);
    sign_in(&d).await;
    let r = http_client()
        .post(format!("{}/anonymous-signin", d.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("Anonymous sign-in failed: too many sign-ins"),
        "{v}"
    );
    // The native endpoint shares the same allowance.
    let r = http_client()
        .post(node.http("/api/auth/anonymous"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn the_door_under_a_prefix_on_the_main_listener() {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
        ("SWITCHBOARD_AUTH__SIGNIN__ENABLED", "true"),
        ("SWITCHBOARD_DOORS__ROOM_SIGNALING__PREFIX", "/signaling"),
    ]);
    let d = Door {
        http: node.http("/signaling"),
        ws: format!("ws://{}/signaling/ws", node.addr()),
    };
    let (t, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &t).await;
    let mut w = join(&d, &room, &token).await;
    let c = join(&d, &room, &token).await;
    let mut c = c;
    let offer = format!(
        r#"{{"type": "offer", "sender": "{}", "target": "{}", "sdp": "p"}}"#,
        c.id, w.id
    );
    c.ws.send_raw_text(&offer).await;
    assert_eq!(w.ws.recv_text().await, offer);
    // The native WebSocket is still the main listener's `/ws`.
    let mut native = Client::connect(&node.ws_url()).await;
    native
        .hello_with(json!({"type": "hello", "token": t}))
        .await;
}

#[tokio::test]
async fn native_peers_in_the_room_see_door_peers_and_signal_them() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let (t, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &t).await;
    // A native peer (signed in the native way) in the same core room.
    let r = http_client()
        .post(node.http("/api/auth/anonymous"))
        .send()
        .await
        .unwrap();
    let signed: Value = r.json().await.unwrap();
    let mut native = Client::connect(&node.ws_url()).await;
    let welcome = native
        .hello_with(json!({"type": "hello", "token": signed["token"]}))
        .await;
    let n_id = welcome["peer_id"].as_str().unwrap().to_string();
    // The door's rooms have a token: a native joiner shows it too.
    native
        .send_json(json!({"type": "join", "id": 1, "room": room, "token": token}))
        .await;
    assert_eq!(native.recv_type("joined").await["id"], 1);
    let mut w = join(&d, &room, &token).await;
    let joined = native.recv_type("peer-joined").await;
    assert_eq!(joined["peer_id"], w.id.as_str(), "{joined}");
    assert_eq!(joined["meta"]["role"], "peer", "{joined}");

    // Native → door: a signal whose data is the whole frame, written as
    // the native peer wrote it (its key order kept).
    native
        .send_raw_text(&format!(
            r#"{{"type":"signal","to":"{w}","kind":"offer","data":{{"type":"offer","sender":"{n_id}","target":"{w}","sdp":"n"}}}}"#,
            w = w.id
        ))
        .await;
    assert_eq!(
        w.ws.recv_text().await,
        format!(
            r#"{{"type": "offer", "sender": "{n_id}", "target": "{}", "sdp": "n"}}"#,
            w.id
        )
    );
    // Door → native: a signal of kind `answer` with the frame as data.
    w.ws.send_raw_text(&format!(
        r#"{{"type": "answer", "sender": "{}", "target": "{n_id}", "sdp": "w"}}"#,
        w.id
    ))
    .await;
    let s = native.recv_type("signal").await;
    assert_eq!(s["from"], w.id.as_str());
    assert_eq!(s["kind"], "answer");
    assert_eq!(
        s["data"],
        json!({"type": "answer", "sender": w.id, "target": n_id, "sdp": "w"})
    );
    // A native signal whose frame names another sender is not written.
    native
        .send_json(json!({"type": "signal", "to": w.id, "kind": "offer",
            "data": {"type": "offer", "sender": "someone", "target": w.id, "sdp": "x"}}))
        .await;
    native
        .send_json(json!({"type": "signal", "to": w.id, "kind": "offer",
            "data": {"type": "offer", "sender": n_id, "target": w.id, "sdp": "after"}}))
        .await;
    // (serde_json writes the keys sorted.)
    assert_eq!(
        w.ws.recv_text().await,
        format!(
            r#"{{"sdp": "after", "sender": "{n_id}", "target": "{}", "type": "offer"}}"#,
            w.id
        )
    );
}

#[tokio::test]
async fn v2_discover_peers_and_peer_message() {
    let node = TestNode::spawn(&door_env(&[]));
    let d = door(&node);
    let (t, _) = sign_in(&d).await;
    let (room, token) = create_room(&d, &t).await;
    let mut workers = Vec::new();
    for i in 1..=2 {
        let (id_token, id) = sign_in(&d).await;
        let mut ws = Client::connect(&d.ws).await;
        ws.send_raw_text(&format!(
            r#"{{"type": "register", "peer_id": "{id}", "room_id": "{room}", "token": "{token}", "id_token": "{id_token}", "role": "worker", "metadata": {{"tags": ["gpu-{i}"], "properties": {{"mem": {}}}}}}}"#,
            8192 * i
        ))
        .await;
        assert_eq!(ws.recv_text().await, registered_auth(&id, &room, &token));
        workers.push(Peer { id, id_token, ws });
    }
    let mut c = join(&d, &room, &token).await;
    c.ws.send_raw_text(&format!(
        r#"{{"type": "discover_peers", "from_peer_id": "{}", "filters": {{"role": "worker", "properties": {{"mem": {{"$gte": 10000}}}}}}}}"#,
        c.id
    ))
    .await;
    let list = c.ws.recv_text().await;
    let v: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["type"], "peer_list", "{list}");
    assert_eq!(v["count"], 1, "{list}");
    assert_eq!(v["peers"][0]["peer_id"], workers[1].id.as_str(), "{list}");
    assert_eq!(
        v["peers"][0]["metadata"],
        json!({"tags": ["gpu-2"], "properties": {"mem": 16384}})
    );
    assert!(list.starts_with(&format!(
        r#"{{"type": "peer_list", "to_peer_id": "{}", "peers": [{{"peer_id": "{}", "role": "worker", "metadata": "#,
        c.id, workers[1].id
    )), "{list}");

    c.ws.send_raw_text(&format!(
        r#"{{"type": "peer_message", "from_peer_id": "{}", "to_peer_id": "{}", "payload": {{"job": "train", "n": 1.5}}}}"#,
        c.id, workers[0].id
    ))
    .await;
    assert_eq!(
        workers[0].ws.recv_text().await,
        format!(
            r#"{{"type": "peer_message", "from_peer_id": "{}", "to_peer_id": "{}", "payload": {{"job": "train", "n": 1.5}}}}"#,
            c.id, workers[0].id
        )
    );
    // Metadata is bounded as a native `meta` is (limits.max_meta_bytes).
    let (big_token, big_id) = sign_in(&d).await;
    let mut big = Client::connect(&d.ws).await;
    big.send_raw_text(&format!(
        r#"{{"type": "register", "peer_id": "{big_id}", "room_id": "{room}", "token": "{token}", "id_token": "{big_token}", "metadata": {{"blob": "{}"}}}}"#,
        "x".repeat(5000)
    ))
    .await;
    assert_eq!(
        big.recv_text().await,
        r#"{"type": "error", "reason": "Metadata too large"}"#
    );
    c.ws.send_raw_text(&format!(
        r#"{{"type": "update_metadata", "peer_id": "{}", "metadata": {{"blob": "{}"}}}}"#,
        c.id,
        "x".repeat(5000)
    ))
    .await;
    assert_eq!(
        c.ws.recv_text().await,
        r#"{"type": "error", "code": "INVALID_MESSAGE", "message": "metadata must be at most 4096 bytes as JSON"}"#
    );
    c.ws.send_raw_text(&format!(
        r#"{{"type": "update_metadata", "peer_id": "{}", "metadata": {{"tags": ["t"], "properties": {{"k": 1}}}}}}"#,
        c.id
    ))
    .await;
    assert_eq!(
        c.ws.recv_text().await,
        format!(
            r#"{{"type": "metadata_updated", "peer_id": "{}", "metadata": {{"properties": {{"k": 1}}, "tags": ["t"]}}}}"#,
            c.id
        )
    );
    // Not registered: v2's error shape.
    let mut stranger = Client::connect(&d.ws).await;
    stranger
        .send_raw_text(r#"{"type": "discover_peers", "from_peer_id": "x"}"#)
        .await;
    assert_eq!(
        stranger.recv_text().await,
        r#"{"type": "error", "code": "NOT_IN_ROOM", "message": "Peer is not registered in a room"}"#
    );
}
