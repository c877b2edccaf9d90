#!/usr/bin/python3
"""Creates a stacked-LSTM set on a lstmserve server, recreates it with the reference code
(../shared/reference/common_ops.py), and checks that the weights are bit-identical and a
50-step sequence agrees with stack_lstm within 1e-5.

Usage: PYTHONPATH=build/client/python client/python/examples/recreate_reference.py \
         --target localhost:50051 --reference-dir ../shared/reference [--seed 42]
"""
import argparse
import sys

import torch

from lstmserve_client import Client


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="localhost:50051")
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=64)
    args = p.parse_args()
    sys.path.insert(0, args.reference_dir)
    import common_ops

    client = Client(args.target)
    set_id = f"example-{args.seed}-{args.layers}-{args.input_size}-{args.hidden_size}"
    try:
        client.delete(set_id)
    except Exception:
        pass
    meta = client.create_lstm(args.layers, args.input_size, args.hidden_size, seed=args.seed, id=set_id)
    served = client.export(set_id)

    torch.manual_seed(args.seed)
    w = [common_ops.create_weight(f"w_{l}", [(args.input_size if l == 0 else args.hidden_size) + args.hidden_size,
                                             4 * args.hidden_size]).detach() for l in range(args.layers)]
    identical = all(torch.equal(served[f"w_{l}"], w[l]) for l in range(args.layers))
    print(f"set {meta.id}: {len(served)} tensors, checksum {meta.checksum}")
    print(f"weights bit-identical to torch.manual_seed({args.seed}) + create_weight: {identical}")

    x = torch.randn(50, 3, args.input_size, generator=torch.Generator().manual_seed(7))
    outputs, _, _ = client.run(set_id, x)
    c = [torch.zeros(3, args.hidden_size)] * args.layers
    h = [torch.zeros(3, args.hidden_size)] * args.layers
    expected = []
    with torch.no_grad():
        for t in range(50):
            c, h = common_ops.stack_lstm(x[t], c, h, w)
            expected.append(h[-1])
    diff = (outputs - torch.stack(expected)).abs().max().item()
    print(f"50-step sequence vs stack_lstm: max abs difference {diff:.2e}")
    client.delete(set_id)
    return 0 if identical and diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
