"""redis_util.py — a private Redis for the ephemeral-engine integration tests
(test_ephemeral_engines.py, test_ephemeral_secure.py): `redis-server` (the Debian
package) on a free loopback port with no persistence and its own directory, and a
minimal RESP2 client to look at what charter wrote into it.

A missing redis-server fails the test rather than skipping it: CI installs it through
scripts/deps.sh. Not a test file itself (CTest runs only test_*.py). Python standard
library only."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import harness

REDIS_BIN = "/usr/bin/redis-server"


class RedisError(Exception):
    pass


class Resp:
    """One RESP2 connection: Resp(port)("SET", "k", "v")."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def close(self):
        for x in (self.f, self.sock):
            try:
                x.close()
            except OSError:
                pass

    def __call__(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RedisError(rest.decode())
        if t == b":":
            return int(rest)
        if t in (b"$", b"*"):
            n = int(rest)
            if n < 0:
                return None
            if t == b"*":
                return [self._read() for _ in range(n)]
            return self.f.read(n + 2)[:-2]
        raise RedisError("unexpected reply %r" % line)


class PrivateRedis:
    """redis-server on a free loopback port, no persistence, its own dir (also its
    working directory, so nothing of it lands elsewhere). stop() and start() keep the
    port, so a test can take Redis away and bring it back."""

    def __init__(self):
        if not os.path.exists(REDIS_BIN):
            raise AssertionError("%s is missing: install the Debian package redis-server"
                                 % REDIS_BIN)
        self.dir = tempfile.mkdtemp(prefix="charter-it-redis-")
        self.port = harness.free_port()
        self.proc = None
        self.log = None
        self.start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self):
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
             "--port", str(self.port), "--dir", self.dir, "--dbfilename", "dump.rdb",
             "--daemonize", "no"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.cmd("PING") == "PONG":
                    return
            except (OSError, RedisError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("redis-server did not start on port %d:\n%s" % (
                    self.port, open(os.path.join(self.dir, "redis.log"), errors="replace").read()))
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
            self.log = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cmd(self, *args):
        c = Resp(self.port)
        try:
            return c(*args)
        finally:
            c.close()

    def everything(self):
        """Every key with its value(s), as bytes: SCAN the whole key space."""
        out = []
        c = Resp(self.port)
        try:
            cursor = b"0"
            while True:
                cursor, keys = c("SCAN", cursor, "COUNT", "1000")
                for k in keys:
                    out.append(k)
                    t = c("TYPE", k)
                    if t == "string":
                        out.append(c("GET", k) or b"")
                    elif t == "hash":
                        out.extend(c("HGETALL", k))
                    elif t == "list":
                        out.extend(c("LRANGE", k, 0, -1))
                    elif t == "set":
                        out.extend(c("SMEMBERS", k))
                    elif t == "zset":
                        out.extend(c("ZRANGE", k, 0, -1))
                    else:
                        out.append(c("DUMP", k) or b"")
                if cursor == b"0":
                    return out
        finally:
            c.close()
