//! The span store of meshlens: sqlx on SQLite (the default, one file, WAL) or PostgreSQL.
//!
//! Spans come in as [`EncodedBatch`]es (encoded off the writer's task) and go out as domain
//! [`meshlens_topology::Span`]s: SQL rows never leave this crate.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use block::keep::{KeepRules, REASONS as KEEP_REASONS};
pub use encode::{encode_batch, EncodedBatch};

mod block;
mod decode;
mod encode;
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod query;
mod read;
pub mod ready;
mod rollup;
mod search;
mod sqlite_writer;
mod trace_runs;
mod write;
pub use query::{Operation, TraceQuery};
pub use ready::Readiness;
pub use rollup::EdgeMinute;
pub use write::Thinned;

/// A store failure. The message is for logs; clients get a generic retryable error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("too many searches at once; retry")]
    Busy,
    #[error("the search ran longer than {0:?}; narrow it (a service, a shorter time range)")]
    SearchTimeout(Duration),
    #[error("the time range ({}) is longer than the longest a read may cover ({}, [storage] max_search_range); narrow it", humantime::format_duration(*.range), humantime::format_duration(*.max))]
    RangeTooWide { range: Duration, max: Duration },
}

impl StoreError {
    /// Whether the data itself was refused (too long, out of range, a constraint): sending the
    /// same export again cannot succeed, unlike a lost connection or a busy database.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                let code = e.code().unwrap_or_default();
                // PostgreSQL SQLSTATE classes 22 (data exception), 23 (integrity), 54 (limits);
                // SQLite: SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19) and their extended codes.
                code.starts_with("22")
                    || code.starts_with("23")
                    || code.starts_with("54")
                    || matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(18 | 19))
            }
            StoreError::Database(sqlx::Error::Encode(_)) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::TooBig | rusqlite::ErrorCode::ConstraintViolation
            ),
            StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(_)) => true,
            _ => false,
        }
    }
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` or `postgres://…`.
    pub url: String,
    /// SQLite only: `full` syncs every commit to disk, `normal` survives a process crash but not a power cut.
    pub sqlite_synchronous: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Trace searches at once; more are refused at once ([`StoreError::Busy`], retryable).
    pub max_concurrent_searches: usize,
    /// Longest a search's query may run ([`StoreError::SearchTimeout`]): PostgreSQL's
    /// `statement_timeout`, SQLite's progress handler.
    pub search_timeout: Duration,
    /// Longest time range a trace search or a read of the graph's history may cover
    /// ([`StoreError::RangeTooWide`]): Tempo's `max_duration` for searches, 168h.
    pub max_search_range: Duration,
    /// Which traces tiered retention keeps past `retention_full`, chosen as each block is written.
    pub keep: KeepRules,
}

/// The default `max_search_range`: a week, as Tempo's search.
pub const DEFAULT_MAX_SEARCH_RANGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: DEFAULT_DATABASE_URL.to_string(),
            sqlite_synchronous: "normal".to_string(),
            max_connections: 8,
            max_concurrent_searches: 8,
            search_timeout: Duration::from_secs(10),
            max_search_range: DEFAULT_MAX_SEARCH_RANGE,
            keep: KeepRules::default(),
        }
    }
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/meshlens.db";

/// Runs one sqlx expression on whichever pool the store has. The SQL is written once, with `$n`
/// placeholders: PostgreSQL's own, and SQLite numbers `$1`, `$2`… in order of first use, which is
/// the bind order as long as each first appears in order.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::Pool::Sqlite($p) => $body,
            $crate::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use on_pool;

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle to the store; cheap to share behind an `Arc`.
pub struct Store {
    pool: Pool,
    /// Resource ids and operations known to be in the database, so each is written once.
    known: Mutex<Known>,
    /// SQLite: set by `checkpoint` when the write-ahead log should be started over.
    wal_restart: AtomicBool,
    /// SQLite: the thread that writes spans.
    sqlite_writer: Option<Mutex<sqlite_writer::SqliteWriter>>,
    /// Searches at once, and how long each may run.
    searches: tokio::sync::Semaphore,
    search_timeout: Duration,
    max_search_range: Duration,
    /// Whether spans stored as rows (before blocks) may be left: cleared once none is.
    rows_left: AtomicBool,
    /// Tiered retention's rules and recent samples.
    keeper: std::sync::Arc<block::keep::Keeper>,
}

#[derive(Default)]
struct Known {
    resources: HashSet<i64>,
    operations: HashSet<u64>,
}

/// Past this many remembered keys the memory is cleared; the cost is a few redundant upserts.
const KNOWN_LIMIT: usize = 100_000;

impl Store {
    pub async fn connect(config: &StoreConfig) -> Result<Store, StoreError> {
        let url = config.url.as_str();
        let mut sqlite_writer = None;
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|e| bad_url(url, e))?;
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let (pool, settings) = connect_sqlite(config).await?;
            sqlite_writer = Some(Mutex::new(sqlite_writer::SqliteWriter::start(settings)?));
            Pool::Sqlite(pool)
        } else {
            return Err(StoreError::Url {
                url: meshlens_topology::redact::url_password(url),
                reason: "expected sqlite://… or postgres://…".into(),
            });
        };
        Ok(Store {
            pool,
            known: Mutex::new(Known::default()),
            wal_restart: AtomicBool::new(false),
            sqlite_writer,
            searches: tokio::sync::Semaphore::new(config.max_concurrent_searches.max(1)),
            search_timeout: config.search_timeout,
            max_search_range: config.max_search_range,
            rows_left: AtomicBool::new(true),
            keeper: std::sync::Arc::new(block::keep::Keeper::new(config.keep.clone())),
        })
    }

    /// Refuses a read over more than `max_search_range` (times in ns).
    fn check_range(&self, from_ns: i128, to_ns: i128) -> Result<(), StoreError> {
        let range = Duration::from_nanos((to_ns - from_ns).clamp(0, u64::MAX as i128) as u64);
        if range > self.max_search_range {
            return Err(StoreError::RangeTooWide {
                range,
                max: self.max_search_range,
            });
        }
        Ok(())
    }

    /// Applies the migrations of this store's dialect; applied migrations are never edited.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::migrate!("../migrations/sqlite").run(p).await?,
            Pool::Postgres(p) => sqlx::migrate!("../migrations/postgres").run(p).await?,
        }
        Ok(())
    }

    pub fn dialect(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        let writer = self
            .sqlite_writer
            .as_ref()
            .and_then(|w| w.lock().unwrap_or_else(|e| e.into_inner()).close());
        if let Some(thread) = writer {
            // It finishes the jobs already queued, then closes its connection.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

async fn connect_sqlite(
    config: &StoreConfig,
) -> Result<(SqlitePool, sqlite_writer::WriterSettings), StoreError> {
    let url = config.url.as_str();
    let opts = SqliteConnectOptions::from_str(url).map_err(|e| bad_url(url, e))?;
    if let Some(dir) = opts.get_filename().parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| bad_url(url, e))?;
        }
    }
    // The pool's level, and the same by name for the writer's own connection.
    let (synchronous, synchronous_name) = match config.sqlite_synchronous.as_str() {
        "full" => (SqliteSynchronous::Full, "FULL"),
        "normal" => (SqliteSynchronous::Normal, "NORMAL"),
        other => {
            return Err(StoreError::Url {
                url: url.into(),
                reason: format!("sqlite_synchronous must be full or normal, not {other:?}"),
            })
        }
    };
    let settings = sqlite_writer::WriterSettings {
        path: opts.get_filename().to_path_buf(),
        synchronous: synchronous_name,
        busy_timeout: SQLITE_BUSY_TIMEOUT,
    };
    let opts = opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .pragma("cache_size", "-32768")
        .pragma("temp_store", "memory")
        .pragma("mmap_size", "268435456")
        // Checkpoints run in the background (`Store::checkpoint`); this is only a safety net.
        .pragma("wal_autocheckpoint", "65536");
    let pool = SqlitePoolOptions::new()
        .max_connections(config.max_connections.max(2))
        .test_before_acquire(false)
        .connect_with(opts)
        .await?;
    Ok((pool, settings))
}

/// How long a connection waits for another's write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn bad_url(url: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Url {
        url: meshlens_topology::redact::url_password(url),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod legacy_tests;
#[cfg(test)]
mod tests;
