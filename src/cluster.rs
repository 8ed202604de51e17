//! Redis connections and key names, shared by the Redis bus and store.
//!
//! One pool of command connections (also used to publish: a channel always
//! maps to the same pooled connection, so events on one channel keep their
//! order) and one dedicated subscriber connection whose subscriptions fred
//! restores after every reconnect (`manage_subscriptions`). Every command has
//! a timeout and both reconnect forever with backoff: the node survives Redis
//! outages instead of exiting, and reports them through readiness.
//!
//! **Redis Cluster** (`redis-cluster://`, `rediss-cluster://`): every store
//! key carries the hash tag `{<prefix>}` (one slot, so each Lua script
//! touches one slot), while each node channel and room channel carries its
//! own id as tag (`<prefix>:ch:node:{<node>}`) and goes through sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`), spread over the shards. The shard
//! subscriptions are kept by [`keep_shard_subscriptions`], not by fred's
//! `manage_subscriptions`: a failover or a slot migration moves a channel
//! to another primary without breaking the subscriber's connections. See
//! docs/DESIGN.md, "Redis Cluster".

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Builder;

use crate::config::ClusterConfig;
use crate::tasks::Tasks;
use crate::types::{NodeId, PeerId, PoolName, RoomName};

/// Redis key and channel names, all under `cluster.key_prefix`.
///
/// Each key name is declared once, as a template (`peer:{}`), in the `keys!`
/// table below. The table gives both the Rust method (`Keys::peer`) and the
/// Lua function the store's scripts call (`k_peer(p)`, see
/// [`Keys::lua_prelude`]), so the names Rust passes to a script and the
/// names the script builds itself cannot disagree.
///
/// **Hash tags (Redis Cluster).** With [`Keys::sharded`] the prefix of every
/// key is `{<prefix>}`, so every key of the table hashes to one slot and a
/// key added to the table later is tagged too: the rule is that no key name
/// is built anywhere but in this table. Channels are not keys: they are the
/// two methods [`Keys::node_channel`] and [`Keys::room_channel`], tagged by
/// their node or room so they spread over the shards; a new channel must be
/// built with [`Keys::channel`] the same way.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Prefix of the keys: `<prefix>`, or `{<prefix>}` when sharded.
    prefix: String,
    /// Prefix of the channels: always `<prefix>`.
    channel_prefix: String,
    /// Redis Cluster: keys and channels carry hash tags.
    sharded: bool,
}

/// Declares every key (and channel) template: a method on [`Keys`] each, and
/// an entry in [`TEMPLATES`] from which the Lua prelude is built. A template
/// is the part after `<prefix>:`; each `{}` takes one argument, in order.
macro_rules! keys {
    ($( $(#[$doc:meta])* fn $name:ident ( $($arg:ident : $ty:ty),* ) => $tmpl:literal; )*) => {
        impl Keys {
            $(
                $(#[$doc])*
                pub fn $name(&self, $($arg: &$ty),*) -> String {
                    format!(concat!("{}:", $tmpl), self.prefix $(, $arg)*)
                }
            )*
        }

        /// Every template of the `keys!` table: `(method, template)`.
        pub const TEMPLATES: &[(&str, &str)] = &[$((stringify!($name), $tmpl)),*];
    };
}

keys! {
    /// String `"<epoch> <node>"`: where a peer is connected.
    fn peer(p: PeerId) => "peer:{}";
    /// Set of peer ids registered by a node (to clean up after it dies).
    fn node_peers(n: NodeId) => "node:{}:peers";
    /// Hash of a node's connection secrets (peer -> `"<epoch> <node> <sha256
    /// hex>"`); it expires with the node (`Directory::keep_secrets`).
    fn node_secrets(n: NodeId) => "node:{}:secrets";
    /// Set of rooms where a node has members (to clean up after it dies).
    fn node_rooms(n: NodeId) => "node:{}:rooms";
    /// A node's heartbeat, with a TTL.
    fn node_alive(n: NodeId) => "node:{}:alive";
    /// Claim on a dead node's cleanup (`SET NX`): exactly one node reaps it.
    fn node_reaper(n: NodeId) => "node:{}:reaper";
    /// Set of every node that has sent a heartbeat and not yet been reaped.
    fn nodes() => "nodes";
    /// Sorted set of every room with a record, all scored 0 so it is ordered
    /// by name: `list_rooms` pages through it with `ZRANGEBYLEX` (O(page)).
    /// (Releases before issue 14 kept an unordered set `rooms`, no longer
    /// written.)
    fn room_index() => "room-index";
    /// Sorted set of every room with a lifetime, scored by its `expires_at`
    /// (unix ms): the room sweeper reads what is due (`ZRANGEBYSCORE`).
    fn room_expiry() => "room-expiry";
    /// Sorted set member -> until (unix ms), expiring with its last slot:
    /// one quota of `Rooms::take_slots` (`quota:rooms:by-others`).
    fn quota(name: str) => "quota:{}";
    /// String, with a TTL: the holder (a node id) of a lease (`lease:room-sweeper`).
    fn lease(name: str) => "lease:{}";
    /// Hash: a room's record (see `store::redis` for the fields).
    fn room_record(r: RoomName) => "room:{}:record";
    /// Hash peer -> `"<epoch> <node>\n<meta JSON>"`: a room's members (see `store::redis`).
    fn room_members(r: RoomName) => "room:{}:members";
    /// Hash node -> member count: which nodes have members in a room.
    fn room_nodes(r: RoomName) => "room:{}:nodes";
    /// Hash: one worker's record (see `store::redis` for the fields).
    fn worker(p: PeerId) => "worker:{}";
    /// Set of every worker id (the index behind `GET /api/workers`).
    fn workers() => "workers";
    /// Set of worker ids whose record names a node (to clean up after it dies).
    fn node_workers(n: NodeId) => "node:{}:workers";
    /// List: a pool's queue of worker ids, oldest first (stale entries are
    /// skipped and dropped when reached).
    fn pool_queue(pool: PoolName) => "pool:{}:queue";
    /// Sorted set: the dashboard door's rooms (ids, any characters),
    /// scored by creation order (`store::dashboard`).
    fn dash_rooms() => "dash:rooms";
    /// Hash: one dashboard room: `h` its JSON up to `createdAt`, `b` the
    /// bytes it counts for in the list bound.
    fn dash_room(r: str) => "dash:room:{}";
    /// Sorted set: a dashboard room's participants (user ids) by arrival.
    fn dash_members(r: str) => "dash:members:{}";
    /// Hash user id -> participant JSON: a dashboard room's participants.
    fn dash_people(r: str) => "dash:people:{}";
    /// Counter: the order of dashboard rooms and participants.
    fn dash_seq() => "dash:seq";
    /// Counter: the dashboard room list's version.
    fn dash_version() => "dash:version";
    /// Integer: the bytes the dashboard room list counts for (its bound).
    fn dash_bytes() => "dash:bytes";
    /// Hash node -> `"<generation> <count>"`: dashboard sockets per node.
    fn dash_clients() => "dash:clients";
    /// Hash node -> unix ms it last swept: nodes with dashboard entries.
    fn dash_nodes() => "dash:nodes";
    /// Set of `<len>:<room><user>`: the participants a node's dashboard
    /// sockets joined (its sweeper removes them when the node dies).
    fn dash_node_joins(n: NodeId) => "dash:node:{}:joins";
    /// Hash key -> `"<version> <JSON>"`: the game coordinator's records of
    /// one kind (`host`, `zone`, `session`; `store::coordinator`).
    fn coord_records(kind: str) => "coord:{}";
    /// Counter: the coordinator's integer ids of one kind.
    fn coord_ids(kind: str) => "coord:{}:ids";
    /// Counter: the versions of every coordinator record.
    fn coord_version() => "coord:version";
    /// Never written: the key a script that names no key of its own is sent
    /// with, so that Redis Cluster routes it to the store's slot.
    fn anchor() => "anchor";
}

impl Keys {
    /// Keys under `prefix`, for one Redis (or a Sentinel-managed primary).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            channel_prefix: prefix.to_string(),
            sharded: false,
        }
    }

    /// Keys under `prefix` for Redis Cluster: every key in the slot of
    /// `{<prefix>}`, every channel in the slot of its node or room.
    /// (`cluster.key_prefix` may not contain braces then: config checks it.)
    pub fn sharded(prefix: &str) -> Self {
        Self {
            prefix: format!("{{{prefix}}}"),
            channel_prefix: prefix.to_string(),
            sharded: true,
        }
    }

    /// The prefix of the keys (`{<prefix>}` when sharded).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether names carry hash tags (Redis Cluster).
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// Pub/sub channel of one node: direct signals, kicks, its own probes.
    pub fn node_channel(&self, n: &NodeId) -> String {
        self.channel("node", n.as_str())
    }

    /// Pub/sub channel of one room: broadcasts and presence.
    pub fn room_channel(&self, r: &RoomName) -> String {
        self.channel("room", r.as_str())
    }

    /// The channel `<prefix>:ch:<kind>:<id>`; when sharded the id is the
    /// hash tag (`...:{<id>}`), so channels spread over the shards.
    pub fn channel(&self, kind: &str, id: &str) -> String {
        if self.sharded {
            format!("{}:ch:{kind}:{{{id}}}", self.channel_prefix)
        } else {
            format!("{}:ch:{kind}:{id}", self.channel_prefix)
        }
    }

    /// Lua source defining, for every template, `local function k_<method>(a1,
    /// ...)` that returns the same name as the Rust method, this prefix baked
    /// in: `local function k_peer(a1) return 'sb:peer:' .. a1 end`.
    pub fn lua_prelude(&self) -> String {
        TEMPLATES
            .iter()
            .map(|(name, tmpl)| self.lua_function(name, tmpl))
            .collect()
    }

    /// The part of [`Keys::lua_prelude`] that `body` calls (`k_<method>(`):
    /// a script defines only the functions it uses, since Redis runs the
    /// whole chunk, definitions included, on every call.
    pub fn lua_prelude_for(&self, body: &str) -> String {
        TEMPLATES
            .iter()
            .filter(|(name, _)| body.contains(&format!("k_{name}(")))
            .map(|(name, tmpl)| self.lua_function(name, tmpl))
            .collect()
    }

    fn lua_function(&self, name: &str, tmpl: &str) -> String {
        let parts: Vec<&str> = tmpl.split("{}").collect();
        let args: Vec<String> = (1..parts.len()).map(|i| format!("a{i}")).collect();
        let mut expr = lua_quote(&format!("{}:{}", self.prefix, parts[0]));
        for (arg, part) in args.iter().zip(&parts[1..]) {
            expr.push_str(" .. ");
            expr.push_str(arg);
            if !part.is_empty() {
                expr.push_str(" .. ");
                expr.push_str(&lua_quote(part));
            }
        }
        format!(
            "local function k_{name}({}) return {expr} end\n",
            args.join(", ")
        )
    }
}

/// A Lua string literal of `s`: letters, digits and `:-_.` as they are, every
/// other byte as a decimal escape, so no prefix can end the literal or change
/// the script.
fn lua_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b":-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:03}"));
        }
    }
    out.push('\'');
    out
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
            .field("sharded", &self.keys.sharded)
            .finish_non_exhaustive()
    }
}

pub use crate::config::{fred_url, is_cluster_url};

impl Redis {
    /// Connects (in the background: a Redis that is down at start only makes
    /// the node unready until it comes up). With a cluster URL, first checks
    /// (bounded by `cluster.command_timeout_ms` per node) that some node
    /// named answers and that every node that answers is in cluster mode:
    /// an error otherwise (a configuration error: exit 2).
    /// Its reconnect counters run on `tasks`.
    pub async fn connect(cfg: &ClusterConfig, tasks: &Tasks) -> Result<Arc<Self>, String> {
        let url = fred_url(cfg.redis_url.expose());
        let config = fred::types::config::Config::from_url(&url)
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        let sharded = is_cluster_url(&url);
        if sharded {
            check_cluster_nodes(&config, cfg.command_timeout).await?;
        }
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
        if sharded {
            let period = cfg
                .heartbeat
                .clamp(Duration::from_millis(100), Duration::from_secs(1));
            tasks.spawn(watch_topology(pool.clone(), sub.clone(), period));
        } else {
            // The resubscription task runs for the life of the process; its handle is not needed.
            drop(sub.manage_subscriptions());
        }
        count_reconnects(tasks, "subscriber", sub.reconnect_rx());
        for c in pool.clients() {
            count_reconnects(tasks, "pool", c.reconnect_rx());
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
            keys: if sharded {
                Keys::sharded(&cfg.key_prefix)
            } else {
                Keys::new(&cfg.key_prefix)
            },
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

    /// Publishes `bytes` to `channel` (`SPUBLISH` on Redis Cluster, else
    /// `PUBLISH`) on the channel's own pooled connection; the number of
    /// subscribers that got it (on Redis Cluster: on the shard's primary,
    /// where every node subscribes).
    pub async fn publish(&self, channel: String, bytes: bytes::Bytes) -> Result<i64, Error> {
        let client = self.client_for(&channel);
        if self.keys.sharded {
            client.spublish(channel, bytes).await
        } else {
            client.publish(channel, bytes).await
        }
    }

    /// Subscribes to `channel` (`SSUBSCRIBE` on Redis Cluster).
    pub async fn subscribe(&self, channel: String) -> Result<(), Error> {
        if self.keys.sharded {
            self.sub.ssubscribe(channel).await
        } else {
            self.sub.subscribe(channel).await
        }
    }

    /// Unsubscribes from `channel` (`SUNSUBSCRIBE` on Redis Cluster).
    pub async fn unsubscribe(&self, channel: String) -> Result<(), Error> {
        if self.keys.sharded {
            self.sub.sunsubscribe(channel).await
        } else {
            self.sub.unsubscribe(channel).await
        }
    }

    /// Whether the subscriber keeps a subscription to `channel` (it
    /// restores those after a reconnect or a move of the channel's slot).
    pub fn is_subscribed(&self, channel: &str) -> bool {
        let tracked = if self.keys.sharded {
            self.sub.tracked_shard_channels()
        } else {
            self.sub.tracked_channels()
        };
        tracked.iter().any(|c| &**c == channel)
    }
}

/// Before a Redis Cluster client is built: asks every node the URL names
/// (each bounded by `timeout`) for `INFO cluster`. An error when none
/// answers, or when one that answers is not in cluster mode (a mix of
/// cluster and plain nodes); nodes that do not answer are only logged, and
/// a cluster whose state is not `ok` yet only makes the node unready.
async fn check_cluster_nodes(
    config: &fred::types::config::Config,
    timeout: Duration,
) -> Result<(), String> {
    use fred::types::config::ServerConfig;
    let ServerConfig::Clustered { hosts, .. } = &config.server else {
        return Ok(());
    };
    let mut answered = 0;
    let mut failures = Vec::new();
    for host in hosts {
        let mut one = config.clone();
        one.server = ServerConfig::Centralized {
            server: host.clone(),
        };
        let client = Builder::from_config(one)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            .build()
            .map_err(|e| format!("cluster.redis_url: {e}"))?;
        let info = tokio::time::timeout(timeout * 2, async {
            client.init().await?;
            client
                .info::<String>(Some(fred::types::InfoKind::Cluster))
                .await
        })
        .await;
        let _ = tokio::time::timeout(timeout, client.quit()).await;
        match info {
            Ok(Ok(info)) => {
                answered += 1;
                if !info.contains("cluster_enabled:1") {
                    return Err(format!(
                        "cluster.redis_url: {host} is not in cluster mode (cluster_enabled is not 1); \
                         a redis-cluster:// URL must name Redis Cluster nodes only (use redis:// for one Redis)"
                    ));
                }
            }
            Ok(Err(e)) => failures.push(format!("{host}: {e}")),
            Err(_) => failures.push(format!(
                "{host}: no answer within {} ms",
                (timeout * 2).as_millis()
            )),
        }
    }
    if answered == 0 {
        return Err(format!(
            "cluster.redis_url: no Redis Cluster node answered ({})",
            failures.join("; ")
        ));
    }
    for f in failures {
        tracing::warn!(node = %f, "a Redis Cluster node named in cluster.redis_url did not answer");
    }
    Ok(())
}

/// Follows the Redis Cluster's slot map (Redis Cluster only; runs for the
/// life of the process): publishers and shard subscriptions go where the
/// slots are after a failover or a slot migration.
///
/// Every `period` one pooled connection asks for `CLUSTER SLOTS` (one
/// command on an open connection). When the primaries of the slots changed,
/// every client refreshes its routing (`sync_cluster`) and every tracked
/// shard channel whose slot now has another primary is subscribed again;
/// after a reconnect of the subscriber every channel is. Both are needed
/// because a failover breaks nothing the clients see: on Redis 7.0 the
/// demoted primary answers `SPUBLISH` with 0 receivers (no `MOVED`, so fred
/// never learns the new primary by itself) and drops its shard subscribers
/// with a `SUNSUBSCRIBE` push that fred discards (so fred's
/// `manage_subscriptions`, which acts on reconnects, resubscribes nothing).
/// A round of resubscriptions stops at the first failure and goes on at the
/// next tick, so a dead shard holds it up by one command timeout at most.
async fn watch_topology(pool: Pool, sub: SubscriberClient, period: Duration) {
    use fred::types::cluster::ClusterRouting;
    use std::collections::HashMap;
    use tokio::sync::broadcast::error::RecvError;
    let primaries = |r: &ClusterRouting| -> Vec<(u16, u16, String)> {
        r.slots()
            .iter()
            .map(|s| (s.start, s.end, s.primary.to_string()))
            .collect()
    };
    let mut reconnects = sub.reconnect_rx();
    let mut tick = tokio::time::interval(period);
    let mut seen: Option<Vec<(u16, u16, String)>> = None;
    let mut owners: HashMap<fred::bytes_utils::Str, fred::types::config::Server> = HashMap::new();
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => owners.clear(),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let slots = pool.next().cluster_slots::<Value>().await.and_then(|v| {
                    ClusterRouting::from_cluster_slots(v, "")
                });
                match slots {
                    Ok(now) if seen.as_ref() != Some(&primaries(&now)) => {
                        if seen.is_some() {
                            metrics::counter!(crate::metrics::BUS_TOPOLOGY_CHANGES).increment(1);
                            tracing::info!("Redis Cluster slot map changed; following it");
                        }
                        for c in pool.clients() {
                            if let Err(e) = c.sync_cluster().await {
                                tracing::debug!(error = %e, "refreshing a client's slot map failed");
                            }
                        }
                        match sub.sync_cluster().await {
                            Ok(()) => seen = Some(primaries(&now)),
                            Err(e) => tracing::debug!(error = %e, "refreshing the subscriber's slot map failed"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "CLUSTER SLOTS failed"),
                }
            }
        }
        let Some(state) = sub.cached_cluster_state() else {
            continue;
        };
        let tracked = sub.tracked_shard_channels();
        owners.retain(|c, _| tracked.contains(c));
        for channel in tracked {
            let Some(owner) = state
                .get_server(ClusterRouting::hash_key(channel.as_bytes()))
                .cloned()
            else {
                continue;
            };
            if owners.get(&channel) == Some(&owner) {
                continue;
            }
            match sub.ssubscribe(channel.clone()).await {
                Ok(()) => {
                    owners.insert(channel, owner);
                }
                Err(e) => {
                    tracing::debug!(error = %e, channel = %channel, "shard resubscription failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Counts and logs every reconnection of a Redis connection.
fn count_reconnects(
    tasks: &Tasks,
    conn: &'static str,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    tasks.spawn(async move {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_functions_follow_the_rust_templates() {
        let k = Keys::new("sb");
        let prelude = k.lua_prelude();
        assert!(prelude.contains("local function k_peer(a1) return 'sb:peer:' .. a1 end\n"));
        assert!(prelude
            .contains("local function k_node_peers(a1) return 'sb:node:' .. a1 .. ':peers' end\n"));
        assert!(prelude.contains("local function k_room_index() return 'sb:room-index' end\n"));
        assert_eq!(prelude.lines().count(), TEMPLATES.len());
        assert_eq!(k.peer(&PeerId::from_trusted("x")), "sb:peer:x");
        assert_eq!(k.node_peers(&NodeId::from_trusted("n")), "sb:node:n:peers");
    }

    #[test]
    fn sharded_keys_share_one_tag_and_channels_carry_their_own() {
        let k = Keys::sharded("sb");
        assert_eq!(k.peer(&PeerId::from_trusted("x")), "{sb}:peer:x");
        assert_eq!(k.anchor(), "{sb}:anchor");
        assert!(k
            .lua_prelude()
            .lines()
            .all(|l| l.contains("return '\\123sb\\125:")));
        assert_eq!(
            k.node_channel(&NodeId::from_trusted("n-1")),
            "sb:ch:node:{n-1}"
        );
        assert_eq!(
            k.room_channel(&RoomName::from_trusted("r")),
            "sb:ch:room:{r}"
        );
        let plain = Keys::new("sb");
        assert_eq!(
            plain.node_channel(&NodeId::from_trusted("n-1")),
            "sb:ch:node:n-1"
        );
        assert_eq!(plain.anchor(), "sb:anchor");
    }

    #[test]
    fn cluster_urls_list_their_nodes_in_the_authority() {
        assert_eq!(
            fred_url("redis-cluster://a:1,b:2,c:3"),
            "redis-cluster://a:1?node=b:2&node=c:3"
        );
        assert_eq!(
            fred_url("rediss-cluster://u:p,w@a:1,b:2/?x=y"),
            "rediss-cluster://u:p,w@a:1/?node=b:2&x=y"
        );
        assert_eq!(fred_url("redis-cluster://a:1"), "redis-cluster://a:1");
        assert_eq!(fred_url("redis://a:1,b:2"), "redis://a:1,b:2");
        let c =
            fred::types::config::Config::from_url(&fred_url("redis-cluster://a:1,b:2")).unwrap();
        assert!(c.server.is_clustered());
        assert_eq!(c.server.hosts().len(), 2);
    }

    #[test]
    fn a_prefix_cannot_escape_its_lua_literal() {
        let k = Keys::new("a'b\\c\n]]");
        assert_eq!(
            k.lua_prelude_for("k_nodes()"),
            "local function k_nodes() return 'a\\039b\\092c\\010\\093\\093:nodes' end\n"
        );
    }

    #[test]
    fn a_script_gets_only_the_functions_it_calls() {
        let k = Keys::new("sb");
        let p = k.lua_prelude_for("redis.call('GET', k_node_rooms(n)) .. k_peer(p)");
        let names: Vec<&str> = p
            .lines()
            .map(|l| l.split(['(', ' ']).nth(2).unwrap())
            .collect();
        assert_eq!(names, ["k_peer", "k_node_rooms"]);
    }
}
