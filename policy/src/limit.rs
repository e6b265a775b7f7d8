//! What a quota is: a number of requests per unit of time, and the algorithm that enforces it.

use std::fmt;

/// The units of envoyproxy/ratelimit's configs and of Envoy's `RateLimitUnit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length in seconds. As envoyproxy/ratelimit: a month is 30 days, a year 365.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Case-insensitive, as envoyproxy/ratelimit reads it.
    pub fn parse(s: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// envoyproxy/ratelimit's: a counter per window aligned to the epoch. Every hit counts, also
    /// those over the limit. A client may get twice the limit across a window boundary.
    #[default]
    FixedWindow,
    /// The generic cell rate algorithm: the limit is spread evenly over the unit, with a burst of
    /// up to the whole limit. No window boundary, so no double burst; refused hits do not count.
    Gcra,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::Gcra => "gcra",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        [Algorithm::FixedWindow, Algorithm::Gcra]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }
}

/// A number of requests per unit, counted by an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub algorithm: Algorithm,
}

/// The outcome of hits against one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The hits were refused (fixed window: they made the count pass the limit).
    pub over_limit: bool,
    /// Requests still admitted now.
    pub remaining: u32,
    /// Fixed window: until the window ends. GCRA: until the quota is whole again, or, when
    /// refused, until the hits would be admitted.
    pub reset_ms: u64,
    /// Requests counted after these hits (fixed window: the window's count, refused hits
    /// included; GCRA: the limit less what is still admitted, and the limit plus the hits when
    /// they were refused).
    pub used: u64,
    /// Answered from the Redis backend's record of keys over their limit, without Redis.
    pub cached: bool,
}

/// Share of a limit from which hits are near it, as envoyproxy/ratelimit's default
/// `NEAR_LIMIT_RATIO`.
pub const NEAR_LIMIT_RATIO_PERCENT: u64 = 80;

/// A check's hits on one limit, split as envoyproxy/ratelimit's per-limit statistics split them:
/// `over` passed the limit, `near` were admitted at or above 80% of it (or, in a check that
/// passed the limit, fell between 80% and the limit), `within` are the rest. The three add up to
/// the hits (envoyproxy/ratelimit's `total_hits`; its `near_limit` is `near`, its `over_limit`
/// is `over`, and its `within_limit` is `within + near` of admitted checks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HitSplit {
    pub within: u64,
    pub near: u64,
    pub over: u64,
}

impl Usage {
    /// How `hits` charged to a limit of `limit` requests split (see [`HitSplit`]).
    pub fn split(&self, hits: u32, limit: u32) -> HitSplit {
        let hits = u64::from(hits);
        let limit = u64::from(limit);
        let near_from = limit * NEAR_LIMIT_RATIO_PERCENT / 100;
        let after = self.used;
        let before = after.saturating_sub(hits);
        let (near, over) = if self.over_limit {
            if before >= limit {
                (0, hits)
            } else {
                (
                    limit - before.max(near_from).min(limit),
                    after.saturating_sub(limit),
                )
            }
        } else if after > near_from {
            (
                if before >= near_from {
                    hits
                } else {
                    after - near_from
                },
                0,
            )
        } else {
            (0, 0)
        };
        let over = over.min(hits);
        let near = near.min(hits - over);
        HitSplit {
            within: hits - near - over,
            near,
            over,
        }
    }
}
