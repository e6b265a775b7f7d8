#!/usr/bin/env bash
# Runs every meshlens test on a fresh machine, installing what the tests need first:
#   formatting and clippy, every Rust test (the #[ignore]d ones too), and the Python
#   end-to-end suite (the real OpenTelemetry SDK and exporters) against the built binary.
# Needs: Rust stable, python3, PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`),
# Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python venv (pinned OpenTelemetry SDK, exporters, pytest)"
VENV="$(scripts/python-env.sh)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo build (the binary the end-to-end tests run)"
cargo build --workspace -q

step "cargo test (including ignored tests)"
cargo test --workspace -q -- --include-ignored

step "pytest tests/python (OpenTelemetry SDK, Zipkin, bad input, crash, overload)"
MESHLENS_BIN="$PWD/target/debug/meshlens" "$VENV/bin/python" -m pytest -q tests/python
