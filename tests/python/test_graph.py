"""The service graph from the real OpenTelemetry Python SDK: three services export their own spans
over OTLP/gRPC (servers' exports before their clients'), and meshlens' /api/graph, /api/services
and /metrics show the calls between them, their failures, versions and latencies."""

from __future__ import annotations

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlhelpers import get_json, metric, poll

REQUESTS = 20
FAIL_EVERY = 4  # payments fails one call in four
MS = 1_000_000
T0 = 1_700_000_000_000_000_000  # span timestamps; windows follow arrival time, not these


def provider(ml, name: str, version: str) -> TracerProvider:
    p = TracerProvider(resource=Resource.create(
        {"service.name": name, "service.namespace": "shop", "service.version": version}))
    p.add_span_processor(BatchSpanProcessor(GrpcExporter(endpoint=ml.otlp_grpc, insecure=True)))
    return p


def child_context(span) -> trace_api.Context:
    return trace_api.set_span_in_context(span)


def send_shop_traffic(ml) -> None:
    """frontend (SERVER root) → checkout → payments, plus checkout's database call. Every span has
    explicit times so latencies are known: payments' server span takes 2 ms."""
    front = provider(ml, "frontend", "v1")
    checkout = provider(ml, "checkout", "v1")
    payments = provider(ml, "payments", "v2")
    tf, tc, tp = (p.get_tracer("graph-e2e") for p in (front, checkout, payments))
    for i in range(REQUESTS):
        t = T0 + i * 100 * MS
        failed = i % FAIL_EVERY == 0
        status = 500 if failed else 200
        root = tf.start_span("GET /buy", kind=SpanKind.SERVER, start_time=t,
                             attributes={"http.request.method": "GET", "http.response.status_code": 200})
        call = tf.start_span("POST /checkout", context=child_context(root), kind=SpanKind.CLIENT,
                             start_time=t + MS, attributes={"http.request.method": "POST", "http.response.status_code": 200})
        serve = tc.start_span("POST /checkout", context=child_context(call), kind=SpanKind.SERVER,
                              start_time=t + 2 * MS, attributes={"http.request.method": "POST", "http.response.status_code": 200})
        db = tc.start_span("SELECT carts", context=child_context(serve), kind=SpanKind.CLIENT, start_time=t + 3 * MS,
                           attributes={"db.system": "postgresql", "db.namespace": "carts"})
        db.end(end_time=t + 4 * MS)
        pay = tc.start_span("POST /charge", context=child_context(serve), kind=SpanKind.CLIENT, start_time=t + 5 * MS,
                            attributes={"http.request.method": "POST", "http.response.status_code": status})
        charge = tp.start_span("POST /charge", context=child_context(pay), kind=SpanKind.SERVER, start_time=t + 6 * MS,
                               attributes={"http.request.method": "POST", "http.response.status_code": status})
        if failed:
            charge.set_status(Status(StatusCode.ERROR, "card declined by upstream"))
            pay.set_status(Status(StatusCode.ERROR))
        charge.end(end_time=t + 8 * MS)
        pay.end(end_time=t + 9 * MS)
        serve.end(end_time=t + 10 * MS)
        call.end(end_time=t + 11 * MS)
        root.end(end_time=t + 12 * MS)
    # Servers' exports first: pairing must not depend on which side arrives first.
    for p in (payments, checkout, front):
        assert p.force_flush(10_000), "export did not finish"
        p.shutdown()


def edges_by_pair(graph: dict) -> dict[tuple[str, str], dict]:
    return {(e["source"], e["target"]): e for e in graph["edges"]}


def test_three_services_from_the_sdk_make_the_expected_graph(meshlens):
    send_shop_traffic(meshlens)

    def complete():
        g = get_json(f"{meshlens.web_url}/api/graph", window="1m")
        e = edges_by_pair(g)
        pay = e.get(("service:shop/checkout", "service:shop/payments"))
        return g if pay and pay["stats"]["requests"] == REQUESTS else None

    graph = poll(complete, timeout=15, what="all calls on the graph")
    edges = edges_by_pair(graph)
    assert set(edges) == {
        ("user:user", "service:shop/frontend"),
        ("service:shop/frontend", "service:shop/checkout"),
        ("service:shop/checkout", "service:shop/payments"),
        ("service:shop/checkout", "database:carts"),
    }, graph
    failures = REQUESTS // FAIL_EVERY
    pay = edges[("service:shop/checkout", "service:shop/payments")]
    assert pay["stats"]["failures"] == failures
    assert pay["stats"]["http_5xx"] == failures
    assert pay["health"] == "failure", "25% 5xx is over the 10% failure threshold"
    assert pay["connection_type"] == "http"
    # payments' server spans all take 2 ms; its callers saw 4 ms.
    assert abs(pay["stats"]["latency_ms"]["p99"] - 2.0) <= 0.02, pay["stats"]
    assert abs(pay["stats"]["client_latency_ms"]["p50"] - 4.0) <= 0.04, pay["stats"]
    assert pay["versions"] == [
        {"source_version": "v1", "target_version": "v2", "stats": pay["versions"][0]["stats"]}]
    front = edges[("service:shop/frontend", "service:shop/checkout")]
    assert (front["stats"]["requests"], front["stats"]["failures"], front["health"]) == (REQUESTS, 0, "healthy")
    assert abs(front["stats"]["rps"] - REQUESTS / 60) < 1e-9
    db = edges[("service:shop/checkout", "database:carts")]
    assert (db["connection_type"], db["stats"]["requests"]) == ("database", REQUESTS)
    assert edges[("user:user", "service:shop/frontend")]["stats"]["requests"] == REQUESTS

    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["database:carts"]["kind"] == "database"
    assert nodes["user:user"]["kind"] == "user"
    payments = nodes["service:shop/payments"]
    assert payments["namespace"] == "shop"
    assert [(v["version"], v["share"]) for v in payments["versions"]] == [("v2", 1.0)]

    services = get_json(f"{meshlens.web_url}/api/services", window="1m")
    assert set(services["data"]) == {"frontend", "checkout", "payments"}, "Jaeger's list, from the store"
    red = {s["name"]: s for s in services["services"]}
    assert red["payments"]["stats"]["error_ratio"] == failures / REQUESTS
    assert red["checkout"]["health"] == "healthy"

    # Namespace, service and depth filters.
    near_payments = get_json(f"{meshlens.web_url}/api/graph", service="payments", depth="1")
    assert {n["id"] for n in near_payments["nodes"]} == {"service:shop/checkout", "service:shop/payments"}
    assert get_json(f"{meshlens.web_url}/api/graph", namespace="elsewhere")["nodes"] == []


def test_graph_series_and_self_metrics_on_metrics(meshlens):
    send_shop_traffic(meshlens)
    url = meshlens.web_url
    pair = {"client": "checkout", "server": "payments", "connection_type": "http",
            "client_service_namespace": "shop", "server_service_namespace": "shop"}
    poll(lambda: metric(url, "traces_service_graph_request_total", **pair) == REQUESTS, timeout=15,
         what="service graph counter")
    assert metric(url, "traces_service_graph_request_failed_total", **pair) == REQUESTS // FAIL_EVERY
    assert metric(url, "traces_service_graph_request_server_seconds_count", **pair) == REQUESTS
    # 2 ms server spans: all in the ≤ 2.5 ms bucket, none in ≤ 1 ms (sub-millisecond buckets exist).
    assert metric(url, "traces_service_graph_request_server_seconds_bucket", le="0.0025", **pair) == REQUESTS
    assert metric(url, "traces_service_graph_request_server_seconds_bucket", le="0.001", **pair) == 0
    assert metric(url, "traces_service_graph_request_total", client="user", server="frontend") == REQUESTS
    assert metric(url, "traces_service_graph_request_total", client="checkout", server="carts",
                  connection_type="database") == REQUESTS
    assert metric(url, "traces_spanmetrics_calls_total", service="payments", span_name="POST /charge",
                  span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_ERROR") == REQUESTS // FAIL_EVERY
    assert metric(url, "traces_spanmetrics_latency_count", service="frontend", span_kind="SPAN_KIND_SERVER") == REQUESTS
    # 2 pairs per request (frontend→checkout, checkout→payments), 2 spans each.
    assert metric(url, "meshlens_topology_spans_total", outcome="paired") == 4 * REQUESTS
    assert metric(url, "meshlens_topology_virtual_calls_total") == 2 * REQUESTS  # roots and databases
    assert metric(url, "meshlens_topology_pending_spans") == 0


def test_unpaired_spans_expire_into_virtual_nodes_and_counts(meshlens_factory):
    ml = meshlens_factory("--pairing-ttl", "1s")
    p = provider(ml, "legacy-client", "v9")
    tracer = p.get_tracer("graph-e2e")
    # A client naming a peer that sends no spans, a client naming nothing, and a server whose
    # client never reports.
    named = tracer.start_span("GET /old", kind=SpanKind.CLIENT, attributes={"peer.service": "mainframe"})
    named.end()
    anonymous = tracer.start_span("GET /void", kind=SpanKind.CLIENT)
    anonymous.end()
    parent = tracer.start_span("upstream", kind=SpanKind.INTERNAL)
    orphan = tracer.start_span("GET /orphan", context=child_context(parent), kind=SpanKind.SERVER)
    orphan.end()
    parent.end()
    assert p.force_flush(10_000)
    p.shutdown()

    def virtual_edge():
        g = get_json(f"{ml.web_url}/api/graph", window="1m")
        return edges_by_pair(g).get(("service:shop/legacy-client", "external:mainframe"))

    edge = poll(virtual_edge, timeout=10, what="the expired client to become a virtual edge")
    assert edge["connection_type"] == "virtual_node"
    assert edge["stats"]["requests"] == 1
    assert edge["stats"]["latency_ms"] is not None, "client-side latency stands in for a virtual node"
    poll(lambda: metric(ml.web_url, "meshlens_topology_spans_total", outcome="expired") == 3, timeout=10,
         what="three expirations")
    assert metric(ml.web_url, "meshlens_topology_spans_total", outcome="unpaired") == 2
    assert metric(ml.web_url, "meshlens_topology_pending_spans") == 0


def test_past_windows_survive_a_restart(meshlens_factory):
    """The graph's per-minute history is written as minutes end and read back for `end=` after a
    restart. It waits for the minute of the traffic to end (up to about 70 s)."""
    import time

    ml = meshlens_factory()
    send_shop_traffic(ml)
    time.sleep(0.5)  # the graph thread takes committed spans within milliseconds
    # The spans arrived by now, in this minute or (across a boundary) the one before: a 5-minute
    # window ending with this minute holds them all.
    end = (int(time.time() // 60) + 1) * 60
    pair = ("service:shop/checkout", "service:shop/payments")

    def past_edge():
        g = get_json(f"{ml.web_url}/api/graph", window="5m", end=str(end))
        e = edges_by_pair(g).get(pair)
        return e if e and e["stats"]["requests"] == REQUESTS else None

    before = poll(past_edge, timeout=100, interval=1.0, what="the traffic's minutes in the history")
    assert before["stats"]["failures"] == REQUESTS // FAIL_EVERY
    assert ml.stop() == 0
    ml.start()
    after = past_edge()
    assert after is not None, "the history is read back after a restart"
    assert after["stats"] == before["stats"]
    assert after["versions"] == before["versions"]
