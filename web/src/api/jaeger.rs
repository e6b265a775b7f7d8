//! Jaeger v1 query API JSON shapes, converted from domain spans at this edge.

use std::collections::HashMap;

use meshlens_topology::{AttrValue, Attributes, Span, SpanKind, StatusCode, TraceId};
use serde::Serialize;
use serde_json::Value;

/// `{data, total, limit, offset, errors}`, Jaeger's envelope for every answer.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub data: T,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    pub errors: Option<Vec<Value>>,
}

impl<T: Serialize> Envelope<T> {
    pub fn new(data: T, total: usize) -> Self {
        Envelope {
            data,
            total,
            limit: 0,
            offset: 0,
            errors: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<JSpan>,
    pub processes: HashMap<String, Process>,
    pub warnings: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JSpan {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    pub operation_name: String,
    pub references: Vec<Reference>,
    pub start_time: u64,
    pub duration: u64,
    pub tags: Vec<Tag>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    pub warnings: Option<Vec<String>>,
    pub flags: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Serialize, Clone, PartialEq)]
pub struct Process {
    #[serde(rename = "serviceName")]
    pub service_name: String,
    pub tags: Vec<Tag>,
}

#[derive(Serialize, Clone, PartialEq)]
pub struct Tag {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: Value,
}

#[derive(Serialize)]
pub struct Log {
    pub timestamp: u64,
    pub fields: Vec<Tag>,
}

/// Jaeger prints a trace id with a zero high half as 16 hex digits, otherwise 32.
pub fn trace_id_string(id: &TraceId) -> String {
    let hex = id.to_hex();
    match hex.strip_prefix("0000000000000000") {
        Some(low) => low.to_string(),
        None => hex,
    }
}

/// Accepts 32 or 16 hex digits, and shorter ids whose leading zeros were dropped.
pub fn parse_trace_id(s: &str) -> Option<TraceId> {
    let s = s.trim();
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    TraceId::from_hex(&format!("{s:0>32}")).ok()
}

pub fn trace(spans: &[Span]) -> Trace {
    let mut processes: HashMap<String, Process> = HashMap::new();
    let mut keys: Vec<(*const meshlens_topology::Resource, String)> = Vec::new();
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let ptr = std::sync::Arc::as_ptr(&s.resource);
        let pid = match keys.iter().find(|(p, _)| *p == ptr) {
            Some((_, id)) => id.clone(),
            None => {
                let process = process(s);
                let id = match processes.iter().find(|(_, p)| **p == process) {
                    Some((id, _)) => id.clone(),
                    None => {
                        let id = format!("p{}", processes.len() + 1);
                        processes.insert(id.clone(), process);
                        id
                    }
                };
                keys.push((ptr, id.clone()));
                id
            }
        };
        out.push(span(s, pid));
    }
    Trace {
        trace_id: spans
            .first()
            .map(|s| trace_id_string(&s.trace_id))
            .unwrap_or_default(),
        spans: out,
        processes,
        warnings: None,
    }
}

fn process(s: &Span) -> Process {
    Process {
        service_name: s.service().to_string(),
        tags: s
            .resource
            .attributes
            .iter()
            .filter(|(k, _)| *k != "service.name")
            .map(|(k, v)| tag(k, v))
            .collect(),
    }
}

fn span(s: &Span, process_id: String) -> JSpan {
    let mut references = Vec::new();
    if let Some(parent) = s.parent_span_id {
        references.push(Reference {
            ref_type: "CHILD_OF",
            trace_id: trace_id_string(&s.trace_id),
            span_id: parent.to_hex(),
        });
    }
    for l in &s.links {
        references.push(Reference {
            ref_type: "FOLLOWS_FROM",
            trace_id: trace_id_string(&l.trace_id),
            span_id: l.span_id.to_hex(),
        });
    }
    JSpan {
        trace_id: trace_id_string(&s.trace_id),
        span_id: s.span_id.to_hex(),
        operation_name: s.name.clone(),
        references,
        start_time: s.start_ns / 1_000,
        duration: s.duration_ns() / 1_000,
        tags: span_tags(s),
        logs: s
            .events
            .iter()
            .map(|e| Log {
                timestamp: e.time_ns / 1_000,
                // An `event` attribute takes precedence over the event name, as in Jaeger's mapping.
                fields: std::iter::once(string_tag("event", &e.name))
                    .filter(|_| e.attributes.get("event").is_none())
                    .chain(e.attributes.iter().map(|(k, v)| tag(k, v)))
                    .collect(),
            })
            .collect(),
        process_id,
        warnings: dropped_warnings(s),
        flags: s.flags,
    }
}

/// What the sender or meshlens' span limits left out of a span, as Jaeger warnings (which its UI
/// and ours show on the span).
fn dropped_warnings(s: &Span) -> Option<Vec<String>> {
    let plural =
        |n: u32, what: &str| format!("{n} {what}{} dropped", if n == 1 { "" } else { "s" });
    let mut w = Vec::new();
    if s.dropped_attributes_count > 0 {
        w.push(plural(s.dropped_attributes_count, "attribute"));
    }
    if s.dropped_events_count > 0 {
        w.push(plural(s.dropped_events_count, "event"));
    }
    if s.dropped_links_count > 0 {
        w.push(plural(s.dropped_links_count, "link"));
    }
    for e in s.events.iter().filter(|e| e.dropped_attributes_count > 0) {
        let what = plural(e.dropped_attributes_count, "attribute");
        w.push(format!("event {:?}: {what}", e.name));
    }
    let link_attrs: u32 = s.links.iter().map(|l| l.dropped_attributes_count).sum();
    if link_attrs > 0 {
        w.push(format!("links: {}", plural(link_attrs, "attribute")));
    }
    (!w.is_empty()).then_some(w)
}

/// Attributes, then the tags Jaeger's OTLP translation adds (kind, status, error, scope).
fn span_tags(s: &Span) -> Vec<Tag> {
    let mut tags: Vec<Tag> = s.attributes.iter().map(|(k, v)| tag(k, v)).collect();
    let has = |key: &str| s.attributes.get(key).is_some();
    if !matches!(s.kind, SpanKind::Unspecified | SpanKind::Internal) && !has("span.kind") {
        tags.push(string_tag("span.kind", s.kind.as_str()));
    }
    match s.status.code {
        StatusCode::Error => {
            tags.push(string_tag("otel.status_code", "ERROR"));
            if !has("error") {
                tags.push(Tag {
                    key: "error".into(),
                    kind: "bool",
                    value: Value::Bool(true),
                });
            }
        }
        StatusCode::Ok => tags.push(string_tag("otel.status_code", "OK")),
        StatusCode::Unset => {}
    }
    if !s.status.message.is_empty() {
        tags.push(string_tag("otel.status_description", &s.status.message));
    }
    if !s.scope.name.is_empty() {
        tags.push(string_tag("otel.scope.name", &s.scope.name));
    }
    if !s.scope.version.is_empty() {
        tags.push(string_tag("otel.scope.version", &s.scope.version));
    }
    tags
}

fn string_tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.to_string(),
        kind: "string",
        value: Value::String(value.to_string()),
    }
}

fn tag(key: &str, v: &AttrValue) -> Tag {
    let (kind, value) = match v {
        AttrValue::Str(s) => ("string", Value::String(s.clone())),
        AttrValue::Bool(b) => ("bool", Value::Bool(*b)),
        AttrValue::Int(i) => ("int64", Value::from(*i)),
        AttrValue::Double(d) => ("float64", Value::from(*d)),
        AttrValue::Bytes(b) => ("binary", Value::String(hex::encode(b))),
        other => ("string", Value::String(nested_text(other))),
    };
    Tag {
        key: key.to_string(),
        kind,
        value,
    }
}

/// Arrays and maps have no Jaeger type; they become JSON text, as Jaeger's own translator does.
fn nested_text(v: &AttrValue) -> String {
    fn to_json(v: &AttrValue) -> Value {
        match v {
            AttrValue::Str(s) => Value::String(s.clone()),
            AttrValue::Bool(b) => Value::Bool(*b),
            AttrValue::Int(i) => Value::from(*i),
            AttrValue::Double(d) => Value::from(*d),
            AttrValue::Bytes(b) => Value::String(hex::encode(b)),
            AttrValue::Array(items) => Value::Array(items.iter().map(to_json).collect()),
            AttrValue::KvList(kv) => Value::Object(map(kv)),
            AttrValue::Empty => Value::Null,
        }
    }
    fn map(kv: &Attributes) -> serde_json::Map<String, Value> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), to_json(v)))
            .collect()
    }
    to_json(v).to_string()
}
