//! The write side: one transaction per group of batches, and retention.

use std::collections::{HashMap, HashSet};

use crate::encode::{EncodedBatch, ResourceRow, SpanRow};
use crate::sqlite_writer::{self, Job, WriteJob};
use crate::{block, trace_runs};
use crate::{on_pool, Known, Pool, Store, StoreError, KNOWN_LIMIT};

/// How far in the future a span may start and still count for its block's time range. A clock
/// far ahead would otherwise stretch an old block over every later search.
const MAX_FUTURE_NS: i64 = 300_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// What a round of tiered retention did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Thinned {
    /// Blocks reduced to their kept traces.
    pub blocks: u64,
    /// Spans of traces no rule kept, gone.
    pub dropped_spans: u64,
    /// Traces kept, by reason ([`crate::KEEP_REASONS`], in its order; a trace kept for two
    /// reasons counts under both).
    pub kept: [u64; 3],
}

/// One commit's spans encoded as a block, with its trace-index entries (seqs counted from 0 at
/// the block's first span) and the start times it covers.
pub(crate) struct Commit {
    pub encoded: block::EncodedBlock,
    pub entries: Vec<trace_runs::Entry>,
    pub start_range: (i64, i64),
    pub spans: u64,
}

impl Commit {
    fn encode(batches: &[EncodedBatch], committed_ns: i64, keeper: &block::keep::Keeper) -> Commit {
        // Sorted by index key and trace id, so that each trace's spans get consecutive seqs and
        // one trace-index entry, in key order (stable: a trace's spans keep the order they came
        // in).
        let mut rows: Vec<&SpanRow> = batches.iter().flat_map(|b| b.spans.iter()).collect();
        rows.sort_by_key(|r| trace_runs::row_order(&r.trace_id));
        let terms: HashMap<i64, Vec<u64>> = batches
            .iter()
            .flat_map(|b| b.resources.iter())
            .map(|r| (r.id, r.terms.clone()))
            .collect();
        let mut encoded = block::encode(&rows, &terms, Some(keeper));
        cap_future(&mut encoded, committed_ns);
        Commit {
            encoded,
            entries: trace_runs::entries_of(rows.iter().map(|r| &r.trace_id), 0),
            start_range: start_range(&rows, committed_ns),
            spans: rows.len() as u64,
        }
    }
}

/// Each service's start times in a block, the future clamped to `MAX_FUTURE_NS` past the commit
/// as the block's own are.
fn cap_future(encoded: &mut block::EncodedBlock, committed_ns: i64) {
    let cap = committed_ns.saturating_add(MAX_FUTURE_NS);
    for part in &mut encoded.services {
        part.min_start = part.min_start.min(cap);
        part.max_start = part.max_start.min(cap);
    }
}

/// The start times a block covers, the future clamped to `MAX_FUTURE_NS` past the commit.
fn start_range(spans: &[&SpanRow], committed_ns: i64) -> (i64, i64) {
    let min = spans
        .iter()
        .map(|s| s.start_ns)
        .min()
        .unwrap_or(committed_ns);
    let max = spans
        .iter()
        .map(|s| s.start_ns)
        .max()
        .unwrap_or(committed_ns);
    let cap = committed_ns.saturating_add(MAX_FUTURE_NS);
    (min.min(cap), max.min(cap))
}

/// WAL frames (pages) after which the checkpointer restarts the log: 16,384 × 4 KiB = 64 MiB.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// A 64-bit key for an operation: the cache of known operations holds these, not the strings, so
/// its memory does not grow with the length of span names (and the writer clones nothing per span).
pub(crate) fn operation_key(service: &str, name: &str, kind: i16) -> u64 {
    use std::hash::BuildHasher;
    // A fixed seed: the same operation gets the same key for the life of the process.
    foldhash::quality::FixedState::with_seed(0x6d65_7368).hash_one((service, name, kind))
}

/// (service, span name, kind, last seen) for the operations list.
pub(crate) type OperationRow = (String, String, i16, i64);

impl Store {
    /// Writes every batch in one transaction, as one block. On `Ok` the spans are committed.
    pub async fn write(&self, batches: &[&EncodedBatch]) -> Result<u64, StoreError> {
        let written: u64 = batches.iter().map(|b| b.len() as u64).sum();
        if written == 0 {
            return Ok(0);
        }
        let committed_ns = now_ns();
        let (resources, operations) = self.unknown_keys(batches, committed_ns);
        // Encoding and compressing take CPU time: off the async workers, before the writer.
        let owned: Vec<EncodedBatch> = batches.iter().map(|b| (*b).clone()).collect();
        let keeper = self.keeper.clone();
        let block =
            tokio::task::spawn_blocking(move || Commit::encode(&owned, committed_ns, &keeper))
                .await
                .map_err(|e| StoreError::Io(format!("encoding a block: {e}")))?;
        match &self.pool {
            Pool::Sqlite(_) => {
                let writer = self.writer()?;
                let restart_wal = self
                    .wal_restart
                    .swap(false, std::sync::atomic::Ordering::AcqRel);
                sqlite_writer::ask(writer, |reply| {
                    Job::Write(WriteJob {
                        block,
                        resources: resources.clone(),
                        operations: operations.clone(),
                        committed_ns,
                        restart_wal,
                        reply,
                    })
                })
                .await?;
            }
            Pool::Postgres(pool) => {
                let n = block.spans as i64;
                let mut tx = pool.begin().await?;
                let last: i64 = sqlx::query_scalar(
                    "UPDATE span_seq SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq",
                )
                .bind(n)
                .fetch_one(&mut *tx)
                .await?;
                let first = last - n + 1;
                sqlx::query("INSERT INTO blocks (first_seq, last_seq, min_start_ns, max_start_ns, committed_ns, summary, keep) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(first)
                    .bind(last)
                    .bind(block.start_range.0)
                    .bind(block.start_range.1)
                    .bind(committed_ns)
                    .bind(&block.encoded.summary)
                    .bind(&block.encoded.keep)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO block_data (first_seq, data) VALUES ($1, $2)")
                    .bind(first)
                    .bind(&block.encoded.data)
                    .execute(&mut *tx)
                    .await?;
                let parts = &block.encoded.services;
                sqlx::query("INSERT INTO block_services (service, max_start_ns, first_seq, min_start_ns, summary) SELECT s, mx, $3, mn, sm FROM UNNEST($1::text[], $2::int8[], $4::int8[], $5::bytea[]) AS u(s, mx, mn, sm)")
                    .bind(parts.iter().map(|p| p.service.clone()).collect::<Vec<_>>())
                    .bind(parts.iter().map(|p| p.max_start).collect::<Vec<_>>())
                    .bind(first)
                    .bind(parts.iter().map(|p| p.min_start).collect::<Vec<_>>())
                    .bind(parts.iter().map(|p| p.summary.clone()).collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await?;
                let keys: Vec<Vec<u8>> = block.entries.iter().map(|e| e.key.to_vec()).collect();
                let seqs: Vec<i64> = block.entries.iter().map(|e| e.first_seq + first).collect();
                let counts: Vec<i32> = block.entries.iter().map(|e| e.span_count as i32).collect();
                sqlx::query("INSERT INTO trace_index (trace_key, first_seq, span_count) SELECT * FROM UNNEST($1::bytea[], $2::int8[], $3::int4[])")
                    .bind(keys)
                    .bind(seqs)
                    .bind(counts)
                    .execute(&mut *tx)
                    .await?;
                for r in &resources {
                    sqlx::query("INSERT INTO resources (id, service, attributes, last_seen_ns) VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (id) DO UPDATE SET last_seen_ns = GREATEST(resources.last_seen_ns, excluded.last_seen_ns)")
                        .bind(r.id).bind(&r.service).bind(&r.attributes).bind(committed_ns)
                        .execute(&mut *tx).await?;
                }
                for (service, name, kind, seen) in &operations {
                    sqlx::query("INSERT INTO operations (service, name, kind, last_seen_ns) VALUES ($1, $2, $3, $4) ON CONFLICT (service, name, kind) DO UPDATE SET last_seen_ns = GREATEST(operations.last_seen_ns, excluded.last_seen_ns)")
                        .bind(service).bind(name).bind(kind).bind(seen)
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        self.remember(&resources, &operations);
        Ok(written)
    }

    /// The resources and operations of these batches that this process has not written yet.
    /// Operations are stamped with the commit time, so that the lists follow retention (which
    /// counts from commits) whatever the clients' clocks say.
    fn unknown_keys(
        &self,
        batches: &[&EncodedBatch],
        committed_ns: i64,
    ) -> (Vec<ResourceRow>, Vec<OperationRow>) {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut resources: Vec<ResourceRow> = Vec::new();
        let mut seen_res = HashSet::new();
        let mut operations = Vec::new();
        let mut seen_ops = HashSet::new();
        for batch in batches {
            for r in batch.resources.iter() {
                if !known.resources.contains(&r.id) && seen_res.insert(r.id) {
                    resources.push(r.clone());
                }
            }
            for s in batch.spans.iter() {
                let key = operation_key(&s.service, &s.name, s.kind);
                if !known.operations.contains(&key) && seen_ops.insert(key) {
                    operations.push((s.service.clone(), s.name.clone(), s.kind, committed_ns));
                }
            }
        }
        // A fixed order keeps concurrent writers from deadlocking on the same keys.
        resources.sort_by_key(|r| r.id);
        operations.sort();
        (resources, operations)
    }

    /// Called after a commit only, so a rolled-back key is written again next time.
    fn remember(&self, resources: &[ResourceRow], operations: &[OperationRow]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.resources.len() + known.operations.len() > KNOWN_LIMIT {
            *known = Known::default();
        }
        known.resources.extend(resources.iter().map(|r| r.id));
        known.operations.extend(
            operations
                .iter()
                .map(|(s, n, k, _)| operation_key(s, n, *k)),
        );
    }

    /// Deletes up to about `limit` spans of commits made before `cutoff_ns` (retention counts
    /// from when meshlens stored a span, so a span with a skewed clock is kept as long as any
    /// other): rows first (spans stored before blocks), then whole blocks, oldest first, and the
    /// commits' rows of `blocks` once their spans are gone. Returns how many spans went. Small
    /// batches keep each delete transaction short so ingest is never stalled for long.
    pub async fn delete_committed_before(
        &self,
        cutoff_ns: i64,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let hi: Option<i64> = on_pool!(&self.pool, |p| {
            sqlx::query_scalar("SELECT MAX(last_seq) FROM blocks WHERE committed_ns < $1")
                .bind(cutoff_ns)
                .fetch_one(p)
                .await?
        });
        let Some(hi) = hi else { return Ok(0) };
        let mut deleted = 0;
        if self.has_rows().await? {
            deleted = on_pool!(&self.pool, |p| {
                sqlx::query("DELETE FROM spans WHERE seq IN (SELECT seq FROM spans WHERE seq <= $1 ORDER BY seq LIMIT $2)")
                    .bind(hi)
                    .bind(limit)
                    .execute(p)
                    .await?
                    .rows_affected()
            });
            if deleted >= limit as u64 {
                return Ok(deleted);
            }
        }
        // Whole blocks, as many as hold about `limit` spans (at least one).
        let blocks: Vec<(i64, i64, i64)> = on_pool!(&self.pool, |p| {
            sqlx::query_as("SELECT b.first_seq, b.last_seq, CAST(COALESCE(b.span_count, b.last_seq - b.first_seq + 1) AS BIGINT) FROM blocks b JOIN block_data d ON d.first_seq = b.first_seq WHERE b.committed_ns < $1 AND b.last_seq <= $2 ORDER BY b.first_seq LIMIT $3")
                .bind(cutoff_ns)
                .bind(hi)
                .bind(limit.max(1))
                .fetch_all(p)
                .await?
        });
        let mut upto = None;
        for (_, last, spans) in blocks {
            if upto.is_some() && deleted + spans as u64 > limit as u64 {
                break;
            }
            deleted += spans as u64;
            upto = Some(last);
        }
        let upto = upto.unwrap_or(i64::MIN);
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM block_services WHERE first_seq <= $1 AND first_seq IN (SELECT first_seq FROM blocks WHERE committed_ns < $2)")
                .bind(upto)
                .bind(cutoff_ns)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM block_data WHERE first_seq <= $1 AND first_seq IN (SELECT first_seq FROM blocks WHERE committed_ns < $2)")
                .bind(upto)
                .bind(cutoff_ns)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM blocks WHERE committed_ns < $1 AND last_seq <= $2 AND NOT EXISTS (SELECT 1 FROM block_data d WHERE d.first_seq = blocks.first_seq) AND NOT EXISTS (SELECT 1 FROM spans WHERE seq <= blocks.last_seq)")
                .bind(cutoff_ns)
                .bind(hi)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        // PostgreSQL's trace index goes with its blocks (SQLite's runs drop entries below the
        // lowest stored seq as they merge).
        if let (Pool::Postgres(p), true) = (&self.pool, upto > i64::MIN) {
            sqlx::query("DELETE FROM trace_index WHERE first_seq <= $1 AND first_seq < COALESCE((SELECT MIN(first_seq) FROM block_data), $1 + 1)")
                .bind(upto)
                .execute(p)
                .await?;
        }
        Ok(deleted)
    }

    /// Tiered retention: up to `max_blocks` blocks committed before `cutoff_ns` that still hold
    /// every trace are written again with only the traces their keep list names (errors, the
    /// slowest, samples), each block in a transaction of its own; a block that keeps none goes
    /// whole. Returns what was done.
    pub async fn thin_committed_before(
        &self,
        cutoff_ns: i64,
        max_blocks: i64,
    ) -> Result<Thinned, StoreError> {
        let due: Vec<(i64, i64, Vec<u8>)> = on_pool!(&self.pool, |p| {
            sqlx::query_as("SELECT first_seq, committed_ns, keep FROM blocks WHERE keep IS NOT NULL AND committed_ns < $1 ORDER BY first_seq LIMIT $2")
                .bind(cutoff_ns)
                .bind(max_blocks)
                .fetch_all(p)
                .await?
        });
        let mut done = Thinned::default();
        for (first_seq, committed_ns, keep) in due {
            let decoded = match (block::keep::decode(&keep), self.block(first_seq).await) {
                (Ok(kept), Ok(Some(b))) => Some((kept, b)),
                // Deleted meanwhile.
                (Ok(_), Ok(None)) => None,
                (Err(e), _) | (_, Err(e)) => {
                    // Kept whole rather than lost, and not tried again: one damaged block must
                    // not stop tiered retention for every block after it.
                    tracing::warn!(first_seq, error = %e, "a block could not be thinned; it is kept whole");
                    None
                }
            };
            let Some((kept, decoded)) = decoded else {
                on_pool!(&self.pool, |p| {
                    sqlx::query("UPDATE blocks SET keep = NULL WHERE first_seq = $1")
                        .bind(first_seq)
                        .execute(p)
                        .await?
                        .rows_affected()
                });
                continue;
            };
            let mut reasons = vec![0u8; decoded.traces.len()];
            for (t, r) in &kept {
                if let Some(slot) = reasons.get_mut(*t as usize) {
                    *slot = *r;
                }
            }
            let rows = decoded.rows(|t| reasons[t] != 0);
            let everything = rows.len() == decoded.len();
            let encoded = if rows.is_empty() || everything {
                None
            } else {
                let mut ids: Vec<i64> = rows.iter().map(|r| r.resource_id).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut terms = HashMap::new();
                for r in self.resources(&ids).await? {
                    terms.insert(r.id, crate::search::resource_terms(&r.attributes)?);
                }
                let refs: Vec<&SpanRow> = rows.iter().collect();
                let mut e = block::encode(&refs, &terms, None);
                cap_future(&mut e, committed_ns);
                Some(e)
            };
            let count = rows.len() as i64;
            let thinned: bool = on_pool!(&self.pool, |p| {
                let mut tx = p.begin().await?;
                // Claims the block: another replica's retention or thinning may have taken it
                // since it was read; then nothing is written.
                let claimed = sqlx::query(
                    "UPDATE blocks SET keep = NULL WHERE first_seq = $1 AND keep IS NOT NULL",
                )
                .bind(first_seq)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if claimed && !everything {
                    sqlx::query("DELETE FROM block_services WHERE first_seq = $1")
                        .bind(first_seq)
                        .execute(&mut *tx)
                        .await?;
                    match &encoded {
                        None => {
                            sqlx::query("DELETE FROM block_data WHERE first_seq = $1")
                                .bind(first_seq)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query("UPDATE blocks SET span_count = 0 WHERE first_seq = $1")
                                .bind(first_seq)
                                .execute(&mut *tx)
                                .await?;
                        }
                        Some(e) => {
                            sqlx::query("UPDATE block_data SET data = $1 WHERE first_seq = $2")
                                .bind(&e.data)
                                .bind(first_seq)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(
                                "UPDATE blocks SET summary = $1, span_count = $2 WHERE first_seq = $3",
                            )
                            .bind(&e.summary)
                            .bind(count)
                            .bind(first_seq)
                            .execute(&mut *tx)
                            .await?;
                            for part in &e.services {
                                sqlx::query("INSERT INTO block_services (service, max_start_ns, first_seq, min_start_ns, summary) VALUES ($1, $2, $3, $4, $5)")
                                    .bind(&part.service)
                                    .bind(part.max_start)
                                    .bind(first_seq)
                                    .bind(part.min_start)
                                    .bind(&part.summary)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                        }
                    }
                }
                tx.commit().await?;
                claimed
            });
            if thinned {
                done.blocks += 1;
                done.dropped_spans += (decoded.len() - rows.len()) as u64;
                for (slot, (bit, _)) in done.kept.iter_mut().zip(block::keep::REASONS) {
                    *slot += reasons.iter().filter(|r| *r & bit != 0).count() as u64;
                }
            }
        }
        Ok(done)
    }

    /// Copies SQLite's write-ahead log into the database without blocking the writer (PASSIVE),
    /// so commits never pay for a whole checkpoint. A writer that never pauses keeps a PASSIVE
    /// checkpoint from ever completing, and then the log is never started over (measured: it grew
    /// to 300 MB in 12 s). Past `WAL_RESTART_FRAMES` the writer is asked to restart it before its
    /// next transaction, when little is left to copy. No-op on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if let Pool::Sqlite(p) = &self.pool {
            let (_busy, log, _done): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(p)
                    .await?;
            if log > WAL_RESTART_FRAMES {
                self.wal_restart
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        Ok(())
    }

    /// The SQLite store's writer thread.
    fn writer(&self) -> Result<&std::sync::Mutex<sqlite_writer::SqliteWriter>, StoreError> {
        self.sqlite_writer
            .as_ref()
            .ok_or_else(|| StoreError::Io("the SQLite store has no writer".into()))
    }

    /// Panics the SQLite writer thread caught and survived (each failed one commit), in this
    /// process.
    pub fn writer_panics(&self) -> u64 {
        sqlite_writer::PANICS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Proves the store takes writes now: the heartbeat row rewritten and committed (on SQLite by
    /// the writer thread, after the commits queued before it). A full disk, a read-only file or
    /// database, or a lost connection fail it.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let at = now_ns();
        match &self.pool {
            Pool::Sqlite(_) => {
                sqlite_writer::ask(self.writer()?, |reply| Job::Probe(at, reply)).await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("UPDATE heartbeat SET at_ns = $1 WHERE id = 1")
                    .bind(at)
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// SQLite: merges the trace index's runs and drops those of deleted spans until nothing is
    /// left to do, and returns the steps taken. The writer does this between commits anyway;
    /// this is for tests and tools that want it done now. No-op on PostgreSQL.
    pub async fn settle_trace_index(&self) -> Result<u64, StoreError> {
        let Some(writer) = &self.sqlite_writer else {
            return Ok(0);
        };
        sqlite_writer::ask(writer, Job::Settle).await
    }

    /// Forgets operations and resources not written since `cutoff_ns`, so the lists and the
    /// resources follow retention. Writers stamp a key only when it is not in their cache of
    /// keys written; the cache starts afresh here, so every key in use is stamped again within
    /// one retention round, and a key older than the cutoff is one no retained span refers to
    /// (retention's period is longer than its interval). Returns the operations deleted.
    pub async fn delete_operations_before(&self, cutoff_ns: i64) -> Result<u64, StoreError> {
        let done = on_pool!(&self.pool, |p| {
            sqlx::query("DELETE FROM operations WHERE last_seen_ns < $1")
                .bind(cutoff_ns)
                .execute(p)
                .await?
                .rows_affected()
        });
        on_pool!(&self.pool, |p| {
            sqlx::query("DELETE FROM resources WHERE last_seen_ns < $1")
                .bind(cutoff_ns)
                .execute(p)
                .await?
                .rows_affected()
        });
        // The cache may now claim keys that are gone; start it afresh.
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Known::default();
        Ok(done)
    }
}
