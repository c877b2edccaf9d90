"""Sequences across replicas: three lstmserve replicas on one parameter store and one real Redis
(redis-server, started here on 127.0.0.1 with an append-only file), spoken to by Triton's client
(gRPC) and plain HTTP/JSON. Every request goes to a random replica with its sequence_step; a
replica is SIGKILLed or SIGTERMed (drained) and restarted every 0.5 s, Redis is restarted once, and failed
requests are retried elsewhere. Every sequence must equal one uninterrupted run of its inputs,
with no step lost or applied twice, and every deliberate retry must be answered bit for bit.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lstmserve_testing import ServerProcess

L, I, H = 2, 4, 8
SEQUENCES, STEPS = 64, 100
TOL = 1e-5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """redis-server on 127.0.0.1:`port`, in its own folder, fsyncing its append-only file on every
    write (so a SIGKILL loses nothing it acknowledged)."""

    def __init__(self, port=None, folder=None):
        self.port = port or free_port()
        self.folder = folder or tempfile.mkdtemp(prefix="lstmserve-redis-")
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.folder, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def grpc_infer(target, x, sequence_id, step, start=False, end=False):
    """(OUTPUT, sequence_step after) over gRPC, or raises InferenceServerException."""
    with grpcclient.InferenceServerClient(target) as client:
        t = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        params = {} if step is None else {"sequence_step": step}
        result = client.infer("m", [t], sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                              parameters=params, client_timeout=20)
        return result.as_numpy("OUTPUT"), result.get_response().parameters["sequence_step"].uint64_param


def http_infer(address, x, sequence_id, step, start=False, end=False):
    """(OUTPUT, sequence_step after) over HTTP/JSON, or raises (urllib's errors)."""
    params = {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}
    if step is not None:
        params["sequence_step"] = step
    body = json.dumps({"inputs": [{"name": "INPUT", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}], "parameters": params}).encode()
    request = urllib.request.Request(f"http://{address}/v2/models/m/infer", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as reply:
        answer = json.loads(reply.read())
    out = next(o for o in answer["outputs"] if o["name"] == "OUTPUT")
    return np.array(out["data"], np.float32).reshape(out["shape"]), answer["parameters"]["sequence_step"]


class Replicas:
    """Three servers on one store folder and one Redis; kill() SIGKILLs one and starts it again."""

    def __init__(self, redis_url, count=3, *flags):
        self.store = tempfile.mkdtemp(prefix="lstmserve-replicas-")
        self.flags = (f"--sequence_store={redis_url}", "--sequence_store_timeout=2s", "--drain_timeout=20s", *flags)
        self.lock = threading.Lock()
        self.started = 0
        self.servers = [self.start() for _ in range(count)]
        self.drain_seconds = []

    def start(self):
        self.started += 1  # each its own log: replicas share the store folder
        return ServerProcess(*self.flags, store=self.store, log_name=f"server-{self.started}.log")

    def pick(self):
        with self.lock:
            return random.choice(self.servers)

    def kill_one(self, graceful=False):
        """SIGKILL (a crash), or SIGTERM (a rolling update: the replica drains, its steps in
        flight finish and are written), then a new replica in its place. Returns the stopped
        replica's exit status."""
        with self.lock:
            i = random.randrange(len(self.servers))
            victim = self.servers[i]
        if graceful:
            began = time.monotonic()
            status = victim.stop()
            self.drain_seconds.append(time.monotonic() - began)
            if self.drain_seconds[-1] > 5:
                print("slow drain; the replica's log:\n" + victim.log()[-3000:])
        else:
            victim.process.send_signal(signal.SIGKILL)
            status = victim.stop()
        replacement = self.start()
        with self.lock:
            self.servers[i] = replacement
        return status

    def close(self):
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.store, ignore_errors=True)


class SequenceFailoverTest(unittest.TestCase):
    def test_sequences_survive_killed_replicas_and_a_restarted_redis_exactly_once(self):
        redis = Redis()
        replicas = Replicas(redis.url)
        stop = threading.Event()
        try:
            first = replicas.servers[0]
            subprocess.run([os.environ["LSTMSERVE_CLI_BINARY"], f"--target={first.target}", "create", "--id=m",
                            f"--layers={L}", f"--input_size={I}", f"--hidden_size={H}", "--seed=3"], check=True, stdout=subprocess.DEVNULL)
            rng = np.random.default_rng(7)
            batch = [1 if s % 2 == 0 else 3 for s in range(SEQUENCES)]
            inputs = [rng.standard_normal((STEPS, batch[s], I)).astype(np.float32) for s in range(SEQUENCES)]
            # Each sequence in requests of 1 to 3 steps.
            plans = []
            for s in range(SEQUENCES):
                cuts, t = [], 0
                while t < STEPS:
                    n = min(int(rng.integers(1, 4)), STEPS - t)
                    cuts.append((t, n))
                    t += n
                plans.append(cuts)

            outputs = [[None] * len(plans[s]) for s in range(SEQUENCES)]
            counts = {"requests": 0, "failures": 0, "retries_checked": 0, "kills": 0, "redis_restarts": 0}
            count_lock = threading.Lock()
            errors = []

            def send(x, sid, step, start, end):
                """One request, retried on other replicas until it is answered (bounded)."""
                deadline = time.monotonic() + 60
                while True:
                    server = replicas.pick()
                    try:
                        if random.random() < 0.5:
                            return grpc_infer(server.target, x, sid, step, start, end)
                        return http_infer(server.http, x, sid, step, start, end)
                    except (InferenceServerException, urllib.error.URLError, ConnectionError, OSError) as e:
                        if isinstance(e, urllib.error.HTTPError):
                            text = f"HTTP {e.code}: {e.read()[:300]!r}"
                            retriable = e.code in (409, 503, 504)  # ABORTED, UNAVAILABLE, DEADLINE_EXCEEDED
                        elif isinstance(e, InferenceServerException):
                            text = f"{e.status()}: {e.message()}"
                            # CANCELLED: a draining replica's gRPC server cancels what it will not run.
                            retriable = any(code in str(e.status()) for code in
                                            ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED"))
                        else:  # the connection failed or was reset: the replica died
                            text, retriable = repr(e), True
                        with count_lock:
                            counts["failures"] += 1
                        if not retriable or time.monotonic() > deadline:
                            raise AssertionError(f"sequence {sid} step {step}: {text}")
                        time.sleep(0.05)

            def worker(ids):
                try:
                    for s in ids:
                        sid = f"seq-{s}" if s % 2 else s + 1  # string and uint64 ids
                        for k, (t, n) in enumerate(plans[s]):
                            x = inputs[s][t:t + n]
                            start, end = k == 0, k == len(plans[s]) - 1
                            if end and s == ids[-1]:  # the chaos happens while every worker is mid-sequence
                                chaos_done.wait(120)
                            out, after = send(x, sid, t, start, end)
                            self.assertEqual(after, t + n, f"sequence {sid}")
                            outputs[s][k] = out
                            with count_lock:
                                counts["requests"] += 1
                            if k % 10 == 5 and not end:  # a deliberate retry: the same answer, bit for bit
                                again, after_again = send(x, sid, t, start, end)
                                self.assertEqual(after_again, t + n)
                                self.assertTrue(np.array_equal(again, out), f"sequence {sid} retry at {t}")
                                with count_lock:
                                    counts["retries_checked"] += 1
                except BaseException as e:  # noqa: BLE001 (reported by the main thread)
                    errors.append(e)

            chaos_done = threading.Event()
            drained = []  # the exit statuses of the replicas stopped with SIGTERM

            def killer():  # a replica every 0.5 s, SIGKILL and SIGTERM in turn; Redis once, after the second
                nonlocal redis
                while not stop.wait(0.5):
                    graceful = counts["kills"] % 2 == 1
                    status = replicas.kill_one(graceful)
                    if graceful:
                        drained.append(status)
                    with count_lock:
                        counts["kills"] += 1
                    if counts["kills"] == 2:
                        port, folder = redis.port, redis.folder
                        redis.kill()
                        time.sleep(0.3)
                        redis = Redis(port, folder)  # the same address, its append-only file replayed
                        counts["redis_restarts"] += 1
                    if counts["kills"] >= 4:
                        chaos_done.set()

            workers = [threading.Thread(target=worker, args=(list(range(w, SEQUENCES, 8)),)) for w in range(8)]
            chaos = threading.Thread(target=killer)
            began = time.monotonic()
            for t in workers:
                t.start()
            chaos.start()
            for t in workers:
                t.join(600)
            stop.set()
            chaos.join(60)
            elapsed = time.monotonic() - began
            if errors:
                raise errors[0]
            print(f"{counts['requests']} requests of {SEQUENCES} sequences x {STEPS} steps in {elapsed:.1f} s; "
                  f"{counts['kills']} replicas killed, Redis restarted once; {counts['failures']} failed attempts "
                  f"retried; {counts['retries_checked']} deliberate retries answered bit for bit")
            self.assertGreaterEqual(counts["kills"], 4)
            self.assertEqual(drained, [0] * len(drained))  # each drained and exited 0
            print("SIGTERM to exit: " + ", ".join(f"{d:.2f} s" for d in replicas.drain_seconds))
            # A drain ends when the calls in flight are answered, not at --drain_timeout (20 s).
            self.assertLess(max(replicas.drain_seconds), 10)
            self.assertEqual(counts["redis_restarts"], 1)

            # Every sequence equals one uninterrupted run of its inputs (no sequence: one request).
            worst = 0.0
            server = replicas.pick()
            for s in range(SEQUENCES):
                with grpcclient.InferenceServerClient(server.target) as client:
                    t = grpcclient.InferInput("INPUT", list(inputs[s].shape), "FP32")
                    t.set_data_from_numpy(inputs[s])
                    whole = client.infer("m", [t]).as_numpy("OUTPUT")
                got = np.concatenate(outputs[s])
                self.assertEqual(got.shape, whole.shape)
                worst = max(worst, float(np.abs(got - whole).max()))
            print(f"largest difference from one uninterrupted run: {worst:.2e}")
            self.assertLessEqual(worst, TOL)
        finally:
            stop.set()
            replicas.close()
            redis.kill()
            shutil.rmtree(redis.folder, ignore_errors=True)

    def test_redis_unreachable_at_start_and_mid_run_gives_unavailable_and_stateless_calls_go_on(self):
        port = free_port()
        replicas = Replicas(f"redis://127.0.0.1:{port}", 1)
        redis = None
        try:
            server = replicas.servers[0]
            subprocess.run([os.environ["LSTMSERVE_CLI_BINARY"], f"--target={server.target}", "create", "--id=m",
                            f"--layers={L}", f"--input_size={I}", f"--hidden_size={H}", "--seed=3"], check=True, stdout=subprocess.DEVNULL)
            x = np.ones((1, 1, I), np.float32)
            with self.assertRaises(InferenceServerException) as caught:
                grpc_infer(server.target, x, 5, 0, start=True)
            self.assertIn("UNAVAILABLE", str(caught.exception.status()))
            self.assertIn(f"redis://127.0.0.1:{port}", caught.exception.message())
            # A request without a sequence does not need the store.
            with grpcclient.InferenceServerClient(server.target) as client:
                t = grpcclient.InferInput("INPUT", [1, 1, I], "FP32")
                t.set_data_from_numpy(x)
                self.assertEqual(client.infer("m", [t]).as_numpy("OUTPUT").shape, (1, 1, H))
            # Redis comes: sequences work (after the reconnect backoff, at most 2 s).
            redis = Redis(port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    out, after = grpc_infer(server.target, x, 5, 0, start=True)
                    break
                except InferenceServerException:
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.2)
            self.assertEqual(after, 1)
            # Redis goes mid-sequence: UNAVAILABLE, and nothing applied; back, the sequence goes on.
            redis.kill()
            with self.assertRaises(InferenceServerException) as caught:
                grpc_infer(server.target, x, 5, 1)
            self.assertIn("UNAVAILABLE", str(caught.exception.status()))
            redis = Redis(port, redis.folder)
            deadline = time.monotonic() + 10
            while True:
                try:
                    _, after = grpc_infer(server.target, x, 5, 1)
                    break
                except InferenceServerException as e:
                    self.assertIn("UNAVAILABLE", str(e.status()), e.message())
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.2)
            self.assertEqual(after, 2)
            metrics = urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=10).read().decode()
            self.assertIn('lstmserve_sequence_store_operations_total{operation="commit",result="error"', metrics)
        finally:
            replicas.close()
            if redis is not None:
                redis.kill()
                shutil.rmtree(redis.folder, ignore_errors=True)


class ReadmeTest(unittest.TestCase):
    def test_the_readme_shared_sequences_block_runs_as_written(self):
        """README's "Shared sequences" commands, on free ports and folders of their own."""
        readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
        with open(readme) as f:
            text = f.read()
        section = text[text.index("### Shared sequences"):]
        start = section.index("```sh\n") + 6
        block = section[start:section.index("\n```", start)]
        work = tempfile.mkdtemp(prefix="lstmserve-readme-")
        try:
            for port in ("6390", "50061", "50062", "8001", "8002", "9471", "9472"):
                block = re.sub(rf"\b{port}\b", str(free_port()), block)
            block = (block.replace("/tmp/lstmserve-redis", f"{work}/redis")
                     .replace("/tmp/lstmserve-shared", f"{work}/shared")
                     .replace("build/server/lstmserve", os.environ["LSTMSERVE_SERVER_BINARY"])
                     .replace("build/client/lstmserve-cli", os.environ["LSTMSERVE_CLI_BINARY"]))
            out = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=120).stdout
            answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            self.assertEqual([a["parameters"]["sequence_step"] for a in answers], [1, 2, 2], out)
            self.assertEqual(answers[1]["outputs"], answers[2]["outputs"])
            self.assertNotEqual(answers[0]["outputs"], answers[1]["outputs"])
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
