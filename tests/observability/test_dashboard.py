#!/usr/bin/python3
"""The Grafana dashboard and its provisioning: every panel's query names only metrics the
server exports (read from a real server's /metrics) or the recording rules define, and the
provisioning files point where the dashboard is. Needs PYTHONPATH with lstmserve_testing,
LSTMSERVE_SERVER_BINARY and LSTMSERVE_DEPLOY_DIR."""
import json
import os
import re
import unittest
import urllib.request

import yaml

from lstmserve_testing import ServerProcess

DEPLOY = os.environ["LSTMSERVE_DEPLOY_DIR"]
SERVER_SOURCE = os.path.join(DEPLOY, "..", "server", "src", "metrics.cc")
# Exported only by servers on CUDA; checked to be in the server's source instead.
CUDA_ONLY = {"lstmserve_cuda_memory_allocated_bytes", "lstmserve_cuda_memory_reserved_bytes"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                "unless", "inf", "nan"}


def exported_names(text):
    """Series names in an exposition: counters and gauges as named, histograms' three."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


def metric_names(expr):
    """The metric names a PromQL expression reads (functions, keywords, labels and Grafana
    variables left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # strings
    e = re.sub(r"\{[^}]*\}", "", e)                         # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                        # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)                       # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or re.fullmatch(r"[0-9.e]+", word):
            continue
        names.add(word)
    return names


def panels(dashboard):
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with ServerProcess() as server:
            with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10) as r:
                cls.exported = exported_names(r.read().decode())
        with open(os.path.join(DEPLOY, "prometheus", "lstmserve-rules.yml")) as f:
            cls.recorded = {rule["record"] for group in yaml.safe_load(f)["groups"] for rule in group["rules"]
                            if "record" in rule}
        with open(os.path.join(DEPLOY, "grafana", "dashboards", "lstmserve.json")) as f:
            cls.dashboard = json.load(f)

    def test_the_parser_finds_names(self):
        self.assertEqual(metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job"}[5m])))'),
                         {"a_bucket"})
        self.assertEqual(metric_names("x:y:rate1m{m=\"a b\"} / on (job) z > 0.5"), {"x:y:rate1m", "z"})

    def test_every_query_names_exported_or_recorded_metrics(self):
        with open(SERVER_SOURCE) as f:
            source = f.read()
        for name in CUDA_ONLY:
            self.assertIn(f'"{name}"', source)
        known = self.exported | self.recorded | CUDA_ONLY | {"up"}
        seen = set()
        for panel in panels(self.dashboard):
            for target in panel.get("targets", []):
                names = metric_names(target["expr"])
                self.assertTrue(names, f"{panel['title']}: no metric in {target['expr']}")
                self.assertLessEqual(names, known, f"panel '{panel['title']}' names unknown metrics")
                seen |= names
        for variable in self.dashboard["templating"]["list"]:
            if variable["type"] == "query":  # Grafana's label_values(SERIES, LABEL)
                series = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"]).group(1)
                self.assertLessEqual(metric_names(series), known)
        # It shows what the issue asks for: requests, errors, latency, batching, sessions,
        # parameter memory, process.
        for wanted in ["job_method:lstmserve_requests:rate1m", "job_method:lstmserve_requests_errors:ratio_rate1m",
                       "job_method:lstmserve_request_duration_seconds:p99_1m", "job:lstmserve_batch_size_rows:mean_rate1m",
                       "job:lstmserve_batch_queue_wait_seconds:p99_1m", "job_reason:lstmserve_batch_rejections:rate1m",
                       "lstmserve_sessions_active", "lstmserve_parameter_set_bytes",
                       "lstmserve_parameter_set_derived_bytes", "process_resident_memory_bytes",
                       "process_cpu_seconds_total"]:
            self.assertIn(wanted, seen)

    def test_panels_are_well_formed(self):
        ids = [p["id"] for p in panels(self.dashboard)]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in panels(self.dashboard):
            self.assertTrue(panel["title"])
            if panel["type"] != "row":
                self.assertEqual(panel["datasource"]["uid"], "${datasource}")
                self.assertLessEqual(panel["gridPos"]["x"] + panel["gridPos"]["w"], 24)

    def test_provisioning_points_at_the_dashboard(self):
        with open(os.path.join(DEPLOY, "grafana", "provisioning", "dashboards", "lstmserve.yml")) as f:
            provider = yaml.safe_load(f)["providers"][0]
        self.assertEqual(provider["type"], "file")
        self.assertTrue(provider["options"]["path"])
        with open(os.path.join(DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yml")) as f:
            source = yaml.safe_load(f)["datasources"][0]
        self.assertEqual(source["type"], "prometheus")


if __name__ == "__main__":
    unittest.main(verbosity=2)
