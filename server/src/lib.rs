//! The meshlens application: wires the store, the pipeline and every listener, and shuts them
//! down in order. `main.rs` only parses the command line and calls into here.
#![forbid(unsafe_code)]

mod auth;
pub mod cli;
pub mod config;
pub mod demo;
mod retention;
mod servers;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use meshlens_collector::metrics::{StoreOperation, Thread};
use meshlens_collector::{GraphFeed, Metrics, Pipeline, PipelineConfig};
use meshlens_storage::{Store, StoreConfig};
use tasks::{spawn_every, spawn_ticks, Task};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The addresses the listeners actually bound (port 0 in the config becomes a real port).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub zipkin: SocketAddr,
    pub policy: SocketAddr,
    pub web: SocketAddr,
}

/// A running meshlens. `shutdown` stops accepting, drains the queue, commits and closes.
pub struct Running {
    pub addrs: Addrs,
    pub metrics: Metrics,
    pub store: Arc<Store>,
    /// The live graph's feed (tests inject a fault into its thread through it).
    pub graph: GraphFeed,
    cancel: CancellationToken,
    servers: JoinSet<anyhow::Result<()>>,
    /// Kept for the demo's in-process feed; let go before the writers are joined.
    pipeline: Option<Pipeline>,
    writers: meshlens_collector::pipeline::Writers,
}

pub fn store_config(config: &Config) -> StoreConfig {
    StoreConfig {
        url: config.storage.database_url.clone(),
        sqlite_synchronous: config.storage.sqlite_synchronous.clone(),
        max_connections: config.storage.max_connections,
        max_concurrent_searches: config.storage.max_concurrent_searches,
        search_timeout: config.storage.search_timeout,
        max_search_range: config.storage.max_search_range,
        keep: meshlens_storage::KeepRules {
            errors: config.storage.keep_errors,
            slow: config.storage.keep_slow,
            samples_per_minute: config.storage.keep_samples_per_minute,
        },
    }
}

/// Connects, migrates and starts every listener.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let store = Arc::new(Store::connect(&store_config(config)).await?);
    let ready = Arc::new(meshlens_storage::Readiness::default());
    store.migrate().await?;
    tracing::info!(dialect = store.dialect(), "store migrated");

    let metrics = Metrics::new();
    let rows = store.row_spans().await?;
    metrics.store_row_spans.set(rows);
    metrics.store_bytes.set(store.size_bytes().await?);
    if rows > 0 {
        tracing::info!(
            spans = rows,
            "spans stored as rows (before blocks) are read in place until retention removes them"
        );
    }
    let engine = meshlens_policy::PolicyEngine::new(config.policy.to_settings())
        .map_err(|e| anyhow::anyhow!("policy config: {e}"))?;
    let policy = meshlens_collector::policy::PolicyServer::new(
        Arc::new(engine),
        metrics.clone(),
        config.policy.max_series,
    );
    let graph_config = config
        .graph
        .to_graph_config()
        .map_err(|e| anyhow::anyhow!(e))?;
    let memory = meshlens_collector::memory::MemoryLimiter::new(
        config.memory.limits(config::cgroup_memory_limit()),
        metrics.clone(),
    );
    let graph = GraphFeed::new(&graph_config, &metrics, &memory);
    let graph_feed = graph.clone();
    let (pipeline, writers) = Pipeline::start(
        store.clone(),
        &PipelineConfig {
            queue_spans: config.ingest.queue_spans,
            queue_bytes: config.ingest.queue_bytes,
            max_batch_spans: config.ingest.max_batch_spans,
            writers: config.writers(),
            limits: config.ingest.limits(),
        },
        metrics.clone(),
        graph.clone(),
        ready.clone(),
    );
    let cancel = CancellationToken::new();
    let mut servers = JoinSet::new();
    let addrs = servers::spawn_all(
        config,
        &mut servers,
        servers::Parts {
            pipeline: pipeline.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            policy: policy.clone(),
            ready: ready.clone(),
            memory: memory.clone(),
        },
        cancel.clone(),
    )
    .await?;
    // The policy server's refusals between services go to their edges on the graph.
    let (refusals, feed) = (policy.clone(), graph.clone());
    spawn_every(
        &mut servers,
        Task::new(Thread::PolicyRefusals, &metrics),
        std::time::Duration::from_secs(1),
        cancel.clone(),
        move || feed.observe_policy(&refusals.take_refusals()),
    );
    // Config files are watched by polling their sizes and times: it also sees the symlink swaps
    // of a Kubernetes ConfigMap mount.
    spawn_every(
        &mut servers,
        Task::new(Thread::PolicyReload, &metrics),
        config
            .policy
            .reload_interval
            .max(std::time::Duration::from_millis(100)),
        cancel.clone(),
        move || {
            policy.reload();
        },
    );
    retention::spawn(
        &mut servers,
        store.clone(),
        config.storage.retention,
        config.storage.retention_full,
        config.storage.retention_interval,
        metrics.clone(),
        cancel.clone(),
    );
    retention::spawn_checkpointer(&mut servers, store.clone(), &metrics, cancel.clone());
    spawn_history(
        &mut servers,
        graph.clone(),
        store.clone(),
        metrics.clone(),
        cancel.clone(),
    );
    // Settles spans whose pairing time ran out and forgets long-idle edges, so the graph moves
    // on even when no spans arrive.
    spawn_every(
        &mut servers,
        Task::new(Thread::GraphTick, &metrics),
        std::time::Duration::from_secs(1),
        cancel.clone(),
        move || graph.tick(),
    );
    // The limiter reads the heap on every export; this reports it and logs each change.
    spawn_every(
        &mut servers,
        Task::new(Thread::MemoryCheck, &metrics),
        std::time::Duration::from_secs(1),
        cancel.clone(),
        move || {
            memory.check();
        },
    );
    spawn_store_probe(
        &mut servers,
        store.clone(),
        ready.clone(),
        metrics.clone(),
        config.storage.probe_interval,
        cancel.clone(),
    );
    ready.set_started();
    tracing::info!(
        otlp_grpc = %addrs.otlp_grpc,
        otlp_http = %addrs.otlp_http,
        zipkin = %addrs.zipkin,
        policy = %addrs.policy,
        web = %addrs.web,
        "meshlens is listening"
    );
    Ok(Running {
        addrs,
        metrics,
        store,
        graph: graph_feed,
        cancel,
        servers,
        pipeline: Some(pipeline),
        writers,
    })
}

/// `meshlens policy validate`: checks policy files, envoyproxy/ratelimit config files and
/// directories of them, each alone and then all together as one meshlens would load them (a
/// domain in two places, or a rule name in two policy files, is an error), and says what each
/// holds.
pub fn validate_policies(
    paths: &[std::path::PathBuf],
) -> Result<Vec<String>, meshlens_policy::ConfigError> {
    use meshlens_policy::{authz::AuthzPolicy, ratelimit, ratelimit::RateLimits, ConfigError};
    let (mut rate_limit_files, mut policy_files) = (Vec::new(), Vec::new());
    // A file named twice (or inside a directory also named) is loaded once together.
    let add = |files: &mut Vec<std::path::PathBuf>, path: &std::path::Path| {
        let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if !files.contains(&real) {
            files.push(real);
        }
    };
    let mut said = Vec::with_capacity(paths.len());
    for path in paths {
        if path.is_dir() {
            let files = ratelimit::config_files(path)?;
            let rl = RateLimits::load_files(&files)?;
            said.push(format!(
                "ok {}: {} rate limit domain(s) in {} file(s)",
                path.display(),
                rl.domains().count(),
                rl.files.len()
            ));
            for f in &files {
                add(&mut rate_limit_files, f);
            }
            continue;
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, e.to_string()))?;
        // envoyproxy/ratelimit files have a `domain`; meshlens policy files never do.
        if text.lines().any(|l| l.starts_with("domain:")) {
            let rl = RateLimits::load_files(std::slice::from_ref(path))?;
            said.push(format!(
                "ok {}: rate limit domain {}",
                path.display(),
                rl.domains().next().unwrap_or("")
            ));
            add(&mut rate_limit_files, path);
        } else {
            let p = AuthzPolicy::load_files(std::slice::from_ref(path))?;
            said.push(format!(
                "ok {}: {} rule(s), {} quota(s)",
                path.display(),
                p.rule_count(),
                p.quota_rules().len()
            ));
            add(&mut policy_files, path);
        }
    }
    RateLimits::load_files(&rate_limit_files)?;
    AuthzPolicy::load_files(&policy_files)?;
    Ok(said)
}

/// Every 10 s, writes the graph's minutes that have ended since the last write to the store, so
/// the graph of a past window can be rebuilt after a restart. A failed write is tried again with
/// the next tick (the graph keeps the last hour of minutes).
fn spawn_history(
    set: &mut tasks::Set,
    graph: GraphFeed,
    store: Arc<Store>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    // The last minute written, kept across rounds (a round that panics leaves it as it was).
    let flushed = Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
    let task = Task::new(Thread::History, &metrics);
    spawn_ticks(
        set,
        task,
        std::time::Duration::from_secs(10),
        cancel,
        move || {
            let (graph, store, metrics) = (graph.clone(), store.clone(), metrics.clone());
            let flushed = flushed.clone();
            async move {
                use std::sync::atomic::Ordering;
                let after = flushed.load(Ordering::Relaxed);
                let (rows, last_closed) =
                    tasks::blocking(move || graph.closed_minutes(after)).await?;
                match store.write_edge_minutes(&rows).await {
                    Ok(()) => flushed.store(last_closed, Ordering::Relaxed),
                    Err(e) => {
                        metrics.store_errors.at(StoreOperation::History).inc();
                        tracing::warn!(error = %e, "writing the graph's history failed; will retry");
                    }
                }
                Ok(())
            }
        },
    );
}

/// Probes the store every `period` (one row rewritten and committed), so `/readyz` sees a store
/// that cannot commit, and its return, even when no export arrives. A probe that takes longer
/// than `PROBE_TIMEOUT` (a hung disk, a PostgreSQL that does not answer) counts as failed.
fn spawn_store_probe(
    set: &mut tasks::Set,
    store: Arc<Store>,
    ready: Arc<meshlens_storage::Readiness>,
    metrics: Metrics,
    period: std::time::Duration,
    cancel: CancellationToken,
) {
    const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    if period.is_zero() {
        return;
    }
    let task = Task::new(Thread::StoreProbe, &metrics);
    spawn_ticks(set, task, period, cancel, move || {
        let (store, ready, metrics) = (store.clone(), ready.clone(), metrics.clone());
        async move {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, store.probe()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) if e.is_data_error() => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("the store did not answer within {PROBE_TIMEOUT:?}")),
            };
            let outcome = match &outcome {
                Ok(()) => Ok(()),
                Err(why) => Err(why.as_str()),
            };
            meshlens_collector::pipeline::record_store(&ready, &metrics, outcome);
            let counted = metrics.panics.at(Thread::SqliteWriter);
            counted.inc_by(store.writer_panics().saturating_sub(counted.get()));
            Ok(())
        }
    });
}

impl Running {
    /// Starts `meshlens demo`'s synthetic mesh, `rate` requests a second into the ingest pipeline,
    /// until shutdown.
    pub fn spawn_demo(&mut self, rate: f64) {
        let Some(pipeline) = self.pipeline.clone() else {
            return;
        };
        let cancel = self.cancel.clone();
        self.servers.spawn(async move {
            demo::run(pipeline, rate, cancel).await;
            Ok(())
        });
    }

    /// Stops accepting, lets in-flight exports finish, commits what is queued, closes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.pipeline = None;
        let mut result = Ok(());
        while let Some(joined) = self.servers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(e.into()),
            }
        }
        // Every receiver (and so every pipeline sender) is gone now: the writers drain and stop.
        self.writers.join().await;
        self.store.close().await;
        tracing::info!("meshlens stopped");
        result
    }

    /// Resolves when any listener stops on its own (an error), or never.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.servers.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Err(e)) => e.into(),
            Some(Ok(Ok(()))) => anyhow::anyhow!("a listener stopped unexpectedly"),
            None => std::future::pending().await,
        }
    }
}
