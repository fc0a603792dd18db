/*
 * session.c — `charter session <verb>`: the sessions API from the command line.
 *
 * Every verb is one row of the verbs table: the options it takes (a bit mask over
 * the command's option table, so that an option means the same thing in every verb),
 * how many positional arguments it needs, and the function that builds the request
 * and picks the view of the reply. Parsing, usage and dispatch are opts.c's.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

enum opt {
    O_USER = CH__O_OWN,
    O_AGENT,
    O_MANDATE,
    O_LABEL,
    O_BUDGET_TOKENS,
    O_BUDGET_COST,
    O_BUDGET_TOOL_CALLS,
    O_STATE,
    O_LIMIT,
    O_CURSOR,
    O_ALL,
    O_KIND,
    O_ROLE,
    O_CONTENT,
    O_CONTENT_JSON,
    O_META_JSON,
    O_TOKENS,
    O_COST,
    O_TOOL_CALLS,
    O_EXPECT_SEQ,
    O_FILE,
    O_AFTER,
    O_ARCHIVED,
    O_REASON,
    O_THROUGH,
    O_SUMMARY,
    O_SUMMARY_JSON,
    O__COUNT
};

static const ch__opt_spec opts[O__COUNT] = {
    [CH__O_JSON] = {"json", CH__OPT_FLAG},
    [CH__O_URL] = {"url", CH__OPT_STR},
    [CH__O_KEY_FILE] = {"key-file", CH__OPT_STR},
    [CH__O_HELP] = {"help", CH__OPT_FLAG},
    [O_USER] = {"user", CH__OPT_STR},
    [O_AGENT] = {"agent", CH__OPT_STR},
    [O_MANDATE] = {"mandate", CH__OPT_STR},
    [O_LABEL] = {"label", CH__OPT_LABEL},
    [O_BUDGET_TOKENS] = {"budget-tokens", CH__OPT_INT},
    [O_BUDGET_COST] = {"budget-cost", CH__OPT_REAL},
    [O_BUDGET_TOOL_CALLS] = {"budget-tool-calls", CH__OPT_INT},
    [O_STATE] = {"state", CH__OPT_STR},
    [O_LIMIT] = {"limit", CH__OPT_INT},
    [O_CURSOR] = {"cursor", CH__OPT_STR},
    [O_ALL] = {"all", CH__OPT_FLAG},
    [O_KIND] = {"kind", CH__OPT_STR},
    [O_ROLE] = {"role", CH__OPT_STR},
    [O_CONTENT] = {"content", CH__OPT_STR},
    [O_CONTENT_JSON] = {"content-json", CH__OPT_JSON},
    [O_META_JSON] = {"meta-json", CH__OPT_JSON},
    [O_TOKENS] = {"tokens", CH__OPT_INT},
    [O_COST] = {"cost", CH__OPT_REAL},
    [O_TOOL_CALLS] = {"tool-calls", CH__OPT_INT},
    [O_EXPECT_SEQ] = {"expect-seq", CH__OPT_INT},
    [O_FILE] = {"file", CH__OPT_STR},
    [O_AFTER] = {"after", CH__OPT_INT},
    [O_ARCHIVED] = {"archived", CH__OPT_FLAG},
    [O_REASON] = {"reason", CH__OPT_STR},
    [O_THROUGH] = {"through", CH__OPT_INT},
    [O_SUMMARY] = {"summary", CH__OPT_STR},
    [O_SUMMARY_JSON] = {"summary-json", CH__OPT_JSON},
};

_Static_assert(O__COUNT <= CH__OPTS_MAX, "option sets are 64-bit masks");

static int verb_open(ch__args *a);
static int verb_show(ch__args *a);
static int verb_list(ch__args *a);
static int verb_append(ch__args *a);
static int verb_events(ch__args *a);
static int verb_facts(ch__args *a);
static int verb_lifecycle(ch__args *a);
static int verb_compact(ch__args *a);
static int verb_bundle(ch__args *a);

static const ch__verb verbs[] = {
    {"open", verb_open,
     CH__BIT(O_USER) | CH__BIT(O_AGENT) | CH__BIT(O_MANDATE) | CH__BIT(O_LABEL) |
         CH__BIT(O_BUDGET_TOKENS) | CH__BIT(O_BUDGET_COST) | CH__BIT(O_BUDGET_TOOL_CALLS),
     0, 0, false,
     "open --user U --agent A [--mandate M] [--label K=V]... [--budget-tokens N]\n"
     "       [--budget-cost X] [--budget-tool-calls N]"},
    {"show", verb_show, 0, 1, 1, false, "show ID"},
    {"list", verb_list,
     CH__BIT(O_USER) | CH__BIT(O_STATE) | CH__BIT(O_MANDATE) | CH__BIT(O_LIMIT) |
         CH__BIT(O_CURSOR) | CH__BIT(O_ALL),
     0, 0, false, "list [--user U] [--state S] [--mandate M] [--limit N] [--cursor C] [--all]"},
    {"append", verb_append,
     CH__BIT(O_KIND) | CH__BIT(O_ROLE) | CH__BIT(O_CONTENT) | CH__BIT(O_CONTENT_JSON) |
         CH__BIT(O_META_JSON) | CH__BIT(O_TOKENS) | CH__BIT(O_COST) | CH__BIT(O_TOOL_CALLS) |
         CH__BIT(O_EXPECT_SEQ) | CH__BIT(O_FILE),
     1, 1, false,
     "append ID --kind K [--role R] [--content TEXT | --content-json JSON]\n"
     "       [--meta-json JSON] [--tokens N] [--cost X] [--tool-calls N] [--expect-seq N]\n"
     "  append ID --file FILE            (FILE holds the JSON body; - = stdin)"},
    {"events", verb_events,
     CH__BIT(O_AFTER) | CH__BIT(O_LIMIT) | CH__BIT(O_ARCHIVED) | CH__BIT(O_ALL), 1, 1, false,
     "events ID [--after N] [--limit N] [--archived] [--all]"},
    {"facts", verb_facts, 0, 1, 4, false,
     "facts ID | facts ID get KEY | facts ID set KEY VALUE | facts ID delete KEY"},
    {"pause", verb_lifecycle, CH__BIT(O_REASON), 1, 1, false, "pause ID [--reason TEXT]"},
    {"resume", verb_lifecycle, 0, 1, 1, false, "resume ID"},
    {"close", verb_lifecycle, CH__BIT(O_REASON), 1, 1, false, "close ID [--reason TEXT]"},
    {"archive", verb_lifecycle, CH__BIT(O_REASON), 1, 1, false, "archive ID [--reason TEXT]"},
    {"compact", verb_compact, CH__BIT(O_THROUGH) | CH__BIT(O_SUMMARY) | CH__BIT(O_SUMMARY_JSON), 1,
     1, false, "compact ID --through N (--summary TEXT | --summary-json JSON)"},
    {"bundle", verb_bundle, CH__BIT(O_LIMIT), 1, 1, false, "bundle ID [--limit N]"},
};

static const ch__cmd session_cmd = {
    .name = "session",
    .opts = opts,
    .nopts = O__COUNT,
    .verbs = verbs,
    .nverbs = sizeof verbs / sizeof verbs[0],
    .help = "\nWithout --json a terminal gets tables; a pipe gets the reply as one line of JSON.\n"
            "Exit codes: 0 ok, 1 refused by the server or local error, 2 server unreachable,\n"
            "64 usage error.\n",
};

/* ---------------------------------------------------------------------------------
 * Request helpers
 * ------------------------------------------------------------------------------- */

/* "/v1/sessions/<id><suffix>" with id escaped. malloc'd. */
static char *session_path(const char *id, const char *suffix)
{
    return ch__client_path("/v1/sessions", id, suffix);
}

/* Appends name=value (escaped) to the query of *url; a NULL value adds nothing. */
static void query_add(char **url, const char *name, const char *value)
{
    char *esc, *next;

    if (value == NULL)
        return;
    esc = ch__client_escape(value);
    next = ch__xasprintf("%s%c%s=%s", *url, strchr(*url, '?') != NULL ? '&' : '?', name, esc);
    free(esc);
    free(*url);
    *url = next;
}

static void query_add_int(char **url, const char *name, long long value)
{
    char text[32];

    snprintf(text, sizeof text, "%lld", value);
    query_add(url, name, text);
}

/* Builds the path of one page; next is the previous page's next_* value (NULL for the
 * first page). */
typedef char *(*page_path_fn)(const ch__args *a, const json_t *next);

/* GETs one page, or with --all every page, following next_field until it is null,
 * and returns them as one reply: the items arrays concatenated, next_field null. */
static int fetch_pages(const ch__args *a, page_path_fn page_path, const char *items,
                       const char *next_field, json_t **out)
{
    json_t *acc = NULL, *page = NULL, *prev = NULL;
    const json_t *next = NULL;
    char *path;
    int rc;

    *out = NULL;
    for (;;) {
        path = page_path(a, next);
        rc = ch__client_request("GET", path, NULL, NULL, &page);
        free(path);
        if (rc != CH__EXIT_OK)
            goto fail;
        if (acc == NULL) {
            acc = page;
        } else {
            if (json_array_extend(json_object_get(acc, items), json_object_get(page, items)) != 0)
                goto bad_reply;
            ch__json_set(acc, next_field, json_incref(json_object_get(page, next_field)));
            json_decref(page);
        }
        page = NULL;
        next = json_object_get(acc, next_field);
        if (!a->set[O_ALL] || next == NULL || json_is_null(next))
            break;
        /* A server that hands back the cursor it was given would loop us forever. */
        if (prev != NULL && json_equal(prev, next))
            goto bad_reply;
        json_decref(prev);
        prev = json_deep_copy(next);
    }
    json_decref(prev);
    *out = acc;
    return CH__EXIT_OK;

bad_reply:
    fprintf(stderr, "charter: unexpected reply from %s while paging through %s\n",
            ch__client_base_url(), items);
    rc = CH__EXIT_FAIL;
fail:
    json_decref(prev);
    json_decref(page);
    json_decref(acc);
    return rc;
}

/* ---------------------------------------------------------------------------------
 * Verbs
 * ------------------------------------------------------------------------------- */

static int verb_open(ch__args *a)
{
    json_t *body, *reply = NULL;
    int rc;

    if (!a->set[O_USER] || !a->set[O_AGENT])
        return ch__usage_error(a, "open needs --user and --agent");
    body = ch__json_object();
    ch__json_set(body, "user", json_string(a->str[O_USER]));
    ch__json_set(body, "agent", json_string(a->str[O_AGENT]));
    if (a->set[O_MANDATE])
        ch__json_set(body, "mandate", json_string(a->str[O_MANDATE]));
    if (a->json[O_LABEL] != NULL)
        ch__json_set(body, "labels", json_incref(a->json[O_LABEL]));
    ch__set_amounts(a, body, "budget", O_BUDGET_TOKENS, O_BUDGET_COST, O_BUDGET_TOOL_CALLS);
    rc = ch__client_request("POST", "/v1/sessions", body, NULL, &reply);
    json_decref(body);
    return ch__emit(a, rc, reply, ch__view_session);
}

static int verb_show(ch__args *a)
{
    char *path = session_path(a->pos[0], "");
    json_t *reply = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    return ch__emit(a, rc, reply, ch__view_session);
}

static char *list_page_path(const ch__args *a, const json_t *next)
{
    char *path = ch__xstrdup("/v1/sessions");

    query_add(&path, "user", a->str[O_USER]);
    query_add(&path, "state", a->str[O_STATE]);
    query_add(&path, "mandate", a->str[O_MANDATE]);
    if (a->set[O_LIMIT])
        query_add_int(&path, "limit", a->num[O_LIMIT]);
    query_add(&path, "cursor", next != NULL ? json_string_value(next) : a->str[O_CURSOR]);
    return path;
}

static int verb_list(ch__args *a)
{
    json_t *reply = NULL;
    int rc = fetch_pages(a, list_page_path, "sessions", "next_cursor", &reply);

    return ch__emit(a, rc, reply, ch__view_sessions);
}

/* The body of `append` built from its flags. */
static json_t *event_from_flags(const ch__args *a)
{
    json_t *ev = ch__json_object();

    ch__json_set(ev, "kind", json_string(a->str[O_KIND]));
    if (a->set[O_ROLE])
        ch__json_set(ev, "role", json_string(a->str[O_ROLE]));
    if (a->set[O_CONTENT])
        ch__json_set(ev, "content", json_string(a->str[O_CONTENT]));
    if (a->set[O_CONTENT_JSON])
        ch__json_set(ev, "content", json_incref(a->json[O_CONTENT_JSON]));
    if (a->set[O_META_JSON])
        ch__json_set(ev, "meta", json_incref(a->json[O_META_JSON]));
    ch__set_amounts(a, ev, "usage", O_TOKENS, O_COST, O_TOOL_CALLS);
    if (a->set[O_EXPECT_SEQ])
        ch__json_set(ev, "expect_seq", json_integer(a->num[O_EXPECT_SEQ]));
    return ev;
}

static int verb_append(ch__args *a)
{
    static const enum opt event_opts[] = {O_KIND,         O_ROLE,       O_CONTENT,
                                          O_CONTENT_JSON, O_META_JSON,  O_TOKENS,
                                          O_COST,         O_TOOL_CALLS, O_EXPECT_SEQ};
    char *path, *text = NULL;
    json_t *body = NULL, *reply = NULL;
    size_t len = 0;
    int rc;

    if (a->set[O_FILE]) {
        for (size_t i = 0; i < sizeof event_opts / sizeof event_opts[0]; i++) {
            if (a->set[event_opts[i]])
                return ch__usage_error(a, "--file cannot be combined with --%s",
                                       opts[event_opts[i]].name);
        }
        text = ch__read_file(a->str[O_FILE], &len);
        if (text == NULL) {
            fprintf(stderr, "charter: cannot read %s: %s\n",
                    strcmp(a->str[O_FILE], "-") == 0 ? "stdin" : a->str[O_FILE], strerror(errno));
            return CH__EXIT_FAIL;
        }
    } else {
        if (!a->set[O_KIND])
            return ch__usage_error(a, "append needs --kind (or --file)");
        if (a->set[O_CONTENT] && a->set[O_CONTENT_JSON])
            return ch__usage_error(a, "--content and --content-json exclude each other");
        body = event_from_flags(a);
    }

    path = session_path(a->pos[0], "/events");
    if (text != NULL)
        rc = ch__client_request_raw("POST", path, text, len, NULL, &reply);
    else
        rc = ch__client_request("POST", path, body, NULL, &reply);
    free(path);
    free(text);
    json_decref(body);
    return ch__emit(a, rc, reply, ch__view_appended);
}

static char *events_page_path(const ch__args *a, const json_t *next)
{
    char *path = session_path(a->pos[0], "/events");

    if (next != NULL)
        query_add_int(&path, "after", json_integer_value(next));
    else if (a->set[O_AFTER])
        query_add_int(&path, "after", a->num[O_AFTER]);
    if (a->set[O_LIMIT])
        query_add_int(&path, "limit", a->num[O_LIMIT]);
    if (a->set[O_ARCHIVED])
        query_add(&path, "include", "archived");
    return path;
}

static int verb_events(ch__args *a)
{
    json_t *reply = NULL;
    int rc = fetch_pages(a, events_page_path, "events", "next_after", &reply);

    return ch__emit(a, rc, reply, ch__view_events);
}

/* facts ID | facts ID get KEY | facts ID set KEY VALUE_JSON | facts ID delete KEY */
static int verb_facts(ch__args *a)
{
    const char *sub = a->npos > 1 ? a->pos[1] : NULL;
    json_t *body = NULL, *value, *reply = NULL;
    void (*view)(const json_t *) = ch__view_fact;
    const char *method = "GET";
    char *path, *esc, *suffix;
    int rc;

    if (sub == NULL) {
        path = session_path(a->pos[0], "/facts");
        rc = ch__client_request("GET", path, NULL, NULL, &reply);
        free(path);
        return ch__emit(a, rc, reply, ch__view_facts);
    }
    if (strcmp(sub, "get") == 0 && a->npos == 3) {
        method = "GET";
    } else if (strcmp(sub, "delete") == 0 && a->npos == 3) {
        method = "DELETE";
        view = ch__view_fact_deleted;
    } else if (strcmp(sub, "set") == 0 && a->npos == 4) {
        method = "PUT";
        /* A value that is not JSON is meant as a string: `set note hello`. */
        value = json_loads(a->pos[3], JSON_DECODE_ANY, NULL);
        if (value == NULL)
            value = json_string(a->pos[3]);
        if (value == NULL)
            return ch__usage_error(a, "VALUE is neither JSON nor UTF-8 text");
        body = ch__json_object();
        ch__json_set(body, "value", value);
    } else {
        return ch__usage_error(a, "expected: facts ID [get KEY | set KEY VALUE | delete KEY]");
    }

    esc = ch__client_escape(a->pos[2]);
    suffix = ch__xasprintf("/facts/%s", esc);
    path = session_path(a->pos[0], suffix);
    rc = ch__client_request(method, path, body, NULL, &reply);
    free(esc);
    free(suffix);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, view);
}

/* pause, resume, close, archive: POST .../<verb name> with {} or {reason}. */
static int verb_lifecycle(ch__args *a)
{
    return ch__post_lifecycle(a, "/v1/sessions", a->str[O_REASON], ch__view_session);
}

static int verb_compact(ch__args *a)
{
    json_t *body, *reply = NULL;
    char *path;
    int rc;

    if (!a->set[O_THROUGH])
        return ch__usage_error(a, "compact needs --through N");
    if (a->set[O_SUMMARY] == a->set[O_SUMMARY_JSON])
        return ch__usage_error(a, "compact needs one of --summary and --summary-json");
    body = ch__json_object();
    ch__json_set(body, "through_seq", json_integer(a->num[O_THROUGH]));
    if (a->set[O_SUMMARY])
        ch__json_set(body, "summary", json_string(a->str[O_SUMMARY]));
    else
        ch__json_set(body, "summary", json_incref(a->json[O_SUMMARY_JSON]));
    path = session_path(a->pos[0], "/compact");
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, ch__view_compacted);
}

static int verb_bundle(ch__args *a)
{
    char *path = session_path(a->pos[0], "/bundle");
    json_t *reply = NULL;
    int rc;

    if (a->set[O_LIMIT])
        query_add_int(&path, "limit", a->num[O_LIMIT]);
    rc = ch__client_request("GET", path, NULL, NULL, &reply);
    free(path);
    return ch__emit(a, rc, reply, ch__view_bundle);
}

int ch__session_main(int argc, char **argv)
{
    return ch__cmd_main(&session_cmd, argc, argv);
}
