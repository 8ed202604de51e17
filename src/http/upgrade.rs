//! The native WebSocket door, `/ws`: `GET` with the HTTP/1.1 upgrade, or
//! `CONNECT` for WebSocket over HTTP/2 (RFC 8441).
//!
//! Before the upgrade a request is admitted (`admit`): refused with 503
//! `draining` during a drain, or 503 `too-many-connections` at
//! `server.max_connections`; the permit it takes lives as long as the
//! session. The subprotocol (`switchboard.v1.json` or
//! `switchboard.v1.msgpack`) fixes the encoding of what the node sends;
//! without one, the client's first data frame does. A request that
//! is not a valid upgrade is refused by the extractor ([`WsUpgrade`]) and
//! answered as JSON by the error layer ([`super::error`]).
//!
//! The legacy worker door ([`super::legacy`]) shares `admit` and
//! `observed_addr`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::sync::OwnedSemaphorePermit;

use super::error::ApiError;
use super::forwarded::client_addr;
use super::AppState;
use crate::connection;
use crate::dialect::native::{Codec, Native, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::dialect::ConnInfo;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::node::Node;
use crate::ws::WsUpgrade;

/// `/ws`.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/ws", get(ws_upgrade).connect(ws_upgrade))
}

/// Refuses an upgrade while draining or at the connection limit.
pub(super) fn admit(node: &Node) -> Result<OwnedSemaphorePermit, ApiError> {
    if node.core.is_draining() {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "draining").increment(1);
        return Err(ApiError::new(
            ErrorCode::Draining,
            "node is shutting down; connect to another",
        ));
    }
    node.core
        .conn_limit
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "limit").increment(1);
            ApiError::new(
                ErrorCode::TooManyConnections,
                "node is at its connection limit; connect to another",
            )
        })
}

/// The address a session reports for its client ([`client_addr`] with the
/// node's proxy settings).
pub(super) fn observed_addr(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    client_addr(
        peer,
        headers,
        &node.trusted_proxies,
        node.core.cfg.http.client_ip_header,
    )
}

async fn ws_upgrade(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node: Arc<Node> = st.node;
    let addr = observed_addr(&node, peer, &headers);
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    let protocol = ws.select_protocol(&[SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK]);
    let codec = protocol.and_then(Codec::from_subprotocol);
    let info = ConnInfo { observed: addr };
    let dialect = Native::new(codec);
    Ok(ws.on_upgrade(protocol, move |socket| {
        connection::run(node, socket, info, dialect, permit, token)
    }))
}
