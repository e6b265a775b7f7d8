//! Authentication over real sockets: web tokens with roles, the login cookie, a trusted proxy's
//! user header, and ingest tokens (with a tenant) on every receiver.

use std::path::Path;
use std::time::Duration;

use meshlens::config::Config;
use meshlens_tests::{now_ns, otlp_span, resource_spans, trace_hex, trace_request, TestEnv};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;

const VIEWER: &str = "viewer-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const INGEST: &str = "ingest-token-0123456789abcdef";
const SHOP: &str = "shop-token-0123456789abcdef";

fn write_tokens(dir: &Path) {
    std::fs::write(
        dir.join("web-tokens"),
        format!("# web\n{VIEWER} viewer\n{ADMIN} admin\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("ingest-tokens"),
        format!("{INGEST}\n{SHOP} shop\n"),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), "rules: []\n").unwrap();
}

fn auth_config(dir: &Path) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.auth.web_tokens_file = dir.join("web-tokens");
        c.auth.ingest_tokens_file = dir.join("ingest-tokens");
        c.auth.reload_interval = Duration::from_millis(100);
        c.policy.policy_files = vec![dir.join("policy.yaml")];
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_web_needs_a_token_or_a_login_and_roles_decide_what_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    write_tokens(dir.path());
    let env = TestEnv::start_with(auth_config(dir.path())).await;
    let http = client();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.get(env.web(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // Probes stay open; everything else needs a credential.
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/readyz", None).await.unwrap().status(), 200);
    let r = get("/api/services", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"meshlens\"");
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(
        get("/api/services", Some("wrong-token-000000000"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(get("/metrics", None).await.unwrap().status(), 401);
    assert_eq!(get("/metrics", Some(VIEWER)).await.unwrap().status(), 200);
    let page = get("/topology", None).await.unwrap();
    assert_eq!(page.status(), 401);
    let html = page.text().await.unwrap();
    assert!(html.contains("action=\"/login\""), "{html}");
    assert!(
        html.contains("value=\"/topology\""),
        "comes back after the login: {html}"
    );

    // Viewers see config files by name and denials without paths; admins see them whole.
    let viewer: Value = get("/api/policy", Some(VIEWER))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(viewer["policy_files"], serde_json::json!(["policy.yaml"]));
    let admin: Value = get("/api/policy", Some(ADMIN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let full = dir.path().join("policy.yaml").display().to_string();
    assert_eq!(admin["policy_files"], serde_json::json!([full]));

    // Reloading the policy is for admins.
    let reload = |token: &'static str| {
        http.post(env.web("/api/policy/reload"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(reload(VIEWER).await.unwrap().status(), 403);
    let r = reload(ADMIN).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "unchanged");

    // The login: a wrong token is refused, a right one gives a session cookie that the pages
    // and the API accept, until the logout.
    let login = |token: &str| {
        http.post(env.web("/login"))
            .form(&[("token", token), ("next", "/traces?service=a")])
            .send()
    };
    assert_eq!(login("wrong-token-000000000").await.unwrap().status(), 401);
    let r = login(VIEWER).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/traces?service=a");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plaintext listener: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| {
        http.get(env.web(path))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(with_cookie("/api/graph").await.unwrap().status(), 200);
    assert_eq!(with_cookie("/topology").await.unwrap().status(), 200);
    // A login posted from another site is refused.
    let r = http
        .post(env.web("/login"))
        .header("origin", "https://evil.example")
        .form(&[("token", VIEWER)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(env.web("/logout"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(with_cookie("/api/graph").await.unwrap().status(), 401);

    // The tokens file is re-read: a removed token stops working, a new one starts.
    std::fs::write(
        dir.path().join("web-tokens"),
        format!("{ADMIN} admin\nfresh-token-0123456789abcdef viewer\n"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get("/api/services", Some(VIEWER)).await.unwrap().status() != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the file was not re-read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get("/api/services", Some("fresh-token-0123456789abcdef"))
            .await
            .unwrap()
            .status(),
        200
    );
    env.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_user() {
    let env = TestEnv::start_with(|c: &mut Config| {
        c.auth.proxy_user_header = "X-Forwarded-User".into();
        c.auth.proxy_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        c.auth.proxy_admin_users = vec!["alice".into()];
    })
    .await;
    let http = client();
    let as_user = |user: &str| {
        http.post(env.web("/api/policy/reload"))
            .header("x-forwarded-user", user)
            .send()
    };
    assert_eq!(as_user("alice").await.unwrap().status(), 200);
    assert_eq!(as_user("bob").await.unwrap().status(), 403, "a viewer");
    let r = http.get(env.web("/api/services")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no user header");
    env.stop().await;

    // The header alone, from addresses not listed, is not trusted.
    let env = TestEnv::start_with(|c: &mut Config| {
        c.auth.proxy_user_header = "X-Forwarded-User".into();
        c.auth.proxy_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    let r = http
        .get(env.web("/api/services"))
        .header("x-forwarded-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    env.stop().await;
}

#[tokio::test]
async fn every_receiver_needs_an_ingest_token_and_a_tenant_stays_on_its_spans() {
    let dir = tempfile::tempdir().unwrap();
    write_tokens(dir.path());
    let env = TestEnv::start_with(auth_config(dir.path())).await;
    let http = client();
    let addrs = env.running().addrs;

    // OTLP/gRPC: UNAUTHENTICATED without the token's metadata.
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", addrs.otlp_grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = TraceServiceClient::new(ch);
    let refused = grpc
        .export(trace_request("nobody", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut req = tonic::Request::new(trace_request("tenant-grpc", 2, 2));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {SHOP}").parse().unwrap());
    grpc.export(req).await.expect("a token");

    // OTLP/HTTP, Zipkin and remote write: 401.
    let body = prost::Message::encode_to_vec(&trace_request("nobody", 3, 1));
    let post = |url: String, ct: &'static str, token: Option<&'static str>| {
        let mut r = http.post(url).header("content-type", ct).body(body.clone());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = post(env.otlp_http("/v1/traces"), "application/x-protobuf", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let status: tonic_types::Status = prost::Message::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, tonic::Code::Unauthenticated as i32);
    let r = post(env.zipkin("/api/v2/spans"), "application/json", None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(
        env.otlp_http("/api/v1/write"),
        "application/x-protobuf",
        Some("not-a-token-0000000000"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = post(
        env.otlp_http("/v1/traces"),
        "application/x-protobuf",
        Some(INGEST),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    // A token without a tenant: a `meshlens.tenant` the sender set itself is taken away.
    let forged = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            &[("service.name", "forger"), ("meshlens.tenant", "shop")],
            vec![otlp_span(4, 1, None, "op", now_ns())],
        )],
    };
    let r = http
        .post(env.otlp_http("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(INGEST)
        .body(prost::Message::encode_to_vec(&forged))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let http_ok = |path: &str| http.get(env.web(path)).bearer_auth(VIEWER).send();
    // The process (resource) of trace `n`'s first span, with its tags.
    let process_of = |n: u64| async move {
        let trace: Value = http_ok(&format!("/api/traces/{}", trace_hex(n)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let process = trace["data"][0]["processes"]["p1"].clone();
        let tags = process["tags"].as_array().cloned().unwrap_or_default();
        (trace, process, tags)
    };
    // Only what came with a token was stored; the tenant of the token rides on the spans.
    let (refused, _, _) = process_of(1).await;
    assert_eq!(refused["errors"][0]["code"], 404);
    let (_, _, tags) = process_of(2).await;
    assert!(
        tags.iter()
            .any(|t| t["key"] == "meshlens.tenant" && t["value"] == "shop"),
        "{tags:?}"
    );
    let (forged, process, tags) = process_of(4).await;
    assert_eq!(process["serviceName"], "forger", "{forged}");
    assert!(
        !tags.iter().any(|t| t["key"] == "meshlens.tenant"),
        "{tags:?}"
    );
    let text = http_ok("/metrics").await.unwrap().text().await.unwrap();
    for protocol in ["otlp_grpc", "otlp_http", "zipkin", "prom_remote_write"] {
        let line = format!(
            "meshlens_ingest_rejected_requests_total{{protocol=\"{protocol}\",reason=\"unauthenticated\"}} 1"
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    env.stop().await;
}

/// DNS rebinding: a page that points its own name at meshlens' loopback address sends that
/// name as the host, and is refused; IP literals, `localhost` and listed names are answered.
#[tokio::test]
async fn a_loopback_web_answers_only_hosts_that_cannot_be_rebound() {
    let env = TestEnv::start().await;
    let http = client();
    let port = env.running().addrs.web.port();
    let with_host = |host: String| {
        http.get(env.web("/api/services"))
            .header("host", host)
            .send()
    };
    let r = with_host(format!("evil.example:{port}")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("allowed_hosts"));
    assert_eq!(
        with_host(format!("localhost:{port}"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        with_host(format!("127.0.0.1:{port}"))
            .await
            .unwrap()
            .status(),
        200
    );
    env.stop().await;

    let env = TestEnv::start_with(|c: &mut Config| {
        c.auth.allowed_hosts = vec!["meshlens.example.com".into()];
    })
    .await;
    let r = http
        .get(env.web("/api/services"))
        .header("host", "meshlens.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    env.stop().await;
}
