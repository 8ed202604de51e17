//! Opaque payloads (`meta`, `data`): lenient deserialization into JSON values
//! from either codec, and [`Opaque`], the pass-through form of `data`.
//!
//! `serde_json::Value` refuses what MessagePack can carry but JSON cannot: a
//! binary blob (`bin`) and map keys that are not strings. Rather than failing
//! the whole frame, a blob becomes an array of byte values and a non-string
//! key becomes its text (`1` -> `"1"`), so a MessagePack client's payload
//! always reaches a JSON peer.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// A JSON value deserialized leniently from JSON or MessagePack.
#[derive(Debug, Default)]
pub struct Payload(pub Value);

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Payload, E> {
        Ok(Payload(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Payload, E> {
        Ok(Payload(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Payload, E> {
        Ok(Payload(Value::Number(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Payload, E> {
        Ok(Payload(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Payload, E> {
        Ok(Payload(Value::String(v)))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload(Value::Array(
            v.iter().map(|b| Value::Number((*b).into())).collect(),
        )))
    }
    fn visit_none<E>(self) -> Result<Payload, E> {
        Ok(Payload(Value::Null))
    }
    fn visit_unit<E>(self) -> Result<Payload, E> {
        Ok(Payload(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Payload, D::Error> {
        Payload::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Payload(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Payload(Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut out = Map::new();
        while let Some(Payload(k)) = map.next_key()? {
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let Payload(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Payload(Value::Object(out)))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

/// `deserialize_with` helper for an optional payload field.
pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let Payload(v) = Payload::deserialize(d)?;
    Ok(Some(v))
}

/// The opaque payload of a `signal` or `broadcast` (`data`), carried without
/// being looked into.
///
/// From a JSON client it stays the JSON text the client sent: checked to be
/// valid JSON while the frame is decoded, but never built into a tree, and
/// written to JSON recipients as is, so relaying a signal costs one copy of
/// its payload instead of a parse, a tree of allocations and a re-escape of
/// every string (an SDP is kilobytes of them). Only a MessagePack recipient
/// needs it as a value, and gets it parsed then. From a MessagePack client it
/// is a [`Value`] (read leniently, see [`Payload`]).
#[derive(Debug, Clone)]
pub enum Opaque {
    /// JSON text as received.
    Json(Box<RawValue>),
    /// A value.
    Value(Value),
}

impl Opaque {
    /// JSON `null`.
    pub const NULL: Opaque = Opaque::Value(Value::Null);

    /// The payload as a value (parses JSON text).
    pub fn to_value(&self) -> Value {
        match self {
            // Valid JSON by construction: `RawValue` only holds checked text.
            Opaque::Json(r) => serde_json::from_str(r.get()).unwrap_or(Value::Null),
            Opaque::Value(v) => v.clone(),
        }
    }
}

impl From<Value> for Opaque {
    fn from(v: Value) -> Self {
        Opaque::Value(v)
    }
}

impl From<Box<RawValue>> for Opaque {
    fn from(r: Box<RawValue>) -> Self {
        Opaque::Json(r)
    }
}

impl From<Payload> for Opaque {
    fn from(Payload(v): Payload) -> Self {
        Opaque::Value(v)
    }
}

impl PartialEq for Opaque {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Opaque::Json(a), Opaque::Json(b)) if a.get() == b.get() => true,
            _ => self.to_value() == other.to_value(),
        }
    }
}

impl PartialEq<Value> for Opaque {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

/// To clients: JSON text goes out as is to a JSON (human-readable) encoder,
/// and as the value it stands for to MessagePack. Valid JSON text that has no
/// value form (a number beyond the range of a double, an unpaired surrogate
/// escape: JSON allows both, a JSON recipient gets them unchanged) reaches a
/// MessagePack recipient as a string holding the JSON text.
impl Serialize for Opaque {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Opaque::Value(v) => v.serialize(s),
            Opaque::Json(r) if s.is_human_readable() => r.serialize(s),
            Opaque::Json(r) => match serde_json::from_str::<Value>(r.get()) {
                Ok(v) => v.serialize(s),
                Err(_) => s.serialize_str(r.get()),
            },
        }
    }
}

/// Between nodes (`#[serde(with = "crate::payload::wire")]`): JSON text stays
/// text, so a signal relayed across nodes is not parsed on either side.
pub mod wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;
    use serde_json::Value;

    use super::Opaque;

    #[derive(Serialize)]
    enum WireRef<'a> {
        J(&'a str),
        V(&'a Value),
    }

    #[derive(Deserialize)]
    enum Wire {
        J(String),
        V(Value),
    }

    /// Serializes an [`Opaque`] for the bus.
    pub fn serialize<S: Serializer>(o: &Opaque, s: S) -> Result<S::Ok, S::Error> {
        match o {
            Opaque::Json(r) => WireRef::J(r.get()).serialize(s),
            Opaque::Value(v) => WireRef::V(v).serialize(s),
        }
    }

    /// Deserializes an [`Opaque`] from the bus.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Opaque, D::Error> {
        match Wire::deserialize(d)? {
            Wire::J(s) => RawValue::from_string(s)
                .map(Opaque::Json)
                .map_err(serde::de::Error::custom),
            Wire::V(v) => Ok(Opaque::Value(v)),
        }
    }
}
