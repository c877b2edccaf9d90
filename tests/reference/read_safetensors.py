#!/usr/bin/python3
"""Independent reader of a lstmserve .safetensors file, from the format's definition.

Checks, and exits non-zero on any mismatch:
  - the tensors equal common_ops.create_weight for the seed and shapes given;
  - the checksum in the metadata equals sha256 over name, 0, dtype, 0, shape, 0, bytes;
Usage: read_safetensors.py FILE --reference-dir DIR --seed S --lstm L,I,H
"""
import argparse
import hashlib
import json
import struct
import sys

import torch

DTYPES = {"F32": (torch.float32, "float32"), "F16": (torch.float16, "float16"), "BF16": (torch.bfloat16, "bfloat16")}


def raw(path):
    """(metadata, [(name, safetensors dtype, shape, bytes)]) in data order; no torch needed."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    entries = []
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = info["data_offsets"]
        entries.append((name, info["dtype"], info["shape"], data[begin:end]))
    return meta, entries


def read(path):
    meta, entries = raw(path)
    tensors = []
    for name, dtype_code, shape, data in entries:
        dtype, dtype_name = DTYPES[dtype_code]
        tensors.append((name, dtype_name, torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)))
    return meta, tensors


def checksum(tensors):
    h = hashlib.sha256()
    for name, dtype_name, t in tensors:
        h.update(name.encode() + b"\0" + dtype_name.encode() + b"\0" +
                 ",".join(str(s) for s in t.shape).encode() + b"\0")
        h.update(t.contiguous().numpy().tobytes() if t.dtype == torch.float32 else t.view(torch.int16).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--lstm", required=True, help="L,I,H")
    args = p.parse_args()
    sys.path.insert(0, args.reference_dir)
    import common_ops

    layers, inp, hid = (int(v) for v in args.lstm.split(","))
    meta, tensors = read(args.file)
    torch.manual_seed(args.seed)
    expected = [common_ops.create_weight(f"w_{l}", [(inp if l == 0 else hid) + hid, 4 * hid]).detach()
                for l in range(layers)]
    names = [name for name, _, _ in tensors]
    if names != [f"w_{l}" for l in range(layers)]:
        sys.exit(f"tensor names/order {names}")
    for (name, _, t), e in zip(tensors, expected):
        if not torch.equal(t, e):
            sys.exit(f"{name} differs from create_weight")
    if meta.get("lstmserve.checksum") != checksum(tensors):
        sys.exit(f"checksum {meta.get('lstmserve.checksum')} != {checksum(tensors)}")
    print(f"read_safetensors: {len(tensors)} tensors equal create_weight; checksum {checksum(tensors)}")


if __name__ == "__main__":
    main()
