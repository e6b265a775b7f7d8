"""The cardinality blast as a benchmark: one service names a new peer and a new span name in every
client span (PEERS of them, 2,000 per export). Prints meshlens' resident memory after each stage
and its peak, with the graph's and the product metrics' sizes. Usage:
  .venv/bin/python loadgen/bench/cardinality.py BINARY [PEERS]"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "python"))

import requests  # noqa: E402
from mlhelpers import (Meshlens, make_request, make_span, metric, now_ns, poll, post_otlp,  # noqa: E402
                       rand_trace_id)
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402


def memory_mib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1]) // 1024
    return fields["VmRSS"], fields["VmHWM"]


def send_blast(ml: Meshlens, peers: int) -> int:
    """Sends `peers` client spans, each naming a new peer and span name, 2,000 per export; returns
    how many exports the memory limiter refused (each retried, as an SDK does)."""
    start, refused = now_ns(), 0
    for first in range(0, peers, 2_000):
        spans = [make_span(rand_trace_id(), name=f"GET /items/{i}", start_ns=start,
                           kind=trace_pb2.Span.SPAN_KIND_CLIENT,
                           attrs={"peer.service": f"peer-{i}", "http.response.status_code": 200})
                 for i in range(first, min(first + 2_000, peers))]
        body = make_request(spans, "work").SerializeToString()
        for _ in range(100):
            r = post_otlp(ml.traces_url, body)
            if r.status_code != 503:
                break
            refused += 1
            time.sleep(0.2)
        assert r.status_code == 200, r.text
    return refused


def main() -> None:
    import os
    import tempfile
    binary, peers = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60_000
    os.environ["MESHLENS_BIN"] = binary
    work = Path(tempfile.mkdtemp(prefix="meshlens-cardinality-"))
    (work / "meshlens.toml").write_text('[graph]\npairing_ttl = "1s"\n')
    ml = Meshlens(work, ["--config", str(work / "meshlens.toml")])
    ml.start()
    pid = ml.proc.pid
    rows = [("started", *memory_mib(pid))]
    try:
        refused = send_blast(ml, peers)
        rows.append((f"{peers} spans acknowledged", *memory_mib(pid)))
        poll(lambda: metric(ml.web_url, "meshlens_topology_virtual_calls_total") >= peers,
             timeout=120, interval=2.0, what="every span settled")
        rows.append(("settled on the graph", *memory_mib(pid)))
        size = 0
        for _ in range(3):
            size = len(requests.get(f"{ml.web_url}/metrics", timeout=60).content)
        rows.append((f"3 scrapes of /metrics ({size >> 20} MiB each)", *memory_mib(pid)))
        requests.get(f"{ml.web_url}/api/graph", params={"window": "5m"}, timeout=60).raise_for_status()
        rows.append(("/api/graph", *memory_mib(pid)))
        time.sleep(2)
        edges = metric(ml.web_url, "meshlens_topology_edges")
        nodes = metric(ml.web_url, "meshlens_topology_nodes")
        overflow = metric(ml.web_url, "meshlens_topology_overflow_observations_total")
        rows.append(("2 s later", *memory_mib(pid)))
        heap = metric(ml.web_url, "meshlens_memory_heap_bytes")
    finally:
        ml.stop()
    print(f"{'stage':<44} {'RSS MiB':>8} {'peak MiB':>9}")
    for stage, rss, peak in rows:
        print(f"{stage:<44} {rss:>8} {peak:>9}")
    print(f"graph: {edges:.0f} edges, {nodes:.0f} nodes, {overflow:.0f} calls on the overflow node")
    print(f"heap in use at the end: {heap / 2**20:.0f} MiB (0: a build without the counter); "
          f"exports refused by the memory limiter and retried: {refused}")


if __name__ == "__main__":
    main()
