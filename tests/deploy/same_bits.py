"""One set of bits across builds: the same specs and seeds, created by two lstmserve servers
built differently (the quick start's build/ and the container image's pypi-cpu build, or the
image itself), exported and compared tensor by tensor, byte for byte: every initializer,
two seeds, with and without bias; the matmul fan convention; int8 and bfloat16 weight
storage. Exits 1 naming every tensor that differs.

Usage: same_bits.py --cli CLI --server A [--server B | --target HOST:PORT]
  --server BINARY   start this lstmserve on 127.0.0.1 with a store of its own
  --target H:P      use a server already running (the image, from deploy/image-test.sh)
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import read_safetensors  # noqa: E402

# The case's name, and its --weight_init ("": the template's default, kaiming_uniform).
INITIALIZERS = {"default": "", "uniform": "uniform:-0.1:0.1", "normal": "normal:0.02", "xavier_uniform": "xavier_uniform",
                "xavier_normal": "xavier_normal", "kaiming_uniform": "kaiming_uniform:0.5",
                "kaiming_normal": "kaiming_normal", "orthogonal": "orthogonal", "trunc_normal": "trunc_normal:0.02",
                "sparse": '{"sparse": {"sparsity": 0.3}}'}
SEEDS = [1, 123456789]


def tensors(path):
    """{name: (dtype, shape, bytes)} of a .safetensors file."""
    return {name: (dtype, shape, data) for name, dtype, shape, data in read_safetensors.raw(path)[1]}


class Server:
    def __init__(self, binary):
        self.store = tempfile.mkdtemp(prefix="lstmserve-bits-")
        self.log = open(os.path.join(self.store, "server.log"), "w")
        self.process = subprocess.Popen(
            [binary, "--listen=127.0.0.1:0", "--metrics_listen=", "--http_listen=", f"--store_dir={self.store}/sets",
             "--threads=1"], stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"{binary} did not start: {line!r}")
        self.target = line.split()[-1]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.store, ignore_errors=True)


def created(cli, target, out_dir):
    """Creates every case on `target` and exports it; returns {case: tensors}."""
    os.makedirs(out_dir)
    sets = {}
    for label, init in INITIALIZERS.items():
        for seed in SEEDS:
            for bias in (False, True):
                name = f"{label}-{seed}-{int(bias)}"
                args = [cli, f"--target={target}", "create", f"--id={name}", "--layers=2", "--input_size=48",
                        "--hidden_size=96", f"--seed={seed}", f"--bias={str(bias).lower()}"]
                if init:
                    args.append(f"--weight_init={init}")
                subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
                path = os.path.join(out_dir, name + ".safetensors")
                subprocess.run([cli, f"--target={target}", "export", f"--id={name}", f"--out={path}"], check=True,
                               stdout=subprocess.DEVNULL)
                sets[name] = tensors(path)
    # The other spec settings that change what is drawn or stored.
    for name, extra in {"matmul-fan": ["--weight_init=kaiming_normal", "--fan_convention=matmul"],
                        "orthogonal-int8": ["--weight_init=orthogonal", "--weight_storage=int8"],
                        "trunc-normal-bf16": ["--weight_init=trunc_normal:0.02", "--weight_storage=bfloat16"]}.items():
        subprocess.run([cli, f"--target={target}", "create", f"--id={name}", "--layers=2", "--input_size=48",
                        "--hidden_size=96", "--seed=5", *extra], check=True, stdout=subprocess.DEVNULL)
        path = os.path.join(out_dir, name + ".safetensors")
        subprocess.run([cli, f"--target={target}", "export", f"--id={name}", f"--out={path}"], check=True,
                       stdout=subprocess.DEVNULL)
        sets[name] = tensors(path)
    return sets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cli", required=True)
    parser.add_argument("--server", action="append", default=[])
    parser.add_argument("--target", action="append", default=[])
    args = parser.parse_args()
    if len(args.server) + len(args.target) != 2:
        parser.error("name two servers: --server twice, or --server and --target")
    work = tempfile.mkdtemp(prefix="lstmserve-bits-out-")
    servers = [Server(b) for b in args.server]
    try:
        targets = [s.target for s in servers] + args.target
        labels = args.server + args.target
        a, b = (created(args.cli, t, os.path.join(work, str(i))) for i, t in enumerate(targets))
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    differ, count, elements = [], 0, 0
    for name, ta in a.items():
        for tensor, (dtype, shape, data) in ta.items():
            count += 1
            elements += len(data) // 4
            if b[name].get(tensor) != (dtype, shape, data):
                differ.append(f"{name}/{tensor}")
    print(f"same_bits: {len(a)} sets, {count} tensors ({elements} elements) from {labels[0]} and {labels[1]}: "
          f"{'identical' if not differ else str(len(differ)) + ' tensors differ'}")
    for d in differ:
        print(f"  differs: {d}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
