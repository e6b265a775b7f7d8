# Shared by the benchmark scripts (sourced): a work directory removed on exit with the server in
# it stopped, and waiting for a loopback port to open or to close.
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_port_closed() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0; sleep 0.1; done; echo "port $1 never closed" >&2; return 1; }

# Starts a meshlens build on the benchmarks' ports (OTLP 14317/14318, web 20101) and waits for them.
# $1 = binary, $2 = database url, $3 = cpu list or "" (unpinned). Sets SERVER_PID.
serve_bench() {
  local pin=(); [ -n "$3" ] && pin=(taskset -c "$3")
  "${pin[@]}" "$1" serve --database-url "$2" --otlp-grpc-addr 127.0.0.1:14317 \
    --otlp-http-addr 127.0.0.1:14318 --zipkin-addr 127.0.0.1:19411 --policy-addr 127.0.0.1:19091 \
    --web-addr 127.0.0.1:20101 --log-level warn >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_port 14317; wait_port 14318; wait_port 20101
}
