//! What one policy check costs meshlens in process: the ext_authz `Check` and `ShouldRateLimit`
//! handlers called directly (no HTTP/2, no protobuf decoding; the time includes freeing the
//! request and the response), with the configs of `scripts/bench-policy.sh` (`loadgen/bench/`)
//! and the requests of `meshlens-checkgen` (`meshlens_loadgen::requests`): three rules and a
//! quota keyed by source and user; one rate limit descriptor; 1,000 users.
//!
//! Two figures per API, each the median of five rounds:
//! - warm: checks back to back, as in a tight loop (caches hold the handler's data);
//! - cold: 1 MiB of other memory is written between checks (outside the timing), as the server's
//!   HTTP/2 stack, the kernel and other processes do between two checks, so each check finds
//!   its data out of the CPU's private caches. This is closer to what the server's
//!   `meshlens_policy_check_duration_seconds` sees.
//!
//! `taskset -c 0 cargo run --release -p meshlens-collector --example policy_bench`

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use meshlens_collector::policy::authz::AuthzService;
use meshlens_collector::policy::ratelimit::RlsService;
use meshlens_collector::policy::PolicyServer;
use meshlens_collector::Metrics;
use meshlens_loadgen::requests;
use meshlens_policy::{PolicyEngine, PolicySettings};

/// The server's allocator, so that allocation costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 1000;
const WARM_CHECKS: usize = 50_000;
const COLD_CHECKS: usize = 3_000;
const ROUNDS: usize = 5;

fn check_request(i: usize) -> CheckRequest {
    let shape = requests::CheckShape {
        method: "GET",
        path: "/api/orders",
        envoy: false,
    };
    requests::check_request(&shape, i % USERS)
}

fn rls_request(i: usize) -> RateLimitRequest {
    requests::rls_request("bench", i % USERS)
}

/// The benchmark's own configs, as `scripts/bench-policy.sh` serves them.
fn server() -> Arc<PolicyServer> {
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadgen/bench");
    let engine = PolicyEngine::new(PolicySettings {
        ratelimit_dir: Some(conf.join("ratelimit")),
        policy_files: vec![conf.join("policy.yaml")],
        ..Default::default()
    })
    .expect("the configs load");
    PolicyServer::new(Arc::new(engine), Metrics::new(), 1_000)
}

/// Writes every cache line of `buf`, evicting the checks' data from the private caches.
fn evict(buf: &mut [u8], round: u8) {
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(round);
    }
    std::hint::black_box(&buf);
}

/// Nanoseconds per check: warm (total over a tight loop) and cold (median and p99 of checks
/// timed one by one with the caches evicted before each).
async fn measure<R, F, Fut>(make: fn(usize) -> R, call: F) -> (f64, f64, f64)
where
    F: Fn(R) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut warm = Vec::new();
    let mut cold_p50 = Vec::new();
    let mut cold_p99 = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for round in 0..ROUNDS {
        let requests: Vec<R> = (0..WARM_CHECKS).map(make).collect();
        let started = Instant::now();
        let mut ok = 0;
        for r in requests {
            ok += usize::from(call(r).await);
        }
        warm.push(started.elapsed().as_nanos() as f64 / WARM_CHECKS as f64);
        assert_eq!(ok, WARM_CHECKS, "every check allowed");

        let requests: Vec<R> = (0..COLD_CHECKS).map(make).collect();
        let mut times = Vec::with_capacity(COLD_CHECKS);
        for r in requests {
            evict(&mut buf, round as u8);
            let started = Instant::now();
            let allowed = call(r).await;
            times.push(started.elapsed());
            assert!(allowed, "every check allowed");
        }
        times.sort_unstable();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        cold_p50.push(at(0.5).as_nanos() as f64);
        cold_p99.push(at(0.99).as_nanos() as f64);
    }
    (median(warm), median(cold_p50), median(cold_p99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let s = server();
    let authz = AuthzService::new(s.clone());
    let rls = RlsService::new(s.clone());
    println!("# policy_bench: ns per check, median of {ROUNDS} rounds ({WARM_CHECKS} warm checks, {COLD_CHECKS} cold)");
    let (warm, p50, p99) = measure(check_request, |r| async {
        let resp = authz.check(tonic::Request::new(r)).await;
        resp.is_ok_and(|r| r.get_ref().status.as_ref().is_some_and(|s| s.code == 0))
    })
    .await;
    println!("api=ext_authz warm_ns={warm:.0} cold_p50_ns={p50:.0} cold_p99_ns={p99:.0}");
    let (warm, p50, p99) = measure(rls_request, |r| async {
        let resp = rls.should_rate_limit(tonic::Request::new(r)).await;
        resp.is_ok_and(|r| r.get_ref().overall_code == 1)
    })
    .await;
    println!("api=ratelimit warm_ns={warm:.0} cold_p50_ns={p50:.0} cold_p99_ns={p99:.0}");
}
