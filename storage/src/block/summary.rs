//! What a search may know of a block without decompressing it: its longest span, whether any span
//! failed, and a Bloom filter of its terms (services, operations, `key=value` tags of spans and of
//! their resources); the same for each service's spans in it. A block whose summary rules a search
//! out is never read.

use std::hash::BuildHasher;

type HashSet<T> = std::collections::HashSet<T, foldhash::fast::FixedState>;

use super::bytes::{In, Out};
use super::search_text;
use crate::encode::SpanRow;
use crate::StoreError;

const VERSION: u8 = 1;
/// Filter bits per distinct term, and hashes per term: about 1% false positives.
const BITS_PER_TERM: usize = 10;
const HASHES: u8 = 7;
/// A filter holds at most this many bytes; past it, more false positives instead of more bytes.
const MAX_FILTER_BYTES: usize = 1 << 16;

/// The hash of a search term.
pub(crate) fn term(parts: &[&str]) -> u64 {
    foldhash::quality::FixedState::with_seed(0x626c_6f6f_6d21).hash_one(parts)
}

pub(crate) fn service_term(service: &str) -> u64 {
    term(&["s", service])
}

pub(crate) fn operation_term(service: &str, name: &str) -> u64 {
    term(&["o", service, name])
}

pub(crate) fn tag_term(key: &str, text: &str) -> u64 {
    term(&["t", key, text])
}

/// One service's spans in a block, as its summary will tell them: collected while the block is
/// encoded, by indexes in the block's table of strings, so each distinct term is hashed once.
#[derive(Default)]
pub(crate) struct Builder {
    operations: HashSet<u64>,
    tags: HashSet<(u64, u64)>,
    resources: HashSet<i64>,
    max_duration: i64,
    errors: u64,
    min_start: Option<i64>,
    max_start: i64,
}

impl Builder {
    /// A span of this service, with the indexes of its name and its attributes' keys and values.
    pub fn span(&mut self, r: &SpanRow, name: u64, attrs: &[(u64, u64)]) {
        self.max_duration = self.max_duration.max(r.duration_ns);
        self.errors += r.is_error as u64;
        self.min_start = Some(self.min_start.map_or(r.start_ns, |m| m.min(r.start_ns)));
        self.max_start = self.max_start.max(r.start_ns);
        self.operations.insert(name);
        self.tags.extend(attrs.iter().copied());
        self.resources.insert(r.resource_id);
    }
}

/// A service's part of a block: the start times of its spans and its summary.
pub(crate) struct ServiceSummary {
    pub service: String,
    pub min_start: i64,
    pub max_start: i64,
    pub summary: Vec<u8>,
}

/// The block's summary (every term, the service of each operation among them) and one per
/// service (its operations and tags, without the service, which its row names).
pub(crate) fn finish(
    services: Vec<(u64, Builder)>,
    strings: &[&str],
    resource_terms: &std::collections::HashMap<i64, Vec<u64>>,
) -> (Vec<u8>, Vec<ServiceSummary>) {
    let s = |i: u64| strings[i as usize];
    let mut tag_terms: std::collections::HashMap<(u64, u64), u64, foldhash::fast::FixedState> =
        Default::default();
    let mut all = HashSet::default();
    let (mut max_duration, mut errors) = (0, 0);
    let mut out = Vec::with_capacity(services.len());
    for (service, b) in services {
        let name = s(service);
        let mut terms = HashSet::default();
        all.insert(service_term(name));
        for op in &b.operations {
            terms.insert(operation_term(name, s(*op)));
        }
        for pair in &b.tags {
            terms.insert(
                *tag_terms.entry(*pair).or_insert_with(|| {
                    tag_term(&super::key_text(s(pair.0)), &search_text(s(pair.1)))
                }),
            );
        }
        for id in &b.resources {
            if let Some(t) = resource_terms.get(id) {
                terms.extend(t.iter().copied());
            }
        }
        all.extend(terms.iter().copied());
        max_duration = b.max_duration.max(max_duration);
        errors += b.errors;
        out.push(ServiceSummary {
            service: name.to_string(),
            min_start: b.min_start.unwrap_or(0),
            max_start: b.max_start,
            summary: encode(&terms, b.max_duration, b.errors),
        });
    }
    (encode(&all, max_duration, errors), out)
}

fn encode(terms: &HashSet<u64>, max_duration: i64, errors: u64) -> Vec<u8> {
    let bytes = (terms.len() * BITS_PER_TERM)
        .div_ceil(8)
        .clamp(8, MAX_FILTER_BYTES);
    let mut filter = vec![0u8; bytes];
    for t in terms {
        for bit in bits(*t, HASHES, bytes * 8) {
            filter[bit / 8] |= 1 << (bit % 8);
        }
    }
    let mut out = Out::default();
    out.u8(VERSION);
    out.signed(max_duration);
    out.varint(errors);
    out.u8(HASHES);
    out.string(&filter);
    out.0
}

/// The filter bits of a term: double hashing over the two halves of its hash.
fn bits(term: u64, hashes: u8, m: usize) -> impl Iterator<Item = usize> {
    let (h1, h2) = (term as u32 as u64, (term >> 32) | 1);
    (0..hashes as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m as u64) as usize)
}

/// A stored summary, read back.
#[derive(Debug)]
pub(crate) struct Summary {
    pub max_duration: i64,
    pub errors: u64,
    hashes: u8,
    filter: Vec<u8>,
}

impl Summary {
    pub fn decode(b: &[u8]) -> Result<Summary, StoreError> {
        let mut r = In::new(b);
        if r.u8()? != VERSION {
            return Err(super::bytes::corrupt("unknown summary version"));
        }
        let max_duration = r.signed()?;
        let errors = r.varint()?;
        let hashes = r.u8()?.clamp(1, 16);
        let filter = r.string()?.to_vec();
        if filter.is_empty() {
            return Err(super::bytes::corrupt("an empty filter"));
        }
        Ok(Summary {
            max_duration,
            errors,
            hashes,
            filter,
        })
    }

    /// False only when no span of the block can have this term.
    pub fn may_have(&self, term: u64) -> bool {
        bits(term, self.hashes, self.filter.len() * 8)
            .all(|bit| self.filter[bit / 8] & (1 << (bit % 8)) != 0)
    }
}
