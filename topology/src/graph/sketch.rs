//! A mergeable latency distribution with a relative-error guarantee (the DDSketch idea: buckets
//! whose bounds grow by a constant factor). Any quantile it answers is within 1% of a value that
//! was recorded at that rank, from nanoseconds to hours, so sub-millisecond mesh hops resolve as
//! well as slow ones.
//!
//! Why not the `sketches-ddsketch` crate: its dense store starts at 128 bins of 8 bytes for every
//! sketch, and the graph keeps one sketch per edge, side and time slot, most of them holding a
//! handful of values. This store is sparse (a sorted list of the buckets in use) and, because it
//! keeps exact counts per bucket, can also *subtract* a slot that leaves a sliding window.

/// Relative accuracy: every answered quantile is within this fraction of a recorded value.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// γ = (1 + α) / (1 − α): bucket `i` holds values in (γ^(i−1), γ^i].
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Zero-length durations get a bucket of their own below every other.
const ZERO_KEY: i16 = i16::MIN;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySketch {
    /// (bucket key, count), sorted by key, no zero counts.
    bins: Vec<(i16, u32)>,
    count: u64,
}

/// The bucket a duration falls in. Computing it once and adding it to several sketches (slots and
/// window totals) saves a logarithm per sketch.
pub fn key_of(ns: u64) -> i16 {
    if ns == 0 {
        return ZERO_KEY;
    }
    let k = ((ns as f64).ln() / GAMMA.ln()).ceil();
    // 1 ns → 0; u64::MAX ns → about 2,200: always in range.
    k.clamp(0.0, i16::MAX as f64) as i16
}

/// Keys above this cannot come from a u64 of nanoseconds (ln(2^64) / ln γ ≈ 2,193).
const LARGEST_KEY: usize = 2_200;

/// The value a bucket stands for: the point whose relative distance to both bounds is α.
/// From a table, since snapshots read percentiles of tens of thousands of sketches.
fn value_of(key: i16) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let compute = |k: i32| 2.0 * GAMMA.powi(k) / (GAMMA + 1.0);
    if key == ZERO_KEY {
        return 0.0;
    }
    let table = TABLE.get_or_init(|| (0..=LARGEST_KEY as i32).map(compute).collect());
    table
        .get(key.max(0) as usize)
        .copied()
        .unwrap_or_else(|| compute(key as i32))
}

impl LatencySketch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.add_key(key_of(ns), 1);
    }

    /// Adds `n` values of the bucket `key` (from `key_of`).
    pub fn add_key(&mut self, key: i16, n: u32) {
        match self.bins.binary_search_by_key(&key, |b| b.0) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(n),
            Err(i) => self.bins.insert(i, (key, n)),
        }
        self.count += n as u64;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The (bucket key, count) pairs in use, sorted by key (for storage).
    pub fn bins_in_use(&self) -> &[(i16, u32)] {
        &self.bins
    }

    /// A sketch from stored bins; `None` unless sorted by key without repeats or zero counts.
    pub fn from_bins(bins: Vec<(i16, u32)>) -> Option<LatencySketch> {
        let ordered = bins.windows(2).all(|w| w[0].0 < w[1].0);
        if !ordered || bins.iter().any(|b| b.1 == 0) {
            return None;
        }
        let count = bins.iter().map(|b| b.1 as u64).sum();
        Some(LatencySketch { bins, count })
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Buckets in use (for memory accounting).
    pub fn bins(&self) -> usize {
        self.bins.len()
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatencySketch) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.clone_from(other);
            return;
        }
        // Merged in place from the back, after making room for the keys `self` lacks: no
        // allocation when `other`'s keys are already here (the usual case for a window total).
        let b = &other.bins;
        let new_keys = {
            let (mut i, mut n) = (0, 0);
            for &(key, _) in b {
                while i < self.bins.len() && self.bins[i].0 < key {
                    i += 1;
                }
                n += (i == self.bins.len() || self.bins[i].0 != key) as usize;
            }
            n
        };
        let old_len = self.bins.len();
        self.bins.resize(old_len + new_keys, (0, 0));
        let a = &mut self.bins;
        let (mut i, mut j, mut k) = (old_len, b.len(), old_len + new_keys);
        while j > 0 {
            k -= 1;
            if i > 0 && a[i - 1].0 > b[j - 1].0 {
                a[k] = a[i - 1];
                i -= 1;
            } else if i > 0 && a[i - 1].0 == b[j - 1].0 {
                a[k] = (b[j - 1].0, a[i - 1].1.saturating_add(b[j - 1].1));
                i -= 1;
                j -= 1;
            } else {
                a[k] = b[j - 1];
                j -= 1;
            }
        }
        self.count += other.count;
    }

    /// Removes values `other` holds, which must have been merged in before (a time slot leaving a
    /// window). Counts never go below zero, so a mistaken call cannot wrap.
    pub fn subtract(&mut self, other: &LatencySketch) {
        for &(key, n) in &other.bins {
            if let Ok(i) = self.bins.binary_search_by_key(&key, |b| b.0) {
                let have = self.bins[i].1;
                let take = have.min(n);
                self.count -= take as u64;
                if have == take {
                    self.bins.remove(i);
                } else {
                    self.bins[i].1 = have - take;
                }
            }
        }
    }

    /// The value at quantile `q` (0.0–1.0) in nanoseconds, or `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        // The rank of the value, 0-based, as DDSketch and most percentile definitions take it.
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for &(key, n) in &self.bins {
            seen += n as u64;
            if seen > rank {
                return Some(value_of(key));
            }
        }
        self.bins.last().map(|b| value_of(b.0))
    }

    /// Bytes this sketch holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<(i16, u32)>()
    }
}

/// The three percentiles the graph shows, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    pub p50_ns: f64,
    pub p95_ns: f64,
    pub p99_ns: f64,
}

impl LatencySketch {
    pub fn quantiles(&self) -> Option<Quantiles> {
        quantiles_of(self.count, self.bins.iter().copied())
    }
}

/// p50, p95 and p99 in one walk over sorted (key, count) bins holding `count` values.
fn quantiles_of(count: u64, bins: impl Iterator<Item = (i16, u32)>) -> Option<Quantiles> {
    if count == 0 {
        return None;
    }
    let rank = |q: f64| (q * (count - 1) as f64).floor() as u64;
    let ranks = [rank(0.5), rank(0.95), rank(0.99)];
    let mut out = [0.0; 3];
    let (mut seen, mut next) = (0u64, 0);
    for (key, n) in bins {
        seen += n as u64;
        while next < 3 && seen > ranks[next] {
            out[next] = value_of(key);
            next += 1;
        }
        if next == 3 {
            break;
        }
    }
    Some(Quantiles {
        p50_ns: out[0],
        p95_ns: out[1],
        p99_ns: out[2],
    })
}

/// Sums many sketches only to read their percentiles, without allocating per sketch: counts go
/// into one dense table of every possible bucket, reused from one sum to the next.
pub struct SketchSum {
    counts: Vec<u32>,
    touched: Vec<usize>,
    total: u64,
}

/// Dense slots: index 0 is the zero bucket, then keys 0..=MAX_KEY.
const MAX_KEY: usize = i16::MAX as usize;

fn slot(key: i16) -> usize {
    if key == ZERO_KEY {
        0
    } else {
        key.max(0) as usize + 1
    }
}

fn key_at(slot: usize) -> i16 {
    if slot == 0 {
        ZERO_KEY
    } else {
        (slot - 1) as i16
    }
}

impl Default for SketchSum {
    fn default() -> Self {
        SketchSum {
            counts: vec![0; MAX_KEY + 2],
            touched: Vec::new(),
            total: 0,
        }
    }
}

impl SketchSum {
    pub fn add(&mut self, s: &LatencySketch) {
        for &(key, n) in &s.bins {
            let i = slot(key);
            if self.counts[i] == 0 {
                self.touched.push(i);
            }
            self.counts[i] = self.counts[i].saturating_add(n);
        }
        self.total += s.count;
    }

    /// How many values were added since the last `take_quantiles`.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The percentiles of everything added since the last call, and starts afresh.
    pub fn take_quantiles(&mut self) -> Option<Quantiles> {
        self.touched.sort_unstable();
        let counts = &self.counts;
        let q = quantiles_of(
            self.total,
            self.touched.iter().map(|&i| (key_at(i), counts[i])),
        );
        for &i in &self.touched {
            self.counts[i] = 0;
        }
        self.touched.clear();
        self.total = 0;
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact_quantile(values: &mut [u64], q: f64) -> u64 {
        values.sort_unstable();
        values[(q * (values.len() - 1) as f64).floor() as usize]
    }

    fn sketch(values: &[u64]) -> LatencySketch {
        let mut s = LatencySketch::new();
        values.iter().for_each(|&v| s.record_ns(v));
        s
    }

    #[test]
    fn sub_millisecond_values_resolve() {
        // 80 µs and 120 µs must not share a bucket, as they would with 100 ms-first buckets.
        let s = sketch(
            &[80_000; 50]
                .iter()
                .chain(&[120_000; 50])
                .copied()
                .collect::<Vec<_>>(),
        );
        let p25 = s.quantile_ns(0.25).unwrap();
        let p99 = s.quantile_ns(0.99).unwrap();
        assert!(
            (p25 - 80_000.0).abs() / 80_000.0 <= RELATIVE_ACCURACY,
            "{p25}"
        );
        assert!(
            (p99 - 120_000.0).abs() / 120_000.0 <= RELATIVE_ACCURACY,
            "{p99}"
        );
    }

    #[test]
    fn zero_and_huge_values_are_kept() {
        let s = sketch(&[0, 0, u64::MAX]);
        assert_eq!(s.quantile_ns(0.0), Some(0.0));
        assert!(s.quantile_ns(1.0).unwrap() > 1e18);
        assert_eq!(LatencySketch::new().quantile_ns(0.5), None);
    }

    proptest! {
        #[test]
        fn every_quantile_is_within_one_percent(
            mut values in prop::collection::vec(1u64..10_000_000_000_000, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let s = sketch(&values);
            let got = s.quantile_ns(q).unwrap();
            let want = exact_quantile(&mut values, q) as f64;
            prop_assert!((got - want).abs() <= want * RELATIVE_ACCURACY + 1e-9,
                "q={q} got={got} want={want}");
        }

        #[test]
        fn merge_is_associative_and_subtract_undoes_it(
            a in prop::collection::vec(0u64..1_000_000_000, 0..100),
            b in prop::collection::vec(0u64..1_000_000_000, 0..100),
            c in prop::collection::vec(0u64..1_000_000_000, 0..100),
        ) {
            let (sa, sb, sc) = (sketch(&a), sketch(&b), sketch(&c));
            let mut left = sa.clone();
            left.merge(&sb);
            left.merge(&sc);
            let mut bc = sb.clone();
            bc.merge(&sc);
            let mut right = sa.clone();
            right.merge(&bc);
            prop_assert_eq!(&left, &right);
            let all: Vec<u64> = a.iter().chain(&b).chain(&c).copied().collect();
            prop_assert_eq!(&left, &sketch(&all));
            let mut sum = SketchSum::default();
            sum.add(&sa);
            sum.add(&bc);
            prop_assert_eq!(sum.take_quantiles(), left.quantiles());
            prop_assert_eq!(sum.take_quantiles(), None, "a sum starts afresh");
            left.subtract(&bc);
            prop_assert_eq!(left, sa);
        }

        #[test]
        fn one_walk_gives_the_same_percentiles(values in prop::collection::vec(0u64..1_000_000_000, 1..200)) {
            let s = sketch(&values);
            let q = s.quantiles().unwrap();
            prop_assert_eq!(Some(q.p50_ns), s.quantile_ns(0.5));
            prop_assert_eq!(Some(q.p95_ns), s.quantile_ns(0.95));
            prop_assert_eq!(Some(q.p99_ns), s.quantile_ns(0.99));
        }
    }
}
