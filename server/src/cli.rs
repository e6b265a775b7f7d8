//! The command line: subcommands, and flags (or `MESHLENS_*` variables) that override the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};

/// meshlens: service-mesh observability and policy in one binary.
///
/// Settings come from defaults, then `--config FILE` (TOML), then `MESHLENS_*` environment
/// variables, then flags; each overrides the one before.
#[derive(Debug, Parser)]
#[command(name = "meshlens", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Command {
    /// Migrate the database and serve every listener (the default).
    Serve,
    /// Serve, and feed this meshlens a small synthetic mesh over OTLP (ingress → work v1 and a
    /// canary v2 at 80/20, Chrome users always on v2, v2 failing 1 call in 5 → meet → a
    /// database), so there is a live graph and traces to look at.
    Demo {
        /// User requests a second through the demo mesh.
        #[arg(long, default_value_t = 10)]
        rate: u32,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration as TOML and exit.
    Config,
    /// Policy configs.
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
}

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum PolicyCommand {
    /// Check policy files and envoyproxy/ratelimit configs (files or directories) offline;
    /// exits 1 at the first one refused, with its file, line and reason.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Args, Default)]
pub struct Overrides {
    /// TOML configuration file; unknown keys are errors.
    #[arg(long, short = 'c', env = "MESHLENS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317]
    #[arg(long, env = "MESHLENS_OTLP_GRPC_ADDR", global = true)]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318]
    #[arg(long, env = "MESHLENS_OTLP_HTTP_ADDR", global = true)]
    pub otlp_http_addr: Option<SocketAddr>,
    /// Zipkin v2 listen address [default: 127.0.0.1:9411]
    #[arg(long, env = "MESHLENS_ZIPKIN_ADDR", global = true)]
    pub zipkin_addr: Option<SocketAddr>,
    /// Policy gRPC listen address [default: 127.0.0.1:9091]
    #[arg(long, env = "MESHLENS_POLICY_ADDR", global = true)]
    pub policy_addr: Option<SocketAddr>,
    /// Web UI, API and /metrics listen address [default: 127.0.0.1:20001]
    #[arg(long, env = "MESHLENS_WEB_ADDR", global = true)]
    pub web_addr: Option<SocketAddr>,
    /// Database: sqlite://FILE or postgres://USER@HOST/DB [default: sqlite://data/meshlens.db]
    #[arg(long, env = "MESHLENS_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// How long spans are kept, such as 72h or 7d [default: 72h]
    #[arg(long, env = "MESHLENS_RETENTION", global = true, value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// SQLite durability: normal (survives a crash) or full (also a power cut) [default: normal]
    #[arg(long, env = "MESHLENS_SQLITE_SYNCHRONOUS", global = true)]
    pub sqlite_synchronous: Option<String>,
    /// Largest export accepted, in bytes after decompression [default: 4194304]
    #[arg(long, env = "MESHLENS_MAX_MESSAGE_BYTES", global = true)]
    pub max_message_bytes: Option<usize>,
    /// Spans that may wait for the store before exports are refused as overloaded [default: 65536]
    #[arg(long, env = "MESHLENS_QUEUE_SPANS", global = true)]
    pub queue_spans: Option<usize>,
    /// Store writer tasks; 0 picks 1 for SQLite, 4 for PostgreSQL [default: 0]
    #[arg(long, env = "MESHLENS_WRITERS", global = true)]
    pub writers: Option<usize>,
    /// How long a span waits for its other side before the graph settles it alone [default: 10s]
    #[arg(long, env = "MESHLENS_PAIRING_TTL", global = true, value_parser = humantime::parse_duration)]
    pub pairing_ttl: Option<Duration>,
    /// Most spans waiting to be paired; when full the oldest is settled first [default: 100000]
    #[arg(long, env = "MESHLENS_MAX_PENDING", global = true)]
    pub max_pending: Option<usize>,
    /// envoyproxy/ratelimit config directory for the rate limit service
    #[arg(long, env = "MESHLENS_RATELIMIT_DIR", global = true)]
    pub ratelimit_dir: Option<PathBuf>,
    /// meshlens policy file (ext_authz rules and quotas); repeat for several
    #[arg(
        long = "policy-file",
        env = "MESHLENS_POLICY_FILES",
        value_delimiter = ',',
        global = true
    )]
    pub policy_files: Vec<PathBuf>,
    /// Where quotas are counted [default: memory]
    #[arg(long, env = "MESHLENS_QUOTA_BACKEND", global = true)]
    pub quota_backend: Option<crate::config::QuotaBackendKind>,
    /// Redis for the redis quota backend [default: redis://127.0.0.1:6379]
    #[arg(long, env = "MESHLENS_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// When the quota backend cannot answer: open (allow) or closed (refuse) [default: open]
    #[arg(long, env = "MESHLENS_POLICY_FAILURE_MODE", global = true)]
    pub policy_failure_mode: Option<crate::config::FailureModeSetting>,
    /// Threads answering policy checks, apart from ingest and the web; 0: one per core [default: 0]
    #[arg(long, env = "MESHLENS_POLICY_THREADS", global = true)]
    pub policy_threads: Option<usize>,
    /// Server certificate chain (PEM) for every listener; with --tls-key, they all speak TLS
    #[arg(long, env = "MESHLENS_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM: PKCS#8, RSA or EC)
    #[arg(long, env = "MESHLENS_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates every listener requires (mTLS)
    #[arg(long, env = "MESHLENS_TLS_CLIENT_CA", global = true)]
    pub tls_client_ca: Option<PathBuf>,
    /// Lowest TLS version offered: 1.2 or 1.3 [default: 1.2]
    #[arg(long, env = "MESHLENS_TLS_MIN_VERSION", global = true)]
    pub tls_min_version: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "MESHLENS_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Log filter, such as info or meshlens=debug [default: info]
    #[arg(long, env = "MESHLENS_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
}

impl Cli {
    pub fn command(&self) -> Command {
        self.command.clone().unwrap_or(Command::Serve)
    }

    /// The effective configuration: file (or defaults), then environment and flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.overrides.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.overrides.apply(&mut c);
        Ok(c)
    }
}

impl Overrides {
    pub fn apply(&self, c: &mut Config) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        set(&mut c.listen.otlp_grpc, &self.otlp_grpc_addr);
        set(&mut c.listen.otlp_http, &self.otlp_http_addr);
        set(&mut c.listen.zipkin, &self.zipkin_addr);
        set(&mut c.listen.policy, &self.policy_addr);
        set(&mut c.listen.web, &self.web_addr);
        set(&mut c.storage.database_url, &self.database_url);
        set(&mut c.storage.retention, &self.retention);
        set(&mut c.storage.sqlite_synchronous, &self.sqlite_synchronous);
        set(&mut c.ingest.max_message_bytes, &self.max_message_bytes);
        set(&mut c.ingest.queue_spans, &self.queue_spans);
        set(&mut c.ingest.writers, &self.writers);
        set(&mut c.graph.pairing_ttl, &self.pairing_ttl);
        set(&mut c.graph.max_pending, &self.max_pending);
        if self.ratelimit_dir.is_some() {
            c.policy.ratelimit_dir = self.ratelimit_dir.clone();
        }
        if !self.policy_files.is_empty() {
            c.policy.policy_files = self.policy_files.clone();
        }
        set(&mut c.policy.backend, &self.quota_backend);
        set(&mut c.policy.redis_url, &self.redis_url);
        set(&mut c.policy.failure_mode, &self.policy_failure_mode);
        set(&mut c.policy.threads, &self.policy_threads);
        set(&mut c.tls.cert, &self.tls_cert);
        set(&mut c.tls.key, &self.tls_key);
        set(&mut c.tls.client_ca, &self.tls_client_ca);
        set(&mut c.tls.min_version, &self.tls_min_version);
        set(&mut c.log.format, &self.log_format);
        set(&mut c.log.level, &self.log_level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[storage]\nretention = \"1h\"\ndatabase_url = \"sqlite://x.db\"\n[policy]\nthreads = 2\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "meshlens",
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--retention",
            "2h",
            "--policy-threads",
            "3",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(c.storage.retention, Duration::from_secs(7200));
        assert_eq!(c.storage.database_url, "sqlite://x.db");
        assert_eq!(c.policy.threads, 3);
        assert_eq!(cli.command(), Command::Serve);
    }

    #[test]
    fn unknown_key_in_file_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[ingest]\nqueue_span = 5\n").unwrap();
        let cli = Cli::try_parse_from(["meshlens", "--config", path.to_str().unwrap()]).unwrap();
        let err = cli.config().unwrap_err().to_string();
        assert!(err.contains("queue_span"), "{err}");
    }
}
