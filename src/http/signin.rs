//! `POST /api/auth/anonymous`: sign-in for apps without an identity provider
//! of their own ([`crate::signin`]). Open to anyone (it is how a client gets
//! its first token), so never behind the admin guard; bounded per client
//! address instead (`auth.signin.rate_per_minute`).
//!
//! `200 {"token", "peer_id", "expires_at"}`: a JWT for a fresh peer id (its
//! `sub`), which `hello` accepts as any other token, and its `exp` (Unix
//! seconds). Refusals are the API's JSON errors: 503 `signin-unavailable`
//! while `auth.signin.enabled` is off, 429 `rate-limited` with
//! `Retry-After` (seconds) over the limit.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use super::upgrade::observed_addr;
use super::AppState;
use crate::error::ErrorCode;
use crate::signin::SignInError;

/// `/api/auth/anonymous` (open).
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/auth/anonymous", post(anonymous))
}

/// The answer, its keys in this order.
#[derive(Serialize)]
struct SignedIn<'a> {
    token: &'a str,
    peer_id: &'a str,
    expires_at: u64,
}

async fn anonymous(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let from = observed_addr(&st.node, peer, &headers).ip();
    match st.node.signin.issue(from) {
        Ok(t) => Json(SignedIn {
            token: &t.token,
            peer_id: t.peer_id.as_str(),
            expires_at: t.expires_at,
        })
        .into_response(),
        Err(SignInError::Disabled) => ApiError::new(
            ErrorCode::SigninUnavailable,
            "sign-in is off on this node (auth.signin.enabled)",
        )
        .into_response(),
        Err(SignInError::RateLimited(wait)) => {
            let secs = wait.as_secs_f64().ceil() as u64;
            let mut r = ApiError::new(
                ErrorCode::RateLimited,
                format!("too many sign-ins from this address; retry in {secs} s"),
            )
            .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("digits"),
            );
            r
        }
        Err(SignInError::Failed) => {
            ApiError::new(ErrorCode::Internal, "sign-in failed; see the node's log").into_response()
        }
    }
}
