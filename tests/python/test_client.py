#!/usr/bin/python3
"""The Python client against the real lstmserve binary on 127.0.0.1:0, checked against the
reference code (common_ops.py). Run by ctest; needs PYTHONPATH with the generated stubs and
the client package, LSTMSERVE_SERVER_BINARY and LSTMSERVE_REFERENCE_DIR."""
import os
import subprocess
import sys
import time
import unittest

import grpc
import numpy as np
import torch

from lstmserve_client import Client
from lstmserve_testing import ServerProcess

sys.path.insert(0, os.environ["LSTMSERVE_REFERENCE_DIR"])
import common_ops  # noqa: E402


def reference_weights(seed, layers, inp, hid):
    torch.manual_seed(seed)
    return [common_ops.create_weight(f"w_{l}", [(inp if l == 0 else hid) + hid, 4 * hid]).detach()
            for l in range(layers)]


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess()
        cls.target = cls.server.target
        cls.client = Client(cls.target)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.server.stop() == 0

    def test_health(self):
        self.assertEqual(self.client.health(), "SERVING")

    def test_created_sets_equal_create_weight_bit_for_bit(self):
        for seed, layers, inp, hid in [(0, 1, 3, 2), (42, 2, 64, 64), (2**32 + 9, 3, 11, 7)]:
            meta = self.client.create_lstm(layers, inp, hid, seed=seed, id=f"py-{layers}-{inp}-{hid}-{seed}")
            self.assertEqual(meta.lstm.num_layers, layers)
            served = self.client.export(meta.id)
            for l, w in enumerate(reference_weights(seed, layers, inp, hid)):
                self.assertTrue(torch.equal(served[f"w_{l}"], w), f"seed {seed} w_{l}")

    def test_step_and_run_match_stack_lstm(self):
        w = reference_weights(5, 2, 6, 8)
        self.client.import_tensors({f"w_{l}": t for l, t in enumerate(w)}, id="py-run")
        g = torch.Generator().manual_seed(3)
        x = torch.randn(50, 4, 6, generator=g)
        c0 = [torch.randn(4, 8, generator=g) for _ in range(2)]
        h0 = [torch.randn(4, 8, generator=g).tanh() for _ in range(2)]
        c, h = self.client.step("py-run", x[0].numpy(), c0, h0)  # numpy in, torch out
        ref_c, ref_h = common_ops.stack_lstm(x[0], c0, h0, w)
        for l in range(2):
            self.assertLessEqual((c[l] - ref_c[l]).abs().max().item(), 1e-5)
            self.assertLessEqual((h[l] - ref_h[l]).abs().max().item(), 1e-5)
        outputs, _, h_last = self.client.run("py-run", x, c0, h0)
        cc, hh, expected = c0, h0, []
        with torch.no_grad():
            for t in range(50):
                cc, hh = common_ops.stack_lstm(x[t], cc, hh, w)
                expected.append(hh[-1])
        self.assertLessEqual((outputs - torch.stack(expected)).abs().max().item(), 1e-5)
        self.assertTrue(torch.equal(outputs[-1], h_last[-1]))

    def test_session_equals_chained_steps(self):
        self.client.create_lstm(2, 5, 4, seed=1, id="py-session")
        session = self.client.session("py-session", batch_size=2)
        c = h = None
        for t in range(4):
            x = torch.randn(2, 5)
            out = session.step(x)
            c, h = self.client.step("py-session", x, c, h)
            self.assertTrue(torch.equal(out, h[-1]))
        # Its steps are stored under an id the server named, readable until the client closes.
        self.assertRegex(session.sequence_id, r"^session-[0-9a-f]{32}$")
        self.assertEqual(self.client.get_sequence(session.sequence_id).sequence_step, 4)
        session.close()
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get_sequence(session.sequence_id)
        self.assertIn("ended after 4 steps", caught.exception.details())

    def test_a_session_on_a_sequence_id_is_resumed_and_read_back(self):
        """On the server's own (memory) store: a second Session naming the id goes on from
        where the first ended; get_sequence reads its step count and state."""
        self.client.create_lstm(1, 3, 4, seed=2, id="py-seq")
        xs = [torch.randn(1, 3) for _ in range(4)]
        with self.client.session("py-seq", batch_size=1, sequence_id="py-conversation") as first:
            for x in xs[:2]:
                first.step(x)
        seen = self.client.get_sequence("py-conversation", include_state=True)
        self.assertEqual((seen.parameter_set_id, seen.sequence_step, seen.batch_size), ("py-seq", 2, 1))
        self.assertEqual(len(seen.h), 1)
        with self.client.session("py-seq", batch_size=1, sequence_id="py-conversation") as second:
            for x in xs[2:]:
                out = second.step(x)
        outputs, _, _ = self.client.run("py-seq", torch.stack(xs))
        self.assertTrue(torch.allclose(out, outputs[-1], atol=1e-6))
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get_sequence(12345)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn("was never started", caught.exception.details())

    def test_errors_carry_codes(self):
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.get("does-not-exist")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.client.create_lstm(1, 2, 2, id="py-dup")
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.create_lstm(1, 2, 2, id="py-dup")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.step("py-dup", np.full((1, 2), np.nan, dtype=np.float32))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("NaN", caught.exception.details())

    def test_list_and_delete(self):
        self.client.create_lstm(1, 2, 2, id="py-listed")
        self.assertIn("py-listed", [s.id for s in self.client.list(page_size=1)])
        self.client.delete("py-listed")
        self.assertNotIn("py-listed", [s.id for s in self.client.list()])

    def test_server_reflection_lists_the_services(self):
        # ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
        with grpc.insecure_channel(self.target) as channel:
            call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                         request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
            reply = next(call(iter([b"\x3a\x00"]), timeout=10))
        for service in (b"lstmserve.v1.ParameterService", b"lstmserve.v1.InferenceService", b"grpc.health.v1.Health"):
            self.assertIn(service, reply)

    def test_example_recreates_the_reference(self):
        example = os.path.join(os.path.dirname(__file__), "..", "..", "client", "python", "examples",
                               "recreate_reference.py")
        result = subprocess.run([sys.executable, example, "--target", self.target, "--reference-dir",
                                 os.environ["LSTMSERVE_REFERENCE_DIR"]], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("bit-identical to torch.manual_seed(42) + create_weight: True", result.stdout)


class ScaleOutTest(unittest.TestCase):
    def test_round_robin_spreads_calls_over_replicas_sharing_a_store(self):
        import re
        import tempfile
        import urllib.request
        with tempfile.TemporaryDirectory(prefix="lstmserve-shared-") as store:
            with ServerProcess(store=store) as a, ServerProcess(store=store) as b:
                # One target that resolves to both, as DNS does for a headless Service.
                client = Client(f"ipv4:{a.target},{b.target}")
                client.create_lstm(1, 8, 8, seed=3, id="spread")
                x = torch.randn(1, 8)
                first = client.step("spread", x)[1][0]
                # Round robin sends calls to the replicas whose connection is up: keep calling
                # for a second (at least 20 calls, at most 2000), so that a slow second connect
                # on a loaded machine still gets its turn (20 calls alone once all went to one).
                calls, began = 1, time.monotonic()
                while calls < 2000 and (calls < 20 or time.monotonic() - began < 1.0):
                    self.assertTrue(torch.equal(client.step("spread", x)[1][0], first))
                    calls += 1
                client.close()
                steps = []
                for server in (a, b):
                    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as r:
                        text = r.read().decode()
                    m = re.search(r'lstmserve_requests_total\{code="OK",method="Step",[^}]*\} (\d+)', text)
                    steps.append(int(m.group(1)))
                self.assertEqual(sum(steps), calls)
                self.assertGreater(min(steps), 0, f"Steps per replica: {steps}")


class NoReflectionTest(unittest.TestCase):
    def test_reflection_can_be_turned_off(self):
        server = ServerProcess("--noreflection")
        try:
            with grpc.insecure_channel(server.target) as channel:
                call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                             request_serializer=lambda raw: raw,
                                             response_deserializer=lambda raw: raw)
                with self.assertRaises(grpc.RpcError) as caught:
                    next(call(iter([b"\x3a\x00"]), timeout=10))
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        finally:
            self.assertEqual(server.stop(), 0)


class BlasChoiceTest(unittest.TestCase):
    """--blas_coretype: the server says which BLAS kernels it runs, in its log and in
    lstmserve_build_info, refuses a bad name, and restarts itself to apply another core."""

    @staticmethod
    def build_info(server):
        import re
        import urllib.request
        with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        line = next(l for l in text.splitlines() if l.startswith("lstmserve_build_info{"))
        return dict(re.findall(r'(\w+)="([^"]*)"', line))

    def test_the_log_and_build_info_name_the_blas(self):
        with ServerProcess() as server:
            info = self.build_info(server)
            self.assertIn(info["blas"], ("openblas", "mkl"))
            self.assertIn(f"blas: {info['blas']}", server.log())
            if info["blas"] == "openblas":
                self.assertIn(f"core={info['blas_core']}", server.log())
                if "OPENBLAS_CORETYPE" in os.environ:  # the environment's choice is kept
                    self.assertEqual(info["blas_core"].lower(), os.environ["OPENBLAS_CORETYPE"].lower())

    def test_a_bad_core_name_is_a_usage_error(self):
        result = subprocess.run([os.environ["LSTMSERVE_SERVER_BINARY"], "--blas_coretype=Pentium4"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("is not auto, keep or one of", result.stderr)

    def test_another_core_of_the_same_family_is_applied_by_a_restart(self):
        # Only where it changes nothing that matters: OpenBLAS, no OPENBLAS_CORETYPE set by the
        # environment (which must not be overridden in tests), and AVX-512 kernels already.
        with ServerProcess() as server:
            info = self.build_info(server)
        if info["blas"] != "openblas" or "OPENBLAS_CORETYPE" in os.environ or \
                info["blas_core"] not in ("SkylakeX", "Cooperlake"):
            self.skipTest(f"needs OpenBLAS on AVX-512 kernels and no OPENBLAS_CORETYPE; have {info}")
        other = "Cooperlake" if info["blas_core"] == "SkylakeX" else "SkylakeX"
        with ServerProcess(f"--blas_coretype={other}") as server:
            self.assertEqual(self.build_info(server)["blas_core"], other)
            self.assertIn(f"--blas_coretype={other} (OpenBLAS had chosen {info['blas_core']})", server.log())

    def test_an_isa_cap_is_applied_by_a_restart_and_shown(self):
        """--isa=baseline: the baseline kernels, MKL's and OpenBLAS's capped too (a restart
        puts their variables in the environment), in the log and in lstmserve_build_info."""
        with ServerProcess("--isa=baseline") as server:
            self.assertEqual(self.build_info(server)["isa"], "baseline")
            self.assertIn("small-batch kernels baseline", server.log())
            with open("/proc/cpuinfo") as f:
                above_baseline = " avx2 " in f.read()
            if above_baseline:  # else there is nothing to cap
                with open(f"/proc/{server.process.pid}/environ", "rb") as f:
                    env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
                self.assertEqual(env.get(b"LSTMSERVE_ISA"), b"baseline")
                if "MKL_ENABLE_INSTRUCTIONS" not in os.environ:
                    self.assertEqual(env.get(b"MKL_ENABLE_INSTRUCTIONS"), b"SSE4_2")
        with ServerProcess() as server:
            self.assertIn(self.build_info(server)["isa"], ("avx512", "avx2_vnni", "avx2", "baseline"))
        result = subprocess.run([os.environ["LSTMSERVE_SERVER_BINARY"], "--isa=avx9"], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 2, result.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
