//! A remote write request to the graph's input: the series it reads, by reference into the body
//! (the series' meaning is `meshlens_topology::prom`'s). A series' labels are decoded and
//! checked the first time its id is seen; after that, its samples alone are read.

use std::collections::HashSet;
use std::sync::Mutex;

use meshlens_topology::prom::{check_series, series_read, PromSample, PromSeries, SeriesProblem};

use super::proto::{decode_series, scan, Scan, WireError, WireSeries};
use crate::body::Pooled;
use crate::pipeline::ConvertedMetrics;

/// Most label sets remembered as checked (16 bytes each); past it, the memory starts afresh
/// and label sets are checked again as they come.
const MAX_CHECKED: usize = 1_000_000;

/// The ids of label sets checked before (a name, no label twice, a number for `le`), and the
/// seed of those ids.
pub struct CheckedLabels {
    seed: u64,
    ids: Mutex<HashSet<u128, foldhash::fast::FixedState>>,
}

impl Default for CheckedLabels {
    fn default() -> Self {
        use std::hash::BuildHasher;
        CheckedLabels {
            // Random per process: a client cannot choose label sets whose ids collide.
            seed: std::collections::hash_map::RandomState::new().hash_one(0u8),
            ids: Mutex::default(),
        }
    }
}

impl CheckedLabels {
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u128, foldhash::fast::FixedState>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The vectors of scans done, reused (at most `POOLED_SCANS`): fresh ones for every request cost
/// the kernel's zeroing of their pages.
static SCANS: Mutex<Vec<Scan>> = Mutex::new(Vec::new());
const POOLED_SCANS: usize = 64;

fn pooled_scan() -> Scan {
    SCANS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default()
}

/// A request's series the graph reads, in their body.
pub struct WireBatch {
    body: Pooled<'static>,
    pub series: Vec<WireSeries>,
    samples: Vec<PromSample>,
}

impl WireBatch {
    /// What the batch holds in memory: its body's buffer and the series' references.
    pub fn bytes(&self) -> usize {
        self.body.buf.capacity()
            + self.series.capacity() * std::mem::size_of::<WireSeries>()
            + self.samples.capacity() * std::mem::size_of::<PromSample>()
    }

    pub fn samples(&self, s: &WireSeries) -> &[PromSample] {
        &self.samples[s.samples.clone()]
    }

    /// A series with its labels, for a graph that has not seen its id before.
    pub fn decode(&self, s: &WireSeries) -> Option<PromSeries> {
        decode_series(&self.body.buf[s.at.clone()]).ok()
    }
}

impl Drop for WireBatch {
    fn drop(&mut self) {
        let scan = Scan {
            series: std::mem::take(&mut self.series),
            samples: std::mem::take(&mut self.samples),
            ..Scan::default()
        };
        // Prometheus' requests are of 2,000 samples; larger vectors are freed.
        if scan.series.capacity() <= 4096 && scan.samples.capacity() <= 16384 {
            let mut pool = SCANS.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOLED_SCANS {
                pool.push(scan);
            }
        }
    }
}

impl std::fmt::Debug for WireBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBatch")
            .field("bytes", &self.body.buf.len())
            .field("series", &self.series.len())
            .field("samples", &self.samples.len())
            .finish()
    }
}

/// Reads a `WriteRequest` body, leaving undecoded the series the graph does not read (they are
/// taken and counted all the same) and the labels of series checked before; refused series are
/// counted and left out.
pub fn convert_write(
    body: Pooled<'static>,
    checked: &CheckedLabels,
) -> Result<ConvertedMetrics, WireError> {
    let scan = scan(&body.buf, series_read, checked.seed, pooled_scan())?;
    let mut problems: Vec<(usize, SeriesProblem, u64)> = Vec::new();
    let mut refused = vec![false; scan.series.len()];
    let mut new_ids = Vec::new();
    let mut misses = Vec::new();
    {
        let ids = checked.lock();
        for (k, s) in scan.series.iter().enumerate() {
            if !ids.contains(&s.id) {
                misses.push(k);
                continue;
            }
            let samples = &scan.samples[s.samples.clone()];
            if samples.iter().any(|x| x.timestamp_ms < 0) {
                problems.push((s.index, SeriesProblem::BadTimestamp, samples.len() as u64));
                refused[k] = true;
            }
        }
    }
    for k in misses {
        let s = &scan.series[k];
        let series = decode_series(&body.buf[s.at.clone()])?;
        match check_series(&series) {
            Ok(()) => new_ids.push(s.id),
            Err(problem) => {
                problems.push((s.index, problem, series.samples.len() as u64));
                refused[k] = true;
            }
        }
    }
    if !new_ids.is_empty() {
        let mut ids = checked.lock();
        if ids.len() + new_ids.len() > MAX_CHECKED {
            ids.clear();
        }
        ids.extend(new_ids);
    }
    let mut out = ConvertedMetrics {
        series: scan.series.len() as u64 + scan.unread_series,
        ..ConvertedMetrics::default()
    };
    problems.sort_by_key(|p| p.0);
    for (at, problem, n) in problems {
        out.reject_for(problem.as_str(), n, || {
            format!("timeseries[{at}]: {problem}")
        });
    }
    let mut series = scan.series;
    let mut k = 0;
    series.retain(|s| {
        let keep = !refused[k];
        k += 1;
        if keep {
            let samples = &scan.samples[s.samples.clone()];
            out.points += samples.len() as u64;
            out.stale += samples.iter().filter(|x| x.value.is_nan()).count() as u64;
        }
        keep
    });
    // Samples of series the graph does not read are taken too, and counted with the rest.
    out.points += scan.unread_samples;
    if !series.is_empty() {
        out.wire = Some(WireBatch {
            body,
            series,
            samples: scan.samples,
        });
    }
    Ok(out)
}

/// For the fuzz target: a body converted twice (the second time, its label sets are known) and
/// given to a graph each time.
pub(crate) fn fuzz_write(data: &[u8]) {
    static POOL: crate::body::BufferPool = crate::body::BufferPool::new();
    let checked = CheckedLabels::default();
    let mut graph = meshlens_topology::graph::Topology::default();
    for round in 1..=2u64 {
        if let Ok(converted) = convert_write(POOL.adopt(data.to_vec(), 0), &checked) {
            if let Some(wire) = &converted.wire {
                crate::graph::feed_wire(&mut graph, wire, round * 1_000_000_000);
            }
        }
    }
}
