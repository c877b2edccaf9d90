"""What the synchronous and the asyncio clients share: the requests they build and how they
read the answers. No I/O here."""
from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import grpc

from lstmserve.v1 import inference_service_pb2 as inference_pb2
from lstmserve.v1 import parameter_service_pb2 as parameter_pb2

from .tensors import TensorLike, from_raw, from_wire, raw, to_wire, torch, weight_storage_of

HEALTH_METHOD = "/grpc.health.v1.Health/Check"
_HEALTH = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_STORAGE = {"bfloat16": parameter_pb2.WEIGHT_STORAGE_BFLOAT16, "int8": parameter_pb2.WEIGHT_STORAGE_INT8}


def channel_options(max_message_bytes: int, lb_policy: str, server_name: Optional[str]):
    # round_robin spreads calls over every address the target resolves to, e.g.
    # "dns:///lstmserve-headless.NAMESPACE.svc.cluster.local:50051".
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.lb_policy_name", lb_policy)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def channel(api, target: str, max_message_bytes: int, lb_policy: str, tls: bool, root_certificates: Optional[bytes],
            private_key: Optional[bytes], certificate_chain: Optional[bytes], server_name: Optional[str]):
    """A channel of `api` (grpc, or grpc.aio): TLS when asked or when any PEM bytes are given."""
    options = channel_options(max_message_bytes, lb_policy, server_name)
    if tls or root_certificates or private_key or certificate_chain:
        credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return api.secure_channel(target, credentials, options=options)
    return api.insecure_channel(target, options=options)


def metadata(token: Optional[str]):
    return [("authorization", f"Bearer {token}")] if token else None


def as_numpy(requested: Optional[bool]) -> bool:
    """numpy out when asked, or when torch is not installed."""
    if requested is None:
        return torch is None
    if not requested and torch is None:
        raise ImportError("as_numpy=False needs torch (pip install lstmserve-client[torch])")
    return requested


def health_status(raw_response: bytes) -> str:
    # HealthCheckResponse{status} is one varint field: 0x08 then the value.
    return _HEALTH.get(raw_response[1] if len(raw_response) >= 2 and raw_response[0] == 0x08 else 0, "UNKNOWN")


def lstm_spec(num_layers, input_size, hidden_size, seed, bias, fan_convention, weight_initializer,
              weight_storage) -> parameter_pb2.ParameterSetSpec:
    spec = parameter_pb2.ParameterSetSpec(seed=seed)
    if weight_storage is not None:
        spec.weight_storage = _STORAGE[weight_storage]
    spec.lstm.num_layers = num_layers
    spec.lstm.input_size = input_size
    spec.lstm.hidden_size = hidden_size
    spec.lstm.bias = bias
    if weight_initializer is not None:
        spec.lstm.weight_initializer.CopyFrom(weight_initializer)
    spec.fan_convention = {"torch": parameter_pb2.FAN_CONVENTION_TORCH,
                           "matmul": parameter_pb2.FAN_CONVENTION_MATMUL}[fan_convention]
    return spec


class ExportCollector:
    """Puts ExportParameterSet's messages back together: metadata, then chunks."""

    def __init__(self, numpy_out: bool):
        self._numpy = numpy_out
        self._meta = None
        self._buffers: List[bytearray] = []

    def add(self, message) -> None:
        if message.HasField("parameter_set"):
            self._meta = message.parameter_set
            self._buffers = [bytearray() for _ in self._meta.tensors]
        else:
            self._buffers[message.chunk.tensor_index] += message.chunk.data

    def tensors(self) -> Dict[str, TensorLike]:
        return {info.name: from_raw(info.dtype, info.shape, bytes(data), self._numpy)
                for info, data in zip(self._meta.tensors, self._buffers)}


def import_messages(tensors: Mapping[str, TensorLike], id: str, checksum: str, chunk_bytes: int,
                    weight_storage: Optional[str]) -> Iterator[parameter_pb2.ImportParameterSetRequest]:
    header = parameter_pb2.ImportParameterSetRequest()
    header.header.parameter_set_id = id
    header.header.checksum = checksum
    header.header.weight_storage = weight_storage_of(tensors) if weight_storage is None else _STORAGE[weight_storage]
    datas = []
    for name, value in tensors.items():
        dtype, shape, data = raw(value)
        datas.append(data)
        info = header.header.tensors.add(name=name, dtype=dtype)
        info.shape[:] = shape
    yield header
    for index, data in enumerate(datas):
        for offset in range(0, len(data), chunk_bytes):
            chunk = parameter_pb2.ImportParameterSetRequest()
            chunk.chunk.tensor_index = index
            chunk.chunk.offset = offset
            chunk.chunk.data = data[offset:offset + chunk_bytes]
            yield chunk


def analyze_request(id, spec, probe_seed, samples, steps, activation, negative_slope, tensors, layout,
                    weight_storage_error) -> parameter_pb2.AnalyzeParameterSetRequest:
    request = parameter_pb2.AnalyzeParameterSetRequest(
        probe_seed=probe_seed, samples=samples, steps=steps, negative_slope=negative_slope,
        weight_storage_error=weight_storage_error,
        activation=parameter_pb2.ChainActivation.Value(f"CHAIN_ACTIVATION_{activation.upper()}"),
        layout=parameter_pb2.WeightLayout.Value(f"WEIGHT_LAYOUT_{layout.upper()}") if layout != "auto" else 0,
        tensors=list(tensors or []))
    if spec is not None:
        request.spec.CopyFrom(spec)
    else:
        request.parameter_set_id = id
    return request


def _add_states(request, c: Optional[Sequence[TensorLike]], h: Optional[Sequence[TensorLike]]) -> None:
    for t in c or []:
        to_wire(t, request.c.add())
    for t in h or []:
        to_wire(t, request.h.add())


def step_request(id: str, x: TensorLike, c, h) -> inference_pb2.StepRequest:
    request = inference_pb2.StepRequest(parameter_set_id=id)
    to_wire(x, request.x)
    _add_states(request, c, h)
    return request


def run_request(id: str, inputs: TensorLike, c, h, final_state_only: bool) -> inference_pb2.RunRequest:
    request = inference_pb2.RunRequest(parameter_set_id=id, final_state_only=final_state_only)
    to_wire(inputs, request.inputs)
    _add_states(request, c, h)
    return request


def states(response, numpy_out: bool):
    """(c_list, h_list) of a response."""
    return [from_wire(t, numpy_out) for t in response.c], [from_wire(t, numpy_out) for t in response.h]


def run_result(response, numpy_out: bool):
    outputs = from_wire(response.outputs, numpy_out) if response.HasField("outputs") else None
    c, h = states(response, numpy_out)
    return outputs, c, h


def session_start(set_id: str, batch_size: int, c, h, return_state: bool,
                  sequence_id: str = "") -> inference_pb2.SessionRequest:
    start = inference_pb2.SessionRequest()
    start.start.parameter_set_id = set_id
    start.start.batch_size = batch_size
    start.start.return_state = return_state
    start.start.sequence_id = sequence_id
    _add_states(start.start, c, h)
    return start


def get_sequence_request(sequence_id, include_state: bool) -> inference_pb2.GetSequenceRequest:
    request = inference_pb2.GetSequenceRequest(include_state=include_state)
    if isinstance(sequence_id, int):
        request.uint64_id = sequence_id
    else:
        request.string_id = sequence_id
    return request


def session_output(response, numpy_out: bool):
    """The top layer's h, or (h, c_list, h_list) when the session returns its state."""
    out = from_wire(response.output, numpy_out)
    if response.c:
        c, h = states(response, numpy_out)
        return out, c, h
    return out
