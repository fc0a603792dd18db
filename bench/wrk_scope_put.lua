-- wrk_scope_put.lua — wrk script for the context PUT benchmark (bench/run.sh):
-- PUT /v1/ephemeral/<id>/context/<key> with {"value":"<100 bytes>"}, on a scope picked
-- at random from a file of ids and under one of four keys (k0..k3) picked at random,
-- so each context holds at most its 100-byte initial value and four 100-byte values.
--
-- No response() hook (see wrk_scope_get.lua); statuses of 400 and above are counted
-- by wrk itself.
--
-- Arguments (after `--` on the wrk command line):
--   1  file with scope ids, one per line
--   2  file holding the API key (the server's bootstrap.key)
--
-- done() prints one line that run.sh parses:
--   RESULT requests=R seconds=S non2xx=N socket_errors=E p50_us=X p99_us=Y

local KEYS = { "k0", "k1", "k2", "k3" }
-- {"value":"…"}: a 100-byte JSON string value (98 characters and its quotes).
local BODY = '{"value":"' .. string.rep("v", 98) .. '"}'

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

local requests = {}

function init(args)
    local ids = read_lines(args[1])
    local key = read_lines(args[2])[1]
    assert(#ids > 0, "no scope ids in " .. args[1])
    assert(key, "no key in " .. args[2])
    local headers = {
        ["Authorization"] = "Bearer " .. key,
        ["Content-Type"] = "application/json",
    }
    -- #ids x #KEYS requests, built once (about 300 bytes each).
    for _, id in ipairs(ids) do
        for _, k in ipairs(KEYS) do
            requests[#requests + 1] = wrk.format("PUT", "/v1/ephemeral/" .. id .. "/context/" .. k,
                headers, BODY)
        end
    end
    math.randomseed(4321 + (thread_id or 0))
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
