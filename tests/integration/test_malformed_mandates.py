"""test_malformed_mandates.py — a corpus of bad requests over every mandate route
(POST /v1/mandates, PATCH, delegate, the lifecycle calls, artifact, check, tree,
audit, events, signing key). Each must get a 4xx with the documented error shape
(never a 5xx), the documented code and field where docs/api.md names one, and must
change nothing: a victim mandate, its child, its subtree, its audit log, the tenant's
event stream and a session bound to the child are compared before and after. The
server must still be alive."""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error_shape, assert_status, q  # noqa: E402
import mandate_util as mu  # noqa: E402
from mandate_util import (DROP, OK_ACTION, UNKNOWN_MDT, assert_err, create_mandate,  # noqa: E402
                          delegate, future, get_mandate, tree, transition)

srv = None
V = None      # victim mandate (active)
VC = None     # its child
VS = None     # a session bound to the child
MAX_BODY = 1 << 20
ANY = object()


def setUpModule():
    global srv, V, VC, VS
    srv = harness.Server()
    V = create_mandate(srv, actor="victim", max_depth=2, conditions={"env": "prod"},
                       budget={"tokens": 1000})
    VC = delegate(srv, V, actor="victim_child", budget={"tokens": 100})
    VS = srv.create_session(user="victim", mandate=VC["id"])["id"]
    assert_status(srv.append(VS, {"events": [{"kind": "m", "content": i,
                                              "usage": {"tokens": 1}} for i in range(3)]}), 201)
    assert_status(mu.check(srv, VC["id"]), 200)


def tearDownModule():
    srv.stop()


def nest(depth):
    return "[" * depth + "0" + "]" * depth


def state_now():
    return {"v": get_mandate(srv, V["id"]), "vc": get_mandate(srv, VC["id"]),
            "tree": tree(srv, V["id"]), "audit": mu.audit_all(srv, V["id"]),
            "session": srv.snapshot(VS), "events": len(mu.stream_backlog(srv, idle=0.25))}


class Corpus(unittest.TestCase):
    def run_cases(self, cases):
        time.sleep(0.05)
        before = state_now()
        for case in cases:
            method, path, body, status, code, field = (list(case) + [None])[:6]
            with self.subTest(method=method, path=path[:90],
                              body=(body[:80] if isinstance(body, (bytes, bytearray))
                                    else json.dumps(body)[:80])):
                # a short timeout: an unanswered request is a failure, not a 30 s wait
                with srv.client(timeout=5) as c:
                    if isinstance(body, (bytes, bytearray)):
                        r = c.request(method, path, raw=body)
                    else:
                        r = c.request(method, path, body)
                self.assertLess(r.status, 500, "5xx: %r" % r.raw[:300])
                self.assertGreaterEqual(r.status, 400, "accepted: %r" % r.raw[:300])
                if code is ANY:
                    if status is not None:
                        ok = status if isinstance(status, tuple) else (status,)
                        self.assertIn(r.status, ok, r.raw[:300])
                    assert_error_shape(r)
                else:
                    assert_err(r, status, code, field=field)
        self.assertTrue(srv.alive(), "server died")
        time.sleep(0.05)
        self.assertEqual(state_now(), before)

    # ---- bodies that are not JSON objects -------------------------------------------
    def test_not_json(self):
        M = "/v1/mandates/" + V["id"]
        targets = [("POST", "/v1/mandates"), ("PATCH", M), ("POST", M + "/delegate"),
                   ("POST", M + "/suspend"), ("POST", M + "/revoke"),
                   ("POST", M + "/artifact"), ("POST", "/v1/check")]
        cases = []
        for method, p in targets:
            for raw in (b"{", b"{not json}", b'{"approver": "a",}', b'{"a":1}{"b":2}',
                        b"nul", b"\x00", b"{'reason':'x'}", b'{"reason":"x" "y":1}',
                        b'{"reason": NaN}', b'{"ttl": Infinity}', b'{"ttl": 01}',
                        b"\xff\xfe{}", b'{"reason":"\xff"}', b'{"reason":"a\x00b"}',
                        b'{"reason":"\xed\xa0\x80"}',
                        ('{"reason":%s}' % nest(1000)).encode(),
                        ('{"conditions":' + "[" * 5000).encode()):
                cases.append((method, p, raw, 400, "bad_json"))
            for raw in (b"[]", b'[{"reason":"x"}]', b'"string"', b"42", b"true", b"null"):
                cases.append((method, p, raw, 400, "bad_request"))
        for method, p in (("POST", "/v1/mandates"), ("PATCH", M), ("POST", M + "/delegate"),
                          ("POST", M + "/artifact"), ("POST", "/v1/check")):
            cases.append((method, p, b"", 400, ("bad_json", "bad_request", "missing_field",
                                                "no_change")))
        self.run_cases(cases)

    def test_body_too_large(self):
        before = state_now()
        M = "/v1/mandates/" + V["id"]
        for method, path, head in (("POST", "/v1/mandates", b'{"approver":"a","purpose":"'),
                                   ("PATCH", M, b'{"conditions":{"env":"prod","x":"'),
                                   ("POST", M + "/delegate", b'{"purpose":"'),
                                   ("POST", M + "/revoke", b'{"reason":"'),
                                   ("POST", "/v1/check", b'{"mandate":"')):
            with self.subTest(method=method, path=path):
                body = head + b"x" * (2 * MAX_BODY) + b'"}'
                r = srv.raw_request(method, path, body)
                assert_err(r, 413, "body_too_large")
        self.assertEqual(state_now(), before)

    # ---- POST /v1/mandates -----------------------------------------------------------
    def test_create_fields(self):
        P = "/v1/mandates"
        b = mu.mandate_body
        cases = [
            ("POST", P, {}, 400, "missing_field"),
            ("POST", P, b(approver=DROP), 400, "missing_field", "approver"),
            ("POST", P, b(expires_at=DROP), 400, "missing_field", "expires_at"),
            ("POST", P, b(approver=None), 400, ("invalid_type", "missing_field"), "approver"),
            ("POST", P, b(approver=["a"]), 400, "invalid_type", "approver"),
            ("POST", P, b(approver={}), 400, "invalid_type", "approver"),
            ("POST", P, b(expires_at=None), 400, ("invalid_type", "missing_field"),
             "expires_at"),
            ("POST", P, b(expires_at=1893456000), 400, "invalid_type", "expires_at"),
            ("POST", P, b(expires_at=""), 422, "invalid_value", "expires_at"),
            ("POST", P, b(expires_at="2030-01-01"), 422, "invalid_value", "expires_at"),
            ("POST", P, b(expires_at="2030-01-01T00:00:00.000+25:00"), 422, "invalid_value",
             "expires_at"),
            ("POST", P, b(expires_at="2030-02-30T00:00:00.000Z"), 422, "invalid_value",
             "expires_at"),
            ("POST", P, b(expires_at="x" * 300), 422, "invalid_value", "expires_at"),
            ("POST", P, b(expires_at="1970-01-01T00:00:00.000Z"), 422, "invalid_value",
             "expires_at"),
            ("POST", P, b(purpose=["p"]), 400, "invalid_type", "purpose"),
            ("POST", P, b(purpose="p" * 4097), 422, "invalid_value", "purpose"),
            ("POST", P, b(purpose="é" * 2049), 422, "invalid_value", "purpose"),
            ("POST", P, b(approver="a" * 257), 422, "invalid_value", "approver"),
            ("POST", P, b(approver="é" * 129), 422, "invalid_value", "approver"),
            ("POST", P, b(actor=""), 422, "invalid_value", "actor"),
            ("POST", P, b(actor="a" * 257), 422, "invalid_value", "actor"),
            ("POST", P, b(actor=True), 400, "invalid_type", "actor"),
            ("POST", P, b(evidence={"blob": "x" * 66000}), 422, "invalid_value", "evidence"),
            ("POST", P, b(scope=5), 400, "invalid_type", "scope"),
            ("POST", P, b(scope={"tools": {"git": True}}), 400, "invalid_type", "scope.tools"),
            ("POST", P, b(scope={"resources": "repo:*"}), 400, "invalid_type",
             "scope.resources"),
            ("POST", P, b(scope={"classes": "read"}), 400, "invalid_type", "scope.classes"),
            ("POST", P, b(scope={"lanes": [["repo"]]}), 400, "invalid_type",
             ("scope.lanes", "scope.lanes[0]")),
            ("POST", P, b(scope={"tools": ["ok", 5]}), 400, "invalid_type",
             ("scope.tools", "scope.tools[1]")),
            ("POST", P, b(scope={"tools": ["t" * 257]}), 422, "invalid_value",
             ("scope.tools", "scope.tools[0]")),
            ("POST", P, b(scope={"lanes": [""]}), 422, "invalid_value",
             ("scope.lanes", "scope.lanes[0]")),
            ("POST", P, b(scope={"resources": ["r%d" % i for i in range(1025)]}), 422,
             "invalid_value", "scope.resources"),
            ("POST", P, b(scope={"classes": ["read", "admin"]}), 422, "invalid_value",
             ("scope.classes", "scope.classes[1]")),
            ("POST", P, b(scope={"classes": [""]}), 422, "invalid_value",
             ("scope.classes", "scope.classes[0]")),
            ("POST", P, b(scope={"tools": [], "Tools": []}), 400, "unknown_field",
             "scope.Tools"),
            ("POST", P, b(conditions="env=prod"), 400, "invalid_type", "conditions"),
            ("POST", P, b(max_depth=True), 400, "invalid_type", "max_depth"),
            # integers beyond 64 bits: refused by the JSON parser or as out of range
            ("POST", P, b(max_depth=10 ** 20), (400, 422), ("bad_json", "invalid_value")),
            ("POST", P, b(max_depth=-(10 ** 20)), (400, 422), ("bad_json", "invalid_value")),
            ("POST", P, b(state="expired"), 422, "invalid_value", "state"),
            ("POST", P, b(state="completed"), 422, "invalid_value", "state"),
            ("POST", P, b(budget=[1]), 400, "invalid_type", "budget"),
            ("POST", P, b(budget={"tokens": True}), 400, "invalid_type", "budget.tokens"),
            ("POST", P, b(budget={"tokens": 1.5}), (400, 422), ("invalid_type", "invalid_value"),
             "budget.tokens"),
            ("POST", P, b(budget={"tool_calls": "1"}), 400, "invalid_type", "budget.tool_calls"),
            ("POST", P, b(budget={"cost_usd": "1"}), 400, "invalid_type", "budget.cost_usd"),
            ("POST", P, b(budget={"tokens": -1}), 422, "invalid_value", "budget.tokens"),
            ("POST", P, b(budget={"tokens": 10 ** 30}), (400, 422), ("bad_json", "invalid_value")),
            ("POST", P, b(budget={"cost_usd": 1e300 * 10}), (400, 422), ANY),
            ("POST", P, b(budget={"tokens": 1, "x": 2}), 400, "unknown_field", "budget.x"),
            ("POST", P, b(root=UNKNOWN_MDT), 400, "unknown_field", "root"),
            ("POST", P, b(reason="x"), 400, "unknown_field", "reason"),
            ("POST", P, b(created_at="2030-01-01T00:00:00.000Z"), 400, "unknown_field",
             "created_at"),
            ("POST", P, b(tenant="other"), 400, "unknown_field", "tenant"),
            ("POST", P, b(**{"": 1}), 400, "unknown_field"),
        ]
        # ANY as a code: only the shape and a 4xx are required
        cases = [c if c[4] is not ANY else c[:5] for c in cases]
        self.run_cases(cases)

    # ---- PATCH /v1/mandates/{id} ----------------------------------------------------
    def test_patch_fields(self):
        P = "/v1/mandates/" + V["id"]
        cases = [
            ("PATCH", P, {}, 400, "no_change"),
            ("PATCH", P, {"scope": "x"}, 400, "invalid_type", "scope"),
            ("PATCH", P, {"scope": {"tools": "git"}}, 400, "invalid_type", "scope.tools"),
            ("PATCH", P, {"scope": {"tools": [1]}}, 400, "invalid_type",
             ("scope.tools", "scope.tools[0]")),
            ("PATCH", P, {"scope": {"tools": ["t" * 257]}}, 422, ("invalid_value", "not_subset"),
             ("scope.tools", "scope.tools[0]")),
            ("PATCH", P, {"scope": {"classes": ["admin"]}}, 422, ("invalid_value", "not_subset"),
             ("scope.classes", "scope.classes[0]")),
            ("PATCH", P, {"scope": {"tools": ["git"], "verbs": []}}, 400, "unknown_field",
             "scope.verbs"),
            ("PATCH", P, {"scope": {"tools": ["brand-new"]}}, 422, "not_subset", "scope.tools"),
            ("PATCH", P, {"expires_at": 5}, 400, "invalid_type", "expires_at"),
            ("PATCH", P, {"expires_at": "never"}, 422, "invalid_value", "expires_at"),
            ("PATCH", P, {"expires_at": "2001-01-01T00:00:00.000Z"}, 422, "invalid_value",
             "expires_at"),
            ("PATCH", P, {"conditions": "x"}, 400, "invalid_type", "conditions"),
            ("PATCH", P, {"conditions": [1]}, 400, "invalid_type", "conditions"),
            ("PATCH", P, {"conditions": {}}, 422, "not_subset", "conditions"),
            ("PATCH", P, {"purpose": "new"}, 400, "unknown_field", "purpose"),
            ("PATCH", P, {"scope": {"tools": []}, "state": "revoked"}, 400, "unknown_field",
             "state"),
            ("PATCH", P, {"budget": {"tokens": 1}}, 400, "unknown_field", "budget"),
            ("PATCH", P, {"max_depth": 0}, 400, "unknown_field", "max_depth"),
            ("PATCH", P, {"version": 1, "conditions": {"env": "dev"}}, 400, "unknown_field",
             "version"),
        ]
        # a child cannot be moved past its parent
        cases.append(("PATCH", "/v1/mandates/" + VC["id"],
                      {"expires_at": future(86400 * 30)}, 422, "not_subset", "expires_at"))
        self.run_cases(cases)

    # ---- POST .../delegate ------------------------------------------------------------
    def test_delegate_fields(self):
        P = "/v1/mandates/%s/delegate" % V["id"]

        def b(**kw):
            kw.setdefault("budget", {"tokens": 10})
            return mu.child_body(V, **kw)
        cases = [
            ("POST", P, {}, 400, "missing_field"),
            ("POST", P, b(actor=DROP), 400, "missing_field", "actor"),
            ("POST", P, b(purpose=DROP), 400, "missing_field", "purpose"),
            ("POST", P, b(scope=DROP), 400, "missing_field", "scope"),
            ("POST", P, b(expires_at=DROP), 400, "missing_field", "expires_at"),
            ("POST", P, b(actor=5), 400, "invalid_type", "actor"),
            ("POST", P, b(actor=None), 400, ("invalid_type", "missing_field", "invalid_value"),
             "actor"),
            ("POST", P, b(actor=""), 422, "invalid_value", "actor"),
            ("POST", P, b(actor="a" * 257), 422, "invalid_value", "actor"),
            ("POST", P, b(purpose=1), 400, "invalid_type", "purpose"),
            ("POST", P, b(purpose="p" * 4097), 422, "invalid_value", "purpose"),
            ("POST", P, b(scope="x"), 400, "invalid_type", "scope"),
            ("POST", P, b(scope={"tools": "git"}), 400, "invalid_type", "scope.tools"),
            ("POST", P, b(scope={"tools": [7]}), 400, "invalid_type",
             ("scope.tools", "scope.tools[0]")),
            ("POST", P, b(scope={"classes": ["nope"]}), 422, ("invalid_value", "not_subset"),
             ("scope.classes", "scope.classes[0]")),
            ("POST", P, b(scope={"bogus": []}), 400, "unknown_field", "scope.bogus"),
            ("POST", P, b(expires_at=0), 400, "invalid_type", "expires_at"),
            ("POST", P, b(expires_at="later"), 422, "invalid_value", "expires_at"),
            ("POST", P, b(max_depth="1"), 400, "invalid_type", "max_depth"),
            ("POST", P, b(max_depth=-1), 422, "invalid_value", "max_depth"),
            ("POST", P, b(max_depth=17), 422, ("invalid_value", "not_subset"),
             ("max_depth", "depth")),
            ("POST", P, b(budget="x"), 400, "invalid_type", "budget"),
            ("POST", P, b(budget={"tokens": "1"}), 400, "invalid_type", "budget.tokens"),
            ("POST", P, b(budget={"tokens": -1}), 422, "invalid_value", "budget.tokens"),
            ("POST", P, b(budget={"tokenz": 1}), 400, "unknown_field", "budget.tokenz"),
            ("POST", P, b(conditions="x"), 400, "invalid_type", "conditions"),
            ("POST", P, b(conditions={"env": "dev"}), 422, "not_subset", "conditions"),
            ("POST", P, b(evidence="e" * 70000), 422, "invalid_value", "evidence"),
            ("POST", P, b(approver="mallory"), 400, "unknown_field", "approver"),
            ("POST", P, b(parent=VC["id"]), 400, "unknown_field", "parent"),
            ("POST", P, b(state="proposed"), 400, "unknown_field", "state"),
            ("POST", P, b(depth=1), 400, "unknown_field", "depth"),
            ("POST", P, b(actor="victim"), 422, "not_subset", "actor"),
            ("POST", P, b(budget={"tokens": 10 ** 6}), 422, "not_subset", "budget"),
        ]
        self.run_cases(cases)

    # ---- lifecycle calls --------------------------------------------------------------
    def test_reason_bodies(self):
        M = "/v1/mandates/" + V["id"]
        cases = []
        for call in ("suspend", "revoke"):
            cases += [
                ("POST", M + "/" + call, {"reason": 5}, 400, "invalid_type", "reason"),
                ("POST", M + "/" + call, {"reason": {"a": 1}}, 400, "invalid_type", "reason"),
                ("POST", M + "/" + call, {"reason": ""}, 422, "invalid_value", "reason"),
                ("POST", M + "/" + call, {"reason": "r" * 1025}, 422, "invalid_value", "reason"),
                ("POST", M + "/" + call, {"reason": "é" * 513}, 422, "invalid_value", "reason"),
                ("POST", M + "/" + call, {"reason": "r", "cascade": False}, 400,
                 "unknown_field", "cascade"),
                ("POST", M + "/" + call, {"why": "r"}, 400, "unknown_field", "why"),
            ]
        # not allowed from active: refused for the body or for the state (not specified
        # which check comes first), never applied
        for call in ("approve", "reinstate"):
            cases.append(("POST", M + "/" + call, {"x": 1}, (400, 409),
                          ("unknown_field", "invalid_transition")))
            cases.append(("POST", M + "/" + call, b"{", (400, 409),
                          ("bad_json", "invalid_transition")))
        self.run_cases(cases)

    def test_bodies_of_calls_that_would_succeed(self):
        """approve / reinstate / complete, on mandates where the call would succeed, with
        a body that is not JSON, not an object, or has an unknown field: refused, the
        mandate unchanged."""
        prop = create_mandate(srv, state="proposed")
        susp = create_mandate(srv)
        transition(srv, susp["id"], "suspend")
        act = create_mandate(srv)
        for m, call in ((prop, "approve"), (susp, "reinstate"), (act, "complete"),
                        (act, "suspend"), (act, "revoke")):
            before = get_mandate(srv, m["id"])
            for raw, code in ((b"{", "bad_json"), (b"[]", "bad_request"),
                              (b'{"bogus": 1}', "unknown_field")):
                with self.subTest(call=call, raw=raw):
                    r = srv.request("POST", "/v1/mandates/%s/%s" % (m["id"], call), raw=raw)
                    assert_err(r, 400, code)
            self.assertEqual(get_mandate(srv, m["id"]), before)

    # ---- artifact -----------------------------------------------------------------------
    def test_artifact_bodies(self):
        P = "/v1/mandates/%s/artifact" % V["id"]
        cases = [
            ("POST", P, {}, 400, "missing_field", "ttl"),
            ("POST", P, {"ttl": None}, 400, ("invalid_type", "missing_field", "invalid_value"),
             "ttl"),
            ("POST", P, {"ttl": {}}, 400, "invalid_type", "ttl"),
            ("POST", P, {"ttl": 1.5}, (400, 422), ("invalid_type", "invalid_value"), "ttl"),
            ("POST", P, {"ttl": 0}, 422, "invalid_value", "ttl"),
            ("POST", P, {"ttl": 10 ** 20}, (400, 422), ("bad_json", "invalid_value")),
            ("POST", P, {"ttl": 2 ** 40}, 422, "invalid_value", "ttl"),
            ("POST", P, {"ttl": "0.5s"}, 422, "invalid_value", "ttl"),
            ("POST", P, {"ttl": "61m"}, 422, "invalid_value", "ttl"),
            ("POST", P, {"ttl": "30x"}, 422, "invalid_value", "ttl"),
            ("POST", P, {"ttl": "s" * 300}, 422, "invalid_value", "ttl"),
            ("POST", P, {"ttl": "30s", "scope": {}}, 400, "unknown_field", "scope"),
        ]
        self.run_cases(cases)

    # ---- check --------------------------------------------------------------------------
    def test_check_bodies(self):
        P = "/v1/check"
        A = dict(OK_ACTION)
        cases = [
            ("POST", P, {}, 400, "missing_field"),
            ("POST", P, {"mandate": VC["id"]}, 400, "missing_field", "action"),
            ("POST", P, {"mandate": VC["id"], "action": None}, 400,
             ("invalid_type", "missing_field"), "action"),
            ("POST", P, {"mandate": VC["id"], "action": dict(A, **{"class": "admin"})}, 422,
             "invalid_value", "action.class"),
            ("POST", P, {"mandate": VC["id"], "action": dict(A, tool={"n": 1})}, 400,
             "invalid_type", "action.tool"),
            ("POST", P, {"mandate": VC["id"], "action": dict(A, extra=1)}, 400,
             "unknown_field", "action.extra"),
            ("POST", P, {"mandate": VC["id"], "action": A, "reason": "x"}, 400,
             "unknown_field", "reason"),
            ("POST", P, {"mandate": None, "action": A}, 400, ANY),
            ("POST", P, {"mandate": VC["id"], "action": A, "actor": ["a"]}, 400,
             "invalid_type", "actor"),
            ("POST", P, {"mandate": VC["id"], "action": A, "session": 1}, 400,
             "invalid_type", "session"),
        ]
        cases = [c[:5] if len(c) > 4 and c[4] is ANY else c for c in cases]
        self.run_cases(cases)

    # ---- query parameters --------------------------------------------------------------
    def test_audit_query(self):
        cases = []
        for qs, field in (("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"),
                          ("limit=-1", "limit"), ("limit=1.5", "limit"),
                          ("limit=99999999999999999999", "limit"), ("after=abc", "after"),
                          ("after=-1", "after"), ("after=1.5", "after"),
                          ("after=99999999999999999999999", "after")):
            cases.append(("GET", "/v1/audit?" + qs, None, 400, "bad_request", field))
            cases.append(("GET", "/v1/audit?mandate=%s&%s" % (V["id"], qs), None, 400,
                          "bad_request", field))
        cases.append(("GET", "/v1/audit?bogus=1", None, 400, ("bad_request", "unknown_field")))
        self.run_cases([c[:5] if c[4] is ANY else c for c in cases])

    def test_audit_unknown_mandate(self):
        """An unknown or malformed `mandate` filter: 404/400, or an empty page; never
        another mandate's records, never a 5xx."""
        for qs in ("mandate=" + UNKNOWN_MDT, "mandate=xyz", "mandate=", "mandate=" + VS):
            with self.subTest(qs=qs):
                r = srv.request("GET", "/v1/audit?" + qs)
                self.assertLess(r.status, 500, r.raw[:200])
                if r.status == 200:
                    self.assertEqual(r.json["records"], [])
                else:
                    self.assertIn(r.status, (400, 404), r.raw[:200])
                    assert_error_shape(r)

    def test_events_query(self):
        before = state_now()
        for qs in ("after=abc", "after=-1", "after=1.5", "after=99999999999999999999999",
                   "bogus=1"):
            with self.subTest(qs=qs):
                s = mu.SSE(srv, query="?" + qs)
                r = s.body()
                s.close()
                self.assertTrue(400 <= r.status < 500, r.raw[:200])
                assert_error_shape(r)
                if qs.startswith("after"):
                    assert_err(r, 400, "bad_request", field="after")
        for lei in ("abc", "-5", "1.5"):
            with self.subTest(last_event_id=lei):
                s = mu.SSE(srv, last_event_id=lei)
                r = s.body() if s.status != 200 else None
                s.close()
                if r is not None:
                    self.assertTrue(400 <= r.status < 500, r.raw[:200])
                    assert_error_shape(r)
        self.assertEqual(state_now(), before)

    # ---- ids, paths, methods, auth -------------------------------------------------------
    def test_bad_ids_in_path(self):
        cases = []
        calls = (("GET", "", None), ("GET", "/tree", None),
                 ("PATCH", "", {"scope": {"tools": []}}),
                 ("POST", "/approve", None), ("POST", "/suspend", None),
                 ("POST", "/reinstate", None), ("POST", "/revoke", None),
                 ("POST", "/complete", None), ("POST", "/delegate", mu.child_body(V)),
                 ("POST", "/artifact", {"ttl": "30s"}))
        for method, suffix, body in calls:
            cases.append((method, "/v1/mandates/" + UNKNOWN_MDT + suffix, body, 404,
                          "not_found"))
            cases.append((method, "/v1/mandates/" + VS + suffix, body, (400, 404),
                          ("bad_request", "not_found")))
            for bad in ("xyz", "mdt_", "mdt_short", V["id"] + "X", V["id"][:-1],
                        q(V["id"] + "\n"), "%00", q("../" + V["id"]), "mdt_" + "Z" * 400):
                cases.append((method, "/v1/mandates/" + bad + suffix, body, (400, 404),
                              ("bad_request", "not_found")))
        self.run_cases(cases)

    def test_unknown_paths_and_methods(self):
        M = "/v1/mandates/" + V["id"]
        cases = []
        for p in (M + "/nope", M + "/tree/x", M + "/suspend/now", "/v1/mandatesx",
                  "/v1/checks", "/v1/audit/1", "/v1/keys", "/v1/keys/signing/x",
                  "/v1/events/1"):
            for m in ("GET", "POST"):
                cases.append((m, p, {} if m == "POST" else None, 404, "not_found"))
        for m, p, b in (("DELETE", M, None), ("PUT", M, {}), ("POST", M, {}),
                        ("GET", M + "/approve", None), ("GET", M + "/suspend", None),
                        ("GET", M + "/revoke", None), ("GET", M + "/delegate", None),
                        ("GET", M + "/artifact", None), ("DELETE", M + "/tree", None),
                        ("POST", M + "/tree", {}), ("GET", "/v1/check", None),
                        ("PUT", "/v1/check", {}), ("POST", "/v1/audit", {}),
                        ("DELETE", "/v1/audit", None), ("POST", "/v1/events", {}),
                        ("POST", "/v1/keys/signing", {}), ("DELETE", "/v1/keys/signing", None),
                        ("PATCH", "/v1/mandates", {}), ("DELETE", "/v1/mandates", None)):
            cases.append((m, p, b, 405, "method_not_allowed"))
        self.run_cases(cases)

    def test_every_route_needs_a_key(self):
        M = "/v1/mandates/" + V["id"]
        routes = [("POST", "/v1/mandates", mu.mandate_body()), ("GET", M, None),
                  ("PATCH", M, {"scope": {"tools": []}}), ("GET", M + "/tree", None),
                  ("POST", M + "/approve", None), ("POST", M + "/suspend", None),
                  ("POST", M + "/reinstate", None), ("POST", M + "/revoke", None),
                  ("POST", M + "/complete", None), ("POST", M + "/delegate", mu.child_body(V)),
                  ("POST", M + "/artifact", {"ttl": "30s"}),
                  ("POST", "/v1/check", {"mandate": V["id"], "action": OK_ACTION}),
                  ("GET", "/v1/audit", None), ("GET", "/v1/audit?mandate=" + V["id"], None),
                  ("GET", "/v1/keys/signing", None), ("GET", "/v1/events", None)]
        cases = []
        for method, path, body in routes:
            for hdrs in ({}, {"Authorization": "Bearer chk_" + "A" * 43},
                         {"Authorization": "Bearer " + srv.key + "x"},
                         {"Authorization": "Basic " + srv.key}):
                cases.append((method, path, body, hdrs))
        before = state_now()
        for method, path, body, hdrs in cases:
            with self.subTest(method=method, path=path, auth=str(hdrs)[:30]):
                r = srv.request(method, path, body, key=None, headers=hdrs)
                assert_err(r, 401, "unauthorized")
        self.assertEqual(state_now(), before)

    def test_other_tenant_cannot_touch(self):
        other = srv.create_key("intruder")
        before = state_now()
        M = "/v1/mandates/" + V["id"]
        for method, path, body in (("GET", M, None), ("GET", M + "/tree", None),
                                   ("PATCH", M, {"scope": {"tools": []}}),
                                   ("POST", M + "/suspend", {"reason": "x"}),
                                   ("POST", M + "/revoke", None), ("POST", M + "/complete", None),
                                   ("POST", M + "/delegate", mu.child_body(V)),
                                   ("POST", M + "/artifact", {"ttl": "30s"})):
            with self.subTest(method=method, path=path):
                assert_err(srv.request(method, path, body, key=other), 404, "not_found")
        r = srv.request("POST", "/v1/sessions", {"user": "i", "agent": "a",
                                                 "mandate": V["id"]}, key=other)
        assert_err(r, 422, "invalid_value", field="mandate")
        self.assertEqual(state_now(), before)

    def test_zz_alive(self):
        self.assertTrue(srv.alive())
        self.assertEqual(srv.request("GET", "/healthz", key=None).status, 200)
        self.assertEqual(get_mandate(srv, V["id"])["version"], 1)
        self.assertEqual(get_mandate(srv, V["id"])["state"], "active")
        self.assertEqual(mu.decide(srv, VC["id"])[:2], (True, "ok"))


if __name__ == "__main__":
    harness.main()
