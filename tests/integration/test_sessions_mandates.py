"""test_sessions_mandates.py — sessions bound to mandates. A session may only be
created on an active mandate of its tenant; when its mandate (or an ancestor) is
suspended, revoked, completed or expires, every `open`/`active`/`paused` session
bound to it or below becomes `inert` with one `lifecycle` event
{from, to: "inert", reason: "mandate_<why>", mandate: <the mandate that changed>};
appends and resume answer `409 mandate_inactive` while the mandate does not hold;
reads always work; `close` works from `inert`; `resume` works again once the mandate
is reinstated; session usage adds to `spent` up the mandate's lineage."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_status  # noqa: E402
import mandate_util as mu  # noqa: E402
from mandate_util import (UNKNOWN_MDT, assert_err, create_mandate, delegate,  # noqa: E402
                          future, get_mandate, parse_ts, transition)

srv = None
OTHER = None
# An append refused because the mandate does not hold. The rule is mandate_inactive
# (WhileItDoesNotHold.test_append_to_inert_session_is_mandate_inactive pins it); other
# tests accept invalid_state on an inert session too, so that this one question does
# not hide their other assertions.
REFUSED = ("mandate_inactive", "invalid_state")


def setUpModule():
    global srv, OTHER
    srv = harness.Server(threads=4)
    OTHER = srv.create_key("other")


def tearDownModule():
    srv.stop()


def session_in(mid, state, user="sm"):
    sid = srv.create_session(user=user, mandate=mid)["id"]
    if state in ("active", "paused"):
        assert_status(srv.append(sid, {"kind": "message", "content": "hi"}), 201)
    if state == "paused":
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % sid), 200)
    if state == "closed":
        assert_status(srv.request("POST", "/v1/sessions/%s/close" % sid), 200)
    s = srv.get_session(sid)
    assert s["state"] == state and s["mandate"] == mid, s
    return sid


def wait_state(sid, state, timeout=3.0):
    s = mu.wait_until(lambda: (lambda x: x if x["state"] == state else None)(
        srv.get_session(sid)), timeout)
    return s or srv.get_session(sid)


def lifecycle_events(sid):
    return [e for e in srv.all_events(sid) if e["kind"] == "lifecycle"]


class Create(unittest.TestCase):
    def test_unknown_mandate(self):
        theirs = create_mandate(srv, key=OTHER)
        n = len(srv.request("GET", "/v1/sessions?user=unk&limit=1000").json["sessions"])
        for mid in (UNKNOWN_MDT, theirs["id"], "mdt_handle_1", "m" * 256):
            with self.subTest(mid=mid[:30]):
                r = srv.request("POST", "/v1/sessions",
                                {"user": "unk", "agent": "a", "mandate": mid})
                assert_err(r, 422, "invalid_value", field="mandate")
        self.assertEqual(len(srv.request("GET", "/v1/sessions?user=unk&limit=1000")
                             .json["sessions"]), n)
        # the other tenant can bind to it
        r = srv.request("POST", "/v1/sessions", {"user": "unk", "agent": "a",
                                                 "mandate": theirs["id"]}, key=OTHER)
        self.assertEqual(r.status, 201, r.raw)

    def test_inactive_mandate(self):
        cases = []
        cases.append(("proposed", create_mandate(srv, state="proposed")))
        for call in ("suspend", "revoke", "complete"):
            m = create_mandate(srv)
            transition(srv, m["id"], call)
            cases.append((call, m))
        exp = create_mandate(srv, expires_at=future(0.3))
        for call in ("suspend", "complete"):
            root = create_mandate(srv, actor="r")
            c = delegate(srv, root, actor="c")
            g = delegate(srv, c, actor="g")
            transition(srv, root["id"], call)
            cases.append(("child of " + call, c))
            cases.append(("grandchild of " + call, g))
        time.sleep(max(0.0, parse_ts(exp["expires_at"]) - time.time()) + 0.02)
        cases.append(("expired", exp))
        for desc, m in cases:
            with self.subTest(case=desc):
                r = srv.request("POST", "/v1/sessions",
                                {"user": "inact", "agent": "a", "mandate": m["id"]})
                # `state` names the state of the mandate (or ancestor) that does not hold
                want = {"proposed": "proposed", "suspend": "suspended", "revoke": "revoked",
                        "complete": "completed", "expired": "expired"}[desc.split()[-1]]
                assert_err(r, 409, "mandate_inactive", state=want)
        self.assertEqual(srv.request("GET", "/v1/sessions?user=inact").json["sessions"], [])

    def test_active_mandate(self):
        root = create_mandate(srv, actor="r")
        c = delegate(srv, root, actor="c")
        for m in (root, c):
            r = srv.request("POST", "/v1/sessions", {"user": "ok", "agent": "a",
                                                     "mandate": m["id"]})
            self.assertEqual(r.status, 201, r.raw)
            self.assertEqual((r.json["mandate"], r.json["state"]), (m["id"], "open"))
        r = srv.request("GET", "/v1/sessions?user=ok&mandate=" + c["id"])
        self.assertEqual([s["mandate"] for s in r.json["sessions"]], [c["id"]])


class GoInert(unittest.TestCase):
    def run_case(self, call, why):
        root = create_mandate(srv, actor="r", max_depth=2)
        child = delegate(srv, root, actor="c")
        other = create_mandate(srv, actor="o")
        sessions = {st: session_in(root["id"], st) for st in ("open", "active", "paused",
                                                              "closed")}
        sessions["child"] = session_in(child["id"], "active")
        bystander = session_in(other["id"], "active")
        free = srv.create_session(user="free")["id"]
        assert_status(srv.append(free, {"kind": "m"}), 201)
        before = {k: srv.snapshot(sid) for k, sid in sessions.items()}
        before_by = srv.snapshot(bystander)
        before_free = srv.snapshot(free)
        body = {"reason": "because"} if call in ("suspend", "revoke") else None
        transition(srv, root["id"], call, body)
        for key, old in (("open", "open"), ("active", "active"), ("paused", "paused"),
                         ("child", "active")):
            with self.subTest(session=key):
                sid = sessions[key]
                s = wait_state(sid, "inert")
                self.assertEqual(s["state"], "inert", "session %s (%s) did not go inert"
                                 % (key, sid))
                b = before[key]
                self.assertEqual(s["seq"], b["session"]["seq"] + 1)
                ev = srv.all_events(sid)
                self.assertEqual(ev[:-1], b["live"])
                last = ev[-1]
                self.assertEqual(last["kind"], "lifecycle")
                self.assertEqual(last["seq"], s["seq"])
                self.assertEqual(last["content"], {"from": old, "to": "inert", "reason": why,
                                                   "mandate": root["id"]})
                self.assertEqual(srv.facts(sid), b["facts"])
                self.assertEqual(s["usage"], b["session"]["usage"])
        # closed sessions, other mandates' sessions and free sessions are untouched
        time.sleep(0.1)
        self.assertEqual(srv.snapshot(sessions["closed"]), before["closed"])
        self.assertEqual(srv.snapshot(bystander), before_by)
        self.assertEqual(srv.snapshot(free), before_free)
        return root, child, sessions

    def test_suspend(self):
        self.run_case("suspend", "mandate_suspended")

    def test_revoke(self):
        self.run_case("revoke", "mandate_revoked")

    def test_complete(self):
        self.run_case("complete", "mandate_completed")

    def test_expire(self):
        root = create_mandate(srv, actor="r", expires_at=future(1.0))
        child = delegate(srv, root, actor="c")
        sids = {"active": session_in(root["id"], "active"),
                "paused": session_in(root["id"], "paused"),
                "open": session_in(root["id"], "open"),
                "child": session_in(child["id"], "active")}
        time.sleep(max(0.0, parse_ts(root["expires_at"]) - time.time()) + 0.5)
        for key, sid in sids.items():
            with self.subTest(session=key):
                s = wait_state(sid, "inert", timeout=2.0)
                self.assertEqual(s["state"], "inert")
                c = srv.all_events(sid)[-1]["content"]
                self.assertEqual((c["from"], c["to"], c["reason"]),
                                 ("paused" if key == "paused" else
                                  "open" if key == "open" else "active",
                                  "inert", "mandate_expired"))
                # both expire at the same instant: either may be named as the cause
                want = (root["id"],) if key != "child" else (root["id"], child["id"])
                self.assertIn(c["mandate"], want)
        self.assertEqual(get_mandate(srv, root["id"])["state"], "expired")
        assert_err(srv.append(sids["active"], {"kind": "m"}), 409, REFUSED)
        assert_err(srv.request("POST", "/v1/sessions/%s/resume" % sids["active"]), 409,
                   "mandate_inactive", state="expired")

    def test_no_append_after_expiry(self):
        """Appends racing the deadline: every append sent after expires_at (+10 ms) is
        refused (409, nothing written), every append answered before it (−10 ms)
        lands."""
        root = create_mandate(srv, actor="r", expires_at=future(0.3))
        sid = session_in(root["id"], "active")
        deadline = parse_ts(root["expires_at"])
        samples = []
        with srv.client() as c:
            while time.time() < deadline + 0.08:
                t0 = time.time()
                r = c.request("POST", "/v1/sessions/%s/events" % sid,
                              {"kind": "tick", "content": t0})
                t1 = time.time()
                samples.append((t0, t1, r))
        late = [(round(t0 - deadline, 4), r.status, r.raw[:120]) for t0, t1, r in samples
                if t0 > deadline + 0.010 and r.status != 409]
        self.assertEqual(late, [], "appends accepted after expires_at")
        for t0, t1, r in samples:
            if t0 > deadline + 0.010:
                assert_err(r, 409, ("mandate_inactive", "invalid_state"))
        early = [(round(t1 - deadline, 4), r.status) for t0, t1, r in samples
                 if t1 < deadline - 0.010 and r.status != 201]
        self.assertEqual(early, [], "appends refused before expires_at")
        self.assertGreater(len([1 for t0, t1, r in samples if t1 < deadline - 0.010]), 0)
        self.assertGreater(len([1 for t0, t1, r in samples if t0 > deadline + 0.010]), 0)
        accepted = sum(1 for _, _, r in samples if r.status == 201)
        ticks = [e for e in srv.all_events(sid) if e["kind"] == "tick"]
        self.assertEqual(len(ticks), accepted)
        self.assertTrue(all(e["content"] <= deadline + 0.010 for e in ticks),
                        "an event sent after the deadline was written")

    def test_only_the_subtree(self):
        root = create_mandate(srv, actor="r", max_depth=2)
        a = delegate(srv, root, actor="a")
        b = delegate(srv, root, actor="b")
        sa = session_in(a["id"], "active")
        sb = session_in(b["id"], "active")
        sr = session_in(root["id"], "active")
        transition(srv, a["id"], "revoke", {"reason": "a only"})
        s = wait_state(sa, "inert")
        self.assertEqual(s["state"], "inert")
        self.assertEqual(srv.all_events(sa)[-1]["content"],
                         {"from": "active", "to": "inert", "reason": "mandate_revoked",
                          "mandate": a["id"]})
        time.sleep(0.1)
        self.assertEqual(srv.get_session(sb)["state"], "active")
        self.assertEqual(srv.get_session(sr)["state"], "active")
        assert_status(srv.append(sb, {"kind": "m"}), 201)
        assert_status(srv.append(sr, {"kind": "m"}), 201)

    def test_no_second_inert_event(self):
        root = create_mandate(srv, actor="r")
        sid = session_in(root["id"], "active")
        transition(srv, root["id"], "suspend")
        self.assertEqual(wait_state(sid, "inert")["state"], "inert")
        n = len(srv.all_events(sid))
        transition(srv, root["id"], "revoke")
        time.sleep(0.2)
        self.assertEqual(len(srv.all_events(sid)), n)
        self.assertEqual(srv.get_session(sid)["state"], "inert")


class WhileItDoesNotHold(unittest.TestCase):
    def test_append_refused_at_once(self):
        """Right after the suspend's 200 (whether or not the session has been moved to
        inert yet) an append is refused with mandate_inactive and changes nothing."""
        root = create_mandate(srv, actor="r")
        child = delegate(srv, root, actor="c")
        sids = [session_in(root["id"], "active"), session_in(child["id"], "active"),
                session_in(child["id"], "open")]
        with srv.client() as c:
            transition(srv, root["id"], "suspend")
            for sid in sids:
                r = c.request("POST", "/v1/sessions/%s/events" % sid,
                              {"kind": "m", "usage": {"tokens": 5}})
                assert_err(r, 409, REFUSED)
        for sid in sids:
            s = wait_state(sid, "inert")
            self.assertEqual(s["state"], "inert")
            before = srv.snapshot(sid)
            assert_err(srv.append(sid, {"kind": "m"}), 409, REFUSED)
            assert_err(srv.append(sid, {"events": [{"kind": "a"}, {"kind": "b"}]}), 409,
                       REFUSED)
            self.assertEqual(srv.snapshot(sid), before)
        self.assertEqual(get_mandate(srv, root["id"])["spent"]["tokens"], 0)

    def test_append_to_inert_session_is_mandate_inactive(self):
        """An append to a session whose mandate does not hold is 409 mandate_inactive,
        whether or not the session has been moved to inert yet (once the mandate holds
        again, an append to the still-inert session is invalid_state)."""
        root = create_mandate(srv, actor="r")
        sid = session_in(root["id"], "active")
        transition(srv, root["id"], "suspend")
        r = srv.append(sid, {"kind": "m"})
        assert_err(r, 409, "mandate_inactive", state="suspended")
        self.assertEqual(wait_state(sid, "inert")["state"], "inert")
        assert_err(srv.append(sid, {"kind": "m"}), 409, "mandate_inactive", state="suspended")
        transition(srv, root["id"], "reinstate")
        assert_err(srv.append(sid, {"kind": "m"}), 409, "invalid_state", state="inert")

    def test_resume_refused_then_allowed_after_reinstate(self):
        root = create_mandate(srv, actor="r")
        child = delegate(srv, root, actor="c")
        sp = session_in(child["id"], "paused")
        sa = session_in(root["id"], "active")
        transition(srv, root["id"], "suspend")
        # at once: from paused or from inert, the answer is the same
        assert_err(srv.request("POST", "/v1/sessions/%s/resume" % sp), 409, "mandate_inactive",
                   state="suspended")
        for sid in (sp, sa):
            self.assertEqual(wait_state(sid, "inert")["state"], "inert")
            before = srv.snapshot(sid)
            assert_err(srv.request("POST", "/v1/sessions/%s/resume" % sid), 409,
                       "mandate_inactive", state="suspended")
            assert_err(srv.request("POST", "/v1/sessions/%s/resume" % sid,
                                   {"reason": "please"}), 409, "mandate_inactive",
                       state="suspended")
            # pause/archive are not transitions from inert
            assert_err(srv.request("POST", "/v1/sessions/%s/pause" % sid), 409,
                       "invalid_transition", state="inert")
            assert_err(srv.request("POST", "/v1/sessions/%s/archive" % sid), 409,
                       "invalid_transition", state="inert")
            self.assertEqual(srv.snapshot(sid), before)
        transition(srv, root["id"], "reinstate")
        # reinstating does not resume by itself; the session is still inert
        time.sleep(0.1)
        for sid in (sp, sa):
            self.assertEqual(srv.get_session(sid)["state"], "inert")
            assert_err(srv.append(sid, {"kind": "m"}), 409, "invalid_state", state="inert")
        for sid in (sp, sa):
            n = srv.get_session(sid)["seq"]
            r = srv.request("POST", "/v1/sessions/%s/resume" % sid, {"reason": "back"})
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual((r.json["state"], r.json["seq"]), ("active", n + 1))
            last = srv.all_events(sid)[-1]
            self.assertEqual(last["kind"], "lifecycle")
            self.assertEqual((last["content"]["from"], last["content"]["to"],
                              last["content"].get("reason")), ("inert", "active", "back"))
            r = srv.append(sid, {"kind": "m", "expect_seq": n + 1})
            self.assertEqual(r.status, 201, r.raw)
            self.assertEqual(r.json, {"first_seq": n + 2, "last_seq": n + 2})

    def test_revoked_never_resumes(self):
        root = create_mandate(srv, actor="r")
        sid = session_in(root["id"], "active")
        transition(srv, root["id"], "revoke")
        self.assertEqual(wait_state(sid, "inert")["state"], "inert")
        for _ in range(2):
            assert_err(srv.request("POST", "/v1/sessions/%s/resume" % sid), 409,
                       "mandate_inactive", state="revoked")
        assert_err(srv.append(sid, {"kind": "m"}), 409, REFUSED)

    def test_reads_always_work(self):
        root = create_mandate(srv, actor="r")
        sid = session_in(root["id"], "active")
        assert_status(srv.request("PUT", "/v1/sessions/%s/facts/k" % sid, {"value": 1}), 200)
        assert_status(srv.append(sid, {"events": [{"kind": "m", "content": i}
                                                  for i in range(5)]}), 201)
        transition(srv, root["id"], "revoke")
        self.assertEqual(wait_state(sid, "inert")["state"], "inert")
        for path in ("", "/events", "/events?include=archived", "/events?after=2&limit=2",
                     "/facts", "/facts/k", "/bundle", "/bundle?limit=2"):
            with self.subTest(path=path):
                r = srv.request("GET", "/v1/sessions/%s%s" % (sid, path))
                self.assertEqual(r.status, 200, r.raw)
        b = srv.request("GET", "/v1/sessions/%s/bundle" % sid).json
        self.assertEqual(b["session"]["state"], "inert")
        self.assertEqual(b["facts"], {"k": 1})
        self.assertEqual(b["events"][-1]["content"]["to"], "inert")
        r = srv.request("GET", "/v1/sessions?state=inert&mandate=" + root["id"])
        self.assertEqual([s["id"] for s in r.json["sessions"]], [sid])
        # docs/api.md leaves open whether facts may be written while inert ("not
        # writable" vs "facts can be written in every state but archived"): only
        # require a clean answer
        r = srv.request("PUT", "/v1/sessions/%s/facts/k2" % sid, {"value": 2})
        self.assertIn(r.status, (200, 409), r.raw)
        if r.status == 409:
            self.assertIn(r.json["error"]["code"], ("invalid_state", "mandate_inactive"))

    def test_close_from_inert(self):
        root = create_mandate(srv, actor="r")
        sid = session_in(root["id"], "paused")
        transition(srv, root["id"], "suspend", {"reason": "x"})
        self.assertEqual(wait_state(sid, "inert")["state"], "inert")
        n = srv.get_session(sid)["seq"]
        r = srv.request("POST", "/v1/sessions/%s/close" % sid, {"reason": "giving up"})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["state"], r.json["seq"]), ("closed", n + 1))
        c = srv.all_events(sid)[-1]["content"]
        self.assertEqual((c["from"], c["to"], c.get("reason")), ("inert", "closed", "giving up"))
        r = srv.request("POST", "/v1/sessions/%s/archive" % sid)
        self.assertEqual(r.status, 200, r.raw)
        # a reinstate later does not touch closed/archived sessions
        transition(srv, root["id"], "reinstate")
        time.sleep(0.1)
        self.assertEqual(srv.get_session(sid)["state"], "archived")


class Spending(unittest.TestCase):
    def test_usage_adds_up_the_lineage(self):
        root = create_mandate(srv, actor="r", max_depth=2,
                              budget={"tokens": 1000, "cost_usd": 10.0, "tool_calls": 50})
        child = delegate(srv, root, actor="c", budget={"tokens": 500, "cost_usd": 5.0,
                                                       "tool_calls": 20})
        grand = delegate(srv, child, actor="g", budget={"tokens": 100, "cost_usd": 1.0,
                                                        "tool_calls": 5})
        other = create_mandate(srv, actor="o", budget={"tokens": 1000})
        sg = srv.create_session(mandate=grand["id"])["id"]
        sc = srv.create_session(mandate=child["id"])["id"]
        sr = srv.create_session(mandate=root["id"])["id"]
        free = srv.create_session()["id"]
        assert_status(srv.append(sg, {"kind": "m", "usage": {"tokens": 30, "cost_usd": 0.25,
                                                             "tool_calls": 2}}), 201)
        assert_status(srv.append(sg, {"events": [
            {"kind": "m", "usage": {"tokens": 5}}, {"kind": "m", "usage": {"tool_calls": 1}},
            {"kind": "m"}]}), 201)
        assert_status(srv.append(sc, {"kind": "m", "usage": {"tokens": 7, "cost_usd": 1.5}}),
                      201)
        assert_status(srv.append(sr, {"kind": "m", "usage": {"tokens": 11}}), 201)
        assert_status(srv.append(free, {"kind": "m", "usage": {"tokens": 1000}}), 201)
        self.assertEqual(get_mandate(srv, grand["id"])["spent"],
                         {"tokens": 35, "cost_usd": 0.25, "tool_calls": 3})
        self.assertEqual(get_mandate(srv, child["id"])["spent"],
                         {"tokens": 42, "cost_usd": 1.75, "tool_calls": 3})
        self.assertEqual(get_mandate(srv, root["id"])["spent"],
                         {"tokens": 53, "cost_usd": 1.75, "tool_calls": 3})
        self.assertEqual(get_mandate(srv, other["id"])["spent"]["tokens"], 0)
        self.assertEqual(srv.get_session(sg)["usage"],
                         {"tokens": 35, "cost_usd": 0.25, "tool_calls": 3})
        # reaching the root's budget makes every check in its tree answer budget_exceeded,
        # though the child and grandchild are within their own
        assert_status(srv.append(sr, {"kind": "m", "usage": {"tokens": 947}}), 201)
        self.assertEqual(get_mandate(srv, root["id"])["spent"]["tokens"], 1000)
        for m in (root, child, grand):
            allow, reason, _ = mu.decide(srv, m["id"], action={
                "tool": grand["scope"]["tools"][0], "lane": grand["scope"]["lanes"][0],
                "resource": grand["scope"]["resources"][0],
                "class": grand["scope"]["classes"][0]})
            self.assertEqual((allow, reason), (False, "budget_exceeded"), m["actor"])

    def test_usage_beyond_budget_is_recorded(self):
        """docs/api.md: appends are still recorded once the budget is reached (usage that
        happened is never refused); spent goes past budget, checks deny."""
        root = create_mandate(srv, actor="r", budget={"tokens": 10})
        child = delegate(srv, root, actor="c", budget={"tokens": 10})
        sid = srv.create_session(mandate=child["id"])["id"]
        for n in (10, 5, 7):
            assert_status(srv.append(sid, {"kind": "m", "usage": {"tokens": n}}), 201)
        self.assertEqual(get_mandate(srv, root["id"])["spent"]["tokens"], 22)
        self.assertEqual(get_mandate(srv, child["id"])["spent"]["tokens"], 22)
        self.assertEqual(srv.get_session(sid)["usage"]["tokens"], 22)
        self.assertEqual(srv.get_session(sid)["state"], "active")
        self.assertEqual(mu.decide(srv, child["id"])[:2], (False, "budget_exceeded"))

    def test_refused_append_spends_nothing(self):
        root = create_mandate(srv, actor="r", budget={"tokens": 100})
        sid = srv.create_session(mandate=root["id"])["id"]
        assert_status(srv.append(sid, {"kind": "m", "usage": {"tokens": 10}}), 201)
        transition(srv, root["id"], "suspend")
        assert_err(srv.append(sid, {"kind": "m", "usage": {"tokens": 50}}), 409,
                   REFUSED)
        self.assertEqual(get_mandate(srv, root["id"])["spent"]["tokens"], 10)
        self.assertEqual(srv.get_session(sid)["usage"]["tokens"], 10)


    def test_concurrent_spending_adds_up(self):
        import threading
        root = create_mandate(srv, actor="cr", max_depth=1)
        kids = [delegate(srv, root, actor="ck%d" % i) for i in range(4)]
        sids = [srv.create_session(mandate=k["id"])["id"] for k in kids for _ in range(2)]
        errors = []

        def worker(i):
            try:
                with srv.client() as c:
                    for n in range(25):
                        r = c.request("POST", "/v1/sessions/%s/events" % sids[i],
                                      {"kind": "m", "usage": {"tokens": 1, "cost_usd": 0.5,
                                                              "tool_calls": 1}})
                        assert r.status == 201, r.raw
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(sids))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        self.assertEqual(errors, [])
        for k in kids:
            self.assertEqual(get_mandate(srv, k["id"])["spent"],
                             {"tokens": 50, "cost_usd": 25.0, "tool_calls": 50})
        self.assertEqual(get_mandate(srv, root["id"])["spent"],
                         {"tokens": 200, "cost_usd": 100.0, "tool_calls": 200})


if __name__ == "__main__":
    harness.main()
