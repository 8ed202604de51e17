//! Every HTTP error is JSON `{"error": {"code", "message"}}` with a stable
//! code, including what the framework answers by itself: 405 (with `Allow`),
//! 413 from the body cap, a request to a WebSocket door that is not an
//! upgrade, a path segment that does not decode (PROTOCOL.md §14).

use std::time::Duration;

use reqwest::header::{HeaderMap, ALLOW, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{http_client, TestNode};

/// Sends `method path` with `headers` and `body`; the status, the response
/// headers and the body as JSON (`Value::Null` when it is not JSON).
async fn request(
    node: &TestNode,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, HeaderMap, Value) {
    let mut req = http_client().request(method.clone(), node.http(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.expect("response body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// Asserts a JSON error body with `code` and a non-empty message; returns
/// the message.
fn assert_error(what: &str, headers: &HeaderMap, body: &Value, code: &str) -> String {
    assert_eq!(
        headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{what}: {body}"
    );
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{what}: {body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message in {body}"));
    assert!(!message.is_empty(), "{what}: empty message");
    message.to_string()
}

/// A method a path does not serve: 405 with the framework's `Allow` and a
/// JSON body, on every kind of route (probe, native door, operator API,
/// the older service's page, listing and door).
#[tokio::test]
async fn method_not_allowed_is_json_and_keeps_allow() {
    let node = TestNode::spawn(&[]);
    let cases = [
        (Method::POST, "/healthz", "GET,HEAD"),
        (Method::DELETE, "/metrics", "GET,HEAD"),
        (Method::POST, "/ws", "GET,HEAD,CONNECT"),
        (Method::GET, "/api/connect", "POST"),
        (Method::PUT, "/api/rooms", "POST,GET,HEAD"),
        (Method::POST, "/api/rooms/r", "DELETE,GET,HEAD"),
        (Method::POST, "/", "GET,HEAD"),
        (Method::POST, "/debug/list_workers", "GET,HEAD"),
        (Method::PUT, "/ws/register/w1", "GET,HEAD,CONNECT"),
    ];
    for (method, path, allow) in cases {
        let what = format!("{method} {path}");
        let (status, headers, body) = request(&node, method, path, &[], Vec::new()).await;
        assert_eq!(status, 405, "{what}: {body}");
        assert_eq!(
            headers.get(ALLOW).map(|v| v.to_str().unwrap()),
            Some(allow),
            "{what}"
        );
        assert_error(&what, &headers, &body, "method-not-allowed");
    }
}

/// The admin guard covers an operator route whatever the method: a request
/// it refuses gets its 401 before the method is looked at.
#[tokio::test]
async fn the_admin_guard_answers_before_the_method_check() {
    let node = TestNode::spawn(&[("SWITCHBOARD_HTTP__ADMIN_TOKEN", "s3cret-admin")]);
    let (status, headers, body) = request(&node, Method::PUT, "/api/rooms", &[], Vec::new()).await;
    assert_eq!(status, 401, "{body}");
    assert_error("PUT /api/rooms", &headers, &body, "unauthorized");
    let auth = [("authorization", "Bearer s3cret-admin")];
    let (status, headers, body) =
        request(&node, Method::PUT, "/api/rooms", &auth, Vec::new()).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(headers[ALLOW], "POST,GET,HEAD");
    assert_error("PUT /api/rooms", &headers, &body, "method-not-allowed");
}

/// A body over the API's 64 KiB is refused with 413 `payload-too-large`;
/// one just under it reaches the handler (which finds it is not JSON).
#[tokio::test]
async fn a_body_over_the_cap_is_413_json() {
    let node = TestNode::spawn(&[]);
    let json = [("content-type", "application/json")];
    let (status, headers, body) = request(
        &node,
        Method::POST,
        "/api/connect",
        &json,
        vec![b' '; 64 * 1024 + 1],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let message = assert_error("64 KiB + 1", &headers, &body, "payload-too-large");
    assert!(message.contains("65536"), "{message}");

    let (status, headers, body) = request(
        &node,
        Method::POST,
        "/api/connect",
        &json,
        vec![b'x'; 64 * 1024],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error("64 KiB", &headers, &body, "invalid-message");
}

/// A request to either WebSocket door that is not a valid upgrade gets a
/// JSON 400 `bad-request` whose message names what is wrong, one missing
/// header at a time.
#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_json() {
    let node = TestNode::spawn(&[]);
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "Connection header did not include 'upgrade'"),
        (
            &[("connection", "Upgrade")],
            "`Upgrade` header did not include 'websocket'",
        ),
        (&upgrade, "`Sec-WebSocket-Key` header missing"),
        (
            &[upgrade[0], upgrade[1], key, ("sec-websocket-version", "8")],
            "`Sec-WebSocket-Version` header did not include '13'",
        ),
    ];
    for path in ["/ws", "/ws/register/w1"] {
        for (headers, reason) in cases {
            let what = format!("GET {path} with {headers:?}");
            let (status, h, body) = request(&node, Method::GET, path, headers, Vec::new()).await;
            assert_eq!(status, 400, "{what}: {body}");
            let message = assert_error(&what, &h, &body, "bad-request");
            assert_eq!(message, reason, "{what}");
        }
    }
}

/// An upgrade request on HTTP/1.0 cannot be upgraded: 426
/// `upgrade-required`, as JSON.
#[tokio::test]
async fn an_upgrade_over_http_1_0_is_426_json() {
    let node = TestNode::spawn(&[]);
    let mut s = crate::helpers::tcp_connect(node.addr()).await;
    s.write_all(
        b"GET /ws HTTP/1.0\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "HTTP/1.0 response not ended: {read:?}"
    );
    let text = String::from_utf8(got).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.starts_with("HTTP/1.0 426 ") || head.starts_with("HTTP/1.1 426 "),
        "{head}"
    );
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("content-type: application/json")),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(body["error"]["code"], "upgrade-required", "{body}");
}

/// A path segment that is not UTF-8 once percent-decoded is a JSON 400
/// `bad-request`, on the operator API and on the worker door alike (before
/// the door looks at the upgrade headers); one that decodes but is not a
/// valid name keeps its own code.
#[tokio::test]
async fn a_bad_path_parameter_is_json_400() {
    let node = TestNode::spawn(&[]);
    for path in ["/api/rooms/%FF", "/ws/register/%C3%28"] {
        let (status, headers, body) = request(&node, Method::GET, path, &[], Vec::new()).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_error(path, &headers, &body, "bad-request");
    }
    // A worker id that decodes but is too long: checked once the request
    // is a valid upgrade.
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let path = format!("/ws/register/{}", "w".repeat(200));
    let (status, headers, body) = request(&node, Method::GET, &path, &upgrade, Vec::new()).await;
    assert_eq!(status, 400, "{body}");
    assert_error("a long worker id", &headers, &body, "invalid-peer-id");
}

/// An unknown path is 404 `not-found` whatever the method (never 405).
#[tokio::test]
async fn an_unknown_path_is_404_json_for_every_method() {
    let node = TestNode::spawn(&[]);
    for method in [Method::GET, Method::POST, Method::DELETE] {
        let (status, headers, body) =
            request(&node, method.clone(), "/nope", &[], Vec::new()).await;
        assert_eq!(status, 404, "{method}");
        let message = assert_error("/nope", &headers, &body, "not-found");
        assert_eq!(message, "no such endpoint");
    }
}

/// `/metrics` keeps the Prometheus text content type; successful answers
/// pass the error layer untouched.
#[tokio::test]
async fn metrics_keep_the_prometheus_content_type() {
    let node = TestNode::spawn(&[]);
    let res = http_client()
        .get(node.http("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = res.text().await.unwrap();
    assert!(text.contains("switchboard_"), "{text}");
    let (status, body) = node.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["service"], "switchboard", "{body}");
    let (status, body) = node.get("/debug/list_workers").await;
    assert_eq!(
        (status, body),
        (200, json!({"connected_workers_count": 0, "workers": {}}))
    );
}
