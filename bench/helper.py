#!/usr/bin/env python3
"""helper.py — setup steps of bench/run.sh that are awkward in shell.

Talks to a running `charter serve` over keep-alive HTTP (stdlib http.client only):

  helper.py sessions PORT KEYFILE COUNT OUTFILE
      Creates COUNT sessions and writes their ids to OUTFILE, one per line.

  helper.py bundle-session PORT KEYFILE EVENTS OUTFILE
      Creates one session holding EVENTS events appended in batches of 1000, then
      50 more, compacts through EVENTS (so the live log is the summary plus 50
      events), writes 10 facts, checks the bundle has that shape and writes the
      session id to OUTFILE. Several sizes can be filled in parallel by starting one
      process per size.

  helper.py check-mandate PORT KEYFILE OUTFILE
      Creates the mandate tree of the check benchmark: a root (actor "lead",
      max_depth 2) with a child ("planner") and a grandchild ("coder") at depth 2,
      each with CHECK_SCOPE (10 tools, 4 lanes, 10 resource patterns, classes
      read/write/external); checks that the grandchild allows the benchmark's
      action and writes its id to OUTFILE.

  helper.py free-port
      Prints a TCP port on 127.0.0.1 that is free right now.

Any unexpected HTTP status is fatal: it prints the response and exits 1.
"""
import http.client
import json
import socket
import sys
import time

BATCH = 1000
TAIL = 50
FACTS = 10
CONTENT = "hello world, this is one user message appended by the benchmark"
# The scope of the check benchmark's mandates (the same as bench/bench_check.c's).
CHECK_SCOPE = {
    "tools": ["git", "shell", "browser", "python", "node", "psql", "kubectl", "docker",
              "curl", "grep"],
    "lanes": ["repo", "web", "db", "ci"],
    "resources": ["repo:web/*", "repo:api/*", "repo:infra/README.md", "db:analytics/*",
                  "db:users", "docs:handbook/*", "ci:pipeline/web", "ci:pipeline/api",
                  "web:https://example.com/*", "repo:shared/lib/*"],
    "classes": ["read", "write", "external"],
}


class Client:
    def __init__(self, port, keyfile):
        with open(keyfile, encoding="utf-8") as f:
            key = f.read().strip()
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}

    def call(self, method, path, body=None, want=200):
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != want:
            sys.exit(f"helper: {method} {path} -> {resp.status} (wanted {want}): {raw[:500]!r}")
        return json.loads(raw) if raw else None


def create_session(client, agent):
    return client.call("POST", "/v1/sessions", {"user": "bench", "agent": agent}, want=201)["id"]


def cmd_sessions(port, keyfile, count, outfile):
    client = Client(int(port), keyfile)
    ids = [create_session(client, "bench-append") for _ in range(int(count))]
    with open(outfile, "w", encoding="utf-8") as f:
        f.write("\n".join(ids) + "\n")


def events_body(n):
    event = {"kind": "message", "role": "user", "content": CONTENT}
    return json.dumps({"events": [event] * n}).encode()


def cmd_bundle_session(port, keyfile, events, outfile):
    client = Client(int(port), keyfile)
    total = int(events)
    sid = create_session(client, f"bench-bundle-{total}")
    path = f"/v1/sessions/{sid}/events"
    full = events_body(BATCH)
    start = time.monotonic()
    done = 0
    while done < total:
        n = min(BATCH, total - done)
        body = full if n == BATCH else events_body(n)
        got = client.call("POST", path, body, want=201)
        if got["last_seq"] != done + n:
            sys.exit(f"helper: {sid}: last_seq {got['last_seq']}, expected {done + n}")
        done += n
    fill_secs = time.monotonic() - start
    client.call("POST", path, events_body(TAIL), want=201)
    compact = client.call("POST", f"/v1/sessions/{sid}/compact",
                          {"through_seq": total,
                           "summary": f"The user sent {total} greetings; nothing else happened."})
    if compact.get("summary_seq") != total:
        sys.exit(f"helper: {sid}: compact returned {compact!r}")
    for i in range(FACTS):
        client.call("PUT", f"/v1/sessions/{sid}/facts/fact_{i}",
                    {"value": {"index": i, "note": "a durable fact the agent must not lose"}})
    bundle = client.call("GET", f"/v1/sessions/{sid}/bundle")
    if (len(bundle.get("events", [])) != TAIL or bundle.get("summary") is None
            or len(bundle.get("facts", {})) != FACTS):
        sys.exit(f"helper: {sid}: bundle has the wrong shape: {json.dumps(bundle)[:500]}")
    with open(outfile, "w", encoding="utf-8") as f:
        f.write(sid + "\n")
    print(f"filled {total} events in {fill_secs:.1f}s ({total / max(fill_secs, 1e-9):,.0f} events/s)",
          file=sys.stderr)


def expires_in(seconds):
    t = time.gmtime(time.time() + seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", t)


def cmd_check_mandate(port, keyfile, outfile):
    client = Client(int(port), keyfile)
    exp = expires_in(24 * 3600)
    root = client.call("POST", "/v1/mandates",
                       {"approver": "alice", "purpose": "ship passkey login", "actor": "lead",
                        "expires_at": exp, "max_depth": 2, "scope": CHECK_SCOPE}, want=201)
    mid = root["id"]
    for actor in ("planner", "coder"):
        mid = client.call("POST", f"/v1/mandates/{mid}/delegate",
                          {"actor": actor, "purpose": f"{actor}'s part of the login work",
                           "expires_at": exp, "scope": CHECK_SCOPE}, want=201)["id"]
    got = client.call("POST", "/v1/check",
                      {"mandate": mid, "actor": "coder",
                       "action": {"tool": "git", "lane": "repo", "resource": "repo:web/src/a.ts",
                                  "class": "write"}})
    if got.get("allow") is not True:
        sys.exit(f"helper: check on {mid} does not allow: {got!r}")
    with open(outfile, "w", encoding="utf-8") as f:
        f.write(mid + "\n")


def cmd_free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def main(argv):
    cmds = {"sessions": (cmd_sessions, 4), "bundle-session": (cmd_bundle_session, 4),
            "check-mandate": (cmd_check_mandate, 3),
            "free-port": (cmd_free_port, 0)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        sys.exit(__doc__)
    fn, _ = cmds[argv[1]]
    fn(*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
