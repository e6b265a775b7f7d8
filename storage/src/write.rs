//! The write side: one transaction per group of batches, and retention.

use std::collections::HashSet;

use sqlx::{Postgres, QueryBuilder, Sqlite};

use crate::encode::{EncodedBatch, ResourceRow, SpanRow};
use crate::{Known, Pool, Store, StoreError, KNOWN_LIMIT};

/// Rows per multi-row INSERT on SQLite. A few fixed sizes keep every statement in sqlx's
/// per-connection cache: preparing a new 13-column × N-row statement costs more than running it.
/// (SQLite allows 32,766 bound values per statement; 13 × 2,048 stays under it.)
const SQLITE_INSERT_SIZES: [usize; 6] = [2048, 512, 128, 32, 8, 1];

/// (service, span name, kind, last seen) for the operations list.
type OperationRow = (String, String, i16, i64);

fn sqlite_chunk(remaining: usize) -> usize {
    SQLITE_INSERT_SIZES
        .into_iter()
        .find(|&n| n <= remaining)
        .unwrap_or(1)
}

impl Store {
    /// Writes every batch in one transaction. On `Ok` the spans are committed.
    pub async fn write(&self, batches: &[&EncodedBatch]) -> Result<u64, StoreError> {
        let (resources, operations) = self.unknown_keys(batches);
        let spans: Vec<&SpanRow> = batches.iter().flat_map(|b| b.spans.iter()).collect();
        match &self.pool {
            Pool::Sqlite(pool) => {
                let started = std::time::Instant::now();
                let mut tx = pool.begin().await?;
                let mut rest = &spans[..];
                while !rest.is_empty() {
                    let n = sqlite_chunk(rest.len());
                    sqlite_insert_spans(&rest[..n])
                        .build()
                        .execute(&mut *tx)
                        .await?;
                    rest = &rest[n..];
                }
                let inserted = started.elapsed();
                for r in &resources {
                    sqlx::query("INSERT INTO resources (id, service, attributes) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING")
                        .bind(r.id).bind(&r.service).bind(&r.attributes)
                        .execute(&mut *tx).await?;
                }
                for (service, name, kind, seen) in &operations {
                    sqlx::query("INSERT INTO operations (service, name, kind, last_seen_ns) VALUES (?, ?, ?, ?) ON CONFLICT (service, name, kind) DO UPDATE SET last_seen_ns = MAX(last_seen_ns, excluded.last_seen_ns)")
                        .bind(service).bind(name).bind(kind).bind(seen)
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
                tracing::trace!(spans = spans.len(), ?inserted, total = ?started.elapsed(), "sqlite write");
            }
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                pg_insert_spans(&spans).execute(&mut *tx).await?;
                for r in &resources {
                    sqlx::query("INSERT INTO resources (id, service, attributes) VALUES ($1, $2, $3::jsonb) ON CONFLICT (id) DO NOTHING")
                        .bind(r.id).bind(&r.service).bind(&r.attributes)
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
    fn unknown_keys(&self, batches: &[&EncodedBatch]) -> (Vec<ResourceRow>, Vec<OperationRow>) {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut resources: Vec<ResourceRow> = Vec::new();
        let mut seen_res = HashSet::new();
        let mut operations = Vec::new();
        let mut seen_ops = HashSet::new();
        for batch in batches {
            for r in &batch.resources {
                if !known.resources.contains(&r.id) && seen_res.insert(r.id) {
                    resources.push(r.clone());
                }
            }
            for s in &batch.spans {
                let key = (s.service.clone(), s.name.clone(), s.kind);
                if !known.operations.contains(&key) && seen_ops.insert(key.clone()) {
                    operations.push((key.0, key.1, key.2, s.start_ns));
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
                .map(|(s, n, k, _)| (s.clone(), n.clone(), *k)),
        );
    }

    /// Deletes up to `limit` spans that started before `cutoff_ns`; returns how many went.
    /// Small batches keep each delete transaction short so ingest is never stalled for long.
    pub async fn delete_spans_before(&self, cutoff_ns: i64, limit: i64) -> Result<u64, StoreError> {
        let done = match &self.pool {
            Pool::Sqlite(p) => sqlx::query(
                "DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans WHERE start_ns < ? LIMIT ?)",
            )
            .bind(cutoff_ns)
            .bind(limit)
            .execute(p)
            .await?
            .rows_affected(),
            Pool::Postgres(p) => sqlx::query(
                "DELETE FROM spans WHERE ctid IN (SELECT ctid FROM spans WHERE start_ns < $1 LIMIT $2)",
            )
            .bind(cutoff_ns)
            .bind(limit)
            .execute(p)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    /// Copies the SQLite write-ahead log into the database without blocking the writer (PASSIVE),
    /// so commits never pay for a checkpoint. No-op on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if let Pool::Sqlite(p) = &self.pool {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// Forgets operations not seen since `cutoff_ns`, so the lists follow retention.
    pub async fn delete_operations_before(&self, cutoff_ns: i64) -> Result<u64, StoreError> {
        let sql = match &self.pool {
            Pool::Sqlite(_) => "DELETE FROM operations WHERE last_seen_ns < ?",
            Pool::Postgres(_) => "DELETE FROM operations WHERE last_seen_ns < $1",
        };
        let done = match &self.pool {
            Pool::Sqlite(p) => sqlx::query(sql)
                .bind(cutoff_ns)
                .execute(p)
                .await?
                .rows_affected(),
            Pool::Postgres(p) => sqlx::query(sql)
                .bind(cutoff_ns)
                .execute(p)
                .await?
                .rows_affected(),
        };
        // The operations cache may now claim keys that are gone; start it afresh.
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Known::default();
        Ok(done)
    }
}

fn sqlite_insert_spans<'a>(rows: &'a [&'a SpanRow]) -> QueryBuilder<'a, Sqlite> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind, start_ns, duration_ns, status_code, is_error, resource_id, attributes, extra) ",
    );
    qb.push_values(rows, |mut b, r| {
        b.push_bind(&r.trace_id[..])
            .push_bind(&r.span_id[..])
            .push_bind(r.parent_span_id.as_ref().map(|p| &p[..]))
            .push_bind(&r.service)
            .push_bind(&r.name)
            .push_bind(r.kind)
            .push_bind(r.start_ns)
            .push_bind(r.duration_ns)
            .push_bind(r.status_code)
            .push_bind(r.is_error)
            .push_bind(r.resource_id)
            .push_bind(&r.attributes)
            .push_bind(r.extra.as_deref());
    });
    qb
}

/// One statement for any number of rows: PostgreSQL unnests one array per column.
fn pg_insert_spans<'a>(
    rows: &[&SpanRow],
) -> sqlx::query::Query<'a, Postgres, sqlx::postgres::PgArguments> {
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
    sqlx::query(
        "INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind, start_ns, duration_ns, status_code, is_error, resource_id, attributes, extra)
         SELECT t, s, NULLIF(p, '\\x'::bytea), sv, nm, k, st, d, sc, e, r, a::jsonb, NULLIF(x, '')
         FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[], $4::text[], $5::text[], $6::int2[], $7::int8[], $8::int8[], $9::int2[], $10::bool[], $11::int8[], $12::text[], $13::text[])
           AS u(t, s, p, sv, nm, k, st, d, sc, e, r, a, x)",
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
