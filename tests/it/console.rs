//! The operator console (docs/ADMIN.md): its auth (401 shapes, the login
//! cookie, Bearer, the console off without a token), the admin socket's
//! snapshot, deltas and refusals, and pairing and chat across two node
//! processes clustered through a real redis-server. Real node processes,
//! real WebSocket clients.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster_helpers::{spawn_cluster, unique_prefix, RedisServer};
use crate::helpers::{within, Client, TestNode};

const TOKEN: &str = "console-test-token";

type Inner =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A console socket, and the log entries of the deltas read so far that no
/// [`wait_event`] took yet (frames of other types are read in between).
struct Ws {
    ws: Inner,
    events: Vec<Value>,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Connects a console socket with extra headers; the handshake's error
/// status on refusal.
async fn try_socket(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match within(url, tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(Ws {
            ws,
            events: Vec::new(),
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

async fn socket(node: &TestNode, path: &str) -> Ws {
    let auth = format!("Bearer {TOKEN}");
    try_socket(
        &format!("ws://{}{path}", node.addr()),
        &[("authorization", &auth)],
    )
    .await
    .unwrap_or_else(|s| panic!("{path}: refused with {s}"))
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = within("console frame", ws.ws.next())
            .await
            .expect("socket open")
            .expect("frame");
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("JSON frame");
                if v["type"] == "delta" {
                    ws.events
                        .extend(v["events"].as_array().unwrap().iter().cloned());
                }
                return v;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame of type `ty`, skipping others (bounded: 10 s, 500 frames).
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..500 {
        assert!(Instant::now() < deadline, "no `{ty}` within 10 s");
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
    panic!("no `{ty}` in 500 frames");
}

/// Waits for a delta whose log has an entry of `kind` about `peer`; returns it.
async fn wait_event(ws: &mut Ws, kind: &str, peer: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..500 {
        if let Some(i) = ws
            .events
            .iter()
            .position(|e| e["kind"] == kind && e["peer"] == peer)
        {
            return ws.events.remove(i);
        }
        assert!(
            Instant::now() < deadline,
            "no `{kind}` of {peer} within 10 s"
        );
        next_json(ws).await;
    }
    panic!("no `{kind}` of {peer} in 500 frames");
}

async fn send(ws: &mut Ws, v: Value) {
    ws.ws
        .send(Message::Text(v.to_string().into()))
        .await
        .unwrap();
}

/// A page of workers for `search` (skips deltas).
async fn query(ws: &mut Ws, search: &str) -> Value {
    send(ws, json!({"type": "query", "search": search, "id": "q"})).await;
    loop {
        let v = next_of(ws, "workers").await;
        if v["id"] == "q" {
            return v;
        }
    }
}

async fn legacy(node: &TestNode, id: &str) -> Client {
    Client::connect(&format!("ws://{}/ws/register/{id}", node.addr())).await
}

#[tokio::test]
async fn pages_refuse_without_the_token_and_the_login_cookie_lets_in() {
    let node = TestNode::spawn(&[("SWITCHBOARD_HTTP__ADMIN_TOKEN", TOKEN)]);
    let http = no_redirects();
    // A browser gets the login page with 401; an API call JSON.
    let r = http
        .get(node.http("/admin"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = r.text().await.unwrap();
    assert!(body.contains("<form method=\"post\" action=\"/admin/login\""));
    let r = http.get(node.http("/admin/chat")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    // Bearer, for scripts.
    let r = http
        .get(node.http("/admin"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Switchboard console"));
    let r = http
        .get(node.http("/admin"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The login form: a wrong token is 401 (the form again), a right one a
    // cookie and a redirect to /admin.
    let r = http
        .post(node.http("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = http
        .post(node.http("/admin/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", TOKEN.replace('-', "%2D")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("sb_console=v1."));
    let r = http
        .get(node.http("/admin/chat"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    // A cookie altered in any byte is worthless.
    let mut forged = cookie.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let r = http
        .get(node.http("/admin"))
        .header("cookie", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Sockets: none without the token (401 JSON before the upgrade), one
    // with the cookie; none from a page of another origin.
    let url = format!("ws://{}/ws/admin", node.addr());
    assert_eq!(try_socket(&url, &[]).await.err(), Some(401));
    assert_eq!(
        try_socket(&url, &[("cookie", &forged)]).await.err(),
        Some(401)
    );
    let chat = format!("ws://{}/ws/chat/s1/w1", node.addr());
    assert_eq!(try_socket(&chat, &[]).await.err(), Some(401));
    let evil = [
        ("cookie", cookie.as_str()),
        ("origin", "http://evil.example"),
    ];
    assert_eq!(try_socket(&url, &evil).await.err(), Some(403));
    let host = node.addr().to_string();
    let origin = format!("http://{host}");
    let mut ws = try_socket(&url, &[("cookie", &cookie), ("origin", &origin)])
        .await
        .expect("same-origin socket with the cookie");
    let snap = next_of(&mut ws, "snapshot").await;
    assert_eq!(snap["node"].as_str().map(str::is_empty), Some(false));
}

#[tokio::test]
async fn without_an_admin_token_the_console_is_off_unless_loopback_is_allowed() {
    let off = TestNode::spawn(&[]);
    let http = no_redirects();
    let r = http
        .get(off.http("/admin"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not-found");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("console.loopback_without_token"));
    let url = format!("ws://{}/ws/admin", off.addr());
    assert_eq!(try_socket(&url, &[]).await.err(), Some(404));

    let on = TestNode::spawn(&[("SWITCHBOARD_CONSOLE__LOOPBACK_WITHOUT_TOKEN", "true")]);
    let r = http.get(on.http("/admin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A request through a proxy on this host is not a loopback request.
    let r = http
        .get(on.http("/admin"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let url = format!("ws://{}/ws/admin", on.addr());
    let mut ws = try_socket(&url, &[]).await.expect("loopback socket");
    next_of(&mut ws, "snapshot").await;
}

#[tokio::test]
async fn admin_socket_snapshot_then_deltas_and_bad_input_changes_nothing() {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_HTTP__ADMIN_TOKEN", TOKEN),
        ("SWITCHBOARD_RENDEZVOUS__AUTO_PAIR", "false"),
    ]);
    let mut admin = socket(&node, "/ws/admin").await;
    let snap = next_of(&mut admin, "snapshot").await;
    let me = snap["node"].as_str().unwrap().to_string();
    let nodes = snap["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{snap}");
    assert_eq!(nodes[0]["id"], me.as_str());
    assert_eq!(nodes[0]["addr"], node.addr().to_string());
    assert_eq!(nodes[0]["state"], "ready");
    assert_eq!(snap["workers"]["total"], 0);

    // A worker connects: the delta carries its connect and register.
    let mut w1 = legacy(&node, "w1").await;
    let started = Instant::now();
    let e = wait_event(&mut admin, "connect", "w1").await;
    assert_eq!(e["node"], me.as_str());
    wait_event(&mut admin, "register", "w1").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    w1.send_json(
        json!({"type": "update_udp_endpoint", "udp_ip": "198.51.100.7", "udp_port": 40001}),
    )
    .await;
    // The page shows it with its endpoints (the cache lasts a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let w = loop {
        let page = query(&mut admin, "w1").await;
        assert_eq!(page["total"], 1, "{page}");
        let w = page["items"][0].clone();
        if w["stun"] == "198.51.100.7:40001" {
            break w;
        }
        assert!(Instant::now() < deadline, "no STUN endpoint: {w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(w["id"], "w1");
    assert_eq!(w["node"], me.as_str());
    assert_eq!(w["observed_addr"], w1.local_addr.to_string());
    assert_eq!(w["state"], "idle");
    assert_eq!(query(&mut admin, "nobody").await["total"], 0);

    // Bad input: an error frame each, the socket stays, nothing changes.
    admin
        .ws
        .send(Message::Text("not json".into()))
        .await
        .unwrap();
    assert_eq!(
        next_of(&mut admin, "error").await["code"],
        "invalid-message"
    );
    send(&mut admin, json!(["query"])).await;
    assert_eq!(
        next_of(&mut admin, "error").await["code"],
        "invalid-message"
    );
    send(&mut admin, json!({"type": "reboot", "id": 7})).await;
    let e = next_of(&mut admin, "error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("invalid-message"), Some(7))
    );
    send(
        &mut admin,
        json!({"type": "pair", "a": "w1", "b": "ghost", "id": 8}),
    )
    .await;
    let e = next_of(&mut admin, "error").await;
    assert_eq!(e["code"], "worker-not-found");
    assert!(e["message"].as_str().unwrap().contains("ghost"));
    send(&mut admin, json!({"type": "pair", "a": "w1", "b": "w1"})).await;
    assert_eq!(next_of(&mut admin, "error").await["code"], "same-worker");
    send(&mut admin, json!({"type": "pair", "a": "w1"})).await;
    assert_eq!(
        next_of(&mut admin, "error").await["code"],
        "invalid-message"
    );
    send(&mut admin, json!({"type": "unpair", "worker": "w1"})).await;
    assert_eq!(next_of(&mut admin, "error").await["code"], "not-paired");
    send(
        &mut admin,
        json!({"type": "unpair", "worker": "x".repeat(300)}),
    )
    .await;
    assert_eq!(
        next_of(&mut admin, "error").await["code"],
        "invalid-peer-id"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the list's cache
    let page = query(&mut admin, "").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["state"], "idle");
    assert_eq!(page["items"][0]["paired_with"], Value::Null);

    // A second worker; the operator pairs them; both hear it, the log shows it.
    let mut w2 = legacy(&node, "w2").await;
    wait_event(&mut admin, "register", "w2").await;
    send(
        &mut admin,
        json!({"type": "pair", "a": "w1", "b": "w2", "id": "p"}),
    )
    .await;
    let r = next_of(&mut admin, "result").await;
    assert_eq!(
        (r["op"].as_str(), r["ok"].as_bool()),
        (Some("pair"), Some(true))
    );
    let offer = w1.recv_type("p2p_connection_offer").await;
    assert_eq!(offer["peer_worker_id"], "w2");
    assert_eq!(
        w2.recv_type("p2p_connection_offer").await["peer_worker_id"],
        "w1"
    );
    let e = wait_event(&mut admin, "pairing", "w1").await;
    assert_eq!(e["other"], "w2");
    assert_eq!(e["pairing"], r["pairing_id"]);
    send(&mut admin, json!({"type": "unpair", "worker": "w2"})).await;
    assert_eq!(next_of(&mut admin, "result").await["op"], "unpair");
    wait_event(&mut admin, "unpairing", "w1").await;

    // A disconnect is logged.
    w2.close().await;
    wait_event(&mut admin, "disconnect", "w2").await;
}

#[tokio::test]
async fn chat_and_pairing_cross_nodes_through_redis() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("console-chat");
    let nodes = spawn_cluster(
        &redis,
        &prefix,
        2,
        &[
            ("SWITCHBOARD_HTTP__ADMIN_TOKEN", TOKEN),
            ("SWITCHBOARD_RENDEZVOUS__AUTO_PAIR", "false"),
        ],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut admin = socket(a, "/ws/admin").await;
    next_of(&mut admin, "snapshot").await;
    // Node A's view comes to hold node B (its stats, once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = next_of(&mut admin, "delta").await;
        if let Some(ns) = d["nodes"].as_array() {
            if ns
                .iter()
                .any(|n| n["id"] == "node-2" && n["addr"] == b.addr().to_string())
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node-2 never shown on node-1");
    }

    // A worker on B shows on A's console.
    let mut wb = legacy(b, "wb").await;
    let e = wait_event(&mut admin, "register", "wb").await;
    assert_eq!(e["node"], "node-2");
    let mut wa = legacy(a, "wa").await;
    wait_event(&mut admin, "register", "wa").await;

    // Chat from an admin session on A reaches the worker on B; its reply
    // comes back to that session.
    let mut chat = socket(a, "/ws/chat/sess-1/wb").await;
    let h = next_of(&mut chat, "history").await;
    assert_eq!(h["worker_node"], "node-2");
    assert_eq!(h["messages"], json!([]));
    send(
        &mut chat,
        json!({"type": "chat", "text": "hello <b>wb</b>"}),
    )
    .await;
    let echo = next_of(&mut chat, "chat").await;
    assert_eq!(
        (echo["from"].as_str(), echo["text"].as_str()),
        (Some("admin"), Some("hello <b>wb</b>"))
    );
    let got = wb.recv_type("chat_message").await;
    assert_eq!(got["content"], "hello <b>wb</b>");
    assert_eq!(got["admin_session_id"], "sess-1");
    wb.send_json(
        json!({"type": "chat_response", "admin_session_id": "sess-1", "content": "hi admin"}),
    )
    .await;
    let reply = next_of(&mut chat, "chat").await;
    assert_eq!(reply["from"], "worker");
    assert_eq!(reply["text"], "hi admin");
    assert_eq!(reply["worker"], "wb");
    // The history is kept for the session: a new socket of it gets both lines.
    let mut again = socket(a, "/ws/chat/sess-1/wb").await;
    let h = next_of(&mut again, "history").await;
    let lines: Vec<(&str, &str)> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["from"].as_str().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        vec![("admin", "hello <b>wb</b>"), ("worker", "hi admin")]
    );
    // Another session's history is its own.
    let mut other = socket(a, "/ws/chat/sess-2/wb").await;
    assert_eq!(next_of(&mut other, "history").await["messages"], json!([]));

    // Errors: an unknown worker, an empty line, a frame that is not a chat.
    let mut ghost = socket(a, "/ws/chat/sess-1/ghost").await;
    let h = next_of(&mut ghost, "history").await;
    assert_eq!(h["worker_node"], Value::Null);
    assert_eq!(
        next_of(&mut ghost, "error").await["code"],
        "worker-not-found"
    );
    send(&mut ghost, json!({"type": "chat", "text": "anyone?"})).await;
    let e = next_of(&mut ghost, "error").await;
    assert_eq!(e["code"], "worker-not-found");
    assert!(e["message"].as_str().unwrap().contains("ghost"));
    send(&mut chat, json!({"type": "chat", "text": ""})).await;
    assert_eq!(next_of(&mut chat, "error").await["code"], "invalid-message");
    send(&mut chat, json!({"type": "shout"})).await;
    assert_eq!(next_of(&mut chat, "error").await["code"], "invalid-message");
    let bad = try_socket(
        &format!("ws://{}/ws/chat/bad%20session/wb", a.addr()),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(bad.err(), Some(400));

    // Pairing by hand across nodes, from A's console: both hear it.
    send(&mut admin, json!({"type": "pair", "a": "wa", "b": "wb"})).await;
    assert_eq!(next_of(&mut admin, "result").await["ok"], true);
    assert_eq!(
        wa.recv_type("p2p_connection_offer").await["peer_worker_id"],
        "wb"
    );
    assert_eq!(
        wb.recv_type("p2p_connection_offer").await["peer_worker_id"],
        "wa"
    );
    let e = wait_event(&mut admin, "pairing", "wa").await;
    assert_eq!(e["other"], "wb");
    // And a console on B saw it too (the log is cluster-wide).
    let mut admin_b = socket(b, "/ws/admin").await;
    let snap = next_of(&mut admin_b, "snapshot").await;
    let logged = snap["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "pairing" && e["peer"] == "wa" && e["other"] == "wb");
    if !logged {
        let e = wait_event(&mut admin_b, "pairing", "wa").await;
        assert_eq!(e["other"], "wb");
    }
}

/// `peers` and `rooms` on the admin socket: pages of the peers of any node
/// and of the cluster's rooms, searched on the server, walked by cursor;
/// bad requests get an error frame.
#[tokio::test]
async fn peer_and_room_lists_page_and_search_across_nodes() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("console-lists");
    let nodes = spawn_cluster(
        &redis,
        &prefix,
        2,
        &[("SWITCHBOARD_HTTP__ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // Five peers on node B, in rooms; two on node A.
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = b.peer(&format!("bee-{i}")).await;
        c.join(&format!("room-{}", i % 3)).await;
        clients.push(c);
    }
    for p in ["ant-0", "ant-1"] {
        let mut c = a.peer(p).await;
        c.join("ants").await;
        clients.push(c);
    }
    let mut admin = socket(a, "/ws/admin").await;
    next_of(&mut admin, "snapshot").await;
    let ask = async |admin: &mut Ws, v: Value| -> Value {
        send(admin, v).await;
        loop {
            let r = next_json(admin).await;
            if r["id"] == "l" {
                return r;
            }
        }
    };
    // Node B's peers from node A, two to a page, every one once.
    let mut seen = Vec::new();
    let mut cursor = 0;
    for _ in 0..20 {
        let r = ask(
            &mut admin,
            json!({"type": "peers", "id": "l", "node": "node-2", "cursor": cursor, "limit": 2}),
        )
        .await;
        assert_eq!(r["type"], "peers", "{r}");
        seen.extend(
            r["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string()),
        );
        cursor = r["next"].as_u64().unwrap();
        if cursor == 0 {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ["bee-0", "bee-1", "bee-2", "bee-3", "bee-4"]);
    let r = ask(
        &mut admin,
        json!({"type": "peers", "id": "l", "node": "node-1", "search": "ant-1"}),
    )
    .await;
    assert_eq!(
        (r["items"].clone(), r["next"].clone()),
        (json!(["ant-1"]), json!(0))
    );
    // Rooms: all four, then a search, then a page of one and its follower.
    let r = ask(&mut admin, json!({"type": "rooms", "id": "l"})).await;
    let names: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["room"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ants", "room-0", "room-1", "room-2"], "{r}");
    assert_eq!(r["items"][1]["members"], 2);
    assert_eq!(r["next"], Value::Null);
    let r = ask(
        &mut admin,
        json!({"type": "rooms", "id": "l", "search": "room-", "limit": 1}),
    )
    .await;
    assert_eq!(
        (r["items"][0]["room"].clone(), r["next"].clone()),
        (json!("room-0"), json!("room-0"))
    );
    let r = ask(
        &mut admin,
        json!({"type": "rooms", "id": "l", "search": "room-", "after": "room-0", "limit": 2}),
    )
    .await;
    let names: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["room"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["room-1", "room-2"], "{r}");
    // Bad requests: an error frame each.
    for bad in [
        json!({"type": "peers", "id": "l"}),
        json!({"type": "peers", "id": "l", "node": "node-1", "search": "x".repeat(300)}),
        json!({"type": "rooms", "id": "l", "after": 5}),
    ] {
        let r = ask(&mut admin, bad.clone()).await;
        assert_eq!(
            (r["type"].clone(), r["code"].clone()),
            (json!("error"), json!("invalid-message")),
            "{bad} -> {r}"
        );
    }
}
