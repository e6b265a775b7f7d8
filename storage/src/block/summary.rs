//! What a search may know of a block without decompressing it: its longest span, whether any span
//! failed, and a Bloom filter of its terms (services, operations, `key=value` tags of spans and of
//! their resources). A block whose summary rules a search out is never read.

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

/// Collects a block's summary while it is encoded. Terms are hashed once per distinct string
/// (or pair of strings) of the block, by their indexes in its table of strings.
#[derive(Default)]
pub(crate) struct Builder {
    terms: HashSet<u64>,
    operations: HashSet<(u64, u64)>,
    tags: HashSet<(u64, u64)>,
    max_duration: i64,
    errors: u64,
}

impl Builder {
    /// A span, with the indexes of its service, its name and its attributes' keys and values.
    pub fn span(&mut self, r: &SpanRow, service: u64, name: u64, attrs: &[(u64, u64)]) {
        self.max_duration = self.max_duration.max(r.duration_ns);
        self.errors += r.is_error as u64;
        self.operations.insert((service, name));
        self.tags.extend(attrs.iter().copied());
    }

    /// The terms of the distinct operations and tags seen, given the block's strings.
    pub fn strings(&mut self, strings: &[&str]) {
        let s = |i: u64| strings[i as usize];
        for (service, name) in std::mem::take(&mut self.operations) {
            self.terms.insert(service_term(s(service)));
            self.terms.insert(operation_term(s(service), s(name)));
        }
        for (k, v) in std::mem::take(&mut self.tags) {
            self.terms
                .insert(tag_term(&super::key_text(s(k)), &search_text(s(v))));
        }
    }

    pub fn terms(&mut self, terms: &[u64]) {
        self.terms.extend(terms.iter().copied());
    }

    pub fn finish(self) -> Vec<u8> {
        let bytes = (self.terms.len() * BITS_PER_TERM)
            .div_ceil(8)
            .clamp(8, MAX_FILTER_BYTES);
        let mut filter = vec![0u8; bytes];
        for t in &self.terms {
            for bit in bits(*t, HASHES, bytes * 8) {
                filter[bit / 8] |= 1 << (bit % 8);
            }
        }
        let mut out = Out::default();
        out.u8(VERSION);
        out.signed(self.max_duration);
        out.varint(self.errors);
        out.u8(HASHES);
        out.string(&filter);
        out.0
    }
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
