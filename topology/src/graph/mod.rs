//! The live service dependency graph: spans are paired into calls (`pairing`), calls are counted
//! per edge over sliding windows (`window`), and a snapshot of any window is built on demand
//! (`snapshot`), with health from error ratios (`health`).

mod edges;
mod health;
mod istio;
mod node;
mod packed;
mod pairing;
mod proxy;
mod side;
mod sketch;
mod snapshot;
mod window;

pub use edges::{GraphLimits, DEFAULT_LIMITS, OVERFLOW};
pub use health::{Health, HealthConfig, Threshold};
pub use istio::gateway_kind;
pub use node::{ConnectionType, EdgeKey, Endpoint, NodeKey, NodeKind};
pub use pairing::{
    EdgeObservation, Pairer, PairingConfig, PairingCounters, DEFAULT_MAX_PENDING,
    DEFAULT_PAIRING_TTL_NS,
};
pub use proxy::{reads_metric, MetricObservation, ProxyMetrics};
pub use side::{
    endpoint_of, istio_cluster, service_of_cluster, ClusterMap, Outcome, Peer, Role, SpanSide,
};
pub use sketch::{LatencySketch, Quantiles, SketchSum, RELATIVE_ACCURACY};
pub use snapshot::{
    build as build_snapshot, EdgeSnapshot, EdgeVersionSnapshot, GraphQuery, GraphSnapshot,
    NodeSnapshot, Sources, Summary, VersionSnapshot,
};
pub use window::{
    flag_bits, latency_from, Counts, FlagCounts, LatencyFrom, PolicyCounts, Series, Stats, Window,
    COUNTS_LEN, RESPONSE_FLAGS,
};

/// Refusals the policy server decided between two services in a short interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub source: String,
    pub destination: String,
    pub denied: u64,
    pub rate_limited: u64,
}

use std::sync::Arc;

use crate::graph::edges::Edges;
use crate::metric::MetricBatch;
use crate::prom::PromSample;
use crate::resource::Resource;
use crate::span::Span;

/// Resources whose endpoints `observe` keeps at hand.
const RECENT_RESOURCES: usize = 4;

/// How long an edge with no calls stays on the graph (as idle): the longest window.
const EDGE_IDLE_NS: u64 = 3_600_000_000_000;

/// How long, at the graph's caps, an edge with no calls stays: the 5-minute window.
const EDGE_IDLE_AT_CAP_NS: u64 = 300_000_000_000;

/// The graph engine: the pairing store and every edge's windowed statistics. Time is always
/// passed in, so the engine is a pure function of what it was given and when.
pub struct Topology {
    pairer: Pairer,
    proxies: ProxyMetrics,
    edges: Edges,
    health: HealthConfig,
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new(PairingConfig::default(), HealthConfig::default())
    }
}

impl Topology {
    pub fn new(pairing: PairingConfig, health: HealthConfig) -> Self {
        Topology {
            pairer: Pairer::new(pairing),
            proxies: ProxyMetrics::default(),
            edges: Edges::new(GraphLimits::default()),
            health,
        }
    }

    /// Caps on the graph's edges and nodes (past them, new ones go to the overflow node).
    pub fn with_limits(mut self, limits: GraphLimits) -> Self {
        self.edges.limits = limits;
        self
    }

    /// Plain Envoy cluster names to place (metrics' clusters, unpaired Envoy client spans).
    pub fn with_clusters(mut self, clusters: ClusterMap) -> Self {
        self.proxies.clusters = clusters;
        self
    }

    /// Takes spans that arrived at `now_ns`. Returns the calls they completed (for exporters).
    pub fn observe<'a>(
        &mut self,
        spans: impl IntoIterator<Item = &'a Span>,
        now_ns: u64,
    ) -> Vec<EdgeObservation> {
        let mut out = Vec::new();
        self.pairer.expire(now_ns, &mut out);
        // The endpoints of the last few resources: an export's spans share a few resources, and
        // an endpoint costs three allocations to build.
        let mut recent: Vec<(&Arc<Resource>, Endpoint)> = Vec::with_capacity(RECENT_RESOURCES);
        for span in spans {
            let side = SpanSide::with_endpoint(span, || {
                if let Some((_, e)) = recent.iter().find(|(r, _)| Arc::ptr_eq(r, &span.resource)) {
                    return e.clone();
                }
                let e = side::endpoint_of(&span.resource);
                if recent.len() == RECENT_RESOURCES {
                    recent.pop();
                }
                recent.insert(0, (&span.resource, e.clone()));
                e
            });
            if let Some(side) = side {
                let forwarded = side.as_forwarder(span, &self.proxies.clusters);
                self.pairer.observe(side, now_ns, &mut out);
                if let Some(client) = forwarded {
                    self.pairer.observe(client, now_ns, &mut out);
                }
            }
        }
        self.record(&mut out, now_ns);
        out
    }

    /// Takes proxy metrics that arrived at `now_ns`. Returns what they added, per edge.
    pub fn observe_metrics(&mut self, batch: &MetricBatch, now_ns: u64) -> Vec<MetricObservation> {
        self.observe_keyed(batch, &[], now_ns)
    }

    /// The same, for a batch whose points come with their series' ids (`ids[i]` is point `i`'s,
    /// from `prom::batches_from_keyed`): the graph remembers each series resolved, and counts
    /// its later samples by id alone (`observe_known`).
    pub fn observe_keyed(
        &mut self,
        batch: &MetricBatch,
        ids: &[u128],
        now_ns: u64,
    ) -> Vec<MetricObservation> {
        let mut out = Vec::new();
        self.proxies.observe_keyed(batch, ids, &mut out);
        self.record_metrics(&out, now_ns);
        out
    }

    /// Takes the samples of a series the graph resolved before, by its id; `false` when it does
    /// not know the id (then give it the series' labels through `observe_keyed`).
    pub fn observe_known(&mut self, id: u128, samples: &[PromSample], now_ns: u64) -> bool {
        let edges = &mut self.edges;
        self.proxies
            .observe_known(id, samples, &mut |key, counts, latency| {
                edges.series(key).record_metric(counts, latency, now_ns)
            })
    }

    /// Ends a request's samples given through `observe_known`: the classic histograms they
    /// gave buckets to step where they can.
    pub fn settle_metrics(&mut self, now_ns: u64) {
        let edges = &mut self.edges;
        self.proxies.settle(&mut |key, counts, latency| {
            edges.series(key).record_metric(counts, latency, now_ns)
        });
    }

    /// Series the graph does not read, by id, so that they are not resolved again.
    pub fn ignore_series(&mut self, ids: &[u128]) {
        self.proxies.ignore(ids);
    }

    /// Series remembered by id.
    pub fn resolved_series(&self) -> usize {
        self.proxies.resolved_series()
    }

    fn record_metrics(&mut self, out: &[MetricObservation], now_ns: u64) {
        for o in out {
            self.edges
                .series(&o.key)
                .record_metric(&o.counts, o.latency.as_ref(), now_ns);
        }
    }

    /// Adds the policy server's refusals between two services, named as the proxies name them
    /// (no namespace, no version). They go to the edge already seen between those services (the
    /// most recently active one when versions differ), or to a new versionless HTTP edge; a name
    /// that several namespaces use is placed in none of them. Returns the decisions placed.
    pub fn observe_policy(&mut self, decisions: &[PolicyDecision], now_ns: u64) -> usize {
        let mut placed = 0;
        for d in decisions {
            let counts = PolicyCounts {
                denied: d.denied,
                rate_limited: d.rate_limited,
            };
            let same = |e: &Endpoint, name: &str| {
                e.node.kind == NodeKind::Service && &*e.node.name == name
            };
            let existing = self
                .edges
                .map
                .iter()
                .filter(|(k, _)| same(&k.client, &d.source) && same(&k.server, &d.destination))
                .max_by_key(|(_, s)| s.last_seen_ns())
                .map(|(k, _)| k.clone());
            let key = match existing {
                Some(k) => k,
                None => {
                    let (Some(client), Some(server)) = (
                        self.service_named(&d.source),
                        self.service_named(&d.destination),
                    ) else {
                        continue;
                    };
                    EdgeKey {
                        client: Endpoint {
                            node: client,
                            version: None,
                        },
                        server: Endpoint {
                            node: server,
                            version: None,
                        },
                        connection: ConnectionType::Http,
                    }
                }
            };
            self.edges.series(&key).record_policy(&counts, now_ns);
            placed += 1;
        }
        placed
    }

    /// The service node with this name: the one known in a namespace, or one without a namespace
    /// when none is known; `None` when several namespaces have it.
    fn service_named(&self, name: &str) -> Option<NodeKey> {
        let mut found: Option<&NodeKey> = None;
        for k in self.edges.map.keys() {
            for e in [&k.client, &k.server] {
                if e.node.kind == NodeKind::Service && &*e.node.name == name {
                    match found {
                        Some(f) if f.namespace != e.node.namespace => return None,
                        _ => found = Some(&e.node),
                    }
                }
            }
        }
        Some(
            found
                .cloned()
                .unwrap_or_else(|| NodeKey::service(None, name)),
        )
    }

    /// Metric points that named no edge meshlens could place.
    pub fn unplaced_points(&self) -> u64 {
        self.proxies.unplaced
    }

    /// Samples of cumulative series at or before their series' last one, left out.
    pub fn late_points(&self) -> u64 {
        self.proxies.late
    }

    /// Settles spans whose time ran out and forgets edges idle for longer than the longest
    /// window. Returns the calls made from expired spans.
    pub fn tick(&mut self, now_ns: u64) -> Vec<EdgeObservation> {
        let mut out = Vec::new();
        self.pairer.expire(now_ns, &mut out);
        self.record(&mut out, now_ns);
        let idle = if self.edges.at_cap() {
            EDGE_IDLE_AT_CAP_NS
        } else {
            EDGE_IDLE_NS
        };
        self.edges
            .retain(|_, s| s.last_seen_ns().saturating_add(idle) > now_ns);
        out
    }

    /// Settles every waiting span now (for tests and shutdown).
    pub fn flush(&mut self, now_ns: u64) -> Vec<EdgeObservation> {
        let mut out = Vec::new();
        self.pairer.flush(&mut out);
        self.record(&mut out, now_ns);
        out
    }

    fn record(&mut self, observations: &mut [EdgeObservation], now_ns: u64) {
        self.proxies.clusters.apply(observations);
        for o in observations.iter() {
            self.edges.series(&o.key).record(o, now_ns);
        }
    }

    pub fn counters(&self) -> PairingCounters {
        self.pairer.counters()
    }

    pub fn pending(&self) -> usize {
        self.pairer.pending()
    }

    /// Edges at version level currently kept.
    pub fn edge_count(&self) -> usize {
        self.edges.map.len()
    }

    /// Nodes at the ends of the edges kept.
    pub fn node_count(&self) -> usize {
        self.edges.node_count()
    }

    /// Observations counted on an overflow edge, past the caps, since the start.
    pub fn overflowed(&self) -> u64 {
        self.edges.overflowed
    }

    /// Approximate bytes the edges' statistics hold.
    pub fn heap_bytes(&self) -> usize {
        self.edges.map.values().map(Series::heap_bytes).sum()
    }

    /// The graph of one window as of `now_ns`, filtered as the query asks.
    pub fn snapshot(&mut self, query: &GraphQuery, now_ns: u64) -> GraphSnapshot {
        self.whole(query.window, now_ns).filtered(query)
    }

    /// The whole graph of one window as of `now_ns` (for caches that filter it later).
    pub fn whole(&mut self, window: Window, now_ns: u64) -> GraphSnapshot {
        for series in self.edges.map.values_mut() {
            series.advance(now_ns);
        }
        let edges = self.edges.map.iter().map(|(k, s)| (k, s.window(window)));
        snapshot::build(edges, window, &self.health)
    }

    pub fn health(&self) -> &HealthConfig {
        &self.health
    }

    /// Each edge's statistics for every whole minute after `after` (unix minutes) that has ended
    /// by `now_ns`, for the per-minute history. The last hour is kept.
    pub fn closed_minutes(&mut self, after: i64, now_ns: u64) -> Vec<(i64, EdgeKey, Stats)> {
        let mut out = Vec::new();
        for (key, series) in self.edges.map.iter_mut() {
            series.advance(now_ns);
            for (minute, stats) in series.minutes(after) {
                out.push((minute, key.clone(), stats));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
