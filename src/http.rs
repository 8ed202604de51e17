//! The HTTP door: the WebSocket upgrades (native `/ws`, legacy workers at
//! `/ws/register/{worker_id}`), probes, metrics, and the rooms and workers API.
//!
//! Every error is JSON `{"error": {"code", "message"}}` with a fitting status,
//! built in one place ([`ApiError`]).
//!
//! The client's address is the socket's peer, unless that peer is a trusted
//! proxy (`http.trusted_proxies`): then it is read from the one forwarding
//! header the operator named (`http.client_ip_header`; [`client_addr`]).
//!
//! The operator endpoints (rooms, workers, pairing, the legacy listing) sit
//! behind one guard ([`admin_guard`]): `http.admin_token` when configured,
//! else plain loopback only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use crate::config::ClientIpHeader;
use crate::dialect::legacy_worker::LegacyWorker;
use crate::error::ErrorCode;
use crate::metrics as m;
use crate::node::Node;
use crate::protocol::{Codec, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use crate::session::{self, ConnInfo, Native};
use crate::store::{PairError, Which, WorkerRecord};
use crate::types::{PeerId, RoomName};
use crate::ws::WsUpgrade;

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
    // What an operator reads or does: peers' addresses and endpoints, room
    // members, pairing two workers. `/metrics` stays open: Prometheus scrapes
    // it without credentials, and it holds counts with bounded labels, never
    // a peer id or an address.
    let admin = Router::new()
        .route("/debug/list_workers", get(debug_list_workers))
        .route("/api/workers", get(list_workers))
        .route("/api/connect", post(connect_workers))
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(get_room))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin_guard,
        ));
    Router::new()
        .route("/", get(status))
        // GET: the HTTP/1.1 upgrade; CONNECT: WebSocket over HTTP/2 (RFC 8441).
        .route("/ws", get(ws_upgrade).connect(ws_upgrade))
        .route(
            "/ws/register/{worker_id}",
            get(legacy_upgrade).connect(legacy_upgrade),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(admin)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such endpoint")
        })
        .with_state(state)
}

/// The client's address: the socket's peer, or, when that peer is a trusted
/// proxy, the rightmost address in the forwarding header `which` that is not
/// itself a trusted proxy (the leftmost when all are). The port is the
/// header's when it gives one, else 0. An unparsable hop stops the walk: the
/// peer itself is then the best known address.
///
/// Only `which` is read. A proxy appends to (or sets) its own header and
/// passes the others through as the client sent them, so if a second header
/// were believed, a client could name its own address in it.
pub fn client_addr(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    which: ClientIpHeader,
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let mut chain: Vec<Option<SocketAddr>> = Vec::new();
    let lines = headers
        .get_all(which.header_name())
        .iter()
        .filter_map(|v| v.to_str().ok());
    match which {
        ClientIpHeader::Forwarded => {
            for elem in lines.flat_map(|v| v.split(',')) {
                let for_ = elem.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                });
                if let Some(v) = for_ {
                    chain.push(parse_hop(v.trim_matches('"')));
                }
            }
        }
        ClientIpHeader::XForwardedFor | ClientIpHeader::XRealIp => {
            for v in lines {
                chain.extend(v.split(',').map(|h| parse_hop(h.trim())));
            }
        }
    }
    for hop in chain.iter().rev() {
        match hop {
            Some(a) if is_trusted(a.ip()) => continue,
            Some(a) => return *a,
            None => return peer,
        }
    }
    chain.first().copied().flatten().unwrap_or(peer)
}

/// One hop of a forwarding header: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
fn parse_hop(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(SocketAddr::new(a.ip().to_canonical(), a.port()));
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip.to_canonical(), 0))
}

/// Refuses an upgrade while draining or at the connection limit.
fn admit(node: &Node) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    if node.is_draining() {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "draining").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is shutting down; connect to another",
        ));
    }
    node.conn_limit.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "limit").increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            "node is at its connection limit; connect to another",
        )
    })
}

async fn ws_upgrade(
    State(st): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    let addr = client_addr(
        addr,
        &headers,
        &node.trusted_proxies,
        node.cfg.http.client_ip_header,
    );
    let permit = admit(&node)?;
    let token = node.tracker.token();
    let protocol = ws.select_protocol(&[SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK]);
    let codec = protocol.and_then(Codec::from_subprotocol);
    let info = ConnInfo {
        observed: addr,
        codec,
    };
    Ok(ws.on_upgrade(protocol, move |socket| {
        session::run(node, socket, info, Native::new(codec), permit, token)
    }))
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
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(worker_id): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    let worker = PeerId::parse(&worker_id, node.cfg.limits.max_name_bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPeerId.as_str(),
            format!("worker id {e}"),
        )
    })?;
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
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized.as_str(),
                message,
            )
        })?;
    if !token_for_id && node.peer_id_held(&worker).await {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => "peer-id-taken").increment(1);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::PeerIdTaken.as_str(),
            format!(
                "worker id `{worker}` is connected; retry once that connection has ended, \
                 or present a token for the id to replace it"
            ),
        ));
    }
    let addr = client_addr(
        addr,
        &headers,
        &node.trusted_proxies,
        node.cfg.http.client_ip_header,
    );
    let permit = admit(&node)?;
    let token = node.tracker.token();
    let info = ConnInfo {
        observed: addr,
        codec: Some(Codec::Json),
    };
    let dialect = if token_for_id {
        LegacyWorker::with_token(worker)
    } else {
        LegacyWorker::new(worker)
    };
    Ok(ws.on_upgrade(None, move |socket| {
        session::run(node, socket, info, dialect, permit, token)
    }))
}

/// `GET /`: a short status (the older rendezvous service's root).
async fn status(State(st): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "service": "switchboard",
        "version": env!("CARGO_PKG_VERSION"),
        "node": st.node.id,
    }))
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

/// Forwarding headers: a request carrying one came through a proxy (or says
/// it did), so its TCP peer being loopback says nothing about its client.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The guard of every operator endpoint. With `http.admin_token` set, the
/// request needs `Authorization: Bearer <token>` (else 401), from anywhere.
/// Without one it is served only to plain loopback: the TCP peer is a
/// loopback address and the request carries no forwarding header, since a
/// proxy on the same host (config/nginx.conf) connects from loopback on
/// behalf of anyone; everything else gets 403 `forbidden`.
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

fn check_admin(st: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = &st.node.cfg.http.admin_token;
    if token.is_empty() {
        let forwarded = FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
        if peer.ip().to_canonical().is_loopback() && !forwarded {
            return Ok(());
        }
        metrics::counter!(m::ADMIN_REFUSED, "reason" => "forbidden").increment(1);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden.as_str(),
            "operator endpoints answer only local requests without a forwarding header \
             while http.admin_token is not set; set it and send `Authorization: Bearer <token>`",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
        Ok(())
    } else {
        metrics::counter!(m::ADMIN_REFUSED, "reason" => "unauthorized").increment(1);
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized.as_str(),
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
    let workers = st.node.store().list_workers().await.map_err(unavailable)?;
    let list: Vec<Value> = workers.iter().map(worker_view).collect();
    Ok(Json(json!({"count": list.len(), "workers": list})).into_response())
}

/// `GET /debug/list_workers`: the older rendezvous service's listing, cluster-wide.
async fn debug_list_workers(State(st): State<AppState>) -> Result<Response, ApiError> {
    let workers = st.node.store().list_workers().await.map_err(unavailable)?;
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

/// `POST /api/connect {worker_a_id, worker_b_id}`: pairs two workers wherever
/// they are connected; `worker_a_id` is the initiator.
async fn connect_workers(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let bad = |msg: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidMessage.as_str(),
            msg.to_string(),
        )
    };
    let v: Value = serde_json::from_slice(&body).map_err(|_| bad("the body must be JSON"))?;
    let max = st.node.cfg.limits.max_name_bytes;
    let id = |field: &str| {
        let s = v
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("`{field}` (a string) is required")))?;
        PeerId::parse(s, max).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidPeerId.as_str(),
                format!("`{field}` {e}"),
            )
        })
    };
    let (a, b) = (id("worker_a_id")?, id("worker_b_id")?);
    let name = |w: Which| match w {
        Which::A => ("worker_a_id", &a),
        Which::B => ("worker_b_id", &b),
    };
    match st.node.connect_workers(&a, &b).await {
        Ok((pairing_id, ra, rb)) => Ok(Json(json!({
            "pairing_id": pairing_id,
            "initiator": worker_view(&ra),
            "responder": worker_view(&rb),
        }))
        .into_response()),
        Err(PairError::NotFound(w)) => {
            let (field, id) = name(w);
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::WorkerNotFound.as_str(),
                format!("worker `{id}` ({field}) is not a connected worker"),
            ))
        }
        Err(PairError::AlreadyPaired(w)) => {
            let (field, id) = name(w);
            Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::AlreadyPaired.as_str(),
                format!("worker `{id}` ({field}) is already paired"),
            ))
        }
        Err(PairError::SameWorker) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::SameWorker.as_str(),
            "worker_a_id and worker_b_id name the same worker",
        )),
        Err(e) => Err(unavailable(e)),
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "store call failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster-unavailable",
        "the cluster backend is unavailable",
    )
}

async fn list_rooms(State(st): State<AppState>) -> Result<Response, ApiError> {
    let rooms = crate::store::all_rooms(st.node.store().as_ref())
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({"rooms": rooms})).into_response())
}

async fn get_room(
    State(st): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        use ClientIpHeader::*;
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.1, 198.51.100.2, 10.9.9.9")]);
        assert_eq!(
            client_addr(stranger, &xff, &trusted, XForwardedFor),
            stranger
        );
        assert_eq!(client_addr(proxy, &xff, &[], XForwardedFor), proxy);
        assert_eq!(
            client_addr(proxy, &xff, &trusted, XForwardedFor),
            "198.51.100.2:0".parse().unwrap()
        );
        // Several header lines form one list; all trusted: the leftmost.
        let all = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            client_addr(proxy, &all, &trusted, XForwardedFor),
            "10.0.0.1:0".parse().unwrap()
        );
        // `Forwarded`, when it is the configured header, may carry a port.
        let fwd = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.7"#,
            ),
            ("x-forwarded-for", "203.0.113.1"),
        ]);
        assert_eq!(
            client_addr(proxy, &fwd, &trusted, Forwarded),
            "[2001:db8::1]:4711".parse().unwrap()
        );
        // An unparsable hop stops the walk at the proxy itself.
        let junk = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_addr(proxy, &junk, &trusted, Forwarded), proxy);
        // No header: the proxy.
        assert_eq!(
            client_addr(proxy, &HeaderMap::new(), &trusted, XForwardedFor),
            proxy
        );
        // X-Real-IP: the one address the proxy set.
        let real = headers(&[("x-real-ip", "198.51.100.9")]);
        assert_eq!(
            client_addr(proxy, &real, &trusted, XRealIp),
            "198.51.100.9:0".parse().unwrap()
        );
    }

    /// The proxy appends the address it saw to X-Forwarded-For and passes a
    /// client's own `Forwarded` through untouched: that header must not win.
    #[test]
    fn only_the_configured_header_is_read() {
        use ClientIpHeader::*;
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let sent = headers(&[
            ("forwarded", "for=192.0.2.66"),
            ("x-real-ip", "192.0.2.67"),
            ("x-forwarded-for", "198.51.100.2"),
        ]);
        assert_eq!(
            client_addr(proxy, &sent, &trusted, XForwardedFor),
            "198.51.100.2:0".parse().unwrap()
        );
        // The configured header missing: the proxy, never another header.
        let only_forwarded = headers(&[("forwarded", "for=192.0.2.66")]);
        assert_eq!(
            client_addr(proxy, &only_forwarded, &trusted, XForwardedFor),
            proxy
        );
        assert_eq!(
            client_addr(proxy, &sent, &trusted, XRealIp),
            "192.0.2.67:0".parse().unwrap()
        );
        assert_eq!(
            client_addr(proxy, &sent, &trusted, Forwarded),
            "192.0.2.66:0".parse().unwrap()
        );
    }
}
