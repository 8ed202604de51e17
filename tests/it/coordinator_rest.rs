//! The game P2P coordinator's REST door (docs/DOORS.md, "Coordinator"):
//! the old service's shapes (LEGACY-PROTOCOLS.md §1.2-1.4) through the real
//! binary, on its own listener and on the main one, one node with the
//! memory store and several nodes on a real redis-server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};

use crate::cluster_helpers::{cluster_env, unique_prefix, RedisServer};
use crate::helpers::{metric, TestNode};

/// A client that does not follow redirects (the 307s are under test).
fn client() -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// One request: status, headers, body text.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client().request(method, format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    (status, headers, text)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (s, _, t) = call(addr, Method::GET, path, None, &[]).await;
    (s, serde_json::from_str(&t).unwrap_or(Value::Null))
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (s, _, t) = call(addr, Method::POST, path, Some(body), &[]).await;
    (s, serde_json::from_str(&t).unwrap_or(Value::Null))
}

/// The old service's test host (conftest): 8 cores, 16384 MB, 1000 Mbps.
fn host(id: &str) -> Value {
    json!({"host_id": id, "player_id": "p-1", "player_name": "Tester", "ip_address": "127.0.0.1",
           "port": 5000, "cpu_cores": 8, "cpu_frequency_mhz": 3600, "memory_mb": 16384,
           "network_speed_mbps": 1000, "nat_type": "full_cone"})
}

fn zone(id: &str) -> Value {
    json!({"zone_id": id, "zone_name": id, "zone_display_name": "Zone", "map_name": "prt_fild08",
           "max_players": 2, "recommended_players": 1, "p2p_enabled": true, "p2p_priority": 5,
           "fallback_enabled": true, "min_host_quality_score": 7.0, "min_bandwidth_mbps": 100,
           "max_latency_ms": 100, "description": null})
}

fn heartbeat(latency: f64, loss: f64, players: i64) -> Value {
    json!({"latency_ms": latency, "packet_loss_percent": loss, "bandwidth_usage_mbps": 10.0,
           "current_players": players, "current_zones": 1})
}

/// A node with the coordinator on a listener of its own.
fn own_listener_node(extra: &[(&str, &str)]) -> (TestNode, SocketAddr) {
    let mut env = vec![("SWITCHBOARD_DOORS__COORDINATOR__LISTEN", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    let node = TestNode::spawn(&env);
    let addr = node.door_addr("doors.coordinator.listen");
    (node, addr)
}

#[tokio::test]
async fn hosts_score_as_the_old_service_and_answer_in_its_shapes() {
    let (_node, a) = own_listener_node(&[]);
    // Register: 201, the full field order, score 100.0.
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/hosts/register",
        Some(host("h1")),
        &[],
    )
    .await;
    assert_eq!(s, 201, "{text}");
    assert_eq!(
        text,
        r#"{"id":1,"host_id":"h1","player_id":"p-1","player_name":"Tester","ip_address":"127.0.0.1","port":5000,"public_ip":null,"cpu_cores":8,"cpu_frequency_mhz":3600,"memory_mb":16384,"network_speed_mbps":1000,"latency_ms":0.0,"packet_loss_percent":0.0,"bandwidth_usage_mbps":0.0,"status":"online","max_players":50,"current_players":0,"max_zones":5,"current_zones":0,"quality_score":100.0}"#
    );
    // The worked example: latency 50, loss 0.1, 5 players -> 92.3.
    let (s, h) = post(a, "/api/v1/hosts/h1/heartbeat", heartbeat(50.0, 0.1, 5)).await;
    assert_eq!(s, 200);
    assert_eq!(h["quality_score"], json!(92.3));
    assert_eq!(h["latency_ms"], json!(50.0));
    // A second register is an upsert: same id, 201, online.
    let (s, h) = post(a, "/api/hosts/register", host("h1")).await;
    assert_eq!(
        (s, h["id"].clone(), h["status"].clone()),
        (201, json!(1), json!("online"))
    );
    // v0 and v1 read the same record.
    let (s, h) = get(a, "/api/hosts/h1").await;
    assert_eq!((s, h["host_id"].clone()), (200, json!("h1")));
    // A second host with fewer cores: the list is by score.
    let mut weak = host("h2");
    weak["cpu_cores"] = json!(2);
    let (s, h2) = post(a, "/api/v1/hosts/register", weak).await;
    assert_eq!(
        (s, h2["id"].clone(), h2["quality_score"].clone()),
        (201, json!(2), json!(95.0))
    );
    let (s, list) = get(a, "/api/v1/hosts/").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap())
        .collect();
    // h1 kept its heartbeat's metrics through the second register (92.3).
    assert_eq!(ids, ["h2", "h1"]);
    let (s, list) = get(a, "/api/v1/hosts/?min_quality_score=93").await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
    let (s, best) = get(a, "/api/v1/hosts/available/best").await;
    assert_eq!((s, best["host_id"].clone()), (200, json!("h2")));
    let (s, none) = get(a, "/api/v1/hosts/available/best?min_quality_score=101").await;
    assert_eq!(
        (s, none),
        (404, json!({"detail": "No available hosts found"}))
    );
    // The dead status filter keeps its 400.
    let (s, _) = get(a, "/api/v1/hosts/?status_filter=online").await;
    assert_eq!(s, 400);
    // Unknown ids, delete.
    let (s, b) = post(a, "/api/v1/hosts/nope/heartbeat", heartbeat(1.0, 0.0, 0)).await;
    assert_eq!((s, b), (404, json!({"detail": "Host not found: nope"})));
    let (s, _, text) = call(a, Method::DELETE, "/api/v1/hosts/h2", None, &[]).await;
    assert_eq!((s, text.as_str()), (204, ""));
    let (s, b) = get(a, "/api/v1/hosts/h2").await;
    assert_eq!((s, b), (404, json!({"detail": "Host not found: h2"})));
    // `/` and `/health`.
    let (s, b) = get(a, "/").await;
    assert_eq!(
        (s, b["service"].clone(), b["status"].clone()),
        (200, json!("p2p-coordinator"), json!("running"))
    );
    let (s, _, text) = call(a, Method::GET, "/health", None, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        text,
        r#"{"status":"healthy","service":"p2p-coordinator","version":"1.0.0","database":{"postgres":"connected","redis":"connected"}}"#
    );
}

#[tokio::test]
async fn framework_answers_follow_fastapi() {
    let (_node, a) = own_listener_node(&[]);
    // 307 to the other trailing-slash form, method and query kept.
    let (s, h, _) = call(
        a,
        Method::GET,
        "/api/v1/hosts?min_quality_score=1",
        None,
        &[("host", "coord.example:8001")],
    )
    .await;
    assert_eq!(s, 307);
    assert_eq!(
        h["location"],
        "http://coord.example:8001/api/v1/hosts/?min_quality_score=1"
    );
    let (s, h, _) = call(
        a,
        Method::POST,
        "/api/v1/hosts/register/",
        Some(host("x")),
        &[],
    )
    .await;
    assert_eq!(s, 307);
    assert!(h["location"]
        .to_str()
        .unwrap()
        .ends_with("/api/v1/hosts/register"));
    // 405 with Allow.
    let (s, h, text) = call(a, Method::POST, "/api/hosts/", Some(host("x")), &[]).await;
    assert_eq!(
        (s, text.as_str()),
        (405, r#"{"detail":"Method Not Allowed"}"#)
    );
    assert_eq!(h["allow"], "GET");
    // 404.
    let (s, _, text) = call(a, Method::GET, "/api/v1/nothing", None, &[]).await;
    assert_eq!((s, text.as_str()), (404, r#"{"detail":"Not Found"}"#));
    // v1-only paths are not under /api/.
    let (s, _) = get(a, "/api/monitoring/metrics").await;
    assert_eq!(s, 404);
    // 422: a missing field and a bound, in FastAPI's shape; unknown fields ignored.
    let mut bad = host("x");
    bad.as_object_mut().unwrap().remove("ip_address");
    bad["port"] = json!(0);
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/hosts/register",
        Some(bad.clone()),
        &[],
    )
    .await;
    assert_eq!(s, 422);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["detail"][0]["type"], "missing");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "ip_address"]));
    assert_eq!(v["detail"][0]["msg"], "Field required");
    assert_eq!(v["detail"][0]["input"], bad);
    assert_eq!(
        v["detail"][1],
        json!({"type":"greater_than_equal","loc":["body","port"],"msg":"Input should be greater than or equal to 1","input":0,"ctx":{"ge":1}})
    );
    assert!(text.starts_with(r#"{"detail":[{"type":"missing","loc":["body","ip_address"],"msg":"Field required","input":"#), "{text}");
    // Not JSON, and not an object.
    let res = client()
        .post(format!("http://{a}/api/v1/hosts/register"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 422);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["detail"][0]["type"], "json_invalid");
    let (s, v) = post(a, "/api/v1/hosts/register", json!([1])).await;
    assert_eq!(
        (s, v["detail"][0]["type"].clone()),
        (422, json!("model_attributes_type"))
    );
    // A non-integer session id.
    let (s, v) = get(a, "/api/v1/sessions/abc").await;
    assert_eq!(s, 422);
    assert_eq!(
        v,
        json!({"detail":[{"type":"int_parsing","loc":["path","session_id"],"msg":"Input should be a valid integer, unable to parse string as an integer","input":"abc"}]})
    );
    // Zone status: every value 400, a missing one 422.
    let (s, _) = post(a, "/api/v1/zones/", zone("z")).await;
    assert_eq!(s, 201);
    let (s, _, text) = call(
        a,
        Method::PATCH,
        "/api/v1/zones/z/status?new_status=enabled",
        None,
        &[],
    )
    .await;
    assert_eq!(
        (s, text.as_str()),
        (
            400,
            r#"{"detail":"Invalid status: enabled. Must be one of: ENABLED, DISABLED, MAINTENANCE"}"#
        )
    );
    let (s, _, _) = call(a, Method::PATCH, "/api/v1/zones/z/status", None, &[]).await;
    assert_eq!(s, 422);
}

#[tokio::test]
async fn sessions_check_zones_and_hosts_and_pick_the_best_host() {
    let (_node, a) = own_listener_node(&[]);
    post(a, "/api/v1/hosts/register", host("good")).await;
    // A weak host: 1 core, 1024 MB, 100 Mbps, then latency 90 and 2% loss:
    // 21+16+25+2.5+1.25+5 = 70.75... then 20 players: capacity 15 -> 60.75.
    let mut weak = host("weak");
    weak["cpu_cores"] = json!(1);
    weak["memory_mb"] = json!(1024);
    weak["network_speed_mbps"] = json!(100);
    post(a, "/api/v1/hosts/register", weak).await;
    let (s, h) = post(a, "/api/v1/hosts/weak/heartbeat", heartbeat(90.0, 2.0, 20)).await;
    assert_eq!((s, h["quality_score"].clone()), (200, json!(60.75)));
    let (s, z) = post(a, "/api/v1/zones/", zone("prontera")).await;
    assert_eq!(
        (s, z["status"].clone(), z["id"].clone()),
        (201, json!("enabled"), json!(1))
    );
    // The zone wants 70 (7.0 x 10): the weak host is refused.
    let (s, b) = post(
        a,
        "/api/v1/sessions/",
        json!({"host_id": "weak", "zone_id": "prontera", "player_ids": ["a"]}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        b["detail"],
        "Failed to create session: host quality score 60.75 is below the zone's minimum 70.0"
    );
    // The old service's refusals keep their text.
    let (s, b) = post(
        a,
        "/api/v1/sessions/",
        json!({"host_id": "ghost", "zone_id": "prontera", "player_ids": []}),
    )
    .await;
    assert_eq!((s, b), (400, json!({"detail": "Failed to create session"})));
    // No host named: the best available one that meets the zone is picked.
    let (s, sess) = post(
        a,
        "/api/v1/sessions/",
        json!({"zone_id": "prontera", "player_ids": ["a", "b"]}),
    )
    .await;
    assert_eq!(s, 201, "{sess}");
    assert_eq!(sess["host_id"], json!(1), "the good host's integer id");
    assert_eq!(sess["zone_id"], json!(1));
    assert_eq!(sess["status"], "pending");
    assert_eq!(sess["current_players"], 2);
    assert_eq!(sess["max_players"], 2);
    let sid = sess["session_id"].as_str().unwrap();
    assert!(sid.starts_with("session-") && sid.len() == 24, "{sid}");
    let id = sess["id"].as_u64().unwrap();
    // Lookup by integer id, in both versions.
    for prefix in ["/api", "/api/v1"] {
        let (s, got) = get(a, &format!("{prefix}/sessions/{id}")).await;
        assert_eq!((s, got["session_id"].clone()), (200, json!(sid)));
    }
    let (s, b) = get(a, "/api/v1/sessions/999").await;
    assert_eq!((s, b), (404, json!({"detail": "Session 999 not found"})));
    // Capacity: the zone's max_players is 2.
    let (s, b) = post(
        a,
        &format!("/api/v1/sessions/{id}/players"),
        json!({"player_id": "c"}),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"detail": format!("Failed to add player c to session {id}")})
        )
    );
    let (s, b) = post(
        a,
        &format!("/api/v1/sessions/{id}/players"),
        json!({"x": 1}),
    )
    .await;
    assert_eq!((s, b), (400, json!({"detail": "player_id is required"})));
    let (s, _, _) = call(
        a,
        Method::DELETE,
        &format!("/api/v1/sessions/{id}/players/b"),
        None,
        &[],
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = post(
        a,
        &format!("/api/v1/sessions/{id}/players"),
        json!({"player_id": "c"}),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            200,
            json!({"message": format!("Player c added to session {id}")})
        )
    );
    // Activate once, end, active lists.
    let (s, b) = post(a, &format!("/api/v1/sessions/{id}/activate"), json!({})).await;
    assert_eq!(
        (s, b),
        (200, json!({"message": format!("Session {id} activated")}))
    );
    let (s, _) = post(a, &format!("/api/v1/sessions/{id}/activate"), json!({})).await;
    assert_eq!(s, 400);
    let (s, list) = get(a, "/api/v1/sessions/host/good/active").await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
    let (s, list) = get(a, "/api/v1/sessions/zone/prontera/active").await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
    let (s, dash) = get(a, "/api/v1/monitoring/dashboard").await;
    assert_eq!(s, 200);
    assert_eq!(
        dash["hosts"],
        json!({"total": 2, "online": 2, "offline": 0, "average_quality_score": 80.38})
    );
    assert_eq!(dash["sessions"]["active"], 1);
    assert_eq!(dash["sessions"]["inactive"], 0);
    assert_eq!(dash["sessions"]["total_players"], 2);
    let (s, _, text) = call(a, Method::GET, "/api/v1/monitoring/metrics", None, &[]).await;
    assert_eq!(s, 200);
    assert!(text.contains("\np2p_sessions_active 1.0\n"), "{text}");
    assert!(text.contains("\np2p_hosts_online 2.0\n"), "{text}");
    let (s, b) = post(
        a,
        &format!("/api/v1/sessions/{id}/end?reason=normal"),
        json!({}),
    )
    .await;
    assert_eq!(
        (s, b),
        (200, json!({"message": format!("Session {id} ended")}))
    );
    let (_, list) = get(a, "/api/v1/sessions/host/good/active").await;
    assert_eq!(list, json!([]));
    // A zone with p2p off refuses sessions.
    let (s, z) = post(a, "/api/v1/zones/prontera/disable-p2p", json!({})).await;
    assert_eq!((s, z["p2p_enabled"].clone()), (200, json!(false)));
    let (s, _) = post(
        a,
        "/api/v1/sessions/",
        json!({"host_id": "good", "zone_id": "prontera", "player_ids": []}),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn the_api_key_and_tokens_work_as_configured() {
    let (_node, a) = own_listener_node(&[
        ("SWITCHBOARD_DOORS__COORDINATOR__API_KEY", "k3y"),
        (
            "SWITCHBOARD_AUTH__JWT__HS256_SECRET",
            "coordinator-test-secret",
        ),
    ]);
    let (s, _, text) = call(a, Method::GET, "/api/v1/hosts/", None, &[]).await;
    assert_eq!(
        (s, text.as_str()),
        (
            401,
            r#"{"detail":"Missing X-API-Key header","error":"unauthorized"}"#
        )
    );
    let (s, _, text) = call(
        a,
        Method::GET,
        "/api/v1/hosts/",
        None,
        &[("x-api-key", "nope")],
    )
    .await;
    assert_eq!(
        (s, text.as_str()),
        (
            401,
            r#"{"detail":"Invalid API key","error":"unauthorized"}"#
        )
    );
    let (s, _, _) = call(
        a,
        Method::GET,
        "/api/v1/hosts/",
        None,
        &[("x-api-key", "k3y")],
    )
    .await;
    assert_eq!(s, 200);
    // Exempt paths.
    for path in ["/", "/health", "/api/v1/monitoring/dashboard"] {
        let (s, _, _) = call(a, Method::GET, path, None, &[]).await;
        assert_eq!(s, 200, "{path}");
    }
    // Tokens: the body key must match too.
    let key = [("x-api-key", "k3y")];
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/auth/token",
        Some(json!({"player_id": "p1"})),
        &key,
    )
    .await;
    assert_eq!((s, text.as_str()), (401, r#"{"detail":"Invalid API key"}"#));
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/auth/token",
        Some(json!({"player_id": "p1", "api_key": "k3y"})),
        &key,
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let t: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 3600);
    let claims = |jwt: &str| -> Value {
        serde_json::from_slice(&base64_decode(jwt.split('.').nth(1).unwrap())).unwrap()
    };
    let access = claims(t["access_token"].as_str().unwrap());
    assert_eq!(
        (access["sub"].clone(), access["type"].clone()),
        (json!("p1"), json!("access"))
    );
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/auth/refresh",
        Some(json!({"refresh_token": refresh})),
        &key,
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["refresh_token"], Value::Null);
    let fresh = claims(r["access_token"].as_str().unwrap());
    // `sub` too (the old service left it out): the signaling socket proves
    // the peer id by it (docs/DOORS.md, "Coordinator").
    assert_eq!(
        (fresh["player_id"].clone(), fresh["sub"].clone()),
        (json!("p1"), json!("p1"))
    );
    // An access token is not a refresh token; junk is invalid.
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/auth/refresh",
        Some(json!({"refresh_token": t["access_token"]})),
        &key,
    )
    .await;
    assert_eq!(
        (s, text.as_str()),
        (
            401,
            r#"{"detail":"Invalid token type: expected refresh token"}"#
        )
    );
    let (s, _, text) = call(
        a,
        Method::POST,
        "/api/v1/auth/refresh",
        Some(json!({"refresh_token": "x.y.z"})),
        &key,
    )
    .await;
    assert_eq!(
        (s, text.as_str()),
        (401, r#"{"detail":"Invalid refresh token"}"#)
    );
}

/// Base64url without padding (a JWT segment).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'-' | b'+' => 62,
            _ => 63,
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Config file of a cluster node: the coordinator on the main listener,
/// a zone declared, fast background work.
fn cluster_config(dir: &std::path::Path) -> String {
    let file = dir.join("coordinator.toml");
    std::fs::write(
        &file,
        r#"[doors.coordinator]
on_main = true
lease_tick_ms = 1000
health_interval_ms = 500
cleanup_interval_ms = 500
session_timeout_s = 2
host_offline_after_s = 3600

[[doors.coordinator.zones]]
zone_id = "prontera"
max_players = 10
p2p_priority = 3
"#,
    )
    .unwrap();
    file.to_str().unwrap().to_string()
}

fn spawn_clustered(redis: &RedisServer, prefix: &str, n: usize, config: &str) -> Vec<TestNode> {
    (0..n)
        .map(|i| {
            let env = cluster_env(redis, prefix, &format!("node-{}", i + 1));
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            TestNode::spawn_with_args(&["--config", config], &env)
        })
        .collect()
}

#[tokio::test]
async fn records_are_shared_by_every_node_with_unique_ids() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-shared");
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path());
    let nodes = spawn_clustered(&redis, &prefix, 2, &config);
    let (a, b) = (nodes[0].addr(), nodes[1].addr());
    // The configured zone exists on both (created once, whichever node won).
    let (s, z) = get(b, "/api/v1/zones/prontera").await;
    assert_eq!(
        (s, z["zone_display_name"].clone()),
        (200, json!("prontera"))
    );
    let (s, za) = get(a, "/api/zones/prontera").await;
    assert_eq!((s, za), (200, z));
    let (s, all) = get(a, "/api/v1/zones/").await;
    assert_eq!((s, all.as_array().unwrap().len()), (200, 1));
    // A host registers on A; B serves it and takes its heartbeat.
    let (s, h) = post(a, "/api/v1/hosts/register", host("h-a")).await;
    assert_eq!(s, 201);
    let (s, h2) = get(b, "/api/hosts/h-a").await;
    assert_eq!((s, h2), (200, h));
    let (s, h) = post(b, "/api/v1/hosts/h-a/heartbeat", heartbeat(50.0, 0.1, 5)).await;
    assert_eq!((s, h["quality_score"].clone()), (200, json!(92.3)));
    let (_, h) = get(a, "/api/v1/hosts/h-a").await;
    assert_eq!(h["quality_score"], json!(92.3));
    // A session created through B, read and joined through A.
    let (s, sess) = post(
        b,
        "/api/v1/sessions/",
        json!({"host_id": "h-a", "zone_id": "prontera", "player_ids": ["p"]}),
    )
    .await;
    assert_eq!(s, 201, "{sess}");
    let id = sess["id"].as_u64().unwrap();
    let (s, got) = get(a, &format!("/api/v1/sessions/{id}")).await;
    assert_eq!((s, got), (200, sess));
    // Ids stay unique when both nodes create at once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { a } else { b };
        tasks.push(tokio::spawn(async move {
            post(
                addr,
                "/api/v1/sessions/",
                json!({"host_id": "h-a", "zone_id": "prontera", "player_ids": []}),
            )
            .await
        }));
        let addr = if i % 2 == 0 { b } else { a };
        tasks.push(tokio::spawn(async move {
            post(addr, "/api/v1/hosts/register", host(&format!("h-{i}"))).await
        }));
    }
    let (mut sessions, mut hosts) = (Vec::new(), Vec::new());
    for (i, t) in tasks.into_iter().enumerate() {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_u64().unwrap();
        if i % 2 == 0 {
            sessions.push(id)
        } else {
            hosts.push(id)
        }
    }
    sessions.sort();
    sessions.dedup();
    hosts.sort();
    hosts.dedup();
    assert_eq!((sessions.len(), hosts.len()), (20, 20));
    // Concurrent player adds never exceed the zone's 10.
    let mut adds = Vec::new();
    for i in 0..16 {
        let addr = if i % 2 == 0 { a } else { b };
        adds.push(tokio::spawn(async move {
            post(
                addr,
                &format!("/api/v1/sessions/{id}/players"),
                json!({"player_id": format!("q{i}")}),
            )
            .await
            .0
        }));
    }
    let mut ok = 0;
    for t in adds {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 9, "one player was there; 9 more fit");
    let (_, got) = get(b, &format!("/api/v1/sessions/{id}")).await;
    assert_eq!(got["current_players"], 10);
}

/// Sum of a metric over the nodes still alive.
async fn total(nodes: &[&TestNode], query: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += metric(n, query).await;
    }
    sum
}

/// The node holding the coordinator's lease (by its gauge), polled.
async fn holder(nodes: &[&TestNode], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut held = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if metric(n, "switchboard_coordinator_lease_held").await == 1.0 {
                held.push(i);
            }
        }
        if held.len() == 1 {
            return held[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single lease holder within {within:?}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until session `id` has `status` (through `addr`).
async fn wait_status(addr: SocketAddr, id: u64, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, s) = get(addr, &format!("/api/v1/sessions/{id}")).await;
        if s["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} is {} after {within:?}",
            s["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_cleanup_runs_on_one_node_and_moves_when_it_dies() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-lease");
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path());
    let nodes = spawn_clustered(&redis, &prefix, 3, &config);
    let all: Vec<&TestNode> = nodes.iter().collect();
    let a = nodes[0].addr();
    post(a, "/api/v1/hosts/register", host("h")).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (s, sess) = post(
            a,
            "/api/v1/sessions/",
            json!({"host_id": "h", "zone_id": "prontera", "player_ids": []}),
        )
        .await;
        assert_eq!(s, 201);
        ids.push(sess["id"].as_u64().unwrap());
    }
    // Stale after 2 s: each is failed once, by the one node holding the lease.
    for id in &ids {
        wait_status(a, *id, "failed", Duration::from_secs(20)).await;
    }
    let failed = r#"switchboard_coordinator_sessions_failed_total{reason="stale"}"#;
    assert_eq!(total(&all, failed).await, 3.0);
    let first = holder(&all, Duration::from_secs(10)).await;
    let runs = r#"switchboard_coordinator_runs_total{task="cleanup"}"#;
    for (i, n) in nodes.iter().enumerate() {
        let r = metric(n, runs).await;
        if i == first {
            assert!(r >= 1.0, "the holder ran the cleanup");
        } else {
            assert_eq!(
                r, 0.0,
                "node {i} does not hold the lease and never ran the cleanup"
            );
        }
    }
    let (s, sess) = get(a, &format!("/api/v1/sessions/{}", ids[0])).await;
    assert_eq!(s, 200);
    assert!(sess["ended_at"].is_string());
    // Kill the holder; another node takes the lease within three ticks
    // (3 s) and a tick, give or take a loaded machine.
    nodes[first].sigkill();
    let killed = Instant::now();
    let rest: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, n)| n)
        .collect();
    let next = holder(&rest, Duration::from_secs(20)).await;
    let took = killed.elapsed();
    eprintln!("lease taken over {took:?} after the holder died");
    assert!(took < Duration::from_secs(20));
    let b = rest[next].addr();
    let (s, sess) = post(
        b,
        "/api/v1/sessions/",
        json!({"host_id": "h", "zone_id": "prontera", "player_ids": []}),
    )
    .await;
    assert_eq!(s, 201);
    let id = sess["id"].as_u64().unwrap();
    wait_status(b, id, "failed", Duration::from_secs(20)).await;
    assert_eq!(
        metric(rest[next], failed).await,
        1.0,
        "the new holder failed the new session"
    );
    assert_eq!(total(&rest, failed).await, 1.0);
}

#[tokio::test]
async fn session_health_fails_sessions_of_an_offline_host() {
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[doors.coordinator]\non_main = true\nlease_tick_ms = 200\nhealth_interval_ms = 200\nhost_offline_after_s = 1\n\n[[doors.coordinator.zones]]\nzone_id = \"z\"\n",
    )
    .unwrap();
    let node = TestNode::spawn_with_args(&["--config", file.to_str().unwrap()], &[]);
    let a = node.addr();
    post(a, "/api/v1/hosts/register", host("h")).await;
    // The host heartbeats until the game clients are in their signaling
    // sessions, so the session cannot fail before they listen.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let beat = {
        let beating = beating.clone();
        tokio::spawn(async move {
            while beating.load(std::sync::atomic::Ordering::Acquire) {
                post(a, "/api/v1/hosts/h/heartbeat", heartbeat(10.0, 0.0, 0)).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (s, sess) = post(
        a,
        "/api/v1/sessions/",
        json!({"host_id": "h", "zone_id": "z", "player_ids": []}),
    )
    .await;
    assert_eq!(s, 201);
    let id = sess["id"].as_u64().unwrap();
    let session_id = sess["session_id"].as_str().unwrap().to_string();
    // One game client in the signaling session named by `session_id`, one
    // in the one named by the integer id.
    let mut by_name = Vec::new();
    for (peer, name) in [("g1", session_id.clone()), ("g2", id.to_string())] {
        let url = format!("ws://{a}/api/v1/signaling/ws?peer_id={peer}&session_id={name}");
        let mut c = crate::helpers::Client::connect(&url).await;
        let joined = c.recv().await;
        assert_eq!(joined["type"], "session-joined", "{joined}");
        by_name.push((c, name));
    }
    beating.store(false, std::sync::atomic::Ordering::Release);
    beat.await.unwrap();
    // No heartbeat: after 1 s the host is offline and the session failed.
    wait_status(a, id, "failed", Duration::from_secs(20)).await;
    // Its peers were told, in both signaling sessions.
    for (c, name) in &mut by_name {
        let m = c.recv().await;
        assert_eq!(m["type"], "broadcast", "{m}");
        assert_eq!(m["session_id"], json!(name));
        assert_eq!(
            m["data"],
            json!({"type": "session-failed", "session_id": session_id, "id": id, "reason": "host-offline"})
        );
    }
    let (_, h) = get(a, "/api/v1/hosts/h").await;
    assert_eq!(h["status"], "offline");
    assert_eq!(
        metric(
            &node,
            r#"switchboard_coordinator_sessions_failed_total{reason="host-offline"}"#
        )
        .await,
        1.0
    );
    node.wait_log("coordinator session failed", Duration::from_secs(5));
    // An offline host is skipped.
    let (s, _) = get(a, "/api/v1/hosts/available/best").await;
    assert_eq!(s, 404);
    // A heartbeat brings it back.
    let (s, h) = post(a, "/api/v1/hosts/h/heartbeat", heartbeat(10.0, 0.0, 0)).await;
    assert_eq!((s, h["status"].clone()), (200, json!("online")));
}

#[test]
fn check_config_reports_bad_coordinator_keys() {
    let out = crate::helpers::run_cli(
        &["--check-config"],
        &[
            ("SWITCHBOARD_DOORS__COORDINATOR__API_KEY_HEADER", "X Key"),
            ("SWITCHBOARD_DOORS__COORDINATOR__LEASE_TICK_MS", "0"),
        ],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("doors.coordinator.api_key_header"),
        "{stderr}"
    );
    assert!(
        stderr.contains("doors.coordinator.lease_tick_ms: must be greater than 0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn on_the_main_listener_only_its_api_paths_are_the_doors() {
    let node = TestNode::spawn(&[("SWITCHBOARD_DOORS__COORDINATOR__ON_MAIN", "true")]);
    let a = node.addr();
    let (s, h, _) = call(a, Method::GET, "/api/v1/hosts", None, &[]).await;
    assert_eq!(s, 307);
    assert!(h["location"].to_str().unwrap().ends_with("/api/v1/hosts/"));
    let (s, b) = get(a, "/api/hosts/").await;
    assert_eq!((s, b), (200, json!([])));
    let (s, _, text) = call(a, Method::GET, "/api/v1/zones/nope/x", None, &[]).await;
    assert_eq!((s, text.as_str()), (404, r#"{"detail":"Not Found"}"#));
    // The node's own paths stay the node's: `/` is the worker door's, and
    // the sign-in route next to the coordinator's /api/auth/... is served.
    let (s, b) = get(a, "/").await;
    assert_eq!(s, 200);
    assert_ne!(b.get("service"), Some(&json!("p2p-coordinator")));
    let (s, b) = post(a, "/api/auth/anonymous", json!({})).await;
    assert_ne!(b, json!({"detail": "Not Found"}), "{s}");
    let (s, _) = post(a, "/api/v1/auth/token", json!({"player_id": "p"})).await;
    assert_eq!(s, 503, "no auth.jwt.hs256_secret: no tokens");
}

/// On the door's own listener (the old service's port) the signaling socket
/// and `POST /api/publish` sit next to the REST API, as specific routes over
/// its catch-all ones.
#[tokio::test]
async fn the_own_listener_also_serves_the_signaling_socket_and_publish() {
    let (_node, addr) = own_listener_node(&[]);
    let url = format!("ws://{addr}/api/signaling/ws?peer_id=p1&session_id=s1");
    let mut c = crate::helpers::Client::connect(&url).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "session-joined", "session_id": "s1", "peers": []})
    );
    // Plain loopback is an admin without http.admin_token.
    let (s, body) = post(
        addr,
        "/api/publish",
        json!({"session": "s1", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let m = c.recv().await;
    assert_eq!(
        (m["type"].clone(), m["data"].clone()),
        (json!("broadcast"), json!({"n": 1}))
    );
    // The REST API is still the door's: its 404 shape.
    let (s, body) = get(addr, "/api/nothing-here").await;
    assert_eq!((s, body), (404, json!({"detail": "Not Found"})));
}

/// A node that drains hands its background lease back at once: another
/// node holds it at its next tick, long before the lease would have
/// expired (lease_tick_ms 4000: the lease lives 12 s, so a holder that only
/// stopped renewing would keep it for at least 8 s after its SIGTERM).
#[tokio::test]
async fn a_draining_holder_hands_the_lease_over_at_once() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("coord-handover");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[doors.coordinator]\non_main = true\nlease_tick_ms = 4000\n",
    )
    .unwrap();
    let nodes: Vec<TestNode> = (0..2)
        .map(|i| {
            let mut env = cluster_env(&redis, &prefix, &format!("node-{}", i + 1));
            // The drain lasts long: the handover must not wait for the exit.
            env.push((
                "SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS".into(),
                "30000".into(),
            ));
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            TestNode::spawn_with_args(&["--config", file.to_str().unwrap()], &env)
        })
        .collect();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let first = holder(&all, Duration::from_secs(20)).await;
    let other = 1 - first;
    let lease_key = format!("{prefix}:lease:coordinator");
    assert_eq!(
        redis.command(&["GET", &lease_key]),
        format!("$6\r\nnode-{}\r\n", first + 1)
    );
    nodes[first].sigterm();
    let t = Instant::now();
    // The other node's next tick (within 4 s) takes it.
    let deadline = t + Duration::from_secs(7);
    loop {
        if metric(&nodes[other], "switchboard_coordinator_lease_held").await == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease did not move within 7 s of the holder's SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        redis.command(&["GET", &lease_key]),
        format!("$6\r\nnode-{}\r\n", other + 1)
    );
    eprintln!("lease handed over {:?} after SIGTERM", t.elapsed());
}
