#!/usr/bin/env bash
# bench/run.sh — charter's benchmark suite: every benchmark and its baseline side by
# side in one run, printed as one table of ratios. See docs/benchmarks.md.
#
# Usage: bench/run.sh BUILD_DIR     (`make bench` runs it on build/)
#
# It starts everything it measures itself (charter, nginx, a private redis-server, the
# SQLite baseline) on 127.0.0.1, on free ports, with all state in a temp dir under
# .bench/, and a trap stops every process it started however the script ends. Numbers
# are reported, never asserted; the script fails (exit 1) when a server does not start
# or requests error.
#
# Environment:
#   BENCH_DURATION         seconds per throughput run (default 10)
#   BENCH_BUNDLE_DURATION  seconds per bundle latency run (default 5)
#   BENCH_BUNDLE_SIZES     session sizes for the bundle benchmark
#                          (default "10000 100000 1000000")
#   BENCH_CHECK_CALLS      in-process ch_check calls (default 1000000)
#   BENCH_CASCADE_TREES    10,000-descendant trees revoked, without sessions (default 5)
#   BENCH_CASCADE_SESSION_TREES  the same with a session bound to every leaf
#                          (default 3; 0 skips that row)
#   BENCH_SSE_REVOKES      revokes timed to the event stream (default 200)
#   BENCH_ONLY             which rows: "all" (default), "core" (sessions, HTTP
#                          ceiling, mandates) or "scopes" (the ephemeral-scope rows)
#   BENCH_SCOPES           scopes the scope GET / context PUT rows run on, and the keys
#                          redis-benchmark uses (default 10000)
#   BENCH_SCOPE_RSS_COUNT  live scopes of the RSS row (default 1000000; 0 skips it)
#   BENCH_SCOPE_EXPIRY_COUNT  scopes due in the same second, expiry lateness row
#                          (default 100000; 0 skips it)
#   REDIS_SERVER, REDIS_BENCHMARK  the Redis binaries (default: redis-server and
#                          redis-benchmark on PATH)
#   BENCH_KEEP=1           keep the temp dir (data dirs, logs, wrk output)
set -eu
set -o pipefail

usage() {
	echo "usage: bench/run.sh BUILD_DIR" >&2
	exit 2
}

[ $# -eq 1 ] || usage
for v in "${BENCH_DURATION:-10}" "${BENCH_BUNDLE_DURATION:-5}"; do
	case $v in
	'' | *[!0-9]* | 0) echo "bench: durations are whole seconds >= 1, not '$v'" >&2 && exit 2 ;;
	esac
done
for v in "${BENCH_CHECK_CALLS:-1000000}" "${BENCH_CASCADE_TREES:-5}" "${BENCH_SSE_REVOKES:-200}" \
	"${BENCH_SCOPES:-10000}"; do
	case $v in
	'' | *[!0-9]* | 0) echo "bench: counts are whole numbers >= 1, not '$v'" >&2 && exit 2 ;;
	esac
done
for v in BENCH_CASCADE_SESSION_TREES=${BENCH_CASCADE_SESSION_TREES:-3} \
	BENCH_SCOPE_RSS_COUNT=${BENCH_SCOPE_RSS_COUNT:-1000000} \
	BENCH_SCOPE_EXPIRY_COUNT=${BENCH_SCOPE_EXPIRY_COUNT:-100000}; do
	case ${v#*=} in
	'' | *[!0-9]*)
		echo "bench: ${v%%=*} is a whole number >= 0, not '${v#*=}'" >&2 && exit 2
		;;
	esac
done
case ${BENCH_ONLY:-all} in
all | core | scopes) ;;
*) echo "bench: BENCH_ONLY is all, core or scopes, not '$BENCH_ONLY'" >&2 && exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
BUILD=$(cd "$1" && pwd)

DURATION=${BENCH_DURATION:-10}
BUNDLE_DURATION=${BENCH_BUNDLE_DURATION:-5}
BUNDLE_SIZES=${BENCH_BUNDLE_SIZES:-"10000 100000 1000000"}
KEEP=${BENCH_KEEP:-0}
CHECK_CALLS=${BENCH_CHECK_CALLS:-1000000}
CASCADE_TREES=${BENCH_CASCADE_TREES:-5}
CASCADE_SESSION_TREES=${BENCH_CASCADE_SESSION_TREES:-3}
SSE_REVOKES=${BENCH_SSE_REVOKES:-200}
ONLY=${BENCH_ONLY:-all}
SCOPES=${BENCH_SCOPES:-10000}
SCOPE_RSS_COUNT=${BENCH_SCOPE_RSS_COUNT:-1000000}
SCOPE_EXPIRY_COUNT=${BENCH_SCOPE_EXPIRY_COUNT:-100000}
SCOPE_CONNS=50   # wrk and redis-benchmark connections for the scope rows
SCOPE_THREADS=1  # wrk threads and redis-benchmark --threads for the scope rows: one client
                 # thread beside the one server thread, so each has a core of the two
CASCADE_DESCENDANTS=10000   # mandates below the revoked root
SESSIONS=64   # sessions appended to, round-robin (and threads in the baseline)
CONNS=64      # wrk connections for the throughput runs
BATCH=100     # events per request in the batch benchmark

CHARTER=$BUILD/charter
BASELINE=$BUILD/bench/bench_sqlite_per_item
BENCH_CHECK=$BUILD/bench/bench_check
BENCH_ARTIFACT=$BUILD/bench/bench_artifact
BENCH_FLOOR=$BUILD/bench/bench_append_floor
NGINX=${NGINX:-/usr/sbin/nginx}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}

PIDS=()   # every process this script started, stopped by the trap
TMP=""
FAILED=0
ERRORS=()
ROWS=()
NOTES=()  # detail lines printed under the table
LOAD_BEFORE="-"
FOREIGN_CPU="-"

die() {
	echo "bench: error: $*" >&2
	exit 1
}

log() {
	echo "bench: $*" >&2
}

# Records a problem that does not stop the run (non-201s, socket errors): it is shown
# under the table and makes the script exit 1 at the end.
problem() {
	log "PROBLEM: $*"
	ERRORS+=("$*")
	FAILED=1
}

# forget PID: drops a reaped process from PIDS, so that the trap never signals a
# recycled pid that now belongs to someone else.
forget() {
	local keep=() p
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	PIDS=(${keep[@]+"${keep[@]}"})
}

# Stops one started process: TERM, up to 10 s to exit, then KILL. Sets STOP_RC to its
# exit status (-1 when it had already been reaped).
stop_pid() {
	local pid=$1 i
	STOP_RC=-1
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid did not exit on TERM, killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	STOP_RC=0
	wait "$pid" 2>/dev/null || STOP_RC=$?
	forget "$pid"
}

# stop_server PID NAME LOG: stops a server; a server that does not exit cleanly on
# SIGTERM (crash, hang, error status) is a problem.
stop_server() {
	stop_pid "$1"
	if [ "$STOP_RC" != 0 ]; then
		tail -n 10 "$3" >&2 || true
		problem "$2 (pid $1) exited with status $STOP_RC on SIGTERM; log: $3"
	fi
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in ${PIDS[@]+"${PIDS[@]}"}; do
		stop_pid "$pid"
	done
	if [ -n "$TMP" ]; then
		if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
			log "temp dir kept: $TMP"
		else
			rm -rf "$TMP"
		fi
	fi
	exit "$rc"
}

check_tools() {
	[ -x "$CHARTER" ] || die "$CHARTER not found (build first: make build)"
	if [ "$ONLY" != scopes ]; then
		[ -x "$BASELINE" ] || die "$BASELINE not found (build first: make build)"
		[ -x "$BENCH_CHECK" ] || die "$BENCH_CHECK not found (build first: make build)"
		[ -x "$BENCH_ARTIFACT" ] || die "$BENCH_ARTIFACT not found (build first: make build)"
		[ -x "$BENCH_FLOOR" ] || die "$BENCH_FLOOR not found (build first: make build)"
		[ -x "$NGINX" ] || die "$NGINX not found (scripts/deps.sh installs nginx-light)"
	fi
	if [ "$ONLY" != core ]; then
		command -v "$REDIS_SERVER" >/dev/null ||
			die "$REDIS_SERVER not found (apt-get install redis-server, or set REDIS_SERVER)"
		command -v "$REDIS_BENCHMARK" >/dev/null ||
			die "$REDIS_BENCHMARK not found (it comes with redis-tools; or set REDIS_BENCHMARK)"
		command -v timeout >/dev/null || die "timeout not found (coreutils)"
	fi
	command -v wrk >/dev/null || die "wrk not found (scripts/deps.sh installs it)"
	command -v curl >/dev/null || die "curl not found"
	command -v python3 >/dev/null || die "python3 not found"
}

free_port() {
	python3 "$BENCH/helper.py" free-port
}

# wait_http URL PID LOG: waits up to 15 s for URL to answer 200 while PID lives.
wait_http() {
	local url=$1 pid=$2 logfile=$3 i
	for i in $(seq 300); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 30 "$logfile" >&2 || true
			die "server (pid $pid) exited before answering $url; log: $logfile"
		fi
		if curl -sf -o /dev/null --max-time 1 "$url"; then
			return 0
		fi
		sleep 0.05
	done
	tail -n 30 "$logfile" >&2 || true
	die "no answer from $url after 15 s; log: $logfile"
}

# start_charter NAME THREADS [CONFIG]: starts `charter serve` on a fresh data dir (with
# --config CONFIG when given); sets CH_PID, CH_PORT, CH_LOG and CH_KEY (path of the
# bootstrap key file).
start_charter() {
	local name=$1 threads=$2 dir=$TMP/$1 i config=()
	[ $# -lt 3 ] || config=(--config "$3")
	mkdir -p "$dir/data"
	CH_PORT=$(free_port)
	CH_LOG=$dir/server.log
	"$CHARTER" serve ${config[@]+"${config[@]}"} --data-dir "$dir/data" \
		--listen "127.0.0.1:$CH_PORT" --threads "$threads" --log-level warn >"$CH_LOG" 2>&1 &
	CH_PID=$!
	PIDS+=("$CH_PID")
	wait_http "http://127.0.0.1:$CH_PORT/healthz" "$CH_PID" "$CH_LOG"
	CH_KEY=$dir/data/bootstrap.key
	for i in $(seq 100); do
		[ -s "$CH_KEY" ] && break
		sleep 0.05
	done
	[ -s "$CH_KEY" ] || die "charter started but $CH_KEY is missing"
	log "charter '$name' (--threads $threads) pid $CH_PID on 127.0.0.1:$CH_PORT"
}

# Checks the server is still alive after a run: a crash under load is a failure.
check_alive() {
	local pid=$1 what=$2 logfile=$3
	if ! kill -0 "$pid" 2>/dev/null; then
		tail -n 30 "$logfile" >&2 || true
		die "$what died during the benchmark; log: $logfile"
	fi
}

start_nginx() {
	local dir=$TMP/nginx
	mkdir -p "$dir"
	NGINX_PORT=$(free_port)
	cat >"$dir/nginx.conf" <<EOF
# Generated by bench/run.sh: the HTTP ceiling, one worker, like charter --threads 1.
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    # nginx closes a keep-alive connection after 1000 requests by default; charter
    # does not, so neither does the ceiling.
    keepalive_requests 1000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = /healthz {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
        # The check ceiling: a fixed reply of the size and shape of charter's (178
        # bytes) to any method, POST /v1/check included (nginx reads and discards the
        # request body).
        location = /v1/check {
            default_type application/json;
            return 200 '{"allow":true,"reason":"ok","mandate":"mdt_01M7YF2V19J5Q1ZJXCQEYD0V6M","mandate_version":1,"decision_id":"dec_01M7YF2V1TAWYB4GCQ0BQTYF1P","checked_at":"2026-11-21T07:10:42.746Z"}';
        }
    }
}
EOF
	"$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 &
	NGINX_PID=$!
	PIDS+=("$NGINX_PID")
	wait_http "http://127.0.0.1:$NGINX_PORT/healthz" "$NGINX_PID" "$dir/error.log"
	log "nginx pid $NGINX_PID on 127.0.0.1:$NGINX_PORT"
}

# run_child OUT CMD...: runs CMD with its output in OUT, as a background child that
# the trap can stop (a foreground child would delay the trap until it exits).
run_child() {
	local out=$1 pid rc=0
	shift
	"$@" >"$out" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	wait "$pid" || rc=$?
	forget "$pid"
	return "$rc"
}

# run_wrk OUT ARGS...: runs wrk, keeps its output in OUT, fails without a RESULT line.
run_wrk() {
	local out=$1
	shift
	if ! run_child "$out" wrk "$@"; then
		cat "$out" >&2
		die "wrk failed: wrk $*"
	fi
	grep -q '^RESULT ' "$out" || {
		cat "$out" >&2
		die "wrk printed no RESULT line: wrk $*"
	}
}

# field FILE NAME: a key=value field of the RESULT line (or of a baseline output line).
field() {
	sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" "$1" | tail -n 1
}

# line_field FILE PREFIX NAME: a key=value field of FILE's last line starting with PREFIX.
line_field() {
	grep "^$2 " "$1" | sed -n "s/.*[ ]$3=\([^ ]*\).*/\1/p" | tail -n 1
}

# calc EXPR: floating-point arithmetic via awk, printed with the given format.
calc() {
	awk "BEGIN { printf \"$1\", $2 }"
}

# Integer with thousands separators.
thousands() {
	awk -v x="$1" 'BEGIN {
		s = sprintf("%.0f", x); out = ""
		while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
		print s out }'
}

# met VALUE OP TARGET: "yes" or "NO".
met() {
	awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
		ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0); print ok ? "yes" : "NO" }'
}

# cpu_snapshot FILE: writes "<CPU seconds the whole machine spent in user and system
# mode> <CPU seconds of this script's reaped children>" to FILE. The difference between
# two snapshots is the CPU that other processes took during the run. (`times` runs in
# this shell, not in a $(...) subshell, whose children's times would be empty.)
cpu_snapshot() {
	local out=$1 machine
	machine=$(awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { print ($2 + $3 + $4) / hz }' /proc/stat)
	times >"$out.times"
	awk -v m="$machine" 'NR == 2 {
		t = 0
		for (i = 1; i <= 2; i++) { f = $i; sub(/s$/, "", f); split(f, a, "m"); t += a[1] * 60 + a[2] }
		print m, t }' "$out.times" >"$out"
}

# foreign_cpu BEFORE AFTER SECONDS: "X cpu-s (Y% of the machine)" used by other processes.
foreign_cpu() {
	awk -v secs="$3" -v ncpu="$(nproc)" 'NR == FNR { m0 = $1; o0 = $2; next } {
		f = ($1 - m0) - ($2 - o0); if (f < 0) f = 0
		printf "%.1f cpu-s (%.0f%% of the machine)", f, 100 * f / (secs * ncpu) }' "$1" "$2"
}

row() {
	ROWS+=("$1|$2|$3|$4|$5|$6")
}

print_table() {
	local line b c base r t m
	local fmt="%-42s | %15s | %15s | %7s | %-18s | %s\n"
	echo
	echo "charter benchmarks — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -r)," \
		"commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '-')," \
		"BENCH_DURATION=${DURATION}s"
	echo "load average before the run: $LOAD_BEFORE; CPU taken by other processes during" \
		"the run: $FOREIGN_CPU"
	echo
	# shellcheck disable=SC2059
	printf "$fmt" "benchmark" "charter" "baseline" "ratio" "target" "met"
	printf "%s\n" "-------------------------------------------+-----------------+-----------------+---------+--------------------+-----"
	for line in "${ROWS[@]}"; do
		IFS='|' read -r b c base r t m <<<"$line"
		# shellcheck disable=SC2059
		printf "$fmt" "$b" "$c" "$base" "$r" "$t" "$m"
	done
	echo
	if [ "$ONLY" != scopes ]; then
		echo "baselines: sqlite/item = bench_sqlite_per_item ($SESSIONS threads, one transaction" \
			"per event, WAL, synchronous=FULL); nginx = nginx-light, 1 worker, return 200" \
			"(a fixed reply for /v1/check); ed25519 = crypto_sign_verify_detached alone;" \
			"floor / ceiling = bench_append_floor (bare h2o, 2 threads, the same wrk load) in" \
			"fsync mode (group-committed pwritev + fdatasync of the bodies) and reply mode."
	fi
	if [ "$ONLY" != core ]; then
		echo "scope baselines: redis = $REDIS_VERSION (--save \"\" --appendonly no), driven by" \
			"redis-benchmark --threads $SCOPE_THREADS -c $SCOPE_CONNS -r $SCOPES, no pipelining," \
			"100-byte values; charter by wrk -t$SCOPE_THREADS -c$SCOPE_CONNS on" \
			"$(thousands "$SCOPES") scopes with 100-byte contexts, --threads 1."
	fi
	if [ ${#NOTES[@]} -gt 0 ]; then
		printf "%s\n" "${NOTES[@]}"
	fi
	if [ ${#ERRORS[@]} -gt 0 ]; then
		echo
		echo "PROBLEMS:"
		printf "  - %s\n" "${ERRORS[@]}"
	fi
}

# --- 1a. baseline: one SQLite transaction per appended event ----------------------
bench_baseline() {
	local out=$TMP/baseline.out
	mkdir -p "$TMP/baseline"
	log "baseline: sqlite one-transaction-per-event, $SESSIONS threads, ${DURATION}s"
	if ! run_child "$out" "$BASELINE" -d "$TMP/baseline/events.db" -t "$SESSIONS" -s "$DURATION"; then
		cat "$out" >&2
		die "bench_sqlite_per_item failed"
	fi
	BASE_EPS=$(field "$out" events_per_sec)
	BASE_P50=$(field "$out" p50_ms)
	BASE_P99=$(field "$out" p99_ms)
	NOTES+=("sqlite/item detail: $(grep '^events=' "$out")")
	rm -rf "$TMP/baseline"
}

# --- 1b/2. appends over HTTP -------------------------------------------------------
# bench_appends PER_REQUEST: wrk POSTs round-robin over the sessions; sets APP_EPS,
# APP_P50, APP_P99 (ms).
bench_appends() {
	local per=$1 out=$TMP/wrk-append-$1.out sockerr other n201 secs
	log "charter: appends of $per event(s) per request, -t2 -c$CONNS, ${DURATION}s"
	run_wrk "$out" -t2 -c"$CONNS" -d"${DURATION}s" --timeout 10s \
		-s "$BENCH/wrk_append.lua" "http://127.0.0.1:$CH_PORT" -- \
		"$TMP/sessions.txt" "$CH_KEY" "$per"
	check_alive "$CH_PID" "charter" "$CH_LOG"
	n201=$(field "$out" status_201)
	other=$(field "$out" other_status)
	secs=$(field "$out" seconds)
	if [ "$other" != 0 ]; then
		problem "appends x$per: $other responses were not 201 ($(field "$out" status_detail));" \
			"first: $(sed -n 's/^FIRST_ERROR //p' "$out")"
	fi
	sockerr=$(field "$out" socket_errors)
	if [ "$sockerr" != 0 ]; then
		problem "appends x$per: $sockerr socket errors (connect/read/write/timeout)"
	fi
	[ "$n201" -gt 0 ] || die "appends x$per: no 201 responses at all; see $out"
	APP_EPS=$(calc "%.0f" "$n201 * $per / $secs")
	APP_P50=$(calc "%.2f" "$(field "$out" p50_us) / 1000")
	APP_P99=$(calc "%.2f" "$(field "$out" p99_us) / 1000")
}

# --- 1c. the floor under single appends ---------------------------------------------
# bench_floor MODE: the single-append load against bench_append_floor (a bare h2o
# server, 2 threads): "reply" answers at once, "fsync" answers after a group-committed
# pwritev + fdatasync of the bodies. Sets FLOOR_RPS, FLOOR_P50, FLOOR_P99 (ms).
bench_floor() {
	local mode=$1 dir=$TMP/floor-$1 port pid out=$TMP/wrk-floor-$1.out
	mkdir -p "$dir"
	port=$(free_port)
	"$BENCH_FLOOR" -m "$mode" -l "$port" -t 2 -f "$dir/log" >"$dir/server.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	wait_http "http://127.0.0.1:$port/healthz" "$pid" "$dir/server.log"
	log "floor ($mode): single appends, -t2 -c$CONNS, ${DURATION}s"
	run_wrk "$out" -t2 -c"$CONNS" -d"${DURATION}s" --timeout 10s \
		-s "$BENCH/wrk_append.lua" "http://127.0.0.1:$port" -- \
		"$TMP/sessions.txt" "$CH_KEY" 1
	check_alive "$pid" "bench_append_floor" "$dir/server.log"
	stop_server "$pid" "bench_append_floor" "$dir/server.log"
	if [ "$(field "$out" other_status)" != 0 ] || [ "$(field "$out" socket_errors)" != 0 ]; then
		problem "floor ($mode): $(field "$out" other_status) non-201, $(field "$out" socket_errors) socket errors"
	fi
	FLOOR_RPS=$(calc "%.0f" "$(field "$out" status_201) / $(field "$out" seconds)")
	FLOOR_P50=$(calc "%.2f" "$(field "$out" p50_us) / 1000")
	FLOOR_P99=$(calc "%.2f" "$(field "$out" p99_us) / 1000")
	rm -rf "$dir/log"
}

# --- 3. bundle latency on compacted sessions ---------------------------------------
bench_bundles() {
	local size pids=() sid out p50 p99 first_p50="" last_p50="" i=0
	log "charter: filling bundle sessions of $BUNDLE_SIZES events (in parallel)"
	for size in $BUNDLE_SIZES; do
		python3 "$BENCH/helper.py" bundle-session "$CH_PORT" "$CH_KEY" "$size" \
			"$TMP/bundle-$size.id" 2>"$TMP/bundle-$size.log" &
		pids+=($!)
		PIDS+=($!)
	done
	for size in $BUNDLE_SIZES; do
		if ! wait "${pids[$i]}"; then
			forget "${pids[$i]}"
			cat "$TMP/bundle-$size.log" >&2
			die "filling the $size-event bundle session failed"
		fi
		forget "${pids[$i]}"
		log "  $size: $(cat "$TMP/bundle-$size.log")"
		i=$((i + 1))
	done
	check_alive "$CH_PID" "charter" "$CH_LOG"
	for size in $BUNDLE_SIZES; do
		sid=$(cat "$TMP/bundle-$size.id")
		out=$TMP/wrk-bundle-$size.out
		log "charter: GET bundle of a compacted $size-event session, -t1 -c1, ${BUNDLE_DURATION}s"
		run_wrk "$out" -t1 -c1 -d"${BUNDLE_DURATION}s" --timeout 10s \
			-s "$BENCH/wrk_get.lua" "http://127.0.0.1:$CH_PORT/v1/sessions/$sid/bundle" -- "$CH_KEY"
		if [ "$(field "$out" non2xx)" != 0 ] || [ "$(field "$out" socket_errors)" != 0 ]; then
			problem "bundle $size: $(field "$out" non2xx) non-2xx, $(field "$out" socket_errors) socket errors"
		fi
		p50=$(calc "%.2f" "$(field "$out" p50_us) / 1000")
		p99=$(calc "%.2f" "$(field "$out" p99_us) / 1000")
		row "bundle p50 / p99 ms, $(thousands "$size") events" "$p50 / $p99" "-" "-" \
			"p99 <= 5 ms" "$(met "$p99" "<=" 5)"
		[ -n "$first_p50" ] || first_p50=$p50
		last_p50=$p50
	done
	if [ "$i" -gt 1 ]; then
		local flat
		flat=$(calc "%.2f" "$last_p50 / ($first_p50 > 0 ? $first_p50 : 0.001)")
		row "bundle flatness: p50 largest / smallest" "${flat}x" "-" "-" "<= 2x (flat)" \
			"$(met "$flat" "<=" 2)"
	fi
}

# --- 4. the HTTP ceiling: GET /healthz ----------------------------------------------
# bench_healthz PORT NAME: sets HZ_RPS.
bench_healthz() {
	local port=$1 name=$2 out=$TMP/wrk-healthz-$2.out
	log "$name: GET /healthz, -t2 -c$CONNS, ${DURATION}s"
	run_wrk "$out" -t2 -c"$CONNS" -d"${DURATION}s" --timeout 10s \
		-s "$BENCH/wrk_get.lua" "http://127.0.0.1:$port/healthz"
	if [ "$(field "$out" non2xx)" != 0 ] || [ "$(field "$out" socket_errors)" != 0 ]; then
		problem "healthz on $name: $(field "$out" non2xx) non-2xx, $(field "$out" socket_errors) socket errors"
	fi
	HZ_RPS=$(calc "%.0f" "$(field "$out" requests) / $(field "$out" seconds)")
}

# --- 5. POST /v1/check over HTTP -----------------------------------------------------
# bench_check_http PORT NAME: wrk POSTs check requests (bench/wrk_check.lua) against
# the mandate in $TMP/check-mandate.id; sets CK_N (200s), CK_RPS, CK_P50, CK_P99 (ms)
# and CK_ALLOW (% of the 200s that allowed).
bench_check_http() {
	local port=$1 name=$2 out=$TMP/wrk-check-$2.out other sockerr n200 secs
	log "$name: POST /v1/check, -t2 -c$CONNS, ${DURATION}s"
	run_wrk "$out" -t2 -c"$CONNS" -d"${DURATION}s" --timeout 10s \
		-s "$BENCH/wrk_check.lua" "http://127.0.0.1:$port" -- \
		"$TMP/check-mandate.id" "$CH_KEY"
	n200=$(field "$out" status_200)
	other=$(field "$out" other_status)
	secs=$(field "$out" seconds)
	if [ "$other" != 0 ]; then
		problem "check on $name: $other responses were not 200 ($(field "$out" status_detail));" \
			"first: $(sed -n 's/^FIRST_ERROR //p' "$out")"
	fi
	sockerr=$(field "$out" socket_errors)
	if [ "$sockerr" != 0 ]; then
		problem "check on $name: $sockerr socket errors (connect/read/write/timeout)"
	fi
	[ "$n200" -gt 0 ] || die "check on $name: no 200 responses at all; see $out"
	CK_N=$n200
	CK_RPS=$(calc "%.0f" "$n200 / $secs")
	CK_P50=$(calc "%.2f" "$(field "$out" p50_us) / 1000")
	CK_P99=$(calc "%.2f" "$(field "$out" p99_us) / 1000")
	CK_ALLOW=$(calc "%.0f" "100 * $(field "$out" allowed) / $n200")
}

# thread_cpu PID OUT: "<thread name> <CPU ticks>" of each thread of PID into OUT.
thread_cpu() {
	local t
	for t in /proc/"$1"/task/*; do
		# The name is field 2 of stat, in parentheses; charter's have no spaces.
		awk '{ print substr($2, 2, length($2) - 2), $14 + $15 }' "$t/stat" 2>/dev/null || true
	done >"$2"
}

# metric PORT NAME: the value of an unlabelled metric of charter's /metrics.
metric() {
	{ curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" || true; } |
		awk -v n="$2" '$1 == n { print $2 }'
}

# bench_check_charter: bench_check_http on the running charter, with what its threads
# and its writer did meanwhile (a note under the table).
bench_check_charter() {
	local c0 c1 d0 d1 cpu line
	c0=$(metric "$CH_PORT" charter_commit_seconds_count)
	d0=$(metric "$CH_PORT" charter_audit_dropped_total)
	thread_cpu "$CH_PID" "$TMP/check-threads.before"
	bench_check_http "$CH_PORT" "charter"
	thread_cpu "$CH_PID" "$TMP/check-threads.after"
	c1=$(metric "$CH_PORT" charter_commit_seconds_count)
	d1=$(metric "$CH_PORT" charter_audit_dropped_total)
	cpu=$(awk -v hz="$(getconf CLK_TCK)" 'NR == FNR { b[$1] = $2; next }
		$2 - b[$1] > 0 { printf "%s%s %.2f", sep, $1, ($2 - b[$1]) / hz; sep = ", " }' \
		"$TMP/check-threads.before" "$TMP/check-threads.after")
	line="check over HTTP detail: checks=$CK_N seconds=$DURATION"
	line+=" commits=$(calc "%.0f" "${c1:-0} - ${c0:-0}")"
	line+=" audit_dropped=$(calc "%.0f" "${d1:-0} - ${d0:-0}")"
	NOTES+=("$line; server cpu-s by thread: $cpu")
	if [ -n "$d1" ] && [ "$d1" != "${d0:-0}" ]; then
		problem "check on charter: the audit queue dropped $((d1 - ${d0:-0})) decisions"
	fi
}

# --- 6. revoke -> event stream --------------------------------------------------------
# bench_sse: bench/sse_latency.py on the running charter; sets SSE_P50 and SSE_P99 (ms).
bench_sse() {
	local out=$TMP/sse-latency.out
	log "charter: revoke -> GET /v1/events latency, $SSE_REVOKES revokes"
	if ! run_child "$out" python3 "$BENCH/sse_latency.py" "$CH_PORT" "$CH_KEY" "$SSE_REVOKES"; then
		cat "$out" >&2
		problem "sse latency: $(tail -n 1 "$out")"
		SSE_P50=- SSE_P99=-
		return 0
	fi
	SSE_P50=$(field "$out" p50_ms)
	SSE_P99=$(field "$out" p99_ms)
	NOTES+=("sse detail: $(grep '^sse_revoke' "$out")")
}

# --- 7-9. in process: the check, the cascade, artifact verification --------------------
# run_inproc NAME CMD...: runs one in-process benchmark; its output in $TMP/NAME.out.
run_inproc() {
	local name=$1 out=$TMP/$1.out
	shift
	if ! run_child "$out" "$@"; then
		cat "$out" >&2
		die "$name failed: $*"
	fi
}

bench_inproc() {
	local out line median max bound
	log "in process: $(thousands "$CHECK_CALLS") ch_check calls on a depth-2 mandate"
	run_inproc check "$BENCH_CHECK" -m check -n "$CHECK_CALLS" -D "$TMP"
	out=$TMP/check.out
	line=$(grep '^check ' "$out")
	row "check in process, median / p99 ns" \
		"$(thousands "$(field "$out" median_ns)") / $(thousands "$(field "$out" p99_ns)")" "-" "-" \
		"median <= 1,000 ns" "$(met "$(field "$out" median_ns)" "<=" 1000)"
	NOTES+=("check detail: $line")
	case $(field "$out" audit_dropped) in
	0 | unknown) ;;
	*) problem "check in process: the audit queue dropped $(field "$out" audit_dropped) decisions" ;;
	esac

	log "in process: revoke of a $(thousands "$CASCADE_DESCENDANTS")-descendant tree," \
		"$CASCADE_TREES trees, no sessions"
	run_inproc cascade "$BENCH_CHECK" -m cascade -t "$CASCADE_TREES" \
		-d "$CASCADE_DESCENDANTS" -D "$TMP"
	out=$TMP/cascade.out
	median=$(field "$out" median_ms)
	max=$(field "$out" max_ms)
	row "revoke $(thousands "$CASCADE_DESCENDANTS")-descendant tree, med/max ms" \
		"$median / $max" "-" "-" "median <= 20 ms" "$(met "$median" "<=" 20)"
	NOTES+=("cascade detail: $(grep '^cascade ' "$out")")

	if [ "$CASCADE_SESSION_TREES" -gt 0 ]; then
		log "in process: the same with a session bound to every leaf, $CASCADE_SESSION_TREES trees"
		run_inproc cascade-sessions "$BENCH_CHECK" -m cascade -s -t "$CASCADE_SESSION_TREES" \
			-d "$CASCADE_DESCENDANTS" -D "$TMP"
		out=$TMP/cascade-sessions.out
		bound=$(field "$out" sessions)
		row "  + $(thousands "$bound") sessions bound, med/max ms" \
			"$(field "$out" median_ms) / $(field "$out" max_ms)" "-" "-" "-" ""
		NOTES+=("cascade detail: $(grep '^cascade ' "$out")")
	fi

	log "in process: offline artifact verification"
	run_inproc artifact "$BENCH_ARTIFACT" -n 20000
	out=$TMP/artifact.out
	median=$(line_field "$out" artifact_verify median_us)
	row "artifact verify offline, median us" "$median" \
		"$(line_field "$out" ed25519_verify median_us)" "-" "<= 50 us" "$(met "$median" "<=" 50)"
	while IFS= read -r line; do
		NOTES+=("artifact detail: $line")
	done <"$out"
}

# --- 10. ephemeral scopes: GET and context PUT against Redis ---------------------------
REDIS_VERSION="redis"

# start_redis: a private redis-server (no persistence) on a free port, filled with the
# $SCOPES keys redis-benchmark -r $SCOPES reads (100-byte values); sets REDIS_PORT and
# REDIS_PID.
start_redis() {
	local dir=$TMP/redis
	mkdir -p "$dir"
	REDIS_PORT=$(free_port)
	REDIS_VERSION=$("$REDIS_SERVER" --version | sed -n 's/.*v=\([0-9.]*\).*/redis-server \1/p')
	"$REDIS_SERVER" --save "" --appendonly no --bind 127.0.0.1 --port "$REDIS_PORT" \
		--dir "$dir" --logfile "$dir/redis.log" --daemonize no >"$dir/stdout.log" 2>&1 &
	REDIS_PID=$!
	PIDS+=("$REDIS_PID")
	if ! python3 "$BENCH/scopes.py" redis-fill "$REDIS_PORT" "$SCOPES" 2>"$dir/fill.log"; then
		cat "$dir/fill.log" >&2
		tail -n 20 "$dir/redis.log" >&2 || true
		die "redis-server (pid $REDIS_PID) did not start or could not be filled"
	fi
	log "$REDIS_VERSION pid $REDIS_PID on 127.0.0.1:$REDIS_PORT, $(thousands "$SCOPES") keys"
}

# bench_redis NAME ARGS...: redis-benchmark for about BENCH_DURATION seconds (a short
# calibration run first: redis-benchmark counts requests, not seconds); sets RB_RPS,
# RB_P50 and RB_P99 (ms).
bench_redis() {
	local name=$1 out=$TMP/redis-$1 n rb
	shift
	rb=(timeout $((DURATION * 5 + 60)) "$REDIS_BENCHMARK" -h 127.0.0.1 -p "$REDIS_PORT"
		-c "$SCOPE_CONNS" --threads "$SCOPE_THREADS" -r "$SCOPES" --csv)
	if ! run_child "$out.calibrate.csv" "${rb[@]}" -n 50000 "$@" ||
		! python3 "$BENCH/scopes.py" redis-csv "$out.calibrate.csv" >"$out.calibrate.out"; then
		cat "$out.calibrate.csv" >&2
		die "redis-benchmark failed: $REDIS_BENCHMARK $*"
	fi
	n=$(calc "%.0f" "$(field "$out.calibrate.out" rps) * $DURATION")
	log "redis: $name, -c$SCOPE_CONNS --threads $SCOPE_THREADS, -n $n (about ${DURATION}s)"
	if ! run_child "$out.csv" "${rb[@]}" -n "$n" "$@" ||
		! python3 "$BENCH/scopes.py" redis-csv "$out.csv" >"$out.out"; then
		cat "$out.csv" >&2
		die "redis-benchmark failed: $REDIS_BENCHMARK $*"
	fi
	RB_RPS=$(calc "%.0f" "$(field "$out.out" rps)")
	RB_P50=$(calc "%.2f" "$(field "$out.out" p50_ms)")
	RB_P99=$(calc "%.2f" "$(field "$out.out" p99_ms)")
	NOTES+=("redis $name detail: $(cat "$out.out") n=$n")
}

# bench_scope_http NAME SCRIPT: wrk with bench/SCRIPT on the running charter, over the
# scopes in $TMP/scope-ids-$CH_NAME.txt; sets SC_RPS, SC_P50, SC_P99 (ms) and SC_CPU
# (cpu-s of the HTTP thread).
bench_scope_http() {
	local name=$1 mode=$2 out=$TMP/wrk-$1.out
	log "charter: $name, -t$SCOPE_THREADS -c$SCOPE_CONNS, ${DURATION}s"
	thread_cpu "$CH_PID" "$out.threads.before"
	run_wrk "$out" -t"$SCOPE_THREADS" -c"$SCOPE_CONNS" -d"${DURATION}s" --timeout 10s \
		-s "$BENCH/wrk_scope.lua" "http://127.0.0.1:$CH_PORT" -- "$SCOPE_IDS" "$CH_KEY" "$mode"
	thread_cpu "$CH_PID" "$out.threads.after"
	check_alive "$CH_PID" "charter" "$CH_LOG"
	if [ "$(field "$out" non2xx)" != 0 ] || [ "$(field "$out" socket_errors)" != 0 ]; then
		problem "$name: $(field "$out" non2xx) responses >= 400," \
			"$(field "$out" socket_errors) socket errors; log: $CH_LOG"
	fi
	SC_RPS=$(calc "%.0f" "$(field "$out" requests) / $(field "$out" seconds)")
	SC_P50=$(calc "%.2f" "$(field "$out" p50_us) / 1000")
	SC_P99=$(calc "%.2f" "$(field "$out" p99_us) / 1000")
	SC_CPU=$(awk -v hz="$(getconf CLK_TCK)" 'NR == FNR { b[$1] = $2; next }
		$1 == "ch-http-0" { printf "%.2f", ($2 - b[$1]) / hz }' \
		"$out.threads.before" "$out.threads.after")
	NOTES+=("scope $name detail: requests=$(field "$out" requests) seconds=$(field "$out" seconds)\
 rps=$SC_RPS p50_ms=$SC_P50 p99_ms=$SC_P99 ch-http-0_cpu_s=$SC_CPU\
 cpu_us_per_request=$(calc "%.1f" "$SC_CPU * 1000000 / $(field "$out" requests)")")
}

# scope_config FILE [LINES...]: a charter.yaml with the ephemeral settings of the benches.
scope_config() {
	local f=$1
	shift
	{
		echo "# Generated by bench/run.sh."
		echo "ephemeral:"
		echo "  log_evictions: false"
		echo "  max_ttl: 1h"
		printf '  %s\n' "$@"
	} >"$f"
}

# bench_scope_engine ENGINE: a fresh charter --threads 1 on that engine, $SCOPES scopes,
# then the GET and PUT runs; sets GET_* and PUT_* (RPS, P50, P99).
bench_scope_engine() {
	local engine=$1 cfg=$TMP/scopes-$1.yaml extra=()
	[ "$engine" != redis ] || extra=("redis_url: redis://127.0.0.1:$REDIS_PORT")
	scope_config "$cfg" "engine: $engine" ${extra[@]+"${extra[@]}"}
	start_charter "scopes-$engine" 1 "$cfg"
	SCOPE_IDS=$TMP/scope-ids-$engine.txt
	python3 "$BENCH/scopes.py" setup "$CH_PORT" "$CH_KEY" "$SCOPES" "$SCOPE_IDS" ||
		die "creating $SCOPES scopes on the $engine engine failed"
	bench_scope_http "scope-get-$engine" get
	GET_RPS=$SC_RPS GET_P50=$SC_P50 GET_P99=$SC_P99
	bench_scope_http "context-put-$engine" put
	PUT_RPS=$SC_RPS PUT_P50=$SC_P50 PUT_P99=$SC_P99
	stop_server "$CH_PID" "charter" "$CH_LOG"
}

bench_scopes_vs_redis() {
	local rd_get rd_get_p rd_set rd_set_p mem_get mem_put ratio value
	start_redis
	bench_redis GET -t get
	rd_get=$RB_RPS rd_get_p="$RB_P50 / $RB_P99"
	value=$(printf 'v%.0s' $(seq 100))
	bench_redis SETEX setex "key:__rand_int__" 3600 "$value"
	rd_set=$RB_RPS rd_set_p="$RB_P50 / $RB_P99"

	bench_scope_engine memory
	mem_get=$GET_RPS mem_put=$PUT_RPS
	ratio=$(calc "%.4f" "$GET_RPS / $rd_get")
	row "scope GET req/s (memory, 1 thread)" "$(thousands "$GET_RPS")" "$(thousands "$rd_get")" \
		"$(calc "%.2f" "$ratio")x" ">= 1.0x" "$(met "$ratio" ">=" 1)"
	row "scope GET p50 / p99 ms (memory)" "$GET_P50 / $GET_P99" "$rd_get_p" "-" "-" ""
	ratio=$(calc "%.4f" "$PUT_RPS / $rd_set")
	row "context PUT req/s (memory, vs SETEX)" "$(thousands "$PUT_RPS")" "$(thousands "$rd_set")" \
		"$(calc "%.2f" "$ratio")x" ">= 1.0x" "$(met "$ratio" ">=" 1)"
	row "context PUT p50 / p99 ms (memory)" "$PUT_P50 / $PUT_P99" "$rd_set_p" "-" "-" ""

	bench_scope_engine redis
	row "scope GET req/s (redis engine)" "$(thousands "$GET_RPS")" "$(thousands "$rd_get")" \
		"$(calc "%.2f" "$GET_RPS / $rd_get")x" "-" ""
	row "scope GET p50 / p99 ms (redis engine)" "$GET_P50 / $GET_P99" "$rd_get_p" "-" "-" ""
	row "context PUT req/s (redis engine)" "$(thousands "$PUT_RPS")" "$(thousands "$rd_set")" \
		"$(calc "%.2f" "$PUT_RPS / $rd_set")x" "-" ""
	row "context PUT p50 / p99 ms (redis engine)" "$PUT_P50 / $PUT_P99" "$rd_set_p" "-" "-" ""
	row "  redis / memory engine, GET / PUT" \
		"$(calc "%.2f" "$GET_RPS / $mem_get")x / $(calc "%.2f" "$PUT_RPS / $mem_put")x" \
		"-" "-" "-" ""
	stop_server "$REDIS_PID" "redis-server" "$TMP/redis/redis.log"
}

# --- 11. a million live scopes: RSS ----------------------------------------------------
# vmrss PID: VmRSS in kB.
vmrss() {
	awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

bench_scope_rss() {
	local cfg=$TMP/scopes-rss.yaml out=$TMP/scope-load.out rss0 rss1 live bytes per target ok
	scope_config "$cfg" "engine: memory"
	start_charter scopes-rss 1 "$cfg"
	rss0=$(vmrss "$CH_PID")
	log "charter: creating $(thousands "$SCOPE_RSS_COUNT") scopes with a 100-byte context"
	if ! run_child "$out" python3 "$BENCH/scopes.py" load "$CH_PORT" "$CH_KEY" "$SCOPE_RSS_COUNT"; then
		cat "$out" >&2
		die "loading $SCOPE_RSS_COUNT scopes failed"
	fi
	check_alive "$CH_PID" "charter" "$CH_LOG"
	rss1=$(vmrss "$CH_PID")
	live=$(metric "$CH_PORT" 'charter_scopes{flow="scoped"}')
	bytes=$(metric "$CH_PORT" charter_scope_bytes)
	if [ "${live:-}" != "$SCOPE_RSS_COUNT" ]; then
		problem "RSS: charter_scopes{flow=\"scoped\"} is '${live:-}', not $SCOPE_RSS_COUNT"
	fi
	per=$(calc "%.0f" "($rss1 - $rss0) * 1024 / $SCOPE_RSS_COUNT")
	# The target is for a million scopes; other counts (quick runs) only report.
	target="-" ok=""
	if [ "$SCOPE_RSS_COUNT" = 1000000 ]; then
		target="<= 400 MB" ok=$(met "$(calc "%.1f" "$rss1 / 1024")" "<=" 400)
	fi
	row "RSS MB, $(thousands "$SCOPE_RSS_COUNT") scopes (100-byte ctx)" \
		"$(calc "%.0f" "$rss1 / 1024")" "-" "-" "$target" "$ok"
	row "  bytes per scope (RSS growth / scopes)" "$per" "-" "-" "-" ""
	NOTES+=("scope RSS detail: $(cat "$out") vmrss_before_kb=$rss0 vmrss_after_kb=$rss1\
 charter_scopes=$live charter_scope_bytes=$bytes")
	stop_server "$CH_PID" "charter" "$CH_LOG"
}

# --- 12. scopes due in the same second: expiry lateness ---------------------------------
bench_scope_expiry() {
	local cfg=$TMP/scopes-expiry.yaml out=$TMP/scope-expiry.out
	scope_config "$cfg" "engine: memory" "gc_interval: 60s"
	start_charter scopes-expiry 1 "$cfg"
	log "charter: $(thousands "$SCOPE_EXPIRY_COUNT") scopes due in the same second"
	if ! run_child "$out" python3 "$BENCH/scopes.py" expiry "$CH_PORT" "$CH_KEY" \
		"$SCOPE_EXPIRY_COUNT" "$TMP/scope-lateness.txt"; then
		cat "$out" >&2
		problem "expiry lateness: $(tail -n 1 "$out")"
	fi
	check_alive "$CH_PID" "charter" "$CH_LOG"
	if grep -q '^scope_expiry ' "$out"; then
		row "lateness p50/p99/max ms, $(thousands "$SCOPE_EXPIRY_COUNT") due in 1s" \
			"$(field "$out" p50_ms) / $(field "$out" p99_ms) / $(field "$out" max_ms)" "-" "-" \
			"p99 <= 10 ms" "$(met "$(field "$out" p99_ms)" "<=" 10)"
		row "  server histogram p99 ms (estimate)" "$(field "$out" hist_p99_ms)" "-" "-" "-" ""
		NOTES+=("scope expiry detail: $(grep '^scope_expiry ' "$out")")
	fi
	stop_server "$CH_PID" "charter" "$CH_LOG"
}

run_scopes() {
	bench_scopes_vs_redis
	[ "$SCOPE_RSS_COUNT" = 0 ] || bench_scope_rss
	[ "$SCOPE_EXPIRY_COUNT" = 0 ] || bench_scope_expiry
}

run_core() {
	local ratio ch_rps ng_rps ch_ck_rps ch_ck_p50 ch_ck_p99 allow
	bench_baseline

	start_charter a 2
	python3 "$BENCH/helper.py" sessions "$CH_PORT" "$CH_KEY" "$SESSIONS" "$TMP/sessions.txt"

	bench_appends 1
	ratio=$(calc "%.4f" "$APP_EPS / $BASE_EPS")
	row "single appends, events/s (201s)" "$(thousands "$APP_EPS")" "$(thousands "$BASE_EPS")" \
		"$(calc "%.1f" "$ratio")x" ">= 50,000; >= 8x" \
		"$(met "$APP_EPS" ">=" 50000)/$(met "$ratio" ">=" 8)"
	row "single appends, p50 ms" "$APP_P50" "$BASE_P50" "-" "-" ""
	row "single appends, p99 ms" "$APP_P99" "$BASE_P99" "-" "-" ""
	local single_eps=$APP_EPS

	bench_appends "$BATCH"
	row "batch-$BATCH appends, events/s (201s x $BATCH)" "$(thousands "$APP_EPS")" "-" "-" \
		">= 200,000" "$(met "$APP_EPS" ">=" 200000)"
	row "batch-$BATCH appends, p50 / p99 ms" "$APP_P50 / $APP_P99" "-" "-" "-" ""

	bench_bundles
	stop_server "$CH_PID" "charter" "$CH_LOG"

	# The same single-append load against a server that only stores the bytes, and
	# against one that stores nothing: what any durable store could reach here.
	bench_floor fsync
	row "  floor: bare h2o + fdatasync, req/s" "$(thousands "$single_eps")" \
		"$(thousands "$FLOOR_RPS")" "$(calc "%.2f" "$single_eps / $FLOOR_RPS")x" "-" ""
	row "  floor p50 / p99 ms" "-" "$FLOOR_P50 / $FLOOR_P99" "-" "-" ""
	row "  8x sqlite/item as a share of the floor" "-" "-" \
		"$(calc "%.2f" "8 * $BASE_EPS / $FLOOR_RPS")x" "-" ""
	bench_floor reply
	row "  ceiling: bare h2o, no storage, req/s" "$(thousands "$single_eps")" \
		"$(thousands "$FLOOR_RPS")" "$(calc "%.2f" "$single_eps / $FLOOR_RPS")x" "-" ""

	start_charter b 1
	bench_healthz "$CH_PORT" "charter"
	check_alive "$CH_PID" "charter" "$CH_LOG"
	ch_rps=$HZ_RPS
	# On the idle server first: the revoke -> event stream latency.
	bench_sse
	check_alive "$CH_PID" "charter" "$CH_LOG"
	python3 "$BENCH/helper.py" check-mandate "$CH_PORT" "$CH_KEY" "$TMP/check-mandate.id"
	bench_check_charter
	check_alive "$CH_PID" "charter" "$CH_LOG"
	ch_ck_rps=$CK_RPS ch_ck_p50=$CK_P50 ch_ck_p99=$CK_P99 allow=$CK_ALLOW
	stop_server "$CH_PID" "charter" "$CH_LOG"

	start_nginx
	bench_healthz "$NGINX_PORT" "nginx"
	ng_rps=$HZ_RPS
	bench_check_http "$NGINX_PORT" "nginx"
	stop_server "$NGINX_PID" "nginx" "$TMP/nginx/error.log"

	ratio=$(calc "%.4f" "$ch_rps / $ng_rps")
	row "GET /healthz req/s (--threads 1 vs nginx)" "$(thousands "$ch_rps")" \
		"$(thousands "$ng_rps")" "$(calc "%.2f" "$ratio")x" ">= 0.8x" "$(met "$ratio" ">=" 0.8)"
	ratio=$(calc "%.4f" "$ch_ck_rps / $CK_RPS")
	row "POST /v1/check checks/s (vs nginx)" "$(thousands "$ch_ck_rps")" \
		"$(thousands "$CK_RPS")" "$(calc "%.2f" "$ratio")x" ">= 90,000; >= 0.7x" \
		"$(met "$ch_ck_rps" ">=" 90000)/$(met "$ratio" ">=" 0.7)"
	row "POST /v1/check p50 / p99 ms ($allow% allow)" "$ch_ck_p50 / $ch_ck_p99" \
		"$CK_P50 / $CK_P99" "-" "p99 <= 2 ms" "$(met "$ch_ck_p99" "<=" 2)"
	if [ "$SSE_P99" != - ]; then
		row "revoke -> SSE event p50 / p99 ms" "$SSE_P50 / $SSE_P99" "-" "-" "p99 <= 10 ms" \
			"$(met "$SSE_P99" "<=" 10)"
	fi

	# In process, with no server running.
	bench_inproc
}

main() {
	check_tools
	mkdir -p "$ROOT/.bench"
	TMP=$(mktemp -d "$ROOT/.bench/run.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	log "temp dir $TMP"
	# Everything here shares the cores with whatever else runs on the machine.
	LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
	if awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l >= 0.5) }'; then
		log "warning: load average is $LOAD_BEFORE before starting; other processes" \
			"compete for the cores and the disk, numbers will be noisy"
	fi

	cpu_snapshot "$TMP/cpu.before"
	START=$SECONDS
	[ "$ONLY" = scopes ] || run_core
	[ "$ONLY" = core ] || run_scopes

	cpu_snapshot "$TMP/cpu.after"
	FOREIGN_CPU=$(foreign_cpu "$TMP/cpu.before" "$TMP/cpu.after" $((SECONDS - START)))
	print_table
	[ "$FAILED" = 0 ] || exit 1
}

main
