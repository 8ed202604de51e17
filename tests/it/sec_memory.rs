//! Memory, silent loss and takeover through bad input (issue 13): each test
//! makes the attack against the real binary and shows the bound, from the
//! node's RSS (`/proc/<pid>/status`) and its metrics.
//!
//! - a ping flood (before and after `hello`) costs one pending pong;
//! - a client that does not read is paused by TCP, and its deadlines still
//!   close it;
//! - the outbound queue is bounded in bytes: a receiver that does not read
//!   large MessagePack signals (or a legacy worker its large echoes) is
//!   closed with 1013 near the byte bound;
//! - nesting deeper than `limits.max_nesting_depth` is refused with
//!   `nesting-too-deep`, and the connection stays usable;
//! - protocol violations close with 1002, invalid UTF-8 with 1007.

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    client_frame, metric, rss_kib, wait_metric, Client, Ending, RawWs, RssSampler, TestNode,
    MSGPACK,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const OP_TEXT: u8 = 1;
const OP_PING: u8 = 9;

/// Writes `frames` (whole frames, back to back) over and over for `dur` or
/// until `max` bytes, as fast as the node takes them, never reading. Returns
/// the bytes written and whether a write blocked for the socket's whole
/// write timeout (the node stopped reading).
fn flood(ws: &mut RawWs, frames: &[u8], dur: Duration, max: u64) -> (u64, bool) {
    let batch: Vec<u8> = frames
        .iter()
        .copied()
        .cycle()
        .take(frames.len() * (64 * 1024 / frames.len()).max(1))
        .collect();
    let end = Instant::now() + dur;
    let (mut written, mut pos) = (0u64, 0usize);
    while Instant::now() < end && written < max {
        // Partial writes continue where they stopped, so frames stay whole.
        match ws.stream.write(&batch[pos..]) {
            Ok(n) => {
                written += n as u64;
                pos = (pos + n) % batch.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (written, true)
            }
            Err(_) => break,
        }
    }
    (written, false)
}

/// The ping flood of the probe: 125-byte pings as fast as the node reads
/// them, never reading, 64 MiB of them (a size, not a duration: a loaded
/// machine takes longer, and still shows the same thing). Meanwhile two other peers of the node
/// keep exchanging pings and signals. The node's RSS must not grow by
/// 16 MiB (before the fix: ~500 MB/s, one pong buffered per ping).
async fn ping_flood(after_hello: bool) {
    let node = TestNode::spawn(&[]);
    let mut a = node.peer("a").await;
    let mut b = node.peer("b").await;
    a.ping().await;
    b.ping().await;
    let base = rss_kib(node.pid());
    let sampler = RssSampler::start(node.pid());
    let mut raw = RawWs::connect(node.addr(), "/ws");
    if after_hello {
        // The welcome is never read either.
        raw.send(&client_frame(
            true,
            OP_TEXT,
            br#"{"type":"hello","peer_id":"flooder"}"#,
            true,
        ));
    }
    let ping = client_frame(true, OP_PING, &[0x42; 125], true);
    let flooder = std::thread::spawn(move || {
        let r = flood(&mut raw, &ping, Duration::from_secs(60), 64 * MIB);
        (r, raw)
    });
    let mut rounds = 0u64;
    while !flooder.is_finished() {
        a.ping().await;
        a.send_json(json!({"type": "signal", "to": "b", "kind": "k", "data": {"n": rounds}}))
            .await;
        let got = b.recv_type("signal").await;
        assert_eq!(got["data"], json!({"n": rounds}));
        rounds += 1;
        // Pacing only: each round above waits for its own answers.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ((written, blocked), _raw) = flooder.join().expect("flooder");
    let peak = sampler.stop();
    eprintln!(
        "ping flood (after hello: {after_hello}): {} MiB of pings, node RSS {} -> peak {} KiB, {rounds} rounds by others",
        written / MIB,
        base,
        peak
    );
    assert!(
        !blocked,
        "the node stopped reading pings (nothing to write back)"
    );
    assert!(
        written >= 32 * MIB,
        "the flood was too small to show anything ({written} bytes)"
    );
    assert!(
        peak.saturating_sub(base) < 16 * KIB,
        "node RSS grew from {base} KiB to {peak} KiB under a ping flood"
    );
    assert!(rounds >= 3, "other peers were starved: {rounds} rounds");
    // Still serving.
    a.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_before_hello_costs_one_pong() {
    ping_flood(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_after_hello_costs_one_pong() {
    ping_flood(true).await;
}

/// A client sends requests as fast as it can and never reads the answers
/// (before `hello`: messages of an unknown type, each answered with an
/// `error` of ~300 bytes; after: `join`s of a room it is in, each answered
/// with the room's member list). With a small
/// `max_write_buffer_bytes`, the node stops reading it once the answers back
/// up (counted in `switchboard_read_pauses_total`): they cannot pile up, TCP
/// pushes back on the client instead. The paused connection is still closed
/// by its deadline: 4003 before `hello`, 4004 after; and the node's memory
/// does not move meanwhile.
async fn paused_and_still_closed(after_hello: bool) {
    let node = TestNode::spawn(&[
        ("SWITCHBOARD_LIMITS__MAX_WRITE_BUFFER_BYTES", "1024"),
        ("SWITCHBOARD_LIMITS__HELLO_TIMEOUT_MS", "10000"),
        ("SWITCHBOARD_LIMITS__HEARTBEAT_INTERVAL_MS", "1000"),
        ("SWITCHBOARD_LIMITS__HEARTBEAT_TIMEOUT_MS", "3000"),
    ]);
    let reason = if after_hello {
        "heartbeat-timeout"
    } else {
        "hello-timeout"
    };
    let closed_q = format!(r#"switchboard_disconnects_total{{reason="{reason}"}}"#);
    let pauses_q = "switchboard_read_pauses_total";
    // After hello: a room of 20 members with 3 KB of `meta` each, so every
    // `join` is answered with ~60 KB.
    let mut members = Vec::new();
    if after_hello {
        for i in 0..20 {
            let mut c = node.peer(&format!("m{i}")).await;
            c.join_with(json!({"type": "join", "room": "big", "meta": "m".repeat(3000)}))
                .await;
            members.push(c);
        }
    }
    // Members keep reading (and so answer the node's heartbeat pings) until
    // they see the paused peer leave on its timeout; then the room still works.
    let members: Vec<_> = members
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                loop {
                    let m = c.recv().await;
                    if m["type"] == "peer-joined" {
                        continue;
                    }
                    assert_eq!(
                        m,
                        json!({"type": "peer-left", "room": "big", "peer_id": "reads-nothing", "reason": "timeout"})
                    );
                    break;
                }
                c.ping().await;
                // Kept open until every member is done: a member leaving
                // would be news to the others.
                c
            })
        })
        .collect();
    let base = rss_kib(node.pid());
    let sampler = RssSampler::start(node.pid());
    let started = Instant::now();
    // A small receive window, so the node's answers back up sooner.
    let mut raw = RawWs::connect_with_rcvbuf(node.addr(), "/ws", 4096);
    let request = if after_hello {
        raw.send(&client_frame(
            true,
            OP_TEXT,
            br#"{"type":"hello","peer_id":"reads-nothing"}"#,
            true,
        ));
        r#"{"type":"join","room":"big"}"#.to_string()
    } else {
        format!(
            r#"{{"type":"{}","id":"{}"}}"#,
            "t".repeat(80),
            "i".repeat(128)
        )
    };
    let ping = client_frame(true, OP_TEXT, request.as_bytes(), true);
    // The socket is kept open until the end (returned by the thread): a
    // closed socket would end the connection differently.
    let flooder = std::thread::spawn(move || {
        // Until the node closes it (bounded: the write timeout, or 60 s).
        let r = flood(&mut raw, &ping, Duration::from_secs(60), u64::MAX);
        (r, raw)
    });
    wait_metric(&node, pauses_q, 1.0, Duration::from_secs(30)).await;
    let paused_at = started.elapsed();
    assert_eq!(
        metric(&node, &closed_q).await,
        0.0,
        "closed before it was paused: the test shows nothing"
    );
    // Paused, and closed anyway by its deadline.
    wait_metric(&node, &closed_q, 1.0, Duration::from_secs(30)).await;
    let closed_at = started.elapsed();
    let peak = sampler.stop();
    let ((written, blocked), _raw) = tokio::task::spawn_blocking(move || flooder.join())
        .await
        .unwrap()
        .expect("flooder");
    eprintln!(
        "{reason}: paused after {paused_at:?}, closed after {closed_at:?}; the client wrote {} KiB (blocked: {blocked}); node RSS {base} -> peak {peak} KiB",
        written / KIB
    );
    assert!(
        peak.saturating_sub(base) < 16 * KIB,
        "node RSS grew from {base} KiB to {peak} KiB"
    );
    assert_eq!(
        metric(&node, pauses_q).await,
        1.0,
        "one pause, never resumed"
    );
    let mut done = Vec::new();
    for m in members {
        done.push(m.await.expect("a member of the room"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_paused_and_still_meets_its_hello_deadline() {
    paused_and_still_closed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_paused_and_still_meets_its_heartbeat_deadline() {
    paused_and_still_closed(true).await;
}

/// `data` as in the probe: an array of 65,000 one-byte integers (a 65 KB
/// frame, which a value tree turns into ~2 MB).
fn big_msgpack_data() -> Vec<u8> {
    let mut d = vec![0xdc];
    d.extend_from_slice(&65_000u16.to_be_bytes());
    d.extend(std::iter::repeat_n(0x01, 65_000));
    d
}

/// A MessagePack `signal` to `to` with `data` as encoded bytes.
fn msgpack_signal(to: &str, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x84];
    for s in ["type", "signal", "to", to, "kind", "k", "data"] {
        f.push(0xa0 | s.len() as u8);
        f.extend_from_slice(s.as_bytes());
    }
    f.extend_from_slice(data);
    f
}

/// The probe's queue flood: a sender of 65 KB MessagePack signals to a
/// receiver that never reads. The receiver is closed as a slow consumer near
/// the byte bound (1 MiB by default), the node's RSS stays under 3× the bound
/// + 16 MiB (before the fix: 1,024 queued messages of ~1.9 MB each), and
/// falls back once everyone is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_read_is_closed_near_the_byte_bound() {
    const SIGNALS: usize = 200;
    // The receiver reads only after the flood: the node keeps trying to
    // deliver its close frame until then.
    let node = TestNode::spawn(&[("SWITCHBOARD_LIMITS__CLOSE_TIMEOUT_MS", "60000")]);
    let slow_q = r#"switchboard_disconnects_total{reason="slow-consumer"}"#;
    let mut rx = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    rx.send_msgpack(json!({"type": "hello", "peer_id": "rx"}))
        .await;
    assert_eq!(rx.recv().await["type"], "welcome");
    let mut tx = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    tx.send_msgpack(json!({"type": "hello", "peer_id": "tx"}))
        .await;
    assert_eq!(tx.recv().await["type"], "welcome");
    tx.ping_msgpack().await;
    let base = rss_kib(node.pid());
    let sampler = RssSampler::start(node.pid());
    let frame = msgpack_signal("rx", &big_msgpack_data());
    assert!(frame.len() <= 65_536, "{}", frame.len());
    let mut sent = 0;
    for _ in 0..SIGNALS {
        tx.send(Message::binary(frame.clone())).await;
        sent += 1;
        if sent % 20 == 0 && metric(&node, slow_q).await >= 1.0 {
            break;
        }
    }
    wait_metric(&node, slow_q, 1.0, Duration::from_secs(10)).await;
    assert!(metric(&node, "switchboard_queue_overflows_total").await >= 1.0);
    // The sender is fine: it reads its own answers (an error for each signal
    // sent after the receiver was gone, if any), then the pong to its ping.
    tx.send_msgpack(json!({"type": "ping", "id": "after"}))
        .await;
    for _ in 0..=SIGNALS {
        let m = tx.recv().await;
        if m["type"] == "pong" {
            assert_eq!(m["id"], "after");
            break;
        }
        assert_eq!(
            (&m["type"], &m["code"]),
            (&json!("error"), &json!("peer-not-found")),
            "{m}"
        );
    }
    let peak = sampler.stop();
    // The receiver reads at last: what was in the socket buffers, then the
    // close (1013).
    let (ending, skipped) = rx.expect_end(Duration::from_secs(30)).await;
    assert_eq!(ending, Ending::Close(1013, "slow-consumer".into()));
    drop(rx);
    tx.close().await;
    wait_metric(
        &node,
        "switchboard_disconnects_total",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    let after = rss_kib(node.pid());
    eprintln!(
        "queue flood: {sent} signals of {} bytes; receiver got {skipped} before {ending:?}; node RSS {base} -> peak {peak} -> after close {after} KiB",
        frame.len()
    );
    let bound = 3 * 1024 + 16 * 1024;
    assert!(
        peak.saturating_sub(base) < bound,
        "node RSS grew from {base} KiB to {peak} KiB (bound {bound} KiB over the start)"
    );
    assert!(
        after.saturating_sub(base) < 16 * 1024,
        "node RSS stayed at {after} KiB after everyone left (start {base} KiB)"
    );
}

/// The same through the legacy worker door: `echo_request`s with a 64 KB
/// payload, never reading the answers (before the fix each queued answer
/// held the payload as a value tree, ~1 MB, up to 1,024 of them). Now an
/// answer holds the payload's text, and the node stops reading the worker
/// once `max_write_buffer_bytes` (256 KiB) of answers wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_worker_that_does_not_read_its_echoes_is_paused_near_the_bound() {
    let node = TestNode::spawn(&[]);
    let pauses_q = "switchboard_read_pauses_total";
    let url = format!("ws://{}/ws/register/w0", node.addr());
    let mut w = Client::connect(&url).await;
    // The answer carries the payload as sent, byte for byte.
    w.send_raw_text(r#"{"type":"echo_request","payload":{"b": [1, 2] ,"a":"x"}}"#)
        .await;
    assert_eq!(
        w.recv_text().await,
        r#"{"original_payload":{"b": [1, 2] ,"a":"x"},"processed_by_rendezvous":"Echo processed by Switchboard rendezvous for worker w0","type":"echo_response"}"#
    );
    let base = rss_kib(node.pid());
    let sampler = RssSampler::start(node.pid());
    let mut raw = RawWs::connect_with_rcvbuf(node.addr(), "/ws/register/w1", 4096);
    let zeros = vec!["0"; 32_000].join(",");
    let echo = format!(r#"{{"type":"echo_request","payload":[{zeros}]}}"#);
    assert!(echo.len() <= 65_536);
    let echo = client_frame(true, OP_TEXT, echo.as_bytes(), true);
    let flooder = std::thread::spawn(move || {
        // Until the node stops reading (the write blocks for its timeout).
        let r = flood(&mut raw, &echo, Duration::from_secs(60), 1 << 30);
        (r, raw)
    });
    wait_metric(&node, pauses_q, 1.0, Duration::from_secs(30)).await;
    let ((written, blocked), _raw) = tokio::task::spawn_blocking(move || flooder.join())
        .await
        .unwrap()
        .expect("flooder");
    let peak = sampler.stop();
    eprintln!(
        "legacy echo flood: {} KiB of echo requests (blocked: {blocked}); node RSS {base} -> peak {peak} KiB",
        written / KIB
    );
    let bound = 3 * 1024 + 16 * 1024;
    assert!(
        peak.saturating_sub(base) < bound,
        "node RSS grew from {base} KiB to {peak} KiB (bound {bound} KiB over the start)"
    );
    // Other workers are served meanwhile.
    w.send_raw_text(r#"{"type":"echo_request","payload":1}"#)
        .await;
    assert!(w.recv_text().await.starts_with(r#"{"original_payload":1,"#));
}

/// `[[...[1]...]]`, `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// Deep `meta` (hello, join) and `data` (signal), in JSON and MessagePack:
/// 64 levels pass, 65 are refused with `nesting-too-deep` (the `id` echoed),
/// and the connection stays usable.
#[tokio::test]
async fn nesting_deeper_than_the_limit_is_refused_and_the_connection_stays_usable() {
    let node = TestNode::spawn(&[]);
    let mut c = node.client().await;
    c.send_json(json!({"type": "hello", "id": 1, "peer_id": "deep", "meta": nested(65)}))
        .await;
    let e = c.recv_error("nesting-too-deep").await;
    assert_eq!(e["id"], 1);
    c.ping().await;
    let w = c
        .hello_with(json!({"type": "hello", "peer_id": "deep", "meta": nested(64)}))
        .await;
    assert_eq!(w["peer_id"], "deep");
    c.send_json(json!({"type": "join", "id": 2, "room": "r", "meta": {"k": nested(64)}}))
        .await;
    let e = c.recv_error("nesting-too-deep").await;
    assert_eq!(e["id"], 2);
    c.ping().await;
    let j = c
        .join_with(json!({"type": "join", "room": "r", "meta": nested(64)}))
        .await;
    assert_eq!(j["peers"], json!([]));
    // The meta a member sees is the one given, all 64 levels of it.
    let mut other = node.peer("other").await;
    let j = other.join("r").await;
    assert_eq!(j["peers"][0]["meta"], nested(64));
    c.recv_type("peer-joined").await;
    // data, far deeper than any parser's own limit.
    let deep_text = format!(
        r#"{{"type":"signal","id":3,"to":"other","kind":"k","data":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    c.send_raw_text(&deep_text).await;
    let e = c.recv_error("nesting-too-deep").await;
    assert_eq!(e["id"], 3);
    c.ping().await;

    // MessagePack: a deep `data` (the probe's 1,020 levels) and a deep `meta`.
    let mut m = Client::connect_with_protocol(&node.ws_url(), MSGPACK).await;
    let mut meta = vec![0x91; 1000];
    meta.push(0x01);
    let mut hello = vec![0x84];
    for s in ["type", "hello", "peer_id", "mp", "id"] {
        hello.push(0xa0 | s.len() as u8);
        hello.extend_from_slice(s.as_bytes());
    }
    hello.push(0x04);
    hello.extend_from_slice(&[0xa4, b'm', b'e', b't', b'a']);
    hello.extend_from_slice(&meta);
    m.send_raw_binary(&hello).await;
    let e = m.recv().await;
    assert_eq!(
        (e["code"].clone(), e["id"].clone()),
        (json!("nesting-too-deep"), json!(4))
    );
    m.ping_msgpack().await;
    m.send_msgpack(json!({"type": "hello", "peer_id": "mp"}))
        .await;
    assert_eq!(m.recv().await["type"], "welcome");
    let mut data = vec![0x91; 1020];
    data.push(0x01);
    m.send_raw_binary(&msgpack_signal("other", &data)).await;
    assert_eq!(m.recv().await["code"], "nesting-too-deep");
    m.ping_msgpack().await;
    // 64 levels reach a JSON peer.
    let mut data = vec![0x91; 64];
    data.push(0x01);
    m.send_raw_binary(&msgpack_signal("other", &data)).await;
    let s = other.recv_type("signal").await;
    assert_eq!(s["data"], nested(64));
    assert_eq!(s["from"], "mp");
}

/// RFC 6455 close codes through the real binary: a protocol violation is
/// 1002 "protocol-error", invalid UTF-8 1007 "invalid-utf8"; each counted
/// under its own disconnect reason.
#[tokio::test]
async fn protocol_violations_close_with_1002_and_invalid_utf8_with_1007() {
    let node = TestNode::spawn(&[]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "unmasked frame",
            client_frame(true, OP_TEXT, br#"{"type":"ping"}"#, false),
            1002,
            "protocol-error",
        ),
        (
            "reserved opcode",
            client_frame(true, 3, b"", true),
            1002,
            "protocol-error",
        ),
        (
            "continuation without a start",
            client_frame(true, 0, b"x", true),
            1002,
            "protocol-error",
        ),
        (
            "invalid UTF-8 text",
            client_frame(true, OP_TEXT, &[b'{', 0xff, b'}'], true),
            1007,
            "invalid-utf8",
        ),
        (
            "invalid UTF-8 in a fragment",
            client_frame(false, OP_TEXT, &[b'"', 0xc3, 0x28], true),
            1007,
            "invalid-utf8",
        ),
    ];
    for (what, frame, code, reason) in &cases {
        let mut raw = RawWs::connect(node.addr(), "/ws");
        raw.send(&client_frame(true, OP_TEXT, br#"{"type":"hello"}"#, true));
        let (op, welcome) = raw.read_frame().expect("welcome");
        assert_eq!(op, OP_TEXT);
        assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
        raw.send(frame);
        assert_eq!(
            raw.read_close(),
            Some((*code, reason.to_string())),
            "{what}"
        );
    }
    assert_eq!(
        metric(
            &node,
            r#"switchboard_disconnects_total{reason="protocol-error"}"#
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &node,
            r#"switchboard_disconnects_total{reason="invalid-utf8"}"#
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &node,
            r#"switchboard_disconnects_total{reason="connection-lost"}"#
        )
        .await,
        0.0
    );
}
