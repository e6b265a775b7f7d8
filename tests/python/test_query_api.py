"""The Jaeger v1 query API beyond the happy path: id forms, errors, and the Jaeger conventions a UI
relies on (unique span ids in a trace, one `event` field per log, `error=true` on error spans)."""

from __future__ import annotations

import json
import time

from mlhelpers import (
    HTTP,
    get_json,
    get_trace,
    kv,
    make_request,
    make_span,
    make_trace_request,
    poll,
    post_otlp,
    rand_span_id,
    rand_trace_id,
    tags_dict,
)


def test_trace_id_forms_and_errors(meshlens):
    # a trace id whose high half is zero is printed with 16 digits and found by every spelling
    tid = b"\0" * 8 + rand_span_id()
    r = post_otlp(meshlens.traces_url, make_request([make_span(tid, name="low-id")]).SerializeToString())
    assert r.status_code == 200
    short = tid.hex()[16:]
    for spelling in (tid.hex(), short, short.upper(), short.lstrip("0")):
        trace = get_trace(meshlens, spelling)
        assert trace["traceID"] == short, spelling
        assert trace["spans"][0]["traceID"] == short

    # a full 128-bit id is printed with 32 digits
    tid = rand_trace_id()
    while tid[0] == 0:
        tid = rand_trace_id()
    r = post_otlp(meshlens.traces_url, make_request([make_span(tid, name="high-id")]).SerializeToString())
    assert r.status_code == 200
    assert get_trace(meshlens, tid.hex())["traceID"] == tid.hex()

    # unknown: 404 with errors; malformed: 400 with errors
    unknown = get_json(f"{meshlens.web_url}/api/traces/{rand_trace_id().hex()}", expect=404)
    assert unknown["errors"] and unknown["errors"][0]["code"] == 404, unknown
    assert not unknown["data"]
    for bad in ("xyz", "0" * 32, "1" * 33):
        body = get_json(f"{meshlens.web_url}/api/traces/{bad}", expect=400)
        assert body["errors"] and body["errors"][0]["code"] == 400, body

    # operations of an unknown service: empty, not an error
    assert get_json(f"{meshlens.web_url}/api/services/no-such-service/operations")["data"] == []


def test_search_limit_and_window(meshlens):
    start_us = time.time_ns() // 1000 - 10_000_000
    tids = []
    for _ in range(5):
        tid, _, body = make_trace_request(3, service="search-svc")
        assert post_otlp(meshlens.traces_url, body).status_code == 200
        tids.append(tid.hex())
    end_us = time.time_ns() // 1000 + 10_000_000
    url = f"{meshlens.web_url}/api/traces"
    found = get_json(url, service="search-svc", start=str(start_us), end=str(end_us), limit="20")
    assert sorted(t["traceID"] for t in found["data"]) == sorted(tids)
    assert all(len(t["spans"]) == 3 for t in found["data"])
    found = get_json(url, service="search-svc", start=str(start_us), end=str(end_us), limit="2")
    assert len(found["data"]) == 2 and {t["traceID"] for t in found["data"]} <= set(tids)
    # a window that ended before these spans began finds none
    found = get_json(url, service="search-svc", start=str(start_us - 3_600_000_000), end=str(start_us - 60_000_000))
    assert found["data"] == []
    # minDuration beyond every trace finds none (the roots last 5 ms)
    found = get_json(url, service="search-svc", start=str(start_us), end=str(end_us), minDuration="1s")
    assert found["data"] == []


def test_retried_export_shows_each_span_once(meshlens):
    """An OTLP client retries an export whose answer it did not get (timeout, connection reset,
    a crash after the commit). Since meshlens acknowledges only after committing, a retry can
    deliver spans that are already stored; the trace must still show each span once. Jaeger's own
    query service removes such duplicates (its SpanHashDeduper adjuster); a trace with a span id
    twice breaks the parent/child tree in a UI."""
    tid, ids, body = make_trace_request(5, service="retry-svc")
    for _ in range(2):
        r = post_otlp(meshlens.traces_url, body)
        assert r.status_code == 200
    trace = get_trace(meshlens, tid.hex())
    span_ids = [s["spanID"] for s in trace["spans"]]
    assert sorted(span_ids) == sorted(i.hex() for i in ids), (
        f"{len(span_ids)} spans for {len(ids)} span ids after the same export was sent twice")


def test_event_attribute_named_event_is_the_only_event_field(meshlens):
    """OTel→Jaeger mapping: an event attribute named `event` takes precedence over the event's
    name, so a log carries one `event` field, not two."""
    span = make_span(rand_trace_id(), name="with-event")
    ev = span.events.add()
    ev.name = "exception"
    ev.time_unix_nano = span.start_time_unix_nano + 1000
    ev.attributes.extend([kv("event", "error"), kv("message", "boom")])
    assert post_otlp(meshlens.traces_url, make_request([span]).SerializeToString()).status_code == 200
    (log,) = get_trace(meshlens, span.trace_id.hex())["spans"][0]["logs"]
    keys = [f["key"] for f in log["fields"]]
    assert keys.count("event") == 1, log["fields"]
    assert tags_dict(log["fields"])["event"] == ("string", "error")
    assert tags_dict(log["fields"])["message"] == ("string", "boom")


def test_zipkin_error_span_is_flagged_error_true(meshlens):
    """A Zipkin span is in error when it has an `error` tag, whatever its text. meshlens reads it as
    status ERROR and answers otel.status_code=ERROR; the Jaeger convention for an error span is
    the bool tag error=true (what the Jaeger UI highlights and what `tags={"error":"true"}`
    searches for), as for OTLP spans with status ERROR."""
    now_us = time.time_ns() // 1000 - 1_000_000
    trace_id, span_id = "5" * 16, "6" * 16
    z = [{"traceId": trace_id, "id": span_id, "name": "charge", "kind": "SERVER", "timestamp": now_us,
          "duration": 1500, "localEndpoint": {"serviceName": "zk-pay"}, "tags": {"error": "card declined"}}]
    r = HTTP.post(meshlens.zipkin_url, data=json.dumps(z), headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 202, r.text
    span = get_trace(meshlens, trace_id)["spans"][0]
    tags = tags_dict(span["tags"])
    assert tags.get("otel.status_code") == ("string", "ERROR"), tags
    assert tags.get("error") == ("bool", True), tags
    found = get_json(f"{meshlens.web_url}/api/traces", service="zk-pay", tags=json.dumps({"error": "true"}),
                     start=str(now_us - 60_000_000), end=str(now_us + 60_000_000))
    assert [t["traceID"] for t in found["data"]] == [trace_id], found


def test_grafana_jaeger_data_source_calls(meshlens_factory):
    """The calls Grafana's Jaeger data source makes, in its order and forms, against
    `meshlens demo`: services, operations, a search with µs times and JSON tags, a trace by id
    with start/end in milliseconds, and the dependency graph with ms times."""
    ml = meshlens_factory("--rate", "30", command="demo")
    web = ml.web_url

    def have_work():
        return "work" in get_json(f"{web}/api/services")["data"]

    poll(have_work, timeout=20, what="work among the services")
    services = get_json(f"{web}/api/services")
    assert sorted(services["data"]) == ["ingress", "meet", "work"], services
    assert {"data", "total", "limit", "offset", "errors"} <= set(services)
    ops = get_json(f"{web}/api/services/work/operations")["data"]
    assert "GET /orders/{id}" in ops and "GET" in ops

    def search():
        # The time range as Grafana sends it: µs, ending now (asked again on each try).
        now_us = time.time_ns() // 1000
        return get_json(
            f"{web}/api/traces", service="work", operation="GET /orders/{id}",
            tags=json.dumps({"error": "true"}), minDuration="1ms", limit="20",
            start=str(now_us - 3_600_000_000), end=str(now_us))["data"] or None

    found = poll(search, timeout=30, interval=0.5, what="failed traces of work")
    for trace in found:
        assert set(trace) >= {"traceID", "spans", "processes"}
        work = [s for s in trace["spans"] if trace["processes"][s["processID"]]["serviceName"] == "work"]
        assert work and all(any(t["key"] == "error" and t["value"] is True for t in s["tags"]) for s in work)
        assert all({"spanID", "operationName", "references", "startTime", "duration", "tags", "logs",
                    "processID"} <= set(s) for s in trace["spans"])

    # Trace by id, with the time range Grafana adds in milliseconds.
    tid = found[0]["traceID"]
    now_ms = time.time_ns() // 1_000_000
    one = get_json(f"{web}/api/traces/{tid}", start=str(now_ms - 3_600_000), end=str(now_ms))
    assert one["data"][0]["traceID"] == tid and len(one["data"]) == 1
    assert len(one["data"][0]["spans"]) == len(found[0]["spans"])

    # The dependency graph: Jaeger's shape (the current minute is not stored yet, so it may be empty).
    deps = get_json(f"{web}/api/dependencies", endTs=str(now_ms), lookback=str(3_600_000))
    assert isinstance(deps["data"], list) and deps["errors"] is None
    for d in deps["data"]:
        assert set(d) == {"parent", "child", "callCount"}
