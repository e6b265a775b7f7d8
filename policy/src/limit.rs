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
}
