#!/usr/bin/env bash
# The span store's size and ingest rate for the mesh load, one or more builds side by side in one
# run: each case a fresh embedded SQLite, meshlens on core 0, meshlens-loadgen (512-span
# exports, 8 in flight, 2,048 distinct batches: about a million distinct spans) on core 1. After
# the load, meshlens stops (its store closes), the write-ahead log is checkpointed into the file,
# and the data directory's bytes are divided by the spans meshlens committed.
# Usage: scripts/bench-store.sh [seconds per case] [rounds] [LABEL=BINARY ...]
#   default: 20 s, 1 round, new=target/release/meshlens (built here)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}" ROUNDS="${2:-1}"
shift $(( $# >= 2 ? 2 : $# ))
cargo build --release -q -p meshlens -p meshlens-loadgen
LOADGEN=target/release/meshlens-loadgen
BUILDS=("$@")
[ ${#BUILDS[@]} -gt 0 ] || BUILDS=("new=target/release/meshlens")
source scripts/bench-lib.sh

run() { # $1 = label, $2 = binary, $3 = round
  rm -rf "$WORK/d"; mkdir -p "$WORK/d"
  serve_bench "$2" "sqlite://$WORK/d/m.db" 0
  local line
  line=$(taskset -c 1 "$LOADGEN" --endpoint 127.0.0.1:14317 --warmup 2s --duration "${SECS}s" \
    --distinct 2048 --server-pid "$SERVER_PID" --label "build=$1 round=$3")
  sleep 1
  local spans
  spans=$(curl -s http://127.0.0.1:20101/metrics | awk '$1 == "meshlens_store_spans_written_total" { print $2 }')
  kill -INT "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  wait_port_closed 14317
  sqlite3 "$WORK/d/m.db" 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
  local bytes
  bytes=$(du -sb "$WORK/d" | cut -f1)
  echo "$line stored_spans=$spans disk_bytes=$bytes bytes_per_span=$(python3 -c "print(round($bytes / max(1, $spans), 1))")" | tee -a "$WORK/results"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $SECS s per case, $ROUNDS rounds; ${BUILDS[*]}"
for r in $(seq 1 "$ROUNDS"); do
  for b in "${BUILDS[@]}"; do run "${b%%=*}" "${b#*=}" "$r"; done
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in open(sys.argv[1])]
for b in dict.fromkeys(r["build"] for r in rows):
    mine = [r for r in rows if r["build"] == b]
    print(f"{b}: median spans/s {statistics.median(float(r['spans_per_s']) for r in mine):.0f}, "
          f"median bytes/span {statistics.median(float(r['bytes_per_span']) for r in mine):.1f}")
PY
