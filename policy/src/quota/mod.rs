//! Quota backends: where counts live. In memory for one replica; in Redis for replicas that
//! share quotas. Both run the same algorithms (`algorithm`), so they decide alike.

pub mod algorithm;
pub mod memory;
pub mod over_cache;
pub mod redis;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::limit::{Rate, Usage};

pub use memory::MemoryStore;
pub use redis::{RedisConfig, RedisStore, RedisTls};

/// One quota to charge: its key (domain and descriptor, or a quota rule's key), its rate, and
/// the hits to add (0: only look).
#[derive(Debug, Clone, Copy)]
pub struct QuotaHit<'a> {
    pub key: &'a str,
    pub rate: Rate,
    pub hits: u32,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QuotaError {
    #[error("quota store unavailable: {0}")]
    Unavailable(String),
    #[error("quota store did not answer in time")]
    Timeout,
}

impl QuotaError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QuotaError::Unavailable(_) => "unavailable",
            QuotaError::Timeout => "timeout",
        }
    }
}

pub enum QuotaBackend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl QuotaBackend {
    pub fn name(&self) -> &'static str {
        match self {
            QuotaBackend::Memory(_) => "memory",
            QuotaBackend::Redis(_) => "redis",
        }
    }

    /// The errors this backend can have (`QuotaError::kind`).
    pub fn error_kinds(&self) -> &'static [&'static str] {
        match self {
            // Never fails: when full, it forgets its least recently used keys.
            QuotaBackend::Memory(_) => &[],
            QuotaBackend::Redis(_) => &["unavailable", "timeout"],
        }
    }

    /// Keys held, and keys forgotten to make room (the memory store's; Redis expires its own).
    pub fn memory_stats(&self) -> Option<(usize, u64)> {
        match self {
            QuotaBackend::Memory(m) => Some((m.len(), m.evicted())),
            QuotaBackend::Redis(_) => None,
        }
    }

    /// Charges every hit and answers each, in order. With Redis, all of them in one round trip.
    pub async fn charge(&self, hits: &[QuotaHit<'_>]) -> Result<Vec<Usage>, QuotaError> {
        match self {
            QuotaBackend::Memory(m) => {
                let now = now_us();
                hits.iter()
                    .map(|h| m.hit(h.key, h.rate, h.hits, now))
                    .collect()
            }
            QuotaBackend::Redis(r) => r.charge(hits).await,
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
