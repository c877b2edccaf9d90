"""lstmserve's Python client (see the package docstring)."""
import hashlib
import queue
import sys

import grpc
import torch

from lstmserve.v1 import inference_service_pb2 as inference_pb2
from lstmserve.v1 import inference_service_pb2_grpc as inference_grpc
from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve.v1 import parameter_service_pb2_grpc as parameter_grpc
from lstmserve.v1 import tensor_pb2

_TO_WIRE = {torch.float32: tensor_pb2.DATA_TYPE_FLOAT32, torch.float16: tensor_pb2.DATA_TYPE_FLOAT16,
            torch.bfloat16: tensor_pb2.DATA_TYPE_BFLOAT16, torch.int8: tensor_pb2.DATA_TYPE_INT8}
_FROM_WIRE = {v: k for k, v in _TO_WIRE.items()}
_HEALTH = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
assert sys.byteorder == "little", "lstmserve's wire tensors are little-endian"


def to_wire(value, out=None):
    """A torch.Tensor or numpy array as a lstmserve.v1.Tensor (row-major little-endian)."""
    t = torch.as_tensor(value).detach().contiguous().cpu()
    if t.dtype == torch.float64:
        t = t.float()
    if t.dtype not in _TO_WIRE:
        raise TypeError(f"unsupported dtype {t.dtype}; use float32, float16, bfloat16 (int8 for int8 weights)")
    out = out if out is not None else tensor_pb2.Tensor()
    out.dtype = _TO_WIRE[t.dtype]
    out.shape[:] = list(t.shape)
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
    out.data = raw.numpy().tobytes()  # native order, little-endian on the hosts we support
    return out


def from_wire(message):
    """A lstmserve.v1.Tensor as a torch.Tensor."""
    dtype = _FROM_WIRE[message.dtype]
    t = torch.frombuffer(bytearray(message.data), dtype=dtype) if message.data else torch.empty(0, dtype=dtype)
    return t.reshape(list(message.shape))


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int8: "int8"}


def weight_storage_of(tensors):
    """The WeightStorage a {name: tensor} set has from its dtypes alone (what import_tensors
    sends): int8 anywhere means INT8, bfloat16 beside float32 BFLOAT16, else UNSPECIFIED."""
    dtypes = {torch.as_tensor(v).dtype for v in tensors.values()}
    if torch.int8 in dtypes:
        return parameter_pb2.WEIGHT_STORAGE_INT8
    if torch.bfloat16 in dtypes and torch.float32 in dtypes:
        return parameter_pb2.WEIGHT_STORAGE_BFLOAT16
    return parameter_pb2.WEIGHT_STORAGE_UNSPECIFIED


def checksum(tensors):
    """The checksum lstmserve gives a set of {name: tensor} (ParameterSet.checksum): SHA-256 over
    each tensor's name, dtype name, shape and little-endian bytes, in order. Pass it to
    import_tensors to have the server check what it received."""
    digest = hashlib.sha256()
    for name, value in tensors.items():
        t = torch.as_tensor(value).detach().contiguous().cpu()
        if t.dtype == torch.float64:
            t = t.float()
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        digest.update(name.encode() + b"\0" + _DTYPE_NAMES[t.dtype].encode() + b"\0" +
                      ",".join(str(d) for d in t.shape).encode() + b"\0" + raw.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _states(request, c, h):
    for t in c or []:
        to_wire(t, request.c.add())
    for t in h or []:
        to_wire(t, request.h.add())


class Session:
    """A server-side stateful session (InferenceService.Session): one x in, top-layer h out."""

    def __init__(self, stub, set_id, batch_size, c=None, h=None, return_state=False, metadata=None):
        start = inference_pb2.SessionRequest()
        start.start.parameter_set_id = set_id
        start.start.batch_size = batch_size
        start.start.return_state = return_state
        _states(start.start, c, h)
        self._queue = queue.Queue()  # requests; None ends the stream
        self._queue.put(start)
        self._responses = stub.Session(iter(self._queue.get, None), metadata=metadata)

    def step(self, x):
        """Returns the top layer's new h, or (h, c_list, h_list) with return_state."""
        request = inference_pb2.SessionRequest()
        to_wire(x, request.x)
        self._queue.put(request)
        response = next(self._responses)
        out = from_wire(response.output)
        if response.c:
            return out, [from_wire(t) for t in response.c], [from_wire(t) for t in response.h]
        return out

    def close(self):
        self._queue.put(None)
        for _ in self._responses:
            pass


class Client:
    """Thread-safe; one channel for every call."""

    def __init__(self, target="localhost:50051", timeout=60.0, max_message_bytes=64 << 20,
                 lb_policy="round_robin", tls=False, root_certificates=None, private_key=None,
                 certificate_chain=None, server_name=None, token=None):
        """`tls` (or any PEM bytes given) uses TLS: `root_certificates` to trust (default: the
        system's), `private_key` and `certificate_chain` for mutual TLS, `server_name` to check
        the certificate against. `token` is sent as "authorization: Bearer <token>"."""
        # round_robin spreads calls over every address the target resolves to, e.g.
        # "dns:///lstmserve-headless.NAMESPACE.svc.cluster.local:50051".
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.lb_policy_name", lb_policy)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls or root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = [("authorization", f"Bearer {token}")] if token else None
        self._timeout = timeout
        self._parameters = parameter_grpc.ParameterServiceStub(self._channel)
        self._inference = inference_grpc.InferenceServiceStub(self._channel)
        self._health = self._channel.unary_unary("/grpc.health.v1.Health/Check",
                                                 request_serializer=lambda service: service,
                                                 response_deserializer=lambda raw: raw)

    def close(self):
        self._channel.close()

    def health(self):
        """grpc.health.v1 status: "SERVING", "NOT_SERVING", ..."""
        raw = self._health(b"", timeout=self._timeout, metadata=self._metadata)  # HealthCheckRequest{} is empty
        return _HEALTH.get(raw[1] if len(raw) >= 2 and raw[0] == 0x08 else 0, "UNKNOWN")

    def create(self, spec, id=""):
        """Creates a set from a lstmserve.v1.ParameterSetSpec; returns its ParameterSet."""
        request = parameter_pb2.CreateParameterSetRequest(parameter_set_id=id, spec=spec)
        return self._parameters.CreateParameterSet(request, timeout=self._timeout, metadata=self._metadata).parameter_set

    def create_lstm(self, num_layers, input_size, hidden_size, seed=0, bias=False, fan_convention="torch",
                    id="", weight_initializer=None, weight_storage=None):
        """The stacked-LSTM template; bit-identical to torch.manual_seed(seed) + create_weight.
        `weight_storage`: None (float32 weights), "bfloat16" or "int8" (the float32 draw,
        rounded as WeightStorage in the proto says)."""
        spec = parameter_pb2.ParameterSetSpec(seed=seed)
        if weight_storage is not None:
            spec.weight_storage = {"bfloat16": parameter_pb2.WEIGHT_STORAGE_BFLOAT16,
                                   "int8": parameter_pb2.WEIGHT_STORAGE_INT8}[weight_storage]
        spec.lstm.num_layers = num_layers
        spec.lstm.input_size = input_size
        spec.lstm.hidden_size = hidden_size
        spec.lstm.bias = bias
        if weight_initializer is not None:
            spec.lstm.weight_initializer.CopyFrom(weight_initializer)
        spec.fan_convention = {"torch": parameter_pb2.FAN_CONVENTION_TORCH,
                               "matmul": parameter_pb2.FAN_CONVENTION_MATMUL}[fan_convention]
        return self.create(spec, id)

    def get(self, id):
        return self._parameters.GetParameterSet(parameter_pb2.GetParameterSetRequest(parameter_set_id=id),
                                                timeout=self._timeout, metadata=self._metadata).parameter_set

    def list(self, page_size=100):
        out, token = [], ""
        while True:
            response = self._parameters.ListParameterSets(
                parameter_pb2.ListParameterSetsRequest(page_size=page_size, page_token=token), timeout=self._timeout, metadata=self._metadata)
            out.extend(response.parameter_sets)
            token = response.next_page_token
            if not token:
                return out

    def delete(self, id):
        self._parameters.DeleteParameterSet(parameter_pb2.DeleteParameterSetRequest(parameter_set_id=id),
                                            timeout=self._timeout, metadata=self._metadata)

    def export(self, id):
        """The set's tensors, in draw order, as {name: torch.Tensor}."""
        meta, buffers = None, []
        for message in self._parameters.ExportParameterSet(
                parameter_pb2.ExportParameterSetRequest(parameter_set_id=id), timeout=self._timeout, metadata=self._metadata):
            if message.HasField("parameter_set"):
                meta = message.parameter_set
                buffers = [bytearray() for _ in meta.tensors]
            else:
                buffers[message.chunk.tensor_index] += message.chunk.data
        out = {}
        for info, data in zip(meta.tensors, buffers):
            out[info.name] = torch.frombuffer(data, dtype=_FROM_WIRE[info.dtype]).reshape(list(info.shape))
        return out

    def import_tensors(self, tensors, id="", checksum="", chunk_bytes=1 << 20, weight_storage=None):
        """Uploads {name: tensor} (for example trained weights) as a set; returns its ParameterSet.
        `weight_storage` ("bfloat16", "int8"; None infers it from the dtypes, weight_storage_of):
        an LSTM set of bfloat16 weights without biases needs it given."""
        def messages():
            header = parameter_pb2.ImportParameterSetRequest()
            header.header.parameter_set_id = id
            header.header.checksum = checksum
            header.header.weight_storage = (weight_storage_of(tensors) if weight_storage is None else
                                            {"bfloat16": parameter_pb2.WEIGHT_STORAGE_BFLOAT16,
                                             "int8": parameter_pb2.WEIGHT_STORAGE_INT8}[weight_storage])
            wires = []
            for name, value in tensors.items():
                wire = to_wire(value)
                wires.append(wire)
                info = header.header.tensors.add(name=name, dtype=wire.dtype)
                info.shape[:] = list(wire.shape)
            yield header
            for index, wire in enumerate(wires):
                for offset in range(0, len(wire.data), chunk_bytes):
                    chunk = parameter_pb2.ImportParameterSetRequest()
                    chunk.chunk.tensor_index = index
                    chunk.chunk.offset = offset
                    chunk.chunk.data = wire.data[offset:offset + chunk_bytes]
                    yield chunk
        return self._parameters.ImportParameterSet(messages(), timeout=self._timeout, metadata=self._metadata).parameter_set

    def analyze(self, id=None, spec=None, probe_seed=0, samples=0, steps=0, activation="relu",
                negative_slope=0.0, tensors=None, layout="auto", weight_storage_error=False):
        """Variance diagnostics of a stored set (`id`) or of a ParameterSetSpec message
        (`spec`, created for the analysis only): an AnalyzeParameterSetResponse with
        lstm_layers or chain_layers. `activation`: relu, leaky_relu, tanh, sigmoid, linear;
        `layout`: auto, out_in, in_out. `weight_storage_error`: LSTM sets also get
        weight_storage_errors, the output error of bfloat16/int8 weights against float32."""
        request = parameter_pb2.AnalyzeParameterSetRequest(
            probe_seed=probe_seed, samples=samples, steps=steps, negative_slope=negative_slope,
            weight_storage_error=weight_storage_error,
            activation=parameter_pb2.ChainActivation.Value(f"CHAIN_ACTIVATION_{activation.upper()}"),
            layout=parameter_pb2.WeightLayout.Value(f"WEIGHT_LAYOUT_{layout.upper()}") if layout != "auto" else 0,
            tensors=tensors or [])
        if spec is not None:
            request.spec.CopyFrom(spec)
        else:
            request.parameter_set_id = id
        return self._parameters.AnalyzeParameterSet(request, timeout=self._timeout, metadata=self._metadata)

    def step(self, id, x, c=None, h=None):
        """One step: returns (c_list, h_list), one [B, H] tensor per layer."""
        request = inference_pb2.StepRequest(parameter_set_id=id)
        to_wire(x, request.x)
        _states(request, c, h)
        response = self._inference.Step(request, timeout=self._timeout, metadata=self._metadata)
        return [from_wire(t) for t in response.c], [from_wire(t) for t in response.h]

    def run(self, id, inputs, c=None, h=None, final_state_only=False):
        """A sequence [T, B, I]: returns (outputs [T, B, H] or None, c_list, h_list)."""
        request = inference_pb2.RunRequest(parameter_set_id=id, final_state_only=final_state_only)
        to_wire(inputs, request.inputs)
        _states(request, c, h)
        response = self._inference.Run(request, timeout=self._timeout, metadata=self._metadata)
        outputs = from_wire(response.outputs) if response.HasField("outputs") else None
        return outputs, [from_wire(t) for t in response.c], [from_wire(t) for t in response.h]

    def session(self, id, batch_size, c=None, h=None, return_state=False):
        return Session(self._inference, id, batch_size, c, h, return_state, metadata=self._metadata)
