"""Fixtures: meshlens as a subprocess on free loopback ports with a fresh SQLite database.

`meshlens` is one default instance per test; `meshlens_factory(*extra_args)` starts more, with
extra flags (for example a small --queue-spans). Every instance is stopped after the test
(SIGTERM, then SIGKILL on timeout). On failure the tail of each instance's log is attached to
the report. A panic in any log fails the test at teardown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from envoyhelpers import app_server  # noqa: E402
from mlhelpers import Meshlens, meshlens_binary  # noqa: E402

# Clients in this suite must never reach a proxy: every address is loopback.
for _k in list(os.environ):
    if _k.lower() in ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy"):
        del os.environ[_k]
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
# requests lets these override the CA a client is given (a session's `verify`): the TLS tests'
# clients must trust only the CA each test makes.
for _k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_k, None)


def pytest_configure(config):
    binary = meshlens_binary()
    if not os.access(binary, os.X_OK):
        raise pytest.UsageError(
            f"meshlens binary {binary!r} is missing or not executable; set MESHLENS_BIN or build it"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, ml in enumerate(getattr(item, "_meshlens_instances", [])):
            report.sections.append((f"meshlens[{i}] log tail ({ml.workdir})", ml.log_tail(80)))


@pytest.fixture
def meshlens_factory(request, tmp_path):
    instances: list[Meshlens] = []
    request.node._meshlens_instances = instances

    def start(*extra_args: str, name: str | None = None, auto_start: bool = True,
              command: str = "serve", tls_ca: Path | None = None) -> Meshlens:
        ml = Meshlens(tmp_path / (name or f"meshlens{len(instances)}"), extra_args, command=command,
                      tls_ca=tls_ca)
        instances.append(ml)
        if auto_start:
            ml.start()
        return ml

    yield start

    problems = []
    for ml in instances:
        try:
            ml.stop()
        except Exception as e:  # keep stopping the others
            problems.append(f"{ml.workdir}: stop failed: {e}")
        text = ml.log_text()
        if "panicked at" in text:
            problems.append(f"{ml.workdir}: meshlens panicked:\n{ml.log_tail(80)}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def meshlens(meshlens_factory) -> Meshlens:
    return meshlens_factory()


@pytest.fixture
def app_port():
    """A small upstream app (503 on /fail) on a free loopback port, for Envoy tests."""
    with app_server() as port:
        yield port
