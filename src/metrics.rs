//! Every metric the node exports, named in one place, and the Prometheus recorder.
//!
//! Labels are bounded: message types, error codes, close reasons, dialects and
//! outcomes, never a peer id or a room name.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Gauge: open WebSocket connections on this node.
pub const CONNECTIONS: &str = "switchboard_connections";
/// Counter: WebSocket connections accepted, by `dialect`.
pub const CONNECTIONS_TOTAL: &str = "switchboard_connections_total";
/// Counter: upgrade requests refused, by `reason` (`limit`, `draining`;
/// the coordinator door adds `no-peer-id`, `unauthorized`, `peer-id-taken`).
pub const CONNECTIONS_REFUSED: &str = "switchboard_connections_refused_total";
/// Counter: sockets closed by the server or the client, by `reason`.
pub const DISCONNECTS: &str = "switchboard_disconnects_total";
/// Counter: client messages received, by `type`.
pub const MESSAGES_IN: &str = "switchboard_messages_in_total";
/// Counter: server messages written to sockets, by `type`.
pub const MESSAGES_OUT: &str = "switchboard_messages_out_total";
/// Counter: `error` messages sent, by `code`.
pub const ERRORS: &str = "switchboard_errors_total";
/// Counter: outbound queues found full (the client is then closed as too slow).
pub const QUEUE_OVERFLOWS: &str = "switchboard_queue_overflows_total";
/// Counter: times a connection stopped reading its socket because more than
/// `limits.max_write_buffer_bytes` waited to be written to it (backpressure).
pub const READ_PAUSES: &str = "switchboard_read_pauses_total";
/// Gauge: rooms with at least one member on this node.
pub const ROOMS: &str = "switchboard_rooms";
/// Gauge: peers registered (past `hello`) on this node.
pub const PEERS: &str = "switchboard_peers";
/// Gauge: the node's tokio worker threads (`server.worker_threads`, resolved).
pub const WORKER_THREADS: &str = "switchboard_worker_threads";
/// Histogram: seconds from reading a signal or broadcast to writing it to the target socket.
pub const RELAY_LATENCY: &str = "switchboard_relay_latency_seconds";
/// Counter: events published on the bus, by `kind` and `outcome`.
pub const BUS_PUBLISHED: &str = "switchboard_bus_published_total";
/// Counter: events received from the bus, by `kind`.
pub const BUS_RECEIVED: &str = "switchboard_bus_received_total";

/// Counter: pub/sub events lost because the node's receiver lagged.
pub const BUS_LAGGED: &str = "switchboard_bus_lagged_total";
/// Counter: pub/sub payloads that were not a valid envelope, and events
/// inside valid ones that did not decode (each costs only itself).
pub const BUS_DECODE_ERRORS: &str = "switchboard_bus_decode_errors_total";
/// Counter: envelopes of another envelope version dropped (a mixed-version cluster).
pub const BUS_VERSION_MISMATCH: &str = "switchboard_bus_version_mismatch_total";
/// Counter: cleanup steps that failed (each retried or skipped, see `node`),
/// by `op` (`leave`, `unregister`, `announce`, `reregister`,
/// `reregister-peer`, `restore-member`, `reap`, `list-nodes`, `sweep`).
pub const CLEANUP_FAILURES: &str = "switchboard_cleanup_failures_total";
/// Counter: `peer-left` announcements dropped unpublished because too many
/// were waiting for the bus.
pub const ANNOUNCEMENTS_DROPPED: &str = "switchboard_announcements_dropped_total";
/// Counter: times the bus stopped delivering (readiness lost).
pub const BUS_OUTAGES: &str = "switchboard_bus_outages_total";
/// Counter: reconnections to Redis, by `conn` (`subscriber`, `pool`).
pub const BUS_RECONNECTS: &str = "switchboard_bus_reconnects_total";
/// Counter: changes of the Redis Cluster slot map the node followed
/// (failovers, slot migrations; Redis Cluster only).
pub const BUS_TOPOLOGY_CHANGES: &str = "switchboard_bus_topology_changes_total";
/// Histogram: publish-to-delivery seconds of the node's own pub/sub probes.
pub const BUS_PROBE_LATENCY: &str = "switchboard_bus_probe_latency_seconds";
/// Counter: dead nodes whose peers this node cleaned up.
pub const NODES_REAPED: &str = "switchboard_nodes_reaped_total";
/// Counter: times this node registered its local peers and rooms again (after an outage).
pub const REREGISTRATIONS: &str = "switchboard_reregistrations_total";
/// Counter: STUN Binding requests answered with a success response, by `family` (`ipv4`, `ipv6`).
pub const STUN_REQUESTS: &str = "switchboard_stun_requests_total";
/// Counter: datagrams on the STUN port dropped unanswered, by `reason` (see `stun::Malformed::reason`).
pub const STUN_MALFORMED: &str = "switchboard_stun_malformed_total";
/// Counter: USERNAME-carrying Binding requests reported to the observer.
pub const STUN_OBSERVATIONS: &str = "switchboard_stun_observations_total";
/// Counter: STUN socket errors, by `op` (`recv`, `send`).
pub const STUN_SOCKET_ERRORS: &str = "switchboard_stun_socket_errors_total";

/// Gauge: workers (peers with a rendezvous record) connected to this node, by
/// the `pool` they last queued in (`none` before that; at most 32 pool names
/// per node, later ones as `other`).
pub const WORKERS: &str = "switchboard_workers";
/// Counter: pairings made, by `how` (`auto` matching, `manual` via the API).
pub const PAIRINGS_MADE: &str = "switchboard_pairings_total";
/// Counter: pairings that ended, by `reason` (`unpaired`, `disconnected`, `timeout`, `replaced`).
pub const PAIRINGS_LOST: &str = "switchboard_pairings_lost_total";
/// Histogram: seconds from a worker's `pair` (or legacy auto-pair) to its `paired`.
pub const PAIR_WAIT: &str = "switchboard_pair_wait_seconds";
/// Counter: STUN observations dropped because the node's queue of them was full.
pub const STUN_OBSERVATIONS_DROPPED: &str = "switchboard_stun_observations_dropped_total";

/// Histogram: events per batch published to another node's outbox channel.
pub const RELAY_BATCH_EVENTS: &str = "switchboard_relay_batch_events";
/// Counter: signals bounced because their target was not on the node their
/// route named, by `side` (`sent`: this node bounced one; `received`: one of
/// this node's signals came back and was looked up again).
pub const RELAY_BOUNCES: &str = "switchboard_relay_bounces_total";
/// Counter: answers owed to another node (`delivered`, `bounced`, `flushed`)
/// dropped after publishes to it reached nobody for 5 s, by `kind`.
pub const RELAY_ANSWERS_DROPPED: &str = "switchboard_relay_answers_dropped_total";
/// Counter: signals refused because the outbox to their target's node was full.
pub const RELAY_OUTBOX_FULL: &str = "switchboard_relay_outbox_full_total";

/// Counter: datagrams on the STUN port dropped unanswered because their
/// source (IPv4 address, IPv6 /64) was over `stun.rate_per_ip` / `stun.burst`.
pub const STUN_RATE_LIMITED: &str = "switchboard_stun_rate_limited_total";
/// Gauge: sources the STUN rate limiter keeps a state for (bounded: idle
/// ones are forgotten every second).
pub const STUN_RATE_SOURCES: &str = "switchboard_stun_rate_limit_sources";
/// Counter: STUN observations not forwarded because their USERNAME names a
/// node whose heartbeat is not alive (forged, or long gone).
pub const STUN_UNKNOWN_NODE: &str = "switchboard_stun_unknown_node_total";
/// Counter: operator endpoints refused, by `reason` (`forbidden`: no admin
/// token configured and not plain loopback; `unauthorized`: wrong or missing token).
pub const ADMIN_REFUSED: &str = "switchboard_admin_refused_total";
/// Counter: messages that reached a connection during a `hello` that was then
/// refused (`peer-id-taken`) and could not be passed on to the id's holder.
pub const HELD_FOR_REFUSED_DROPPED: &str = "switchboard_refused_hello_dropped_total";
/// Counter: `hello`s that asked to resume a session, by `outcome`
/// (`resumed`, `resumed-remote`, or the `resume-failed` reason).
pub const RESUMES: &str = "switchboard_resumes_total";
/// Gauge: sessions parked on this node, waiting for their client to resume them.
pub const PARKED: &str = "switchboard_parked_sessions";
/// Counter: parked sessions that ended without a resume (their window ran
/// out, or the node drained).
pub const PARKED_EXPIRED: &str = "switchboard_parked_expired_total";
/// Counter: TCP connections closed at accept, by `reason` (`pending_per_ip`:
/// the node was pressed for slots and the client's address held its share).
pub const HTTP_REFUSED: &str = "switchboard_http_refused_total";
/// Counter: times the accept loop paused because every slot for connections
/// that are not WebSocket sessions was taken (new clients then wait in the
/// kernel's accept queue).
pub const HTTP_ACCEPT_PAUSED: &str = "switchboard_http_accept_paused_total";
/// Counter: HTTP connections the server closed, by `reason`
/// (`header_timeout`: no complete request head in time; `header_too_large`:
/// answered 431; `idle`: a keep-alive connection without requests;
/// `request_timeout`: no response within `server.request_timeout_ms`).
pub const HTTP_CLOSED: &str = "switchboard_http_closed_total";
/// Gauge: connections that are not WebSocket sessions (handshakes in progress,
/// plain HTTP), i.e. the slots of `server.max_pending` in use.
pub const HTTP_PENDING: &str = "switchboard_http_pending";
/// Gauge: `server.max_pending` (the bound in force).
pub const HTTP_MAX_PENDING: &str = "switchboard_http_max_pending";
/// Gauge: WebSocket connections allowed, after fitting `server.max_connections`
/// under the open-file limit.
pub const MAX_CONNECTIONS: &str = "switchboard_max_connections";
/// Gauge: the process's open-file soft limit (RLIMIT_NOFILE) after the start
/// raised it.
pub const OPEN_FILES_LIMIT: &str = "switchboard_open_files_limit";
/// Counter: failed `accept` calls, by `kind` (`emfile`, `enfile`, `other`).
pub const ACCEPT_ERRORS: &str = "switchboard_accept_errors_total";
/// Counter: rooms created with `POST /api/rooms` on this node.
pub const ROOMS_CREATED: &str = "switchboard_rooms_created_total";
/// Counter: `POST /api/rooms` refused on this node for a cap on rooms made
/// by callers other than admins, by `cap` (`per-creator`, `by-others`).
pub const ROOMS_REFUSED: &str = "switchboard_rooms_refused_total";
/// Counter: rooms whose lifetime ran out, removed by this node's sweeper
/// (summed over the nodes: every expired room once).
pub const ROOMS_EXPIRED: &str = "switchboard_rooms_expired_total";
/// Counter: rooms deleted with `DELETE /api/rooms/{room}` on this node.
pub const ROOMS_DELETED: &str = "switchboard_rooms_deleted_total";
/// Counter: `room-closed` announcements to other nodes dropped unpublished
/// because too many were waiting for the bus.
pub const ROOM_CLOSED_DROPPED: &str = "switchboard_room_closed_dropped_total";
/// Counter: sign-in requests (`POST /api/auth/anonymous`, the room signaling
/// door's `/anonymous-signin`), by `outcome` (`issued`, `rate-limited`,
/// `disabled`, `failed`).
pub const SIGNINS: &str = "switchboard_signins_total";
/// Counter: frames of the room signaling door not forwarded, by `reason`
/// (`spoofed-sender`, `bad-target`, `unregistered`, `invalid`, `unknown-type`).
pub const ROOM_SIGNALING_DROPPED: &str = "switchboard_room_signaling_dropped_total";
/// Counter: room signaling `register` messages, by `outcome` (`registered`,
/// `missing-fields`, `invalid-id-token`, `room-not-found`, `invalid-token`,
/// `room-expired`, `storage-error`, `refused`).
pub const ROOM_SIGNALING_REGISTERS: &str = "switchboard_room_signaling_registers_total";
/// Counter: frames from dashboard sockets, by `kind` (`subscribe`,
/// `unsubscribe`, `ping`, `room-created`, `user-joined-room`,
/// `user-left-room`, `room-list-request`, `relay`, `dropped`: JSON the old
/// server ignored too, `echo`: not JSON, `rate-limited`, `invalid`).
pub const DASHBOARD_FRAMES: &str = "switchboard_dashboard_frames_total";
/// Counter: dashboard room lists sent to this node's subscribers (one per
/// fan-out, whatever the number of subscribers), by `trigger` (`change`,
/// `periodic`, `request`).
pub const DASHBOARD_ROOM_LISTS: &str = "switchboard_dashboard_room_lists_total";
/// Counter: dead nodes whose dashboard entries (count, participants) this
/// node removed.
pub const DASHBOARD_NODES_SWEPT: &str = "switchboard_dashboard_nodes_swept_total";
/// Gauge, set at every scrape: 1 while `/readyz` would answer 200 (alert
/// rules and dashboards read it; a scrape that fails reads as `up == 0`).
pub const READY: &str = "switchboard_ready";
/// Gauge, set at every scrape: 1 once shutdown has begun (the node drains).
pub const DRAINING: &str = "switchboard_draining";
/// Gauge, set at every scrape: 1 while the bus delivers (a pub/sub probe made
/// the round trip through Redis within `cluster.probe_window_ms`; always 1 on
/// the embedded bus).
pub const BUS_READY: &str = "switchboard_bus_ready";
/// Gauge: when the process started (Unix seconds), for uptime.
pub const START_TIME: &str = "switchboard_start_time_seconds";
/// Counter: coordinator signaling `offer`/`answer`/`ice-candidate` frames
/// not relayed, by `reason` (`other-session`, `not-connected`,
/// `invalid-target`).
pub const COORDINATOR_UNDELIVERED: &str = "switchboard_coordinator_undelivered_total";
/// Counter: `POST /api/publish` calls answered, by `target` (`room`,
/// `zone`, `session`, `channel`, `invalid`: refused before publishing).
pub const PUBLISHES: &str = "switchboard_publishes_total";
/// Counter: `publish.poll_url` fetches by the node holding the poller's
/// lease, by `outcome` (`published`, `fetch-failed`, `invalid`), and zones
/// skipped or not sent (`invalid-zone`, `publish-failed`).
pub const PUBLISH_POLLS: &str = "switchboard_publish_polls_total";
/// Counter: the coordinator's background work done on this node (the lease
/// holder), by `task` (`health`, `cleanup`, `staleness`).
pub const COORDINATOR_RUNS: &str = "switchboard_coordinator_runs_total";
/// Counter: coordinator sessions this node marked failed, by `reason`
/// (`host-offline`, `stale`).
pub const COORDINATOR_SESSIONS_FAILED: &str = "switchboard_coordinator_sessions_failed_total";
/// Counter: coordinator hosts this node marked offline (no heartbeat).
pub const COORDINATOR_HOSTS_OFFLINE: &str = "switchboard_coordinator_hosts_offline_total";
/// Gauge: 1 while this node holds the coordinator's lease.
pub const COORDINATOR_LEASE_HELD: &str = "switchboard_coordinator_lease_held";
/// Counter: coordinator REST requests, by `status` class (`2xx`, `3xx`,
/// `4xx`, `5xx`).
pub const COORDINATOR_REQUESTS: &str = "switchboard_coordinator_requests_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

thread_local! {
    /// Per-thread handles of the per-message metrics, by (name, label value).
    static HOT: std::cell::RefCell<Vec<(&'static str, &'static str, Hot)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

enum Hot {
    Counter(metrics::Counter),
    Histogram(metrics::Histogram),
}

impl Hot {
    fn apply(&self, n: u64, v: f64) {
        match self {
            Hot::Counter(c) => c.increment(n),
            Hot::Histogram(h) => h.record(v),
        }
    }
}

/// Applies `n` (a counter) or `v` (a histogram) to the handle for (`name`,
/// `value`), made by `make` on first use in this thread. Only once our
/// recorder is installed: before that the macros hand out no-op handles,
/// which must not be kept.
fn hot(name: &'static str, value: &'static str, make: impl FnOnce() -> Hot, n: u64, v: f64) {
    if HANDLE.get().is_none() {
        return make().apply(n, v);
    }
    HOT.with(|c| {
        let mut c = c.borrow_mut();
        // Pointer equality: the values are literals, and a literal seen at
        // two addresses only costs a second entry for the same metric.
        match c
            .iter()
            .find(|(nm, val, _)| std::ptr::eq(*nm, name) && std::ptr::eq(*val, value))
        {
            Some((_, _, h)) => h.apply(n, v),
            None => {
                let h = make();
                h.apply(n, v);
                c.push((name, value, h));
            }
        }
    })
}

/// `counter!(name, label => value).increment(n)` for the per-message counters,
/// without the recorder's key hashing and registry lookup on every call (the
/// label values are static: message types, event kinds).
pub fn count(name: &'static str, label: &'static str, value: &'static str, n: u64) {
    let make = || Hot::Counter(metrics::counter!(name, label => value));
    hot(name, value, make, n, 0.0);
}

/// `histogram!(name).record(v)` for a per-message histogram without labels.
pub fn record(name: &'static str, v: f64) {
    hot(name, "", || Hot::Histogram(metrics::histogram!(name)), 0, v);
}

/// Installs the global recorder once (later calls return the same handle) and
/// starts its upkeep, without which histogram memory grows without bound.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                        0.5, 1.0, 2.5,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(RELAY_BATCH_EVENTS.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics::gauge!(START_TIME).set(started);
            // Counters without labels exist from the start at 0, so that
            // rate() and increase() in alert rules see their first event
            // (a series born at 1 has no earlier sample to differ from).
            for name in [
                QUEUE_OVERFLOWS,
                READ_PAUSES,
                BUS_LAGGED,
                BUS_DECODE_ERRORS,
                BUS_VERSION_MISMATCH,
                BUS_OUTAGES,
                ANNOUNCEMENTS_DROPPED,
                NODES_REAPED,
                REREGISTRATIONS,
                RELAY_OUTBOX_FULL,
                STUN_OBSERVATIONS,
                STUN_OBSERVATIONS_DROPPED,
                STUN_RATE_LIMITED,
                STUN_UNKNOWN_NODE,
                HTTP_ACCEPT_PAUSED,
                HELD_FOR_REFUSED_DROPPED,
                PARKED_EXPIRED,
                ROOMS_CREATED,
                ROOMS_EXPIRED,
                ROOMS_DELETED,
                ROOM_CLOSED_DROPPED,
                DASHBOARD_NODES_SWEPT,
            ] {
                metrics::counter!(name).absolute(0);
            }
            for name in [CONNECTIONS, PEERS, ROOMS, PARKED] {
                metrics::gauge!(name).set(0.0);
            }
            let upkeep = handle.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONNECTIONS, "Open WebSocket connections on this node");
    describe_counter!(
        CONNECTIONS_TOTAL,
        "WebSocket connections accepted, by dialect"
    );
    describe_counter!(CONNECTIONS_REFUSED, "WebSocket upgrades refused, by reason");
    describe_counter!(DISCONNECTS, "Sockets closed, by reason");
    describe_counter!(MESSAGES_IN, "Client messages received, by type");
    describe_counter!(MESSAGES_OUT, "Server messages written, by type");
    describe_counter!(ERRORS, "Error messages sent to clients, by code");
    describe_counter!(
        QUEUE_OVERFLOWS,
        "Outbound queues found full (client closed as too slow)"
    );
    describe_counter!(
        READ_PAUSES,
        "Times a connection stopped reading because too much waited to be written to it"
    );
    describe_gauge!(ROOMS, "Rooms with at least one member on this node");
    describe_gauge!(PEERS, "Peers past hello on this node");
    describe_gauge!(
        WORKER_THREADS,
        "Tokio worker threads of this node (server.worker_threads; 0 there: one per CPU)"
    );
    describe_histogram!(
        RELAY_LATENCY,
        Unit::Seconds,
        "Read-to-write time of relayed signals and broadcasts"
    );
    describe_counter!(
        BUS_PUBLISHED,
        "Events published to other nodes, by kind and outcome"
    );
    describe_counter!(BUS_RECEIVED, "Events received from other nodes, by kind");
    describe_counter!(
        BUS_LAGGED,
        "Pub/sub events lost because the receiver lagged"
    );
    describe_counter!(
        BUS_DECODE_ERRORS,
        "Pub/sub payloads that were not a valid envelope, and events in them that did not decode"
    );
    describe_counter!(
        BUS_VERSION_MISMATCH,
        "Envelopes of another envelope version dropped (mixed-version cluster)"
    );
    describe_counter!(
        CLEANUP_FAILURES,
        "Cleanup steps that failed (retried or skipped), by op"
    );
    describe_counter!(
        ANNOUNCEMENTS_DROPPED,
        "peer-left announcements dropped because too many waited for the bus"
    );
    describe_counter!(BUS_OUTAGES, "Times the bus stopped delivering");
    describe_counter!(BUS_RECONNECTS, "Reconnections to Redis, by connection kind");
    describe_counter!(
        BUS_TOPOLOGY_CHANGES,
        "Changes of the Redis Cluster slot map followed (failovers, slot migrations)"
    );
    describe_histogram!(
        BUS_PROBE_LATENCY,
        Unit::Seconds,
        "Publish-to-delivery time of pub/sub probes"
    );
    describe_counter!(NODES_REAPED, "Dead nodes cleaned up by this node");
    describe_counter!(
        REREGISTRATIONS,
        "Re-registrations of local state after an outage"
    );
    describe_counter!(
        STUN_REQUESTS,
        "STUN Binding requests answered, by address family"
    );
    describe_counter!(
        STUN_MALFORMED,
        "Datagrams on the STUN port dropped without a reply, by reason"
    );
    describe_counter!(
        STUN_OBSERVATIONS,
        "STUN Binding requests whose USERNAME was reported to the broker"
    );
    describe_counter!(STUN_SOCKET_ERRORS, "STUN socket errors, by operation");
    describe_gauge!(
        WORKERS,
        "Workers connected to this node, by the pool they last queued in"
    );
    describe_counter!(PAIRINGS_MADE, "Pairings made, by how (auto, manual)");
    describe_counter!(PAIRINGS_LOST, "Pairings that ended, by reason");
    describe_histogram!(
        PAIR_WAIT,
        Unit::Seconds,
        "Time from a worker's pair request to its paired message"
    );
    describe_counter!(
        STUN_OBSERVATIONS_DROPPED,
        "STUN observations dropped because the node's queue was full"
    );
    describe_histogram!(
        RELAY_BATCH_EVENTS,
        Unit::Count,
        "Events per batch published to another node"
    );
    describe_counter!(
        RELAY_BOUNCES,
        "Signals bounced because their target was not on the routed node, by side"
    );
    describe_counter!(
        RELAY_ANSWERS_DROPPED,
        "Answers owed to another node dropped after it was unreachable for 5 s, by kind"
    );
    describe_counter!(
        RELAY_OUTBOX_FULL,
        "Signals refused because the outbox to their node was full"
    );
    describe_counter!(
        STUN_RATE_LIMITED,
        "STUN datagrams dropped unanswered: their source was over the rate limit"
    );
    describe_gauge!(
        STUN_RATE_SOURCES,
        "Sources the STUN rate limiter currently keeps a state for"
    );
    describe_counter!(
        STUN_UNKNOWN_NODE,
        "STUN observations not forwarded: the USERNAME names no live node"
    );
    describe_counter!(
        ADMIN_REFUSED,
        "Operator endpoint requests refused, by reason"
    );
    describe_counter!(
        HELD_FOR_REFUSED_DROPPED,
        "Messages for a refused hello's peer id that could not be passed on to its holder"
    );
    describe_counter!(RESUMES, "Hellos that asked to resume a session, by outcome");
    describe_gauge!(
        PARKED,
        "Sessions parked on this node waiting for their client to resume them"
    );
    describe_counter!(
        PARKED_EXPIRED,
        "Parked sessions that ended without a resume"
    );
    describe_counter!(
        HTTP_REFUSED,
        "Connections closed at accept over the per-address bound, by reason"
    );
    describe_counter!(
        HTTP_ACCEPT_PAUSED,
        "Times accepting paused because every pending-connection slot was taken"
    );
    describe_counter!(
        HTTP_CLOSED,
        "HTTP connections closed by the server, by reason"
    );
    describe_gauge!(
        HTTP_PENDING,
        "Connections that are not WebSocket sessions (handshakes, plain HTTP)"
    );
    describe_gauge!(
        HTTP_MAX_PENDING,
        "The bound on pending connections (server.max_pending)"
    );
    describe_gauge!(
        MAX_CONNECTIONS,
        "WebSocket connections allowed (server.max_connections fitted to the open-file limit)"
    );
    describe_gauge!(OPEN_FILES_LIMIT, "Open-file soft limit of the process");
    describe_gauge!(READY, "1 while the node is ready for traffic (/readyz 200)");
    describe_gauge!(DRAINING, "1 once the node has begun to drain");
    describe_gauge!(BUS_READY, "1 while the cluster bus delivers");
    describe_gauge!(START_TIME, "Process start time, in Unix seconds");
    describe_counter!(ACCEPT_ERRORS, "Failed accept calls, by kind");
    describe_counter!(ROOMS_CREATED, "Rooms created over HTTP on this node");
    describe_counter!(
        ROOMS_REFUSED,
        "POST /api/rooms refused for a cap on rooms made by callers other than admins, by cap"
    );
    describe_counter!(
        ROOMS_EXPIRED,
        "Rooms whose lifetime ran out, removed by this node's sweeper"
    );
    describe_counter!(ROOMS_DELETED, "Rooms deleted over HTTP on this node");
    describe_counter!(
        ROOM_CLOSED_DROPPED,
        "room-closed announcements dropped because too many waited for the bus"
    );
    describe_counter!(SIGNINS, "Sign-in requests, by outcome");
    describe_counter!(
        ROOM_SIGNALING_DROPPED,
        "Room signaling frames not forwarded, by reason"
    );
    describe_counter!(
        ROOM_SIGNALING_REGISTERS,
        "Room signaling register messages, by outcome"
    );
    describe_counter!(DASHBOARD_FRAMES, "Frames from dashboard sockets, by kind");
    describe_counter!(
        DASHBOARD_ROOM_LISTS,
        "Dashboard room lists sent to this node's subscribers (one per fan-out), by trigger"
    );
    describe_counter!(
        DASHBOARD_NODES_SWEPT,
        "Dead nodes whose dashboard entries this node removed"
    );
    describe_counter!(
        COORDINATOR_UNDELIVERED,
        "Coordinator signaling frames not relayed, by reason"
    );
    describe_counter!(PUBLISHES, "POST /api/publish calls, by target");
    describe_counter!(
        PUBLISH_POLLS,
        "publish.poll_url fetches and skipped zones, by outcome"
    );
    describe_counter!(
        COORDINATOR_RUNS,
        "Coordinator background work done on this node, by task"
    );
    describe_counter!(
        COORDINATOR_SESSIONS_FAILED,
        "Coordinator sessions this node marked failed, by reason"
    );
    describe_counter!(
        COORDINATOR_HOSTS_OFFLINE,
        "Coordinator hosts this node marked offline for want of a heartbeat"
    );
    describe_gauge!(
        COORDINATOR_LEASE_HELD,
        "1 while this node holds the coordinator's background lease"
    );
    describe_counter!(
        COORDINATOR_REQUESTS,
        "Coordinator REST requests, by status class"
    );
}
