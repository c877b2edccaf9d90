"""The Open Inference Protocol (KServe v2), over gRPC and HTTP, against the real server, spoken
by a client no one here wrote: Triton's `tritonclient` (grpc and http) from PyPI, in the environment deploy/install-deps.sh makes
(LSTMSERVE_OIP_PYTHON; over Debian's Python, so its torch 1.13 runs the reference code).
Sets are made with the CLI (LSTMSERVE_CLI_BINARY); results are compared with common_ops.py.
"""
import json
import os
import subprocess
import sys
import threading
import unittest
import urllib.error
import urllib.request

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from lstmserve_testing import PACKED_GEMMS, ServerProcess

sys.path.insert(0, os.environ["LSTMSERVE_REFERENCE_DIR"])
import common_ops  # noqa: E402

TOL = 1e-5


def reference_weights(seed, layers, inp, hid):
    torch.manual_seed(seed)
    return [common_ops.create_weight(f"w_{l}", [(inp if l == 0 else hid) + hid, 4 * hid]).detach()
            for l in range(layers)]


def reference_run(w, x, c0, h0):
    """OUTPUT [T, B, H], CN and HN [L, B, H] by common_ops.stack_lstm, step by step."""
    c, h, out = list(c0), list(h0), []
    with torch.no_grad():
        for t in range(x.shape[0]):
            c, h = common_ops.stack_lstm(x[t], c, h, w)
            out.append(h[-1])
    return torch.stack(out).numpy(), torch.stack(c).numpy(), torch.stack(h).numpy()


def cli(server, *args):
    subprocess.run([os.environ["LSTMSERVE_CLI_BINARY"], f"--target={server.target}", *args], check=True,
                   stdout=subprocess.DEVNULL)


def tensor(name, array, datatype="FP32"):
    """An input; for BF16, tritonclient takes float32 values and sends their bfloat16 bytes."""
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def scrape(server):
    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as reply:
        return reply.read().decode()


def metric(text, name, **labels):
    """The value of one sample of the exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            got = key[len(name):].strip("{}")
            if ",".join(sorted(got.split(","))) == want or (not labels and got == ""):
                return float(value)
    return 0.0


L, I, H, SEED = 2, 6, 8, 7


class OpenInferenceGrpcTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess()
        cli(cls.server, "create", "--id=oip", f"--layers={L}", f"--input_size={I}", f"--hidden_size={H}",
            f"--seed={SEED}")
        cli(cls.server, "create", "--id=oip-int8", "--layers=1", "--input_size=4", "--hidden_size=4", "--seed=3",
            "--weight_storage=int8")
        cls.w = reference_weights(SEED, L, I, H)
        cls.client = grpcclient.InferenceServerClient(cls.server.target)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.server.stop() == 0, cls.server.log()

    def assertRefused(self, code, fragment, fn):
        with self.assertRaises(InferenceServerException) as caught:
            fn()
        self.assertEqual(caught.exception.status(), f"StatusCode.{code}", caught.exception.message())
        self.assertIn(fragment, caught.exception.message())

    def test_health_and_metadata(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("oip"))
        self.assertFalse(self.client.is_model_ready("no-such-set"))
        server = self.client.get_server_metadata(as_json=True)
        self.assertEqual(server["name"], "lstmserve")
        self.assertIn("sequence", server["extensions"])
        self.assertIn("sequence(string_id)", server["extensions"])
        meta = self.client.get_model_metadata("oip", as_json=True)
        self.assertEqual(meta["versions"], ["1"])
        shapes = {t["name"]: (t["datatype"], [int(s) for s in t["shape"]]) for t in meta["inputs"] + meta["outputs"]}
        self.assertEqual(shapes, {"INPUT": ("FP32", [-1, -1, I]), "C0": ("FP32", [L, -1, H]),
                                  "H0": ("FP32", [L, -1, H]), "OUTPUT": ("FP32", [-1, -1, H]),
                                  "CN": ("FP32", [L, -1, H]), "HN": ("FP32", [L, -1, H])})
        config = self.client.get_model_config("oip").config
        self.assertTrue(config.HasField("sequence_batching"))
        self.assertEqual(config.max_batch_size, 0)
        self.assertEqual([i.optional for i in config.input], [False, True, True])

    def test_infer_matches_the_reference(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(5, 3, I, generator=g)
        c0 = torch.randn(L, 3, H, generator=g)
        h0 = torch.randn(L, 3, H, generator=g).tanh()
        result = self.client.infer("oip", [tensor("INPUT", x.numpy()), tensor("C0", c0.numpy()),
                                           tensor("H0", h0.numpy())], request_id="r-1")
        out, cn, hn = reference_run(self.w, x, c0.unbind(0), h0.unbind(0))
        self.assertEqual(result.get_response().id, "r-1")
        self.assertEqual(result.as_numpy("OUTPUT").shape, (5, 3, H))
        self.assertLessEqual(np.abs(result.as_numpy("OUTPUT") - out).max(), TOL)
        self.assertLessEqual(np.abs(result.as_numpy("CN") - cn).max(), TOL)
        self.assertLessEqual(np.abs(result.as_numpy("HN") - hn).max(), TOL)
        # Without C0/H0 the state starts at zeros.
        zero = self.client.infer("oip", [tensor("INPUT", x.numpy())])
        out0, _, _ = reference_run(self.w, x, torch.zeros(L, 3, H).unbind(0), torch.zeros(L, 3, H).unbind(0))
        self.assertLessEqual(np.abs(zero.as_numpy("OUTPUT") - out0).max(), TOL)

    def test_typed_contents_equal_raw(self):
        x = np.random.default_rng(2).standard_normal((2, 1, I)).astype(np.float32)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self.client._channel)
        request = service_pb2.ModelInferRequest(model_name="oip")
        typed = request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
        typed.contents.fp32_contents.extend(x.ravel().tolist())
        reply = stub.ModelInfer(request)
        names = [o.name for o in reply.outputs]
        typed_out = np.frombuffer(reply.raw_output_contents[names.index("OUTPUT")], np.float32).reshape(2, 1, H)
        raw = self.client.infer("oip", [tensor("INPUT", x)]).as_numpy("OUTPUT")
        self.assertTrue(np.array_equal(typed_out, raw))

    def test_outputs_selects_what_is_returned(self):
        x = np.ones((1, 2, I), np.float32)
        result = self.client.infer("oip", [tensor("INPUT", x)], outputs=[grpcclient.InferRequestedOutput("HN")])
        self.assertEqual([o.name for o in result.get_response().outputs], ["HN"])
        self.assertEqual(result.as_numpy("HN").shape, (L, 2, H))

    def test_int8_weight_storage_set_takes_fp32(self):
        x = np.random.default_rng(3).standard_normal((3, 2, 4)).astype(np.float32)
        out = self.client.infer("oip-int8", [tensor("INPUT", x)]).as_numpy("OUTPUT")
        torch.manual_seed(3)
        w = [common_ops.create_weight("w_0", [8, 16]).detach()]
        ref, _, _ = reference_run(w, torch.from_numpy(x), [torch.zeros(2, 4)], [torch.zeros(2, 4)])
        self.assertLessEqual(np.abs(out - ref).max(), 2e-2)  # int8 weights' bound (README)
        self.assertRefused("INVALID_ARGUMENT", "takes FP32",
                           lambda: self.client.infer("oip-int8", [tensor("INPUT", x.astype(np.float16), "FP16")]))

    def run_sequence(self, sequence_id, xs, c0=None, h0=None):
        outs = []
        for k, xk in enumerate(xs):
            inputs = [tensor("INPUT", xk)]
            if k == 0 and c0 is not None:
                inputs += [tensor("C0", c0), tensor("H0", h0)]
            result = self.client.infer("oip", inputs, sequence_id=sequence_id, sequence_start=(k == 0),
                                       sequence_end=(k == len(xs) - 1))
            outs.append(result.as_numpy("OUTPUT"))
        return np.concatenate(outs), result

    def test_a_sequence_equals_one_run(self):
        g = torch.Generator().manual_seed(4)
        x = torch.randn(6, 2, I, generator=g)
        c0 = torch.randn(L, 2, H, generator=g)
        h0 = torch.randn(L, 2, H, generator=g).tanh()
        out, cn, hn = reference_run(self.w, x, c0.unbind(0), h0.unbind(0))
        steps = [x[0:2].numpy(), x[2:3].numpy(), x[3:6].numpy()]  # requests of 2, 1 and 3 steps
        for sequence_id in (17, "a-string-id"):
            got, last = self.run_sequence(sequence_id, steps, c0.numpy(), h0.numpy())
            self.assertLessEqual(np.abs(got - out).max(), TOL, sequence_id)
            self.assertLessEqual(np.abs(last.as_numpy("CN") - cn).max(), TOL)
            self.assertLessEqual(np.abs(last.as_numpy("HN") - hn).max(), TOL)
            # Ended: the next request without sequence_start is refused, and says how to start.
            self.assertRefused("FAILED_PRECONDITION", "ended after 6 steps (sequence_end); start it again with "
                               "sequence_start=true",
                               lambda: self.client.infer("oip", [tensor("INPUT", steps[0])], sequence_id=sequence_id))

    def test_sequences_with_the_same_text_as_uint64_and_string_are_apart(self):
        a = np.full((1, 1, I), 0.5, np.float32)
        b = np.full((1, 1, I), -0.5, np.float32)
        self.client.infer("oip", [tensor("INPUT", a)], sequence_id=99, sequence_start=True)
        self.client.infer("oip", [tensor("INPUT", b)], sequence_id="99", sequence_start=True)
        numeric = self.client.infer("oip", [tensor("INPUT", a)], sequence_id=99, sequence_end=True)
        text = self.client.infer("oip", [tensor("INPUT", a)], sequence_id="99", sequence_end=True)
        solo, _ = self.run_sequence(5, [a, a])
        self.assertTrue(np.array_equal(numeric.as_numpy("OUTPUT"), solo[1:]))
        self.assertFalse(np.array_equal(text.as_numpy("OUTPUT"), solo[1:]))

    def test_a_failed_request_leaves_the_sequence_where_it_was(self):
        a = np.full((1, 1, I), 0.25, np.float32)
        self.client.infer("oip", [tensor("INPUT", a)], sequence_id=31, sequence_start=True)
        self.assertRefused("INVALID_ARGUMENT", "must be [steps >= 1, batch >= 1, 6]",
                           lambda: self.client.infer("oip", [tensor("INPUT", np.ones((1, 1, I + 1), np.float32))],
                                                     sequence_id=31))
        last = self.client.infer("oip", [tensor("INPUT", a)], sequence_id=31)
        solo, _ = self.run_sequence(32, [a, a])
        self.assertTrue(np.array_equal(last.as_numpy("OUTPUT"), solo[1:]))
        # C0/H0 on a later request replace the state: zeros make it a first step again.
        zeros = np.zeros((L, 1, H), np.float32)
        again = self.client.infer("oip", [tensor("INPUT", a), tensor("C0", zeros), tensor("H0", zeros)],
                                  sequence_id=31, sequence_end=True)
        self.assertTrue(np.array_equal(again.as_numpy("OUTPUT"), solo[:1]))

    def test_stream_infer_answers_in_order_and_survives_an_error(self):
        results, done = [], threading.Event()

        def callback(result, error):
            results.append((result, error))
            if len(results) == 4:
                done.set()

        xs = [np.random.default_rng(k).standard_normal((1, 1, I)).astype(np.float32) for k in range(3)]
        self.client.start_stream(callback=callback)
        try:
            self.client.async_stream_infer("oip", [tensor("INPUT", xs[0])], sequence_id=77, sequence_start=True)
            self.client.async_stream_infer("oip", [tensor("NOPE", xs[1])], sequence_id=77)
            self.client.async_stream_infer("oip", [tensor("INPUT", xs[1])], sequence_id=77)
            self.client.async_stream_infer("oip", [tensor("INPUT", xs[2])], sequence_id=77, sequence_end=True)
            self.assertTrue(done.wait(30))
        finally:
            self.client.stop_stream()
        self.assertIsNotNone(results[1][1])
        self.assertIn("unexpected input 'NOPE'", results[1][1].message())
        got = np.concatenate([results[k][0].as_numpy("OUTPUT") for k in (0, 2, 3)])
        solo, _ = self.run_sequence(78, xs)
        self.assertTrue(np.array_equal(got, solo))

    def test_bad_requests_get_clear_errors(self):
        x = np.ones((1, 1, I), np.float32)
        self.assertRefused("NOT_FOUND", "no-such-set", lambda: self.client.infer("no-such-set", [tensor("INPUT", x)]))
        self.assertRefused("NOT_FOUND", "only version is 1",
                           lambda: self.client.infer("oip", [tensor("INPUT", x)], model_version="2"))
        self.assertRefused("INVALID_ARGUMENT", "unexpected input 'X'", lambda: self.client.infer("oip", [tensor("X", x)]))
        self.assertRefused("INVALID_ARGUMENT", "INPUT [T, B, 6] is missing",
                           lambda: self.client.infer("oip", [tensor("C0", np.zeros((L, 1, H), np.float32)),
                                                             tensor("H0", np.zeros((L, 1, H), np.float32))]))
        self.assertRefused("INVALID_ARGUMENT", "both C0 and H0",
                           lambda: self.client.infer("oip", [tensor("INPUT", x), tensor("C0", np.zeros((L, 1, H), np.float32))]))
        self.assertRefused("INVALID_ARGUMENT", "unexpected output 'Y'",
                           lambda: self.client.infer("oip", [tensor("INPUT", x)],
                                                     outputs=[grpcclient.InferRequestedOutput("Y")]))
        self.assertRefused("INVALID_ARGUMENT", "NaN",
                           lambda: self.client.infer("oip", [tensor("INPUT", np.full((1, 1, I), np.nan, np.float32))]))
        # What tritonclient never sends: bytes that do not match the shape, flags without an id.
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self.client._channel)
        for change, fragment in [
                (lambda r: r.raw_input_contents.append(b"\0" * 7), "INPUT.data has 7 bytes"),
                (lambda r: r.raw_input_contents.extend([b"\0" * 4 * I] * 2), "2 entries for 1 inputs"),
                (lambda r: None, "has no data"),
                (lambda r: (r.raw_input_contents.append(b"\0" * 4 * I), r.parameters["sequence_start"]),
                 "sequence_start must be a bool parameter"),
                (lambda r: (r.raw_input_contents.append(b"\0" * 4 * I), r.parameters["sequence_start"].MergeFrom(
                    service_pb2.InferParameter(bool_param=True))), "need a sequence_id"),
                (lambda r: (r.raw_input_contents.append(b"\0" * 4 * I), r.parameters["sequence_id"].MergeFrom(
                    service_pb2.InferParameter(double_param=1.5))), "sequence_id must be an int64, uint64 or string"),
                (lambda r: (r.raw_input_contents.append(b"\0" * 4 * I), r.parameters["sequence_id"].MergeFrom(
                    service_pb2.InferParameter(int64_param=-3))), "sequence_id is -3"),
                # Raw and typed contents together, and typed contents in a field the server never reads.
                (lambda r: (r.raw_input_contents.append(b"\0" * 4 * I),
                            r.inputs[0].contents.fp32_contents.extend([0.0] * I)),
                 "has both raw_input_contents and typed contents"),
                (lambda r: r.inputs[0].contents.int_contents.extend([0] * I), "sends contents.int_contents"),
                (lambda r: r.inputs[0].contents.fp64_contents.extend([0.0] * I), "sends contents.fp64_contents")]:
            request = service_pb2.ModelInferRequest(model_name="oip")
            request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1, I])
            change(request)
            with self.assertRaises(Exception) as caught:
                stub.ModelInfer(request)
            self.assertEqual(caught.exception.code().name, "INVALID_ARGUMENT", fragment)
            self.assertIn(fragment, caught.exception.details())

    def test_calls_are_counted_and_steps_batched_in_the_metrics(self):
        before = scrape(self.server)
        x = np.ones((1, 1, I), np.float32)
        threads = [threading.Thread(target=self.run_sequence, args=(1000 + k, [x] * 5)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        after = scrape(self.server)
        key = dict(service="inference.GRPCInferenceService", method="ModelInfer", code="OK")
        self.assertGreaterEqual(metric(after, "lstmserve_requests_total", **key) -
                                metric(before, "lstmserve_requests_total", **key), 40)
        self.assertGreaterEqual(metric(after, "lstmserve_session_steps_total") -
                                metric(before, "lstmserve_session_steps_total"), 40)


def http_input(name, array, binary=True):
    t = httpclient.InferInput(name, list(array.shape), "FP32")
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def post(server, path, body, headers=None):
    """(HTTP status, parsed JSON) of a POST with a raw body."""
    request = urllib.request.Request(f"http://{server.http}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class OpenInferenceHttpTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess()
        cli(cls.server, "create", "--id=oip", f"--layers={L}", f"--input_size={I}", f"--hidden_size={H}",
            f"--seed={SEED}")
        cls.w = reference_weights(SEED, L, I, H)
        cls.client = httpclient.InferenceServerClient(cls.server.http)
        cls.grpc = grpcclient.InferenceServerClient(cls.server.target)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.grpc.close()
        assert cls.server.stop() == 0, cls.server.log()

    def test_health_metadata_and_config(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("oip"))
        self.assertFalse(self.client.is_model_ready("no-such-set"))
        self.assertIn("sequence", self.client.get_server_metadata()["extensions"])
        meta = self.client.get_model_metadata("oip")
        self.assertEqual(meta, self.grpc.get_model_metadata("oip", as_json=True) | {
            "inputs": meta["inputs"], "outputs": meta["outputs"]})
        self.assertEqual([(t["name"], t["shape"]) for t in meta["inputs"]],
                         [("INPUT", [-1, -1, I]), ("C0", [L, -1, H]), ("H0", [L, -1, H])])
        config = self.client.get_model_config("oip")
        self.assertIn("sequence_batching", config)
        self.assertEqual(config["input"][1]["optional"], True)
        with self.assertRaises(InferenceServerException) as caught:
            self.client.get_model_metadata("no-such-set")
        self.assertIn("no-such-set", caught.exception.message())

    def test_binary_and_json_infer_match_the_reference_and_grpc(self):
        g = torch.Generator().manual_seed(11)
        x = torch.randn(4, 2, I, generator=g)
        c0 = torch.randn(L, 2, H, generator=g)
        h0 = torch.randn(L, 2, H, generator=g).tanh()
        out, cn, hn = reference_run(self.w, x, c0.unbind(0), h0.unbind(0))
        over_grpc = self.grpc.infer("oip", [tensor("INPUT", x.numpy()), tensor("C0", c0.numpy()),
                                            tensor("H0", h0.numpy())])
        for binary in (True, False):
            result = self.client.infer(
                "oip", [http_input("INPUT", x.numpy(), binary), http_input("C0", c0.numpy(), binary),
                        http_input("H0", h0.numpy(), binary)],
                outputs=[httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT", "CN", "HN")])
            self.assertLessEqual(np.abs(result.as_numpy("OUTPUT") - out).max(), TOL, binary)
            self.assertLessEqual(np.abs(result.as_numpy("CN") - cn).max(), TOL)
            self.assertLessEqual(np.abs(result.as_numpy("HN") - hn).max(), TOL)
            # The same bits as over gRPC (JSON numbers carry every float32 exactly).
            for name in ("OUTPUT", "CN", "HN"):
                self.assertTrue(np.array_equal(result.as_numpy(name), over_grpc.as_numpy(name)), (binary, name))

    def test_a_sequence_over_http_equals_one_run(self):
        x = np.random.default_rng(5).standard_normal((3, 1, I)).astype(np.float32)
        outs = []
        for k in range(3):
            r = self.client.infer("oip", [http_input("INPUT", x[k:k + 1])], sequence_id="http-seq",
                                  sequence_start=(k == 0), sequence_end=(k == 2))
            outs.append(r.as_numpy("OUTPUT"))
        whole = self.client.infer("oip", [http_input("INPUT", x)]).as_numpy("OUTPUT")
        self.assertTrue(np.array_equal(np.concatenate(outs), whole))

    def test_nested_json_data_and_clear_errors(self):
        x = np.random.default_rng(6).standard_normal((1, 2, I)).astype(np.float32)
        body = {"id": "n-1", "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 2, I], "data": x.tolist()}],
                "outputs": [{"name": "HN"}]}
        status, reply = post(self.server, "/v2/models/oip/infer", json.dumps(body).encode())
        self.assertEqual(status, 200, reply)
        self.assertEqual(reply["id"], "n-1")
        self.assertEqual([o["name"] for o in reply["outputs"]], ["HN"])
        hn = np.array(reply["outputs"][0]["data"], np.float32).reshape(L, 2, H)
        expected = self.client.infer("oip", [http_input("INPUT", x)]).as_numpy("HN")
        self.assertTrue(np.array_equal(hn, expected))
        for path, payload, code, fragment in [
                ("/v2/models/oip/infer", b"{not json", 400, "not valid JSON: parse error at line 1, column 3: syntax error"),
                ("/v2/models/oip/infer", b'{"inputs": [1e400]}', 400, "number overflow parsing '1e400'"),
                ("/v2/models/oip/infer", b"[]", 400, "not a JSON object"),
                ("/v2/models/oip/infer", json.dumps({**body, "parameters": {"binary_data_output": "true"}}).encode(),
                 400, "binary_data_output must be true or false"),
                ("/v2/models/oip/infer", json.dumps({**body, "parameters": {"timeout": -1}}).encode(),
                 400, "timeout must be a whole number of microseconds"),
                ("/v2/models/oip/infer", json.dumps({**body, "parameters": {"sequence_id": "s" * 257,
                                                                            "sequence_start": True}}).encode(),
                 400, "at most 256"),
                ("/v2/models/oip/infer", json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                                                 "shape": [1, 2, I], "data": [x.tolist()]}]}).encode(),
                 400, "nested 4 lists deep but its shape has 3 dimensions"),
                ("/v2/models/oip/infer", json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                                                 "shape": [1, 1, I], "data": [1.0, [2.0]]}]}).encode(),
                 400, "mixes numbers and lists"),
                ("/v2/models/oip/infer", json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                                                 "shape": [1, 1, I], "data": [0.0] * I,
                                                                 "parameters": {"binary_data_size": 0}}]}).encode(),
                 400, "has both data and parameters.binary_data_size"),
                ("/v2/models/oip/infer", b'{"inputs": 3}', 400, "inputs must be a list"),
                ("/v2/models/oip/infer", json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                                                 "shape": [1, 1, I], "data": [1.0]}]}).encode(),
                 400, "INPUT.data has 4 bytes"),
                ("/v2/models/oip/infer", json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32",
                                                                 "shape": [1, 1, I], "data": ["a"] * I}]}).encode(),
                 400, "must hold numbers"),
                ("/v2/models/no-such-set/infer", json.dumps(body).encode(), 404, "no-such-set"),
                ("/v2/models/oip/versions/2/infer", json.dumps(body).encode(), 404, "only version is 1"),
                ("/v2/nothing", b"{}", 404, "no such endpoint")]:
            with self.subTest(path=path, payload=payload[:40]):
                status, reply = post(self.server, path, payload)
                self.assertEqual(status, code, reply)
                self.assertIn(fragment, reply["error"])
        # Binary data that the JSON does not account for.
        header = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, I],
                                         "parameters": {"binary_data_size": 4 * I}}]}).encode()
        status, reply = post(self.server, "/v2/models/oip/infer", header + b"\0" * (4 * I + 3),
                             {"Inference-Header-Content-Length": str(len(header))})
        self.assertEqual(status, 400)
        self.assertIn("3 bytes of binary data", reply["error"])

    def test_a_timeout_that_has_passed_is_never_computed(self):
        # Triton's timeout parameter, in microseconds: 1 us passes before the batcher takes the
        # request; a generous one does not.
        x = np.zeros((1, 1, I), np.float32)
        body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, I], "data": x.flatten().tolist()}]}
        expired = 0
        for _ in range(20):
            status, reply = post(self.server, "/v2/models/oip/infer",
                                 json.dumps({**body, "parameters": {"timeout": 1}}).encode())
            self.assertIn(status, (200, 504), reply)
            expired += status == 504
            if status == 504:
                self.assertIn("deadline", reply["error"])
        self.assertGreater(expired, 0)
        status, reply = post(self.server, "/v2/models/oip/infer",
                             json.dumps({**body, "parameters": {"timeout": 60_000_000}}).encode())
        self.assertEqual(status, 200, reply)

    def test_http_calls_are_counted(self):
        self.client.is_server_ready()
        self.client.infer("oip", [http_input("INPUT", np.ones((1, 1, I), np.float32))])
        text = scrape(self.server)
        self.assertGreaterEqual(metric(text, "lstmserve_requests_total", service="inference.http",
                                       method="ModelInfer", code="OK"), 1)
        self.assertGreaterEqual(metric(text, "lstmserve_requests_total", service="inference.http",
                                       method="ServerReady", code="OK"), 1)


class StatisticsAndRepositoryTest(unittest.TestCase):
    """Triton's statistics and model-repository extensions, through tritonclient's own calls
    over gRPC and HTTP. The memory budget holds two of the three sets (512 bytes each, and
    512 more once a call has packed their weights where the packed GEMMs run)."""

    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(*(("--max_set_bytes=1200", "--max_total_set_bytes=2400") if PACKED_GEMMS else
                                     ("--max_set_bytes=600", "--max_total_set_bytes=1200")))
        for i, name in enumerate(["a", "b", "c"]):
            cli(cls.server, "create", f"--id={name}", "--layers=1", "--input_size=4", "--hidden_size=4",
                f"--seed={i + 1}")
        cls.grpc = grpcclient.InferenceServerClient(cls.server.target)
        cls.http = httpclient.InferenceServerClient(cls.server.http)
        cls.x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)

    @classmethod
    def tearDownClass(cls):
        cls.grpc.close()
        cls.http.close()
        assert cls.server.stop() == 0, cls.server.log()

    def infer(self, model):
        return self.grpc.infer(model, [tensor("INPUT", self.x)]).as_numpy("OUTPUT")

    def test_statistics_count_requests_and_split_their_time(self):
        before = self.grpc.get_inference_statistics("b").model_stats[0].inference_stats.success.count
        for _ in range(3):
            self.infer("b")
        with self.assertRaises(InferenceServerException):
            self.grpc.infer("b", [tensor("INPUT", np.zeros((2, 3, 5), np.float32))])
        stats = self.grpc.get_inference_statistics("b").model_stats
        self.assertEqual([(s.name, s.version) for s in stats], [("b", "1")])
        inference = stats[0].inference_stats
        self.assertEqual(inference.success.count, before + 3)
        self.assertGreaterEqual(inference.fail.count, 1)
        for phase in (inference.queue, inference.compute_input, inference.compute_infer, inference.compute_output):
            self.assertEqual(phase.count, before + 3)
        self.assertGreater(inference.compute_infer.ns, 0)
        self.assertLessEqual(inference.queue.ns + inference.compute_infer.ns, inference.success.ns)
        self.assertGreaterEqual(stats[0].inference_count, 3 * 3)  # rows: B = 3
        self.assertIn(3, [b.batch_size for b in stats[0].batch_stats])
        self.assertGreater(stats[0].last_inference, 0)
        # HTTP says the same, per model and for all of them.
        http = self.http.get_inference_statistics("b")["model_stats"][0]
        self.assertEqual(http["inference_stats"]["success"]["count"], inference.success.count)
        self.assertEqual(http["inference_stats"]["compute_infer"]["ns"], inference.compute_infer.ns)
        self.assertEqual(self.http.get_inference_statistics("b", "1")["model_stats"][0]["name"], "b")
        every = [m["name"] for m in self.http.get_inference_statistics()["model_stats"]]
        self.assertEqual(every, ["a", "b", "c"])
        self.assertEqual([m.name for m in self.grpc.get_inference_statistics().model_stats], ["a", "b", "c"])
        with self.assertRaises(InferenceServerException) as caught:
            self.grpc.get_inference_statistics("no-such-set")
        self.assertEqual(caught.exception.status(), "StatusCode.NOT_FOUND")
        with self.assertRaises(InferenceServerException) as caught:
            self.http.get_inference_statistics("b", "2")
        self.assertIn("has no version '2'", caught.exception.message())

    def test_unload_keeps_the_file_and_load_brings_the_same_set_back(self):
        expected = self.infer("a")
        unloads = metric(scrape(self.server), "lstmserve_set_unloads_total", reason="request")
        self.grpc.unload_model("a")
        self.assertFalse(self.grpc.is_model_ready("a"))
        self.assertFalse(self.http.is_model_ready("a"))
        with self.assertRaises(InferenceServerException) as caught:
            self.infer("a")
        self.assertEqual(caught.exception.status(), "StatusCode.FAILED_PRECONDITION")
        self.assertIn("is unloaded; load it first", caught.exception.message())
        index = {m.name: (m.state, m.reason) for m in self.grpc.get_model_repository_index().models}
        self.assertEqual(index["a"], ("UNAVAILABLE", "unloaded"))
        http_index = {m["name"]: (m["state"], m["reason"]) for m in self.http.get_model_repository_index()}
        self.assertEqual(http_index["a"], ("UNAVAILABLE", "unloaded"))
        self.assertEqual(metric(scrape(self.server), "lstmserve_set_unloads_total", reason="request"), unloads + 1)
        self.http.load_model("a")
        self.assertTrue(self.grpc.is_model_ready("a"))
        np.testing.assert_array_equal(self.infer("a"), expected)
        # Over HTTP too, both ways; and what the calls refuse.
        self.http.unload_model("a", unload_dependents=True)
        self.assertFalse(self.http.is_model_ready("a"))
        self.grpc.load_model("a")
        np.testing.assert_array_equal(self.infer("a"), expected)
        with self.assertRaises(InferenceServerException) as caught:
            self.grpc.load_model("a", config='{"max_batch_size": 8}')
        self.assertEqual(caught.exception.status(), "StatusCode.INVALID_ARGUMENT")
        for call in (self.grpc.load_model, self.grpc.unload_model):
            with self.assertRaises(InferenceServerException) as caught:
                call("no-such-set")
            self.assertEqual(caught.exception.status(), "StatusCode.NOT_FOUND")
        with self.assertRaises(InferenceServerException) as caught:
            self.http.unload_model("no-such-set")
        self.assertIn("no-such-set", caught.exception.message())

    def test_past_the_memory_budget_the_least_recently_used_set_unloads(self):
        for name in ("a", "b"):
            self.infer(name)
        memory = metric(scrape(self.server), "lstmserve_set_unloads_total", reason="memory")
        expected_c = self.infer("c")  # does not fit beside a and b: a, used first, goes
        index = {m.name: m.state for m in self.grpc.get_model_repository_index().models}
        self.assertEqual(index, {"a": "UNAVAILABLE", "b": "READY", "c": "READY"})
        listed = [m["name"] for m in self.http.get_model_repository_index()]
        self.assertEqual(sorted(listed), ["a", "b", "c"])
        self.assertEqual(metric(scrape(self.server), "lstmserve_set_unloads_total", reason="memory"), memory + 1)
        # a loads on its next use (b goes), with the same bits as before.
        self.assertTrue(self.grpc.is_model_ready("a"))
        self.infer("a")
        np.testing.assert_array_equal(self.infer("c"), expected_c)
        self.assertGreaterEqual(metric(scrape(self.server), "lstmserve_set_unloads_total", reason="memory"),
                                memory + 2)


class OpenInferenceAuthTest(unittest.TestCase):
    def test_tokens_guard_everything_but_the_probes(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="lstmserve-oip-auth-")
        token = "t" * 32
        with open(os.path.join(d, "tokens"), "w") as f:
            f.write(token + "\n")
        with ServerProcess(f"--auth_tokens_file={d}/tokens") as server:
            client = grpcclient.InferenceServerClient(server.target)
            self.assertTrue(client.is_server_live())
            self.assertTrue(client.is_server_ready())
            with self.assertRaises(InferenceServerException) as caught:
                client.get_server_metadata()
            self.assertEqual(caught.exception.status(), "StatusCode.UNAUTHENTICATED")
            self.assertEqual(client.get_server_metadata(headers={"authorization": f"Bearer {token}"}).name,
                             "lstmserve")
            client.close()
            http = httpclient.InferenceServerClient(server.http)
            self.assertTrue(http.is_server_live())
            self.assertTrue(http.is_server_ready())
            with self.assertRaises(InferenceServerException) as caught:
                http.get_server_metadata()
            self.assertIn("bearer token", caught.exception.message())
            self.assertEqual(http.get_server_metadata(headers={"Authorization": f"Bearer {token}"})["name"],
                             "lstmserve")
            http.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
