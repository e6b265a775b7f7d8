#!/usr/bin/env bash
# The OTLP ingest benchmark, side by side in one run:
#   meshlens into SQLite and into PostgreSQL (OTLP/gRPC and OTLP/HTTP), and rotel (a Rust OTLP
#   collector, blackhole exporter) as the peer; unpinned, then pinned (server on core 0, load
#   generator on core 1). Prints one result line per case.
# Usage: scripts/bench-ingest.sh [seconds per case]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
BATCH="${BATCH:-512}"
IN_FLIGHT="${IN_FLIGHT:-8}"
PG_URL="${MESHLENS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"

cargo build --release -q -p meshlens -p meshlens-loadgen
VENV="$(scripts/python-env.sh)"
ROTEL="$("$VENV/bin/python" -c 'import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
BIN=target/release/meshlens
LOADGEN=target/release/meshlens-loadgen
source scripts/bench-lib.sh


start_meshlens() { serve_bench "$BIN" "$1" "$2"; } # $1 = database url, $2 = cpu list or ""

start_rotel() { # $1 = cpu list or ""
  local pin=(); [ -n "$1" ] && pin=(taskset -c "$1")
  "${pin[@]}" "$ROTEL" start --exporter blackhole --otlp-grpc-endpoint 127.0.0.1:14317 \
    --otlp-http-endpoint 127.0.0.1:14318 >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 14317; wait_port 14318
}

stop_server() { kill -INT "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }

load() { # $1 label, $2 protocol, $3 port, $4 cpu list or ""
  local pin=(); [ -n "$4" ] && pin=(taskset -c "$4")
  "${pin[@]}" "$LOADGEN" --protocol "$2" --endpoint "127.0.0.1:$3" --batch "$BATCH" --in-flight "$IN_FLIGHT" \
    --duration "${SECS}s" --server-pid "$SERVER_PID" --label "$1"
}

reset_pg() {
  PGOPTIONS='--client-min-messages=warning' psql -q "$PG_URL" -c 'DROP SCHEMA IF EXISTS meshlens_bench CASCADE; CREATE SCHEMA meshlens_bench;' >/dev/null
}
PG_BENCH_URL="$PG_URL?options=-c%20search_path%3Dmeshlens_bench"

echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); batch=$BATCH in_flight=$IN_FLIGHT ${SECS}s per case"
for mode in unpinned pinned; do
  if [ "$mode" = pinned ]; then S=0; C=1; else S=""; C=""; fi
  for proto in grpc http; do
    port=14317; [ "$proto" = http ] && port=14318
    start_rotel "$S"; load "rotel-blackhole $mode" "$proto" "$port" "$C"; stop_server
    rm -f "$WORK/bench.db"*
    start_meshlens "sqlite://$WORK/bench.db" "$S"; load "meshlens-sqlite $mode" "$proto" "$port" "$C"; stop_server
    reset_pg
    start_meshlens "$PG_BENCH_URL" "$S"; load "meshlens-postgres $mode" "$proto" "$port" "$C"; stop_server
  done
done
