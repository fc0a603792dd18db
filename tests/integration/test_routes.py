"""test_routes.py — the happy path of every route in docs/api.md, with the response
fields checked exactly as documented."""

import http.client
import json
import os
import re
import select
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import TIME_RE, EVENT_FIELDS, assert_status, check_session_shape, q  # noqa: E402
import mandate_util  # noqa: E402

srv = None


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


class HealthAndMetrics(unittest.TestCase):
    def test_healthz(self):
        r = srv.request("GET", "/healthz", key=None)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"status": "ok"})

    def test_metrics(self):
        # Make sure there has been at least one request and one commit.
        s = srv.create_session(user="metrics")
        assert_status(srv.append(s["id"], {"kind": "message", "content": "m"}), 201)
        r = srv.request("GET", "/metrics", key=None)
        self.assertEqual(r.status, 200, r.raw[:300])
        self.assertTrue(r.headers.get("content-type", "").startswith("text/plain"),
                        r.headers.get("content-type"))
        text = r.raw.decode("utf-8")
        sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
                            r'(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)( \d+)?$')
        names = set()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = sample.match(line)
            self.assertIsNotNone(m, "not a Prometheus sample line: %r" % line)
            float(m.group(3))  # value parses (NaN/+Inf included)
            names.add(m.group(1))
        for want in ("charter_http_requests_total",):
            self.assertIn(want, names, "metrics lack %s" % want)
        for hist in ("charter_commit_batch_size", "charter_commit_seconds"):
            for suffix in ("_bucket", "_sum", "_count"):
                self.assertIn(hist + suffix, names, "metrics lack %s%s" % (hist, suffix))
        self.assertRegex(text, r'charter_commit_batch_size_bucket\{.*le="\+Inf".*\} ')

        def total(txt, name):
            t = 0.0
            for line in txt.splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    t += float(line.rsplit(" ", 1)[1])
            return t

        self.assertGreater(total(text, "charter_commit_batch_size_count"), 0)
        before = total(text, "charter_http_requests_total")
        for _ in range(5):
            srv.request("GET", "/v1/sessions/" + s["id"])
        for _ in range(40):   # counted as the reply goes out: allow a moment
            text2 = srv.request("GET", "/metrics", key=None).raw.decode("utf-8")
            if total(text2, "charter_http_requests_total") >= before + 5:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(total(text2, "charter_http_requests_total"), before + 5)

    def test_healthz_head(self):
        r = srv.request("HEAD", "/healthz", key=None)
        self.assertEqual(r.status, 200)

    def test_metrics_per_route(self):
        """docs/operations.md: every documented metric is there, and requests are
        counted per route and status (401s under route "other")."""
        s = srv.create_session(user="metrics2")

        def sample(text, name, labels):
            want = "%s{%s} " % (name, ",".join('%s="%s"' % kv for kv in labels))
            for line in text.splitlines():
                if line.startswith(want):
                    return float(line[len(want):])
            return 0.0

        before = srv.request("GET", "/metrics", key=None)
        self.assertEqual(before.headers.get("content-type"), "text/plain; version=0.0.4")
        t0 = before.raw.decode()
        for name, kind in (("charter_http_requests_total", "counter"),
                           ("charter_http_request_seconds", "histogram"),
                           ("charter_commit_batch_size", "histogram"),
                           ("charter_commit_seconds", "histogram"),
                           ("charter_fsync_seconds", "histogram"),
                           ("charter_commit_failures_total", "counter"),
                           ("charter_inflight_writes", "gauge")):
            self.assertRegex(t0, r"(?m)^# TYPE %s %s$" % (name, kind))
        ev = ("route", "POST /v1/sessions/{id}/events"), ("status", "201")
        un = ("route", "other"), ("status", "401")
        nf = ("route", "GET /v1/sessions/{id}"), ("status", "404")
        for i in range(7):
            assert_status(srv.append(s["id"], {"kind": "m"}), 201)
        for i in range(3):
            assert_status(srv.request("GET", "/v1/sessions", key=None), 401)
        srv.request("GET", "/v1/sessions/sess_01JD3V6Y7C8X9Q2W5E4R3T2Y1A")
        # a request is counted as its reply goes out: give the last one a moment
        for _ in range(40):
            t1 = srv.request("GET", "/metrics", key=None).raw.decode()
            if (sample(t1, "charter_http_requests_total", nf)
                    > sample(t0, "charter_http_requests_total", nf)):
                break
            time.sleep(0.05)
        self.assertEqual(sample(t1, "charter_http_requests_total", ev)
                         - sample(t0, "charter_http_requests_total", ev), 7)
        self.assertEqual(sample(t1, "charter_http_requests_total", un)
                         - sample(t0, "charter_http_requests_total", un), 3)
        self.assertEqual(sample(t1, "charter_http_requests_total", nf)
                         - sample(t0, "charter_http_requests_total", nf), 1)
        self.assertEqual(sample(t1, "charter_http_request_seconds_count", ev)
                         - sample(t0, "charter_http_request_seconds_count", ev), 7)
        self.assertRegex(t1, r"(?m)^charter_commit_failures_total 0$")
        # nothing is in flight once every reply is in (allow the counter a moment)
        for _ in range(40):
            if re.search(r"(?m)^charter_inflight_writes 0$", t1):
                break
            time.sleep(0.05)
            t1 = srv.request("GET", "/metrics", key=None).raw.decode()
        self.assertRegex(t1, r"(?m)^charter_inflight_writes 0$")


def read_responses(sk, n):
    """Reads n HTTP/1.1 responses from a socket → [(status, parsed JSON body)].
    Handles Content-Length and chunked bodies."""
    buf = b""

    def fill():
        nonlocal buf
        chunk = sk.recv(65536)
        if not chunk:
            raise AssertionError("connection closed after %d responses" % len(out))
        buf += chunk

    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            fill()
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, v in
                (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        if "content-length" in hdrs:
            size = int(hdrs["content-length"])
            while len(buf) < size:
                fill()
            body, buf = buf[:size], buf[size:]
        else:
            body = b""
            while True:
                while b"\r\n" not in buf:
                    fill()
                line, buf = buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    fill()
                body, buf = body + buf[:size], buf[size + 2:]
                if size == 0:
                    break
        out.append((status, json.loads(body)))
    return out


class HttpFraming(unittest.TestCase):
    """Plain HTTP/1.x things clients do: pipelining, HTTP/1.0, Expect: 100-continue."""

    def raw(self, data):
        sk = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        sk.sendall(data)
        return sk

    def read_response(self, sk, method="GET"):
        r = http.client.HTTPResponse(sk, method=method)
        r.begin()
        body = r.read()
        return r.status, body

    def test_pipelining(self):
        sid = srv.create_session(user="pipe")["id"]
        auth = "Authorization: Bearer %s\r\n" % srv.key
        reqs = b""
        for i in range(3):
            body = json.dumps({"kind": "m", "content": i}).encode()
            reqs += ("POST /v1/sessions/%s/events HTTP/1.1\r\nHost: x\r\n%s"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % (sid, auth, len(body))).encode() + body
        reqs += ("GET /v1/sessions/%s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (sid, auth)).encode()
        sk = self.raw(reqs)
        try:
            got = read_responses(sk, 4)
        finally:
            sk.close()
        self.assertEqual([g[0] for g in got], [201, 201, 201, 200])
        self.assertEqual([g[1] for g in got[:3]],
                         [{"first_seq": i, "last_seq": i} for i in (1, 2, 3)])
        self.assertEqual(got[3][1]["seq"], 3)
        self.assertEqual([e["content"] for e in srv.all_events(sid)], [0, 1, 2])

    def test_http10(self):
        sk = self.raw(b"GET /healthz HTTP/1.0\r\n\r\n")
        try:
            status, body = self.read_response(sk)
        finally:
            sk.close()
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})

    def test_expect_100_continue(self):
        sid = srv.create_session(user="expect")["id"]
        body = json.dumps({"kind": "m", "content": "y" * 100000}).encode()
        sk = self.raw(("POST /v1/sessions/%s/events HTTP/1.1\r\nHost: x\r\n"
                       "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                       "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                       % (sid, srv.key, len(body))).encode())
        try:
            # a client may send the body after a 100 or after a short wait without one
            r, _, _ = select.select([sk], [], [], 1.0)
            pre = b""
            if r:
                pre = sk.recv(25)
                self.assertTrue(pre.startswith(b"HTTP/1.1 100"), pre)
                while not pre.endswith(b"\r\n\r\n"):
                    pre += sk.recv(1)
            sk.sendall(body)
            status, rb = self.read_response(sk, "POST")
        finally:
            sk.close()
        self.assertEqual(status, 201, rb[:300])
        self.assertEqual(json.loads(rb), {"first_seq": 1, "last_seq": 1})


class Sessions(unittest.TestCase):
    def test_create_minimal(self):
        r = srv.request("POST", "/v1/sessions", {"user": "alice", "agent": "coder"})
        self.assertEqual(r.status, 201, r.raw)
        s = r.json
        check_session_shape(self, s)
        self.assertEqual(s["user"], "alice")
        self.assertEqual(s["agent"], "coder")
        self.assertIsNone(s["mandate"])
        self.assertEqual(s["state"], "open")
        self.assertEqual(s["seq"], 0)
        self.assertEqual(s["summary_seq"], 0)
        self.assertEqual(s["usage"], {"tokens": 0, "cost_usd": 0.0, "tool_calls": 0})
        self.assertIn(s["labels"], ({}, None))
        self.assertEqual(s["created_at"], s["updated_at"])

    def test_create_full_and_get(self):
        mdt = mandate_util.create_mandate(srv)["id"]
        body = {"user": "bob", "agent": "planner", "mandate": mdt,
                "labels": {"repo": "web", "team": "infra"},
                "budget": {"tokens": 100000, "cost_usd": 5.0, "tool_calls": 200}}
        r = srv.request("POST", "/v1/sessions", body)
        self.assertEqual(r.status, 201, r.raw)
        s = r.json
        check_session_shape(self, s)
        self.assertEqual(s["mandate"], mdt)
        self.assertEqual(s["labels"], {"repo": "web", "team": "infra"})
        self.assertEqual(s["budget"], {"tokens": 100000, "cost_usd": 5.0, "tool_calls": 200})
        g = srv.request("GET", "/v1/sessions/" + s["id"])
        self.assertEqual(g.status, 200)
        self.assertEqual(g.json, s)

    def test_create_partial_budget(self):
        s = srv.create_session(user="carol", budget={"tokens": 5})
        self.assertEqual(s["budget"]["tokens"], 5)
        for k in ("cost_usd", "tool_calls"):
            self.assertIsNone(s["budget"].get(k))

    def test_ids_unique_and_ordered(self):
        ids = [srv.create_session(user="order")["id"] for _ in range(5)]
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(ids, sorted(ids))

    def test_list_filters_and_paging(self):
        user = "pager_user"
        mdt = mandate_util.create_mandate(srv)["id"]
        ids = [srv.create_session(user=user, agent="a%d" % i,
                                  mandate=(mdt if i % 2 else None))["id"]
               for i in range(7)]
        r = srv.request("GET", "/v1/sessions?user=" + user)
        self.assertEqual(r.status, 200)
        self.assertEqual(set(r.json), {"sessions", "next_cursor"})
        self.assertEqual([s["id"] for s in r.json["sessions"]], ids)
        self.assertIsNone(r.json["next_cursor"])
        for s in r.json["sessions"]:
            check_session_shape(self, s)
            self.assertEqual(s["user"], user)
        # cursor walk with limit=3: 3 + 3 + 1, never repeats or skips
        seen, cursor, pages = [], None, 0
        while True:
            path = "/v1/sessions?user=%s&limit=3" % user
            if cursor:
                path += "&cursor=" + q(cursor)
            r = srv.request("GET", path)
            self.assertEqual(r.status, 200, r.raw)
            self.assertLessEqual(len(r.json["sessions"]), 3)
            seen += [s["id"] for s in r.json["sessions"]]
            pages += 1
            cursor = r.json["next_cursor"]
            if cursor is None:
                break
            self.assertIsInstance(cursor, str)
            self.assertLess(pages, 10)
        self.assertEqual(seen, ids)
        self.assertEqual(pages, 3)
        # mandate filter
        r = srv.request("GET", "/v1/sessions?user=%s&mandate=%s" % (user, mdt))
        self.assertEqual([s["id"] for s in r.json["sessions"]], ids[1::2])
        # state filter
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % ids[0]), 200)
        r = srv.request("GET", "/v1/sessions?user=%s&state=paused" % user)
        self.assertEqual([s["id"] for s in r.json["sessions"]], [ids[0]])
        r = srv.request("GET", "/v1/sessions?user=%s&state=open" % user)
        self.assertEqual([s["id"] for s in r.json["sessions"]], ids[1:])
        # unknown user → empty page
        r = srv.request("GET", "/v1/sessions?user=nobody_at_all")
        self.assertEqual(r.json, {"sessions": [], "next_cursor": None})

    def test_cursor_walk_with_concurrent_creates(self):
        """Sessions created during a walk show up after the ones already seen, once."""
        user = "walker"
        ids = [srv.create_session(user=user)["id"] for _ in range(5)]
        seen, cursor = [], None
        for page in range(20):
            path = "/v1/sessions?user=%s&limit=2" % user
            if cursor:
                path += "&cursor=" + q(cursor)
            r = srv.request("GET", path)
            self.assertEqual(r.status, 200, r.raw)
            seen += [s["id"] for s in r.json["sessions"]]
            if page < 3:
                ids.append(srv.create_session(user=user)["id"])
            cursor = r.json["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(seen, ids)

    def test_list_filter_long_values(self):
        """Filters take values as long as the fields they match (256 bytes)."""
        for user in ("u" * 256, "é" * 128, "a b&c=d+e/f?"):
            mdt = mandate_util.create_mandate(srv)["id"]
            sid = srv.create_session(user=user, mandate=mdt)["id"]
            r = srv.request("GET", "/v1/sessions?user=%s" % q(user))
            self.assertEqual(r.status, 200, r.raw[:300])
            self.assertEqual([s["id"] for s in r.json["sessions"]], [sid])
            r = srv.request("GET", "/v1/sessions?user=%s&mandate=%s" % (q(user), mdt))
            self.assertEqual([s["id"] for s in r.json["sessions"]], [sid])
            # a mandate filter as long as the field, with reserved characters: no match
            r = srv.request("GET", "/v1/sessions?user=%s&mandate=%s"
                            % (q(user), q("m/&=" + "x" * 252)))
            self.assertEqual(r.status, 200, r.raw[:300])
            self.assertEqual(r.json["sessions"], [])

    def test_last_full_page_has_null_cursor(self):
        """When the sessions fill the last page exactly, that page says so."""
        user = "exact_pages"
        ids = [srv.create_session(user=user)["id"] for _ in range(4)]
        r = srv.request("GET", "/v1/sessions?user=%s&limit=2" % user).json
        self.assertEqual([s["id"] for s in r["sessions"]], ids[:2])
        self.assertIsNotNone(r["next_cursor"])
        r = srv.request("GET", "/v1/sessions?user=%s&limit=2&cursor=%s"
                        % (user, q(r["next_cursor"]))).json
        self.assertEqual([s["id"] for s in r["sessions"]], ids[2:])
        self.assertIsNone(r["next_cursor"])
        r = srv.request("GET", "/v1/sessions?user=%s&limit=4" % user).json
        self.assertEqual(len(r["sessions"]), 4)
        self.assertIsNone(r["next_cursor"])

    def test_list_default_limit(self):
        user = "many_user"
        for i in range(55):
            srv.create_session(user=user)
        r = srv.request("GET", "/v1/sessions?user=" + user)
        self.assertEqual(len(r.json["sessions"]), 50)
        self.assertIsNotNone(r.json["next_cursor"])
        r2 = srv.request("GET", "/v1/sessions?user=%s&cursor=%s"
                         % (user, q(r.json["next_cursor"])))
        self.assertEqual(len(r2.json["sessions"]), 5)
        self.assertIsNone(r2.json["next_cursor"])
        r3 = srv.request("GET", "/v1/sessions?user=%s&limit=1000" % user)
        self.assertEqual(len(r3.json["sessions"]), 55)


class Events(unittest.TestCase):
    def test_append_single_and_batch(self):
        s = srv.create_session(user="ev")
        sid = s["id"]
        r = srv.append(sid, {"kind": "message", "role": "user", "content": "hello",
                             "usage": {"tokens": 10, "cost_usd": 0.25, "tool_calls": 1},
                             "meta": {"trace": "t1"}})
        self.assertEqual(r.status, 201, r.raw)
        self.assertEqual(r.json, {"first_seq": 1, "last_seq": 1})
        s1 = srv.get_session(sid)
        self.assertEqual(s1["state"], "active")
        self.assertEqual(s1["seq"], 1)
        self.assertEqual(s1["created_at"], s["created_at"])
        self.assertGreaterEqual(s1["updated_at"], s["updated_at"])

        batch = {"events": [
            {"kind": "tool_call", "content": {"name": "ls", "args": ["-l"]},
             "usage": {"tokens": 5, "tool_calls": 2}},
            {"kind": "tool_result", "role": "tool", "content": [1, 2, 3]},
            {"kind": "state.v1-x", "content": None, "usage": {"cost_usd": 0.5}},
        ], "expect_seq": 1}
        r = srv.append(sid, batch)
        self.assertEqual(r.status, 201, r.raw)
        self.assertEqual(r.json, {"first_seq": 2, "last_seq": 4})

        s2 = srv.get_session(sid)
        self.assertEqual(s2["seq"], 4)
        self.assertEqual(s2["usage"]["tokens"], 15)
        self.assertEqual(s2["usage"]["tool_calls"], 3)
        self.assertAlmostEqual(s2["usage"]["cost_usd"], 0.75)

        r = srv.request("GET", "/v1/sessions/%s/events" % sid)
        self.assertEqual(r.status, 200)
        self.assertEqual(set(r.json), {"events", "next_after"})
        self.assertIsNone(r.json["next_after"])
        ev = r.json["events"]
        self.assertEqual([e["seq"] for e in ev], [1, 2, 3, 4])
        ats = [e["at"] for e in ev]
        self.assertEqual(ats, sorted(ats))
        self.assertGreaterEqual(ats[0], s["created_at"])
        sent = [{"kind": "message", "role": "user", "content": "hello",
                 "usage": {"tokens": 10, "cost_usd": 0.25, "tool_calls": 1},
                 "meta": {"trace": "t1"}}] + batch["events"]
        for e, want in zip(ev, sent):
            self.assertLessEqual(set(e), EVENT_FIELDS, e)
            self.assertRegex(e["at"], TIME_RE)
            for k, v in want.items():
                self.assertIn(k, e)
                self.assertEqual(e[k], v, "event %d field %s" % (e["seq"], k))
            for k in set(EVENT_FIELDS) - set(want) - {"seq", "at"}:
                self.assertIsNone(e.get(k), "event %d has unsent %s" % (e["seq"], k))

    def test_content_round_trip(self):
        """Any JSON as content comes back as sent."""
        sid = srv.create_session(user="rt")["id"]
        values = [0, -1, 2 ** 62, -(2 ** 62), 0.1, 1e-7, 1.5e300, True, False, None, "",
                  "ünïcödé ✓ \U0001F600", "quote\" back\\ nl\n tab\t ctl\u0001",
                  [], {}, [1, [2, [3, {"a": None}]]], {"z": 1, "a": 2, "m": {"": ""}}]
        r = srv.append(sid, {"events": [{"kind": "v", "content": v, "meta": {"i": i}}
                                        for i, v in enumerate(values)]})
        self.assertEqual(r.status, 201, r.raw[:300])
        ev = srv.all_events(sid)
        strict = lambda xs: [json.dumps(x, sort_keys=True) for x in xs]  # noqa: E731
        self.assertEqual(strict(e["content"] for e in ev), strict(values))  # True is not 1
        self.assertEqual([e["meta"] for e in ev], [{"i": i} for i in range(len(values))])
        for i, v in enumerate(values):
            r = srv.request("PUT", "/v1/sessions/%s/facts/v%d" % (sid, i), {"value": v})
            self.assertEqual(r.status, 200, r.raw[:300])
        facts = srv.facts(sid)
        self.assertEqual(strict(facts["v%d" % i] for i in range(len(values))), strict(values))

    def test_append_expect_seq_zero_on_open(self):
        s = srv.create_session(user="ev0")
        r = srv.append(s["id"], {"kind": "message", "expect_seq": 0})
        self.assertEqual(r.status, 201, r.raw)
        self.assertEqual(r.json, {"first_seq": 1, "last_seq": 1})
        r = srv.append(s["id"], {"kind": "message", "expect_seq": 0})
        harness.assert_error(r, 409, "seq_conflict", field="expect_seq")

    def test_paging(self):
        sid = srv.create_session(user="pg")["id"]
        r = srv.append(sid, {"events": [{"kind": "n", "content": i} for i in range(1, 26)]})
        self.assertEqual(r.json, {"first_seq": 1, "last_seq": 25})
        r = srv.request("GET", "/v1/sessions/%s/events?limit=10" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], list(range(1, 11)))
        self.assertEqual(r.json["next_after"], 10)
        r = srv.request("GET", "/v1/sessions/%s/events?after=10&limit=10" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], list(range(11, 21)))
        self.assertEqual(r.json["next_after"], 20)
        r = srv.request("GET", "/v1/sessions/%s/events?after=20&limit=10" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], list(range(21, 26)))
        self.assertIsNone(r.json["next_after"])
        self.assertEqual([e["content"] for e in r.json["events"]], list(range(21, 26)))
        # exactly at the end: the page is full and nothing follows
        r = srv.request("GET", "/v1/sessions/%s/events?after=15&limit=10" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], list(range(16, 26)))
        self.assertIsNone(r.json["next_after"])
        r = srv.request("GET", "/v1/sessions/%s/events?after=25" % sid)
        self.assertEqual(r.json, {"events": [], "next_after": None})
        r = srv.request("GET", "/v1/sessions/%s/events?after=1000" % sid)
        self.assertEqual(r.json, {"events": [], "next_after": None})
        r = srv.request("GET", "/v1/sessions/%s/events?limit=1" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], [1])
        self.assertEqual(r.json["next_after"], 1)

    def test_default_limit_100(self):
        sid = srv.create_session(user="pg100")["id"]
        r = srv.append(sid, {"events": [{"kind": "n"} for _ in range(150)]})
        self.assertEqual(r.json, {"first_seq": 1, "last_seq": 150})
        r = srv.request("GET", "/v1/sessions/%s/events" % sid)
        self.assertEqual(len(r.json["events"]), 100)
        self.assertEqual(r.json["next_after"], 100)
        r = srv.request("GET", "/v1/sessions/%s/events?limit=1000" % sid)
        self.assertEqual(len(r.json["events"]), 150)
        self.assertIsNone(r.json["next_after"])

    def test_batch_of_1000(self):
        sid = srv.create_session(user="b1000")["id"]
        r = srv.append(sid, {"events": [{"kind": "k", "content": i} for i in range(1000)]})
        self.assertEqual(r.status, 201, r.raw[:300])
        self.assertEqual(r.json, {"first_seq": 1, "last_seq": 1000})
        self.assertEqual(srv.get_session(sid)["seq"], 1000)


class Facts(unittest.TestCase):
    ODD_KEYS = [
        "plain",
        "with space",
        "a/b/c",                  # sent as a%2Fb%2Fc
        "ключ ✓ 鍵",               # unicode
        "..",                     # sent as %2E%2E: never a path
        "../../etc/passwd",
        "a..b",
        "100%",
        "q?x=1&y=2#frag",
        "a+b",
        "k" * 256,                # the longest key allowed
        "é" * 128,                # 256 bytes, 768 characters percent-encoded
        "'\";--",
    ]

    def test_put_get_list_delete(self):
        s = srv.create_session(user="facts")
        sid = s["id"]
        r = srv.request("PUT", "/v1/sessions/%s/facts/goal" % sid, {"value": {"x": [1, "two"]}})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(set(r.json), {"key", "value", "updated_at"})
        self.assertEqual(r.json["key"], "goal")
        self.assertEqual(r.json["value"], {"x": [1, "two"]})
        self.assertRegex(r.json["updated_at"], TIME_RE)
        g = srv.request("GET", "/v1/sessions/%s/facts/goal" % sid)
        self.assertEqual(g.status, 200)
        self.assertEqual(g.json, r.json)
        # overwrite
        r = srv.request("PUT", "/v1/sessions/%s/facts/goal" % sid, {"value": "new"})
        self.assertEqual(r.json["value"], "new")
        self.assertEqual(srv.request("GET", "/v1/sessions/%s/facts/goal" % sid).json["value"],
                         "new")
        # every JSON type as a value, null included
        for i, v in enumerate([None, True, 0, -1.5, "", [], {}, {"a": {"b": None}}]):
            r = srv.request("PUT", "/v1/sessions/%s/facts/t%d" % (sid, i), {"value": v})
            self.assertEqual(r.status, 200, r.raw)
            self.assertEqual(r.json["value"], v)
        facts = srv.facts(sid)
        self.assertEqual(facts["goal"], "new")
        self.assertEqual(len(facts), 9)
        self.assertIn("t0", facts)
        self.assertIsNone(facts["t0"])
        # delete
        r = srv.request("DELETE", "/v1/sessions/%s/facts/goal" % sid)
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"key": "goal", "deleted": True})
        harness.assert_error(srv.request("GET", "/v1/sessions/%s/facts/goal" % sid),
                             404, "not_found")
        harness.assert_error(srv.request("DELETE", "/v1/sessions/%s/facts/goal" % sid),
                             404, "not_found")
        self.assertNotIn("goal", srv.facts(sid))
        # facts do not touch the event log or seq
        self.assertEqual(srv.get_session(sid)["seq"], 0)
        self.assertEqual(srv.all_events(sid), [])

    def test_empty_facts(self):
        sid = srv.create_session(user="nofacts")["id"]
        r = srv.request("GET", "/v1/sessions/%s/facts" % sid)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {"facts": {}})
        harness.assert_error(srv.request("GET", "/v1/sessions/%s/facts/none" % sid),
                             404, "not_found")

    def test_odd_keys(self):
        sid = srv.create_session(user="oddkeys")["id"]
        for i, k in enumerate(self.ODD_KEYS):
            enc = q(k)
            if k == "..":
                enc = "%2E%2E"
            path = "/v1/sessions/%s/facts/%s" % (sid, enc)
            r = srv.request("PUT", path, {"value": i})
            self.assertEqual(r.status, 200, "PUT %r: %r" % (k, r.raw))
            self.assertEqual(r.json["key"], k)
            g = srv.request("GET", path)
            self.assertEqual(g.status, 200, "GET %r: %r" % (k, g.raw))
            self.assertEqual(g.json["key"], k)
            self.assertEqual(g.json["value"], i)
        facts = srv.facts(sid)
        self.assertEqual(facts, {k: i for i, k in enumerate(self.ODD_KEYS)})
        # lower-case percent-encoding decodes to the same key
        r = srv.request("GET", "/v1/sessions/%s/facts/a%%2fb%%2fc" % sid)
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["key"], "a/b/c")
        # '+' is not a space in a path
        r = srv.request("PUT", "/v1/sessions/%s/facts/x+y" % sid, {"value": 1})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["key"], "x+y")
        # delete an odd key
        r = srv.request("DELETE", "/v1/sessions/%s/facts/%s" % (sid, q("with space")))
        self.assertEqual(r.json, {"key": "with space", "deleted": True})
        self.assertNotIn("with space", srv.facts(sid))
        # the data dir holds no file named after a key
        for root, dirs, files in os.walk(srv.dir):
            for name in dirs + files:
                self.assertNotIn(name, ("passwd", "plain", "a..b"))


class Lifecycle(unittest.TestCase):
    def test_calls(self):
        sid = srv.create_session(user="lc")["id"]
        assert_status(srv.append(sid, {"kind": "message"}), 201)
        r = srv.request("POST", "/v1/sessions/%s/pause" % sid, {"reason": "lunch"})
        self.assertEqual(r.status, 200, r.raw)
        check_session_shape(self, r.json)
        self.assertEqual(r.json["state"], "paused")
        self.assertEqual(r.json["seq"], 2)
        r = srv.request("POST", "/v1/sessions/%s/resume" % sid)          # no body
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["state"], "active")
        r = srv.request("POST", "/v1/sessions/%s/close" % sid, {})      # empty object
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["state"], "closed")
        r = srv.request("POST", "/v1/sessions/%s/archive" % sid, {"reason": "old"})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["state"], "archived")
        self.assertEqual(r.json["seq"], 5)
        self.assertEqual(r.json, srv.get_session(sid))
        ev = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in ev], [1, 2, 3, 4, 5])
        lc = [e for e in ev if e["kind"] == "lifecycle"]
        self.assertEqual([(e["content"]["from"], e["content"]["to"]) for e in lc],
                         [("active", "paused"), ("paused", "active"), ("active", "closed"),
                          ("closed", "archived")])
        self.assertEqual(lc[0]["content"].get("reason"), "lunch")
        self.assertEqual(lc[3]["content"].get("reason"), "old")


class CompactAndBundle(unittest.TestCase):
    def test_compact_and_bundle(self):
        sid = srv.create_session(user="cb")["id"]
        assert_status(srv.request("PUT", "/v1/sessions/%s/facts/f" % sid, {"value": 1}), 200)
        r = srv.append(sid, {"events": [{"kind": "m", "content": i} for i in range(1, 11)]})
        self.assertEqual(r.json, {"first_seq": 1, "last_seq": 10})
        b = srv.request("GET", "/v1/sessions/%s/bundle" % sid)
        self.assertEqual(b.status, 200, b.raw)
        self.assertEqual(set(b.json), {"session", "facts", "summary", "events", "next_after"})
        self.assertIsNone(b.json["summary"])
        self.assertEqual([e["seq"] for e in b.json["events"]], list(range(1, 11)))
        self.assertIsNone(b.json["next_after"])
        self.assertEqual(b.json["facts"], {"f": 1})
        r = srv.request("POST", "/v1/sessions/%s/compact" % sid,
                        {"through_seq": 6, "summary": "six things happened"})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"summary_seq": 6, "archived": 6})
        s = srv.get_session(sid)
        self.assertEqual(s["summary_seq"], 6)
        self.assertEqual(s["seq"], 10)
        b = srv.request("GET", "/v1/sessions/%s/bundle" % sid).json
        self.assertEqual(b["session"], s)
        self.assertEqual(b["summary"]["kind"], "summary")
        self.assertEqual(b["summary"]["seq"], 6)
        self.assertEqual(b["summary"]["content"], "six things happened")
        self.assertEqual([e["seq"] for e in b["events"]], [7, 8, 9, 10])
        self.assertIsNone(b["next_after"])
        b = srv.request("GET", "/v1/sessions/%s/bundle?limit=3" % sid).json
        self.assertEqual([e["seq"] for e in b["events"]], [7, 8, 9])
        self.assertEqual(b["next_after"], 9)
        live = srv.all_events(sid)
        self.assertEqual([(e["seq"], e["kind"]) for e in live],
                         [(6, "summary"), (7, "m"), (8, "m"), (9, "m"), (10, "m")])
        full = srv.all_events(sid, archived=True)
        self.assertEqual([e["seq"] for e in full], list(range(1, 11)))
        self.assertEqual([e["content"] for e in full], list(range(1, 11)))


if __name__ == "__main__":
    harness.main()
