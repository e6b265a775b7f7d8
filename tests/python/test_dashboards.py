"""The Grafana dashboards, the Prometheus config and the compose file, proven on real parts.

Three meshlens replicas (one counting quotas in memory, one whose Redis is unreachable, failing
open, one on the real Redis) get synthetic mesh spans, proxy metrics, ext_authz and rate limit checks and some bad
input; Debian's Prometheus scrapes all three with the repo's deploy/prometheus.yml; then every
PromQL expression of every dashboard panel and variable, with the variables substituted, is
evaluated through Prometheus' HTTP API and must parse and return data. The Jaeger panels'
queries go to meshlens' Jaeger API. promtool checks the config and meshlens' /metrics, and the
compose file is validated against the Compose specification's JSON schema.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlhelpers import HTTP, LOOPBACK, REPO, Meshlens, free_ports, get_json, meshlens_binary, poll

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
# What the test substitutes for the dashboards' variables ($service is picked from the data).
WINDOW = "1m"
ALL = ".*"


def require_prometheus() -> None:
    # Installed by scripts/test.sh; a missing binary fails, it does not skip.
    assert PROMETHEUS and PROMTOOL, "prometheus and promtool are needed (Debian package prometheus)"


def bin_path(name: str) -> str:
    return str(Path(meshlens_binary()).parent / name)


def istio_metrics(n: int) -> dict:
    """istio_requests_total as front's and work's proxies report it, plus one invalid point."""
    attr = lambda k, v: {"key": k, "value": {"stringValue": v}}  # noqa: E731
    point = [attr("reporter", "destination"), attr("source_canonical_service", "front"),
             attr("source_version", "v1"), attr("destination_canonical_service", "work"),
             attr("destination_version", "v2"), attr("destination_service_namespace", "shop"),
             attr("source_workload_namespace", "shop"), attr("response_code", "200")]
    return {"resourceMetrics": [{
        "resource": {"attributes": [attr("service.name", "work")]},
        "scopeMetrics": [{"metrics": [
            {"name": "istio_requests_total", "sum": {
                "aggregationTemporality": 1, "isMonotonic": True,
                "dataPoints": [{"asInt": str(n), "timeUnixNano": str(time.time_ns()), "attributes": point}]}},
            {"name": "istio_request_duration_milliseconds", "histogram": {
                "aggregationTemporality": 1,
                "dataPoints": [{"count": "1", "bucketCounts": ["1"], "explicitBounds": [1.0, 5.0]}]}},
        ]}],
    }]}


def bad_input(ml: Meshlens) -> None:
    """A batch with one invalid span beside a good one, a malformed body, and metrics with a bad
    point: each refusal is counted by reason."""
    good = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "ok",
            "startTimeUnixNano": str(time.time_ns() - 1000), "endTimeUnixNano": str(time.time_ns())}
    bad = dict(good, spanId="eee19b7ec3c1b1", name="short id")
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "edge"}}]},
        "scopeSpans": [{"spans": [good, bad]}]}]}
    r = HTTP.post(f"{ml.otlp_http_url}/v1/traces", json=body, timeout=10)
    assert r.status_code == 200 and r.json().get("partialSuccess", {}).get("rejectedSpans") in (1, "1"), r.text
    r = HTTP.post(f"{ml.otlp_http_url}/v1/traces", data=b"{not json", timeout=10,
                  headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    r = HTTP.post(f"{ml.otlp_http_url}/v1/metrics", json=istio_metrics(5), timeout=10)
    assert r.status_code == 200, r.text


class Stack:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.instances: list[Meshlens] = []
        self.procs: list[subprocess.Popen] = []
        self.prom_url = ""

    def meshlens(self, name: str, *args: str) -> Meshlens:
        policy = REPO / "examples" / "policy"
        ml = Meshlens(self.workdir / name, ["--ratelimit-dir", str(policy / "ratelimit"),
                                            "--policy-file", str(policy / "policy.yaml"), *args])
        self.instances.append(ml)
        return ml.start()

    def spawn(self, *args: str, log: str) -> subprocess.Popen:
        with open(self.workdir / log, "wb") as out:
            p = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def checks(self, ml: Meshlens, api: str, *args: str) -> None:
        self.spawn(bin_path("meshlens-checkgen"), "--api", api, "--endpoint", ml.policy, "--keys", "5",
                   "--rate", "4", "--warmup-seconds", "0", "--seconds", "300", *args,
                   log=f"checkgen-{len(self.procs)}.log")

    def prometheus(self) -> None:
        config = (REPO / "deploy" / "prometheus.yml").read_text()
        targets = json.dumps([ml.web for ml in self.instances])
        for old, new in (('["meshlens:20001"]', targets), ("scrape_interval: 10s", "scrape_interval: 1s"),
                         ("evaluation_interval: 10s", "evaluation_interval: 1s")):
            assert old in config, f"deploy/prometheus.yml no longer has {old!r}; update this test"
            config = config.replace(old, new)
        path = self.workdir / "prometheus.yml"
        path.write_text(config)
        port = free_ports(1)[0]
        self.prom_url = f"http://{LOOPBACK}:{port}"
        p = self.spawn(PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                       f"--web.listen-address={LOOPBACK}:{port}", "--log.level=warn", log="prometheus.log")

        def ready():
            assert p.poll() is None, (self.workdir / "prometheus.log").read_text()[-3000:]
            try:
                return HTTP.get(f"{self.prom_url}/-/ready", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        poll(ready, timeout=30, what="prometheus ready")

    def query(self, expr: str) -> list[dict]:
        r = HTTP.get(f"{self.prom_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n{r.text}"
        return body["data"]["result"]

    def label_values(self, label: str, selector: str) -> list[str]:
        r = HTTP.get(f"{self.prom_url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def stop(self) -> list[str]:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        problems = []
        for ml in self.instances:
            ml.stop()
            if "panicked at" in ml.log_text():
                problems.append(f"{ml.workdir}: meshlens panicked:\n{ml.log_tail(80)}")
        return problems


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_prometheus()
    s = Stack(tmp_path_factory.mktemp("dashboards"))
    try:
        dead_redis = free_ports(1)[0]  # nothing listens here: every quota check fails open
        a = s.meshlens("a")
        b = s.meshlens("b", "--quota-backend", "redis", "--redis-url", f"redis://{LOOPBACK}:{dead_redis}",
                       "--policy-failure-mode", "open")
        # On the real Redis, with a key prefix of this run's own: users over their limit are then
        # answered from the local record.
        redis_config = s.workdir / "redis.toml"
        redis_config.write_text(f'[policy]\nbackend = "redis"\nredis_url = "redis://{LOOPBACK}:6379"\n'
                                f'redis_key_prefix = "meshlens_dash_{time.time_ns()}_"\nredis_timeout = "500ms"\n')
        c = s.meshlens("c", "--config", str(redis_config))
        s.spawn(bin_path("meshlens-loadgen"), "--endpoint", a.otlp_grpc, "--rate", "20", "--batch", "50",
                "--in-flight", "1", "--warmup", "0s", "--duration", "300s", log="loadgen.log")
        s.checks(c, "authz")                                       # over at once: the local record
        for ml in (a, b):
            s.checks(ml, "authz")                                  # per-user quota: mostly 429
            s.checks(ml, "authz", "--method", "DELETE")            # no ALLOW rule: 403, and audited
            s.checks(ml, "ratelimit", "--domain", "edge")          # 30 a minute per user
        s.prometheus()
        for ml in (a, b):
            bad_input(ml)
        yield s
    finally:
        problems = s.stop()
    assert not problems, "\n".join(problems)


def substitute(expr: str, service: str) -> str:
    out = expr.replace("$__rate_interval", WINDOW).replace("$window", WINDOW).replace("$service", service)
    for var in ("namespace", "version", "instance"):
        out = out.replace(f"${var}", ALL)
    assert not re.search(r"\$(?!\d)", out), f"unsubstituted variable in {out}"
    return out


def pick_service(s: Stack) -> str:
    """A service with callers, callees and versions in the data, as a user would pick one."""
    servers = set(s.label_values("server", "traces_service_graph_request_total"))
    clients = set(s.label_values("client", "traces_service_graph_request_total"))
    both = sorted(servers & clients)
    assert both, f"no service both calls and is called: {servers} {clients}"
    return both[0]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_every_panel_query_returns_data_on_prometheus(stack, path):
    dashboard = json.loads(path.read_text())
    service = poll(lambda: pick_service(stack) if stack.label_values("server", "traces_service_graph_request_total")
                   else None, timeout=30, what="service graph series in Prometheus")
    # Variables first: each offers values.
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert m, var["query"]
        selector = substitute(m.group(1), service)
        values = poll(lambda: stack.label_values(m.group(2), selector), timeout=30,
                      what=f"values of ${var['name']}")
        if var["name"] == "service":
            assert service in values

    queries = []
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            if "expr" in t:
                queries.append((panel["title"], t["refId"], substitute(t["expr"], service)))
    assert queries
    # Rates need two scrapes of a change; retry until every query has data, or report the empty ones.
    empty: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        empty = [f"{title} [{ref}]: {expr}" for title, ref, expr in queries if not stack.query(expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, f"{path.name}: queries with no data:\n" + "\n".join(empty)

    for panel in dashboard["panels"]:
        if panel["type"] == "nodeGraph":
            by_ref = {t["refId"]: stack.query(substitute(t["expr"], service)) for t in panel["targets"]}
            nodes, edges = by_ref["nodes"], by_ref["edges"]
            ids = {n["metric"]["id"] for n in nodes}
            assert all(n["metric"]["title"] == n["metric"]["id"] for n in nodes)
            assert len(ids) == len(nodes), "one row per node"
            for e in edges:
                m = e["metric"]
                assert m["source"] in ids and m["target"] in ids, m
                assert m["id"] == f"{m['source']}->{m['target']}"
        for t in panel.get("targets", []):
            if t["datasource"]["type"] == "jaeger":
                assert t["queryType"] == "search"
                web = stack.instances[0].web_url
                body = get_json(f"{web}/api/traces", service=t["service"].replace("$service", service),
                                limit=str(t["limit"]))
                assert body["data"], f"{panel['title']}: no traces for {service}"


def test_the_service_dashboard_compares_versions(stack):
    """The canary table's queries on svc-01, which the load generator splits 80/20 between v1
    and v2, v2 failing 20% more: the split and the worse v2 show."""
    service = json.loads((REPO / "dashboards" / "service.json").read_text())
    table = next(p for p in service["panels"] if p["title"] == "Versions side by side")
    exprs = {t["refId"]: substitute(t["expr"], "svc-01") for t in table["targets"]}

    def by_version(ref: str) -> dict[str, float]:
        return {r["metric"]["server_service_version"]: float(r["value"][1]) for r in stack.query(exprs[ref])}

    # Enough calls that the first scrape of each new series (which rate() cannot count) is small.
    poll(lambda: len(by_version("rps")) == 2 and sum(by_version("rps").values()) * 60 > 600, timeout=60,
         what="600 calls into svc-01 within the window")
    rps = by_version("rps")
    assert set(rps) == {"v1", "v2"}
    share = rps["v2"] / (rps["v1"] + rps["v2"])
    assert 0.08 < share < 0.35, rps  # 20% of a few hundred calls a minute
    errors = by_version("errors")
    assert errors["v2"] > errors["v1"] + 0.05, errors
    for ref in ("p50", "p95", "p99"):
        assert set(by_version(ref)) == {"v1", "v2"}, ref


def test_promtool_accepts_the_config_and_meshlens_metrics(stack):
    out = subprocess.run([PROMTOOL, "check", "config", str(REPO / "deploy" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    for ml in stack.instances:
        text = HTTP.get(f"{ml.web_url}/metrics", timeout=10).text
        assert "traces_service_graph_request_total" in text or ml is not stack.instances[0]
        out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_dashboards_json_is_generated_from_generate_py():
    out = subprocess.run([sys.executable, str(REPO / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def check_compose(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(tool), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_validates_against_the_compose_spec(tmp_path):
    out = check_compose(REPO / "docker-compose.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    # The validator does refuse what the specification forbids.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((REPO / "docker-compose.yml").read_text().replace("    ports:\n", "    portz:\n", 1))
    out = check_compose(broken)
    assert out.returncode != 0 and "portz" in out.stdout, out.stdout + out.stderr


def test_compose_stack_is_wired_together():
    from ruamel.yaml import YAML

    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"meshlens", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    assert services["meshlens"]["command"] == ["serve"]
    assert "traffic" in services, "the example mesh's traffic keeps the dashboards busy"
    # Every bind mount and build context exists in the repo.
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert (ctx / "Dockerfile").is_file(), name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name}: {src} missing"
    # Prometheus scrapes meshlens where meshlens listens; Grafana reads Prometheus and meshlens.
    env = services["meshlens"]["environment"]
    web_port = env["MESHLENS_WEB_ADDR"].rsplit(":", 1)[1]
    assert env["MESHLENS_WEB_ADDR"].startswith("0.0.0.0:")
    assert f'"meshlens:{web_port}"' in (REPO / "deploy" / "prometheus.yml").read_text()
    sources = YAML(typ="safe").load((REPO / "dashboards/provisioning/datasources/meshlens.yaml").read_text())
    urls = {d["type"]: d["url"] for d in sources["datasources"]}
    assert urls["prometheus"] == "http://prometheus:9090"
    assert urls["jaeger"] == f"http://meshlens:{web_port}"
    # Quotas on Redis, spans on PostgreSQL, both services in the file.
    assert env["MESHLENS_QUOTA_BACKEND"] == "redis" and "redis:6379" in env["MESHLENS_REDIS_URL"]
    assert env["MESHLENS_DATABASE_URL"].startswith("postgres://") and "@postgres:" in env["MESHLENS_DATABASE_URL"]
    # The policy files meshlens is pointed at are the example mesh's, mounted where it looks.
    assert "./examples/envoy-mesh/policy:/etc/meshlens/policy:ro" in services["meshlens"]["volumes"]
    for var in ("MESHLENS_POLICY_FILES", "MESHLENS_RATELIMIT_DIR"):
        inside = Path(env[var]).relative_to("/etc/meshlens/policy")
        assert (REPO / "examples/envoy-mesh/policy" / inside).exists(), var
