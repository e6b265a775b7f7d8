//! Limits on one span, OTLP-style: a span over a limit is kept, cut to the limit, and its
//! `dropped_*` counts say what was cut (as the OpenTelemetry SDKs' span limits do, applied again
//! at the backend, where a buggy or hostile sender's span arrives whole).
//!
//! The defaults keep every real span intact: the SDKs already cap a span at 128 attributes, 128
//! events and 128 links (each event and link at 128 attributes), and leave value lengths
//! unbounded; the limits here are twice the SDKs' counts, so only a sender that set its own
//! limits higher (or has none, like a hand-written exporter) is cut. Values are capped at
//! 16 KiB: a long SQL statement or URL (Envoy keeps 8 KiB of a path at most) fits, a 2 MiB blob
//! does not. Tempo cuts attribute values at 2 KiB by default, which cuts real SQL; we do not.

use crate::attr::{AttrValue, Attributes};
use crate::span::Span;

/// Longest attribute key kept whole. Semantic-convention keys are under 64 bytes; a longer key is
/// a bug or an attack, and is cut like a value.
pub const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLimits {
    /// Attributes on a span, a resource, an event or a link.
    pub max_attributes: usize,
    /// Bytes of one string or bytes value (an array's or map's values each); longer ones are cut
    /// at a character boundary.
    pub max_value_bytes: usize,
    pub max_events: usize,
    pub max_links: usize,
    /// Bytes of a span's or an event's name.
    pub max_name_bytes: usize,
}

impl Default for SpanLimits {
    fn default() -> Self {
        SpanLimits {
            max_attributes: 256,
            max_value_bytes: 16 << 10,
            max_events: 256,
            max_links: 256,
            max_name_bytes: 1024,
        }
    }
}

/// What the limits cut from a batch, for meshlens' own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Attributes dropped (from spans, events and links).
    pub attributes: u64,
    /// String or bytes values shortened.
    pub values: u64,
    pub events: u64,
    pub links: u64,
    /// Span and event names shortened.
    pub names: u64,
}

impl Cut {
    pub fn is_empty(&self) -> bool {
        *self == Cut::default()
    }

    /// Each field with its metric label.
    pub fn by_field(&self) -> [(&'static str, u64); 5] {
        [
            ("attributes", self.attributes),
            ("values", self.values),
            ("events", self.events),
            ("links", self.links),
            ("names", self.names),
        ]
    }
}

impl SpanLimits {
    /// Cuts `span` to the limits; its `dropped_*` counts grow by what was dropped.
    pub fn apply(&self, span: &mut Span, cut: &mut Cut) {
        cut.names += u64::from(truncate_str(&mut span.name, self.max_name_bytes));
        span.dropped_attributes_count = span
            .dropped_attributes_count
            .saturating_add(self.attributes(&mut span.attributes, cut));
        let over = span.events.len().saturating_sub(self.max_events);
        if over > 0 {
            // The first events are kept, as the SDKs keep the first ones recorded.
            span.events.truncate(self.max_events);
            span.dropped_events_count = span.dropped_events_count.saturating_add(count(over));
            cut.events += over as u64;
        }
        for event in &mut span.events {
            cut.names += u64::from(truncate_str(&mut event.name, self.max_name_bytes));
            event.dropped_attributes_count = event
                .dropped_attributes_count
                .saturating_add(self.attributes(&mut event.attributes, cut));
        }
        let over = span.links.len().saturating_sub(self.max_links);
        if over > 0 {
            span.links.truncate(self.max_links);
            span.dropped_links_count = span.dropped_links_count.saturating_add(count(over));
            cut.links += over as u64;
        }
        for link in &mut span.links {
            link.dropped_attributes_count = link
                .dropped_attributes_count
                .saturating_add(self.attributes(&mut link.attributes, cut));
        }
    }

    /// Whether `attributes` (a resource's) are within the limits, so need no copy.
    pub fn fits(&self, attributes: &Attributes) -> bool {
        attributes.len() <= self.max_attributes
            && attributes
                .iter()
                .all(|(k, v)| k.len() <= MAX_KEY_BYTES && value_fits(v, self.max_value_bytes))
    }

    /// Cuts `attributes` to the limits; returns how many were dropped.
    pub fn attributes(&self, attributes: &mut Attributes, cut: &mut Cut) -> u32 {
        let over = attributes.0.len().saturating_sub(self.max_attributes);
        if over > 0 {
            attributes.0.truncate(self.max_attributes);
            cut.attributes += over as u64;
        }
        for (key, value) in &mut attributes.0 {
            cut.values += u64::from(truncate_str(key, MAX_KEY_BYTES));
            cut.values += truncate_value(value, self.max_value_bytes, self.max_attributes);
        }
        count(over)
    }
}

/// About how many bytes a span takes: its strings and values, and a fixed part for ids, times
/// and the rest (what a trace's size is counted in, as Tempo's `max_bytes_per_trace` counts).
pub fn span_bytes(span: &Span) -> usize {
    const FIXED: usize = 64;
    FIXED
        + span.name.len()
        + attributes_bytes(&span.attributes)
        + span
            .events
            .iter()
            .map(|e| 16 + e.name.len() + attributes_bytes(&e.attributes))
            .sum::<usize>()
        + span
            .links
            .iter()
            .map(|l| 32 + l.trace_state.len() + attributes_bytes(&l.attributes))
            .sum::<usize>()
}

/// About how many bytes attributes take (their keys and values).
pub fn attributes_bytes(a: &Attributes) -> usize {
    a.iter().map(|(k, v)| k.len() + value_bytes(v)).sum()
}

fn value_bytes(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => s.len(),
        AttrValue::Bytes(b) => b.len(),
        AttrValue::Array(a) => a.iter().map(value_bytes).sum::<usize>() + 8,
        AttrValue::KvList(kv) => attributes_bytes(kv) + 8,
        _ => 8,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn value_fits(v: &AttrValue, max: usize) -> bool {
    match v {
        AttrValue::Str(s) => s.len() <= max,
        AttrValue::Bytes(b) => b.len() <= max,
        AttrValue::Array(a) => a.iter().all(|v| value_fits(v, max)),
        AttrValue::KvList(kv) => kv
            .iter()
            .all(|(k, v)| k.len() <= MAX_KEY_BYTES && value_fits(v, max)),
        _ => true,
    }
}

/// Shortens strings and bytes to `max` bytes, and arrays and maps to `max_items` entries, at
/// every depth; returns how many values it cut.
fn truncate_value(v: &mut AttrValue, max: usize, max_items: usize) -> u64 {
    match v {
        AttrValue::Str(s) => u64::from(truncate_str(s, max)),
        AttrValue::Bytes(b) if b.len() > max => {
            b.truncate(max);
            1
        }
        AttrValue::Array(a) => {
            let mut n = u64::from(a.len() > max_items);
            a.truncate(max_items);
            for v in a {
                n += truncate_value(v, max, max_items);
            }
            n
        }
        AttrValue::KvList(kv) => {
            let mut n = u64::from(kv.0.len() > max_items);
            kv.0.truncate(max_items);
            for (k, v) in &mut kv.0 {
                n += u64::from(truncate_str(k, MAX_KEY_BYTES));
                n += truncate_value(v, max, max_items);
            }
            n
        }
        _ => 0,
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary; true if it was cut.
fn truncate_str(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SpanBuilder;
    use crate::{Event, Link, SpanKind};

    fn span(service: &str, name: &str, kind: SpanKind) -> Span {
        SpanBuilder::new(1, 1, service, name, 1_000)
            .kind(kind)
            .build()
    }

    #[test]
    fn an_oversized_span_is_kept_cut_to_the_limits_and_counted() {
        let mut s = span("svc", "a", SpanKind::Server);
        s.dropped_attributes_count = 3; // what the sender dropped itself is kept
        s.name = "n".repeat(5000);
        for i in 0..20_000 {
            s.attributes.push(format!("k{i}"), i as i64);
        }
        s.attributes.0[0].1 = AttrValue::Str("é".repeat(1 << 20)); // 2 MiB, 2-byte characters
        for i in 0..300 {
            s.events.push(Event {
                time_ns: 1,
                name: format!("e{i}"),
                attributes: Attributes::new(),
                dropped_attributes_count: 0,
            });
        }
        s.links = (0..257)
            .map(|_| Link {
                trace_id: s.trace_id,
                span_id: s.span_id,
                trace_state: String::new(),
                attributes: Attributes::new(),
                dropped_attributes_count: 0,
            })
            .collect();
        let attrs_before = s.attributes.len();
        let mut cut = Cut::default();
        let limits = SpanLimits::default();
        limits.apply(&mut s, &mut cut);
        assert_eq!(s.attributes.len(), 256);
        assert_eq!(s.dropped_attributes_count as usize, 3 + attrs_before - 256);
        let AttrValue::Str(big) = &s.attributes.0[0].1 else {
            panic!()
        };
        assert_eq!(big.len(), 16 << 10, "cut at a character boundary");
        assert_eq!(s.name.len(), 1024);
        assert_eq!((s.events.len(), s.dropped_events_count), (256, 44));
        assert_eq!(s.events[255].name, "e255", "the first events are kept");
        assert_eq!((s.links.len(), s.dropped_links_count), (256, 1));
        assert_eq!(
            cut,
            Cut {
                attributes: (attrs_before - 256) as u64,
                values: 1,
                events: 44,
                links: 1,
                names: 1,
            }
        );
        // Applying again cuts nothing more.
        let mut again = Cut::default();
        let before = s.clone();
        limits.apply(&mut s, &mut again);
        assert!(again.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn a_span_is_measured_by_its_strings_and_values() {
        let small = span("svc", "GET /", SpanKind::Server);
        let mut big = small.clone();
        big.attributes.push("blob", "x".repeat(10_000));
        assert_eq!(span_bytes(&big), span_bytes(&small) + 4 + 10_000);
    }

    #[test]
    fn nested_values_and_event_attributes_are_cut_too() {
        let limits = SpanLimits {
            max_attributes: 2,
            max_value_bytes: 3,
            ..SpanLimits::default()
        };
        let mut attrs = Attributes::new();
        attrs.push(
            "k".repeat(300),
            AttrValue::Array(vec!["xyzw".into(), "ok".into(), "third".into()]),
        );
        assert!(!limits.fits(&attrs));
        let mut cut = Cut::default();
        assert_eq!(limits.attributes(&mut attrs, &mut cut), 0);
        assert_eq!(attrs.0[0].0.len(), MAX_KEY_BYTES);
        assert_eq!(
            attrs.0[0].1,
            AttrValue::Array(vec!["xyz".into(), "ok".into()])
        );
        assert_eq!(cut.values, 3, "key, array length, one element");
        assert!(limits.fits(&attrs));

        let mut s = span("svc", "a", SpanKind::Client);
        s.events.push(Event {
            time_ns: 1,
            name: "exception".into(),
            attributes: ["a", "b", "c", "d"]
                .iter()
                .map(|k| (k.to_string(), AttrValue::Int(1)))
                .collect(),
            dropped_attributes_count: 1,
        });
        limits.apply(&mut s, &mut Cut::default());
        assert_eq!(s.events[0].attributes.len(), 2);
        assert_eq!(s.events[0].dropped_attributes_count, 3);
    }
}
