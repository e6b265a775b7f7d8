//! Zipkin v2 JSON spans to the domain span model.

use std::collections::HashMap;
use std::sync::Arc;

use meshlens_topology::{
    AttrValue, Attributes, Event, InvalidSpan, Resource, Scope, Span, SpanId, SpanKind, Status,
    StatusCode as SpanStatus, TraceId,
};
use serde::{Deserialize, Deserializer};

use crate::pipeline::Converted;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ZipkinSpan {
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    timestamp: u64,
    #[serde(default, deserialize_with = "number_or_string")]
    duration: u64,
    #[serde(default)]
    local_endpoint: Option<Endpoint>,
    #[serde(default)]
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    tags: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    ipv4: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Deserialize)]
struct Annotation {
    #[serde(default, deserialize_with = "number_or_string")]
    timestamp: u64,
    #[serde(default)]
    value: String,
}

/// Some tracers (older Envoys among them) write 64-bit numbers as strings.
fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Str(String),
        Null(()),
    }
    match N::deserialize(d)? {
        N::Num(n) => Ok(n),
        N::Str(s) => s.trim().parse().map_err(serde::de::Error::custom),
        N::Null(()) => Ok(0),
    }
}

pub(super) fn convert(spans: Vec<ZipkinSpan>) -> Converted {
    let mut out = Converted::default();
    let mut resources: HashMap<String, Arc<Resource>> = HashMap::new();
    let scope = Arc::new(Scope {
        name: "zipkin".into(),
        version: String::new(),
    });
    for (i, z) in spans.into_iter().enumerate() {
        let service = z
            .local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown_service".into());
        let resource = resources
            .entry(service.clone())
            .or_insert_with(|| Arc::new(Resource::for_service(&service)))
            .clone();
        match convert_span(z, resource, scope.clone()) {
            Ok(s) => out.spans.push(s),
            Err(reason) => out.rejected.add(reason, || format!("spans[{i}]")),
        }
    }
    out
}

fn convert_span(
    z: ZipkinSpan,
    resource: Arc<Resource>,
    scope: Arc<Scope>,
) -> Result<Span, InvalidSpan> {
    let trace_id = TraceId::from_hex(&z.trace_id)?;
    let span_id = SpanId::from_hex(&z.id)?;
    let parent_span_id = match z.parent_id.as_deref() {
        None | Some("") => None,
        Some(p) => Some(SpanId::from_hex(p).map_err(|_| InvalidSpan::ParentSpanId)?),
    };
    let start_ns = z.timestamp.saturating_mul(1_000);
    let end_ns = start_ns.saturating_add(z.duration.saturating_mul(1_000));
    Span::check_times(start_ns, end_ns)?;
    let kind = match z.kind.as_deref() {
        Some("CLIENT") => SpanKind::Client,
        Some("SERVER") => SpanKind::Server,
        Some("PRODUCER") => SpanKind::Producer,
        Some("CONSUMER") => SpanKind::Consumer,
        _ => SpanKind::Unspecified,
    };
    let mut tags: Vec<(String, String)> = z.tags.into_iter().collect();
    tags.sort();
    // Zipkin's `error` tag carries the message; it becomes the span's status (and so `error=true`).
    let status = match tags.iter().position(|(k, _)| k == "error") {
        Some(i) => Status {
            code: SpanStatus::Error,
            message: tags.remove(i).1,
        },
        None => Status::default(),
    };
    let mut attributes: Attributes = tags
        .into_iter()
        .map(|(k, v)| (k, AttrValue::Str(v)))
        .collect();
    if let Some(remote) = z.remote_endpoint {
        if let Some(name) = remote.service_name.filter(|s| !s.is_empty()) {
            attributes.push("peer.service", name);
        }
        if let Some(addr) = remote.ipv4.or(remote.ipv6) {
            attributes.push("network.peer.address", addr);
        }
        if let Some(port) = remote.port {
            attributes.push("network.peer.port", i64::from(port));
        }
    }
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        trace_state: String::new(),
        flags: 0,
        resource,
        scope,
        name: z.name.unwrap_or_default(),
        kind,
        start_ns,
        end_ns,
        status,
        attributes,
        events: z
            .annotations
            .into_iter()
            .map(|a| Event {
                time_ns: a.timestamp.saturating_mul(1_000),
                name: a.value,
                attributes: Attributes::new(),
                dropped_attributes_count: 0,
            })
            .collect(),
        links: Vec::new(),
        dropped_attributes_count: 0,
        dropped_events_count: 0,
        dropped_links_count: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_zipkin_v2_span_with_string_numbers() {
        let json = r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","parentId":"0020000000000001",
            "name":"get /api","kind":"SERVER","timestamp":"1472470996199000","duration":207000,
            "localEndpoint":{"serviceName":"frontend","ipv4":"127.0.0.1"},
            "remoteEndpoint":{"serviceName":"backend","ipv4":"10.0.0.2","port":9000},
            "tags":{"http.status_code":"500","error":"boom"},
            "annotations":[{"timestamp":1472470996200000,"value":"ws"}]}]"#;
        let spans: Vec<ZipkinSpan> = serde_json::from_str(json).unwrap();
        let c = convert(spans);
        assert_eq!(c.rejected.count, 0);
        let s = &c.spans[0];
        assert_eq!(s.trace_id.to_hex(), "0000000000000000463ac35c9f6413ad");
        assert_eq!(s.service(), "frontend");
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.start_ns, 1_472_470_996_199_000_000);
        assert_eq!(s.duration_ns(), 207_000_000);
        assert_eq!(s.status.code, SpanStatus::Error);
        assert_eq!(s.http_status(), Some(500));
        assert_eq!(s.attributes.get_str("peer.service"), Some("backend"));
        assert_eq!(s.events[0].name, "ws");
    }

    #[test]
    fn invalid_spans_are_counted_not_stored() {
        let json = r#"[{"traceId":"xyz","id":"a2fb4a1d1a96d312","timestamp":1},
                       {"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312"},
                       {"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","timestamp":5}]"#;
        let c = convert(serde_json::from_str(json).unwrap());
        assert_eq!(c.spans.len(), 1);
        assert_eq!(c.rejected.count, 2);
        assert!(
            c.rejected.message().contains("spans[0]"),
            "{}",
            c.rejected.message()
        );
    }
}
