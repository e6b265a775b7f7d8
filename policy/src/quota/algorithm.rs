//! The two counting algorithms as pure state transitions, shared by the memory backend and
//! mirrored by the Redis script (`redis.lua`); tests hold both to the same answers.

use crate::limit::{Rate, Usage};

const US_PER_MS: u64 = 1_000;
const US_PER_S: u64 = 1_000_000;

/// A fixed window's state: which window, and its count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub start_s: u64,
    pub count: u64,
}

/// Adds `hits` to the window that holds `now_us` (aligned to the epoch) and says whether the
/// count passed the limit, as envoyproxy/ratelimit does: every hit counts, refused or not.
pub fn fixed_window(state: &mut Window, rate: Rate, hits: u32, now_us: u64) -> Usage {
    let unit_s = rate.unit.seconds();
    let now_s = now_us / US_PER_S;
    let start = now_s / unit_s * unit_s;
    if state.start_s != start {
        *state = Window {
            start_s: start,
            count: 0,
        };
    }
    state.count = state.count.saturating_add(u64::from(hits));
    fixed_usage(state.count, rate, start, now_us)
}

/// The answer for a window whose count after the hits is `after`.
pub fn fixed_usage(after: u64, rate: Rate, start_s: u64, now_us: u64) -> Usage {
    let limit = u64::from(rate.requests_per_unit);
    let end_us = (start_s + rate.unit.seconds()).saturating_mul(US_PER_S);
    // As envoyproxy/ratelimit: over once the count passes the limit (so a check without hits
    // is refused only when an earlier hit already passed it).
    Usage {
        over_limit: after > limit,
        remaining: limit.saturating_sub(after).min(u64::from(u32::MAX)) as u32,
        reset_ms: end_us.saturating_sub(now_us).div_ceil(US_PER_MS),
        used: after,
        cached: false,
    }
}

/// The GCRA parameters of a rate: the period, and the spacing between admitted requests.
fn gcra_params(rate: Rate) -> (u64, u64) {
    let period = rate.unit.seconds().saturating_mul(US_PER_S);
    let interval = (period / u64::from(rate.requests_per_unit.max(1))).max(1);
    (period, interval)
}

/// GCRA: `tat` is the theoretical arrival time of the next request. Hits are admitted when the
/// new `tat` stays within one period of now; refused hits leave the state as it was. Once `tat`
/// has passed, the state says no more than a fresh key, so it may be forgotten.
pub fn gcra(tat: &mut u64, rate: Rate, hits: u32, now_us: u64) -> Usage {
    let (period, interval) = gcra_params(rate);
    if rate.requests_per_unit == 0 {
        return Usage {
            over_limit: true,
            remaining: 0,
            reset_ms: period.div_ceil(US_PER_MS),
            used: u64::from(hits),
            cached: false,
        };
    }
    let base = (*tat).max(now_us);
    // A check without hits asks whether one more would pass.
    let cost = u64::from(hits.max(1)).saturating_mul(interval);
    let new_tat = base.saturating_add(cost);
    let allowed = new_tat - now_us <= period;
    if allowed && hits > 0 {
        *tat = new_tat;
    }
    let held = if allowed && hits > 0 { new_tat } else { base };
    let remaining = (period.saturating_sub(held - now_us) / interval).min(u64::from(u32::MAX));
    let reset = if allowed {
        held - now_us
    } else {
        new_tat - now_us - period
    };
    let limit = u64::from(rate.requests_per_unit);
    Usage {
        over_limit: !allowed,
        remaining: remaining as u32,
        reset_ms: reset.div_ceil(US_PER_MS),
        used: if allowed {
            limit.saturating_sub(remaining)
        } else {
            limit.saturating_add(u64::from(hits))
        },
        cached: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{Algorithm, Unit};

    const S: u64 = US_PER_S;

    fn rate(n: u32, unit: Unit, algorithm: Algorithm) -> Rate {
        Rate {
            requests_per_unit: n,
            unit,
            algorithm,
        }
    }

    /// (within, near, over) of each check.
    fn splits(
        r: Rate,
        hits: &[u32],
        mut charge: impl FnMut(Rate, u32) -> Usage,
    ) -> Vec<(u64, u64, u64)> {
        hits.iter()
            .map(|&h| {
                let s = charge(r, h).split(h, r.requests_per_unit);
                (s.within, s.near, s.over)
            })
            .collect()
    }

    #[test]
    fn hits_split_within_near_and_over_as_envoyproxy_ratelimit_counts_them() {
        let t0 = 1_000 * 60 * S;
        for algorithm in [Algorithm::FixedWindow, Algorithm::Gcra] {
            let r = rate(10, Unit::Minute, algorithm);
            let (mut w, mut tat) = (Window::default(), 0u64);
            let mut charge = |r: Rate, h: u32| match algorithm {
                Algorithm::FixedWindow => fixed_window(&mut w, r, h, t0),
                Algorithm::Gcra => gcra(&mut tat, r, h, t0),
            };
            // One hit at a time: near from the 9th (past 80% of 10), over from the 11th.
            let got = splits(r, &[1; 12], &mut charge);
            let mut want = vec![(1, 0, 0); 8];
            want.extend([(0, 1, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1)]);
            assert_eq!(got, want, "{algorithm:?}");
        }
        // Several hits in a check (hits_addend) split at the thresholds.
        let r = rate(10, Unit::Minute, Algorithm::FixedWindow);
        let mut w = Window::default();
        let got = splits(r, &[7, 2, 0], |r, h| fixed_window(&mut w, r, h, t0));
        assert_eq!(
            got,
            [(7, 0, 0), (1, 1, 0), (0, 0, 0)],
            "a check without hits counts none"
        );
        let mut w = Window::default();
        let got = splits(r, &[5, 10, 3], |r, h| fixed_window(&mut w, r, h, t0));
        // 5 → 15: envoyproxy/ratelimit counts 5 over and 2 near (8 to 10); the other 3 are within.
        assert_eq!(got, [(5, 0, 0), (3, 2, 5), (0, 0, 3)]);
    }

    #[test]
    fn split_hits_always_add_up_and_are_over_only_when_refused() {
        let t0 = 1_000 * 60 * S;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for algorithm in [Algorithm::FixedWindow, Algorithm::Gcra] {
            for limit in [0, 1, 4, 5, 10, 1000] {
                let r = rate(limit, Unit::Minute, algorithm);
                let (mut w, mut tat) = (Window::default(), 0u64);
                for i in 0..200u64 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let hits = (seed % 7) as u32;
                    let now = t0 + i * S / 4;
                    let u = match algorithm {
                        Algorithm::FixedWindow => fixed_window(&mut w, r, hits, now),
                        Algorithm::Gcra => gcra(&mut tat, r, hits, now),
                    };
                    let s = u.split(hits, limit);
                    assert_eq!(s.within + s.near + s.over, u64::from(hits), "{u:?} {s:?}");
                    assert_eq!(s.over > 0, u.over_limit && hits > 0, "{u:?} {s:?}");
                }
            }
        }
    }

    #[test]
    fn fixed_window_counts_refused_hits_and_resets_at_the_aligned_boundary() {
        let r = rate(3, Unit::Minute, Algorithm::FixedWindow);
        let mut w = Window::default();
        let t0 = 1_000 * 60 * S + 10 * S; // 10 s into a minute
        let got: Vec<_> = (0..5).map(|_| fixed_window(&mut w, r, 1, t0)).collect();
        assert_eq!(
            got.iter().map(|u| u.over_limit).collect::<Vec<_>>(),
            [false, false, false, true, true]
        );
        assert_eq!(
            got.iter().map(|u| u.remaining).collect::<Vec<_>>(),
            [2, 1, 0, 0, 0]
        );
        assert_eq!(got[0].reset_ms, 50_000);
        assert_eq!(w.count, 5, "refused hits count, as in envoyproxy/ratelimit");
        let next = fixed_window(&mut w, r, 1, t0 + 50 * S);
        assert!(!next.over_limit);
        assert_eq!((next.remaining, next.reset_ms), (2, 60_000));
    }

    #[test]
    fn fixed_window_check_only_adds_nothing() {
        let r = rate(1, Unit::Second, Algorithm::FixedWindow);
        let mut w = Window::default();
        assert!(!fixed_window(&mut w, r, 0, 5 * S).over_limit);
        assert!(!fixed_window(&mut w, r, 1, 5 * S).over_limit);
        let check = fixed_window(&mut w, r, 0, 5 * S);
        assert_eq!((check.over_limit, check.remaining), (false, 0));
        assert_eq!(w.count, 1, "a check adds nothing");
        assert!(fixed_window(&mut w, r, 1, 5 * S).over_limit);
        assert!(fixed_window(&mut w, r, 0, 5 * S).over_limit);
    }

    #[test]
    fn gcra_admits_a_burst_of_the_limit_then_one_per_interval() {
        let r = rate(10, Unit::Second, Algorithm::Gcra);
        let mut tat = 0;
        let t0 = 100 * S;
        let admitted = (0..15)
            .filter(|_| !gcra(&mut tat, r, 1, t0).over_limit)
            .count();
        assert_eq!(admitted, 10);
        let refused = gcra(&mut tat, r, 1, t0);
        assert_eq!(
            refused.reset_ms, 100,
            "one interval until the next admission"
        );
        assert!(gcra(&mut tat, r, 1, t0 + S / 20).over_limit);
        assert!(!gcra(&mut tat, r, 1, t0 + S / 10).over_limit);
        let after = gcra(&mut tat, r, 0, t0 + 2 * S);
        assert!(!after.over_limit);
        assert_eq!(after.remaining, 10);
    }

    /// The reason to offer GCRA: a client that sends the whole limit just before a fixed window
    /// ends and again just after gets twice the limit through; GCRA lets through the limit.
    #[test]
    fn a_burst_across_a_window_boundary_gets_twice_the_limit_from_fixed_windows_only() {
        let limit = 100;
        let boundary = 600 * S;
        let burst = |algorithm| {
            let r = rate(limit, Unit::Minute, algorithm);
            let (mut w, mut tat) = (Window::default(), 0);
            let mut admitted = 0;
            for now in [boundary - S / 10, boundary + S / 10] {
                for _ in 0..limit {
                    let u = match algorithm {
                        Algorithm::FixedWindow => fixed_window(&mut w, r, 1, now),
                        Algorithm::Gcra => gcra(&mut tat, r, 1, now),
                    };
                    admitted += !u.over_limit as u32;
                }
            }
            admitted
        };
        assert_eq!(burst(Algorithm::FixedWindow), 2 * limit);
        assert_eq!(burst(Algorithm::Gcra), limit);
    }

    proptest::proptest! {
        /// Whatever the arrival times, GCRA never admits more than the limit plus what the
        /// elapsed time refilled; a fixed window never more than the limit per window.
        #[test]
        fn neither_algorithm_admits_more_than_its_rate(
            limit in 1u32..50,
            gaps in proptest::collection::vec(0u64..200_000, 1..300),
            hits in proptest::collection::vec(0u32..4, 1..300),
        ) {
            let unit = Unit::Second;
            let (mut w, mut tat) = (Window::default(), 0u64);
            let mut now = 77 * S;
            let start = now;
            let mut gcra_admitted = 0u64;
            let mut per_window = std::collections::HashMap::<u64, u64>::new();
            for (gap, h) in gaps.iter().zip(hits.iter().cycle()) {
                now += gap;
                if *h == 0 { continue; }
                let u = gcra(&mut tat, rate(limit, unit, Algorithm::Gcra), *h, now);
                if !u.over_limit { gcra_admitted += u64::from(*h); }
                let f = fixed_window(&mut w, rate(limit, unit, Algorithm::FixedWindow), *h, now);
                if !f.over_limit { *per_window.entry(now / S).or_default() += u64::from(*h); }
            }
            let refill = (now - start) * u64::from(limit) / S;
            proptest::prop_assert!(gcra_admitted <= u64::from(limit) + refill);
            for (_, n) in per_window {
                proptest::prop_assert!(n <= u64::from(limit));
            }
        }
    }
}
