//! The operator API: `GET /api/workers`, `POST /api/connect`, and the guard
//! that covers every operator endpoint ([`admin_guard`]), the room reads of
//! [`super::rooms`] included.
//!
//! These read what an operator reads (peers' addresses and endpoints, room
//! members) or do what an operator does (pair two workers). The router
//! ([`super::router`]) puts the guard as one layer over them together with
//! the older service's listing (`/debug/list_workers`, [`super::legacy`]):
//! no handler checks for itself. The answers read the cluster store, so they
//! are cluster-wide; a store that cannot be reached is 503
//! `cluster-unavailable`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::store::{PairError, Which, WorkerRecord};
use crate::types::PeerId;

/// The operator API's routes, without the guard (the router adds it over
/// these and the legacy listing at once).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/workers", get(list_workers))
        .route("/api/connect", post(connect_workers))
}

/// Forwarding headers: a request carrying one came through a proxy (or says
/// it did), so its TCP peer being loopback says nothing about its client.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The guard of every operator endpoint. With `http.admin_token` set, the
/// request needs `Authorization: Bearer <token>` (else 401), from anywhere.
/// Without one it is served only to plain loopback: the TCP peer is a
/// loopback address and the request carries no forwarding header, since a
/// proxy on the same host (config/nginx.conf) connects from loopback on
/// behalf of anyone; everything else gets 403 `forbidden`.
///
/// It runs before the route's method check, so a request it refuses gets
/// 401/403 whatever its method, and one it admits may then get 405.
pub async fn admin_guard(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match check_admin(&st, peer, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The guard's decision for a request, counted in
/// `switchboard_admin_refused_total` when it refuses.
pub(super) fn check_admin(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    admin_check(st, peer, headers).map_err(|(reason, e)| {
        metrics::counter!(m::ADMIN_REFUSED, "reason" => reason).increment(1);
        e
    })
}

/// The guard's decision, uncounted (for endpoints that admit others too,
/// `POST /api/rooms`): the refusal carries its metric label.
pub(super) fn admin_check(
    st: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), (&'static str, ApiError)> {
    let token = &st.node.core.cfg.http.admin_token;
    if token.is_empty() {
        let forwarded = FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
        if peer.ip().to_canonical().is_loopback() && !forwarded {
            return Ok(());
        }
        return Err((
            "forbidden",
            ApiError::new(
                ErrorCode::Forbidden,
                "operator endpoints answer only local requests without a forwarding header \
                 while http.admin_token is not set; set it and send `Authorization: Bearer <token>`",
            ),
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
        Ok(())
    } else {
        Err((
            "unauthorized",
            ApiError::new(
                ErrorCode::Unauthorized,
                "a valid admin bearer token is required",
            ),
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

/// A worker as `GET /api/workers` shows it.
fn worker_view(w: &WorkerRecord) -> Value {
    json!({
        "peer_id": w.peer_id,
        "node": w.node,
        "dialect": w.door,
        "observed_addr": w.observed_addr,
        "public_ip": w.public_ip,
        "udp": w.udp,
        "pool": w.pool,
        "state": w.state,
        "pairing_id": w.pairing_id,
        "partner": w.partner,
        "meta": w.meta,
    })
}

/// `GET /api/workers`: every worker in the cluster.
async fn list_workers(State(st): State<AppState>) -> Result<Response, ApiError> {
    let workers = st
        .node
        .core
        .store
        .list_workers()
        .await
        .map_err(ApiError::store_unavailable)?;
    let list: Vec<Value> = workers.iter().map(worker_view).collect();
    Ok(Json(json!({"count": list.len(), "workers": list})).into_response())
}

/// `POST /api/connect {worker_a_id, worker_b_id}`: pairs two workers wherever
/// they are connected; `worker_a_id` is the initiator.
async fn connect_workers(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let bad = |msg: &str| ApiError::new(ErrorCode::InvalidMessage, msg);
    let v: Value = serde_json::from_slice(&body).map_err(|_| bad("the body must be JSON"))?;
    let max = st.node.core.cfg.limits.max_name_bytes;
    let id = |field: &str| {
        let s = v
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("`{field}` (a string) is required")))?;
        PeerId::parse(s, max)
            .map_err(|e| ApiError::new(ErrorCode::InvalidPeerId, format!("`{field}` {e}")))
    };
    let (a, b) = (id("worker_a_id")?, id("worker_b_id")?);
    let name = |w: Which| match w {
        Which::A => ("worker_a_id", &a),
        Which::B => ("worker_b_id", &b),
    };
    match st.node.rdv.connect_workers(&a, &b).await {
        Ok((pairing_id, ra, rb)) => Ok(Json(json!({
            "pairing_id": pairing_id,
            "initiator": worker_view(&ra),
            "responder": worker_view(&rb),
        }))
        .into_response()),
        Err(PairError::NotFound(w)) => {
            let (field, id) = name(w);
            Err(ApiError::new(
                ErrorCode::WorkerNotFound,
                format!("worker `{id}` ({field}) is not a connected worker"),
            ))
        }
        Err(PairError::AlreadyPaired(w)) => {
            let (field, id) = name(w);
            Err(ApiError::new(
                ErrorCode::AlreadyPaired,
                format!("worker `{id}` ({field}) is already paired"),
            ))
        }
        Err(PairError::SameWorker) => Err(ApiError::new(
            ErrorCode::SameWorker,
            "worker_a_id and worker_b_id name the same worker",
        )),
        Err(e) => Err(ApiError::store_unavailable(e)),
    }
}
