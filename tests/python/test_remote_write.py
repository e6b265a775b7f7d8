"""Istio as deployed: Debian's real Prometheus scrapes a whole mesh's proxies and remote-writes
to meshlens, and meshlens' graph must be the one the fixture's traffic gives.

A fixture exporter serves testdata/istio/<scenario>/scrape-0.prom (a running mesh's cumulative
counters, with the target labels Prometheus keeps for Istio's pods) until Prometheus has
remote-written it, then scrape-1.prom, which holds exactly one interval's traffic more.
Prometheus scrapes every second (with honor_labels, so the pods' own job and instance stay) and
remote-writes in small, sharded requests. /api/graph must then show the fixture's expected.json:
every edge, its versions, counts by status, rate limits, denials, overflows, the mTLS share, TCP
bytes and connections, and latencies from the histograms, each call counted once across
reporters; ambient waypoints hidden unless asked for.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from envoyhelpers import canary_router, run_envoy
from mlhelpers import HTTP, LOOPBACK, REPO, free_ports, get_json, metric, poll, stop_process

PROMETHEUS = shutil.which("prometheus")
FIXTURES = REPO / "testdata" / "istio"
WINDOW_S = 300


class Exporter:
    """Serves one exposition text at a time on /metrics."""

    def __init__(self, text: str):
        self.text = text.encode()
        self.scrapes = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                body = outer.text
                outer.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_prometheus(workdir: Path, scrape_config: str, write_url: str) -> tuple[subprocess.Popen, str]:
    """Debian's Prometheus scraping every second with `scrape_config` (one scrape_configs entry)
    and remote-writing to `write_url` in small, sharded requests."""
    assert PROMETHEUS, "prometheus is needed (Debian package prometheus)"
    config = workdir / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
{scrape_config}
remote_write:
  - url: {write_url}
    queue_config: {{min_shards: 4, max_shards: 4, max_samples_per_send: 300, batch_send_deadline: 1s}}
""")
    port = free_ports(1)[0]
    log = open(workdir / "prometheus.log", "wb")
    p = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                          f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn"],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return p, f"http://{LOOPBACK}:{port}"


def node_id(end: dict) -> str:
    name = end["service"]
    if name == "unknown":
        return "user:user"
    kind = "external" if end.get("external") else "waypoint" if name == "waypoint" else "service"
    ns = f"{end['namespace']}/" if end.get("namespace") else ""
    return f"{kind}:{ns}{name}"


def find_version(graph: dict, e: dict) -> dict | None:
    for edge in graph["edges"]:
        if (edge["source"], edge["target"], edge["connection_type"]) == (
                node_id(e["source"]), node_id(e["destination"]), e["protocol"]):
            for v in edge["versions"]:
                if (v["source_version"], v["target_version"]) == (
                        e["source"].get("version"), e["destination"].get("version")):
                    return {"edge": edge, "stats": v["stats"]}
    return None


def mismatches(graph: dict, expected: list[dict]) -> list[str]:
    problems = []
    for e in expected:
        name = f"{node_id(e['source'])}@{e['source'].get('version')} -> {node_id(e['destination'])}@{e['destination'].get('version')} ({e['protocol']})"
        got = find_version(graph, e)
        if got is None:
            problems.append(f"{name}: missing")
            continue
        s = got["stats"]
        want = {k: e[k] for k in ("requests", "http_4xx", "http_5xx", "grpc_errors", "rate_limited", "denied",
                                  "overflows")}
        want["tcp_connections_opened"] = e["tcp_connections_opened"]
        want["tcp_connections_closed"] = e["tcp_connections_closed"]
        want["response_flags"] = e["response_flags"]
        have = {k: s[k] for k in want}
        if have != want:
            problems.append(f"{name}: {have} != {want}")
        for key, field in (("tcp_sent_bps", "tcp_sent_bytes"), ("tcp_received_bps", "tcp_received_bytes")):
            if round(s[key] * WINDOW_S) != e[field]:
                problems.append(f"{name}: {key} {s[key]} * {WINDOW_S} != {e[field]}")
        pct = None if e["tls_known"] == 0 else 100.0 * e["mtls"] / e["tls_known"]
        if (s["mtls_pct"] is None) != (pct is None) or (pct is not None and abs(s["mtls_pct"] - pct) > 1e-6):
            problems.append(f"{name}: mtls_pct {s['mtls_pct']} != {pct}")
        hist = e.get("latency_histogram_ms")
        if hist and e["requests"] > 0:
            counts, bounds = hist["counts"], hist["bounds"]
            n, seen, bucket = sum(counts), 0, 0
            for bucket, c in enumerate(counts):
                seen += c
                if seen * 2 >= n:
                    break
            lower = 0 if bucket == 0 else bounds[bucket - 1]
            upper = bounds[bucket] if bucket < len(bounds) else float("inf")
            p50 = (s["latency_ms"] or {}).get("p50")
            if p50 is None or not (lower * 0.98 <= p50 <= upper * 1.02):
                problems.append(f"{name}: p50 {p50} outside ({lower}, {upper}]")
        # Every number of the edge came from the proxies' metrics, none from spans.
        src = got["edge"]["sources"]
        if src["spans"]["requests"] != 0:
            problems.append(f"{name}: spans counted {src['spans']}")
    return problems


def run_scenario(meshlens_factory, tmp_path: Path, scenario: str) -> tuple[dict, object]:
    ml = meshlens_factory()
    exporter = Exporter((FIXTURES / scenario / "scrape-0.prom").read_text())
    scrape = f"""  - job_name: istio-proxies
    honor_labels: true
    static_configs: [{{targets: ["{LOOPBACK}:{exporter.port}"]}}]"""
    prom, prom_url = start_prometheus(tmp_path, scrape, f"{ml.otlp_http_url}/api/v1/write")
    try:
        def written(at_least: float) -> bool:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            return metric(ml.web_url, "meshlens_ingest_metric_points_total", protocol="prom_remote_write") >= at_least
        samples = sum(1 for line in (FIXTURES / scenario / "scrape-0.prom").read_text().splitlines()
                      if line and not line.startswith("#"))
        # Two scrapes of the first file written: every series has its baseline.
        poll(lambda: written(2 * samples), timeout=60, what="the first scrapes remote-written")
        exporter.text = (FIXTURES / scenario / "scrape-1.prom").read_bytes()
        expected = json.loads((FIXTURES / scenario / "expected.json").read_text())
        graph_url = f"{ml.web_url}/api/graph"
        last: list[str] = []

        def settled() -> bool:
            nonlocal last
            g = HTTP.get(graph_url, params={"window": "5m"}, timeout=5).json()
            last = mismatches(g, expected["edges"])
            return not last
        try:
            poll(settled, timeout=60, interval=0.5, what="the graph of the fixture's traffic")
        except Exception:
            pytest.fail("\n".join(last))
        return expected, ml
    finally:
        stop_process(prom)
        exporter.stop()


def test_bookinfo_on_sidecars_through_prometheus_remote_write(meshlens_factory, tmp_path):
    expected, ml = run_scenario(meshlens_factory, tmp_path, "bookinfo-sidecar")
    g = HTTP.get(f"{ml.web_url}/api/graph", params={"window": "5m"}, timeout=5).json()
    ids = {(e["source"], e["target"], e["connection_type"]) for e in g["edges"]}
    want = {(node_id(e["source"]), node_id(e["destination"]), e["protocol"]) for e in expected["edges"]}
    assert ids == want, "no edge beyond the fixture's (an idle series, a second reporter)"
    gateway = [n for n in g["nodes"] if n["id"] == "service:istio-system/istio-ingressgateway"]
    assert gateway, "the ingress gateway is a node"
    # Counted once: the retried or overlapping writes Prometheus may make added nothing twice,
    # and the receiver refused nothing.
    assert metric(ml.web_url, "meshlens_ingest_rejected_requests_total", protocol="prom_remote_write") == 0


def test_ambient_waypoints_hidden_by_default_and_drawn_when_asked(meshlens_factory, tmp_path):
    expected, ml = run_scenario(meshlens_factory, tmp_path, "ambient-waypoint")
    hidden = HTTP.get(f"{ml.web_url}/api/graph", params={"window": "5m"}, timeout=5).json()
    assert not [n for n in hidden["nodes"] if n["kind"] == "waypoint"]
    drawn = HTTP.get(f"{ml.web_url}/api/graph", params={"window": "5m", "waypoints": "true"}, timeout=5).json()
    assert [n["id"] for n in drawn["nodes"] if n["kind"] == "waypoint"] == ["waypoint:shop/waypoint"]
    hops = [e for e in expected["waypoint_edges"] if e["protocol"] == "tcp"
            and "waypoint" in (e["source"]["service"], e["destination"]["service"])]
    assert len(hops) == 4
    assert mismatches(drawn, hops + expected["edges"]) == []
    assert HTTP.get(f"{ml.web_url}/api/graph", params={"waypoints": "maybe"}, timeout=5).status_code == 400


def test_a_real_envoys_prometheus_stats_remote_written_give_the_version_split(meshlens, app_port, tmp_path):
    """A real Envoy plays work's sidecar (v1, namespace shop): it routes requests with `x-canary`
    to meet v2 and the rest to v1 (Istio-style cluster names). Prometheus scrapes its admin's
    /stats/prometheus, with the pod's target labels a Kubernetes scrape config would add, and
    remote-writes to meshlens: Envoy's `envoy_cluster_upstream_rq_xx` and
    `envoy_cluster_upstream_rq_time` series must give the work → meet edge, meet's version split
    and latencies from the histogram."""
    outbound, admin = free_ports(2)
    config = canary_router(outbound, admin, app_port)
    scrape = f"""  - job_name: kubernetes-pods
    metrics_path: /stats/prometheus
    static_configs:
    - targets: ["{LOOPBACK}:{admin}"]
      labels: {{namespace: shop, pod: work-v1-7d9c, app: work, version: v1}}"""
    stable, canary = 40, 10
    with run_envoy(config, admin, tmp_path):
        prom, _ = start_prometheus(tmp_path, scrape, f"{meshlens.otlp_http_url}/api/v1/write")
        try:
            # The first remote-written scrape, before any traffic, is this proxy's baseline: wait
            # for two scrapes' samples, so that every shard of the first has been written.
            def written() -> float:
                return metric(meshlens.web_url, "meshlens_ingest_metric_points_total", protocol="prom_remote_write")
            poll(lambda: written() > 0, timeout=30, what="Envoy's first scrape written")
            first = written()
            poll(lambda: written() >= 2 * first, timeout=30, what="Envoy's second scrape written")
            s = requests.Session()
            for i in range(stable + canary):
                headers = {"x-canary": "1"} if i >= stable else {}
                assert s.get(f"http://{LOOPBACK}:{outbound}/ok/{i}", headers=headers, timeout=5).status_code == 200
            for i in range(3):
                assert s.get(f"http://{LOOPBACK}:{outbound}/fail/{i}", timeout=5).status_code == 503

            def meet():
                g = get_json(f"{meshlens.web_url}/api/graph", window="5m")
                node = {n["id"]: n for n in g["nodes"]}.get("service:shop/meet")
                edge = {(e["source"], e["target"]): e for e in g["edges"]}.get(
                    ("service:shop/work", "service:shop/meet"))
                done = node and edge and edge["stats"]["requests"] == stable + canary + 3 \
                    and edge["stats"]["latency_ms"]
                return (node, edge) if done else None

            node, edge = poll(meet, timeout=40, what="work → meet from Envoy's remote-written stats")
        finally:
            stop_process(prom)
    split = {v["version"]: v["stats"]["requests"] for v in node["versions"]}
    assert split == {"v1": stable + 3, "v2": canary}, split
    assert edge["stats"]["http_5xx"] == 3, edge["stats"]
    assert edge["stats"]["latency_source"] == "metrics", edge["stats"]
    assert edge["sources"]["spans"]["requests"] == 0, "no spans at all"
