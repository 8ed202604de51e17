//! Every HTTP error the node sends: JSON `{"error": {"code", "message"}}`
//! with a code from [`ErrorCode`] and the status [`status`] gives that code.
//!
//! The handlers and the admin guard return an [`ApiError`], which is built
//! from an [`ErrorCode`] and nothing else: no handler picks a status.

use std::fmt::Display;

use axum::http::StatusCode;
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
        | SameWorker | PeerIdTaken => StatusCode::CONFLICT,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ClusterUnavailable | Draining | TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderValue};

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
}
