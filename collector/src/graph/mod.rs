//! Feeds committed spans to the service graph, and the graph's calls to the product metrics.
//! The engine itself (`meshlens_topology::graph::Topology`) is pure; this is where the clock,
//! the lock and Prometheus come in.

mod export;

pub use export::{ProductMetrics, DEFAULT_MAX_SERIES, PRODUCT_METRIC_NAMES};

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

use meshlens_storage::EdgeMinute;
use meshlens_topology::graph::{
    ClusterMap, EdgeObservation, GraphLimits, HealthConfig, PairingConfig, PairingCounters,
    PolicyDecision, Topology,
};
use meshlens_topology::prom::batches_from_keyed;
use meshlens_topology::{MetricBatch, Span};

use crate::error::IngestError;
use crate::prom::WireBatch;

use crate::memory::MemoryLimiter;
use crate::metrics::{Metrics, SpanOutcome, Thread};

/// How the graph pairs, judges health and exports.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    pub pairing: PairingConfig,
    pub health: HealthConfig,
    /// Most label sets per product metric family.
    pub max_series: usize,
    /// Plain Envoy cluster names and their services.
    pub clusters: ClusterMap,
    /// Most bytes of spans and metrics that may wait for the graph thread.
    pub queue_bytes: usize,
    /// Caps on the graph's edges and nodes.
    pub limits: GraphLimits,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            pairing: PairingConfig::default(),
            health: HealthConfig::default(),
            max_series: DEFAULT_MAX_SERIES,
            clusters: ClusterMap::default(),
            queue_bytes: DEFAULT_QUEUE_BYTES,
            limits: GraphLimits::default(),
        }
    }
}

/// The live graph, shared by the pipeline (which feeds it) and the web API (which reads it).
/// Committed spans are handed to a graph thread through a bounded queue, so a commit's
/// acknowledgement never waits for the graph, and the async workers never wait for its lock.
#[derive(Clone)]
pub struct GraphFeed {
    core: Arc<FeedCore>,
    tx: SyncSender<(Input, usize)>,
}

/// What the graph thread takes: committed spans, or proxies' metrics.
enum Input {
    Spans(Vec<Span>),
    Metrics(Vec<MetricBatch>),
    Wire(WireBatch),
    /// A panic on the graph thread, for the test of its supervision ([`GraphFeed::inject_panic`]).
    Panic,
}

struct FeedCore {
    topology: Arc<Mutex<Topology>>,
    export: ProductMetrics,
    metrics: Metrics,
    /// The engine's counters as last reported, to turn them into increments.
    reported: Mutex<PairingCounters>,
    /// Bytes of the inputs in the queue, and their bound.
    queued: std::sync::atomic::AtomicUsize,
    queue_bytes: usize,
    /// Past its hard limit, queued inputs are shed instead of observed.
    memory: MemoryLimiter,
}

/// Inputs that may wait for the graph thread, whatever their size (their bytes are bounded apart).
const QUEUE_INPUTS: usize = 1024;

/// Most bytes of inputs (spans, metrics, remote write bodies) that may wait for the graph thread
/// by default (`[graph] queue_bytes`). The thread handles over a million spans a second
/// (BENCHMARKS.md), so spans fill it only if it is starved of CPU; then they are left off the
/// graph (never the store) and counted. The first scrape of a large mesh arrives faster than the
/// graph resolves its series: past the bound a metrics write is overload (503, retried), so the
/// whole scrape is never queued in memory.
/// 32 MiB: with the ingest queue (64 MiB) and the memory limiter's soft limit (328 MiB), sized for a
/// 512 MiB container. A starved graph thread otherwise held a backlog of 100+ MiB under full ingest.
pub const DEFAULT_QUEUE_BYTES: usize = 32 << 20;

/// The graph thread's priority on thread-priority's 0–99 scale (50 is a normal thread's; below
/// 50 is a positive nice value on Linux).
const GRAPH_PRIORITY: u8 = 30;

/// Remote-written series: those the graph resolved before by their samples alone, the rest
/// (decoded from the body) by their labels.
pub fn feed_wire(t: &mut Topology, wire: &WireBatch, now: u64) {
    let mut misses = Vec::new();
    for s in &wire.series {
        if !t.observe_known(s.id, wire.samples(s), now) {
            misses.push(s);
        }
    }
    if !misses.is_empty() {
        let from = batches_from_keyed(
            misses
                .into_iter()
                .filter_map(|s| Some((s.index, s.id, wire.decode(s)?))),
        );
        for (batch, ids) in from.batches.iter().zip(&from.ids) {
            t.observe_keyed(batch, ids, now);
        }
        t.ignore_series(&from.unread_ids);
    }
    // After both kinds: a histogram's buckets may be split between them.
    t.settle_metrics(now);
}

/// The graph's size and what went to its overflow node, into the self-metrics (under the
/// engine's lock: the overflow counter follows the engine's).
fn record_size(metrics: &Metrics, t: &Topology) {
    metrics.topology_edges.set(t.edge_count() as i64);
    metrics.topology_nodes.set(t.node_count() as i64);
    let overflow = &metrics.topology_overflow_observations;
    overflow.inc_by(t.overflowed().saturating_sub(overflow.get()));
}

/// Wall-clock nanoseconds: windows follow arrival time, not the senders' clocks.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// About what a batch of metric points holds in memory.
fn metric_batch_bytes(b: &MetricBatch) -> usize {
    use meshlens_topology::PointValue;
    b.points
        .iter()
        .map(|p| {
            let buckets = match &p.value {
                PointValue::Histogram { bounds, counts, .. } => 8 * (bounds.len() + counts.len()),
                _ => 0,
            };
            std::mem::size_of_val(p)
                + p.name.len()
                + meshlens_topology::attributes_bytes(&p.attributes)
                + buckets
        })
        .sum()
}

impl GraphFeed {
    /// Creates the graph and starts its thread, which ends when every clone of the feed is gone.
    /// Past `memory`'s hard limit the thread sheds what waits for it.
    pub fn new(config: &GraphConfig, metrics: &Metrics, memory: &MemoryLimiter) -> Self {
        let core = Arc::new(FeedCore {
            topology: Arc::new(Mutex::new(
                Topology::new(config.pairing, config.health)
                    .with_clusters(config.clusters.clone())
                    .with_limits(config.limits),
            )),
            export: ProductMetrics::new(metrics, config.max_series),
            metrics: metrics.clone(),
            reported: Mutex::new(PairingCounters::default()),
            queued: Default::default(),
            queue_bytes: config.queue_bytes,
            memory: memory.clone(),
        });
        let (tx, rx) = sync_channel::<(Input, usize)>(QUEUE_INPUTS);
        let worker = core.clone();
        let spawned = std::thread::Builder::new()
            .name("meshlens-graph".into())
            .spawn(move || {
                // Below the receivers and the writer, which acknowledge exports: when the cores
                // are short, the graph (never on the ack path) waits first.
                let lowered = thread_priority::ThreadPriorityValue::try_from(GRAPH_PRIORITY)
                    .map_err(|e| format!("{e:?}"))
                    .and_then(|p| {
                        thread_priority::set_current_thread_priority(
                            thread_priority::ThreadPriority::Crossplatform(p),
                        )
                        .map_err(|e| format!("{e:?}"))
                    });
                if let Err(e) = lowered {
                    tracing::debug!(error = %e, "graph thread priority unchanged");
                }
                for (input, queued) in rx {
                    // Past the hard memory limit the backlog goes first: what waits here is
                    // committed (or, for metrics, refused to no one), so only the graph loses it.
                    if worker.memory.shed() && !matches!(input, Input::Panic) {
                        worker.shed(input, queued);
                        continue;
                    }
                    // Supervised: a panic on one input (a bug the data found) is logged and
                    // counted, that input is lost to the graph (never to the store), and the
                    // thread goes on with the graph as it was (the engine's lock is taken past
                    // its poisoning: each observation updates whole slots).
                    let handled =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match input {
                            Input::Spans(spans) => worker.observe(&spans),
                            Input::Metrics(batches) => worker.observe_metrics(&batches),
                            Input::Wire(wire) => worker.observe_wire(&wire),
                            Input::Panic => panic!("a panic injected into the graph thread"),
                        }));
                    worker.dequeued(queued);
                    if let Err(panic) = handled {
                        worker.metrics.panics.at(Thread::Graph).inc();
                        tracing::error!(
                            panic = crate::panic_message(&panic),
                            "the graph thread panicked on one input; it goes on without it"
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "graph thread did not start; the graph stays empty");
        }
        GraphFeed { core, tx }
    }

    /// Makes the graph thread panic on its next input, as a bug would: for the test that it is
    /// supervised. Not reachable from the network.
    #[doc(hidden)]
    pub fn inject_panic(&self) {
        let _ = self.tx.send((Input::Panic, 0));
    }

    /// Hands committed spans (about `bytes` of them, as `span_bytes` counts) to the graph thread;
    /// past the queue's bound they are left off the graph and counted.
    pub fn offer(&self, spans: Vec<Span>, bytes: usize) {
        let n = spans.len() as u64;
        if self.enqueue(Input::Spans(spans), bytes).is_err() {
            self.core
                .metrics
                .topology_spans
                .at(SpanOutcome::Dropped)
                .inc_by(n);
        }
    }

    /// Hands proxies' metrics to the graph thread; a full queue is overload (retry later).
    pub fn offer_metrics(&self, batches: Vec<MetricBatch>) -> Result<(), IngestError> {
        if batches.is_empty() {
            return Ok(());
        }
        let bytes = batches.iter().map(metric_batch_bytes).sum();
        self.enqueue(Input::Metrics(batches), bytes)
    }

    /// Hands remote-written series to the graph thread; a full queue is overload.
    pub fn offer_wire(&self, wire: WireBatch) -> Result<(), IngestError> {
        let bytes = wire.bytes();
        self.enqueue(Input::Wire(wire), bytes)
    }

    /// Queues an input of `n` bytes within the queue's bounds (its bytes, its length).
    fn enqueue(&self, input: Input, n: usize) -> Result<(), IngestError> {
        let before = self
            .core
            .queued_bytes(|q| q.fetch_add(n, Ordering::Relaxed));
        // One input is taken however large, so that a body under the size limit always fits.
        if before > 0 && before + n > self.core.queue_bytes {
            self.core.dequeued(n);
            return Err(IngestError::Overloaded);
        }
        self.tx.try_send((input, n)).map_err(|e| {
            self.core.dequeued(n);
            match e {
                TrySendError::Full(_) => IngestError::Overloaded,
                TrySendError::Disconnected(_) => IngestError::ShuttingDown,
            }
        })
    }

    /// Adds the policy server's refusals between services to their edges (from a blocking
    /// thread: it takes the engine's lock).
    pub fn observe_policy(&self, decisions: &[PolicyDecision]) {
        if decisions.is_empty() {
            return;
        }
        let now = now_ns();
        let mut t = self.core.lock();
        t.observe_policy(decisions, now);
        record_size(&self.core.metrics, &t);
    }

    /// Settles spans whose time ran out and forgets long-idle edges; call about once a second.
    pub fn tick(&self) {
        let now = now_ns();
        let calls = self.core.with_engine(|t| t.tick(now));
        self.core.export.record_calls(&calls);
        self.core.export.tick();
    }

    /// Each edge's statistics for the whole minutes after `after` (unix minutes) that have ended,
    /// and the last such minute, for the per-minute history.
    pub fn closed_minutes(&self, after: i64) -> (Vec<EdgeMinute>, i64) {
        let now = now_ns();
        let last_closed = (now / 60_000_000_000) as i64 - 1;
        let rows = self
            .core
            .lock()
            .closed_minutes(after, now)
            .into_iter()
            .map(|(minute, key, stats)| EdgeMinute { minute, key, stats })
            .collect();
        (rows, last_closed)
    }

    /// Shared handle for readers that only need snapshots (the web API).
    pub fn topology(&self) -> Arc<Mutex<Topology>> {
        self.core.topology.clone()
    }
}

impl FeedCore {
    /// Changes the queued bytes with `f` (which returns the bytes before) and reports them.
    fn queued_bytes(&self, f: impl FnOnce(&std::sync::atomic::AtomicUsize) -> usize) -> usize {
        let before = f(&self.queued);
        self.metrics
            .topology_queued_bytes
            .set(self.queued.load(Ordering::Relaxed) as i64);
        before
    }

    fn dequeued(&self, n: usize) {
        if n > 0 {
            self.queued_bytes(|q| q.fetch_sub(n, Ordering::Relaxed));
        }
    }

    /// Drops a queued input unobserved (past the hard memory limit), and counts it.
    fn shed(&self, input: Input, queued: usize) {
        if let Input::Spans(spans) = &input {
            self.metrics
                .topology_spans
                .at(SpanOutcome::Dropped)
                .inc_by(spans.len() as u64);
        }
        self.metrics.memory_shed_bytes.inc_by(queued as u64);
        drop(input);
        self.dequeued(queued);
    }

    fn lock(&self) -> MutexGuard<'_, Topology> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, spans: &[Span]) {
        let now = now_ns();
        let calls = self.with_engine(|t| t.observe(spans, now));
        self.export.record_calls(&calls);
        self.export.record_spans(spans);
    }

    fn observe_metrics(&self, batches: &[MetricBatch]) {
        self.with_metrics_engine(|t, now| {
            for b in batches {
                t.observe_metrics(b, now);
            }
        });
    }

    /// Remote-written series, into the engine.
    fn observe_wire(&self, wire: &WireBatch) {
        self.with_metrics_engine(|t, now| feed_wire(t, wire, now));
    }

    /// Runs `f` on the engine with metrics, then brings the self-metrics up to date.
    fn with_metrics_engine(&self, f: impl FnOnce(&mut Topology, u64)) {
        let now = now_ns();
        let mut t = self.lock();
        let (unplaced, late) = (t.unplaced_points(), t.late_points());
        f(&mut t, now);
        self.metrics
            .topology_unplaced_points
            .inc_by(t.unplaced_points() - unplaced);
        self.metrics
            .topology_late_points
            .inc_by(t.late_points() - late);
        record_size(&self.metrics, &t);
        self.metrics
            .topology_known_series
            .set(t.resolved_series() as i64);
    }

    /// Runs `f` on the engine, then brings the self-metrics up to date.
    fn with_engine(
        &self,
        f: impl FnOnce(&mut Topology) -> Vec<EdgeObservation>,
    ) -> Vec<EdgeObservation> {
        let mut t = self.lock();
        let calls = f(&mut t);
        self.metrics.topology_pending_spans.set(t.pending() as i64);
        record_size(&self.metrics, &t);
        // Reported under the engine's lock, so counters are reported in the order they grew.
        self.report(t.counters());
        calls
    }

    fn report(&self, now: PairingCounters) {
        let mut last = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let m = &self.metrics;
        for (outcome, new, old) in [
            (SpanOutcome::Paired, now.paired, last.paired),
            (SpanOutcome::Expired, now.expired, last.expired),
            (SpanOutcome::Evicted, now.evicted, last.evicted),
            (SpanOutcome::Unpaired, now.unpaired, last.unpaired),
        ] {
            if new > old {
                m.topology_spans.at(outcome).inc_by(new - old);
            }
        }
        if now.virtual_edges > last.virtual_edges {
            m.topology_virtual_calls
                .inc_by(now.virtual_edges - last.virtual_edges);
        }
        *last = now;
    }
}

#[cfg(test)]
mod tests;
