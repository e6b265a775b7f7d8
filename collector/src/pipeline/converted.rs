//! What every receiver hands the pipeline: the valid data of a request, converted to the domain,
//! and an account of what was refused inside it (OTLP's partial success, in each protocol's words).

use meshlens_topology::{InvalidSpan, MetricBatch, Span};

/// The valid spans of a request and an account of the invalid ones.
#[derive(Debug, Default)]
pub struct Converted {
    pub spans: Vec<Span>,
    pub rejected: Rejected,
}

/// Spans dropped from an otherwise good request, as OTLP's partial success reports them.
#[derive(Debug, Default, PartialEq)]
pub struct Rejected {
    pub count: u64,
    pub by_reason: Vec<(InvalidSpan, u64)>,
    /// The first problem, with where it was, for the client's `error_message`.
    pub first: Option<String>,
}

impl Rejected {
    pub fn add(&mut self, reason: InvalidSpan, at: impl FnOnce() -> String) {
        self.count += 1;
        match self.by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.by_reason.push((reason, 1)),
        }
        if self.first.is_none() {
            self.first = Some(format!("{}: {reason}", at()));
        }
    }

    /// The partial-success message: how many, and the first reason.
    pub fn message(&self) -> String {
        match &self.first {
            Some(first) if self.count > 1 => {
                format!("{} spans rejected; first: {first}", self.count)
            }
            Some(first) => format!("1 span rejected: {first}"),
            None => String::new(),
        }
    }
}

/// The metric points of a request, and how many were refused with the first reason.
#[derive(Debug, Default)]
pub struct ConvertedMetrics {
    pub batches: Vec<MetricBatch>,
    /// Or, from Prometheus remote write, series by reference into their request's body.
    pub wire: Option<crate::prom::WireBatch>,
    pub points: u64,
    /// Series received, where the protocol sends series (Prometheus remote write), and
    /// staleness markers among the points.
    pub series: u64,
    pub stale: u64,
    pub rejected: u64,
    /// Refused points by reason (a bounded label), adding up to `rejected`.
    pub by_reason: Vec<(&'static str, u64)>,
    pub first_problem: Option<String>,
}

impl ConvertedMetrics {
    /// Counts `n` refused points; the first reason is kept for the client.
    pub fn reject(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.reject_for("invalid", n, why);
    }

    /// Counts `n` refused points under `reason`.
    pub fn reject_for(&mut self, reason: &'static str, n: u64, why: impl FnOnce() -> String) {
        self.rejected += n;
        match self.by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += n,
            None => self.by_reason.push((reason, n)),
        }
        if self.first_problem.is_none() {
            self.first_problem = Some(why());
        }
    }

    /// The partial-success message: how many, and the first reason (empty when none).
    pub fn message(&self) -> String {
        match &self.first_problem {
            Some(first) => format!("{} data points rejected; first: {first}", self.rejected),
            None => String::new(),
        }
    }
}
