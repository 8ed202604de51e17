//! The game P2P coordinator's REST API (docs/DOORS.md, "Coordinator"),
//! under both of its versions' prefixes, `/api/` and `/api/v1/`, with the
//! old service's HTTP conventions (FastAPI, LEGACY-PROTOCOLS.md §1.2):
//! `{"detail": ...}` errors, 422 validation lists, 404 `Not Found`, 405
//! with `Allow`, 307 to the other trailing-slash form, compact JSON.
//!
//! The door routes requests itself ([`ROUTES`], [`dispatch`]) rather than
//! through axum's router, because those conventions are decided over the
//! whole route table: a path that matches with another method is a 405, a
//! path that matches only in its other trailing-slash form a 307, anything
//! else a 404. On its own listener ([`own_routes`]) it owns every path; on
//! the main listener ([`main_routes`]) only its `/api/...` families.
//!
//! The logic lives in [`crate::coordinator`]; this module validates,
//! calls, and shapes the answers.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::AppState;
use crate::coordinator::{self as co, CoordError, CreateRefused, Heartbeat, Registration};
use crate::metrics as m;
use crate::store::now_ms;

/// The door on its own listener: every path (catch-all routes rather than
/// a fallback, which the listener's common setup sets; other routes of the
/// same listener, such as the signaling socket, take precedence).
pub(super) fn own_routes() -> Router<AppState> {
    Router::new()
        .route("/", any(dispatch))
        .route("/{*rest}", any(dispatch))
}

/// The door's path families on the main listener (whose `/` and `/health`
/// are the node's).
pub(super) fn main_routes() -> Router<AppState> {
    let mut r = Router::new();
    for prefix in ["/api", "/api/v1"] {
        for family in FAMILIES {
            r = r
                .route(&format!("{prefix}/{family}"), any(dispatch))
                .route(&format!("{prefix}/{family}/"), any(dispatch))
                .route(&format!("{prefix}/{family}/{{*rest}}"), any(dispatch));
        }
    }
    r
}

/// The first path segments the door serves under its prefixes.
const FAMILIES: [&str; 5] = ["hosts", "zones", "sessions", "monitoring", "auth"];

// ---------------------------------------------------------------------------
// The route table
// ---------------------------------------------------------------------------

/// Every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ep {
    Root,
    Health,
    HostRegister,
    HostHeartbeat,
    HostGet,
    HostList,
    HostAvailable,
    HostBest,
    HostDelete,
    ZoneCreate,
    ZoneGet,
    ZoneList,
    ZoneP2p,
    ZoneEnable,
    ZoneDisable,
    ZoneStatus,
    SessionCreate,
    SessionGet,
    SessionActivate,
    SessionEnd,
    SessionMetrics,
    SessionAddPlayer,
    SessionRemovePlayer,
    SessionsOfHost,
    SessionsOfZone,
    SessionCleanup,
    Dashboard,
    HostStats,
    Metrics,
    AuthToken,
    AuthRefresh,
}

/// Where a route lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// At the root (`/`, `/health`).
    Root,
    /// Under `/api` and `/api/v1`.
    Both,
    /// Under `/api/v1` only (v1 added it).
    V1,
}

/// `(method, path after the prefix, endpoint, scope)`; `{}` is one path
/// segment (a parameter), in the old service's declaration order.
const ROUTES: &[(&str, &str, Ep, Scope)] = &[
    ("GET", "/", Ep::Root, Scope::Root),
    ("GET", "/health", Ep::Health, Scope::Root),
    ("POST", "/hosts/register", Ep::HostRegister, Scope::Both),
    (
        "POST",
        "/hosts/{}/heartbeat",
        Ep::HostHeartbeat,
        Scope::Both,
    ),
    ("GET", "/hosts/{}", Ep::HostGet, Scope::Both),
    ("GET", "/hosts/", Ep::HostList, Scope::Both),
    (
        "GET",
        "/hosts/available/list",
        Ep::HostAvailable,
        Scope::Both,
    ),
    ("GET", "/hosts/available/best", Ep::HostBest, Scope::Both),
    ("DELETE", "/hosts/{}", Ep::HostDelete, Scope::Both),
    ("POST", "/zones/", Ep::ZoneCreate, Scope::Both),
    ("GET", "/zones/{}", Ep::ZoneGet, Scope::Both),
    ("GET", "/zones/", Ep::ZoneList, Scope::Both),
    ("GET", "/zones/p2p/enabled", Ep::ZoneP2p, Scope::Both),
    ("POST", "/zones/{}/enable-p2p", Ep::ZoneEnable, Scope::Both),
    (
        "POST",
        "/zones/{}/disable-p2p",
        Ep::ZoneDisable,
        Scope::Both,
    ),
    ("PATCH", "/zones/{}/status", Ep::ZoneStatus, Scope::Both),
    ("POST", "/sessions/", Ep::SessionCreate, Scope::Both),
    ("GET", "/sessions/{}", Ep::SessionGet, Scope::Both),
    (
        "POST",
        "/sessions/{}/activate",
        Ep::SessionActivate,
        Scope::Both,
    ),
    ("POST", "/sessions/{}/end", Ep::SessionEnd, Scope::Both),
    (
        "PATCH",
        "/sessions/{}/metrics",
        Ep::SessionMetrics,
        Scope::Both,
    ),
    (
        "POST",
        "/sessions/{}/players",
        Ep::SessionAddPlayer,
        Scope::Both,
    ),
    (
        "DELETE",
        "/sessions/{}/players/{}",
        Ep::SessionRemovePlayer,
        Scope::Both,
    ),
    (
        "GET",
        "/sessions/host/{}/active",
        Ep::SessionsOfHost,
        Scope::Both,
    ),
    (
        "GET",
        "/sessions/zone/{}/active",
        Ep::SessionsOfZone,
        Scope::Both,
    ),
    ("POST", "/sessions/cleanup", Ep::SessionCleanup, Scope::Both),
    ("GET", "/monitoring/dashboard", Ep::Dashboard, Scope::Both),
    ("GET", "/monitoring/hosts/stats", Ep::HostStats, Scope::Both),
    ("GET", "/monitoring/metrics", Ep::Metrics, Scope::V1),
    ("POST", "/auth/token", Ep::AuthToken, Scope::V1),
    ("POST", "/auth/refresh", Ep::AuthRefresh, Scope::V1),
];

/// How a path matched the table.
enum Matched {
    /// A route of this method: the endpoint and its parameters.
    Full(Ep, Vec<String>),
    /// Routes of other methods only: the `Allow` header.
    Partial(String),
    /// Nothing.
    None,
}

/// Matches `path` against the table.
fn route(method: &Method, path: &str) -> Matched {
    // HEAD is served as GET (the body is dropped on the way out).
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let mut allow: Vec<&str> = Vec::new();
    for (m, pattern, ep, scope) in ROUTES {
        let rest = match scope {
            Scope::Root => Some(path),
            Scope::Both => path
                .strip_prefix("/api/v1")
                .or_else(|| path.strip_prefix("/api")),
            Scope::V1 => path.strip_prefix("/api/v1"),
        };
        let Some(rest) = rest else { continue };
        // `/api/v1/...` is not `/api` + `/v1/...`, nor the reverse.
        if *scope == Scope::Both && !rest.starts_with('/') {
            continue;
        }
        let Some(params) = match_pattern(pattern, rest) else {
            continue;
        };
        if *m == method {
            return Matched::Full(*ep, params);
        }
        if !allow.contains(m) {
            allow.push(m);
        }
    }
    if allow.is_empty() {
        Matched::None
    } else {
        Matched::Partial(allow.join(", "))
    }
}

/// The parameters of `path` under `pattern`, when it matches (`{}`: one
/// non-empty segment, percent-decoded).
fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let pat: Vec<&str> = pattern.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    if pat.len() != got.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, g) in pat.iter().zip(&got) {
        if *p == "{}" {
            if g.is_empty() {
                return None;
            }
            params.push(percent_decode(g));
        } else if p != g {
            return None;
        }
    }
    Some(params)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The paths the v1 API-key check skips (the old middleware's list, and
/// the v0 form of the dashboard).
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/" | "/health"
            | "/docs"
            | "/redoc"
            | "/openapi.json"
            | "/api/v1/monitoring/health"
            | "/api/v1/monitoring/dashboard"
            | "/api/monitoring/dashboard"
    )
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// A value, or the answer that refuses the request (boxed: a response is large).
type Answer<T> = Result<T, Box<Response>>;

/// A compact JSON answer.
fn json_res<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("answers serialize");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// `{"detail": text}`.
fn detail(status: StatusCode, text: impl Into<String>) -> Response {
    json_res(status, &json!({ "detail": text.into() }))
}

/// `{"message": text}`.
fn message(text: impl Into<String>) -> Response {
    json_res(StatusCode::OK, &json!({ "message": text.into() }))
}

/// A failure inside: logged, answered as the old service did.
fn internal(e: CoordError) -> Response {
    tracing::warn!(error = %e, "coordinator request failed");
    match e {
        CoordError::Contended => detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many concurrent changes; try again",
        ),
        _ => detail(StatusCode::INTERNAL_SERVER_ERROR, "Database error occurred"),
    }
}

/// One entry of a 422 list, in FastAPI's field order.
#[derive(Serialize)]
struct Invalid {
    #[serde(rename = "type")]
    ty: &'static str,
    loc: Vec<Value>,
    msg: String,
    input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    ctx: Option<Value>,
}

fn unprocessable(errs: Vec<Invalid>) -> Response {
    // Serialized as a struct, not through a `Value` (whose maps sort their
    // keys), so each entry keeps FastAPI's field order.
    #[derive(Serialize)]
    struct Detail {
        detail: Vec<Invalid>,
    }
    json_res(StatusCode::UNPROCESSABLE_ENTITY, &Detail { detail: errs })
}

// ---------------------------------------------------------------------------
// Validation (pydantic 2's lax mode, the messages it gives)
// ---------------------------------------------------------------------------

/// Validates one body, collecting every error as pydantic does.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    whole: &'a Value,
    errs: Vec<Invalid>,
}

impl<'a> Fields<'a> {
    fn new(whole: &'a Value) -> Option<Self> {
        Some(Self {
            obj: whole.as_object()?,
            whole,
            errs: Vec::new(),
        })
    }

    fn err(&mut self, ty: &'static str, name: &str, msg: &str, input: &Value, ctx: Option<Value>) {
        self.errs.push(Invalid {
            ty,
            loc: vec![json!("body"), json!(name)],
            msg: msg.to_string(),
            input: input.clone(),
            ctx,
        });
    }

    /// The value, or a `missing` error when `required`.
    fn get(&mut self, name: &str, required: bool) -> Option<&'a Value> {
        match self.obj.get(name) {
            Some(v) => Some(v),
            None => {
                if required {
                    let whole = self.whole.clone();
                    self.err("missing", name, "Field required", &whole, None);
                }
                None
            }
        }
    }

    fn string(&mut self, name: &str, required: bool) -> Option<String> {
        let v = self.get(name, required)?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Null if !required => None,
            other => {
                self.err(
                    "string_type",
                    name,
                    "Input should be a valid string",
                    other,
                    None,
                );
                None
            }
        }
    }

    fn int(&mut self, name: &str, required: bool, ge: Option<i64>, le: Option<i64>) -> Option<i64> {
        let v = self.get(name, required)?;
        let n = match lax_int(v) {
            Ok(n) => n,
            Err((ty, msg)) => {
                self.err(ty, name, msg, v, None);
                return None;
            }
        };
        self.bounds(
            name,
            v,
            n as f64,
            ge.map(|g| (g as f64, json!(g))),
            le.map(|l| (l as f64, json!(l))),
        )
        .then_some(n)
    }

    fn float(
        &mut self,
        name: &str,
        required: bool,
        ge: Option<Value>,
        le: Option<Value>,
    ) -> Option<f64> {
        let v = self.get(name, required)?;
        if v.is_null() && !required {
            return None;
        }
        let x = match lax_float(v) {
            Ok(x) => x,
            Err((ty, msg)) => {
                self.err(ty, name, msg, v, None);
                return None;
            }
        };
        let num = |b: Option<Value>| b.and_then(|b| Some((b.as_f64()?, b)));
        self.bounds(name, v, x, num(ge), num(le)).then_some(x)
    }

    fn bounds(
        &mut self,
        name: &str,
        v: &Value,
        x: f64,
        ge: Option<(f64, Value)>,
        le: Option<(f64, Value)>,
    ) -> bool {
        if let Some((g, shown)) = ge {
            if x < g {
                let msg = format!(
                    "Input should be greater than or equal to {}",
                    py_num(&shown)
                );
                self.err(
                    "greater_than_equal",
                    name,
                    &msg,
                    v,
                    Some(json!({ "ge": shown })),
                );
                return false;
            }
        }
        if let Some((l, shown)) = le {
            if x > l {
                let msg = format!("Input should be less than or equal to {}", py_num(&shown));
                self.err(
                    "less_than_equal",
                    name,
                    &msg,
                    v,
                    Some(json!({ "le": shown })),
                );
                return false;
            }
        }
        true
    }

    fn boolean(&mut self, name: &str) -> Option<bool> {
        let v = self.get(name, false)?;
        match lax_bool(v) {
            Ok(b) => Some(b),
            Err((ty, msg)) => {
                self.err(ty, name, msg, v, None);
                None
            }
        }
    }
}

/// A number as Python prints it in a message (`1`, `10.0`).
fn py_num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() && x.fract() == 0.0 => format!("{x:.1}"),
        _ => v.to_string(),
    }
}

type Lax<T> = Result<T, (&'static str, &'static str)>;

fn lax_int(v: &Value) -> Lax<i64> {
    const PARSE: (&str, &str) = (
        "int_parsing",
        "Input should be a valid integer, unable to parse string as an integer",
    );
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if x.fract() == 0.0 && x.abs() < 9.0e18 {
                    Ok(x as i64)
                } else {
                    Err((
                        "int_from_float",
                        "Input should be a valid integer, got a number with a fractional part",
                    ))
                }
            }
        }
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| PARSE),
        Value::Bool(b) => Ok(i64::from(*b)),
        _ => Err(("int_type", "Input should be a valid integer")),
    }
}

fn lax_float(v: &Value) -> Lax<f64> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or(("float_type", "Input should be a valid number")),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or((
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            )),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        _ => Err(("float_type", "Input should be a valid number")),
    }
}

fn lax_bool(v: &Value) -> Lax<bool> {
    const PARSE: (&str, &str) = (
        "bool_parsing",
        "Input should be a valid boolean, unable to interpret input",
    );
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err((
                "bool_parsing",
                "Input should be a valid boolean, unable to interpret input",
            )),
        },
        Value::String(s) => str_bool(s).ok_or(PARSE),
        _ => Err(("bool_type", "Input should be a valid boolean")),
    }
}

fn str_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
        "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
        _ => None,
    }
}

/// The request body as a JSON object, or the 422 FastAPI gives.
fn body_object(body: &Bytes) -> Answer<Value> {
    if body.is_empty() {
        return Err(Box::new(unprocessable(vec![Invalid {
            ty: "missing",
            loc: vec![json!("body")],
            msg: "Field required".into(),
            input: Value::Null,
            ctx: None,
        }])));
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            // Python's `json` reports a character offset.
            let text = String::from_utf8_lossy(body);
            let pos: usize = text
                .lines()
                .take(e.line().saturating_sub(1))
                .map(|l| l.chars().count() + 1)
                .sum::<usize>()
                + e.column().saturating_sub(1);
            return Err(Box::new(unprocessable(vec![Invalid {
                ty: "json_invalid",
                loc: vec![json!("body"), json!(pos)],
                msg: "JSON decode error".into(),
                input: json!({}),
                ctx: Some(json!({ "error": "Expecting value" })),
            }])));
        }
    };
    if !v.is_object() {
        return Err(Box::new(unprocessable(vec![Invalid {
            ty: "model_attributes_type",
            loc: vec![json!("body")],
            msg: "Input should be a valid dictionary or object to extract fields from".into(),
            input: v,
            ctx: None,
        }])));
    }
    Ok(v)
}

/// A query parameter or path parameter error.
fn param_error(
    place: &'static str,
    name: &str,
    (ty, msg): (&'static str, &'static str),
    input: &str,
) -> Response {
    unprocessable(vec![Invalid {
        ty,
        loc: vec![json!(place), json!(name)],
        msg: msg.into(),
        input: json!(input),
        ctx: None,
    }])
}

/// An integer path parameter (a session id).
fn path_int(raw: &str, name: &str) -> Answer<u64> {
    raw.parse::<u64>().map_err(|_| {
        Box::new(param_error(
            "path",
            name,
            (
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            ),
            raw,
        ))
    })
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| percent_decode(&s.replace('+', " "));
        out.entry(dec(k)).or_insert_with(|| dec(v));
    }
    out
}

fn query_float(q: &HashMap<String, String>, name: &str) -> Answer<Option<f64>> {
    match q.get(name) {
        None => Ok(None),
        Some(s) => lax_float(&Value::String(s.clone()))
            .map(Some)
            .map_err(|e| Box::new(param_error("query", name, e, s))),
    }
}

// ---------------------------------------------------------------------------
// The dispatcher
// ---------------------------------------------------------------------------

/// Every request of the door.
async fn dispatch(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let res = handle(&st, &method, &uri, &headers, &body).await;
    let class = match res.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    ::metrics::counter!(m::COORDINATOR_REQUESTS, "status" => class).increment(1);
    res
}

async fn handle(
    st: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let cfg = &st.node.core.cfg.doors.coordinator;
    let path = uri.path();
    if !cfg.api_key.is_empty() && !exempt(path) {
        let name = cfg.api_key_header.as_str();
        match headers.get(name).map(|v| v.as_bytes()) {
            None => {
                return json_res(
                    StatusCode::UNAUTHORIZED,
                    &json!({"detail": format!("Missing {name} header"), "error": "unauthorized"}),
                )
            }
            Some(got) if !constant_time_eq(got, cfg.api_key.expose().as_bytes()) => {
                return json_res(
                    StatusCode::UNAUTHORIZED,
                    &json!({"detail": "Invalid API key", "error": "unauthorized"}),
                )
            }
            Some(_) => {}
        }
    }
    match route(method, path) {
        Matched::Full(ep, params) => endpoint(st, ep, &params, uri, body).await,
        Matched::Partial(allow) => {
            let mut res = detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                res.headers_mut().insert(header::ALLOW, v);
            }
            res
        }
        Matched::None => {
            let other = match path.strip_suffix('/') {
                Some(p) if !p.is_empty() => p.to_string(),
                Some(_) => return detail(StatusCode::NOT_FOUND, "Not Found"),
                None => format!("{path}/"),
            };
            if matches!(route(method, &other), Matched::None) {
                return detail(StatusCode::NOT_FOUND, "Not Found");
            }
            let mut location = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
                Some(host) if !host.contains(['/', '\\', ' ']) => format!("http://{host}{other}"),
                _ => other,
            };
            if let Some(q) = uri.query() {
                location.push('?');
                location.push_str(q);
            }
            let mut res = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Tries `$e` (a `Result<T, CoordError>`), answering 500 on failure.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return internal(e),
        }
    };
}

/// Tries `$e` (an [`Answer`]), answering the response on failure.
macro_rules! valid {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(res) => return *res,
        }
    };
}

async fn endpoint(st: &AppState, ep: Ep, p: &[String], uri: &Uri, body: &Bytes) -> Response {
    let core = &st.node.core;
    let cfg = &core.cfg.doors.coordinator;
    let q = query_map(uri);
    let param = |i: usize| p.get(i).map(String::as_str).unwrap_or_default();
    match ep {
        Ep::Root => {
            let zones: Vec<&str> = cfg
                .zones
                .iter()
                .filter(|z| z.p2p_enabled)
                .map(|z| z.zone_id.as_str())
                .collect();
            json_res(
                StatusCode::OK,
                &json!({"service": "p2p-coordinator", "version": "1.0.0", "status": "running", "p2p_enabled": true, "enabled_zones": zones}),
            )
        }
        Ep::Health => match core
            .store
            .coord_get(crate::store::coordinator::CoordKind::Zone, "")
            .await
        {
            Ok(_) => {
                #[derive(Serialize)]
                struct Db {
                    postgres: &'static str,
                    redis: &'static str,
                }
                #[derive(Serialize)]
                struct Health {
                    status: &'static str,
                    service: &'static str,
                    version: &'static str,
                    database: Db,
                }
                json_res(
                    StatusCode::OK,
                    &Health {
                        status: "healthy",
                        service: "p2p-coordinator",
                        version: "1.0.0",
                        database: Db {
                            postgres: "connected",
                            redis: "connected",
                        },
                    },
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "coordinator health: the store does not answer");
                json_res(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "unhealthy", "error": "the store does not answer"}),
                )
            }
        },
        Ep::HostRegister => {
            let v = valid!(body_object(body));
            let mut f = Fields::new(&v).expect("an object");
            let host_id = f.string("host_id", true);
            let player_id = f.string("player_id", true);
            let player_name = f.string("player_name", true);
            let ip_address = f.string("ip_address", true);
            let port = f.int("port", true, Some(1), Some(65535));
            let public_ip = f.string("public_ip", false);
            let cpu_cores = f.int("cpu_cores", true, Some(1), None);
            let cpu_frequency_mhz = f.int("cpu_frequency_mhz", true, Some(1), None);
            let memory_mb = f.int("memory_mb", true, Some(1), None);
            let network_speed_mbps = f.int("network_speed_mbps", true, Some(1), None);
            let ice_servers = match f.get("ice_servers", false) {
                None | Some(Value::Null) => None,
                Some(o @ Value::Object(_)) => Some(o.clone()),
                Some(other) => {
                    f.err(
                        "dict_type",
                        "ice_servers",
                        "Input should be a valid dictionary",
                        other,
                        None,
                    );
                    None
                }
            };
            if !f.errs.is_empty() {
                return unprocessable(f.errs);
            }
            let reg = Registration {
                host_id: host_id.unwrap_or_default(),
                player_id: player_id.unwrap_or_default(),
                player_name: player_name.unwrap_or_default(),
                ip_address: ip_address.unwrap_or_default(),
                port: port.unwrap_or_default(),
                public_ip,
                cpu_cores: cpu_cores.unwrap_or_default(),
                cpu_frequency_mhz: cpu_frequency_mhz.unwrap_or_default(),
                memory_mb: memory_mb.unwrap_or_default(),
                network_speed_mbps: network_speed_mbps.unwrap_or_default(),
                ice_servers,
            };
            let host = tri!(co::register_host(core, reg).await);
            json_res(StatusCode::CREATED, &host)
        }
        Ep::HostHeartbeat => {
            let v = valid!(body_object(body));
            let mut f = Fields::new(&v).expect("an object");
            let latency = f.float("latency_ms", true, Some(json!(0)), None);
            let loss = f.float(
                "packet_loss_percent",
                true,
                Some(json!(0)),
                Some(json!(100)),
            );
            let bw = f.float("bandwidth_usage_mbps", true, Some(json!(0)), None);
            let players = f.int("current_players", true, Some(0), None);
            let zones = f.int("current_zones", true, Some(0), None);
            if !f.errs.is_empty() {
                return unprocessable(f.errs);
            }
            let hb = Heartbeat {
                latency_ms: latency.unwrap_or_default(),
                packet_loss_percent: loss.unwrap_or_default(),
                bandwidth_usage_mbps: bw.unwrap_or_default(),
                current_players: players.unwrap_or_default(),
                current_zones: zones.unwrap_or_default(),
            };
            match tri!(co::heartbeat(core, param(0), hb).await) {
                Some(h) => json_res(StatusCode::OK, &h),
                None => detail(
                    StatusCode::NOT_FOUND,
                    format!("Host not found: {}", param(0)),
                ),
            }
        }
        Ep::HostGet => match tri!(co::get_host(core, param(0)).await) {
            Some(h) => json_res(StatusCode::OK, &h),
            None => detail(
                StatusCode::NOT_FOUND,
                format!("Host not found: {}", param(0)),
            ),
        },
        Ep::HostList => {
            let min = valid!(query_float(&q, "min_quality_score"));
            if let Some(s) = q.get("status_filter") {
                // The old service's filter never matched (§1.4.6); its
                // clients and tests read the 400.
                return detail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Invalid status: {s}. Must be one of: ONLINE, OFFLINE, BUSY, MAINTENANCE"
                    ),
                );
            }
            json_res(StatusCode::OK, &tri!(co::list_hosts(core, min).await))
        }
        Ep::HostAvailable => {
            let min = valid!(query_float(&q, "min_quality_score"));
            json_res(StatusCode::OK, &tri!(co::available_hosts(core, min).await))
        }
        Ep::HostBest => {
            let min = valid!(query_float(&q, "min_quality_score"));
            match tri!(co::available_hosts(core, min).await)
                .into_iter()
                .next()
            {
                Some(h) => json_res(StatusCode::OK, &h),
                None => detail(StatusCode::NOT_FOUND, "No available hosts found"),
            }
        }
        Ep::HostDelete => {
            if tri!(co::delete_host(core, param(0)).await) {
                StatusCode::NO_CONTENT.into_response()
            } else {
                detail(
                    StatusCode::NOT_FOUND,
                    format!("Host not found: {}", param(0)),
                )
            }
        }
        Ep::ZoneCreate => {
            let v = valid!(body_object(body));
            let mut f = Fields::new(&v).expect("an object");
            let d = crate::config::CoordinatorZone::default();
            let zone_id = f.string("zone_id", true);
            let zone_name = f.string("zone_name", true);
            let zone_display_name = f.string("zone_display_name", true);
            let map_name = f.string("map_name", true);
            let max_players = f.int("max_players", false, Some(1), None);
            let recommended = f.int("recommended_players", false, None, None);
            let p2p = f.boolean("p2p_enabled");
            let priority = f.int("p2p_priority", false, Some(1), Some(10));
            let fallback = f.boolean("fallback_enabled");
            let min_score = f.float(
                "min_host_quality_score",
                false,
                Some(json!(0.0)),
                Some(json!(10.0)),
            );
            let min_bw = f.int("min_bandwidth_mbps", false, None, None);
            let max_lat = f.int("max_latency_ms", false, None, None);
            let description = f.string("description", false);
            if !f.errs.is_empty() {
                return unprocessable(f.errs);
            }
            let z = crate::config::CoordinatorZone {
                zone_id: zone_id.unwrap_or_default(),
                zone_name: zone_name.unwrap_or_default(),
                zone_display_name: zone_display_name.unwrap_or_default(),
                map_name: map_name.unwrap_or_default(),
                max_players: max_players.unwrap_or(d.max_players),
                recommended_players: recommended.unwrap_or(d.recommended_players),
                p2p_enabled: p2p.unwrap_or(d.p2p_enabled),
                p2p_priority: priority.unwrap_or(d.p2p_priority),
                fallback_enabled: fallback.unwrap_or(d.fallback_enabled),
                min_host_quality_score: min_score.unwrap_or(d.min_host_quality_score),
                min_bandwidth_mbps: min_bw.unwrap_or(d.min_bandwidth_mbps),
                max_latency_ms: max_lat.unwrap_or(d.max_latency_ms),
                description,
            };
            json_res(
                StatusCode::CREATED,
                &tri!(co::upsert_zone(core, &z, false).await),
            )
        }
        Ep::ZoneGet => match tri!(co::get_zone(core, param(0)).await) {
            Some(z) => json_res(StatusCode::OK, &z),
            None => detail(
                StatusCode::NOT_FOUND,
                format!("Zone not found: {}", param(0)),
            ),
        },
        Ep::ZoneList => {
            let p2p = match q.get("p2p_enabled") {
                None => None,
                Some(s) => match str_bool(s) {
                    Some(b) => Some(b),
                    None => {
                        return param_error(
                            "query",
                            "p2p_enabled",
                            (
                                "bool_parsing",
                                "Input should be a valid boolean, unable to interpret input",
                            ),
                            s,
                        )
                    }
                },
            };
            if let Some(s) = q.get("status_filter") {
                return detail(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid status: {s}. Must be one of: ENABLED, DISABLED, MAINTENANCE"),
                );
            }
            json_res(StatusCode::OK, &tri!(co::list_zones(core, p2p).await))
        }
        Ep::ZoneP2p => {
            let zones: Vec<_> = tri!(co::list_zones(core, Some(true)).await)
                .into_iter()
                .filter(|z| z.status == "enabled")
                .collect();
            json_res(StatusCode::OK, &zones)
        }
        Ep::ZoneEnable | Ep::ZoneDisable => {
            match tri!(co::set_p2p(core, param(0), ep == Ep::ZoneEnable).await) {
                Some(z) => json_res(StatusCode::OK, &z),
                None => detail(
                    StatusCode::NOT_FOUND,
                    format!("Zone not found: {}", param(0)),
                ),
            }
        }
        Ep::ZoneStatus => match q.get("new_status") {
            None => unprocessable(vec![Invalid {
                ty: "missing",
                loc: vec![json!("query"), json!("new_status")],
                msg: "Field required".into(),
                input: Value::Null,
                ctx: None,
            }]),
            // Every value was refused by the old service (§1.4.6), and its
            // tests read the 400.
            Some(s) => detail(
                StatusCode::BAD_REQUEST,
                format!("Invalid status: {s}. Must be one of: ENABLED, DISABLED, MAINTENANCE"),
            ),
        },
        Ep::SessionCreate => {
            let v = valid!(body_object(body));
            let mut f = Fields::new(&v).expect("an object");
            // May be left out (or null): the best available host that meets
            // the zone's requirements is picked.
            let host_id = f.string("host_id", false);
            let zone_id = f.string("zone_id", true);
            let players = match f.get("player_ids", true) {
                None => None,
                Some(Value::Array(items)) => {
                    let mut out = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(s) => out.push(s.clone()),
                            other => f.errs.push(Invalid {
                                ty: "string_type",
                                loc: vec![json!("body"), json!("player_ids"), json!(i)],
                                msg: "Input should be a valid string".into(),
                                input: other.clone(),
                                ctx: None,
                            }),
                        }
                    }
                    Some(out)
                }
                Some(other) => {
                    f.err(
                        "list_type",
                        "player_ids",
                        "Input should be a valid list",
                        other,
                        None,
                    );
                    None
                }
            };
            if !f.errs.is_empty() {
                return unprocessable(f.errs);
            }
            let zone_id = zone_id.unwrap_or_default();
            let made = tri!(
                co::create_session(
                    core,
                    host_id.as_deref(),
                    &zone_id,
                    players.unwrap_or_default()
                )
                .await
            );
            match made {
                Ok(s) => json_res(StatusCode::CREATED, &s),
                Err(CreateRefused::Failed) => {
                    detail(StatusCode::BAD_REQUEST, "Failed to create session")
                }
                Err(CreateRefused::Unfit(u)) => detail(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to create session: {u}"),
                ),
                Err(CreateRefused::NoHost) => detail(
                    StatusCode::BAD_REQUEST,
                    "Failed to create session: no available host meets the zone's requirements",
                ),
            }
        }
        Ep::SessionGet => {
            let id = valid!(path_int(param(0), "session_id"));
            match tri!(co::get_session(core, id).await) {
                Some(s) => json_res(StatusCode::OK, &s),
                None => detail(StatusCode::NOT_FOUND, format!("Session {id} not found")),
            }
        }
        Ep::SessionActivate => {
            let id = valid!(path_int(param(0), "session_id"));
            if tri!(co::activate(core, id).await) {
                message(format!("Session {id} activated"))
            } else {
                detail(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to activate session {id}"),
                )
            }
        }
        Ep::SessionEnd => {
            let id = valid!(path_int(param(0), "session_id"));
            if tri!(co::end(core, id).await) {
                message(format!("Session {id} ended"))
            } else {
                detail(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to end session {id}"),
                )
            }
        }
        Ep::SessionMetrics => {
            let id = valid!(path_int(param(0), "session_id"));
            let v = valid!(body_object(body));
            let mut f = Fields::new(&v).expect("an object");
            let lat = f.float("avg_latency_ms", false, None, None);
            let loss = f.float("packet_loss_percent", false, None, None);
            let bw = f.float("bandwidth_usage_mbps", false, None, None);
            if !f.errs.is_empty() {
                return unprocessable(f.errs);
            }
            if tri!(co::set_metrics(core, id, lat, loss, bw).await) {
                message(format!("Session {id} metrics updated"))
            } else {
                detail(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to update metrics for session {id}"),
                )
            }
        }
        Ep::SessionAddPlayer => {
            let id = valid!(path_int(param(0), "session_id"));
            let v = match serde_json::from_slice::<Value>(body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(other) => {
                    return unprocessable(vec![Invalid {
                        ty: "dict_type",
                        loc: vec![json!("body")],
                        msg: "Input should be a valid dictionary".into(),
                        input: other,
                        ctx: None,
                    }])
                }
                Err(_) => return valid!(body_object(body).map(|_| Response::default())),
            };
            let player = match v.get("player_id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => return detail(StatusCode::BAD_REQUEST, "player_id is required"),
            };
            if tri!(co::add_player(core, id, &player).await) {
                message(format!("Player {player} added to session {id}"))
            } else {
                detail(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to add player {player} to session {id}"),
                )
            }
        }
        Ep::SessionRemovePlayer => {
            let id = valid!(path_int(param(0), "session_id"));
            let player = param(1);
            if tri!(co::remove_player(core, id, player).await) {
                message(format!("Player {player} removed from session {id}"))
            } else {
                detail(
                    StatusCode::BAD_REQUEST,
                    format!("Failed to remove player {player} from session {id}"),
                )
            }
        }
        Ep::SessionsOfHost | Ep::SessionsOfZone => {
            let by_host = ep == Ep::SessionsOfHost;
            json_res(
                StatusCode::OK,
                &tri!(co::active_sessions(core, param(0), by_host).await),
            )
        }
        Ep::SessionCleanup => {
            let minutes = match q.get("timeout_minutes") {
                None => 30,
                Some(s) => match lax_int(&Value::String(s.clone())) {
                    Ok(n) if n >= 0 => n as u64,
                    Ok(_) => 0,
                    Err(e) => return param_error("query", "timeout_minutes", e, s),
                },
            };
            let n =
                tri!(co::cleanup_stale(core, std::time::Duration::from_secs(minutes * 60)).await);
            message(format!("Cleaned up {n} stale sessions"))
        }
        Ep::Dashboard => dashboard(st).await,
        Ep::HostStats => match co::all_hosts(core).await {
            Ok(hosts) => {
                let now = now_ms();
                let after = co::offline_after(cfg);
                let online: Vec<f64> = hosts
                    .iter()
                    .filter(|h| h.effective_status(after, now) == "online")
                    .map(|h| h.view.quality_score)
                    .collect();
                let count = |f: &dyn Fn(f64) -> bool| online.iter().filter(|s| f(**s)).count();
                json_res(
                    StatusCode::OK,
                    &json!({"total_online": online.len(), "quality_distribution": {
                        "excellent": count(&|s| s >= 90.0),
                        "good": count(&|s| (70.0..90.0).contains(&s)),
                        "fair": count(&|s| (50.0..70.0).contains(&s)),
                        "poor": count(&|s| s < 50.0),
                    }}),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "coordinator host stats failed");
                json_res(
                    StatusCode::OK,
                    &json!({"error": "the store does not answer"}),
                )
            }
        },
        Ep::Metrics => metrics_text(st).await,
        Ep::AuthToken => auth_token(st, body),
        Ep::AuthRefresh => auth_refresh(st, body),
    }
}

/// The counts behind the dashboard and the metrics text.
struct Counts {
    hosts: usize,
    online: usize,
    avg_score: f64,
    zones: usize,
    zones_enabled: usize,
    zones_p2p: usize,
    sessions: usize,
    active: usize,
    players: i64,
    avg_latency: f64,
}

async fn counts(st: &AppState) -> Result<Counts, CoordError> {
    let core = &st.node.core;
    let now = now_ms();
    let after = co::offline_after(&core.cfg.doors.coordinator);
    let hosts = co::all_hosts(core).await?;
    let zones = co::list_zones(core, None).await?;
    let sessions = co::all_sessions(core).await?;
    let online = hosts
        .iter()
        .filter(|h| h.effective_status(after, now) == "online")
        .count();
    let avg = |xs: &[f64]| {
        if xs.is_empty() {
            0.0
        } else {
            co::round2(xs.iter().sum::<f64>() / xs.len() as f64)
        }
    };
    let scores: Vec<f64> = hosts.iter().map(|h| h.view.quality_score).collect();
    let active: Vec<&co::Session> = sessions
        .iter()
        .filter(|s| s.view.status == "active")
        .collect();
    let latencies: Vec<f64> = active.iter().map(|s| s.view.average_latency_ms).collect();
    Ok(Counts {
        hosts: hosts.len(),
        online,
        avg_score: avg(&scores),
        zones: zones.len(),
        zones_enabled: zones.iter().filter(|z| z.status == "enabled").count(),
        zones_p2p: zones.iter().filter(|z| z.p2p_enabled).count(),
        sessions: sessions.len(),
        active: active.len(),
        players: active.iter().map(|s| s.view.current_players).sum(),
        avg_latency: avg(&latencies),
    })
}

async fn dashboard(st: &AppState) -> Response {
    match counts(st).await {
        Ok(c) => json_res(
            StatusCode::OK,
            &DashboardBody {
                hosts: DashHosts {
                    total: c.hosts,
                    online: c.online,
                    offline: c.hosts - c.online,
                    average_quality_score: c.avg_score,
                },
                zones: DashZones {
                    total: c.zones,
                    enabled: c.zones_enabled,
                    disabled: c.zones - c.zones_enabled,
                },
                sessions: DashSessions {
                    total: c.sessions,
                    active: c.active,
                    inactive: c.sessions - c.active,
                    total_players: c.players,
                    average_latency_ms: c.avg_latency,
                },
                system: DashSystem {
                    postgres: "healthy",
                    redis: "healthy",
                },
                error: None,
            },
        ),
        Err(e) => {
            tracing::warn!(error = %e, "coordinator dashboard failed");
            json_res(
                StatusCode::OK,
                &DashboardBody {
                    hosts: DashHosts {
                        total: 0,
                        online: 0,
                        offline: 0,
                        average_quality_score: 0.0,
                    },
                    zones: DashZones {
                        total: 0,
                        enabled: 0,
                        disabled: 0,
                    },
                    sessions: DashSessions {
                        total: 0,
                        active: 0,
                        inactive: 0,
                        total_players: 0,
                        average_latency_ms: 0.0,
                    },
                    system: DashSystem {
                        postgres: "unknown",
                        redis: "unknown",
                    },
                    error: Some("the store does not answer".into()),
                },
            )
        }
    }
}

#[derive(Serialize)]
struct DashboardBody {
    hosts: DashHosts,
    zones: DashZones,
    sessions: DashSessions,
    system: DashSystem,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}
#[derive(Serialize)]
struct DashHosts {
    total: usize,
    online: usize,
    offline: usize,
    average_quality_score: f64,
}
#[derive(Serialize)]
struct DashZones {
    total: usize,
    enabled: usize,
    disabled: usize,
}
#[derive(Serialize)]
struct DashSessions {
    total: usize,
    active: usize,
    inactive: usize,
    total_players: i64,
    average_latency_ms: f64,
}
#[derive(Serialize)]
struct DashSystem {
    postgres: &'static str,
    redis: &'static str,
}

async fn metrics_text(st: &AppState) -> Response {
    let c = match counts(st).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let mut out = String::new();
    for (name, help, v) in [
        (
            "p2p_hosts_total",
            "Total number of registered hosts",
            c.hosts as f64,
        ),
        (
            "p2p_hosts_online",
            "Number of online hosts",
            c.online as f64,
        ),
        (
            "p2p_host_quality_score_avg",
            "Average host quality score",
            c.avg_score,
        ),
        ("p2p_zones_total", "Total number of zones", c.zones as f64),
        (
            "p2p_zones_enabled",
            "Number of P2P-enabled zones",
            c.zones_p2p as f64,
        ),
        (
            "p2p_sessions_total",
            "Total number of sessions",
            c.sessions as f64,
        ),
        (
            "p2p_sessions_active",
            "Number of active sessions",
            c.active as f64,
        ),
        (
            "p2p_players_total",
            "Players in active sessions",
            c.players as f64,
        ),
        (
            "p2p_session_latency_ms_avg",
            "Average latency of active sessions",
            c.avg_latency,
        ),
        ("p2p_coordinator_up", "The coordinator is up", 1.0),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v:?}\n"
        ));
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Tokens (v1)
// ---------------------------------------------------------------------------

/// A refresh token's lifetime (the old service's: 7 days).
const REFRESH_TTL_S: u64 = 7 * 24 * 3600;

fn unix_now() -> u64 {
    now_ms() / 1000
}

fn sign(st: &AppState, claims: &Value) -> Option<String> {
    let secret = &st.node.core.cfg.auth.jwt.hs256_secret;
    if secret.is_empty() {
        return None;
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .ok()
}

fn no_secret() -> Response {
    detail(
        StatusCode::SERVICE_UNAVAILABLE,
        "Token issuance is not configured (auth.jwt.hs256_secret)",
    )
}

#[derive(Serialize)]
struct Tokens {
    access_token: String,
    refresh_token: Option<String>,
    token_type: &'static str,
    expires_in: u64,
}

fn auth_token(st: &AppState, body: &Bytes) -> Response {
    let cfg = &st.node.core.cfg.doors.coordinator;
    let v = valid!(body_object(body));
    let mut f = Fields::new(&v).expect("an object");
    let player = f.string("player_id", true);
    let user = f.string("user_id", false);
    let key = f.string("api_key", false);
    if !f.errs.is_empty() {
        return unprocessable(f.errs);
    }
    if !cfg.api_key.is_empty()
        && !constant_time_eq(
            key.unwrap_or_default().as_bytes(),
            cfg.api_key.expose().as_bytes(),
        )
    {
        return detail(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let player = player.unwrap_or_default();
    let now = unix_now();
    let mut access = json!({"sub": player, "player_id": player, "type": "access", "exp": now + cfg.token_ttl_s, "iat": now});
    if let Some(u) = user {
        access["user_id"] = json!(u);
    }
    let refresh =
        json!({"player_id": player, "type": "refresh", "exp": now + REFRESH_TTL_S, "iat": now});
    match (sign(st, &access), sign(st, &refresh)) {
        (Some(a), Some(r)) => json_res(
            StatusCode::OK,
            &Tokens {
                access_token: a,
                refresh_token: Some(r),
                token_type: "Bearer",
                expires_in: cfg.token_ttl_s,
            },
        ),
        _ => no_secret(),
    }
}

fn auth_refresh(st: &AppState, body: &Bytes) -> Response {
    let cfg = &st.node.core.cfg.doors.coordinator;
    let v = valid!(body_object(body));
    let mut f = Fields::new(&v).expect("an object");
    let token = f.string("refresh_token", true);
    if !f.errs.is_empty() {
        return unprocessable(f.errs);
    }
    let secret = &st.node.core.cfg.auth.jwt.hs256_secret;
    if secret.is_empty() {
        return no_secret();
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 0;
    validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
    let claims = match jsonwebtoken::decode::<Value>(
        token.unwrap_or_default().as_str(),
        &jsonwebtoken::DecodingKey::from_secret(secret.expose().as_bytes()),
        &validation,
    ) {
        Ok(d) => d.claims,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            return detail(
                StatusCode::UNAUTHORIZED,
                "Refresh token has expired. Please login again.",
            )
        }
        Err(_) => return detail(StatusCode::UNAUTHORIZED, "Invalid refresh token"),
    };
    if claims.get("type").and_then(Value::as_str) != Some("refresh") {
        return detail(
            StatusCode::UNAUTHORIZED,
            "Invalid token type: expected refresh token",
        );
    }
    let Some(player) = claims.get("player_id").and_then(Value::as_str) else {
        return detail(
            StatusCode::UNAUTHORIZED,
            "Invalid refresh token: missing player_id",
        );
    };
    let now = unix_now();
    let access =
        // `sub` too, unlike the old service's refreshed token: the signaling
        // socket (and every other door) proves a peer id by `sub`, so a
        // refreshed token must work where the first one did.
        json!({"sub": player, "player_id": player, "type": "access", "exp": now + cfg.token_ttl_s, "iat": now});
    match sign(st, &access) {
        Some(a) => json_res(
            StatusCode::OK,
            &Tokens {
                access_token: a,
                refresh_token: None,
                token_type: "Bearer",
                expires_in: cfg.token_ttl_s,
            },
        ),
        None => no_secret(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(method: Method, path: &str) -> Option<(Ep, Vec<String>)> {
        match route(&method, path) {
            Matched::Full(e, p) => Some((e, p)),
            _ => None,
        }
    }

    #[test]
    fn both_prefixes_route_and_v1_only_routes_stay_v1() {
        assert_eq!(
            ep(Method::GET, "/api/v1/hosts/"),
            Some((Ep::HostList, vec![]))
        );
        assert_eq!(ep(Method::GET, "/api/hosts/"), Some((Ep::HostList, vec![])));
        assert_eq!(
            ep(Method::GET, "/api/v1/sessions/7"),
            Some((Ep::SessionGet, vec!["7".into()]))
        );
        assert_eq!(
            ep(Method::POST, "/api/v1/hosts/a%20b/heartbeat"),
            Some((Ep::HostHeartbeat, vec!["a b".into()]))
        );
        assert!(ep(Method::GET, "/api/v1/monitoring/metrics").is_some());
        assert!(ep(Method::GET, "/api/monitoring/metrics").is_none());
        assert!(ep(Method::GET, "/api/v1v1/hosts/").is_none());
    }

    #[test]
    fn a_path_of_other_methods_lists_them() {
        match route(&Method::POST, "/api/v1/hosts/") {
            Matched::Partial(allow) => assert_eq!(allow, "GET"),
            _ => panic!("expected a partial match"),
        }
        match route(&Method::PUT, "/api/v1/hosts/x") {
            Matched::Partial(allow) => assert_eq!(allow, "GET, DELETE"),
            _ => panic!("expected a partial match"),
        }
        assert!(matches!(
            route(&Method::GET, "/api/v1/hosts"),
            Matched::None
        ));
    }

    #[test]
    fn validation_follows_pydantic() {
        let body = json!({"port": "80", "cores": 2.5, "n": "x", "b": "yes"});
        let mut f = Fields::new(&body).unwrap();
        assert_eq!(f.int("port", true, Some(1), Some(65535)), Some(80));
        assert_eq!(f.int("cores", true, None, None), None);
        assert_eq!(f.int("n", true, None, None), None);
        assert_eq!(f.int("missing", true, None, None), None);
        assert_eq!(f.boolean("b"), Some(true));
        assert_eq!(f.float("n", true, None, None), None);
        let types: Vec<&str> = f.errs.iter().map(|e| e.ty).collect();
        assert_eq!(
            types,
            ["int_from_float", "int_parsing", "missing", "float_parsing"]
        );
        let body = json!({"port": 0, "loss": 100.5, "score": 11});
        let mut f = Fields::new(&body).unwrap();
        assert_eq!(f.int("port", true, Some(1), Some(65535)), None);
        assert_eq!(
            f.float("loss", true, Some(json!(0)), Some(json!(100))),
            None
        );
        assert_eq!(
            f.float("score", true, Some(json!(0.0)), Some(json!(10.0))),
            None
        );
        let out = serde_json::to_string(&f.errs).unwrap();
        assert_eq!(
            out,
            r#"[{"type":"greater_than_equal","loc":["body","port"],"msg":"Input should be greater than or equal to 1","input":0,"ctx":{"ge":1}},{"type":"less_than_equal","loc":["body","loss"],"msg":"Input should be less than or equal to 100","input":100.5,"ctx":{"le":100}},{"type":"less_than_equal","loc":["body","score"],"msg":"Input should be less than or equal to 10.0","input":11,"ctx":{"le":10.0}}]"#
        );
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
