//! Prometheus remote write in: `POST /api/v1/write` on the OTLP/HTTP port, with the edge cases
//! remote write produces (retried batches, out-of-order samples, counter resets, staleness
//! markers, very large requests) and bad bodies.

use meshlens_collector::prom::proto::{Label, Sample, TimeSeries, WriteRequest};
use meshlens_tests::TestEnv;
use prost::Message;
use serde_json::Value;

/// `istio_requests_total` as reviews' sidecar reports calls from productpage, with `code`.
fn requests(code: &str, samples: &[(f64, i64)]) -> TimeSeries {
    requests_flagged(code, "-", samples)
}

/// The same, with Envoy's `response_flags`.
fn requests_flagged(code: &str, flags: &str, samples: &[(f64, i64)]) -> TimeSeries {
    let labels = [
        ("__name__", "istio_requests_total"),
        ("job", "kubernetes-pods"),
        ("instance", "10.0.0.7:15020"),
        ("namespace", "bookinfo"),
        ("pod", "reviews-v2-abc"),
        ("reporter", "destination"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "bookinfo"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "v2"),
        ("destination_workload", "reviews-v2"),
        ("destination_service_namespace", "bookinfo"),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", code),
        ("response_flags", flags),
    ];
    TimeSeries {
        labels: labels
            .iter()
            .map(|(name, value)| Label {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|(value, timestamp)| Sample {
                value: *value,
                timestamp: *timestamp,
            })
            .collect(),
    }
}

fn body(series: Vec<TimeSeries>) -> Vec<u8> {
    let raw = WriteRequest { timeseries: series }.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap()
}

async fn post(env: &TestEnv, body: Vec<u8>) -> (u16, String) {
    let r = env
        .http
        .post(env.otlp_http("/api/v1/write"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn edge(env: &TestEnv) -> Option<Value> {
    let (_, g) = env.get_json("/api/graph?window=1m").await;
    g["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == "service:bookinfo/productpage")
        .cloned()
}

/// Waits until the edge's requests reach `n`, then checks they stay there a moment.
async fn requests_settle_at(env: &TestEnv, n: u64) -> Value {
    for _ in 0..100 {
        if edge(env).await.is_some_and(|e| e["stats"]["requests"] == n) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let e = edge(env).await.expect("the edge");
    assert_eq!(e["stats"]["requests"], n, "{e}");
    e
}

const T: i64 = 1_780_000_000_000;

#[tokio::test]
async fn remote_write_counts_each_call_once_through_retries_disorder_resets_and_staleness() {
    let env = TestEnv::start().await;
    // The first sample of each series is its baseline.
    let (status, text) = post(
        &env,
        body(vec![
            requests("200", &[(1000.0, T)]),
            requests("503", &[(10.0, T)]),
        ]),
    )
    .await;
    assert_eq!((status, text.as_str()), (204, ""));
    // 15 s later: 30 more 200s and 2 more 503s.
    let second = body(vec![
        requests("200", &[(1030.0, T + 15_000)]),
        requests("503", &[(12.0, T + 15_000)]),
    ]);
    assert_eq!(post(&env, second.clone()).await.0, 204);
    let e = requests_settle_at(&env, 32).await;
    assert_eq!(e["stats"]["http_5xx"], 2);
    assert_eq!(e["stats"]["mtls_pct"], 100.0);
    assert_eq!(e["versions"][0]["target_version"], "v2");
    // The same request again (a retry whose answer was lost) adds nothing; so does an older
    // sample arriving late.
    assert_eq!(post(&env, second).await.0, 204);
    assert_eq!(
        post(&env, body(vec![requests("200", &[(1020.0, T + 10_000)])]))
            .await
            .0,
        204
    );
    // A staleness marker (the pod went away) is no value; the proxy restarts and its counter
    // starts again from 5: a reset counts the new value whole.
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    assert_eq!(
        post(
            &env,
            body(vec![requests(
                "200",
                &[(stale, T + 30_000), (5.0, T + 45_000)]
            )])
        )
        .await
        .0,
        204
    );
    requests_settle_at(&env, 37).await;
    assert_eq!(
        env.metric("meshlens_topology_late_points_total", "").await,
        3.0,
        "two retried samples and one out of order"
    );
    assert_eq!(
        env.metric(
            "meshlens_ingest_stale_markers_total",
            "protocol=\"prom_remote_write\""
        )
        .await,
        1.0
    );
    assert_eq!(
        env.metric(
            "meshlens_ingest_metric_series_total",
            "protocol=\"prom_remote_write\""
        )
        .await,
        8.0
    );
    // Two label sets, checked once each, and counted by id after their first request.
    assert_eq!(
        env.metric("meshlens_ingest_checked_label_sets", "").await,
        2.0
    );
    assert_eq!(env.metric("meshlens_topology_known_series", "").await, 2.0);
    env.stop().await;
}

#[tokio::test]
async fn bad_remote_write_bodies_get_clear_errors_and_good_series_beside_bad_ones_count() {
    let env = TestEnv::start().await;
    let send = |ct: &'static str, enc: &'static str, b: Vec<u8>| {
        let req = env
            .http
            .post(env.otlp_http("/api/v1/write"))
            .header("content-type", ct)
            .header("content-encoding", enc)
            .body(b);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, t) = send(
        "application/x-protobuf",
        "snappy",
        b"not snappy at all".to_vec(),
    )
    .await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("snappy"), "{t}");
    let garbage = snap::raw::Encoder::new()
        .compress_vec(&[0xff, 0xff, 0xff, 0x07, 0x01])
        .unwrap();
    let (s, t) = send("application/x-protobuf", "snappy", garbage).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("protobuf"), "{t}");
    let (s, t) = send(
        "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        "snappy",
        body(vec![]),
    )
    .await;
    assert_eq!(s, 415, "remote write 2.0 is not spoken: {t}");
    // gzip, which other writers use, is taken; a gzip that is not is refused.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &WriteRequest::default().encode_to_vec()).unwrap();
    let (s, t) = send("application/x-protobuf", "gzip", gz.finish().unwrap()).await;
    assert_eq!(s, 204, "{t}");
    let (s, t) = send("application/x-protobuf", "gzip", b"not gzip".to_vec()).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("gzip"), "{t}");
    // A series without a name beside a good one: the good one counts, the answer names the bad.
    // (After a series the graph does not read, left undecoded: the place still counts it.)
    let mut nameless = requests("200", &[(1.0, T)]);
    nameless.labels.remove(0);
    let mut unread = requests("200", &[(1.0, T)]);
    unread.labels[0].value = "go_goroutines".into();
    let (s, t) = send(
        "application/x-protobuf",
        "snappy",
        body(vec![unread, requests("200", &[(100.0, T)]), nameless]),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        t.contains("timeseries[2]: a series without a __name__ label"),
        "{t}"
    );
    assert_eq!(
        send(
            "application/x-protobuf",
            "snappy",
            body(vec![requests("200", &[(140.0, T + 15_000)])])
        )
        .await
        .0,
        204
    );
    requests_settle_at(&env, 40).await;
    assert_eq!(
        env.metric(
            "meshlens_ingest_rejected_metric_points_total",
            "protocol=\"prom_remote_write\",reason=\"no_name\""
        )
        .await,
        1.0
    );
    // A series whose labels were taken before is still checked: its samples' times each time,
    // and a bad label set each time it comes.
    let (s, t) = send(
        "application/x-protobuf",
        "snappy",
        body(vec![requests("200", &[(150.0, -1)])]),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        t.contains("timeseries[0]: a sample with a negative timestamp"),
        "{t}"
    );
    let mut twice = requests("200", &[(1.0, T)]);
    twice.labels.push(twice.labels[1].clone());
    for _ in 0..2 {
        let (s, t) = send(
            "application/x-protobuf",
            "snappy",
            body(vec![twice.clone()]),
        )
        .await;
        assert_eq!(s, 400);
        assert!(t.contains("a label name twice"), "{t}");
    }
    for (reason, n) in [("bad_timestamp", 1.0), ("duplicate_label", 2.0)] {
        let labels = format!("protocol=\"prom_remote_write\",reason=\"{reason}\"");
        assert_eq!(
            env.metric("meshlens_ingest_rejected_metric_points_total", &labels)
                .await,
            n,
            "{reason}"
        );
    }
    // A body that decompresses past the limit is refused before it is decompressed.
    let huge = snap::raw::Encoder::new()
        .compress_vec(&vec![0u8; 40 << 20])
        .unwrap();
    let (s, t) = send("application/x-protobuf", "snappy", huge).await;
    assert_eq!(s, 413, "{t}");
    env.stop().await;
}

#[tokio::test]
async fn a_request_of_100000_series_is_taken_whole() {
    let env = TestEnv::start().await;
    // The labels the graph needs, and one that makes each series its own.
    let keep = [
        "__name__",
        "reporter",
        "source_canonical_service",
        "source_workload_namespace",
        "destination_canonical_service",
        "destination_workload",
        "destination_service_namespace",
        "response_code",
    ];
    let many = |v: f64, t: i64| {
        body(
            (0..100_000)
                .map(|i| {
                    let mut s = requests("200", &[(v, t)]);
                    s.labels.retain(|l| keep.contains(&l.name.as_str()));
                    s.labels.push(Label {
                        name: "pod".into(),
                        value: format!("p{i}"),
                    });
                    s
                })
                .collect(),
        )
    };
    let (s, t) = post(&env, many(10.0, T)).await;
    assert_eq!((s, t.as_str()), (204, ""));
    // The first may still wait for the graph ([graph] queue_bytes): a 503 then, which Prometheus
    // retries, as here (bounded).
    let second = many(11.0, T + 15_000);
    let mut s = 0;
    for _ in 0..100 {
        s = post(&env, second.clone()).await.0;
        if s != 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(s, 204);
    requests_settle_at(&env, 100_000).await;
    assert_eq!(
        env.metric(
            "meshlens_ingest_metric_points_total",
            "protocol=\"prom_remote_write\""
        )
        .await,
        200_000.0
    );
    env.stop().await;
}

#[tokio::test]
async fn envoys_response_flags_are_counted_by_name() {
    let env = TestEnv::start().await;
    let scrape = |t: i64, uf: f64, uh: f64, uo: f64| {
        body(vec![
            requests_flagged("503", "UF", &[(uf, t)]),
            requests_flagged("503", "UH,URX", &[(uh, t)]),
            requests_flagged("503", "UO", &[(uo, t)]),
        ])
    };
    assert_eq!(post(&env, scrape(T, 5.0, 1.0, 7.0)).await.0, 204);
    assert_eq!(post(&env, scrape(T + 15_000, 9.0, 3.0, 9.0)).await.0, 204);
    let e = requests_settle_at(&env, 8).await;
    assert_eq!(e["stats"]["http_5xx"], 8);
    assert_eq!(e["stats"]["overflows"], 2, "UO is an overflow, not a flag");
    assert_eq!(
        e["stats"]["response_flags"],
        serde_json::json!({"UF": 4, "UH": 2, "URX": 2}),
        "{e}"
    );
    env.stop().await;
}

/// A remote write body slower than the minimum rate is cut once the grace has passed (503 with
/// Retry-After, which Prometheus retries), not held for the whole body timeout.
#[tokio::test]
async fn a_trickling_remote_write_is_cut_at_the_minimum_rate() {
    use tokio::io::AsyncReadExt;
    let env = TestEnv::start_with(|c| {
        c.ingest.body_min_rate = 1000;
        c.ingest.body_min_rate_grace = std::time::Duration::from_millis(300);
    })
    .await;
    let started = std::time::Instant::now();
    let mut slow = meshlens_tests::open_post(
        env.running().addrs.otlp_http,
        "/api/v1/write",
        100_000,
        b"ab",
    )
    .await;
    let mut answer = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_string(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the slow body was not cut");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    env.wait_for_metric(
        "meshlens_ingest_rejected_requests_total",
        "protocol=\"prom_remote_write\",reason=\"too_slow\"",
        1.0,
    )
    .await;
    env.stop().await;
}
