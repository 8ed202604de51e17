//! The room signaling server's door (LEGACY-PROTOCOLS.md §2): its HTTP
//! endpoints (sign-in, rooms) and its WebSocket, which the old server
//! accepted at any path on a listener of its own.
//!
//! Served on `doors.room_signaling.http_listen` / `ws_listen` (the whole
//! path space, as the old server's two ports) and/or under
//! `doors.room_signaling.prefix` on the main listener (HTTP at
//! `{prefix}/create-room`, ..., the WebSocket at `{prefix}/ws`).

use axum::Router;

use super::AppState;

/// The HTTP endpoints, at the root of their own listener (the main
/// listener nests them under the prefix).
pub(super) fn http_routes() -> Router<AppState> {
    Router::new()
}

/// The WebSocket, at any path of its own listener.
pub(super) fn ws_routes() -> Router<AppState> {
    Router::new()
}

/// What the main listener serves under the prefix: the HTTP endpoints and
/// the WebSocket at `/ws`.
pub(super) fn prefixed_routes() -> Router<AppState> {
    http_routes()
}
