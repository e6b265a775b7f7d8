//! Builders for tests in every crate: a valid span in one line, changed field by field.

use std::sync::Arc;

use crate::{
    AttrValue, Attributes, Resource, Scope, Span, SpanId, SpanKind, Status, StatusCode, TraceId,
};

/// A trace id from a small number (never zero).
pub fn trace_id(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[0] = 0xab;
    b[8..].copy_from_slice(&n.to_be_bytes());
    TraceId::from_bytes(&b).expect("non-zero")
}

/// A span id from a small number (never zero).
pub fn span_id(n: u64) -> SpanId {
    let mut b = [0u8; 8];
    b[0] = 0xcd;
    b[1..].copy_from_slice(&n.to_be_bytes()[1..]);
    SpanId::from_bytes(&b).expect("non-zero")
}

/// A resource for `service` with an optional version.
pub fn resource(service: &str, version: Option<&str>) -> Arc<Resource> {
    let mut a = Attributes::new();
    a.push("service.name", service);
    if let Some(v) = version {
        a.push("service.version", v);
    }
    Arc::new(Resource::new(a))
}

pub struct SpanBuilder(Span);

impl SpanBuilder {
    /// A server span of 1 ms starting at `start_ns`.
    pub fn new(trace: u64, span: u64, service: &str, name: &str, start_ns: u64) -> Self {
        SpanBuilder(Span {
            trace_id: trace_id(trace),
            span_id: span_id(span),
            parent_span_id: None,
            trace_state: String::new(),
            flags: 0,
            resource: resource(service, None),
            scope: Arc::new(Scope::default()),
            name: name.to_string(),
            kind: SpanKind::Server,
            start_ns,
            end_ns: start_ns + 1_000_000,
            status: Status::default(),
            attributes: Attributes::new(),
            events: Vec::new(),
            links: Vec::new(),
            dropped_attributes_count: 0,
            dropped_events_count: 0,
            dropped_links_count: 0,
        })
    }

    pub fn parent(mut self, span: u64) -> Self {
        self.0.parent_span_id = Some(span_id(span));
        self
    }

    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.0.kind = kind;
        self
    }

    pub fn duration_ns(mut self, d: u64) -> Self {
        self.0.end_ns = self.0.start_ns + d;
        self
    }

    pub fn resource(mut self, r: Arc<Resource>) -> Self {
        self.0.resource = r;
        self
    }

    pub fn attr(mut self, key: &str, value: impl Into<AttrValue>) -> Self {
        self.0.attributes.push(key, value);
        self
    }

    pub fn error(mut self, message: &str) -> Self {
        self.0.status = Status {
            code: StatusCode::Error,
            message: message.to_string(),
        };
        self
    }

    pub fn build(self) -> Span {
        self.0
    }
}

impl From<Span> for SpanBuilder {
    /// Starts from an existing span, to change a field or two.
    fn from(span: Span) -> Self {
        SpanBuilder(span)
    }
}

/// A file of an Istio fixture scenario under `testdata/istio/` (`bookinfo-sidecar`,
/// `ambient-waypoint`), for any crate's tests.
pub fn istio_fixture(scenario: &str, file: &str) -> String {
    let path: std::path::PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "testdata",
        "istio",
        scenario,
        file,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses Prometheus' text exposition format (0.0.4) into series, every sample at `timestamp_ms`
/// (as a scrape at that time would store them). For fixtures: panics on what it cannot read.
pub fn parse_exposition(text: &str, timestamp_ms: i64) -> Vec<crate::prom::PromSeries> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("line {}: no value", n + 1),
        };
        let mut labels = vec![("__name__".to_string(), name.to_string())];
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let end = loop {
                let (i, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("line {}: open {{", n + 1));
                match c {
                    '}' => break i,
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "line {}", n + 1);
                        let mut value = String::new();
                        loop {
                            match chars.next().map(|x| x.1) {
                                Some('\\') => match chars.next().map(|x| x.1) {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("line {}: escape", n + 1),
                                },
                                Some('"') => break,
                                Some(c) => value.push(c),
                                None => panic!("line {}: open quote", n + 1),
                            }
                        }
                        labels.push((std::mem::take(&mut key), value));
                    }
                    c => key.push(c),
                }
            };
            rest = &body[end + 1..];
        }
        let value = rest.split_whitespace().next().unwrap_or("");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {}: value {v:?}", n + 1)),
        };
        out.push(crate::prom::PromSeries {
            labels,
            samples: vec![crate::prom::PromSample {
                value,
                timestamp_ms,
            }],
        });
    }
    out
}
