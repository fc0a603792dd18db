/*
 * mandate.c — `charter mandate <verb>`: the mandates API from the command line, and
 * the offline verification of signed artifacts.
 *
 * Built like session.c: every verb is one row of the verbs table (its options as a
 * bit mask over one shared option table, its positional arguments, its function),
 * one parser serves all verbs, and an option means the same thing in every verb:
 * --tool/--lane/--resource/--class are lists where a verb sets a scope (create,
 * delegate, narrow) and the one action where it decides one (check,
 * verify-artifact).
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
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
    O_JSON,
    O_URL,
    O_KEY_FILE,
    O_HELP,
    O_APPROVER,
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
    O_BUDGET_COST_USD, /* a synonym of O_BUDGET_COST, stored there */
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

/* How an option's value is checked and stored in args. */
enum opt_type {
    T_FLAG, /* no value */
    T_STR,  /* args.str */
    T_INT,  /* args.num */
    T_REAL, /* args.real */
    T_JSON, /* args.json: any JSON text */
    T_LIST, /* repeatable strings, collected in args.list (a JSON array) */
};

static const struct {
    const char *name;
    enum opt_type type;
} opt_specs[O__COUNT] = {
    [O_JSON] = {"json", T_FLAG},
    [O_URL] = {"url", T_STR},
    [O_KEY_FILE] = {"key-file", T_STR},
    [O_HELP] = {"help", T_FLAG},
    [O_APPROVER] = {"approver", T_STR},
    [O_EXPIRES_AT] = {"expires-at", T_STR},
    [O_EXPIRES_IN] = {"expires-in", T_STR},
    [O_PURPOSE] = {"purpose", T_STR},
    [O_ACTOR] = {"actor", T_STR},
    [O_TOOL] = {"tool", T_LIST},
    [O_LANE] = {"lane", T_LIST},
    [O_RESOURCE] = {"resource", T_LIST},
    [O_CLASS] = {"class", T_LIST},
    [O_CLEAR] = {"clear", T_LIST},
    [O_MAX_DEPTH] = {"max-depth", T_INT},
    [O_BUDGET_TOKENS] = {"budget-tokens", T_INT},
    [O_BUDGET_COST] = {"budget-cost", T_REAL},
    [O_BUDGET_COST_USD] = {"budget-cost-usd", T_REAL},
    [O_BUDGET_TOOL_CALLS] = {"budget-tool-calls", T_INT},
    [O_PROPOSED] = {"proposed", T_FLAG},
    [O_EVIDENCE] = {"evidence", T_JSON},
    [O_CONDITIONS] = {"conditions", T_JSON},
    [O_REASON] = {"reason", T_STR},
    [O_SESSION] = {"session", T_STR},
    [O_ARTIFACT] = {"artifact", T_STR},
    [O_TTL] = {"ttl", T_STR},
    [O_PUBLIC_KEY] = {"public-key", T_STR},
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

_Static_assert(O__COUNT <= 64, "option sets are 64-bit masks");
#define BIT(o) (UINT64_C(1) << (o))
/* Taken before the verb and by every verb. */
#define COMMON_OPTS (BIT(O_JSON) | BIT(O_URL) | BIT(O_KEY_FILE) | BIT(O_HELP))
#define SCOPE_OPTS (BIT(O_TOOL) | BIT(O_LANE) | BIT(O_RESOURCE) | BIT(O_CLASS))
#define EXPIRY_OPTS (BIT(O_EXPIRES_AT) | BIT(O_EXPIRES_IN))
#define BUDGET_OPTS                                                                                \
    (BIT(O_BUDGET_TOKENS) | BIT(O_BUDGET_COST) | BIT(O_BUDGET_COST_USD) | BIT(O_BUDGET_TOOL_CALLS))
/* getopt_long() values: past every character, so no clash with short options. */
#define OPT_VAL_BASE 0x100

typedef struct args {
    bool set[O__COUNT];
    const char *str[O__COUNT];
    long long num[O__COUNT];
    double real[O__COUNT];
    json_t *json[O__COUNT];
    json_t *list[O__COUNT]; /* T_LIST options: arrays of strings, in the given order */
    char **pos;             /* positional arguments: the verb, then the verb's own */
    int npos;
    ch__out_mode mode;
    const struct verb *verb; /* NULL until the verb is known */
} args;

typedef struct verb {
    const char *name;
    int (*run)(args *a);
    uint64_t opts; /* besides COMMON_OPTS */
    int min_pos, max_pos;
    bool offline;         /* needs no server: --url and --key-file are ignored */
    const char *synopsis; /* after "charter mandate " */
} verb;

static int verb_create(args *a);
static int verb_show(args *a);
static int verb_tree(args *a);
static int verb_transition(args *a);
static int verb_delegate(args *a);
static int verb_narrow(args *a);
static int verb_check(args *a);
static int verb_artifact(args *a);
static int verb_verify_artifact(args *a);

static const verb verbs[] = {
    {"create", verb_create,
     BIT(O_APPROVER) | EXPIRY_OPTS | BIT(O_PURPOSE) | BIT(O_ACTOR) | SCOPE_OPTS | BIT(O_MAX_DEPTH) |
         BUDGET_OPTS | BIT(O_PROPOSED) | BIT(O_EVIDENCE) | BIT(O_CONDITIONS),
     0, 0, false,
     "create --approver A (--expires-at T | --expires-in DUR) [--purpose P] [--actor X]\n"
     "       [--tool T]... [--lane L]... [--resource R]... [--class C]... [--max-depth N]\n"
     "       [--budget-tokens N] [--budget-cost X] [--budget-tool-calls N] [--proposed]\n"
     "       [--evidence JSON] [--conditions JSON]"},
    {"show", verb_show, 0, 1, 1, false, "show ID"},
    {"tree", verb_tree, 0, 1, 1, false, "tree ID"},
    {"approve", verb_transition, 0, 1, 1, false, "approve ID"},
    {"suspend", verb_transition, BIT(O_REASON), 1, 1, false, "suspend ID [--reason R]"},
    {"reinstate", verb_transition, 0, 1, 1, false, "reinstate ID"},
    {"revoke", verb_transition, BIT(O_REASON), 1, 1, false, "revoke ID [--reason R]"},
    {"complete", verb_transition, 0, 1, 1, false, "complete ID"},
    {"delegate", verb_delegate,
     BIT(O_ACTOR) | BIT(O_PURPOSE) | EXPIRY_OPTS | SCOPE_OPTS | BIT(O_MAX_DEPTH) | BUDGET_OPTS |
         BIT(O_EVIDENCE) | BIT(O_CONDITIONS),
     1, 1, false,
     "delegate ID --actor X --purpose P (--expires-at T | --expires-in DUR)\n"
     "       [--tool T]... [--lane L]... [--resource R]... [--class C]... [--max-depth N]\n"
     "       [--budget-tokens N] [--budget-cost X] [--budget-tool-calls N]\n"
     "       [--evidence JSON] [--conditions JSON]"},
    {"narrow", verb_narrow, SCOPE_OPTS | BIT(O_CLEAR) | EXPIRY_OPTS | BIT(O_CONDITIONS), 1, 1,
     false,
     "narrow ID [--tool T]... [--lane L]... [--resource R]... [--class C]...\n"
     "       [--clear tools|lanes|resources|classes]... [--expires-at T | --expires-in DUR]\n"
     "       [--conditions JSON]"},
    {"check", verb_check, SCOPE_OPTS | BIT(O_ACTOR) | BIT(O_SESSION) | BIT(O_ARTIFACT), 0, 1, false,
     "check ID --tool T --lane L --resource R --class C [--actor A] [--session S]\n"
     "  check --artifact TOKEN --tool T --lane L --resource R --class C [--actor A] [--session S]"},
    {"artifact", verb_artifact, BIT(O_TTL), 1, 1, false, "artifact ID [--ttl DUR]"},
    {"verify-artifact", verb_verify_artifact, BIT(O_PUBLIC_KEY) | SCOPE_OPTS, 1, 1, true,
     "verify-artifact --public-key FILE TOKEN [--tool T --lane L --resource R --class C]"},
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
        fprintf(f, "usage: charter mandate %s\n\n%s", v->synopsis, common_help);
        return;
    }
    fputs("usage: charter mandate [--url URL] [--key-file FILE] [--json] <verb> [args]\n\n"
          "verbs:\n",
          f);
    for (size_t i = 0; i < nverbs; i++)
        fprintf(f, "  %s\n", verbs[i].synopsis);
    fprintf(f, "\n%s", common_help);
    fputs("\nDUR is a duration: 30s, 5m, 24h, 7d. T is an RFC 3339 time.\n"
          "Without --json a terminal gets tables; a pipe gets the reply as one line of JSON\n"
          "(`artifact` prints the token alone either way).\n"
          "Exit codes: 0 ok (check: allowed), 1 refused by the server, a local error, or\n"
          "(check, verify-artifact) denied or invalid, 2 server unreachable, 64 usage error.\n",
          f);
}

/* Prints "charter: <message>", then the usage of a's verb (or of `mandate` when the
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

    if (o == O_BUDGET_COST_USD)
        o = O_BUDGET_COST;
    a->set[o] = true;
    switch (opt_specs[o].type) {
    case T_FLAG:
        break;
    case T_STR:
        /* Every string option ends up in a JSON document, which must be UTF-8. */
        if (!utf8_valid(value))
            return usage_error(a, "--%s: not valid UTF-8", name);
        if (*value == '\0')
            return usage_error(a, "--%s: empty value", name);
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
    case T_LIST:
        if (*value == '\0')
            return usage_error(a, "--%s: empty value", name);
        if (!utf8_valid(value))
            return usage_error(a, "--%s: not valid UTF-8", name);
        if (a->list[o] == NULL) {
            a->list[o] = json_array();
            if (a->list[o] == NULL)
                ch__oom();
        }
        if (json_array_append_new(a->list[o], json_string(value)) != 0)
            ch__oom();
        break;
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
    for (int o = 0; o < O__COUNT; o++) {
        json_decref(a->json[o]);
        json_decref(a->list[o]);
    }
}

/* ---------------------------------------------------------------------------------
 * Request bodies from flags
 * ------------------------------------------------------------------------------- */

/* "/v1/mandates/<id><suffix>" with id escaped. malloc'd. */
static char *mandate_path(const char *id, const char *suffix)
{
    char *esc = ch__client_escape(id);
    char *path = ch__xasprintf("/v1/mandates/%s%s", esc, suffix);

    free(esc);
    return path;
}

/* Sets body.expires_at from --expires-at (as given) or --expires-in (now + DUR, in
 * RFC 3339 UTC). required: one of them must be there. */
static int set_expiry(const args *a, json_t *body, bool required)
{
    char text[32];
    int64_t ms;

    if (a->set[O_EXPIRES_AT] && a->set[O_EXPIRES_IN])
        return usage_error(a, "--expires-at and --expires-in exclude each other");
    if (a->set[O_EXPIRES_AT]) {
        ch__json_set(body, "expires_at", json_string(a->str[O_EXPIRES_AT]));
    } else if (a->set[O_EXPIRES_IN]) {
        if (ch_duration_parse(a->str[O_EXPIRES_IN], &ms) != CH_OK || ms > INT64_MAX - ch_now_ms())
            return usage_error(a, "--expires-in: not a duration (30s, 5m, 24h, 7d): '%s'",
                               a->str[O_EXPIRES_IN]);
        ch_time_format(ch_now_ms() + ms, text);
        ch__json_set(body, "expires_at", json_string(text));
    } else if (required) {
        return usage_error(a, "%s needs --expires-at or --expires-in", a->verb->name);
    }
    return CH__EXIT_OK;
}

/* The scope of the list flags given (and, for narrow, the lists --clear empties), or
 * NULL when none was. */
static json_t *scope_from_flags(const args *a)
{
    json_t *scope = NULL;

    for (size_t i = 0; i < NSCOPE; i++) {
        const json_t *list = a->list[scope_lists[i].opt];

        if (list == NULL)
            continue;
        if (scope == NULL)
            scope = ch__json_object();
        ch__json_set(scope, scope_lists[i].member, json_deep_copy(list));
    }
    return scope;
}

/* Applies --clear NAME...: each named list becomes []. */
static int apply_clear(const args *a, json_t **scope)
{
    size_t i, j;
    json_t *name;

    json_array_foreach(a->list[O_CLEAR], i, name)
    {
        const char *s = json_string_value(name);

        for (j = 0; j < NSCOPE; j++) {
            if (strcmp(s, scope_lists[j].member) == 0)
                break;
        }
        if (j == NSCOPE)
            return usage_error(a, "--clear: expected tools, lanes, resources or classes, got '%s'",
                               s);
        if (a->list[scope_lists[j].opt] != NULL)
            return usage_error(a, "--clear %s and --%s exclude each other", s,
                               opt_specs[scope_lists[j].opt].name);
        if (*scope == NULL)
            *scope = ch__json_object();
        ch__json_set(*scope, s, json_array());
    }
    return CH__EXIT_OK;
}

/* Sets body.budget from the --budget-* flags given. */
static void set_budget(const args *a, json_t *body)
{
    json_t *budget;

    if (!a->set[O_BUDGET_TOKENS] && !a->set[O_BUDGET_COST] && !a->set[O_BUDGET_TOOL_CALLS])
        return;
    budget = ch__json_object();
    if (a->set[O_BUDGET_TOKENS])
        ch__json_set(budget, "tokens", json_integer(a->num[O_BUDGET_TOKENS]));
    if (a->set[O_BUDGET_COST])
        ch__json_set(budget, "cost_usd", json_real(a->real[O_BUDGET_COST]));
    if (a->set[O_BUDGET_TOOL_CALLS])
        ch__json_set(budget, "tool_calls", json_integer(a->num[O_BUDGET_TOOL_CALLS]));
    ch__json_set(body, "budget", budget);
}

/* The members create and delegate share: scope, max_depth, budget, evidence,
 * conditions, actor and purpose, each only when its flag was given. */
static void set_common(const args *a, json_t *body)
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
    set_budget(a, body);
    if (a->set[O_EVIDENCE])
        ch__json_set(body, "evidence", json_incref(a->json[O_EVIDENCE]));
    if (a->set[O_CONDITIONS])
        ch__json_set(body, "conditions", json_incref(a->json[O_CONDITIONS]));
}

/* The single value of an action flag (--tool etc. given once), or NULL with a usage
 * error printed when it is missing or repeated. */
static const char *action_value(const args *a, enum opt o, int *rc)
{
    const json_t *list = a->list[o];

    if (list == NULL) {
        *rc = usage_error(a, "%s needs --%s", a->verb->name, opt_specs[o].name);
        return NULL;
    }
    if (json_array_size(list) != 1) {
        *rc = usage_error(a, "--%s may be given only once here", opt_specs[o].name);
        return NULL;
    }
    return json_string_value(json_array_get(list, 0));
}

/* ---------------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------------- */

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

/* ---------------------------------------------------------------------------------
 * Verbs
 * ------------------------------------------------------------------------------- */

static int verb_create(args *a)
{
    json_t *body, *reply = NULL;
    int rc;

    if (!a->set[O_APPROVER])
        return usage_error(a, "create needs --approver");
    body = ch__json_object();
    ch__json_set(body, "approver", json_string(a->str[O_APPROVER]));
    rc = set_expiry(a, body, true);
    if (rc != CH__EXIT_OK)
        goto done;
    set_common(a, body);
    if (a->set[O_PROPOSED])
        ch__json_set(body, "state", json_string("proposed"));
    rc = ch__client_request("POST", "/v1/mandates", body, NULL, &reply);
    rc = emit(a, rc, reply, ch__view_mandate);
done:
    json_decref(body);
    return rc;
}

static int verb_show(args *a)
{
    char *path = mandate_path(a->pos[0], "");
    json_t *reply = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    return emit(a, rc, reply, ch__view_mandate);
}

static int verb_tree(args *a)
{
    char *path = mandate_path(a->pos[0], "/tree");
    json_t *reply = NULL, *self = NULL;
    int rc = ch__client_request("GET", path, NULL, NULL, &reply);

    free(path);
    if (rc != CH__EXIT_OK || a->mode != CH__OUT_HUMAN)
        return emit(a, rc, reply, NULL);
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
static int verb_transition(args *a)
{
    char *suffix = ch__xasprintf("/%s", a->verb->name);
    char *path = mandate_path(a->pos[0], suffix);
    json_t *body = ch__json_object(), *reply = NULL;
    int rc;

    if (a->set[O_REASON])
        ch__json_set(body, "reason", json_string(a->str[O_REASON]));
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(suffix);
    free(path);
    json_decref(body);
    return emit(a, rc, reply, ch__view_mandate);
}

static int verb_delegate(args *a)
{
    json_t *body, *reply = NULL;
    char *path;
    int rc;

    if (!a->set[O_ACTOR] || !a->set[O_PURPOSE])
        return usage_error(a, "delegate needs --actor and --purpose");
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
    rc = emit(a, rc, reply, ch__view_mandate);
done:
    json_decref(body);
    return rc;
}

static int verb_narrow(args *a)
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
        rc = usage_error(a, "narrow needs a scope list, --clear, an expiry or --conditions");
        goto done;
    }
    path = mandate_path(a->pos[0], "");
    rc = ch__client_request("PATCH", path, body, NULL, &reply);
    free(path);
    rc = emit(a, rc, reply, ch__view_mandate);
done:
    json_decref(scope);
    json_decref(body);
    return rc;
}

/* The {tool, lane, resource, class} of the action flags, or NULL after a usage error
 * (*rc set). */
static json_t *action_from_flags(const args *a, int *rc)
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
static int verb_check(args *a)
{
    json_t *body = NULL, *action, *reply = NULL;
    bool allow;
    int rc = CH__EXIT_OK;

    if (a->set[O_ARTIFACT] && a->npos > 0)
        return usage_error(a, "check takes either ID or --artifact TOKEN, not both");
    if (!a->set[O_ARTIFACT] && a->npos == 0)
        return usage_error(a, "check needs a mandate ID or --artifact TOKEN");
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
    rc = emit(a, rc, reply, ch__view_check);
    if (rc == CH__EXIT_OK && !allow)
        rc = CH__EXIT_FAIL;
    return rc;
}

/* POST .../artifact. The token alone on stdout (terminal or pipe, so that
 * `tok=$(charter mandate artifact ID)` works); --json prints the whole reply. */
static int verb_artifact(args *a)
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
        return usage_error(a, "--ttl: not a duration (30s, 5m) or a number of seconds: '%s'", ttl);
    }
    path = mandate_path(a->pos[0], "/artifact");
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(path);
    json_decref(body);
    if (rc != CH__EXIT_OK || a->mode == CH__OUT_PRETTY)
        return emit(a, rc, reply, NULL);
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
static int verb_verify_artifact(args *a)
{
    bool have_action = false, all_action = true, allow = true;
    const char *reason = NULL;
    json_t *claims = NULL, *action = NULL, *out = NULL;
    char *jwk = NULL, *token = NULL;
    size_t jwk_len = 0;
    ch_err e;
    int rc;

    if (!a->set[O_PUBLIC_KEY])
        return usage_error(a, "verify-artifact needs --public-key FILE");
    for (size_t i = 0; i < NSCOPE; i++) {
        have_action |= a->list[scope_lists[i].opt] != NULL;
        all_action &= a->list[scope_lists[i].opt] != NULL;
    }
    if (have_action && !all_action)
        return usage_error(a, "give all of --tool, --lane, --resource and --class, or none");
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
    if (v->offline) {
        rc = v->run(&a);
        goto done;
    }
    rc = ch__client_init(a.str[O_URL], a.str[O_KEY_FILE]);
    if (rc == CH__EXIT_OK)
        rc = v->run(&a);
    ch__client_cleanup();

done:
    args_free(&a);
    return rc;
}
