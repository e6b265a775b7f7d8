//! Domain spans to rows, done on the receiver's task so the single writer only writes.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use meshlens_topology::{Resource, Span};
use serde::Serialize;

use crate::json::{attrs_to_string, nul_free, AttrsJson, ValueJson};

/// Spans ready to insert, with the resources and operations they refer to. Cloning is cheap (the
/// rows are shared), so the SQLite writer thread can hold a batch without copying it.
#[derive(Debug, Default, Clone)]
pub struct EncodedBatch {
    pub(crate) spans: Arc<Vec<SpanRow>>,
    pub(crate) resources: Arc<Vec<ResourceRow>>,
}

impl EncodedBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SpanRow {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub service: String,
    pub name: String,
    pub kind: i16,
    pub start_ns: i64,
    pub duration_ns: i64,
    pub status_code: i16,
    pub is_error: bool,
    pub resource_id: i64,
    /// Each attribute as its key and its value in JSON text, in the span's order.
    pub attributes: AttrPairs,
    pub extra: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceRow {
    pub id: i64,
    pub service: String,
    pub attributes: String,
    /// The search terms of its attributes (`block::summary::tag_term`), for the summaries of the
    /// blocks whose spans it is the resource of.
    pub terms: Vec<u64>,
}

/// The parts of a span without a column of their own.
#[derive(Serialize, Default)]
pub(crate) struct ExtraJson<'a> {
    #[serde(skip_serializing_if = "cow_is_empty")]
    pub status_message: Cow<'a, str>,
    #[serde(skip_serializing_if = "cow_is_empty")]
    pub trace_state: Cow<'a, str>,
    #[serde(skip_serializing_if = "is_zero")]
    pub flags: u32,
    #[serde(skip_serializing_if = "cow_is_empty")]
    pub scope_name: Cow<'a, str>,
    #[serde(skip_serializing_if = "cow_is_empty")]
    pub scope_version: Cow<'a, str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkJson<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_attributes_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_events_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_links_count: u32,
}

#[derive(Serialize)]
pub(crate) struct EventJson<'a> {
    pub time_ns: u64,
    pub name: Cow<'a, str>,
    pub attributes: AttrsJson<'a>,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_attributes_count: u32,
}

#[derive(Serialize)]
pub(crate) struct LinkJson<'a> {
    pub trace_id: String,
    pub span_id: String,
    #[serde(skip_serializing_if = "cow_is_empty")]
    pub trace_state: Cow<'a, str>,
    pub attributes: AttrsJson<'a>,
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_attributes_count: u32,
}

fn cow_is_empty(s: &impl AsRef<str>) -> bool {
    s.as_ref().is_empty()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Encodes spans for the writer. Resources shared by spans are encoded once.
pub fn encode_batch(spans: &[Span]) -> EncodedBatch {
    let mut rows = Vec::with_capacity(spans.len());
    let mut resources: Vec<ResourceRow> = Vec::new();
    let mut last: Option<(*const Resource, i64)> = None;
    for span in spans {
        let ptr = Arc::as_ptr(&span.resource);
        let resource_id = match last {
            Some((p, id)) if p == ptr => id,
            _ => {
                let row = encode_resource(&span.resource);
                let id = row.id;
                if !resources.iter().any(|r| r.id == id) {
                    resources.push(row);
                }
                last = Some((ptr, id));
                id
            }
        };
        rows.push(encode_span(span, resource_id));
    }
    EncodedBatch {
        spans: Arc::new(rows),
        resources: Arc::new(resources),
    }
}

fn encode_resource(r: &Resource) -> ResourceRow {
    let attributes = attrs_to_string(&r.attributes);
    let terms = attr_pairs(&r.attributes)
        .iter()
        .map(|(k, v)| {
            crate::block::summary::tag_term(
                &crate::block::key_text(k),
                &crate::block::search_text(v),
            )
        })
        .collect();
    ResourceRow {
        id: resource_id(&attributes),
        service: clean(bounded(&r.service.name)),
        attributes,
        terms,
    }
}

/// Attributes as (key, value) pairs of JSON text, in one buffer: the object `attrs_to_string`
/// writes is `{`, the pairs joined by `:` and `,`, then `}`.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttrPairs {
    text: String,
    /// Per pair, where its key ends and where its value ends in `text` (each starts where the
    /// one before ends).
    ends: Vec<(u32, u32)>,
}

impl AttrPairs {
    /// Pairs already in JSON text (a key, a value).
    pub fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut out = AttrPairs::default();
        for (k, v) in pairs {
            out.text.push_str(k);
            let key_end = out.text.len() as u32;
            out.text.push_str(v);
            out.ends.push((key_end, out.text.len() as u32));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut at = 0usize;
        self.ends.iter().map(move |&(k, v)| {
            let (k, v) = (k as usize, v as usize);
            let pair = (&self.text[at..k], &self.text[k..v]);
            at = v;
            pair
        })
    }
}

fn attr_pairs(a: &meshlens_topology::Attributes) -> AttrPairs {
    let mut text = Vec::new();
    let mut ends = Vec::with_capacity(a.len());
    for (k, v) in a.iter() {
        // Writing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut text, &*nul_free(k));
        let key_end = text.len() as u32;
        let _ = serde_json::to_writer(&mut text, &ValueJson(v));
        ends.push((key_end, text.len() as u32));
    }
    AttrPairs {
        // serde_json writes UTF-8.
        text: String::from_utf8(text).unwrap_or_default(),
        ends,
    }
}

impl SpanRow {
    /// The attributes as one JSON object (the row store's column).
    pub fn attributes_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.attributes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        out
    }
}

/// A resource's stored id: SipHash-1-3 with zero keys over its attributes' JSON, fed as `Hash`
/// feeds a `str` (its bytes, then 0xff). That is what std's `DefaultHasher::new()` computed when
/// the first ids were stored; std does not promise to keep computing it, so it is fixed here
/// (pinned by a test to known values), and ids already stored stay the ids of their resources.
pub(crate) fn resource_id(attributes: &str) -> i64 {
    let mut h = siphasher::sip::SipHasher13::new();
    attributes.hash(&mut h);
    h.finish() as i64
}

fn encode_span(s: &Span, resource_id: i64) -> SpanRow {
    let extra = ExtraJson {
        status_message: nul_free(&s.status.message),
        trace_state: nul_free(&s.trace_state),
        flags: s.flags,
        scope_name: nul_free(&s.scope.name),
        scope_version: nul_free(&s.scope.version),
        events: s
            .events
            .iter()
            .map(|e| EventJson {
                time_ns: e.time_ns,
                name: nul_free(&e.name),
                attributes: AttrsJson(&e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        links: s
            .links
            .iter()
            .map(|l| LinkJson {
                trace_id: l.trace_id.to_hex(),
                span_id: l.span_id.to_hex(),
                trace_state: nul_free(&l.trace_state),
                attributes: AttrsJson(&l.attributes),
                dropped_attributes_count: l.dropped_attributes_count,
            })
            .collect(),
        dropped_attributes_count: s.dropped_attributes_count,
        dropped_events_count: s.dropped_events_count,
        dropped_links_count: s.dropped_links_count,
    };
    let extra = serde_json::to_string(&extra).ok().filter(|e| e != "{}");
    SpanRow {
        trace_id: *s.trace_id.as_bytes(),
        span_id: *s.span_id.as_bytes(),
        parent_span_id: s.parent_span_id.map(|p| *p.as_bytes()),
        service: clean(bounded(s.service())),
        name: clean(bounded(&s.name)),
        kind: s.kind.to_otlp() as i16,
        start_ns: clamp_i64(s.start_ns),
        duration_ns: clamp_i64(s.duration_ns()),
        status_code: s.status.code.to_otlp() as i16,
        is_error: s.is_error(),
        resource_id,
        attributes: attr_pairs(&s.attributes),
        extra,
    }
}

/// Longest service or span name stored, in bytes. Both are indexed, and PostgreSQL refuses index
/// entries of more than about 2.7 KB: one span with a URL for a name would fail its whole commit.
pub const MAX_NAME_BYTES: usize = 1024;

/// `s` cut to `MAX_NAME_BYTES` on a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_NAME_BYTES {
        return s.to_string();
    }
    let mut end = MAX_NAME_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn clean(s: String) -> String {
    match nul_free(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => o,
    }
}
