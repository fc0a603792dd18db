"""test_mandates.py — the mandate routes of docs/api.md ("Mandates", "Audit"):
creating (defaults, proposed, every field's validation, mission_hash computed here
from canonical JSON, mission_header), reading, tenant isolation, every lifecycle call
from every state, PATCH (narrowing, not_subset, no_change, unknown_field, conditions,
expires_at, version bumps), clipping of descendants, every delegation rule from both
sides, cascades over a deep chain and a wide tree, suspend/complete seen by
descendants, the tree endpoint, and the audit log."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import TIME_RE, assert_status  # noqa: E402
import mandate_util as mu  # noqa: E402
from mandate_util import (AUDIT_FIELDS, DROP, MANDATE_FIELDS, MDT_RE,  # noqa: E402
                          TREE_ENTRY_FIELDS, UNKNOWN_MDT, assert_err, create_mandate,
                          decide, delegate, expected_hash, future, get_mandate, iso,
                          parse_ts, transition, tree)

srv = None
OTHER = None          # a key of tenant "other"
EXPIRED_POOL = []     # mandates created to expire shortly after setUpModule

STATES = ["proposed", "active", "suspended", "revoked", "expired", "completed"]
CALLS = ["approve", "suspend", "reinstate", "revoke", "complete"]
TRANSITIONS = {
    "approve": {"proposed": "active"},
    "suspend": {"active": "suspended"},
    "reinstate": {"suspended": "active"},
    "revoke": {"proposed": "revoked", "active": "revoked", "suspended": "revoked"},
    "complete": {"active": "completed", "suspended": "completed"},
}
ZERO_SPENT = {"tokens": 0, "cost_usd": 0.0, "tool_calls": 0}


def setUpModule():
    global srv, OTHER
    srv = harness.Server(threads=4)
    OTHER = srv.create_key("other")
    for i in range(12):
        EXPIRED_POOL.append(create_mandate(srv, purpose="expires %d" % i,
                                           expires_at=future(0.4))["id"])


def tearDownModule():
    srv.stop()


def check_mandate_shape(tc, m):
    """The mandate object's fields and invariants. The exact field set (`evidence`
    included when null) is pinned once, in Create.test_field_set, so that one deviation
    does not hide everything else."""
    tc.assertIsInstance(m, dict)
    tc.assertTrue(set(m) <= MANDATE_FIELDS, "unexpected mandate fields: %r"
                  % sorted(set(m) - MANDATE_FIELDS))
    tc.assertTrue(MANDATE_FIELDS - {"evidence"} <= set(m), "missing mandate fields: %r"
                  % sorted(MANDATE_FIELDS - {"evidence"} - set(m)))
    tc.assertRegex(m["id"], MDT_RE)
    tc.assertRegex(m["root"], MDT_RE)
    tc.assertIn(m["state"], STATES)
    tc.assertIsInstance(m["version"], int)
    tc.assertGreaterEqual(m["version"], 1)
    for k in ("created_at", "updated_at", "expires_at"):
        tc.assertRegex(m[k], TIME_RE, k)
    tc.assertGreaterEqual(m["updated_at"], m["created_at"])
    tc.assertEqual(set(m["scope"]), set(mu.SCOPE_KINDS), "scope lists: %r" % m["scope"])
    for k in mu.SCOPE_KINDS:
        want = (mu.class_order(m["scope"][k]) if k == "classes" else sorted(m["scope"][k]))
        tc.assertEqual(m["scope"][k], want, "scope.%s not in order" % k)
        tc.assertEqual(len(set(m["scope"][k])), len(m["scope"][k]), "scope.%s repeats" % k)
    tc.assertTrue(set(m["scope"]["classes"]) <= set(mu.CLASSES))
    tc.assertIsInstance(m["conditions"], dict)
    tc.assertEqual(set(m["spent"]), {"tokens", "cost_usd", "tool_calls"})
    tc.assertEqual(m["mission_hash"], expected_hash(m), "mission_hash of %r" % m)
    tc.assertEqual(m["mission_header"],
                   'approver="%s"; s256="%s"' % (m["approver"], m["mission_hash"]))
    if m["parent"] is None:
        tc.assertEqual((m["depth"], m["root"]), (0, m["id"]))
    else:
        tc.assertGreaterEqual(m["depth"], 1)


def make(state):
    """A fresh mandate in state."""
    if state == "expired":
        mid = EXPIRED_POOL.pop()
        m = mu.wait_until(lambda: (lambda g: g if g["state"] == "expired" else None)(
            get_mandate(srv, mid)), timeout=5)
        assert m, "mandate %s did not become expired: %r" % (mid, get_mandate(srv, mid))
        return m
    m = create_mandate(srv, state="proposed" if state == "proposed" else "active",
                       purpose="matrix " + state)
    if state == "suspended":
        transition(srv, m["id"], "suspend", {"reason": "setup"})
    elif state == "revoked":
        transition(srv, m["id"], "revoke", {"reason": "setup"})
    elif state == "completed":
        transition(srv, m["id"], "complete")
    m = get_mandate(srv, m["id"])
    assert m["state"] == state, (state, m)
    return m


# ---------------------------------------------------------------------------------------
class Create(unittest.TestCase):
    def test_defaults(self):
        t0 = time.time()
        exp = future(3600)
        r = srv.request("POST", "/v1/mandates", {"approver": "alice", "expires_at": exp})
        self.assertEqual(r.status, 201, r.raw)
        m = r.json
        check_mandate_shape(self, m)
        self.assertEqual(m["state"], "active")
        self.assertEqual(m["version"], 1)
        self.assertEqual(m["purpose"], "")
        self.assertEqual(m["approver"], "alice")
        self.assertIsNone(m["actor"])
        self.assertIn(m.get("evidence"), (None, {}))
        self.assertEqual(m["scope"], {"tools": [], "lanes": [], "resources": [], "classes": []})
        self.assertEqual(m["conditions"], {})
        self.assertEqual(m["expires_at"], exp)
        self.assertEqual((m["max_depth"], m["depth"], m["parent"], m["root"]),
                         (0, 0, None, m["id"]))
        for dim in ("tokens", "cost_usd", "tool_calls"):
            self.assertIsNone(mu.budget_of(m, dim), "budget %r" % m["budget"])
        self.assertEqual(m["spent"], ZERO_SPENT)
        self.assertIsNone(m["reason"])
        self.assertEqual(m["created_at"], m["updated_at"])
        self.assertGreaterEqual(parse_ts(m["created_at"]), int(t0 * 1000) / 1000.0 - 0.002)
        self.assertLessEqual(parse_ts(m["created_at"]), time.time() + 0.002)
        self.assertEqual(get_mandate(srv, m["id"]), m)
        # an empty mandate allows nothing
        allow, reason, _ = decide(srv, m["id"])
        self.assertEqual((allow, reason), (False, "tool_out_of_scope"))

    def test_full(self):
        body = {"purpose": "implement passkey login — ünïcode", "approver": "alice",
                "evidence": {"ticket": "SEC-142", "links": ["https://x/1"]}, "actor": "coder",
                "scope": {"tools": ["shell", "git"], "lanes": ["repo"],
                          "resources": ["repo:web/*", "doc:a"], "classes": ["write", "read"]},
                "conditions": {"env": "prod", "n": 3, "nested": {"b": [1, 2], "a": None}},
                "expires_at": future(86400), "max_depth": 2,
                "budget": {"tokens": 2000000, "cost_usd": 40.5, "tool_calls": 5000},
                "state": "active"}
        r = srv.request("POST", "/v1/mandates", body)
        self.assertEqual(r.status, 201, r.raw)
        m = r.json
        check_mandate_shape(self, m)
        for k in ("purpose", "approver", "evidence", "actor", "conditions", "expires_at",
                  "max_depth"):
            self.assertEqual(m[k], body[k], k)
        self.assertEqual(m["scope"], {"tools": ["git", "shell"], "lanes": ["repo"],
                                      "resources": ["doc:a", "repo:web/*"],
                                      "classes": ["read", "write"]})
        self.assertEqual(m["budget"], body["budget"])
        self.assertEqual(m["spent"], ZERO_SPENT)
        self.assertEqual((m["state"], m["version"]), ("active", 1))
        self.assertEqual(get_mandate(srv, m["id"]), m)

    def test_field_set(self):
        """Every documented field is present, `null` where it does not apply."""
        for kw in ({}, {"evidence": None}, {"evidence": {"t": 1}}, {"actor": None}):
            with self.subTest(kw=kw):
                m = create_mandate(srv, **kw)
                self.assertEqual(set(m), MANDATE_FIELDS, "mandate fields: %r" % sorted(m))
                self.assertEqual(set(get_mandate(srv, m["id"])), MANDATE_FIELDS)
        c = delegate(srv, create_mandate(srv))
        self.assertEqual(set(c), MANDATE_FIELDS, "child fields: %r" % sorted(c))

    def test_lists_ordered(self):
        """docs/api.md: tools, lanes and resources are returned sorted (byte order),
        classes in the order read, write, external, irreversible."""
        m = create_mandate(srv, scope={"tools": ["b", "a", "c", "B", "é"], "lanes": ["z", "y"],
                                       "resources": ["r:b", "r:a*", "q"],
                                       "classes": ["irreversible", "external", "write", "read"]})
        self.assertEqual(m["scope"], {"tools": ["B", "a", "b", "c", "é"], "lanes": ["y", "z"],
                                      "resources": ["q", "r:a*", "r:b"],
                                      "classes": ["read", "write", "external", "irreversible"]})
        m = create_mandate(srv, scope={"classes": ["external", "read"]})
        self.assertEqual(m["scope"]["classes"], ["read", "external"])

    def test_partial_budget(self):
        m = create_mandate(srv, budget={"tokens": 5})
        self.assertEqual(mu.budget_of(m, "tokens"), 5)
        self.assertIsNone(mu.budget_of(m, "cost_usd"))
        self.assertIsNone(mu.budget_of(m, "tool_calls"))

    def test_proposed(self):
        m = create_mandate(srv, state="proposed")
        check_mandate_shape(self, m)
        self.assertEqual((m["state"], m["version"]), ("proposed", 1))
        allow, reason, _ = decide(srv, m["id"])
        self.assertEqual((allow, reason), (False, "mandate_proposed"))
        r = transition(srv, m["id"], "approve")
        check_mandate_shape(self, r.json)
        self.assertEqual(r.json["state"], "active")
        self.assertEqual(decide(srv, m["id"])[:2], (True, "ok"))

    def test_ids_unique_and_ordered(self):
        ids = [create_mandate(srv)["id"] for _ in range(5)]
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(ids, sorted(ids))

    def test_mission_hash_is_canonical(self):
        """Key order and list order in the request do not change the hash; purpose,
        scope and conditions each do; approver, evidence, budget and actor do not."""
        scope = {"tools": ["b", "a"], "lanes": ["l"], "resources": ["r:*"],
                 "classes": ["write", "external"]}
        conds = {"z": 1, "a": {"y": "é", "x": [3, 1]}}
        m1 = create_mandate(srv, purpose="p ✓", scope=scope, conditions=conds)
        scope2 = {"classes": ["external", "write"], "resources": ["r:*"], "lanes": ["l"],
                  "tools": ["a", "b"]}
        conds2 = {"a": {"x": [3, 1], "y": "é"}, "z": 1}
        m2 = create_mandate(srv, purpose="p ✓", scope=scope2, conditions=conds2,
                            approver="bob", actor="other", evidence={"e": 1},
                            budget={"tokens": 1})
        self.assertEqual(m1["mission_hash"], m2["mission_hash"])
        # the scope as it is returned: lists sorted, classes in their fixed order
        want = mu.mission_hash("p ✓", {"tools": ["a", "b"], "lanes": ["l"],
                                       "resources": ["r:*"], "classes": ["write", "external"]},
                               conds)
        self.assertEqual(m1["mission_hash"], want)
        self.assertEqual(len(mu.b64u_decode(m1["mission_hash"])), 32)
        self.assertNotIn("=", m1["mission_hash"])
        self.assertEqual(m2["mission_header"], 'approver="bob"; s256="%s"' % want)
        others = [create_mandate(srv, purpose="p ✓!", scope=scope, conditions=conds),
                  create_mandate(srv, purpose="p ✓", scope=dict(scope, lanes=[]),
                                 conditions=conds),
                  create_mandate(srv, purpose="p ✓", scope=scope, conditions={"z": 1})]
        for o in others:
            self.assertNotEqual(o["mission_hash"], want)
            self.assertEqual(o["mission_hash"], expected_hash(o))

    def test_required_and_invalid_fields(self):
        P = "/v1/mandates"
        cases = [
            (mu.mandate_body(approver=DROP), 400, "missing_field", "approver"),
            (mu.mandate_body(expires_at=DROP), 400, "missing_field", "expires_at"),
            ({}, 400, "missing_field", ("approver", "expires_at")),
            (mu.mandate_body(approver=5), 400, "invalid_type", "approver"),
            (mu.mandate_body(approver=""), 422, "invalid_value", "approver"),
            (mu.mandate_body(approver="a" * 257), 422, "invalid_value", "approver"),
            (mu.mandate_body(expires_at=12345), 400, "invalid_type", "expires_at"),
            (mu.mandate_body(expires_at="tomorrow"), 422, "invalid_value", "expires_at"),
            (mu.mandate_body(expires_at="2026-13-01T00:00:00.000Z"), 422, "invalid_value",
             "expires_at"),
            (mu.mandate_body(expires_at=iso(time.time() - 60)), 422, "invalid_value",
             "expires_at"),
            (mu.mandate_body(expires_at="2001-01-01T00:00:00.000Z"), 422, "invalid_value",
             "expires_at"),
            (mu.mandate_body(purpose=7), 400, "invalid_type", "purpose"),
            (mu.mandate_body(purpose=""), 422, "invalid_value", "purpose"),
            (mu.mandate_body(purpose="p" * 4097), 422, "invalid_value", "purpose"),
            (mu.mandate_body(actor=3), 400, "invalid_type", "actor"),
            (mu.mandate_body(actor=""), 422, "invalid_value", "actor"),
            (mu.mandate_body(actor="x" * 257), 422, "invalid_value", "actor"),
            (mu.mandate_body(evidence="e" * 70000), 422, "invalid_value", "evidence"),
            (mu.mandate_body(scope="git"), 400, "invalid_type", "scope"),
            (mu.mandate_body(scope=["git"]), 400, "invalid_type", "scope"),
            (mu.mandate_body(scope={"tools": "git"}), 400, "invalid_type", "scope.tools"),
            (mu.mandate_body(scope={"tools": [1]}), 400, "invalid_type",
             ("scope.tools", "scope.tools[0]")),
            (mu.mandate_body(scope={"lanes": [None]}), 400, "invalid_type",
             ("scope.lanes", "scope.lanes[0]")),
            (mu.mandate_body(scope={"tools": [""]}), 422, "invalid_value",
             ("scope.tools", "scope.tools[0]")),
            (mu.mandate_body(scope={"resources": ["r" * 257]}), 422, "invalid_value",
             ("scope.resources", "scope.resources[0]")),
            (mu.mandate_body(scope={"tools": ["t%d" % i for i in range(1025)]}), 422,
             "invalid_value", "scope.tools"),
            (mu.mandate_body(scope={"classes": ["delete"]}), 422, "invalid_value",
             ("scope.classes", "scope.classes[0]")),
            (mu.mandate_body(scope={"classes": ["read", "READ"]}), 422, "invalid_value",
             ("scope.classes", "scope.classes[1]")),
            (mu.mandate_body(scope={"verbs": []}), 400, "unknown_field", "scope.verbs"),
            (mu.mandate_body(conditions="x"), 400, "invalid_type", "conditions"),
            (mu.mandate_body(conditions=[1]), 400, "invalid_type", "conditions"),
            (mu.mandate_body(max_depth="2"), 400, "invalid_type", "max_depth"),
            (mu.mandate_body(max_depth=-1), 422, "invalid_value", "max_depth"),
            (mu.mandate_body(max_depth=17), 422, "invalid_value", "max_depth"),
            (mu.mandate_body(max_depth=1.5), (400, 422), ("invalid_type", "invalid_value"),
             "max_depth"),
            (mu.mandate_body(state="suspended"), 422, "invalid_value", "state"),
            (mu.mandate_body(state="revoked"), 422, "invalid_value", "state"),
            (mu.mandate_body(state="ACTIVE"), 422, "invalid_value", "state"),
            (mu.mandate_body(state=1), 400, "invalid_type", "state"),
            (mu.mandate_body(budget="x"), 400, "invalid_type", "budget"),
            (mu.mandate_body(budget={"tokens": "1"}), 400, "invalid_type", "budget.tokens"),
            (mu.mandate_body(budget={"tokens": -1}), 422, "invalid_value", "budget.tokens"),
            (mu.mandate_body(budget={"cost_usd": -0.5}), 422, "invalid_value",
             "budget.cost_usd"),
            (mu.mandate_body(budget={"tool_calls": -2}), 422, "invalid_value",
             "budget.tool_calls"),
            (mu.mandate_body(budget={"tokenz": 1}), 400, "unknown_field", "budget.tokenz"),
            (mu.mandate_body(bogus=1), 400, "unknown_field", "bogus"),
            (mu.mandate_body(id=UNKNOWN_MDT), 400, "unknown_field", "id"),
            (mu.mandate_body(version=3), 400, "unknown_field", "version"),
            (mu.mandate_body(parent=UNKNOWN_MDT), 400, "unknown_field", "parent"),
            (mu.mandate_body(depth=1), 400, "unknown_field", "depth"),
            (mu.mandate_body(spent={"tokens": 1}), 400, "unknown_field", "spent"),
            (mu.mandate_body(mission_hash="x"), 400, "unknown_field", "mission_hash"),
        ]
        before = len(mu.stream_backlog(srv))
        for body, status, code, field in cases:
            with self.subTest(body={k: (str(v)[:60]) for k, v in body.items()}):
                r = srv.request("POST", P, body)
                assert_err(r, status, code, field=field)
        after = mu.stream_backlog(srv)
        self.assertEqual(len(after), before, "a refused create wrote an event: %r"
                         % after[before:][:3])

    def test_boundaries_accepted(self):
        for kw in ({"approver": "a" * 256, "actor": "x" * 256, "purpose": "p" * 4096},
                   {"purpose": "é" * 2048},
                   {"max_depth": 16}, {"max_depth": 0},
                   {"scope": {"tools": ["t%04d" % i for i in range(1024)][::-1],
                              "resources": ["r" * 256]}},
                   {"evidence": "e" * 60000},
                   {"actor": None, "evidence": None},
                   {"budget": {"tokens": 0, "cost_usd": 0, "tool_calls": 0}},
                   {"expires_at": future(2)},
                   {"expires_at": future(86400 * 3650)}):
            with self.subTest(kw=list(kw)):
                r = srv.request("POST", "/v1/mandates", mu.mandate_body(**kw))
                self.assertEqual(r.status, 201, r.raw[:300])
                check_mandate_shape(self, r.json)
                for k, v in kw.items():
                    if k == "scope":
                        for kind, lst in v.items():
                            self.assertEqual(r.json["scope"][kind], sorted(lst))
                    elif k != "budget":
                        self.assertEqual(r.json.get(k), v, k)


class GetAndTenants(unittest.TestCase):
    def test_unknown_and_other_tenant_404(self):
        m = create_mandate(srv)
        before = get_mandate(srv, m["id"])
        theirs = create_mandate(srv, key=OTHER, approver="eve")
        self.assertEqual(get_mandate(srv, theirs["id"], key=OTHER)["approver"], "eve")
        for mid, key in ((UNKNOWN_MDT, harness.DEFAULT), (m["id"], OTHER),
                         (theirs["id"], harness.DEFAULT)):
            for method, suffix, body in (
                    ("GET", "", None), ("GET", "/tree", None),
                    ("PATCH", "", {"scope": {"tools": []}}),
                    ("POST", "/approve", None), ("POST", "/suspend", {"reason": "x"}),
                    ("POST", "/reinstate", None), ("POST", "/revoke", {"reason": "x"}),
                    ("POST", "/complete", None),
                    ("POST", "/delegate", mu.child_body(m)),
                    ("POST", "/artifact", {"ttl": "30s"})):
                with self.subTest(mid=mid, key=key is OTHER, call=method + suffix):
                    r = srv.request(method, "/v1/mandates/" + mid + suffix, body, key=key)
                    assert_err(r, 404, "not_found")
        self.assertEqual(get_mandate(srv, m["id"]), before)
        self.assertEqual(get_mandate(srv, theirs["id"], key=OTHER)["state"], "active")
        self.assertEqual(tree(srv, m["id"])["descendants"], [])


# ---------------------------------------------------------------------------------------
class LifecycleMatrix(unittest.TestCase):
    def check_call(self, call, state):
        m = make(state)
        mid = m["id"]
        body = {"reason": "%s because" % call} if call in ("suspend", "revoke") else None
        r = srv.request("POST", "/v1/mandates/%s/%s" % (mid, call), body)
        to = TRANSITIONS[call].get(state)
        if to is None:
            assert_err(r, 409, "invalid_transition", state=state)
            self.assertEqual(get_mandate(srv, mid), m)
            return
        self.assertEqual(r.status, 200, "%s from %s: %r" % (call, state, r.raw))
        n = r.json
        check_mandate_shape(self, n)
        self.assertEqual(n["state"], to)
        self.assertGreaterEqual(n["version"], m["version"])
        self.assertGreaterEqual(n["updated_at"], m["updated_at"])
        for k in ("id", "purpose", "approver", "scope", "conditions", "expires_at",
                  "mission_hash", "created_at", "budget", "parent", "root", "depth"):
            self.assertEqual(n[k], m[k], k)
        if body:
            self.assertEqual(n["reason"], body["reason"])
        self.assertEqual(get_mandate(srv, mid), n)
        allow, reason, _ = decide(srv, mid)
        want = {"active": (True, "ok")}.get(to, (False, "mandate_" + to))
        self.assertEqual((allow, reason), want)

    def test_expired_reason(self):
        m = make("expired")
        self.assertEqual(m["reason"], "expired")
        self.assertEqual(decide(srv, m["id"])[:2], (False, "mandate_expired"))


for _s in STATES:
    for _c in CALLS:
        setattr(LifecycleMatrix, "test_%s_from_%s" % (_c, _s),
                lambda self, c=_c, s=_s: self.check_call(c, s))


class TransitionBodies(unittest.TestCase):
    def test_reason_validated(self):
        m = create_mandate(srv)
        before = get_mandate(srv, m["id"])
        for call in ("suspend", "revoke"):
            for body, status, code in (({"reason": ""}, 422, "invalid_value"),
                                       ({"reason": "r" * 1025}, 422, "invalid_value"),
                                       ({"reason": 5}, 400, "invalid_type"),
                                       ({"reason": ["x"]}, 400, "invalid_type"),
                                       ({"why": "x"}, 400, "unknown_field")):
                with self.subTest(call=call, body=str(body)[:40]):
                    r = srv.request("POST", "/v1/mandates/%s/%s" % (m["id"], call), body)
                    assert_err(r, status, code, field="reason" if code != "unknown_field"
                               else "why")
        self.assertEqual(get_mandate(srv, m["id"]), before)
        r = transition(srv, m["id"], "suspend", {"reason": "é" * 512})
        self.assertEqual(r.json["reason"], "é" * 512)
        r = transition(srv, m["id"], "revoke", {"reason": "r" * 1024})
        self.assertEqual(r.json["reason"], "r" * 1024)

    def test_reason_kept_until_the_next_suspend_or_revoke(self):
        """docs/api.md: `reason` is "the reason given to the last suspend or revoke" —
        a reinstate does not clear it; the next suspend replaces it."""
        m = create_mandate(srv)
        transition(srv, m["id"], "suspend", {"reason": "first"})
        r = transition(srv, m["id"], "reinstate")
        self.assertEqual((r.json["state"], r.json["reason"]), ("active", "first"))
        transition(srv, m["id"], "suspend", {"reason": "second"})
        self.assertEqual(get_mandate(srv, m["id"])["reason"], "second")
        r = transition(srv, m["id"], "revoke", {"reason": "third"})
        self.assertEqual(r.json["reason"], "third")

    def test_no_body_and_empty_object(self):
        m = create_mandate(srv)
        r = transition(srv, m["id"], "suspend", {})
        self.assertEqual(r.json["state"], "suspended")
        transition(srv, m["id"], "reinstate")
        r = transition(srv, m["id"], "revoke")
        self.assertEqual(r.json["state"], "revoked")


# ---------------------------------------------------------------------------------------
def patch(mid, body, key=harness.DEFAULT):
    return srv.request("PATCH", "/v1/mandates/" + mid, body, key=key)


class Patch(unittest.TestCase):
    def test_narrow_each_list(self):
        for kind in mu.SCOPE_KINDS:
            with self.subTest(kind=kind):
                m = create_mandate(srv)
                new = m["scope"][kind][1:]
                r = patch(m["id"], {"scope": {kind: list(reversed(new))}})
                self.assertEqual(r.status, 200, r.raw)
                n = r.json
                check_mandate_shape(self, n)
                self.assertEqual(n["scope"][kind], new)
                for other in mu.SCOPE_KINDS:
                    if other != kind:
                        self.assertEqual(n["scope"][other], m["scope"][other])
                self.assertEqual(n["version"], m["version"] + 1)
                self.assertNotEqual(n["mission_hash"], m["mission_hash"])
                self.assertEqual(n["state"], "active")
                self.assertGreaterEqual(n["updated_at"], m["updated_at"])
                self.assertEqual(n["created_at"], m["created_at"])
                self.assertEqual(get_mandate(srv, m["id"]), n)
        # to an empty list: nothing of that kind is allowed any more
        m = create_mandate(srv)
        r = patch(m["id"], {"scope": {"tools": [], "classes": ["read"]}})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["scope"]["tools"], r.json["scope"]["classes"]), ([], ["read"]))
        self.assertEqual(r.json["version"], 2)
        self.assertEqual(decide(srv, m["id"])[:2], (False, "tool_out_of_scope"))

    def test_narrow_takes_effect_on_checks(self):
        m = create_mandate(srv)
        self.assertEqual(decide(srv, m["id"], tool="shell")[:2], (True, "ok"))
        self.assertEqual(decide(srv, m["id"], cls="write")[:2], (True, "ok"))
        assert_status(patch(m["id"], {"scope": {"tools": ["git"], "classes": ["read"]}}), 200)
        self.assertEqual(decide(srv, m["id"], tool="shell")[:2], (False, "tool_out_of_scope"))
        self.assertEqual(decide(srv, m["id"], cls="write")[:2], (False, "class_out_of_scope"))
        allow, reason, d = decide(srv, m["id"])
        self.assertEqual((allow, reason, d["mandate_version"]), (True, "ok", 2))

    def test_broaden_refused(self):
        m = create_mandate(srv, scope={"tools": ["git"], "lanes": ["repo"],
                                       "resources": ["repo:web/*"], "classes": ["read"]})
        before = get_mandate(srv, m["id"])
        for kind, lst in (("tools", ["git", "shell"]), ("tools", ["shell"]),
                          ("lanes", ["repo", "ops"]), ("resources", ["repo:*"]),
                          ("resources", ["repo:web/*", "doc:x"]),
                          ("classes", ["read", "write"]), ("classes", ["irreversible"])):
            with self.subTest(kind=kind, lst=lst):
                assert_err(patch(m["id"], {"scope": {kind: lst}}), 422, "not_subset",
                           field="scope." + kind)
        # one list narrowed and one broadened: refused as a whole
        assert_err(patch(m["id"], {"scope": {"tools": [], "lanes": ["ops"]}}), 422,
                   "not_subset", field="scope.lanes")
        self.assertEqual(get_mandate(srv, m["id"]), before)

    def test_narrow_resource_pattern(self):
        """A narrower pattern, or exact strings inside the current pattern, is a subset."""
        m = create_mandate(srv, scope={"tools": ["git"], "lanes": ["repo"],
                                       "resources": ["repo:web/*"], "classes": ["read"]})
        r = patch(m["id"], {"scope": {"resources": ["repo:web/src/*", "repo:web/README"]}})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["scope"]["resources"], ["repo:web/README", "repo:web/src/*"])
        self.assertEqual(decide(srv, m["id"], tool="git", lane="repo", cls="read",
                                resource="repo:web/lib/x")[:2], (False, "resource_out_of_scope"))
        self.assertEqual(decide(srv, m["id"], tool="git", lane="repo", cls="read",
                                resource="repo:web/src/x")[:2], (True, "ok"))
        # and back out again is a broadening
        assert_err(patch(m["id"], {"scope": {"resources": ["repo:web/*"]}}), 422, "not_subset",
                   field="scope.resources")

    def test_no_change(self):
        m = create_mandate(srv, conditions={"a": 1})
        before = get_mandate(srv, m["id"])
        for body in ({}, {"scope": {}}, {"scope": {"tools": m["scope"]["tools"]}},
                     {"scope": {"tools": list(reversed(m["scope"]["tools"]))}},
                     {"scope": dict(m["scope"])}, {"expires_at": m["expires_at"]},
                     {"conditions": {"a": 1}},
                     {"scope": {"lanes": m["scope"]["lanes"]}, "conditions": {"a": 1},
                      "expires_at": m["expires_at"]}):
            with self.subTest(body=body):
                assert_err(patch(m["id"], body), 400, "no_change")
        self.assertEqual(get_mandate(srv, m["id"]), before)

    def test_unknown_field(self):
        m = create_mandate(srv)
        before = get_mandate(srv, m["id"])
        for body, field in (({"purpose": "x"}, "purpose"), ({"approver": "eve"}, "approver"),
                            ({"state": "revoked"}, "state"), ({"version": 9}, "version"),
                            ({"budget": {"tokens": 1}}, "budget"), ({"actor": "z"}, "actor"),
                            ({"scope": {"tools": ["git"], "verbs": []}}, "scope.verbs"),
                            ({"scope": {"tools": ["git"]}, "max_depth": 1}, "max_depth")):
            with self.subTest(body=body):
                assert_err(patch(m["id"], body), 400, "unknown_field", field=field)
        self.assertEqual(get_mandate(srv, m["id"]), before)

    def test_conditions_keep_keys(self):
        m = create_mandate(srv, conditions={"env": "prod", "ticket": "SEC-1"})
        before = get_mandate(srv, m["id"])
        for c in ({"env": "prod"}, {}, {"ticket": "SEC-1", "other": 1}):
            with self.subTest(c=c):
                assert_err(patch(m["id"], {"conditions": c}), 422, "not_subset",
                           field="conditions")
        self.assertEqual(get_mandate(srv, m["id"]), before)
        new = {"env": "staging", "ticket": "SEC-1", "extra": [1, 2]}
        r = patch(m["id"], {"conditions": new})
        self.assertEqual(r.status, 200, r.raw)
        check_mandate_shape(self, r.json)
        self.assertEqual(r.json["conditions"], new)
        self.assertEqual(r.json["version"], 2)
        self.assertNotEqual(r.json["mission_hash"], m["mission_hash"])

    def test_expires_at(self):
        m = create_mandate(srv, expires_at=future(3600))
        later = future(7200)
        r = patch(m["id"], {"expires_at": later})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["expires_at"], r.json["version"]), (later, 2))
        # the deadline is not part of the mission
        self.assertEqual(r.json["mission_hash"], m["mission_hash"])
        earlier = future(1800)
        r = patch(m["id"], {"expires_at": earlier})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["expires_at"], r.json["version"]), (earlier, 3))
        before = get_mandate(srv, m["id"])
        for bad, status, code in ((iso(time.time() - 5), 422, "invalid_value"),
                                  ("soon", 422, "invalid_value"), (5, 400, "invalid_type")):
            with self.subTest(bad=bad):
                assert_err(patch(m["id"], {"expires_at": bad}), status, code,
                           field="expires_at")
        self.assertEqual(get_mandate(srv, m["id"]), before)

    def test_child_expires_at_bounded_by_parent(self):
        p = create_mandate(srv, expires_at=future(3600))
        c = delegate(srv, p, expires_at=iso(parse_ts(p["expires_at"]) - 600))
        before = get_mandate(srv, c["id"])
        later = iso(parse_ts(p["expires_at"]) + 0.0015)
        assert_err(patch(c["id"], {"expires_at": later}), 422, "not_subset", field="expires_at")
        self.assertEqual(get_mandate(srv, c["id"]), before)
        r = patch(c["id"], {"expires_at": p["expires_at"]})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["expires_at"], p["expires_at"])
        # the parent moves earlier than the child: the child follows
        g = delegate(srv, get_mandate(srv, c["id"]))
        new = future(900)
        r = patch(p["id"], {"expires_at": new})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(get_mandate(srv, c["id"])["expires_at"], new)
        self.assertEqual(get_mandate(srv, g["id"])["expires_at"], new)
        # ... and a descendant already earlier stays where it was
        p2 = create_mandate(srv, expires_at=future(3600))
        early = future(600)
        c2 = delegate(srv, p2, expires_at=early)
        assert_status(patch(p2["id"], {"expires_at": future(1200)}), 200)
        self.assertEqual(get_mandate(srv, c2["id"])["expires_at"], early)

    def test_versions_bump_once_per_patch(self):
        m = create_mandate(srv, conditions={"k": 0})
        for i in range(1, 6):
            r = patch(m["id"], {"conditions": {"k": i}})
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual(r.json["version"], 1 + i)
            self.assertEqual(r.json["mission_hash"], expected_hash(r.json))

    def test_patch_allowed_states(self):
        for state in STATES:
            with self.subTest(state=state):
                m = make(state)
                r = patch(m["id"], {"scope": {"tools": ["git"]}})
                if state in ("proposed", "active", "suspended"):
                    self.assertEqual(r.status, 200, r.raw)
                    self.assertEqual((r.json["state"], r.json["scope"]["tools"],
                                      r.json["version"]), (state, ["git"], m["version"] + 1))
                else:
                    assert_err(r, 409, "invalid_transition", state=state)
                    self.assertEqual(get_mandate(srv, m["id"]), m)


class Clip(unittest.TestCase):
    def test_narrowing_clips_descendants(self):
        root = create_mandate(srv, actor="r", scope={
            "tools": ["git", "make", "shell"], "lanes": ["docs", "repo"],
            "resources": ["doc:*", "repo:*"], "classes": list(mu.CLASSES)})
        c1 = delegate(srv, root, actor="c1", scope={
            "tools": ["git", "shell"], "lanes": ["repo"], "resources": ["doc:x", "repo:web/*"],
            "classes": ["read", "write"]})
        g1 = delegate(srv, c1, actor="g1", scope={
            "tools": ["shell"], "lanes": ["repo"], "resources": ["doc:x"], "classes": ["write"]})
        c2 = delegate(srv, root, actor="c2", scope={
            "tools": ["git"], "lanes": ["docs"], "resources": ["repo:web/a"],
            "classes": ["read"]})
        self.assertEqual(decide(srv, c1["id"], tool="shell")[:2], (True, "ok"))
        r = patch(root["id"], {"scope": {"tools": ["git", "make"], "resources": ["repo:*"],
                                         "classes": ["external", "irreversible", "read"]}})
        self.assertEqual(r.status, 200, r.raw)
        n1 = get_mandate(srv, c1["id"])
        self.assertEqual(n1["scope"], {"tools": ["git"], "lanes": ["repo"],
                                       "resources": ["repo:web/*"], "classes": ["read"]})
        self.assertEqual(n1["version"], 2)
        self.assertEqual(n1["mission_hash"], expected_hash(n1))
        ng = get_mandate(srv, g1["id"])
        self.assertEqual(ng["scope"], {"tools": [], "lanes": ["repo"], "resources": [],
                                       "classes": []})
        self.assertEqual(ng["version"], 2)
        self.assertEqual(ng["mission_hash"], expected_hash(ng))
        # c2 already lay inside the new scope: not clipped, version kept
        self.assertEqual(get_mandate(srv, c2["id"]), c2)
        self.assertEqual(decide(srv, c1["id"], tool="shell")[:2], (False, "tool_out_of_scope"))
        self.assertEqual(decide(srv, c1["id"], cls="write")[:2], (False, "class_out_of_scope"))
        self.assertEqual(decide(srv, c1["id"])[:2], (True, "ok"))
        self.assertEqual(decide(srv, g1["id"], tool="shell", resource="doc:x",
                                cls="write")[:2], (False, "tool_out_of_scope"))
        self.assertEqual(decide(srv, c2["id"], lane="docs", resource="repo:web/a")[:2],
                         (True, "ok"))
        t = tree(srv, root["id"])
        self.assertEqual({e["id"]: e["version"] for e in t["descendants"]},
                         {c1["id"]: 2, g1["id"]: 2, c2["id"]: 1})


# ---------------------------------------------------------------------------------------
PARENT_SCOPE = {"tools": ["git", "shell"], "lanes": ["docs", "repo"],
                "resources": ["doc:readme", "repo:web/*"], "classes": ["read", "write"]}
PARENT_BUDGET = {"tokens": 1000, "cost_usd": 10.0, "tool_calls": 100}


class Delegation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.parent = create_mandate(srv, actor="planner", scope=PARENT_SCOPE,
                                    expires_at=future(3600), max_depth=2,
                                    budget=PARENT_BUDGET, conditions={"env": "prod"},
                                    approver="alice", evidence={"t": 1})

    def base(self, **kw):
        body = {"actor": "coder", "purpose": "sub",
                "scope": {"tools": ["git"], "lanes": ["repo"], "resources": ["repo:web/src/*"],
                          "classes": ["read"]},
                "expires_at": iso(parse_ts(self.parent["expires_at"]) - 60),
                "budget": {"tokens": 10, "cost_usd": 1.0, "tool_calls": 1}}
        for k, v in kw.items():
            if v is DROP:
                body.pop(k, None)
            else:
                body[k] = v
        return body

    def scope(self, **kw):
        s = dict(self.base()["scope"])
        s.update(kw)
        return s

    def attempt(self, body, parent=None):
        p = parent or self.parent
        return srv.request("POST", "/v1/mandates/%s/delegate" % p["id"], body)

    def test_child_shape(self):
        body = self.base(conditions={"extra": 1}, evidence={"why": "split"})
        r = self.attempt(body)
        self.assertEqual(r.status, 201, r.raw)
        c = r.json
        check_mandate_shape(self, c)
        p = self.parent
        self.assertEqual((c["state"], c["version"], c["parent"], c["root"], c["depth"]),
                         ("active", 1, p["id"], p["id"], 1))
        self.assertEqual(c["approver"], p["approver"])
        self.assertEqual(c["actor"], "coder")
        self.assertEqual(c["purpose"], "sub")
        self.assertEqual(c["max_depth"], p["max_depth"])
        self.assertEqual(c["conditions"], {"env": "prod", "extra": 1})
        self.assertEqual(c["scope"], body["scope"])
        self.assertEqual(c["expires_at"], body["expires_at"])
        self.assertEqual(c["budget"], body["budget"])
        self.assertEqual(c["spent"], ZERO_SPENT)
        self.assertEqual(c["evidence"], {"why": "split"})
        self.assertIsNone(c["reason"])
        self.assertEqual(get_mandate(srv, c["id"]), c)
        self.assertEqual(decide(srv, c["id"], resource="repo:web/src/x.c")[:2], (True, "ok"))
        self.assertEqual(decide(srv, c["id"], resource="repo:web/x.c")[:2],
                         (False, "resource_out_of_scope"))

    def test_rules_both_sides(self):
        E = self.parent["expires_at"]
        cases = [
            # (description, body, refused field or None when allowed)
            ("tools equal", self.base(scope=self.scope(tools=["git", "shell"])), None),
            ("tools empty", self.base(scope=self.scope(tools=[])), None),
            ("tools outside", self.base(scope=self.scope(tools=["git", "make"])), "scope.tools"),
            ("tools case", self.base(scope=self.scope(tools=["Git"])), "scope.tools"),
            ("lanes equal", self.base(scope=self.scope(lanes=["docs", "repo"])), None),
            ("lanes outside", self.base(scope=self.scope(lanes=["ops"])), "scope.lanes"),
            ("res exact inside pattern", self.base(scope=self.scope(
                resources=["repo:web/src/a.ts"])), None),
            ("res same pattern", self.base(scope=self.scope(resources=["repo:web/*"])), None),
            ("res exact", self.base(scope=self.scope(resources=["doc:readme"])), None),
            ("res two", self.base(scope=self.scope(resources=["doc:readme", "repo:web/a/*"])),
             None),
            ("res wider pattern", self.base(scope=self.scope(resources=["repo:*"])),
             "scope.resources"),
            ("res shorter prefix", self.base(scope=self.scope(resources=["repo:web*"])),
             "scope.resources"),
            ("res sibling", self.base(scope=self.scope(resources=["repo:webx/a"])),
             "scope.resources"),
            ("res exact neighbour", self.base(scope=self.scope(resources=["doc:readme2"])),
             "scope.resources"),
            ("res pattern over exact", self.base(scope=self.scope(resources=["doc:readme*"])),
             "scope.resources"),
            ("res one of two outside", self.base(scope=self.scope(
                resources=["repo:web/src/*", "doc:other"])), "scope.resources"),
            ("classes equal", self.base(scope=self.scope(classes=["read", "write"])), None),
            ("classes outside", self.base(scope=self.scope(classes=["external"])),
             "scope.classes"),
            ("classes one outside", self.base(scope=self.scope(classes=["read", "irreversible"])),
             "scope.classes"),
            ("expires equal", self.base(expires_at=E), None),
            ("expires +1ms", self.base(expires_at=iso(parse_ts(E) + 0.0015)), "expires_at"),
            ("expires +1h", self.base(expires_at=iso(parse_ts(E) + 3600)), "expires_at"),
            ("max_depth equal", self.base(max_depth=2), None),
            ("max_depth lower", self.base(max_depth=1), None),
            ("max_depth higher", self.base(max_depth=3), "depth"),
            ("actor same", self.base(actor="planner"), "actor"),
            ("budget at remaining", self.base(budget=dict(PARENT_BUDGET)), None),
            ("tokens over", self.base(budget={"tokens": 1001, "cost_usd": 1.0,
                                              "tool_calls": 1}), "budget"),
            ("cost over", self.base(budget={"tokens": 1, "cost_usd": 10.01,
                                            "tool_calls": 1}), "budget"),
            ("calls over", self.base(budget={"tokens": 1, "cost_usd": 1.0,
                                             "tool_calls": 101}), "budget"),
            ("no budget", self.base(budget=DROP), "budget"),
            ("conditions added", self.base(conditions={"extra": 1}), None),
            ("conditions same value", self.base(conditions={"env": "prod"}), None),
            ("conditions changed", self.base(conditions={"env": "dev"}), "conditions"),
        ]
        for desc, body, field in cases:
            with self.subTest(case=desc):
                n_before = len(tree(srv, self.parent["id"])["descendants"])
                r = self.attempt(body)
                if field is None:
                    self.assertEqual(r.status, 201, r.raw)
                    check_mandate_shape(self, r.json)
                    self.assertEqual(r.json["parent"], self.parent["id"])
                else:
                    assert_err(r, 422, "not_subset", field=field)
                    self.assertEqual(len(tree(srv, self.parent["id"])["descendants"]), n_before)
        self.assertEqual(get_mandate(srv, self.parent["id"])["version"], 1)

    def test_depth(self):
        r0 = create_mandate(srv, actor="d0", max_depth=1)
        c = delegate(srv, r0, actor="d1")
        self.assertEqual((c["depth"], c["max_depth"]), (1, 1))
        assert_err(self.attempt(mu.child_body(c, actor="d2"), parent=c), 422, "not_subset",
                   field="depth")
        z = create_mandate(srv, actor="z0", max_depth=0)
        assert_err(self.attempt(mu.child_body(z, actor="z1"), parent=z), 422, "not_subset",
                   field="depth")
        # a child's own max_depth bounds its subtree
        r2 = create_mandate(srv, actor="e0", max_depth=3)
        c2 = delegate(srv, r2, actor="e1", max_depth=1)
        assert_err(self.attempt(mu.child_body(c2, actor="e2"), parent=c2), 422, "not_subset",
                   field="depth")
        c3 = delegate(srv, r2, actor="e1b", max_depth=2)
        g3 = delegate(srv, c3, actor="e2b")
        self.assertEqual(g3["depth"], 2)
        assert_err(self.attempt(mu.child_body(g3, actor="e3"), parent=g3), 422, "not_subset",
                   field="depth")

    def test_parent_without_actor(self):
        p = create_mandate(srv, actor=None)
        c = delegate(srv, p, actor="anyone")
        self.assertEqual(c["actor"], "anyone")

    def test_unlimited_parent_allows_unlimited_child(self):
        p = create_mandate(srv, actor="u0")
        c = delegate(srv, p, actor="u1")
        self.assertIsNone(mu.budget_of(c, "tokens"))
        c = delegate(srv, p, actor="u2", budget={"tokens": 10 ** 9})
        self.assertEqual(mu.budget_of(c, "tokens"), 10 ** 9)

    def test_budget_remaining_counts_spent(self):
        p = create_mandate(srv, actor="b0", budget={"tokens": 1000})
        sid = srv.create_session(mandate=p["id"])["id"]
        assert_status(srv.append(sid, {"kind": "m", "usage": {"tokens": 400}}), 201)
        self.assertEqual(get_mandate(srv, p["id"])["spent"]["tokens"], 400)
        assert_err(self.attempt(mu.child_body(p, actor="b1", budget={"tokens": 601}),
                                parent=p), 422, "not_subset", field="budget")
        c = delegate(srv, p, actor="b1", budget={"tokens": 600})
        # spending below counts against the parent's remaining too
        sid2 = srv.create_session(mandate=c["id"])["id"]
        assert_status(srv.append(sid2, {"kind": "m", "usage": {"tokens": 100}}), 201)
        self.assertEqual(get_mandate(srv, p["id"])["spent"]["tokens"], 500)
        self.assertEqual(get_mandate(srv, c["id"])["spent"]["tokens"], 100)
        assert_err(self.attempt(mu.child_body(p, actor="b2", budget={"tokens": 501}),
                                parent=p), 422, "not_subset", field="budget")
        delegate(srv, p, actor="b2", budget={"tokens": 500})
        # and the child's own remaining bounds its children
        assert_err(self.attempt(mu.child_body(c, actor="b3", budget={"tokens": 501}),
                                parent=c), 422, "not_subset", field="budget")
        delegate(srv, c, actor="b3", budget={"tokens": 500})

    def test_parent_not_active(self):
        for state in ("proposed", "suspended", "revoked", "completed", "expired"):
            with self.subTest(state=state):
                p = make(state)
                r = self.attempt(mu.child_body(p, actor="kid"), parent=p)
                if state == "expired" and r.status == 422:
                    # the child's deadline (the parent's, now past) may be refused first
                    assert_err(r, 422, ("invalid_value", "not_subset"), field="expires_at")
                else:
                    e = assert_err(r, 409, "mandate_inactive")
                    if "state" in e:   # optional here; when given, the parent's state
                        self.assertEqual(e["state"], state)
                self.assertEqual(tree(srv, p["id"])["descendants"], [])
        # active parent under a suspended ancestor
        root = create_mandate(srv, actor="a0")
        mid = delegate(srv, root, actor="a1")
        transition(srv, root["id"], "suspend")
        e = assert_err(self.attempt(mu.child_body(mid, actor="a2"), parent=mid), 409,
                       "mandate_inactive")
        if "state" in e:   # the ancestor's
            self.assertEqual(e["state"], "suspended")
        transition(srv, root["id"], "reinstate")
        delegate(srv, get_mandate(srv, mid["id"]), actor="a2")


# ---------------------------------------------------------------------------------------
FULL = {"tools": ["git"], "lanes": ["repo"], "resources": ["repo:*"], "classes": ["read"]}
ACT = {"tool": "git", "lane": "repo", "resource": "repo:x", "class": "read"}


class Cascade(unittest.TestCase):
    def test_deep_chain_revoke(self):
        root = create_mandate(srv, actor="a0", max_depth=10, scope=FULL)
        chain = [root]
        for i in range(1, 11):
            chain.append(delegate(srv, chain[-1], actor="a%d" % i, scope=FULL))
        self.assertEqual([m["depth"] for m in chain], list(range(11)))
        self.assertTrue(all(m["root"] == root["id"] for m in chain))
        assert_err(srv.request("POST", "/v1/mandates/%s/delegate" % chain[-1]["id"],
                               mu.child_body(chain[-1], actor="a11", scope=FULL)),
                   422, "not_subset", field="depth")
        with srv.client() as c:
            for m in chain:
                self.assertEqual(decide(c, m["id"], action=ACT)[:2], (True, "ok"))
        # a complete()d leaf is final: the cascade leaves it alone
        leaf = delegate(srv, chain[5], actor="leaf", scope=FULL)
        transition(srv, leaf["id"], "complete")
        r = transition(srv, root["id"], "revoke", {"reason": "release freeze"})
        self.assertEqual((r.json["state"], r.json["reason"]), ("revoked", "release freeze"))
        t = tree(srv, root["id"])
        states = {e["id"]: e["state"] for e in t["descendants"]}
        self.assertEqual(len(states), 11)
        for m in chain[1:]:
            self.assertEqual(states[m["id"]], "revoked")
            self.assertEqual(get_mandate(srv, m["id"])["state"], "revoked")
        self.assertEqual(states[leaf["id"]], "completed")
        with srv.client() as c:
            for m in chain:
                allow, reason, _ = decide(c, m["id"], action=ACT)
                self.assertFalse(allow)
                self.assertEqual(reason, "mandate_revoked")
        for call in ("reinstate", "approve", "suspend", "revoke", "complete"):
            assert_err(transition(srv, chain[10]["id"], call, expect=None), 409,
                       "invalid_transition", state="revoked")

    def test_wide_tree_revoke(self):
        root = create_mandate(srv, actor="w", max_depth=1, scope=FULL)
        kids = [delegate(srv, root, actor="w%d" % i, scope=FULL)["id"] for i in range(200)]
        t = tree(srv, root["id"])
        self.assertEqual(sorted(e["id"] for e in t["descendants"]), sorted(kids))
        transition(srv, root["id"], "revoke", {"reason": "wide"})
        t = tree(srv, root["id"])
        self.assertEqual(len(t["descendants"]), 200)
        self.assertEqual({e["state"] for e in t["descendants"]}, {"revoked"})
        with srv.client() as c:
            for k in kids:
                allow, reason, _ = decide(c, k, action=ACT)
                self.assertEqual((allow, reason), (False, "mandate_revoked"), k)

    def test_revoke_middle_leaves_the_rest(self):
        root = create_mandate(srv, actor="m0", max_depth=3, scope=FULL)
        a = delegate(srv, root, actor="ma", scope=FULL)
        a1 = delegate(srv, a, actor="ma1", scope=FULL)
        b = delegate(srv, root, actor="mb", scope=FULL)
        transition(srv, a["id"], "revoke")
        self.assertEqual(get_mandate(srv, a1["id"])["state"], "revoked")
        for m in (root, b):
            self.assertEqual(get_mandate(srv, m["id"])["state"], "active")
            self.assertEqual(decide(srv, m["id"], action=ACT)[:2], (True, "ok"))

    def test_suspend_denies_descendants_and_reinstate_restores(self):
        root = create_mandate(srv, actor="s0", max_depth=3, scope=FULL)
        c = delegate(srv, root, actor="s1", scope=FULL)
        g = delegate(srv, c, actor="s2", scope=FULL)
        gg = delegate(srv, g, actor="s3", scope=FULL)
        r = transition(srv, c["id"], "suspend", {"reason": "incident 7"})
        self.assertEqual((r.json["state"], r.json["reason"]), ("suspended", "incident 7"))
        self.assertEqual(decide(srv, root["id"], action=ACT)[:2], (True, "ok"))
        self.assertEqual(decide(srv, c["id"], action=ACT)[:2], (False, "mandate_suspended"))
        for m in (g, gg):
            self.assertEqual(decide(srv, m["id"], action=ACT)[:2], (False, "ancestor_inactive"))
            # suspend does not rewrite the descendants' own state
            self.assertEqual(get_mandate(srv, m["id"])["state"], "active")
        # suspending the root too: still ancestor_inactive below
        transition(srv, root["id"], "suspend")
        self.assertEqual(decide(srv, gg["id"], action=ACT)[:2], (False, "ancestor_inactive"))
        transition(srv, root["id"], "reinstate")
        self.assertEqual(decide(srv, g["id"], action=ACT)[:2], (False, "ancestor_inactive"))
        r = transition(srv, c["id"], "reinstate")
        self.assertEqual(r.json["state"], "active")
        for m in (root, c, g, gg):
            self.assertEqual(decide(srv, m["id"], action=ACT)[:2], (True, "ok"), m["actor"])

    def test_complete_denies_descendants(self):
        root = create_mandate(srv, actor="c0", max_depth=2, scope=FULL)
        c = delegate(srv, root, actor="c1", scope=FULL)
        g = delegate(srv, c, actor="c2", scope=FULL)
        transition(srv, c["id"], "complete")
        self.assertEqual(decide(srv, c["id"], action=ACT)[:2], (False, "mandate_completed"))
        self.assertEqual(decide(srv, g["id"], action=ACT)[:2], (False, "ancestor_inactive"))
        self.assertEqual(decide(srv, root["id"], action=ACT)[:2], (True, "ok"))


class Tree(unittest.TestCase):
    def test_tree(self):
        root = create_mandate(srv, actor="t0", max_depth=3)
        c1 = delegate(srv, root, actor="t1")
        g1 = delegate(srv, c1, actor="t11")
        gg = delegate(srv, g1, actor="t111")
        g2 = delegate(srv, c1, actor="t12")
        c2 = delegate(srv, root, actor="t2")
        g3 = delegate(srv, c2, actor="t21")
        transition(srv, g2["id"], "suspend")
        byid = {m["id"]: get_mandate(srv, m["id"]) for m in (root, c1, g1, gg, g2, c2, g3)}

        def entry_ok(e):
            self.assertEqual(set(e), TREE_ENTRY_FIELDS, e)
            m = byid[e["id"]]
            for k in TREE_ENTRY_FIELDS:
                self.assertEqual(e[k], m[k], k)

        t = tree(srv, root["id"])
        self.assertEqual(set(t), {"mandate", "ancestors", "descendants"})
        self.assertEqual(t["mandate"], root["id"])
        self.assertEqual(t["ancestors"], [])
        order = [e["id"] for e in t["descendants"]]
        self.assertEqual(sorted(order), sorted(m["id"] for m in (c1, g1, gg, g2, c2, g3)))
        for e in t["descendants"]:
            entry_ok(e)
        pos = {x: i for i, x in enumerate(order)}
        for e in t["descendants"]:   # parents before children
            if e["parent"] != root["id"]:
                self.assertLess(pos[e["parent"]], pos[e["id"]])
        # depth first: each subtree is contiguous
        sub1 = {c1["id"], g1["id"], gg["id"], g2["id"]}
        idx = sorted(pos[x] for x in sub1)
        self.assertEqual(idx, list(range(idx[0], idx[0] + 4)))
        self.assertEqual(pos[gg["id"]], pos[g1["id"]] + 1)

        t = tree(srv, gg["id"])
        self.assertEqual([e["id"] for e in t["ancestors"]], [root["id"], c1["id"], g1["id"]])
        for e in t["ancestors"]:
            entry_ok(e)
        self.assertEqual(t["descendants"], [])
        t = tree(srv, c2["id"])
        self.assertEqual([e["id"] for e in t["ancestors"]], [root["id"]])
        self.assertEqual([e["id"] for e in t["descendants"]], [g3["id"]])
        self.assertEqual(byid[g2["id"]]["state"], "suspended")


# ---------------------------------------------------------------------------------------
class Audit(unittest.TestCase):
    def wait_checks(self, mid, decision_ids, timeout=3.0):
        got = mu.wait_until(lambda: (lambda recs: recs if decision_ids <= {
            r["decision_id"] for r in recs} else None)(mu.audit_all(srv, mid)), timeout)
        self.assertTrue(got, "audit of %s lacks decisions %r" % (mid, decision_ids))
        return got

    def test_audit_subtree_and_lineage(self):
        root = create_mandate(srv, actor="au0", max_depth=2)
        c1 = delegate(srv, root, actor="au1")
        g1 = delegate(srv, c1, actor="au2")
        c2 = delegate(srv, root, actor="au3")
        sid = srv.create_session(agent="au2", mandate=g1["id"])["id"]
        ok_action = {"tool": g1["scope"]["tools"][0], "lane": g1["scope"]["lanes"][0],
                     "resource": g1["scope"]["resources"][0], "class": g1["scope"]["classes"][0]}
        _, _, d_ok = decide(srv, g1["id"], action=ok_action, actor="au2", session=sid)
        self.assertEqual(d_ok["reason"], "ok")
        _, _, d_deny = decide(srv, g1["id"], action=dict(ok_action, tool="nope"))
        _, _, d_c2 = decide(srv, c2["id"])
        _, _, d_root = decide(srv, root["id"])
        recs = self.wait_checks(root["id"], {d_ok["decision_id"], d_deny["decision_id"],
                                             d_c2["decision_id"], d_root["decision_id"]})
        for rec in recs:
            if rec["kind"] == "check":
                self.assertEqual(set(rec), AUDIT_FIELDS, rec)
            else:   # a mandate change: the documented fields at least
                self.assertTrue(AUDIT_FIELDS <= set(rec), rec)
                self.assertIsNone(rec["decision_id"])
            self.assertRegex(rec["at"], TIME_RE)
        ids = [rec["id"] for rec in recs]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))
        by = {rec["decision_id"]: rec for rec in recs if rec["kind"] == "check"}
        r = by[d_ok["decision_id"]]
        self.assertEqual((r["mandate"], r["lineage"], r["actor"], r["session"], r["action"],
                          r["allow"], r["reason"], r["mandate_version"]),
                         (g1["id"], [root["id"], c1["id"], g1["id"]], "au2", sid, ok_action,
                          True, "ok", 1))
        r = by[d_deny["decision_id"]]
        self.assertEqual((r["allow"], r["reason"], r["session"]),
                         (False, "tool_out_of_scope", None))
        self.assertEqual(by[d_c2["decision_id"]]["lineage"], [root["id"], c2["id"]])
        self.assertEqual(by[d_root["decision_id"]]["lineage"], [root["id"]])
        # a subtree's audit holds only that subtree
        sub = mu.audit_all(srv, c1["id"])
        dids = {rec["decision_id"] for rec in sub}
        self.assertIn(d_ok["decision_id"], dids)
        self.assertNotIn(d_c2["decision_id"], dids)
        self.assertNotIn(d_root["decision_id"], dids)
        for rec in sub:
            self.assertIn(c1["id"], rec["lineage"], rec)
        # a mandate change is recorded in the same transaction: visible at once
        transition(srv, c2["id"], "revoke", {"reason": "done"})
        recs = mu.audit_all(srv, root["id"])
        kinds = [(rec["kind"], rec["mandate"]) for rec in recs]
        self.assertIn(("mandate.revoked", c2["id"]), kinds)
        rev = [rec for rec in recs if rec["kind"] == "mandate.revoked"][0]
        # a mandate change carries its stream event's fields too
        self.assertEqual((rev["state"], rev["reason"], rev["cause"], rev["lineage"]),
                         ("revoked", "done", c2["id"], [root["id"], c2["id"]]))
        # the unfiltered audit holds them too
        all_dids = {rec["decision_id"] for rec in mu.audit_all(srv)}
        self.assertTrue({d_ok["decision_id"], d_c2["decision_id"]} <= all_dids)

    def test_paging(self):
        root = create_mandate(srv, actor="pg0", max_depth=1)
        c = delegate(srv, root, actor="pg1")
        dids = set()
        with srv.client() as cl:
            for i in range(7):
                dids.add(decide(cl, c["id"] if i % 2 else root["id"])[2]["decision_id"])
        full = self.wait_checks(root["id"], dids)
        self.assertGreaterEqual(len(full), 7)
        pages, after, seen = 0, None, []
        while True:
            path = "/v1/audit?mandate=%s&limit=2" % root["id"]
            if after is not None:
                path += "&after=%d" % after
            r = srv.request("GET", path)
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual(set(r.json), {"records", "next_after"})
            self.assertLessEqual(len(r.json["records"]), 2)
            if after is not None:
                self.assertTrue(all(rec["id"] > after for rec in r.json["records"]))
            seen += r.json["records"]
            pages += 1
            self.assertLess(pages, 100)
            if r.json["next_after"] is None:
                break
            after = r.json["next_after"]
        self.assertEqual(seen, full)
        # after = the id of a record: exactly the ones after it
        mid = full[3]["id"]
        r = srv.request("GET", "/v1/audit?mandate=%s&after=%d&limit=1000" % (root["id"], mid))
        self.assertEqual(r.json["records"], full[4:])
        self.assertIsNone(r.json["next_after"])
        r = srv.request("GET", "/v1/audit?mandate=%s&limit=1" % root["id"])
        self.assertEqual(len(r.json["records"]), 1)
        self.assertIsNotNone(r.json["next_after"])

    def test_other_tenant_sees_nothing(self):
        root = create_mandate(srv)
        d = decide(srv, root["id"])[2]["decision_id"]
        self.wait_checks(root["id"], {d})
        r = srv.request("GET", "/v1/audit?mandate=%s" % root["id"], key=OTHER)
        if r.status == 200:
            self.assertEqual(r.json["records"], [])
        else:
            assert_err(r, 404, "not_found")
        theirs = mu.audit_all(srv, key=OTHER)
        self.assertNotIn(d, {rec["decision_id"] for rec in theirs})
        self.assertNotIn(root["id"], {rec["mandate"] for rec in theirs})


# ---------------------------------------------------------------------------------------
class Races(unittest.TestCase):
    """Delegations racing a narrowing or a revoke of the root: whatever the interleaving,
    no descendant ends up with more than the root allows, and no delegation sent after
    the change was answered succeeds."""

    def race(self, root, change, threads=6, lead=0.2, tail=0.25):
        import threading
        results = []
        lock = threading.Lock()
        stop = threading.Event()
        errors = []

        def worker(t):
            mine = []
            try:
                with srv.client() as c:
                    i = 0
                    while not stop.is_set():
                        body = mu.child_body(root, actor="race_%d_%d" % (t, i),
                                             scope={"tools": ["shell"], "lanes": ["repo"],
                                                    "resources": ["repo:web/*"],
                                                    "classes": ["read"]})
                        t0 = time.monotonic()
                        r = c.request("POST", "/v1/mandates/%s/delegate" % root["id"], body)
                        mine.append((t0, r))
                        i += 1
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            with lock:
                results.extend(mine)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        try:
            time.sleep(lead)
            r = change()
            t_done = time.monotonic()
            time.sleep(tail)
        finally:
            stop.set()
            for t in ts:
                t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(r.status, 200, r.raw)
        for _, resp in results:
            self.assertIn(resp.status, (201, 409, 422), resp.raw[:200])
        before = [resp for t0, resp in results if t0 < t_done]
        after = [resp for t0, resp in results if t0 > t_done]
        self.assertGreater(sum(1 for x in before if x.status == 201), 0)
        self.assertGreater(len(after), 5)
        return results, after

    def test_delegate_vs_narrow(self):
        root = create_mandate(srv, actor="nr", max_depth=1)
        results, after = self.race(root, lambda: srv.request(
            "PATCH", "/v1/mandates/" + root["id"], {"scope": {"tools": ["git", "make"]}}))
        for resp in after:
            assert_err(resp, 422, "not_subset", field="scope.tools")
        kids = [x.json["id"] for _, x in results if x.status == 201]
        t = tree(srv, root["id"])
        self.assertEqual(sorted(e["id"] for e in t["descendants"]), sorted(kids))
        with srv.client() as c:
            for k in kids:
                r = c.request("GET", "/v1/mandates/" + k)
                self.assertEqual(r.json["scope"]["tools"], [], "child %s kept shell" % k)
                self.assertEqual(decide(c, k, action={"tool": "shell", "lane": "repo",
                                                      "resource": "repo:web/a",
                                                      "class": "read"})[:2],
                                 (False, "tool_out_of_scope"))

    def test_delegate_vs_revoke(self):
        root = create_mandate(srv, actor="rr", max_depth=1)
        results, after = self.race(root, lambda: srv.request(
            "POST", "/v1/mandates/%s/revoke" % root["id"], {"reason": "race"}))
        for resp in after:
            assert_err(resp, 409, "mandate_inactive")
        kids = [x.json["id"] for _, x in results if x.status == 201]
        t = tree(srv, root["id"])
        self.assertEqual(sorted(e["id"] for e in t["descendants"]), sorted(kids))
        self.assertEqual({e["state"] for e in t["descendants"]}, {"revoked"})


class Restart(unittest.TestCase):
    def test_mandates_survive_restart_and_expire_while_down(self):
        s2 = harness.Server()
        try:
            root = create_mandate(s2, actor="r", max_depth=2, budget={"tokens": 100},
                                  conditions={"k": "v"}, evidence={"e": [1]})
            c = delegate(s2, root, actor="c", budget={"tokens": 50})
            c2 = delegate(s2, root, actor="c2", budget={"tokens": 50})
            transition(s2, c2["id"], "suspend", {"reason": "held"})
            p = create_mandate(s2, state="proposed", actor="p")
            n = create_mandate(s2, actor="n")
            assert_status(s2.request("PATCH", "/v1/mandates/" + n["id"],
                                     {"scope": {"tools": ["git"]}}), 200)
            sid = s2.create_session(mandate=c["id"])["id"]
            assert_status(s2.append(sid, {"kind": "m", "usage": {"tokens": 30}}), 201)
            e = create_mandate(s2, actor="e", expires_at=future(1.0))
            esid = s2.create_session(mandate=e["id"])["id"]
            assert_status(s2.append(esid, {"kind": "m"}), 201)
            d = decide(s2, c["id"])[2]["decision_id"]
            mu.wait_until(lambda: d in {x["decision_id"] for x in mu.audit_all(s2, root["id"])})
            ids = [root["id"], c["id"], c2["id"], p["id"], n["id"]]
            before = {i: get_mandate(s2, i) for i in ids}
            before_tree = tree(s2, root["id"])
            before_audit = mu.audit_all(s2, root["id"])
            self.assertEqual(before[root["id"]]["spent"]["tokens"], 30)
            self.assertEqual(s2.stop(), 0)
            time.sleep(max(0.0, parse_ts(e["expires_at"]) - time.time()) + 0.2)
            s2.start()
            # expired while the server was down: denied from the first check
            self.assertEqual(decide(s2, e["id"])[:2], (False, "mandate_expired"))
            self.assertEqual({i: get_mandate(s2, i) for i in ids}, before)
            self.assertEqual(tree(s2, root["id"]), before_tree)
            self.assertEqual(mu.audit_all(s2, root["id"])[:len(before_audit)], before_audit)
            self.assertEqual(decide(s2, c["id"])[:2], (True, "ok"))
            self.assertEqual(decide(s2, c2["id"])[:2], (False, "mandate_suspended"))
            self.assertEqual(decide(s2, p["id"])[:2], (False, "mandate_proposed"))
            ok = mu.wait_until(lambda: get_mandate(s2, e["id"])["state"] == "expired", 3)
            self.assertTrue(ok, get_mandate(s2, e["id"]))
            s = mu.wait_until(lambda: (lambda x: x if x["state"] == "inert" else None)(
                s2.get_session(esid)), 3)
            self.assertTrue(s, s2.get_session(esid))
            self.assertEqual(s2.all_events(esid)[-1]["content"],
                             {"from": "active", "to": "inert", "reason": "mandate_expired",
                              "mandate": e["id"]})
            # spending goes on from where it was
            assert_status(s2.append(sid, {"kind": "m", "usage": {"tokens": 20}}), 201)
            self.assertEqual(get_mandate(s2, root["id"])["spent"]["tokens"], 50)
            self.assertEqual(get_mandate(s2, c["id"])["spent"]["tokens"], 50)
            self.assertEqual(decide(s2, c["id"])[:2], (False, "budget_exceeded"))
            # ids keep increasing
            self.assertGreater(create_mandate(s2)["id"], e["id"])
        finally:
            s2.stop()


if __name__ == "__main__":
    harness.main()
