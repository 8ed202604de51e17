//! The fixture of the store conformance suites (`store.rs`,
//! `store_dashboard.rs`, `store_coordinator.rs`): each behaviour is an
//! `async fn(Fixture)`, and `conformance!` makes a `memory`, a `redis` and a `cluster`
//! test of it. A fixture hands out one store per node id: the memory backend
//! shares one `MemoryStore` between all of them (it serves one process), the
//! Redis backend gives each node its own connections and `RedisStore` over
//! one key prefix, as a cluster does. A third, `cluster`, runs the Redis
//! backend on a real Redis Cluster of three primaries (`redis-cluster://`,
//! keys hash-tagged, see `switchboard::cluster::Keys`); it is skipped with a
//! `SKIPPED` line where redis-server has no sharded pub/sub.

use std::sync::Arc;

use switchboard::cluster::{Keys, Redis};
use switchboard::config::{ClusterConfig, Secret};
use switchboard::store::memory::MemoryStore;
use switchboard::store::redis::RedisStore;
use switchboard::store::Store;
use switchboard::types::NodeId;

use crate::cluster_helpers::{unique_prefix, RedisBackend, RedisServer};
use crate::redis_cluster_fixture::RedisCluster;

/// One backend under test.
pub struct Fixture {
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    pub prefix: String,
    pub memory: Arc<MemoryStore>,
}

impl Fixture {
    pub fn memory() -> Self {
        Self {
            redis: None,
            cluster: None,
            prefix: String::new(),
            memory: Arc::new(MemoryStore::default()),
        }
    }

    pub fn redis(test: &str) -> Self {
        Self {
            redis: Some(RedisServer::start()),
            cluster: None,
            prefix: unique_prefix(test),
            memory: Arc::new(MemoryStore::default()),
        }
    }

    /// A Redis Cluster of three primaries (no replicas); `None` (after a
    /// `SKIPPED` line) where redis-server cannot run one.
    pub fn redis_cluster(test: &str) -> Option<Self> {
        if let Some(why) = crate::redis_cluster_fixture::cluster_unsupported() {
            crate::helpers::skipped(&format!("{test} (cluster)"), &why);
            return None;
        }
        Some(Self {
            redis: None,
            cluster: Some(RedisCluster::start(3, 0)),
            prefix: unique_prefix(test),
            memory: Arc::new(MemoryStore::default()),
        })
    }

    /// Redis or Redis Cluster.
    pub fn is_redis(&self) -> bool {
        self.redis.is_some() || self.cluster.is_some()
    }

    pub fn cluster_config(&self) -> ClusterConfig {
        let url = match (&self.redis, &self.cluster) {
            (Some(r), _) => r.url(),
            (None, Some(c)) => c.url(),
            (None, None) => panic!("a Redis fixture"),
        };
        ClusterConfig {
            redis_url: Secret::new(url),
            key_prefix: self.prefix.clone(),
            pool_size: 1,
            command_timeout: std::time::Duration::from_millis(1_000),
            ..ClusterConfig::default()
        }
    }

    pub async fn connect(&self) -> Arc<Redis> {
        Redis::connect(&self.cluster_config(), &Default::default())
            .await
            .expect("connect to redis-server")
    }

    /// The store as node `id` sees it.
    pub async fn node(&self, id: &str) -> Arc<dyn Store> {
        match self.is_redis() {
            false => self.memory.clone(),
            true => Arc::new(RedisStore::new(
                self.connect().await,
                NodeId::from_trusted(id),
            )),
        }
    }

    /// A raw command to the Redis backend (panics on the memory one). On a
    /// Redis Cluster it follows `MOVED`, and `FLUSHALL` deletes this test's
    /// keys only (they are all in the slot of `{<prefix>}`).
    pub fn raw(&self, args: &[&str]) -> String {
        match (&self.redis, &self.cluster) {
            (Some(r), _) => r.command(args),
            (None, Some(c)) if args == ["FLUSHALL"] => {
                let k = self.keys();
                c.flush_slot_of(&k.anchor(), k.prefix());
                "+OK\r\n".into()
            }
            (None, Some(c)) => c.command(args),
            (None, None) => panic!("a Redis fixture"),
        }
    }

    /// The key names of this fixture's prefix.
    pub fn keys(&self) -> Keys {
        if self.cluster.is_some() {
            Keys::sharded(&self.prefix)
        } else {
            Keys::new(&self.prefix)
        }
    }
}

/// A `memory` and a `redis` test of each behaviour named (an
/// `async fn(Fixture)` of the invoking module, which has `Fixture` in scope).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::Fixture::memory()).await
            }
            #[tokio::test]
            async fn redis() {
                super::$name(super::Fixture::redis(stringify!($name))).await
            }
            #[tokio::test]
            async fn cluster() {
                if let Some(fx) = super::Fixture::redis_cluster(stringify!($name)) {
                    super::$name(fx).await
                }
            }
        }
    )*};
}
pub(crate) use conformance;
