"""What a hostile or careless client can send, against the real server: bytes that are not a
message (unary and streams), hostile strings that must not reach the log raw, numbers out of
range, a read-only store, and idle connections to the metrics port. Each case asserts the
status code and that the message says what happened."""
import os
import socket
import threading
import time
import unittest
import urllib.request

import grpc
import torch

from lstmserve.v1 import inference_service_pb2 as inference_pb2
from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve_client import checksum, to_wire
from lstmserve_testing import ServerProcess, ServerTestCase

# Bytes that are not any lstmserve.v1 message: a truncated varint, a length past the end, a
# group end with no start, wire type 7, and a nested field whose length runs off the end.
NOT_A_MESSAGE = [b"\x08", b"\x0a\x05ab", b"\x0c", b"\x0f\x00", b"\x12\xff\xff\xff\xff\x0f"]

UNARY = {
    "lstmserve.v1.ParameterService": ["CreateParameterSet", "GetParameterSet", "ListParameterSets",
                                      "DeleteParameterSet", "AnalyzeParameterSet"],
    "lstmserve.v1.InferenceService": ["Step", "Run"],
}


def raw_unary(channel, service, method):
    return channel.unary_unary(f"/{service}/{method}", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)


def raw_stream(channel, service, method):
    return channel.stream_stream(f"/{service}/{method}", request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)


def zeros_spec(name, shape=(2,)):
    spec = parameter_pb2.ParameterSetSpec()
    t = spec.tensor_list.tensors.add()
    t.name = name
    t.shape[:] = list(shape)
    t.initializer.zeros.SetInParent()
    return spec


class UnparseableMessagesTest(ServerTestCase):
    @classmethod
    def prepare(cls):
        cls.channel = grpc.insecure_channel(cls.server.target)
        cls.client.create_lstm(1, 3, 4, seed=1, id="wire-lstm")

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        super().tearDownClass()

    def test_every_unary_method_answers_invalid_argument_naming_the_message(self):
        for service, methods in UNARY.items():
            for method in methods:
                for payload in NOT_A_MESSAGE:
                    with self.subTest(method=method, payload=payload):
                        with self.assertRaises(grpc.RpcError) as caught:
                            raw_unary(self.channel, service, method)(payload, timeout=10)
                        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                        self.assertIn(f"is not a valid lstmserve.v1.{method}Request", caught.exception.details())

    def test_an_empty_request_is_a_valid_message(self):
        # Zero bytes parse as the message with every field unset: List answers, Get says what is missing.
        raw_unary(self.channel, "lstmserve.v1.ParameterService", "ListParameterSets")(b"", timeout=10)
        with self.assertRaises(grpc.RpcError) as caught:
            raw_unary(self.channel, "lstmserve.v1.ParameterService", "GetParameterSet")(b"", timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("parameter_set_id", caught.exception.details())

    def test_export_with_an_unparseable_request(self):
        call = self.channel.unary_stream("/lstmserve.v1.ParameterService/ExportParameterSet",
                                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as caught:
            list(call(b"\x0a\x05ab", timeout=10))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("ExportParameterSetRequest", caught.exception.details())

    def session_messages(self, *later):
        start = inference_pb2.SessionRequest()
        start.start.parameter_set_id = "wire-lstm"
        start.start.batch_size = 1
        step = inference_pb2.SessionRequest()
        to_wire(torch.ones(1, 3), step.x)
        return [start.SerializeToString(), step.SerializeToString(), *later]

    def test_a_session_message_that_does_not_parse_ends_the_stream_with_an_error(self):
        step = self.session_messages()[1]
        responses = []
        with self.assertRaises(grpc.RpcError) as caught:
            for r in raw_stream(self.channel, "lstmserve.v1.InferenceService", "Session")(
                    iter(self.session_messages(b"\x0a\x05ab", step, step)), timeout=10):
                responses.append(r)
        self.assertEqual(len(responses), 1)  # the good step was answered, then the stream failed
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("message 3 of the session", caught.exception.details())
        self.assertIn("after 1 steps", caught.exception.details())

    def test_garbage_as_the_first_session_message_is_an_error(self):
        with self.assertRaises(grpc.RpcError) as caught:
            list(raw_stream(self.channel, "lstmserve.v1.InferenceService", "Session")(
                iter([b"\x0f\x00"]), timeout=10))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("message 1 of the session", caught.exception.details())

    def test_a_good_session_still_ends_ok(self):
        replies = list(raw_stream(self.channel, "lstmserve.v1.InferenceService", "Session")(
            iter(self.session_messages(self.session_messages()[1])), timeout=10))
        self.assertEqual(len(replies), 2)

    def test_an_import_chunk_that_does_not_parse_says_so_and_stores_nothing(self):
        header = parameter_pb2.ImportParameterSetRequest()
        header.header.parameter_set_id = "wire-import"
        t = header.header.tensors.add()
        t.name, t.dtype = "w", 1
        t.shape[:] = [64]
        chunk = parameter_pb2.ImportParameterSetRequest()
        chunk.chunk.tensor_index, chunk.chunk.offset, chunk.chunk.data = 0, 0, bytes(128)
        rest = parameter_pb2.ImportParameterSetRequest()
        rest.chunk.tensor_index, rest.chunk.offset, rest.chunk.data = 0, 128, bytes(128)
        call = self.channel.stream_unary("/lstmserve.v1.ParameterService/ImportParameterSet",
                                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with self.assertRaises(grpc.RpcError) as caught:
            call(iter([header.SerializeToString(), chunk.SerializeToString(), b"\x12\x05ab",
                       rest.SerializeToString()]), timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("message 3 of the import", caught.exception.details())
        self.assertIn("nothing was stored", caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get("wire-import")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)


class HostileStringsTest(ServerTestCase):
    """Strings from clients reach error messages and the log escaped and bounded."""

    HOSTILE = ["a\nE 2026-01-01T00:00:00.000000Z E forged line", "\x1b[31mred\x1b[0m", "ab\x00cut here",
               "x" * (4 << 20), "caf\u00e9\u202e"]

    @classmethod
    def prepare(cls):
        cls.client.create_lstm(1, 3, 4, seed=1, id="strings")

    def assertClean(self, text, limit):
        for bad in ["\n", "\r", "\x1b", "\x00", "\u202e"]:
            self.assertNotIn(bad, text)
        self.assertLess(len(text), limit)

    def test_ids_names_and_checksums_are_escaped_and_cut(self):
        log_before = os.path.getsize(self.server.log_path)
        calls = [
            lambda v: self.client.get(v),
            lambda v: self.client.delete(v),
            lambda v: self.client.create(zeros_spec("w"), id=v),
            lambda v: self.client.create(zeros_spec(v)),
            lambda v: self.client.analyze(id="strings", tensors=[v]),
            lambda v: self.client.import_tensors({"w": torch.zeros(2)}, checksum=v),
        ]
        for i, call in enumerate(calls):
            for value in self.HOSTILE:
                with self.subTest(call=i, value=value[:20]):
                    with self.assertRaises(grpc.RpcError) as caught:
                        call(value)
                    self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                                     caught.exception.details())
                    self.assertClean(caught.exception.details(), 600)
        # Every record is one line, escaped, and 30 calls with 4 MiB strings wrote little.
        with open(self.server.log_path, "rb") as f:
            f.seek(log_before)
            written = f.read().decode("ascii")  # nothing but ASCII reaches the log
        self.assertLess(len(written), 64 << 10)
        records = written.splitlines()
        self.assertGreaterEqual(len(records), len(calls) * len(self.HOSTILE))
        for line in records:
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT[\d:.]+Z [IEW] rpc=")
            self.assertClean(line, 2000)
        self.assertIn("set=a\\x0aE 2026-01-01T00:00:00.000000Z E forged line", written)  # escaped, on its line


class NumbersOutOfRangeTest(ServerTestCase):
    @classmethod
    def prepare(cls):
        spec = parameter_pb2.ParameterSetSpec(seed=3)
        for name in ("l0", "l1"):
            t = spec.tensor_list.tensors.add()
            t.name = name
            t.shape[:] = [8, 8]
        cls.client.create(spec, id="chain")

    def test_analyze_refuses_slopes_that_are_not_finite_or_too_large(self):
        for slope in [-1e308, 1e308, float("nan"), float("inf"), float("-inf"), 1000.5]:
            with self.subTest(slope=slope):
                with self.assertRaises(grpc.RpcError) as caught:
                    self.client.analyze(id="chain", activation="leaky_relu", negative_slope=slope)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("negative_slope", caught.exception.details())
        for slope in [-1.0, 0.2, 1000.0]:
            layers = self.client.analyze(id="chain", activation="leaky_relu", negative_slope=slope).chain_layers
            self.assertEqual(len(layers), 2)
            for layer in layers:
                for figure in (layer.forward_variance, layer.activation_variance, layer.gradient_variance):
                    self.assertTrue(figure == figure and abs(figure) != float("inf"), (slope, layer))


class MetricsUnderIdleConnectionsTest(unittest.TestCase):
    """A scrape does not wait for other clients: idle and slow connections to the metrics
    port (more of them than it has threads) neither block it nor stay open for long."""

    def test_scrapes_answer_while_idle_and_slow_connections_are_open(self):
        with ServerProcess() as server:
            host, port = server.metrics.rsplit(":", 1)
            idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(20)]
            slow = socket.create_connection((host, int(port)), timeout=30)
            stop = threading.Event()

            def drip():  # a request that never ends, one byte every 200 ms
                try:
                    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    while not stop.wait(0.2):
                        slow.sendall(b"X")
                except OSError:
                    pass  # the server closed it

            dripper = threading.Thread(target=drip)
            dripper.start()
            try:
                for _ in range(3):  # each within 10 s (before: the first took 30 s)
                    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as reply:
                        self.assertIn(b"lstmserve_build_info", reply.read())
                # The server closes connections that send no whole request in time.
                deadline = time.monotonic() + 20
                for conn in idle:
                    conn.settimeout(max(0.1, deadline - time.monotonic()))
                    try:
                        self.assertEqual(conn.recv(1), b"", "an idle connection was kept open")
                    except ConnectionResetError:
                        pass  # closed with a reset: closed too
                dripper.join(timeout=20)
                self.assertFalse(dripper.is_alive(), "a request that never ends was kept open")
            finally:
                stop.set()
                dripper.join(timeout=5)
                for conn in idle + [slow]:
                    conn.close()


class ChecksumFromPythonTest(ServerTestCase):
    """ParameterSet.checksum as the proto defines it, computed by a client."""

    def test_a_created_set_has_the_checksum_of_its_exported_tensors(self):
        meta = self.client.create_lstm(2, 5, 7, seed=11, bias=True, id="sum-created")
        self.assertEqual(checksum(self.client.export("sum-created")), meta.checksum)

    def test_an_import_with_the_python_checksum_is_accepted_and_a_wrong_one_stores_nothing(self):
        g = torch.Generator().manual_seed(5)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            tensors = {"w.a": torch.randn(3, 4, generator=g).to(dtype), "b/1": torch.randn(6, generator=g).to(dtype)}
            expected = checksum(tensors)
            try:
                meta = self.client.import_tensors(tensors, id=f"sum-{str(dtype)[6:]}", checksum=expected)
            except grpc.RpcError as e:  # half precision is refused off CUDA; the checksum was not the reason
                self.assertNotEqual(dtype, torch.float32, e.details())
                self.assertIn("CUDA", e.details())
                continue
            self.assertEqual(meta.checksum, expected)
        tensors = {"w": torch.ones(4)}
        wrong = checksum({"w": torch.zeros(4)})
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.import_tensors(tensors, id="sum-wrong", checksum=wrong)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("nothing was stored", caught.exception.details())
        self.assertFalse(self._has("sum-wrong"))

    def _has(self, id):
        try:
            self.client.get(id)
            return True
        except grpc.RpcError:
            return False


if __name__ == "__main__":
    unittest.main(verbosity=2)
