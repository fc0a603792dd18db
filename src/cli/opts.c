/*
 * opts.c — the one option parser of the command line, the usage and verb dispatch of
 * the commands built from a verb table (`session`, `mandate`), and the helpers their
 * verbs share.
 *
 * A command hands over a table of ch__opt_spec (name and type of each option) and a
 * bit mask of the options allowed where it parses; getopt_long() does the scanning
 * and the type decides how a value is checked and where it is kept, so the same
 * option is refused with the same message in every command.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

/* getopt_long() values: past every character, so no clash with short options. */
#define OPT_VAL_BASE 0x100

/* ---------------------------------------------------------------------------------
 * Usage
 * ------------------------------------------------------------------------------- */

static const char common_help[] =
    "options of every verb:\n"
    "  --url URL        server base URL (default: $CHARTER_URL, else http://127.0.0.1:7433)\n"
    "  --key-file FILE  read the API key from the first line of FILE (default: $CHARTER_KEY)\n"
    "  --json           print the server's reply as indented JSON\n";

void ch__usage(FILE *f, const ch__args *a)
{
    const ch__cmd *cmd = a->cmd;

    if (cmd->verbs == NULL) {
        fputs(cmd->help, f);
        return;
    }
    if (a->verb != NULL) {
        fprintf(f, "usage: charter %s %s\n\n%s", cmd->name, a->verb->synopsis, common_help);
        return;
    }
    fprintf(f, "usage: charter %s [--url URL] [--key-file FILE] [--json] <verb> [args]\n\nverbs:\n",
            cmd->name);
    for (size_t i = 0; i < cmd->nverbs; i++)
        fprintf(f, "  %s\n", cmd->verbs[i].synopsis);
    fprintf(f, "\n%s", common_help);
    fputs(cmd->help, f);
}

int ch__usage_error(const ch__args *a, const char *fmt, ...)
{
    va_list ap;

    fputs("charter: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n\n", stderr);
    ch__usage(stderr, a);
    return CH__EXIT_USAGE;
}

/* ---------------------------------------------------------------------------------
 * Option parsing
 * ------------------------------------------------------------------------------- */

/* Every checked string ends up in a JSON document, which must be UTF-8. */
static bool utf8_valid(const char *s)
{
    json_t *probe = json_string(s);

    json_decref(probe);
    return probe != NULL;
}

/* Appends value to the JSON array in *list (made on first use). */
static void list_add(json_t **list, const char *value)
{
    if (*list == NULL) {
        *list = json_array();
        if (*list == NULL)
            ch__oom();
    }
    if (json_array_append_new(*list, json_string(value)) != 0)
        ch__oom();
}

/* Sets KEY=VALUE of kv in the JSON object in *labels (made on first use). name is
 * the option, for the messages. Returns an exit code. */
static int label_add(const ch__args *a, json_t **labels, const char *name, const char *kv)
{
    const char *eq = strchr(kv, '=');
    char *key;
    json_t *val;
    int rc = CH__EXIT_OK;

    if (eq == NULL || eq == kv)
        return ch__usage_error(a, "--%s: expected KEY=VALUE, got '%s'", name, kv);
    if (*labels == NULL)
        *labels = ch__json_object();
    key = ch__xasprintf("%.*s", (int)(eq - kv), kv);
    val = json_string(eq + 1);
    if (val == NULL || json_object_set_new(*labels, key, val) != 0)
        rc = ch__usage_error(a, "--%s: '%s' is not UTF-8", name, kv);
    free(key);
    return rc;
}

/* Checks one occurrence of option o and stores its value; returns an exit code. */
static int store_opt(ch__args *a, int o, const char *value)
{
    const ch__opt_spec *spec = &a->cmd->opts[o];
    const char *name = spec->name;
    int slot = spec->store_in != 0 ? spec->store_in : o;
    json_error_t jerr;

    a->set[slot] = true;
    switch (spec->type) {
    case CH__OPT_FLAG:
    case CH__OPT_STOP:
        break;
    case CH__OPT_RAW:
        a->str[slot] = value;
        break;
    case CH__OPT_STR:
    case CH__OPT_NONEMPTY:
    case CH__OPT_LIST:
        if (!utf8_valid(value))
            return ch__usage_error(a, "--%s: not valid UTF-8", name);
        if (spec->type != CH__OPT_STR && *value == '\0')
            return ch__usage_error(a, "--%s: empty value", name);
        if (spec->type == CH__OPT_LIST)
            list_add(&a->json[slot], value);
        else
            a->str[slot] = value;
        break;
    case CH__OPT_INT:
        if (!ch__parse_int(value, &a->num[slot]))
            return ch__usage_error(a, "--%s: not an integer: '%s'", name, value);
        break;
    case CH__OPT_REAL:
        if (!ch__parse_real(value, &a->real[slot]))
            return ch__usage_error(a, "--%s: not a number: '%s'", name, value);
        break;
    case CH__OPT_JSON:
        json_decref(a->json[slot]);
        a->json[slot] = json_loads(value, JSON_DECODE_ANY, &jerr);
        if (a->json[slot] == NULL)
            return ch__usage_error(a, "--%s: invalid JSON: %s", name, jerr.text);
        break;
    case CH__OPT_LABEL:
        if (label_add(a, &a->json[slot], name, value) != CH__EXIT_OK)
            return CH__EXIT_USAGE;
        break;
    }
    return spec->check != NULL ? spec->check(a, slot) : CH__EXIT_OK;
}

static bool takes_value(ch__opt_type type)
{
    return type != CH__OPT_FLAG && type != CH__OPT_STOP;
}

/* True when arg ("--name" or "--name=value") names an option of a's command. */
static bool known_opt(const ch__args *a, const char *arg)
{
    size_t n;

    if (strncmp(arg, "--", 2) != 0)
        return false;
    arg += 2;
    n = strcspn(arg, "=");
    for (int o = 0; o < a->cmd->nopts; o++) {
        const char *name = a->cmd->opts[o].name;

        if (strlen(name) == n && strncmp(name, arg, n) == 0)
            return true;
    }
    return false;
}

int ch__opts_parse(ch__args *a, int argc, char **argv, uint64_t allowed, bool stop_at_positional)
{
    const ch__cmd *cmd = a->cmd;
    struct option longopts[CH__OPTS_MAX + 1];
    size_t n = 0;
    int opt, rc;

    for (int o = 0; o < cmd->nopts; o++) {
        if ((allowed & CH__BIT(o)) == 0)
            continue;
        longopts[n].name = cmd->opts[o].name;
        longopts[n].has_arg = takes_value(cmd->opts[o].type) ? required_argument : no_argument;
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
            opt = OPT_VAL_BASE + CH__O_HELP;
        if (opt == ':')
            return ch__usage_error(a, "option '%s' needs a value", argv[optind - 1]);
        if (opt < OPT_VAL_BASE || opt >= OPT_VAL_BASE + cmd->nopts) {
            if (a->verb != NULL && known_opt(a, argv[optind - 1]))
                return ch__usage_error(a, "'%s' does not take option '%s'", a->verb->name,
                                       argv[optind - 1]);
            return ch__usage_error(a, "unknown option '%s'", argv[optind - 1]);
        }
        rc = store_opt(a, opt - OPT_VAL_BASE, optarg);
        if (rc != CH__EXIT_OK)
            return rc;
        if (cmd->opts[opt - OPT_VAL_BASE].type == CH__OPT_STOP)
            break;
    }
    a->pos = argv + optind;
    a->npos = argc - optind;
    return CH__EXIT_OK;
}

void ch__args_free(ch__args *a)
{
    for (int o = 0; o < CH__OPTS_MAX; o++)
        json_decref(a->json[o]);
}

/* ---------------------------------------------------------------------------------
 * Commands built from a verb table, and what their verbs share
 * ------------------------------------------------------------------------------- */

int ch__cmd_main(const ch__cmd *cmd, int argc, char **argv)
{
    ch__args a;
    const ch__verb *v = NULL;
    int rc;

    memset(&a, 0, sizeof a);
    a.cmd = cmd;
    rc = ch__opts_parse(&a, argc, argv, CH__COMMON_OPTS, true);
    if (rc != CH__EXIT_OK)
        goto done;
    if (a.set[CH__O_HELP]) {
        ch__usage(stdout, &a);
        goto done;
    }
    if (a.npos == 0) {
        rc = ch__usage_error(&a, "missing verb");
        goto done;
    }
    for (size_t i = 0; i < cmd->nverbs && v == NULL; i++) {
        if (strcmp(cmd->verbs[i].name, a.pos[0]) == 0)
            v = &cmd->verbs[i];
    }
    if (v == NULL) {
        rc = ch__usage_error(&a, "unknown verb '%s'", a.pos[0]);
        goto done;
    }

    a.verb = v;
    rc = ch__opts_parse(&a, a.npos, a.pos, CH__COMMON_OPTS | v->opts, false);
    if (rc != CH__EXIT_OK)
        goto done;
    if (a.set[CH__O_HELP]) {
        ch__usage(stdout, &a);
        goto done;
    }
    if (a.npos < v->min_pos || a.npos > v->max_pos) {
        rc = ch__usage_error(&a, "%s",
                             a.npos < v->min_pos ? "missing arguments" : "too many arguments");
        goto done;
    }
    for (int i = 0; i < a.npos; i++) {
        if (*a.pos[i] == '\0') {
            rc = ch__usage_error(&a, "empty argument");
            goto done;
        }
    }

    a.mode = ch__out_mode_pick(a.set[CH__O_JSON]);
    if (v->offline) {
        rc = v->run(&a);
        goto done;
    }
    rc = ch__client_init(a.str[CH__O_URL], a.str[CH__O_KEY_FILE]);
    if (rc == CH__EXIT_OK)
        rc = v->run(&a);
    ch__client_cleanup();

done:
    ch__args_free(&a);
    return rc;
}

int ch__emit(const ch__args *a, int rc, json_t *reply, void (*view)(const json_t *))
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

void ch__set_amounts(const ch__args *a, json_t *obj, const char *member, int tokens, int cost,
                     int tool_calls)
{
    json_t *amounts;

    if (!a->set[tokens] && !a->set[cost] && !a->set[tool_calls])
        return;
    amounts = ch__json_object();
    if (a->set[tokens])
        ch__json_set(amounts, "tokens", json_integer(a->num[tokens]));
    if (a->set[cost])
        ch__json_set(amounts, "cost_usd", json_real(a->real[cost]));
    if (a->set[tool_calls])
        ch__json_set(amounts, "tool_calls", json_integer(a->num[tool_calls]));
    ch__json_set(obj, member, amounts);
}

int ch__post_lifecycle(const ch__args *a, const char *collection, const char *reason,
                       void (*view)(const json_t *))
{
    char *suffix = ch__xasprintf("/%s", a->verb->name);
    char *path = ch__client_path(collection, a->pos[0], suffix);
    json_t *body = ch__json_object(), *reply = NULL;
    int rc;

    if (reason != NULL)
        ch__json_set(body, "reason", json_string(reason));
    rc = ch__client_request("POST", path, body, NULL, &reply);
    free(suffix);
    free(path);
    json_decref(body);
    return ch__emit(a, rc, reply, view);
}
