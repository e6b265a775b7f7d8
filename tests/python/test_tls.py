"""meshlens exposed with TLS, spoken to by real clients with certificates made here by openssl:
the OpenTelemetry Python SDK exporting over OTLP/gRPC and OTLP/HTTP with TLS, a real Envoy calling
ext_authz and the rate limit service over mTLS (its client certificate from an
UpstreamTlsContext) while its tracer exports OTLP over TLS, and Debian's Prometheus scraping
/metrics over HTTPS."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as ProtoHttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from envoyhelpers import mesh, policy_envoy, run_envoy
from mlhelpers import LOOPBACK, free_ports, fresh_minute, get_json, metric, poll

OPENSSL = shutil.which("openssl")
PROMETHEUS = shutil.which("prometheus")
SPIFFE = "spiffe://cluster.local/ns/shop/sa/work"


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL, "openssl is needed (Debian package openssl)"
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def leaf(d: Path, name: str, ext: str) -> None:
    """An EC key and a certificate for it signed by the CA in `d`, with the extensions `ext`."""
    (d / f"{name}.ext").write_text(ext)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture
def pki(tmp_path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate naming a
    SPIFFE id (as Istio's are)."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=meshlens e2e CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    leaf(d, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    leaf(d, "client", f"subjectAltName=URI:{SPIFFE}\nextendedKeyUsage=clientAuth\n")
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


INGEST_TOKEN = "e2e-ingest-token-0123456789abcdef"
WEB_TOKEN = "e2e-web-token-0123456789abcdef"


def tls_meshlens(meshlens_factory, pki: Pki, *extra: str, tokens: bool = False, command: str = "serve",
                 config: str = ""):
    """meshlens with TLS on every listener; with `tokens`, ingest and the web need bearer tokens;
    `config` is more of its config file."""
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    if tokens:
        (pki.dir / "ingest-tokens").write_text(f"{INGEST_TOKEN} e2e\n")
        (pki.dir / "web-tokens").write_text(f"{WEB_TOKEN} viewer\n")
        config = (f'[auth]\ningest_tokens_file = "{pki.dir / "ingest-tokens"}"\n'
                  f'web_tokens_file = "{pki.dir / "web-tokens"}"\n') + config
    if config:
        (pki.dir / "meshlens.toml").write_text(config)
        args += ["--config", str(pki.dir / "meshlens.toml")]
    ml = meshlens_factory(*args, *extra, tls_ca=pki.ca, command=command)
    if tokens:
        ml.http.headers["authorization"] = f"Bearer {WEB_TOKEN}"
    return ml


def export_one(exporter, service: str, name: str) -> str:
    """Exports one span through the SDK; returns its trace id as the API prints it."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("meshlens.e2e.tls").start_as_current_span(name, kind=SpanKind.SERVER) as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_id


def test_the_otel_sdk_exports_over_tls_with_a_token_and_without_either_is_refused(meshlens_factory, pki):
    ml = tls_meshlens(meshlens_factory, pki, tokens=True)
    ca = pki.ca.read_bytes()
    auth = {"authorization": f"Bearer {INGEST_TOKEN}"}
    grpc_id = export_one(GrpcExporter(endpoint=f"https://{ml.otlp_grpc}", headers=auth,
                                      credentials=grpc.ssl_channel_credentials(root_certificates=ca)),
                         "tls-grpc", "over-grpc")
    http_id = export_one(ProtoHttpExporter(endpoint=ml.traces_url, certificate_file=str(pki.ca), headers=auth),
                         "tls-http", "over-http")
    assert ml.traces_url.startswith("https://")
    for trace_id, service in [(grpc_id, "tls-grpc"), (http_id, "tls-http")]:
        body = get_json(f"{ml.web_url}/api/traces/{trace_id}", session=ml.http)
        process = body["data"][0]["processes"]["p1"]
        assert process["serviceName"] == service, body
        assert {"key": "meshlens.tenant", "type": "string", "value": "e2e"} in process["tags"], process

    # Without the token, without TLS, or trusting another CA: nothing is delivered.
    lost = [
        export_one(GrpcExporter(endpoint=f"https://{ml.otlp_grpc}", timeout=3,
                                credentials=grpc.ssl_channel_credentials(root_certificates=ca)), "anon", "x"),
        export_one(ProtoHttpExporter(endpoint=ml.traces_url, certificate_file=str(pki.ca), timeout=3), "anon", "x"),
        export_one(GrpcExporter(endpoint=f"http://{ml.otlp_grpc}", insecure=True, timeout=3), "plain", "x"),
        export_one(ProtoHttpExporter(endpoint=f"http://{ml.otlp_http}/v1/traces", timeout=3), "plain", "x"),
        export_one(ProtoHttpExporter(endpoint=ml.traces_url, certificate_file=str(Path(requests.certs.where())),
                                     timeout=3), "plain", "x"),
    ]
    for trace_id in lost:
        get_json(f"{ml.web_url}/api/traces/{trace_id}", expect=404, session=ml.http)
    poll(lambda: metric(ml.web_url, "meshlens_listener_refused_connections_total", session=ml.http,
                        listener="otlp_http", reason="tls") >= 2, timeout=10, what="the refused handshakes counted")
    for protocol in ("otlp_grpc", "otlp_http"):
        assert metric(ml.web_url, "meshlens_ingest_rejected_requests_total", session=ml.http,
                      protocol=protocol, reason="unauthenticated") >= 1
    # The web itself: HTTPS only.
    with pytest.raises(requests.RequestException):
        requests.get(f"http://{ml.web}/healthz", timeout=3)


RATELIMIT_CONFIG = """\
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1}
"""
POLICY = """\
rules:
  - name: no-admin
    action: DENY
    destinations: [work]
    operation: {paths: ["/admin*"]}
"""


def tls_socket(pki: Pki, with_client_cert: bool) -> str:
    """An UpstreamTlsContext trusting the CA, checking the server's name, offering h2, and
    presenting the client certificate if asked."""
    client = f"""
          tls_certificates:
          - certificate_chain: {{filename: "{pki.client_cert}"}}
            private_key: {{filename: "{pki.client_key}"}}""" if with_client_cert else ""
    return f"""
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]{client}
          validation_context:
            trusted_ca: {{filename: "{pki.ca}"}}
            match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: localhost}}}}]"""


def envoy_config(admin: int, port: int, app_port: int, ml, pki: Pki, with_client_cert: bool) -> str:
    """The policy test's sidecar, with mTLS to the policy listener and its tracer exporting
    OTLP over TLS."""
    otlp_port = int(ml.otlp_grpc.rsplit(":", 1)[1])
    policy_port = int(ml.policy.rsplit(":", 1)[1])
    socket = tls_socket(pki, with_client_cert)
    return policy_envoy(
        admin, port, app_port, policy_port, trace=mesh.tracing("work", "v1"), policy_extra=socket,
        extra_clusters=mesh.cluster("meshlens_otlp", LOOPBACK, otlp_port, http2=True, extra=socket),
        runtime="""
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.flush_interval_ms: 200
      tracing.opentelemetry.min_flush_spans: 1""")


@contextlib.contextmanager
def envoy(ml, app_port: int, pki: Pki, tmp_path: Path, with_client_cert: bool):
    port, admin = free_ports(2)
    config = envoy_config(admin, port, app_port, ml, pki, with_client_cert)
    name = "envoy-mtls" if with_client_cert else "envoy-no-cert"
    with run_envoy(config, admin, tmp_path, name):
        yield f"http://{LOOPBACK}:{port}"


def test_the_demo_runs_behind_tls_mtls_and_tokens(meshlens_factory, pki):
    """`meshlens demo` feeds its mesh in process, so what its listeners ask of clients (TLS,
    a client certificate on OTLP/gRPC, an ingest token) does not stop it."""
    ml = tls_meshlens(meshlens_factory, pki, "--rate", "40", tokens=True, command="demo",
                      config=f'[tls.otlp_grpc]\nclient_ca = "{pki.ca}"\n')

    def demo_edge():
        g = get_json(f"{ml.web_url}/api/graph", session=ml.http, window="1m")
        e = {(x["source"], x["target"]): x for x in g["edges"]}
        edge = e.get(("service:demo/ingress", "service:demo/work"))
        return edge if edge and edge["stats"]["requests"] >= 40 else None

    poll(demo_edge, timeout=30, interval=0.5, what="the demo's calls into work on the graph")
    assert metric(ml.web_url, "meshlens_ingest_spans_total", session=ml.http, protocol="otlp_grpc") > 0
    # The listener still asks a client for everything: no client certificate, no export.
    ca = pki.ca.read_bytes()
    lost = export_one(GrpcExporter(endpoint=f"https://{ml.otlp_grpc}", timeout=3,
                                   headers={"authorization": f"Bearer {INGEST_TOKEN}"},
                                   credentials=grpc.ssl_channel_credentials(root_certificates=ca)),
                      "no-client-cert", "x")
    get_json(f"{ml.web_url}/api/traces/{lost}", session=ml.http, expect=404)
    assert metric(ml.web_url, "meshlens_listener_refused_connections_total", session=ml.http,
                  listener="otlp_grpc", reason="tls") >= 1


def test_envoy_calls_the_policy_over_mtls_and_traces_over_tls(meshlens_factory, app_port, pki, tmp_path):
    rl = tmp_path / "ratelimit"
    rl.mkdir()
    (rl / "edge.yaml").write_text(RATELIMIT_CONFIG)
    (tmp_path / "policy.yaml").write_text(POLICY)
    config = tmp_path / "meshlens.toml"
    # Only the shop namespace's proxies may ask the policy (the Envoy's certificate names
    # spiffe://cluster.local/ns/shop/sa/work).
    config.write_text(f'[tls.policy]\nclient_ca = "{pki.ca}"\nallowed_identities = ["spiffe://cluster.local/ns/shop/*"]\n')
    ml = tls_meshlens(meshlens_factory, pki, "--config", str(config), "--ratelimit-dir", str(rl),
                      "--policy-file", str(tmp_path / "policy.yaml"))
    web = ml.web_url

    with envoy(ml, app_port, pki, tmp_path, with_client_cert=True) as base:
        s = requests.Session()
        assert s.get(f"{base}/orders", timeout=5).status_code == 200
        denied = s.get(f"{base}/admin/users", timeout=5)
        assert (denied.status_code, denied.text) == (403, "denied by rule no-admin")
        fresh_minute()
        got = [s.get(f"{base}/orders", headers={"x-user": "ann"}, timeout=5).status_code for _ in range(2)]
        assert got == [200, 429], got
        # The tracer's spans arrived over TLS too.
        services = poll(lambda: "work" in get_json(f"{web}/api/services", session=ml.http)["data"]
                        and get_json(f"{web}/api/services", session=ml.http)["data"], timeout=15,
                        what="Envoy's spans over OTLP/TLS")
        assert "work" in services
    assert metric(web, "meshlens_policy_checks_total", session=ml.http, api="ext_authz", decision="deny") == 1
    assert metric(web, "meshlens_policy_checks_total", session=ml.http, api="ratelimit", decision="over_limit") >= 1

    # An Envoy without a client certificate cannot reach the policy: its checks fail and it
    # refuses (ext_authz fails closed here), and meshlens counts the refused handshakes.
    refused_before = metric(web, "meshlens_listener_refused_connections_total", session=ml.http,
                            listener="policy", reason="tls")
    checks_before = metric(web, "meshlens_policy_checks_total", session=ml.http)
    with envoy(ml, app_port, pki, tmp_path, with_client_cert=False) as base:
        r = requests.get(f"{base}/orders", timeout=5)
        assert r.status_code == 403, r.text
    poll(lambda: metric(web, "meshlens_listener_refused_connections_total", session=ml.http,
                        listener="policy", reason="tls") > refused_before,
         timeout=10, what="the refused handshakes counted")
    assert metric(web, "meshlens_policy_checks_total", session=ml.http) == checks_before


def test_prometheus_scrapes_metrics_over_https_with_a_bearer_token(meshlens_factory, pki, tmp_path):
    assert PROMETHEUS, "prometheus is needed (Debian package prometheus)"
    ml = tls_meshlens(meshlens_factory, pki, tokens=True)
    (tmp_path / "token").write_text(WEB_TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: meshlens
    scheme: https
    tls_config: {{ca_file: "{pki.ca}", server_name: localhost}}
    authorization: {{credentials_file: "{tmp_path / 'token'}"}}
    static_configs: [{{targets: ["{ml.web}"]}}]
  - job_name: anonymous
    scheme: https
    tls_config: {{ca_file: "{pki.ca}", server_name: localhost}}
    static_configs: [{{targets: ["{ml.web}"]}}]
""")
    port = free_ports(1)[0]
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        def scraped():
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                r = requests.get(f"http://{LOOPBACK}:{port}/api/v1/query", timeout=2,
                                 params={"query": 'meshlens_tls_reloads_total{job="meshlens",listener="web",result="success"}'})
            except requests.RequestException:
                return None
            result = r.json()["data"]["result"] if r.ok else []
            return result or None
        result = poll(scraped, timeout=30, interval=0.5, what="Prometheus scraping meshlens over HTTPS")
        assert float(result[0]["value"][1]) == 1.0
        up = requests.get(f"http://{LOOPBACK}:{port}/api/v1/query", params={"query": 'up{job="meshlens"}'},
                          timeout=2).json()["data"]["result"]
        assert up[0]["value"][1] == "1", up
        # The job without the token is refused (401): its target is down.
        def anonymous_down():
            r = requests.get(f"http://{LOOPBACK}:{port}/api/v1/query", params={"query": 'up{job="anonymous"}'},
                             timeout=2).json()["data"]["result"]
            return r and r[0]["value"][1] == "0"
        poll(anonymous_down, timeout=10, interval=0.5, what="the anonymous scrape to be refused")
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
