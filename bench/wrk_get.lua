-- wrk_get.lua — wrk script for plain GET benchmarks (bench/run.sh): /healthz on charter
-- and nginx, and the session bundle.
--
-- It has no response() hook on purpose: with one, wrk hands every response to Lua,
-- which costs the load generator CPU that the server (on the same cores) would
-- otherwise get. Statuses outside 2xx/3xx are still counted by wrk itself
-- (summary.errors.status) and reported.
--
-- Arguments (after `--`): optional file holding an API key, sent as a Bearer token.
--
-- done() prints one line that run.sh parses:
--   RESULT requests=R seconds=S non2xx=N socket_errors=E p50_us=X p99_us=Y

function init(args)
    if args[1] and args[1] ~= "" then
        local f = assert(io.open(args[1], "r"), "cannot open " .. args[1])
        local key = f:read("*l"):gsub("%s+$", "")
        f:close()
        wrk.headers["Authorization"] = "Bearer " .. key
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d seconds=%.3f non2xx=%d socket_errors=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration / 1e6, e.status,
        e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
