"""harness.py — shared support for charter's integration tests.

Every tests/integration/test_*.py is one CTest test, run as `python3 FILE` with
CHARTER_BIN set to the `charter` binary. A test starts one or more real
`charter serve` processes on loopback through `Server`, talks HTTP/JSON to them with
`Server.request()` (or a keep-alive `Client` for hot loops) and checks the contract of
docs/api.md. Python standard library only.

Data dirs are removed when the whole file passes and kept (their paths printed, with
the server logs) when anything fails, so a failure can be inspected afterwards. A
file also fails when a server's log holds an ASan/LSan/UBSan report (the sanitizer
pass runs this suite against an instrumented binary), so end every file with
`harness.main()`, not `unittest.main()`.
"""

import atexit
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ID_RE = re.compile(r"^sess_[0-9A-HJKMNP-TV-Z]{26}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
KEY_RE = re.compile(r"chk_[A-Za-z0-9_-]{43}")

SESSION_FIELDS = {
    "id", "user", "agent", "mandate", "labels", "budget", "usage", "state", "seq",
    "summary_seq", "created_at", "updated_at",
}
EVENT_FIELDS = {"kind", "role", "content", "usage", "meta", "seq", "at"}

SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|"
                          r"runtime error: |SUMMARY: (Address|Undefined)")

DEFAULT = object()  # sentinel: "use the server's bootstrap key"

_servers = []  # every Server started by this process (cleanup at exit)


def charter_bin():
    b = os.environ.get("CHARTER_BIN")
    if not b:
        b = os.path.join(REPO_ROOT, "build", "charter")
    return os.path.abspath(b)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def q(s):
    """Percent-encodes one path segment (every reserved byte, '/' included)."""
    return urllib.parse.quote(s, safe="")


def _parse(raw):
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


class Response(tuple):
    """(status, json_or_None, raw_bytes) with .headers attached."""

    def __new__(cls, status, doc, raw, headers=None):
        r = super().__new__(cls, (status, doc, raw))
        r.headers = headers or {}
        return r

    @property
    def status(self):
        return self[0]

    @property
    def json(self):
        return self[1]

    @property
    def raw(self):
        return self[2]


def _encode_body(body, raw):
    if raw is not None:
        return raw if isinstance(raw, (bytes, bytearray)) else raw.encode("utf-8")
    if body is None:
        return None
    return json.dumps(body).encode("utf-8")


class Client:
    """One keep-alive HTTP/1.1 connection to a server. Not thread-safe: use one per
    thread. A transport error closes the connection and is re-raised (the outcome of
    that request is unknown); the next call reconnects."""

    def __init__(self, server, key=DEFAULT, timeout=30):
        self.server = server
        self.key = key
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def request(self, method, path, body=None, key=DEFAULT, raw=None, headers=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port,
                                                   timeout=self.timeout)
        if key is DEFAULT:
            key = self.key
        if key is DEFAULT:
            key = self.server.key
        h = {}
        data = _encode_body(body, raw)
        if data is not None:
            h["Content-Type"] = "application/json"
        if key is not None:
            h["Authorization"] = "Bearer " + key
        if headers:
            h.update(headers)
        try:
            self.conn.request(method, path, body=data, headers=h)
            resp = self.conn.getresponse()
            rawb = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.close()
        except Exception:
            self.close()
            raise
        return Response(resp.status, _parse(rawb), rawb, hdrs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Server:
    """One `charter serve` process on a free loopback port with a private data dir."""

    def __init__(self, args=None, env=None, config=None, data_dir=None, threads=2,
                 start=True):
        self.bin = charter_bin()
        self.port = free_port()
        self.dir = data_dir or tempfile.mkdtemp(prefix="charter-it-")
        self.extra_args = list(args or [])
        # CHARTER_* variables override config and flags: keep the caller's out.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTER_")}
        if env:
            self.env.update(env)
        self.threads = threads
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(self.dir, "charter.yaml")
            with open(self.config_path, "w") as f:
                f.write(config)
        self.proc = None
        self.key = None
        self.log_path = os.path.join(self.dir, "server.log")
        self._log = None
        self._local = threading.local()
        _servers.append(self)
        if start:
            self.start()

    # ---- process control ------------------------------------------------------
    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def argv(self):
        a = [self.bin, "serve", "--data-dir", self.dir, "--listen",
             "127.0.0.1:%d" % self.port, "--threads", str(self.threads)]
        if self.config_path:
            a += ["--config", self.config_path]
        return a + self.extra_args

    def start(self, timeout=15.0, wait_key=True):
        """Starts the server and waits for /healthz; then (wait_key) reads
        bootstrap.key, keeping the key already known when the file is gone."""
        if not os.path.exists(self.bin):
            raise RuntimeError("charter binary not found: %s (set CHARTER_BIN)" % self.bin)
        self._closelog()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                self._fail_start("charter serve exited with %d before answering /healthz"
                                 % self.proc.returncode)
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    break
                last = "status %d" % r.status
            except OSError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                self._fail_start("/healthz did not answer 200 within %.0fs (last: %s)"
                                 % (timeout, last))
            time.sleep(0.05)
        kp = os.path.join(self.dir, "bootstrap.key")
        if not wait_key and not os.path.exists(kp):
            return
        while not os.path.exists(kp):
            if time.monotonic() > deadline:
                self._fail_start("no %s" % kp)
            time.sleep(0.05)
        with open(kp) as f:
            self.key = f.read().strip()

    def _fail_start(self, why):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        print("harness: %s\n---- %s ----\n%s\n---- end of log ----"
              % (why, self.log_path, self.log_text()), file=sys.stderr)
        raise RuntimeError(why)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-20000:]
        except OSError:
            return ""

    def sanitizer_report(self):
        """Lines of the server log where ASan/LSan/UBSan reported a fault ("" if none).
        The sanitizer pass runs this suite against an instrumented binary: a report is
        a failure even when every HTTP answer was right."""
        text = self.log_text_full()
        hits = [ln for ln in text.splitlines() if SANITIZER_RE.search(ln)]
        return "\n".join(hits[:20])

    def log_text_full(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM; waits up to timeout, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._closelog()
        return self.proc.returncode

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._closelog()

    def restart(self):
        """Stops (if running) and starts again on the same data dir and port."""
        if self.alive():
            self.stop()
        self._local = threading.local()
        self.start()

    def _closelog(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self, keep=False):
        self.kill9()
        if keep:
            print("harness: kept data dir %s" % self.dir, file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, etype, exc, tb):
        self.stop()
        if etype is not None:
            print("harness: ---- %s ----\n%s" % (self.log_path, self.log_text()),
                  file=sys.stderr)
        return False

    # ---- HTTP -------------------------------------------------------------------
    def client(self, key=DEFAULT, timeout=30):
        return Client(self, key=key, timeout=timeout)

    def request(self, method, path, body=None, key=DEFAULT, raw=None, headers=None):
        """One request on a fresh connection → Response (status, json|None, raw)."""
        c = Client(self, key=key)
        try:
            return c.request(method, path, body=body, key=key, raw=raw, headers=headers)
        finally:
            c.close()

    def raw_request(self, method, path, body=b"", key=DEFAULT, headers=None, timeout=30):
        """Sends a request over a raw socket, stopping the upload as soon as the server
        answers (e.g. an early 413), then parses the response. For bodies the server
        may refuse before reading them."""
        if key is DEFAULT:
            key = self.key
        h = {"Host": "127.0.0.1:%d" % self.port, "Content-Type": "application/json",
             "Content-Length": str(len(body))}
        if key is not None:
            h["Authorization"] = "Bearer " + key
        if headers:
            h.update(headers)
        head = "%s %s HTTP/1.1\r\n" % (method, path)
        head += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(head.encode("latin-1"))
            off = 0
            while off < len(body):
                r, _, _ = select.select([s], [], [], 0)
                if r:
                    break
                try:
                    n = s.send(body[off:off + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    break
                off += n
            resp = http.client.HTTPResponse(s, method=method)
            resp.begin()
            rawb = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            return Response(resp.status, _parse(rawb), rawb, hdrs)
        finally:
            s.close()

    # ---- conveniences -----------------------------------------------------------
    def create_session(self, user="alice", agent="coder", key=DEFAULT, **extra):
        body = {"user": user, "agent": agent}
        body.update(extra)
        r = self.request("POST", "/v1/sessions", body, key=key)
        if r.status != 201:
            raise AssertionError("create session: %d %r" % (r.status, r.raw[:500]))
        return r.json

    def get_session(self, sid, key=DEFAULT):
        r = self.request("GET", "/v1/sessions/" + sid, key=key)
        if r.status != 200:
            raise AssertionError("get session %s: %d %r" % (sid, r.status, r.raw[:500]))
        return r.json

    def append(self, sid, body, key=DEFAULT):
        return self.request("POST", "/v1/sessions/%s/events" % sid, body, key=key)

    def all_events(self, sid, archived=False, key=DEFAULT, client=None):
        """Every event of a session, walking next_after pages of 1000."""
        out = []
        after = 0
        req = client.request if client is not None else self.request
        while True:
            path = "/v1/sessions/%s/events?after=%d&limit=1000" % (sid, after)
            if archived:
                path += "&include=archived"
            r = req("GET", path, key=key)
            if r.status != 200:
                raise AssertionError("events %s: %d %r" % (path, r.status, r.raw[:500]))
            out.extend(r.json["events"])
            if r.json["next_after"] is None:
                return out
            if r.json["next_after"] <= after:
                raise AssertionError("next_after did not advance: %r" % r.json["next_after"])
            after = r.json["next_after"]

    def facts(self, sid, key=DEFAULT):
        r = self.request("GET", "/v1/sessions/%s/facts" % sid, key=key)
        if r.status != 200:
            raise AssertionError("facts %s: %d %r" % (sid, r.status, r.raw[:500]))
        return r.json["facts"]

    def snapshot(self, sid, key=DEFAULT):
        """Session object, full history and facts: what a refused request must not
        change."""
        return {"session": self.get_session(sid, key=key),
                "events": self.all_events(sid, archived=True, key=key),
                "live": self.all_events(sid, archived=False, key=key),
                "facts": self.facts(sid, key=key)}

    def create_key(self, tenant):
        """`charter keys create --tenant T --data-dir D` (works while serving)."""
        return create_key(self.dir, tenant, env=self.env)


def create_key(data_dir, tenant, env=None):
    p = subprocess.run([charter_bin(), "keys", "create", "--tenant", tenant, "--data-dir",
                        data_dir], capture_output=True, text=True, timeout=30, env=env)
    if SANITIZER_RE.search(p.stderr):
        raise AssertionError("sanitizer report from charter keys create:\n" + p.stderr)
    if p.returncode != 0:
        raise AssertionError("keys create failed (%d): %s %s"
                             % (p.returncode, p.stdout, p.stderr))
    m = KEY_RE.search(p.stdout)
    if m:
        return m.group(0)
    return p.stdout.strip()


# ---- assertions ---------------------------------------------------------------------
def _desc(resp):
    raw = resp[2] if len(resp) > 2 else b""
    return "status %s body %r" % (resp[0], raw[:400])


def assert_error_shape(resp):
    """A 4xx/5xx body is {"error": {"code": str, "message": str, "field"?: str,
    "state"?: str}} and nothing else."""
    status, doc = resp[0], resp[1]
    if not isinstance(doc, dict) or set(doc) != {"error"} or not isinstance(doc["error"], dict):
        raise AssertionError("not the error shape: " + _desc(resp))
    e = doc["error"]
    if not isinstance(e.get("code"), str) or not e["code"]:
        raise AssertionError("error.code missing: " + _desc(resp))
    if not isinstance(e.get("message"), str) or not e["message"]:
        raise AssertionError("error.message missing: " + _desc(resp))
    extra = set(e) - {"code", "message", "field", "state"}
    if extra:
        raise AssertionError("unexpected error members %s: %s" % (sorted(extra), _desc(resp)))
    for k in ("field", "state"):
        if k in e and not isinstance(e[k], str):
            raise AssertionError("error.%s is not a string: %s" % (k, _desc(resp)))
    return e


def assert_error(resp, status, code, field=None, state=None):
    """Checks status, the error shape, code and (when given) field / state."""
    if isinstance(status, (tuple, list, set)):
        ok = resp[0] in status
    else:
        ok = resp[0] == status
    if not ok:
        raise AssertionError("expected %s %s, got %s" % (status, code, _desc(resp)))
    e = assert_error_shape(resp)
    codes = code if isinstance(code, (tuple, list, set)) else (code,)
    if e["code"] not in codes:
        raise AssertionError("expected code %s, got %s" % (code, _desc(resp)))
    if field is not None and e.get("field") != field:
        raise AssertionError("expected field %r, got %s" % (field, _desc(resp)))
    if state is not None and e.get("state") != state:
        raise AssertionError("expected state %r, got %s" % (state, _desc(resp)))
    return e


def assert_status(resp, status):
    if resp[0] != status:
        raise AssertionError("expected %d, got %s" % (status, _desc(resp)))
    return resp[1]


def check_session_shape(tc, s):
    tc.assertIsInstance(s, dict)
    tc.assertEqual(set(s), SESSION_FIELDS, "session fields: %r" % s)
    tc.assertRegex(s["id"], ID_RE)
    tc.assertRegex(s["created_at"], TIME_RE)
    tc.assertRegex(s["updated_at"], TIME_RE)
    tc.assertGreaterEqual(s["updated_at"], s["created_at"])
    tc.assertIn(s["state"], ("open", "active", "paused", "inert", "closed", "archived"))
    tc.assertIsInstance(s["seq"], int)
    tc.assertIsInstance(s["summary_seq"], int)
    tc.assertIsInstance(s["usage"], dict)
    tc.assertEqual(set(s["usage"]), {"tokens", "cost_usd", "tool_calls"})


def main():
    """unittest.main, then cleanup: data dirs removed on success, kept on failure.
    Exits non-zero on failure."""
    prog = unittest.main(verbosity=1, exit=False)
    ok = prog.result.wasSuccessful()
    for s in list(_servers):
        s.kill9()  # normally stopped already; a SIGKILL leaves no sanitizer report
        rep = s.sanitizer_report()
        if rep:
            ok = False
            print("harness: sanitizer report in %s:\n%s\n---- full log ----\n%s"
                  % (s.log_path, rep, s.log_text()), file=sys.stderr)
    for s in list(_servers):
        s.cleanup(keep=not ok)
        if not ok:
            print("harness: ---- tail of %s ----\n%s" % (s.log_path, s.log_text()[-4000:]),
                  file=sys.stderr)
    _servers.clear()
    print("%s: %s" % (os.path.basename(sys.argv[0]), "PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


@atexit.register
def _kill_leftovers():
    for s in _servers:
        try:
            s.kill9()
        except Exception:
            pass
