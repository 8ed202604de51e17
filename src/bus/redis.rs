//! The Redis bus: pub/sub between nodes.
//!
//! Each node subscribes to its own channel (direct signals, kicks, its own
//! readiness probes) and to the channel of every room with a local member.
//! On Redis Cluster these are sharded channels (`SPUBLISH`/`SSUBSCRIBE`, see
//! [`crate::cluster`]), each on the shard of its node or room.
//! A direct signal is published once, to the target's node channel; a room
//! event once, to the room channel, which only nodes with members of the room
//! subscribe to. Publishing reports how many subscribers got the event, so a
//! signal to a node that is not listening is answered with an error instead of
//! vanishing.
//!
//! fred's traps, and how they are handled here: the subscriber has a
//! reconnect policy and `manage_subscriptions` (see [`crate::cluster`]); its
//! message channel is read directly, a `Lagged` is counted and logged and
//! reading goes on (fred's own `on_message` would stop silently); the handler
//! never blocks, it only decodes and hands off to the node's inbox; and
//! readiness rests on a probe that makes the full round trip through Redis
//! pub/sub, so a subscriber that silently stopped receiving is noticed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Bus, BusError, DecodeError, Envelope, NodeEvent, WarnEvery, ENVELOPE_VERSION};
use crate::cluster::Redis;
use crate::metrics as m;
use crate::tasks::Tasks;
use crate::types::{NodeId, RoomName};

/// The Redis bus of one node.
#[derive(Debug)]
pub struct RedisBus {
    r: Arc<Redis>,
    me: NodeId,
    my_channel: String,
    started: Instant,
    /// Milliseconds since `started` when our last probe came back (0: never).
    last_probe_ms: AtomicU64,
}

fn unavailable(e: Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Subscribes to this node's channel, starts the reader (events go to
    /// `inbox`) and the probe loop.
    pub async fn start(
        r: Arc<Redis>,
        me: NodeId,
        inbox: mpsc::UnboundedSender<Envelope>,
        tasks: &Tasks,
    ) -> Arc<Self> {
        let bus = Arc::new(Self {
            my_channel: r.keys.node_channel(&me),
            r,
            me,
            started: Instant::now(),
            last_probe_ms: AtomicU64::new(0),
        });
        tasks.spawn(reader(Arc::downgrade(&bus), bus.r.sub.message_rx(), inbox));
        bus.ensure_subscribed().await;
        tasks.spawn(probe_loop(Arc::downgrade(&bus)));
        bus
    }

    /// Subscribes to the node channel if the subscriber does not track it yet
    /// (the first attempt fails when Redis is down at start).
    async fn ensure_subscribed(&self) {
        if !self.r.is_subscribed(&self.my_channel) {
            if let Err(e) = self.r.subscribe(self.my_channel.clone()).await {
                debug!(error = %e, "node channel subscription failed; will retry");
            }
        }
    }

    async fn publish(&self, channel: String, env: &Envelope) -> Result<usize, BusError> {
        let bytes = env.encode();
        let n = self
            .r
            .publish(channel, bytes::Bytes::from(bytes))
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as usize)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }
}

/// Undecodable payloads are logged at most once per 10 s (and all counted).
static MALFORMED_WARN: WarnEvery = WarnEvery::new(10_000);

async fn reader(
    bus: std::sync::Weak<RedisBus>,
    mut rx: tokio::sync::broadcast::Receiver<Message>,
    inbox: mpsc::UnboundedSender<Envelope>,
) {
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                metrics::counter!(m::BUS_LAGGED).increment(n);
                warn!(
                    lost = n,
                    "pub/sub receiver lagged; events were lost (raise cluster.subscriber_buffer)"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(bus) = bus.upgrade() else { return };
        let Some(bytes) = msg.value.as_bytes() else {
            continue;
        };
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(DecodeError::Version { version, origin }) => {
                super::version_mismatch(version, origin.as_ref());
                continue;
            }
            Err(e) => {
                metrics::counter!(m::BUS_DECODE_ERRORS).increment(1);
                if let Some(held) = MALFORMED_WARN.allow() {
                    warn!(error = %e, channel = %msg.channel, held_back = held, "undecodable bus payload dropped");
                }
                continue;
            }
        };
        if let NodeEvent::Probe { nonce } = env.event {
            if env.origin == bus.me {
                // Publish-to-delivery time of our own probe: the bus's latency.
                let sent = nonce;
                let now = bus.now_ms();
                metrics::histogram!(m::BUS_PROBE_LATENCY)
                    .record(now.saturating_sub(sent) as f64 / 1000.0);
                bus.last_probe_ms.store(now, Ordering::Release);
            }
            continue;
        }
        if inbox.send(env).is_err() {
            return;
        }
    }
}

async fn probe_loop(bus: std::sync::Weak<RedisBus>) {
    let period = match bus.upgrade() {
        Some(b) => {
            b.r.cfg
                .heartbeat
                .clamp(Duration::from_millis(100), Duration::from_secs(1))
        }
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    let mut was_ready = false;
    loop {
        tick.tick().await;
        let Some(bus) = bus.upgrade() else { return };
        bus.ensure_subscribed().await;
        let env = Envelope {
            v: ENVELOPE_VERSION,
            origin: bus.me.clone(),
            seq: 0,
            event: NodeEvent::Probe {
                nonce: bus.now_ms(),
            },
        };
        if let Err(e) = bus.publish(bus.my_channel.clone(), &env).await {
            debug!(error = %e, "probe publish failed");
        }
        let ready = bus.is_ready();
        if ready != was_ready {
            if ready {
                info!("cluster bus ready: pub/sub round trip through Redis works");
            } else {
                warn!("cluster bus NOT ready: no pub/sub round trip through Redis");
                metrics::counter!(m::BUS_OUTAGES).increment(1);
            }
            was_ready = ready;
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish_node(&self, node: &NodeId, env: &Envelope) -> Result<usize, BusError> {
        self.publish(self.r.keys.node_channel(node), env).await
    }

    async fn publish_room(&self, room: &RoomName, env: Envelope) -> Result<(), BusError> {
        self.publish(self.r.keys.room_channel(room), &env)
            .await
            .map(|_| ())
    }

    async fn subscribe_room(&self, room: &RoomName) -> Result<(), BusError> {
        self.r
            .subscribe(self.r.keys.room_channel(room))
            .await
            .map_err(unavailable)
    }

    async fn unsubscribe_room(&self, room: &RoomName) -> Result<(), BusError> {
        self.r
            .unsubscribe(self.r.keys.room_channel(room))
            .await
            .map_err(unavailable)
    }

    fn is_ready(&self) -> bool {
        let last = self.last_probe_ms.load(Ordering::Acquire);
        last != 0
            && u128::from(self.now_ms().saturating_sub(last)) <= self.r.cfg.probe_window.as_millis()
            && self.r.sub.is_connected()
    }

    fn is_connected(&self) -> bool {
        self.r.pool.clients().iter().any(|c| c.is_connected())
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
