//! What one export may put in the store: each span cut to the span limits (kept, with its
//! `dropped_*` counts), and each trace's bytes bounded (Tempo's `max_bytes_per_trace`): spans
//! that would take a trace past it are refused in the partial success.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshlens_topology::{Cut, Resource, Span, SpanLimits, TraceId};
use tokio::time::Instant;

/// How long a trace's bytes are remembered after its last span.
pub const TRACE_IDLE: Duration = Duration::from_secs(300);
/// Most traces whose bytes are remembered; past it, the longest idle are forgotten first.
pub const MAX_TRACKED_TRACES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IngestLimits {
    pub span: SpanLimits,
    /// Bytes a trace may hold (as [`span_bytes`] counts them); 0: no limit.
    pub max_bytes_per_trace: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            span: SpanLimits::default(),
            max_bytes_per_trace: DEFAULT_MAX_BYTES_PER_TRACE,
        }
    }
}

/// 16 MiB: ten times what a 20,000-span batch job's trace of ordinary spans takes, so only a
/// runaway trace (a loop that never ends its root, a retry storm under one id) meets it.
pub const DEFAULT_MAX_BYTES_PER_TRACE: u64 = 16 << 20;

/// The bytes each recent trace has stored.
pub struct TraceBytes {
    max: u64,
    traces: Mutex<HashMap<TraceId, (u64, Instant)>>,
}

/// Bytes a call to [`TraceBytes::admit`] counted, given back if the export is not stored.
#[derive(Default)]
pub struct Charged(HashMap<TraceId, u64>);

impl TraceBytes {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(TraceBytes {
            max,
            traces: Mutex::new(HashMap::new()),
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.traces.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Counts each span's bytes (`sizes[i]`, as [`span_bytes`] counts them) to its trace;
    /// returns which spans fit (in order), what was counted, and how many traces are tracked now.
    pub fn admit(&self, spans: &[Span], sizes: &[usize]) -> (Vec<bool>, Charged, usize) {
        if self.max == 0 {
            return (vec![true; spans.len()], Charged::default(), 0);
        }
        let now = Instant::now();
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        let mut charged: HashMap<TraceId, u64> = HashMap::new();
        let fits = spans
            .iter()
            .zip(sizes)
            .map(|(span, &n)| {
                let n = n as u64;
                if traces.len() >= MAX_TRACKED_TRACES && !traces.contains_key(&span.trace_id) {
                    forget_oldest(&mut traces, now);
                }
                let (held, seen) = traces.entry(span.trace_id).or_insert((0, now));
                *seen = now;
                if *held + n > self.max {
                    return false;
                }
                *held += n;
                *charged.entry(span.trace_id).or_default() += n;
                true
            })
            .collect();
        (fits, Charged(charged), traces.len())
    }

    /// Gives back what `admit` counted for an export that was not stored (a retry comes).
    pub fn release(&self, charged: Charged) {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        for (trace, n) in charged.0 {
            if let Some((held, _)) = traces.get_mut(&trace) {
                *held = held.saturating_sub(n);
            }
        }
    }
}

/// Forgets traces idle longer than [`TRACE_IDLE`]; if that frees too little, the longest idle
/// tenth.
fn forget_oldest(traces: &mut HashMap<TraceId, (u64, Instant)>, now: Instant) {
    traces.retain(|_, (_, seen)| now.duration_since(*seen) < TRACE_IDLE);
    if traces.len() < MAX_TRACKED_TRACES * 9 / 10 {
        return;
    }
    let mut seen: Vec<Instant> = traces.values().map(|(_, s)| *s).collect();
    let tenth = seen.len() / 10;
    let (_, cutoff, _) = seen.select_nth_unstable(tenth);
    let cutoff = *cutoff;
    traces.retain(|_, (_, s)| *s > cutoff);
}

/// Cuts each span to the limits and each distinct resource too (a resource is copied once however
/// many spans share it, and only if it is over a limit).
pub fn cut_spans(spans: &mut [Span], limits: &SpanLimits) -> Cut {
    let mut cut = Cut::default();
    let mut resources: HashMap<usize, Arc<Resource>> = HashMap::new();
    for span in spans {
        limits.apply(span, &mut cut);
        let key = Arc::as_ptr(&span.resource) as usize;
        let resource = resources.entry(key).or_insert_with(|| {
            if limits.fits(&span.resource.attributes) {
                return span.resource.clone();
            }
            let mut attributes = span.resource.attributes.clone();
            limits.attributes(&mut attributes, &mut cut);
            Arc::new(Resource::new(attributes))
        });
        span.resource = resource.clone();
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_topology::span_bytes;
    use meshlens_topology::testing::SpanBuilder;

    fn admit(bytes: &TraceBytes, spans: &[Span]) -> (Vec<bool>, Charged, usize) {
        let sizes: Vec<usize> = spans.iter().map(span_bytes).collect();
        bytes.admit(spans, &sizes)
    }

    fn span(trace: u64, id: u64, blob: usize) -> Span {
        SpanBuilder::new(trace, id, "svc", "op", 1_000)
            .attr("blob", "x".repeat(blob))
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn a_trace_past_its_bytes_is_refused_and_a_refused_export_gives_them_back() {
        let one = span_bytes(&span(1, 1, 1000)) as u64;
        let bytes = TraceBytes::new(one * 3);
        let (fits, _, tracked) = admit(
            &bytes,
            &[span(1, 1, 1000), span(1, 2, 1000), span(2, 1, 1000)],
        );
        assert_eq!((fits, tracked), (vec![true, true, true], 2));
        let (fits, charged, _) = admit(
            &bytes,
            &[span(1, 3, 1000), span(1, 4, 1000), span(2, 2, 10)],
        );
        assert_eq!(fits, vec![true, false, true], "trace 1 is full at three");
        // That export was not stored: its bytes come back, and its retry fits again.
        bytes.release(charged);
        let (fits, _, _) = admit(&bytes, &[span(1, 3, 1000)]);
        assert_eq!(fits, vec![true]);
        // A trace idle long enough is forgotten once the table is full.
        assert_eq!(bytes.tracked(), 2);
        tokio::time::advance(TRACE_IDLE).await;
        let mut traces = bytes.traces.lock().unwrap();
        forget_oldest(&mut traces, Instant::now());
        assert!(traces.is_empty());
    }

    #[test]
    fn no_limit_means_every_span_fits() {
        let bytes = TraceBytes::new(0);
        let (fits, _, _) = admit(&bytes, &[span(1, 1, 100_000), span(1, 2, 100_000)]);
        assert_eq!(fits, vec![true, true]);
        assert_eq!(bytes.tracked(), 0);
    }

    #[test]
    fn resources_over_the_limits_are_cut_once() {
        let limits = SpanLimits {
            max_value_bytes: 8,
            ..SpanLimits::default()
        };
        let long = meshlens_topology::testing::resource("a-very-long-service-name", None);
        let fine = meshlens_topology::testing::resource("svc", None);
        let mut spans: Vec<Span> = (1..=3)
            .map(|i| {
                SpanBuilder::new(1, i, "x", "op", 1_000)
                    .resource(if i < 3 { long.clone() } else { fine.clone() })
                    .build()
            })
            .collect();
        let cut = cut_spans(&mut spans, &limits);
        assert_eq!(spans[0].service(), "a-very-l");
        assert!(
            Arc::ptr_eq(&spans[0].resource, &spans[1].resource),
            "copied once"
        );
        assert!(Arc::ptr_eq(&spans[2].resource, &fine), "left as it was");
        assert!(cut.values >= 1);
    }
}
