//! Store write throughput alone (no receivers): `cargo run --release -p meshlens-storage --example write_bench [sqlite://file | postgres://…] [spans per commit] [commits]`
use std::time::Instant;

use meshlens_storage::{encode_batch, Store, StoreConfig};
use meshlens_topology::testing::{resource, SpanBuilder};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/write_bench.db".into());
    let per_commit: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let commits: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    let store = Store::connect(&StoreConfig {
        url,
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let resources: Vec<_> = (0..20)
        .map(|i| resource(&format!("svc-{i:02}"), Some("v1")))
        .collect();
    let t0 = 1_800_000_000_000_000_000u64;
    let batches: Vec<_> = (0..commits)
        .map(|c| {
            let spans: Vec<_> = (0..per_commit)
                .map(|i| {
                    let n = c * per_commit + i;
                    SpanBuilder::new(
                        (n / 5).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                        n + 1,
                        "x",
                        "GET /api/items/{id}",
                        t0 + n * 1000,
                    )
                    .resource(resources[(n % 20) as usize].clone())
                    .attr("http.request.method", "GET")
                    .attr("http.route", "/api/items/{id}")
                    .attr("url.path", format!("/api/items/{}", n % 10_000))
                    .attr("http.response.status_code", 200i64)
                    .attr(
                        "user_agent.original",
                        "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
                    )
                    .build()
                })
                .collect();
            encode_batch(&spans)
        })
        .collect();
    let started = Instant::now();
    for b in &batches {
        store.write(&[b]).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "dialect={} spans_per_commit={per_commit} commits={commits} spans_per_s={:.0}",
        store.dialect(),
        (per_commit * commits) as f64 / secs
    );
}
