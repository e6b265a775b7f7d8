//! The compact span block: the spans of one commit, grouped by trace, stored column by column and
//! compressed, with a small uncompressed summary beside it that lets a search skip the block.
//!
//! Layout (before compression; every count and index a varint):
//!
//! ```text
//! version · spans · traces · base start (signed)
//! strings: count, each one's length, then all their bytes (services, span names, attribute keys
//!          and values as JSON text, the rest of a span as JSON): each distinct string once
//! resources: count, then each id (signed)
//! trace ids: 16 bytes each · spans per trace
//! span ids: 8 bytes each · parent tags (0 none, 1 an id in "parent ids", k + 2 the trace's k-th span)
//! parent ids: 8 bytes each
//! service, name, kind, status code, error flag, resource: one column each, a value per span
//! start times as differences from the span before · durations
//! attributes per span · their keys · their values (string indexes)
//! the rest of each span (string index + 1, 0 none)
//! ```
//!
//! Ids are what does not repeat; everything else is a dictionary index or a small difference,
//! and the columns put like next to like for the compressor.

mod bytes;
pub(crate) mod keep;
pub(crate) mod summary;

use std::collections::HashMap;
use std::io::Read;

/// The hash maps of encoding: keys from the block itself, hashed many times per span.
type Fast = foldhash::fast::FixedState;

use bytes::{corrupt, In, Out};

use crate::decode::RawSpan;
use crate::encode::SpanRow;
use crate::StoreError;
pub(crate) use summary::Summary;

const VERSION: u8 = 1;
/// The first byte of stored data: how the rest is compressed.
const DEFLATE: u8 = 1;
/// Largest a block may decompress to: a corrupt or hostile row cannot take more memory than this.
const MAX_DECODED: u64 = 256 << 20;
/// Compression level: measured in `storage/examples/block_bench.rs`.
const LEVEL: u32 = 1;

/// A block ready to store: the compressed columns and the search summary.
pub(crate) struct EncodedBlock {
    pub data: Vec<u8>,
    pub summary: Vec<u8>,
    pub services: Vec<summary::ServiceSummary>,
    /// The traces tiered retention keeps, and why (`keep::encode`); `None` when not asked.
    pub keep: Option<Vec<u8>>,
}

/// Encodes spans sorted so that each trace's spans are consecutive (`trace_runs::row_order`).
/// `resource_terms` gives the search terms of each resource the spans use; `keeper`, when given,
/// chooses the traces tiered retention keeps.
pub(crate) fn encode(
    rows: &[&SpanRow],
    resource_terms: &HashMap<i64, Vec<u64>>,
    keeper: Option<&keep::Keeper>,
) -> EncodedBlock {
    let mut services: HashMap<u64, summary::Builder, Fast> = HashMap::default();
    let mut strings = Strings::default();
    let mut resources = Dictionary::<i64>::default();
    let base = rows.iter().map(|r| r.start_ns).min().unwrap_or(0);

    // Traces: runs of one id.
    let mut traces: Vec<(&[u8; 16], usize)> = Vec::new();
    for r in rows {
        match traces.last_mut() {
            Some((id, n)) if **id == r.trace_id => *n += 1,
            _ => traces.push((&r.trace_id, 1)),
        }
    }

    let mut ids = Out::default();
    let mut counts = Out::default();
    for (id, n) in &traces {
        ids.bytes(&id[..]);
        counts.varint(*n as u64);
    }
    let mut span_ids = Out::default();
    let mut parent_tags = Out::default();
    let mut parent_ids = Out::default();
    let mut at = 0;
    for (_, n) in &traces {
        let group = &rows[at..at + n];
        let position = Positions::of(group);
        for r in group {
            span_ids.bytes(&r.span_id);
            match r.parent_span_id {
                None => parent_tags.varint(0),
                Some(p) => match position.get(&p) {
                    Some(k) => parent_tags.varint(k as u64 + 2),
                    None => {
                        parent_tags.varint(1);
                        parent_ids.bytes(&p);
                    }
                },
            }
        }
        at += n;
    }

    let mut service = Out::default();
    let mut name = Out::default();
    let mut kind = Out::default();
    let mut status = Out::default();
    let mut error = Out::default();
    let mut resource = Out::default();
    let mut start = Out::default();
    let mut duration = Out::default();
    let mut attr_counts = Out::default();
    let mut attr_keys = Out::default();
    let mut attr_values = Out::default();
    let mut extra = Out::default();
    let mut previous = base;
    let mut attrs = Vec::new();
    for r in rows {
        let service_index = strings.index(&r.service);
        let name_index = strings.index(&r.name);
        service.varint(service_index);
        name.varint(name_index);
        kind.u8(r.kind as u8);
        status.u8(r.status_code as u8);
        error.u8(r.is_error as u8);
        resource.varint(resources.index(r.resource_id));
        start.signed(r.start_ns.wrapping_sub(previous));
        previous = r.start_ns;
        duration.signed(r.duration_ns);
        attr_counts.varint(r.attributes.len() as u64);
        attrs.clear();
        for (k, v) in r.attributes.iter() {
            let pair = (strings.index(k), strings.index(v));
            attr_keys.varint(pair.0);
            attr_values.varint(pair.1);
            attrs.push(pair);
        }
        extra.varint(match &r.extra {
            Some(x) => strings.index(x) + 1,
            None => 0,
        });
        services
            .entry(service_index)
            .or_default()
            .span(r, name_index, &attrs);
    }
    let mut services: Vec<(u64, summary::Builder)> = services.into_iter().collect();
    services.sort_by_key(|(i, _)| *i);
    let (summary, services) = summary::finish(services, &strings.items, resource_terms);

    let mut out = Out::default();
    out.u8(VERSION);
    out.varint(rows.len() as u64);
    out.varint(traces.len() as u64);
    out.signed(base);
    out.varint(strings.items.len() as u64);
    for s in &strings.items {
        out.varint(s.len() as u64);
    }
    for s in &strings.items {
        out.bytes(s.as_bytes());
    }
    out.varint(resources.items.len() as u64);
    for id in &resources.items {
        out.signed(*id);
    }
    for column in [
        ids,
        counts,
        span_ids,
        parent_tags,
        parent_ids,
        service,
        name,
        kind,
        status,
        error,
        resource,
        start,
        duration,
        attr_counts,
        attr_keys,
        attr_values,
        extra,
    ] {
        out.bytes(&column.0);
    }
    let keep = keeper.map(|k| {
        let counts: Vec<usize> = traces.iter().map(|(_, n)| *n).collect();
        keep::encode(&k.choose(rows, &counts))
    });
    EncodedBlock {
        data: compress(&out.0),
        summary,
        services,
        keep,
    }
}

fn compress(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut data = vec![DEFLATE];
    let mut z = flate2::write::DeflateEncoder::new(&mut data, flate2::Compression::new(LEVEL));
    // Writing into a Vec cannot fail.
    let _ = z.write_all(raw);
    let _ = z.finish();
    data
}

pub(crate) fn decompress(data: &[u8]) -> Result<Vec<u8>, StoreError> {
    match data.split_first() {
        Some((&DEFLATE, rest)) => {
            let mut raw = Vec::with_capacity(rest.len() * 4);
            flate2::read::DeflateDecoder::new(rest)
                .take(MAX_DECODED + 1)
                .read_to_end(&mut raw)
                .map_err(|e| corrupt(&e.to_string()))?;
            if raw.len() as u64 > MAX_DECODED {
                return Err(corrupt("larger than a block may be"));
            }
            Ok(raw)
        }
        _ => Err(corrupt("unknown compression")),
    }
}

/// Where each span id of one trace's group sits, for parent references within the trace.
enum Positions {
    Few(Vec<[u8; 8]>),
    Many(HashMap<[u8; 8], usize, Fast>),
}

impl Positions {
    fn of(group: &[&SpanRow]) -> Positions {
        if group.len() <= 32 {
            Positions::Few(group.iter().map(|r| r.span_id).collect())
        } else {
            let mut map = HashMap::with_capacity_and_hasher(group.len(), Fast::default());
            for (i, r) in group.iter().enumerate() {
                map.entry(r.span_id).or_insert(i);
            }
            Positions::Many(map)
        }
    }

    fn get(&self, id: &[u8; 8]) -> Option<usize> {
        match self {
            Positions::Few(ids) => ids.iter().position(|s| s == id),
            Positions::Many(map) => map.get(id).copied(),
        }
    }
}

/// Values numbered in order of first use.
struct Dictionary<T> {
    items: Vec<T>,
    index: HashMap<T, u64, Fast>,
}

impl<T> Default for Dictionary<T> {
    fn default() -> Self {
        Dictionary {
            items: Vec::new(),
            index: HashMap::default(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Copy> Dictionary<T> {
    fn index(&mut self, v: T) -> u64 {
        let next = self.items.len() as u64;
        *self.index.entry(v).or_insert_with(|| {
            self.items.push(v);
            next
        })
    }
}

/// The block's strings, each once.
#[derive(Default)]
struct Strings<'a> {
    items: Vec<&'a str>,
    index: HashMap<&'a str, u64, Fast>,
}

impl<'a> Strings<'a> {
    fn index(&mut self, s: &'a str) -> u64 {
        let next = self.items.len() as u64;
        *self.index.entry(s).or_insert_with(|| {
            self.items.push(s);
            next
        })
    }
}

/// A block's strings: one text and where each ends (each starts where the one before ends). An
/// index past the table, which decoding never lets through, reads as the empty string.
#[derive(Debug)]
pub(crate) struct StringTable {
    text: String,
    ends: Vec<u32>,
}

impl StringTable {
    pub fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = match i {
            0 => 0,
            _ => self.ends.get(i - 1).map_or(0, |e| *e as usize),
        };
        let end = self.ends.get(i).map_or(start, |e| *e as usize);
        self.text.get(start..end).unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.ends.len() as u32).map(|i| self.get(i))
    }

    /// The index of this string, if the block has it.
    pub fn find(&self, s: &str) -> Option<u32> {
        self.iter().position(|x| x == s).map(|i| i as u32)
    }
}

/// A decoded block: its columns, a value per span (or per trace, per attribute).
#[derive(Debug)]
pub(crate) struct Block {
    pub strings: StringTable,
    pub resources: Vec<i64>,
    pub traces: Vec<[u8; 16]>,
    /// Per trace, the index of its first span; one more entry at the end (the span count).
    pub trace_start: Vec<u32>,
    pub span_ids: Vec<[u8; 8]>,
    pub parents: Vec<Option<[u8; 8]>>,
    pub service: Vec<u32>,
    pub name: Vec<u32>,
    pub kind: Vec<u8>,
    pub status: Vec<u8>,
    pub error: Vec<bool>,
    pub resource: Vec<u32>,
    pub start: Vec<i64>,
    pub duration: Vec<i64>,
    /// Per span, the index of its first attribute; one more entry at the end.
    pub attr_start: Vec<u32>,
    pub attr_keys: Vec<u32>,
    pub attr_values: Vec<u32>,
    /// Per span, its string index + 1, or 0.
    pub extra: Vec<u32>,
}

impl Block {
    /// A block as stored (compressed).
    pub fn decode(data: &[u8]) -> Result<Block, StoreError> {
        Block::decode_raw(&decompress(data)?)
    }

    /// A block's columns, decompressed.
    pub fn decode_raw(raw: &[u8]) -> Result<Block, StoreError> {
        let mut r = In::new(raw);
        if r.u8()? != VERSION {
            return Err(corrupt("unknown version"));
        }
        let spans = r.count(8)?;
        let traces = r.count(16)?;
        let base = r.signed()?;
        let n_strings = r.count(1)?;
        let mut ends = Vec::with_capacity(n_strings);
        let mut total = 0u64;
        for _ in 0..n_strings {
            total = r.add_to(total, u32::MAX as u64, "string lengths")?;
            ends.push(total as u32);
        }
        let text = std::str::from_utf8(r.take(total as usize)?)
            .map_err(|_| corrupt("strings are not UTF-8"))?;
        if !ends.iter().all(|e| text.is_char_boundary(*e as usize)) {
            return Err(corrupt("a string ends inside a character"));
        }
        let strings = StringTable {
            text: text.to_string(),
            ends,
        };
        let n_resources = r.count(1)?;
        let resources = (0..n_resources)
            .map(|_| r.signed())
            .collect::<Result<Vec<_>, _>>()?;
        let ids = (0..traces)
            .map(|_| r.array::<16>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut trace_start = Vec::with_capacity(traces + 1);
        let mut total = 0u64;
        for _ in 0..traces {
            trace_start.push(total as u32);
            total = r.add_to(
                total,
                spans as u64,
                "more spans in traces than in the block",
            )?;
        }
        if total != spans as u64 {
            return Err(corrupt("spans in traces differ from the block's"));
        }
        trace_start.push(total as u32);
        let span_ids = (0..spans)
            .map(|_| r.array::<8>())
            .collect::<Result<Vec<_>, _>>()?;
        let tags = (0..spans)
            .map(|_| r.varint())
            .collect::<Result<Vec<_>, _>>()?;
        let mut parents = Vec::with_capacity(spans);
        for t in 0..traces {
            let (lo, hi) = (trace_start[t] as usize, trace_start[t + 1] as usize);
            for tag in &tags[lo..hi] {
                parents.push(match *tag {
                    0 => None,
                    1 => Some(r.array::<8>()?),
                    k => Some(
                        *usize::try_from(k - 2)
                            .ok()
                            .filter(|k| *k < hi - lo)
                            .and_then(|k| span_ids.get(lo + k))
                            .ok_or_else(|| corrupt("a parent reference"))?,
                    ),
                });
            }
        }
        let index = |r: &mut In, bound: usize| -> Result<u32, StoreError> {
            let v = r.varint()?;
            if v >= bound as u64 {
                return Err(corrupt("an index past its dictionary"));
            }
            Ok(v as u32)
        };
        let column = |r: &mut In, bound: usize| -> Result<Vec<u32>, StoreError> {
            (0..spans).map(|_| index(r, bound)).collect()
        };
        let service = column(&mut r, n_strings)?;
        let name = column(&mut r, n_strings)?;
        let kind = r.take(spans)?.to_vec();
        let status = r.take(spans)?.to_vec();
        let error = r.take(spans)?.iter().map(|b| *b != 0).collect();
        let resource = column(&mut r, n_resources)?;
        let mut start = Vec::with_capacity(spans);
        let mut previous = base;
        for _ in 0..spans {
            previous = previous.wrapping_add(r.signed()?);
            start.push(previous);
        }
        let duration = (0..spans)
            .map(|_| r.signed())
            .collect::<Result<Vec<_>, _>>()?;
        let mut attr_start = Vec::with_capacity(spans + 1);
        let mut attrs = 0u64;
        for _ in 0..spans {
            attr_start.push(attrs as u32);
            attrs = r.add_to(attrs, u32::MAX as u64 / 2, "attribute count")?;
        }
        attr_start.push(attrs as u32);
        let attrs = attrs as usize;
        if attrs > raw.len() {
            return Err(corrupt("attribute count"));
        }
        let attr_keys = (0..attrs)
            .map(|_| index(&mut r, n_strings))
            .collect::<Result<Vec<_>, _>>()?;
        let attr_values = (0..attrs)
            .map(|_| index(&mut r, n_strings))
            .collect::<Result<Vec<_>, _>>()?;
        let extra = column(&mut r, n_strings + 1)?;
        if !r.is_empty() {
            return Err(corrupt("bytes after the last column"));
        }
        Ok(Block {
            strings,
            resources,
            traces: ids,
            trace_start,
            span_ids,
            parents,
            service,
            name,
            kind,
            status,
            error,
            resource,
            start,
            duration,
            attr_start,
            attr_keys,
            attr_values,
            extra,
        })
    }

    pub fn len(&self) -> usize {
        self.span_ids.len()
    }

    /// Which trace span `i` belongs to.
    pub fn trace_of(&self, i: usize) -> usize {
        self.trace_start.partition_point(|s| *s as usize <= i) - 1
    }

    /// The attributes of span `i` as (key JSON, value JSON) string indexes.
    pub fn attributes(&self, i: usize) -> impl Iterator<Item = (&str, &str)> {
        let (lo, hi) = (self.attr_start[i] as usize, self.attr_start[i + 1] as usize);
        (lo..hi).map(move |a| {
            (
                self.strings.get(self.attr_keys[a]),
                self.strings.get(self.attr_values[a]),
            )
        })
    }

    /// Span `i` as the row form the decoder turns into a domain span.
    pub fn raw_span(&self, i: usize) -> RawSpan {
        let mut attributes = String::from("{");
        for (n, (k, v)) in self.attributes(i).enumerate() {
            if n > 0 {
                attributes.push(',');
            }
            attributes.push_str(k);
            attributes.push(':');
            attributes.push_str(v);
        }
        attributes.push('}');
        RawSpan {
            trace_id: self.traces[self.trace_of(i)].to_vec(),
            span_id: self.span_ids[i].to_vec(),
            parent_span_id: self.parents[i].map(|p| p.to_vec()),
            name: self.strings.get(self.name[i]).to_string(),
            kind: self.kind[i] as i16,
            start_ns: self.start[i],
            duration_ns: self.duration[i],
            status_code: self.status[i] as i16,
            resource_id: self.resources[self.resource[i] as usize],
            attributes,
            extra: match self.extra[i] {
                0 => None,
                x => Some(self.strings.get(x - 1).to_string()),
            },
        }
    }

    /// The spans of the traces `keep` says yes to (by trace index), as rows to encode again.
    pub fn rows(&self, keep: impl Fn(usize) -> bool) -> Vec<SpanRow> {
        let mut out = Vec::new();
        for t in (0..self.traces.len()).filter(|t| keep(*t)) {
            for i in self.trace_start[t] as usize..self.trace_start[t + 1] as usize {
                out.push(SpanRow {
                    trace_id: self.traces[t],
                    span_id: self.span_ids[i],
                    parent_span_id: self.parents[i],
                    service: self.strings.get(self.service[i]).to_string(),
                    name: self.strings.get(self.name[i]).to_string(),
                    kind: self.kind[i] as i16,
                    start_ns: self.start[i],
                    duration_ns: self.duration[i],
                    status_code: self.status[i] as i16,
                    is_error: self.error[i],
                    resource_id: self.resources[self.resource[i] as usize],
                    attributes: crate::encode::AttrPairs::from_pairs(self.attributes(i)),
                    extra: match self.extra[i] {
                        0 => None,
                        x => Some(self.strings.get(x - 1).to_string()),
                    },
                });
            }
        }
        out
    }

    /// The spans of the traces with these ids.
    pub fn spans_of<'a>(&'a self, ids: &'a [[u8; 16]]) -> impl Iterator<Item = RawSpan> + 'a {
        self.traces
            .iter()
            .enumerate()
            .filter(|(_, id)| ids.contains(id))
            .flat_map(move |(t, _)| {
                (self.trace_start[t] as usize..self.trace_start[t + 1] as usize)
                    .map(|i| self.raw_span(i))
            })
    }
}

/// The text a tag search compares with a value stored as JSON: a string as it is, anything else
/// as its JSON (numbers, `true`/`false`, arrays), as PostgreSQL's `->>` and SQLite's
/// `json_each` give them.
pub(crate) fn search_text(value_json: &str) -> std::borrow::Cow<'_, str> {
    if value_json.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(value_json) {
            return std::borrow::Cow::Owned(s);
        }
    }
    std::borrow::Cow::Borrowed(value_json)
}

/// A key stored as JSON text, as a search names it.
pub(crate) fn key_text(key_json: &str) -> std::borrow::Cow<'_, str> {
    search_text(key_json)
}

#[cfg(test)]
mod tests;
