//! What the graph is made of: nodes (services and the peers that send no telemetry) and the
//! keys of the edges between them.

use std::fmt;
use std::sync::Arc;

/// What kind of thing a node is. Services send telemetry; every other kind is a virtual node,
/// known only from what its callers say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    Service,
    /// A database, from a client span's `db.system` and `db.name`/`server.address`.
    Database,
    /// A broker or queue, from `messaging.system` and the destination.
    Messaging,
    /// A host outside the mesh, from `peer.service`, `server.address` or a proxy's cluster.
    External,
    /// Whoever sent the requests that start traces.
    User,
    /// meshlens' own policy server, which proxies call for ext_authz and rate limits.
    Policy,
    /// An Istio ambient waypoint proxy: drawn only when asked, as Kiali does.
    Waypoint,
    /// Where calls go that would have made the graph grow past its caps (`__overflow__`).
    Overflow,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Service => "service",
            NodeKind::Database => "database",
            NodeKind::Messaging => "messaging",
            NodeKind::External => "external",
            NodeKind::User => "user",
            NodeKind::Policy => "policy",
            NodeKind::Waypoint => "waypoint",
            NodeKind::Overflow => "overflow",
        }
    }

    pub fn parse(s: &str) -> Option<NodeKind> {
        [
            NodeKind::Service,
            NodeKind::Database,
            NodeKind::Messaging,
            NodeKind::External,
            NodeKind::User,
            NodeKind::Policy,
            NodeKind::Waypoint,
            NodeKind::Overflow,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One node: a service (namespace + name) or a virtual peer. Versions are not part of the key:
/// they are sub-nodes, carried on the edges' endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    pub kind: NodeKind,
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
}

impl NodeKey {
    pub fn service(namespace: Option<&str>, name: &str) -> Self {
        NodeKey {
            kind: NodeKind::Service,
            namespace: namespace.map(Arc::from),
            name: Arc::from(name),
        }
    }

    pub fn virtual_node(kind: NodeKind, name: &str) -> Self {
        NodeKey {
            kind,
            namespace: None,
            name: Arc::from(name),
        }
    }

    pub fn user() -> Self {
        Self::virtual_node(NodeKind::User, "user")
    }

    pub fn policy() -> Self {
        Self::virtual_node(NodeKind::Policy, "meshlens-policy")
    }

    /// A stable id for APIs: `kind:namespace/name` (`kind:name` without a namespace).
    pub fn id(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}:{}/{}", self.kind.as_str(), ns, self.name),
            None => write!(f, "{}:{}", self.kind.as_str(), self.name),
        }
    }
}

/// How the two ends of an edge talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionType {
    Http,
    Grpc,
    Database,
    MessagingSystem,
    /// A call to a peer known only from the caller's side (no protocol known).
    VirtualNode,
    /// Plain TCP connections (Istio's `istio_tcp_*`): bytes and connections, no requests.
    Tcp,
}

impl ConnectionType {
    /// The `connection_type` label value (Tempo's names where Tempo has one).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Http => "http",
            ConnectionType::Grpc => "grpc",
            ConnectionType::Database => "database",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::VirtualNode => "virtual_node",
            ConnectionType::Tcp => "tcp",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectionType> {
        [
            ConnectionType::Http,
            ConnectionType::Grpc,
            ConnectionType::Database,
            ConnectionType::MessagingSystem,
            ConnectionType::VirtualNode,
            ConnectionType::Tcp,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// One end of an edge: the node and, for services that say it, the version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub node: NodeKey,
    pub version: Option<Arc<str>>,
}

/// An edge at version level. Service-level edges are the sum over versions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub client: Endpoint,
    pub server: Endpoint,
    pub connection: ConnectionType,
}
