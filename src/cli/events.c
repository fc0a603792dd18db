/*
 * events.c — `charter events`: follows GET /v1/events, the tenant's Server-Sent
 * Events stream of mandate and session changes, printing one line per event.
 *
 * The stream is parsed as libcurl hands it over (text/event-stream: "field: value"
 * lines, a blank line ends an event). When the connection drops the command
 * reconnects with Last-Event-ID set to the last id it saw, so no event is lost or
 * repeated, backing off from 0.5 s to 5 s; it gives up (exit 2) once the server has
 * been unreachable for 30 s.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "charter.h"
#include "cli/cli.h"

#define BACKOFF_FIRST_MS 500
#define BACKOFF_MAX_MS 5000
/* How long the server may stay unreachable after a drop before the command gives up. */
#define GIVE_UP_MS 30000
/* A connection that lasted this long was healthy: the next outage backs off afresh. */
#define HEALTHY_MS 5000
/* Event ids are small integers; anything longer is not tracked (and never sent back
 * in a header). */
#define ID_MAX 64
/* An event's data beyond this is a broken server, not an event. */
#define DATA_MAX (16u << 20)

static const char usage_text[] =
    "usage: charter events [--after N] [--types T[,T...]] [--limit N | --once]\n"
    "                      [--url URL] [--key-file FILE] [--json]\n"
    "\n"
    "Follows the tenant's event stream (GET /v1/events) and prints one line per event:\n"
    "ID TYPE summary on a terminal, the event's JSON data otherwise (or with --json).\n"
    "Reconnects with Last-Event-ID when the connection drops; exits 2 once the server\n"
    "has been unreachable for 30 s (at once if the first connection fails).\n"
    "\n"
    "  --after N        start after event id N (0: every stored event); default: new\n"
    "                   events only\n"
    "  --types LIST     only these types, comma-separated; 'mandate.*' matches a prefix\n"
    "  --limit N        exit 0 after printing N events\n"
    "  --once           exit 0 after printing one event (--limit 1)\n"
    "  --url URL        server base URL (default: $CHARTER_URL, else http://127.0.0.1:7433)\n"
    "  --key-file FILE  read the API key from the first line of FILE (default: $CHARTER_KEY)\n"
    "  --json           print each event's data as one line of JSON\n";

typedef struct follower {
    /* settings */
    ch__out_mode mode;
    char **types;    /* NULL-ended, or NULL for every type */
    long long limit; /* 0: no limit */
    /* the line being read */
    ch_buf line;
    bool after_cr; /* the previous byte ended a line with '\r': skip a '\n' */
    /* the event being read */
    ch_buf data;
    bool has_data;
    char id[ID_MAX];
    char type[128];
    /* across connections */
    char last_id[ID_MAX]; /* "" until an event with an id has been seen */
    long long printed;
    bool done;         /* the limit has been reached */
    bool write_failed; /* stdout is gone */
    bool oversized;    /* the server sent an event beyond DATA_MAX */
} follower;

/* True when type passes --types. */
static bool wanted(const follower *f, const char *type)
{
    if (f->types == NULL)
        return true;
    for (char **t = f->types; *t != NULL; t++) {
        size_t n = strlen(*t);

        if (strcmp(*t, "*") == 0 || strcmp(*t, type) == 0)
            return true;
        /* "mandate.*" matches "mandate.revoked" */
        if (n >= 2 && strcmp(*t + n - 2, ".*") == 0 && strncmp(*t, type, n - 1) == 0)
            return true;
    }
    return false;
}

/* An id is remembered for Last-Event-ID only when it is short printable ASCII. */
static bool id_usable(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n >= ID_MAX)
        return false;
    for (const char *p = id; *p; p++) {
        if (*p < 0x21 || *p > 0x7e)
            return false;
    }
    return true;
}

static void reset_event(follower *f)
{
    f->data.len = 0;
    if (f->data.data != NULL)
        f->data.data[0] = '\0';
    f->has_data = false;
    f->id[0] = '\0';
    f->type[0] = '\0';
}

/* A blank line: the event read so far is complete. */
static void dispatch(follower *f)
{
    json_t *data;
    const char *type;
    const char *id;
    char numeric_id[32];

    if (!f->has_data) {
        reset_event(f);
        return;
    }
    if (f->data.len > 0 && f->data.data[f->data.len - 1] == '\n')
        f->data.data[--f->data.len] = '\0';
    if (id_usable(f->id))
        snprintf(f->last_id, sizeof f->last_id, "%s", f->id);

    data = json_loadb(f->data.data, f->data.len, 0, NULL);
    type = f->type[0] != '\0' ? f->type : json_string_value(json_object_get(data, "type"));
    if (type == NULL)
        type = "message";
    id = f->id;
    if (*id == '\0' && json_is_integer(json_object_get(data, "id"))) {
        snprintf(numeric_id, sizeof numeric_id, "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(data, "id")));
        id = numeric_id;
    }

    if (wanted(f, type)) {
        if (f->mode == CH__OUT_HUMAN) {
            json_t *shown =
                data != NULL ? json_incref(data) : json_pack("{s:s}", "data", f->data.data);
            char *line = ch__event_line(*id != '\0' ? id : "-", type, shown);

            puts(line);
            free(line);
            json_decref(shown);
        } else if (data != NULL) {
            ch__print_json(data, CH__OUT_COMPACT);
        } else {
            /* Not JSON: shown as it came, on one line. */
            char *line = ch__clip_text(f->data.data, 0);

            puts(line);
            free(line);
        }
        if (ch__flush_stdout() != CH__EXIT_OK)
            f->write_failed = true;
        f->printed++;
        if (f->limit > 0 && f->printed >= f->limit)
            f->done = true;
    }
    json_decref(data);
    reset_event(f);
}

/* One complete line of the stream (without its end). */
static void process_line(follower *f)
{
    const char *line = f->line.data != NULL ? f->line.data : "";
    const char *colon, *value;
    size_t name_len;

    if (f->line.len == 0) {
        dispatch(f);
        return;
    }
    if (line[0] == ':')
        return; /* a comment: the server's keep-alive */
    colon = strchr(line, ':');
    name_len = colon != NULL ? (size_t)(colon - line) : f->line.len;
    value = colon != NULL ? colon + 1 : "";
    if (*value == ' ')
        value++;

    if (name_len == 4 && strncmp(line, "data", 4) == 0) {
        size_t n = strlen(value);

        if (f->data.len + n + 1 > DATA_MAX) {
            f->oversized = true;
            return;
        }
        ch_buf_append(&f->data, value, n);
        ch_buf_append(&f->data, "\n", 1);
        f->has_data = true;
    } else if (name_len == 5 && strncmp(line, "event", 5) == 0) {
        snprintf(f->type, sizeof f->type, "%s", value);
    } else if (name_len == 2 && strncmp(line, "id", 2) == 0) {
        snprintf(f->id, sizeof f->id, "%s", value);
    }
    /* "retry" and unknown fields are ignored: the backoff is ours. */
}

/* The libcurl sink: splits the bytes into lines (LF, CRLF or CR). */
static size_t on_bytes(const char *p, size_t n, void *udata)
{
    follower *f = udata;

    for (size_t i = 0; i < n; i++) {
        char c = p[i];

        if (f->after_cr) {
            f->after_cr = false;
            if (c == '\n')
                continue;
        }
        if (c == '\n' || c == '\r') {
            f->after_cr = c == '\r';
            process_line(f);
            f->line.len = 0;
            if (f->line.data != NULL)
                f->line.data[0] = '\0';
            if (f->done || f->write_failed || f->oversized)
                return 0;
            continue;
        }
        if (f->line.len >= DATA_MAX) {
            f->oversized = true;
            return 0;
        }
        ch_buf_append(&f->line, &c, 1);
    }
    return n;
}

/* Forgets a partial line or event: after a reconnect the server starts afresh. */
static void reset_stream(follower *f)
{
    f->line.len = 0;
    f->after_cr = false;
    reset_event(f);
}

static int64_t mono_ms(void)
{
    return (int64_t)(ch_mono_ns() / 1000000u);
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Splits --types into a NULL-ended array; NULL when it names nothing. */
static char **split_types(const char *list)
{
    char *copy = ch__xstrdup(list), *save = NULL, *tok;
    char **out = NULL;
    size_t n = 0;

    for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (*tok == '\0')
            continue;
        out = ch__xrealloc(out, (n + 2) * sizeof *out);
        out[n++] = ch__xstrdup(tok);
        out[n] = NULL;
    }
    free(copy);
    return out;
}

static void free_types(char **types)
{
    for (char **t = types; t != NULL && *t != NULL; t++)
        free(*t);
    free(types);
}

static int follow(follower *f, long long after, bool have_after)
{
    int64_t down_since = 0, connected_at, backoff = BACKOFF_FIRST_MS, wait, left;
    bool ever_connected = false;
    char why[CURL_ERROR_SIZE + 64];
    long status;
    int rc;

    for (;;) {
        char *path = ch__xstrdup("/v1/events");
        char *header = NULL;
        const char *headers[2] = {NULL, NULL};

        /* Resume after the last event seen, else where the user asked to start. */
        if (f->last_id[0] != '\0') {
            char *esc = ch__client_escape(f->last_id);

            free(path);
            path = ch__xasprintf("/v1/events?after=%s", esc);
            free(esc);
            header = ch__xasprintf("Last-Event-ID: %s", f->last_id);
            headers[0] = header;
        } else if (have_after) {
            free(path);
            path = ch__xasprintf("/v1/events?after=%lld", after);
        }
        reset_stream(f);
        connected_at = mono_ms();
        rc = ch__client_stream(path, headers, on_bytes, f, &status, why, sizeof why);
        free(path);
        free(header);

        if (f->write_failed)
            return CH__EXIT_FAIL;
        if (f->done)
            return CH__EXIT_OK;
        if (f->oversized) {
            fprintf(stderr, "charter: unexpected reply from %s: an event over %u bytes\n",
                    ch__client_base_url(), DATA_MAX);
            return CH__EXIT_FAIL;
        }
        if (rc == CH__EXIT_FAIL)
            return rc;
        if (rc == CH__EXIT_OK) {
            ever_connected = true;
            down_since = mono_ms();
            if (down_since - connected_at >= HEALTHY_MS)
                backoff = BACKOFF_FIRST_MS;
            fprintf(stderr, "charter: the event stream ended%s%s; reconnecting\n",
                    why[0] != '\0' ? ": " : "", why);
        } else {
            if (!ever_connected) {
                fprintf(stderr, "charter: cannot reach %s: %s\n", ch__client_base_url(), why);
                return CH__EXIT_UNREACHABLE;
            }
            if (mono_ms() - down_since >= GIVE_UP_MS) {
                fprintf(stderr, "charter: cannot reach %s: %s (gave up after %d s)\n",
                        ch__client_base_url(), why, GIVE_UP_MS / 1000);
                return CH__EXIT_UNREACHABLE;
            }
        }
        /* Never wait past the deadline: the last attempt is made there. */
        wait = backoff;
        left = down_since + GIVE_UP_MS - mono_ms();
        if (left < wait)
            wait = left > 0 ? left : 0;
        sleep_ms(wait);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
}

/* The options are checked as they come, so that of two bad ones the first is named. */
static int check_after(ch__args *a, int o)
{
    if (!ch__parse_int(a->str[o], &a->num[o]) || a->num[o] < 0)
        return ch__usage_error(a, "--after: not an event id: '%s'", a->str[o]);
    return CH__EXIT_OK;
}

static int check_types(ch__args *a, int o)
{
    char **types = split_types(a->str[o]);

    if (types == NULL)
        return ch__usage_error(a, "--types: no type named");
    free_types(types);
    return CH__EXIT_OK;
}

static int check_limit(ch__args *a, int o)
{
    if (!ch__parse_int(a->str[o], &a->num[o]) || a->num[o] < 1)
        return ch__usage_error(a, "--limit: not a positive integer: '%s'", a->str[o]);
    return CH__EXIT_OK;
}

enum opt { O_AFTER = CH__O_OWN, O_TYPES, O_LIMIT, O_ONCE, O__COUNT };

static const ch__opt_spec opts[O__COUNT] = {
    [CH__O_JSON] = {"json", CH__OPT_FLAG},
    [CH__O_URL] = {"url", CH__OPT_RAW},
    [CH__O_KEY_FILE] = {"key-file", CH__OPT_RAW},
    [CH__O_HELP] = {"help", CH__OPT_STOP},
    [O_AFTER] = {"after", CH__OPT_RAW, .check = check_after},
    [O_TYPES] = {"types", CH__OPT_RAW, .check = check_types},
    [O_LIMIT] = {"limit", CH__OPT_RAW, .check = check_limit},
    [O_ONCE] = {"once", CH__OPT_FLAG},
};

static const ch__cmd events_cmd = {
    .name = "events",
    .opts = opts,
    .nopts = O__COUNT,
    .help = usage_text,
};

int ch__events_main(int argc, char **argv)
{
    ch__args a = {.cmd = &events_cmd};
    follower f;
    int rc;

    memset(&f, 0, sizeof f);
    rc = ch__opts_parse(&a, argc, argv, CH__BIT(O__COUNT) - 1 /* all of them */, false);
    if (rc != CH__EXIT_OK)
        goto done;
    if (a.set[CH__O_HELP]) {
        ch__usage(stdout, &a);
        rc = ch__flush_stdout();
        goto done;
    }
    if (a.npos > 0) {
        rc = ch__usage_error(&a, "unexpected argument '%s'", a.pos[0]);
        goto done;
    }
    if (a.set[O_ONCE] && a.set[O_LIMIT]) {
        rc = ch__usage_error(&a, "--once and --limit exclude each other");
        goto done;
    }
    f.limit = a.set[O_ONCE] ? 1 : a.num[O_LIMIT];
    if (a.set[O_TYPES])
        f.types = split_types(a.str[O_TYPES]);

    f.mode = ch__out_mode_pick(a.set[CH__O_JSON]);
    rc = ch__client_init(a.str[CH__O_URL], a.str[CH__O_KEY_FILE]);
    if (rc == CH__EXIT_OK)
        rc = follow(&f, a.num[O_AFTER], a.set[O_AFTER]);
    ch__client_cleanup();

done:
    free_types(f.types);
    ch_buf_free(&f.line);
    ch_buf_free(&f.data);
    ch__args_free(&a);
    return rc;
}
