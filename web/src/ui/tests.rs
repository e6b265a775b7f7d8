//! The pages in-process: what they show, that data-plane text is escaped, the headers.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use meshlens_topology::testing::{resource, SpanBuilder};
use meshlens_topology::SpanKind;
use tower::ServiceExt;

use crate::tests::{edge_minute, now_ns, state};
use crate::{app, WebState};

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn page(st: &WebState, uri: &str) -> Page {
    let resp = app(st.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// `client` calls `server` (at `version`) `n` times, `failing` of them with a 503.
fn calls(st: &WebState, client: &str, server: &str, version: &str, n: u64, failing: u64) {
    let mut spans = Vec::new();
    let t0 = now_ns() - 5_000_000_000;
    for i in 0..n {
        let status = if i < failing { 503i64 } else { 200 };
        let trace = 1000 + i + (version.len() as u64) * 100;
        spans.push(
            SpanBuilder::new(trace, 1, client, "GET /x", t0)
                .resource(resource(client, Some("v1")))
                .kind(SpanKind::Client)
                .duration_ns(3_000_000)
                .attr("http.response.status_code", status)
                .build(),
        );
        spans.push(
            SpanBuilder::new(trace, 2, server, "GET /x", t0)
                .resource(resource(server, Some(version)))
                .parent(1)
                .duration_ns(2_000_000)
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
async fn services_page_shows_red_per_service_and_version() {
    let (st, _dir) = state(true).await;
    calls(&st, "front", "work", "v1", 8, 0);
    calls(&st, "front", "work", "v2", 2, 1);
    let p = page(&st, "/services?window=1m").await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(
        p.body
            .contains(r#"<tr class="service" data-service="work">"#),
        "{}",
        p.body
    );
    assert!(p.body.contains(r#"data-service="work" data-version="v1""#));
    assert!(p.body.contains(r#"data-service="work" data-version="v2""#));
    // 1 failure in 10 calls into work: 10.0%, failing health (5xx ≥ 10%); v2 alone 50%.
    assert!(p.body.contains(">10.0%<"), "{}", p.body);
    assert!(p.body.contains(">50.0%<"));
    assert!(p
        .body
        .contains(r#"<span class="health failure">failure</span>"#));
    assert!(p.body.contains(">80% of calls<") && p.body.contains(">20% of calls<"));
    // The window selector marks the current window.
    assert!(p
        .body
        .contains(r#"<a href="?window=1m" aria-current="true">1m</a>"#));
}

#[tokio::test]
async fn data_plane_text_is_escaped() {
    let (st, _dir) = state(true).await;
    let evil = r#"<img src=x onerror="alert(1)">"#;
    calls(&st, "front", evil, r#"v1"><script>alert(2)</script>"#, 3, 0);
    let p = page(&st, "/services?window=1m").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(!p.body.contains("<img"), "{}", p.body);
    assert!(!p.body.contains("<script"), "{}", p.body);
    assert!(
        p.body
            .contains("&#60;img src=x onerror=&#34;alert(1)&#34;&#62;"),
        "{}",
        p.body
    );
}

/// A service named like a path stays one path segment in links: the browser would otherwise
/// resolve `/service/../api/policy` to `/api/policy`.
#[tokio::test]
async fn a_service_named_like_a_path_stays_a_name_in_links() {
    let (st, _dir) = state(true).await;
    calls(&st, "front", "../api/policy", "v1", 3, 0);
    calls(&st, "..", ".", "v22", 2, 0);
    let p = page(&st, "/services?window=1m").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body
            .contains(r#"href="/service/..%2Fapi%2Fpolicy?window=1m""#),
        "{}",
        p.body
    );
    assert!(!p.body.contains(r#"href="/service/../"#), "{}", p.body);
    let own = page(&st, "/service/..%2Fapi%2Fpolicy?window=1m").await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert!(own.body.contains("../api/policy"));
    // `.` and `..` cannot be path segments at all: their links put the name in the query, and
    // that page is theirs.
    for name in ["..", "."] {
        let href = format!(r#"href="/service?name={name}&#38;window=1m""#);
        assert!(p.body.contains(&href), "{href} in {}", p.body);
        let own = page(&st, &format!("/service?name={name}&window=1m")).await;
        assert_eq!(own.status, StatusCode::OK, "{}", own.body);
        let title = format!(r#"id="service-name">{name}</h1>"#);
        assert!(own.body.contains(&title), "{}", own.body);
    }
    // On `.`'s page, its caller `..` links the same way.
    let p = page(&st, "/service?name=.").await;
    assert!(p.body.contains(r#"href="/service?name=..""#), "{}", p.body);
    assert_eq!(page(&st, "/service").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let (st, _dir) = state(true).await;
    for uri in [
        "/services",
        "/policy",
        "/static/app.css",
        "/api/graph",
        "/nope",
    ] {
        let p = page(&st, uri).await;
        let csp = p.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{uri}"
        );
        assert!(!csp.contains("unsafe-inline"), "{uri}");
        assert_eq!(
            p.headers[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{uri}"
        );
    }
}

#[tokio::test]
async fn assets_redirects_and_errors() {
    let (st, _dir) = state(true).await;
    let css = page(&st, "/static/app.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert!(css.body.contains(".health.failure"));
    let missing = page(&st, "/static/nope.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("no such file: nope.js"));
    let root = page(&st, "/").await;
    assert_eq!(root.status, StatusCode::SEE_OTHER);
    assert_eq!(root.headers[header::LOCATION], "/topology");
    let bad = page(&st, "/services?window=2d").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        bad.body
            .contains("window: expected 1m, 5m, 15m or 1h, got &#34;2d&#34;"),
        "{}",
        bad.body
    );
}

#[tokio::test]
async fn policy_page_without_config_says_so() {
    let (st, _dir) = state(true).await;
    let p = page(&st, "/policy").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("No quota rules."));
    assert!(p.body.contains("No denials yet."));
    assert!(p.body.contains(r#"<span class="health healthy">ok</span>"#));
    assert!(p
        .body
        .contains(r#"<a href="/policy" aria-current="page">Policy</a>"#));
}

#[tokio::test]
async fn trace_search_renders_results_escaped_and_rejects_bad_tags() {
    use meshlens_storage::encode_batch;
    let (st, _dir) = state(true).await;
    let evil = "<b>svc</b>";
    let t0 = now_ns() - 60_000_000_000;
    let spans = vec![
        SpanBuilder::new(77, 1, evil, "GET <i>/x</i>", t0)
            .resource(resource(evil, Some("v1")))
            .duration_ns(5_000_000)
            .build(),
        SpanBuilder::new(77, 2, "db-client", "SELECT", t0 + 1_000_000)
            .resource(resource("db-client", None))
            .parent(1)
            .duration_ns(2_000_000)
            .error("boom")
            .build(),
    ];
    st.store.write(&[&encode_batch(&spans)]).await.unwrap();
    let p = page(&st, "/traces?service=%3Cb%3Esvc%3C%2Fb%3E&lookback=1h").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(
        p.body
            .contains(r#"<p class="muted" id="result-count">1 trace</p>"#),
        "{}",
        p.body
    );
    assert!(
        !p.body.contains("<b>svc") && !p.body.contains("<i>"),
        "{}",
        p.body
    );
    assert!(p
        .body
        .contains("&#60;b&#62;svc&#60;/b&#62;: GET &#60;i&#62;/x&#60;/i&#62;"));
    assert!(p.body.contains("5.00 ms"), "the trace's duration");
    assert!(
        p.body.contains(r#"<span class="health failure">1</span>"#),
        "one error"
    );
    // The chosen service is selected in the form.
    assert!(p
        .body
        .contains(r#"<option value="&#60;b&#62;svc&#60;/b&#62;" selected>"#));
    // A custom range around the trace finds it; one before it does not; a reversed one is refused.
    let local = |offset_s: i64| {
        let secs = (t0 / 1_000_000_000) as i64 + offset_s;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        humantime::format_rfc3339_seconds(t)
            .to_string()
            .trim_end_matches('Z')
            .to_string()
    };
    let custom = |from: &str, to: &str| {
        format!("/traces?service=db-client&lookback=custom&from={from}&to={to}")
    };
    let around = page(&st, &custom(&local(-60), &local(60))).await;
    assert!(
        around.body.contains(r#"id="result-count">1 trace<"#),
        "{}",
        around.body
    );
    let before = page(&st, &custom(&local(-600), &local(-300))).await;
    assert!(
        before.body.contains(r#"id="result-count">0 traces<"#),
        "{}",
        before.body
    );
    let reversed = page(&st, &custom(&local(60), &local(-60))).await;
    assert_eq!(reversed.status, StatusCode::BAD_REQUEST);
    assert!(reversed.body.contains("to must be after from"));
    let bad = page(&st, "/traces?tagtext=oops").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("tags: expected key=value"));
    let first = page(&st, "/traces").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        !first.body.contains("result-count"),
        "no search before the form is sent"
    );
    let trace = page(&st, "/trace/4d").await;
    assert_eq!(trace.status, StatusCode::OK);
    assert!(trace
        .body
        .contains(r#"data-trace-id="0000000000000000000000000000004d""#));
    assert_eq!(
        page(&st, "/trace/xyz").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn service_page_shows_red_history_peers_and_versions() {
    use meshlens_topology::graph::{ConnectionType, EdgeKey, Endpoint, NodeKey};
    let (st, _dir) = state(true).await;
    calls(&st, "front", "work", "v1", 8, 0);
    calls(&st, "front", "work", "v2", 2, 1);
    calls(&st, "work", "meet", "v1", 5, 0);
    // Ten stored minutes of front → work in the last hour, the 4th with failures.
    let now_minute = (now_ns() / 60_000_000_000) as i64;
    let key = EdgeKey {
        client: Endpoint {
            node: NodeKey::service(None, "front"),
            version: Some("v1".into()),
        },
        server: Endpoint {
            node: NodeKey::service(None, "work"),
            version: Some("v1".into()),
        },
        connection: ConnectionType::Http,
    };
    let rows: Vec<_> = (1..=10)
        .map(|i| {
            let failures = if i == 4 { 30 } else { 0 };
            edge_minute(now_minute - i, &key, 60 * i as u64, failures)
        })
        .collect();
    st.store.write_edge_minutes(&rows).await.unwrap();

    let p = page(&st, "/service/work?window=1m").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(
        p.body.contains(r#"<p class="big" id="stat-rps">0.17</p>"#),
        "10 calls in a minute: {}",
        p.body
    );
    assert!(p
        .body
        .contains(r#"<p class="big" id="stat-errors">10.0%</p>"#));
    // Three charts of ten points each; the busiest minute (600 calls) reads 10 requests/s.
    for chart in ["rps", "errors", "p95"] {
        assert!(
            p.body.contains(&format!(r#"data-chart="{chart}""#)),
            "{chart}"
        );
    }
    let points: Vec<&str> = p
        .body
        .split(r#"<polyline points=""#)
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(points[0].split(' ').count(), 10, "{}", points[0]);
    assert_eq!(points[1].split(' ').count(), 10);
    assert!(p.body.contains("max 10.00"), "{}", p.body);
    assert!(p.body.contains("max 12.5%"), "30 failures of 240");
    assert_eq!(points[2], "", "no latency stored, no p95 line");
    assert_eq!(
        p.body.matches(r#"class="dot""#).count(),
        20,
        "a dot per point"
    );
    // Versions, callers and callees from the live window.
    assert!(
        p.body.contains(r#"<tr data-version="v1">"#)
            && p.body.contains(r#"<tr data-version="v2">"#)
    );
    assert!(
        p.body.contains(r#"<a href="/service/front">front</a>"#),
        "{}",
        p.body
    );
    assert!(p.body.contains(r#"<a href="/service/meet">meet</a>"#));
    // Unknown services are a 404 page.
    let missing = page(&st, "/service/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.body.contains("no service &#34;nope&#34;"),
        "{}",
        missing.body
    );
}
