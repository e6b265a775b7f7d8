//! What the read side can be asked.

use meshlens_topology::SpanKind;

/// A trace search. Every condition applies to one span; a trace matches when any of its spans does.
#[derive(Debug, Clone)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub operation: Option<String>,
    pub span_kind: Option<SpanKind>,
    /// `key=value` pairs matched against span attributes and resource attributes, as text.
    /// The key `error` matches the span's error flag instead.
    pub tags: Vec<(String, String)>,
    pub start_min_ns: i64,
    pub start_max_ns: i64,
    pub duration_min_ns: Option<i64>,
    pub duration_max_ns: Option<i64>,
    pub errors_only: bool,
    /// Most traces to return, newest first.
    pub limit: usize,
}

impl Default for TraceQuery {
    fn default() -> Self {
        TraceQuery {
            service: None,
            operation: None,
            span_kind: None,
            tags: Vec::new(),
            start_min_ns: 0,
            start_max_ns: i64::MAX,
            duration_min_ns: None,
            duration_max_ns: None,
            errors_only: false,
            limit: 20,
        }
    }
}

/// Searches return at most this many traces, whatever the request asks.
pub const MAX_SEARCH_LIMIT: usize = 1_500;

/// An operation (span name) of a service, with the kind it was seen as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub name: String,
    pub kind: SpanKind,
}
