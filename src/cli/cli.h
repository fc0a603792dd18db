/*
 * cli.h — what the files of the `charter` command line share: the command entry
 * points dispatched by main.c, the option parser and verb dispatch every command is
 * built on, the HTTP client every remote command goes through, the output helpers
 * (JSON, tables, key: value views) and a few small utilities.
 */
#ifndef CH_CLI_H
#define CH_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#define CH__CLI_VERSION "0.1.0"

/* Exit codes of every command. CH__EXIT_USAGE is sysexits' EX_USAGE. */
enum {
    CH__EXIT_OK = 0,
    CH__EXIT_FAIL = 1,        /* the server refused, or a local error */
    CH__EXIT_UNREACHABLE = 2, /* no HTTP reply at all */
    CH__EXIT_USAGE = 64,
};

/* ---------------------------------------------------------------------------------
 * Commands. Each takes argv starting at its own name (argv[0] == "session") and
 * returns the process exit code.
 * ------------------------------------------------------------------------------- */

/* `charter serve`: defined by the server (src/server). */
int ch__serve_main(int argc, char **argv);
/* `charter keys create` (offline, on the data dir) and `charter keys signing`. */
int ch__keys_main(int argc, char **argv);
/* `charter session <verb>`: the sessions API over HTTP. */
int ch__session_main(int argc, char **argv);
/* `charter mandate <verb>`: the mandates API over HTTP, and offline artifact checks. */
int ch__mandate_main(int argc, char **argv);
/* `charter events`: follows the tenant's event stream (Server-Sent Events). */
int ch__events_main(int argc, char **argv);
/* `charter scope <verb>`: the ephemeral scopes API over HTTP, and `scope top`, a live
 * view of the server's scope metrics. */
int ch__scope_main(int argc, char **argv);

/* ---------------------------------------------------------------------------------
 * HTTP client (client.c). One process talks to one server: ch__client_init() sets the
 * base URL and key, every request reuses the same libcurl handle (and connection).
 * ------------------------------------------------------------------------------- */

/* Resolves the base URL (url, else $CHARTER_URL, else http://127.0.0.1:7433) and the
 * key (first line of key_file, else $CHARTER_KEY, else none) and prepares libcurl.
 * url and key_file may be NULL. Returns an exit code; on failure the reason has been
 * printed to stderr. */
int ch__client_init(const char *url, const char *key_file);
/* Releases the client and wipes the key. Safe to call when init failed. */
void ch__client_cleanup(void);
/* The base URL in use ("http://127.0.0.1:7433", no trailing '/'). */
const char *ch__client_base_url(void);

/* Sends method to path ("/v1/sessions?limit=5", already escaped) with body (a JSON
 * text, or NULL for none) and returns an exit code:
 *   CH__EXIT_OK           2xx with a JSON reply; *reply is the caller's (json_decref)
 *   CH__EXIT_FAIL         the server answered with an error; it has been printed as
 *                         "charter: <code>: <message>"
 *   CH__EXIT_UNREACHABLE  no reply; "charter: cannot reach <url>: ..." printed
 * *status (may be NULL) receives the HTTP status, or 0 when there was no reply.
 * *reply is NULL unless the result is CH__EXIT_OK. */
int ch__client_request_raw(const char *method, const char *path, const char *body, size_t body_len,
                           long *status, json_t **reply);
/* GETs path like ch__client_request_raw() and, on success, hands back the reply body
 * exactly as the server sent it: *text is malloc'd and NUL-terminated (free()), *len
 * its length. Used where the bytes themselves matter (a key saved to a file). */
int ch__client_get_text(const char *path, char **text, size_t *len);
/* ch__client_request_raw() with body serialized from a JSON value (NULL: no body). */
int ch__client_request(const char *method, const char *path, const json_t *body, long *status,
                       json_t **reply);
/* Receives a streamed reply body piece by piece; returning anything but n stops the
 * transfer. */
typedef size_t (*ch__client_sink)(const char *p, size_t n, void *udata);
/* GETs path with Accept: text/event-stream and the extra header lines (a NULL-ended
 * array, or NULL), and hands the body of a 2xx reply to sink as it arrives, until the
 * server ends it, the connection breaks, the sink stops it, or nothing (not even a
 * keep-alive) has arrived for 45 s. Returns:
 *   CH__EXIT_OK           a 2xx reply was streamed; why holds how it broke ("" when
 *                         it ended cleanly or the sink stopped it)
 *   CH__EXIT_FAIL         the server answered with an error; it has been printed
 *   CH__EXIT_UNREACHABLE  no reply, or 503 (a draining server); the reason is in why,
 *                         not printed: the caller decides whether to retry
 * *status (may be NULL) receives the HTTP status, or 0. */
int ch__client_stream(const char *path, const char *const *extra_headers, ch__client_sink sink,
                      void *udata, long *status, char *why, size_t why_size);
/* Percent-encodes s for a URL path segment or query value. Returns malloc'd memory
 * (free()). */
char *ch__client_escape(const char *s);
/* "<collection>/<id><suffix>" with id escaped: ch__client_path("/v1/sessions", id,
 * "/events"). malloc'd (free()). */
char *ch__client_path(const char *collection, const char *id, const char *suffix);

/* ---------------------------------------------------------------------------------
 * Output (output.c).
 * ------------------------------------------------------------------------------- */

typedef enum ch__out_mode {
    CH__OUT_HUMAN,   /* tables and key: value lines, for a terminal */
    CH__OUT_PRETTY,  /* --json: indented JSON, sorted keys */
    CH__OUT_COMPACT, /* stdout is not a terminal: one line of JSON */
} ch__out_mode;

/* --json gives CH__OUT_PRETTY; otherwise a terminal on stdout gives CH__OUT_HUMAN and
 * anything else CH__OUT_COMPACT. */
ch__out_mode ch__out_mode_pick(bool json_flag);
/* The fewest significant digits (1..17) that print every real in v so that it reads
 * back exactly: for JSON_REAL_PRECISION(), so 0.1 prints as 0.1 and not as jansson's
 * default 0.10000000000000001. */
int ch__json_real_precision(const json_t *v);
/* Prints v on stdout as JSON in the given mode (PRETTY or COMPACT), then a newline. */
void ch__print_json(const json_t *v, ch__out_mode mode);
/* Flushes stdout; returns CH__EXIT_FAIL (after saying so) when writing failed. */
int ch__flush_stdout(void);

/* s made safe for one line of a terminal: control characters become spaces and the
 * text is cut to max characters (0: no limit), ending in "..." when cut. malloc'd. */
char *ch__clip_text(const char *s, size_t max);
/* Characters (code points) in UTF-8 text: the bytes that do not continue one. */
size_t ch__text_width(const char *s);
/* A JSON value as compact JSON text (strings keep their quotes: the type matters),
 * clipped to max characters; "-" when v is NULL. */
char *ch__json_text(const json_t *v, size_t max);
/* ch__clip_text() of a JSON value: strings as they are, null and absent as "-",
 * anything else as compact JSON. malloc'd (free()). */
char *ch__cell_text(const json_t *v, size_t max);

/* A table printed with aligned columns. */
typedef struct ch__table {
    size_t ncols;
    const char *const *headers;
    char **cells; /* nrows * ncols */
    size_t nrows, cap;
} ch__table;

void ch__table_init(ch__table *t, size_t ncols, const char *const *headers);
/* Adds a row of t->ncols malloc'd strings; the table takes them over. */
void ch__table_add(ch__table *t, char **row);
/* Prints the header and the rows to f, each line prefixed with indent. */
void ch__table_print(const ch__table *t, FILE *f, const char *indent);
void ch__table_free(ch__table *t);

/* Human views of the sessions API replies. */
void ch__view_session(const json_t *session);
void ch__view_sessions(const json_t *reply); /* {sessions, next_cursor} */
void ch__view_events(const json_t *reply);   /* {events, next_after} */
void ch__view_appended(const json_t *reply); /* {first_seq, last_seq} */
void ch__view_facts(const json_t *reply);    /* {facts} */
void ch__view_fact(const json_t *reply);     /* {key, value, updated_at} */
void ch__view_fact_deleted(const json_t *reply);
void ch__view_compacted(const json_t *reply); /* {summary_seq, archived} */
void ch__view_bundle(const json_t *reply);

/* Human views of the mandates API replies. */
void ch__view_mandate(const json_t *mandate);
/* {mandate, ancestors, descendants} as an indented tree; self (may be NULL) is the
 * mandate object itself, for its own line. */
void ch__view_mandate_tree(const json_t *tree, const json_t *self);
void ch__view_check(const json_t *reply); /* {allow, reason, mandate, ...} */
/* The verified claims of an artifact as key: value lines. */
void ch__view_artifact_claims(const json_t *claims);
/* One event of GET /v1/events as "ID  TYPE  summary" (no newline). malloc'd. */
char *ch__event_line(const char *id, const char *type, const json_t *data);

/* ---------------------------------------------------------------------------------
 * Options and verbs (opts.c). Every command describes its options in one table of
 * ch__opt_spec indexed by its own option enum, which starts with the four options
 * below, and one parser reads argv against it: an option is checked, stored and
 * refused the same way in every command. `session` and `mandate` also describe their
 * verbs in a table and leave usage, dispatch and the client to ch__cmd_main().
 * ------------------------------------------------------------------------------- */

/* The head of every command's option enum; a command's own options start at
 * CH__O_OWN. */
enum {
    CH__O_JSON,
    CH__O_URL,
    CH__O_KEY_FILE,
    CH__O_HELP, /* also -h */
    CH__O_OWN,
};

/* Option sets are bit masks over a command's option enum. */
#define CH__OPTS_MAX 64
#define CH__BIT(o) (UINT64_C(1) << (o))
/* Taken before the verb and by every verb of a ch__cmd_main() command. */
#define CH__COMMON_OPTS                                                                            \
    (CH__BIT(CH__O_JSON) | CH__BIT(CH__O_URL) | CH__BIT(CH__O_KEY_FILE) | CH__BIT(CH__O_HELP))

/* How an option's value is checked, and which member of ch__args keeps it. The
 * checked strings end up in JSON documents, hence UTF-8. A later occurrence of an
 * option replaces the earlier one, except for the repeatable LIST and LABEL. */
typedef enum ch__opt_type {
    CH__OPT_FLAG,     /* no value */
    CH__OPT_STOP,     /* no value, and the scan ends there: a --help answered at once */
    CH__OPT_RAW,      /* str, as given (a URL, a file name), for the command to check */
    CH__OPT_STR,      /* str, valid UTF-8 */
    CH__OPT_NONEMPTY, /* str, valid UTF-8 and not empty */
    CH__OPT_INT,      /* num */
    CH__OPT_REAL,     /* real */
    CH__OPT_JSON,     /* json: any JSON text */
    CH__OPT_LIST,     /* json: an array of every value given (UTF-8, not empty), in order */
    CH__OPT_LABEL,    /* json: an object of every KEY=VALUE given */
} ch__opt_type;

typedef struct ch__args ch__args;
typedef struct ch__verb ch__verb;
typedef struct ch__cmd ch__cmd;

typedef struct ch__opt_spec {
    const char *name; /* the long option, without "--" */
    ch__opt_type type;
    /* A synonym fills the slots of this option instead of its own (0: its own); the
     * two have the same type. */
    int store_in;
    /* NULL, or a further check of each occurrence once its value is stored in slot
     * o. Returns an exit code (a refusal after ch__usage_error()), which ends the scan
     * unless it is CH__EXIT_OK. */
    int (*check)(ch__args *a, int o);
} ch__opt_spec;

/* What a command line said: the options by index into the command's table, then
 * the positional arguments. */
struct ch__args {
    const ch__cmd *cmd;
    const ch__verb *verb; /* NULL until the verb is known, and in commands without verbs */
    bool set[CH__OPTS_MAX];
    const char *str[CH__OPTS_MAX];
    long long num[CH__OPTS_MAX];
    double real[CH__OPTS_MAX];
    json_t *json[CH__OPTS_MAX]; /* owned: ch__args_free() */
    char **pos;                 /* positional arguments (within argv) */
    int npos;
    ch__out_mode mode; /* set by ch__cmd_main() before the verb runs */
};

struct ch__verb {
    const char *name;
    int (*run)(ch__args *a);
    uint64_t opts; /* besides CH__COMMON_OPTS */
    int min_pos, max_pos;
    bool offline;         /* needs no server: --url and --key-file are ignored */
    const char *synopsis; /* after "charter <command> " */
};

struct ch__cmd {
    const char *name; /* "session", as in "usage: charter session ..." */
    const ch__opt_spec *opts;
    int nopts;             /* at most CH__OPTS_MAX */
    const ch__verb *verbs; /* NULL: the command parses and dispatches itself */
    size_t nverbs;
    /* With verbs, the text printed after the verbs and the common options in the
     * command's usage; without, the whole usage. */
    const char *help;
};

/* Parses the options of argv (argv[0] is the command or verb name) that allowed lets
 * through into a (a->cmd set, the rest zeroed or left by an earlier call). With
 * stop_at_positional the scan ends at the first positional argument (the verb);
 * otherwise options and positionals may be mixed (GNU getopt permutes them). Either
 * way a->pos and a->npos are then the positionals. Returns an exit code; a refused
 * option has been reported with ch__usage_error(). */
int ch__opts_parse(ch__args *a, int argc, char **argv, uint64_t allowed, bool stop_at_positional);
/* Releases the JSON values of a (not a itself). */
void ch__args_free(ch__args *a);
/* Prints the usage of a's verb, or of a's command when the verb is not known. */
void ch__usage(FILE *f, const ch__args *a);
/* Prints "charter: <message>" and the usage on stderr; returns CH__EXIT_USAGE. */
int ch__usage_error(const ch__args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* `charter <cmd->name> [common options] <verb> [args]`: parses the command line
 * against cmd, answers --help, checks the positional arguments, opens the client
 * (unless the verb is offline) and runs the verb. Returns the exit code. */
int ch__cmd_main(const ch__cmd *cmd, int argc, char **argv);

/* Prints a successful reply in a's output mode (view for a terminal), releases it and
 * returns the exit code; passes a failed request's rc through. */
int ch__emit(const ch__args *a, int rc, json_t *reply, void (*view)(const json_t *));
/* Sets obj[member] to the {tokens, cost_usd, tool_calls} of a budget or a usage from
 * the options given (tokens and tool_calls CH__OPT_INT, cost CH__OPT_REAL); leaves
 * obj alone when none was. */
void ch__set_amounts(const ch__args *a, json_t *obj, const char *member, int tokens, int cost,
                     int tool_calls);
/* A lifecycle verb of a collection's object: POSTs {} or {"reason"} (reason may be
 * NULL) to <collection>/<ID>/<verb name> and emits the reply with view. */
int ch__post_lifecycle(const ch__args *a, const char *collection, const char *reason,
                       void (*view)(const json_t *));

/* ---------------------------------------------------------------------------------
 * Utilities (util.c). The x* allocators print "charter: out of memory" and exit 1
 * instead of returning NULL: a command line has nothing better to do.
 * ------------------------------------------------------------------------------- */
_Noreturn void ch__oom(void);
void *ch__xrealloc(void *p, size_t n);
char *ch__xstrdup(const char *s);
char *ch__xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
json_t *ch__json_object(void);
/* Sets o[key] = v, taking v's reference; exits on allocation failure (v NULL). */
void ch__json_set(json_t *o, const char *key, json_t *v);

/* Whole-string numbers: no trailing junk, no overflow, finite. */
bool ch__parse_int(const char *s, long long *out);
bool ch__parse_real(const char *s, double *out);

/* Reads all of path ("-" = stdin). Returns malloc'd memory NUL-terminated, *len its
 * length without the NUL; NULL with errno set on failure. */
char *ch__read_file(const char *path, size_t *len);

#endif /* CH_CLI_H */
