#!/usr/bin/env python3
"""scopes.py — loaders and analysis of the ephemeral-scope rows of bench/run.sh.

Talks to a running `charter serve` (Python stdlib only). Creating scopes one request
at a time over http.client tops out at a few thousand per second per process, far too
slow for a million, so the loaders here write raw HTTP/1.1 on keep-alive sockets,
PIPELINE bytes of requests per write (charter answers pipelined requests in order),
from several processes at once. Only the loaders pipeline; the throughput rows
measured with wrk and redis-benchmark do not.

  scopes.py setup PORT KEYFILE COUNT OUTFILE
      Creates COUNT scopes (agent "bench-scope", ttl 3600 s, a 100-byte context) and
      writes their ids to OUTFILE, one per line: the scopes of the GET / PUT rows.

  scopes.py load PORT KEYFILE COUNT
      Creates COUNT scopes with a 100-byte context (ttl 3600 s) as fast as it can and
      checks that every answer is a 201. Prints
        scope_load created=N seconds=S per_sec=R

  scopes.py expiry PORT KEYFILE COUNT OUTFILE
      The expiry lateness benchmark. Picks T, the start of a wall-clock second at least
      LEAD seconds ahead, and creates COUNT scopes whose deadlines fall uniformly in
      [T, T + 1 s): each request's ttl is T + random(0..999) ms - now, in ms ("4321ms"),
      computed right before its batch is sent; the reply's expires_at is the truth.
      After T + 2 s it reads GET /v1/events?after=0 (SSE) until it has an
      `ephemeral.evicted` event for every scope (or 30 s pass) and computes, per scope,
      lateness = event `at` - expires_at (both to the ms). Then it estimates the p99
      of the server's own charter_scope_expiry_lateness_seconds histogram, GETs a
      sample of 1,000 of the scopes (all must be 404) and reads charter_scopes.
      Writes the lateness of every scope to OUTFILE (ms, one per line) and prints
        scope_expiry n=N events=E p50_ms=X p99_ms=Y max_ms=Z mean_ms=M early=K
            create_s=C due_span_ms=D hist_p99_ms=H hist_count=HC sample_404=A/B live=L

  scopes.py redis-fill PORT COUNT
      Waits for the Redis server on PORT (up to 15 s), then SETs key:000000000000 ..
      key:<COUNT-1> (the names redis-benchmark -r COUNT uses) to a 100-byte value with
      a 1 h expiry, pipelined, and checks DBSIZE.

  scopes.py redis-csv FILE
      Parses redis-benchmark --csv output: one line per test
        redis name=<test> rps=R p50_ms=X p99_ms=Y

  scopes.py hist-p99 PORT METRIC
      Prints the p99 (in ms) of a histogram on /metrics, interpolated within its bucket
      as Prometheus' histogram_quantile does, and its count: "p99_ms=X count=N".

Any unexpected HTTP status is fatal: it prints the response and exits 1.
"""
import calendar
import http.client
import multiprocessing
import random
import re
import socket
import sys
import time

PROCS = 3            # loader processes (`load` uses twice as many)
PIPELINE = 128       # requests written at once on a connection
TTL_LONG = "3600s"
AGENT = "bench-scope"
LEAD = 5.0           # seconds between the start of the expiry load and T, at least
SSE_TIMEOUT = 30.0
SAMPLE = 1000

# A 100-byte context (canonical JSON: no spaces): {"task":"t-0000001","note":"xx…"}.
def context_json(i):
    head = '{"task":"t-%07d","note":"' % (i % 10000000)
    return head + "x" * (100 - len(head) - 2) + '"}'


assert len(context_json(1)) == 100


def read_key(keyfile):
    with open(keyfile, encoding="utf-8") as f:
        return f.read().strip()


def die(msg):
    sys.exit("scopes: " + msg)


# ---- raw pipelined HTTP/1.1 --------------------------------------------------------

HEAD_END = b"\r\n\r\n"
CL_RE = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


class Pipe:
    """One keep-alive connection that writes many requests at once and reads their
    answers in order (status, body)."""

    def __init__(self, port, key):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.auth = ("Authorization: Bearer %s\r\n" % key).encode()
        self.buf = b""

    def request(self, method, path, body=None):
        if body is None:
            return b"%s %s HTTP/1.1\r\nHost: bench\r\n%s\r\n" % (
                method.encode(), path.encode(), self.auth)
        if isinstance(body, str):
            body = body.encode()
        return b"%s %s HTTP/1.1\r\nHost: bench\r\n%sContent-Type: application/json\r\n" \
               b"Content-Length: %d\r\n\r\n%s" % (method.encode(), path.encode(), self.auth,
                                                 len(body), body)

    def exchange(self, reqs):
        """Sends the requests (bytes) in one write, returns [(status, body)]."""
        self.sock.sendall(b"".join(reqs))
        out = []
        buf = self.buf
        pos = 0
        while len(out) < len(reqs):
            end = buf.find(HEAD_END, pos)
            if end < 0:
                buf = buf[pos:]
                pos = 0
                chunk = self.sock.recv(65536)
                if not chunk:
                    die("the server closed the connection")
                buf += chunk
                continue
            m = CL_RE.search(buf, pos, end + 2)
            if m is None:
                die("a response without content-length: %r" % buf[pos:end][:300])
            n = int(m.group(1))
            while len(buf) < end + 4 + n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    die("the server closed the connection")
                buf += chunk
            out.append((int(buf[pos + 9:pos + 12]), buf[end + 4:end + 4 + n]))
            pos = end + 4 + n
        self.buf = buf[pos:]
        return out

    def close(self):
        self.sock.close()


def check_all(answers, want, what):
    for status, body in answers:
        if status != want:
            die("%s -> %d (wanted %d): %r" % (what, status, want, body[:300]))


def create_body(i, ttl):
    return '{"agent":"%s","ttl":"%s","context":%s}' % (AGENT, ttl, context_json(i))


ID_RE = re.compile(rb'"id":"(eph_[0-9A-Za-z]+)"')
EXP_RE = re.compile(rb'"expires_at":"([^"]+)"')


def _create_worker(args):
    """Creates scopes first..last-1 over one connection; returns their ids."""
    port, key, first, last, want_ids = args
    p = Pipe(port, key)
    ids = []
    i = first
    while i < last:
        n = min(PIPELINE, last - i)
        reqs = [p.request("POST", "/v1/ephemeral", create_body(j, TTL_LONG))
                for j in range(i, i + n)]
        answers = p.exchange(reqs)
        check_all(answers, 201, "POST /v1/ephemeral")
        if want_ids:
            ids.extend(ID_RE.search(b).group(1).decode() for _, b in answers)
        i += n
    p.close()
    return ids


def split(count, parts):
    step = (count + parts - 1) // parts
    return [(k * step, min(count, (k + 1) * step)) for k in range(parts) if k * step < count]


def parallel(fn, jobs):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(jobs)) as pool:
        return pool.map(fn, jobs, chunksize=1)


def cmd_setup(port, keyfile, count, outfile):
    key = read_key(keyfile)
    jobs = [(int(port), key, a, b, True) for a, b in split(int(count), PROCS)]
    ids = [i for part in parallel(_create_worker, jobs) for i in part]
    if len(ids) != int(count) or len(set(ids)) != len(ids):
        die("setup: %d ids (%d distinct), wanted %s" % (len(ids), len(set(ids)), count))
    with open(outfile, "w", encoding="utf-8") as f:
        f.write("\n".join(ids) + "\n")


def cmd_load(port, keyfile, count):
    key = read_key(keyfile)
    count = int(count)
    jobs = [(int(port), key, a, b, False) for a, b in split(count, PROCS * 2)]
    t0 = time.monotonic()
    parallel(_create_worker, jobs)
    secs = time.monotonic() - t0
    print("scope_load created=%d seconds=%.2f per_sec=%.0f" % (count, secs, count / secs))


# ---- expiry lateness -----------------------------------------------------------------

_epoch_cache = {}


def iso_ms(s):
    """'2026-11-21T08:43:39.463Z' -> ms since the epoch."""
    if isinstance(s, bytes):
        s = s.decode()
    head = s[:19]
    base = _epoch_cache.get(head)
    if base is None:
        base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) * 1000
        _epoch_cache[head] = base
    frac = s[20:-1] if len(s) > 20 and s[19] == "." else "0"
    return base + int((frac + "000")[:3])


def _expiry_worker(args):
    """Creates last-first scopes due in [T, T+1s); returns [(id, expires_at ms)]."""
    port, key, first, last, t_ms, seed = args
    rnd = random.Random(seed)
    p = Pipe(port, key)
    out = []
    i = first
    while i < last:
        n = min(PIPELINE, last - i)
        now = int(time.time() * 1000)
        reqs = []
        for j in range(i, i + n):
            ttl = t_ms + rnd.randrange(1000) - now
            reqs.append(p.request("POST", "/v1/ephemeral", create_body(j, "%dms" % ttl)))
        answers = p.exchange(reqs)
        check_all(answers, 201, "POST /v1/ephemeral")
        for _, b in answers:
            out.append((ID_RE.search(b).group(1).decode(), iso_ms(EXP_RE.search(b).group(1))))
        i += n
    p.close()
    return out


def metrics_text(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    if r.status != 200:
        die("GET /metrics -> %d" % r.status)
    return text


def hist_p99(text, name, q=0.99):
    """(p99 in the histogram's unit, count) of histogram NAME, Prometheus style."""
    buckets = []
    count = 0
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le),
                            float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not buckets or count == 0:
        return None, 0
    rank = q * count
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le, int(count)
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9), int(count)
        prev_le, prev_n = le, n
    return prev_le, int(count)


def metric_value(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


AT_RE = re.compile(rb'"at":"([^"]+)"')
SCOPE_RE = re.compile(rb'"scope":"(eph_[0-9A-Za-z]+)"')


def read_evictions(port, key, want):
    """{scope id: at ms} of the ephemeral.evicted events from GET /v1/events?after=0."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /v1/events?after=0 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer "
                 + key.encode() + b"\r\nAccept: text/event-stream\r\n\r\n")
    got = {}
    buf = b""
    deadline = time.monotonic() + SSE_TIMEOUT
    started = False
    while len(got) < want and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        if not started:
            end = buf.find(HEAD_END)
            if end < 0:
                continue
            if not buf.startswith(b"HTTP/1.1 200"):
                die("GET /v1/events -> %r" % buf[:300])
            buf = buf[end + 4:]
            started = True
        # Chunked transfer: the chunk-size lines never start with "data: ", so reading
        # the data lines alone is enough; keep the last, possibly partial, line.
        cut = buf.rfind(b"\n")
        if cut < 0:
            continue
        lines, buf = buf[:cut], buf[cut + 1:]
        for line in lines.split(b"\n"):
            if line.startswith(b"data: ") and b'"type":"ephemeral.evicted"' in line:
                got[SCOPE_RE.search(line).group(1).decode()] = iso_ms(AT_RE.search(line).group(1))
    sock.close()
    return got


def pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))]


def cmd_expiry(port, keyfile, count, outfile):
    port, count, key = int(port), int(count), read_key(keyfile)
    t_ms = (int(time.time() + LEAD) + 1) * 1000   # the start of a wall-clock second
    jobs = [(port, key, a, b, t_ms, a) for a, b in split(count, PROCS)]
    t0 = time.monotonic()
    scopes = dict(kv for part in parallel(_expiry_worker, jobs) for kv in part)
    create_s = time.monotonic() - t0
    if len(scopes) != count:
        die("expiry: %d distinct scopes created, wanted %d" % (len(scopes), count))
    done_ms = int(time.time() * 1000)
    due = sorted(scopes.values())
    if done_ms >= due[0]:
        die("expiry: creating took %.2f s and ran past the first deadline; raise LEAD" % create_s)
    time.sleep(max(0.0, (t_ms + 2000) / 1000.0 - time.time()))

    events = read_evictions(port, key, count)
    late = sorted(events[i] - e for i, e in scopes.items() if i in events)
    if not late:
        die("expiry: no ephemeral.evicted event for any of the scopes")
    with open(outfile, "w", encoding="utf-8") as f:
        f.write("\n".join(str(x) for x in late) + "\n")

    text = metrics_text(port)
    hp99, hcount = hist_p99(text, "charter_scope_expiry_lateness_seconds")
    live = None
    for line in text.splitlines():
        if line.startswith('charter_scopes{flow="scoped"}'):
            live = int(float(line.split()[1]))

    sample = random.Random(1).sample(sorted(scopes), min(SAMPLE, count))
    p = Pipe(port, key)
    answers = []
    for k in range(0, len(sample), PIPELINE):
        answers += p.exchange([p.request("GET", "/v1/ephemeral/" + i)
                               for i in sample[k:k + PIPELINE]])
    p.close()
    n404 = sum(1 for s, _ in answers if s == 404)

    print("scope_expiry n=%d events=%d p50_ms=%d p99_ms=%d max_ms=%d mean_ms=%.2f early=%d "
          "create_s=%.2f due_span_ms=%d hist_p99_ms=%s hist_count=%d sample_404=%d/%d live=%s"
          % (count, len(events), pct(late, 50), pct(late, 99), late[-1],
             sum(late) / len(late), sum(1 for x in late if x < 0), create_s,
             due[-1] - due[0], "-" if hp99 is None else "%.2f" % (hp99 * 1000), hcount,
             n404, len(sample), live))
    if len(late) != count:
        die("expiry: only %d of %d scopes have an ephemeral.evicted event within %.0f s"
            % (len(late), count, SSE_TIMEOUT))
    if n404 != len(sample):
        die("expiry: %d of %d sampled scopes still answer" % (len(sample) - n404, len(sample)))


def cmd_hist_p99(port, name):
    v, n = hist_p99(metrics_text(int(port)), name)
    print("p99_ms=%s count=%d" % ("-" if v is None else "%.3f" % (v * 1000), n))


# ---- Redis -------------------------------------------------------------------------

def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def cmd_redis_fill(port, count):
    port, count = int(port), int(count)
    deadline = time.monotonic() + 15
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(resp("PING"))
            if sock.recv(64).startswith(b"+PONG"):
                break
            sock.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            die("no answer from redis on port %d after 15 s" % port)
        time.sleep(0.05)
    value = b"v" * 100
    sent = 0
    while sent < count:
        n = min(1000, count - sent)
        sock.sendall(b"".join(resp("SET", "key:%012d" % (sent + j), value, "EX", 3600)
                              for j in range(n)))
        want, buf = b"+OK\r\n" * n, b""
        while len(buf) < len(want):
            chunk = sock.recv(1 << 16)
            if not chunk:
                die("redis closed the connection")
            buf += chunk
        if buf != want:
            die("redis: unexpected reply to SET: %r" % buf[:200])
        sent += n
    sock.sendall(resp("DBSIZE"))
    got = sock.recv(64)
    if got != b":%d\r\n" % count:
        die("redis: DBSIZE %r after filling %d keys" % (got, count))
    sock.close()


def cmd_redis_csv(path):
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f if l.strip().startswith('"')]
    if not lines:
        die("no CSV lines in " + path)
    head = [h.strip('"') for h in lines[0].split('","')]
    if head[0] != "test":
        die("unexpected CSV header in %s: %s" % (path, lines[0]))
    for line in lines[1:]:
        row = dict(zip(head, (v.strip('"') for v in line.split('","'))))
        name = row["test"].split()[0]
        print("redis name=%s rps=%s p50_ms=%s p99_ms=%s" % (
            name, row["rps"], row.get("p50_latency_ms", "-"), row.get("p99_latency_ms", "-")))


def main(argv):
    cmds = {"setup": (cmd_setup, 4), "load": (cmd_load, 3), "expiry": (cmd_expiry, 4),
            "redis-fill": (cmd_redis_fill, 2), "redis-csv": (cmd_redis_csv, 1),
            "hist-p99": (cmd_hist_p99, 2)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        sys.exit(__doc__)
    fn, _ = cmds[argv[1]]
    fn(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
