//! `GET /api/policy`: the active policy (config files, rules, quotas, limits), the last reload's
//! outcome, and the most recent denials.

use axum::extract::{Query, State};
use axum::Json;
use meshlens_policy::engine::Denial;
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
    pub(crate) quotas: Vec<QuotaDto>,
    pub(crate) denials: Vec<DenialDto>,
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
            source: d.source,
            destination: d.destination,
            status: d.status,
            by: d.by,
            path: d.path,
        }
    }
}

pub async fn get_policy(
    State(st): State<WebState>,
    Query(q): Query<PolicyQuery>,
) -> Result<Json<PolicyDto>, WebError> {
    let limit = match q.limit.as_deref() {
        None | Some("") => 50,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| WebError::BadRequest(format!("limit: not a number: {s:?}")))?
            .min(1000),
    };
    Ok(Json(policy_dto(&st, limit)))
}

/// The active policy and the `limit` newest denials.
pub(crate) fn policy_dto(st: &WebState, limit: usize) -> PolicyDto {
    let engine = &st.policy;
    let loaded = engine.current();
    let settings = engine.settings();
    let mut domains: Vec<String> = loaded.ratelimits.domains().map(str::to_string).collect();
    domains.sort();
    let path = |p: &std::path::PathBuf| p.display().to_string();
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
        quotas: loaded
            .authz
            .quota_rules()
            .iter()
            .map(|q| QuotaDto {
                name: q.name.to_string(),
                requests_per_unit: q.rate.requests_per_unit,
                unit: q.rate.unit.as_str(),
                algorithm: q.rate.algorithm.as_str(),
            })
            .collect(),
        denials: engine
            .recent_denials(limit)
            .into_iter()
            .map(DenialDto::from)
            .collect(),
    }
}
