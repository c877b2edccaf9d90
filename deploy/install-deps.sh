#!/usr/bin/env bash
# Installs every Debian 12 package that lstmserve's build, tests and benchmarks need.
# Used by README, .ci/run and the Dockerfile. Idempotent: when everything is present it
# only runs `dpkg-query` and exits in well under a second.
#
# Usage: deploy/install-deps.sh [build|runtime]
#   build   (default) compilers, -dev packages, test and benchmark tools
#   runtime only the shared libraries the server needs to run (for slim images)
set -euo pipefail

profile="${1:-build}"

runtime_pkgs=(
  libtorch1.13 libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0
  libopenblas0-openmp ca-certificates
)
build_pkgs=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev prometheus-cpp-dev libopenblas0-openmp
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3 python3-torch python3-numpy python3-grpcio python3-protobuf
)

case "$profile" in
  build) pkgs=("${build_pkgs[@]}") ;;
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  *) echo "usage: $0 [build|runtime]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [[ "$status" == ii* ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present ($profile)"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
