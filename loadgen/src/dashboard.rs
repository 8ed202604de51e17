//! `dashboard`: the dashboard door's room list at scale (docs/DOORS.md,
//! "Dashboard"; the URLs are the door's `/ws/`, e.g.
//! `ws://127.0.0.1:8080/dashboard/ws/`).
//!
//! N subscribers of `webrtc-dashboard-rooms`, round robin over the URLs
//! (the nodes), each subscribed and checked with a ping. Then three phases:
//!
//! 1. **baseline**: `--hold-secs` with no room, so no list: the nodes' CPU
//!    for holding the sockets (server pings, heartbeats);
//! 2. **changes**: one publisher socket (on the first URL) sends
//!    `--changes` `room-created`, one every `--change-interval-ms`; every
//!    subscriber records the time from a change's send to the first room
//!    list that holds it (the change reached it): the latency histogram,
//!    and the deliveries that never came;
//! 3. **periodic**: `--hold-secs` with those rooms and no change: the lists
//!    each subscriber got (the periodic list, once per
//!    `room_list_interval_ms`, once per subscriber whatever the number of
//!    nodes) and the nodes' CPU meanwhile. The list's cost is this phase's
//!    CPU less the baseline's.
//!
//! Besides the latency of every delivery (`change_latency_us`), each
//! change's time to its first and to its last subscriber
//! (`change_first_us`, `change_last_us`: the latency of the change to all
//! of them), and the generator's own CPU in each phase (`loadgen_cpu_pct`
//! of each `cpu` object: it shares the machine with the nodes).
//!
//! Prints one JSON summary; exit 3 when a delivery is missing or a socket
//! failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::dial::{check_sockets, close_ws, ws_kind, Dialer, Ws};
use crate::procstat::CpuWindow;
use crate::report::{hist_json, micros, new_hist, round2, Failures};
use crate::wire::run_id;
use crate::Common;

const ROOMS: &str = "webrtc-dashboard-rooms";

#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers of the rooms channel, spread round robin over the URLs.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Room changes (`room-created`) the publisher makes.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Time between two changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    change_interval_ms: u64,
    /// Length of the baseline and of the periodic phase, in seconds.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// After the last change, wait at most this long for every delivery, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// Give up on the setup phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    setup_timeout_secs: u64,
}

/// The phase the subscribers count lists for.
const PHASE_BASELINE: u64 = 1;
const PHASE_PERIODIC: u64 = 3;

/// Connects, subscribes to the rooms channel and waits for the pong that
/// proves the subscription was handled.
async fn subscriber(dialer: &Dialer, i: usize, step: Duration) -> Result<Ws, String> {
    let mut ws = dialer.dial(i).await?;
    let sub = json!({"type": "subscribe", "channel": ROOMS}).to_string();
    ws.send(Message::text(sub))
        .await
        .map_err(|e| ws_kind("send", &e))?;
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .map_err(|e| ws_kind("send", &e))?;
    let deadline = TokioInstant::now() + step;
    loop {
        match timeout(deadline - TokioInstant::now(), ws.next()).await {
            Err(_) => return Err("pong-timeout".into()),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Err("closed".into()),
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"pong""#) => return Ok(ws),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub async fn dashboard(a: DashboardArgs) -> Result<(Value, bool)> {
    check_sockets(a.subscribers + 1)?;
    let c = &a.common;
    if a.changes == 0 || a.subscribers == 0 {
        bail!("--changes and --subscribers must be at least 1");
    }
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let clock = Instant::now();
    let step = Duration::from_millis(c.step_timeout_ms);
    eprintln!(
        "dashboard: {} subscribers on {:?}, {} changes every {} ms, holds of {} s, run {run}",
        a.subscribers,
        dialer.urls(),
        a.changes,
        a.change_interval_ms,
        a.hold_secs
    );

    // Setup.
    let failures = Arc::new(Failures::default());
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut setup = JoinSet::new();
    for i in 0..a.subscribers {
        let (dialer, gate) = (dialer.clone(), gate.clone());
        setup.spawn(async move {
            let _p = gate.acquire().await.expect("gate open");
            (i, subscriber(&dialer, i, step).await)
        });
    }
    let mut socks = Vec::with_capacity(a.subscribers);
    let setup_deadline = TokioInstant::now() + Duration::from_secs(a.setup_timeout_secs);
    loop {
        match timeout(setup_deadline - TokioInstant::now(), setup.join_next()).await {
            Err(_) => {
                setup.abort_all();
                bail!(
                    "dashboard setup did not finish in {} s",
                    a.setup_timeout_secs
                );
            }
            Ok(None) => break,
            Ok(Some(j)) => match j.context("setup task")?.1 {
                Ok(ws) => socks.push(ws),
                Err(e) => failures.add(format!("setup-{e}")),
            },
        }
    }
    let setup_secs = clock.elapsed().as_secs_f64();
    eprintln!(
        "dashboard: {} subscribed in {setup_secs:.2}s, {} failures",
        socks.len(),
        failures.total()
    );

    // Every subscriber reads until the run stops: the lists of each phase,
    // and the first list holding each change.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..a.changes).map(|_| AtomicU64::new(0)).collect());
    // Each change's first and last arrival (µs on `clock`; first starts at max).
    let first: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.changes).map(|_| AtomicU64::new(u64::MAX)).collect());
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..a.changes).map(|_| AtomicU64::new(0)).collect());
    // What a list holding change k contains (made once, not per frame).
    let needles: Arc<Vec<String>> = Arc::new(
        (0..a.changes)
            .map(|k| format!(r#""id":"bench-{run}-{k}""#))
            .collect(),
    );
    let phase = Arc::new(AtomicU64::new(0));
    let lists_baseline = Arc::new(AtomicU64::new(0));
    let lists_periodic = Arc::new(AtomicU64::new(0));
    let reached = Arc::new(AtomicU64::new(0));
    let list_bytes = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(new_hist()));
    let stop = CancellationToken::new();
    let disconnected = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let subscribed = socks.len();
    for mut ws in socks {
        let (stop, sent, phase, hist, failures) = (
            stop.clone(),
            sent.clone(),
            phase.clone(),
            hist.clone(),
            failures.clone(),
        );
        let (lists_baseline, lists_periodic, reached, list_bytes, disconnected) = (
            lists_baseline.clone(),
            lists_periodic.clone(),
            reached.clone(),
            list_bytes.clone(),
            disconnected.clone(),
        );
        let (first, last, needles) = (first.clone(), last.clone(), needles.clone());
        tasks.spawn(async move {
            let mut next = 0;
            let mut local = new_hist();
            loop {
                let m = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        failures.add("disconnected");
                        disconnected.store(true, Ordering::Relaxed);
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                if !t.starts_with(r#"{"type":"server-room-list""#) {
                    continue;
                }
                match phase.load(Ordering::Relaxed) {
                    PHASE_BASELINE => {
                        lists_baseline.fetch_add(1, Ordering::Relaxed);
                    }
                    PHASE_PERIODIC => {
                        lists_periodic.fetch_add(1, Ordering::Relaxed);
                        list_bytes.store(t.len() as u64, Ordering::Relaxed);
                    }
                    _ => {}
                }
                let now = micros(clock.elapsed());
                while next < sent.len() && t.contains(needles[next].as_str()) {
                    let at = sent[next].load(Ordering::Acquire);
                    if at > 0 {
                        let _ = local.record(now.saturating_sub(at).max(1));
                    }
                    first[next].fetch_min(now, Ordering::Relaxed);
                    last[next].fetch_max(now, Ordering::Relaxed);
                    reached.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                }
            }
            hist.lock()
                .expect("hist lock")
                .add(&local)
                .expect("same bounds");
            close_ws(ws).await;
        });
    }

    // 1. Baseline: no room, no list.
    let pids = c.server_pid.clone();
    phase.store(PHASE_BASELINE, Ordering::Relaxed);
    let cpu = CpuWindow::start(&pids);
    sleep(Duration::from_secs(a.hold_secs)).await;
    let baseline_cpu = cpu.finish(&pids);
    phase.store(0, Ordering::Relaxed);

    // 2. Changes.
    let mut publisher = dialer
        .dial(0)
        .await
        .map_err(|e| anyhow::anyhow!("publisher: {e}"))?;
    let cpu = CpuWindow::start(&pids);
    for k in 0..a.changes {
        sleep(Duration::from_millis(a.change_interval_ms)).await;
        let frame = json!({
            "type": "room-created",
            "data": {"id": format!("bench-{run}-{k}"), "name": format!("Bench {k}"), "description": "load", "host": "loadgen", "createdAt": "2026-01-01T00:00:00.000Z", "status": "active", "participantCount": 0},
            "timestamp": 1,
            "sender": format!("tab-{run}"),
            "channel": ROOMS,
        })
        .to_string();
        sent[k].store(micros(clock.elapsed()).max(1), Ordering::Release);
        publisher
            .send(Message::text(frame))
            .await
            .map_err(|e| anyhow::anyhow!("publisher: {}", ws_kind("send", &e)))?;
    }
    let want = (subscribed * a.changes) as u64;
    let deadline = TokioInstant::now() + Duration::from_secs(a.wait_secs);
    while reached.load(Ordering::Relaxed) < want && TokioInstant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let changes_cpu = cpu.finish(&pids);

    // 3. The periodic list, with the rooms and no change.
    phase.store(PHASE_PERIODIC, Ordering::Relaxed);
    let cpu = CpuWindow::start(&pids);
    sleep(Duration::from_secs(a.hold_secs)).await;
    let periodic_cpu = cpu.finish(&pids);
    phase.store(0, Ordering::Relaxed);

    stop.cancel();
    while tasks.join_next().await.is_some() {}
    close_ws(publisher).await;

    let hist = hist.lock().expect("hist lock").clone();
    // Per change: from its send to its first and to its last subscriber.
    let (mut to_first, mut to_last) = (new_hist(), new_hist());
    for k in 0..a.changes {
        let at = sent[k].load(Ordering::Acquire);
        let (f, l) = (
            first[k].load(Ordering::Relaxed),
            last[k].load(Ordering::Relaxed),
        );
        if at > 0 && f != u64::MAX {
            let _ = to_first.record(f.saturating_sub(at).max(1));
            let _ = to_last.record(l.saturating_sub(at).max(1));
        }
    }
    let reached = reached.load(Ordering::Relaxed);
    let periodic = lists_periodic.load(Ordering::Relaxed);
    let secs = a.hold_secs as f64;
    let cpu_secs = |v: &Value| v["server_cpu_secs"].as_f64();
    let list_cost = match (cpu_secs(&periodic_cpu), cpu_secs(&baseline_cpu)) {
        (Some(p), Some(b)) if periodic > 0 => {
            Some(round2((p - b).max(0.0) * 1e6 / periodic as f64))
        }
        _ => None,
    };
    let ok = reached == want && failures.total() == 0 && !disconnected.load(Ordering::Relaxed);
    let summary = json!({
        "scenario": "dashboard",
        "run": run,
        "urls": dialer.urls(),
        "subscribers": subscribed,
        "setup_secs": round2(setup_secs),
        "changes": a.changes,
        "change_latency_us": hist_json(&hist),
        "change_first_us": hist_json(&to_first),
        "change_last_us": hist_json(&to_last),
        "deliveries": {"expected": want, "reached": reached, "missing": want - reached.min(want)},
        "baseline": {
            "lists": lists_baseline.load(Ordering::Relaxed),
            "cpu": baseline_cpu,
        },
        "changes_cpu": changes_cpu,
        "periodic": {
            "lists": periodic,
            "lists_per_subscriber_per_sec": round2(periodic as f64 / subscribed.max(1) as f64 / secs),
            "list_frame_bytes": list_bytes.load(Ordering::Relaxed),
            "cpu": periodic_cpu,
            "server_cpu_us_per_list_above_baseline": list_cost,
        },
        "failures": failures.json(),
    });
    Ok((summary, ok))
}
