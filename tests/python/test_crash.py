"""Durability: an acknowledged export survives SIGKILL. meshlens acknowledges an export only after
its spans are committed, so after a crash and a restart on the same database every span of every
acknowledged export must be readable."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from mlhelpers import http_session, make_trace_request

THREADS = 4
SPANS_PER_EXPORT = 200
INGEST_SECONDS = 3.0
MAX_EXPORTS_PER_THREAD = 2_000  # a bound on the loop, far above what 3 s allows


def test_acknowledged_spans_survive_sigkill(meshlens_factory):
    ml = meshlens_factory(name="crash")
    url = ml.traces_url

    lock = threading.Lock()
    acked: dict[str, set[str]] = {}  # trace id hex → span ids hex
    in_flight_at_kill: dict[str, set[str]] = {}
    refused: list = []
    unexpected_errors: list = []
    killed = threading.Event()

    def worker():
        session = http_session()
        for _ in range(MAX_EXPORTS_PER_THREAD):
            if killed.is_set():
                return
            tid, ids, body = make_trace_request(SPANS_PER_EXPORT, service="crash-test")
            try:
                r = session.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=15)
            except requests.RequestException as e:
                with lock:
                    if killed.is_set():
                        in_flight_at_kill[tid.hex()] = {i.hex() for i in ids}
                    else:
                        unexpected_errors.append(repr(e))
                return
            with lock:
                if r.status_code == 200:
                    acked[tid.hex()] = {i.hex() for i in ids}
                else:
                    refused.append((r.status_code, r.content[:200]))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(INGEST_SECONDS)
    killed.set()
    ml.kill()  # SIGKILL, mid-stream
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"

    assert not unexpected_errors, unexpected_errors[:5]
    assert not refused, f"exports refused while meshlens was healthy: {refused[:5]}"
    assert len(acked) >= 10, f"only {len(acked)} exports were acknowledged in {INGEST_SECONDS}s"
    assert in_flight_at_kill, "no export was in flight at the kill, so this did not test a crash mid-stream"
    print(f"acknowledged exports: {len(acked)} ({len(acked) * SPANS_PER_EXPORT} spans); "
          f"in flight at the kill: {len(in_flight_at_kill)}")

    ml.start()  # same database file
    web = ml.web_url

    def check(item):
        tid, span_ids, must_exist = item
        session = http_session()
        r = session.get(f"{web}/api/traces/{tid}", timeout=15)
        if r.status_code == 404 and not must_exist:
            return None
        if r.status_code != 200:
            return f"{tid}: GET answered {r.status_code}: {r.text[:200]}"
        got = {s["spanID"] for s in r.json()["data"][0]["spans"]}
        if got != span_ids:
            return (f"{tid}: {len(got & span_ids)} of {len(span_ids)} spans readable"
                    + ("" if must_exist else " (an unacknowledged export stored in part: not atomic)"))
        return None

    items = [(tid, ids, True) for tid, ids in acked.items()]
    items += [(tid, ids, False) for tid, ids in in_flight_at_kill.items() if tid not in acked]
    with ThreadPoolExecutor(max_workers=4) as pool:
        # map's timeout bounds the whole verification (TimeoutError past 90 s)
        problems = [p for p in pool.map(check, items, timeout=90) if p]
    assert not problems, f"{len(problems)} of {len(items)} traces wrong after the crash:\n" + "\n".join(problems[:10])
