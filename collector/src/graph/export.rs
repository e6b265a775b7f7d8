//! The product metrics meshlens computes for its users, in the names Grafana and Tempo use:
//! service graph series (`traces_service_graph_*`) and span metrics (`traces_spanmetrics_*`).
//! They are kept apart from meshlens' own `meshlens_*` catalogue, and every family has a cap on
//! its label sets so a burst of new span names cannot grow `/metrics` without bound.

use std::collections::HashMap;

use meshlens_topology::graph::{EdgeKey, EdgeObservation, NodeKey};
use meshlens_topology::{Span, SpanKind, StatusCode};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use crate::metrics::{typed, Metrics, ProductFamily, SeriesCap};

/// Every product metric name (histograms without their `_bucket`/`_sum`/`_count` suffixes).
pub const PRODUCT_METRIC_NAMES: &[&str] = &[
    "traces_service_graph_request_total",
    "traces_service_graph_request_failed_total",
    "traces_service_graph_request_server_seconds",
    "traces_service_graph_request_client_seconds",
    "traces_spanmetrics_calls_total",
    "traces_spanmetrics_latency",
];

/// Default cap on label sets per family.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// The value of the labels that name the data in an overflow set.
pub const OVERFLOW: &str = "__overflow__";

/// Ticks (about a second each) between sweeps of unused label sets.
const SWEEP_TICKS: u64 = 60;

/// Sweeps a label set may go unused before it is removed: 15 minutes, Tempo's metrics
/// generator's `stale_duration`.
const IDLE_SWEEPS: u64 = 15;

/// Latency buckets in seconds, from 100 µs: mesh hops are often sub-millisecond, and Tempo's
/// default buckets start at 100 ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Tempo's service graph labels, with `service.namespace` and `service.version` as dimensions
/// (named as Tempo names dimensions: `client_`/`server_` and the attribute with `_` for `.`), so
/// a dashboard can compare a canary's versions.
const EDGE_LABELS: &[&str] = &[
    "client",
    "server",
    "connection_type",
    "client_service_namespace",
    "server_service_namespace",
    "client_service_version",
    "server_service_version",
];
/// Tempo's span metrics labels, with `service.version` as a dimension.
const SPAN_LABELS: &[&str] = &[
    "service",
    "span_name",
    "span_kind",
    "status_code",
    "service_version",
];

/// Admits label sets up to a limit; past it, new ones are counted under the family's overflow
/// set (the names in its labels `__overflow__`, the kind, status or connection type kept), as the
/// OpenTelemetry spanmetrics connector does. Sets unused for 15 minutes are removed.
pub struct ProductMetrics {
    request_total: IntCounterVec,
    request_failed_total: IntCounterVec,
    request_server_seconds: HistogramVec,
    request_client_seconds: HistogramVec,
    calls_total: IntCounterVec,
    latency: HistogramVec,
    edge_cap: SeriesCap,
    span_cap: SeriesCap,
    metrics: Metrics,
    ticks: std::sync::atomic::AtomicU64,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    HistogramVec::new(opts, labels).expect("valid metric")
}

impl ProductMetrics {
    /// Creates the families and registers them with `metrics`, beside meshlens' own.
    pub fn new(metrics: &Metrics, max_series: usize) -> Self {
        let m = ProductMetrics {
            request_total: counter(
                "traces_service_graph_request_total",
                "Calls between two nodes of the service graph.",
                EDGE_LABELS,
            ),
            request_failed_total: counter(
                "traces_service_graph_request_failed_total",
                "Failed calls between two nodes of the service graph.",
                EDGE_LABELS,
            ),
            request_server_seconds: histogram(
                "traces_service_graph_request_server_seconds",
                "Call latency as the server measured it.",
                EDGE_LABELS,
            ),
            request_client_seconds: histogram(
                "traces_service_graph_request_client_seconds",
                "Call latency as the client measured it.",
                EDGE_LABELS,
            ),
            calls_total: counter(
                "traces_spanmetrics_calls_total",
                "Spans by service, name, kind and status.",
                SPAN_LABELS,
            ),
            latency: histogram(
                "traces_spanmetrics_latency",
                "Span durations in seconds by service, name, kind and status.",
                SPAN_LABELS,
            ),
            edge_cap: SeriesCap::new(max_series),
            span_cap: SeriesCap::new(max_series),
            metrics: metrics.clone(),
            ticks: Default::default(),
        };
        m.register(metrics);
        m
    }

    /// Each family is large (up to the cap's label sets): it is encoded apart from the others.
    fn register(&self, metrics: &Metrics) {
        let collectors = vec![
            typed(&self.request_total),
            typed(&self.request_failed_total),
            typed(&self.request_server_seconds),
            typed(&self.request_client_seconds),
            typed(&self.calls_total),
            typed(&self.latency),
        ];
        for c in collectors {
            metrics.register_large(c);
        }
    }

    /// Counts calls on the service graph's edges. Calls of one batch on the same edge are counted
    /// together, so each edge's label set is looked up once per batch.
    pub fn record_calls(&self, observations: &[EdgeObservation]) {
        #[derive(Default)]
        struct Calls {
            requests: u64,
            failed: u64,
            server_seconds: Vec<f64>,
            client_seconds: Vec<f64>,
        }
        let mut edges: HashMap<&EdgeKey, Calls, foldhash::fast::RandomState> = HashMap::default();
        for o in observations {
            let calls = edges.entry(&o.key).or_default();
            calls.requests += 1;
            calls.failed += o.failed() as u64;
            if let Some(ns) = o.server_latency_ns {
                calls.server_seconds.push(ns as f64 / 1e9);
            }
            if let Some(ns) = o.client_latency_ns {
                calls.client_seconds.push(ns as f64 / 1e9);
            }
        }
        for (key, calls) in edges {
            let ns = |n: &NodeKey| n.namespace.as_deref().unwrap_or("").to_string();
            let (client_ns, server_ns) = (ns(&key.client.node), ns(&key.server.node));
            let mut labels = [
                &*key.client.node.name,
                &*key.server.node.name,
                key.connection.as_str(),
                client_ns.as_str(),
                server_ns.as_str(),
                key.client.version.as_deref().unwrap_or(""),
                key.server.version.as_deref().unwrap_or(""),
            ];
            if !self.edge_cap.admit(&labels) {
                self.overflowed(ProductFamily::ServiceGraph);
                labels = [OVERFLOW, OVERFLOW, labels[2], "", "", "", ""];
            }
            self.request_total
                .with_label_values(&labels)
                .inc_by(calls.requests);
            if calls.failed > 0 {
                self.request_failed_total
                    .with_label_values(&labels)
                    .inc_by(calls.failed);
            }
            for (histogram, seconds) in [
                (&self.request_server_seconds, calls.server_seconds),
                (&self.request_client_seconds, calls.client_seconds),
            ] {
                if !seconds.is_empty() {
                    let h = histogram.with_label_values(&labels);
                    seconds.into_iter().for_each(|s| h.observe(s));
                }
            }
        }
    }

    /// Counts spans by service, name, kind and status. Spans of one batch that share labels are
    /// counted together, so each label set is looked up once per batch.
    pub fn record_spans(&self, spans: &[Span]) {
        type Group<'a> = (&'a str, &'a str, SpanKind, StatusCode, &'a str);
        let mut groups: HashMap<Group, Vec<f64>, foldhash::fast::RandomState> = HashMap::default();
        for s in spans {
            let version = s.resource.service.version.as_deref().unwrap_or("");
            groups
                .entry((s.service(), &s.name, s.kind, s.status.code, version))
                .or_default()
                .push(s.duration_ns() as f64 / 1e9);
        }
        for ((service, name, kind, status, version), durations) in groups {
            let mut labels = [service, name, span_kind(kind), status_code(status), version];
            if !self.span_cap.admit(&labels) {
                self.overflowed(ProductFamily::SpanMetrics);
                labels = [OVERFLOW, OVERFLOW, labels[2], labels[3], ""];
            }
            self.calls_total
                .with_label_values(&labels)
                .inc_by(durations.len() as u64);
            let h = self.latency.with_label_values(&labels);
            durations.into_iter().for_each(|d| h.observe(d));
        }
    }

    fn overflowed(&self, family: ProductFamily) {
        self.metrics.topology_series_overflow.at(family).inc();
    }

    /// Call about once a second: every minute, label sets unused for 15 minutes are removed
    /// from their families (and from the caps, making room for new ones).
    pub fn tick(&self) {
        use std::sync::atomic::Ordering;
        if self.ticks.fetch_add(1, Ordering::Relaxed) % SWEEP_TICKS == SWEEP_TICKS - 1 {
            self.sweep(IDLE_SWEEPS);
        }
    }

    /// Ends a sweep epoch and removes the label sets unused for `idle` of them.
    fn sweep(&self, idle: u64) {
        let families = [
            (
                ProductFamily::ServiceGraph,
                &self.edge_cap,
                vec![
                    &self.request_total as &dyn Remove,
                    &self.request_failed_total,
                    &self.request_server_seconds,
                    &self.request_client_seconds,
                ],
            ),
            (
                ProductFamily::SpanMetrics,
                &self.span_cap,
                vec![&self.calls_total as &dyn Remove, &self.latency],
            ),
        ];
        for (name, cap, vecs) in families {
            let gone = cap.sweep(idle);
            for labels in &gone {
                let values: Vec<&str> = labels.iter().map(|l| &**l).collect();
                for v in &vecs {
                    v.remove(&values);
                }
            }
            self.metrics
                .topology_series_evicted
                .at(name)
                .inc_by(gone.len() as u64);
        }
    }
}

/// A metric family a label set can be removed from.
trait Remove {
    fn remove(&self, labels: &[&str]);
}

impl<M: prometheus::core::MetricVecBuilder> Remove for prometheus::core::MetricVec<M> {
    fn remove(&self, labels: &[&str]) {
        // Absent (a failed-call counter that never counted one) is fine.
        let _ = self.remove_label_values(labels);
    }
}

/// The OTLP enum names Tempo and Grafana use in span metrics' labels.
fn span_kind(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
        SpanKind::Internal => "SPAN_KIND_INTERNAL",
        SpanKind::Server => "SPAN_KIND_SERVER",
        SpanKind::Client => "SPAN_KIND_CLIENT",
        SpanKind::Producer => "SPAN_KIND_PRODUCER",
        SpanKind::Consumer => "SPAN_KIND_CONSUMER",
    }
}

fn status_code(c: StatusCode) -> &'static str {
    match c {
        StatusCode::Unset => "STATUS_CODE_UNSET",
        StatusCode::Ok => "STATUS_CODE_OK",
        StatusCode::Error => "STATUS_CODE_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_topology::testing::SpanBuilder;

    #[test]
    fn span_metrics_carry_the_service_version() {
        let metrics = Metrics::new();
        let export = ProductMetrics::new(&metrics, 10);
        let spans: Vec<Span> = ["v1", "v2", "v2"]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                SpanBuilder::new(1, i as u64 + 1, "work", "GET /x", 10)
                    .resource(meshlens_topology::testing::resource("work", Some(v)))
                    .build()
            })
            .collect();
        export.record_spans(&spans);
        let calls = |version: &str| {
            export
                .calls_total
                .with_label_values(&[
                    "work",
                    "GET /x",
                    "SPAN_KIND_SERVER",
                    "STATUS_CODE_UNSET",
                    version,
                ])
                .get()
        };
        assert_eq!((calls("v1"), calls("v2")), (1, 2));
    }

    /// Past the cap, a new label set counts under the overflow set; once unused for the idle
    /// sweeps, a set is removed and makes room for a new one.
    #[test]
    fn label_sets_past_the_cap_go_to_the_overflow_set_and_unused_ones_make_room() {
        let metrics = Metrics::new();
        let export = ProductMetrics::new(&metrics, 2);
        let span =
            |i: usize, name: &str| SpanBuilder::new(1, i as u64 + 1, "svc", name, 10).build();
        let spans: Vec<Span> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| span(i, name))
            .collect();
        export.record_spans(&spans);
        export.record_spans(&spans);
        let series = |metrics: &Metrics| {
            let mut out: Vec<(String, u64)> = metrics
                .gather_all()
                .iter()
                .filter(|f| f.name() == "traces_spanmetrics_calls_total")
                .flat_map(|f| f.get_metric().to_vec())
                .map(|m| {
                    let label = |n: &str| {
                        m.get_label()
                            .iter()
                            .find(|l| l.name() == n)
                            .map(|l| l.value().to_string())
                            .unwrap_or_default()
                    };
                    let name = format!("{}/{}", label("service"), label("span_name"));
                    (name, m.get_counter().get_value() as u64)
                })
                .collect();
            out.sort();
            out
        };
        let got = series(&metrics);
        // Which two get in first depends on the batch's order; they stay in for later batches.
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.contains(&("__overflow__/__overflow__".into(), 2)),
            "{got:?}"
        );
        assert_eq!(got.iter().filter(|(_, n)| *n == 2).count(), 3, "{got:?}");
        let overflowed = metrics
            .topology_series_overflow
            .at(ProductFamily::SpanMetrics)
            .get();
        assert_eq!(overflowed, 2, "the third label set, once per batch");
        // The two that got in go unused for more than two sweeps: they are removed, and a new
        // set takes a place.
        let kept: Vec<String> = got
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !n.starts_with(OVERFLOW))
            .collect();
        export.sweep(2);
        export.sweep(2);
        assert_eq!(series(&metrics).len(), 3, "unused for two sweeps: kept");
        export.sweep(2);
        export.record_spans(&[span(9, "d")]);
        let got = series(&metrics);
        assert!(
            kept.iter().all(|k| !got.iter().any(|(n, _)| n == k)),
            "{got:?}"
        );
        assert!(got.contains(&("svc/d".into(), 1)), "{got:?}");
        assert_eq!(
            metrics
                .topology_series_evicted
                .at(ProductFamily::SpanMetrics)
                .get(),
            2
        );
    }
}
