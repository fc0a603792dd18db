#!/usr/bin/env bash
# release-freeze.sh — the failure charter exists to prevent, told against a running
# server.
#
# An agent is approved to implement passkey login. It delegates test repair to a
# sub-agent, gets a pull request opened, and then a reviewer declares a release freeze
# and revokes the approval. The next morning the agent's harness still has everything
# it needs to resume — and that is exactly the problem: runtime state being
# recoverable says nothing about whether the work is still approved. With charter the
# resume is refused, the sub-agent is refused too, and the whole history stays
# readable.
#
# Usage:  examples/release-freeze.sh
#   CHARTER_URL  server base URL (default http://127.0.0.1:7433)
#   CHARTER_KEY  API key (default: the contents of ./charter-data/bootstrap.key)
#   CHARTER_BIN  the charter binary (default: `charter` on PATH, else ./build/charter)
#
# Needs bash, curl and the charter binary. Every step states what it expects; the
# script exits non-zero if any expectation fails, so it doubles as a test.
set -euo pipefail

CHARTER_URL=${CHARTER_URL:-http://127.0.0.1:7433}
CHARTER_URL=${CHARTER_URL%/}
if [[ -z ${CHARTER_KEY:-} ]]; then
    if [[ ! -r ./charter-data/bootstrap.key ]]; then
        echo "release-freeze: set CHARTER_KEY, or run from the directory holding charter-data/" >&2
        exit 64
    fi
    CHARTER_KEY=$(cat ./charter-data/bootstrap.key)
fi
export CHARTER_URL CHARTER_KEY

if [[ -n ${CHARTER_BIN:-} ]]; then
    CHARTER=$CHARTER_BIN
elif command -v charter >/dev/null 2>&1; then
    CHARTER=$(command -v charter)
else
    CHARTER=$(cd "$(dirname "$0")/.." && pwd)/build/charter
fi
if [[ ! -x $CHARTER ]]; then
    echo "release-freeze: no charter binary at $CHARTER (set CHARTER_BIN)" >&2
    exit 64
fi

# The narration ("$ charter ...") goes to fd 3, the original stdout, so that it shows
# even when a command's output is captured with $(...).
exec 3>&1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'echo; echo "release-freeze: unexpected failure at line $LINENO" >&2' ERR

PASSED=0
FAILED=0
FAILURES=()

# ---- helpers ------------------------------------------------------------------------

bold=""
plain=""
if [[ -t 1 ]]; then
    bold=$(printf '\033[1m')
    plain=$(printf '\033[0m')
fi

chapter() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$plain"; }
say() { printf '%s\n' "$*" | fold -s -w 88; }
run() { printf '  $ %s\n' "$*" >&3; }

pass() {
    PASSED=$((PASSED + 1))
    printf '  [ok]   %s\n' "$*"
}
fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$*")
    printf '  [FAIL] %s\n' "$*"
}

# The arguments as a shell would need them: plain words bare, others in single quotes.
quoted() {
    local a out=""
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
            out+=" $a"
        else
            out+=" '${a//\'/\'\\\'\'}'"
        fi
    done
    printf '%s' "$out"
}

# charter with the command line shown first.
charter() {
    run "charter$(quoted "$@")"
    "$CHARTER" "$@"
}

# api METHOD PATH [BODY]: one HTTP call with curl. The body of the reply is left in
# $BODY and its status in $STATUS; nothing fails here, the caller checks.
api() {
    local method=$1 path=$2 data=${3:-}
    local args=(-sS -o "$TMP/body" -w '%{http_code}' -X "$method"
        -H "Authorization: Bearer $CHARTER_KEY")
    if [[ -n $data ]]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$data")
    fi
    local shown=${data//$'\n'/}
    if [[ -n $data ]]; then
        run "curl -X $method $path -d '${shown//  / }'"
    else
        run "curl -X $method $path"
    fi
    STATUS=$(curl "${args[@]}" "$CHARTER_URL$path") || STATUS=000
    BODY=$(cat "$TMP/body" 2>/dev/null || true)
}

# expect_status WANT WHAT: checks the last api call.
expect_status() {
    if [[ $STATUS == "$1" ]]; then
        pass "$2 (HTTP $STATUS)"
    else
        fail "$2: expected HTTP $1, got $STATUS: $BODY"
    fi
}

# field NAME [JSON]: the first string or number member NAME of a compact JSON text
# (stdin when JSON is not given). Enough for the flat replies used here.
field() {
    local text=${2-$(cat)}
    { printf '%s' "$text" | grep -o "\"$1\":\(\"[^\"]*\"\|[-0-9.a-z]*\)" || true; } |
        head -n 1 | sed -e "s/^\"$1\"://" -e 's/^"//' -e 's/"$//'
}

# show JSON: prints it indented when a pretty-printer is at hand.
show() {
    if command -v jq >/dev/null 2>&1; then
        printf '%s\n' "$1" | jq . | sed 's/^/    /'
    elif command -v python3 >/dev/null 2>&1; then
        printf '%s\n' "$1" | python3 -m json.tool | sed 's/^/    /'
    else
        printf '    %s\n' "$1"
    fi
}

# ---- the story --------------------------------------------------------------------------

chapter "1. Alice approves a mission"
say "Alice approves one mission for the coding agent: implement passkey login in the web
repo, with git, a shell and the test runner, including opening a pull request (an
external action). It may delegate two levels deep, and it ends in 24 hours whatever
happens."
ROOT_JSON=$(charter mandate create --approver alice --purpose "implement passkey login" \
    --actor coder --tool git --tool shell --tool test-runner --lane repo \
    --resource 'repo:web/*' --class read --class write --class external \
    --max-depth 2 --expires-in 24h --evidence '{"ticket":"SEC-142"}')
ROOT=$(field id "$ROOT_JSON")
show "$ROOT_JSON"
if [[ $(field state "$ROOT_JSON") == active && $ROOT == mdt_* ]]; then
    pass "mandate $ROOT is active"
else
    fail "the root mandate is not active: $ROOT_JSON"
fi

chapter "2. The coding agent starts a session under it"
say "The harness opens a session bound to the mandate and records its work as usual."
api POST /v1/sessions "{\"user\":\"alice\",\"agent\":\"coder\",\"mandate\":\"$ROOT\",\"labels\":{\"repo\":\"web\"}}"
expect_status 201 "coding session created"
CODER=$(field id "$BODY")
api POST "/v1/sessions/$CODER/events" '{"events":[
  {"kind":"message","role":"user","content":"add passkey login to the web app"},
  {"kind":"tool_call","content":{"tool":"git","args":["checkout","-b","passkeys"]},"usage":{"tool_calls":1}},
  {"kind":"tool_result","content":"switched to a new branch passkeys","usage":{"tokens":1200}}]}'
expect_status 201 "three events appended to $CODER"

chapter "3. It delegates test repair to a sub-agent"
say "The login tests fail. The agent hands them to a test-fixer sub-agent with a narrower
mandate: the test runner and git, only under repo:web/tests/, read and write only, for
four hours. The child can never be wider than its parent."
CHILD_JSON=$(charter mandate delegate "$ROOT" --actor test-fixer \
    --purpose "repair the failing login tests" --tool test-runner --tool git --lane repo \
    --resource 'repo:web/tests/*' --class read --class write --expires-in 4h)
CHILD=$(field id "$CHILD_JSON")
if [[ $(field parent "$CHILD_JSON") == "$ROOT" && $(field state "$CHILD_JSON") == active ]]; then
    pass "child mandate $CHILD delegated from $ROOT"
else
    fail "the delegated mandate is not an active child of $ROOT: $CHILD_JSON"
fi
say "A delegation that asks for more than the parent holds is refused:"
if "$CHARTER" mandate delegate "$ROOT" --actor test-fixer --purpose "deploy" --tool kubectl \
    --lane repo --expires-in 1h >/dev/null 2>"$TMP/err"; then
    fail "a delegation with a tool outside the parent's scope was accepted"
else
    printf '    %s\n' "$(cat "$TMP/err")"
    if grep -q not_subset "$TMP/err"; then
        pass "wider delegation refused with not_subset"
    else
        fail "wider delegation refused, but not with not_subset: $(cat "$TMP/err")"
    fi
fi
api POST /v1/sessions "{\"user\":\"alice\",\"agent\":\"test-fixer\",\"mandate\":\"$CHILD\"}"
expect_status 201 "sub-agent session created"
FIXER=$(field id "$BODY")
api POST "/v1/sessions/$FIXER/events" '{"kind":"tool_call","content":{"tool":"test-runner","args":["tests/login"]},"usage":{"tool_calls":1}}'
expect_status 201 "the sub-agent records its first test run"

chapter "4. Opening the pull request is checked"
say "Opening a pull request is an external action. Before doing it, the agent asks."
if charter mandate check "$ROOT" --actor coder --session "$CODER" --tool git --lane repo \
    --resource repo:web/pulls --class external >"$TMP/out"; then
    pass "check allows the coder to open a pull request: $(field reason <"$TMP/out")"
else
    fail "check denied opening the pull request: $(cat "$TMP/out")"
fi
say "The sub-agent would like to push its test fix upstream itself. Its mandate holds no
external actions, so the answer is no (exit 1):"
if charter mandate check "$CHILD" --actor test-fixer --session "$FIXER" --tool git \
    --lane repo --resource repo:web/tests/login.test.ts --class external >"$TMP/out"; then
    fail "check allowed the sub-agent an external action"
elif [[ $(field reason <"$TMP/out") == class_out_of_scope ]]; then
    pass "check denies the sub-agent: class_out_of_scope"
else
    fail "check denied the sub-agent, but not with class_out_of_scope: $(cat "$TMP/out")"
fi
api POST "/v1/sessions/$CODER/events" '{"events":[
  {"kind":"tool_call","content":{"tool":"git","action":"open_pull_request","title":"Passkey login"},"usage":{"tool_calls":1}},
  {"kind":"tool_result","content":"pull request #1234 opened","usage":{"tokens":300}}]}'
expect_status 201 "pull request #1234 recorded in the coding session"

chapter "5. A reviewer declares a release freeze"
say "Late in the evening a reviewer freezes releases and revokes the approval. The revoke
reaches every mandate delegated from it in the same transaction, and every session
bound to the tree goes inert."
REVOKED=$(charter mandate revoke "$ROOT" --reason "release freeze")
if [[ $(field state "$REVOKED") == revoked ]]; then
    pass "root mandate revoked"
else
    fail "the root mandate is not revoked: $REVOKED"
fi
charter mandate tree "$ROOT"
if [[ $(field state "$("$CHARTER" mandate show "$CHILD")") == revoked ]]; then
    pass "the sub-agent's mandate was revoked with it"
else
    fail "the sub-agent's mandate is still $(field state "$("$CHARTER" mandate show "$CHILD")")"
fi

chapter "6. The next morning"
say "The coding agent's harness wakes up. Its session is intact and resumable as far as
runtime state goes — but the approval behind it is gone."
api POST "/v1/sessions/$CODER/resume"
expect_status 409 "the coding session's resume is refused"
if [[ $(field code "$BODY") == mandate_inactive ]]; then
    pass "refused with mandate_inactive"
else
    fail "resume refused with $(field code "$BODY"), expected mandate_inactive: $BODY"
fi
api POST "/v1/sessions/$CODER/events" '{"kind":"message","role":"assistant","content":"merging the pull request"}'
expect_status 409 "the coding agent cannot record more work"

say "The sub-agent, which never heard of the freeze, tries to carry on."
api POST "/v1/sessions/$FIXER/events" '{"kind":"tool_call","content":{"tool":"test-runner","args":["tests/login"]}}'
expect_status 409 "the sub-agent's append is refused ($(field code "$BODY"))"
if "$CHARTER" mandate check "$CHILD" --actor test-fixer --session "$FIXER" --tool test-runner \
    --lane repo --resource repo:web/tests/login.test.ts --class write >"$TMP/out"; then
    fail "check still allows the sub-agent to work: $(cat "$TMP/out")"
else
    reason=$(field reason <"$TMP/out")
    case $reason in
    mandate_revoked | ancestor_inactive) pass "check denies the sub-agent: $reason" ;;
    *) fail "check denied the sub-agent with an unexpected reason: $(cat "$TMP/out")" ;;
    esac
fi

say "Nothing is lost: the history of what was done, and under which approval, stays
readable."
api GET "/v1/sessions/$CODER"
expect_status 200 "the coding session is readable"
say "  state: $(field state "$BODY"), seq: $(field seq "$BODY"), mandate: $(field mandate "$BODY")"
if [[ $(field state "$BODY") == inert ]]; then
    pass "the coding session is inert"
else
    fail "the coding session is $(field state "$BODY"), expected inert"
fi
api GET "/v1/sessions/$CODER/events"
expect_status 200 "its events are readable"
show "$BODY"
api GET "/v1/sessions/$FIXER/bundle"
expect_status 200 "the sub-agent's resume bundle is readable"
show "$BODY"
api GET "/v1/audit?mandate=$ROOT"
expect_status 200 "the audit trail of the mandate tree is readable"
say "  records by kind:"
grep -o '"kind":"[^"]*"' <<<"$BODY" | cut -d'"' -f4 | sort | uniq -c | sed 's/^/    /'
if grep -q '"mandate.revoked"' <<<"$BODY"; then
    pass "the audit trail holds the revoke"
else
    fail "no mandate.revoked record in the audit trail: $BODY"
fi

# ---- summary ---------------------------------------------------------------------------

chapter "Summary"
say "Alice approved passkey login; the agent worked, delegated, and opened a pull request
within its bounds. When the reviewer revoked the approval, charter refused the next
morning's resume and the sub-agent's work alike, while every event and decision stayed
on record."
echo
if ((FAILED == 0)); then
    echo "release-freeze: all $PASSED expectations held"
    exit 0
fi
echo "release-freeze: $FAILED of $((PASSED + FAILED)) expectations failed:" >&2
for f in "${FAILURES[@]}"; do
    echo "  - $f" >&2
done
exit 1
