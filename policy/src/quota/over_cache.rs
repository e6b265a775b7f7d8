//! The Redis backend's local record of fixed-window keys already over their limit, as
//! envoyproxy/ratelimit's local cache: until the window ends, every check on such a key is over
//! whatever other replicas do (a window's count only grows), so it is answered here, without a
//! round trip and without adding to Redis' count. An entry holds only for the rate it was learnt
//! under: a reload or a request's own limit that changes the rate asks Redis again. Bounded;
//! expired keys are dropped when a shard is full.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use crate::limit::Rate;

const SHARDS: usize = 16;

/// Key → until when it is over, and the rate it is over.
type Shard = HashMap<String, (Instant, Rate)>;

pub struct OverLimitCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_per_shard: usize,
}

impl OverLimitCache {
    /// `max_keys`: most keys held at once (0: none, the cache is off).
    pub fn new(max_keys: usize) -> OverLimitCache {
        OverLimitCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::default(),
            max_per_shard: max_keys.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long `key` stays over its limit of `rate`, if it is known to be.
    pub fn over_for(&self, key: &str, rate: Rate, now: Instant) -> Option<Duration> {
        if self.max_per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key);
        let (until, learnt) = *shard.get(key)?;
        if until <= now {
            shard.remove(key);
            return None;
        }
        (learnt == rate).then(|| until - now)
    }

    /// Records that `key` is over its limit of `rate` until `until`.
    pub fn insert(&self, key: &str, rate: Rate, until: Instant, now: Instant) {
        if self.max_per_shard == 0 || until <= now {
            return;
        }
        let mut shard = self.shard(key);
        if shard.len() >= self.max_per_shard && !shard.contains_key(key) {
            shard.retain(|_, (u, _)| *u > now);
            if shard.len() >= self.max_per_shard {
                return;
            }
        }
        shard.insert(key.to_string(), (until, rate));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{Algorithm, Unit};

    #[test]
    fn keys_stay_over_until_their_time_for_their_rate_and_the_cache_stays_bounded() {
        let c = OverLimitCache::new(SHARDS); // one key a shard
        let r = Rate {
            requests_per_unit: 2,
            unit: Unit::Minute,
            algorithm: Algorithm::FixedWindow,
        };
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        c.insert("a", r, t0 + 2 * s, t0);
        assert_eq!(c.over_for("a", r, t0 + s), Some(s));
        let raised = Rate {
            requests_per_unit: 3,
            ..r
        };
        assert_eq!(
            c.over_for("a", raised, t0 + s),
            None,
            "another rate asks Redis"
        );
        assert_eq!(
            c.over_for("a", r, t0 + 2 * s),
            None,
            "over at the window's end"
        );
        assert_eq!(c.over_for("a", r, t0), None, "and forgotten");
        // Fill every shard, then more: the extra keys are not held while the rest are current.
        let keys: Vec<String> = (0..SHARDS * 8).map(|i| format!("k{i}")).collect();
        for k in &keys {
            c.insert(k, r, t0 + 10 * s, t0);
        }
        let held = keys
            .iter()
            .filter(|k| c.over_for(k, r, t0).is_some())
            .count();
        assert!(held <= SHARDS, "{held}");
        // Once those have expired, new keys take their place.
        c.insert("late", r, t0 + 20 * s, t0 + 11 * s);
        assert!(c.over_for("late", r, t0 + 11 * s).is_some());
        let off = OverLimitCache::new(0);
        off.insert("a", r, t0 + s, t0);
        assert_eq!(off.over_for("a", r, t0), None, "0 keys: off");
    }
}
