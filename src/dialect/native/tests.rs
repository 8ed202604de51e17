//! Unit tests of the native protocol's decoding and encoding.

use super::*;
use crate::core::command::Command;
use crate::core::event::Event;
use crate::error::ErrorCode;
use crate::payload::{MsgPackValue, Opaque};
use crate::types::{PeerId, RoomName, SignalKind};
use serde_json::{json, Value};

const LIM: NameLimits = NameLimits {
    max_name_bytes: 16,
    max_kind_bytes: 8,
    max_meta_bytes: 32,
    max_nesting_depth: 64,
};

fn dj(v: Value) -> Result<Inbound, DecodeError> {
    decode(v.to_string().as_bytes(), Codec::Json, LIM)
}

#[test]
fn decodes_every_command() {
    let hello = dj(json!({"type":"hello","id":1,"peer_id":"a","meta":{"n":1}})).unwrap();
    assert_eq!(hello.id, Some(json!(1)));
    assert!(matches!(hello.cmd, Command::Hello { peer_id: Some(ref p), .. } if p.as_str() == "a"));
    assert!(matches!(
        dj(json!({"type":"hello"})).unwrap().cmd,
        Command::Hello { peer_id: None, .. }
    ));
    assert!(matches!(
        dj(json!({"type":"join","room":"r"})).unwrap().cmd,
        Command::Join { .. }
    ));
    assert!(matches!(
        dj(json!({"type":"leave","room":"r"})).unwrap().cmd,
        Command::Leave { .. }
    ));
    assert!(matches!(
        dj(json!({"type":"signal","to":"b","kind":"offer","data":{"sdp":"x"}}))
            .unwrap()
            .cmd,
        Command::Signal { .. }
    ));
    assert!(matches!(
        dj(json!({"type":"broadcast","room":"r","data":1}))
            .unwrap()
            .cmd,
        Command::Broadcast { .. }
    ));
    assert_eq!(
        dj(json!({"type":"ping","id":"x"})).unwrap().cmd,
        Command::Ping
    );
}

#[test]
fn classifies_bad_input() {
    let code = |r: Result<Inbound, DecodeError>| r.unwrap_err().error.code;
    assert_eq!(
        code(decode(b"{nope", Codec::Json, LIM)),
        ErrorCode::Malformed
    );
    assert_eq!(
        code(decode(&[0xc1], Codec::MsgPack, LIM)),
        ErrorCode::Malformed
    );
    assert_eq!(code(dj(json!({"type":"dance"}))), ErrorCode::UnknownType);
    assert_eq!(code(dj(json!({"id":3}))), ErrorCode::UnknownType);
    assert_eq!(code(dj(json!({"type":"join"}))), ErrorCode::InvalidMessage);
    assert_eq!(
        code(dj(json!({"type":"join","room":""}))),
        ErrorCode::InvalidRoom
    );
    assert_eq!(
        code(dj(json!({"type":"join","room":"x".repeat(17)}))),
        ErrorCode::InvalidRoom
    );
    assert_eq!(
        code(dj(json!({"type":"signal","to":"","kind":"o"}))),
        ErrorCode::InvalidPeerId
    );
    assert_eq!(
        code(dj(json!({"type":"signal","to":"b","kind":"123456789"}))),
        ErrorCode::InvalidKind
    );
    assert_eq!(code(dj(json!([1, 2]))), ErrorCode::InvalidMessage);
    assert_eq!(
        code(dj(
            json!({"type":"join","room":"r","meta":{"k":"x".repeat(40)}})
        )),
        ErrorCode::MetaTooLarge
    );
    let wrong = dj(json!({"type":"join","id":7,"room":5})).unwrap_err();
    assert_eq!(
        (wrong.id, wrong.error.code),
        (Some(json!(7)), ErrorCode::InvalidMessage)
    );
    assert_eq!(
        code(dj(json!({"type":"ping","id":{"a":1}}))),
        ErrorCode::InvalidMessage
    );
}

#[test]
fn msgpack_bin_and_integer_keys_reach_json_peers() {
    let mut frame = vec![0x84];
    for s in ["type", "signal", "to", "b", "kind", "o", "data"] {
        frame.push(0xa0 | s.len() as u8);
        frame.extend_from_slice(s.as_bytes());
    }
    // data: {"bin": <bin 01 02 03>, 1: "x"}
    frame.extend_from_slice(&[
        0x82, 0xa3, b'b', b'i', b'n', 0xc4, 3, 1, 2, 3, 0x01, 0xa1, b'x',
    ]);
    match decode(&frame, Codec::MsgPack, LIM).unwrap().cmd {
        Command::Signal { data, .. } => assert_eq!(data, json!({"bin": [1, 2, 3], "1": "x"})),
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[test]
fn json_data_passes_through_as_sent() {
    // Whitespace, escapes, key order and number spelling are kept: the
    // payload is not rebuilt, it is the client's own text.
    let frame = br#"{"type":"signal","to":"b","kind":"offer","data": {"z":1, "a":"v=0\r\n\u00e9", "n":1.50}}"#;
    let cmd = decode(frame, Codec::Json, LIM).unwrap().cmd;
    let Command::Signal { data, .. } = cmd else {
        panic!("expected a signal, got {cmd:?}")
    };
    assert!(
        matches!(data, Opaque::Json(_)),
        "JSON data kept as text: {data:?}"
    );
    let out = Event::Signal {
        from: PeerId::from_trusted("a"),
        kind: SignalKind::from_trusted("offer"),
        data,
    };
    let Encoded::Text(text) = encode(&out, Codec::Json) else {
        panic!("JSON encodes to text")
    };
    assert_eq!(
        text,
        r#"{"type":"signal","from":"a","kind":"offer","data":{"z":1, "a":"v=0\r\n\u00e9", "n":1.50}}"#
    );
    // A MessagePack recipient gets the value it stands for.
    let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
        panic!("MessagePack encodes to binary")
    };
    let v: Value = rmp_serde::from_slice(&b).unwrap();
    assert_eq!(
        v,
        json!({"type":"signal","from":"a","kind":"offer","data":{"z":1,"a":"v=0\r\né","n":1.5}})
    );
}

#[test]
fn json_data_without_a_value_form_reaches_msgpack_as_text() {
    for data in [r#"{"n":1e400}"#, r#""\ud800""#] {
        let frame = format!(r#"{{"type":"signal","to":"b","kind":"k","data":{data}}}"#);
        let Command::Signal { data: d, .. } =
            decode(frame.as_bytes(), Codec::Json, LIM).unwrap().cmd
        else {
            panic!("expected a signal")
        };
        let out = Event::Signal {
            from: PeerId::from_trusted("a"),
            kind: SignalKind::from_trusted("k"),
            data: d,
        };
        let Encoded::Text(text) = encode(&out, Codec::Json) else {
            panic!("text")
        };
        assert!(text.ends_with(&format!(r#""data":{data}}}"#)), "{text}");
        let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
            panic!("binary")
        };
        let v: Value = rmp_serde::from_slice(&b).unwrap();
        assert_eq!(v["data"], json!(data), "{v}");
    }
}

#[test]
fn escaped_names_decode_like_plain_ones() {
    // Names borrow from the frame unless they hold escapes.
    let frame = r#"{"type":"sig\u006eal","to":"\u0062","kind":"of\u0066er","data":1}"#;
    assert_eq!(
        decode_text(frame, LIM).unwrap().cmd,
        Command::Signal {
            to: PeerId::from_trusted("b"),
            kind: SignalKind::from_trusted("offer"),
            data: json!(1).into()
        }
    );
    let frame = r#"{"type":"join","room":"r\u00e9"}"#;
    assert!(
        matches!(decode_text(frame, LIM).unwrap().cmd, Command::Join { room, .. } if room.as_str() == "r\u{e9}")
    );
    // Invalid UTF-8 given as bytes is malformed.
    assert_eq!(
        decode(b"{\"type\":\"p\xffng\"}", Codec::Json, LIM)
            .unwrap_err()
            .error
            .code,
        ErrorCode::Malformed
    );
}

#[test]
fn invalid_json_data_is_malformed_not_passed_on() {
    let e = decode(
        br#"{"type":"signal","to":"b","kind":"offer","data":{"a":}}"#,
        Codec::Json,
        LIM,
    )
    .unwrap_err();
    assert_eq!(e.error.code, ErrorCode::Malformed);
    // Absent and null data are both null.
    for frame in [
        &br#"{"type":"signal","to":"b","kind":"offer"}"#[..],
        br#"{"type":"signal","to":"b","kind":"offer","data":null}"#,
    ] {
        match decode(frame, Codec::Json, LIM).unwrap().cmd {
            Command::Signal { data, .. } => assert_eq!(data, Value::Null),
            other => panic!("expected a signal, got {other:?}"),
        }
    }
}

#[test]
fn msgpack_round_trips_and_ignores_from() {
    let frame = rmp_serde::to_vec_named(
        &json!({"type":"signal","to":"b","kind":"offer","data":{"sdp":"v=0"},"from":"spoof"}),
    )
    .unwrap();
    let cmd = decode(&frame, Codec::MsgPack, LIM).unwrap().cmd;
    assert_eq!(
        cmd,
        Command::Signal {
            to: PeerId::from_trusted("b"),
            kind: SignalKind::from_trusted("offer"),
            data: json!({"sdp":"v=0"}).into()
        }
    );
    let out = Event::Pong { id: Some(json!(2)) };
    match encode(&out, Codec::MsgPack) {
        Encoded::Binary(b) => {
            let v: Value = rmp_serde::from_slice(&b).unwrap();
            assert_eq!(v, json!({"type":"pong","id":2}));
        }
        Encoded::Text(_) => panic!("msgpack must be binary"),
    }
    assert_eq!(
        encode(&out, Codec::Json),
        Encoded::Text(r#"{"type":"pong","id":2}"#.into())
    );
}

/// `[[...[1]...]]`, `depth` arrays deep, as JSON text.
fn json_nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// The same in MessagePack.
fn msgpack_nested(depth: usize) -> Vec<u8> {
    let mut v = vec![0x91; depth];
    v.push(0x01);
    v
}

/// A MessagePack map of `(key, value)` with string keys, values as encoded bytes.
fn mp_map(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut f = vec![0x80 | fields.len() as u8];
    for (k, v) in fields {
        f.push(0xa0 | k.len() as u8);
        f.extend_from_slice(k.as_bytes());
        f.extend_from_slice(v);
    }
    f
}

fn mp_str(s: &str) -> Vec<u8> {
    let mut v = vec![0xa0 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

#[test]
fn nesting_up_to_the_limit_passes_one_more_is_refused_in_both_codecs() {
    let lim = NameLimits {
        max_meta_bytes: 4096,
        ..LIM
    };
    for depth in [64, 65] {
        let ok = depth <= 64;
        // JSON: `meta` of hello and join, `data` of signal and broadcast,
        // with the `id` before or after the deep value.
        let deep = json_nested(depth);
        for frame in [
            format!(r#"{{"type":"hello","id":7,"meta":{deep}}}"#),
            format!(r#"{{"type":"join","room":"r","meta":{deep},"id":7}}"#),
            format!(r#"{{"type":"signal","to":"b","kind":"k","data":{deep},"id":7}}"#),
            format!(r#"{{"id":7,"type":"broadcast","room":"r","data":{{"a":{deep}}}}}"#),
        ] {
            // A key adds a level in the last frame.
            let ok = ok && !frame.contains(r#"{"a":"#) || depth < 64;
            let r = decode_text(&frame, lim);
            if ok {
                assert!(r.is_ok(), "depth {depth}: {frame}: {r:?}");
            } else {
                let e = r.unwrap_err();
                assert_eq!(
                    (e.error.code, e.id),
                    (ErrorCode::NestingTooDeep, Some(json!(7))),
                    "depth {depth}: {frame}"
                );
            }
        }
        // MessagePack: the same, `id` before and after.
        let deep = msgpack_nested(depth);
        let id: &[u8] = &[0x07];
        for frame in [
            mp_map(&[("type", &mp_str("hello")), ("id", id), ("meta", &deep)]),
            mp_map(&[
                ("type", &mp_str("join")),
                ("room", &mp_str("r")),
                ("meta", &deep),
                ("id", id),
            ]),
            mp_map(&[
                ("type", &mp_str("signal")),
                ("to", &mp_str("b")),
                ("kind", &mp_str("k")),
                ("data", &deep),
                ("id", id),
            ]),
        ] {
            let r = decode(&frame, Codec::MsgPack, lim);
            if ok {
                assert!(r.is_ok(), "depth {depth}: {frame:x?}: {r:?}");
            } else {
                let e = r.unwrap_err();
                assert_eq!(
                    (e.error.code, e.id),
                    (ErrorCode::NestingTooDeep, Some(json!(7))),
                    "depth {depth}: {frame:x?}"
                );
            }
        }
    }
    // Far deeper than any parser's own limit: refused by the scan, the
    // `id` still found (serde_json gives up at 128, rmp-serde at 1024).
    let frame = format!(
        r#"{{"type":"signal","to":"b","kind":"k","data":{},"id":"x"}}"#,
        json_nested(20_000)
    );
    let e = decode_text(&frame, lim).unwrap_err();
    assert_eq!(
        (e.error.code, e.id),
        (ErrorCode::NestingTooDeep, Some(json!("x")))
    );
    let frame = mp_map(&[
        ("type", &mp_str("signal")),
        ("data", &msgpack_nested(20_000)),
        ("id", &mp_str("x")),
    ]);
    let e = decode(&frame, Codec::MsgPack, lim).unwrap_err();
    assert_eq!(
        (e.error.code, e.id),
        (ErrorCode::NestingTooDeep, Some(json!("x")))
    );
    // A deep `id` is not echoed.
    let e = decode_text(
        &format!(r#"{{"type":"ping","id":{}}}"#, json_nested(70)),
        lim,
    )
    .unwrap_err();
    assert_eq!((e.error.code, e.id), (ErrorCode::NestingTooDeep, None));
    // Brackets inside strings do not count.
    let frame = format!(
        r#"{{"type":"signal","to":"b","kind":"k","data":"{}\"[["}}"#,
        "[".repeat(100)
    );
    assert!(decode_text(&frame, lim).is_ok());
}

#[test]
fn msgpack_data_is_kept_as_sent_and_copied_to_msgpack_recipients() {
    // data: {"n": 1 as a uint16 (not the smallest form), "b": bin 01 02}
    let data: &[u8] = &[
        0x82, 0xa1, b'n', 0xcd, 0x00, 0x01, 0xa1, b'b', 0xc4, 2, 1, 2,
    ];
    let frame = mp_map(&[
        ("type", &mp_str("signal")),
        ("to", &mp_str("b")),
        ("kind", &mp_str("offer")),
        ("data", data),
    ]);
    let Command::Signal { data: d, .. } = decode(&frame, Codec::MsgPack, LIM).unwrap().cmd else {
        panic!("a signal")
    };
    match &d {
        Opaque::MsgPack(m) => assert_eq!(m.as_bytes(), data),
        other => panic!("expected MessagePack bytes, got {other:?}"),
    }
    // About its size on the wire when queued.
    assert_eq!(d.heap_bytes(), data.len());
    let out = Event::Signal {
        from: PeerId::from_trusted("a"),
        kind: SignalKind::from_trusted("offer"),
        data: d,
    };
    let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
        panic!("binary")
    };
    // The bytes as sent, at the end of the map rmp-serde would write.
    assert!(b.ends_with(data), "{b:x?}");
    let mut want = mp_map(&[
        ("type", &mp_str("signal")),
        ("from", &mp_str("a")),
        ("kind", &mp_str("offer")),
    ]);
    want[0] = 0x84;
    want.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a']);
    want.extend_from_slice(data);
    assert_eq!(b, want);
    // A JSON recipient gets it transcoded: bin as an array of byte values.
    let Encoded::Text(t) = encode(&out, Codec::Json) else {
        panic!("text")
    };
    assert_eq!(
        t,
        r#"{"type":"signal","from":"a","kind":"offer","data":{"n":1,"b":[1,2]}}"#
    );
    // A broadcast is copied the same way; long names take longer headers.
    let room = "r".repeat(40);
    let out = Event::Message {
        room: RoomName::from_trusted(room.as_str()),
        from: PeerId::from_trusted("a"),
        data: Opaque::MsgPack(MsgPackValue::new(data, 64).unwrap()),
    };
    let Encoded::Binary(b) = encode(&out, Codec::MsgPack) else {
        panic!("binary")
    };
    // What serializing the message value by value gives (bin and all).
    let generic = rmp_serde::to_vec_named(&out).unwrap();
    let read = |b: &[u8]| {
        rmp_serde::from_slice::<crate::payload::Payload>(b)
            .unwrap()
            .0
    };
    assert_eq!(read(&b), read(&generic));
    assert_eq!(read(&b)["room"], json!(room));
    assert!(b.ends_with(data));
}

#[test]
fn msgpack_data_reaches_json_recipients_like_a_lenient_value() {
    // Every kind of value, and keys that are not strings.
    let v = json!({"s": "t", "neg": -5, "big": u64::MAX, "f": 1.5, "nil": null, "t": true,
        "arr": [1, [2, {"k": -300}]]});
    let mut data = rmp_serde::to_vec_named(&v).unwrap();
    // Append to the map: 1: "x", true: 2, bin key, a float32, an invalid-UTF-8 str, a nested int key.
    let extra: &[u8] = &[
        0x01, 0xa1, b'x', 0xc3, 0x02, 0xc4, 1, 9, 0x03, 0xa2, b'f', b'4', 0xca, 0x3f, 0xc0, 0, 0,
        0xa3, b'b', b'a', b'd', 0xa2, 0xff, 0xfe, 0xa1, b'm', 0x81, 0xd0, 0x80, 0xc0,
    ];
    assert_eq!(data[0] & 0xf0, 0x80);
    data[0] += 6;
    data.extend_from_slice(extra);
    let m = MsgPackValue::new(&data, 64).unwrap();
    let text = serde_json::to_string(&m).unwrap();
    let got: Value = serde_json::from_str(&text).unwrap();
    // The same as the value tree `Payload` builds.
    let tree = Opaque::MsgPack(m).to_value();
    assert_eq!(got, tree);
    assert_eq!(got["1"], "x");
    assert_eq!(got["true"], 2);
    assert_eq!(got["[9]"], 3);
    assert_eq!(got["f4"], 1.5);
    assert_eq!(got["bad"], json!([255, 254]));
    assert_eq!(got["m"], json!({"-128": null}));
    assert_eq!(got["big"], json!(u64::MAX));
}

#[test]
fn msgpack_ext_is_refused_in_data_and_skipped_elsewhere() {
    let ts: &[u8] = &[0xd6, 0xff, 0, 0, 0, 1]; // timestamp 32
    let frame = mp_map(&[
        ("type", &mp_str("signal")),
        ("to", &mp_str("b")),
        ("kind", &mp_str("k")),
        ("data", ts),
    ]);
    assert_eq!(
        decode(&frame, Codec::MsgPack, LIM).unwrap_err().error.code,
        ErrorCode::Malformed
    );
    let frame = mp_map(&[("type", &mp_str("ping")), ("at", ts)]);
    assert_eq!(
        decode(&frame, Codec::MsgPack, LIM).unwrap().cmd,
        Command::Ping
    );
}

#[test]
fn msgpack_data_however_serde_finds_it() {
    // Positional (a struct as an array): `data` is field 8.
    let frame =
        rmp_serde::to_vec(&("signal", 3, (), (), (), (), "b", "k", [1, 2], (), (), ())).unwrap();
    let i = decode(&frame, Codec::MsgPack, LIM).unwrap();
    assert_eq!(i.id, Some(json!(3)));
    assert!(matches!(i.cmd, Command::Signal { ref data, .. } if *data == json!([1, 2])));
    // Keyed by its index: serde takes it, the scan does not; refused.
    let mut frame = mp_map(&[
        ("type", &mp_str("signal")),
        ("to", &mp_str("b")),
        ("kind", &mp_str("k")),
    ]);
    frame[0] += 1;
    frame.extend_from_slice(&[0x08, 0x01]);
    assert_eq!(
        decode(&frame, Codec::MsgPack, LIM).unwrap_err().error.code,
        ErrorCode::InvalidMessage
    );
    // nil and absent are both null.
    for frame in [
        mp_map(&[
            ("type", &mp_str("signal")),
            ("to", &mp_str("b")),
            ("kind", &mp_str("k")),
        ]),
        mp_map(&[
            ("type", &mp_str("signal")),
            ("to", &mp_str("b")),
            ("kind", &mp_str("k")),
            ("data", &[0xc0]),
        ]),
    ] {
        let Command::Signal { data, .. } = decode(&frame, Codec::MsgPack, LIM).unwrap().cmd else {
            panic!("a signal")
        };
        assert!(matches!(data, Opaque::Value(Value::Null)), "{data:?}");
    }
}

#[test]
fn a_queued_message_counts_what_it_holds() {
    // The probe's payload: 65,000 one-byte integers.
    let mut data = vec![0xdc, 0xfd, 0xe8];
    data.extend(std::iter::repeat_n(0x01, 65_000));
    let m = Opaque::MsgPack(MsgPackValue::new(&data, 64).unwrap());
    let msg = Event::Signal {
        from: PeerId::from_trusted("a"),
        kind: SignalKind::from_trusted("k"),
        data: m.clone(),
    };
    assert!(
        (65_003..66_000).contains(&msg.heap_bytes()),
        "{}",
        msg.heap_bytes()
    );
    // As a tree it holds 32 bytes per element: the estimate says so.
    let tree = Event::Signal {
        from: PeerId::from_trusted("a"),
        kind: SignalKind::from_trusted("k"),
        data: Opaque::Value(m.to_value()),
    };
    assert!(tree.heap_bytes() >= 65_000 * 32, "{}", tree.heap_bytes());
}
