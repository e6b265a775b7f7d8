//! The trace search over blocks: blocks in the time range, latest first; each block's summary
//! rules it in or out; the blocks ruled in are decoded and their spans matched one by one.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::block::summary::{operation_term, tag_term};
use crate::block::{key_text, search_text, Block, Summary};
use crate::query::TraceQuery;
use crate::{on_pool, Store, StoreError};

/// Block summaries read per query.
const PAGE: i64 = 64;

/// A search's conditions, prepared once.
struct Filter<'q> {
    q: &'q TraceQuery,
    errors_only: bool,
    no_errors: bool,
    /// Tags other than `error`.
    tags: Vec<(&'q str, &'q str)>,
    /// Terms every matching block must have.
    terms: Vec<u64>,
}

impl<'q> Filter<'q> {
    fn new(q: &'q TraceQuery) -> Self {
        let mut f = Filter {
            q,
            errors_only: q.errors_only,
            no_errors: false,
            tags: Vec::new(),
            terms: Vec::new(),
        };
        for (key, value) in &q.tags {
            if key == "error" {
                match value.as_str() {
                    "true" => f.errors_only = true,
                    _ => f.no_errors = true,
                }
            } else {
                f.tags.push((key, value));
            }
        }
        // With a service, the summaries read are that service's, which name it by their row.
        if let Some(service) = &q.service {
            if let Some(op) = &q.operation {
                f.terms.push(operation_term(service, op));
            }
        }
        // A tag may match the span or its resource: both are in the block's terms.
        for (k, v) in &f.tags {
            f.terms.push(tag_term(k, v));
        }
        f
    }

    fn may_match(&self, s: &Summary) -> bool {
        if self.errors_only && s.errors == 0 {
            return false;
        }
        if self
            .q
            .duration_min_ns
            .is_some_and(|min| s.max_duration < min)
        {
            return false;
        }
        self.terms.iter().all(|t| s.may_have(*t))
    }

    /// Every matching span's trace with its start; a trace's latest start is kept.
    fn matches(
        &self,
        b: &Block,
        resources: &HashMap<i64, Vec<(String, String)>>,
        found: &mut HashMap<[u8; 16], i64>,
    ) {
        let find = |s: &str| b.strings.find(s);
        let service = match &self.q.service {
            Some(s) => match find(s) {
                Some(i) => Some(i),
                None => return,
            },
            None => None,
        };
        let name = match &self.q.operation {
            Some(s) => match find(s) {
                Some(i) => Some(i),
                None => return,
            },
            None => None,
        };
        // Per tag: the string indexes that are its key and its value, and the resources that
        // have it.
        let tags: Vec<(HashSet<u32>, HashSet<u32>, Vec<bool>)> = self
            .tags
            .iter()
            .map(|(k, v)| {
                let mut keys = HashSet::new();
                let mut values = HashSet::new();
                for (i, s) in b.strings.iter().enumerate() {
                    if key_text(s) == *k {
                        keys.insert(i as u32);
                    }
                    if search_text(s) == *v {
                        values.insert(i as u32);
                    }
                }
                let by_resource = b
                    .resources
                    .iter()
                    .map(|id| {
                        resources
                            .get(id)
                            .is_some_and(|attrs| attrs.iter().any(|(rk, rv)| rk == k && rv == v))
                    })
                    .collect();
                (keys, values, by_resource)
            })
            .collect();
        let kind = self.q.span_kind.map(|k| k.to_otlp() as u8);
        for i in 0..b.len() {
            let start = b.start[i];
            if start < self.q.start_min_ns || start > self.q.start_max_ns {
                continue;
            }
            if service.is_some_and(|s| b.service[i] != s)
                || name.is_some_and(|n| b.name[i] != n)
                || kind.is_some_and(|k| b.kind[i] != k)
                || self.q.duration_min_ns.is_some_and(|m| b.duration[i] < m)
                || self.q.duration_max_ns.is_some_and(|m| b.duration[i] > m)
                || (self.errors_only && !b.error[i])
                || (self.no_errors && b.error[i])
            {
                continue;
            }
            let attrs = b.attr_start[i] as usize..b.attr_start[i + 1] as usize;
            let tagged = tags.iter().all(|(keys, values, by_resource)| {
                by_resource[b.resource[i] as usize]
                    || attrs.clone().any(|a| {
                        keys.contains(&b.attr_keys[a]) && values.contains(&b.attr_values[a])
                    })
            });
            if !tagged {
                continue;
            }
            let at = found.entry(b.traces[b.trace_of(i)]).or_insert(start);
            *at = (*at).max(start);
        }
    }
}

/// A resource's attributes (stored as one JSON object) as a tag search compares them.
fn tag_texts(json: &str) -> Result<Vec<(String, String)>, StoreError> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// A resource's search terms, from its attributes as stored (the terms its blocks' summaries
/// hold for it).
pub(crate) fn resource_terms(json: &str) -> Result<Vec<u64>, StoreError> {
    Ok(tag_texts(json)?
        .iter()
        .map(|(k, v)| tag_term(k, v))
        .collect())
}

/// The `limit`-th latest start among the traces found, once there are that many.
fn kth_latest(found: &HashMap<[u8; 16], i64>, limit: usize) -> Option<i64> {
    if found.len() < limit {
        return None;
    }
    let mut starts: Vec<i64> = found.values().copied().collect();
    let k = limit - 1;
    starts.select_nth_unstable_by(k, |a, b| b.cmp(a));
    Some(starts[k])
}

impl Store {
    /// The traces whose spans in blocks match, each with its matching spans' latest start. Blocks
    /// come latest-starting first, so the search stops at the first block that cannot start a
    /// span later than the `limit`-th trace found.
    pub(crate) async fn search_blocks(
        &self,
        q: &TraceQuery,
        limit: usize,
        deadline: Instant,
    ) -> Result<HashMap<[u8; 16], i64>, StoreError> {
        let filter = Filter::new(q);
        let mut found = HashMap::new();
        let mut resources: HashMap<i64, Vec<(String, String)>> = HashMap::new();
        // Keyset pages over (max_start_ns, first_seq), descending: each page seeks past the last.
        let mut after: (i64, i64) = (i64::MAX, i64::MAX);
        loop {
            // A service's own rows when the search names one, else every block's.
            let (sql, service) = match &q.service {
                Some(s) => (
                    "SELECT first_seq, max_start_ns, summary FROM block_services
                     WHERE max_start_ns >= $1 AND min_start_ns <= $2
                       AND (max_start_ns, first_seq) < ($3, $4) AND service = $5
                     ORDER BY max_start_ns DESC, first_seq DESC LIMIT $6",
                    s.as_str(),
                ),
                None => (
                    "SELECT first_seq, max_start_ns, summary FROM blocks
                     WHERE summary IS NOT NULL AND max_start_ns >= $1 AND min_start_ns <= $2
                       AND (max_start_ns, first_seq) < ($3, $4) AND $5 = ''
                     ORDER BY max_start_ns DESC, first_seq DESC LIMIT $6",
                    "",
                ),
            };
            let page: Vec<(i64, i64, Vec<u8>)> = on_pool!(&self.pool, |p| {
                sqlx::query_as(sql)
                    .bind(q.start_min_ns)
                    .bind(q.start_max_ns)
                    .bind(after.0)
                    .bind(after.1)
                    .bind(service)
                    .bind(PAGE)
                    .fetch_all(p)
                    .await?
            });
            let done = (page.len() as i64) < PAGE;
            for (first_seq, max_start, summary) in page {
                // Ties go on: a trace starting at the k-th's time may still come.
                if kth_latest(&found, limit).is_some_and(|k| k > max_start) {
                    return Ok(found);
                }
                if Instant::now() > deadline {
                    return Err(StoreError::SearchTimeout(self.search_timeout));
                }
                after = (max_start, first_seq);
                // A damaged block is left out (and logged) rather than failing every search over
                // its time.
                let summary = match Summary::decode(&summary) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(first_seq, error = %e, "a block's summary is damaged; searches leave it out");
                        continue;
                    }
                };
                if !filter.may_match(&summary) {
                    continue;
                }
                let block = match self.block(first_seq).await {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e @ StoreError::Corrupt(_)) => {
                        tracing::warn!(first_seq, error = %e, "a block is damaged; searches leave it out");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if !filter.tags.is_empty() {
                    let missing: Vec<i64> = block
                        .resources
                        .iter()
                        .filter(|id| !resources.contains_key(id))
                        .copied()
                        .collect();
                    for r in self.resources(&missing).await? {
                        resources.insert(r.id, tag_texts(&r.attributes)?);
                    }
                }
                filter.matches(&block, &resources, &mut found);
            }
            if done {
                return Ok(found);
            }
        }
    }
}
