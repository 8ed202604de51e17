//! `idle`: open N sockets, each sends `hello` and one `join` (rooms of
//! `--room-size`), then hold them, answering the server's pings. Reports the
//! connect rate, the `hello` latency, the sockets dropped while held and,
//! with `--server-pid`, the servers' RSS before and after: RSS per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::dial::{check_sockets, close_ws, Dialer};
use crate::procstat::{servers_rss, CpuWindow};
use crate::report::{hist_json, micros, new_hist, round2, Failures};
use crate::wire::run_id;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Sockets to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How long to hold the sockets once all are connected, in seconds.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Peers per room (socket i joins room `i / room-size`).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Wait this long after the last connect before reading the server's RSS, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Give up on the setup phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    setup_timeout_secs: u64,
}

pub async fn idle(a: IdleArgs) -> Result<(Value, bool)> {
    check_sockets(a.conns)?;
    let c = &a.common;
    let dialer = Arc::new(Dialer::new(c, 4096).await?);
    let run = run_id();
    let room_size = a.room_size.max(1);
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(c.concurrency.max(1)));
    let failures = Arc::new(Failures::default());
    let connected = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let last_done_us = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(new_hist()));

    let rss_before = servers_rss(&c.server_pid);
    eprintln!(
        "idle: {} sockets to {:?}, rooms of {room_size}, run {run}",
        a.conns,
        dialer.urls()
    );
    let start = Instant::now();
    let cpu = CpuWindow::start(&c.server_pid);
    let mut tasks = JoinSet::new();
    for i in 0..a.conns {
        let (dialer, gate, stop, failures) =
            (dialer.clone(), gate.clone(), stop.clone(), failures.clone());
        let (connected, dropped, done, last_done_us, lat) = (
            connected.clone(),
            dropped.clone(),
            done.clone(),
            last_done_us.clone(),
            lat.clone(),
        );
        let run = run.clone();
        tasks.spawn(async move {
            let setup = async {
                let _permit = gate.acquire().await.expect("gate open");
                if stop.is_cancelled() {
                    return Err("cancelled".to_string());
                }
                let t0 = Instant::now();
                let mut ws = dialer.hello(i, &format!("lg{run}-i{i}")).await?;
                lat.lock()
                    .expect("hist lock")
                    .saturating_record(micros(t0.elapsed()));
                dialer
                    .join(&mut ws, &format!("lg{run}-room{}", i / room_size))
                    .await?;
                Ok(ws)
            };
            let res = setup.await;
            done.fetch_add(1, Ordering::Relaxed);
            last_done_us.fetch_max(micros(start.elapsed()), Ordering::Relaxed);
            let mut ws = match res {
                Ok(ws) => ws,
                Err(e) => {
                    failures.add(e);
                    return;
                }
            };
            connected.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        close_ws(ws).await;
                        return;
                    }
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        });
    }

    // Setup phase, bounded.
    let setup_deadline = Instant::now() + Duration::from_secs(a.setup_timeout_secs);
    let mut last_print = Instant::now();
    while done.load(Ordering::Relaxed) < a.conns as u64 {
        if Instant::now() >= setup_deadline {
            eprintln!("idle: setup timed out");
            stop.cancel();
            break;
        }
        sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  {:>6.1}s connected {} failed {}",
                start.elapsed().as_secs_f64(),
                connected.load(Ordering::Relaxed),
                failures.total()
            );
        }
    }
    let setup_secs = last_done_us.load(Ordering::Relaxed) as f64 / 1e6;
    let setup_cpu = cpu.finish(&c.server_pid);
    let n_ok = connected.load(Ordering::Relaxed);
    eprintln!(
        "idle: {n_ok} connected in {setup_secs:.2}s ({:.0}/s), {} failed; settling",
        n_ok as f64 / setup_secs.max(1e-6),
        failures.total()
    );
    sleep(Duration::from_millis(a.settle_ms)).await;
    let rss_after = servers_rss(&c.server_pid);
    let still = n_ok - dropped.load(Ordering::Relaxed);
    eprintln!("idle: holding {still} sockets for {}s", a.hold_secs);
    let hold_end = Instant::now() + Duration::from_secs(a.hold_secs);
    while Instant::now() < hold_end {
        sleep(Duration::from_millis(250).min(hold_end - Instant::now())).await;
    }
    let rss_end = servers_rss(&c.server_pid);
    let held = n_ok - dropped.load(Ordering::Relaxed);
    stop.cancel();
    let _ = timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if n_ok > 0 => {
            json!(round2((a.saturating_sub(b)) as f64 * 1024.0 / n_ok as f64))
        }
        _ => Value::Null,
    };
    let failed = failures.total();
    let ok = failed == 0 && held == a.conns as u64;
    let lat = lat.lock().expect("hist lock");
    Ok((
        json!({
            "scenario": "idle",
            "ok": ok,
            "urls": dialer.urls(),
            "msgpack": c.msgpack,
            "conns": a.conns,
            "room_size": room_size,
            "connected": n_ok,
            "failed": failed,
            "failures": failures.json(),
            "held_to_end": held,
            "dropped_while_held": n_ok - held,
            "setup_secs": round2(setup_secs),
            "connects_per_sec": round2(n_ok as f64 / setup_secs.max(1e-6)),
            "hello_latency": hist_json(&lat),
            "setup_cpu": setup_cpu,
            "server_rss_before_kib": rss_before,
            "server_rss_after_kib": rss_after,
            "server_rss_end_kib": rss_end,
            "server_rss_per_conn_bytes": per_conn,
        }),
        ok,
    ))
}
