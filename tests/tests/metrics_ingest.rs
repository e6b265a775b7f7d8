//! OTLP metrics in: `POST /v1/metrics` (JSON and protobuf) and `MetricsService/Export` over gRPC,
//! with Istio's standard metric, a bad data point beside good ones, and malformed bodies.

use meshlens_tests::TestEnv;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use serde_json::{json, Value};

/// `istio_requests_total` as work's inbound proxy reports it: `n` requests from front with `code`,
/// as a delta, plus a histogram whose bucket counts do not fit its bounds (invalid).
fn istio_export(n: u64, code: &str) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    json!({"resourceMetrics": [{
        "resource": {"attributes": [attr("service.name", "work")]},
        "scopeMetrics": [{"metrics": [
            {"name": "istio_requests_total", "sum": {
                "aggregationTemporality": 1, "isMonotonic": true,
                "dataPoints": [{"asInt": n.to_string(), "timeUnixNano": "1", "attributes": [
                    attr("reporter", "destination"),
                    attr("source_canonical_service", "front"), attr("source_version", "v1"),
                    attr("destination_canonical_service", "work"), attr("destination_version", "v2"),
                    attr("destination_service_namespace", "shop"), attr("source_workload_namespace", "shop"),
                    attr("response_code", code)]}]}},
            {"name": "istio_request_duration_milliseconds", "histogram": {
                "aggregationTemporality": 1,
                "dataPoints": [{"count": "1", "bucketCounts": ["1"], "explicitBounds": [1.0, 5.0]}]}}
        ]}]
    }]})
}

async fn edge(env: &TestEnv) -> Option<Value> {
    let (_, g) = env.get_json("/api/graph?window=1m").await;
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == "service:shop/front" && e["target"] == "service:shop/work")
        .cloned()
}

#[tokio::test]
async fn istio_metrics_over_http_and_grpc_make_an_edge() {
    let env = TestEnv::start().await;
    let url = env.otlp_http("/v1/metrics");
    let r = env
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(istio_export(8, "200").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    // A number or, as the OTLP JSON mapping writes 64-bit integers, a string.
    let rejected = body["partialSuccess"]["rejectedDataPoints"].to_string();
    assert_eq!(rejected.trim_matches('"'), "1", "{body}");
    assert!(body["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("bucket counts"));

    let req: ExportMetricsServiceRequest = serde_json::from_value(istio_export(2, "503")).unwrap();
    let r = env
        .http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let mut grpc =
        MetricsServiceClient::connect(format!("http://{}", env.running().addrs.otlp_grpc))
            .await
            .unwrap();
    let answer = grpc
        .export(
            serde_json::from_value::<ExportMetricsServiceRequest>(istio_export(5, "200")).unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success.unwrap().rejected_data_points, 1);

    let mut found = None;
    for _ in 0..100 {
        found = edge(&env).await.filter(|e| e["stats"]["requests"] == 15);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let e = found.expect("front → work with 15 requests");
    assert_eq!(e["stats"]["failures"], 2);
    assert_eq!(e["stats"]["http_5xx"], 2);
    assert_eq!(e["versions"][0]["target_version"], "v2");
    assert_eq!(
        env.metric("meshlens_ingest_metric_points_total", "").await,
        3.0
    );
    assert_eq!(
        env.metric("meshlens_ingest_rejected_metric_points_total", "")
            .await,
        3.0
    );
    env.stop().await;
}

#[tokio::test]
async fn malformed_metrics_bodies_get_clear_errors() {
    let env = TestEnv::start().await;
    let url = env.otlp_http("/v1/metrics");
    for (ct, body, status) in [
        ("application/json", b"{nope".to_vec(), 400),
        ("application/x-protobuf", vec![0xff, 0xff, 0xff], 400),
        ("text/plain", b"x".to_vec(), 415),
    ] {
        let r = env
            .http
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{ct}");
    }
    env.stop().await;
}
