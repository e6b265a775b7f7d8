//! meshlens' own metrics exist from the first scrape: every family whose label values are known
//! before any event has its series at 0, so a dashboard panel shows 0, not "No data".

use meshlens_collector::metrics::metric_names;
use meshlens_tests::TestEnv;

/// Families labelled by the data (a limit, a rule, a denial's cause, a metric past its cap) or
/// by a configuration this test does not set (TLS, tokens files, the Redis quota backend, whose
/// error kinds start at 0 with it; the memory backend cannot fail): no series until one is known.
const LABELLED_BY_DATA: &[&str] = &[
    "meshlens_policy_quota_hits_total",
    "meshlens_policy_denials_total",
    "meshlens_policy_audits_total",
    "meshlens_policy_series_dropped_total",
    "meshlens_tls_reloads_total",
    "meshlens_tls_certificate_not_after_timestamp_seconds",
    "meshlens_auth_reloads_total",
    "meshlens_policy_backend_errors_total",
];

#[tokio::test]
async fn every_family_with_known_labels_has_series_from_the_first_scrape() {
    let env = TestEnv::start().await;
    let text = env.metrics_text().await;
    let has_sample = |name: &str| {
        text.lines().any(|l| {
            !l.starts_with('#')
                && l.split(['{', ' ']).next().is_some_and(|n| {
                    n == name
                        || n.strip_prefix(name)
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
                })
        })
    };
    let missing: Vec<String> = metric_names()
        .into_iter()
        .filter(|n| !LABELLED_BY_DATA.contains(&n.as_str()) && !has_sample(n))
        .collect();
    assert!(missing.is_empty(), "no series at start: {missing:?}");
    for line in [
        r#"meshlens_ingest_rejected_requests_total{protocol="zipkin",reason="overloaded"} 0"#,
        r#"meshlens_ingest_rejected_spans_total{protocol="otlp_http",reason="trace_too_large"} 0"#,
        r#"meshlens_ingest_rejected_metric_points_total{protocol="prom_remote_write",reason="no_name"} 0"#,
        r#"meshlens_listener_closed_connections_total{listener="otlp_grpc",reason="too_many_pings"} 0"#,
        r#"meshlens_topology_spans_total{outcome="expired"} 0"#,
        r#"meshlens_store_errors_total{operation="retention"} 0"#,
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    env.stop().await;
}
