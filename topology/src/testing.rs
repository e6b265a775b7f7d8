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

/// Mesh-shaped spans for benchmarks and scale tests: traces of 1–4 hops across `services`
/// services, each hop a client span and its server child with the attributes an HTTP
/// instrumentation sets (`url.path` one of 10,000; 5% of calls fail), starts spread evenly from
/// `from_ns` over `span_ns` per span written. `next` gives the next trace's spans.
pub struct MeshTraces {
    rng: u64,
    services: Vec<Arc<Resource>>,
    traces: u64,
    written: u64,
    from_ns: u64,
    ns_per_span: f64,
}

impl MeshTraces {
    pub fn new(services: u64, from_ns: u64, ns_per_span: f64) -> Self {
        MeshTraces {
            rng: 0x9E37_79B9_7F4A_7C15,
            services: (0..services)
                .map(|s| {
                    resource(
                        &format!("svc-{s:02}"),
                        Some(if s % 4 == 0 { "v2" } else { "v1" }),
                    )
                })
                .collect(),
            traces: 0,
            written: 0,
            from_ns,
            ns_per_span,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// The id of the `n`-th trace made.
    pub fn trace_id(n: u64) -> TraceId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
        TraceId::from_bytes(&b).expect("non-zero")
    }

    /// Traces made so far.
    pub fn traces(&self) -> u64 {
        self.traces
    }

    /// The next trace's spans.
    pub fn next_trace(&mut self) -> Vec<Span> {
        let services = self.services.len() as u64;
        let id = Self::trace_id(self.traces);
        let mut span_no = self.traces * 16;
        self.traces += 1;
        let mut start = self.from_ns
            + (self.written as f64 * self.ns_per_span) as u64
            + self.below(1_000_000_000);
        let mut caller = self.below(services);
        let mut parent = None;
        let mut out = Vec::new();
        for _ in 0..1 + self.below(4) {
            let callee = (caller + 1 + self.below(services - 1)) % services;
            let failed = self.below(100) < 5;
            let status = if failed { 503i64 } else { 200 };
            let dur = 200_000 + self.below(20_000_000);
            let mut client = SpanBuilder::new(0, span_no + 1, "", "GET", start)
                .resource(self.services[caller as usize].clone())
                .kind(SpanKind::Client)
                .duration_ns(dur)
                .attr("http.request.method", "GET")
                .attr("http.response.status_code", status)
                .attr(
                    "server.address",
                    format!("svc-{callee:02}.mesh.svc.cluster.local"),
                )
                .attr("server.port", 8080i64);
            if let Some(p) = parent {
                client = client.parent(p);
            }
            let path = format!("/api/items/{}", self.below(10_000));
            let mut server =
                SpanBuilder::new(0, span_no + 2, "", "GET /api/items/{id}", start + 20_000)
                    .resource(self.services[callee as usize].clone())
                    .kind(SpanKind::Server)
                    .parent(span_no + 1)
                    .duration_ns(dur - 40_000)
                    .attr("http.request.method", "GET")
                    .attr("http.route", "/api/items/{id}")
                    .attr("url.path", path)
                    .attr("http.response.status_code", status)
                    .attr("client.address", "10.244.1.17");
            if failed {
                server = server.error("upstream failed");
            }
            for mut s in [client.build(), server.build()] {
                s.trace_id = id;
                out.push(s);
            }
            parent = Some(span_no + 2);
            span_no += 2;
            caller = callee;
            start += 50_000;
        }
        self.written += out.len() as u64;
        out
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
