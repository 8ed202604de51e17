//! The dashboard door (`[doors.dashboard]`, LEGACY-PROTOCOLS.md §3): raw
//! WebSocket clients that send and check frames byte for byte as the old
//! server's browser client does, against real nodes (one on the memory
//! store, or several through a real redis-server).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cluster_helpers::{cluster_env, spawn_cluster, unique_prefix, RedisServer};
use crate::helpers::{http_client, metric, TestNode, TIMEOUT};

const ROOMS: &str = "webrtc-dashboard-rooms";
const KEY: &str = "doors.dashboard.listen";

/// A dashboard browser tab's socket, seen from the wire.
struct Dash {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Dash {
    async fn try_connect(url: &str) -> Result<Dash, tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: no handshake within {TIMEOUT:?}"))?;
        Ok(Dash { ws })
    }

    async fn connect(url: &str) -> Dash {
        Self::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    async fn send(&mut self, text: &str) {
        tokio::time::timeout(TIMEOUT, self.ws.send(Message::text(text.to_string())))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next text frame, within `within` (pings skipped).
    async fn next_within(&mut self, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("nothing received within {within:?}"));
            match next {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn next(&mut self) -> String {
        self.next_within(TIMEOUT).await
    }

    /// The next frame that is not a `client_count` (those come whenever a
    /// socket anywhere opens or closes).
    async fn next_not_count(&mut self) -> String {
        for _ in 0..1_000 {
            let t = self.next().await;
            if ty(&t) != "client_count" {
                return t;
            }
        }
        panic!("only client_count frames");
    }

    /// The next frame of type `want`, skipping at most 1,000 others, within `within`.
    async fn next_of_within(&mut self, want: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        for _ in 0..1_000 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let t = self.next_within(left).await;
            if ty(&t) == want {
                return t;
            }
        }
        panic!("no {want} among 1,000 frames");
    }

    async fn next_of(&mut self, want: &str) -> String {
        self.next_of_within(want, TIMEOUT).await
    }

    /// A `client_count` with `count`, skipping others (counts change as
    /// sockets come and go).
    async fn count_becomes(&mut self, count: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        for _ in 0..1_000 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let t = self.next_within(left).await;
            if ty(&t) == "client_count" && parse(&t)["count"] == count {
                return;
            }
        }
        panic!("client_count never became {count}");
    }

    /// Subscribes and waits until the server has handled it (frames of one
    /// socket are handled in order: the pong comes after).
    async fn subscribe(&mut self, channel: &str) {
        self.send(&json!({"type": "subscribe", "channel": channel}).to_string())
            .await;
        self.sync().await;
    }

    /// Pings and reads up to the pong: whatever else arrives before it is
    /// returned (`client_count` frames left out).
    async fn sync(&mut self) -> Vec<String> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut other = Vec::new();
        for _ in 0..1_000 {
            let t = self.next().await;
            match ty(&t).as_str() {
                "pong" => return other,
                "client_count" => {}
                _ => other.push(t),
            }
        }
        panic!("no pong");
    }

    /// Every text frame for `dur` (a rate is measured over a window).
    async fn collect_for(&mut self, dur: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return got,
                Ok(Some(Ok(Message::Text(t)))) => got.push(t.to_string()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("connection ended while reading: {other:?}"),
            }
        }
    }

    /// Reads until a close frame (bounded); returns its code and reason
    /// and the text frames before it.
    async fn expect_close(&mut self) -> ((u16, String), Vec<String>) {
        let mut before = Vec::new();
        for _ in 0..100_000 {
            match tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("no close within 5 s")
            {
                Some(Ok(Message::Close(Some(f)))) => {
                    return ((u16::from(f.code), f.reason.to_string()), before)
                }
                Some(Ok(Message::Text(t))) => before.push(t.to_string()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
        panic!("no close frame");
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
        let _ = tokio::time::timeout(TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn parse(t: &str) -> Value {
    serde_json::from_str(t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

fn ty(t: &str) -> String {
    parse(t)["type"].as_str().unwrap_or_default().to_string()
}

/// The frame with its `"timestamp":"<ISO 8601, ms, Z>"` replaced by
/// `"timestamp":"T"`, after checking the timestamp's form exactly.
fn no_ts(t: &str) -> String {
    let key = r#""timestamp":""#;
    let at = t.find(key).unwrap_or_else(|| panic!("no timestamp in {t}")) + key.len();
    let ts = &t[at..at + 24];
    let b = ts.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    assert!(
        digits.iter().all(|&i| b[i].is_ascii_digit())
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z'
            && t.as_bytes()[at + 24] == b'"',
        "not an ISO timestamp with ms and Z: {t}"
    );
    format!("{}T{}", &t[..at], &t[at + 24..])
}

fn list_frame(rooms: &str) -> String {
    format!(
        r#"{{"type":"server-room-list","channel":"webrtc-dashboard-rooms","rooms":{rooms},"timestamp":"T"}}"#
    )
}

/// A node with the door on a listener of its own (and `extra` settings).
fn dash_node(extra: &[(&str, &str)]) -> TestNode {
    let mut env = vec![("SWITCHBOARD_DOORS__DASHBOARD__LISTEN", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    TestNode::spawn(&env)
}

fn url(node: &TestNode) -> String {
    format!("ws://{}/ws/", node.door_addr(KEY))
}

/// The frames of the browser client's create flow (LEGACY-PROTOCOLS.md §3.4).
fn created(id: &str, name: &str) -> String {
    format!(
        r#"{{"type":"room-created","data":{{"id":"{id}","name":"{name}","description":"d","host":"Alice","createdAt":"2025-11-21T00:00:00.000Z","status":"active","participantCount":0}},"timestamp":1796644688000,"sender":"tab-x","channel":"webrtc-dashboard-rooms"}}"#
    )
}

fn joined(room: &str, user: &str, name: &str) -> String {
    format!(
        r#"{{"type":"user-joined-room","data":{{"roomId":"{room}","userId":"{user}","userName":"{name}","existingParticipants":[]}},"timestamp":1796644688001,"sender":"tab-x","channel":"webrtc-dashboard-rooms"}}"#
    )
}

fn room_json(id: &str, name: &str, participants: &str) -> String {
    let n = if participants.is_empty() {
        0
    } else {
        participants.matches(r#"{"id""#).count()
    };
    format!(
        r#"{{"id":"{id}","name":"{name}","description":"d","host":"Alice","createdAt":"2025-11-21T00:00:00.000Z","participantCount":{n},"participants":[{participants}]}}"#
    )
}

/// LEGACY-PROTOCOLS.md §3.4, the transcript verified against the old
/// server, byte for byte (timestamps checked for their form).
#[tokio::test]
async fn the_verified_transcript_byte_for_byte() {
    let node = dash_node(&[(
        "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
        "60000",
    )]);
    let url = url(&node);
    let mut a = Dash::connect(&url).await;
    let count1 = r#"{"type":"client_count","count":1,"timestamp":"T"}"#;
    assert_eq!(no_ts(&a.next().await), count1);
    assert_eq!(no_ts(&a.next().await), count1);
    a.subscribe(ROOMS).await;
    let mut b = Dash::connect(&url).await;
    let count2 = r#"{"type":"client_count","count":2,"timestamp":"T"}"#;
    assert_eq!(no_ts(&b.next().await), count2);
    assert_eq!(no_ts(&b.next().await), count2);
    assert_eq!(no_ts(&a.next().await), count2);
    b.subscribe(ROOMS).await;

    a.send(&created("room_1", "R1")).await;
    let list = list_frame(&format!("[{}]", room_json("room_1", "R1", "")));
    assert_eq!(no_ts(&a.next_not_count().await), list);
    assert_eq!(no_ts(&b.next_not_count().await), list);

    let join = joined("room_1", "u1", "Alice");
    a.send(&join).await;
    let list = list_frame(&format!(
        "[{}]",
        room_json("room_1", "R1", r#"{"id":"u1","name":"Alice"}"#)
    ));
    assert_eq!(no_ts(&a.next_not_count().await), list);
    assert_eq!(no_ts(&b.next_not_count().await), list);
    // The relay: byte-identical, to the others only.
    assert_eq!(b.next_not_count().await, join);
    assert_eq!(a.sync().await, Vec::<String>::new());

    a.close().await;
    assert_eq!(no_ts(&b.next_not_count().await), list_frame("[]"));
    b.count_becomes(1).await;

    b.send("hello").await;
    assert_eq!(
        no_ts(&b.next_not_count().await),
        r#"{"type":"echo","original":"hello","timestamp":"T"}"#
    );
}

/// Rules 1 to 3, 9 and 10: no reply to (un)subscribe, pong, echo for what
/// is not JSON (and `null`), silence for other JSON without a channel.
#[tokio::test]
async fn pings_echoes_and_frames_the_old_server_ignored() {
    let node = dash_node(&[]);
    let mut a = Dash::connect(&url(&node)).await;
    a.send(r#"{"type":"ping"}"#).await;
    assert_eq!(
        no_ts(&a.next_not_count().await),
        r#"{"type":"pong","timestamp":"T"}"#
    );
    for text in ["not json", "{\"type\":", "null", "caf\u{e9} \"q\"\n"] {
        a.send(text).await;
        let echo = a.next_not_count().await;
        assert_eq!(
            no_ts(&echo),
            format!(
                r#"{{"type":"echo","original":{},"timestamp":"T"}}"#,
                serde_json::to_string(text).unwrap()
            )
        );
    }
    for ignored in [
        "[1,2]",
        "42",
        r#""text""#,
        r#"{"type":"room-list-request"}"#,
        r#"{"type":"chat","channel":""}"#,
        r#"{"type":"chat","channel":5}"#,
        r#"{"type":"subscribe","channel":"c"}"#,
        r#"{"type":"unsubscribe","channel":"c"}"#,
        r#"{"type":"unsubscribe","channel":"never-subscribed"}"#,
    ] {
        a.send(ignored).await;
    }
    assert_eq!(a.sync().await, Vec::<String>::new());
    // A binary frame is read as text, as the old server did.
    a.ws.send(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await
        .unwrap();
    assert_eq!(ty(&a.next_not_count().await), "pong");
}

/// Rule 8: any frame with a channel goes, byte for byte, to every other
/// subscriber of that channel (subscribed or not, the sender never gets it
/// back); an unsubscribed socket no longer gets it; room types on another
/// channel are relayed, not handled.
#[tokio::test]
async fn frames_are_relayed_byte_for_byte_to_other_subscribers() {
    let node = dash_node(&[]);
    let url = url(&node);
    let (mut a, mut b, mut c) = (
        Dash::connect(&url).await,
        Dash::connect(&url).await,
        Dash::connect(&url).await,
    );
    a.subscribe("webrtc-signaling").await;
    b.subscribe("webrtc-signaling").await;
    c.subscribe("webrtc-dashboard-chat").await;
    // Odd spacing, key order and escapes survive: the frame is not re-serialized.
    let offer = "{ \"type\" : \"webrtc-offer\", \"data\":{\"roomId\":\"r\",\"fromUserId\":\"u1\",\"toUserId\":\"u2\",\"offer\":{\"sdp\":\"v=0\\r\\n\\u00e9\"}},\"timestamp\":1,\"sender\":\"tab-a\",\"channel\":\"webrtc-signaling\"}";
    a.send(offer).await;
    assert_eq!(b.next_not_count().await, offer);
    assert_eq!(a.sync().await, Vec::<String>::new());
    assert_eq!(c.sync().await, Vec::<String>::new());
    // The sender need not be subscribed.
    let from_c = r#"{"type":"webrtc-ice","channel":"webrtc-signaling","sender":"tab-c"}"#;
    c.send(from_c).await;
    assert_eq!(a.next_not_count().await, from_c);
    assert_eq!(b.next_not_count().await, from_c);
    // `room-created` on another channel is just relayed.
    let elsewhere = created("r", "R").replace(ROOMS, "webrtc-signaling");
    b.send(&elsewhere).await;
    assert_eq!(a.next_not_count().await, elsewhere);
    b.send(&json!({"type": "unsubscribe", "channel": "webrtc-signaling"}).to_string())
        .await;
    assert_eq!(b.sync().await, Vec::<String>::new());
    a.send(offer).await;
    assert_eq!(b.sync().await, Vec::<String>::new());
    let (status, health) = get_json(&node, "/health").await;
    assert_eq!((status, &health["rooms"]["total"]), (200, &json!(0)));
}

async fn get_json(node: &TestNode, path: &str) -> (u16, Value) {
    let r = http_client()
        .get(format!("http://{}{path}", node.door_addr(KEY)))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Rules 5 and 6: joining a room that does not exist does nothing at all;
/// leaving relays the frame and removes the participant (the room goes
/// when it empties); `room-list-request` answers the requester only.
#[tokio::test]
async fn joins_leaves_and_list_requests() {
    let node = dash_node(&[(
        "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
        "60000",
    )]);
    let url = url(&node);
    let (mut a, mut b) = (Dash::connect(&url).await, Dash::connect(&url).await);
    a.subscribe(ROOMS).await;
    b.subscribe(ROOMS).await;
    a.send(&joined("nowhere", "u1", "Alice")).await;
    assert_eq!(a.sync().await, Vec::<String>::new());
    assert_eq!(b.sync().await, Vec::<String>::new());

    // Fields at the top level when there is no `data` (`data.data || data`).
    a.send(r#"{"type":"room-created","id":"r1","name":"One","channel":"webrtc-dashboard-rooms"}"#)
        .await;
    let head = r#"{"id":"r1","name":"One","description":"","#;
    let l = a.next_not_count().await;
    assert!(l.contains(head), "{l}");
    b.next_of("server-room-list").await;
    a.send(&joined("r1", "u1", "Alice")).await;
    // u1 is in before b sends: two sockets' frames have no order between
    // them, and the participants are listed in the order they joined.
    let l = a.next_of("server-room-list").await;
    assert!(l.contains(r#"{"id":"u1","name":"Alice"}"#), "{l}");
    b.send(&joined("r1", "u2", "Bob")).await;
    // A second join of u1 keeps its first name.
    b.send(&joined("r1", "u1", "Mallory")).await;
    assert_eq!(b.sync().await.len(), 4, "a list per join, and a's relay");
    b.send(r#"{"type":"room-list-request","channel":"webrtc-dashboard-rooms"}"#)
        .await;
    let l = parse(&b.next_not_count().await);
    assert_eq!(
        l["rooms"][0]["participants"],
        json!([{"id": "u1", "name": "Alice"}, {"id": "u2", "name": "Bob"}])
    );
    assert_eq!(l["rooms"][0]["participantCount"], 2);
    // Only the requester got that list (a saw one per join: u1's above,
    // then u2's and the second u1's).
    let a_saw = a.sync().await;
    assert_eq!(
        a_saw.iter().filter(|t| ty(t) == "server-room-list").count(),
        2,
        "{a_saw:?}"
    );
    let leave = r#"{"type":"user-left-room","data":{"roomId":"r1","userId":"u1"},"sender":"tab-a","channel":"webrtc-dashboard-rooms"}"#;
    a.send(leave).await;
    let l = parse(&a.next_not_count().await);
    assert_eq!(
        l["rooms"][0]["participants"],
        json!([{"id": "u2", "name": "Bob"}])
    );
    b.next_of("server-room-list").await;
    assert_eq!(b.next_not_count().await, leave);
    let leave2 = leave.replace("u1", "u2");
    a.send(&leave2).await;
    assert_eq!(parse(&a.next_not_count().await)["rooms"], json!([]));
}

/// `/ws/` only (a query string is fine): an upgrade at `/ws` or `/` is
/// refused with 400 and a JSON body, as the old server refused it.
#[tokio::test]
async fn the_websocket_is_at_ws_slash_only() {
    let node = dash_node(&[]);
    let addr = node.door_addr(KEY);
    Dash::connect(&format!("ws://{addr}/ws/?v=1&x")).await;
    for path in ["/ws", "/"] {
        match Dash::try_connect(&format!("ws://{addr}{path}")).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{path}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "bad-request", "{path}: {body}");
            }
            Ok(_) => panic!("{path}: upgraded"),
            Err(e) => panic!("{path}: {e}"),
        }
    }
    // Not the old server's static files, nor its `.env`.
    for path in ["/", "/api/env", "/index.html"] {
        let (status, body) = get_json(&node, path).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("not-found")),
            "{path}"
        );
    }
}

/// Under a prefix on the main listener: an upgrade at `{prefix}`,
/// `{prefix}/` or `{prefix}/ws` is refused with 400 and a JSON body saying
/// where the WebSocket is (`{prefix}/` was a 404 once: the nested routes
/// do not match it); a plain GET there is a JSON 404.
#[tokio::test]
async fn under_a_prefix_a_wrong_websocket_path_says_where_it_is() {
    let node = TestNode::spawn(&[("SWITCHBOARD_DOORS__DASHBOARD__PREFIX", "/dashboard")]);
    let main = node.addr();
    Dash::connect(&format!("ws://{main}/dashboard/ws/")).await;
    for path in ["/dashboard/", "/dashboard", "/dashboard/ws"] {
        match Dash::try_connect(&format!("ws://{main}{path}")).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{path}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "bad-request", "{path}: {body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("`/dashboard/ws/`"), "{path}: {body}");
            }
            Ok(_) => panic!("{path}: upgraded"),
            Err(e) => panic!("{path}: {e}"),
        }
    }
    for path in ["/dashboard/", "/dashboard"] {
        let (status, body) = node.get(path).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (404, &json!("not-found")),
            "{path}"
        );
    }
}

/// `/api/config` (CORS `*`, preflight) and `/health` on the door's own
/// listener and under a prefix on the main listener.
#[tokio::test]
async fn config_and_health_on_its_listener_and_under_a_prefix() {
    let node = dash_node(&[("SWITCHBOARD_DOORS__DASHBOARD__PREFIX", "/dashboard")]);
    let own = node.door_addr(KEY);
    let r = http_client()
        .get(format!("http://{own}/api/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        format!(
            r#"{{"WEBSOCKET_URL":"ws://{own}/ws/","NODE_ENV":"production","PORT":{},"STUN_SERVERS":null}}"#,
            own.port()
        )
    );
    let r = http_client()
        .request(reqwest::Method::OPTIONS, format!("http://{own}/api/config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-methods"], "GET, OPTIONS");

    let main = node.addr();
    let (status, cfg) = node.get("/dashboard/api/config").await;
    assert_eq!(status, 200);
    assert_eq!(
        cfg["WEBSOCKET_URL"],
        json!(format!("ws://{main}/dashboard/ws/"))
    );
    // The browser connects where it is told.
    let mut a = Dash::connect(cfg["WEBSOCKET_URL"].as_str().unwrap()).await;
    a.subscribe(ROOMS).await;
    let mut b = Dash::connect(&format!("ws://{own}/ws/")).await;
    b.send(&created("r", "R")).await;
    assert!(a.next_of("server-room-list").await.contains(r#""id":"r""#));
    assert!(matches!(
        Dash::try_connect(&format!("ws://{main}/dashboard/ws")).await,
        Err(tungstenite::Error::Http(r)) if r.status() == 400
    ));

    for (status, health) in [
        node.get("/dashboard/health").await,
        get_json(&node, "/health").await,
    ] {
        assert_eq!(status, 200);
        assert_eq!(health["status"], "ok");
        assert_eq!(health["connected_clients"], 2);
        assert_eq!(health["websocket"]["connected_clients"], 2);
        assert_eq!(health["rooms"]["total"], 1);
        assert_eq!(health["rooms"]["list"][0]["id"], "r");
        assert_eq!(health["rooms"]["list"][0]["participants"], json!([]));
    }
}

/// A configured public URL and STUN servers are what the browser gets.
#[tokio::test]
async fn configured_websocket_url_and_stun_servers() {
    let node = dash_node(&[
        (
            "SWITCHBOARD_DOORS__DASHBOARD__WEBSOCKET_URL",
            "wss://dash.example.org/ws/",
        ),
        (
            "SWITCHBOARD_DOORS__DASHBOARD__STUN_SERVERS",
            "[\"stun:stun.example.org:3478\",\"stun:s2.example.org:3478\"]",
        ),
    ]);
    let (status, cfg) = get_json(&node, "/api/config").await;
    assert_eq!(status, 200);
    assert_eq!(cfg["WEBSOCKET_URL"], "wss://dash.example.org/ws/");
    assert_eq!(
        cfg["STUN_SERVERS"],
        json!([{"urls": "stun:stun.example.org:3478"}, {"urls": "stun:s2.example.org:3478"}])
    );
}

/// The default anonymous policy holds for the door's own listener: on a
/// non-loopback address it is refused without a token (401, JSON), and a
/// JWT admits it; `auth.anonymous = "allow"` opens it.
#[tokio::test]
async fn admission_follows_the_anonymous_policy_of_the_doors_listener() {
    let open = |extra: &[(&'static str, &'static str)]| {
        let mut env = vec![("SWITCHBOARD_DOORS__DASHBOARD__LISTEN", "0.0.0.0:0")];
        env.extend_from_slice(extra);
        TestNode::spawn(&env)
    };
    let loopback_url =
        |node: &TestNode| format!("ws://127.0.0.1:{}/ws/", node.door_addr(KEY).port());
    let node = open(&[]);
    match Dash::try_connect(&loopback_url(&node)).await {
        Err(tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 401);
            let body: Value =
                serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "unauthorized");
        }
        other => panic!("expected 401, got {:?}", other.map(|_| "upgraded")),
    }
    let node = open(&[("SWITCHBOARD_AUTH__ANONYMOUS", "allow")]);
    Dash::connect(&loopback_url(&node)).await;

    let secret = "dashboard-test-secret";
    let node = open(&[("SWITCHBOARD_AUTH__JWT__HS256_SECRET", secret)]);
    assert!(matches!(
        Dash::try_connect(&loopback_url(&node)).await,
        Err(tungstenite::Error::Http(r)) if r.status() == 401
    ));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "dashboard-user", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut a = Dash::connect(&format!("{}?token={token}", loopback_url(&node))).await;
    assert_eq!(ty(&a.next().await), "client_count");
}

/// Bad input: every answer is an error frame with a code (or a close code),
/// and nothing reaches the registry or other sockets.
#[tokio::test]
async fn bad_input_is_bounded_and_answered() {
    let node = dash_node(&[
        ("SWITCHBOARD_DOORS__DASHBOARD__MAX_CHANNELS_PER_SOCKET", "3"),
        ("SWITCHBOARD_DOORS__DASHBOARD__MAX_ROOMS", "2"),
        ("SWITCHBOARD_DOORS__DASHBOARD__MAX_PARTICIPANTS", "2"),
        ("SWITCHBOARD_DOORS__DASHBOARD__MAX_FIELD_BYTES", "40"),
        (
            "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
            "60000",
        ),
    ]);
    let url = url(&node);
    let mut a = Dash::connect(&url).await;
    let error = |t: &str, code: &str| {
        let v = parse(t);
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some(code)),
            "{t}"
        );
        assert!(
            v["message"].is_string() && v.get("channel").is_none(),
            "{t}"
        );
        no_ts(t);
    };
    // Huge subscribe lists: a bound per socket, and channel names bounded.
    for i in 0..3 {
        a.subscribe(&format!("c{i}")).await;
    }
    a.send(r#"{"type":"subscribe","channel":"c3"}"#).await;
    error(&a.next_not_count().await, "too-many-channels");
    a.send(&json!({"type": "subscribe", "channel": "x".repeat(10_000)}).to_string())
        .await;
    error(&a.next_not_count().await, "invalid-message");
    a.send(r#"{"type":"subscribe"}"#).await;
    error(&a.next_not_count().await, "invalid-message");

    // Room fields: strings, bounded; ids required.
    let long = "y".repeat(41);
    for bad in [
        json!({"type": "room-created", "channel": ROOMS, "data": {"id": long}}),
        json!({"type": "room-created", "channel": ROOMS, "data": {"id": "r", "name": {"x": 1}}}),
        json!({"type": "room-created", "channel": ROOMS, "data": {"name": "no id"}}),
        json!({"type": "user-joined-room", "channel": ROOMS, "data": {"roomId": "r"}}),
        json!({"type": "user-left-room", "channel": ROOMS, "data": {"userId": 7}}),
    ] {
        a.send(&bad.to_string()).await;
        error(&a.next_not_count().await, "invalid-message");
    }
    // Rooms and participants are bounded.
    a.send(r#"{"type":"unsubscribe","channel":"c2"}"#).await;
    a.subscribe(ROOMS).await;
    for id in ["r1", "r2"] {
        a.send(&created(id, "R")).await;
        a.next_of("server-room-list").await;
    }
    a.send(&created("r3", "R")).await;
    error(&a.next_not_count().await, "registry-full");
    for u in ["u1", "u2"] {
        a.send(&joined("r1", u, "U")).await;
        a.next_of("server-room-list").await;
    }
    a.send(&joined("r1", "u3", "U")).await;
    error(&a.next_not_count().await, "room-full");
    let (_, health) = get_json(&node, "/health").await;
    assert_eq!(health["rooms"]["total"], 2);
    assert_eq!(health["rooms"]["list"][0]["participantCount"], 2);

    // A frame over limits.max_frame_bytes closes the socket with 1009.
    let mut big = Dash::connect(&url).await;
    let huge = format!(
        r#"{{"type":"chat","channel":"c0","data":"{}"}}"#,
        "z".repeat(70_000)
    );
    let _ = big.ws.send(Message::text(huge)).await;
    assert_eq!(big.expect_close().await.0 .0, 1009);
    assert_eq!(a.sync().await, Vec::<String>::new());
}

/// Ids and names with any characters are stored and listed safely, and
/// found again by the same id.
#[tokio::test]
async fn ids_with_any_characters() {
    let node = dash_node(&[(
        "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
        "60000",
    )]);
    let mut a = Dash::connect(&url(&node)).await;
    a.subscribe(ROOMS).await;
    let id = "r:1 \"q\" \\ \n\t\u{1}</script>{}[] é 😀 5:x";
    let user = "u:7:\"\u{0}\"";
    a.send(
        &json!({"type": "room-created", "channel": ROOMS, "data": {"id": id, "name": "\u{2028}", "hostId": "h:1"}})
            .to_string(),
    )
    .await;
    let l = parse(&a.next_not_count().await);
    assert_eq!(l["rooms"][0]["id"], id);
    assert_eq!(l["rooms"][0]["hostId"], "h:1");
    a.send(
        &json!({"type": "user-joined-room", "channel": ROOMS, "data": {"roomId": id, "userId": user}})
            .to_string(),
    )
    .await;
    let l = parse(&a.next_not_count().await);
    assert_eq!(l["rooms"][0]["participants"], json!([{"id": user}]));
    a.send(
        &json!({"type": "user-left-room", "channel": ROOMS, "data": {"roomId": id, "userId": user}})
            .to_string(),
    )
    .await;
    assert_eq!(parse(&a.next_not_count().await)["rooms"], json!([]));
}

/// A socket over its rate gets one `rate-limited` error, its frames are
/// dropped (never relayed), and a flood closes it with 1008; others are
/// untouched.
#[tokio::test]
async fn a_flood_is_rate_limited_then_closed() {
    let node = dash_node(&[
        ("SWITCHBOARD_DOORS__DASHBOARD__MESSAGES_PER_SECOND", "5"),
        ("SWITCHBOARD_DOORS__DASHBOARD__BURST", "20"),
    ]);
    let url = url(&node);
    let mut sub = Dash::connect(&url).await;
    sub.subscribe("chat").await;
    let mut flood = Dash::connect(&url).await;
    let frame = r#"{"type":"msg","channel":"chat","sender":"tab-f"}"#;
    let start = std::time::Instant::now();
    for _ in 0..200 {
        if flood.ws.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
    let ((code, reason), before) = flood.expect_close().await;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!((code, reason.as_str()), (1008, "rate-limited"));
    let errors: Vec<&String> = before.iter().filter(|t| ty(t) == "error").collect();
    assert!(!errors.is_empty() && errors.len() <= 2, "{before:?}");
    assert_eq!(parse(errors[0])["code"], "rate-limited");
    let relayed = sub.sync().await;
    let most = 20 + (5.0 * elapsed).ceil() as usize + 1;
    assert!(
        relayed.len() >= 20 && relayed.len() <= most,
        "{} relayed (at most {most})",
        relayed.len()
    );
    assert!(relayed.iter().all(|t| t == frame));
}

// ---------------------------------------------------------------------------
// Across nodes: a real redis-server, node processes.
// ---------------------------------------------------------------------------

async fn dash_cluster(
    redis: &RedisServer,
    test: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> Vec<TestNode> {
    let mut env = vec![("SWITCHBOARD_DOORS__DASHBOARD__LISTEN", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    let nodes = spawn_cluster(redis, &unique_prefix(test), n, &env).await;
    for node in &nodes {
        node.wait_log_async("dashboard door ready", Duration::from_secs(10))
            .await;
    }
    nodes
}

/// Two dashboards on different nodes see each other's `room-created` in
/// the first list after it, client counts cover both nodes, and relays
/// cross nodes byte for byte.
#[tokio::test]
async fn two_dashboards_on_two_nodes() {
    let redis = RedisServer::start();
    let nodes = dash_cluster(
        &redis,
        "dash-two",
        2,
        &[(
            "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
            "60000",
        )],
    )
    .await;
    let mut a = Dash::connect(&url(&nodes[0])).await;
    a.subscribe(ROOMS).await;
    a.subscribe("webrtc-signaling").await;
    let mut b = Dash::connect(&url(&nodes[1])).await;
    // The count covers both nodes (before anything else is read: the
    // helpers below skip counts).
    b.count_becomes(2).await;
    a.count_becomes(2).await;
    b.subscribe(ROOMS).await;
    b.subscribe("webrtc-signaling").await;

    a.send(&created("room_a", "A")).await;
    let one = list_frame(&format!("[{}]", room_json("room_a", "A", "")));
    assert_eq!(no_ts(&a.next_of("server-room-list").await), one);
    assert_eq!(no_ts(&b.next_of("server-room-list").await), one);
    b.send(&created("room_b", "B")).await;
    let two = list_frame(&format!(
        "[{},{}]",
        room_json("room_a", "A", ""),
        room_json("room_b", "B", "")
    ));
    assert_eq!(no_ts(&b.next_of("server-room-list").await), two);
    assert_eq!(no_ts(&a.next_of("server-room-list").await), two);

    let join = joined("room_a", "ub", "Bob");
    b.send(&join).await;
    let l = b.next_of("server-room-list").await;
    assert_eq!(no_ts(&a.next_of("server-room-list").await), no_ts(&l));
    assert_eq!(a.next_not_count().await, join);
    let offer = r#"{"type":"webrtc-offer","data":{"toUserId":"ub","offer":{"sdp":"v=0\r\n"}},"sender":"tab-a","channel":"webrtc-signaling"}"#;
    a.send(offer).await;
    assert_eq!(b.next_not_count().await, offer);
    assert_eq!(a.sync().await, Vec::<String>::new());

    // The socket that joined closes: it leaves, on every node, and the
    // room it emptied goes.
    b.close().await;
    assert_eq!(
        no_ts(&a.next_of("server-room-list").await),
        list_frame(&format!("[{}]", room_json("room_b", "B", "")))
    );
    a.count_becomes(1).await;
    for node in &nodes {
        let (status, h) = get_json(node, "/health").await;
        assert_eq!(status, 200);
        assert_eq!(
            (
                h["connected_clients"].as_u64(),
                h["rooms"]["total"].as_u64()
            ),
            (Some(1), Some(1))
        );
    }
}

/// The periodic list reaches each subscriber once per period, whatever the
/// number of nodes (not once per node), and only while rooms exist.
#[tokio::test]
async fn the_periodic_list_reaches_each_subscriber_once_per_period() {
    let redis = RedisServer::start();
    let nodes = dash_cluster(
        &redis,
        "dash-periodic",
        3,
        &[("SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS", "500")],
    )
    .await;
    let mut subs = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut d = Dash::connect(&url(node)).await;
            d.subscribe(ROOMS).await;
            subs.push(d);
        }
    }
    // No room: no list at all (nodes that have just started restore their
    // entries, which changes nothing, so they send none either).
    let quiet = subs[0].collect_for(Duration::from_millis(1_200)).await;
    assert!(quiet.iter().all(|t| ty(t) == "client_count"), "{quiet:?}");
    for node in &nodes {
        let periodic = r#"switchboard_dashboard_room_lists_total{trigger="periodic"}"#;
        assert_eq!(metric(node, periodic).await, 0.0);
    }

    subs[0].send(&created("r", "R")).await;
    for d in subs.iter_mut() {
        d.next_of("server-room-list").await;
    }
    let window = Duration::from_millis(3_000);
    let got = futures_util::future::join_all(subs.iter_mut().map(|d| d.collect_for(window))).await;
    for (i, frames) in got.iter().enumerate() {
        let lists = frames
            .iter()
            .filter(|t| ty(t) == "server-room-list")
            .count();
        // 3 s / 500 ms = 6 periods; once per node per period would be 18.
        // The bounds tell the two apart without timing the ticks: a loaded
        // machine delays some (fewer lists) and may bunch the window's edges.
        assert!(
            (2..=10).contains(&lists),
            "subscriber {i} got {lists} lists"
        );
    }
}

/// A node that dies takes its sockets' participants and count with it:
/// the survivors' subscribers get the list without them.
#[tokio::test]
async fn a_dead_nodes_participants_and_count_are_removed() {
    let redis = RedisServer::start();
    let nodes = dash_cluster(
        &redis,
        "dash-death",
        2,
        &[(
            "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
            "60000",
        )],
    )
    .await;
    let mut watcher = Dash::connect(&url(&nodes[0])).await;
    watcher.subscribe(ROOMS).await;
    watcher.send(&created("survives", "S")).await;
    watcher.send(&joined("survives", "w", "Watcher")).await;
    let mut doomed = Dash::connect(&url(&nodes[1])).await;
    doomed.subscribe(ROOMS).await;
    doomed.send(&created("doomed", "D")).await;
    doomed.send(&joined("doomed", "d1", "D1")).await;
    doomed.send(&joined("survives", "d2", "D2")).await;
    doomed.sync().await;
    watcher.count_becomes(2).await;
    // The lists of the watcher's own changes (one room, before "doomed"
    // existed) are all before this pong: none can be mistaken below for the
    // list after the death.
    watcher.sync().await;
    let (_, h) = get_json(&nodes[0], "/health").await;
    assert_eq!(h["rooms"]["total"], 2, "{h}");

    nodes[1].sigkill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rooms = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let l = parse(&watcher.next_of_within("server-room-list", left).await);
        if l["rooms"].as_array().unwrap().len() == 1 {
            break l["rooms"].clone();
        }
    };
    assert_eq!(
        rooms[0]["participants"],
        json!([{"id": "w", "name": "Watcher"}])
    );
    watcher.count_becomes(1).await;
    let (_, h) = get_json(&nodes[0], "/health").await;
    assert_eq!(
        (
            h["connected_clients"].as_u64(),
            h["rooms"]["total"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

/// Redis restarts empty: every node writes its count and its sockets'
/// participants again (the rooms themselves are gone, as the old server's
/// restart forgot them), tells its subscribers the list it finds, and later
/// changes reach every node again.
#[tokio::test]
async fn after_redis_loses_everything_counts_return_and_changes_flow() {
    let mut redis = RedisServer::start();
    let nodes = dash_cluster(
        &redis,
        "dash-restart",
        2,
        &[(
            "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS",
            "60000",
        )],
    )
    .await;
    let mut a = Dash::connect(&url(&nodes[0])).await;
    a.subscribe(ROOMS).await;
    let mut b = Dash::connect(&url(&nodes[1])).await;
    b.subscribe(ROOMS).await;
    a.send(&created("before", "B")).await;
    assert!(b
        .next_of("server-room-list")
        .await
        .contains(r#""id":"before""#));

    redis.stop();
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if parse(&b.next_of_within("server-room-list", left).await)["rooms"] == json!([]) {
            break;
        }
    }
    // The counts come back with the re-registration (bounded poll: no event
    // tells the test when the second node has written its count).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, h) = get_json(&nodes[0], "/health").await;
        if status == 200 && h["connected_clients"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "count not restored: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.send(&created("after", "A")).await;
    // (Lists the re-registrations sent may still be on their way.)
    let mut l = Value::Null;
    for _ in 0..10 {
        l = parse(&b.next_of("server-room-list").await);
        if l["rooms"] != json!([]) {
            break;
        }
    }
    let ids: Vec<&str> = l["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["after"]);
}

/// A node that starts (and restores its entries) while subscribers wait on
/// another node sends them no list: nothing changed, and the old server
/// sent a list only on a change, a request, disconnect cleanup or its
/// timer, never on subscribe (LEGACY-PROTOCOLS.md §3.2, rule 1). The first
/// list the subscriber sees is the one of the next change.
#[tokio::test]
async fn a_node_starting_sends_no_empty_list() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("dash-start");
    let period = (
        "SWITCHBOARD_DOORS__DASHBOARD__ROOM_LIST_INTERVAL_MS".to_string(),
        "60000".to_string(),
    );
    let door = (
        "SWITCHBOARD_DOORS__DASHBOARD__LISTEN".to_string(),
        "127.0.0.1:0".to_string(),
    );
    let spawn = |id: &str| {
        let mut env = cluster_env(&redis, &prefix, id);
        env.extend([period.clone(), door.clone()]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestNode::spawn(&env)
    };
    let first = spawn("node-1");
    first
        .wait_log_async("dashboard door ready", Duration::from_secs(10))
        .await;
    let mut watcher = Dash::connect(&url(&first)).await;
    watcher.subscribe(ROOMS).await;

    let second = spawn("node-2");
    // Logged once its entries are restored (and the list, had it been
    // sent, published).
    second
        .wait_log_async("dashboard door ready", Duration::from_secs(10))
        .await;
    let mut maker = Dash::connect(&url(&second)).await;
    maker.send(&created("after", "A")).await;
    let first_list = watcher.next_of("server-room-list").await;
    assert!(
        first_list.contains(r#""id":"after""#),
        "a list before the change: {first_list}"
    );
}
