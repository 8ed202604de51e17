//! The game P2P coordinator's signaling WebSocket (LEGACY-PROTOCOLS.md
//! §1.5), at `/api/signaling/ws` (the old v0 path, the WARP client's) and
//! `/api/v1/signaling/ws` (v1), speaking [`Coordinator`].
//!
//! Query parameters, as before: `peer_id` (required: without it, or empty,
//! the upgrade is refused with 403, as the old service refused it before
//! accepting), `session_id` (joined right after the accept), `token` (an
//! HS256 or other JWT the node's `auth.jwt` keys verify; checked after the
//! accept, as before, so a bad one gets the old error frame and close
//! 1008). Added: `zone_id`, joined right after the accept too.
//!
//! A request at these paths that is not a WebSocket upgrade gets 404, as
//! before. The node's admission (drain, connection limit) applies as for
//! every door.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use super::upgrade::{admit, observed_addr};
use super::AppState;
use crate::connection;
use crate::dialect::coordinator::{Admission, Coordinator};
use crate::dialect::ConnInfo;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::types::PeerId;
use crate::ws::WsUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;

/// The WebSocket at both of the old service's paths.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/signaling/ws", get(upgrade).connect(upgrade))
        .route("/api/v1/signaling/ws", get(upgrade).connect(upgrade))
}

/// The last value of `key` in the query (FastAPI's for a `str` parameter).
fn param(query: &[(String, String)], key: &str) -> Option<String> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

async fn upgrade(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
    ws: Result<WsUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Ok(ws) = ws else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this path serves the coordinator's signaling WebSocket only",
        ));
    };
    let node = st.node;
    let Some(peer_text) = param(&query, "peer_id").filter(|p| !p.is_empty()) else {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "no-peer-id").increment(1);
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the `peer_id` query parameter is required",
        ));
    };
    let peer_id = PeerId::parse(&peer_text, node.core.cfg.limits.max_name_bytes).map_err(|e| {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "no-peer-id").increment(1);
        ApiError::new(ErrorCode::Forbidden, format!("`peer_id` {e}"))
    })?;
    let admission = Admission {
        token: param(&query, "token"),
        session_id: param(&query, "session_id"),
        zone_id: param(&query, "zone_id"),
    };
    let addr = observed_addr(&node, peer, &headers);
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    let info = ConnInfo { observed: addr };
    let dialect = Coordinator::new(peer_id, admission);
    Ok(ws.on_upgrade(None, move |socket| {
        connection::run(node, socket, info, dialect, permit, token)
    }))
}
