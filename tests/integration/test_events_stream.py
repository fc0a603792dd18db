"""test_events_stream.py — `GET /v1/events` (docs/api.md "Event stream"): the
mandate and session lifecycle events of a tenant as text/event-stream, with
increasing ids; a stream without Last-Event-ID starts with new events only; a
dropped client reconnecting with `Last-Event-ID` (or `?after=`) gets exactly the
events it missed, in order, without duplicates, then the live ones; another tenant
never sees them; a revoke arrives promptly."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import TIME_RE, assert_status  # noqa: E402
import mandate_util as mu  # noqa: E402
from mandate_util import (SSE, assert_err, create_mandate, delegate, future,  # noqa: E402
                          transition)

srv = None
OTHER = None

MANDATE_STATE_TYPES = {"mandate.approved", "mandate.suspended", "mandate.reinstated",
                       "mandate.revoked", "mandate.expired", "mandate.completed"}


def setUpModule():
    global srv, OTHER
    srv = harness.Server(threads=4)
    OTHER = srv.create_key("other")


def tearDownModule():
    srv.stop()


def open_stream(tc, **kw):
    s = SSE(srv, **kw)
    tc.addCleanup(s.close)
    tc.assertEqual(s.status, 200, s.body().raw[:300] if s.status != 200 else "")
    tc.assertTrue(s.headers.get("content-type", "").startswith("text/event-stream"),
                  s.headers)
    return s


def about(ev):
    d = ev["data"]
    return (d.get("type"), d.get("mandate") if d.get("type", "").startswith("mandate.")
            else d.get("session"))


class Stream(unittest.TestCase):
    def check_event(self, ev):
        """SSE framing and the fields every event has."""
        d = ev["data"]
        self.assertIsInstance(d, dict, ev)
        self.assertIsNotNone(ev["id"], ev)
        self.assertEqual(ev["id"], str(d["id"]), ev)
        self.assertEqual(ev["event"], d["type"], ev)
        self.assertRegex(d["at"], TIME_RE)
        t = d["type"]
        if t == "mandate.created":
            for k in ("mandate", "state", "version", "parent"):
                self.assertIn(k, d, ev)
        elif t in MANDATE_STATE_TYPES:
            for k in ("mandate", "state", "version", "reason", "cause"):
                self.assertIn(k, d, ev)
        elif t == "mandate.narrowed":
            for k in ("mandate", "version", "scope", "cause"):
                self.assertIn(k, d, ev)
        elif t == "mandate.amended":
            for k in ("mandate", "version", "expires_at", "cause"):
                self.assertIn(k, d, ev)
        elif t.startswith("session."):
            for k in ("session", "state", "from", "mandate", "reason"):
                self.assertIn(k, d, ev)
        else:
            self.fail("unknown event type %r" % t)

    def check_ids(self, evs):
        ids = [int(e["id"]) for e in evs]
        self.assertEqual(ids, sorted(set(ids)), "ids not strictly increasing: %r" % ids)

    def test_mandate_and_session_events(self):
        s = open_stream(self)
        m = create_mandate(srv, actor="coder")
        sid = srv.create_session(agent="coder", mandate=m["id"])["id"]
        assert_status(srv.append(sid, {"kind": "m"}), 201)
        transition(srv, m["id"], "suspend", {"reason": "incident"})
        got, inert = s.wait_for(lambda e: e["data"].get("type") == "session.inert")
        self.assertIsNotNone(inert, "no session.inert; got %r" % got)
        transition(srv, m["id"], "revoke", {"reason": "release freeze"})
        more, rev = s.wait_for(lambda e: e["data"].get("type") == "mandate.revoked")
        self.assertIsNotNone(rev, "no mandate.revoked; got %r" % more)
        evs = got + more
        for e in evs:
            self.check_event(e)
        self.check_ids(evs)
        self.assertEqual([about(e) for e in evs],
                         [("mandate.created", m["id"]), ("session.created", sid),
                          ("mandate.suspended", m["id"]), ("session.inert", sid),
                          ("mandate.revoked", m["id"])])
        d = evs[0]["data"]
        self.assertEqual((d["state"], d["version"], d["parent"]), ("active", 1, None))
        d = evs[1]["data"]
        self.assertEqual((d["state"], d["from"], d["mandate"]), ("open", None, m["id"]))
        d = evs[2]["data"]
        self.assertEqual((d["state"], d["reason"], d["cause"]),
                         ("suspended", "incident", m["id"]))
        d = evs[3]["data"]
        self.assertEqual((d["state"], d["from"], d["mandate"], d["reason"]),
                         ("inert", "active", m["id"], "mandate_suspended"))
        d = evs[4]["data"]
        self.assertEqual((d["state"], d["reason"], d["cause"]),
                         ("revoked", "release freeze", m["id"]))
        # the session was inert already: the revoke adds no session event
        self.assertEqual(s.drain(idle=0.3), [])

    def test_every_type(self):
        s = open_stream(self)
        p = create_mandate(srv, state="proposed", actor="a")
        transition(srv, p["id"], "approve")
        child = delegate(srv, p, actor="b", scope=dict(mu.WIDE_SCOPE))
        transition(srv, p["id"], "suspend")
        transition(srv, p["id"], "reinstate")
        r = srv.request("PATCH", "/v1/mandates/" + p["id"], {"scope": {"tools": ["git"]}})
        assert_status(r, 200)
        new_exp = future(1800)
        assert_status(srv.request("PATCH", "/v1/mandates/" + p["id"],
                                  {"expires_at": new_exp}), 200)
        transition(srv, p["id"], "complete")
        e = create_mandate(srv, actor="e", expires_at=future(0.3))
        sid = srv.create_session(mandate=e["id"])["id"]
        got, last = s.wait_for(lambda ev: ev["data"].get("type") == "session.inert", 5)
        self.assertIsNotNone(last, "no session.inert; got %r" % [about(x) for x in got])
        for ev in got:
            self.check_event(ev)
        self.check_ids(got)
        seq = [about(ev) for ev in got]
        want = [("mandate.created", p["id"]), ("mandate.approved", p["id"]),
                ("mandate.created", child["id"]), ("mandate.suspended", p["id"]),
                ("mandate.reinstated", p["id"]), ("mandate.narrowed", p["id"]),
                ("mandate.narrowed", child["id"]), ("mandate.amended", p["id"]),
                ("mandate.amended", child["id"]), ("mandate.completed", p["id"]),
                ("mandate.created", e["id"]), ("session.created", sid),
                ("mandate.expired", e["id"]), ("session.inert", sid)]
        # a cascade's events come in one commit; their order within it is not specified
        self.assertEqual(sorted(seq), sorted(want), seq)
        self.assertEqual(seq[:3], want[:3])
        self.assertEqual(seq[-4:], want[-4:])
        by = {about(ev): ev["data"] for ev in got}
        self.assertEqual(by[("mandate.created", child["id"])]["parent"], p["id"])
        n = by[("mandate.narrowed", child["id"])]
        self.assertEqual((n["cause"], n["version"], n["scope"]["tools"]),
                         (p["id"], 2, ["git"]))
        self.assertEqual(by[("mandate.narrowed", p["id"])]["cause"], p["id"])
        a = by[("mandate.amended", child["id"])]
        self.assertEqual((a["cause"], a["expires_at"]), (p["id"], new_exp))
        x = by[("mandate.expired", e["id"])]
        self.assertEqual((x["state"], x["cause"], x["reason"]), ("expired", e["id"], "expired"))
        self.assertEqual(by[("mandate.approved", p["id"])]["state"], "active")
        self.assertEqual(by[("mandate.completed", p["id"])]["state"], "completed")
        self.assertEqual(by[("session.inert", sid)]["reason"], "mandate_expired")

    def test_cascade_events_name_the_cause(self):
        s = open_stream(self)
        root = create_mandate(srv, actor="r", max_depth=2)
        c = delegate(srv, root, actor="c")
        g = delegate(srv, c, actor="g")
        sid = srv.create_session(mandate=g["id"])["id"]
        transition(srv, root["id"], "revoke", {"reason": "stop"})
        got, _ = s.wait_for(lambda e: e["data"].get("type") == "session.inert", 5)
        # One event for the cascade: the root's, listing the descendants it reached.
        revs = [e["data"] for e in got if e["data"]["type"] == "mandate.revoked"]
        self.assertEqual(len(revs), 1, revs)
        d = revs[0]
        self.assertEqual((d["mandate"], d["cause"], d["state"], d["reason"]),
                         (root["id"], root["id"], "revoked", "stop"))
        self.assertEqual(d["descendants"], [c["id"], g["id"]])
        inert = [e["data"] for e in got if e["data"]["type"] == "session.inert"]
        self.assertEqual([(d["session"], d["mandate"]) for d in inert], [(sid, g["id"])])

    def test_session_lifecycle_events(self):
        s = open_stream(self)
        sid = srv.create_session(user="ev")["id"]
        for call in ("pause", "resume", "close", "archive"):
            assert_status(srv.request("POST", "/v1/sessions/%s/%s" % (sid, call),
                                      {"reason": "r-" + call}), 200)
        got = s.collect(5, timeout=5)
        for e in got:
            self.check_event(e)
        self.check_ids(got)
        self.assertEqual([(e["data"]["type"], e["data"]["session"], e["data"]["from"],
                           e["data"]["state"]) for e in got],
                         [("session.created", sid, None, "open"),
                          ("session.paused", sid, "open", "paused"),
                          ("session.resumed", sid, "paused", "active"),
                          ("session.closed", sid, "active", "closed"),
                          ("session.archived", sid, "closed", "archived")])
        self.assertEqual([e["data"]["reason"] for e in got[1:]],
                         ["r-pause", "r-resume", "r-close", "r-archive"])
        self.assertIsNone(got[0]["data"]["mandate"])

    def test_starts_with_new_events_only(self):
        old = create_mandate(srv)
        transition(srv, old["id"], "suspend")
        s = open_stream(self)
        self.assertIsNone(s.next_event(0.3), "a stream without Last-Event-ID replayed")
        # docs/api.md: the stream opens with a comment and a reconnection delay
        self.assertIn(": charter event stream", s.comments)
        self.assertEqual(s.retry, "1000")
        new = create_mandate(srv)
        ev = s.next_event(3)
        self.assertIsNotNone(ev)
        self.assertEqual(about(ev), ("mandate.created", new["id"]))

    def test_reconnect_gets_exactly_the_missed_events(self):
        s = open_stream(self)
        a = create_mandate(srv, actor="a")
        ev = s.next_event(3)
        self.assertEqual(about(ev), ("mandate.created", a["id"]))
        last = int(ev["id"])
        s.close()   # dropped mid-way
        b = create_mandate(srv, actor="b")
        c = delegate(srv, b, actor="c")
        transition(srv, b["id"], "suspend", {"reason": "s"})
        transition(srv, b["id"], "revoke", {"reason": "r"})
        missed_want = [("mandate.created", b["id"]), ("mandate.created", c["id"]),
                       ("mandate.suspended", b["id"])]
        cascade = [("mandate.revoked", b["id"])]   # one event, reaching c

        def check_replay(evs):
            for e in evs:
                self.check_event(e)
            self.check_ids(evs)
            self.assertTrue(all(int(e["id"]) > last for e in evs))
            got = [about(e) for e in evs]
            self.assertEqual(got[:3], missed_want, got)
            self.assertEqual(got[3:], cascade, got)
            self.assertEqual(evs[3]["data"]["descendants"], [c["id"]])
            self.assertEqual(len(got), 4, got)

        s2 = open_stream(self, last_event_id=last)
        replay = s2.drain(idle=0.5)
        check_replay(replay)
        s3 = open_stream(self, query="?after=%d" % last)
        replay3 = s3.drain(idle=0.5)
        self.assertEqual(replay3, replay)
        s3.close()
        # from the middle of the missed ones
        s4 = open_stream(self, last_event_id=replay[1]["id"])
        self.assertEqual(s4.drain(idle=0.5), replay[2:])
        s4.close()
        # the resumed stream goes on live
        d = create_mandate(srv, actor="d")
        ev = s2.next_event(3)
        self.assertIsNotNone(ev)
        self.assertEqual(about(ev), ("mandate.created", d["id"]))
        self.assertGreater(int(ev["id"]), int(replay[-1]["id"]))
        self.assertIsNone(s2.next_event(0.3))

    def test_reconnect_many_times(self):
        """Repeated drops and reconnects: the union of what was received is every event,
        each once, in order."""
        seen = []
        last = None
        made = []
        for round_ in range(5):
            s = open_stream(self, **({"last_event_id": last} if last is not None else {}))
            if last is None:
                time.sleep(0.05)
            for i in range(3):
                made.append(create_mandate(srv, actor="rm%d_%d" % (round_, i))["id"])
            # read only some of them before dropping
            for ev in s.collect(1 if round_ % 2 else 2, timeout=3):
                seen.append(ev)
                last = int(ev["id"])
            s.close()
        s = open_stream(self, last_event_id=last)
        seen += s.drain(idle=0.5)
        self.check_ids(seen)
        self.assertEqual([about(e) for e in seen], [("mandate.created", m) for m in made])

    def test_other_tenant_never_sees_them(self):
        theirs = open_stream(self, key=OTHER)
        mine = open_stream(self)
        m = create_mandate(srv, actor="x")
        sid = srv.create_session(mandate=m["id"])["id"]
        transition(srv, m["id"], "revoke")
        marker = create_mandate(srv, key=OTHER, actor="y")
        ev = theirs.next_event(3)
        self.assertIsNotNone(ev)
        self.assertEqual(about(ev), ("mandate.created", marker["id"]))
        self.assertEqual(theirs.drain(idle=0.3), [])
        got = mine.drain(idle=0.5)
        ids = {about(e)[1] for e in got}
        self.assertIn(m["id"], ids)
        self.assertIn(sid, ids)
        self.assertNotIn(marker["id"], ids)
        backlog = mu.stream_backlog(srv, key=OTHER)
        self.assertNotIn(m["id"], {about(e)[1] for e in backlog})
        self.assertNotIn(sid, {about(e)[1] for e in backlog})
        self.assertIn(marker["id"], {about(e)[1] for e in backlog})

    def test_revoke_arrives_promptly(self):
        s = open_stream(self)
        m = create_mandate(srv)
        self.assertEqual(about(s.next_event(3)), ("mandate.created", m["id"]))
        transition(srv, m["id"], "revoke")
        t0 = time.monotonic()
        ev = s.next_event(2)
        dt = time.monotonic() - t0
        self.assertIsNotNone(ev)
        self.assertEqual(about(ev), ("mandate.revoked", m["id"]))
        self.assertLess(dt, 1.0)

    def test_needs_a_key_and_valid_params(self):
        s = SSE(srv, key=None)
        r = s.body()
        s.close()
        assert_err(r, 401, "unauthorized")
        for q in ("?after=abc", "?after=-1", "?after=1.5", "?bogus=1"):
            with self.subTest(q=q):
                s = SSE(srv, query=q)
                r = s.body()
                s.close()
                self.assertTrue(400 <= r.status < 500, r.raw[:200])
                harness.assert_error_shape(r)
                if q.startswith("?after"):
                    assert_err(r, 400, "bad_request", field="after")


    def test_big_cascade_replayed_exactly(self):
        s = open_stream(self)
        root = create_mandate(srv, actor="big", max_depth=1)
        ev = s.next_event(3)
        self.assertEqual(about(ev), ("mandate.created", root["id"]))
        last = int(ev["id"])
        s.close()
        kids = [delegate(srv, root, actor="k%d" % i)["id"] for i in range(150)]
        transition(srv, root["id"], "revoke", {"reason": "all"})
        s2 = open_stream(self, last_event_id=last)
        got = s2.drain(idle=0.5)
        self.check_ids(got)
        seq = [about(e) for e in got]
        self.assertEqual(len(seq), len(set(seq)), "duplicates in the replay")
        self.assertEqual(seq[:150], [("mandate.created", k) for k in kids])
        self.assertEqual(seq[150:], [("mandate.revoked", root["id"])])
        self.assertEqual(got[150]["data"]["descendants"], kids)
        self.assertEqual(len(seq), 151)

    def test_replay_across_restart(self):
        s2 = harness.Server()
        try:
            st = SSE(s2)
            self.addCleanup(st.close)
            self.assertEqual(st.status, 200)
            a = create_mandate(s2, actor="a")
            ev = st.next_event(3)
            self.assertEqual(about(ev), ("mandate.created", a["id"]))
            last = int(ev["id"])
            b = create_mandate(s2, actor="b")   # persisted, maybe never sent
            st.close()
            self.assertEqual(s2.stop(), 0)
            s2.start()
            transition(s2, b["id"], "revoke")
            c = create_mandate(s2, actor="c")
            st2 = SSE(s2, last_event_id=last)
            self.addCleanup(st2.close)
            self.assertEqual(st2.status, 200)
            got = st2.drain(idle=0.5)
            self.check_ids(got)
            self.assertTrue(all(int(e["id"]) > last for e in got))
            self.assertEqual([about(e) for e in got],
                             [("mandate.created", b["id"]), ("mandate.revoked", b["id"]),
                              ("mandate.created", c["id"])])
        finally:
            s2.stop()


if __name__ == "__main__":
    harness.main()
