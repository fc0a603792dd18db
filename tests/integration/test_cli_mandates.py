"""test_cli_mandates.py — the mandates side of the `charter` command line against a real
server: `charter mandate <verb>` (create, show, delegate, narrow, tree, the
transitions, check with its allow/deny exit codes, artifact) compared with the HTTP
API; `charter keys signing` and the offline `charter mandate verify-artifact` (valid,
tampered, wrong key, expired, and the action decision that sends external actions
online); `charter events` following the event stream, filtering, reconnecting after a
restart and giving up on an unreachable server; and examples/release-freeze.sh run
end to end."""

import base64
import calendar
import hashlib
import json
import os
import pty
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_status  # noqa: E402

srv = None
UNKNOWN_MDT = "mdt_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"
MDT_RE = re.compile(r"^mdt_[0-9A-HJKMNP-TV-Z]{26}$")
EXAMPLE = os.path.join(harness.REPO_ROOT, "examples", "release-freeze.sh")

ROOT_FLAGS = ["--approver", "alice", "--purpose", "implement passkey login", "--actor",
              "coder", "--tool", "shell", "--tool", "git", "--lane", "repo", "--resource",
              "repo:web/*", "--class", "write", "--class", "read", "--class", "external",
              "--max-depth", "2", "--expires-in", "24h"]
ACTION = ["--tool", "git", "--lane", "repo", "--resource", "repo:web/src/a.ts", "--class",
          "write"]


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


def cli(*args, key=harness.DEFAULT, url=None, stdin=None, server=None, timeout=30):
    server = server or srv
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["CHARTER_URL"] = url or server.url
    if key is harness.DEFAULT:
        key = server.key
    if key is not None:
        env["CHARTER_KEY"] = key
    p = subprocess.run([harness.charter_bin()] + list(args), capture_output=True, text=True,
                       input=stdin, env=env, timeout=timeout)
    if harness.SANITIZER_RE.search(p.stderr):
        raise AssertionError("sanitizer report from charter %s:\n%s" % (" ".join(args), p.stderr))
    return p


def cli_json(tc, *args, rc=0, **kw):
    p = cli(*(list(args) + ["--json"]), **kw)
    tc.assertEqual(p.returncode, rc, "charter %s: rc %d\nstdout: %s\nstderr: %s"
                   % (" ".join(args), p.returncode, p.stdout, p.stderr))
    try:
        return json.loads(p.stdout)
    except ValueError:
        tc.fail("charter %s --json printed no JSON: %r" % (" ".join(args), p.stdout[:500]))


def on_tty(tc, *args, rc=0, server=None):
    """Runs charter with stdout on a pseudo-terminal; returns what it printed."""
    server = server or srv
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env.update(CHARTER_URL=server.url, CHARTER_KEY=server.key)
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
    tc.assertEqual(p.wait(30), rc, err)
    return out.decode("utf-8", "replace").replace("\r\n", "\n")


def create_root(tc, *extra):
    m = cli_json(tc, "mandate", "create", *(ROOT_FLAGS + list(extra)))
    tc.assertRegex(m["id"], MDT_RE)
    return m


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def write_temp(tc, text, suffix=".jwk"):
    f = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False)
    f.write(text)
    f.close()
    tc.addCleanup(os.unlink, f.name)
    return f.name


class MandateVerbs(unittest.TestCase):
    def test_create_show_and_flags(self):
        before = time.time()
        m = create_root(self, "--budget-tokens", "1000", "--budget-cost-usd", "2.5",
                        "--budget-tool-calls", "7", "--evidence", '{"ticket":"SEC-142"}',
                        "--conditions", '{"branch":"passkeys"}')
        self.assertEqual((m["state"], m["version"], m["approver"], m["actor"], m["purpose"]),
                         ("active", 1, "alice", "coder", "implement passkey login"))
        self.assertEqual({k: sorted(v) for k, v in m["scope"].items()},
                         {"tools": ["git", "shell"], "lanes": ["repo"],
                          "resources": ["repo:web/*"], "classes": ["external", "read", "write"]})
        self.assertEqual((m["max_depth"], m["depth"], m["parent"], m["root"]),
                         (2, 0, None, m["id"]))
        self.assertEqual(m["budget"], {"tokens": 1000, "cost_usd": 2.5, "tool_calls": 7})
        self.assertEqual(m["evidence"], {"ticket": "SEC-142"})
        self.assertEqual(m["conditions"], {"branch": "passkeys"})
        # --expires-in 24h is now + 24 h on the client's clock
        exp = calendar.timegm(time.strptime(m["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        self.assertAlmostEqual(exp, before + 86400, delta=60)
        self.assertEqual(cli_json(self, "mandate", "show", m["id"]),
                         srv.request("GET", "/v1/mandates/" + m["id"]).json)

        # --expires-at is sent as given; no scope flag means an empty scope
        m2 = cli_json(self, "mandate", "create", "--approver", "bob", "--expires-at",
                      "2099-01-01T00:00:00Z")
        self.assertEqual(m2["expires_at"], "2099-01-01T00:00:00.000Z")
        self.assertEqual(m2["scope"], {"tools": [], "lanes": [], "resources": [], "classes": []})

        # a pipe gets one line of compact JSON
        p = cli("mandate", "show", m["id"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.count("\n"), 1)
        self.assertEqual(json.loads(p.stdout)["id"], m["id"])

        # a terminal gets key: value lines, lists joined
        out = on_tty(self, "mandate", "show", m["id"])
        self.assertRegex(out, r"(?m)^id:\s+%s$" % m["id"])
        self.assertRegex(out, r"(?m)^state:\s+active$")
        self.assertRegex(out, r"(?m)^scope:\s+.*tools=git,shell")

    def test_proposed_approve_and_transitions(self):
        m = create_root(self, "--proposed")
        self.assertEqual(m["state"], "proposed")
        p = cli("mandate", "check", m["id"], *ACTION)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(json.loads(p.stdout)["reason"], "mandate_proposed")
        self.assertEqual(cli_json(self, "mandate", "approve", m["id"])["state"], "active")

        s = cli_json(self, "mandate", "suspend", m["id"], "--reason", "audit")
        self.assertEqual((s["state"], s["reason"]), ("suspended", "audit"))
        p = cli("mandate", "check", m["id"], *ACTION, "--json")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(json.loads(p.stdout)["reason"], "mandate_suspended")
        self.assertEqual(cli_json(self, "mandate", "reinstate", m["id"])["state"], "active")
        self.assertEqual(cli("mandate", "check", m["id"], *ACTION).returncode, 0)

        r = cli_json(self, "mandate", "revoke", m["id"], "--reason", "release freeze")
        self.assertEqual((r["state"], r["reason"]), ("revoked", "release freeze"))
        p = cli("mandate", "approve", m["id"])
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r"^charter: invalid_transition: .+ \(state: revoked\)\n$")
        self.assertEqual(p.stdout, "")

        c = create_root(self)
        self.assertEqual(cli_json(self, "mandate", "complete", c["id"])["state"], "completed")

    def test_delegate_narrow_tree(self):
        root = create_root(self)
        child = cli_json(self, "mandate", "delegate", root["id"], "--actor", "test-fixer",
                         "--purpose", "repair tests", "--tool", "git", "--lane", "repo",
                         "--resource", "repo:web/tests/*", "--class", "read", "--class",
                         "write", "--expires-in", "4h", "--max-depth", "2")
        self.assertEqual((child["parent"], child["root"], child["depth"], child["actor"]),
                         (root["id"], root["id"], 1, "test-fixer"))
        self.assertEqual(child["scope"]["resources"], ["repo:web/tests/*"])
        grand = cli_json(self, "mandate", "delegate", child["id"], "--actor", "linter",
                         "--purpose", "lint", "--tool", "git", "--lane", "repo", "--class",
                         "read", "--expires-in", "1h")
        self.assertEqual(grand["depth"], 2)

        # wider than the parent: not_subset, naming the rule
        p = cli("mandate", "delegate", root["id"], "--actor", "x", "--purpose", "p",
                "--tool", "kubectl", "--expires-in", "1h")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertRegex(p.stderr, r"^charter: not_subset: .+ \(field: scope\.tools\)\n$")
        p = cli("mandate", "delegate", root["id"], "--actor", "x", "--purpose", "p",
                "--expires-at", "2999-01-01T00:00:00Z")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("(field: expires_at)", p.stderr)

        # narrow: only the lists given are sent
        n = cli_json(self, "mandate", "narrow", root["id"], "--class", "read", "--class",
                     "write")
        self.assertEqual(sorted(n["scope"]["classes"]), ["read", "write"])
        self.assertEqual(n["scope"]["tools"], ["git", "shell"])
        self.assertEqual(n["version"], root["version"] + 1)
        n = cli_json(self, "mandate", "narrow", child["id"], "--clear", "resources")
        self.assertEqual(n["scope"]["resources"], [])
        self.assertEqual(n["scope"]["tools"], ["git"])
        p = cli("mandate", "narrow", root["id"], "--tool", "git", "--tool", "shell")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("no_change", p.stderr)
        p = cli("mandate", "narrow", root["id"], "--tool", "make")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("not_subset", p.stderr)
        n = cli_json(self, "mandate", "narrow", root["id"], "--expires-in", "12h",
                     "--conditions", '{"freeze":false}')
        self.assertEqual(n["conditions"], {"freeze": False})

        # tree: the reply as is, or an indented table on a terminal
        t = cli_json(self, "mandate", "tree", child["id"])
        self.assertEqual(t, srv.request("GET", "/v1/mandates/%s/tree" % child["id"]).json)
        self.assertEqual([a["id"] for a in t["ancestors"]], [root["id"]])
        self.assertEqual([d["id"] for d in t["descendants"]], [grand["id"]])
        out = on_tty(self, "mandate", "tree", child["id"])
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^MANDATE\s+STATE\s+ACTOR\s+VERSION\s+EXPIRES$")
        self.assertRegex(lines[1], r"^%s\s+active\s+coder\s" % root["id"])
        self.assertRegex(lines[2], r"^  %s \*\s+active\s+test-fixer\s" % child["id"])
        self.assertRegex(lines[3], r"^    %s\s+active\s+linter\s" % grand["id"])

        # revoke cascades, and the tree shows it
        cli_json(self, "mandate", "revoke", root["id"], "--reason", "freeze")
        t = cli_json(self, "mandate", "tree", root["id"])
        self.assertEqual([d["state"] for d in t["descendants"]], ["revoked", "revoked"])

    def test_check(self):
        m = create_root(self)
        sess = srv.create_session(user="alice", agent="coder", mandate=m["id"])["id"]
        r = cli_json(self, "mandate", "check", m["id"], *ACTION, "--actor", "coder",
                     "--session", sess)
        self.assertEqual((r["allow"], r["reason"], r["mandate"], r["mandate_version"]),
                         (True, "ok", m["id"], 1))
        self.assertTrue(r["decision_id"].startswith("dec_"), r)

        # denied: exit 1, the decision still on stdout, nothing on stderr
        for flags, reason in (
                (["--tool", "make", "--lane", "repo", "--resource", "repo:web/a", "--class",
                  "read"], "tool_out_of_scope"),
                (["--tool", "git", "--lane", "repo", "--resource", "repo:api/a", "--class",
                  "read"], "resource_out_of_scope"),
                (["--tool", "git", "--lane", "repo", "--resource", "repo:web/a", "--class",
                  "irreversible"], "class_out_of_scope")):
            p = cli("mandate", "check", m["id"], *flags)
            self.assertEqual(p.returncode, 1, "%s: %s" % (flags, p.stderr))
            self.assertEqual(p.stderr, "")
            d = json.loads(p.stdout)
            self.assertEqual((d["allow"], d["reason"]), (False, reason))
        p = cli("mandate", "check", m["id"], *ACTION, "--actor", "someone-else")
        self.assertEqual((p.returncode, json.loads(p.stdout)["reason"]), (1, "actor_mismatch"))
        p = cli("mandate", "check", UNKNOWN_MDT, *ACTION)
        self.assertEqual((p.returncode, json.loads(p.stdout)["reason"]), (1, "mandate_unknown"))

        out = on_tty(self, "mandate", "check", m["id"], *ACTION)
        self.assertRegex(out, r"^allow: ok \(mandate %s, version 1, decision dec_\S+\)\n$"
                         % m["id"])
        out = on_tty(self, "mandate", "check", m["id"], "--tool", "make", "--lane", "repo",
                     "--resource", "repo:web/a", "--class", "read", rc=1)
        self.assertRegex(out, r"^deny: tool_out_of_scope \(")

        # the artifact form
        tok = cli("mandate", "artifact", m["id"]).stdout.strip()
        r = cli_json(self, "mandate", "check", "--artifact", tok, *ACTION)
        self.assertEqual((r["allow"], r["mandate"]), (True, m["id"]))
        r = cli_json(self, "mandate", "check", "--artifact", tok + "x", *ACTION, rc=1)
        self.assertEqual((r["allow"], r["reason"]), (False, "artifact_invalid"))

        # the decisions are audited, with the session
        def audited():
            a = srv.request("GET", "/v1/audit?mandate=%s&limit=1000" % m["id"]).json
            return [x for x in a["records"] if x["session"] == sess]
        deadline = time.monotonic() + 5
        while not audited() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(audited())


class Artifacts(unittest.TestCase):
    def test_keys_signing_and_verify_offline(self):
        http = srv.request("GET", "/v1/keys/signing")
        assert_status(http, 200)
        p = cli("keys", "signing")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.encode(), http.raw if http.raw.endswith(b"\n")
                         else http.raw + b"\n")
        jwk = http.json
        self.assertEqual((jwk["kty"], jwk["crv"], jwk["alg"]), ("OKP", "Ed25519", "EdDSA"))
        keyfile = write_temp(self, p.stdout)

        m = create_root(self)
        p = cli("mandate", "artifact", m["id"], "--ttl", "30s")
        self.assertEqual(p.returncode, 0, p.stderr)
        tok = p.stdout.strip()
        self.assertEqual(p.stdout, tok + "\n")       # the token alone, even in a pipe
        self.assertEqual(tok.count("."), 2)
        full = cli_json(self, "mandate", "artifact", m["id"], "--ttl", "20")
        self.assertEqual(set(full), {"artifact", "expires_at", "version"})

        # valid: exit 0, the claims
        v = cli_json(self, "mandate", "verify-artifact", "--public-key", keyfile, tok)
        self.assertTrue(v["valid"])
        self.assertEqual((v["claims"]["mdt"], v["claims"]["ver"]), (m["id"], 1))
        self.assertNotIn("allow", v)
        out = on_tty(self, "mandate", "verify-artifact", "--public-key", keyfile, tok)
        self.assertRegex(out, r"(?m)^mandate:\s+%s$" % m["id"])
        self.assertRegex(out, r"(?m)^version:\s+1$")
        self.assertRegex(out, r"(?m)^expires_at:\s+\d{4}-\d\d-\d\dT")
        # from stdin; and no server is needed (the URL points nowhere)
        p = cli("mandate", "verify-artifact", "--public-key", keyfile, "-", stdin=tok + "\n",
                url="http://127.0.0.1:1", key=None)
        self.assertEqual(p.returncode, 0, p.stderr)

        # an action decided offline: read/write from the claims, external never
        v = cli_json(self, "mandate", "verify-artifact", "--public-key", keyfile, tok, *ACTION)
        self.assertEqual((v["allow"], v["reason"]), (True, "ok"))
        for cls, reason in (("external", "online_check_required"),
                            ("irreversible", "online_check_required")):
            p = cli("mandate", "verify-artifact", "--public-key", keyfile, tok, "--tool", "git",
                    "--lane", "repo", "--resource", "repo:web/a", "--class", cls)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertEqual(json.loads(p.stdout)["reason"], reason)
            self.assertIn(reason, p.stderr)
        p = cli("mandate", "verify-artifact", "--public-key", keyfile, tok, "--tool", "git",
                "--lane", "repo", "--resource", "repo:api/a", "--class", "read")
        self.assertEqual((p.returncode, json.loads(p.stdout)["reason"]),
                         (1, "resource_out_of_scope"))

        # tampered: a flipped signature byte, a payload swapped for another's
        head, payload, sig = tok.split(".")
        raw_sig = bytearray(b64url_decode(sig))
        raw_sig[0] ^= 1
        claims = json.loads(b64url_decode(payload))
        claims["scope"]["classes"].append("irreversible")
        forged_payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        for bad in (head + "." + payload + "." + b64url(bytes(raw_sig)),
                    head + "." + forged_payload + "." + sig, tok + "x", "not-a-token"):
            p = cli("mandate", "verify-artifact", "--public-key", keyfile, bad)
            self.assertEqual(p.returncode, 1, "%s: %s" % (bad[:40], p.stderr))
            self.assertTrue(p.stderr.startswith("charter: artifact_invalid: "), p.stderr)
            self.assertEqual(p.stdout, "")

        # the wrong key: another key with its own kid, and the right kid on another key
        other = hashlib.sha256(b"not the server's key").digest()
        other_jwk = dict(jwk, x=b64url(other), kid=b64url(hashlib.sha256(other).digest()[:12]))
        same_kid = dict(jwk, x=b64url(other))
        for wrong in (other_jwk, same_kid):
            p = cli("mandate", "verify-artifact", "--public-key",
                    write_temp(self, json.dumps(wrong)), tok)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertTrue(p.stderr.startswith("charter: artifact_invalid: "), p.stderr)
        p = cli("mandate", "verify-artifact", "--public-key", write_temp(self, "not json"), tok)
        self.assertEqual(p.returncode, 1, p.stderr)
        p = cli("mandate", "verify-artifact", "--public-key", "/nonexistent/key.jwk", tok)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("cannot read", p.stderr)

        # expired: a 1 s artifact, 2 s later
        short = cli("mandate", "artifact", m["id"], "--ttl", "1s").stdout.strip()
        time.sleep(2.1)
        p = cli("mandate", "verify-artifact", "--public-key", keyfile, short)
        self.assertEqual(p.returncode, 1, p.stderr)

        # a revoked mandate issues no artifact
        cli_json(self, "mandate", "revoke", m["id"])
        p = cli("mandate", "artifact", m["id"])
        self.assertEqual(p.returncode, 1)
        self.assertIn("mandate_inactive", p.stderr)


class Events(unittest.TestCase):
    def follower(self, *args, server=None):
        server = server or srv
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
        env.update(CHARTER_URL=server.url, CHARTER_KEY=server.key)
        p = subprocess.Popen([harness.charter_bin(), "events"] + list(args),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        return p

    def finish(self, p, timeout=20):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            self.fail("charter events did not exit\nstdout: %s\nstderr: %s" % (out, err))
        if harness.SANITIZER_RE.search(err):
            raise AssertionError("sanitizer report from charter events:\n" + err)
        return p.returncode, out, err

    def test_live_revoke_and_filters(self):
        m = create_root(self)
        p = self.follower("--types", "mandate.revoked", "--limit", "1")
        time.sleep(1.0)   # let it subscribe: without --after it starts with new events
        cli_json(self, "mandate", "suspend", m["id"])     # filtered out
        cli_json(self, "mandate", "revoke", m["id"], "--reason", "release freeze")
        rc, out, err = self.finish(p)
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 1, out)
        ev = json.loads(lines[0])
        self.assertEqual((ev["type"], ev["mandate"], ev["state"], ev["reason"]),
                         ("mandate.revoked", m["id"], "revoked", "release freeze"))

        # from the start of the stream: every stored event, in order, filtered by prefix
        rc, out, err = self.finish(self.follower("--after", "0", "--types", "mandate.*",
                                                 "--limit", "3", "--json"))
        self.assertEqual(rc, 0, err)
        evs = [json.loads(x) for x in out.splitlines()]
        self.assertEqual(len(evs), 3)
        self.assertTrue(all(e["type"].startswith("mandate.") for e in evs), evs)
        self.assertEqual(sorted(e["id"] for e in evs), [e["id"] for e in evs])

        # --once, after a given id
        rc, out, err = self.finish(self.follower("--after", str(evs[0]["id"]), "--once"))
        self.assertEqual(rc, 0, err)
        self.assertGreater(json.loads(out)["id"], evs[0]["id"])

        # a terminal gets "ID TYPE subject details"
        out = on_tty(self, "events", "--after", "0", "--types", "mandate.created", "--once")
        self.assertRegex(out, r"^\d+\s+mandate\.created\s+mdt_\S+ state=\w+ version=\d+")

    def test_reconnects_after_restart(self):
        own = harness.Server()
        try:
            m1 = cli_json(self, "mandate", "create", "--approver", "a", "--expires-in", "1h",
                          server=own)
            p = self.follower("--after", "0", "--types", "mandate.created", "--limit", "2",
                              server=own)
            time.sleep(1.0)
            own.restart()   # SIGTERM drains and ends the stream; same port, same data
            m2 = cli_json(self, "mandate", "create", "--approver", "b", "--expires-in", "1h",
                          server=own)
            rc, out, err = self.finish(p, timeout=30)
            self.assertEqual(rc, 0, err)
            got = [json.loads(x)["mandate"] for x in out.splitlines()]
            self.assertEqual(got, [m1["id"], m2["id"]])   # nothing lost, nothing twice
            self.assertIn("reconnecting", err)
        finally:
            own.stop()

    def test_unreachable_and_usage(self):
        url = "http://127.0.0.1:%d" % harness.free_port()
        t0 = time.monotonic()
        p = cli("events", url=url)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertTrue(p.stderr.startswith("charter: cannot reach %s" % url), p.stderr)
        self.assertLess(time.monotonic() - t0, 10)
        p = cli("events", "--once", key="chk_" + "A" * 43)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("unauthorized", p.stderr)
        for args in (["--limit", "0"], ["--after", "-1"], ["--after", "x"], ["--types", ","],
                     ["--once", "--limit", "2"], ["extra"], ["--bogus"]):
            p = cli("events", *args)
            self.assertEqual(p.returncode, 64, "%s: %s" % (args, p.stderr))


class Errors(unittest.TestCase):
    def test_refused_and_unreachable(self):
        for verb in (["show", UNKNOWN_MDT], ["tree", UNKNOWN_MDT], ["revoke", UNKNOWN_MDT],
                     ["narrow", UNKNOWN_MDT, "--tool", "git"], ["artifact", UNKNOWN_MDT]):
            p = cli("mandate", *verb)
            self.assertEqual(p.returncode, 1, "%s: %s" % (verb, p.stderr))
            self.assertIn("not_found", p.stderr)
            self.assertEqual(p.stdout, "")
        p = cli("mandate", "create", "--approver", "a", "--expires-at", "2000-01-01T00:00:00Z")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("(field: expires_at)", p.stderr)
        p = cli("mandate", "create", "--approver", "a", "--expires-in", "1h", "--class", "sudo")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("scope.classes", p.stderr)
        url = "http://127.0.0.1:%d" % harness.free_port()
        for args in (["mandate", "show", UNKNOWN_MDT], ["mandate", "check", UNKNOWN_MDT] + ACTION,
                     ["keys", "signing"]):
            p = cli(*args, url=url)
            self.assertEqual(p.returncode, 2, "%s: %s" % (args, p.stderr))
            self.assertEqual(p.stdout, "")

    def test_usage_errors(self):
        m = create_root(self)
        for args in (["mandate"], ["mandate", "bogus"],
                     ["mandate", "create", "--expires-in", "1h"],
                     ["mandate", "create", "--approver", "a"],
                     ["mandate", "create", "--approver", "a", "--expires-in", "soon"],
                     ["mandate", "create", "--approver", "a", "--expires-in", "1h",
                      "--expires-at", "2099-01-01T00:00:00Z"],
                     ["mandate", "create", "--approver", "a", "--expires-in", "1h",
                      "--evidence", "{bad"],
                     ["mandate", "create", "--approver", "a", "--expires-in", "1h",
                      "--max-depth", "x"],
                     ["mandate", "show"], ["mandate", "show", m["id"], "extra"],
                     ["mandate", "revoke", m["id"], "--tool", "git"],
                     ["mandate", "delegate", m["id"], "--actor", "x", "--expires-in", "1h"],
                     ["mandate", "narrow", m["id"]],
                     ["mandate", "narrow", m["id"], "--clear", "widgets"],
                     ["mandate", "narrow", m["id"], "--clear", "tools", "--tool", "git"],
                     ["mandate", "check", m["id"], "--tool", "git"],
                     ["mandate", "check", m["id"]] + ACTION + ["--tool", "make"],
                     ["mandate", "check"] + ACTION,
                     ["mandate", "check", m["id"], "--artifact", "t"] + ACTION,
                     ["mandate", "artifact", m["id"], "--ttl", "forever"],
                     ["mandate", "verify-artifact", "tok"],
                     ["mandate", "verify-artifact", "--public-key", "k", "tok", "--tool", "git"],
                     ["keys", "signing", "extra"], ["keys", "signing", "--bogus"]):
            p = cli(*args)
            self.assertEqual(p.returncode, 64, "%s: rc %d %s" % (args, p.returncode, p.stderr))
            self.assertNotEqual(p.stderr, "")
        self.assertEqual(srv.request("GET", "/v1/mandates/" + m["id"]).json["version"], 1)
        for args in (["mandate", "--help"], ["mandate", "check", "--help"], ["events", "--help"],
                     ["keys", "--help"]):
            p = cli(*args)
            self.assertEqual(p.returncode, 0, args)
            self.assertNotEqual(p.stdout, "")


class Example(unittest.TestCase):
    def test_release_freeze(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
        env.update(CHARTER_URL=srv.url, CHARTER_KEY=srv.key, CHARTER_BIN=harness.charter_bin())
        p = subprocess.run(["bash", EXAMPLE], capture_output=True, text=True, env=env,
                           timeout=120, cwd=tempfile.gettempdir())
        if harness.SANITIZER_RE.search(p.stderr):
            raise AssertionError("sanitizer report from the example:\n" + p.stderr)
        self.assertEqual(p.returncode, 0, "stdout:\n%s\nstderr:\n%s" % (p.stdout, p.stderr))
        self.assertRegex(p.stdout, r"release-freeze: all \d+ expectations held")
        self.assertNotIn("[FAIL]", p.stdout)
        self.assertIn("mandate_inactive", p.stdout)


if __name__ == "__main__":
    harness.main()
