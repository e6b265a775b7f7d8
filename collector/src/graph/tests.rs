//! Fixture-driven graph tests: real OpenTelemetry SDK exports (`testdata/graph/*.otlp.jsonl`, one
//! OTLP/JSON request per line) in, the expected service-level edges (`*.edges.json`) out.

use bytes::Bytes;
use meshlens_topology::graph::{GraphQuery, Topology};
use serde_json::{json, Value};

use crate::otlp::convert::convert_traces;
use crate::otlp::http::{decode_request, Format};

const NOW: u64 = 1_800_000_000_000_000_000;

fn read(name: &str) -> String {
    let path = format!("{}/testdata/graph/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture's spans, export by export, each decoded and converted as a receiver would.
fn exports(name: &str) -> Vec<Vec<meshlens_topology::Span>> {
    read(&format!("{name}.otlp.jsonl"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let req = decode_request(Format::Json, &Bytes::from(line.to_string())).unwrap();
            let converted = convert_traces(req);
            assert_eq!(converted.rejected.count, 0, "{name}: the fixture is valid");
            converted.spans
        })
        .collect()
}

fn edge_list(t: &mut Topology) -> Value {
    let mut g = t.snapshot(&GraphQuery::default(), NOW);
    g.edges
        .sort_by_key(|e| (e.client.id(), e.server.id(), e.connection.as_str()));
    Value::Array(
        g.edges
            .iter()
            .map(|e| {
                let versions: Vec<Value> = e
                    .versions
                    .iter()
                    .map(|v| json!([v.client_version.as_deref(), v.server_version.as_deref()]))
                    .collect();
                json!({
                    "source": e.client.id(),
                    "target": e.server.id(),
                    "connection_type": e.connection.as_str(),
                    "requests": e.stats.counts.requests,
                    "failures": e.stats.counts.failures,
                    "versions": versions,
                })
            })
            .collect(),
    )
}

/// Feeds the fixture's exports in the given order and compares the edges with the expected file.
fn check(name: &str, order: &[usize]) {
    let exports = exports(name);
    let mut t = Topology::default();
    for &i in order {
        t.observe(&exports[i], NOW);
    }
    t.flush(NOW);
    let want: Value = serde_json::from_str(&read(&format!("{name}.edges.json"))).unwrap();
    assert_eq!(
        edge_list(&mut t),
        want,
        "{name}, exports in order {order:?}"
    );
}

#[test]
fn shop_mesh_from_the_python_sdk() {
    // Each service's export as it arrived, and the reverse: servers before their clients.
    check("shop", &[0, 1, 2, 3]);
    check("shop", &[3, 2, 1, 0]);
    check("shop", &[2, 0, 3, 1]);
}

/// The graph thread runs below a normal thread's priority (a positive nice value on Linux), so
/// that the receivers and the writer, which acknowledge exports, get the cores first.
#[cfg(target_os = "linux")]
#[test]
fn the_graph_thread_yields_to_the_ack_path() {
    let metrics = crate::metrics::Metrics::new();
    let memory = crate::memory::MemoryLimiter::unlimited(metrics.clone());
    let _feed = super::GraphFeed::new(&super::GraphConfig::default(), &metrics, &memory);
    // Field 19 of /proc/<pid>/task/<tid>/stat is the nice value; the thread sets it as it starts.
    let nice_of_graph_threads = || -> Vec<i64> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let dir = t.ok()?.path();
                let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                if comm.trim() != "meshlens-graph" {
                    return None;
                }
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                // The fields after the parenthesised name, from field 3 (state) on.
                let rest = &stat[stat.rfind(')')? + 2..];
                rest.split(' ').nth(16)?.parse().ok()
            })
            .collect()
    };
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = nice_of_graph_threads();
        if !seen.is_empty() && seen.iter().all(|n| *n > 0) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("graph threads' nice values: {seen:?}");
}
