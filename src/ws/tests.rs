//! Framing tests: frames are fed to the parser byte by byte and at every
//! split point, so no test depends on how the kernel cuts a stream.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The same frame without the mask bit and key (what a server sends, and
/// what a client must not).
fn unmasked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(n as u8);
    } else if n <= 0xffff {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

/// A connected pair: the server socket and the client's end.
async fn pair() -> (WebSocket, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    (WebSocket::new(Io::Tcp(server), &[]), client)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    BadText,
    Control,
    End(ReadEnd),
}

/// Parses what is buffered; the events, ending at the first `End`.
fn drain(ws: &mut WebSocket, out: &mut Vec<Got>) -> bool {
    loop {
        ws.release();
        match ws.parse() {
            Ok(None) => return false,
            Ok(Some(Event::Message)) => out.push(match ws.data() {
                Some(Data::Text(t)) => Got::Text(t.to_string()),
                Some(Data::Binary(b)) => Got::Binary(b.to_vec()),
                None => Got::BadText,
            }),
            Ok(Some(Event::Control | Event::Pong(_))) => out.push(Got::Control),
            Ok(Some(Event::End(e))) | Err(e) => {
                out.push(Got::End(e));
                return true;
            }
        }
    }
}

/// Feeds `bytes` in pieces cut at `cuts`, parsing after each piece.
fn feed(ws: &mut WebSocket, bytes: &[u8], cuts: &[usize]) -> Vec<Got> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        ws.rbuf.extend_from_slice(&bytes[at..c]);
        at = c;
        if drain(ws, &mut out) {
            break;
        }
    }
    out
}

fn stream_of_everything() -> (Vec<u8>, Vec<Got>) {
    let mut s = Vec::new();
    s.extend(frame(true, OP_TEXT, b"hello"));
    s.extend(frame(true, OP_BINARY, &[7u8; 300])); // 16-bit length
                                                   // A fragmented text message with a ping and a pong between fragments,
                                                   // and a two-byte character split across fragments.
    s.extend(frame(false, OP_TEXT, "ab\u{e9}".as_bytes().split_at(3).0));
    s.extend(frame(true, OP_PING, b"p"));
    s.extend(frame(false, OP_CONT, &"ab\u{e9}".as_bytes()[3..]));
    s.extend(frame(true, OP_PONG, b""));
    s.extend(frame(true, OP_CONT, b"cd"));
    s.extend(frame(true, OP_TEXT, b"")); // empty message
    s.extend(frame(false, OP_BINARY, &[1, 2]));
    s.extend(frame(true, OP_CONT, &[3]));
    let want = vec![
        Got::Text("hello".into()),
        Got::Binary(vec![7; 300]),
        Got::Control,
        Got::Control,
        Got::Text("ab\u{e9}cd".into()),
        Got::Text(String::new()),
        Got::Binary(vec![1, 2, 3]),
    ];
    (s, want)
}

#[tokio::test]
async fn every_split_point_gives_the_same_messages() {
    let (bytes, want) = stream_of_everything();
    for cut in 0..=bytes.len() {
        let (mut ws, _c) = pair().await;
        assert_eq!(feed(&mut ws, &bytes, &[cut]), want, "cut at {cut}");
        // One pong pending, for the one ping (written with the next write).
        assert_eq!(ws.pong.as_deref(), Some(&b"p"[..]), "cut at {cut}");
        assert!(ws.wbuf.is_empty(), "cut at {cut}");
    }
    // And byte by byte.
    let (mut ws, _c) = pair().await;
    let cuts: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(feed(&mut ws, &bytes, &cuts), want);
}

#[tokio::test]
async fn a_64_bit_length_and_the_size_limit() {
    let (mut ws, _c) = pair().await;
    let big = vec![b'x'; 70_000];
    let f = frame(true, OP_TEXT, &big);
    assert_eq!(&f[1..2], &[0x80 | 127]);
    let got = feed(&mut ws, &f, &[5, 11, 14, 40_000]);
    assert_eq!(got, vec![Got::Text(String::from_utf8(big).unwrap())]);

    // Over the limit: refused from the header alone, before the payload.
    let (mut ws, _c) = pair().await;
    ws.set_max_size(100);
    let f = frame(true, OP_BINARY, &[0; 101]);
    assert_eq!(feed(&mut ws, &f[..8], &[]), vec![Got::End(ReadEnd::TooBig)]);
    // Exactly at the limit is fine.
    let (mut ws, _c) = pair().await;
    ws.set_max_size(100);
    assert_eq!(
        feed(&mut ws, &frame(true, OP_BINARY, &[0; 100]), &[]),
        vec![Got::Binary(vec![0; 100])]
    );
    // A fragmented message over the limit, though each fragment is under it.
    let (mut ws, _c) = pair().await;
    ws.set_max_size(100);
    let mut s = frame(false, OP_TEXT, &[b'a'; 60]);
    s.extend(frame(true, OP_PING, b""));
    s.extend(frame(true, OP_CONT, &[b'a'; 60]));
    assert_eq!(
        feed(&mut ws, &s, &[]),
        vec![Got::Control, Got::End(ReadEnd::TooBig)]
    );
    // A length with the top bit set.
    let (mut ws, _c) = pair().await;
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63).to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    assert_eq!(feed(&mut ws, &f, &[]), vec![Got::End(ReadEnd::Protocol)]);
}

/// Each violation ends reading with its own reason: 1002 for the framing
/// rules, 1007 for bad UTF-8 (the session turns them into close codes).
#[tokio::test]
async fn protocol_violations_end_the_connection() {
    use ReadEnd::{InvalidUtf8, Protocol};
    let close = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        frame(true, OP_CLOSE, &p)
    };
    let cases: Vec<(&str, Vec<u8>, ReadEnd)> = vec![
        ("unmasked", unmasked(true, OP_TEXT, b"hi"), Protocol),
        ("unmasked ping", unmasked(true, OP_PING, b""), Protocol),
        (
            "rsv1",
            {
                let mut f = frame(true, OP_TEXT, b"hi");
                f[0] |= 0x40;
                f
            },
            Protocol,
        ),
        (
            "rsv3",
            {
                let mut f = frame(true, OP_BINARY, b"hi");
                f[0] |= 0x10;
                f
            },
            Protocol,
        ),
        ("reserved opcode", frame(true, 3, b""), Protocol),
        ("reserved control opcode", frame(true, 0xb, b""), Protocol),
        ("fragmented ping", frame(false, OP_PING, b""), Protocol),
        ("fragmented close", frame(false, OP_CLOSE, b""), Protocol),
        ("long ping", frame(true, OP_PING, &[0; 126]), Protocol),
        ("continuation first", frame(true, OP_CONT, b"x"), Protocol),
        (
            "new message inside a fragmented one",
            {
                let mut s = frame(false, OP_TEXT, b"a");
                s.extend(frame(true, OP_BINARY, b"b"));
                s
            },
            Protocol,
        ),
        ("one-byte close", frame(true, OP_CLOSE, &[3]), Protocol),
        ("close code 1005", close(1005, b""), Protocol),
        ("close code 999", close(999, b""), Protocol),
        ("close code 2999", close(2999, b"x"), Protocol),
        (
            "close reason not UTF-8",
            close(1000, &[0xe8, 0xff]),
            InvalidUtf8,
        ),
    ];
    for (name, bytes, end) in cases {
        let (mut ws, _c) = pair().await;
        assert_eq!(feed(&mut ws, &bytes, &[]), vec![Got::End(end)], "{name}");
        // The session sends the close frame (1002 or 1007); nothing is
        // queued here, not even an echo of a refused close.
        assert!(ws.wbuf.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn text_must_be_utf8() {
    // A single frame is checked when handed out; binary is not checked.
    let (mut ws, _c) = pair().await;
    let mut s = frame(true, OP_TEXT, &[0xff, b'a']);
    s.extend(frame(true, OP_BINARY, &[0xff]));
    assert_eq!(
        feed(&mut ws, &s, &[]),
        vec![Got::BadText, Got::Binary(vec![0xff])]
    );
    // Fragments: a character split across them is fine (see
    // `stream_of_everything`); one never completed fails at the last one.
    let (mut ws, _c) = pair().await;
    let mut s = frame(false, OP_TEXT, &[b'a', 0xc3]);
    s.extend(frame(false, OP_CONT, &[0xa9, 0xe2, 0x82]));
    s.extend(frame(true, OP_CONT, b""));
    assert_eq!(feed(&mut ws, &s, &[]), vec![Got::End(ReadEnd::InvalidUtf8)]);
    // Fail fast: the first fragment that makes the text invalid ends
    // reading, before the message is complete (nothing more is buffered).
    for bad in [&[0xff][..], &[b'o', b'k', 0xc3, b'x'], &[0xed, 0xa0, 0x80]] {
        let (mut ws, _c) = pair().await;
        let s = frame(false, OP_TEXT, bad);
        assert_eq!(
            feed(&mut ws, &s, &[]),
            vec![Got::End(ReadEnd::InvalidUtf8)],
            "{bad:x?}"
        );
        let (mut ws, _c) = pair().await;
        let mut s = frame(false, OP_TEXT, "\u{e9}t\u{e9}".as_bytes());
        s.extend(frame(false, OP_CONT, bad));
        assert_eq!(
            feed(&mut ws, &s, &[]),
            vec![Got::End(ReadEnd::InvalidUtf8)],
            "{bad:x?} after valid text"
        );
    }
    // Binary fragments are not checked.
    let (mut ws, _c) = pair().await;
    let mut s = frame(false, OP_BINARY, &[0xff]);
    s.extend(frame(true, OP_CONT, &[0xc3]));
    assert_eq!(feed(&mut ws, &s, &[]), vec![Got::Binary(vec![0xff, 0xc3])]);
}

#[tokio::test]
async fn pings_are_answered_by_one_pong_for_the_latest() {
    let (mut ws, mut client) = pair().await;
    // A thousand pings in one read: one pong waits, with the last payload.
    let mut s = Vec::new();
    for i in 0..1000u32 {
        s.extend(frame(true, OP_PING, &i.to_be_bytes()));
    }
    let got = feed(&mut ws, &s, &[]);
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|g| *g == Got::Control));
    assert!(ws.wbuf.is_empty());
    assert_eq!(ws.pong.as_deref(), Some(&999u32.to_be_bytes()[..]));
    assert!(!ws.write_idle());
    // Written after what was queued before it.
    ws.queue_text("first");
    ws.flush().await.unwrap();
    assert!(ws.write_idle());
    let mut want = unmasked(true, OP_TEXT, b"first");
    want.extend(unmasked(true, OP_PONG, &999u32.to_be_bytes()));
    let mut got = vec![0; want.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);
}

#[tokio::test]
async fn no_pong_after_a_close_frame() {
    let (mut ws, _c) = pair().await;
    let mut s = frame(true, OP_PING, b"a");
    s.extend(frame(true, OP_CLOSE, &[]));
    assert_eq!(
        feed(&mut ws, &s, &[]),
        vec![Got::Control, Got::End(ReadEnd::Closed)]
    );
    assert_eq!(ws.pong, None, "the pending pong is dropped");
    assert_eq!(ws.wbuf, unmasked(true, OP_CLOSE, &[]));
    // A ping after the close (read by mistake) is not answered either.
    ws.rbuf.extend(frame(true, OP_PING, b"b"));
    let mut out = Vec::new();
    drain(&mut ws, &mut out);
    assert_eq!(out, vec![Got::Control]);
    assert_eq!(ws.pong, None);
}

#[tokio::test]
async fn close_frames_are_answered() {
    let mut bye = 1000u16.to_be_bytes().to_vec();
    bye.extend_from_slice(b"bye");
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        // The same code and reason back.
        (bye.clone(), unmasked(true, OP_CLOSE, &bye)),
        (
            4321u16.to_be_bytes().to_vec(),
            unmasked(true, OP_CLOSE, &[0x10, 0xe1]),
        ),
        // No code: an empty close back.
        (vec![], unmasked(true, OP_CLOSE, &[])),
        // A code that may not be sent (1005, 1006, 1015, < 1000, 1004,
        // 1016..2999) is a protocol error: see `protocol_violations_end_the_connection`.
    ];
    for (payload, answer) in cases {
        let (mut ws, _c) = pair().await;
        assert_eq!(
            feed(&mut ws, &frame(true, OP_CLOSE, &payload), &[]),
            vec![Got::End(ReadEnd::Closed)],
            "{payload:?}"
        );
        assert_eq!(ws.wbuf, answer, "{payload:?}");
    }
    for code in [1000, 1003, 1007, 1013, 3000, 4999] {
        assert!(close_code_allowed(code), "{code}");
    }
    for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
        assert!(!close_code_allowed(code), "{code}");
    }
}

#[tokio::test]
async fn frames_written_by_the_server() {
    let (mut ws, _c) = pair().await;
    for n in [0usize, 125, 126, 65_535, 65_536] {
        ws.wbuf.clear();
        ws.queue_binary(&vec![9; n]);
        assert_eq!(ws.wbuf, unmasked(true, OP_BINARY, &vec![9; n]), "{n}");
    }
    ws.wbuf.clear();
    ws.queue_ping();
    assert_eq!(ws.wbuf, [0x89, 0]);
    // A close reason is cut at 123 bytes, on a character boundary.
    ws.wbuf.clear();
    let long: &'static str = Box::leak("\u{e9}".repeat(70).into_boxed_str());
    ws.queue_close(CloseFrame {
        code: 4002,
        reason: long,
    });
    assert_eq!(ws.wbuf[1] as usize, 2 + 122);
    assert!(std::str::from_utf8(&ws.wbuf[4..]).is_ok());
}

#[tokio::test]
async fn over_tcp_buffers_are_freed_when_consumed_and_written() {
    let (mut ws, mut client) = pair().await;
    // A frame in two writes, then one more frame in the same write as the tail.
    let f1 = frame(true, OP_TEXT, b"first");
    let f2 = frame(true, OP_BINARY, b"second");
    client.write_all(&f1[..3]).await.unwrap();
    let mut tail = f1[3..].to_vec();
    tail.extend_from_slice(&f2);
    let reader = tokio::spawn(async move {
        client.write_all(&tail).await.unwrap();
        client
    });
    assert_eq!(poll_fn(|cx| ws.poll_read(cx)).await, Event::Message);
    assert_eq!(ws.data(), Some(Data::Text("first")));
    let mut client = reader.await.unwrap();
    assert_eq!(poll_fn(|cx| ws.poll_read(cx)).await, Event::Message);
    assert_eq!(ws.data(), Some(Data::Binary(b"second")));
    ws.release();
    assert_eq!((ws.rbuf.capacity(), ws.frag.capacity()), (0, 0));

    ws.queue_text("answer");
    ws.flush().await.unwrap();
    assert_eq!(ws.wbuf.capacity(), 0);
    let mut got = [0u8; 8];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got.to_vec(), unmasked(true, OP_TEXT, b"answer"));

    // End of stream.
    drop(client);
    assert_eq!(
        poll_fn(|cx| ws.poll_read(cx)).await,
        Event::End(ReadEnd::Gone)
    );
}

#[tokio::test]
async fn bytes_read_ahead_by_the_http_layer_come_first() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    let mut ws = WebSocket::new(Io::Tcp(server), &frame(true, OP_TEXT, b"early"));
    client
        .write_all(&frame(true, OP_TEXT, b"later"))
        .await
        .unwrap();
    assert_eq!(poll_fn(|cx| ws.poll_read(cx)).await, Event::Message);
    assert_eq!(ws.data(), Some(Data::Text("early")));
    assert_eq!(poll_fn(|cx| ws.poll_read(cx)).await, Event::Message);
    assert_eq!(ws.data(), Some(Data::Text("later")));
}
