"""Runs the real lstmserve binary for Python tests: 127.0.0.1, ephemeral ports, a temporary
store. LSTMSERVE_SERVER_BINARY names the binary."""
import os
import shutil
import subprocess
import tempfile
import unittest


def cpu_info_field(name):
    """The first value of a field of /proc/cpuinfo ("" off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags():
    """The flags of /proc/cpuinfo (empty off Linux)."""
    return set(cpu_info_field("flags").split())


def cpu_vendor():
    """/proc/cpuinfo's vendor_id: GenuineIntel, AuthenticAMD ("" off Linux)."""
    return cpu_info_field("vendor_id")


# Whether the server runs the core's packed GEMMs (lstm_kernels.h, HasPackedF32 and the
# others): on every x86-64-v3 CPU, unless a cap (LSTMSERVE_ISA=baseline) takes them away.
# A float32 set then packs its weights once more on its first call, counted in its bytes.
PACKED_GEMMS = ({"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"} <= cpu_flags()
                and os.environ.get("LSTMSERVE_ISA", "native") != "baseline")


class ServerProcess:
    """lstmserve on 127.0.0.1:0 with metrics and the HTTP API on 127.0.0.1:0; `target`,
    `metrics` and `http` are the HOST:PORT it printed. Use as a context manager, or call stop()."""

    def __init__(self, *flags, store=None, log_name="server.log"):
        self._own_store = store is None
        self.store = store or tempfile.mkdtemp(prefix="lstmserve-py-")
        self.log_path = os.path.join(self.store, log_name)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [os.environ["LSTMSERVE_SERVER_BINARY"], "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             "--http_listen=127.0.0.1:0", f"--store_dir={self.store}", "--threads=1", *flags],
            stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"lstmserve did not start: {line!r}; log: {self.log()}")
        self.target = line.split()[-1]
        self.metrics = None
        if "--metrics_listen=" not in flags:
            line = self.process.stdout.readline()
            assert line.startswith("metrics on "), line
            self.metrics = line.split()[-1]
        self.http = None
        if "--http_listen=" not in flags:
            line = self.process.stdout.readline()
            assert line.startswith("http on "), line
            self.http = line.split()[-1]

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        """SIGTERM (drain); returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        status = self.process.wait(timeout=30)
        self.process.stdout.close()
        self._log.close()
        if self._own_store:
            shutil.rmtree(self.store, ignore_errors=True)
        return status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ServerTestCase(unittest.TestCase):
    """A test class with one server (`cls.server`) and a Client on it (`cls.client`) for all
    its tests; the server must drain and exit 0 at the end. Subclasses may set FLAGS and
    override prepare(cls) to make what their tests share."""

    FLAGS = ()

    @classmethod
    def setUpClass(cls):
        from lstmserve_client import Client  # the built client, on PYTHONPATH beside this file
        cls.server = ServerProcess(*cls.FLAGS)
        cls.client = Client(cls.server.target)
        cls.prepare()

    @classmethod
    def prepare(cls):
        pass

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        assert cls.server.stop() == 0, cls.server.log()
