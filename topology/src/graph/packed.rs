//! Slots at rest. A time slot's statistics are written while the slot is current and only read
//! after (subtracted from a window total when the slot leaves it, or written to the per-minute
//! history), yet in full form every slot costs about 500 bytes, most of them zero counters: 90
//! slots an edge made a version edge cost 28 KB. A slot is therefore kept packed: which counters
//! are not zero (a bitmap), their values, then each sketch's bins, all as LEB128 varints, bucket
//! keys as differences from the one before. A slot with a call or two packs in about 20 bytes.

use crate::graph::sketch::LatencySketch;
use crate::graph::window::{Counts, PolicyCounts, Stats, COUNTS_LEN};

/// Counters a slot has: span counts, metric counts, then the policy's two.
const COUNTERS: usize = 2 * COUNTS_LEN + 2;
const _: () = assert!(COUNTERS <= 64, "the bitmap is one u64");

/// One slot's statistics, packed; `unpack` gives back exactly what was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed(Box<[u8]>);

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads what `put` wrote. Only this module writes the bytes it reads, so running out early
/// cannot happen; it would read zeros rather than panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn next(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&b, rest)) = self.0.split_first() else {
                return v;
            };
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                break;
            }
        }
        v
    }
}

fn put_sketch(out: &mut Vec<u8>, sketch: &LatencySketch) {
    let bins = sketch.bins_in_use();
    put(out, bins.len() as u64);
    // Keys are sorted: the first is taken from i16::MIN (the zero bucket is 0), the rest as
    // differences from the one before.
    let mut prev = i32::from(i16::MIN);
    for &(key, count) in bins {
        put(out, (i32::from(key) - prev) as u64);
        put(out, u64::from(count));
        prev = i32::from(key);
    }
}

fn take_sketch(r: &mut Reader) -> LatencySketch {
    let n = r.next() as usize;
    let mut bins = Vec::with_capacity(n.min(4096));
    let mut prev = i32::from(i16::MIN);
    for _ in 0..n {
        let key = (prev + r.next() as i32).clamp(i16::MIN.into(), i16::MAX.into());
        let count = r.next().min(u64::from(u32::MAX)) as u32;
        bins.push((key as i16, count));
        prev = key;
    }
    LatencySketch::from_bins(bins).unwrap_or_default()
}

impl Packed {
    pub fn pack(s: &Stats) -> Packed {
        let mut values = [0u64; COUNTERS];
        values[..COUNTS_LEN].copy_from_slice(&s.counts.to_array());
        values[COUNTS_LEN..2 * COUNTS_LEN].copy_from_slice(&s.metric_counts.to_array());
        values[2 * COUNTS_LEN] = s.policy_counts.denied;
        values[2 * COUNTS_LEN + 1] = s.policy_counts.rate_limited;
        let bitmap = values
            .iter()
            .enumerate()
            .fold(0u64, |b, (i, v)| b | (u64::from(*v != 0) << i));
        let mut out = Vec::with_capacity(32);
        put(&mut out, bitmap);
        for v in values.iter().filter(|v| **v != 0) {
            put(&mut out, *v);
        }
        for sketch in [&s.server_latency, &s.client_latency, &s.metric_latency] {
            put_sketch(&mut out, sketch);
        }
        Packed(out.into_boxed_slice())
    }

    pub fn unpack(&self) -> Stats {
        let mut r = Reader(&self.0);
        let bitmap = r.next();
        let mut values = [0u64; COUNTERS];
        for (i, v) in values.iter_mut().enumerate() {
            if bitmap & (1 << i) != 0 {
                *v = r.next();
            }
        }
        let counts = |from: usize| Counts::from_array(std::array::from_fn(|i| values[from + i]));
        Stats {
            counts: counts(0),
            metric_counts: counts(COUNTS_LEN),
            policy_counts: PolicyCounts {
                denied: values[2 * COUNTS_LEN],
                rate_limited: values[2 * COUNTS_LEN + 1],
            },
            server_latency: take_sketch(&mut r),
            client_latency: take_sketch(&mut r),
            metric_latency: take_sketch(&mut r),
        }
    }

    /// Adds `more` to what this slot holds.
    pub fn merge(&mut self, more: &Stats) {
        let mut s = self.unpack();
        s.merge(more);
        *self = Packed::pack(&s);
    }

    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::window::flag_bits;
    use proptest::prelude::*;

    fn sketch(values: &[u64]) -> LatencySketch {
        let mut s = LatencySketch::new();
        values.iter().for_each(|v| s.record_ns(*v));
        s
    }

    #[test]
    fn a_slot_with_a_call_packs_small_and_comes_back_whole() {
        let mut s = Stats::default();
        s.counts.requests = 1;
        s.counts.bytes = 1234;
        s.server_latency = sketch(&[2_000_000]);
        s.client_latency = sketch(&[2_100_000]);
        let p = Packed::pack(&s);
        assert_eq!(p.unpack(), s);
        assert!(p.heap_bytes() <= 16, "{} bytes", p.heap_bytes());
        assert_eq!(Packed::pack(&Stats::default()).heap_bytes(), 4);
    }

    #[test]
    fn extremes_come_back_whole() {
        let mut s = Stats::default();
        s.counts.requests = u64::MAX;
        s.metric_counts.tcp_closed = u64::MAX - 1;
        s.metric_counts
            .flags
            .add_bits(flag_bits("UF,NR,XYZ"), u64::from(u32::MAX));
        s.policy_counts.rate_limited = 7;
        s.server_latency = sketch(&[0, 1, u64::MAX]);
        s.metric_latency = sketch(&[0]);
        assert_eq!(Packed::pack(&s).unpack(), s);
    }

    proptest! {
        /// Whatever a slot holds comes back as it was, and merging into a packed slot is merging
        /// into the statistics.
        #[test]
        fn pack_unpack_and_merge_are_exact(
            counts in prop::collection::vec(any::<u64>(), COUNTS_LEN),
            sparse in prop::collection::vec((0usize..COUNTS_LEN, 0u64..1_000_000), 0..8),
            server in prop::collection::vec(0u64..u64::MAX, 0..50),
            metric in prop::collection::vec(0u64..10_000_000_000, 0..20),
            policy in (0u64..100, any::<u64>()),
        ) {
            let mut a = Stats {
                counts: Counts::from_array(std::array::from_fn(|i| counts[i])),
                server_latency: sketch(&server),
                metric_latency: sketch(&metric),
                policy_counts: PolicyCounts { denied: policy.0, rate_limited: policy.1 },
                ..Stats::default()
            };
            let mut m = [0u64; COUNTS_LEN];
            for (i, v) in &sparse {
                m[*i] = *v;
            }
            a.metric_counts = Counts::from_array(m);
            let p = Packed::pack(&a);
            prop_assert_eq!(p.unpack(), a.clone());
            let mut b = Stats::default();
            b.counts.requests = 3;
            b.client_latency = sketch(&server);
            let mut merged = p.clone();
            merged.merge(&b);
            a.merge(&b);
            prop_assert_eq!(merged.unpack(), a);
        }
    }
}
