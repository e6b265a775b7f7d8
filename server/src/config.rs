//! One typed configuration, composed of each part's own; read from TOML, then `MESHLENS_*`
//! environment variables and flags on top. Unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshlens_collector::GraphConfig;
use meshlens_topology::graph::{
    HealthConfig, PairingConfig, Threshold, DEFAULT_MAX_PENDING, DEFAULT_PAIRING_TTL_NS,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub graph: GraphSettings,
    pub policy: PolicyConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub connections: ConnectionsConfig,
    pub memory: MemoryConfig,
    pub log: LogConfig,
}

/// The memory limiter (as the OpenTelemetry Collector's `memory_limiter`), on the heap in use or
/// the resident set, whichever is higher:
/// past `limit_mib - spike_limit_mib` new exports are refused (retryable: 503 / UNAVAILABLE),
/// past `limit_mib` the graph's backlog is shed as well.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    pub enabled: bool,
    /// The hard limit in MiB; 0: 80% of the container's memory limit (cgroup), or
    /// [`DEFAULT_MEMORY_LIMIT_MIB`] without one.
    pub limit_mib: u64,
    /// How far under the hard limit the soft one is, in MiB; 0: a fifth of the hard limit.
    pub spike_limit_mib: u64,
}

/// The hard limit without a container limit to go by: 80% of a 512 MiB container, the size the
/// other defaults (queues, graph caps) are chosen to fit.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 410;

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            enabled: true,
            limit_mib: 0,
            spike_limit_mib: 0,
        }
    }
}

impl MemoryConfig {
    /// The limits in bytes, given the container's memory limit (`cgroup_bytes`), if any.
    pub fn limits(&self, cgroup_bytes: Option<u64>) -> meshlens_collector::memory::MemoryLimits {
        if !self.enabled {
            return meshlens_collector::memory::MemoryLimits::NONE;
        }
        const MIB: u64 = 1 << 20;
        let hard = match self.limit_mib {
            0 => cgroup_bytes.map_or(DEFAULT_MEMORY_LIMIT_MIB * MIB, |c| c / 5 * 4),
            n => n.saturating_mul(MIB),
        };
        let spike = match self.spike_limit_mib {
            0 => hard / 5,
            n => n.saturating_mul(MIB).min(hard),
        };
        meshlens_collector::memory::MemoryLimits {
            soft_bytes: usize::try_from(hard - spike).unwrap_or(usize::MAX),
            hard_bytes: usize::try_from(hard).unwrap_or(usize::MAX),
        }
    }
}

/// The memory limit of this process's container (cgroup v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), if it has one.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let v2 = read("/proc/self/cgroup").and_then(|c| {
        let path = c.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
        read(&format!("/sys/fs/cgroup{path}/memory.max"))
            .or_else(|| read("/sys/fs/cgroup/memory.max"))
    });
    let v1 = || read("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    let text = v2.or_else(v1)?;
    // "max" (v2) or a page-rounded i64::MAX (v1) say there is none.
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&n| n < (1u64 << 60))
}

/// Who may call: tokens for the web and for ingest, or a trusted reverse proxy's user header.
/// Unset files: no token needed (the listeners' own exposure is the only guard).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lines `TOKEN ROLE` (`viewer` or `admin`), `#` comments.
    pub web_tokens_file: PathBuf,
    /// Lines `TOKEN [TENANT]`: OTLP, Zipkin and remote write need `authorization: Bearer TOKEN`.
    pub ingest_tokens_file: PathBuf,
    /// A reverse proxy's user header (e.g. `X-Forwarded-User` from oauth2-proxy), trusted only
    /// from `proxy_cidrs`.
    pub proxy_user_header: String,
    pub proxy_cidrs: Vec<ipnet::IpNet>,
    /// Users named by the proxy who are admins; the others are viewers.
    pub proxy_admin_users: Vec<String>,
    /// Host names the web listener answers to, besides IP literals and `localhost` (`*`: any).
    /// Empty: any name when the web listener is exposed, none when it is bound to loopback (a
    /// DNS rebinding page would name its own host).
    pub allowed_hosts: Vec<String>,
    /// How long a web login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Most web sessions kept at once; past it, the one closest to expiry is ended.
    pub max_sessions: usize,
    /// How often the tokens files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            web_tokens_file: PathBuf::new(),
            ingest_tokens_file: PathBuf::new(),
            proxy_user_header: String::new(),
            proxy_cidrs: Vec::new(),
            proxy_admin_users: Vec::new(),
            allowed_hosts: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            max_sessions: 10_000,
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// Where each listener binds. Loopback by default: exposing meshlens is a deliberate choice.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// OTLP/gRPC (traces).
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP: `/v1/traces`.
    pub otlp_http: SocketAddr,
    /// Zipkin v2: `POST /api/v2/spans`.
    pub zipkin: SocketAddr,
    /// Policy gRPC: ext_authz Check, rate limit ShouldRateLimit, gRPC health.
    pub policy: SocketAddr,
    /// Web UI, JSON API, `/metrics`, `/healthz`, `/readyz`.
    pub web: SocketAddr,
}

/// Server TLS: the top-level files serve every listener when `cert` and `key` are set; each
/// listener's table overrides them (`enabled = false` keeps that one plaintext). Empty strings
/// mean unset.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, RSA or EC).
    pub key: PathBuf,
    /// Set: client certificates signed by this PEM CA are required (mTLS).
    pub client_ca: PathBuf,
    /// Lowest TLS version offered: "1.2" or "1.3".
    pub min_version: String,
    /// With `client_ca`: the client identities (URI SANs such as SPIFFE ids; a trailing `*`
    /// matches by prefix) that may call. Empty: any certificate from the CA.
    pub allowed_identities: Vec<String>,
    /// How often the files are checked for changes (rotation); a changed pair is served to new
    /// connections, a bad one refused and the old one kept.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    pub otlp_grpc: TlsOverride,
    pub otlp_http: TlsOverride,
    pub zipkin: TlsOverride,
    pub policy: TlsOverride,
    pub web: TlsOverride,
}

/// One listener's TLS, where it differs from the top-level `[tls]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsOverride {
    /// `false`: this listener stays plaintext whatever `[tls]` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// `""` here turns off a client CA set at the top.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_identities: Option<Vec<String>>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            min_version: "1.2".into(),
            allowed_identities: Vec::new(),
            reload_interval: Duration::from_secs(10),
            otlp_grpc: TlsOverride::default(),
            otlp_http: TlsOverride::default(),
            zipkin: TlsOverride::default(),
            policy: TlsOverride::default(),
            web: TlsOverride::default(),
        }
    }
}

impl TlsConfig {
    /// The TLS of one listener (`otlp_grpc`, `otlp_http`, `zipkin`, `policy` or `web`), or none
    /// for plaintext; half a pair, or a client CA without a pair, is an error.
    pub fn for_listener(
        &self,
        name: &str,
    ) -> Result<Option<meshlens_collector::listen::TlsSettings>, String> {
        let o = match name {
            "otlp_grpc" => &self.otlp_grpc,
            "otlp_http" => &self.otlp_http,
            "zipkin" => &self.zipkin,
            "policy" => &self.policy,
            "web" => &self.web,
            other => return Err(format!("no listener named {other}")),
        };
        let set = |p: &Path| (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
        let pick = |o: &Option<PathBuf>, top: &PathBuf| match o {
            Some(p) => set(p),
            None => set(top),
        };
        let (cert, key) = (pick(&o.cert, &self.cert), pick(&o.key, &self.key));
        let client_ca = pick(&o.client_ca, &self.client_ca);
        let min_version = o
            .min_version
            .as_deref()
            .unwrap_or(&self.min_version)
            .parse()
            .map_err(|e| format!("tls ({name}): {e}"))?;
        if o.enabled == Some(false) {
            return Ok(None);
        }
        let allowed_identities = o
            .allowed_identities
            .clone()
            .unwrap_or_else(|| self.allowed_identities.clone());
        if !allowed_identities.is_empty() && client_ca.is_none() {
            return Err(format!(
                "tls ({name}): allowed_identities needs client_ca (identities come from client certificates)"
            ));
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(meshlens_collector::listen::TlsSettings {
                cert,
                key,
                client_ca,
                min_version,
                allowed_identities,
            })),
            (None, None) if client_ca.is_none() && o.enabled != Some(true) => Ok(None),
            (None, None) if client_ca.is_some() => Err(format!(
                "tls ({name}): client_ca needs a server cert and key"
            )),
            _ => Err(format!("tls ({name}): set both cert and key, or neither")),
        }
    }
}

/// Limits on every listener's connections (see `meshlens_collector::listen`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Open connections per listener; more are closed at once.
    pub max_per_listener: usize,
    /// Longest TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Longest wait for an HTTP/1 request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection that reads and writes nothing this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Older connections are asked to finish (GOAWAY) so clients reconnect; 0s: never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// Time a connection asked to finish has for its calls in flight.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 (gRPC) streams at once per connection.
    pub max_concurrent_streams: u32,
    /// The server pings an HTTP/2 peer this long quiet and drops it if no answer comes within
    /// as long again; 0s: no pings.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A peer's HTTP/2 PINGs may come this often with no request between them; more often,
    /// three times, and its connection is closed (keepalive enforcement). 0s: no limit.
    #[serde(with = "humantime_serde")]
    pub keepalive_min_time: Duration,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        let l = meshlens_collector::listen::ConnectionLimits::default();
        ConnectionsConfig {
            max_per_listener: l.max_connections,
            handshake_timeout: l.handshake_timeout,
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            max_connection_age: l.max_connection_age,
            max_connection_age_grace: l.max_connection_age_grace,
            max_concurrent_streams: l.max_concurrent_streams,
            keepalive_interval: l.keepalive_interval,
            keepalive_min_time: l.keepalive_min_time,
        }
    }
}

impl ConnectionsConfig {
    pub fn limits(&self) -> meshlens_collector::listen::ConnectionLimits {
        meshlens_collector::listen::ConnectionLimits {
            max_connections: self.max_per_listener.max(1),
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.max_connection_age_grace,
            max_concurrent_streams: self.max_concurrent_streams.max(1),
            keepalive_interval: self.keepalive_interval,
            keepalive_min_time: self.keepalive_min_time,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite://path` (created if missing) or `postgres://user@host/db`.
    pub database_url: String,
    /// How long spans are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long every trace is kept whole; after it, until `retention`, only the traces the keep
    /// rules name (errors, the slowest, samples). Equal to `retention` or more: no tiers.
    #[serde(with = "humantime_serde")]
    pub retention_full: Duration,
    /// Keep rule: every trace with an error.
    pub keep_errors: bool,
    /// Keep rule: per operation and block written, the slowest trace, and those at or past the
    /// block's p99 for it.
    pub keep_slow: bool,
    /// Keep rule: traces kept per operation and minute as samples.
    pub keep_samples_per_minute: u32,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// SQLite only: `normal` (survives a process crash) or `full` (also a power cut, slower).
    pub sqlite_synchronous: String,
    /// Database connections.
    pub max_connections: u32,
    /// How often the store is probed with a write (one row rewritten and committed), so that
    /// `/readyz` answers 503 while it cannot commit and 200 again once it can; 0s: never.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Trace searches at once; more are answered 503 at once (retry).
    pub max_concurrent_searches: usize,
    /// Longest a search's query may run; longer ones are stopped and answered 503 with a hint.
    #[serde(with = "humantime_serde")]
    pub search_timeout: Duration,
    /// Longest time range a trace search, `/api/dependencies` or the graph's history may cover;
    /// wider: 400 with the reason.
    #[serde(with = "humantime_serde")]
    pub max_search_range: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest export accepted, in bytes, after decompression (gRPC message, HTTP body).
    pub max_message_bytes: usize,
    /// Spans that may wait for the store; beyond this, exports get a retryable error.
    pub queue_spans: usize,
    /// Bytes of those spans (decoded) that may wait for the store, the same way.
    pub queue_bytes: usize,
    /// Most spans committed in one transaction.
    pub max_batch_spans: usize,
    /// Store writer tasks (0: 1 for SQLite, 4 for PostgreSQL).
    pub writers: usize,
    /// Export requests handled at once by each receiver (OTLP/gRPC, OTLP/HTTP, Zipkin, remote
    /// write each have this many); more wait their turn.
    pub max_concurrent_requests: usize,
    /// Longest wait for an HTTP export's whole body (OTLP/HTTP, Zipkin; then 503 + Retry-After),
    /// and for a whole OTLP/gRPC export (then DEADLINE_EXCEEDED with RetryInfo).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// After `body_min_rate_grace`, an export's body must arrive at least this fast on average,
    /// in bytes a second (0: no minimum); slower: 503 + Retry-After / DEADLINE_EXCEEDED.
    pub body_min_rate: u64,
    #[serde(with = "humantime_serde")]
    pub body_min_rate_grace: Duration,
    /// Bytes of request bodies read ahead of their receivers' permits (OTLP, Zipkin), across
    /// receivers; past it, exports are refused with a retryable error. 64 MiB: sized with the
    /// queues for a 512 MiB container (hundreds of ordinary exports, 16 of the largest).
    pub max_buffered_bytes: usize,
    /// Span limits: a span over one is kept, cut, with its `dropped_*` counts raised.
    /// Attributes on a span, a resource, an event or a link.
    pub max_span_attributes: usize,
    /// Bytes of a string or bytes attribute value (cut at a character boundary).
    pub max_attribute_value_bytes: usize,
    pub max_span_events: usize,
    pub max_span_links: usize,
    /// Bytes of a span's or an event's name.
    pub max_span_name_bytes: usize,
    /// Bytes a trace may hold (Tempo's `max_bytes_per_trace`); spans past it are refused in the
    /// partial success. 0: no limit.
    pub max_bytes_per_trace: u64,
}

impl IngestConfig {
    pub fn limits(&self) -> meshlens_collector::pipeline::IngestLimits {
        meshlens_collector::pipeline::IngestLimits {
            span: meshlens_topology::SpanLimits {
                max_attributes: self.max_span_attributes,
                max_value_bytes: self.max_attribute_value_bytes,
                max_events: self.max_span_events,
                max_links: self.max_span_links,
                max_name_bytes: self.max_span_name_bytes,
            },
            max_bytes_per_trace: self.max_bytes_per_trace,
        }
    }
}

/// The live service graph.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// How long a client or server span waits for its other side before it is settled alone.
    #[serde(with = "humantime_serde")]
    pub pairing_ttl: Duration,
    /// Most spans waiting to be paired; when full, the oldest is settled first (and counted).
    pub max_pending: usize,
    /// Most label sets per exported product metric (`traces_*`); more are counted and dropped.
    pub max_series: usize,
    /// Most bytes of spans and metrics waiting for the graph thread; past it, spans are left off
    /// the graph (counted) and metrics writes answered 503 (Prometheus retries them). Once
    /// called `queue_metric_bytes`, which is still read.
    #[serde(alias = "queue_metric_bytes")]
    pub queue_bytes: usize,
    /// Most version edges on the graph; past it, calls on new edges are counted on edges to or
    /// from the overflow node (`__overflow__`).
    pub max_edges: usize,
    /// Most nodes on the graph, the same way.
    pub max_nodes: usize,
    /// Health thresholds, in percent of the window's calls (Kiali's defaults).
    pub health: HealthSettings,
    /// Plain Envoy cluster names and the services they lead to, `[namespace/]service[:version]`
    /// (Istio's `outbound|port|subset|service` names need none).
    pub clusters: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// HTTP 5xx and other failed calls (status ERROR without an HTTP or gRPC code).
    pub server_errors: ThresholdSettings,
    pub http_4xx: ThresholdSettings,
    /// Non-OK gRPC status codes.
    pub grpc_errors: ThresholdSettings,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdSettings {
    /// At or above this share (and above 0), health is degraded.
    pub degraded_pct: f64,
    /// At or above this share, health is failure.
    pub failure_pct: f64,
}

impl From<Threshold> for ThresholdSettings {
    fn from(t: Threshold) -> Self {
        ThresholdSettings {
            degraded_pct: t.degraded_pct,
            failure_pct: t.failure_pct,
        }
    }
}

impl From<ThresholdSettings> for Threshold {
    fn from(t: ThresholdSettings) -> Self {
        Threshold {
            degraded_pct: t.degraded_pct,
            failure_pct: t.failure_pct,
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        let h = HealthConfig::default();
        HealthSettings {
            server_errors: h.server_errors.into(),
            http_4xx: h.http_4xx.into(),
            grpc_errors: h.grpc_errors.into(),
        }
    }
}

impl Default for GraphSettings {
    fn default() -> Self {
        GraphSettings {
            pairing_ttl: Duration::from_nanos(DEFAULT_PAIRING_TTL_NS),
            max_pending: DEFAULT_MAX_PENDING,
            max_series: meshlens_collector::graph::DEFAULT_MAX_SERIES,
            queue_bytes: meshlens_collector::graph::DEFAULT_QUEUE_BYTES,
            max_edges: meshlens_topology::graph::DEFAULT_LIMITS.max_edges,
            max_nodes: meshlens_topology::graph::DEFAULT_LIMITS.max_nodes,
            health: HealthSettings::default(),
            clusters: Default::default(),
        }
    }
}

impl GraphSettings {
    /// The graph's config; a malformed cluster target is an error naming it.
    pub fn to_graph_config(&self) -> Result<GraphConfig, String> {
        let clusters = meshlens_topology::graph::ClusterMap::from_pairs(
            self.clusters.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|e| format!("graph.clusters: {e}"))?;
        Ok(GraphConfig {
            pairing: PairingConfig {
                ttl_ns: self.pairing_ttl.as_nanos().min(u64::MAX as u128) as u64,
                max_pending: self.max_pending.max(1),
            },
            health: HealthConfig {
                server_errors: self.health.server_errors.into(),
                http_4xx: self.health.http_4xx.into(),
                grpc_errors: self.health.grpc_errors.into(),
            },
            max_series: self.max_series,
            clusters,
            queue_bytes: self.queue_bytes,
            limits: meshlens_topology::graph::GraphLimits {
                max_edges: self.max_edges.max(1),
                max_nodes: self.max_nodes.max(3),
            },
        })
    }
}

/// The policy server: ext_authz rules and quotas, and envoyproxy/ratelimit configs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// envoyproxy/ratelimit config directory (every `.yaml`/`.yml` under it, dot names skipped).
    pub ratelimit_dir: Option<PathBuf>,
    /// meshlens policy files: authorization rules and quotas for ext_authz.
    pub policy_files: Vec<PathBuf>,
    /// Where quotas are counted: `memory` (this process) or `redis` (shared by replicas).
    pub backend: QuotaBackendKind,
    /// Redis for the `redis` backend.
    pub redis_url: String,
    /// Prefix of every Redis key meshlens writes.
    pub redis_key_prefix: String,
    /// `rediss://` only: the CA of Redis' certificate (unset: the system's CAs).
    pub redis_ca: PathBuf,
    /// `rediss://` only: a client certificate and key, for Redis' `tls-auth-clients yes`.
    pub redis_client_cert: PathBuf,
    pub redis_client_key: PathBuf,
    /// Longest wait for Redis in one check; then the check fails open or closed.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Fixed-window keys over their limit remembered until their window ends and answered
    /// without Redis, as envoyproxy/ratelimit's local cache (0: off).
    pub redis_local_cache_keys: usize,
    /// When the quota backend cannot answer: `open` (allow) or `closed` (refuse).
    pub failure_mode: FailureModeSetting,
    /// Rate limit service answers OK even when over a limit (decisions are still counted).
    pub shadow_mode: bool,
    /// Memory backend: most quota keys held at once.
    pub max_keys: usize,
    /// How often the config files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Most label sets of the per-limit and per-rule policy metrics.
    pub max_series: usize,
    /// Threads of the policy listener's own runtime; 0: one per core.
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QuotaBackendKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailureModeSetting {
    Open,
    Closed,
}

pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(15);

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            ratelimit_dir: None,
            policy_files: Vec::new(),
            backend: QuotaBackendKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_key_prefix: "meshlens_".into(),
            redis_ca: PathBuf::new(),
            redis_client_cert: PathBuf::new(),
            redis_client_key: PathBuf::new(),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_local_cache_keys: 100_000,
            failure_mode: FailureModeSetting::Open,
            shadow_mode: false,
            max_keys: meshlens_policy::engine::DEFAULT_MAX_KEYS,
            reload_interval: Duration::from_secs(2),
            max_series: meshlens_collector::policy::DEFAULT_MAX_POLICY_SERIES,
            threads: 0,
        }
    }
}

impl PolicyConfig {
    pub fn to_settings(&self) -> meshlens_policy::PolicySettings {
        use meshlens_policy::{quota::RedisConfig, Backend, FailureMode};
        let set = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        meshlens_policy::PolicySettings {
            ratelimit_dir: self.ratelimit_dir.clone(),
            policy_files: self.policy_files.clone(),
            backend: match self.backend {
                QuotaBackendKind::Memory => Backend::Memory {
                    max_keys: self.max_keys,
                },
                QuotaBackendKind::Redis => Backend::Redis(RedisConfig {
                    url: self.redis_url.clone(),
                    key_prefix: self.redis_key_prefix.clone(),
                    timeout: self.redis_timeout,
                    local_cache_keys: self.redis_local_cache_keys,
                    tls: meshlens_policy::quota::RedisTls {
                        ca: set(&self.redis_ca),
                        client_cert: set(&self.redis_client_cert),
                        client_key: set(&self.redis_client_key),
                    },
                }),
            },
            failure_mode: match self.failure_mode {
                FailureModeSetting::Open => FailureMode::Open,
                FailureModeSetting::Closed => FailureMode::Closed,
            },
            shadow_mode: self.shadow_mode,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, such as `info` or `meshlens=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

pub const DEFAULT_OTLP_GRPC: &str = "127.0.0.1:4317";
pub const DEFAULT_OTLP_HTTP: &str = "127.0.0.1:4318";
pub const DEFAULT_ZIPKIN: &str = "127.0.0.1:9411";
pub const DEFAULT_POLICY: &str = "127.0.0.1:9091";
pub const DEFAULT_WEB: &str = "127.0.0.1:20001";
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_RETENTION_FULL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ListenConfig {
    fn default() -> Self {
        let addr = |s: &str| s.parse().expect("default address parses");
        ListenConfig {
            otlp_grpc: addr(DEFAULT_OTLP_GRPC),
            otlp_http: addr(DEFAULT_OTLP_HTTP),
            zipkin: addr(DEFAULT_ZIPKIN),
            policy: addr(DEFAULT_POLICY),
            web: addr(DEFAULT_WEB),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            database_url: meshlens_storage::DEFAULT_DATABASE_URL.to_string(),
            retention: DEFAULT_RETENTION,
            retention_full: DEFAULT_RETENTION_FULL,
            keep_errors: true,
            keep_slow: true,
            keep_samples_per_minute: 2,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            sqlite_synchronous: "normal".into(),
            max_connections: 8,
            probe_interval: Duration::from_secs(5),
            max_concurrent_searches: 8,
            search_timeout: Duration::from_secs(10),
            max_search_range: meshlens_storage::DEFAULT_MAX_SEARCH_RANGE,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        let span = meshlens_topology::SpanLimits::default();
        IngestConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            queue_spans: meshlens_collector::pipeline::DEFAULT_QUEUE_SPANS,
            queue_bytes: meshlens_collector::pipeline::DEFAULT_QUEUE_BYTES,
            max_batch_spans: meshlens_collector::pipeline::DEFAULT_MAX_BATCH_SPANS,
            writers: 0,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_min_rate: 1024,
            body_min_rate_grace: Duration::from_secs(5),
            max_buffered_bytes: 64 << 20,
            max_span_attributes: span.max_attributes,
            max_attribute_value_bytes: span.max_value_bytes,
            max_span_events: span.max_events,
            max_span_links: span.max_links,
            max_span_name_bytes: span.max_name_bytes,
            max_bytes_per_trace: meshlens_collector::pipeline::limits::DEFAULT_MAX_BYTES_PER_TRACE,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Writers for the configured database, when not set explicitly.
    pub fn writers(&self) -> usize {
        match self.ingest.writers {
            0 if self.storage.database_url.starts_with("postgres") => 4,
            0 => 1,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let c = Config::default();
        assert_eq!(c.listen.otlp_grpc.to_string(), "127.0.0.1:4317");
        assert_eq!(c.listen.otlp_http.to_string(), "127.0.0.1:4318");
        assert_eq!(c.listen.zipkin.to_string(), "127.0.0.1:9411");
        assert_eq!(c.listen.policy.to_string(), "127.0.0.1:9091");
        assert_eq!(c.listen.web.to_string(), "127.0.0.1:20001");
        assert_eq!(c.storage.database_url, "sqlite://data/meshlens.db");
        assert_eq!(c.storage.retention, Duration::from_secs(72 * 3600));
        assert_eq!(c.ingest.max_message_bytes, 4 * 1024 * 1024);
        assert_eq!(c.ingest.queue_spans, 65_536);
        assert_eq!(c.ingest.max_concurrent_requests, 64);
        assert_eq!(c.ingest.body_timeout, Duration::from_secs(30));
        assert_eq!(c.writers(), 1);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.graph.pairing_ttl, Duration::from_secs(10));
        assert_eq!(c.graph.max_pending, 100_000);
        assert_eq!(c.graph.max_series, 10_000);
        assert_eq!(c.graph.queue_bytes, 32 << 20);
        assert_eq!(c.ingest.queue_bytes, 64 << 20);
        assert_eq!(c.ingest.max_buffered_bytes, 64 << 20);
        let limits = c.memory.limits(None);
        assert_eq!(
            (limits.soft_bytes, limits.hard_bytes),
            (328 << 20, 410 << 20)
        );
        let limits = c.memory.limits(Some(1 << 30));
        assert_eq!(
            (limits.soft_bytes >> 20, limits.hard_bytes >> 20),
            (655, 819)
        );
        assert_eq!(
            Config::from_toml("[graph]\nqueue_metric_bytes = 1000\n")
                .unwrap()
                .graph
                .queue_bytes,
            1000,
            "the old name is still read"
        );
        assert_eq!(c.policy.backend, QuotaBackendKind::Memory);
        assert_eq!(c.policy.failure_mode, FailureModeSetting::Open);
        assert_eq!(c.policy.redis_timeout, Duration::from_millis(15));
        assert_eq!(c.policy.reload_interval, Duration::from_secs(2));
        assert_eq!(c.policy.threads, 0, "one per core");
        assert_eq!(c.policy.redis_local_cache_keys, 100_000);
        let h = c.graph.to_graph_config().unwrap().health;
        assert_eq!(
            (h.server_errors.degraded_pct, h.server_errors.failure_pct),
            (0.0, 10.0)
        );
        assert_eq!(
            (h.http_4xx.degraded_pct, h.http_4xx.failure_pct),
            (10.0, 20.0)
        );
        assert_eq!(
            (h.grpc_errors.degraded_pct, h.grpc_errors.failure_pct),
            (0.0, 10.0)
        );
    }

    #[test]
    fn health_thresholds_are_configurable() {
        let c =
            Config::from_toml("[graph.health.http_4xx]\ndegraded_pct = 5.0\nfailure_pct = 50.0\n")
                .unwrap();
        let h = c.graph.to_graph_config().unwrap().health;
        assert_eq!(
            (h.http_4xx.degraded_pct, h.http_4xx.failure_pct),
            (5.0, 50.0)
        );
        assert_eq!(h.server_errors.failure_pct, 10.0);
    }

    #[test]
    fn plain_cluster_names_map_to_services() {
        let c = Config::from_toml("[graph.clusters]\nmeet_cluster = \"shop/meet:v2\"\n").unwrap();
        let g = c.graph.to_graph_config().unwrap();
        assert_eq!(
            g.clusters.resolve("meet_cluster").unwrap().node.id(),
            "service:shop/meet"
        );
        let bad = Config::from_toml("[graph.clusters]\nx = \"a:b:c\"\n").unwrap();
        let e = bad.graph.to_graph_config().unwrap_err();
        assert!(
            e.contains("graph.clusters") && e.contains("\"a:b:c\""),
            "{e}"
        );
    }

    #[test]
    fn tls_applies_to_every_listener_and_each_may_differ() {
        let c = Config::from_toml(
            "[tls]\ncert = \"s.crt\"\nkey = \"s.key\"\n\
             [tls.policy]\nclient_ca = \"ca.crt\"\n[tls.web]\nenabled = false\n",
        )
        .unwrap();
        let grpc = c.tls.for_listener("otlp_grpc").unwrap().unwrap();
        assert_eq!(grpc.cert, PathBuf::from("s.crt"));
        assert_eq!(grpc.client_ca, None);
        let policy = c.tls.for_listener("policy").unwrap().unwrap();
        assert_eq!(policy.client_ca, Some(PathBuf::from("ca.crt")));
        assert_eq!(c.tls.for_listener("web").unwrap(), None);
        assert_eq!(Config::default().tls.for_listener("web").unwrap(), None);
        let half = Config::from_toml("[tls]\ncert = \"s.crt\"\n").unwrap();
        let e = half.tls.for_listener("zipkin").unwrap_err();
        assert!(e.contains("both cert and key"), "{e}");
        let ca_alone = Config::from_toml("[tls.policy]\nclient_ca = \"ca.crt\"\n").unwrap();
        let e = ca_alone.tls.for_listener("policy").unwrap_err();
        assert!(e.contains("client_ca needs"), "{e}");
        let no_ca = Config::from_toml(
            "[tls]\ncert = \"s.crt\"\nkey = \"s.key\"\nallowed_identities = [\"spiffe://a/*\"]\n",
        )
        .unwrap();
        let e = no_ca.tls.for_listener("policy").unwrap_err();
        assert!(e.contains("allowed_identities needs client_ca"), "{e}");
        let old = Config::from_toml("[tls]\nmin_version = \"1.0\"\n").unwrap();
        let e = old.tls.for_listener("web").unwrap_err();
        assert!(e.contains("1.0"), "{e}");
        // The effective config prints and reads back the same.
        let printed = toml::to_string(&c).unwrap();
        assert_eq!(Config::from_toml(&printed).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Config::from_toml("[storage]\nretension = \"1h\"\n").unwrap_err();
        assert!(err.to_string().contains("retension"), "{err}");
    }

    #[test]
    fn a_partial_file_keeps_other_defaults() {
        let c =
            Config::from_toml("[storage]\nretention = \"2h\"\n[listen]\nweb = \"127.0.0.1:1\"\n")
                .unwrap();
        assert_eq!(c.storage.retention, Duration::from_secs(7200));
        assert_eq!(c.listen.web.port(), 1);
        assert_eq!(c.listen.otlp_grpc.port(), 4317);
    }
}
