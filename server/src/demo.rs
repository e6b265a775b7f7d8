//! `meshlens demo`: a small synthetic mesh that sends real OTLP to this meshlens, so a new user
//! sees a live graph and traces seconds after starting it.
//!
//! The mesh, in namespace `demo`: users call `ingress`; ingress calls `work`, split 80/20 between
//! v1 and a canary v2, except that browsers whose user agent says Chrome always get v2; v2 fails
//! about one call in five; work calls `meet`, which queries the `orders` PostgreSQL database.
//! Every call is a CLIENT span and its SERVER child, with the attributes OpenTelemetry's HTTP and
//! database conventions give them, built as the OTLP export an SDK would send. The exports go
//! through the OTLP converter into the ingest pipeline in process (counted as `otlp_grpc`), not
//! through a listener: so the demo runs whatever the listeners ask of a client (TLS, mTLS, an
//! ingest token).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlens_collector::Pipeline;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tokio_util::sync::CancellationToken;

pub const NAMESPACE: &str = "demo";
/// The share of non-Chrome requests the canary (work v2) gets.
pub const CANARY_SHARE: f64 = 0.2;
/// The share of work v2's calls that fail.
pub const CANARY_FAILURES: f64 = 0.2;
/// The share of users on Chrome (always routed to v2).
pub const CHROME_SHARE: f64 = 0.1;
pub const CHROME_UA: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const OTHER_UAS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "curl/8.11.0",
    "okhttp/4.12.0",
];

/// The demo's workloads: service, version, pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Ingress,
    WorkV1,
    WorkV2,
    Meet,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Ingress,
        Workload::WorkV1,
        Workload::WorkV2,
        Workload::Meet,
    ];

    fn service(self) -> &'static str {
        match self {
            Workload::Ingress => "ingress",
            Workload::WorkV1 | Workload::WorkV2 => "work",
            Workload::Meet => "meet",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Workload::WorkV2 => "v2",
            _ => "v1",
        }
    }

    fn resource(self) -> Resource {
        let pod = format!(
            "{}-{}-5f7c9d-{}",
            self.service(),
            self.version(),
            self as u8
        );
        Resource {
            attributes: vec![
                kv_str("service.name", self.service()),
                kv_str("service.namespace", NAMESPACE),
                kv_str("service.version", self.version()),
                kv_str("service.instance.id", &pod),
                kv_str("k8s.namespace.name", NAMESPACE),
                kv_str("k8s.pod.name", &pod),
                kv_str("telemetry.sdk.name", "opentelemetry"),
                kv_str("telemetry.sdk.language", "rust"),
            ],
            ..Default::default()
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// xorshift64: small, deterministic for a seed, good enough for traffic shapes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    /// Uniform in `[lo, hi)` nanoseconds.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_be_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }
}

/// One user request through the mesh: its spans, grouped by the workload that reports them.
pub struct Request {
    pub spans: Vec<(Workload, Span)>,
    pub user_agent: &'static str,
    pub work: Workload,
    pub failed: bool,
}

const MS: u64 = 1_000_000;

/// Spans of one side of a call.
struct Side {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: u64,
    end: u64,
}

fn make_span(
    side: &Side,
    kind: span::SpanKind,
    name: &str,
    attrs: Vec<KeyValue>,
    failed: bool,
) -> Span {
    Span {
        trace_id: side.trace_id.to_vec(),
        span_id: side.span_id.to_vec(),
        parent_span_id: side.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: side.start,
        end_time_unix_nano: side.end,
        attributes: attrs,
        status: Some(Status {
            code: if failed {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            message: if failed {
                "upstream answered 500".into()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    }
}

fn http_server_attrs(method: &str, route: &str, path: &str, code: i64, ua: &str) -> Vec<KeyValue> {
    vec![
        kv_str("http.request.method", method),
        kv_str("http.route", route),
        kv_str("url.path", path),
        kv_str("url.scheme", "http"),
        kv_int("http.response.status_code", code),
        kv_str("user_agent.original", ua),
        kv_str("network.protocol.version", "1.1"),
    ]
}

fn http_client_attrs(method: &str, host: &str, path: &str, code: i64) -> Vec<KeyValue> {
    vec![
        kv_str("http.request.method", method),
        kv_str("server.address", host),
        kv_int("server.port", 8080),
        kv_str("url.full", &format!("http://{host}:8080{path}")),
        kv_int("http.response.status_code", code),
    ]
}

impl Request {
    /// A request starting at `start` (unix ns).
    pub fn generate(rng: &mut Rng, start: u64) -> Request {
        let trace_id = rng.bytes::<16>();
        let chrome = rng.chance(CHROME_SHARE);
        let user_agent = if chrome {
            CHROME_UA
        } else {
            OTHER_UAS[(rng.next() % OTHER_UAS.len() as u64) as usize]
        };
        let work = if chrome || rng.chance(CANARY_SHARE) {
            Workload::WorkV2
        } else {
            Workload::WorkV1
        };
        let failed = work == Workload::WorkV2 && rng.chance(CANARY_FAILURES);
        let order = rng.next() % 10_000;
        let (code, work_ms) = match (work, failed) {
            (Workload::WorkV2, true) => (500, rng.between(30 * MS, 60 * MS)),
            (Workload::WorkV2, false) => (200, rng.between(12 * MS, 30 * MS)),
            _ => (200, rng.between(8 * MS, 20 * MS)),
        };
        let mut spans = Vec::with_capacity(6);
        let meet_ms = rng.between(3 * MS, (work_ms - MS).min(9 * MS));
        let query_ms = rng.between(MS / 2, 2 * MS);
        let mut side = |parent: Option<[u8; 8]>, start: u64, end: u64| Side {
            trace_id,
            span_id: rng.bytes::<8>(),
            parent,
            start,
            end,
        };

        // ingress: SERVER (root) and its CLIENT call to work.
        let ingress = side(None, start, start + work_ms + 3 * MS);
        let to_work = side(Some(ingress.span_id), start + MS, start + MS + work_ms + MS);
        let at_work = side(
            Some(to_work.span_id),
            to_work.start + MS / 4,
            to_work.end - MS / 4,
        );
        // work calls meet (unless it failed before), meet queries the database.
        let meet_start = at_work.start + MS;
        let to_meet = side(Some(at_work.span_id), meet_start, meet_start + meet_ms);
        let at_meet = side(
            Some(to_meet.span_id),
            meet_start + MS / 4,
            meet_start + meet_ms - MS / 4,
        );
        let query = side(
            Some(at_meet.span_id),
            meet_start + MS / 2,
            meet_start + MS / 2 + query_ms,
        );

        let path = format!("/orders/{order}");
        spans.push((
            Workload::Ingress,
            make_span(
                &ingress,
                span::SpanKind::Server,
                "GET /orders/{id}",
                http_server_attrs("GET", "/orders/{id}", &path, code, user_agent),
                failed,
            ),
        ));
        spans.push((
            Workload::Ingress,
            make_span(
                &to_work,
                span::SpanKind::Client,
                "GET",
                http_client_attrs("GET", "work", &path, code),
                failed,
            ),
        ));
        spans.push((
            work,
            make_span(
                &at_work,
                span::SpanKind::Server,
                "GET /orders/{id}",
                http_server_attrs("GET", "/orders/{id}", &path, code, user_agent),
                failed,
            ),
        ));
        if !failed {
            let meet_path = format!("/meetings?order={order}");
            spans.push((
                work,
                make_span(
                    &to_meet,
                    span::SpanKind::Client,
                    "GET",
                    http_client_attrs("GET", "meet", &meet_path, 200),
                    false,
                ),
            ));
            spans.push((
                Workload::Meet,
                make_span(
                    &at_meet,
                    span::SpanKind::Server,
                    "GET /meetings",
                    http_server_attrs("GET", "/meetings", "/meetings", 200, "work/1.0"),
                    false,
                ),
            ));
            spans.push((
                Workload::Meet,
                make_span(
                    &query,
                    span::SpanKind::Client,
                    "SELECT orders",
                    vec![
                        kv_str("db.system", "postgresql"),
                        kv_str("db.namespace", "orders"),
                        kv_str("db.operation.name", "SELECT"),
                        kv_str(
                            "db.query.text",
                            "SELECT * FROM meetings WHERE order_id = $1",
                        ),
                        kv_str("server.address", "orders-db"),
                        kv_int("server.port", 5432),
                    ],
                    false,
                ),
            ));
        }
        Request {
            spans,
            user_agent,
            work,
            failed,
        }
    }
}

/// One OTLP export with the spans of `requests`, a resource per workload.
pub fn export(requests: Vec<Request>) -> ExportTraceServiceRequest {
    let mut by_workload: Vec<Vec<Span>> = vec![Vec::new(); Workload::ALL.len()];
    for r in requests {
        for (w, s) in r.spans {
            by_workload[w as usize].push(s);
        }
    }
    ExportTraceServiceRequest {
        resource_spans: Workload::ALL
            .iter()
            .zip(by_workload)
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(w, spans)| ResourceSpans {
                resource: Some(w.resource()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "meshlens-demo".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Sends `rate` requests a second (as one export every 250 ms) into `pipeline` until `stop`.
/// Failed exports are logged and the traffic goes on.
pub async fn run(pipeline: Pipeline, rate: f64, stop: CancellationToken) {
    let mut rng = Rng::new(now_ns());
    let tick = Duration::from_millis(250);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let per_tick = rate * tick.as_secs_f64();
    let mut owed = 0.0;
    let mut failures = 0u64;
    tracing::info!(
        rate,
        "demo mesh sending spans: ingress → work (v1, v2 canary) → meet → orders-db"
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        owed += per_tick;
        let n = owed.floor() as usize;
        owed -= n as f64;
        if n == 0 {
            continue;
        }
        let now = now_ns();
        let tick_ns = tick.as_nanos() as u64;
        let requests = (0..n)
            .map(|i| Request::generate(&mut rng, now - tick_ns + i as u64 * tick_ns / n as u64))
            .collect();
        let converted = meshlens_collector::otlp::convert::convert_traces(export(requests));
        if let Err(e) = pipeline
            .ingest(meshlens_collector::Protocol::OtlpGrpc, converted, None)
            .await
        {
            failures += 1;
            // Say it once, then every hundredth time: the store may be failing or overloaded.
            if failures == 1 || failures.is_multiple_of(100) {
                tracing::warn!(error = %e, failures, "demo export failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_follows_the_canary_rules() {
        let mut rng = Rng::new(42);
        let (mut v2, mut other, mut v2_failed, mut v2_total) = (0, 0, 0, 0);
        let n = 20_000;
        for i in 0..n {
            let r = Request::generate(&mut rng, 1_000_000_000 + i);
            if r.user_agent.contains("Chrome") {
                assert_eq!(r.work, Workload::WorkV2, "Chrome always goes to v2");
            } else {
                other += 1;
                if r.work == Workload::WorkV2 {
                    v2 += 1;
                }
            }
            if r.work == Workload::WorkV2 {
                v2_total += 1;
                v2_failed += r.failed as u32;
            } else {
                assert!(!r.failed, "v1 does not fail");
            }
            // Spans are well formed: a server per client, children inside their parents.
            let spans: Vec<&Span> = r.spans.iter().map(|(_, s)| s).collect();
            let root = spans[0];
            assert!(root.parent_span_id.is_empty());
            for s in &spans[1..] {
                let parent = spans
                    .iter()
                    .find(|p| p.span_id == s.parent_span_id)
                    .expect("parent in the trace");
                assert!(s.start_time_unix_nano >= parent.start_time_unix_nano);
                assert!(s.end_time_unix_nano <= parent.end_time_unix_nano);
                assert!(s.end_time_unix_nano > s.start_time_unix_nano);
            }
            assert_eq!(spans.len(), if r.failed { 3 } else { 6 });
        }
        let canary = v2 as f64 / other as f64;
        assert!((canary - CANARY_SHARE).abs() < 0.02, "{canary}");
        let failing = v2_failed as f64 / v2_total as f64;
        assert!((failing - CANARY_FAILURES).abs() < 0.02, "{failing}");
    }

    #[test]
    fn an_export_has_one_resource_per_workload() {
        let mut rng = Rng::new(7);
        let requests = (0..50)
            .map(|i| Request::generate(&mut rng, 1_000_000_000 + i))
            .collect();
        let e = export(requests);
        let names: Vec<(String, String)> = e
            .resource_spans
            .iter()
            .map(|rs| {
                let attr = |k: &str| {
                    rs.resource
                        .as_ref()
                        .unwrap()
                        .attributes
                        .iter()
                        .find(|a| a.key == k)
                        .and_then(|a| match &a.value.as_ref()?.value {
                            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                };
                (
                    attr("service.name").unwrap(),
                    attr("service.version").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("ingress", "v1"),
                ("work", "v1"),
                ("work", "v2"),
                ("meet", "v1")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
