//! `pairing`: N rendezvous workers (round robin over the URLs) each send
//! `pair` (all at once or at `--rate`) and wait for `paired`. Reports the
//! `pair` → `paired` latency, pairings/s and the time until all are paired,
//! and checks that every worker was paired exactly once and symmetrically.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::dial::{check_sockets, close_ws, ws_kind, Dialer, Ws};
use crate::procstat::{servers_rss, CpuWindow};
use crate::report::{hist_json, micros, new_hist, round2, Failures};
use crate::wire::{decode, encode, run_id, PairOut};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct PairingArgs {
    #[command(flatten)]
    common: Common,
    /// Workers (an even number pairs them all).
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Pool every worker queues in.
    #[arg(long, default_value = "bench")]
    pool: String,
    /// `pair` requests per second in total; 0 sends them all at once.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// After the last `pair`, wait at most this long for the `paired`s, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
    /// Keep listening this long after the last `paired` (to catch duplicates), in milliseconds.
    #[arg(long, default_value_t = 500)]
    linger_ms: u64,
    /// Give up on the setup phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    setup_timeout_secs: u64,
}

/// What one worker saw after sending `pair`.
#[derive(Default)]
struct WorkerSeen {
    /// `pair` sent, µs on the run clock.
    sent_us: Option<u64>,
    /// First `paired`: when (µs), pairing id, role, partner's peer id.
    paired: Option<(u64, String, String, String)>,
    /// `paired` messages received (more than one is a duplicate).
    paired_count: u64,
    error: Option<String>,
}

pub async fn pairing(a: PairingArgs) -> Result<(Value, bool)> {
    check_sockets(a.workers)?;
    let c = &a.common;
    if a.workers < 2 {
        bail!("--workers must be at least 2");
    }
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let clock = Instant::now();
    let pool = Arc::new(a.pool.clone());
    eprintln!(
        "pairing: {} workers on {:?}, pool {}, {}, run {run}",
        a.workers,
        dialer.urls(),
        a.pool,
        if a.rate == 0 {
            "all at once".to_string()
        } else {
            format!("{}/s", a.rate)
        }
    );

    // Setup: connect and hello, round robin over the targets.
    let failures = Arc::new(Failures::default());
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let mut setup = JoinSet::new();
    for i in 0..a.workers {
        let (dialer, gate, run) = (dialer.clone(), gate.clone(), run.clone());
        setup.spawn(async move {
            let _p = gate.acquire().await.expect("gate open");
            (i, dialer.hello(i, &format!("lg{run}-w{i}")).await)
        });
    }
    let mut socks: Vec<Option<Ws>> = (0..a.workers).map(|_| None).collect();
    let setup_deadline = TokioInstant::now() + Duration::from_secs(a.setup_timeout_secs);
    loop {
        match timeout(setup_deadline - TokioInstant::now(), setup.join_next()).await {
            Err(_) => {
                setup.abort_all();
                bail!("pairing setup did not finish in {} s", a.setup_timeout_secs);
            }
            Ok(None) => break,
            Ok(Some(j)) => {
                let (i, r) = j.context("setup task")?;
                match r {
                    Ok(ws) => socks[i] = Some(ws),
                    Err(e) => failures.add(format!("setup-{e}")),
                }
            }
        }
    }
    let setup_secs = clock.elapsed().as_secs_f64();
    let setup_failed = failures.total();
    eprintln!("pairing: setup done in {setup_secs:.2}s, {setup_failed} failures");

    // Every worker sends `pair` at its time and listens until the run stops.
    let go = TokioInstant::now() + Duration::from_millis(300);
    let go_us = micros(clock.elapsed()) + 300_000;
    let stop = CancellationToken::new();
    let paired_n = Arc::new(AtomicU64::new(0));
    let last_paired_us = Arc::new(AtomicU64::new(0));
    let last_sent_us = Arc::new(AtomicU64::new(0));
    let msgpack = c.msgpack;
    let mut tasks = JoinSet::new();
    let mut started = 0u64;
    for (i, ws) in socks.into_iter().enumerate() {
        let Some(mut ws) = ws else { continue };
        started += 1;
        let at = match a.rate {
            0 => go,
            r => go + Duration::from_secs_f64(i as f64 / r as f64),
        };
        let (stop, pool, failures) = (stop.clone(), pool.clone(), failures.clone());
        let (paired_n, last_paired_us, last_sent_us) = (
            paired_n.clone(),
            last_paired_us.clone(),
            last_sent_us.clone(),
        );
        tasks.spawn(async move {
            let mut seen = WorkerSeen::default();
            sleep_until(at).await;
            let m = encode(
                msgpack,
                &PairOut {
                    ty: "pair",
                    pool: &pool,
                },
            );
            let t = micros(clock.elapsed());
            if let Err(e) = ws.send(m).await {
                seen.error = Some(ws_kind("send", &e));
                failures.add(ws_kind("pair-send", &e));
                return (i, seen);
            }
            seen.sent_us = Some(t);
            last_sent_us.fetch_max(t, Ordering::Relaxed);
            loop {
                let m = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    m = ws.next() => m,
                };
                let m = match m {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                        failures.add("disconnected");
                        seen.error = Some("disconnected".into());
                        return (i, seen);
                    }
                    Some(Ok(m)) => m,
                };
                let inc = match decode(&m) {
                    None => continue,
                    Some(Err(_)) => {
                        failures.add("undecodable");
                        continue;
                    }
                    Some(Ok(inc)) => inc,
                };
                match inc.ty.as_str() {
                    "paired" => {
                        let now = micros(clock.elapsed());
                        seen.paired_count += 1;
                        if seen.paired.is_none() {
                            let partner = inc
                                .peer
                                .as_ref()
                                .and_then(|p| p.get("peer_id"))
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string();
                            seen.paired = Some((
                                now,
                                inc.pairing_id.unwrap_or_default(),
                                inc.role.unwrap_or_default(),
                                partner,
                            ));
                            paired_n.fetch_add(1, Ordering::Relaxed);
                            last_paired_us.fetch_max(now, Ordering::Relaxed);
                        }
                    }
                    "error" => {
                        let e = format!("error-{}", inc.code.unwrap_or_default());
                        failures.add(e.clone());
                        seen.error = Some(e);
                    }
                    _ => {}
                }
            }
            close_ws(ws).await;
            (i, seen)
        });
    }

    // Wait until all (but an odd one out) are paired, or the time is up.
    sleep_until(go).await;
    let want = started - started % 2;
    let send_end = go
        + match a.rate {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(a.workers as f64 / r as f64),
        };
    let wait_end = send_end + Duration::from_secs(a.wait_secs);
    let cpu = CpuWindow::start(&c.server_pid);
    let mut last_print = Instant::now();
    while paired_n.load(Ordering::Relaxed) < want && TokioInstant::now() < wait_end {
        sleep(Duration::from_millis(5)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  {:>5.1}s paired {} of {want}, failures {}",
                (micros(clock.elapsed()).saturating_sub(go_us)) as f64 / 1e6,
                paired_n.load(Ordering::Relaxed),
                failures.total()
            );
        }
    }
    let cpu = cpu.finish(&c.server_pid);
    sleep(Duration::from_millis(a.linger_ms)).await;
    stop.cancel();
    let mut seen: Vec<Option<WorkerSeen>> = (0..a.workers).map(|_| None).collect();
    let joined = timeout(Duration::from_secs(30), async {
        while let Some(j) = tasks.join_next().await {
            if let Ok((i, s)) = j {
                seen[i] = Some(s);
            }
        }
    })
    .await;
    if joined.is_err() {
        tasks.abort_all();
        failures.add("workers-stuck");
    }

    // Checks: exactly once, symmetric.
    let peer_of = |i: usize| format!("lg{run}-w{i}");
    let index: HashMap<String, usize> = (0..a.workers).map(|i| (peer_of(i), i)).collect();
    let mut hist = new_hist();
    let mut by_pairing: HashMap<&str, Vec<usize>> = HashMap::new();
    let (mut paired, mut paired_twice, mut never_paired) = (0u64, 0u64, 0u64);
    let mut first_sent = u64::MAX;
    for (i, s) in seen.iter().enumerate() {
        let Some(s) = s else { continue };
        if let Some(t) = s.sent_us {
            first_sent = first_sent.min(t);
        }
        if s.paired_count > 1 {
            paired_twice += 1;
        }
        match (&s.paired, s.sent_us) {
            (Some((at, id, _, _)), Some(sent)) => {
                paired += 1;
                hist.saturating_record(at.saturating_sub(sent).max(1));
                by_pairing.entry(id.as_str()).or_default().push(i);
            }
            _ => never_paired += 1,
        }
    }
    let mut asymmetric = 0u64;
    for members in by_pairing.values() {
        let ok = match members.as_slice() {
            [x, y] => {
                let sx = seen[*x].as_ref().and_then(|s| s.paired.as_ref());
                let sy = seen[*y].as_ref().and_then(|s| s.paired.as_ref());
                match (sx, sy) {
                    (Some((_, _, rx, px)), Some((_, _, ry, py))) => {
                        index.get(px) == Some(y)
                            && index.get(py) == Some(x)
                            && rx != ry
                            && ["initiator", "responder"].contains(&rx.as_str())
                            && ["initiator", "responder"].contains(&ry.as_str())
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !ok {
            asymmetric += members.len() as u64;
        }
    }
    let last_paired = last_paired_us.load(Ordering::Relaxed);
    let all_secs = if paired == want && first_sent != u64::MAX {
        Some(round2(last_paired.saturating_sub(first_sent) as f64 / 1e6))
    } else {
        None
    };
    let span = last_paired.saturating_sub(first_sent.min(last_paired)) as f64 / 1e6;
    let pairings = by_pairing.len() as u64;
    // Time the generator took to write every `pair` (0 when none was sent).
    let sending_secs = last_sent_us
        .load(Ordering::Relaxed)
        .saturating_sub(first_sent) as f64
        / 1e6;
    let failed = failures.total();
    let ok = failed == 0 && paired == want && paired_twice == 0 && asymmetric == 0;
    Ok((
        json!({
            "scenario": "pairing",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "workers": a.workers,
            "connected": started,
            "pool": a.pool,
            "rate": a.rate,
            "setup_secs": round2(setup_secs),
            "pair_sending_secs": round2(sending_secs),
            "paired": paired,
            "expected_paired": want,
            "never_paired": never_paired,
            "pairings": pairings,
            "paired_twice": paired_twice,
            "asymmetric": asymmetric,
            "all_paired_secs": all_secs,
            "pairings_per_sec": round2(pairings as f64 / span.max(1e-6)),
            "pair_latency": hist_json(&hist),
            "failed": failed,
            "failures": failures.json(),
            "cpu": cpu,
            "server_rss_kib": servers_rss(&c.server_pid),
        }),
        ok,
    ))
}
