"""lstmserve's synchronous Python client (see the package docstring). The requests are built
and the answers read by the functions of `calls`, which the asyncio client shares."""
from __future__ import annotations

import queue
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc

from lstmserve.v1 import inference_service_pb2 as inference_pb2
from lstmserve.v1 import inference_service_pb2_grpc as inference_grpc
from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve.v1 import parameter_service_pb2_grpc as parameter_grpc

from . import calls
from .tensors import TensorLike, to_wire

States = Tuple[List[TensorLike], List[TensorLike]]


class Session:
    """A server-side stateful session (InferenceService.Session): one x in, top-layer h out."""

    def __init__(self, stub, set_id: str, batch_size: int, c=None, h=None, return_state: bool = False,
                 metadata=None, as_numpy: bool = False, sequence_id: str = ""):
        self._as_numpy = as_numpy
        self._queue: "queue.Queue" = queue.Queue()  # requests; None ends the stream
        self._queue.put(calls.session_start(set_id, batch_size, c, h, return_state, sequence_id))
        self._responses = stub.Session(iter(self._queue.get, None), metadata=metadata)
        self.sequence_id = sequence_id
        """The stored sequence the steps are kept in: the one named, or the one the server
        named (known once a step is answered). A new session naming it resumes it."""

    def step(self, x: TensorLike):
        """Returns the top layer's new h, or (h, c_list, h_list) with return_state."""
        request = inference_pb2.SessionRequest()
        to_wire(x, request.x)
        self._queue.put(request)
        response = next(self._responses)
        self.sequence_id = response.sequence_id
        return calls.session_output(response, self._as_numpy)

    def close(self) -> None:
        self._queue.put(None)
        for _ in self._responses:
            pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Client:
    """Thread-safe; one channel for every call. Tensors go in as numpy arrays or torch tensors
    and come back as torch.Tensor, or as numpy arrays with as_numpy=True (the default without
    torch). Errors raise grpc.RpcError with the server's status code and message."""

    def __init__(self, target: str = "localhost:50051", timeout: float = 60.0, max_message_bytes: int = 64 << 20,
                 lb_policy: str = "round_robin", tls: bool = False, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None, certificate_chain: Optional[bytes] = None,
                 server_name: Optional[str] = None, token: Optional[str] = None, as_numpy: Optional[bool] = None):
        """`tls` (or any PEM bytes given) uses TLS: `root_certificates` to trust (default: the
        system's), `private_key` and `certificate_chain` for mutual TLS, `server_name` to check
        the certificate against. `token` is sent as "authorization: Bearer <token>"."""
        self._channel = calls.channel(grpc, target, max_message_bytes, lb_policy, tls, root_certificates, private_key,
                                      certificate_chain, server_name)
        self._metadata = calls.metadata(token)
        self._timeout = timeout
        self._as_numpy = calls.as_numpy(as_numpy)
        self._parameters = parameter_grpc.ParameterServiceStub(self._channel)
        self._inference = inference_grpc.InferenceServiceStub(self._channel)
        self._health = self._channel.unary_unary(calls.HEALTH_METHOD, request_serializer=lambda service: service,
                                                 response_deserializer=lambda raw: raw)

    def _options(self):
        return {"timeout": self._timeout, "metadata": self._metadata}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self) -> str:
        """grpc.health.v1 status: "SERVING", "NOT_SERVING", ..."""
        return calls.health_status(self._health(b"", **self._options()))

    def create(self, spec: parameter_pb2.ParameterSetSpec, id: str = "") -> parameter_pb2.ParameterSet:
        """Creates a set from a lstmserve.v1.ParameterSetSpec; returns its ParameterSet."""
        request = parameter_pb2.CreateParameterSetRequest(parameter_set_id=id, spec=spec)
        return self._parameters.CreateParameterSet(request, **self._options()).parameter_set

    def create_lstm(self, num_layers: int, input_size: int, hidden_size: int, seed: int = 0, bias: bool = False,
                    fan_convention: str = "torch", id: str = "", weight_initializer=None,
                    weight_storage: Optional[str] = None) -> parameter_pb2.ParameterSet:
        """The stacked-LSTM template; bit-identical to torch.manual_seed(seed) + create_weight.
        `weight_storage`: None (float32 weights), "bfloat16" or "int8" (the float32 draw,
        rounded as WeightStorage in the proto says)."""
        return self.create(calls.lstm_spec(num_layers, input_size, hidden_size, seed, bias, fan_convention,
                                           weight_initializer, weight_storage), id)

    def get(self, id: str) -> parameter_pb2.ParameterSet:
        return self._parameters.GetParameterSet(parameter_pb2.GetParameterSetRequest(parameter_set_id=id),
                                                **self._options()).parameter_set

    def list(self, page_size: int = 100) -> List[parameter_pb2.ParameterSet]:
        out, token = [], ""
        while True:
            response = self._parameters.ListParameterSets(
                parameter_pb2.ListParameterSetsRequest(page_size=page_size, page_token=token), **self._options())
            out.extend(response.parameter_sets)
            token = response.next_page_token
            if not token:
                return out

    def delete(self, id: str) -> None:
        self._parameters.DeleteParameterSet(parameter_pb2.DeleteParameterSetRequest(parameter_set_id=id),
                                            **self._options())

    def export(self, id: str) -> Dict[str, TensorLike]:
        """The set's tensors, in draw order, as {name: tensor}."""
        collector = calls.ExportCollector(self._as_numpy)
        for message in self._parameters.ExportParameterSet(
                parameter_pb2.ExportParameterSetRequest(parameter_set_id=id), **self._options()):
            collector.add(message)
        return collector.tensors()

    def import_tensors(self, tensors: Mapping[str, TensorLike], id: str = "", checksum: str = "",
                       chunk_bytes: int = 1 << 20, weight_storage: Optional[str] = None) -> parameter_pb2.ParameterSet:
        """Uploads {name: tensor} (for example trained weights) as a set; returns its ParameterSet.
        `weight_storage` ("bfloat16", "int8"; None infers it from the dtypes, weight_storage_of):
        an LSTM set of bfloat16 weights without biases needs it given."""
        messages = calls.import_messages(tensors, id, checksum, chunk_bytes, weight_storage)
        return self._parameters.ImportParameterSet(messages, **self._options()).parameter_set

    def analyze(self, id: Optional[str] = None, spec=None, probe_seed: int = 0, samples: int = 0, steps: int = 0,
                activation: str = "relu", negative_slope: float = 0.0, tensors: Sequence[str] = (),
                layout: str = "auto", weight_storage_error: bool = False):
        """Variance diagnostics of a stored set (`id`) or of a ParameterSetSpec message
        (`spec`, created for the analysis only): an AnalyzeParameterSetResponse with
        lstm_layers or chain_layers. `activation`: relu, leaky_relu, tanh, sigmoid, linear;
        `layout`: auto, out_in, in_out. `weight_storage_error`: LSTM sets also get
        weight_storage_errors, the output error of bfloat16/int8 weights against float32."""
        request = calls.analyze_request(id, spec, probe_seed, samples, steps, activation, negative_slope, tensors,
                                        layout, weight_storage_error)
        return self._parameters.AnalyzeParameterSet(request, **self._options())

    def step(self, id: str, x: TensorLike, c=None, h=None) -> States:
        """One step: returns (c_list, h_list), one [B, H] tensor per layer."""
        response = self._inference.Step(calls.step_request(id, x, c, h), **self._options())
        return calls.states(response, self._as_numpy)

    def run(self, id: str, inputs: TensorLike, c=None, h=None, final_state_only: bool = False):
        """A sequence [T, B, I]: returns (outputs [T, B, H] or None, c_list, h_list)."""
        response = self._inference.Run(calls.run_request(id, inputs, c, h, final_state_only), **self._options())
        return calls.run_result(response, self._as_numpy)

    def session(self, id: str, batch_size: int, c=None, h=None, return_state: bool = False,
                sequence_id: str = "") -> Session:
        """A Session stream. With `sequence_id`, its steps are that stored sequence's: resumed
        when it is open (on any replica with a shared store), started otherwise."""
        return Session(self._inference, id, batch_size, c, h, return_state, metadata=self._metadata,
                       as_numpy=self._as_numpy, sequence_id=sequence_id)

    def get_sequence(self, sequence_id, include_state: bool = False):
        """A stored sequence (an int or str id, as the Open Inference Protocol's sequence_id):
        a GetSequenceResponse with its set, sequence_step (steps taken), batch_size and, with
        include_state, c and h per layer."""
        return self._inference.GetSequence(calls.get_sequence_request(sequence_id, include_state),
                                           **self._options())
