//! Quotas in this process: shards of hash maps, each behind its own mutex, so concurrent checks
//! of different keys rarely meet. Memory is bounded: a shard that fills sweeps out ended windows
//! and spent GCRA states, and if that frees too little, forgets its least recently used keys (an
//! eighth of the shard at a time, so a flood of new keys costs a sweep per eighth, not per key).
//! A key in use is never the one forgotten: a flood of new keys cannot push a busy quota out and
//! so lift its limit, and the store never refuses (a refused key would fail open or closed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    last_used_us: u64,
}

type Shard = HashMap<Box<str>, Entry, RandomState>;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_keys_per_shard: usize,
    /// Keys forgotten while their state still counted (least recently used, store full).
    evicted: AtomicU64,
}

impl MemoryStore {
    /// `max_keys`: most quota keys held at once (split across shards).
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::default(),
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            evicted: AtomicU64::new(0),
        }
    }

    /// Keys forgotten before their window ended, to make room (least recently used first).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Makes room in a full shard: ended keys first, then the least recently used eighth.
    fn make_room(&self, map: &mut Shard, now_us: u64) {
        map.retain(|_, e| e.state.expires_us(e.unit_s) > now_us);
        if map.len() < self.max_keys_per_shard {
            return;
        }
        let mut used: Vec<u64> = map.values().map(|e| e.last_used_us).collect();
        let nth = (used.len() / 8).min(used.len() - 1);
        let (_, cutoff, _) = used.select_nth_unstable(nth);
        let cutoff = *cutoff;
        let before = map.len();
        map.retain(|_, e| e.last_used_us > cutoff);
        self.evicted
            .fetch_add((before - map.len()) as u64, Ordering::Relaxed);
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
                self.make_room(&mut map, now_us);
            }
            let state = match rate.algorithm {
                Algorithm::FixedWindow => State::Fixed(Window::default()),
                Algorithm::Gcra => State::Gcra(0),
            };
            map.insert(
                key.into(),
                Entry {
                    state,
                    unit_s,
                    last_used_us: now_us,
                },
            );
        }
        let entry = map.get_mut(key).expect("inserted above");
        entry.unit_s = unit_s;
        entry.last_used_us = entry.last_used_us.max(now_us);
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
    fn a_full_store_forgets_ended_then_idle_keys_never_a_busy_one() {
        let store = MemoryStore::new(SHARDS * 16);
        let r = rate(5, Algorithm::FixedWindow);
        let t0 = 60 * US_PER_S;
        // A busy key at its limit.
        for _ in 0..5 {
            store.hit("busy", r, 1, t0).unwrap();
        }
        // A flood of 100,000 new keys within the same minute, the busy key checked between them.
        for i in 0..100_000u64 {
            let now = t0 + i;
            store.hit(&format!("flood{i}"), r, 1, now).unwrap();
            if i % 100 == 0 {
                let u = store.hit("busy", r, 1, now).unwrap();
                assert!(u.over_limit, "the flood lifted the busy key's limit at {i}");
            }
        }
        assert!(store.len() <= SHARDS * 16, "bounded: {}", store.len());
        assert!(
            store.evicted() >= 100_000 - (SHARDS as u64 * 16),
            "{}",
            store.evicted()
        );
        // A minute later the ended windows go first, and nothing counted is forgotten for them.
        let evicted = store.evicted();
        let later = t0 + 61 * US_PER_S;
        for i in 0..SHARDS * 4 {
            store.hit(&format!("new{i}"), r, 1, later).unwrap();
        }
        assert_eq!(store.evicted(), evicted, "ended keys made the room");
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
