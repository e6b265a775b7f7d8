//! The catalogue of meshlens' own metrics: every `meshlens_*` name is declared here, once (its
//! field, type, name, labels and help in one entry of `catalogue!`), and nowhere else. Labels
//! whose values are known are typed ([`Labelled`]): call sites name a value of an enum, never a
//! string, and every known series exists at 0 from the start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// Declares the catalogue: the `Metrics` struct with a field per metric, and `Metrics::declared`,
/// which makes each one, registers it and lists it in the catalogue.
macro_rules! catalogue {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty =
        $name:literal, [$($label:literal),*], $help:literal $(, buckets $buckets:expr)?;)+) => {
        /// meshlens' own metrics, registered in one registry that `/metrics` renders, and the
        /// large families beside them.
        #[derive(Clone)]
        pub struct Metrics {
            pub registry: Registry,
            /// Families too large to decode all at once for a scrape (the product metrics, up to
            /// their series cap each): a registry each, encoded one after another (`exposition`).
            pub large: LargeFamilies,
            /// Every metric registered, own and large, as `docs/metrics.md` lists them.
            catalogue: std::sync::Arc<RwLock<Vec<Entry>>>,
            $($(#[doc = $doc])* pub $field: $ty,)+
        }

        impl Metrics {
            fn declared() -> Self {
                let registry = Registry::new();
                let mut catalogue = Vec::new();
                $(
                    let buckets: Option<Vec<f64>> = None $(.or(Some($buckets)))?;
                    let $field = <$ty as Declare>::declare(
                        Opts::new($name, $help).variable_labels(
                            vec![$($label.to_string()),*]),
                        buckets,
                    );
                    catalogue.extend(entries($field.collector().as_ref(), <$ty as Declare>::KIND));
                    registry.register($field.collector()).expect("metric names are unique");
                )+
                Metrics {
                    registry,
                    large: Default::default(),
                    catalogue: std::sync::Arc::new(RwLock::new(catalogue)),
                    $($field,)+
                }
            }
        }
    };
}

catalogue! {
    /// Spans accepted by a receiver (before the store commit).
    ingest_spans: IntCounterVec =
        "meshlens_ingest_spans_total", ["protocol"],
        "Spans accepted by a receiver.";
    /// Spans refused, by protocol and reason (invalid ids, bad times, overload, store failure…).
    ingest_rejected_spans: IntCounterVec =
        "meshlens_ingest_rejected_spans_total", ["protocol", "reason"],
        "Spans refused, by protocol and reason.";
    /// Metric data points (remote write samples) accepted, by protocol; those of metrics the
    /// graph does not read are taken and counted too.
    ingest_metric_points: IntCounterVec =
        "meshlens_ingest_metric_points_total", ["protocol"],
        "Metric data points (remote write samples) accepted, those of metrics the graph does \
         not read included.";
    /// Metric data points refused, by protocol and reason.
    ingest_rejected_metric_points: IntCounterVec =
        "meshlens_ingest_rejected_metric_points_total", ["protocol", "reason"],
        "Metric data points refused, by protocol and reason.";
    /// Series received by a receiver that sends them (Prometheus remote write), by protocol.
    ingest_metric_series: IntCounterVec =
        "meshlens_ingest_metric_series_total", ["protocol"],
        "Series received (Prometheus remote write), by protocol.";
    /// Prometheus staleness markers received (a series ended; not a value), by protocol.
    ingest_stale_markers: IntCounterVec =
        "meshlens_ingest_stale_markers_total", ["protocol"],
        "Prometheus staleness markers received (a series ended; not a value), by protocol.";
    /// Remote write label sets checked before, known by id (bounded; past the bound, forgotten).
    ingest_checked_label_sets: IntGauge =
        "meshlens_ingest_checked_label_sets", [],
        "Remote write label sets checked before, known by id.";
    /// Parts of spans cut by the span limits, by protocol and field (`attributes`, `values`,
    /// `events`, `links`, `names`).
    ingest_span_limit_cuts: IntCounterVec =
        "meshlens_ingest_span_limit_cuts_total", ["protocol", "field"],
        "Parts of spans cut by the span limits (the span kept), by protocol and field \
         (attributes, values, events, links, names).";
    /// Traces whose stored bytes are being counted against `max_bytes_per_trace`.
    ingest_tracked_traces: IntGauge =
        "meshlens_ingest_tracked_traces", [],
        "Traces whose bytes are counted against max_bytes_per_trace.";
    /// Whole requests refused, by protocol and reason (malformed, too large, unsupported media type…).
    ingest_rejected_requests: IntCounterVec =
        "meshlens_ingest_rejected_requests_total", ["protocol", "reason"],
        "Whole export requests refused, by protocol and reason.";
    /// Spans waiting in the queue between receivers and the writer.
    ingest_queue_depth: IntGauge =
        "meshlens_ingest_queue_depth", [],
        "Spans queued between the receivers and the store writer.";
    /// Bytes of request bodies being read or waiting for their receiver (bounded by
    /// `[ingest] max_buffered_bytes`; past it, requests are refused and retried).
    ingest_buffered_bytes: IntGauge =
        "meshlens_ingest_buffered_bytes", [],
        "Bytes of request bodies being read or waiting for their receiver.";
    /// Bytes (decoded) of the spans waiting in that queue (bounded by `[ingest] queue_bytes`).
    ingest_queue_bytes: IntGauge =
        "meshlens_ingest_queue_bytes", [],
        "Bytes (decoded) of the spans queued between the receivers and the store writer.";
    /// Heap bytes in use, as the memory limiter counts them.
    memory_heap_bytes: IntGauge =
        "meshlens_memory_heap_bytes", [],
        "Heap bytes in use, as the memory limiter counts them.";
    /// The memory limiter's pressure: 0 normal, 1 past the soft limit, 2 past the hard limit.
    memory_pressure: IntGauge =
        "meshlens_memory_pressure", [],
        "The memory limiter's pressure: 0 normal, 1 past the soft limit (new exports refused), \
         2 past the hard limit (the graph's backlog shed too).";
    /// The memory limiter's limits, by `limit` (`soft`, `hard`).
    memory_limit_bytes: Labelled<IntGaugeVec, MemoryLimit> =
        "meshlens_memory_limit_bytes", ["limit"],
        "The memory limiter's limits in heap bytes, by limit (soft, hard).";
    /// Bytes of the graph's backlog shed past the hard memory limit.
    memory_shed_bytes: IntCounter =
        "meshlens_memory_shed_bytes_total", [],
        "Bytes of the graph's backlog shed past the hard memory limit.";
    /// Times the allocator was asked to give its free pages back (past the soft limit on a
    /// resident set well over the heap).
    memory_releases: IntCounter =
        "meshlens_memory_releases_total", [],
        "Times the allocator was asked to give its free pages back (past the soft limit, with a \
         resident set well over the heap in use).";
    /// Time to write and commit one group of batches.
    store_commit_seconds: Histogram =
        "meshlens_store_commit_seconds", [],
        "Time to write and commit one group of batches.",
        buckets exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
    /// Spans committed to the store.
    store_spans_written: IntCounter =
        "meshlens_store_spans_written_total", [],
        "Spans committed to the store.";
    /// 1 while the store takes commits (the last commit or readiness probe succeeded), else 0.
    store_writable: IntGauge =
        "meshlens_store_writable", [],
        "1 while the store takes commits (the last commit or readiness probe succeeded), else \
         0.";
    /// Failed commits, by kind.
    store_errors: Labelled<IntCounterVec, StoreOperation> =
        "meshlens_store_errors_total", ["operation"],
        "Failed store operations, by operation.";
    /// Panics caught and survived, by thread or background task ([`Thread`]).
    panics: Labelled<IntCounterVec, Thread> =
        "meshlens_panics_total", ["thread"],
        "Panics caught and survived, by thread or background task (graph, ingest_writer, \
         sqlite_writer, graph_tick, retention, store_probe, ...): the input, commit or round is \
         lost to it, and it goes on.";
    /// Spans deleted by retention.
    retention_deleted_spans: IntCounter =
        "meshlens_retention_deleted_spans_total", [],
        "Spans deleted because they were older than the retention.";
    /// Bytes the store takes (SQLite's pages; PostgreSQL's tables with their indexes), as the
    /// last retention round read it.
    store_bytes: IntGauge =
        "meshlens_store_bytes", [],
        "Bytes the store takes (SQLite's pages, without the write-ahead log; PostgreSQL's tables \
         with their indexes), as of the last retention round.";
    /// Spans still stored as rows, written before the store kept blocks: read in place until
    /// retention removes them (0 once none is left).
    store_row_spans: IntGauge =
        "meshlens_store_row_spans", [],
        "Spans still stored as rows (written before blocks), read in place until retention \
         removes them.";
    /// Spans of traces no keep rule named, dropped by tiered retention past `retention_full`.
    retention_thinned_spans: IntCounter =
        "meshlens_retention_thinned_spans_total", [],
        "Spans of traces no keep rule named, dropped past retention_full (tiered retention).";
    /// Traces tiered retention kept past `retention_full`, by the rule that kept them (`error`,
    /// `slow`, `sample`; a trace kept by two counts under both).
    retention_kept_traces: Labelled<IntCounterVec, KeepReason> =
        "meshlens_retention_kept_traces_total", ["reason"],
        "Traces kept past retention_full by tiered retention, by the rule that kept them.";
    /// Client and server spans waiting in the pairing store for their other side.
    topology_pending_spans: IntGauge =
        "meshlens_topology_pending_spans", [],
        "Spans waiting in the pairing store for their other side.";
    /// Version-level edges the graph keeps (active or idle within the longest window).
    topology_edges: IntGauge =
        "meshlens_topology_edges", [],
        "Version-level edges the service graph keeps.";
    /// Nodes at the ends of those edges.
    topology_nodes: IntGauge =
        "meshlens_topology_nodes", [],
        "Nodes of the service graph.";
    /// Observations counted on an overflow edge (to or from `__overflow__`) because the edge they
    /// named would have taken the graph past `[graph] max_edges` or `max_nodes`.
    topology_overflow_observations: IntCounter =
        "meshlens_topology_overflow_observations_total", [],
        "Observations counted on an overflow edge because the graph was at its caps.";
    /// Spans by what became of them in the pairing store: `paired`, `expired` (time to live ran
    /// out), `evicted` (store full, oldest first), `unpaired` (ended with no edge at all), and
    /// `dropped` (the graph thread's queue was full; they are stored, just not on the graph).
    topology_spans: Labelled<IntCounterVec, SpanOutcome> =
        "meshlens_topology_spans_total", ["outcome"],
        "Spans by what became of them in the pairing store.";
    /// Edges observations made from one side alone (roots, databases, named peers).
    topology_virtual_calls: IntCounter =
        "meshlens_topology_virtual_calls_total", [],
        "Calls recorded from one side alone (roots, databases, named peers).";
    /// Proxy metric points the graph could not place: their resource names no service (an
    /// Envoy stat sink without resource detectors sends no `service.name`).
    topology_unplaced_points: IntCounter =
        "meshlens_topology_unplaced_points_total", [],
        "Proxy metric points whose resource names no service.";
    /// Samples of a cumulative series at or before its last one (a retried remote write, or out
    /// of order): left out of the graph, never counted twice.
    topology_late_points: IntCounter =
        "meshlens_topology_late_points_total", [],
        "Samples at or before their series' last one (retried or out of order), left out of the \
         graph.";
    /// New label sets a product metric family counted under its overflow set (`__overflow__`)
    /// because it had its most label sets, by family (`traces_service_graph`,
    /// `traces_spanmetrics`): once per batch that had them.
    topology_series_overflow: Labelled<IntCounterVec, ProductFamily> =
        "meshlens_topology_series_overflow_total", ["metric"],
        "New label sets counted under the overflow set because a family had its most.";
    /// Label sets of product metrics removed after going unused (as Tempo's metrics generator
    /// drops stale series), by family.
    topology_series_evicted: Labelled<IntCounterVec, ProductFamily> =
        "meshlens_topology_series_evicted_total", ["metric"],
        "Label sets of product metrics removed after going unused.";
    /// Bytes of spans and metrics waiting for the graph thread (bounded by `[graph] queue_bytes`:
    /// past it, spans are left off the graph and metric writes answered 503 and retried).
    topology_queued_bytes: IntGauge =
        "meshlens_topology_queued_bytes", [],
        "Bytes of spans and metrics waiting for the graph thread.";
    /// Proxy metric series the graph counts by id, without their labels (bounded).
    topology_known_series: IntGauge =
        "meshlens_topology_known_series", [],
        "Proxy metric series the graph counts by id, without their labels.";
    /// Policy checks by API (`ext_authz`, `ratelimit`) and decision (`allow`, `deny`,
    /// `rate_limited`, `unavailable` (failing closed); `ok`, `over_limit`; `invalid` for
    /// malformed requests).
    policy_checks: IntCounterVec =
        "meshlens_policy_checks_total", ["api", "decision"],
        "Policy checks by API and decision.";
    /// Server-side decision time of a check, by API.
    policy_check_seconds: HistogramVec =
        "meshlens_policy_check_duration_seconds", ["api"],
        "Server-side decision time of a policy check.",
        buckets CHECK_BUCKETS.to_vec();
    /// Hits on each limit or quota rule, by outcome (`within`, `over`, `shadow_over`).
    policy_quota_hits: IntCounterVec =
        "meshlens_policy_quota_hits_total", ["limit", "outcome"],
        "Hits on each rate limit or quota rule, by outcome.";
    /// Refused requests by API and by what refused them (rule, quota, or limit).
    policy_denials: IntCounterVec =
        "meshlens_policy_denials_total", ["api", "by"],
        "Refused requests by API and by the rule, quota or limit that refused them.";
    /// Requests matched by AUDIT rules, by rule.
    policy_audits: IntCounterVec =
        "meshlens_policy_audits_total", ["rule"],
        "Requests matched by AUDIT rules.";
    /// Quota backend failures (the check then failed open or closed), by backend and kind.
    policy_backend_errors: IntCounterVec =
        "meshlens_policy_backend_errors_total", ["backend", "kind"],
        "Quota backend failures, by backend and kind.";
    /// Config loads, the first one included, by result (`success`, `failure`).
    policy_config_reloads: Labelled<IntCounterVec, LoadResult> =
        "meshlens_policy_config_reloads_total", ["result"],
        "Policy config loads (the first included) by result.";
    /// Unix time of the last config load that succeeded.
    policy_config_last_success: IntGauge =
        "meshlens_policy_config_last_reload_success_timestamp_seconds", [],
        "Unix time of the last policy config load that succeeded.";
    /// 1 if the last config load succeeded, else 0.
    policy_config_last_successful: IntGauge =
        "meshlens_policy_config_last_reload_successful", [],
        "1 if the last policy config load succeeded.";
    /// Label sets not exported because a policy metric reached its series cap, by metric.
    policy_series_dropped: IntCounterVec =
        "meshlens_policy_series_dropped_total", ["metric"],
        "Label sets not exported because a policy metric reached its series cap.";
    /// Quotas answered over their limit without asking Redis, from the Redis backend's record of
    /// keys over their limit until their window ends, by API.
    policy_local_over_answers: Labelled<IntCounterVec, PolicyApi> =
        "meshlens_policy_local_over_limit_answers_total", ["api"],
        "Quotas answered over their limit from the Redis backend's record of keys over their \
         limit until their window ends, without asking Redis.";
    /// Quota keys the memory store holds.
    policy_quota_keys: IntGauge =
        "meshlens_policy_quota_keys", [],
        "Quota keys the memory store holds.";
    /// Quota keys the memory store forgot before their window ended, to make room.
    policy_quota_evictions: IntCounter =
        "meshlens_policy_quota_evictions_total", [],
        "Quota keys the memory store forgot before their window ended, least recently used \
         first, to make room for new ones (policy max_keys).";
    /// Connections open, by listener.
    listener_open_connections: Labelled<IntGaugeVec, Named> =
        "meshlens_listener_open_connections", ["listener"],
        "Connections open, by listener.";
    /// Connections closed before serving, by listener and reason (`limit`: the listener's cap
    /// was reached; `tls`: the handshake failed (plaintext, no or a bad client certificate);
    /// `handshake_timeout`; `identity`: a client certificate whose identity is not allowed).
    listener_refused_connections: Labelled<IntCounterVec, (Named, ConnectionRefusal)> =
        "meshlens_listener_refused_connections_total", ["listener", "reason"],
        "Connections closed before serving, by listener and reason (limit, tls, \
         handshake_timeout, identity).";
    /// Connections the server ended, by listener and reason (`idle`: no request in flight for
    /// the idle timeout; `no_request`: none began within the header timeout; `max_age`).
    listener_closed_connections: Labelled<IntCounterVec, (Named, ConnectionEnd)> =
        "meshlens_listener_closed_connections_total", ["listener", "reason"],
        "Connections the server ended, by listener and reason (idle, no_request, max_age, \
         too_many_pings).";
    /// TLS certificate loads (the first included), by listener and result.
    tls_reloads: Labelled<IntCounterVec, (Named, LoadResult)> =
        "meshlens_tls_reloads_total", ["listener", "result"],
        "TLS certificate loads (the first included), by listener and result.";
    /// End of validity of the certificate a listener serves (Unix seconds).
    tls_cert_not_after: Labelled<IntGaugeVec, Named> =
        "meshlens_tls_certificate_not_after_timestamp_seconds", ["listener"],
        "End of validity of the certificate a listener serves (Unix seconds).";
    /// Tokens file loads (the first included), by file (`web`, `ingest`) and result.
    auth_reloads: Labelled<IntCounterVec, (TokensFile, LoadResult)> =
        "meshlens_auth_reloads_total", ["file", "result"],
        "Tokens file loads (the first included), by file (web, ingest) and result.";
    /// Web sessions open (token logins not yet expired or ended).
    web_sessions: IntGauge =
        "meshlens_web_sessions", [],
        "Web sessions open (token logins not yet expired or ended).";
    /// Web token logins, by result (`success`, `refused`).
    web_logins: Labelled<IntCounterVec, LoginResult> =
        "meshlens_web_logins_total", ["result"],
        "Web token logins, by result (success, refused).";
}

/// A metric the catalogue declares: made from its options (and buckets, for histograms).
pub trait Declare {
    /// Its Prometheus type: `counter`, `gauge` or `histogram`.
    const KIND: &'static str;
    fn declare(opts: Opts, buckets: Option<Vec<f64>>) -> Self;
    /// Boxed for a registry.
    fn collector(&self) -> Box<dyn prometheus::core::Collector>;
}

macro_rules! declare {
    ($kind:literal, $t:ty, |$opts:ident, $buckets:ident| $make:expr) => {
        impl Declare for $t {
            const KIND: &'static str = $kind;
            fn declare($opts: Opts, $buckets: Option<Vec<f64>>) -> Self {
                $make.expect("valid metric")
            }
            fn collector(&self) -> Box<dyn prometheus::core::Collector> {
                Box::new(self.clone())
            }
        }
    };
}

fn histogram_opts(opts: Opts, buckets: Option<Vec<f64>>) -> HistogramOpts {
    let h = HistogramOpts::from(opts);
    match buckets {
        Some(b) => h.buckets(b),
        None => h,
    }
}

declare!("counter", IntCounter, |o, _b| IntCounter::with_opts(o));
declare!("gauge", IntGauge, |o, _b| IntGauge::with_opts(o));
declare!("histogram", Histogram, |o, b| Histogram::with_opts(
    histogram_opts(o, b)
));
declare!("counter", IntCounterVec, |o, _b| {
    let labels = o.variable_labels.clone();
    IntCounterVec::new(o, &labels.iter().map(String::as_str).collect::<Vec<_>>())
});
declare!("gauge", IntGaugeVec, |o, _b| {
    let labels = o.variable_labels.clone();
    IntGaugeVec::new(o, &labels.iter().map(String::as_str).collect::<Vec<_>>())
});
declare!("histogram", HistogramVec, |o, b| {
    let labels = o.variable_labels.clone();
    HistogramVec::new(
        histogram_opts(o, b),
        &labels.iter().map(String::as_str).collect::<Vec<_>>(),
    )
});

/// A family of series (counters, gauges, histograms) by label values.
pub trait Family: Declare + Clone {
    type Series;
    fn series(&self, values: &[&str]) -> Self::Series;
}

impl Family for IntCounterVec {
    type Series = IntCounter;
    fn series(&self, values: &[&str]) -> IntCounter {
        self.with_label_values(values)
    }
}

impl Family for IntGaugeVec {
    type Series = IntGauge;
    fn series(&self, values: &[&str]) -> IntGauge {
        self.with_label_values(values)
    }
}

/// The values of a family's labels, in order. Those of an enum are all known, so their series
/// are made at 0 when the family is; a [`Named`] value (a listener's name) is known only when
/// its thing starts, which makes its series then ([`Labelled::start`]).
pub trait Labels: Copy {
    fn values(self) -> Vec<&'static str>;
    /// Every value known before any event.
    fn known() -> Vec<Self>;
}

/// A name known only at run time (a listener's), as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named(pub &'static str);

impl Labels for Named {
    fn values(self) -> Vec<&'static str> {
        vec![self.0]
    }
    fn known() -> Vec<Self> {
        Vec::new()
    }
}

impl<A: Labels, B: Labels> Labels for (A, B) {
    fn values(self) -> Vec<&'static str> {
        let mut v = self.0.values();
        v.extend(self.1.values());
        v
    }
    fn known() -> Vec<Self> {
        A::known()
            .into_iter()
            .flat_map(|a| B::known().into_iter().map(move |b| (a, b)))
            .collect()
    }
}

/// Label values known before any event, declared once: an enum each, whose values are the only
/// ones its call sites can write.
macro_rules! label_values {
    ($($(#[doc = $doc:literal])* $name:ident { $($variant:ident = $value:literal),+ $(,)? })+) => {$(
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value),+
                }
            }
        }

        impl Labels for $name {
            fn values(self) -> Vec<&'static str> {
                vec![self.as_str()]
            }
            fn known() -> Vec<Self> {
                $name::ALL.to_vec()
            }
        }
    )+};
}

label_values! {
    /// A thread or background task whose panics are caught and survived.
    Thread {
        Graph = "graph",
        IngestWriter = "ingest_writer",
        SqliteWriter = "sqlite_writer",
        GraphTick = "graph_tick",
        GraphSnapshots = "graph_snapshots",
        History = "history",
        Retention = "retention",
        Checkpoint = "checkpoint",
        StoreProbe = "store_probe",
        MemoryCheck = "memory_check",
        PolicyReload = "policy_reload",
        PolicyRefusals = "policy_refusals",
        TlsReload = "tls_reload",
        TokensReload = "tokens_reload",
    }
    /// A store operation that can fail.
    StoreOperation { Write = "write", Retention = "retention", History = "history" }
    /// Why tiered retention kept a trace (`meshlens_storage::KEEP_REASONS`, in its order).
    KeepReason { Error = "error", Slow = "slow", Sample = "sample" }
    /// What became of a span in the pairing store.
    SpanOutcome {
        Paired = "paired",
        Expired = "expired",
        Evicted = "evicted",
        Unpaired = "unpaired",
        Dropped = "dropped",
    }
    /// A product metric family (Tempo's names).
    ProductFamily { ServiceGraph = "traces_service_graph", SpanMetrics = "traces_spanmetrics" }
    /// How loading a config, a certificate or a file went.
    LoadResult { Success = "success", Failure = "failure" }
    /// How a web token login went.
    LoginResult { Success = "success", Refused = "refused" }
    /// One of the memory limiter's limits.
    MemoryLimit { Soft = "soft", Hard = "hard" }
    /// A policy API.
    PolicyApi { ExtAuthz = "ext_authz", Ratelimit = "ratelimit" }
    /// A policy check's decision (each API has some of them: its `DECISIONS`).
    Decision {
        Allow = "allow",
        Deny = "deny",
        RateLimited = "rate_limited",
        Unavailable = "unavailable",
        Ok = "ok",
        OverLimit = "over_limit",
        Invalid = "invalid",
    }
    /// A tokens file.
    TokensFile { Web = "web", Ingest = "ingest" }
    /// Why a listener closed a connection before serving it.
    ConnectionRefusal {
        Limit = "limit",
        Tls = "tls",
        HandshakeTimeout = "handshake_timeout",
        Identity = "identity",
    }
    /// Why the server ended a connection.
    ConnectionEnd {
        Idle = "idle",
        NoRequest = "no_request",
        MaxAge = "max_age",
        TooManyPings = "too_many_pings",
    }
}

/// A family whose label values are typed (`L`): `at` names the series by value, and every series
/// whose values are known exists from the start, at 0.
#[derive(Clone)]
pub struct Labelled<F, L> {
    family: F,
    labels: std::marker::PhantomData<fn(L)>,
}

impl<F: Family, L: Labels> Labelled<F, L> {
    pub fn at(&self, labels: L) -> F::Series {
        self.family.series(&labels.values())
    }

    /// Makes the series (at 0) of every known value `f` maps to labels: those of a listener, say,
    /// when it starts.
    pub fn start<K: Labels>(&self, f: impl Fn(K) -> L) {
        for k in K::known() {
            self.at(f(k));
        }
    }

    /// The family as Prometheus' client has it.
    pub fn family(&self) -> &F {
        &self.family
    }
}

impl<F: Family, L: Labels> Declare for Labelled<F, L> {
    const KIND: &'static str = F::KIND;
    fn declare(opts: Opts, buckets: Option<Vec<f64>>) -> Self {
        let l = Labelled {
            family: F::declare(opts, buckets),
            labels: std::marker::PhantomData,
        };
        for labels in L::known() {
            l.at(labels);
        }
        l
    }
    fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        self.family.collector()
    }
}

/// Every `meshlens_*` name in the catalogue (as registered: each is written once, where its
/// metric is declared), for tests that check dashboards and docs against it.
pub fn metric_names() -> Vec<String> {
    Metrics::new()
        .catalogue()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.starts_with("meshlens_"))
        .collect()
}

/// The standard process metrics exported beside the catalogue (Linux), read from /proc.
pub const PROCESS_METRIC_NAMES: &[&str] = &[
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Decision-time buckets, fine where checks should be (a few to tens of microseconds).
const CHECK_BUCKETS: [f64; 24] = [
    0.000_001,
    0.000_002,
    0.000_003,
    0.000_005,
    0.000_007_5,
    0.000_01,
    0.000_015,
    0.000_02,
    0.000_03,
    0.000_05,
    0.000_075,
    0.000_1,
    0.000_2,
    0.000_5,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
];

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics::declared();
        m.store_writable.set(1);
        // Memory, CPU, threads and file descriptors of the process, read from /proc.
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        m.zero_known_series();
        m
    }

    /// Every series whose label values are known before any event is exported at 0 from the
    /// start, so a dashboard panel or an alert on its increase has a number from the first
    /// scrape, not "No data". Typed families ([`Labelled`]) do this when they are declared; the
    /// ingest families, whose reasons differ by protocol, here. Series labelled by the data (a
    /// limit, a rule, a listener's name) start where they are known: listeners when they bind,
    /// policy decisions when the policy server starts.
    fn zero_known_series(&self) {
        use crate::{IngestError, Protocol};
        use meshlens_topology::prom::SeriesProblem;
        use meshlens_topology::InvalidSpan;
        for p in Protocol::ALL {
            let name = p.as_str();
            for reason in IngestError::REASONS {
                self.ingest_rejected_requests
                    .with_label_values(&[name, reason]);
            }
            if p.carries_spans() {
                self.ingest_spans.with_label_values(&[name]);
                let reasons = InvalidSpan::ALL.iter().map(|r| r.as_str());
                for reason in reasons.chain(IngestError::REASONS.iter().copied()) {
                    self.ingest_rejected_spans
                        .with_label_values(&[name, reason]);
                }
                for (field, _) in meshlens_topology::Cut::default().by_field() {
                    self.ingest_span_limit_cuts
                        .with_label_values(&[name, field]);
                }
            }
            if p.carries_metrics() {
                self.ingest_metric_points.with_label_values(&[name]);
                let problems = SeriesProblem::ALL.iter().map(|r| r.as_str());
                for reason in problems
                    .chain(["invalid"])
                    .chain(IngestError::REASONS.iter().copied())
                {
                    self.ingest_rejected_metric_points
                        .with_label_values(&[name, reason]);
                }
            }
        }
        let remote_write = Protocol::PromRemoteWrite.as_str();
        self.ingest_metric_series.with_label_values(&[remote_write]);
        self.ingest_stale_markers.with_label_values(&[remote_write]);
    }

    /// Registers a large family in a registry of its own.
    pub fn register_large(&self, (family, kind): Typed) {
        self.catalogue
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(entries(family.as_ref(), kind));
        let registry = Registry::new();
        registry.register(family).expect("a family per registry");
        self.large
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(registry);
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        exposition(&self.registry, &self.large)
            .map(|chunk| String::from_utf8_lossy(&chunk).into_owned())
            .collect()
    }

    /// Every family, decoded (for tests).
    pub fn gather_all(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut out = self.registry.gather();
        for r in self.large.read().unwrap_or_else(|e| e.into_inner()).iter() {
            out.extend(r.gather());
        }
        out
    }

    /// Every metric registered (meshlens' own, then the large families), by name.
    pub fn catalogue(&self) -> Vec<Entry> {
        self.catalogue
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One metric as the catalogue lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

/// A collector with its type, for the registry and the catalogue.
pub type Typed = (Box<dyn prometheus::core::Collector>, &'static str);

/// `c`, boxed for a registry, with its type.
pub fn typed<C: Declare>(c: &C) -> Typed {
    (c.collector(), C::KIND)
}

fn entries(c: &dyn prometheus::core::Collector, kind: &'static str) -> Vec<Entry> {
    c.desc()
        .iter()
        .map(|d| Entry {
            name: d.fq_name.clone(),
            kind,
            labels: d.variable_labels.clone(),
            help: d.help.clone(),
        })
        .collect()
}

impl Metrics {
    /// `docs/metrics.md`: every metric of the catalogue, with its type, labels and meaning.
    pub fn docs(&self) -> String {
        let mut out = String::from(
            "# Metrics\n\nWhat `/metrics` exports, generated from the catalogue \
             (`collector/src/metrics.rs`, `collector/src/graph/export.rs`) by the test \
             `metrics::docs_tests::docs_list_every_metric`; do not edit by hand \
             (`MESHLENS_UPDATE_DOCS=1 cargo test -p meshlens-collector docs_list_every_metric` \
             rewrites it). Besides these, the process' own `process_*` metrics.\n",
        );
        let own = |e: &Entry| e.name.starts_with("meshlens_");
        for (title, intro, pick) in [
            (
                "meshlens' own",
                "Every labelled series whose label values are known (protocols, reasons, \
                 outcomes) is exported at 0 from the start.",
                &own as &dyn Fn(&Entry) -> bool,
            ),
            (
                "Product metrics (Tempo's names)",
                "Service graph and span metrics, for dashboards and alerts, each family with at \
                 most `[graph] max_series` label sets (past it, an `__overflow__` set).",
                &|e: &Entry| !own(e),
            ),
        ] {
            out.push_str(&format!(
                "\n## {title}\n\n{intro}\n\n| metric | type | labels | what |\n|---|---|---|---|\n"
            ));
            let mut rows: Vec<Entry> = self.catalogue().into_iter().filter(|e| pick(e)).collect();
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            for e in rows {
                let name = match e.kind {
                    "counter" if !e.name.ends_with("_total") => format!("{}_total", e.name),
                    _ => e.name.clone(),
                };
                let labels: Vec<String> = e.labels.iter().map(|l| format!("`{l}`")).collect();
                out.push_str(&format!(
                    "| `{name}` | {} | {} | {} |\n",
                    e.kind,
                    labels.join(", "),
                    e.help.replace('|', "\\|")
                ));
            }
        }
        out
    }
}

/// Large metric families, a registry each.
pub type LargeFamilies = std::sync::Arc<RwLock<Vec<Registry>>>;

/// The text exposition of `registry` and then of each large family, encoded as the iterator is
/// read, a family at a time and within it [`SERIES_PER_CHUNK`] series at a time: a scrape holds
/// one large family decoded and one chunk of text, not the whole exposition.
pub fn exposition(
    registry: &Registry,
    large: &LargeFamilies,
) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let mut registries = vec![registry.clone()];
    registries.extend(
        large
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    registries
        .into_iter()
        .flat_map(|r| r.gather().into_iter().flat_map(family_chunks))
}

/// Series encoded into one chunk of the exposition (a histogram's series is a line per bucket).
pub const SERIES_PER_CHUNK: usize = 256;

/// A family's text in chunks of [`SERIES_PER_CHUNK`] series; its `# HELP` and `# TYPE` lines
/// only in the first (a second `# TYPE` for a name is an error to Prometheus' parser).
fn family_chunks(
    mut family: prometheus::proto::MetricFamily,
) -> impl Iterator<Item = Vec<u8>> + Send {
    use prometheus::Encoder;
    let metrics = family.take_metric();
    let chunks = metrics.len().div_ceil(SERIES_PER_CHUNK);
    let mut metrics = metrics.into_iter();
    (0..chunks).map(move |i| {
        let mut part = family.clone();
        part.set_metric(metrics.by_ref().take(SERIES_PER_CHUNK).collect());
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail but on a malformed family, which registration refuses.
        let _ = prometheus::TextEncoder::new().encode(&[part], &mut out);
        if i > 0 {
            let header: usize = out
                .split_inclusive(|b| *b == b'\n')
                .take_while(|line| line.starts_with(b"# "))
                .map(<[u8]>::len)
                .sum();
            out.drain(..header);
        }
        out
    })
}

/// A cap on the label sets of a metric family: up to `limit` sets are exported, later new ones
/// are refused (the caller counts them, or counts them under an overflow set). Each admitted set
/// may keep a value made once (a counter looked up in its family), found again by one hash of
/// the labels under a shared read lock: checks and exports on the hot path never queue on a
/// mutex. Sets unused for a while can be swept out (`sweep`), so the first `limit` sets do not
/// hold the cap forever.
pub struct SeriesCap<T = ()> {
    limit: usize,
    /// Sweeps so far: each set remembers the one it was last used in (no clock read per use).
    epoch: AtomicU64,
    seen: RwLock<HashMap<u64, Kept<T>>>,
}

struct Kept<T> {
    value: T,
    labels: Box<[Box<str>]>,
    used: AtomicU64,
}

/// The key of a label set of a family: a 64-bit hash of the family's name and the values, in
/// order.
fn label_key(family: &str, labels: &[&str]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static STATE: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    family.hash(&mut h);
    labels.hash(&mut h);
    h.finish()
}

impl<T> SeriesCap<T> {
    pub fn new(limit: usize) -> Self {
        SeriesCap {
            limit,
            epoch: AtomicU64::new(0),
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// Runs `use_` on the value kept for `labels` of `family`, made by `make` the first time;
    /// `None` (and neither runs) if the set is new and the cap is reached.
    pub fn with<R>(
        &self,
        family: &str,
        labels: &[&str],
        make: impl FnOnce() -> T,
        use_: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let key = label_key(family, labels);
        let epoch = self.epoch.load(Ordering::Relaxed);
        if let Some(kept) = self
            .seen
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            // Written once per sweep at most: the line stays shared between cores otherwise.
            if kept.used.load(Ordering::Relaxed) != epoch {
                kept.used.store(epoch, Ordering::Relaxed);
            }
            return Some(use_(&kept.value));
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if !seen.contains_key(&key) && seen.len() >= self.limit {
            return None;
        }
        let kept = seen.entry(key).or_insert_with(|| Kept {
            value: make(),
            labels: labels.iter().map(|l| Box::from(*l)).collect(),
            used: AtomicU64::new(epoch),
        });
        Some(use_(&kept.value))
    }

    /// Ends an epoch, and forgets the sets not used in the last `idle_epochs` of them; returns
    /// their labels (to remove their series from the family).
    pub fn sweep(&self, idle_epochs: u64) -> Vec<Box<[Box<str>]>> {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut gone = Vec::new();
        self.seen
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, kept| {
                let keep = kept.used.load(Ordering::Relaxed) + idle_epochs >= epoch;
                if !keep {
                    gone.push(std::mem::take(&mut kept.labels));
                }
                keep
            });
        gone
    }

    /// Label sets kept.
    pub fn len(&self) -> usize {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SeriesCap {
    /// Whether `labels` may be exported: admitted before, or new with room left.
    pub fn admit(&self, labels: &[&str]) -> bool {
        self.with("", labels, || (), |_| ()).is_some()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunked, a large family's text is what Prometheus' one-piece encoding of it is.
    #[test]
    fn the_exposition_in_chunks_is_the_exposition_whole() {
        use prometheus::Encoder;
        let m = Metrics::new();
        let family = prometheus::HistogramVec::new(
            HistogramOpts::new("test_latency_seconds", "Help."),
            &["peer"],
        )
        .unwrap();
        for i in 0..(2 * SERIES_PER_CHUNK + 3) {
            family
                .with_label_values(&[&format!("peer-{i}")])
                .observe(i as f64);
        }
        m.register_large(typed(&family));
        // Without the own registry, whose process metrics move between two reads.
        let chunks: Vec<Vec<u8>> = exposition(&Registry::new(), &m.large).collect();
        let mut whole = Vec::new();
        let gathered = m.large.read().unwrap()[0].gather();
        prometheus::TextEncoder::new()
            .encode(&gathered, &mut whole)
            .unwrap();
        let (chunked, whole) = (chunks.concat(), whole);
        assert!(
            chunked == whole,
            "{} bytes chunked, {} whole",
            chunked.len(),
            whole.len()
        );
        let of_family = chunks
            .iter()
            .filter(|c| String::from_utf8_lossy(c).contains("test_latency_seconds"))
            .count();
        assert_eq!(of_family, 3, "three chunks of the large family");
    }

    /// Typed families have every known series at 0 from the start; a listener's once it binds.
    #[test]
    fn typed_families_start_at_zero() {
        let m = Metrics::new();
        let text = m.render();
        for line in [
            "meshlens_panics_total{thread=\"sqlite_writer\"} 0",
            "meshlens_store_errors_total{operation=\"history\"} 0",
            "meshlens_topology_spans_total{outcome=\"dropped\"} 0",
            "meshlens_auth_reloads_total{file=\"ingest\",result=\"failure\"} 0",
            "meshlens_policy_local_over_limit_answers_total{api=\"ext_authz\"} 0",
            "meshlens_store_writable 1",
        ] {
            assert!(text.contains(line), "{line}");
        }
        assert!(!text.contains("meshlens_listener_refused_connections_total{"));
        m.listener_refused_connections
            .start(|reason| (Named("zipkin"), reason));
        m.listener_refused_connections
            .at((Named("zipkin"), ConnectionRefusal::Tls))
            .inc();
        let text = m.render();
        assert!(text.contains(
            "meshlens_listener_refused_connections_total{listener=\"zipkin\",reason=\"identity\"} 0"
        ));
        assert!(text.contains(
            "meshlens_listener_refused_connections_total{listener=\"zipkin\",reason=\"tls\"} 1"
        ));
    }

    #[test]
    fn catalogue_lists_every_registered_family() {
        let m = Metrics::new();
        m.ingest_spans.with_label_values(&["otlp_grpc"]).inc();
        m.ingest_rejected_spans
            .with_label_values(&["otlp_grpc", "x"])
            .inc();
        m.ingest_rejected_requests
            .with_label_values(&["otlp_grpc", "x"])
            .inc();
        m.ingest_metric_points
            .with_label_values(&["otlp_grpc"])
            .inc();
        m.ingest_rejected_metric_points
            .with_label_values(&["otlp_grpc", "x"])
            .inc();
        m.ingest_metric_series
            .with_label_values(&["prom_remote_write"])
            .inc();
        m.ingest_stale_markers
            .with_label_values(&["prom_remote_write"])
            .inc();
        m.policy_checks
            .with_label_values(&["ratelimit", "ok"])
            .inc();
        m.policy_check_seconds
            .with_label_values(&["ratelimit"])
            .observe(0.0);
        m.policy_quota_hits
            .with_label_values(&["d.k", "within"])
            .inc();
        m.policy_denials
            .with_label_values(&["ext_authz", "r"])
            .inc();
        m.policy_audits.with_label_values(&["r"]).inc();
        m.policy_backend_errors
            .with_label_values(&["redis", "timeout"])
            .inc();
        m.policy_series_dropped.with_label_values(&["x"]).inc();
        m.ingest_span_limit_cuts
            .with_label_values(&["otlp_grpc", "values"])
            .inc();
        // Typed families exist from the start; those by name once the name is known.
        m.listener_open_connections.at(Named("web")).inc();
        m.listener_refused_connections
            .start(|reason| (Named("web"), reason));
        m.listener_closed_connections
            .start(|reason| (Named("web"), reason));
        m.tls_reloads.start(|result| (Named("web"), result));
        m.tls_cert_not_after.at(Named("web")).set(1);
        let mut names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        names.sort();
        let mut want: Vec<String> = metric_names()
            .into_iter()
            .chain(PROCESS_METRIC_NAMES.iter().map(|s| s.to_string()))
            .collect();
        want.sort();
        assert_eq!(names, want);
    }
}

#[cfg(test)]
mod docs_tests {
    use super::*;

    /// `docs/metrics.md` lists every metric of the catalogue as it is now.
    #[test]
    fn docs_list_every_metric() {
        let metrics = Metrics::new();
        let _product = crate::graph::ProductMetrics::new(&metrics, 1);
        let want = metrics.docs();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        if std::env::var_os("MESHLENS_UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/metrics.md is not the catalogue's: MESHLENS_UPDATE_DOCS=1 cargo test -p meshlens-collector docs_list_every_metric"
        );
        for name in metric_names() {
            assert!(have.contains(&format!("`{name}`")), "{name}");
        }
    }
}
