//! The older rendezvous service's pages and door, kept in their own shapes
//! for the workers and tools written against it: `GET /` (a short status),
//! `GET /debug/list_workers` (its listing, an operator endpoint behind
//! [`super::api::admin_guard`]) and the worker door
//! `GET /ws/register/{worker_id}`, whose sessions speak the
//! [`LegacyWorker`] dialect.
//!
//! The pages answer 200 in the older service's JSON, not the API's; the
//! door's refusals are the API's JSON errors (the older service's worker
//! retries after any failure, whatever the body says).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::upgrade::{admit, observed_addr};
use super::AppState;
use crate::connection;
use crate::dialect::legacy_worker::LegacyWorker;
use crate::dialect::ConnInfo;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::types::PeerId;
use crate::ws::WsUpgrade;

/// `/` and the worker door (open).
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/", get(status)).route(
        "/ws/register/{worker_id}",
        // GET: the HTTP/1.1 upgrade; CONNECT: WebSocket over HTTP/2 (RFC 8441).
        get(legacy_upgrade).connect(legacy_upgrade),
    )
}

/// `/debug/list_workers`, without the guard (the router adds it over these
/// and the operator API at once).
pub(super) fn operator_routes() -> Router<AppState> {
    Router::new().route("/debug/list_workers", get(debug_list_workers))
}

/// `GET /ws/register/{worker_id}`: a worker of the older rendezvous service.
/// With auth configured it must present a token for its worker id
/// (`Authorization: Bearer`, or `?token=`); without, it is admitted as
/// `auth.anonymous` allows (else 401). A worker id a live connection holds
/// is refused with 409 `peer-id-taken` unless a token for it was given: the
/// older service's worker retries after any failure, so it gets in once the
/// previous connection is gone.
async fn legacy_upgrade(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(worker_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    let worker = PeerId::parse(&worker_id, node.core.cfg.limits.max_name_bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidPeerId, format!("worker id {e}")))?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let token_for_id = node
        .admit_without_hello(bearer.or(from_query).as_deref(), &worker)
        .map_err(|message| {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "unauthorized").increment(1);
            ApiError::new(ErrorCode::Unauthorized, message)
        })?;
    if !token_for_id && node.peer_id_held(&worker).await {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "peer-id-taken").increment(1);
        return Err(ApiError::new(
            ErrorCode::PeerIdTaken,
            format!(
                "worker id `{worker}` is connected; retry once that connection has ended, \
                 or present a token for the id to replace it"
            ),
        ));
    }
    let addr = observed_addr(&node, peer, &headers);
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    let info = ConnInfo { observed: addr };
    let dialect = if token_for_id {
        LegacyWorker::with_token(worker)
    } else {
        LegacyWorker::new(worker)
    };
    Ok(ws.on_upgrade(None, move |socket| {
        connection::run(node, socket, info, dialect, permit, token)
    }))
}

/// `GET /`: a short status (the older rendezvous service's root).
async fn status(State(st): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "service": "switchboard",
        "version": env!("CARGO_PKG_VERSION"),
        "node": st.node.core.id,
    }))
}

/// `GET /debug/list_workers`: the older rendezvous service's listing, cluster-wide.
async fn debug_list_workers(State(st): State<AppState>) -> Result<Response, ApiError> {
    let workers = st
        .node
        .core
        .store
        .list_workers()
        .await
        .map_err(ApiError::store_unavailable)?;
    let mut map = serde_json::Map::new();
    for w in &workers {
        let observed: Option<SocketAddr> = w.observed_addr.parse().ok();
        map.insert(
            w.peer_id.to_string(),
            json!({
                "websocket_observed_ip": observed.map(|a| a.ip().to_string()),
                "websocket_observed_port": observed.map(|a| a.port()),
                "http_reported_public_ip": w.public_ip,
                "websocket_connected": true,
            }),
        );
    }
    Ok(Json(json!({"connected_workers_count": map.len(), "workers": map})).into_response())
}
