//! The write side: one transaction per group of batches, and retention.

use std::collections::HashSet;

use sqlx::Postgres;

use crate::encode::{EncodedBatch, ResourceRow, SpanRow};
use crate::sqlite_writer::{self, Job, WriteJob};
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
fn operation_key(service: &str, name: &str, kind: i16) -> u64 {
    use std::hash::BuildHasher;
    // A fixed seed: the same operation gets the same key for the life of the process.
    foldhash::quality::FixedState::with_seed(0x6d65_7368).hash_one((service, name, kind))
}

/// (service, span name, kind, last seen) for the operations list.
pub(crate) type OperationRow = (String, String, i16, i64);

impl Store {
    /// Writes every batch in one transaction. On `Ok` the spans are committed.
    pub async fn write(&self, batches: &[&EncodedBatch]) -> Result<u64, StoreError> {
        let spans: Vec<&SpanRow> = batches.iter().flat_map(|b| b.spans.iter()).collect();
        if spans.is_empty() {
            return Ok(0);
        }
        let committed_ns = now_ns();
        let (resources, operations) = self.unknown_keys(batches, committed_ns);
        let (min_start, max_start) = start_range(&spans, committed_ns);
        match &self.pool {
            Pool::Sqlite(_) => {
                let writer = self.writer()?;
                let restart_wal = self
                    .wal_restart
                    .swap(false, std::sync::atomic::Ordering::AcqRel);
                sqlite_writer::ask(writer, |reply| {
                    Job::Write(WriteJob {
                        batches: batches.iter().map(|b| (*b).clone()).collect(),
                        resources: resources.clone(),
                        operations: operations.clone(),
                        committed_ns,
                        start_range: (min_start, max_start),
                        restart_wal,
                        reply,
                    })
                })
                .await?;
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let (first, last): (i64, i64) = pg_insert_spans(&spans).fetch_one(&mut *tx).await?;
                sqlx::query("INSERT INTO blocks (first_seq, last_seq, min_start_ns, max_start_ns, committed_ns) VALUES ($1, $2, $3, $4, $5)")
                    .bind(first)
                    .bind(last)
                    .bind(min_start)
                    .bind(max_start)
                    .bind(committed_ns)
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
        Ok(spans.len() as u64)
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

    /// Deletes up to `limit` spans of commits made before `cutoff_ns` (retention counts from when
    /// meshlens stored a span, so a span with a skewed clock is kept as long as any other), and
    /// the commits' block rows once their spans are gone. Returns how many spans went.
    /// Small batches keep each delete transaction short so ingest is never stalled for long.
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
        let deleted = on_pool!(&self.pool, |p| {
            sqlx::query("DELETE FROM spans WHERE seq IN (SELECT seq FROM spans WHERE seq <= $1 ORDER BY seq LIMIT $2)")
                .bind(hi)
                .bind(limit)
                .execute(p)
                .await?
                .rows_affected()
        });
        if deleted < limit as u64 {
            on_pool!(&self.pool, |p| {
                sqlx::query("DELETE FROM blocks WHERE committed_ns < $1 AND last_seq <= $2")
                    .bind(cutoff_ns)
                    .bind(hi)
                    .execute(p)
                    .await?
                    .rows_affected()
            });
        }
        Ok(deleted)
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

/// One statement for any number of rows: PostgreSQL unnests one array per column. Returns the
/// first and last `seq` written.
fn pg_insert_spans<'a>(
    rows: &[&SpanRow],
) -> sqlx::query::QueryAs<'a, Postgres, (i64, i64), sqlx::postgres::PgArguments> {
    let n = rows.len();
    let mut trace = Vec::with_capacity(n);
    let mut span = Vec::with_capacity(n);
    let mut parent = Vec::with_capacity(n);
    let mut service = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let mut duration = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut resource = Vec::with_capacity(n);
    let mut attributes = Vec::with_capacity(n);
    let mut extra = Vec::with_capacity(n);
    for r in rows {
        trace.push(r.trace_id.to_vec());
        span.push(r.span_id.to_vec());
        parent.push(r.parent_span_id.map(|p| p.to_vec()).unwrap_or_default());
        service.push(r.service.clone());
        name.push(r.name.clone());
        kind.push(r.kind);
        start.push(r.start_ns);
        duration.push(r.duration_ns);
        status.push(r.status_code);
        error.push(r.is_error);
        resource.push(r.resource_id);
        attributes.push(r.attributes.clone());
        extra.push(r.extra.clone().unwrap_or_default());
    }
    // Empty strings stand for NULL in the arrays; NULLIF turns them back.
    sqlx::query_as(
        "WITH ins AS (
           INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind, start_ns, duration_ns, status_code, is_error, resource_id, attributes, extra)
           SELECT t, s, NULLIF(p, '\\x'::bytea), sv, nm, k, st, d, sc, e, r, a::jsonb, NULLIF(x, '')
           FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[], $4::text[], $5::text[], $6::int2[], $7::int8[], $8::int8[], $9::int2[], $10::bool[], $11::int8[], $12::text[], $13::text[])
             AS u(t, s, p, sv, nm, k, st, d, sc, e, r, a, x)
           RETURNING seq)
         SELECT MIN(seq), MAX(seq) FROM ins",
    )
    .bind(trace)
    .bind(span)
    .bind(parent)
    .bind(service)
    .bind(name)
    .bind(kind)
    .bind(start)
    .bind(duration)
    .bind(status)
    .bind(error)
    .bind(resource)
    .bind(attributes)
    .bind(extra)
}
