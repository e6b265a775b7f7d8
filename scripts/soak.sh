#!/usr/bin/env bash
# The soak and chaos run (issue: hardened): a release meshlens through 3× overload, kill -9 at
# random moments, a full disk, PostgreSQL's connections cut, Redis killed during checks, a
# cardinality blast and a broken config, each fault started and stopped by the run; prints one
# table (loadgen/bench/soak.py says what each row holds). Exits 1 if any row did not hold.
# Needs root (a tmpfs is mounted for the full disk), PostgreSQL on 127.0.0.1:5432 (trust auth,
# database `test`), redis-server, and the Python venv of scripts/test.sh.
#   scripts/soak.sh [minutes] [phases]   (10; phases: all, or some of
#   overload,kill9,disk,postgres,redis,blast,config)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
VENV=$(bash scripts/python-env.sh)
cargo build --release -q -p meshlens -p meshlens-loadgen
exec "$VENV/bin/python" loadgen/bench/soak.py "$minutes" "$PWD/target/release" ${2:+"$2"}
