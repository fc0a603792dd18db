"""test_config.py — configuration as docs/config.md states it: defaults, then the
--config file, then flags, then CHARTER_* variables (--print-config shows the
result); a bad file, variable or flag stops `charter serve` with one line on stderr
and exit code 1 (file/environment) or 64 (flag); settings take effect (max_body)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error  # noqa: E402


def serve(args, env=None, timeout=10):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    if env:
        e.update(env)
    return subprocess.run([harness.charter_bin(), "serve"] + args, capture_output=True,
                          text=True, env=e, timeout=timeout)


class Config(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="charter-it-cfg-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, text, name="charter.yaml"):
        p = os.path.join(self.dir, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def print_config(self, args, env=None):
        p = serve(args + ["--print-config"], env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def test_layers(self):
        cfg = self.write("threads: 2\nsessions:\n  retention:\n    sweep_interval: 5m\n"
                         "sessions.retention.close_idle_after: 1h\nmax_body: 512KiB\n")
        c = self.print_config(["--config", cfg])
        self.assertEqual(c["threads"], 2)
        self.assertEqual(c["sessions.retention.sweep_interval"], "300000ms")
        self.assertEqual(c["sessions.retention.close_idle_after"], "3600000ms")
        self.assertEqual(c["max_body"], 524288)
        # a flag beats the file, wherever --config stands
        c = self.print_config(["--threads", "4", "--config", cfg])
        self.assertEqual(c["threads"], 4)
        # the environment beats both
        c = self.print_config(["--config", cfg, "--threads", "4"],
                              env={"CHARTER_THREADS": "8",
                                   "CHARTER_SESSIONS_RETENTION_SWEEP_INTERVAL": "2s"})
        self.assertEqual(c["threads"], 8)
        self.assertEqual(c["sessions.retention.sweep_interval"], "2000ms")
        # defaults
        c = self.print_config([])
        self.assertEqual((c["listen"], c["max_body"], c["drain_timeout"], c["threads"]),
                         ("127.0.0.1:7433", 1048576, "10000ms", 0))
        self.assertEqual(c["sessions.retention.delete_archived_after"], "0ms")
        # the output is itself a valid config file
        again = self.write(json.dumps(c), "again.yaml")
        self.assertEqual(self.print_config(["--config", again]), c)

    def test_bad_file_or_environment(self):
        cases = [
            ("listen_addr: 1.2.3.4:5\n", "unknown config key 'listen_addr'"),
            ("sessions:\n  retention:\n    bogus: 1s\n",
             "unknown config key 'sessions.retention.bogus'"),
            ("sessions:\n  retentoin:\n    sweep_interval: 1s\n", "unknown config key"),
            ("sessions: 5\n", "unknown config key"),
            ("drain_timeout: 30\n", "drain_timeout"),
            ("sessions.retention.sweep_interval: soon\n", "sweep_interval"),
            ("max_body: 1.5MiB\n", "max_body"),
            ("log_level: LOUD\n", "log_level"),
            ("listen: [a, b]\n", "listen"),
            ("- a\n- b\n", "top level"),
            ("sessions: [1, 2\n", ""),
            ("data_dir:\n", "data_dir"),
        ]
        for text, needle in cases:
            with self.subTest(config=text):
                cfg = self.write(text)
                p = serve(["--config", cfg, "--data-dir", os.path.join(self.dir, "d"),
                           "--listen", "127.0.0.1:%d" % harness.free_port()])
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertTrue(p.stderr.startswith("charter serve: %s" % cfg), p.stderr)
                self.assertIn(needle, p.stderr)
                self.assertEqual(p.stderr.count("\n"), 1, "one line: %r" % p.stderr)
                self.assertFalse(os.path.exists(os.path.join(self.dir, "d")),
                                 "the data dir was opened despite the config error")
        p = serve(["--config", os.path.join(self.dir, "missing.yaml")])
        self.assertEqual(p.returncode, 1)
        self.assertTrue(p.stderr.startswith("charter serve: cannot open config"), p.stderr)
        for var, val in (("CHARTER_LOG_LEVEL", "LOUD"), ("CHARTER_DATA_DIR", ""),
                         ("CHARTER_MAX_BODY", "1M"), ("CHARTER_THREADS", "lots")):
            with self.subTest(env=var):
                p = serve(["--data-dir", os.path.join(self.dir, "d"), "--print-config"],
                          env={var: val})
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertTrue(p.stderr.startswith("charter serve: %s: " % var), p.stderr)

    def test_bad_flags(self):
        for args in (["--threads", "abc"], ["--threads", "1025"], ["--listen", ":7433"],
                     ["--no-such-flag"], ["unexpected"]):
            with self.subTest(args=args):
                p = serve(args + ["--data-dir", os.path.join(self.dir, "d")])
                self.assertEqual(p.returncode, 64, p.stderr)
                self.assertNotEqual(p.stderr, "")
        p = serve(["--help"])
        self.assertEqual(p.returncode, 0)
        self.assertNotEqual(p.stdout, "")

    def test_max_body_takes_effect(self):
        srv = harness.Server(config="max_body: 2KiB\n")
        try:
            sid = srv.create_session(user="mb")["id"]
            head, tail = b'{"kind":"m","content":"', b'"}'
            body = head + b"x" * (2048 - len(head) - len(tail)) + tail
            r = srv.raw_request("POST", "/v1/sessions/%s/events" % sid, body)
            self.assertEqual(r.status, 201, r.raw)
            body = head + b"x" * (2049 - len(head) - len(tail)) + tail
            r = srv.raw_request("POST", "/v1/sessions/%s/events" % sid, body)
            assert_error(r, 413, "body_too_large")
            self.assertEqual(srv.get_session(sid)["seq"], 1)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_keys_create_reads_the_config(self):
        data = os.path.join(self.dir, "data")
        cfg = self.write("data_dir: %s\n" % data)
        srv = harness.Server(data_dir=data, start=False)
        srv.log_path = os.path.join(self.dir, "server.log")
        srv.start()
        try:
            p = subprocess.run([harness.charter_bin(), "keys", "create", "--tenant", "viacfg",
                                "--config", cfg], capture_output=True, text=True, timeout=30,
                               env={k: v for k, v in os.environ.items()
                                    if not k.startswith("CHARTER_")})
            self.assertEqual(p.returncode, 0, p.stderr)
            key = p.stdout.strip()
            self.assertEqual(srv.request("GET", "/v1/sessions", key=key).json,
                             {"sessions": [], "next_cursor": None})
            bad = self.write("data_dir: %s\nbogus_key: 1\n" % data, "bad.yaml")
            p = subprocess.run([harness.charter_bin(), "keys", "create", "--tenant", "x",
                                "--config", bad], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertEqual(p.stdout, "")
        finally:
            self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    harness.main()
