//! Ingest over real sockets: every receiver, compression, limits, partial success, overload,
//! and a drain on shutdown.

use std::io::Write;
use std::time::Duration;

use meshlens_tests::*;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;

#[tokio::test]
async fn grpc_export_gzip_is_stored_and_readable() {
    let env = TestEnv::start().await;
    let mut client = env
        .grpc()
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let resp = client
        .export(trace_request("frontend", 1, 5))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.partial_success.is_none());
    let (status, body) = env.get_json(&format!("/api/traces/{}", trace_hex(1))).await;
    assert_eq!(status, 200);
    let spans = body["data"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 5);
    assert_eq!(
        body["data"][0]["processes"]["p1"]["serviceName"],
        "frontend"
    );
    assert_eq!(
        env.metric("meshlens_ingest_spans_total", "otlp_grpc").await,
        5.0
    );
    assert_eq!(
        env.metric("meshlens_store_spans_written_total", "").await,
        5.0
    );
    env.stop().await;
}

#[tokio::test]
async fn grpc_partial_success_keeps_the_good_spans() {
    let env = TestEnv::start().await;
    let mut req = trace_request("frontend", 2, 3);
    req.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1, 2, 3];
    let resp = env.grpc().await.export(req).await.unwrap().into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("trace id"),
        "{}",
        partial.error_message
    );
    let (_, body) = env.get_json(&format!("/api/traces/{}", trace_hex(2))).await;
    assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 2);
    assert_eq!(
        env.metric(
            "meshlens_ingest_rejected_spans_total",
            "reason=\"invalid_trace_id\""
        )
        .await,
        1.0
    );
    env.stop().await;
}

#[tokio::test]
async fn grpc_oversized_message_is_resource_exhausted() {
    let env = TestEnv::start_with(|c| c.ingest.max_message_bytes = 64 * 1024).await;
    let err = env
        .grpc()
        .await
        .export(trace_request("big", 3, 2_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // The server is fine afterwards.
    env.grpc()
        .await
        .export(trace_request("small", 4, 2))
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test]
async fn http_protobuf_json_gzip_and_chunked_bodies() {
    let env = TestEnv::start().await;
    let url = env.otlp_http("/v1/traces");
    // Protobuf.
    let body = trace_request("svc-proto", 10, 2).encode_to_vec();
    let r = env
        .http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    // JSON, gzip-compressed.
    let json = serde_json::to_vec(&trace_request("svc-json", 11, 2)).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&json).unwrap();
    let r = env
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    // Chunked: a streamed body has no content-length, as Envoy sends it.
    let body = trace_request("svc-chunked", 12, 2).encode_to_vec();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let r = env
        .http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for t in [10, 11, 12] {
        let (status, _) = env.get_json(&format!("/api/traces/{}", trace_hex(t))).await;
        assert_eq!(status, 200, "trace {t}");
    }
    let (_, services) = env.get_json("/api/services").await;
    assert_eq!(
        services["data"],
        serde_json::json!(["svc-chunked", "svc-json", "svc-proto"])
    );
    env.stop().await;
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(chunks)
}

mod futures_core_stream {
    pub use tokio_stream::Stream;
}

#[tokio::test]
async fn http_bad_input_gets_clear_errors() {
    let env = TestEnv::start_with(|c| c.ingest.max_message_bytes = 32 * 1024).await;
    let url = env.otlp_http("/v1/traces");
    let post = |ct: &'static str, body: Vec<u8>| {
        env.http
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };

    let r = post("application/x-protobuf", vec![0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let status = tonic_types::Status::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
    assert!(status.message.contains("protobuf"), "{}", status.message);

    let r = post("application/json", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("json"), "{body}");

    let r = post("text/plain", b"hello".to_vec()).await.unwrap();
    assert_eq!(r.status(), 415);

    let r = post(
        "application/x-protobuf",
        trace_request("big", 20, 1_000).encode_to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 413);

    let r = env
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(b"{}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // None of that hurt: a good export still goes through.
    let r = post(
        "application/x-protobuf",
        trace_request("ok", 21, 2).encode_to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        env.metric(
            "meshlens_ingest_rejected_requests_total",
            "reason=\"malformed\""
        )
        .await
            >= 2.0
    );
    assert_eq!(
        env.metric(
            "meshlens_ingest_rejected_requests_total",
            "reason=\"too_large\""
        )
        .await,
        1.0
    );
    env.stop().await;
}

#[tokio::test]
async fn zipkin_post_is_accepted_with_202() {
    let env = TestEnv::start().await;
    // A recent timestamp: retention (72h) would delete an old one at once.
    let body = format!(
        r#"[{{"traceId":"463ac35c9f6413ad48485a3953bb6124","id":"a2fb4a1d1a96d312","name":"get /api","kind":"SERVER",
        "timestamp":{},"duration":1500,"localEndpoint":{{"serviceName":"zfront"}},"tags":{{"http.status_code":"200"}}}}]"#,
        now_ns() / 1_000
    );
    let r = env
        .post(env.zipkin("/api/v2/spans"), "application/json", body)
        .await;
    assert_eq!(r.status(), 202);
    let (status, trace) = env
        .get_json("/api/traces/463ac35c9f6413ad48485a3953bb6124")
        .await;
    assert_eq!(status, 200);
    assert_eq!(trace["data"][0]["spans"][0]["duration"], 1500);
    let r = env
        .http
        .post(env.zipkin("/api/v2/spans"))
        .header("content-type", "application/json")
        .body("[{]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // No content type at all is refused: a browser page can post that without a preflight.
    let r = env
        .http
        .post(env.zipkin("/api/v2/spans"))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    env.stop().await;
}

/// Holds SQLite's write lock from outside, so the writer stalls and the queue fills up.
async fn lock_sqlite(env: &TestEnv) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let url = env.config.storage.database_url.clone();
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

#[tokio::test]
async fn a_full_queue_answers_retryable_errors_and_recovers() {
    let env = TestEnv::start_with(|c| c.ingest.queue_spans = 100).await;
    let mut lock = lock_sqlite(&env).await;
    // This export waits in the queue behind the lock (its ack comes after the commit).
    let mut client = env.grpc().await;
    let pending = tokio::spawn(async move { client.export(trace_request("a", 30, 80)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.metric("meshlens_ingest_queue_depth", "").await, 80.0);

    // The next ones do not fit: gRPC UNAVAILABLE with RetryInfo, HTTP 429 with Retry-After.
    let err = env
        .grpc()
        .await
        .export(trace_request("b", 31, 40))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let retry = err.get_details_retry_info().expect("RetryInfo detail");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    let r = env
        .http
        .post(env.otlp_http("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(trace_request("c", 32, 40).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    // A batch bigger than the whole queue can never fit: that is not retryable.
    let err = env
        .grpc()
        .await
        .export(trace_request("d", 33, 101))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    // Release the lock: the queued export commits and is acknowledged, and ingest recovers.
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    pending
        .await
        .unwrap()
        .expect("queued export acknowledged after commit");
    env.grpc()
        .await
        .export(trace_request("b", 31, 40))
        .await
        .unwrap();
    assert_eq!(env.metric("meshlens_ingest_queue_depth", "").await, 0.0);
    assert_eq!(
        env.metric(
            "meshlens_ingest_rejected_requests_total",
            "reason=\"overloaded\""
        )
        .await,
        2.0
    );
    let (status, _) = env
        .get_json(&format!("/api/traces/{}", trace_hex(31)))
        .await;
    assert_eq!(status, 200);
    env.stop().await;
}

#[tokio::test]
async fn shutdown_commits_what_was_acknowledged_and_queued() {
    let env = TestEnv::start().await;
    let mut lock = lock_sqlite(&env).await;
    let mut handles = Vec::new();
    for t in 0..5u64 {
        let mut client = env.grpc().await;
        handles.push(tokio::spawn(async move {
            client.export(trace_request("s", 100 + t, 10)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = env.config.storage.database_url.clone();
    let running = {
        let mut env = env;
        let r = env.running.take().unwrap();
        (r, env)
    };
    let (r, env) = running;
    let shutdown = tokio::spawn(async move { r.shutdown().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    shutdown.await.unwrap().unwrap();
    for h in handles {
        h.await
            .unwrap()
            .expect("every in-flight export is acknowledged during the drain");
    }
    // Reopen the file: all 50 spans are there.
    let store = meshlens_storage::Store::connect(&meshlens_storage::StoreConfig {
        url,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(store.count_spans().await.unwrap(), 50);
    drop(env);
}

#[tokio::test]
async fn web_endpoints_answer() {
    let env = TestEnv::start().await;
    assert_eq!(
        env.http
            .get(env.web("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.http
            .get(env.web("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, body) = env
        .get_json("/api/traces/0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], 404);
    let (status, _) = env.get_json("/api/traces/not-hex").await;
    assert_eq!(status, 400);
    env.stop().await;
}

/// One receiver slot and a 300 ms deadline: a stalled client would block all ingest.
async fn one_slot_short_deadline() -> TestEnv {
    TestEnv::start_with(|c| {
        c.ingest.body_timeout = Duration::from_millis(300);
        c.ingest.max_concurrent_requests = 1;
    })
    .await
}

/// After the stalled client was cut off, its slot is free for a normal export, and the refusal
/// was counted once.
async fn slot_is_free_and_timeout_counted(env: TestEnv) {
    env.grpc()
        .await
        .export(trace_request("after", 40, 2))
        .await
        .unwrap();
    let timeouts = env
        .metric(
            "meshlens_ingest_rejected_requests_total",
            "reason=\"timeout\"",
        )
        .await;
    assert_eq!(timeouts, 1.0);
    env.stop().await;
}

/// A client that sends headers and then trickles (or stops sending) its body is cut off with a
/// retryable 503, and its slot goes back to the others.
#[tokio::test]
async fn a_stalled_http_body_times_out_with_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = one_slot_short_deadline().await;
    let addr = env.running().addrs.otlp_http;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    slot_is_free_and_timeout_counted(env).await;
}

/// The same over gRPC: a stream that sends part of its message and stops gets DEADLINE_EXCEEDED
/// (with RetryInfo), and its slot goes back to the others.
#[tokio::test]
async fn a_stalled_grpc_export_gets_deadline_exceeded() {
    let env = one_slot_short_deadline().await;
    let (answer, mut body, conn) = open_grpc_export(env.running().addrs.otlp_grpc).await;
    // A gRPC frame that announces 1,000 bytes, of which only 10 ever come.
    let mut frame = vec![0u8, 0, 0, 0x03, 0xe8];
    frame.extend_from_slice(&[0u8; 10]);
    body.send_data(bytes::Bytes::from(frame), false).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer, not a hang")
        .unwrap();
    assert_eq!(
        answer.headers()["grpc-status"],
        "4",
        "{:?}",
        answer.headers()
    );
    assert!(answer.headers().contains_key("grpc-status-details-bin"));
    conn.abort();
    slot_is_free_and_timeout_counted(env).await;
}

/// A body that trickles in slower than the minimum rate is refused (retryably) once the grace
/// has passed, and while such bodies are read they hold no permit: a normal export with one
/// permit in all goes through beside them.
#[tokio::test]
async fn slow_bodies_are_cut_and_hold_no_permit() {
    let env = TestEnv::start_with(|c| {
        c.ingest.max_concurrent_requests = 1;
        c.ingest.body_min_rate = 1000;
        c.ingest.body_min_rate_grace = Duration::from_millis(500);
    })
    .await;
    let addr = env.running().addrs.otlp_http;
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(open_post(addr, "/v1/traces", 100_000, b"ab").await);
    }
    // The only permit is free: a normal export goes through while the slow ones are read.
    let started = std::time::Instant::now();
    let r = env.post_otlp(&trace_request("normal", 1, 1)).await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The slow ones are answered 503 once the grace is over.
    for mut s in slow {
        let mut answer = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer),
        )
        .await;
        assert!(read.is_ok(), "the slow body was not cut");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after"),
            "{answer}"
        );
    }
    env.wait_for_metric(
        "meshlens_ingest_rejected_requests_total",
        "protocol=\"otlp_http\",reason=\"too_slow\"",
        3.0,
    )
    .await;
    assert_eq!(env.metric("meshlens_ingest_buffered_bytes", "").await, 0.0);
    env.stop().await;
}

/// A declared length holds nothing of the shared budget until its bytes arrive: clients that
/// declare large bodies and send none cannot refuse everyone else.
#[tokio::test]
async fn declared_lengths_alone_take_no_budget() {
    let env = TestEnv::start_with(|c| {
        c.ingest.max_message_bytes = 1 << 20;
        c.ingest.max_buffered_bytes = 1 << 20;
    })
    .await;
    let addr = env.running().addrs.otlp_http;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(open_post(addr, "/v1/traces", 1 << 20, b"").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = env.post_otlp(&trace_request("beside", 1, 2)).await;
    assert_eq!(r.status(), 200);
    drop(idle);
    env.stop().await;
}

/// The span limits: a span with 20,000 attributes, a 2 MiB value and 300 events is stored, cut
/// to the limits, with what was cut in its dropped counts (the trace API shows them as
/// warnings) and in meshlens' metrics. A trace past `max_bytes_per_trace` has its further spans
/// refused in the partial success, the spans of other traces beside them kept.
#[tokio::test]
async fn oversized_spans_are_cut_and_oversized_traces_refused() {
    use opentelemetry_proto::tonic::trace::v1::span::Event;
    let env = TestEnv::start_with(|c| c.ingest.max_bytes_per_trace = 200_000).await;
    let mut client = env.grpc().await;
    let t0 = now_ns();
    let mut huge = otlp_span(1, 1, None, "huge", t0);
    huge.attributes
        .insert(0, str_kv("blob", &"x".repeat(2 << 20)));
    for i in 0..20_000 {
        huge.attributes.push(str_kv(&format!("k{i}"), "v"));
    }
    let sent = huge.attributes.len();
    huge.dropped_attributes_count = 5; // what the sender dropped itself
    huge.events = (0..300)
        .map(|i| Event {
            time_unix_nano: t0 + i,
            name: format!("e{i}"),
            ..Default::default()
        })
        .collect();
    let resp = client
        .export(request("frontend", vec![huge]))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.partial_success.is_none(), "the span is kept");
    let (status, body) = env.get_json(&format!("/api/traces/{}", trace_hex(1))).await;
    assert_eq!(status, 200);
    let span = &body["data"][0]["spans"][0];
    let tags = span["tags"].as_array().unwrap();
    let blob = tags.iter().find(|t| t["key"] == "blob").expect("the blob");
    assert_eq!(blob["value"].as_str().unwrap().len(), 16 << 10);
    // The first 256 are kept: the blob, the two of otlp_span, then k0 to k252.
    assert!(tags.iter().any(|t| t["key"] == "k252"));
    assert!(
        !tags.iter().any(|t| t["key"] == "k253"),
        "256 attributes kept"
    );
    assert_eq!(span["logs"].as_array().unwrap().len(), 256);
    let warnings: Vec<&str> = span["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let dropped = sent - 256 + 5;
    assert_eq!(
        warnings,
        vec![
            format!("{dropped} attributes dropped"),
            "44 events dropped".to_string()
        ]
    );
    let cuts = |field: &str| {
        format!("meshlens_ingest_span_limit_cuts_total{{field=\"{field}\",protocol=\"otlp_grpc\"}}")
    };
    let text = env.metrics_text().await;
    for (field, n) in [("attributes", sent - 256), ("values", 1), ("events", 44)] {
        assert!(
            text.contains(&format!("{} {n}\n", cuts(field))),
            "{field}:\n{text}"
        );
    }

    // Trace 2: two spans of 150 KB each against 200,000 bytes; trace 3 beside them.
    let fat = |id: u64| {
        let mut s = otlp_span(2, id, None, "fat", t0);
        for i in 0..10 {
            s.attributes
                .push(str_kv(&format!("part{i}"), &"y".repeat(15_000)));
        }
        s
    };
    let resp = client
        .export(request(
            "frontend",
            vec![fat(1), fat(2), otlp_span(3, 1, None, "small", t0)],
        ))
        .await
        .unwrap()
        .into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("max_bytes_per_trace"),
        "{}",
        partial.error_message
    );
    let (_, body) = env.get_json(&format!("/api/traces/{}", trace_hex(2))).await;
    assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 1);
    let (status, _) = env.get_json(&format!("/api/traces/{}", trace_hex(3))).await;
    assert_eq!(status, 200);
    assert_eq!(
        env.metric(
            "meshlens_ingest_rejected_spans_total",
            "reason=\"trace_too_large\""
        )
        .await,
        1.0
    );
    env.stop().await;
}
