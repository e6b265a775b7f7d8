#!/usr/bin/env bash
# TLS against plaintext, side by side in one run: OTLP/gRPC ingest (meshlens-loadgen, closed loop)
# plaintext and over TLS, and the rate limit service plaintext and over mTLS (meshlens-checkgen,
# closed loop and a fixed 10,000 checks/s). Server pinned to core 0, load to core 1; every case gets
# a fresh meshlens; the cases run ROUNDS times, interleaved, and the last block gives each case's
# median over the rounds and the TLS/plaintext ratios. Certificates are made here with openssl (EC
# P-256, as cert-manager and Istio issue by default).
# Usage: scripts/bench-tls.sh [seconds per case] [rounds] [cases]   (defaults 10, 3 and all)
# cases: a space-separated subset of "otlp_grpc rls_rate_0 rls_rate_10000", e.g. "rls_rate_10000"
# alone for many rounds of the fixed-rate tail. PIN=0: server and load unpinned (as the policy
# benchmark's fixed-rate cases run), to see the tail without the server's threads sharing a core.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
ROUNDS="${2:-3}"
CASES=" ${3:-otlp_grpc rls_rate_0 rls_rate_10000} "
SERVER_PIN=(taskset -c 0)
CLIENT_PIN=(taskset -c 1)
if [ "${PIN:-1}" = 0 ]; then SERVER_PIN=(); CLIENT_PIN=(); fi

cargo build --release -q -p meshlens -p meshlens-loadgen
BIN=target/release/meshlens
LOADGEN=target/release/meshlens-loadgen
GEN=target/release/meshlens-checkgen
source scripts/bench-lib.sh
CONF=loadgen/bench

(
  cd "$WORK"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 2 -subj "/CN=bench CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=meshlens
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out server.crt -extfile server.ext
  openssl req "${ec[@]}" -keyout client.key -out client.csr -subj /CN=envoy
  printf 'subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/ingress\nextendedKeyUsage=clientAuth\n' >client.ext
  openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out client.crt -extfile client.ext
) >/dev/null 2>&1
# TLS on OTLP/gRPC, mTLS on the policy listener; the web stays plaintext for the clients' reads of
# /metrics (server-side decision times).
cat >"$WORK/tls.toml" <<EOF
[tls]
cert = "$WORK/server.crt"
key = "$WORK/server.key"
[tls.policy]
client_ca = "$WORK/ca.crt"
[tls.web]
enabled = false
EOF

start() { # $1 = plain or tls
  local conf=()
  [ "$1" = tls ] && conf=(--config "$WORK/tls.toml")
  "${SERVER_PIN[@]}" "$BIN" serve "${conf[@]}" --database-url "sqlite://$WORK/m.db" \
    --otlp-grpc-addr 127.0.0.1:14317 --otlp-http-addr 127.0.0.1:14318 --zipkin-addr 127.0.0.1:19411 \
    --policy-addr 127.0.0.1:19091 --web-addr 127.0.0.1:20101 --log-level warn \
    --ratelimit-dir "$CONF/ratelimit" --policy-file "$CONF/policy.yaml" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 14317
  wait_port 19091
}

stop() {
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; rm -f "$WORK"/m.db*
  wait_port_closed 19091
}

tls_args() { # $1 = plain or tls, $2 = "client" for a client certificate too
  [ "$1" = tls ] || return 0
  echo "--tls-ca $WORK/ca.crt"
  [ "${2:-}" = client ] && echo "--tls-cert $WORK/client.crt --tls-key $WORK/client.key"
  return 0
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in plain tls; do
    if [[ "$CASES" == *" otlp_grpc "* ]]; then
      start "$mode"
      # shellcheck disable=SC2046
      "${CLIENT_PIN[@]}" "$LOADGEN" --endpoint 127.0.0.1:14317 $(tls_args "$mode") --warmup 2s --duration "${SECS}s" \
        --server-pid "$SERVER_PID" --label "case=otlp_grpc tls=$mode round=$round" | tee -a "$WORK/results"
      stop
    fi
    for rate in 0 10000; do
      [[ "$CASES" == *" rls_rate_$rate "* ]] || continue
      start "$mode"
      # shellcheck disable=SC2046
      "${CLIENT_PIN[@]}" "$GEN" --api ratelimit --endpoint 127.0.0.1:19091 $(tls_args "$mode" client) \
        --rate "$rate" --in-flight 32 --seconds "$SECS" --domain bench --web 127.0.0.1:20101 \
        --server-pid "$SERVER_PID" --label "case=rls_rate_$rate tls=$mode round=$round" | tee -a "$WORK/results"
      stop
    done
  done
done

echo
echo "Medians over $ROUNDS rounds ($(date -u +%FT%TZ), $(nproc) cores):"
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in open(sys.argv[1])]
def med(case, mode, key):
    vals = [float(r[key]) for r in rows if r.get("case") == case and r.get("tls") == mode and key in r]
    return statistics.median(vals) if vals else float("nan")
for case, key in [("otlp_grpc", "spans_per_s"), ("otlp_grpc", "p99_ms"), ("rls_rate_0", "checks_per_s"),
                  ("rls_rate_0", "p99_ms"), ("rls_rate_10000", "checks_per_s"), ("rls_rate_10000", "p99_ms")]:
    plain, tls = med(case, "plain", key), med(case, "tls", key)
    if plain == plain and tls == tls:
        print(f"{case:15} {key:13} plaintext {plain:12.3f}  tls {tls:12.3f}  tls/plaintext {tls / plain:6.2f}")
for mode in ("plain", "tls"):
    p99 = [float(r["p99_ms"]) for r in rows if r.get("case") == "rls_rate_10000" and r.get("tls") == mode]
    if p99:
        print(f"rls_rate_10000  {mode:5} p99 <= 1 ms in {sum(v <= 1 for v in p99)} of {len(p99)} rounds; sorted: "
              + " ".join(f"{v:.2f}" for v in sorted(p99)))
PY
