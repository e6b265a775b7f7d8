//! Whether this meshlens can take data now, for `/readyz`: started (migrations done, listeners
//! up) and its store taking commits. Every commit's outcome and a periodic probe
//! ([`crate::Store::probe`], one row rewritten and committed) set the store's part, so a store
//! that cannot commit (a full disk, a read-only file or database, PostgreSQL gone) is reported
//! with the reason, and its return is seen even when no export arrives (a replica taken out of
//! its Service by the 503 gets none).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Readiness {
    started: AtomicBool,
    store_failure: Mutex<Option<String>>,
}

/// What a commit or probe changed, for a log line at the moment it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Failing,
    Recovered,
}

impl Readiness {
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The store committed: it takes writes.
    pub fn store_ok(&self) -> Change {
        let mut f = self.store_failure.lock().unwrap_or_else(|e| e.into_inner());
        match f.take() {
            Some(_) => Change::Recovered,
            None => Change::Unchanged,
        }
    }

    /// The store could not commit, for a reason that is not the data's.
    pub fn store_failed(&self, why: &str) -> Change {
        let mut f = self.store_failure.lock().unwrap_or_else(|e| e.into_inner());
        let was_failing = f.is_some();
        *f = Some(why.to_string());
        if was_failing {
            Change::Unchanged
        } else {
            Change::Failing
        }
    }

    pub fn store_writable(&self) -> bool {
        self.store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.started.load(Ordering::Acquire) {
            return Err("starting".into());
        }
        match &*self.store_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(format!("the store cannot commit: {why}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_started_and_while_the_store_commits() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err("starting".into()));
        r.set_started();
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.store_failed("disk full"), Change::Failing);
        assert_eq!(r.store_failed("disk still full"), Change::Unchanged);
        assert_eq!(
            r.check(),
            Err("the store cannot commit: disk still full".into())
        );
        assert!(!r.store_writable());
        assert_eq!(r.store_ok(), Change::Recovered);
        assert_eq!(r.store_ok(), Change::Unchanged);
        assert_eq!(r.check(), Ok(()));
    }
}
