-- wrk_scope_get.lua — wrk script for the scope GET benchmark (bench/run.sh):
-- GET /v1/ephemeral/<id>, each request on a scope picked at random from a file of ids
-- (the ~10,000 scopes `scopes.py setup` created, each with a 100-byte context).
--
-- Like wrk_get.lua it has no response() hook, so that wrk does not hand every
-- response to Lua (CPU the server, on the same cores, would otherwise get); statuses
-- of 400 and above are still counted by wrk itself (summary.errors.status).
--
-- Arguments (after `--` on the wrk command line):
--   1  file with scope ids, one per line
--   2  file holding the API key (the server's bootstrap.key)
--
-- done() prints one line that run.sh parses:
--   RESULT requests=R seconds=S non2xx=N socket_errors=E p50_us=X p99_us=Y

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

local threads = {}
local next_id = 0

function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
    threads[#threads + 1] = thread
end

-- Thread state: every request is built once; request() only picks one.
local requests = {}

function init(args)
    local ids = read_lines(args[1])
    local key = read_lines(args[2])[1]
    assert(#ids > 0, "no scope ids in " .. args[1])
    assert(key, "no key in " .. args[2])
    local headers = { ["Authorization"] = "Bearer " .. key }
    for i, id in ipairs(ids) do
        requests[i] = wrk.format("GET", "/v1/ephemeral/" .. id, headers)
    end
    math.randomseed(1234 + (thread_id or 0))
end

function request()
    return requests[math.random(#requests)]
end

function done(summary, latency, requests_)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d seconds=%.3f non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration / 1e6, e.status,
        e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
