#!/usr/bin/python3
"""Writes reference values computed with the numerical specification, common_ops.py.

Run with Debian's /usr/bin/python3 (python3-torch 1.13, the build libtorch-dev ships). The
output is one torch.save'd dict (stored as a tuple of (key, value) pairs, see tuples()) that the C++ conformance test reads with torch::pickle_load:

  initializers: list of {init, kwargs, convention, shape, seed, expected | error}
      expected = torch.manual_seed(seed); nn.init.<init>_(torch.empty(shape), **kwargs)
      For convention 'matmul' (fan_in = size(0)), kaiming's mode is swapped before the call,
      which is how a user reproduces a matmul-convention tensor in Python.
  lstm_sets: list of {layers, input_size, hidden_size, bias, seed, weights, biases}
      torch.manual_seed(seed); w = [create_weight(f"w_{l}", [(I if l == 0 else H) + H, 4*H])
      for l in range(L)], plus create_bias([4*H]) per layer when bias.
  lstm_runs: list of {layers, input_size, hidden_size, batch, steps, weights, biases, x,
      c0, h0, step_c, step_h, seq_out, seq_c, seq_h}: stack_lstm from (c0, h0) on x[0] for one
      step, and stepped over all of x for the sequence (seq_out = top-layer h per step).

Usage: make_reference.py --reference-dir DIR --out FILE [--seeds 0,1,42] [--shapes 5x7,3x4x2]
"""
import argparse
import math
import sys

import torch
from torch import nn

INITS = [
    ("uniform", {}),
    ("uniform", {"a": -0.5, "b": 2.0}),
    ("normal", {}),
    ("normal", {"mean": 1.5, "std": 0.3}),
    ("constant", {"val": 0.25}),
    ("zeros", {}),
    ("ones", {}),
    ("xavier_uniform", {}),
    ("xavier_uniform", {"gain": 5.0 / 3}),
    ("xavier_normal", {}),
    ("xavier_normal", {"gain": math.sqrt(2.0)}),
    ("kaiming_uniform", {}),
    ("kaiming_uniform", {"a": math.sqrt(5)}),
    ("kaiming_uniform", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_normal", {}),
    ("kaiming_normal", {"mode": "fan_in", "nonlinearity": "relu"}),
    ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "tanh"}),
    ("kaiming_normal", {"nonlinearity": "sigmoid"}),
    ("kaiming_normal", {"nonlinearity": "selu"}),
    ("kaiming_normal", {"nonlinearity": "linear"}),
    ("kaiming_normal", {"a": 0.2, "mode": "fan_out", "nonlinearity": "leaky_relu"}),
    ("orthogonal", {}),
    ("orthogonal", {"gain": 2.0}),
    ("trunc_normal", {}),
    ("trunc_normal", {"mean": 0.5, "std": 0.2, "a": 0.0, "b": 1.0}),
    ("eye", {}),
    ("dirac", {}),
    ("dirac", {"groups": 2}),
    ("sparse", {"sparsity": 0.1}),
    ("sparse", {"sparsity": 0.5, "std": 0.2}),
    ("sparse", {"sparsity": 1.0}),
]
# Sizes under 16 elements take torch's scalar normal path, 16 and more the vectorised one.
SHAPES = [[3], [2, 3], [4, 4], [16], [1, 17], [5, 7], [17, 33], [64, 256], [8, 3, 3, 3], [3, 5, 2]]
FAN_INITS = {"xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"}
LSTM_SETS = [  # layers, input, hidden, bias, seed
    (1, 3, 2, False, 0), (2, 64, 64, False, 42), (3, 10, 20, True, 7),
    (2, 128, 256, False, 1), (4, 5, 1, True, 3), (2, 7, 9, False, 2**32 + 5),
]
LSTM_RUNS = [  # layers, input, hidden, batch, bias, zero initial state
    (2, 64, 64, 1, False, True), (2, 64, 64, 1, True, False), (3, 10, 20, 3, False, False),
    (1, 5, 7, 8, True, False), (2, 16, 32, 9, False, False), (2, 24, 48, 20, True, False),
    (3, 33, 17, 64, False, True),
]
STEPS = 50


def tensor_case(common_ops, init, kwargs, convention, shape, seed):
    call = dict(kwargs)
    if convention == "matmul" and init.startswith("kaiming"):
        call["mode"] = "fan_out" if call.get("mode", "fan_in") == "fan_in" else "fan_in"
    # Seeds travel as strings: the C++ unpickler misreads ints of 2^31 and more.
    case = {"init": init, "kwargs": kwargs, "convention": convention, "shape": shape, "seed": str(seed)}
    torch.manual_seed(seed)
    t = torch.empty(*shape)
    try:
        getattr(nn.init, init + "_")(t, **call)
    except ValueError as e:  # torch refuses (fewer than 2 dimensions): we must refuse too
        case["error"] = str(e)
        return case
    case["expected"] = t
    return case


def lstm_with_bias(common_ops, x, c, h, w, b):
    """stack_lstm with ifog + b, using the reference's own cell: [x, 1, h] @ [w_x; b; w_h]."""
    if b is None:
        return common_ops.stack_lstm(x, c, h, w)
    next_c, next_h = [], []
    for layer, (cl, hl, wl, bl) in enumerate(zip(c, h, w, b)):
        inputs = x if layer == 0 else next_h[-1]
        n_in = inputs.size(1)
        ones = torch.ones(inputs.size(0), 1)
        w_aug = torch.cat([wl[:n_in], bl.view(1, -1), wl[n_in:]], dim=0)
        cc, hh = common_ops.lstm(torch.cat([inputs, ones], dim=1), cl, hl, w_aug)
        next_c.append(cc)
        next_h.append(hh)
    return next_c, next_h


def tuples(obj):
    """Lists as tuples and dicts as tuples of (key, value) pairs.

    The C++ unpickler (torch::jit::pickle_load in 1.13) lacks the APPEND and SETITEM opcodes
    that Python's pickler uses for one-element lists and dicts; tuples need neither.
    """
    if isinstance(obj, (list, tuple)):
        return tuple(tuples(v) for v in obj)
    if isinstance(obj, dict):
        return tuple((k, tuples(v)) for k, v in obj.items())
    return obj


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", required=True, help="folder holding common_ops.py")
    parser.add_argument("--out", required=True, help="file to write (torch.save)")
    parser.add_argument("--seeds", default="0,1,42,4294967297", help="comma-separated seeds")
    parser.add_argument("--shapes", default="", help="extra shapes, e.g. 5x7,3x4x2")
    args = parser.parse_args()
    sys.path.insert(0, args.reference_dir)
    import common_ops  # noqa: E402

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    shapes = SHAPES + [[int(d) for d in s.split("x")] for s in args.shapes.split(",") if s]

    initializers = []
    for init, kwargs in INITS:
        conventions = ["torch", "matmul"] if init in FAN_INITS else ["torch"]
        for convention in conventions:
            for shape in shapes:
                for seed in seeds:
                    initializers.append(tensor_case(common_ops, init, kwargs, convention, shape, seed))

    lstm_sets = []
    for layers, inp, hid, bias, seed in LSTM_SETS:
        torch.manual_seed(seed)
        w = [common_ops.create_weight(f"w_{l}", [(inp if l == 0 else hid) + hid, 4 * hid]).detach()
             for l in range(layers)]
        b = [common_ops.create_bias([4 * hid]).detach() for _ in range(layers)] if bias else []
        lstm_sets.append({"layers": layers, "input_size": inp, "hidden_size": hid, "bias": bias,
                          "seed": str(seed), "weights": w, "biases": b})

    lstm_runs = []
    gen = torch.Generator().manual_seed(2024)
    with torch.no_grad():
        for layers, inp, hid, batch, bias, zero_state in LSTM_RUNS:
            w = [torch.randn((inp if l == 0 else hid) + hid, 4 * hid, generator=gen) * (1.0 / math.sqrt(hid))
                 for l in range(layers)]
            b = [torch.randn(4 * hid, generator=gen) * 0.5 for _ in range(layers)] if bias else None
            x = torch.randn(STEPS, batch, inp, generator=gen)
            if zero_state:
                c0 = [torch.zeros(batch, hid) for _ in range(layers)]
                h0 = [torch.zeros(batch, hid) for _ in range(layers)]
            else:
                c0 = [torch.randn(batch, hid, generator=gen) for _ in range(layers)]
                h0 = [torch.randn(batch, hid, generator=gen).tanh() for _ in range(layers)]
            step_c, step_h = lstm_with_bias(common_ops, x[0], c0, h0, w, b)
            c, h, outs = c0, h0, []
            for t in range(STEPS):
                c, h = lstm_with_bias(common_ops, x[t], c, h, w, b)
                outs.append(h[-1])
            lstm_runs.append({"layers": layers, "input_size": inp, "hidden_size": hid, "batch": batch,
                              "zero_state": zero_state, "weights": w, "biases": b or [], "x": x,
                              "c0": c0, "h0": h0, "step_c": step_c, "step_h": step_h,
                              "seq_out": torch.stack(outs), "seq_c": c, "seq_h": h})

    torch.save(tuples({"torch_version": str(torch.__version__), "initializers": initializers,
                       "lstm_sets": lstm_sets, "lstm_runs": lstm_runs}), args.out)
    print(f"make_reference: {len(initializers)} initializer cases, {len(lstm_sets)} LSTM sets, "
          f"{len(lstm_runs)} LSTM runs -> {args.out}")


if __name__ == "__main__":
    main()
