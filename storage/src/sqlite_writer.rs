//! SQLite's writes of spans, on a thread of their own with a connection of their own.
//!
//! One transaction per group of batches runs start to end on this thread (prepared 64-row
//! INSERTs), with no hand-off between the async runtime and a connection worker per statement.
//! Between commits it takes steps of trace-index maintenance (`trace_runs`). Readers, retention
//! and rollups keep using the sqlx pool; SQLite's write lock (with the busy timeout) orders them
//! against this writer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::encode::{EncodedBatch, ResourceRow, SpanRow};
use crate::trace_runs::{self, Step};
use crate::write::OperationRow;
use crate::StoreError;

/// One group of batches to commit, with what the rows refer to and a place for the outcome.
pub(crate) struct WriteJob {
    pub batches: Vec<EncodedBatch>,
    pub resources: Vec<ResourceRow>,
    pub operations: Vec<OperationRow>,
    pub committed_ns: i64,
    pub start_range: (i64, i64),
    /// Start the write-ahead log over before this transaction.
    pub restart_wal: bool,
    pub reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// The connection settings the writer shares with the pool's connections.
#[derive(Debug, Clone)]
pub(crate) struct WriterSettings {
    pub path: PathBuf,
    /// `FULL` or `NORMAL`.
    pub synchronous: &'static str,
    pub busy_timeout: Duration,
}

/// What the writer thread is asked to do.
pub(crate) enum Job {
    Write(WriteJob),
    /// Trace-index maintenance until nothing is left; replies with the steps taken.
    Settle(oneshot::Sender<Result<u64, StoreError>>),
    /// The readiness probe: the heartbeat row rewritten (at this time) and committed.
    Probe(i64, oneshot::Sender<Result<u64, StoreError>>),
}

/// The handle: a queue to the writer thread. Dropping it (or `close`) ends the thread once the
/// jobs already sent are done.
pub(crate) struct SqliteWriter {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl SqliteWriter {
    pub fn start(settings: WriterSettings) -> Result<SqliteWriter, StoreError> {
        let conn = open(&settings.path, &settings)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("meshlens-sqlite-writer".into())
            .spawn(move || run(conn, rx))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(SqliteWriter {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Sends a job; the reply comes on the job's channel.
    pub fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| StoreError::Io("the SQLite writer has stopped".into()))
    }

    /// Stops taking jobs and waits for the thread (and its connection) to finish.
    pub fn close(&mut self) -> Option<JoinHandle<()>> {
        self.jobs = None;
        self.thread.take()
    }
}

/// Sends the job `make` builds around a reply channel, and waits for the reply.
pub(crate) async fn ask(
    writer: &std::sync::Mutex<SqliteWriter>,
    make: impl FnOnce(oneshot::Sender<Result<u64, StoreError>>) -> Job,
) -> Result<u64, StoreError> {
    let (reply, outcome) = oneshot::channel();
    writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(make(reply))?;
    outcome
        .await
        .map_err(|_| StoreError::Io("the SQLite writer stopped".into()))?
}

/// Panics the writer thread caught and survived (`Store::writer_panics`).
pub(crate) static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long the writer waits for a job before it takes a step of trace-index maintenance alone.
const IDLE: Duration = Duration::from_millis(50);

/// The thread: each job, then one step of trace-index maintenance; when no job comes, more steps.
fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    let mut maintenance_due = true;
    loop {
        let job = if maintenance_due {
            match jobs.recv_timeout(IDLE) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        };
        match job {
            Some(Job::Write(job)) => {
                // Supervised: a panic in a commit (a bug) rolls it back (the transaction is
                // dropped as the panic unwinds), fails that commit alone, and is counted.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    write(&mut conn, &job)
                }))
                .unwrap_or_else(|_| {
                    PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!("the SQLite writer panicked on a commit; it was rolled back");
                    Err(StoreError::Io(
                        "the SQLite writer failed on this commit (rolled back)".into(),
                    ))
                });
                let _ = job.reply.send(result);
            }
            Some(Job::Settle(reply)) => {
                let _ = reply.send(settle(&mut conn));
                continue;
            }
            Some(Job::Probe(at_ns, reply)) => {
                let done = conn
                    .execute("UPDATE heartbeat SET at_ns = ?1 WHERE id = 1", [at_ns])
                    .map(|n| n as u64)
                    .map_err(StoreError::from);
                let _ = reply.send(done);
                continue;
            }
            None => {}
        }
        maintenance_due = match trace_runs::step(&mut conn, trace_runs::STEP_ENTRIES) {
            Ok(Step::Idle) => false,
            Ok(step) => {
                tracing::trace!(?step, "trace index");
                true
            }
            Err(e) => {
                // Retried after the next commit (a busy database, most likely).
                tracing::warn!(error = %e, "trace index maintenance failed");
                false
            }
        };
    }
}

fn settle(conn: &mut Connection) -> Result<u64, StoreError> {
    let mut steps = 0;
    while trace_runs::step(conn, trace_runs::STEP_ENTRIES)? != Step::Idle {
        steps += 1;
    }
    Ok(steps)
}

fn open(path: &Path, settings: &WriterSettings) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(settings.busy_timeout)?;
    // The pool's settings (lib.rs, `connect_sqlite`) but for mmap: mapped pages that the writer
    // touches would count in the process's resident memory, and the writer reads few pages.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", settings.synchronous)?;
    conn.pragma_update(None, "cache_size", -32768)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "mmap_size", 0)?;
    conn.pragma_update(None, "wal_autocheckpoint", 65_536)?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// Rows per multi-row INSERT (the rest go one by one): fewer statements to step, and SQLite
/// updates AUTOINCREMENT's `sqlite_sequence` row once per statement, not per row.
const ROWS_PER_INSERT: usize = 64;
const SPAN_COLUMNS: usize = 13;

/// The INSERT of `n` rows (two sizes are used; each is built once).
fn insert_spans_sql(n: usize) -> &'static str {
    static MANY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static ONE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let build = || {
        let row = format!("({})", vec!["?"; SPAN_COLUMNS].join(", "));
        format!(
            "INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind, start_ns, duration_ns, status_code, is_error, resource_id, attributes, extra) VALUES {}",
            vec![row; n].join(", ")
        )
    };
    if n == 1 {
        ONE.get_or_init(build)
    } else {
        debug_assert_eq!(n, ROWS_PER_INSERT);
        MANY.get_or_init(build)
    }
}

fn bind_rows(stmt: &mut rusqlite::CachedStatement, rows: &[&SpanRow]) -> rusqlite::Result<()> {
    for (i, r) in rows.iter().enumerate() {
        let at = i * SPAN_COLUMNS;
        stmt.raw_bind_parameter(at + 1, &r.trace_id[..])?;
        stmt.raw_bind_parameter(at + 2, &r.span_id[..])?;
        stmt.raw_bind_parameter(at + 3, r.parent_span_id.as_ref().map(|p| &p[..]))?;
        stmt.raw_bind_parameter(at + 4, &r.service)?;
        stmt.raw_bind_parameter(at + 5, &r.name)?;
        stmt.raw_bind_parameter(at + 6, r.kind)?;
        stmt.raw_bind_parameter(at + 7, r.start_ns)?;
        stmt.raw_bind_parameter(at + 8, r.duration_ns)?;
        stmt.raw_bind_parameter(at + 9, r.status_code)?;
        stmt.raw_bind_parameter(at + 10, r.is_error)?;
        stmt.raw_bind_parameter(at + 11, r.resource_id)?;
        stmt.raw_bind_parameter(at + 12, &r.attributes)?;
        stmt.raw_bind_parameter(at + 13, &r.extra)?;
    }
    Ok(())
}

/// One transaction: the spans, their block, new resources and operations. Returns spans written.
fn write(conn: &mut Connection, job: &WriteJob) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    if job.restart_wal {
        // Between transactions, this connection can start the log over at no one's expense.
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
    }
    // Sorted by index key and trace id, so that each trace's spans in this commit get consecutive
    // seqs and one trace-index entry, in key order (stable: a trace's spans keep the order they
    // came in).
    let mut rows: Vec<&SpanRow> = job.batches.iter().flat_map(|b| b.spans.iter()).collect();
    if rows.is_empty() {
        return Ok(0);
    }
    rows.sort_by_key(|r| trace_runs::row_order(&r.trace_id));
    // IMMEDIATE takes the write lock up front (waiting out the busy timeout): a deferred
    // transaction that reads first could not upgrade while retention deletes.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // One writer holds the lock and seq is AUTOINCREMENT: the rows take the next seqs in order.
    let first_seq: i64 = tx.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'spans'), 0) + 1",
        [],
        |r| r.get(0),
    )?;
    let written = rows.len() as u64;
    {
        let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
        let mut insert = tx.prepare_cached(insert_spans_sql(ROWS_PER_INSERT))?;
        for chunk in &mut chunks {
            bind_rows(&mut insert, chunk)?;
            insert.raw_execute()?;
        }
        let mut insert = tx.prepare_cached(insert_spans_sql(1))?;
        for row in chunks.remainder() {
            bind_rows(&mut insert, std::slice::from_ref(row))?;
            insert.raw_execute()?;
        }
    }
    let last_seq = tx.last_insert_rowid();
    let inserted = started.elapsed();
    if last_seq - first_seq + 1 != written as i64 {
        // Only if something else inserted spans inside this transaction: the index would be wrong.
        return Err(StoreError::Corrupt(format!(
            "spans {first_seq}..={last_seq} are not the {written} rows just written"
        )));
    }
    let entries = trace_runs::entries_of(rows.iter().map(|r| &r.trace_id), first_seq);
    trace_runs::append_run(&tx, &entries, first_seq, last_seq)?;
    tx.prepare_cached("INSERT INTO blocks (first_seq, last_seq, min_start_ns, max_start_ns, committed_ns) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![first_seq, last_seq, job.start_range.0, job.start_range.1, job.committed_ns])?;
    for r in &job.resources {
        tx.prepare_cached("INSERT INTO resources (id, service, attributes, last_seen_ns) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET last_seen_ns = MAX(last_seen_ns, excluded.last_seen_ns)")?
            .execute(params![r.id, r.service, r.attributes, job.committed_ns])?;
    }
    for (service, name, kind, seen) in &job.operations {
        tx.prepare_cached("INSERT INTO operations (service, name, kind, last_seen_ns) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (service, name, kind) DO UPDATE SET last_seen_ns = MAX(last_seen_ns, excluded.last_seen_ns)")?
            .execute(params![service, name, kind, seen])?;
    }
    tx.commit()?;
    tracing::trace!(spans = written, ?inserted, total = ?started.elapsed(), "sqlite write");
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's connection gets the pool's settings: WAL, the configured synchronous level,
    /// the busy timeout; and no mmap.
    #[test]
    fn the_writer_connection_has_the_store_settings() {
        let dir = tempfile::tempdir().unwrap();
        for (synchronous, level) in [("FULL", 2i64), ("NORMAL", 1)] {
            let settings = WriterSettings {
                path: dir.path().join("w.db"),
                synchronous,
                busy_timeout: Duration::from_millis(1234),
            };
            let conn = open(&settings.path, &settings).unwrap();
            let get = |pragma: &str| -> String {
                conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
                .unwrap()
            };
            assert_eq!(get("journal_mode"), "wal");
            assert_eq!(get("synchronous"), level.to_string());
            assert_eq!(get("busy_timeout"), "1234");
            assert_eq!(get("mmap_size"), "0");
        }
    }
}
