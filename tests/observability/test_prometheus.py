#!/usr/bin/python3
"""A real Prometheus (Debian's package, with deploy/prometheus's configuration and rules)
scrapes a real lstmserve on loopback while the test sends known traffic, then the test asks
Prometheus' HTTP API what it saw. Needs PYTHONPATH with the client and lstmserve_testing,
LSTMSERVE_SERVER_BINARY, LSTMSERVE_PROMETHEUS, LSTMSERVE_PROMTOOL, LSTMSERVE_DEPLOY_DIR."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import grpc
import torch

from lstmserve_client import Client
from lstmserve_testing import ServerProcess

DEPLOY = os.environ["LSTMSERVE_DEPLOY_DIR"]
LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, float("inf")]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def wait_for(what, fetch, ok, timeout=30.0):
    """Polls fetch() until ok(value); fails with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = fetch()
        if ok(value):
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")


def bucket_bounds(value):
    """(lower, upper) bounds of the latency bucket that holds `value`."""
    lower = 0.0
    for upper in LATENCY_BUCKETS:
        if value <= upper:
            return lower, upper
        lower = upper
    raise AssertionError(value)


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class PrometheusTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess()
        cls.client = Client(cls.server.target)
        cls.client.create_lstm(2, 64, 64, seed=1, id="s")
        cls.workdir = tempfile.mkdtemp(prefix="lstmserve-prom-")
        # The shipped configuration, pointed at this server, scraping and evaluating every
        # second; the rule files are the shipped ones.
        with open(os.path.join(DEPLOY, "prometheus", "prometheus.yml")) as f:
            config = f.read()
        replacements = {
            '"localhost:9464"': f'"{cls.server.metrics}"',
            "scrape_interval: 15s": "scrape_interval: 1s",
            "evaluation_interval: 15s": "evaluation_interval: 1s",
            "  - lstmserve-rules.yml": f"  - {DEPLOY}/prometheus/lstmserve-rules.yml",
            "  - lstmserve-alerts.yml": f"  - {DEPLOY}/prometheus/lstmserve-alerts.yml",
        }
        for old, new in replacements.items():
            assert old in config, old
            config = config.replace(old, new)
        config_path = os.path.join(cls.workdir, "prometheus.yml")
        with open(config_path, "w") as f:
            f.write(config)
        cls.prometheus_address = f"127.0.0.1:{free_port()}"
        cls.prometheus_log = open(os.path.join(cls.workdir, "prometheus.log"), "w")
        cls.prometheus = subprocess.Popen(
            [os.environ["LSTMSERVE_PROMETHEUS"], f"--config.file={config_path}",
             f"--storage.tsdb.path={cls.workdir}/data", f"--web.listen-address={cls.prometheus_address}",
             "--log.level=warn"], stdout=cls.prometheus_log, stderr=subprocess.STDOUT)
        wait_for("Prometheus to be ready", cls._ready, bool)
        # The target is up, and Prometheus holds 10 s of samples from before any inference:
        # rate() extrapolates by up to one scrape interval over the span it has samples for,
        # so a longer span keeps that within a few percent.
        wait_for("the first scrape", lambda: cls.query_value('up{job="lstmserve"}'), lambda v: v == 1)
        wait_for("10 s of scrapes", lambda: cls.query_value('count_over_time(up{job="lstmserve"}[1m])'),
                 lambda v: v is not None and v >= 10)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.prometheus.terminate()
        cls.prometheus.wait(timeout=30)
        cls.prometheus_log.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)
        assert cls.server.stop() == 0

    @classmethod
    def _ready(cls):
        try:
            with urllib.request.urlopen(f"http://{cls.prometheus_address}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    @classmethod
    def query(cls, promql):
        url = f"http://{cls.prometheus_address}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    @classmethod
    def query_value(cls, promql):
        result = cls.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def test_promtool_accepts_the_endpoint(self):
        text = scrape(self.server.metrics)
        check = subprocess.run([os.environ["LSTMSERVE_PROMTOOL"], "check", "metrics"], input=text,
                               capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        for name in ["lstmserve_requests_total", "lstmserve_request_duration_seconds", "lstmserve_batch_size_rows",
                     "lstmserve_batch_queue_wait_seconds", "lstmserve_batch_compute_seconds",
                     "lstmserve_inference_phase_seconds",
                     "lstmserve_batch_queue_depth", "lstmserve_batch_rejections_total", "lstmserve_sessions_active",
                     "lstmserve_session_steps_total", "lstmserve_parameter_sets", "lstmserve_parameter_set_bytes",
                     "lstmserve_parameter_set_derived_bytes",
                     "lstmserve_store_operations_total", "lstmserve_store_load_duration_seconds",
                     "lstmserve_build_info", "process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_open_fds", "process_threads"]:
            self.assertIn(f"# TYPE {name} ", text)

    def test_counts_rates_errors_and_latency_match_the_traffic(self):
        # 400 Step calls, one in four an error of a known code; client-side latency of each.
        sent = {"OK": 0, "NOT_FOUND": 0, "INVALID_ARGUMENT": 0}
        latencies = []
        good, bad = torch.randn(1, 64), torch.randn(1, 63)
        for i in range(400):
            set_id, x = ("s", good) if i % 4 != 3 else (("missing", good) if i % 8 == 3 else ("s", bad))
            began = time.perf_counter()
            try:
                self.client.step(set_id, x)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            latencies.append(time.perf_counter() - began)
            sent[code] += 1
        self.assertEqual(sent, {"OK": 300, "NOT_FOUND": 50, "INVALID_ARGUMENT": 50})

        step = 'lstmserve_requests_total{job="lstmserve",method="Step"}'
        wait_for("Prometheus to see every Step", lambda: self.query_value(f"sum({step})"), lambda v: v == 400)
        by_code = {r["metric"]["code"]: float(r["value"][1]) for r in self.query(f"sum by (code) ({step}) > 0")}
        self.assertEqual(by_code, {k: float(v) for k, v in sent.items()})

        # The recording rules: the error ratio is what was sent (all series share their
        # scrapes, so rate()'s extrapolation cancels), and the rate integrates to the count
        # (extrapolation adds at most one scrape interval over at least 10 s of samples).
        ratio = wait_for("the error-ratio rule", lambda: self.query_value(
            'job_method:lstmserve_requests_errors:ratio_rate1m{method="Step"}'),
            lambda v: v is not None and abs(v - 0.25) < 0.01)
        self.assertAlmostEqual(ratio, 0.25, delta=0.01)
        increase = self.query_value(f"sum(increase({step}[1m]))")
        self.assertGreaterEqual(increase, 400 * 0.95)
        self.assertLessEqual(increase, 400 * 1.15)
        rule_rate = wait_for("the request-rate rule", lambda: self.query_value(
            'job_method:lstmserve_requests:rate1m{method="Step"}'), lambda v: v is not None and v > 0)
        self.assertAlmostEqual(rule_rate * 60, 400, delta=400 * 0.2)

        # p99 from the histogram: the server times less than the client does (no client or
        # network), so its p99 lies at or below the top of the client's p99 bucket, and not
        # far below it either.
        client_p99 = quantile(latencies, 0.99)
        server_p99 = self.query_value('histogram_quantile(0.99, sum by (le) '
                                      '(lstmserve_request_duration_seconds_bucket{method="Step"}))')
        _, upper = bucket_bounds(client_p99)
        self.assertLessEqual(server_p99, upper, f"client p99 {client_p99:.6f} s")
        self.assertGreaterEqual(server_p99, min(latencies) * 0.1, f"client p99 {client_p99:.6f} s")
        print(f"client p99 {client_p99 * 1e3:.3f} ms, Prometheus histogram_quantile p99 {server_p99 * 1e3:.3f} ms")

        # The server's own hops: one observation of each phase per successful Step (the
        # refused ones never reach a batch), each a small part of the call.
        for phase in ("decode", "validate", "encode"):
            series = f'lstmserve_inference_phase_seconds_count{{job="lstmserve",phase="{phase}"}}'
            wait_for(f"the {phase} phase of every OK Step", lambda: self.query_value(series), lambda v: v == 300)
            mean = self.query_value(f'lstmserve_inference_phase_seconds_sum{{phase="{phase}"}} / {series}')
            self.assertLess(mean, quantile(latencies, 0.5), phase)
            self.assertGreater(mean, 0, phase)

    def test_sessions_sets_and_build_info(self):
        session = self.client.session("s", 2)
        for _ in range(25):
            session.step(torch.randn(2, 64))
        session.close()
        wait_for("25 session steps", lambda: self.query_value('lstmserve_session_steps_total{job="lstmserve"}'),
                 lambda v: v is not None and v >= 25)
        self.assertEqual(self.query_value('lstmserve_sessions_active{job="lstmserve"}'), 0)
        self.assertEqual(self.query_value('lstmserve_store_operations_total{operation="write",result="ok"}'),
                         self.query_value('lstmserve_parameter_sets'))
        info = self.query('lstmserve_build_info{job="lstmserve"}')
        self.assertEqual(len(info), 1)
        self.assertEqual(info[0]["metric"]["device"], "cpu")
        self.assertRegex(info[0]["metric"]["libtorch_version"], r"^\d+\.\d+")
        self.assertIn(info[0]["metric"]["blas"], ("openblas", "mkl"))
        self.assertIn(info[0]["metric"]["isa"], ("avx512", "avx2_vnni", "avx2", "baseline"))
        self.assertGreater(self.query_value('process_resident_memory_bytes{job="lstmserve"}'), 10 << 20)

    def test_cardinality_does_not_grow_with_sets_or_clients(self):
        count = 'count({__name__=~"lstmserve_.+", job="lstmserve"})'
        before = wait_for("a series count", lambda: self.query_value(count), lambda v: v is not None)
        for i in range(5):
            self.client.create_lstm(1, 4, 4, seed=i, id=f"card-{i}")
            other = Client(self.server.target)  # a new client each time
            other.get(f"card-{i}")
            other.close()
        wait_for("the new sets in a scrape", lambda: self.query_value("lstmserve_parameter_sets"),
                 lambda v: v is not None and v >= 6)
        self.assertEqual(self.query_value(count), before)
        labels = {v for series in self.query('{__name__=~"lstmserve_.+", job="lstmserve"}')
                  for v in series["metric"].values()}
        self.assertFalse({f"card-{i}" for i in range(5)} & labels)


if __name__ == "__main__":
    unittest.main(verbosity=2)
