"""test_cli_scopes.py — `charter scope <verb>` against a real server: every verb with
--json compared with the HTTP API (create with --set/--context, get, get KEY, set,
merge, lock, unlock, extend, upgrade, complete, delete, purge-agent), keys and agents
percent-encoded in paths, the error path (exit 1 with the server's message), usage
errors (exit 64); and `charter scope top`, whose --once frame (text and --json) must
match the scopes created and evicted on a private server and its own GET /metrics,
and whose live mode reports eviction rates and ends cleanly on Ctrl-C."""

import calendar
import http.server
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_status, q  # noqa: E402

srv = None
EPH_RE = re.compile(r"^eph_[0-9A-Za-z]{26}$")
UNKNOWN_EPH = "eph_00000000000000000000000000"
TIME_FMT = "%Y-%m-%dT%H:%M:%S"


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


def cli(*args, key=harness.DEFAULT, server=None, timeout=30):
    server = server or srv
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["CHARTER_URL"] = server.url
    if key is harness.DEFAULT:
        key = server.key
    if key is not None:
        env["CHARTER_KEY"] = key
    p = subprocess.run([harness.charter_bin()] + list(args), capture_output=True, text=True,
                       env=env, timeout=timeout)
    if harness.SANITIZER_RE.search(p.stderr):
        raise AssertionError("sanitizer report from charter %s:\n%s" % (" ".join(args), p.stderr))
    return p


def cli_json(tc, *args, **kw):
    """Runs charter with --json (before "--" when there is one); expects exit 0."""
    args = list(args)
    if "--" in args:
        args.insert(args.index("--"), "--json")
    else:
        args.append("--json")
    p = cli(*args, **kw)
    tc.assertEqual(p.returncode, 0, "charter %s: rc %d\nstdout: %s\nstderr: %s"
                   % (" ".join(args), p.returncode, p.stdout, p.stderr))
    try:
        return json.loads(p.stdout)
    except ValueError:
        tc.fail("charter %s --json printed no JSON: %r" % (" ".join(args), p.stdout[:500]))


def cli_fail(tc, *args, rc=1, **kw):
    """Runs charter and expects exit rc; returns stderr."""
    p = cli(*args, **kw)
    tc.assertEqual(p.returncode, rc, "charter %s: rc %d\nstdout: %s\nstderr: %s"
                   % (" ".join(args), p.returncode, p.stdout, p.stderr))
    tc.assertEqual(p.stdout, "", "nothing on stdout on failure")
    return p.stderr


def on_tty(tc, *args, server=None, key=harness.DEFAULT):
    """Runs charter with stdout on a pseudo-terminal; returns what it printed."""
    server = server or srv
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["CHARTER_URL"] = server.url
    if key is harness.DEFAULT:
        key = server.key
    if key is not None:
        env["CHARTER_KEY"] = key
    p = subprocess.Popen([harness.charter_bin()] + list(args), stdout=slave,
                         stderr=subprocess.PIPE, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    err = p.stderr.read().decode("utf-8", "replace")
    p.stderr.close()
    if harness.SANITIZER_RE.search(err):
        raise AssertionError("sanitizer report from charter %s:\n%s" % (" ".join(args), err))
    tc.assertEqual(p.wait(30), 0, err)
    return out.decode("utf-8", "replace").replace("\r\n", "\n")


def api_scope(server, sid):
    return server.request("GET", "/v1/ephemeral/" + sid)


def epoch(text):
    """RFC 3339 UTC with milliseconds → seconds since the epoch."""
    base, ms = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(base, TIME_FMT)) + int(ms) / 1000.0


class ScopeVerbs(unittest.TestCase):
    def create(self, *args):
        s = cli_json(self, "scope", "create", *args)
        self.assertRegex(s["id"], EPH_RE)
        return s

    def test_create_with_set_and_get(self):
        s = self.create("--agent", "planner-7", "--ttl", "30s", "--idle-ttl", "5m",
                        "--flow", "scoped", "--auto-extend", "--set", "branch=fix-142",
                        "--set", "n=3", "--set", "ok=true", "--set", 'obj={"a":[1,2]}',
                        "--set", "none=null", "--set", "text=hello world",
                        "--set", "num_text=3 apples")
        self.assertEqual(s["agent_id"], "planner-7")
        self.assertEqual(s["flow"], "scoped")
        self.assertEqual(s["ttl"], 30)
        self.assertEqual(s["idle_ttl"], 300)
        self.assertIs(s["auto_extend"], True)
        self.assertIs(s["locked"], False)
        self.assertEqual(s["context"], {"branch": "fix-142", "n": 3, "ok": True,
                                        "obj": {"a": [1, 2]}, "none": None,
                                        "text": "hello world", "num_text": "3 apples"})
        # get: the server's JSON, as the API returns it
        got = cli_json(self, "scope", "get", s["id"])
        api = assert_status(api_scope(srv, s["id"]), 200)
        for k in ("id", "agent_id", "flow", "created_at", "ttl", "idle_ttl", "context"):
            self.assertEqual(got[k], api[k], k)
        # get ID KEY: one key
        self.assertEqual(cli_json(self, "scope", "get", s["id"], "obj"),
                         {"key": "obj", "value": {"a": [1, 2]}})
        self.assertEqual(cli_json(self, "scope", "get", s["id"], "branch"),
                         {"key": "branch", "value": "fix-142"})

    def test_create_with_context_and_defaults(self):
        s = self.create("--agent", "a1", "--context", '{"k": {"deep": [1, "x"]}, "z": 0.1}')
        self.assertEqual(s["context"], {"k": {"deep": [1, "x"]}, "z": 0.1})
        self.assertEqual(s["flow"], "scoped")
        self.assertEqual(s["ttl"], 600)                       # ephemeral.default_ttl
        self.assertEqual(s["idle_ttl"], 0)
        self.assertIs(s["auto_extend"], False)
        c = self.create("--agent", "a1", "--flow", "command")
        self.assertEqual(c["flow"], "command")
        self.assertEqual(c["ttl"], 60)                        # ephemeral.command_ttl
        self.assertEqual(c["context"], {})
        # seconds as a number (fractions too) or a duration string
        self.assertEqual(self.create("--agent", "a1", "--ttl", "0.5")["ttl"], 0.5)
        self.assertEqual(self.create("--agent", "a1", "--ttl", "1500ms")["ttl"], 1.5)
        self.assertEqual(self.create("--agent", "a1", "--ttl", "90")["ttl"], 90)
        self.assertEqual(self.create("--agent", "a1", "--idle-ttl", "0")["idle_ttl"], 0)

    def test_set_key_percent_encoded(self):
        s = self.create("--agent", "a2")
        for key, value, want in [("plain", "42", 42), ("a/b c?d#e%f", '{"x":1}', {"x": 1}),
                                 ("ünï", "text", "text"), ("q", '"quoted"', "quoted"),
                                 ("neg", "-5", -5)]:
            args = ["scope", "set", s["id"], key, value]
            if value.startswith("-"):
                args = ["scope", "set", "--", s["id"], key, value]
            r = cli_json(self, *args)
            self.assertEqual(r["key"], key)
            self.assertEqual(r["value"], want)
            self.assertIn("expires_at", r)
            api = assert_status(srv.request("GET", "/v1/ephemeral/%s/context/%s"
                                            % (s["id"], q(key))), 200)
            self.assertEqual(api, {"key": key, "value": want})
            self.assertEqual(cli_json(self, "scope", "get", s["id"], key),
                             {"key": key, "value": want})
        ctx = assert_status(api_scope(srv, s["id"]), 200)["context"]
        self.assertEqual(set(ctx), {"plain", "a/b c?d#e%f", "ünï", "q", "neg"})

    def test_merge(self):
        s = self.create("--agent", "a3", "--set", "a=1", "--set", "b=2", "--set", "c=3")
        m = cli_json(self, "scope", "merge", s["id"], "--context", '{"a": null, "b": "two", "d": [4]}')
        self.assertEqual(m["context"], {"b": "two", "c": 3, "d": [4]})
        m = cli_json(self, "scope", "merge", s["id"], "--set", "c=null", "--set", "e=5")
        self.assertEqual(m["context"], {"b": "two", "d": [4], "e": 5})
        self.assertEqual(assert_status(api_scope(srv, s["id"]), 200)["context"], m["context"])

    def test_lock_unlock_and_refusals(self):
        s = self.create("--agent", "a4", "--set", "k=1")
        locked = cli_json(self, "scope", "lock", s["id"])
        self.assertIs(locked["locked"], True)
        self.assertIs(assert_status(api_scope(srv, s["id"]), 200)["locked"], True)

        # lock twice: exit 1 and the server's message
        err = cli_fail(self, "scope", "lock", s["id"])
        self.assertIn("locked", err)
        self.assertTrue(err.startswith("charter: scope_locked: "), err)
        # every change is refused while locked; reads still work
        for args in (["set", s["id"], "k", "2"], ["merge", s["id"], "--set", "k=2"],
                     ["extend", s["id"], "--ttl", "60"], ["delete", s["id"]],
                     ["complete", s["id"]]):
            err = cli_fail(self, "scope", *args)
            self.assertIn("scope_locked", err, args)
        self.assertEqual(cli_json(self, "scope", "get", s["id"], "k")["value"], 1)

        unlocked = cli_json(self, "scope", "unlock", s["id"])
        self.assertIs(unlocked["locked"], False)
        err = cli_fail(self, "scope", "unlock", s["id"])
        self.assertIn("charter: invalid_state: ", err)
        self.assertIn("(state: unlocked)", err)

    def test_extend_and_upgrade(self):
        c = self.create("--agent", "a5", "--flow", "command", "--set", "x=1")
        u = cli_json(self, "scope", "upgrade", c["id"], "--ttl", "2m")
        self.assertEqual(u["flow"], "scoped")
        self.assertEqual(u["ttl"], 120)
        self.assertEqual(u["context"], {"x": 1})
        err = cli_fail(self, "scope", "upgrade", c["id"])
        self.assertIn("invalid_state", err)
        self.assertIn("(state: scoped)", err)
        # upgrade without --ttl: ephemeral.default_ttl
        c2 = self.create("--agent", "a5", "--flow", "command")
        self.assertEqual(cli_json(self, "scope", "upgrade", c2["id"])["ttl"], 600)

        e = cli_json(self, "scope", "extend", c["id"], "--ttl", "90")
        left = epoch(e["expires_at"]) - epoch(e["last_used_at"])
        self.assertAlmostEqual(left, 90, delta=1)
        err = cli_fail(self, "scope", "extend", c["id"], "--ttl", "2h")   # past max_ttl
        self.assertIn("invalid_value", err)
        self.assertIn("(field: ttl)", err)

    def test_complete(self):
        sess = srv.create_session(user="scope_cli", agent="a6")["id"]
        s = self.create("--agent", "a6", "--set", "a=1", "--set", 'b={"c":true}',
                        "--set", "keep=x")
        # a key the context lacks: refused, nothing written, scope untouched
        err = cli_fail(self, "scope", "complete", s["id"], "--session", sess,
                       "--key", "a", "--key", "nope")
        self.assertIn("invalid_value", err)
        self.assertIn("(field: keys[1])", err)
        assert_status(api_scope(srv, s["id"]), 200)
        self.assertEqual(srv.facts(sess), {})

        r = cli_json(self, "scope", "complete", s["id"], "--session", sess, "--key", "a",
                     "--key", "b")
        self.assertEqual(r, {"id": s["id"], "session": sess, "transferred": ["a", "b"],
                             "purged": True, "locked": False})
        self.assertEqual(srv.facts(sess), {"a": 1, "b": {"c": True}})
        harness.assert_error(api_scope(srv, s["id"]), 404, "not_found")

        # nothing to transfer: just purged
        s2 = self.create("--agent", "a6")
        self.assertEqual(cli_json(self, "scope", "complete", s2["id"]),
                         {"id": s2["id"], "session": None, "transferred": [],
                          "purged": True, "locked": False})

        # a secure scope is locked instead, unless --transfer-secrets
        sec = self.create("--agent", "a6", "--flow", "secure", "--set", "n=7")
        r = cli_json(self, "scope", "complete", sec["id"], "--session", sess, "--key", "n")
        self.assertEqual((r["purged"], r["locked"], r["transferred"]), (False, True, []))
        self.assertIs(assert_status(api_scope(srv, sec["id"]), 200)["locked"], True)
        cli_json(self, "scope", "unlock", sec["id"])
        r = cli_json(self, "scope", "complete", sec["id"], "--session", sess, "--key", "n",
                     "--transfer-secrets")
        self.assertEqual((r["purged"], r["locked"], r["transferred"]), (True, False, ["n"]))
        self.assertEqual(srv.facts(sess)["n"], 7)

    def test_complete_transfers_secret_strings(self):
        """A secure scope's strings reach the facts intact: they are copied before the
        scope's own context is wiped."""
        sess = srv.create_session(user="scope_cli_secret", agent="a6")["id"]
        sec = self.create("--agent", "a6", "--flow", "secure", "--set", "tok=abc")
        r = cli_json(self, "scope", "complete", sec["id"], "--session", sess, "--key", "tok",
                     "--transfer-secrets")
        self.assertEqual(r["transferred"], ["tok"])
        self.assertEqual(srv.facts(sess), {"tok": "abc"})

    def test_unknown_scope_on_a_fresh_server(self):
        """An unknown id on a server that never held a scope is a plain not-found."""
        fresh = harness.Server()
        self.addCleanup(fresh.stop)
        err = cli_fail(self, "scope", "get", UNKNOWN_EPH, server=fresh)
        self.assertTrue(err.startswith("charter: not_found: "), err)
        self.assertTrue(fresh.alive())

    def test_delete_and_purge_agent(self):
        s = self.create("--agent", "a7")
        self.assertEqual(cli_json(self, "scope", "delete", s["id"]),
                         {"id": s["id"], "purged": True})
        harness.assert_error(api_scope(srv, s["id"]), 404, "not_found")
        err = cli_fail(self, "scope", "delete", s["id"])
        self.assertIn("charter: not_found: ", err)

        agent = "agent/with space?&#%"
        ids = [self.create("--agent", agent)["id"] for _ in range(3)]
        other = self.create("--agent", "agent")["id"]
        cli_json(self, "scope", "lock", ids[0])           # locked or not, all end
        self.assertEqual(cli_json(self, "scope", "purge-agent", agent),
                         {"agent": agent, "purged": 3})
        for sid in ids:
            harness.assert_error(api_scope(srv, sid), 404, "not_found")
        assert_status(api_scope(srv, other), 200)
        self.assertEqual(cli_json(self, "scope", "purge-agent", agent),
                         {"agent": agent, "purged": 0})

    def test_server_errors_are_reported(self):
        gone = self.create("--agent", "a8")["id"]
        cli_json(self, "scope", "delete", gone)
        err = cli_fail(self, "scope", "get", gone)
        self.assertTrue(err.startswith("charter: not_found: "), err)
        s = self.create("--agent", "a8")
        err = cli_fail(self, "scope", "get", s["id"], "missing")
        self.assertIn("not_found", err)
        self.assertIn("(field: key)", err)
        err = cli_fail(self, "scope", "create", "--agent", "a8", "--ttl", "5h")
        self.assertIn("invalid_value", err)
        self.assertIn("(field: ttl)", err)
        err = cli_fail(self, "scope", "get", s["id"], key=None)
        self.assertIn("CHARTER_KEY", err)
        p = cli("scope", "get", s["id"], "--url", "http://127.0.0.1:1")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("cannot reach", p.stderr)

    def test_usage_errors(self):
        cases = [
            ["scope"],
            ["scope", "frob"],
            ["scope", "create"],                                     # no --agent
            ["scope", "create", "--agent", "a", "--ttl", "5x"],
            ["scope", "create", "--agent", "a", "--ttl", "-1"],
            ["scope", "create", "--agent", "a", "--flow", "fast"],
            ["scope", "create", "--agent", "a", "--context", "[1]"],
            ["scope", "create", "--agent", "a", "--context", "{"],
            ["scope", "create", "--agent", "a", "--context", "{}", "--set", "a=1"],
            ["scope", "create", "--agent", "a", "--set", "novalue"],
            ["scope", "create", "--agent", ""],
            ["scope", "get"],
            ["scope", "get", UNKNOWN_EPH, "k", "extra"],
            ["scope", "set", UNKNOWN_EPH, "k"],
            ["scope", "merge", UNKNOWN_EPH],
            ["scope", "extend", UNKNOWN_EPH],
            ["scope", "lock", UNKNOWN_EPH, "--ttl", "5s"],
            ["scope", "complete"],
            ["scope", "purge-agent"],
            ["scope", "top", "--interval", "10ms"],
            ["scope", "top", "--interval", "soon"],
            ["scope", "top", "extra"],
        ]
        for args in cases:
            with self.subTest(args=args):
                p = cli(*args)
                self.assertEqual(p.returncode, 64, "%s: %s" % (args, p.stderr))
                self.assertTrue(p.stderr.startswith("charter: "), p.stderr)

    def test_help_lists_every_verb(self):
        verbs = ["create", "get", "set", "merge", "lock", "unlock", "extend", "upgrade",
                 "complete", "delete", "purge-agent", "top"]
        p = cli("scope", "--help")
        self.assertEqual(p.returncode, 0)
        for v in verbs:
            self.assertRegex(p.stdout, r"(?m)^  %s\b" % re.escape(v))
        top = cli("--help")
        self.assertEqual(top.returncode, 0)
        self.assertRegex(top.stdout, r"(?m)^  scope\s")
        for v in verbs:
            self.assertIn(v, top.stdout)
        p = cli("scope", "create", "--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("usage: charter scope create --agent A", p.stdout)

    def test_piped_output_is_one_line_of_json(self):
        p = cli("scope", "create", "--agent", "pipe", "--set", "a=1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.count("\n"), 1)
        s = json.loads(p.stdout)
        p = cli("scope", "get", s["id"])
        self.assertEqual(p.stdout.count("\n"), 1)
        self.assertEqual(json.loads(p.stdout)["context"], {"a": 1})

    def test_terminal_output(self):
        """On a terminal: a table of the scope, then its context; nothing crashes."""
        sess = srv.create_session(user="scope_tty", agent="tty")["id"]
        out = on_tty(self, "scope", "create", "--agent", "tty-agent", "--idle-ttl", "5m",
                     "--set", "branch=fix-142", "--set", "n=3")
        self.assertRegex(out, r"(?m)^ID\s+AGENT\s+FLOW\s+EXPIRES IN\s+IDLE\s+LOCKED$")
        m = re.search(r"(?m)^(eph_\S+)\s+tty-agent\s+scoped\s+\S+\s+.* of 5m00s\s+no$", out)
        self.assertIsNotNone(m, out)
        sid = m.group(1)
        self.assertRegex(out, r"(?m)^KEY\s+VALUE$")
        self.assertRegex(out, r'(?m)^branch\s+"fix-142"$')
        self.assertRegex(out, r"(?m)^n\s+3$")
        out = on_tty(self, "scope", "lock", sid)
        self.assertRegex(out, r"(?m)^%s\s.*\syes$" % sid)
        on_tty(self, "scope", "unlock", sid)
        out = on_tty(self, "scope", "get", sid, "branch")
        self.assertRegex(out, r'(?m)^value:\s+"fix-142"$')
        out = on_tty(self, "scope", "set", sid, "k", "v")
        self.assertRegex(out, r"(?m)^expires_at:\s+\S+Z$")
        on_tty(self, "scope", "merge", sid, "--set", "k=null")
        on_tty(self, "scope", "extend", sid, "--ttl", "60")
        out = on_tty(self, "scope", "complete", sid, "--session", sess, "--key", "n")
        self.assertRegex(out, r"(?m)^transferred:\s+n$")
        c = cli_json(self, "scope", "create", "--agent", "tty-agent", "--flow", "command")
        out = on_tty(self, "scope", "upgrade", c["id"])
        self.assertIn("no context", out)
        out = on_tty(self, "scope", "delete", c["id"])
        self.assertEqual(out.strip(), "purged %s" % c["id"])
        out = on_tty(self, "scope", "purge-agent", "tty-agent")
        self.assertEqual(out.strip(), "purged 0 scopes of agent tty-agent")
        out = on_tty(self, "scope", "top", "--once")
        self.assertIn("live scopes", out)


# ---- scope top ------------------------------------------------------------------

def parse_metrics(text):
    """{(name, frozenset(labels)): value} of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(page, name, **labels):
    return page[(name, frozenset(labels.items()))]


def ttl_buckets(page):
    """[(le, per-bucket count)] of the TTL-remaining histogram, le ascending."""
    cum = []
    for (name, labels), v in page.items():
        if name == "charter_scope_ttl_remaining_seconds_bucket":
            le = dict(labels)["le"]
            cum.append((float("inf") if le == "+Inf" else float(le), v))
    cum.sort()
    return [(le, c - (cum[i - 1][1] if i else 0)) for i, (le, c) in enumerate(cum)]


class Top(unittest.TestCase):
    """Private servers, so that every number of the frame is known. `top` needs no
    key: it runs without one."""

    @classmethod
    def setUpClass(cls):
        cls.srv = harness.Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def top_json(self):
        return cli_json(self, "scope", "top", "--once", server=self.srv, key=None)

    def metrics(self):
        r = self.srv.request("GET", "/metrics", key=None)
        self.assertEqual(r.status, 200)
        return parse_metrics(r.raw.decode())

    def create(self, *args):
        return cli_json(self, "scope", "create", *args, server=self.srv)

    def test_frame_matches_the_scopes(self):
        # A server of its own (the other tests of the class evict on theirs), with a
        # short lock grace.
        shared = self.srv
        self.srv = harness.Server(env={"CHARTER_EPHEMERAL_LOCK_GRACE": "1s"})
        self.addCleanup(setattr, self, "srv", shared)
        self.addCleanup(self.srv.stop)

        # An empty server first: zeros, no quantiles, no rate.
        f = self.top_json()
        self.assertEqual(f["scopes"], {"command": 0, "scoped": 0, "secure": 0, "total": 0})
        self.assertEqual(f["evictions"]["total"], 0)
        self.assertIsNone(f["expiry_lateness"]["p50"])
        self.assertIsNone(f["eviction_rate"])

        # Live at the end: 2 scoped (55 s, one locked), 1 command (60 s), 1 secure
        # (200 s), 1 scoped (2000 s) holding context.
        a = self.create("--agent", "top-a", "--ttl", "55")["id"]
        self.create("--agent", "top-a", "--ttl", "55")
        cli_json(self, "scope", "lock", a, server=self.srv)
        self.create("--agent", "top-b", "--flow", "command")
        self.create("--agent", "top-b", "--flow", "secure", "--ttl", "200", "--set", "t=x")
        self.create("--agent", "top-b", "--ttl", "2000", "--set", "blob=" + "y" * 500)
        # Ended: purged 2 (delete, complete), agent_exited 2, idle 1, expired 2 (one of
        # them locked: it first gets 1 s of lock grace and counts as expiring).
        cli_json(self, "scope", "delete", self.create("--agent", "top-c")["id"],
                 server=self.srv)
        cli_json(self, "scope", "complete", self.create("--agent", "top-c")["id"],
                 server=self.srv)
        self.create("--agent", "top-gone")
        self.create("--agent", "top-gone", "--flow", "command")
        cli_json(self, "scope", "purge-agent", "top-gone", server=self.srv)
        self.create("--agent", "top-d", "--ttl", "60", "--idle-ttl", "300ms")
        self.create("--agent", "top-d", "--ttl", "300ms")
        lk = self.create("--agent", "top-d", "--ttl", "1500ms")["id"]
        cli_json(self, "scope", "lock", lk, server=self.srv)

        want_evictions = {"expired": 2, "idle": 1, "agent_exited": 2, "purged": 2,
                          "error": 0, "total": 7}
        deadline = time.monotonic() + 20
        while True:
            f = self.top_json()
            if f["evictions"] == want_evictions or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        page = self.metrics()
        self.assertEqual(f["evictions"], want_evictions)
        self.assertEqual(f["scopes"], {"command": 1, "scoped": 3, "secure": 1, "total": 5})
        self.assertEqual(f["locked"], 1)
        self.assertAlmostEqual(f["locked_ratio"], 0.2)
        self.assertEqual(f["expiring"], 1)
        self.assertEqual(f["events_dropped"], 0)
        self.assertGreater(f["bytes"], 500)
        self.assertEqual(f["bytes"], metric(page, "charter_scope_bytes"))
        self.assertEqual(f["timers"], metric(page, "charter_scope_timers"))
        self.assertIsNone(f["eviction_rate"])                      # one frame: no rate
        # the TTL histogram as per-bucket counts
        buckets = {(b["le"] if b["le"] == "+Inf" else float(b["le"])): b["count"]
                   for b in f["ttl_remaining"]["buckets"]}
        self.assertEqual(len(buckets), 16)
        self.assertEqual(buckets[60.0], 3)                         # 55, 55, 60 s
        self.assertEqual(buckets[300.0], 1)                        # 200 s
        self.assertEqual(buckets[3600.0], 1)                       # 2000 s
        self.assertEqual(sum(buckets.values()), 5)
        self.assertEqual(f["ttl_remaining"]["count"], 5)
        for le, c in ttl_buckets(page):
            self.assertEqual(buckets["+Inf" if le == float("inf") else le], c, le)
        # expiry lateness: the three deadline ends (2 expired, 1 idle)
        late = f["expiry_lateness"]
        self.assertEqual(late["count"], 3)
        self.assertEqual(late["count"],
                         metric(page, "charter_scope_expiry_lateness_seconds_count"))
        self.assertIsNotNone(late["p50"])
        self.assertLessEqual(0, late["p50"])
        self.assertLessEqual(late["p50"], late["p99"])

        # The same frame as text.
        p = cli("scope", "top", "--once", server=self.srv, key=None)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout
        self.assertEqual(out.count("charter scope top"), 1)
        self.assertNotIn("\033[", out)                             # no ANSI off a terminal
        self.assertRegex(out, r"(?m)^live scopes\s+5\s+command 1, scoped 3, secure 1$")
        self.assertRegex(out, r"(?m)^locked\s+1\s+20\.0% of live$")
        self.assertRegex(out, r"(?m)^bytes held\s+.*\(%d bytes of context\)$" % f["bytes"])
        self.assertRegex(out, r"(?m)^expiring\s+1\s")
        for reason, n in want_evictions.items():
            self.assertRegex(out, r"(?m)^%s\s+%d\s+-$" % (reason if reason != "total" else "all",
                                                          n))
        self.assertRegex(out, "(?m)^\u22641m\\s+3  \u2588{40}$")        # the longest bar
        self.assertRegex(out, "(?m)^\u22645m\\s+1  \u2588{13}$")
        self.assertRegex(out, "(?m)^\u22641h\\s+1  \u2588{13}$")
        self.assertRegex(out, "(?m)^\u22641s\\s+0$")
        self.assertRegex(out, r"(?m)^>1d\s+0$")
        self.assertRegex(out, r"(?m)^expiry lateness p50 \S+, p99 \S+ \(3 deadline ends\)$")

        # On a terminal --once prints one frame without clearing the screen.
        out = on_tty(self, "scope", "top", "--once", server=self.srv, key=None)
        self.assertNotIn("\033[2J", out)
        self.assertIn("live scopes     5", out)

    def test_live_rates_and_ctrl_c(self):
        """Live --json: one object per frame; the second has rates; SIGINT ends it with
        exit 0."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
        env["CHARTER_URL"] = self.srv.url
        p = subprocess.Popen([harness.charter_bin(), "scope", "top", "--json", "--interval",
                              "300ms"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
        try:
            first = json.loads(p.stdout.readline())
            self.assertIsNone(first["eviction_rate"])
            self.assertIsNone(first["elapsed"])
            sid = self.create("--agent", "top-rate")["id"]
            cli_json(self, "scope", "delete", sid, server=self.srv)
            while True:
                frame = json.loads(p.stdout.readline())
                if frame["evictions"]["purged"] > first["evictions"]["purged"]:
                    break
            self.assertEqual(frame["evictions"]["purged"], first["evictions"]["purged"] + 1)
            self.assertGreater(frame["elapsed"], 0.2)
            self.assertAlmostEqual(frame["eviction_rate"]["purged"], 1 / frame["elapsed"],
                                   delta=0.01)
            self.assertEqual(frame["eviction_rate"]["expired"], 0)
        finally:
            p.send_signal(signal.SIGINT)
            rest, err = p.communicate(timeout=10)
        if harness.SANITIZER_RE.search(err):
            raise AssertionError("sanitizer report from charter scope top:\n" + err)
        self.assertEqual(p.returncode, 0, err)
        for line in rest.splitlines():
            json.loads(line)                                        # whole frames only

    def test_live_terminal_redraws(self):
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
        env["CHARTER_URL"] = self.srv.url
        p = subprocess.Popen([harness.charter_bin(), "scope", "top", "--interval", "200ms"],
                             stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 10
        while out.count(b"\033[H\033[2J") < 3 and time.monotonic() < deadline:
            out += os.read(master, 65536)
        p.send_signal(signal.SIGINT)
        err = p.stderr.read().decode()
        p.stderr.close()
        self.assertEqual(p.wait(10), 0, err)
        os.close(master)
        self.assertGreaterEqual(out.count(b"\033[H\033[2J"), 3)
        self.assertIn("Ctrl-C quits".encode(), out)
        if harness.SANITIZER_RE.search(err):
            raise AssertionError("sanitizer report from charter scope top:\n" + err)

    def test_unreachable(self):
        p = cli("scope", "top", "--once", "--url", "http://127.0.0.1:1", server=self.srv)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("cannot reach http://127.0.0.1:1", p.stderr)

CRAFTED_PAGE = """# HELP charter_http_requests_total Requests.
charter_http_requests_total{route="/v1/x/{id}",status="200"} 5
charter_scopes{flow="command"} 2
charter_scopes{flow="scoped"} 7 1700000000000
charter_scopes{flow="secure"} 1
charter_scopes{flow="other"} 100
charter_scopes_locked 3
charter_scopes_locked_ratio 0.3
charter_scope_bytes 12345
charter_scope_timers 10
charter_scope_evictions_total{reason="expired"} 40
charter_scope_evictions_total{note="a \\"}\\" b",reason="idle"} 8
charter_scope_evictions_total{reason="agent_exited"} 1
charter_scope_evictions_total{reason="purged"} 0
charter_scope_evictions_total{reason="error"} 1
charter_scope_expiring_total 4
charter_scope_events_dropped_total 2
charter_scope_ttl_remaining_seconds_bucket{le="1"} 0
charter_scope_ttl_remaining_seconds_bucket{le="5"} 2
charter_scope_ttl_remaining_seconds_bucket{le="30"} 5
charter_scope_ttl_remaining_seconds_bucket{le="10"} 2
charter_scope_ttl_remaining_seconds_bucket{le="60"} 10
charter_scope_ttl_remaining_seconds_bucket{le="+Inf"} 10
charter_scope_ttl_remaining_seconds_sum 250.5
charter_scope_ttl_remaining_seconds_count 10
charter_scope_expiry_lateness_seconds_bucket{le="0.01"} 90
charter_scope_expiry_lateness_seconds_bucket{le="0.001"} 50
charter_scope_expiry_lateness_seconds_bucket{le="0.1"} 100
charter_scope_expiry_lateness_seconds_bucket{le="+Inf"} 100
charter_scope_expiry_lateness_seconds_sum 1.5
charter_scope_expiry_lateness_seconds_count 100
"""


class FakeMetrics(http.server.BaseHTTPRequestHandler):
    """Serves self.server.page (status, text) on every GET."""

    def do_GET(self):
        status, text = self.server.page
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class TopParsing(unittest.TestCase):
    """`top` against a crafted /metrics page: label quoting, timestamps, unknown
    labels, buckets out of order, and the quantile arithmetic."""

    def setUp(self):
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), FakeMetrics)
        self.httpd.page = (200, CRAFTED_PAGE)
        t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        t.start()
        self.addCleanup(self.httpd.server_close)
        self.addCleanup(self.httpd.shutdown)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def test_crafted_page(self):
        f = cli_json(self, "scope", "top", "--once", "--url", self.url, key=None)
        self.assertEqual(f["scopes"], {"command": 2, "scoped": 7, "secure": 1, "total": 10})
        self.assertEqual((f["locked"], f["locked_ratio"], f["bytes"], f["timers"]),
                         (3, 0.3, 12345, 10))
        self.assertEqual((f["expiring"], f["events_dropped"]), (4, 2))
        self.assertEqual(f["evictions"], {"expired": 40, "idle": 8, "agent_exited": 1,
                                          "purged": 0, "error": 1, "total": 50})
        self.assertEqual([(b["le"], b["count"]) for b in f["ttl_remaining"]["buckets"]],
                         [(1, 0), (5, 2), (10, 0), (30, 3), (60, 5), ("+Inf", 0)])
        self.assertEqual((f["ttl_remaining"]["count"], f["ttl_remaining"]["sum"]), (10, 250.5))
        late = f["expiry_lateness"]
        self.assertEqual((late["count"], late["sum"]), (100, 1.5))
        self.assertAlmostEqual(late["p50"], 0.001)               # 50 of 100 in (0, 1ms]
        self.assertAlmostEqual(late["p99"], 0.091)               # 10 in (10ms, 100ms]

        p = cli("scope", "top", "--once", "--url", self.url, key=None)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, r"(?m)^live scopes\s+10\s+command 2, scoped 7, secure 1$")
        self.assertRegex(p.stdout, r"(?m)^bytes held\s+12\.1 KiB\s+\(12345 bytes of context\)$")
        self.assertRegex(p.stdout, "(?m)^\u226430s\\s+3  \u2588{24}$")
        self.assertRegex(p.stdout, "(?m)^\u22641m\\s+5  \u2588{40}$")
        self.assertRegex(p.stdout, r"(?m)^>1m\s+0$")
        self.assertRegex(p.stdout, r"(?m)^expiry lateness p50 1\.0ms, p99 91\.0ms \(100 deadline ends\)$")

    def test_no_scope_metrics_or_http_error(self):
        self.httpd.page = (200, "charter_other 1\n")
        p = cli("scope", "top", "--once", "--url", self.url, key=None)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("no scope metrics", p.stderr)
        self.httpd.page = (500, "boom")
        p = cli("scope", "top", "--once", "--url", self.url, key=None)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("HTTP 500", p.stderr)


if __name__ == "__main__":
    harness.main()
