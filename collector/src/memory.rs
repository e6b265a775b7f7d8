//! The memory limiter, as the OpenTelemetry Collector's `memory_limiter` does it: past a soft
//! limit every new export is refused with a retryable error before its body is read; past the
//! hard limit the graph's backlog (spans and metrics already committed or refused, never an
//! unacknowledged span) is shed too.
//!
//! What it measures is the higher of two: the heap in use, counted exactly and at once by the
//! process's allocator ([`Counting`], installed by the binary), and the resident set, read from
//! `/proc/self/status` once a second ([`MemoryLimiter::check`]). The heap answers a sudden growth
//! on the next export; the resident set is what a container's limit kills on, and it also holds
//! what the heap does not count (SQLite's page caches, the allocator's free pages, stacks).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

pub use meshlens_heap::{heap_bytes, Counting};

use crate::error::IngestError;
use crate::metrics::{MemoryLimit, Metrics};

/// The limits, in bytes of heap (`[memory]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Past this, new exports are refused (retryably).
    pub soft_bytes: usize,
    /// Past this, the graph's backlog is shed as well.
    pub hard_bytes: usize,
}

impl MemoryLimits {
    /// No limit.
    pub const NONE: MemoryLimits = MemoryLimits {
        soft_bytes: usize::MAX,
        hard_bytes: usize::MAX,
    };
}

/// How close the heap is to its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    Normal = 0,
    Soft = 1,
    Hard = 2,
}

impl Pressure {
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Soft => "soft",
            Pressure::Hard => "hard",
        }
    }
}

/// The limiter every receiver asks before it reads a body, and the graph thread before each
/// input. Cheap to ask: one atomic load.
#[derive(Clone)]
pub struct MemoryLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    limits: MemoryLimits,
    /// Where the heap in use is read: [`heap_bytes`], or a test's own.
    heap: fn() -> Option<usize>,
    /// Where the resident set is read: [`rss_bytes`], or a test's own.
    rss: fn() -> Option<usize>,
    /// The resident set as last read (by `check`).
    last_rss: AtomicUsize,
    metrics: Metrics,
    /// The pressure last reported, for one log line per change.
    reported: AtomicU8,
}

impl MemoryLimiter {
    pub fn new(limits: MemoryLimits, metrics: Metrics) -> Self {
        Self::with_sources(limits, metrics, heap_bytes, rss_bytes)
    }

    /// A limiter that reads the heap and the resident set from these (for tests).
    #[doc(hidden)]
    pub fn with_sources(
        limits: MemoryLimits,
        metrics: Metrics,
        heap: fn() -> Option<usize>,
        rss: fn() -> Option<usize>,
    ) -> Self {
        metrics
            .memory_limit_bytes
            .at(MemoryLimit::Soft)
            .set(clamp_i64(limits.soft_bytes));
        metrics
            .memory_limit_bytes
            .at(MemoryLimit::Hard)
            .set(clamp_i64(limits.hard_bytes));
        let limiter = MemoryLimiter {
            inner: Arc::new(Inner {
                limits,
                heap,
                rss,
                last_rss: AtomicUsize::new(0),
                metrics,
                reported: AtomicU8::new(Pressure::Normal as u8),
            }),
        };
        limiter.check();
        limiter
    }

    /// A limiter that never limits (for tests and tools).
    pub fn unlimited(metrics: Metrics) -> Self {
        Self::new(MemoryLimits::NONE, metrics)
    }

    pub fn limits(&self) -> MemoryLimits {
        self.inner.limits
    }

    /// The pressure now: the heap now, or the resident set as last read, whichever is higher.
    pub fn pressure(&self) -> Pressure {
        let heap = (self.inner.heap)().unwrap_or(0);
        let used = heap.max(self.inner.last_rss.load(Ordering::Relaxed));
        let l = &self.inner.limits;
        if used >= l.hard_bytes {
            Pressure::Hard
        } else if used >= l.soft_bytes {
            Pressure::Soft
        } else {
            Pressure::Normal
        }
    }

    /// Refuses a new export (retryably) while the heap is past the soft limit.
    pub fn admit(&self) -> Result<(), IngestError> {
        match self.pressure() {
            Pressure::Normal => Ok(()),
            _ => Err(IngestError::MemoryLimited),
        }
    }

    /// Whether the graph's backlog is to be shed; counts what is.
    pub fn shed(&self) -> bool {
        self.pressure() == Pressure::Hard
    }

    /// Reads the resident set, reports the heap and the pressure, and logs a change; call about
    /// once a second.
    pub fn check(&self) -> Pressure {
        let mut rss = (self.inner.rss)().unwrap_or(0);
        let heap_now = (self.inner.heap)();
        // Past the soft limit on a resident set well over the heap in use, what is over it is
        // mostly the allocator's free pages: given back, the pressure may be gone.
        if rss >= self.inner.limits.soft_bytes
            && heap_now.is_some_and(|h| rss > h.saturating_add(h / 4))
        {
            meshlens_heap::release_free_memory();
            rss = (self.inner.rss)().unwrap_or(0);
            self.inner.metrics.memory_releases.inc();
        }
        self.inner.last_rss.store(rss, Ordering::Relaxed);
        let pressure = self.pressure();
        let m = &self.inner.metrics;
        let heap = (self.inner.heap)();
        if let Some(heap) = heap {
            m.memory_heap_bytes.set(clamp_i64(heap));
        }
        m.memory_pressure.set(pressure as i64);
        let before = self.inner.reported.swap(pressure as u8, Ordering::Relaxed);
        if before != pressure as u8 {
            let heap = heap.unwrap_or(0);
            let l = self.inner.limits;
            if pressure == Pressure::Normal {
                tracing::info!(
                    heap,
                    rss,
                    "memory back under the soft limit: exports accepted again"
                );
            } else {
                tracing::warn!(
                    heap,
                    rss,
                    soft = l.soft_bytes,
                    hard = l.hard_bytes,
                    pressure = pressure.as_str(),
                    "memory past a limit: new exports refused (retryable){}",
                    if pressure == Pressure::Hard {
                        ", the graph's backlog shed"
                    } else {
                        ""
                    }
                );
            }
        }
        pressure
    }
}

/// The process's resident set, from `/proc/self/status` (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn clamp_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_HEAP: AtomicUsize = AtomicUsize::new(0);
    static TEST_RSS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn pressure_follows_the_limits() {
        let limits = MemoryLimits {
            soft_bytes: 100,
            hard_bytes: 200,
        };
        // Without the counting allocator nothing is known, so nothing is refused.
        let unknown = MemoryLimiter::with_sources(limits, Metrics::new(), || None, || None);
        assert_eq!(unknown.check(), Pressure::Normal);
        assert!(unknown.admit().is_ok());

        let metrics = Metrics::new();
        let limiter = MemoryLimiter::with_sources(
            limits,
            metrics.clone(),
            || Some(TEST_HEAP.load(Ordering::Relaxed)),
            || Some(TEST_RSS.load(Ordering::Relaxed)),
        );
        for (heap, want) in [
            (50, Pressure::Normal),
            (150, Pressure::Soft),
            (250, Pressure::Hard),
            (99, Pressure::Normal),
        ] {
            TEST_HEAP.store(heap, Ordering::Relaxed);
            assert_eq!(limiter.check(), want, "heap {heap}");
            assert_eq!(limiter.admit().is_ok(), want == Pressure::Normal);
            assert_eq!(limiter.shed(), want == Pressure::Hard);
            assert_eq!(metrics.memory_pressure.get(), want as i64);
            assert_eq!(metrics.memory_heap_bytes.get(), heap as i64);
        }
        TEST_HEAP.store(150, Ordering::Relaxed);
        assert!(matches!(limiter.admit(), Err(IngestError::MemoryLimited)));

        // The resident set counts as well, as of the last check.
        TEST_HEAP.store(10, Ordering::Relaxed);
        TEST_RSS.store(250, Ordering::Relaxed);
        assert_eq!(limiter.pressure(), Pressure::Normal, "not read yet");
        assert_eq!(limiter.check(), Pressure::Hard);
        assert_eq!(
            metrics.memory_releases.get(),
            1,
            "an RSS far over the heap past the soft limit: the allocator asked to give pages back"
        );
        TEST_RSS.store(20, Ordering::Relaxed);
        assert_eq!(limiter.check(), Pressure::Normal);
        assert!(rss_bytes().unwrap() > 0);
    }
}
