//! Typed attribute values, as OTLP carries them.

/// One attribute value. Arrays and key-value lists nest; decoders bound the depth.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    KvList(Attributes),
    Empty,
}

impl AttrValue {
    /// The value as a search would compare it: strings as they are, scalars in their usual text form.
    pub fn to_text(&self) -> Option<String> {
        match self {
            AttrValue::Str(s) => Some(s.clone()),
            AttrValue::Bool(b) => Some(b.to_string()),
            AttrValue::Int(i) => Some(i.to_string()),
            AttrValue::Double(d) => Some(d.to_string()),
            _ => None,
        }
    }

    /// An integer, also when the data plane sent it as a string (Envoy sends every value as a string).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            AttrValue::Str(s) => s.trim().parse().ok(),
            AttrValue::Double(d) if d.fract() == 0.0 => Some(*d as i64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}

impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// An ordered list of attributes. Order is the sender's; lookups take the first match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attributes(pub Vec<(String, AttrValue)>);

impl Attributes {
    pub fn new() -> Self {
        Attributes(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first of `keys` that is present: for reading current and older semantic-convention names.
    pub fn get_any(&self, keys: &[&str]) -> Option<&AttrValue> {
        keys.iter().find_map(|k| self.get(k))
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(AttrValue::as_str)
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<AttrValue>) {
        self.0.push((key.into(), value.into()));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl FromIterator<(String, AttrValue)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, AttrValue)>>(iter: I) -> Self {
        Attributes(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_i64_reads_envoy_string_values() {
        assert_eq!(AttrValue::from("503").as_i64(), Some(503));
        assert_eq!(AttrValue::Int(200).as_i64(), Some(200));
        assert_eq!(AttrValue::from("-").as_i64(), None);
    }

    #[test]
    fn get_any_prefers_the_first_name() {
        let mut a = Attributes::new();
        a.push("http.status_code", "500");
        a.push("http.response.status_code", 502i64);
        let v = a.get_any(&["http.response.status_code", "http.status_code"]);
        assert_eq!(v, Some(&AttrValue::Int(502)));
    }
}
