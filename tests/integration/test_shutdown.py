"""test_shutdown.py — SIGTERM while appends are in flight: the process drains and
exits 0 within a few seconds, and every append that was acknowledged (201) is there
after a restart on the same data dir."""

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error  # noqa: E402


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

    def test_idle_sigterm_exits_zero(self):
        srv = harness.Server()
        sid = srv.create_session(user="idle")["id"]
        t0 = time.monotonic()
        rc = srv.stop()
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 5)
        srv.start()
        self.assertEqual(srv.get_session(sid)["id"], sid)
        self.assertEqual(srv.stop(), 0)


if __name__ == "__main__":
    harness.main()
