"""test_compaction.py — compaction moves the live events up to through_seq to the
archive behind one `summary` event; the archived history stays readable with
include=archived; facts are untouched; the resume bundle is built from facts, the
summary and the live tail."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import assert_error, assert_status  # noqa: E402

srv = None


def setUpModule():
    global srv
    srv = harness.Server()


def tearDownModule():
    srv.stop()


def compact(sid, through, summary):
    return srv.request("POST", "/v1/sessions/%s/compact" % sid,
                       {"through_seq": through, "summary": summary})


def fifty():
    sid = srv.create_session(user="compact")["id"]
    assert_status(srv.request("PUT", "/v1/sessions/%s/facts/plan" % sid,
                              {"value": {"steps": [1, 2]}}), 200)
    assert_status(srv.request("PUT", "/v1/sessions/%s/facts/owner" % sid,
                              {"value": "alice"}), 200)
    r = srv.append(sid, {"events": [{"kind": "message", "role": "user", "content": "e%d" % i,
                                     "usage": {"tokens": i}} for i in range(1, 51)]})
    assert r.json == {"first_seq": 1, "last_seq": 50}, r.raw
    return sid


class Compaction(unittest.TestCase):
    def test_compact_twice(self):
        sid = fifty()
        before = srv.snapshot(sid)
        r = compact(sid, 30, "the first thirty")
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"summary_seq": 30, "archived": 30})

        s = srv.get_session(sid)
        self.assertEqual(s["summary_seq"], 30)
        self.assertEqual(s["seq"], 50)
        self.assertEqual(s["state"], "active")
        self.assertEqual(s["usage"], before["session"]["usage"])  # usage is not recomputed

        live = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in live], [30] + list(range(31, 51)))
        self.assertEqual(live[0]["kind"], "summary")
        self.assertEqual(live[0]["content"], "the first thirty")
        self.assertRegex(live[0]["at"], harness.TIME_RE)
        self.assertEqual(live[1:], before["live"][30:])

        full = srv.all_events(sid, archived=True)
        self.assertEqual(full, before["events"])
        self.assertEqual([e["content"] for e in full], ["e%d" % i for i in range(1, 51)])
        self.assertEqual(srv.facts(sid), before["facts"])

        # paging through the live log after compaction starts at the summary
        r = srv.request("GET", "/v1/sessions/%s/events?limit=5" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], [30, 31, 32, 33, 34])
        self.assertEqual(r.json["next_after"], 34)
        r = srv.request("GET", "/v1/sessions/%s/events?after=10&limit=5" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], [30, 31, 32, 33, 34])
        r = srv.request("GET", "/v1/sessions/%s/events?after=30&limit=5" % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], [31, 32, 33, 34, 35])
        r = srv.request("GET", "/v1/sessions/%s/events?include=archived&after=28&limit=4"
                        % sid)
        self.assertEqual([e["seq"] for e in r.json["events"]], [29, 30, 31, 32])
        self.assertEqual(r.json["events"][1]["content"], "e30")
        self.assertEqual(r.json["next_after"], 32)

        # appends continue after the compaction
        r = srv.append(sid, {"kind": "message", "content": "e51", "expect_seq": 50})
        self.assertEqual(r.json, {"first_seq": 51, "last_seq": 51})
        before2 = srv.snapshot(sid)

        # second compaction replaces the summary
        r = compact(sid, 45, {"text": "through 45", "n": 45})
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json["summary_seq"], 45)
        self.assertEqual(r.json["archived"], 15)
        live = srv.all_events(sid)
        self.assertEqual([e["seq"] for e in live], [45] + list(range(46, 52)))
        self.assertEqual(live[0]["kind"], "summary")
        self.assertEqual(live[0]["content"], {"text": "through 45", "n": 45})
        self.assertEqual([e["kind"] for e in live].count("summary"), 1)
        full = srv.all_events(sid, archived=True)
        self.assertEqual(full, before2["events"])
        self.assertEqual([e["seq"] for e in full], list(range(1, 52)))
        self.assertNotIn("summary", [e["kind"] for e in full])
        self.assertEqual(srv.facts(sid), before["facts"])
        self.assertEqual(srv.get_session(sid)["summary_seq"], 45)

        # compacting everything: the live log is the summary alone
        r = compact(sid, 51, "all")
        self.assertEqual(r.status, 200, r.raw)
        self.assertEqual(r.json, {"summary_seq": 51, "archived": 6})
        live = srv.all_events(sid)
        self.assertEqual([(e["seq"], e["kind"], e["content"]) for e in live],
                         [(51, "summary", "all")])
        self.assertEqual([e["seq"] for e in srv.all_events(sid, archived=True)],
                         list(range(1, 52)))
        # nothing left to compact
        assert_error(compact(sid, 51, "again"), 422, "invalid_value", field="through_seq")

    def test_bad_through_seq(self):
        sid = fifty()
        assert_status(compact(sid, 20, "twenty"), 200)
        before = srv.snapshot(sid)
        for bad in (0, -1, 10, 20, 51, 10 ** 12):
            assert_error(compact(sid, bad, "x"), 422, "invalid_value", field="through_seq")
        for bad in ("30", 30.5, None, [30], {"n": 30}, True):
            assert_error(compact(sid, bad, "x"), (400, 422),
                         ("invalid_type", "invalid_value", "missing_field"),
                         field="through_seq")
        assert_error(srv.request("POST", "/v1/sessions/%s/compact" % sid, {"summary": "x"}),
                     400, "missing_field", field="through_seq")
        assert_error(srv.request("POST", "/v1/sessions/%s/compact" % sid,
                                 {"through_seq": 30}),
                     400, "missing_field", field="summary")
        assert_error(srv.request("POST", "/v1/sessions/%s/compact" % sid,
                                 {"through_seq": 30, "summary": "x", "extra": 1}),
                     400, "unknown_field", field="extra")
        self.assertEqual(srv.snapshot(sid), before)

    def test_compact_with_lifecycle_events_and_paused(self):
        sid = srv.create_session(user="compact_lc")["id"]
        assert_status(srv.append(sid, {"kind": "m", "content": 1}), 201)
        assert_status(srv.request("POST", "/v1/sessions/%s/pause" % sid), 200)   # seq 2
        assert_status(compact(sid, 2, "paused summary"), 200)
        s = srv.get_session(sid)
        self.assertEqual((s["state"], s["seq"], s["summary_seq"]), ("paused", 2, 2))
        assert_status(srv.request("POST", "/v1/sessions/%s/resume" % sid), 200)  # seq 3
        live = srv.all_events(sid)
        self.assertEqual([(e["seq"], e["kind"]) for e in live],
                         [(2, "summary"), (3, "lifecycle")])
        full = srv.all_events(sid, archived=True)
        self.assertEqual([(e["seq"], e["kind"]) for e in full],
                         [(1, "m"), (2, "lifecycle"), (3, "lifecycle")])


class Bundle(unittest.TestCase):
    def test_bundle_after_compaction(self):
        sid = fifty()
        assert_status(compact(sid, 30, "S30"), 200)
        r = srv.request("GET", "/v1/sessions/%s/bundle" % sid)
        self.assertEqual(r.status, 200, r.raw)
        b = r.json
        self.assertEqual(set(b), {"session", "facts", "summary", "events", "next_after"})
        self.assertEqual(b["session"], srv.get_session(sid))
        self.assertEqual(b["facts"], {"plan": {"steps": [1, 2]}, "owner": "alice"})
        self.assertEqual(b["summary"]["kind"], "summary")
        self.assertEqual(b["summary"]["seq"], 30)
        self.assertEqual(b["summary"]["content"], "S30")
        live = srv.all_events(sid)
        self.assertEqual(b["summary"], live[0])
        self.assertEqual(b["events"], live[1:])
        self.assertIsNone(b["next_after"])

    def test_bundle_paging(self):
        sid = fifty()
        assert_status(compact(sid, 30, "S30"), 200)
        r = srv.request("GET", "/v1/sessions/%s/bundle?limit=7" % sid)
        self.assertEqual(r.status, 200, r.raw)
        b = r.json
        self.assertEqual([e["seq"] for e in b["events"]], list(range(31, 38)))
        self.assertEqual(b["next_after"], 37)
        rest = srv.request("GET", "/v1/sessions/%s/events?after=%d&limit=1000"
                           % (sid, b["next_after"])).json
        self.assertEqual([e["seq"] for e in rest["events"]], list(range(38, 51)))
        self.assertIsNone(rest["next_after"])
        # limit exactly the tail: complete, next_after null
        b = srv.request("GET", "/v1/sessions/%s/bundle?limit=20" % sid).json
        self.assertEqual(len(b["events"]), 20)
        self.assertIsNone(b["next_after"])
        b = srv.request("GET", "/v1/sessions/%s/bundle?limit=19" % sid).json
        self.assertEqual(b["next_after"], 49)
        b = srv.request("GET", "/v1/sessions/%s/bundle?limit=1" % sid).json
        self.assertEqual([e["seq"] for e in b["events"]], [31])
        self.assertEqual(b["next_after"], 31)
        b = srv.request("GET", "/v1/sessions/%s/bundle?limit=10000" % sid).json
        self.assertEqual(len(b["events"]), 20)

    def test_bundle_bad_limit(self):
        """A limit outside 1-10000 is a bad query parameter: 400 bad_request."""
        sid = fifty()
        for bad in ("0", "10001", "abc", "-1", "1.5"):
            with self.subTest(limit=bad):
                assert_error(srv.request("GET", "/v1/sessions/%s/bundle?limit=%s"
                                         % (sid, bad)), 400, "bad_request")

    def test_bundle_without_compaction(self):
        sid = srv.create_session(user="bundle_plain")["id"]
        b = srv.request("GET", "/v1/sessions/%s/bundle" % sid).json
        self.assertEqual(b["facts"], {})
        self.assertIsNone(b["summary"])
        self.assertEqual(b["events"], [])
        self.assertIsNone(b["next_after"])
        r = srv.append(sid, {"events": [{"kind": "m", "content": i} for i in range(1000)]})
        self.assertEqual(r.status, 201, r.raw[:300])
        r = srv.append(sid, {"events": [{"kind": "m", "content": i} for i in range(200)]})
        self.assertEqual(r.status, 201, r.raw[:300])
        b = srv.request("GET", "/v1/sessions/%s/bundle" % sid).json
        self.assertIsNone(b["summary"])
        self.assertEqual([e["seq"] for e in b["events"]], list(range(1, 1001)))  # default 1000
        self.assertEqual(b["next_after"], 1000)

    def test_bundle_after_compacting_everything(self):
        sid = fifty()
        assert_status(compact(sid, 50, "everything"), 200)
        b = srv.request("GET", "/v1/sessions/%s/bundle" % sid).json
        self.assertEqual(b["summary"]["seq"], 50)
        self.assertEqual(b["events"], [])
        self.assertIsNone(b["next_after"])


if __name__ == "__main__":
    harness.main()
