#!/usr/bin/env bash
# Two meshlens builds side by side in one run, alternating, so the machine's minute weighs on
# both alike: OTLP/gRPC ingest (meshlens-loadgen: 512-span exports, 8 in flight, unique trace
# ids) into a fresh embedded SQLite, server on core 0, load on core 1.
# Usage: scripts/bench-ingest-ab.sh OLD_BIN NEW_BIN [seconds per case] [rounds]   (10 s, 4)
# (build the old one as scripts/bench-policy-ab.sh says.)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="$1" NEW="$2" SECS="${3:-10}" ROUNDS="${4:-4}"
cargo build --release -q -p meshlens-loadgen
LOADGEN=target/release/meshlens-loadgen
source scripts/bench-lib.sh

run() { # $1 = label, $2 = binary, $3 = round
  rm -rf "$WORK/d"; mkdir -p "$WORK/d"
  serve_bench "$2" "sqlite://$WORK/d/m.db" 0
  taskset -c 1 "$LOADGEN" --endpoint 127.0.0.1:14317 --warmup 2s --duration "${SECS}s" \
    --server-pid "$SERVER_PID" --label "build=$1 round=$3" | tee -a "$WORK/results"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  wait_port_closed 14317
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $SECS s per case, $ROUNDS rounds; old=$OLD new=$NEW"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run old "$OLD" "$r"; run new "$NEW" "$r"
  else run new "$NEW" "$r"; run old "$OLD" "$r"; fi
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in open(sys.argv[1])]
med = {b: statistics.median(float(r["spans_per_s"]) for r in rows if r["build"] == b) for b in ("old", "new")}
print(f"median spans/s: old {med['old']:.0f}  new {med['new']:.0f}  new/old {med['new'] / med['old']:.2f}")
PY
