//! Service graph benchmark: prints
//! - topology update throughput (spans/s through pairing and windowed statistics, one thread),
//! - `GET /api/graph` latency (in-process through the router: snapshot, DTOs, JSON) for a mesh of
//!   `services` services and `edges` edges,
//! - memory per edge and per pending pair (resident set growth).
//!
//! Run pinned to one core: `taskset -c 0 cargo run --release -p meshlens-web --example graph_bench`
//! Arguments: [services (1000)] [edges (10000)] [spans in millions (2)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use meshlens_storage::{Store, StoreConfig};
use meshlens_topology::graph::{PairingConfig, Topology};
use meshlens_topology::testing::SpanBuilder;
use meshlens_topology::{Attributes, Resource, Span, SpanKind};
use tower::ServiceExt;

const S: u64 = 1_000_000_000;

fn resource(service: usize, version: usize) -> Arc<Resource> {
    let mut a = Attributes::new();
    a.push("service.name", format!("svc-{service:04}"));
    a.push("service.namespace", format!("ns-{}", service % 10));
    a.push("service.version", format!("v{version}"));
    a.push(
        "service.instance.id",
        format!("svc-{service:04}-pod-{version}"),
    );
    a.push("telemetry.sdk.language", "go");
    Arc::new(Resource::new(a))
}

/// One call as an instrumented client and server report it, with the attributes SDKs send.
fn call(trace: u64, id: u64, client: &Arc<Resource>, server: &Arc<Resource>, i: u64) -> [Span; 2] {
    let status = if i.is_multiple_of(20) { 503i64 } else { 200 };
    let c = SpanBuilder::new(trace, id, "", "GET /api", 1_000)
        .resource(client.clone())
        .kind(SpanKind::Client)
        .duration_ns(400_000 + (i % 97) * 10_000)
        .attr("http.request.method", "GET")
        .attr("http.response.status_code", status)
        .attr("server.address", "svc")
        .attr("url.full", "http://svc/api")
        .attr("network.protocol.version", "1.1")
        .build();
    let s = SpanBuilder::new(trace, id + 1, "", "GET /api", 1_100)
        .resource(server.clone())
        .parent(id)
        .duration_ns(300_000 + (i % 89) * 10_000)
        .attr("http.request.method", "GET")
        .attr("http.response.status_code", status)
        .attr("http.route", "/api")
        .attr("url.path", "/api")
        .attr("user_agent.original", "bench/1.0")
        .build();
    [c, s]
}

/// Calls over `edges` (client, server) pairs among `services` services (two versions each).
fn mesh_spans(services: usize, edges: usize, calls: usize) -> Vec<Span> {
    let res: Vec<[Arc<Resource>; 2]> = (0..services)
        .map(|s| [resource(s, 1), resource(s, 2)])
        .collect();
    let pairs: Vec<(usize, usize)> = (0..edges)
        .map(|e| (e % services, (e / services * 7 + e * 13 + 1) % services))
        .collect();
    let mut spans = Vec::with_capacity(calls * 2);
    for i in 0..calls as u64 {
        let (c, s) = pairs[i as usize % pairs.len()];
        let [a, b] = call(
            i + 1,
            1,
            &res[c][0],
            &res[s][i.is_multiple_of(5) as usize],
            i,
        );
        spans.push(a);
        spans.push(b);
    }
    spans
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn throughput(spans: &[Span], passes: usize) {
    let mut t = Topology::default();
    let mut now = 1_800_000_000 * S;
    let started = Instant::now();
    let mut calls = 0;
    for _ in 0..passes {
        for batch in spans.chunks(512) {
            calls += t.observe(batch, now).len();
            now += S / 100;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = spans.len() * passes;
    println!(
        "topology_update spans={n} seconds={secs:.3} spans_per_s={:.0} calls={calls} edges={}",
        n as f64 / secs,
        t.edge_count()
    );
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn api_latency(services: usize, edges: usize) {
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let rss0 = rss_bytes();
    let mut t = Topology::default();
    // Twenty calls per edge, spread over five minutes of slots (each slot adds memory).
    let spans = mesh_spans(services, edges, edges * 20);
    let start = now_ns() - 300 * S;
    for (i, batch) in spans.chunks(edges * 2).enumerate() {
        t.observe(batch, start + i as u64 * 15 * S);
    }
    drop(spans);
    let edge_count = t.edge_count();
    let rss_edges = rss_bytes().saturating_sub(rss0);
    println!(
        "graph_memory services={services} version_edges={edge_count} rss_growth_mb={:.1} bytes_per_version_edge={} sketch_heap_bytes_per_version_edge={}",
        rss_edges as f64 / 1e6,
        rss_edges / edge_count.max(1),
        t.heap_bytes() / edge_count.max(1)
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&StoreConfig {
        url: format!("sqlite://{}", dir.path().join("b.db").display()),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let cache = Arc::new(meshlens_web::GraphCache::new(Arc::new(Mutex::new(t))));
    let app = meshlens_web::app(meshlens_web::WebState {
        store: Arc::new(store),
        registry: prometheus::Registry::new(),
        exposition: Arc::new(|| Box::new(std::iter::empty())),
        ready: {
            let r = Arc::new(meshlens_storage::Readiness::default());
            r.set_started();
            r
        },
        graph: cache.clone(),
        policy: Arc::new(meshlens_policy::PolicyEngine::new(Default::default()).unwrap()),
        reload_policy: Arc::new(|| "unchanged".to_string()),
        auth: meshlens_web::auth::WebAuth::open(),
    });
    // What the refresher pays each second for a window someone watches: the whole snapshot and
    // its JSON.
    let started = Instant::now();
    let _ = cache
        .get(meshlens_topology::graph::Window::M5)
        .await
        .unwrap();
    let mut builds = vec![started.elapsed().as_secs_f64() * 1000.0];
    for _ in 0..9 {
        let started = Instant::now();
        cache.refresh_due();
        builds.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    builds.sort_by(f64::total_cmp);
    println!(
        "graph_build window=5m builds=10 p50_ms={:.1} max_ms={:.1}",
        percentile(&builds, 0.5),
        builds[builds.len() - 1]
    );
    // The server's refresher, as `meshlens serve` runs it: once a second, on its own thread.
    let refresher = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(std::time::Duration::from_secs(1));
                cache.refresh_due();
            }
        })
    };
    for query in [
        "window=5m",
        "window=1h",
        "window=5m&versions=false",
        "window=5m&service=svc-0042&depth=2",
        "window=5m&namespace=ns-3",
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        let mut shape = (0, 0);
        // The first request for a query that nobody asked before (what it costs cold), then
        // 50 more once the refresher has seen it (what a polling client gets).
        let (_, first_ms) = timed_get(&app, query).await;
        std::thread::sleep(std::time::Duration::from_millis(1200));
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (body, ms) = timed_get(&app, query).await;
            times.push(ms);
            size = body.len();
            if shape == (0, 0) {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                shape = (
                    v["nodes"].as_array().map_or(0, Vec::len),
                    v["edges"].as_array().map_or(0, Vec::len),
                );
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "api_graph {query} nodes={} edges={} first_ms={first_ms:.1} then requests=50 p50_ms={:.1} p99_ms={:.1} body_kb={}",
            shape.0,
            shape.1,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            size / 1024
        );
    }
    drop(refresher);
}

/// `GET /api/graph?{query}` through the router: the body and the milliseconds it took.
async fn timed_get(app: &axum::Router, query: &str) -> (axum::body::Bytes, f64) {
    let started = Instant::now();
    let resp = app
        .clone()
        .oneshot(
            Request::get(format!("/api/graph?{query}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (body, started.elapsed().as_secs_f64() * 1000.0)
}

fn pending_memory(n: usize) {
    let res = resource(1, 1);
    let spans: Vec<Span> = (0..n as u64)
        .map(|i| {
            SpanBuilder::new(i + 1, 1, "", "GET /api", 1_000)
                .resource(res.clone())
                .kind(SpanKind::Client)
                .build()
        })
        .collect();
    let mut t = Topology::new(
        PairingConfig {
            ttl_ns: 3600 * S,
            max_pending: n,
        },
        Default::default(),
    );
    let rss0 = rss_bytes();
    t.observe(&spans, 1_800_000_000 * S);
    let grown = rss_bytes().saturating_sub(rss0);
    println!(
        "pending_memory pending={} rss_growth_mb={:.1} bytes_per_pending_span={}",
        t.pending(),
        grown as f64 / 1e6,
        grown / t.pending().max(1)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = args.first().copied().unwrap_or(1000);
    let edges = args.get(1).copied().unwrap_or(10_000);
    let millions = args.get(2).copied().unwrap_or(2);
    pending_memory(100_000);
    // Throughput over a 20-service mesh with 60 edges, as the ingest benchmark's mesh.
    let spans = mesh_spans(20, 60, 250_000);
    throughput(&spans, (millions * 2).max(1));
    drop(spans);
    api_latency(services, edges).await;
}
