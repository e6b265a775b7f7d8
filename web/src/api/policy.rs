//! `GET /api/policy`: the active policy (config files, rules, quotas, limits), the last reload's
//! outcome, and the most recent denials.

use axum::extract::{Query, State};
use axum::Json;
use meshlens_policy::engine::Denial;
use meshlens_topology::graph::service_of_cluster;
use serde::{Deserialize, Serialize};

use crate::error::WebError;
use crate::WebState;

#[derive(Debug, Deserialize)]
pub struct PolicyQuery {
    /// Most denials to return (newest first); default 50, at most 1000.
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PolicyDto {
    pub(crate) backend: &'static str,
    pub(crate) failure_mode: &'static str,
    pub(crate) shadow_mode: bool,
    /// Unix seconds of the config now active.
    pub(crate) loaded_at: u64,
    /// The last reload's refusal, if the files changed since into something invalid.
    pub(crate) last_error: Option<ConfigErrorDto>,
    pub(crate) ratelimit_files: Vec<String>,
    pub(crate) domains: Vec<String>,
    pub(crate) policy_files: Vec<String>,
    pub(crate) rules: usize,
    /// The authorization rules in order: name, action, what they match.
    pub(crate) rule_list: Vec<RuleDto>,
    pub(crate) quotas: Vec<QuotaDto>,
    /// Every rate limit of the envoyproxy/ratelimit configs.
    pub(crate) limits: Vec<LimitDto>,
    pub(crate) denials: Vec<DenialDto>,
}

#[derive(Debug, Serialize)]
pub struct RuleDto {
    pub(crate) name: String,
    pub(crate) action: &'static str,
    pub(crate) matches: String,
}

#[derive(Debug, Serialize)]
pub struct LimitDto {
    pub(crate) domain: String,
    /// The config path, as envoyproxy/ratelimit names its stats (`domain.key_value.key`).
    pub(crate) key: String,
    pub(crate) name: Option<String>,
    pub(crate) requests_per_unit: u32,
    pub(crate) unit: &'static str,
    pub(crate) algorithm: &'static str,
    pub(crate) unlimited: bool,
    pub(crate) shadow_mode: bool,
    pub(crate) usage: Usage,
}

/// Hits counted against a quota or limit since meshlens started (this replica).
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct Usage {
    pub(crate) within: u64,
    pub(crate) near: u64,
    pub(crate) over: u64,
}

#[derive(Debug, Serialize)]
pub struct ConfigErrorDto {
    pub(crate) file: String,
    pub(crate) reason: String,
}

#[derive(Debug, Serialize)]
pub struct QuotaDto {
    pub(crate) name: String,
    pub(crate) requests_per_unit: u32,
    pub(crate) unit: &'static str,
    pub(crate) algorithm: &'static str,
    /// What the quota applies to, as `field=a,b` terms.
    pub(crate) applies_to: String,
    /// The request attributes its counters are keyed by.
    pub(crate) key: String,
    pub(crate) usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct DenialDto {
    /// Unix milliseconds.
    pub(crate) at: u64,
    pub(crate) api: &'static str,
    pub(crate) source: Option<String>,
    pub(crate) destination: Option<String>,
    pub(crate) status: u16,
    pub(crate) by: String,
    pub(crate) path: String,
}

impl From<Denial> for DenialDto {
    fn from(d: Denial) -> Self {
        DenialDto {
            at: d.at_ms,
            api: d.api,
            // Named as the graph names them (an Istio cluster by its service).
            source: d.source.as_deref().map(service_of_cluster),
            destination: d.destination.as_deref().map(service_of_cluster),
            status: d.status,
            by: d.by,
            path: d.path,
        }
    }
}

pub async fn get_policy(
    State(st): State<WebState>,
    role: Option<axum::Extension<crate::auth::Role>>,
    Query(q): Query<PolicyQuery>,
) -> Result<Json<PolicyDto>, WebError> {
    let limit = match q.limit.as_deref() {
        None | Some("") => 50,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| WebError::BadRequest(format!("limit: not a number: {s:?}")))?
            .min(1000),
    };
    Ok(Json(policy_dto(&st, limit, crate::auth::is_admin(role))))
}

/// The active policy and the `limit` newest denials.
/// Viewers see config files by name and denials without their request paths; admins see the
/// paths in full.
pub(crate) fn policy_dto(st: &WebState, limit: usize, admin: bool) -> PolicyDto {
    let engine = &st.policy;
    let loaded = engine.current();
    let settings = engine.settings();
    let mut domains: Vec<String> = loaded.ratelimits.domains().map(str::to_string).collect();
    domains.sort();
    let path = |p: &std::path::PathBuf| {
        if admin {
            p.display().to_string()
        } else {
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        }
    };
    let usage = quota_usage(&st.registry);
    let used = |name: &str| usage.get(name).copied().unwrap_or_default();
    PolicyDto {
        backend: engine.backend_name(),
        failure_mode: match settings.failure_mode {
            meshlens_policy::FailureMode::Open => "open",
            meshlens_policy::FailureMode::Closed => "closed",
        },
        shadow_mode: settings.shadow_mode,
        loaded_at: loaded.loaded_at,
        last_error: engine.last_error().map(|e| ConfigErrorDto {
            file: path(&e.file),
            reason: e.reason,
        }),
        ratelimit_files: loaded.ratelimits.files.iter().map(path).collect(),
        domains,
        policy_files: settings.policy_files.iter().map(path).collect(),
        rules: loaded.authz.rule_count(),
        rule_list: loaded
            .authz
            .rule_summaries()
            .into_iter()
            .map(|r| RuleDto {
                name: r.name.to_string(),
                action: r.action,
                matches: r.matches,
            })
            .collect(),
        quotas: loaded
            .authz
            .quota_rules()
            .iter()
            .map(|q| {
                let (applies_to, key) = q.describe();
                QuotaDto {
                    name: q.name.to_string(),
                    requests_per_unit: q.rate.requests_per_unit,
                    unit: q.rate.unit.as_str(),
                    algorithm: q.rate.algorithm.as_str(),
                    applies_to,
                    key,
                    usage: used(&q.name),
                }
            })
            .collect(),
        limits: loaded
            .ratelimits
            .limits()
            .into_iter()
            .map(|(domain, l)| LimitDto {
                usage: used(&l.stats_key),
                domain,
                key: l.stats_key.clone(),
                name: l.name.clone(),
                requests_per_unit: l.rate.requests_per_unit,
                unit: l.rate.unit.as_str(),
                algorithm: l.rate.algorithm.as_str(),
                unlimited: l.unlimited,
                shadow_mode: l.shadow_mode,
            })
            .collect(),
        denials: engine
            .recent_denials(limit)
            .into_iter()
            .map(DenialDto::from)
            .map(|mut d| {
                // A request's path is raw data-plane input (it may carry ids or tokens).
                if !admin {
                    d.path.clear();
                }
                d
            })
            .collect(),
    }
}

/// `POST /api/policy/reload` (admin): reads the policy files now if they changed, instead of
/// at the next poll.
pub async fn reload(
    State(st): State<WebState>,
    role: Option<axum::Extension<crate::auth::Role>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !crate::auth::same_origin(&headers, &uri) {
        return (
            axum::http::StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": "cross-site request refused"})),
        )
            .into_response();
    }
    if !crate::auth::is_admin(role) {
        return (
            axum::http::StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": "reloading the policy needs the admin role"})),
        )
            .into_response();
    }
    let outcome = (st.reload_policy)();
    Json(serde_json::json!({"outcome": outcome})).into_response()
}

/// Hits per quota or limit name, read from `meshlens_policy_quota_hits_total{limit, outcome}`
/// (`shadow_over` counts as over).
fn quota_usage(registry: &prometheus::Registry) -> std::collections::HashMap<String, Usage> {
    let mut out: std::collections::HashMap<String, Usage> = std::collections::HashMap::new();
    for family in registry.gather() {
        if family.name() != "meshlens_policy_quota_hits_total" {
            continue;
        }
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            let hits = m.get_counter().get_value() as u64;
            let u = out.entry(label("limit")).or_default();
            match label("outcome").as_str() {
                "within" => u.within += hits,
                "near" => u.near += hits,
                _ => u.over += hits,
            }
        }
    }
    out
}
