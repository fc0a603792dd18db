/*
 * session.c — `charter session <verb>`: the sessions API from the command line.
 *
 * Every verb is one row of the verbs table: the options it takes (a bit mask over
 * one shared option table, so that one parser serves all verbs and an option means
 * the same thing everywhere), how many positional arguments it needs, and the
 * function that builds the request and picks the view of the reply.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

enum opt {
    O_JSON,
    O_URL,
    O_KEY_FILE,
    O_HELP,
    O_USER,
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

/* How an option's value is checked and stored in args. */
enum opt_type {
    T_FLAG,  /* no value */
    T_STR,   /* args.str */
    T_INT,   /* args.num */
    T_REAL,  /* args.real */
    T_JSON,  /* args.json: any JSON text */
    T_LABEL, /* K=V, repeatable, collected in args.labels */
};

static const struct {
    const char *name;
    enum opt_type type;
} opt_specs[O__COUNT] = {
    [O_JSON] = {"json", T_FLAG},
    [O_URL] = {"url", T_STR},
    [O_KEY_FILE] = {"key-file", T_STR},
    [O_HELP] = {"help", T_FLAG},
    [O_USER] = {"user", T_STR},
    [O_AGENT] = {"agent", T_STR},
    [O_MANDATE] = {"mandate", T_STR},
    [O_LABEL] = {"label", T_LABEL},
    [O_BUDGET_TOKENS] = {"budget-tokens", T_INT},
    [O_BUDGET_COST] = {"budget-cost", T_REAL},
    [O_BUDGET_TOOL_CALLS] = {"budget-tool-calls", T_INT},
    [O_STATE] = {"state", T_STR},
    [O_LIMIT] = {"limit", T_INT},
    [O_CURSOR] = {"cursor", T_STR},
    [O_ALL] = {"all", T_FLAG},
    [O_KIND] = {"kind", T_STR},
    [O_ROLE] = {"role", T_STR},
    [O_CONTENT] = {"content", T_STR},
    [O_CONTENT_JSON] = {"content-json", T_JSON},
    [O_META_JSON] = {"meta-json", T_JSON},
    [O_TOKENS] = {"tokens", T_INT},
    [O_COST] = {"cost", T_REAL},
    [O_TOOL_CALLS] = {"tool-calls", T_INT},
    [O_EXPECT_SEQ] = {"expect-seq", T_INT},
    [O_FILE] = {"file", T_STR},
    [O_AFTER] = {"after", T_INT},
    [O_ARCHIVED] = {"archived", T_FLAG},
    [O_REASON] = {"reason", T_STR},
    [O_THROUGH] = {"through", T_INT},
    [O_SUMMARY] = {"summary", T_STR},
    [O_SUMMARY_JSON] = {"summary-json", T_JSON},
};

_Static_assert(O__COUNT <= 64, "option sets are 64-bit masks");
#define BIT(o) (UINT64_C(1) << (o))
/* Taken before the verb and by every verb. */
#define COMMON_OPTS (BIT(O_JSON) | BIT(O_URL) | BIT(O_KEY_FILE) | BIT(O_HELP))
/* getopt_long() values: past every character, so no clash with short options. */
#define OPT_VAL_BASE 0x100

typedef struct args {
    bool set[O__COUNT];
    const char *str[O__COUNT];
    long long num[O__COUNT];
    double real[O__COUNT];
    json_t *json[O__COUNT];
    json_t *labels; /* --label K=V..., or NULL */
    char **pos;     /* positional arguments: the verb, then the verb's own */
    int npos;
    ch__out_mode mode;
    const struct verb *verb; /* NULL until the verb is known */
} args;

typedef struct verb {
    const char *name;
    int (*run)(args *a);
    uint64_t opts; /* besides COMMON_OPTS */
    int min_pos, max_pos;
    const char *synopsis; /* after "charter session " */
} verb;

static int verb_open(args *a);
static int verb_show(args *a);
static int verb_list(args *a);
static int verb_append(args *a);
static int verb_events(args *a);
static int verb_facts(args *a);
static int verb_lifecycle(args *a);
static int verb_compact(args *a);
static int verb_bundle(args *a);

static const verb verbs[] = {
    {"open", verb_open,
     BIT(O_USER) | BIT(O_AGENT) | BIT(O_MANDATE) | BIT(O_LABEL) | BIT(O_BUDGET_TOKENS) |
         BIT(O_BUDGET_COST) | BIT(O_BUDGET_TOOL_CALLS),
     0, 0,
     "open --user U --agent A [--mandate M] [--label K=V]... [--budget-tokens N]\n"
     "       [--budget-cost X] [--budget-tool-calls N]"},
    {"show", verb_show, 0, 1, 1, "show ID"},
    {"list", verb_list,
     BIT(O_USER) | BIT(O_STATE) | BIT(O_MANDATE) | BIT(O_LIMIT) | BIT(O_CURSOR) | BIT(O_ALL), 0, 0,
     "list [--user U] [--state S] [--mandate M] [--limit N] [--cursor C] [--all]"},
    {"append", verb_append,
     BIT(O_KIND) | BIT(O_ROLE) | BIT(O_CONTENT) | BIT(O_CONTENT_JSON) | BIT(O_META_JSON) |
         BIT(O_TOKENS) | BIT(O_COST) | BIT(O_TOOL_CALLS) | BIT(O_EXPECT_SEQ) | BIT(O_FILE),
     1, 1,
     "append ID --kind K [--role R] [--content TEXT | --content-json JSON]\n"
     "       [--meta-json JSON] [--tokens N] [--cost X] [--tool-calls N] [--expect-seq N]\n"
     "  append ID --file FILE            (FILE holds the JSON body; - = stdin)"},
    {"events", verb_events, BIT(O_AFTER) | BIT(O_LIMIT) | BIT(O_ARCHIVED) | BIT(O_ALL), 1, 1,
     "events ID [--after N] [--limit N] [--archived] [--all]"},
    {"facts", verb_facts, 0, 1, 4,
     "facts ID | facts ID get KEY | facts ID set KEY VALUE | facts ID delete KEY"},
    {"pause", verb_lifecycle, BIT(O_REASON), 1, 1, "pause ID [--reason TEXT]"},
    {"resume", verb_lifecycle, 0, 1, 1, "resume ID"},
    {"close", verb_lifecycle, BIT(O_REASON), 1, 1, "close ID [--reason TEXT]"},
    {"archive", verb_lifecycle, BIT(O_REASON), 1, 1, "archive ID [--reason TEXT]"},
    {"compact", verb_compact, BIT(O_THROUGH) | BIT(O_SUMMARY) | BIT(O_SUMMARY_JSON), 1, 1,
     "compact ID --through N (--summary TEXT | --summary-json JSON)"},
    {"bundle", verb_bundle, BIT(O_LIMIT), 1, 1, "bundle ID [--limit N]"},
};
static const size_t nverbs = sizeof verbs / sizeof verbs[0];

/* ---------------------------------------------------------------------------------
 * Usage
 * ------------------------------------------------------------------------------- */

static const char common_help[] =
    "options of every verb:\n"
    "  --url URL        server base URL (default: $CHARTER_URL, else http://127.0.0.1:7433)\n"
    "  --key-file FILE  read the API key from the first line of FILE (default: $CHARTER_KEY)\n"
    "  --json           print the server's reply as indented JSON\n";

static void print_usage(FILE *f, const verb *v)
{
    if (v != NULL) {
        fprintf(f, "usage: charter session %s\n\n%s", v->synopsis, common_help);
        return;
    }
    fputs("usage: charter session [--url URL] [--key-file FILE] [--json] <verb> [args]\n\n"
          "verbs:\n",
          f);
    for (size_t i = 0; i < nverbs; i++)
        fprintf(f, "  %s\n", verbs[i].synopsis);
    fprintf(f, "\n%s", common_help);
    fputs("\nWithout --json a terminal gets tables; a pipe gets the reply as one line of JSON.\n"
          "Exit codes: 0 ok, 1 refused by the server or local error, 2 server unreachable,\n"
          "64 usage error.\n",
          f);
}

/* Prints "charter: <message>", then the usage of a's verb (or of `session` when the
 * verb is not known yet); returns the usage exit code. */
static int usage_error(const args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const args *a, const char *fmt, ...)
{
    va_list ap;

    fputs("charter: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    print_usage(stderr, a->verb);
    return CH__EXIT_USAGE;
}

/* ---------------------------------------------------------------------------------
 * Option parsing
 * ------------------------------------------------------------------------------- */

/* Adds --label K=V to a->labels. */
static int add_label(args *a, const char *kv)
{
    const char *eq = strchr(kv, '=');
    char *key;
    json_t *val;
    int rc = CH__EXIT_OK;

    if (eq == NULL || eq == kv)
        return usage_error(a, "--label: expected KEY=VALUE, got '%s'", kv);
    if (a->labels == NULL)
        a->labels = ch__json_object();
    key = ch__xasprintf("%.*s", (int)(eq - kv), kv);
    val = json_string(eq + 1);
    if (val == NULL || json_object_set_new(a->labels, key, val) != 0)
        rc = usage_error(a, "--label: '%s' is not UTF-8", kv);
    free(key);
    return rc;
}

static bool utf8_valid(const char *s)
{
    json_t *probe = json_string(s);

    json_decref(probe);
    return probe != NULL;
}

/* Stores one option's value in a after checking it; returns an exit code. */
static int store_opt(args *a, enum opt o, const char *value)
{
    const char *name = opt_specs[o].name;
    json_error_t jerr;

    a->set[o] = true;
    switch (opt_specs[o].type) {
    case T_FLAG:
        break;
    case T_STR:
        /* Every string option ends up in a JSON document, which must be UTF-8. */
        if (!utf8_valid(value))
            return usage_error(a, "--%s: not valid UTF-8", name);
        a->str[o] = value;
        break;
    case T_INT:
        if (!ch__parse_int(value, &a->num[o]))
            return usage_error(a, "--%s: not an integer: '%s'", name, value);
        break;
    case T_REAL:
        if (!ch__parse_real(value, &a->real[o]))
            return usage_error(a, "--%s: not a number: '%s'", name, value);
        break;
    case T_JSON:
        json_decref(a->json[o]);
        a->json[o] = json_loads(value, JSON_DECODE_ANY, &jerr);
        if (a->json[o] == NULL)
            return usage_error(a, "--%s: invalid JSON: %s", name, jerr.text);
        break;
    case T_LABEL:
        return add_label(a, value);
    }
    return CH__EXIT_OK;
}

/* True when arg ("--name" or "--name=value") names an option of some verb. */
static bool known_opt(const char *arg)
{
    size_t n;

    if (strncmp(arg, "--", 2) != 0)
        return false;
    arg += 2;
    n = strcspn(arg, "=");
    for (int o = 0; o < O__COUNT; o++) {
        if (strlen(opt_specs[o].name) == n && strncmp(opt_specs[o].name, arg, n) == 0)
            return true;
    }
    return false;
}

/* Parses the options of argv (argv[0] is the command or verb name) that allowed
 * lets through. With stop_at_positional the scan ends at the first positional
 * argument (the verb); otherwise options and positionals may be mixed (GNU getopt
 * permutes them) and the positionals end up in a->pos. */
static int parse_opts(args *a, int argc, char **argv, uint64_t allowed, bool stop_at_positional)
{
    struct option longopts[O__COUNT + 1];
    size_t n = 0;
    int opt, rc;

    for (int o = 0; o < O__COUNT; o++) {
        if ((allowed & BIT(o)) == 0)
            continue;
        longopts[n].name = opt_specs[o].name;
        longopts[n].has_arg = opt_specs[o].type == T_FLAG ? no_argument : required_argument;
        longopts[n].flag = NULL;
        longopts[n].val = OPT_VAL_BASE + o;
        n++;
    }
    memset(&longopts[n], 0, sizeof longopts[n]);

    optind = 0;
    opterr = 0;
    for (;;) {
        opt = getopt_long(argc, argv, stop_at_positional ? "+:h" : ":h", longopts, NULL);
        if (opt == -1)
            break;
        if (opt == 'h')
            opt = OPT_VAL_BASE + O_HELP;
        if (opt == ':')
            return usage_error(a, "option '%s' needs a value", argv[optind - 1]);
        if (opt < OPT_VAL_BASE || opt >= OPT_VAL_BASE + O__COUNT) {
            if (a->verb != NULL && known_opt(argv[optind - 1]))
                return usage_error(a, "'%s' does not take option '%s'", a->verb->name,
                                   argv[optind - 1]);
            return usage_error(a, "unknown option '%s'", argv[optind - 1]);
        }
        rc = store_opt(a, (enum opt)(opt - OPT_VAL_BASE), optarg);
        if (rc != CH__EXIT_OK)
            return rc;
    }
    a->pos = argv + optind;
    a->npos = argc - optind;
    return CH__EXIT_OK;
}

static void args_free(args *a)
{
    for (int o = 0; o < O__COUNT; o++)
        json_decref(a->json[o]);
    json_decref(a->labels);
}

/* ---------------------------------------------------------------------------------
 * Request helpers
 * ------------------------------------------------------------------------------- */

/* "/v1/sessions/<id><suffix>" with id escaped. malloc'd. */
static char *session_path(const char *id, const char *suffix)
{
    char *esc = ch__client_escape(id);
    char *path = ch__xasprintf("/v1/sessions/%s%s", esc, suffix);

    free(esc);
    return path;
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

/* Prints a successful reply in a's output mode (view for a terminal), releases it and
 * returns the exit code; passes a failed request's rc through. */
static int emit(const args *a, int rc, json_t *reply, void (*view)(const json_t *))
{
    if (rc != CH__EXIT_OK)
        return rc;
    if (a->mode == CH__OUT_HUMAN)
        view(reply);
    else
        ch__print_json(reply, a->mode);
    json_decref(reply);
    return ch__flush_stdout();
}

/* Builds the path of one page; next is the previous page's next_* value (NULL for the
 * first page). */
typedef char *(*page_path_fn)(const args *a, const json_t *next);

/* GETs one page, or with --all every page, following next_field until it is null,
 * and returns them as one reply: the items arrays concatenated, next_field null. */
static int fetch_pages(const args *a, page_path_fn page_path, const char *items,
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

static int verb_open(args *a)
{
    json_t *body, *budget = NULL, *reply = NULL;
    int rc;

    if (!a->set[O_USER] || !a->set[O_AGENT])
        return usage_error(a, "open needs --user and --agent");
    body = ch__json_object();
    ch__json_set(body, "user", json_string(a->str[O_USER]));
    ch__json_set(body, "agent", json_string(a->str[O_AGENT]));
    if (a->set[O_MANDATE])
        ch__json_set(body, "mandate", json_string(a->str[O_MANDATE]));
    if (a->labels != NULL)
        ch__json_set(body, "labels", json_incref(a->labels));
    if (a->set[O_BUDGET_TOKENS] || a->set[O_BUDGET_COST] || a->set[O_BUDGET_TOOL_CALLS]) {
        budget = ch__json_object();
        if (a->set[O_BUDGET_TOKENS])
            ch__json_set(budget, "tokens", json_integer(a->num[O_BUDGET_TOKENS]));
        if (a->set[O_BUDGET_COST])
            ch__json_set(budget, "cost_usd", json_real(a->real[O_BUDGET_COST]));
        if (a->set[O_BUDGET_TOOL_CALLS])
            ch__json_set(budget, "tool_calls", json_integer(a->num[O_BUDGET_TOOL_CALLS]));
        ch__json_set(body, "budget", budget);
    }
    rc = ch__client_request("POST", "/v1/sessions", body, NULL, &reply);
    json_decref(body);
    return emit(a, rc, reply, ch__view_session);
}

static int verb_show(args *a)
{
    char *path = session_path(a->pos[0], "");
    json_t *reply = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    return emit(a, rc, reply, ch__view_session);
}

static char *list_page_path(const args *a, const json_t *next)
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

static int verb_list(args *a)
{
    json_t *reply = NULL;
    int rc = fetch_pages(a, list_page_path, "sessions", "next_cursor", &reply);

    return emit(a, rc, reply, ch__view_sessions);
}

/* The body of `append` built from its flags. */
static json_t *event_from_flags(const args *a)
{
    json_t *ev = ch__json_object(), *usage;

    ch__json_set(ev, "kind", json_string(a->str[O_KIND]));
    if (a->set[O_ROLE])
        ch__json_set(ev, "role", json_string(a->str[O_ROLE]));
    if (a->set[O_CONTENT])
        ch__json_set(ev, "content", json_string(a->str[O_CONTENT]));
    if (a->set[O_CONTENT_JSON])
        ch__json_set(ev, "content", json_incref(a->json[O_CONTENT_JSON]));
    if (a->set[O_META_JSON])
        ch__json_set(ev, "meta", json_incref(a->json[O_META_JSON]));
    if (a->set[O_TOKENS] || a->set[O_COST] || a->set[O_TOOL_CALLS]) {
        usage = ch__json_object();
        if (a->set[O_TOKENS])
            ch__json_set(usage, "tokens", json_integer(a->num[O_TOKENS]));
        if (a->set[O_COST])
            ch__json_set(usage, "cost_usd", json_real(a->real[O_COST]));
        if (a->set[O_TOOL_CALLS])
            ch__json_set(usage, "tool_calls", json_integer(a->num[O_TOOL_CALLS]));
        ch__json_set(ev, "usage", usage);
    }
    if (a->set[O_EXPECT_SEQ])
        ch__json_set(ev, "expect_seq", json_integer(a->num[O_EXPECT_SEQ]));
    return ev;
}

static int verb_append(args *a)
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
                return usage_error(a, "--file cannot be combined with --%s",
                                   opt_specs[event_opts[i]].name);
        }
        text = ch__read_file(a->str[O_FILE], &len);
        if (text == NULL) {
            fprintf(stderr, "charter: cannot read %s: %s\n",
                    strcmp(a->str[O_FILE], "-") == 0 ? "stdin" : a->str[O_FILE], strerror(errno));
            return CH__EXIT_FAIL;
        }
    } else {
        if (!a->set[O_KIND])
            return usage_error(a, "append needs --kind (or --file)");
        if (a->set[O_CONTENT] && a->set[O_CONTENT_JSON])
            return usage_error(a, "--content and --content-json exclude each other");
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
    return emit(a, rc, reply, ch__view_appended);
}

static char *events_page_path(const args *a, const json_t *next)
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

static int verb_events(args *a)
{
    json_t *reply = NULL;
    int rc = fetch_pages(a, events_page_path, "events", "next_after", &reply);

    return emit(a, rc, reply, ch__view_events);
}

/* facts ID | facts ID get KEY | facts ID set KEY VALUE_JSON | facts ID delete KEY */
static int verb_facts(args *a)
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
        return emit(a, rc, reply, ch__view_facts);
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
            return usage_error(a, "VALUE is neither JSON nor UTF-8 text");
        body = ch__json_object();
        ch__json_set(body, "value", value);
    } else {
        return usage_error(a, "expected: facts ID [get KEY | set KEY VALUE | delete KEY]");
    }

    esc = ch__client_escape(a->pos[2]);
    suffix = ch__xasprintf("/facts/%s", esc);
    path = session_path(a->pos[0], suffix);
    rc = ch__client_request(method, path, body, NULL, &reply);
    free(esc);
    free(suffix);
    free(path);
    json_decref(body);
    return emit(a, rc, reply, view);
}

/* pause, resume, close, archive: POST .../<verb name> with {} or {reason}. */
static int verb_lifecycle(args *a)
{
    char *suffix = ch__xasprintf("/%s", a->verb->name);
    char *path = session_path(a->pos[0], suffix);
    json_t *body = ch__json_object(), *reply = NULL;
    int rc;

    if (a->set[O_REASON])
        ch__json_set(body, "reason", json_string(a->str[O_REASON]));
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(suffix);
    free(path);
    json_decref(body);
    return emit(a, rc, reply, ch__view_session);
}

static int verb_compact(args *a)
{
    json_t *body, *reply = NULL;
    char *path;
    int rc;

    if (!a->set[O_THROUGH])
        return usage_error(a, "compact needs --through N");
    if (a->set[O_SUMMARY] == a->set[O_SUMMARY_JSON])
        return usage_error(a, "compact needs one of --summary and --summary-json");
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
    return emit(a, rc, reply, ch__view_compacted);
}

static int verb_bundle(args *a)
{
    char *path = session_path(a->pos[0], "/bundle");
    json_t *reply = NULL;
    int rc;

    if (a->set[O_LIMIT])
        query_add_int(&path, "limit", a->num[O_LIMIT]);
    rc = ch__client_request("GET", path, NULL, NULL, &reply);
    free(path);
    return emit(a, rc, reply, ch__view_bundle);
}

int ch__session_main(int argc, char **argv)
{
    args a;
    const verb *v = NULL;
    int rc;

    memset(&a, 0, sizeof a);
    rc = parse_opts(&a, argc, argv, COMMON_OPTS, true);
    if (rc != CH__EXIT_OK)
        goto done;
    if (a.set[O_HELP]) {
        print_usage(stdout, NULL);
        goto done;
    }
    if (a.npos == 0) {
        rc = usage_error(&a, "missing verb");
        goto done;
    }
    for (size_t i = 0; i < nverbs && v == NULL; i++) {
        if (strcmp(verbs[i].name, a.pos[0]) == 0)
            v = &verbs[i];
    }
    if (v == NULL) {
        rc = usage_error(&a, "unknown verb '%s'", a.pos[0]);
        goto done;
    }

    a.verb = v;
    rc = parse_opts(&a, a.npos, a.pos, COMMON_OPTS | v->opts, false);
    if (rc != CH__EXIT_OK)
        goto done;
    if (a.set[O_HELP]) {
        print_usage(stdout, v);
        goto done;
    }
    if (a.npos < v->min_pos || a.npos > v->max_pos) {
        rc =
            usage_error(&a, "%s", a.npos < v->min_pos ? "missing arguments" : "too many arguments");
        goto done;
    }
    for (int i = 0; i < a.npos; i++) {
        if (*a.pos[i] == '\0') {
            rc = usage_error(&a, "empty argument");
            goto done;
        }
    }

    a.mode = ch__out_mode_pick(a.set[O_JSON]);
    rc = ch__client_init(a.str[O_URL], a.str[O_KEY_FILE]);
    if (rc == CH__EXIT_OK)
        rc = v->run(&a);
    ch__client_cleanup();

done:
    args_free(&a);
    return rc;
}
