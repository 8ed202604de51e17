//! Switchboard: a horizontally scalable signaling, rendezvous and relay broker.
//!
//! A tour of the crate, in the order a message flows:
//!
//! - [`server`]: the accept loop in front of it: deadlines, header size and
//!   a bound on connections that are not WebSocket sessions, and the
//!   open-file budget.
//! - [`http`]: the HTTP door: `/ws` upgrades, probes, `/metrics`, the rooms API.
//! - [`ws`]: the WebSocket upgrade and framing (RFC 6455, server side), with
//!   no buffer held by an idle socket.
//! - [`session`]: one task per connection: it decodes frames, hands commands
//!   to the node and writes what the connection's bounded queue holds.
//! - [`protocol`]: the native wire format (JSON text or MessagePack binary),
//!   decoded into validated [`protocol::Command`]s.
//! - [`node`]: the router: hello, rooms, signals, broadcasts, drain.
//! - [`hub`]: the local socket map and local room index.
//! - [`rendezvous`]: workers, their public endpoints and pairing; [`stun`]
//!   is the UDP responder that observes those endpoints, and [`dialect`]
//!   holds the translators for clients of older systems.
//! - [`bus`] and [`store`]: the two cluster seams, with in-process backends for
//!   the embedded single node.
//! - [`config`], [`auth`], [`metrics`], [`error`], [`types`]: the supporting cast.
//!
//! [`run`] serves an already-bound listener until a shutdown future resolves,
//! then drains; the binary in `main.rs` only parses arguments and wires signals.

pub mod auth;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod dialect;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod payload;
pub mod protocol;
pub mod relay;
pub mod rendezvous;
pub mod server;
pub mod session;
pub mod store;
pub mod stun;
pub mod types;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Serves `node` on `listener` until `shutdown` resolves, then drains: readiness
/// fails, clients are told to reconnect, and after the grace period the
/// remaining sockets close with 1012. Returns once every connection has ended.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = http::router(http::AppState {
        node: node.clone(),
        metrics,
    });
    let stop_http = CancellationToken::new();
    let limits = server::HttpLimits::new(&node.cfg.server, node.trusted_proxies.clone());
    let server = tokio::spawn(server::serve(listener, app, limits, stop_http.clone()));
    shutdown.await;
    node.drain(Duration::from_millis(node.cfg.shutdown.grace_period_ms))
        .await;
    stop_http.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("HTTP server did not stop in time");
            Ok(())
        }
    }
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
