#!/usr/bin/env bash
# lstmserve-cli against the real server on 127.0.0.1:0: every command, readable and --json
# output, exit codes, and .pt exports that torch.load reads with its defaults (PyTorch 1.13
# and 2.11, where weights_only is the default) bit-equal to create_weight.
# Usage: test_cli.sh SERVER_BINARY CLI_BINARY PYTHON REFERENCE_DIR TOOLS_PYTHON
set -u
server_bin=$1 cli=$2 python=$3 reference_dir=$4 tools_python=$5
work=$(mktemp -d /tmp/lstmserve-cli-XXXXXX)
"$server_bin" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --http_listen=127.0.0.1:0 --store_dir="$work/store" --threads=1 >"$work/out" 2>"$work/err" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$work/out" && break; sleep 0.1; done
target=$(sed -n 's/^listening on //p' "$work/out")
passed=0 failed=0
check() {  # check NAME EXPECTED_STATUS COMMAND... ; output in $out
  local name=$1 want=$2; shift 2
  out=$("$@" 2>&1); local got=$?
  if [[ $got == "$want" ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $name: exit $got, want $want: $out"; fi
}
contains() {  # contains NAME TEXT: the last output contains TEXT
  if [[ "$out" == *"$2"* ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $1: no '$2' in: $out"; fi
}
c=("$cli" --target="$target")
check health 0 "${c[@]}" health;                                   contains health SERVING
check create 0 "${c[@]}" create --id=cli-set --layers=2 --input_size=16 --hidden_size=8 --seed=42
contains create "lstm:      layers=2 input_size=16 hidden_size=8"
check create-json 0 "${c[@]}" --json create --id=cli-json --spec='{"lstm":{"numLayers":1,"inputSize":3,"hiddenSize":2},"seed":"7"}'
contains create-json '"checksum":"sha256:'
check get 0 "${c[@]}" get --id=cli-set;                            contains get "w_1          [16, 32]"
check list 0 "${c[@]}" list;                                       contains list "cli-json"
check run 0 "${c[@]}" run --id=cli-set --batch=3 --steps=4 --out="$work/run.safetensors"
contains run "outputs  [4, 3, 8]"
check step-json 0 "${c[@]}" --json step --id=cli-set --batch=2;    contains step-json '"h":[{"shape":[2,8]'
check export 0 "${c[@]}" export --id=cli-set --out="$work/set.pt"
for py in "$python" "$tools_python"; do  # torch.load with its defaults: weights_only=True in 2.11
  check "torch-load $py" 0 "$py" -c "
import sys, torch; sys.path.insert(0, '$reference_dir'); import common_ops
d = torch.load('$work/set.pt'); torch.manual_seed(42)
w = [common_ops.create_weight('w', [(16 if l == 0 else 8) + 8, 32]) for l in range(2)]
assert type(d) is dict and list(d) == ['w_0', 'w_1'], d
assert all(torch.equal(d[f'w_{l}'], w[l].detach()) for l in range(2))"
done
# Reduced weights: bfloat16, and int8 with its float32 scales, equal to the .safetensors export.
check create-int8 0 "${c[@]}" create --id=cli-int8 --layers=1 --input_size=4 --hidden_size=3 --weight_storage=int8
check create-bf16 0 "${c[@]}" create --id=cli-bf16 --layers=1 --input_size=4 --hidden_size=3 --weight_storage=bfloat16
for id in cli-int8 cli-bf16; do
  check "export-$id" 0 "${c[@]}" export --id=$id --out="$work/$id.pt"
  check "export-st-$id" 0 "${c[@]}" export --id=$id --out="$work/$id.safetensors"
  check "torch-load-$id" 0 "$tools_python" -c "
import json, struct, torch
d = torch.load('$work/$id.pt')
raw = open('$work/$id.safetensors', 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]
head = {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != '__metadata__'}
kinds = {'BF16': torch.bfloat16, 'I8': torch.int8, 'F32': torch.float32}
assert sorted(d) == sorted(head), (list(d), list(head))
for k, h in head.items():
    b, e = h['data_offsets']
    want = torch.frombuffer(bytearray(raw[8 + n + b:8 + n + e]), dtype=kinds[h['dtype']]).reshape(h['shape'])
    assert d[k].dtype == want.dtype and torch.equal(d[k], want), k"
  check "import-$id" 0 "${c[@]}" import --in="$work/$id.pt" --id=$id-copy --weight_storage=$([[ $id == cli-bf16 ]] && echo bfloat16 || echo int8)
done
contains import-cli-bf16 "WEIGHT_STORAGE_BFLOAT16"
check get-cli-int8-copy 0 "${c[@]}" get --id=cli-int8-copy;         contains get-cli-int8-copy "WEIGHT_STORAGE_INT8"
check import 0 "${c[@]}" import --in="$work/set.pt" --id=cli-copy;  contains import "SET_ORIGIN_IMPORTED"
check make-inputs 0 "$python" -c "
import torch; g = torch.Generator().manual_seed(1)
torch.save({'inputs': torch.randn(4, 3, 16, generator=g), 'x': torch.randn(3, 16, generator=g)}, '$work/in.pt')
torch.save({'inputs': torch.randn(4, 3, 16, generator=g)}, '$work/one.pt')"
check run-file 0 "${c[@]}" run --id=cli-copy --input="$work/in.pt" --final_state_only
contains run-file "layer 1  c [3, 8]"
check step-file 0 "${c[@]}" step --id=cli-copy --input="$work/in.pt"
if [[ "${LSTMSERVE_LIBTORCH_VERSION:-1.13}" == 1.* ]]; then
  # LibTorch 1.13's unpickler cannot read a torch.save'd dict of one tensor: the CLI says so.
  check one-tensor-pt 1 "${c[@]}" run --id=cli-copy --input="$work/one.pt"
  contains one-tensor-pt "save it as .safetensors"
else  # LibTorch 2.x reads it
  check one-tensor-pt 0 "${c[@]}" run --id=cli-copy --input="$work/one.pt" --final_state_only
  contains one-tensor-pt "layer 1  c [3, 8]"
fi
check delete 0 "${c[@]}" delete --id=cli-copy
check get-deleted 1 "${c[@]}" get --id=cli-copy;                    contains get-deleted "NOT_FOUND"
check duplicate 1 "${c[@]}" create --id=cli-set;                    contains duplicate "ALREADY_EXISTS"
check bad-id 1 "${c[@]}" get --id=../etc;                           contains bad-id "INVALID_ARGUMENT"
check unknown-command 2 "${c[@]}" frobnicate;                       contains unknown-command "unknown command"
check unknown-flag 2 "${c[@]}" --frob health;                       contains unknown-flag "unknown flag --frob"
check missing-id 2 "${c[@]}" get;                                   contains missing-id "needs --id"
check bench 0 "${c[@]}" --json bench --id=cli-set --rpc=step --concurrency=4 --duration=1s --warmup=0s
contains bench '"errors":{}'
contains bench '"rpc":"step"'
check bench-session 0 "${c[@]}" bench --id=cli-set --rpc=session --concurrency=2 --requests=50 --warmup=0s --duration=5s
contains bench-session "errors: none"
check bench-run-creates 0 "${c[@]}" bench --id=cli-bench-new --layers=1 --input_size=4 --hidden_size=4 --rpc=run --steps=3 --requests=20 --warmup=0s
contains bench-run-creates "run on cli-bench-new (L=1 I=4 H=4, B=1, T=3)"
# A stored sequence (started over HTTP, as an Open Inference Protocol client would), read back.
http=$(sed -n 's/^http on \([^ ]*\).*/\1/p' "$work/out")
body='"inputs": [{"name": "INPUT", "shape": [1, 1, 16], "datatype": "FP32", "data": [0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]}]'
curl -sf "$http/v2/models/cli-set/infer" -d "{$body, \"parameters\": {\"sequence_id\": \"cli-seq\", \"sequence_start\": true}}" >/dev/null
curl -sf "$http/v2/models/cli-set/infer" -d "{$body, \"parameters\": {\"sequence_id\": \"cli-seq\", \"sequence_step\": 1}}" >/dev/null
check sequence 0 "${c[@]}" sequence --sequence_id=cli-seq --state;  contains sequence "steps:     2"
contains sequence "c[1]:"
check sequence-json 0 "${c[@]}" --json sequence --sequence_id=cli-seq; contains sequence-json '"sequenceStep":"2"'
check sequence-none 1 "${c[@]}" sequence --sequence_uint64=99;      contains sequence-none "was never started"
check sequence-usage 2 "${c[@]}" sequence;                          contains sequence-usage "needs one of"
check help 0 "$cli" --help;                                         contains help "Commands:"
check server-help 0 "$server_bin" --help;                           contains server-help "--store_dir"
check server-bad-flag 2 "$server_bin" --listen=nonsense;            contains server-bad-flag "is not HOST:PORT"
check server-bad-isa 2 "$server_bin" --isa=avx9;                    contains server-bad-isa "--isa: unknown instruction-set level"
printf '# flags, as a Kubernetes ConfigMap holds them\n--threads=1\n\n--metrics_listen=bad\n' >"$work/flags"
check server-flagfile 2 "$server_bin" --flagfile="$work/flags";     contains server-flagfile "--metrics_listen: 'bad' is not HOST:PORT"
check server-no-flagfile 2 "$server_bin" --flagfile="$work/none";   contains server-no-flagfile "cannot read --flagfile"
kill -TERM $server_pid; wait $server_pid; status=$?
if [[ $status == 0 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL server exit $status after SIGTERM"; fi
check unreachable 1 "$cli" --target="$target" --timeout=2s health;  contains unreachable "UNAVAILABLE"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
