#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs
#   1. every test (ctest) on the Release build (build/, the quick start's LibTorch);
#   2. every test again on the other LibTorch's Release build (build-pypi/: PyPI's torch
#      2.11.0 with CUDA, whose GPU code compiles and links here; its GPU tests skip without a
#      GPU);
#   3. every test again under AddressSanitizer and UndefinedBehaviorSanitizer (the `asan`
#      CMake preset, build-asan/, Debian's LibTorch);
#   4. each libFuzzer harness for about a minute (tests/fuzz/run.sh, build-fuzz/).
# Usage: deploy/test.sh [--quick]     (--quick: steps 1 and 2 only)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
[[ "${1:-}" == "--quick" ]] && quick=true
deploy/install-deps.sh
deploy/build.sh build
ctest --test-dir build --output-on-failure --parallel "$(nproc)"
echo "test: the suite against PyPI's LibTorch 2.11 (CUDA build)"
deploy/build.sh build-pypi -DLSTMSERVE_LIBTORCH=pypi
ctest --test-dir build-pypi --output-on-failure --parallel "$(nproc)"
$quick && exit 0
echo "test: the suite under ASan + UBSan"
cmake --preset asan >/dev/null
cmake --build --preset asan
ctest --preset asan --parallel "$(nproc)"
echo "test: fuzzers, 60 s each"
tests/fuzz/run.sh 60
