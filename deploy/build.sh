#!/usr/bin/env bash
# Configures and builds lstmserve (Release, tests and benchmarks) into ./build, or into the
# folder given as $1. Extra arguments go to CMake's configure step (the first time a folder
# is configured).
#
# The default LibTorch is PyPI's torch 2.11.0 (-DLSTMSERVE_LIBTORCH=pypi: CUDA, oneDNN; see
# README, "LibTorch: the builds"); pass -DLSTMSERVE_LIBTORCH=debian for Debian's 1.13.
#   deploy/build.sh                                            # build/, LibTorch 2.11
#   deploy/build.sh build-debian -DLSTMSERVE_LIBTORCH=debian   # build-debian/, LibTorch 1.13
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build}"
shift || true
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLSTMSERVE_BUILD_TESTS=ON -DLSTMSERVE_BUILD_BENCHMARKS=ON -DLSTMSERVE_LIBTORCH=pypi "$@"
fi
cmake --build "$build_dir" --parallel "$(nproc)"
