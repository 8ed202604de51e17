//! `connect`: a connect storm: connect, `hello`, `welcome`, then close (or,
//! with `--hold`, keep every connection until all are made), with
//! `--concurrency` workers. Reports connects/s, the `hello` latency, failures
//! and unclean closes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::dial::{check_sockets, Dialer, Ws};
use crate::procstat::CpuWindow;
use crate::report::{hist_json, micros, new_hist, round2, Failures};
use crate::wire::run_id;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to make in total.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Stop starting new connections after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// Keep every connection open until all are made, then close them all
    /// (outside the measured window): the shape of clients reconnecting after
    /// a restart. Without it each worker closes a connection (close handshake)
    /// before making the next: the shape of churn.
    #[arg(long)]
    hold: bool,
}

/// Closes with a close handshake and waits for the server's end of it, at
/// most 2 s; true when it ended cleanly.
async fn close_clean(mut ws: Ws) -> bool {
    timeout(Duration::from_secs(2), async {
        ws.close(None).await.is_ok()
            && loop {
                match ws.next().await {
                    Some(Ok(_)) => continue,
                    None => break true,
                    Some(Err(WsError::ConnectionClosed)) => break true,
                    Some(Err(_)) => break false,
                }
            }
    })
    .await
    .unwrap_or(false)
}

pub async fn connect(a: ConnectArgs) -> Result<(Value, bool)> {
    let c = &a.common;
    let workers = c.concurrency.clamp(1, a.conns.max(1));
    check_sockets(if a.hold { a.conns } else { workers })?;
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let next = Arc::new(AtomicUsize::new(0));
    let ok_count = Arc::new(AtomicU64::new(0));
    let unclean = Arc::new(AtomicU64::new(0));
    let last_done_us = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    eprintln!(
        "connect: {} connections to {:?} with {workers} workers, run {run}",
        a.conns,
        dialer.urls()
    );
    let start = Instant::now();
    let give_up = start + Duration::from_secs(a.max_secs);
    let cpu = CpuWindow::start(&c.server_pid);
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let (dialer, next, ok_count, unclean, last_done_us, failures, run) = (
            dialer.clone(),
            next.clone(),
            ok_count.clone(),
            unclean.clone(),
            last_done_us.clone(),
            failures.clone(),
            run.clone(),
        );
        let hold = a.hold;
        tasks.spawn(async move {
            let mut hist = new_hist();
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.conns || Instant::now() >= give_up {
                    return (hist, held);
                }
                let t0 = Instant::now();
                match dialer.hello(i, &format!("lg{run}-c{i}")).await {
                    Ok(ws) => {
                        hist.saturating_record(micros(t0.elapsed()));
                        ok_count.fetch_add(1, Ordering::Relaxed);
                        if hold {
                            held.push(ws);
                        } else if !close_clean(ws).await {
                            unclean.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => failures.add(e),
                }
                last_done_us.fetch_max(micros(start.elapsed()), Ordering::Relaxed);
            }
        });
    }
    let mut hist = new_hist();
    let mut held = Vec::new();
    let mut last_print = Instant::now();
    let hard_end = TokioInstant::now() + Duration::from_secs(a.max_secs + 30);
    loop {
        tokio::select! {
            j = tasks.join_next() => match j {
                None => break,
                Some(Ok((h, ws))) => {
                    hist.add(&h).expect("histograms share bounds");
                    held.extend(ws);
                }
                Some(Err(_)) => failures.add("worker-panicked"),
            },
            _ = sleep(Duration::from_millis(200)) => {
                if last_print.elapsed() >= Duration::from_secs(1) {
                    last_print = Instant::now();
                    eprintln!(
                        "  {:>5.1}s ok {} failed {}",
                        start.elapsed().as_secs_f64(),
                        ok_count.load(Ordering::Relaxed),
                        failures.total()
                    );
                }
            }
            _ = sleep_until(hard_end) => {
                tasks.abort_all();
                failures.add("workers-stuck");
                break;
            }
        }
    }
    let cpu = cpu.finish(&c.server_pid);
    // Held connections close now, outside the measured window, all at once
    // (each close is bounded by close_clean's 2 s).
    let closing: Vec<_> = held.into_iter().map(close_clean).collect();
    let clean = futures_util::future::join_all(closing).await;
    unclean.fetch_add(
        clean.iter().filter(|ok| !**ok).count() as u64,
        Ordering::Relaxed,
    );
    let secs = last_done_us.load(Ordering::Relaxed) as f64 / 1e6;
    let n_ok = ok_count.load(Ordering::Relaxed);
    let failed = failures.total();
    let ok = failed == 0 && n_ok == a.conns as u64;
    Ok((
        json!({
            "scenario": "connect",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "conns": a.conns,
            "concurrency": workers,
            "hold": a.hold,
            "succeeded": n_ok,
            "failed": failed,
            "failures": failures.json(),
            "unclean_closes": unclean.load(Ordering::Relaxed),
            "secs": round2(secs),
            "connects_per_sec": round2(n_ok as f64 / secs.max(1e-6)),
            "hello_latency": hist_json(&hist),
            "cpu": cpu,
        }),
        ok,
    ))
}
