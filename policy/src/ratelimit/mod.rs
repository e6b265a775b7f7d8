//! The rate limit service's brain, compatible with envoyproxy/ratelimit: configs compiled to a
//! tree per domain, a request's descriptors matched level by level, limits charged to quotas.

pub mod config;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::limit::{HitSplit, Rate, Unit, Usage};
use crate::quota::{QuotaBackend, QuotaError, QuotaHit};
use crate::ConfigError;
use config::{Descriptors, DomainFile};

/// Most descriptors one request may carry. Envoy sends one per rate limit action list that
/// matched (a handful); 64 is far past any real route.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor (one per action in a list).
pub const MAX_ENTRIES: usize = 32;
/// Longest descriptor key, and domain.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest descriptor value: a header or a path with its query fits.
pub const MAX_VALUE_BYTES: usize = 4096;

/// A limit found for a descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub name: Option<String>,
    pub rate: Rate,
    pub unlimited: bool,
    pub shadow_mode: bool,
    pub replaces: Vec<String>,
    pub detailed_metric: bool,
    /// The config path that set it, as envoyproxy/ratelimit names its stats:
    /// `domain.key_value.key` (a wildcard or key-only level gives its config form).
    pub stats_key: String,
}

impl Limit {
    /// The name quota metrics use: the config path, or with `detailed_metric` the request's own
    /// keys and values (`domain.k1_v1.k2_v2`).
    pub fn metric_key(&self, domain: &str, entries: &[(String, String)]) -> String {
        if !self.detailed_metric {
            return self.stats_key.clone();
        }
        let mut k = domain.to_string();
        for (key, value) in entries {
            k.push('.');
            k.push_str(key);
            if !value.is_empty() {
                k.push('_');
                k.push_str(value);
            }
        }
        k
    }
}

impl RateLimitRequest {
    /// The value of the first entry named `key`, in any descriptor (Envoy's `source_cluster`
    /// and `destination_cluster` actions name the services).
    pub fn entry(&self, key: &str) -> Option<&str> {
        self.descriptors
            .iter()
            .flat_map(|d| &d.entries)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// envoyproxy/ratelimit's refusals of a malformed request, and the bounds on what a request
    /// may carry ([`MAX_DESCRIPTORS`] and the rest): its values become quota keys and graph
    /// names, so a request past them is refused whole rather than stored.
    pub fn validate(&self) -> Result<(), String> {
        if self.domain.is_empty() {
            return Err("rate limit domain must not be empty".into());
        }
        if self.domain.len() > MAX_KEY_BYTES {
            return Err(format!("rate limit domain is over {MAX_KEY_BYTES} bytes"));
        }
        if self.descriptors.is_empty() {
            return Err("rate limit descriptor list must not be empty".into());
        }
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return Err(format!(
                "{} descriptors: at most {MAX_DESCRIPTORS} are taken",
                self.descriptors.len()
            ));
        }
        for (i, d) in self.descriptors.iter().enumerate() {
            if d.entries.len() > MAX_ENTRIES {
                return Err(format!(
                    "descriptors[{i}] has {} entries: at most {MAX_ENTRIES} are taken",
                    d.entries.len()
                ));
            }
            for (j, (k, v)) in d.entries.iter().enumerate() {
                if k.len() > MAX_KEY_BYTES || v.len() > MAX_VALUE_BYTES {
                    return Err(format!(
                        "descriptors[{i}].entries[{j}]: a key is at most {MAX_KEY_BYTES} bytes \
                         and a value at most {MAX_VALUE_BYTES}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A level of config, as envoyproxy/ratelimit holds it: children by their final key (`key`, or
/// `key_value`), and the final keys that end in `*` in config order. A wildcard is a prefix of
/// the request's whole `key_value`, so a key-only `foo*` is a wildcard too.
#[derive(Debug, Default)]
struct Node {
    limit: Option<Arc<Limit>>,
    /// A wildcard with `share_threshold`: its final key; every value it matches counts in one
    /// quota, named by the pattern instead of the request's value.
    share_pattern: Option<String>,
    children: HashMap<String, Node, RandomState>,
    /// Final keys ending in `*`, without the `*`, and the final key itself.
    wildcards: Vec<(String, String)>,
}

impl Node {
    fn has_children(&self) -> bool {
        !self.children.is_empty()
    }

    /// The child a request entry goes to: its exact `key_value`, else the first wildcard that
    /// prefixes it, else its key alone. Says whether a wildcard matched.
    fn step(&self, key: &str, key_value: &str) -> Option<(&Node, bool)> {
        if let Some(n) = self.children.get(key_value) {
            return Some((n, false));
        }
        if let Some((_, fk)) = self
            .wildcards
            .iter()
            .find(|(prefix, _)| key_value.starts_with(prefix.as_str()))
        {
            return self.children.get(fk).map(|n| (n, true));
        }
        self.children.get(key).map(|n| (n, false))
    }
}

/// Every domain's compiled config.
#[derive(Debug, Default)]
pub struct RateLimits {
    domains: HashMap<String, Node, RandomState>,
    /// The files they came from, for the policy page.
    pub files: Vec<PathBuf>,
}

/// One descriptor of a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestDescriptor {
    pub entries: Vec<(String, String)>,
    /// A limit sent by the request, used instead of the config's.
    pub limit_override: Option<(u32, Unit)>,
    /// The descriptor's own hits, over the request's.
    pub hits_addend: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitRequest {
    pub domain: String,
    pub descriptors: Vec<RequestDescriptor>,
    pub hits_addend: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorStatus {
    pub over_limit: bool,
    /// The limit that applied (none: no limit, unlimited or replaced).
    pub limit: Option<Arc<Limit>>,
    pub remaining: u32,
    pub reset_ms: u64,
    /// Over the limit, but the limit is in shadow mode: allowed and counted.
    pub shadow_over_limit: bool,
    /// This check's hits on the limit, split within, near and over it.
    pub hits: HitSplit,
    /// Answered over from the Redis backend's record of keys over their limit, without Redis.
    pub cached: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitDecision {
    pub over_limit: bool,
    pub statuses: Vec<DescriptorStatus>,
}

impl RateLimits {
    /// Compiles domain files (already parsed); a domain in two files is an error.
    pub fn compile(files: Vec<(PathBuf, DomainFile)>) -> Result<RateLimits, ConfigError> {
        let mut out = RateLimits::default();
        for (path, file) in files {
            if out.domains.contains_key(&file.domain) {
                return Err(ConfigError::new(
                    &path,
                    format!("duplicate domain '{}' in config file", file.domain),
                ));
            }
            let mut root = Node::default();
            build(&mut root, &file.domain, &file.descriptors);
            out.domains.insert(file.domain, root);
            out.files.push(path);
        }
        Ok(out)
    }

    /// Reads every `.yaml`/`.yml` file under a directory, subdirectories included, in path
    /// order. Names starting with a dot are skipped, so a Kubernetes ConfigMap mount (with its
    /// `..data` links) is read once.
    pub fn load_dir(dir: &Path) -> Result<RateLimits, ConfigError> {
        RateLimits::load_files(&config_files(dir)?)
    }

    pub fn load_files(paths: &[PathBuf]) -> Result<RateLimits, ConfigError> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, e.to_string()))?;
            let file = DomainFile::parse(&text).map_err(|e| ConfigError::new(path, e))?;
            files.push((path.clone(), file));
        }
        RateLimits::compile(files)
    }

    /// Every configured limit, by domain and config path, sorted.
    pub fn limits(&self) -> Vec<(String, Arc<Limit>)> {
        fn walk(domain: &str, node: &Node, out: &mut Vec<(String, Arc<Limit>)>) {
            if let Some(l) = &node.limit {
                out.push((domain.to_string(), l.clone()));
            }
            for n in node.children.values() {
                walk(domain, n, out);
            }
        }
        let mut out = Vec::new();
        for (domain, root) in &self.domains {
            walk(domain, root, &mut out);
        }
        out.sort_by(|a, b| (&a.0, &a.1.stats_key).cmp(&(&b.0, &b.1.stats_key)));
        out
    }

    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The limit for one descriptor, as envoyproxy/ratelimit finds it: level by level, an exact
    /// key and value first, then the first wildcard that matches, then the key alone; a level
    /// that does not match ends the walk. The limit is the one at the level of the last entry.
    /// A request's own limit wins over the config's when the domain is known.
    pub fn find(&self, domain: &str, d: &RequestDescriptor) -> Option<Arc<Limit>> {
        self.find_with_key(domain, d).map(|(limit, _)| limit)
    }

    /// The limit and the quota key to count it under: `domain_key_value…` with the request's
    /// values, or a shared wildcard's pattern where the config says `share_threshold`.
    pub fn find_with_key(
        &self,
        domain: &str,
        d: &RequestDescriptor,
    ) -> Option<(Arc<Limit>, String)> {
        let root = self.domains.get(domain)?;
        if let Some((requests_per_unit, unit)) = d.limit_override {
            let key = quota_key(domain, &d.entries);
            let limit = Arc::new(Limit {
                name: None,
                rate: Rate {
                    requests_per_unit,
                    unit,
                    algorithm: Default::default(),
                },
                unlimited: false,
                shadow_mode: false,
                replaces: Vec::new(),
                detailed_metric: false,
                stats_key: key.clone(),
            });
            return Some((limit, key));
        }
        let mut node = root;
        let last = d.entries.len().checked_sub(1)?;
        let mut key = String::with_capacity(domain.len() + d.entries.len() * 16);
        key.push_str(domain);
        for (i, (k, value)) in d.entries.iter().enumerate() {
            // The quota key grows by `_key_value`, which is also what the level is looked up by.
            key.push('_');
            let start = key.len();
            key.push_str(k);
            key.push('_');
            key.push_str(value);
            let (next, by_wildcard) = node.step(k, &key[start..])?;
            if let Some(p) = next.share_pattern.as_deref().filter(|_| by_wildcard) {
                // envoyproxy/ratelimit names the shared quota by the pattern's value part.
                key.truncate(start + k.len() + 1);
                key.push_str(
                    p.strip_prefix(k.as_str())
                        .and_then(|p| p.strip_prefix('_'))
                        .unwrap_or(p),
                );
            }
            if i == last {
                return next.limit.clone().map(|l| (l, key));
            }
            if !next.has_children() {
                return None;
            }
            node = next;
        }
        None
    }

    /// Decides a request: finds each descriptor's limit, drops limits that another matched
    /// limit replaces, charges the rest to `quotas` and answers per descriptor.
    pub async fn decide(
        &self,
        req: &RateLimitRequest,
        quotas: &QuotaBackend,
    ) -> Result<RateLimitDecision, QuotaError> {
        let (mut limits, keys): (Vec<Option<Arc<Limit>>>, Vec<Option<String>>) = req
            .descriptors
            .iter()
            .map(|d| match self.find_with_key(&req.domain, d) {
                Some((l, k)) => (Some(l), Some(k)),
                None => (None, None),
            })
            .unzip();
        let replaced: Vec<&str> = limits
            .iter()
            .flatten()
            .flat_map(|l| l.replaces.iter().map(String::as_str))
            .collect();
        if !replaced.is_empty() {
            let names: Vec<String> = replaced.iter().map(|s| s.to_string()).collect();
            // An unlimited limit stays unlimited even when replaced, as envoyproxy/ratelimit
            // sets unlimited ones aside before it drops replaced ones.
            for l in &mut limits {
                if l.as_ref().is_some_and(|l| {
                    !l.unlimited && l.name.as_ref().is_some_and(|n| names.contains(n))
                }) {
                    *l = None;
                }
            }
        }
        // Replaced and unlimited limits count nothing.
        let keys: Vec<Option<String>> = keys
            .into_iter()
            .zip(&limits)
            .map(|(k, l)| k.filter(|_| l.as_ref().is_some_and(|l| !l.unlimited)))
            .collect();
        let charged: Vec<QuotaHit<'_>> = keys
            .iter()
            .zip(&limits)
            .zip(&req.descriptors)
            .filter_map(|((k, l), d)| {
                let (k, l) = (k.as_ref()?, l.as_ref()?);
                Some(QuotaHit {
                    key: k,
                    rate: l.rate,
                    hits: hits_of(req, d),
                })
            })
            .collect();
        let mut usages = quotas.charge(&charged).await?.into_iter();
        let mut charged = charged.iter();
        let mut over_limit = false;
        let statuses = limits
            .into_iter()
            .zip(&keys)
            .map(|(limit, key)| {
                let usage: Option<Usage> = key.as_ref().and_then(|_| usages.next());
                let hits = key
                    .as_ref()
                    .and_then(|_| charged.next())
                    .map_or(0, |h| h.hits);
                match (limit, usage) {
                    (Some(limit), Some(u)) => {
                        let shadow = u.over_limit && limit.shadow_mode;
                        over_limit |= u.over_limit && !shadow;
                        DescriptorStatus {
                            over_limit: u.over_limit && !shadow,
                            remaining: u.remaining,
                            reset_ms: u.reset_ms,
                            hits: u.split(hits, limit.rate.requests_per_unit),
                            cached: u.cached,
                            limit: Some(limit),
                            shadow_over_limit: shadow,
                        }
                    }
                    (limit, _) => {
                        // Unlimited: OK with the most remaining, as envoyproxy/ratelimit says.
                        let unlimited = limit.filter(|l| l.unlimited);
                        DescriptorStatus {
                            over_limit: false,
                            remaining: if unlimited.is_some() { u32::MAX } else { 0 },
                            limit: unlimited,
                            reset_ms: 0,
                            shadow_over_limit: false,
                            hits: HitSplit::default(),
                            cached: false,
                        }
                    }
                }
            })
            .collect();
        Ok(RateLimitDecision {
            over_limit,
            statuses,
        })
    }
}

/// The config files `load_dir` reads, in order.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut paths = Vec::new();
    collect_yaml(dir, &mut paths, 0)?;
    paths.sort();
    Ok(paths)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), ConfigError> {
    if depth > 16 {
        return Err(ConfigError::new(dir, "directories nested too deep"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::new(dir, e.to_string()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| ConfigError::new(dir, e.to_string()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, out, depth + 1)?;
        } else if path.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// A descriptor's hits: its own `hits_addend` where set, else the request's; the request's 0
/// means 1 (the protocol's default), a descriptor's explicit 0 only looks.
fn hits_of(req: &RateLimitRequest, d: &RequestDescriptor) -> u32 {
    match d.hits_addend {
        Some(h) => h.min(u64::from(u32::MAX)) as u32,
        None => req.hits_addend.max(1),
    }
}

/// The quota key of a descriptor: `domain_key_value_key_value`, envoyproxy/ratelimit's form.
pub fn quota_key(domain: &str, entries: &[(String, String)]) -> String {
    let mut k = String::with_capacity(domain.len() + entries.len() * 16);
    k.push_str(domain);
    for (key, value) in entries {
        k.push('_');
        k.push_str(key);
        k.push('_');
        k.push_str(value);
    }
    k
}

fn build(node: &mut Node, path: &str, level: &Descriptors) {
    for d in &level.0 {
        let step = d.final_key();
        let stats_key = format!("{path}.{step}");
        let mut child = Node {
            limit: d.rate_limit.as_ref().map(|r| {
                Arc::new(Limit {
                    name: r.name.clone(),
                    rate: Rate {
                        requests_per_unit: r.requests_per_unit,
                        unit: r.unit.unwrap_or(Unit::Second),
                        algorithm: r.algorithm,
                    },
                    unlimited: r.unlimited,
                    shadow_mode: d.shadow_mode,
                    replaces: r.replaces.clone(),
                    detailed_metric: d.detailed_metric,
                    stats_key: stats_key.clone(),
                })
            }),
            share_pattern: d.share_threshold.then(|| step.clone()),
            children: Default::default(),
            wildcards: Vec::new(),
        };
        build(&mut child, &stats_key, &d.descriptors);
        if let Some(prefix) = step.strip_suffix('*') {
            node.wildcards.push((prefix.to_string(), step.clone()));
        }
        node.children.insert(step, child);
    }
}

#[cfg(test)]
mod tests;
