"""Hostile and broken input over OTLP/HTTP and OTLP/gRPC: every refusal has the right status and
body, invalid spans are reported as partial success, and nothing crashes the server."""

from __future__ import annotations

import gzip
import json

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from mlhelpers import (
    HTTP,
    get_trace,
    jaeger_trace_id,
    make_request,
    make_span,
    make_trace_request,
    metric,
    now_ns,
    post_otlp,
    rand_span_id,
    rand_trace_id,
    tags_dict,
)

LIMIT = 256 * 1024  # --max-message-bytes for the size tests
GRPC_INVALID_ARGUMENT = 3
GRPC_RESOURCE_EXHAUSTED = 8


@pytest.fixture
def limited(meshlens_factory):
    return meshlens_factory("--max-message-bytes", str(LIMIT))


def grpc_stub(ml):
    channel = grpc.insecure_channel(
        ml.otlp_grpc,
        options=[("grpc.enable_http_proxy", 0), ("grpc.max_send_message_length", -1),
                 ("grpc.max_receive_message_length", -1)],
    )
    return channel, trace_service_pb2_grpc.TraceServiceStub(channel)


def assert_still_serving(ml):
    """The process is alive, answers /healthz, and a normal export is stored."""
    assert ml.alive(), f"meshlens exited with {ml.proc.returncode}"
    assert HTTP.get(f"{ml.web_url}/healthz", timeout=5).status_code == 200
    tid, ids, body = make_trace_request(3, service="after-bad-input")
    r = post_otlp(ml.traces_url, body)
    assert r.status_code == 200, (r.status_code, r.content[:500])
    trace = get_trace(ml, tid.hex())
    assert sorted(s["spanID"] for s in trace["spans"]) == sorted(i.hex() for i in ids)


def rpc_status(r) -> status_pb2.Status:
    assert r.headers.get("Content-Type", "").startswith("application/x-protobuf"), r.headers
    st = status_pb2.Status.FromString(r.content)
    assert st.message, "the Status should say why"
    return st


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"\x0a\xff\xff\xff\x0f",            # field 1, length far past the end
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # an over-long varint tag
    b"\x0a\x05\x12\x03\x0a\x01",        # nested message truncated
    b"\x0b",                            # field 1 with a group start that never ends
])
def test_malformed_protobuf_is_400_with_status(meshlens, body):
    r = post_otlp(meshlens.traces_url, body)
    assert r.status_code == 400, (r.status_code, r.content)
    assert rpc_status(r).code == GRPC_INVALID_ARGUMENT
    assert metric(meshlens.web_url, "meshlens_ingest_rejected_requests_total", protocol="otlp_http", reason="malformed") == 1
    assert_still_serving(meshlens)


@pytest.mark.parametrize("body", [
    b'{"resourceSpans": [',
    b"not json",
    b'{"resourceSpans": "a string"}',
    b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": 5}]}]}]}',
])
def test_malformed_json_is_400(meshlens, body):
    r = post_otlp(meshlens.traces_url, body, content_type="application/json")
    assert r.status_code == 400, (r.status_code, r.content)
    assert r.headers.get("Content-Type", "").startswith("application/json")
    err = r.json()
    assert err.get("code") == GRPC_INVALID_ARGUMENT and err.get("message"), err
    assert_still_serving(meshlens)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "", "application/grpc"])
def test_wrong_content_type_is_415(meshlens, content_type):
    _, _, body = make_trace_request(2)
    headers = {"Content-Type": content_type} if content_type else {}
    r = HTTP.post(meshlens.traces_url, data=body, headers=headers, timeout=10)
    if not content_type:
        assert "Content-Type" not in r.request.headers
    assert r.status_code == 415, (r.status_code, r.content)
    assert metric(meshlens.web_url, "meshlens_ingest_spans_total") == 0


def test_unknown_content_encoding_is_refused(meshlens):
    _, _, body = make_trace_request(2)
    r = post_otlp(meshlens.traces_url, body, Content_Encoding="br")
    assert r.status_code == 415, (r.status_code, r.content)
    assert metric(meshlens.web_url, "meshlens_ingest_spans_total") == 0


def big_request(nbytes: int) -> bytes:
    span = make_span(rand_trace_id(), attrs={"blob": "x" * nbytes})
    return make_request([span]).SerializeToString()


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_limit_is_413(limited, chunked):
    body = big_request(LIMIT + 50_000)
    assert len(body) > LIMIT
    data = body
    if chunked:
        data = (body[i:i + 16384] for i in range(0, len(body), 16384))
    r = HTTP.post(limited.traces_url, data=data, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
    assert r.status_code == 413, (r.status_code, r.content[:300])
    assert rpc_status(r).code == GRPC_RESOURCE_EXHAUSTED
    assert metric(limited.web_url, "meshlens_ingest_rejected_requests_total", protocol="otlp_http", reason="too_large") == 1
    assert metric(limited.web_url, "meshlens_ingest_spans_total") == 0
    assert_still_serving(limited)


def test_body_just_under_limit_is_accepted(limited):
    body = big_request(LIMIT - 2_000)
    assert len(body) <= LIMIT
    r = post_otlp(limited.traces_url, body)
    assert r.status_code == 200, (r.status_code, r.content[:300])


def test_gzip_bomb_is_413(limited):
    bomb = gzip.compress(b"\0" * (32 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < LIMIT // 4, len(bomb)  # small on the wire, 128× the limit inflated
    r = post_otlp(limited.traces_url, bomb, Content_Encoding="gzip")
    assert r.status_code == 413, (r.status_code, r.content[:300])
    assert metric(limited.web_url, "meshlens_ingest_rejected_requests_total", protocol="otlp_http", reason="too_large") == 1
    # a gzipped export that inflates to under the limit is fine
    tid, ids, body = make_trace_request(50)
    r = post_otlp(limited.traces_url, gzip.compress(body), Content_Encoding="gzip")
    assert r.status_code == 200, (r.status_code, r.content[:300])
    assert len(get_trace(limited, tid.hex())["spans"]) == 50
    assert_still_serving(limited)


def test_truncated_gzip_is_400(meshlens):
    _, _, body = make_trace_request(20)
    z = gzip.compress(body)
    r = post_otlp(meshlens.traces_url, z[: len(z) // 2], Content_Encoding="gzip")
    assert r.status_code == 400, (r.status_code, r.content[:300])
    assert_still_serving(meshlens)


# --- partial success ----------------------------------------------------------------------------

def mixed_spans():
    """Two valid spans of one trace, and three invalid ones."""
    tid = rand_trace_id()
    start = now_ns() - 1_000_000_000
    root, child = rand_span_id(), rand_span_id()
    good = [
        make_span(tid, root, name="good-root", start_ns=start, duration_ns=2_000_000),
        make_span(tid, child, name="good-child", parent=root, start_ns=start + 1000, duration_ns=1_000_000),
    ]
    bad = [
        make_span(tid[:8], name="short-trace-id", start_ns=start),
        make_span(b"\0" * 16, name="zero-trace-id", start_ns=start),
        make_span(tid, name="end-before-start", start_ns=start, end_ns=start - 1),
    ]
    return tid, (root, child), [good[0], bad[0], good[1], bad[1], bad[2]]


def assert_mixed_result(ml, tid, good_ids):
    trace = get_trace(ml, tid.hex())
    assert sorted(s["spanID"] for s in trace["spans"]) == sorted(i.hex() for i in good_ids)
    assert metric(ml.web_url, "meshlens_ingest_spans_total", protocol="otlp_http") == 2
    assert metric(ml.web_url, "meshlens_ingest_rejected_spans_total", protocol="otlp_http", reason="invalid_trace_id") == 2
    assert metric(ml.web_url, "meshlens_ingest_rejected_spans_total", protocol="otlp_http", reason="end_before_start") == 1


def test_partial_success_protobuf(meshlens):
    tid, good_ids, spans = mixed_spans()
    r = post_otlp(meshlens.traces_url, make_request(spans).SerializeToString())
    assert r.status_code == 200, (r.status_code, r.content)
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert resp.HasField("partial_success"), resp
    assert resp.partial_success.rejected_spans == 3
    assert resp.partial_success.error_message, resp
    assert_mixed_result(meshlens, tid, good_ids)

    # a clean export has no partial_success at all
    _, _, body = make_trace_request(2)
    r = post_otlp(meshlens.traces_url, body)
    assert r.status_code == 200
    clean = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert not clean.HasField("partial_success") or clean.partial_success.rejected_spans == 0


def span_json(s) -> dict:
    return {
        "traceId": s.trace_id.hex(),
        "spanId": s.span_id.hex(),
        "parentSpanId": s.parent_span_id.hex(),
        "name": s.name,
        "kind": s.kind,
        "startTimeUnixNano": str(s.start_time_unix_nano),
        "endTimeUnixNano": str(s.end_time_unix_nano),
    }


def json_request(spans_json: list[dict], service="e2e-json") -> dict:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "meshlens.e2e"}, "spans": spans_json}],
    }]}


def test_partial_success_json(meshlens):
    tid, good_ids, spans = mixed_spans()
    body = json.dumps(json_request([span_json(s) for s in spans])).encode()
    r = post_otlp(meshlens.traces_url, body, content_type="application/json")
    assert r.status_code == 200, (r.status_code, r.content)
    assert r.headers.get("Content-Type", "").startswith("application/json")
    resp = r.json()
    ps = resp.get("partialSuccess")
    assert ps, resp
    assert int(ps["rejectedSpans"]) == 3, resp
    assert ps.get("errorMessage"), resp
    assert_mixed_result(meshlens, tid, good_ids)


# --- deep nesting -------------------------------------------------------------------------------

def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def nested_any_value_pb(kind: str, depth: int) -> bytes:
    """An AnyValue nested `depth` levels deep, encoded by hand (the Python protobuf runtime has its
    own recursion limit)."""
    value = ld(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        if kind == "kvlist":
            # AnyValue.kvlist_value(6) → KeyValueList.values(1) → KeyValue{key(1), value(2)}
            value = ld(6, ld(1, ld(1, b"k") + ld(2, value)))
        else:
            # AnyValue.array_value(5) → ArrayValue.values(1)
            value = ld(5, ld(1, value))
    return value


def nested_request_pb(kind: str, depth: int, tid: bytes, sid: bytes) -> bytes:
    span = make_span(tid, sid, name=f"deep-{kind}-{depth}", attrs={"plain": "yes"}).SerializeToString()
    span += ld(9, ld(1, b"deep") + ld(2, nested_any_value_pb(kind, depth)))  # Span.attributes(9) += KeyValue
    resource = resource_pb2.Resource(
        attributes=[common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="deep"))]
    ).SerializeToString()
    scope_spans = ld(2, span)
    resource_spans = ld(1, resource) + ld(2, scope_spans)
    return ld(1, resource_spans)


def nested_request_json(kind: str, depth: int, tid: bytes, sid: bytes) -> bytes:
    if kind == "kvlist":
        pre, post = '{"kvlistValue":{"values":[{"key":"k","value":', "}]}}"
    else:
        pre, post = '{"arrayValue":{"values":[', "]}}"
    value = pre * depth + '{"stringValue":"leaf"}' + post * depth
    s = make_span(tid, sid, name=f"deep-{kind}-{depth}", attrs={"plain": "yes"})
    sj = span_json(s)
    head = json.dumps(json_request([{**sj, "attributes": "@@ATTRS@@"}], service="deep"))
    attrs = '[{"key":"plain","value":{"stringValue":"yes"}},{"key":"deep","value":' + value + "}]"
    return head.replace('"@@ATTRS@@"', attrs).encode()


def expected_nested(kind: str, depth: int):
    v = "leaf"
    for _ in range(depth):
        v = {"k": v} if kind == "kvlist" else [v]
    return v


@pytest.mark.parametrize("fmt", ["protobuf", "json"])
@pytest.mark.parametrize("kind", ["kvlist", "array"])
def test_nested_values_up_to_the_decoder_limit_round_trip(meshlens, fmt, kind):
    """Every depth from 1 to 64: refused with 400 (the decoders bound nesting), or accepted and then
    read back with exactly the structure sent, as JSON text. Shallow values must be accepted."""
    accepted = []
    for depth in range(1, 65):
        tid, sid = rand_trace_id(), rand_span_id()
        if fmt == "protobuf":
            r = post_otlp(meshlens.traces_url, nested_request_pb(kind, depth, tid, sid))
        else:
            r = post_otlp(meshlens.traces_url, nested_request_json(kind, depth, tid, sid), content_type="application/json")
        assert r.status_code in (200, 400), (depth, r.status_code, r.content[:300])
        got = HTTP.get(f"{meshlens.web_url}/api/traces/{jaeger_trace_id(tid)}", timeout=10)
        if r.status_code == 400:
            assert got.status_code == 404, (depth, got.status_code, got.text[:300])
            continue
        accepted.append(depth)
        assert got.status_code == 200, (depth, got.status_code, got.text[:500])
        (span,) = got.json()["data"][0]["spans"]
        tags = tags_dict(span["tags"])
        assert tags["plain"] == ("string", "yes")
        typ, text = tags["deep"]
        assert typ == "string", (depth, typ)
        assert json.loads(text) == expected_nested(kind, depth), depth
    assert accepted[:10] == list(range(1, 11)), accepted
    # once refused, deeper is refused too
    assert accepted == list(range(1, len(accepted) + 1)), accepted
    print(f"{fmt}/{kind}: deepest accepted nesting {max(accepted)}")
    assert_still_serving(meshlens)


@pytest.mark.parametrize("depth", [100, 10_000])
@pytest.mark.parametrize("fmt", ["protobuf", "json"])
@pytest.mark.parametrize("kind", ["kvlist", "array"])
def test_deeply_nested_values_never_crash(meshlens, fmt, kind, depth):
    tid, sid = rand_trace_id(), rand_span_id()
    if fmt == "protobuf":
        body = nested_request_pb(kind, depth, tid, sid)
        r = post_otlp(meshlens.traces_url, body)
    else:
        body = nested_request_json(kind, depth, tid, sid)
        r = post_otlp(meshlens.traces_url, body, content_type="application/json")
    assert r.status_code in (200, 400), (r.status_code, r.content[:500])
    got = HTTP.get(f"{meshlens.web_url}/api/traces/{jaeger_trace_id(tid)}", timeout=10)
    if r.status_code == 200:
        # accepted means stored, and readable
        assert got.status_code == 200, (got.status_code, got.text[:500])
        assert [s["spanID"] for s in got.json()["data"][0]["spans"]] == [sid.hex()]
    else:
        assert got.status_code == 404, (got.status_code, got.text[:500])
    assert_still_serving(meshlens)


@pytest.mark.parametrize("depth", [100, 10_000])
def test_deeply_nested_values_over_grpc_never_crash(meshlens, depth):
    channel, stub = grpc_stub(meshlens)
    tid, sid = rand_trace_id(), rand_span_id()
    request = trace_service_pb2.ExportTraceServiceRequest
    raw = nested_request_pb("kvlist", depth, tid, sid)
    # Send the hand-made bytes through the stub: a serializer that passes bytes through as they are.
    export = channel.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=lambda b: b,
        response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
    )
    try:
        try:
            export(raw, timeout=10)
            accepted = True
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
            accepted = False
        got = HTTP.get(f"{meshlens.web_url}/api/traces/{jaeger_trace_id(tid)}", timeout=10)
        assert got.status_code == (200 if accepted else 404), (got.status_code, got.text[:300])
        resp = stub.Export(request(), timeout=10)  # an empty export still works
        assert not resp.HasField("partial_success") or resp.partial_success.rejected_spans == 0
    finally:
        channel.close()
    assert_still_serving(meshlens)


# --- gRPC ---------------------------------------------------------------------------------------

def test_grpc_message_over_limit_is_resource_exhausted(limited):
    channel, stub = grpc_stub(limited)
    try:
        req = trace_service_pb2.ExportTraceServiceRequest.FromString(big_request(LIMIT + 50_000))
        with pytest.raises(grpc.RpcError) as exc:
            stub.Export(req, timeout=10)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.value.code(), exc.value.details())
        # compressed small, inflated over the limit: still refused
        bomb = make_request([make_span(rand_trace_id(), attrs={"blob": "\0" * (4 * LIMIT)})])
        with pytest.raises(grpc.RpcError) as exc:
            stub.Export(bomb, timeout=10, compression=grpc.Compression.Gzip)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (exc.value.code(), exc.value.details())
        assert metric(limited.web_url, "meshlens_ingest_spans_total") == 0
        # under the limit, gzip or not, works
        tid, ids, body = make_trace_request(10)
        resp = stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(body), timeout=10,
                           compression=grpc.Compression.Gzip)
        assert not resp.HasField("partial_success") or resp.partial_success.rejected_spans == 0
        assert len(get_trace(limited, tid.hex())["spans"]) == 10
    finally:
        channel.close()
    assert_still_serving(limited)


def test_grpc_invalid_span_is_partial_success(meshlens):
    channel, stub = grpc_stub(meshlens)
    try:
        tid, good_ids, spans = mixed_spans()
        resp = stub.Export(make_request(spans), timeout=10)
        assert resp.HasField("partial_success"), resp
        assert resp.partial_success.rejected_spans == 3
        assert resp.partial_success.error_message
        trace = get_trace(meshlens, tid.hex())
        assert sorted(s["spanID"] for s in trace["spans"]) == sorted(i.hex() for i in good_ids)
        assert metric(meshlens.web_url, "meshlens_ingest_spans_total", protocol="otlp_grpc") == 2
        assert metric(meshlens.web_url, "meshlens_ingest_rejected_spans_total", protocol="otlp_grpc") == 3
    finally:
        channel.close()
