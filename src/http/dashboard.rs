//! The dashboard server's door (LEGACY-PROTOCOLS.md §3): its WebSocket at
//! exactly `/ws/`, `GET /api/config` and `GET /health`, on one listener as
//! the old server had them.
//!
//! Served on `doors.dashboard.listen` (the whole path space) and/or under
//! `doors.dashboard.prefix` on the main listener (`{prefix}/ws/`,
//! `{prefix}/api/config`, `{prefix}/health`).

use axum::Router;

use super::AppState;

/// The door's routes, at the root of its own listener (the main listener
/// nests them under the prefix).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
}
