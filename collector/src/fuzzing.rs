//! Entry points for the fuzz targets (`fuzz/`, README there): each takes untrusted bytes the way
//! a receiver or the policy server takes them, through the same decoding and conversion, and
//! must return, whatever the bytes. Not an API: nothing else calls these.

use meshlens_topology::SpanLimits;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::otlp::http::{decode_request, Format};

/// An OTLP trace export, protobuf and JSON: decoded, converted, cut to the span limits.
pub fn otlp_traces(data: &[u8]) {
    for format in [Format::Protobuf, Format::Json] {
        if let Ok(req) = decode_request::<ExportTraceServiceRequest>(format, data) {
            let mut converted = crate::otlp::convert::convert_traces(req);
            let limits = SpanLimits {
                max_attributes: 4,
                max_value_bytes: 8,
                max_events: 2,
                max_links: 2,
                max_name_bytes: 8,
            };
            crate::pipeline::limits::cut_spans(&mut converted.spans, &limits);
        }
    }
}

/// An OTLP metrics export, protobuf and JSON: decoded and converted to the graph's points.
pub fn otlp_metrics(data: &[u8]) {
    for format in [Format::Protobuf, Format::Json] {
        if let Ok(req) = decode_request::<ExportMetricsServiceRequest>(format, data) {
            let converted = crate::otlp::convert_metrics::convert_metrics(req);
            let _ = crate::otlp::convert_metrics::partial_success(&converted);
        }
    }
}

/// A Zipkin v2 JSON body.
pub fn zipkin(data: &[u8]) {
    crate::zipkin::convert_body(data).ok();
}

/// A Prometheus remote write body (after Snappy): scanned by reference, twice (the second
/// time its label sets are known), and each series decoded.
pub fn remote_write(data: &[u8]) {
    crate::prom::fuzz_write(data);
}

/// An ext_authz `CheckRequest`: bounded, then read into the policy's attributes.
pub fn ext_authz(data: &[u8]) {
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
    if let Ok(mut req) = CheckRequest::decode(data) {
        if crate::policy::authz::bounds(&req).is_ok() {
            let _ = crate::policy::authz::attributes(&mut req);
        }
    }
}

/// A rate limit service request: validated into the policy's request.
pub fn rate_limit(data: &[u8]) {
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    if let Ok(req) = RateLimitRequest::decode(data) {
        let _ = crate::policy::ratelimit::request(req);
    }
}
