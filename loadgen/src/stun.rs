//! `stun`: STUN Binding requests over UDP from a few sockets, each keeping
//! `--window` requests in flight, at a node's STUN responder. Reports
//! responses/s, losses and round-trip times.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::procstat::{servers_rss, CpuWindow};
use crate::report::{hist_json, micros, new_hist, round2};

#[derive(Debug, Clone, Args)]
pub struct StunArgs {
    /// STUN responder address (ip:port, loopback).
    #[arg(long, default_value = "127.0.0.1:3478")]
    target: String,
    /// UDP sockets sending at once (one task each).
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Requests in flight per socket.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Sending time, in seconds.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// A response not seen within this many milliseconds counts as lost.
    #[arg(long, default_value_t = 200)]
    loss_ms: u64,
    /// Server process ids whose CPU time and RSS are reported (summed), comma-separated.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

/// STUN magic cookie (RFC 8489).
const STUN_COOKIE: u32 = 0x2112_A442;

/// A Binding request whose transaction id carries the send time (µs) and a counter.
fn stun_request(ts_us: u64, n: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    b[4..8].copy_from_slice(&STUN_COOKIE.to_be_bytes());
    b[8..16].copy_from_slice(&ts_us.to_be_bytes());
    b[16..20].copy_from_slice(&n.to_be_bytes());
    b
}

/// The send time in a Binding success response's transaction id, if it is one.
fn stun_response_ts(b: &[u8]) -> Option<u64> {
    if b.len() < 20 || b[0..2] != 0x0101u16.to_be_bytes() || b[4..8] != STUN_COOKIE.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(b[8..16].try_into().ok()?))
}

pub async fn stun(a: StunArgs) -> Result<(Value, bool)> {
    let target: SocketAddr = a.target.parse().context("--target must be ip:port")?;
    if !target.ip().is_loopback() {
        bail!("{target} is not a loopback address; this generator only targets this machine");
    }
    let window = a.window.max(1);
    let clock = Instant::now();
    let deadline = clock + Duration::from_secs(a.secs);
    let loss = Duration::from_millis(a.loss_ms.max(1));
    eprintln!(
        "stun: {} sockets, {window} in flight each, {}s at {target}",
        a.sockets, a.secs
    );
    let cpu = CpuWindow::start(&a.server_pid);
    let mut tasks = JoinSet::new();
    for _ in 0..a.sockets.max(1) {
        tasks.spawn(async move {
            let bind = if target.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(target).await?;
            let (mut sent, mut recv, mut bad) = (0u64, 0u64, 0u64);
            let mut hist = new_hist();
            let mut in_flight = 0usize;
            let mut buf = [0u8; 1500];
            let mut n = 0u32;
            while Instant::now() < deadline {
                while in_flight < window {
                    n = n.wrapping_add(1);
                    sock.send(&stun_request(micros(clock.elapsed()), n)).await?;
                    sent += 1;
                    in_flight += 1;
                }
                match timeout(loss, sock.recv(&mut buf)).await {
                    Err(_) => in_flight = 0, // the outstanding ones are lost
                    Ok(r) => {
                        let len = r?;
                        match stun_response_ts(&buf[..len]) {
                            Some(ts) => {
                                recv += 1;
                                hist.saturating_record(
                                    micros(clock.elapsed()).saturating_sub(ts).max(1),
                                );
                            }
                            None => bad += 1,
                        }
                        in_flight = in_flight.saturating_sub(1);
                    }
                }
            }
            // Drain the last answers (also late ones of a window given up on).
            while recv < sent {
                match timeout(loss, sock.recv(&mut buf)).await {
                    Ok(Ok(len)) => {
                        if stun_response_ts(&buf[..len]).is_some() {
                            recv += 1;
                        } else {
                            bad += 1;
                        }
                    }
                    _ => break,
                }
            }
            Ok::<_, std::io::Error>((sent, recv, bad, hist))
        });
    }
    let (mut sent, mut recv, mut bad) = (0u64, 0u64, 0u64);
    let mut hist = new_hist();
    let mut errors = Vec::new();
    while let Some(j) = tasks.join_next().await {
        match j {
            Ok(Ok((s, r, b, h))) => {
                sent += s;
                recv += r;
                bad += b;
                hist.add(&h).expect("histograms share bounds");
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let cpu = cpu.finish(&a.server_pid);
    let lost = sent.saturating_sub(recv);
    let ok = errors.is_empty() && bad == 0 && recv > 0;
    Ok((
        json!({
            "scenario": "stun",
            "ok": ok,
            "target": target.to_string(),
            "sockets": a.sockets,
            "window": window,
            "secs": a.secs,
            "sent": sent,
            "responses": recv,
            "lost": lost,
            "loss_pct": round2(lost as f64 * 100.0 / sent.max(1) as f64),
            "bad_responses": bad,
            "responses_per_sec": round2(recv as f64 / a.secs.max(1) as f64),
            "rtt": hist_json(&hist),
            "errors": errors,
            "cpu": cpu,
            "server_rss_kib": servers_rss(&a.server_pid),
        }),
        ok,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_response_gives_back_the_send_time() {
        let mut b = stun_request(123_456, 7);
        assert_eq!(stun_response_ts(&b), None, "a request is not a response");
        b[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert_eq!(stun_response_ts(&b), Some(123_456));
        assert_eq!(stun_response_ts(&b[..19]), None, "too short");
        b[4] ^= 1;
        assert_eq!(stun_response_ts(&b), None, "no magic cookie");
    }
}
