#!/usr/bin/env bash
# cmake --install of this build into a temporary prefix, then a separate project that does
# find_package(lstmserve) and links lstmserve::client, run against a real server.
# Usage: test_find_package.sh BUILD_DIR TORCH_PREFIX SERVER_BINARY (TORCH_PREFIX: the torch
# wheel's folder for the pypi build, empty for Debian's LibTorch)
set -euo pipefail
build="$1" torch_prefix="$2" server_bin="$3"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'kill "${server_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
test -f "$work/prefix/lib/cmake/lstmserve/lstmserveConfig.cmake"
test -f "$work/prefix/include/lstmserve/client/client.h"
test -f "$work/prefix/include/lstmserve/v1/inference_service.grpc.pb.h"
test -x "$work/prefix/bin/lstmserve"

cmake -S "$here/consumer" -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix${torch_prefix:+;$torch_prefix}" >"$work/configure.log" 2>&1 \
  || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/consumer" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }

"$server_bin" --listen=127.0.0.1:0 --metrics_listen= --http_listen= --store_dir="$work/store" --threads=1 \
  >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 300); do grep -q "^listening on" "$work/server.out" 2>/dev/null && break; sleep 0.1; done
target=$(sed -n 's/^listening on //p' "$work/server.out")
[[ -n "$target" ]] || { cat "$work/server.err"; echo "FAIL: the server did not start"; exit 1; }
got=$("$work/consumer/consumer" "$target")
[[ "$got" == SERVING ]] || { echo "FAIL: the consumer printed '$got'"; exit 1; }
echo "find_package(lstmserve): installed, found, built, linked, and the client got $got"
