//! Istio's standard metrics (`istio_requests_total`, the request duration and size histograms,
//! `istio_tcp_*`), as sidecars, gateways, ztunnel and waypoints report them, placed on the graph's
//! edges so that each call is counted once:
//!
//! - `reporter="destination"` counts: the destination's proxy sees every request that reached it.
//! - `reporter="source"` counts only where no destination proxy reports the call: its
//!   `destination_workload` is unknown (a call leaving the mesh, to a ServiceEntry or an
//!   unmeshed workload, or one that never reached a pod: `UO`, `UF`, `NR`).
//! - `reporter="waypoint"` is the L7 view of a call through an ambient waypoint (client to
//!   server); it counts.
//! - ztunnel's L4 series for a hop to or from a waypoint (its `destination_workload` or
//!   `source_workload` is a waypoint) go on an edge with the waypoint node, which the graph draws
//!   only when asked; client → waypoint counts from the source ztunnel, waypoint → server from
//!   the destination's. The same pair's L7 series are not doubled by them.

use std::collections::HashSet;
use std::sync::Arc;

use crate::attr::Attributes;
use crate::graph::node::{ConnectionType, EdgeKey, Endpoint, NodeKey, NodeKind};

/// The Istio metrics the graph reads. Names are accepted with or without the `_total` suffix
/// (the OpenTelemetry Collector's Prometheus receiver may drop it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IstioMetric {
    Requests,
    /// `istio_request_duration_milliseconds`, a histogram.
    Duration,
    /// The sum of `istio_request_bytes` / `istio_response_bytes` (remote write's `_sum` series, or
    /// an OTLP histogram's sum).
    Bytes,
    TcpSent,
    TcpReceived,
    TcpOpened,
    TcpClosed,
}

impl IstioMetric {
    pub(crate) fn of(name: &str) -> Option<IstioMetric> {
        let name = name.strip_suffix("_total").unwrap_or(name);
        Some(match name {
            "istio_requests" => IstioMetric::Requests,
            "istio_request_duration_milliseconds" => IstioMetric::Duration,
            "istio_request_bytes"
            | "istio_response_bytes"
            | "istio_request_bytes_sum"
            | "istio_response_bytes_sum" => IstioMetric::Bytes,
            "istio_tcp_sent_bytes" => IstioMetric::TcpSent,
            "istio_tcp_received_bytes" => IstioMetric::TcpReceived,
            "istio_tcp_connections_opened" => IstioMetric::TcpOpened,
            "istio_tcp_connections_closed" => IstioMetric::TcpClosed,
            _ => return None,
        })
    }

    pub(crate) fn is_tcp(self) -> bool {
        matches!(
            self,
            IstioMetric::TcpSent
                | IstioMetric::TcpReceived
                | IstioMetric::TcpOpened
                | IstioMetric::TcpClosed
        )
    }
}

/// What an Istio series says about its call, beyond the edge.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IstioCall {
    /// HTTP status class (2, 4, 5; 0 when none).
    pub class: u8,
    pub grpc_error: bool,
    /// Denied by ext_authz (`UAEX`), rate limited (`RL`, or a 429 from a local rate limit),
    /// refused by a circuit breaker (`UO`).
    pub denied: bool,
    pub rate_limited: bool,
    pub overflow: bool,
    /// The other response flags (`window::flag_bits`).
    pub flags: u16,
    /// Over mutual TLS (`Some(true)`), plain (`Some(false)`), or not reported (`unknown`, as
    /// source reporters say).
    pub mtls: Option<bool>,
}

/// Waypoints, learned from the series they report themselves (`reporter="waypoint"`, or a
/// Gateway of class `istio-waypoint`).
#[derive(Debug, Default)]
pub(crate) struct Waypoints {
    known: HashSet<(Option<Arc<str>>, Arc<str>)>,
}

/// Most waypoints remembered (a mesh has a few per namespace).
const MAX_WAYPOINTS: usize = 10_000;

impl Waypoints {
    /// Learns the proxy that reported this series as a waypoint if the series says it is one.
    /// The proxy is the one its scrape target labels name (as Prometheus writes them, and as the
    /// OpenTelemetry Collector's `prometheus` receiver keeps them), else `resource`. Returns
    /// whether it is a waypoint not known before (series classified before may read otherwise).
    pub(crate) fn learn(&mut self, resource: (Option<&str>, &str), a: &Attributes) -> bool {
        let says = a.get_str("reporter") == Some("waypoint")
            || a.get_str("gateway_networking_k8s_io_gateway_class_name") == Some("istio-waypoint");
        if !says || self.known.len() >= MAX_WAYPOINTS {
            return false;
        }
        // The labels may name the workload without its namespace: the resource's stands.
        let proxy = match crate::prom::scrape_target(a) {
            Some((namespace, name)) => (namespace.or(resource.0), name),
            None => resource,
        };
        if self.is(proxy.0, &[Some(proxy.1)]) {
            return false;
        }
        self.known
            .insert((proxy.0.map(Arc::from), Arc::from(proxy.1)))
    }

    fn is(&self, namespace: Option<&str>, names: &[Option<&str>]) -> bool {
        names.iter().flatten().any(|n| {
            self.known
                .iter()
                .any(|(ns, name)| name.as_ref() == *n && ns.as_deref() == namespace)
        })
    }
}

fn text<'a>(a: &'a Attributes, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .filter_map(|k| a.get_str(k))
        .find(|s| !s.is_empty() && *s != "unknown")
}

/// A version as Istio writes it; `latest` is what it says when a workload has none.
fn version<'a>(a: &'a Attributes, keys: &[&str]) -> Option<&'a str> {
    text(a, keys).filter(|v| *v != "latest")
}

/// The edge an Istio series counts on, and what it says of its calls; `None` when another
/// reporter counts the same calls, or when it names no destination.
pub(crate) fn classify(
    metric: IstioMetric,
    a: &Attributes,
    waypoints: &Waypoints,
) -> Option<(EdgeKey, IstioCall)> {
    let reporter = a.get_str("reporter").unwrap_or("destination");
    let source_ns = text(a, &["source_workload_namespace"]);
    let dest_ns = text(
        a,
        &[
            "destination_service_namespace",
            "destination_workload_namespace",
        ],
    );
    let dest_workload = text(a, &["destination_workload"]);
    let source_is_waypoint = waypoints.is(
        source_ns,
        &[
            text(a, &["source_workload"]),
            text(a, &["source_canonical_service"]),
        ],
    );
    let dest_is_waypoint = waypoints.is(
        text(a, &["destination_workload_namespace"]),
        &[dest_workload, text(a, &["destination_canonical_service"])],
    );
    // Who counts: see the module's comment.
    let counts = match reporter {
        "waypoint" => true,
        "destination" => !dest_is_waypoint,
        "source" => dest_is_waypoint || (dest_workload.is_none() && !source_is_waypoint),
        _ => false,
    };
    if !counts {
        return None;
    }
    let client = if source_is_waypoint {
        waypoint(
            source_ns,
            text(a, &["source_workload", "source_canonical_service"])?,
        )
    } else {
        match text(
            a,
            &["source_canonical_service", "source_workload", "source_app"],
        ) {
            Some(name) => Endpoint {
                node: NodeKey::service(source_ns, name),
                version: version(a, &["source_canonical_revision", "source_version"])
                    .map(Arc::from),
            },
            None => Endpoint {
                node: NodeKey::user(),
                version: None,
            },
        }
    };
    let server = if dest_is_waypoint {
        waypoint(
            text(a, &["destination_workload_namespace"]),
            text(
                a,
                &["destination_workload", "destination_canonical_service"],
            )?,
        )
    } else if let Some(name) = text(
        a,
        &[
            "destination_canonical_service",
            "destination_service_name",
            "destination_workload",
        ],
    )
    .filter(|_| dest_ns.is_some())
    {
        Endpoint {
            node: NodeKey::service(dest_ns, name),
            version: version(
                a,
                &["destination_canonical_revision", "destination_version"],
            )
            .map(Arc::from),
        }
    } else {
        // No namespace: a host outside the mesh (a ServiceEntry, a passthrough call).
        let host = text(a, &["destination_service", "destination_service_name"])?;
        Endpoint {
            node: NodeKey::virtual_node(NodeKind::External, host),
            version: None,
        }
    };
    let grpc = text(a, &["grpc_response_status"]);
    let connection = if metric.is_tcp() || dest_is_waypoint || source_is_waypoint {
        ConnectionType::Tcp
    } else if grpc.is_some() || a.get_str("request_protocol") == Some("grpc") {
        ConnectionType::Grpc
    } else {
        ConnectionType::Http
    };
    let code: u16 = text(a, &["response_code"])
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let flags = a.get_str("response_flags").unwrap_or("");
    let has = |f: &str| flags.split(',').any(|x| x == f);
    let call = IstioCall {
        class: (code / 100) as u8,
        grpc_error: grpc.is_some_and(|g| g != "0"),
        denied: has("UAEX"),
        rate_limited: has("RL") || has("RLSE"),
        overflow: has("UO"),
        flags: crate::graph::window::flag_bits(flags),
        mtls: match a.get_str("connection_security_policy") {
            Some("mutual_tls") => Some(true),
            Some("none") => Some(false),
            _ => None,
        },
    };
    Some((
        EdgeKey {
            client,
            server,
            connection,
        },
        call,
    ))
}

fn waypoint(namespace: Option<&str>, name: &str) -> Endpoint {
    Endpoint {
        node: NodeKey {
            kind: NodeKind::Waypoint,
            namespace: namespace.map(Arc::from),
            name: Arc::from(name),
        },
        version: None,
    }
}

/// An Istio gateway, by the name Istio gives its workload: `ingress` for `istio-ingressgateway`
/// (and other `*ingressgateway` deployments) and for Gateway API gateways, whose deployments
/// Istio names `<gateway>-istio`; `egress` for `*egressgateway`.
pub fn gateway_kind(name: &str) -> Option<&'static str> {
    if name.ends_with("egressgateway") {
        Some("egress")
    } else if name.ends_with("ingressgateway") || name.ends_with("-istio") {
        Some("ingress")
    } else {
        None
    }
}

#[cfg(test)]
mod gateway_tests {
    #[test]
    fn gateways_by_their_workload_names() {
        use super::gateway_kind as g;
        assert_eq!(g("istio-ingressgateway"), Some("ingress"));
        assert_eq!(g("public-ingressgateway"), Some("ingress"));
        assert_eq!(g("bookinfo-gateway-istio"), Some("ingress"));
        assert_eq!(g("istio-egressgateway"), Some("egress"));
        assert_eq!(g("productpage"), None);
        assert_eq!(g("waypoint"), None);
    }

    /// A waypoint's series whose labels name its workload but not its namespace: the namespace
    /// is the reporting resource's.
    #[test]
    fn a_waypoint_named_by_labels_keeps_the_resources_namespace() {
        let mut a = crate::attr::Attributes::new();
        a.push("reporter", "waypoint");
        a.push("app", "waypoint");
        let mut w = super::Waypoints::default();
        w.learn((Some("shop"), "kubernetes-pods"), &a);
        assert!(w.is(Some("shop"), &[Some("waypoint")]));
        assert!(!w.is(None, &[Some("waypoint")]));
    }
}
