//! Opaque payloads (`meta`, `data`): lenient deserialization into JSON values
//! from either codec, [`Opaque`], the pass-through form of `data`, and the
//! scans that check a payload's nesting depth before anything is built of it.
//!
//! `serde_json::Value` refuses what MessagePack can carry but JSON cannot: a
//! binary blob (`bin`) and map keys that are not strings. Rather than failing
//! the whole frame, a blob becomes an array of byte values and a non-string
//! key becomes its text (`1` -> `"1"`), so a MessagePack client's payload
//! always reaches a JSON peer.
//!
//! Depth: a value tree is built, cloned and dropped recursively, and other
//! parsers on the way (Redis's Lua cjson, the bus decoder of another node)
//! have depth limits of their own. So a frame is scanned before it is
//! parsed ([`json_depth_within`], [`scan_msgpack_frame`]: no tree, no
//! recursion beyond the limit), and one that nests deeper than
//! `limits.max_nesting_depth` is refused whole.

use std::cell::Cell;
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
/// stays the MessagePack bytes the client sent ([`MsgPackValue`]): copied
/// as is to MessagePack recipients, transcoded for JSON ones.
///
/// Either way a queued message holds about the payload's size on the wire,
/// never a value tree built of it (see [`Opaque::heap_bytes`]).
#[derive(Debug, Clone)]
pub enum Opaque {
    /// JSON text as received.
    Json(Box<RawValue>),
    /// MessagePack as received.
    MsgPack(MsgPackValue),
    /// A value (`null`, server-made payloads, and `data` from a node that
    /// still sends values over the bus).
    Value(Value),
}

impl Opaque {
    /// JSON `null`.
    pub const NULL: Opaque = Opaque::Value(Value::Null);

    /// The payload as a value (parses JSON text, reads MessagePack leniently).
    pub fn to_value(&self) -> Value {
        match self {
            // Valid JSON by construction: `RawValue` only holds checked text.
            Opaque::Json(r) => serde_json::from_str(r.get()).unwrap_or(Value::Null),
            Opaque::MsgPack(m) => rmp_serde::from_slice::<Payload>(m.as_bytes())
                .map(|Payload(v)| v)
                .unwrap_or(Value::Null),
            Opaque::Value(v) => v.clone(),
        }
    }

    /// An upper bound of the heap the payload holds.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Opaque::Json(r) => r.get().len(),
            Opaque::MsgPack(m) => m.as_bytes().len(),
            Opaque::Value(v) => value_heap_bytes(v),
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
            (Opaque::MsgPack(a), Opaque::MsgPack(b)) if a == b => true,
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
/// MessagePack recipient as a string holding the JSON text. MessagePack is
/// written value by value from its bytes (JSON recipients get it with the
/// rules of [`Payload`]); `dialect::native::encode` copies it byte for byte into a
/// MessagePack frame instead.
impl Serialize for Opaque {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Opaque::Value(v) => v.serialize(s),
            Opaque::MsgPack(m) => m.serialize(s),
            Opaque::Json(r) if s.is_human_readable() => r.serialize(s),
            Opaque::Json(r) => match serde_json::from_str::<Value>(r.get()) {
                Ok(v) => v.serialize(s),
                Err(_) => s.serialize_str(r.get()),
            },
        }
    }
}

/// Between nodes (`#[serde(with = "crate::payload::wire")]`): JSON text stays
/// text and MessagePack stays bytes (`M`, a MessagePack `bin`), so a signal
/// relayed across nodes is not parsed on either side. The receiving node
/// checks MessagePack bytes again (well-formed, at most
/// [`wire::MAX_DEPTH`] deep) before it keeps them.
pub mod wire {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;
    use serde_json::Value;

    use super::{MsgPackValue, Opaque};

    /// The deepest MessagePack `data` a node accepts from another: above any
    /// `limits.max_nesting_depth` (at most 100), so it only guards the walk.
    pub const MAX_DEPTH: usize = 128;

    #[derive(Serialize)]
    enum WireRef<'a> {
        J(&'a str),
        V(&'a Value),
        M(Bin<'a>),
    }

    #[derive(Deserialize)]
    enum Wire {
        J(String),
        V(Value),
        M(ByteBuf),
    }

    /// Bytes written as one MessagePack `bin` (serde writes `&[u8]` as an
    /// array of numbers).
    struct Bin<'a>(&'a [u8]);

    impl Serialize for Bin<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    /// Bytes read from a `bin` (or from an array of byte values).
    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(65_536));
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    /// Serializes an [`Opaque`] for the bus.
    pub fn serialize<S: Serializer>(o: &Opaque, s: S) -> Result<S::Ok, S::Error> {
        match o {
            Opaque::Json(r) => WireRef::J(r.get()).serialize(s),
            Opaque::MsgPack(m) => WireRef::M(Bin(m.as_bytes())).serialize(s),
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
            Wire::M(ByteBuf(b)) => MsgPackValue::new(&b, MAX_DEPTH)
                .map(Opaque::MsgPack)
                .map_err(|e| serde::de::Error::custom(format!("MessagePack data: {e:?}"))),
        }
    }
}

/// Why an opaque payload was refused while it was scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not well-formed MessagePack, or a MessagePack `ext` value (which has no
    /// JSON form).
    Malformed,
    /// Arrays and maps nested deeper than allowed.
    TooDeep,
}

/// True when no array or object in `text` is nested more than `max` deep
/// (`1` is depth 0, `[1]` depth 1, `[[1]]` depth 2).
///
/// A cheap scan, not a parser, meant to run before the text is parsed so that
/// no tree deeper than `max` is ever built (text that is not valid JSON
/// passes or fails here and is refused by the parser afterwards). First the
/// opening brackets are counted, strings and all, which the compiler turns
/// into a vector loop: text with no more than `max` of them cannot nest
/// deeper (a signal has a handful), and that is all most frames cost, about
/// 10 ns for 200 bytes. Otherwise brackets are counted outside strings, string
/// bodies skipped eight bytes at a time; nothing is built either way.
pub fn json_depth_within(text: &[u8], max: usize) -> bool {
    opening_brackets(text) <= max || json_depth_within_exact(text, max)
}

/// The `[` and `{` in `text` (`b | 0x20` maps `[` onto `{` and nothing else
/// onto either). Counted in chunks of 255 bytes, so each chunk's count fits
/// the byte-wide lanes of a vector loop.
fn opening_brackets(text: &[u8]) -> usize {
    text.chunks(255)
        .map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b | 0x20 == b'{'))))
        .sum()
}

/// [`json_depth_within`] by counting brackets outside strings.
fn json_depth_within_exact(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        i += 1;
        match b {
            b'"' => i = skip_json_string(text, i),
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The index just past the quote that ends the string whose body starts at
/// `i` (`text.len()` when it does not end).
fn skip_json_string(text: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    loop {
        // Eight bytes at a time while none is a quote or a backslash: the
        // lowest flagged byte of `(x - ONES) & !x & HIGH` is the first zero
        // byte of `x` (flags above it may be false, so only it is used).
        while let Some(chunk) = text.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let q = w ^ QUOTES;
            let b = w ^ BACKSLASHES;
            let hit = ((q.wrapping_sub(ONES) & !q) | (b.wrapping_sub(ONES) & !b)) & HIGH;
            if hit != 0 {
                i += (hit.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match text.get(i) {
            None => return text.len(),
            Some(b'"') => return i + 1,
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
        }
    }
}

/// What [`scan_msgpack_frame`] found in a client's MessagePack frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsgPackFrame {
    /// Where the top-level `data` value is (the key `"data"` of the map).
    pub data: Option<std::ops::Range<usize>>,
    /// Where the top-level `id` value is.
    pub id: Option<std::ops::Range<usize>>,
    /// A value in the frame nests deeper than allowed.
    pub too_deep: bool,
}

/// Walks a MessagePack frame once, without building anything: checks that it
/// is well-formed (and free of `ext` values), that no value in its top-level
/// map (or array) nests more than `max` deep, and finds `data` and `id`.
///
/// An over-deep value is noted and skipped (without recursion), so the `id`
/// is found wherever it comes in the frame. Trailing bytes after the first
/// value are ignored, as rmp-serde ignores them.
pub fn scan_msgpack_frame(buf: &[u8], max: usize) -> Result<MsgPackFrame, ScanError> {
    let mut out = MsgPackFrame::default();
    let (pos, head) = mp_head(buf, 0, true)?;
    let (entries, is_map) = match head {
        Head::Map(n) => (n, true),
        Head::Array(n) => (n, false),
        // A scalar frame: well-formed, and not nested at all.
        Head::Skip(_) => return Ok(out),
    };
    mp_room(buf, pos, entries * if is_map { 2 } else { 1 })?;
    let mut pos = pos;
    for i in 0..entries {
        let key = if is_map {
            let start = pos;
            pos = mp_value_end(buf, pos, 0, max, true, &mut out.too_deep)?;
            Some(&buf[start..pos])
        } else {
            None
        };
        // A top-level array is a struct written positionally: `id` is
        // field 1 and `data` field 8 (see `dialect::native::RawClientMsg`).
        let (is_id, is_data) = match key {
            Some(k) => (mp_is_str(k, "id"), mp_is_str(k, "data")),
            None => (i == 1, i == 8),
        };
        // `ext` is skipped in fields the server ignores, refused in `data`
        // (which is relayed, and has to have a JSON form).
        let start = pos;
        pos = mp_value_end(buf, pos, 0, max, !is_data, &mut out.too_deep)?;
        if is_id {
            out.id = Some(start..pos);
        } else if is_data {
            out.data = Some(start..pos);
        }
    }
    Ok(out)
}

/// Checks that `buf` is exactly one well-formed MessagePack value nested at
/// most `max` deep.
pub fn check_msgpack_value(buf: &[u8], max: usize) -> Result<(), ScanError> {
    let mut too_deep = false;
    let end = mp_value_end(buf, 0, 0, max, false, &mut too_deep)?;
    if too_deep {
        Err(ScanError::TooDeep)
    } else if end != buf.len() {
        Err(ScanError::Malformed)
    } else {
        Ok(())
    }
}

/// True when `v` (a whole MessagePack value) is the string `s` (as `str` or
/// `bin`: serde matches a field name given either way).
fn mp_is_str(v: &[u8], s: &str) -> bool {
    matches!(v.first(), Some(0xa0..=0xbf | 0xc4..=0xc6 | 0xd9..=0xdb))
        && matches!(mp_head(v, 0, false), Ok((at, Head::Skip(end))) if v[at..end] == *s.as_bytes())
}

/// A value's header, as far as walking it is concerned.
enum Head {
    /// A scalar, or a string/bin whose body ends at this offset.
    Skip(usize),
    /// An array of this many values.
    Array(usize),
    /// A map of this many entries.
    Map(usize),
}

/// Reads `n` big-endian bytes at `at` as a length.
fn mp_len(buf: &[u8], at: usize, n: usize) -> Result<usize, ScanError> {
    let b = buf.get(at..at + n).ok_or(ScanError::Malformed)?;
    Ok(b.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
}

/// Parses the header of the value at `pos`: returns where its contents
/// start, and what follows. A string, bin or ext body is bounds-checked
/// here; an `ext` value is malformed unless `ext` is allowed (it is only
/// skipped, never read: it has no JSON form).
fn mp_head(buf: &[u8], pos: usize, ext: bool) -> Result<(usize, Head), ScanError> {
    let m = *buf.get(pos).ok_or(ScanError::Malformed)?;
    let p = pos + 1;
    // A body of `len` bytes after `skip` more bytes at `start`.
    let body = |start: usize, skip: usize, len: usize| -> Result<(usize, Head), ScanError> {
        let end = (start + skip)
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or(ScanError::Malformed)?;
        Ok((start + skip, Head::Skip(end)))
    };
    match m {
        0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Ok((p, Head::Skip(p))),
        0x80..=0x8f => Ok((p, Head::Map(usize::from(m & 0x0f)))),
        0x90..=0x9f => Ok((p, Head::Array(usize::from(m & 0x0f)))),
        0xa0..=0xbf => body(p, 0, usize::from(m & 0x1f)),
        0xc4 | 0xd9 => body(p, 1, mp_len(buf, p, 1)?),
        0xc5 | 0xda => body(p, 2, mp_len(buf, p, 2)?),
        0xc6 | 0xdb => body(p, 4, mp_len(buf, p, 4)?),
        0xcc | 0xd0 => body(p, 0, 1),
        0xcd | 0xd1 => body(p, 0, 2),
        0xca | 0xce | 0xd2 => body(p, 0, 4),
        0xcb | 0xcf | 0xd3 => body(p, 0, 8),
        0xdc => Ok((p + 2, Head::Array(mp_len(buf, p, 2)?))),
        0xdd => Ok((p + 4, Head::Array(mp_len(buf, p, 4)?))),
        0xde => Ok((p + 2, Head::Map(mp_len(buf, p, 2)?))),
        0xdf => Ok((p + 4, Head::Map(mp_len(buf, p, 4)?))),
        // `ext`: a type byte and data (fixext 1, 2, 4, 8, 16; ext 8, 16, 32).
        0xd4..=0xd8 if ext => body(p, 1, 1 << (m - 0xd4)),
        0xc7 if ext => body(p, 2, mp_len(buf, p, 1)?),
        0xc8 if ext => body(p, 3, mp_len(buf, p, 2)?),
        0xc9 if ext => body(p, 5, mp_len(buf, p, 4)?),
        // 0xc1 is never used.
        _ => Err(ScanError::Malformed),
    }
}

/// Every one of `values` takes at least a byte: a count the rest of the
/// buffer cannot hold is malformed (and is refused before any loop runs).
fn mp_room(buf: &[u8], pos: usize, values: usize) -> Result<(), ScanError> {
    if values > buf.len().saturating_sub(pos) {
        Err(ScanError::Malformed)
    } else {
        Ok(())
    }
}

/// The end of the value at `pos`, which sits inside `depth` containers;
/// containers may nest `max` deep. Recursion stops at `max`: a deeper
/// container sets `too_deep` and is skipped by counting (no recursion).
fn mp_value_end(
    buf: &[u8],
    pos: usize,
    depth: usize,
    max: usize,
    ext: bool,
    too_deep: &mut bool,
) -> Result<usize, ScanError> {
    let (mut p, head) = mp_head(buf, pos, ext)?;
    let values = match head {
        Head::Skip(end) => return Ok(end),
        Head::Array(n) => n,
        Head::Map(n) => n.checked_mul(2).ok_or(ScanError::Malformed)?,
    };
    mp_room(buf, p, values)?;
    if depth + 1 > max {
        *too_deep = true;
        return mp_skip_flat(buf, p, values, ext);
    }
    for _ in 0..values {
        p = mp_value_end(buf, p, depth + 1, max, ext, too_deep)?;
    }
    Ok(p)
}

/// Skips `values` values from `pos` without recursion: a container adds its
/// elements to the count still to skip.
fn mp_skip_flat(
    buf: &[u8],
    mut pos: usize,
    mut values: usize,
    ext: bool,
) -> Result<usize, ScanError> {
    while values > 0 {
        values -= 1;
        let (p, head) = mp_head(buf, pos, ext)?;
        let more = match head {
            Head::Skip(end) => {
                pos = end;
                continue;
            }
            Head::Array(n) => n,
            Head::Map(n) => n.checked_mul(2).ok_or(ScanError::Malformed)?,
        };
        values = values.checked_add(more).ok_or(ScanError::Malformed)?;
        mp_room(buf, p, values)?;
        pos = p;
    }
    Ok(pos)
}

/// The MessagePack bytes of one `data` value from a MessagePack client,
/// checked when built: well-formed, free of `ext` values, nested at most
/// `limits.max_nesting_depth` deep. Kept as bytes, so a queued signal costs
/// about its size on the wire (a value tree of it can take thirty times
/// more), a MessagePack recipient gets it byte for byte, and a JSON
/// recipient gets it transcoded as it is written (see [`Payload`] for the
/// rules).
#[derive(Clone, PartialEq, Eq)]
pub struct MsgPackValue(Box<[u8]>);

impl MsgPackValue {
    /// Checks `bytes` (one whole value) and keeps a copy.
    pub fn new(bytes: &[u8], max_depth: usize) -> Result<Self, ScanError> {
        check_msgpack_value(bytes, max_depth)?;
        Ok(Self(bytes.into()))
    }

    /// Wraps bytes [`scan_msgpack_frame`] already checked (the `data` span
    /// of a frame that scanned clean).
    pub(crate) fn from_scanned(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    /// The encoded value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for MsgPackValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgPackValue({} bytes)", self.0.len())
    }
}

impl Serialize for MsgPackValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MpNext(&MpCursor {
            buf: &self.0,
            pos: Cell::new(0),
        })
        .serialize(s)
    }
}

/// A walk through checked MessagePack bytes.
struct MpCursor<'a> {
    buf: &'a [u8],
    pos: Cell<usize>,
}

/// Serializes the value at the cursor, and moves the cursor past it.
struct MpNext<'c, 'a>(&'c MpCursor<'a>);

impl Serialize for MpNext<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        let c = self.0;
        let buf = c.buf;
        let pos = c.pos.get();
        let bad = || S::Error::custom("MessagePack payload is not well-formed");
        let (start, head) = mp_head(buf, pos, false).map_err(|_| bad())?;
        let human = s.is_human_readable();
        match head {
            Head::Array(n) => {
                c.pos.set(start);
                let mut seq = s.serialize_seq(Some(n))?;
                for _ in 0..n {
                    seq.serialize_element(&MpNext(c))?;
                }
                seq.end()
            }
            Head::Map(n) => {
                c.pos.set(start);
                let mut map = s.serialize_map(Some(n))?;
                for _ in 0..n {
                    let key_at = c.pos.get();
                    if human && !mp_is_text(buf, key_at) {
                        // JSON keys are strings: any other key becomes its
                        // JSON text (`1` -> "1"), as in `Payload`.
                        let text = serde_json::to_string(&MpNext(c)).map_err(|_| bad())?;
                        map.serialize_key(&text)?;
                    } else {
                        map.serialize_key(&MpNext(c))?;
                    }
                    map.serialize_value(&MpNext(c))?;
                }
                map.end()
            }
            Head::Skip(end) => {
                c.pos.set(end);
                let body = &buf[start..end];
                let be = |n: usize| -> u64 {
                    body[..n]
                        .iter()
                        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
                };
                let bytes = |s: S, b: &[u8]| {
                    if human {
                        s.collect_seq(b)
                    } else {
                        s.serialize_bytes(b)
                    }
                };
                match buf[pos] {
                    m @ 0x00..=0x7f => s.serialize_u64(u64::from(m)),
                    m @ 0xe0..=0xff => s.serialize_i64(i64::from(m as i8)),
                    0xc0 => s.serialize_unit(),
                    0xc2 => s.serialize_bool(false),
                    0xc3 => s.serialize_bool(true),
                    0xcc => s.serialize_u64(be(1)),
                    0xcd => s.serialize_u64(be(2)),
                    0xce => s.serialize_u64(be(4)),
                    0xcf => s.serialize_u64(be(8)),
                    0xd0 => s.serialize_i64(i64::from(be(1) as u8 as i8)),
                    0xd1 => s.serialize_i64(i64::from(be(2) as u16 as i16)),
                    0xd2 => s.serialize_i64(i64::from(be(4) as u32 as i32)),
                    0xd3 => s.serialize_i64(be(8) as i64),
                    0xca => {
                        let f = f32::from_bits(be(4) as u32);
                        if human {
                            s.serialize_f64(f64::from(f))
                        } else {
                            s.serialize_f32(f)
                        }
                    }
                    0xcb => s.serialize_f64(f64::from_bits(be(8))),
                    0xa0..=0xbf | 0xd9..=0xdb => match std::str::from_utf8(body) {
                        Ok(t) => s.serialize_str(t),
                        // Not UTF-8: the bytes, as rmp-serde hands them to `Payload`.
                        Err(_) => bytes(s, body),
                    },
                    0xc4..=0xc6 => bytes(s, body),
                    _ => Err(bad()),
                }
            }
        }
    }
}

/// True when the value at `pos` is a string that is valid UTF-8.
fn mp_is_text(buf: &[u8], pos: usize) -> bool {
    matches!(buf.get(pos), Some(0xa0..=0xbf | 0xd9..=0xdb))
        && matches!(mp_head(buf, pos, false), Ok((start, Head::Skip(end))) if std::str::from_utf8(&buf[start..end]).is_ok())
}

/// An upper bound of the heap a value tree holds (what it pins while queued).
///
/// A map is a B-tree whose nodes hold up to eleven entries and (but for the
/// root) at least five: per entry, at most the fifth of a node (a key, a
/// value and the node's share of links), plus the root node itself.
pub fn value_heap_bytes(v: &Value) -> usize {
    const VALUE: usize = std::mem::size_of::<Value>();
    const KEY: usize = std::mem::size_of::<String>();
    const NODE: usize = 11 * (KEY + VALUE) + 12 * std::mem::size_of::<usize>() + 16;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(a) => a.capacity() * VALUE + a.iter().map(value_heap_bytes).sum::<usize>(),
        Value::Object(m) => {
            NODE + m
                .iter()
                .map(|(k, v)| NODE / 5 + k.capacity() + value_heap_bytes(v))
                .sum::<usize>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        // Both the exact scan and the counting shortcut in front of it.
        let within = |t: &str, max| {
            let exact = json_depth_within_exact(t.as_bytes(), max);
            assert_eq!(json_depth_within(t.as_bytes(), max), exact, "{t}");
            exact
        };
        assert_eq!(opening_brackets("[{]}\"[ {".repeat(100).as_bytes()), 400);
        assert!(within("1", 0));
        assert!(!within("[]", 0));
        assert!(within("[[1],[2]]", 2));
        assert!(!within("[[1],[[2]]]", 2));
        assert!(within(r#"{"a":[{"b":1}]}"#, 3));
        assert!(!within(r#"{"a":[{"b":{}}]}"#, 3));
        // Brackets in strings, escaped quotes and backslashes, at every
        // offset around the eight-byte steps of the string scan.
        for pad in 0..20 {
            let p = "x".repeat(pad);
            for body in [r"[[[[", r#"\"[[[["#, r"\\", r#"[\"]\\"#, r"\u005b"] {
                let t = format!(r#"["{p}{body}",["{body}{p}"]]"#);
                assert!(within(&t, 2), "{t}");
                assert!(!within(&t, 1), "{t}");
                // After an escaped backslash the quote ends the string.
                let t = format!(r#"["{p}\\",[[1]]]"#);
                assert!(!within(&t, 2), "{t}");
            }
        }
        // Unterminated strings and stray closers do not panic.
        assert!(within(r#"["abc"#, 1));
        assert!(within("]]]]}[", 1));
    }

    #[test]
    fn msgpack_scan_refuses_what_is_not_well_formed() {
        let check = |b: &[u8]| check_msgpack_value(b, 64);
        assert_eq!(check(&[0x91, 0x01]), Ok(()));
        assert_eq!(check(&[0xc1]), Err(ScanError::Malformed));
        assert_eq!(check(&[]), Err(ScanError::Malformed));
        // A count the buffer cannot hold is refused before any loop runs.
        assert_eq!(
            check(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(ScanError::Malformed)
        );
        assert_eq!(
            check(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(ScanError::Malformed)
        );
        // Truncated string, bin, number; a trailing byte.
        assert_eq!(check(&[0xa3, b'a']), Err(ScanError::Malformed));
        assert_eq!(check(&[0xc5, 0x01, 0x00, 0x00]), Err(ScanError::Malformed));
        assert_eq!(check(&[0xcb, 0, 0, 0]), Err(ScanError::Malformed));
        assert_eq!(check(&[0x01, 0x02]), Err(ScanError::Malformed));
        // `ext` is never a payload.
        assert_eq!(check(&[0xd4, 0x01, 0x00]), Err(ScanError::Malformed));
        // Depth: the limit itself passes.
        let nested = |d: usize| {
            let mut v = vec![0x81; d];
            v.iter_mut().for_each(|b| *b = 0x91);
            v.push(0xc0);
            v
        };
        assert_eq!(check_msgpack_value(&nested(3), 3), Ok(()));
        assert_eq!(check_msgpack_value(&nested(4), 3), Err(ScanError::TooDeep));
        // Maps count too (a key and a value per entry).
        let maps = [0x81, 0x01, 0x81, 0x02, 0x91, 0xc0];
        assert_eq!(check_msgpack_value(&maps, 3), Ok(()));
        assert_eq!(check_msgpack_value(&maps, 2), Err(ScanError::TooDeep));
        // Far past the limit is skipped without recursion, and still checked.
        let mut deep = nested(1_000_000);
        assert_eq!(check_msgpack_value(&deep, 64), Err(ScanError::TooDeep));
        deep.pop();
        assert_eq!(check_msgpack_value(&deep, 64), Err(ScanError::Malformed));
    }

    #[test]
    fn msgpack_scan_of_a_frame_finds_data_and_id_and_skips_ext_elsewhere() {
        let frame =
            rmp_serde::to_vec_named(&json!({"type": "signal", "id": 5, "data": [1, [2]]})).unwrap();
        let scan = scan_msgpack_frame(&frame, 64).unwrap();
        assert!(!scan.too_deep);
        assert_eq!(&frame[scan.data.unwrap()], &[0x92, 0x01, 0x91, 0x02]);
        assert_eq!(&frame[scan.id.unwrap()], &[0x05]);
        assert!(scan_msgpack_frame(&frame, 1).unwrap().too_deep);
        // ext in a field the server ignores: skipped.
        let frame = [0x81, 0xa2, b't', b's', 0xc7, 0x01, 0xff, 0x00];
        assert_eq!(scan_msgpack_frame(&frame, 64), Ok(MsgPackFrame::default()));
        let frame = [0x81, 0xa4, b'd', b'a', b't', b'a', 0xd4, 0xff, 0x00];
        assert_eq!(scan_msgpack_frame(&frame, 64), Err(ScanError::Malformed));
    }

    #[test]
    fn msgpack_data_crosses_the_bus_as_bytes_and_is_checked_again() {
        #[derive(Serialize, serde::Deserialize, Debug)]
        struct Ev {
            #[serde(with = "wire")]
            data: Opaque,
        }
        let bytes = [0x92, 0xc4, 0x02, 0x01, 0x02, 0xcd, 0x00, 0x05];
        let ev = Ev {
            data: Opaque::MsgPack(MsgPackValue::new(&bytes, 64).unwrap()),
        };
        let enc = rmp_serde::to_vec_named(&ev).unwrap();
        // One `bin` holding the bytes (not an array of numbers).
        assert!(enc
            .windows(10)
            .any(|w| w[..2] == [0xc4, 8] && w[2..] == bytes));
        let back: Ev = rmp_serde::from_slice(&enc).unwrap();
        match back.data {
            Opaque::MsgPack(m) => assert_eq!(m.as_bytes(), bytes),
            other => panic!("expected MessagePack, got {other:?}"),
        }
        // Bytes that are not one well-formed value are refused.
        let bad = rmp_serde::to_vec_named(&json!({"data": {"M": [0x92, 0x01]}})).unwrap();
        assert!(rmp_serde::from_slice::<Ev>(&bad).is_err());
    }
}
