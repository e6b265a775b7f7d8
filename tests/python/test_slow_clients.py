"""Hundreds of slow clients against OTLP/HTTP while a normal client keeps exporting: 200
connections trickling their bodies and 100 trickling their headers. Before, 200 slow bodies held
every request permit and a normal export waited 30 s; now bodies are read before a permit is
taken, slow ones are cut at the minimum rate, and slow headers at the header timeout.

The bound on the normal client's p99 is the issue's 2x, with a floor of 25 ms: on this 2-core
machine a p99 of a few milliseconds moves by more than that between two quiet runs, and what the
test guards against is a stall of seconds."""

from __future__ import annotations

import socket
import threading
import time

from mlhelpers import http_session, make_trace_request, metric, poll

SLOW_BODIES = 200
SLOW_HEADERS = 100
EXPORTS = 150


def p99(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.99))]


def export_latencies(ml, n: int) -> list[float]:
    out = []
    with http_session() as session:
        for _ in range(n):
            _, _, body = make_trace_request(3, service="normal")
            t0 = time.perf_counter()
            r = session.post(ml.traces_url, data=body, headers={"Content-Type": "application/x-protobuf"},
                             timeout=30)
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, (r.status_code, r.content)
    return out


def test_slow_bodies_and_headers_do_not_stall_a_normal_exporter(meshlens_factory):
    ml = meshlens_factory()
    host, port = ml.otlp_http.rsplit(":", 1)
    baseline = export_latencies(ml, EXPORTS)

    socks: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(SLOW_BODIES):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                      b"Content-Length: 1000000\r\n\r\n\x0a")
            socks.append(s)
        for _ in range(SLOW_HEADERS):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"POST /v1/traces HTTP/1.1\r\n")
            socks.append(s)

        def trickle():
            # One byte a connection every half second: well under the minimum rate.
            while not stop.wait(0.5):
                for s in socks:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        under_attack = export_latencies(ml, EXPORTS)
        base, attacked = p99(baseline), p99(under_attack)
        print(f"p99 of a normal export: {base * 1000:.1f} ms alone, {attacked * 1000:.1f} ms beside the slow clients")
        assert attacked <= max(2 * base, base + 0.025), (base, attacked)

        # The slow ones are cut: bodies at the minimum rate (after its 5 s grace), headers at the
        # header timeout (10 s).
        poll(lambda: metric(ml.web_url, "meshlens_ingest_rejected_requests_total",
                            protocol="otlp_http", reason="too_slow") >= SLOW_BODIES,
             timeout=30, interval=0.5, what="the slow bodies cut")
        poll(lambda: metric(ml.web_url, "meshlens_listener_open_connections", listener="otlp_http") <= 1,
             timeout=30, interval=0.5, what="the slow connections closed")
    finally:
        stop.set()
        for s in socks:
            s.close()
    assert metric(ml.web_url, "meshlens_ingest_buffered_bytes") == 0
