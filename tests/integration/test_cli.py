"""test_cli.py — the `charter` command line against a real server: `charter session
<verb>` (CHARTER_URL + CHARTER_KEY, --json) with its output parsed as JSON and
compared with the HTTP API, its exit codes (0 ok, 1 refused, 2 unreachable, 64
usage) and error messages, and `charter keys create`."""

import json
import os
import pty
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import KEY_RE, assert_status  # noqa: E402
import mandate_util  # noqa: E402

srv = None
UNKNOWN_ID = "sess_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


def cli(*args, key=harness.DEFAULT, url=None, stdin=None, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
    env["CHARTER_URL"] = url or srv.url
    if key is harness.DEFAULT:
        key = srv.key
    if key is not None:
        env["CHARTER_KEY"] = key
    if env_extra:
        env.update(env_extra)
    p = subprocess.run([harness.charter_bin()] + list(args), capture_output=True,
                       text=True, input=stdin, env=env, timeout=30)
    if harness.SANITIZER_RE.search(p.stderr):
        raise AssertionError("sanitizer report from charter %s:\n%s" % (" ".join(args), p.stderr))
    return p


def cli_json(tc, *args, **kw):
    args = list(args)
    if "--" in args:   # options end at "--": --json goes before the verb
        args.insert(1, "--json")
    else:
        args.append("--json")
    p = cli(*args, **kw)
    tc.assertEqual(p.returncode, 0, "charter %s: rc %d\nstdout: %s\nstderr: %s"
                   % (" ".join(args), p.returncode, p.stdout, p.stderr))
    try:
        return json.loads(p.stdout)
    except ValueError:
        tc.fail("charter %s --json printed no JSON: %r" % (" ".join(args), p.stdout[:500]))


class SessionVerbs(unittest.TestCase):
    def test_full_flow(self):
        mdt = mandate_util.create_mandate(srv)["id"]
        s = cli_json(self, "session", "open", "--user", "cli_u", "--agent", "cli_a",
                     "--label", "repo=web", "--label", "team=x", "--budget-tokens", "100",
                     "--budget-cost", "2.5", "--mandate", mdt)
        harness.check_session_shape(self, s)
        sid = s["id"]
        self.assertEqual((s["user"], s["agent"], s["state"], s["seq"]),
                         ("cli_u", "cli_a", "open", 0))
        self.assertEqual(s["labels"], {"repo": "web", "team": "x"})
        self.assertEqual(s["budget"]["tokens"], 100)
        self.assertEqual(s["budget"]["cost_usd"], 2.5)
        self.assertEqual(s["mandate"], mdt)
        self.assertEqual(cli_json(self, "session", "show", sid), srv.get_session(sid))

        # append: text content, JSON content with usage, expect-seq, a batch from stdin
        r = cli_json(self, "session", "append", sid, "--kind", "message", "--role", "user",
                     "--content", "hello world")
        self.assertEqual(r, {"first_seq": 1, "last_seq": 1})
        r = cli_json(self, "session", "append", sid, "--kind", "tool_call", "--content-json",
                     '{"name":"ls","args":[1,2]}', "--meta-json", '{"m":true}', "--tokens",
                     "7", "--cost", "0.1", "--tool-calls", "1", "--expect-seq", "1")
        self.assertEqual(r, {"first_seq": 2, "last_seq": 2})
        batch = {"events": [{"kind": "a", "content": 1}, {"kind": "b", "content": 2}]}
        r = cli_json(self, "session", "append", sid, "--file", "-", stdin=json.dumps(batch))
        self.assertEqual(r, {"first_seq": 3, "last_seq": 4})
        s = srv.get_session(sid)
        self.assertEqual((s["state"], s["seq"]), ("active", 4))
        self.assertEqual(s["usage"]["tokens"], 7)
        self.assertAlmostEqual(s["usage"]["cost_usd"], 0.1)
        self.assertEqual(s["usage"]["tool_calls"], 1)

        ev = cli_json(self, "session", "events", sid)
        self.assertEqual(ev, srv.request("GET", "/v1/sessions/%s/events" % sid).json)
        self.assertEqual([e["content"] for e in ev["events"]],
                         ["hello world", {"name": "ls", "args": [1, 2]}, 1, 2])
        self.assertEqual(ev["events"][1]["meta"], {"m": True})
        ev = cli_json(self, "session", "events", sid, "--limit", "1", "--all")
        self.assertEqual([e["seq"] for e in ev["events"]], [1, 2, 3, 4])
        self.assertIsNone(ev["next_after"])
        ev = cli_json(self, "session", "events", sid, "--after", "2", "--limit", "1")
        self.assertEqual([e["seq"] for e in ev["events"]], [3])
        self.assertEqual(ev["next_after"], 3)

        # stale expect-seq: refused with the server's code, exit 1, nothing written
        p = cli("session", "append", sid, "--kind", "m", "--expect-seq", "0", "--json")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertRegex(p.stderr, r"^charter: seq_conflict: .+ \(field: expect_seq\)\n$")
        self.assertEqual(p.stdout, "")
        self.assertEqual(srv.get_session(sid)["seq"], 4)

        # facts
        f = cli_json(self, "session", "facts", sid, "set", "goal", '{"x":1}')
        self.assertEqual((f["key"], f["value"]), ("goal", {"x": 1}))
        self.assertRegex(f["updated_at"], harness.TIME_RE)
        f = cli_json(self, "session", "facts", sid, "set", "note", "plain text")
        self.assertEqual(f["value"], "plain text")
        f = cli_json(self, "session", "facts", sid, "set", "dir/with space", "42")
        self.assertEqual((f["key"], f["value"]), ("dir/with space", 42))
        self.assertEqual(cli_json(self, "session", "facts", sid, "get", "goal"),
                         srv.request("GET", "/v1/sessions/%s/facts/goal" % sid).json)
        self.assertEqual(cli_json(self, "session", "facts", sid),
                         {"facts": {"goal": {"x": 1}, "note": "plain text",
                                    "dir/with space": 42}})
        self.assertEqual(srv.facts(sid)["dir/with space"], 42)
        self.assertEqual(cli_json(self, "session", "facts", sid, "delete", "note"),
                         {"key": "note", "deleted": True})
        p = cli("session", "facts", sid, "get", "note")
        self.assertEqual(p.returncode, 1)
        self.assertIn("not_found", p.stderr)

        # lifecycle
        s = cli_json(self, "session", "pause", sid, "--reason", "break")
        self.assertEqual((s["state"], s["seq"]), ("paused", 5))
        p = cli("session", "append", sid, "--kind", "m")
        self.assertEqual(p.returncode, 1)
        self.assertIn("invalid_state", p.stderr)
        self.assertIn("paused", p.stderr)
        self.assertEqual(cli_json(self, "session", "resume", sid)["state"], "active")
        p = cli("session", "resume", sid)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, r"^charter: invalid_transition: .+ \(state: active\)\n$")

        # compact and bundle
        c = cli_json(self, "session", "compact", sid, "--through", "4", "--summary", "four")
        self.assertEqual(c, {"summary_seq": 4, "archived": 4})
        c = cli_json(self, "session", "compact", sid, "--through", "5", "--summary-json",
                     '{"s":5}')
        self.assertEqual(c["summary_seq"], 5)
        ev = cli_json(self, "session", "events", sid)
        self.assertEqual([(e["seq"], e["kind"]) for e in ev["events"]],
                         [(5, "summary"), (6, "lifecycle")])
        ev = cli_json(self, "session", "events", sid, "--archived")
        self.assertEqual([e["seq"] for e in ev["events"]], [1, 2, 3, 4, 5, 6])
        b = cli_json(self, "session", "bundle", sid)
        self.assertEqual(b, srv.request("GET", "/v1/sessions/%s/bundle" % sid).json)
        self.assertEqual(b["summary"]["content"], {"s": 5})
        b = cli_json(self, "session", "bundle", sid, "--limit", "1")
        self.assertEqual(len(b["events"]), 1)

        s = cli_json(self, "session", "close", sid, "--reason", "done")
        self.assertEqual(s["state"], "closed")
        s = cli_json(self, "session", "archive", sid)
        self.assertEqual(s["state"], "archived")
        self.assertEqual(s, srv.get_session(sid))
        lc = [e for e in srv.all_events(sid, archived=True) if e["kind"] == "lifecycle"]
        self.assertEqual([e["content"].get("reason") for e in lc][0], "break")
        self.assertEqual(lc[-2]["content"].get("reason"), "done")

    def test_list(self):
        ids = [cli_json(self, "session", "open", "--user", "cli_list", "--agent", "a")["id"]
               for _ in range(3)]
        r = cli_json(self, "session", "list", "--user", "cli_list")
        self.assertEqual([s["id"] for s in r["sessions"]], ids)
        self.assertIsNone(r["next_cursor"])
        r = cli_json(self, "session", "list", "--user", "cli_list", "--limit", "2")
        self.assertEqual([s["id"] for s in r["sessions"]], ids[:2])
        self.assertIsNotNone(r["next_cursor"])
        r2 = cli_json(self, "session", "list", "--user", "cli_list", "--limit", "2",
                      "--cursor", r["next_cursor"])
        self.assertEqual([s["id"] for s in r2["sessions"]], ids[2:])
        r = cli_json(self, "session", "list", "--user", "cli_list", "--limit", "1", "--all")
        self.assertEqual([s["id"] for s in r["sessions"]], ids)
        self.assertIsNone(r["next_cursor"])
        assert_status(srv.request("POST", "/v1/sessions/%s/close" % ids[1]), 200)
        r = cli_json(self, "session", "list", "--user", "cli_list", "--state", "closed")
        self.assertEqual([s["id"] for s in r["sessions"]], [ids[1]])

    def test_piped_output_is_one_line_of_json(self):
        sid = srv.create_session(user="cli_pipe")["id"]
        p = cli("session", "show", sid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.count("\n"), 1)
        self.assertEqual(json.loads(p.stdout), srv.get_session(sid))

    def test_url_and_key_file_flags(self):
        sid = srv.create_session(user="cli_flags")["id"]
        with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
            f.write(srv.key + "\n")
        try:
            p = cli("session", "--url", srv.url, "--key-file", f.name, "show", sid, "--json",
                    key=None, url="http://127.0.0.1:1")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(json.loads(p.stdout)["id"], sid)
        finally:
            os.unlink(f.name)


class Options(unittest.TestCase):
    def test_json_before_verb_and_double_dash(self):
        sid = srv.create_session(user="cli_opts")["id"]
        p = cli("session", "--json", "show", sid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), srv.get_session(sid))
        self.assertIn("\n  ", p.stdout)  # --json is indented
        f = cli_json(self, "session", "facts", sid, "set", "n", "--", "-5")
        self.assertEqual(f["value"], -5)
        f = cli_json(self, "session", "facts", sid, "set", "s", '"42"')
        self.assertEqual(f["value"], "42")
        f = cli_json(self, "session", "facts", sid, "set", "t", "hello")
        self.assertEqual(f["value"], "hello")
        f = cli_json(self, "session", "facts", sid, "set", "nul", "null")
        self.assertIsNone(f["value"])
        self.assertEqual(srv.facts(sid), {"n": -5, "s": "42", "t": "hello", "nul": None})

    def test_large_append_from_file(self):
        """A body large enough for libcurl to use Expect: 100-continue."""
        sid = srv.create_session(user="cli_big")["id"]
        batch = {"events": [{"kind": "m", "content": "z" * 50000} for _ in range(10)]}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(batch, f)
        try:
            r = cli_json(self, "session", "append", sid, "--file", f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual(r, {"first_seq": 1, "last_seq": 10})
        self.assertEqual([len(e["content"]) for e in srv.all_events(sid)], [50000] * 10)
        p = cli("session", "append", sid, "--file", "/nonexistent/file.json")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertTrue(p.stderr.startswith("charter: "), p.stderr)

    def test_key_file_whitespace_trimmed(self):
        sid = srv.create_session(user="cli_kf")["id"]
        with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
            f.write("  " + srv.key + " \t\nsecond line\n")
        try:
            p = cli("session", "show", sid, "--key-file", f.name, key=None)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(json.loads(p.stdout)["id"], sid)
            # the flag wins over CHARTER_KEY
            p = cli("session", "show", sid, "--key-file", f.name, key="chk_" + "Q" * 43)
            self.assertEqual(p.returncode, 0, p.stderr)
        finally:
            os.unlink(f.name)

    def test_terminal_output(self):
        """On a terminal the session is shown as key: value lines, events as a table."""
        sid = srv.create_session(user="cli_tty")["id"]
        assert_status(srv.append(sid, {"kind": "message", "content": "x" * 200}), 201)

        def on_tty(*args):
            master, slave = pty.openpty()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
            env.update(CHARTER_URL=srv.url, CHARTER_KEY=srv.key)
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
            self.assertEqual(p.wait(30), 0, p.stderr.read())
            p.stderr.close()
            return out.decode("utf-8", "replace").replace("\r\n", "\n")

        out = on_tty("session", "show", sid)
        self.assertRegex(out, r"(?m)^id:\s+%s$" % sid)
        self.assertRegex(out, r"(?m)^state:\s+active$")
        self.assertRegex(out, r"(?m)^seq:\s+1$")
        out = on_tty("session", "events", sid)
        self.assertRegex(out, r"(?m)^SEQ\s+AT\s+KIND\s+ROLE\s+CONTENT")
        self.assertIn("...", out)               # content cut to 60 characters
        self.assertNotIn("x" * 61, out)
        out = on_tty("session", "append", sid, "--kind", "message", "--content", "hi")
        self.assertEqual(out.strip(), "appended seq 2")
        out = on_tty("session", "compact", sid, "--through", "2", "--summary", "s")
        self.assertEqual(out.strip(), "compacted through seq 2 (2 events archived)")


class Errors(unittest.TestCase):
    def test_unknown_id(self):
        http = srv.request("GET", "/v1/sessions/" + UNKNOWN_ID)
        for verb in (["show", UNKNOWN_ID], ["events", UNKNOWN_ID], ["bundle", UNKNOWN_ID],
                     ["pause", UNKNOWN_ID], ["append", UNKNOWN_ID, "--kind", "m"],
                     ["facts", UNKNOWN_ID]):
            p = cli("session", *verb)
            self.assertEqual(p.returncode, 1, "%s: %s" % (verb, p.stderr))
            self.assertEqual(p.stdout, "")
            self.assertIn("not_found", p.stderr)
        p = cli("session", "show", UNKNOWN_ID)
        self.assertEqual(p.stderr, "charter: not_found: %s\n" % http.json["error"]["message"])

    def test_invalid_input_reported_with_field(self):
        sid = srv.create_session(user="cli_err")["id"]
        p = cli("session", "append", sid, "--kind", "Bad Kind")
        self.assertEqual(p.returncode, 1)
        self.assertIn("invalid_value", p.stderr)
        self.assertIn("kind", p.stderr)
        p = cli("session", "append", sid, "--kind", "lifecycle")
        self.assertEqual(p.returncode, 1)
        self.assertIn("reserved_kind", p.stderr)
        self.assertEqual(srv.get_session(sid)["seq"], 0)

    def test_no_or_bad_key(self):
        p = cli("session", "list", key=None)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("unauthorized", p.stderr)
        p = cli("session", "list", key="chk_" + "A" * 43)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("unauthorized", p.stderr)

    def test_unreachable(self):
        port = harness.free_port()
        url = "http://127.0.0.1:%d" % port
        for args in (["session", "list"], ["session", "show", UNKNOWN_ID, "--json"],
                     ["session", "append", UNKNOWN_ID, "--kind", "m"]):
            p = cli(*args, url=url)
            self.assertNotEqual(p.returncode, 0)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertTrue(p.stderr.startswith("charter: cannot reach %s" % url), p.stderr)
            self.assertEqual(p.stdout, "")

    def test_usage_errors(self):
        sid = srv.create_session(user="cli_usage")["id"]
        for args in (["session"], ["session", "bogus"], ["session", "open", "--user", "u"],
                     ["session", "show"], ["session", "show", sid, "extra"],
                     ["session", "append", sid], ["session", "append", sid, "--kind", "m",
                                                  "--expect-seq", "x"],
                     ["session", "compact", sid, "--summary", "s"],
                     ["session", "pause", sid, "--no-such-flag"],
                     ["session", "facts", sid, "frob", "k"], ["nonsense-command"]):
            p = cli(*args)
            self.assertEqual(p.returncode, 64, "%s: rc %d %s" % (args, p.returncode, p.stderr))
            self.assertNotEqual(p.stderr, "")
        self.assertEqual(srv.get_session(sid)["seq"], 0)
        for args in (["--help"], ["session", "--help"], ["--version"],
                     ["session", "append", "--help"], ["keys", "--help"]):
            p = cli(*args)
            self.assertEqual(p.returncode, 0, args)
            self.assertNotEqual(p.stdout, "")


class Keys(unittest.TestCase):
    def test_keys_create(self):
        p = subprocess.run([harness.charter_bin(), "keys", "create", "--tenant", "cli-tenant",
                            "--data-dir", srv.dir], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout, "^" + KEY_RE.pattern + "\n$")   # the key alone
        key = p.stdout.strip()
        s = cli_json(self, "session", "open", "--user", "t", "--agent", "a", key=key)
        self.assertEqual(cli_json(self, "session", "list", key=key)["sessions"], [s])
        p = cli("session", "show", s["id"])     # bootstrap tenant: not found
        self.assertEqual(p.returncode, 1)
        self.assertIn("not_found", p.stderr)
        p = subprocess.run([harness.charter_bin(), "keys", "create", "--data-dir", srv.dir],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 64, p.stderr)          # --tenant is required
        p = subprocess.run([harness.charter_bin(), "keys", "create", "--tenant", "Bad!",
                            "--data-dir", srv.dir], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stderr)           # invalid tenant
        self.assertTrue(p.stderr.startswith("charter: "), p.stderr)
        self.assertEqual(p.stdout, "")


if __name__ == "__main__":
    harness.main()
