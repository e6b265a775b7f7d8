//! The policy benchmark's requests, shared by `meshlens-checkgen` and the in-process
//! `policy_bench`, so that both measure the same checks.

use std::collections::HashMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, AttributeContext, CheckRequest,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

/// What an ext_authz request looks like besides its user.
pub struct CheckShape<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Everything a sidecar Envoy sends, not only four headers.
    pub envoy: bool,
}

/// `ShouldRateLimit` for user `u{user}` in `domain`: one descriptor entry `user`, one hit.
pub fn rls_request(domain: &str, user: usize) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry {
                key: "user".into(),
                value: format!("u{user}"),
            }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

/// ext_authz `Check` for user `u{user}` (header `x-user`) from `ingress` to `work`; with
/// `shape.envoy`, also what a sidecar Envoy sends (its headers, ids, addresses, time).
pub fn check_request(shape: &CheckShape, user: usize) -> CheckRequest {
    let mut headers = HashMap::new();
    headers.insert(":method".to_string(), shape.method.to_string());
    headers.insert(":path".to_string(), shape.path.to_string());
    headers.insert("x-user".to_string(), format!("u{user}"));
    headers.insert("user-agent".to_string(), "checkgen".to_string());
    let mut ext = HashMap::new();
    ext.insert("destination".to_string(), "work".to_string());
    let mut http = attribute_context::HttpRequest {
        method: shape.method.to_string(),
        path: shape.path.to_string(),
        host: "work".into(),
        headers,
        ..Default::default()
    };
    let mut source = attribute_context::Peer {
        service: "ingress".into(),
        ..Default::default()
    };
    let mut destination = None;
    let mut time = None;
    if shape.envoy {
        let id = format!("{:08x}-1f2e-4d3c-8b7a-{:012x}", user, user * 7919);
        for (k, v) in [
            (":authority", "work:8080"),
            (":scheme", "http"),
            ("accept", "*/*"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", id.as_str()),
            ("x-envoy-downstream-service-cluster", "ingress"),
            (
                "x-envoy-downstream-service-node",
                "sidecar~10.0.0.12~ingress-7d9f8.default~default.svc.cluster.local",
            ),
            ("x-envoy-expected-rq-timeout-ms", "15000"),
        ] {
            http.headers.insert(k.to_string(), v.to_string());
        }
        http.id = (user as u64 * 2_654_435_761).to_string();
        http.scheme = "http".into();
        http.protocol = "HTTP/1.1".into();
        let address = |ip: &str, port: u32| {
            use envoy_types::pb::envoy::config::core::v3::{
                address, socket_address, Address, SocketAddress,
            };
            Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            })
        };
        source.address = address("10.0.0.12", 40_000 + (user % 20_000) as u32);
        destination = Some(attribute_context::Peer {
            address: address("10.0.0.31", 8080),
            ..Default::default()
        });
        time = Some(envoy_types::pb::google::protobuf::Timestamp {
            seconds: 1_795_000_000,
            nanos: 0,
        });
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            context_extensions: ext,
            source: Some(source),
            destination,
            request: Some(attribute_context::Request {
                time,
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}
