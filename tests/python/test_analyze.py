#!/usr/bin/python3
"""Initialization diagnostics (ParameterService.AnalyzeParameterSet) through the real server:
the article's claims on a 20-layer chain, the fan conventions' predictions for the LSTM
layout, the figures recomputed from the reference code in Python on the same probe
inputs, and `lstmserve-cli analyze --compare --plot` drawing one series per initializer.
Needs PYTHONPATH with the client and lstmserve_testing, LSTMSERVE_SERVER_BINARY,
LSTMSERVE_CLI_BINARY and LSTMSERVE_REFERENCE_DIR."""
import math
import os
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

import grpc
import torch

from lstmserve.v1 import parameter_service_pb2 as P
from lstmserve_testing import ServerTestCase

sys.path.insert(0, os.environ["LSTMSERVE_REFERENCE_DIR"])
import common_ops  # noqa: E402


def chain(init, layers=20, width=256, seed=1):
    spec = P.ParameterSetSpec(seed=seed)
    for l in range(layers):
        spec.tensor_list.tensors.add(name=f"layer_{l:02d}", shape=[width, width], initializer=init)
    return spec


def probe_generator(seed):
    """The server's probe stream: torch's CPU generator seeded with SplitMix64(seed)."""
    m = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return torch.Generator().manual_seed(z ^ (z >> 31))


KAIMING = P.Initializer(kaiming_normal=P.Initializer.Kaiming())


class AnalyzeTest(ServerTestCase):

    def forward(self, spec, activation="relu", **kw):
        r = self.client.analyze(spec=spec, activation=activation, samples=1024, **kw)
        self.assertEqual(len(r.chain_layers), len(spec.tensor_list.tensors))
        return [l.forward_variance for l in r.chain_layers]

    def test_he_keeps_a_relu_chain_while_unit_and_small_normals_explode_and_vanish(self):
        per_seed = [self.forward(chain(KAIMING, seed=s)) for s in (1, 2, 4, 5)]
        for l in range(20):
            geo = math.exp(sum(math.log(v[l]) for v in per_seed) / len(per_seed))
            self.assertTrue(0.5 <= geo <= 2, f"layer {l}: He's variance {geo:.3f} (geometric mean of 4 draws)")
            for v in per_seed:  # one draw of width 256 wanders, but not far
                self.assertTrue(0.25 <= v[l] <= 4, f"layer {l}: {v[l]:.3f}")
        big = self.forward(chain(P.Initializer(normal=P.Initializer.Normal(std=1))))
        small = self.forward(chain(P.Initializer(normal=P.Initializer.Normal(std=0.01))))
        self.assertGreater(big[-1], 1e6)
        self.assertLess(small[-1], 1e-6)
        self.assertTrue(all(b < a for a, b in zip(small, small[1:])), "N(0, 0.01) shrinks at every layer")

    def test_xavier_with_tanh_gain_keeps_a_tanh_chain(self):
        xavier = P.Initializer(xavier_uniform=P.Initializer.XavierUniform(gain=5.0 / 3.0))
        for l, v in enumerate(self.forward(chain(xavier), activation="tanh")):
            self.assertTrue(0.5 <= v <= 2, f"layer {l}: {v:.3f}")

    def test_fan_conventions_give_the_gate_variance_their_formulas_predict(self):
        # One step from zero states: var(z) = I * 2 / fan_in with He (kaiming_normal).
        # torch reads fan_in = size(1) = 4H off the [I + H, 4H] weight; matmul, size(0) = I + H.
        I, H = 64, 32
        for convention, fan_in in [(P.FAN_CONVENTION_TORCH, 4 * H), (P.FAN_CONVENTION_MATMUL, I + H)]:
            spec = P.ParameterSetSpec(seed=3, fan_convention=convention, lstm=P.LstmTemplate(
                num_layers=1, input_size=I, hidden_size=H, weight_initializer=KAIMING))
            r = self.client.analyze(spec=spec, samples=8192, steps=1)
            predicted = I * 2.0 / fan_in
            self.assertAlmostEqual(r.lstm_layers[0].preactivation_variance, predicted, delta=0.05 * predicted,
                                   msg=f"convention {convention}")

    def test_lstm_figures_equal_the_reference_code_on_the_same_probe(self):
        meta = self.client.create_lstm(2, 16, 32, seed=11, bias=True, id="analyzed",
                                       weight_initializer=P.Initializer(xavier_uniform=P.Initializer.XavierUniform()))
        served = self.client.analyze(id=meta.id, probe_seed=7, samples=64, steps=5)
        t = self.client.export(meta.id)
        sig_edge, tanh_edge = math.log(0.95 / 0.05), math.atanh(0.95)
        gen = probe_generator(7)
        c = [torch.zeros(64, 32), torch.zeros(64, 32)]
        h = [torch.zeros(64, 32), torch.zeros(64, 32)]
        keys = ["i", "f", "o", "g", "z", "c", "h", "sig", "tanh"]
        acc = [dict.fromkeys(keys, 0.0) for _ in range(2)]
        var = lambda v: v.double().var(unbiased=False).item()  # noqa: E731
        with torch.no_grad():
            for _ in range(5):
                x = torch.randn(64, 16, generator=gen)
                for l in range(2):
                    w, bias = t[f"w_{l}"], t[f"b_{l}"]
                    z = torch.cat([x, h[l]], 1) @ w + bias
                    gates = torch.split(z, 32, 1)
                    # The reference step, with the bias folded into the weight: [x, 1, h] @ [w_x; b; w_h].
                    inputs = x.size(1)
                    x1 = torch.cat([x, torch.ones(64, 1)], 1)
                    w1 = torch.cat([w[:inputs], bias[None, :], w[inputs:]], 0)
                    c[l], h[l] = common_ops.lstm(x1, c[l], h[l], w1)
                    a = acc[l]
                    for k, gate in zip("ifog", gates):
                        a[k] += var(gate)
                    a["z"] += var(z)
                    a["sig"] += (z[:, :96].abs() > sig_edge).double().mean().item()
                    a["tanh"] += ((gates[3].abs() > tanh_edge).sum() + (c[l].abs() > tanh_edge).sum()).item() / (2 * 64 * 32)
                    a["c"] += var(c[l])
                    a["h"] += var(h[l])
                    x = h[l]
        for l, layer in enumerate(served.lstm_layers):
            got = [layer.input_gate_variance, layer.forget_gate_variance, layer.output_gate_variance,
                   layer.cell_gate_variance, layer.preactivation_variance, layer.c_variance, layer.h_variance,
                   layer.sigmoid_saturated_fraction, layer.tanh_saturated_fraction]
            for key, value in zip(keys, got):
                expected = acc[l][key] / 5
                self.assertAlmostEqual(value, expected, delta=1e-4 * max(abs(expected), 1e-3),
                                       msg=f"layer {l} {key}: served {value}, reference {expected}")

    def test_cli_compare_plots_one_series_per_initializer(self):
        with tempfile.TemporaryDirectory() as d:
            svg = os.path.join(d, "compare.svg")
            result = subprocess.run([os.environ["LSTMSERVE_CLI_BINARY"], f"--target={self.server.target}", "analyze",
                                     "--chain_layers=10", "--width=64", "--activation=relu",
                                     "--compare=kaiming_normal,xavier_uniform,normal:1", f"--plot={svg}"],
                                    capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("forward var", result.stdout)
            root = ET.parse(svg).getroot()
            ns = {"s": "http://www.w3.org/2000/svg"}
            names = [g.get("data-name") for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "series"]
            for init in ["kaiming_normal", "xavier_uniform", "normal:1"]:
                self.assertIn(init, names)
                self.assertIn(f"{init} (gradient)", names)
            for g in root.findall(".//s:g[@class='series']/s:polyline", ns):
                self.assertEqual(len(g.get("points").split()), 10)

    def test_limits_and_determinism(self):
        spec = chain(KAIMING, layers=3, width=64)
        a = self.client.analyze(spec=spec, probe_seed=5)
        self.assertEqual(a, self.client.analyze(spec=spec, probe_seed=5))
        self.assertNotEqual(a, self.client.analyze(spec=spec, probe_seed=6))
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.analyze(spec=chain(KAIMING, layers=20, width=1024), samples=1 << 20)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("multiply-adds", caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.analyze(id="no-such-set")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND)


if __name__ == "__main__":
    unittest.main(verbosity=2)
