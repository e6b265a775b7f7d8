//! Store upkeep: retention deletes old spans in small batches, pausing between them so ingest keeps
//! going; the checkpointer keeps SQLite's write-ahead log short.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlens_collector::metrics::{KeepReason, StoreOperation, Thread};
use meshlens_collector::Metrics;
use meshlens_storage::Store;
use tokio_util::sync::CancellationToken;

use crate::tasks::{spawn_ticks, Set, Task};

const BATCH: i64 = 5_000;
const PAUSE: Duration = Duration::from_millis(20);
/// Blocks tiered retention rewrites between pauses.
const THIN_BLOCKS: i64 = 8;

/// Checkpoints SQLite's write-ahead log twice a second, off the commit path.
pub fn spawn_checkpointer(
    set: &mut Set,
    store: Arc<Store>,
    metrics: &Metrics,
    cancel: CancellationToken,
) {
    let task = Task::new(Thread::Checkpoint, metrics);
    spawn_ticks(set, task, Duration::from_millis(500), cancel, move || {
        let store = store.clone();
        async move {
            if let Err(e) = store.checkpoint().await {
                tracing::warn!(error = %e, "checkpoint failed; will retry");
            }
            Ok(())
        }
    });
}

pub fn spawn(
    set: &mut Set,
    store: Arc<Store>,
    retention: Duration,
    retention_full: Duration,
    interval: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let task = Task::new(Thread::Retention, &metrics);
    let period = interval.max(Duration::from_secs(1));
    spawn_ticks(set, task, period, cancel.clone(), move || {
        let (store, metrics, cancel) = (store.clone(), metrics.clone(), cancel.clone());
        async move {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let cutoff = now.saturating_sub(retention).as_nanos() as i64;
            // Tiers only when the full-fidelity period ends before the retention does.
            let full_cutoff = (retention_full < retention)
                .then(|| now.saturating_sub(retention_full).as_nanos() as i64);
            if let Err(e) = run_once(&store, cutoff, full_cutoff, &metrics, &cancel).await {
                metrics.store_errors.at(StoreOperation::Retention).inc();
                tracing::warn!(error = %e, "retention failed; will retry");
            }
            Ok(())
        }
    });
}

async fn run_once(
    store: &Store,
    cutoff_ns: i64,
    full_cutoff_ns: Option<i64>,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<(), meshlens_storage::StoreError> {
    loop {
        let n = store.delete_committed_before(cutoff_ns, BATCH).await?;
        metrics.retention_deleted_spans.inc_by(n);
        if n < BATCH as u64 || cancel.is_cancelled() {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    // Tiered retention: blocks past the full-fidelity period keep their kept traces only, a few
    // blocks per transaction round, with the same pauses.
    if let Some(full_cutoff) = full_cutoff_ns {
        loop {
            let done = store
                .thin_committed_before(full_cutoff, THIN_BLOCKS)
                .await?;
            metrics.retention_thinned_spans.inc_by(done.dropped_spans);
            for (reason, n) in KeepReason::ALL.iter().copied().zip(done.kept) {
                metrics.retention_kept_traces.at(reason).inc_by(n);
            }
            if done.blocks < THIN_BLOCKS as u64 || cancel.is_cancelled() {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    metrics.store_bytes.set(store.size_bytes().await?);
    let rows = store.row_spans().await?;
    if rows != metrics.store_row_spans.get() {
        metrics.store_row_spans.set(rows);
        tracing::info!(spans = rows, "spans stored as rows (before blocks) left");
    }
    store.delete_operations_before(cutoff_ns).await?;
    // The graph's per-minute history follows the same retention.
    store
        .delete_edge_minutes_before(cutoff_ns.div_euclid(60_000_000_000))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric's reasons are the store's, in the store's order (`Thinned::kept` is by index).
    #[test]
    fn keep_reasons_match_the_stores() {
        let metric: Vec<&str> = KeepReason::ALL.iter().map(|r| r.as_str()).collect();
        let store: Vec<&str> = meshlens_storage::KEEP_REASONS.iter().map(|r| r.1).collect();
        assert_eq!(metric, store);
    }
}
