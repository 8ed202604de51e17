//! The fixture of the store conformance suites (`store.rs`,
//! `store_dashboard.rs`, `store_coordinator.rs`): each behaviour is an
//! `async fn(Fixture)`, and `conformance!` makes a `memory` and a `redis`
//! test of it. A fixture hands out one store per node id: the memory backend
//! shares one `MemoryStore` between all of them (it serves one process), the
//! Redis backend gives each node its own connections and `RedisStore` over
//! one key prefix, as a cluster does.

use std::sync::Arc;

use switchboard::cluster::{Keys, Redis};
use switchboard::config::{ClusterConfig, Secret};
use switchboard::store::memory::MemoryStore;
use switchboard::store::redis::RedisStore;
use switchboard::store::Store;
use switchboard::types::NodeId;

use crate::cluster_helpers::{unique_prefix, RedisServer};

/// One backend under test.
pub struct Fixture {
    pub redis: Option<RedisServer>,
    pub prefix: String,
    pub memory: Arc<MemoryStore>,
}

impl Fixture {
    pub fn memory() -> Self {
        Self {
            redis: None,
            prefix: String::new(),
            memory: Arc::new(MemoryStore::default()),
        }
    }

    pub fn redis(test: &str) -> Self {
        Self {
            redis: Some(RedisServer::start()),
            prefix: unique_prefix(test),
            memory: Arc::new(MemoryStore::default()),
        }
    }

    pub fn is_redis(&self) -> bool {
        self.redis.is_some()
    }

    pub fn cluster_config(&self) -> ClusterConfig {
        let redis = self.redis.as_ref().expect("a Redis fixture");
        ClusterConfig {
            redis_url: Secret::new(redis.url()),
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
        match &self.redis {
            None => self.memory.clone(),
            Some(_) => Arc::new(RedisStore::new(
                self.connect().await,
                NodeId::from_trusted(id),
            )),
        }
    }

    /// A raw command to the Redis backend (panics on the memory one).
    pub fn raw(&self, args: &[&str]) -> String {
        self.redis.as_ref().expect("a Redis fixture").command(args)
    }

    /// The key names of this fixture's prefix.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
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
        }
    )*};
}
pub(crate) use conformance;
