"""test_ephemeral.py — ephemeral scopes (docs/api.md "Ephemeral scopes" and the
ephemeral rows of "Event stream") against the default `memory` engine: creating
(every field, the defaults taken from the configuration, the id format, the field
set), reading, merge PATCH, context keys (odd and unicode names), deleting, tenant
isolation on every route; the clock (ttl edges, duration strings, idle eviction,
auto_extend within max_ttl, extend, per-scope timers under load, the GC sweep alone
with exact_expiry off); the lock (every mutation refused, reads allowed, lock grace
with its `ephemeral.expiring` event); eviction events and /metrics; agent exit;
complete (transfer into a session's facts, every refusal leaving the scope
untouched); flows (command, upgrade, secure complete); and a restart, after which no
scope exists."""

import http.client
import json
import os
import re
import select
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import DEFAULT, TIME_RE, assert_error, assert_status, q  # noqa: E402
from mandate_util import SSE, parse_ts  # noqa: E402

EPH_RE = re.compile(r"^eph_[0-9A-HJKMNP-TV-Z]{26}$")
SCOPE_FIELDS = {"id", "agent_id", "flow", "created_at", "expires_at", "last_used_at", "ttl",
                "idle_ttl", "auto_extend", "locked", "context"}
EVICTED_FIELDS = {"id", "type", "at", "scope", "agent", "reason", "flow"}
EXPIRING_FIELDS = {"id", "type", "at", "scope", "agent", "reason", "due_at", "grace_until"}
UNKNOWN_SESSION = "sess_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"
UNKNOWN_SCOPE = "eph_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"

# The main server: defaults chosen so that each is visible (none is the built-in one).
CONFIG = ("ephemeral:\n"
          "  default_ttl: 20\n"
          "  max_ttl: 40\n"
          "  idle_ttl: 30\n"
          "  command_ttl: 5s\n"
          "  lock_grace: 1s\n"
          "  gc_interval: 30s\n")

srv = None
OTHER = None   # a key of tenant "other"


def setUpModule():
    global srv, OTHER
    srv = harness.Server(config=CONFIG, threads=2)
    OTHER = srv.create_key("other")


def tearDownModule():
    srv.stop()


# ---- helpers ----------------------------------------------------------------------------
def check_scope(tc, s):
    tc.assertIsInstance(s, dict)
    extra = set(s) - SCOPE_FIELDS - {"grace_until"}
    tc.assertEqual(extra, set(), "unexpected scope fields: %r" % s)
    tc.assertEqual(SCOPE_FIELDS - set(s), set(), "missing scope fields: %r" % s)
    tc.assertRegex(s["id"], EPH_RE)
    for k in ("created_at", "expires_at", "last_used_at"):
        tc.assertRegex(s[k], TIME_RE, k)
    if "grace_until" in s:
        tc.assertRegex(s["grace_until"], TIME_RE)
    tc.assertIn(s["flow"], ("scoped", "command", "secure"))
    tc.assertIsInstance(s["locked"], bool)
    tc.assertIsInstance(s["auto_extend"], bool)
    tc.assertIsInstance(s["context"], dict)
    tc.assertGreaterEqual(s["last_used_at"], s["created_at"])
    return s


def create(tc, server=None, key=DEFAULT, **body):
    server = server or srv
    r = server.request("POST", "/v1/ephemeral", body, key=key)
    tc.assertEqual(r.status, 201, r.raw[:400])
    return check_scope(tc, r.json)


def call(server, method, path, body=None, key=DEFAULT):
    """server.request, with a dropped connection turned into a failure that says whether
    the server died."""
    try:
        return server.request(method, path, body, key=key)
    except (http.client.HTTPException, ConnectionError) as ex:
        raise AssertionError("%s %s: connection dropped (%r); server %s" % (
            method, path, ex, "alive" if server.alive() else
            "DIED with %s" % server.proc.returncode))


def get(server, sid, key=DEFAULT):
    return call(server, "GET", "/v1/ephemeral/" + sid, key=key)


def view(tc, server, sid, key=DEFAULT):
    """The scope minus last_used_at (every read is a use): what a refused request must
    leave as it was."""
    r = get(server, sid, key=key)
    tc.assertEqual(r.status, 200, r.raw[:300])
    d = dict(r.json)
    d.pop("last_used_at")
    return d


def gone(server, sid, key=DEFAULT):
    r = get(server, sid, key=key)
    if r.status == 404:
        assert_error(r, 404, "not_found")
        return True
    return False


def secs(a, b):
    """b - a in seconds for two RFC 3339 times."""
    return round(parse_ts(b) - parse_ts(a), 3)


def metrics(server):
    r = server.request("GET", "/metrics", key=None)
    assert r.status == 200, r.raw[:200]
    out = {}
    for ln in r.raw.decode("utf-8").splitlines():
        if not ln or ln.startswith("#"):
            continue
        name, _, val = ln.rpartition(" ")
        out[name] = float(val)
    return out


def eph_events(server, key=DEFAULT, until=None, timeout=6.0, idle=0.3):
    """The tenant's ephemeral.* events (data objects) from the start of the stream. With
    until (a predicate over the list), reads until it holds or timeout passes;
    without, until idle seconds pass with no event."""
    deadline = time.monotonic() + timeout
    st = SSE(server, key=key, query="?after=0")
    out = []
    try:
        if st.status != 200:
            raise AssertionError("event stream: %r" % (st.body().raw[:300],))
        if until is not None and until(out):
            return out
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            ev = st.next_event(left if until is not None else min(idle, left))
            if ev is None:
                if until is None:
                    return out
                continue
            d = ev["data"]
            if isinstance(d, dict) and str(d.get("type", "")).startswith("ephemeral."):
                if ev["event"] != d["type"] or ev["id"] != str(d["id"]):
                    raise AssertionError("SSE framing does not match its data: %r" % ev)
                out.append(d)
                if until is not None and until(out):
                    return out
    finally:
        st.close()


def raw_stream(server, key=DEFAULT, idle=0.4):
    """The bytes of `GET /v1/events?after=0` until idle seconds pass with none."""
    if key is DEFAULT:
        key = server.key
    sk = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    out = b""
    try:
        sk.sendall(("GET /v1/events?after=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
                    "\r\n\r\n" % key).encode())
        while True:
            r, _, _ = select.select([sk], [], [], idle)
            if not r:
                return out
            b = sk.recv(65536)
            if not b:
                return out
            out += b
    finally:
        sk.close()


def evicted_of(events, sid):
    return [e for e in events if e["type"] == "ephemeral.evicted" and e["scope"] == sid]


def evicted_now(server, key=DEFAULT):
    """{scope id: its evicted event} for what has been published so far. Checked before
    any request touches an expired scope: a request on a scope past its deadline ends
    it too, and must not be what ended it in a test of the timers."""
    return {e["scope"]: e for e in eph_events(server, key=key)
            if e["type"] == "ephemeral.evicted"}


def wait_evicted(server, sids, key=DEFAULT, timeout=6.0):
    """{scope id: its evicted event} once every one of sids has one (or the timeout)."""
    want = set(sids)
    evs = eph_events(server, key=key, timeout=timeout, until=lambda ev: want <= {
        e["scope"] for e in ev if e["type"] == "ephemeral.evicted"})
    return {e["scope"]: e for e in evs if e["type"] == "ephemeral.evicted"}


def sleep_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


# ---------------------------------------------------------------------------------------
class Create(unittest.TestCase):
    def test_defaults_from_config(self):
        t0 = time.time()
        s = create(self, agent="planner-7")
        t1 = time.time()
        self.assertEqual(set(s), SCOPE_FIELDS, s)
        self.assertEqual(s["agent_id"], "planner-7")
        self.assertEqual(s["flow"], "scoped")
        self.assertEqual(s["ttl"], 20)
        self.assertEqual(s["idle_ttl"], 30)
        self.assertIs(s["auto_extend"], False)
        self.assertIs(s["locked"], False)
        self.assertEqual(s["context"], {})
        self.assertEqual(s["last_used_at"], s["created_at"])
        self.assertEqual(secs(s["created_at"], s["expires_at"]), 20.0)
        self.assertGreaterEqual(parse_ts(s["created_at"]), int(t0 * 1000) / 1000.0 - 0.002)
        self.assertLessEqual(parse_ts(s["created_at"]), t1 + 0.002)
        g = get(srv, s["id"])
        self.assertEqual(g.status, 200, g.raw)
        check_scope(self, g.json)
        self.assertGreaterEqual(g.json["last_used_at"], s["last_used_at"])
        a, b = dict(s), dict(g.json)
        a.pop("last_used_at")
        b.pop("last_used_at")
        self.assertEqual(a, b)

    def test_every_field(self):
        ctx = {"branch": "fix-142", "n": 3, "pi": 3.5, "ok": True, "nil": None,
               "list": [1, "two", {"three": [3]}], "obj": {"deep": {"er": "ünïcødé ✓"}}}
        s = create(self, agent="ünï/agent x", ttl=12.5, idle_ttl="3s", flow="command",
                   auto_extend=True, context=ctx)
        self.assertEqual(s["agent_id"], "ünï/agent x")
        self.assertEqual((s["flow"], s["ttl"], s["idle_ttl"], s["auto_extend"], s["locked"]),
                         ("command", 12.5, 3, True, False))
        self.assertEqual(s["context"], ctx)
        self.assertEqual(secs(s["created_at"], s["expires_at"]), 12.5)
        self.assertEqual(view(self, srv, s["id"])["context"], ctx)
        for flow in ("scoped", "secure"):
            s = create(self, agent="a", flow=flow, context={"k": flow}, idle_ttl=0)
            self.assertEqual((s["flow"], s["idle_ttl"], s["context"]), (flow, 0, {"k": flow}))

    def test_ids_random(self):
        ids = [create(self, agent="ids", ttl=5)["id"] for _ in range(40)]
        self.assertEqual(len(set(ids)), len(ids))
        for i in ids:
            self.assertRegex(i, EPH_RE)
        # not time-ordered: 40 random ids come out sorted with probability 2/40!
        self.assertNotEqual(ids, sorted(ids), "ids are ordered by creation time")
        self.assertNotEqual(ids, sorted(ids, reverse=True), "ids are ordered by creation time")
        self.assertGreater(len({i[4:8] for i in ids}), 30, "ids share their leading characters")

    def test_size_limits_accepted(self):
        # a context of exactly 64 KiB in canonical JSON, a 256-byte key, a 256-byte agent
        n = 65536 - len('{"a":""}')
        s = create(self, agent="x" * 256, context={"a": "y" * n})
        self.assertEqual(len(s["context"]["a"]), n)
        self.assertEqual(s["agent_id"], "x" * 256)
        k = "k" * 256
        s = create(self, agent="a", context={k: 1})
        self.assertEqual(s["context"], {k: 1})
        r = srv.request("PUT", "/v1/ephemeral/%s/context/%s" % (s["id"], q("é" * 128)),
                        {"value": 2})
        self.assertEqual(r.status, 200, r.raw[:300])
        # one byte over
        r = srv.request("POST", "/v1/ephemeral", {"agent": "a", "context": {"a": "y" * (n + 1)}})
        assert_error(r, 422, "invalid_value", field="context")


class ReadWrite(unittest.TestCase):
    def test_patch_merges_one_level(self):
        s = create(self, agent="w", context={"a": 1, "b": {"x": 1, "z": 0}, "c": "keep"})
        r = srv.request("PATCH", "/v1/ephemeral/" + s["id"],
                        {"context": {"a": None, "b": {"y": 2}, "d": [1, 2], "gone": None}})
        self.assertEqual(r.status, 200, r.raw)
        check_scope(self, r.json)
        want = {"b": {"y": 2}, "c": "keep", "d": [1, 2]}
        self.assertEqual(r.json["context"], want)
        self.assertEqual(view(self, srv, s["id"])["context"], want)
        # id, clock and flags are not touched by a merge
        self.assertEqual({k: r.json[k] for k in ("id", "created_at", "expires_at", "ttl",
                                                 "idle_ttl", "flow", "locked", "agent_id")},
                         {k: s[k] for k in ("id", "created_at", "expires_at", "ttl", "idle_ttl",
                                            "flow", "locked", "agent_id")})

    def test_context_keys(self):
        s = create(self, agent="w", context={"pre": 0})
        P = "/v1/ephemeral/%s/context/" % s["id"]
        values = {"a/b c": {"n": [1, "é"]}, "ключ🔑": "значение", "100%": 1, "a?b#c": None,
                  "a+b": "plus", "..": "dots", "%41": "literal percent", "k": [], " ": 0}
        for k, v in values.items():
            with self.subTest(key=k):
                r = srv.request("PUT", P + q(k), {"value": v})
                self.assertEqual(r.status, 200, r.raw)
                self.assertEqual(set(r.json), {"key", "value", "expires_at"})
                self.assertEqual((r.json["key"], r.json["value"]), (k, v))
                self.assertEqual(r.json["expires_at"], s["expires_at"])
                r = srv.request("GET", P + q(k))
                self.assertEqual(r.status, 200, r.raw)
                self.assertEqual(r.json, {"key": k, "value": v})
        want = dict(values, pre=0)
        self.assertEqual(view(self, srv, s["id"])["context"], want)
        # a PUT replaces the value of an existing key
        assert_status(srv.request("PUT", P + "pre", {"value": {"new": True}}), 200)
        self.assertEqual(srv.request("GET", P + "pre").json, {"key": "pre", "value": {"new": True}})
        # a key the context lacks
        for k in ("nope", "A/B C", "pre2"):
            assert_error(srv.request("GET", P + q(k)), 404, "not_found", field="key")

    def test_delete(self):
        s = create(self, agent="del", context={"a": 1})
        r = srv.request("DELETE", "/v1/ephemeral/" + s["id"])
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"id": s["id"], "purged": True})
        self.assertTrue(gone(srv, s["id"]))
        assert_error(srv.request("DELETE", "/v1/ephemeral/" + s["id"]), 404, "not_found")
        assert_error(srv.request("GET", "/v1/ephemeral/%s/context/a" % s["id"]), 404,
                     "not_found")
        ev = wait_evicted(srv, [s["id"]])
        self.assertEqual(ev.get(s["id"], {}).get("reason"), "purged", ev.get(s["id"]))


class Tenants(unittest.TestCase):
    def test_other_tenant_sees_nothing(self):
        sess = srv.create_session(user="u", agent="iso")["id"]
        s = create(self, agent="iso", context={"secret": "mine"})
        sid = s["id"]
        before = view(self, srv, sid)
        P = "/v1/ephemeral/" + sid
        other_sess = srv.create_session(user="u", agent="iso", key=OTHER)["id"]
        calls = [("GET", P, None), ("PATCH", P, {"context": {"secret": "theirs"}}),
                 ("DELETE", P, None), ("PUT", P + "/context/secret", {"value": 1}),
                 ("GET", P + "/context/secret", None), ("POST", P + "/lock", None),
                 ("POST", P + "/unlock", None), ("POST", P + "/extend", {"ttl": 1}),
                 ("POST", P + "/upgrade", None), ("POST", P + "/complete", None),
                 ("POST", P + "/complete", {"session": other_sess, "keys": ["secret"]})]
        for m, p, b in calls:
            with self.subTest(method=m, path=p):
                assert_error(srv.request(m, p, b, key=OTHER), 404, "not_found")
        self.assertEqual(view(self, srv, sid), before)
        self.assertEqual(srv.facts(other_sess, key=OTHER), {})
        # the other tenant's agent purge does not reach this tenant's scopes of that agent
        r = srv.request("DELETE", "/v1/agents/iso/ephemeral", key=OTHER)
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"agent": "iso", "purged": 0})
        self.assertEqual(view(self, srv, sid), before)
        # and the other way round
        t = create(self, key=OTHER, agent="iso", context={"t": 1})
        assert_error(get(srv, t["id"]), 404, "not_found")
        assert_error(srv.request("POST", "/v1/ephemeral/%s/lock" % t["id"]), 404, "not_found")
        self.assertFalse(view(self, srv, t["id"], key=OTHER)["locked"])
        # the locked state the owner sets is the owner's business only
        assert_status(srv.request("POST", P + "/lock"), 200)
        assert_error(srv.request("POST", P + "/unlock", key=OTHER), 404, "not_found")
        self.assertTrue(view(self, srv, sid)["locked"])
        assert_status(srv.request("POST", P + "/unlock"), 200)
        self.assertEqual(srv.facts(sess), {})
        # evictions are published to the owner's stream only
        assert_status(srv.request("DELETE", "/v1/ephemeral/" + t["id"], key=OTHER), 200)
        assert_status(srv.request("DELETE", P), 200)
        mine = wait_evicted(srv, [sid])
        theirs = wait_evicted(srv, [t["id"]], key=OTHER)
        self.assertIn(sid, mine)
        self.assertNotIn(t["id"], mine)
        self.assertIn(t["id"], theirs)
        self.assertNotIn(sid, theirs)


class Clock(unittest.TestCase):
    def test_ttl_edges(self):
        assert_error(srv.request("POST", "/v1/ephemeral", {"agent": "c", "ttl": 40.001}), 422,
                     "invalid_value", field="ttl")
        assert_error(srv.request("POST", "/v1/ephemeral", {"agent": "c", "ttl": "41s"}), 422,
                     "invalid_value", field="ttl")
        assert_error(srv.request("POST", "/v1/ephemeral", {"agent": "c", "ttl": "1m"}), 422,
                     "invalid_value", field="ttl")
        assert_error(srv.request("POST", "/v1/ephemeral", {"agent": "c", "idle_ttl": 41}), 422,
                     "invalid_value", field="idle_ttl")
        assert_error(srv.request("POST", "/v1/ephemeral", {"agent": "c", "flow": "command",
                                                           "ttl": 41}),
                     422, "invalid_value", field="ttl")
        for ttl, want in ((40, 40), ("40s", 40), ("1500ms", 1.5), (0.75, 0.75), (2.5, 2.5),
                          ("500ms", 0.5), (0.001, 0.001), (1, 1)):
            with self.subTest(ttl=ttl):
                s = create(self, agent="c", ttl=ttl)
                self.assertEqual(s["ttl"], want)
                self.assertEqual(secs(s["created_at"], s["expires_at"]), want)
        s = create(self, agent="c", ttl=10, idle_ttl="1500ms")
        self.assertEqual(s["idle_ttl"], 1.5)
        s = create(self, agent="c", idle_ttl=40)
        self.assertEqual(s["idle_ttl"], 40)

    def test_expiry_timer(self):
        """A scope ends at its deadline, long before the 30 s GC sweep."""
        a = create(self, agent="clock", ttl=0.3, context={"v": "short"})
        b = create(self, agent="clock", ttl=0.3, flow="command")
        c = create(self, agent="clock", ttl=0.3, flow="secure")
        keep = create(self, agent="clock", ttl=20)
        for s in (a, b, c):
            self.assertEqual(get(srv, s["id"]).status, 200)
        sleep_until(parse_ts(a["expires_at"]) + 0.7)
        ev = evicted_now(srv)
        for s in (a, b, c):
            e = ev.get(s["id"])
            self.assertIsNotNone(e, "%s scope not ended 0.7 s after its deadline" % s["flow"])
            self.assertEqual((e["reason"], e["flow"], e["agent"]), ("expired", s["flow"], "clock"))
        for s in (a, b, c):
            self.assertTrue(gone(srv, s["id"]))
        self.assertEqual(get(srv, keep["id"]).status, 200)
        self.assertNotIn(keep["id"], ev)

    def test_idle(self):
        s = create(self, agent="idler", ttl=20, idle_ttl=0.6)
        t0 = parse_ts(s["created_at"])
        # every use restarts the idle time: alive at 1.0 s although idle_ttl is 0.6 s
        for at in (0.2, 0.4, 0.6, 0.8, 1.0):
            sleep_until(t0 + at)
            r = get(srv, s["id"])
            self.assertEqual(r.status, 200, "gone at %.1f s although used every 0.2 s" % at)
            # a use does not move expires_at without auto_extend
            self.assertEqual(r.json["expires_at"], s["expires_at"])
        last = parse_ts(r.json["last_used_at"])
        # uses of other kinds count too
        other = create(self, agent="idler", ttl=20, idle_ttl=0.6, context={"k": 1})
        t1 = parse_ts(other["created_at"])
        for at, (m, suffix, body) in zip((0.25, 0.5, 0.75, 1.0),
                                        (("GET", "/context/k", None),
                                         ("PUT", "/context/k", {"value": 2}),
                                         ("PATCH", "", {"context": {"j": 1}}),
                                         ("POST", "/lock", None))):
            sleep_until(t1 + at)
            r = srv.request(m, "/v1/ephemeral/%s%s" % (other["id"], suffix), body)
            self.assertEqual(r.status, 200, "%s %s at %.2f s: %r" % (m, suffix, at, r.raw[:200]))
        sleep_until(last + 1.2)
        e = evicted_now(srv).get(s["id"])
        self.assertIsNotNone(e, "idle scope not ended 1.2 s after its last use")
        self.assertEqual(e["reason"], "idle")
        self.assertTrue(gone(srv, s["id"]))
        # the locked one goes into its lock grace with reason idle, then ends
        evs = eph_events(srv, timeout=4, until=lambda ev: any(
            x["type"] == "ephemeral.evicted" and x["scope"] == other["id"] for x in ev))
        kinds = [(x["type"], x["reason"]) for x in evs if x["scope"] == other["id"]]
        self.assertEqual(kinds, [("ephemeral.expiring", "idle"), ("ephemeral.evicted", "idle")])

    def test_auto_extend_within_max_ttl(self):
        small = harness.Server(config="ephemeral:\n  max_ttl: 3s\n  default_ttl: 1\n"
                                      "  command_ttl: 1s\n  gc_interval: 30s\n")
        try:
            s = create(self, server=small, agent="ext", ttl=1, auto_extend=True)
            fixed = create(self, server=small, agent="ext", ttl=1.5)
            created = parse_ts(s["created_at"])
            cap = created + 3.0
            seen_cap = False
            while time.time() < created + 2.6:
                time.sleep(0.2)
                r = get(small, s["id"])
                self.assertEqual(r.status, 200, "auto_extend scope gone at %.2f s"
                                 % (time.time() - created))
                exp, used = parse_ts(r.json["expires_at"]), parse_ts(r.json["last_used_at"])
                self.assertLessEqual(exp, cap + 0.0005, "expires_at past created_at + max_ttl")
                if used + 1.0 <= cap:
                    self.assertAlmostEqual(exp, used + 1.0, delta=0.0015,
                                           msg="a use moves expires_at to now + ttl")
                else:
                    self.assertAlmostEqual(exp, cap, delta=0.0015)
                    seen_cap = True
                # the one without auto_extend keeps its deadline
                if time.time() < parse_ts(fixed["expires_at"]) - 0.1:
                    f = get(small, fixed["id"])
                    self.assertEqual(f.json["expires_at"], fixed["expires_at"])
            self.assertTrue(seen_cap, "never saw expires_at clamped to created_at + max_ttl")
            # used all the time, it still ends at created_at + max_ttl
            while time.time() < cap - 0.1:
                self.assertEqual(get(small, s["id"]).status, 200)
                time.sleep(0.1)
            sleep_until(cap + 0.6)
            ev = evicted_now(small)
            self.assertIn(s["id"], ev, "scope outlived created_at + max_ttl")
            self.assertIn(fixed["id"], ev)
            self.assertEqual(ev[s["id"]]["reason"], "expired")
            self.assertEqual(ev[fixed["id"]]["reason"], "expired")
            self.assertTrue(gone(small, s["id"]))
            self.assertTrue(gone(small, fixed["id"]))
            # extend can not pass the cap either (50 ms after creation, now + 3 s is past it)
            t = create(self, server=small, agent="ext", ttl=1)
            time.sleep(0.05)
            assert_error(small.request("POST", "/v1/ephemeral/%s/extend" % t["id"], {"ttl": 3}),
                         422, "invalid_value", field="ttl")
            r = small.request("POST", "/v1/ephemeral/%s/extend" % t["id"], {"ttl": 2.9})
            self.assertEqual(r.status, 200, r.raw)
            self.assertLessEqual(parse_ts(r.json["expires_at"]), parse_ts(t["created_at"]) + 3)
        finally:
            small.stop()

    def test_extend(self):
        s = create(self, agent="ext", ttl=10, context={"k": 1})
        P = "/v1/ephemeral/%s/extend" % s["id"]
        # longer, within created_at + max_ttl (40 s)
        t0 = time.time()
        r = srv.request("POST", P, {"ttl": 30})
        self.assertEqual(r.status, 200, r.raw)
        check_scope(self, r.json)
        self.assertEqual(r.json["ttl"], 30)
        self.assertAlmostEqual(parse_ts(r.json["expires_at"]),
                               parse_ts(r.json["last_used_at"]) + 30, delta=0.0015)
        self.assertGreaterEqual(parse_ts(r.json["expires_at"]), t0 + 30 - 0.002)
        # past created_at + max_ttl (now is later than created_at: 40 s from now is past it)
        time.sleep(0.05)
        before = view(self, srv, s["id"])
        assert_error(srv.request("POST", P, {"ttl": 40}), 422, "invalid_value", field="ttl")
        assert_error(srv.request("POST", P, {"ttl": "45s"}), 422, "invalid_value", field="ttl")
        # ttl is required
        assert_error(srv.request("POST", P, {}), 400, "missing_field", field="ttl")
        assert_error(srv.request("POST", P), 400, "missing_field", field="ttl")
        self.assertEqual(view(self, srv, s["id"]), before)
        # shorter is allowed, and the scope then ends at the new, earlier deadline
        r = srv.request("POST", P, {"ttl": "400ms"})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["ttl"], 0.4)
        new = parse_ts(r.json["expires_at"])
        self.assertLess(new, parse_ts(s["expires_at"]))
        self.assertEqual(r.json["context"], {"k": 1})
        sleep_until(new + 0.7)
        e = evicted_now(srv).get(s["id"])
        self.assertIsNotNone(e, "extend to a shorter ttl did not move the timer")
        self.assertEqual(e["reason"], "expired")
        self.assertTrue(gone(srv, s["id"]))

    def test_exact_expiry_under_load(self):
        """~2000 scopes whose deadlines fall in one second all end when it has passed;
        the GC sweep (60 s) has not run yet, so the per-scope timers did it."""
        load = harness.Server(config="ephemeral:\n  gc_interval: 60s\n  log_evictions: false\n",
                              threads=2)
        try:
            m0 = metrics(load)
            n, nthreads = 2000, 2
            # how long a create takes here, to place the second after all creations
            c = load.client()
            t = time.time()
            for _ in range(40):
                assert_status(c.request("POST", "/v1/ephemeral", {"agent": "cal", "ttl": 60}), 201)
            per = (time.time() - t) / 40
            c.close()
            window = time.time() + max(1.5, 2.5 * per * n / nthreads + 0.5)
            results = [[] for _ in range(nthreads)]
            errors = []

            def worker(k):
                cl = load.client()
                try:
                    for i in range(k, n, nthreads):
                        ttl = round(window + 0.8 * i / n - time.time(), 3)
                        r = cl.request("POST", "/v1/ephemeral",
                                       {"agent": "load-%d" % (i % 7), "ttl": ttl,
                                        "context": {"i": i}})
                        if r.status != 201:
                            errors.append((i, ttl, r.status, r.raw[:200]))
                            return
                        results[k].append(r.json)
                except Exception as ex:  # noqa: BLE001
                    errors.append(repr(ex))
                finally:
                    cl.close()
            ths = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            done = time.time()
            self.assertEqual(errors, [])
            scopes = [s for part in results for s in part]
            self.assertEqual(len(scopes), n)
            self.assertLess(done, window, "creating %d scopes took longer than planned (%.2f s "
                            "per create): the test could not place the deadlines" % (n, per))
            deadlines = [parse_ts(s["expires_at"]) for s in scopes]
            self.assertLess(max(deadlines) - min(deadlines), 1.0, "deadlines not within a second")
            # before its deadline each is alive (a sample, not to disturb the clock)
            for s in scopes[::97]:
                if parse_ts(s["expires_at"]) > time.time() + 0.2:
                    self.assertEqual(get(load, s["id"]).status, 200)
            sleep_until(max(deadlines) + 0.5)
            # ended by the timers, before any request looks at them
            m1 = metrics(load)
            self.assertEqual(m1['charter_scopes{flow="scoped"}'], 40,  # the calibration ones
                             "%d scopes outlived their deadline by 0.5 s"
                             % (m1['charter_scopes{flow="scoped"}'] - 40))
            self.assertEqual(m1['charter_scope_evictions_total{reason="expired"}']
                             - m0['charter_scope_evictions_total{reason="expired"}'], n)
            key = "charter_scope_expiry_lateness_seconds_count"
            self.assertGreaterEqual(m1[key] - m0.get(key, 0), n)
            alive = []

            def checker(k):
                cl = load.client()
                try:
                    for s in scopes[k::nthreads]:
                        r = cl.request("GET", "/v1/ephemeral/" + s["id"])
                        if r.status != 404:
                            alive.append((s["id"], s["expires_at"], r.status))
                finally:
                    cl.close()
            ths = [threading.Thread(target=checker, args=(k,)) for k in range(nthreads)]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            self.assertEqual(alive[:5], [], "%d scopes outlived their deadline by 0.5 s"
                             % len(alive))
            ids = {s["id"] for s in scopes}
            ev = wait_evicted(load, ids, timeout=20)
            missing = ids - set(ev)
            self.assertEqual(len(missing), 0, "no evicted event for %d scopes" % len(missing))
            self.assertEqual({ev[i]["reason"] for i in ids}, {"expired"})
        finally:
            load.stop()

    def test_gc_sweep_alone(self):
        """exact_expiry: false — no per-scope timers; only the sweep ends scopes."""
        fast = harness.Server(config="ephemeral:\n  exact_expiry: false\n"
                                     "  gc_interval: 500ms\n")
        slow = harness.Server(config="ephemeral:\n  exact_expiry: false\n  gc_interval: 30s\n")
        try:
            a = create(self, server=fast, agent="gc", ttl=0.2, context={"v": 1})
            b = create(self, server=slow, agent="gc", ttl=0.2, context={"v": 2})
            # the 500 ms sweep ends a (untouched) 0.2 s scope
            ev = wait_evicted(fast, [a["id"]], timeout=2.5)
            self.assertIn(a["id"], ev, "the 500 ms sweep did not end a 0.2 s scope in 2.5 s")
            self.assertEqual(ev[a["id"]]["reason"], "expired")
            self.assertTrue(gone(fast, a["id"]))
            # without timers and before the first sweep nothing ends an untouched scope
            # at its deadline: 0.8 s later it is still held ...
            sleep_until(parse_ts(b["expires_at"]) + 0.8)
            self.assertEqual(evicted_of(eph_events(slow), b["id"]), [])
            m = metrics(slow)
            self.assertEqual(m['charter_scopes{flow="scoped"}'], 1, "ended without timers "
                             "and before the first sweep")
            self.assertEqual(m['charter_scope_evictions_total{reason="expired"}'], 0)
            # ... yet it is over: a request does not get it back (it ends it instead)
            self.assertTrue(gone(slow, b["id"]), "a scope past its deadline is still served")
            self.assertEqual(wait_evicted(slow, [b["id"]])[b["id"]]["reason"], "expired")
        finally:
            fast.stop()
            slow.stop()


class Lock(unittest.TestCase):
    def mutations(self, sid, sess, flow):
        P = "/v1/ephemeral/" + sid
        calls = [("PATCH", P, {"context": {"x": 2}}), ("PATCH", P, {"context": {"x": None}}),
                 ("PUT", P + "/context/x", {"value": 3}), ("PUT", P + "/context/new", {"value": 3}),
                 ("POST", P + "/extend", {"ttl": 5}), ("POST", P + "/extend", {"ttl": 0.1}),
                 ("POST", P + "/complete", None),
                 ("POST", P + "/complete", {"session": sess, "keys": ["x"]}),
                 ("DELETE", P, None)]
        if flow == "command":
            calls += [("POST", P + "/upgrade", None), ("POST", P + "/upgrade", {"ttl": 7})]
        return calls

    def test_locked_refuses_every_change(self):
        sess = srv.create_session(user="u", agent="locker")["id"]
        for flow in ("scoped", "command", "secure"):
            with self.subTest(flow=flow):
                s = create(self, agent="locker", flow=flow, ttl=15, context={"x": 1, "y": [2]})
                P = "/v1/ephemeral/" + s["id"]
                r = srv.request("POST", P + "/lock")
                self.assertEqual(r.status, 200, r.raw)
                check_scope(self, r.json)
                self.assertIs(r.json["locked"], True)
                self.assertNotIn("grace_until", r.json)
                before = view(self, srv, s["id"])
                self.assertTrue(before["locked"])
                for m, p, b in self.mutations(s["id"], sess, flow):
                    with self.subTest(method=m, path=p[len(P):], body=b):
                        assert_error(srv.request(m, p, b), 423, "scope_locked")
                # a locked scope is still readable
                self.assertEqual(srv.request("GET", P + "/context/x").json,
                                 {"key": "x", "value": 1})
                self.assertEqual(view(self, srv, s["id"]), before)
                # lock twice
                assert_error(srv.request("POST", P + "/lock"), 423, "scope_locked")
                self.assertEqual(view(self, srv, s["id"]), before)
                # unlock, and unlock what is not locked
                r = srv.request("POST", P + "/unlock")
                self.assertEqual(r.status, 200, r.raw)
                self.assertIs(r.json["locked"], False)
                assert_error(srv.request("POST", P + "/unlock"), 409, "invalid_state",
                             state="unlocked")
                # changes work again
                r = srv.request("PATCH", P, {"context": {"x": 5}})
                self.assertEqual(r.status, 200, r.raw)
                self.assertEqual(r.json["context"], {"x": 5, "y": [2]})
                assert_status(srv.request("DELETE", P), 200)
        self.assertEqual(srv.facts(sess), {})

    def test_upgrade_of_locked_scoped(self):
        """Not a command scope and locked: refused either way, nothing changes."""
        s = create(self, agent="locker", ttl=15)
        assert_status(srv.request("POST", "/v1/ephemeral/%s/lock" % s["id"]), 200)
        before = view(self, srv, s["id"])
        r = srv.request("POST", "/v1/ephemeral/%s/upgrade" % s["id"])
        assert_error(r, (409, 423), ("invalid_state", "scope_locked"))
        self.assertEqual(view(self, srv, s["id"]), before)

    def test_lock_grace(self):
        s = create(self, agent="grace", ttl=0.5, context={"g": 1})
        sid = s["id"]
        P = "/v1/ephemeral/" + sid
        assert_status(srv.request("POST", P + "/lock"), 200)
        due = parse_ts(s["expires_at"])
        sleep_until(due + 0.3)
        r = get(srv, sid)
        self.assertEqual(r.status, 200, "a locked scope ended at its deadline, without grace")
        check_scope(self, r.json)
        self.assertIn("grace_until", r.json)
        self.assertEqual(secs(r.json["expires_at"], r.json["grace_until"]), 1.0)
        self.assertEqual(r.json["context"], {"g": 1})
        self.assertTrue(r.json["locked"])
        # still locked in its grace
        assert_error(srv.request("PATCH", P, {"context": {"g": 2}}), 423, "scope_locked")
        evs = eph_events(srv, until=lambda ev: any(
            x["type"] == "ephemeral.expiring" and x["scope"] == sid for x in ev))
        exp = [x for x in evs if x["type"] == "ephemeral.expiring" and x["scope"] == sid]
        self.assertEqual(len(exp), 1, "no ephemeral.expiring event: %r" % evs[-5:])
        e = exp[0]
        self.assertEqual(set(e), EXPIRING_FIELDS)
        self.assertEqual((e["agent"], e["reason"], e["due_at"], e["grace_until"]),
                         ("grace", "expired", s["expires_at"], r.json["grace_until"]))
        self.assertEqual(evicted_of(evs, sid), [])
        sleep_until(parse_ts(r.json["grace_until"]) + 0.6)
        ev = evicted_now(srv)
        self.assertIn(sid, ev, "not ended 0.6 s after its lock grace")
        self.assertEqual((ev[sid]["reason"], ev[sid]["flow"]), ("expired", "scoped"))
        self.assertTrue(gone(srv, sid))

    def test_extend_ends_grace(self):
        s = create(self, agent="grace", ttl=0.4)
        P = "/v1/ephemeral/" + s["id"]
        assert_status(srv.request("POST", P + "/lock"), 200)
        sleep_until(parse_ts(s["expires_at"]) + 0.2)
        r = get(srv, s["id"])
        self.assertEqual(r.status, 200)
        self.assertIn("grace_until", r.json)
        grace_until = parse_ts(r.json["grace_until"])
        r = srv.request("POST", P + "/unlock")
        self.assertEqual(r.status, 200, r.raw)
        r = srv.request("POST", P + "/extend", {"ttl": 5})
        self.assertEqual(r.status, 200, r.raw)
        self.assertNotIn("grace_until", r.json)
        sleep_until(grace_until + 0.6)
        r = get(srv, s["id"])
        self.assertEqual(r.status, 200, "extend did not end the lock grace")
        self.assertNotIn("grace_until", r.json)
        assert_status(srv.request("DELETE", P), 200)


class EventsAndMetrics(unittest.TestCase):
    def test_every_reason_without_context(self):
        ev_srv = harness.Server(config=CONFIG)
        try:
            secret = "VALUE-%s" % os.urandom(8).hex()
            sess = ev_srv.create_session(user="u", agent="ev")["id"]
            ctx = {"secret": secret, "nested": {"s": secret}}
            want = {}
            s = create(self, server=ev_srv, agent="ev", ttl=0.3, context=ctx)
            want[s["id"]] = ("expired", "scoped", "ev")
            s = create(self, server=ev_srv, agent="ev", ttl=10, idle_ttl=0.3, flow="command",
                       context=ctx)
            want[s["id"]] = ("idle", "command", "ev")
            s = create(self, server=ev_srv, agent="ev", flow="secure", context=ctx)
            assert_status(ev_srv.request("DELETE", "/v1/ephemeral/" + s["id"]), 200)
            want[s["id"]] = ("purged", "secure", "ev")
            s = create(self, server=ev_srv, agent="ev", context=ctx)
            assert_status(ev_srv.request("POST", "/v1/ephemeral/%s/complete" % s["id"],
                                         {"session": sess, "keys": ["secret"]}), 200)
            want[s["id"]] = ("purged", "scoped", "ev")
            for flow in ("scoped", "command", "secure"):
                s = create(self, server=ev_srv, agent="leaver ü", flow=flow, context=ctx)
                want[s["id"]] = ("agent_exited", flow, "leaver ü")
            r = ev_srv.request("DELETE", "/v1/agents/%s/ephemeral" % q("leaver ü"))
            self.assertEqual(r.json, {"agent": "leaver ü", "purged": 3})
            evs = eph_events(ev_srv, until=lambda ev: set(want) <= {
                e["scope"] for e in ev if e["type"] == "ephemeral.evicted"})
            got = {}
            for e in evs:
                self.assertNotIn(secret, json.dumps(e, ensure_ascii=False))
                if e["type"] == "ephemeral.evicted":
                    self.assertEqual(set(e), EVICTED_FIELDS, e)
                    self.assertRegex(e["at"], TIME_RE)
                    self.assertNotIn(e["scope"], got, "two evicted events for one scope")
                    got[e["scope"]] = (e["reason"], e["flow"], e["agent"])
            self.assertEqual(got, want)
            # the raw stream carries no context either
            raw = raw_stream(ev_srv)
            self.assertIn(b"ephemeral.evicted", raw)
            self.assertNotIn(secret.encode(), raw)
            self.assertNotIn(secret, ev_srv.log_text_full())
        finally:
            ev_srv.stop()

    def test_metrics(self):
        ms = harness.Server(config=CONFIG)
        try:
            m0 = metrics(ms)
            for name in ('charter_scopes{flow="scoped"}', 'charter_scopes{flow="command"}',
                         'charter_scopes{flow="secure"}', "charter_scopes_locked",
                         "charter_scope_bytes", "charter_scope_expiry_lateness_seconds_count",
                         'charter_scope_ttl_remaining_seconds_bucket{le="+Inf"}'):
                self.assertIn(name, m0)
            for reason in ("expired", "idle", "agent_exited", "purged", "error"):
                self.assertEqual(m0['charter_scope_evictions_total{reason="%s"}' % reason], 0)
            ctxs = [{"a": "xyz"}, {"k": [1, 2, 3]}, {"long": "z" * 100}, {}]
            flows = ["scoped", "scoped", "command", "secure"]
            scopes = [create(self, server=ms, agent="m", flow=f, context=c, ttl=20)
                      for f, c in zip(flows, ctxs)]
            size = sum(len(json.dumps(c, separators=(",", ":"), sort_keys=True)) for c in ctxs)
            m1 = metrics(ms)

            def d(name, a, b):
                return b.get(name, 0) - a.get(name, 0)
            self.assertEqual(d('charter_scopes{flow="scoped"}', m0, m1), 2)
            self.assertEqual(d('charter_scopes{flow="command"}', m0, m1), 1)
            self.assertEqual(d('charter_scopes{flow="secure"}', m0, m1), 1)
            self.assertEqual(d("charter_scope_bytes", m0, m1), size)
            b = "charter_scope_ttl_remaining_seconds_bucket{le=\"%s\"}"
            self.assertEqual(d(b % "30", m0, m1), 4)
            self.assertEqual(d(b % "10", m0, m1), 0)
            self.assertEqual(d(b % "+Inf", m0, m1), 4)
            self.assertEqual(d("charter_scope_ttl_remaining_seconds_count", m0, m1), 4)
            # a PUT grows the bytes by the canonical growth
            assert_status(ms.request("PUT", "/v1/ephemeral/%s/context/b" % scopes[0]["id"],
                                     {"value": 12}), 200)
            m2 = metrics(ms)
            self.assertEqual(d("charter_scope_bytes", m1, m2), len(',"b":12'))
            # locks
            assert_status(ms.request("POST", "/v1/ephemeral/%s/lock" % scopes[1]["id"]), 200)
            assert_status(ms.request("POST", "/v1/ephemeral/%s/lock" % scopes[3]["id"]), 200)
            self.assertEqual(d("charter_scopes_locked", m0, metrics(ms)), 2)
            assert_status(ms.request("POST", "/v1/ephemeral/%s/unlock" % scopes[3]["id"]), 200)
            self.assertEqual(d("charter_scopes_locked", m0, metrics(ms)), 1)
            # upgrade moves a scope from command to scoped
            assert_status(ms.request("POST", "/v1/ephemeral/%s/upgrade" % scopes[2]["id"]), 200)
            m3 = metrics(ms)
            self.assertEqual(d('charter_scopes{flow="command"}', m0, m3), 0)
            self.assertEqual(d('charter_scopes{flow="scoped"}', m0, m3), 3)
            # evictions: purged, agent_exited (the locked one too), expired, idle
            assert_status(ms.request("DELETE", "/v1/ephemeral/" + scopes[0]["id"]), 200)
            r = ms.request("DELETE", "/v1/agents/m/ephemeral")
            self.assertEqual(r.json, {"agent": "m", "purged": 3})
            e1 = create(self, server=ms, agent="m2", ttl=0.2)
            create(self, server=ms, agent="m2", ttl=10, idle_ttl=0.2)
            sleep_until(parse_ts(e1["expires_at"]) + 0.6)
            m4 = metrics(ms)
            want = {"purged": 1, "agent_exited": 3, "expired": 1, "idle": 1, "error": 0}
            for reason, n in want.items():
                self.assertEqual(d('charter_scope_evictions_total{reason="%s"}' % reason, m0, m4),
                                 n, reason)
            for f in ("scoped", "command", "secure"):
                self.assertEqual(m4['charter_scopes{flow="%s"}' % f], 0, f)
            self.assertEqual(m4["charter_scopes_locked"], 0)
            self.assertEqual(m4["charter_scope_bytes"], 0)
            self.assertEqual(m4["charter_scope_ttl_remaining_seconds_count"], 0)
            self.assertGreaterEqual(d("charter_scope_expiry_lateness_seconds_count", m0, m4), 2)
        finally:
            ms.stop()


class AgentExit(unittest.TestCase):
    def test_purges_only_that_agent_of_that_tenant(self):
        name = "worker/ü 1"
        mine = [create(self, agent=name, flow=f, context={"f": f}) for f in
                ("scoped", "command", "secure", "scoped")]
        assert_status(srv.request("POST", "/v1/ephemeral/%s/lock" % mine[0]["id"]), 200)
        bystander = create(self, agent="worker/ü 2", context={"b": 1})
        prefix = create(self, agent="worker", context={"b": 2})
        theirs = create(self, key=OTHER, agent=name, context={"t": 1})
        r = srv.request("DELETE", "/v1/agents/%s/ephemeral" % q(name))
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"agent": name, "purged": 4})
        for s in mine:
            self.assertTrue(gone(srv, s["id"]), s["flow"])
        self.assertEqual(view(self, srv, bystander["id"])["context"], {"b": 1})
        self.assertEqual(view(self, srv, prefix["id"])["context"], {"b": 2})
        self.assertEqual(view(self, srv, theirs["id"], key=OTHER)["context"], {"t": 1})
        ev = wait_evicted(srv, [s["id"] for s in mine])
        for s in mine:
            self.assertEqual((ev[s["id"]]["reason"], ev[s["id"]]["agent"], ev[s["id"]]["flow"]),
                             ("agent_exited", name, s["flow"]))
        # nothing left: a second exit purges none
        r = srv.request("DELETE", "/v1/agents/%s/ephemeral" % q(name))
        self.assertEqual(r.json, {"agent": name, "purged": 0})
        r = srv.request("DELETE", "/v1/agents/never-seen/ephemeral")
        self.assertEqual(r.json, {"agent": "never-seen", "purged": 0})
        # the other tenant's scope of that agent ends with its own tenant's call
        r = srv.request("DELETE", "/v1/agents/%s/ephemeral" % q(name), key=OTHER)
        self.assertEqual(r.json, {"agent": name, "purged": 1})
        self.assertTrue(gone(srv, theirs["id"], key=OTHER))
        self.assertEqual(evicted_of(eph_events(srv), theirs["id"]), [])
        for s in (bystander, prefix):
            assert_status(srv.request("DELETE", "/v1/ephemeral/" + s["id"]), 200)


class Complete(unittest.TestCase):
    def setUp(self):
        self.sess = srv.create_session(user="u", agent="done")["id"]
        assert_status(srv.request("PUT", "/v1/sessions/%s/facts/old" % self.sess,
                                  {"value": "kept"}), 200)

    def make(self, **kw):
        body = dict(agent="done", context={"a": 1, "b": {"x": [1, 2]}, "c": "not this one"})
        body.update(kw)
        return create(self, **body)

    def test_transfer(self):
        s = self.make()
        r = srv.request("POST", "/v1/ephemeral/%s/complete" % s["id"],
                        {"session": self.sess, "keys": ["a", "b"]})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(set(r.json), {"id", "session", "transferred", "purged", "locked"})
        self.assertEqual((r.json["id"], r.json["session"], r.json["purged"], r.json["locked"]),
                         (s["id"], self.sess, True, False))
        self.assertEqual(sorted(r.json["transferred"]), ["a", "b"])
        self.assertEqual(srv.facts(self.sess), {"old": "kept", "a": 1, "b": {"x": [1, 2]}})
        self.assertTrue(gone(srv, s["id"]))
        self.assertEqual(wait_evicted(srv, [s["id"]])[s["id"]]["reason"], "purged")

    def refused(self, s, body, status, code, field=None):
        before = view(self, srv, s["id"])
        facts = srv.facts(self.sess)
        r = srv.request("POST", "/v1/ephemeral/%s/complete" % s["id"], body)
        assert_error(r, status, code, field=field)
        self.assertEqual(view(self, srv, s["id"]), before)
        self.assertEqual(srv.facts(self.sess), facts)

    def test_missing_key(self):
        s = self.make()
        self.refused(s, {"session": self.sess, "keys": ["a", "zz"]}, 422, "invalid_value",
                     "keys[1]")
        self.refused(s, {"session": self.sess, "keys": ["A"]}, 422, "invalid_value", "keys[0]")

    def test_unknown_session(self):
        s = self.make()
        other_sess = srv.create_session(user="u", agent="done", key=OTHER)["id"]
        for sess in (UNKNOWN_SESSION, other_sess, "sess_" + "0" * 26):
            with self.subTest(session=sess):
                self.refused(s, {"session": sess, "keys": ["a"]}, 422, "invalid_value", "session")
        self.assertEqual(srv.facts(other_sess, key=OTHER), {})

    def test_unknown_session_without_keys(self):
        """docs/api.md: "an unknown session is 422 invalid_value (field: session)" and
        "Nothing is written and the scope is untouched when the request fails" — also
        when no keys are named."""
        s = self.make()
        self.refused(s, {"session": UNKNOWN_SESSION}, 422, "invalid_value", "session")
        self.refused(s, {"session": UNKNOWN_SESSION, "keys": []}, 422, "invalid_value", "session")

    def test_keys_need_a_session(self):
        s = self.make()
        self.refused(s, {"keys": ["a"]}, 400, "missing_field", "session")

    def test_archived_session(self):
        sess = srv.create_session(user="u", agent="done")["id"]
        assert_status(srv.request("POST", "/v1/sessions/%s/close" % sess), 200)
        assert_status(srv.request("POST", "/v1/sessions/%s/archive" % sess), 200)
        s = self.make()
        before = view(self, srv, s["id"])
        r = srv.request("POST", "/v1/ephemeral/%s/complete" % s["id"],
                        {"session": sess, "keys": ["a"]})
        self.assertGreaterEqual(r.status, 400, r.raw)
        self.assertLess(r.status, 500, r.raw)
        harness.assert_error_shape(r)
        self.assertEqual(view(self, srv, s["id"]), before)

    def test_no_body_purges(self):
        for body in (None, {}, {"keys": []}):
            with self.subTest(body=body):
                s = self.make()
                r = srv.request("POST", "/v1/ephemeral/%s/complete" % s["id"], body)
                self.assertEqual(r.status, 200, r.raw)
                self.assertEqual(r.json, {"id": s["id"], "session": None, "transferred": [],
                                          "purged": True, "locked": False})
                self.assertTrue(gone(srv, s["id"]))
        self.assertEqual(srv.facts(self.sess), {"old": "kept"})


class Flows(unittest.TestCase):
    def test_command_and_upgrade(self):
        s = create(self, agent="cmd", flow="command", context={"argv": ["ls", "-l"]})
        self.assertEqual((s["flow"], s["ttl"]), ("command", 5))
        self.assertEqual(secs(s["created_at"], s["expires_at"]), 5.0)
        P = "/v1/ephemeral/%s/upgrade" % s["id"]
        t0 = time.time()
        r = srv.request("POST", P)
        self.assertEqual(r.status, 200, r.raw)
        u = check_scope(self, r.json)
        self.assertEqual((u["id"], u["flow"], u["ttl"], u["context"]),
                         (s["id"], "scoped", 20, {"argv": ["ls", "-l"]}))
        self.assertGreaterEqual(parse_ts(u["expires_at"]), t0 + 20 - 0.002)
        self.assertAlmostEqual(parse_ts(u["expires_at"]), parse_ts(u["last_used_at"]) + 20,
                               delta=0.0015)
        self.assertEqual(view(self, srv, s["id"])["flow"], "scoped")
        # once scoped, no more upgrades
        before = view(self, srv, s["id"])
        assert_error(srv.request("POST", P), 409, "invalid_state", state="scoped")
        assert_error(srv.request("POST", P, {"ttl": 3}), 409, "invalid_state", state="scoped")
        self.assertEqual(view(self, srv, s["id"]), before)
        # it lives on past the command's 5 s: its deadline is the upgraded one
        # (checked below through the explicit ttl variant, which is quicker)
        c = create(self, agent="cmd", flow="command", ttl=0.4, context={"k": 1})
        r = srv.request("POST", "/v1/ephemeral/%s/upgrade" % c["id"], {"ttl": "1500ms"})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["flow"], r.json["ttl"]), ("scoped", 1.5))
        sleep_until(parse_ts(c["expires_at"]) + 0.4)
        r = get(srv, c["id"])
        self.assertEqual(r.status, 200, "an upgraded scope ended at its command deadline")
        self.assertEqual(r.json["context"], {"k": 1})
        # an upgrade's ttl is within max_ttl of the creation
        d = create(self, agent="cmd", flow="command")
        before = view(self, srv, d["id"])
        assert_error(srv.request("POST", "/v1/ephemeral/%s/upgrade" % d["id"], {"ttl": 41}),
                     422, "invalid_value", field="ttl")
        self.assertEqual(view(self, srv, d["id"]), before)

    def test_upgrade_other_flows(self):
        for flow in ("scoped", "secure"):
            s = create(self, agent="cmd", flow=flow, context={"k": flow})
            before = view(self, srv, s["id"])
            assert_error(srv.request("POST", "/v1/ephemeral/%s/upgrade" % s["id"]), 409,
                         "invalid_state", state=flow)
            self.assertEqual(view(self, srv, s["id"]), before)

    def test_secure_replies(self):
        """A secure scope's replies carry its values like any other scope's."""
        s = create(self, agent="sec", flow="secure", context={"a": "one"})
        P = "/v1/ephemeral/" + s["id"]
        self.assertEqual(s["context"], {"a": "one"})
        for k, v in (("b", "two"), ("c", {"n": ["three", 3]}), ("d", 4)):
            r = srv.request("PUT", "%s/context/%s" % (P, k), {"value": v})
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual((r.json["key"], r.json["value"]), (k, v), r.raw)
            self.assertEqual(srv.request("GET", "%s/context/%s" % (P, k)).json,
                             {"key": k, "value": v})
        r = srv.request("PATCH", P, {"context": {"e": "five", "a": None}})
        self.assertEqual(r.status, 200, r.raw)
        want = {"b": "two", "c": {"n": ["three", 3]}, "d": 4, "e": "five"}
        self.assertEqual(r.json["context"], want)
        self.assertEqual(view(self, srv, s["id"])["context"], want)

    def test_secure_complete(self):
        sess = srv.create_session(user="u", agent="sec")["id"]
        s = create(self, agent="sec", flow="secure", context={"pw": "s3cret", "user": "bob"})
        P = "/v1/ephemeral/%s/complete" % s["id"]
        r = srv.request("POST", P, {"session": sess, "keys": ["pw", "user"]})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["id"], r.json["transferred"], r.json["purged"], r.json["locked"]),
                         (s["id"], [], False, True))
        g = view(self, srv, s["id"])
        self.assertTrue(g["locked"])
        self.assertEqual(g["context"], {"pw": "s3cret", "user": "bob"})
        self.assertEqual(srv.facts(sess), {})
        assert_error(srv.request("POST", P, {"session": sess, "keys": ["pw"],
                                             "transfer_secrets": True}), 423, "scope_locked")
        # unlocked, and asked to transfer secrets, it does
        assert_status(srv.request("POST", "/v1/ephemeral/%s/unlock" % s["id"]), 200)
        r = srv.request("POST", P, {"session": sess, "keys": ["pw"], "transfer_secrets": True})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"id": s["id"], "session": sess, "transferred": ["pw"],
                                  "purged": True, "locked": False})
        self.assertEqual(srv.facts(sess), {"pw": "s3cret"})
        self.assertTrue(gone(srv, s["id"]))
        # with no body, a secure scope is locked as well (not purged) ...
        t = create(self, agent="sec", flow="secure", ttl=0.4, context={"pw": "x"})
        r = srv.request("POST", "/v1/ephemeral/%s/complete" % t["id"])
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["transferred"], r.json["purged"], r.json["locked"]),
                         ([], False, True))
        # ... and ends at its deadline, after the lock grace (1 s)
        sleep_until(parse_ts(t["expires_at"]) + 0.2)
        self.assertEqual(get(srv, t["id"]).status, 200)
        sleep_until(parse_ts(t["expires_at"]) + 1.7)
        e = evicted_now(srv).get(t["id"])
        self.assertIsNotNone(e, "a locked secure scope outlived deadline + lock grace")
        self.assertEqual(e["reason"], "expired")
        self.assertTrue(gone(srv, t["id"]))


class FreshServer(unittest.TestCase):
    def test_unknown_ids(self):
        """A well-formed id that names no scope is 404 on every route, also on a server
        that has never held a scope."""
        fresh = harness.Server(config=CONFIG)
        try:
            P = "/v1/ephemeral/" + UNKNOWN_SCOPE
            for m, p, b in (("GET", P, None), ("PATCH", P, {"context": {"a": 1}}),
                            ("DELETE", P, None), ("GET", P + "/context/a", None),
                            ("PUT", P + "/context/a", {"value": 1}), ("POST", P + "/lock", None),
                            ("POST", P + "/unlock", None), ("POST", P + "/extend", {"ttl": 1}),
                            ("POST", P + "/upgrade", None), ("POST", P + "/complete", None)):
                assert_error(call(fresh, m, p, b), 404, "not_found")
            self.assertTrue(fresh.alive())
            r = call(fresh, "DELETE", "/v1/agents/nobody/ephemeral")
            self.assertEqual(r.json, {"agent": "nobody", "purged": 0})
        finally:
            fresh.stop()


class Restart(unittest.TestCase):
    def test_no_scope_survives_a_restart(self):
        rs = harness.Server(config=CONFIG)
        try:
            scopes = [create(self, server=rs, agent="r", flow=f, context={"f": f}, ttl=30,
                             auto_extend=True) for f in ("scoped", "command", "secure")]
            locked = create(self, server=rs, agent="r", context={"l": 1})
            assert_status(rs.request("POST", "/v1/ephemeral/%s/lock" % locked["id"]), 200)
            scopes.append(locked)
            self.assertEqual(rs.stop(), 0)
            rs.start()
            for s in scopes:
                self.assertTrue(gone(rs, s["id"]), "%s scope survived a restart" % s["flow"])
            m = metrics(rs)
            for f in ("scoped", "command", "secure"):
                self.assertEqual(m['charter_scopes{flow="%s"}' % f], 0)
            self.assertEqual(m["charter_scopes_locked"], 0)
            self.assertEqual(m["charter_scope_bytes"], 0)
            r = rs.request("DELETE", "/v1/agents/r/ephemeral")
            self.assertEqual(r.json, {"agent": "r", "purged": 0})
            # and the server works as before
            s = create(self, server=rs, agent="r", context={"again": True})
            self.assertEqual(view(self, rs, s["id"])["context"], {"again": True})
        finally:
            rs.stop()


if __name__ == "__main__":
    harness.main()
