//! Background tasks, supervised: each runs its work every period until shutdown, and a round that
//! panics (a bug) is logged and counted (`meshlens_panics_total{thread}`) while the task goes on
//! with its next round, its state kept. A panicking round never takes meshlens down, nor leaves
//! a task silently stopped (retention, the store probe and the graph's clock would otherwise stop
//! while `/readyz` said ready).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use meshlens_collector::metrics::Thread;
use meshlens_collector::Metrics;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) type Set = JoinSet<anyhow::Result<()>>;

/// A task's name (its `thread` label) and where its panics are counted.
#[derive(Clone)]
pub(crate) struct Task {
    pub name: Thread,
    pub metrics: Metrics,
}

impl Task {
    pub fn new(name: Thread, metrics: &Metrics) -> Task {
        Task {
            name,
            metrics: metrics.clone(),
        }
    }

    fn survived(&self, panic: &(dyn std::any::Any + Send)) {
        self.metrics.panics.at(self.name).inc();
        tracing::error!(
            task = self.name.as_str(),
            panic = meshlens_collector::panic_message(panic),
            "a background task panicked; it goes on with its next round"
        );
    }
}

/// Runs `work` every `period` (a late tick waits, never bunches) until `cancel`. An error ends
/// the task (and so meshlens, as a listener's would); a panic is survived.
pub(crate) fn spawn_ticks<Fut>(
    set: &mut Set,
    task: Task,
    period: Duration,
    cancel: CancellationToken,
    mut work: impl FnMut() -> Fut + Send + 'static,
) where
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    set.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            match AssertUnwindSafe(work()).catch_unwind().await {
                Ok(done) => done?,
                Err(panic) => task.survived(&*panic),
            }
        }
    });
}

/// Runs `work` on a blocking thread every `period` until cancelled: CPU work, such as settling
/// expired spans or rebuilding graph snapshots, stays off the async workers.
pub(crate) fn spawn_every(
    set: &mut Set,
    task: Task,
    period: Duration,
    cancel: CancellationToken,
    work: impl Fn() + Send + Sync + 'static,
) {
    let work = Arc::new(work);
    spawn_ticks(set, task, period, cancel, move || {
        let w = work.clone();
        blocking(move || w())
    });
}

/// Runs `work` on a blocking thread; a panic there is raised again here, so that a round's
/// supervisor survives (and counts) it as any panic of the round.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Ok(done),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(e.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A task whose rounds panic goes on with its next ones, and each panic is counted under its
    /// name; blocking work and async work alike.
    #[tokio::test]
    async fn a_panicking_round_is_counted_and_the_task_goes_on() {
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let mut set = Set::new();
        let rounds = Arc::new(AtomicUsize::new(0));
        let r = rounds.clone();
        spawn_every(
            &mut set,
            Task::new(Thread::GraphTick, &metrics),
            Duration::from_millis(5),
            cancel.clone(),
            move || {
                if r.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    panic!("a panic injected into a blocking round");
                }
            },
        );
        let async_rounds = Arc::new(AtomicUsize::new(0));
        let a = async_rounds.clone();
        spawn_ticks(
            &mut set,
            Task::new(Thread::StoreProbe, &metrics),
            Duration::from_millis(5),
            cancel.clone(),
            move || {
                let n = a.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert!(n != 0, "a panic injected into an async round");
                    Ok(())
                }
            },
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rounds.load(Ordering::SeqCst) < 6 || async_rounds.load(Ordering::SeqCst) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the tasks went on");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cancel.cancel();
        while let Some(done) = set.join_next().await {
            done.unwrap().unwrap();
        }
        let panics = |t: Thread| metrics.panics.at(t).get();
        assert!(
            panics(Thread::GraphTick) >= 3,
            "{}",
            panics(Thread::GraphTick)
        );
        assert_eq!(panics(Thread::StoreProbe), 1);
        assert_eq!(panics(Thread::Retention), 0);
    }
}
