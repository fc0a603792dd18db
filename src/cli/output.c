/*
 * output.c — how the command line prints: JSON for --json and for pipes, and for a
 * terminal aligned tables and "key: value" views of the sessions and mandates API
 * replies and of the event stream. Every
 * string that came from the server is clipped and stripped of control characters
 * before it reaches a terminal.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "charter.h"
#include "cli/cli.h"

/* Width of one table cell in the human views (longer text ends in "..."). */
#define CONTENT_MAX 60
#define NAME_MAX_CHARS 24

/* Digits of the shortest "%.*g" of d that reads back as d (17 always does). Never
 * fewer than d's integer digits: "%.1g" of 40 is "4e+01", which reads back but is no
 * way to print a price. */
static int shortest_digits(double d)
{
    char text[40];
    int first = 1;

    for (double mag = fabs(d); mag >= 10 && first < 17; mag /= 10)
        first++;
    for (int p = first; p < 17; p++) {
        snprintf(text, sizeof text, "%.*g", p, d);
        if (strtod(text, NULL) == d)
            return p;
    }
    return 17;
}

int ch__json_real_precision(const json_t *v)
{
    const char *k;
    json_t *item;
    size_t i;
    int p = 1, q;

    if (json_is_real(v))
        return shortest_digits(json_real_value(v));
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, k, item)
        {
            q = ch__json_real_precision(item);
            p = q > p ? q : p;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, item)
        {
            q = ch__json_real_precision(item);
            p = q > p ? q : p;
        }
    }
    return p;
}

/* Dumps v compactly for a human cell. malloc'd. */
static char *dump_compact(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY |
                                JSON_REAL_PRECISION(ch__json_real_precision(v)));

    if (s == NULL)
        ch__oom();
    return s;
}

ch__out_mode ch__out_mode_pick(bool json_flag)
{
    if (json_flag)
        return CH__OUT_PRETTY;
    return isatty(STDOUT_FILENO) ? CH__OUT_HUMAN : CH__OUT_COMPACT;
}

void ch__print_json(const json_t *v, ch__out_mode mode)
{
    size_t flags =
        JSON_SORT_KEYS | JSON_ENCODE_ANY | JSON_REAL_PRECISION(ch__json_real_precision(v));

    flags |= mode == CH__OUT_PRETTY ? JSON_INDENT(2) : JSON_COMPACT;
    json_dumpf(v, stdout, flags);
    fputc('\n', stdout);
}

int ch__flush_stdout(void)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fputs("charter: cannot write to stdout\n", stderr);
        return CH__EXIT_FAIL;
    }
    return CH__EXIT_OK;
}

size_t ch__text_width(const char *s)
{
    size_t n = 0;

    for (; *s; s++) {
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    }
    return n;
}

char *ch__clip_text(const char *s, size_t max)
{
    size_t len = strlen(s), total = ch__text_width(s), keep, chars = 0, o = 0;
    bool cut = max > 0 && total > max;
    char *out = ch__xrealloc(NULL, len + 4);

    keep = cut ? (max > 3 ? max - 3 : max) : total;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];

        if ((c & 0xC0) != 0x80 && chars == keep)
            break;
        if ((c & 0xC0) != 0x80)
            chars++;
        /* C0 controls, DEL and the C1 controls (U+0080..U+009F, which include the
         * 8-bit CSI) would be interpreted by a terminal. */
        if (c < 0x20 || c == 0x7F) {
            out[o++] = ' ';
            i++;
        } else if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 &&
                   (unsigned char)s[i + 1] <= 0x9F) {
            out[o++] = ' ';
            i += 2;
        } else {
            out[o++] = (char)c;
            i++;
        }
    }
    if (cut && max > 3) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

char *ch__cell_text(const json_t *v, size_t max)
{
    char *dumped, *out;

    if (v == NULL || json_is_null(v))
        return ch__xstrdup("-");
    if (json_is_string(v))
        return ch__clip_text(json_string_value(v), max);
    dumped = dump_compact(v);
    out = ch__clip_text(dumped, max);
    free(dumped);
    return out;
}

char *ch__json_text(const json_t *v, size_t max)
{
    char *dumped, *out;

    if (v == NULL)
        return ch__xstrdup("-");
    dumped = dump_compact(v);
    out = ch__clip_text(dumped, max);
    free(dumped);
    return out;
}

/* ---------------------------------------------------------------------------------
 * Tables
 * ------------------------------------------------------------------------------- */

void ch__table_init(ch__table *t, size_t ncols, const char *const *headers)
{
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    t->headers = headers;
}

void ch__table_add(ch__table *t, char **row)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->cells = ch__xrealloc(t->cells, t->cap * t->ncols * sizeof *t->cells);
    }
    memcpy(t->cells + t->nrows * t->ncols, row, t->ncols * sizeof *row);
    t->nrows++;
}

void ch__table_print(const ch__table *t, FILE *f, const char *indent)
{
    size_t *width = ch__xrealloc(NULL, t->ncols * sizeof *width);

    for (size_t c = 0; c < t->ncols; c++) {
        width[c] = ch__text_width(t->headers[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t w = ch__text_width(t->cells[r * t->ncols + c]);

            if (w > width[c])
                width[c] = w;
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        const char *const *row =
            r == 0 ? t->headers : (const char *const *)t->cells + (r - 1) * t->ncols;

        fputs(indent, f);
        for (size_t c = 0; c < t->ncols; c++) {
            fputs(row[c], f);
            if (c + 1 < t->ncols)
                fprintf(f, "%*s", (int)(width[c] - ch__text_width(row[c]) + 2), "");
        }
        fputc('\n', f);
    }
    free(width);
}

void ch__table_free(ch__table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------------------------
 * Views of the sessions API
 * ------------------------------------------------------------------------------- */

/* An array of strings as "a,b,c" ("-" when empty); anything else as a cell. */
static char *list_text(const json_t *v)
{
    size_t i;
    json_t *item;
    char *out = NULL;

    if (!json_is_array(v))
        return ch__cell_text(v, 0);
    json_array_foreach(v, i, item)
    {
        if (!json_is_string(item))
            return ch__cell_text(v, 0);
    }
    if (json_array_size(v) == 0)
        return ch__xstrdup("-");
    json_array_foreach(v, i, item)
    {
        char *text = ch__clip_text(json_string_value(item), 0);
        char *next = ch__xasprintf("%s%s%s", out ? out : "", out ? "," : "", text);

        free(text);
        free(out);
        out = next;
    }
    return out;
}

/* An object of scalars as "k=v k=v" ("-" when empty), lists of strings as "k=a,b";
 * other values as cells. */
static char *value_text(const json_t *v)
{
    const char *k;
    json_t *item;
    char *out = NULL;

    if (!json_is_object(v) || json_object_size(v) == 0)
        return list_text(json_is_object(v) ? NULL : v);
    json_object_foreach((json_t *)v, k, item)
    {
        char *key = ch__clip_text(k, 0);
        char *val = list_text(item);
        char *next = ch__xasprintf("%s%s%s=%s", out ? out : "", out ? " " : "", key, val);

        free(key);
        free(val);
        free(out);
        out = next;
    }
    return out;
}

static void print_field(const char *k, const json_t *v, size_t width)
{
    char *key = ch__clip_text(k, 0);
    char *text = value_text(v);

    printf("%s:%*s %s\n", key, (int)(width - ch__text_width(key)), "", text);
    free(key);
    free(text);
}

/* Prints o as aligned "key: value" lines: the keys of order first, then any others. */
static void print_fields(const json_t *o, const char *const *order)
{
    const char *k;
    json_t *v;
    size_t width = 0;

    json_object_foreach((json_t *)o, k, v)
    {
        if (ch__text_width(k) > width)
            width = ch__text_width(k);
    }
    for (size_t i = 0; order[i] != NULL; i++) {
        v = json_object_get(o, order[i]);
        if (v != NULL)
            print_field(order[i], v, width);
    }
    json_object_foreach((json_t *)o, k, v)
    {
        bool listed = false;

        for (size_t i = 0; order[i] != NULL && !listed; i++)
            listed = strcmp(order[i], k) == 0;
        if (!listed)
            print_field(k, v, width);
    }
}

void ch__view_session(const json_t *session)
{
    static const char *const order[] = {
        "id",    "state", "user",        "agent",      "mandate",    "labels", "budget",
        "usage", "seq",   "summary_seq", "created_at", "updated_at", NULL,
    };

    print_fields(session, order);
}

/* The footer of a page that has a next one: how to ask for it. */
static void print_more(const json_t *reply, const char *field, const char *flag)
{
    const json_t *next = json_object_get(reply, field);
    char *text;

    if (next == NULL || json_is_null(next))
        return;
    text = ch__cell_text(next, 0);
    printf("(more: %s %s, or --all)\n", flag, text);
    free(text);
}

void ch__view_sessions(const json_t *reply)
{
    static const char *const headers[] = {"ID", "USER", "AGENT", "STATE", "SEQ", "UPDATED"};
    const json_t *sessions = json_object_get(reply, "sessions");
    ch__table t;
    size_t i;
    json_t *s;

    if (json_array_size(sessions) == 0) {
        puts("no sessions");
        print_more(reply, "next_cursor", "--cursor");
        return;
    }
    ch__table_init(&t, 6, headers);
    json_array_foreach(sessions, i, s)
    {
        char *row[6] = {
            ch__cell_text(json_object_get(s, "id"), 0),
            ch__cell_text(json_object_get(s, "user"), NAME_MAX_CHARS),
            ch__cell_text(json_object_get(s, "agent"), NAME_MAX_CHARS),
            ch__cell_text(json_object_get(s, "state"), 0),
            ch__cell_text(json_object_get(s, "seq"), 0),
            ch__cell_text(json_object_get(s, "updated_at"), 0),
        };

        ch__table_add(&t, row);
    }
    ch__table_print(&t, stdout, "");
    ch__table_free(&t);
    print_more(reply, "next_cursor", "--cursor");
}

/* The CONTENT cell of an event: lifecycle events read "active -> paused (reason)". */
static char *event_content(const json_t *ev)
{
    const json_t *content = json_object_get(ev, "content");
    const char *kind = json_string_value(json_object_get(ev, "kind"));
    const char *from = json_string_value(json_object_get(content, "from"));
    const char *to = json_string_value(json_object_get(content, "to"));
    const char *reason = json_string_value(json_object_get(content, "reason"));
    char *text, *out;

    if (content == NULL || json_is_null(content))
        return ch__xstrdup("");
    if (kind == NULL || strcmp(kind, "lifecycle") != 0 || from == NULL || to == NULL)
        return ch__cell_text(content, CONTENT_MAX);
    if (reason != NULL && *reason != '\0')
        text = ch__xasprintf("%s -> %s (%s)", from, to, reason);
    else
        text = ch__xasprintf("%s -> %s", from, to);
    out = ch__clip_text(text, CONTENT_MAX);
    free(text);
    return out;
}

static void print_events_table(const json_t *events, const char *indent)
{
    static const char *const headers[] = {"SEQ", "AT", "KIND", "ROLE", "CONTENT"};
    ch__table t;
    size_t i;
    json_t *ev;

    ch__table_init(&t, 5, headers);
    json_array_foreach(events, i, ev)
    {
        const json_t *role = json_object_get(ev, "role");
        char *row[5] = {
            ch__cell_text(json_object_get(ev, "seq"), 0),
            ch__cell_text(json_object_get(ev, "at"), 0),
            ch__cell_text(json_object_get(ev, "kind"), 0),
            role != NULL && !json_is_null(role) ? ch__cell_text(role, NAME_MAX_CHARS)
                                                : ch__xstrdup(""),
            event_content(ev),
        };

        ch__table_add(&t, row);
    }
    ch__table_print(&t, stdout, indent);
    ch__table_free(&t);
}

void ch__view_events(const json_t *reply)
{
    const json_t *events = json_object_get(reply, "events");

    if (json_array_size(events) == 0)
        puts("no events");
    else
        print_events_table(events, "");
    print_more(reply, "next_after", "--after");
}

void ch__view_appended(const json_t *reply)
{
    json_int_t first = json_integer_value(json_object_get(reply, "first_seq"));
    json_int_t last = json_integer_value(json_object_get(reply, "last_seq"));

    if (first == last)
        printf("appended seq %" JSON_INTEGER_FORMAT "\n", first);
    else
        printf("appended seq %" JSON_INTEGER_FORMAT "-%" JSON_INTEGER_FORMAT
               " (%" JSON_INTEGER_FORMAT " events)\n",
               first, last, last - first + 1);
}

static void print_facts_table(const json_t *facts, const char *indent)
{
    static const char *const headers[] = {"KEY", "VALUE"};
    ch__table t;
    const char *k;
    json_t *v;

    ch__table_init(&t, 2, headers);
    json_object_foreach((json_t *)facts, k, v)
    {
        char *row[2] = {ch__clip_text(k, CONTENT_MAX), ch__json_text(v, CONTENT_MAX)};

        ch__table_add(&t, row);
    }
    ch__table_print(&t, stdout, indent);
    ch__table_free(&t);
}

void ch__view_facts(const json_t *reply)
{
    const json_t *facts = json_object_get(reply, "facts");

    if (json_object_size(facts) == 0)
        puts("no facts");
    else
        print_facts_table(facts, "");
}

void ch__view_fact(const json_t *reply)
{
    char *key = ch__cell_text(json_object_get(reply, "key"), 0);
    char *value = ch__json_text(json_object_get(reply, "value"), 0);
    char *at = ch__cell_text(json_object_get(reply, "updated_at"), 0);

    printf("key:        %s\nvalue:      %s\nupdated_at: %s\n", key, value, at);
    free(key);
    free(value);
    free(at);
}

void ch__view_fact_deleted(const json_t *reply)
{
    char *key = ch__cell_text(json_object_get(reply, "key"), 0);

    printf("deleted fact %s\n", key);
    free(key);
}

void ch__view_compacted(const json_t *reply)
{
    printf("compacted through seq %" JSON_INTEGER_FORMAT " (%" JSON_INTEGER_FORMAT
           " events archived)\n",
           json_integer_value(json_object_get(reply, "summary_seq")),
           json_integer_value(json_object_get(reply, "archived")));
}

void ch__view_bundle(const json_t *reply)
{
    const json_t *session = json_object_get(reply, "session");
    const json_t *summary = json_object_get(reply, "summary");
    const json_t *facts = json_object_get(reply, "facts");
    const json_t *events = json_object_get(reply, "events");
    char *id = ch__cell_text(json_object_get(session, "id"), 0);
    char *state = ch__cell_text(json_object_get(session, "state"), 0);
    char *seq = ch__cell_text(json_object_get(session, "seq"), 0);

    printf("session: %s (%s, seq %s)\n", id, state, seq);
    free(id);
    free(state);
    free(seq);

    if (summary == NULL || json_is_null(summary)) {
        puts("summary: none");
    } else {
        char *through = ch__cell_text(json_object_get(summary, "seq"), 0);
        char *text = ch__cell_text(json_object_get(summary, "content"), CONTENT_MAX);

        printf("summary: through seq %s: %s\n", through, text);
        free(through);
        free(text);
    }

    if (json_object_size(facts) == 0) {
        puts("facts:   none");
    } else {
        puts("facts:");
        print_facts_table(facts, "  ");
    }

    if (json_array_size(events) == 0) {
        puts("events:  none");
    } else {
        puts("events:");
        print_events_table(events, "  ");
    }
    if (json_is_integer(json_object_get(reply, "next_after"))) {
        char *after = ch__cell_text(json_object_get(reply, "next_after"), 0);

        id = ch__cell_text(json_object_get(session, "id"), 0);
        printf("(more: charter session events %s --after %s)\n", id, after);
        free(id);
        free(after);
    }
}

/* ---------------------------------------------------------------------------------
 * Views of the mandates API
 * ------------------------------------------------------------------------------- */

void ch__view_mandate(const json_t *mandate)
{
    static const char *const order[] = {
        "id",     "state",      "version",    "purpose",    "approver",     "actor",
        "scope",  "conditions", "evidence",   "expires_at", "max_depth",    "depth",
        "parent", "root",       "budget",     "spent",      "mission_hash", "mission_header",
        "reason", "created_at", "updated_at", NULL,
    };

    print_fields(mandate, order);
}

/* One row of the tree: the id indented by depth (marked when it is the mandate asked
 * about), then state, actor, version and deadline. */
static void tree_row(ch__table *t, const json_t *entry, json_int_t depth, bool self)
{
    char *id = ch__cell_text(json_object_get(entry, "id"), 0);
    char *row[5];

    if (depth < 0)
        depth = 0;
    if (depth > 64)
        depth = 64;
    row[0] = ch__xasprintf("%*s%s%s", (int)(2 * depth), "", id, self ? " *" : "");
    row[1] = ch__cell_text(json_object_get(entry, "state"), 0);
    row[2] = ch__cell_text(json_object_get(entry, "actor"), NAME_MAX_CHARS);
    row[3] = ch__cell_text(json_object_get(entry, "version"), 0);
    row[4] = ch__cell_text(json_object_get(entry, "expires_at"), 0);
    free(id);
    ch__table_add(t, row);
}

void ch__view_mandate_tree(const json_t *tree, const json_t *self)
{
    static const char *const headers[] = {"MANDATE", "STATE", "ACTOR", "VERSION", "EXPIRES"};
    const json_t *ancestors = json_object_get(tree, "ancestors");
    const json_t *descendants = json_object_get(tree, "descendants");
    json_t *own = NULL, *entry;
    ch__table t;
    size_t i;

    if (self == NULL) {
        own = ch__json_object();
        ch__json_set(own, "id", json_incref(json_object_get(tree, "mandate")));
        ch__json_set(own, "depth", json_integer((json_int_t)json_array_size(ancestors)));
        self = own;
    }
    ch__table_init(&t, 5, headers);
    json_array_foreach(ancestors, i, entry)
        tree_row(&t, entry, json_integer_value(json_object_get(entry, "depth")), false);
    tree_row(&t, self, json_integer_value(json_object_get(self, "depth")), true);
    json_array_foreach(descendants, i, entry)
        tree_row(&t, entry, json_integer_value(json_object_get(entry, "depth")), false);
    ch__table_print(&t, stdout, "");
    ch__table_free(&t);
    json_decref(own);
}

void ch__view_check(const json_t *reply)
{
    bool allow = json_is_true(json_object_get(reply, "allow"));
    char *reason = ch__cell_text(json_object_get(reply, "reason"), 0);
    char *mandate = ch__cell_text(json_object_get(reply, "mandate"), 0);
    char *version = ch__cell_text(json_object_get(reply, "mandate_version"), 0);
    char *decision = ch__cell_text(json_object_get(reply, "decision_id"), 0);

    printf("%s: %s (mandate %s, version %s, decision %s)\n", allow ? "allow" : "deny", reason,
           mandate, version, decision);
    free(reason);
    free(mandate);
    free(version);
    free(decision);
}

/* A claim in seconds since the epoch as RFC 3339 ("-" when it is not a number). */
static json_t *claim_time(const json_t *v)
{
    char text[32];

    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > INT64_MAX / 1000)
        return json_string("-");
    ch_time_format((int64_t)json_integer_value(v) * 1000, text);
    return json_string(text);
}

void ch__view_artifact_claims(const json_t *claims)
{
    static const char *const order[] = {
        "valid",  "mandate", "version",   "actor",      "scope", "mission",
        "tenant", "issuer",  "issued_at", "expires_at", NULL,
    };
    static const struct {
        const char *claim, *name;
    } names[] = {{"mdt", "mandate"},  {"ver", "version"}, {"iss", "issuer"},
                 {"actor", "actor"},  {"scope", "scope"}, {"mission", "mission"},
                 {"tenant", "tenant"}};
    json_t *view = ch__json_object();

    ch__json_set(view, "valid", json_string("yes"));
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        json_t *v = json_object_get(claims, names[i].claim);

        if (v != NULL)
            ch__json_set(view, names[i].name, json_incref(v));
    }
    ch__json_set(view, "issued_at", claim_time(json_object_get(claims, "iat")));
    ch__json_set(view, "expires_at", claim_time(json_object_get(claims, "exp")));
    print_fields(view, order);
    json_decref(view);
}

/* ---------------------------------------------------------------------------------
 * The event stream
 * ------------------------------------------------------------------------------- */

/* Appends " name=value" to *out for a member of data that is present and not null;
 * strings are quoted when they hold a space. */
static void add_member(char **out, const json_t *data, const char *name)
{
    const json_t *v = json_object_get(data, name);
    char *text, *next;

    if (v == NULL || json_is_null(v))
        return;
    text = list_text(v);
    if (json_is_string(v) && strchr(text, ' ') != NULL)
        next = ch__xasprintf("%s %s=\"%s\"", *out, name, text);
    else
        next = ch__xasprintf("%s %s=%s", *out, name, text);
    free(text);
    free(*out);
    *out = next;
}

char *ch__event_line(const char *id, const char *type, const json_t *data)
{
    /* The members shown for each family of events, after the subject. */
    static const char *const mandate_members[] = {"state",      "version", "parent", "reason",
                                                  "expires_at", "scope",   NULL};
    static const char *const session_members[] = {"from", "state", "mandate", "reason", NULL};
    const char *const *members = NULL;
    const char *subject_key = NULL;
    char *line, *tid = ch__clip_text(id, 0), *ttype = ch__clip_text(type, 0);

    if (strncmp(type, "mandate.", 8) == 0) {
        subject_key = "mandate";
        members = mandate_members;
    } else if (strncmp(type, "session.", 8) == 0) {
        subject_key = "session";
        members = session_members;
    }

    line = ch__xasprintf("%-6s %-20s", tid, ttype);
    if (subject_key != NULL) {
        char *subject = ch__cell_text(json_object_get(data, subject_key), 0);
        const char *cause = json_string_value(json_object_get(data, "cause"));
        const char *self = json_string_value(json_object_get(data, subject_key));
        char *next = ch__xasprintf("%s %s", line, subject);

        free(subject);
        free(line);
        line = next;
        for (size_t i = 0; members[i] != NULL; i++)
            add_member(&line, data, members[i]);
        /* The cause matters only when the change cascaded from another mandate. */
        if (cause != NULL && (self == NULL || strcmp(cause, self) != 0))
            add_member(&line, data, "cause");
    } else {
        const char *k;
        json_t *v;

        json_object_foreach((json_t *)data, k, v)
        {
            if (strcmp(k, "id") != 0 && strcmp(k, "type") != 0 && strcmp(k, "at") != 0)
                add_member(&line, data, k);
        }
    }
    free(tid);
    free(ttype);
    return line;
}
