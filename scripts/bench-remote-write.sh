#!/usr/bin/env bash
# The Prometheus remote write benchmark, side by side in one run: meshlens (the graph, embedded
# SQLite) and Prometheus itself (`--web.enable-remote-write-receiver`, which writes its TSDB) as
# the peer, both receiving the same Istio-shaped series from meshlens-rwgen. The server runs on
# core 0, the load generator on core 1; each case starts a fresh server. Cases:
#   max rate:  ROUNDS scrapes of a 30-workload mesh sent as fast as they are taken (samples/s,
#              server CPU per sample, peak RSS);
#   interval:  a 30-workload (Bookinfo-scale) and a 1,000-workload mesh scraped every 15 s for
#              DURATION (server CPU as a share of one core, peak RSS).
# Usage: scripts/bench-remote-write.sh   (ROUNDS=20 DURATION=60s by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-20}"
DURATION="${DURATION:-60s}"

cargo build --release -q -p meshlens -p meshlens-loadgen
command -v prometheus >/dev/null || { echo "prometheus is needed (Debian package prometheus)" >&2; exit 1; }
BIN=target/release/meshlens
RWGEN=target/release/meshlens-rwgen
source scripts/bench-lib.sh

start_meshlens() {
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  taskset -c 0 "$BIN" serve --database-url "sqlite://$WORK/data/bench.db" --otlp-grpc-addr 127.0.0.1:14317 \
    --otlp-http-addr 127.0.0.1:14318 --zipkin-addr 127.0.0.1:19411 --policy-addr 127.0.0.1:19091 \
    --web-addr 127.0.0.1:20101 --log-level warn >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 14318
  URL=http://127.0.0.1:14318/api/v1/write
}

start_prometheus() {
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  printf 'global:\n  scrape_interval: 15s\n' >"$WORK/prometheus.yml"
  taskset -c 0 prometheus --config.file "$WORK/prometheus.yml" --storage.tsdb.path "$WORK/data" \
    --web.listen-address 127.0.0.1:19090 --web.enable-remote-write-receiver --log.level warn \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 19090
  URL=http://127.0.0.1:19090/api/v1/write
}

stop_server() { kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }

case_run() { # $1 server (meshlens|prometheus), then rwgen's arguments
  local server="$1"; shift
  "start_$server"
  taskset -c 1 "$RWGEN" --url "$URL" --server-pid "$SERVER_PID" --label "$server" "$@"
  stop_server
}

echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server on core 0, load on core 1; $(prometheus --version 2>&1 | head -1)"
for server in prometheus meshlens; do case_run "$server" --workloads 30 --rounds "$ROUNDS"; done
for workloads in 30 1000; do
  for server in prometheus meshlens; do
    case_run "$server" --workloads "$workloads" --interval 15s --duration "$DURATION"
  done
done
