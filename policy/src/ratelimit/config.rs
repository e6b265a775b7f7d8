//! envoyproxy/ratelimit's YAML config, read as it reads it: one domain per file, nested
//! descriptors with `key`/`value`, `rate_limit` with `unit` and `requests_per_unit` (or
//! `unlimited`), `name` and `replaces`, `shadow_mode`, `detailed_metric`. meshlens adds one key,
//! `rate_limit.algorithm` (`fixed_window`, the default, or `gcra`). Unknown keys are errors.

use std::collections::HashSet;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::limit::{Algorithm, Unit};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainFile {
    pub domain: String,
    #[serde(default)]
    pub descriptors: Descriptors,
}

/// A level of descriptors; no two siblings share a key and value.
#[derive(Debug, Clone, Default)]
pub struct Descriptors(pub Vec<DescriptorConfig>);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replaces {
    name: String,
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

/// Checks siblings while reading them, so a duplicate is reported where it is (with its line).
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
        let mut seen = HashSet::new();
        while let Some(desc) = seq.next_element::<DescriptorConfig>()? {
            let composite = match desc.value.as_deref() {
                Some(v) if !v.is_empty() => format!("{}_{}", desc.key, v),
                _ => desc.key.clone(),
            };
            if !seen.insert(composite.clone()) {
                return Err(A::Error::custom(format!(
                    "duplicate descriptor composite key '{composite}'"
                )));
            }
            list.push(desc);
        }
        Ok(Descriptors(list))
    }
}

impl DomainFile {
    /// Parses one file's text; errors carry the line and column where YAML knows them.
    pub fn parse(text: &str) -> Result<DomainFile, String> {
        let file: DomainFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if file.domain.is_empty() {
            return Err("config file cannot have empty domain".into());
        }
        check_keys(&file.descriptors)?;
        Ok(file)
    }
}

fn check_keys(level: &Descriptors) -> Result<(), String> {
    for d in &level.0 {
        if d.key.is_empty() {
            return Err("descriptor has empty key".into());
        }
        if d.share_threshold && !d.value.as_deref().is_some_and(|v| v.ends_with('*')) {
            let key = match d.value.as_deref() {
                Some(v) if !v.is_empty() => format!("{}_{v}", d.key),
                _ => d.key.clone(),
            };
            return Err(format!(
                "share_threshold can only be used with wildcard values (ending with '*'), but found key '{key}'"
            ));
        }
        check_keys(&d.descriptors)?;
    }
    Ok(())
}
