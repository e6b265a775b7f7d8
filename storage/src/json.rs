//! The stored JSON form of attributes, a serializable counterpart of the domain types.
//!
//! Scalars and arrays are plain JSON (a double always keeps its decimal point, so it reads back as a
//! double); bytes are `{"bytes":"<base64>"}` and key-value lists `{"kvlist":{…}}`, so every JSON object
//! in a value is a tagged wrapper and decoding is unambiguous.

use std::borrow::Cow;

use base64::Engine;
use meshlens_topology::{AttrValue, Attributes};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

pub struct AttrsJson<'a>(pub &'a Attributes);
pub struct ValueJson<'a>(pub &'a AttrValue);

impl Serialize for AttrsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            map.serialize_entry(&*nul_free(k), &ValueJson(v))?;
        }
        map.end()
    }
}

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            AttrValue::Str(v) => s.serialize_str(&nul_free(v)),
            AttrValue::Bool(v) => s.serialize_bool(*v),
            AttrValue::Int(v) => s.serialize_i64(*v),
            AttrValue::Double(v) => s.serialize_f64(*v),
            AttrValue::Bytes(v) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "bytes",
                    &base64::engine::general_purpose::STANDARD.encode(v),
                )?;
                map.end()
            }
            AttrValue::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&ValueJson(item))?;
                }
                seq.end()
            }
            AttrValue::KvList(kv) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("kvlist", &AttrsJson(kv))?;
                map.end()
            }
            AttrValue::Empty => s.serialize_unit(),
        }
    }
}

/// PostgreSQL refuses NUL in text and `\u0000` in JSONB; one bad attribute must not fail a whole
/// group commit, so NUL becomes U+FFFD in every dialect alike.
pub fn nul_free(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

pub fn attrs_to_string(a: &Attributes) -> String {
    // Serializing plain data into a String cannot fail.
    serde_json::to_string(&AttrsJson(a)).unwrap_or_else(|_| "{}".to_string())
}

pub fn attrs_from_value(v: Value) -> Attributes {
    match v {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| (k, value_from_json(v)))
            .collect(),
        _ => Attributes::new(),
    }
}

fn value_from_json(v: Value) -> AttrValue {
    match v {
        Value::Null => AttrValue::Empty,
        Value::Bool(b) => AttrValue::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => AttrValue::Int(i),
            _ => AttrValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AttrValue::Str(s),
        Value::Array(items) => AttrValue::Array(items.into_iter().map(value_from_json).collect()),
        Value::Object(mut map) => {
            if let Some(Value::String(b64)) = map.get("bytes") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_default();
                return AttrValue::Bytes(bytes);
            }
            match map.remove("kvlist") {
                Some(inner) => AttrValue::KvList(attrs_from_value(inner)),
                None => AttrValue::Empty,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_value_round_trips() {
        let mut inner = Attributes::new();
        inner.push("k", "v");
        let mut a = Attributes::new();
        a.push("s", "text");
        a.push("b", true);
        a.push("i", -42i64);
        a.0.push(("d".into(), AttrValue::Double(1.0)));
        a.0.push(("by".into(), AttrValue::Bytes(vec![0, 1, 255])));
        a.0.push((
            "arr".into(),
            AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Str("x".into())]),
        ));
        a.0.push(("kv".into(), AttrValue::KvList(inner)));
        a.0.push(("e".into(), AttrValue::Empty));
        let text = attrs_to_string(&a);
        let back = attrs_from_value(serde_json::from_str(&text).unwrap());
        let mut want = a.0.clone();
        let mut got = back.0.clone();
        want.sort_by(|x, y| x.0.cmp(&y.0));
        got.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(got, want);
    }
}
