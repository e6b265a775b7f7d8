//! The graph from Istio's standard metrics, driven by the fixtures in `testdata/istio/`: two
//! scrapes of a whole mesh as Prometheus holds them, and the graph each scenario must give for
//! the traffic between them (`expected.json`, written from the traffic table in `generate.py`).
//! The second scrape arrives as remote write sends it, sharded by series into several requests
//! in any order, and one request arrives twice (a retry): each call must count once.

use std::collections::BTreeMap;

use meshlens_topology::graph::{
    flag_bits, ConnectionType, Counts, EdgeKey, FlagCounts, LatencySketch, MetricObservation,
    NodeKind, ProxyMetrics,
};
use meshlens_topology::prom::{batches_from_series, PromSeries};
use meshlens_topology::testing::{istio_fixture, parse_exposition};
use serde_json::Value;

const T0_MS: i64 = 1_780_000_000_000;
const INTERVAL_MS: i64 = 15_000;

/// An edge as the fixtures name it: `kind:namespace/name@version -> … (protocol)`.
fn edge_name(key: &EdgeKey) -> String {
    let end = |e: &meshlens_topology::graph::Endpoint| {
        let v = e
            .version
            .as_deref()
            .map(|v| format!("@{v}"))
            .unwrap_or_default();
        format!("{}{v}", e.node.id())
    };
    format!(
        "{} -> {} ({})",
        end(&key.client),
        end(&key.server),
        key.connection.as_str()
    )
}

fn expected_end(v: &Value) -> String {
    let name = v["service"].as_str().unwrap();
    let kind = if name == "unknown" {
        return "user:user".into();
    } else if v["external"].as_bool() == Some(true) {
        NodeKind::External
    } else if name == "waypoint" {
        NodeKind::Waypoint
    } else {
        NodeKind::Service
    };
    let ns = v["namespace"]
        .as_str()
        .map(|n| format!("{n}/"))
        .unwrap_or_default();
    let version = v["version"]
        .as_str()
        .map(|v| format!("@{v}"))
        .unwrap_or_default();
    format!("{}:{ns}{name}{version}", kind.as_str())
}

/// What the fixture says of an edge, in the graph's counts.
fn expected_counts(e: &Value) -> Counts {
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    Counts {
        requests: n("requests"),
        failures: n("http_5xx") + n("grpc_errors"),
        http_4xx: n("http_4xx"),
        http_5xx: n("http_5xx"),
        grpc_errors: n("grpc_errors"),
        denied: n("denied"),
        rate_limited: n("rate_limited"),
        overflows: n("overflows"),
        mtls: n("mtls"),
        tls_known: n("tls_known"),
        tcp_sent_bytes: n("tcp_sent_bytes"),
        tcp_received_bytes: n("tcp_received_bytes"),
        tcp_opened: n("tcp_connections_opened"),
        tcp_closed: n("tcp_connections_closed"),
        flags: expected_flags(&e["response_flags"]),
        ..Counts::default()
    }
}

/// The fixture's `response_flags` (`{"UT": 3}`) as the graph counts them.
fn expected_flags(flags: &Value) -> FlagCounts {
    let mut out = FlagCounts::default();
    for (name, n) in flags.as_object().unwrap() {
        let bits = flag_bits(if name == "other" { "?" } else { name });
        assert_ne!(bits, 0, "{name}");
        out.add_bits(bits, n.as_u64().unwrap());
    }
    out
}

struct Got {
    counts: Counts,
    latency: LatencySketch,
}

/// Feeds the scenario's two scrapes and sums what the second one added, per edge.
fn graph_of(scenario: &str) -> BTreeMap<String, Got> {
    let mut metrics = ProxyMetrics::default();
    let mut out: Vec<MetricObservation> = Vec::new();
    let scrape0 = parse_exposition(&istio_fixture(scenario, "scrape-0.prom"), T0_MS);
    for b in batches_from_series(scrape0).batches {
        metrics.observe(&b, &mut out);
    }
    assert!(out.is_empty(), "the first scrape is every series' baseline");
    // The second scrape in three shards by series, sent last shard first; the first shard is
    // then sent again, as Prometheus retries a request whose answer it lost.
    let scrape1 = parse_exposition(
        &istio_fixture(scenario, "scrape-1.prom"),
        T0_MS + INTERVAL_MS,
    );
    let mut shards: [Vec<PromSeries>; 3] = Default::default();
    for (i, s) in scrape1.into_iter().enumerate() {
        shards[(i * 7) % 3].push(s);
    }
    let retry = shards[0].clone();
    for shard in shards.into_iter().rev().chain([retry]) {
        for b in batches_from_series(shard).batches {
            metrics.observe(&b, &mut out);
        }
    }
    assert!(
        metrics.late > 0,
        "the retried shard's samples were seen as late"
    );
    let mut graph: BTreeMap<String, Got> = BTreeMap::new();
    for o in out {
        let got = graph.entry(edge_name(&o.key)).or_insert(Got {
            counts: Counts::default(),
            latency: LatencySketch::new(),
        });
        got.counts.add(&o.counts);
        if let Some(l) = &o.latency {
            got.latency.merge(l);
        }
    }
    graph
}

/// Compares the graph with the fixture's edges; `bytes` is checked apart (HTTP edges carry the
/// request and response sizes where the fixture has them).
fn assert_graph(scenario: &str, got: &BTreeMap<String, Got>, expected: &[&Value]) {
    let mut want: BTreeMap<String, &Value> = BTreeMap::new();
    for e in expected {
        let protocol = e["protocol"].as_str().unwrap();
        assert!(ConnectionType::parse(protocol).is_some(), "{protocol}");
        let name = format!(
            "{} -> {} ({protocol})",
            expected_end(&e["source"]),
            expected_end(&e["destination"])
        );
        assert!(want.insert(name, e).is_none());
    }
    let names = |m: Vec<&String>| m.into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(got.keys().collect()),
        names(want.keys().collect()),
        "{scenario}: the edges"
    );
    for (name, e) in want {
        let g = &got[&name];
        let mut counts = g.counts;
        counts.bytes = 0;
        assert_eq!(counts, expected_counts(e), "{scenario}: {name}");
        if let Some(h) = e.get("latency_histogram_ms").filter(|h| !h.is_null()) {
            let n: u64 = h["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .sum();
            assert_eq!(g.latency.count(), n, "{scenario}: {name}: latencies");
            // The median lies in the bucket the fixture's median is in.
            let bounds: Vec<f64> = h["bounds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_f64().unwrap())
                .collect();
            let counts: Vec<u64> = h["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
            let mut seen = 0;
            let bucket = counts
                .iter()
                .position(|c| {
                    seen += c;
                    seen * 2 >= n
                })
                .unwrap();
            let lower = if bucket == 0 { 0.0 } else { bounds[bucket - 1] };
            let upper = bounds.get(bucket).copied().unwrap_or(f64::INFINITY);
            let p50 = g.latency.quantiles().unwrap().p50_ns / 1e6;
            assert!(
                p50 >= lower * 0.98 && p50 <= upper * 1.02,
                "{scenario}: {name}: p50 {p50} ms outside ({lower}, {upper}]"
            );
        } else {
            assert_eq!(g.latency.count(), 0, "{scenario}: {name}: no latencies");
        }
    }
}

fn expected(scenario: &str) -> Value {
    serde_json::from_str(&istio_fixture(scenario, "expected.json")).unwrap()
}

fn is_waypoint_edge(name: &str) -> bool {
    name.contains("waypoint:")
}

#[test]
fn bookinfo_on_sidecars_gives_kialis_graph_with_each_call_counted_once() {
    let want = expected("bookinfo-sidecar");
    let got = graph_of("bookinfo-sidecar");
    let edges: Vec<&Value> = want["edges"].as_array().unwrap().iter().collect();
    assert_graph("bookinfo-sidecar", &got, &edges);
    // HTTP edges with size histograms carry their bytes; TCP edges both directions.
    let mongo = got
        .iter()
        .find(|(k, _)| k.contains("mongodb") && k.ends_with("(tcp)"))
        .unwrap()
        .1;
    assert_eq!(
        mongo.counts.bytes,
        mongo.counts.tcp_sent_bytes + mongo.counts.tcp_received_bytes
    );
    assert!(
        got.values()
            .filter(|g| g.counts.requests > 0 && g.counts.bytes > 0)
            .count()
            > 0,
        "request and response sizes reach their edges"
    );
}

#[test]
fn ambient_counts_the_waypoints_l7_view_once_and_its_hops_apart() {
    let want = expected("ambient-waypoint");
    let got = graph_of("ambient-waypoint");
    // Waypoints hidden (the default): the L7 edges and the plain ztunnel edge.
    let shown: BTreeMap<String, Got> = got
        .iter()
        .filter(|(k, _)| !is_waypoint_edge(k))
        .map(|(k, g)| {
            (
                k.clone(),
                Got {
                    counts: g.counts,
                    latency: g.latency.clone(),
                },
            )
        })
        .collect();
    let edges: Vec<&Value> = want["edges"].as_array().unwrap().iter().collect();
    assert_graph("ambient-waypoint", &shown, &edges);
    // Waypoints drawn: as Kiali draws them, the L7 edges stay client → server and ztunnel's
    // hops to and from the waypoint join them as TCP edges.
    let hops: Vec<&Value> = want["waypoint_edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["protocol"] == "tcp"
                && (e["source"]["service"] == "waypoint"
                    || e["destination"]["service"] == "waypoint")
        })
        .collect();
    assert_eq!(hops.len(), 4);
    let all: Vec<&Value> = edges.iter().copied().chain(hops).collect();
    assert_graph("ambient-waypoint (waypoints drawn)", &got, &all);
}
