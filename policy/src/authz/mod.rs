//! Authorization and quota rules for ext_authz Check, decided as Istio's AuthorizationPolicy
//! decides: a matching DENY rule denies; then, if any ALLOW rule guards the destination, the
//! request must match one of them; AUDIT rules only record. Allowed requests are then charged
//! to every quota rule they match, and refused (429) when one is exhausted.

pub mod config;

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;

use crate::limit::{Algorithm, Rate, Unit, Usage};
use crate::quota::{QuotaBackend, QuotaError, QuotaHit};
use crate::yaml_at::NodePath;
use crate::ConfigError;
use config::{OperationConfig, PolicyFile, SourceConfig};

/// What a Check request says about the call, converted from Envoy's `AttributeContext`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckAttributes {
    pub source_service: Option<String>,
    pub source_principal: Option<String>,
    pub source_namespace: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub destination: Option<String>,
    pub host: String,
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
}

impl CheckAttributes {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Exact, `prefix*`, `*suffix` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(s) => f.write_str(s),
            Pattern::Prefix(p) => write!(f, "{p}*"),
            Pattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(p) => v.ends_with(p.as_str()),
        }
    }
}

/// Any of the patterns; an empty list matches everything, a missing value nothing else.
fn any_of(patterns: &[Pattern], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

#[derive(Debug, Clone, Default)]
struct Matcher {
    destinations: Vec<Pattern>,
    services: Vec<Pattern>,
    principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    ip_blocks: Vec<IpNet>,
    hosts: Vec<Pattern>,
    methods: Vec<Pattern>,
    paths: Vec<Pattern>,
    headers: Vec<(String, Vec<Pattern>)>,
}

impl Matcher {
    /// What the matcher requires, as `field=a,b` terms (empty: matches everything).
    fn describe(&self) -> String {
        fn list<T: std::fmt::Display>(items: &[T]) -> String {
            items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
        let mut terms = Vec::new();
        for (field, items) in [
            ("destination", &self.destinations),
            ("source.service", &self.services),
            ("source.principal", &self.principals),
            ("source.namespace", &self.namespaces),
            ("host", &self.hosts),
            ("method", &self.methods),
            ("path", &self.paths),
        ] {
            if !items.is_empty() {
                terms.push(format!("{field}={}", list(items)));
            }
        }
        if !self.ip_blocks.is_empty() {
            terms.push(format!("source.ip={}", list(&self.ip_blocks)));
        }
        for (name, pats) in &self.headers {
            terms.push(format!("header:{name}={}", list(pats)));
        }
        terms.join(" ")
    }

    fn compile(
        destinations: &[String],
        source: &SourceConfig,
        operation: &OperationConfig,
        headers: &std::collections::BTreeMap<String, Vec<String>>,
        what: &str,
    ) -> Result<Matcher, String> {
        let pats = |v: &[String]| v.iter().map(|s| Pattern::parse(s)).collect::<Vec<_>>();
        let ip_blocks = source
            .ip_blocks
            .iter()
            .map(|b| {
                b.parse::<IpNet>()
                    .or_else(|_| b.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{what}: invalid ip_block '{b}'"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            destinations: pats(destinations),
            services: pats(&source.services),
            principals: pats(&source.principals),
            namespaces: pats(&source.namespaces),
            ip_blocks,
            hosts: pats(&operation.hosts),
            methods: pats(&operation.methods),
            paths: pats(&operation.paths),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), pats(v)))
                .collect(),
        })
    }

    fn guards(&self, a: &CheckAttributes) -> bool {
        any_of(&self.destinations, a.destination.as_deref())
    }

    fn matches(&self, a: &CheckAttributes) -> bool {
        self.guards(a)
            && any_of(&self.services, a.source_service.as_deref())
            && any_of(&self.principals, a.source_principal.as_deref())
            && any_of(&self.namespaces, a.source_namespace.as_deref())
            && (self.ip_blocks.is_empty()
                || a.source_ip
                    .is_some_and(|ip| self.ip_blocks.iter().any(|b| b.contains(&ip))))
            && any_of(&self.hosts, Some(a.host.as_str()))
            && any_of(&self.methods, Some(a.method.as_str()))
            && any_of(&self.paths, Some(a.path.as_str()))
            && self
                .headers
                .iter()
                .all(|(name, pats)| any_of(pats, a.header(name)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// A rule as the policy page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSummary {
    pub name: Arc<str>,
    pub action: &'static str,
    /// What it matches, as `field=a,b` terms.
    pub matches: String,
}

impl QuotaRule {
    /// What the quota applies to, as `field=a,b` terms, and the parts of its key.
    pub fn describe(&self) -> (String, String) {
        let key = self
            .key
            .iter()
            .map(|k| match k {
                KeyPart::SourceService => "source.service".to_string(),
                KeyPart::SourceNamespace => "source.namespace".to_string(),
                KeyPart::SourcePrincipal => "source.principal".to_string(),
                KeyPart::SourceIp => "source.ip".to_string(),
                KeyPart::Destination => "destination.service".to_string(),
                KeyPart::Host => "request.host".to_string(),
                KeyPart::Method => "request.method".to_string(),
                KeyPart::Path => "request.path".to_string(),
                KeyPart::Header(h) => format!("header:{h}"),
            })
            .collect::<Vec<_>>()
            .join(" + ");
        (self.matcher.describe(), key)
    }
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    action: Action,
    matcher: Matcher,
    add_headers: Vec<(String, String)>,
}

/// A part of a quota key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    SourceService,
    SourceNamespace,
    SourcePrincipal,
    SourceIp,
    Destination,
    Host,
    Method,
    Path,
    Header(String),
}

impl KeyPart {
    fn parse(s: &str) -> Option<KeyPart> {
        Some(match s {
            "source.service" => KeyPart::SourceService,
            "source.namespace" => KeyPart::SourceNamespace,
            "source.principal" => KeyPart::SourcePrincipal,
            "source.ip" => KeyPart::SourceIp,
            "destination.service" => KeyPart::Destination,
            "request.host" => KeyPart::Host,
            "request.method" => KeyPart::Method,
            "request.path" => KeyPart::Path,
            _ => KeyPart::Header(s.strip_prefix("header:")?.to_ascii_lowercase()),
        })
    }

    fn value<'a>(&self, a: &'a CheckAttributes) -> Option<Cow<'a, str>> {
        match self {
            KeyPart::SourceService => a.source_service.as_deref().map(Cow::Borrowed),
            KeyPart::SourceNamespace => a.source_namespace.as_deref().map(Cow::Borrowed),
            KeyPart::SourcePrincipal => a.source_principal.as_deref().map(Cow::Borrowed),
            KeyPart::SourceIp => a.source_ip.map(|ip| Cow::Owned(ip.to_string())),
            KeyPart::Destination => a.destination.as_deref().map(Cow::Borrowed),
            KeyPart::Host => Some(Cow::Borrowed(&a.host)),
            KeyPart::Method => Some(Cow::Borrowed(&a.method)),
            KeyPart::Path => Some(Cow::Borrowed(&a.path)),
            KeyPart::Header(h) => a.header(h).map(Cow::Borrowed),
        }
    }
}

#[derive(Debug)]
pub struct QuotaRule {
    pub name: Arc<str>,
    matcher: Matcher,
    key: Vec<KeyPart>,
    pub rate: Rate,
}

/// A compiled policy file (or several, concatenated).
#[derive(Debug, Default)]
pub struct AuthzPolicy {
    rules: Vec<Rule>,
    quotas: Vec<QuotaRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// `rule`: the ALLOW rule that let it through (none when no ALLOW rule guards the
    /// destination). `headers`: to add to the request.
    Allow {
        rule: Option<Arc<str>>,
        headers: Vec<(String, String)>,
    },
    /// HTTP 403.
    Deny {
        rule: Option<Arc<str>>,
        reason: String,
    },
    /// HTTP 429: a quota rule is exhausted.
    RateLimited {
        quota: Arc<str>,
        rate: Rate,
        usage: Usage,
    },
    /// HTTP 503, retryable: the quotas could not be counted and the engine fails closed.
    Unavailable { reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthzDecision {
    pub verdict: Verdict,
    /// AUDIT rules the request matched.
    pub audited: Vec<Arc<str>>,
    /// The quotas charged and their answers (the tightest is the one to report in headers).
    pub quotas: Vec<(Arc<str>, Rate, Usage)>,
}

/// The path of a policy file's `rules` or `quotas` entry.
fn item(section: &str, i: usize) -> NodePath {
    NodePath::default().key(section).index(i)
}

impl AuthzPolicy {
    /// Parses a policy file's text; errors name the rule or quota and its line and column.
    pub fn parse(text: &str) -> Result<AuthzPolicy, String> {
        let file: PolicyFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        AuthzPolicy::compile(file, text)
    }

    /// Reads and joins policy files in order; a name may appear once across them.
    pub fn load_files(paths: &[impl AsRef<Path>]) -> Result<AuthzPolicy, ConfigError> {
        let mut all = AuthzPolicy::default();
        let mut names = HashSet::new();
        for path in paths {
            let path = path.as_ref();
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, e.to_string()))?;
            let p = AuthzPolicy::parse(&text).map_err(|e| ConfigError::new(path, e))?;
            let named = p
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| (item("rules", i), &r.name))
                .chain(
                    p.quotas
                        .iter()
                        .enumerate()
                        .map(|(i, q)| (item("quotas", i), &q.name)),
                );
            for (at, name) in named {
                if !names.insert(name.clone()) {
                    return Err(ConfigError::new(
                        path,
                        at.error(
                            &text,
                            format!("duplicate name '{name}' (in an earlier file)"),
                        ),
                    ));
                }
            }
            all.rules.extend(p.rules);
            all.quotas.extend(p.quotas);
        }
        Ok(all)
    }

    fn compile(file: PolicyFile, text: &str) -> Result<AuthzPolicy, String> {
        let mut names = HashSet::new();
        let mut check_name = |name: &str, what: &str| {
            if name.is_empty() {
                return Err(format!("{what} without a name"));
            }
            if !names.insert(name.to_string()) {
                return Err(format!("duplicate name '{name}'"));
            }
            Ok(())
        };
        let fail = |at: NodePath, e: String| at.error(text, e);
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            let at = item("rules", i);
            check_name(&r.name, "rule").map_err(|e| fail(at.clone(), e))?;
            let what = format!("rule '{}'", r.name);
            let action = match r.action.to_ascii_uppercase().as_str() {
                "ALLOW" => Action::Allow,
                "DENY" => Action::Deny,
                "AUDIT" => Action::Audit,
                other => {
                    return Err(fail(
                        at.key("action"),
                        format!("{what}: invalid action '{other}' (ALLOW, DENY or AUDIT)"),
                    ))
                }
            };
            if action != Action::Allow && !r.add_headers.is_empty() {
                return Err(fail(
                    at.key("add_headers"),
                    format!("{what}: add_headers is for ALLOW rules only"),
                ));
            }
            rules.push(Rule {
                matcher: Matcher::compile(
                    &r.destinations,
                    &r.source,
                    &r.operation,
                    &r.headers,
                    &what,
                )
                .map_err(|e| fail(at, e))?,
                name: r.name.into(),
                action,
                add_headers: r.add_headers.into_iter().collect(),
            });
        }
        let mut quotas = Vec::with_capacity(file.quotas.len());
        for (i, q) in file.quotas.into_iter().enumerate() {
            let at = item("quotas", i);
            check_name(&q.name, "quota").map_err(|e| fail(at.clone(), e))?;
            let what = format!("quota '{}'", q.name);
            if q.key.is_empty() {
                return Err(fail(
                    at.key("key"),
                    format!("{what}: key must name at least one attribute"),
                ));
            }
            let key = q
                .key
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    KeyPart::parse(k).ok_or_else(|| {
                        fail(
                            at.clone().key("key").index(j),
                            format!(
                                "{what}: invalid key part '{k}' (source.service, source.namespace, \
                                 source.principal, source.ip, destination.service, request.host, \
                                 request.method, request.path or header:<name>)"
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let unit = Unit::parse(&q.unit).ok_or_else(|| {
                fail(
                    at.clone().key("unit"),
                    format!("{what}: invalid rate limit unit '{}'", q.unit),
                )
            })?;
            let algorithm = match &q.algorithm {
                None => Algorithm::default(),
                Some(a) => Algorithm::parse(a).ok_or_else(|| {
                    fail(
                        at.clone().key("algorithm"),
                        format!("{what}: invalid algorithm '{a}' (fixed_window or gcra)"),
                    )
                })?,
            };
            quotas.push(QuotaRule {
                matcher: Matcher::compile(
                    &q.destinations,
                    &q.source,
                    &q.operation,
                    &q.headers,
                    &what,
                )
                .map_err(|e| fail(at, e))?,
                name: q.name.into(),
                key,
                rate: Rate {
                    requests_per_unit: q.requests_per_unit,
                    unit,
                    algorithm,
                },
            });
        }
        Ok(AuthzPolicy { rules, quotas })
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Each rule's name, action and what it matches, in evaluation order within its action.
    pub fn rule_summaries(&self) -> Vec<RuleSummary> {
        self.rules
            .iter()
            .map(|r| RuleSummary {
                name: r.name.clone(),
                action: r.action.as_str(),
                matches: r.matcher.describe(),
            })
            .collect()
    }

    pub fn quota_rules(&self) -> &[QuotaRule] {
        &self.quotas
    }

    /// The rules alone, without quotas.
    pub fn evaluate(&self, a: &CheckAttributes) -> (Verdict, Vec<Arc<str>>) {
        let audited: Vec<Arc<str>> = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Audit && r.matcher.matches(a))
            .map(|r| r.name.clone())
            .collect();
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.action == Action::Deny && r.matcher.matches(a))
        {
            let reason = format!("denied by rule {}", r.name);
            return (
                Verdict::Deny {
                    rule: Some(r.name.clone()),
                    reason,
                },
                audited,
            );
        }
        let mut guarded = false;
        for r in self.rules.iter().filter(|r| r.action == Action::Allow) {
            guarded |= r.matcher.guards(a);
            if r.matcher.matches(a) {
                return (
                    Verdict::Allow {
                        rule: Some(r.name.clone()),
                        headers: r.add_headers.clone(),
                    },
                    audited,
                );
            }
        }
        let verdict = if guarded {
            Verdict::Deny {
                rule: None,
                reason: "no ALLOW rule matched".into(),
            }
        } else {
            Verdict::Allow {
                rule: None,
                headers: Vec::new(),
            }
        };
        (verdict, audited)
    }

    /// Rules, then the quotas of an allowed request. A quota whose key names an attribute the
    /// request lacks does not apply (as Envoy's rate limit actions skip a missing header).
    pub async fn check(
        &self,
        a: &CheckAttributes,
        quotas: &QuotaBackend,
    ) -> Result<AuthzDecision, QuotaError> {
        let (verdict, audited) = self.evaluate(a);
        if !matches!(verdict, Verdict::Allow { .. }) || self.quotas.is_empty() {
            return Ok(AuthzDecision {
                verdict,
                audited,
                quotas: Vec::new(),
            });
        }
        let mut applied: Vec<(&QuotaRule, String)> = Vec::new();
        for q in self.quotas.iter().filter(|q| q.matcher.matches(a)) {
            // `authz:` and each part length-prefixed (`authz:8:per-user:3:web:3:ann`), so no
            // two quotas or value lists share a key (`a_b`+`c` against `a`+`b_c`).
            let mut key = String::with_capacity(64);
            key.push_str("authz");
            let mut len = itoa::Buffer::new();
            let mut part = |v: &str| {
                key.push(':');
                key.push_str(len.format(v.len()));
                key.push(':');
                key.push_str(v);
            };
            part(&q.name);
            let complete = q.key.iter().all(|k| match k.value(a) {
                Some(v) => {
                    part(&v);
                    true
                }
                None => false,
            });
            if complete {
                applied.push((q, key));
            }
        }
        let hits: Vec<QuotaHit<'_>> = applied
            .iter()
            .map(|(q, key)| QuotaHit {
                key,
                rate: q.rate,
                hits: 1,
            })
            .collect();
        let usages = quotas.charge(&hits).await?;
        let charged: Vec<(Arc<str>, Rate, Usage)> = applied
            .iter()
            .zip(usages)
            .map(|((q, _), u)| (q.name.clone(), q.rate, u))
            .collect();
        let verdict = match charged.iter().find(|(_, _, u)| u.over_limit) {
            Some((name, rate, usage)) => Verdict::RateLimited {
                quota: name.clone(),
                rate: *rate,
                usage: *usage,
            },
            None => verdict,
        };
        Ok(AuthzDecision {
            verdict,
            audited,
            quotas: charged,
        })
    }
}

/// The namespace in a SPIFFE identity (`spiffe://<trust domain>/ns/<namespace>/sa/<account>`).
pub fn spiffe_namespace(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    while let Some(p) = parts.next() {
        if p == "ns" {
            return parts.next().filter(|n| !n.is_empty());
        }
    }
    None
}

#[cfg(test)]
mod tests;
