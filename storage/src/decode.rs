//! Rows back to domain spans.

use std::collections::HashMap;
use std::sync::Arc;

use meshlens_topology::{
    Attributes, Event, Link, Resource, Scope, Span, SpanId, SpanKind, Status, StatusCode, TraceId,
};
use serde::Deserialize;
use serde_json::Value;

use crate::json::attrs_from_value;
use crate::StoreError;

#[derive(sqlx::FromRow)]
pub(crate) struct RawSpan {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Option<Vec<u8>>,
    pub name: String,
    pub kind: i16,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub status_code: i16,
    pub resource_id: i64,
    pub attributes: String,
    pub extra: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct RawResource {
    pub id: i64,
    pub attributes: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Extra {
    status_message: String,
    trace_state: String,
    flags: u32,
    scope_name: String,
    scope_version: String,
    events: Vec<ExtraEvent>,
    links: Vec<ExtraLink>,
    dropped_attributes_count: u32,
    dropped_events_count: u32,
    dropped_links_count: u32,
}

#[derive(Deserialize)]
struct ExtraEvent {
    time_ns: u64,
    name: String,
    attributes: Value,
    #[serde(default)]
    dropped_attributes_count: u32,
}

#[derive(Deserialize)]
struct ExtraLink {
    trace_id: String,
    span_id: String,
    #[serde(default)]
    trace_state: String,
    attributes: Value,
    #[serde(default)]
    dropped_attributes_count: u32,
}

pub(crate) fn resources(raw: Vec<RawResource>) -> Result<HashMap<i64, Arc<Resource>>, StoreError> {
    raw.into_iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.attributes).map_err(corrupt)?;
            Ok((r.id, Arc::new(Resource::new(attrs_from_value(v)))))
        })
        .collect()
}

pub(crate) fn span(
    raw: RawSpan,
    resources: &HashMap<i64, Arc<Resource>>,
) -> Result<Span, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("span {what}"));
    let extra: Extra = match &raw.extra {
        Some(text) => serde_json::from_str(text).map_err(corrupt)?,
        None => Extra::default(),
    };
    let attributes: Value = serde_json::from_str(&raw.attributes).map_err(corrupt)?;
    let resource = resources
        .get(&raw.resource_id)
        .cloned()
        .unwrap_or_else(|| Arc::new(Resource::new(Attributes::new())));
    let start_ns = raw.start_ns.max(0) as u64;
    Ok(Span {
        trace_id: TraceId::from_bytes(&raw.trace_id).map_err(|_| bad("trace id"))?,
        span_id: SpanId::from_bytes(&raw.span_id).map_err(|_| bad("span id"))?,
        parent_span_id: match raw.parent_span_id {
            Some(p) => SpanId::parent_from_bytes(&p).map_err(|_| bad("parent id"))?,
            None => None,
        },
        trace_state: extra.trace_state,
        flags: extra.flags,
        resource,
        scope: Arc::new(Scope {
            name: extra.scope_name,
            version: extra.scope_version,
        }),
        name: raw.name,
        kind: SpanKind::from_otlp(raw.kind.into()),
        start_ns,
        end_ns: start_ns.saturating_add(raw.duration_ns.max(0) as u64),
        status: Status {
            code: StatusCode::from_otlp(raw.status_code.into()),
            message: extra.status_message,
        },
        attributes: attrs_from_value(attributes),
        events: extra
            .events
            .into_iter()
            .map(|e| Event {
                time_ns: e.time_ns,
                name: e.name,
                attributes: attrs_from_value(e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        links: extra
            .links
            .into_iter()
            .filter_map(|l| {
                Some(Link {
                    trace_id: TraceId::from_hex(&l.trace_id).ok()?,
                    span_id: SpanId::from_hex(&l.span_id).ok()?,
                    trace_state: l.trace_state,
                    attributes: attrs_from_value(l.attributes),
                    dropped_attributes_count: l.dropped_attributes_count,
                })
            })
            .collect(),
        dropped_attributes_count: extra.dropped_attributes_count,
        dropped_events_count: extra.dropped_events_count,
        dropped_links_count: extra.dropped_links_count,
    })
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
