-- wrk_append.lua — wrk script for charter's append benchmarks (bench/run.sh).
--
-- POSTs events to /v1/sessions/<id>/events, choosing the session round-robin over the
-- ids in a file (one per line). Each wrk thread starts at a different offset so the
-- threads together spread their requests evenly. Only 201 responses count as
-- acknowledged appends; every other status is counted and reported.
--
-- Arguments (after `--` on the wrk command line):
--   1  file with session ids, one per line
--   2  file holding the API key (the server's bootstrap.key)
--   3  events per request: 1 sends one event object, N > 1 sends {"events": [N events]}
--
-- done() prints one line that run.sh parses:
--   RESULT requests=R seconds=S status_201=A other_status=O status_detail=... \
--          socket_errors=E p50_us=X p99_us=Y
-- and, when some response was not a 201, the first one seen:
--   FIRST_ERROR <status> <start of the body>

local EVENT = '{"kind":"message","role":"user",'
    .. '"content":"hello world, this is one user message appended by the benchmark"}'

local function read_lines(path)
    local f = assert(io.open(path, "r"), "cannot open " .. path)
    local lines = {}
    for line in f:lines() do
        line = line:gsub("%s+$", "")
        if line ~= "" then
            lines[#lines + 1] = line
        end
    end
    f:close()
    return lines
end

-- Main state: remember the threads so done() can collect their counters.
local threads = {}
local next_id = 0

function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
    threads[#threads + 1] = thread
end

-- Thread state: all requests are built once, request() only picks the next one.
local requests = {}
local cursor = 0
statuses = {}

function init(args)
    local ids = read_lines(args[1])
    local key = read_lines(args[2])[1]
    local per_request = tonumber(args[3] or "1")
    assert(#ids > 0, "no session ids in " .. args[1])
    assert(key, "no key in " .. args[2])

    local body
    if per_request <= 1 then
        body = EVENT
    else
        local events = {}
        for i = 1, per_request do
            events[i] = EVENT
        end
        body = '{"events":[' .. table.concat(events, ",") .. ']}'
    end
    local headers = {
        ["Authorization"] = "Bearer " .. key,
        ["Content-Type"] = "application/json",
    }
    for i, id in ipairs(ids) do
        requests[i] = wrk.format("POST", "/v1/sessions/" .. id .. "/events", headers, body)
    end
    -- thread_id is set by setup() before init() runs.
    cursor = ((thread_id or 0) * math.floor(#requests / 2)) % #requests
end

function request()
    cursor = cursor % #requests + 1
    return requests[cursor]
end

-- The first unexpected response of each thread, kept to show what went wrong.
first_error = nil

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
    if status ~= 201 and not first_error then
        first_error = status .. " " .. (body or ""):sub(1, 300):gsub("%s+", " ")
    end
end

function done(summary, latency, requests_)
    local totals, first = {}, nil
    for _, thread in ipairs(threads) do
        local st = thread:get("statuses")
        for status, n in pairs(st) do
            totals[status] = (totals[status] or 0) + n
        end
        first = first or thread:get("first_error")
    end
    local ok, other, detail = totals[201] or 0, 0, {}
    for status, n in pairs(totals) do
        if status ~= 201 then
            other = other + n
            detail[#detail + 1] = status .. ":" .. n
        end
    end
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d seconds=%.3f status_201=%d other_status=%d status_detail=%s "
            .. "socket_errors=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration / 1e6, ok, other,
        #detail > 0 and table.concat(detail, ",") or "-",
        e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(99)))
    if first then
        io.write("FIRST_ERROR " .. first .. "\n")
    end
end
