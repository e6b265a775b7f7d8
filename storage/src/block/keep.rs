//! Tiered retention's choice, made when a block is written: which of its traces stay once the
//! block is older than `retention_full`, and why. Every trace with an error; for each operation
//! (service and span name) the block's slowest, and any at or past the block's p99 for it; and a
//! few per operation and minute as samples. The graph has already counted every span, so what goes
//! is only the detail of ordinary traces.

use std::collections::HashMap;
use std::sync::Mutex;

use super::bytes::{In, Out};
use crate::encode::SpanRow;
use crate::StoreError;

/// Why a trace is kept, as bits.
pub const ERROR: u8 = 1;
pub const SLOW: u8 = 2;
pub const SAMPLE: u8 = 4;

/// Each reason's bit and name.
pub const REASONS: [(u8, &str); 3] = [(ERROR, "error"), (SLOW, "slow"), (SAMPLE, "sample")];

/// Operations with at least this many spans in a block keep every trace at or past the block's
/// p99 for them, beside the slowest.
const P99_MIN_SPANS: usize = 100;

/// The rules.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepRules {
    pub errors: bool,
    pub slow: bool,
    /// Traces kept per operation and minute (of span start) as samples.
    pub samples_per_minute: u32,
}

impl Default for KeepRules {
    fn default() -> Self {
        KeepRules {
            errors: true,
            slow: true,
            samples_per_minute: 2,
        }
    }
}

/// The rules and the samples taken in recent minutes, shared by every commit.
#[derive(Debug, Default)]
pub(crate) struct Keeper {
    pub rules: KeepRules,
    /// (operation key, minute) → samples taken.
    samples: Mutex<HashMap<(u64, i64), u32>>,
}

/// Past this many (operation, minute) counts, those of all but the latest minutes are forgotten.
const MAX_SAMPLE_KEYS: usize = 100_000;

impl Keeper {
    pub fn new(rules: KeepRules) -> Self {
        Keeper {
            rules,
            samples: Mutex::default(),
        }
    }

    /// The traces of a block (rows sorted so each trace's are consecutive; `traces` the length
    /// of each run) to keep, with their reasons: (trace index, reasons), in trace order.
    pub fn choose(&self, rows: &[&SpanRow], traces: &[usize]) -> Vec<(u32, u8)> {
        let mut reasons = vec![0u8; traces.len()];
        let mut trace_of = Vec::with_capacity(rows.len());
        for (t, n) in traces.iter().enumerate() {
            trace_of.extend(std::iter::repeat_n(t, *n));
        }
        // Spans by operation: (duration, trace).
        let mut by_op: HashMap<(&str, &str), Vec<(i64, usize)>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            if self.rules.errors && r.is_error {
                reasons[trace_of[i]] |= ERROR;
            }
            by_op
                .entry((&r.service, &r.name))
                .or_default()
                .push((r.duration_ns, trace_of[i]));
        }
        if self.rules.slow {
            for spans in by_op.values_mut() {
                spans.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
                let slowest = if spans.len() >= P99_MIN_SPANS {
                    spans.len().div_ceil(100)
                } else {
                    1
                };
                for (_, t) in &spans[..slowest] {
                    reasons[*t] |= SLOW;
                }
            }
        }
        if self.rules.samples_per_minute > 0 {
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            for (i, r) in rows.iter().enumerate() {
                // Samples are of ordinary traces: one kept for another reason takes none.
                let t = trace_of[i];
                if reasons[t] != 0 {
                    continue;
                }
                let key = (
                    crate::write::operation_key(&r.service, &r.name, r.kind),
                    r.start_ns.div_euclid(60_000_000_000),
                );
                let taken = samples.entry(key).or_insert(0);
                if *taken < self.rules.samples_per_minute {
                    *taken += 1;
                    reasons[t] |= SAMPLE;
                }
            }
            if samples.len() > MAX_SAMPLE_KEYS {
                let latest = samples.keys().map(|k| k.1).max().unwrap_or(0);
                samples.retain(|k, _| k.1 >= latest - 1);
            }
        }
        reasons
            .into_iter()
            .enumerate()
            .filter(|(_, r)| *r != 0)
            .map(|(t, r)| (t as u32, r))
            .collect()
    }
}

/// The kept traces as stored: a count, then each as the difference from the one before and its
/// reasons.
pub(crate) fn encode(kept: &[(u32, u8)]) -> Vec<u8> {
    let mut out = Out::default();
    out.varint(kept.len() as u64);
    let mut previous = 0u32;
    for (t, r) in kept {
        out.varint(u64::from(t - previous));
        out.u8(*r);
        previous = *t;
    }
    out.0
}

pub(crate) fn decode(b: &[u8]) -> Result<Vec<(u32, u8)>, StoreError> {
    let mut r = In::new(b);
    let n = r.count(2)?;
    let mut out = Vec::with_capacity(n);
    let mut at = 0u64;
    for _ in 0..n {
        at = r.add_to(at, u32::MAX as u64, "a kept trace")?;
        let t = at as u32;
        out.push((t, r.u8()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use meshlens_topology::testing::SpanBuilder;

    use super::*;

    /// One-span traces of one operation, durations as given, the first failing.
    fn rows(durations: &[u64], minute: u64) -> Vec<SpanRow> {
        let spans: Vec<_> = durations
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let b = SpanBuilder::new(i as u64 + 1, 1, "shop", "GET", minute * 60_000_000_000)
                    .duration_ns(*d);
                if i == 0 {
                    b.error("x").build()
                } else {
                    b.build()
                }
            })
            .collect();
        crate::encode_batch(&spans).spans.iter().cloned().collect()
    }

    fn choose(k: &Keeper, rows: &[SpanRow]) -> Vec<(u32, u8)> {
        let refs: Vec<&SpanRow> = rows.iter().collect();
        k.choose(&refs, &vec![1; rows.len()])
    }

    #[test]
    fn errors_the_slowest_the_p99_and_samples_per_minute() {
        let k = Keeper::new(KeepRules::default());
        // 200 spans: the block's p99 is its two slowest (indexes 198, 199).
        let durations: Vec<u64> = (0..200).map(|i| 1_000 + i).collect();
        let kept = choose(&k, &rows(&durations, 1));
        let with = |bit: u8| -> Vec<u32> {
            kept.iter()
                .filter(|(_, r)| r & bit != 0)
                .map(|(t, _)| *t)
                .collect()
        };
        assert_eq!(with(ERROR), vec![0]);
        assert_eq!(with(SLOW), vec![198, 199]);
        assert_eq!(with(SAMPLE), vec![1, 2]);
        // The same minute again: its samples are taken; a new minute has its own.
        let again = choose(&k, &rows(&durations, 1));
        assert!(again.iter().all(|(_, r)| r & SAMPLE == 0));
        let next = choose(&k, &rows(&durations, 2));
        assert_eq!(next.iter().filter(|(_, r)| r & SAMPLE != 0).count(), 2);
        // Few spans: only the slowest.
        let few = choose(&k, &rows(&[5, 9, 7], 3));
        assert_eq!(few.iter().filter(|(_, r)| r & SLOW != 0).count(), 1);
        assert_eq!(decode(&encode(&kept)).unwrap(), kept);
    }

    #[test]
    fn rules_switched_off_keep_nothing() {
        let k = Keeper::new(KeepRules {
            errors: false,
            slow: false,
            samples_per_minute: 0,
        });
        assert!(choose(&k, &rows(&[1, 2, 3], 1)).is_empty());
        assert!(decode(&[5, 1]).is_err());
    }
}
