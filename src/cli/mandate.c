/*
 * mandate.c — `charter mandate <verb>`: the mandates API from the command line, and
 * the offline verification of signed artifacts.
 *
 * Built like session.c: every verb is one row of the verbs table (its options as a
 * bit mask over the command's option table, its positional arguments, its function);
 * opts.c parses, prints the usage and dispatches. An option means the same thing in
 * every verb: --tool/--lane/--resource/--class are lists where a verb sets a scope
 * (create, delegate, narrow) and the one action where it decides one (check,
 * verify-artifact).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "charter.h"
#include "cli/cli.h"

/* The artifact lifetime asked for when --ttl is not given; the server caps it at
 * mandates.max_staleness (default 30 s) and at the mandate's deadline anyway. */
#define DEFAULT_TTL "30s"

enum opt {
    O_APPROVER = CH__O_OWN,
    O_EXPIRES_AT,
    O_EXPIRES_IN,
    O_PURPOSE,
    O_ACTOR,
    O_TOOL,
    O_LANE,
    O_RESOURCE,
    O_CLASS,
    O_CLEAR,
    O_MAX_DEPTH,
    O_BUDGET_TOKENS,
    O_BUDGET_COST,
    O_BUDGET_COST_USD,
    O_BUDGET_TOOL_CALLS,
    O_PROPOSED,
    O_EVIDENCE,
    O_CONDITIONS,
    O_REASON,
    O_SESSION,
    O_ARTIFACT,
    O_TTL,
    O_PUBLIC_KEY,
    O__COUNT
};

/* No string option of this command may be empty. */
static const ch__opt_spec opts[O__COUNT] = {
    [CH__O_JSON] = {"json", CH__OPT_FLAG},
    [CH__O_URL] = {"url", CH__OPT_NONEMPTY},
    [CH__O_KEY_FILE] = {"key-file", CH__OPT_NONEMPTY},
    [CH__O_HELP] = {"help", CH__OPT_FLAG},
    [O_APPROVER] = {"approver", CH__OPT_NONEMPTY},
    [O_EXPIRES_AT] = {"expires-at", CH__OPT_NONEMPTY},
    [O_EXPIRES_IN] = {"expires-in", CH__OPT_NONEMPTY},
    [O_PURPOSE] = {"purpose", CH__OPT_NONEMPTY},
    [O_ACTOR] = {"actor", CH__OPT_NONEMPTY},
    [O_TOOL] = {"tool", CH__OPT_LIST},
    [O_LANE] = {"lane", CH__OPT_LIST},
    [O_RESOURCE] = {"resource", CH__OPT_LIST},
    [O_CLASS] = {"class", CH__OPT_LIST},
    [O_CLEAR] = {"clear", CH__OPT_LIST},
    [O_MAX_DEPTH] = {"max-depth", CH__OPT_INT},
    [O_BUDGET_TOKENS] = {"budget-tokens", CH__OPT_INT},
    [O_BUDGET_COST] = {"budget-cost", CH__OPT_REAL},
    [O_BUDGET_COST_USD] = {"budget-cost-usd", CH__OPT_REAL, .store_in = O_BUDGET_COST},
    [O_BUDGET_TOOL_CALLS] = {"budget-tool-calls", CH__OPT_INT},
    [O_PROPOSED] = {"proposed", CH__OPT_FLAG},
    [O_EVIDENCE] = {"evidence", CH__OPT_JSON},
    [O_CONDITIONS] = {"conditions", CH__OPT_JSON},
    [O_REASON] = {"reason", CH__OPT_NONEMPTY},
    [O_SESSION] = {"session", CH__OPT_NONEMPTY},
    [O_ARTIFACT] = {"artifact", CH__OPT_NONEMPTY},
    [O_TTL] = {"ttl", CH__OPT_NONEMPTY},
    [O_PUBLIC_KEY] = {"public-key", CH__OPT_NONEMPTY},
};

/* The four scope lists: the option, the member of scope, and the --clear name. */
static const struct {
    enum opt opt;
    const char *member;
} scope_lists[] = {
    {O_TOOL, "tools"},
    {O_LANE, "lanes"},
    {O_RESOURCE, "resources"},
    {O_CLASS, "classes"},
};
#define NSCOPE (sizeof scope_lists / sizeof scope_lists[0])

_Static_assert(O__COUNT <= CH__OPTS_MAX, "option sets are 64-bit masks");
#define SCOPE_OPTS (CH__BIT(O_TOOL) | CH__BIT(O_LANE) | CH__BIT(O_RESOURCE) | CH__BIT(O_CLASS))
#define EXPIRY_OPTS (CH__BIT(O_EXPIRES_AT) | CH__BIT(O_EXPIRES_IN))
#define BUDGET_OPTS                                                                                \
    (CH__BIT(O_BUDGET_TOKENS) | CH__BIT(O_BUDGET_COST) | CH__BIT(O_BUDGET_COST_USD) |              \
     CH__BIT(O_BUDGET_TOOL_CALLS))

static int verb_create(ch__args *a);
static int verb_show(ch__args *a);
static int verb_tree(ch__args *a);
static int verb_transition(ch__args *a);
static int verb_delegate(ch__args *a);
static int verb_narrow(ch__args *a);
static int verb_check(ch__args *a);
static int verb_artifact(ch__args *a);
static int verb_verify_artifact(ch__args *a);

static const ch__verb verbs[] = {
    {"create", verb_create,
     CH__BIT(O_APPROVER) | EXPIRY_OPTS | CH__BIT(O_PURPOSE) | CH__BIT(O_ACTOR) | SCOPE_OPTS |
         CH__BIT(O_MAX_DEPTH) | BUDGET_OPTS | CH__BIT(O_PROPOSED) | CH__BIT(O_EVIDENCE) |
         CH__BIT(O_CONDITIONS),
     0, 0, false,
     "create --approver A (--expires-at T | --expires-in DUR) [--purpose P] [--actor X]\n"
     "       [--tool T]... [--lane L]... [--resource R]... [--class C]... [--max-depth N]\n"
     "       [--budget-tokens N] [--budget-cost X] [--budget-tool-calls N] [--proposed]\n"
     "       [--evidence JSON] [--conditions JSON]"},
    {"show", verb_show, 0, 1, 1, false, "show ID"},
    {"tree", verb_tree, 0, 1, 1, false, "tree ID"},
    {"approve", verb_transition, 0, 1, 1, false, "approve ID"},
    {"suspend", verb_transition, CH__BIT(O_REASON), 1, 1, false, "suspend ID [--reason R]"},
    {"reinstate", verb_transition, 0, 1, 1, false, "reinstate ID"},
    {"revoke", verb_transition, CH__BIT(O_REASON), 1, 1, false, "revoke ID [--reason R]"},
    {"complete", verb_transition, 0, 1, 1, false, "complete ID"},
    {"delegate", verb_delegate,
     CH__BIT(O_ACTOR) | CH__BIT(O_PURPOSE) | EXPIRY_OPTS | SCOPE_OPTS | CH__BIT(O_MAX_DEPTH) |
         BUDGET_OPTS | CH__BIT(O_EVIDENCE) | CH__BIT(O_CONDITIONS),
     1, 1, false,
     "delegate ID --actor X --purpose P (--expires-at T | --expires-in DUR)\n"
     "       [--tool T]... [--lane L]... [--resource R]... [--class C]... [--max-depth N]\n"
     "       [--budget-tokens N] [--budget-cost X] [--budget-tool-calls N]\n"
     "       [--evidence JSON] [--conditions JSON]"},
    {"narrow", verb_narrow, SCOPE_OPTS | CH__BIT(O_CLEAR) | EXPIRY_OPTS | CH__BIT(O_CONDITIONS), 1,
     1, false,
     "narrow ID [--tool T]... [--lane L]... [--resource R]... [--class C]...\n"
     "       [--clear tools|lanes|resources|classes]... [--expires-at T | --expires-in DUR]\n"
     "       [--conditions JSON]"},
    {"check", verb_check, SCOPE_OPTS | CH__BIT(O_ACTOR) | CH__BIT(O_SESSION) | CH__BIT(O_ARTIFACT),
     0, 1, false,
     "check ID --tool T --lane L --resource R --class C [--actor A] [--session S]\n"
     "  check --artifact TOKEN --tool T --lane L --resource R --class C [--actor A] [--session S]"},
    {"artifact", verb_artifact, CH__BIT(O_TTL), 1, 1, false, "artifact ID [--ttl DUR]"},
    {"verify-artifact", verb_verify_artifact, CH__BIT(O_PUBLIC_KEY) | SCOPE_OPTS, 1, 1, true,
     "verify-artifact --public-key FILE TOKEN [--tool T --lane L --resource R --class C]"},
};

static const ch__cmd mandate_cmd = {
    .name = "mandate",
    .opts = opts,
    .nopts = O__COUNT,
    .verbs = verbs,
    .nverbs = sizeof verbs / sizeof verbs[0],
    .help = "\nDUR is a duration: 30s, 5m, 24h, 7d. T is an RFC 3339 time.\n"
            "Without --json a terminal gets tables; a pipe gets the reply as one line of JSON\n"
            "(`artifact` prints the token alone either way).\n"
            "Exit codes: 0 ok (check: allowed), 1 refused by the server, a local error, or\n"
            "(check, verify-artifact) denied or invalid, 2 server unreachable, 64 usage error.\n",
};

/* ---------------------------------------------------------------------------------
 * Request bodies from flags
 * ------------------------------------------------------------------------------- */

/* "/v1/mandates/<id><suffix>" with id escaped. malloc'd. */
static char *mandate_path(const char *id, const char *suffix)
{
    return ch__client_path("/v1/mandates", id, suffix);
}

/* Sets body.expires_at from --expires-at (as given) or --expires-in (now + DUR, in
 * RFC 3339 UTC). required: one of them must be there. */
static int set_expiry(const ch__args *a, json_t *body, bool required)
{
    char text[32];
    int64_t ms;

    if (a->set[O_EXPIRES_AT] && a->set[O_EXPIRES_IN])
        return ch__usage_error(a, "--expires-at and --expires-in exclude each other");
    if (a->set[O_EXPIRES_AT]) {
        ch__json_set(body, "expires_at", json_string(a->str[O_EXPIRES_AT]));
    } else if (a->set[O_EXPIRES_IN]) {
        if (ch_duration_parse(a->str[O_EXPIRES_IN], &ms) != CH_OK || ms > INT64_MAX - ch_now_ms())
            return ch__usage_error(a, "--expires-in: not a duration (30s, 5m, 24h, 7d): '%s'",
                                   a->str[O_EXPIRES_IN]);
        ch_time_format(ch_now_ms() + ms, text);
        ch__json_set(body, "expires_at", json_string(text));
    } else if (required) {
        return ch__usage_error(a, "%s needs --expires-at or --expires-in", a->verb->name);
    }
    return CH__EXIT_OK;
}

/* The scope of the list flags given (and, for narrow, the lists --clear empties), or
 * NULL when none was. */
static json_t *scope_from_flags(const ch__args *a)
{
    json_t *scope = NULL;

    for (size_t i = 0; i < NSCOPE; i++) {
        const json_t *list = a->json[scope_lists[i].opt];

        if (list == NULL)
            continue;
        if (scope == NULL)
            scope = ch__json_object();
        ch__json_set(scope, scope_lists[i].member, json_deep_copy(list));
    }
    return scope;
}

/* Applies --clear NAME...: each named list becomes []. */
static int apply_clear(const ch__args *a, json_t **scope)
{
    size_t i, j;
    json_t *name;

    json_array_foreach(a->json[O_CLEAR], i, name)
    {
        const char *s = json_string_value(name);

        for (j = 0; j < NSCOPE; j++) {
            if (strcmp(s, scope_lists[j].member) == 0)
                break;
        }
        if (j == NSCOPE)
            return ch__usage_error(
                a, "--clear: expected tools, lanes, resources or classes, got '%s'", s);
        if (a->json[scope_lists[j].opt] != NULL)
            return ch__usage_error(a, "--clear %s and --%s exclude each other", s,
                                   opts[scope_lists[j].opt].name);
        if (*scope == NULL)
            *scope = ch__json_object();
        ch__json_set(*scope, s, json_array());
    }
    return CH__EXIT_OK;
}

/* The members create and delegate share: scope, max_depth, budget, evidence,
 * conditions, actor and purpose, each only when its flag was given. */
static void set_common(const ch__args *a, json_t *body)
{
    json_t *scope = scope_from_flags(a);

    if (a->set[O_PURPOSE])
        ch__json_set(body, "purpose", json_string(a->str[O_PURPOSE]));
    if (a->set[O_ACTOR])
        ch__json_set(body, "actor", json_string(a->str[O_ACTOR]));
    if (scope != NULL)
        ch__json_set(body, "scope", scope);
    if (a->set[O_MAX_DEPTH])
        ch__json_set(body, "max_depth", json_integer(a->num[O_MAX_DEPTH]));
    ch__set_amounts(a, body, "budget", O_BUDGET_TOKENS, O_BUDGET_COST, O_BUDGET_TOOL_CALLS);
    if (a->set[O_EVIDENCE])
        ch__json_set(body, "evidence", json_incref(a->json[O_EVIDENCE]));
    if (a->set[O_CONDITIONS])
        ch__json_set(body, "conditions", json_incref(a->json[O_CONDITIONS]));
}

/* The single value of an action flag (--tool etc. given once), or NULL with a usage
 * error printed when it is missing or repeated. */
static const char *action_value(const ch__args *a, enum opt o, int *rc)
{
    const json_t *list = a->json[o];

    if (list == NULL) {
        *rc = ch__usage_error(a, "%s needs --%s", a->verb->name, opts[o].name);
        return NULL;
    }
    if (json_array_size(list) != 1) {
        *rc = ch__usage_error(a, "--%s may be given only once here", opts[o].name);
        return NULL;
    }
    return json_string_value(json_array_get(list, 0));
}

/* ---------------------------------------------------------------------------------
 * Verbs
 * ------------------------------------------------------------------------------- */

static int verb_create(ch__args *a)
{
    json_t *body, *reply = NULL;
    int rc;

    if (!a->set[O_APPROVER])
        return ch__usage_error(a, "create needs --approver");
    body = ch__json_object();
    ch__json_set(body, "approver", json_string(a->str[O_APPROVER]));
    rc = set_expiry(a, body, true);
    if (rc != CH__EXIT_OK)
        goto done;
    set_common(a, body);
    if (a->set[O_PROPOSED])
        ch__json_set(body, "state", json_string("proposed"));
    rc = ch__client_request("POST", "/v1/mandates", body, NULL, &reply);
    rc = ch__emit(a, rc, reply, ch__view_mandate);
done:
    json_decref(body);
    return rc;
}

static int verb_show(ch__args *a)
{
    char *path = mandate_path(a->pos[0], "");
    json_t *reply = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    return ch__emit(a, rc, reply, ch__view_mandate);
}

static int verb_tree(ch__args *a)
{
    char *path = mandate_path(a->pos[0], "/tree");
    json_t *reply = NULL, *self = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    if (rc != CH__EXIT_OK || a->mode != CH__OUT_HUMAN)
        return ch__emit(a, rc, reply, NULL);
    /* The tree lists the others; the mandate's own line needs the mandate. */
    path = mandate_path(a->pos[0], "");
    rc = ch__client_request("GET", path, NULL, NULL, &self);
    free(path);
    if (rc == CH__EXIT_OK)
        ch__view_mandate_tree(reply, self);
    json_decref(self);
    json_decref(reply);
    return rc != CH__EXIT_OK ? rc : ch__flush_stdout();
}

/* approve, suspend, reinstate, revoke, complete: POST .../<verb> with {} or {reason}. */
static int verb_transition(ch__args *a)
{
    return ch__post_lifecycle(a, "/v1/mandates", a->str[O_REASON], ch__view_mandate);
}

static int verb_delegate(ch__args *a)
{
    json_t *body, *reply = NULL;
    char *path;
    int rc;

    if (!a->set[O_ACTOR] || !a->set[O_PURPOSE])
        return ch__usage_error(a, "delegate needs --actor and --purpose");
    body = ch__json_object();
    rc = set_expiry(a, body, true);
    if (rc != CH__EXIT_OK)
        goto done;
    set_common(a, body);
    /* The API takes scope as required: a child given no list gets an empty scope. */
    if (json_object_get(body, "scope") == NULL)
        ch__json_set(body, "scope", ch__json_object());
    path = mandate_path(a->pos[0], "/delegate");
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(path);
    rc = ch__emit(a, rc, reply, ch__view_mandate);
done:
    json_decref(body);
    return rc;
}

static int verb_narrow(ch__args *a)
{
    json_t *body, *scope = scope_from_flags(a), *reply = NULL;
    char *path;
    int rc;

    body = ch__json_object();
    rc = apply_clear(a, &scope);
    if (rc != CH__EXIT_OK)
        goto done;
    if (scope != NULL) {
        ch__json_set(body, "scope", scope);
        scope = NULL;
    }
    rc = set_expiry(a, body, false);
    if (rc != CH__EXIT_OK)
        goto done;
    if (a->set[O_CONDITIONS])
        ch__json_set(body, "conditions", json_incref(a->json[O_CONDITIONS]));
    if (json_object_size(body) == 0) {
        rc = ch__usage_error(a, "narrow needs a scope list, --clear, an expiry or --conditions");
        goto done;
    }
    path = mandate_path(a->pos[0], "");
    rc = ch__client_request("PATCH", path, body, NULL, &reply);
    free(path);
    rc = ch__emit(a, rc, reply, ch__view_mandate);
done:
    json_decref(scope);
    json_decref(body);
    return rc;
}

/* The {tool, lane, resource, class} of the action flags, or NULL after a usage error
 * (*rc set). */
static json_t *action_from_flags(const ch__args *a, int *rc)
{
    static const struct {
        enum opt opt;
        const char *member;
    } fields[] = {{O_TOOL, "tool"}, {O_LANE, "lane"}, {O_RESOURCE, "resource"}, {O_CLASS, "class"}};
    json_t *action = ch__json_object();

    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *v = action_value(a, fields[i].opt, rc);

        if (v == NULL) {
            json_decref(action);
            return NULL;
        }
        ch__json_set(action, fields[i].member, json_string(v));
    }
    return action;
}

/* POST /v1/check. Exit 0 when allowed, 1 when denied: a decision, not a failure. */
static int verb_check(ch__args *a)
{
    json_t *body = NULL, *action, *reply = NULL;
    bool allow;
    int rc = CH__EXIT_OK;

    if (a->set[O_ARTIFACT] && a->npos > 0)
        return ch__usage_error(a, "check takes either ID or --artifact TOKEN, not both");
    if (!a->set[O_ARTIFACT] && a->npos == 0)
        return ch__usage_error(a, "check needs a mandate ID or --artifact TOKEN");
    action = action_from_flags(a, &rc);
    if (action == NULL)
        return rc;
    body = ch__json_object();
    if (a->set[O_ARTIFACT])
        ch__json_set(body, "artifact", json_string(a->str[O_ARTIFACT]));
    else
        ch__json_set(body, "mandate", json_string(a->pos[0]));
    if (a->set[O_ACTOR])
        ch__json_set(body, "actor", json_string(a->str[O_ACTOR]));
    if (a->set[O_SESSION])
        ch__json_set(body, "session", json_string(a->str[O_SESSION]));
    ch__json_set(body, "action", action);
    rc = ch__client_request("POST", "/v1/check", body, NULL, &reply);
    json_decref(body);
    if (rc != CH__EXIT_OK)
        return rc;
    allow = json_is_true(json_object_get(reply, "allow"));
    rc = ch__emit(a, rc, reply, ch__view_check);
    if (rc == CH__EXIT_OK && !allow)
        rc = CH__EXIT_FAIL;
    return rc;
}

/* POST .../artifact. The token alone on stdout (terminal or pipe, so that
 * `tok=$(charter mandate artifact ID)` works); --json prints the whole reply. */
static int verb_artifact(ch__args *a)
{
    const char *ttl = a->set[O_TTL] ? a->str[O_TTL] : DEFAULT_TTL;
    json_t *body = ch__json_object(), *reply = NULL;
    long long secs;
    int64_t ms;
    char *path;
    const char *token;
    int rc;

    /* The API takes seconds as an integer or a duration string. */
    if (ch__parse_int(ttl, &secs)) {
        ch__json_set(body, "ttl", json_integer(secs));
    } else if (ch_duration_parse(ttl, &ms) == CH_OK) {
        ch__json_set(body, "ttl", json_string(ttl));
    } else {
        json_decref(body);
        return ch__usage_error(a, "--ttl: not a duration (30s, 5m) or a number of seconds: '%s'",
                               ttl);
    }
    path = mandate_path(a->pos[0], "/artifact");
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(path);
    json_decref(body);
    if (rc != CH__EXIT_OK || a->mode == CH__OUT_PRETTY)
        return ch__emit(a, rc, reply, NULL);
    token = json_string_value(json_object_get(reply, "artifact"));
    if (token == NULL) {
        fprintf(stderr, "charter: unexpected reply from %s: no artifact\n", ch__client_base_url());
        json_decref(reply);
        return CH__EXIT_FAIL;
    }
    printf("%s\n", token);
    json_decref(reply);
    return ch__flush_stdout();
}

/* Reads the token argument: as given, or from stdin when it is "-". malloc'd, with
 * surrounding whitespace removed; NULL (after saying why) when stdin fails. */
static char *read_token(const char *arg)
{
    char *text, *start;
    size_t len;

    if (strcmp(arg, "-") != 0)
        return ch__xstrdup(arg);
    text = ch__read_file("-", &len);
    if (text == NULL) {
        fprintf(stderr, "charter: cannot read stdin: %s\n", strerror(errno));
        return NULL;
    }
    start = text;
    while (*start == ' ' || *start == '\t' || *start == '\n' || *start == '\r')
        start++;
    len = strlen(start);
    while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t' || start[len - 1] == '\n' ||
                       start[len - 1] == '\r'))
        start[--len] = '\0';
    memmove(text, start, len + 1);
    return text;
}

/* Offline: verifies TOKEN against the public key saved from GET /v1/keys/signing and,
 * with the action flags, decides that action from the claims. Exit 0 when valid (and
 * allowed), 1 when invalid or denied. */
static int verb_verify_artifact(ch__args *a)
{
    bool have_action = false, all_action = true, allow = true;
    const char *reason = NULL;
    json_t *claims = NULL, *action = NULL, *out = NULL;
    char *jwk = NULL, *token = NULL;
    size_t jwk_len = 0;
    ch_err e;
    int rc;

    if (!a->set[O_PUBLIC_KEY])
        return ch__usage_error(a, "verify-artifact needs --public-key FILE");
    for (size_t i = 0; i < NSCOPE; i++) {
        have_action |= a->json[scope_lists[i].opt] != NULL;
        all_action &= a->json[scope_lists[i].opt] != NULL;
    }
    if (have_action && !all_action)
        return ch__usage_error(a, "give all of --tool, --lane, --resource and --class, or none");
    if (have_action) {
        rc = CH__EXIT_OK;
        action = action_from_flags(a, &rc);
        if (action == NULL)
            return rc;
    }

    rc = CH__EXIT_FAIL;
    jwk = ch__read_file(a->str[O_PUBLIC_KEY], &jwk_len);
    if (jwk == NULL) {
        fprintf(stderr, "charter: cannot read %s: %s\n", a->str[O_PUBLIC_KEY], strerror(errno));
        goto done;
    }
    token = read_token(a->pos[0]);
    if (token == NULL)
        goto done;
    if (sodium_init() < 0) {
        fputs("charter: cannot initialise libsodium\n", stderr);
        goto done;
    }
    ch_err_clear(&e);
    if (ch_artifact_verify(jwk, jwk_len, token, ch_now_ms(), &claims, &e) != CH_OK) {
        fprintf(stderr, "charter: artifact_invalid: %s",
                e.message[0] != '\0' ? e.message : ch_strerror(e.status));
        if (e.field[0] != '\0')
            fprintf(stderr, " (field: %s)", e.field);
        fputc('\n', stderr);
        goto done;
    }
    if (action != NULL) {
        allow = ch_artifact_decide(claims, json_string_value(json_object_get(action, "tool")),
                                   json_string_value(json_object_get(action, "lane")),
                                   json_string_value(json_object_get(action, "resource")),
                                   json_string_value(json_object_get(action, "class")), &reason);
        if (reason == NULL)
            reason = allow ? "ok" : "denied";
    }

    if (a->mode == CH__OUT_HUMAN) {
        ch__view_artifact_claims(claims);
        if (action != NULL)
            printf("%s: %s\n", allow ? "allow" : "deny", reason);
    } else {
        out = ch__json_object();
        ch__json_set(out, "valid", json_true());
        ch__json_set(out, "claims", json_incref(claims));
        if (action != NULL) {
            ch__json_set(out, "allow", json_boolean(allow));
            ch__json_set(out, "reason", json_string(reason));
        }
        ch__print_json(out, a->mode);
    }
    rc = ch__flush_stdout();
    if (rc == CH__EXIT_OK && !allow) {
        /* The decision is on stdout; stderr says why the exit code is 1. */
        fprintf(stderr, "charter: deny: %s\n", reason);
        rc = CH__EXIT_FAIL;
    }

done:
    json_decref(out);
    json_decref(claims);
    json_decref(action);
    if (token != NULL)
        sodium_memzero(token, strlen(token));
    free(token);
    free(jwk);
    return rc;
}

int ch__mandate_main(int argc, char **argv)
{
    return ch__cmd_main(&mandate_cmd, argc, argv);
}
