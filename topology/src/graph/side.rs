//! One span, as the graph sees it: which side of a call it is, who it is, how the call went, and
//! which peer it names. Attributes are read under current and older semantic-convention names,
//! and as strings too, because Envoy sends every value as a string.

use std::sync::Arc;

use crate::attr::AttrValue;
use crate::graph::node::{ConnectionType, Endpoint, NodeKey, NodeKind};
use crate::ids::{SpanId, TraceId};
use crate::resource::Resource;
use crate::span::{Span, SpanKind, StatusCode};

/// Which side of a call a span records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// CLIENT or PRODUCER: the caller.
    Client,
    /// SERVER or CONSUMER: the callee.
    Server,
}

/// How one side saw the call end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Status ERROR on the span.
    pub error_status: bool,
    pub http_status: Option<u16>,
    /// The gRPC status code, 0 = OK.
    pub grpc_status: Option<i64>,
    /// Envoy's response flags of interest.
    pub denied: bool,
    pub rate_limited: bool,
    pub overflow: bool,
    /// The other response flags (`window::flag_bits`).
    pub flags: u16,
}

impl Outcome {
    /// A failed call as the graph counts it: status ERROR, HTTP ≥ 500, or a non-OK gRPC code.
    pub fn failed(&self) -> bool {
        self.error_status
            || self.http_status.is_some_and(|s| s >= 500)
            || self.grpc_status.is_some_and(|c| c != 0)
    }
}

/// A peer a client span names, for calls nobody answers with a server span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub endpoint: Endpoint,
    pub connection: ConnectionType,
    /// The peer never sends spans (a database, the policy server), so the edge is made at once
    /// instead of waiting for a server span that cannot come.
    pub immediate: bool,
}

/// The graph's view of one CLIENT, PRODUCER, SERVER or CONSUMER span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanSide {
    pub role: Role,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// The span's own service and version.
    pub endpoint: Endpoint,
    pub duration_ns: u64,
    pub outcome: Outcome,
    /// The protocol, where the attributes tell it.
    pub protocol: Option<ConnectionType>,
    /// Request plus response bytes, where known.
    pub bytes: u64,
    /// For client spans: the peer the span names, if any.
    pub peer: Option<Peer>,
    /// A client side inferred from a proxy's SERVER span that forwarded to another service
    /// (`as_forwarder`): it makes an edge only if that service's server span pairs with it.
    pub inferred: bool,
}

/// Span names Envoy gives its own calls to the policy server.
const POLICY_SPAN_PREFIXES: &[&str] = &[
    "async envoy.service.auth.v3.Authorization.Check",
    "async envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit",
];

impl SpanSide {
    /// The side of `span`, or `None` for spans that are not one side of a call (INTERNAL, UNSPECIFIED).
    pub fn of(span: &Span) -> Option<SpanSide> {
        Self::with_endpoint(span, || endpoint_of(&span.resource))
    }

    /// As `of`, with the span's own endpoint from `endpoint` (callers cache it per resource:
    /// the spans of one export share a few resources).
    pub fn with_endpoint(span: &Span, endpoint: impl FnOnce() -> Endpoint) -> Option<SpanSide> {
        let role = match span.kind {
            SpanKind::Client | SpanKind::Producer => Role::Client,
            SpanKind::Server | SpanKind::Consumer => Role::Server,
            SpanKind::Internal | SpanKind::Unspecified => return None,
        };
        let endpoint = endpoint();
        let messaging = matches!(span.kind, SpanKind::Producer | SpanKind::Consumer);
        Some(SpanSide {
            role,
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            endpoint,
            duration_ns: span.duration_ns(),
            outcome: outcome(span),
            protocol: if messaging {
                Some(ConnectionType::MessagingSystem)
            } else {
                protocol(span)
            },
            bytes: bytes(span),
            peer: if role == Role::Client {
                peer(span)
            } else {
                None
            },
            inferred: false,
        })
    }

    /// An Envoy ingress without `spawn_upstream_span` writes one SERVER span and forwards the
    /// request; the next service's SERVER span is then its child. For such a server side (its
    /// `upstream_cluster` names another service), the client side of that hop; `None` otherwise.
    pub fn as_forwarder(&self, span: &Span, clusters: &ClusterMap) -> Option<SpanSide> {
        if self.role != Role::Server {
            return None;
        }
        let target = clusters.resolve(text(span, &["upstream_cluster"])?)?;
        if target.node == self.endpoint.node {
            return None;
        }
        Some(SpanSide {
            role: Role::Client,
            peer: Some(Peer {
                endpoint: target,
                connection: self.protocol.unwrap_or(ConnectionType::Http),
                immediate: false,
            }),
            inferred: true,
            ..self.clone()
        })
    }
}

/// The service and version a resource names.
pub fn endpoint_of(resource: &Resource) -> Endpoint {
    let id = &resource.service;
    Endpoint {
        node: NodeKey::service(id.namespace.as_deref(), &id.name),
        version: id.version.as_deref().map(Arc::from),
    }
}

fn text<'a>(span: &'a Span, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| span.attributes.get_str(k))
        .find(|s| !s.is_empty())
}

fn int(span: &Span, keys: &[&str]) -> Option<i64> {
    keys.iter()
        .filter_map(|k| span.attributes.get(k).and_then(AttrValue::as_i64))
        .next()
}

fn outcome(span: &Span) -> Outcome {
    // Envoy writes "-" when no flag is set; most spans have no flags at all.
    let flags = span
        .attributes
        .get_str("response_flags")
        .filter(|f| *f != "-")
        .unwrap_or("");
    let has_flag = |f: &str| !flags.is_empty() && flags.split(',').any(|x| x.trim() == f);
    Outcome {
        error_status: span.status.code == StatusCode::Error,
        http_status: span.http_status(),
        grpc_status: int(span, &["rpc.grpc.status_code", "grpc.status_code"]),
        denied: has_flag("UAEX"),
        rate_limited: has_flag("RL") || has_flag("RLSE"),
        overflow: has_flag("UO"),
        flags: crate::graph::window::flag_bits(flags),
    }
}

fn protocol(span: &Span) -> Option<ConnectionType> {
    let a = &span.attributes;
    if a.get_str("rpc.system") == Some("grpc")
        || a.get("rpc.grpc.status_code").is_some()
        || a.get("grpc.status_code").is_some()
    {
        return Some(ConnectionType::Grpc);
    }
    let http_keys = [
        "http.request.method",
        "http.method",
        "http.response.status_code",
        "http.status_code",
        "url.full",
        "http.url",
    ];
    http_keys
        .iter()
        .any(|k| a.get(k).is_some())
        .then_some(ConnectionType::Http)
}

fn bytes(span: &Span) -> u64 {
    let get = |keys: &[&str]| int(span, keys).filter(|n| *n > 0).unwrap_or(0) as u64;
    get(&[
        "http.request.body.size",
        "http.request_content_length",
        "request_size",
    ]) + get(&[
        "http.response.body.size",
        "http.response_content_length",
        "response_size",
    ])
}

/// The peer a client span names, most specific first.
fn peer(span: &Span) -> Option<Peer> {
    if POLICY_SPAN_PREFIXES
        .iter()
        .any(|p| span.name.starts_with(p))
    {
        return Some(virtual_peer(NodeKey::policy(), ConnectionType::Grpc, true));
    }
    if let Some(system) = text(span, &["db.system", "db.system.name"]) {
        let name = text(
            span,
            &["db.namespace", "db.name", "server.address", "net.peer.name"],
        )
        .unwrap_or(system);
        let node = NodeKey::virtual_node(NodeKind::Database, name);
        return Some(virtual_peer(node, ConnectionType::Database, true));
    }
    if span.kind == SpanKind::Producer {
        let system = text(span, &["messaging.system"])?;
        let name = text(
            span,
            &["messaging.destination.name", "messaging.destination"],
        )
        .unwrap_or(system);
        let node = NodeKey::virtual_node(NodeKind::Messaging, name);
        return Some(virtual_peer(node, ConnectionType::MessagingSystem, false));
    }
    if let Some(endpoint) = text(span, &["upstream_cluster"]).and_then(istio_cluster) {
        return Some(Peer {
            endpoint,
            connection: protocol(span).unwrap_or(ConnectionType::Http),
            immediate: false,
        });
    }
    let name = text(
        span,
        &[
            "peer.service",
            "server.address",
            "net.peer.name",
            "upstream_cluster",
            "http.host",
        ],
    )?;
    let node = NodeKey::virtual_node(NodeKind::External, name);
    Some(virtual_peer(node, ConnectionType::VirtualNode, false))
}

fn virtual_peer(node: NodeKey, connection: ConnectionType, immediate: bool) -> Peer {
    Peer {
        endpoint: Endpoint {
            node,
            version: None,
        },
        connection,
        immediate,
    }
}

/// Plain Envoy cluster names and the services they lead to, for proxies that do not use Istio's
/// `outbound|port|subset|service` names. Targets are written `[namespace/]service[:version]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMap(std::collections::HashMap<String, Endpoint>);

impl ClusterMap {
    /// From (cluster, target) pairs; an empty or malformed target is an error naming it.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ClusterMap, String> {
        let mut map = std::collections::HashMap::new();
        for (cluster, target) in pairs {
            let (namespace, rest) = match target.split_once('/') {
                Some((ns, rest)) => (Some(ns), rest),
                None => (None, target),
            };
            let (name, version) = match rest.split_once(':') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            };
            let bad =
                |part: Option<&str>| part.is_some_and(|p| p.is_empty() || p.contains(['/', ':']));
            if name.is_empty() || bad(Some(name)) || bad(namespace) || bad(version) {
                return Err(format!(
                    "cluster {cluster:?}: target {target:?} is not [namespace/]service[:version]"
                ));
            }
            map.insert(
                cluster.to_string(),
                Endpoint {
                    node: NodeKey::service(namespace, name),
                    version: version.map(Arc::from),
                },
            );
        }
        Ok(ClusterMap(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The destination a cluster name gives: Istio's form, else this map.
    pub fn resolve(&self, cluster: &str) -> Option<Endpoint> {
        istio_cluster(cluster).or_else(|| self.0.get(cluster).cloned())
    }

    /// Calls settled to an external node named like a mapped cluster (an Envoy client span with
    /// that `upstream_cluster` and no other side) go to the cluster's service instead.
    pub fn apply(&self, observations: &mut [crate::graph::EdgeObservation]) {
        if self.0.is_empty() {
            return;
        }
        for o in observations {
            let server = &mut o.key.server;
            if server.node.kind == NodeKind::External {
                if let Some(e) = self.0.get(&*server.node.name) {
                    *server = e.clone();
                    o.key.connection = ConnectionType::Http;
                }
            }
        }
    }
}

/// The destination an Istio-style cluster name gives: `outbound|<port>|<subset>|<service>`, where
/// the service may be a Kubernetes FQDN (`work.shop.svc.cluster.local`) and the subset, when set,
/// is the destination version. `inbound|…` is the proxy's own app, not a peer.
pub fn istio_cluster(cluster: &str) -> Option<Endpoint> {
    let mut parts = cluster.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let _port = parts.next()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    if host.is_empty() || parts.next().is_some() {
        return None;
    }
    let (name, namespace) = match host.split_once(".svc.") {
        Some((svc, _)) => match svc.split_once('.') {
            Some((name, ns)) => (name, Some(ns)),
            None => (svc, None),
        },
        None => (host, None),
    };
    Some(Endpoint {
        node: NodeKey::service(namespace, name),
        version: (!subset.is_empty()).then(|| Arc::from(subset)),
    })
}

/// The service a cluster name names, as the graph names it: an Istio-style cluster gives its
/// service (`outbound|80|v2|work.shop.svc.cluster.local` → `work`); any other name is itself.
pub fn service_of_cluster(cluster: &str) -> String {
    istio_cluster(cluster)
        .map(|e| e.node.name.to_string())
        .unwrap_or_else(|| cluster.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SpanBuilder;

    #[test]
    fn envoy_string_attributes_are_read() {
        let span = SpanBuilder::new(1, 2, "work", "egress meet", 10)
            .kind(SpanKind::Client)
            .attr("http.status_code", "503")
            .attr(
                "upstream_cluster",
                "outbound|80|v2|meet.shop.svc.cluster.local",
            )
            .attr("response_flags", "UO")
            .attr("request_size", "10")
            .attr("response_size", "32")
            .build();
        let side = SpanSide::of(&span).unwrap();
        assert_eq!(side.role, Role::Client);
        assert!(side.outcome.failed());
        assert!(side.outcome.overflow);
        assert_eq!(side.bytes, 42);
        let peer = side.peer.unwrap();
        assert_eq!(peer.endpoint.node, NodeKey::service(Some("shop"), "meet"));
        assert_eq!(peer.endpoint.version.as_deref(), Some("v2"));
        assert!(!peer.immediate);
    }

    #[test]
    fn peers_by_kind() {
        let client = |attrs: &[(&str, &str)], name: &str, kind| {
            let mut b = SpanBuilder::new(1, 2, "work", name, 10).kind(kind);
            for (k, v) in attrs {
                b = b.attr(k, *v);
            }
            SpanSide::of(&b.build()).unwrap().peer
        };
        let db = client(
            &[("db.system", "postgresql"), ("db.name", "orders")],
            "SELECT",
            SpanKind::Client,
        )
        .unwrap();
        assert_eq!(db.endpoint.node.kind, NodeKind::Database);
        assert_eq!(&*db.endpoint.node.name, "orders");
        assert!(db.immediate);
        let policy = client(
            &[("upstream_cluster", "policy")],
            "async envoy.service.auth.v3.Authorization.Check egress",
            SpanKind::Client,
        )
        .unwrap();
        assert_eq!(policy.endpoint.node, NodeKey::policy());
        let queue = client(
            &[
                ("messaging.system", "kafka"),
                ("messaging.destination.name", "orders"),
            ],
            "publish",
            SpanKind::Producer,
        )
        .unwrap();
        assert_eq!(queue.endpoint.node.kind, NodeKind::Messaging);
        assert!(!queue.immediate);
        let ext = client(&[("peer.service", "payments")], "GET", SpanKind::Client).unwrap();
        assert_eq!(ext.endpoint.node.kind, NodeKind::External);
        assert_eq!(client(&[], "GET", SpanKind::Client), None);
    }

    #[test]
    fn failure_rules() {
        let o = |f: fn(&mut Outcome)| {
            let mut o = Outcome::default();
            f(&mut o);
            o.failed()
        };
        assert!(!o(|_| {}));
        assert!(o(|o| o.error_status = true));
        assert!(o(|o| o.http_status = Some(500)));
        assert!(!o(|o| o.http_status = Some(404)));
        assert!(o(|o| o.grpc_status = Some(14)));
        assert!(!o(|o| o.grpc_status = Some(0)));
    }

    #[test]
    fn cluster_maps_name_services_for_plain_clusters() {
        let m =
            ClusterMap::from_pairs([("meet_cluster", "shop/meet:v2"), ("db_cluster", "orders")])
                .unwrap();
        let e = m.resolve("meet_cluster").unwrap();
        assert_eq!(
            (e.node.id(), e.version.as_deref()),
            ("service:shop/meet".into(), Some("v2"))
        );
        assert_eq!(m.resolve("db_cluster").unwrap().node.id(), "service:orders");
        assert_eq!(
            m.resolve("outbound|80|v1|work").unwrap().version.as_deref(),
            Some("v1")
        );
        assert_eq!(m.resolve("other"), None);
        for bad in ["", "a/", "/b", "a:b:c", "ns/a/b", "svc:"] {
            assert!(ClusterMap::from_pairs([("c", bad)]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn istio_cluster_names() {
        let e = istio_cluster("outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
        assert_eq!(e.node, NodeKey::service(Some("default"), "reviews"));
        assert_eq!(e.version.as_deref(), Some("v1"));
        let e = istio_cluster("outbound|80||work").unwrap();
        assert_eq!(e.node, NodeKey::service(None, "work"));
        assert_eq!(e.version, None);
        assert_eq!(istio_cluster("inbound|80||"), None);
        assert_eq!(istio_cluster("work"), None);
        assert_eq!(istio_cluster("outbound|80|v1|"), None);
    }
}
