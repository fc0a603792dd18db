-- wrk_scope.lua — wrk script for the ephemeral-scope benchmarks (bench/run.sh), on
-- scopes picked at random from a file of ids (the ~10,000 scopes `scopes.py setup`
-- created, each with a 100-byte context):
--   get  GET /v1/ephemeral/<id>
--   put  PUT /v1/ephemeral/<id>/context/<key> with {"value":"<100 bytes>"}, under one of
--        four keys (k0..k3) picked at random, so each context holds at most its
--        100-byte initial value and four 100-byte values.
--
-- Like wrk_get.lua it has no response() hook, so that wrk does not hand every
-- response to Lua (CPU the server, on the same cores, would otherwise get); statuses
-- of 400 and above are still counted by wrk itself (summary.errors.status).
--
-- Arguments (after `--` on the wrk command line):
--   1  file with scope ids, one per line
--   2  file holding the API key (the server's bootstrap.key)
--   3  get | put
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

-- Thread state: every request is built once; request() only picks one.
local requests = {}

function init(args)
    local ids = read_lines(args[1])
    local key = read_lines(args[2])[1]
    local mode = args[3]
    assert(#ids > 0, "no scope ids in " .. args[1])
    assert(key, "no key in " .. args[2])
    assert(mode == "get" or mode == "put", "mode must be get or put, not " .. tostring(mode))
    local headers = { ["Authorization"] = "Bearer " .. key }
    if mode == "put" then
        headers["Content-Type"] = "application/json"
    end
    for _, id in ipairs(ids) do
        if mode == "get" then
            requests[#requests + 1] = wrk.format("GET", "/v1/ephemeral/" .. id, headers)
        else
            -- #ids x #KEYS requests (about 300 bytes each)
            for _, k in ipairs(KEYS) do
                requests[#requests + 1] = wrk.format("PUT",
                    "/v1/ephemeral/" .. id .. "/context/" .. k, headers, BODY)
            end
        end
    end
    math.randomseed((mode == "get" and 1234 or 4321) + (thread_id or 0))
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
