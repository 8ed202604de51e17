//! Every HTTP error the node sends: JSON `{"error": {"code", "message"}}`
//! with a code from [`ErrorCode`] and the status [`status`] gives that code.
//!
//! Two sources, one shape:
//!
//! - the handlers and the admin guard return an [`ApiError`], which is built
//!   from an [`ErrorCode`] and nothing else: no handler picks a status;
//! - what the framework answers by itself (a 405 for a method a path does not
//!   serve, a 413 from the body cap, the rejection of an extractor: a
//!   WebSocket upgrade with a missing header, a path segment that is not
//!   UTF-8) is rewritten by [`framework_errors_as_json`], one layer over the
//!   whole router.
//!
//! Why a layer rather than handling each rejection where it arises: the
//! framework makes these answers in places a handler never sees (the method
//! router's 405, whose `Allow` header the layer keeps; the extractors of
//! `crate::ws`, which reuse axum's rejection types), and a layer covers an
//! extractor added later without anyone remembering to wrap it. It recognizes
//! them by what every answer of ours has and theirs lacks: an error status
//! without a JSON body. The cost is that their codes are per status
//! (`bad-request` for any 400), not per cause; the cause stays in `message`,
//! which is the framework's own text, the one clients got as plain text
//! before.
//!
//! Not covered, by design: what hyper answers before a request reaches the
//! router (431 for an oversized head, 400 for an unparsable one), and the
//! pages of the older service (`/`, `/debug/list_workers`), which are 200s
//! in their own shape. `/readyz`'s 503 is JSON of its own (`{"ready": false,
//! …}`) and is left as it is.

use std::fmt::Display;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ErrorCode;

/// The status of each code, decided here and nowhere else. Exhaustive, so a
/// new code does not compile until it has one.
///
/// Each code has one status; several codes share one. Codes sent only on the
/// WebSocket today (`malformed`, `room-full`, …) have the status they would
/// have over HTTP, so the mapping is total.
pub fn status(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        Malformed | UnknownType | InvalidMessage | InvalidPeerId | InvalidRoom | InvalidKind
        | MetaTooLarge | HelloRequired | InvalidEndpoint | InvalidPool | NestingTooDeep
        | BadRequest => StatusCode::BAD_REQUEST,
        Unauthorized => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        NotFound | RoomNotFound | PeerNotFound | WorkerNotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        AlreadyHello | RoomFull | TooManyRooms | NotInRoom | AlreadyPaired | NotPaired
        | SameWorker | PeerIdTaken | RoomExists | TooManyChannels | RegistryFull => {
            StatusCode::CONFLICT
        }
        RoomTokenRequired => StatusCode::UNAUTHORIZED,
        RoomTokenInvalid => StatusCode::FORBIDDEN,
        RoomExpired => StatusCode::GONE,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ClusterUnavailable | Draining | TooManyConnections | SigninUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// The code for an error status the framework answered with by itself. The
/// statuses it uses today (400, 405, 413, 426, and 500 for a missing
/// extension, a bug) have their own codes; any other client error would be
/// a `bad-request` (400) and any other server error `internal` (500): no
/// route answers one today.
fn code_for_framework_status(s: StatusCode) -> ErrorCode {
    match s {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UPGRADE_REQUIRED => ErrorCode::UpgradeRequired,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}

/// An HTTP error: a stable code and a message safe to show (never internal
/// details; those go to the log). Its status is the code's ([`status`]).
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `cluster-unavailable` for a store call that failed; the failure
    /// itself is logged, not sent.
    pub fn store_unavailable(e: impl Display) -> Self {
        tracing::warn!(error = %e, "store call failed");
        Self::new(
            ErrorCode::ClusterUnavailable,
            "the cluster backend is unavailable",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (status(self.code), body).into_response()
    }
}

/// The longest framework text kept as a message. Axum's are one line; a
/// larger body is not one of theirs.
const MAX_FRAMEWORK_TEXT: usize = 512;

/// Rewrites an error response that is not JSON (one the framework made by
/// itself) into an [`ApiError`]'s, keeping its other headers (`Allow` on a
/// 405). Success responses, and errors already JSON, pass untouched.
///
/// The message is the framework's text for a client error that has one (a
/// short body of known size: axum's rejections), else a fixed one; 413
/// always gets a fixed one naming the limit (axum's does not); a 5xx text
/// is logged, never sent.
pub async fn framework_errors_as_json(res: Response) -> Response {
    let st = res.status();
    if !(st.is_client_error() || st.is_server_error())
        || is_json(res.headers())
        || res.extensions().get::<OwnErrorPage>().is_some()
    {
        return res;
    }
    let code = code_for_framework_status(st);
    let (parts, body) = res.into_parts();
    let text = short_text(body).await;
    let message = match (code, text) {
        (ErrorCode::PayloadTooLarge, _) => format!(
            "the request body is larger than {} bytes",
            super::MAX_BODY_BYTES
        ),
        (ErrorCode::Internal, text) => {
            tracing::warn!(status = %st, text = text.as_deref().unwrap_or(""), "framework error");
            "internal error; see the node's log".to_string()
        }
        (_, Some(text)) => text,
        (ErrorCode::MethodNotAllowed, None) => {
            "this path does not serve this method; `Allow` lists the ones it does".to_string()
        }
        (_, None) => format!("the request was refused ({st})"),
    };
    let mut out = ApiError::new(code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

/// Marks an error response that is a page of its own on purpose (the
/// console's login page, answered with 401 to a browser):
/// [`framework_errors_as_json`] leaves it as it is.
#[derive(Debug, Clone, Copy)]
pub struct OwnErrorPage;

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The body as text, when it is non-empty UTF-8 of known, small size (the
/// framework's bodies are in memory); a body of unknown length is not read.
async fn short_text(body: Body) -> Option<String> {
    let size = body.size_hint().exact()?;
    if size == 0 || size > MAX_FRAMEWORK_TEXT as u64 {
        return None;
    }
    let bytes = axum::body::to_bytes(body, MAX_FRAMEWORK_TEXT).await.ok()?;
    String::from_utf8(bytes.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const JSON: HeaderValue = HeaderValue::from_static("application/json");

    /// Every code, with the wire string and status clients rely on. A code
    /// added to `ErrorCode` without a row here fails the length check; a
    /// renamed string or moved status fails its row.
    #[test]
    fn every_code_has_a_stable_string_and_status() {
        use ErrorCode::*;
        let table: &[(ErrorCode, &str, u16)] = &[
            (Malformed, "malformed", 400),
            (UnknownType, "unknown-type", 400),
            (InvalidMessage, "invalid-message", 400),
            (InvalidPeerId, "invalid-peer-id", 400),
            (InvalidRoom, "invalid-room", 400),
            (InvalidKind, "invalid-kind", 400),
            (MetaTooLarge, "meta-too-large", 400),
            (HelloRequired, "hello-required", 400),
            (AlreadyHello, "already-hello", 409),
            (Unauthorized, "unauthorized", 401),
            (PeerNotFound, "peer-not-found", 404),
            (RoomFull, "room-full", 409),
            (TooManyRooms, "too-many-rooms", 409),
            (NotInRoom, "not-in-room", 409),
            (ClusterUnavailable, "cluster-unavailable", 503),
            (Draining, "draining", 503),
            (AlreadyPaired, "already-paired", 409),
            (NotPaired, "not-paired", 409),
            (InvalidEndpoint, "invalid-endpoint", 400),
            (InvalidPool, "invalid-pool", 400),
            (WorkerNotFound, "worker-not-found", 404),
            (SameWorker, "same-worker", 409),
            (PeerIdTaken, "peer-id-taken", 409),
            (Forbidden, "forbidden", 403),
            (Internal, "internal", 500),
            (NestingTooDeep, "nesting-too-deep", 400),
            (NotFound, "not-found", 404),
            (RoomNotFound, "room-not-found", 404),
            (TooManyConnections, "too-many-connections", 503),
            (MethodNotAllowed, "method-not-allowed", 405),
            (PayloadTooLarge, "payload-too-large", 413),
            (BadRequest, "bad-request", 400),
            (UpgradeRequired, "upgrade-required", 426),
            (RoomExists, "room-exists", 409),
            (RoomTokenRequired, "room-token-required", 401),
            (RoomTokenInvalid, "room-token-invalid", 403),
            (RoomExpired, "room-expired", 410),
            (SigninUnavailable, "signin-unavailable", 503),
            (RateLimited, "rate-limited", 429),
            (TooManyChannels, "too-many-channels", 409),
            (RegistryFull, "registry-full", 409),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len(), "a code has no row");
        for &code in ErrorCode::ALL {
            let &(_, wire, st) = table
                .iter()
                .find(|(c, _, _)| *c == code)
                .unwrap_or_else(|| panic!("{code:?} has no row"));
            assert_eq!(code.as_str(), wire, "{code:?}");
            assert_eq!(status(code).as_u16(), st, "{code:?}");
        }
    }

    /// The body and status of an [`ApiError`]: the code's status, the
    /// code's string, the message as given.
    #[tokio::test]
    async fn an_api_error_is_its_codes_status_and_json() {
        let res = ApiError::new(ErrorCode::RoomNotFound, "room `x` has no members").into_response();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()[header::CONTENT_TYPE], JSON);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": "room-not-found", "message": "room `x` has no members"}})
        );
    }

    async fn rewrite(res: Response) -> (StatusCode, HeaderMap, serde_json::Value) {
        let res = framework_errors_as_json(res).await;
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, 4096).await.unwrap();
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, v)
    }

    /// A framework 405 keeps `Allow` and gets a JSON body; its plain-text
    /// 400 keeps its text as the message; a 5xx text is not sent; success
    /// and JSON errors pass untouched.
    #[tokio::test]
    async fn framework_answers_become_json() {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let (st, h, v) = rewrite(res).await;
        assert_eq!(st, 405);
        assert_eq!(h[header::ALLOW], "GET,HEAD");
        assert_eq!(h[header::CONTENT_TYPE], JSON);
        assert_eq!(v["error"]["code"], "method-not-allowed", "{v}");

        let res = (
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        )
            .into_response();
        let (st, _, v) = rewrite(res).await;
        assert_eq!(st, 400);
        assert_eq!(
            v,
            json!({"error": {"code": "bad-request", "message": "`Sec-WebSocket-Key` header missing"}})
        );

        let res = (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Missing request extension",
        )
            .into_response();
        let (st, _, v) = rewrite(res).await;
        assert_eq!(st, 500);
        assert_eq!(v["error"]["code"], "internal");
        assert!(!v.to_string().contains("extension"), "{v}");

        let res = (StatusCode::OK, "plain").into_response();
        let res = framework_errors_as_json(res).await;
        let body = axum::body::to_bytes(res.into_body(), 64).await.unwrap();
        assert_eq!(&body[..], b"plain");

        let readyz = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response();
        let (st, _, v) = rewrite(readyz).await;
        assert_eq!((st.as_u16(), v), (503, json!({"ready": false})));
    }
}
