#!/usr/bin/env bash
# The policy check benchmark, side by side in one run: meshlens' rate limit service and ext_authz
# Check on the memory backend and on Redis (127.0.0.1:6379), each closed loop (maximum) and open
# loop at a fixed rate (latency from when each call was due). The client is
# target/release/meshlens-checkgen on the same 2 cores (unpinned; two cases pinned). Each case gets a fresh meshlens, so the
# server-side decision time read from its histogram is that case's alone. The last two cases check
# while the same meshlens ingests OTLP from meshlens-loadgen (its result line follows).
# The four fixed-rate cases the issue's bars name (memory at 10,000/s, Redis at 5,000/s) run ROUNDS
# times, interleaved, and a last block lists each one's p99s over the rounds, sorted: one run's
# p99 moves with the stalls of a shared 2-core machine.
# Usage: scripts/bench-policy.sh [seconds per case] [rounds]   (defaults 10 and 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
ROUNDS="${2:-1}"
REDIS_URL="${MESHLENS_BENCH_REDIS_URL:-redis://127.0.0.1:6379}"

cargo build --release -q -p meshlens -p meshlens-loadgen
BIN=target/release/meshlens
GEN=target/release/meshlens-checkgen
LOADGEN=target/release/meshlens-loadgen
source scripts/bench-lib.sh

# The configs, shared with the in-process policy_bench.
CONF=loadgen/bench

start() { # $1 = backend, $2 = cpu list or ""
  local pin=(); [ -n "${2:-}" ] && pin=(taskset -c "$2")
  "${pin[@]}" "$BIN" serve --database-url "sqlite://$WORK/m.db" --otlp-grpc-addr 127.0.0.1:14317 --otlp-http-addr 127.0.0.1:14318 \
    --zipkin-addr 127.0.0.1:19411 --policy-addr 127.0.0.1:19091 --web-addr 127.0.0.1:20101 --log-level warn \
    --ratelimit-dir "$CONF/ratelimit" --policy-file "$CONF/policy.yaml" --quota-backend "$1" --redis-url "$REDIS_URL" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 19091
}

stop() {
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; rm -f "$WORK"/m.db*
  wait_port_closed 19091 # the next case starts once this one's ports are closed
}

case_() { # $1 = backend, $2 = api, $3 = rate (0 = closed loop), $4 = "pinned" or "", $5 = rate limit domain
  local server_cpu="" client=() domain="${5:-bench}"
  [ "${4:-}" = pinned ] && { server_cpu=0; client=(taskset -c 1); }
  start "$1" "$server_cpu"
  "${client[@]}" "$GEN" --api "$2" --endpoint 127.0.0.1:19091 --rate "$3" --in-flight 32 --seconds "$SECS" \
    --domain "$domain" --web 127.0.0.1:20101 --server-pid "$SERVER_PID" --label "backend=$1${4:+ $4} domain=$domain" |
    tee -a "$WORK/results"
  stop
}

busy_case() { # $1 = api, $2 = checks/s, $3 = OTLP exports/s of 512 spans (0: as fast as acknowledged)
  start memory ""
  "$LOADGEN" --endpoint 127.0.0.1:14317 --rate "$3" --warmup 1s --duration "$((SECS + 4))s" \
    --server-pid "$SERVER_PID" --label "beside policy checks" >"$WORK/ingest.out" &
  local ingest=$!
  sleep 1
  "$GEN" --api "$1" --endpoint 127.0.0.1:19091 --rate "$2" --seconds "$SECS" \
    --web 127.0.0.1:20101 --server-pid "$SERVER_PID" --label "backend=memory ingest_exports_per_s=$3"
  wait "$ingest"; tail -n 1 "$WORK/ingest.out"
  stop
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $SECS s per case"
case_ memory ratelimit 0
case_ memory authz 0
case_ redis ratelimit 0
case_ redis authz 0
for _ in $(seq 1 "$ROUNDS"); do
  case_ memory ratelimit 10000
  case_ memory authz 10000
  case_ redis ratelimit 5000
  case_ redis authz 5000
done
# Every user over its limit (one a minute): answered from meshlens' record of keys over their
# limit after each user's first call.
case_ redis ratelimit 0 "" bench_over
case_ redis ratelimit 5000 "" bench_over
# Server on core 0, client on core 1: the decision time without the client preempting it.
case_ memory ratelimit 10000 pinned
case_ memory authz 10000 pinned
# Beside ingest: 40 exports/s (20,480 spans/s), then as many as meshlens acknowledges.
busy_case authz 5000 40
busy_case authz 5000 0
# The bars' cases over the rounds: p99 (ms) and server-side decision p99 (µs, a histogram bucket's
# upper bound), each sorted.
field() { grep -o " $1[^ ]*" | cut -d= -f2 | sort -n | paste -sd, -; }
echo "# the fixed-rate cases over $ROUNDS round(s), sorted:"
for c in "memory domain=bench api=ratelimit mode=rate:10000 " "memory domain=bench api=ext_authz mode=rate:10000 " \
  "redis domain=bench api=ratelimit mode=rate:5000 " "redis domain=bench api=ext_authz mode=rate:5000 "; do
  rows="$(grep "^backend=$c" "$WORK/results")"
  echo "backend=${c% } p99_ms=$(field p99_ms= <<<"$rows") server_decision_p99_us<=$(field 'server_decision_p99_us<=' <<<"$rows")"
done
