//! Rooms made ahead of time over HTTP (`POST /api/rooms`): join tokens, JWT
//! grants, lifetimes, deletion, who may create, bad input; one node on the
//! embedded store. The same across a cluster is in `room_records_cluster`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{http_client, metric, Client, TestNode};

/// Sends one request; the status and the JSON body (`null` when none).
pub async fn request(
    node: &TestNode,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http_client().request(method.clone(), node.http(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let text = res.text().await.expect("response body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `POST /api/rooms` with `body`, from a plain loopback request (an admin
/// when the node has no `http.admin_token`); expects 201 and returns it.
pub async fn create(node: &TestNode, body: Value) -> Value {
    let (status, v) = request(node, Method::POST, "/api/rooms", &[], Some(body.clone())).await;
    assert_eq!(status, 201, "POST /api/rooms {body}: {v}");
    v
}

/// `DELETE /api/rooms/{room}` as an admin (plain loopback); the status.
pub async fn delete(node: &TestNode, room: &str) -> u16 {
    request(
        node,
        Method::DELETE,
        &format!("/api/rooms/{room}"),
        &[],
        None,
    )
    .await
    .0
}

/// Sends `join` (with an `id`) and returns the answer, whatever it is.
pub async fn try_join(c: &mut Client, mut join: Value) -> Value {
    let id = c.fresh_id();
    join["id"] = json!(id);
    c.send_json(join).await;
    let v = c.recv().await;
    assert_eq!(v["id"], json!(id), "the answer echoes the join's id: {v}");
    v
}

/// Polls `GET path` until it answers `status` (bounded); returns the body.
pub async fn wait_status(node: &TestNode, path: &str, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (st, v) = node.get(path).await;
        if st == status {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} answered {st} {v}, not {status}, for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The HS256 key of these tests' nodes (`auth.jwt.hs256_secret`).
pub const SECRET: &str = "room-records-test-secret";

/// A JWT of `claims` under [`SECRET`].
pub fn jwt(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Claims for `sub`, valid for ten minutes.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": unix_now() + 600})
}

fn is_token(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn a_room_with_a_token_admits_only_joiners_that_show_it() {
    let node = TestNode::spawn(&[]);
    let made = create(
        &node,
        json!({"name": "call", "metadata": {"topic": "standup"}}),
    )
    .await;
    assert_eq!(made["room_id"], "call");
    assert!(is_token(&made["token"]), "{made}");
    assert_eq!(
        made["expires_at"],
        Value::Null,
        "an admin's room without ttl_secs lives on"
    );
    let token = made["token"].as_str().unwrap().to_string();

    let mut a = node.peer("a").await;
    let e = try_join(&mut a, json!({"type": "join", "room": "call"})).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "room-token-required", "{e}");
    let e = try_join(
        &mut a,
        json!({"type": "join", "room": "call", "token": "0123456789abcdef0123456789abcdef"}),
    )
    .await;
    assert_eq!(e["code"], "room-token-invalid", "{e}");
    // Nothing was joined: no member, and a broadcast there is refused.
    let (_, room) = node.get("/api/rooms/call").await;
    assert_eq!(room["members"], json!([]), "{room}");
    a.send_json(json!({"type": "broadcast", "id": "b", "room": "call", "data": 1}))
        .await;
    a.recv_error("not-in-room").await;

    let j = a
        .join_with(json!({"type": "join", "room": "call", "token": token}))
        .await;
    assert_eq!(j["peers"], json!([]));
    let mut b = node.peer("b").await;
    let j = b
        .join_with(json!({"type": "join", "room": "call", "token": token, "meta": {"n": 2}}))
        .await;
    assert_eq!(j["peers"], json!([{"peer_id": "a", "meta": null}]));
    assert_eq!(
        a.recv().await,
        json!({"type": "peer-joined", "room": "call", "peer_id": "b", "meta": {"n": 2}})
    );
    let (status, room) = node.get("/api/rooms/call").await;
    assert_eq!(status, 200);
    let created = room["created_at"].as_u64().unwrap();
    assert!(created.abs_diff(unix_now()) < 60, "{room}");
    assert_eq!(
        room,
        json!({"room": "call", "members": [
                {"peer_id": "a", "meta": null}, {"peer_id": "b", "meta": {"n": 2}}],
            "explicit": true, "created_at": created, "expires_at": null, "max_peers": null,
            "metadata": {"topic": "standup"}, "token_required": true})
    );
    // A room made with `"token": false` is open; rooms made by a join work as before.
    let open = create(&node, json!({"name": "open", "token": false})).await;
    assert_eq!(open["token"], Value::Null);
    a.join("open").await;
    a.join("lobby").await;
    let (_, list) = node.get("/api/rooms").await;
    assert_eq!(
        list,
        json!({"rooms": [
            {"room": "call", "members": 2, "explicit": true, "expires_at": null, "max_peers": null},
            {"room": "lobby", "members": 1},
            {"room": "open", "members": 1, "explicit": true, "expires_at": null, "max_peers": null},
        ]})
    );
}

#[tokio::test]
async fn a_record_bounds_its_members_and_lists_in_pages() {
    let node = TestNode::spawn(&[]);
    let made = create(
        &node,
        json!({"name": "duo", "max_peers": 2, "token": false}),
    )
    .await;
    assert_eq!(made["token"], Value::Null);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    let mut c = node.peer("c").await;
    a.join("duo").await;
    b.join("duo").await;
    let e = try_join(&mut c, json!({"type": "join", "room": "duo"})).await;
    assert_eq!(e["code"], "room-full", "{e}");
    for name in ["p1", "p2", "p3"] {
        create(&node, json!({"name": name})).await;
    }
    let (status, page) = node.get("/api/rooms?limit=2").await;
    assert_eq!(status, 200, "{page}");
    let names: Vec<&str> = page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!((names, &page["next"]), (vec!["duo", "p1"], &json!("p1")));
    let (_, page) = node.get("/api/rooms?limit=2&after=p1").await;
    assert_eq!(page["rooms"][0]["room"], "p2");
    assert_eq!(page["rooms"][1]["room"], "p3");
    assert_eq!(page["next"], Value::Null, "{page}");
    let (_, duo) = node.get("/api/rooms?limit=1").await;
    assert_eq!(
        duo["rooms"][0],
        json!({"room": "duo", "members": 2, "explicit": true, "expires_at": null, "max_peers": 2})
    );
}

#[tokio::test]
async fn a_jwt_rooms_claim_grants_a_room_without_its_token() {
    let node = TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET)]);
    create(&node, json!({"name": "granted"})).await;
    create(&node, json!({"name": "other"})).await;
    let mut a = node.client().await;
    let mut cl = claims("a");
    cl["rooms"] = json!(["granted", 7]);
    a.hello_with(json!({"type": "hello", "peer_id": "a", "token": jwt(cl)}))
        .await;
    a.join("granted").await;
    let e = try_join(&mut a, json!({"type": "join", "room": "other"})).await;
    assert_eq!(e["code"], "room-token-required", "{e}");
    // A `rooms` claim of another shape grants nothing, and refuses nobody.
    let mut b = node.client().await;
    let mut cl = claims("b");
    cl["rooms"] = json!("granted");
    b.hello_with(json!({"type": "hello", "peer_id": "b", "token": jwt(cl)}))
        .await;
    let e = try_join(&mut b, json!({"type": "join", "room": "granted"})).await;
    assert_eq!(e["code"], "room-token-required", "{e}");
}

#[tokio::test]
async fn an_expired_room_admits_nobody_before_the_sweeper_comes() {
    // The sweeper ticks once at start, then not for an hour.
    let node = TestNode::spawn(&[("SWITCHBOARD_ROOMS__SWEEP_INTERVAL_MS", "3600000")]);
    let made = create(&node, json!({"name": "brief", "ttl_secs": 1})).await;
    let expires = made["expires_at"].as_u64().unwrap();
    let now = unix_now();
    assert!((now + 1..=now + 2).contains(&expires), "{made} at {now}");
    let token = made["token"].as_str().unwrap().to_string();
    let mut a = node.peer("a").await;
    a.join_with(json!({"type": "join", "room": "brief", "token": token}))
        .await;
    let v = wait_status(&node, "/api/rooms/brief", 410, Duration::from_secs(10)).await;
    assert_eq!(v["error"]["code"], "room-expired", "{v}");
    let mut b = node.peer("b").await;
    let e = try_join(
        &mut b,
        json!({"type": "join", "room": "brief", "token": token}),
    )
    .await;
    assert_eq!(e["code"], "room-expired", "{e}");
    assert_eq!(metric(&node, "switchboard_rooms_expired_total").await, 0.0);
}

#[tokio::test]
async fn expiry_closes_the_room_under_its_members() {
    let node = TestNode::spawn(&[]);
    let made = create(&node, json!({"name": "brief", "ttl_secs": 1})).await;
    let token = made["token"].as_str().unwrap().to_string();
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.join_with(json!({"type": "join", "room": "brief", "token": token}))
        .await;
    b.join_with(json!({"type": "join", "room": "brief", "token": token}))
        .await;
    a.recv_type("peer-joined").await;
    for c in [&mut a, &mut b] {
        c.timeout = Duration::from_secs(15);
        assert_eq!(
            c.recv().await,
            json!({"type": "room-closed", "room": "brief", "reason": "expired"})
        );
    }
    let (status, v) = node.get("/api/rooms/brief").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("room-not-found"))
    );
    assert_eq!(metric(&node, "switchboard_rooms_expired_total").await, 1.0);
    // No ghost: the members are in no room, and the name starts afresh.
    a.send_json(json!({"type": "leave", "id": "l", "room": "brief"}))
        .await;
    a.recv_error("not-in-room").await;
    assert_eq!(a.join("brief").await["peers"], json!([]));
    assert_eq!(
        b.join("brief").await["peers"],
        json!([{"peer_id": "a", "meta": null}])
    );
}

#[tokio::test]
async fn deleting_a_room_closes_it_for_its_members() {
    // One room each: a closed room must not count against it.
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__MAX_ROOMS_PER_PEER", "1")]);
    create(&node, json!({"name": "doomed", "token": false})).await;
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    let mut c = node.peer("c").await;
    a.join("doomed").await;
    b.join("doomed").await;
    a.recv_type("peer-joined").await;
    c.join("elsewhere").await;
    assert_eq!(delete(&node, "doomed").await, 204);
    for x in [&mut a, &mut b] {
        assert_eq!(
            x.recv().await,
            json!({"type": "room-closed", "room": "doomed", "reason": "deleted"})
        );
        x.send_json(json!({"type": "broadcast", "id": "m", "room": "doomed", "data": 1}))
            .await;
        x.recv_error("not-in-room").await;
    }
    // Nobody else heard anything.
    c.ping().await;
    let (status, _) = node.get("/api/rooms/doomed").await;
    assert_eq!(status, 404);
    assert_eq!(delete(&node, "doomed").await, 404);
    assert_eq!(metric(&node, "switchboard_rooms_deleted_total").await, 1.0);
    // A room made by a join can be deleted too.
    assert_eq!(delete(&node, "elsewhere").await, 204);
    assert_eq!(
        c.recv().await,
        json!({"type": "room-closed", "room": "elsewhere", "reason": "deleted"})
    );
    // The closed rooms left the sessions: each may join one room again
    // (`too-many-rooms` otherwise), and the name starts afresh.
    assert_eq!(a.join("doomed").await["peers"], json!([]));
    assert_eq!(c.join("other").await["peers"], json!([]));
}

#[tokio::test]
async fn the_default_policy_lets_only_an_admin_create_or_delete() {
    let node = TestNode::spawn(&[("SWITCHBOARD_HTTP__ADMIN_TOKEN", "adm1n")]);
    let (status, v) = request(&node, Method::POST, "/api/rooms", &[], Some(json!({}))).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );
    let admin = [("authorization", "Bearer adm1n")];
    let (status, v) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &admin,
        Some(json!({"name": "r"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap();
    // The room's token does not make a caller an admin.
    let shown = [("x-room-token", token)];
    let (status, v) = request(&node, Method::DELETE, "/api/rooms/r", &shown, None).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );
    let (status, _) = request(&node, Method::DELETE, "/api/rooms/r", &admin, None).await;
    assert_eq!(status, 204);
    // Without an admin token: plain loopback only, not through a proxy.
    let node = TestNode::spawn(&[]);
    let proxied = [("x-forwarded-for", "203.0.113.9")];
    let (status, v) = request(&node, Method::POST, "/api/rooms", &proxied, Some(json!({}))).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("forbidden")),
        "{v}"
    );
    assert_eq!(
        metric(
            &node,
            r#"switchboard_admin_refused_total{reason="forbidden"}"#
        )
        .await,
        1.0
    );
    let (status, v) = request(&node, Method::POST, "/api/rooms", &[], None).await;
    assert_eq!(status, 201, "an empty body is all defaults: {v}");
}

#[tokio::test]
async fn signed_in_callers_create_rooms_and_delete_them_with_their_token() {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
        ("SWITCHBOARD_ROOMS__CREATE", "signed_in"),
        ("SWITCHBOARD_ROOMS__MAX_TTL_MS", "7200000"),
    ]);
    let proxied = ("x-forwarded-for", "203.0.113.9");
    let (status, v) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &[proxied],
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );
    let bearer = format!("Bearer {}", jwt(claims("carol")));
    let bad = format!(
        "Bearer {}",
        jwt(json!({"sub": "carol", "exp": unix_now() - 3600}))
    );
    let (status, v) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &[proxied, ("authorization", &bad)],
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );
    let me = [proxied, ("authorization", bearer.as_str())];
    // Without ttl_secs, a signed-in caller's room gets rooms.max_ttl_ms.
    let (status, made) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &me,
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let expires = made["expires_at"].as_u64().unwrap();
    assert!(expires.abs_diff(unix_now() + 7200) <= 2, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    // Deleting takes the room's token.
    let (status, v) = request(&node, Method::DELETE, "/api/rooms/mine", &me, None).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("room-token-required")),
        "{v}"
    );
    let wrong = [
        proxied,
        ("authorization", bearer.as_str()),
        ("x-room-token", "nope"),
    ];
    let (status, v) = request(&node, Method::DELETE, "/api/rooms/mine", &wrong, None).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("room-token-invalid")),
        "{v}"
    );
    let right = [
        proxied,
        ("authorization", bearer.as_str()),
        ("x-room-token", token.as_str()),
    ];
    let (status, _) = request(&node, Method::DELETE, "/api/rooms/mine", &right, None).await;
    assert_eq!(status, 204);
    let (status, _) = request(&node, Method::DELETE, "/api/rooms/mine", &right, None).await;
    assert_eq!(status, 404);
    // A room without a token is an admin's to delete.
    let (_, open) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &me,
        Some(json!({"token": false})),
    )
    .await;
    let path = format!("/api/rooms/{}", open["room_id"].as_str().unwrap());
    let (status, v) = request(&node, Method::DELETE, &path, &me, None).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (403, &json!("forbidden")),
        "{v}"
    );
    // The reads stay an operator's.
    let (status, _) = request(&node, Method::GET, "/api/rooms", &me, None).await;
    assert_eq!(status, 403);
    // An admin (plain loopback here) still may, with or without a lifetime.
    let (status, v) = request(&node, Method::POST, "/api/rooms", &[], Some(json!({}))).await;
    assert_eq!((status, &v["expires_at"]), (201, &Value::Null), "{v}");
    assert_eq!(metric(&node, "switchboard_rooms_created_total").await, 3.0);

    // signed_in on a node without a key to verify with: nobody but an admin.
    let node = TestNode::spawn(&[("SWITCHBOARD_ROOMS__CREATE", "signed_in")]);
    let (status, v) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &[proxied, ("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (401, &json!("unauthorized")),
        "{v}"
    );
    node.wait_log(
        "no auth.jwt key is configured to verify a token with",
        Duration::from_secs(5),
    );
}

#[tokio::test]
async fn anyone_may_create_when_the_operator_says_so() {
    let node = TestNode::spawn(&[("SWITCHBOARD_ROOMS__CREATE", "anyone")]);
    let proxied = [("x-forwarded-for", "203.0.113.9")];
    let (status, v) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &proxied,
        Some(json!({"ttl_secs": 60})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let name = v["room_id"].as_str().unwrap();
    assert!(
        name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "{v}"
    );
    node.wait_log(
        "anyone who reaches this port may create rooms",
        Duration::from_secs(5),
    );
}

/// `POST /api/rooms` as anyone from `client` (through the loopback proxy's
/// `X-Forwarded-For`, so not an admin; the client when the node trusts
/// loopback proxies).
async fn create_as(node: &TestNode, client: &str, body: Value) -> (u16, Value) {
    request(
        node,
        Method::POST,
        "/api/rooms",
        &[("x-forwarded-for", client)],
        Some(body),
    )
    .await
}

/// Callers other than admins are capped per creator (here a client
/// address) and together; a refused create leaves no room; admins are not
/// counted; a slot comes back when its room's lifetime ends.
#[tokio::test]
async fn rooms_made_by_others_are_capped_per_creator_and_in_all() {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_ROOMS__CREATE", "anyone"),
        ("SWITCHBOARD_ROOMS__MAX_ROOMS_PER_CREATOR", "2"),
        ("SWITCHBOARD_ROOMS__MAX_ROOMS_BY_OTHERS", "3"),
        // The loopback proxy names the client (each address is a creator).
        ("SWITCHBOARD_HTTP__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#),
    ]);
    let (a, b, c) = ("203.0.113.9", "203.0.113.10", "203.0.113.11");
    // `client` asks for room `name` and is refused for `cap`; no room is left.
    let refused = |client: &'static str, name: &'static str, cap: &'static str| {
        let node = &node;
        async move {
            let (status, v) = create_as(node, client, json!({"name": name, "ttl_secs": 600})).await;
            let named = v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(cap));
            assert!(
                status == 429 && v["error"]["code"] == "rate-limited" && named,
                "{status} {v}"
            );
            let (status, _) = node.get(&format!("/api/rooms/{name}")).await;
            assert_eq!(status, 404, "a refused room is not left behind");
        }
    };
    let (status, v) = create_as(&node, a, json!({"name": "a1", "ttl_secs": 1})).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = create_as(&node, a, json!({"name": "a2", "ttl_secs": 600})).await;
    assert_eq!(status, 201, "{v}");
    refused(a, "a3", "rooms.max_rooms_per_creator").await;
    let (status, v) = create_as(&node, b, json!({"name": "b1", "ttl_secs": 600})).await;
    assert_eq!(status, 201, "{v}");
    refused(c, "c1", "rooms.max_rooms_by_others").await;
    // An admin is not counted.
    create(&node, json!({"name": "admins", "ttl_secs": 600})).await;
    assert_eq!(
        metric(
            &node,
            "switchboard_rooms_refused_total{cap=\"per-creator\"}"
        )
        .await,
        1.0
    );

    // a1's lifetime (1 s) ends: its slot comes back, to a and to the total.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = create_as(&node, a, json!({"name": "a3", "ttl_secs": 600})).await;
        if status == 201 {
            break;
        }
        assert!(status == 429 && Instant::now() < deadline, "{status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_room_requests_are_400_json() {
    let node = TestNode::spawn(&[]);
    let long = "r".repeat(129);
    let deep = (0..70).fold(json!(1), |v, _| json!([v]));
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"metadata": {"blob": "x".repeat(5000)}}),
            "meta-too-large",
        ),
        (json!({"metadata": deep}), "nesting-too-deep"),
        (json!({"ttl_secs": 0}), "invalid-message"),
        (json!({"ttl_secs": -5}), "invalid-message"),
        (json!({"ttl_secs": 1.5}), "invalid-message"),
        (json!({"ttl_secs": "60"}), "invalid-message"),
        (json!({"ttl_secs": 86_401}), "invalid-message"),
        (json!({"max_peers": 0}), "invalid-message"),
        (json!({"max_peers": 1001}), "invalid-message"),
        (json!({"name": ""}), "invalid-room"),
        (json!({"name": long}), "invalid-room"),
        (json!({"name": "a\nb"}), "invalid-room"),
        (json!({"name": 42}), "invalid-message"),
        (json!({"token": "yes"}), "invalid-message"),
        (json!({"ttl": 60}), "invalid-message"),
        (json!([1, 2]), "invalid-message"),
        (json!("room"), "invalid-message"),
    ];
    for (body, code) in cases {
        let (status, v) = request(&node, Method::POST, "/api/rooms", &[], Some(body.clone())).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let res = http_client()
        .post(node.http("/api/rooms"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid-message", "{v}");
    // Nothing was made by any of them.
    let (_, list) = node.get("/api/rooms").await;
    assert_eq!(list, json!({"rooms": []}));
    // A name taken: 409.
    create(&node, json!({"name": "taken"})).await;
    let (status, v) = request(
        &node,
        Method::POST,
        "/api/rooms",
        &[],
        Some(json!({"name": "taken"})),
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (409, &json!("room-exists")),
        "{v}"
    );
    // Bad names and pages elsewhere.
    let (status, v) = request(
        &node,
        Method::DELETE,
        &format!("/api/rooms/{long}"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid-room")),
        "{v}"
    );
    for q in ["limit=0", "limit=1001"] {
        let (status, v) = node.get(&format!("/api/rooms?{q}")).await;
        assert_eq!(
            (status, &v["error"]["code"]),
            (400, &json!("invalid-message")),
            "{q}: {v}"
        );
    }
    let (status, v) = node.get("/api/rooms?limit=x").await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("bad-request")),
        "{v}"
    );
}
