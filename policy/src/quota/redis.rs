//! Quotas in Redis, shared by replicas. One check is one `EVALSHA` of `redis.lua`, atomic per
//! check, on Redis' clock. The connection is made lazily and remade after a failure; every call
//! is bounded by `timeout`, so a check never waits longer for a Redis that is down.

use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Script, Value};

use super::algorithm::{fixed_usage, gcra};
use super::over_cache::OverLimitCache;
use super::{QuotaError, QuotaHit};
use crate::limit::{Algorithm, Usage};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key meshlens writes.
    pub key_prefix: String,
    /// Longest wait for Redis in a check (connection included).
    pub timeout: Duration,
    /// Most fixed-window keys remembered as over their limit until their window ends, answered
    /// without Redis (0: every check asks Redis).
    pub local_cache_keys: usize,
    /// TLS (`rediss://` URLs): the CA that signed Redis' certificate (unset: the system's), and a
    /// client certificate and key for Redis' `tls-auth-clients`.
    pub tls: RedisTls,
}

/// PEM files for a `rediss://` connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    pub ca: Option<std::path::PathBuf>,
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// The client for `config`: with TLS files, built with them (read now, so a bad path fails the
/// start); without, from the URL alone (`rediss://` then trusts the system's CAs).
fn client(config: &RedisConfig) -> Result<Client, QuotaError> {
    // redis' rustls connector takes the process' default provider: ring, as every other TLS
    // connection of meshlens.
    let _ = rustls::crypto::CryptoProvider::install_default(
        #[allow(deprecated)]
        rustls::crypto::ring::default_provider(),
    );
    let unavailable = |e: &dyn std::fmt::Display| QuotaError::Unavailable(e.to_string());
    if !config.tls.is_set() {
        return Client::open(config.url.as_str()).map_err(|e| unavailable(&e));
    }
    if !config.url.starts_with("rediss://") {
        return Err(QuotaError::Unavailable(
            "redis TLS files are set but the URL is not rediss://".into(),
        ));
    }
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| QuotaError::Unavailable(format!("{}: {e}", p.display())))
    };
    let client_tls = match (&config.tls.client_cert, &config.tls.client_key) {
        (Some(cert), Some(key)) => Some(::redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(QuotaError::Unavailable(
                "redis TLS: set both the client certificate and its key, or neither".into(),
            ))
        }
    };
    let root_cert = config.tls.ca.as_deref().map(read).transpose()?;
    Client::build_with_tls(
        config.url.as_str(),
        ::redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| unavailable(&e))
}

pub struct RedisStore {
    over: OverLimitCache,
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// Checks the URL; the connection itself is made on first use.
    pub fn new(config: &RedisConfig) -> Result<RedisStore, QuotaError> {
        let client = client(config)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| QuotaError::Unavailable(e.to_string()))?;
        Ok(RedisStore {
            over: OverLimitCache::new(config.local_cache_keys),
            conn,
            script: Script::new(include_str!("redis.lua")),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
        })
    }

    /// The Redis key of a quota key (fixed windows add `_<window start>`).
    pub fn redis_key(&self, hit: &QuotaHit<'_>) -> String {
        match hit.rate.algorithm {
            Algorithm::FixedWindow => format!("{}{}", self.prefix, hit.key),
            Algorithm::Gcra => format!("{}gcra_{}", self.prefix, hit.key),
        }
    }

    /// Charges the hits in one round trip, except on fixed-window keys known to be over their
    /// limit until their window ends: those are answered over here and not sent.
    pub async fn charge(&self, hits: &[QuotaHit<'_>]) -> Result<Vec<Usage>, QuotaError> {
        let now = Instant::now();
        let local: Vec<Option<Usage>> = hits.iter().map(|h| self.known_over(h, now)).collect();
        let ask: Vec<QuotaHit<'_>> = hits
            .iter()
            .zip(&local)
            .filter(|(_, l)| l.is_none())
            .map(|(h, _)| *h)
            .collect();
        let asked = self.ask(&ask).await?;
        for (h, u) in ask.iter().zip(&asked) {
            if h.rate.algorithm == Algorithm::FixedWindow && u.over_limit {
                let until = now + Duration::from_millis(u.reset_ms);
                self.over.insert(h.key, h.rate, until, now);
            }
        }
        let mut asked = asked.into_iter();
        local
            .into_iter()
            .map(|l| l.or_else(|| asked.next()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| QuotaError::Unavailable("fewer answers than hits asked".into()))
    }

    /// The answer for a fixed-window key known to be over its limit: every hit over.
    fn known_over(&self, h: &QuotaHit<'_>, now: Instant) -> Option<Usage> {
        if h.rate.algorithm != Algorithm::FixedWindow {
            return None;
        }
        let left = self.over.over_for(h.key, h.rate, now)?;
        Some(Usage {
            over_limit: true,
            remaining: 0,
            reset_ms: left.as_micros().div_ceil(1000) as u64,
            used: u64::from(h.rate.requests_per_unit).saturating_add(u64::from(h.hits)),
            cached: true,
        })
    }

    async fn ask(&self, hits: &[QuotaHit<'_>]) -> Result<Vec<Usage>, QuotaError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.script.prepare_invoke();
        for h in hits {
            call.key(self.redis_key(h));
        }
        for h in hits {
            let algorithm = match h.rate.algorithm {
                Algorithm::FixedWindow => 0,
                Algorithm::Gcra => 1,
            };
            call.arg(algorithm)
                .arg(h.hits)
                .arg(h.rate.requests_per_unit)
                .arg(h.rate.unit.seconds());
        }
        let mut conn = self.conn.clone();
        let reply: Value = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| QuotaError::Timeout)?
            .map_err(|e| QuotaError::Unavailable(e.to_string()))?;
        decode(reply, hits)
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn decode(reply: Value, hits: &[QuotaHit<'_>]) -> Result<Vec<Usage>, QuotaError> {
    let bad = || QuotaError::Unavailable("unexpected reply from the quota script".into());
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    if items.len() != hits.len() + 1 {
        return Err(bad());
    }
    let now_us = int(&items[hits.len()]).ok_or_else(bad)?;
    hits.iter()
        .zip(&items)
        .map(|(h, item)| {
            let Value::Array(pair) = item else {
                return Err(bad());
            };
            let (a, b) = match pair.as_slice() {
                [a, b] => (int(a).ok_or_else(bad)?, int(b).ok_or_else(bad)?),
                _ => return Err(bad()),
            };
            Ok(match h.rate.algorithm {
                Algorithm::FixedWindow => fixed_usage(a, h.rate, b, now_us),
                // The script stored what `gcra` decides from the same state and time.
                Algorithm::Gcra => {
                    let mut tat = a;
                    gcra(&mut tat, h.rate, h.hits, now_us)
                }
            })
        })
        .collect()
}
