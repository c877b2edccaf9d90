#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs
#   1. every test (ctest) on the Release build of the quick start (build/: PyPI's LibTorch
#      2.11 with CUDA, whose GPU code compiles and links here; its GPU tests skip without a
#      GPU);
#   2. every test again against Debian's LibTorch 1.13 (build-debian/);
#   3. every test again under AddressSanitizer and UndefinedBehaviorSanitizer (the `asan`
#      CMake preset, build-asan/, Debian's LibTorch);
#   4. each libFuzzer harness for 40 s (tests/fuzz/run.sh, build-fuzz/);
#   5. the GPU script's rehearsal (deploy/gpu-check.sh stage, then rehearse: everything the
#      GPU machine will run, with the CPU in place of the GPU), unless --quick.
# Usage: deploy/test.sh [--quick]     (--quick: steps 1 and 2 only)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
[[ "${1:-}" == "--quick" ]] && quick=true
deploy/install-deps.sh
deploy/build.sh build
ctest --test-dir build --output-on-failure --parallel "$(nproc)"
echo "test: the suite against Debian's LibTorch 1.13"
deploy/build.sh build-debian -DLSTMSERVE_LIBTORCH=debian
ctest --test-dir build-debian --output-on-failure --parallel "$(nproc)"
$quick && exit 0
echo "test: the suite under ASan + UBSan"
cmake --preset asan >/dev/null
cmake --build --preset asan
ctest --preset asan --parallel "$(nproc)"
echo "test: fuzzers, 40 s each"
tests/fuzz/run.sh 40
echo "test: the GPU script's rehearsal"
deploy/gpu-check.sh stage
OUT="$(mktemp -d)" deploy/gpu-check.sh rehearse
