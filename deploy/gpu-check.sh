#!/usr/bin/env bash
# The GPU check: one command for the GPU machine (an H200 with Python 3.12 + torch 2.11.0+cu130,
# nvcc, CMake; no registry and none of gRPC, protobuf, Abseil or prometheus-cpp).
#
#   deploy/gpu-check.sh stage      here: build the PyPI/CUDA build (build/, or the folder named by
#                                  $LSTMSERVE_GPU_BUILD) and put what the GPU machine needs into
#                                  build-gpu/ (binaries, the Debian libraries they use that it
#                                  lacks, common_ops.py); prints its size
#   deploy/gpu-check.sh [run]      there, with build-gpu/ carried: every result goes to $OUT
#   deploy/gpu-check.sh rehearse   here: `run` end to end with the GPU steps on the CPU instead
#                                  (CUDA tests skip themselves), short benchmarks, into $OUT or
#                                  /tmp/gpu-check-rehearsal
#
# What `run` does, each step logged to $OUT/summary.txt (and its own files):
#   1. the machine: nvidia-smi, torch, glibc                                     env.txt
#   2. the carried binaries resolve every library (LibTorch from the machine's torch wheel)
#   3. GPU tests: conformance of every CUDA path and dtype against reference values made there
#      with common_ops.py (fp32 within 1e-5, fp16/bf16 within README's bounds), the core's GPU
#      unit tests                                                         tests-*.xml, tests.txt
#   4. lstmserve --device=cuda driven by lstmserve-cli: health, create (fp32, bf16), step, run,
#      session, export; the GPU's outputs against a CPU server's on the same set and inputs;
#      lstmserve_cuda_memory_* and build_info on /metrics                          server.txt
#   5. tests/bench/compare --device cuda (core vs nn.LSTM/cuDNN: S, S32, M, L, L_B1..L_B1024), fp32
#      and bf16                                                      compare-*.json, compare-*.txt
#   6. tests/bench/serve_compare --device cuda (batching on/off, L steps at c64) serve.json/.txt
# Budget: under 8 minutes on the H200. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode="${1:-run}"
stage_dir="$root/build-gpu"

stage() {
  set -e
  local src="${LSTMSERVE_GPU_BUILD:-build}"
  deploy/build.sh "$src" -DLSTMSERVE_LIBTORCH=pypi
  if ! grep -q "^LSTMSERVE_LIBTORCH:STRING=pypi" "$src/CMakeCache.txt"; then
    echo "gpu-check: $src is not a PyPI LibTorch build (-DLSTMSERVE_LIBTORCH=pypi)" >&2
    exit 1
  fi
  rm -rf "$stage_dir"
  mkdir -p "$stage_dir"/{server,client,tests/bench,tests/core,tests/server,lib/compat,reference}
  cp "$src/server/lstmserve" "$stage_dir/server/"
  cp "$src/client/lstmserve-cli" "$stage_dir/client/"
  cp "$src/tests/bench/lstmserve-core-bench" "$src/tests/bench/lstmserve-cpu-peak" "$stage_dir/tests/bench/"
  for t in conformance_test stacked_lstm_test parameter_set_test; do cp "$src/tests/core/$t" "$stage_dir/tests/core/"; done
  cp "$src/tests/server/engine_test" "$stage_dir/tests/server/"
  strip --strip-unneeded "$stage_dir"/server/* "$stage_dir"/client/* "$stage_dir"/tests/*/*
  cp ../shared/reference/common_ops.py "$stage_dir/reference/"
  # The libraries the binaries use that are neither LibTorch's (the GPU machine's wheel has
  # them), CUDA's, nor the C runtime's: gRPC, protobuf, Abseil, prometheus-cpp, OpenSSL, ...
  local torch_lib
  torch_lib=$(/opt/lstmserve-tools/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__) + "/lib")')
  ldd "$stage_dir"/server/* "$stage_dir"/client/* "$stage_dir"/tests/*/* | awk '/=> \//{print $3}' | sort -u |
    grep -v -e "^$torch_lib" -e '/nvidia/' -e '/cuda' -e '/libc\.so' -e '/libm\.so' -e '/libdl\.so' \
      -e '/libpthread\.so' -e '/librt\.so' -e '/libutil\.so' -e '/libresolv\.so' -e '/ld-linux' \
      -e '/libstdc++' -e '/libgcc_s' -e '/libgomp' |
    while read -r lib; do cp -L "$lib" "$stage_dir/lib/"; done
  # Debian 12's C++ runtime, used there only if the machine's is older than ours.
  cp -L /usr/lib/x86_64-linux-gnu/libstdc++.so.6 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 "$stage_dir/lib/compat/"
  echo "gpu-check: staged $(du -sh "$stage_dir" | cut -f1) in build-gpu/ ($(ls "$stage_dir/lib" | wc -l) libraries);" \
       "carry it: device run with carry [\"build-gpu\"] and command deploy/gpu-check.sh"
}

if [[ "$mode" == stage ]]; then stage; exit; fi
if [[ "$mode" != run && "$mode" != rehearse ]]; then
  echo "usage: $0 [stage|run|rehearse]" >&2
  exit 2
fi

rehearse=false
[[ "$mode" == rehearse ]] && rehearse=true
if $rehearse; then
  OUT="${OUT:-/tmp/gpu-check-rehearsal}"
  PYTHON="${PYTHON:-/opt/lstmserve-tools/bin/python}"
  device=cpu
  half=DATA_TYPE_FLOAT32  # reduced precision needs CUDA
else
  OUT="${OUT:?set OUT to the folder for the results}"
  PYTHON="${PYTHON:-python3}"
  device=cuda
  half=DATA_TYPE_BFLOAT16
fi
mkdir -p "$OUT"
B="$stage_dir"
summary="$OUT/summary.txt"
: >"$summary"
: >"$OUT/tests.txt"
failures=0
# LSTMSERVE_GPU_STEPS picks steps 3 to 6 (default all: 3456); steps 1 and 2 always run.
steps="${LSTMSERVE_GPU_STEPS:-3456}"
want() { [[ "$steps" == *"$1"* ]]; }
started=$(date +%s)
say() { echo "[$(($(date +%s) - started))s] $*" | tee -a "$summary"; }
result() {  # NAME STATUS
  if [[ "$2" == 0 ]]; then say "PASS $1"; else say "FAIL $1 (exit $2)"; failures=$((failures + 1)); fi
}

# 1. The machine.
{
  date -u
  uname -a
  ldd --version | head -1
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1
  nproc
} >"$OUT/env.txt" 2>&1
say "mode=$mode device=$device python=$PYTHON ($(head -c 200 <(tail -2 "$OUT/env.txt" | head -1)))"
if [[ ! -x "$B/server/lstmserve" ]]; then
  say "FAIL build-gpu/ is missing: run 'deploy/gpu-check.sh stage' here and carry build-gpu"
  exit 1
fi

# 2. Libraries: the machine's LibTorch (its torch wheel) and the carried ones.
# The wheel's CUDA libraries (cudart, cuBLAS, cuDNN, ...) live in site-packages/nvidia/*/lib.
torch_lib=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__) + "/lib")')
nvidia_libs=$(find "$(dirname "$(dirname "$torch_lib")")/nvidia" -maxdepth 2 -name lib -type d 2>/dev/null | paste -sd:)
export LD_LIBRARY_PATH="$B/lib:$torch_lib${nvidia_libs:+:$nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
binaries=("$B"/server/lstmserve "$B"/client/lstmserve-cli "$B"/tests/bench/lstmserve-core-bench "$B"/tests/bench/lstmserve-cpu-peak
  "$B"/tests/core/* "$B"/tests/server/*)
if ! "$B/client/lstmserve-cli" --help >/dev/null 2>"$OUT/libs.txt"; then
  if grep -q GLIBCXX "$OUT/libs.txt"; then
    export LD_LIBRARY_PATH="$B/lib/compat:$LD_LIBRARY_PATH"
    say "the machine's libstdc++ is older than Debian 12's: using the carried one"
  fi
fi
ldd "${binaries[@]}" >>"$OUT/libs.txt" 2>&1
missing=$(grep -c "not found" "$OUT/libs.txt")
result "libraries resolve (missing: $missing; see libs.txt)" "$missing"
((missing == 0)) || { say "stopping: carried binaries cannot run here"; exit 1; }

# 3. Tests, with reference values made here by the machine's own torch.
if want 3; then
export LSTMSERVE_REFERENCE_FILE="$OUT/reference.pt"
"$PYTHON" tests/reference/make_reference.py --reference-dir "$B/reference" --out "$LSTMSERVE_REFERENCE_FILE" \
  >"$OUT/reference.txt" 2>&1
result "reference values from common_ops.py ($($PYTHON -c 'import torch; print(torch.__version__)'))" $?
for t in conformance_test stacked_lstm_test parameter_set_test; do
  "$B/tests/core/$t" --gtest_output="xml:$OUT/tests-$t.xml" >>"$OUT/tests.txt" 2>&1
  result "$t" $?
done
# The engine's set operations on a CUDA registry (the machine has no Redis for the rest).
"$B/tests/server/engine_test" --gtest_filter='SetOperations*' --gtest_output="xml:$OUT/tests-engine_test.xml" \
  >>"$OUT/tests.txt" 2>&1
result "engine_test SetOperations*" $?
grep "\[ measured \]" "$OUT/tests.txt" | tee -a "$summary"
grep -E "^\[  (PASSED|SKIPPED|FAILED) +\] [0-9]+ tests?" "$OUT/tests.txt" | tee -a "$summary"

fi

# 4. The server on the GPU, driven by the CLI.
if want 4; then
(
  set -e
  store=$(mktemp -d)
  cli() { "$B/client/lstmserve-cli" --target="$1" "${@:2}"; }
  "$B/server/lstmserve" --device=$device --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --http_listen= --store_dir="$store" \
    >"$OUT/server-stdout.txt" 2>"$OUT/server-log.txt" &
  gpu_pid=$!
  "$B/server/lstmserve" --device=cpu --listen=127.0.0.1:0 --metrics_listen= --http_listen= --store_dir="$store" \
    >"$OUT/cpu-server-stdout.txt" 2>"$OUT/cpu-server-log.txt" &
  cpu_pid=$!
  trap 'kill $gpu_pid $cpu_pid 2>/dev/null' EXIT
  for _ in $(seq 100); do
    grep -q "^listening on" "$OUT/server-stdout.txt" && grep -q "^listening on" "$OUT/cpu-server-stdout.txt" && break
    sleep 0.2
  done
  gpu=$(awk '/^listening on/{print $NF}' "$OUT/server-stdout.txt")
  cpu=$(awk '/^listening on/{print $NF}' "$OUT/cpu-server-stdout.txt")
  metrics=$(awk '/^metrics on/{print $NF}' "$OUT/server-stdout.txt")
  echo "gpu server $gpu (metrics $metrics), cpu server $cpu"
  cli "$gpu" health
  cli "$gpu" create --id=s32 --layers=2 --input_size=64 --hidden_size=64 --seed=42
  cli "$gpu" create --id=l_half --spec="{\"lstm\": {\"num_layers\": 4, \"input_size\": 1024, \"hidden_size\": 1024}, \"seed\": 7, \"dtype\": \"$half\"}"
  cli "$gpu" get --id=s32
  cli "$gpu" step --id=s32 --batch=4 --input_seed=3
  cli "$gpu" run --id=s32 --batch=3 --steps=50 --input_seed=5 --out="$OUT/gpu-run.pt"
  cli "$cpu" run --id=s32 --batch=3 --steps=50 --input_seed=5 --out="$OUT/cpu-run.pt"
  cli "$gpu" run --id=l_half --batch=16 --steps=10 --input_seed=5 --final_state_only
  cli "$gpu" --json bench --id=s32 --rpc=session --concurrency=8 --requests=400
  cli "$gpu" --json bench --id=s32 --rpc=step --concurrency=32 --requests=2000
  cli "$gpu" export --id=s32 --out="$OUT/s32.safetensors"
  "$PYTHON" - "$OUT" "$metrics" "$device" <<'PY'
import sys, urllib.request, torch
out, metrics, device = sys.argv[1:4]
g = torch.load(f"{out}/gpu-run.pt", weights_only=False)  # our own files: dicts of tensors
c = torch.load(f"{out}/cpu-run.pt", weights_only=False)
worst = max((g[k].float() - c[k].float()).abs().max().item() for k in g)
print(f"GPU server vs CPU server, same set and inputs, 50 steps: max abs diff {worst:.3g} (bound 1e-5)")
assert worst <= 1e-5, worst
text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
lines = [l for l in text.splitlines() if l.startswith(("lstmserve_build_info", "lstmserve_cuda_memory", "lstmserve_batch_size_rows_count"))]
print("\n".join(lines))
if device == "cuda":
    assert any(l.startswith("lstmserve_cuda_memory_allocated_bytes") for l in lines), "no CUDA memory metric"
    assert 'device="cuda:0"' in text, "build_info does not name the GPU"
PY
) >"$OUT/server.txt" 2>&1
result "server --device=$device driven by lstmserve-cli (server.txt)" $?
grep -E "max abs diff|cuda_memory|build_info" "$OUT/server.txt" | tee -a "$summary"
grep -q "max abs diff" "$OUT/server.txt" || tail -30 "$OUT/server.txt" | tee -a "$summary"

fi

# 5. Core against nn.LSTM (cuDNN on the GPU).
if want 5; then
if $rehearse; then
  bench_args=(--device cpu --workloads S,M --repetitions 2 --min-time 0.1 --peer-python "$PYTHON")
else
  bench_args=(--device cuda --repetitions 3 --min-time 0.2 --threads 8 --peer-python "$PYTHON")
fi
"$PYTHON" tests/bench/compare --build-dir "$B" --reference-dir "$B/reference" "${bench_args[@]}" \
  >"$OUT/compare-fp32.json" 2>"$OUT/compare-fp32.txt"
result "compare fp32 (compare-fp32.txt)" $?
cat "$OUT/compare-fp32.txt" >>"$summary"
if ! $rehearse; then
  "$PYTHON" tests/bench/compare --build-dir "$B" --reference-dir "$B/reference" "${bench_args[@]}" --dtype bfloat16 \
    --workloads S,S32,M,L,L_B1,L_B64,L_B1024 >"$OUT/compare-bf16.json" 2>"$OUT/compare-bf16.txt"
  result "compare bf16 (compare-bf16.txt)" $?
  cat "$OUT/compare-bf16.txt" >>"$summary"
fi

fi

# 6. Serving: batching on the GPU.
if want 6; then
serve_args=(--device "$device" --servers-only --duration 3 --warmup 1)
$rehearse && serve_args=(--device "$device" --servers-only --duration 0.5 --warmup 0.2)
"$PYTHON" tests/bench/serve_compare --build-dir "$B" --reference-dir "$B/reference" "${serve_args[@]}" \
  >"$OUT/serve.json" 2>"$OUT/serve.txt"
result "serve_compare --device $device (serve.txt)" $?
cat "$OUT/serve.txt" >>"$summary"

fi
say "done: $failures step(s) failed"
# The device tool returns at most 8 files: everything but the summary travels in one archive.
(cd "$OUT" && tar czf /tmp/gpu-check-results.tgz --exclude=reference.pt --exclude=summary.txt -- * &&
  find . -maxdepth 1 -type f ! -name summary.txt -delete && mv /tmp/gpu-check-results.tgz results.tgz)
exit $((failures > 0))
