"""Python client of lstmserve: parameter sets and stacked-LSTM inference over gRPC.

Install it with `pip install client/python` (add `[torch]` for torch tensors); its gRPC stubs
(the package lstmserve.v1) are generated when it is built. Tensors go in as numpy arrays or
torch tensors and come back as torch.Tensor, or as numpy arrays with as_numpy=True (the
default when torch is not installed). Errors raise grpc.RpcError with the server's status
code and message.

    from lstmserve_client import Client
    client = Client("localhost:50051")
    meta = client.create_lstm(num_layers=2, input_size=64, hidden_size=64, seed=42, id="enas")
    weights = client.export("enas")                 # {"w_0": tensor, "w_1": tensor}
    outputs, c, h = client.run("enas", numpy.zeros((10, 1, 64), numpy.float32))

The asyncio client, lstmserve_client.aio.AsyncClient, has the same methods as coroutines.
"""
from .client import Client, Session
from .tensors import checksum, from_wire, to_wire, weight_storage_of

__all__ = ["Client", "Session", "checksum", "from_wire", "to_wire", "weight_storage_of"]
