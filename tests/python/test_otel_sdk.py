"""The real OpenTelemetry Python SDK exporting to meshlens over OTLP/gRPC, OTLP/HTTP protobuf and
OTLP/HTTP JSON, and every detail read back through the Jaeger v1 query API."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.common.http import Compression as JsonHttpCompression
from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter as JsonHttpExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as ProtoHttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as ProtoHttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from mlhelpers import get_json, get_trace, metric, tags_dict

SCOPE = "meshlens.e2e.sdk"

# Every attribute type the SDK accepts, with edge values: an int beyond 2^53 (JSON numbers lose it
# if anything on the way goes through a double), a negative int, a float, a float with no fraction.
SERVER_ATTRS = {
    "http.route": "/checkout",
    "http.request.method": "GET",
    "url.full": "http://shop.local/checkout?cart=42&x=\"quoted\"",
    "e2e.unicode": "naïve café ✓",
    "e2e.flag": True,
    "e2e.flag_false": False,
    "e2e.count": 42,
    "e2e.big": 9_007_199_254_740_993,
    "e2e.negative": -7,
    "e2e.ratio": 0.125,
    "e2e.whole_float": 2.0,
    "e2e.tags": ["alpha", "beta", "gamma"],
    "e2e.ints": [1, 2, 3],
}
CLIENT_ATTRS = {
    "peer.service": "inventory",
    "http.response.status_code": 503,
    "server.address": "inventory.local",
}
INTERNAL_ATTRS = {
    "price.currency": "EUR",
    "price.cents": 1999,
    "price.discounted": True,
    "price.rate": 0.2,
    "price.codes": ["SUMMER", "VIP"],
}
EVENT_ATTRS = {
    "retry.attempt": 2,
    "retry.reason": "timeout",
    "retry.backoff_s": 0.5,
    "retry.final": False,
}
ERROR_DESCRIPTION = "inventory unavailable: 503"


class RecordingExporter(SpanExporter):
    """Delegates to a real exporter and remembers what it exported and how that went."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.spans = []
        self.results = []
        self.lock = threading.Lock()

    def export(self, spans):
        result = self.inner.export(spans)
        with self.lock:
            self.spans.extend(spans)
            self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def make_exporter(protocol: str, gzip: bool, ml):
    if protocol == "otlp_grpc":
        return GrpcExporter(endpoint=f"http://{ml.otlp_grpc}", insecure=True, timeout=10,
                            compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression)
    if protocol == "otlp_http_protobuf":
        return ProtoHttpExporter(endpoint=ml.traces_url, timeout=10,
                                 compression=ProtoHttpCompression.Gzip if gzip else ProtoHttpCompression.NoCompression)
    if protocol == "otlp_http_json":
        return JsonHttpExporter(endpoint=ml.traces_url, timeout=10,
                                compression=JsonHttpCompression.GZIP if gzip else JsonHttpCompression.NONE)
    raise ValueError(protocol)


METRIC_PROTOCOL = {
    "otlp_grpc": "otlp_grpc",
    "otlp_http_protobuf": "otlp_http",
    "otlp_http_json": "otlp_http",
}


def expected_tag(value):
    """The Jaeger (type, value) an OTLP attribute value should become."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int64", value)
    if isinstance(value, float):
        return ("float64", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, (list, tuple)):
        return ("string", list(value))  # arrays become JSON text; compared parsed
    raise TypeError(value)


def assert_tags(tags: list[dict], expected: dict, where: str):
    got = tags_dict(tags)
    assert set(got) == set(expected), f"{where}: tag keys differ: got {sorted(got)}, want {sorted(expected)}"
    for key, value in expected.items():
        want_type, want_value = expected_tag(value)
        got_type, got_value = got[key]
        assert got_type == want_type, f"{where}: tag {key}: type {got_type!r}, want {want_type!r}"
        if isinstance(want_value, list):
            assert isinstance(got_value, str), f"{where}: tag {key}: array should be JSON text, got {got_value!r}"
            assert json.loads(got_value) == want_value, f"{where}: tag {key}: {got_value!r} != {want_value!r}"
        else:
            assert got_value == want_value and type(got_value) is type(want_value) or (
                isinstance(want_value, float) and isinstance(got_value, (int, float)) and got_value == want_value
            ), f"{where}: tag {key}: value {got_value!r}, want {want_value!r}"


def emit_trace(tracer):
    """SERVER → CLIENT (error, event, link) → INTERNAL, plus a separate span the CLIENT links to.
    Times are explicit and deliberately not whole microseconds, to check the ns → µs truncation."""
    t0 = time.time_ns() - 5_000_000_000
    linked = tracer.start_span("nightly-reindex", kind=SpanKind.PRODUCER, start_time=t0 + 7)
    linked.set_attribute("job.id", "reindex-7")
    linked.end(end_time=t0 + 400_009)

    server = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, attributes=SERVER_ATTRS, start_time=t0 + 1_000_123)
    server.set_status(Status(StatusCode.OK))
    client = tracer.start_span(
        "POST inventory",
        context=trace_api.set_span_in_context(server),
        kind=SpanKind.CLIENT,
        attributes=CLIENT_ATTRS,
        links=[Link(linked.get_span_context(), {"link.reason": "triggered-by"})],
        start_time=t0 + 2_000_456,
    )
    client.add_event("retry", attributes=EVENT_ATTRS, timestamp=t0 + 2_500_789)
    internal = tracer.start_span(
        "compute price",
        context=trace_api.set_span_in_context(client),
        kind=SpanKind.INTERNAL,
        attributes=INTERNAL_ATTRS,
        start_time=t0 + 3_000_999,
    )
    internal.end(end_time=t0 + 3_999_001)
    client.set_status(Status(StatusCode.ERROR, ERROR_DESCRIPTION))
    client.end(end_time=t0 + 8_000_500)
    server.end(end_time=t0 + 9_876_543)
    return t0, linked, server, client, internal


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("protocol", ["otlp_grpc", "otlp_http_protobuf", "otlp_http_json"])
def test_sdk_trace_round_trips_through_jaeger_api(meshlens, protocol, gzip):
    service = f"checkout-{protocol.replace('_', '-')}"
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "shop",
            "service.version": "1.4.2",
            "deployment.environment.name": "e2e",
            "e2e.shard": 3,
        }
    )
    recorder = RecordingExporter(make_exporter(protocol, gzip, meshlens))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(recorder, schedule_delay_millis=60_000, max_export_batch_size=512))
    tracer = provider.get_tracer(SCOPE)
    try:
        t0, linked, server, client, internal = emit_trace(tracer)
        assert provider.force_flush(timeout_millis=20_000), "force_flush timed out"
    finally:
        provider.shutdown()

    assert recorder.results, "nothing was exported"
    assert all(r == SpanExportResult.SUCCESS for r in recorder.results), recorder.results
    assert len(recorder.spans) == 4

    ctx = {name: s.get_span_context() for name, s in
           (("linked", linked), ("server", server), ("client", client), ("internal", internal))}
    trace_id = format(ctx["server"].trace_id, "032x")
    linked_trace_id = format(ctx["linked"].trace_id, "032x")
    sid = {k: format(c.span_id, "016x") for k, c in ctx.items()}
    readable = {s.name: s for s in recorder.spans}

    # The export was acknowledged, so the spans are committed: read at once, no polling.
    trace = get_trace(meshlens, trace_id)
    assert trace["traceID"] == trace_id
    spans = {s["operationName"]: s for s in trace["spans"]}
    assert set(spans) == {"GET /checkout", "POST inventory", "compute price"}, trace["spans"]

    # ids, parents, links ----------------------------------------------------------------------
    for name, key in (("GET /checkout", "server"), ("POST inventory", "client"), ("compute price", "internal")):
        assert spans[name]["traceID"] == trace_id
        assert spans[name]["spanID"] == sid[key]
    assert spans["GET /checkout"]["references"] == []
    assert spans["POST inventory"]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": sid["server"]},
        {"refType": "FOLLOWS_FROM", "traceID": linked_trace_id, "spanID": sid["linked"]},
    ]
    assert spans["compute price"]["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": sid["client"]},
    ]

    # µs timestamps: the SDK's ns truncated ----------------------------------------------------
    for name in spans:
        r = readable[name]
        assert spans[name]["startTime"] == r.start_time // 1000, name
        assert spans[name]["duration"] == (r.end_time - r.start_time) // 1000, name
    assert spans["GET /checkout"]["startTime"] == (t0 + 1_000_123) // 1000

    # tags: attributes with their Jaeger types, then kind, status, scope ------------------------
    assert_tags(spans["GET /checkout"]["tags"], {
        **SERVER_ATTRS,
        "span.kind": "server",
        "otel.status_code": "OK",
        "otel.scope.name": SCOPE,
    }, "server span")
    assert_tags(spans["POST inventory"]["tags"], {
        **CLIENT_ATTRS,
        "span.kind": "client",
        "otel.status_code": "ERROR",
        "error": True,
        "otel.status_description": ERROR_DESCRIPTION,
        "otel.scope.name": SCOPE,
    }, "client span")
    # INTERNAL gets no span.kind tag (the OTel→Jaeger mapping says so); no status, no error tag.
    assert_tags(spans["compute price"]["tags"], {**INTERNAL_ATTRS, "otel.scope.name": SCOPE}, "internal span")

    # the event as a log -----------------------------------------------------------------------
    assert spans["GET /checkout"]["logs"] == []
    assert spans["compute price"]["logs"] == []
    logs = spans["POST inventory"]["logs"]
    assert len(logs) == 1, logs
    assert logs[0]["timestamp"] == (t0 + 2_500_789) // 1000
    assert_tags(logs[0]["fields"], {"event": "retry", **EVENT_ATTRS}, "event log")

    # the resource as the process --------------------------------------------------------------
    pids = {s["processID"] for s in trace["spans"]}
    assert len(pids) == 1, pids
    process = trace["processes"][pids.pop()]
    assert process["serviceName"] == service
    want_process_tags = {k: v for k, v in resource.attributes.items() if k != "service.name"}
    assert {"service.namespace", "service.version", "deployment.environment.name", "e2e.shard"} <= set(want_process_tags)
    assert_tags(process["tags"], want_process_tags, "process")

    # the linked span's own trace --------------------------------------------------------------
    other = get_trace(meshlens, linked_trace_id)
    assert [s["spanID"] for s in other["spans"]] == [sid["linked"]]
    assert other["spans"][0]["operationName"] == "nightly-reindex"
    assert_tags(other["spans"][0]["tags"], {"job.id": "reindex-7", "span.kind": "producer", "otel.scope.name": SCOPE},
                "linked span")

    # services, operations, search -------------------------------------------------------------
    services = get_json(f"{meshlens.web_url}/api/services")
    assert services["data"] == [service], services
    ops = get_json(f"{meshlens.web_url}/api/services/{service}/operations")
    assert sorted(ops["data"]) == sorted(["GET /checkout", "POST inventory", "compute price", "nightly-reindex"]), ops

    window = {"start": str((t0 // 1000) - 60_000_000), "end": str((t0 // 1000) + 60_000_000)}
    found = get_json(f"{meshlens.web_url}/api/traces", service=service,
                     tags=json.dumps({"http.route": "/checkout"}), limit="20", **window)
    assert [t["traceID"] for t in found["data"]] == [trace_id], found
    assert len(found["data"][0]["spans"]) == 3
    found = get_json(f"{meshlens.web_url}/api/traces", service=service, operation="POST inventory",
                     tags=json.dumps({"error": "true"}), minDuration="5ms", limit="20", **window)
    assert [t["traceID"] for t in found["data"]] == [trace_id], found
    found = get_json(f"{meshlens.web_url}/api/traces", service=service,
                     tags=json.dumps({"http.route": "/no-such-route"}), limit="20", **window)
    assert found["data"] == [], found
    found = get_json(f"{meshlens.web_url}/api/traces", service=service, limit="20", **window)
    assert sorted(t["traceID"] for t in found["data"]) == sorted([trace_id, linked_trace_id]), found

    # metrics: the spans were counted under this protocol, and written ------------------------
    p = METRIC_PROTOCOL[protocol]
    assert metric(meshlens.web_url, "meshlens_ingest_spans_total", protocol=p) == 4
    for other_p in {"otlp_grpc", "otlp_http", "zipkin"} - {p}:
        assert metric(meshlens.web_url, "meshlens_ingest_spans_total", protocol=other_p) == 0
    assert metric(meshlens.web_url, "meshlens_store_spans_written_total") == 4
    assert metric(meshlens.web_url, "meshlens_ingest_rejected_spans_total") == 0
