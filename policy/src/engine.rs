//! The policy engine a server holds: the loaded configs (swapped whole on reload, never
//! half-applied), the quota backend, and what the API shows (recent denials, reload status).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::authz::{AuthzDecision, AuthzPolicy, CheckAttributes, Verdict};
use crate::quota::{MemoryStore, QuotaBackend, QuotaError, RedisConfig, RedisStore};
use crate::ratelimit::{DescriptorStatus, RateLimitDecision, RateLimitRequest, RateLimits};
use crate::ConfigError;

/// What to do when the quota backend cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Allow the request (envoyproxy/ratelimit's and Envoy's default).
    #[default]
    Open,
    /// Refuse it.
    Closed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Memory { max_keys: usize },
    Redis(RedisConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicySettings {
    /// envoyproxy/ratelimit config directory (every `.yaml`/`.yml` under it).
    pub ratelimit_dir: Option<PathBuf>,
    /// meshlens policy files (authorization and quota rules).
    pub policy_files: Vec<PathBuf>,
    pub backend: Backend,
    pub failure_mode: FailureMode,
    /// Rate limit service: over-limit answers become OK (counted), as envoyproxy/ratelimit's
    /// `SHADOW_MODE`.
    pub shadow_mode: bool,
    /// Most denials kept for the API (`/api/policy?limit=` asks for at most this many).
    pub recent_denials: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            ratelimit_dir: None,
            policy_files: Vec::new(),
            backend: Backend::Memory {
                max_keys: DEFAULT_MAX_KEYS,
            },
            failure_mode: FailureMode::Open,
            shadow_mode: false,
            recent_denials: 1000,
        }
    }
}

pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// One consistent set of configs.
#[derive(Debug, Default)]
pub struct Loaded {
    pub ratelimits: RateLimits,
    pub authz: AuthzPolicy,
    /// Unix seconds of the load.
    pub loaded_at: u64,
    fingerprint: Fingerprint,
}

/// A refused request, kept for the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `ext_authz` or `ratelimit`.
    pub api: &'static str,
    pub source: Option<String>,
    pub destination: Option<String>,
    /// 403 or 429.
    pub status: u16,
    /// The rule, quota or rate limit that refused it.
    pub by: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
    Unchanged,
    Reloaded,
    Failed(ConfigError),
}

pub struct PolicyEngine {
    settings: PolicySettings,
    loaded: ArcSwap<Loaded>,
    quotas: QuotaBackend,
    last_error: Mutex<Option<ConfigError>>,
    /// The files as they were when they last failed to load.
    failed: Mutex<Option<Fingerprint>>,
    denials: Mutex<VecDeque<Denial>>,
}

/// A rate limit answer, with the failure that forced it if the backend failed.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitOutcome {
    pub decision: RateLimitDecision,
    pub backend_error: Option<QuotaError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthzOutcome {
    pub decision: AuthzDecision,
    pub backend_error: Option<QuotaError>,
}

impl PolicyEngine {
    /// Loads the configs; an error here stops the server from starting.
    pub fn new(settings: PolicySettings) -> Result<PolicyEngine, ConfigError> {
        let loaded = load(&settings)?;
        let quotas = match &settings.backend {
            Backend::Memory { max_keys } => QuotaBackend::Memory(MemoryStore::new(*max_keys)),
            Backend::Redis(r) => QuotaBackend::Redis(RedisStore::new(r).map_err(|e| {
                let url = meshlens_topology::redact::url_password(&r.url);
                ConfigError::new(Path::new(&url), e.to_string())
            })?),
        };
        Ok(PolicyEngine {
            settings,
            loaded: ArcSwap::from_pointee(loaded),
            quotas,
            last_error: Mutex::new(None),
            failed: Mutex::new(None),
            denials: Mutex::new(VecDeque::new()),
        })
    }

    pub fn settings(&self) -> &PolicySettings {
        &self.settings
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    pub fn backend_error_kinds(&self) -> &'static [&'static str] {
        self.quotas.error_kinds()
    }

    pub fn backend_name(&self) -> &'static str {
        self.quotas.name()
    }

    /// The memory store's keys held and keys forgotten to make room (none for Redis).
    pub fn memory_quota_stats(&self) -> Option<(usize, u64)> {
        self.quotas.memory_stats()
    }

    /// The last reload's error, if the last attempt failed.
    pub fn last_error(&self) -> Option<ConfigError> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Reloads when a config file changed (added, removed, modified). A bad config leaves the
    /// previous one active, and is tried again only when the files change again.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let fp = fingerprint(&self.settings);
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if fp == self.loaded.load().fingerprint || failed.as_ref() == Some(&fp) {
            return ReloadOutcome::Unchanged;
        }
        let outcome = match load(&self.settings) {
            Ok(l) => {
                self.loaded.store(Arc::new(l));
                *failed = None;
                None
            }
            Err(e) => {
                *failed = Some(fp);
                Some(e)
            }
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = outcome.clone();
        match outcome {
            None => ReloadOutcome::Reloaded,
            Some(e) => ReloadOutcome::Failed(e),
        }
    }

    pub async fn rate_limit(&self, req: &RateLimitRequest) -> RateLimitOutcome {
        self.rate_limit_within(req, None).await
    }

    /// Decides within `budget` (the caller's deadline, less the answer's way back): a quota
    /// backend slower than that fails open or closed as configured, before the caller gives up.
    pub async fn rate_limit_within(
        &self,
        req: &RateLimitRequest,
        budget: Option<Duration>,
    ) -> RateLimitOutcome {
        let loaded = self.loaded.load();
        let decided = within(budget, loaded.ratelimits.decide(req, &self.quotas)).await;
        let (mut decision, backend_error) = match decided {
            Ok(d) => (d, None),
            Err(e) => {
                let closed = self.settings.failure_mode == FailureMode::Closed;
                let statuses = req
                    .descriptors
                    .iter()
                    .map(|_| DescriptorStatus {
                        over_limit: closed,
                        limit: None,
                        remaining: 0,
                        reset_ms: 0,
                        shadow_over_limit: false,
                        hits: Default::default(),
                        cached: false,
                    })
                    .collect();
                let d = RateLimitDecision {
                    over_limit: closed,
                    statuses,
                };
                (d, Some(e))
            }
        };
        if decision.over_limit && backend_error.is_none() && !self.settings.shadow_mode {
            let by = decision
                .statuses
                .iter()
                .find(|s| s.over_limit)
                .and_then(|s| s.limit.as_ref())
                .map(|l| l.stats_key.clone())
                .unwrap_or_default();
            let entry = |k: &str| req.entry(k).map(str::to_string);
            self.record(Denial {
                at_ms: now_ms(),
                api: "ratelimit",
                source: entry("source_cluster"),
                destination: entry("destination_cluster"),
                status: 429,
                by,
                path: entry("path").unwrap_or_default(),
            });
        }
        if self.settings.shadow_mode {
            decision.over_limit = false;
        }
        RateLimitOutcome {
            decision,
            backend_error,
        }
    }

    pub async fn authorize(&self, attrs: &CheckAttributes) -> AuthzOutcome {
        self.authorize_within(attrs, None).await
    }

    /// Decides within `budget`, as `rate_limit_within`.
    pub async fn authorize_within(
        &self,
        attrs: &CheckAttributes,
        budget: Option<Duration>,
    ) -> AuthzOutcome {
        let loaded = self.loaded.load();
        let decided = within(budget, loaded.authz.check(attrs, &self.quotas)).await;
        let (decision, backend_error) = match decided {
            Ok(d) => (d, None),
            Err(e) => {
                // The rules decided; only the quotas could not be counted.
                let (verdict, audited) = loaded.authz.evaluate(attrs);
                let verdict = match verdict {
                    Verdict::Allow { .. } if self.settings.failure_mode == FailureMode::Closed => {
                        Verdict::Unavailable {
                            reason: "quota store unavailable".into(),
                        }
                    }
                    v => v,
                };
                let d = AuthzDecision {
                    verdict,
                    audited,
                    quotas: Vec::new(),
                };
                (d, Some(e))
            }
        };
        let refused = match &decision.verdict {
            Verdict::Allow { .. } => None,
            Verdict::Deny { rule, reason } => Some((
                403,
                rule.as_deref()
                    .map(str::to_string)
                    .unwrap_or(reason.clone()),
            )),
            Verdict::RateLimited { quota, .. } => Some((429, quota.to_string())),
            Verdict::Unavailable { reason } => Some((503, reason.clone())),
        };
        if let Some((status, by)) = refused {
            self.record(Denial {
                at_ms: now_ms(),
                api: "ext_authz",
                source: attrs.source_service.clone(),
                destination: attrs.destination.clone(),
                status,
                by,
                path: attrs.path.clone(),
            });
        }
        AuthzOutcome {
            decision,
            backend_error,
        }
    }

    fn record(&self, d: Denial) {
        let mut q = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.settings.recent_denials.max(1) {
            q.pop_front();
        }
        q.push_back(d);
    }

    /// The most recent denials, newest first.
    pub fn recent_denials(&self, limit: usize) -> Vec<Denial> {
        let q = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().take(limit).cloned().collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Fingerprint = Vec<(PathBuf, u64, SystemTime)>;

/// Every config file with its size and modification time, in order. A directory that cannot be
/// read is a mark of its own, so its failure is not retried until it changes.
fn fingerprint(s: &PolicySettings) -> Fingerprint {
    let mut paths = s.policy_files.clone();
    if let Some(dir) = &s.ratelimit_dir {
        match crate::ratelimit::config_files(dir) {
            Ok(files) => paths.extend(files),
            Err(_) => return vec![(dir.clone(), u64::MAX, UNIX_EPOCH)],
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok()).unwrap_or(UNIX_EPOCH);
            (p, len, modified)
        })
        .collect()
}

/// Reads every config the settings name.
pub fn load(s: &PolicySettings) -> Result<Loaded, ConfigError> {
    let fingerprint = fingerprint(s);
    let ratelimits = match &s.ratelimit_dir {
        Some(dir) => RateLimits::load_dir(dir)?,
        None => RateLimits::default(),
    };
    let authz = AuthzPolicy::load_files(&s.policy_files)?;
    Ok(Loaded {
        ratelimits,
        authz,
        loaded_at: now_ms() / 1000,
        fingerprint,
    })
}

/// The answer of `decide`, or a timeout once `budget` has passed. The in-memory backend never
/// waits, and a future is polled before its timer, so only a waiting backend can time out.
async fn within<T>(
    budget: Option<Duration>,
    decide: impl std::future::Future<Output = Result<T, QuotaError>>,
) -> Result<T, QuotaError> {
    match budget {
        Some(b) => tokio::time::timeout(b, decide)
            .await
            .unwrap_or(Err(QuotaError::Timeout)),
        None => decide.await,
    }
}
