//! The memory limiter, over the real listeners. This test binary allocates through the counting
//! allocator, as the meshlens binary does, so a ballast the test allocates moves the heap the
//! limiter reads: past the soft limit every receiver refuses exports with a retryable error
//! before reading them; past the hard limit the graph's backlog is shed too, while every span
//! acknowledged before is in the store; under the limits again, exports are taken again.

use std::alloc::System;

use meshlens_collector::memory::{heap_bytes, Counting};
use meshlens_tests::{open_grpc_export, trace_hex, trace_request, TestEnv};

#[global_allocator]
static ALLOCATOR: Counting<System> = Counting(System);

const MIB: usize = 1 << 20;

/// `n` bytes of heap, zeroed by the kernel on first touch (never touched here), so the ballast
/// costs the machine nothing while the allocator counts all of it.
fn ballast(n: usize) -> Vec<u8> {
    vec![0u8; n]
}

#[tokio::test]
async fn past_the_soft_limit_exports_are_refused_and_past_the_hard_one_the_graph_sheds() {
    ALLOCATOR.enable();
    let base = heap_bytes().expect("counting");
    // Soft 256 MiB above the heap now, hard 512 MiB above it.
    let hard_mib = (base / MIB + 512) as u64;
    let env = TestEnv::start_with(|c| {
        c.memory.enabled = true;
        c.memory.limit_mib = hard_mib;
        c.memory.spike_limit_mib = 256;
    })
    .await;
    let mut grpc = env.grpc().await;
    grpc.export(trace_request("normal", 1, 3)).await.unwrap();
    assert_eq!(env.metric("meshlens_memory_pressure", "").await, 0.0);

    // Past the soft limit: every receiver refuses, retryably, and says why.
    let soft = ballast(300 * MIB);
    let refused = grpc
        .export(trace_request("soft", 2, 3))
        .await
        .expect_err("an export past the soft limit");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("memory limit"), "{refused:?}");
    let r = env.post_otlp(&trace_request("soft", 3, 3)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = env
        .post(
            env.zipkin("/api/v2/spans"),
            "application/json",
            r#"[{"traceId":"00000000000000000000000000000004","id":"0000000000000001","name":"x","timestamp":1,"duration":1,"localEndpoint":{"serviceName":"soft"}}]"#,
        )
        .await;
    assert_eq!(r.status(), 503);
    for protocol in ["otlp_grpc", "otlp_http", "zipkin"] {
        let labels = format!("protocol=\"{protocol}\",reason=\"memory_limit\"");
        assert_eq!(
            env.metric("meshlens_ingest_rejected_requests_total", &labels)
                .await,
            1.0,
            "{protocol}"
        );
    }
    env.wait_for_metric("meshlens_memory_pressure", "", 1.0)
        .await;
    assert_eq!(
        env.metric("meshlens_memory_shed_bytes_total", "").await,
        0.0
    );
    refused_after_the_body_is_sent(&env).await;
    drop(soft);
    grpc.export(trace_request("normal", 5, 3)).await.unwrap();

    // Past the hard limit: what waits for the graph is shed. The graph's lock is held so that
    // two exports wait for the graph thread when the heap passes the limit.
    let topology = env.running().graph.topology();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _held = topology.lock().unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
    });
    is_locked.recv().unwrap();
    grpc.export(trace_request("first", 6, 3)).await.unwrap();
    grpc.export(trace_request("shed", 7, 3)).await.unwrap();
    grpc.export(trace_request("shed", 8, 3)).await.unwrap();
    let hard = ballast(600 * MIB);
    release.send(()).unwrap();
    holder.join().unwrap();
    env.wait_for_metric("meshlens_topology_spans_total", "outcome=\"dropped\"", 6.0)
        .await;
    assert!(env.metric("meshlens_memory_shed_bytes_total", "").await > 0.0);
    env.wait_for_metric("meshlens_memory_pressure", "", 2.0)
        .await;
    drop(hard);

    // Under the limits again: taken and counted on the graph; nothing acknowledged was lost.
    grpc.export(trace_request("after", 9, 3)).await.unwrap();
    env.wait_for_metric("traces_spanmetrics_calls_total", "service=\"after\"", 3.0)
        .await;
    assert_eq!(
        env.metric("traces_spanmetrics_calls_total", "service=\"shed\"")
            .await,
        0.0,
        "the shed spans are off the graph"
    );
    for trace in [1, 5, 6, 7, 8, 9] {
        let (status, body) = env
            .get_json(&format!("/api/traces/{}", trace_hex(trace)))
            .await;
        assert_eq!(status, 200, "trace {trace}: {body}");
        assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 3);
    }
    env.assert_not_stored(&[2, 3]).await;
    env.stop().await;
}

/// A refusal waits for the rest of the body (read and dropped): an HTTP/2 client still sending
/// when the answer came would see its stream reset after it, and some clients (hyper's) report
/// that reset ("broken pipe") instead of the retryable status they were sent.
async fn refused_after_the_body_is_sent(env: &TestEnv) {
    use prost::Message;
    let message = trace_request("soft", 10, 3).encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let (answer, mut body, conn) = open_grpc_export(env.running().addrs.otlp_grpc).await;
    let (first, rest) = frame.split_at(10);
    body.send_data(bytes::Bytes::copy_from_slice(first), false)
        .unwrap();
    // Time for an answer and a reset to arrive, were they sent before the body's end.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    body.send_data(bytes::Bytes::copy_from_slice(rest), true)
        .expect("the stream is still open: the refusal waits for the body");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(
        answer.headers()["grpc-status"],
        "14",
        "{:?}",
        answer.headers()
    );
    conn.abort();
}
