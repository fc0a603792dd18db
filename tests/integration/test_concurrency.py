"""test_concurrency.py — racing writers. Optimistic concurrency with expect_seq on one
session must give a total order with no lost or duplicated event; unconditional
appends to many sessions at once must all land, each session's seqs contiguous."""

import os
import random
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error, assert_status  # noqa: E402

srv = None
THREADS = 16


def setUpModule():
    global srv
    srv = harness.Server(threads=4)


def tearDownModule():
    srv.stop()


def run_threads(n, fn):
    errors = []

    def wrap(t):
        try:
            fn(t)
        except BaseException as e:  # noqa: BLE001 — reported by the main thread
            errors.append("thread %d: %r" % (t, e))

    ts = [threading.Thread(target=wrap, args=(t,)) for t in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
        if t.is_alive():
            errors.append("thread did not finish within 120 s")
    return errors


class ExpectSeqRace(unittest.TestCase):
    def test_race_on_one_session(self):
        sid = srv.create_session(user="race")["id"]
        rounds = 25
        lock = threading.Lock()
        acked = {}      # (t, n) -> first_seq
        conflicts = [0]

        def worker(t):
            with srv.client() as c:
                for n in range(rounds):
                    r = c.request("GET", "/v1/sessions/" + sid)
                    assert r.status == 200, r.raw
                    seq = r.json["seq"]
                    r = c.request("POST", "/v1/sessions/%s/events" % sid,
                                  {"kind": "race", "content": {"t": t, "n": n},
                                   "expect_seq": seq})
                    if r.status == 201:
                        assert r.json == {"first_seq": seq + 1, "last_seq": seq + 1}, \
                            (seq, r.json)
                        with lock:
                            acked[(t, n)] = r.json["first_seq"]
                    else:
                        assert_error(r, 409, "seq_conflict", field="expect_seq")
                        with lock:
                            conflicts[0] += 1

        errors = run_threads(THREADS, worker)
        self.assertEqual(errors, [])
        self.assertEqual(len(acked) + conflicts[0], THREADS * rounds)
        self.assertGreater(len(acked), 0)
        # no two acknowledgements for the same seq
        self.assertEqual(len(set(acked.values())), len(acked))
        s = srv.get_session(sid)
        self.assertEqual(s["seq"], len(acked))
        ev = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in ev], list(range(1, len(acked) + 1)))
        got = [(e["content"]["t"], e["content"]["n"]) for e in ev]
        self.assertEqual(len(set(got)), len(got), "duplicated payload")
        self.assertEqual(set(got), set(acked))
        for e in ev:
            self.assertEqual(acked[(e["content"]["t"], e["content"]["n"])], e["seq"])

    def test_batches_with_expect_seq_are_atomic(self):
        """Racing 3-event batches: every batch lands whole and contiguous or not at
        all."""
        sid = srv.create_session(user="race_batch")["id"]
        lock = threading.Lock()
        acked = {}

        def worker(t):
            with srv.client() as c:
                for n in range(10):
                    seq = c.request("GET", "/v1/sessions/" + sid).json["seq"]
                    r = c.request("POST", "/v1/sessions/%s/events" % sid,
                                  {"expect_seq": seq, "events": [
                                      {"kind": "b", "content": [t, n, i]} for i in range(3)]})
                    if r.status == 201:
                        assert r.json == {"first_seq": seq + 1, "last_seq": seq + 3}, r.json
                        with lock:
                            acked[(t, n)] = r.json["first_seq"]
                    else:
                        assert_error(r, 409, "seq_conflict", field="expect_seq")

        self.assertEqual(run_threads(8, worker), [])
        ev = srv.all_events(sid)
        self.assertEqual(len(ev), 3 * len(acked))
        self.assertEqual([e["seq"] for e in ev], list(range(1, len(ev) + 1)))
        for (t, n), first in acked.items():
            self.assertEqual([e["content"] for e in ev[first - 1:first + 2]],
                             [[t, n, 0], [t, n, 1], [t, n, 2]])


class CompactionRace(unittest.TestCase):
    def test_compact_while_appending(self):
        """Compactions racing appends: the archive plus the live log is always the
        whole history, each event once, and the live log is the last summary then the
        tail."""
        sid = srv.create_session(user="compact_race")["id"]
        lock = threading.Lock()
        acked = {}
        done = threading.Event()
        compactions = []

        def appender(t):
            with srv.client() as c:
                for n in range(50):
                    r = c.request("POST", "/v1/sessions/%s/events" % sid,
                                  {"kind": "m", "content": "%d-%d" % (t, n)})
                    assert r.status == 201, r.raw
                    with lock:
                        acked["%d-%d" % (t, n)] = r.json["first_seq"]

        def compactor():
            with srv.client() as c:
                while not done.is_set():
                    s = c.request("GET", "/v1/sessions/" + sid).json
                    through = s["seq"] - 3
                    if through > s["summary_seq"]:
                        r = c.request("POST", "/v1/sessions/%s/compact" % sid,
                                      {"through_seq": through, "summary": "through %d" % through})
                        assert r.status == 200, r.raw
                        assert r.json["summary_seq"] == through, r.json
                        compactions.append(through)
                    done.wait(0.01)

        cerr = []

        def compactor_wrapped():
            try:
                compactor()
            except BaseException as e:  # noqa: BLE001
                cerr.append(repr(e))

        ct = threading.Thread(target=compactor_wrapped)
        ct.start()
        errors = run_threads(6, appender)
        done.set()
        ct.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(cerr, [])
        self.assertGreater(len(compactions), 0)
        s = srv.get_session(sid)
        self.assertEqual(s["seq"], 300)
        self.assertEqual(s["summary_seq"], compactions[-1])
        full = srv.all_events(sid, archived=True)
        self.assertEqual([e["seq"] for e in full], list(range(1, 301)))
        self.assertEqual({e["content"]: e["seq"] for e in full}, acked)
        self.assertNotIn("summary", [e["kind"] for e in full])
        live = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in live], list(range(compactions[-1], 301)))
        self.assertEqual((live[0]["kind"], live[0]["content"]),
                         ("summary", "through %d" % compactions[-1]))
        self.assertEqual(live[1:], full[compactions[-1]:])


class SameCallRaces(unittest.TestCase):
    def test_same_compaction_races(self):
        """Eight identical compactions at once: exactly one wins, the others are
        refused (through_seq is no longer above summary_seq); history intact."""
        sid = srv.create_session(user="compact_same")["id"]
        assert_status(srv.append(sid, {"events": [{"kind": "m", "content": i}
                                                  for i in range(20)]}), 201)
        before = srv.all_events(sid, archived=True)
        lock = threading.Lock()
        results = []
        barrier = threading.Barrier(8)

        def worker(t):
            with srv.client() as c:
                c.request("GET", "/healthz")
                barrier.wait(30)
                r = c.request("POST", "/v1/sessions/%s/compact" % sid,
                              {"through_seq": 15, "summary": "by %d" % t})
                with lock:
                    results.append(r)

        self.assertEqual(run_threads(8, worker), [])
        ok = [r for r in results if r.status == 200]
        self.assertEqual(len(ok), 1, [r.raw for r in results])
        self.assertEqual(ok[0].json, {"summary_seq": 15, "archived": 15})
        for r in results:
            if r.status != 200:
                assert_error(r, 422, "invalid_value", field="through_seq")
        self.assertEqual(srv.all_events(sid, archived=True), before)
        live = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in live], list(range(15, 21)))
        self.assertEqual(srv.get_session(sid)["summary_seq"], 15)

    def test_same_transition_races(self):
        """Eight closes at once: one 200, seven 409 invalid_transition (state closed),
        one lifecycle event."""
        sid = srv.create_session(user="close_same")["id"]
        assert_status(srv.append(sid, {"kind": "m"}), 201)
        lock = threading.Lock()
        results = []
        barrier = threading.Barrier(8)

        def worker(t):
            with srv.client() as c:
                c.request("GET", "/healthz")
                barrier.wait(30)
                r = c.request("POST", "/v1/sessions/%s/close" % sid)
                with lock:
                    results.append(r)

        self.assertEqual(run_threads(8, worker), [])
        self.assertEqual(sorted(r.status for r in results), [200] + [409] * 7)
        for r in results:
            if r.status == 409:
                assert_error(r, 409, "invalid_transition", state="closed")
        ev = srv.all_events(sid)
        self.assertEqual([e["kind"] for e in ev], ["m", "lifecycle"])
        self.assertEqual(srv.get_session(sid)["seq"], 2)


class ManySessions(unittest.TestCase):
    def test_unconditional_appends(self):
        sids = [srv.create_session(user="many", agent="a%d" % i)["id"] for i in range(8)]
        lock = threading.Lock()
        acked = []      # (sid, first_seq, last_seq, [payloads])

        def worker(t):
            rnd = random.Random(t)
            with srv.client() as c:
                for n in range(40):
                    sid = rnd.choice(sids)
                    k = rnd.choice((1, 1, 2, 5))
                    payloads = ["%d-%d-%d" % (t, n, i) for i in range(k)]
                    if k == 1:
                        body = {"kind": "msg", "content": payloads[0],
                                "usage": {"tokens": 1}}
                    else:
                        body = {"events": [{"kind": "msg", "content": p,
                                            "usage": {"tokens": 1}} for p in payloads]}
                    r = c.request("POST", "/v1/sessions/%s/events" % sid, body)
                    assert r.status == 201, (r.status, r.raw)
                    assert r.json["last_seq"] - r.json["first_seq"] == k - 1, r.json
                    with lock:
                        acked.append((sid, r.json["first_seq"], r.json["last_seq"], payloads))

        self.assertEqual(run_threads(THREADS, worker), [])
        self.assertEqual(len(acked), THREADS * 40)
        for sid in sids:
            mine = [a for a in acked if a[0] == sid]
            total = sum(len(a[3]) for a in mine)
            s = srv.get_session(sid)
            self.assertEqual(s["seq"], total)
            self.assertEqual(s["usage"]["tokens"], total)
            self.assertEqual(s["state"], "active" if total else "open")
            ev = srv.all_events(sid)
            self.assertEqual([e["seq"] for e in ev], list(range(1, total + 1)))
            by_seq = {e["seq"]: e["content"] for e in ev}
            for _, first, last, payloads in mine:
                self.assertEqual([by_seq[q] for q in range(first, last + 1)], payloads)
            self.assertEqual(len(set(by_seq.values())), total)

    def test_concurrent_creates(self):
        lock = threading.Lock()
        ids = []

        def worker(t):
            with srv.client() as c:
                for n in range(10):
                    r = c.request("POST", "/v1/sessions",
                                  {"user": "creator", "agent": "t%d" % t})
                    assert r.status == 201, r.raw
                    with lock:
                        ids.append(r.json["id"])

        self.assertEqual(run_threads(THREADS, worker), [])
        self.assertEqual(len(set(ids)), THREADS * 10)
        r = srv.request("GET", "/v1/sessions?user=creator&limit=1000")
        listed = [s["id"] for s in r.json["sessions"]]
        self.assertEqual(sorted(listed), sorted(ids))
        self.assertEqual(listed, sorted(listed))  # creation (ULID) order

    def test_concurrent_facts_and_lifecycle(self):
        """Fact writes racing with appends and a close: every call gets a documented
        answer and the final state is consistent."""
        sid = srv.create_session(user="mixed")["id"]
        lock = threading.Lock()
        appended = []

        def worker(t):
            with srv.client() as c:
                for n in range(20):
                    if t % 2:
                        r = c.request("PUT", "/v1/sessions/%s/facts/k%d" % (sid, t),
                                      {"value": n})
                        assert r.status == 200, r.raw
                    else:
                        r = c.request("POST", "/v1/sessions/%s/events" % sid,
                                      {"kind": "m", "content": [t, n]})
                        if r.status == 201:
                            with lock:
                                appended.append([t, n])
                        else:
                            assert_error(r, 409, "invalid_state", state="closed")
                    if t == 0 and n == 10:
                        r = c.request("POST", "/v1/sessions/%s/close" % sid)
                        assert r.status == 200, r.raw

        self.assertEqual(run_threads(8, worker), [])
        facts = srv.facts(sid)
        self.assertEqual(facts, {"k%d" % t: 19 for t in range(1, 8, 2)})
        ev = srv.all_events(sid)
        s = srv.get_session(sid)
        self.assertEqual(s["state"], "closed")
        self.assertEqual([e["seq"] for e in ev], list(range(1, s["seq"] + 1)))
        msgs = [e["content"] for e in ev if e["kind"] == "m"]
        self.assertEqual(sorted(msgs), sorted(appended))
        self.assertEqual([e["kind"] for e in ev].count("lifecycle"), 1)
        self.assertEqual(ev[-1]["kind"], "lifecycle")  # nothing appended after close


if __name__ == "__main__":
    harness.main()
