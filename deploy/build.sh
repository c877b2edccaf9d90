#!/usr/bin/env bash
# Configures and builds lstmserve (Release, tests and benchmarks) into ./build, or into the
# folder given as $1. Extra arguments go to CMake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"
shift || true
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLSTMSERVE_BUILD_TESTS=ON -DLSTMSERVE_BUILD_BENCHMARKS=ON "$@"
fi
cmake --build "$build_dir" --parallel "$(nproc)"
