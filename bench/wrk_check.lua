-- wrk_check.lua — wrk script for the check benchmark (bench/run.sh): POST /v1/check.
--
-- Every request checks one action of the agent "coder" against one mandate (the
-- depth-2 grandchild that `helper.py check-mandate` creates), cycling over ten actions:
-- eight inside the mandate's scope (allowed) and two outside it (denied, one for the
-- resource and one for the tool), so 80% of the answers are allows. The first is the
-- typical one:
--
--   {"mandate": ID, "actor": "coder",
--    "action": {"tool": "git", "lane": "repo", "resource": "repo:web/src/a.ts", "class": "write"}}
--
-- A check answers 200 whether it allows or denies; every other status is counted and
-- reported. The same script drives nginx's fixed-body location (same requests, same
-- Lua work in the load generator), which always "allows".
--
-- Arguments (after `--` on the wrk command line):
--   1  file holding the mandate id
--   2  file holding the API key (the server's bootstrap.key)
--
-- done() prints one line that run.sh parses:
--   RESULT requests=R seconds=S status_200=A other_status=O status_detail=... \
--          socket_errors=E p50_us=X p99_us=Y allowed=N
-- and, when some response was not a 200, the first one seen:
--   FIRST_ERROR <status> <start of the body>

local ACTIONS = {
    -- tool, lane, resource, class
    { "git", "repo", "repo:web/src/a.ts", "write" },
    { "git", "repo", "repo:api/handlers/login.go", "read" },
    { "shell", "repo", "repo:shared/lib/util.c", "write" },
    { "psql", "db", "db:analytics/events", "read" },
    { "curl", "web", "web:https://example.com/docs", "external" },
    { "kubectl", "ci", "ci:pipeline/web", "read" },
    { "git", "repo", "repo:infra/README.md", "write" },
    { "python", "db", "db:users", "read" },
    { "git", "repo", "repo:secrets/prod.env", "write" },    -- resource_out_of_scope
    { "rm", "repo", "repo:web/src/a.ts", "irreversible" },  -- tool_out_of_scope
}

local function read_first_line(path)
    local f = assert(io.open(path, "r"), "cannot open " .. path)
    local line = f:read("*l")
    f:close()
    assert(line, "empty file " .. path)
    return (line:gsub("%s+$", ""))
end

local threads = {}
local next_id = 0

function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
    threads[#threads + 1] = thread
end

local requests = {}
local cursor = 0
statuses = {}
allowed = 0
first_error = nil

function init(args)
    local mandate = read_first_line(args[1])
    local key = read_first_line(args[2])
    local headers = {
        ["Authorization"] = "Bearer " .. key,
        ["Content-Type"] = "application/json",
    }
    for i, a in ipairs(ACTIONS) do
        local body = string.format('{"mandate": "%s", "actor": "coder", "action": '
            .. '{"tool": "%s", "lane": "%s", "resource": "%s", "class": "%s"}}',
            mandate, a[1], a[2], a[3], a[4])
        requests[i] = wrk.format("POST", "/v1/check", headers, body)
    end
    cursor = ((thread_id or 0) * 5) % #requests
end

function request()
    cursor = cursor % #requests + 1
    return requests[cursor]
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    if status == 200 then
        if body and body:find('"allow":true', 1, true) then
            allowed = allowed + 1
        end
    elseif not first_error then
        first_error = status .. " " .. (body or ""):sub(1, 300):gsub("%s+", " ")
    end
end

function done(summary, latency, requests_)
    local totals, first, nallowed = {}, nil, 0
    for _, thread in ipairs(threads) do
        for status, n in pairs(thread:get("statuses")) do
            totals[status] = (totals[status] or 0) + n
        end
        nallowed = nallowed + (thread:get("allowed") or 0)
        first = first or thread:get("first_error")
    end
    local ok, other, detail = totals[200] or 0, 0, {}
    for status, n in pairs(totals) do
        if status ~= 200 then
            other = other + n
            detail[#detail + 1] = status .. ":" .. n
        end
    end
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d seconds=%.3f status_200=%d other_status=%d status_detail=%s "
            .. "socket_errors=%d p50_us=%d p99_us=%d allowed=%d\n",
        summary.requests, summary.duration / 1e6, ok, other,
        #detail > 0 and table.concat(detail, ",") or "-",
        e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(99), nallowed))
    if first then
        io.write("FIRST_ERROR " .. first .. "\n")
    end
end
