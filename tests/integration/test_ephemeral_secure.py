"""test_ephemeral_secure.py — the `secure` flow never lets its context out of charter's
guarded memory (docs/api.md "Ephemeral scopes", Flows): a unique canary string put
into a secure scope (at creation, by a context PUT, by a PATCH, and in refused
requests) on each engine (memory, sqlite, redis with a private redis-server) is
readable through the API, yet absent from every file under the data dir (the SQLite
store, its WAL, ephemeral.db, the server's debug-level log), from every key and
value in Redis and from a dump.rdb forced with SAVE — while the scope lives, after it
is deleted, and after the process is killed. The process is not dumpable: its core
file size limit is 0 (although it was started with an unlimited one) and a SIGABRT
leaves no core file. Controls prove each search works: the same canary in a `scoped`
scope IS found in ephemeral.db and in Redis, and a server run with `core_dumps: true`
does leave a core file."""

import glob
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from redis_util import PrivateRedis  # noqa: E402
from harness import assert_error, assert_status  # noqa: E402

PREFIX = "charter:eph:"
TOKEN = os.urandom(16).hex()
CANARY = "CANARY-" + TOKEN
NEEDLES = (CANARY.encode(), TOKEN.encode(), TOKEN.upper().encode())

WORKDIR = None      # the servers' working directory: where a core file would be written
_oldcwd = None


_redises = []


def setUpModule():
    """Servers inherit an unlimited core size (so that a 0 is charter's doing) and run
    in a scratch directory (where a core file would land)."""
    global WORKDIR, _oldcwd
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    os.environ["CHARTER_BIN"] = harness.charter_bin()
    WORKDIR = tempfile.mkdtemp(prefix="charter-it-cwd-")
    _oldcwd = os.getcwd()
    os.chdir(WORKDIR)


def tearDownModule():
    os.chdir(_oldcwd)
    shutil.rmtree(WORKDIR, ignore_errors=True)
    for r in _redises:
        r.cleanup()


# ---- helpers -------------------------------------------------------------------------------
def server_env():
    """An ASan build would set its own soft core limit to 0 (disable_coredump) and so
    pass the limit check without charter; ask it not to."""
    opts = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "disable_coredump=0"}


def config(engine, redis=None, core_dumps=None):
    c = "log_level: debug\nephemeral:\n  engine: %s\n  lock_grace: 1s\n" % engine
    if redis is not None:
        c += "  redis_url: %s\n" % redis.url
    if core_dumps is not None:
        c = "core_dumps: %s\n" % core_dumps + c
    return c


def hits_in_dir(path):
    """Files under path (recursively, binary) that hold the canary in any form."""
    found = []
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if any(n in data for n in NEEDLES):
                found.append(p)
    return found


def core_files():
    return [p for p in glob.glob(os.path.join(WORKDIR, "core*"))]


def core_pattern():
    try:
        with open("/proc/sys/kernel/core_pattern") as f:
            return f.read().strip()
    except OSError:
        return ""


def kernel_writes_cores_here():
    """The kernel's core_pattern writes a file in the crashing process's directory."""
    p = core_pattern()
    return bool(p) and not p.startswith("|") and "/" not in p


def core_limit(pid):
    with open("/proc/%d/limits" % pid) as f:
        for ln in f:
            if ln.startswith("Max core file size"):
                parts = ln.split()
                return parts[4], parts[5]
    raise AssertionError("no core limit in /proc/%d/limits" % pid)


def abort_and_wait(server):
    server.proc.send_signal(signal.SIGABRT)
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.kill9()
        raise AssertionError("SIGABRT did not end the server")
    server._closelog()
    return server.proc.returncode


# ---- the secure flow, once per engine --------------------------------------------------------
class SecureSuite:
    engine = None

    @classmethod
    def setUpClass(cls):
        cls.redis = None
        if cls.engine == "redis":
            cls.redis = PrivateRedis()
            _redises.append(cls.redis)
        cls.srv = harness.Server(config=config(cls.engine, cls.redis), env=server_env())

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def assert_nowhere(self, when):
        s = self.srv
        self.assertEqual(hits_in_dir(s.dir), [], "the canary is on disk %s" % when)
        self.assertNotIn(TOKEN, s.log_text_full(), "the canary is in the log %s" % when)
        if self.redis is not None and self.redis.proc.poll() is None:
            values = self.redis.everything()
            self.assertEqual([v[:80] for v in values if any(n in v for n in NEEDLES)], [],
                             "the canary is in Redis %s" % when)
            self.assertEqual(self.redis.cmd("SAVE"), "OK")
            self.assertTrue(os.path.exists(os.path.join(self.redis.dir, "dump.rdb")))
            self.assertEqual(hits_in_dir(self.redis.dir), [],
                             "the canary is in Redis's files %s" % when)

    def test_secure_canary(self):
        s = self.srv
        sess = s.create_session(user="u", agent="sec")["id"]
        ctx = {"token": CANARY, "nested": {"list": [CANARY, 1]}, "plain": "public"}
        r = s.request("POST", "/v1/ephemeral", {"agent": "sec", "flow": "secure", "context": ctx})
        self.assertEqual(r.status, 201, r.raw[:300])
        self.assertEqual(r.json["flow"], "secure")
        sid = r.json["id"]
        P = "/v1/ephemeral/" + sid
        r = s.request("PUT", P + "/context/copy", {"value": CANARY})
        self.assertEqual(r.status, 200, r.raw[:300])  # its reply: test_ephemeral.py
        r = s.request("PATCH", P, {"context": {"patched": "x" + CANARY, "plain": None}})
        self.assertEqual(r.status, 200, r.raw[:300])
        # refused requests that carry the canary
        for m, p, raw in (("PUT", P + "/context/bad", b'{"valu":"%s"}' % CANARY.encode()),
                          ("PATCH", P, b'{"context":{"t":"%s"' % CANARY.encode()),
                          ("PATCH", P, b'{"context":{"t":"%s","big":"%s"}}'
                           % (CANARY.encode(), b"z" * 70000)),
                          ("POST", "/v1/ephemeral",
                           b'{"agent":"sec","flow":"secure","ttl":0,"context":{"t":"%s"}}'
                           % CANARY.encode())):
            r = s.request(m, p, raw=raw)
            self.assertGreaterEqual(r.status, 400, r.raw[:200])
            self.assertLess(r.status, 500, r.raw[:200])
        # it works: the API gives the secrets back
        want = {"token": CANARY, "nested": {"list": [CANARY, 1]}, "copy": CANARY,
                "patched": "x" + CANARY}
        r = s.request("GET", P)
        self.assertEqual(r.status, 200, r.raw[:300])
        self.assertEqual(r.json["context"], want)
        self.assertEqual(s.request("GET", P + "/context/copy").json,
                         {"key": "copy", "value": CANARY})
        # calls that rewrite or re-render it
        for m, p, b in (("POST", P + "/lock", None), ("GET", P, None),
                        ("POST", P + "/unlock", None),
                        ("POST", P + "/extend", {"ttl": 300}), ("GET", P + "/context/token", None)):
            assert_status(s.request(m, p, b), 200)
        # complete without transfer_secrets locks it: no fact is written
        r = s.request("POST", P + "/complete", {"session": sess, "keys": ["token", "copy"]})
        self.assertEqual(r.status, 200, r.raw[:300])
        self.assertEqual((r.json["transferred"], r.json["locked"], r.json["purged"]),
                         ([], True, False))
        self.assertEqual(s.facts(sess), {})
        self.assertEqual(s.request("GET", P).json["context"], want)
        self.assert_nowhere("while the secure scope lives")
        # gone
        assert_status(s.request("POST", P + "/unlock"), 200)
        assert_status(s.request("DELETE", P), 200)
        assert_error(s.request("GET", P), 404, "not_found")
        self.assert_nowhere("after DELETE")

    def test_zz_not_dumpable(self):
        """The process refuses core dumps while a secure scope lives; killed, it leaves
        neither a core file nor the canary anywhere (runs last: it kills the server)."""
        s = self.srv
        r = s.request("POST", "/v1/ephemeral", {"agent": "sec", "flow": "secure",
                                                "context": {"token": CANARY}})
        self.assertEqual(r.status, 201, r.raw[:300])
        self.assertEqual(s.request("GET", "/v1/ephemeral/" + r.json["id"]).json["context"],
                         {"token": CANARY})
        self.assertEqual(core_limit(s.proc.pid), ("0", "0"))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_CORE)[0], resource.RLIM_INFINITY,
                         "the test itself should run with an unlimited core size")
        if not kernel_writes_cores_here():
            self.skipTest("kernel.core_pattern %r does not write core files in the "
                          "process's directory" % core_pattern())
        self.assertEqual(core_files(), [])
        self.assertEqual(abort_and_wait(s), -signal.SIGABRT)
        time.sleep(0.2)
        self.assertEqual(core_files(), [], "a core file was written")
        self.assertEqual(hits_in_dir(s.dir), [], "the canary is on disk after the kill")
        if self.redis is not None:
            self.assertEqual([v[:80] for v in self.redis.everything()
                              if any(n in v for n in NEEDLES)], [])


class MemoryEngine(SecureSuite, unittest.TestCase):
    engine = "memory"


class SqliteEngine(SecureSuite, unittest.TestCase):
    engine = "sqlite"


class RedisEngine(SecureSuite, unittest.TestCase):
    engine = "redis"


# ---- controls: the searches and the core check can see what they look for -------------------
class Controls(unittest.TestCase):
    def test_scoped_canary_is_found(self):
        rd = PrivateRedis()
        _redises.append(rd)
        for engine in ("sqlite", "redis"):
            with self.subTest(engine=engine):
                srv = harness.Server(config=config(engine, rd if engine == "redis" else None))
                try:
                    r = srv.request("POST", "/v1/ephemeral",
                                    {"agent": "ctl", "context": {"token": CANARY}})
                    self.assertEqual(r.status, 201, r.raw[:300])
                    self.assertEqual(r.json["flow"], "scoped")
                    if engine == "sqlite":
                        hits = hits_in_dir(srv.dir)
                        self.assertIn(os.path.join(srv.dir, "ephemeral.db"), hits)
                    else:
                        self.assertTrue(any(CANARY.encode() in v for v in rd.everything()))
                        self.assertEqual(rd.cmd("SAVE"), "OK")
                        self.assertIn(os.path.join(rd.dir, "dump.rdb"), hits_in_dir(rd.dir))
                        rd.cmd("FLUSHALL")
                        os.unlink(os.path.join(rd.dir, "dump.rdb"))
                finally:
                    srv.stop()

    def test_core_dumps_true_leaves_a_core(self):
        srv = harness.Server(config=config("memory", core_dumps="true"), env=server_env())
        try:
            self.assertEqual(core_limit(srv.proc.pid), ("unlimited", "unlimited"))
            if not kernel_writes_cores_here():
                self.skipTest("kernel.core_pattern %r does not write core files in the "
                              "process's directory" % core_pattern())
            self.assertEqual(abort_and_wait(srv), -signal.SIGABRT)
            deadline = time.monotonic() + 10
            while not core_files() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertNotEqual(core_files(), [], "no core file from a dumpable process: "
                                "the not-dumpable check cannot tell anything here")
        finally:
            srv.kill9()
            for p in core_files():
                os.unlink(p)


if __name__ == "__main__":
    harness.main()
