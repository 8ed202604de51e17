//! Redis Cluster mode (`redis-cluster://`).
