#!/usr/bin/python3
"""TLS, mutual TLS and bearer tokens against the real server, with certificates this test
makes with openssl: what gets in, what is kept out, and with which status. Needs PYTHONPATH
with the client and lstmserve_testing, LSTMSERVE_SERVER_BINARY and LSTMSERVE_CLI_BINARY."""
import os
import shutil
import socket
import subprocess
import tempfile
import unittest

import grpc
import torch

from lstmserve_client import Client
from lstmserve_testing import ServerProcess

TOKENS = ["token-for-team-a-0123456789", "token-for-team-b-9876543210"]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_cert(d, ca, name, san=None):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    ext = f"{name}.ext"
    with open(os.path.join(d, ext), "w") as f:
        f.write(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", f"{name}.pem", cwd=d)


def read(d, name):
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


class SecurityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = tempfile.mkdtemp(prefix="lstmserve-tls-")
        make_ca(cls.d, "ca")
        make_ca(cls.d, "rogue-ca")
        make_cert(cls.d, "ca", "server", san="IP:127.0.0.1,DNS:localhost")
        make_cert(cls.d, "ca", "client")
        make_cert(cls.d, "rogue-ca", "rogue-client")
        with open(os.path.join(cls.d, "tokens"), "w") as f:
            f.write("# one token per line\n" + "\n".join(TOKENS) + "\n")
        cls.tls = [f"--tls_cert_file={cls.d}/server.pem", f"--tls_key_file={cls.d}/server.key"]
        cls.mtls = cls.tls + [f"--tls_client_ca_file={cls.d}/ca.pem"]
        cls.tokens = [f"--auth_tokens_file={cls.d}/tokens"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.d, ignore_errors=True)

    def assertRefused(self, client, code=grpc.StatusCode.UNAVAILABLE):
        with self.assertRaises(grpc.RpcError) as caught:
            client.list()
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        client.close()
        return caught.exception.details()

    def works(self, client):
        meta = client.create_lstm(1, 4, 8, seed=1)
        c, h = client.step(meta.id, torch.ones(1, 4))
        self.assertEqual(list(h[0].shape), [1, 8])
        self.assertEqual(client.health(), "SERVING")
        client.close()

    def test_tls(self):
        with ServerProcess(*self.tls) as server:
            self.works(Client(server.target, root_certificates=read(self.d, "ca.pem")))
            self.assertRefused(Client(server.target, timeout=5))  # plaintext to a TLS port
            self.assertRefused(Client(server.target, timeout=5, root_certificates=read(self.d, "rogue-ca.pem")))

    def test_mutual_tls(self):
        with ServerProcess(*self.mtls) as server:
            ca = read(self.d, "ca.pem")
            self.works(Client(server.target, root_certificates=ca, private_key=read(self.d, "client.key"),
                              certificate_chain=read(self.d, "client.pem")))
            self.assertRefused(Client(server.target, timeout=5, root_certificates=ca))  # no client certificate
            self.assertRefused(Client(server.target, timeout=5, root_certificates=ca,
                                      private_key=read(self.d, "rogue-client.key"),
                                      certificate_chain=read(self.d, "rogue-client.pem")))

    def test_bearer_tokens(self):
        with ServerProcess(*self.tokens) as server:
            for token in TOKENS:
                self.works(Client(server.target, token=token))
            anonymous = Client(server.target)
            self.assertEqual(anonymous.health(), "SERVING")  # probes need no token
            details = self.assertRefused(anonymous, grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("authorization: Bearer", details)
            wrong = Client(server.target, token=TOKENS[0] + "x")
            self.assertEqual(self.assertRefused(wrong, grpc.StatusCode.UNAUTHENTICATED), "the bearer token is not valid")
            # Every RPC is guarded, streams included.
            good = Client(server.target, token=TOKENS[1])
            set_id = good.create_lstm(1, 4, 8, seed=2).id
            good.close()
            bad = Client(server.target, token="not-a-token-at-all")
            calls = {
                "create": lambda: bad.create_lstm(1, 4, 4),
                "get": lambda: bad.get(set_id),
                "delete": lambda: bad.delete(set_id),
                "export": lambda: bad.export(set_id),
                "import": lambda: bad.import_tensors({"w": torch.zeros(2, 2)}),
                "step": lambda: bad.step(set_id, torch.ones(1, 4)),
                "run": lambda: bad.run(set_id, torch.ones(2, 1, 4)),
                "session": lambda: bad.session(set_id, 1).step(torch.ones(1, 4)),
            }
            for name, call in calls.items():
                with self.subTest(rpc=name):
                    with self.assertRaises(grpc.RpcError) as caught:
                        call()
                    self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            bad.close()
            self.assertIn("code=UNAUTHENTICATED", server.log())
            self.assertNotIn(TOKENS[0], server.log())

    def test_cli_with_mutual_tls_and_a_token(self):
        with ServerProcess(*(self.mtls + self.tokens)) as server:
            with open(os.path.join(self.d, "token-file"), "w") as f:
                f.write(TOKENS[0] + "\n")
            cli = [os.environ["LSTMSERVE_CLI_BINARY"], f"--target={server.target}", f"--tls_ca_file={self.d}/ca.pem",
                   f"--tls_cert_file={self.d}/client.pem", f"--tls_key_file={self.d}/client.key"]
            ok = subprocess.run(cli + [f"--token_file={self.d}/token-file", "create", "--id=cli-tls", "--layers=1",
                                       "--input_size=4", "--hidden_size=4"], capture_output=True, text=True)
            self.assertEqual(ok.returncode, 0, ok.stderr)
            no_token = subprocess.run(cli + ["get", "--id=cli-tls"], capture_output=True, text=True)
            self.assertEqual(no_token.returncode, 1)
            self.assertIn("UNAUTHENTICATED", no_token.stderr)
            bench = subprocess.run(cli + [f"--token_file={self.d}/token-file", "bench", "--id=cli-tls", "--requests=20",
                                          "--warmup=0s", "--concurrency=2"], capture_output=True, text=True)
            self.assertEqual(bench.returncode, 0, bench.stderr)
            self.assertIn("errors: none", bench.stdout)

    def test_bad_security_flags_stop_the_server(self):
        binary = os.environ["LSTMSERVE_SERVER_BINARY"]
        with open(os.path.join(self.d, "short-tokens"), "w") as f:
            f.write("short\n")
        cases = [
            ([f"--tls_cert_file={self.d}/server.pem"], 2, "--tls_cert_file and --tls_key_file go together"),
            ([f"--tls_client_ca_file={self.d}/ca.pem"], 2, "needs --tls_cert_file"),
            ([f"--tls_cert_file={self.d}/missing.pem", f"--tls_key_file={self.d}/server.key"], 2, "cannot read"),
            ([f"--tls_cert_file={self.d}/tokens", f"--tls_key_file={self.d}/server.key"], 2, "is not PEM"),
            ([f"--tls_cert_file={self.d}/server.pem", f"--tls_key_file={self.d}/client.key"], 2,
             "is not the key of the certificate"),
            ([f"--tls_cert_file={self.d}/server.pem", f"--tls_key_file={self.d}/server.pem"], 2,
             "holds no unencrypted PEM private key"),
            ([f"--auth_tokens_file={self.d}/short-tokens"], 2, "at least 16 characters"),
        ]
        # The environment, not a flag: the address is taken.
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        cases.append(([f"--listen=127.0.0.1:{taken.getsockname()[1]}"], 1, "cannot listen on"))
        for flags, code, message in cases:
            with self.subTest(flags=flags), tempfile.TemporaryDirectory() as store:
                result = subprocess.run([binary, "--listen=127.0.0.1:0", "--metrics_listen=", "--http_listen=", f"--store_dir={store}",
                                         *flags], capture_output=True, text=True, timeout=60)
                self.assertEqual(result.returncode, code, result.stderr)
                self.assertIn(message, result.stderr)
                if code == 2:
                    self.assertNotIn("in use", result.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
