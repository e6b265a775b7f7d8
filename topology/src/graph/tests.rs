use super::*;
use crate::span::SpanKind;
use crate::testing::{resource, SpanBuilder};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000_000_000;

fn topology() -> Topology {
    Topology::new(PairingConfig::default(), HealthConfig::default())
}

/// One call from `client` to `server` in trace `trace`: a CLIENT span (id `id`) and its SERVER
/// child (id `id + 1`), under `parent` on the client's side.
fn call(
    trace: u64,
    id: u64,
    parent: Option<u64>,
    client: (&str, Option<&str>),
    server: (&str, Option<&str>),
    status: u16,
) -> [Span; 2] {
    let mut c = SpanBuilder::new(trace, id, client.0, "GET", 10_000)
        .kind(SpanKind::Client)
        .resource(resource(client.0, client.1))
        .duration_ns(3_000_000)
        .attr("http.status_code", status as i64);
    if let Some(p) = parent {
        c = c.parent(p);
    }
    let s = SpanBuilder::new(trace, id + 1, server.0, "GET /", 11_000)
        .kind(SpanKind::Server)
        .resource(resource(server.0, server.1))
        .parent(id)
        .duration_ns(2_000_000)
        .attr("http.response.status_code", status as i64);
    [c.build(), s.build()]
}

fn edges(snapshot: &GraphSnapshot) -> Vec<(String, String, u64, u64)> {
    snapshot
        .edges
        .iter()
        .map(|e| {
            (
                e.client.id(),
                e.server.id(),
                e.stats.counts.requests,
                e.stats.counts.failures,
            )
        })
        .collect()
}

#[test]
fn a_trace_gives_its_edges_and_versions() {
    let mut t = topology();
    let root = SpanBuilder::new(1, 1, "ingress", "GET /", 9_000)
        .resource(resource("ingress", None))
        .build();
    let mut spans = vec![root];
    spans.extend(call(
        1,
        10,
        Some(1),
        ("ingress", None),
        ("work", Some("v1")),
        200,
    ));
    spans.extend(call(
        1,
        20,
        Some(11),
        ("work", Some("v1")),
        ("meet", None),
        200,
    ));
    spans.extend(call(
        2,
        30,
        None,
        ("ingress", None),
        ("work", Some("v2")),
        503,
    ));
    let db = SpanBuilder::new(1, 40, "meet", "SELECT", 12_000)
        .kind(SpanKind::Client)
        .parent(21)
        .attr("db.system", "postgresql")
        .attr("db.name", "meetings")
        .build();
    spans.push(db);
    // Servers first: pairing does not care which side comes first.
    spans.reverse();
    let observed = t.observe(&spans, NOW);
    assert_eq!(observed.len(), 5);
    assert_eq!(t.pending(), 0);
    let g = t.snapshot(&GraphQuery::default(), NOW);
    assert_eq!(
        edges(&g),
        vec![
            ("service:ingress".into(), "service:work".into(), 2, 1),
            ("service:meet".into(), "database:meetings".into(), 1, 0),
            ("service:work".into(), "service:meet".into(), 1, 0),
            ("user:user".into(), "service:ingress".into(), 1, 0),
        ]
    );
    let work = g.nodes.iter().find(|n| &*n.key.name == "work").unwrap();
    let shares: Vec<(&str, f64)> = work
        .versions
        .iter()
        .map(|v| (&*v.version, v.share))
        .collect();
    assert_eq!(shares, vec![("v1", 0.5), ("v2", 0.5)]);
    assert_eq!(work.health, Health::Failure, "one of two calls failed");
    let p99 = g.edges[0].stats.latency.unwrap().p99_ns;
    assert!((p99 - 2_000_000.0).abs() <= 20_000.0, "{p99}");
    let c = t.counters();
    assert_eq!((c.paired, c.virtual_edges, c.unpaired), (6, 2, 0));
}

#[test]
fn unpaired_spans_expire_into_virtual_nodes_or_counts() {
    let mut t = Topology::new(
        PairingConfig {
            ttl_ns: 1_000,
            max_pending: 2,
        },
        HealthConfig::default(),
    );
    let external = SpanBuilder::new(1, 1, "work", "GET", 10)
        .kind(SpanKind::Client)
        .attr("peer.service", "payments")
        .build();
    let orphan_client = SpanBuilder::new(1, 2, "work", "GET", 10)
        .kind(SpanKind::Client)
        .build();
    let orphan_server = SpanBuilder::new(1, 3, "meet", "GET", 10).parent(99).build();
    assert!(t.observe([&external, &orphan_client], NOW).is_empty());
    // The store is full: the oldest (the external call) is evicted, and settled at once.
    let evicted = t.observe([&orphan_server], NOW);
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].key.server.node.kind, NodeKind::External);
    assert!(t.tick(NOW + 999).is_empty());
    assert!(
        t.tick(NOW + 1_000).is_empty(),
        "neither orphan names a peer"
    );
    let c = t.counters();
    assert_eq!(
        (c.evicted, c.expired, c.unpaired, c.virtual_edges),
        (1, 2, 2, 1)
    );
    assert_eq!(t.pending(), 0);
}

#[test]
fn filters_by_namespace_service_and_depth() {
    let mut t = topology();
    let ns = |name: &str, ns: &str| {
        let mut a = crate::Attributes::new();
        a.push("service.name", name);
        a.push("service.namespace", ns);
        std::sync::Arc::new(crate::Resource::new(a))
    };
    let mut spans = Vec::new();
    for (i, (c, cn, s, sn)) in [
        ("a", "x", "b", "x"),
        ("b", "x", "c", "y"),
        ("c", "y", "d", "y"),
    ]
    .into_iter()
    .enumerate()
    {
        let [cs, ss] = call(7, 100 + 2 * i as u64, None, (c, None), (s, None), 200);
        spans.push(SpanBuilder::from(cs).resource(ns(c, cn)).build());
        spans.push(SpanBuilder::from(ss).resource(ns(s, sn)).build());
    }
    t.observe(&spans, NOW);
    let names = |q: GraphQuery, t: &mut Topology| -> Vec<String> {
        t.snapshot(&q, NOW)
            .nodes
            .iter()
            .map(|n| n.key.name.to_string())
            .collect()
    };
    let q = |namespace: Option<&str>, service: Option<&str>, depth| GraphQuery {
        namespace: namespace.map(String::from),
        service: service.map(String::from),
        depth,
        ..GraphQuery::default()
    };
    assert_eq!(names(q(None, None, None), &mut t), ["a", "b", "c", "d"]);
    assert_eq!(names(q(Some("x"), None, None), &mut t), ["a", "b", "c"]);
    let mut near_b = names(q(None, Some("b"), None), &mut t);
    near_b.sort();
    assert_eq!(near_b, ["a", "b", "c"]);
    assert_eq!(names(q(None, Some("b"), Some(2)), &mut t).len(), 4);
    assert!(names(q(None, Some("nobody"), None), &mut t).is_empty());
}

#[test]
fn idle_edges_stay_until_the_longest_window_ends() {
    let mut t = topology();
    t.observe(&call(1, 10, None, ("a", None), ("b", None), 200), NOW);
    let later = NOW + 600_000_000_000;
    let g = t.snapshot(&GraphQuery::default(), later);
    assert_eq!(g.edges.len(), 1);
    assert_eq!(g.edges[0].health, Health::Idle);
    assert_eq!(g.edges[0].stats.counts.requests, 0);
    t.tick(NOW + 3_601_000_000_000);
    assert_eq!(t.edge_count(), 0);
}

/// A random mesh trace: calls between a few services, each with its client and server span, some
/// failing, some with a database call, and a root server span.
fn arb_traces() -> impl Strategy<Value = Vec<Span>> {
    let call_strategy = (
        0u64..4,
        0usize..5,
        0usize..5,
        prop::bool::weighted(0.2),
        1u64..50_000_000,
    );
    prop::collection::vec(prop::collection::vec(call_strategy, 1..6), 1..8).prop_map(|traces| {
        let services = ["a", "b", "c", "d", "e"];
        let mut spans = Vec::new();
        let mut id = 1;
        for (t, calls) in traces.into_iter().enumerate() {
            let trace = t as u64 + 1;
            spans.push(SpanBuilder::new(trace, id, "a", "root", 1).build());
            let root = id;
            id += 1;
            for (kind, from, to, failed, latency) in calls {
                let [c, s] = call(
                    trace,
                    id,
                    Some(root),
                    (services[from], Some("v1")),
                    (services[to], None),
                    if failed { 500 } else { 200 },
                );
                spans.push(SpanBuilder::from(c).duration_ns(latency + 1000).build());
                spans.push(SpanBuilder::from(s).duration_ns(latency).build());
                if kind == 0 {
                    spans.push(
                        SpanBuilder::new(trace, id + 2, services[to], "q", 5)
                            .kind(SpanKind::Client)
                            .parent(id + 1)
                            .attr("db.system", "redis")
                            .build(),
                    );
                }
                id += 3;
            }
        }
        spans
    })
}

proptest! {
    /// The same spans give the same graph, whatever their order and however they are batched.
    #[test]
    fn graph_is_independent_of_order_and_batches(
        spans in arb_traces(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut reference = topology();
        reference.observe(&spans, NOW);
        reference.flush(NOW);
        let want = reference.snapshot(&GraphQuery::default(), NOW);

        let mut shuffled = spans.clone();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(shuffled.len() + 1)).collect();
        bounds.push(0);
        bounds.push(shuffled.len());
        bounds.sort_unstable();
        let mut t = topology();
        for w in bounds.windows(2) {
            t.observe(&shuffled[w[0]..w[1]], NOW);
        }
        t.flush(NOW);
        prop_assert_eq!(t.snapshot(&GraphQuery::default(), NOW), want);
    }
}

#[test]
fn closed_minutes_are_given_once_each_has_ended() {
    let mut t = topology();
    let minute = |ns: u64| (ns / 60_000_000_000) as i64;
    let t0 = NOW - NOW % 60_000_000_000 + 5_000_000_000;
    t.observe(&call(1, 10, None, ("a", None), ("b", None), 200), t0);
    t.observe(
        &call(2, 10, None, ("a", None), ("b", None), 500),
        t0 + 1_000_000_000,
    );
    assert!(
        t.closed_minutes(i64::MIN, t0 + 30_000_000_000).is_empty(),
        "the minute is not over"
    );
    let rows = t.closed_minutes(i64::MIN, t0 + 60_000_000_000);
    assert_eq!(rows.len(), 1);
    let (m, key, stats) = &rows[0];
    assert_eq!(*m, minute(t0));
    assert_eq!(&*key.server.node.name, "b");
    assert_eq!((stats.counts.requests, stats.counts.failures), (2, 1));
    assert!(
        t.closed_minutes(minute(t0), t0 + 120_000_000_000)
            .is_empty(),
        "given once"
    );
}

#[test]
fn policy_refusals_land_on_the_edge_between_the_services_they_name() {
    let mut t = topology();
    let mut spans = Vec::new();
    spans.extend(call(
        1,
        10,
        None,
        ("ingress", None),
        ("work", Some("v1")),
        200,
    ));
    spans.extend(call(
        2,
        20,
        None,
        ("ingress", None),
        ("work", Some("v2")),
        200,
    ));
    t.observe(&spans, NOW);
    let d = |src: &str, dst: &str, denied, rate_limited| PolicyDecision {
        source: src.into(),
        destination: dst.into(),
        denied,
        rate_limited,
    };
    let placed = t.observe_policy(
        &[d("ingress", "work", 2, 1), d("web", "cart", 0, 4)],
        NOW + 1_000,
    );
    assert_eq!(placed, 2);
    let snap = t.whole(Window::M1, NOW + 2_000);
    let edge = |c: &str, s: &str| {
        snap.edges
            .iter()
            .find(|e| e.client.id() == c && e.server.id() == s)
            .unwrap_or_else(|| panic!("{c} -> {s} in {:?}", edges(&snap)))
            .stats
            .clone()
    };
    let stats = edge("service:ingress", "service:work");
    let work = stats.counts;
    assert_eq!((work.requests, work.denied, work.rate_limited), (2, 2, 1));
    // Each source's own count stays visible beside the combined one.
    assert_eq!(stats.sources.spans.requests, 2);
    assert_eq!(stats.sources.spans.denied, 0);
    assert_eq!(stats.sources.metrics, Counts::default());
    assert_eq!(
        (
            stats.sources.policy.denied,
            stats.sources.policy.rate_limited
        ),
        (2, 1)
    );
    let cart = edge("service:web", "service:cart").counts;
    assert_eq!(
        (cart.requests, cart.rate_limited),
        (0, 4),
        "a pair not yet seen by spans"
    );
}

#[test]
fn an_unpaired_envoy_client_span_to_a_mapped_cluster_reaches_its_service() {
    let mut t = Topology::new(
        PairingConfig {
            ttl_ns: 1_000,
            max_pending: 10,
        },
        HealthConfig::default(),
    )
    .with_clusters(ClusterMap::from_pairs([("meet_cluster", "shop/meet:v2")]).unwrap());
    let span = |id, cluster: &str| {
        SpanBuilder::new(1, id, "work", "egress meet", 10)
            .kind(SpanKind::Client)
            .attr("upstream_cluster", cluster)
            .build()
    };
    t.observe([&span(1, "meet_cluster"), &span(2, "elsewhere")], NOW);
    let mut settled = t.tick(NOW + 1_000);
    settled.sort_by_key(|o| o.key.server.node.id());
    let servers: Vec<_> = settled
        .iter()
        .map(|o| {
            (
                o.key.server.node.id(),
                o.key.server.version.as_deref().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        servers,
        [
            ("external:elsewhere".to_string(), None),
            ("service:shop/meet".to_string(), Some("v2".to_string())),
        ]
    );
    let snap = t.whole(Window::M1, NOW + 2_000);
    assert!(edges(&snap).contains(&("service:work".into(), "service:shop/meet".into(), 1, 0)));
}

#[test]
fn an_edge_seen_only_by_metrics_takes_its_latency_from_their_histograms() {
    use crate::metric::{MetricBatch, MetricPoint, PointValue};
    let mut t = topology();
    let mut attrs = crate::attr::Attributes::new();
    attrs.push("envoy.cluster_name", "outbound|80|v2|meet");
    let point = |counts: Vec<u64>| MetricPoint {
        name: "cluster.upstream_rq_time".into(),
        attributes: attrs.clone(),
        value: PointValue::Histogram {
            count: counts.iter().sum(),
            sum: 0.0,
            bounds: vec![1.0, 10.0, 100.0],
            counts,
            delta: true,
        },
        time_ns: 0,
    };
    let batch = MetricBatch {
        resource: resource("work", Some("v1")),
        points: vec![point(vec![0, 0, 40, 0])],
    };
    t.observe_metrics(&batch, NOW);
    let snap = t.whole(Window::M1, NOW + 1_000);
    let e = &snap.edges[0];
    let p50_ms = e.stats.latency.unwrap().p50_ns / 1e6;
    assert!(
        (p50_ms - 1000f64.sqrt()).abs() < 1.0,
        "the (10, 100] ms bucket: {p50_ms}"
    );
    assert!(e.stats.client_latency.is_none(), "no spans");
    assert_eq!(e.stats.sources.spans, Counts::default());
}

/// An Envoy ingress without `spawn_upstream_span`: its SERVER span (naming the next service in
/// `upstream_cluster`) is the parent of that service's SERVER span. In either order the hop is
/// one edge; with `spawn_upstream_span` (a CLIENT span in between) it is still one.
#[test]
fn an_ingress_server_span_that_forwarded_is_the_client_of_the_next_hop() {
    let ingress = |id| {
        SpanBuilder::new(5, id, "ingress", "ingress work", 10)
            .kind(SpanKind::Server)
            .resource(resource("ingress", None))
            .attr("upstream_cluster", "outbound|80|v1|work")
            .duration_ns(4_000_000)
            .build()
    };
    let work = |id, parent| {
        SpanBuilder::new(5, id, "work", "GET /", 11)
            .kind(SpanKind::Server)
            .resource(resource("work", Some("v1")))
            .parent(parent)
            .duration_ns(2_000_000)
            .build()
    };
    for reversed in [false, true] {
        let mut t = topology();
        let (a, b) = (ingress(1), work(2, 1));
        let spans = if reversed { [&b, &a] } else { [&a, &b] };
        t.observe(spans, NOW);
        t.tick(NOW + 60 * 1_000_000_000);
        let snap = t.whole(Window::M5, NOW + 60 * 1_000_000_000);
        let mut got = edges(&snap);
        got.sort();
        assert_eq!(
            got,
            [
                ("service:ingress".into(), "service:work".into(), 1, 0),
                ("user:user".into(), "service:ingress".into(), 1, 0),
            ],
            "reversed: {reversed}"
        );
        let c = t.counters();
        assert_eq!(
            (c.paired, c.expired, c.unpaired),
            (1, 0, 0),
            "the work span paired"
        );
    }
    // With spawn_upstream_span: ingress SERVER 1 → CLIENT 2 → work SERVER 3.
    let mut t = topology();
    let client = SpanBuilder::new(5, 2, "ingress", "router work egress", 10)
        .kind(SpanKind::Client)
        .resource(resource("ingress", None))
        .parent(1)
        .attr("upstream_cluster", "outbound|80|v1|work")
        .build();
    t.observe([&ingress(1), &client, &work(3, 2)], NOW);
    t.tick(NOW + 60 * 1_000_000_000);
    let snap = t.whole(Window::M5, NOW + 60 * 1_000_000_000);
    let hop = edges(&snap)
        .into_iter()
        .filter(|e| e.0 == "service:ingress")
        .collect::<Vec<_>>();
    assert_eq!(
        hop,
        [("service:ingress".into(), "service:work".into(), 1, 0)]
    );
}

/// A service name two namespaces use says nothing about which edge a refusal belongs to: it is
/// left off the graph rather than guessed.
#[test]
fn policy_refusals_naming_an_ambiguous_service_are_not_placed() {
    let mut t = topology();
    let ns = |service: &str, namespace: &str| {
        let mut a = crate::attr::Attributes::new();
        a.push("service.name", service);
        a.push("service.namespace", namespace);
        std::sync::Arc::new(crate::Resource::new(a))
    };
    let span = |id, service: &str, namespace: &str| {
        SpanBuilder::new(9, id, service, "GET", 10)
            .kind(SpanKind::Server)
            .resource(ns(service, namespace))
            .build()
    };
    t.observe(
        [
            &span(1, "work", "a"),
            &span(2, "work", "b"),
            &span(3, "web", "a"),
        ],
        NOW,
    );
    let d = PolicyDecision {
        source: "web".into(),
        destination: "work".into(),
        denied: 1,
        rate_limited: 0,
    };
    assert_eq!(t.observe_policy(&[d], NOW + 1), 0);
    let snap = t.whole(Window::M1, NOW + 2);
    assert!(snap.edges.iter().all(|e| e.stats.counts.denied == 0));
}

/// Envoy writes its response flags on its spans too: a call with `UF` (the upstream connection
/// failed) counts under that name, one without flags (`-`) under none.
#[test]
fn envoys_response_flags_on_spans_count_by_name() {
    let mut t = topology();
    let [c, s] = call(1, 10, None, ("work", None), ("meet", None), 503);
    let mut c = c;
    c.attributes.push("response_flags", "UF,URX");
    let [c2, s2] = call(2, 20, None, ("work", None), ("meet", None), 200);
    let mut c2 = c2;
    c2.attributes.push("response_flags", "-");
    // The rate limit service failed (`RLSE`): rate limited, as Envoy's metrics count it too.
    let [c3, s3] = call(3, 30, None, ("work", None), ("meet", None), 500);
    let mut c3 = c3;
    c3.attributes.push("response_flags", "RLSE");
    t.observe([&c, &s, &c2, &s2, &c3, &s3], NOW);
    let snap = t.whole(Window::M1, NOW + 1_000);
    let flags: Vec<_> = snap.edges[0].stats.counts.flags.iter().collect();
    assert_eq!(flags, [("UF", 1), ("URX", 1)]);
    assert_eq!(snap.edges[0].stats.counts.requests, 3);
    assert_eq!(snap.edges[0].stats.counts.rate_limited, 1);
}

/// A client naming a new peer in every span (a buggy `peer.service`): past the caps, the calls
/// go to the overflow node, from the client still on the graph; callers new to the graph are
/// overflow too. At the cap, edges idle for five minutes make room.
#[test]
fn past_the_caps_new_edges_go_to_the_overflow_node_and_idle_ones_make_room() {
    let mut t = topology().with_limits(GraphLimits {
        max_edges: 4,
        max_nodes: 6,
    });
    let peer = |trace: u64, client: &str, peer: String| {
        SpanBuilder::new(trace, 1, client, "GET", 10)
            .kind(SpanKind::Client)
            .resource(resource(client, Some("v1")))
            .attr("peer.service", peer.as_str())
            .build()
    };
    let spans: Vec<Span> = (0..10)
        .map(|i| peer(i + 1, "work", format!("peer-{i}")))
        .collect();
    t.observe(&spans, NOW);
    t.flush(NOW);
    let mut got = edges(&t.whole(Window::M5, NOW));
    got.sort();
    let mut want: Vec<(String, String, u64, u64)> = (0..4)
        .map(|i| ("service:work".into(), format!("external:peer-{i}"), 1, 0))
        .collect();
    want.push(("service:work".into(), "overflow:__overflow__".into(), 6, 0));
    want.sort();
    assert_eq!(got, want);
    assert_eq!((t.overflowed(), t.edge_count(), t.node_count()), (6, 5, 6));
    // New callers: their end is not on the graph either.
    let strangers: Vec<Span> = (0..3)
        .map(|i| peer(20 + i, &format!("stranger-{i}"), "peer-0".into()))
        .collect();
    t.observe(&strangers, NOW);
    t.flush(NOW);
    let snap = t.whole(Window::M5, NOW);
    let overflow = snap
        .edges
        .iter()
        .find(|e| e.client.kind == NodeKind::Overflow)
        .expect("an overflow edge from the overflow node");
    assert_eq!(
        (overflow.server.id(), overflow.stats.counts.requests),
        ("external:peer-0".to_string(), 3)
    );
    assert_eq!(t.overflowed(), 9);
    // The versions of the client are not kept on overflow edges.
    assert!(snap
        .edges
        .iter()
        .filter(|e| e.server.kind == NodeKind::Overflow)
        .all(|e| e.versions.iter().all(|v| v.client_version.is_none())));
    // Five minutes later, idle, everything gives way; new peers get in.
    let later = NOW + 301_000_000_000;
    t.tick(later);
    assert_eq!((t.edge_count(), t.node_count()), (0, 0));
    t.observe([&peer(40, "work", "peer-new".into())], later);
    t.flush(later);
    assert_eq!(
        edges(&t.whole(Window::M1, later)),
        [("service:work".into(), "external:peer-new".into(), 1, 0)]
    );
}
