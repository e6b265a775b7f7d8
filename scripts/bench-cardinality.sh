#!/usr/bin/env bash
# The cardinality blast (issue: hardened): a default meshlens (release build) given PEERS client
# spans that each name a new peer and a new span name, 2,000 per export; prints its memory
# after each stage and the graph's size. With OTHER (another build's binary), the same blast
# against it next, and the ratio of the peaks.
# Needs the Python venv of scripts/test.sh (made by scripts/python-env.sh).
#   scripts/bench-cardinality.sh [PEERS] [OTHER]
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:-60000}
VENV=$(bash scripts/python-env.sh)
cargo build --release -q -p meshlens
bins=("$PWD/target/release/meshlens")
[ -z "${2:-}" ] || bins+=("$2")
peaks=()
for bin in "${bins[@]}"; do
  echo "== $bin"
  out=$("$VENV/bin/python" loadgen/bench/cardinality.py "$bin" "$peers")
  echo "$out"
  peaks+=("$(echo "$out" | awk '$NF ~ /^[0-9]+$/ && $(NF-1) ~ /^[0-9]+$/ && $NF > p { p = $NF } END { print p }')")
done
if [ ${#peaks[@]} -eq 2 ]; then
  awk -v a="${peaks[0]}" -v b="${peaks[1]}" 'BEGIN { printf "peak RSS: this build %d MiB, other %d MiB (%.2fx)\n", a, b, a / b }'
fi
