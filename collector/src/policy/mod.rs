//! The policy gRPC services Envoy calls: `envoy.service.auth.v3.Authorization/Check`
//! (`authz.rs`) and `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! (`ratelimit.rs`). Each converts Envoy's protobuf to the engine's types and back; the
//! decisions are made by `meshlens_policy::PolicyEngine`. Both record the same metrics.

pub mod authz;
pub mod listener;
pub mod ratelimit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshlens_topology::graph::PolicyDecision;

use meshlens_policy::{PolicyEngine, ReloadOutcome};

use crate::metrics::{Decision, LoadResult, Metrics, PolicyApi, SeriesCap};

/// Default cap on label sets of the per-limit and per-rule policy metrics.
pub const DEFAULT_MAX_POLICY_SERIES: usize = 1_000;

/// What both services share: the engine and the metrics.
pub struct PolicyServer {
    engine: Arc<PolicyEngine>,
    metrics: Metrics,
    /// Each API's decision-time histogram and decision counters, looked up once.
    authz_metrics: ApiMetrics,
    ratelimit_metrics: ApiMetrics,
    /// Per-limit and per-rule counters, capped across their families.
    cap: SeriesCap<prometheus::IntCounter>,
    /// Refusals between known services since the graph last took them: (source, destination)
    /// → (denied, rate limited).
    refusals: Mutex<HashMap<(String, String), (u64, u64)>>,
    /// A failing backend fails every check: one log line per interval says so.
    backend_error_log: crate::logs::LogEvery,
}

/// Most service pairs whose refusals wait for the graph's next take.
const MAX_REFUSAL_PAIRS: usize = 10_000;

impl PolicyServer {
    pub fn new(engine: Arc<PolicyEngine>, metrics: Metrics, max_series: usize) -> Arc<Self> {
        let server = PolicyServer {
            engine,
            authz_metrics: ApiMetrics::new(&metrics, authz::API, authz::DECISIONS),
            ratelimit_metrics: ApiMetrics::new(&metrics, ratelimit::API, ratelimit::DECISIONS),
            metrics,
            cap: SeriesCap::new(max_series),
            refusals: Mutex::new(HashMap::new()),
            backend_error_log: crate::logs::LogEvery::new(crate::logs::LOG_INTERVAL),
        };
        let loaded = server.engine.current();
        server
            .metrics
            .policy_config_last_success
            .set(loaded.loaded_at as i64);
        server.metrics.policy_config_last_successful.set(1);
        // The first load counts as a successful one; failures start at 0 so that an alert on
        // their increase has a series from the start.
        let reloads = &server.metrics.policy_config_reloads;
        reloads.at(LoadResult::Success).inc();
        let backend = server.engine.backend_name();
        for kind in server.engine.backend_error_kinds() {
            server
                .metrics
                .policy_backend_errors
                .with_label_values(&[backend, kind]);
        }
        Arc::new(server)
    }

    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    pub fn authorization(
        self: &Arc<Self>,
    ) -> envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer<
        authz::AuthzService,
    > {
        authz::AuthzService::server(self.clone())
    }

    pub fn rate_limit(
        self: &Arc<Self>,
    ) -> envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer<
        ratelimit::RlsService,
    >{
        ratelimit::RlsService::server(self.clone())
    }

    /// Reloads the configs if their files changed, and records the outcome (and, as often, the
    /// memory quota store's size and evictions).
    pub fn reload(&self) -> ReloadOutcome {
        if let Some((keys, evicted)) = self.engine.memory_quota_stats() {
            self.metrics.policy_quota_keys.set(keys as i64);
            let counted = self.metrics.policy_quota_evictions.get();
            self.metrics
                .policy_quota_evictions
                .inc_by(evicted.saturating_sub(counted));
        }
        let outcome = self.engine.reload_if_changed();
        match &outcome {
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Reloaded => {
                let loaded = self.engine.current();
                self.metrics
                    .policy_config_reloads
                    .at(LoadResult::Success)
                    .inc();
                self.metrics
                    .policy_config_last_success
                    .set(loaded.loaded_at as i64);
                self.metrics.policy_config_last_successful.set(1);
                tracing::info!(
                    domains = loaded.ratelimits.domains().count(),
                    rules = loaded.authz.rule_count(),
                    quotas = loaded.authz.quota_rules().len(),
                    "policy config reloaded"
                );
            }
            ReloadOutcome::Failed(e) => {
                self.metrics
                    .policy_config_reloads
                    .at(LoadResult::Failure)
                    .inc();
                self.metrics.policy_config_last_successful.set(0);
                tracing::error!(error = %e, "policy config refused; the previous one stays active");
            }
        }
        outcome
    }

    /// A refusal between two named services, for the graph.
    fn refused(&self, source: Option<&str>, destination: Option<&str>, rate_limited: bool) {
        let (Some(src), Some(dst)) = (source, destination) else {
            return;
        };
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let key = (src.to_string(), dst.to_string());
        if r.len() >= MAX_REFUSAL_PAIRS && !r.contains_key(&key) {
            return;
        }
        let e = r.entry(key).or_default();
        if rate_limited {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }

    /// The refusals since the last take, for `GraphFeed::observe_policy`.
    pub fn take_refusals(&self) -> Vec<PolicyDecision> {
        let taken = std::mem::take(&mut *self.refusals.lock().unwrap_or_else(|p| p.into_inner()));
        taken
            .into_iter()
            .map(
                |((source, destination), (denied, rate_limited))| PolicyDecision {
                    source,
                    destination,
                    denied,
                    rate_limited,
                },
            )
            .collect()
    }

    /// Records a check's decision time and its decision (one of the API's `DECISIONS`).
    fn finish(&self, api: &ApiMetrics, decision: Decision, started: Instant) {
        api.seconds.observe(started.elapsed().as_secs_f64());
        match api.decisions.iter().find(|(d, _)| *d == decision) {
            Some((_, counter)) => counter.inc(),
            None => self
                .metrics
                .policy_checks
                .with_label_values(&[api.api, decision.as_str()])
                .inc(),
        }
    }

    /// Counts a check's hits on a limit by outcome (`within`, `near`, and `over` or whatever
    /// `over` stands for, such as `shadow_over`), each part only when it holds hits.
    fn quota_hits(&self, limit: &str, hits: meshlens_policy::limit::HitSplit, over: &str) {
        for (outcome, n) in [
            ("within", hits.within),
            ("near", hits.near),
            (over, hits.over),
        ] {
            if n > 0 {
                self.capped(
                    &self.metrics.policy_quota_hits,
                    "meshlens_policy_quota_hits_total",
                    [limit, outcome],
                    n,
                );
            }
        }
    }

    fn local_over_answer(&self, api: PolicyApi) {
        self.metrics.policy_local_over_answers.at(api).inc();
    }

    fn denial(&self, api: PolicyApi, by: &str) {
        self.capped(
            &self.metrics.policy_denials,
            "meshlens_policy_denials_total",
            [api.as_str(), by],
            1,
        );
    }

    /// Adds `n` under two labels from configs, unless the family has its most label sets.
    fn capped(&self, family: &prometheus::IntCounterVec, name: &str, labels: [&str; 2], n: u64) {
        let counted = self.cap.with(
            name,
            &labels,
            || family.with_label_values(&labels),
            |c| c.inc_by(n),
        );
        if counted.is_none() {
            self.metrics
                .policy_series_dropped
                .with_label_values(&[name])
                .inc();
        }
    }

    fn backend_error(&self, e: &meshlens_policy::quota::QuotaError) {
        self.metrics
            .policy_backend_errors
            .with_label_values(&[self.engine.backend_name(), e.kind()])
            .inc();
        if let Some(skipped) = self.backend_error_log.due() {
            tracing::warn!(error = %e, backend = self.engine.backend_name(), mode = ?self.engine.settings().failure_mode, skipped, "quota backend failed; check answered per the failure mode (skipped: failures since the last such line)");
        }
    }
}

/// One API's decision-time histogram and its counter per known decision.
struct ApiMetrics {
    api: &'static str,
    seconds: prometheus::Histogram,
    decisions: Vec<(Decision, prometheus::IntCounter)>,
}

impl ApiMetrics {
    fn new(m: &Metrics, api: PolicyApi, decisions: &[Decision]) -> Self {
        let api = api.as_str();
        ApiMetrics {
            api,
            seconds: m.policy_check_seconds.with_label_values(&[api]),
            decisions: decisions
                .iter()
                .map(|d| (*d, m.policy_checks.with_label_values(&[api, d.as_str()])))
                .collect(),
        }
    }
}

/// The time a caller gives a check: its `grpc-timeout` (Envoy sends the filter's `timeout`),
/// less a fifth of it, at most 10 ms, for the answer's way back. None without a valid header.
pub fn budget(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    // The protocol's form: up to 8 digits and a unit.
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout - (timeout / 5).min(Duration::from_millis(10)))
}

/// `x-ratelimit-*` values in the IETF draft 03 form Envoy writes: limit `N, N;w=<seconds>`,
/// remaining, reset in whole seconds.
pub fn ratelimit_headers(
    rate: meshlens_policy::Rate,
    usage: &meshlens_policy::Usage,
) -> [(&'static str, String); 3] {
    let n = rate.requests_per_unit;
    [
        (
            "x-ratelimit-limit",
            format!("{n}, {n};w={}", rate.unit.seconds()),
        ),
        ("x-ratelimit-remaining", usage.remaining.to_string()),
        (
            "x-ratelimit-reset",
            usage.reset_ms.div_ceil(1000).to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests;
