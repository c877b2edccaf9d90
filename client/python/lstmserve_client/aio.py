"""lstmserve's asyncio client: the synchronous Client's methods as coroutines, on grpc.aio.

    import asyncio
    from lstmserve_client.aio import AsyncClient

    async def main():
        async with AsyncClient("localhost:50051") as client:
            await client.create_lstm(2, 64, 64, seed=42, id="enas")
            outputs, c, h = await client.run("enas", numpy.zeros((10, 1, 64), numpy.float32))
    asyncio.run(main())
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from grpc import aio

from lstmserve.v1 import inference_service_pb2 as inference_pb2
from lstmserve.v1 import inference_service_pb2_grpc as inference_grpc
from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve.v1 import parameter_service_pb2_grpc as parameter_grpc

from . import calls
from .tensors import TensorLike, to_wire


class AsyncSession:
    """A server-side stateful session on an asyncio stream: one x in, top-layer h out."""

    def __init__(self, call, as_numpy: bool, sequence_id: str = ""):
        self._call = call
        self._as_numpy = as_numpy
        self.sequence_id = sequence_id
        """The stored sequence the steps are kept in (see Session.sequence_id)."""

    async def step(self, x: TensorLike):
        """Returns the top layer's new h, or (h, c_list, h_list) with return_state."""
        request = inference_pb2.SessionRequest()
        to_wire(x, request.x)
        await self._call.write(request)
        response = await self._call.read()
        if response is aio.EOF:
            await self._call  # raises the status the server ended the stream with
            raise ConnectionError("the session ended")
        self.sequence_id = response.sequence_id
        return calls.session_output(response, self._as_numpy)

    async def close(self) -> None:
        await self._call.done_writing()
        while await self._call.read() is not aio.EOF:
            pass

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class AsyncClient:
    """The asyncio twin of lstmserve_client.Client (same arguments, same answers); make it
    inside the event loop that uses it. Errors raise grpc.aio.AioRpcError."""

    def __init__(self, target: str = "localhost:50051", timeout: float = 60.0, max_message_bytes: int = 64 << 20,
                 lb_policy: str = "round_robin", tls: bool = False, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None, certificate_chain: Optional[bytes] = None,
                 server_name: Optional[str] = None, token: Optional[str] = None, as_numpy: Optional[bool] = None):
        self._channel = calls.channel(aio, target, max_message_bytes, lb_policy, tls, root_certificates, private_key,
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

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def health(self) -> str:
        return calls.health_status(await self._health(b"", **self._options()))

    async def create(self, spec: parameter_pb2.ParameterSetSpec, id: str = "") -> parameter_pb2.ParameterSet:
        request = parameter_pb2.CreateParameterSetRequest(parameter_set_id=id, spec=spec)
        return (await self._parameters.CreateParameterSet(request, **self._options())).parameter_set

    async def create_lstm(self, num_layers: int, input_size: int, hidden_size: int, seed: int = 0,
                          bias: bool = False, fan_convention: str = "torch", id: str = "", weight_initializer=None,
                          weight_storage: Optional[str] = None) -> parameter_pb2.ParameterSet:
        return await self.create(calls.lstm_spec(num_layers, input_size, hidden_size, seed, bias, fan_convention,
                                                 weight_initializer, weight_storage), id)

    async def get(self, id: str) -> parameter_pb2.ParameterSet:
        return (await self._parameters.GetParameterSet(parameter_pb2.GetParameterSetRequest(parameter_set_id=id),
                                                       **self._options())).parameter_set

    async def list(self, page_size: int = 100) -> List[parameter_pb2.ParameterSet]:
        out, token = [], ""
        while True:
            response = await self._parameters.ListParameterSets(
                parameter_pb2.ListParameterSetsRequest(page_size=page_size, page_token=token), **self._options())
            out.extend(response.parameter_sets)
            token = response.next_page_token
            if not token:
                return out

    async def delete(self, id: str) -> None:
        await self._parameters.DeleteParameterSet(parameter_pb2.DeleteParameterSetRequest(parameter_set_id=id),
                                                  **self._options())

    async def export(self, id: str) -> Dict[str, TensorLike]:
        collector = calls.ExportCollector(self._as_numpy)
        async for message in self._parameters.ExportParameterSet(
                parameter_pb2.ExportParameterSetRequest(parameter_set_id=id), **self._options()):
            collector.add(message)
        return collector.tensors()

    async def import_tensors(self, tensors: Mapping[str, TensorLike], id: str = "", checksum: str = "",
                             chunk_bytes: int = 1 << 20,
                             weight_storage: Optional[str] = None) -> parameter_pb2.ParameterSet:
        messages = calls.import_messages(tensors, id, checksum, chunk_bytes, weight_storage)
        return (await self._parameters.ImportParameterSet(messages, **self._options())).parameter_set

    async def analyze(self, id: Optional[str] = None, spec=None, probe_seed: int = 0, samples: int = 0,
                      steps: int = 0, activation: str = "relu", negative_slope: float = 0.0,
                      tensors: Sequence[str] = (), layout: str = "auto", weight_storage_error: bool = False):
        request = calls.analyze_request(id, spec, probe_seed, samples, steps, activation, negative_slope, tensors,
                                        layout, weight_storage_error)
        return await self._parameters.AnalyzeParameterSet(request, **self._options())

    async def step(self, id: str, x: TensorLike, c=None, h=None):
        response = await self._inference.Step(calls.step_request(id, x, c, h), **self._options())
        return calls.states(response, self._as_numpy)

    async def run(self, id: str, inputs: TensorLike, c=None, h=None, final_state_only: bool = False):
        response = await self._inference.Run(calls.run_request(id, inputs, c, h, final_state_only),
                                             **self._options())
        return calls.run_result(response, self._as_numpy)

    async def session(self, id: str, batch_size: int, c=None, h=None, return_state: bool = False,
                      sequence_id: str = "") -> AsyncSession:
        """Opens a session (the start message is sent before it returns); with `sequence_id`,
        on that stored sequence (see Client.session)."""
        call = self._inference.Session(metadata=self._metadata)
        await call.write(calls.session_start(id, batch_size, c, h, return_state, sequence_id))
        return AsyncSession(call, self._as_numpy, sequence_id)

    async def get_sequence(self, sequence_id, include_state: bool = False):
        """A stored sequence (see Client.get_sequence)."""
        return await self._inference.GetSequence(calls.get_sequence_request(sequence_id, include_state),
                                                 **self._options())
