//! The pure domain of meshlens: spans, resources, service identity, and the service graph built
//! from them. No I/O lives here.
#![forbid(unsafe_code)]

mod attr;
pub mod graph;
mod ids;
mod limits;
mod metric;
pub mod prom;
pub mod redact;
mod resource;
mod span;
pub mod testing;

pub use attr::{AttrValue, Attributes};
pub use ids::{InvalidSpan, SpanId, TraceId};
pub use limits::{attributes_bytes, span_bytes, Cut, SpanLimits};
pub use metric::{MetricBatch, MetricPoint, PointValue};
pub use resource::{Resource, Scope, ServiceIdentity};
pub use span::{Event, Link, Span, SpanKind, Status, StatusCode};
