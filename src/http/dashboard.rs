//! The dashboard server's door (LEGACY-PROTOCOLS.md §3): its WebSocket at
//! exactly `/ws/`, `GET /api/config` and `GET /health`, on one listener as
//! the old server had them.
//!
//! Served on `doors.dashboard.listen` (the whole path space) and/or under
//! `doors.dashboard.prefix` on the main listener (`{prefix}/ws/`,
//! `{prefix}/api/config`, `{prefix}/health`).
//!
//! - `/ws/` (a query string is allowed): the WebSocket, speaking
//!   [`DashboardConn`]. The old server had no authentication; here a
//!   socket is admitted as `auth.anonymous` admits peers without a token,
//!   judged by the address of the listener it came through (so the
//!   default admits them only on a loopback listener), or else with a JWT
//!   (`?token=` or `Authorization: Bearer`, any `sub`); refused with 401.
//!   An upgrade at `/ws` or `/` (under a prefix: `{prefix}/ws`,
//!   `{prefix}` and `{prefix}/`) is refused with 400, as the old server's
//!   WebSocket library refused a wrong path (JSON body here, saying where
//!   the WebSocket is).
//! - `/api/config`: where the browser connects (`WEBSOCKET_URL`:
//!   `doors.dashboard.websocket_url`, or built from the request's host,
//!   the prefix and `/ws/`) and its `STUN_SERVERS`, with CORS `*` as before.
//! - `/health`: 200 with the cluster-wide socket count and room list (the
//!   old one answered 500).
//!
//! Not served: `/api/env` (it handed out the old server's `.env`, secrets
//! included) and static files (the browser app is served by whatever
//! served it before); both answer 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, OriginalUri, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::upgrade::{admit, observed_addr};
use super::AppState;
use crate::connection;
use crate::dashboard::iso_now;
use crate::dialect::dashboard::DashboardConn;
use crate::dialect::ConnInfo;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::ws::WsUpgrade;

/// Where the door's routes are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// At the root of its own listener (`doors.dashboard.listen`).
    Own,
    /// Under this prefix on the main listener (`doors.dashboard.prefix`).
    Prefix(String),
}

impl Mount {
    fn prefix(&self) -> &str {
        match self {
            Self::Own => "",
            Self::Prefix(p) => p,
        }
    }
}

/// The door's routes for a mount (the main listener nests them under the
/// prefix).
pub(super) fn routes(mount: Mount) -> Router<AppState> {
    Router::new()
        .route("/ws/", get(upgrade).connect(upgrade))
        .route("/ws", any(wrong_path))
        .route("/", any(wrong_path))
        .route("/api/config", get(config).options(preflight))
        .route("/health", get(health))
        .layer(Extension(Arc::new(mount)))
}

/// `{prefix}/` on the main listener: the nested [`routes`] match `{prefix}`
/// but not `{prefix}/` (the router does not add the trailing slash), so
/// the path is routed here on its own and answered as `/` is: 400 with
/// where the WebSocket is for an upgrade, 404 for anything else.
pub(super) fn prefix_slash_route(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(&format!("{prefix}/"), any(wrong_path))
        .layer(Extension(Arc::new(Mount::Prefix(prefix.to_string()))))
}

/// The CORS headers of `/api/config` (the old server's, for any origin).
fn cors(res: &mut Response) {
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
}

/// `GET /ws/` (or `CONNECT` over HTTP/2): the dashboard WebSocket.
async fn upgrade(
    State(st): State<AppState>,
    Extension(mount): Extension<Arc<Mount>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    let cfg = &node.core.cfg;
    let anonymous = match (&*mount, cfg.doors.dashboard.listen) {
        (Mount::Own, Some(listen)) => cfg.anonymous_mode_at(listen),
        _ => node.anonymous_mode(),
    }
    .allows_anonymous();
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
    node.admit_door(bearer.or(from_query).as_deref(), anonymous)
        .map_err(|message| {
            metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "unauthorized").increment(1);
            ApiError::new(ErrorCode::Unauthorized, message)
        })?;
    let addr = observed_addr(&node, peer, &headers);
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    let info = ConnInfo { observed: addr };
    let dialect = DashboardConn::new(&cfg.doors.dashboard);
    Ok(ws.on_upgrade(None, move |socket| {
        connection::run(node, socket, info, dialect, permit, token)
    }))
}

/// `/ws` and `/`: a WebSocket upgrade there is refused with 400 (the old
/// server's only WebSocket path was `/ws/`); anything else is a 404 (no
/// static files here).
async fn wrong_path(
    Extension(mount): Extension<Arc<Mount>>,
    method: Method,
    headers: HeaderMap,
) -> ApiError {
    let upgrade = method == Method::CONNECT
        || headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "the dashboard WebSocket is at `{}/ws/` (with the trailing slash)",
                mount.prefix()
            ),
        )
    } else {
        ApiError::new(
            ErrorCode::NotFound,
            "no such endpoint (this door serves no static files)",
        )
    }
}

/// `/api/config`'s body, in the old server's key order.
#[derive(Serialize)]
struct ClientConfig {
    #[serde(rename = "WEBSOCKET_URL")]
    websocket_url: Option<String>,
    #[serde(rename = "NODE_ENV")]
    node_env: &'static str,
    #[serde(rename = "PORT")]
    port: u16,
    #[serde(rename = "STUN_SERVERS")]
    stun_servers: Option<Vec<StunServer>>,
}

#[derive(Serialize)]
struct StunServer {
    urls: String,
}

/// A `Host` (or `X-Forwarded-Host`) value that can go into a URL as it is.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// `GET /api/config`: where the browser connects. `WEBSOCKET_URL` is
/// `doors.dashboard.websocket_url`, or `ws[s]://<host><prefix>/ws/` from
/// the request (`wss` and the host from a trusted proxy's
/// `X-Forwarded-Proto` / `X-Forwarded-Host`), or `null` when the request
/// names no usable host (the browser then uses its page's origin).
async fn config(
    State(st): State<AppState>,
    Extension(mount): Extension<Arc<Mount>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Response {
    let node = &st.node;
    let cfg = &node.core.cfg;
    let d = &cfg.doors.dashboard;
    let proxied = node.trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
    let forwarded = |name: &str| {
        proxied
            .then(|| headers.get(name))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
    };
    let host = forwarded("x-forwarded-host")
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .filter(|h| valid_host(h));
    let https = forwarded("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let websocket_url = if d.websocket_url.is_empty() {
        host.as_ref().map(|h| {
            format!(
                "{}://{h}{}/ws/",
                if https { "wss" } else { "ws" },
                mount.prefix()
            )
        })
    } else {
        Some(d.websocket_url.clone())
    };
    let listen = match &*mount {
        Mount::Own => d.listen.unwrap_or(cfg.server.listen),
        Mount::Prefix(_) => cfg.server.listen,
    };
    let port = host
        .as_deref()
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(listen.port());
    let body = ClientConfig {
        websocket_url,
        node_env: "production",
        port,
        stun_servers: (!d.stun_servers.is_empty()).then(|| {
            d.stun_servers
                .iter()
                .map(|s| StunServer { urls: s.clone() })
                .collect()
        }),
    };
    let mut res = Json(body).into_response();
    cors(&mut res);
    // Built from the request's host: no shared cache may keep it.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `OPTIONS /api/config`: the CORS preflight (200, no body).
async fn preflight() -> Response {
    let mut res = StatusCode::OK.into_response();
    cors(&mut res);
    res
}

/// `/health`'s body: the seed's `connected_clients` at the top, and the
/// shape the old server got in 806d3b6 (`websocket.connected_clients`,
/// `rooms.total`, `rooms.list`), with cluster-wide numbers.
#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    uptime: f64,
    timestamp: String,
    endpoints: Endpoints,
    connected_clients: u64,
    websocket: Sockets,
    rooms: Rooms<'a>,
}

#[derive(Serialize)]
struct Endpoints {
    websocket: String,
    config: String,
    health: String,
}

#[derive(Serialize)]
struct Sockets {
    connected_clients: u64,
}

#[derive(Serialize)]
struct Rooms<'a> {
    total: usize,
    list: &'a RawValue,
}

/// `GET /health`: 200 with cluster-wide numbers, or 503
/// `cluster-unavailable` when the registry cannot be read.
async fn health(
    State(st): State<AppState>,
    Extension(mount): Extension<Arc<Mount>>,
) -> Result<Response, ApiError> {
    let dash = &st.node.dashboard;
    let (clients, list) = dash.status().await.map_err(ApiError::store_unavailable)?;
    let rooms: Box<RawValue> = RawValue::from_string(list.json).map_err(|e| {
        tracing::error!(error = %e, "the dashboard room list is not JSON");
        ApiError::new(ErrorCode::Internal, "the room list could not be read")
    })?;
    let p = mount.prefix();
    let body = Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime: dash.uptime().as_secs_f64(),
        timestamp: iso_now(),
        endpoints: Endpoints {
            websocket: format!("{p}/ws/"),
            config: format!("{p}/api/config"),
            health: format!("{p}/health"),
        },
        connected_clients: clients,
        websocket: Sockets {
            connected_clients: clients,
        },
        rooms: Rooms {
            total: list.rooms,
            list: &rooms,
        },
    };
    Ok(Json(body).into_response())
}
