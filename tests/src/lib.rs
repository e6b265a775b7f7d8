//! A test environment: meshlens started in-process on port 0 with a temporary SQLite file
//! (or a fresh PostgreSQL schema), and helpers to talk to it over real sockets.
#![forbid(unsafe_code)]

pub mod certs;
pub mod servers;

use std::time::Duration;

use meshlens::config::Config;
use meshlens::Running;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value;
use tonic::transport::Channel;

pub struct TestEnv {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub http: reqwest::Client,
}

/// Every listener on an ephemeral loopback port.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    let any = "127.0.0.1:0".parse().unwrap();
    c.listen.otlp_grpc = any;
    c.listen.otlp_http = any;
    c.listen.zipkin = any;
    c.listen.policy = any;
    c.listen.web = any;
    c.storage.database_url = format!("sqlite://{}", dir.join("meshlens.db").display());
    // In process, the memory is the test harness's too (a caught panic's backtrace alone takes
    // hundreds of MiB of a debug build): the limiter's own test turns it on.
    c.memory.enabled = false;
    c
}

impl TestEnv {
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestEnv {
        Self::start_trusting(&[], f).await
    }

    /// Starts meshlens with `f`'s config; the env's HTTP client trusts the PEM CAs `roots` (for
    /// listeners that speak TLS).
    pub async fn start_trusting(roots: &[&str], f: impl FnOnce(&mut Config)) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        f(&mut config);
        let running = meshlens::start(&config).await.expect("meshlens starts");
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(20));
        for root in roots {
            http =
                http.add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap());
        }
        TestEnv {
            running: Some(running),
            dir,
            config,
            http: http.build().unwrap(),
        }
    }

    /// `https` if the listener speaks TLS, else `http`.
    pub fn scheme(&self, listener: &str) -> &'static str {
        match self.config.tls.for_listener(listener) {
            Ok(Some(_)) => "https",
            _ => "http",
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn web(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            self.scheme("web"),
            self.running().addrs.web
        )
    }

    pub fn otlp_http(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            self.scheme("otlp_http"),
            self.running().addrs.otlp_http
        )
    }

    pub fn zipkin(&self, path: &str) -> String {
        format!(
            "{}://{}{path}",
            self.scheme("zipkin"),
            self.running().addrs.zipkin
        )
    }

    pub async fn grpc(&self) -> TraceServiceClient<Channel> {
        let url = format!("http://{}", self.running().addrs.otlp_grpc);
        TraceServiceClient::connect(url)
            .await
            .expect("grpc connects")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(self.web(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.web("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One metric's value from `/metrics`, summed over series whose labels contain `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// POSTs `body` to `url` with this content type.
    pub async fn post(
        &self,
        url: String,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Exports `request` over OTLP/HTTP protobuf.
    pub async fn post_otlp(&self, request: &ExportTraceServiceRequest) -> reqwest::Response {
        let body = prost::Message::encode_to_vec(request);
        self.post(self.otlp_http("/v1/traces"), "application/x-protobuf", body)
            .await
    }

    /// `/readyz`'s status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let r = self.http.get(self.web("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Polls `/readyz` until it answers `status` (bounded at 40 s); returns its body.
    pub async fn wait_ready(&self, status: u16) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            let (got, body) = self.readyz().await;
            if got == status {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz stayed {got}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most 10 s) until `metric(name, labels)` is at least `at_least`: the server may
    /// count an event just after the client has seen it.
    pub async fn wait_for_metric(&self, name: &str, labels: &str, at_least: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.metric(name, labels).await < at_least {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}{{{labels}}} did not reach {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn str_kv(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// A trace id from a number, as OTLP bytes.
pub fn trace_bytes(n: u64) -> Vec<u8> {
    let mut b = vec![0x11; 8];
    b.extend_from_slice(&n.to_be_bytes());
    b
}

pub fn span_bytes(n: u64) -> Vec<u8> {
    let mut b = n.to_be_bytes().to_vec();
    b[0] = 0x22;
    b
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An OTLP span of `service`, a child of `parent` when given.
pub fn otlp_span(trace: u64, id: u64, parent: Option<u64>, name: &str, start_ns: u64) -> Span {
    Span {
        trace_id: trace_bytes(trace),
        span_id: span_bytes(id),
        parent_span_id: parent.map(span_bytes).unwrap_or_default(),
        name: name.into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + 1_000_000,
        attributes: vec![
            str_kv("http.method", "GET"),
            kv("http.status_code", any_value::Value::IntValue(200)),
        ],
        status: Some(Status::default()),
        ..Default::default()
    }
}

/// A request carrying `spans` of one service.
pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            &[("service.name", service), ("service.version", "v1")],
            spans,
        )],
    }
}

/// `spans` of one resource with these attributes.
pub fn resource_spans(resource: &[(&str, &str)], spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: resource.iter().map(|(k, v)| str_kv(k, v)).collect(),
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A trace of `n` spans, all under one root.
pub fn trace_request(service: &str, trace: u64, n: u64) -> ExportTraceServiceRequest {
    let t0 = now_ns();
    let spans = (1..=n)
        .map(|i| {
            otlp_span(
                trace,
                i,
                (i > 1).then_some(1),
                &format!("op{}", i % 3),
                t0 + i,
            )
        })
        .collect();
    request(service, spans)
}

/// The hex form the API uses for `trace_bytes(n)`.
pub fn trace_hex(n: u64) -> String {
    hex::encode(trace_bytes(n))
}

pub use meshlens_policy::testing::fresh_minute;

/// A protobuf POST to `path` that declares `length` bytes and has sent only `first` of them.
pub async fn open_post(
    addr: std::net::SocketAddr,
    path: &str,
    length: usize,
    first: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    s
}

/// A raw HTTP/2 stream of an OTLP/gRPC `Export` to `addr`, its body left open for the test to
/// send (in parts, or never whole); the connection's task is aborted with the returned handle.
pub async fn open_grpc_export(
    addr: std::net::SocketAddr,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post(format!(
        "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (answer, body) = client.send_request(req, false).unwrap();
    (answer, body, conn)
}

impl TestEnv {
    /// Each of these traces (`trace_request`'s) was refused: none of it is stored.
    pub async fn assert_not_stored(&self, traces: &[u64]) {
        for &trace in traces {
            let (status, _) = self
                .get_json(&format!("/api/traces/{}", trace_hex(trace)))
                .await;
            assert_eq!(status, 404, "trace {trace} was refused, never stored");
        }
    }
}
