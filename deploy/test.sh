#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, and runs
#   1. every test (ctest) on the Release build of the quick start (build/: PyPI's LibTorch
#      2.11 with CUDA, whose GPU code compiles and links here; its GPU tests skip without a
#      GPU);
#   2. one set of bits across the builds the project ships: the container image's
#      configuration (PyPI's LibTorch 2.11, its CPU libraries alone: -DLSTMSERVE_LIBTORCH=pypi-cpu,
#      build-cpu/, the server only) creates every initializer's sets, byte for byte as build/
#      does (tests/deploy/same_bits.py);
#   3. every test again under AddressSanitizer and UndefinedBehaviorSanitizer (the `asan`
#      CMake preset, build-asan/, Debian's LibTorch 1.13, so that build stays whole too), but
#      the ones that test packaging or client libraries, not the server's code (pip installs,
#      README's venv, the CMake package, formatting, manifests), and the kernel tests' runs at
#      lower instruction-set levels (isa_*: numerics, run in step 1);
#   4. each libFuzzer harness for 40 s (tests/fuzz/run.sh, build-fuzz/);
#   5. the GPU script's rehearsal (deploy/gpu-check.sh stage, then rehearse: everything the
#      GPU machine will run, with the CPU in place of the GPU), unless --quick.
# Usage: deploy/test.sh [--quick]     (--quick: steps 1 and 2 only)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
[[ "${1:-}" == "--quick" ]] && quick=true
stage() { echo "test: $* ($(date -u +%H:%M:%S), ${SECONDS} s in)"; }
deploy/install-deps.sh
stage "the quick start's build"
deploy/build.sh build
stage "the suite on the quick start's build"
ctest --test-dir build --output-on-failure --parallel "$(nproc)"
stage "the image's LibTorch (pypi-cpu): the server, and the same bits as build/"
if [[ ! -f build-cpu/CMakeCache.txt ]]; then
  cmake -S . -B build-cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSTMSERVE_BUILD_TESTS=OFF \
    -DLSTMSERVE_BUILD_BENCHMARKS=OFF -DLSTMSERVE_LIBTORCH=pypi-cpu >/dev/null
fi
cmake --build build-cpu --parallel "$(nproc)" --target lstmserve
/usr/bin/python3 tests/deploy/same_bits.py --cli build/client/lstmserve-cli --server build/server/lstmserve \
  --server build-cpu/server/lstmserve
$quick && exit 0
stage "the suite under ASan + UBSan (Debian's LibTorch 1.13)"
cmake --preset asan >/dev/null
cmake --build --preset asan
ctest --preset asan --parallel "$(nproc)" \
  -E '^(python\.(pip_install|readme|client|analyze|weight_storage)|install\.|style\.|deploy\.|isa_)'
stage "fuzzers, 40 s each"
tests/fuzz/run.sh 40
stage "the GPU script's rehearsal"
deploy/gpu-check.sh stage
OUT="$(mktemp -d)" deploy/gpu-check.sh rehearse
stage "done"
