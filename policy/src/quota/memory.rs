//! Quotas in this process: shards of hash maps, each behind its own mutex, so concurrent checks
//! of different keys rarely meet. Memory is bounded: a shard sweeps out ended windows and
//! spent GCRA states when it fills, and refuses new keys if that frees nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use foldhash::fast::RandomState;

use super::algorithm::{fixed_window, gcra, Window};
use super::QuotaError;
use crate::limit::{Algorithm, Rate, Usage};

const SHARDS: usize = 64;
const US_PER_S: u64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
enum State {
    Fixed(Window),
    Gcra(u64),
}

impl State {
    /// After this time the state is no different from a fresh key.
    fn expires_us(&self, rate_unit_s: u64) -> u64 {
        match self {
            State::Fixed(w) => (w.start_s + rate_unit_s).saturating_mul(US_PER_S),
            State::Gcra(tat) => *tat,
        }
    }
}

struct Entry {
    state: State,
    unit_s: u64,
}

type Shard = HashMap<Box<str>, Entry, RandomState>;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_keys_per_shard: usize,
}

impl MemoryStore {
    /// `max_keys`: most quota keys held at once (split across shards).
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::default(),
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    pub fn hit(&self, key: &str, rate: Rate, hits: u32, now_us: u64) -> Result<Usage, QuotaError> {
        use std::hash::BuildHasher;
        let shard = (self.hasher.hash_one(key) as usize) % self.shards.len();
        let mut map = self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let unit_s = rate.unit.seconds();
        if !map.contains_key(key) {
            if map.len() >= self.max_keys_per_shard {
                map.retain(|_, e| e.state.expires_us(e.unit_s) > now_us);
                if map.len() >= self.max_keys_per_shard {
                    return Err(QuotaError::Full);
                }
            }
            let state = match rate.algorithm {
                Algorithm::FixedWindow => State::Fixed(Window::default()),
                Algorithm::Gcra => State::Gcra(0),
            };
            map.insert(key.into(), Entry { state, unit_s });
        }
        let entry = map.get_mut(key).expect("inserted above");
        entry.unit_s = unit_s;
        // A limit whose algorithm changed (a reload) starts afresh.
        Ok(match (&mut entry.state, rate.algorithm) {
            (State::Fixed(w), Algorithm::FixedWindow) => fixed_window(w, rate, hits, now_us),
            (State::Gcra(tat), Algorithm::Gcra) => gcra(tat, rate, hits, now_us),
            (state, Algorithm::FixedWindow) => {
                let mut w = Window::default();
                let u = fixed_window(&mut w, rate, hits, now_us);
                *state = State::Fixed(w);
                u
            }
            (state, Algorithm::Gcra) => {
                let mut tat = 0;
                let u = gcra(&mut tat, rate, hits, now_us);
                *state = State::Gcra(tat);
                u
            }
        })
    }

    /// Keys held now (ended ones included until a sweep).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Unit;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn rate(n: u32, algorithm: Algorithm) -> Rate {
        Rate {
            requests_per_unit: n,
            unit: Unit::Minute,
            algorithm,
        }
    }

    #[test]
    fn a_full_store_sweeps_ended_keys_then_refuses_new_ones() {
        let store = MemoryStore::new(SHARDS); // one key per shard
        let r = rate(5, Algorithm::FixedWindow);
        let t0 = 60 * US_PER_S;
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let refused = keys
            .iter()
            .filter(|k| store.hit(k, r, 1, t0).is_err())
            .count();
        assert!(refused > 0 && store.len() <= SHARDS);
        // A minute later every window has ended: the same keys fit again.
        let later = t0 + 61 * US_PER_S;
        let held_before = store.len();
        let accepted = keys
            .iter()
            .filter(|k| store.hit(k, r, 1, later).is_ok())
            .count();
        assert!(accepted >= held_before, "{accepted} < {held_before}");
    }

    /// Concurrent callers never get more than the limit admitted within one window.
    #[test]
    fn concurrent_hits_on_one_fixed_window_admit_exactly_the_limit() {
        let store = Arc::new(MemoryStore::new(1000));
        let admitted = Arc::new(AtomicU64::new(0));
        let r = rate(1000, Algorithm::FixedWindow);
        let now = 120 * US_PER_S;
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (store, admitted) = (store.clone(), admitted.clone());
                s.spawn(move || {
                    for _ in 0..500 {
                        if !store.hit("shared", r, 1, now).unwrap().over_limit {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// However many threads hit one window at once, it admits exactly the limit (or every
        /// hit, if there are fewer), for either algorithm.
        #[test]
        fn concurrent_callers_never_get_more_than_the_limit(
            limit in 1u32..400,
            threads in 2usize..8,
            per_thread in 1usize..150,
            gcra in proptest::bool::ANY,
        ) {
            let algorithm = if gcra { Algorithm::Gcra } else { Algorithm::FixedWindow };
            let store = MemoryStore::new(16);
            let admitted = AtomicU64::new(0);
            let now = 3_600 * US_PER_S;
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            if !store.hit("k", rate(limit, algorithm), 1, now).unwrap().over_limit {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            let total = (threads * per_thread) as u64;
            proptest::prop_assert_eq!(admitted.load(Ordering::Relaxed), total.min(u64::from(limit)));
        }
    }

    #[test]
    fn a_changed_algorithm_starts_the_key_afresh() {
        let store = MemoryStore::new(100);
        let now = 60 * US_PER_S;
        for _ in 0..3 {
            store
                .hit("k", rate(3, Algorithm::FixedWindow), 1, now)
                .unwrap();
        }
        assert!(
            store
                .hit("k", rate(3, Algorithm::FixedWindow), 1, now)
                .unwrap()
                .over_limit
        );
        assert!(
            !store
                .hit("k", rate(3, Algorithm::Gcra), 1, now)
                .unwrap()
                .over_limit
        );
    }
}
