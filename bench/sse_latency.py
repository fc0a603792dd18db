#!/usr/bin/env python3
"""sse_latency.py — how long a revoke takes to reach an event-stream subscriber.

Usage: sse_latency.py PORT KEYFILE [N]      (N revokes, default 200)

One subscriber holds `GET /v1/events` open (with the key in KEYFILE) and reads it on
its own thread. Then, N times, on a separate keep-alive connection: create a mandate
(`POST /v1/mandates`), wait until its `mandate.created` event has arrived (so the
subscriber is idle and caught up), take t0, send `POST /v1/mandates/{id}/revoke`, and
take t1 on the reader thread as soon as the bytes holding that mandate's
`mandate.revoked` event come off the socket. t1 - t0 covers the revoke's commit and
fsync, the wake-up of the subscriber's loop, its read of the stream and the write.
The revoke's own HTTP answer (which also waits for the fsync) is read after t0 and
does not delay t1: the two arrive on different sockets.

Prints one line for bench/run.sh:

    sse_revoke n=N p50_ms=X p99_ms=Y max_ms=Z mean_ms=M

Exits 1 when a request gets an unexpected status or an event does not arrive within
10 s.
"""
import http.client
import json
import sys
import threading
import time

TIMEOUT = 10.0
WARMUP = 5


class Stream(threading.Thread):
    """Reads the SSE stream on its own thread; records when each event arrives."""

    def __init__(self, port, key):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/v1/events", headers={
            "Authorization": "Bearer " + key, "Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            sys.exit(f"sse_latency: GET /v1/events -> {self.resp.status}: "
                     f"{self.resp.read(500)!r}")
        self.cond = threading.Condition()
        self.arrived = {}   # (type, mandate) -> perf_counter() when its bytes arrived
        self.error = None

    def wait_for(self, etype, mandate):
        """The arrival time of that event; exits when it does not come in time."""
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while (etype, mandate) not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    sys.exit(f"sse_latency: {etype} of {mandate} did not arrive within "
                             f"{TIMEOUT:.0f} s" + (f" ({self.error})" if self.error else ""))
                self.cond.wait(left)
            return self.arrived.pop((etype, mandate))

    def run(self):
        buf = b""
        try:
            while True:
                # read1 returns what one recv() brings (chunked decoding included).
                data = self.resp.read1(65536)
                now = time.perf_counter()
                if not data:
                    self.error = self.error or "event stream closed by the server"
                    return
                buf += data
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    self.handle(block, now)
        except Exception as e:  # reported by the main thread
            self.error = f"event stream: {e!r}"
        finally:
            with self.cond:
                self.cond.notify_all()

    def handle(self, block, now):
        etype, data = None, None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                etype = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        if etype is None or data is None:
            return  # a comment (keep-alive) or the opening
        mandate = json.loads(data).get("mandate")
        with self.cond:
            self.arrived[(etype, mandate)] = now
            self.cond.notify_all()


def main(argv):
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    port, keyfile = int(argv[1]), argv[2]
    n = int(argv[3]) if len(argv) == 4 else 200
    with open(keyfile, encoding="utf-8") as f:
        key = f.read().strip()
    stream = Stream(port, key)
    stream.start()
    api = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}

    def post(path, body, want):
        api.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        resp = api.getresponse()
        raw = resp.read()
        if resp.status != want:
            sys.exit(f"sse_latency: POST {path} -> {resp.status} (wanted {want}): {raw[:500]!r}")
        return json.loads(raw)

    exp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 3600))
    lat = []
    for i in range(WARMUP + n):
        mid = post("/v1/mandates", {"approver": "alice", "purpose": f"sse latency {i}",
                                    "actor": "coder", "expires_at": exp,
                                    "scope": {"tools": ["git"], "classes": ["read"]}}, 201)["id"]
        stream.wait_for("mandate.created", mid)
        t0 = time.perf_counter()
        post(f"/v1/mandates/{mid}/revoke", {"reason": "latency probe"}, 200)
        t1 = stream.wait_for("mandate.revoked", mid)
        if i >= WARMUP:
            lat.append((t1 - t0) * 1000.0)
    lat.sort()

    def q(p):
        return lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))]

    print(f"sse_revoke n={len(lat)} p50_ms={q(0.5):.2f} p99_ms={q(0.99):.2f} "
          f"max_ms={lat[-1]:.2f} mean_ms={sum(lat) / len(lat):.2f}")


if __name__ == "__main__":
    main(sys.argv)
