//! Readiness tells the truth: while the store cannot commit (here a PostgreSQL of the test's own,
//! stopped), `/readyz` answers 503 with the reason, `meshlens_store_writable` is 0 and exports get
//! a retryable error; once it can commit again, ready again (seen by the store probe, with no
//! export needed), and every acknowledged span is there.

use std::time::Duration;

use meshlens_tests::certs::Ca;
use meshlens_tests::servers::OwnPostgres;
use meshlens_tests::{trace_hex, trace_request, TestEnv};

#[tokio::test]
async fn readyz_follows_a_postgresql_that_goes_away_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("meshlens test CA");
    ca.write(dir.path(), "ca");
    let pg = OwnPostgres::start(&ca, &ca.server(1), false);
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        dir.path().join("ca.crt").display()
    );
    let env = TestEnv::start_with(|c| {
        c.storage.database_url = url;
        c.storage.probe_interval = Duration::from_millis(200);
    })
    .await;
    let mut client = env.grpc().await;
    client.export(trace_request("steady", 1, 3)).await.unwrap();
    assert_eq!(env.readyz().await.0, 200);

    pg.stop();
    let why = env.wait_ready(503).await;
    assert!(why.contains("the store cannot commit"), "{why}");
    assert_eq!(env.metric("meshlens_store_writable", "").await, 0.0);
    let refused = client
        .export(trace_request("steady", 2, 3))
        .await
        .expect_err("an export while the store is gone");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    pg.start_again();
    env.wait_ready(200).await;
    assert_eq!(env.metric("meshlens_store_writable", "").await, 1.0);
    client.export(trace_request("steady", 3, 3)).await.unwrap();
    for (trace, spans) in [(1, 3), (3, 3)] {
        let (status, body) = env
            .get_json(&format!("/api/traces/{}", trace_hex(trace)))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), spans);
    }
    env.stop().await;
}

/// The graph thread is supervised: a panic on one of its inputs is counted and logged, and the
/// graph goes on counting the calls after it.
#[tokio::test]
async fn the_graph_thread_survives_a_panic() {
    let env = TestEnv::start().await;
    let mut client = env.grpc().await;
    client.export(trace_request("before", 1, 3)).await.unwrap();
    env.wait_for_metric("traces_spanmetrics_calls_total", "service=\"before\"", 3.0)
        .await;
    env.running().graph.inject_panic();
    env.wait_for_metric("meshlens_panics_total", "thread=\"graph\"", 1.0)
        .await;
    client.export(trace_request("after", 2, 3)).await.unwrap();
    env.wait_for_metric("traces_spanmetrics_calls_total", "service=\"after\"", 3.0)
        .await;
    assert_eq!(
        env.metric("traces_spanmetrics_calls_total", "service=\"before\"")
            .await,
        3.0,
        "the graph kept what it had"
    );
    assert_eq!(env.metric("meshlens_panics_total", "").await, 1.0);
    env.stop().await;
}
