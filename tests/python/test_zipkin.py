"""Zipkin v2 JSON on POST /api/v2/spans: chunked and gzip bodies, 64- and 128-bit ids, partial
batches, and refusals."""

from __future__ import annotations

import gzip
import json
import secrets
import time

import pytest

from mlhelpers import HTTP, get_json, get_trace, metric, tags_dict


def hex_id(nbytes: int) -> str:
    while True:
        h = secrets.token_hex(nbytes)
        if int(h, 16) != 0 and not h.startswith("0"):
            return h


def zipkin_batch():
    now_us = time.time_ns() // 1000 - 2_000_000
    t64 = hex_id(8)
    t128 = hex_id(16)
    client_id, server_id, lone_id = hex_id(8), hex_id(8), hex_id(8)
    client = {
        "traceId": t64,
        "id": client_id,
        "name": "get /api/cart",
        "kind": "CLIENT",
        "timestamp": str(now_us),  # some tracers send 64-bit numbers as strings
        "duration": 207_000,
        "localEndpoint": {"serviceName": "zk-frontend", "ipv4": "10.0.0.1"},
        "remoteEndpoint": {"serviceName": "zk-backend", "ipv4": "10.0.0.2", "port": 9000},
        "tags": {"http.method": "GET", "http.path": "/api/cart", "http.status_code": "200"},
        "annotations": [{"timestamp": now_us + 10, "value": "ws"}, {"timestamp": str(now_us + 206_000), "value": "wr"}],
    }
    server = {
        "traceId": t64,
        "id": server_id,
        "parentId": client_id,
        "name": "get /api/cart",
        "kind": "SERVER",
        "timestamp": now_us + 1_500,
        "duration": 200_000,
        "localEndpoint": {"serviceName": "zk-backend", "ipv4": "10.0.0.2", "port": 9000},
        "tags": {"cart.items": "3", "region": "eu-west-1"},
        "annotations": [{"timestamp": now_us + 2_000, "value": "sr"}],
    }
    lone = {
        "traceId": t128,
        "id": lone_id,
        "name": "cron tick",
        "timestamp": now_us + 5,
        "duration": 1,
        "localEndpoint": {"serviceName": "zk-cron"},
        "tags": {"job": "tick"},
    }
    return [client, server, lone], {"t64": t64, "t128": t128, "client": client, "server": server, "lone": lone}


def post_zipkin(ml, body: bytes, *, chunked=False, gzipped=False, content_type="application/json"):
    headers = {"Content-Type": content_type}
    data = body
    if gzipped:
        data = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    if chunked:
        payload = data

        def pieces():
            for i in range(0, len(payload), 97):  # odd-sized chunks, splitting tokens mid-way
                yield payload[i:i + 97]

        data = pieces()
    r = HTTP.post(ml.zipkin_url, data=data, headers=headers, timeout=30)
    if chunked:
        assert r.request.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in r.request.headers
    return r


def assert_span_tags_include(span, expected: dict):
    got = tags_dict(span["tags"])
    for k, v in expected.items():
        assert got.get(k) == ("string", v), f"tag {k}: got {got.get(k)}, want string {v!r}; all: {got}"


@pytest.mark.parametrize("encoding", ["chunked", "gzip", "gzip+chunked"])
def test_zipkin_batch_is_stored_and_readable(meshlens, encoding):
    spans, ids = zipkin_batch()
    r = post_zipkin(meshlens, json.dumps(spans).encode(), chunked="chunked" in encoding, gzipped="gzip" in encoding)
    assert r.status_code == 202, r.text

    # 64-bit trace id: printed as 16 hex digits
    trace = get_trace(meshlens, ids["t64"])
    assert trace["traceID"] == ids["t64"]
    by_id = {s["spanID"]: s for s in trace["spans"]}
    assert set(by_id) == {ids["client"]["id"], ids["server"]["id"]}
    c, s = by_id[ids["client"]["id"]], by_id[ids["server"]["id"]]
    assert c["traceID"] == s["traceID"] == ids["t64"]
    assert c["operationName"] == s["operationName"] == "get /api/cart"
    assert c["references"] == []
    assert s["references"] == [{"refType": "CHILD_OF", "traceID": ids["t64"], "spanID": ids["client"]["id"]}]
    assert c["startTime"] == int(ids["client"]["timestamp"])
    assert c["duration"] == 207_000
    assert s["startTime"] == ids["server"]["timestamp"]
    assert s["duration"] == 200_000
    assert_span_tags_include(c, {**ids["client"]["tags"], "span.kind": "client"})
    assert_span_tags_include(s, {**ids["server"]["tags"], "span.kind": "server"})
    assert [(l["timestamp"], tags_dict(l["fields"])["event"]) for l in c["logs"]] == [
        (ids["client"]["annotations"][0]["timestamp"], ("string", "ws")),
        (int(ids["client"]["annotations"][1]["timestamp"]), ("string", "wr")),
    ]
    assert [(l["timestamp"], tags_dict(l["fields"])["event"]) for l in s["logs"]] == [
        (ids["server"]["annotations"][0]["timestamp"], ("string", "sr")),
    ]
    assert trace["processes"][c["processID"]]["serviceName"] == "zk-frontend"
    assert trace["processes"][s["processID"]]["serviceName"] == "zk-backend"

    # 128-bit trace id: 32 hex digits
    lone = get_trace(meshlens, ids["t128"])
    assert lone["traceID"] == ids["t128"]
    assert [x["spanID"] for x in lone["spans"]] == [ids["lone"]["id"]]
    only = lone["spans"][0]
    assert only["startTime"] == ids["lone"]["timestamp"] and only["duration"] == 1
    assert "span.kind" not in tags_dict(only["tags"])
    assert_span_tags_include(only, {"job": "tick"})
    assert lone["processes"][only["processID"]]["serviceName"] == "zk-cron"

    services = get_json(f"{meshlens.web_url}/api/services")["data"]
    assert sorted(services) == ["zk-backend", "zk-cron", "zk-frontend"]
    assert metric(meshlens.web_url, "meshlens_ingest_spans_total", protocol="zipkin") == 3


def test_zipkin_batch_with_bad_spans_stores_the_good_ones(meshlens):
    spans, ids = zipkin_batch()
    t = ids["t64"]
    bad_trace_id = {**ids["lone"], "traceId": "xyz", "id": hex_id(8)}
    bad_span_id = {**ids["server"], "id": "not-a-span-id!!!", "parentId": None}
    no_timestamp = {"traceId": t, "id": hex_id(8), "name": "no start", "localEndpoint": {"serviceName": "zk-frontend"}}
    batch = [spans[0], bad_trace_id, spans[1], bad_span_id, no_timestamp]
    r = post_zipkin(meshlens, json.dumps(batch).encode())
    assert r.status_code == 202, r.text

    trace = get_trace(meshlens, t)
    assert sorted(s["spanID"] for s in trace["spans"]) == sorted([ids["client"]["id"], ids["server"]["id"]])
    r = HTTP.get(f"{meshlens.web_url}/api/traces/{ids['t128']}", timeout=10)
    assert r.status_code == 404, r.text  # the lone span was not in this batch
    assert metric(meshlens.web_url, "meshlens_ingest_spans_total", protocol="zipkin") == 2
    assert metric(meshlens.web_url, "meshlens_ingest_rejected_spans_total", protocol="zipkin") == 3


def test_zipkin_batch_of_only_bad_spans_is_refused(meshlens):
    bad = [
        {"traceId": "xyz", "id": hex_id(8), "timestamp": 1_700_000_000_000_000, "duration": 5},
        {"traceId": hex_id(8), "id": "", "timestamp": 1_700_000_000_000_000, "duration": 5},
        {"traceId": hex_id(16), "id": hex_id(8)},  # no timestamp
    ]
    r = post_zipkin(meshlens, json.dumps(bad).encode())
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.text.strip(), "a 400 should say why"
    assert metric(meshlens.web_url, "meshlens_ingest_spans_total", protocol="zipkin") == 0
    assert metric(meshlens.web_url, "meshlens_ingest_rejected_spans_total", protocol="zipkin") == 3
    assert get_json(f"{meshlens.web_url}/api/services")["data"] == []


@pytest.mark.parametrize("body", [
    b'[{"traceId": "463ac35c9f6413ad", "id": ',
    b"not json at all",
    b'{"traceId": "463ac35c9f6413ad"}',  # an object, not a list
    b'[{"traceId": "463ac35c9f6413ad", "id": "a2fb4a1d1a96d312", "timestamp": "soon"}]',
])
def test_zipkin_malformed_json_is_400(meshlens, body):
    r = post_zipkin(meshlens, body)
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.text.strip()
    assert metric(meshlens.web_url, "meshlens_ingest_rejected_requests_total", protocol="zipkin", reason="malformed") == 1
    assert HTTP.get(f"{meshlens.web_url}/healthz", timeout=5).status_code == 200
