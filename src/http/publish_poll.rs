//! The publish poller (`publish.poll_url`): what the old coordinator's "NPC
//! broadcast" task promised and never sent. Every
//! `publish.poll_interval_ms`, the node holding the poller's lease (one
//! node of the cluster at a time, taken over within three intervals when
//! it dies) fetches the URL (plain `http://`, a service on the private
//! network) and publishes each member of its JSON object,
//! `{"zone_id": data, ...}`, to that zone's audience, as
//! `POST /api/publish {"zone": zone_id, "data": data}` would
//! ([`crate::rooms::Rooms::publish`]).
//!
//! Bounded: the fetch takes at most the interval (and 10 s), the body at
//! most [`MAX_BODY`], at most [`MAX_ZONES`] zones per fetch. A failed fetch
//! or a body that is not such an object is logged (at most once a minute)
//! and counted in `switchboard_publish_polls_total{outcome}`; the next tick
//! tries again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::bus::WarnEvery;
use crate::dialect::coordinator::zone_room;
use crate::metrics as m;
use crate::node::Node;
use crate::types::RoomName;

/// The store lease of the poller (one node at a time).
pub const POLLER_LEASE: &str = "publish-poller";
/// The largest body read from the URL.
pub const MAX_BODY: usize = 1024 * 1024;
/// The most zones published per fetch (the rest are skipped, counted).
pub const MAX_ZONES: usize = 1_000;

static POLL_WARN: WarnEvery = WarnEvery::new(60_000);

/// Starts the poller on the node's tracker, when `publish.poll_url` is set.
pub fn start(node: &Arc<Node>) {
    if node.core.cfg.publish.poll_url.is_empty() {
        return;
    }
    node.core.spawn(poll_loop(Arc::downgrade(node)));
}

fn counted(outcome: &'static str) {
    metrics::counter!(m::PUBLISH_POLLS, "outcome" => outcome).increment(1);
}

async fn poll_loop(node: Weak<Node>) {
    let (period, target) = match node.upgrade() {
        Some(n) => match n.core.cfg.publish.poll_target() {
            Some(Ok(t)) => (n.core.cfg.publish.poll_interval, t),
            // Refused at start by the validation; nothing to do.
            _ => return,
        },
        None => return,
    };
    let lease = period.saturating_mul(3);
    let within = period.min(Duration::from_secs(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if !node.core.bus.is_connected() || !node.core.hold_lease(POLLER_LEASE, lease).await {
            continue;
        }
        let (host, port, path) = &target;
        let body = match tokio::time::timeout(within, fetch(host, *port, path, within)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                counted("fetch-failed");
                if let Some(held) = POLL_WARN.allow() {
                    warn!(url = %node.core.cfg.publish.poll_url, error = %e, held_back = held, "publish.poll_url: fetch failed");
                }
                continue;
            }
            Err(_) => {
                counted("fetch-failed");
                if let Some(held) = POLL_WARN.allow() {
                    warn!(url = %node.core.cfg.publish.poll_url, held_back = held, "publish.poll_url: no answer in time");
                }
                continue;
            }
        };
        publish_zones(&node, &body).await;
    }
}

/// One `GET` over HTTP/1.1; the body when the status is 200.
async fn fetch(
    host: &str,
    port: u16,
    path: &str,
    within: Duration,
) -> Result<axum::body::Bytes, String> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let authority = if port == 80 {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if res.status() != hyper::StatusCode::OK {
            return Err(format!("status {}", res.status()));
        }
        axum::body::to_bytes(Body::new(res.into_body()), MAX_BODY)
            .await
            .map_err(|e| format!("body: {e}"))
    };
    // The connection is driven by a task of its own (it ends once the
    // answer is read and the sender dropped), bounded by the same deadline.
    tokio::spawn(tokio::time::timeout(within, conn));
    exchange.await
}

/// Publishes each member of the body's object to its zone.
async fn publish_zones(node: &Node, body: &[u8]) {
    let zones = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(z)) => z,
        _ => {
            counted("invalid");
            if let Some(held) = POLL_WARN.allow() {
                warn!(
                    held_back = held,
                    "publish.poll_url: the answer is not a JSON object of zones"
                );
            }
            return;
        }
    };
    let max = node.core.cfg.limits.max_name_bytes;
    let mut sent = 0usize;
    for (zone, data) in zones.into_iter().take(MAX_ZONES) {
        let Ok(room) = RoomName::parse(&zone_room(&zone), max) else {
            counted("invalid-zone");
            continue;
        };
        match node.rooms.publish(&room, data).await {
            Ok(()) => sent += 1,
            Err(e) => {
                counted("publish-failed");
                debug!(zone, error = %e.message, "publish.poll_url: not published");
            }
        }
    }
    counted("published");
    metrics::counter!(m::PUBLISHES, "target" => "zone").increment(sent as u64);
}

#[cfg(test)]
mod tests {
    use crate::config::PublishConfig;

    fn target(url: &str) -> Option<Result<(String, u16, String), String>> {
        PublishConfig {
            poll_url: url.into(),
            ..PublishConfig::default()
        }
        .poll_target()
    }

    #[test]
    fn poll_urls_are_plain_http_with_a_host() {
        assert_eq!(target(""), None);
        assert_eq!(
            target("http://world:8000/npc?zone=all"),
            Some(Ok(("world".into(), 8000, "/npc?zone=all".into())))
        );
        assert_eq!(
            target("http://10.0.0.7"),
            Some(Ok(("10.0.0.7".into(), 80, "/".into())))
        );
        assert_eq!(
            target("http://[::1]:9000/x"),
            Some(Ok(("::1".into(), 9000, "/x".into())))
        );
        for bad in [
            "https://world/npc",
            "world:8000",
            "http://:80/",
            "http://world:port/",
            "http://world:0/",
            "http://[::1/x",
            "http://world/a b",
        ] {
            let got = target(bad);
            assert!(
                matches!(&got, Some(Err(e)) if e.starts_with("publish.poll_url: ")),
                "{bad}: {got:?}"
            );
        }
    }
}
