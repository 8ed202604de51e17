//! The bus envelope: encoding, per-event decoding, and what a receiver does
//! with an event that does not decode.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::bus::local::{LocalBus, LocalNet};
use crate::config::Config;
use crate::core::hub::{ConnHandle, OutboundRx};
use crate::node::Node;
use crate::store::memory::MemoryStore;

fn peer(s: &str) -> PeerId {
    PeerId::from_trusted(s)
}

fn sig(from_epoch: u64, to: &str, data: Opaque, id: Option<Value>) -> RemoteSignal {
    RemoteSignal {
        from: peer("alice"),
        from_epoch,
        to: peer(to),
        to_epoch: 0,
        kind: SignalKind::from_trusted("offer"),
        data,
        id,
        hops: 0,
    }
}

/// Runs `f` on a thread with a 64 MiB stack. Values a thousand levels deep
/// are built, encoded, compared and dropped by recursion; a debug build
/// spends several KB of stack per level there (2 MiB, a test thread's stack,
/// ends at about 600), a release build far less.
fn deep_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// A JSON value nested `depth` arrays deep around `1`.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// The envelope bytes of a batch from `origin` whose events are the given
/// byte strings, as [`Envelope::encode`] lays them out.
fn batch_bytes(origin: &str, events: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = vec![0x84];
    put_str(&mut buf, "v");
    put_uint(&mut buf, ENVELOPE_VERSION.into());
    put_str(&mut buf, "origin");
    put_str(&mut buf, origin);
    put_str(&mut buf, "seq");
    put_uint(&mut buf, 1);
    put_str(&mut buf, "event");
    put_bin(&mut buf, |b| {
        b.push(0x81);
        put_str(b, "batch");
        b.push(0x81);
        put_str(b, "events");
        put_array_len(b, events.len());
        for e in events {
            put_bin(b, |b| b.extend_from_slice(e));
        }
    });
    buf
}

fn event_bytes(e: &NodeEvent) -> Vec<u8> {
    let mut b = Vec::new();
    encode_event(&mut b, e);
    b
}

/// A signal from alice (epoch 5, id 7) whose `kind` is a number: its header
/// reads, the event does not decode.
fn mistyped_signal() -> Vec<u8> {
    rmp_serde::to_vec_named(&json!({"signal": {
        "from": "alice", "from_epoch": 5, "to": "bob", "to_epoch": 0,
        "kind": 42, "data": {"V": null}, "id": 7
    }}))
    .unwrap()
}

#[test]
fn signal_data_crosses_the_bus_as_json_text_or_as_a_value() {
    let raw = serde_json::value::RawValue::from_string(r#"{"sdp": "v=0\r\n"}"#.into()).unwrap();
    let env = Envelope {
        v: ENVELOPE_VERSION,
        origin: NodeId::from_trusted("n1"),
        seq: 7,
        event: NodeEvent::Batch {
            events: vec![
                NodeEvent::Signal(sig(1, "b", Opaque::Json(raw.clone()), Some(json!("s1")))),
                NodeEvent::Signal(sig(1, "b", Opaque::Value(json!({"bin": [1, 2]})), None)),
                NodeEvent::Message {
                    room: RoomName::from_trusted("r"),
                    from: peer("a"),
                    data: Opaque::Json(raw),
                },
            ],
        },
    };
    let back = Envelope::decode(&env.encode()).unwrap();
    assert_eq!(back, env);
    let NodeEvent::Batch { events } = back.event else {
        panic!("a batch")
    };
    // JSON text stays text, byte for byte; a value stays a value.
    match &events[0] {
        NodeEvent::Signal(s) => match &s.data {
            Opaque::Json(r) => assert_eq!(r.get(), r#"{"sdp": "v=0\r\n"}"#),
            other => panic!("expected JSON text, got {other:?}"),
        },
        other => panic!("expected a signal, got {other:?}"),
    }
    match &events[1] {
        NodeEvent::Signal(s) => assert!(matches!(s.data, Opaque::Value(_))),
        other => panic!("expected a signal, got {other:?}"),
    }
    match &events[2] {
        NodeEvent::Message { data, .. } => assert!(matches!(data, Opaque::Json(_))),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The serde form of a batch (used by nothing on the hot path) and the
/// in-place encoder (a `bin 32` per event, its length patched) decode alike.
#[test]
fn serde_and_in_place_encodings_of_a_batch_agree() {
    let batch = NodeEvent::Batch {
        events: vec![
            NodeEvent::Signal(sig(1, "b", Opaque::Value(json!({"x": 1})), Some(json!(3)))),
            NodeEvent::Flush { peer_id: peer("b") },
        ],
    };
    let serde = rmp_serde::to_vec_named(&batch).unwrap();
    assert_ne!(
        serde,
        event_bytes(&batch),
        "serde picks the shortest bin header"
    );
    assert_eq!(decode_event(&serde), batch);
    assert_eq!(decode_event(&event_bytes(&batch)), batch);
}

/// What a client may send (`data` or `meta` as deep as the deepest
/// `limits.max_nesting_depth` a door can be configured with) decodes on the
/// other node: a signal and a `peer-joined`.
#[test]
fn anything_the_door_accepts_decodes_on_another_node() {
    deep_stack(anything_the_door_accepts_decodes);
}

fn anything_the_door_accepts_decodes() {
    let deep = nested(crate::config::MAX_NESTING_DEPTH);
    let env = Envelope {
        v: ENVELOPE_VERSION,
        origin: NodeId::from_trusted("n1"),
        seq: 1,
        event: NodeEvent::Batch {
            events: vec![NodeEvent::Signal(sig(
                1,
                "b",
                Opaque::Value(deep.clone()),
                None,
            ))],
        },
    };
    assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
    let joined = Envelope {
        v: ENVELOPE_VERSION,
        origin: NodeId::from_trusted("n1"),
        seq: 2,
        event: NodeEvent::PeerJoined {
            room: RoomName::from_trusted("r"),
            member: Member {
                peer_id: peer("a"),
                meta: deep,
            },
        },
    };
    assert_eq!(Envelope::decode(&joined.encode()).unwrap(), joined);
}

/// Envelope v2 failed a whole batch on one event nested too deep for the
/// receiver (rmp-serde's depth limit), silently: 403 of an innocent sender's
/// 2,000 signals were lost in the issue's run. Now each event decodes on its
/// own: the good ones around a bad one arrive, and the bad one's sender can
/// still be named.
#[test]
fn one_undecodable_event_costs_only_itself() {
    deep_stack(one_undecodable_event);
}

fn one_undecodable_event() {
    let good = |n: u64| {
        event_bytes(&NodeEvent::Signal(sig(
            9,
            "bob",
            Opaque::Value(json!({"seq": n})),
            None,
        )))
    };
    // Deeper than any receiver decodes (only a node without a door limit
    // could have sent it), with an id to answer.
    let too_deep = event_bytes(&NodeEvent::Signal(sig(
        5,
        "bob",
        Opaque::Value(nested(EVENT_MAX_DEPTH + 10)),
        Some(json!("deep")),
    )));
    let bytes = batch_bytes(
        "n1",
        &[
            good(1),
            too_deep,
            good(2),
            mistyped_signal(),
            b"\xc1junk".to_vec(),
            good(3),
        ],
    );
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.origin.as_str(), "n1");
    let NodeEvent::Batch { events } = env.event else {
        panic!("a batch")
    };
    assert_eq!(events.len(), 6);
    let seqs: Vec<Value> = events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Signal(s) => Some(s.data.to_value()["seq"].clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        vec![json!(1), json!(2), json!(3)],
        "good events, in order"
    );
    let bad: Vec<&Undecodable> = events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Undecodable(u) => Some(&**u),
            _ => None,
        })
        .collect();
    assert_eq!(bad.len(), 3);
    assert_eq!(bad[0].kind, "signal");
    assert!(bad[0].error.contains("depth"), "{}", bad[0].error);
    assert_eq!(
        bad[0].sender,
        Some(SignalSender {
            from: peer("alice"),
            from_epoch: 5,
            to: Some(peer("bob")),
            id: Some(json!("deep")),
        })
    );
    assert_eq!(bad[1].kind, "signal");
    assert_eq!(
        bad[1].sender,
        Some(SignalSender {
            from: peer("alice"),
            from_epoch: 5,
            to: Some(peer("bob")),
            id: Some(json!(7)),
        })
    );
    assert_eq!((bad[2].kind, &bad[2].sender), ("unknown", &None));
}

/// The header of a signal is read without recursion: nesting far beyond any
/// decoder's limit (a million levels) does not stop it, and `id` after the
/// deep `data` is still found.
#[test]
fn a_signal_header_is_read_whatever_the_nesting() {
    deep_stack(a_signal_header_is_read);
}

fn a_signal_header_is_read() {
    let mut b = vec![0x81];
    put_str(&mut b, "signal");
    b.push(0x85);
    put_str(&mut b, "from");
    put_str(&mut b, "alice");
    put_str(&mut b, "from_epoch");
    put_uint(&mut b, u64::MAX >> 1);
    put_str(&mut b, "data");
    b.push(0x81);
    put_str(&mut b, "V");
    b.extend(std::iter::repeat_n(0x91, 1_000_000));
    b.push(0x01);
    put_str(&mut b, "id");
    put_str(&mut b, "x");
    put_str(&mut b, "kind");
    put_str(&mut b, "offer");
    let NodeEvent::Undecodable(u) = decode_event(&b) else {
        panic!("cannot decode")
    };
    assert_eq!(
        u.sender,
        Some(SignalSender {
            from: peer("alice"),
            from_epoch: u64::MAX >> 1,
            to: None,
            id: Some(json!("x")),
        })
    );
    // Cut short: what was read before the cut is kept, nothing panics.
    for cut in [1, 5, 20, b.len() / 2] {
        let NodeEvent::Undecodable(u) = decode_event(&b[..cut]) else {
            panic!("cannot decode")
        };
        assert!(u.sender.is_none() || u.sender.as_ref().unwrap().id.is_none());
    }
}

#[test]
fn a_batch_inside_a_batch_is_not_decoded() {
    let inner = NodeEvent::Batch {
        events: vec![NodeEvent::Flush { peer_id: peer("b") }],
    };
    let bytes = batch_bytes("n1", &[event_bytes(&inner)]);
    let NodeEvent::Batch { events } = Envelope::decode(&bytes).unwrap().event else {
        panic!("a batch")
    };
    match &events[..] {
        [NodeEvent::Batch { events }] => {
            assert!(
                matches!(events[..], [NodeEvent::Undecodable(_)]),
                "{events:?}"
            )
        }
        other => panic!("expected one batch, got {other:?}"),
    }
}

/// An envelope of version 2 (event inline, not a byte string) is named as
/// such, with its origin, so a mixed-version cluster shows in the log and
/// the metric instead of as plain garbage.
#[test]
fn other_versions_are_told_apart_from_garbage() {
    let v2 = rmp_serde::to_vec_named(&json!({
        "v": 2, "origin": "old-node", "seq": 3, "event": {"flush": {"peer_id": "p"}}
    }))
    .unwrap();
    assert_eq!(
        Envelope::decode(&v2),
        Err(DecodeError::Version {
            version: 2,
            origin: Some(NodeId::from_trusted("old-node")),
        })
    );
    assert!(matches!(
        Envelope::decode(b"\x93\x01\x02\x03"),
        Err(DecodeError::Malformed(_))
    ));
}

fn drain(rx: &mut OutboundRx) -> Vec<Value> {
    std::iter::from_fn(|| rx.try_recv())
        .map(|o| serde_json::to_value(&*o.msg).unwrap())
        .collect()
}

/// Two in-process nodes: a batch from A to B with an undecodable signal
/// between two good ones. B delivers the good ones to bob in order, and
/// answers the bad one: alice, on A, gets an `error` with the signal's id.
#[tokio::test]
async fn a_bad_event_in_a_batch_is_answered_and_the_others_delivered() {
    let net = Arc::new(LocalNet::default());
    let store = Arc::new(MemoryStore::default());
    let node = |id: &str| {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = NodeId::from_trusted(id);
        let bus = Arc::new(LocalBus::new(net.clone(), id.clone(), tx));
        Node::new(
            Config::default(),
            id,
            store.clone(),
            bus,
            rx,
            Default::default(),
        )
        .unwrap()
    };
    let (a, b) = (node("a"), node("b"));
    let (alice, mut alice_rx) = ConnHandle::new(5, 64, CancellationToken::new());
    let (bob, mut bob_rx) = ConnHandle::new(11, 64, CancellationToken::new());
    a.core.hub.register(peer("alice"), alice);
    b.core.hub.register(peer("bob"), bob);

    let good = |n: u64| {
        event_bytes(&NodeEvent::Signal(sig(
            5,
            "bob",
            Opaque::Value(json!({"seq": n})),
            None,
        )))
    };
    let env = Envelope::decode(&batch_bytes("a", &[good(1), mistyped_signal(), good(2)])).unwrap();
    b.handle_remote(env);

    let seqs: Vec<Value> = drain(&mut bob_rx)
        .into_iter()
        .map(|m| {
            assert_eq!(m["type"], "signal", "{m}");
            m["data"]["seq"].clone()
        })
        .collect();
    assert_eq!(seqs, vec![json!(1), json!(2)]);

    // B's answer travels through its outbox to A.
    let told = tokio::time::timeout(Duration::from_secs(5), alice_rx.recv())
        .await
        .expect("alice is told within 5 s");
    let told = serde_json::to_value(&*told.msg).unwrap();
    assert_eq!(told["type"], "error");
    assert_eq!(told["code"], "invalid-message");
    assert_eq!(told["id"], 7);
    assert!(
        told["message"].as_str().unwrap().contains("`bob`"),
        "{told}"
    );
    assert_eq!(drain(&mut alice_rx), Vec::<Value>::new(), "told once");
}

/// `room-closed` crosses the bus whole, and one that does not decode is
/// still named by its kind.
#[test]
fn room_closed_round_trips_and_is_named_when_broken() {
    let event = NodeEvent::RoomClosed {
        room: RoomName::from_trusted("call"),
        reason: RoomClosedReason::Expired,
        members: vec![(peer("a"), 7), (peer("b"), u64::MAX)],
    };
    let env = Envelope {
        v: ENVELOPE_VERSION,
        origin: NodeId::from_trusted("n1"),
        seq: 3,
        event: event.clone(),
    };
    assert_eq!(Envelope::decode(&env.encode()).unwrap().event, event);
    let broken =
        rmp_serde::to_vec_named(&json!({"room-closed": {"room": 5, "reason": "expired"}})).unwrap();
    let env = Envelope::decode(&batch_bytes("n1", &[broken])).unwrap();
    let NodeEvent::Batch { events } = env.event else {
        panic!("a batch")
    };
    match &events[..] {
        [NodeEvent::Undecodable(u)] => assert_eq!(u.kind, "room-closed"),
        other => panic!("{other:?}"),
    }
}
