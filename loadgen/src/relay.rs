//! `relay`: P pairs; each A sends `signal`s to its B carrying a sequence
//! number and a send timestamp; B checks order and records the one-way
//! latency. Open-loop at `--rate` signals/s in total (optionally in bursts), or
//! saturating with at most `--window` signals in flight per pair. Reports
//! throughput, loss, duplicates, reordering, latency and the servers' CPU per
//! signal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::dial::{check_sockets, close_ws, Dialer, Ws};
use crate::procstat::{servers_rss, CpuWindow};
use crate::report::{hist_json, micros, new_hist, round2, Failures};
use crate::wire::{decode, encode, run_id, SignalData, SignalOut};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    common: Common,
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Signals per second in total (spread evenly over the pairs); 0 saturates.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Sending time, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// With --rate: send signals in bursts of this many back-to-back frames
    /// (like an answer followed by trickled candidates), at the same average rate.
    #[arg(long, default_value_t = 1)]
    burst: u64,
    /// Write every signal to the socket on its own (one TCP write each, as
    /// browsers do) instead of batching what is due into one write.
    #[arg(long)]
    flush_each: bool,
    /// Padding bytes in each signal's `data` (beyond `seq` and `ts`).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Most signals in flight (sent, not yet received) per pair. Keep it below
    /// the server's `limits.outbound_queue`, or saturating closes slow receivers.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// After sending stops, wait at most this long for the last deliveries, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Before sending, measure the servers' CPU for this many seconds with every
    /// socket connected and silent (heartbeats, timers, other connected peers):
    /// `cpu_per_signal.net_us` subtracts that idle cost. 0: no baseline.
    #[arg(long, default_value_t = 0)]
    baseline_secs: u64,
    /// Read buffer per socket, in bytes (0: 16 KiB when saturating, 2 KiB at a
    /// fixed rate). tungstenite zeroes the whole buffer before every read, so
    /// at a fixed rate, where each read finds one or a few frames, a large
    /// buffer costs the generator more than the frames do.
    #[arg(long, default_value_t = 0)]
    read_buffer: usize,
}

/// State a pair's sender and receiver share.
struct Pair {
    /// Signals A has handed to its socket.
    sent: AtomicU64,
    /// Distinct signals B has received.
    delivered: AtomicU64,
    /// Permits for signals in flight: A takes one per signal, B returns it.
    window: Semaphore,
}

/// What a receiver saw.
struct RecvStats {
    hist: Histogram<u64>,
    duplicated: u64,
    reordered: u64,
    disconnected: bool,
}

/// Relay parameters shared by all tasks.
struct RelayRun {
    msgpack: bool,
    /// Per-pair interval between bursts; `None` saturates.
    interval: Option<Duration>,
    /// Signals per burst (rate mode).
    burst: u64,
    /// Write each signal to the socket on its own instead of batching.
    flush_each: bool,
    pad: String,
    clock: Instant,
    go: TokioInstant,
    deadline: TokioInstant,
    stop: CancellationToken,
    failures: Failures,
    last_recv_us: AtomicU64,
    senders_done: AtomicU64,
    disconnects: AtomicU64,
}

/// Handles a frame arriving on a sender's socket; false when the socket ended.
fn sender_frame(r: &RelayRun, m: Option<Result<Message, WsError>>) -> bool {
    match m {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
            r.failures.add("sender-disconnected");
            r.disconnects.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(Ok(m)) => {
            if let Some(Ok(inc)) = decode(&m) {
                if inc.ty == "error" {
                    r.failures
                        .add(format!("error-{}", inc.code.unwrap_or_default()));
                }
            }
            true
        }
    }
}

/// Sends pair `phase`'s signals. In rate mode, the pairs' schedules are offset
/// by `phase` (0..1) of an interval so that the total rate is smooth.
async fn sender(mut ws: Ws, pair: Arc<Pair>, to: String, phase: f64, r: Arc<RelayRun>) {
    let start = r.go + r.interval.map_or(Duration::ZERO, |iv| iv.mul_f64(phase));
    sleep_until(start).await;
    let mut seq: u64 = 0;
    let mut alive = true;
    'send: while alive {
        let now = TokioInstant::now();
        if now >= r.deadline || r.stop.is_cancelled() {
            break;
        }
        // How many signals are due now.
        let due = match r.interval {
            Some(iv) => {
                let next_at = start + iv.mul_f64((seq / r.burst) as f64);
                if next_at > now {
                    tokio::select! {
                        biased;
                        _ = r.stop.cancelled() => break 'send,
                        m = ws.next() => alive = sender_frame(&r, m),
                        _ = sleep_until(next_at.min(r.deadline)) => {}
                    }
                    continue;
                }
                let elapsed = (now - start).as_secs_f64();
                (((elapsed / iv.as_secs_f64()) as u64 + 1) * r.burst)
                    .saturating_sub(seq)
                    .clamp(1, 64.max(r.burst))
            }
            None => 64,
        };
        // Take window permits: at least one (waiting), then what is free.
        let mut got = 0;
        while got < due {
            match pair.window.try_acquire() {
                Ok(p) => {
                    p.forget();
                    got += 1;
                }
                Err(_) => break,
            }
        }
        if got == 0 {
            tokio::select! {
                biased;
                _ = r.stop.cancelled() => break 'send,
                m = ws.next() => { alive = sender_frame(&r, m); continue 'send; }
                p = pair.window.acquire() => {
                    p.expect("window open").forget();
                    got = 1;
                }
                _ = sleep_until(r.deadline) => break 'send,
            }
        }
        for _ in 0..got {
            let msg = encode(
                r.msgpack,
                &SignalOut {
                    ty: "signal",
                    to: &to,
                    kind: "candidate",
                    data: SignalData {
                        seq,
                        ts: micros(r.clock.elapsed()),
                        pad: &r.pad,
                    },
                },
            );
            pair.sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            let res = if r.flush_each {
                ws.send(msg).await
            } else {
                ws.feed(msg).await
            };
            if res.is_err() {
                r.failures.add("send-failed");
                r.disconnects.fetch_add(1, Ordering::Relaxed);
                alive = false;
                break;
            }
        }
        if alive && ws.flush().await.is_err() {
            r.failures.add("send-failed");
            r.disconnects.fetch_add(1, Ordering::Relaxed);
            alive = false;
        }
    }
    r.senders_done.fetch_add(1, Ordering::Relaxed);
    // Keep reading (errors, pings) until the run stops.
    while alive {
        tokio::select! {
            _ = r.stop.cancelled() => break,
            m = ws.next() => alive = sender_frame(&r, m),
        }
    }
    if alive {
        close_ws(ws).await;
    }
}

async fn receiver(mut ws: Ws, pair: Arc<Pair>, r: Arc<RelayRun>) -> RecvStats {
    let mut st = RecvStats {
        hist: new_hist(),
        duplicated: 0,
        reordered: 0,
        disconnected: false,
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut max_seen: Option<u64> = None;
    loop {
        let m = tokio::select! {
            biased;
            _ = r.stop.cancelled() => break,
            m = ws.next() => m,
        };
        let m = match m {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                r.failures.add("receiver-disconnected");
                r.disconnects.fetch_add(1, Ordering::Relaxed);
                st.disconnected = true;
                return st;
            }
            Some(Ok(m)) => m,
        };
        let inc = match decode(&m) {
            None => continue,
            Some(Err(_)) => {
                r.failures.add("undecodable");
                continue;
            }
            Some(Ok(inc)) => inc,
        };
        match inc.ty.as_str() {
            "signal" => {
                let now = micros(r.clock.elapsed());
                let Some(d) = inc.data else {
                    r.failures.add("signal-without-data");
                    continue;
                };
                let (word, bit) = ((d.seq / 64) as usize, 1u64 << (d.seq % 64));
                if word >= seen.len() {
                    seen.resize(word + 1, 0);
                }
                if seen[word] & bit != 0 {
                    st.duplicated += 1;
                    continue;
                }
                seen[word] |= bit;
                if max_seen.is_some_and(|m| d.seq < m) {
                    st.reordered += 1;
                }
                max_seen = Some(max_seen.map_or(d.seq, |m| m.max(d.seq)));
                st.hist.saturating_record(now.saturating_sub(d.ts).max(1));
                pair.delivered.fetch_add(1, Ordering::Relaxed);
                pair.window.add_permits(1);
                r.last_recv_us.fetch_max(now, Ordering::Relaxed);
            }
            "error" => r
                .failures
                .add(format!("error-{}", inc.code.unwrap_or_default())),
            _ => {}
        }
    }
    close_ws(ws).await;
    st
}

pub async fn relay(a: RelayArgs) -> Result<(Value, bool)> {
    check_sockets(a.pairs * 2)?;
    let c = &a.common;
    if a.pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let read_buf = match (a.read_buffer, a.rate) {
        (0, 0) => 16 * 1024,
        (0, _) => 2 * 1024,
        (n, _) => n,
    };
    let dialer = Arc::new(Dialer::new(c, read_buf).await?);
    let n_targets = dialer.targets.len();
    let run = run_id();
    let clock = Instant::now();
    eprintln!(
        "relay: {} pairs on {:?}, rate {}, {}s, run {run}",
        a.pairs,
        dialer.urls(),
        if a.rate == 0 {
            "saturating".to_string()
        } else {
            format!("{}/s", a.rate)
        },
        a.secs
    );

    // Setup: every B, then every A. A of pair i sits on target i, B on target i + 1.
    let failures = Failures::default();
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut setup = JoinSet::new();
    for i in 0..a.pairs {
        for (role, ti) in [("b", i + 1), ("a", i)] {
            let (dialer, gate, run) = (dialer.clone(), gate.clone(), run.clone());
            let ti = if n_targets > 1 { ti % n_targets } else { 0 };
            setup.spawn(async move {
                let _p = gate.acquire().await.expect("gate open");
                let r = dialer.hello(ti, &format!("lg{run}-{role}{i}")).await;
                (i, role, r)
            });
        }
    }
    let mut socks: Vec<(Option<Ws>, Option<Ws>)> = (0..a.pairs).map(|_| (None, None)).collect();
    let setup_deadline = TokioInstant::now() + Duration::from_secs(120);
    loop {
        match timeout(setup_deadline - TokioInstant::now(), setup.join_next()).await {
            Err(_) => {
                setup.abort_all();
                bail!("relay setup did not finish in 120 s");
            }
            Ok(None) => break,
            Ok(Some(j)) => {
                let (i, role, r) = j.context("setup task")?;
                match r {
                    Ok(ws) if role == "a" => socks[i].0 = Some(ws),
                    Ok(ws) => socks[i].1 = Some(ws),
                    Err(e) => failures.add(format!("setup-{e}")),
                }
            }
        }
    }
    let setup_failed = failures.total();
    eprintln!(
        "relay: setup done in {:.2}s, {setup_failed} failures",
        clock.elapsed().as_secs_f64()
    );

    // Idle cost of the servers with every socket connected, before any signal.
    let baseline = if a.baseline_secs > 0 && !c.server_pid.is_empty() {
        sleep(Duration::from_millis(500)).await;
        eprintln!(
            "relay: measuring the servers' idle CPU for {}s",
            a.baseline_secs
        );
        let w = CpuWindow::start(&c.server_pid);
        sleep(Duration::from_secs(a.baseline_secs)).await;
        Some(w.finish(&c.server_pid))
    } else {
        None
    };

    let go = TokioInstant::now() + Duration::from_millis(200);
    let burst = a.burst.max(1);
    let interval = if a.rate == 0 {
        None
    } else {
        Some(Duration::from_secs_f64(
            (a.pairs as u64 * burst) as f64 / a.rate as f64,
        ))
    };
    let r = Arc::new(RelayRun {
        msgpack: c.msgpack,
        interval,
        burst,
        flush_each: a.flush_each,
        pad: "x".repeat(a.payload_bytes),
        clock,
        go,
        deadline: go + Duration::from_secs(a.secs),
        stop: CancellationToken::new(),
        failures,
        last_recv_us: AtomicU64::new(0),
        senders_done: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
    });
    let window = a.window.clamp(1, Semaphore::MAX_PERMITS);
    let mut pairs = Vec::new();
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    for (i, (sa, sb)) in socks.into_iter().enumerate() {
        let (Some(sa), Some(sb)) = (sa, sb) else {
            continue;
        };
        let pair = Arc::new(Pair {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            window: Semaphore::new(window),
        });
        pairs.push(pair.clone());
        receivers.spawn(receiver(sb, pair.clone(), r.clone()));
        let phase = i as f64 / a.pairs as f64;
        senders.spawn(sender(sa, pair, format!("lg{run}-b{i}"), phase, r.clone()));
    }
    let n_pairs = pairs.len();
    let totals = |pairs: &[Arc<Pair>]| {
        pairs.iter().fold((0u64, 0u64), |(s, d), p| {
            (
                s + p.sent.load(Ordering::Relaxed),
                d + p.delivered.load(Ordering::Relaxed),
            )
        })
    };

    sleep_until(go).await;
    let cpu = CpuWindow::start(&c.server_pid);
    let go_us = micros(clock.elapsed());
    let mut prev = (0u64, 0u64, Instant::now());
    while TokioInstant::now() < r.deadline {
        sleep(Duration::from_secs(1).min(r.deadline - TokioInstant::now())).await;
        let (s, d) = totals(&pairs);
        let dt = prev.2.elapsed().as_secs_f64().max(1e-6);
        eprintln!(
            "  {:>5.1}s sent {s} ({:.0}/s) delivered {d} ({:.0}/s) in flight {} errors {}",
            (micros(clock.elapsed()) - go_us) as f64 / 1e6,
            (s - prev.0) as f64 / dt,
            (d - prev.1) as f64 / dt,
            s.saturating_sub(d),
            r.failures.total()
        );
        prev = (s, d, Instant::now());
    }
    let cpu = cpu.finish(&c.server_pid);
    let (_, delivered_in_window) = totals(&pairs);
    let cpu_per_signal = cpu_per_signal(&cpu, baseline.as_ref(), delivered_in_window);
    // Drain: wait for the senders to stop and the last signals to arrive.
    let drain_end = TokioInstant::now() + Duration::from_secs(a.drain_secs);
    loop {
        let (s, d) = totals(&pairs);
        let senders_done = r.senders_done.load(Ordering::Relaxed) as usize == n_pairs;
        if (senders_done && d >= s) || TokioInstant::now() >= drain_end {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    r.stop.cancel();
    let mut hist = new_hist();
    let (mut duplicated, mut reordered) = (0u64, 0u64);
    let joined = timeout(Duration::from_secs(15), async {
        while let Some(j) = receivers.join_next().await {
            if let Ok(st) = j {
                hist.add(&st.hist).expect("histograms share bounds");
                duplicated += st.duplicated;
                reordered += st.reordered;
                let _ = st.disconnected;
            }
        }
        while senders.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        receivers.abort_all();
        senders.abort_all();
    }
    let (sent, delivered) = totals(&pairs);
    let lost: u64 = pairs
        .iter()
        .map(|p| {
            p.sent
                .load(Ordering::Relaxed)
                .saturating_sub(p.delivered.load(Ordering::Relaxed))
        })
        .sum();
    let recv_secs = (r.last_recv_us.load(Ordering::Relaxed).saturating_sub(go_us)) as f64 / 1e6;
    let failures_total = r.failures.total();
    let ok = lost == 0
        && duplicated == 0
        && reordered == 0
        && failures_total == 0
        && n_pairs == a.pairs
        && delivered > 0;
    Ok((
        json!({
            "scenario": "relay",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "pairs": a.pairs,
            "pairs_running": n_pairs,
            "read_buffer": read_buf,
            "target_rate": a.rate,
            "burst": burst,
            "flush_each": a.flush_each,
            "secs": a.secs,
            "payload_bytes": a.payload_bytes,
            "window": window,
            "sent": sent,
            "delivered": delivered,
            "lost": lost,
            "duplicated": duplicated,
            "reordered": reordered,
            "sent_per_sec": round2(sent as f64 / a.secs.max(1) as f64),
            "delivered_per_sec": round2(delivered as f64 / recv_secs.max(1e-6)),
            "latency": hist_json(&hist),
            "failures": r.failures.json(),
            "disconnects": r.disconnects.load(Ordering::Relaxed),
            "cpu": cpu,
            "baseline_cpu": baseline,
            "cpu_per_signal": cpu_per_signal,
            "server_rss_kib": servers_rss(&c.server_pid),
        }),
        ok,
    ))
}

/// The servers' CPU time per signal delivered during the sending window: `us`
/// counts everything the servers did (idle work such as heartbeats included),
/// `net_us` first subtracts the idle rate measured by `--baseline-secs`.
fn cpu_per_signal(cpu: &Value, baseline: Option<&Value>, delivered: u64) -> Value {
    let (Some(secs), Some(window)) = (cpu["server_cpu_secs"].as_f64(), cpu["window_secs"].as_f64())
    else {
        return Value::Null;
    };
    if delivered == 0 {
        return Value::Null;
    }
    let per = |s: f64| (s * 1e6 / delivered as f64 * 100.0).round() / 100.0;
    let idle_rate = baseline
        .and_then(|b| Some(b["server_cpu_secs"].as_f64()? / b["window_secs"].as_f64()?.max(1e-6)));
    json!({
        "delivered": delivered,
        "server_cpu_secs": secs,
        "us": per(secs),
        "idle_cpu_pct": idle_rate.map(|r| (r * 1000.0).round() / 10.0),
        "net_us": idle_rate.map(|r| per((secs - r * window).max(0.0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_signal_subtracts_the_idle_rate() {
        let cpu = json!({"server_cpu_secs": 1.0, "window_secs": 10.0});
        let baseline = json!({"server_cpu_secs": 0.25, "window_secs": 5.0});
        let v = cpu_per_signal(&cpu, Some(&baseline), 1000);
        assert_eq!(v["us"], json!(1000.0));
        assert_eq!(v["idle_cpu_pct"], json!(5.0));
        assert_eq!(v["net_us"], json!(500.0));
        assert_eq!(cpu_per_signal(&cpu, None, 1000)["net_us"], Value::Null);
        assert_eq!(cpu_per_signal(&cpu, None, 0), Value::Null);
        assert_eq!(cpu_per_signal(&json!({}), None, 1000), Value::Null);
    }
}
