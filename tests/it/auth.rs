//! JWT authentication of `hello`: HS256 with a shared secret, RS256, ES256
//! and EdDSA with PEM public keys (test-only keys in tests/fixtures/jwt).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::helpers::{fixture, Client, TestNode};

const SECRET: &str = "integration-test-secret";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iat": now(), "exp": now() + 600})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn private_key(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("jwt/{name}-private.pem"))).unwrap()
}

fn signed(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&private_key("rs256")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&private_key("es256")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&private_key("ed25519")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn hs256_node() -> TestNode {
    TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET)])
}

/// `auth.jwt.public_keys` as an environment variable: a TOML-style array of paths.
fn public_keys_env(names: &[&str]) -> String {
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", fixture(&format!("jwt/{n}-public.pem"))))
        .collect();
    format!("[{}]", paths.join(", "))
}

/// Sends `hello`; expects `unauthorized` (with the hello's id), then close 4001.
async fn refused(node: &TestNode, hello: Value) -> String {
    let mut c = node.client().await;
    let mut hello = hello;
    hello["type"] = json!("hello");
    hello["id"] = json!("auth");
    c.send_json(hello).await;
    let e = c.recv_error("unauthorized").await;
    assert_eq!(e["id"], "auth", "the error answers the hello: {e}");
    assert_eq!(c.expect_close().await, (4001, "unauthorized".to_string()));
    e["message"].as_str().unwrap().to_string()
}

/// Sends `hello` and expects a welcome for `peer`.
async fn accepted(node: &TestNode, hello: Value, peer: &str) -> Client {
    let mut c = node.client().await;
    let mut hello = hello;
    hello["type"] = json!("hello");
    let w = c.hello_with(hello).await;
    assert_eq!(w["peer_id"], peer);
    c
}

#[tokio::test]
async fn hs256_token_with_matching_sub_is_accepted() {
    let node = hs256_node();
    let mut a = accepted(
        &node,
        json!({"peer_id": "alice", "token": hs256(&claims("alice"), SECRET)}),
        "alice",
    )
    .await;
    let mut b = accepted(
        &node,
        json!({"peer_id": "bob", "token": hs256(&claims("bob"), SECRET)}),
        "bob",
    )
    .await;
    a.send_json(json!({"type": "signal", "to": "bob", "kind": "offer"}))
        .await;
    assert_eq!(b.recv_type("signal").await["from"], "alice");
}

#[tokio::test]
async fn hello_without_peer_id_takes_sub() {
    let node = hs256_node();
    let mut c = accepted(
        &node,
        json!({"token": hs256(&claims("from-sub"), SECRET)}),
        "from-sub",
    )
    .await;
    c.ping().await;
}

#[tokio::test]
async fn missing_token_is_unauthorized() {
    let node = hs256_node();
    refused(&node, json!({"peer_id": "alice"})).await;
    refused(&node, json!({"peer_id": "alice", "token": ""})).await;
    // The refused peer was never registered.
    let mut b = accepted(
        &node,
        json!({"peer_id": "bob", "token": hs256(&claims("bob"), SECRET)}),
        "bob",
    )
    .await;
    b.send_json(json!({"type": "signal", "id": 1, "to": "alice", "kind": "offer"}))
        .await;
    b.recv_error("peer-not-found").await;
}

#[tokio::test]
async fn wrong_secret_is_unauthorized() {
    let node = hs256_node();
    refused(
        &node,
        json!({"peer_id": "alice", "token": hs256(&claims("alice"), "not-the-secret")}),
    )
    .await;
}

#[tokio::test]
async fn expired_token_is_unauthorized() {
    let node = hs256_node();
    let old = json!({"sub": "alice", "iat": now() - 7200, "exp": now() - 3600});
    let msg = refused(
        &node,
        json!({"peer_id": "alice", "token": hs256(&old, SECRET)}),
    )
    .await;
    assert!(msg.contains("expired"), "{msg}");
    // Within the configured leeway (30 s) an expired token still passes.
    let recent = json!({"sub": "alice", "exp": now() - 5});
    accepted(
        &node,
        json!({"peer_id": "alice", "token": hs256(&recent, SECRET)}),
        "alice",
    )
    .await;
}

#[tokio::test]
async fn token_without_exp_is_unauthorized() {
    let node = hs256_node();
    refused(
        &node,
        json!({"peer_id": "alice", "token": hs256(&json!({"sub": "alice"}), SECRET)}),
    )
    .await;
}

#[tokio::test]
async fn sub_mismatch_is_unauthorized() {
    let node = hs256_node();
    let msg = refused(
        &node,
        json!({"peer_id": "alice", "token": hs256(&claims("mallory"), SECRET)}),
    )
    .await;
    assert!(msg.contains("sub"), "{msg}");
}

#[tokio::test]
async fn garbage_token_is_unauthorized() {
    let node = hs256_node();
    refused(&node, json!({"peer_id": "alice", "token": "not.a.jwt"})).await;
    refused(&node, json!({"peer_id": "alice", "token": "garbage"})).await;
    // A token whose signature was tampered with.
    let t = hs256(&claims("alice"), SECRET);
    let tampered = format!("{}x", &t[..t.len() - 1]);
    refused(&node, json!({"peer_id": "alice", "token": tampered})).await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_AUTH__JWT__HS256_SECRET", SECRET),
        ("SWITCHBOARD_AUTH__JWT__ISSUER", "https://issuer.test"),
        ("SWITCHBOARD_AUTH__JWT__AUDIENCE", "switchboard"),
    ]);
    let mut good = claims("alice");
    good["iss"] = json!("https://issuer.test");
    good["aud"] = json!("switchboard");
    accepted(
        &node,
        json!({"peer_id": "alice", "token": hs256(&good, SECRET)}),
        "alice",
    )
    .await;
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://elsewhere.test");
    refused(
        &node,
        json!({"peer_id": "bob", "token": hs256(&wrong_iss, SECRET)}),
    )
    .await;
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("another-service");
    refused(
        &node,
        json!({"peer_id": "bob", "token": hs256(&wrong_aud, SECRET)}),
    )
    .await;
    // An `aud` array containing the configured audience is fine.
    let mut aud_list = good.clone();
    aud_list["aud"] = json!(["other", "switchboard"]);
    accepted(
        &node,
        json!({"peer_id": "alice", "token": hs256(&aud_list, SECRET)}),
        "alice",
    )
    .await;
    // A configured issuer or audience must be present, not merely match when present.
    let mut no_iss = good.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    refused(
        &node,
        json!({"peer_id": "bob", "token": hs256(&no_iss, SECRET)}),
    )
    .await;
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    refused(
        &node,
        json!({"peer_id": "bob", "token": hs256(&no_aud, SECRET)}),
    )
    .await;
}

#[tokio::test]
async fn token_not_yet_valid_is_unauthorized() {
    let node = hs256_node();
    let mut future = claims("alice");
    future["nbf"] = json!(now() + 3600);
    refused(
        &node,
        json!({"peer_id": "alice", "token": hs256(&future, SECRET)}),
    )
    .await;
    // Within the leeway (30 s), an `nbf` a few seconds ahead passes.
    let mut soon = claims("alice");
    soon["nbf"] = json!(now() + 5);
    accepted(
        &node,
        json!({"peer_id": "alice", "token": hs256(&soon, SECRET)}),
        "alice",
    )
    .await;
}

#[tokio::test]
async fn invalid_sub_without_peer_id_is_unauthorized() {
    let node = hs256_node();
    let long_sub = "s".repeat(129);
    let msg = refused(&node, json!({"token": hs256(&claims(&long_sub), SECRET)})).await;
    assert!(msg.contains("sub"), "{msg}");
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_accepted_with_public_keys() {
    let keys = public_keys_env(&["rs256", "es256", "ed25519"]);
    let node = TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__PUBLIC_KEYS", &keys)]);
    for (alg, peer) in [
        (Algorithm::RS256, "rsa-peer"),
        (Algorithm::ES256, "ec-peer"),
        (Algorithm::EdDSA, "ed-peer"),
    ] {
        let mut c = accepted(
            &node,
            json!({"peer_id": peer, "token": signed(alg, &claims(peer))}),
            peer,
        )
        .await;
        c.ping().await;
    }
    // Without a peer id, the sub is taken from an asymmetric token too.
    accepted(
        &node,
        json!({"token": signed(Algorithm::EdDSA, &claims("ed-sub"))}),
        "ed-sub",
    )
    .await;
}

#[tokio::test]
async fn asymmetric_tokens_need_a_matching_key() {
    // Only the RSA key is configured: EC and Ed25519 tokens are refused, and so
    // is an HS256 token "signed" with the RSA public key (algorithm confusion).
    let keys = public_keys_env(&["rs256"]);
    let node = TestNode::spawn(&[("SWITCHBOARD_AUTH__JWT__PUBLIC_KEYS", &keys)]);
    refused(
        &node,
        json!({"peer_id": "p", "token": signed(Algorithm::ES256, &claims("p"))}),
    )
    .await;
    refused(
        &node,
        json!({"peer_id": "p", "token": signed(Algorithm::EdDSA, &claims("p"))}),
    )
    .await;
    let public = std::fs::read_to_string(fixture("jwt/rs256-public.pem")).unwrap();
    refused(
        &node,
        json!({"peer_id": "p", "token": hs256(&claims("p"), &public)}),
    )
    .await;
    let mut expired = claims("p");
    expired["exp"] = json!(now() - 3600);
    refused(
        &node,
        json!({"peer_id": "p", "token": signed(Algorithm::RS256, &expired)}),
    )
    .await;
    accepted(
        &node,
        json!({"peer_id": "p", "token": signed(Algorithm::RS256, &claims("p"))}),
        "p",
    )
    .await;
}

#[tokio::test]
async fn public_keys_can_be_given_in_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    std::fs::write(
        &file,
        format!(
            "[auth.jwt]\npublic_keys = [{:?}]\nhs256_secret = {:?}\n",
            fixture("jwt/ed25519-public.pem"),
            SECRET
        ),
    )
    .unwrap();
    let node = TestNode::spawn_with_args(&["--config", file.to_str().unwrap()], &[]);
    accepted(
        &node,
        json!({"peer_id": "e", "token": signed(Algorithm::EdDSA, &claims("e"))}),
        "e",
    )
    .await;
    accepted(
        &node,
        json!({"peer_id": "h", "token": hs256(&claims("h"), SECRET)}),
        "h",
    )
    .await;
    refused(
        &node,
        json!({"peer_id": "r", "token": signed(Algorithm::RS256, &claims("r"))}),
    )
    .await;
}

#[tokio::test]
async fn open_node_accepts_any_peer_without_token() {
    let node = TestNode::spawn(&[]);
    node.wait_log_async(
        "anonymous peers allowed because listening on loopback",
        std::time::Duration::from_secs(5),
    )
    .await;
    accepted(&node, json!({"peer_id": "anyone"}), "anyone").await;
    // A token is ignored when auth is off.
    accepted(&node, json!({"peer_id": "x", "token": "garbage"}), "x").await;
}
