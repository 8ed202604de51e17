//! The native protocol as the generator speaks it, with only the fields it
//! needs: the messages it sends, what it reads from the server's (unknown
//! fields are ignored), their JSON or MessagePack encoding, and the peer ids
//! of a run.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The subprotocol that selects MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";

#[derive(Serialize)]
pub struct Hello<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub peer_id: &'a str,
}

#[derive(Serialize)]
pub struct Join<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub room: &'a str,
}

#[derive(Serialize)]
pub struct PairOut<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub pool: &'a str,
}

#[derive(Serialize)]
pub struct SignalOut<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub to: &'a str,
    pub kind: &'static str,
    pub data: SignalData<'a>,
}

#[derive(Serialize)]
pub struct SignalData<'a> {
    pub seq: u64,
    pub ts: u64,
    pub pad: &'a str,
}

/// A server message, loosely: unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub data: Option<InData>,
    /// `paired`: the pairing's id.
    #[serde(default)]
    pub pairing_id: Option<String>,
    /// `paired`: `initiator` or `responder`.
    #[serde(default)]
    pub role: Option<String>,
    /// `paired`: the partner (`{peer_id, ...}`); other messages use `peer` differently.
    #[serde(default)]
    pub peer: Option<Value>,
}

/// The `data` of a relayed signal.
#[derive(Debug, Deserialize)]
pub struct InData {
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub ts: u64,
}

pub fn encode<T: Serialize>(msgpack: bool, v: &T) -> Message {
    if msgpack {
        Message::Binary(rmp_serde::to_vec_named(v).expect("message encodes").into())
    } else {
        Message::Text(serde_json::to_string(v).expect("message encodes").into())
    }
}

/// Decodes a data frame; `None` for control frames.
pub fn decode(m: &Message) -> Option<Result<Incoming, String>> {
    let r = match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).map_err(|e| e.to_string()),
        Message::Binary(b) => rmp_serde::from_slice(b).map_err(|e| e.to_string()),
        _ => return None,
    };
    Some(r)
}

/// A random id for this run: its peer ids are `lg{run}-...`, so that runs
/// against the same node do not collide.
pub fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_both_codecs() {
        for msgpack in [false, true] {
            let m = encode(
                msgpack,
                &SignalOut {
                    ty: "signal",
                    to: "b",
                    kind: "candidate",
                    data: SignalData {
                        seq: 3,
                        ts: 42,
                        pad: "xx",
                    },
                },
            );
            assert_eq!(matches!(m, Message::Binary(_)), msgpack);
            let inc = decode(&m).expect("a data frame").expect("decodes");
            assert_eq!(inc.ty, "signal");
            let d = inc.data.expect("data");
            assert_eq!((d.seq, d.ts), (3, 42));
        }
        assert!(decode(&Message::Ping(Vec::new().into())).is_none());
        assert!(decode(&Message::Text("{".into())).unwrap().is_err());
    }
}
