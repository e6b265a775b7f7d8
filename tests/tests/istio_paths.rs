//! The same Istio series by both roads a deployed mesh uses: Prometheus remote write, and OTLP
//! from an OpenTelemetry Collector whose `prometheus` receiver scraped the proxies (one resource
//! per scrape target with `service.name` = job and `service.instance.id` = instance; counters as
//! cumulative monotonic sums; each classic histogram's `_bucket`, `_sum` and `_count` series as
//! one histogram point). Both servers are fed the two scrapes of each `testdata/istio` scenario
//! and must draw the same graph.

use std::collections::BTreeMap;

use meshlens_collector::prom::proto::WriteRequest;
use meshlens_tests::TestEnv;
use meshlens_topology::prom::PromSeries;
use meshlens_topology::testing::{istio_fixture, parse_exposition};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

const T0_MS: i64 = 1_780_000_000_000;

fn scrape(scenario: &str, n: usize) -> Vec<PromSeries> {
    let text = istio_fixture(scenario, &format!("scrape-{n}.prom"));
    parse_exposition(&text, T0_MS + n as i64 * 15_000)
}

fn label<'a>(s: &'a PromSeries, k: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|(name, _)| name == k)
        .map(|(_, v)| v.as_str())
}

fn remote_write_body(series: &[PromSeries]) -> Vec<u8> {
    let req = WriteRequest::of(series);
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

/// What the Collector's `prometheus` receiver exports for one scrape.
fn otlp_export(series: &[PromSeries], start_ms: i64) -> ExportMetricsServiceRequest {
    let ns = |ms: i64| (ms as u64) * 1_000_000;
    let histograms: Vec<&str> = series
        .iter()
        .filter_map(|s| label(s, "__name__")?.strip_suffix("_bucket"))
        .collect();
    // By target, then by metric name, then by the series' other labels.
    type Points = BTreeMap<Vec<(String, String)>, Vec<(Option<f64>, String, f64, i64)>>;
    let mut targets: BTreeMap<(String, String), BTreeMap<String, Points>> = BTreeMap::new();
    for s in series {
        let name = label(s, "__name__").unwrap();
        let (family, part) = match histograms.iter().find(|h| {
            name.strip_prefix(**h)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
        }) {
            Some(h) => (h.to_string(), name[h.len()..].to_string()),
            None => (name.to_string(), String::new()),
        };
        let le = label(s, "le").map(|le| le.parse::<f64>().unwrap());
        let attributes: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| !["__name__", "job", "instance", "le"].contains(&k.as_str()))
            .cloned()
            .collect();
        let target = (
            label(s, "job").unwrap().to_string(),
            label(s, "instance").unwrap().to_string(),
        );
        let p = s.samples[0];
        targets
            .entry(target)
            .or_default()
            .entry(family)
            .or_default()
            .entry(attributes)
            .or_default()
            .push((le, part, p.value, p.timestamp_ms));
    }
    let resource_metrics = targets
        .into_iter()
        .map(|((job, instance), families)| {
            let metrics = families
                .into_iter()
                .map(|(name, points)| {
                    let histogram = points.values().flatten().any(|p| p.1 == "_bucket");
                    let data = if histogram {
                        metric::Data::Histogram(Histogram {
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            data_points: points
                                .into_iter()
                                .map(|(attrs, parts)| {
                                    let mut buckets: Vec<(f64, f64)> = parts
                                        .iter()
                                        .filter_map(|(le, _, v, _)| Some(((*le)?, *v)))
                                        .collect();
                                    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                                    let part = |p: &str| {
                                        parts.iter().find(|x| x.1 == p).map_or(0.0, |x| x.2)
                                    };
                                    let mut below = 0.0;
                                    let bucket_counts = buckets
                                        .iter()
                                        .map(|(_, v)| {
                                            let n = (v - below) as u64;
                                            below = *v;
                                            n
                                        })
                                        .collect();
                                    HistogramDataPoint {
                                        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                                        start_time_unix_nano: ns(start_ms),
                                        time_unix_nano: ns(parts[0].3),
                                        count: part("_count") as u64,
                                        sum: Some(part("_sum")),
                                        explicit_bounds: buckets
                                            .iter()
                                            .map(|b| b.0)
                                            .filter(|b| b.is_finite())
                                            .collect(),
                                        bucket_counts,
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                        })
                    } else {
                        metric::Data::Sum(Sum {
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                            data_points: points
                                .into_iter()
                                .map(|(attrs, parts)| NumberDataPoint {
                                    attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                                    start_time_unix_nano: ns(start_ms),
                                    time_unix_nano: ns(parts[0].3),
                                    value: Some(number_data_point::Value::AsDouble(parts[0].2)),
                                    ..Default::default()
                                })
                                .collect(),
                        })
                    };
                    Metric {
                        name,
                        data: Some(data),
                        ..Default::default()
                    }
                })
                .collect();
            let (host, port) = instance.rsplit_once(':').unwrap();
            ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", &job),
                        kv("service.instance.id", &instance),
                        kv("server.address", host),
                        kv("server.port", port),
                        kv("url.scheme", "http"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

async fn post(env: &TestEnv, path: &str, content_type: &str, body: Vec<u8>) {
    let mut req = env
        .http
        .post(env.otlp_http(path))
        .header("content-type", content_type);
    if path == "/api/v1/write" {
        req = req
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0");
    }
    let r = req.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(status == 200 || status == 204, "{path}: {status} {text}");
    assert!(!text.contains("rejected"), "{path}: {text}");
}

/// The graph's edges by id: what each counted, its latencies and mTLS share.
async fn edges(env: &TestEnv, waypoints: bool) -> BTreeMap<String, Value> {
    let (_, g) = env
        .get_json(&format!("/api/graph?window=5m&waypoints={waypoints}"))
        .await;
    g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut e = e.clone();
            // Rates are over the time each server has run: compare counts.
            let stats = e["stats"].as_object_mut().unwrap();
            stats.remove("rps");
            stats.remove("tcp_sent_bps");
            stats.remove("tcp_received_bps");
            (e["id"].as_str().unwrap().to_string(), e["stats"].clone())
        })
        .collect()
}

/// Waits until the graph has edges and holds still for a moment.
async fn settled(env: &TestEnv, waypoints: bool) -> BTreeMap<String, Value> {
    let mut last = BTreeMap::new();
    for _ in 0..100 {
        let now = edges(env, waypoints).await;
        if !now.is_empty() && now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    panic!("the graph never settled: {last:?}");
}

async fn same_graph_by_both_roads(scenario: &str) {
    let (rw, otlp) = (TestEnv::start().await, TestEnv::start().await);
    for n in 0..2 {
        let series = scrape(scenario, n);
        post(
            &rw,
            "/api/v1/write",
            "application/x-protobuf",
            remote_write_body(&series),
        )
        .await;
        post(
            &otlp,
            "/v1/metrics",
            "application/x-protobuf",
            otlp_export(&series, T0_MS - 600_000).encode_to_vec(),
        )
        .await;
    }
    for waypoints in [false, true] {
        let by_rw = settled(&rw, waypoints).await;
        let by_otlp = settled(&otlp, waypoints).await;
        for (id, stats) in &by_rw {
            assert_eq!(Some(stats), by_otlp.get(id), "{scenario}: {id}");
        }
        assert_eq!(
            by_rw.keys().collect::<Vec<_>>(),
            by_otlp.keys().collect::<Vec<_>>()
        );
        if scenario == "ambient-waypoint" {
            let through_waypoint = by_rw.keys().filter(|id| id.contains("waypoint:")).count();
            assert_eq!(
                through_waypoint,
                if waypoints { 4 } else { 0 },
                "{by_rw:#?}"
            );
        }
        let requests: u64 = by_rw.values().filter_map(|s| s["requests"].as_u64()).sum();
        let latencies = by_rw
            .values()
            .filter(|s| s["latency_ms"].is_object())
            .count();
        assert!(requests > 0 && latencies > 0, "{scenario}: {by_rw:#?}");
    }
    rw.stop().await;
    otlp.stop().await;
}

#[tokio::test]
async fn bookinfo_by_remote_write_and_by_the_collectors_otlp_draws_one_graph() {
    same_graph_by_both_roads("bookinfo-sidecar").await;
}

#[tokio::test]
async fn ambient_by_remote_write_and_by_the_collectors_otlp_draws_one_graph() {
    same_graph_by_both_roads("ambient-waypoint").await;
}

/// Istio's default: 1% of calls traced. A few spans of productpage calling reviews (slow ones,
/// 500 ms) beside the remote-written metrics of 300 calls: the edge counts the metrics' calls,
/// takes its latency from their histograms and says so, and still shows what the spans saw.
#[tokio::test]
async fn sampled_spans_pair_beside_the_metrics_which_give_counts_and_latencies() {
    use meshlens_tests::{now_ns, otlp_span, resource_spans};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let env = TestEnv::start().await;
    for n in 0..2 {
        let body = remote_write_body(&scrape("bookinfo-sidecar", n));
        post(&env, "/api/v1/write", "application/x-protobuf", body).await;
    }
    let side = |service: &str, version: &str, kind: SpanKind, id: u64, trace: u64| {
        let t0 = now_ns() - 2_000_000_000;
        let mut s = otlp_span(
            trace,
            id,
            id.is_multiple_of(2).then_some(id - 1),
            "GET /reviews",
            t0,
        );
        s.kind = kind as i32;
        s.end_time_unix_nano = t0 + 500_000_000;
        resource_spans(
            &[
                ("service.name", service),
                ("service.version", version),
                ("k8s.namespace.name", "bookinfo"),
            ],
            vec![s],
        )
    };
    let mut resource_spans = Vec::new();
    for trace in 1..=3u64 {
        resource_spans.push(side(
            "productpage",
            "v1",
            SpanKind::Client,
            2 * trace - 1,
            trace,
        ));
        resource_spans.push(side("reviews", "v2", SpanKind::Server, 2 * trace, trace));
    }
    let req = ExportTraceServiceRequest { resource_spans };
    post(
        &env,
        "/v1/traces",
        "application/x-protobuf",
        req.encode_to_vec(),
    )
    .await;
    let id = "service:bookinfo/productpage->service:bookinfo/reviews:http";
    let mut edge = Value::Null;
    for _ in 0..100 {
        let (_, g) = env.get_json("/api/graph?window=5m").await;
        edge = g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        if edge["sources"]["spans"]["requests"] == 3 && edge["stats"]["requests"] == 300 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(edge["sources"]["spans"]["requests"], 3, "{edge}");
    assert_eq!(edge["stats"]["requests"], 300, "the metrics' count: {edge}");
    assert_eq!(edge["stats"]["latency_source"], "metrics", "{edge}");
    let p99 = edge["stats"]["latency_ms"]["p99"].as_f64().unwrap();
    assert!(
        p99 < 400.0,
        "the histograms' latency, not the spans' 500 ms: {edge}"
    );
    env.stop().await;
}
