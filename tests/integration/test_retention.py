"""test_retention.py — the retention sweep, configured through --config with second
periods: idle open/active sessions close, closed ones archive, archived ones are
deleted (404, events and facts gone), each close/archive a `lifecycle` event with
reason `retention`. A session kept busy is not closed."""

import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error, assert_status  # noqa: E402

CONFIG = """\
sessions:
  retention:
    close_idle_after: 1s
    archive_closed_after: 1s
    delete_archived_after: 1s
    sweep_interval: 200ms
"""


def watch(srv, sids, until, timeout):
    """Polls sessions every 50 ms, recording the states each went through (404 →
    "deleted") and the events last seen before deletion. Stops when until(seen) or
    timeout."""
    seen = {s: [] for s in sids}
    events = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for sid in sids:
            if seen[sid] and seen[sid][-1] == "deleted":
                continue
            r = srv.request("GET", "/v1/sessions/" + sid)
            st = r.json["state"] if r.status == 200 else (
                "deleted" if r.status == 404 else "HTTP %d" % r.status)
            if not seen[sid] or seen[sid][-1] != st:
                seen[sid].append(st)
            if st == "archived":
                ev = srv.request("GET", "/v1/sessions/%s/events?include=archived&limit=1000"
                                 % sid)
                if ev.status == 200:
                    events[sid] = ev.json["events"]
        if until(seen):
            break
        time.sleep(0.05)
    return seen, events


class Retention(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = harness.Server(config=CONFIG)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_open_and_active_go_all_the_way(self):
        srv = self.srv
        a = srv.create_session(user="ret_open")["id"]
        b = srv.create_session(user="ret_active")["id"]
        assert_status(srv.append(b, {"kind": "message", "content": "hi"}), 201)
        assert_status(srv.request("PUT", "/v1/sessions/%s/facts/f" % b, {"value": 1}), 200)
        t0 = time.monotonic()
        seen, events = watch(srv, [a, b], lambda s: all(v[-1:] == ["deleted"]
                                                        for v in s.values()), 20)
        self.assertEqual(seen[a], ["open", "closed", "archived", "deleted"], seen)
        self.assertEqual(seen[b], ["active", "closed", "archived", "deleted"], seen)
        # three 1 s periods plus sweep granularity: not before ~3 s, well within 20 s
        self.assertGreater(time.monotonic() - t0, 2.5)
        for sid, first in ((a, "open"), (b, "active")):
            lc = [e for e in events[sid] if e["kind"] == "lifecycle"]
            self.assertEqual([(e["content"]["from"], e["content"]["to"],
                               e["content"].get("reason")) for e in lc],
                             [(first, "closed", "retention"), ("closed", "archived", "retention")])
        # deleted with everything it had
        for path in ("", "/events", "/events?include=archived", "/facts", "/facts/f",
                     "/bundle"):
            assert_error(srv.request("GET", "/v1/sessions/%s%s" % (b, path)), 404, "not_found")
        listed = [s["id"] for s in
                  srv.request("GET", "/v1/sessions?limit=1000").json["sessions"]]
        self.assertNotIn(a, listed)
        self.assertNotIn(b, listed)

    def test_busy_session_stays_open(self):
        srv = self.srv
        busy = srv.create_session(user="ret_busy")["id"]
        idle = srv.create_session(user="ret_idle")["id"]
        stop = threading.Event()
        failures = []

        def keep_busy():
            with srv.client() as c:
                while not stop.is_set():
                    r = c.request("POST", "/v1/sessions/%s/events" % busy, {"kind": "tick"})
                    if r.status != 201:
                        failures.append((r.status, r.raw[:200]))
                        return
                    stop.wait(0.3)

        assert_status(srv.append(busy, {"kind": "tick"}), 201)
        t = threading.Thread(target=keep_busy)
        t.start()
        try:
            seen, _ = watch(srv, [busy, idle], lambda s: False, 3.5)
        finally:
            stop.set()
            t.join(10)
        self.assertEqual(failures, [])
        self.assertEqual(seen[busy], ["active"], seen)
        # the idle one, created at the same moment, has moved on meanwhile
        self.assertIn("closed", seen[idle], seen)
        self.assertEqual(srv.get_session(busy)["state"], "active")
        # once left alone it closes too
        seen, _ = watch(srv, [busy], lambda s: "closed" in s[busy], 10)
        self.assertIn("closed", seen[busy], seen)

    def test_fact_writes_postpone_archiving(self):
        """docs/operations.md#retention: every write moves updated_at, so fact writes
        to a closed session delay its archiving."""
        srv = self.srv
        kept = srv.create_session(user="ret_factw")["id"]
        left = srv.create_session(user="ret_factl")["id"]
        for sid in (kept, left):
            assert_status(srv.request("POST", "/v1/sessions/%s/close" % sid), 200)
        stop = threading.Event()
        failures = []

        def keep_writing():
            n = 0
            with srv.client() as c:
                while not stop.is_set():
                    n += 1
                    r = c.request("PUT", "/v1/sessions/%s/facts/n" % kept, {"value": n})
                    if r.status != 200:
                        failures.append((r.status, r.raw[:200]))
                        return
                    stop.wait(0.3)

        t = threading.Thread(target=keep_writing)
        t.start()
        try:
            seen, _ = watch(srv, [kept, left], lambda s: False, 3.0)
        finally:
            stop.set()
            t.join(10)
        self.assertEqual(failures, [])
        self.assertEqual(seen[kept], ["closed"], seen)
        self.assertIn("archived", seen[left], seen)

    def test_paused_is_not_idle_closed(self):
        """Only open/active sessions close on idleness."""
        srv = self.srv
        p = srv.create_session(user="ret_paused")["id"]
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % p), 200)
        seen, _ = watch(srv, [p], lambda s: False, 2.5)
        self.assertEqual(seen[p], ["paused"], seen)


class RetentionDisabled(unittest.TestCase):
    def test_zero_disables_a_step(self):
        cfg = CONFIG.replace("archive_closed_after: 1s", "archive_closed_after: 0")
        with harness.Server(config=cfg) as srv:
            sid = srv.create_session(user="ret_zero")["id"]
            seen, _ = watch(srv, [sid], lambda s: False, 3.5)
            self.assertEqual(seen[sid], ["open", "closed"], seen)
            ev = srv.all_events(sid)
            self.assertEqual([(e["content"]["from"], e["content"]["to"],
                               e["content"].get("reason")) for e in ev],
                             [("open", "closed", "retention")])


if __name__ == "__main__":
    harness.main()
