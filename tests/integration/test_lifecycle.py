"""test_lifecycle.py — every session state × every state-sensitive call, against the
transition table of docs/api.md. A refused call is 409 with error.state = the current
state and changes nothing; a transition appends one `lifecycle` event {from, to}.
(`inert` needs a mandate layer and cannot be reached yet.)"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error, assert_status, check_session_shape  # noqa: E402

srv = None

STATES = ["open", "active", "paused", "closed", "archived"]
TRANSITIONS = {
    "pause": {"open": "paused", "active": "paused"},
    "resume": {"paused": "active"},
    "close": {"open": "closed", "active": "closed", "paused": "closed"},
    "archive": {"closed": "archived"},
}
WRITABLE_EVENTS = {"open", "active"}
WRITABLE_FACTS = {"open", "active", "paused", "closed"}
COMPACTABLE = {"open", "active", "paused", "closed"}


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


def make(state):
    """A fresh session in state, holding fact `keep`."""
    sid = srv.create_session(user="lc_" + state)["id"]
    assert_status(srv.request("PUT", "/v1/sessions/%s/facts/keep" % sid, {"value": 1}), 200)
    if state == "open":
        return sid
    assert_status(srv.append(sid, {"kind": "message", "content": "first"}), 201)
    if state == "paused":
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % sid), 200)
    if state in ("closed", "archived"):
        assert_status(srv.request("POST", "/v1/sessions/%s/close" % sid), 200)
    if state == "archived":
        assert_status(srv.request("POST", "/v1/sessions/%s/archive" % sid), 200)
    got = srv.get_session(sid)["state"]
    assert got == state, "setup wanted %s got %s" % (state, got)
    return sid


class Matrix(unittest.TestCase):
    def check_unchanged(self, before, sid):
        self.assertEqual(srv.snapshot(sid), before)

    def check_transition(self, call, state):
        sid = make(state)
        before = srv.snapshot(sid)
        # a reason on every call but those from `active` (which go without a body)
        body = {"reason": "because %s" % call} if state != "active" else None
        r = srv.request("POST", "/v1/sessions/%s/%s" % (sid, call), body)
        to = TRANSITIONS[call].get(state)
        if to is None:
            assert_error(r, 409, "invalid_transition", state=state)
            self.check_unchanged(before, sid)
            return
        self.assertEqual(r.status, 200, "%s from %s: %r" % (call, state, r.raw))
        s = r.json
        check_session_shape(self, s)
        self.assertEqual(s["state"], to)
        old = before["session"]
        self.assertEqual(s["seq"], old["seq"] + 1)
        self.assertEqual(s["created_at"], old["created_at"])
        self.assertGreaterEqual(s["updated_at"], old["updated_at"])
        self.assertEqual(s["usage"], old["usage"])
        self.assertEqual(s, srv.get_session(sid))
        ev = srv.all_events(sid)
        self.assertEqual(ev[:-1], before["live"])
        last = ev[-1]
        self.assertEqual(last["kind"], "lifecycle")
        self.assertEqual(last["seq"], s["seq"])
        self.assertEqual(last["content"]["from"], state)
        self.assertEqual(last["content"]["to"], to)
        if body:
            self.assertEqual(last["content"].get("reason"), body["reason"])
        self.assertEqual(srv.facts(sid), before["facts"])

    def check_append(self, state):
        sid = make(state)
        before = srv.snapshot(sid)
        r = srv.append(sid, {"kind": "message", "content": "x", "usage": {"tokens": 3}})
        if state not in WRITABLE_EVENTS:
            assert_error(r, 409, "invalid_state", state=state)
            self.check_unchanged(before, sid)
            # a batch is refused the same way
            r = srv.append(sid, {"events": [{"kind": "a"}, {"kind": "b"}]})
            assert_error(r, 409, "invalid_state", state=state)
            self.check_unchanged(before, sid)
            return
        seq = before["session"]["seq"]
        self.assertEqual(r.status, 201, r.raw)
        self.assertEqual(r.json, {"first_seq": seq + 1, "last_seq": seq + 1})
        s = srv.get_session(sid)
        self.assertEqual(s["state"], "active")
        self.assertEqual(s["seq"], seq + 1)
        self.assertEqual(s["usage"]["tokens"], before["session"]["usage"]["tokens"] + 3)
        ev = srv.all_events(sid)
        # the first append moves open → active with no event of its own
        self.assertEqual([e["kind"] for e in ev[len(before["live"]):]], ["message"])
        self.assertEqual(ev[-1]["seq"], seq + 1)

    def check_fact_put(self, state):
        sid = make(state)
        before = srv.snapshot(sid)
        r = srv.request("PUT", "/v1/sessions/%s/facts/new" % sid, {"value": {"s": state}})
        if state not in WRITABLE_FACTS:
            assert_error(r, 409, "invalid_state", state=state)
            self.check_unchanged(before, sid)
            r = srv.request("PUT", "/v1/sessions/%s/facts/keep" % sid, {"value": 2})
            assert_error(r, 409, "invalid_state", state=state)
            self.check_unchanged(before, sid)
            return
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["value"], {"s": state})
        after = srv.snapshot(sid)
        self.assertEqual(after["facts"], dict(before["facts"], new={"s": state}))
        self.assertEqual(after["session"]["state"], state)
        self.assertEqual(after["session"]["seq"], before["session"]["seq"])
        self.assertEqual(after["events"], before["events"])

    def check_fact_delete(self, state):
        sid = make(state)
        before = srv.snapshot(sid)
        r = srv.request("DELETE", "/v1/sessions/%s/facts/keep" % sid)
        if state not in WRITABLE_FACTS:
            assert_error(r, 409, "invalid_state", state=state)
            self.check_unchanged(before, sid)
            return
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"key": "keep", "deleted": True})
        after = srv.snapshot(sid)
        self.assertEqual(after["facts"], {})
        self.assertEqual(after["session"]["state"], state)
        self.assertEqual(after["session"]["seq"], before["session"]["seq"])

    def check_compact(self, state):
        sid = make(state)
        before = srv.snapshot(sid)
        seq = before["session"]["seq"]
        r = srv.request("POST", "/v1/sessions/%s/compact" % sid,
                        {"through_seq": max(seq, 1), "summary": "sum"})
        if state not in COMPACTABLE:
            assert_error(r, 409, "invalid_state", state=state)
            self.check_unchanged(before, sid)
            return
        if seq == 0:
            # open: nothing to compact, any through_seq is > seq
            assert_error(r, 422, "invalid_value", field="through_seq")
            self.check_unchanged(before, sid)
            return
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"summary_seq": seq, "archived": seq})
        after = srv.snapshot(sid)
        self.assertEqual(after["session"]["state"], state)
        self.assertEqual(after["session"]["seq"], seq)
        self.assertEqual(after["session"]["summary_seq"], seq)
        self.assertEqual([(e["seq"], e["kind"], e["content"]) for e in after["live"]],
                         [(seq, "summary", "sum")])
        self.assertEqual(after["events"], before["events"])
        self.assertEqual(after["facts"], before["facts"])


def _add(name, fn):
    setattr(Matrix, name, fn)


for _state in STATES:
    for _call in TRANSITIONS:
        _add("test_%s_from_%s" % (_call, _state),
             lambda self, c=_call, s=_state: self.check_transition(c, s))
    _add("test_append_in_%s" % _state, lambda self, s=_state: self.check_append(s))
    _add("test_fact_put_in_%s" % _state, lambda self, s=_state: self.check_fact_put(s))
    _add("test_fact_delete_in_%s" % _state, lambda self, s=_state: self.check_fact_delete(s))
    _add("test_compact_in_%s" % _state, lambda self, s=_state: self.check_compact(s))


class Paths(unittest.TestCase):
    def test_full_walk(self):
        """open → paused → active → paused → closed → archived, one lifecycle event each,
        no event for a refused call."""
        sid = srv.create_session(user="walk")["id"]
        steps = [("pause", "paused"), ("resume", "active"), ("pause", "paused"),
                 ("close", "closed"), ("archive", "archived")]
        for call, to in steps:
            r = srv.request("POST", "/v1/sessions/%s/%s" % (sid, call))
            self.assertEqual(r.status, 200, "%s: %r" % (call, r.raw))
            self.assertEqual(r.json["state"], to)
            # the same call again is refused (every one of these is not idempotent)
            if call != "resume":
                again = srv.request("POST", "/v1/sessions/%s/%s" % (sid, call))
                assert_error(again, 409, "invalid_transition", state=to)
        ev = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in ev], [1, 2, 3, 4, 5])
        self.assertEqual([(e["content"]["from"], e["content"]["to"]) for e in ev],
                         [("open", "paused"), ("paused", "active"), ("active", "paused"),
                          ("paused", "closed"), ("closed", "archived")])
        # archived stays readable
        self.assertEqual(srv.request("GET", "/v1/sessions/%s/bundle" % sid).status, 200)
        self.assertEqual(srv.request("GET", "/v1/sessions/%s/facts" % sid).status, 200)
        self.assertEqual(srv.request("GET", "/v1/sessions/%s/events?include=archived"
                                     % sid).status, 200)

    def test_resume_after_pause_from_open_appends(self):
        sid = srv.create_session(user="walk2")["id"]
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % sid), 200)
        assert_status(srv.request("POST", "/v1/sessions/%s/resume" % sid), 200)
        r = srv.append(sid, {"kind": "message", "expect_seq": 2})
        self.assertEqual(r.status, 201, r.raw)
        self.assertEqual(r.json, {"first_seq": 3, "last_seq": 3})

    def test_lifecycle_seq_counts_for_expect_seq(self):
        sid = srv.create_session(user="walk3")["id"]
        assert_status(srv.append(sid, {"kind": "m"}), 201)
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % sid), 200)
        assert_status(srv.request("POST", "/v1/sessions/%s/resume" % sid), 200)
        assert_error(srv.append(sid, {"kind": "m", "expect_seq": 1}), 409, "seq_conflict",
                     field="expect_seq")
        r = srv.append(sid, {"kind": "m", "expect_seq": 3})
        self.assertEqual(r.json, {"first_seq": 4, "last_seq": 4})

    def test_lifecycle_kind_is_reserved(self):
        sid = srv.create_session(user="walk4")["id"]
        before = srv.snapshot(sid)
        for kind in ("lifecycle", "summary"):
            r = srv.append(sid, {"kind": kind, "content": {"from": "open", "to": "closed"}})
            assert_error(r, 422, "reserved_kind")
            r = srv.append(sid, {"events": [{"kind": "ok"}, {"kind": kind}]})
            assert_error(r, 422, "reserved_kind")
        self.assertEqual(srv.snapshot(sid), before)


if __name__ == "__main__":
    harness.main()
