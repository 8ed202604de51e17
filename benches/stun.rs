//! In-process throughput of the STUN responder's pure path: parse a Binding
//! request and encode its success response (`switchboard::stun::answer`), no
//! sockets involved.
//!
//! Run: `cargo bench --bench stun` (prints requests per second per case).
//! Under `cargo test --benches` it runs a few iterations only, as a smoke test.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard::stun::{answer, append_fingerprint, HEADER_LEN, MAGIC_COOKIE};

/// A Binding request with an optional USERNAME and FINGERPRINT.
fn request(username: Option<&str>, fingerprint: bool) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x00, 0x00];
    p.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    p.extend_from_slice(&[7; 12]);
    if let Some(name) = username {
        p.extend_from_slice(&0x0006u16.to_be_bytes());
        p.extend_from_slice(&(name.len() as u16).to_be_bytes());
        p.extend_from_slice(name.as_bytes());
        p.resize(p.len().next_multiple_of(4), 0);
    }
    let body = (p.len() - HEADER_LEN) as u16;
    p[2..4].copy_from_slice(&body.to_be_bytes());
    if fingerprint {
        append_fingerprint(&mut p);
    }
    p
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let v4: SocketAddr = "203.0.113.9:54321".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::42]:54321".parse().unwrap();
    let token = "0123456789abcdef0123456789abcdef"; // a 32-char stun_username
    let cases = [
        ("bare request, IPv4", request(None, false), v4),
        ("USERNAME, IPv4", request(Some(token), false), v4),
        ("USERNAME, IPv6", request(Some(token), false), v6),
        (
            "USERNAME + FINGERPRINT, IPv4",
            request(Some(token), true),
            v4,
        ),
    ];
    let mut out = Vec::with_capacity(64);
    for (name, packet, from) in &cases {
        // Warm up, and make sure the case is valid.
        answer(packet, *from, &mut out).expect("valid request");
        let batch = 10_000u64;
        let mut done = 0u64;
        let start = Instant::now();
        loop {
            for _ in 0..batch {
                let r = answer(black_box(packet), black_box(*from), &mut out);
                black_box((&r, &out));
            }
            done += batch;
            if start.elapsed() >= budget {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "stun {name:<30} {:>7.1} ns/op {:>8.2} M req/s ({} B -> {} B)",
            secs * 1e9 / done as f64,
            done as f64 / secs / 1e6,
            packet.len(),
            out.len()
        );
    }
}
