"""deploy/kserve: the ServingRuntime and InferenceService examples checked against the fields
KServe documents (serving.kserve.io v1alpha1 ServingRuntime, v1beta1 InferenceService), then
the runtime's own container arguments run for real: the server binary started with them (its
ports moved to loopback), serving a /mnt/models stand-in written by Python's
safetensors.torch.save_file, as KServe's storage initializer would leave it. Needs
LSTMSERVE_DEPLOY_DIR, LSTMSERVE_SERVER_BINARY; runs in the tritonclient environment
(PyYAML, safetensors, torch)."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.parse
import urllib.request

import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from lstmserve_testing import ServerProcess  # noqa: E402

KSERVE = os.path.join(os.environ["LSTMSERVE_DEPLOY_DIR"], "kserve")
# What KServe's documentation names: the protocol versions a runtime may declare, the
# folder the storage initializer fills, the container the model server runs in, and the
# storage URI schemes its initializer downloads.
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
MODEL_MOUNT = "/mnt/models"
CONTAINER = "kserve-container"
STORAGE_SCHEMES = {"s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf"}


def load(name):
    with open(os.path.join(KSERVE, name)) as f:
        return yaml.safe_load(f)


def flags(args):
    """{flag: value} of --name=value arguments."""
    out = {}
    for a in args:
        m = re.fullmatch(r"--(\w+)=(.*)", a)
        assert m, f"argument {a!r} is not --name=value"
        out[m.group(1)] = m.group(2)
    return out


def port(address):
    return int(address.rsplit(":", 1)[1])


class ManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.runtime = load("servingruntime.yaml")
        cls.services = [load(n) for n in sorted(os.listdir(KSERVE)) if n.startswith("inferenceservice")]
        cls.container = cls.runtime["spec"]["containers"][0]
        cls.args = flags(cls.container["args"])

    def test_the_runtime_has_the_fields_kserve_documents(self):
        r = self.runtime
        self.assertEqual(r["apiVersion"], "serving.kserve.io/v1alpha1")
        self.assertIn(r["kind"], {"ServingRuntime", "ClusterServingRuntime"})
        self.assertEqual(r["metadata"]["name"], "lstmserve")
        for f in r["spec"]["supportedModelFormats"]:
            self.assertIsInstance(f["name"], str)
            self.assertIsInstance(f["version"], str)
            self.assertIsInstance(f.get("autoSelect", False), bool)
        self.assertTrue(set(r["spec"]["protocolVersions"]) <= PROTOCOLS, r["spec"]["protocolVersions"])
        self.assertEqual(set(r["spec"]["protocolVersions"]), {"v2", "grpc-v2"})
        self.assertEqual(self.container["name"], CONTAINER)
        self.assertTrue(self.container["securityContext"]["runAsNonRoot"])
        # The ports KServe routes to (HTTP 8080; gRPC where the InferenceService's h2c port
        # says), the folder its storage initializer fills, and the metrics it scrapes.
        self.assertEqual(self.args["model_dir"], MODEL_MOUNT)
        self.assertEqual(port(self.args["http_listen"]), 8080)
        annotations = r["spec"]["annotations"]
        self.assertEqual(int(annotations["prometheus.kserve.io/port"]), port(self.args["metrics_listen"]))
        self.assertEqual(annotations["prometheus.kserve.io/path"], "/metrics")

    def test_every_argument_is_a_flag_of_the_server(self):
        help_text = subprocess.run([os.environ["LSTMSERVE_SERVER_BINARY"], "--help"], capture_output=True,
                                   text=True).stdout
        known = set(re.findall(r"^  --(\w+) ", help_text, re.M))
        self.assertIn("model_dir", known)
        self.assertEqual(set(self.args) - known, set())

    def test_the_inference_services_name_the_runtime_and_a_storage_uri(self):
        formats = {f["name"] for f in self.runtime["spec"]["supportedModelFormats"]}
        self.assertEqual(len(self.services), 2)
        for s in self.services:
            self.assertEqual(s["apiVersion"], "serving.kserve.io/v1beta1")
            self.assertEqual(s["kind"], "InferenceService")
            model = s["spec"]["predictor"]["model"]
            self.assertIn(model["modelFormat"]["name"], formats)
            self.assertEqual(model["runtime"], self.runtime["metadata"]["name"])
            self.assertIn(model["protocolVersion"], self.runtime["spec"]["protocolVersions"])
            self.assertIn(urllib.parse.urlparse(model["storageUri"]).scheme, STORAGE_SCHEMES)
            if model["protocolVersion"] == "grpc-v2":
                h2c = [p for p in model["ports"] if p["name"] == "h2c"]
                self.assertEqual([p["containerPort"] for p in h2c], [port(self.args["listen"])])

    def test_the_runtime_serves_a_folder_python_wrote(self):
        """The container's arguments as written, but for loopback ports and the folder."""
        work = tempfile.mkdtemp(prefix="lstmserve-kserve-")
        models = os.path.join(work, "mnt-models")
        os.makedirs(models)
        g = torch.Generator().manual_seed(1)
        save_file({"w_0": torch.randn(4 + 5, 20, generator=g), "b_0": torch.zeros(20)},
                  os.path.join(models, "enas.safetensors"))
        with open(os.path.join(models, "enas.json"), "w") as f:
            json.dump({"num_layers": 1, "input_size": 4, "hidden_size": 5, "bias": True}, f)
        with open(os.path.join(models, "SHA256SUMS"), "w") as out:
            for name in ("enas.json", "enas.safetensors"):
                with open(os.path.join(models, name), "rb") as f:
                    out.write(f"{hashlib.sha256(f.read()).hexdigest()}  {name}\n")
        args = [a.replace(MODEL_MOUNT, models) for a in self.container["args"]]
        args = [re.sub(r"=0\.0\.0\.0:\d+$", "=127.0.0.1:0", a) for a in args]
        try:
            with ServerProcess(*args, store=work) as server:
                with urllib.request.urlopen(f"http://{server.http}/v2/models/enas/ready", timeout=10) as r:
                    self.assertEqual(r.status, 200)
                body = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 1, 4],
                                               "data": [0.1, 0.2, 0.3, 0.4]}]}).encode()
                request = urllib.request.Request(f"http://{server.http}/v2/models/enas/infer", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as r:
                    outputs = {o["name"]: o for o in json.load(r)["outputs"]}
                self.assertEqual(outputs["OUTPUT"]["shape"], [1, 1, 5])
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
