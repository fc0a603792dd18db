"""test_check.py — `POST /v1/check` (docs/api.md "Mandates"): every reason, the order
in which rules are applied, the response fields, resource prefix patterns, malformed
bodies, the exactness of expiry (against the deadline on the same machine's clock),
artifacts (issue, verify the Ed25519 signature against `GET /v1/keys/signing`, check
with one, stale after an amendment, invalid when tampered with or expired), the
signing key, and races between checks and revoke / suspend / narrow: no check sent
after the change was answered may allow."""

import json
import os
import re
import stat
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import TIME_RE, assert_status  # noqa: E402
import mandate_util as mu  # noqa: E402
from mandate_util import (CHECK_FIELDS, OK_ACTION, UNKNOWN_MDT, assert_err,  # noqa: E402
                          create_mandate, decide, delegate, future, get_mandate,
                          parse_ts, transition)

srv = None
OTHER = None
DEC_RE = re.compile(r"^dec_[A-Za-z0-9_-]+$")


def setUpModule():
    global srv, OTHER
    srv = harness.Server(threads=4)
    OTHER = srv.create_key("other")


def tearDownModule():
    srv.stop()


def reason_of(mid, **kw):
    return decide(srv, mid, **kw)[:2]


class Reasons(unittest.TestCase):
    def test_ok_and_fields(self):
        m = create_mandate(srv, actor="coder")
        t0 = time.time()
        r = mu.check(srv, m["id"], actor="coder")
        t1 = time.time()
        self.assertEqual(r.status, 200, r.raw)
        d = r.json
        self.assertEqual(set(d), CHECK_FIELDS, d)
        self.assertEqual((d["allow"], d["reason"], d["mandate"], d["mandate_version"]),
                         (True, "ok", m["id"], 1))
        self.assertRegex(d["decision_id"], DEC_RE)
        self.assertRegex(d["checked_at"], TIME_RE)
        self.assertGreaterEqual(parse_ts(d["checked_at"]), int(t0 * 1000) / 1000.0 - 0.002)
        self.assertLessEqual(parse_ts(d["checked_at"]), t1 + 0.002)
        # decision ids are unique
        with srv.client() as c:
            ids = [decide(c, m["id"])[2]["decision_id"] for _ in range(50)]
        self.assertEqual(len(set(ids + [d["decision_id"]])), 51)
        # mandate_version follows amendments
        assert_status(srv.request("PATCH", "/v1/mandates/" + m["id"],
                                  {"conditions": {"x": 1}}), 200)
        self.assertEqual(decide(srv, m["id"])[2]["mandate_version"], 2)

    def test_without_actor_and_with_session(self):
        m = create_mandate(srv, actor="coder")
        self.assertEqual(reason_of(m["id"]), (True, "ok"))
        sid = srv.create_session(agent="coder", mandate=m["id"])["id"]
        self.assertEqual(reason_of(m["id"], session=sid, actor="coder"), (True, "ok"))

    def test_mandate_unknown(self):
        theirs = create_mandate(srv, key=OTHER)
        self.assertEqual(decide(srv, theirs["id"], key=OTHER)[:2], (True, "ok"))
        for mid in (UNKNOWN_MDT, theirs["id"]):
            with self.subTest(mid=mid):
                allow, reason, d = decide(srv, mid)
                self.assertEqual((allow, reason, d["mandate"], d["mandate_version"]),
                                 (False, "mandate_unknown", mid, None))
                self.assertEqual(set(d), CHECK_FIELDS)
        # and the other way round
        mine = create_mandate(srv)
        self.assertEqual(decide(srv, mine["id"], key=OTHER)[:2], (False, "mandate_unknown"))

    def test_own_states(self):
        p = create_mandate(srv, state="proposed")
        self.assertEqual(reason_of(p["id"]), (False, "mandate_proposed"))
        for call, want in (("suspend", "mandate_suspended"), ("revoke", "mandate_revoked"),
                           ("complete", "mandate_completed")):
            with self.subTest(call=call):
                m = create_mandate(srv)
                self.assertEqual(reason_of(m["id"]), (True, "ok"))
                transition(srv, m["id"], call)
                self.assertEqual(reason_of(m["id"]), (False, want))
        m = create_mandate(srv)
        transition(srv, m["id"], "suspend")
        transition(srv, m["id"], "revoke")
        self.assertEqual(reason_of(m["id"]), (False, "mandate_revoked"))

    def test_expired(self):
        m = create_mandate(srv, expires_at=future(0.3))
        self.assertEqual(reason_of(m["id"]), (True, "ok"))
        time.sleep(max(0.0, parse_ts(m["expires_at"]) - time.time()) + 0.02)
        self.assertEqual(reason_of(m["id"]), (False, "mandate_expired"))

    def test_ancestor_inactive(self):
        root = create_mandate(srv, actor="r")
        c = delegate(srv, root, actor="c")
        g = delegate(srv, c, actor="g")
        transition(srv, root["id"], "suspend")
        self.assertEqual(reason_of(c["id"]), (False, "ancestor_inactive"))
        self.assertEqual(reason_of(g["id"]), (False, "ancestor_inactive"))
        transition(srv, root["id"], "reinstate")
        self.assertEqual(reason_of(g["id"]), (True, "ok"))
        transition(srv, root["id"], "complete")
        self.assertEqual(reason_of(g["id"]), (False, "ancestor_inactive"))

    def test_actor_mismatch(self):
        m = create_mandate(srv, actor="coder")
        self.assertEqual(reason_of(m["id"], actor="coder"), (True, "ok"))
        self.assertEqual(reason_of(m["id"], actor="Coder"), (False, "actor_mismatch"))
        self.assertEqual(reason_of(m["id"], actor="reviewer"), (False, "actor_mismatch"))

    def test_out_of_scope(self):
        m = create_mandate(srv, scope={"tools": ["git"], "lanes": ["repo"],
                                       "resources": ["repo:web/*"], "classes": ["read"]})
        self.assertEqual(reason_of(m["id"], action={"tool": "git", "lane": "repo",
                                                    "resource": "repo:web/a", "class": "read"}),
                         (True, "ok"))
        for kw, want in (({"tool": "shell"}, "tool_out_of_scope"),
                         ({"lane": "docs"}, "lane_out_of_scope"),
                         ({"resource": "repo:api/a"}, "resource_out_of_scope"),
                         ({"cls": "write"}, "class_out_of_scope"),
                         ({"cls": "external"}, "class_out_of_scope"),
                         ({"cls": "irreversible"}, "class_out_of_scope")):
            with self.subTest(kw=kw):
                a = {"tool": "git", "lane": "repo", "resource": "repo:web/a", "class": "read"}
                if "cls" in kw:
                    a["class"] = kw["cls"]
                else:
                    a.update(kw)
                self.assertEqual(reason_of(m["id"], action=a), (False, want))

    def test_resource_patterns(self):
        m = create_mandate(srv, scope={"tools": ["git"], "lanes": ["repo"],
                                       "resources": ["doc:readme", "repo:web/*", "é:*"],
                                       "classes": ["read"]})
        for res, ok in (("repo:web/src/a.ts", True), ("repo:web/a", True),
                        ("repo:web/deep/er/x", True), ("repo:web/*", True),
                        ("doc:readme", True), ("é:ü", True),
                        ("repo:web", False), ("repo:webx/a", False), ("repo:we", False),
                        ("REPO:web/a", False), ("xrepo:web/a", False), ("doc:readme2", False),
                        ("doc:readm", False), ("doc:readme/x", False), ("doc:*", False),
                        ("e:x", False)):
            with self.subTest(res=res):
                self.assertEqual(reason_of(m["id"], resource=res, tool="git", lane="repo",
                                           cls="read"),
                                 (True, "ok") if ok else (False, "resource_out_of_scope"))

    def test_budget_exceeded_counts_against_root(self):
        root = create_mandate(srv, actor="br", budget={"tokens": 100})
        c1 = delegate(srv, root, actor="b1", budget={"tokens": 60})
        c2 = delegate(srv, root, actor="b2", budget={"tokens": 60})
        s1 = srv.create_session(mandate=c1["id"])["id"]
        s2 = srv.create_session(mandate=c2["id"])["id"]
        assert_status(srv.append(s1, {"kind": "m", "usage": {"tokens": 50}}), 201)
        for m in (root, c1, c2):
            self.assertEqual(reason_of(m["id"], action=self.act(m)), (True, "ok"))
        assert_status(srv.append(s2, {"kind": "m", "usage": {"tokens": 50}}), 201)
        self.assertEqual(get_mandate(srv, root["id"])["spent"]["tokens"], 100)
        self.assertEqual(get_mandate(srv, c1["id"])["spent"]["tokens"], 50)
        self.assertEqual(get_mandate(srv, c2["id"])["spent"]["tokens"], 50)
        # neither child has reached its own budget: the root's counts for them
        for m in (root, c1, c2):
            self.assertEqual(reason_of(m["id"], action=self.act(m)), (False, "budget_exceeded"),
                             m["actor"])

    @staticmethod
    def act(m):
        res = m["scope"]["resources"][0]
        if res.endswith("*"):
            res = res[:-1] + "x"
        return {"tool": m["scope"]["tools"][0], "lane": m["scope"]["lanes"][0],
                "resource": res, "class": m["scope"]["classes"][0]}

    def test_budget_each_dimension(self):
        for dim, limit, step in (("tokens", 10, 5), ("cost_usd", 1.0, 0.5),
                                 ("tool_calls", 2, 1)):
            with self.subTest(dim=dim):
                m = create_mandate(srv, budget={dim: limit})
                sid = srv.create_session(mandate=m["id"])["id"]
                assert_status(srv.append(sid, {"kind": "m", "usage": {dim: step}}), 201)
                self.assertEqual(reason_of(m["id"]), (True, "ok"))
                assert_status(srv.append(sid, {"kind": "m", "usage": {dim: step}}), 201)
                self.assertEqual(get_mandate(srv, m["id"])["spent"][dim], limit)
                self.assertEqual(reason_of(m["id"]), (False, "budget_exceeded"))

    def test_zero_budget(self):
        """spent (0) ≥ budget (0) from the start."""
        m = create_mandate(srv, budget={"tool_calls": 0})
        self.assertEqual(reason_of(m["id"]), (False, "budget_exceeded"))


class Precedence(unittest.TestCase):
    """The first failing rule, in the order of the table in docs/api.md."""

    def test_order(self):
        narrow = {"tools": ["git"], "lanes": ["repo"], "resources": ["repo:web/*"],
                  "classes": ["read"]}
        good = {"tool": "git", "lane": "repo", "resource": "repo:web/a", "class": "read"}
        bad_all = {"tool": "x", "lane": "x", "resource": "x", "class": "write"}
        p = create_mandate(srv, state="proposed", actor="a", scope=narrow)
        self.assertEqual(reason_of(p["id"], action=bad_all, actor="b"),
                         (False, "mandate_proposed"))
        root = create_mandate(srv, actor="a", scope=narrow, budget={"tokens": 1})
        c = delegate(srv, root, actor="c", scope=narrow, budget={"tokens": 1})
        transition(srv, root["id"], "suspend")
        self.assertEqual(reason_of(c["id"], action=bad_all, actor="zz"),
                         (False, "ancestor_inactive"))
        transition(srv, c["id"], "suspend")
        self.assertEqual(reason_of(c["id"], action=bad_all, actor="zz"),
                         (False, "mandate_suspended"))
        transition(srv, c["id"], "reinstate")
        transition(srv, root["id"], "reinstate")
        sid = srv.create_session(mandate=c["id"])["id"]
        assert_status(srv.append(sid, {"kind": "m", "usage": {"tokens": 1}}), 201)
        steps = [
            (dict(bad_all), "zz", "actor_mismatch"),
            (dict(bad_all), None, "tool_out_of_scope"),
            (dict(bad_all, tool="git"), None, "lane_out_of_scope"),
            (dict(bad_all, tool="git", lane="repo"), None, "resource_out_of_scope"),
            (dict(good, **{"class": "write"}), None, "class_out_of_scope"),
            (dict(good), None, "budget_exceeded"),
        ]
        for action, actor, want in steps:
            with self.subTest(want=want):
                self.assertEqual(reason_of(c["id"], action=action, actor=actor), (False, want))


class Malformed(unittest.TestCase):
    def test_bad_bodies_never_5xx(self):
        m = create_mandate(srv)
        mid = m["id"]
        A = dict(OK_ACTION)

        def without(k):
            a = dict(A)
            a.pop(k)
            return a
        cases = [
            ({}, 400, "missing_field", ("mandate", "action", "artifact")),
            ({"mandate": mid}, 400, "missing_field", "action"),
            ({"action": A}, 400, "missing_field", ("mandate", "artifact")),
            ({"mandate": mid, "action": without("tool")}, 400, "missing_field", "action.tool"),
            ({"mandate": mid, "action": without("lane")}, 400, "missing_field", "action.lane"),
            ({"mandate": mid, "action": without("resource")}, 400, "missing_field",
             "action.resource"),
            ({"mandate": mid, "action": without("class")}, 400, "missing_field", "action.class"),
            ({"mandate": mid, "action": {}}, 400, "missing_field",
             ("action.tool", "action.lane", "action.resource", "action.class")),
            ({"mandate": mid, "action": dict(A, **{"class": "delete"})}, 422, "invalid_value",
             "action.class"),
            ({"mandate": mid, "action": dict(A, **{"class": "READ"})}, 422, "invalid_value",
             "action.class"),
            ({"mandate": mid, "action": dict(A, **{"class": 1})}, 400, "invalid_type",
             "action.class"),
            ({"mandate": mid, "action": dict(A, tool=5)}, 400, "invalid_type", "action.tool"),
            ({"mandate": mid, "action": dict(A, lane=None)}, 400,
             ("invalid_type", "missing_field"), "action.lane"),
            ({"mandate": mid, "action": dict(A, resource=["r"])}, 400, "invalid_type",
             "action.resource"),
            ({"mandate": mid, "action": "git"}, 400, "invalid_type", "action"),
            ({"mandate": mid, "action": [A]}, 400, "invalid_type", "action"),
            ({"mandate": mid, "action": dict(A, verb="x")}, 400, "unknown_field", "action.verb"),
            ({"mandate": mid, "action": A, "bogus": 1}, 400, "unknown_field", "bogus"),
            ({"mandate": mid, "action": A, "allow": True}, 400, "unknown_field", "allow"),
            ({"mandate": 5, "action": A}, 400, "invalid_type", "mandate"),
            ({"mandate": [mid], "action": A}, 400, "invalid_type", "mandate"),
            ({"mandate": mid, "action": A, "actor": 5}, 400, "invalid_type", "actor"),
            ({"mandate": mid, "action": A, "session": {}}, 400, "invalid_type", "session"),
            ({"artifact": 5, "action": A}, 400, "invalid_type", "artifact"),
        ]
        time.sleep(0.1)   # let earlier decisions reach the audit log
        before = mu.audit_all(srv)
        for body, status, code, field in cases:
            with self.subTest(body=json.dumps(body)[:100]):
                r = srv.request("POST", "/v1/check", body)
                assert_err(r, status, code, field=field)
        # both a mandate and an artifact: a client mistake, never a 5xx or a decision
        r = srv.request("POST", "/v1/check", {"mandate": mid, "artifact": "a.b.c", "action": A})
        self.assertTrue(400 <= r.status < 500, r.raw)
        harness.assert_error_shape(r)
        for raw in (b"{", b"[]", b"null", b'"x"', b""):
            r = srv.request("POST", "/v1/check", raw=raw)
            self.assertEqual(r.status, 400, r.raw)
            self.assertIn(r.json["error"]["code"], ("bad_json", "bad_request"))
        time.sleep(0.1)   # decisions are audited within a few ms; a refusal is none
        self.assertEqual(mu.audit_all(srv), before, "a refused check was audited")
        self.assertEqual(get_mandate(srv, mid), m)


# ---------------------------------------------------------------------------------------
class ExpiryPrecision(unittest.TestCase):
    def test_exact_deadline(self):
        """No check sent after the deadline + 10 ms allows; every check answered before
        the deadline − 10 ms allows (the server runs on this machine's clock)."""
        m = create_mandate(srv, expires_at=future(0.25))
        deadline = parse_ts(m["expires_at"])
        samples = []
        with srv.client() as c:
            while time.time() < deadline + 0.06:
                t0 = time.time()
                r = mu.check(c, m["id"])
                t1 = time.time()
                self.assertEqual(r.status, 200, r.raw)
                samples.append((t0, t1, r.json["allow"], r.json["reason"]))
        before = [s for s in samples if s[1] < deadline - 0.010]
        after = [s for s in samples if s[0] > deadline + 0.010]
        self.assertGreater(len(before), 0, "no sample before the deadline")
        self.assertGreater(len(after), 0, "no sample after the deadline")
        bad_after = [(round(s[0] - deadline, 4), s[3]) for s in after if s[2]]
        self.assertEqual(bad_after, [], "allowed after expires_at (seconds past, reason)")
        self.assertEqual({s[3] for s in after}, {"mandate_expired"})
        bad_before = [(round(s[1] - deadline, 4), s[3]) for s in before if not s[2]]
        self.assertEqual(bad_before, [], "denied before expires_at")
        # the state catches up
        got = mu.wait_until(lambda: get_mandate(srv, m["id"])["state"] == "expired", 5)
        self.assertTrue(got, get_mandate(srv, m["id"]))


# ---------------------------------------------------------------------------------------
def split(token):
    h, p, s = token.split(".")
    return (json.loads(mu.b64u_decode(h)), json.loads(mu.b64u_decode(p)),
            mu.b64u_decode(s), (h + "." + p).encode("ascii"))


def artifact(mid, ttl="30s", key=harness.DEFAULT):
    r = srv.request("POST", "/v1/mandates/%s/artifact" % mid, {"ttl": ttl}, key=key)
    if r.status != 200:
        raise AssertionError("artifact %s: %d %r" % (mid, r.status, r.raw[:300]))
    return r.json


def flip(token, part, byte_index=5):
    parts = token.split(".")
    raw = bytearray(mu.b64u_decode(parts[part]))
    raw[byte_index % len(raw)] ^= 0x01
    parts[part] = mu.b64u(bytes(raw))
    return ".".join(parts)


class Artifacts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        r = srv.request("GET", "/v1/keys/signing")
        assert r.status == 200, r.raw
        cls.jwk = r.json

    def test_signing_key(self):
        jwk = self.jwk
        self.assertEqual(set(jwk), {"kty", "crv", "alg", "use", "kid", "x"})
        self.assertEqual((jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]),
                         ("OKP", "Ed25519", "EdDSA", "sig"))
        self.assertIsInstance(jwk["kid"], str)
        self.assertTrue(jwk["kid"])
        self.assertNotIn("=", jwk["x"])
        self.assertEqual(len(mu.b64u_decode(jwk["x"])), 32)
        self.assertNotIn("d", jwk)   # never the private part
        self.assertEqual(srv.request("GET", "/v1/keys/signing").json, jwk)
        self.assertEqual(srv.request("GET", "/v1/keys/signing", key=OTHER).json, jwk)
        harness.assert_error(srv.request("GET", "/v1/keys/signing", key=None), 401,
                             "unauthorized")
        path = os.path.join(srv.dir, "signing.key")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_signing_key_survives_restart(self):
        s2 = harness.Server()
        try:
            k1 = s2.request("GET", "/v1/keys/signing").json
            m = create_mandate(s2)
            tok = s2.request("POST", "/v1/mandates/%s/artifact" % m["id"],
                             {"ttl": "30s"}).json["artifact"]
            s2.restart()
            self.assertEqual(s2.request("GET", "/v1/keys/signing").json, k1)
            r = mu.check(s2, None, artifact=tok)
            self.assertEqual((r.status, r.json["allow"], r.json["reason"]), (200, True, "ok"))
        finally:
            s2.stop()

    def test_issue_verify_and_check(self):
        m = create_mandate(srv, actor="coder", conditions={"env": "prod"})
        t0 = time.time()
        a = artifact(m["id"], "30s")
        self.assertEqual(set(a), {"artifact", "expires_at", "version"})
        self.assertEqual(a["version"], 1)
        self.assertRegex(a["expires_at"], TIME_RE)
        header, payload, sig, signed = split(a["artifact"])
        self.assertEqual(header.get("alg"), "EdDSA")
        if "kid" in header:
            self.assertEqual(header["kid"], self.jwk["kid"])
        self.assertTrue(mu.ed25519_verify(mu.b64u_decode(self.jwk["x"]), signed, sig),
                        "artifact signature does not verify against /v1/keys/signing")
        for k in ("iss", "tenant", "mdt", "ver", "actor", "scope", "mission", "iat", "exp"):
            self.assertIn(k, payload)
        self.assertEqual((payload["iss"], payload["mdt"], payload["ver"], payload["actor"],
                          payload["scope"], payload["mission"]),
                         ("charter", m["id"], 1, "coder", m["scope"], m["mission_hash"]))
        self.assertIsInstance(payload["iat"], int)
        self.assertIsInstance(payload["exp"], int)
        self.assertLessEqual(abs(payload["iat"] - t0), 2)
        self.assertLessEqual(payload["exp"] - payload["iat"], 30)
        self.assertGreaterEqual(payload["exp"] - payload["iat"], 29)
        self.assertLessEqual(abs(parse_ts(a["expires_at"]) - payload["exp"]), 1)
        r = mu.check(srv, None, artifact=a["artifact"])
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(set(r.json), CHECK_FIELDS)
        self.assertEqual((r.json["allow"], r.json["reason"], r.json["mandate"],
                          r.json["mandate_version"]), (True, "ok", m["id"], 1))
        # the artifact's mandate still gets the scope and actor checks
        self.assertEqual(decide(srv, None, artifact=a["artifact"], tool="nope")[:2],
                         (False, "tool_out_of_scope"))
        self.assertEqual(decide(srv, None, artifact=a["artifact"], actor="other")[:2],
                         (False, "actor_mismatch"))

    def test_ttl_capped(self):
        m = create_mandate(srv)
        for ttl in ("1h", 3600):
            _, p, _, _ = split(artifact(m["id"], ttl)["artifact"])
            self.assertLessEqual(p["exp"] - p["iat"], 30, "max_staleness is 30 s by default")
        m = create_mandate(srv, expires_at=future(5))
        _, p, _, _ = split(artifact(m["id"], "30s")["artifact"])
        self.assertLessEqual(p["exp"], parse_ts(m["expires_at"]) + 0.001)
        for ttl in ("1s", 1, 30, "10s"):
            a = artifact(create_mandate(srv)["id"], ttl)
            _, p, _, _ = split(a["artifact"])
            want = ttl if isinstance(ttl, int) else int(ttl[:-1])
            self.assertLessEqual(p["exp"] - p["iat"], want)
            self.assertGreaterEqual(p["exp"] - p["iat"], want - 1)

    def test_ttl_invalid(self):
        m = create_mandate(srv)
        P = "/v1/mandates/%s/artifact" % m["id"]
        for body, status, code, field in (
                ({}, 400, "missing_field", "ttl"),
                ({"ttl": True}, 400, "invalid_type", "ttl"),
                ({"ttl": ["30s"]}, 400, "invalid_type", "ttl"),
                ({"ttl": 0}, 422, "invalid_value", "ttl"),
                ({"ttl": -5}, 422, "invalid_value", "ttl"),
                ({"ttl": 3601}, 422, "invalid_value", "ttl"),
                ({"ttl": "0s"}, 422, "invalid_value", "ttl"),
                ({"ttl": "2h"}, 422, "invalid_value", "ttl"),
                ({"ttl": "3601s"}, 422, "invalid_value", "ttl"),
                ({"ttl": "abc"}, 422, "invalid_value", "ttl"),
                ({"ttl": "-5s"}, 422, "invalid_value", "ttl"),
                ({"ttl": ""}, 422, "invalid_value", "ttl"),
                ({"ttl": "30s", "x": 1}, 400, "unknown_field", "x")):
            with self.subTest(body=body):
                assert_err(srv.request("POST", P, body), status, code, field=field)
        self.assertEqual(get_mandate(srv, m["id"]), m)

    def test_not_active(self):
        for state_call in ("proposed", "suspend", "revoke", "complete"):
            with self.subTest(state=state_call):
                if state_call == "proposed":
                    m = create_mandate(srv, state="proposed")
                else:
                    m = create_mandate(srv)
                    transition(srv, m["id"], state_call)
                r = srv.request("POST", "/v1/mandates/%s/artifact" % m["id"], {"ttl": "30s"})
                assert_err(r, 409, "mandate_inactive")

    def test_stale_after_patch(self):
        m = create_mandate(srv)
        tok = artifact(m["id"])["artifact"]
        self.assertEqual(decide(srv, None, artifact=tok)[:2], (True, "ok"))
        assert_status(srv.request("PATCH", "/v1/mandates/" + m["id"],
                                  {"scope": {"tools": ["git", "shell"]}}), 200)
        allow, reason, d = decide(srv, None, artifact=tok)
        self.assertEqual((allow, reason, d["mandate"]), (False, "artifact_stale", m["id"]))
        a2 = artifact(m["id"])
        self.assertEqual(a2["version"], 2)
        self.assertEqual(decide(srv, None, artifact=a2["artifact"])[:2], (True, "ok"))

    def test_revoked_after_issue(self):
        root = create_mandate(srv, actor="r")
        c = delegate(srv, root, actor="c", scope=dict(mu.WIDE_SCOPE))
        tok = artifact(c["id"])["artifact"]
        self.assertEqual(decide(srv, None, artifact=tok)[:2], (True, "ok"))
        transition(srv, root["id"], "suspend")
        allow, reason, _ = decide(srv, None, artifact=tok)
        self.assertFalse(allow)
        self.assertIn(reason, ("ancestor_inactive", "artifact_stale"))
        transition(srv, root["id"], "revoke")
        allow, reason, _ = decide(srv, None, artifact=tok)
        self.assertFalse(allow)
        self.assertIn(reason, ("mandate_revoked", "artifact_stale"))

    def test_tampered(self):
        m = create_mandate(srv)
        tok = artifact(m["id"])["artifact"]
        h, p, s = tok.split(".")
        bad = [flip(tok, 2, 0), flip(tok, 2, 63), flip(tok, 1, 3), flip(tok, 0, 2),
               h + "." + p + ".", h + "." + p, "." + p + "." + s, tok + "x", tok[:-2],
               "a.b.c", "not a token", h + "." + mu.b64u(json.dumps(dict(
                   split(tok)[1], ver=99)).encode()) + "." + s,
               mu.b64u(json.dumps({"alg": "none"}).encode()) + "." + p + ".",
               tok.replace(".", "..", 1)]
        for t in bad:
            with self.subTest(token=t[:40] + "…" + t[-20:]):
                allow, reason, d = decide(srv, None, artifact=t)
                self.assertEqual((allow, reason, d["mandate"], d["mandate_version"]),
                                 (False, "artifact_invalid", None, None))
        self.assertEqual(decide(srv, None, artifact=tok)[:2], (True, "ok"))

    def test_other_tenants_artifact(self):
        theirs = create_mandate(srv, key=OTHER)
        tok = artifact(theirs["id"], key=OTHER)["artifact"]
        self.assertEqual(decide(srv, None, artifact=tok, key=OTHER)[:2], (True, "ok"))
        allow, reason, _ = decide(srv, None, artifact=tok)
        self.assertFalse(allow)
        self.assertIn(reason, ("artifact_invalid", "mandate_unknown"))

    def test_expired_artifact(self):
        m = create_mandate(srv)
        tok = artifact(m["id"], "1s")["artifact"]
        _, p, _, _ = split(tok)
        self.assertEqual(decide(srv, None, artifact=tok)[:2], (True, "ok"))
        time.sleep(max(0.0, p["exp"] - time.time()) + 0.05)
        self.assertEqual(decide(srv, None, artifact=tok)[:2], (False, "artifact_invalid"))
        # the mandate itself is fine
        self.assertEqual(decide(srv, m["id"])[:2], (True, "ok"))


# ---------------------------------------------------------------------------------------
class Races(unittest.TestCase):
    THREADS = 8

    def race(self, target, change, action=None, tail=0.3, lead=0.3):
        """THREADS threads check `target` in a loop; after `lead` seconds the main thread
        runs change() (which must answer 200). Returns (samples, t_done) where samples
        are (send_time, allow, reason) in monotonic time and t_done is when the change's
        answer had been received."""
        samples = []
        lock = threading.Lock()
        stop = threading.Event()
        errors = []

        def worker():
            mine = []
            try:
                with srv.client() as c:
                    while not stop.is_set():
                        t0 = time.monotonic()
                        r = mu.check(c, target, action=action)
                        if r.status != 200:
                            errors.append(r.raw[:200])
                            return
                        mine.append((t0, r.json["allow"], r.json["reason"]))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            with lock:
                samples.extend(mine)

        ts = [threading.Thread(target=worker) for _ in range(self.THREADS)]
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
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(errors, [])
        return samples, t_done

    def judge(self, samples, t_done, want_reasons):
        before = [s for s in samples if s[0] < t_done]
        after = [s for s in samples if s[0] > t_done]
        self.assertGreater(sum(1 for s in before if s[1]), 0, "no allow before the change")
        self.assertGreater(len(after), 20, "too few checks after the change")
        late = [(round(s[0] - t_done, 4), s[2]) for s in after if s[1]]
        self.assertEqual(late, [], "allowed after the change had been answered")
        self.assertTrue({s[2] for s in after} <= set(want_reasons), {s[2] for s in after})

    def test_revoke_root_while_checking_child(self):
        root = create_mandate(srv, actor="rr")
        c = delegate(srv, root, actor="rc", scope=dict(mu.WIDE_SCOPE))
        g = delegate(srv, c, actor="rg", scope=dict(mu.WIDE_SCOPE))
        samples, t_done = self.race(g["id"], lambda: srv.request(
            "POST", "/v1/mandates/%s/revoke" % root["id"], {"reason": "race"}))
        self.judge(samples, t_done, ("mandate_revoked", "ancestor_inactive"))

    def test_suspend_root_while_checking_child(self):
        root = create_mandate(srv, actor="sr")
        c = delegate(srv, root, actor="sc", scope=dict(mu.WIDE_SCOPE))
        samples, t_done = self.race(c["id"], lambda: srv.request(
            "POST", "/v1/mandates/%s/suspend" % root["id"], {"reason": "race"}))
        self.judge(samples, t_done, ("ancestor_inactive",))

    def test_narrow_root_while_checking_child(self):
        root = create_mandate(srv, actor="nr")
        c = delegate(srv, root, actor="nc", scope=dict(mu.WIDE_SCOPE))
        act = dict(OK_ACTION, tool="shell")
        samples, t_done = self.race(c["id"], lambda: srv.request(
            "PATCH", "/v1/mandates/" + root["id"], {"scope": {"tools": ["git"]}}), action=act)
        self.judge(samples, t_done, ("tool_out_of_scope",))


if __name__ == "__main__":
    harness.main()
