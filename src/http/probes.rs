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
use crate::metrics as m;

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
    // State gauges are read at the scrape itself, so they are never stale
    // and cost nothing between scrapes.
    let core = &st.node.core;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!(m::READY).set(flag(core.not_ready_reason().is_none()));
    metrics::gauge!(m::DRAINING).set(flag(core.is_draining()));
    metrics::gauge!(m::BUS_READY).set(flag(core.bus.is_ready()));
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        st.metrics.render(),
    )
}
