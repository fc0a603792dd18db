"""test_slow_crash.py — crash consistency. Rounds of: 8 threads append (single events
and small batches) and write facts concurrently, the server is killed with SIGKILL
at a random moment, then restarted on the same data dir. Every acknowledged write
must be there with its content, each session's seqs contiguous 1..seq with seq equal
to the session's seq and usage equal to the sum over its events.
Seed: CHARTER_SEED (printed)."""

import http.client
import os
import random
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROUNDS = int(os.environ.get("CHARTER_CRASH_ROUNDS", "12"))
THREADS = 8


class Crash(unittest.TestCase):
    def test_kill9_rounds(self):
        seed = int(os.environ.get("CHARTER_SEED", str(int(time.time()))))
        print("test_slow_crash: seed %d, %d rounds" % (seed, ROUNDS), file=sys.stderr)
        rnd = random.Random(seed)
        srv = harness.Server(threads=2)
        sids = [srv.create_session(user="crash", agent="a%d" % i)["id"] for i in range(3)]
        acked = {}          # payload id -> (sid, seq)
        facts_acked = {}    # (sid, key) -> highest acknowledged value
        compacted = {}      # sid -> highest acknowledged through_seq
        created = list(sids)
        lock = threading.Lock()
        total_acks = 0

        for rnd_no in range(ROUNDS):
            stop = threading.Event()
            errors = []

            def worker(t, rnd_no=rnd_no, stop=stop, errors=errors):
                wr = random.Random(seed * 1000 + rnd_no * 100 + t)
                c = srv.client(timeout=10)
                n = 0
                try:
                    while not stop.is_set():
                        n += 1
                        sid = wr.choice(sids)
                        op = wr.random()
                        try:
                            if t == 0 and op < 0.3:
                                key = "k%d" % wr.randrange(3)
                                val = rnd_no * 100000 + n
                                r = c.request("PUT", "/v1/sessions/%s/facts/%s" % (sid, key),
                                              {"value": val})
                                if r.status == 200:
                                    with lock:
                                        old = facts_acked.get((sid, key), -1)
                                        facts_acked[(sid, key)] = max(old, val)
                                elif r.status != 503:
                                    errors.append((r.status, r.raw[:200]))
                                continue
                            if t == 2 and op < 0.1:
                                s = c.request("GET", "/v1/sessions/" + sid).json
                                through = s["seq"] - 2
                                if through > s["summary_seq"]:
                                    r = c.request("POST", "/v1/sessions/%s/compact" % sid,
                                                  {"through_seq": through,
                                                   "summary": "through %d" % through})
                                    if r.status == 200:
                                        with lock:
                                            compacted[sid] = max(compacted.get(sid, 0), through)
                                    elif r.status != 503:
                                        errors.append((r.status, r.raw[:200]))
                                continue
                            if t == 1 and op < 0.05:
                                r = c.request("POST", "/v1/sessions",
                                              {"user": "crash_new", "agent": "r%d" % rnd_no})
                                if r.status == 201:
                                    with lock:
                                        created.append(r.json["id"])
                                continue
                            k = 1 if op < 0.6 else wr.randint(2, 6)
                            pids = ["r%d-t%d-n%d-%d" % (rnd_no, t, n, i) for i in range(k)]
                            evs = [{"kind": "crash.test", "role": "agent",
                                    "content": {"id": p, "pad": "x" * wr.randrange(200)},
                                    "usage": {"tokens": 1}} for p in pids]
                            body = evs[0] if k == 1 else {"events": evs}
                            r = c.request("POST", "/v1/sessions/%s/events" % sid, body)
                        except (OSError, http.client.HTTPException):
                            if not srv.alive():
                                return
                            time.sleep(0.01)
                            continue
                        if r.status == 201:
                            if r.json["last_seq"] - r.json["first_seq"] != k - 1:
                                errors.append(("bad ack", r.json, k))
                            with lock:
                                for i, p in enumerate(pids):
                                    acked[p] = (sid, r.json["first_seq"] + i, evs[i]["content"])
                        elif r.status != 503:
                            errors.append((r.status, r.raw[:200]))
                except Exception as e:  # noqa: BLE001 — reported by the main thread
                    errors.append(("thread %d" % t, repr(e)))
                finally:
                    c.close()

            ts = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
            for t in ts:
                t.start()
            time.sleep(rnd.uniform(0.3, 1.5))
            srv.kill9()
            stop.set()
            for t in ts:
                t.join(30)
                self.assertFalse(t.is_alive(), "worker hung after kill -9")
            self.assertEqual(errors, [], "round %d" % rnd_no)
            srv.start()
            self.verify(srv, sids, created, acked, facts_acked, compacted, rnd_no)
            self.assertGreater(len(acked), total_acks, "round %d acknowledged nothing" % rnd_no)
            total_acks = len(acked)
        self.assertEqual(srv.stop(), 0)

    def verify(self, srv, sids, created, acked, facts_acked, compacted, rnd_no):
        msg = "after crash %d" % rnd_no
        with srv.client() as c:
            for sid in created:
                r = c.request("GET", "/v1/sessions/" + sid)
                self.assertEqual(r.status, 200, "%s: created session %s lost" % (msg, sid))
            for sid in sids:
                s = c.request("GET", "/v1/sessions/" + sid).json
                ev = srv.all_events(sid, archived=True, client=c)
                self.assertEqual([e["seq"] for e in ev], list(range(1, s["seq"] + 1)), msg)
                # the live log: the summary (if any) at summary_seq, then the tail
                sseq = s["summary_seq"]
                self.assertGreaterEqual(sseq, compacted.get(sid, 0), msg + ": compaction lost")
                live = srv.all_events(sid, client=c)
                if sseq:
                    self.assertEqual((live[0]["seq"], live[0]["kind"], live[0]["content"]),
                                     (sseq, "summary", "through %d" % sseq), msg)
                    self.assertEqual(live[1:], ev[sseq:], msg)
                else:
                    self.assertEqual(live, ev, msg)
                self.assertEqual(s["usage"]["tokens"], len(ev), msg + ": usage vs log")
                ids = [e["content"]["id"] for e in ev]
                self.assertEqual(len(set(ids)), len(ids), msg + ": duplicated event")
                by_seq = {e["seq"]: e for e in ev}
                for p, (psid, seq, content) in acked.items():
                    if psid != sid:
                        continue
                    e = by_seq.get(seq)
                    self.assertIsNotNone(e, "%s: acknowledged %s (seq %d) lost" % (msg, p, seq))
                    self.assertEqual(e["content"], content, msg)
                    self.assertEqual((e["kind"], e["role"]), ("crash.test", "agent"), msg)
                facts = c.request("GET", "/v1/sessions/%s/facts" % sid).json["facts"]
                for (fsid, key), val in facts_acked.items():
                    if fsid == sid:
                        self.assertIn(key, facts, msg)
                        self.assertGreaterEqual(facts[key], val, msg + ": fact went back")


if __name__ == "__main__":
    harness.main()
