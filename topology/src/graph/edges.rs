//! The graph's edges and their statistics, within caps. A client that names a new peer in every
//! span (a buggy `peer.service`, a port in a host name) would otherwise grow the graph without
//! bound: past `max_edges` version edges or `max_nodes` nodes, a new edge is counted on one
//! that leads to or from the overflow node (`__overflow__`) instead, as the OpenTelemetry
//! spanmetrics connector folds new label sets into one overflow series. The ends already on the
//! graph are kept, so the operator still sees who is calling into the overflow; edges idle for a
//! while are forgotten sooner at the cap, so the first keys do not hold it forever.

use std::collections::HashMap;

use crate::graph::node::{EdgeKey, Endpoint, NodeKey, NodeKind};
use crate::graph::window::Series;

/// The overflow node's name.
pub const OVERFLOW: &str = "__overflow__";

/// The graph's caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphLimits {
    /// Most version edges (an edge per pair of versions and connection type).
    pub max_edges: usize,
    /// Most nodes (services, virtual peers, the overflow node).
    pub max_nodes: usize,
}

/// Defaults sized for a 512 MiB container with the other bounds at their defaults.
pub const DEFAULT_LIMITS: GraphLimits = GraphLimits {
    max_edges: 20_000,
    max_nodes: 10_000,
};

impl Default for GraphLimits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

/// Edges by key. foldhash, not SipHash: every call hashes its edge's names, and no key here is
/// chosen by a client to collide (a client could only add edges, which the caps bound).
pub(crate) type EdgeMap = HashMap<EdgeKey, Series, foldhash::fast::RandomState>;

#[derive(Default)]
pub(crate) struct Edges {
    pub map: EdgeMap,
    /// Nodes and the number of edges that have them at one end or both.
    nodes: HashMap<NodeKey, u32, foldhash::fast::RandomState>,
    pub limits: GraphLimits,
    /// Observations counted on an overflow edge instead of the new edge they named.
    pub overflowed: u64,
}

impl Edges {
    pub fn new(limits: GraphLimits) -> Self {
        Edges {
            limits,
            ..Default::default()
        }
    }

    /// The statistics of `key`'s edge, made if new and within the caps; past them, those of
    /// the overflow edge that stands for it.
    pub fn series(&mut self, key: &EdgeKey) -> &mut Series {
        if self.map.contains_key(key) {
            return self.map.get_mut(key).expect("present");
        }
        let key = if self.fits(key) {
            key.clone()
        } else {
            self.overflowed += 1;
            self.overflow_of(key)
        };
        if !self.map.contains_key(&key) {
            self.add_nodes(&key);
        }
        self.map.entry(key).or_default()
    }

    /// Whether a new edge `key` keeps the graph within its caps.
    fn fits(&self, key: &EdgeKey) -> bool {
        if self.map.len() >= self.limits.max_edges {
            return false;
        }
        let client_new = !self.nodes.contains_key(&key.client.node);
        let server_new =
            key.server.node != key.client.node && !self.nodes.contains_key(&key.server.node);
        self.nodes.len() + client_new as usize + server_new as usize <= self.limits.max_nodes
    }

    /// The overflow edge for a new edge past the caps: each end already on the graph stays
    /// (without its version), the other becomes the overflow node; when both are on the graph,
    /// the server does. So there are at most two overflow edges per node, and one more.
    fn overflow_of(&self, key: &EdgeKey) -> EdgeKey {
        let overflow = || Endpoint {
            node: NodeKey::virtual_node(NodeKind::Overflow, OVERFLOW),
            version: None,
        };
        let kept = |e: &Endpoint| {
            self.nodes.contains_key(&e.node).then(|| Endpoint {
                node: e.node.clone(),
                version: None,
            })
        };
        let (client, server) = match (kept(&key.client), kept(&key.server)) {
            (Some(c), Some(_)) => (c, overflow()),
            (c, s) => (c.unwrap_or_else(overflow), s.unwrap_or_else(overflow)),
        };
        EdgeKey {
            client,
            server,
            connection: key.connection,
        }
    }

    fn add_nodes(&mut self, key: &EdgeKey) {
        *self.nodes.entry(key.client.node.clone()).or_default() += 1;
        if key.server.node != key.client.node {
            *self.nodes.entry(key.server.node.clone()).or_default() += 1;
        }
    }

    /// Keeps the edges `keep` says to, forgetting the nodes no edge has any more.
    pub fn retain(&mut self, mut keep: impl FnMut(&EdgeKey, &mut Series) -> bool) {
        let nodes = &mut self.nodes;
        self.map.retain(|k, s| {
            if keep(k, s) {
                return true;
            }
            let mut drop_node = |n: &NodeKey| {
                if let Some(count) = nodes.get_mut(n) {
                    *count -= 1;
                    if *count == 0 {
                        nodes.remove(n);
                    }
                }
            };
            drop_node(&k.client.node);
            if k.server.node != k.client.node {
                drop_node(&k.server.node);
            }
            false
        });
    }

    /// Nodes at the ends of the edges.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether a new edge could be refused now (so idle ones should make room).
    pub fn at_cap(&self) -> bool {
        self.map.len() >= self.limits.max_edges || self.nodes.len() >= self.limits.max_nodes
    }
}
