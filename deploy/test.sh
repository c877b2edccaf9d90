#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh build
ctest --test-dir build --output-on-failure --parallel "$(nproc)"
