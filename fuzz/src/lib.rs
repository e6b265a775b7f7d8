//! Every decoder of untrusted input as a fuzz target: a function from bytes that must return,
//! whatever the bytes. `fuzz/corpus/<target>/` holds each one's seeds, made from real fixtures
//! (`cargo run -p meshlens-fuzz --example seeds`); `fuzz/regressions/<target>/` the inputs that
//! once crashed one. `tests/corpus_replay.rs` runs both on every test run; `scripts/fuzz.sh`
//! fuzzes each target with AFL++ for a bounded time.

/// A fuzz target: its name (its corpus directory) and what it runs.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("otlp_traces", meshlens_collector::fuzzing::otlp_traces),
    ("otlp_metrics", meshlens_collector::fuzzing::otlp_metrics),
    ("zipkin", meshlens_collector::fuzzing::zipkin),
    ("remote_write", meshlens_collector::fuzzing::remote_write),
    ("ext_authz", meshlens_collector::fuzzing::ext_authz),
    ("rate_limit", meshlens_collector::fuzzing::rate_limit),
    ("ratelimit_yaml", ratelimit_yaml),
    ("policy_yaml", policy_yaml),
    ("stored_span", meshlens_storage::fuzzing::stored_span),
    ("span_block", meshlens_storage::fuzzing::span_block),
    ("edge_minute", meshlens_storage::fuzzing::edge_minute),
    ("web_query", meshlens_web::fuzzing::query_parsers),
];

/// The target of this name.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// An envoyproxy/ratelimit config file.
fn ratelimit_yaml(data: &[u8]) {
    let _ = meshlens_policy::ratelimit::config::DomainFile::parse(&String::from_utf8_lossy(data));
}

/// A policy (rules and quotas) file.
fn policy_yaml(data: &[u8]) {
    let _ = meshlens_policy::authz::AuthzPolicy::parse(&String::from_utf8_lossy(data));
}
