"""test_malformed_ephemeral.py — a corpus of bad requests over every ephemeral route
(docs/api.md "Ephemeral scopes", "Errors"): broken JSON, bodies that are not objects,
empty bodies, invalid UTF-8, deep nesting, every field with a wrong type or value,
unknown fields, bodies over max_body, odd scope ids, odd context keys and agent
names, wrong methods, query strings on routes that take none, missing keys. Each must
get a 4xx with the error shape (never a 5xx), the documented code and field where
docs/api.md names one, and must change nothing: the target scopes (one scoped, one
command, one locked), the session complete would write to, and the scope gauges and
eviction counters of /metrics are compared before and after. The server must stay
up."""

import http.client
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error, assert_error_shape, assert_status, q  # noqa: E402

srv = None
SID = None       # a scoped scope of agent "victim": every refused request aims at it
CID = None       # a command scope of "victim" (upgrade takes a body only on these)
LID = None       # a locked scoped scope of "victim"
SESS = None      # the session complete would write to
UNKNOWN = "eph_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"
MAX_BODY = 1 << 20
ANY = object()   # any 4xx with the error shape
DROP = object()

CONTEXT = {"keep": "me", "n": [1, 2, 3], "nested": {"a": {"b": None}}}


def setUpModule():
    global srv, SID, CID, LID, SESS
    srv = harness.Server()
    SESS = srv.create_session(user="victim", agent="victim")["id"]
    assert_status(srv.request("PUT", "/v1/sessions/%s/facts/old" % SESS, {"value": 1}), 200)
    SID = make()
    CID = make(flow="command", ttl=3000)
    LID = make()
    assert_status(srv.request("POST", "/v1/ephemeral/%s/lock" % LID), 200)


def tearDownModule():
    srv.stop()


def make(**kw):
    body = {"agent": "victim", "ttl": 3000, "context": CONTEXT}
    body.update(kw)
    r = srv.request("POST", "/v1/ephemeral", body)
    assert r.status == 201, r.raw
    return r.json["id"]


def nest(depth, leaf="0"):
    return "[" * depth + leaf + "]" * depth


def scope_view(sid):
    r = srv.request("GET", "/v1/ephemeral/" + sid)
    assert r.status == 200, (sid, r.raw[:300])
    d = dict(r.json)
    d.pop("last_used_at")   # a read is a use
    return d


def gauges():
    r = srv.request("GET", "/metrics", key=None)
    out = {}
    for ln in r.raw.decode("utf-8").splitlines():
        if ln.startswith(("charter_scopes", "charter_scope_bytes",
                          "charter_scope_evictions_total", "charter_scope_expiring_total")):
            name, _, val = ln.rpartition(" ")
            out[name] = float(val)
    assert 'charter_scopes{flow="scoped"}' in out, sorted(out)
    return out


def snapshot():
    return {"scopes": {i: scope_view(i) for i in (SID, CID, LID)},
            "facts": srv.facts(SESS), "metrics": gauges()}


def w(base, **kw):
    d = dict(base)
    for k, v in kw.items():
        if v is DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


class Corpus(unittest.TestCase):
    """Each case: (method, path, body, status, code, field). body is a Python value
    (sent as JSON), bytes (sent raw) or None (no body); status and code may be tuples
    where docs/api.md leaves the choice open; code ANY takes any 4xx of the shape."""

    def send(self, method, path, body):
        try:
            if isinstance(body, (bytes, bytearray)):
                return srv.request(method, path, raw=body)
            return srv.request(method, path, body)
        except (http.client.HTTPException, OSError) as ex:
            self.fail("%s %s: connection dropped (%r), server %s" % (
                method, path[:100], ex, "alive" if srv.alive() else "DIED (%s)"
                % srv.proc.returncode))

    def run_cases(self, cases):
        before = snapshot()
        for case in cases:
            method, path, body, status, code, field = (list(case) + [None])[:6]
            shown = body[:80] if isinstance(body, bytes) else json.dumps(body)[:80]
            with self.subTest(method=method, path=path[:90], body=shown):
                r = self.send(method, path, body)
                self.assertLess(r.status, 500, "5xx: %r" % r.raw[:300])
                self.assertGreaterEqual(r.status, 400, "accepted: %r" % r.raw[:300])
                if code is ANY:
                    if status is not None:
                        ok = status if isinstance(status, tuple) else (status,)
                        self.assertIn(r.status, ok, r.raw[:300])
                    assert_error_shape(r)
                else:
                    assert_error(r, status, code, field=field)
        self.assertTrue(srv.alive(), "server died")
        self.assertEqual(snapshot(), before)

    # ---- bodies that are not JSON objects ---------------------------------------------------
    def body_routes(self):
        S = "/v1/ephemeral/" + SID
        return [("POST", "/v1/ephemeral"), ("PATCH", S), ("PUT", S + "/context/keep"),
                ("POST", S + "/extend"), ("POST", "/v1/ephemeral/%s/upgrade" % CID),
                ("POST", S + "/complete"), ("POST", S + "/lock"),
                ("POST", "/v1/ephemeral/%s/unlock" % LID)]

    def test_not_json(self):
        cases = []
        for method, p in self.body_routes():
            for raw in (b"{", b"{not json}", b'{"agent": "a",}', b'{"a":1}{"b":2}', b"nul",
                        b"\x00", b'{"agent":"a"}\x00', b"{'agent':'a'}", b'{"agent":"a" "x":1}',
                        b'{"ttl": NaN}', b'{"ttl": Infinity}', b'{"ttl": 01}', b'{"ttl": -}',
                        b'\xef\xbb\xbf{"agent":"a"}x', b"\xff\xfe{}", b'{"value":1,"value":2}',
                        b'{"context":{"a":1,"a":2}}'):
                cases.append((method, p, raw, 400, "bad_json"))
            for raw in (b"[]", b'[{"agent":"a"}]', b'"string"', b"42", b"3.5", b"true",
                        b"null"):
                cases.append((method, p, raw, 400, "bad_request"))
        # an empty body where one is required
        for method, p in self.body_routes()[:3]:
            cases.append((method, p, b"", 400, ("bad_json", "bad_request")))
        self.run_cases(cases)

    def test_bad_utf8_and_control_chars(self):
        S = "/v1/ephemeral/" + SID
        cases = []
        for bad in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82",
                    b"a\x80b", b"\x00", b"\n"):
            cases += [
                ("POST", "/v1/ephemeral", b'{"agent":"' + bad + b'"}', 400, "bad_json"),
                ("POST", "/v1/ephemeral", b'{"agent":"a","context":{"' + bad + b'":1}}', 400,
                 "bad_json"),
                ("PATCH", S, b'{"context":{"k":"' + bad + b'"}}', 400, "bad_json"),
                ("PUT", S + "/context/keep", b'{"value":"' + bad + b'"}', 400, "bad_json"),
                ("POST", S + "/complete", b'{"session":"' + bad + b'"}', 400, "bad_json"),
            ]
        self.run_cases(cases)

    def test_deep_nesting(self):
        S = "/v1/ephemeral/" + SID
        cases = [
            ("POST", "/v1/ephemeral", ('{"agent":"a","context":{"k":%s}}' % nest(1000)).encode(),
             400, "bad_json"),
            ("POST", "/v1/ephemeral", ('{"agent":"a","context":{"k":%s}}' % nest(66)).encode(),
             400, "bad_json"),
            ("PATCH", S, ('{"context":%s}' % ('{"a":' * 200 + "1" + "}" * 200)).encode(), 400,
             "bad_json"),
            ("PUT", S + "/context/keep", ('{"value":%s}' % nest(100000)).encode(), 400,
             "bad_json"),
            ("PUT", S + "/context/keep", ('{"value":' + "[" * 5000).encode(), 400, "bad_json"),
            ("POST", S + "/complete", ('{"keys":%s}' % nest(1000)).encode(), 400, "bad_json"),
        ]
        self.run_cases(cases)

    # ---- POST /v1/ephemeral ---------------------------------------------------------------
    def test_create_fields(self):
        P = "/v1/ephemeral"
        ok = {"agent": "victim", "ttl": 60, "context": {"a": 1}}
        cases = [
            ("POST", P, {}, 400, "missing_field", "agent"),
            ("POST", P, w(ok, agent=DROP), 400, "missing_field", "agent"),
            ("POST", P, w(ok, agent=None), 400, ("missing_field", "invalid_type"), "agent"),
            ("POST", P, w(ok, agent=5), 400, "invalid_type", "agent"),
            ("POST", P, w(ok, agent=["a"]), 400, "invalid_type", "agent"),
            ("POST", P, w(ok, agent={"a": 1}), 400, "invalid_type", "agent"),
            ("POST", P, w(ok, agent=True), 400, "invalid_type", "agent"),
            ("POST", P, w(ok, agent=""), 422, "invalid_value", "agent"),
            ("POST", P, w(ok, agent="x" * 257), 422, "invalid_value", "agent"),
            ("POST", P, w(ok, agent="é" * 129), 422, "invalid_value", "agent"),
            ("POST", P, w(ok, ttl={}), 400, "invalid_type", "ttl"),
            ("POST", P, w(ok, ttl=[60]), 400, "invalid_type", "ttl"),
            ("POST", P, w(ok, ttl=True), 400, "invalid_type", "ttl"),
            ("POST", P, w(ok, ttl=-1), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl=0), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl=0.0001), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="abc"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl=""), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="0s"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="-5s"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="5 s"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="60"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl=3601), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="2h"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl=1e300), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, ttl="99999999999999999999h"), 422, "invalid_value", "ttl"),
            ("POST", P, w(ok, idle_ttl={}), 400, "invalid_type", "idle_ttl"),
            ("POST", P, w(ok, idle_ttl=True), 400, "invalid_type", "idle_ttl"),
            ("POST", P, w(ok, idle_ttl=-1), 422, "invalid_value", "idle_ttl"),
            ("POST", P, w(ok, idle_ttl="abc"), 422, "invalid_value", "idle_ttl"),
            ("POST", P, w(ok, idle_ttl=3601), 422, "invalid_value", "idle_ttl"),
            ("POST", P, w(ok, flow="bogus"), 422, "invalid_value", "flow"),
            ("POST", P, w(ok, flow="SCOPED"), 422, "invalid_value", "flow"),
            ("POST", P, w(ok, flow=""), (400, 422), ("invalid_value", "invalid_type"), "flow"),
            ("POST", P, w(ok, flow=1), 400, "invalid_type", "flow"),
            ("POST", P, w(ok, flow=["scoped"]), 400, "invalid_type", "flow"),
            ("POST", P, w(ok, auto_extend="yes"), 400, "invalid_type", "auto_extend"),
            ("POST", P, w(ok, auto_extend=1), 400, "invalid_type", "auto_extend"),
            ("POST", P, w(ok, auto_extend={}), 400, "invalid_type", "auto_extend"),
            ("POST", P, w(ok, context=[]), 400, "invalid_type", "context"),
            ("POST", P, w(ok, context=[{"a": 1}]), 400, "invalid_type", "context"),
            ("POST", P, w(ok, context="a=1"), 400, "invalid_type", "context"),
            ("POST", P, w(ok, context=5), 400, "invalid_type", "context"),
            ("POST", P, w(ok, context=True), 400, "invalid_type", "context"),
            ("POST", P, w(ok, context={"a": "x" * 65536}), 422, "invalid_value", "context"),
            # unknown fields, named
            ("POST", P, w(ok, id=SID), 400, "unknown_field", "id"),
            ("POST", P, w(ok, agent_id="a"), 400, "unknown_field", "agent_id"),
            ("POST", P, w(ok, locked=True), 400, "unknown_field", "locked"),
            ("POST", P, w(ok, expires_at="2030-01-01T00:00:00.000Z"), 400, "unknown_field",
             "expires_at"),
            ("POST", P, w(ok, created_at="2030-01-01T00:00:00.000Z"), 400, "unknown_field",
             "created_at"),
            ("POST", P, w(ok, grace_until="x"), 400, "unknown_field", "grace_until"),
            ("POST", P, w(ok, tenant="other"), 400, "unknown_field", "tenant"),
            ("POST", P, w(ok, Agent="a"), 400, "unknown_field", "Agent"),
            ("POST", P, w(ok, session=SESS), 400, "unknown_field", "session"),
            ("POST", P, w(ok, value=1), 400, "unknown_field", "value"),
        ]
        self.run_cases(cases)

    def test_create_context_keys(self):
        P = "/v1/ephemeral"
        for key in ("", "k" * 257, "é" * 129):
            with self.subTest(key=key[:20]):
                r = self.send("POST", P, {"agent": "victim", "context": {key: 1}})
                e = assert_error(r, 422, "invalid_value")
                self.assertTrue(e.get("field", "").startswith("context"), r.raw[:300])
        self.assertTrue(srv.alive())

    # ---- PATCH, context keys ---------------------------------------------------------------
    def test_patch_fields(self):
        S = "/v1/ephemeral/" + SID
        cases = [
            ("PATCH", S, {}, 400, "missing_field", "context"),
            ("PATCH", S, {"context": None}, 400, ("missing_field", "invalid_type"), "context"),
            ("PATCH", S, {"context": []}, 400, "invalid_type", "context"),
            ("PATCH", S, {"context": "k=v"}, 400, "invalid_type", "context"),
            ("PATCH", S, {"context": 1}, 400, "invalid_type", "context"),
            ("PATCH", S, {"context": {"a": 1}, "ttl": 5}, 400, "unknown_field", "ttl"),
            ("PATCH", S, {"context": {"a": 1}, "locked": False}, 400, "unknown_field", "locked"),
            ("PATCH", S, {"ctx": {"a": 1}}, 400, "unknown_field", "ctx"),
            ("PATCH", S, {"context": {"big": "x" * 65536}}, 422, "invalid_value", "context"),
            ("PATCH", S, {"context": {"": 1}}, 422, "invalid_value"),
            ("PATCH", S, {"context": {"k" * 257: 1}}, 422, "invalid_value"),
            # the locked one: locked, whatever the body
            ("PATCH", "/v1/ephemeral/" + LID, {"context": {"a": 1}}, 423, "scope_locked"),
        ]
        self.run_cases(cases)

    def test_put_key_fields(self):
        K = "/v1/ephemeral/%s/context/keep" % SID
        cases = [
            ("PUT", K, {}, 400, "missing_field", "value"),
            ("PUT", K, {"val": 1}, 400, "unknown_field", "val"),
            ("PUT", K, {"value": 1, "key": "keep"}, 400, "unknown_field", "key"),
            ("PUT", K, {"value": 1, "expires_at": "x"}, 400, "unknown_field", "expires_at"),
            ("PUT", K, {"value": "x" * 65536}, 422, "invalid_value", "value"),
            ("PUT", "/v1/ephemeral/%s/context/keep" % LID, {"value": 1}, 423, "scope_locked"),
        ]
        self.run_cases(cases)

    def test_odd_keys(self):
        base = "/v1/ephemeral/%s/context/" % SID
        cases = []
        for m, b in (("GET", None), ("PUT", {"value": 1})):
            cases += [
                (m, base, b, (400, 422), ("invalid_value", "bad_request"), "key"),
                (m, base + "k" * 257, b, 422, "invalid_value", "key"),
                (m, base + "k" * 300, b, 422, "invalid_value", "key"),
                (m, base + "k" * 600, b, 422, "invalid_value", "key"),
                (m, base + q("é" * 129), b, 422, "invalid_value", "key"),
                (m, base + "%", b, 400, "bad_request", "key"),
                (m, base + "a%4", b, 400, "bad_request", "key"),
                (m, base + "%zz", b, 400, "bad_request", "key"),
                (m, base + "%00", b, 400, "bad_request", "key"),
                (m, base + "a%00b", b, 400, "bad_request", "key"),
                (m, base + "%%41", b, 400, "bad_request", "key"),
                # an unencoded slash makes another route
                (m, base + "a/b", b, 404, "not_found"),
            ]
        cases.append(("GET", base + "absent", None, 404, "not_found", "key"))
        cases.append(("GET", base + q("KEEP"), None, 404, "not_found", "key"))
        self.run_cases(cases)

    def test_key_not_utf8(self):
        """A key that percent-decodes to invalid UTF-8 is a client mistake: 4xx, and the
        context is left as it was."""
        base = "/v1/ephemeral/%s/context/" % SID
        cases = []
        for k in ("%FF", "%C3", "%ED%A0%80", "%C0%AF", "a%80b", "%F5%80%80%80"):
            cases.append(("PUT", base + k, {"value": 1}, (400, 422), ANY))
            cases.append(("GET", base + k, None, (400, 404, 422), ANY))
        self.run_cases(cases)

    # ---- actions ---------------------------------------------------------------------------
    def test_extend_upgrade_lock_fields(self):
        S = "/v1/ephemeral/" + SID
        C = "/v1/ephemeral/" + CID
        L = "/v1/ephemeral/" + LID
        cases = [
            ("POST", S + "/extend", {}, 400, "missing_field", "ttl"),
            ("POST", S + "/extend", None, 400, "missing_field", "ttl"),
            ("POST", S + "/extend", {"ttl": None}, 400, "missing_field", "ttl"),
            ("POST", S + "/extend", {"ttl": {}}, 400, "invalid_type", "ttl"),
            ("POST", S + "/extend", {"ttl": [5]}, 400, "invalid_type", "ttl"),
            ("POST", S + "/extend", {"ttl": True}, 400, "invalid_type", "ttl"),
            ("POST", S + "/extend", {"ttl": -1}, 422, "invalid_value", "ttl"),
            ("POST", S + "/extend", {"ttl": 0}, 422, "invalid_value", "ttl"),
            ("POST", S + "/extend", {"ttl": "abc"}, 422, "invalid_value", "ttl"),
            ("POST", S + "/extend", {"ttl": 3601}, 422, "invalid_value", "ttl"),
            ("POST", S + "/extend", {"ttl": 5, "x": 1}, 400, "unknown_field", "x"),
            ("POST", S + "/extend", {"expires_at": "2030-01-01T00:00:00.000Z"}, 400,
             "unknown_field", "expires_at"),
            ("POST", L + "/extend", {"ttl": 5}, 423, "scope_locked"),
            ("POST", C + "/upgrade", {"ttl": {}}, 400, "invalid_type", "ttl"),
            ("POST", C + "/upgrade", {"ttl": "abc"}, 422, "invalid_value", "ttl"),
            ("POST", C + "/upgrade", {"ttl": -5}, 422, "invalid_value", "ttl"),
            ("POST", C + "/upgrade", {"ttl": 0}, 422, "invalid_value", "ttl"),
            ("POST", C + "/upgrade", {"ttl": 3601}, 422, "invalid_value", "ttl"),
            ("POST", C + "/upgrade", {"flow": "scoped"}, 400, "unknown_field", "flow"),
            ("POST", C + "/upgrade", {"ttl": 60, "context": {}}, 400, "unknown_field", "context"),
            ("POST", S + "/upgrade", None, 409, "invalid_state"),
            ("POST", S + "/lock", {"x": 1}, 400, "unknown_field", "x"),
            ("POST", S + "/lock", {"locked": True}, 400, "unknown_field", "locked"),
            ("POST", S + "/lock", {"ttl": 5}, 400, "unknown_field", "ttl"),
            ("POST", L + "/unlock", {"force": True}, 400, "unknown_field", "force"),
            ("POST", L + "/lock", None, 423, "scope_locked"),
            ("POST", S + "/unlock", None, 409, "invalid_state"),
            ("POST", L + "/unlock", b"[]", 400, "bad_request"),
        ]
        self.run_cases(cases)

    def test_complete_fields(self):
        P = "/v1/ephemeral/%s/complete" % SID
        cases = [
            (P, {"session": 5}, 400, "invalid_type", "session"),
            (P, {"session": [SESS]}, 400, "invalid_type", "session"),
            (P, {"session": SESS, "keys": "keep"}, 400, "invalid_type", "keys"),
            (P, {"session": SESS, "keys": {"keep": 1}}, 400, "invalid_type", "keys"),
            (P, {"session": SESS, "keys": [1]}, 400, "invalid_type", "keys[0]"),
            (P, {"session": SESS, "keys": ["keep", None]}, 400, "invalid_type", "keys[1]"),
            (P, {"keys": ["keep"]}, 400, "missing_field", "session"),
            (P, {"session": "abc", "keys": ["keep"]}, 422, "invalid_value", "session"),
            (P, {"session": "sess_01JD3V6Y7C8X9Q2W5E4R3T2Y1A", "keys": ["keep"]}, 422,
             "invalid_value", "session"),
            (P, {"session": SID, "keys": ["keep"]}, 422, "invalid_value", "session"),
            (P, {"session": SESS, "keys": ["nope"]}, 422, "invalid_value", "keys[0]"),
            (P, {"session": SESS, "keys": ["keep", "n", "KEEP"]}, 422, "invalid_value",
             "keys[2]"),
            (P, {"transfer_secrets": "yes"}, 400, "invalid_type", "transfer_secrets"),
            (P, {"transfer_secrets": 1}, 400, "invalid_type", "transfer_secrets"),
            (P, {"purge": True}, 400, "unknown_field", "purge"),
            (P, {"session": SESS, "keys": ["keep"], "facts": {}}, 400, "unknown_field", "facts"),
            ("/v1/ephemeral/%s/complete" % LID, {"session": SESS, "keys": ["keep"]}, 423,
             "scope_locked"),
            ("/v1/ephemeral/%s/complete" % LID, None, 423, "scope_locked"),
        ]
        self.run_cases([("POST",) + c for c in cases])

    # ---- sizes -------------------------------------------------------------------------------
    def test_body_too_large(self):
        before = snapshot()
        S = "/v1/ephemeral/" + SID
        big = b"x" * (2 * MAX_BODY)
        for method, p, body in (
                ("POST", "/v1/ephemeral", b'{"agent":"victim","context":{"a":"' + big + b'"}}'),
                ("POST", "/v1/ephemeral", b'{"agent":"' + big + b'"}'),
                ("PATCH", S, b'{"context":{"a":"' + big + b'"}}'),
                ("PUT", S + "/context/keep", b'{"value":"' + big + b'"}'),
                ("POST", S + "/extend", b'{"ttl":"' + big + b'"}'),
                ("POST", S + "/complete", b'{"keys":["' + big + b'"]}'),
                ("POST", S + "/lock", b'{"x":"' + big + b'"}'),
                ("POST", "/v1/ephemeral/%s/upgrade" % CID, b'{"ttl":"' + big + b'"}'),
                ("PUT", S + "/context/keep", b'{"value":"' + b"y" * (MAX_BODY + 1) + b'"}')):
            with self.subTest(method=method, path=p, size=len(body)):
                r = srv.raw_request(method, p, body)
                assert_error(r, 413, "body_too_large")
        self.assertTrue(srv.alive())
        self.assertEqual(snapshot(), before)

    # ---- ids, paths, methods, query ---------------------------------------------------------
    def test_odd_ids(self):
        routes = (("GET", "", None), ("PATCH", "", {"context": {"a": 1}}), ("DELETE", "", None),
                  ("GET", "/context/keep", None), ("PUT", "/context/keep", {"value": 1}),
                  ("POST", "/lock", None), ("POST", "/unlock", None),
                  ("POST", "/extend", {"ttl": 5}), ("POST", "/upgrade", None),
                  ("POST", "/complete", None))
        cases = []
        for bad in (UNKNOWN, "eph_00000000000000000000000000", "eph_ZZZZZZZZZZZZZZZZZZZZZZZZZZ"):
            for m, suffix, body in routes:
                cases.append((m, "/v1/ephemeral/" + bad + suffix, body, 404, "not_found"))
        for bad in ("abc", "eph_", "eph_short", SID + "X", SID[:-1], SID.lower(),
                    "sess_" + SID[4:], "mdt_" + SID[4:], "eph_" + "I" * 26, "eph_" + "U" * 26,
                    "eph_" + "Z" * 400, "..", ".", q("../" + SID), q(SID + "/x"), "%2F",
                    SID + "%2F", SID + "%00", "%00", q(SID + "\n"), SID + "%20", "%20" + SID,
                    q("eph_01JD3V6Y7C8X9Q2W5E4R3T2Y1!"), "eph_%41" + SID[5:]):
            for m, suffix, body in routes:
                cases.append((m, "/v1/ephemeral/" + bad + suffix, body, (400, 404),
                              ("bad_request", "not_found")))
        self.run_cases(cases)

    def test_agents_route(self):
        A = "/v1/agents/%s/ephemeral"
        cases = [
            ("DELETE", A % "", None, (400, 422), ("invalid_value", "bad_request"), "agent"),
            ("DELETE", A % ("v" * 257), None, 422, "invalid_value", "agent"),
            ("DELETE", A % ("v" * 600), None, 422, "invalid_value", "agent"),
            ("DELETE", A % q("é" * 129), None, 422, "invalid_value", "agent"),
            ("DELETE", A % "%zz", None, 400, "bad_request", "agent"),
            ("DELETE", A % "victim%", None, 400, "bad_request", "agent"),
            ("DELETE", A % "vic%00tim", None, 400, "bad_request", "agent"),
            ("DELETE", A % "%FF", None, (400, 422), ANY),
            ("DELETE", A % "%C3", None, (400, 422), ANY),
            # the victim's scopes are not purged by a request refused for its query
            ("DELETE", A % "victim" + "?force=1", None, 400, ("unknown_field", "bad_request")),
            # other methods, other paths
            ("GET", A % "victim", None, 405, "method_not_allowed"),
            ("POST", A % "victim", {}, 405, "method_not_allowed"),
            ("PUT", A % "victim", {}, 405, "method_not_allowed"),
            ("PATCH", A % "victim", {}, 405, "method_not_allowed"),
            ("DELETE", "/v1/agents/victim", None, 404, "not_found"),
            ("DELETE", "/v1/agents", None, 404, "not_found"),
            ("DELETE", "/v1/agents/victim/ephemeral/x", None, 404, "not_found"),
            ("DELETE", "/v1/agents/victim/scopes", None, 404, "not_found"),
            ("DELETE", "/v1/agents/victim/x/ephemeral", None, 404, "not_found"),
        ]
        self.run_cases(cases)

    def test_wrong_methods(self):
        S = "/v1/ephemeral/" + SID
        cases = [
            ("GET", "/v1/ephemeral", None), ("PUT", "/v1/ephemeral", {"agent": "victim"}),
            ("PATCH", "/v1/ephemeral", {"context": {}}), ("DELETE", "/v1/ephemeral", None),
            ("POST", S, {"context": {"a": 1}}), ("PUT", S, {"context": {"a": 1}}),
            ("POST", S + "/context/keep", {"value": 1}), ("DELETE", S + "/context/keep", None),
            ("PATCH", S + "/context/keep", {"value": 1}),
            ("GET", S + "/lock", None), ("PUT", S + "/lock", None), ("DELETE", S + "/lock", None),
            ("GET", S + "/unlock", None), ("DELETE", S + "/unlock", None),
            ("GET", S + "/extend", None), ("PATCH", S + "/extend", {"ttl": 5}),
            ("PUT", S + "/extend", {"ttl": 5}),
            ("GET", "/v1/ephemeral/%s/upgrade" % CID, None),
            ("PUT", "/v1/ephemeral/%s/upgrade" % CID, {}),
            ("GET", S + "/complete", None), ("DELETE", S + "/complete", None),
            ("PUT", S + "/complete", {}),
        ]
        self.run_cases([(m, p, b, 405, "method_not_allowed") for m, p, b in cases])

    def test_unknown_paths(self):
        S = "/v1/ephemeral/" + SID
        cases = []
        for p in ("/v1/ephemeralx", "/v1/ephemerals", S + "/nope", S + "/context/keep/more",
                  S + "/lock/now", S + "/extend/5", S + "/complete/x", S + "/Lock",
                  "/v1/Ephemeral/" + SID, S + "/context/a/b/c"):
            for m in ("GET", "POST"):
                cases.append((m, p, {} if m == "POST" else None, 404, "not_found"))
        cases.append(("GET", S + "/context", None, (404, 405), ("not_found", "method_not_allowed")))
        self.run_cases(cases)

    def test_query_strings(self):
        """Routes that take no query refuse one (400), even with an otherwise valid
        request that would change the scope."""
        S = "/v1/ephemeral/" + SID
        L = "/v1/ephemeral/" + LID
        cases = [
            ("POST", "/v1/ephemeral?ttl=5", {"agent": "victim"}),
            ("POST", "/v1/ephemeral?x", {"agent": "victim"}),
            ("GET", S + "?fields=id", None), ("PATCH", S + "?merge=1", {"context": {"a": 1}}),
            ("DELETE", S + "?force=1", None),
            ("GET", S + "/context/keep?x=1", None),
            ("PUT", S + "/context/keep?x=1", {"value": 2}),
            ("POST", S + "/lock?now=1", None), ("POST", L + "/unlock?x=1", None),
            ("POST", S + "/extend?ttl=5", {"ttl": 5}),
            ("POST", "/v1/ephemeral/%s/upgrade?ttl=5" % CID, None),
            ("POST", S + "/complete?x=1", None),
            ("POST", S + "/complete?session=%s" % SESS, {"session": SESS, "keys": ["keep"]}),
            ("DELETE", "/v1/agents/victim/ephemeral?all=1", None),
        ]
        self.run_cases([(m, p, b, 400, ("unknown_field", "bad_request"))
                        for m, p, b in cases])

    def test_no_key(self):
        S = "/v1/ephemeral/" + SID
        before = snapshot()
        for m, p, b in (("POST", "/v1/ephemeral", {"agent": "victim"}), ("GET", S, None),
                        ("PATCH", S, {"context": {"a": 1}}), ("DELETE", S, None),
                        ("PUT", S + "/context/keep", {"value": 1}), ("POST", S + "/lock", None),
                        ("POST", "/v1/ephemeral/%s/unlock" % LID, None),
                        ("POST", S + "/complete", None),
                        ("DELETE", "/v1/agents/victim/ephemeral", None)):
            for key in (None, "chk_" + "A" * 43, "garbage"):
                with self.subTest(method=m, path=p, key=key):
                    assert_error(srv.request(m, p, b, key=key), 401, "unauthorized")
        self.assertEqual(snapshot(), before)

    # ---- finally -----------------------------------------------------------------------------
    def test_zz_still_serving(self):
        self.assertTrue(srv.alive())
        self.assertEqual(srv.request("GET", "/healthz", key=None).status, 200)
        self.assertEqual(scope_view(SID)["context"], CONTEXT)
        self.assertTrue(scope_view(LID)["locked"])
        self.assertEqual(scope_view(CID)["flow"], "command")
        # the targets still accept good requests
        r = srv.request("PUT", "/v1/ephemeral/%s/context/keep" % SID, {"value": "changed"})
        self.assertEqual(r.status, 200, r.raw)
        r = srv.request("DELETE", "/v1/agents/victim/ephemeral")
        self.assertEqual(r.json, {"agent": "victim", "purged": 3})


if __name__ == "__main__":
    harness.main()
