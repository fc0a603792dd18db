"""test_ephemeral_engines.py — the core behaviours of ephemeral scopes (create, get,
merge PATCH, context keys, delete, lock, expiry, idle, agent exit, complete, upgrade
command → scoped) run as one suite against each engine, `memory`, `sqlite` and
`redis`, checking where the engine keeps a scope's context: `sqlite` in
`<data_dir>/ephemeral.db` (table `scope`), `redis` under `charter:eph:<id>` with a
backstop TTL; `command` and `secure` scopes never in either. Then what each engine
promises beyond that: sqlite's file is recreated at start (a restart loses every
scope), redis keys a previous run left are removed at start, Redis going away makes
scoped calls `503 unavailable` (and with purge_on_error the scope ends, reason
`error`) without hurting command/secure scopes, and Redis coming back just works.

Redis is a private `redis-server` (the Debian package's /usr/bin/redis-server) on a
free loopback port with no persistence, started and stopped by this file; without
the binary the file fails."""

import http.client
import json
import os
import sqlite3
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from redis_util import PrivateRedis  # noqa: E402
from harness import assert_error, assert_status, q  # noqa: E402
from mandate_util import SSE, parse_ts  # noqa: E402

PREFIX = "charter:eph:"
REDIS = None    # the private Redis most tests share


_redises = []


def private_redis():
    r = PrivateRedis()
    _redises.append(r)
    return r


def setUpModule():
    global REDIS
    REDIS = private_redis()


def tearDownModule():
    for r in _redises:
        r.cleanup()


# ---- helpers -------------------------------------------------------------------------------
def config(engine, redis=None, **over):
    keys = {"engine": engine, "default_ttl": "20", "max_ttl": "40", "command_ttl": "5s",
            "lock_grace": "1s", "gc_interval": "30s"}
    if engine == "redis":
        keys["redis_url"] = (redis or REDIS).url
    keys.update(over)
    return "ephemeral:\n" + "".join("  %s: %s\n" % kv for kv in keys.items())


def call(server, method, path, body=None, key=harness.DEFAULT):
    try:
        return server.request(method, path, body, key=key)
    except (http.client.HTTPException, OSError) as ex:
        raise AssertionError("%s %s: connection dropped (%r); server %s" % (
            method, path, ex, "alive" if server.alive() else
            "DIED with %s" % server.proc.returncode))


def create(tc, server, **body):
    r = call(server, "POST", "/v1/ephemeral", body)
    tc.assertEqual(r.status, 201, r.raw[:300])
    return r.json


def get(server, sid):
    return call(server, "GET", "/v1/ephemeral/" + sid)


def view(tc, server, sid):
    r = get(server, sid)
    tc.assertEqual(r.status, 200, r.raw[:300])
    d = dict(r.json)
    d.pop("last_used_at")
    return d


def gone(server, sid):
    r = get(server, sid)
    if r.status == 404:
        assert_error(r, 404, "not_found")
        return True
    return False


def sleep_until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def metrics(server):
    r = server.request("GET", "/metrics", key=None)
    out = {}
    for ln in r.raw.decode("utf-8").splitlines():
        if ln and not ln.startswith("#"):
            name, _, val = ln.rpartition(" ")
            out[name] = float(val)
    return out


def evicted(server, sids, timeout=6.0):
    """{scope: evicted event data} for the given scopes, waiting until all are there."""
    want = set(sids)
    got = {}
    st = SSE(server, query="?after=0")
    deadline = time.monotonic() + timeout
    try:
        while not want <= set(got) and time.monotonic() < deadline:
            ev = st.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                break
            d = ev["data"]
            if isinstance(d, dict) and d.get("type") == "ephemeral.evicted":
                got[d["scope"]] = d
    finally:
        st.close()
    return got


def sqlite_rows(server):
    """{id: context (parsed)} in <data_dir>/ephemeral.db. charter holds the file's lock
    (locking_mode=EXCLUSIVE), so it is read as an immutable snapshot."""
    path = os.path.join(server.dir, "ephemeral.db")
    if not os.path.exists(path):
        raise AssertionError("no %s while serving" % path)
    c = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)
    try:
        return {i: json.loads(t) for i, t in c.execute("SELECT id, context FROM scope")}
    finally:
        c.close()


# ---- the suite, once per engine ---------------------------------------------------------------
class EngineSuite:
    engine = None
    redis = None

    @classmethod
    def setUpClass(cls):
        cls.srv = harness.Server(config=config(cls.engine, cls.redis))

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def stored(self, sid):
        """The context the engine holds for sid (parsed), None when it holds none, or
        NotImplemented when the engine is in process memory."""
        if self.engine == "sqlite":
            return sqlite_rows(self.srv).get(sid)
        if self.engine == "redis":
            v = (self.redis or REDIS).cmd("GET", PREFIX + sid)
            return None if v is None else json.loads(v)
        return NotImplemented

    def assert_stored(self, sid, ctx):
        got = self.stored(sid)
        if got is not NotImplemented:
            self.assertEqual(got, ctx, "%s engine holds %r for %s" % (self.engine, got, sid))

    def assert_not_stored(self, sid):
        got = self.stored(sid)
        if got is not NotImplemented:
            self.assertIsNone(got, "%s engine still holds %s" % (self.engine, sid))

    # ---- core behaviours ----
    def test_create_read_write_delete(self):
        ctx = {"branch": "fix-142", "n": [1, 2, {"x": "é"}]}
        s = create(self, self.srv, agent="eng", context=ctx)
        self.assertEqual((s["flow"], s["ttl"], s["context"]), ("scoped", 20, ctx))
        self.assert_stored(s["id"], ctx)
        self.assertEqual(view(self, self.srv, s["id"])["context"], ctx)
        P = "/v1/ephemeral/" + s["id"]
        r = call(self.srv, "PATCH", P, {"context": {"n": None, "m": {"deep": True}}})
        self.assertEqual(r.status, 200, r.raw)
        ctx = {"branch": "fix-142", "m": {"deep": True}}
        self.assertEqual(r.json["context"], ctx)
        self.assert_stored(s["id"], ctx)
        for k, v in (("a/b c", [1]), ("ключ", "значение"), ("k", None)):
            r = call(self.srv, "PUT", "%s/context/%s" % (P, q(k)), {"value": v})
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual((r.json["key"], r.json["value"]), (k, v))
            ctx[k] = v
            r = call(self.srv, "GET", "%s/context/%s" % (P, q(k)))
            self.assertEqual(r.json, {"key": k, "value": v})
        self.assert_stored(s["id"], ctx)
        self.assertEqual(view(self, self.srv, s["id"])["context"], ctx)
        assert_error(call(self.srv, "GET", P + "/context/nope"), 404, "not_found", field="key")
        r = call(self.srv, "DELETE", P)
        self.assertEqual(r.json, {"id": s["id"], "purged": True})
        self.assertTrue(gone(self.srv, s["id"]))
        self.assert_not_stored(s["id"])
        self.assertEqual(evicted(self.srv, [s["id"]])[s["id"]]["reason"], "purged")

    def test_memory_flows_never_in_the_engine(self):
        for flow in ("command", "secure"):
            s = create(self, self.srv, agent="eng", flow=flow, context={"f": flow})
            P = "/v1/ephemeral/" + s["id"]
            assert_status(call(self.srv, "PUT", P + "/context/k", {"value": 1}), 200)
            assert_status(call(self.srv, "PATCH", P, {"context": {"j": 2}}), 200)
            self.assertEqual(view(self, self.srv, s["id"])["context"], {"f": flow, "k": 1, "j": 2})
            self.assert_not_stored(s["id"])
            assert_status(call(self.srv, "DELETE", P), 200)

    def test_lock(self):
        sess = self.srv.create_session(user="u", agent="eng")["id"]
        s = create(self, self.srv, agent="eng", context={"x": 1})
        P = "/v1/ephemeral/" + s["id"]
        assert_status(call(self.srv, "POST", P + "/lock"), 200)
        before = view(self, self.srv, s["id"])
        for m, p, b in (("PATCH", P, {"context": {"x": 2}}),
                        ("PUT", P + "/context/x", {"value": 2}),
                        ("POST", P + "/extend", {"ttl": 5}),
                        ("POST", P + "/complete", {"session": sess, "keys": ["x"]}),
                        ("DELETE", P, None), ("POST", P + "/lock", None)):
            with self.subTest(method=m, path=p):
                assert_error(call(self.srv, m, p, b), 423, "scope_locked")
        self.assertEqual(call(self.srv, "GET", P + "/context/x").json, {"key": "x", "value": 1})
        self.assertEqual(view(self, self.srv, s["id"]), before)
        self.assert_stored(s["id"], {"x": 1})
        self.assertEqual(self.srv.facts(sess), {})
        assert_status(call(self.srv, "POST", P + "/unlock"), 200)
        assert_error(call(self.srv, "POST", P + "/unlock"), 409, "invalid_state", state="unlocked")
        assert_status(call(self.srv, "PUT", P + "/context/x", {"value": 3}), 200)
        self.assert_stored(s["id"], {"x": 3})
        assert_status(call(self.srv, "DELETE", P), 200)

    def test_expiry_and_idle(self):
        a = create(self, self.srv, agent="eng", ttl=0.4, context={"a": 1})
        b = create(self, self.srv, agent="eng", ttl=20, idle_ttl=0.4, context={"b": 1})
        c = create(self, self.srv, agent="eng", ttl=0.4, flow="command", context={"c": 1})
        self.assert_stored(a["id"], {"a": 1})
        self.assert_stored(b["id"], {"b": 1})
        sleep_until(parse_ts(a["expires_at"]) + 0.7)
        # the timers ended them and cleared the engine (before any request looks)
        for s in (a, b, c):
            self.assert_not_stored(s["id"])
        ev = evicted(self.srv, [a["id"], b["id"], c["id"]], timeout=0.5)
        self.assertEqual([ev.get(s["id"], {}).get("reason") for s in (a, b, c)],
                         ["expired", "idle", "expired"])
        self.assertEqual([ev[s["id"]]["flow"] for s in (a, b, c)], ["scoped", "scoped", "command"])
        for s in (a, b, c):
            self.assertTrue(gone(self.srv, s["id"]), s)

    def test_agent_exit(self):
        mine = [create(self, self.srv, agent="leaver", flow=f, context={"f": f})
                for f in ("scoped", "scoped", "command", "secure")]
        assert_status(call(self.srv, "POST", "/v1/ephemeral/%s/lock" % mine[0]["id"]), 200)
        stay = create(self, self.srv, agent="stayer", context={"s": 1})
        r = call(self.srv, "DELETE", "/v1/agents/leaver/ephemeral")
        self.assertEqual(r.json, {"agent": "leaver", "purged": 4})
        for s in mine:
            self.assertTrue(gone(self.srv, s["id"]))
            self.assert_not_stored(s["id"])
        self.assert_stored(stay["id"], {"s": 1})
        self.assertEqual(view(self, self.srv, stay["id"])["context"], {"s": 1})
        ev = evicted(self.srv, [s["id"] for s in mine])
        self.assertEqual({ev[s["id"]]["reason"] for s in mine}, {"agent_exited"})
        assert_status(call(self.srv, "DELETE", "/v1/ephemeral/" + stay["id"]), 200)

    def test_complete(self):
        sess = self.srv.create_session(user="u", agent="eng")["id"]
        s = create(self, self.srv, agent="eng", context={"a": {"v": [1]}, "b": "two", "c": 3})
        P = "/v1/ephemeral/%s/complete" % s["id"]
        before = view(self, self.srv, s["id"])
        assert_error(call(self.srv, "POST", P, {"session": sess, "keys": ["a", "zz"]}), 422,
                     "invalid_value", field="keys[1]")
        assert_error(call(self.srv, "POST", P, {"keys": ["a"]}), 400, "missing_field",
                     field="session")
        self.assertEqual(view(self, self.srv, s["id"]), before)
        self.assert_stored(s["id"], before["context"])
        self.assertEqual(self.srv.facts(sess), {})
        r = call(self.srv, "POST", P, {"session": sess, "keys": ["a", "b"]})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["purged"], r.json["locked"], sorted(r.json["transferred"])),
                         (True, False, ["a", "b"]))
        self.assertEqual(self.srv.facts(sess), {"a": {"v": [1]}, "b": "two"})
        self.assertTrue(gone(self.srv, s["id"]))
        self.assert_not_stored(s["id"])

    def test_upgrade(self):
        s = create(self, self.srv, agent="eng", flow="command", context={"argv": ["make", "-j2"]})
        self.assertEqual((s["flow"], s["ttl"]), ("command", 5))
        self.assert_not_stored(s["id"])
        r = call(self.srv, "POST", "/v1/ephemeral/%s/upgrade" % s["id"])
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual((r.json["flow"], r.json["ttl"], r.json["context"]),
                         ("scoped", 20, {"argv": ["make", "-j2"]}))
        self.assert_stored(s["id"], {"argv": ["make", "-j2"]})
        assert_status(call(self.srv, "PUT", "/v1/ephemeral/%s/context/k" % s["id"],
                           {"value": 1}), 200)
        self.assert_stored(s["id"], {"argv": ["make", "-j2"], "k": 1})
        assert_error(call(self.srv, "POST", "/v1/ephemeral/%s/upgrade" % s["id"]), 409,
                     "invalid_state", state="scoped")
        self.assertEqual(view(self, self.srv, s["id"])["context"],
                         {"argv": ["make", "-j2"], "k": 1})
        assert_status(call(self.srv, "DELETE", "/v1/ephemeral/" + s["id"]), 200)
        self.assert_not_stored(s["id"])


class Memory(EngineSuite, unittest.TestCase):
    engine = "memory"


class Sqlite(EngineSuite, unittest.TestCase):
    engine = "sqlite"

    def test_file_while_serving(self):
        path = os.path.join(self.srv.dir, "ephemeral.db")
        self.assertTrue(os.path.isfile(path))
        s = create(self, self.srv, agent="file", context={"needle": "in the file"})
        self.assertEqual(sqlite_rows(self.srv)[s["id"]], {"needle": "in the file"})
        with open(path, "rb") as f:
            self.assertIn(b'"needle":"in the file"', f.read())
        assert_status(call(self.srv, "DELETE", "/v1/ephemeral/" + s["id"]), 200)
        self.assertNotIn(s["id"], sqlite_rows(self.srv))

    def test_restart_recreates_the_file(self):
        rs = harness.Server(config=config("sqlite"))
        try:
            s = create(self, rs, agent="r", context={"old": "run"})
            self.assertIn(s["id"], sqlite_rows(rs))
            self.assertEqual(rs.stop(), 0)
            # whatever a previous run left (even garbage) is replaced at start
            path = os.path.join(rs.dir, "ephemeral.db")
            with open(path, "wb") as f:
                f.write(b"not a database" * 100)
            with open(path + "-journal", "wb") as f:
                f.write(b"junk")
            rs.start()
            self.assertTrue(os.path.isfile(path))
            self.assertEqual(sqlite_rows(rs), {})
            self.assertFalse(os.path.exists(path + "-journal"))
            self.assertTrue(gone(rs, s["id"]), "a scope survived the restart")
            t = create(self, rs, agent="r", context={"new": "run"})
            self.assertEqual(sqlite_rows(rs), {t["id"]: {"new": "run"}})
        finally:
            rs.stop()


class Redis(EngineSuite, unittest.TestCase):
    engine = "redis"

    def test_keys_and_backstop(self):
        s = create(self, self.srv, agent="rk", ttl=10, context={"v": "in redis"})
        key = PREFIX + s["id"]
        self.assertEqual(json.loads(REDIS.cmd("GET", key)), {"v": "in redis"})
        self.assertEqual(REDIS.cmd("TYPE", key), "string")
        pttl = REDIS.cmd("PTTL", key)
        left = (parse_ts(s["expires_at"]) - time.time()) * 1000
        self.assertGreater(pttl, 0)
        self.assertGreaterEqual(pttl, left, "the backstop TTL ends before the scope")
        # an expiring scope's key goes with it
        e = create(self, self.srv, agent="rk", ttl=0.4, context={"v": 1})
        self.assertEqual(REDIS.cmd("EXISTS", PREFIX + e["id"]), 1)
        sleep_until(parse_ts(e["expires_at"]) + 0.7)
        self.assertEqual(REDIS.cmd("EXISTS", PREFIX + e["id"]), 0)
        assert_status(call(self.srv, "DELETE", "/v1/ephemeral/" + s["id"]), 200)
        self.assertEqual(REDIS.cmd("EXISTS", key), 0)

    def test_upgrade_backstop(self):
        """After an upgrade the Redis key lives at least as long as the scope: the
        context is still there when the scope is read near its (new) deadline."""
        rd = private_redis()
        small = harness.Server(config=config("redis", rd, lock_grace="200ms",
                                             gc_interval="300ms"))
        try:
            s = create(self, small, agent="up", flow="command", ttl=0.3,
                       context={"k": "must survive"})
            r = call(small, "POST", "/v1/ephemeral/%s/upgrade" % s["id"], {"ttl": 6})
            self.assertEqual(r.status, 200, r.raw)
            left = (parse_ts(r.json["expires_at"]) - time.time()) * 1000
            pttl = rd.cmd("PTTL", PREFIX + s["id"])
            self.assertGreaterEqual(pttl, left - 50, "after upgrade the Redis key expires "
                                    "%.1f s before the scope" % ((left - pttl) / 1000))
            sleep_until(parse_ts(s["created_at"]) + 3.0)
            r = get(small, s["id"])
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual(r.json["context"], {"k": "must survive"},
                             "an upgraded scope lost its context while alive")
        finally:
            small.stop()

    def test_leftovers_removed_at_start(self):
        rd = private_redis()
        rd.cmd("SET", PREFIX + "eph_01JD3V6Y7C8X9Q2W5E4R3T2Y1A", '{"stale":1}')
        rd.cmd("SET", PREFIX + "anything", "x", "PX", "600000")
        rd.cmd("SET", "other:key", "kept")
        rd.cmd("SET", "charter:other", "kept too")
        rs = harness.Server(config=config("redis", rd))
        try:
            keys = sorted(k.decode() for k in rd.cmd("KEYS", "*"))
            self.assertEqual(keys, ["charter:other", "other:key"])
            # a run that crashed leaves its keys (until the backstop) ...
            s = create(self, rs, agent="crash", ttl=30, context={"left": "behind"})
            rs.kill9()
            self.assertEqual(json.loads(rd.cmd("GET", PREFIX + s["id"])), {"left": "behind"})
            # ... and the next start removes them
            rs.start()
            self.assertEqual(rd.cmd("EXISTS", PREFIX + s["id"]), 0)
            self.assertEqual(rd.cmd("GET", "other:key"), b"kept")
            self.assertTrue(gone(rs, s["id"]), "a scope survived the restart")
            t = create(self, rs, agent="crash", context={"new": 1})
            self.assertEqual(rd.cmd("EXISTS", PREFIX + t["id"]), 1)
        finally:
            rs.stop()

    def test_redis_down(self):
        rd = private_redis()
        rs = harness.Server(config=config("redis", rd))
        try:
            a, b, c = (create(self, rs, agent="down", context={"n": i}) for i in range(3))
            cmd = create(self, rs, agent="down", flow="command", context={"cmd": 1})
            sec = create(self, rs, agent="down", flow="secure", context={"sec": 1})
            m0 = metrics(rs)
            rd.stop()
            assert_error(get(rs, a["id"]), 503, "unavailable")
            assert_error(call(rs, "PUT", "/v1/ephemeral/%s/context/k" % b["id"], {"value": 1}),
                         503, "unavailable")
            assert_error(call(rs, "PATCH", "/v1/ephemeral/" + c["id"], {"context": {"k": 1}}),
                         503, "unavailable")
            assert_error(call(rs, "POST", "/v1/ephemeral", {"agent": "down"}), 503, "unavailable")
            self.assertTrue(rs.alive())
            # memory flows do not need Redis
            self.assertEqual(view(self, rs, cmd["id"])["context"], {"cmd": 1})
            self.assertEqual(view(self, rs, sec["id"])["context"], {"sec": 1})
            # purge_on_error: the scopes the failures hit have ended, reason error
            for s in (a, b, c):
                self.assertTrue(gone(rs, s["id"]))
            ev = evicted(rs, [a["id"], b["id"], c["id"]])
            for s in (a, b, c):
                self.assertEqual((ev[s["id"]]["reason"], ev[s["id"]]["flow"]), ("error", "scoped"))
            m1 = metrics(rs)
            self.assertEqual(m1['charter_scope_evictions_total{reason="error"}']
                             - m0['charter_scope_evictions_total{reason="error"}'], 3)
            self.assertEqual(m1['charter_scopes{flow="scoped"}'],
                             m0['charter_scopes{flow="scoped"}'] - 3)
            # Redis back: new scopes work again
            rd.start()
            s = create(self, rs, agent="down", context={"back": True})
            self.assertEqual(json.loads(rd.cmd("GET", PREFIX + s["id"])), {"back": True})
            assert_status(call(rs, "PUT", "/v1/ephemeral/%s/context/k" % s["id"], {"value": 2}),
                          200)
            self.assertEqual(view(self, rs, s["id"])["context"], {"back": True, "k": 2})
            r = call(rs, "POST", "/v1/ephemeral/%s/upgrade" % cmd["id"])
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual(json.loads(rd.cmd("GET", PREFIX + cmd["id"])), {"cmd": 1})
        finally:
            rs.stop()

    def test_redis_down_without_purge(self):
        rd = private_redis()
        rs = harness.Server(config=config("redis", rd, purge_on_error="false"))
        try:
            a = create(self, rs, agent="down", context={"n": 1})
            rd.stop()
            for _ in range(2):
                assert_error(get(rs, a["id"]), 503, "unavailable")
            assert_error(call(rs, "PUT", "/v1/ephemeral/%s/context/k" % a["id"], {"value": 1}),
                         503, "unavailable")
            self.assertEqual(evicted(rs, [a["id"]], timeout=1.0), {})
            self.assertEqual(metrics(rs)['charter_scope_evictions_total{reason="error"}'], 0)
            assert_status(call(rs, "DELETE", "/v1/ephemeral/" + a["id"]), 200)
            self.assertTrue(rs.alive())
        finally:
            rs.stop()


if __name__ == "__main__":
    harness.main()
