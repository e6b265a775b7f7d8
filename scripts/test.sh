#!/usr/bin/env bash
# Runs every meshlens test on a fresh machine, installing what the tests need first:
#   formatting and clippy, every Rust test (the #[ignore]d ones too), and the Python
#   end-to-end suite (the real OpenTelemetry SDK and exporters, Envoy, Prometheus) against the
#   built binary.
# Needs: Rust stable, python3, PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`),
# Redis on 127.0.0.1:6379, and root (or sudo) for Debian's prometheus package.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python venv (pinned OpenTelemetry SDK, exporters, Envoy, pytest, check-jsonschema)"
VENV="$(scripts/python-env.sh)"

step "Debian packages (prometheus and promtool, for the dashboard tests)"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null \
    || { $SUDO apt-get update -q >/dev/null \
         && $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
fi
prometheus --version 2>&1 | head -1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo build (the binary the end-to-end tests run)"
cargo build --workspace -q

step "cargo test (including ignored tests)"
cargo test --workspace -q -- --include-ignored

step "pytest tests/python (OpenTelemetry SDK, Zipkin, bad input, crash, overload, Envoy, dashboards)"
MESHLENS_BIN="$PWD/target/debug/meshlens" "$VENV/bin/python" -m pytest -q tests/python
