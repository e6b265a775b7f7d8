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
}

/// The points one resource (one proxy) reported in one export.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricBatch {
    pub resource: Arc<Resource>,
    pub points: Vec<MetricPoint>,
}
