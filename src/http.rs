//! The HTTP door: the WebSocket upgrade, probes, metrics and the rooms API.
//!
//! Every error is JSON `{"error": {"code", "message"}}` with a fitting status,
//! built in one place ([`ApiError`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::metrics as m;
use crate::node::Node;
use crate::protocol::{Codec, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::session::{self, ConnInfo};
use crate::types::RoomName;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// An HTTP error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (self.status, body).into_response()
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(get_room))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint")
        })
        .with_state(state)
}

async fn ws_upgrade(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    if node.is_draining() {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "draining").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is shutting down; connect to another",
        ));
    }
    let Ok(permit) = node.conn_limit.clone().try_acquire_owned() else {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "limit").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            "node is at its connection limit; connect to another",
        ));
    };
    let token = node.tracker.token();
    let lim = &node.cfg.limits;
    let max = lim.max_frame_bytes;
    // The largest message the server writes is a `joined` list of a full room;
    // the write buffer (which grows only while the client is slow) must hold it.
    let full_room = lim.max_peers_per_room * (lim.max_meta_bytes + lim.max_name_bytes + 64);
    let write_cap = (max * 4).max(full_room).max(1 << 20);
    let ws = ws
        .protocols([SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK])
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(write_cap);
    let codec = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(Codec::from_subprotocol);
    let info = ConnInfo {
        observed: addr,
        codec,
    };
    Ok(ws
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| session::run(node, socket, info, permit, token)))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.node.not_ready_reason() {
        None => Json(json!({"ready": true, "node": st.node.id})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "node": st.node.id, "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
}

fn check_admin(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = &st.node.cfg.http.admin_token;
    if token.is_empty() {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        ))
    }
}

/// Compares without an early exit, so response time says nothing about how
/// much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "store call failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster-unavailable",
        "the cluster backend is unavailable",
    )
}

async fn list_rooms(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_admin(&st, &headers)?;
    let rooms = st.node.store().list_rooms().await.map_err(unavailable)?;
    Ok(Json(json!({"rooms": rooms})).into_response())
}

async fn get_room(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    check_admin(&st, &headers)?;
    let room = RoomName::parse(&room, st.node.cfg.limits.max_name_bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-room",
            format!("room name {e}"),
        )
    })?;
    match st
        .node
        .store()
        .room_members(&room)
        .await
        .map_err(unavailable)?
    {
        Some(members) => Ok(Json(json!({"room": room, "members": members})).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "room-not-found",
            format!("room `{room}` has no members"),
        )),
    }
}
