#!/usr/bin/python3
"""Sets with reduced weight storage (bfloat16; int8 with a scale per column) through the real
server and the Python client: the stored weights are the float32 draw rounded as the proto
says (checked bit for bit with torch), Step and Run compute common_ops.stack_lstm on those
weights (with the activations rounded as the packed GEMMs round them, where the CPU has
them), a row's bits do not depend on its batch, the kernels that ran are counted and
--lstm_path forces one, the error against the float32 set stays within the bounds, export
gives back what was stored and imports unchanged, and malformed requests are refused with
nothing stored."""
import os
import sys
import unittest
import urllib.request

import grpc
import torch

from lstmserve.v1 import parameter_service_pb2 as parameter_pb2
from lstmserve.v1 import tensor_pb2
from lstmserve_client import checksum
from lstmserve_testing import PACKED_GEMMS, ServerProcess, ServerTestCase, cpu_flags, cpu_vendor

sys.path.insert(0, os.environ["LSTMSERVE_REFERENCE_DIR"])
import common_ops  # noqa: E402

LAYERS, INPUT, HIDDEN = 2, 24, 40


def int8_reference(w):
    """WeightStorage INT8 as the proto writes it in torch."""
    scale = w.abs().amax(0) / 127
    q = torch.where(scale > 0, torch.round(w / scale), torch.zeros(()))
    return q.clamp(-127, 127).to(torch.int8), scale


# Sets run the packed GEMMs (lstm_kernels.h, HasPackedF32/HasPackedInt8/HasPackedBf16) on
# every x86-64-v3 CPU (AVX-512, AVX512-VNNI and AVX512-BF16, or their AVX2 builds: the same
# bits); reduced sets' activations are rounded first. A cap (LSTMSERVE_ISA=baseline) takes
# them away.
PACKED = {"f32": PACKED_GEMMS, "bf16": PACKED_GEMMS, "int8": PACKED_GEMMS}


def round_activations(t, storage, terms):
    """What the packed GEMMs multiply: bf16 rounds each value (to nearest even); int8 writes
    each row as s * qh (s = max|row| / 127), or with two terms as s * qh + s_lo * ql
    (s_lo = s / 254, the residual rounded once)."""
    if storage == "bf16":
        return t.bfloat16().float()
    s = t.abs().amax(1, keepdim=True) / 127
    qh = torch.round(t / s)
    value = qh * s
    if terms == 2:
        s_lo = s / 254
        residual = (t.double() - qh.double() * s.double()).float()
        value = value + torch.round(residual / s_lo).clamp(-127, 127) * s_lo
    return torch.where(s > 0, value, torch.zeros(()))


def kernel_batches(server):
    """lstmserve_batch_kernel_total by kernel, from the server's /metrics."""
    with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("lstmserve_batch_kernel_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('kernel="')[1].split('"')[0]] = float(value)
    return counts


class WeightStorageTest(ServerTestCase):
    @classmethod
    def prepare(cls):
        for name, storage in (("f32", None), ("bf16", "bfloat16"), ("int8", "int8")):
            cls.client.create_lstm(LAYERS, INPUT, HIDDEN, seed=7, bias=True, id=name, weight_storage=storage)
        cls.full = cls.client.export("f32")

    def weights(self, tensors):
        """The float32 weights the server computes with."""
        out = []
        for l in range(LAYERS):
            w = tensors[f"w_{l}"]
            out.append(w.float() * tensors[f"w_{l}.scale"] if w.dtype == torch.int8 else w.float())
        return out

    def test_stored_weights_are_the_float32_draw_rounded_as_documented(self):
        bf16 = self.client.export("bf16")
        int8 = self.client.export("int8")
        self.assertEqual(list(bf16), ["w_0", "w_1", "b_0", "b_1"])
        self.assertEqual(list(int8), ["w_0", "w_1", "w_0.scale", "w_1.scale", "b_0", "b_1"])
        for l in range(LAYERS):
            w = self.full[f"w_{l}"]
            self.assertEqual(bf16[f"w_{l}"].dtype, torch.bfloat16)
            self.assertTrue(torch.equal(bf16[f"w_{l}"], w.to(torch.bfloat16)))
            q, scale = int8_reference(w)
            self.assertEqual(int8[f"w_{l}"].dtype, torch.int8)
            self.assertTrue(torch.equal(int8[f"w_{l}"], q))
            self.assertTrue(torch.equal(int8[f"w_{l}.scale"], scale))
            self.assertTrue(torch.equal(int8[f"b_{l}"], self.full[f"b_{l}"]), "biases stay float32")
        info = self.client.get("int8")
        self.assertEqual(info.weight_storage, parameter_pb2.WEIGHT_STORAGE_INT8)
        self.assertEqual(info.tensors[0].dtype, tensor_pb2.DATA_TYPE_INT8)
        self.assertEqual(info.spec.weight_storage, parameter_pb2.WEIGHT_STORAGE_INT8)
        self.assertEqual(self.client.get("bf16").weight_storage, parameter_pb2.WEIGHT_STORAGE_BFLOAT16)
        self.assertEqual(self.client.get("f32").weight_storage, parameter_pb2.WEIGHT_STORAGE_UNSPECIFIED)
        self.assertLess(info.byte_size, self.client.get("f32").byte_size / 2)
        self.assertEqual(info.checksum, checksum(int8))

    def test_step_and_run_compute_stack_lstm_on_the_stored_weights(self):
        gen = torch.Generator().manual_seed(3)
        for id in ("bf16", "int8"):
            tensors = self.client.export(id)
            # common_ops.stack_lstm has no bias: a column of ones on x and on each h carries it
            # (the bias as an extra weight row; the float32 math is the same up to rounding).
            w = [torch.cat([wl, tensors[f"b_{l}"][None]]) for l, wl in enumerate(self.weights(tensors))]
            for batch in (1, 3, 8):
                x = torch.randn(5, batch, INPUT, generator=gen)
                ones = torch.ones(batch, 1)
                c = [torch.zeros(batch, HIDDEN)] * LAYERS
                h = [torch.zeros(batch, HIDDEN)] * LAYERS
                # The packed GEMMs (every batch size, where the CPU has them) round the activations.
                rounded = PACKED[id]
                expected = []
                for t in range(5):
                    layer_input = x[t]
                    for l in range(LAYERS):
                        x_in, h_in = layer_input, h[l]
                        if rounded:  # x and h are separate GEMMs: each row of each has its scale
                            # int8: the set's inputs in two terms; h, and the layers' inputs past the first, in one
                            x_in = round_activations(x_in, id, 2 if l == 0 else 1)
                            h_in = round_activations(h_in, id, 1)
                        c[l], h[l] = common_ops.lstm(x_in, c[l], torch.cat([h_in, ones], 1), w[l])
                        layer_input = h[l]
                    expected.append(h[-1])
                # Rounding bf16 activations amplifies float32's last-bit differences (the server's
                # exp is not torch's): one that flips a rounding moves that input by 2^-9 of it.
                # Skipping the rounding altogether is off by 2.5e-4.
                tolerance = 5e-5 if rounded and id == "bf16" else 1e-5
                outputs, _, _ = self.client.run(id, x)
                self.assertLess((outputs - torch.stack(expected)).abs().max().item(), tolerance, f"{id} B={batch}")
                _, step_h = self.client.step(id, x[0])
                self.assertLess((step_h[-1] - expected[0]).abs().max().item(), tolerance, f"{id} B={batch}")

    def test_the_kernels_that_ran_are_counted(self):
        before = kernel_batches(self.server)
        self.client.run("int8", torch.zeros(2, 8, INPUT))
        self.client.run("f32", torch.zeros(2, 1, INPUT))
        after = kernel_batches(self.server)
        int8_kernel = "packed_int8" if PACKED["int8"] else "blas_widened"
        self.assertEqual(after[int8_kernel] - before.get(int8_kernel, 0), 1, after)
        # B = 1 takes the packed float32 GEMM from x86-64-v3 on, else the small-batch kernels
        # (StackedLstm::ChoosePath).
        f32_kernel = "packed_f32" if PACKED["f32"] else "small_batch"
        self.assertEqual(after[f32_kernel] - before.get(f32_kernel, 0), 1, after)

    def test_a_rows_bits_do_not_depend_on_its_batch(self):
        # The packed GEMMs round and sum each row on its own, in exact integer or fixed-order
        # float32 sums: a request merged with others gets the bits it gets alone.
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(3, 8, INPUT, generator=gen)
        for id in ("f32", "bf16", "int8"):
            if not PACKED[id]:
                continue
            together, _, _ = self.client.run(id, x)
            for row in (0, 5):
                alone, _, _ = self.client.run(id, x[:, row:row + 1].contiguous())
                self.assertTrue(torch.equal(alone[:, 0], together[:, row]), f"{id} row {row}")

    def test_an_avx2_server_gives_the_same_bits(self):
        # Servers of one cluster on different CPUs (here: this one, and a second server capped
        # at avx2 on the same store) answer a set with the same bits: the packed GEMMs' AVX2
        # builds reproduce the AVX-512 builds' arithmetic (float32's FMA chains, AVX512-VNNI's
        # and AVX512-BF16's).
        if not PACKED["int8"]:
            self.skipTest("no packed GEMMs below x86-64-v3")
        gen = torch.Generator().manual_seed(9)
        x = torch.randn(4, 5, INPUT, generator=gen)
        # And where the CPU has AVX-VNNI, a server capped at avx2_vnni (the int8 GEMM's YMM VNNI
        # build, as on Intel's client cores and Sierra Forest).
        levels = {"avx2": "AVX2"}
        if "avx_vnni" in cpu_flags():
            levels["avx2_vnni"] = "AVX-VNNI"
        for level, int8_build in levels.items():
            with ServerProcess(f"--isa={level}", store=self.server.store, log_name=f"{level}.log") as capped:
                from lstmserve_client import Client
                other = Client(capped.target)
                try:
                    for id in ("f32", "bf16", "int8"):
                        here, _, _ = self.client.run(id, x)
                        there, _, _ = other.run(id, x)
                        self.assertTrue(torch.equal(here, there),
                                        f"{id} at {level}: max diff {(here - there).abs().max().item()}")
                        _, step_here = self.client.step(id, x[0])
                        _, step_there = other.step(id, x[0])
                        self.assertTrue(torch.equal(step_here[-1], step_there[-1]), f"{id} at {level}")
                finally:
                    other.close()
                self.assertIn(f"packed f32 GEMM AVX2; packed int8 GEMM {int8_build}; packed bf16 GEMM AVX2;",
                              capped.log())
        if "avx512_vnni" in cpu_flags() and os.environ.get("LSTMSERVE_ISA", "native") == "native":
            # vdpbf16ps where the CPU has it, except on Intel cores (half the FMA's rate there):
            # the weights widened on ZMM.
            bf16_build = "AVX512-BF16"
            if "avx512_bf16" not in cpu_flags() or cpu_vendor() == "GenuineIntel":
                bf16_build = "AVX-512 widened"
            self.assertIn(f"packed f32 GEMM AVX-512; packed int8 GEMM AVX512-VNNI; packed bf16 GEMM {bf16_build};",
                          self.server.log())

    def test_error_against_float32_within_the_bounds(self):
        gen = torch.Generator().manual_seed(11)
        x = torch.randn(100, 1, INPUT, generator=gen)
        full, _, _ = self.client.run("f32", x)
        for id, bound in (("bf16", 1e-2), ("int8", 2e-2)):
            reduced, _, _ = self.client.run(id, x)
            error = (reduced - full).abs()
            self.assertLess(error[-1].max().item(), bound, id)
            self.assertGreater(error.max().item(), 0, f"{id} must not be float32")

    def test_export_then_import_gives_the_same_set(self):
        for id in ("bf16", "int8"):
            exported = self.client.export(id)
            copy = self.client.import_tensors(exported, id=f"{id}-copy", checksum=checksum(exported))
            original = self.client.get(id)
            self.assertEqual(copy.weight_storage, original.weight_storage)
            self.assertEqual(copy.checksum, original.checksum)
            self.assertEqual(copy.lstm.hidden_size, HIDDEN)
            x = torch.randn(2, INPUT, generator=torch.Generator().manual_seed(5))
            self.assertTrue(torch.equal(self.client.step(id, x)[1][-1], self.client.step(f"{id}-copy", x)[1][-1]))

    def test_analyze_measures_the_error_of_each_storage(self):
        on_full = self.client.analyze("f32", samples=8, weight_storage_error=True).weight_storage_errors
        self.assertEqual([e.weight_storage for e in on_full],
                         [parameter_pb2.WEIGHT_STORAGE_BFLOAT16, parameter_pb2.WEIGHT_STORAGE_INT8])
        on_int8 = self.client.analyze("int8", samples=8, weight_storage_error=True).weight_storage_errors
        self.assertEqual(len(on_int8), 1)
        # The int8 set's own error is the one the float32 set predicts for int8.
        self.assertEqual(on_int8[0], on_full[1])
        for e in on_full:
            self.assertEqual(list(e.steps), [1, 100, 1000])
            bound = 1e-2 if e.weight_storage == parameter_pb2.WEIGHT_STORAGE_BFLOAT16 else 2e-2
            self.assertTrue(all(0 < m < bound for m in e.max_abs_error), e)
            self.assertTrue(all(0 < m <= x for m, x in zip(e.mean_abs_error, e.max_abs_error)), e)
        # Without the flag nothing is measured; with a different probe seed other figures.
        self.assertEqual(len(self.client.analyze("f32", samples=8).weight_storage_errors), 0)
        other = self.client.analyze("f32", samples=8, probe_seed=9, weight_storage_error=True).weight_storage_errors
        self.assertNotEqual(list(other[1].max_abs_error), list(on_full[1].max_abs_error))
        # A spec without a set: both storages, as for the stored float32 set of that spec.
        spec = self.client.get("f32").spec
        self.assertEqual(list(self.client.analyze(spec=spec, samples=8, weight_storage_error=True).weight_storage_errors),
                         list(on_full))

    def test_variance_analysis_sees_the_weights_the_set_computes_with(self):
        # An int8 set's weights are q * scale: its figures are the float32 set's, nearly
        # (they once read q alone and came out ~(127 / max|w|)^2 times too large).
        full = self.client.analyze("f32", samples=64, steps=5).lstm_layers
        for id in ("bf16", "int8"):
            reduced = self.client.analyze(id, samples=64, steps=5).lstm_layers
            for a, b in zip(full, reduced):
                self.assertAlmostEqual(b.preactivation_variance / a.preactivation_variance, 1, delta=0.02, msg=id)
                self.assertAlmostEqual(b.h_variance / a.h_variance, 1, delta=0.02, msg=id)

    def test_an_imported_reduced_set_has_no_float32_reference(self):
        exported = self.client.export("bf16")
        self.client.import_tensors(exported, id="bf16-imported")
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.analyze("bf16-imported", samples=8, weight_storage_error=True)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("imported", caught.exception.details())
        # bfloat16 weights alone (no biases) do not say they are a weight storage: say it.
        weights_only = {k: v for k, v in exported.items() if k.startswith("w_")}
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.import_tensors(weights_only, id="bf16-guess")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("weight_storage", caught.exception.details())
        stored = self.client.import_tensors(weights_only, id="bf16-said", weight_storage="bfloat16")
        self.assertEqual(stored.weight_storage, parameter_pb2.WEIGHT_STORAGE_BFLOAT16)

    def test_malformed_requests_are_refused_and_store_nothing(self):
        def code_and_message(call):
            with self.assertRaises(grpc.RpcError) as caught:
                call()
            return caught.exception.code(), caught.exception.details()

        spec = parameter_pb2.ParameterSetSpec(seed=1, weight_storage=parameter_pb2.WEIGHT_STORAGE_INT8)
        spec.tensor_list.tensors.add(name="w", shape=[4, 4])
        code, message = code_and_message(lambda: self.client.create(spec, "bad-list"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("not tensor lists", message)
        spec = parameter_pb2.ParameterSetSpec(seed=1, weight_storage=7)
        spec.lstm.num_layers, spec.lstm.input_size, spec.lstm.hidden_size = 1, 2, 2
        code, message = code_and_message(lambda: self.client.create(spec, "bad-enum"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("weight_storage", message)
        spec = parameter_pb2.ParameterSetSpec(seed=1, dtype=tensor_pb2.DATA_TYPE_INT8)
        spec.lstm.num_layers, spec.lstm.input_size, spec.lstm.hidden_size = 1, 2, 2
        code, message = code_and_message(lambda: self.client.create(spec, "bad-dtype"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("not a set dtype", message)

        int8 = self.client.export("int8")
        no_scale = {k: v for k, v in int8.items() if k != "w_1.scale"}
        code, message = code_and_message(lambda: self.client.import_tensors(no_scale, id="no-scale"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("w_1.scale", message)
        negative = dict(int8, **{"w_0.scale": -int8["w_0.scale"]})
        code, _ = code_and_message(lambda: self.client.import_tensors(negative, id="negative"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        int8_bias = dict(int8, b_0=int8["b_0"].to(torch.int8))
        code, _ = code_and_message(lambda: self.client.import_tensors(int8_bias, id="int8-bias"))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        for id in ("bad-list", "bad-enum", "bad-dtype", "no-scale", "negative", "int8-bias"):
            self.assertNotIn(id, [s.id for s in self.client.list()])

        # Inputs stay float32: int8 or bfloat16 x is refused, naming the set's dtype.
        code, message = code_and_message(lambda: self.client.step("int8", torch.ones(1, INPUT, dtype=torch.int8)))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("float32", message)


class ForcedPathTest(ServerTestCase):
    """--lstm_path=small_batch: every call on the small-batch kernels, which compute int8 and
    bf16 sets on float32 activations at any batch size (stack_lstm on the widened weights)."""
    FLAGS = ("--lstm_path=small_batch",)

    @classmethod
    def prepare(cls):
        cls.client.create_lstm(LAYERS, INPUT, HIDDEN, seed=7, bias=True, id="int8", weight_storage="int8")

    def test_the_forced_path_computes_on_float32_activations(self):
        tensors = self.client.export("int8")
        w = [torch.cat([wl.float() * tensors[f"w_{l}.scale"], tensors[f"b_{l}"][None]]) for l, wl in
             enumerate(tensors[f"w_{l}"] for l in range(LAYERS))]
        x = torch.randn(3, 8, INPUT, generator=torch.Generator().manual_seed(9))
        ones = torch.ones(8, 1)
        c = [torch.zeros(8, HIDDEN)] * LAYERS
        h = [torch.zeros(8, HIDDEN)] * LAYERS
        expected = []
        for t in range(3):
            c, h = common_ops.stack_lstm(x[t], c, [torch.cat([hl, ones], 1) for hl in h], w)
            expected.append(h[-1])
        before = kernel_batches(self.server)
        outputs, _, _ = self.client.run("int8", x)
        self.assertLess((outputs - torch.stack(expected)).abs().max().item(), 1e-5)
        after = kernel_batches(self.server)
        self.assertEqual(after["small_batch"] - before.get("small_batch", 0), 1, after)
        self.assertEqual(after["packed_int8"], 0, after)

    def test_an_unknown_path_is_refused_at_startup(self):
        import subprocess
        result = subprocess.run([os.environ["LSTMSERVE_SERVER_BINARY"], "--lstm_path=fastest", "--listen=127.0.0.1:0",
                                 "--metrics_listen=", "--http_listen="], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--lstm_path", result.stderr)
        self.assertIn("small_batch", result.stderr)


if __name__ == "__main__":
    unittest.main()
