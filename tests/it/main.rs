//! Integration tests: the real `switchboard` binary driven over real sockets.
//!
//! One test binary (`cargo test --test it`), one module per area. Each test
//! starts its own node on `127.0.0.1:0` (see [`helpers::TestNode`]), so tests
//! are independent and run in parallel. Set `TEST_LOG=1` to see node logs
//! (with `-- --nocapture` to see them live).

mod helpers;

// Multi-node tests against a real redis-server (their own fixtures in cluster_helpers).
mod cluster;
mod cluster_helpers;
mod redis_cluster;
mod redis_cluster_fixture;
mod room_records_cluster;
mod sec_cluster;
// The store's conformance suite: the library against memory and a real redis-server.
mod store;
mod store_coordinator;
mod store_dashboard;
mod store_fixture;

mod auth;
mod bad_input;
mod codecs;
mod config;
mod console;
mod coordinator_rest;
mod coordinator_ws;
mod dashboard;
mod documented;
mod doors;
mod http;
mod http2;
mod http_errors;
mod limits;
mod protocol;
mod rendezvous;
mod resume;
mod rolling;
mod room_records;
mod room_signaling;
mod rooms;
mod sec_auth;
mod sec_http;
mod sec_memory;
mod sentinel;
mod shutdown;
mod signin;
mod turn;
