"""Tensors on lstmserve's wire (lstmserve.v1.Tensor: dtype, shape, row-major little-endian
bytes), from and to numpy arrays or torch tensors. torch is optional: without it, tensors come
back as numpy arrays (bfloat16 ones widened to float32, which numpy lacks)."""
from __future__ import annotations

import hashlib
import sys
from typing import Any, Mapping, Optional

import numpy as np

from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve.v1 import tensor_pb2

try:
    import torch
except ImportError:  # numpy only
    torch = None

assert sys.byteorder == "little", "lstmserve's wire tensors are little-endian"

#: What a tensor may be: a numpy array, a torch.Tensor, or anything numpy.asarray takes.
TensorLike = Any

_NUMPY_TO_WIRE = {np.dtype(np.float32): tensor_pb2.DATA_TYPE_FLOAT32, np.dtype(np.float16): tensor_pb2.DATA_TYPE_FLOAT16,
                  np.dtype(np.int8): tensor_pb2.DATA_TYPE_INT8}
_WIRE_TO_NUMPY = {v: k for k, v in _NUMPY_TO_WIRE.items()}
_NAMES = {tensor_pb2.DATA_TYPE_FLOAT32: "float32", tensor_pb2.DATA_TYPE_FLOAT16: "float16",
          tensor_pb2.DATA_TYPE_BFLOAT16: "bfloat16", tensor_pb2.DATA_TYPE_INT8: "int8"}
if torch is not None:
    _TORCH_TO_WIRE = {torch.float32: tensor_pb2.DATA_TYPE_FLOAT32, torch.float16: tensor_pb2.DATA_TYPE_FLOAT16,
                      torch.bfloat16: tensor_pb2.DATA_TYPE_BFLOAT16, torch.int8: tensor_pb2.DATA_TYPE_INT8}
    _WIRE_TO_TORCH = {v: k for k, v in _TORCH_TO_WIRE.items()}


def _is_torch(value: Any) -> bool:
    return torch is not None and isinstance(value, torch.Tensor)


def raw(value: TensorLike):
    """(wire dtype, shape, little-endian bytes) of a tensor; float64 is sent as float32."""
    if _is_torch(value):
        t = value.detach().contiguous().cpu()
        if t.dtype == torch.float64:
            t = t.float()
        if t.dtype not in _TORCH_TO_WIRE:
            raise TypeError(f"unsupported dtype {t.dtype}; use float32, float16, bfloat16 (int8 for int8 weights)")
        data = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        return _TORCH_TO_WIRE[t.dtype], list(t.shape), data
    a = np.ascontiguousarray(np.asarray(value))
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    if a.dtype not in _NUMPY_TO_WIRE:
        raise TypeError(f"unsupported dtype {a.dtype}; use float32, float16 or int8 (bfloat16: pass a torch.Tensor)")
    return _NUMPY_TO_WIRE[a.dtype], list(a.shape), a.tobytes()


def to_wire(value: TensorLike, out: Optional[tensor_pb2.Tensor] = None) -> tensor_pb2.Tensor:
    """A numpy array or torch.Tensor as a lstmserve.v1.Tensor (written into `out` if given)."""
    out = out if out is not None else tensor_pb2.Tensor()
    out.dtype, shape, out.data = raw(value)
    out.shape[:] = shape
    return out


def from_raw(dtype: int, shape, data: bytes, as_numpy: bool = False):
    """A tensor from its wire dtype, shape and bytes: a torch.Tensor, or (as_numpy, or without
    torch) a numpy array."""
    if as_numpy or torch is None:
        if dtype == tensor_pb2.DATA_TYPE_BFLOAT16:  # widened: numpy has no bfloat16
            bits = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
            return bits.view(np.float32).reshape(list(shape))
        return np.frombuffer(data, dtype=_WIRE_TO_NUMPY[dtype]).reshape(list(shape)).copy()
    t = _WIRE_TO_TORCH[dtype]
    out = torch.frombuffer(bytearray(data), dtype=t) if data else torch.empty(0, dtype=t)
    return out.reshape(list(shape))


def from_wire(message: tensor_pb2.Tensor, as_numpy: bool = False):
    """A lstmserve.v1.Tensor as a torch.Tensor, or a numpy array (see from_raw)."""
    return from_raw(message.dtype, message.shape, message.data, as_numpy)


def weight_storage_of(tensors: Mapping[str, TensorLike]) -> int:
    """The WeightStorage a {name: tensor} set has from its dtypes alone (what import_tensors
    sends): int8 anywhere means INT8, bfloat16 beside float32 BFLOAT16, else UNSPECIFIED."""
    dtypes = {raw(v)[0] for v in tensors.values()}
    if tensor_pb2.DATA_TYPE_INT8 in dtypes:
        return parameter_pb2.WEIGHT_STORAGE_INT8
    if tensor_pb2.DATA_TYPE_BFLOAT16 in dtypes and tensor_pb2.DATA_TYPE_FLOAT32 in dtypes:
        return parameter_pb2.WEIGHT_STORAGE_BFLOAT16
    return parameter_pb2.WEIGHT_STORAGE_UNSPECIFIED


def checksum(tensors: Mapping[str, TensorLike]) -> str:
    """The checksum lstmserve gives a set of {name: tensor} (ParameterSet.checksum): SHA-256 over
    each tensor's name, dtype name, shape and little-endian bytes, in order. Pass it to
    import_tensors to have the server check what it received."""
    digest = hashlib.sha256()
    for name, value in tensors.items():
        dtype, shape, data = raw(value)
        digest.update(name.encode() + b"\0" + _NAMES[dtype].encode() + b"\0" +
                      ",".join(str(d) for d in shape).encode() + b"\0" + data)
    return "sha256:" + digest.hexdigest()
