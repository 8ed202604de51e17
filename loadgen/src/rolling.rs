//! `rolling`: P pairs of resumable sessions signal continuously (through a
//! load balancer, or round robin over several nodes) while the nodes behind
//! them restart; every peer resumes its session wherever it lands. Each A
//! sends numbered signals to its B at `--rate` per second; B checks that
//! every number arrives once and in order, and that the session's own
//! `seq` never skips. Reports lost, duplicated and out-of-order signals,
//! resumes (and failed ones, by reason, with the `missed` the server
//! reported), and how long each peer was away (socket end to resumed
//! `welcome`).
//!
//! The client does what a resuming client should (docs/PROTOCOL.md,
//! "Resume"): on `reconnect` it stops sending, waits (bounded) for the acks
//! of its signals in flight, closes with 4000 and resumes with the last
//! `seq` it read; on a lost socket it resumes at once. A sender counts a
//! signal as sent once the server acknowledged it or, if the socket died
//! first, once it was written (its receiver then decides whether it arrived).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::dial::{check_sockets, Dialer, Ws};
use crate::report::{hist_json, micros, new_hist, Failures};
use crate::wire::run_id;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct RollingArgs {
    #[command(flatten)]
    common: Common,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// Signals per second from each sender.
    #[arg(long, default_value_t = 5)]
    rate: u64,
    /// Sending time, in seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// After sending stops, wait at most this long for the last deliveries, in seconds.
    #[arg(long, default_value_t = 15)]
    drain_secs: u64,
    /// Losses are expected (a node is killed with SIGKILL): count them, do
    /// not fail the run for them.
    #[arg(long)]
    allow_loss: bool,
}

/// What every peer adds to.
#[derive(Default)]
struct Stats {
    /// Peers that got their first `welcome`.
    welcomed: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    /// Numbers skipped (lost, or later ones arriving first).
    skipped: AtomicU64,
    /// Deliveries whose session `seq` did not follow the previous one.
    seq_breaks: AtomicU64,
    reconnects: AtomicU64,
    resumed: AtomicU64,
    failed: Mutex<HashMap<String, u64>>,
    missed: AtomicU64,
    /// Microseconds from a socket's end to the resumed `welcome`.
    away: Mutex<Option<Histogram<u64>>>,
    failures: Failures,
}

/// One pair's shared counters: what A sent, what B got.
#[derive(Default)]
struct PairState {
    sent: AtomicU64,
    delivered: AtomicU64,
}

enum Role {
    /// Sends to the peer named.
    Sender(String),
    /// Receives from its sender.
    Receiver,
}

/// Why a connection ended.
enum End {
    /// Asked to move (`reconnect`) or lost: resume.
    Again,
    /// The run is over.
    Done,
}

pub async fn rolling(a: RollingArgs) -> Result<(Value, bool)> {
    if a.pairs == 0 || a.rate == 0 {
        bail!("--pairs and --rate must be at least 1");
    }
    if a.common.msgpack {
        bail!("`rolling` speaks JSON only");
    }
    check_sockets(a.pairs * 2)?;
    let dialer = Arc::new(Dialer::new(&a.common, 4096).await?);
    let run = run_id();
    let stats = Arc::new(Stats::default());
    *stats.away.lock().expect("lock") = Some(new_hist());
    let go = CancellationToken::new();
    let stop_sending = CancellationToken::new();
    let done = CancellationToken::new();
    let interval = Duration::from_micros(1_000_000 / a.rate);
    let mut tasks = JoinSet::new();
    let mut pairs = Vec::new();
    for p in 0..a.pairs {
        let pair = Arc::new(PairState::default());
        pairs.push(pair.clone());
        let (an, bn) = (format!("lg{run}-a{p}"), format!("lg{run}-b{p}"));
        for (i, (me, role)) in [
            (an.clone(), Role::Sender(bn.clone())),
            (bn.clone(), Role::Receiver),
        ]
        .into_iter()
        .enumerate()
        {
            let peer = Peer {
                dialer: dialer.clone(),
                target: p * 2 + i,
                me,
                role,
                pair: pair.clone(),
                stats: stats.clone(),
                interval,
                go: go.clone(),
                stop_sending: stop_sending.clone(),
                done: done.clone(),
            };
            tasks.spawn(peer.run());
        }
    }
    // Senders start once every receiver is there (else their first signals
    // find no peer): at most 60 s.
    let all = (a.pairs * 2) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.welcomed.load(Ordering::Relaxed) < all && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    go.cancel();
    let start = Instant::now();
    eprintln!(
        "rolling: {} pairs, {} signals/s each, {} s",
        a.pairs, a.rate, a.secs
    );
    sleep(Duration::from_secs(a.secs)).await;
    stop_sending.cancel();
    // The last deliveries: until every receiver has what its sender sent.
    let drain_deadline = Instant::now() + Duration::from_secs(a.drain_secs);
    while Instant::now() < drain_deadline
        && pairs
            .iter()
            .any(|p| p.delivered.load(Ordering::Relaxed) < p.sent.load(Ordering::Relaxed))
    {
        sleep(Duration::from_millis(100)).await;
    }
    done.cancel();
    let _ = timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let s = &stats;
    let sent = s.sent.load(Ordering::Relaxed);
    let delivered = s.delivered.load(Ordering::Relaxed);
    let lost: u64 = pairs
        .iter()
        .map(|p| {
            p.sent
                .load(Ordering::Relaxed)
                .saturating_sub(p.delivered.load(Ordering::Relaxed))
        })
        .sum();
    let duplicated = s.duplicated.load(Ordering::Relaxed);
    let skipped = s.skipped.load(Ordering::Relaxed);
    let seq_breaks = s.seq_breaks.load(Ordering::Relaxed);
    let failed = s.failed.lock().expect("lock").clone();
    let away = s.away.lock().expect("lock").take().unwrap_or_else(new_hist);
    let clean = duplicated == 0 && (a.allow_loss || (lost == 0 && skipped == 0 && seq_breaks == 0));
    let summary = json!({
        "scenario": "rolling",
        "pairs": a.pairs,
        "rate_per_sender": a.rate,
        "secs": round1(start.elapsed().as_secs_f64()),
        "sent": sent,
        "delivered": delivered,
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order_or_skipped": skipped,
        "seq_breaks": seq_breaks,
        "reconnects": s.reconnects.load(Ordering::Relaxed),
        "resumed": s.resumed.load(Ordering::Relaxed),
        "resume_failed": failed,
        "missed_reported": s.missed.load(Ordering::Relaxed),
        "away": hist_json(&away),
        "failures": s.failures.json(),
    });
    Ok((summary, clean))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One resumable peer.
struct Peer {
    dialer: Arc<Dialer>,
    target: usize,
    me: String,
    role: Role,
    pair: Arc<PairState>,
    stats: Arc<Stats>,
    interval: Duration,
    go: CancellationToken,
    stop_sending: CancellationToken,
    done: CancellationToken,
}

/// A peer's state across its connections.
#[derive(Default)]
struct Session {
    token: Option<String>,
    last_seq: u64,
    /// Sender: the next number to send.
    next: u64,
    /// Receiver: the next number expected.
    expected: u64,
    /// When the last socket ended (for the time away).
    ended: Option<Instant>,
    /// Counted in `Stats::welcomed`.
    welcomed: bool,
}

impl Peer {
    async fn run(self) {
        let mut s = Session {
            next: 1,
            expected: 1,
            ..Session::default()
        };
        // Bounded: each round is one connection; a run has at most this many.
        for _ in 0..10_000 {
            if self.done.is_cancelled() {
                return;
            }
            match self.connection(&mut s).await {
                Ok(End::Done) => return,
                Ok(End::Again) => {}
                Err(e) => {
                    self.stats.failures.add(e);
                    // A node that refuses (draining, starting): try again soon.
                    sleep(Duration::from_millis(50 + rand::random_range(0..100))).await;
                }
            }
        }
    }

    /// One connection: hello (resuming when it can), then traffic until it
    /// ends.
    async fn connection(&self, s: &mut Session) -> Result<End, String> {
        let mut ws = self.dialer.dial(self.target).await?;
        let hello = match &s.token {
            Some(t) => json!({"type": "hello", "peer_id": self.me, "resumable": true,
                              "resume": t, "last_seq": s.last_seq}),
            None => json!({"type": "hello", "peer_id": self.me, "resumable": true}),
        };
        ws.send(Message::Text(hello.to_string().into()))
            .await
            .map_err(|_| "hello-send".to_string())?;
        // The welcome (after a `resume-failed`, if the session was lost).
        let deadline = TokioInstant::now() + Duration::from_secs(10);
        loop {
            let m = read(&mut ws, deadline).await?;
            match m["type"].as_str() {
                Some("resume-failed") => {
                    let reason = m["reason"].as_str().unwrap_or("?").to_string();
                    *self
                        .stats
                        .failed
                        .lock()
                        .expect("lock")
                        .entry(reason)
                        .or_default() += 1;
                    if let Some(n) = m["missed"].as_u64() {
                        self.stats.missed.fetch_add(n, Ordering::Relaxed);
                    }
                }
                Some("welcome") => {
                    if m["resumed"] == true {
                        self.stats.resumed.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = s.ended.take() {
                            let us = micros(t.elapsed());
                            if let Some(h) = self.stats.away.lock().expect("lock").as_mut() {
                                let _ = h.record(us.max(1));
                            }
                        }
                    } else {
                        s.last_seq = 0;
                        s.ended = None;
                    }
                    if s.token.is_none() && !s.welcomed {
                        s.welcomed = true;
                        self.stats.welcomed.fetch_add(1, Ordering::Relaxed);
                    }
                    s.token = m["resume_token"].as_str().map(str::to_string);
                    break;
                }
                Some("error") => {
                    let code = m["code"].as_str().unwrap_or("?");
                    return Err(format!("hello-{code}"));
                }
                _ => {}
            }
        }
        let end = self.traffic(&mut ws, s).await;
        s.ended = Some(Instant::now());
        match end {
            End::Again => {
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                // A client moving on closes with a code of its own: its
                // session waits for the resume.
                let _ = timeout(Duration::from_secs(1), ws.close(Some(close_frame(4000)))).await;
            }
            End::Done => {
                let _ = timeout(Duration::from_secs(1), ws.close(Some(close_frame(1000)))).await;
            }
        }
        Ok(end)
    }

    /// Sends (a sender) and reads until the socket ends, the server asks the
    /// client to move, or the run is over.
    async fn traffic(&self, ws: &mut Ws, s: &mut Session) -> End {
        let mut tick = tokio::time::interval_at(
            TokioInstant::now() + self.interval.mul_f64(rand::random::<f64>()),
            self.interval,
        );
        let mut in_flight: u64 = 0;
        let mut moving: Option<TokioInstant> = None;
        loop {
            if let Some(since) = moving {
                // Bounded: acks in flight get a second, then the socket goes.
                if in_flight == 0 || since.elapsed() > Duration::from_secs(1) {
                    return End::Again;
                }
            }
            let sending = matches!(self.role, Role::Sender(_))
                && self.go.is_cancelled()
                && moving.is_none()
                && !self.stop_sending.is_cancelled();
            tokio::select! {
                _ = self.done.cancelled() => return End::Done,
                _ = tick.tick(), if sending => {
                    let Role::Sender(to) = &self.role else { continue };
                    let n = s.next;
                    let m = json!({"type": "signal", "id": n, "to": to, "kind": "offer", "data": {"n": n}});
                    if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                        return End::Again;
                    }
                    s.next += 1;
                    in_flight += 1;
                    self.pair.sent.fetch_add(1, Ordering::Relaxed);
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                frame = ws.next() => {
                    let m: Value = match frame {
                        Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                            Ok(v) => v,
                            Err(_) => { self.stats.failures.add("undecodable"); continue }
                        },
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Again,
                        Some(Ok(_)) => continue,
                    };
                    if let Some(seq) = m["seq"].as_u64() {
                        if seq != s.last_seq + 1 {
                            self.stats.seq_breaks.fetch_add(1, Ordering::Relaxed);
                        }
                        s.last_seq = seq;
                    }
                    match m["type"].as_str() {
                        Some("signal") => self.received(s, m["data"]["n"].as_u64().unwrap_or(0)),
                        Some("ack") => in_flight = in_flight.saturating_sub(1),
                        Some("reconnect") => moving = Some(TokioInstant::now()),
                        Some("error") => self
                            .stats
                            .failures
                            .add(format!("error-{}", m["code"].as_str().unwrap_or("?"))),
                        _ => {}
                    }
                }
            }
        }
    }

    /// A receiver got number `n`.
    fn received(&self, s: &mut Session, n: u64) {
        if n < s.expected {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if n > s.expected {
            self.stats
                .skipped
                .fetch_add(n - s.expected, Ordering::Relaxed);
        }
        s.expected = n + 1;
        self.pair.delivered.fetch_add(1, Ordering::Relaxed);
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

fn close_frame(code: u16) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }
}

/// The next JSON message, by `deadline`.
async fn read(ws: &mut Ws, deadline: TokioInstant) -> Result<Value, String> {
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("welcome-timeout".into()),
            Ok(None) | Ok(Some(Err(_))) => return Err("hello-closed".into()),
            Ok(Some(Ok(f))) => f,
        };
        match frame {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str()).map_err(|_| "undecodable".into())
            }
            Message::Close(_) => return Err("hello-closed".into()),
            _ => continue,
        }
    }
}
