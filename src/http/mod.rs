//! The HTTP door: everything the node answers over HTTP, one module per
//! purpose:
//!
//! - [`upgrade`]: `/ws`, the native WebSocket door, with admission (drain,
//!   connection limit);
//! - [`probes`]: `/healthz`, `/readyz`, `/metrics`, open to orchestrators
//!   and scrapers;
//! - [`api`]: the operator API (`/api/workers`, `/api/connect`) and the
//!   admin guard;
//! - [`rooms`]: rooms over HTTP (`/api/rooms`, `/api/rooms/{room}`): the
//!   reads behind the guard, creating and deleting as `rooms.create` says;
//! - [`legacy`]: the older rendezvous service's `/`, `/debug/list_workers`
//!   and worker door `/ws/register/{worker_id}`;
//! - [`signin`]: `POST /api/auth/anonymous`, open, rate-limited per address;
//! - [`demo`]: `GET /demo`, the WebRTC demo page and the browser client
//!   (`/demo/switchboard.js`), compiled in, open;
//! - [`room_signaling`] and [`dashboard`]: the doors of the room signaling
//!   and dashboard servers' clients, on listeners of their own
//!   ([`door_router`]) and/or under a prefix on the main listener
//!   (`[doors]` in the configuration);
//! - [`console`]: the operator console (`/admin`, `/admin/chat`,
//!   `/ws/admin`, `/ws/chat/...`), behind its own login (docs/ADMIN.md);
//! - [`coordinator_ws`]: the game coordinator's signaling WebSocket at
//!   `/api/signaling/ws` and `/api/v1/signaling/ws`;
//! - [`publish`]: `POST /api/publish`, server-side messages to a room, a
//!   zone, a signaling session or a dashboard channel, on every node;
//!   [`publish_poll`] publishes a polled URL's JSON to zones;
//! - [`forwarded`]: the client's address behind a trusted proxy;
//! - [`error`]: every error answer, JSON `{"error": {"code", "message"}}`
//!   with a code from [`crate::error::ErrorCode`] and the status one
//!   function gives it.
//!
//! [`router`] assembles them. Layers, innermost first: the admin guard, once
//! over every operator route (the API's and `/debug/list_workers`), never
//! over the probes or the doors; the body cap ([`MAX_BODY_BYTES`]) and the
//! layer that turns the framework's own error answers into JSON
//! ([`error::framework_errors_as_json`]) over everything, the 404 fallback
//! included.

pub mod api;
pub mod console;
pub mod coordinator;
pub mod coordinator_ws;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod forwarded;
pub mod legacy;
pub mod probes;
pub mod publish;
pub mod publish_poll;
pub mod room_signaling;
pub mod rooms;
pub mod signin;
pub mod upgrade;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn_with_state, map_response};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::ErrorCode;
use crate::node::Node;

pub use api::admin_guard;
pub use error::ApiError;
pub use forwarded::client_addr;

/// Largest HTTP request body the API reads; a larger one is refused with 413
/// `payload-too-large` before a handler runs.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    // What an operator reads or does: peers' addresses and endpoints, room
    // members, pairing two workers. `/metrics` stays open: Prometheus scrapes
    // it without credentials, and it holds counts with bounded labels, never
    // a peer id or an address.
    let operator = Router::new()
        .merge(api::routes())
        .merge(rooms::read_routes())
        .merge(legacy::operator_routes())
        .route_layer(from_fn_with_state(state.clone(), api::admin_guard));
    let mut main = Router::new()
        .merge(upgrade::routes())
        .merge(probes::routes())
        .merge(legacy::routes())
        // Before the guarded routes of the same paths: the merged path's
        // fallback (405) is the guarded one, so the guard answers first.
        .merge(rooms::record_routes())
        .merge(signin::routes())
        .merge(demo::routes())
        .merge(console::routes())
        .merge(operator)
        // The publish API (admins or `publish.api_key`, checked inside).
        .merge(publish::routes());
    let doors = &state.node.core.cfg.doors;
    if !doors.room_signaling.prefix.is_empty() {
        main = main.nest(
            &doors.room_signaling.prefix,
            room_signaling::prefixed_routes(),
        );
    }
    if !doors.dashboard.prefix.is_empty() {
        main = main.nest(
            &doors.dashboard.prefix,
            dashboard::routes(dashboard::Mount::Prefix(doors.dashboard.prefix.clone())),
        );
        main = main.merge(dashboard::prefix_slash_route(&doors.dashboard.prefix));
    }
    if doors.coordinator.on_main {
        // Its REST families and its signaling WebSocket (own admission).
        main = main
            .merge(coordinator::main_routes())
            .merge(coordinator_ws::routes());
    }
    finish(main, state)
}

/// The router of a door's own listener, by its configuration key (see
/// [`crate::config::Config::door_listeners`]): the door owns the whole path
/// space there, as the old server did.
pub fn door_router(state: AppState, key: &str) -> Router {
    let routes = match key {
        "doors.room_signaling.http_listen" => room_signaling::http_routes(),
        "doors.room_signaling.ws_listen" => room_signaling::ws_routes(),
        "doors.dashboard.listen" => dashboard::routes(dashboard::Mount::Own),
        // The signaling WebSocket and the publish API are specific routes,
        // which take precedence over the door's catch-all REST routes.
        "doors.coordinator.listen" => coordinator::own_routes()
            .merge(coordinator_ws::routes())
            .merge(publish::routes()),
        other => unreachable!("no door listener is configured as {other}"),
    };
    finish(routes, state)
}

/// What every listener's router gets: the JSON 404, the body cap, and the
/// framework's own error answers as JSON.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        // The API's bodies are a few hundred bytes; axum's default would
        // buffer 2 MB per request before a handler (or its admin check) runs.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(map_response(error::framework_errors_as_json))
        .with_state(state)
}
