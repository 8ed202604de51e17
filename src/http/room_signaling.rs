//! The room signaling server's door (LEGACY-PROTOCOLS.md §2): its HTTP
//! endpoints (sign-in, rooms) and its WebSocket, which the old server
//! accepted at any path on a listener of its own.
//!
//! Served on `doors.room_signaling.http_listen` / `ws_listen` (the whole
//! path space, as the old server's two ports) and/or under
//! `doors.room_signaling.prefix` on the main listener (HTTP at
//! `{prefix}/create-room`, ..., the WebSocket at `{prefix}/ws`).
//!
//! HTTP answers are FastAPI's: compact JSON, errors `{"detail": ...}`.
//!
//! - `POST /anonymous-signin` → `{"id_token", "username"}`: a sign-in
//!   ([`crate::signin`]; `username` is the token's `sub`, which the clients
//!   use as their peer id). 503 while `auth.signin.enabled` is off, 429
//!   (with `Retry-After`) over the per-address limit.
//! - `POST /create-room` with `Authorization: Bearer <id_token>` (a bare
//!   token too: the old server removed every `"Bearer "`) → `{"room_id": 8
//!   hex, "token": 6 hex}`, an explicit room in the store with the token's
//!   SHA-256 and a lifetime of `doors.room_signaling.room_ttl_s`. No header:
//!   422 in FastAPI's validation shape; a token that does not verify: 401
//!   `Token verification failed: ...`.
//! - `POST /delete-peers-and-room`, `POST /delete-peer` (`{"peer_id"}` or
//!   `{"room_id"}`): acknowledged in the old shape, and nothing is removed
//!   (docs/DOORS.md says why: the peer left its room when its socket
//!   closed, a room ends at its lifetime, and the old calls carry no
//!   credential).
//! - `GET /health` → `{"status": "healthy", "timestamp", "version"}` (503
//!   `unhealthy` while the node is not ready).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::upgrade::{admit, observed_addr};
use super::AppState;
use crate::connection;
use crate::dialect::room_signaling::RoomSignaling;
use crate::dialect::ConnInfo;
use crate::rooms::token_hash;
use crate::signin::SignInError;
use crate::store::{now_ms, RoomRecord, StoreError};
use crate::types::{PeerId, RoomName};
use crate::ws::WsUpgrade;

/// The HTTP endpoints, at the root of their own listener (the main
/// listener nests them under the prefix).
pub(super) fn http_routes() -> Router<AppState> {
    Router::new()
        .route("/anonymous-signin", post(anonymous_signin))
        .route("/create-room", post(create_room))
        .route("/delete-peers-and-room", post(delete))
        .route("/delete-peer", post(delete))
        .route("/health", get(health))
}

/// The WebSocket, at any path of its own listener.
pub(super) fn ws_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(ws_upgrade).connect(ws_upgrade))
        .route("/{*path}", get(ws_upgrade).connect(ws_upgrade))
}

/// What the main listener serves under the prefix: the HTTP endpoints and
/// the WebSocket at `/ws`.
pub(super) fn prefixed_routes() -> Router<AppState> {
    http_routes().route("/ws", get(ws_upgrade).connect(ws_upgrade))
}

/// A WebSocket of the door: no credentials at the upgrade (they come in
/// `register`), the node's admission as for every door.
async fn ws_upgrade(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    let addr = observed_addr(&node, peer, &headers);
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    let info = ConnInfo { observed: addr };
    Ok(ws.on_upgrade(None, move |socket| {
        connection::run(node, socket, info, RoomSignaling::new(), permit, token)
    }))
}

/// FastAPI's error body: `{"detail": text}`.
fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": text.into() }))).into_response()
}

/// One item of FastAPI's (pydantic's) validation error list, its keys in
/// their order.
#[derive(Serialize)]
struct Invalid {
    #[serde(rename = "type")]
    ty: &'static str,
    loc: Vec<Value>,
    msg: &'static str,
    input: Value,
}

/// 422 with FastAPI's validation body.
fn unprocessable(item: Invalid) -> Response {
    #[derive(Serialize)]
    struct Body {
        detail: Vec<Invalid>,
    }
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(Body { detail: vec![item] }),
    )
        .into_response()
}

/// `POST /anonymous-signin`.
async fn anonymous_signin(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    #[derive(Serialize)]
    struct SignedIn<'a> {
        id_token: &'a str,
        username: &'a str,
    }
    let from = observed_addr(&st.node, peer, &headers).ip();
    match st.node.signin.issue(from) {
        Ok(t) => Json(SignedIn {
            id_token: &t.token,
            username: t.peer_id.as_str(),
        })
        .into_response(),
        Err(SignInError::Disabled) => detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "Anonymous sign-in failed: sign-in is off on this server (auth.signin.enabled)",
        ),
        Err(SignInError::RateLimited(wait)) => {
            let secs = wait.as_secs_f64().ceil() as u64;
            let mut r = detail(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Anonymous sign-in failed: too many sign-ins from this address; retry in {secs} s"
                ),
            );
            r.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("digits"),
            );
            r
        }
        Err(SignInError::Failed) => detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Anonymous sign-in failed: see the server's log",
        ),
    }
}

/// Lower-case hex of a fresh UUID v4, cut to `n` characters (the old
/// server's `str(uuid.uuid4())[:n]`).
fn random_hex(n: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..n].to_string()
}

/// `POST /create-room`.
async fn create_room(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return unprocessable(Invalid {
            ty: "missing",
            loc: vec![json!("header"), json!("authorization")],
            msg: "Field required",
            input: Value::Null,
        });
    };
    // As the old server: every "Bearer " removed, so a bare token works too.
    let token = value.to_str().unwrap_or_default().replace("Bearer ", "");
    let claims = match st.node.verify_token(Some(&token), None) {
        Ok(c) => c,
        Err(e) => {
            return detail(
                StatusCode::UNAUTHORIZED,
                format!("Token verification failed: {e}"),
            )
        }
    };
    let ttl_ms = st.node.core.cfg.doors.room_signaling.room_ttl_s * 1000;
    // 32 random bits per id: a collision is rare, and refused by the store
    // (a room of that name exists); a few tries then.
    for _ in 0..8 {
        let room_id = random_hex(8);
        let room_token = random_hex(6);
        let now = now_ms();
        let record = RoomRecord {
            name: RoomName::from_trusted(room_id.as_str()),
            created_at: now,
            expires_at: Some(now + ttl_ms),
            max_peers: None,
            token_hash: Some(token_hash(&room_token)),
            meta: json!({"created_by": claims.sub, "door": "room-signaling"}),
            explicit: true,
        };
        match st.node.core.store.create_room(&record).await {
            Ok(()) => {
                #[derive(Serialize)]
                struct Created {
                    room_id: String,
                    token: String,
                }
                return Json(Created {
                    room_id,
                    token: room_token,
                })
                .into_response();
            }
            Err(StoreError::RoomExists) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "create-room: the store refused or is unreachable");
                return detail(StatusCode::SERVICE_UNAVAILABLE, "Room storage unavailable");
            }
        }
    }
    detail(
        StatusCode::SERVICE_UNAVAILABLE,
        "Room storage unavailable: no free room id",
    )
}

/// `POST /delete-peers-and-room` and `POST /delete-peer`: the old shapes,
/// nothing removed (see the module docs).
async fn delete(State(st): State<AppState>, body: Bytes) -> Response {
    if body.iter().all(u8::is_ascii_whitespace) {
        return unprocessable(Invalid {
            ty: "missing",
            loc: vec![json!("body")],
            msg: "Field required",
            input: Value::Null,
        });
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return unprocessable(Invalid {
                ty: "json_invalid",
                loc: vec![json!("body"), json!(0)],
                msg: "JSON decode error",
                input: json!({}),
            })
        }
    };
    let Some(obj) = v.as_object() else {
        return unprocessable(Invalid {
            ty: "dict_type",
            loc: vec![json!("body")],
            msg: "Input should be a valid dictionary",
            input: v,
        });
    };
    let node = &st.node;
    let max = node.core.cfg.limits.max_name_bytes;
    let status = if let Some(room) = obj.get("room_id").and_then(Value::as_str) {
        let found = match RoomName::parse(room, max) {
            Ok(r) => match node.core.store.get_room(&r).await {
                Ok(found) => found.is_some_and(|r| r.explicit),
                Err(e) => return ApiError::store_unavailable(e).into_response(),
            },
            Err(_) => false,
        };
        if found {
            "room active"
        } else {
            "room not found"
        }
    } else if let Some(peer) = obj.get("peer_id").and_then(Value::as_str) {
        let held = match PeerId::parse(peer, max) {
            Ok(p) => node.peer_id_held(&p).await,
            Err(_) => false,
        };
        if held {
            "peer connected"
        } else {
            "peer not found"
        }
    } else {
        return unprocessable(Invalid {
            ty: "missing",
            loc: vec![json!("body"), json!("peer_id")],
            msg: "Field required",
            input: v.clone(),
        });
    };
    Json(json!({ "status": status })).into_response()
}

/// `GET /health`.
async fn health(State(st): State<AppState>) -> Response {
    #[derive(Serialize)]
    struct Health<'a> {
        status: &'a str,
        timestamp: String,
        version: &'a str,
    }
    let (code, status) = match st.node.core.not_ready_reason() {
        None => (StatusCode::OK, "healthy"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
    };
    let body = Health {
        status,
        timestamp: iso_utc(now_ms()),
        version: env!("CARGO_PKG_VERSION"),
    };
    (code, Json(body)).into_response()
}

/// `datetime.utcnow().isoformat()` of a Unix time in milliseconds: naive
/// UTC with microseconds (none when zero), no zone
/// (`2025-11-11T03:57:12.491000`).
pub fn iso_utc(ms: u64) -> String {
    let mut out = crate::time::iso_seconds(ms / 1000);
    // Python leaves the fraction out when it is zero.
    if !ms.is_multiple_of(1000) {
        out.push_str(&format!(".{:06}", (ms % 1000) * 1000));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::iso_utc;

    #[test]
    fn timestamps_are_pythons_naive_isoformat() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00");
        // 2025-11-11T03:57:12.491Z
        assert_eq!(iso_utc(1_762_833_432_491), "2025-11-11T03:57:12.491000");
        // A leap day.
        assert_eq!(iso_utc(1_709_164_800_000), "2024-02-29T00:00:00");
        assert_eq!(iso_utc(1_709_164_800_001), "2024-02-29T00:00:00.001000");
    }
}
