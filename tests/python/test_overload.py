"""Overload: with a small span queue and a flood of large concurrent exports, meshlens refuses
with a retryable answer (HTTP 429 + Retry-After, gRPC UNAVAILABLE + RetryInfo), keeps its memory
bounded, counts the refusals, and ingests normally again once the flood stops."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import requests
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from mlhelpers import get_trace, http_session, make_trace_request, metric, poll

QUEUE_SPANS = 2_000
THREADS = 16
SPANS_PER_EXPORT = 1_500
FLOOD_SECONDS = 5.0
MAX_EXPORTS_PER_THREAD = 400  # bounds the loop whatever the timing
PEAK_RSS_BOUND_MB = 400
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


def flood(ml, send_one) -> tuple[collections.Counter, list]:
    """THREADS threads call send_one(state) until FLOOD_SECONDS pass; returns outcome counts and
    anything unexpected. Meanwhile the main thread samples the queue depth."""
    outcomes: collections.Counter = collections.Counter()
    problems: list = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker():
        state = {}
        try:
            for _ in range(MAX_EXPORTS_PER_THREAD):
                if stop.is_set():
                    return
                tid, ids, body = make_trace_request(SPANS_PER_EXPORT, service="flood")
                outcome, problem = send_one(state, body)
                with lock:
                    outcomes[outcome] += 1
                    if problem:
                        problems.append(problem)
        finally:
            if "close" in state:
                state["close"]()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + FLOOD_SECONDS
    depths = []
    while time.monotonic() < deadline:
        depths.append(metric(ml.web_url, "meshlens_ingest_queue_depth"))
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a flood thread did not finish"
    assert depths and max(depths) <= QUEUE_SPANS, f"queue depth beyond --queue-spans: {max(depths)}"
    return outcomes, problems


def check_memory_and_recovery(ml, baseline_kb):
    peak_kb = ml.peak_rss_kb()
    print(f"meshlens peak RSS (VmHWM): {peak_kb / 1024:.1f} MB (at start {baseline_kb / 1024:.1f} MB); "
          f"bound {PEAK_RSS_BOUND_MB} MB")
    assert peak_kb < PEAK_RSS_BOUND_MB * 1024, f"peak RSS {peak_kb / 1024:.1f} MB over {PEAK_RSS_BOUND_MB} MB"
    # The queue drains and stays within bounds once the flood is over.
    poll(lambda: metric(ml.web_url, "meshlens_ingest_queue_depth") == 0, timeout=15, what="queue depth back to 0")


def test_http_overload_is_429_with_retry_after_and_recovers(meshlens_factory):
    ml = meshlens_factory("--queue-spans", str(QUEUE_SPANS), name="overload-http")
    baseline = ml.peak_rss_kb()

    def send(state, body):
        if "session" not in state:
            state["session"] = http_session()
            state["close"] = state["session"].close
        try:
            r = state["session"].post(ml.traces_url, data=body, headers={"Content-Type": "application/x-protobuf"},
                                      timeout=30)
        except requests.RequestException as e:
            return "error", repr(e)
        if r.status_code == 429:
            ra = r.headers.get("Retry-After")
            if ra is None or not ra.strip().isdigit():
                return 429, f"429 without a usable Retry-After: {dict(r.headers)}"
            return 429, None
        if r.status_code == 200:
            return r.status_code, None
        return r.status_code, f"unexpected status {r.status_code}: {r.content[:200]!r}"

    outcomes, problems = flood(ml, send)
    print(f"HTTP flood outcomes: {dict(outcomes)}")
    assert not problems, problems[:5]
    assert outcomes[429] > 0, f"never refused: {dict(outcomes)}"
    assert outcomes[200] > 0, f"nothing accepted during the flood: {dict(outcomes)}"
    assert ml.alive()

    refused = outcomes[429]
    assert metric(ml.web_url, "meshlens_ingest_rejected_requests_total", reason="overloaded") > 0
    # each refused request is counted once, under its protocol
    assert metric(ml.web_url, "meshlens_ingest_rejected_requests_total", protocol="otlp_http", reason="overloaded") == refused
    assert metric(ml.web_url, "meshlens_ingest_rejected_spans_total", protocol="otlp_http", reason="overloaded") == \
        refused * SPANS_PER_EXPORT
    assert metric(ml.web_url, "meshlens_ingest_spans_total", protocol="otlp_http") == outcomes[200] * SPANS_PER_EXPORT

    check_memory_and_recovery(ml, baseline)
    tid, ids, body = make_trace_request(20, service="after-flood")
    session = http_session()

    def try_export():
        r = session.post(ml.traces_url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        assert r.status_code in (200, 429), (r.status_code, r.content[:200])
        return r.status_code == 200

    poll(try_export, timeout=10, interval=0.5, what="a normal export to succeed after the flood")
    assert len(get_trace(ml, tid.hex())["spans"]) == 20


def retry_info(err: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            assert status.code == grpc.StatusCode.UNAVAILABLE.value[0], status
            for detail in status.details:
                if detail.type_url == RETRY_INFO_TYPE:
                    info = error_details_pb2.RetryInfo()
                    assert detail.Unpack(info)
                    return info
    return None


def test_grpc_overload_is_unavailable_with_retry_info_and_recovers(meshlens_factory):
    ml = meshlens_factory("--queue-spans", str(QUEUE_SPANS), name="overload-grpc")
    baseline = ml.peak_rss_kb()
    method = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def send(state, body):
        if "export" not in state:
            channel = grpc.insecure_channel(ml.otlp_grpc, options=[("grpc.enable_http_proxy", 0)])
            state["close"] = channel.close
            state["export"] = channel.unary_unary(
                method, request_serializer=lambda b: b,
                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)
        try:
            resp = state["export"](body, timeout=30)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                return e.code().name, f"unexpected gRPC status {e.code()}: {e.details()}"
            info = retry_info(e)
            if info is None:
                return "UNAVAILABLE", f"UNAVAILABLE without RetryInfo: {e.details()} {e.trailing_metadata()}"
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            if not 0 < delay <= 60:
                return "UNAVAILABLE", f"odd RetryInfo delay {delay}"
            return "UNAVAILABLE", None
        if resp.HasField("partial_success") and resp.partial_success.rejected_spans:
            return "OK", f"partial success during a flood of valid spans: {resp}"
        return "OK", None

    outcomes, problems = flood(ml, send)
    print(f"gRPC flood outcomes: {dict(outcomes)}")
    assert not problems, problems[:5]
    assert outcomes["UNAVAILABLE"] > 0, f"never refused: {dict(outcomes)}"
    assert outcomes["OK"] > 0, f"nothing accepted during the flood: {dict(outcomes)}"
    assert ml.alive()

    assert metric(ml.web_url, "meshlens_ingest_rejected_requests_total", protocol="otlp_grpc", reason="overloaded") == \
        outcomes["UNAVAILABLE"]
    assert metric(ml.web_url, "meshlens_ingest_rejected_spans_total", protocol="otlp_grpc", reason="overloaded") == \
        outcomes["UNAVAILABLE"] * SPANS_PER_EXPORT
    assert metric(ml.web_url, "meshlens_ingest_spans_total", protocol="otlp_grpc") == outcomes["OK"] * SPANS_PER_EXPORT

    check_memory_and_recovery(ml, baseline)
    tid, ids, body = make_trace_request(20, service="after-flood")
    channel = grpc.insecure_channel(ml.otlp_grpc, options=[("grpc.enable_http_proxy", 0)])
    try:
        export = channel.unary_unary(method, request_serializer=lambda b: b,
                                     response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString)

        def try_export():
            try:
                export(body, timeout=10)
                return True
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
                return False

        poll(try_export, timeout=10, interval=0.5, what="a normal gRPC export to succeed after the flood")
    finally:
        channel.close()
    assert len(get_trace(ml, tid.hex())["spans"]) == 20
