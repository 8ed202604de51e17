//! JSON as Python's `json` module reads and writes it, byte for byte: the
//! room signaling server parsed every frame with `json.loads` and wrote every
//! frame with `json.dumps` (default arguments), forwarding an offer as
//! `json.dumps(json.loads(frame))`. Its clients see these bytes, so the door
//! writes the same ones:
//!
//! - separators `", "` and `": "`;
//! - `ensure_ascii`: every character outside `' '..='~'` is escaped, as
//!   `\uXXXX` in lower-case hex, one escape per UTF-16 unit (a character
//!   beyond the BMP becomes a surrogate pair), with the short forms `\"`,
//!   `\\`, `\b`, `\f`, `\n`, `\r`, `\t`; `/` is not escaped, DEL is;
//! - objects keep their keys in the order they came; a repeated key keeps
//!   the place of its first occurrence and the value of its last (a Python
//!   dict);
//! - a number with a fraction or an exponent is a float, written as
//!   Python's `repr` writes it (shortest digits that round-trip; exponent
//!   form below 1e-4 and from 1e16 on, with a sign and two digits at least:
//!   `1e+16`, `1.5e-07`; `1.0` keeps its `.0`), an overflow is `Infinity`;
//!   any other number is an integer, kept digit for digit (Python's are
//!   unbounded), `-0` written `0`;
//! - `NaN`, `Infinity` and `-Infinity` are read and written, as Python does.
//!
//! A string is held in its written (escaped) form from the start: that is
//! what is forwarded, and a lone surrogate (`"\ud800"`, which Python
//! accepts) survives as it does in Python. The few fields the door reads
//! are decoded on demand ([`PyStr::to_plain`]).
//!
//! serde_json cannot do this: its maps sort their keys (the crate does not
//! enable `preserve_order`, and turning it on would change every other
//! door's output), it writes floats its own way, and it refuses lone
//! surrogates and `NaN`.

use std::fmt::Write as _;

/// A value as Python's `json.loads` makes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    /// `None`.
    Null,
    /// A bool.
    Bool(bool),
    /// An integer: its digits as read (`-0` as `0`).
    Int(Box<str>),
    /// A float.
    Float(f64),
    /// A string.
    Str(PyStr),
    /// A list.
    List(Vec<Py>),
    /// A dict.
    Dict(Dict),
}

/// A string in its `json.dumps` form, without the quotes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PyStr(Box<str>);

/// A dict: its items in insertion order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dict(Vec<(PyStr, Py)>);

/// Why text is not JSON as Python reads it (the frame is then ignored; the
/// text of the error is for logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct ParseError {
    /// What was wrong.
    pub what: &'static str,
    /// Where.
    pub at: usize,
}

/// Appends the `json.dumps` escape of one UTF-16 unit.
fn escape_unit(out: &mut String, u: u16) {
    match u {
        0x22 => out.push_str("\\\""),
        0x5c => out.push_str("\\\\"),
        0x08 => out.push_str("\\b"),
        0x0c => out.push_str("\\f"),
        0x0a => out.push_str("\\n"),
        0x0d => out.push_str("\\r"),
        0x09 => out.push_str("\\t"),
        0x20..=0x7e => out.push(u as u8 as char),
        _ => {
            let _ = write!(out, "\\u{u:04x}");
        }
    }
}

fn escape_char(out: &mut String, c: char) {
    let mut buf = [0u16; 2];
    for u in c.encode_utf16(&mut buf) {
        escape_unit(out, *u);
    }
}

impl PyStr {
    /// The string `s`.
    pub fn new(s: &str) -> Self {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            escape_char(&mut out, c);
        }
        Self(out.into())
    }

    /// Its `json.dumps` form, without the quotes.
    pub fn escaped(&self) -> &str {
        &self.0
    }

    /// The string itself; `None` when it holds a lone surrogate (no Rust
    /// string can).
    pub fn to_plain(&self) -> Option<String> {
        String::from_utf16(&self.units()).ok()
    }

    /// The string with its lone surrogates replaced by U+FFFD.
    pub fn to_lossy(&self) -> String {
        String::from_utf16_lossy(&self.units())
    }

    /// Its UTF-16 units (decoding the escapes this module wrote).
    fn units(&self) -> Vec<u16> {
        let b = self.0.as_bytes();
        let mut units: Vec<u16> = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'\\' {
                units.push(u16::from(b[i]));
                i += 1;
                continue;
            }
            // Escapes written by `escape_unit`: always complete.
            let u = match b[i + 1] {
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => 0x0a,
                b'r' => 0x0d,
                b't' => 0x09,
                b'u' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 6]).expect("ASCII hex");
                    i += 4;
                    u16::from_str_radix(hex, 16).expect("hex")
                }
                other => u16::from(other),
            };
            units.push(u);
            i += 2;
        }
        units
    }
}

impl Dict {
    /// An empty dict.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Py> {
        let k = PyStr::new(key);
        self.0.iter().find(|(kk, _)| *kk == k).map(|(_, v)| v)
    }

    /// The string value of `key`, decoded; `None` when absent, not a
    /// string, or not representable.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Py::Str(s) => s.to_plain(),
            _ => None,
        }
    }

    /// Sets `key` as a Python dict does: in place when present, else last.
    pub fn insert(&mut self, key: PyStr, value: Py) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// With `key` set (a builder for the door's own frames).
    pub fn with(mut self, key: &str, value: impl Into<Py>) -> Self {
        self.insert(PyStr::new(key), value.into());
        self
    }

    /// The items, in order.
    pub fn items(&self) -> impl Iterator<Item = (&PyStr, &Py)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `json.dumps` of the dict.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        write_dict(&mut out, self);
        out
    }
}

impl From<&str> for Py {
    fn from(s: &str) -> Self {
        Py::Str(PyStr::new(s))
    }
}

impl From<String> for Py {
    fn from(s: String) -> Self {
        Py::Str(PyStr::new(&s))
    }
}

impl From<Dict> for Py {
    fn from(d: Dict) -> Self {
        Py::Dict(d)
    }
}

impl From<u64> for Py {
    fn from(n: u64) -> Self {
        Py::Int(n.to_string().into())
    }
}

impl From<f64> for Py {
    fn from(f: f64) -> Self {
        Py::Float(f)
    }
}

impl From<Vec<Py>> for Py {
    fn from(l: Vec<Py>) -> Self {
        Py::List(l)
    }
}

impl Py {
    /// Python's truthiness (`if not data.get(...)`): `None`, `False`, zero,
    /// and empty strings, lists and dicts are false.
    pub fn truthy(&self) -> bool {
        match self {
            Py::Null => false,
            Py::Bool(b) => *b,
            Py::Int(d) => &**d != "0",
            Py::Float(f) => *f != 0.0,
            Py::Str(s) => !s.0.is_empty(),
            Py::List(l) => !l.is_empty(),
            Py::Dict(d) => !d.is_empty(),
        }
    }

    /// `json.dumps` of the value.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        write_value(&mut out, self);
        out
    }

    /// The value as a `serde_json::Value` (to store it): an integer too
    /// large for 64 bits becomes a float, a non-finite float `null`, a lone
    /// surrogate U+FFFD.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as V;
        match self {
            Py::Null => V::Null,
            Py::Bool(b) => V::Bool(*b),
            Py::Int(d) => {
                if let Ok(i) = d.parse::<i64>() {
                    V::from(i)
                } else if let Ok(u) = d.parse::<u64>() {
                    V::from(u)
                } else {
                    d.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map_or(V::Null, V::Number)
                }
            }
            Py::Float(f) => serde_json::Number::from_f64(*f).map_or(V::Null, V::Number),
            Py::Str(s) => V::String(s.to_lossy()),
            Py::List(l) => V::Array(l.iter().map(Py::to_json).collect()),
            Py::Dict(d) => V::Object(
                d.items()
                    .map(|(k, v)| (k.to_lossy(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A `serde_json::Value` as Python would have read it (integers stay
    /// integers, other numbers are floats). Object keys come in the value's
    /// order (sorted, for serde_json's maps).
    pub fn from_json(v: &serde_json::Value) -> Py {
        use serde_json::Value as V;
        match v {
            V::Null => Py::Null,
            V::Bool(b) => Py::Bool(*b),
            V::Number(n) => {
                if n.is_i64() || n.is_u64() {
                    Py::Int(n.to_string().into())
                } else {
                    Py::Float(n.as_f64().unwrap_or(0.0))
                }
            }
            V::String(s) => Py::Str(PyStr::new(s)),
            V::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            V::Object(o) => {
                let mut d = Dict::new();
                for (k, v) in o {
                    d.insert(PyStr::new(k), Py::from_json(v));
                }
                Py::Dict(d)
            }
        }
    }
}

/// Python's `repr` of a float (what `json.dumps` writes, `float.__repr__`).
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives as few digits as round-trip, as Python's repr
    // does; but where two such strings are equally close to the value
    // (892931130068994.25: `.2` or `.3`), Python takes the even digit and
    // Rust may not. Exact formatting to that many digits rounds half to
    // even, and the nearest string of that length round-trips whenever
    // any does.
    let shortest = format!("{:e}", f.abs());
    let digits = shortest
        .split_once('e')
        .expect("`{:e}` has an exponent")
        .0
        .bytes()
        .filter(u8::is_ascii_digit)
        .count();
    let sci = format!("{:.*e}", digits - 1, f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    // Python: the decimal point after `decpt` digits; exponent form when
    // decpt <= -4 or decpt > 16.
    let decpt = exp + 1;
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', decpt.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        if decpt >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', decpt - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    out
}

fn write_value(out: &mut String, v: &Py) {
    match v {
        Py::Null => out.push_str("null"),
        Py::Bool(true) => out.push_str("true"),
        Py::Bool(false) => out.push_str("false"),
        Py::Int(d) => out.push_str(d),
        Py::Float(f) => out.push_str(&float_repr(*f)),
        Py::Str(s) => {
            out.push('"');
            out.push_str(&s.0);
            out.push('"');
        }
        Py::List(l) => {
            out.push('[');
            for (i, item) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Py::Dict(d) => write_dict(out, d),
    }
}

fn write_dict(out: &mut String, d: &Dict) {
    out.push('{');
    for (i, (k, v)) in d.0.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(&k.0);
        out.push_str("\": ");
        write_value(out, v);
    }
    out.push('}');
}

/// Parses `text` as `json.loads` does, with lists and dicts nested at most
/// `max_depth` deep (`[[1]]` is 2).
pub fn loads(text: &str, max_depth: usize) -> Result<Py, ParseError> {
    let mut p = Parser {
        s: text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
        max_depth,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.err("extra data"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError { what, at: self.i }
    }

    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Py, ParseError> {
        match self.b.get(self.i) {
            None => Err(self.err("expecting value")),
            Some(b'"') => self.string().map(Py::Str),
            Some(b'{') => self.nested(Self::dict),
            Some(b'[') => self.nested(Self::list),
            Some(b'n') if self.eat(b"null") => Ok(Py::Null),
            Some(b't') if self.eat(b"true") => Ok(Py::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(Py::Bool(false)),
            Some(b'N') if self.eat(b"NaN") => Ok(Py::Float(f64::NAN)),
            Some(b'I') if self.eat(b"Infinity") => Ok(Py::Float(f64::INFINITY)),
            Some(b'-') if self.b[self.i..].starts_with(b"-Infinity") => {
                self.i += "-Infinity".len();
                Ok(Py::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expecting value")),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Py, ParseError>) -> Result<Py, ParseError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.err("nested too deep"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn list(&mut self) -> Result<Py, ParseError> {
        self.i += 1;
        let mut out = Vec::new();
        self.ws();
        if self.eat(b"]") {
            return Ok(Py::List(out));
        }
        loop {
            self.ws();
            out.push(self.value()?);
            self.ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"]") {
                return Ok(Py::List(out));
            }
            return Err(self.err("expecting ',' delimiter"));
        }
    }

    fn dict(&mut self) -> Result<Py, ParseError> {
        self.i += 1;
        let mut out = Dict::new();
        self.ws();
        if self.eat(b"}") {
            return Ok(Py::Dict(out));
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.err("expecting property name enclosed in double quotes"));
            }
            let k = self.string()?;
            self.ws();
            if !self.eat(b":") {
                return Err(self.err("expecting ':' delimiter"));
            }
            self.ws();
            let v = self.value()?;
            out.insert(k, v);
            self.ws();
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"}") {
                return Ok(Py::Dict(out));
            }
            return Err(self.err("expecting ',' delimiter"));
        }
    }

    fn hex4(&mut self) -> Result<u16, ParseError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .ok_or_else(|| self.err("invalid \\uXXXX escape"))?;
        let u = u16::from_str_radix(std::str::from_utf8(h).expect("hex digits"), 16)
            .expect("four hex digits");
        self.i += 4;
        Ok(u)
    }

    fn string(&mut self) -> Result<PyStr, ParseError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            // A run of bytes that need no decoding.
            let start = self.i;
            while self
                .b
                .get(self.i)
                .is_some_and(|c| (0x20..0x7f).contains(c) && *c != b'"' && *c != b'\\')
            {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.b[start..self.i]).expect("ASCII"));
            match self.b.get(self.i) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(PyStr(out.into()));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let unit = match self.b.get(self.i) {
                        Some(b'"') => 0x22,
                        Some(b'\\') => 0x5c,
                        Some(b'/') => 0x2f,
                        Some(b'b') => 0x08,
                        Some(b'f') => 0x0c,
                        Some(b'n') => 0x0a,
                        Some(b'r') => 0x0d,
                        Some(b't') => 0x09,
                        Some(b'u') => {
                            self.i += 1;
                            let u = self.hex4()?;
                            escape_unit(&mut out, u);
                            continue;
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    self.i += 1;
                    escape_unit(&mut out, unit);
                }
                Some(c) if *c < 0x20 => return Err(self.err("invalid control character")),
                Some(_) => {
                    // One character, DEL or beyond ASCII: `i` is on a
                    // character boundary (only whole characters are skipped).
                    let c = self.s[self.i..].chars().next().expect("not at the end");
                    self.i += c.len_utf8();
                    escape_char(&mut out, c);
                }
            }
        }
    }

    fn number(&mut self) -> Result<Py, ParseError> {
        let start = self.i;
        self.eat(b"-");
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
            }
            _ => return Err(self.err("expecting value")),
        }
        let mut float = false;
        // A fraction or an exponent counts only when digits follow, as in
        // Python's scanner (`1.` is the integer 1, then extra data).
        if self.b.get(self.i) == Some(&b'.')
            && self.b.get(self.i + 1).is_some_and(u8::is_ascii_digit)
        {
            float = true;
            self.i += 1;
            while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            let mut j = self.i + 1;
            if matches!(self.b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if self.b.get(j).is_some_and(u8::is_ascii_digit) {
                float = true;
                self.i = j;
                while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).expect("ASCII");
        if float {
            Ok(Py::Float(text.parse().map_err(|_| self.err("bad number"))?))
        } else if text == "-0" {
            Ok(Py::Int("0".into()))
        } else {
            Ok(Py::Int(text.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(s: &str) -> String {
        loads(s, 64).unwrap_or_else(|e| panic!("{s}: {e}")).dumps()
    }

    /// Each expectation is what CPython 3 prints for
    /// `json.dumps(json.loads(text))`.
    #[test]
    fn reserializes_as_python_does() {
        let text = "{\"a\":1.0,\"b\":1e16,\"c\":1.5e-7,\"d\":0.0001,\"e\":1e-5,\
            \"f\":123456789012345678901234567890,\"g\":-0,\"h\":-0.0,\"i\":1E400,\
            \"j\":\"é😀\\u00e9\\ud800x\\u007f\u{7f}\\/\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u0041\",\
            \"k\":[],\"l\":{},\"m\":null,\"n\":true,\"o\":[1,[2,{\"p\":-1.25e-300}]],\"a\":3,\
            \"q\":12345678901234567.0,\"r\":1e15,\"s\":5e-324,\"t\":-1E-400, \"u\": NaN, \
            \"v\": -Infinity, \"w\": 0.1e1}";
        assert_eq!(
            roundtrip(text),
            "{\"a\": 3, \"b\": 1e+16, \"c\": 1.5e-07, \"d\": 0.0001, \"e\": 1e-05, \
             \"f\": 123456789012345678901234567890, \"g\": 0, \"h\": -0.0, \"i\": Infinity, \
             \"j\": \"\\u00e9\\ud83d\\ude00\\u00e9\\ud800x\\u007f\\u007f/\\\"\\\\\\b\\f\\n\\r\\t\\u0001A\", \
             \"k\": [], \"l\": {}, \"m\": null, \"n\": true, \"o\": [1, [2, {\"p\": -1.25e-300}]], \
             \"q\": 1.2345678901234568e+16, \"r\": 1000000000000000.0, \"s\": 5e-324, \"t\": -0.0, \
             \"u\": NaN, \"v\": -Infinity, \"w\": 1.0}"
        );
    }

    #[test]
    fn an_offer_keeps_its_keys_in_order_and_its_extra_keys() {
        let offer = r#"{"type":"offer","sender":"Client-1489","target":"Worker-3108","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n","extra":{"z":1,"a":[true,false]}}"#;
        assert_eq!(
            roundtrip(offer),
            r#"{"type": "offer", "sender": "Client-1489", "target": "Worker-3108", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n", "extra": {"z": 1, "a": [true, false]}}"#
        );
        // What it writes, it reads back the same (forwarding twice changes nothing).
        let once = roundtrip(offer);
        assert_eq!(roundtrip(&once), once);
    }

    #[test]
    fn floats_print_as_python_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (123.456, "123.456"),
            (-1.5, "-1.5"),
            (1e22, "1e+22"),
            (2.5e-5, "2.5e-05"),
            (1e-4, "0.0001"),
            (0.00012, "0.00012"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.0, "0.0"),
            // Exactly halfway between two 16-digit strings: the even one.
            (892_931_130_068_994.0 + 0.25, "892931130068994.2"),
            (0.375, "0.375"),
            (-0.0, "-0.0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn strings_read_back_and_lone_surrogates_survive() {
        let v = loads(r#"{"peer_id":"Zoë 😀","bad":"\ud800","k":"a\u0000b"}"#, 8).unwrap();
        let Py::Dict(d) = &v else { panic!() };
        assert_eq!(d.get_str("peer_id").as_deref(), Some("Zoë 😀"));
        assert_eq!(d.get_str("bad"), None);
        assert_eq!(d.get_str("k").as_deref(), Some("a\0b"));
        assert_eq!(
            v.to_json(),
            serde_json::json!({"peer_id": "Zoë 😀", "bad": "\u{fffd}", "k": "a\u{0}b"})
        );
        assert_eq!(
            Dict::new()
                .with("type", "error")
                .with("reason", "Zoë")
                .dumps(),
            r#"{"type": "error", "reason": "Zo\u00eb"}"#
        );
    }

    #[test]
    fn what_python_refuses_is_refused() {
        for bad in [
            "",
            "{",
            "{\"a\":1,}",
            "[1,]",
            "{'a':1}",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            ".5",
            "+1",
            "\"a\tb\"",
            "\"\\x\"",
            "\"\\u12\"",
            "nul",
            "{} {}",
            "[1 2]",
            "\"abc",
        ] {
            assert!(loads(bad, 8).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(roundtrip(" \t\r\n[ 1 , -2 ] \n"), "[1, -2]");
        assert_eq!(roundtrip("1e5"), "100000.0");
        assert_eq!(roundtrip("1E+2"), "100.0");
        // Depth: `[[1]]` is 2.
        assert!(loads("[[1]]", 2).is_ok());
        assert_eq!(loads("[[[1]]]", 2).unwrap_err().what, "nested too deep");
        assert!(loads(&"[".repeat(100_000), 64).is_err());
    }

    #[test]
    fn truthiness_is_pythons() {
        for (text, want) in [
            ("null", false),
            ("false", false),
            ("0", false),
            ("-0", false),
            ("0.0", false),
            ("\"\"", false),
            ("[]", false),
            ("{}", false),
            ("true", true),
            ("1", true),
            ("0.5", true),
            ("\"0\"", true),
            ("[0]", true),
            ("{\"a\":null}", true),
        ] {
            assert_eq!(loads(text, 8).unwrap().truthy(), want, "{text}");
        }
    }
}
