//! Log lines that a flood of events would repeat (a failing quota backend, refused exports
//! under overload): one line per interval, saying how many were left out since the last one.
//! The events themselves are counted in metrics; the log only says that they happen.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often a throttled line may repeat.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct LogEvery {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    pub const fn new(interval: Duration) -> Self {
        LogEvery {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to log this event now; if so, with how many were left out before it.
    pub fn due(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, skipped) = &mut *state;
        if last.is_some_and(|t| now.duration_since(t) < self.interval) {
            *skipped += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_with_the_count_left_out() {
        let log = LogEvery::new(Duration::from_secs(10));
        assert_eq!(log.due(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.due(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(log.due(), Some(1000));
        assert_eq!(log.due(), None);
    }
}
