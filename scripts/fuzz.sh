#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of untrusted input (fuzz/, its README): each target
# fuzzed by AFL++ (cargo-afl, stable Rust) for SECONDS (default 20), starting from its seed
# corpus fuzz/corpus/<target>/. Prints one line per target; exits non-zero if any input crashed
# or hung a target, naming the files (copy one to fuzz/regressions/<target>/ once fixed).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(ls fuzz/corpus)

if ! command -v cargo-afl >/dev/null; then
  echo "==> cargo install cargo-afl (builds AFL++ from its vendored source: needs make and a C compiler)"
  cargo install cargo-afl --version 0.18.2 --locked
fi
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
echo "==> cargo afl build (release, instrumented)"
cargo afl build --release -p meshlens-fuzz --features afl --bin meshlens-fuzz-afl \
  --target-dir target/afl
bin=target/afl/release/meshlens-fuzz-afl
out=target/afl-out
mkdir -p "$out"

fail=0
printf '%-16s %8s %12s %10s %8s %8s %6s\n' target seconds executions "execs/s" corpus crashes hangs
for t in "${targets[@]}"; do
  rm -rf "${out:?}/$t"
  timeout $((seconds + 120)) cargo afl fuzz -V "$seconds" -t 1000 -i "fuzz/corpus/$t" -o "$out/$t" \
    "$bin" "$t" </dev/null >"$out/$t.log" 2>&1 || true
  stats="$out/$t/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "$t: AFL did not start:"; tail -30 "$out/$t.log"; fail=1; continue
  fi
  stat() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
  crashes=$(find "$out/$t/default/crashes" -name 'id:*' | wc -l)
  hangs=$(find "$out/$t/default/hangs" -name 'id:*' | wc -l)
  printf '%-16s %8s %12s %10s %8s %8s %6s\n' "$t" "$(stat run_time)" "$(stat execs_done)" \
    "$(stat execs_per_sec)" "$(stat corpus_count)" "$crashes" "$hangs"
  if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
    find "$out/$t/default/crashes" "$out/$t/default/hangs" -name 'id:*' | sed 's/^/  /'
    fail=1
  fi
done
exit $fail
