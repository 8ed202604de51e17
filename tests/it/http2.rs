//! WebSocket over HTTP/2 (RFC 8441, extended CONNECT) on the same port as
//! HTTP/1.1: what a proxy that speaks HTTP/2 to its backends (h2c) sends.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::ext::Protocol;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::helpers::TestNode;

const TIMEOUT: Duration = Duration::from_secs(10);

type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens an HTTP/2 connection with prior knowledge and sends the extended
/// CONNECT for `/ws`; returns the response status and, on 2xx, the socket,
/// else the JSON body.
async fn h2_connect(node: &TestNode, protocol: Option<&str>) -> (StatusCode, Result<H2Ws, Value>) {
    let tcp = crate::helpers::tcp_connect(node.addr()).await;
    let (mut send, conn) = crate::helpers::within(
        "h2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{}/ws", node.addr()))
        .header("sec-websocket-version", "13");
    if let Some(p) = protocol {
        req = req.header("sec-websocket-protocol", p);
    }
    let mut req = req.body(Empty::<Bytes>::new()).expect("request");
    req.extensions_mut()
        .insert(Protocol::from_static("websocket"));
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) may still be on
    // the way: the request is refused locally until they arrive. Bounded retry.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut res = loop {
        crate::helpers::within("h2 ready", send.ready())
            .await
            .expect("h2 connection ready");
        match crate::helpers::within("h2 CONNECT", send.send_request(clone_request(&req))).await {
            Ok(res) => break res,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(!e.is_closed(), "h2 connection closed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("extended CONNECT failed: {e}"),
        }
    };
    let status = res.status();
    if !status.is_success() {
        let body = tokio::time::timeout(TIMEOUT, res.into_body().collect())
            .await
            .expect("body in time")
            .expect("body")
            .to_bytes();
        return (
            status,
            Err(serde_json::from_slice(&body).unwrap_or(Value::Null)),
        );
    }
    if let Some(p) = protocol {
        assert_eq!(
            res.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(p),
            "subprotocol not selected over HTTP/2"
        );
    }
    let upgraded = tokio::time::timeout(TIMEOUT, hyper::upgrade::on(&mut res))
        .await
        .expect("upgrade in time")
        .expect("upgraded stream");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (status, Ok(ws))
}

fn clone_request(req: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut r = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .body(Empty::new())
        .expect("request");
    *r.headers_mut() = req.headers().clone();
    r.extensions_mut()
        .insert(Protocol::from_static("websocket"));
    r
}

async fn send(ws: &mut H2Ws, v: Value) {
    tokio::time::timeout(TIMEOUT, ws.send(Message::text(v.to_string())))
        .await
        .expect("send in time")
        .expect("send");
}

/// The next text message, parsed (pings and pongs skipped).
async fn recv(ws: &mut H2Ws) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no transport error");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_over_http2_signals_an_http1_peer_and_back() {
    let node = TestNode::spawn(&[]);
    let (status, ws) = h2_connect(&node, None).await;
    assert_eq!(status, StatusCode::OK);
    let mut a = ws.expect("socket");
    send(&mut a, json!({"type": "hello", "id": 1, "peer_id": "h2"})).await;
    let w = recv(&mut a).await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["peer_id"], "h2");
    assert_eq!(w["id"], 1);

    let mut b = node.peer("h1").await;
    send(
        &mut a,
        json!({"type": "signal", "id": "s1", "to": "h1", "kind": "offer", "data": {"sdp": "v=0"}}),
    )
    .await;
    assert_eq!(recv(&mut a).await, json!({"type": "ack", "id": "s1"}));
    assert_eq!(
        b.recv().await,
        json!({"type": "signal", "from": "h2", "kind": "offer", "data": {"sdp": "v=0"}})
    );
    b.send_json(json!({"type": "signal", "to": "h2", "kind": "answer", "data": 2}))
        .await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "signal", "from": "h1", "kind": "answer", "data": 2})
    );

    // Errors are answered on this transport too.
    send(&mut a, json!({"type": "nope", "id": 7})).await;
    let e = recv(&mut a).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["id"], 7);
    assert!(e["code"].is_string(), "{e}");

    // A clean close from the client ends the stream with the close handshake.
    tokio::time::timeout(TIMEOUT, a.close(None))
        .await
        .expect("close in time")
        .expect("close");
}

#[tokio::test]
async fn websocket_over_http2_negotiates_a_subprotocol() {
    let node = TestNode::spawn(&[]);
    let (status, ws) = h2_connect(&node, Some("switchboard.v1.json")).await;
    assert_eq!(status, StatusCode::OK);
    let mut a = ws.expect("socket");
    send(&mut a, json!({"type": "hello", "peer_id": "p"})).await;
    assert_eq!(recv(&mut a).await["type"], "welcome");
}

#[tokio::test]
async fn http2_websocket_is_refused_like_http1_when_the_node_is_full() {
    let node = TestNode::spawn(&[("SWITCHBOARD_SERVER__MAX_CONNECTIONS", "1")]);
    let _held = node.peer("first").await;
    let (status, ws) = h2_connect(&node, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let Err(body) = ws else {
        panic!("expected a refusal")
    };
    assert_eq!(body["error"]["code"], "too-many-connections", "{body}");
}
