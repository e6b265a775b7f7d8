//! Calls counted by the proxies themselves, from their metrics: Envoy's own cluster stats (its
//! OpenTelemetry stat sink) and Istio's standard metrics. Cumulative values become increments by
//! difference with the series' last value; a value that goes down is a counter reset (Envoy's
//! `start_time_unix_nano` is not to be trusted: it is in microseconds). The first value of a
//! series from a proxy meshlens has not heard from before is its baseline: what the proxy counted
//! before meshlens saw it is not counted. A series that first appears from a proxy already heard
//! from is new since then (Envoy creates per-code counters on first use), so all of it counts.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::attr::{AttrValue, Attributes};
use crate::graph::istio::{self, IstioMetric, Waypoints};
use crate::graph::node::{ConnectionType, EdgeKey, Endpoint};
use crate::graph::side::{endpoint_of, ClusterMap};
use crate::graph::sketch::{key_of, LatencySketch};
use crate::graph::window::Counts;
use crate::metric::{MetricBatch, MetricPoint, PointValue};
use crate::prom::PromSample;
use crate::resource::UNKNOWN_SERVICE;

/// Increments of one edge's counts, from metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricObservation {
    /// Shared with the series that count on the edge.
    pub key: Arc<EdgeKey>,
    pub counts: Counts,
    /// Latencies a histogram added (in its buckets' resolution).
    pub latency: Option<LatencySketch>,
}

/// Most series whose last value is remembered; past it, the memory starts afresh (every series
/// then takes one export to find its baseline again).
const MAX_SERIES: usize = 200_000;

/// Most series remembered by id (each bucket of a classic histogram is a series of its own);
/// past it they are resolved from their labels again.
const MAX_RESOLVED: usize = 1_000_000;

/// What a series counts on, worked out once from its labels: the graph counts a series it has
/// resolved before from its samples alone.
#[derive(Clone)]
struct Resolved {
    target: Target,
    /// The proxy that reports it (`hash_of` its identity).
    proxy: u64,
    /// The series' key among the last values (`series_hash`).
    series: u64,
    /// A classic histogram bucket's bound.
    le: Option<f64>,
}

#[derive(Clone)]
enum Target {
    Edge(Arc<EdgeKey>, Effect),
    /// Counted as unplaced at each point.
    Unplaced,
    Ignored,
}

/// A cumulative series' last value, and when it was taken (0: not said).
#[derive(Clone, Copy)]
struct Last {
    value: f64,
    time_ns: u64,
}

/// When meshlens first heard from a proxy: the time of its first sample (0: not said) and the
/// batch it came in. A series first seen later than that is new, so all of it counts.
#[derive(Clone, Copy)]
struct FirstSeen {
    time_ns: u64,
    batch: u64,
}

/// A Prometheus classic histogram whose buckets arrive as series of their own, spread over
/// remote write requests that each shard sends at its own pace (Prometheus shards by series, so
/// one bucket may be a scrape or two behind another). Each bucket keeps its value at the
/// histogram's last step and its samples since; once every bucket has moved on, the histogram
/// steps to the latest scrape all of them have reached, and differences there.
#[derive(Default)]
struct BucketSeries {
    /// By `le`, in `le` order.
    buckets: Vec<Bucket>,
    /// The scrape the histogram last stepped to (0: none yet).
    stepped_ns: u64,
    /// Listed in `ProxyMetrics::touched`, to be stepped when the request is over.
    touched: bool,
}

struct Bucket {
    le: f64,
    /// Time and value at the histogram's last step, or the bucket's first sample (time 0 and
    /// nothing for a bucket new from a proxy heard from before: all of it counts).
    base: (u64, f64),
    /// Samples after `base`, in time order (a bucket is one series, sent in order).
    since: Vec<(u64, f64)>,
}

/// Scrapes a bucket may be ahead of a silent sibling before that sibling is taken as gone.
const MAX_BUCKET_STEPS: usize = 8;

/// Last values of cumulative series.
#[derive(Default)]
pub struct ProxyMetrics {
    last: HashMap<u64, Last, foldhash::fast::FixedState>,
    /// Last bucket counts of cumulative histograms.
    last_buckets: HashMap<u64, Vec<u64>, foldhash::fast::FixedState>,
    /// Classic histograms arriving bucket by bucket (Prometheus remote write).
    buckets: HashMap<u64, BucketSeries, foldhash::fast::FixedState>,
    /// Histograms given a bucket since the last `settle`, and the edges they count on.
    touched: Vec<(u64, Arc<EdgeKey>)>,
    /// Proxies (resources) heard from before.
    proxies: HashMap<u64, FirstSeen, foldhash::fast::FixedState>,
    /// Batches observed, to tell a proxy's first batch from later ones.
    batches: u64,
    waypoints: Waypoints,
    /// Series resolved before, by the id a receiver gave them (remote write's hash of their
    /// labels as they came), and the edges they count on (one copy of each).
    resolved: HashMap<u128, Resolved, foldhash::fast::FixedState>,
    edge_keys: HashSet<Arc<EdgeKey>, foldhash::fast::FixedState>,
    /// Points that named no edge meshlens can place (no service name, an unknown cluster form).
    pub unplaced: u64,
    /// Samples of a cumulative series at or before its last one: a remote write retry, or out
    /// of order. They add nothing.
    pub late: u64,
    /// Plain cluster names meshlens can place.
    pub clusters: ClusterMap,
}

/// What one point adds to an edge.
#[derive(Clone, Copy)]
enum Effect {
    /// Requests with an HTTP status class ("2", "4", "5") or code.
    Requests {
        class: u8,
        grpc_error: bool,
        flags: Flags,
    },
    Retries,
    Overflows,
    Ejections,
    /// A latency histogram in milliseconds.
    Latency,
    /// Bytes of HTTP requests or responses (a histogram's sum, or its `_sum` series).
    Bytes,
    TcpSent,
    TcpReceived,
    TcpOpened {
        mtls: Option<bool>,
    },
    TcpClosed,
}

#[derive(Default, Clone, Copy)]
struct Flags {
    denied: bool,
    rate_limited: bool,
    overflow: bool,
    /// Over mutual TLS (`Some(true)`), not (`Some(false)`), or not reported.
    mtls: Option<bool>,
    /// The other response flags (`window::flag_bits`).
    bits: u16,
}

/// Which number of a point a cumulative series is read from.
#[derive(Clone, Copy, PartialEq)]
enum Reading {
    /// A sum's value, a histogram's count, a bucket's value.
    Count,
    /// A histogram's sum.
    Sum,
}

impl ProxyMetrics {
    /// The increments this batch adds, per edge.
    pub fn observe(&mut self, batch: &MetricBatch, out: &mut Vec<MetricObservation>) {
        self.observe_keyed(batch, &[], out);
    }

    /// The same, for a batch whose points come with their series' ids (`ids[i]` is point `i`'s;
    /// empty: none): each series is remembered resolved, for `observe_known`.
    pub fn observe_keyed(
        &mut self,
        batch: &MetricBatch,
        ids: &[u128],
        out: &mut Vec<MetricObservation>,
    ) {
        self.bound();
        self.batches += 1;
        let who = &batch.resource.service;
        let proxy = hash_of(who);
        let first_time = batch
            .points
            .iter()
            .map(|p| p.time_ns)
            .filter(|t| *t > 0)
            .min()
            .unwrap_or(0);
        let seen = *self.proxies.entry(proxy).or_insert(FirstSeen {
            time_ns: first_time,
            batch: self.batches,
        });
        let source = endpoint_of(&batch.resource);
        let mut learned = false;
        for point in &batch.points {
            learned |= self.waypoints.learn(
                (who.namespace.as_deref(), who.name.as_str()),
                &point.attributes,
            );
        }
        if learned {
            // Series resolved before a waypoint was known may read otherwise now.
            self.forget_resolved();
        }
        for (i, point) in batch.points.iter().enumerate() {
            let resolved = self.resolve(&source, proxy, who, point);
            self.apply(
                &resolved,
                &point.value,
                point.time_ns,
                seen,
                &mut |k, c, l| {
                    out.push(MetricObservation {
                        key: k.clone(),
                        counts: *c,
                        latency: l.cloned(),
                    })
                },
            );
            if let Some(id) = ids.get(i) {
                self.resolved.insert(*id, resolved);
            }
        }
        self.settle(&mut |k, c, l| {
            out.push(MetricObservation {
                key: k.clone(),
                counts: *c,
                latency: l.cloned(),
            })
        });
    }

    /// The increments of a series resolved before (by `observe_keyed`), from its samples alone,
    /// each handed to `sink` (edge, counts, latencies); `false` when the series is not known by
    /// that id (resolve it from its labels).
    pub fn observe_known(
        &mut self,
        id: u128,
        samples: &[PromSample],
        sink: &mut impl FnMut(&Arc<EdgeKey>, &Counts, Option<&LatencySketch>),
    ) -> bool {
        // No series is added here, so the bounds hold (`observe_keyed` keeps them).
        let Some(resolved) = self.resolved.get(&id).cloned() else {
            return false;
        };
        match resolved.target {
            Target::Edge(..) => {}
            Target::Unplaced => {
                self.unplaced += samples.len() as u64;
                return true;
            }
            Target::Ignored => return true,
        }
        let Some(seen) = self.proxies.get(&resolved.proxy).copied() else {
            return false;
        };
        for s in samples {
            let value = match resolved.le {
                Some(le) => PointValue::Bucket { le, value: s.value },
                None => PointValue::Sum {
                    value: s.value,
                    monotonic: true,
                    delta: false,
                },
            };
            let time_ns = (s.timestamp_ms.max(0) as u64).saturating_mul(1_000_000);
            self.apply(&resolved, &value, time_ns, seen, sink);
        }
        true
    }

    /// Remembers series the graph does not read by their ids, so that they are not resolved again.
    pub fn ignore(&mut self, ids: &[u128]) {
        for id in ids {
            self.resolved.insert(
                *id,
                Resolved {
                    target: Target::Ignored,
                    proxy: 0,
                    series: 0,
                    le: None,
                },
            );
        }
    }

    /// Keeps the memories within their bounds.
    fn bound(&mut self) {
        if self.last.len() + self.last_buckets.len() + self.buckets.len() > MAX_SERIES {
            self.last.clear();
            self.last_buckets.clear();
            self.buckets.clear();
            self.proxies.clear();
            self.forget_resolved();
        }
        if self.resolved.len() > MAX_RESOLVED {
            self.forget_resolved();
        }
    }

    fn forget_resolved(&mut self) {
        self.resolved.clear();
        self.edge_keys.clear();
    }

    /// Series remembered by id, and the edges they name.
    pub fn resolved_series(&self) -> usize {
        self.resolved.len()
    }

    /// What a point of `proxy` counts on.
    fn resolve(
        &mut self,
        source: &Endpoint,
        proxy: u64,
        who: &crate::ServiceIdentity,
        point: &MetricPoint,
    ) -> Resolved {
        let (target, reading) = match classify(source, point, &self.clusters, &self.waypoints) {
            Classified::Edge(key, effect) => {
                let key = match self.edge_keys.get(&key) {
                    Some(k) => k.clone(),
                    None => {
                        let k = Arc::new(key);
                        self.edge_keys.insert(k.clone());
                        k
                    }
                };
                let reading = match effect {
                    Effect::Bytes => Reading::Sum,
                    _ => Reading::Count,
                };
                (Target::Edge(key, effect), reading)
            }
            Classified::UnknownCluster => (Target::Unplaced, Reading::Count),
            Classified::Ignored => (Target::Ignored, Reading::Count),
        };
        let series = match target {
            Target::Edge(..) => {
                series_hash(who, &point.name, &point.attributes, reading == Reading::Sum)
            }
            _ => 0,
        };
        let le = match point.value {
            PointValue::Bucket { le, .. } => Some(le),
            _ => None,
        };
        Resolved {
            target,
            proxy,
            series,
            le,
        }
    }

    /// What one value of a resolved series adds.
    fn apply(
        &mut self,
        resolved: &Resolved,
        value: &PointValue,
        time_ns: u64,
        seen: FirstSeen,
        sink: &mut impl FnMut(&Arc<EdgeKey>, &Counts, Option<&LatencySketch>),
    ) {
        let (key, effect) = match &resolved.target {
            Target::Edge(key, effect) => (key, *effect),
            Target::Unplaced => {
                self.unplaced += 1;
                return;
            }
            Target::Ignored => return,
        };
        // A series first seen from a proxy heard from before (at an earlier time, or in an
        // earlier batch when times are not given) is new since then: all of it counts.
        let known = if time_ns > 0 && seen.time_ns > 0 {
            time_ns > seen.time_ns
        } else {
            seen.batch < self.batches
        };
        let unknown_client = key.client.node.name.as_ref() == UNKNOWN_SERVICE;
        if let Effect::Latency = effect {
            if unknown_client {
                return;
            }
            let latency = match *value {
                PointValue::Bucket { le, value } => {
                    self.bucket_sample(resolved.series, key, known, time_ns, le, value);
                    return;
                }
                _ => self.histogram_increment(resolved.series, known, value),
            };
            if let Some(latency) = latency {
                sink(key, &Counts::default(), Some(&latency));
            }
            return;
        }
        let reading = match effect {
            Effect::Bytes => Reading::Sum,
            _ => Reading::Count,
        };
        let Some(n) = self.increment(resolved.series, known, value, time_ns, reading) else {
            return;
        };
        if unknown_client {
            self.unplaced += 1;
            return;
        }
        let mut counts = Counts::default();
        match effect {
            Effect::Requests {
                class,
                grpc_error,
                flags,
            } => {
                counts.requests = n;
                counts.http_4xx = if class == 4 { n } else { 0 };
                counts.http_5xx = if class == 5 { n } else { 0 };
                counts.grpc_errors = if grpc_error { n } else { 0 };
                counts.failures = if class == 5 || grpc_error { n } else { 0 };
                counts.denied = if flags.denied { n } else { 0 };
                counts.rate_limited = if flags.rate_limited { n } else { 0 };
                counts.overflows = if flags.overflow { n } else { 0 };
                counts.tls_known = if flags.mtls.is_some() { n } else { 0 };
                counts.mtls = if flags.mtls == Some(true) { n } else { 0 };
                counts.flags.add_bits(flags.bits, n);
            }
            Effect::Retries => counts.retries = n,
            Effect::Overflows => counts.overflows = n,
            Effect::Ejections => counts.ejections = n,
            Effect::Bytes => counts.bytes = n,
            Effect::TcpSent => {
                counts.tcp_sent_bytes = n;
                counts.bytes = n;
            }
            Effect::TcpReceived => {
                counts.tcp_received_bytes = n;
                counts.bytes = n;
            }
            Effect::TcpOpened { mtls } => {
                counts.tcp_opened = n;
                counts.tls_known = if mtls.is_some() { n } else { 0 };
                counts.mtls = if mtls == Some(true) { n } else { 0 };
            }
            Effect::TcpClosed => counts.tcp_closed = n,
            Effect::Latency => {}
        }
        if n > 0 {
            sink(key, &counts, None);
        }
    }

    /// The increment a value of series `key` stands for: the value itself for deltas, the
    /// difference with the last value for cumulative sums (the whole value after a reset); for a
    /// series' first value, all of it if the proxy was heard from before (`known`), else `None`
    /// (a baseline). A sample at or before the series' last one (a retried remote write, or out
    /// of order) adds nothing, and a value that is not a number (Prometheus' staleness marker)
    /// is no value.
    fn increment(
        &mut self,
        key: u64,
        known: bool,
        value: &PointValue,
        time_ns: u64,
        reading: Reading,
    ) -> Option<u64> {
        let (value, delta) = match (value, reading) {
            (PointValue::Sum { value, delta, .. }, _) => (*value, *delta),
            (PointValue::Histogram { count, delta, .. }, Reading::Count) => (*count as f64, *delta),
            (PointValue::Histogram { sum, delta, .. }, Reading::Sum) => (*sum, *delta),
            (PointValue::Bucket { value, .. }, _) => (*value, false),
            (PointValue::Gauge(_), _) => return None,
        };
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        if delta {
            return Some(value as u64);
        }
        let new = Last { value, time_ns };
        let previous = match self.last.get_mut(&key) {
            None => {
                self.last.insert(key, new);
                return known.then_some(value as u64);
            }
            Some(last) => {
                if time_ns > 0 && last.time_ns > 0 && time_ns <= last.time_ns {
                    self.late += 1;
                    return None;
                }
                std::mem::replace(last, new).value
            }
        };
        Some(if value >= previous {
            (value - previous) as u64
        } else {
            value as u64
        })
    }
}

impl ProxyMetrics {
    /// The latencies a histogram point adds since the proxy's last export (all of a delta
    /// point; for cumulative ones the difference per bucket, the whole point after a reset, and
    /// nothing for a series' first point from a proxy not heard from before).
    fn histogram_increment(
        &mut self,
        h: u64,
        known: bool,
        value: &PointValue,
    ) -> Option<LatencySketch> {
        let PointValue::Histogram {
            bounds,
            counts,
            delta,
            ..
        } = value
        else {
            return None;
        };
        if counts.len() != bounds.len() + 1 || bounds.iter().any(|b| !b.is_finite() || *b < 0.0) {
            return None;
        }
        let added: Vec<u64> = if *delta {
            counts.clone()
        } else {
            match self.last_buckets.insert(h, counts.clone()) {
                None if !known => return None,
                None => counts.clone(),
                Some(prev)
                    if prev.len() == counts.len()
                        && prev.iter().zip(counts).all(|(a, b)| b >= a) =>
                {
                    counts.iter().zip(&prev).map(|(c, p)| c - p).collect()
                }
                // Fewer in some bucket, or other bounds: the proxy started afresh.
                Some(_) => counts.clone(),
            }
        };
        sketch_of(bounds, &added)
    }

    /// Takes one bucket sample of a classic histogram; the histogram steps in `settle`, when
    /// the request it came in is over (a request holds a shard's buckets of several scrapes).
    fn bucket_sample(
        &mut self,
        key: u64,
        edge: &Arc<EdgeKey>,
        known: bool,
        t: u64,
        le: f64,
        value: f64,
    ) {
        if le.is_nan() || !value.is_finite() || value < 0.0 {
            return;
        }
        let series = self.buckets.entry(key).or_default();
        match series.buckets.binary_search_by(|b| b.le.total_cmp(&le)) {
            // A bucket the histogram stepped without (its shard lags behind the others'
            // since the start) catches up to the last step: its samples up to it are its base.
            Ok(i) => {
                let b = &mut series.buckets[i];
                if t <= b.since.last().map_or(b.base.0, |s| s.0) {
                    self.late += 1;
                    return;
                }
                if t <= series.stepped_ns {
                    b.base = (t, value);
                } else {
                    b.since.push((t, value));
                }
            }
            Err(i) => {
                let (base, since) = if known && t > series.stepped_ns {
                    ((0, 0.0), vec![(t, value)])
                } else {
                    ((t, value), Vec::new())
                };
                series.buckets.insert(i, Bucket { le, base, since });
            }
        }
        if !series.touched {
            series.touched = true;
            self.touched.push((key, edge.clone()));
        }
    }

    /// Steps every histogram given buckets since the last call, handing what each added to
    /// `sink`. Call it when a request's samples are all taken.
    pub fn settle(
        &mut self,
        sink: &mut impl FnMut(&Arc<EdgeKey>, &Counts, Option<&LatencySketch>),
    ) {
        let mut touched = std::mem::take(&mut self.touched);
        for (key, edge) in touched.drain(..) {
            let Some(series) = self.buckets.get_mut(&key) else {
                continue;
            };
            series.touched = false;
            if let Some(latency) = series.step() {
                sink(&edge, &Counts::default(), Some(&latency));
            }
        }
        self.touched = touched;
    }
}

impl BucketSeries {
    /// Steps through the scrapes every bucket has reached, while each has a sample past the
    /// last step, and returns what the histogram added since (all of a scrape after a reset).
    /// Not before the +Inf bucket is in (every classic histogram has one): until then, the
    /// buckets heard from may be one shard's.
    fn step(&mut self) -> Option<LatencySketch> {
        if self
            .buckets
            .iter()
            .any(|b| b.since.len() > MAX_BUCKET_STEPS)
        {
            // Silent while a sibling went that many scrapes on: gone. Then, with no +Inf
            // bucket or one far behind, the oldest samples become the base.
            self.buckets.retain(|b| !b.since.is_empty());
            for b in &mut self.buckets {
                if b.since.len() > MAX_BUCKET_STEPS {
                    let over = b.since.len() - MAX_BUCKET_STEPS;
                    b.base = b.since[over - 1];
                    b.since.drain(..over);
                }
            }
        }
        if !self.buckets.last().is_some_and(|b| b.le == f64::INFINITY) {
            return None;
        }
        let mut out: Option<LatencySketch> = None;
        loop {
            // The next scrape: the earliest sample past the last step (each bucket has one).
            let Some(t) = self
                .buckets
                .iter()
                .map(|b| b.since.first().map_or(0, |s| s.0))
                .min()
            else {
                return out;
            };
            if t == 0 {
                return out;
            }
            self.stepped_ns = t;
            let mut reset = false;
            let mut added = Vec::with_capacity(self.buckets.len());
            for b in &mut self.buckets {
                let before = b.base.1;
                if b.since[0].0 == t {
                    b.base = b.since.remove(0);
                }
                reset |= b.base.1 < before;
                added.push((b.base.1, b.base.1 - before));
            }
            let les: Vec<f64> = self.buckets.iter().map(|b| b.le).collect();
            let cumulative: Vec<f64> = added
                .iter()
                .map(|(now, diff)| if reset { *now } else { *diff })
                .collect();
            if let Some(s) = sketch_of_cumulative(les, &cumulative) {
                match &mut out {
                    Some(o) => o.merge(&s),
                    None => out = Some(s),
                }
            }
        }
    }
}

/// A sketch of a classic histogram's increments, cumulative by `le` (in `le` order): one count
/// per bucket, the last bound +Inf (or one is added).
fn sketch_of_cumulative(mut bounds: Vec<f64>, cumulative: &[f64]) -> Option<LatencySketch> {
    let mut counts = Vec::with_capacity(cumulative.len() + 1);
    let mut below = 0.0;
    for a in cumulative {
        counts.push((a - below).max(0.0) as u64);
        below = a.max(below);
    }
    if bounds.last().is_some_and(|b| b.is_infinite()) {
        bounds.pop();
    } else {
        counts.push(0);
    }
    sketch_of(&bounds, &counts)
}

/// A sketch of a histogram's per-bucket counts: each bucket's values at its middle (geometric,
/// for buckets that start above zero). `counts` has one more entry than `bounds`.
fn sketch_of(bounds: &[f64], counts: &[u64]) -> Option<LatencySketch> {
    if bounds.iter().any(|b| !b.is_finite() || *b < 0.0) {
        return None;
    }
    let mut sketch = LatencySketch::new();
    for (i, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
        let upper = bounds.get(i).copied();
        let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
        let ms = match upper {
            Some(u) if lower > 0.0 => (lower * u).sqrt(),
            Some(u) => u / 2.0,
            None => lower,
        };
        let ns = (ms * 1e6).clamp(0.0, u64::MAX as f64) as u64;
        sketch.add_key(key_of(ns), (*n).min(u64::from(u32::MAX)) as u32);
    }
    (!sketch.is_empty()).then_some(sketch)
}

/// The key of one series of one proxy (`sum`: a histogram's sum, apart from its count).
fn series_hash(who: &crate::ServiceIdentity, name: &str, a: &Attributes, sum: bool) -> u64 {
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    (who, name, sum).hash(&mut h);
    for (k, v) in a.iter() {
        k.hash(&mut h);
        match v {
            // Without a copy: this runs for every point of every export.
            AttrValue::Str(text) => Some(text.as_str()).hash(&mut h),
            other => other.to_text().as_deref().hash(&mut h),
        }
    }
    h.finish()
}

/// Whether the graph reads a metric of this name (after a remote write series' renaming: a
/// classic histogram's buckets under the histogram's name, `bucket`), so that receivers can
/// leave the others aside before converting them.
pub fn reads_metric(name: &str, bucket: bool) -> bool {
    match IstioMetric::of(name) {
        Some(IstioMetric::Duration) => true,
        // Sizes are read from their sums; their buckets and counts are not needed.
        Some(IstioMetric::Bytes) => !bucket && !name.ends_with("_count"),
        Some(_) => !bucket,
        None => name.starts_with("cluster."),
    }
}

fn hash_of(v: &impl Hash) -> u64 {
    foldhash::fast::FixedState::default().hash_one(v)
}

fn text<'a>(a: &'a Attributes, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| a.get_str(k))
        .find(|s| !s.is_empty() && *s != "unknown")
}

enum Classified {
    Edge(EdgeKey, Effect),
    /// An Envoy cluster stat of a cluster that is neither Istio-named nor mapped.
    UnknownCluster,
    /// Not a metric the graph reads.
    Ignored,
}

/// The edge and effect of a point, for the metrics meshlens reads.
fn classify(
    source: &Endpoint,
    p: &MetricPoint,
    clusters: &ClusterMap,
    waypoints: &Waypoints,
) -> Classified {
    let a = &p.attributes;
    if let Some(metric) = IstioMetric::of(&p.name) {
        let Some((key, call)) = istio::classify(metric, a, waypoints) else {
            return Classified::Ignored;
        };
        let effect = match metric {
            IstioMetric::Requests => Effect::Requests {
                class: call.class,
                grpc_error: call.grpc_error,
                flags: Flags {
                    denied: call.denied,
                    rate_limited: call.rate_limited,
                    overflow: call.overflow,
                    mtls: call.mtls,
                    bits: call.flags,
                },
            },
            IstioMetric::Duration => Effect::Latency,
            // Sizes come from their sums: a bucket is not a size.
            IstioMetric::Bytes if matches!(p.value, PointValue::Bucket { .. }) => {
                return Classified::Ignored
            }
            IstioMetric::Bytes => Effect::Bytes,
            IstioMetric::TcpSent => Effect::TcpSent,
            IstioMetric::TcpReceived => Effect::TcpReceived,
            IstioMetric::TcpOpened => Effect::TcpOpened { mtls: call.mtls },
            IstioMetric::TcpClosed => Effect::TcpClosed,
        };
        return Classified::Edge(key, effect);
    }
    let Some((cluster, stat)) =
        text(a, &["envoy.cluster_name"]).and_then(|tagged| envoy_cluster_stat(&p.name, tagged))
    else {
        return Classified::Ignored;
    };
    let effect = match stat {
        "upstream_rq_xx" => {
            let Some(class) = text(a, &["envoy.response_code_class"]).and_then(|c| c.parse().ok())
            else {
                return Classified::Ignored;
            };
            Effect::Requests {
                class,
                grpc_error: false,
                flags: Flags::default(),
            }
        }
        "upstream_rq_retry" => Effect::Retries,
        // Requests a circuit breaker refused (Envoy's `UO`): no room to wait, or no room for a
        // retry (the failed attempt's answer goes back). `upstream_cx_overflow` is left out: it
        // counts connections not opened while their requests wait and are served (seen with
        // Envoy 1.40: 382 of them for 56 refused requests).
        "upstream_rq_pending_overflow" | "upstream_rq_retry_overflow" => Effect::Overflows,
        "upstream_rq_time" => Effect::Latency,
        _ => Effect::Ejections,
    };
    let Some(server) = clusters.resolve(&cluster) else {
        // The proxy's own app (`inbound|…`) is not a peer.
        return if cluster.starts_with("inbound|") {
            Classified::Ignored
        } else {
            Classified::UnknownCluster
        };
    };
    let key = EdgeKey {
        client: source.clone(),
        server,
        connection: ConnectionType::Http,
    };
    Classified::Edge(key, effect)
}

/// The Envoy cluster stats the graph reads.
const ENVOY_STATS: &[&str] = &[
    "upstream_rq_xx",
    "upstream_rq_time",
    "upstream_rq_retry",
    "upstream_rq_pending_overflow",
    "upstream_rq_retry_overflow",
    "outlier_detection.ejections_enforced_total",
];

/// The whole cluster name and the stat of an Envoy cluster metric. Envoy's default tag extractor
/// takes the cluster name only up to its first dot: `outbound|80|v2|meet.shop.svc.cluster.local`
/// arrives as `envoy.cluster_name="outbound|80|v2|meet"` on the metric
/// `cluster.shop.svc.cluster.local.upstream_rq_xx` (observed with Envoy 1.40), so the rest is
/// read back from the name. The `external.`/`internal.` variants count a subset of the same
/// requests (by origin) and are left out.
fn envoy_cluster_stat(name: &str, tagged: &str) -> Option<(String, &'static str)> {
    let rest = name.strip_prefix("cluster.")?;
    for &stat in ENVOY_STATS {
        if rest == stat {
            return Some((tagged.to_string(), stat));
        }
        let Some(middle) = rest.strip_suffix(stat).and_then(|m| m.strip_suffix('.')) else {
            continue;
        };
        let origin = |m: &str| m.ends_with(".external") || m.ends_with(".internal");
        if middle == "external" || middle == "internal" || origin(middle) {
            return None;
        }
        return Some((format!("{tagged}.{middle}"), stat));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::resource;

    fn sum(name: &str, attrs: &[(&str, &str)], value: f64) -> MetricPoint {
        let mut a = Attributes::new();
        for (k, v) in attrs {
            a.push(*k, *v);
        }
        MetricPoint {
            name: name.into(),
            attributes: a,
            value: PointValue::Sum {
                value,
                monotonic: true,
                delta: false,
            },
            time_ns: 0,
        }
    }

    fn run(m: &mut ProxyMetrics, points: Vec<MetricPoint>) -> Vec<(String, String, Counts)> {
        let batch = MetricBatch {
            resource: resource("work", Some("v1")),
            points,
        };
        let mut out = Vec::new();
        m.observe(&batch, &mut out);
        out.into_iter()
            .map(|o| {
                let v = o.key.server.version.as_deref().unwrap_or("").to_string();
                (o.key.server.node.id(), v, o.counts)
            })
            .collect()
    }

    #[test]
    fn plain_cluster_names_are_placed_through_the_map_or_counted_as_unplaced() {
        let mut m = ProxyMetrics {
            clusters: ClusterMap::from_pairs([("meet_cluster", "shop/meet:v2")]).unwrap(),
            ..Default::default()
        };
        let xx = |cluster: &'static str, v| {
            sum(
                "cluster.upstream_rq_xx",
                &[
                    ("envoy.cluster_name", cluster),
                    ("envoy.response_code_class", "2"),
                ],
                v,
            )
        };
        let points = |v| vec![xx("meet_cluster", v), xx("other", v), xx("inbound|80||", v)];
        assert!(run(&mut m, points(10.0)).is_empty(), "baselines");
        let got = run(&mut m, points(15.0));
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.as_str(), got[0].1.as_str()),
            ("service:shop/meet", "v2")
        );
        assert_eq!(got[0].2.requests, 5);
        assert_eq!(
            m.unplaced, 2,
            "`other` in each export; the proxy's own app is not a peer"
        );
    }

    #[test]
    fn envoy_cumulative_counters_become_increments() {
        let cluster = ("envoy.cluster_name", "outbound|80|v2|meet");
        let xx = |class: &'static str, v| {
            sum(
                "cluster.upstream_rq_xx",
                &[cluster, ("envoy.response_code_class", class)],
                v,
            )
        };
        let mut m = ProxyMetrics::default();
        assert!(
            run(&mut m, vec![xx("2", 100.0), xx("5", 3.0)]).is_empty(),
            "baselines"
        );
        let got = run(&mut m, vec![xx("2", 130.0), xx("5", 5.0)]);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0.as_str(), got[0].1.as_str()),
            ("service:meet", "v2")
        );
        assert_eq!((got[0].2.requests, got[0].2.failures), (30, 0));
        assert_eq!(
            (got[1].2.requests, got[1].2.failures, got[1].2.http_5xx),
            (2, 2, 2)
        );
        // Envoy restarted: the counter went down, so the new value is all new.
        let got = run(&mut m, vec![xx("2", 7.0)]);
        assert_eq!(got[0].2.requests, 7);
        let got = run(
            &mut m,
            vec![
                sum("cluster.upstream_rq_retry", &[cluster], 1.0),
                sum("cluster.upstream_rq_pending_overflow", &[cluster], 0.0),
            ],
        );
        assert_eq!(got.len(), 1, "a zero increment adds nothing");
        assert_eq!(got[0].2.retries, 1);
        let got = run(
            &mut m,
            vec![
                sum("cluster.upstream_rq_retry", &[cluster], 4.0),
                sum("cluster.upstream_rq_pending_overflow", &[cluster], 2.0),
                sum("cluster.upstream_cx_overflow", &[cluster], 0.0),
                sum("cluster.upstream_rq_retry_overflow", &[cluster], 1.0),
            ],
        );
        assert_eq!((got[0].2.retries, got[1].2.overflows), (3, 2));
        assert_eq!(
            (got.len(), got[2].2.overflows),
            (3, 1),
            "a retry refused is an overflow"
        );
        // Connections the breaker did not open are not refused requests: those wait and are served.
        let got = run(
            &mut m,
            vec![sum("cluster.upstream_cx_overflow", &[cluster], 40.0)],
        );
        assert!(got.is_empty(), "{got:?}");
        // A series new from a proxy heard from before counts whole (Envoy makes per-class
        // counters on first use).
        let got = run(&mut m, vec![xx("4", 2.0)]);
        assert_eq!((got[0].2.requests, got[0].2.http_4xx), (2, 2));
        // A dotted cluster name, as Envoy's tag extractor splits it; origin variants are a subset.
        let split = ("envoy.cluster_name", "outbound|80|v1|lunch");
        let dotted = |name, v| sum(name, &[split, ("envoy.response_code_class", "2")], v);
        let got = run(
            &mut m,
            vec![
                dotted("cluster.shop.svc.cluster.local.upstream_rq_xx", 5.0),
                dotted(
                    "cluster.shop.svc.cluster.local.external.upstream_rq_xx",
                    5.0,
                ),
            ],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.as_str(), got[0].1.as_str()),
            ("service:shop/lunch", "v1")
        );
        assert_eq!(got[0].2.requests, 5);
        // Clusters that are not Istio-style name no service; other metrics are not read.
        let other = ("envoy.cluster_name", "meshlens_otlp");
        run(
            &mut m,
            vec![sum(
                "cluster.upstream_rq_xx",
                &[other, ("envoy.response_code_class", "2")],
                1.0,
            )],
        );
        assert!(run(
            &mut m,
            vec![sum(
                "cluster.upstream_rq_xx",
                &[other, ("envoy.response_code_class", "2")],
                9.0
            )]
        )
        .is_empty());
    }

    #[test]
    fn points_from_a_proxy_without_a_service_name_are_counted_unplaced() {
        let mut m = ProxyMetrics::default();
        let anonymous = MetricBatch {
            resource: std::sync::Arc::new(crate::Resource::new(Attributes::new())),
            points: vec![sum(
                "cluster.upstream_rq_xx",
                &[
                    ("envoy.cluster_name", "outbound|80|v2|meet"),
                    ("envoy.response_code_class", "2"),
                ],
                3.0,
            )],
        };
        let mut out = Vec::new();
        m.observe(&anonymous, &mut out);
        m.observe(&anonymous, &mut out);
        assert!(out.is_empty(), "no edge from an unnamed proxy");
        assert_eq!(
            m.unplaced, 1,
            "the baseline is not counted; the second point is"
        );
    }

    #[test]
    fn istio_requests_by_the_destination_reporter() {
        let attrs = |reporter: &'static str, code: &'static str| {
            vec![
                ("reporter", reporter),
                ("source_canonical_service", "work"),
                ("source_version", "v1"),
                ("source_workload_namespace", "shop"),
                ("destination_canonical_service", "meet"),
                ("destination_workload", "meet-v2"),
                ("destination_version", "v2"),
                ("destination_service_namespace", "shop"),
                ("response_code", code),
                ("response_flags", "-"),
                (
                    "connection_security_policy",
                    if code == "200" { "mutual_tls" } else { "none" },
                ),
            ]
        };
        let point = |reporter, code, v| MetricPoint {
            value: PointValue::Sum {
                value: v,
                monotonic: true,
                delta: true,
            },
            ..sum("istio_requests_total", &attrs(reporter, code), 0.0)
        };
        let mut m = ProxyMetrics::default();
        let got = run(
            &mut m,
            vec![
                point("destination", "200", 8.0),
                point("destination", "503", 2.0),
                point("source", "200", 8.0),
            ],
        );
        assert_eq!(
            got.len(),
            2,
            "the source's report of the same requests is not counted"
        );
        assert_eq!(
            (got[0].0.as_str(), got[0].1.as_str()),
            ("service:shop/meet", "v2")
        );
        assert_eq!(got[0].2.requests, 8);
        assert_eq!((got[1].2.requests, got[1].2.http_5xx), (2, 2));
        let tls = |c: &Counts| (c.mtls, c.tls_known);
        assert_eq!(
            (tls(&got[0].2), tls(&got[1].2)),
            ((8, 8), (0, 2)),
            "mTLS where reported"
        );
    }

    #[test]
    fn latency_histograms_become_sketches_of_their_increments() {
        let hist = |counts: Vec<u64>| MetricPoint {
            value: PointValue::Histogram {
                count: counts.iter().sum(),
                sum: 0.0,
                bounds: vec![0.5, 1.0, 5.0, 10.0],
                counts,
                delta: false,
            },
            ..sum(
                "cluster.upstream_rq_time",
                &[("envoy.cluster_name", "outbound|80|v2|meet")],
                0.0,
            )
        };
        let mut m = ProxyMetrics::default();
        let batch = |p| MetricBatch {
            resource: resource("work", Some("v1")),
            points: vec![p],
        };
        let mut out = Vec::new();
        m.observe(&batch(hist(vec![5, 0, 0, 0, 0])), &mut out);
        assert!(out.is_empty(), "a baseline");
        m.observe(&batch(hist(vec![5, 10, 0, 90, 1])), &mut out);
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!(o.key.server.node.id(), "service:meet");
        assert_eq!(o.counts, Counts::default(), "latency only, no requests");
        let l = o.latency.as_ref().unwrap();
        assert_eq!(l.count(), 101);
        let q = l.quantiles().unwrap();
        // 90 of 101 in (5, 10] ms: the median is that bucket's middle, about 7.1 ms.
        assert!((q.p50_ns / 1e6 - 50f64.sqrt()).abs() < 0.2, "{q:?}");
        // Bad bounds are skipped.
        let mut bad = hist(vec![1, 1, 1, 1, 1]);
        if let PointValue::Histogram { bounds, .. } = &mut bad.value {
            bounds.pop();
        }
        out.clear();
        m.observe(&batch(bad), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn series_known_by_id_count_from_their_samples_until_a_waypoint_is_learned() {
        let requests = |reporter: &'static str, v: f64| MetricPoint {
            time_ns: 1_000_000_000,
            ..sum(
                "istio_requests_total",
                &[
                    ("reporter", reporter),
                    ("source_canonical_service", "work"),
                    ("source_workload_namespace", "shop"),
                    ("destination_canonical_service", "meet"),
                    ("destination_workload", "meet-v1"),
                    ("destination_service_namespace", "shop"),
                    ("response_code", "200"),
                ],
                v,
            )
        };
        let batch = |service, points| MetricBatch {
            resource: resource(service, None),
            points,
        };
        let at = |value, timestamp_ms| {
            [PromSample {
                value,
                timestamp_ms,
            }]
        };
        fn known(
            m: &mut ProxyMetrics,
            id: u128,
            samples: &[PromSample],
            out: &mut Vec<MetricObservation>,
        ) -> bool {
            m.observe_known(id, samples, &mut |k, c, l| {
                out.push(MetricObservation {
                    key: k.clone(),
                    counts: *c,
                    latency: l.cloned(),
                })
            })
        }
        let mut m = ProxyMetrics::default();
        let mut out = Vec::new();
        m.observe_keyed(
            &batch("meet", vec![requests("destination", 10.0)]),
            &[7],
            &mut out,
        );
        assert!(out.is_empty(), "a baseline");
        assert_eq!(m.resolved_series(), 1);
        assert!(known(&mut m, 7, &at(15.0, 2000), &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.server.node.id(), "service:shop/meet");
        assert_eq!(out[0].counts.requests, 5);
        out.clear();
        assert!(known(&mut m, 7, &at(15.0, 2000), &mut out), "a retry");
        assert!(out.is_empty());
        assert_eq!(m.late, 1);
        assert!(!known(&mut m, 8, &at(1.0, 2000), &mut out), "not known");
        // Series the graph does not read are known too, and add nothing.
        m.ignore(&[11]);
        assert!(known(&mut m, 11, &at(1.0, 2000), &mut out));
        assert!(out.is_empty());
        // A waypoint learned: series resolved before are resolved from their labels again.
        m.observe_keyed(
            &batch("wp", vec![requests("waypoint", 1.0)]),
            &[9],
            &mut out,
        );
        assert!(!known(&mut m, 7, &at(20.0, 3000), &mut out));
        assert!(known(&mut m, 9, &at(2.0, 3000), &mut out));
        // The same waypoint again forgets nothing.
        m.observe_keyed(
            &batch("wp", vec![requests("waypoint", 3.0)]),
            &[9],
            &mut out,
        );
        assert!(known(&mut m, 9, &at(4.0, 4000), &mut out));
    }

    const LES: [f64; 4] = [1.0, 10.0, 100.0, f64::INFINITY];
    /// A classic histogram's cumulative counts per scrape (by le), reset between scrapes 3 and 4.
    const SCRAPES: [[f64; 4]; 6] = [
        [1.0, 5.0, 9.0, 10.0],
        [1.0, 5.0, 9.0, 10.0],
        [3.0, 20.0, 40.0, 41.0],
        [3.0, 21.0, 60.0, 70.0],
        [0.0, 2.0, 2.0, 2.0],
        [1.0, 4.0, 9.0, 9.0],
    ];

    fn bucket_edge() -> Arc<EdgeKey> {
        let end = |name| Endpoint {
            node: crate::graph::node::NodeKey::service(None, name),
            version: None,
        };
        Arc::new(EdgeKey {
            client: end("work"),
            server: end("meet"),
            connection: ConnectionType::Http,
        })
    }

    /// What `SCRAPES` grew by after scrape `first`, bucket by bucket (all of a scrape after a
    /// reset).
    fn grew_from(first: usize) -> LatencySketch {
        let mut expected = LatencySketch::new();
        for i in first + 1..SCRAPES.len() {
            let reset = SCRAPES[i].iter().zip(&SCRAPES[i - 1]).any(|(a, b)| a < b);
            let added: Vec<f64> = (0..4)
                .map(|k| SCRAPES[i][k] - if reset { 0.0 } else { SCRAPES[i - 1][k] })
                .collect();
            if let Some(s) = sketch_of_cumulative(LES.to_vec(), &added) {
                expected.merge(&s);
            }
        }
        expected
    }

    /// One shard (with the +Inf bucket, or without) sends three scrapes before the other's first
    /// is in: with +Inf, the histogram steps without the late buckets (nothing else can know
    /// they exist), and they join at its last step; without, it waits for them. From then on,
    /// what it adds is exact.
    #[test]
    fn a_shard_heard_from_late_joins_the_histogram_at_its_last_step() {
        let edge = bucket_edge();
        for early in [[1, 3], [0, 2]] {
            let late = [0, 1, 2, 3].into_iter().filter(|k| !early.contains(k));
            let mut m = ProxyMetrics::default();
            let mut out = Vec::new();
            let send = |ks: &[usize], scrapes: std::ops::Range<usize>, m: &mut ProxyMetrics| {
                for s in scrapes {
                    for k in ks {
                        let t = (s as u64 + 1) * 1_000_000_000;
                        m.bucket_sample(1, &edge, false, t, LES[*k], SCRAPES[s][*k]);
                    }
                }
                let mut got = LatencySketch::new();
                m.settle(&mut |_, _, l| got.merge(l.unwrap()));
                got
            };
            out.push(send(&early, 0..3, &mut m));
            let late: Vec<usize> = late.collect();
            out.push(send(&late, 0..3, &mut m));
            let mut rest = send(&late, 3..6, &mut m);
            rest.merge(&send(&early, 3..6, &mut m));
            if early.contains(&3) {
                assert!(!out[0].is_empty(), "stepped on the early buckets alone");
                assert!(
                    out[1].is_empty(),
                    "the late ones joined, adding nothing twice"
                );
                assert_eq!(rest, grew_from(2));
            } else {
                assert!(out[0].is_empty(), "no step before +Inf");
                out[1].merge(&rest);
                assert_eq!(out[1], grew_from(0));
            }
        }
    }

    /// A classic histogram's buckets in two shards, one several scrapes behind or ahead of the
    /// other, requests holding several scrapes, some sent twice: what the histogram adds over
    /// all the steps is what it grew by, bucket by bucket, in every order.
    #[test]
    fn classic_histogram_buckets_from_lagging_shards_add_what_the_histogram_grew_by() {
        let (les, scrapes, edge) = (LES, SCRAPES, bucket_edge());
        let expected = grew_from(0);
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            // Each shard at its own pace: a request holds 1 to 3 of its scrapes, and the shards'
            // requests interleave at random; sometimes a request is sent again.
            let mut queues: Vec<Vec<Vec<(usize, usize)>>> = Vec::new();
            for shard in 0..2 {
                let mine: Vec<usize> = (0..4).filter(|k| (k + round) % 2 == shard).collect();
                let mut requests = Vec::new();
                let mut i = 0;
                while i < scrapes.len() {
                    let n = if i == 0 {
                        1
                    } else {
                        (1 + next(3) as usize).min(scrapes.len() - i)
                    };
                    let request: Vec<(usize, usize)> = (i..i + n)
                        .flat_map(|s| mine.iter().map(move |k| (s, *k)))
                        .collect();
                    if next(4) == 0 {
                        requests.push(request.clone());
                    }
                    requests.push(request);
                    i += n;
                }
                requests.reverse();
                queues.push(requests);
            }
            let mut m = ProxyMetrics::default();
            let mut got = LatencySketch::new();
            // The shards start together: each one's first request (the first scrape) before
            // any later one, in either order.
            let (first, mut sent) = (next(2) as usize, 0);
            while queues.iter().any(|q| !q.is_empty()) {
                let shard = match sent {
                    0 | 1 => (sent + first) % 2,
                    _ => next(2) as usize,
                };
                sent += 1;
                let Some(request) = queues[shard].pop() else {
                    continue;
                };
                for (s, k) in request {
                    let t = (s as u64 + 1) * 1_000_000_000;
                    m.bucket_sample(1, &edge, false, t, les[k], scrapes[s][k]);
                }
                m.settle(&mut |_, _, l| got.merge(l.unwrap()));
            }
            assert_eq!(got, expected, "round {round}");
        }
    }
}
