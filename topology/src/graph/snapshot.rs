//! A graph of one window, at service level with versions inside: the edges' statistics summed
//! over versions, each node's inbound traffic and its versions' shares, health everywhere, and
//! the namespace, service and depth filters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use petgraph::graph::{NodeIndex, UnGraph};

use crate::graph::health::{Health, HealthConfig};
use crate::graph::node::{ConnectionType, EdgeKey, NodeKey, NodeKind};
use crate::graph::window::{Series, Stats, Window};

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
}

impl Default for GraphQuery {
    fn default() -> Self {
        GraphQuery {
            window: Window::M5,
            namespace: None,
            service: None,
            depth: None,
            versions: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphSnapshot {
    pub window: Window,
    pub nodes: Vec<NodeSnapshot>,
    pub edges: Vec<EdgeSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub key: NodeKey,
    /// Calls this node received in the window.
    pub inbound: Stats,
    /// Calls this node made in the window.
    pub outbound_requests: u64,
    pub health: Health,
    pub versions: Vec<VersionSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionSnapshot {
    pub version: Arc<str>,
    pub inbound: Stats,
    /// This version's part of the node's inbound calls (0–1): the canary split.
    pub share: f64,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSnapshot {
    pub client: NodeKey,
    pub server: NodeKey,
    pub connection: ConnectionType,
    pub stats: Stats,
    pub health: Health,
    pub versions: Vec<EdgeVersionSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeVersionSnapshot {
    pub client_version: Option<Arc<str>>,
    pub server_version: Option<Arc<str>>,
    pub stats: Stats,
}

type ServiceEdge = (NodeKey, NodeKey, ConnectionType);

pub(super) fn build(
    edges: &HashMap<EdgeKey, Series>,
    query: &GraphQuery,
    health: &HealthConfig,
) -> GraphSnapshot {
    let w = query.window;
    // Version-level edges summed into service-level ones; BTreeMaps keep the output ordered.
    let mut service_edges: BTreeMap<ServiceEdge, EdgeSnapshot> = BTreeMap::new();
    let mut nodes: BTreeMap<NodeKey, NodeSnapshot> = BTreeMap::new();
    let mut versions: BTreeMap<(NodeKey, Arc<str>), Stats> = BTreeMap::new();
    for (key, series) in edges {
        let stats = series.window(w);
        let id = (
            key.client.node.clone(),
            key.server.node.clone(),
            key.connection,
        );
        let edge = service_edges.entry(id).or_insert_with(|| EdgeSnapshot {
            client: key.client.node.clone(),
            server: key.server.node.clone(),
            connection: key.connection,
            stats: Stats::default(),
            health: Health::Idle,
            versions: Vec::new(),
        });
        edge.stats.merge(stats);
        if query.versions {
            edge.versions.push(EdgeVersionSnapshot {
                client_version: key.client.version.clone(),
                server_version: key.server.version.clone(),
                stats: stats.clone(),
            });
        }
        node_entry(&mut nodes, &key.client.node).outbound_requests += stats.requests;
        node_entry(&mut nodes, &key.server.node)
            .inbound
            .merge(stats);
        // A version that only calls out is still a version of its service.
        if let Some(v) = &key.client.version {
            versions
                .entry((key.client.node.clone(), v.clone()))
                .or_default();
        }
        if let Some(v) = &key.server.version {
            versions
                .entry((key.server.node.clone(), v.clone()))
                .or_default()
                .merge(stats);
        }
    }
    if query.versions {
        for ((node, version), inbound) in versions {
            if let Some(n) = nodes.get_mut(&node) {
                n.versions.push(VersionSnapshot {
                    version,
                    share: 0.0,
                    health: health.judge(&inbound),
                    inbound,
                });
            }
        }
    }
    for n in nodes.values_mut() {
        n.health = health.judge(&n.inbound);
        let total = n.inbound.requests;
        for v in &mut n.versions {
            v.share = if total == 0 {
                0.0
            } else {
                v.inbound.requests as f64 / total as f64
            };
        }
    }
    let mut edges: Vec<EdgeSnapshot> = service_edges.into_values().collect();
    for e in &mut edges {
        e.health = health.judge(&e.stats);
        e.versions.sort_by(|a, b| {
            (&a.client_version, &a.server_version).cmp(&(&b.client_version, &b.server_version))
        });
    }
    let keep = kept_nodes(&nodes, &edges, query);
    edges.retain(|e| keep.contains(&e.client) && keep.contains(&e.server));
    GraphSnapshot {
        window: w,
        nodes: nodes
            .into_values()
            .filter(|n| keep.contains(&n.key))
            .collect(),
        edges,
    }
}

fn node_entry<'a>(
    nodes: &'a mut BTreeMap<NodeKey, NodeSnapshot>,
    key: &NodeKey,
) -> &'a mut NodeSnapshot {
    nodes.entry(key.clone()).or_insert_with(|| NodeSnapshot {
        key: key.clone(),
        inbound: Stats::default(),
        outbound_requests: 0,
        health: Health::Idle,
        versions: Vec::new(),
    })
}

/// The nodes the filters keep: a namespace keeps its nodes and their direct peers; a service
/// keeps what lies within `depth` hops of it, in either direction (found with petgraph).
fn kept_nodes(
    nodes: &BTreeMap<NodeKey, NodeSnapshot>,
    edges: &[EdgeSnapshot],
    query: &GraphQuery,
) -> HashSet<NodeKey> {
    let mut keep: HashSet<NodeKey> = nodes.keys().cloned().collect();
    if let Some(ns) = &query.namespace {
        let inside = |k: &NodeKey| k.namespace.as_deref() == Some(ns.as_str());
        keep = edges
            .iter()
            .filter(|e| inside(&e.client) || inside(&e.server))
            .flat_map(|e| [e.client.clone(), e.server.clone()])
            .chain(nodes.keys().filter(|k| inside(k)).cloned())
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
