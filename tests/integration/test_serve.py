"""test_serve.py — how `charter serve` starts and stops: one server per data dir, a
port in use fails before the data dir is touched, private file modes, every stop
signal drains, --print-config, and configuration errors."""

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import unittest

import harness
from harness import Server


def scratch(test):
    """A temporary dir removed when the test ends."""
    d = tempfile.mkdtemp(prefix="charter-it-")
    test.addCleanup(shutil.rmtree, d, True)
    return d


def run(args, timeout=15):
    p = subprocess.run([harness.charter_bin()] + args, capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")})
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class Serve(unittest.TestCase):
    def test_one_server_per_data_dir(self):
        with Server() as first:
            port = harness.free_port()
            rc, _, err = run(["serve", "--data-dir", first.dir, "--listen",
                              "127.0.0.1:%d" % port])
            self.assertEqual(rc, 1)
            self.assertIn("in use by another charter serve", err)
            # the first server is unaffected
            self.assertEqual(first.request("GET", "/healthz").status, 200)
            sid = first.create_session()["id"]
            self.assertEqual(first.get_session(sid)["state"], "open")

    def test_port_in_use_leaves_no_trace(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        d = os.path.join(scratch(self), "data")
        try:
            rc, _, err = run(["serve", "--data-dir", d, "--listen", "127.0.0.1:%d" % port])
            self.assertEqual(rc, 1)
            self.assertIn("cannot listen", err)
            self.assertFalse(os.path.exists(d), "the data dir was created anyway")
        finally:
            busy.close()

    def test_files_are_private(self):
        with Server() as s:
            s.create_session()
            for name in ("charter.db", "charter.db-wal", "bootstrap.key", "serve.lock"):
                p = os.path.join(s.dir, name)
                self.assertTrue(os.path.exists(p), name)
                mode = stat.S_IMODE(os.stat(p).st_mode)
                self.assertEqual(mode & 0o077, 0, "%s is mode %o" % (name, mode))

    def test_every_stop_signal_drains(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with self.subTest(sig=sig.name):
                s = Server()
                sid = s.create_session()["id"]
                self.assertEqual(s.append(sid, {"kind": "m"}).status, 201)
                s.proc.send_signal(sig)
                self.assertEqual(s.proc.wait(timeout=15), 0)
                self.assertIn('"msg":"stopped"', s.log_text())
                s.start()
                self.assertEqual(s.get_session(sid)["seq"], 1)
                s.stop()
                s.cleanup()

    def test_print_config_layers(self):
        d = scratch(self)
        cfg = os.path.join(d, "charter.yaml")
        with open(cfg, "w") as f:
            f.write("threads: 2\nmax_body: 2MiB\nsessions:\n  retention:\n    sweep_interval: 5s\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
        env["CHARTER_THREADS"] = "8"
        p = subprocess.run([harness.charter_bin(), "serve", "--config", cfg, "--threads", "4",
                            "--listen", "127.0.0.1:1", "--print-config"],
                           capture_output=True, env=env, timeout=15)
        self.assertEqual(p.returncode, 0, p.stderr)
        import json
        c = json.loads(p.stdout)
        self.assertEqual(c["threads"], 8)          # env beats flag beats file
        self.assertEqual(c["max_body"], 2 << 20)   # from the file
        self.assertEqual(c["listen"], "127.0.0.1:1")
        self.assertEqual(c["sessions.retention.sweep_interval"], "5000ms")

    def test_config_errors(self):
        d = scratch(self)
        cases = [("expires_at: 5s\n", "unknown config key"),
                 ("sessions:\n  retention:\n    sweep_interval: 30\n", "duration"),
                 ("a: &x {b: *x}\n", ""),
                 ("listen: [1, 2]\n", "lists")]
        for text, needle in cases:
            with self.subTest(config=text):
                cfg = os.path.join(d, "bad.yaml")
                with open(cfg, "w") as f:
                    f.write(text)
                rc, _, err = run(["serve", "--config", cfg, "--data-dir",
                                  os.path.join(d, "data"), "--listen", "127.0.0.1:1"])
                self.assertEqual(rc, 1, err)
                self.assertIn(needle, err)
                self.assertFalse(os.path.exists(os.path.join(d, "data")))
        rc, _, err = run(["serve", "--threads", "many", "--data-dir", os.path.join(d, "x")])
        self.assertEqual(rc, 64)
        self.assertIn("threads", err)


if __name__ == "__main__":
    harness.main()  # removes data dirs on success, checks server logs for sanitizer reports
