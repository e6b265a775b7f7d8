//! Statistics over sliding windows (1m, 5m, 15m, 1h). Each edge keeps time slots (10 s slots for
//! the last 5 minutes, 1-minute slots for the last hour) and one running total per window: an
//! observation is added to its slots and to every total, and a slot is subtracted from a total
//! when it leaves that window. Reading a window is then a lookup, whatever its length.
//!
//! Observations are first added to one pending `Stats` of the current 10 s slot; `advance` folds
//! it into the slots and totals (once per slot, or when a reader asks), so each observation
//! costs one update rather than six.

use std::collections::VecDeque;

use crate::graph::packed::Packed;
use crate::graph::pairing::EdgeObservation;
use crate::graph::sketch::{key_of, LatencySketch};

/// A sliding window the graph keeps live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    M1,
    M5,
    M15,
    H1,
}

const FINE_SLOT_NS: u64 = 10_000_000_000;
const COARSE_SLOT_NS: u64 = 60_000_000_000;

impl Window {
    pub const ALL: [Window; 4] = [Window::M1, Window::M5, Window::M15, Window::H1];

    pub fn seconds(self) -> u64 {
        match self {
            Window::M1 => 60,
            Window::M5 => 300,
            Window::M15 => 900,
            Window::H1 => 3600,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::M1 => "1m",
            Window::M5 => "5m",
            Window::M15 => "15m",
            Window::H1 => "1h",
        }
    }

    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }

    /// The slot width this window is kept in, and how many slots it spans.
    fn slots(self) -> (u64, i64) {
        let width = if self <= Window::M5 {
            FINE_SLOT_NS
        } else {
            COARSE_SLOT_NS
        };
        (width, (self.seconds() * 1_000_000_000 / width) as i64)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many calls, and how they went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Failed calls (status ERROR, HTTP ≥ 500, non-OK gRPC), each counted once.
    pub failures: u64,
    pub http_4xx: u64,
    pub http_5xx: u64,
    /// Calls with a non-OK gRPC status.
    pub grpc_errors: u64,
    /// Envoy: denied by ext_authz (`UAEX`), rate limited (`RL`), circuit-breaker overflow (`UO`).
    pub denied: u64,
    pub rate_limited: u64,
    pub overflows: u64,
    pub bytes: u64,
    /// Retries and outlier ejections, which only proxies' metrics report.
    pub retries: u64,
    pub ejections: u64,
    /// Requests over mutual TLS, of `tls_known` whose connection security was reported (Istio's
    /// `connection_security_policy`).
    pub mtls: u64,
    pub tls_known: u64,
    /// TCP edges (Istio's `istio_tcp_*`): bytes the server sent back (Istio's "sent") and bytes
    /// it received, connections opened and closed.
    pub tcp_sent_bytes: u64,
    pub tcp_received_bytes: u64,
    pub tcp_opened: u64,
    pub tcp_closed: u64,
    /// Calls by Envoy's response flags (Istio's `response_flags`): why a proxy failed or cut a
    /// call short.
    pub flags: FlagCounts,
}

/// Envoy's response flags counted by name: no healthy upstream, upstream connection failure,
/// upstream connection termination, upstream reset, retry limit exceeded, upstream timeout, no
/// route, no cluster, downstream connection termination, local reset, stream idle timeout, fault
/// injected. The flags with counts of their own (`UAEX` denied, `RL`/`RLSE` rate limited, `UO`
/// overflow) are not repeated; any other flag counts as `other`.
pub const RESPONSE_FLAGS: [&str; 12] = [
    "UH", "UF", "UC", "UR", "URX", "UT", "NR", "NC", "DC", "LR", "SI", "FI",
];
const FLAG_SLOTS: usize = RESPONSE_FLAGS.len() + 1;

/// The flags of one response as bits: bit `i` is `RESPONSE_FLAGS[i]`, the last bit any other.
/// Envoy writes `-` for none, and several joined by commas.
pub fn flag_bits(flags: &str) -> u16 {
    let mut bits = 0u16;
    for f in flags.split(',').map(str::trim) {
        if matches!(f, "" | "-" | "UAEX" | "RL" | "RLSE" | "UO") {
            continue;
        }
        let i = RESPONSE_FLAGS
            .iter()
            .position(|k| *k == f)
            .unwrap_or(RESPONSE_FLAGS.len());
        bits |= 1 << i;
    }
    bits
}

/// Calls by response flag (`RESPONSE_FLAGS`, then `other`); small, since every slot has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagCounts(pub [u32; FLAG_SLOTS]);

impl FlagCounts {
    /// Adds `n` calls with these flags (`flag_bits`).
    pub fn add_bits(&mut self, bits: u16, n: u64) {
        let n = n.min(u64::from(u32::MAX)) as u32;
        for (i, c) in self.0.iter_mut().enumerate() {
            if bits & (1 << i) != 0 {
                *c = c.saturating_add(n);
            }
        }
    }

    /// The flags seen, by name (`other` last), with their calls.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RESPONSE_FLAGS
            .iter()
            .copied()
            .chain(["other"])
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k, u64::from(n)))
    }
}

/// How many numbers a stored `Counts` has.
pub const COUNTS_LEN: usize = 17 + FLAG_SLOTS;

impl Counts {
    pub fn record(&mut self, o: &EdgeObservation) {
        let status = o.outcome.http_status.unwrap_or(0);
        self.requests += 1;
        self.failures += o.failed() as u64;
        self.http_4xx += (400..500).contains(&status) as u64;
        self.http_5xx += (status >= 500) as u64;
        self.grpc_errors += o.outcome.grpc_status.is_some_and(|c| c != 0) as u64;
        self.denied += o.outcome.denied as u64;
        self.rate_limited += o.outcome.rate_limited as u64;
        self.overflows += o.outcome.overflow as u64;
        self.bytes += o.bytes;
        self.flags.add_bits(o.outcome.flags, 1);
    }

    /// The counts in a fixed order (for storage).
    pub fn to_array(self) -> [u64; COUNTS_LEN] {
        let head = [
            self.requests,
            self.failures,
            self.http_4xx,
            self.http_5xx,
            self.grpc_errors,
            self.denied,
            self.rate_limited,
            self.overflows,
            self.bytes,
            self.retries,
            self.ejections,
            self.mtls,
            self.tls_known,
            self.tcp_sent_bytes,
            self.tcp_received_bytes,
            self.tcp_opened,
            self.tcp_closed,
        ];
        std::array::from_fn(|i| match head.get(i) {
            Some(v) => *v,
            None => u64::from(self.flags.0[i - head.len()]),
        })
    }

    pub fn from_array(a: [u64; COUNTS_LEN]) -> Counts {
        let [requests, failures, http_4xx, http_5xx, grpc_errors, denied, rate_limited, overflows, bytes, retries, ejections, mtls, tls_known, tcp_sent_bytes, tcp_received_bytes, tcp_opened, tcp_closed, ..] =
            a;
        let flags = FlagCounts(std::array::from_fn(|i| {
            a[17 + i].min(u64::from(u32::MAX)) as u32
        }));
        Counts {
            requests,
            failures,
            http_4xx,
            http_5xx,
            grpc_errors,
            denied,
            rate_limited,
            overflows,
            bytes,
            retries,
            ejections,
            mtls,
            tls_known,
            tcp_sent_bytes,
            tcp_received_bytes,
            tcp_opened,
            tcp_closed,
            flags,
        }
    }

    fn combine(&mut self, other: &Counts, f: impl Fn(u64, u64) -> u64) {
        let (mine, theirs) = (self.to_array(), other.to_array());
        *self = Counts::from_array(std::array::from_fn(|i| f(mine[i], theirs[i])));
    }

    pub fn add(&mut self, other: &Counts) {
        self.combine(other, u64::saturating_add);
    }

    pub fn subtract(&mut self, other: &Counts) {
        self.combine(other, u64::saturating_sub);
    }
}

/// The policy server's refusals on an edge: two counters, kept small since every slot has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    pub denied: u64,
    pub rate_limited: u64,
}

impl PolicyCounts {
    pub fn add(&mut self, o: &PolicyCounts) {
        self.denied += o.denied;
        self.rate_limited += o.rate_limited;
    }

    pub fn subtract(&mut self, o: &PolicyCounts) {
        self.denied = self.denied.saturating_sub(o.denied);
        self.rate_limited = self.rate_limited.saturating_sub(o.rate_limited);
    }
}

/// Counts and latencies of calls on one edge over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls counted from spans.
    pub counts: Counts,
    /// Calls counted by the proxies' metrics (unsampled, so they win where present).
    pub metric_counts: Counts,
    /// Denials and rate limits decided by meshlens' policy server for this edge.
    pub policy_counts: PolicyCounts,
    pub server_latency: LatencySketch,
    pub client_latency: LatencySketch,
    /// Latencies from proxies' histograms (Istio's request duration, Envoy's upstream request
    /// time): coarse, within the proxy's bucket, so used only where spans are few
    /// ([`latency_from`]).
    pub metric_latency: LatencySketch,
}

/// An observation's latency buckets, computed once for every slot and total it goes into.
#[derive(Clone, Copy)]
struct Keys {
    server: Option<i16>,
    client: Option<i16>,
}

impl Keys {
    fn of(o: &EdgeObservation) -> Keys {
        Keys {
            server: o.server_latency_ns.map(key_of),
            client: o.client_latency_ns.map(key_of),
        }
    }
}

impl Stats {
    pub fn record(&mut self, o: &EdgeObservation) {
        self.record_keyed(o, Keys::of(o));
    }

    fn record_keyed(&mut self, o: &EdgeObservation, keys: Keys) {
        self.counts.record(o);
        if let Some(k) = keys.server {
            self.server_latency.add_key(k, 1);
        }
        if let Some(k) = keys.client {
            self.client_latency.add_key(k, 1);
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.counts.add(&other.counts);
        self.metric_counts.add(&other.metric_counts);
        self.policy_counts.add(&other.policy_counts);
        self.server_latency.merge(&other.server_latency);
        self.client_latency.merge(&other.client_latency);
        self.metric_latency.merge(&other.metric_latency);
    }

    /// Takes out what `other` added before (a slot leaving a window).
    pub fn subtract(&mut self, other: &Stats) {
        self.counts.subtract(&other.counts);
        self.metric_counts.subtract(&other.metric_counts);
        self.policy_counts.subtract(&other.policy_counts);
        self.server_latency.subtract(&other.server_latency);
        self.client_latency.subtract(&other.client_latency);
        self.metric_latency.subtract(&other.metric_latency);
    }

    /// The latency to show for this edge and where it comes from (see [`latency_from`]).
    pub fn latency(&self) -> (&LatencySketch, Option<LatencyFrom>) {
        let from = latency_from(
            self.server_latency.count(),
            self.client_latency.count(),
            self.metric_latency.count(),
        );
        let sketch = match from {
            Some(LatencyFrom::ServerSpans) => &self.server_latency,
            Some(LatencyFrom::ClientSpans) => &self.client_latency,
            _ => &self.metric_latency,
        };
        (sketch, from)
    }

    pub fn heap_bytes(&self) -> usize {
        self.server_latency.heap_bytes()
            + self.client_latency.heap_bytes()
            + self.metric_latency.heap_bytes()
    }
}

/// One edge's slots and window totals. Slots are kept packed ([`Packed`]): a slot is written
/// while it is current (through `pending`) and read only when it leaves a window or goes to the
/// history.
#[derive(Debug, Clone, Default)]
pub struct Series {
    fine: VecDeque<(i64, Packed)>,
    coarse: VecDeque<(i64, Packed)>,
    /// Boxed: the edge map's table holds a slot per edge and more, each the size of a `Series`.
    totals: Box<[Stats; 4]>,
    /// Per window, the oldest slot still counted in its total.
    counted_from: [i64; 4],
    now_ns: u64,
    last_seen_ns: u64,
    /// What was recorded since the last fold, all in one fine slot, not yet in `fine`, `coarse`
    /// or `totals`. Boxed: an edge is read far more often than it is folded, and most of the
    /// graph's edges are idle.
    pending: Option<Box<(i64, Stats)>>,
}

/// Adds a slot; the first one alone in its buffer (a `VecDeque` would make room for four), since
/// most edges of a large graph see a call now and then, not one in every slot.
fn push_slot(ring: &mut VecDeque<(i64, Packed)>, slot: (i64, Packed)) {
    if ring.capacity() == 0 {
        ring.reserve_exact(1);
    }
    ring.push_back(slot);
}

fn slot_of(now_ns: u64, width: u64) -> i64 {
    (now_ns / width) as i64
}

impl Series {
    pub fn record(&mut self, o: &EdgeObservation, now_ns: u64) {
        let keys = Keys::of(o);
        self.each_current(now_ns, |stats| stats.record_keyed(o, keys));
    }

    /// Adds increments counted by a proxy's metrics, and the latencies of its histograms.
    pub fn record_metric(&mut self, counts: &Counts, latency: Option<&LatencySketch>, now_ns: u64) {
        self.each_current(now_ns, |stats| {
            stats.metric_counts.add(counts);
            if let Some(l) = latency {
                stats.metric_latency.merge(l);
            }
        });
    }

    /// Adds denials and rate limits decided by the policy server.
    pub fn record_policy(&mut self, counts: &PolicyCounts, now_ns: u64) {
        self.each_current(now_ns, |stats| stats.policy_counts.add(counts));
    }

    /// Applies `f` to the pending statistics of the current fine slot (folded into the slots and
    /// totals by the next `advance`).
    fn each_current(&mut self, now_ns: u64, f: impl Fn(&mut Stats)) {
        let slot = slot_of(self.now_ns.max(now_ns), FINE_SLOT_NS);
        if self.pending.as_ref().is_some_and(|p| p.0 == slot) {
            self.now_ns = self.now_ns.max(now_ns);
        } else {
            self.advance(now_ns);
        }
        self.last_seen_ns = self.now_ns;
        let (_, stats) = &mut **self
            .pending
            .get_or_insert_with(|| Box::new((slot, Stats::default())));
        f(stats);
    }

    /// Adds the pending statistics to their fine and coarse slots and to every window total, as
    /// of the time they were recorded (their slot is then the newest of every window).
    fn fold_pending(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let (slot, pending) = *pending;
        let coarse = slot_of(slot as u64 * FINE_SLOT_NS, COARSE_SLOT_NS);
        for total in self.totals.iter_mut() {
            total.merge(&pending);
        }
        match self.coarse.back_mut() {
            Some((s, stats)) if *s == coarse => stats.merge(&pending),
            _ => push_slot(&mut self.coarse, (coarse, Packed::pack(&pending))),
        }
        match self.fine.back_mut() {
            Some((s, stats)) if *s == slot => stats.merge(&pending),
            _ => push_slot(&mut self.fine, (slot, Packed::pack(&pending))),
        }
    }

    /// Moves the windows to `now_ns`: slots that left a window are taken out of its total, and
    /// slots older than every window are dropped. Time never goes back. What was recorded since
    /// the last call is folded in first.
    pub fn advance(&mut self, now_ns: u64) {
        self.fold_pending();
        self.now_ns = self.now_ns.max(now_ns);
        for w in Window::ALL {
            let (width, n) = w.slots();
            let ring = if width == FINE_SLOT_NS {
                &self.fine
            } else {
                &self.coarse
            };
            let lowest = slot_of(self.now_ns, width) - n + 1;
            let from = &mut self.counted_from[w.index()];
            for (slot, stats) in ring {
                if *slot >= lowest {
                    break;
                }
                if *slot >= *from {
                    self.totals[w.index()].subtract(&stats.unpack());
                }
            }
            *from = (*from).max(lowest);
        }
        let fine_lowest = slot_of(self.now_ns, FINE_SLOT_NS) - Window::M5.slots().1 + 1;
        while self.fine.front().is_some_and(|(s, _)| *s < fine_lowest) {
            self.fine.pop_front();
        }
        let coarse_lowest = slot_of(self.now_ns, COARSE_SLOT_NS) - Window::H1.slots().1 + 1;
        while self.coarse.front().is_some_and(|(s, _)| *s < coarse_lowest) {
            self.coarse.pop_front();
        }
        // An idle edge keeps no slot buffers (it may stay idle for up to an hour).
        for ring in [&mut self.fine, &mut self.coarse] {
            if ring.is_empty() && ring.capacity() > 0 {
                *ring = VecDeque::new();
            }
        }
    }

    /// The window's statistics as of the last `advance` (what was recorded since is not in them).
    pub fn window(&self, w: Window) -> &Stats {
        &self.totals[w.index()]
    }

    /// When this edge last carried a call.
    pub fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    /// Whole minutes after `after` that have ended, oldest first, for the per-minute history
    /// (unix minutes). Only those are unpacked.
    pub fn minutes(&self, after: i64) -> impl Iterator<Item = (i64, Stats)> + '_ {
        let current = slot_of(self.now_ns, COARSE_SLOT_NS);
        self.coarse
            .iter()
            .filter(move |(m, _)| *m > after && *m < current)
            .map(|(m, s)| (*m, s.unpack()))
    }

    /// Approximate bytes this series holds, for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(i64, Packed)>();
        let rings = (self.fine.capacity() + self.coarse.capacity()) * slot;
        let totals = std::mem::size_of::<[Stats; 4]>();
        let sketches: usize = self
            .fine
            .iter()
            .chain(&self.coarse)
            .map(|(_, s)| s.heap_bytes())
            .chain(self.totals.iter().map(Stats::heap_bytes))
            .chain(
                self.pending
                    .iter()
                    .map(|p| p.1.heap_bytes() + std::mem::size_of::<(i64, Stats)>()),
            )
            .sum();
        std::mem::size_of::<Self>() + rings + totals + sketches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_flags_count_by_name_and_survive_storage() {
        assert_eq!(flag_bits("-"), 0);
        assert_eq!(flag_bits("UAEX"), 0, "denied has a count of its own");
        assert_eq!(flag_bits("UF,URX"), 0b10010);
        let mut c = Counts::default();
        c.flags.add_bits(flag_bits("UF,URX"), 3);
        c.flags.add_bits(flag_bits("NR"), 1);
        c.flags.add_bits(flag_bits("DPE"), 2);
        let seen: Vec<_> = c.flags.iter().collect();
        assert_eq!(seen, [("UF", 3), ("URX", 3), ("NR", 1), ("other", 2)]);
        c.requests = 9;
        assert_eq!(Counts::from_array(c.to_array()), c);
        let mut twice = c;
        twice.add(&c);
        twice.subtract(&c);
        assert_eq!(twice, c);
    }

    #[test]
    fn latencies_come_from_spans_unless_sampling_left_them_few() {
        let sketch = |ms: u64, n: usize| {
            let mut s = LatencySketch::new();
            (0..n).for_each(|_| s.record_ns(ms * 1_000_000));
            s
        };
        // Istio traces 1%: one span of a hundred calls stands for nothing; the histograms do.
        let sampled = Stats {
            server_latency: sketch(2, 1),
            metric_latency: sketch(40, 100),
            ..Stats::default()
        };
        let (l, from) = sampled.latency();
        assert_eq!(from, Some(LatencyFrom::Metrics));
        assert_eq!(l.count(), 100);
        // Every call traced: the exact span latencies stand.
        let traced = Stats {
            server_latency: sketch(2, 100),
            client_latency: sketch(3, 100),
            metric_latency: sketch(40, 100),
            ..Stats::default()
        };
        assert_eq!(traced.latency().1, Some(LatencyFrom::ServerSpans));
        assert_eq!(latency_from(0, 60, 100), Some(LatencyFrom::ClientSpans));
        assert_eq!(latency_from(0, 49, 100), Some(LatencyFrom::Metrics));
        assert_eq!(latency_from(5, 0, 0), Some(LatencyFrom::ServerSpans));
        assert_eq!(latency_from(0, 0, 0), None);
        assert_eq!(LatencyFrom::ClientSpans.as_str(), "spans");
    }

    use crate::graph::node::{ConnectionType, EdgeKey, Endpoint, NodeKey};
    use crate::graph::side::Outcome;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn obs(latency_ns: u64, failed: bool) -> EdgeObservation {
        let end = |n| Endpoint {
            node: NodeKey::service(None, n),
            version: None,
        };
        EdgeObservation {
            key: EdgeKey {
                client: end("a"),
                server: end("b"),
                connection: ConnectionType::Http,
            },
            outcome: Outcome {
                http_status: Some(if failed { 503 } else { 200 }),
                ..Outcome::default()
            },
            server_latency_ns: Some(latency_ns),
            client_latency_ns: Some(latency_ns + 1000),
            bytes: 10,
        }
    }

    #[test]
    fn windows_forget_what_left_them() {
        let mut s = Series::default();
        let t0 = 1_000_000 * S;
        s.record(&obs(1_000_000, false), t0);
        s.record(&obs(2_000_000, true), t0 + 30 * S);
        assert_eq!(
            s.window(Window::M1).counts.requests,
            1,
            "the second call is pending until the next advance"
        );
        s.advance(t0 + 30 * S);
        assert_eq!(s.window(Window::M1).counts.requests, 2);
        assert_eq!(s.window(Window::M1).counts.http_5xx, 1);
        s.advance(t0 + 80 * S);
        assert_eq!(
            s.window(Window::M1).counts.requests,
            1,
            "the first call left the minute"
        );
        assert_eq!(s.window(Window::M5).counts.requests, 2);
        s.advance(t0 + 400 * S);
        assert_eq!(s.window(Window::M1).counts.requests, 0);
        assert!(s.window(Window::M1).server_latency.is_empty());
        assert_eq!(s.window(Window::M5).counts.requests, 0);
        assert_eq!(s.window(Window::M15).counts.requests, 2);
        s.advance(t0 + 3700 * S);
        assert_eq!(s.window(Window::H1), &Stats::default());
        assert!(s.heap_bytes() < 4096);
    }

    proptest! {
        /// The running totals always equal a recount of the observations inside each window.
        #[test]
        /// Readers may advance at any point (folding what is pending) without changing a total.
        #[test]
        fn totals_match_a_recount(steps in prop::collection::vec((0u64..200, 1u64..5_000_000, any::<bool>()), 1..60)) {
            let mut s = Series::default();
            let mut now = 7_000 * S;
            let mut seen: Vec<(u64, u64)> = Vec::new();
            for (gap_s, latency, read) in steps {
                now += gap_s * S;
                s.record(&obs(latency, false), now);
                seen.push((now, latency));
                if read {
                    s.advance(now);
                }
            }
            s.advance(now);
            let minutes: Vec<(i64, u64)> = s.minutes(i64::MIN).map(|(m, st)| (m, st.counts.requests)).collect();
            let current = slot_of(now, COARSE_SLOT_NS);
            for (m, n) in &minutes {
                let want = seen.iter().filter(|(t, _)| slot_of(*t, COARSE_SLOT_NS) == *m).count() as u64;
                prop_assert_eq!(*n, want, "minute {}", m);
                prop_assert!(*m < current && *m > current - 60);
            }
            for w in Window::ALL {
                let (width, n) = w.slots();
                let lowest = slot_of(now, width) - n + 1;
                let mut want = Stats::default();
                for (t, latency) in &seen {
                    if slot_of(*t, width) >= lowest {
                        want.record(&obs(*latency, false));
                    }
                }
                prop_assert_eq!(s.window(w), &want, "window {}", w.as_str());
            }
        }
    }
}

/// Where an edge's latency comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyFrom {
    /// The callee's spans (what it spent).
    ServerSpans,
    /// The caller's spans (virtual nodes have only that side).
    ClientSpans,
    /// The proxies' histograms (coarse: each bucket's values at its middle).
    Metrics,
}

impl LatencyFrom {
    /// As `/api/graph` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyFrom::ServerSpans | LatencyFrom::ClientSpans => "spans",
            LatencyFrom::Metrics => "metrics",
        }
    }
}

/// Which latencies to show, given how many calls each source measured: spans (the server's,
/// else the client's) are exact, so they stand where they saw at least half the calls the
/// proxies' histograms did; where spans are sampled (Istio traces 1% of calls by default) the
/// histograms, which see every call, stand instead.
pub fn latency_from(server: u64, client: u64, metric: u64) -> Option<LatencyFrom> {
    let (spans, side) = if server > 0 {
        (server, LatencyFrom::ServerSpans)
    } else {
        (client, LatencyFrom::ClientSpans)
    };
    if metric > 0 && spans.saturating_mul(2) < metric {
        Some(LatencyFrom::Metrics)
    } else if spans > 0 {
        Some(side)
    } else {
        None
    }
}
