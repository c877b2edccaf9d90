"""`pip install client/python` in a fresh virtual environment (no system packages, so no torch:
numpy in and out), then its synchronous and asyncio clients against the real server, checked
against the reference code here. Needs PyPI (grpcio, protobuf, numpy; grpcio-tools to build).
Run by ctest with LSTMSERVE_SERVER_BINARY and LSTMSERVE_REFERENCE_DIR."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

from lstmserve_testing import ServerProcess

sys.path.insert(0, os.environ["LSTMSERVE_REFERENCE_DIR"])
import common_ops  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in the fresh environment: prints one JSON object.
USER_SCRIPT = r'''
import asyncio, json, sys
import numpy as np
import lstmserve_client
from lstmserve_client import Client
from lstmserve_client.aio import AsyncClient

target = sys.argv[1]
out = {"package_dir": lstmserve_client.__file__}
try:
    Client(target, as_numpy=False)
    out["torch_refused"] = False
except ImportError as e:
    out["torch_refused"] = "lstmserve-client[torch]" in str(e)
client = Client(target)
meta = client.create_lstm(2, 5, 4, seed=9, id="pip-sync")
weights = client.export("pip-sync")
out["weights"] = {k: [str(v.dtype), list(v.shape), v.ravel().tolist()] for k, v in weights.items()}
x = np.random.default_rng(1).standard_normal((6, 3, 5)).astype(np.float32)
outputs, c, h = client.run("pip-sync", x)
out["run"] = outputs.ravel().tolist()
out["run_type"] = type(outputs).__name__
out["checksum_equal"] = lstmserve_client.checksum(weights) == meta.checksum

async def main():
    async with AsyncClient(target) as aclient:
        out["health"] = await aclient.health()
        a_outputs, _, _ = await aclient.run("pip-sync", x)
        out["async_equal"] = bool(np.array_equal(a_outputs, outputs))
        session = await aclient.session("pip-sync", batch_size=3)
        steps = [await session.step(x[t]) for t in range(6)]
        out["session_named"] = session.sequence_id.startswith("session-")
        await session.close()
        out["session_equal"] = bool(np.array_equal(np.stack(steps), outputs))
        await aclient.import_tensors({"w_0": weights["w_0"]}, id="pip-async")
        out["listed"] = sorted(s.id for s in await aclient.list())
        await aclient.delete("pip-async")
        try:
            await aclient.get("pip-async")
            out["deleted"] = False
        except Exception as e:
            out["deleted"] = "NOT_FOUND" in str(e.code())
asyncio.run(main())
client.close()
print(json.dumps(out))
'''


class PipInstallTest(unittest.TestCase):
    def test_fresh_environment_installs_and_both_clients_work(self):
        work = tempfile.mkdtemp(prefix="lstmserve-pip-")
        try:
            # The package builds from the repository (its stubs come from proto/): a copy of
            # what it needs, so the build leaves nothing in the source tree.
            shutil.copytree(os.path.join(ROOT, "proto"), os.path.join(work, "repo", "proto"))
            shutil.copytree(os.path.join(ROOT, "client", "python"), os.path.join(work, "repo", "client", "python"),
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            venv = os.path.join(work, "venv")
            subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True)
            python = os.path.join(venv, "bin", "python")
            install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                      os.path.join(work, "repo", "client", "python")],
                                     capture_output=True, text=True, timeout=900)
            self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
            files = subprocess.run([python, "-m", "pip", "show", "-f", "lstmserve-client"], capture_output=True,
                                   text=True, check=True).stdout
            for name in ("lstmserve_client/py.typed", "lstmserve_client/aio.py", "lstmserve/v1/inference_service_pb2.py",
                         "lstmserve/v1/inference_service_pb2.pyi", "lstmserve/v1/parameter_service_pb2_grpc.py"):
                self.assertIn(name, files)
            with ServerProcess() as server:
                result = subprocess.run([python, "-c", USER_SCRIPT, server.target], capture_output=True, text=True,
                                        timeout=300, cwd=work)
                self.assertEqual(result.returncode, 0, result.stderr)
            out = json.loads(result.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(work, ignore_errors=True)

        self.assertTrue(out["package_dir"].startswith(venv), out["package_dir"])
        self.assertTrue(out["torch_refused"])
        self.assertEqual(out["run_type"], "ndarray")
        torch.manual_seed(9)
        reference = [common_ops.create_weight(f"w_{l}", [(5 if l == 0 else 4) + 4, 16]).detach() for l in range(2)]
        for l, w in enumerate(reference):
            dtype, shape, values = out["weights"][f"w_{l}"]
            self.assertEqual((dtype, shape), ("float32", list(w.shape)))
            self.assertTrue(torch.equal(torch.tensor(values, dtype=torch.float32).reshape(shape), w), f"w_{l}")
        self.assertTrue(out["checksum_equal"])
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((6, 3, 5)).astype(np.float32))
        c, h, expected = [torch.zeros(3, 4)] * 2, [torch.zeros(3, 4)] * 2, []
        with torch.no_grad():
            for t in range(6):
                c, h = common_ops.stack_lstm(x[t], c, h, reference)
                expected.append(h[-1])
        got = torch.tensor(out["run"]).reshape(6, 3, 4)
        self.assertLessEqual((got - torch.stack(expected)).abs().max().item(), 1e-5)
        self.assertEqual(out["health"], "SERVING")
        self.assertTrue(out["async_equal"])
        self.assertTrue(out["session_equal"])
        self.assertTrue(out["session_named"])
        self.assertEqual(out["listed"], ["pip-async", "pip-sync"])
        self.assertTrue(out["deleted"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
