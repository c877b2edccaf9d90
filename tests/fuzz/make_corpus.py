#!/usr/bin/python3
"""Writes the fuzzers' seed corpora into tests/fuzz/corpus/<harness>/ (committed): valid and
nearly valid inputs, so that libFuzzer starts from the formats' real structure.
Run with PYTHONPATH=build/client/python (the generated protobuf stubs); fuzz_oip's corpus
needs tritonclient (/opt/lstmserve-oip/bin/python, see oip())."""
import hashlib
import json
import os
import struct

from lstmserve.v1 import inference_service_pb2 as inference
from lstmserve.v1 import parameter_service_pb2 as parameter
from lstmserve.v1 import tensor_pb2

HERE = os.path.dirname(os.path.abspath(__file__))


def tensor(shape, values=None):
    n = 1
    for s in shape:
        n *= s
    values = values if values is not None else [0.25 * (i % 7) - 0.5 for i in range(n)]
    return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, data=struct.pack(f"<{n}f", *values))


def write(harness, name, data):
    folder = os.path.join(HERE, "corpus", harness)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def requests():
    step = inference.StepRequest(parameter_set_id="s", x=tensor([2, 3]))
    write("fuzz_request", "step", b"\x00" + step.SerializeToString())
    step.c.extend([tensor([2, 4]), tensor([2, 4])])
    step.h.extend([tensor([2, 4]), tensor([2, 4])])
    write("fuzz_request", "step-state", b"\x00" + step.SerializeToString())
    write("fuzz_request", "step-nan", b"\x00" + inference.StepRequest(
        parameter_set_id="s", x=tensor([1, 3], [0.0, float("nan"), 1.0])).SerializeToString())
    write("fuzz_request", "step-short", b"\x00" + inference.StepRequest(
        parameter_set_id="../x", x=tensor_pb2.Tensor(dtype=1, shape=[2, 3], data=b"\0" * 20)).SerializeToString())
    run = inference.RunRequest(parameter_set_id="s", inputs=tensor([5, 2, 3]), final_state_only=True)
    write("fuzz_request", "run", b"\x01" + run.SerializeToString())
    write("fuzz_request", "run-huge-shape", b"\x01" + inference.RunRequest(
        parameter_set_id="s", inputs=tensor_pb2.Tensor(dtype=1, shape=[1 << 40, 1 << 40, 3])).SerializeToString())
    start = inference.SessionRequest(start=inference.SessionStart(parameter_set_id="s", batch_size=2))
    write("fuzz_request", "session-start", b"\x02" + start.SerializeToString())
    write("fuzz_request", "session-x", b"\x02" + inference.SessionRequest(x=tensor([2, 3])).SerializeToString())


def safetensors(tensors, metadata):
    header, offset, data = {"__metadata__": metadata}, 0, b""
    for name, shape, values in tensors:
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        data += blob
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def checksum(tensors):
    h = hashlib.sha256()
    for name, shape, values in tensors:
        h.update(name.encode() + b"\0float32\0" + ",".join(map(str, shape)).encode() + b"\0")
        h.update(struct.pack(f"<{len(values)}f", *values))
    return "sha256:" + h.hexdigest()


def stores():
    one = [("w", [2, 3], [float(i) for i in range(6)])]
    lstm = [("w_0", [5, 8], [0.01 * i for i in range(40)]), ("b_0", [8], [0.5] * 8)]
    meta = {"lstmserve.id": "seed-set", "lstmserve.origin": "created", "lstmserve.create_time": "1700000000000000",
            "format": "pt"}
    write("fuzz_safetensors", "one-tensor", safetensors(one, dict(meta, **{"lstmserve.checksum": checksum(one)})))
    write("fuzz_safetensors", "lstm", safetensors(lstm, dict(meta, **{"lstmserve.checksum": checksum(lstm)})))
    write("fuzz_safetensors", "no-metadata", safetensors(one, {}))
    write("fuzz_safetensors", "bad-checksum", safetensors(one, dict(meta, **{"lstmserve.checksum": "sha256:00"})))
    write("fuzz_safetensors", "truncated", safetensors(lstm, meta)[:-9])


def specs():
    P = parameter
    lstm = P.ParameterSetSpec(lstm=P.LstmTemplate(num_layers=2, input_size=3, hidden_size=4), seed=1)
    write("fuzz_spec", "lstm", lstm.SerializeToString())
    biased = P.ParameterSetSpec(lstm=P.LstmTemplate(
        num_layers=1, input_size=2, hidden_size=2, bias=True,
        weight_initializer=P.Initializer(kaiming_normal=P.Initializer.Kaiming(a=0.1)),
        bias_initializer=P.Initializer(uniform=P.Initializer.Uniform(a=-0.1, b=0.1))), seed=2 ** 40,
        fan_convention=P.FAN_CONVENTION_MATMUL)
    write("fuzz_spec", "lstm-bias", biased.SerializeToString())
    listed = P.ParameterSetSpec(tensor_list=P.TensorSpecList(tensors=[
        P.TensorSpec(name="a", shape=[3, 3], initializer=P.Initializer(orthogonal=P.Initializer.Orthogonal(gain=2))),
        P.TensorSpec(name="b", shape=[4], initializer=P.Initializer(constant=P.Initializer.Constant(value=0.5))),
        P.TensorSpec(name="c", shape=[2, 2, 2], initializer=P.Initializer(trunc_normal=P.Initializer.TruncNormal(std=0.02))),
        P.TensorSpec(name="d", shape=[2, 3], initializer=P.Initializer(xavier_uniform=P.Initializer.XavierUniform())),
    ]), seed=3)
    write("fuzz_spec", "tensor-list", listed.SerializeToString())
    write("fuzz_spec", "overflow", P.ParameterSetSpec(lstm=P.LstmTemplate(
        num_layers=3, input_size=1 << 62, hidden_size=1 << 62)).SerializeToString())


def oip():
    """fuzz_oip: ModelInferRequest messages (first byte even) and HTTP bodies (odd; the second
    byte is the JSON's length for the binary extension, or 255 for none). Written with
    tritonclient's messages, the protocol's own: run with /opt/lstmserve-oip/bin/python."""
    try:
        from tritonclient.grpc import service_pb2 as S
    except ImportError:
        print("make_corpus: no tritonclient here; fuzz_oip's corpus is left as it is")
        return
    x = struct.pack("<6f", *[0.25 * i for i in range(6)])
    r = S.ModelInferRequest(model_name="m")
    r.inputs.add(name="INPUT", datatype="FP32", shape=[2, 1, 3])
    r.raw_input_contents.append(x)
    write("fuzz_oip", "grpc-raw", b"\x00" + r.SerializeToString())
    r.parameters["sequence_id"].uint64_param = 5
    r.parameters["sequence_start"].bool_param = True
    r.outputs.add(name="HN")
    write("fuzz_oip", "grpc-sequence", b"\x00" + r.SerializeToString())
    t = S.ModelInferRequest(model_name="m")
    typed = t.inputs.add(name="INPUT", datatype="FP32", shape=[1, 2, 3])
    typed.contents.fp32_contents.extend([0.5] * 6)
    c0 = t.inputs.add(name="C0", datatype="FP32", shape=[2, 2, 4])
    c0.contents.fp32_contents.extend([0.1] * 16)
    h0 = t.inputs.add(name="H0", datatype="FP32", shape=[2, 2, 4])
    h0.contents.fp32_contents.extend([0.2] * 16)
    write("fuzz_oip", "grpc-typed-state", b"\x00" + t.SerializeToString())
    body = json.dumps({"id": "a", "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3],
                                             "data": [[[0.1, 0.2, 0.3]]]}],
                       "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}]}).encode()
    write("fuzz_oip", "http-json", b"\x01\xff" + body)
    head = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3],
                                   "parameters": {"binary_data_size": 12}}],
                       "parameters": {"sequence_id": "s", "sequence_start": True}},
                      separators=(",", ":")).encode()
    if len(head) < 255:
        write("fuzz_oip", "http-binary", b"\x01" + bytes([len(head)]) + head + x[:12])
    short = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 3],
                                    "parameters": {"binary_data_size": 12}}]}).encode()
    write("fuzz_oip", "http-binary-short", b"\x01" + bytes([min(len(short), 254) - 1]) + short + x[:12])


if __name__ == "__main__":
    requests()
    stores()
    specs()
    oip()
