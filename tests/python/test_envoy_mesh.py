"""The example mesh (examples/envoy-mesh) end to end: real Envoy sidecars in front of the demo
apps, started and stopped by the example's own commands against a running meshlens, and every
claim checked through meshlens' APIs: the graph and its version split, the v2 failures and
health, one trace across every sidecar, spans and metrics agreeing, policy refusals on the
ingress → work edge, retries, circuit-breaker overflows and an outlier ejection on work → meet."""

from __future__ import annotations

import concurrent.futures
import random
import socket
import subprocess
import sys
import time

import pytest
import requests

from envoyhelpers import ENVOY
from mlhelpers import LOOPBACK, REPO, fresh_minute, get_json, http_session, poll

EXAMPLE = REPO / "examples" / "envoy-mesh"
sys.path.insert(0, str(EXAMPLE))
import mesh  # noqa: E402 (the example's own module)

CURL = {"user-agent": mesh.CURL}
CHROME = {"user-agent": mesh.CHROME}
V2_FAIL_SHARE = 0.2
INGRESS, WORK, MEET = "service:shop/ingress", "service:shop/work", "service:shop/meet"


def free_base_port(span: int = 34) -> int:
    """A base port with `span` free ports above it, below the kernel's ephemeral range (where
    meshlens' own test ports come from)."""
    for _ in range(50):
        base = random.randrange(21000, 31000 - span)
        socks = []
        try:
            for p in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind((LOOPBACK, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range for the mesh")


def run_mesh(*args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLE / "mesh.py"), *args], capture_output=True, text=True,
                          timeout=120, env={"ENVOY": ENVOY, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def mesh_up(meshlens_factory, tmp_path):
    policy = EXAMPLE / "policy"
    ml = meshlens_factory("--policy-file", str(policy / "policy.yaml"), "--ratelimit-dir", str(policy / "ratelimit"))
    base, state = free_base_port(), tmp_path / "mesh"
    try:
        out = run_mesh("up", "--requests", "0", "--base-port", str(base), "--state-dir", str(state),
                       "--meshlens-otlp", ml.otlp_grpc, "--meshlens-policy", ml.policy,
                       "--v2-fail-share", str(V2_FAIL_SHARE), "--flush-ms", "500")
        assert f"ingress at http://127.0.0.1:{base}" in out, out
        yield ml, f"http://{LOOPBACK}:{base}"
    finally:
        stopped = run_mesh("down", "--state-dir", str(state))
    assert stopped.strip() == "stopped 7 processes", stopped
    assert not (state / "pids.json").exists()


def send(base: str, path: str, n: int, headers: dict, workers: int = 8) -> list[requests.Response]:
    def one(_):
        with http_session() as s:
            return s.get(base + path, headers=headers, timeout=30)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def graph(ml) -> tuple[dict, dict]:
    g = get_json(f"{ml.web_url}/api/graph", window="5m")
    return {n["id"]: n for n in g["nodes"]}, {(e["source"], e["target"]): e for e in g["edges"]}


def edge(ml, source: str, target: str) -> dict:
    e = graph(ml)[1].get((source, target))
    assert e is not None, f"no edge {source} → {target}"
    return e


def wait_for(ml, source: str, target: str, check, what: str) -> dict:
    """The edge once `check(edge)` holds; metrics come every half second, spans every second, and
    a client span with no server span waits out the pairing time (10 s) before it counts."""
    seen = {}

    def ready():
        seen["edge"] = e = graph(ml)[1].get((source, target))
        return e if e is not None and check(e) else None
    try:
        return poll(ready, timeout=30, interval=0.25, what=f"{source} → {target}: {what}")
    except AssertionError as err:
        e = seen.get("edge") or {}
        raise AssertionError(f"{err}\nlast stats: {e.get('stats')}\nlast sources: {e.get('sources')}") from None


def test_the_example_mesh_end_to_end(mesh_up):
    ml, base = mesh_up

    # 1. Plain traffic: the 80/20 split, v2's failures, spans and metrics agreeing.
    plain = send(base, "/items", 400, CURL)
    codes = [r.status_code for r in plain]
    assert set(codes) <= {200, 503}, codes
    served = codes.count(200)  # each one reached meet once

    def settled(e, requests):
        s, m = e["sources"]["spans"], e["sources"]["metrics"]
        return m.get("requests") == requests and s.get("requests") == requests
    # Both sources see every request: spans are not sampled here, metrics never are. Tolerance:
    # none. They must agree exactly.
    wait_for(ml, INGRESS, WORK, lambda e: settled(e, 400), "400 requests in spans and in metrics")
    wait_for(ml, WORK, MEET, lambda e: settled(e, served), f"{served} calls in spans and in metrics")

    nodes, edges = graph(ml)
    assert {INGRESS, WORK, MEET, "user:user", "policy:meshlens-policy"} == set(nodes), sorted(nodes)
    assert {(INGRESS, WORK), (WORK, MEET), ("user:user", INGRESS)} <= set(edges)
    versions = {v["version"]: v for v in nodes[WORK]["versions"]}
    assert set(versions) == {"v1", "v2"}
    # 400 weighted picks at 20%: σ = 2%; 0.12–0.28 is four of them.
    assert 0.12 <= versions["v2"]["share"] <= 0.28, versions["v2"]["share"]
    v1, v2 = versions["v1"]["stats"], versions["v2"]["stats"]
    assert v1["failures"] == 0 and versions["v1"]["health"] == "healthy"
    # work v2 fails exactly 1 in 5 of the requests it gets (the app spreads failures evenly).
    assert abs(v2["failures"] - V2_FAIL_SHARE * v2["requests"]) <= 1, v2
    assert versions["v2"]["health"] == "failure", "20% 5xx is over the 10% failure threshold"
    assert v2["failures"] == codes.count(503)
    assert [(v["source_version"], v["target_version"]) for v in edges[(WORK, MEET)]["versions"]] == \
        [("v1", "v1"), ("v2", "v1")]

    # 2. One trace crosses every sidecar, each span linked to its caller's.
    trace_id = get_json(f"{ml.web_url}/api/traces", service="meet", limit="1")["data"][0]["traceID"]
    trace = get_json(f"{ml.web_url}/api/traces/{trace_id}")["data"][0]
    service = {s["spanID"]: trace["processes"][s["processID"]]["serviceName"] for s in trace["spans"]}
    parent = {s["spanID"]: next((r["spanID"] for r in s["references"] if r["refType"] == "CHILD_OF"), None)
              for s in trace["spans"]}
    kind = {s["spanID"]: next(t["value"] for t in s["tags"] if t["key"] == "span.kind") for s in trace["spans"]}
    assert set(service.values()) == {"ingress", "work", "meet"}
    roots = [s for s, p in parent.items() if p is None]
    assert len(roots) == 1 and service[roots[0]] == "ingress", trace["spans"]
    assert all(p in parent for p in parent.values() if p), "every parent is in the trace"
    meet_server = next(s for s in service if service[s] == "meet" and kind[s] == "server")
    chain = [meet_server]
    while parent[chain[-1]]:
        chain.append(parent[chain[-1]])
    assert [(service[s], kind[s]) for s in reversed(chain)] == [
        ("ingress", "server"), ("ingress", "client"), ("work", "server"), ("work", "client"), ("meet", "server")]

    # 3. Chrome always goes to v2.
    before = {v: versions[v]["stats"]["requests"] for v in versions}
    send(base, "/items", 50, CHROME)

    def chrome_counted():
        w = graph(ml)[0][WORK]
        now = {v["version"]: v["stats"]["requests"] for v in w["versions"]}
        return now if now["v2"] >= before["v2"] + 50 else None
    now = poll(chrome_counted, timeout=20, what="50 Chrome requests on work")
    assert now == {"v1": before["v1"], "v2": before["v2"] + 50}, (before, now)

    # 4. Retries: meet fails each /flaky request's first attempt; work's sidecar retries it. One
    # at a time: concurrent first attempts could fail 5 in a row and have meet ejected (step 8).
    meet_edge = edge(ml, WORK, MEET)["stats"]
    flaky = send(base, "/flaky", 30, CURL, workers=1)
    retried = [r.status_code for r in flaky].count(200)
    assert retried > 0 and all(r.status_code in (200, 503) for r in flaky)
    e = wait_for(ml, WORK, MEET, lambda e: e["stats"]["retries"] >= meet_edge["retries"] + retried, "retries")
    assert e["stats"]["retries"] == meet_edge["retries"] + retried
    # Metrics count attempts, spans count requests: they differ by exactly the retries.
    wait_for(ml, WORK, MEET, lambda e: e["sources"]["spans"]["requests"] + e["stats"]["retries"]
             == e["sources"]["metrics"]["requests"], "spans + retries = metrics")

    # 5. Policy: ext_authz at work's sidecars denies /admin; the ingress' rate limit allows ann
    # 10 requests a minute to a destination.
    into_work = edge(ml, INGRESS, WORK)["stats"]
    denied = send(base, "/admin/users", 5, CURL)
    assert [(r.status_code, r.text) for r in denied] == [(403, "denied by rule no-admin")] * 5
    # The limit is a fixed window per minute: all 14 requests must fall in one.
    fresh_minute()
    with http_session() as session:
        ann = [session.get(f"{base}/items", headers={**CHROME, "x-user": "ann"}, timeout=10) for _ in range(14)]
    assert [r.status_code for r in ann][10:] == [429] * 4
    assert 429 not in [r.status_code for r in ann][:10]
    assert [r.headers["x-ratelimit-remaining"] for r in ann] == [str(n) for n in range(9, -1, -1)] + ["0"] * 4
    assert all(r.headers["x-ratelimit-limit"] == "10, 10;w=60" for r in ann)
    e = wait_for(ml, INGRESS, WORK, lambda e: e["stats"]["denied"] >= into_work["denied"] + 5
                 and e["stats"]["rate_limited"] >= into_work["rate_limited"] + 4, "the refusals")
    assert (e["stats"]["denied"], e["stats"]["rate_limited"]) == (into_work["denied"] + 5,
                                                                  into_work["rate_limited"] + 4)
    assert e["sources"]["policy"] == {"denied": 5, "rate_limited": 4}
    # Envoy charges its rate limit filter's 429s to the cluster, though they never left the
    # ingress: metrics count them, spans (no upstream span) do not.
    wait_for(ml, INGRESS, WORK, lambda e: e["sources"]["spans"]["requests"] + e["sources"]["policy"]["rate_limited"]
             == e["sources"]["metrics"]["requests"], "spans + rate limited = metrics")
    assert ("user:user", INGRESS) in graph(ml)[1]

    # 6. The circuit breaker: 400 slow requests at once, all to v2; its sidecar lets 100 go to
    # meet and 100 wait, and refuses the rest. meet holds each for 3 s, longer than the burst
    # takes to arrive on a loaded machine.
    before = edge(ml, WORK, MEET)
    burst = send(base, "/slow?ms=3000", 400, CHROME, workers=400)
    overflowed = sum(1 for r in burst if r.status_code == 503 and "overflow" in r.text)
    assert overflowed > 0, sorted({(r.status_code, r.text[:60]) for r in burst})
    expected = before["stats"]["overflows"] + overflowed
    e = wait_for(ml, WORK, MEET, lambda e: e["stats"]["overflows"] >= expected, f"{overflowed} overflows")
    assert e["stats"]["overflows"] == expected
    # The refused calls' client spans never pair; after the pairing time they count as well, and
    # the two sources agree.
    wait_for(ml, WORK, MEET, lambda e: e["sources"]["spans"]["overflows"] == e["sources"]["metrics"]["overflows"]
             == expected, f"{expected} overflows in spans and metrics")

    # 7. The example's traffic command: bounded, and every request lands on the graph.
    users = edge(ml, "user:user", INGRESS)["stats"]["requests"]
    out = run_mesh("traffic", "--ingress", base, "--requests", "60", "--rate", "60")
    assert out.startswith("sent 60 requests in "), out
    wait_for(ml, "user:user", INGRESS, lambda e: e["stats"]["requests"] == users + 60, "the traffic command's 60")

    # 8. Outlier detection: meet fails every attempt at /fail; after 5 in a row (two requests
    # with their retries) work v2's sidecar ejects it, and the ejection shows on work → meet.
    ejections = edge(ml, WORK, MEET)["stats"]["ejections"]
    with http_session() as session:
        for _ in range(4):
            assert session.get(f"{base}/fail", headers=CHROME, timeout=10).status_code == 503
    wait_for(ml, WORK, MEET, lambda e: e["stats"]["ejections"] == ejections + 1, "meet ejected once")
    print(f"v2 share {versions['v2']['share']:.3f}; v2 failed {v2['failures']} of {v2['requests']}; "
          f"{retried} of 30 /flaky retried; {overflowed} of 400 overflowed")


def test_compose_runs_the_same_mesh(tmp_path):
    """docker-compose.yml runs this example: its Envoy configs are the ones `mesh.py render
    --compose` writes, a real Envoy accepts each, and the services are wired as the configs say."""
    from ruamel.yaml import YAML

    run_mesh("render", "--compose", str(tmp_path))
    committed = EXAMPLE / "compose"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in committed.iterdir())
    for path in sorted(tmp_path.iterdir()):
        assert path.read_text() == (committed / path.name).read_text(), \
            f"{path.name} is stale: run `python3 examples/envoy-mesh/mesh.py render --compose examples/envoy-mesh/compose`"
        done = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "OK" in done.stdout + done.stderr, done.stdout + done.stderr

    services = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())["services"]
    version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True, timeout=30).stdout
    image = f"envoyproxy/envoy:v{version.split('version: ')[1].split('/')[1]}"  # "<sha>/1.40.0/Clean/..."
    m = mesh.compose_mesh()
    assert services["ingress"]["image"] == image, "compose runs the Envoy the tests run"
    assert "./examples/envoy-mesh/compose/envoy-ingress.yaml:/etc/envoy/envoy.yaml:ro" in services["ingress"]["volumes"]
    assert f"{m.ingress.port}:{m.ingress.port}" in services["ingress"]["ports"]
    for s in m.sidecars:
        assert services[s.name]["command"] == mesh.app_args(m, s), s.name
        assert services[s.name]["build"] == "./examples/envoy-mesh"
        side = services[f"{s.name}-sidecar"]
        assert side["image"] == image and side["network_mode"] == f"service:{s.name}"
        assert side["volumes"] == [f"./examples/envoy-mesh/compose/envoy-{s.name}.yaml:/etc/envoy/envoy.yaml:ro"]
    # The Envoys reach meshlens where it listens, and the traffic reaches the ingress.
    env = services["meshlens"]["environment"]
    assert env["MESHLENS_OTLP_GRPC_ADDR"] == f"0.0.0.0:{m.otlp[1]}" and m.otlp[0] == "meshlens"
    assert env["MESHLENS_POLICY_ADDR"] == f"0.0.0.0:{m.policy[1]}" and m.policy[0] == "meshlens"
    assert services["traffic"]["command"][:3] == ["traffic", "--ingress", m.ingress.url]
    assert (EXAMPLE / "Dockerfile").is_file()


def test_the_example_refuses_bad_input(tmp_path):
    """The example's commands and apps answer bad input with a clear error, not a traceback."""
    def run(*argv):
        return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=30)
    bad = run(EXAMPLE / "mesh.py", "up", "--v2-fail-share", "2", "--state-dir", tmp_path / "mesh")
    assert bad.returncode == 2 and "--v2-fail-share must be within 0..1, got 2.0" in bad.stderr, bad.stderr
    assert not (tmp_path / "mesh").exists(), "nothing started"
    bad = run(EXAMPLE / "mesh.py", "traffic", "--rate", "0")
    assert bad.returncode == 2 and "--rate above 0" in bad.stderr, bad.stderr
    bad = run(EXAMPLE / "app.py", "meet", "--port", "1", "--fail-share", "-1")
    assert bad.returncode == 2 and "--fail-share must be within 0..1" in bad.stderr, bad.stderr

    port = free_base_port(1)
    app = subprocess.Popen([sys.executable, str(EXAMPLE / "app.py"), "meet", "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with http_session() as s:
            url = f"http://{LOOPBACK}:{port}"
            poll(lambda: mesh.get(url + "/healthz") == 200, timeout=10, what="the app")
            r = s.get(url + "/slow?ms=soon", timeout=5)
            assert (r.status_code, r.text) == (400, "ms must be a number of milliseconds, got 'soon'\n")
            assert s.get(url + "/slow?ms=nan", timeout=5).status_code == 200
            assert s.get(url + "/flaky", headers={"x-envoy-attempt-count": "2"}, timeout=5).status_code == 200
    finally:
        app.terminate()
        app.wait(timeout=10)
    assert "Traceback" not in app.stderr.read()
