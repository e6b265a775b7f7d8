//! A graph of one window, at service level with versions inside: the edges' statistics summed
//! over versions, each node's inbound traffic and its versions' shares, health everywhere, and
//! the namespace, service and depth filters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use petgraph::graph::{NodeIndex, UnGraph};

use crate::graph::health::{Health, HealthConfig};
use crate::graph::node::{ConnectionType, EdgeKey, NodeKey, NodeKind};
use crate::graph::sketch::{Quantiles, SketchSum};
use crate::graph::window::{
    latency_from, Counts, FlagCounts, LatencyFrom, PolicyCounts, Stats, Window,
};

/// What part of the graph to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphQuery {
    pub window: Window,
    /// Only nodes in this namespace, and the nodes they call or are called by.
    pub namespace: Option<String>,
    /// Only this service and what lies within `depth` calls of it, either way.
    pub service: Option<String>,
    /// Hops from `service` (default 1); ignored without `service`.
    pub depth: Option<usize>,
    /// Keep the per-version breakdown.
    pub versions: bool,
    /// Draw ambient waypoints and the hops through them (off by default, as in Kiali).
    pub waypoints: bool,
}

impl GraphQuery {
    /// The whole graph of a window, versions included: no filter at all.
    pub fn whole(window: Window) -> Self {
        GraphQuery {
            window,
            ..GraphQuery::default()
        }
    }
}

impl Default for GraphQuery {
    fn default() -> Self {
        GraphQuery {
            window: Window::M5,
            namespace: None,
            service: None,
            depth: None,
            versions: true,
            waypoints: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphSnapshot {
    pub window: Window,
    pub nodes: Vec<NodeSnapshot>,
    pub edges: Vec<EdgeSnapshot>,
}

/// A window's counts and percentiles for one edge, node or version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// What the graph shows: the sources below, combined (`effective`).
    pub counts: Counts,
    /// The same calls as each source counted them.
    pub sources: Sources,
    /// The latency to show: from spans, server side where known, else client side (virtual
    /// nodes have only that), or from the proxies' histograms where spans are few
    /// ([`latency_from`]).
    pub latency: Option<Quantiles>,
    pub latency_from: Option<LatencyFrom>,
    pub client_latency: Option<Quantiles>,
}

impl Summary {
    fn of(s: &Stats) -> Summary {
        let (latency, latency_from) = s.latency();
        Summary {
            counts: effective(&s.counts, &s.metric_counts, &s.policy_counts),
            sources: Sources {
                spans: s.counts,
                metrics: s.metric_counts,
                policy: s.policy_counts,
            },
            latency: latency.quantiles(),
            latency_from,
            client_latency: s.client_latency.quantiles(),
        }
    }

    /// The sum of many windows' stats, percentiles of their merged latencies.
    fn sum<'a>(stats: impl Iterator<Item = &'a Stats>, sums: &mut Sums) -> Summary {
        let mut out = Summary::default();
        let src = &mut out.sources;
        for s in stats {
            src.spans.add(&s.counts);
            src.metrics.add(&s.metric_counts);
            src.policy.add(&s.policy_counts);
            sums.server.add(&s.server_latency);
            sums.client.add(&s.client_latency);
            sums.metric.add(&s.metric_latency);
        }
        out.counts = effective(&src.spans, &src.metrics, &src.policy);
        out.latency_from = latency_from(
            sums.server.total(),
            sums.client.total(),
            sums.metric.total(),
        );
        let server = sums.server.take_quantiles();
        out.client_latency = sums.client.take_quantiles();
        let metric = sums.metric.take_quantiles();
        out.latency = match out.latency_from {
            Some(LatencyFrom::ServerSpans) => server,
            Some(LatencyFrom::ClientSpans) => out.client_latency,
            Some(LatencyFrom::Metrics) => metric,
            None => None,
        };
        out
    }

    fn health(&self, h: &HealthConfig) -> Health {
        h.judge(&self.counts)
    }
}

/// One edge seen through spans and through metrics is one edge. Where the proxies' metrics
/// counted calls in the window, their counts win (they are not sampled); the spans' bytes stand
/// where metrics have none, and so do their response flags. (Latencies: [`latency_from`].)
/// The policy server's own count of the denials and rate limits it decided for an edge stands
/// where it is higher (the same refusals seen by spans or metrics are not added twice).
fn effective(spans: &Counts, metrics: &Counts, policy: &PolicyCounts) -> Counts {
    let metrics_counted = metrics.requests > 0
        || metrics.retries > 0
        || metrics.overflows > 0
        || metrics.tcp_opened > 0
        || metrics.tcp_closed > 0
        || metrics.tcp_sent_bytes > 0
        || metrics.tcp_received_bytes > 0;
    let mut out = if !metrics_counted {
        *spans
    } else {
        Counts {
            bytes: if metrics.bytes == 0 {
                spans.bytes
            } else {
                metrics.bytes
            },
            // Envoy's cluster stats carry no response flags; its spans do.
            flags: if metrics.flags == FlagCounts::default() {
                spans.flags
            } else {
                metrics.flags
            },
            ..*metrics
        }
    };
    out.denied = out.denied.max(policy.denied);
    out.rate_limited = out.rate_limited.max(policy.rate_limited);
    out
}

/// One summary's calls as each source counted them: spans, the proxies' metrics, and the policy
/// server's refusals. Where spans are sampled, metrics count more; where both see every call,
/// they agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    pub spans: Counts,
    pub metrics: Counts,
    pub policy: PolicyCounts,
}

/// Reused accumulators for summing latency sketches.
#[derive(Default)]
struct Sums {
    server: SketchSum,
    client: SketchSum,
    metric: SketchSum,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub key: NodeKey,
    /// Calls this node received in the window.
    pub inbound: Summary,
    /// Calls this node made in the window.
    pub outbound_requests: u64,
    pub health: Health,
    pub versions: Vec<VersionSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionSnapshot {
    pub version: Arc<str>,
    pub inbound: Summary,
    /// This version's part of the node's inbound calls (0–1): the canary split.
    pub share: f64,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSnapshot {
    pub client: NodeKey,
    pub server: NodeKey,
    pub connection: ConnectionType,
    pub stats: Summary,
    pub health: Health,
    pub versions: Vec<EdgeVersionSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeVersionSnapshot {
    pub client_version: Option<Arc<str>>,
    pub server_version: Option<Arc<str>>,
    pub stats: Summary,
}

type ServiceEdge<'a> = (&'a NodeKey, &'a NodeKey, ConnectionType);

/// Version-level edges grouped the three ways the snapshot sums them. Hash maps, not ordered
/// ones: at 10,000 edges, ordered inserts cost more than the whole summing (measured); the
/// output is sorted once at the end instead.
#[derive(Default)]
struct Groups<'a> {
    edges: FastMap<ServiceEdge<'a>, Vec<(&'a EdgeKey, &'a Stats)>>,
    inbound: FastMap<&'a NodeKey, Vec<&'a Stats>>,
    outbound: FastMap<&'a NodeKey, u64>,
    versions: FastMap<&'a NodeKey, BTreeMap<&'a Arc<str>, Vec<&'a Stats>>>,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn group<'a>(edges: impl Iterator<Item = (&'a EdgeKey, &'a Stats)>) -> Groups<'a> {
    let mut g = Groups::default();
    for (key, stats) in edges {
        let (client, server) = (&key.client.node, &key.server.node);
        g.edges
            .entry((client, server, key.connection))
            .or_default()
            .push((key, stats));
        g.inbound.entry(server).or_default().push(stats);
        g.inbound.entry(client).or_default();
        *g.outbound.entry(client).or_default() += stats.counts.requests;
        // A version that only calls out is still a version of its service.
        if let Some(v) = &key.client.version {
            g.versions.entry(client).or_default().entry(v).or_default();
        }
        if let Some(v) = &key.server.version {
            g.versions
                .entry(server)
                .or_default()
                .entry(v)
                .or_default()
                .push(stats);
        }
    }
    g
}

/// The whole graph of one window: every node and edge, versions included.
pub fn build<'a>(
    edges: impl Iterator<Item = (&'a EdgeKey, &'a Stats)>,
    window: Window,
    health: &HealthConfig,
) -> GraphSnapshot {
    let groups = group(edges);
    let mut sums = Sums::default();
    let mut out_edges: Vec<EdgeSnapshot> = Vec::with_capacity(groups.edges.len());
    for ((client, server, connection), members) in &groups.edges {
        let stats = Summary::sum(members.iter().map(|(_, s)| *s), &mut sums);
        let mut versions: Vec<EdgeVersionSnapshot> = members
            .iter()
            .map(|(k, s)| EdgeVersionSnapshot {
                client_version: k.client.version.clone(),
                server_version: k.server.version.clone(),
                stats: Summary::of(s),
            })
            .collect();
        versions.sort_by(|a, b| {
            (&a.client_version, &a.server_version).cmp(&(&b.client_version, &b.server_version))
        });
        out_edges.push(EdgeSnapshot {
            client: (*client).clone(),
            server: (*server).clone(),
            connection: *connection,
            health: stats.health(health),
            stats,
            versions,
        });
    }
    let mut nodes: Vec<NodeSnapshot> = Vec::with_capacity(groups.inbound.len());
    for (key, inbound) in &groups.inbound {
        let inbound = Summary::sum(inbound.iter().copied(), &mut sums);
        let versions = groups
            .versions
            .get(key)
            .into_iter()
            .flatten()
            .map(|(v, stats)| {
                let s = Summary::sum(stats.iter().copied(), &mut sums);
                VersionSnapshot {
                    version: (*v).clone(),
                    share: if inbound.counts.requests == 0 {
                        0.0
                    } else {
                        s.counts.requests as f64 / inbound.counts.requests as f64
                    },
                    health: s.health(health),
                    inbound: s,
                }
            })
            .collect();
        nodes.push(NodeSnapshot {
            key: (*key).clone(),
            outbound_requests: groups.outbound.get(key).copied().unwrap_or(0),
            health: inbound.health(health),
            inbound,
            versions,
        });
    }
    out_edges.sort_unstable_by(|a, b| {
        (&a.client, &a.server, a.connection).cmp(&(&b.client, &b.server, b.connection))
    });
    nodes.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    GraphSnapshot {
        window,
        nodes,
        edges: out_edges,
    }
}

impl GraphSnapshot {
    /// The part of the graph a query asks for (namespace, service and depth; versions or not).
    pub fn filtered(&self, query: &GraphQuery) -> GraphSnapshot {
        let keep = kept_nodes(&self.nodes, &self.edges, query);
        fn versions<T: Clone>(v: &[T], keep: bool) -> Vec<T> {
            if keep {
                v.to_vec()
            } else {
                Vec::new()
            }
        }
        GraphSnapshot {
            window: self.window,
            nodes: self
                .nodes
                .iter()
                .filter(|n| keep.contains(&n.key))
                .map(|n| NodeSnapshot {
                    versions: versions(&n.versions, query.versions),
                    ..n.clone()
                })
                .collect(),
            edges: self
                .edges
                .iter()
                .filter(|e| keep.contains(&e.client) && keep.contains(&e.server))
                .map(|e| EdgeSnapshot {
                    versions: versions(&e.versions, query.versions),
                    ..e.clone()
                })
                .collect(),
        }
    }
}

/// The nodes the filters keep: a namespace keeps its nodes and their direct peers; a service
/// keeps what lies within `depth` hops of it, in either direction (found with petgraph).
fn kept_nodes(
    nodes: &[NodeSnapshot],
    edges: &[EdgeSnapshot],
    query: &GraphQuery,
) -> HashSet<NodeKey> {
    let mut keep: HashSet<NodeKey> = nodes
        .iter()
        .map(|n| n.key.clone())
        .filter(|k| query.waypoints || k.kind != NodeKind::Waypoint)
        .collect();
    if let Some(ns) = &query.namespace {
        let inside = |k: &NodeKey| k.namespace.as_deref() == Some(ns.as_str());
        keep = edges
            .iter()
            .filter(|e| inside(&e.client) || inside(&e.server))
            .flat_map(|e| [e.client.clone(), e.server.clone()])
            .chain(nodes.iter().map(|n| &n.key).filter(|k| inside(k)).cloned())
            .filter(|k| keep.contains(k))
            .collect();
    }
    let Some(service) = &query.service else {
        return keep;
    };
    let mut graph: UnGraph<&NodeKey, ()> = UnGraph::new_undirected();
    let index: HashMap<&NodeKey, NodeIndex> = keep.iter().map(|k| (k, graph.add_node(k))).collect();
    for e in edges {
        if let (Some(&a), Some(&b)) = (index.get(&e.client), index.get(&e.server)) {
            graph.add_edge(a, b, ());
        }
    }
    let depth = query.depth.unwrap_or(1);
    let mut near = HashSet::new();
    for (key, &start) in &index {
        if key.kind == NodeKind::Service && &*key.name == service.as_str() {
            let distances = petgraph::algo::dijkstra(&graph, start, None, |_| 1usize);
            near.extend(
                distances
                    .into_iter()
                    .filter(|(_, d)| *d <= depth)
                    .map(|(i, _)| graph[i].clone()),
            );
        }
    }
    near
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans (or metrics) that saw the same refusals as the policy server do not double them:
    /// the higher count stands.
    #[test]
    fn policy_counts_stand_where_higher_and_are_not_added() {
        let c = |requests, denied, rate_limited| Counts {
            requests,
            denied,
            rate_limited,
            ..Default::default()
        };
        let p = |denied, rate_limited| PolicyCounts {
            denied,
            rate_limited,
        };
        let got = effective(&c(10, 3, 0), &Counts::default(), &p(2, 4));
        assert_eq!((got.requests, got.denied, got.rate_limited), (10, 3, 4));
        let got = effective(&c(1, 0, 0), &c(50, 1, 0), &p(5, 0));
        assert_eq!((got.requests, got.denied), (50, 5));
    }

    /// Envoy's cluster stats count the calls but carry no response flags; its spans' flags
    /// stand beside the metrics' counts. Where metrics have flags (Istio's), theirs stand.
    #[test]
    fn response_flags_come_from_spans_where_metrics_have_none() {
        let flagged = |requests, flags: &str| {
            let mut c = Counts {
                requests,
                ..Default::default()
            };
            c.flags
                .add_bits(crate::graph::window::flag_bits(flags), requests);
            c
        };
        let none = PolicyCounts::default();
        let got = effective(&flagged(2, "UF"), &flagged(40, "-"), &none);
        assert_eq!((got.requests, got.flags), (40, flagged(2, "UF").flags));
        let got = effective(&flagged(2, "UF"), &flagged(40, "UH"), &none);
        assert_eq!(got.flags, flagged(40, "UH").flags);
    }
}
