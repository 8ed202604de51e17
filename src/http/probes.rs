//! What an orchestrator and a scraper ask: `/healthz` (the process is
//! alive), `/readyz` (should this node get traffic) and `/metrics`
//! (Prometheus text).
//!
//! All three are open whatever `http.admin_token` says: probes and scrapers
//! come without credentials, and `/metrics` holds counts with bounded labels,
//! never a peer id or an address. `/readyz` answers 503 in its own JSON shape
//! (`{"ready": false, "node", "reason"}`), not as an error.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// The Prometheus text exposition format's content type.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `/healthz`, `/readyz`, `/metrics`.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.node.core.not_ready_reason() {
        None => Json(json!({"ready": true, "node": st.node.core.id})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "node": st.node.core.id, "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        st.metrics.render(),
    )
}
