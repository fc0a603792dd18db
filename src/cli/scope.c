/*
 * scope.c — `charter scope <verb>`: ephemeral scopes (/v1/ephemeral) from the command
 * line, and `charter scope top`, a live view of the server's scope metrics.
 *
 * Built like session.c: every verb is one row of the verbs table (its options as a
 * bit mask over the command's option table, its positional arguments, its function);
 * opts.c parses, prints the usage and dispatches. Durations (--ttl, --idle-ttl) are
 * checked here with the parser the server uses and sent as the API takes them: a
 * number of seconds as a number, anything else ("30s", "5m") as a string.
 *
 * `top` reads GET /metrics (Prometheus text, no key needed), turns the scope series
 * into one frame (live scopes by flow, locks, bytes, evictions and their rate since
 * the previous frame, the TTL-remaining histogram as bars, expiry lateness
 * quantiles) and redraws it every --interval until Ctrl-C.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "charter.h"
#include "cli/cli.h"

enum opt {
    O_AGENT = CH__O_OWN,
    O_TTL,
    O_IDLE_TTL,
    O_FLOW,
    O_AUTO_EXTEND,
    O_CONTEXT,
    O_SET,
    O_SESSION,
    O_KEY,
    O_TRANSFER_SECRETS,
    O_INTERVAL,
    O_ONCE,
    O__COUNT
};

static int check_duration(ch__args *a, int o);
static int check_flow(ch__args *a, int o);
static int check_object(ch__args *a, int o);
static int check_interval(ch__args *a, int o);

/* No string option of this command may be empty. --ttl and --idle-ttl leave the JSON
 * value to send in their json slot. */
static const ch__opt_spec opts[O__COUNT] = {
    [CH__O_JSON] = {"json", CH__OPT_FLAG},
    [CH__O_URL] = {"url", CH__OPT_NONEMPTY},
    [CH__O_KEY_FILE] = {"key-file", CH__OPT_NONEMPTY},
    [CH__O_HELP] = {"help", CH__OPT_FLAG},
    [O_AGENT] = {"agent", CH__OPT_NONEMPTY},
    [O_TTL] = {"ttl", CH__OPT_NONEMPTY, .check = check_duration},
    [O_IDLE_TTL] = {"idle-ttl", CH__OPT_NONEMPTY, .check = check_duration},
    [O_FLOW] = {"flow", CH__OPT_NONEMPTY, .check = check_flow},
    [O_AUTO_EXTEND] = {"auto-extend", CH__OPT_FLAG},
    [O_CONTEXT] = {"context", CH__OPT_JSON, .check = check_object},
    [O_SET] = {"set", CH__OPT_LABEL},
    [O_SESSION] = {"session", CH__OPT_NONEMPTY},
    [O_KEY] = {"key", CH__OPT_LIST},
    [O_TRANSFER_SECRETS] = {"transfer-secrets", CH__OPT_FLAG},
    [O_INTERVAL] = {"interval", CH__OPT_NONEMPTY, .check = check_interval},
    [O_ONCE] = {"once", CH__OPT_FLAG},
};

_Static_assert(O__COUNT <= CH__OPTS_MAX, "option sets are 64-bit masks");
#define CONTEXT_OPTS (CH__BIT(O_CONTEXT) | CH__BIT(O_SET))

static int verb_create(ch__args *a);
static int verb_get(ch__args *a);
static int verb_set(ch__args *a);
static int verb_merge(ch__args *a);
static int verb_lock(ch__args *a);
static int verb_ttl_action(ch__args *a);
static int verb_complete(ch__args *a);
static int verb_delete(ch__args *a);
static int verb_purge_agent(ch__args *a);
static int verb_top(ch__args *a);

static const ch__verb verbs[] = {
    {"create", verb_create,
     CH__BIT(O_AGENT) | CH__BIT(O_TTL) | CH__BIT(O_IDLE_TTL) | CH__BIT(O_FLOW) |
         CH__BIT(O_AUTO_EXTEND) | CONTEXT_OPTS,
     0, 0, false,
     "create --agent A [--ttl T] [--idle-ttl T] [--flow command|scoped|secure]\n"
     "       [--auto-extend] [--context JSON | --set KEY=VALUE...]"},
    {"get", verb_get, 0, 1, 2, false, "get ID [KEY]"},
    {"set", verb_set, 0, 3, 3, false, "set ID KEY VALUE"},
    {"merge", verb_merge, CONTEXT_OPTS, 1, 1, false,
     "merge ID (--context JSON | --set KEY=VALUE...)   (a null value removes its key)"},
    {"lock", verb_lock, 0, 1, 1, false, "lock ID"},
    {"unlock", verb_lock, 0, 1, 1, false, "unlock ID"},
    {"extend", verb_ttl_action, CH__BIT(O_TTL), 1, 1, false, "extend ID --ttl T"},
    {"upgrade", verb_ttl_action, CH__BIT(O_TTL), 1, 1, false, "upgrade ID [--ttl T]"},
    {"complete", verb_complete, CH__BIT(O_SESSION) | CH__BIT(O_KEY) | CH__BIT(O_TRANSFER_SECRETS),
     1, 1, false, "complete ID [--session S] [--key K]... [--transfer-secrets]"},
    {"delete", verb_delete, 0, 1, 1, false, "delete ID"},
    {"purge-agent", verb_purge_agent, 0, 1, 1, false, "purge-agent AGENT"},
    {"top", verb_top, CH__BIT(O_INTERVAL) | CH__BIT(O_ONCE), 0, 0, false,
     "top [--interval DUR] [--once]"},
};

static const ch__cmd scope_cmd = {
    .name = "scope",
    .opts = opts,
    .nopts = O__COUNT,
    .verbs = verbs,
    .nverbs = sizeof verbs / sizeof verbs[0],
    .help = "\nT is a number of seconds (0.5) or a duration (500ms, 30s, 5m). A --set VALUE\n"
            "and a `set` VALUE are JSON when they parse as JSON (3, true, {\"a\":1}, null),\n"
            "else a string. `top` reads GET /metrics (no key needed) and redraws every\n"
            "--interval (default 1s) until Ctrl-C; --once prints one frame, --json one\n"
            "line of JSON per frame.\n"
            "Without --json a terminal gets tables; a pipe gets the reply as one line of JSON.\n"
            "Exit codes: 0 ok, 1 refused by the server or local error, 2 server unreachable,\n"
            "64 usage error.\n",
};

/* ---------------------------------------------------------------------------------
 * Option checks
 * ------------------------------------------------------------------------------- */

/* A duration as the API takes it: seconds as a number, or a duration string. */
static json_t *duration_json(const char *s)
{
    double secs;
    int64_t ms;

    if (ch__parse_real(s, &secs))
        return secs >= 0 ? json_real(secs) : NULL;
    if (ch_duration_parse(s, &ms) == CH_OK)
        return json_string(s);
    return NULL;
}

static int check_duration(ch__args *a, int o)
{
    json_t *v = duration_json(a->str[o]);

    if (v == NULL)
        return ch__usage_error(a,
                               "--%s: not a number of seconds or a duration (500ms, 30s, 5m): '%s'",
                               opts[o].name, a->str[o]);
    /* A whole number of seconds goes out as an integer: "ttl": 30, not 30.0. */
    if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
        json_real_value(v) < 1e15) {
        json_t *i = json_integer((json_int_t)json_real_value(v));

        json_decref(v);
        v = i;
    }
    json_decref(a->json[o]);
    a->json[o] = v;
    return CH__EXIT_OK;
}

static int check_flow(ch__args *a, int o)
{
    const char *f = a->str[o];

    if (strcmp(f, "command") != 0 && strcmp(f, "scoped") != 0 && strcmp(f, "secure") != 0)
        return ch__usage_error(a, "--flow: expected command, scoped or secure, got '%s'", f);
    return CH__EXIT_OK;
}

static int check_object(ch__args *a, int o)
{
    if (!json_is_object(a->json[o]))
        return ch__usage_error(a, "--%s: expected a JSON object", opts[o].name);
    return CH__EXIT_OK;
}

static int check_interval(ch__args *a, int o)
{
    double secs;
    int64_t ms = -1;

    if (ch__parse_real(a->str[o], &secs)) {
        if (secs >= 0 && secs < 1e9)
            ms = (int64_t)llround(secs * 1000.0);
    } else if (ch_duration_parse(a->str[o], &ms) != CH_OK) {
        ms = -1;
    }
    if (ms < 0)
        return ch__usage_error(
            a, "--interval: not a number of seconds or a duration (1s, 500ms): '%s'", a->str[o]);
    if (ms < 100)
        return ch__usage_error(a, "--interval: at least 100ms, got '%s'", a->str[o]);
    a->num[o] = ms;
    return CH__EXIT_OK;
}

/* ---------------------------------------------------------------------------------
 * Request helpers
 * ------------------------------------------------------------------------------- */

/* "/v1/ephemeral/<id><suffix>" with id escaped. malloc'd. */
static char *scope_path(const char *id, const char *suffix)
{
    return ch__client_path("/v1/ephemeral", id, suffix);
}

/* "/v1/ephemeral/<id>/context/<key>" with both escaped. malloc'd. */
static char *key_path(const char *id, const char *key)
{
    char *esc = ch__client_escape(key);
    char *suffix = ch__xasprintf("/context/%s", esc);
    char *path = scope_path(id, suffix);

    free(esc);
    free(suffix);
    return path;
}

/* A value typed on the command line: JSON when it parses as JSON, else the text as a
 * string (`set ID note hello`). NULL when it is neither (not UTF-8). */
static json_t *loose_value(const char *text)
{
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);

    return v != NULL ? v : json_string(text);
}

/* The context of --context, or of the --set pairs with their values read by
 * loose_value(); NULL (after a usage error, *rc set) when both or, with required,
 * neither was given. *out is NULL when neither was given and it is not required. */
static int context_from_flags(const ch__args *a, bool required, json_t **out)
{
    const json_t *pairs = a->json[O_SET];
    const char *k;
    json_t *v, *ctx;

    *out = NULL;
    if (a->set[O_CONTEXT] && pairs != NULL)
        return ch__usage_error(a, "--context and --set exclude each other");
    if (a->set[O_CONTEXT]) {
        *out = json_incref(a->json[O_CONTEXT]);
        return CH__EXIT_OK;
    }
    if (pairs == NULL) {
        if (required)
            return ch__usage_error(a, "%s needs --context JSON or --set KEY=VALUE", a->verb->name);
        return CH__EXIT_OK;
    }
    ctx = ch__json_object();
    json_object_foreach((json_t *)pairs, k, v)
        ch__json_set(ctx, k, loose_value(json_string_value(v)));
    *out = ctx;
    return CH__EXIT_OK;
}

/* ---------------------------------------------------------------------------------
 * Human views
 * ------------------------------------------------------------------------------- */

/* Width of a context value cell (longer values end in "..."). */
#define VALUE_MAX 60
#define NAME_MAX_CHARS 24

/* ms as a short duration: "0.4s", "9.5s", "2s", "42s", "9m58s", "1h02m", "3d04h". */
static char *duration_text(int64_t ms)
{
    int64_t s;

    if (ms < 0)
        ms = 0;
    if (ms < 10000 && ms % 1000 != 0)
        return ch__xasprintf("%.1fs", (double)ms / 1000.0);
    s = ms / 1000;
    if (s < 60)
        return ch__xasprintf("%llds", (long long)s);
    if (s < 3600)
        return ch__xasprintf("%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
    if (s < 86400)
        return ch__xasprintf("%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
    return ch__xasprintf("%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

/* Milliseconds from now to the RFC 3339 time in member name of o (negative: past);
 * false when it is missing or unreadable. */
static bool ms_until(const json_t *o, const char *name, int64_t now, int64_t *out)
{
    const char *text = json_string_value(json_object_get(o, name));
    int64_t at;

    if (text == NULL || ch_time_parse(text, &at) != CH_OK)
        return false;
    *out = at - now;
    return true;
}

/* The EXPIRES IN cell: time left, or of the lock grace; "(auto)" with auto_extend. */
static char *expires_text(const json_t *scope, int64_t now)
{
    bool auto_extend = json_is_true(json_object_get(scope, "auto_extend"));
    int64_t left;
    char *d, *out;

    if (ms_until(scope, "grace_until", now, &left)) {
        d = duration_text(left);
        out = ch__xasprintf("grace %s", d);
    } else if (ms_until(scope, "expires_at", now, &left)) {
        d = duration_text(left);
        out = ch__xasprintf("%s%s", d, auto_extend ? " (auto)" : "");
    } else {
        return ch__xstrdup("-");
    }
    free(d);
    return out;
}

/* The IDLE cell: time since the last use, "of" the idle limit when there is one. */
static char *idle_text(const json_t *scope, int64_t now)
{
    double limit = json_number_value(json_object_get(scope, "idle_ttl"));
    int64_t since;
    char *d, *l, *out;

    if (!ms_until(scope, "last_used_at", now, &since))
        return ch__xstrdup("-");
    d = duration_text(-since);
    if (!(limit > 0))
        return d;
    l = duration_text((int64_t)llround(limit * 1000.0));
    out = ch__xasprintf("%s of %s", d, l);
    free(d);
    free(l);
    return out;
}

/* A scope as a one-row table, then its context as KEY VALUE rows. */
static void view_scope(const json_t *scope)
{
    static const char *const headers[] = {"ID", "AGENT", "FLOW", "EXPIRES IN", "IDLE", "LOCKED"};
    static const char *const ctx_headers[] = {"KEY", "VALUE"};
    const json_t *ctx = json_object_get(scope, "context");
    int64_t now = ch_now_ms();
    const char *k;
    json_t *v;
    ch__table t;
    char *row[6] = {
        ch__cell_text(json_object_get(scope, "id"), 0),
        ch__cell_text(json_object_get(scope, "agent_id"), NAME_MAX_CHARS),
        ch__cell_text(json_object_get(scope, "flow"), 0),
        expires_text(scope, now),
        idle_text(scope, now),
        ch__xstrdup(json_is_true(json_object_get(scope, "locked")) ? "yes" : "no"),
    };

    ch__table_init(&t, 6, headers);
    ch__table_add(&t, row);
    ch__table_print(&t, stdout, "");
    ch__table_free(&t);
    fputc('\n', stdout);
    if (json_object_size(ctx) == 0) {
        puts("no context");
        return;
    }
    ch__table_init(&t, 2, ctx_headers);
    json_object_foreach((json_t *)ctx, k, v)
    {
        char *pair[2] = {ch__clip_text(k, VALUE_MAX), ch__json_text(v, VALUE_MAX)};

        ch__table_add(&t, pair);
    }
    ch__table_print(&t, stdout, "");
    ch__table_free(&t);
}

/* {key, value} of GET, {key, value, expires_at} of PUT. */
static void view_key(const json_t *reply)
{
    char *key = ch__cell_text(json_object_get(reply, "key"), 0);
    char *value = ch__json_text(json_object_get(reply, "value"), 0);
    const json_t *at = json_object_get(reply, "expires_at");

    printf("key:        %s\nvalue:      %s\n", key, value);
    if (at != NULL) {
        char *text = ch__cell_text(at, 0);

        printf("expires_at: %s\n", text);
        free(text);
    }
    free(key);
    free(value);
}

/* An array of strings as "a, b" ("-" when empty). malloc'd. */
static char *names_text(const json_t *list)
{
    json_t *item;
    size_t i;
    char *out = NULL;

    json_array_foreach(list, i, item)
    {
        char *name = ch__cell_text(item, 0);
        char *next = ch__xasprintf("%s%s%s", out ? out : "", out ? ", " : "", name);

        free(name);
        free(out);
        out = next;
    }
    return out != NULL ? out : ch__xstrdup("-");
}

/* {id, session, transferred, purged, locked} */
static void view_completed(const json_t *reply)
{
    char *id = ch__cell_text(json_object_get(reply, "id"), 0);
    char *session = ch__cell_text(json_object_get(reply, "session"), 0);
    char *keys = names_text(json_object_get(reply, "transferred"));

    printf("id:          %s\nsession:     %s\ntransferred: %s\npurged:      %s\nlocked:      %s\n",
           id, session, keys, json_is_true(json_object_get(reply, "purged")) ? "yes" : "no",
           json_is_true(json_object_get(reply, "locked")) ? "yes" : "no");
    free(id);
    free(session);
    free(keys);
}

/* {id, purged: true} */
static void view_deleted(const json_t *reply)
{
    char *id = ch__cell_text(json_object_get(reply, "id"), 0);

    printf("purged %s\n", id);
    free(id);
}

/* {agent, purged: N} */
static void view_agent_purged(const json_t *reply)
{
    char *agent = ch__cell_text(json_object_get(reply, "agent"), 0);
    json_int_t n = json_integer_value(json_object_get(reply, "purged"));

    printf("purged %" JSON_INTEGER_FORMAT " scope%s of agent %s\n", n, n == 1 ? "" : "s", agent);
    free(agent);
}

/* ---------------------------------------------------------------------------------
 * Verbs
 * ------------------------------------------------------------------------------- */

static int verb_create(ch__args *a)
{
    json_t *body, *ctx = NULL, *reply = NULL;
    int rc;

    if (!a->set[O_AGENT])
        return ch__usage_error(a, "create needs --agent");
    rc = context_from_flags(a, false, &ctx);
    if (rc != CH__EXIT_OK)
        return rc;
    body = ch__json_object();
    ch__json_set(body, "agent", json_string(a->str[O_AGENT]));
    if (a->set[O_TTL])
        ch__json_set(body, "ttl", json_incref(a->json[O_TTL]));
    if (a->set[O_IDLE_TTL])
        ch__json_set(body, "idle_ttl", json_incref(a->json[O_IDLE_TTL]));
    if (a->set[O_FLOW])
        ch__json_set(body, "flow", json_string(a->str[O_FLOW]));
    if (a->set[O_AUTO_EXTEND])
        ch__json_set(body, "auto_extend", json_true());
    if (ctx != NULL)
        ch__json_set(body, "context", ctx);
    rc = ch__client_request("POST", "/v1/ephemeral", body, NULL, &reply);
    json_decref(body);
    return ch__emit(a, rc, reply, view_scope);
}

/* get ID: the scope; get ID KEY: one key of its context. */
static int verb_get(ch__args *a)
{
    char *path = a->npos == 2 ? key_path(a->pos[0], a->pos[1]) : scope_path(a->pos[0], "");
    json_t *reply = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    return ch__emit(a, rc, reply, a->npos == 2 ? view_key : view_scope);
}

static int verb_set(ch__args *a)
{
    json_t *value = loose_value(a->pos[2]), *body, *reply = NULL;
    char *path;
    int rc;

    if (value == NULL)
        return ch__usage_error(a, "VALUE is neither JSON nor UTF-8 text");
    body = ch__json_object();
    ch__json_set(body, "value", value);
    path = key_path(a->pos[0], a->pos[1]);
    rc = ch__client_request("PUT", path, body, NULL, &reply);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, view_key);
}

static int verb_merge(ch__args *a)
{
    json_t *ctx = NULL, *body, *reply = NULL;
    char *path;
    int rc = context_from_flags(a, true, &ctx);

    if (rc != CH__EXIT_OK)
        return rc;
    body = ch__json_object();
    ch__json_set(body, "context", ctx);
    path = scope_path(a->pos[0], "");
    rc = ch__client_request("PATCH", path, body, NULL, &reply);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, view_scope);
}

/* lock, unlock: POST .../<verb> with {}. */
static int verb_lock(ch__args *a)
{
    return ch__post_lifecycle(a, "/v1/ephemeral", NULL, view_scope);
}

/* extend (--ttl required), upgrade (--ttl optional): POST .../<verb> with {ttl?}. */
static int verb_ttl_action(ch__args *a)
{
    json_t *body, *reply = NULL;
    char *suffix, *path;
    int rc;

    if (strcmp(a->verb->name, "extend") == 0 && !a->set[O_TTL])
        return ch__usage_error(a, "extend needs --ttl");
    body = ch__json_object();
    if (a->set[O_TTL])
        ch__json_set(body, "ttl", json_incref(a->json[O_TTL]));
    suffix = ch__xasprintf("/%s", a->verb->name);
    path = scope_path(a->pos[0], suffix);
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(suffix);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, view_scope);
}

static int verb_complete(ch__args *a)
{
    json_t *body = ch__json_object(), *reply = NULL;
    char *path;
    int rc;

    if (a->set[O_SESSION])
        ch__json_set(body, "session", json_string(a->str[O_SESSION]));
    if (a->json[O_KEY] != NULL)
        ch__json_set(body, "keys", json_incref(a->json[O_KEY]));
    if (a->set[O_TRANSFER_SECRETS])
        ch__json_set(body, "transfer_secrets", json_true());
    path = scope_path(a->pos[0], "/complete");
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, view_completed);
}

static int verb_delete(ch__args *a)
{
    char *path = scope_path(a->pos[0], "");
    json_t *reply = NULL;
    int rc = ch__client_request("DELETE", path, NULL, NULL, &reply);

    free(path);
    return ch__emit(a, rc, reply, view_deleted);
}

static int verb_purge_agent(ch__args *a)
{
    char *path = ch__client_path("/v1/agents", a->pos[0], "/ephemeral");
    json_t *reply = NULL;
    int rc = ch__client_request("DELETE", path, NULL, NULL, &reply);

    free(path);
    return ch__emit(a, rc, reply, view_agent_purged);
}

/* ---------------------------------------------------------------------------------
 * `top`: the scope metrics of GET /metrics
 * ------------------------------------------------------------------------------- */

/* The server's histograms have 16 buckets; room for a future finer one. */
#define HIST_MAX 64
/* A metrics page beyond this is a broken server, not metrics. */
#define METRICS_MAX (64u << 20)
/* Width of the longest bar of the TTL histogram, in characters. */
#define BAR_MAX 40

static const char *const flow_names[] = {"command", "scoped", "secure"};
#define NFLOWS (sizeof flow_names / sizeof flow_names[0])
static const char *const reason_names[] = {"expired", "idle", "agent_exited", "purged", "error"};
#define NREASONS (sizeof reason_names / sizeof reason_names[0])

/* A Prometheus histogram: cumulative counts by upper bound, ascending. */
typedef struct hist {
    size_t n;
    double le[HIST_MAX]; /* INFINITY for +Inf */
    double cum[HIST_MAX];
    double sum, count;
} hist;

/* One reading of the scope metrics. */
typedef struct scope_metrics {
    bool seen; /* the page had charter_scopes: the server exports scope metrics */
    double live[NFLOWS];
    double locked, locked_ratio, bytes, timers;
    double evictions[NREASONS];
    double expiring, dropped;
    hist ttl, lateness;
} scope_metrics;

/* The value of label name in the label text of a sample ({a="x",b="y"} without the
 * braces) copied to out; false when it is not there. Label values are escaped as
 * Prometheus does it (\\, \", \n). */
static bool label_value(const char *labels, size_t len, const char *name, char *out,
                        size_t out_size)
{
    size_t nlen = strlen(name), i = 0, o = 0;

    while (i < len) {
        const char *key = labels + i;
        size_t klen = 0;
        bool match;

        while (i < len && labels[i] != '=') {
            i++;
            klen++;
        }
        if (i + 1 >= len || labels[i + 1] != '"')
            return false;
        i += 2;
        while (klen > 0 && (*key == ' ' || *key == ',')) {
            key++;
            klen--;
        }
        match = klen == nlen && strncmp(key, name, nlen) == 0;
        o = 0;
        while (i < len && labels[i] != '"') {
            char c = labels[i++];

            if (c == '\\' && i < len) {
                c = labels[i++];
                if (c == 'n')
                    c = '\n';
            }
            if (match && o + 1 < out_size)
                out[o++] = c;
        }
        if (match) {
            out[o] = '\0';
            return true;
        }
        i++; /* the closing quote */
    }
    return false;
}

/* The index of name in names, or -1. */
static int name_index(const char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(names[i], name) == 0)
            return (int)i;
    }
    return -1;
}

/* Adds one bucket, keeping the bounds ascending (the page lists them so already). */
static void hist_add(hist *h, const char *le, double v)
{
    double bound;
    size_t i;

    if (h->n == HIST_MAX)
        return;
    if (strcmp(le, "+Inf") == 0)
        bound = INFINITY;
    else if (!ch__parse_real(le, &bound))
        return;
    for (i = h->n; i > 0 && h->le[i - 1] > bound; i--) {
        h->le[i] = h->le[i - 1];
        h->cum[i] = h->cum[i - 1];
    }
    h->le[i] = bound;
    h->cum[i] = v;
    h->n++;
}

/* Fills one histogram from a sample of the series base ("<base>_bucket" etc.).
 * Returns true when the sample belonged to it. */
static bool hist_sample(hist *h, const char *base, const char *name, const char *labels,
                        size_t llen, double v)
{
    size_t blen = strlen(base);
    char le[64];

    if (strncmp(name, base, blen) != 0)
        return false;
    name += blen;
    if (strcmp(name, "_bucket") == 0) {
        if (label_value(labels, llen, "le", le, sizeof le))
            hist_add(h, le, v);
    } else if (strcmp(name, "_sum") == 0) {
        h->sum = v;
    } else if (strcmp(name, "_count") == 0) {
        h->count = v;
    } else {
        return false;
    }
    return true;
}

/* The '}' that closes the labels starting at p (a '}' inside a quoted value does
 * not), or NULL before end. */
static const char *labels_end(const char *p, const char *end)
{
    bool quoted = false;

    for (; p < end; p++) {
        if (quoted && *p == '\\' && p + 1 < end)
            p++;
        else if (*p == '"')
            quoted = !quoted;
        else if (!quoted && *p == '}')
            return p;
    }
    return NULL;
}

/* Reads the scope series out of a Prometheus text page; everything else is skipped. */
static void parse_metrics(const char *text, scope_metrics *m)
{
    const char *line = text;

    memset(m, 0, sizeof *m);
    while (*line != '\0') {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        size_t nlen = strcspn(line, "{ \t\n");
        const char *labels = "", *rest;
        size_t llen = 0;
        char name[128], value[64], want[64];
        char *vend;
        double v;
        int i;

        if (len == 0 || line[0] == '#' || nlen >= sizeof name || nlen > len)
            goto next;
        memcpy(name, line, nlen);
        name[nlen] = '\0';
        rest = line + nlen;
        if (*rest == '{') {
            const char *close = labels_end(rest + 1, line + len);

            if (close == NULL)
                goto next;
            labels = rest + 1;
            llen = (size_t)(close - labels);
            rest = close + 1;
        }
        while (rest < line + len && (*rest == ' ' || *rest == '\t'))
            rest++;
        /* The value, up to an optional timestamp. */
        snprintf(value, sizeof value, "%.*s", (int)strcspn(rest, " \t\n"), rest);
        v = strtod(value, &vend);
        if (vend == value || *vend != '\0')
            goto next;

        if (strcmp(name, "charter_scopes") == 0) {
            m->seen = true;
            if (label_value(labels, llen, "flow", want, sizeof want) &&
                (i = name_index(flow_names, NFLOWS, want)) >= 0)
                m->live[i] = v;
        } else if (strcmp(name, "charter_scopes_locked") == 0) {
            m->locked = v;
        } else if (strcmp(name, "charter_scopes_locked_ratio") == 0) {
            m->locked_ratio = v;
        } else if (strcmp(name, "charter_scope_bytes") == 0) {
            m->bytes = v;
        } else if (strcmp(name, "charter_scope_timers") == 0) {
            m->timers = v;
        } else if (strcmp(name, "charter_scope_evictions_total") == 0) {
            if (label_value(labels, llen, "reason", want, sizeof want) &&
                (i = name_index(reason_names, NREASONS, want)) >= 0)
                m->evictions[i] = v;
        } else if (strcmp(name, "charter_scope_expiring_total") == 0) {
            m->expiring = v;
        } else if (strcmp(name, "charter_scope_events_dropped_total") == 0) {
            m->dropped = v;
        } else if (!hist_sample(&m->ttl, "charter_scope_ttl_remaining_seconds", name, labels, llen,
                                v)) {
            hist_sample(&m->lateness, "charter_scope_expiry_lateness_seconds", name, labels, llen,
                        v);
        }
    next:
        line += len;
        if (*line == '\n')
            line++;
    }
}

/* The observations in bucket i alone (the page's counts are cumulative). */
static double bucket_count(const hist *h, size_t i)
{
    double c = h->cum[i] - (i > 0 ? h->cum[i - 1] : 0);

    return c > 0 ? c : 0;
}

/* The q-quantile estimated as Prometheus' histogram_quantile() does: linear inside the
 * bucket that holds the rank; in the +Inf bucket, the largest finite bound. NAN when
 * there are no observations. */
static double hist_quantile(const hist *h, double q)
{
    double total, rank, lower, prev, in_bucket;
    size_t i;

    if (h->n == 0 || !(h->cum[h->n - 1] > 0))
        return NAN;
    total = h->cum[h->n - 1];
    rank = q * total;
    for (i = 0; i + 1 < h->n && h->cum[i] < rank; i++) {
    }
    if (isinf(h->le[i]))
        return i > 0 ? h->le[i - 1] : NAN;
    lower = i > 0 ? h->le[i - 1] : 0;
    prev = i > 0 ? h->cum[i - 1] : 0;
    in_bucket = h->cum[i] - prev;
    if (!(in_bucket > 0) || h->le[i] <= 0)
        return h->le[i];
    return lower + (h->le[i] - lower) * (rank - prev) / in_bucket;
}

static double live_total(const scope_metrics *m)
{
    double n = 0;

    for (size_t f = 0; f < NFLOWS; f++)
        n += m->live[f];
    return n;
}

static double evictions_total(const scope_metrics *m)
{
    double n = 0;

    for (size_t r = 0; r < NREASONS; r++)
        n += m->evictions[r];
    return n;
}

/* Per second between two readings of a counter; a counter that went down was reset
 * (a restarted server) and counts from 0. */
static double rate(double cur, double prev, double secs)
{
    return (cur >= prev ? cur - prev : cur) / secs;
}

/* A count as JSON: an integer when it is one. */
static json_t *count_json(double v)
{
    if (v == floor(v) && fabs(v) < 9e15)
        return json_integer((json_int_t)v);
    return json_real(v);
}

/* A computed real with the noise of its arithmetic rounded off (9 significant
 * digits), so that 0.000025 prints as 2.5e-05 and not as 2.5000000000000001e-05. */
static double tidy(double v)
{
    char text[32];

    if (!isfinite(v))
        return v;
    snprintf(text, sizeof text, "%.9g", v);
    return strtod(text, NULL);
}

/* A real as JSON; null for NAN (no data) and the infinities. */
static json_t *real_json(double v)
{
    if (isnan(v) || isinf(v))
        return json_null();
    return json_real(tidy(v));
}

/* The bucket bound in seconds as a short duration label: 1s, 30s, 2m, 4h, 1d; "+Inf"
 * when infinite. */
static char *bound_text(double le)
{
    if (isinf(le))
        return ch__xstrdup("+Inf");
    if (le >= 86400 && fmod(le, 86400) == 0)
        return ch__xasprintf("%gd", le / 86400);
    if (le >= 3600 && fmod(le, 3600) == 0)
        return ch__xasprintf("%gh", le / 3600);
    if (le >= 60 && fmod(le, 60) == 0)
        return ch__xasprintf("%gm", le / 60);
    if (le < 1)
        return ch__xasprintf("%gms", le * 1000);
    return ch__xasprintf("%gs", le);
}

/* A short time in seconds: "40µs", "1.3ms", "2.50s"; "-" for NAN. */
static char *seconds_text(double s)
{
    if (isnan(s))
        return ch__xstrdup("-");
    if (s < 1e-3)
        return ch__xasprintf("%.0fµs", s * 1e6);
    if (s < 1)
        return ch__xasprintf("%.1fms", s * 1e3);
    return ch__xasprintf("%.2fs", s);
}

static char *bytes_text(double b)
{
    if (b < 1024)
        return ch__xasprintf("%.0f B", b);
    if (b < 1024.0 * 1024)
        return ch__xasprintf("%.1f KiB", b / 1024);
    if (b < 1024.0 * 1024 * 1024)
        return ch__xasprintf("%.1f MiB", b / (1024.0 * 1024));
    return ch__xasprintf("%.1f GiB", b / (1024.0 * 1024 * 1024));
}

/* What one frame shows: this reading, and the previous one for rates (prev NULL on
 * the first frame). */
typedef struct frame {
    const scope_metrics *m, *prev;
    double secs; /* since the previous reading */
    int64_t at;  /* wall clock of this reading, ms */
} frame;

static json_t *frame_json(const frame *fr)
{
    const scope_metrics *m = fr->m;
    json_t *out = ch__json_object(), *o, *buckets;
    char at[32];

    ch_time_format(fr->at, at);
    ch__json_set(out, "at", json_string(at));

    o = ch__json_object();
    for (size_t f = 0; f < NFLOWS; f++)
        ch__json_set(o, flow_names[f], count_json(m->live[f]));
    ch__json_set(o, "total", count_json(live_total(m)));
    ch__json_set(out, "scopes", o);
    ch__json_set(out, "locked", count_json(m->locked));
    ch__json_set(out, "locked_ratio", real_json(m->locked_ratio));
    ch__json_set(out, "bytes", count_json(m->bytes));
    ch__json_set(out, "timers", count_json(m->timers));
    ch__json_set(out, "expiring", count_json(m->expiring));
    ch__json_set(out, "events_dropped", count_json(m->dropped));

    o = ch__json_object();
    for (size_t r = 0; r < NREASONS; r++)
        ch__json_set(o, reason_names[r], count_json(m->evictions[r]));
    ch__json_set(o, "total", count_json(evictions_total(m)));
    ch__json_set(out, "evictions", o);
    if (fr->prev != NULL) {
        o = ch__json_object();
        for (size_t r = 0; r < NREASONS; r++)
            ch__json_set(o, reason_names[r],
                         real_json(rate(m->evictions[r], fr->prev->evictions[r], fr->secs)));
        ch__json_set(o, "total",
                     real_json(rate(evictions_total(m), evictions_total(fr->prev), fr->secs)));
        ch__json_set(out, "eviction_rate", o);
        ch__json_set(out, "elapsed", real_json(fr->secs));
    } else {
        ch__json_set(out, "eviction_rate", json_null());
        ch__json_set(out, "elapsed", json_null());
    }

    o = ch__json_object();
    buckets = json_array();
    if (buckets == NULL)
        ch__oom();
    for (size_t i = 0; i < m->ttl.n; i++) {
        json_t *b = ch__json_object();

        ch__json_set(b, "le",
                     isinf(m->ttl.le[i]) ? json_string("+Inf") : count_json(tidy(m->ttl.le[i])));
        ch__json_set(b, "count", count_json(bucket_count(&m->ttl, i)));
        if (json_array_append_new(buckets, b) != 0)
            ch__oom();
    }
    ch__json_set(o, "buckets", buckets);
    ch__json_set(o, "count", count_json(m->ttl.count));
    ch__json_set(o, "sum", real_json(m->ttl.sum));
    ch__json_set(out, "ttl_remaining", o);

    o = ch__json_object();
    ch__json_set(o, "count", count_json(m->lateness.count));
    ch__json_set(o, "sum", real_json(m->lateness.sum));
    ch__json_set(o, "p50", real_json(hist_quantile(&m->lateness, 0.50)));
    ch__json_set(o, "p99", real_json(hist_quantile(&m->lateness, 0.99)));
    ch__json_set(out, "expiry_lateness", o);
    return out;
}

/* "N" of a count, for a table cell. malloc'd. */
static char *count_text(double v)
{
    return v == floor(v) ? ch__xasprintf("%.0f", v) : ch__xasprintf("%g", v);
}

/* n copies of the UTF-8 block character. malloc'd. */
static char *bar_text(size_t n)
{
    static const char block[] = "\xe2\x96\x88"; /* U+2588 FULL BLOCK */
    char *bar = ch__xrealloc(NULL, n * (sizeof block - 1) + 1);

    for (size_t i = 0; i < n; i++)
        memcpy(bar + i * (sizeof block - 1), block, sizeof block - 1);
    bar[n * (sizeof block - 1)] = '\0';
    return bar;
}

/* The TTL-remaining histogram as one row per bucket: "≤30s  2  ████", the bars
 * proportional to the fullest bucket. */
static void ttl_print(FILE *f, const hist *h)
{
    char *label[HIST_MAX], *count[HIST_MAX], *text;
    size_t lw = strlen("TTL LEFT"), cw = strlen("SCOPES");
    double max = 0;

    for (size_t i = 0; i < h->n; i++) {
        if (isinf(h->le[i])) {
            text = i > 0 ? bound_text(h->le[i - 1]) : ch__xstrdup("0s");
            label[i] = ch__xasprintf(">%s", text);
        } else {
            text = bound_text(h->le[i]);
            label[i] = ch__xasprintf("\xe2\x89\xa4%s", text); /* U+2264 LESS-THAN OR EQUAL TO */
        }
        free(text);
        count[i] = count_text(bucket_count(h, i));
        if (ch__text_width(label[i]) > lw)
            lw = ch__text_width(label[i]);
        if (strlen(count[i]) > cw)
            cw = strlen(count[i]);
        if (bucket_count(h, i) > max)
            max = bucket_count(h, i);
    }
    fprintf(f, "%-*s  %*s\n", (int)lw, "TTL LEFT", (int)cw, "SCOPES");
    for (size_t i = 0; i < h->n; i++) {
        double c = bucket_count(h, i);
        size_t width = max > 0 ? (size_t)llround(c / max * BAR_MAX) : 0;

        if (c > 0 && width == 0)
            width = 1;
        fprintf(f, "%s%*s  %*s", label[i], (int)(lw - ch__text_width(label[i])), "", (int)cw,
                count[i]);
        if (width > 0) {
            text = bar_text(width);
            fprintf(f, "  %s", text);
            free(text);
        }
        fputc('\n', f);
        free(label[i]);
        free(count[i]);
    }
}

/* The frame as text, to f. */
static void frame_print(FILE *f, const frame *fr, const char *url, int64_t interval_ms, bool once)
{
    static const char *const ev_headers[] = {"EVICTIONS", "TOTAL", "PER SECOND"};
    const scope_metrics *m = fr->m;
    double evict_all = evictions_total(m), live = live_total(m);
    char at[32], *text, *text2, *clipped = ch__clip_text(url, 0);
    ch__table t;

    ch_time_format(fr->at, at);
    fprintf(f, "charter scope top  %s  %s", clipped, at);
    free(clipped);
    if (!once) {
        text = duration_text(interval_ms);
        fprintf(f, "  every %s, Ctrl-C quits", text);
        free(text);
    }
    fputs("\n\n", f);

    text = count_text(live);
    fprintf(f, "live scopes     %-8s ", text);
    free(text);
    for (size_t i = 0; i < NFLOWS; i++) {
        text = count_text(m->live[i]);
        fprintf(f, "%s%s %s", i > 0 ? ", " : "", flow_names[i], text);
        free(text);
    }
    text = count_text(m->locked);
    fprintf(f, "\nlocked          %-8s %.1f%% of live\n", text, m->locked_ratio * 100);
    free(text);
    text = bytes_text(m->bytes);
    text2 = count_text(m->bytes);
    fprintf(f, "bytes held      %-8s (%s bytes of context)\n", text, text2);
    free(text);
    free(text2);
    text = count_text(m->timers);
    fprintf(f, "timers armed    %s\n", text);
    free(text);
    text = count_text(m->expiring);
    fprintf(f, "expiring        %-8s locked scopes given lock grace, in all\n", text);
    free(text);
    text = count_text(m->dropped);
    fprintf(f, "events dropped  %s\n\n", text);
    free(text);

    ch__table_init(&t, 3, ev_headers);
    for (size_t r = 0; r <= NREASONS; r++) {
        double cur = r < NREASONS ? m->evictions[r] : evict_all;
        char *row[3];

        row[0] = ch__xstrdup(r < NREASONS ? reason_names[r] : "all");
        row[1] = count_text(cur);
        if (fr->prev != NULL) {
            double before = r < NREASONS ? fr->prev->evictions[r] : evictions_total(fr->prev);

            row[2] = ch__xasprintf("%.2f", rate(cur, before, fr->secs));
        } else {
            row[2] = ch__xstrdup("-");
        }
        ch__table_add(&t, row);
    }
    ch__table_print(&t, f, "");
    ch__table_free(&t);
    fputc('\n', f);

    ttl_print(f, &m->ttl);
    text = seconds_text(hist_quantile(&m->lateness, 0.50));
    text2 = seconds_text(hist_quantile(&m->lateness, 0.99));
    fprintf(f, "\nexpiry lateness p50 %s, p99 %s", text, text2);
    free(text);
    free(text2);
    text = count_text(m->lateness.count);
    fprintf(f, " (%s deadline ends)\n", text);
    free(text);
}

/* The body of GET /metrics as it arrives. */
typedef struct page {
    ch_buf body;
    bool oversized;
} page;

static size_t on_page(const char *p, size_t n, void *udata)
{
    page *pg = udata;

    if (pg->body.len + n + 1 > METRICS_MAX) {
        pg->oversized = true;
        return 0;
    }
    ch_buf_append(&pg->body, p, n);
    return n;
}

/* GETs /metrics into m. Returns an exit code; every failure has been reported, an
 * unreachable server into why (the caller decides whether to say it and retry). */
static int fetch_metrics(scope_metrics *m, char *why, size_t why_size)
{
    page pg = {0};
    int rc;

    /* /metrics is text, not JSON: the streaming GET hands the body over as it comes,
     * which is all a plain-text reply needs. */
    rc = ch__client_stream("/metrics", NULL, on_page, &pg, NULL, why, why_size);
    if (rc == CH__EXIT_OK && pg.oversized) {
        fprintf(stderr, "charter: unexpected reply from %s: a metrics page over %u bytes\n",
                ch__client_base_url(), METRICS_MAX);
        rc = CH__EXIT_FAIL;
    } else if (rc == CH__EXIT_OK && why[0] != '\0') {
        rc = CH__EXIT_UNREACHABLE; /* the reply broke off */
    } else if (rc == CH__EXIT_OK) {
        parse_metrics(pg.body.data != NULL ? pg.body.data : "", m);
        if (!m->seen) {
            fprintf(stderr, "charter: %s/metrics has no scope metrics (charter_scopes)\n",
                    ch__client_base_url());
            rc = CH__EXIT_FAIL;
        }
    }
    ch_buf_free(&pg.body);
    return rc;
}

static volatile sig_atomic_t top_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    top_stop = 1;
}

/* Sleeps ms, or less when a stop signal arrives. */
static void nap_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (!top_stop && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Writes one frame: JSON, or text (after clearing the terminal when live on one). */
static int frame_emit(const ch__args *a, const frame *fr, int64_t interval_ms, bool clear)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    if (a->set[CH__O_JSON]) {
        json_t *doc = frame_json(fr);

        ch__print_json(doc, CH__OUT_COMPACT);
        json_decref(doc);
        return ch__flush_stdout();
    }
    /* The frame is built first and written at once, so a redraw does not flicker. */
    f = open_memstream(&buf, &len);
    if (f == NULL)
        ch__oom();
    if (clear)
        fputs("\033[H\033[2J", f);
    frame_print(f, fr, ch__client_base_url(), interval_ms, a->set[O_ONCE]);
    if (fclose(f) != 0)
        ch__oom();
    fwrite(buf, 1, len, stdout);
    free(buf);
    return ch__flush_stdout();
}

static int verb_top(ch__args *a)
{
    int64_t interval_ms = a->set[O_INTERVAL] ? a->num[O_INTERVAL] : 1000;
    bool live = !a->set[O_ONCE];
    bool tty = live && !a->set[CH__O_JSON] && isatty(STDOUT_FILENO);
    scope_metrics cur, prev;
    frame fr;
    bool have_prev = false, have_any = false;
    uint64_t prev_ns = 0, t0;
    struct sigaction sa, old_int, old_term;
    char why[CURL_ERROR_SIZE + 64];
    int rc = CH__EXIT_OK;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    top_stop = 0;
    if (live) {
        /* No SA_RESTART: Ctrl-C cuts the nap short. */
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
    }
    while (!top_stop) {
        t0 = ch_mono_ns();
        rc = fetch_metrics(&cur, why, sizeof why);
        if (rc == CH__EXIT_UNREACHABLE && live && have_any && !top_stop) {
            /* A restarting server: say so (on the screen in place of the frame, else
             * on stderr, out of the way of the frames) and keep trying until Ctrl-C. */
            if (tty) {
                printf("\033[H\033[2Jcharter scope top  %s\n\ncannot reach the server: %s "
                       "(retrying)\n",
                       ch__client_base_url(), why);
                rc = ch__flush_stdout();
                if (rc != CH__EXIT_OK)
                    break;
            } else {
                fprintf(stderr, "charter: cannot reach %s: %s (retrying)\n", ch__client_base_url(),
                        why);
            }
            have_prev = false; /* rates restart after the gap */
            nap_ms(interval_ms);
            continue;
        }
        if (rc == CH__EXIT_UNREACHABLE && !top_stop)
            fprintf(stderr, "charter: cannot reach %s: %s\n", ch__client_base_url(), why);
        if (rc != CH__EXIT_OK)
            break;
        fr.m = &cur;
        fr.at = ch_now_ms();
        fr.secs = have_prev ? (double)(t0 - prev_ns) / 1e9 : 0;
        fr.prev = have_prev && fr.secs > 0 ? &prev : NULL;
        rc = frame_emit(a, &fr, interval_ms, tty);
        if (rc != CH__EXIT_OK || !live)
            break;
        prev = cur;
        prev_ns = t0;
        have_prev = have_any = true;
        nap_ms(interval_ms);
    }
    if (live) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    /* Ctrl-C is how a live view ends: not a failure. */
    if (top_stop && rc != CH__EXIT_FAIL)
        rc = CH__EXIT_OK;
    return rc;
}

int ch__scope_main(int argc, char **argv)
{
    return ch__cmd_main(&scope_cmd, argc, argv);
}
