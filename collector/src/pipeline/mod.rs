//! Receivers → bounded queue → group-commit writer. An export is acknowledged only after its
//! spans are committed; a full queue refuses at once with a retryable error.

use std::sync::Arc;
use std::time::Instant;

use meshlens_storage::ready::Change;
use meshlens_storage::{encode_batch, EncodedBatch, Readiness, Store};
use meshlens_topology::Span;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

mod converted;
pub mod limits;
mod metrics;

pub use converted::{Converted, ConvertedMetrics, Rejected};
pub use limits::IngestLimits;

use crate::error::IngestError;
use crate::graph::GraphFeed;
use crate::metrics::{Metrics, StoreOperation, Thread};

/// Queue and writer sizes.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Spans that may wait for the writer; past this, exports are refused as overloaded.
    pub queue_spans: usize,
    /// Bytes of spans (decoded, as `span_bytes` counts them) that may wait for the writer.
    pub queue_bytes: usize,
    /// Most spans one transaction commits.
    pub max_batch_spans: usize,
    /// Writer tasks (1 for SQLite, which has one writer anyway; more help PostgreSQL).
    pub writers: usize,
    /// What one span and one trace may hold.
    pub limits: IngestLimits,
}

pub const DEFAULT_QUEUE_SPANS: usize = 65_536;
pub const DEFAULT_MAX_BATCH_SPANS: usize = 16_384;
/// 64 MiB: the span queue's 65,536 spans at 1 KiB each, twice what mesh spans take.
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_spans: DEFAULT_QUEUE_SPANS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_batch_spans: DEFAULT_MAX_BATCH_SPANS,
            writers: 1,
            limits: IngestLimits::default(),
        }
    }
}

struct Job {
    batch: EncodedBatch,
    _permit: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    ack: oneshot::Sender<Result<(), IngestError>>,
}

/// The sending side, cloned into every receiver. Dropping every clone lets the writers finish.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::UnboundedSender<Job>,
    permits: Arc<Semaphore>,
    capacity: usize,
    /// The queue's bound in bytes, as permits.
    bytes: Arc<Semaphore>,
    capacity_bytes: usize,
    metrics: Metrics,
    graph: GraphFeed,
    limits: IngestLimits,
    trace_bytes: Arc<limits::TraceBytes>,
}

/// The writer tasks; `join` waits until every queued export is committed.
pub struct Writers {
    handles: Vec<JoinHandle<()>>,
}

impl Writers {
    pub async fn join(self) {
        for h in self.handles {
            let _ = h.await;
        }
    }
}

impl Pipeline {
    /// `readiness` learns from every commit whether the store takes writes.
    pub fn start(
        store: Arc<Store>,
        config: &PipelineConfig,
        metrics: Metrics,
        graph: GraphFeed,
        readiness: Arc<Readiness>,
    ) -> (Pipeline, Writers) {
        // The channel itself is unbounded; the semaphore bounds what may be in it, in spans.
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = config.queue_spans.max(1);
        let permits = Arc::new(Semaphore::new(capacity));
        let capacity_bytes = config.queue_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let bytes = Arc::new(Semaphore::new(capacity_bytes));
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..config.writers.max(1))
            .map(|_| {
                tokio::spawn(writer(
                    rx.clone(),
                    store.clone(),
                    config.max_batch_spans.max(1),
                    metrics.clone(),
                    Depth {
                        spans: (permits.clone(), capacity),
                        bytes: (bytes.clone(), capacity_bytes),
                    },
                    readiness.clone(),
                ))
            })
            .collect();
        let pipeline = Pipeline {
            tx,
            permits,
            capacity,
            bytes,
            capacity_bytes,
            metrics,
            graph,
            limits: config.limits,
            trace_bytes: limits::TraceBytes::new(config.limits.max_bytes_per_trace),
        };
        (pipeline, Writers { handles })
    }

    /// Queues spans (`bytes` of them, as `span_bytes` counts) and waits for their commit.
    pub async fn submit(&self, spans: &[Span], bytes: usize) -> Result<(), IngestError> {
        if spans.is_empty() {
            return Ok(());
        }
        // A batch the whole queue could never hold would be refused forever: say so, not "retry".
        if spans.len() > self.capacity {
            return Err(IngestError::TooManySpans {
                spans: spans.len(),
                capacity: self.capacity,
            });
        }
        if bytes > self.capacity_bytes {
            return Err(IngestError::TooLarge {
                limit: self.capacity_bytes,
            });
        }
        let n = spans.len() as u32;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| IngestError::Overloaded)?;
        // At most the whole queue (checked above), so it fits in a u32 of permits unless the
        // queue is over 4 GiB; then the batch is one more that has to wait for room.
        let bytes_permit = u32::try_from(bytes)
            .ok()
            .and_then(|b| self.bytes.clone().try_acquire_many_owned(b).ok())
            .ok_or(IngestError::Overloaded)?;
        self.depth().report(&self.metrics);
        let batch = encode_batch(spans);
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job {
                batch,
                _permit: permit,
                _bytes: bytes_permit,
                ack,
            })
            .map_err(|_| IngestError::ShuttingDown)?;
        // An acknowledgement dropped unsent: the writer failed on this commit (a caught panic).
        done.await.map_err(|_| IngestError::Store)?
    }

    /// meshlens' own metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The service graph this pipeline feeds.
    pub fn graph(&self) -> &GraphFeed {
        &self.graph
    }

    fn depth(&self) -> Depth {
        Depth {
            spans: (self.permits.clone(), self.capacity),
            bytes: (self.bytes.clone(), self.capacity_bytes),
        }
    }
}

/// The queue's two bounds (spans, bytes), each a semaphore and its size, to report its depth.
struct Depth {
    spans: (Arc<Semaphore>, usize),
    bytes: (Arc<Semaphore>, usize),
}

impl Depth {
    fn report(&self, metrics: &Metrics) {
        let used = |(s, cap): &(Arc<Semaphore>, usize)| (cap - s.available_permits()) as i64;
        metrics.ingest_queue_depth.set(used(&self.spans));
        metrics.ingest_queue_bytes.set(used(&self.bytes));
    }
}

async fn writer(
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>,
    store: Arc<Store>,
    max_batch: usize,
    metrics: Metrics,
    depth: Depth,
    readiness: Arc<Readiness>,
) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut spans = first.batch.len();
            let mut jobs = vec![first];
            // Group commit: take whatever else is already waiting, up to the batch size.
            while spans < max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        spans += job.batch.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        // Supervised: a panic in a commit (a bug) fails that group's exports with a retryable
        // error (their acknowledgements are dropped unsent) and the writer goes on.
        let committed = std::panic::AssertUnwindSafe(commit(&store, jobs, &metrics, &readiness));
        if let Err(panic) = futures::FutureExt::catch_unwind(committed).await {
            metrics.panics.at(Thread::IngestWriter).inc();
            tracing::error!(
                panic = crate::panic_message(&panic),
                "an ingest writer panicked on a commit; its exports are answered with a retryable error"
            );
        }
        depth.report(&metrics);
    }
}

/// Commits a group; if the group fails, each export is tried alone so one bad export cannot
/// fail the others beside it.
async fn commit(store: &Store, jobs: Vec<Job>, metrics: &Metrics, readiness: &Readiness) {
    let batches: Vec<&EncodedBatch> = jobs.iter().map(|j| &j.batch).collect();
    let outcome = timed_write(store, &batches, metrics).await;
    match &outcome {
        Ok(()) | Err(StoreFailure::Data) => record_store(readiness, metrics, Ok(())),
        Err(StoreFailure::Transient(why)) => record_store(readiness, metrics, Err(why)),
    }
    match outcome {
        Ok(()) => {
            for job in jobs {
                let _ = job.ack.send(Ok(()));
            }
        }
        Err(StoreFailure::Data) if jobs.len() > 1 => {
            for job in jobs {
                let result = timed_write(store, &[&job.batch], metrics)
                    .await
                    .map_err(|f| f.to_ingest());
                let _ = job.ack.send(result);
            }
        }
        Err(failure) => {
            // A transient failure (connection, busy) would fail each export alone as well.
            for job in jobs {
                let _ = job.ack.send(Err(failure.to_ingest()));
            }
        }
    }
}

/// Records whether the store took a commit (or the readiness probe's write): `/readyz` and
/// `meshlens_store_writable` follow it, with a log line when it changes. A commit refused for
/// its data says the store works.
pub fn record_store(readiness: &Readiness, metrics: &Metrics, outcome: Result<(), &str>) {
    match outcome {
        Ok(()) => {
            if readiness.store_ok() == Change::Recovered {
                metrics.store_writable.set(1);
                tracing::info!("the store commits again: ready");
            }
        }
        Err(why) => {
            if readiness.store_failed(why) == Change::Failing {
                metrics.store_writable.set(0);
                tracing::error!(
                    reason = why,
                    "the store cannot commit: /readyz answers 503 until it can"
                );
            }
        }
    }
}

/// Why a commit failed: the data (no use retrying it) or the store (retry later; the reason).
#[derive(Debug, Clone)]
enum StoreFailure {
    Data,
    Transient(String),
}

impl StoreFailure {
    fn to_ingest(&self) -> IngestError {
        match self {
            StoreFailure::Data => IngestError::Unstorable,
            StoreFailure::Transient(_) => IngestError::Store,
        }
    }
}

async fn timed_write(
    store: &Store,
    batches: &[&EncodedBatch],
    metrics: &Metrics,
) -> Result<(), StoreFailure> {
    let started = Instant::now();
    match store.write(batches).await {
        Ok(n) => {
            metrics
                .store_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.store_spans_written.inc_by(n);
            Ok(())
        }
        Err(e) => {
            metrics.store_errors.at(StoreOperation::Write).inc();
            tracing::error!(error = %e, batches = batches.len(), "store write failed");
            Err(if e.is_data_error() {
                StoreFailure::Data
            } else {
                StoreFailure::Transient(e.to_string())
            })
        }
    }
}

/// The resource attribute a request's tenant is kept in.
pub const TENANT_ATTRIBUTE: &str = "meshlens.tenant";

/// Puts the request's `tenant` on every span's resource, and takes away any `meshlens.tenant`
/// a sender set itself (a tenant comes from a token, never from the data). Each resource is
/// copied once however many spans share it; resources without the attribute, in a request
/// without a tenant, are left as they are.
fn tag_tenant(spans: &mut [meshlens_topology::Span], tenant: Option<&str>) {
    use meshlens_topology::AttrValue;
    let mut done: std::collections::HashMap<usize, Arc<meshlens_topology::Resource>> =
        std::collections::HashMap::new();
    for span in spans {
        let key = Arc::as_ptr(&span.resource) as usize;
        if let Some(tagged) = done.get(&key) {
            span.resource = tagged.clone();
            continue;
        }
        let forged = span.resource.attributes.get(TENANT_ATTRIBUTE).is_some();
        if tenant.is_none() && !forged {
            done.insert(key, span.resource.clone());
            continue;
        }
        let mut resource = (*span.resource).clone();
        resource.attributes.0.retain(|(k, _)| k != TENANT_ATTRIBUTE);
        if let Some(t) = tenant {
            resource
                .attributes
                .0
                .push((TENANT_ATTRIBUTE.to_string(), AttrValue::Str(t.to_string())));
        }
        let tagged = Arc::new(resource);
        done.insert(key, tagged.clone());
        span.resource = tagged;
    }
}

impl Pipeline {
    /// The step every receiver shares: count what was refused, queue the rest, wait for the commit.
    /// Returns the invalid spans for the client's partial-success answer. A refused request is
    /// counted by the receiver (with `reject_request`), which also sees errors from before this step.
    /// A `tenant` (named by the request's ingest token) is kept on each span's resource as
    /// `meshlens.tenant`; a `meshlens.tenant` the sender set is taken away.
    pub async fn ingest(
        &self,
        protocol: crate::Protocol,
        mut converted: Converted,
        tenant: Option<&crate::listen::auth::Tenant>,
    ) -> Result<Rejected, IngestError> {
        let p = protocol.as_str();
        let cut = limits::cut_spans(&mut converted.spans, &self.limits.span);
        for (field, n) in cut.by_field() {
            if n > 0 {
                self.metrics
                    .ingest_span_limit_cuts
                    .with_label_values(&[p, field])
                    .inc_by(n);
            }
        }
        tag_tenant(&mut converted.spans, tenant.map(|t| &*t.0));
        let mut sizes: Vec<usize> = converted
            .spans
            .iter()
            .map(meshlens_topology::span_bytes)
            .collect();
        let (fits, charged, tracked) = self.trace_bytes.admit(&converted.spans, &sizes);
        if fits.contains(&false) {
            let spans = std::mem::take(&mut converted.spans);
            let all_sizes = std::mem::take(&mut sizes);
            for ((span, size), fits) in spans.into_iter().zip(all_sizes).zip(fits) {
                if fits {
                    converted.spans.push(span);
                    sizes.push(size);
                } else {
                    converted
                        .rejected
                        .add(meshlens_topology::InvalidSpan::TraceTooLarge, || {
                            format!("a span of trace {}", span.trace_id.to_hex())
                        });
                }
            }
        }
        self.metrics.ingest_tracked_traces.set(tracked as i64);
        for (reason, n) in &converted.rejected.by_reason {
            self.metrics
                .ingest_rejected_spans
                .with_label_values(&[p, reason.as_str()])
                .inc_by(*n);
        }
        let n = converted.spans.len() as u64;
        let bytes = sizes.iter().sum();
        match self.submit(&converted.spans, bytes).await {
            Ok(()) => {
                self.metrics.ingest_spans.with_label_values(&[p]).inc_by(n);
                // Only committed spans count on the graph, so an export a client sends again
                // after a refusal is counted once.
                self.graph.offer(converted.spans, bytes);
                Ok(converted.rejected)
            }
            Err(e) => {
                self.trace_bytes.release(charged);
                self.metrics
                    .ingest_rejected_spans
                    .with_label_values(&[p, e.reason()])
                    .inc_by(n);
                Err(e)
            }
        }
    }

    /// Counts a refused request (and logs it at a level that fits the reason).
    pub fn reject_request(&self, protocol: crate::Protocol, e: &IngestError) {
        self.metrics
            .ingest_rejected_requests
            .with_label_values(&[protocol.as_str(), e.reason()])
            .inc();
        if e.is_retryable() {
            // Under overload every export is refused: one line per interval says so.
            static LOG: crate::logs::LogEvery =
                crate::logs::LogEvery::new(crate::logs::LOG_INTERVAL);
            if let Some(skipped) = LOG.due() {
                tracing::warn!(protocol = protocol.as_str(), error = %e, skipped, "export refused (skipped: refusals since the last such line)");
            }
        } else {
            tracing::debug!(protocol = protocol.as_str(), error = %e, "bad export");
        }
    }
}
