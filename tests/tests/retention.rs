//! Tiered retention in a running meshlens: past `retention_full`, a commit keeps its traces with
//! an error, its slowest and the minute's samples; the others go, and the metrics say so.

use std::time::Duration;

use meshlens_tests::*;

#[tokio::test]
async fn past_retention_full_only_the_traces_that_matter_stay() {
    let env = TestEnv::start_with(|c| {
        c.storage.retention_full = Duration::from_secs(1);
        c.storage.retention_interval = Duration::from_secs(1);
    })
    .await;
    // Ten one-span traces of one operation in one export: trace 203 fails, trace 207 is slow.
    let t0 = now_ns();
    let spans = (200..210u64)
        .map(|t| {
            let mut s = otlp_span(t, t, None, "GET /cart", t0 + t);
            if t == 203 {
                s.status = Some(opentelemetry_proto::tonic::trace::v1::Status {
                    code: 2,
                    ..Default::default()
                });
            }
            if t == 207 {
                s.end_time_unix_nano = s.start_time_unix_nano + 900_000_000;
            }
            s
        })
        .collect();
    let resp = env.post_otlp(&request("shop", spans)).await;
    assert_eq!(resp.status(), 200);
    for t in 200..210u64 {
        let (status, _) = env.get_json(&format!("/api/traces/{}", trace_hex(t))).await;
        assert_eq!(status, 200, "trace {t} before");
    }
    env.wait_for_metric("meshlens_retention_thinned_spans_total", "", 1.0)
        .await;
    let mut kept = Vec::new();
    for t in 200..210u64 {
        let (status, _) = env.get_json(&format!("/api/traces/{}", trace_hex(t))).await;
        if status == 200 {
            kept.push(t);
        }
    }
    // The error, the slowest and two samples (the default rules).
    assert!(kept.contains(&203) && kept.contains(&207), "{kept:?}");
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert_eq!(
        env.metric("meshlens_retention_thinned_spans_total", "")
            .await,
        6.0
    );
    for (reason, n) in [("error", 1.0), ("slow", 1.0), ("sample", 2.0)] {
        assert_eq!(
            env.metric(
                "meshlens_retention_kept_traces_total",
                &format!("reason=\"{reason}\"")
            )
            .await,
            n,
            "{reason}"
        );
    }
    env.stop().await;
}
