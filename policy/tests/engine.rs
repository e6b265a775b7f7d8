//! The engine against real files and the real Redis on 127.0.0.1:6379.

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use meshlens_policy::authz::{CheckAttributes, Verdict};
use meshlens_policy::quota::{QuotaBackend, QuotaHit, RedisConfig, RedisStore};
use meshlens_policy::ratelimit::{RateLimitRequest, RequestDescriptor};
use meshlens_policy::{
    Algorithm, Backend, FailureMode, PolicyEngine, PolicySettings, Rate, ReloadOutcome, Unit,
};

const RLS: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3}\n";

fn request(value: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "d".into(),
        descriptors: vec![RequestDescriptor {
            entries: vec![("k".into(), value.into())],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

fn redis(prefix: &str, url: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        key_prefix: prefix.into(),
        timeout: Duration::from_millis(200),
        local_cache_keys: 0,
        tls: Default::default(),
    }
}

/// A connection to the real Redis, and the keys under `prefix` there.
async fn redis_keys(prefix: &str) -> (redis::aio::MultiplexedConnection, Vec<String>) {
    let mut conn = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    (conn, keys)
}

/// A key prefix of its own, so runs never share counters.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("meshlens_test_{test}_{nanos}_")
}

#[tokio::test]
async fn a_bad_reload_keeps_the_previous_config_and_a_good_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let rl = dir.path().join("ratelimit");
    std::fs::create_dir(&rl).unwrap();
    std::fs::write(rl.join("d.yaml"), RLS).unwrap();
    let engine = PolicyEngine::new(PolicySettings {
        ratelimit_dir: Some(rl.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(engine.reload_if_changed(), ReloadOutcome::Unchanged);
    std::fs::write(
        rl.join("d.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: lightyear}\n",
    )
    .unwrap();
    match engine.reload_if_changed() {
        ReloadOutcome::Failed(e) => {
            assert!(e.file.ends_with("d.yaml"), "{e}");
            assert!(
                e.reason.contains("invalid rate limit unit 'lightyear'")
                    && e.reason.contains("line 3"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Not retried until the files change again; the old limits still apply.
    assert_eq!(engine.reload_if_changed(), ReloadOutcome::Unchanged);
    assert!(engine.last_error().is_some());
    let over = |n: usize| {
        let engine = &engine;
        async move {
            let mut last = false;
            for _ in 0..n {
                last = engine.rate_limit(&request("a")).await.decision.over_limit;
            }
            last
        }
    };
    meshlens_policy::testing::fresh_minute().await;
    assert!(!over(3).await && over(1).await, "3 per minute still holds");
    std::fs::write(rl.join("d.yaml"), RLS.replace("3}", "300}")).unwrap();
    assert_eq!(engine.reload_if_changed(), ReloadOutcome::Reloaded);
    assert!(engine.last_error().is_none());
    assert!(!over(10).await, "300 per minute now");
    // A new file is a change too.
    std::fs::write(rl.join("e.yaml"), "domain: e\n").unwrap();
    assert_eq!(engine.reload_if_changed(), ReloadOutcome::Reloaded);
    assert_eq!(engine.current().ratelimits.domains().count(), 2);
}

#[tokio::test]
async fn replicas_on_redis_share_one_quota_and_admit_what_memory_admits() {
    let prefix = unique_prefix("share");
    let a = RedisStore::new(&redis(&prefix, "redis://127.0.0.1:6379")).unwrap();
    let b = RedisStore::new(&redis(&prefix, "redis://127.0.0.1:6379")).unwrap();
    let (a, b) = (QuotaBackend::Redis(a), QuotaBackend::Redis(b));
    for algorithm in [Algorithm::FixedWindow, Algorithm::Gcra] {
        let rate = Rate {
            requests_per_unit: 10,
            unit: Unit::Hour,
            algorithm,
        };
        let hit = QuotaHit {
            key: "d_k_v",
            rate,
            hits: 1,
        };
        let memory = QuotaBackend::Memory(meshlens_policy::quota::MemoryStore::new(10));
        let (mut admitted, mut remaining) = (Vec::new(), Vec::new());
        let mut in_memory = Vec::new();
        for i in 0..16 {
            let store = if i % 2 == 0 { &a } else { &b };
            let u = store.charge(&[hit]).await.unwrap()[0];
            admitted.push(!u.over_limit);
            remaining.push(u.remaining);
            let m = memory.charge(&[hit]).await.unwrap()[0];
            in_memory.push((!m.over_limit, m.remaining));
        }
        assert_eq!(
            admitted.iter().filter(|a| **a).count(),
            10,
            "{algorithm:?}: two replicas, one quota"
        );
        let on_redis: Vec<_> = admitted.into_iter().zip(remaining).collect();
        assert_eq!(on_redis, in_memory, "{algorithm:?}");
        let look = a.charge(&[QuotaHit { hits: 0, ..hit }]).await.unwrap()[0];
        assert_eq!(look.remaining, 0, "{algorithm:?}");
    }
    let (mut conn, keys) = redis_keys(&prefix).await;
    let mut shapes: Vec<String> = keys.iter().map(|k| k[prefix.len()..].to_string()).collect();
    shapes.sort();
    assert_eq!(shapes.len(), 2, "{shapes:?}");
    assert_eq!(
        shapes[0],
        "d_k_v_".to_string() + &shapes[0]["d_k_v_".len()..]
    );
    assert!(
        shapes[0]["d_k_v_".len()..].parse::<u64>().unwrap() % 3600 == 0,
        "window start"
    );
    assert_eq!(shapes[1], "gcra_d_k_v");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "every key expires");
    let _: () = conn.del(&keys).await.unwrap();
}

/// Two engines on one Redis: one envoyproxy/ratelimit config, one quota between them.
#[tokio::test]
async fn two_engines_on_redis_share_a_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.yaml"), RLS).unwrap();
    let prefix = unique_prefix("engines");
    let engine = || {
        PolicyEngine::new(PolicySettings {
            ratelimit_dir: Some(dir.path().to_path_buf()),
            backend: Backend::Redis(redis(&prefix, "redis://127.0.0.1:6379")),
            ..Default::default()
        })
        .unwrap()
    };
    let (one, two) = (engine(), engine());
    meshlens_policy::testing::fresh_minute().await;
    let mut over = Vec::new();
    for i in 0..5 {
        let e = if i % 2 == 0 { &one } else { &two };
        let out = e.rate_limit(&request("shared")).await;
        assert_eq!(out.backend_error, None);
        over.push(out.decision.over_limit);
    }
    assert_eq!(over, [false, false, false, true, true]);
    assert_eq!(
        one.recent_denials(10).len() + two.recent_denials(10).len(),
        2
    );
}

/// Redis that does not answer: each check ends within its deadline, open or closed as set.
#[tokio::test]
async fn an_unreachable_redis_fails_open_or_closed_within_the_deadline() {
    // A listener that accepts and never answers, so the deadline, not a refusal, ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.yaml"), RLS).unwrap();
    let other = tempfile::tempdir().unwrap();
    let policy = other.path().join("policy.yaml");
    std::fs::write(&policy, "quotas:\n  - name: q\n    key: [source.service]\n    requests_per_unit: 5\n    unit: second\n").unwrap();
    for mode in [FailureMode::Open, FailureMode::Closed] {
        let engine = PolicyEngine::new(PolicySettings {
            ratelimit_dir: Some(dir.path().to_path_buf()),
            policy_files: vec![policy.clone()],
            backend: Backend::Redis(redis("x_", &url)),
            failure_mode: mode,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let out = engine.rate_limit(&request("a")).await;
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "{:?}",
                t.elapsed()
            );
            assert!(out.backend_error.is_some());
            assert_eq!(out.decision.over_limit, mode == FailureMode::Closed);
            let attrs = CheckAttributes {
                source_service: Some("web".into()),
                ..Default::default()
            };
            let t = Instant::now();
            let out = engine.authorize(&attrs).await;
            assert!(
                t.elapsed() < Duration::from_millis(1500),
                "{:?}",
                t.elapsed()
            );
            assert!(out.backend_error.is_some());
            let allowed = matches!(out.decision.verdict, Verdict::Allow { .. });
            assert_eq!(allowed, mode == FailureMode::Open);
            if mode == FailureMode::Closed {
                assert!(
                    matches!(out.decision.verdict, Verdict::Unavailable { .. }),
                    "closed is a retryable refusal: {:?}",
                    out.decision.verdict
                );
            }
        }
    }
    drop(silent);
}

/// Many checks at once on one Redis key: the limit is admitted exactly, whatever the interleaving.
#[tokio::test]
async fn concurrent_checks_on_redis_admit_exactly_the_limit() {
    let prefix = unique_prefix("concurrent");
    let store = std::sync::Arc::new(QuotaBackend::Redis(
        RedisStore::new(&redis(&prefix, "redis://127.0.0.1:6379")).unwrap(),
    ));
    for algorithm in [Algorithm::FixedWindow, Algorithm::Gcra] {
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let hit = QuotaHit {
                    key: "hot",
                    rate: Rate {
                        requests_per_unit: 100,
                        unit: Unit::Hour,
                        algorithm,
                    },
                    hits: 1,
                };
                let mut admitted = 0;
                for _ in 0..5 {
                    admitted += !store.charge(&[hit]).await.unwrap()[0].over_limit as u32;
                }
                admitted
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        assert_eq!(admitted, 100, "{algorithm:?}: 200 checks, 100 allowed");
    }
}

/// Redis going away and coming back: checks fail (within the deadline) while it is away, and
/// succeed again once it is back, on the same store (it reconnects by itself).
#[tokio::test]
async fn the_redis_store_reconnects_after_redis_comes_back() {
    let proxy = Forwarder::start("127.0.0.1:6379").await;
    let url = format!("redis://{}", proxy.addr);
    let store =
        QuotaBackend::Redis(RedisStore::new(&redis(&unique_prefix("reconnect"), &url)).unwrap());
    let hit = QuotaHit {
        key: "k",
        rate: Rate {
            requests_per_unit: 1000,
            unit: Unit::Hour,
            algorithm: Algorithm::FixedWindow,
        },
        hits: 1,
    };
    assert!(store.charge(&[hit]).await.is_ok());
    let addr = proxy.addr;
    proxy.stop().await;
    let t = Instant::now();
    assert!(store.charge(&[hit]).await.is_err(), "Redis is away");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let _back = Forwarder::start_on(addr, "127.0.0.1:6379").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if store.charge(&[hit]).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fixed-window key over its limit is answered over without Redis until its window ends:
/// Redis' count stops growing, the answers hold while Redis is away, and the next window asks
/// Redis again.
#[tokio::test]
async fn keys_over_their_limit_are_answered_without_redis_until_their_window_ends() {
    let proxy = Forwarder::start("127.0.0.1:6379").await;
    let prefix = unique_prefix("overcache");
    let mut config = redis(&prefix, &format!("redis://{}", proxy.addr));
    config.local_cache_keys = 100;
    let store = QuotaBackend::Redis(RedisStore::new(&config).unwrap());
    let hit = fixed_window_hit(2, Unit::Minute);
    meshlens_policy::testing::fresh_minute().await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let u = store.charge(&[hit]).await.unwrap()[0];
        answers.push((u.over_limit, u.cached));
    }
    assert_eq!(
        answers,
        [
            (false, false),
            (false, false),
            (true, false),
            (true, true),
            (true, true)
        ]
    );
    let (mut conn, keys) = redis_keys(&prefix).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let count: u64 = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 3, "the answers from the record did not reach Redis");
    // Redis away: the key is still known to be over.
    proxy.stop().await;
    let u = store.charge(&[hit]).await.unwrap()[0];
    assert!(u.over_limit && u.cached && u.remaining == 0);
    assert!((1..=60_000).contains(&u.reset_ms), "{}", u.reset_ms);
    // Another key still needs Redis.
    let other = QuotaHit {
        key: "other",
        ..hit
    };
    assert!(store.charge(&[hit, other]).await.is_err());
    let _: () = conn.del(&keys).await.unwrap();
}

/// With the record on, a window that ends lets the key through again (a 1 s window).
#[tokio::test]
async fn a_new_window_asks_redis_again() {
    let prefix = unique_prefix("overcache_window");
    let mut config = redis(&prefix, "redis://127.0.0.1:6379");
    config.local_cache_keys = 100;
    let store = QuotaBackend::Redis(RedisStore::new(&config).unwrap());
    let hit = fixed_window_hit(1, Unit::Second);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = (false, false);
    while Instant::now() < deadline && !(seen.0 && seen.1) {
        let u = store.charge(&[hit]).await.unwrap()[0];
        if u.cached {
            seen.0 = true; // refused from the record
        } else if seen.0 && !u.over_limit {
            seen.1 = true; // and admitted by Redis in a later window
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, (true, true));
}

/// One hit on key `k` under a fixed-window limit.
fn fixed_window_hit(requests_per_unit: u32, unit: Unit) -> QuotaHit<'static> {
    QuotaHit {
        key: "k",
        rate: Rate {
            requests_per_unit,
            unit,
            algorithm: Algorithm::FixedWindow,
        },
        hits: 1,
    }
}

/// A TCP forwarder to Redis that the test can stop (closing every connection) and restart.
struct Forwarder {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    async fn start(target: &'static str) -> Forwarder {
        Self::start_on("127.0.0.1:0".parse().unwrap(), target).await
    }

    async fn start_on(addr: std::net::SocketAddr, target: &'static str) -> Forwarder {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let held = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        Forwarder { addr, task, conns }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Global shadow mode: over-limit requests are answered OK (the statuses still say over) and are
/// not listed as denials.
#[tokio::test]
async fn global_shadow_mode_counts_but_never_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.yaml"), RLS).unwrap();
    let engine = PolicyEngine::new(PolicySettings {
        ratelimit_dir: Some(dir.path().to_path_buf()),
        shadow_mode: true,
        ..Default::default()
    })
    .unwrap();
    meshlens_policy::testing::fresh_minute().await;
    for i in 0..5 {
        let out = engine.rate_limit(&request("a")).await;
        assert!(!out.decision.over_limit);
        assert_eq!(out.decision.statuses[0].over_limit, i >= 3, "call {i}");
    }
    assert!(engine.recent_denials(10).is_empty());
}

/// A config directory is read whole, subdirectories included, skipping names that start with a
/// dot (a Kubernetes ConfigMap mount's `..data` link and timestamped directory) and files that
/// are not YAML.
#[test]
fn config_directories_are_read_like_a_configmap_mount() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("team/a")).unwrap();
    std::fs::create_dir_all(root.join("..2026_11_22")).unwrap();
    std::fs::write(root.join("team/a/one.yaml"), "domain: one\n").unwrap();
    std::fs::write(root.join("two.yml"), "domain: two\n").unwrap();
    std::fs::write(root.join("..2026_11_22/one.yaml"), "domain: one\n").unwrap();
    std::fs::write(root.join(".hidden.yaml"), "domain: hidden\n").unwrap();
    std::fs::write(root.join("README.md"), "not a config\n").unwrap();
    let rl = meshlens_policy::ratelimit::RateLimits::load_dir(root).unwrap();
    let mut domains: Vec<&str> = rl.domains().collect();
    domains.sort();
    assert_eq!(
        domains,
        ["one", "two"],
        "the dot directory's copy is not read twice"
    );
}
