//! A database of the row store (`testdata/store/meshlens-rows.db`, written by the store before
//! blocks, one row per span) opens, reads in place as a store of blocks holding the same spans
//! reads, and retention removes its rows.

use meshlens_topology::testing::{resource, SpanBuilder};
use meshlens_topology::{AttrValue, Event, Link, Span, SpanKind, TraceId};

use crate::{encode_batch, Store, StoreConfig, TraceQuery};

const T0: u64 = 1_700_000_000_000_000_000;

/// The spans the fixture holds, as its writer made them (`storage/examples` of the commit before
/// blocks, kept here verbatim).
pub fn fixture_commits() -> Vec<Vec<Span>> {
    let frontend = resource("frontend", Some("v1"));
    let cart = resource("cart", Some("v2"));
    let db = resource("db", None);
    (0..4u64)
        .map(|c| {
            (0..10u64)
                .flat_map(|t| {
                    let n = c * 10 + t;
                    // Traces 7, 17, 27, 37 have 64-bit ids (the high half zero).
                    let trace = if n % 10 == 7 {
                        n + 1
                    } else {
                        (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    };
                    let start = T0 + n * 1_000_000_000;
                    let failed = n % 5 == 3;
                    let mut root = SpanBuilder::new(trace, n * 10 + 1, "frontend", "GET /", start)
                        .resource(frontend.clone())
                        .kind(SpanKind::Server)
                        .duration_ns(5_000_000 + n * 1000)
                        .attr("http.request.method", "GET")
                        .attr(
                            "http.response.status_code",
                            if failed { 503i64 } else { 200i64 },
                        )
                        .attr("url.path", format!("/items/{n}"))
                        .attr("sampled", n % 2 == 0)
                        .attr("ratio", AttrValue::Double(0.25 * n as f64));
                    if failed {
                        root = root.error("upstream failed");
                    }
                    let mut root = root.build();
                    root.attributes.0.push((
                        "tags".into(),
                        AttrValue::Array(vec![
                            AttrValue::Str("a".into()),
                            AttrValue::Int(n as i64),
                        ]),
                    ));
                    if n % 4 == 0 {
                        root.events.push(Event {
                            time_ns: start + 1000,
                            name: "retry".into(),
                            attributes: Default::default(),
                            dropped_attributes_count: 0,
                        });
                        root.links.push(Link {
                            trace_id: meshlens_topology::testing::trace_id(999),
                            span_id: meshlens_topology::testing::span_id(5),
                            trace_state: "k=v".into(),
                            attributes: Default::default(),
                            dropped_attributes_count: 1,
                        });
                    }
                    let client =
                        SpanBuilder::new(trace, n * 10 + 2, "frontend", "GET", start + 100_000)
                            .resource(frontend.clone())
                            .kind(SpanKind::Client)
                            .parent(n * 10 + 1)
                            .duration_ns(3_000_000)
                            .attr("server.address", "cart")
                            .build();
                    let server = SpanBuilder::new(
                        trace,
                        n * 10 + 3,
                        "cart",
                        if n % 3 == 0 {
                            "POST /cart"
                        } else {
                            "GET /cart"
                        },
                        start + 150_000,
                    )
                    .resource(if n % 7 == 0 { db.clone() } else { cart.clone() })
                    .kind(SpanKind::Server)
                    .parent(n * 10 + 2)
                    .duration_ns(2_500_000 + n)
                    .attr("user.id", (n % 3) as i64)
                    .build();
                    let mut spans = vec![root, client, server];
                    if n % 10 == 7 {
                        let mut id = [0u8; 16];
                        id[8..].copy_from_slice(&(n + 1).to_be_bytes());
                        for s in &mut spans {
                            s.trace_id = meshlens_topology::TraceId::from_bytes(&id).unwrap();
                        }
                    }
                    spans
                })
                .collect()
        })
        .collect()
}

async fn open(path: &std::path::Path) -> Store {
    let store = Store::connect(&StoreConfig {
        url: format!("sqlite://{}", path.display()),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

fn trace_ids() -> Vec<TraceId> {
    let mut ids: Vec<TraceId> = fixture_commits()
        .iter()
        .flatten()
        .map(|s| s.trace_id)
        .collect();
    ids.dedup();
    ids
}

/// The searches compared: every kind of condition.
fn queries() -> Vec<TraceQuery> {
    let base = TraceQuery {
        start_min_ns: (T0 - 3_600_000_000_000) as i64,
        start_max_ns: (T0 + 86_400_000_000_000) as i64,
        ..TraceQuery::default()
    };
    let with = |f: &dyn Fn(&mut TraceQuery)| {
        let mut q = base.clone();
        f(&mut q);
        q
    };
    let tag = |k: &str, v: &str| {
        let (k, v) = (k.to_string(), v.to_string());
        with(&move |q| q.tags = vec![(k.clone(), v.clone())])
    };
    vec![
        base.clone(),
        with(&|q| q.limit = 7),
        with(&|q| q.limit = 1500),
        with(&|q| q.service = Some("cart".into())),
        with(&|q| q.service = Some("db".into())),
        with(&|q| q.service = Some("nobody".into())),
        with(&|q| {
            q.service = Some("cart".into());
            q.operation = Some("POST /cart".into())
        }),
        with(&|q| q.operation = Some("GET".into())),
        with(&|q| q.span_kind = Some(SpanKind::Client)),
        with(&|q| q.duration_min_ns = Some(5_020_000)),
        with(&|q| q.duration_max_ns = Some(2_500_010)),
        with(&|q| {
            q.duration_min_ns = Some(2_500_005);
            q.duration_max_ns = Some(2_500_030)
        }),
        with(&|q| q.errors_only = true),
        with(&|q| {
            q.start_min_ns = (T0 + 10_000_000_000) as i64;
            q.start_max_ns = (T0 + 20_000_000_000) as i64
        }),
        tag("url.path", "/items/5"),
        tag("http.response.status_code", "503"),
        tag("sampled", "true"),
        tag("sampled", "false"),
        tag("ratio", "0.5"),
        tag("user.id", "1"),
        tag("service.version", "v2"),
        tag("service.name", "db"),
        tag("error", "true"),
        tag("error", "false"),
        tag("server.address", "cart"),
        tag("url.path", "/nowhere"),
        with(&|q| {
            q.service = Some("frontend".into());
            q.tags = vec![
                ("sampled".into(), "true".into()),
                ("http.response.status_code".into(), "503".into()),
            ]
        }),
    ]
}

fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
    for s in &mut spans {
        s.attributes.0.sort_by(|a, b| a.0.cmp(&b.0));
    }
    spans.sort_by_key(|s| (s.start_ns, *s.span_id.as_bytes()));
    spans
}

/// The old database and a new store written with the same spans answer every read alike.
#[tokio::test]
async fn a_row_store_reads_in_place_as_a_block_store_with_the_same_spans() {
    let dir = tempfile::tempdir().unwrap();
    let old_path = dir.path().join("old.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/store/meshlens-rows.db"
        ),
        &old_path,
    )
    .unwrap();
    let old = open(&old_path).await;
    let new = open(&dir.path().join("new.db")).await;
    for spans in fixture_commits() {
        new.write(&[&encode_batch(&spans)]).await.unwrap();
    }
    assert_eq!(old.count_spans().await.unwrap(), 120);
    assert_eq!(new.count_spans().await.unwrap(), 120);
    assert!(old.has_rows().await.unwrap());
    assert!(!new.has_rows().await.unwrap());
    assert_eq!(old.row_spans().await.unwrap(), 120);
    assert_eq!(new.row_spans().await.unwrap(), 0);
    assert!(new.size_bytes().await.unwrap() > 0);

    let ids = trace_ids();
    assert_eq!(ids.len(), 40);
    for id in &ids {
        let from_rows = sorted(old.trace(*id).await.unwrap());
        let from_block = sorted(new.trace(*id).await.unwrap());
        assert_eq!(from_rows.len(), 3, "trace {id:?}");
        assert_eq!(from_rows, from_block, "trace {id:?}");
    }
    assert_eq!(
        old.traces(&ids).await.unwrap().len(),
        new.traces(&ids).await.unwrap().len()
    );
    for q in queries() {
        let a = old.search(&q).await.unwrap();
        let b = new.search(&q).await.unwrap();
        assert_eq!(a, b, "{q:?}");
    }
    // Not every search is empty or everything: the comparison means something.
    let sizes: Vec<usize> = {
        let mut v = Vec::new();
        for q in queries() {
            v.push(new.search(&q).await.unwrap().len());
        }
        v
    };
    assert!(sizes.contains(&0) && sizes.iter().any(|n| *n > 0 && *n < 20));
    assert_eq!(old.services().await.unwrap(), new.services().await.unwrap());
    assert_eq!(
        old.operations("cart", None).await.unwrap(),
        new.operations("cart", None).await.unwrap()
    );
}

/// New blocks go beside the old rows; reads see both; retention takes the rows first, then the
/// blocks.
#[tokio::test]
async fn a_row_store_takes_blocks_and_retention_empties_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/store/meshlens-rows.db"
        ),
        &path,
    )
    .unwrap();
    let store = open(&path).await;
    // One more span for trace 0, now in a block.
    let first = &fixture_commits()[0][0];
    let late = SpanBuilder::new(1, 77, "frontend", "late", T0 + 500)
        .resource(resource("frontend", Some("v1")))
        .build();
    let late = Span {
        trace_id: first.trace_id,
        ..late
    };
    store.write(&[&encode_batch(&[late])]).await.unwrap();
    assert_eq!(store.trace(first.trace_id).await.unwrap().len(), 4);
    let q = TraceQuery {
        operation: Some("late".into()),
        start_min_ns: (T0 - 3_600_000_000_000) as i64,
        start_max_ns: (T0 + 3_600_000_000_000) as i64,
        ..TraceQuery::default()
    };
    assert_eq!(store.search(&q).await.unwrap(), vec![first.trace_id]);

    // Retention: the rows (committed long ago), then nothing of the new block (committed now).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let cutoff = now - 60_000_000_000;
    let mut deleted = 0;
    for _ in 0..10 {
        deleted += store.delete_committed_before(cutoff, 50).await.unwrap();
    }
    assert_eq!(deleted, 120);
    assert!(!store.has_rows().await.unwrap());
    assert_eq!(store.row_spans().await.unwrap(), 0);
    assert_eq!(store.count_spans().await.unwrap(), 1);
    assert_eq!(store.trace(first.trace_id).await.unwrap().len(), 1);
    store.settle_trace_index().await.unwrap();
    assert_eq!(store.trace(first.trace_id).await.unwrap().len(), 1);
    store.close().await;
}
