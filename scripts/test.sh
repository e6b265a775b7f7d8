#!/usr/bin/env bash
# Runs every meshlens test on a fresh machine, installing what the tests need first:
#   formatting and clippy, every Rust test (the #[ignore]d ones too), and the Python
#   end-to-end suite (the real OpenTelemetry SDK and exporters, Envoy, Prometheus) and the
#   browser suite (Debian's Chromium via playwright-core) against the built binary.
# Needs: Rust stable, python3, PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`),
# Redis on 127.0.0.1:6379, Node.js with npm, and root (or sudo) for Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python venv (pinned OpenTelemetry SDK, exporters, Envoy, pytest, check-jsonschema)"
VENV="$(scripts/python-env.sh)"

step "Debian packages (prometheus and promtool for the dashboard tests, chromium for the UI tests, openssl for the TLS tests' certificates)"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || [ ! -x /usr/bin/chromium ] \
   || ! command -v openssl >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  PKGS="prometheus chromium openssl"
  $SUDO apt-get install -y -q --no-install-recommends $PKGS >/dev/null \
    || { $SUDO apt-get update -q >/dev/null \
         && $SUDO apt-get install -y -q --no-install-recommends $PKGS >/dev/null; }
fi
prometheus --version 2>&1 | head -1
/usr/bin/chromium --version

step "npm packages (playwright-core, pinned in tests/ui/package-lock.json)"
(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)

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

step "node --test tests/ui (the web UI in headless Chromium via playwright-core)"
(cd tests/ui && MESHLENS_BIN="$PWD/../../target/debug/meshlens" node --test --test-concurrency=1)

step "fuzzing: every decoder of untrusted input, AFL++ for ${FUZZ_SECONDS:-15}s each (scripts/fuzz.sh)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
