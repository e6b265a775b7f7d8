//! TLS on every listener, with certificates made here: OTLP/gRPC, OTLP/HTTP, Zipkin and the web
//! over TLS; the policy listener over mTLS; plaintext refused; a rotated certificate served to
//! new connections without dropping open ones; a bad new pair refused, the old one kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshlens::config::Config;
use meshlens_tests::certs::{serial_of_der, Ca, Pair};
use meshlens_tests::{now_ns, trace_hex, trace_request, TestEnv};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const SPIFFE: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";

struct Certs {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("meshlens test CA");
        ca.write(dir.path(), "ca");
        ca.server(1).write(dir.path(), "server");
        Certs { dir, ca }
    }

    /// TLS on every listener with the server pair; the policy listener requires client
    /// certificates from the CA.
    fn config(&self) -> impl FnOnce(&mut Config) + '_ {
        let d = self.dir.path();
        move |c: &mut Config| {
            c.tls.cert = d.join("server.crt");
            c.tls.key = d.join("server.key");
            c.tls.policy.client_ca = Some(d.join("ca.crt"));
            c.tls.policy.allowed_identities =
                Some(vec!["spiffe://cluster.local/ns/istio-system/*".into()]);
            c.tls.reload_interval = Duration::from_millis(100);
        }
    }
}

/// A TLS endpoint trusting `ca`, presenting `client`'s certificate if given.
fn tls_endpoint(
    addr: std::net::SocketAddr,
    ca: &Ca,
    client: Option<&Pair>,
) -> tonic::transport::Endpoint {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert_pem))
        .domain_name("localhost");
    if let Some(pair) = client {
        tls = tls.identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
}

async fn tls_channel(addr: std::net::SocketAddr, ca: &Ca, client: Option<&Pair>) -> Channel {
    tls_endpoint(addr, ca, client).connect().await.unwrap()
}

async fn health(ch: Channel) -> Result<i32, tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(ch);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.ratelimit.v3.RateLimitService".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn every_listener_speaks_tls_and_plaintext_is_refused() {
    let certs = Certs::new();
    let env = TestEnv::start_trusting(&[&certs.ca.cert_pem], certs.config()).await;
    let addrs = env.running().addrs;

    // OTLP/gRPC over TLS.
    let ch = tls_channel(addrs.otlp_grpc, &certs.ca, None).await;
    TraceServiceClient::new(ch)
        .export(trace_request("tls-grpc", 1, 2))
        .await
        .expect("export over TLS");
    // OTLP/HTTP over TLS (HTTP/2 or 1.1, as ALPN agrees).
    let r = env.post_otlp(&trace_request("tls-http", 2, 1)).await;
    assert_eq!(r.status(), 200);
    // Zipkin over TLS.
    let zipkin = format!(
        r#"[{{"traceId":"463ac35c9f6413ad48485a3953bb6124","id":"a2fb4a1d1a96d312","name":"get","kind":"SERVER",
        "timestamp":{},"duration":1500,"localEndpoint":{{"serviceName":"tls-zipkin"}}}}]"#,
        now_ns() / 1_000
    );
    let r = env
        .post(env.zipkin("/api/v2/spans"), "application/json", zipkin)
        .await;
    assert_eq!(r.status(), 202);
    // The web over TLS, showing what came in on each.
    assert!(env.web("/").starts_with("https://"));
    for trace in [
        trace_hex(1),
        trace_hex(2),
        "463ac35c9f6413ad48485a3953bb6124".into(),
    ] {
        let (status, body) = env.get_json(&format!("/api/traces/{trace}")).await;
        assert_eq!(status, 200, "{trace}: {body}");
    }

    // Plaintext to a TLS port: refused on every listener.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for addr in [addrs.web, addrs.otlp_http, addrs.zipkin] {
        let r = plain.get(format!("http://{addr}/healthz")).send().await;
        assert!(r.is_err(), "plaintext HTTP to {addr} answered: {r:?}");
    }
    for addr in [addrs.otlp_grpc, addrs.policy] {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let r = TraceServiceClient::new(ch)
            .export(trace_request("plain", 3, 1))
            .await;
        assert!(r.is_err(), "plaintext gRPC to {addr} answered");
    }

    // The policy listener: mTLS. A client certificate from the CA is served…
    let client = certs.ca.client(SPIFFE);
    let ch = tls_channel(addrs.policy, &certs.ca, Some(&client)).await;
    assert_eq!(health(ch).await.unwrap(), 1, "SERVING");
    // …none, or one from another CA, is refused at the handshake.
    let ch = tls_endpoint(addrs.policy, &certs.ca, None).connect_lazy();
    assert!(health(ch).await.is_err(), "no client certificate");
    let stranger = Ca::new("another CA").client(SPIFFE);
    let ch = tls_endpoint(addrs.policy, &certs.ca, Some(&stranger)).connect_lazy();
    assert!(
        health(ch).await.is_err(),
        "a client certificate from another CA"
    );
    // …and so is one from the CA naming a workload that is not allowed to call.
    let workload = certs.ca.client("spiffe://cluster.local/ns/shop/sa/work");
    let ch = tls_endpoint(addrs.policy, &certs.ca, Some(&workload)).connect_lazy();
    assert!(health(ch).await.is_err(), "an identity not allowed");
    env.wait_for_metric(
        "meshlens_listener_refused_connections_total",
        "listener=\"policy\",reason=\"identity\"",
        1.0,
    )
    .await;

    // Each refusal was counted as a failed handshake on its listener (the server counts it once
    // its side of the handshake ends, which may be after the client has seen the refusal).
    for (labels, at_least) in [
        ("listener=\"policy\",reason=\"tls\"", 3.0),
        ("listener=\"web\",reason=\"tls\"", 1.0),
    ] {
        env.wait_for_metric(
            "meshlens_listener_refused_connections_total",
            labels,
            at_least,
        )
        .await;
    }
    let not_after = env
        .metric(
            "meshlens_tls_certificate_not_after_timestamp_seconds",
            "listener=\"web\"",
        )
        .await;
    assert!(not_after > (now_ns() / 1_000_000_000) as f64, "{not_after}");
    env.stop().await;
}

/// The serial number of the certificate a fresh TLS connection to `addr` is served.
async fn served_serial(addr: std::net::SocketAddr, ca: &Ca) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        #[allow(deprecated)]
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap();
    serial_of_der(&chain[0])
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_dropping_connections_and_a_bad_one_is_refused() {
    let certs = Certs::new();
    let env = TestEnv::start_trusting(&[&certs.ca.cert_pem], certs.config()).await;
    let addrs = env.running().addrs;
    let first = Ca::server(&certs.ca, 1).serial();
    assert_eq!(served_serial(addrs.web, &certs.ca).await, first);
    // A connection opened before the rotation…
    let ch = tls_channel(addrs.otlp_grpc, &certs.ca, None).await;
    let mut open = TraceServiceClient::new(ch);
    open.export(trace_request("before", 1, 1)).await.unwrap();

    // …cert-manager writes a new pair in place.
    let second = certs.ca.server(2);
    second.write(certs.dir.path(), "server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(addrs.web, &certs.ca).await != second.serial() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every listener took it.
    for addr in [addrs.otlp_grpc, addrs.otlp_http, addrs.zipkin] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while served_serial(addr, &certs.ca).await != second.serial() {
            assert!(Instant::now() < deadline, "{addr} kept the old certificate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The open connection was not dropped.
    open.export(trace_request("after", 2, 1)).await.unwrap();
    assert!(
        env.metric(
            "meshlens_tls_reloads_total",
            "listener=\"web\",result=\"success\""
        )
        .await
            >= 2.0
    );

    // A bad pair (a key that is not the certificate's) is refused, and the last good one stays.
    let third = certs.ca.server(3);
    let stranger = certs.ca.server(4);
    Pair {
        cert_pem: third.cert_pem.clone(),
        key_pem: stranger.key_pem.clone(),
    }
    .write(certs.dir.path(), "server");
    env.wait_for_metric(
        "meshlens_tls_reloads_total",
        "listener=\"web\",result=\"failure\"",
        1.0,
    )
    .await;
    assert_eq!(served_serial(addrs.web, &certs.ca).await, second.serial());
    open.export(trace_request("still", 3, 1)).await.unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_listener_can_stay_plaintext_and_a_bad_file_stops_the_start() {
    let certs = Certs::new();
    let d = certs.dir.path().to_path_buf();
    let env = TestEnv::start_trusting(&[&certs.ca.cert_pem], |c: &mut Config| {
        c.tls.web.cert = Some(d.join("server.crt"));
        c.tls.web.key = Some(d.join("server.key"));
    })
    .await;
    assert_eq!(env.scheme("web"), "https");
    assert_eq!(env.scheme("otlp_http"), "http");
    let (status, _) = env.get_json("/healthz").await;
    assert_eq!(status, 200);
    let r = env
        .http
        .get(format!(
            "http://{}/v1/traces",
            env.running().addrs.otlp_http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405, "plaintext OTLP/HTTP still answers");
    env.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut c = meshlens_tests::test_config(dir.path());
    c.tls.cert = d.join("server.crt");
    c.tls.key = d.join("missing.key");
    let err = meshlens::start(&c)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("missing.key"), "{err}");
}

/// A connection that never starts a request is closed once the header timeout has passed (it
/// would otherwise hold one of the listener's slots), and counted; a slow request in flight is
/// not idle.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_and_counted() {
    use tokio::io::AsyncReadExt;
    let env = TestEnv::start_with(|c: &mut Config| {
        c.connections.header_read_timeout = Duration::from_millis(300);
        c.connections.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let addrs = env.running().addrs;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addrs.otlp_grpc)
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    // The server closes it: reading (past its HTTP/2 settings) ends in EOF or a reset well
    // before the test's own bound.
    let closed = async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    let read = tokio::time::timeout(Duration::from_secs(10), closed).await;
    assert!(read.is_ok(), "the silent connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(250));
    env.wait_for_metric(
        "meshlens_listener_closed_connections_total",
        "listener=\"otlp_grpc\",reason=\"no_request\"",
        1.0,
    )
    .await;
    // A gRPC channel that exports, then rests past the idle timeout, is closed as idle; a new
    // export reconnects.
    let mut client = env.grpc().await;
    client.export(trace_request("idle", 1, 1)).await.unwrap();
    env.wait_for_metric(
        "meshlens_listener_closed_connections_total",
        "listener=\"otlp_grpc\",reason=\"idle\"",
        1.0,
    )
    .await;
    client.export(trace_request("idle", 2, 1)).await.unwrap();
    env.stop().await;
}

/// Keepalive enforcement: a peer's HTTP/2 PINGs spaced by the minimum time are answered; three
/// that come sooner, with no request between them, close the connection, counted.
#[tokio::test]
async fn a_peer_that_pings_too_often_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start_with(|c: &mut Config| {
        c.connections.keepalive_min_time = Duration::from_millis(200);
    })
    .await;
    let addr = env.running().addrs.otlp_grpc;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    // Reads for `for_how_long`: whether the server closed the connection meanwhile.
    async fn closed_within(conn: &mut tokio::net::TcpStream, for_how_long: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let read = async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(for_how_long, read).await.is_ok()
    }

    let mut polite = tokio::net::TcpStream::connect(addr).await.unwrap();
    polite.write_all(PREFACE).await.unwrap();
    polite.write_all(&settings).await.unwrap();
    for _ in 0..5 {
        polite.write_all(&ping).await.unwrap();
        assert!(
            !closed_within(&mut polite, Duration::from_millis(300)).await,
            "pings spaced by the minimum time are fine"
        );
    }

    let mut flood = tokio::net::TcpStream::connect(addr).await.unwrap();
    flood.write_all(PREFACE).await.unwrap();
    flood.write_all(&settings).await.unwrap();
    for _ in 0..4 {
        flood.write_all(&ping).await.unwrap();
    }
    assert!(
        closed_within(&mut flood, Duration::from_secs(10)).await,
        "a ping flood keeps its connection"
    );
    env.wait_for_metric(
        "meshlens_listener_closed_connections_total",
        "listener=\"otlp_grpc\",reason=\"too_many_pings\"",
        1.0,
    )
    .await;
    assert!(
        !closed_within(&mut polite, Duration::from_millis(100)).await,
        "the polite connection is still open"
    );
    env.stop().await;
}
