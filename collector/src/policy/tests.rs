//! The services called in-process with Envoy's own message types.

use std::path::PathBuf;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, AttributeContext, CheckRequest,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use meshlens_policy::{PolicyEngine, PolicySettings};
use tonic::Request;

use super::*;

fn server(dir: &tempfile::TempDir) -> Arc<PolicyServer> {
    server_capped(dir, 100)
}

/// Under `dir`: a policy file and a rate limit directory holding `edge.yaml`; their paths.
fn configs(dir: &tempfile::TempDir, policy: &str, edge: &str) -> (PathBuf, PathBuf) {
    let rl = dir.path().join("rl");
    std::fs::create_dir_all(&rl).unwrap();
    std::fs::write(rl.join("edge.yaml"), edge).unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    (file, rl)
}

fn server_capped(dir: &tempfile::TempDir, max_series: usize) -> Arc<PolicyServer> {
    let (policy, rl) = configs(
        dir,
        "rules:\n  - {name: no-admin, action: DENY, operation: {paths: ['/admin*']}}\nquotas:\n  - {name: per-user, key: ['header:x-user'], requests_per_unit: 1, unit: hour}\n",
        "domain: edge\ndescriptors:\n  - key: path\n    rate_limit: {unit: minute, requests_per_unit: 2, name: per-path}\n",
    );
    let engine = PolicyEngine::new(PolicySettings {
        ratelimit_dir: Some(rl),
        policy_files: vec![policy],
        ..Default::default()
    })
    .unwrap();
    PolicyServer::new(Arc::new(engine), Metrics::new(), max_series)
}

/// Every line is a whole line of the metrics text.
fn assert_metrics(s: &PolicyServer, lines: &[&str]) {
    let text = s.metrics.render();
    for line in lines {
        assert!(text.lines().any(|l| l == *line), "{line} in\n{text}");
    }
}

fn check(path: &str, user: Option<&str>) -> CheckRequest {
    let mut headers = std::collections::HashMap::new();
    headers.insert(":path".to_string(), path.to_string());
    if let Some(u) = user {
        headers.insert("x-user".to_string(), u.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: format!("{path}?q=1"),
                    host: "work".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn check_answers_ok_403_and_429_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir);
    let svc = authz::AuthzService { server: s.clone() };
    let ok = svc
        .check(Request::new(check("/api", Some("ann"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(okr)) = ok.http_response else {
        panic!("{ok:?}")
    };
    let added: Vec<_> = okr
        .response_headers_to_add
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.as_str(), h.value.as_str())
        })
        .collect();
    assert_eq!(
        &added[..2],
        &[
            ("x-ratelimit-limit", "1, 1;w=3600"),
            ("x-ratelimit-remaining", "0")
        ]
    );
    let admin = svc
        .check(Request::new(check("/admin/x", None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admin.status.as_ref().unwrap().code, 7);
    let Some(HttpResponse::DeniedResponse(d)) = admin.http_response else {
        panic!()
    };
    assert_eq!(d.status.unwrap().code, 403);
    assert_eq!(d.body, "denied by rule no-admin");
    let spent = svc
        .check(Request::new(check("/api", Some("ann"))))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::DeniedResponse(d)) = spent.http_response else {
        panic!()
    };
    assert_eq!(d.status.unwrap().code, 429);
    let names: Vec<_> = d
        .headers
        .iter()
        .map(|h| h.header.as_ref().unwrap().key.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after"
        ]
    );
    assert_metrics(
        &s,
        &[
            r#"meshlens_policy_checks_total{api="ext_authz",decision="allow"} 1"#,
            r#"meshlens_policy_checks_total{api="ext_authz",decision="deny"} 1"#,
            r#"meshlens_policy_checks_total{api="ext_authz",decision="rate_limited"} 1"#,
            r#"meshlens_policy_denials_total{api="ext_authz",by="no-admin"} 1"#,
            r#"meshlens_policy_quota_hits_total{limit="per-user",outcome="over"} 1"#,
        ],
    );
}

fn rls(
    domain: &str,
    entries: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| rate_limit_descriptor::Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

#[tokio::test]
async fn should_rate_limit_answers_like_envoyproxy_ratelimit() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir);
    let svc = ratelimit::RlsService { server: s.clone() };
    meshlens_policy::testing::fresh_minute().await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = svc
            .should_rate_limit(Request::new(rls("edge", &[("path", "/a")])))
            .await
            .unwrap()
            .into_inner();
        codes.push(r.overall_code);
        let st = &r.statuses[0];
        let limit = st.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit, limit.name.as_str()),
            (2, 2, "per-path")
        );
        let reset = st.duration_until_reset.unwrap().seconds;
        assert!((1..=60).contains(&reset), "{reset}");
    }
    assert_eq!(codes, [1, 1, 2]);
    // Three hits at once on another path: one within, one near, one over (counted in hits).
    let mut three = rls("edge", &[("path", "/b")]);
    three.hits_addend = 3;
    let r = svc.should_rate_limit(Request::new(three)).await.unwrap();
    assert_eq!(r.into_inner().overall_code, 2);
    let none = svc
        .should_rate_limit(Request::new(rls("edge", &[("other", "x")])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.overall_code, 1);
    assert!(
        none.statuses[0].current_limit.is_none() && none.statuses[0].duration_until_reset.is_none()
    );
    let err = svc
        .should_rate_limit(Request::new(rls("", &[("a", "b")])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "rate limit domain must not be empty");
    let mut empty = rls("edge", &[]);
    empty.descriptors.clear();
    let err = svc
        .should_rate_limit(Request::new(empty))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "rate limit descriptor list must not be empty"
    );
    assert_metrics(
        &s,
        &[
            r#"meshlens_policy_checks_total{api="ratelimit",decision="invalid"} 2"#,
            // 2 a minute: the second hit is past 80% of the limit, the third over it; and the
            // same again from the three hits on /b.
            r#"meshlens_policy_checks_total{api="ratelimit",decision="over_limit"} 2"#,
            r#"meshlens_policy_quota_hits_total{limit="edge.path",outcome="within"} 2"#,
            r#"meshlens_policy_quota_hits_total{limit="edge.path",outcome="near"} 2"#,
            r#"meshlens_policy_quota_hits_total{limit="edge.path",outcome="over"} 2"#,
        ],
    );
}

#[test]
fn reload_outcomes_are_counted_and_a_bad_file_keeps_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir);
    std::fs::write(
        dir.path().join("policy.yaml"),
        "rules: [{name: x, action: PERHAPS}]\n",
    )
    .unwrap();
    assert!(matches!(
        s.reload(),
        meshlens_policy::ReloadOutcome::Failed(_)
    ));
    assert_metrics(
        &s,
        &[
            r#"meshlens_policy_config_reloads_total{result="failure"} 1"#,
            "meshlens_policy_config_last_reload_successful 0",
        ],
    );
    assert_eq!(s.engine().current().authz.rule_count(), 1);
    std::fs::write(dir.path().join("policy.yaml"), "rules: []\n").unwrap();
    assert_eq!(s.reload(), meshlens_policy::ReloadOutcome::Reloaded);
    assert!(s
        .metrics
        .render()
        .contains("meshlens_policy_config_last_reload_successful 1"));
    // The first load and this reload.
    assert_metrics(
        &s,
        &[r#"meshlens_policy_config_reloads_total{result="success"} 2"#],
    );
}

/// Failing closed is a retryable refusal: 503 with `retry-after`, not a 403.
#[test]
fn an_unavailable_quota_store_failing_closed_answers_503() {
    use meshlens_policy::authz::{AuthzDecision, Verdict};
    let r = authz::response(&AuthzDecision {
        verdict: Verdict::Unavailable {
            reason: "quota store unavailable".into(),
        },
        audited: Vec::new(),
        quotas: Vec::new(),
    });
    assert_eq!(r.status.as_ref().unwrap().code, 14);
    let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
        panic!("{r:?}")
    };
    assert_eq!(d.status.unwrap().code, 503);
    let h = d.headers[0].header.as_ref().unwrap();
    assert_eq!((h.key.as_str(), h.value.as_str()), ("retry-after", "1"));
}

/// Per-limit metrics stop at the cap; what is left out is counted.
#[tokio::test]
async fn per_limit_metrics_are_capped_and_the_overflow_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = server_capped(&dir, 1);
    let svc = ratelimit::RlsService { server: s.clone() };
    for _ in 0..3 {
        svc.should_rate_limit(Request::new(rls("edge", &[("path", "/a")])))
            .await
            .unwrap();
    }
    // The first hit, within, took the one label set; the second (near) and third (over) are
    // left out.
    assert_metrics(
        &s,
        &[
            r#"meshlens_policy_quota_hits_total{limit="edge.path",outcome="within"} 1"#,
            r#"meshlens_policy_series_dropped_total{metric="meshlens_policy_quota_hits_total"} 2"#,
        ],
    );
    let text = s.metrics.render();
    assert!(!text.contains(r#"outcome="over""#) && !text.contains(r#"outcome="near""#));
}

/// Every decision's series exists from the start at 0 (an alert on its increase has a series
/// before the first denial), and each check counts under its own decision and API.
#[tokio::test]
async fn decision_series_start_at_zero_and_count_each_check() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir);
    let zero: Vec<String> = [
        ("ext_authz", authz::DECISIONS),
        ("ratelimit", ratelimit::DECISIONS),
    ]
    .iter()
    .flat_map(|(api, ds)| {
        ds.iter().map(move |d| {
            let d = d.as_str();
            format!(r#"meshlens_policy_checks_total{{api="{api}",decision="{d}"}} 0"#)
        })
    })
    .collect();
    assert_metrics(&s, &zero.iter().map(String::as_str).collect::<Vec<_>>());
    let svc = authz::AuthzService::new(s.clone());
    svc.check(Request::new(check("/admin/x", None)))
        .await
        .unwrap();
    svc.check(Request::new(check("/a", None))).await.unwrap();
    svc.check(Request::new(check("/admin/y", None)))
        .await
        .unwrap();
    assert_metrics(
        &s,
        &[
            r#"meshlens_policy_checks_total{api="ext_authz",decision="deny"} 2"#,
            r#"meshlens_policy_checks_total{api="ext_authz",decision="allow"} 1"#,
            r#"meshlens_policy_checks_total{api="ratelimit",decision="ok"} 0"#,
            r#"meshlens_policy_check_duration_seconds_count{api="ext_authz"} 3"#,
            r#"meshlens_policy_check_duration_seconds_count{api="ratelimit"} 0"#,
        ],
    );
}

/// A request's limit override with a unit Envoy does not define is refused, not guessed.
#[tokio::test]
async fn an_override_with_an_unknown_unit_is_invalid() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
    let dir = tempfile::tempdir().unwrap();
    let svc = ratelimit::RlsService {
        server: server(&dir),
    };
    let mut req = rls("edge", &[("path", "/a")]);
    req.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 5,
        unit: 0,
    });
    let err = svc.should_rate_limit(Request::new(req)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("unknown unit"), "{}", err.message());
    // A valid override is counted and answered under its own rate and unit: 1 an hour, not
    // the config's 2 a minute.
    let mut req = rls("edge", &[("path", "/override")]);
    req.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 3, // envoy.type.v3.RateLimitUnit.HOUR
    });
    let mut codes = Vec::new();
    for _ in 0..2 {
        let r = svc
            .should_rate_limit(Request::new(req.clone()))
            .await
            .unwrap()
            .into_inner();
        let st = &r.statuses[0];
        let limit = st.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (1, rate_limit::Unit::Hour as i32)
        );
        let reset = st.duration_until_reset.unwrap().seconds;
        assert!((1..=3600).contains(&reset), "{reset}");
        codes.push(r.overall_code);
    }
    assert_eq!(codes, [1, 2], "the second call in the hour is over");
}

/// Envoy's request as the policy engine sees it: every field and fallback of `attributes`.
#[test]
fn attributes_read_every_field_and_fallback() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let http = |path: &str, headers: &[(&str, &str)], raw: &[(&str, &[u8])]| {
        attribute_context::HttpRequest {
            method: "POST".into(),
            host: "work.mesh".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            header_map: (!raw.is_empty()).then(|| HeaderMap {
                headers: raw
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        raw_value: v.to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    };
    let request = |ctx: AttributeContext| CheckRequest {
        attributes: Some(ctx),
    };
    let with_http = |h| {
        Some(attribute_context::Request {
            http: Some(h),
            ..Default::default()
        })
    };

    // Source from the peer, namespace from its SPIFFE id, destination from the route.
    let a = authz::attributes(&mut request(AttributeContext {
        source: Some(attribute_context::Peer {
            service: "ingress".into(),
            principal: "spiffe://cluster.local/ns/edge/sa/ingress".into(),
            ..Default::default()
        }),
        context_extensions: [("destination".to_string(), "work".to_string())].into(),
        request: with_http(http(
            "/api/x?token=1#f",
            &[("X-User", "ann")],
            &[("X-Raw", b"r\xffw")],
        )),
        ..Default::default()
    }));
    assert_eq!(a.source_service.as_deref(), Some("ingress"));
    assert_eq!(a.source_namespace.as_deref(), Some("edge"));
    assert_eq!(a.destination.as_deref(), Some("work"));
    assert_eq!(
        (a.method.as_str(), a.host.as_str(), a.path.as_str()),
        ("POST", "work.mesh", "/api/x")
    );
    assert_eq!(a.header("x-user"), Some("ann"), "names are lowercased");
    assert_eq!(
        a.header("x-raw"),
        Some("r\u{fffd}w"),
        "raw values are read, invalid UTF-8 replaced"
    );

    // Namespace from the route; destination from `destination_service`; source from the header
    // Envoy's `add_user_agent` sets; an over-long value is cut on a character boundary.
    let long = "é".repeat(5000);
    let a = authz::attributes(&mut request(AttributeContext {
        context_extensions: [
            ("source_namespace".to_string(), "front".to_string()),
            ("destination".to_string(), String::new()),
            ("destination_service".to_string(), "orders".to_string()),
        ]
        .into(),
        request: with_http(http(
            "/",
            &[
                ("x-envoy-downstream-service-cluster", "web"),
                ("x-long", &long),
            ],
            &[],
        )),
        ..Default::default()
    }));
    assert_eq!(a.source_service.as_deref(), Some("web"));
    assert_eq!(a.source_namespace.as_deref(), Some("front"));
    assert_eq!(
        a.destination.as_deref(),
        Some("orders"),
        "an empty `destination` is skipped"
    );
    let cut = a.header("x-long").unwrap();
    assert_eq!(cut.len(), 8192);
    assert!(long.starts_with(cut));

    // Destination from the peer's labels: `app`, else `service`; an empty `app` falls to the
    // peer's service name.
    let dest = |labels: &[(&str, &str)], service: &str| {
        authz::attributes(&mut request(AttributeContext {
            destination: Some(attribute_context::Peer {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                service: service.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .destination
    };
    assert_eq!(
        dest(&[("app", "a"), ("service", "s")], "p").as_deref(),
        Some("a")
    );
    assert_eq!(dest(&[("service", "s")], "p").as_deref(), Some("s"));
    assert_eq!(dest(&[("app", "")], "p").as_deref(), Some("p"));
    assert_eq!(dest(&[], "").as_deref(), None);
    assert_eq!(
        authz::attributes(&mut CheckRequest { attributes: None }),
        meshlens_policy::authz::CheckAttributes::default()
    );
}

#[test]
fn a_callers_grpc_timeout_is_its_budget_less_the_way_back() {
    let budget = |v: &str| {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        super::budget(&m)
    };
    let ms = Duration::from_millis;
    assert_eq!(budget("20m"), Some(ms(16)), "Envoy's rate limit default");
    assert_eq!(budget("200m"), Some(ms(190)), "ext_authz' default");
    assert_eq!(budget("2S"), Some(ms(1990)));
    assert_eq!(budget("1M"), Some(ms(59_990)));
    assert_eq!(budget("1H"), Some(ms(3_599_990)));
    assert_eq!(budget("5000u"), Some(Duration::from_micros(4000)));
    assert_eq!(budget("100n"), Some(Duration::from_nanos(80)));
    for bad in [
        "",
        "m",
        "20",
        "20x",
        "123456789m",
        "-5m",
        "+5m",
        "5.0m",
        "20mm",
    ] {
        assert_eq!(budget(bad), None, "{bad:?}");
    }
    assert_eq!(super::budget(&tonic::metadata::MetadataMap::new()), None);
}

/// A Redis that accepts and never answers, a `redis_timeout` of 5 s, and Envoy's 200 ms
/// deadline: the check is answered per the failure mode inside the deadline, and counted.
#[tokio::test]
async fn a_quota_store_slower_than_the_callers_deadline_fails_inside_it() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (policy, rl) = configs(
        &dir,
        "quotas:\n  - {name: per-user, key: ['header:x-user'], requests_per_unit: 5, unit: minute}\n",
        "domain: edge\ndescriptors:\n  - key: path\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
    );
    let engine = PolicyEngine::new(PolicySettings {
        ratelimit_dir: Some(rl),
        policy_files: vec![policy],
        backend: meshlens_policy::Backend::Redis(meshlens_policy::quota::RedisConfig {
            url: format!("redis://{}", silent.local_addr().unwrap()),
            key_prefix: "deadline_".into(),
            timeout: Duration::from_secs(5),
            local_cache_keys: 0,
            tls: Default::default(),
        }),
        failure_mode: meshlens_policy::FailureMode::Open,
        ..Default::default()
    })
    .unwrap();
    let s = PolicyServer::new(Arc::new(engine), Metrics::new(), 100);
    fn with_deadline<T>(mut r: Request<T>) -> Request<T> {
        r.metadata_mut()
            .insert("grpc-timeout", "200m".parse().unwrap());
        r
    }
    let authz = authz::AuthzService { server: s.clone() };
    let t = Instant::now();
    let ok = authz
        .check(with_deadline(Request::new(check("/api", Some("ann")))))
        .await
        .unwrap()
        .into_inner();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(3000), "{took:?}");
    assert!(
        took >= Duration::from_millis(150),
        "waited its budget: {took:?}"
    );
    assert_eq!(ok.status.unwrap().code, 0, "fails open");
    let rls_svc = ratelimit::RlsService { server: s.clone() };
    let t = Instant::now();
    let r = rls_svc
        .should_rate_limit(with_deadline(Request::new(rls("edge", &[("path", "/a")]))))
        .await
        .unwrap()
        .into_inner();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.overall_code, 1, "fails open");
    assert_metrics(
        &s,
        &[
            r#"meshlens_policy_backend_errors_total{backend="redis",kind="timeout"} 2"#,
            r#"meshlens_policy_checks_total{api="ext_authz",decision="allow"} 1"#,
            r#"meshlens_policy_checks_total{api="ratelimit",decision="ok"} 1"#,
        ],
    );
}

/// A request refused by two limits at once is one refused request on its edge; both ends are
/// named as the graph names them (an Istio cluster by its service).
#[tokio::test]
async fn a_request_over_two_limits_is_one_refusal_on_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir);
    std::fs::write(
        dir.path().join("rl").join("mesh.yaml"),
        "domain: mesh\ndescriptors:\n  - key: source_cluster\n    rate_limit: {unit: hour, requests_per_unit: 1}\n  - key: destination_cluster\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
    )
    .unwrap();
    assert!(matches!(
        s.reload(),
        meshlens_policy::ReloadOutcome::Reloaded
    ));
    let svc = ratelimit::RlsService { server: s.clone() };
    let mut req = rls(
        "mesh",
        &[(
            "source_cluster",
            "outbound|80|v1|web.shop.svc.cluster.local",
        )],
    );
    req.descriptors.push(RateLimitDescriptor {
        entries: vec![rate_limit_descriptor::Entry {
            key: "destination_cluster".into(),
            value: "outbound|8080|v2|work.shop.svc.cluster.local".into(),
        }],
        ..Default::default()
    });
    for want in [1, 2] {
        let r = svc
            .should_rate_limit(Request::new(req.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, want);
    }
    let refusals = s.take_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let r = &refusals[0];
    assert_eq!(
        (
            r.source.as_str(),
            r.destination.as_str(),
            r.denied,
            r.rate_limited
        ),
        ("web", "work", 0, 1)
    );

    // In the service-wide shadow mode nothing is refused, so nothing shows as refused.
    let engine = PolicyEngine::new(PolicySettings {
        ratelimit_dir: Some(dir.path().join("rl")),
        shadow_mode: true,
        ..Default::default()
    })
    .unwrap();
    let shadow = PolicyServer::new(Arc::new(engine), Metrics::new(), 100);
    let svc = ratelimit::RlsService {
        server: shadow.clone(),
    };
    for _ in 0..2 {
        let r = svc
            .should_rate_limit(Request::new(req.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.overall_code, 1);
    }
    assert_eq!(shadow.take_refusals(), Vec::new());
}

/// The caller's address reaches IP-block rules, and an ALLOW rule's headers reach the request
/// Envoy forwards (`OkHttpResponse.headers`).
#[tokio::test]
async fn peer_addresses_match_ip_blocks_and_allow_rules_add_headers() {
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    let dir = tempfile::tempdir().unwrap();
    let (policy, _) = configs(
        &dir,
        "rules:\n  - {name: blocked, action: DENY, source: {ip_blocks: [10.9.0.0/16]}}\n  - {name: tagged, action: ALLOW, add_headers: {x-policy: tagged, x-checked: 'yes'}}\n",
        "domain: edge\n",
    );
    let engine = PolicyEngine::new(PolicySettings {
        policy_files: vec![policy],
        ..Default::default()
    })
    .unwrap();
    let s = PolicyServer::new(Arc::new(engine), Metrics::new(), 100);
    let svc = authz::AuthzService { server: s };
    let from = |ip: &str| {
        let mut r = check("/api", None);
        r.attributes.as_mut().unwrap().source = Some(attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        });
        Request::new(r)
    };
    let denied = svc.check(from("10.9.1.2")).await.unwrap().into_inner();
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("{denied:?}")
    };
    assert_eq!(
        (d.status.unwrap().code, d.body.as_str()),
        (403, "denied by rule blocked")
    );
    let ok = svc.check(from("10.8.1.2")).await.unwrap().into_inner();
    let Some(HttpResponse::OkResponse(okr)) = ok.http_response else {
        panic!("{ok:?}")
    };
    let mut added: Vec<(String, String)> = okr
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    added.sort();
    assert_eq!(
        added,
        [
            ("x-checked".to_string(), "yes".to_string()),
            ("x-policy".to_string(), "tagged".to_string())
        ]
    );
}
