//! The catalogue of meshlens' own metrics: every `meshlens_*` name is defined here and nowhere else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

/// meshlens' own metrics, registered in one registry that `/metrics` renders, and the large
/// families beside them.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Families too large to decode all at once for a scrape (the product metrics, up to their
    /// series cap each): a registry each, encoded one after another (`exposition`).
    pub large: LargeFamilies,
    /// Every metric registered, own and large, as `docs/metrics.md` lists them.
    catalogue: std::sync::Arc<RwLock<Vec<Entry>>>,
    /// Spans accepted by a receiver (before the store commit).
    pub ingest_spans: IntCounterVec,
    /// Spans refused, by protocol and reason (invalid ids, bad times, overload, store failure…).
    pub ingest_rejected_spans: IntCounterVec,
    /// Metric data points (remote write samples) accepted, by protocol; those of metrics the
    /// graph does not read are taken and counted too.
    pub ingest_metric_points: IntCounterVec,
    /// Metric data points refused, by protocol and reason.
    pub ingest_rejected_metric_points: IntCounterVec,
    /// Series received by a receiver that sends them (Prometheus remote write), by protocol.
    pub ingest_metric_series: IntCounterVec,
    /// Prometheus staleness markers received (a series ended; not a value), by protocol.
    pub ingest_stale_markers: IntCounterVec,
    /// Remote write label sets checked before, known by id (bounded; past the bound, forgotten).
    pub ingest_checked_label_sets: IntGauge,
    /// Parts of spans cut by the span limits, by protocol and field (`attributes`, `values`,
    /// `events`, `links`, `names`).
    pub ingest_span_limit_cuts: IntCounterVec,
    /// Traces whose stored bytes are being counted against `max_bytes_per_trace`.
    pub ingest_tracked_traces: IntGauge,
    /// Whole requests refused, by protocol and reason (malformed, too large, unsupported media type…).
    pub ingest_rejected_requests: IntCounterVec,
    /// Spans waiting in the queue between receivers and the writer.
    pub ingest_queue_depth: IntGauge,
    /// Bytes of request bodies being read or waiting for their receiver (bounded by
    /// `[ingest] max_buffered_bytes`; past it, requests are refused and retried).
    pub ingest_buffered_bytes: IntGauge,
    /// Bytes (decoded) of the spans waiting in that queue (bounded by `[ingest] queue_bytes`).
    pub ingest_queue_bytes: IntGauge,
    /// Heap bytes in use, as the memory limiter counts them.
    pub memory_heap_bytes: IntGauge,
    /// The memory limiter's pressure: 0 normal, 1 past the soft limit, 2 past the hard limit.
    pub memory_pressure: IntGauge,
    /// The memory limiter's limits, by `limit` (`soft`, `hard`).
    pub memory_limit_bytes: IntGaugeVec,
    /// Bytes of the graph's backlog shed past the hard memory limit.
    pub memory_shed_bytes: IntCounter,
    /// Times the allocator was asked to give its free pages back (past the soft limit on a
    /// resident set well over the heap).
    pub memory_releases: IntCounter,
    /// Time to write and commit one group of batches.
    pub store_commit_seconds: Histogram,
    /// Spans committed to the store.
    pub store_spans_written: IntCounter,
    /// 1 while the store takes commits (the last commit or readiness probe succeeded), else 0.
    pub store_writable: IntGauge,
    /// Panics caught and survived, by thread (`graph`, `ingest_writer`, `sqlite_writer`).
    pub panics: IntCounterVec,
    /// Failed commits, by kind.
    pub store_errors: IntCounterVec,
    /// Spans deleted by retention.
    pub retention_deleted_spans: IntCounter,
    /// Client and server spans waiting in the pairing store for their other side.
    pub topology_pending_spans: IntGauge,
    /// Version-level edges the graph keeps (active or idle within the longest window).
    pub topology_edges: IntGauge,
    /// Nodes at the ends of those edges.
    pub topology_nodes: IntGauge,
    /// Observations counted on an overflow edge (to or from `__overflow__`) because the edge they
    /// named would have taken the graph past `[graph] max_edges` or `max_nodes`.
    pub topology_overflow_observations: IntCounter,
    /// Spans by what became of them in the pairing store: `paired`, `expired` (time to live ran
    /// out), `evicted` (store full, oldest first), `unpaired` (ended with no edge at all), and
    /// `dropped` (the graph thread's queue was full; they are stored, just not on the graph).
    pub topology_spans: IntCounterVec,
    /// Edges observations made from one side alone (roots, databases, named peers).
    pub topology_virtual_calls: IntCounter,
    /// Proxy metric points the graph could not place: their resource names no service (an
    /// Envoy stat sink without resource detectors sends no `service.name`).
    pub topology_unplaced_points: IntCounter,
    /// Samples of a cumulative series at or before its last one (a retried remote write, or out
    /// of order): left out of the graph, never counted twice.
    pub topology_late_points: IntCounter,
    /// New label sets a product metric family counted under its overflow set (`__overflow__`)
    /// because it had its most label sets, by family (`traces_service_graph`,
    /// `traces_spanmetrics`): once per batch that had them.
    pub topology_series_overflow: IntCounterVec,
    /// Label sets of product metrics removed after going unused (as Tempo's metrics generator
    /// drops stale series), by family.
    pub topology_series_evicted: IntCounterVec,
    /// Bytes of spans and metrics waiting for the graph thread (bounded by `[graph] queue_bytes`:
    /// past it, spans are left off the graph and metric writes answered 503 and retried).
    pub topology_queued_bytes: IntGauge,
    /// Proxy metric series the graph counts by id, without their labels (bounded).
    pub topology_known_series: IntGauge,
    /// Policy checks by API (`ext_authz`, `ratelimit`) and decision (`allow`, `deny`,
    /// `rate_limited`, `unavailable` (failing closed); `ok`, `over_limit`; `invalid` for
    /// malformed requests).
    pub policy_checks: IntCounterVec,
    /// Server-side decision time of a check, by API.
    pub policy_check_seconds: HistogramVec,
    /// Hits on each limit or quota rule, by outcome (`within`, `over`, `shadow_over`).
    pub policy_quota_hits: IntCounterVec,
    /// Refused requests by API and by what refused them (rule, quota, or limit).
    pub policy_denials: IntCounterVec,
    /// Requests matched by AUDIT rules, by rule.
    pub policy_audits: IntCounterVec,
    /// Quota backend failures (the check then failed open or closed), by backend and kind.
    pub policy_backend_errors: IntCounterVec,
    /// Config loads, the first one included, by result (`success`, `failure`).
    pub policy_config_reloads: IntCounterVec,
    /// Unix time of the last config load that succeeded.
    pub policy_config_last_success: IntGauge,
    /// 1 if the last config load succeeded, else 0.
    pub policy_config_last_successful: IntGauge,
    /// Label sets not exported because a policy metric reached its series cap, by metric.
    pub policy_series_dropped: IntCounterVec,
    pub policy_local_over_answers: IntCounterVec,
    /// Connections open, by listener.
    pub listener_open_connections: IntGaugeVec,
    /// Connections closed before serving, by listener and reason (`limit`: the listener's cap
    /// was reached; `tls`: the handshake failed (plaintext, no or a bad client certificate);
    /// `handshake_timeout`; `identity`: a client certificate whose identity is not allowed).
    pub listener_refused_connections: IntCounterVec,
    /// Connections the server ended, by listener and reason (`idle`: no request in flight for
    /// the idle timeout; `no_request`: none began within the header timeout; `max_age`).
    pub listener_closed_connections: IntCounterVec,
    /// TLS certificate loads (the first included), by listener and result.
    pub tls_reloads: IntCounterVec,
    /// End of validity of the certificate a listener serves (Unix seconds).
    pub tls_cert_not_after: IntGaugeVec,
    /// Tokens file loads (the first included), by file (`web`, `ingest`) and result.
    pub auth_reloads: IntCounterVec,
    /// Quota keys the memory store holds.
    pub policy_quota_keys: IntGauge,
    /// Quota keys the memory store forgot before their window ended, to make room.
    pub policy_quota_evictions: IntCounter,
    /// Web sessions open (token logins not yet expired or ended).
    pub web_sessions: IntGauge,
    /// Web token logins, by result (`success`, `refused`).
    pub web_logins: IntCounterVec,
}

/// Every `meshlens_*` name in the catalogue (as registered: each is written once, where its
/// metric is made), for tests that check dashboards and docs against it.
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

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            ingest_spans: IntCounterVec::new(
                Opts::new(
                    "meshlens_ingest_spans_total",
                    "Spans accepted by a receiver.",
                ),
                &["protocol"],
            )
            .expect("valid metric"),
            ingest_rejected_spans: IntCounterVec::new(
                Opts::new(
                    "meshlens_ingest_rejected_spans_total",
                    "Spans refused, by protocol and reason.",
                ),
                &["protocol", "reason"],
            )
            .expect("valid metric"),
            ingest_rejected_requests: IntCounterVec::new(
                Opts::new(
                    "meshlens_ingest_rejected_requests_total",
                    "Whole export requests refused, by protocol and reason.",
                ),
                &["protocol", "reason"],
            )
            .expect("valid metric"),
            ingest_metric_points: IntCounterVec::new(
                Opts::new(
                    "meshlens_ingest_metric_points_total",
                    "Metric data points (remote write samples) accepted, those of metrics the graph does not read included.",
                ),
                &["protocol"],
            )
            .expect("valid metric"),
            ingest_rejected_metric_points: IntCounterVec::new(
                Opts::new(
                    "meshlens_ingest_rejected_metric_points_total",
                    "Metric data points refused, by protocol and reason.",
                ),
                &["protocol", "reason"],
            )
            .expect("valid metric"),
            ingest_metric_series: counter_vec(
                "meshlens_ingest_metric_series_total",
                "Series received (Prometheus remote write), by protocol.",
                &["protocol"],
            ),
            ingest_stale_markers: counter_vec(
                "meshlens_ingest_stale_markers_total",
                "Prometheus staleness markers received (a series ended; not a value), by protocol.",
                &["protocol"],
            ),
            ingest_checked_label_sets: IntGauge::new(
                "meshlens_ingest_checked_label_sets",
                "Remote write label sets checked before, known by id.",
            )
            .expect("valid metric"),
            ingest_queue_depth: IntGauge::new(
                "meshlens_ingest_queue_depth",
                "Spans queued between the receivers and the store writer.",
            )
            .expect("valid metric"),
            ingest_buffered_bytes: IntGauge::new(
                "meshlens_ingest_buffered_bytes",
                "Bytes of request bodies being read or waiting for their receiver.",
            )
            .expect("valid metric"),
            ingest_queue_bytes: IntGauge::new(
                "meshlens_ingest_queue_bytes",
                "Bytes (decoded) of the spans queued between the receivers and the store writer.",
            )
            .expect("valid metric"),
            memory_heap_bytes: IntGauge::new(
                "meshlens_memory_heap_bytes",
                "Heap bytes in use, as the memory limiter counts them.",
            )
            .expect("valid metric"),
            memory_pressure: IntGauge::new(
                "meshlens_memory_pressure",
                "The memory limiter's pressure: 0 normal, 1 past the soft limit (new exports \
                 refused), 2 past the hard limit (the graph's backlog shed too).",
            )
            .expect("valid metric"),
            memory_limit_bytes: gauge_vec(
                "meshlens_memory_limit_bytes",
                "The memory limiter's limits in heap bytes, by limit (soft, hard).",
                &["limit"],
            ),
            memory_shed_bytes: IntCounter::new(
                "meshlens_memory_shed_bytes_total",
                "Bytes of the graph's backlog shed past the hard memory limit.",
            )
            .expect("valid metric"),
            memory_releases: IntCounter::new(
                "meshlens_memory_releases_total",
                "Times the allocator was asked to give its free pages back (past the soft limit, \
                 with a resident set well over the heap in use).",
            )
            .expect("valid metric"),
            store_commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "meshlens_store_commit_seconds",
                    "Time to write and commit one group of batches.",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
            )
            .expect("valid metric"),
            store_spans_written: IntCounter::new(
                "meshlens_store_spans_written_total",
                "Spans committed to the store.",
            )
            .expect("valid metric"),
            store_errors: IntCounterVec::new(
                Opts::new(
                    "meshlens_store_errors_total",
                    "Failed store operations, by operation.",
                ),
                &["operation"],
            )
            .expect("valid metric"),
            retention_deleted_spans: IntCounter::new(
                "meshlens_retention_deleted_spans_total",
                "Spans deleted because they were older than the retention.",
            )
            .expect("valid metric"),
            topology_pending_spans: IntGauge::new(
                "meshlens_topology_pending_spans",
                "Spans waiting in the pairing store for their other side.",
            )
            .expect("valid metric"),
            topology_edges: IntGauge::new(
                "meshlens_topology_edges",
                "Version-level edges the service graph keeps.",
            )
            .expect("valid metric"),
            topology_nodes: IntGauge::new(
                "meshlens_topology_nodes",
                "Nodes of the service graph.",
            )
            .expect("valid metric"),
            topology_overflow_observations: IntCounter::new(
                "meshlens_topology_overflow_observations_total",
                "Observations counted on an overflow edge because the graph was at its caps.",
            )
            .expect("valid metric"),
            topology_spans: IntCounterVec::new(
                Opts::new(
                    "meshlens_topology_spans_total",
                    "Spans by what became of them in the pairing store.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            topology_virtual_calls: IntCounter::new(
                "meshlens_topology_virtual_calls_total",
                "Calls recorded from one side alone (roots, databases, named peers).",
            )
            .expect("valid metric"),
            topology_unplaced_points: IntCounter::new(
                "meshlens_topology_unplaced_points_total",
                "Proxy metric points whose resource names no service.",
            )
            .expect("valid metric"),
            topology_late_points: IntCounter::new(
                "meshlens_topology_late_points_total",
                "Samples at or before their series' last one (retried or out of order), left out of the graph.",
            )
            .expect("valid metric"),
            topology_series_overflow: IntCounterVec::new(
                Opts::new(
                    "meshlens_topology_series_overflow_total",
                    "New label sets counted under the overflow set because a family had its most.",
                ),
                &["metric"],
            )
            .expect("valid metric"),
            topology_series_evicted: IntCounterVec::new(
                Opts::new(
                    "meshlens_topology_series_evicted_total",
                    "Label sets of product metrics removed after going unused.",
                ),
                &["metric"],
            )
            .expect("valid metric"),
            topology_queued_bytes: IntGauge::new(
                "meshlens_topology_queued_bytes",
                "Bytes of spans and metrics waiting for the graph thread.",
            )
            .expect("valid metric"),
            topology_known_series: IntGauge::new(
                "meshlens_topology_known_series",
                "Proxy metric series the graph counts by id, without their labels.",
            )
            .expect("valid metric"),
            policy_checks: counter_vec(
                "meshlens_policy_checks_total",
                "Policy checks by API and decision.",
                &["api", "decision"],
            ),
            policy_check_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "meshlens_policy_check_duration_seconds",
                    "Server-side decision time of a policy check.",
                )
                .buckets(CHECK_BUCKETS.to_vec()),
                &["api"],
            )
            .expect("valid metric"),
            policy_quota_hits: counter_vec(
                "meshlens_policy_quota_hits_total",
                "Hits on each rate limit or quota rule, by outcome.",
                &["limit", "outcome"],
            ),
            policy_denials: counter_vec(
                "meshlens_policy_denials_total",
                "Refused requests by API and by the rule, quota or limit that refused them.",
                &["api", "by"],
            ),
            policy_audits: counter_vec(
                "meshlens_policy_audits_total",
                "Requests matched by AUDIT rules.",
                &["rule"],
            ),
            policy_backend_errors: counter_vec(
                "meshlens_policy_backend_errors_total",
                "Quota backend failures, by backend and kind.",
                &["backend", "kind"],
            ),
            policy_config_reloads: counter_vec(
                "meshlens_policy_config_reloads_total",
                "Policy config loads (the first included) by result.",
                &["result"],
            ),
            policy_config_last_success: IntGauge::new(
                "meshlens_policy_config_last_reload_success_timestamp_seconds",
                "Unix time of the last policy config load that succeeded.",
            )
            .expect("valid metric"),
            policy_config_last_successful: IntGauge::new(
                "meshlens_policy_config_last_reload_successful",
                "1 if the last policy config load succeeded.",
            )
            .expect("valid metric"),
            policy_series_dropped: counter_vec(
                "meshlens_policy_series_dropped_total",
                "Label sets not exported because a policy metric reached its series cap.",
                &["metric"],
            ),
            policy_local_over_answers: counter_vec(
                "meshlens_policy_local_over_limit_answers_total",
                "Quotas answered over their limit from the Redis backend's record of keys over \
                 their limit until their window ends, without asking Redis.",
                &["api"],
            ),
            listener_open_connections: gauge_vec(
                "meshlens_listener_open_connections",
                "Connections open, by listener.",
                &["listener"],
            ),
            listener_refused_connections: counter_vec(
                "meshlens_listener_refused_connections_total",
                "Connections closed before serving, by listener and reason (limit, tls, \
                 handshake_timeout, identity).",
                &["listener", "reason"],
            ),
            listener_closed_connections: counter_vec(
                "meshlens_listener_closed_connections_total",
                "Connections the server ended, by listener and reason (idle, no_request, max_age, \
                 too_many_pings).",
                &["listener", "reason"],
            ),
            tls_reloads: counter_vec(
                "meshlens_tls_reloads_total",
                "TLS certificate loads (the first included), by listener and result.",
                &["listener", "result"],
            ),
            tls_cert_not_after: gauge_vec(
                "meshlens_tls_certificate_not_after_timestamp_seconds",
                "End of validity of the certificate a listener serves (Unix seconds).",
                &["listener"],
            ),
            auth_reloads: counter_vec(
                "meshlens_auth_reloads_total",
                "Tokens file loads (the first included), by file (web, ingest) and result.",
                &["file", "result"],
            ),
            ingest_span_limit_cuts: counter_vec(
                "meshlens_ingest_span_limit_cuts_total",
                "Parts of spans cut by the span limits (the span kept), by protocol and field \
                 (attributes, values, events, links, names).",
                &["protocol", "field"],
            ),
            ingest_tracked_traces: IntGauge::new(
                "meshlens_ingest_tracked_traces",
                "Traces whose bytes are counted against max_bytes_per_trace.",
            )
            .expect("valid metric"),
            policy_quota_keys: IntGauge::new(
                "meshlens_policy_quota_keys",
                "Quota keys the memory store holds.",
            )
            .expect("valid metric"),
            policy_quota_evictions: IntCounter::new(
                "meshlens_policy_quota_evictions_total",
                "Quota keys the memory store forgot before their window ended, least recently \
                 used first, to make room for new ones (policy max_keys).",
            )
            .expect("valid metric"),
            store_writable: {
                let g = IntGauge::new(
                    "meshlens_store_writable",
                    "1 while the store takes commits (the last commit or readiness probe \
                     succeeded), else 0.",
                )
                .expect("valid metric");
                g.set(1);
                g
            },
            panics: {
                let c = counter_vec(
                    "meshlens_panics_total",
                    "Panics caught and survived, by thread (graph, ingest_writer, sqlite_writer): \
                     the input or commit is lost to that thread, which goes on.",
                    &["thread"],
                );
                for thread in ["graph", "ingest_writer", "sqlite_writer"] {
                    c.with_label_values(&[thread]);
                }
                c
            },
            web_sessions: IntGauge::new(
                "meshlens_web_sessions",
                "Web sessions open (token logins not yet expired or ended).",
            )
            .expect("valid metric"),
            web_logins: counter_vec(
                "meshlens_web_logins_total",
                "Web token logins, by result (success, refused).",
                &["result"],
            ),
            registry,
            large: Default::default(),
            catalogue: Default::default(),
        };
        let collectors = vec![
            typed(&m.ingest_spans),
            typed(&m.ingest_rejected_spans),
            typed(&m.ingest_rejected_requests),
            typed(&m.ingest_metric_points),
            typed(&m.ingest_rejected_metric_points),
            typed(&m.ingest_metric_series),
            typed(&m.ingest_stale_markers),
            typed(&m.ingest_checked_label_sets),
            typed(&m.ingest_queue_depth),
            typed(&m.ingest_buffered_bytes),
            typed(&m.ingest_queue_bytes),
            typed(&m.memory_heap_bytes),
            typed(&m.memory_pressure),
            typed(&m.memory_limit_bytes),
            typed(&m.memory_shed_bytes),
            typed(&m.memory_releases),
            typed(&m.web_sessions),
            typed(&m.store_writable),
            typed(&m.panics),
            typed(&m.policy_quota_keys),
            typed(&m.policy_quota_evictions),
            typed(&m.ingest_span_limit_cuts),
            typed(&m.ingest_tracked_traces),
            typed(&m.web_logins),
            typed(&m.store_commit_seconds),
            typed(&m.store_spans_written),
            typed(&m.store_errors),
            typed(&m.retention_deleted_spans),
            typed(&m.topology_pending_spans),
            typed(&m.topology_edges),
            typed(&m.topology_nodes),
            typed(&m.topology_overflow_observations),
            typed(&m.topology_spans),
            typed(&m.topology_virtual_calls),
            typed(&m.topology_series_overflow),
            typed(&m.topology_series_evicted),
            typed(&m.topology_unplaced_points),
            typed(&m.topology_late_points),
            typed(&m.topology_queued_bytes),
            typed(&m.topology_known_series),
            typed(&m.policy_checks),
            typed(&m.policy_check_seconds),
            typed(&m.policy_quota_hits),
            typed(&m.policy_denials),
            typed(&m.policy_audits),
            typed(&m.policy_backend_errors),
            typed(&m.policy_config_reloads),
            typed(&m.policy_config_last_success),
            typed(&m.policy_config_last_successful),
            typed(&m.policy_series_dropped),
            typed(&m.policy_local_over_answers),
            typed(&m.listener_open_connections),
            typed(&m.listener_refused_connections),
            typed(&m.listener_closed_connections),
            typed(&m.tls_reloads),
            typed(&m.tls_cert_not_after),
            typed(&m.auth_reloads),
        ];
        for (c, kind) in collectors {
            m.catalogue
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(entries(c.as_ref(), kind));
            m.registry.register(c).expect("metric names are unique");
        }
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

    /// Every series whose label values are known before any event (protocols, reasons,
    /// outcomes) is exported at 0 from the start, so a dashboard panel or an alert on its
    /// increase has a number from the first scrape, not "No data". Series labelled by the data
    /// (a limit, a rule, a listener's name) start where they are known: listeners when they
    /// bind, policy decisions when the policy server starts.
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
        for kind in ["write", "retention", "history"] {
            self.store_errors.with_label_values(&[kind]);
        }
        for outcome in ["paired", "expired", "evicted", "unpaired", "dropped"] {
            self.topology_spans.with_label_values(&[outcome]);
        }
        for family in ["traces_service_graph", "traces_spanmetrics"] {
            self.topology_series_overflow.with_label_values(&[family]);
            self.topology_series_evicted.with_label_values(&[family]);
        }
        for result in ["success", "refused"] {
            self.web_logins.with_label_values(&[result]);
        }
        for api in ["ext_authz", "ratelimit"] {
            self.policy_local_over_answers.with_label_values(&[api]);
        }
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

/// The Prometheus type of a metric kind used here.
pub trait Kind {
    const KIND: &'static str;
}

macro_rules! kinds {
    ($($kind:literal: $($t:ty),+;)+) => {
        $($(impl Kind for $t {
            const KIND: &'static str = $kind;
        })+)+
    };
}

kinds! {
    "counter": IntCounter, IntCounterVec;
    "gauge": IntGauge, IntGaugeVec;
    "histogram": Histogram, HistogramVec;
}

/// `c`, boxed for a registry, with its type.
pub fn typed<C: prometheus::core::Collector + Kind + Clone + 'static>(c: &C) -> Typed {
    (Box::new(c.clone()), C::KIND)
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
        m.store_errors.with_label_values(&["write"]).inc();
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
        m.topology_spans.with_label_values(&["paired"]).inc();
        m.topology_series_overflow
            .with_label_values(&["traces_spanmetrics"])
            .inc();
        m.topology_series_evicted
            .with_label_values(&["traces_spanmetrics"])
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
        m.policy_config_reloads
            .with_label_values(&["success"])
            .inc();
        m.policy_series_dropped.with_label_values(&["x"]).inc();
        m.policy_local_over_answers
            .with_label_values(&["ratelimit"])
            .inc();
        m.listener_open_connections
            .with_label_values(&["web"])
            .inc();
        m.listener_refused_connections
            .with_label_values(&["web", "limit"])
            .inc();
        m.listener_closed_connections
            .with_label_values(&["web", "idle"])
            .inc();
        m.tls_reloads.with_label_values(&["web", "success"]).inc();
        m.tls_cert_not_after.with_label_values(&["web"]).set(1);
        m.auth_reloads.with_label_values(&["web", "success"]).inc();
        m.web_logins.with_label_values(&["success"]).inc();
        m.memory_limit_bytes.with_label_values(&["soft"]).set(1);
        m.ingest_span_limit_cuts
            .with_label_values(&["otlp_grpc", "values"])
            .inc();
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
