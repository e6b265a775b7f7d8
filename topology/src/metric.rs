//! The metric point model every metrics receiver normalises to (OTLP `MetricsService`): what
//! proxies report about their traffic, before the graph turns it into calls.

use std::sync::Arc;

use crate::attr::Attributes;
use crate::resource::Resource;

/// One data point of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub name: String,
    pub attributes: Attributes,
    pub value: PointValue,
    /// When the value was taken (unix nanoseconds; 0 when the sender did not say). A cumulative
    /// series' samples at or before its last one are retries or out of order and add nothing.
    pub time_ns: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    /// A sum: `delta` for per-interval increments, else cumulative since some start.
    Sum {
        value: f64,
        monotonic: bool,
        delta: bool,
    },
    Gauge(f64),
    /// Explicit-bucket histogram: `counts` has one more entry than `bounds`.
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        counts: Vec<u64>,
        delta: bool,
    },
    /// One bucket of a Prometheus classic histogram, which remote write sends as a series of
    /// its own (`<name>_bucket{le="…"}`): the cumulative count of values at most `le`. The
    /// point's name is the histogram's (without `_bucket`), its attributes without `le`.
    Bucket {
        le: f64,
        value: f64,
    },
}

/// The points one resource (one proxy) reported in one export.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricBatch {
    pub resource: Arc<Resource>,
    pub points: Vec<MetricPoint>,
}
