#!/usr/bin/env bash
# Builds and runs meshlens on the embedded SQLite default (./data/meshlens.db), on the default
# ports, with the example policy (examples/policy/), as `meshlens demo`: it feeds itself a small
# synthetic mesh over OTLP (ingress → work v1 and a canary v2 at 80/20, Chrome users on v2, v2
# failing 1 call in 5 → meet → the orders database). A trickle of ext_authz checks from ingress
# to work runs beside it, so there is something to look at. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p meshlens -p meshlens-loadgen
target/release/meshlens demo --ratelimit-dir examples/policy/ratelimit \
  --policy-file examples/policy/policy.yaml "$@" &
SERVER=$!
CHECKS=""
trap 'kill $CHECKS $SERVER 2>/dev/null; wait' EXIT INT TERM
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:20001/readyz >/dev/null 2>&1 && break; sleep 0.1; done
# Two checks a second from ingress to work for five users: their 1-a-minute quota soon refuses.
target/release/meshlens-checkgen --api authz --endpoint 127.0.0.1:9091 --rate 2 --keys 5 \
  --warmup-seconds 0 --seconds 86400 >/dev/null &
CHECKS=$!
cat <<MSG

meshlens is running. Try:
  curl -s 'http://127.0.0.1:20001/api/graph?window=1m'
  curl -s 'http://127.0.0.1:20001/api/services?window=1m'
  curl -s 'http://127.0.0.1:20001/api/traces?service=work&limit=2'
  curl -s http://127.0.0.1:20001/api/policy
  curl -s http://127.0.0.1:20001/metrics | grep -E '^(meshlens_|traces_service_graph_request_total)'
Send your own OTLP to 127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318/v1/traces, Zipkin to
http://127.0.0.1:9411/api/v2/spans; point Envoy's ext_authz and rate limit filters at
127.0.0.1:9091 (gRPC). Ctrl-C stops.
MSG
wait $SERVER
