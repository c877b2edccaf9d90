#!/usr/bin/env bash
# Installs every package that lstmserve's build, tests and benchmarks need: Debian 12
# packages with apt, and a Python virtual environment from PyPI (PyTorch 2.11.0, whose wheel
# carries the CUDA LibTorch the second build links; buf). Used by README, .ci/run and the
# Dockerfile. Idempotent: when everything is present it only runs `dpkg-query` and reads one
# stamp file, and exits in well under a second.
#
# Usage: deploy/install-deps.sh [build|compile|runtime|image]
#   build   (default) compile, plus the test and benchmark tools (Python, Prometheus, clang
#           for the fuzzers, clang-format for the style check) and the PyPI environment (torch 2.11.0 + its CUDA libraries, buf)
#   compile what building the server and CLI alone needs with the wheel's CPU LibTorch
#           (-DLSTMSERVE_LIBTORCH=pypi-cpu; the image's build stage): Debian's compilers and
#           libraries, and torch 2.11.0 with CUDA's runtime and CUPTI, without their
#           dependencies, in LSTMSERVE_TORCH_CPU (default /opt/lstmserve-torch-cpu)
#   runtime only the shared libraries the server needs to run (for slim images; LibTorch's
#           CPU libraries come from the build stage)
#   image   the tools deploy/image-test.sh uses: buildah, podman, debootstrap
#
# Environment: LSTMSERVE_TOOLS (default /opt/lstmserve-tools) is where the PyPI environment
# goes; its bin/ holds buf, python (torch 2.11) and pip. LSTMSERVE_PEERS (default
# /opt/lstmserve-peers) is the benchmark's ONNX Runtime and OpenVINO, over Debian's Python;
# LSTMSERVE_OIP (default /opt/lstmserve-oip) holds tritonclient, for the protocol's tests.
set -euo pipefail

profile="${1:-build}"

runtime_pkgs=(
  libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1
  libssl3 ca-certificates libhiredis0.14
)
compile_pkgs=(
  build-essential cmake ninja-build pkg-config python3 python3-venv
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev prometheus-cpp-dev libcivetweb-dev
  nlohmann-json3-dev libssl-dev libboost1.74-dev libcpp-httplib-dev libhiredis-dev
)
build_pkgs=(
  "${compile_pkgs[@]}" libtorch-dev libopenblas0-openmp git
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3 python3-venv python3-torch python3-numpy python3-grpcio python3-protobuf python3-yaml
  prometheus openssl libb64-0d redis-server curl
  clang libclang-rt-14-dev clang-format
)
image_pkgs=(buildah podman debootstrap curl iproute2)

# The PyPI environment (build profile only). torch is pinned to the GPU machine's version;
# its default Linux wheel is the CUDA 13.0 build and brings CUDA's runtime libraries.
tools_dir="${LSTMSERVE_TOOLS:-/opt/lstmserve-tools}"
# grpcio and protobuf 4.21 (the runtime of Debian's protoc 3.21, whose stubs the Python client
# uses) let the serving benchmark's Python peer run on PyTorch 2.11 too.
pypi_requirements=(torch==2.11.0 numpy==2.3.5 buf-bin==1.75.0 grpcio==1.76.0 protobuf==4.21.12)
# The compile profile's LibTorch: the same wheel, its CPU libraries used (pypi-cpu), and the
# two CUDA libraries libtorch_cpu names as needed (never called on a CPU).
torch_cpu_dir="${LSTMSERVE_TORCH_CPU:-/opt/lstmserve-torch-cpu}"
torch_cpu_requirements=(--no-deps torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
# The CPU benchmark's other engines (tests/bench/compare), in a venv of their own over Debian's
# Python (which brings PyTorch 1.13 to export the model to ONNX): onnxruntime needs protobuf
# >= 4.25, and the environment above pins 4.21 for the Python client's stubs.
peers_dir="${LSTMSERVE_PEERS:-/opt/lstmserve-peers}"
peers_requirements=(onnxruntime==1.32.0 openvino==2026.4.1)
# Triton's client (grpc and http), the Open Inference Protocol's reference client, for the
# tests (tests/python/test_open_inference.py): over Debian's Python too, whose torch 1.13 runs
# the reference code; it brings grpcio and protobuf 6 of its own.
oip_dir="${LSTMSERVE_OIP:-/opt/lstmserve-oip}"
# safetensors writes the model directories the KServe runtime's test serves (--model_dir).
oip_requirements=("tritonclient[grpc,http]==2.73.0" safetensors==0.6.2)

case "$profile" in
  build) pkgs=("${build_pkgs[@]}") ;;
  compile) pkgs=("${compile_pkgs[@]}") ;;
  runtime) pkgs=("${runtime_pkgs[@]}") ;;
  image) pkgs=("${image_pkgs[@]}") ;;
  *) echo "usage: $0 [build|compile|runtime|image]" >&2; exit 2 ;;
esac

missing=()
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

# A virtual environment of Debian's interpreter (with python3-venv), not whatever python3
# comes first on PATH, so that it is the same on a developer machine, in CI and in an image;
# (re)made when its requirements change. Usage: venv DIR "what" [--system-site-packages] -- REQ...
venv() {
  local dir="$1" what="$2" flags=()
  shift 2
  while [[ "$1" != -- ]]; do flags+=("$1"); shift; done
  shift
  local stamp="$dir/.lstmserve-requirements"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$*" ]]; then
    echo "install-deps: installing $* into $dir ($what)"
    "${sudo_cmd[@]}" /usr/bin/python3 -m venv "${flags[@]}" "$dir"
    "${sudo_cmd[@]}" "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "$@"
    echo "$*" | "${sudo_cmd[@]}" tee "$stamp" >/dev/null
  fi
}

if [[ "$profile" == compile ]]; then
  venv "$torch_cpu_dir" "PyPI, LibTorch's CPU libraries" -- "${torch_cpu_requirements[@]}"
fi
if [[ "$profile" == build ]]; then
  venv "$tools_dir" "PyPI" -- "${pypi_requirements[@]}"
  venv "$peers_dir" "PyPI, over Debian's Python" --system-site-packages -- "${peers_requirements[@]}"
  venv "$oip_dir" "PyPI, over Debian's Python" --system-site-packages -- "${oip_requirements[@]}"
fi
