//! Switchboard: a horizontally scalable signaling, rendezvous and relay broker.
//!
//! A tour of the crate, in the order a message flows (docs/DESIGN.md has
//! the same map with the path of one signal):
//!
//! - [`server`]: the accept loop: deadlines, header size, a bound on
//!   connections that are not WebSocket sessions, the open-file budget.
//! - [`http`]: the HTTP doors: WebSocket upgrades, probes, `/metrics`, the
//!   operator API.
//! - [`ws`]: the WebSocket upgrade and framing (RFC 6455, server side), with
//!   no buffer held by an idle socket.
//! - [`connection`]: one task per connection, the same for every door: it
//!   reads frames, writes what the connection's bounded queue holds,
//!   heartbeats, closes.
//! - [`dialect`]: the seam between a door's wire format and the core: the
//!   native protocol ([`dialect::native`]) and the translators for clients
//!   of older systems.
//! - [`node`]: the router: [`node::Node::register`] for every door, command
//!   dispatch, events from other nodes, maintenance, drain.
//! - [`core`]: what every part shares: the hub (local sockets), the store
//!   and bus handles, the envelope sequence, the flags; and the core's
//!   vocabulary (commands in, events out).
//! - [`relay`] (direct signals across nodes), [`rooms`] (rooms and
//!   presence), [`rendezvous`] (workers, pairing, STUN observations; [`stun`]
//!   is the UDP responder), [`dashboard`] (the dashboard door's channels and
//!   room registry), [`coordinator`] (the game coordinator's hosts, zones,
//!   sessions and background work): the parts built on the core, which know it and not each
//!   other.
//! - [`bus`] and [`store`]: the two cluster seams, with in-process backends
//!   for the embedded single node and Redis backends ([`cluster`]) for a
//!   cluster.
//! - [`config`], [`auth`], [`signin`], [`metrics`], [`error`], [`types`],
//!   [`payload`], [`time`]: the supporting cast.
//!
//! [`start`] builds and starts everything a node runs; [`Started::serve`]
//! serves until a shutdown future resolves, then drains. The binary in
//! `main.rs` only parses arguments, loads the configuration and wires
//! signals. `tests/layering.rs` checks that no module imports a module that
//! imports it back.

pub mod auth;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod console;
pub mod coordinator;
pub mod core;
pub mod dashboard;
pub mod dialect;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod payload;
pub mod relay;
pub mod rendezvous;
pub mod rooms;
pub mod server;
pub mod signin;
pub mod store;
pub mod stun;
pub mod tasks;
pub mod time;
pub mod turn;
pub mod types;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::Node;

/// Why a node did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration cannot work (one line per problem): exit code 2.
    Config(Vec<String>),
    /// Something outside the configuration failed (a port is taken): exit code 1.
    Io(String),
}

/// A node that has started: its backends connected, its background tasks
/// running under its tracker, its ports bound and STUN answering; HTTP is
/// served by [`Started::serve`].
pub struct Started {
    /// The node.
    pub node: Arc<Node>,
    /// The bound HTTP/WebSocket listener.
    listener: TcpListener,
    /// The doors' own listeners, by configuration key (`[doors]`).
    doors: Vec<(&'static str, TcpListener)>,
    /// Renders `/metrics`.
    metrics: PrometheusHandle,
    /// The address the listener is bound to.
    pub addr: SocketAddr,
}

/// Builds and starts everything a node runs, in one place and in order:
/// the metrics recorder (so every counter counts from the first event), the
/// open-file budget (`server.max_connections` fitted under the limit), the
/// node with its backends and background tasks (all on the node's tracker,
/// so shutdown stops and awaits them), the HTTP listener, the STUN sockets
/// and their responders. Call [`shutdown_signal`] before this, so a SIGTERM
/// once the port is open starts a drain instead of killing the process.
pub async fn start(mut cfg: Config) -> Result<Started, StartError> {
    let metrics = metrics::install();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    ::metrics::gauge!(metrics::WORKER_THREADS).set(workers as f64);
    // Before the node is built: it sizes its connection limit from this.
    let open_files = server::raise_open_files_limit();
    let fds = server::plan_fds(open_files, &cfg.server).map_err(|e| StartError::Config(vec![e]))?;
    if fds.max_connections < cfg.server.max_connections {
        // A warning when the operator asked for more than fits; the built-in
        // default (sized for a large host) is fitted quietly.
        let asked = cfg.server.max_connections != config::ServerConfig::default().max_connections;
        let (configured, effective, limit) =
            (cfg.server.max_connections, fds.max_connections, fds.limit);
        let (pending, reserved) = (cfg.server.max_pending, cfg.server.reserved_fds);
        if asked {
            tracing::warn!(
                configured,
                effective,
                open_files_limit = limit,
                max_pending = pending,
                reserved_fds = reserved,
                "server.max_connections lowered to fit the open-file limit"
            );
        } else {
            tracing::info!(
                default = configured,
                effective,
                open_files_limit = limit,
                max_pending = pending,
                reserved_fds = reserved,
                "server.max_connections fitted to the open-file limit"
            );
        }
        cfg.server.max_connections = fds.max_connections;
    }
    ::metrics::gauge!(metrics::OPEN_FILES_LIMIT).set(fds.limit as f64);
    ::metrics::gauge!(metrics::MAX_CONNECTIONS).set(cfg.server.max_connections as f64);
    ::metrics::gauge!(metrics::HTTP_MAX_PENDING).set(cfg.server.max_pending as f64);
    let effective = serde_json::to_string(&cfg.redacted()).expect("config serializes");
    let node = Node::build(cfg).await.map_err(StartError::Config)?;
    let core = &node.core;
    if core.cfg.doors.coordinator.enabled() {
        // The game coordinator's configured zones and background work
        // (one node at a time, behind its lease).
        // Zones first, so the first request finds them; when the store does
        // not answer yet, the background work tries again.
        let seeded = match coordinator::seed_zones(core).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "doors.coordinator.zones: not created yet; retrying");
                false
            }
        };
        core.spawn(coordinator::background(Arc::downgrade(&node), seeded));
    }
    let (bus, store) = core.backend_names();
    tracing::info!(node = %core.id, bus, store, config = %effective, "starting switchboard {}", env!("CARGO_PKG_VERSION"));
    log_admission(&node);
    let listener = bind_listener(core.cfg.server.listen).map_err(|e| {
        tracing::error!(addr = %core.cfg.server.listen, error = %e, "cannot bind");
        StartError::Io(format!(
            "server.listen: cannot bind {}: {e}",
            core.cfg.server.listen
        ))
    })?;
    // The doors' own listeners, each named by its key when it cannot bind.
    let mut doors = Vec::new();
    for (key, want) in core.cfg.door_listeners() {
        let door = bind_listener(want).map_err(|e| {
            tracing::error!(%key, addr = %want, error = %e, "cannot bind");
            StartError::Io(format!("{key}: cannot bind {want}: {e}"))
        })?;
        let bound = door
            .local_addr()
            .map_err(|e| StartError::Io(e.to_string()))?;
        // Not "listening on": that line announces the main listener.
        tracing::info!("{key}: listening at {bound}");
        doors.push((key, door));
    }
    // The STUN responder binds before the node announces itself: a port that
    // is taken stops the start, naming the key.
    let stun = rendezvous::bind_stun(&core.cfg.stun).await.map_err(|e| {
        tracing::error!(error = %e, "cannot start the STUN responder");
        StartError::Io(e)
    })?;
    node.rdv.start_stun(stun);
    http::publish_poll::start(&node);
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    node.console.set_addr(addr);
    tracing::info!(
        worker_threads = workers,
        open_files_limit = fds.limit,
        max_connections = core.cfg.server.max_connections,
        max_pending = core.cfg.server.max_pending,
        "listening on {addr}"
    );
    Ok(Started {
        node,
        listener,
        doors,
        metrics,
        addr,
    })
}

impl Started {
    /// Serves until `shutdown` resolves, then drains: readiness fails,
    /// clients are told to reconnect, and after the grace period the
    /// remaining sockets close with 1012. Returns once every connection has
    /// ended and the node's background tasks have stopped.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        run(self.listener, self.doors, self.node, self.metrics, shutdown).await
    }
}

/// Says at start who may connect without a token, and warns where that is
/// everyone or no one.
fn log_admission(node: &Node) {
    use crate::config::AnonymousMode as M;
    let listen = &node.core.cfg.server.listen;
    match node.anonymous_mode() {
        M::TokenRequired => tracing::info!("auth: every peer needs a token (auth.jwt)"),
        M::LoopbackOnly => tracing::info!(
            %listen,
            "auth: anonymous peers allowed because listening on loopback (no auth.jwt key; auth.anonymous = \"loopback\")"
        ),
        M::Allowed => tracing::warn!(
            %listen,
            "auth: anonymous peers allowed by auth.anonymous=allow (no auth.jwt key): any client may take any peer id that is free"
        ),
        M::RefusedNotLoopback => tracing::warn!(
            %listen,
            "auth: anonymous peers refused: every peer needs a token, and no auth.jwt key is configured, so every hello will be refused (not listening on loopback; set auth.jwt, or auth.anonymous = \"allow\" on a trusted network)"
        ),
        M::Refused => tracing::warn!(
            "auth: anonymous peers refused by auth.anonymous=deny: every peer needs a token, and no auth.jwt key is configured, so every hello will be refused"
        ),
    }
    if node.core.cfg.http.admin_token.is_empty() {
        tracing::info!("admin endpoints answer plain loopback requests only (no http.admin_token)");
    }
    use crate::config::RoomCreatePolicy as R;
    match node.core.cfg.rooms.create {
        R::Admin => {}
        R::SignedIn if node.anonymous_mode() != M::TokenRequired => tracing::warn!(
            "rooms.create = \"signed_in\", but no auth.jwt key is configured to verify a token with: only an admin may create rooms"
        ),
        R::SignedIn => tracing::info!("rooms: any caller with a valid token may create rooms (rooms.create = \"signed_in\")"),
        R::Anyone => tracing::warn!(
            %listen,
            "rooms: anyone who reaches this port may create rooms (rooms.create = \"anyone\")"
        ),
    }
    if node.signin.is_enabled() {
        tracing::info!(
            ttl_s = node.core.cfg.auth.signin.token_ttl_s,
            "auth: sign-in is on: anyone who reaches the node gets a token for a fresh peer id (auth.signin)"
        );
    } else if node.core.cfg.doors.room_signaling.is_served() {
        tracing::warn!(
            "doors.room_signaling: its clients sign in at /anonymous-signin, which answers 503 while auth.signin.enabled is off"
        );
    }
}

/// Serves `node` on `listener` (and each door on its own listener) until
/// `shutdown` resolves, then drains: readiness fails, clients are told to
/// reconnect, and after the grace period the remaining sockets close with
/// 1012; then the node's background tasks stop. Returns once every
/// connection has ended.
pub async fn run(
    listener: TcpListener,
    doors: Vec<(&'static str, TcpListener)>,
    node: Arc<Node>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = http::AppState {
        node: node.clone(),
        metrics,
    };
    let mut listeners = vec![(listener, http::router(state.clone()))];
    for (key, door) in doors {
        listeners.push((door, http::door_router(state.clone(), key)));
    }
    let stop_http = CancellationToken::new();
    let limits = server::HttpLimits::new(&node.core.cfg.server, node.trusted_proxies.clone());
    let server = tokio::spawn(server::serve_all(listeners, limits, stop_http.clone()));
    shutdown.await;
    node.drain(node.core.cfg.shutdown.grace_period).await;
    stop_http.cancel();
    let served = match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("HTTP server did not stop in time");
            Ok(())
        }
    };
    node.core.stop_tasks(Duration::from_secs(5)).await;
    served
}

/// Binds the HTTP/WebSocket listener with a deep accept queue: tokio's
/// default backlog of 128 drops SYNs during a reconnect storm (a draining
/// neighbour's clients all arriving at once), and each drop costs the client
/// a one-second retransmit. The kernel caps it at `net.core.somaxconn`.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: call it before binding, so a
/// signal that arrives once the node is listening starts a drain instead of
/// killing the process. Must be called within a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
