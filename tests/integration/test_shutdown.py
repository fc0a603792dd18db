"""test_shutdown.py — SIGTERM while appends are in flight: the process drains and
exits 0 within a few seconds, and every append that was acknowledged (201) is there
after a restart on the same data dir."""

import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error  # noqa: E402
import mandate_util  # noqa: E402


class Shutdown(unittest.TestCase):
    def test_sigterm_under_load(self):
        srv = harness.Server(threads=2)
        sids = [srv.create_session(user="shut", agent="a%d" % i)["id"] for i in range(3)]
        lock = threading.Lock()
        acked = {}       # payload -> (sid, seq)
        refused = []     # 503 answers, checked for shape
        errors = []
        stop = threading.Event()

        def worker(t):
            n = 0
            c = srv.client(timeout=15)
            try:
                while not stop.is_set():
                    sid = sids[(t + n) % len(sids)]
                    pl = "%d-%d" % (t, n)
                    n += 1
                    try:
                        if n % 3:
                            r = c.request("POST", "/v1/sessions/%s/events" % sid,
                                          {"kind": "m", "content": pl})
                            pls = [pl]
                        else:
                            pls = [pl + "-a", pl + "-b"]
                            r = c.request("POST", "/v1/sessions/%s/events" % sid,
                                          {"events": [{"kind": "m", "content": p}
                                                      for p in pls]})
                    except (OSError, http.client.HTTPException):
                        # connection refused/reset: the server is gone; outcome unknown
                        if not srv.alive():
                            return
                        time.sleep(0.01)
                        continue
                    if r.status == 201:
                        with lock:
                            for i, p in enumerate(pls):
                                acked[p] = (sid, r.json["first_seq"] + i)
                    elif r.status == 503:
                        refused.append(r)
                    else:
                        errors.append((r.status, r.raw[:200]))
            finally:
                c.close()

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in ts:
            t.start()
        time.sleep(1.0)
        with lock:
            n_before = len(acked)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            rc = srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
        stop.set()
        for t in ts:
            t.join(30)
        self.assertIsNotNone(rc, "still running 10 s after SIGTERM")
        self.assertEqual(rc, 0, "exit code after SIGTERM")
        self.assertLess(elapsed, 10)
        self.assertGreater(n_before, 0, "no append was acknowledged before SIGTERM")
        self.assertEqual(errors, [])
        for r in refused:
            assert_error(r, 503, "shutting_down")

        srv.start()
        for sid in sids:
            ev = srv.all_events(sid)
            s = srv.get_session(sid)
            self.assertEqual([e["seq"] for e in ev], list(range(1, s["seq"] + 1)))
            contents = [e["content"] for e in ev]
            self.assertEqual(len(set(contents)), len(contents), "duplicated event")
            by_seq = {e["seq"]: e["content"] for e in ev}
            for p, (psid, seq) in acked.items():
                if psid == sid:
                    self.assertEqual(by_seq.get(seq), p, "acknowledged %s lost" % p)
        self.assertEqual(srv.stop(), 0)

    def test_everything_survives_restart(self):
        """Sessions in every state, usage, labels, facts, compaction and the archive
        read back identically after a graceful restart; ids keep increasing."""
        srv = harness.Server()
        sids = []
        for i, calls in enumerate(([], ["pause"], ["close"], ["close", "archive"], [])):
            mdt = mandate_util.create_mandate(srv)["id"]
            sid = srv.create_session(user="rs", agent="a%d" % i, labels={"i": str(i)},
                                     budget={"tokens": 100 + i}, mandate=mdt)["id"]
            r = srv.append(sid, {"events": [{"kind": "m", "content": j,
                                             "usage": {"tokens": j, "cost_usd": 0.5}}
                                            for j in range(10)]})
            self.assertEqual(r.status, 201, r.raw)
            r = srv.request("PUT", "/v1/sessions/%s/facts/%s" % (sid, harness.q("k/é")),
                            {"value": {"i": i}})
            self.assertEqual(r.status, 200, r.raw)
            if i % 2:
                r = srv.request("POST", "/v1/sessions/%s/compact" % sid,
                                {"through_seq": 6, "summary": {"s": i}})
                self.assertEqual(r.status, 200, r.raw)
            for call in calls:
                r = srv.request("POST", "/v1/sessions/%s/%s" % (sid, call), {"reason": "r"})
                self.assertEqual(r.status, 200, r.raw)
            sids.append(sid)
        sids.append(srv.create_session(user="rs", agent="empty")["id"])
        before = {sid: srv.snapshot(sid) for sid in sids}
        listing = srv.request("GET", "/v1/sessions?user=rs").json
        self.assertEqual(srv.stop(), 0)
        srv.start()
        for sid in sids:
            self.assertEqual(srv.snapshot(sid), before[sid], sid)
        self.assertEqual(srv.request("GET", "/v1/sessions?user=rs").json, listing)
        newer = srv.create_session(user="rs")["id"]
        self.assertGreater(newer, max(sids))
        self.assertEqual(srv.stop(), 0)

    def test_data_dir_modes_and_bootstrap_once(self):
        """docs/operations.md: the data dir is created 0700, its files are the owner's
        only, and bootstrap.key is written once (not again after it is deleted)."""
        parent = tempfile.mkdtemp(prefix="charter-it-parent-")
        try:
            d = os.path.join(parent, "data")
            srv = harness.Server(data_dir=d, start=False)
            srv.log_path = os.path.join(parent, "server.log")
            srv.start()
            key = srv.key
            self.assertEqual(os.stat(d).st_mode & 0o777, 0o700)
            for name in os.listdir(d):
                mode = os.stat(os.path.join(d, name)).st_mode & 0o777
                self.assertEqual(mode & 0o077, 0, "%s is mode %o" % (name, mode))
            self.assertEqual(srv.stop(), 0)
            os.unlink(os.path.join(d, "bootstrap.key"))
            srv.start(wait_key=False)
            self.assertFalse(os.path.exists(os.path.join(d, "bootstrap.key")))
            self.assertEqual(srv.request("GET", "/v1/sessions", key=key).status, 200)
            self.assertEqual(srv.stop(), 0)
        finally:
            shutil.rmtree(parent, ignore_errors=True)

    def test_idle_sigterm_exits_zero(self):
        srv = harness.Server()
        sid = srv.create_session(user="idle")["id"]
        t0 = time.monotonic()
        rc = srv.stop()
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 5)
        # docs/operations.md: a clean shutdown checkpoints and removes the WAL
        for name in ("charter.db-wal", "charter.db-shm"):
            self.assertFalse(os.path.exists(os.path.join(srv.dir, name)), name)
        srv.start()
        self.assertEqual(srv.get_session(sid)["id"], sid)
        self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    harness.main()
