//! Pairs each client span with the server span it called, whichever arrives first, and turns the
//! pair into one observation of an edge. Spans wait in a bounded store with a time to live; what
//! never pairs becomes an edge to a virtual node where the client names its peer, and is counted
//! otherwise. Nothing leaves the store uncounted.

use hashlink::LinkedHashMap;

use crate::graph::node::{ConnectionType, EdgeKey, Endpoint, NodeKey};
use crate::graph::side::{Outcome, Role, SpanSide};
use crate::ids::{SpanId, TraceId};

/// How long and how many spans may wait for their other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingConfig {
    pub ttl_ns: u64,
    pub max_pending: usize,
}

/// Tempo's defaults are 10 s and 10,000; a mesh at 100,000 spans/s needs more room than that.
pub const DEFAULT_PAIRING_TTL_NS: u64 = 10_000_000_000;
pub const DEFAULT_MAX_PENDING: usize = 100_000;

impl Default for PairingConfig {
    fn default() -> Self {
        PairingConfig {
            ttl_ns: DEFAULT_PAIRING_TTL_NS,
            max_pending: DEFAULT_MAX_PENDING,
        }
    }
}

/// One call, seen from one or both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeObservation {
    pub key: EdgeKey,
    /// Both sides' outcomes together: failed if either side failed.
    pub outcome: Outcome,
    pub server_latency_ns: Option<u64>,
    pub client_latency_ns: Option<u64>,
    pub bytes: u64,
}

impl EdgeObservation {
    pub fn failed(&self) -> bool {
        self.outcome.failed()
    }
}

/// What became of the spans the store was given, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairingCounters {
    /// Client and server spans matched into one edge observation.
    pub paired: u64,
    /// Edges made from one side alone: roots (from `user`), databases, the policy server, and
    /// unpaired clients that name their peer.
    pub virtual_edges: u64,
    /// Spans whose time to live ran out before their other side came.
    pub expired: u64,
    /// Spans pushed out, oldest first, because the store was full.
    pub evicted: u64,
    /// Spans that ended without any edge: expired or evicted with no peer named, or a second span
    /// claiming a pairing key already taken.
    pub unpaired: u64,
}

type PairKey = (TraceId, SpanId);

/// The store of spans waiting for their other side, oldest first.
pub struct Pairer {
    config: PairingConfig,
    pending: LinkedHashMap<PairKey, (SpanSide, u64)>,
    counters: PairingCounters,
}

impl Pairer {
    pub fn new(config: PairingConfig) -> Self {
        Pairer {
            config,
            pending: LinkedHashMap::new(),
            counters: PairingCounters::default(),
        }
    }

    pub fn counters(&self) -> PairingCounters {
        self.counters
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one span side that arrived at `now_ns`; completed observations go to `out`.
    pub fn observe(&mut self, side: SpanSide, now_ns: u64, out: &mut Vec<EdgeObservation>) {
        let key = match side.role {
            Role::Client => {
                if side.peer.as_ref().is_some_and(|p| p.immediate) {
                    self.settle_alone(side, out);
                    return;
                }
                (side.trace_id, side.span_id)
            }
            Role::Server => match side.parent_span_id {
                None => {
                    self.settle_alone(side, out);
                    return;
                }
                Some(parent) => (side.trace_id, parent),
            },
        };
        match self.pending.get(&key).map(|(waiting, _)| waiting.role) {
            Some(role) if role != side.role => {
                if let Some((waiting, _)) = self.pending.remove(&key) {
                    self.counters.paired += 2 - waiting.inferred as u64 - side.inferred as u64;
                    out.push(pair(&waiting, &side));
                }
            }
            Some(_) => {
                // Two spans claim one key (a retried export, or two servers under one client):
                // the first keeps its place, the second is counted and goes.
                self.counters.unpaired += !side.inferred as u64;
            }
            None => {
                if self.pending.len() >= self.config.max_pending.max(1) {
                    if let Some((_, (oldest, _))) = self.pending.pop_front() {
                        if !oldest.inferred {
                            self.counters.evicted += 1;
                            self.settle_alone(oldest, out);
                        }
                    }
                }
                self.pending.insert(key, (side, now_ns));
            }
        }
    }

    /// Settles every span that has waited its time to live by `now_ns`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<EdgeObservation>) {
        while let Some((_, (_, arrived))) = self.pending.front() {
            if arrived.saturating_add(self.config.ttl_ns) > now_ns {
                break;
            }
            if let Some((_, (side, _))) = self.pending.pop_front() {
                // An inferred side is no span of its own: unmatched, it just goes.
                if !side.inferred {
                    self.counters.expired += 1;
                    self.settle_alone(side, out);
                }
            }
        }
    }

    /// Settles everything still waiting, as if its time had run out.
    pub fn flush(&mut self, out: &mut Vec<EdgeObservation>) {
        self.expire(u64::MAX, out);
    }

    /// A span that will have no other side: an edge if it says who its peer is, else counted.
    fn settle_alone(&mut self, side: SpanSide, out: &mut Vec<EdgeObservation>) {
        let observation = match (side.role, &side.peer, side.parent_span_id) {
            (Role::Client, Some(peer), _) => EdgeObservation {
                key: EdgeKey {
                    client: side.endpoint.clone(),
                    server: peer.endpoint.clone(),
                    connection: peer.connection,
                },
                outcome: side.outcome,
                server_latency_ns: None,
                client_latency_ns: Some(side.duration_ns),
                bytes: side.bytes,
            },
            (Role::Server, _, None) => EdgeObservation {
                key: EdgeKey {
                    client: Endpoint {
                        node: NodeKey::user(),
                        version: None,
                    },
                    server: side.endpoint.clone(),
                    connection: side.protocol.unwrap_or(ConnectionType::Http),
                },
                outcome: side.outcome,
                server_latency_ns: Some(side.duration_ns),
                client_latency_ns: None,
                bytes: side.bytes,
            },
            _ => {
                self.counters.unpaired += 1;
                return;
            }
        };
        self.counters.virtual_edges += 1;
        out.push(observation);
    }
}

/// The observation two matched sides make, whichever came first.
fn pair(a: &SpanSide, b: &SpanSide) -> EdgeObservation {
    let (client, server) = if a.role == Role::Client {
        (a, b)
    } else {
        (b, a)
    };
    let (c, s) = (client.outcome, server.outcome);
    EdgeObservation {
        key: EdgeKey {
            client: client.endpoint.clone(),
            server: server.endpoint.clone(),
            connection: client
                .protocol
                .or(server.protocol)
                .unwrap_or(ConnectionType::Http),
        },
        outcome: Outcome {
            error_status: c.error_status || s.error_status,
            // The server's word on the status wins: the client may have seen a proxy's answer.
            http_status: s.http_status.or(c.http_status),
            grpc_status: s.grpc_status.or(c.grpc_status),
            denied: c.denied || s.denied,
            rate_limited: c.rate_limited || s.rate_limited,
            overflow: c.overflow || s.overflow,
            flags: c.flags | s.flags,
        },
        server_latency_ns: Some(server.duration_ns),
        client_latency_ns: Some(client.duration_ns),
        bytes: client.bytes.max(server.bytes),
    }
}
