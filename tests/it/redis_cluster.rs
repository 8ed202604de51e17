//! Redis Cluster mode (`redis-cluster://`): real node processes through a
//! real Redis Cluster of 3 primaries and 3 replicas on loopback ports
//! (`redis_cluster_fixture`). The multi-node scenarios of `cluster.rs` and
//! `rendezvous.rs` (relay, rooms, node death, pairing) run here unchanged;
//! the rest is what only a cluster has: channels spread over the shards by
//! sharded pub/sub, a shard primary failing over (`CLUSTER FAILOVER`, then
//! SIGKILL) while peers signal, slots resharded under traffic (`MOVED` and
//! `ASK`), and the start-up errors of a bad cluster URL.
//!
//! Every test is skipped (a `SKIPPED` line) where redis-server is older than
//! 7 (no sharded pub/sub).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_helpers::{unique_prefix, wait_ready, RedisBackend, RedisServer};
use crate::helpers::{run_cli, skipped, Client, TestNode};
use crate::redis_cluster_fixture::{cluster_unsupported, migrate_slot, wait_until, RedisCluster};

/// A 3+3 cluster, or `None` after a `SKIPPED` line.
fn cluster(test: &str) -> Option<RedisCluster> {
    if let Some(why) = cluster_unsupported() {
        skipped(&format!("redis_cluster::{test}"), &why);
        return None;
    }
    Some(RedisCluster::start(3, 1))
}

#[tokio::test]
async fn signals_cross_nodes_once_in_order_over_sharded_channels() {
    let Some(c) = cluster("signals_cross_nodes") else {
        return;
    };
    let prefix = unique_prefix("rc-sig");
    let _nodes = crate::cluster::signals_cross_nodes_once_in_order(&c, &prefix).await;
    // The node channels are shard channels, each on the primary of its own
    // slot; no node uses classic (cluster-wide broadcast) pub/sub.
    let k = c.keys(&prefix);
    for id in ["node-1", "node-2"] {
        let ch = k.node_channel(&switchboard::types::NodeId::from_trusted(id));
        assert_eq!(ch, format!("{prefix}:ch:node:{{{id}}}"));
        let port = c.primary_of(&ch);
        let listed =
            crate::cluster_helpers::redis_command(port, &["PUBSUB", "SHARDCHANNELS"]).unwrap();
        assert!(
            listed.contains(&ch),
            "{ch} not subscribed on {port}: {listed}"
        );
    }
    for port in c.running_ports() {
        let classic = crate::cluster_helpers::redis_command(port, &["PUBSUB", "CHANNELS"]).unwrap();
        assert_eq!(classic, "*0\r\n", "classic channels on {port}");
    }
}

#[tokio::test]
async fn a_room_spans_three_nodes() {
    let Some(c) = cluster("a_room_spans_three_nodes") else {
        return;
    };
    crate::cluster::room_spans_three_nodes(&c, &unique_prefix("rc-room")).await;
}

#[tokio::test]
async fn a_killed_node_is_cleaned_up_once() {
    let Some(c) = cluster("a_killed_node_is_cleaned_up_once") else {
        return;
    };
    crate::cluster::killed_node_cleaned_up_once(&c, &unique_prefix("rc-kill")).await;
}

#[tokio::test]
async fn workers_pair_exactly_once() {
    let Some(c) = cluster("workers_pair_exactly_once") else {
        return;
    };
    crate::rendezvous::workers_pair_exactly_once(&c, &unique_prefix("rc-pair"), 300).await;
}

/// Two node ids whose node channels are served by different primaries, so
/// that failing one shard over leaves the other node's channel alone.
fn ids_on_two_shards(c: &RedisCluster, prefix: &str) -> (String, String) {
    let k = c.keys(prefix);
    let primary =
        |id: &str| c.primary_of(&k.node_channel(&switchboard::types::NodeId::from_trusted(id)));
    let first = "cn-1".to_string();
    for i in 2..100 {
        let id = format!("cn-{i}");
        if primary(&id) != primary(&first) {
            return (first, id);
        }
    }
    panic!("no two node channels on different shards");
}

/// Two ready nodes whose node channels are on different shards, peer `a`
/// on the first and `b` on the second, and the name of b's node channel.
async fn two_nodes_apart(
    c: &RedisCluster,
    prefix: &str,
) -> (Vec<TestNode>, Client, Client, String) {
    let (id_a, id_b) = ids_on_two_shards(c, prefix);
    let url = c.url();
    let nodes = vec![
        TestNode::spawn(&node_env(&url, prefix, &id_a)),
        TestNode::spawn(&node_env(&url, prefix, &id_b)),
    ];
    for n in &nodes {
        wait_ready(n, true, Duration::from_secs(15)).await;
    }
    let mut a = Client::connect(&nodes[0].ws_url()).await;
    a.hello("a").await;
    let mut b = Client::connect(&nodes[1].ws_url()).await;
    b.hello("b").await;
    let channel_b = c
        .keys(prefix)
        .node_channel(&switchboard::types::NodeId::from_trusted(id_b.as_str()));
    (nodes, a, b, channel_b)
}

fn node_env<'a>(url: &'a str, prefix: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("SWITCHBOARD_CLUSTER__REDIS_URL", url),
        ("SWITCHBOARD_CLUSTER__KEY_PREFIX", prefix),
        ("SWITCHBOARD_SERVER__NODE_ID", id),
        ("SWITCHBOARD_CLUSTER__HEARTBEAT_MS", "250"),
        ("SWITCHBOARD_CLUSTER__NODE_TTL_MS", "10000"),
        ("SWITCHBOARD_CLUSTER__PROBE_WINDOW_MS", "1500"),
        ("SWITCHBOARD_CLUSTER__COMMAND_TIMEOUT_MS", "1000"),
    ]
}

/// What [`signal_through`] saw.
#[derive(Default)]
struct Run {
    acked: Vec<u64>,
    failed: u32,
    /// The ids answered `cluster-unavailable`.
    failed_ids: Vec<u64>,
    /// Since the start: when `watch`'s readiness first dropped, and when it
    /// came back after that.
    unready_at: Option<Duration>,
    ready_again: Option<Duration>,
}

/// Signals from `a` to `b` every 20 ms (ids from `*i`) until 50 in a row
/// were acked, after `watch` (when given) became unready and ready again
/// and after `gate` (when given) was set (bounded: 60 s). Every answer must
/// be `ack` or `cluster-unavailable`.
async fn signal_through(
    a: &mut Client,
    i: &mut u64,
    what: &str,
    watch: Option<&TestNode>,
    gate: Option<&AtomicBool>,
) -> Run {
    let start = Instant::now();
    let mut run = Run::default();
    let mut acks_after = 0;
    while acks_after < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: no recovery within 60 s ({} acked, {} failed, unready at {:?})",
            run.acked.len(),
            run.failed,
            run.unready_at
        );
        a.send_json(
            json!({"type": "signal", "id": *i, "to": "b", "kind": "offer", "data": {"i": *i}}),
        )
        .await;
        let r = loop {
            let m = a.recv().await;
            if m["type"] == "ack" || m["type"] == "error" {
                break m;
            }
        };
        let opened = gate.is_none_or(|g| g.load(Ordering::Acquire));
        let recovered = opened
            && match watch {
                None => true,
                Some(node) => {
                    let (status, _) = node.get("/readyz").await;
                    if status == 503 && run.unready_at.is_none() {
                        run.unready_at = Some(start.elapsed());
                    }
                    if status == 200 && run.unready_at.is_some() && run.ready_again.is_none() {
                        run.ready_again = Some(start.elapsed());
                    }
                    run.ready_again.is_some()
                }
            };
        match r["type"].as_str() {
            Some("ack") => {
                run.acked.push(*i);
                if recovered {
                    acks_after += 1;
                }
            }
            Some("error") => {
                assert_eq!(r["code"], "cluster-unavailable", "{what}: {r}");
                run.failed += 1;
                run.failed_ids.push(*i);
                acks_after = 0;
            }
            _ => panic!("{what}: unexpected answer {r}"),
        }
        *i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run
}

/// The shard of b's node channel fails over twice while a (on the other
/// node, its channel on another shard) signals b every 20 ms: first a
/// manual `CLUSTER FAILOVER` (the old primary stays up and drops its shard
/// subscribers without closing their connections), then the new primary is
/// killed (SIGKILL) and the old one promoted back. Every signal is answered
/// (`ack` or `cluster-unavailable`) and none arrives twice or unanswered;
/// b's node resubscribes on the promoted primary by itself; its readiness
/// drops and comes back within the bound of docs/DESIGN.md; no node exits.
#[tokio::test]
async fn a_shard_fails_over_twice_while_peers_signal() {
    fail_over_twice("a_shard_fails_over_twice", false).await;
}

/// [`a_shard_fails_over_twice_while_peers_signal`], also requiring every
/// acked signal to arrive, in order. Not run by default: under load about
/// one run in three had a signal overtaken by a later one, and one had
/// acked signals missing (docs/DESIGN.md, "Known gaps"). Run with `--ignored`.
#[tokio::test]
#[ignore = "open: acked signals reordered or missing in ~1 run of 3 across a failover"]
async fn a_shard_fails_over_twice_delivering_every_acked_signal_in_order() {
    fail_over_twice("a_shard_fails_over_twice_strict", true).await;
}

async fn fail_over_twice(test: &str, strict: bool) {
    let Some(mut c) = cluster(test) else {
        return;
    };
    let prefix = unique_prefix("rc-failover");
    let (mut nodes, mut a, mut b, channel_b) = two_nodes_apart(&c, &prefix).await;
    let first = c.primary_of(&channel_b);
    let replica = c.replica_of(first);

    let mut i = 0u64;
    let mut acked = signal_through(&mut a, &mut i, "before", None, None)
        .await
        .acked;
    let mut failed = Vec::new();

    // 1. Manual failover: the replica takes over, the old primary stays up.
    let r = crate::cluster_helpers::redis_command(replica, &["CLUSTER", "FAILOVER"]);
    assert_eq!(r.as_deref(), Some("+OK\r\n"));
    wait_until("the replica is promoted", Duration::from_secs(15), || {
        c.primary_of(&channel_b) == replica
    });
    let manual = signal_through(&mut a, &mut i, "manual failover", None, None).await;
    acked.extend(manual.acked);
    failed.extend(manual.failed_ids);

    // 2. The promoted primary dies; the old primary is promoted back.
    c.kill(replica);
    let kill = signal_through(&mut a, &mut i, "kill", Some(&nodes[1]), None).await;
    acked.extend(kill.acked);
    failed.extend(kill.failed_ids);
    eprintln!(
        "cluster failover: manual: {} answered cluster-unavailable; kill: unready at {:?}, \
         ready again at {:?}, {} answered cluster-unavailable; {} acked in all",
        manual.failed,
        kill.unready_at,
        kill.ready_again,
        kill.failed,
        acked.len()
    );
    assert_eq!(c.primary_of(&channel_b), first, "the old primary is back");
    let ready_again = kill.ready_again.expect("b's node never became unready");
    // docs/DESIGN.md ("Redis Cluster failover"): ready again within 20 s.
    assert!(
        ready_again < Duration::from_secs(20),
        "ready again only after {ready_again:?}"
    );
    // Order and delivery of every acked signal are not yet reliable across
    // a failover (docs/DESIGN.md, "Known gaps"): counted here, required in
    // the ignored strict run.
    let d = delivered(&mut b, &acked, &failed, strict).await;
    eprintln!("cluster failover: {d:?}");
    for n in &mut nodes {
        assert!(n.try_exit().is_none(), "a node exited");
        wait_ready(n, true, Duration::from_secs(10)).await;
    }
}

/// What reached `b` of the signals sent: everything queued for `b` before a
/// ping it sends now arrives before the pong (an ack means queued). Fails
/// on a signal that arrived twice or was neither acked nor answered
/// `cluster-unavailable` (such an answer can come from a publish that timed
/// out after Redis had delivered it, so it means "not known to be
/// delivered"); with `strict`, also on an acked signal missing or any
/// signal out of order.
async fn delivered(b: &mut Client, acked: &[u64], failed: &[u64], strict: bool) -> Delivery {
    use std::collections::HashSet;
    let failed: HashSet<u64> = failed.iter().copied().collect();
    let mut missing: HashSet<u64> = acked.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut d = Delivery::default();
    let mut last = 0;
    b.send_json(json!({"type": "ping", "id": "end"})).await;
    for _ in 0..acked.len() + failed.len() + 1000 {
        let m = b.recv().await;
        if m["type"] == "pong" {
            break;
        }
        if m["type"] != "signal" {
            continue;
        }
        let got = m["data"]["i"].as_u64().expect("a signal id");
        assert!(seen.insert(got), "signal {got} arrived twice");
        if got < last {
            d.reordered += 1;
        }
        last = last.max(got);
        if !missing.remove(&got) {
            assert!(
                failed.contains(&got),
                "signal {got} arrived, neither acked nor failed"
            );
            d.failed_arrived += 1;
        }
    }
    d.missing = missing.len();
    if strict {
        assert_eq!(
            (d.missing, d.reordered),
            (0, 0),
            "acked signals missing, arrivals out of order"
        );
    }
    d
}

/// What [`delivered`] counted.
#[derive(Debug, Default)]
struct Delivery {
    /// Acked signals that did not arrive.
    missing: usize,
    /// Signals that arrived after a later one.
    reordered: usize,
    /// Signals answered `cluster-unavailable` that arrived anyway.
    failed_arrived: usize,
}

/// The answer to the last request: the first message of one of `types`
/// or an `error`.
async fn answer(c: &mut Client, types: &[&str]) -> Value {
    loop {
        let m = c.recv().await;
        if m["type"] == "error" || types.iter().any(|t| m["type"] == *t) {
            return m;
        }
    }
}

/// A slot is resharded under traffic, as `redis-cli --cluster reshard`
/// does: the store's slot (keys moved in two halves; between them the
/// moved keys answer `ASK` and the scripts that touch both halves
/// `TRYAGAIN`); [`a_node_channel_slot_moves_under_traffic`] then moves the
/// slot of b's node channel too (its subscriber is dropped by the old
/// primary, and `SPUBLISH` there answers `MOVED`).
/// Meanwhile a signals b every 20 ms and a new peer connects and joins a
/// room: every request is answered; afterwards everything works on the new
/// slot owners, every acked signal arrived once and in order, and both
/// nodes counted the slot map changes.
#[tokio::test]
async fn slots_move_under_traffic() {
    reshard_under_traffic("slots_move_under_traffic", false).await;
}

/// [`slots_move_under_traffic`] with the slot of b's node channel moved as
/// well. Not run by default: about one run in five, signals that b's node
/// had acknowledged did not reach b after the channel's slot moved (once
/// they arrived out of order, once not within 10 s). Open: see
/// docs/DESIGN.md, "Known gaps". Run it with `--ignored`.
#[tokio::test]
#[ignore = "open: acked signals lost or reordered ~1 run in 5 when a node channel's slot moves"]
async fn a_node_channel_slot_moves_under_traffic() {
    reshard_under_traffic("a_node_channel_slot_moves", true).await;
}

async fn reshard_under_traffic(test: &str, move_channel: bool) {
    let Some(c) = cluster(test) else {
        return;
    };
    let prefix = unique_prefix("rc-reshard");
    let (nodes, mut a, mut b, channel_b) = two_nodes_apart(&c, &prefix).await;
    b.join("r").await;
    // Some keys in the store's slot, so that MIGRATE has two halves.
    let mut held = Vec::new();
    for p in 0..20 {
        let mut x = Client::connect(&nodes[p % 2].ws_url()).await;
        x.hello(&format!("x{p}")).await;
        x.join(&format!("room-{p}")).await;
        held.push(x);
    }
    let k = c.keys(&prefix);
    let mut i = 0u64;
    let mut acked = signal_through(&mut a, &mut i, "before", None, None)
        .await
        .acked;
    let mut failed = Vec::new();

    // 1. The store's slot moves to another primary, with a pause halfway.
    let store_slot = c.slot_of(&k.anchor());
    let from = c.primary_of_slot(store_slot);
    let primaries = c.primaries();
    let to = *primaries.iter().find(|&&p| p != from).unwrap();
    let (half, go, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mig = {
        let (half, go, done, primaries) =
            (half.clone(), go.clone(), done.clone(), primaries.clone());
        tokio::task::spawn_blocking(move || {
            migrate_slot(store_slot, from, to, &primaries, || {
                half.store(true, Ordering::Release);
                wait_until(
                    "the test lets the migration go on",
                    Duration::from_secs(60),
                    || go.load(Ordering::Acquire),
                );
            });
            done.store(true, Ordering::Release);
        })
    };
    wait_until(
        "half the store's keys moved",
        Duration::from_secs(20),
        || half.load(Ordering::Acquire),
    );
    // Halfway: store requests are answered, whatever they meet.
    let mut n = Client::connect(&nodes[0].ws_url()).await;
    n.send_json(json!({"type": "hello", "peer_id": "newcomer"}))
        .await;
    let w = answer(&mut n, &["welcome"]).await;
    if w["type"] == "welcome" {
        n.send_json(json!({"type": "join", "room": "r"})).await;
        let j = answer(&mut n, &["joined"]).await;
        eprintln!("reshard halfway: join answered {}", j["type"]);
    }
    eprintln!("reshard halfway: hello answered {}", w["type"]);
    go.store(true, Ordering::Release);
    let run = signal_through(&mut a, &mut i, "store slot", None, Some(&done)).await;
    acked.extend(run.acked);
    failed.extend(run.failed_ids);
    mig.await.unwrap();
    assert_eq!(c.primary_of_slot(store_slot), to);

    // 2. The slot of b's node channel moves.
    if move_channel {
        let ch_slot = c.slot_of(&channel_b);
        let from = c.primary_of_slot(ch_slot);
        let to = *primaries.iter().find(|&&p| p != from).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let mig = {
            let (done, primaries) = (done.clone(), primaries.clone());
            tokio::task::spawn_blocking(move || {
                migrate_slot(ch_slot, from, to, &primaries, || {});
                done.store(true, Ordering::Release);
            })
        };
        let run = signal_through(&mut a, &mut i, "channel slot", None, Some(&done)).await;
        eprintln!(
            "reshard: {} answered cluster-unavailable after the channel's slot moved",
            run.failed
        );
        acked.extend(run.acked);
        failed.extend(run.failed_ids);
        mig.await.unwrap();
        assert_eq!(c.primary_of(&channel_b), to);
    }
    // Order is not promised across the handover of a channel's slot
    // (docs/DESIGN.md, "Known gaps"): loss and duplicates are checked.
    let d = delivered(&mut b, &acked, &failed, !move_channel).await;
    eprintln!("reshard: {d:?}");
    // The store and the room channel work on their new owners.
    let mut late = Client::connect(&nodes[0].ws_url()).await;
    late.hello("late").await;
    late.join("r").await;
    loop {
        let m = b.recv().await;
        if m["type"] == "peer-joined" && m["peer_id"] == "late" {
            break;
        }
    }
    late.send_json(json!({"type": "broadcast", "id": 1, "room": "r", "data": "hi"}))
        .await;
    assert_eq!(late.recv_type("ack").await["id"], 1);
    assert_eq!(b.recv_type("message").await["data"], "hi");
    for node in &nodes {
        let changes = crate::helpers::metric(node, "switchboard_bus_topology_changes_total").await;
        let moves = if move_channel { 2.0 } else { 1.0 };
        assert!(changes >= moves, "slot map changes seen: {changes}");
    }
}

/// A cluster URL that names no reachable node, or a node that is not in
/// cluster mode, stops the start with a configuration error (exit 2) that
/// says which, quickly (never a hang).
#[tokio::test]
async fn bad_cluster_urls_are_start_up_errors() {
    if let Some(why) = cluster_unsupported() {
        skipped("redis_cluster::bad_cluster_urls", &why);
        return;
    }
    let dead = crate::cluster_helpers::free_port();
    let plain = RedisServer::start();
    let plain_port = plain.url().rsplit(':').next().unwrap().to_string();
    let cases = [
        (
            format!("redis-cluster://127.0.0.1:{dead}"),
            "no Redis Cluster node answered",
        ),
        (
            format!("redis-cluster://127.0.0.1:{plain_port}"),
            "is not in cluster mode",
        ),
    ];
    let c = RedisCluster::start(3, 0);
    let mixed = format!("{},127.0.0.1:{plain_port}", c.url());
    for (url, want) in cases
        .iter()
        .map(|(u, w)| (u.as_str(), *w))
        .chain([(mixed.as_str(), "is not in cluster mode")])
    {
        let started = Instant::now();
        let out = run_cli(
            &[],
            &[
                ("SWITCHBOARD_SERVER__LISTEN", "127.0.0.1:0"),
                ("SWITCHBOARD_CLUSTER__REDIS_URL", url),
                ("SWITCHBOARD_CLUSTER__COMMAND_TIMEOUT_MS", "500"),
            ],
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(
            err.contains("cluster.redis_url: ") && err.contains(want),
            "{url}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{url}: slow");
    }
}
