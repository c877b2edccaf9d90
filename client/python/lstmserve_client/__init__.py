"""Python client of lstmserve: parameter sets and stacked-LSTM inference over gRPC.

Tensors go in as torch.Tensor or numpy.ndarray and come back as torch.Tensor (float32,
float16 or bfloat16). Errors raise grpc.RpcError with the server's status code and message.

    from lstmserve_client import Client
    client = Client("localhost:50051")
    meta = client.create_lstm(num_layers=2, input_size=64, hidden_size=64, seed=42, id="enas")
    weights = client.export("enas")                 # {"w_0": tensor, "w_1": tensor}
    outputs, c, h = client.run("enas", torch.randn(10, 1, 64))

The generated stubs (lstmserve.v1.*_pb2) are made at build time: build the project, then put
build/client/python on PYTHONPATH.
"""
from .client import Client, Session, checksum, from_wire, to_wire, weight_storage_of

__all__ = ["Client", "Session", "checksum", "from_wire", "to_wire", "weight_storage_of"]
