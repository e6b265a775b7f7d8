//! Writes the seed corpus, `fuzz/corpus/<target>/`, from the repository's fixtures: run it again
//! (`cargo run -p meshlens-fuzz --example seeds`) when a format changes. Text fixtures are
//! copied; binary ones (protobuf, stored rows) are encoded from them.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, AttributeContext, CheckRequest,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use meshlens_collector::prom::proto::WriteRequest;
use meshlens_topology::graph::{ConnectionType, EdgeKey, Endpoint, NodeKey, Stats};
use meshlens_topology::testing::{istio_fixture, parse_exposition, resource, SpanBuilder};
use meshlens_topology::SpanKind;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = repo().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn copy(target: &str, from: &str) {
    let data = std::fs::read(repo().join(from)).unwrap();
    let name = from.replace('/', "_");
    write(target, &name, &data);
}

fn main() {
    // OTLP traces: the SDK's export, as JSON and as protobuf.
    copy("otlp_traces", "collector/testdata/sdk_two_spans.json");
    let json = std::fs::read(repo().join("collector/testdata/sdk_two_spans.json")).unwrap();
    let req: ExportTraceServiceRequest = serde_json::from_slice(&json).unwrap();
    write("otlp_traces", "sdk_two_spans.pb", &req.encode_to_vec());

    // OTLP metrics: Envoy's cluster stats as its OpenTelemetry stat sink sends them.
    let metrics = serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "work"}},
                                     {"key": "service.version", "value": {"stringValue": "v1"}}]},
        "scopeMetrics": [{"metrics": [
            {"name": "cluster.upstream_rq_xx", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
              "dataPoints": [{"asInt": "30", "timeUnixNano": "1780000000000000000", "attributes": [
                {"key": "envoy.cluster_name", "value": {"stringValue": "outbound|80|v2|meet.shop.svc.cluster.local"}},
                {"key": "envoy.response_code_class", "value": {"stringValue": "2"}}]}]}},
            {"name": "cluster.upstream_rq_time", "histogram": {"aggregationTemporality": 2,
              "dataPoints": [{"count": "30", "sum": 300.0, "bucketCounts": ["0", "10", "20", "0"],
                "explicitBounds": [1.0, 10.0, 100.0], "timeUnixNano": "1780000000000000000", "attributes": [
                {"key": "envoy.cluster_name", "value": {"stringValue": "outbound|80|v2|meet.shop.svc.cluster.local"}}]}]}}
        ]}]
    }]});
    let text = serde_json::to_vec(&metrics).unwrap();
    write("otlp_metrics", "envoy_cluster_stats.json", &text);
    let req: ExportMetricsServiceRequest = serde_json::from_slice(&text).unwrap();
    write(
        "otlp_metrics",
        "envoy_cluster_stats.pb",
        &req.encode_to_vec(),
    );

    // Zipkin v2: a client span and its server, as Envoy's Zipkin tracer sends them.
    let zipkin = serde_json::json!([
        {"traceId": "5af7183fb1d4cf5f", "id": "6b221d5bc9e6496c", "kind": "CLIENT", "name": "get /api",
         "timestamp": 1780000000000000u64, "duration": 1200, "localEndpoint": {"serviceName": "front"},
         "remoteEndpoint": {"serviceName": "work", "ipv4": "10.0.0.2", "port": 8080},
         "tags": {"http.method": "GET", "http.status_code": "200", "upstream_cluster": "outbound|80||work"}},
        {"traceId": "5af7183fb1d4cf5f", "parentId": "6b221d5bc9e6496c", "id": "7c3e2a1b0f9d8e7c",
         "kind": "SERVER", "name": "get /api", "timestamp": 1780000000000100u64, "duration": 900,
         "localEndpoint": {"serviceName": "work"}, "tags": {"http.status_code": "200"},
         "annotations": [{"timestamp": 1780000000000200u64, "value": "cache miss"}]}
    ]);
    write(
        "zipkin",
        "envoy_pair.json",
        &serde_json::to_vec(&zipkin).unwrap(),
    );

    // Remote write: the Istio fixtures' second scrapes, uncompressed.
    for scenario in ["bookinfo-sidecar", "ambient-waypoint"] {
        // A few series of each kind the graph reads: AFL works best on small seeds.
        let mut series =
            parse_exposition(&istio_fixture(scenario, "scrape-1.prom"), 1_780_000_000_000);
        let mut kinds: std::collections::HashMap<String, usize> = Default::default();
        series.retain(|s| {
            let name = s
                .labels
                .iter()
                .find(|(k, _)| k == "__name__")
                .map(|(_, v)| v.clone());
            let seen = kinds.entry(name.unwrap_or_default()).or_default();
            *seen += 1;
            *seen <= 3
        });
        let req = WriteRequest::of(&series);
        write(
            "remote_write",
            &format!("{scenario}.pb"),
            &req.encode_to_vec(),
        );
    }

    // ext_authz: a request as Envoy's HTTP filter sends it.
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                principal: "spiffe://cluster.local/ns/shop/sa/front".into(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/admin/users?limit=10".into(),
                    host: "work".into(),
                    headers: [
                        (":path".to_string(), "/admin/users?limit=10".to_string()),
                        ("x-user".to_string(), "ann".to_string()),
                        ("authorization".to_string(), "Bearer t0ken".to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    write("ext_authz", "admin_request.pb", &check.encode_to_vec());

    // Rate limit service: two descriptors, as Envoy's rate limit filter sends them.
    let entry = |k: &str, v: &str| rate_limit_descriptor::Entry {
        key: k.into(),
        value: v.into(),
    };
    let rls = RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![
            RateLimitDescriptor {
                entries: vec![entry("remote_address", "10.0.0.9"), entry("path", "/api")],
                ..Default::default()
            },
            RateLimitDescriptor {
                entries: vec![entry("user", "ann")],
                ..Default::default()
            },
        ],
        hits_addend: 1,
    };
    write("rate_limit", "two_descriptors.pb", &rls.encode_to_vec());

    // Policy files: the examples.
    copy("ratelimit_yaml", "examples/policy/ratelimit/edge.yaml");
    copy(
        "ratelimit_yaml",
        "examples/envoy-mesh/policy/ratelimit/mesh.yaml",
    );
    copy("policy_yaml", "examples/policy/policy.yaml");
    copy("policy_yaml", "examples/envoy-mesh/policy/policy.yaml");

    // Stored rows: spans with attributes, an event and an error, and a minute of an edge.
    let t0 = 1_780_000_000_000_000_000u64;
    let spans = [
        SpanBuilder::new(1, 1, "front", "GET /api", t0)
            .kind(SpanKind::Client)
            .resource(resource("front", Some("v1")))
            .attr("http.request.method", "GET")
            .attr("peer.service", "work")
            .build(),
        SpanBuilder::new(1, 2, "work", "GET /api", t0 + 1_000)
            .parent(1)
            .kind(SpanKind::Server)
            .resource(resource("work", Some("v2")))
            .attr("http.response.status_code", 503i64)
            .error("upstream reset")
            .build(),
    ];
    for (i, row) in meshlens_storage::fuzzing::stored_span_seeds(&spans)
        .iter()
        .enumerate()
    {
        write("stored_span", &format!("span_{i}.row"), row);
    }
    for (i, seed) in meshlens_storage::fuzzing::span_block_seeds(&spans)
        .iter()
        .enumerate()
    {
        write("span_block", &format!("block_{i}.bin"), seed);
    }
    let end = |name: &str, version: &str| Endpoint {
        node: NodeKey::service(Some("shop"), name),
        version: Some(version.into()),
    };
    let mut stats = Stats::default();
    stats.counts.requests = 40;
    stats.counts.failures = 3;
    for ms in [1u64, 2, 2, 3, 50] {
        stats.server_latency.record_ns(ms * 1_000_000);
    }
    let minute = meshlens_storage::EdgeMinute {
        minute: 29_666_666,
        key: EdgeKey {
            client: end("front", "v1"),
            server: end("work", "v2"),
            connection: ConnectionType::Http,
        },
        stats,
    };
    write(
        "edge_minute",
        "front_work.row",
        &meshlens_storage::fuzzing::edge_minute_seed(&minute),
    );

    // Query strings of the web API, as Jaeger's UI and Grafana send them.
    for (name, q) in [
        ("jaeger_search", "service=work&operation=GET%20%2Fapi&tags=%7B%22http.status_code%22%3A%22503%22%7D&minDuration=1.5ms&maxDuration=1h30m&limit=20&lookback=2h"),
        ("graph", "window=5m&namespace=shop&service=work&depth=2&versions=true&end=2026-12-07T10:00:00Z"),
        ("dependencies", "endTs=1780000000000&lookback=86400000"),
    ] {
        write("web_query", &format!("{name}.txt"), q.as_bytes());
    }
}
