//! Deserialization of opaque payloads (`meta`, `data`) into JSON values from
//! either codec.
//!
//! `serde_json::Value` refuses what MessagePack can carry but JSON cannot: a
//! binary blob (`bin`) and map keys that are not strings. Rather than failing
//! the whole frame, a blob becomes an array of byte values and a non-string
//! key becomes its text (`1` -> `"1"`), so a MessagePack client's payload
//! always reaches a JSON peer.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value deserialized leniently from JSON or MessagePack.
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
