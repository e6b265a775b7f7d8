#!/usr/bin/env python3
"""The example mesh's demo app (Python standard library only). One program plays each service:

  app.py work --version v2 --port 8082 --meet http://127.0.0.1:15001 --fail-share 0.2
  app.py meet --version v1 --port 8083

`work` answers 503 for its `--fail-share` of requests (spread evenly: exactly 1 in 5 at 0.2) and
otherwise calls `meet` through its sidecar's outbound listener with the same path, passing on the
trace context so the sidecars' spans join one trace. `meet` answers 200, except:

  /slow?ms=N   sleeps N ms first (default 1000): many at once overflow a circuit breaker
  /flaky       503 on a request's first attempt, 200 on the retry (Envoy's x-envoy-attempt-count)
  /fail        503 always: five in a row and work's sidecar ejects meet for 30 s

Both answer /healthz. Neither app knows about meshlens: the sidecars report everything.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import threading
import time
import urllib.parse

# Headers an app must copy from the request it serves to the requests it makes, so that the
# sidecars' spans form one trace (W3C and B3 trace context, Envoy's request id) and user-agent
# routing holds downstream.
PROPAGATED = ("traceparent", "tracestate", "x-request-id", "x-b3-traceid", "x-b3-spanid",
              "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3", "user-agent", "x-user")


class Failures:
    """Fails exactly `share` of calls, spread evenly (error diffusion), safe across threads."""

    def __init__(self, share: float):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"--fail-share must be within 0..1, got {share}")
        self.share = share
        self.calls = 0
        self.lock = threading.Lock()

    def next_fails(self) -> bool:
        with self.lock:
            before = int(self.calls * self.share)
            self.calls += 1
            return int(self.calls * self.share) > before


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "AppServer"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            return self.reply(200, "ok\n")
        app = self.server.app
        if app.service == "meet":
            return self.meet()
        if app.failures.next_fails():
            return self.reply(503, f"{app.name} failed (configured failure share {app.failures.share})\n")
        status, body = self.call_meet()
        self.reply(status, f"{app.name} <- {body}")

    do_POST = do_GET

    def meet(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/slow"):
            ms = urllib.parse.parse_qs(url.query).get("ms", ["1000"])[0]
            try:
                delay = min(max(float(ms), 0.0), 30_000.0) / 1000
            except ValueError:
                return self.reply(400, f"ms must be a number of milliseconds, got {ms!r}\n")
            time.sleep(delay if delay == delay else 0.0)  # NaN sleeps not at all
        if url.path.startswith("/flaky") and self.headers.get("x-envoy-attempt-count", "1") == "1":
            return self.reply(503, f"{self.server.app.name} failed the first attempt\n")
        if url.path.startswith("/fail"):
            return self.reply(503, f"{self.server.app.name} failed, as asked\n")
        self.reply(200, f"{self.server.app.name} ok\n")

    def call_meet(self) -> tuple[int, str]:
        upstream = self.server.app.meet
        headers = {k: v for k in PROPAGATED if (v := self.headers.get(k)) is not None}
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
        try:
            conn.request("GET", self.path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        except OSError as e:
            return 502, f"meet unreachable: {e}\n"
        finally:
            conn.close()

    def reply(self, status: int, text: str):
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class AppServer(http.server.ThreadingHTTPServer):
    # A burst of slow requests (the circuit-breaker demo) must queue, not be refused.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, address, app: "App"):
        super().__init__(address, Handler)
        self.app = app


class App:
    def __init__(self, service: str, version: str, fail_share: float, meet: str | None):
        self.service = service
        self.name = f"{service} {version}"
        self.failures = Failures(fail_share)
        self.meet = urllib.parse.urlsplit(meet) if meet else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("service", choices=["work", "meet"])
    p.add_argument("--version", default="v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--fail-share", type=float, default=0.0, help="share of requests work fails (0..1)")
    p.add_argument("--meet", help="work: meet's address through the sidecar, e.g. http://127.0.0.1:15001")
    a = p.parse_args()
    if a.service == "work" and not a.meet:
        p.error("work needs --meet")
    if not 0.0 <= a.fail_share <= 1.0:
        p.error(f"--fail-share must be within 0..1, got {a.fail_share}")
    server = AppServer((a.host, a.port), App(a.service, a.version, a.fail_share, a.meet))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
