//! Encoding core events for native clients, and the two encodings a native
//! client may choose (the WebSocket subprotocol, or its first frame).

use super::super::Encoded;
use crate::core::event::Event;
use crate::payload::{MsgPackValue, Opaque};

/// The WebSocket subprotocol that selects JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";
/// The WebSocket subprotocol that selects MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";

/// The encoding a client speaks; the server answers in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// JSON in text frames.
    Json,
    /// MessagePack (structs as maps) in binary frames.
    MsgPack,
}

impl Codec {
    /// The codec named by a negotiated subprotocol.
    pub fn from_subprotocol(p: &str) -> Option<Self> {
        match p {
            SUBPROTOCOL_JSON => Some(Self::Json),
            SUBPROTOCOL_MSGPACK => Some(Self::MsgPack),
            _ => None,
        }
    }

    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MsgPack => "msgpack",
        }
    }
}

/// Encodes a server message in the client's codec.
pub fn encode(msg: &Event, codec: Codec) -> Encoded {
    match codec {
        // Serializing our own types into memory cannot fail: every map key is
        // a string, and MessagePack `data` was checked when it was read.
        Codec::Json => Encoded::Text(serde_json::to_string(msg).expect("server message is JSON")),
        Codec::MsgPack => Encoded::Binary(match msg {
            Event::Signal {
                from,
                kind,
                data: Opaque::MsgPack(data),
            } => msgpack_with_data(
                "signal",
                &[("from", from.as_str()), ("kind", kind.as_str())],
                data,
            ),
            Event::Message {
                room,
                from,
                data: Opaque::MsgPack(data),
            } => msgpack_with_data(
                "message",
                &[("room", room.as_str()), ("from", from.as_str())],
                data,
            ),
            _ => rmp_serde::to_vec_named(msg).expect("server message is MessagePack"),
        }),
    }
}

/// Adds `"seq": seq` to an encoded server message (a JSON object or a
/// MessagePack map, as [`encode`] writes them): numbered per recipient, so
/// it is added to each recipient's frame rather than to the shared message.
pub fn with_seq(frame: Encoded, seq: u64) -> Encoded {
    match frame {
        Encoded::Text(mut t) => {
            if t.ends_with('}') {
                t.pop();
                // `{}` cannot be a server message: every one has a `type`.
                use std::fmt::Write as _;
                let _ = write!(t, ",\"seq\":{seq}}}");
            }
            Encoded::Text(t)
        }
        Encoded::Binary(mut b) => {
            // The entry count is in the map's header: a fixmap (up to 15
            // entries) or a map16.
            let grown = match b.first().copied() {
                Some(h @ 0x80..=0x8e) => {
                    b[0] = h + 1;
                    true
                }
                Some(0x8f) => {
                    // 15 + 1 entries no longer fit a fixmap.
                    b.splice(0..1, [0xde, 0x00, 0x10]);
                    true
                }
                Some(0xde) if b.len() >= 3 => {
                    let n = u16::from_be_bytes([b[1], b[2]]);
                    match n.checked_add(1) {
                        Some(n) => {
                            b[1..3].copy_from_slice(&n.to_be_bytes());
                            true
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if grown {
                b.extend_from_slice(&[0xa3, b's', b'e', b'q', 0xcf]);
                b.extend_from_slice(&seq.to_be_bytes());
            }
            Encoded::Binary(b)
        }
    }
}

/// A `signal` or `message` for a MessagePack client whose `data` came from
/// one: the map rmp-serde would write (`type` first, then the fields in
/// order), with the sender's `data` bytes copied in as they are.
fn msgpack_with_data(ty: &str, fields: &[(&str, &str); 2], data: &MsgPackValue) -> Vec<u8> {
    fn str(out: &mut Vec<u8>, s: &str) {
        let n = s.len();
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n <= 0xff {
            out.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= 0xffff {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }
    let d = data.as_bytes();
    let names: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(d.len() + ty.len() + names + 20);
    out.push(0x84); // a map of four entries
    str(&mut out, "type");
    str(&mut out, ty);
    for (k, v) in fields {
        str(&mut out, k);
        str(&mut out, v);
    }
    str(&mut out, "data");
    out.extend_from_slice(d);
    out
}
