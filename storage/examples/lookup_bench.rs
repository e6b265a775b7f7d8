//! Trace by id at scale, for 64-bit trace ids (Zipkin's B3 and older Jaeger clients send them; the
//! first 8 bytes of the 16 are zero) beside 128-bit ones: stores TRACES traces of each kind, 5 spans
//! each, in commits of 4,096 spans, then looks up 2,000 of each kind by id and prints the latency.
//! `cargo run --release -p meshlens-storage --example lookup_bench [sqlite://file] [TRACES]`
use std::time::Instant;

use meshlens_storage::{encode_batch, Store, StoreConfig};
use meshlens_topology::testing::{resource, SpanBuilder};
use meshlens_topology::TraceId;

fn id(n: u64, wide: bool) -> TraceId {
    let mut b = [0u8; 16];
    let mix = |x: u64| x.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    if wide {
        b[..8].copy_from_slice(&mix(n).to_be_bytes());
    }
    b[8..].copy_from_slice(&mix(n ^ 0x5555).to_be_bytes());
    TraceId::from_bytes(&b).expect("non-zero")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/lookup_bench.db".into());
    let traces: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    if let Some(path) = url.strip_prefix("sqlite://") {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    let store = Store::connect(&StoreConfig {
        url,
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let svc = resource("svc", Some("v1"));
    let t0 = 1_800_000_000_000_000_000u64;
    const SPANS: u64 = 5;
    let per_commit = 4_096 / SPANS;
    let started = Instant::now();
    let mut n = 0;
    while n < traces {
        let spans: Vec<_> = (n..(n + per_commit).min(traces))
            .flat_map(|t| {
                let svc = svc.clone();
                [false, true].into_iter().flat_map(move |wide| {
                    let svc = svc.clone();
                    (0..SPANS).map(move |s| {
                        let mut span = SpanBuilder::new(1, t * 16 + s + 1, "svc", "op", t0 + t)
                            .resource(svc.clone())
                            .build();
                        span.trace_id = id(t, wide);
                        span
                    })
                })
            })
            .collect();
        store.write(&[&encode_batch(&spans)]).await.unwrap();
        n += per_commit;
    }
    let wrote = started.elapsed().as_secs_f64();
    for wide in [false, true] {
        let mut lat = Vec::new();
        for i in 0..2_000u64 {
            let t = i.wrapping_mul(7_919) % traces;
            let start = Instant::now();
            let spans = store.trace(id(t, wide)).await.unwrap();
            lat.push(start.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(spans.len() as u64, SPANS, "trace {t}");
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "{} trace ids: {traces} traces of each kind ({} spans in all, written in {wrote:.1} s): by id p50 {:.3} ms, p99 {:.3} ms",
            if wide { "128-bit" } else { "64-bit" },
            traces * SPANS * 2,
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    }
}
