//! The store at scale: fills a store with SPANS mesh-shaped spans (traces of 1–4 hops, each a
//! client and a server span, across 20 services, spread over the last hour, in commits of 4,096
//! spans), as fast as it takes them, then times the reads a user makes: a trace by id, and Jaeger
//! searches over the hour (service + tag, service + operation + duration, a rare tag alone).
//! `cargo run --release -p meshlens-storage --example scale_bench [sqlite://file | postgres://…] [SPANS] [keep]`
//! (`keep`: reuse a store filled by an earlier run of the same SPANS; `thin` after it, or in its
//! place: then run tiered retention on the default rules over the whole store and print what is
//! left).
use std::time::Instant;

use meshlens_storage::{encode_batch, Store, StoreConfig, TraceQuery};
use meshlens_topology::testing::MeshTraces;

const SERVICES: u64 = 20;
const PER_COMMIT: usize = 4_096;
const HOUR_NS: u64 = 3_600_000_000_000;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The `i`-th query of a search case.
type MakeQuery = Box<dyn Fn(u64) -> TraceQuery>;

/// Quantile of sorted milliseconds.
fn q(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/scale_bench.db".into());
    let total: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let keep = args.get(3).is_some_and(|a| a == "keep");
    // `SPANS thin` alone: fill, then thin.
    if let (Some(path), false) = (url.strip_prefix("sqlite://"), keep) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    let store = Store::connect(&StoreConfig {
        url: url.clone(),
        search_timeout: std::time::Duration::from_secs(60),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    // Spans start over the hour before the fill began, in the order they are written.
    let t_end = now_ns();
    let t_start = t_end - HOUR_NS;
    let mut mesh = MeshTraces::new(SERVICES, t_start, HOUR_NS as f64 / total as f64);
    let mut written = 0u64;
    let started = Instant::now();
    let mut last_report = Instant::now();
    if !keep {
        while written < total {
            let mut spans = Vec::with_capacity(PER_COMMIT + 8);
            while spans.len() < PER_COMMIT {
                spans.extend(mesh.next_trace());
            }
            written += spans.len() as u64;
            store.write(&[&encode_batch(&spans)]).await.unwrap();
            if last_report.elapsed().as_secs() >= 30 {
                eprintln!(
                    "{written} spans in {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        }
        store.settle_trace_index().await.unwrap();
        store.checkpoint().await.unwrap();
    }
    let traces = if keep { total / 5 } else { mesh.traces() };
    let fill = started.elapsed().as_secs_f64();
    let stored = store.count_spans().await.unwrap();
    // The database's pages (SQLite: without the write-ahead log, which a checkpoint empties).
    let bytes = store.size_bytes().await.unwrap() as u64;
    println!(
        "dialect={} spans={stored} traces={traces} fill_s={fill:.0} fill_spans_per_s={:.0} disk_bytes={bytes} bytes_per_span={:.1}",
        store.dialect(),
        stored as f64 / fill,
        bytes as f64 / stored.max(1) as f64
    );

    // A trace by id: 1,000 traces spread over the whole store.
    let mut lat = Vec::new();
    for i in 0..1_000u64 {
        let t = i.wrapping_mul(7_919_777) % traces.max(1);
        let s = Instant::now();
        let spans = store.trace(MeshTraces::trace_id(t)).await.unwrap();
        lat.push(s.elapsed().as_secs_f64() * 1e3);
        assert!(!spans.is_empty(), "trace {t}");
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "by_id n=1000 p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        q(&lat, 0.5),
        q(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // Searches over the hour, as Jaeger's UI asks them (20 traces).
    let hour = |f: fn(&mut TraceQuery, u64)| -> MakeQuery {
        Box::new(move |i: u64| {
            let mut q = TraceQuery {
                start_min_ns: (t_start - 60_000_000_000) as i64,
                start_max_ns: now_ns() as i64,
                limit: 20,
                ..TraceQuery::default()
            };
            f(&mut q, i);
            q
        })
    };
    let cases: Vec<(&str, MakeQuery)> = vec![
        (
            "service+tag(status 503)",
            hour(|q, i| {
                q.service = Some(format!("svc-{:02}", i % SERVICES));
                q.tags = vec![("http.response.status_code".into(), "503".into())];
            }),
        ),
        (
            "service+tag(url.path, 1 in 10,000)",
            hour(|q, i| {
                q.service = Some(format!("svc-{:02}", i % SERVICES));
                q.tags = vec![("url.path".into(), format!("/api/items/{}", i * 37 % 10_000))];
            }),
        ),
        (
            "service+operation+duration>19ms",
            hour(|q, i| {
                q.service = Some(format!("svc-{:02}", i % SERVICES));
                q.operation = Some("GET /api/items/{id}".into());
                q.duration_min_ns = Some(19_000_000);
            }),
        ),
        (
            "service alone",
            hour(|q, i| q.service = Some(format!("svc-{:02}", i % SERVICES))),
        ),
        (
            "tag absent everywhere",
            hour(|q, i| {
                q.tags = vec![("url.path".into(), format!("/nowhere/{i}"))];
            }),
        ),
    ];
    for (name, make) in cases {
        let mut lat = Vec::new();
        let mut found = 0;
        for i in 0..40u64 {
            let query = make(i);
            let s = Instant::now();
            found += store.search(&query).await.unwrap().len();
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "search case={name:?} n=40 traces_found={found} p50_ms={:.1} p95_ms={:.1} max_ms={:.1}",
            q(&lat, 0.5),
            q(&lat, 0.95),
            lat[lat.len() - 1]
        );
    }
    if args.get(3).is_some_and(|a| a == "thin") || args.get(4).is_some_and(|a| a == "thin") {
        // Tiered retention on the default rules, as if the whole store were past retention_full.
        let s = Instant::now();
        let mut kept = [0u64; 3];
        let mut dropped = 0;
        loop {
            let done = store.thin_committed_before(i64::MAX, 64).await.unwrap();
            dropped += done.dropped_spans;
            for (k, n) in kept.iter_mut().zip(done.kept) {
                *k += n;
            }
            if done.blocks < 64 {
                break;
            }
        }
        let left = store.count_spans().await.unwrap();
        let bytes = store.size_bytes().await.unwrap();
        println!(
            "thinned in {:.0} s: spans_left={left} ({:.1}%) dropped={dropped} kept_traces error={} slow={} sample={} bytes_in_use={bytes} bytes_per_original_span={:.1}",
            s.elapsed().as_secs_f64(),
            100.0 * left as f64 / stored as f64,
            kept[0],
            kept[1],
            kept[2],
            bytes as f64 / stored as f64
        );
    }
    store.close().await;
}
