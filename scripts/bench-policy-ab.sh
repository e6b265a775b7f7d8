#!/usr/bin/env bash
# Two meshlens builds side by side in one run, alternating case by case, so the machine's
# minute weighs on both alike: the policy check benchmark's in-memory cases (closed loop and
# 10,000/s, rate limit service and ext_authz), each server fresh, the same client.
# Usage: scripts/bench-policy-ab.sh OLD_BIN NEW_BIN [seconds per case] [rounds]
# (build the old one from a worktree: git worktree add /tmp/old REV && (cd /tmp/old &&
#  CARGO_TARGET_DIR=$PWD/../…/target cargo build --release -p meshlens) and copy the binary away.)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD="$1" NEW="$2" SECS="${3:-8}" ROUNDS="${4:-2}"
cargo build --release -q -p meshlens-loadgen
GEN=target/release/meshlens-checkgen
source scripts/bench-lib.sh
CONF=loadgen/bench

run() { # $1 = label, $2 = binary, $3 = api, $4 = rate (0 = closed loop)
  "$2" serve --database-url "sqlite://$WORK/m.db" --otlp-grpc-addr 127.0.0.1:14317 --otlp-http-addr 127.0.0.1:14318 \
    --zipkin-addr 127.0.0.1:19411 --policy-addr 127.0.0.1:19091 --web-addr 127.0.0.1:20101 --log-level warn \
    --ratelimit-dir "$CONF/ratelimit" --policy-file "$CONF/policy.yaml" --quota-backend memory \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 19091
  "$GEN" --api "$3" --endpoint 127.0.0.1:19091 --rate "$4" --in-flight 32 --seconds "$SECS" \
    --web 127.0.0.1:20101 --server-pid "$SERVER_PID" --label "build=$1"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; rm -f "$WORK"/m.db*
  wait_port_closed 19091
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $SECS s per case, $ROUNDS rounds; old=$OLD new=$NEW"
for r in $(seq 1 "$ROUNDS"); do
  for api in ratelimit authz; do
    for rate in 0 10000; do
      # Alternate which goes first, round by round.
      if [ $((r % 2)) = 1 ]; then run old "$OLD" "$api" "$rate"; run new "$NEW" "$api" "$rate"
      else run new "$NEW" "$api" "$rate"; run old "$OLD" "$api" "$rate"; fi
    done
  done
done
