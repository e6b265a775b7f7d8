"""The cardinality blast: one service names a new peer (and a new span name) in every client
span, as a buggy `peer.service` or a port in a host name does in real meshes. A default
meshlens keeps its graph within `[graph] max_edges`/`max_nodes`, counts the rest on the
overflow node, folds the product metrics' new label sets into their overflow sets, and stays
well under a 512 MiB container's memory."""

from __future__ import annotations

from mlhelpers import (get_json, make_request, make_span, metric, metrics_samples, now_ns, poll,
                       post_otlp, rand_trace_id)
from opentelemetry.proto.trace.v1 import trace_pb2

PEERS = 60_000
PER_EXPORT = 2_000


def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_blast_of_new_peers_is_capped_on_an_overflow_node_within_512_mib(meshlens_factory, tmp_path):
    config = tmp_path / "meshlens.toml"
    # Unpaired client spans settle after the pairing time; a short one keeps the test short.
    config.write_text('[graph]\npairing_ttl = "1s"\n')
    ml = meshlens_factory("--config", str(config))
    start = now_ns()
    for first in range(0, PEERS, PER_EXPORT):
        spans = [make_span(rand_trace_id(), name=f"GET /items/{i}", start_ns=start,
                           kind=trace_pb2.Span.SPAN_KIND_CLIENT,
                           attrs={"peer.service": f"peer-{i}", "http.response.status_code": 200})
                 for i in range(first, first + PER_EXPORT)]
        r = post_otlp(ml.traces_url, make_request(spans, "work").SerializeToString())
        assert r.status_code == 200, r.text
    # Once a second, as a scraper would (not every 0.1 s: each scrape encodes 80 MB of series).
    poll(lambda: metric(ml.web_url, "meshlens_topology_virtual_calls_total") >= PEERS,
         timeout=60, interval=1.0, what="every client span settled as a call to its peer")
    edges = metric(ml.web_url, "meshlens_topology_edges")
    nodes = metric(ml.web_url, "meshlens_topology_nodes")
    overflowed = metric(ml.web_url, "meshlens_topology_overflow_observations_total")
    # The default caps (20,000 edges, 10,000 nodes): work and 9,999 peers, then the overflow node.
    assert (edges, nodes) == (10_000, 10_001), (edges, nodes)
    assert overflowed == PEERS - 9_999, overflowed

    graph = get_json(f"{ml.web_url}/api/graph", window="5m")
    overflow = [n for n in graph["nodes"] if n["kind"] == "overflow"]
    assert [n["name"] for n in overflow] == ["__overflow__"]
    edge = next(e for e in graph["edges"] if e["target"] == overflow[0]["id"])
    assert edge["source"] == "service:work" and edge["stats"]["requests"] == overflowed

    # The product metrics (10,000 label sets per family): the first span names and edges, the
    # rest counted under the overflow sets.
    for family in ("traces_spanmetrics", "traces_service_graph"):
        assert metric(ml.web_url, "meshlens_topology_series_overflow_total", metric=family) > 0
    samples = metrics_samples(ml.web_url)
    spans = [(ls, v) for n, ls, v in samples if n == "traces_spanmetrics_calls_total"]
    assert len(spans) == 10_001
    assert sum(v for ls, v in spans if ls["span_name"] == "__overflow__") == PEERS - 10_000
    calls = [(ls, v) for n, ls, v in samples if n == "traces_service_graph_request_total"]
    assert len(calls) == 10_001
    assert sum(v for ls, v in calls if ls["server"] == "__overflow__") == PEERS - 10_000

    rss = peak_rss_mib(ml.proc.pid)
    print(f"peak RSS after {PEERS} peers: {rss:.0f} MiB")
    assert rss < 512, f"peak RSS {rss:.0f} MiB"
