//! The policy listener over real gRPC: ext_authz Check, ShouldRateLimit, health, hot reload,
//! `/api/policy`, and two instances sharing quotas on the real Redis.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, AttributeContext, CheckRequest,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use meshlens::config::{Config, QuotaBackendKind};
use meshlens_tests::{fresh_minute, TestEnv};
use serde_json::Value;
use tonic::transport::Channel;

const OVER_LIMIT: i32 = 2;
const OK: i32 = 1;

fn write_configs(dir: &Path, per_minute: u32) {
    let rl = dir.join("ratelimit");
    std::fs::create_dir_all(&rl).unwrap();
    std::fs::write(
        rl.join("edge.yaml"),
        format!(
            "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {{unit: minute, requests_per_unit: {per_minute}}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        "rules:\n  - name: no-admin\n    action: DENY\n    destinations: [work]\n    operation: {paths: ['/admin*']}\n",
    )
    .unwrap();
}

fn policy_config(dir: &Path) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.policy.ratelimit_dir = Some(dir.join("ratelimit"));
        c.policy.policy_files = vec![dir.join("policy.yaml")];
        c.policy.reload_interval = Duration::from_millis(100);
    }
}

async fn channel(env: &TestEnv) -> Channel {
    Channel::from_shared(format!("http://{}", env.running().addrs.policy))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn rls(user: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry {
                key: "user".into(),
                value: user.into(),
            }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

fn check(destination: &str, path: &str) -> CheckRequest {
    let mut ext = HashMap::new();
    ext.insert("destination".to_string(), destination.to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            context_extensions: ext,
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn codes(client: &mut RateLimitServiceClient<Channel>, user: &str, n: usize) -> Vec<i32> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = client
            .should_rate_limit(rls(user))
            .await
            .unwrap()
            .into_inner();
        out.push(r.overall_code);
    }
    out
}

async fn policy_json(env: &TestEnv) -> Value {
    env.http
        .get(env.web("/api/policy"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls until `f` holds, for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn the_policy_listener_serves_both_apis_and_health() {
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 2);
    let env = TestEnv::start_with(policy_config(cfg.path())).await;
    let ch = channel(&env).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "",
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ratelimit.v3.RateLimitService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service} serving");
    }
    let mut rl = RateLimitServiceClient::new(ch.clone());
    fresh_minute().await;
    assert_eq!(codes(&mut rl, "ann", 3).await, [OK, OK, OVER_LIMIT]);
    assert_eq!(codes(&mut rl, "bob", 1).await, [OK], "a counter per value");
    let mut authz = AuthorizationClient::new(ch);
    let denied = authz
        .check(check("work", "/admin/x"))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("{denied:?}")
    };
    assert_eq!(d.status.unwrap().code, 403);
    let other = authz
        .check(check("meet", "/admin/x"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.status.unwrap().code, 0, "the rule guards work only");

    let p = policy_json(&env).await;
    assert_eq!(p["backend"], "memory");
    assert_eq!(p["domains"], serde_json::json!(["edge"]));
    assert_eq!(p["rules"], 1);
    // 2 a minute: ann's second hit was near the limit and her third over it; bob's within.
    assert_eq!(
        p["limits"][0]["usage"],
        serde_json::json!({"within": 2, "near": 1, "over": 1}),
        "{p}"
    );
    let denials = p["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 2, "{p}");
    assert_eq!(denials[0]["api"], "ext_authz");
    assert_eq!(denials[0]["status"], 403);
    assert_eq!(denials[0]["destination"], "work");
    assert_eq!(denials[1]["api"], "ratelimit");
    assert_eq!(denials[1]["status"], 429);
    assert_eq!(denials[1]["by"], "edge.user");
    let metrics = env.metrics_text().await;
    for line in [
        r#"meshlens_policy_checks_total{api="ratelimit",decision="ok"} 3"#,
        r#"meshlens_policy_checks_total{api="ratelimit",decision="over_limit"} 1"#,
        r#"meshlens_policy_checks_total{api="ext_authz",decision="deny"} 1"#,
        r#"meshlens_policy_checks_total{api="ext_authz",decision="allow"} 1"#,
        r#"meshlens_policy_denials_total{api="ratelimit",by="edge.user"} 1"#,
        r#"meshlens_policy_check_duration_seconds_count{api="ratelimit"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    env.stop().await;
}

/// One gRPC call over plain HTTP/2 to any path: (HTTP status, grpc-status, grpc-message), read
/// from the trailers or, for a trailers-only answer, the headers.
async fn raw_call(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(req, false).unwrap();
    // An empty message: length-prefixed, zero bytes.
    stream
        .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    if let Some(trailers) = body.trailers().await.unwrap() {
        headers.extend(trailers);
    }
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (status, get("grpc-status"), get("grpc-message"))
}

/// Calls to a service or method the listener does not serve are answered UNIMPLEMENTED (12),
/// beside working ones; shutdown ends with a health Watch still open, and the port closes.
#[tokio::test]
async fn the_policy_listener_refuses_unknown_calls_and_stops_with_watches_open() {
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 2);
    let env = TestEnv::start_with(policy_config(cfg.path())).await;
    let addr = env.running().addrs.policy;
    let (http, code, message) = raw_call(addr, "/no.such.Service/Check").await;
    assert_eq!((http, code.as_str()), (200, "12"), "{message}");
    assert!(message.contains("no.such.Service"), "{message}");
    let (_, code, _) = raw_call(addr, "/envoy.service.auth.v3.Authorization/Nope").await;
    assert_eq!(code, "12");
    let (_, code, _) = raw_call(addr, "/").await;
    assert_eq!(code, "12");
    // A known method still answers: an empty CheckRequest is allowed (no rule guards it).
    let (_, code, message) = raw_call(addr, "/envoy.service.auth.v3.Authorization/Check").await;
    assert_eq!(code, "0", "{message}");

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&env).await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, 1, "serving");
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), env.stop())
        .await
        .expect("shutdown ends with a Watch open");
    assert!(stopping.elapsed() < Duration::from_secs(15));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the policy port is closed"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
    assert!(
        matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
        "the Watch ended: {ended:?}"
    );
}

/// The policy listener has its own runtime: checks are answered while every worker of the main
/// runtime (ingest, web) is held by blocking work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_answered_while_the_main_runtime_is_held() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 100);
    let env = TestEnv::start_with(policy_config(cfg.path())).await;
    let addr = env.running().addrs.policy;
    // The client has a runtime of its own too, since the test's is about to be held.
    let (to_client, go) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut rl = RateLimitServiceClient::new(ch);
            assert_eq!(codes(&mut rl, "ann", 1).await, [OK], "before");
            go.recv().unwrap();
            let mut answered = Vec::new();
            for _ in 0..20 {
                let r =
                    tokio::time::timeout(Duration::from_secs(5), rl.should_rate_limit(rls("ann")))
                        .await
                        .expect("answered within 5 s")
                        .unwrap();
                answered.push(r.into_inner().overall_code);
            }
            answered
        })
    });
    // Both workers sleep, holding their threads, until the client is done or 10 s have passed.
    let held = Arc::new(Barrier::new(3));
    let released = Arc::new(AtomicBool::new(false));
    let (client_done_tx, client_done) = std::sync::mpsc::channel::<()>();
    let client_done = Arc::new(std::sync::Mutex::new(client_done));
    let mut holders = Vec::new();
    for _ in 0..2 {
        let (held, released, client_done) = (held.clone(), released.clone(), client_done.clone());
        holders.push(tokio::spawn(async move {
            held.wait();
            // One holder waits for the client, the other for the first; neither yields.
            let _ = client_done
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10));
            released.store(true, Ordering::SeqCst);
        }));
    }
    held.wait();
    to_client.send(()).unwrap();
    let answered = client.join().unwrap();
    let while_held = !released.load(Ordering::SeqCst);
    client_done_tx.send(()).unwrap();
    drop(client_done_tx);
    for h in holders {
        h.await.unwrap();
    }
    assert!(while_held, "the checks waited for the main runtime");
    assert_eq!(answered, vec![OK; 20]);
    env.stop().await;
}

#[tokio::test]
async fn configs_reload_when_changed_and_a_bad_one_keeps_the_last_good() {
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 1);
    let started_s = unix_s();
    let env = TestEnv::start_with(policy_config(cfg.path())).await;
    let last_good = || {
        env.metric(
            "meshlens_policy_config_last_reload_success_timestamp_seconds",
            "",
        )
    };
    let first_load = last_good().await;
    assert!((started_s..=unix_s()).contains(&first_load), "{first_load}");
    let mut rl = RateLimitServiceClient::new(channel(&env).await);
    fresh_minute().await;
    assert_eq!(codes(&mut rl, "ann", 2).await, [OK, OVER_LIMIT]);

    // A second later, so the good reload's time differs from the first load's.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let rewritten_s = unix_s();
    write_configs(cfg.path(), 100);
    eventually("the new limit", || {
        let mut rl = rl.clone();
        async move { codes(&mut rl, "ann", 1).await == [OK] }
    })
    .await;
    let good_reload = last_good().await;
    assert!(
        good_reload >= rewritten_s && good_reload > first_load,
        "{first_load} then {good_reload}"
    );

    let file = cfg.path().join("ratelimit/edge.yaml");
    std::fs::write(&file, "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 1}\n").unwrap();
    eventually("the refusal", || async {
        !policy_json(&env).await["last_error"].is_null()
    })
    .await;
    let p = policy_json(&env).await;
    assert_eq!(p["last_error"]["file"], file.display().to_string());
    let reason = p["last_error"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("duplicate descriptor composite key 'edge.user' at line 5 column 5"),
        "{reason}"
    );
    assert_eq!(
        codes(&mut rl, "carl", 3).await,
        [OK, OK, OK],
        "100 per minute still"
    );
    let metrics = env.metrics_text().await;
    // The first load and the good reload.
    assert!(
        metrics.contains(r#"meshlens_policy_config_reloads_total{result="success"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"meshlens_policy_config_reloads_total{result="failure"} 1"#));
    assert!(metrics.contains("meshlens_policy_config_last_reload_successful 0"));
    assert_eq!(
        last_good().await,
        good_reload,
        "a refused config is no good load"
    );
    env.stop().await;
}

/// Now in whole Unix seconds, as the last-good-load gauge has it.
fn unix_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64
}

#[tokio::test]
async fn two_instances_on_redis_share_one_quota() {
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 4);
    let prefix = format!(
        "meshlens_it_{}_",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let dir = cfg.path().to_path_buf();
    let start = || {
        let (prefix, dir) = (prefix.clone(), dir.clone());
        TestEnv::start_with(move |c| {
            policy_config(&dir)(c);
            c.policy.backend = QuotaBackendKind::Redis;
            c.policy.redis_key_prefix = prefix;
            c.policy.redis_timeout = Duration::from_millis(500);
        })
    };
    let (one, two) = (start().await, start().await);
    let mut a = RateLimitServiceClient::new(channel(&one).await);
    let mut b = RateLimitServiceClient::new(channel(&two).await);
    fresh_minute().await;
    let mut got = Vec::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        got.extend(codes(c, "shared", 1).await);
    }
    assert_eq!(got, [OK, OK, OK, OK, OVER_LIMIT, OVER_LIMIT]);
    // Each instance now knows the key is over until the minute ends, and answers without Redis.
    assert_eq!(codes(&mut a, "shared", 1).await, [OVER_LIMIT]);
    assert_eq!(codes(&mut b, "shared", 1).await, [OVER_LIMIT]);
    for env in [&one, &two] {
        let local = env
            .metric(
                "meshlens_policy_local_over_limit_answers_total",
                r#"api="ratelimit""#,
            )
            .await;
        assert_eq!(local, 1.0);
    }
    assert_eq!(policy_json(&one).await["backend"], "redis");
    one.stop().await;
    two.stop().await;
}

/// Refusals with a known source and destination show on that edge of the graph: ext_authz from
/// the request's source service and destination (a DENY as denied, a spent quota as rate
/// limited), the rate limit service from Envoy's `source_cluster` and `destination_cluster`
/// descriptor entries (an Istio cluster names its service).
#[tokio::test]
async fn refusals_between_known_services_show_on_the_graph() {
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 1);
    std::fs::write(
        cfg.path().join("policy.yaml"),
        "rules:\n  - name: no-admin\n    action: DENY\n    destinations: [work]\n    operation: {paths: ['/admin*']}\nquotas:\n  - {name: cart-per-caller, destinations: [cart], key: [source.service], requests_per_unit: 1, unit: minute}\n",
    )
    .unwrap();
    std::fs::write(
        cfg.path().join("ratelimit/mesh.yaml"),
        "domain: mesh\ndescriptors:\n  - key: source_cluster\n    descriptors:\n      - key: destination_cluster\n        rate_limit: {unit: minute, requests_per_unit: 1}\n",
    )
    .unwrap();
    let env = TestEnv::start_with(policy_config(cfg.path())).await;
    let ch = channel(&env).await;
    let mut authz = AuthorizationClient::new(ch.clone());
    let mut denied = check("work", "/admin");
    if let Some(a) = denied.attributes.as_mut() {
        a.source = Some(attribute_context::Peer {
            service: "ingress".into(),
            ..Default::default()
        });
    }
    for _ in 0..2 {
        authz.check(denied.clone()).await.unwrap();
    }
    let mut rl = RateLimitServiceClient::new(ch);
    let mesh = RateLimitRequest {
        domain: "mesh".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                rate_limit_descriptor::Entry {
                    key: "source_cluster".into(),
                    value: "work".into(),
                },
                rate_limit_descriptor::Entry {
                    key: "destination_cluster".into(),
                    value: "outbound|80|v2|meet.shop.svc.cluster.local".into(),
                },
            ],
            ..Default::default()
        }],
        hits_addend: 1,
    };
    fresh_minute().await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            rl.should_rate_limit(mesh.clone())
                .await
                .unwrap()
                .into_inner()
                .overall_code,
        );
    }
    assert_eq!(codes, [OK, OVER_LIMIT, OVER_LIMIT, OVER_LIMIT]);
    let mut to_cart = check("cart", "/items");
    if let Some(a) = to_cart.attributes.as_mut() {
        a.source = Some(attribute_context::Peer {
            service: "web".into(),
            ..Default::default()
        });
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = authz.check(to_cart.clone()).await.unwrap().into_inner();
        statuses.push(match r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
            _ => 200,
        });
    }
    assert_eq!(statuses, [200, 429, 429], "one a minute per caller");
    let edge = |g: &Value, src: &str, dst: &str| {
        g["edges"].as_array().and_then(|edges| {
            edges
                .iter()
                .find(|e| e["source"] == src && e["target"] == dst)
                .map(|e| {
                    (
                        e["stats"]["denied"].as_u64(),
                        e["stats"]["rate_limited"].as_u64(),
                    )
                })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last: Value = env
            .http
            .get(env.web("/api/graph?window=1m"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let a = edge(&last, "service:ingress", "service:work");
        let b = edge(&last, "service:work", "service:meet");
        let c = edge(&last, "service:web", "service:cart");
        if a == Some((Some(2), Some(0)))
            && b == Some((Some(0), Some(3)))
            && c == Some((Some(0), Some(2)))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals never reached the graph: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The API lists the rate limit service's denials with both ends named as the graph names
    // them.
    let p = policy_json(&env).await;
    let rl_denial = p["denials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["api"] == "ratelimit")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&rl_denial["source"], &rl_denial["destination"]),
        (&Value::from("work"), &Value::from("meet")),
        "{p}"
    );
    env.stop().await;
}

/// `meshlens policy validate`: the shipped examples pass; a broken file is refused with its
/// path, line and reason.
#[test]
fn policy_validate_accepts_the_examples_and_names_what_is_wrong() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy");
    for p in [
        root.join("ratelimit"),
        root.join("policy.yaml"),
        root.join("ratelimit/edge.yaml"),
    ] {
        meshlens::validate_policies(&[p]).unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "rules:\n  - name: a\n    action: DENY\n    source: {ip_blocks: [300.1.1.1/8]}\n",
    )
    .unwrap();
    let e = meshlens::validate_policies(std::slice::from_ref(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&bad.display().to_string()) && e.contains("invalid ip_block '300.1.1.1/8'"),
        "{e}"
    );
    std::fs::write(
        &bad,
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: parsec}\n",
    )
    .unwrap();
    let e = meshlens::validate_policies(std::slice::from_ref(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("invalid rate limit unit 'parsec'") && e.contains("line 3"),
        "{e}"
    );
}

/// The Redis backend over TLS, to a `redis-server` of the test's own that requires client
/// certificates: quotas count there; without the client certificate Redis refuses the
/// connection, and checks fail open and are counted as backend errors.
#[tokio::test]
async fn quotas_count_on_redis_over_tls_with_a_client_certificate() {
    use meshlens_tests::certs::Ca;
    use meshlens_tests::servers::OwnRedis;
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 2);
    let ca = Ca::new("meshlens test CA");
    let redis = OwnRedis::start(&ca, &ca.server(1), true);
    let ca_path = ca.write(cfg.path(), "ca");
    let (cert, key) = ca
        .client("spiffe://cluster.local/ns/observability/sa/meshlens")
        .write(cfg.path(), "client");
    let start = |with_client_cert: bool| {
        let (ca_path, cert, key) = (ca_path.clone(), cert.clone(), key.clone());
        let dir = cfg.path().to_path_buf();
        TestEnv::start_with(move |c: &mut Config| {
            policy_config(&dir)(c);
            c.policy.backend = QuotaBackendKind::Redis;
            c.policy.redis_url = format!("rediss://localhost:{}", redis.port);
            c.policy.redis_key_prefix = format!("meshlens_tls_{}_", std::process::id());
            // The first check also makes the TLS connection.
            c.policy.redis_timeout = Duration::from_secs(2);
            c.policy.redis_ca = ca_path;
            if with_client_cert {
                c.policy.redis_client_cert = cert;
                c.policy.redis_client_key = key;
            }
        })
    };
    let errors = "meshlens_policy_backend_errors_total";
    let env = start(true).await;
    let mut rl = RateLimitServiceClient::new(channel(&env).await);
    fresh_minute().await;
    assert_eq!(codes(&mut rl, "ann", 3).await, [OK, OK, OVER_LIMIT]);
    assert_eq!(env.metric(errors, "backend=\"redis\"").await, 0.0);
    env.stop().await;

    let env = start(false).await;
    let mut rl = RateLimitServiceClient::new(channel(&env).await);
    assert_eq!(codes(&mut rl, "bob", 3).await, [OK, OK, OK], "failing open");
    assert!(env.metric(errors, "backend=\"redis\"").await >= 1.0);
    env.stop().await;
}

/// Requests past the input bounds are refused whole with INVALID_ARGUMENT and a message, over
/// the real listener, and counted; a normal check on the same channel is answered after them.
#[tokio::test]
async fn oversized_policy_requests_are_refused_with_a_reason() {
    let cfg = tempfile::tempdir().unwrap();
    write_configs(cfg.path(), 100);
    let env = TestEnv::start_with(policy_config(cfg.path())).await;
    let ch = channel(&env).await;
    let mut rl = RateLimitServiceClient::new(ch.clone());
    let mut many = rls("ann");
    many.descriptors = vec![many.descriptors[0].clone(); 3_000];
    let err = rl.should_rate_limit(many).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("3000 descriptors"),
        "{}",
        err.message()
    );
    let long = rls(&"u".repeat(1 << 20));
    let err = rl.should_rate_limit(long).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("entries[0]"), "{}", err.message());
    assert_eq!(codes(&mut rl, "ann", 1).await, [OK]);

    let mut authz = AuthorizationClient::new(ch);
    let mut flood = check("work", "/");
    let http = flood
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers = (0..10_000)
        .map(|i| (format!("x-h{i}"), "v".to_string()))
        .collect();
    let err = authz.check(flood).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("10000 headers"), "{}", err.message());
    let mut named = check(&"d".repeat(300), "/");
    named.attributes.as_mut().unwrap().source = None;
    let err = authz.check(named).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let ok = authz.check(check("work", "/")).await.unwrap().into_inner();
    assert_eq!(ok.status.unwrap().code, 0, "a normal check after them");
    let text = env.metrics_text().await;
    for line in [
        r#"meshlens_policy_checks_total{api="ext_authz",decision="invalid"} 2"#,
        r#"meshlens_policy_checks_total{api="ratelimit",decision="invalid"} 2"#,
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    env.stop().await;
}
