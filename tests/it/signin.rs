//! `POST /api/auth/anonymous`: sign-in issues a token for a fresh peer id
//! that `hello` accepts on every node with the same key, the operator's own
//! tokens keep working beside it, it is off by default, and it is limited
//! per client address.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::{fixture, http_client, is_uuid, metric, Client, TestNode};

const SECRET: &str = "signin-test-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn sign_in(node: &TestNode) -> (u16, Option<String>, Value) {
    let r = http_client()
        .post(node.http("/api/auth/anonymous"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap())
}

fn signin_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
        ("SWITCHBOARD_AUTH__SIGNIN__ENABLED", "true"),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test]
async fn sign_in_is_off_by_default() {
    let node = TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET)]);
    let (status, _, body) = sign_in(&node).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "signin-unavailable", "{body}");
    assert_eq!(
        metric(&node, "switchboard_signins_total{outcome=\"disabled\"}").await,
        1.0
    );
}

#[tokio::test]
async fn enabled_without_a_key_stops_the_start() {
    let out = crate::helpers::run_cli(
        &["--check-config"],
        &[("SWITCHBOARD_AUTH__SIGNIN__ENABLED", "true")],
        std::time::Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.signin.enabled: sign-in needs a key to sign with"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_signed_in_peer_says_hello_on_any_node_with_the_key_and_only_as_itself() {
    let a = TestNode::spawn(&signin_env(&[(
        "SWITCHBOARD_AUTH__SIGNIN__TOKEN_TTL_S",
        "120",
    )]));
    // Another node with the same configuration (not clustered: only the key matters).
    let b = TestNode::spawn(&signin_env(&[]));
    let before = now();
    let (status, _, body) = sign_in(&a).await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["expires_at", "peer_id", "token"], "{body}");
    let peer = body["peer_id"].as_str().unwrap().to_string();
    assert!(is_uuid(&peer), "{peer}");
    let exp = body["expires_at"].as_u64().unwrap();
    assert!((before + 120..=now() + 120).contains(&exp), "{exp}");
    let token = body["token"].as_str().unwrap().to_string();

    // `hello` without a peer id takes the token's.
    let mut c = Client::connect(&b.ws_url()).await;
    let w = c.hello_with(json!({"type": "hello", "token": token})).await;
    assert_eq!(w["peer_id"], peer.as_str(), "{w}");
    // The token is for that id only.
    let mut d = Client::connect(&b.ws_url()).await;
    d.send_json(json!({"type": "hello", "peer_id": "someone-else", "token": token}))
        .await;
    let e = d.recv_error("unauthorized").await;
    assert_eq!(
        e["message"], "token `sub` does not match the peer id",
        "{e}"
    );

    // A second sign-in is another peer.
    let (_, _, again) = sign_in(&a).await;
    assert_ne!(again["peer_id"], body["peer_id"]);
}

#[tokio::test]
async fn the_operators_own_tokens_keep_working_beside_sign_in() {
    let node = TestNode::spawn(&signin_env(&[]));
    let own = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = Client::connect(&node.ws_url()).await;
    let w = c
        .hello_with(json!({"type": "hello", "peer_id": "alice", "token": own}))
        .await;
    assert_eq!(w["peer_id"], "alice");
}

#[tokio::test]
async fn a_private_key_signs_tokens_its_public_key_verifies() {
    let public = format!("[\"{}\"]", fixture("jwt/ed25519-public.pem"));
    let private = fixture("jwt/ed25519-private.pem");
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_AUTH__JWT__PUBLIC_KEYS", public.as_str()),
        ("SWITCHBOARD_AUTH__SIGNIN__ENABLED", "true"),
        ("SWITCHBOARD_AUTH__SIGNIN__PRIVATE_KEY", private.as_str()),
    ]);
    let (status, _, body) = sign_in(&node).await;
    assert_eq!(status, 200, "{body}");
    let header = jsonwebtoken::decode_header(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let mut c = Client::connect(&node.ws_url()).await;
    let w = c
        .hello_with(json!({"type": "hello", "token": body["token"]}))
        .await;
    assert_eq!(w["peer_id"], body["peer_id"]);
}

#[tokio::test]
async fn sign_in_is_limited_per_address() {
    let node = TestNode::spawn(&signin_env(&[
        ("SWITCHBOARD_AUTH__SIGNIN__RATE_PER_MINUTE", "1"),
        ("SWITCHBOARD_AUTH__SIGNIN__BURST", "2"),
    ]));
    for _ in 0..2 {
        assert_eq!(sign_in(&node).await.0, 200);
    }
    let (status, retry, body) = sign_in(&node).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate-limited", "{body}");
    // One a minute: the next in at most 60 s.
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(
        metric(&node, "switchboard_signins_total{outcome=\"issued\"}").await,
        2.0
    );
    assert_eq!(
        metric(&node, "switchboard_signins_total{outcome=\"rate-limited\"}").await,
        1.0
    );
}
