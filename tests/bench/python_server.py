#!/usr/bin/python3
"""The peer: what a team would write instead of lstmserve. A plain grpcio server (thread
pool, no batching) that runs the reference code (common_ops.py) behind lstmserve's own API
(CreateParameterSet and GetParameterSet for the LSTM template, Step, Run), so the same load
generator drives both. Prints "listening on HOST:PORT".

Usage: PYTHONPATH=build/client/python:client/python tests/bench/python_server.py \\
         --reference-dir ../shared/reference [--listen 127.0.0.1:0] [--threads 2] [--workers 10]
"""
import argparse
import sys
import threading
from concurrent import futures

import grpc
import torch

from lstmserve.v1 import inference_service_pb2 as inference_pb2
from lstmserve.v1 import inference_service_pb2_grpc as inference_grpc
from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve.v1 import parameter_service_pb2_grpc as parameter_grpc
from lstmserve_client import from_wire, to_wire


class Sets:
    def __init__(self):
        self.lock = threading.Lock()
        self.sets = {}  # id -> (template, weights)


class Parameters(parameter_grpc.ParameterServiceServicer):
    def __init__(self, sets, common_ops):
        self.sets, self.ops = sets, common_ops

    def CreateParameterSet(self, request, context):
        t = request.spec.lstm
        torch.manual_seed(request.spec.seed)
        w = [self.ops.create_weight(f"w_{l}", [(t.input_size if l == 0 else t.hidden_size) + t.hidden_size,
                                               4 * t.hidden_size]).detach() for l in range(t.num_layers)]
        with self.sets.lock:
            self.sets.sets[request.parameter_set_id] = (t, w)
        return parameter_pb2.CreateParameterSetResponse(parameter_set=self._meta(request.parameter_set_id, t))

    def GetParameterSet(self, request, context):
        with self.sets.lock:
            found = self.sets.sets.get(request.parameter_set_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"parameter set '{request.parameter_set_id}' not found")
        return parameter_pb2.GetParameterSetResponse(parameter_set=self._meta(request.parameter_set_id, found[0]))

    @staticmethod
    def _meta(set_id, t):
        meta = parameter_pb2.ParameterSet(id=set_id)
        meta.lstm.num_layers, meta.lstm.input_size, meta.lstm.hidden_size = t.num_layers, t.input_size, t.hidden_size
        return meta


class Inference(inference_grpc.InferenceServiceServicer):
    def __init__(self, sets, common_ops):
        self.sets, self.ops = sets, common_ops

    def _weights(self, set_id, context):
        with self.sets.lock:
            found = self.sets.sets.get(set_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"parameter set '{set_id}' not found")
        return found

    def _states(self, request, t, batch):
        c = [from_wire(s) for s in request.c] or [torch.zeros(batch, t.hidden_size)] * t.num_layers
        h = [from_wire(s) for s in request.h] or [torch.zeros(batch, t.hidden_size)] * t.num_layers
        return c, h

    def Step(self, request, context):
        t, w = self._weights(request.parameter_set_id, context)
        x = from_wire(request.x)
        c, h = self._states(request, t, x.shape[0])
        with torch.no_grad():
            c, h = self.ops.stack_lstm(x, c, h, w)
        response = inference_pb2.StepResponse()
        for s in c:
            to_wire(s, response.c.add())
        for s in h:
            to_wire(s, response.h.add())
        return response

    def Run(self, request, context):
        t, w = self._weights(request.parameter_set_id, context)
        inputs = from_wire(request.inputs)
        c, h = self._states(request, t, inputs.shape[1])
        outputs = []
        with torch.no_grad():
            for step in range(inputs.shape[0]):
                c, h = self.ops.stack_lstm(inputs[step], c, h, w)
                outputs.append(h[-1])
        response = inference_pb2.RunResponse()
        if not request.final_state_only:
            to_wire(torch.stack(outputs), response.outputs)
        for s in c:
            to_wire(s, response.c.add())
        for s in h:
            to_wire(s, response.h.add())
        return response


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=10, help="gRPC thread pool size")
    args = p.parse_args()
    sys.path.insert(0, args.reference_dir)
    import common_ops
    torch.set_num_threads(args.threads)
    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers), options=options)
    sets = Sets()
    parameter_grpc.add_ParameterServiceServicer_to_server(Parameters(sets, common_ops), server)
    inference_grpc.add_InferenceServiceServicer_to_server(Inference(sets, common_ops), server)
    port = server.add_insecure_port(args.listen)
    server.start()
    print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
