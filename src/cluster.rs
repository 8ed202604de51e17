//! Redis connections and key names, shared by the Redis bus and store.
//!
//! One pool of command connections (also used to publish: a channel always
//! maps to the same pooled connection, so events on one channel keep their
//! order) and one dedicated subscriber connection whose subscriptions fred
//! restores after every reconnect (`manage_subscriptions`). Every command has
//! a timeout and both reconnect forever with backoff: the node survives Redis
//! outages instead of exiting, and reports them through readiness.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Builder;

use crate::config::ClusterConfig;
use crate::types::{NodeId, PeerId, PoolName, RoomName};

/// Redis key and channel names, all under `cluster.key_prefix`.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    /// The prefix itself (Lua scripts build per-node keys from it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// String `"<epoch> <node>"`: where a peer is connected.
    pub fn peer(&self, p: &PeerId) -> String {
        format!("{}:peer:{p}", self.prefix)
    }
    /// Set of peer ids registered by a node (to clean up after it dies).
    pub fn node_peers(&self, n: &NodeId) -> String {
        format!("{}:node:{n}:peers", self.prefix)
    }
    /// Set of rooms where a node has members (to clean up after it dies).
    pub fn node_rooms(&self, n: &NodeId) -> String {
        format!("{}:node:{n}:rooms", self.prefix)
    }
    /// A node's heartbeat, with a TTL.
    pub fn node_alive(&self, n: &NodeId) -> String {
        format!("{}:node:{n}:alive", self.prefix)
    }
    /// Claim on a dead node's cleanup (`SET NX`): exactly one node reaps it.
    pub fn node_reaper(&self, n: &NodeId) -> String {
        format!("{}:node:{n}:reaper", self.prefix)
    }
    /// Set of every node that has sent a heartbeat and not yet been reaped.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    /// Set of every room with at least one member.
    pub fn rooms(&self) -> String {
        format!("{}:rooms", self.prefix)
    }
    /// Hash peer -> `"<epoch> <node>\n<meta JSON>"`: a room's members (see `store::redis`).
    pub fn room_members(&self, r: &RoomName) -> String {
        format!("{}:room:{r}:members", self.prefix)
    }
    /// Hash node -> member count: which nodes have members in a room.
    pub fn room_nodes(&self, r: &RoomName) -> String {
        format!("{}:room:{r}:nodes", self.prefix)
    }
    /// Hash: one worker's record (see `store::redis` for the fields).
    pub fn worker(&self, p: &PeerId) -> String {
        format!("{}:worker:{p}", self.prefix)
    }
    /// Set of every worker id (the index behind `GET /api/workers`).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
    /// Set of worker ids whose record names a node (to clean up after it dies).
    pub fn node_workers(&self, n: &NodeId) -> String {
        format!("{}:node:{n}:workers", self.prefix)
    }
    /// List: a pool's queue of worker ids, oldest first (stale entries are
    /// skipped and dropped when reached).
    pub fn pool_queue(&self, pool: &PoolName) -> String {
        format!("{}:pool:{pool}:queue", self.prefix)
    }
    /// Pub/sub channel of one node: direct signals, kicks, its own probes.
    pub fn node_channel(&self, n: &NodeId) -> String {
        format!("{}:ch:node:{n}", self.prefix)
    }
    /// Pub/sub channel of one room: broadcasts and presence.
    pub fn room_channel(&self, r: &RoomName) -> String {
        format!("{}:ch:room:{r}", self.prefix)
    }
}

/// The Redis connections of one node.
pub struct Redis {
    /// Command and publish connections.
    pub pool: Pool,
    /// The subscriber connection.
    pub sub: SubscriberClient,
    /// Key names.
    pub keys: Keys,
    /// The cluster settings.
    pub cfg: ClusterConfig,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects (in the background: a Redis that is down at start only makes
    /// the node unready until it comes up).
    pub async fn connect(cfg: &ClusterConfig) -> Result<Arc<Self>, String> {
        let config = fred::types::config::Config::from_url(cfg.redis_url.expose())
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        let timeout = cfg.command_timeout;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            // max_attempts 0: reconnect forever, 50 ms doubling up to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        let pool = builder
            .build_pool(cfg.pool_size)
            .map_err(|e| e.to_string())?;
        let mut sub_builder = builder.clone();
        sub_builder.with_performance_config(|p| {
            p.default_command_timeout = timeout;
            // Only the subscriber gets a large buffer (fred issue 337: not every pool member).
            p.broadcast_channel_capacity = cfg.subscriber_buffer;
        });
        let sub = sub_builder
            .build_subscriber_client()
            .map_err(|e| e.to_string())?;
        pool.connect();
        sub.connect();
        // The resubscription task runs for the life of the process; its handle is not needed.
        drop(sub.manage_subscriptions());
        count_reconnects("subscriber", sub.reconnect_rx());
        for c in pool.clients() {
            count_reconnects("pool", c.reconnect_rx());
        }
        if tokio::time::timeout(Duration::from_secs(5), pool.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!("Redis not reachable yet; the node stays unready until it is");
        }
        Ok(Arc::new(Self {
            pool,
            sub,
            keys: Keys::new(&cfg.key_prefix),
            cfg: cfg.clone(),
        }))
    }

    /// The pooled connection that carries every publish to `channel` (stable,
    /// so one channel's events keep their order).
    pub fn client_for(&self, channel: &str) -> &Client {
        let clients = self.pool.clients();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &clients[(h.finish() as usize) % clients.len()]
    }

    /// Any pooled connection, for commands that need no ordering.
    pub fn client(&self) -> &Client {
        self.pool.next()
    }
}

/// Counts and logs every reconnection of a Redis connection.
fn count_reconnects(
    conn: &'static str,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(server) => {
                    metrics::counter!(crate::metrics::BUS_RECONNECTS, "conn" => conn).increment(1);
                    tracing::info!(conn, server = %server, "reconnected to Redis");
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
