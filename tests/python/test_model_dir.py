"""--model_dir, the KServe runtime's way to serve sets: files that Python's
`safetensors.torch.save_file` wrote (as a training job would, then KServe's storage
initializer copies them to /mnt/models), with an LSTM spec beside one and a SHA256SUMS, served
read only and answered through tritonclient: within 1e-5 of common_ops.py and bit for bit as
the same tensors imported into a server's own store. Files that do not check out stop the
start, naming what is wrong. Runs in the tritonclient environment (LSTMSERVE_OIP_PYTHON, over
Debian's Python and its torch 1.13, with safetensors from PyPI).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from safetensors.torch import save_file
from tritonclient.utils import InferenceServerException

from lstmserve_testing import ServerProcess

sys.path.insert(0, os.environ["LSTMSERVE_REFERENCE_DIR"])
import common_ops  # noqa: E402

L, I, H = 2, 6, 8


def write_model_dir(path):
    """Two sets as a training job writes them: `enas` (2 layers, a spec beside it) and
    `tiny` (1 layer, no spec: the names say it is an LSTM), with a SHA256SUMS."""
    os.makedirs(path)
    g = torch.Generator().manual_seed(3)
    enas = {f"w_{l}": torch.randn((I if l == 0 else H) + H, 4 * H, generator=g) * 0.3 for l in range(L)}
    save_file(enas, os.path.join(path, "enas.safetensors"))
    with open(os.path.join(path, "enas.json"), "w") as f:
        json.dump({"num_layers": L, "input_size": I, "hidden_size": H, "bias": False}, f)
    save_file({"w_0": torch.randn(4 + 3, 12, generator=g)}, os.path.join(path, "tiny.safetensors"))
    write_sums(path)
    return enas


def write_sums(path):
    with open(os.path.join(path, "SHA256SUMS"), "w") as out:
        for name in sorted(os.listdir(path)):
            if name != "SHA256SUMS":
                with open(os.path.join(path, name), "rb") as f:
                    out.write(f"{hashlib.sha256(f.read()).hexdigest()}  {name}\n")


def snapshot(path):
    out = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            out[name] = f.read()
    return out


def cli(target, *args):
    return subprocess.run([os.environ["LSTMSERVE_CLI_BINARY"], f"--target={target}", *args], capture_output=True,
                          text=True)


class ModelDirTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="lstmserve-model-dir-")
        cls.models = os.path.join(cls.work, "models")
        cls.weights = write_model_dir(cls.models)
        cls.before = snapshot(cls.models)
        cls.server = ServerProcess(f"--model_dir={cls.models}")
        cls.grpc = grpcclient.InferenceServerClient(cls.server.target)
        cls.http = httpclient.InferenceServerClient(cls.server.http)

    @classmethod
    def tearDownClass(cls):
        cls.grpc.close()
        cls.http.close()
        assert cls.server.stop() == 0, cls.server.log()
        shutil.rmtree(cls.work, ignore_errors=True)

    def infer(self, client, model, x):
        module = grpcclient if client is self.grpc else httpclient
        t = module.InferInput("INPUT", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        return client.infer(model, [t]).as_numpy("OUTPUT")

    def test_every_file_is_served_and_answers_as_the_reference(self):
        index = {m.name: m.state for m in self.grpc.get_model_repository_index().models}
        self.assertEqual(index, {"enas": "READY", "tiny": "READY"})
        meta = self.http.get_model_metadata("enas")
        self.assertEqual([(t["name"], t["shape"]) for t in meta["inputs"]],
                         [("INPUT", [-1, -1, I]), ("C0", [L, -1, H]), ("H0", [L, -1, H])])
        x = np.random.default_rng(5).standard_normal((4, 3, I)).astype(np.float32)
        got = self.infer(self.grpc, "enas", x)
        np.testing.assert_array_equal(self.infer(self.http, "enas", x), got)
        w = [self.weights[f"w_{l}"] for l in range(L)]
        c = [torch.zeros(3, H)] * L
        h = [torch.zeros(3, H)] * L
        expected = []
        with torch.no_grad():
            for t in range(4):
                c, h = common_ops.stack_lstm(torch.from_numpy(x[t]), c, h, w)
                expected.append(h[-1].numpy())
        np.testing.assert_allclose(got, np.stack(expected), atol=1e-5, rtol=0)
        self.assertEqual(self.infer(self.grpc, "tiny", np.ones((1, 2, 4), np.float32)).shape, (1, 2, 3))

        # Bit for bit as the same file imported into a server's own store.
        with ServerProcess() as store_server:
            imported = cli(store_server.target, "import", f"--in={self.models}/enas.safetensors", "--id=enas")
            self.assertEqual(imported.returncode, 0, imported.stderr)
            client = grpcclient.InferenceServerClient(store_server.target)
            t = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("enas", [t]).as_numpy("OUTPUT"), got)
            client.close()

    def test_the_folder_is_read_only_and_never_written(self):
        deleted = cli(self.server.target, "delete", "--id=enas")
        self.assertEqual(deleted.returncode, 1)
        self.assertIn("read only (--model_dir)", deleted.stderr)
        created = cli(self.server.target, "create", "--id=new", "--layers=1", "--input_size=2", "--hidden_size=2")
        self.assertEqual(created.returncode, 1)
        self.assertIn("read only (--model_dir)", created.stderr)
        # Unload and load are the memory's, not the folder's.
        self.grpc.unload_model("tiny")
        self.assertFalse(self.grpc.is_model_ready("tiny"))
        self.grpc.load_model("tiny")
        self.assertTrue(self.grpc.is_model_ready("tiny"))
        self.assertEqual(snapshot(self.models), self.before)


class ReadmeExampleTest(unittest.TestCase):
    def test_readmes_export_by_hand_runs_as_written_and_is_served(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
            text = f.read()
        start = text.index("A training job's export, by hand:")
        block = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
        work = tempfile.mkdtemp(prefix="lstmserve-readme-models-")
        try:
            run = subprocess.run([sys.executable, "-c", block], cwd=work, capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, run.stderr)
            with ServerProcess(f"--model_dir={work}/models", store=work) as server:
                client = httpclient.InferenceServerClient(server.http)
                self.assertTrue(client.is_model_ready("enas"))
                self.assertEqual(client.get_model_metadata("enas")["inputs"][0]["shape"], [-1, -1, 64])
                client.close()
        finally:
            shutil.rmtree(work, ignore_errors=True)


class ModelDirRefusedTest(unittest.TestCase):
    """A folder whose files do not check out: the server does not start, and says why."""

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="lstmserve-model-dir-bad-")
        self.models = os.path.join(self.work, "models")
        write_model_dir(self.models)

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def assertRefused(self, fragment):
        with self.assertRaises(RuntimeError) as caught:
            ServerProcess(f"--model_dir={self.models}", store=self.work).stop()
        self.assertIn(fragment, str(caught.exception))

    def test_a_changed_byte_fails_its_checksum(self):
        path = os.path.join(self.models, "enas.safetensors")
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
        self.assertRefused("enas.safetensors: SHA-256")

    def test_a_file_missing_from_sha256sums_is_refused(self):
        save_file({"w_0": torch.zeros(4, 4)}, os.path.join(self.models, "extra.safetensors"))
        self.assertRefused("extra.safetensors is not listed in the model directory's SHA256SUMS")

    def test_a_spec_that_does_not_fit_the_tensors_is_refused(self):
        with open(os.path.join(self.models, "enas.json"), "w") as f:
            json.dump({"num_layers": L, "input_size": I + 1, "hidden_size": H, "bias": False}, f)
        write_sums(self.models)
        self.assertRefused(f"w_0 must be [{I + 1 + H}, {4 * H}]")

    def test_no_folder(self):
        shutil.rmtree(self.models)
        self.assertRefused("is not a readable folder")


if __name__ == "__main__":
    unittest.main(verbosity=2)
