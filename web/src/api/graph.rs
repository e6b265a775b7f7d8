//! `GET /api/graph`: the live service graph of a window, as JSON (shape in docs/api.md).

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meshlens_topology::graph::{
    build_snapshot, gateway_kind, Counts, EdgeKey, EdgeSnapshot, GraphQuery, GraphSnapshot,
    LatencyFrom, NodeKind, NodeSnapshot, Quantiles, Sources, Stats, Summary, Window,
};
use serde::Serialize;

use super::jaeger::Envelope;
use crate::{WebError, WebState};

#[derive(Debug, Serialize)]
pub struct Graph {
    /// When the snapshot was taken (RFC 3339, UTC).
    pub generated_at: String,
    pub window: &'static str,
    pub window_seconds: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    /// An Istio gateway (`ingress` or `egress`, from its workload's name), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<&'static str>,
    pub health: &'static str,
    /// Calls the node received in the window.
    pub stats: StatsDto,
    pub outbound_requests: u64,
    pub versions: Vec<Version>,
}

#[derive(Debug, Serialize)]
pub struct Version {
    pub version: String,
    /// Share of the node's inbound calls (0–1).
    pub share: f64,
    pub health: &'static str,
    pub stats: StatsDto,
}

#[derive(Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub connection_type: &'static str,
    pub health: &'static str,
    pub stats: StatsDto,
    /// The edge's calls as spans, proxy metrics and the policy server each counted them (`stats`
    /// combines them: metrics win where present, refusals take the larger count).
    pub sources: SourcesDto,
    pub versions: Vec<EdgeVersion>,
}

#[derive(Debug, Serialize)]
pub struct SourcesDto {
    pub spans: SourceCounts,
    pub metrics: SourceCounts,
    pub policy: PolicySourceCounts,
}

#[derive(Debug, Serialize)]
pub struct SourceCounts {
    pub requests: u64,
    pub failures: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    pub denied: u64,
    pub rate_limited: u64,
    pub overflows: u64,
    pub retries: u64,
}

#[derive(Debug, Serialize)]
pub struct PolicySourceCounts {
    pub denied: u64,
    pub rate_limited: u64,
}

fn source_counts(c: &Counts) -> SourceCounts {
    SourceCounts {
        requests: c.requests,
        failures: c.failures,
        http_4xx: c.http_4xx,
        http_5xx: c.http_5xx,
        denied: c.denied,
        rate_limited: c.rate_limited,
        overflows: c.overflows,
        retries: c.retries,
    }
}

fn sources_dto(s: &Sources) -> SourcesDto {
    SourcesDto {
        spans: source_counts(&s.spans),
        metrics: source_counts(&s.metrics),
        policy: PolicySourceCounts {
            denied: s.policy.denied,
            rate_limited: s.policy.rate_limited,
        },
    }
}

#[derive(Debug, Serialize)]
pub struct EdgeVersion {
    pub source_version: Option<String>,
    pub target_version: Option<String>,
    pub stats: StatsDto,
}

#[derive(Debug, Serialize)]
pub struct StatsDto {
    pub requests: u64,
    /// Requests per second over the window.
    pub rps: f64,
    pub failures: u64,
    /// failures / requests (0 when idle).
    pub error_ratio: f64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    pub grpc_errors: u64,
    pub denied: u64,
    pub rate_limited: u64,
    pub overflows: u64,
    pub bytes: u64,
    /// TCP edges (Istio's `istio_tcp_*`): bytes the server sent back and bytes it received,
    /// per second over the window, and connections opened and closed.
    pub tcp_sent_bps: f64,
    pub tcp_received_bps: f64,
    pub tcp_connections_opened: u64,
    pub tcp_connections_closed: u64,
    /// Retries and outlier ejections (from proxies' metrics).
    pub retries: u64,
    pub ejections: u64,
    /// Share of requests over mutual TLS, in percent, where proxies reported it (Istio).
    pub mtls_pct: Option<f64>,
    /// Calls by Envoy's response flag (`UF`, `UH`, `NR`, …, and `other`), where any was set.
    pub response_flags: BTreeMap<&'static str, u64>,
    /// Server-side latency where known, else client-side (virtual nodes); from the proxies'
    /// histograms where spans saw fewer than half the calls.
    pub latency_ms: Option<Percentiles>,
    /// Where `latency_ms` came from: `spans` or `metrics`.
    pub latency_source: Option<&'static str>,
    pub client_latency_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

fn percentiles(q: Option<Quantiles>) -> Option<Percentiles> {
    q.map(|q| Percentiles {
        p50: q.p50_ns / 1e6,
        p95: q.p95_ns / 1e6,
        p99: q.p99_ns / 1e6,
    })
}

pub fn stats_dto(s: &Summary, window: Window) -> StatsDto {
    let c = &s.counts;
    StatsDto {
        requests: c.requests,
        rps: c.requests as f64 / window.seconds() as f64,
        failures: c.failures,
        error_ratio: if c.requests == 0 {
            0.0
        } else {
            c.failures as f64 / c.requests as f64
        },
        http_4xx: c.http_4xx,
        http_5xx: c.http_5xx,
        grpc_errors: c.grpc_errors,
        denied: c.denied,
        rate_limited: c.rate_limited,
        overflows: c.overflows,
        bytes: c.bytes,
        tcp_sent_bps: c.tcp_sent_bytes as f64 / window.seconds() as f64,
        tcp_received_bps: c.tcp_received_bytes as f64 / window.seconds() as f64,
        tcp_connections_opened: c.tcp_opened,
        tcp_connections_closed: c.tcp_closed,
        retries: c.retries,
        ejections: c.ejections,
        mtls_pct: (c.tls_known > 0).then(|| c.mtls as f64 * 100.0 / c.tls_known as f64),
        response_flags: c.flags.iter().collect(),
        latency_ms: percentiles(s.latency),
        latency_source: s.latency.and(s.latency_from).map(LatencyFrom::as_str),
        client_latency_ms: percentiles(s.client_latency),
    }
}

pub(crate) fn node(n: &NodeSnapshot, w: Window) -> Node {
    Node {
        id: n.key.id(),
        kind: n.key.kind.as_str(),
        namespace: n.key.namespace.as_deref().map(String::from),
        name: n.key.name.to_string(),
        gateway: (n.key.kind == NodeKind::Service)
            .then(|| gateway_kind(&n.key.name))
            .flatten(),
        health: n.health.as_str(),
        stats: stats_dto(&n.inbound, w),
        outbound_requests: n.outbound_requests,
        versions: n
            .versions
            .iter()
            .map(|v| Version {
                version: v.version.to_string(),
                share: v.share,
                health: v.health.as_str(),
                stats: stats_dto(&v.inbound, w),
            })
            .collect(),
    }
}

fn edge(e: &EdgeSnapshot, w: Window) -> Edge {
    let (source, target) = (e.client.id(), e.server.id());
    Edge {
        id: format!("{source}->{target}:{}", e.connection.as_str()),
        source,
        target,
        connection_type: e.connection.as_str(),
        health: e.health.as_str(),
        stats: stats_dto(&e.stats, w),
        sources: sources_dto(&e.stats.sources),
        versions: e
            .versions
            .iter()
            .map(|v| EdgeVersion {
                source_version: v.client_version.as_deref().map(String::from),
                target_version: v.server_version.as_deref().map(String::from),
                stats: stats_dto(&v.stats, w),
            })
            .collect(),
    }
}

pub fn graph_dto(g: &GraphSnapshot, built_at: SystemTime) -> Graph {
    Graph {
        generated_at: humantime::format_rfc3339_millis(built_at).to_string(),
        window: g.window.as_str(),
        window_seconds: g.window.seconds(),
        nodes: g.nodes.iter().map(|n| node(n, g.window)).collect(),
        edges: g.edges.iter().map(|e| edge(e, g.window)).collect(),
    }
}

/// `/api/services`: Jaeger's envelope, plus the RED summary of every service node.
#[derive(Debug, Serialize)]
pub struct ServicesResponse {
    #[serde(flatten)]
    pub envelope: Envelope<Vec<String>>,
    pub window: &'static str,
    pub services: Vec<Node>,
}

impl ServicesResponse {
    pub fn new(envelope: Envelope<Vec<String>>, g: &GraphSnapshot) -> Self {
        ServicesResponse {
            envelope,
            window: g.window.as_str(),
            services: g
                .nodes
                .iter()
                .filter(|n| n.key.kind == NodeKind::Service)
                .map(|n| node(n, g.window))
                .collect(),
        }
    }
}

/// Reads `window`, `namespace`, `service`, `depth`, `versions`; anything else is ignored.
fn flag(name: &str, v: &str) -> Result<bool, WebError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(WebError::BadRequest(format!(
            "{name} must be true or false; got {v:?}"
        ))),
    }
}

pub fn parse_query(raw: &str) -> Result<GraphQuery, WebError> {
    let mut q = GraphQuery::default();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match &*k {
            "window" => {
                q.window = Window::parse(&v).ok_or_else(|| {
                    WebError::BadRequest(format!(
                        "window must be one of 1m, 5m, 15m, 1h; got {v:?}"
                    ))
                })?
            }
            "namespace" if !v.is_empty() => q.namespace = Some(v.into_owned()),
            "service" if !v.is_empty() => q.service = Some(v.into_owned()),
            "depth" => {
                let d: usize = v.parse().ok().filter(|d| *d <= 100).ok_or_else(|| {
                    WebError::BadRequest(format!("depth must be a number from 0 to 100; got {v:?}"))
                })?;
                q.depth = Some(d);
            }
            "versions" => q.versions = flag("versions", &v)?,
            "waypoints" => q.waypoints = flag("waypoints", &v)?,
            _ => {}
        }
    }
    Ok(q)
}

/// The whole graph's JSON, as the cache keeps it.
pub fn graph_json(g: &GraphSnapshot, built_at: SystemTime) -> Bytes {
    Bytes::from(serde_json::to_vec(&graph_dto(g, built_at)).unwrap_or_default())
}

/// `end=`: the end of a past window, as unix seconds (milliseconds are taken for values past
/// the year 5000 in seconds) or RFC 3339.
pub fn parse_end(raw: &str) -> Result<Option<SystemTime>, WebError> {
    let Some(v) = form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "end")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let bad = || {
        WebError::BadRequest(format!(
            "end must be unix seconds or an RFC 3339 time; got {v:?}"
        ))
    };
    if let Ok(n) = v.parse::<u64>() {
        let secs = if n > 100_000_000_000 { n / 1000 } else { n };
        return Ok(Some(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        ));
    }
    humantime::parse_rfc3339_weak(&v)
        .map(Some)
        .map_err(|_| bad())
}

/// A past window, rebuilt from the per-minute history: the whole minutes before `end`.
async fn past_graph(st: &WebState, query: &GraphQuery, end: SystemTime) -> Result<Bytes, WebError> {
    let end_minute = end
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 60) as i64)
        .unwrap_or(0);
    let minutes = (query.window.seconds() / 60) as i64;
    let snapshot = history_snapshot(st, end_minute - minutes, end_minute, query.window).await?;
    Ok(graph_json(&snapshot.filtered(query), end))
}

/// The graph of the stored minutes in `[from, to)` (unix minutes); `window` sets its rates.
pub(crate) async fn history_snapshot(
    st: &WebState,
    from: i64,
    to: i64,
    window: Window,
) -> Result<GraphSnapshot, WebError> {
    let rows = st.store.edge_minutes(from, to).await?;
    let mut edges: std::collections::HashMap<EdgeKey, Stats> = std::collections::HashMap::new();
    for r in rows {
        edges.entry(r.key).or_default().merge(&r.stats);
    }
    let health = st.graph.health();
    Ok(build_snapshot(edges.iter(), window, &health))
}

/// `GET /api/graph?window=5m&namespace=&service=&depth=&versions=true[&end=…]`
pub async fn get_graph(
    State(st): State<WebState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, WebError> {
    let raw = raw.as_deref().unwrap_or("");
    let query = parse_query(raw)?;
    if let Some(end) = parse_end(raw)? {
        return Ok(json_bytes(past_graph(&st, &query, end).await?));
    }
    let cached = st.graph.get(query.window).await?;
    if query == GraphQuery::whole(query.window) {
        return Ok(json_bytes(cached.json.clone()));
    }
    // Same filters, same snapshot, same answer: a polling UI gets it from memory.
    Ok(json_bytes(st.graph.filtered_json(
        query.window,
        &cached,
        &query,
    )))
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
