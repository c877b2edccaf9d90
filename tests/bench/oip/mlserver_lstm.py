"""The peer of tests/bench/oip_compare: the same stacked LSTM as an lstmserve set, served by
Seldon MLServer through its custom-runtime API (MLModel), with PyTorch.

The weights are made as lstmserve makes them, from the set's seed with the reference's
create_weight (bit-identical; see README "Reproducing a set in Python"), then loaded into
torch.nn.LSTM (no bias; the reference's gate order i, f, o, g reordered to nn.LSTM's
i, f, g, o). INPUT is [B, T, I] batch-first, so that MLServer's adaptive batching, which
stacks requests along the first dimension, merges them into one batch; a request of one step
of one row ([1, 1, I]) is the same bytes and the same work as lstmserve's INPUT [T=1, B=1, I].
OUTPUT is the last layer's h at every step, [B, T, H].
"""
import sys

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse

# perf_analyzer reads Triton's model configuration before it sends anything, which MLServer
# does not serve; the runtime answers it over REST through MLServer's custom-handler API
# (its gRPC side has no such extension, so perf_analyzer drives MLServer over HTTP).
MODEL_NAME = "s"


class LstmRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        sys.path.insert(0, extra["reference_dir"])
        import common_ops  # noqa: E402

        torch.set_num_threads(int(extra.get("threads", 2)))
        layers, inp, hid = int(extra["layers"]), int(extra["input_size"]), int(extra["hidden_size"])
        torch.manual_seed(int(extra["seed"]))
        weights = [common_ops.create_weight(f"w_{l}", [(inp if l == 0 else hid) + hid, 4 * hid]).detach()
                   for l in range(layers)]
        self.lstm = torch.nn.LSTM(inp, hid, layers, bias=False, batch_first=True).eval()

        def gates(m):  # [in, 4H] with columns i, f, o, g -> [4H, in] with rows i, f, g, o
            i, f, o, g = m.split(hid, dim=1)
            return torch.cat([i, f, g, o], dim=1).t().contiguous()

        with torch.no_grad():
            for l, w in enumerate(weights):
                width = inp if l == 0 else hid
                getattr(self.lstm, f"weight_ih_l{l}").copy_(gates(w[:width]))
                getattr(self.lstm, f"weight_hh_l{l}").copy_(gates(w[width:]))
        return True

    @custom_handler(rest_path=f"/v2/models/{MODEL_NAME}/config", rest_method="GET")
    async def config(self, request=None) -> dict:
        extra = self.settings.parameters.extra
        io = lambda name, width: {"name": name, "data_type": "TYPE_FP32", "dims": [1, 1, int(width)]}  # noqa: E731
        return {"name": self.name, "platform": "mlserver", "backend": "python", "max_batch_size": 0,
                "input": [io("INPUT", extra["input_size"])], "output": [io("OUTPUT", extra["hidden_size"])]}

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]))
        with torch.inference_mode():
            out, _ = self.lstm(x)
        output = NumpyCodec.encode_output("OUTPUT", out.numpy())
        # Triton's HTTP client (perf_analyzer) reads an output's parameters as its binary data
        # extension; MLServer's content_type parameter would break it, and says nothing new.
        output.parameters = None
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])
