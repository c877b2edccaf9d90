#!/usr/bin/env bash
# Installs every Debian 12 package that lstmserve's build, tests and benchmarks need.
# Used by README, .ci/run and the Dockerfile. Idempotent: when everything is present it
# only runs `dpkg-query` and exits in well under a second.
#
# Usage: deploy/install-deps.sh [build|compile|runtime|image]
#   build   (default) compile, plus the test and benchmark tools (Python, Prometheus, clang
#           for the fuzzers, buf)
#   compile what building the server and CLI alone needs (the image's build stage)
#   runtime only the shared libraries the server needs to run (for slim images)
#   image   the tools deploy/image-test.sh uses: buildah, podman, debootstrap
set -euo pipefail

profile="${1:-build}"

runtime_pkgs=(
  libtorch1.13 libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1
  libopenblas0-openmp libssl3 ca-certificates
)
compile_pkgs=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev prometheus-cpp-dev libcivetweb-dev libopenblas0-openmp
  nlohmann-json3-dev libssl-dev
)
build_pkgs=(
  "${compile_pkgs[@]}" git
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3 python3-torch python3-numpy python3-grpcio python3-protobuf python3-yaml
  prometheus openssl
  clang libclang-rt-14-dev
)
image_pkgs=(buildah podman debootstrap curl iproute2)
# Tools from npm (build profile only), installed under $LSTMSERVE_TOOLS.
tools_dir="${LSTMSERVE_TOOLS:-/opt/lstmserve-tools}"
buf_version="1.75.0"

case "$profile" in
  build) pkgs=("${build_pkgs[@]}") ;;
  compile) pkgs=("${compile_pkgs[@]}") ;;
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  image) pkgs=("${image_pkgs[@]}") ;;
  *) echo "usage: $0 [build|compile|runtime|image]" >&2; exit 2 ;;
esac

missing=()
# npm (for buf) may come with a NodeSource nodejs; take Debian's only when there is none.
if [[ "$profile" == build ]] && ! command -v npm >/dev/null; then pkgs+=(nodejs npm); fi
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [[ "$status" == ii* ]] || missing+=("$p")
done

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present ($profile)"
else
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ "$profile" == build ]]; then
  if [[ "$("$tools_dir/node_modules/.bin/buf" --version 2>/dev/null)" != "$buf_version" ]]; then
    echo "install-deps: installing buf $buf_version into $tools_dir"
    "${sudo_cmd[@]}" mkdir -p "$tools_dir"
    "${sudo_cmd[@]}" npm install --prefix "$tools_dir" --no-audit --no-fund --loglevel=error \
      "@bufbuild/buf@$buf_version"
  fi
fi
