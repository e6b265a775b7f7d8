//! The one span model every receiver normalises to.

use std::sync::Arc;

use crate::attr::{AttrValue, Attributes};
use crate::ids::{InvalidSpan, SpanId, TraceId};
use crate::resource::{Resource, Scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// From OTLP's enum number; unknown numbers are unspecified.
    pub fn from_otlp(n: i32) -> Self {
        match n {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    pub fn to_otlp(self) -> i32 {
        match self {
            SpanKind::Unspecified => 0,
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        }
    }

    /// The lowercase name Jaeger and OpenTracing use for `span.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            SpanKind::Unspecified,
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    pub fn from_otlp(n: i32) -> Self {
        match n {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    pub fn to_otlp(self) -> i32 {
        match self {
            StatusCode::Unset => 0,
            StatusCode::Ok => 1,
            StatusCode::Error => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "STATUS_CODE_UNSET",
            StatusCode::Ok => "STATUS_CODE_OK",
            StatusCode::Error => "STATUS_CODE_ERROR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time_ns: u64,
    pub name: String,
    pub attributes: Attributes,
    /// Attributes left out, by the sender or by meshlens' [`crate::SpanLimits`].
    pub dropped_attributes_count: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: String,
    pub attributes: Attributes,
    pub dropped_attributes_count: u32,
}

/// A validated span: ids are well formed and it does not end before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub flags: u32,
    pub resource: Arc<Resource>,
    pub scope: Arc<Scope>,
    pub name: String,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: Status,
    pub attributes: Attributes,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    /// What was left out, by the sender (OTLP's `dropped_*_count`) or by meshlens'
    /// [`crate::SpanLimits`]: the two add up.
    pub dropped_attributes_count: u32,
    pub dropped_events_count: u32,
    pub dropped_links_count: u32,
}

/// HTTP status attribute names, current first, then the older ones (Envoy and many SDKs still send these).
pub const HTTP_STATUS_KEYS: &[&str] = &["http.response.status_code", "http.status_code"];

impl Span {
    /// Checks the time range; ids are checked when they are parsed.
    pub fn check_times(start_ns: u64, end_ns: u64) -> Result<(), InvalidSpan> {
        if start_ns == 0 {
            return Err(InvalidSpan::MissingStart);
        }
        if end_ns < start_ns {
            return Err(InvalidSpan::EndBeforeStart);
        }
        Ok(())
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }

    pub fn service(&self) -> &str {
        &self.resource.service.name
    }

    /// The HTTP response status, from current or older attribute names, numbers or strings.
    pub fn http_status(&self) -> Option<u16> {
        self.attributes
            .get_any(HTTP_STATUS_KEYS)
            .and_then(AttrValue::as_i64)
            .and_then(|n| u16::try_from(n).ok())
    }

    /// Whether this span failed: status ERROR, or an `error=true` tag (Zipkin, OpenTracing, Envoy).
    pub fn is_error(&self) -> bool {
        if self.status.code == StatusCode::Error {
            return true;
        }
        matches!(self.attributes.get("error"), Some(AttrValue::Bool(true)))
            || self.attributes.get_str("error") == Some("true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_checked() {
        assert_eq!(Span::check_times(10, 9), Err(InvalidSpan::EndBeforeStart));
        assert_eq!(Span::check_times(0, 9), Err(InvalidSpan::MissingStart));
        assert_eq!(Span::check_times(10, 10), Ok(()));
    }

    #[test]
    fn kind_round_trips() {
        for n in 0..=5 {
            assert_eq!(SpanKind::from_otlp(n).to_otlp(), n);
        }
        assert_eq!(SpanKind::parse("SERVER"), Some(SpanKind::Server));
        assert_eq!(SpanKind::from_otlp(99), SpanKind::Unspecified);
    }
}
