//! The operator console's door (docs/ADMIN.md): its pages, its login and
//! its two WebSockets, over the cluster part in [`crate::console`].
//!
//! - `GET /admin`, `GET /admin/chat`: the pages (HTML, CSS and JS embedded
//!   in the binary, `src/assets/console/`; no CDN, no build step);
//!   `GET /admin/assets/{file}` their scripts and style (not secret, open).
//! - `GET|POST /admin/login`, `POST /admin/logout`: the login form trades
//!   `http.admin_token` for a session cookie (`sb_console`: HttpOnly,
//!   SameSite=Strict, `console.session_ttl_s`), signed with a key derived
//!   from the token, so it is good on every node that has the same token
//!   and on none once the token changes.
//! - `WS /ws/admin`: a snapshot, then deltas at most every 250 ms; queries
//!   for a page of workers; pair and unpair.
//! - `WS /ws/chat/{admin_session_id}/{worker_id}`: chat with one worker.
//!
//! Every page, socket and write needs the admin token: the cookie, or
//! `Authorization: Bearer <token>` for scripts. Missing or wrong: 401, an
//! HTML page (with the login form) for a browser's page request, the API's
//! JSON otherwise. Without an admin token the console is off (404) unless
//! `console.loopback_without_token` lets plain loopback requests in. The
//! sockets refuse an `Origin` other than the request's own host (a page
//! elsewhere cannot drive them with the operator's cookie).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::upgrade::admit;
use super::AppState;
use crate::console::{page as workers_slice, worker_view, Frame};
use crate::error::{ClientError, ErrorCode};
use crate::node::Node;
use crate::store::{LostPairing, PairError, Unpaired, Which};
use crate::types::{PairLostReason, PeerId};
use crate::ws::{CloseFrame, Data, ReadEnd, WebSocket, WsUpgrade};

/// The session cookie's name.
pub const COOKIE: &str = "sb_console";
/// Largest frame an admin socket reads.
const MAX_FRAME: usize = 64 * 1024;
/// Bytes waiting to be written to an admin socket before it is closed as slow.
const MAX_BACKLOG: usize = 8 * 1024 * 1024;

const ADMIN_HTML: &str = include_str!("../assets/console/admin.html");
const CHAT_HTML: &str = include_str!("../assets/console/chat.html");
const LOGIN_HTML: &str = include_str!("../assets/console/login.html");
const CONSOLE_CSS: &str = include_str!("../assets/console/console.css");
const ADMIN_JS: &str = include_str!("../assets/console/admin.js");
const CHAT_JS: &str = include_str!("../assets/console/chat.js");

/// The console's routes (the router adds them to the main listener).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(admin_page))
        .route("/admin/", get(admin_page))
        .route("/admin/chat", get(chat_page))
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/assets/{file}", get(asset))
        .route("/ws/admin", get(admin_socket))
        .route("/ws/chat/{session}/{worker}", get(chat_socket))
}

// ------------------------------------------------------------------- auth

/// Why a console request is refused.
enum Refusal {
    /// The console is off (disabled, or no admin token and no loopback opt-in).
    Off,
    /// No valid token or cookie.
    Unauthorized,
}

/// The key cookies are signed with: derived from the admin token.
fn cookie_key(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"switchboard console cookie v1\0");
    h.update(token.as_bytes());
    h.finalize().into()
}

/// HMAC-SHA256 (RFC 2104), by the `hmac` crate.
fn hmac(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_s() -> u64 {
    crate::store::now_ms() / 1000
}

/// A signed cookie value: `v1.<session>.<expiry s>.<mac>`.
fn make_cookie(token: &str, session: &str, expires: u64) -> String {
    let body = format!("v1.{session}.{expires}");
    let mac = hmac(&cookie_key(token), body.as_bytes());
    format!("{body}.{}", hex(&mac))
}

/// The session id of a valid, unexpired cookie value.
fn check_cookie(token: &str, value: &str) -> Option<String> {
    let (body, mac) = value.rsplit_once('.')?;
    let want = hex(&hmac(&cookie_key(token), body.as_bytes()));
    if !constant_time_eq(want.as_bytes(), mac.as_bytes()) {
        return None;
    }
    let mut parts = body.split('.');
    let (v, session, exp) = (parts.next()?, parts.next()?, parts.next()?);
    (v == "v1" && parts.next().is_none() && exp.parse::<u64>().ok()? > now_s())
        .then(|| session.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name)?.strip_prefix('='))
}

/// A plain loopback request: TCP peer on loopback, no forwarding header.
fn plain_loopback(peer: SocketAddr, headers: &HeaderMap) -> bool {
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h));
    peer.ip().to_canonical().is_loopback() && !forwarded
}

/// Whether the request may use the console.
fn authorize(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Refusal> {
    let cfg = &node.core.cfg;
    if !cfg.console.enabled {
        return Err(Refusal::Off);
    }
    let token = cfg.http.admin_token.expose();
    if token.is_empty() {
        return if cfg.console.loopback_without_token && plain_loopback(peer, headers) {
            Ok(())
        } else {
            Err(Refusal::Off)
        };
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes())) {
        return Ok(());
    }
    if cookie_value(headers, COOKIE).is_some_and(|c| check_cookie(token, c).is_some()) {
        return Ok(());
    }
    Err(Refusal::Unauthorized)
}

fn refusal_json(r: Refusal) -> ApiError {
    match r {
        Refusal::Off => ApiError::new(
            ErrorCode::NotFound,
            "the operator console is off: set http.admin_token (or, on a developer's \
             machine, console.loopback_without_token)",
        ),
        Refusal::Unauthorized => {
            metrics::counter!(crate::metrics::ADMIN_REFUSED, "reason" => "unauthorized")
                .increment(1);
            ApiError::new(
                ErrorCode::Unauthorized,
                "the admin token is required: log in at /admin/login, or send \
                 `Authorization: Bearer <token>`",
            )
        }
    }
}

/// True when the request is a browser asking for a page.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Security headers of every console page.
fn page(status: StatusCode, html: &'static str) -> Response {
    let mut r = (status, html).into_response();
    r.extensions_mut().insert(super::error::OwnErrorPage);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The answer to a refused page request: the login page (401) for a
/// browser, JSON otherwise.
fn refuse_page(r: Refusal, headers: &HeaderMap) -> Response {
    match r {
        Refusal::Unauthorized if wants_html(headers) => {
            metrics::counter!(crate::metrics::ADMIN_REFUSED, "reason" => "unauthorized")
                .increment(1);
            page(StatusCode::UNAUTHORIZED, LOGIN_HTML)
        }
        r => refusal_json(r).into_response(),
    }
}

async fn admin_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match authorize(&st.node, peer, &headers) {
        Ok(()) => page(StatusCode::OK, ADMIN_HTML),
        Err(r) => refuse_page(r, &headers),
    }
}

async fn chat_page(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match authorize(&st.node, peer, &headers) {
        Ok(()) => page(StatusCode::OK, CHAT_HTML),
        Err(r) => refuse_page(r, &headers),
    }
}

async fn login_page(State(st): State<AppState>) -> Response {
    if !st.node.core.cfg.console.enabled {
        return refusal_json(Refusal::Off).into_response();
    }
    page(StatusCode::OK, LOGIN_HTML)
}

/// Decodes `application/x-www-form-urlencoded` text.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /admin/login` (form field `token`, or JSON `{"token"}`): a right
/// token gets the session cookie and a redirect to `/admin` (JSON
/// `{"ok":true}` for a JSON request); a wrong one 401.
async fn login(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let cfg = &st.node.core.cfg;
    let token = cfg.http.admin_token.expose();
    if !cfg.console.enabled || token.is_empty() {
        return refusal_json(Refusal::Off).into_response();
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let given = if json_body {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string))
    } else {
        std::str::from_utf8(&body).ok().and_then(|b| {
            b.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(form_decode)
        })
    };
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        if json_body {
            return refusal_json(Refusal::Unauthorized).into_response();
        }
        return refuse_page(Refusal::Unauthorized, &{
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
            h
        });
    }
    let session = crate::rendezvous::random_token();
    let ttl = cfg.console.session_ttl_s.max(60);
    let value = make_cookie(token, &session, now_s() + ttl);
    let cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}");
    let mut r = if json_body {
        axum::Json(json!({"ok": true, "expires_in_s": ttl})).into_response()
    } else {
        let mut r = StatusCode::SEE_OTHER.into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/admin"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /admin/logout`: clears the cookie (it stays valid until it
/// expires if a copy was kept: cookies are not stored server-side).
async fn logout() -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/admin/login"));
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sb_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "console.css" => (CONSOLE_CSS, "text/css; charset=utf-8"),
        "admin.js" => (ADMIN_JS, "text/javascript; charset=utf-8"),
        "chat.js" => (CHAT_JS, "text/javascript; charset=utf-8"),
        _ => return ApiError::new(ErrorCode::NotFound, "no such asset").into_response(),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// A cross-site page must not drive the sockets with the operator's
/// cookie: an `Origin` (browsers always send one on WebSockets) must name
/// the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

fn check_socket(node: &Node, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    authorize(node, peer, headers).map_err(refusal_json)?;
    if !same_origin(headers) {
        metrics::counter!(crate::metrics::ADMIN_REFUSED, "reason" => "forbidden").increment(1);
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the console's sockets answer pages of the same origin only",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- sockets

/// `WS /ws/admin`.
async fn admin_socket(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    check_socket(&node, peer, &headers)?;
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    Ok(ws.on_upgrade(None, move |socket| async move {
        let (tx, rx) = mpsc::channel(64);
        let query = Arc::new(parking_lot::Mutex::new((String::new(), 0usize, 50usize)));
        let mut admin = AdminConn {
            node: node.clone(),
            tx,
            search: String::new(),
            offset: 0,
            limit: 50,
            query: query.clone(),
        };
        let mut deltas = node.console.watch();
        admin.snapshot().await;
        // Deltas: forwarded, and a fresh page of workers when one changed.
        let fwd_node = node.clone();
        let fwd_tx = admin.tx.clone();
        let q2 = query;
        let forward = tokio::spawn(async move {
            loop {
                match deltas.recv().await {
                    Ok(f) => {
                        let workers = f.contains("\"workers_changed\":true");
                        if fwd_tx.send(f).await.is_err() {
                            return;
                        }
                        if workers {
                            let (s, o, l) = q2.lock().clone();
                            if let Some(p) = workers_page(&fwd_node, &s, o, l, None).await {
                                if fwd_tx.send(p).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        serve(&node, socket, rx, &mut admin).await;
        forward.abort();
        drop((permit, token));
    }))
}

/// One admin socket's state.
struct AdminConn {
    node: Arc<Node>,
    tx: mpsc::Sender<Frame>,
    search: String,
    offset: usize,
    limit: usize,
    /// The current query, shared with the task that forwards deltas.
    query: Arc<parking_lot::Mutex<(String, usize, usize)>>,
}

/// What a console socket does with a text frame.
trait Handler: Send {
    fn text(&mut self, text: String) -> impl std::future::Future<Output = ()> + Send;
}

impl Handler for AdminConn {
    async fn text(&mut self, text: String) {
        self.frame(text).await;
        *self.query.lock() = (self.search.clone(), self.offset, self.limit);
    }
}

/// One chat socket's state.
struct ChatConn {
    console: Arc<crate::console::Console>,
    session: String,
    worker: PeerId,
    tx: mpsc::Sender<Frame>,
}

impl Handler for ChatConn {
    async fn text(&mut self, text: String) {
        let reply = match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("type").and_then(Value::as_str) == Some("chat") => {
                let id = v.get("id").filter(|i| i.is_string() || i.is_number());
                match v.get("text").and_then(Value::as_str) {
                    Some(t) => match self.console.chat_send(&self.session, &self.worker, t).await {
                        Ok(()) => None,
                        Err(e) => Some(error_frame(id, e.code, e.message)),
                    },
                    None => Some(error_frame(
                        id,
                        ErrorCode::InvalidMessage,
                        "`text` (a string) is required",
                    )),
                }
            }
            Ok(_) => Some(error_frame(
                None,
                ErrorCode::InvalidMessage,
                "expected {\"type\":\"chat\",\"text\":\"...\"}",
            )),
            Err(_) => Some(error_frame(
                None,
                ErrorCode::InvalidMessage,
                "a frame must be JSON",
            )),
        };
        if let Some(f) = reply {
            let _ = self.tx.send(f).await;
        }
    }
}

/// `search` (at most 256 bytes; none if longer) and `limit` (1 to
/// [`crate::console::MAX_PAGE`], 50 when absent) of a list request.
fn list_params(v: &Value) -> Option<(&str, usize)> {
    let search = v.get("search").and_then(Value::as_str).unwrap_or("");
    let limit = v
        .get("limit")
        .and_then(Value::as_u64)
        .map_or(50, |l| l as usize)
        .clamp(1, crate::console::MAX_PAGE);
    (search.len() <= 256).then_some((search, limit))
}

fn error_frame(id: Option<&Value>, code: ErrorCode, message: impl Into<String>) -> Frame {
    let mut v = json!({"type": "error", "code": code.as_str(), "message": message.into()});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v.to_string().into()
}

async fn workers_page(
    node: &Node,
    search: &str,
    offset: usize,
    limit: usize,
    id: Option<&Value>,
) -> Option<Frame> {
    let list = match node.console.workers().await {
        Ok(l) => l,
        Err(e) => return Some(error_frame(id, e.code, e.message)),
    };
    let (total, items) = workers_slice(&list, search, offset, limit);
    let items: Vec<Value> = items.into_iter().map(worker_view).collect();
    let mut v = json!({
        "type": "workers",
        "search": search,
        "offset": offset,
        "limit": limit.clamp(1, crate::console::MAX_PAGE),
        "total": total,
        "count": list.len(),
        "items": items,
    });
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    Some(v.to_string().into())
}

impl AdminConn {
    async fn send(&self, f: Frame) {
        let _ = self.tx.send(f).await;
    }

    async fn snapshot(&self) {
        let c = &self.node.console;
        let nodes = c.nodes();
        let peers: usize = nodes.iter().map(|n| n.connections).sum();
        let workers = match c.workers().await {
            Ok(l) => Some(l),
            Err(e) => {
                self.send(error_frame(None, e.code, e.message)).await;
                None
            }
        };
        let (total, items) = workers
            .as_deref()
            .map(|l| workers_slice(l, "", 0, self.limit))
            .unwrap_or_default();
        let pairings: Vec<Value> = workers
            .as_deref()
            .map(|l| {
                l.iter()
                    // Each pairing once: from its smaller id's side.
                    .filter(|w| {
                        w.partner
                            .as_ref()
                            .is_some_and(|p| w.peer_id.as_str() < p.as_str())
                    })
                    .take(crate::console::MAX_PAGE)
                    .map(|w| json!({"pairing_id": w.pairing_id, "a": w.peer_id, "b": w.partner}))
                    .collect()
            })
            .unwrap_or_default();
        let v = json!({
            "type": "snapshot",
            "node": c.node_id(),
            "nodes": nodes,
            "counts": {
                "nodes": nodes.len(),
                "peers": peers,
                "workers": workers.as_ref().map(|l| l.len()),
                "rooms": nodes.iter().map(|n| n.rooms).sum::<usize>(),
            },
            "workers": {
                "search": "", "offset": 0, "limit": self.limit, "total": total,
                "items": items.into_iter().map(worker_view).collect::<Vec<_>>(),
            },
            "pairings": pairings,
            "log": c.log(),
        });
        self.send(v.to_string().into()).await;
    }

    async fn frame(&mut self, text: String) {
        let v: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let f = error_frame(
                    None,
                    ErrorCode::InvalidMessage,
                    "a frame must be a JSON object",
                );
                return self.send(f).await;
            }
        };
        let id = v.get("id").filter(|i| i.is_string() || i.is_number());
        let max = self.node.core.cfg.limits.max_name_bytes;
        let worker = |field: &str| -> Result<PeerId, Frame> {
            let s = v.get(field).and_then(Value::as_str).ok_or_else(|| {
                error_frame(
                    id,
                    ErrorCode::InvalidMessage,
                    format!("`{field}` (a string) is required"),
                )
            })?;
            PeerId::parse(s, max)
                .map_err(|e| error_frame(id, ErrorCode::InvalidPeerId, format!("`{field}` {e}")))
        };
        let reply = match v.get("type").and_then(Value::as_str) {
            Some("query") => {
                let search = v.get("search").and_then(Value::as_str).unwrap_or("");
                if search.len() > 256 {
                    error_frame(
                        id,
                        ErrorCode::InvalidMessage,
                        "`search` is at most 256 bytes",
                    )
                } else {
                    self.search = search.to_string();
                    self.offset = v.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
                    self.limit = v
                        .get("limit")
                        .and_then(Value::as_u64)
                        .map_or(50, |l| l as usize)
                        .clamp(1, crate::console::MAX_PAGE);
                    match workers_page(&self.node, &self.search, self.offset, self.limit, id).await
                    {
                        Some(f) => f,
                        None => return,
                    }
                }
            }
            Some("peers") => self.peers_page(id, &v).await,
            Some("rooms") => self.rooms_page(id, &v).await,
            Some("pair") => match (worker("a"), worker("b")) {
                (Ok(a), Ok(b)) => self.pair(id, &a, &b).await,
                (Err(f), _) | (_, Err(f)) => f,
            },
            Some("unpair") => match worker("worker") {
                Ok(w) => self.unpair(id, &w).await,
                Err(f) => f,
            },
            Some(other) => {
                let shown: String = other.chars().take(64).collect();
                error_frame(
                    id,
                    ErrorCode::InvalidMessage,
                    format!("unknown message type `{shown}` (query, peers, rooms, pair, unpair)"),
                )
            }
            None => error_frame(
                id,
                ErrorCode::InvalidMessage,
                "`type` (a string) is required",
            ),
        };
        self.send(reply).await;
    }

    /// `peers {node, search?, cursor?, limit?}`: one page of the peers
    /// connected to `node` (any node of the cluster) whose id contains
    /// `search`, walked with the store's cursor (docs/ADMIN.md).
    async fn peers_page(&self, id: Option<&Value>, v: &Value) -> Frame {
        let bad = |m: &str| error_frame(id, ErrorCode::InvalidMessage, m);
        let Some(node) = v.get("node").and_then(Value::as_str) else {
            return bad("`node` (a node id from the snapshot) is required");
        };
        let max = self.node.core.cfg.limits.max_name_bytes;
        if node.is_empty() || node.len() > max || node.chars().any(char::is_control) {
            return bad("`node` is not a node id");
        }
        let Some((search, limit)) = list_params(v) else {
            return bad("`search` is at most 256 bytes");
        };
        let cursor = v.get("cursor").and_then(Value::as_u64).unwrap_or(0);
        let node_id = crate::types::NodeId::from_trusted(node);
        match self
            .node
            .core
            .store
            .scan_node_peers(&node_id, cursor, search, limit)
            .await
        {
            Ok((next, ids)) => {
                let mut r = json!({"type": "peers", "node": node, "search": search,
                    "cursor": cursor, "next": next, "items": ids});
                if let Some(id) = id {
                    r["id"] = id.clone();
                }
                r.to_string().into()
            }
            Err(e) => {
                let e: ClientError = crate::core::cluster_err(e);
                error_frame(id, e.code, e.message)
            }
        }
    }

    /// `rooms {search?, after?, limit?}`: one page of the cluster's rooms
    /// (name order, after the room `after`) whose name contains `search`,
    /// with their member counts.
    async fn rooms_page(&self, id: Option<&Value>, v: &Value) -> Frame {
        let bad = |m: &str| error_frame(id, ErrorCode::InvalidMessage, m);
        let Some((search, limit)) = list_params(v) else {
            return bad("`search` is at most 256 bytes");
        };
        let max = self.node.core.cfg.limits.max_name_bytes;
        let mut after = match v.get("after") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => match crate::types::RoomName::parse(a, max) {
                Ok(r) => Some(r),
                Err(e) => return bad(&format!("`after` {e}")),
            },
            Some(_) => return bad("`after` is a room name or null"),
        };
        let mut items = Vec::new();
        // A search filters pages of the store's listing: at most 20 of them
        // per answer, so a rare match costs a bounded walk; `next` resumes.
        for _ in 0..20 {
            let page = match self.node.core.store.list_rooms(after.as_ref(), limit).await {
                Ok(p) => p,
                Err(e) => {
                    let e: ClientError = crate::core::cluster_err(e);
                    return error_frame(id, e.code, e.message);
                }
            };
            for r in page.rooms {
                if items.len() < limit && r.room.as_str().contains(search) {
                    after = Some(r.room.clone());
                    items.push(r);
                } else if items.len() >= limit {
                    break;
                } else {
                    after = Some(r.room.clone());
                }
            }
            if items.len() >= limit || page.next.is_none() {
                if page.next.is_none() && items.len() < limit {
                    after = None;
                }
                break;
            }
        }
        let mut r = json!({"type": "rooms", "search": search, "items": items, "next": after});
        if let Some(id) = id {
            r["id"] = id.clone();
        }
        r.to_string().into()
    }

    async fn pair(&self, id: Option<&Value>, a: &PeerId, b: &PeerId) -> Frame {
        let name = |w: Which| if w == Which::A { ("a", a) } else { ("b", b) };
        match self.node.rdv.connect_workers(a, b).await {
            Ok((pairing_id, _, _)) => {
                self.node.console.workers_changed().await;
                let mut v =
                    json!({"type": "result", "op": "pair", "ok": true, "pairing_id": pairing_id});
                if let Some(id) = id {
                    v["id"] = id.clone();
                }
                v.to_string().into()
            }
            Err(PairError::NotFound(w)) => {
                let (f, w) = name(w);
                error_frame(
                    id,
                    ErrorCode::WorkerNotFound,
                    format!("worker `{w}` (`{f}`) is not a connected worker"),
                )
            }
            Err(PairError::AlreadyPaired(w)) => {
                let (f, w) = name(w);
                error_frame(
                    id,
                    ErrorCode::AlreadyPaired,
                    format!("worker `{w}` (`{f}`) is already paired"),
                )
            }
            Err(PairError::SameWorker) => error_frame(
                id,
                ErrorCode::SameWorker,
                "`a` and `b` name the same worker",
            ),
            Err(e) => {
                let e = crate::core::cluster_err(format!("{e:?}"));
                error_frame(id, e.code, e.message)
            }
        }
    }

    async fn unpair(&self, id: Option<&Value>, w: &PeerId) -> Frame {
        let store = &self.node.core.store;
        let unavailable = |e: &dyn std::fmt::Display| {
            let e: ClientError = crate::core::cluster_err(e);
            error_frame(id, e.code, e.message)
        };
        let rec = match store.get_worker(w).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return error_frame(
                    id,
                    ErrorCode::WorkerNotFound,
                    format!("worker `{w}` is not a connected worker"),
                )
            }
            Err(e) => return unavailable(&e),
        };
        match store.unpair_worker(w, rec.epoch).await {
            Ok(Unpaired::Paired(lost)) => {
                // Both sides hear `pair-lost` (unpaired): the partner through
                // the usual path, the worker itself as if its partner left.
                let me = LostPairing {
                    pairing_id: lost.pairing_id.clone(),
                    partner: rec,
                };
                self.node
                    .rdv
                    .notify_lost(lost, PairLostReason::Unpaired)
                    .await;
                self.node
                    .rdv
                    .notify_lost(me, PairLostReason::Unpaired)
                    .await;
            }
            Ok(Unpaired::Dequeued) => {}
            Err(PairError::NotPaired) => {
                return error_frame(
                    id,
                    ErrorCode::NotPaired,
                    format!("worker `{w}` is neither paired nor queued"),
                )
            }
            Err(PairError::Store(e)) => return unavailable(&e),
            Err(e) => return unavailable(&format!("{e:?}")),
        }
        self.node.console.workers_changed().await;
        let mut v = json!({"type": "result", "op": "unpair", "ok": true, "worker": w});
        if let Some(id) = id {
            v["id"] = id.clone();
        }
        v.to_string().into()
    }
}

/// `WS /ws/chat/{admin_session_id}/{worker_id}`.
async fn chat_socket(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((session, worker)): Path<(String, String)>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Result<Response, ApiError> {
    let node = st.node;
    check_socket(&node, peer, &headers)?;
    let ok_session = !session.is_empty()
        && session.len() <= 64
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok_session {
        return Err(ApiError::new(
            ErrorCode::InvalidMessage,
            "admin_session_id must be 1 to 64 letters, digits, `-` or `_`",
        ));
    }
    let worker = PeerId::parse(&worker, node.core.cfg.limits.max_name_bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidPeerId, format!("worker id {e}")))?;
    let permit = admit(&node)?;
    let token = node.core.tracker.token();
    Ok(ws.on_upgrade(None, move |socket| async move {
        let console = node.console.clone();
        let (history, rx) = console.chat_open(&session, &worker);
        let (tx, out) = mpsc::channel::<Frame>(64);
        let connected = match node.core.store.get_worker(&worker).await {
            Ok(r) => r.map(|r| r.node.to_string()),
            Err(_) => None,
        };
        let hello = json!({
            "type": "history",
            "session": session,
            "worker": worker,
            "worker_node": connected,
            "messages": history,
        });
        let _ = tx.send(hello.to_string().into()).await;
        if connected.is_none() {
            let _ = tx
                .send(error_frame(
                    None,
                    ErrorCode::WorkerNotFound,
                    format!("worker `{worker}` is not connected"),
                ))
                .await;
        }
        // The conversation's lines (from any socket of the session) and this
        // socket's own answers, in one feed.
        let fwd_tx = tx.clone();
        let forward = tokio::spawn(async move {
            let mut rx = rx;
            while let Some(f) = rx.recv().await {
                if fwd_tx.send(f).await.is_err() {
                    return;
                }
            }
        });
        let mut chat = ChatConn {
            console: console.clone(),
            session: session.clone(),
            worker: worker.clone(),
            tx,
        };
        serve(&node, socket, out, &mut chat).await;
        forward.abort();
        console.chat_closed(&session, &worker);
        drop((permit, token));
    }))
}

/// What the socket loop woke up for.
enum Step {
    Out(Option<Frame>),
    In(crate::ws::Event),
    Ping,
    Stop,
}

/// Serves one console socket: frames from `out` are written, text frames
/// read are handed to `on_text` one at a time; pings every heartbeat, a
/// socket silent for the heartbeat timeout, slow to read, or sending a
/// binary frame is closed; the node's drain closes it with 1012.
async fn serve<H: Handler>(
    node: &Node,
    mut ws: WebSocket,
    mut out: mpsc::Receiver<Frame>,
    handler: &mut H,
) {
    ws.set_max_size(MAX_FRAME);
    let limits = &node.core.cfg.limits;
    let mut ping = tokio::time::interval(limits.heartbeat_interval);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    let stop = node.core.close_all.clone();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let close = loop {
        let step = std::future::poll_fn(|cx| {
            use std::future::Future;
            use std::task::Poll;
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Stop);
            }
            if let Poll::Ready(m) = out.poll_recv(cx) {
                return Poll::Ready(Step::Out(m));
            }
            if ping.poll_tick(cx).is_ready() {
                return Poll::Ready(Step::Ping);
            }
            if let Poll::Ready(Err(_)) = ws.poll_write_buffered(cx) {
                return Poll::Ready(Step::In(crate::ws::Event::End(ReadEnd::WriteFailed)));
            }
            ws.poll_read(cx).map(Step::In)
        })
        .await;
        match step {
            Step::Stop => {
                break Some(CloseFrame {
                    code: 1012,
                    reason: "draining",
                })
            }
            Step::Out(None) => {
                break Some(CloseFrame {
                    code: 1011,
                    reason: "internal",
                })
            }
            Step::Out(Some(f)) => {
                ws.queue_text(&f);
                if ws.write_pending() > MAX_BACKLOG {
                    break Some(CloseFrame {
                        code: 1008,
                        reason: "slow",
                    });
                }
            }
            Step::Ping => {
                if heard.elapsed() > limits.heartbeat_timeout {
                    break Some(CloseFrame {
                        code: 1001,
                        reason: "timeout",
                    });
                }
                ws.queue_ping();
            }
            Step::In(crate::ws::Event::Control | crate::ws::Event::Pong(_)) => {
                heard = tokio::time::Instant::now()
            }
            Step::In(crate::ws::Event::Message) => {
                heard = tokio::time::Instant::now();
                let text = match ws.data() {
                    Some(Data::Text(t)) => t.to_string(),
                    Some(Data::Binary(_)) => {
                        break Some(CloseFrame {
                            code: 1003,
                            reason: "text frames only",
                        })
                    }
                    None => {
                        break Some(CloseFrame {
                            code: 1007,
                            reason: "invalid utf-8",
                        })
                    }
                };
                handler.text(text).await;
            }
            Step::In(crate::ws::Event::End(ReadEnd::Closed)) => break None,
            Step::In(crate::ws::Event::End(ReadEnd::TooBig)) => {
                break Some(CloseFrame {
                    code: 1009,
                    reason: "too big",
                })
            }
            Step::In(crate::ws::Event::End(ReadEnd::Protocol)) => {
                break Some(CloseFrame {
                    code: 1002,
                    reason: "protocol error",
                })
            }
            Step::In(crate::ws::Event::End(ReadEnd::InvalidUtf8)) => {
                break Some(CloseFrame {
                    code: 1007,
                    reason: "invalid utf-8",
                })
            }
            Step::In(crate::ws::Event::End(_)) => return,
        }
    };
    if let Some(f) = close {
        ws.queue_close(f);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.flush().await;
        ws.read_until_closed().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_and_cookies_verify_only_unaltered() {
        // RFC 4231 test case 2 (a short key is zero-padded, as HMAC does).
        let mut jefe = [0u8; 32];
        jefe[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex(&hmac(&jefe, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // HMAC with a 32-byte key differs for different messages and keys.
        let k = cookie_key("t");
        assert_ne!(hmac(&k, b"a"), hmac(&k, b"b"));
        assert_ne!(hmac(&k, b"a"), hmac(&cookie_key("u"), b"a"));
        let later = now_s() + 60;
        let c = make_cookie("secret", "abc", later);
        assert_eq!(check_cookie("secret", &c).as_deref(), Some("abc"));
        assert_eq!(check_cookie("other", &c), None, "another token's key");
        let expired = make_cookie("secret", "abc", now_s() - 1);
        assert_eq!(check_cookie("secret", &expired), None);
        // Moving the expiry breaks the MAC.
        let moved = c.replacen(&later.to_string(), &(later + 1000).to_string(), 1);
        assert_eq!(check_cookie("secret", &moved), None);
        assert_eq!(check_cookie("secret", "v1.abc"), None);
        assert_eq!(check_cookie("secret", ""), None);
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(form_decode("a%2Db+c%zz%4"), "a-b c%zz%4");
        assert_eq!(form_decode("%E2%9C%93"), "✓");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; sb_console=v1.a.2.ff; y=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("v1.a.2.ff"));
        assert_eq!(cookie_value(&h, "sb"), None);
    }
}
