//! One suite, run against SQLite and against the PostgreSQL on 127.0.0.1:5432.

use std::sync::Arc;

use meshlens_topology::testing::{resource, trace_id, SpanBuilder};
use meshlens_topology::{AttrValue, Event, Link, Span, SpanKind};

use crate::{encode_batch, Pool, Store, StoreConfig, StoreError, TraceQuery};

const T0: u64 = 1_700_000_000_000_000_000;

/// A search from an hour before `T0` to a day after it.
fn around_t0() -> TraceQuery {
    TraceQuery {
        start_min_ns: (T0 - 3_600_000_000_000) as i64,
        start_max_ns: (T0 + 86_400_000_000_000) as i64,
        ..TraceQuery::default()
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::connect(&StoreConfig {
        url,
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

/// A fresh schema per test, so tests run in parallel against one database.
pub(crate) async fn postgres_store() -> Store {
    let base = std::env::var("MESHLENS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let schema = format!(
        "t_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let store = Store::connect(&StoreConfig {
        url,
        max_connections: 4,
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

fn sample_trace() -> Vec<Span> {
    let frontend = resource("frontend", Some("v1"));
    let mut root = SpanBuilder::new(1, 1, "frontend", "GET /", T0)
        .resource(frontend.clone())
        .duration_ns(5_000_000)
        .attr("http.status_code", "200")
        .attr("http.method", "GET")
        .attr("retry", true)
        .attr("ratio", AttrValue::Double(0.25))
        .build();
    root.events.push(Event {
        time_ns: T0 + 10,
        name: "cache miss".into(),
        attributes: [("key".to_string(), AttrValue::Str("a\0b".into()))]
            .into_iter()
            .collect(),
        dropped_attributes_count: 2,
    });
    // What the sender or the span limits left out is kept with the span.
    root.dropped_attributes_count = 7;
    let mut client = SpanBuilder::new(1, 2, "frontend", "GET work", T0 + 1_000)
        .resource(frontend)
        .parent(1)
        .kind(SpanKind::Client)
        .duration_ns(3_000_000)
        .build();
    client.links.push(Link {
        trace_id: trace_id(9),
        span_id: meshlens_topology::testing::span_id(9),
        trace_state: String::new(),
        attributes: Default::default(),
        dropped_attributes_count: 1,
    });
    client.dropped_events_count = 3;
    client.dropped_links_count = 4;
    let server = SpanBuilder::new(1, 3, "work", "GET /work", T0 + 2_000)
        .resource(resource("work", Some("v2")))
        .parent(2)
        .duration_ns(2_000_000)
        .attr("http.response.status_code", 503i64)
        .error("upstream failed")
        .build();
    vec![root, client, server]
}

async fn suite(store: &Store) {
    let trace = sample_trace();
    let other = SpanBuilder::new(2, 1, "work", "GET /health", T0 + 60_000_000_000).build();
    let b1 = encode_batch(&trace[..2]);
    let b2 = encode_batch(&trace[2..]);
    let b3 = encode_batch(std::slice::from_ref(&other));
    assert_eq!(store.write(&[&b1, &b2]).await.unwrap(), 3);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let between_commits = now_ns();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(store.write(&[&b3]).await.unwrap(), 1);
    assert_eq!(store.write(&[]).await.unwrap(), 0);

    // A trace reads back equal, NUL replaced.
    let got = store.trace(trace_id(1)).await.unwrap();
    assert_eq!(got.len(), 3);
    let mut want = trace.clone();
    want[0].events[0].attributes.0[0].1 = AttrValue::Str("a\u{FFFD}b".into());
    for (g, w) in got.iter().zip(&want) {
        let mut g = g.clone();
        // Attribute order may differ (JSONB sorts keys); compare sorted.
        g.attributes.0.sort_by(|a, b| a.0.cmp(&b.0));
        let mut w = w.clone();
        w.attributes.0.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(g.attributes, w.attributes);
        assert_eq!(g.resource.service, w.resource.service);
        g.attributes = w.attributes.clone();
        g.resource = w.resource.clone();
        assert_eq!(g, w);
    }
    assert!(store.trace(trace_id(42)).await.unwrap().is_empty());

    // Services and operations.
    assert_eq!(store.services().await.unwrap(), vec!["frontend", "work"]);
    let ops = store.operations("frontend", None).await.unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["GET /", "GET work"]);
    let clients = store
        .operations("frontend", Some(SpanKind::Client))
        .await
        .unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].name, "GET work");

    // Search: service, operation, time, duration, error, tags (span and resource, typed as text).
    let q = |f: &dyn Fn(&mut TraceQuery)| {
        let mut q = around_t0();
        f(&mut q);
        q
    };
    let ids = |v: Vec<meshlens_topology::TraceId>| v;
    assert_eq!(
        ids(store
            .search(&q(&|q| q.service = Some("work".into())))
            .await
            .unwrap()),
        vec![trace_id(2), trace_id(1)]
    );
    assert_eq!(
        store
            .search(&q(&|q| q.operation = Some("GET /".into())))
            .await
            .unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store
            .search(&q(&|q| {
                q.service = Some("work".into());
                q.errors_only = true
            }))
            .await
            .unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store
            .search(&q(&|q| q.start_min_ns = (T0 + 1_000_000_000) as i64))
            .await
            .unwrap(),
        vec![trace_id(2)]
    );
    assert_eq!(
        store
            .search(&q(&|q| q.duration_min_ns = Some(4_000_000)))
            .await
            .unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store
            .search(&q(&|q| q.duration_max_ns = Some(1_500_000)))
            .await
            .unwrap(),
        vec![trace_id(2)]
    );
    let tag = |k: &str, v: &str| {
        let (k, v) = (k.to_string(), v.to_string());
        move |q: &mut TraceQuery| q.tags.push((k.clone(), v.clone()))
    };
    assert_eq!(
        store.search(&q(&tag("http.method", "GET"))).await.unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store
            .search(&q(&tag("http.response.status_code", "503")))
            .await
            .unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store.search(&q(&tag("retry", "true"))).await.unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store.search(&q(&tag("ratio", "0.25"))).await.unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store
            .search(&q(&tag("service.version", "v2")))
            .await
            .unwrap(),
        vec![trace_id(1)]
    );
    assert_eq!(
        store.search(&q(&tag("error", "true"))).await.unwrap(),
        vec![trace_id(1)]
    );
    assert!(store
        .search(&q(&tag("http.method", "POST")))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.search(&q(&|q| q.limit = 1)).await.unwrap(),
        vec![trace_id(2)]
    );
    let found = store
        .find_traces(&q(&|q| q.service = Some("work".into())))
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|t| t.len()).collect::<Vec<_>>(),
        vec![1, 3]
    );

    // Retention deletes the spans of commits older than the cutoff, a whole block at a time
    // (at least one, even past the limit asked).
    for expected in [3, 0] {
        let n = store
            .delete_committed_before(between_commits, 2)
            .await
            .unwrap();
        assert_eq!(n, expected);
    }
    assert_eq!(store.count_spans().await.unwrap(), 1);
    assert!(store.trace(trace_id(1)).await.unwrap().is_empty());
    assert_eq!(store.trace(trace_id(2)).await.unwrap().len(), 1);
    // Operations and resources last written (committed) before the cutoff go: of the three
    // resources, the one trace 2 refers to stays, and it still reads back whole.
    assert_eq!(store.count_resources().await.unwrap(), 3);
    store
        .delete_operations_before(between_commits)
        .await
        .unwrap();
    assert_eq!(store.services().await.unwrap(), vec!["work"]);
    assert_eq!(store.count_resources().await.unwrap(), 1);
    assert_eq!(
        store.trace(trace_id(2)).await.unwrap()[0].resource,
        other.resource
    );
}

#[tokio::test]
async fn sqlite_store_suite() {
    let (store, _dir) = sqlite_store().await;
    suite(&store).await;
}

#[tokio::test]
async fn postgres_store_suite() {
    let store = postgres_store().await;
    suite(&store).await;
}

/// Concurrent writers of the same resources and operations must not deadlock or fail.
#[tokio::test]
async fn postgres_concurrent_writers() {
    let store = Arc::new(postgres_store().await);
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let spans: Vec<Span> = (0..50u64)
                    .map(|s| {
                        SpanBuilder::new(
                            w * 1000 + i,
                            s + 1,
                            &format!("svc{}", s % 5),
                            &format!("op{}", s % 7),
                            T0 + s,
                        )
                        .build()
                    })
                    .collect();
                store.write(&[&encode_batch(&spans)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.count_spans().await.unwrap(), 4 * 20 * 50);
    assert_eq!(store.services().await.unwrap().len(), 5);
}

/// The writer and retention share SQLite's one write lock; neither may fail for the other.
#[tokio::test]
async fn sqlite_retention_and_writes_run_together() {
    let (store, _dir) = sqlite_store().await;
    let store = Arc::new(store);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..30u64 {
                let spans: Vec<Span> = (0..200u64)
                    .map(|s| {
                        SpanBuilder::new(i * 1000 + s / 4 + 1, s + 1, "svc", "op", T0 + s).build()
                    })
                    .collect();
                store.write(&[&encode_batch(&spans)]).await.unwrap();
            }
        })
    };
    // Retention chases the writer: each pass deletes what was committed before the pass began.
    let retention = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut deleted = 0;
            for _ in 0..30 {
                deleted += store.delete_committed_before(now_ns(), 150).await.unwrap();
                store.checkpoint().await.unwrap();
                tokio::task::yield_now().await;
            }
            deleted
        })
    };
    writer.await.unwrap();
    let deleted = retention.await.unwrap();
    let left = store.count_spans().await.unwrap() as u64;
    assert_eq!(deleted + left, 30 * 200);

    // Then, with the table possibly emptied: what is committed after a cutoff survives it, and
    // seq numbers are not reused (a reused range would let the next pass delete new spans).
    let left = store.count_spans().await.unwrap();
    let n = store.delete_committed_before(now_ns(), left).await.unwrap();
    assert_eq!(n, left as u64);
    assert_eq!(store.count_spans().await.unwrap(), 0);
    let cutoff = now_ns();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let fresh: Vec<Span> = (0..10u64)
        .map(|s| SpanBuilder::new(999_999, s + 1, "svc", "op", T0 + s).build())
        .collect();
    store.write(&[&encode_batch(&fresh)]).await.unwrap();
    assert_eq!(
        store.delete_committed_before(cutoff, 1_000).await.unwrap(),
        0
    );
    assert_eq!(store.trace(trace_id(999_999)).await.unwrap().len(), 10);
}

/// Names are indexed; PostgreSQL refuses index entries over about 2.7 KB. A span named with a
/// long URL must be stored (its name cut at a character boundary), not fail its whole commit.
async fn long_names_are_bounded(store: &Store) {
    let long = "é".repeat(3_000); // 6,000 bytes, two per character
    let span = SpanBuilder::new(77, 1, &long, &long, T0).build();
    store.write(&[&encode_batch(&[span])]).await.unwrap();
    let got = store.trace(trace_id(77)).await.unwrap();
    assert_eq!(got[0].name.len(), crate::encode::MAX_NAME_BYTES);
    assert!(got[0].name.chars().all(|c| c == 'é'));
    assert_eq!(
        store.services().await.unwrap()[0].len(),
        crate::encode::MAX_NAME_BYTES
    );
}

#[tokio::test]
async fn sqlite_long_names_are_bounded() {
    let (store, _dir) = sqlite_store().await;
    long_names_are_bounded(&store).await;
}

#[tokio::test]
async fn postgres_long_names_are_bounded() {
    long_names_are_bounded(&postgres_store().await).await;
}

/// A refused value is a data error (retrying the same export cannot help); a lost connection is
/// not. The pipeline answers the first as non-retryable and the second as retryable.
#[tokio::test]
async fn data_errors_are_told_from_transient_ones() {
    let store = postgres_store().await;
    let Pool::Postgres(pg) = &store.pool else {
        unreachable!()
    };
    let err: StoreError = sqlx::query("SELECT 1 / 0")
        .execute(pg)
        .await
        .unwrap_err()
        .into();
    assert!(err.is_data_error(), "{err}");
    let err: StoreError = sqlx::query("SELECT 'x'::int")
        .execute(pg)
        .await
        .unwrap_err()
        .into();
    assert!(err.is_data_error(), "{err}");
    store.close().await;
    let err: StoreError = store.count_spans().await.unwrap_err();
    assert!(!err.is_data_error(), "{err}");
    let (sqlite, _dir) = sqlite_store().await;
    let Pool::Sqlite(lite) = &sqlite.pool else {
        unreachable!()
    };
    let err: StoreError = sqlx::query("INSERT INTO blocks (first_seq, last_seq, min_start_ns, max_start_ns, committed_ns) VALUES (1, 1, 0, 0, 0), (1, 1, 0, 0, 0)")
        .execute(lite)
        .await
        .unwrap_err()
        .into();
    assert!(err.is_data_error(), "{err}");
    // The same from the SQLite writer's own connection (rusqlite); a busy database is not.
    let raw = rusqlite::Connection::open_in_memory().unwrap();
    raw.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    let err: StoreError = raw
        .execute("INSERT INTO t VALUES (1)", [])
        .unwrap_err()
        .into();
    assert!(err.is_data_error(), "{err}");
    let busy: StoreError =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None)
            .into();
    assert!(!busy.is_data_error(), "{busy}");
}

/// Lookups by trace id stay whole while the SQLite writer merges its trace index between
/// commits (each read sees some committed state of the merges), and after it settles.
#[tokio::test]
async fn sqlite_trace_lookups_while_the_index_merges() {
    let (store, _dir) = sqlite_store().await;
    let mut expected = std::collections::BTreeMap::<u64, usize>::new();
    for c in 0..120u64 {
        // Six traces per commit, each spanning two commits; trace c*3 has two spans here.
        let spans: Vec<Span> = (c * 3..c * 3 + 6)
            .chain([c * 3])
            .enumerate()
            .map(|(i, t)| {
                *expected.entry(t + 1).or_default() += 1;
                SpanBuilder::new(t + 1, c * 10 + i as u64 + 1, "svc", "op", T0 + c).build()
            })
            .collect();
        store.write(&[&encode_batch(&spans)]).await.unwrap();
        if c % 10 == 9 {
            check_traces(&store, &expected).await;
        }
    }
    let steps = store.settle_trace_index().await.unwrap();
    check_traces(&store, &expected).await;
    assert_eq!(
        store.settle_trace_index().await.unwrap(),
        0,
        "settled after {steps} steps"
    );
    let Pool::Sqlite(p) = &store.pool else {
        unreachable!()
    };
    let per_level: Vec<(i64, i64)> =
        sqlx::query_as("SELECT level, COUNT(*) FROM trace_runs GROUP BY level ORDER BY level")
            .fetch_all(p)
            .await
            .unwrap();
    // 120 commits = 1×64 + 7×8 + 0×1 runs.
    assert_eq!(per_level, vec![(1, 7), (2, 1)]);
}

async fn check_traces(store: &Store, expected: &std::collections::BTreeMap<u64, usize>) {
    let ids: Vec<_> = expected.keys().map(|t| trace_id(*t)).collect();
    for chunk in ids.chunks(50) {
        let found = store.traces(chunk).await.unwrap();
        assert_eq!(found.len(), chunk.len());
        for (id, spans) in chunk.iter().zip(&found) {
            let t = expected.iter().find(|(k, _)| trace_id(**k) == *id).unwrap();
            assert_eq!(spans.len(), *t.1, "trace {}", t.0);
            assert!(spans.iter().all(|s| s.trace_id == *id));
        }
    }
}

/// Edge minutes round-trip exactly (keys of every node kind, both count sets, sketches), a rewrite
/// replaces a minute, ranges are half-open, and retention deletes by minute.
async fn edge_minutes_round_trip(store: &Store) {
    use crate::EdgeMinute;
    use meshlens_topology::graph::{
        ConnectionType, Counts, EdgeKey, Endpoint, LatencySketch, NodeKey, NodeKind, PolicyCounts,
        Stats,
    };
    let end = |node: NodeKey, version: Option<&str>| Endpoint {
        node,
        version: version.map(Into::into),
    };
    let mut server = LatencySketch::new();
    for ns in [0, 80_000, 1_500_000, 1_500_000, 9_000_000_000] {
        server.record_ns(ns);
    }
    let stats = |requests| Stats {
        counts: Counts {
            requests,
            failures: 1,
            bytes: 42,
            ..Counts::default()
        },
        metric_counts: Counts {
            requests: requests * 2,
            retries: 3,
            ..Counts::default()
        },
        policy_counts: PolicyCounts {
            denied: requests,
            rate_limited: 4,
        },
        server_latency: server.clone(),
        client_latency: LatencySketch::new(),
        metric_latency: server.clone(),
    };
    let keys = [
        EdgeKey {
            client: end(NodeKey::service(Some("shop"), "work"), Some("v1")),
            server: end(NodeKey::service(None, "meet \"quoted\" ✓"), None),
            connection: ConnectionType::Grpc,
        },
        EdgeKey {
            client: end(NodeKey::user(), None),
            server: end(NodeKey::virtual_node(NodeKind::Database, "orders"), None),
            connection: ConnectionType::Database,
        },
    ];
    let rows: Vec<EdgeMinute> = [(100, &keys[0], 5), (101, &keys[0], 6), (101, &keys[1], 7)]
        .into_iter()
        .map(|(minute, key, n)| EdgeMinute {
            minute,
            key: key.clone(),
            stats: stats(n),
        })
        .collect();
    store.write_edge_minutes(&rows).await.unwrap();
    assert_eq!(store.edge_minutes(100, 102).await.unwrap(), rows);
    assert_eq!(store.edge_minutes(101, 102).await.unwrap(), rows[1..]);
    let rewritten = EdgeMinute {
        stats: stats(60),
        ..rows[1].clone()
    };
    store
        .write_edge_minutes(std::slice::from_ref(&rewritten))
        .await
        .unwrap();
    let got = store.edge_minutes(101, 102).await.unwrap();
    assert!(got.contains(&rewritten) && got.len() == 2, "{got:?}");
    assert_eq!(store.delete_edge_minutes_before(101).await.unwrap(), 1);
    assert!(store.edge_minutes(0, 101).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_edge_minutes() {
    let (store, _dir) = sqlite_store().await;
    edge_minutes_round_trip(&store).await;
}

#[tokio::test]
async fn postgres_edge_minutes() {
    let store = postgres_store().await;
    edge_minutes_round_trip(&store).await;
}

/// One SQLite commit of 64 + 64 + 3 spans goes through the 64-row INSERT twice and the one-row
/// INSERT three times: every span reads back with its own fields, none shifted to a neighbour.
#[tokio::test]
async fn sqlite_multi_row_inserts_keep_every_field_in_its_row() {
    let (store, _dir) = sqlite_store().await;
    let spans: Vec<Span> = (0..131u64)
        .map(|i| {
            let mut b = SpanBuilder::new(
                i % 7 + 1,
                i + 1,
                &format!("svc-{}", i % 5),
                &format!("op-{i}"),
                T0 + i * 1_000,
            )
            .resource(resource(&format!("svc-{}", i % 5), Some("v1")))
            .kind(if i % 2 == 0 {
                SpanKind::Server
            } else {
                SpanKind::Client
            })
            .duration_ns(1_000 + i)
            .attr("i", i as i64);
            if i > 0 {
                b = b.parent(i);
            }
            if i % 3 == 0 {
                b = b.error(&format!("failed {i}"));
            }
            b.build()
        })
        .collect();
    assert_eq!(store.write(&[&encode_batch(&spans)]).await.unwrap(), 131);
    let mut got = Vec::new();
    for t in 1..=7u64 {
        got.extend(store.trace(trace_id(t)).await.unwrap());
    }
    assert_eq!(got.len(), spans.len());
    for want in &spans {
        let g = got
            .iter()
            .find(|s| s.span_id == want.span_id)
            .unwrap_or_else(|| panic!("span {:?} missing", want.span_id));
        assert_eq!(g.resource.service, want.resource.service);
        let mut g = g.clone();
        g.resource = want.resource.clone();
        assert_eq!(&g, want, "span {}", want.name);
    }
}

/// Resource ids are stored, so their hash must never change: these are the ids std's
/// `DefaultHasher::new()` gave (Rust 1.95), which rows already on disk carry.
#[test]
fn resource_ids_are_the_ids_already_stored() {
    use crate::encode::resource_id;
    assert_eq!(resource_id("{}"), 6086514543335466803);
    assert_eq!(
        resource_id(r#"{"service.name":"frontend","service.version":"v1"}"#),
        7773783957798176515
    );
    assert_eq!(resource_id(""), 3476900567878811119);
}

/// A search past the concurrency limit is refused at once, and one past its time is stopped
/// (SQLite's progress handler): both retryable errors with a reason, and the store answers the
/// next search as before.
#[tokio::test]
async fn searches_are_bounded_in_number_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let connect = |timeout: std::time::Duration| {
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        async move {
            Store::connect(&StoreConfig {
                url,
                max_concurrent_searches: 1,
                search_timeout: timeout,
                ..StoreConfig::default()
            })
            .await
            .unwrap()
        }
    };
    let store = connect(std::time::Duration::from_secs(10)).await;
    store.migrate().await.unwrap();
    let spans: Vec<Span> = (1..=2_000u64)
        .map(|i| SpanBuilder::new(i, 1, "work", "GET /", T0 + i).build())
        .collect();
    store.write(&[&encode_batch(&spans)]).await.unwrap();
    let q = TraceQuery {
        limit: 20,
        ..around_t0()
    };
    assert_eq!(store.search(&q).await.unwrap().len(), 20);
    // A range past `max_search_range` (a week) is refused before any query.
    let all_time = TraceQuery::default();
    match store.search(&all_time).await {
        Err(e @ StoreError::RangeTooWide { .. }) => {
            assert!(e.to_string().contains("max_search_range"), "{e}")
        }
        other => panic!("a search over all time: {other:?}"),
    }
    let minute = (T0 / 60_000_000_000) as i64;
    assert!(matches!(
        store.edge_minutes(minute - 8 * 24 * 60, minute).await,
        Err(StoreError::RangeTooWide { .. })
    ));
    assert!(store.edge_minutes(minute - 60, minute).await.is_ok());
    {
        let _held = store.searches.try_acquire().unwrap();
        assert!(matches!(store.search(&q).await, Err(StoreError::Busy)));
    }
    assert_eq!(store.search(&q).await.unwrap().len(), 20);
    drop(store);

    let hurried = connect(std::time::Duration::ZERO).await;
    match hurried.search(&q).await {
        Err(StoreError::SearchTimeout(_)) => {}
        other => panic!("a search past its time: {other:?}"),
    }
    // The connection it ran on is usable again (its handler removed).
    assert_eq!(hurried.count_spans().await.unwrap(), 2_000);
}

/// 64-bit trace ids (zeros in the first 8 bytes: Zipkin's B3, older Jaeger clients) are indexed by
/// their last 8 bytes, so a lookup reads its own trace's entries, not every 64-bit trace's. (Rows
/// stored under the zero key by versions before that are still found: `Store::spans_in_rows`
/// seeks it too.)
#[tokio::test]
async fn sixty_four_bit_trace_ids_have_index_keys_of_their_own() {
    let (store, dir) = sqlite_store().await;
    let id64 = |n: u64| {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&n.to_be_bytes());
        meshlens_topology::TraceId::from_bytes(&b).unwrap()
    };
    let spans: Vec<Span> = (1..=300u64)
        .flat_map(|t| {
            (1..=2u64).map(move |s| {
                let mut span = SpanBuilder::new(1, s, "svc", "op", T0 + t).build();
                span.trace_id = id64(t);
                span
            })
        })
        .chain([SpanBuilder::new(9, 1, "svc", "op", T0).build()])
        .collect();
    store.write(&[&encode_batch(&spans)]).await.unwrap();
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let keys: i64 = db
        .query_row(
            "SELECT COUNT(DISTINCT trace_key) FROM trace_index",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 301, "a key per 64-bit trace, and the 128-bit one's");
    for t in [7, 8, 300] {
        assert_eq!(store.trace(id64(t)).await.unwrap().len(), 2, "trace {t}");
    }
    assert_eq!(store.trace(trace_id(9)).await.unwrap().len(), 1);
    assert!(store.trace(id64(301)).await.unwrap().is_empty());
}

/// Tiered retention: past the cutoff a block keeps only its traces with an error, its slowest per
/// operation and a sample per operation and minute; reads and searches then see those alone.
async fn thinning_keeps_the_traces_that_matter(store: &Store) {
    // Twenty traces of one span each, one operation, in one commit: trace 3 fails, trace 7 is the
    // slowest; two more are the minute's samples (the default rules).
    let spans: Vec<Span> = (1..=20u64)
        .map(|t| {
            let b = SpanBuilder::new(t, t, "shop", "GET /cart", T0 + t * 1000)
                .duration_ns(if t == 7 { 90_000_000 } else { 1_000_000 + t });
            if t == 3 {
                b.error("boom").build()
            } else {
                b.build()
            }
        })
        .collect();
    store.write(&[&encode_batch(&spans)]).await.unwrap();
    assert_eq!(store.count_spans().await.unwrap(), 20);
    // Not yet past the cutoff: nothing happens.
    let before = store.thin_committed_before(0, 10).await.unwrap();
    assert_eq!(before, crate::Thinned::default());

    let done = store.thin_committed_before(now_ns(), 10).await.unwrap();
    assert_eq!(done.blocks, 1);
    assert_eq!(done.dropped_spans, 16);
    assert_eq!(done.kept, [1, 1, 2]);
    assert_eq!(store.count_spans().await.unwrap(), 4);
    let mut kept = Vec::new();
    for t in 1..=20u64 {
        if !store.trace(trace_id(t)).await.unwrap().is_empty() {
            kept.push(t);
        }
    }
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(kept.contains(&3) && kept.contains(&7), "{kept:?}");
    let q = TraceQuery {
        service: Some("shop".into()),
        ..around_t0()
    };
    let mut want: Vec<_> = kept.iter().rev().map(|t| trace_id(*t)).collect();
    want.sort_by_key(|id| std::cmp::Reverse(kept.iter().position(|t| trace_id(*t) == *id)));
    assert_eq!(store.search(&q).await.unwrap(), want);
    // Done once.
    let again = store.thin_committed_before(now_ns(), 10).await.unwrap();
    assert_eq!(again, crate::Thinned::default());
    // Retention still deletes the thinned block whole.
    assert_eq!(
        store.delete_committed_before(now_ns(), 1000).await.unwrap(),
        4
    );
    assert_eq!(store.count_spans().await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_thinning_keeps_the_traces_that_matter() {
    let (store, _dir) = sqlite_store().await;
    thinning_keeps_the_traces_that_matter(&store).await;
}

#[tokio::test]
async fn postgres_thinning_keeps_the_traces_that_matter() {
    thinning_keeps_the_traces_that_matter(&postgres_store().await).await;
}

/// A damaged block is left out of searches (logged) and kept whole by tiered retention, instead of
/// failing every search over its time and stopping retention for every block after it.
#[tokio::test]
async fn a_damaged_block_fails_neither_searches_nor_retention() {
    let (store, dir) = sqlite_store().await;
    let spans = |trace: u64| vec![SpanBuilder::new(trace, 1, "svc", "op", T0 + trace).build()];
    store.write(&[&encode_batch(&spans(1))]).await.unwrap();
    store.write(&[&encode_batch(&spans(2))]).await.unwrap();
    let db = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    let first: i64 = db
        .query_row("SELECT MIN(first_seq) FROM block_data", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE block_data SET data = x'01ffff' WHERE first_seq = ?1",
        [first],
    )
    .unwrap();
    for service in [None, Some("svc".to_string())] {
        let q = TraceQuery {
            service,
            ..around_t0()
        };
        assert_eq!(store.search(&q).await.unwrap(), vec![trace_id(2)]);
    }
    assert!(matches!(
        store.trace(trace_id(1)).await,
        Err(StoreError::Corrupt(_))
    ));
    let done = store.thin_committed_before(now_ns(), 10).await.unwrap();
    assert_eq!(
        done.blocks, 1,
        "the sound block is thinned, the damaged one skipped"
    );
    let left: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM blocks WHERE keep IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the damaged block is not tried again");
}

/// A search reads summaries 64 at a time; one over more blocks than that pages through them all,
/// through every block's summary and through a service's, latest first, and a limit stops it.
async fn searches_page_through_many_blocks(store: &Store) {
    for t in 1..=150u64 {
        let service = if t % 2 == 0 { "even" } else { "odd" };
        let span = SpanBuilder::new(t, 1, service, "op", T0 + t * 1_000).build();
        store.write(&[&encode_batch(&[span])]).await.unwrap();
    }
    let all = |service: Option<&str>, limit: usize| TraceQuery {
        service: service.map(str::to_string),
        limit,
        ..around_t0()
    };
    let want = |f: &dyn Fn(u64) -> bool, n: usize| -> Vec<_> {
        (1..=150u64)
            .rev()
            .filter(|t| f(*t))
            .take(n)
            .map(trace_id)
            .collect()
    };
    assert_eq!(
        store.search(&all(None, 1500)).await.unwrap(),
        want(&|_| true, 150)
    );
    assert_eq!(
        store.search(&all(Some("even"), 1500)).await.unwrap(),
        want(&|t| t % 2 == 0, 75)
    );
    assert_eq!(
        store.search(&all(None, 10)).await.unwrap(),
        want(&|_| true, 10)
    );
    assert_eq!(
        store.search(&all(Some("odd"), 70)).await.unwrap(),
        want(&|t| t % 2 == 1, 70)
    );
}

#[tokio::test]
async fn sqlite_searches_page_through_many_blocks() {
    let (store, _dir) = sqlite_store().await;
    searches_page_through_many_blocks(&store).await;
}

#[tokio::test]
async fn postgres_searches_page_through_many_blocks() {
    searches_page_through_many_blocks(&postgres_store().await).await;
}
