"""test_auth.py — API keys and tenants: every /v1 route refuses a missing, malformed or
unknown key with 401; /healthz and /metrics need none; keys made by `charter keys
create` on a running server work at once; another tenant's sessions are invisible
(404, never distinguished from an unknown id)."""

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import KEY_RE, assert_error, assert_status  # noqa: E402

srv = None
UNKNOWN_ID = "sess_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


def routes(sid):
    """Every /v1 route with a body that would be valid."""
    return [
        ("GET", "/v1/sessions", None),
        ("POST", "/v1/sessions", {"user": "u", "agent": "a"}),
        ("GET", "/v1/sessions/%s" % sid, None),
        ("POST", "/v1/sessions/%s/events" % sid, {"kind": "message", "content": "x"}),
        ("POST", "/v1/sessions/%s/events" % sid, {"events": [{"kind": "message"}]}),
        ("GET", "/v1/sessions/%s/events" % sid, None),
        ("GET", "/v1/sessions/%s/events?include=archived" % sid, None),
        ("GET", "/v1/sessions/%s/facts" % sid, None),
        ("PUT", "/v1/sessions/%s/facts/k" % sid, {"value": 2}),
        ("GET", "/v1/sessions/%s/facts/k" % sid, None),
        ("DELETE", "/v1/sessions/%s/facts/k" % sid, None),
        ("POST", "/v1/sessions/%s/compact" % sid, {"through_seq": 1, "summary": "s"}),
        ("GET", "/v1/sessions/%s/bundle" % sid, None),
        ("POST", "/v1/sessions/%s/pause" % sid, None),
        ("POST", "/v1/sessions/%s/resume" % sid, None),
        ("POST", "/v1/sessions/%s/close" % sid, {"reason": "r"}),
        ("POST", "/v1/sessions/%s/archive" % sid, None),
    ]


def bad_auth_headers(key):
    """(description, headers) pairs that must all be refused."""
    return [
        ("no header", {}),
        ("empty", {"Authorization": ""}),
        ("scheme only", {"Authorization": "Bearer"}),
        ("scheme and space", {"Authorization": "Bearer "}),
        ("basic", {"Authorization": "Basic dXNlcjpwYXNz"}),
        ("basic with key", {"Authorization": "Basic " + key}),
        ("garbage", {"Authorization": "Bearer not-a-key"}),
        ("unknown well-formed", {"Authorization": "Bearer chk_" + "A" * 43}),
        ("key + suffix", {"Authorization": "Bearer " + key + "x"}),
        ("truncated key", {"Authorization": "Bearer " + key[:-1]}),
        ("key without scheme", {"Authorization": key}),
        ("other scheme", {"Authorization": "Token " + key}),
        ("two keys", {"Authorization": "Bearer " + key + " " + key}),
        ("very long", {"Authorization": "Bearer chk_" + "A" * 4000}),
    ]


class Unauthorized(unittest.TestCase):
    def test_every_route_needs_a_key(self):
        sid = srv.create_session(user="authz")["id"]
        assert_status(srv.append(sid, {"kind": "message"}), 201)
        assert_status(srv.request("PUT", "/v1/sessions/%s/facts/k" % sid, {"value": 1}), 200)
        before = srv.snapshot(sid)
        n_before = len(srv.request("GET", "/v1/sessions?limit=1000").json["sessions"])
        for method, path, body in routes(sid) + routes(UNKNOWN_ID):
            for desc, hdrs in bad_auth_headers(srv.key):
                with self.subTest(method=method, path=path, auth=desc):
                    r = srv.request(method, path, body, key=None, headers=hdrs)
                    assert_error(r, 401, "unauthorized")
        self.assertEqual(srv.snapshot(sid), before)
        self.assertEqual(len(srv.request("GET", "/v1/sessions?limit=1000").json["sessions"]),
                         n_before)

    def test_auth_before_body_checks(self):
        r = srv.request("POST", "/v1/sessions", raw=b"{not json", key=None)
        assert_error(r, 401, "unauthorized")
        r = srv.request("POST", "/v1/sessions", raw=b"{not json", key="chk_" + "B" * 43)
        assert_error(r, 401, "unauthorized")

    def test_health_and_metrics_need_no_key(self):
        r = srv.request("GET", "/healthz", key=None)
        self.assertEqual((r.status, r.json), (200, {"status": "ok"}))
        r = srv.request("GET", "/metrics", key=None)
        self.assertEqual(r.status, 200)
        self.assertIn(b"charter_http_requests_total", r.raw)

    def test_valid_key_works(self):
        r = srv.request("GET", "/v1/sessions")
        self.assertEqual(r.status, 200, r.raw)
        # docs/operations.md: the scheme is matched case-insensitively
        for scheme in ("bearer", "BEARER", "BeArEr"):
            r = srv.request("GET", "/v1/sessions", key=None,
                            headers={"Authorization": "%s %s" % (scheme, srv.key)})
            self.assertEqual(r.status, 200, r.raw)

    def test_revoked_key_stops_working(self):
        """docs/operations.md: deleting a key's row revokes it; each HTTP thread may
        keep a verified key for up to 5 seconds."""
        k = srv.create_key("revoked")
        for _ in range(4):   # verified, and cached by the threads that served these
            self.assertEqual(srv.request("GET", "/v1/sessions", key=k).status, 200)
        db = sqlite3.connect(os.path.join(srv.dir, "charter.db"), timeout=10)
        try:
            with db:
                n = db.execute("DELETE FROM api_keys WHERE hash = ?",
                               (hashlib.sha256(k.encode()).digest(),)).rowcount
        finally:
            db.close()
        self.assertEqual(n, 1)
        t0 = time.monotonic()
        # until the caches expire it may still be accepted; never anything else
        while time.monotonic() - t0 < 5.5:
            r = srv.request("GET", "/v1/sessions", key=k)
            self.assertIn(r.status, (200, 401), r.raw)
            time.sleep(0.25)
        for _ in range(8):
            assert_error(srv.request("GET", "/v1/sessions", key=k), 401, "unauthorized")
        self.assertEqual(srv.request("GET", "/v1/sessions").status, 200)

    def test_bootstrap_key_file(self):
        path = os.path.join(srv.dir, "bootstrap.key")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        self.assertEqual(mode, 0o600, "bootstrap.key mode is %o" % mode)
        self.assertRegex(srv.key, "^" + KEY_RE.pattern + "$")


class Tenants(unittest.TestCase):
    def test_new_key_and_isolation(self):
        other = srv.create_key("other")
        self.assertRegex(other, "^" + KEY_RE.pattern + "$")
        self.assertNotEqual(other, srv.key)
        # works at once, no restart
        r = srv.request("POST", "/v1/sessions", {"user": "bob", "agent": "x"}, key=other)
        self.assertEqual(r.status, 201, r.raw)
        b_sid = r.json["id"]
        a_sid = srv.create_session(user="alice_t")["id"]
        assert_status(srv.append(a_sid, {"kind": "message", "content": "secret"}), 201)
        assert_status(srv.request("PUT", "/v1/sessions/%s/facts/k" % a_sid,
                                  {"value": "secret"}), 200)
        a_before = srv.snapshot(a_sid)
        b_before = srv.snapshot(b_sid, key=other)

        def refused(key, sid, method, path, body):
            r = srv.request(method, path, body, key=key)
            e = assert_error(r, 404, "not_found")
            # indistinguishable from an id that does not exist at all
            r2 = srv.request(method, path.replace(sid, UNKNOWN_ID), body, key=key)
            e2 = assert_error(r2, 404, "not_found")
            self.assertEqual(set(e), set(e2))
            self.assertEqual(e["message"].replace(sid, UNKNOWN_ID), e2["message"])

        for key, sid in ((other, a_sid), (srv.key, b_sid)):
            for method, path, body in routes(sid)[2:]:
                with self.subTest(method=method, path=path):
                    refused(key, sid, method, path, body)
        self.assertEqual(srv.snapshot(a_sid), a_before)
        self.assertEqual(srv.snapshot(b_sid, key=other), b_before)

        ids_default = [s["id"] for s in
                       srv.request("GET", "/v1/sessions?limit=1000").json["sessions"]]
        ids_other = [s["id"] for s in
                     srv.request("GET", "/v1/sessions?limit=1000", key=other).json["sessions"]]
        self.assertIn(a_sid, ids_default)
        self.assertNotIn(b_sid, ids_default)
        self.assertEqual(ids_other, [b_sid])
        r = srv.request("GET", "/v1/sessions?user=alice_t", key=other)
        self.assertEqual(r.json["sessions"], [])

        # a second key of the same tenant sees the same sessions
        other2 = srv.create_key("other")
        self.assertNotEqual(other2, other)
        self.assertEqual(srv.get_session(b_sid, key=other2), srv.get_session(b_sid, key=other))
        # and a key of a third tenant sees neither
        third = srv.create_key("third-tenant_1")
        self.assertEqual(srv.request("GET", "/v1/sessions", key=third).json,
                         {"sessions": [], "next_cursor": None})

    def test_cursor_does_not_cross_tenants(self):
        """A cursor handed out to one tenant shows another tenant nothing of the first."""
        k = srv.create_key("cursor-b")
        a_ids = [srv.create_session(user="cur")["id"] for _ in range(3)]
        b_ids = [srv.create_session(user="cur", key=k)["id"] for _ in range(3)]
        cur = srv.request("GET", "/v1/sessions?user=cur&limit=1").json["next_cursor"]
        self.assertIsNotNone(cur)
        r = srv.request("GET", "/v1/sessions?user=cur&limit=1000&cursor=%s" % harness.q(cur),
                        key=k)
        self.assertIn(r.status, (200, 400), r.raw)
        if r.status == 200:
            got = [s["id"] for s in r.json["sessions"]]
            self.assertFalse(set(got) & set(a_ids), got)
            self.assertLessEqual(set(got), set(b_ids))
        else:
            assert_error(r, 400, "bad_request")

    def test_keys_survive_restart(self):
        k = srv.create_key("durable")
        sid = srv.create_session(user="d", key=k)["id"]
        boot = srv.key
        srv.restart()
        self.assertEqual(srv.key, boot, "bootstrap.key changed on restart")
        self.assertEqual(srv.get_session(sid, key=k)["id"], sid)
        assert_error(srv.request("GET", "/v1/sessions/" + sid), 404, "not_found")

    def test_invalid_tenant_name(self):
        for bad in ("Bad Tenant", "UPPER", "", "x" * 65, "a/b"):
            p = subprocess.run([harness.charter_bin(), "keys", "create", "--tenant", bad,
                                "--data-dir", srv.dir], capture_output=True, text=True,
                               timeout=30)
            self.assertNotEqual(p.returncode, 0, "tenant %r accepted: %s" % (bad, p.stdout))
            self.assertIsNone(KEY_RE.search(p.stdout))


if __name__ == "__main__":
    harness.main()
