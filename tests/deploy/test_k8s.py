#!/usr/bin/python3
"""Renders every kustomize overlay in deploy/k8s with `kubectl kustomize` and checks what a
deployment must hold: probes on the gRPC port, a grace period longer than preStop plus the
drain, a non-root read-only container, limits, the shared store, balancing, autoscaling on
CPU and on the queue, and the GPU overlay's GPU. Needs LSTMSERVE_DEPLOY_DIR,
LSTMSERVE_SERVER_BINARY and kubectl (exits 77, a skip, without it)."""
import os
import re
import shutil
import subprocess
import sys
import unittest

import yaml

DEPLOY = os.environ["LSTMSERVE_DEPLOY_DIR"]
OVERLAYS = ["cpu", "gpu", "cpu-redis"]


def render(overlay):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "k8s", "overlays", overlay)],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def duration_seconds(text):
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


class OverlayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {o: render(o) for o in OVERLAYS}
        cls.server_flags = set(re.findall(r"^  --(\w+) ", subprocess.run(
            [os.environ["LSTMSERVE_SERVER_BINARY"], "--help"], capture_output=True, text=True).stdout, re.M))
        assert "drain_timeout" in cls.server_flags

    def one(self, docs, kind, name=None):
        found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
        self.assertEqual(len(found), 1, f"{kind} {name or ''}")
        return found[0]

    def container_flags(self, docs):
        """The server's flags in order: the ConfigMap's file, then the container's args."""
        container = self.one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        flags = []
        for arg in container["args"]:
            if arg.startswith("--flagfile="):
                self.assertEqual(arg, "--flagfile=/etc/lstmserve/flags")
                config = self.one(docs, "ConfigMap")
                flags += [line for line in config["data"]["flags"].splitlines()
                          if line.strip() and not line.startswith("#")]
            else:
                flags.append(arg)
        values = {}
        for flag in flags:
            name, _, value = flag[2:].partition("=")
            self.assertIn(name, self.server_flags, f"--{name} is not a flag of lstmserve")
            values[name] = value
        return values

    def test_every_overlay(self):
        for overlay, docs in self.rendered.items():
            with self.subTest(overlay=overlay):
                deployment = self.one(docs, "Deployment")
                pod = deployment["spec"]["template"]["spec"]
                labels = deployment["spec"]["template"]["metadata"]["labels"]
                self.assertEqual(deployment["spec"]["replicas"], 2)
                self.assertEqual(deployment["spec"]["selector"]["matchLabels"].items() - labels.items(), set())
                self.assertEqual(len(pod["containers"]), 1)
                c = pod["containers"][0]
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                flags = self.container_flags(docs)
                self.assertEqual(flags["listen"], f"0.0.0.0:{ports['grpc']}")
                self.assertEqual(flags["metrics_listen"], f"0.0.0.0:{ports['metrics']}")
                self.assertEqual(flags["http_listen"], f"0.0.0.0:{ports['http']}")
                self.assertEqual(flags["store_dir"], "/data")

                # gRPC health probes on the gRPC port.
                for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
                    self.assertEqual(c[probe]["grpc"]["port"], ports["grpc"], probe)
                # Grace period > preStop pause + drain.
                pause = c["lifecycle"]["preStop"]["exec"]["command"]
                self.assertEqual(pause[0], "sleep")
                self.assertGreater(pod["terminationGracePeriodSeconds"],
                                   float(pause[1]) + duration_seconds(flags["drain_timeout"]))
                # Non-root, read-only, no capabilities, seccomp.
                self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                self.assertGreater(pod["securityContext"]["runAsUser"], 0)
                self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
                sc = c["securityContext"]
                self.assertTrue(sc["readOnlyRootFilesystem"])
                self.assertFalse(sc["allowPrivilegeEscalation"])
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                # Requests and limits for CPU and memory; threads fit the CPU limit.
                for kind in ["requests", "limits"]:
                    self.assertIn("cpu", c["resources"][kind])
                    self.assertIn("memory", c["resources"][kind])
                self.assertLessEqual(int(flags["threads"]), int(c["resources"]["limits"]["cpu"]))
                # The store: a ReadWriteMany claim mounted at --store_dir.
                volumes = {v["name"]: v for v in pod["volumes"]}
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
                self.assertEqual(self.one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"],
                                 ["ReadWriteMany"])
                self.assertEqual(volumes[mounts["/etc/lstmserve"]]["configMap"]["name"],
                                 self.one(docs, "ConfigMap")["metadata"]["name"])
                self.assertIn("/tmp", mounts)  # writable scratch under a read-only root

                # Services: one with a virtual IP, one headless for round_robin; both select the pods.
                services = [d for d in docs if d["kind"] == "Service"
                            and d["spec"]["selector"].get("app.kubernetes.io/name") == "lstmserve"]
                self.assertEqual(len(services), 2)
                headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
                self.assertEqual(len(headless), 1)
                for s in services:
                    self.assertEqual(s["spec"]["selector"].items() - labels.items(), set())
                    grpc_port = [p for p in s["spec"]["ports"] if p["name"] == "grpc"][0]
                    self.assertEqual(grpc_port["targetPort"], "grpc")
                # Disruption budget and autoscaler.
                pdb = self.one(docs, "PodDisruptionBudget")
                self.assertEqual(pdb["spec"]["selector"]["matchLabels"].items() - labels.items(), set())
                self.assertLess(pdb["spec"]["minAvailable"], deployment["spec"]["replicas"])
                hpa = self.one(docs, "HorizontalPodAutoscaler")
                self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
                self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"])
                metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
                self.assertEqual(metrics["Resource"]["resource"]["name"], "cpu")
                self.assertEqual(metrics["Pods"]["pods"]["metric"]["name"], "lstmserve_batch_queue_depth")
                self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)
                # ServiceMonitor scrapes a port the Service has.
                monitor = self.one(docs, "ServiceMonitor")
                service = [s for s in services if s is not headless[0]][0]
                self.assertIn(monitor["spec"]["endpoints"][0]["port"], [p["name"] for p in service["spec"]["ports"]])

                gpus = c["resources"]["limits"].get("nvidia.com/gpu")
                if overlay == "gpu":
                    self.assertEqual(flags["device"], "cuda")
                    self.assertEqual(gpus, "1")
                    self.assertEqual(pod["nodeSelector"]["nvidia.com/gpu.present"], "true")
                    self.assertIn("nvidia.com/gpu", [t["key"] for t in pod["tolerations"]])
                    self.assertTrue(c["image"].endswith("-cuda"))
                else:
                    self.assertEqual(flags["device"], "cpu")
                    self.assertIsNone(gpus)

    def test_the_redis_overlay_points_every_pod_at_a_durable_redis(self):
        docs = self.rendered["cpu-redis"]
        flags = self.container_flags(docs)
        self.assertNotIn("sequence_store", self.container_flags(self.rendered["cpu"]))  # memory by default
        match = re.fullmatch(r"redis://([\w.-]+):(\d+)/0", flags["sequence_store"])
        self.assertIsNotNone(match, flags["sequence_store"])
        service = self.one(docs, "Service", match.group(1))
        self.assertEqual([p["port"] for p in service["spec"]["ports"]], [int(match.group(2))])
        redis = self.one(docs, "StatefulSet", "lstmserve-redis")
        pod = redis["spec"]["template"]
        self.assertEqual(service["spec"]["selector"].items() - pod["metadata"]["labels"].items(), set())
        # Not the lstmserve pods' labels: the lstmserve Services must not select Redis.
        self.assertNotEqual(pod["metadata"]["labels"]["app.kubernetes.io/name"], "lstmserve")
        args = pod["spec"]["containers"][0]["args"]
        settings = dict(zip(args[::2], args[1::2]))
        self.assertEqual(settings["--appendonly"], "yes")
        self.assertEqual(settings["--appendfsync"], "always")  # acknowledged steps survive a crash
        self.assertEqual(settings["--maxmemory-policy"], "noeviction")
        mount = pod["spec"]["containers"][0]["volumeMounts"][0]
        self.assertEqual(mount["mountPath"], settings["--dir"])
        self.assertEqual(redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], mount["name"])

    def test_adapter_rule_serves_the_hpa_metric(self):
        with open(os.path.join(DEPLOY, "k8s", "prometheus-adapter", "rules.yaml")) as f:
            rule = yaml.safe_load(f)["rules"]["custom"][0]
        self.assertEqual(rule["name"]["as"], "lstmserve_batch_queue_depth")
        self.assertTrue(rule["seriesQuery"].startswith("lstmserve_batch_queue_depth{"))
        self.assertEqual(rule["resources"]["overrides"]["pod"]["resource"], "pod")


class ComposeTest(unittest.TestCase):
    def test_the_local_stack_mounts_what_exists(self):
        with open(os.path.join(DEPLOY, "compose.yaml")) as f:
            compose = yaml.safe_load(f)
        services = compose["services"]
        self.assertEqual(set(services), {"lstmserve", "redis", "prometheus", "grafana"})
        # Sequences in the stack's Redis, by its service name.
        self.assertIn("--sequence_store=redis://redis:6379/0", services["lstmserve"]["command"])
        self.assertIn("redis", services["lstmserve"]["depends_on"])
        self.assertIn("--appendonly", services["redis"]["command"])
        self.assertIn("9464:9464", services["lstmserve"]["ports"])
        for name in ["prometheus", "grafana"]:
            for volume in services[name]["volumes"]:
                source = volume.split(":")[0]
                self.assertTrue(os.path.exists(os.path.join(DEPLOY, source)), volume)
        config = services["prometheus"]["command"][0].split("=")[1].replace("/etc/prometheus/", "prometheus/")
        with open(os.path.join(DEPLOY, config)) as f:
            targets = yaml.safe_load(f)["scrape_configs"][0]["static_configs"][0]["targets"]
        self.assertEqual(targets, ["lstmserve:9464"])


if __name__ == "__main__":
    if shutil.which("kubectl") is None:
        print("kubectl is not installed: skipped (the overlays need `kubectl kustomize`)")
        sys.exit(77)
    unittest.main(verbosity=2)
