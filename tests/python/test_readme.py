"""README's quick start, run as written against a real server: the CLI's commands (whose .pt
export torch.load must read with its defaults), then the Python shell block (a virtual
environment over Debian's Python and its torch 1.13, `pip install client/python`, the example
that checks a set against the reference code) and the Python block after it. The only changes
are where the environment goes (a temporary folder, not ~/lstmserve-venv) and the address (the
test server's free port, not localhost:50051). An outside check found this example failing: the
stubs that pip generated needed a newer grpcio than the package declared, and pip kept Debian's.
Needs PyPI. Run by ctest with LSTMSERVE_SERVER_BINARY, LSTMSERVE_CLI_BINARY, LSTMSERVE_TOOLS_PYTHON
(PyTorch 2.11) and LSTMSERVE_REFERENCE_DIR."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from lstmserve_testing import ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_blocks(after):
    """The ```sh and ```python blocks that follow the paragraph starting with `after`."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(after)
    blocks = re.findall(r"```(sh|python)\n(.*?)```", text[start:], re.S)
    return blocks[0][1], blocks[1][1]


class ReadmeTest(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="lstmserve-readme-")
        os.makedirs(os.path.join(self.work, "store"))
        self.server = ServerProcess(store=os.path.join(self.work, "store"))

    def tearDown(self):
        self.server.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def test_the_python_quick_start_runs_as_written(self):
        shell, python = readme_blocks("Then the same from Python")
        self.assertIn("~/lstmserve-venv", shell)
        self.assertIn("localhost:50051", python)
        venv = os.path.join(self.work, "lstmserve-venv")
        shell = shell.replace("~/lstmserve-venv", venv).replace("localhost:50051", self.server.target)
        python = python.replace("localhost:50051", self.server.target)
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        self.assertEqual(run.returncode, 0, f"README's shell block failed:\n{run.stdout}\n{run.stderr}")
        script = os.path.join(self.work, "example.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(python + "\nprint('outputs', tuple(outputs.shape))\n")
        run = subprocess.run([os.path.join(venv, "bin", "python"), script], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        self.assertEqual(run.returncode, 0, f"README's Python block failed:\n{run.stdout}\n{run.stderr}")
        self.assertIn("outputs (10, 1, 64)", run.stdout)
        # The venv sees Debian's grpcio (1.51) too: pip must have put the one the stubs need
        # in front of it.
        version = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import grpc; print(grpc.__version__)"],
                                 capture_output=True, text=True, timeout=60)
        major, minor = (int(p) for p in version.stdout.split(".")[:2])
        self.assertGreaterEqual((major, minor), (1, 76), version.stdout + version.stderr)


    def test_the_shell_quick_start_runs_as_written_and_torch_loads_its_export(self):
        shell = readme_blocks("With the server running, create a set")[0]
        cli = os.environ["LSTMSERVE_CLI_BINARY"]
        self.assertIn("build/client/lstmserve-cli ", shell)
        shell = (shell.replace("build/client/lstmserve-cli ", f"{cli} --target={self.server.target} ")
                 .replace("--out=enas.pt", f"--out={self.work}/enas.pt"))
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        self.assertEqual(run.returncode, 0, f"README's shell block failed:\n{run.stdout}\n{run.stderr}")
        # "torch.load('enas.pt') reads it": with its defaults, in PyTorch 1.13 and 2.11 alike.
        check = ("import torch; d = torch.load('enas.pt'); "
                 "assert type(d) is dict and sorted(d) == ['w_0', 'w_1'], d; print(torch.__version__)")
        for python in (sys.executable, os.environ["LSTMSERVE_TOOLS_PYTHON"]):
            run = subprocess.run([python, "-c", check], cwd=self.work, capture_output=True, text=True, timeout=120)
            self.assertEqual(run.returncode, 0, f"{python}: torch.load failed:\n{run.stderr}")

    def test_the_http_blocks_of_the_open_inference_section_run_as_written(self):
        """"Over HTTP with curl" (create, metadata, infer) and the statistics and repository
        block after it, in order, with the test server's ports."""
        blocks = readme_blocks("Over HTTP with curl")
        self.assertIn("create --id=s", blocks[0])
        self.assertIn("/v2/repository/index", blocks[1])
        cli = os.environ["LSTMSERVE_CLI_BINARY"]
        outputs = []
        for block in blocks[:2]:
            shell = (block.replace("build/client/lstmserve-cli --target=localhost:50051 ",
                                   f"{cli} --target={self.server.target} ")
                     .replace("localhost:8000", self.server.http)
                     .replace("curl -s ", "curl -sS --fail-with-body "))
            run = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=ROOT, capture_output=True,
                                 text=True, timeout=120)
            self.assertEqual(run.returncode, 0, f"README's block failed:\n{shell}\n{run.stdout}\n{run.stderr}")
            outputs.append(run.stdout)
        self.assertIn('"name":"HN"', outputs[0])
        # curl prints the bodies back to back: stats, index, (unload), index, (load).
        out = outputs[1]
        self.assertTrue(out.startswith('{"model_stats":[{"batch_stats":[{"batch_size":1'), out)
        ready = out.index('{"name":"s","reason":"","state":"READY"')
        self.assertGreater(out.index('{"name":"s","reason":"unloaded","state":"UNAVAILABLE"'), ready, out)



if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]] + sys.argv[1:])
