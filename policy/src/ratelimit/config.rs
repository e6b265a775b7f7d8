//! envoyproxy/ratelimit's YAML config, read as it reads it: one domain per file, nested
//! descriptors with `key`/`value`, `rate_limit` with `unit` and `requests_per_unit` (or
//! `unlimited`), `name` and `replaces`, `shadow_mode`, `detailed_metric`. meshlens adds one key,
//! `rate_limit.algorithm` (`fixed_window`, the default, or `gcra`). Keys are checked as upstream
//! checks them: every key in the file must be one it knows, wherever it is; a known key out of
//! its place (`shadow_mode` inside `rate_limit`) is accepted and has no effect, as there.

use std::collections::HashSet;

use serde::{Deserialize, Deserializer};
use serde_yaml_ng::Value;

use crate::limit::{Algorithm, Unit};
use crate::yaml_at::NodePath;

#[derive(Debug, Clone, Deserialize)]
pub struct DomainFile {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Descriptors,
    #[serde(flatten)]
    _out_of_place: OutOfPlace,
}

/// A level of descriptors; no two siblings share a key and value.
#[derive(Debug, Clone, Default)]
pub struct Descriptors(pub Vec<DescriptorConfig>);

#[derive(Debug, Clone, Deserialize)]
pub struct DescriptorConfig {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub descriptors: Descriptors,
    #[serde(default)]
    pub shadow_mode: bool,
    #[serde(default)]
    pub detailed_metric: bool,
    /// Accepted for compatibility; meshlens' metrics do not use it.
    #[serde(default)]
    pub value_to_metric: bool,
    /// On a wildcard (`value: files/*`): every value it matches counts in one quota, instead of
    /// one quota per value.
    #[serde(default)]
    pub share_threshold: bool,
    #[serde(flatten)]
    _out_of_place: OutOfPlace,
}

impl DescriptorConfig {
    /// The name envoyproxy/ratelimit gives it among its siblings: `key`, or `key_value`.
    pub fn final_key(&self) -> String {
        match self.value.as_deref() {
            Some(v) if !v.is_empty() => format!("{}_{v}", self.key),
            _ => self.key.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawRateLimit")]
pub struct RateLimitConfig {
    pub name: Option<String>,
    pub requests_per_unit: u32,
    /// `None` when unlimited.
    pub unit: Option<Unit>,
    pub unlimited: bool,
    pub replaces: Vec<String>,
    pub algorithm: Algorithm,
}

#[derive(Deserialize)]
struct RawRateLimit {
    #[serde(default)]
    requests_per_unit: u32,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<Replaces>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(flatten)]
    _out_of_place: OutOfPlace,
}

#[derive(Deserialize)]
struct Replaces {
    name: String,
    #[serde(flatten)]
    _out_of_place: OutOfPlace,
}

/// Every key envoyproxy/ratelimit knows (it checks each key of a file against this one set,
/// whatever its level), and meshlens' `algorithm`.
const KNOWN_KEYS: &[&str] = &[
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "algorithm",
];

/// The keys of a mapping that its level does not read: known ones (checked before, by
/// `check_node`) out of their place, ignored as upstream's YAML decoder ignores them.
#[derive(Debug, Clone, Default)]
struct OutOfPlace;

impl<'de> Deserialize<'de> for OutOfPlace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_yaml_ng::Mapping::deserialize(d)?;
        Ok(OutOfPlace)
    }
}

/// Upstream's `validateYamlKeys`, from a node down: every key a string it knows, every list a
/// list of mappings, every value a string, integer, boolean or null.
fn check_node(v: &Value, at: NodePath, text: &str) -> Result<(), String> {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let Value::String(k) = k else {
                    let shown = serde_yaml_ng::to_string(k).unwrap_or_default();
                    return Err(at.error(
                        text,
                        format!("config error, key is not of type string: {}", shown.trim()),
                    ));
                };
                if !KNOWN_KEYS.contains(&k.as_str()) {
                    return Err(at
                        .key(k.as_str())
                        .error(text, format!("config error, unknown key '{k}'")));
                }
                check_node(v, at.clone().key(k.as_str()), text)?;
            }
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, e) in items.iter().enumerate() {
                let here = at.clone().index(i);
                if !e.is_mapping() {
                    return Err(here.error(
                        text,
                        "config error, yaml file contains list of type other than map",
                    ));
                }
                check_node(e, here, text)?;
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
        _ => Err(at.error(
            text,
            "error checking config (a value that is not a string, integer, boolean or null)",
        )),
    }
}

impl TryFrom<RawRateLimit> for RateLimitConfig {
    type Error = String;

    fn try_from(raw: RawRateLimit) -> Result<Self, String> {
        let unit = match (&raw.unit, raw.unlimited) {
            // As envoyproxy/ratelimit: only a valid unit beside `unlimited` is refused.
            (Some(u), true) if Unit::parse(u).is_some() => {
                return Err(format!(
                    "should not specify rate limit unit when unlimited (unit '{u}')"
                ))
            }
            (_, true) => None,
            (Some(u), false) => {
                Some(Unit::parse(u).ok_or_else(|| format!("invalid rate limit unit '{u}'"))?)
            }
            (None, false) => return Err("invalid rate limit unit ''".into()),
        };
        let algorithm = match &raw.algorithm {
            None => Algorithm::default(),
            Some(a) => Algorithm::parse(a).ok_or_else(|| {
                format!("invalid rate limit algorithm '{a}' (fixed_window or gcra)")
            })?,
        };
        let mut replaces = Vec::with_capacity(raw.replaces.len());
        for r in raw.replaces {
            if r.name.is_empty() {
                return Err("should not have an empty replaces entry".into());
            }
            if raw.name.as_deref() == Some(r.name.as_str()) {
                return Err("replaces should not contain name of same descriptor".into());
            }
            replaces.push(r.name);
        }
        Ok(RateLimitConfig {
            name: raw.name.filter(|n| !n.is_empty()),
            requests_per_unit: raw.requests_per_unit,
            unit,
            unlimited: raw.unlimited,
            replaces,
            algorithm,
        })
    }
}

impl<'de> Deserialize<'de> for Descriptors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(DescriptorsVisitor)
    }
}

/// Reads a level; an absent or null one is empty.
struct DescriptorsVisitor;

impl<'de> serde::de::Visitor<'de> for DescriptorsVisitor {
    type Value = Descriptors;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of descriptors")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Descriptors, E> {
        Ok(Descriptors::default())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Descriptors, E> {
        Ok(Descriptors::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Descriptors, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Descriptors, A::Error> {
        let mut list = Vec::new();
        while let Some(desc) = seq.next_element::<DescriptorConfig>()? {
            list.push(desc);
        }
        Ok(Descriptors(list))
    }
}

impl DomainFile {
    /// Parses one file's text; errors name the node and its line and column.
    pub fn parse(text: &str) -> Result<DomainFile, String> {
        // YAML merge keys (`<<: *defaults`), which upstream's YAML decoder applies: such a file
        // is read through its merged value, and its errors name the node without a position.
        // Text that is not YAML, or not a mapping, is refused by the typed parse, with its reason.
        let doc = serde_yaml_ng::from_str::<Value>(text)
            .ok()
            .filter(Value::is_mapping);
        let (file, located): (DomainFile, &str) = match doc {
            Some(mut doc) if has_merge_key(&doc) => {
                doc.apply_merge().map_err(|e| e.to_string())?;
                check_node(&doc, NodePath::default(), "")?;
                let file = DomainFile::deserialize(doc).map_err(|e| e.to_string())?;
                (file, "")
            }
            doc => {
                if let Some(doc) = &doc {
                    check_node(doc, NodePath::default(), text)?;
                }
                let file = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
                (file, text)
            }
        };
        let root = NodePath::default();
        if file.domain.is_empty() {
            return Err(root
                .key("domain")
                .error(located, "config file cannot have empty domain"));
        }
        let parent = format!("{}.", file.domain);
        check_level(&file.descriptors, root.key("descriptors"), &parent, located)?;
        Ok(file)
    }
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// `parent` is the path upstream names a descriptor by (`domain.key_value.`).
fn check_level(level: &Descriptors, at: NodePath, parent: &str, text: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, d) in level.0.iter().enumerate() {
        let here = at.clone().index(i);
        if d.key.is_empty() {
            return Err(here.error(text, "descriptor has empty key"));
        }
        let key = d.final_key();
        if !seen.insert(key.clone()) {
            return Err(here.error(
                text,
                format!("duplicate descriptor composite key '{parent}{key}'"),
            ));
        }
        if d.share_threshold && !key.ends_with('*') {
            return Err(here.error(
                text,
                format!(
                    "share_threshold can only be used with wildcard values (ending with '*'), but found key '{key}'"
                ),
            ));
        }
        check_level(
            &d.descriptors,
            here.key("descriptors"),
            &format!("{parent}{key}."),
            text,
        )?;
    }
    Ok(())
}
