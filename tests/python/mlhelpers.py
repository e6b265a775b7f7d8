"""Shared helpers for the meshlens end-to-end suite: process control, HTTP, metrics, OTLP builders.

Everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import requests

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def meshlens_binary() -> str:
    return os.environ.get("MESHLENS_BIN") or str(REPO / "target" / "debug" / "meshlens")


def http_session() -> requests.Session:
    """A session that ignores proxy settings from the environment: traffic stays on loopback."""
    s = requests.Session()
    s.trust_env = False
    return s


# One session per thread is the safe way to use requests concurrently; tests that run threads
# create their own. This one is for the test's main thread.
HTTP = http_session()


def free_ports(n: int) -> list[int]:
    """Ports the kernel hands out for port 0, all held at once so they are distinct, then released."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def child_env() -> dict[str, str]:
    """The environment for meshlens: no MESHLENS_* or RUST_LOG leaking in from the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHLENS_") and k != "RUST_LOG" and "proxy" not in k.lower()
    }
    env["NO_COLOR"] = "1"
    env["RUST_BACKTRACE"] = "1"
    return env


class Meshlens:
    """One meshlens process (restartable on the same database), with its addresses and logs."""

    def __init__(self, workdir: Path, extra_args: list[str] | tuple[str, ...] = (), db_path: Path | None = None,
                 command: str = "serve", tls_ca: Path | None = None, database_url: str | None = None):
        """`tls_ca`: meshlens' HTTP listeners speak TLS with a certificate from this CA;
        `database_url`: another store than SQLite at `db_path`."""
        self.command = command
        self.scheme = "https" if tls_ca else "http"
        self.http = http_session()
        if tls_ca:
            self.http.verify = str(tls_ca)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path) if db_path else self.workdir / "meshlens.db"
        self.database_url = database_url or f"sqlite://{self.db_path}"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logs: list[Path] = []
        self.otlp_grpc = self.otlp_http = self.zipkin = self.policy = self.web = ""

    # addresses ---------------------------------------------------------------------------------
    @property
    def otlp_http_url(self) -> str:
        return f"{self.scheme}://{self.otlp_http}"

    @property
    def traces_url(self) -> str:
        return f"{self.scheme}://{self.otlp_http}/v1/traces"

    @property
    def zipkin_url(self) -> str:
        return f"{self.scheme}://{self.zipkin}/api/v2/spans"

    @property
    def web_url(self) -> str:
        return f"{self.scheme}://{self.web}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "Meshlens":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        last_error = None
        for _attempt in range(3):  # a picked port can be taken between release and bind
            try:
                self._start_once()
                return self
            except PortRace as e:
                last_error = e
        raise RuntimeError(f"meshlens did not start: {last_error}")

    def _start_once(self) -> None:
        ports = free_ports(5)
        self.otlp_grpc, self.otlp_http, self.zipkin, self.policy, self.web = (
            f"{LOOPBACK}:{p}" for p in ports
        )
        self.starts += 1
        log_path = self.workdir / f"meshlens-{self.starts}.log"
        self.logs.append(log_path)
        args = [
            meshlens_binary(),
            self.command,
            "--otlp-grpc-addr", self.otlp_grpc,
            "--otlp-http-addr", self.otlp_http,
            "--zipkin-addr", self.zipkin,
            "--policy-addr", self.policy,
            "--web-addr", self.web,
            "--database-url", self.database_url,
            "--log-level", "info",
            *self.extra_args,
        ]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=child_env(),
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = log_path.read_text(errors="replace")
                if "Address already in use" in text or "address in use" in text.lower():
                    raise PortRace(text[-2000:])
                raise RuntimeError(
                    f"meshlens exited with {self.proc.returncode} before it was ready:\n{text[-4000:]}"
                )
            try:
                r = self.http.get(f"{self.web_url}/readyz", timeout=1)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"meshlens not ready within {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, SIGKILL on timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, as far as meshlens can tell."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # diagnostics -------------------------------------------------------------------------------
    def log_text(self) -> str:
        parts = []
        for p in self.logs:
            if p.exists():
                parts.append(f"===== {p.name} =====\n" + p.read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def peak_rss_kb(self) -> int:
        """VmHWM (peak resident set) of the running process, in kB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.M)
        assert m, status
        return int(m.group(1))


class PortRace(Exception):
    pass


# HTTP / JSON helpers -----------------------------------------------------------------------------

def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminates a child process, killing it if it has not ended within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get_json(url: str, expect: int = 200, session: requests.Session | None = None, **params) -> Any:
    r = (session or HTTP).get(url, params=params or None, timeout=10)
    assert r.status_code == expect, f"GET {r.url}: expected {expect}, got {r.status_code}: {r.text[:2000]}"
    return r.json()


def poll(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Calls fn until it returns something truthy or the deadline passes; returns that value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metrics_samples(web_url: str, session: requests.Session | None = None) -> list[tuple[str, dict[str, str], float]]:
    r = (session or HTTP).get(f"{web_url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    out = []
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric(web_url: str, name: str, session: requests.Session | None = None, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`; 0 when there is none yet
    (a labelled counter appears only once incremented)."""
    total = 0.0
    for n, ls, v in metrics_samples(web_url, session):
        if n == name and all(ls.get(k) == want for k, want in labels.items()):
            total += v
    return total


def get_trace(ml: Meshlens, trace_id: str, session: requests.Session | None = None) -> dict:
    """The single trace of GET /api/traces/{id}, asserting the envelope's shape."""
    body = get_json(f"{ml.web_url}/api/traces/{trace_id}", session=session or ml.http)
    assert isinstance(body["data"], list) and len(body["data"]) == 1, body
    assert not body.get("errors"), body
    return body["data"][0]


def jaeger_trace_id(trace_id: bytes) -> str:
    """How the Jaeger API prints an id: 32 hex digits, or 16 when the high half is zero."""
    h = trace_id.hex()
    return h[16:] if h.startswith("0" * 16) else h


def tags_dict(tags: list[dict]) -> dict[str, tuple[str, Any]]:
    out = {}
    for t in tags:
        assert t["key"] not in out, f"duplicate tag {t['key']} in {tags}"
        out[t["key"]] = (t["type"], t["value"])
    return out


# OTLP protobuf builders --------------------------------------------------------------------------

def now_ns() -> int:
    return time.time_ns()


def rand_trace_id() -> bytes:
    return secrets.token_bytes(16)


def rand_span_id() -> bytes:
    return secrets.token_bytes(8)


def kv(key: str, value: Any) -> common_pb2.KeyValue:
    av = common_pb2.AnyValue()
    if isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = value
    elif isinstance(value, float):
        av.double_value = value
    elif isinstance(value, str):
        av.string_value = value
    else:
        raise TypeError(value)
    return common_pb2.KeyValue(key=key, value=av)


def make_span(
    trace_id: bytes,
    span_id: bytes | None = None,
    name: str = "op",
    parent: bytes = b"",
    start_ns: int | None = None,
    duration_ns: int = 1_000_000,
    kind: int = trace_pb2.Span.SPAN_KIND_INTERNAL,
    attrs: dict[str, Any] | None = None,
    end_ns: int | None = None,
) -> trace_pb2.Span:
    start = start_ns if start_ns is not None else now_ns()
    return trace_pb2.Span(
        trace_id=trace_id,
        span_id=span_id if span_id is not None else rand_span_id(),
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=end_ns if end_ns is not None else start + duration_ns,
        attributes=[kv(k, v) for k, v in (attrs or {}).items()],
    )


def make_request(spans: list[trace_pb2.Span], service: str = "e2e-svc") -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=[kv("service.name", service)]),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="meshlens.e2e"),
                        spans=spans,
                    )
                ],
            )
        ]
    )


def make_trace_request(n_spans: int, service: str = "e2e-svc", name_prefix: str = "op") -> tuple[bytes, list[bytes], bytes]:
    """One trace of `n_spans` spans (a root and its children): (trace_id, span_ids, serialized request)."""
    tid = rand_trace_id()
    start = now_ns()
    root = rand_span_id()
    ids = [root]
    spans = [make_span(tid, root, name=f"{name_prefix}-root", start_ns=start, duration_ns=5_000_000,
                       kind=trace_pb2.Span.SPAN_KIND_SERVER, attrs={"i": 0})]
    for i in range(1, n_spans):
        sid = rand_span_id()
        ids.append(sid)
        spans.append(make_span(tid, sid, name=f"{name_prefix}-{i % 7}", parent=root,
                               start_ns=start + i * 1000, duration_ns=1000, attrs={"i": i}))
    return tid, ids, make_request(spans, service).SerializeToString()


def post_otlp(url: str, body: bytes, session: requests.Session | None = None, content_type: str = "application/x-protobuf",
              timeout: float = 30, **headers: str) -> requests.Response:
    h = {"Content-Type": content_type}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    return (session or HTTP).post(url, data=body, headers=h, timeout=timeout)


def fresh_minute() -> None:
    """Waits, when fewer than 5 s are left in the current minute, for the next one, so a test's
    hits on a per-minute fixed window (aligned to the epoch) fall in one window."""
    into = time.time() % 60
    if into > 55:
        time.sleep(60.05 - into)
