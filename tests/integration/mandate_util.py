"""mandate_util.py — helpers shared by the mandate integration tests
(test_mandates.py, test_check.py, test_sessions_mandates.py, test_events_stream.py,
test_malformed_mandates.py): times in the API's format, creating / delegating /
transitioning mandates with the status checked, `POST /v1/check`, the mission hash
computed independently, an error assertion that accepts a set of fields, a
Server-Sent Events reader on a raw socket, and an Ed25519 verifier (RFC 8032 reference
code) to check artifact signatures against the published JWK.

Not a test file itself (CTest runs only test_*.py). Python standard library only."""

import base64
import datetime
import hashlib
import json
import re
import select
import socket
import time

import harness
from harness import DEFAULT

MDT_RE = re.compile(r"^mdt_[0-9A-HJKMNP-TV-Z]{26}$")
UNKNOWN_MDT = "mdt_01JD3V6Y7C8X9Q2W5E4R3T2Y1A"

MANDATE_FIELDS = {
    "id", "state", "version", "purpose", "approver", "evidence", "actor", "scope",
    "conditions", "expires_at", "max_depth", "depth", "parent", "root", "budget", "spent",
    "mission_hash", "mission_header", "reason", "created_at", "updated_at",
}
TREE_ENTRY_FIELDS = {"id", "parent", "depth", "state", "version", "actor", "expires_at"}
CHECK_FIELDS = {"allow", "reason", "mandate", "mandate_version", "decision_id", "checked_at"}
AUDIT_FIELDS = {"id", "at", "kind", "mandate", "lineage", "actor", "session", "action",
                "allow", "reason", "mandate_version", "decision_id"}
SCOPE_KINDS = ("tools", "lanes", "resources", "classes")
CLASSES = ["read", "write", "external", "irreversible"]   # the order classes are returned in


def class_order(classes):
    """classes as the API returns them: in the order of CLASSES (docs/api.md)."""
    return [c for c in CLASSES if c in classes]

WIDE_SCOPE = {"tools": ["git", "make", "shell"], "lanes": ["docs", "repo"],
              "resources": ["doc:readme", "repo:web/*"], "classes": list(CLASSES)}
OK_ACTION = {"tool": "git", "lane": "repo", "resource": "repo:web/src/a.ts", "class": "read"}


# ---- time -----------------------------------------------------------------------------
def iso(t):
    """Epoch seconds → RFC 3339 UTC with milliseconds (truncated)."""
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def parse_ts(s):
    """RFC 3339 UTC with milliseconds → epoch seconds (float)."""
    dt = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def future(seconds):
    return iso(time.time() + seconds)


def wait_until(fn, timeout=3.0, interval=0.02):
    """Calls fn until it returns a truthy value (returned) or timeout (returns the last
    value)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# ---- errors -----------------------------------------------------------------------------
def assert_err(resp, status, code, field=None, state=None):
    """harness.assert_error, but `field` may be a tuple of acceptable fields."""
    if isinstance(field, (tuple, list, set)):
        e = harness.assert_error(resp, status, code, state=state)
        if e.get("field") not in field:
            raise AssertionError("expected field in %r, got %s" % (field, harness._desc(resp)))
        return e
    return harness.assert_error(resp, status, code, field=field, state=state)


# ---- mission hash -----------------------------------------------------------------------
def canonical(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def b64u_decode(s):
    if isinstance(s, str):
        s = s.encode("ascii")
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def mission_hash(purpose, scope, conditions):
    doc = {"purpose": purpose, "scope": scope, "conditions": conditions}
    return b64u(hashlib.sha256(canonical(doc).encode("utf-8")).digest())


def expected_hash(m):
    return mission_hash(m["purpose"], m["scope"], m["conditions"])


# ---- mandates ---------------------------------------------------------------------------
def mandate_body(**kw):
    body = {"approver": "alice", "expires_at": future(3600), "purpose": "test mission",
            "actor": "planner", "scope": json.loads(json.dumps(WIDE_SCOPE)), "max_depth": 4}
    for k, v in kw.items():
        if v is DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


DROP = object()


def create_mandate(srv, key=DEFAULT, raw_body=None, **kw):
    body = raw_body if raw_body is not None else mandate_body(**kw)
    r = srv.request("POST", "/v1/mandates", body, key=key)
    if r.status != 201:
        raise AssertionError("create mandate: %d %r (body %r)" % (r.status, r.raw[:500],
                                                                  json.dumps(body)[:300]))
    return r.json


def child_body(parent, /, **kw):
    """A delegation body that satisfies every rule against parent (a mandate object):
    another actor, the parent's scope and deadline."""
    body = {"actor": "child_of_" + (parent["actor"] or "none")[:200], "purpose": "sub task",
            "scope": {k: list(v) for k, v in parent["scope"].items()},
            "expires_at": parent["expires_at"]}
    for k, v in kw.items():
        if v is DROP:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def delegate(srv, parent, key=DEFAULT, raw_body=None, **kw):
    body = raw_body if raw_body is not None else child_body(parent, **kw)
    r = srv.request("POST", "/v1/mandates/%s/delegate" % parent["id"], body, key=key)
    if r.status != 201:
        raise AssertionError("delegate from %s: %d %r (body %r)"
                             % (parent["id"], r.status, r.raw[:500], json.dumps(body)[:300]))
    return r.json


def get_mandate(srv, mid, key=DEFAULT):
    r = srv.request("GET", "/v1/mandates/" + mid, key=key)
    if r.status != 200:
        raise AssertionError("get mandate %s: %d %r" % (mid, r.status, r.raw[:500]))
    return r.json


def transition(srv, mid, call, body=None, key=DEFAULT, expect=200):
    r = srv.request("POST", "/v1/mandates/%s/%s" % (mid, call), body, key=key)
    if expect is not None and r.status != expect:
        raise AssertionError("%s %s: expected %d, got %d %r" % (call, mid, expect, r.status,
                                                                r.raw[:500]))
    return r


def tree(srv, mid, key=DEFAULT):
    r = srv.request("GET", "/v1/mandates/%s/tree" % mid, key=key)
    if r.status != 200:
        raise AssertionError("tree %s: %d %r" % (mid, r.status, r.raw[:500]))
    return r.json


def check(req, mandate, action=None, actor=None, session=None, key=DEFAULT, artifact=None,
          **action_kw):
    """POST /v1/check. req is a Server or a Client. Returns the Response."""
    a = dict(OK_ACTION)
    if action:
        a.update(action)
    a.update(action_kw)
    if "cls" in a:
        a["class"] = a.pop("cls")
    body = {"action": a}
    if artifact is not None:
        body["artifact"] = artifact
    else:
        body["mandate"] = mandate
    if actor is not None:
        body["actor"] = actor
    if session is not None:
        body["session"] = session
    return req.request("POST", "/v1/check", body, key=key)


def decide(req, mandate, **kw):
    """check() that must answer 200; returns (allow, reason, json)."""
    r = check(req, mandate, **kw)
    if r.status != 200:
        raise AssertionError("check %s: %d %r" % (mandate, r.status, r.raw[:500]))
    return r.json["allow"], r.json["reason"], r.json


def budget_of(m, dim):
    """A mandate's limit on dim, None when unlimited (absent, null, or budget null)."""
    b = m.get("budget")
    if not b:
        return None
    return b.get(dim)


def audit_all(srv, mandate=None, key=DEFAULT, limit=1000):
    out, after = [], None
    while True:
        path = "/v1/audit?limit=%d" % limit
        if mandate:
            path += "&mandate=" + mandate
        if after is not None:
            path += "&after=%d" % after
        r = srv.request("GET", path, key=key)
        if r.status != 200:
            raise AssertionError("audit %s: %d %r" % (path, r.status, r.raw[:500]))
        out.extend(r.json["records"])
        nxt = r.json["next_after"]
        if nxt is None:
            return out
        if after is not None and nxt <= after:
            raise AssertionError("audit next_after did not advance")
        after = nxt


# ---- Server-Sent Events -----------------------------------------------------------------
class SSE:
    """One `GET /v1/events` stream on a raw socket. Decodes chunked transfer encoding
    and the text/event-stream format. next_event() returns
    {"id": str|None, "event": str|None, "data": parsed JSON (or raw str)} or None on
    timeout."""

    def __init__(self, srv, key=DEFAULT, last_event_id=None, query="", timeout=10):
        if key is DEFAULT:
            key = srv.key
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
        h = ["GET /v1/events%s HTTP/1.1" % query, "Host: 127.0.0.1:%d" % srv.port,
             "Accept: text/event-stream"]
        if key is not None:
            h.append("Authorization: Bearer " + key)
        if last_event_id is not None:
            h.append("Last-Event-ID: %s" % last_event_id)
        self.sock.sendall(("\r\n".join(h) + "\r\n\r\n").encode("latin-1"))
        self.raw = b""
        self.text = b""
        self.eof = False
        self.comments = []
        self.retry = None
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.raw:
            if not self._recv(deadline):
                raise AssertionError("no response head from /v1/events: %r" % self.raw[:300])
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.length = None
        if not self.chunked and "content-length" in self.headers:
            self.length = int(self.headers["content-length"])
        self._decode()

    def _recv(self, deadline):
        t = deadline - time.monotonic()
        if t <= 0 or self.eof:
            return False
        r, _, _ = select.select([self.sock], [], [], t)
        if not r:
            return False
        try:
            b = self.sock.recv(65536)
        except (ConnectionResetError, OSError):
            b = b""
        if not b:
            self.eof = True
            return False
        self.raw += b
        return True

    def _decode(self):
        if not self.chunked:
            self.text += self.raw
            self.raw = b""
            return
        while True:
            i = self.raw.find(b"\r\n")
            if i < 0:
                return
            size = int(self.raw[:i].split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.eof = True
                return
            if len(self.raw) < i + 2 + size + 2:
                return
            self.text += self.raw[i + 2:i + 2 + size]
            self.raw = self.raw[i + 2 + size + 2:]

    def body(self, timeout=5):
        """For a non-200 answer: the whole body, parsed as JSON when it is."""
        deadline = time.monotonic() + timeout
        while (self.length is None or len(self.text) < self.length) and not self.eof:
            if not self._recv(deadline):
                break
            self._decode()
        return harness.Response(self.status, harness._parse(self.text), self.text, self.headers)

    def _take_event(self):
        t = self.text.replace(b"\r\n", b"\n")
        i = t.find(b"\n\n")
        if i < 0:
            self.text = t
            return None
        block, self.text = t[:i], t[i + 2:]
        ev = {"id": None, "event": None, "data": None}
        data = []
        for ln in block.decode("utf-8").split("\n"):
            if ln.startswith(":"):
                self.comments.append(ln)
                continue
            k, _, v = ln.partition(":")
            if v.startswith(" "):
                v = v[1:]
            if k == "data":
                data.append(v)
            elif k in ("id", "event"):
                ev[k] = v
            elif k == "retry":
                self.retry = v
        if not data and ev["id"] is None and ev["event"] is None:
            return False  # comment-only block
        raw = "\n".join(data)
        try:
            ev["data"] = json.loads(raw)
        except ValueError:
            ev["data"] = raw
        return ev

    def next_event(self, timeout=3.0):
        deadline = time.monotonic() + timeout
        while True:
            ev = self._take_event()
            if ev:
                return ev
            if ev is False:
                continue
            if not self._recv(deadline):
                return None
            self._decode()

    def collect(self, n, timeout=5.0):
        """Exactly n events (fewer if the timeout passes first)."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            ev = self.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                break
            out.append(ev)
        return out

    def drain(self, idle=0.4, timeout=10.0):
        """Every event until idle seconds pass with none."""
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = self.next_event(idle)
            if ev is None:
                break
            out.append(ev)
        return out

    def wait_for(self, pred, timeout=5.0):
        """Events up to and including the first one pred accepts (None if none)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                return out, None
            out.append(ev)
            if pred(ev):
                return out, ev

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream_backlog(srv, after=0, key=DEFAULT, idle=0.4):
    """Every persisted event after `after`, read from `GET /v1/events?after=`."""
    s = SSE(srv, key=key, query="?after=%d" % after)
    try:
        if s.status != 200:
            raise AssertionError("events stream: %r" % (s.body().raw[:300],))
        return s.drain(idle=idle)
    finally:
        s.close()


# ---- Ed25519 verification (RFC 8032 section 6 reference code) ----------------------------
_p = 2 ** 255 - 19
_q = 2 ** 252 + 27742317777372353535851937790883648493


def _inv(x):
    return pow(x, _p - 2, _p)


_d = -121665 * _inv(121666) % _p
_sqrt_m1 = pow(2, (_p - 1) // 4, _p)


def _add(P, Q):
    A, B = (P[1] - P[0]) * (Q[1] - Q[0]) % _p, (P[1] + P[0]) * (Q[1] + Q[0]) % _p
    C, D = 2 * P[3] * Q[3] * _d % _p, 2 * P[2] * Q[2] % _p
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F, G * H, F * G, E * H)


def _mul(s, P):
    Q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            Q = _add(Q, P)
        P = _add(P, P)
        s >>= 1
    return Q


def _equal(P, Q):
    return (P[0] * Q[2] - Q[0] * P[2]) % _p == 0 and (P[1] * Q[2] - Q[1] * P[2]) % _p == 0


def _recover_x(y, sign):
    if y >= _p:
        return None
    x2 = (y * y - 1) * _inv(_d * y * y + 1)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_p + 3) // 8, _p)
    if (x * x - x2) % _p != 0:
        x = x * _sqrt_m1 % _p
    if (x * x - x2) % _p != 0:
        return None
    if (x & 1) != sign:
        x = _p - x
    return x


_gy = 4 * _inv(5) % _p
_gx = _recover_x(_gy, 0)
_G = (_gx, _gy, 1, _gx * _gy % _p)


def _decompress(s):
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _p)


def ed25519_verify(public, msg, sig):
    if len(public) != 32 or len(sig) != 64:
        return False
    A = _decompress(public)
    R = _decompress(sig[:32])
    if not A or not R:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= _q:
        return False
    h = int.from_bytes(hashlib.sha512(sig[:32] + public + msg).digest(), "little") % _q
    return _equal(_mul(s, _G), _add(R, _mul(h, A)))


def _selftest():
    # RFC 8032 7.1, TEST 1 and TEST 2
    pk = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert ed25519_verify(pk, b"", sig)
    assert not ed25519_verify(pk, b"x", sig)
    pk2 = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    sig2 = bytes.fromhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                         "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
    assert ed25519_verify(pk2, b"\x72", sig2)


_selftest()
