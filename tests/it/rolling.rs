//! A rolling restart loses nothing: three nodes behind a real nginx (the
//! repo's config) and a real redis-server, pairs of resumable sessions
//! signalling continuously across nodes, and each node in turn stopped
//! (SIGTERM: drain, hand over, exit), started again and waited for. Every
//! signal arrives once and in order, every session's `seq` is unbroken, and
//! every peer is back within 10 s of losing its socket. The smaller form of
//! loadtest/rolling-restart.sh (figures in docs/BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cluster_helpers::{
    cluster_env, free_port, unique_prefix, wait_ready, Nginx, RedisServer,
};
use crate::helpers::TestNode;

/// Sender/receiver pairs, and signals per second from each sender.
const PAIRS: usize = 40;
const RATE: u64 = 20;

#[derive(Default)]
struct Stats {
    welcomed: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    skipped: AtomicU64,
    seq_breaks: AtomicU64,
    resumed: AtomicU64,
    /// Senders that saw the end of sending (and send nothing more).
    senders_stopped: AtomicU64,
    /// Signals whose ack had not come when their socket ended.
    unacked: AtomicU64,
    /// Every `resume-failed` reason, and every other oddity.
    problems: Mutex<Vec<String>>,
    /// Longest time from a socket's end to its resumed `welcome`, in ms.
    away_max_ms: AtomicU64,
}

#[derive(Default)]
struct Pair {
    sent: AtomicU64,
    delivered: AtomicU64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One resumable peer: connects through `url`, resumes after every lost
/// socket or `reconnect`, sends to `to` (a sender) or checks what arrives.
/// `go`, `stop_sending` and `done` are the run's phases.
#[allow(clippy::too_many_arguments)]
async fn peer(
    url: String,
    me: String,
    to: Option<String>,
    pair: Arc<Pair>,
    stats: Arc<Stats>,
    go: CancellationToken,
    stop_sending: CancellationToken,
    done: CancellationToken,
) {
    let (mut token, mut last_seq, mut next, mut expected) = (None::<String>, 0u64, 1u64, 1u64);
    let mut ended: Option<Instant> = None;
    let mut first = true;
    let mut stop_noted = false;
    // Bounded: one round per connection.
    for _ in 0..500 {
        if done.is_cancelled() {
            return;
        }
        let ws = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut ws: Ws = ws;
        let hello = match &token {
            Some(t) => {
                json!({"type": "hello", "peer_id": me, "resumable": true, "resume": t, "last_seq": last_seq})
            }
            None => json!({"type": "hello", "peer_id": me, "resumable": true}),
        };
        if ws
            .send(Message::Text(hello.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let welcome = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: Value = serde_json::from_str(&t).expect("JSON");
                    match m["type"].as_str() {
                        Some("welcome") => break Some(m),
                        Some("resume-failed") => {
                            stats.problems.lock().unwrap().push(format!("{me}: {m}"))
                        }
                        _ => {}
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break None,
            }
        };
        let Some(welcome) = welcome else { continue };
        if welcome["resumed"] == true {
            stats.resumed.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = ended.take() {
                stats
                    .away_max_ms
                    .fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        } else {
            last_seq = 0;
        }
        token = welcome["resume_token"].as_str().map(str::to_string);
        if first {
            first = false;
            stats.welcomed.fetch_add(1, Ordering::Relaxed);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
        let (mut in_flight, mut moving) = (0u64, None::<Instant>);
        let goodbye = loop {
            if moving.is_some_and(|t| in_flight == 0 || t.elapsed() > Duration::from_secs(1)) {
                break 4000;
            }
            if to.is_some() && stop_sending.is_cancelled() && !stop_noted {
                stop_noted = true;
                stats.senders_stopped.fetch_add(1, Ordering::Relaxed);
            }
            let sending = to.is_some()
                && go.is_cancelled()
                && moving.is_none()
                && !stop_sending.is_cancelled();
            tokio::select! {
                _ = done.cancelled() => break 1000,
                _ = tick.tick(), if sending => {
                    let m = json!({"type": "signal", "id": next, "to": to, "kind": "offer", "data": next});
                    if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                        break 0;
                    }
                    next += 1;
                    in_flight += 1;
                    pair.sent.fetch_add(1, Ordering::Relaxed);
                }
                frame = ws.next() => {
                    let m: Value = match frame {
                        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).expect("JSON"),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break 0,
                        Some(Ok(_)) => continue,
                    };
                    if let Some(seq) = m["seq"].as_u64() {
                        if seq != last_seq + 1 {
                            stats.seq_breaks.fetch_add(1, Ordering::Relaxed);
                        }
                        last_seq = seq;
                    }
                    match m["type"].as_str() {
                        Some("signal") => {
                            let n = m["data"].as_u64().unwrap_or(0);
                            if n < expected {
                                stats.duplicated.fetch_add(1, Ordering::Relaxed);
                            } else {
                                if n > expected {
                                    stats.problems.lock().unwrap().push(format!(
                                        "{me}: got {n} after {} (seq {})", expected - 1, m["seq"]
                                    ));
                                }
                                stats.skipped.fetch_add(n - expected, Ordering::Relaxed);
                                expected = n + 1;
                                pair.delivered.fetch_add(1, Ordering::Relaxed);
                                stats.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some("ack") => in_flight = in_flight.saturating_sub(1),
                        Some("reconnect") => moving = Some(Instant::now()),
                        Some("error") => stats.problems.lock().unwrap().push(format!("{me}: {m}")),
                        _ => {}
                    }
                }
            }
        };
        ended = Some(Instant::now());
        // Signals not acked when the socket ends were read by the node (or
        // died with the socket): their receiver's count tells which.
        stats.unacked.fetch_add(in_flight, Ordering::Relaxed);
        if goodbye != 0 {
            let frame = CloseFrame {
                code: CloseCode::from(goodbye),
                reason: "".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
        }
        if goodbye == 1000 {
            return;
        }
    }
    stats
        .problems
        .lock()
        .unwrap()
        .push(format!("{me}: too many connections"));
}

/// Polls `cond` every 20 ms until it holds (bounded by `within`).
async fn until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_nginx_loses_nothing() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rolling");
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let spawn = |i: usize, generation: usize| {
        let listen = format!("127.0.0.1:{}", ports[i]);
        let mut env = cluster_env(&redis, &prefix, &format!("roll-{i}-{generation}"));
        env.extend([
            ("SWITCHBOARD_SERVER__LISTEN".to_string(), listen),
            (
                "SWITCHBOARD_SHUTDOWN__GRACE_PERIOD_MS".into(),
                "10000".into(),
            ),
            (
                "SWITCHBOARD_SHUTDOWN__RECONNECT_JITTER_MS".into(),
                "300".into(),
            ),
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestNode::spawn(&env)
    };
    let mut nodes: Vec<TestNode> = (0..3).map(|i| spawn(i, 0)).collect();
    for n in &nodes {
        wait_ready(n, true, Duration::from_secs(20)).await;
    }
    let lb = Nginx::start(&nodes);
    let stats = Arc::new(Stats::default());
    let (go, stop_sending, done) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let mut pairs = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PAIRS {
        let pair = Arc::new(Pair::default());
        pairs.push(pair.clone());
        for (me, to) in [
            (format!("a{p}"), Some(format!("b{p}"))),
            (format!("b{p}"), None),
        ] {
            tasks.spawn(peer(
                lb.ws_url(),
                me,
                to,
                pair.clone(),
                stats.clone(),
                go.clone(),
                stop_sending.clone(),
                done.clone(),
            ));
        }
    }
    let welcomed = || stats.welcomed.load(Ordering::Relaxed) as usize;
    until("every peer welcomed", Duration::from_secs(20), || {
        welcomed() == 2 * PAIRS
    })
    .await;
    go.cancel();
    // By index: node `i` is replaced by its restart on the same port.
    #[allow(clippy::needless_range_loop)]
    for i in 0..3 {
        let before = stats.delivered.load(Ordering::Relaxed);
        nodes[i].sigterm();
        let status = nodes[i].wait_exit(Duration::from_secs(20)).await;
        assert!(status.success(), "node {i} exited with {status:?}");
        nodes[i] = spawn(i, 1);
        wait_ready(&nodes[i], true, Duration::from_secs(20)).await;
        // Traffic flows again before the next node goes: every pair has
        // delivered more since.
        until("traffic after the restart", Duration::from_secs(20), || {
            stats.delivered.load(Ordering::Relaxed) > before + 4 * PAIRS as u64
        })
        .await;
    }
    stop_sending.cancel();
    until("every sender stopped", Duration::from_secs(20), || {
        stats.senders_stopped.load(Ordering::Relaxed) == PAIRS as u64
    })
    .await;
    let all_in = || {
        pairs
            .iter()
            .all(|p| p.delivered.load(Ordering::Relaxed) >= p.sent.load(Ordering::Relaxed))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_in() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let short: Vec<(usize, u64, u64)> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i,
                p.sent.load(Ordering::Relaxed),
                p.delivered.load(Ordering::Relaxed),
            )
        })
        .filter(|(_, s, d)| d < s)
        .collect();
    assert!(
        short.is_empty(),
        "pairs (index, sent, delivered) short of their signals: {short:?}; skipped {}, problems {:#?}",
        stats.skipped.load(Ordering::Relaxed),
        stats.problems.lock().unwrap()
    );
    done.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let sent: u64 = pairs.iter().map(|p| p.sent.load(Ordering::Relaxed)).sum();
    let problems = stats.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(stats.duplicated.load(Ordering::Relaxed), 0, "duplicates");
    assert_eq!(
        stats.skipped.load(Ordering::Relaxed),
        0,
        "lost or reordered"
    );
    assert_eq!(stats.seq_breaks.load(Ordering::Relaxed), 0, "seq breaks");
    assert_eq!(stats.delivered.load(Ordering::Relaxed), sent);
    // Every peer was on one of the three nodes when it was restarted.
    assert!(
        stats.resumed.load(Ordering::Relaxed) >= 2 * PAIRS as u64,
        "resumed {} times",
        stats.resumed.load(Ordering::Relaxed)
    );
    let away = stats.away_max_ms.load(Ordering::Relaxed);
    assert!(away < 10_000, "a peer was away {away} ms");
    eprintln!(
        "rolling restart: {sent} signals, {} resumes, longest away {away} ms, {} unacked at a socket's end",
        stats.resumed.load(Ordering::Relaxed),
        stats.unacked.load(Ordering::Relaxed)
    );
}
