//! OTLP protobuf types to the domain span model. OTLP types never pass this boundary.

use std::sync::Arc;

use meshlens_topology::{
    AttrValue, Attributes, Event, InvalidSpan, Link, Resource, Scope, Span, SpanId, SpanKind,
    Status, StatusCode, TraceId,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1 as otlp;

use crate::pipeline::Converted;

pub fn convert_traces(req: ExportTraceServiceRequest) -> Converted {
    let mut out = Converted::default();
    for (ri, rs) in req.resource_spans.into_iter().enumerate() {
        let resource = Arc::new(Resource::new(
            rs.resource
                .map(|r| attributes(r.attributes))
                .unwrap_or_default(),
        ));
        for (si, ss) in rs.scope_spans.into_iter().enumerate() {
            let scope = Arc::new(
                ss.scope
                    .map(|s| Scope {
                        name: s.name,
                        version: s.version,
                    })
                    .unwrap_or_default(),
            );
            for (i, span) in ss.spans.into_iter().enumerate() {
                match convert_span(span, &resource, &scope) {
                    Ok(s) => out.spans.push(s),
                    Err(reason) => out.rejected.add(reason, || {
                        format!("resource_spans[{ri}].scope_spans[{si}].spans[{i}]")
                    }),
                }
            }
        }
    }
    out
}

fn convert_span(
    s: otlp::Span,
    resource: &Arc<Resource>,
    scope: &Arc<Scope>,
) -> Result<Span, InvalidSpan> {
    let trace_id = TraceId::from_bytes(&s.trace_id)?;
    let span_id = SpanId::from_bytes(&s.span_id)?;
    let parent_span_id = SpanId::parent_from_bytes(&s.parent_span_id)?;
    Span::check_times(s.start_time_unix_nano, s.end_time_unix_nano)?;
    let status = s
        .status
        .map(|st| Status {
            code: StatusCode::from_otlp(st.code),
            message: st.message,
        })
        .unwrap_or_default();
    let links_sent = s.links.len();
    // A link with bad ids says nothing useful; it is dropped (and counted) and the span kept.
    let links: Vec<Link> = s
        .links
        .into_iter()
        .filter_map(|l| {
            Some(Link {
                trace_id: TraceId::from_bytes(&l.trace_id).ok()?,
                span_id: SpanId::from_bytes(&l.span_id).ok()?,
                trace_state: l.trace_state,
                attributes: attributes(l.attributes),
                dropped_attributes_count: l.dropped_attributes_count,
            })
        })
        .collect();
    let bad_links = u32::try_from(links_sent - links.len()).unwrap_or(u32::MAX);
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        trace_state: s.trace_state,
        flags: s.flags,
        resource: resource.clone(),
        scope: scope.clone(),
        name: s.name,
        kind: SpanKind::from_otlp(s.kind),
        start_ns: s.start_time_unix_nano,
        end_ns: s.end_time_unix_nano,
        status,
        attributes: attributes(s.attributes),
        events: s
            .events
            .into_iter()
            .map(|e| Event {
                time_ns: e.time_unix_nano,
                name: e.name,
                attributes: attributes(e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        links,
        dropped_attributes_count: s.dropped_attributes_count,
        dropped_events_count: s.dropped_events_count,
        dropped_links_count: s.dropped_links_count.saturating_add(bad_links),
    })
}

pub fn attributes(kvs: Vec<KeyValue>) -> Attributes {
    kvs.into_iter()
        .map(|kv| (kv.key, value(kv.value)))
        .collect()
}

/// Nesting is already bounded by the decoders (prost: 100 levels, serde_json: 128), so plain
/// recursion here cannot overflow the stack.
fn value(v: Option<AnyValue>) -> AttrValue {
    match v.and_then(|v| v.value) {
        None => AttrValue::Empty,
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(b),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(i),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(d),
        Some(any_value::Value::BytesValue(b)) => AttrValue::Bytes(b),
        Some(any_value::Value::ArrayValue(a)) => {
            AttrValue::Array(a.values.into_iter().map(|v| value(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => AttrValue::KvList(attributes(kv.values)),
        // String-table references belong to the profiles signal; a span has no table to resolve them.
        Some(any_value::Value::StringValueStrindex(_)) => AttrValue::Empty,
    }
}

#[cfg(test)]
mod tests;
