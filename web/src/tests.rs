//! Handler tests in-process (`oneshot`), on a temporary SQLite store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meshlens_storage::{encode_batch, Store, StoreConfig};
use meshlens_topology::testing::{resource, SpanBuilder};
use meshlens_topology::{AttrValue, SpanKind};
use serde_json::Value;
use tower::ServiceExt;

use crate::api::parse_search_for_tests as parse_search;
use crate::{app, WebState};

const T0: u64 = 1_700_000_000_000_000_000;

pub(crate) async fn state(ready: bool) -> (WebState, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&StoreConfig {
        url: format!("sqlite://{}", dir.path().join("w.db").display()),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let spans = vec![
        SpanBuilder::new(1, 1, "front", "GET /", T0)
            .resource(resource("front", Some("v1")))
            .attr("http.status_code", 200i64)
            .attr("ok", true)
            .build(),
        SpanBuilder::new(1, 2, "front", "call work", T0 + 10)
            .resource(resource("front", Some("v1")))
            .parent(1)
            .kind(SpanKind::Client)
            .attr("peer", AttrValue::Array(vec![AttrValue::Int(1)]))
            .error("boom")
            .build(),
    ];
    store.write(&[&encode_batch(&spans)]).await.unwrap();
    let st = WebState {
        store: Arc::new(store),
        registry: prometheus::Registry::new(),
        exposition: Arc::new(|| {
            Box::new(
                ["# first\n", "# second\n"]
                    .into_iter()
                    .map(|c| c.as_bytes().to_vec()),
            )
        }),
        ready: {
            let r = Arc::new(meshlens_storage::Readiness::default());
            if ready {
                r.set_started();
            }
            r
        },
        graph: Default::default(),
        policy: Arc::new(meshlens_policy::PolicyEngine::new(Default::default()).unwrap()),
        reload_policy: Arc::new(|| "unchanged".to_string()),
        auth: crate::auth::WebAuth::open(),
    };
    (st, dir)
}

async fn get(st: &WebState, uri: &str) -> (StatusCode, Value) {
    let resp = app(st.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn trace_by_id_has_jaeger_shape() {
    let (st, _dir) = state(true).await;
    let id = meshlens_topology::testing::trace_id(1).to_hex();
    let (status, body) = get(
        &st,
        &format!("/api/traces/{id}?start=1700000000000&end=1700000001000"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total"], 1);
    assert_eq!(body["errors"], Value::Null);
    let trace = &body["data"][0];
    assert_eq!(trace["traceID"], id);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    let root = &spans[0];
    assert_eq!(root["operationName"], "GET /");
    assert_eq!(root["startTime"], T0 / 1000);
    assert_eq!(root["duration"], 1000);
    assert_eq!(root["references"], serde_json::json!([]));
    assert_eq!(root["processID"], "p1");
    let tags = root["tags"].as_array().unwrap();
    assert!(
        tags.contains(&serde_json::json!({"key":"http.status_code","type":"int64","value":200}))
    );
    assert!(tags.contains(&serde_json::json!({"key":"ok","type":"bool","value":true})));
    assert!(tags.contains(&serde_json::json!({"key":"span.kind","type":"string","value":"server"})));
    let child = &spans[1];
    assert_eq!(child["references"][0]["refType"], "CHILD_OF");
    assert_eq!(child["references"][0]["spanID"], root["spanID"]);
    let ctags = child["tags"].as_array().unwrap();
    assert!(ctags.contains(&serde_json::json!({"key":"error","type":"bool","value":true})));
    assert!(ctags.contains(
        &serde_json::json!({"key":"otel.status_description","type":"string","value":"boom"})
    ));
    assert!(ctags.contains(&serde_json::json!({"key":"peer","type":"string","value":"[1]"})));
    let process = &trace["processes"]["p1"];
    assert_eq!(process["serviceName"], "front");
    assert_eq!(
        process["tags"],
        serde_json::json!([{"key":"service.version","type":"string","value":"v1"}])
    );
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let (st, _dir) = state(true).await;
    let (status, body) = get(&st, "/api/traces/0123456789abcdef").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errors"][0]["code"], 404);
    let (status, _) = get(&st, "/api/traces/xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn services_operations_and_search() {
    let (st, _dir) = state(true).await;
    let (_, body) = get(&st, "/api/services").await;
    assert_eq!(body["data"], serde_json::json!(["front"]));
    let (_, body) = get(&st, "/api/services/front/operations").await;
    assert_eq!(body["data"], serde_json::json!(["GET /", "call work"]));
    let (_, body) = get(&st, "/api/operations?service=front&spanKind=client").await;
    assert_eq!(
        body["data"],
        serde_json::json!([{"name":"call work","spanKind":"client"}])
    );
    let (status, _) = get(&st, "/api/operations").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let start = T0 / 1000 - 1;
    let end = T0 / 1000 + 1_000;
    let (_, body) = get(
        &st,
        &format!(
            "/api/traces?service=front&tags=%7B%22ok%22%3A%22true%22%7D&start={start}&end={end}"
        ),
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = get(
        &st,
        &format!("/api/traces?service=front&minDuration=2ms&start={start}&end={end}"),
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 0);
    let (status, _) = get(&st, "/api/traces?service=front&minDuration=fast").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (st, _dir) = state(false).await;
    let resp = app(st.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    st.ready.set_started();
    let resp = app(st.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // A store that cannot commit: 503 with the reason, until it can.
    st.ready.store_failed("database is locked");
    let resp = app(st.clone())
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 10)
        .await
        .unwrap();
    assert_eq!(
        &body[..],
        b"not ready: the store cannot commit: database is locked\n"
    );
    st.ready.store_ok();
    let resp = app(st.clone())
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app(st)
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"# first\n# second\n", "every chunk, in order");
}

#[test]
fn search_parameters_parse_like_jaeger() {
    let q = parse_search("service=a&operation=GET%20%2F&tags=%7B%22http.status_code%22%3A500%7D&tag=k%3Av&minDuration=1.5ms&maxDuration=1h30m&limit=5&lookback=2h", 10_000_000_000).unwrap();
    assert_eq!(q.service.as_deref(), Some("a"));
    assert_eq!(q.operation.as_deref(), Some("GET /"));
    assert_eq!(
        q.tags,
        vec![
            ("http.status_code".to_string(), "500".to_string()),
            ("k".into(), "v".into())
        ]
    );
    assert_eq!(q.duration_min_ns, Some(1_500_000));
    assert_eq!(q.duration_max_ns, Some(5_400_000_000_000));
    assert_eq!(q.limit, 5);
    assert_eq!(q.start_max_ns, 10_000_000_000_000);
    assert_eq!(q.start_min_ns, (10_000_000_000 - 7_200_000_000) * 1000);
    assert!(parse_search("tags=notjson", 0).is_err());
    assert!(parse_search("limit=-1", 0).is_err());
}

/// One stored minute of `key`: `requests` calls, `failures` of them 5xx.
pub(crate) fn edge_minute(
    minute: i64,
    key: &meshlens_topology::graph::EdgeKey,
    requests: u64,
    failures: u64,
) -> meshlens_storage::EdgeMinute {
    use meshlens_topology::graph::{Counts, Stats};
    meshlens_storage::EdgeMinute {
        minute,
        key: key.clone(),
        stats: Stats {
            counts: Counts {
                requests,
                failures,
                http_5xx: failures,
                ..Counts::default()
            },
            ..Stats::default()
        },
    }
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// front (v1) calls work v1 three times and work v2 once; the v2 call fails.
fn feed_graph(st: &WebState) {
    let mut spans = Vec::new();
    for i in 0..4u64 {
        let version = if i == 3 { "v2" } else { "v1" };
        let status = if i == 3 { 503i64 } else { 200 };
        spans.push(
            SpanBuilder::new(10 + i, 1, "front", "GET /work", T0)
                .resource(resource("front", Some("v1")))
                .kind(SpanKind::Client)
                .duration_ns(2_000_000)
                .attr("http.status_code", status)
                .build(),
        );
        spans.push(
            SpanBuilder::new(10 + i, 2, "work", "GET /work", T0)
                .resource(resource("work", Some(version)))
                .parent(1)
                .duration_ns(1_500_000)
                .attr("http.response.status_code", status)
                .build(),
        );
    }
    st.graph
        .topology()
        .lock()
        .unwrap()
        .observe(&spans, now_ns());
}

#[tokio::test]
async fn graph_api_shows_edges_versions_and_health() {
    let (st, _dir) = state(true).await;
    feed_graph(&st);
    let (status, body) = get(&st, "/api/graph?window=1m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["window"], "1m");
    assert_eq!(body["window_seconds"], 60);
    let edges = body["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 1, "{body}");
    let e = &edges[0];
    assert_eq!(e["source"], "service:front");
    assert_eq!(e["target"], "service:work");
    assert_eq!(e["connection_type"], "http");
    assert_eq!(e["stats"]["requests"], 4);
    assert_eq!(e["stats"]["failures"], 1);
    assert_eq!(e["stats"]["http_5xx"], 1);
    assert_eq!(e["sources"]["spans"]["requests"], 4);
    assert_eq!(e["sources"]["spans"]["failures"], 1);
    assert_eq!(e["sources"]["metrics"]["requests"], 0);
    assert_eq!(e["sources"]["policy"]["denied"], 0);
    assert_eq!(e["health"], "failure");
    let p99 = e["stats"]["latency_ms"]["p99"].as_f64().unwrap();
    assert!((p99 - 1.5).abs() < 0.015, "{p99}");
    assert_eq!(e["versions"].as_array().unwrap().len(), 2);
    let work = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "work")
        .unwrap();
    let shares: Vec<(String, f64)> = work["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_string(),
                v["share"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares, vec![("v1".into(), 0.75), ("v2".into(), 0.25)]);

    let (_, filtered) = get(&st, "/api/graph?service=nobody").await;
    assert_eq!(filtered["nodes"].as_array().unwrap().len(), 0);
    let (_, flat) = get(&st, "/api/graph?versions=false").await;
    assert!(flat["edges"][0]["versions"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn graph_api_rejects_bad_parameters() {
    let (st, _dir) = state(true).await;
    for uri in [
        "/api/graph?window=2m",
        "/api/graph?depth=-1",
        "/api/graph?depth=1000",
        "/api/graph?versions=maybe",
        "/api/graph?end=yesterday",
    ] {
        let (status, body) = get(&st, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            body["errors"][0]["msg"].as_str().unwrap().len() > 5,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn services_list_keeps_jaeger_shape_and_adds_red() {
    let (st, _dir) = state(true).await;
    feed_graph(&st);
    let (status, body) = get(&st, "/api/services?window=5m").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"],
        serde_json::json!(["front"]),
        "names from the store"
    );
    let red = body["services"].as_array().unwrap();
    let work = red.iter().find(|s| s["name"] == "work").unwrap();
    assert_eq!(work["stats"]["requests"], 4);
    assert!((work["stats"]["error_ratio"].as_f64().unwrap() - 0.25).abs() < 1e-9);
    assert_eq!(work["health"], "failure");
}

#[tokio::test]
async fn past_windows_come_from_the_per_minute_history() {
    use meshlens_storage::EdgeMinute;
    use meshlens_topology::graph::{ConnectionType, EdgeKey, Endpoint, NodeKey};
    let (st, _dir) = state(true).await;
    let end = |name: &str, v: &str| Endpoint {
        node: NodeKey::service(Some("shop"), name),
        version: Some(v.into()),
    };
    let key = EdgeKey {
        client: end("front", "v1"),
        server: end("work", "v2"),
        connection: ConnectionType::Http,
    };
    let minute = |m: i64, requests: u64, failures: u64| edge_minute(m, &key, requests, failures);
    // 29,000,000 is a minute of 2025; the window ending at 29,000,060 holds minutes 29,000,000..=59.
    let rows: Vec<EdgeMinute> = (0..61)
        .map(|i| minute(29_000_000 + i, 10, i as u64 % 2))
        .collect();
    st.store.write_edge_minutes(&rows).await.unwrap();
    let end_s: u64 = 29_000_060 * 60;
    let (status, body) = get(&st, &format!("/api/graph?window=1h&end={end_s}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let e = &body["edges"][0];
    assert_eq!(e["source"], "service:shop/front");
    assert_eq!(
        e["stats"]["requests"], 600,
        "60 minutes of 10, not the 61st"
    );
    assert_eq!(e["stats"]["failures"], 30);
    assert!((e["stats"]["rps"].as_f64().unwrap() - 600.0 / 3600.0).abs() < 1e-9);
    let (_, body) = get(&st, &format!("/api/graph?window=1m&end={}", end_s * 1000)).await;
    assert_eq!(
        body["edges"][0]["stats"]["requests"], 10,
        "milliseconds are understood"
    );
    let (_, body) = get(&st, "/api/graph?window=5m&end=2001-01-01T00:00:00Z").await;
    assert_eq!(body["edges"], serde_json::json!([]), "nothing then");
}

#[tokio::test]
async fn dependencies_sum_calls_between_services_over_the_lookback() {
    use meshlens_topology::graph::{ConnectionType, EdgeKey, Endpoint, NodeKey};
    let (st, _dir) = state(true).await;
    let key = |client: &str, cv: &str, server: NodeKey, connection| EdgeKey {
        client: Endpoint {
            node: NodeKey::service(Some("shop"), client),
            version: Some(cv.into()),
        },
        server: Endpoint {
            node: server,
            version: None,
        },
        connection,
    };
    let row = |minute: i64, key: &EdgeKey, requests: u64| edge_minute(minute, key, requests, 0);
    let work = NodeKey::service(Some("shop"), "work");
    let front_v1 = key("front", "v1", work.clone(), ConnectionType::Http);
    let front_v2 = key("front", "v2", work, ConnectionType::Http);
    let db = key(
        "work",
        "v1",
        NodeKey::service(None, "orders"),
        ConnectionType::Database,
    );
    let m0 = 29_000_000;
    let mut rows = Vec::new();
    for m in 0..10 {
        rows.push(row(m0 + m, &front_v1, 4));
        rows.push(row(m0 + m, &front_v2, 1));
        rows.push(row(m0 + m, &db, 2));
    }
    st.store.write_edge_minutes(&rows).await.unwrap();
    // The five minutes before minute m0+10: versions summed into one service pair.
    let end_ms = (m0 + 10) * 60_000;
    let (status, body) = get(
        &st,
        &format!("/api/dependencies?endTs={end_ms}&lookback=300000"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        serde_json::json!([
            {"parent": "front", "child": "work", "callCount": 25},
            {"parent": "work", "child": "orders", "callCount": 10},
        ])
    );
    assert_eq!(body["total"], 2);
    // Jaeger's default lookback is a day: all ten minutes.
    let (_, body) = get(&st, &format!("/api/dependencies?endTs={end_ms}")).await;
    assert_eq!(body["data"][0]["callCount"], 50);
    // A lookback past `max_search_range` (a week) would read every stored minute: refused.
    let (status, body) = get(
        &st,
        &format!(
            "/api/dependencies?endTs={end_ms}&lookback={}",
            8 * 86_400_000
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0]["msg"]
        .as_str()
        .unwrap()
        .contains("max_search_range"));
    let (status, body) = get(&st, "/api/dependencies?endTs=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0]["msg"]
        .as_str()
        .unwrap()
        .contains("endTs: not a number"));
}

#[tokio::test]
async fn history_of_a_node_or_an_edge_per_minute() {
    use meshlens_topology::graph::{ConnectionType, EdgeKey, Endpoint, NodeKey};
    let (st, _dir) = state(true).await;
    let now_minute = (now_ns() / 60_000_000_000) as i64;
    let key = |client: &str, version: &str| EdgeKey {
        client: Endpoint {
            node: NodeKey::service(Some("shop"), client),
            version: Some("v1".into()),
        },
        server: Endpoint {
            node: NodeKey::service(Some("shop"), "work"),
            version: Some(version.into()),
        },
        connection: ConnectionType::Http,
    };
    let row = |minute: i64, key: EdgeKey, requests: u64, failures: u64| {
        edge_minute(minute, &key, requests, failures)
    };
    let mut rows = Vec::new();
    for i in 1..=3 {
        rows.push(row(now_minute - i, key("front", "v1"), 10, 0));
        rows.push(row(now_minute - i, key("front", "v2"), 5, 1));
        rows.push(row(now_minute - i, key("admin", "v1"), 2, 0));
    }
    rows.push(row(now_minute - 90, key("front", "v1"), 99, 0)); // outside the hour
    st.store.write_edge_minutes(&rows).await.unwrap();
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();

    let (status, body) = get(
        &st,
        &format!("/api/graph/history?node={}", enc("service:shop/work")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let points = body["minutes"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{body}");
    assert_eq!(points[0]["at"], (now_minute - 3) * 60);
    assert_eq!(
        points[0]["requests"], 17,
        "all callers and versions into work"
    );
    assert_eq!(points[0]["failures"], 1);
    assert_eq!(points[0]["p95_ms"], Value::Null);
    assert_eq!(
        body["to"].as_i64().unwrap() - body["from"].as_i64().unwrap(),
        3600
    );

    let edge = "service:shop/admin->service:shop/work:http";
    let (_, body) = get(&st, &format!("/api/graph/history?edge={}", enc(edge))).await;
    let requests: Vec<u64> = body["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(requests, [2, 2, 2]);
    let (_, body) = get(
        &st,
        &format!(
            "/api/graph/history?node={}&minutes=120",
            enc("service:shop/work")
        ),
    )
    .await;
    assert_eq!(body["minutes"].as_array().unwrap().len(), 4);
    for bad in ["/api/graph/history", "/api/graph/history?node=x&minutes=0"] {
        let (status, _) = get(&st, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn filtered_answers_follow_the_refreshed_snapshot() {
    let (st, _dir) = state(true).await;
    feed_graph(&st);
    let uri = "/api/graph?window=1m&service=work";
    let (_, before) = get(&st, uri).await;
    assert_eq!(before["edges"][0]["stats"]["requests"], 4);
    feed_graph(&st);
    // The refresher rebuilds the window and, ahead of the next request, the filtered answer.
    st.graph.refresh_due();
    let (_, after) = get(&st, uri).await;
    assert_eq!(after["edges"][0]["stats"]["requests"], 8);
}
