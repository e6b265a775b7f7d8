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

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::encode::ResourceRow;
use crate::trace_runs::{self, Step};
use crate::write::{Commit, OperationRow};
use crate::StoreError;

/// One group of batches to commit (encoded as one block), with what the spans refer to and a
/// place for the outcome.
pub(crate) struct WriteJob {
    pub block: Commit,
    pub resources: Vec<ResourceRow>,
    pub operations: Vec<OperationRow>,
    pub committed_ns: i64,
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

/// One transaction: the block, its trace-index run, new resources and operations. Returns
/// spans written.
fn write(conn: &mut Connection, job: &WriteJob) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    if job.restart_wal {
        // Between transactions, this connection can start the log over at no one's expense.
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
    }
    let block = &job.block;
    if block.spans == 0 {
        return Ok(0);
    }
    // IMMEDIATE takes the write lock up front (waiting out the busy timeout): a deferred
    // transaction that reads first could not upgrade while retention deletes.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // One writer holds the lock: the block takes the next seqs. sqlite_sequence's row for
    // `spans` is the one counter of rows and blocks alike, so a seq is never used twice, also
    // once retention has emptied every table.
    let last_used: Option<i64> = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'spans'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let first_seq = last_used.unwrap_or(0) + 1;
    let last_seq = first_seq + block.spans as i64 - 1;
    match last_used {
        Some(_) => tx
            .prepare_cached("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'spans'")?
            .execute([last_seq])?,
        None => tx
            .prepare_cached("INSERT INTO sqlite_sequence (name, seq) VALUES ('spans', ?1)")?
            .execute([last_seq])?,
    };
    tx.prepare_cached("INSERT INTO blocks (first_seq, last_seq, min_start_ns, max_start_ns, committed_ns, summary, keep) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
        .execute(params![first_seq, last_seq, block.start_range.0, block.start_range.1, job.committed_ns, &block.encoded.summary, &block.encoded.keep])?;
    tx.prepare_cached("INSERT INTO block_data (first_seq, data) VALUES (?1, ?2)")?
        .execute(params![first_seq, &block.encoded.data])?;
    for part in &block.encoded.services {
        tx.prepare_cached("INSERT INTO block_services (service, max_start_ns, first_seq, min_start_ns, summary) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![part.service, part.max_start, first_seq, part.min_start, &part.summary])?;
    }
    let entries: Vec<trace_runs::Entry> = block
        .entries
        .iter()
        .map(|e| trace_runs::Entry {
            first_seq: e.first_seq + first_seq,
            ..*e
        })
        .collect();
    trace_runs::append_run(&tx, &entries, first_seq, last_seq)?;
    for r in &job.resources {
        tx.prepare_cached("INSERT INTO resources (id, service, attributes, last_seen_ns) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET last_seen_ns = MAX(last_seen_ns, excluded.last_seen_ns)")?
            .execute(params![r.id, r.service, r.attributes, job.committed_ns])?;
    }
    for (service, name, kind, seen) in &job.operations {
        tx.prepare_cached("INSERT INTO operations (service, name, kind, last_seen_ns) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (service, name, kind) DO UPDATE SET last_seen_ns = MAX(last_seen_ns, excluded.last_seen_ns)")?
            .execute(params![service, name, kind, seen])?;
    }
    tx.commit()?;
    tracing::trace!(spans = block.spans, bytes = block.encoded.data.len(), total = ?started.elapsed(), "sqlite write");
    Ok(block.spans)
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
