//! The read side: a trace by id, trace search, services and operations.

use meshlens_topology::{Span, SpanKind, TraceId};
use sqlx::{Postgres, QueryBuilder, Sqlite};

use crate::block::Block;
use crate::decode::{self, RawResource, RawSpan};
use crate::query::{Operation, TraceQuery, MAX_SEARCH_LIMIT};
use crate::{on_pool, Pool, Store, StoreError};

const SPAN_COLUMNS_SQLITE: &str = "trace_id, span_id, parent_span_id, name, kind, start_ns, duration_ns, status_code, resource_id, attributes, extra";
const SPAN_COLUMNS_PG: &str = "trace_id, span_id, parent_span_id, name, kind, start_ns, duration_ns, status_code, resource_id, attributes::text AS attributes, extra";

impl Store {
    /// Every stored span of a trace, ordered by start time. Empty when the trace is unknown.
    pub async fn trace(&self, id: TraceId) -> Result<Vec<Span>, StoreError> {
        let mut traces = self.traces(&[id]).await?;
        Ok(traces.pop().unwrap_or_default())
    }

    /// The spans of several traces, one list per trace that has spans, in the order asked.
    pub async fn traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut raw = self.block_spans(ids).await?;
        if self.has_rows().await? {
            raw.extend(self.spans_in_rows(ids).await?);
        }
        raw.sort_by_key(|r| r.start_ns);
        let mut resource_ids: Vec<i64> = raw.iter().map(|r| r.resource_id).collect();
        resource_ids.sort_unstable();
        resource_ids.dedup();
        let resources = decode::resources(self.resources(&resource_ids).await?)?;
        let mut out: Vec<Vec<Span>> = vec![Vec::new(); ids.len()];
        for r in raw {
            let span = decode::span(r, &resources)?;
            if let Some(i) = ids.iter().position(|id| *id == span.trace_id) {
                out[i].push(span);
            }
        }
        out.retain(|t| !t.is_empty());
        for trace in &mut out {
            dedup_retried(trace);
        }
        Ok(out)
    }

    /// The spans of these traces stored in blocks: the blocks the trace index points at, each
    /// read and decoded once.
    async fn block_spans(&self, ids: &[TraceId]) -> Result<Vec<RawSpan>, StoreError> {
        // Blocks' entries always have a 64-bit id's own key (the old zero key is the rows').
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| crate::trace_runs::trace_key(id.as_bytes()).to_vec())
            .collect();
        // The commit each entry's spans are in: the block at or before its first seq.
        const BLOCK_OF: &str = "(SELECT b.first_seq FROM blocks b WHERE b.first_seq <= i.first_seq ORDER BY b.first_seq DESC LIMIT 1)";
        let blocks: Vec<Option<i64>> = match &self.pool {
            Pool::Sqlite(p) => {
                let mut qb = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT DISTINCT {BLOCK_OF} FROM trace_index i WHERE i.run_id IN (SELECT run_id FROM trace_runs) AND i.trace_key IN ("
                ));
                let mut sep = qb.separated(", ");
                for k in keys {
                    sep.push_bind(k);
                }
                qb.push(")");
                qb.build_query_scalar().fetch_all(p).await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar(&format!(
                    "SELECT DISTINCT {BLOCK_OF} FROM trace_index i WHERE i.trace_key = ANY($1)"
                ))
                .bind(keys)
                .fetch_all(p)
                .await?
            }
        };
        let wanted: Vec<[u8; 16]> = ids.iter().map(|id| *id.as_bytes()).collect();
        let mut raw = Vec::new();
        for first_seq in blocks.into_iter().flatten() {
            if let Some(block) = self.block(first_seq).await? {
                raw.extend(block.spans_of(&wanted));
            }
        }
        Ok(raw)
    }

    /// The decoded block that starts at this seq; `None` for a commit of rows, or one retention
    /// has deleted.
    pub(crate) async fn block(&self, first_seq: i64) -> Result<Option<Block>, StoreError> {
        let data: Option<Vec<u8>> = on_pool!(&self.pool, |p| {
            sqlx::query_scalar("SELECT data FROM block_data WHERE first_seq = $1")
                .bind(first_seq)
                .fetch_optional(p)
                .await?
        });
        data.map(|d| Block::decode(&d)).transpose()
    }

    /// Whether any span is still stored as a row (written before blocks, not yet removed by
    /// retention). Once none is, none will be again, and the question is not asked again.
    pub(crate) async fn has_rows(&self) -> Result<bool, StoreError> {
        use std::sync::atomic::Ordering;
        if !self.rows_left.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let any: bool = on_pool!(&self.pool, |p| {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM spans)")
                .fetch_one(p)
                .await?
        });
        if !any {
            self.rows_left.store(false, Ordering::Relaxed);
        }
        Ok(any)
    }

    /// The spans of these traces stored as rows.
    async fn spans_in_rows(&self, ids: &[TraceId]) -> Result<Vec<RawSpan>, StoreError> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                // Through the trace index's runs (trace_runs.rs).
                let mut qb = QueryBuilder::<Sqlite>::new(format!(
                    "SELECT {SPAN_COLUMNS_SQLITE} FROM {} AND i.trace_key IN (",
                    crate::trace_runs::LOOKUP_FROM
                ));
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(crate::trace_runs::trace_key(id.as_bytes()).to_vec());
                }
                if ids
                    .iter()
                    .any(|id| crate::trace_runs::is_64_bit(id.as_bytes()))
                {
                    sep.push_bind(crate::trace_runs::OLD_64_BIT_KEY.to_vec());
                }
                qb.push(") AND s.trace_id IN (");
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(id.as_bytes().to_vec());
                }
                qb.push(")");
                qb.build_query_as().fetch_all(p).await?
            }
            Pool::Postgres(p) => {
                let list: Vec<Vec<u8>> = ids.iter().map(|i| i.as_bytes().to_vec()).collect();
                sqlx::query_as(&format!(
                    "SELECT {SPAN_COLUMNS_PG} FROM spans WHERE trace_id = ANY($1)"
                ))
                .bind(list)
                .fetch_all(p)
                .await?
            }
        })
    }

    pub(crate) async fn resources(&self, ids: &[i64]) -> Result<Vec<RawResource>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                let mut qb = QueryBuilder::<Sqlite>::new(
                    "SELECT id, attributes FROM resources WHERE id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(*id);
                }
                qb.push(")");
                qb.build_query_as().fetch_all(p).await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as(
                    "SELECT id, attributes::text AS attributes FROM resources WHERE id = ANY($1)",
                )
                .bind(ids.to_vec())
                .fetch_all(p)
                .await?
            }
        })
    }

    /// Trace ids matching the query, newest first.
    /// Searches run at most `max_concurrent_searches` at once (more are refused at once with
    /// [`StoreError::Busy`]) and each for at most `search_timeout` ([`StoreError::SearchTimeout`]):
    /// a search never queues behind others, nor holds a connection (or, on SQLite, a read
    /// snapshot that keeps the checkpoint from finishing) for long.
    pub async fn search(&self, q: &TraceQuery) -> Result<Vec<TraceId>, StoreError> {
        self.check_range(q.start_min_ns.into(), q.start_max_ns.into())?;
        let _permit = self.searches.try_acquire().map_err(|_| StoreError::Busy)?;
        let limit = q.limit.clamp(1, MAX_SEARCH_LIMIT);
        let deadline = std::time::Instant::now() + self.search_timeout;
        let mut found = self.search_blocks(q, limit, deadline).await?;
        if self.has_rows().await? {
            for (id, t) in self.search_rows(q, limit as i64, deadline).await? {
                let at = found.entry(id).or_insert(t);
                *at = (*at).max(t);
            }
        }
        let mut found: Vec<([u8; 16], i64)> = found.into_iter().collect();
        found.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        Ok(found
            .into_iter()
            .take(limit)
            .filter_map(|(id, _)| TraceId::from_bytes(&id).ok())
            .collect())
    }

    /// The search over spans stored as rows: trace ids with the latest start of their matching
    /// spans.
    async fn search_rows(
        &self,
        q: &TraceQuery,
        limit: i64,
        deadline: std::time::Instant,
    ) -> Result<Vec<([u8; 16], i64)>, StoreError> {
        let Some(seqs) = self.seq_range(q.start_min_ns, q.start_max_ns).await? else {
            return Ok(Vec::new());
        };
        // What is left of the search's time after the blocks.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(StoreError::SearchTimeout(self.search_timeout));
        }
        let timeout = self.search_timeout;
        let timed_out = |e: sqlx::Error| -> StoreError {
            let code = match &e {
                sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
                _ => None,
            };
            // PostgreSQL's query_canceled; SQLite's SQLITE_INTERRUPT.
            match code.as_deref() {
                Some("57014") | Some("9") => StoreError::SearchTimeout(timeout),
                _ => e.into(),
            }
        };
        let rows: Vec<(Vec<u8>, i64)> = match &self.pool {
            Pool::Sqlite(p) => {
                let mut qb = QueryBuilder::<Sqlite>::new(
                    "SELECT s.trace_id, MAX(s.start_ns) AS t FROM spans s WHERE ",
                );
                push_filters(&mut qb, q, seqs, Dialect::Sqlite);
                qb.push(" GROUP BY s.trace_id ORDER BY t DESC LIMIT ")
                    .push_bind(limit);
                let mut conn = p.acquire().await?;
                conn.lock_handle()
                    .await?
                    .set_progress_handler(1000, move || std::time::Instant::now() < deadline);
                let rows = qb.build_query_as().fetch_all(&mut *conn).await;
                conn.lock_handle().await?.remove_progress_handler();
                rows.map_err(timed_out)?
            }
            Pool::Postgres(p) => {
                let mut qb = QueryBuilder::<Postgres>::new(
                    "SELECT s.trace_id, MAX(s.start_ns) AS t FROM spans s WHERE ",
                );
                push_filters(&mut qb, q, seqs, Dialect::Postgres);
                qb.push(" GROUP BY s.trace_id ORDER BY t DESC LIMIT ")
                    .push_bind(limit);
                let mut tx = p.begin().await?;
                sqlx::query(&format!(
                    "SET LOCAL statement_timeout = {}",
                    left.as_millis().max(1)
                ))
                .execute(&mut *tx)
                .await?;
                let rows = qb
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(timed_out)?;
                tx.commit().await?;
                rows
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(id, t)| Some((<[u8; 16]>::try_from(id.as_slice()).ok()?, t)))
            .collect())
    }

    /// The seq range of every commit holding a span that started within [min, max]; `None` when
    /// no commit does. Searches scan this range through `(service, seq)`.
    async fn seq_range(&self, min_ns: i64, max_ns: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let range: (Option<i64>, Option<i64>) = on_pool!(&self.pool, |p| {
            sqlx::query_as(
                "SELECT MIN(first_seq), MAX(last_seq) FROM blocks WHERE max_start_ns >= $1 AND min_start_ns <= $2",
            )
            .bind(min_ns)
            .bind(max_ns)
            .fetch_one(p)
            .await?
        });
        Ok(match range {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            _ => None,
        })
    }

    /// Search, then the spans of every trace found.
    pub async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        let ids = self.search(q).await?;
        self.traces(&ids).await
    }

    /// Every service that has sent a span still within retention, sorted.
    pub async fn services(&self) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT DISTINCT service FROM operations ORDER BY service";
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .fetch_all(p)
            .await?))
    }

    /// A service's operations, optionally of one kind, sorted by name.
    pub async fn operations(
        &self,
        service: &str,
        kind: Option<SpanKind>,
    ) -> Result<Vec<Operation>, StoreError> {
        let kind = kind.map(|k| k.to_otlp() as i16);
        let rows: Vec<(String, i16)> = match &self.pool {
            Pool::Sqlite(p) => sqlx::query_as(
                "SELECT name, kind FROM operations WHERE service = ? AND (? IS NULL OR kind = ?) ORDER BY name, kind",
            )
            .bind(service)
            .bind(kind)
            .bind(kind)
            .fetch_all(p)
            .await?,
            Pool::Postgres(p) => sqlx::query_as(
                "SELECT name, kind FROM operations WHERE service = $1 AND ($2::int2 IS NULL OR kind = $2) ORDER BY name, kind",
            )
            .bind(service)
            .bind(kind)
            .fetch_all(p)
            .await?,
        };
        Ok(rows
            .into_iter()
            .map(|(name, kind)| Operation {
                name,
                kind: SpanKind::from_otlp(kind.into()),
            })
            .collect())
    }

    /// How many spans are stored, as rows and in blocks (for tests and the crash check).
    pub async fn count_spans(&self) -> Result<i64, StoreError> {
        let sql = "SELECT CAST((SELECT COUNT(*) FROM spans) + (SELECT COALESCE(SUM(COALESCE(b.span_count, b.last_seq - b.first_seq + 1)), 0) FROM blocks b JOIN block_data d ON d.first_seq = b.first_seq) AS BIGINT)";
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .fetch_one(p)
            .await?))
    }

    /// Spans still stored as rows (written before blocks); 0 once retention has removed them.
    pub async fn row_spans(&self) -> Result<i64, StoreError> {
        if !self.has_rows().await? {
            return Ok(0);
        }
        let sql = "SELECT COUNT(*) FROM spans";
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .fetch_one(p)
            .await?))
    }

    /// Bytes the store takes: SQLite's pages in use (not free pages, which it reuses, nor its
    /// write-ahead log), or on PostgreSQL the tables of its schema with their indexes and
    /// out-of-line values.
    pub async fn size_bytes(&self) -> Result<i64, StoreError> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar("SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()")
                    .fetch_one(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'")
                    .fetch_one(p)
                    .await?
            }
        })
    }

    /// Resource rows held (retention deletes those no retained span refers to).
    pub async fn count_resources(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM resources";
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .fetch_one(p)
            .await?))
    }
}

/// A client that retries an export whose answer it lost sends the same spans twice; both copies
/// are stored (a unique index would cost every insert), and reads keep one, as Jaeger's do.
/// Zipkin's shared spans (a client and a server half with one id) differ in kind and are kept.
fn dedup_retried(spans: &mut Vec<Span>) {
    let mut seen = std::collections::HashSet::new();
    spans.retain(|s| seen.insert((s.span_id, s.kind.to_otlp(), s.start_ns, s.end_ns)));
}

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The WHERE clause of a search, shared by both dialects; only the attribute match differs.
fn push_filters<'a, DB>(
    qb: &mut QueryBuilder<'a, DB>,
    q: &'a TraceQuery,
    (first_seq, last_seq): (i64, i64),
    dialect: Dialect,
) where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i16: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    qb.push("s.seq BETWEEN ")
        .push_bind(first_seq)
        .push(" AND ")
        .push_bind(last_seq)
        .push(" AND s.start_ns >= ")
        .push_bind(q.start_min_ns)
        .push(" AND s.start_ns <= ")
        .push_bind(q.start_max_ns);
    if let Some(service) = &q.service {
        qb.push(" AND s.service = ").push_bind(service.as_str());
    }
    if let Some(op) = &q.operation {
        qb.push(" AND s.name = ").push_bind(op.as_str());
    }
    if let Some(kind) = q.span_kind {
        qb.push(" AND s.kind = ").push_bind(kind.to_otlp() as i16);
    }
    if let Some(min) = q.duration_min_ns {
        qb.push(" AND s.duration_ns >= ").push_bind(min);
    }
    if let Some(max) = q.duration_max_ns {
        qb.push(" AND s.duration_ns <= ").push_bind(max);
    }
    let mut errors_only = q.errors_only;
    for (key, value) in &q.tags {
        if key == "error" {
            match value.as_str() {
                "true" => errors_only = true,
                _ => {
                    qb.push(" AND NOT s.is_error");
                }
            }
            continue;
        }
        match dialect {
            Dialect::Sqlite => {
                // json_each yields 1/0 for booleans; compare them as the words true/false.
                let text = "(CASE j.type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(j.value AS TEXT) END)";
                qb.push(" AND (EXISTS (SELECT 1 FROM json_each(s.attributes) j WHERE j.key = ")
                    .push_bind(key.as_str())
                    .push(format!(" AND {text} = "))
                    .push_bind(value.as_str())
                    .push(") OR EXISTS (SELECT 1 FROM resources r, json_each(r.attributes) j WHERE r.id = s.resource_id AND j.key = ")
                    .push_bind(key.as_str())
                    .push(format!(" AND {text} = "))
                    .push_bind(value.as_str())
                    .push("))");
            }
            Dialect::Postgres => {
                qb.push(" AND (s.attributes ->> ")
                    .push_bind(key.as_str())
                    .push(" = ")
                    .push_bind(value.as_str())
                    .push(" OR EXISTS (SELECT 1 FROM resources r WHERE r.id = s.resource_id AND r.attributes ->> ")
                    .push_bind(key.as_str())
                    .push(" = ")
                    .push_bind(value.as_str())
                    .push("))");
            }
        }
    }
    if errors_only {
        qb.push(" AND s.is_error");
    }
}
