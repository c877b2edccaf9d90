#!/usr/bin/env bash
# Builds the libFuzzer harnesses (CMake preset `fuzz`: clang, ASan, UBSan) and runs each for
# SECONDS (default 60) from a copy of its committed seed corpus. Prints, per harness, the
# executions, the coverage and the corpus size that libFuzzer reports; exits non-zero on
# any crash, leak or sanitizer finding (the reproducer is left in build-fuzz/findings/).
# Usage: tests/fuzz/run.sh [SECONDS] [HARNESS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
pids=()
seconds="${1:-60}"
shift || true
harnesses=("$@")
((${#harnesses[@]})) || harnesses=(fuzz_request fuzz_safetensors fuzz_spec fuzz_oip)

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target $(printf 'lstmserve_%s ' "${harnesses[@]}")
mkdir -p build-fuzz/findings
# The harnesses run side by side (each single-threaded); then their reports, in order.
for h in "${harnesses[@]}"; do
  work="build-fuzz/corpus/$h"
  rm -rf "$work" && mkdir -p "$work" && cp tests/fuzz/corpus/"$h"/* "$work"/
  OMP_NUM_THREADS=1 ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    build-fuzz/tests/fuzz/"$h" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
      -artifact_prefix=build-fuzz/findings/"$h"- -print_final_stats=1 "$work" >"build-fuzz/$h.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!harnesses[@]}"; do
  h="${harnesses[$i]}"
  log="build-fuzz/$h.log"
  if wait "${pids[$i]}"; then
    result=ok
  else
    result=FAILED
    status=1
    tail -40 "$log"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1)
  echo "fuzz: $h $result: ${runs:-?} executions in ${seconds} s, ${cov:-cov: ?}, ${ft:-ft: ?}, corpus $(ls "build-fuzz/corpus/$h" | wc -l) inputs"
done
exit $status
