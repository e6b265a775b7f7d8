//! Mesh-shaped OTLP batches: traces walk a chain of services as client/server span pairs that
//! share trace ids, with realistic resource and span attributes and a share of errors.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

/// A small deterministic generator, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

/// svc-01 runs a canary: 20% of its calls go to its v2, which fails 20% more often.
const CANARY_SERVICE: usize = 1;
const CANARY_SHARE: f64 = 0.2;
const CANARY_EXTRA_FAILURES: f64 = 0.2;

/// The resource of a batch slot: one per service, and one more (the last) for the canary.
fn resource(slot: usize, services: usize) -> Resource {
    let canary = slot == services;
    let service = if canary { CANARY_SERVICE } else { slot };
    let name = format!("svc-{service:02}");
    let version = if canary || (service.is_multiple_of(4) && service != CANARY_SERVICE) {
        "v2"
    } else {
        "v1"
    };
    Resource {
        attributes: vec![
            s("service.name", &name),
            s("service.namespace", "mesh"),
            s("service.version", version),
            s(
                "service.instance.id",
                &format!("{name}-{version}-7d9f8c-x2k4p"),
            ),
            s("k8s.namespace.name", "mesh"),
            s("k8s.pod.name", &format!("{name}-{version}-7d9f8c-x2k4p")),
            s("telemetry.sdk.name", "opentelemetry"),
            s("telemetry.sdk.language", "go"),
            s("telemetry.sdk.version", "1.28.0"),
        ],
        ..Default::default()
    }
}

/// `count` requests of `batch` spans each, protobuf-encoded.
pub fn encoded_batches(count: usize, batch: usize, services: usize, error_rate: f64) -> Vec<Bytes> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (0..count)
        .map(|_| {
            let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); services + 1];
            let mut n = 0;
            while n < batch {
                n += trace(
                    &mut rng,
                    services,
                    error_rate,
                    now,
                    &mut by_service,
                    batch - n,
                );
            }
            let req = ExportTraceServiceRequest {
                resource_spans: by_service
                    .into_iter()
                    .enumerate()
                    .filter(|(_, spans)| !spans.is_empty())
                    .map(|(slot, spans)| ResourceSpans {
                        resource: Some(resource(slot, services)),
                        scope_spans: vec![ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "io.opentelemetry.http".into(),
                                version: "0.52.0".into(),
                                ..Default::default()
                            }),
                            spans,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })
                    .collect(),
            };
            Bytes::from(req.encode_to_vec())
        })
        .collect()
}

/// One trace: a chain of up to four hops, each a CLIENT span and its SERVER child. `out` has a
/// slot per service and one for the canary.
fn trace(
    rng: &mut Rng,
    services: usize,
    error_rate: f64,
    now: u64,
    out: &mut [Vec<Span>],
    room: usize,
) -> usize {
    let trace_id: Vec<u8> = rng
        .next()
        .to_be_bytes()
        .into_iter()
        .chain(rng.next().to_be_bytes())
        .collect();
    let hops = (1 + rng.below(4) as usize).min(room.div_ceil(2)).max(1);
    let mut caller = rng.below(services as u64) as usize;
    let mut caller_slot = caller;
    let mut start = now - rng.below(1_000_000_000);
    // The root SERVER span of the entry service.
    let root = Call {
        trace: &trace_id,
        id: rng.next().to_be_bytes().to_vec(),
        parent: Vec::new(),
        start,
        dur: 40_000_000,
        failed: false,
    };
    let mut parent = root.id.clone();
    out[caller_slot].push(server_span(rng, root));
    let mut made = 1;
    for _ in 0..hops {
        if made + 2 > room {
            break;
        }
        let callee = (caller + 1 + rng.below(services as u64 - 1) as usize) % services;
        let canary = callee == CANARY_SERVICE && rng.chance(CANARY_SHARE);
        let callee_slot = if canary { services } else { callee };
        let failed = rng.chance(error_rate) || (canary && rng.chance(CANARY_EXTRA_FAILURES));
        let dur = 200_000 + rng.below(20_000_000);
        start += 50_000;
        let client = Call {
            trace: &trace_id,
            id: rng.next().to_be_bytes().to_vec(),
            parent: parent.clone(),
            start,
            dur,
            failed,
        };
        let server = Call {
            trace: &trace_id,
            id: rng.next().to_be_bytes().to_vec(),
            parent: client.id.clone(),
            start: start + 20_000,
            dur: dur - 40_000,
            failed,
        };
        parent = server.id.clone();
        out[caller_slot].push(client_span(client, callee));
        out[callee_slot].push(server_span(rng, server));
        made += 2;
        caller = callee;
        caller_slot = callee_slot;
    }
    made
}

/// One side of a call: the ids, timing and outcome that client and server spans share.
struct Call<'a> {
    trace: &'a [u8],
    id: Vec<u8>,
    parent: Vec<u8>,
    start: u64,
    dur: u64,
    failed: bool,
}

impl Call<'_> {
    fn status_code(&self) -> i64 {
        if self.failed {
            503
        } else {
            200
        }
    }

    fn into_span(self, kind: span::SpanKind, name: &str, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: self.trace.to_vec(),
            span_id: self.id,
            parent_span_id: self.parent,
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: self.start,
            end_time_unix_nano: self.start + self.dur,
            attributes,
            status: Some(Status {
                code: if self.failed { 2 } else { 0 },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn client_span(call: Call<'_>, callee: usize) -> Span {
    let host = format!("svc-{callee:02}.mesh.svc.cluster.local");
    let attributes = vec![
        s("http.request.method", "GET"),
        i("http.response.status_code", call.status_code()),
        s("server.address", &host),
        i("server.port", 8080),
        s("url.full", &format!("http://{host}:8080/api/items")),
        s("network.protocol.version", "1.1"),
    ];
    call.into_span(span::SpanKind::Client, "GET", attributes)
}

fn server_span(rng: &mut Rng, call: Call<'_>) -> Span {
    let attributes = vec![
        s("http.request.method", "GET"),
        s("http.route", "/api/items/{id}"),
        s("url.path", &format!("/api/items/{}", rng.below(10_000))),
        s("url.scheme", "http"),
        i("http.response.status_code", call.status_code()),
        s(
            "user_agent.original",
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
        ),
        s("client.address", "10.244.1.17"),
        s("network.protocol.version", "1.1"),
    ];
    call.into_span(span::SpanKind::Server, "GET /api/items/{id}", attributes)
}
