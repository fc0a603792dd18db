/*
 * charter.h — the public API of libcharter.
 *
 * libcharter holds all of charter's behaviour: the sessions system of record, its
 * storage, and the core helpers (ids, time, status codes, canonical JSON, config,
 * logging). `charter serve` is a thin HTTP adapter over it; a C/C++ host can link it
 * and call it in-process.
 *
 * Conventions: every function that can fail returns a ch_status and, where it takes
 * a ch_err, fills it with the code, a human message and the offending field. Memory
 * a function returns is the caller's unless its doc block says otherwise; json_t
 * values are released with json_decref().
 */
#ifndef CHARTER_H
#define CHARTER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CH_API __attribute__((visibility("default")))

/* ---------------------------------------------------------------------------------
 * Status codes. One X-macro gives the enum, ch_strerror() and ch_status_name(); the
 * name is the JSON error `code` of the HTTP API. Add new codes last, never remove.
 * ------------------------------------------------------------------------------- */
#define CH_STATUS_MAP(XX)                                                                  \
    XX(OK, "ok", "success")                                                                \
    XX(BAD_JSON, "bad_json", "request body is not valid JSON")                             \
    XX(BAD_REQUEST, "bad_request", "malformed request")                                    \
    XX(MISSING_FIELD, "missing_field", "a required field is missing")                      \
    XX(INVALID_TYPE, "invalid_type", "a field has the wrong type")                         \
    XX(UNKNOWN_FIELD, "unknown_field", "unknown field")                                    \
    XX(UNAUTHORIZED, "unauthorized", "missing or invalid API key")                         \
    XX(NOT_FOUND, "not_found", "not found")                                                \
    XX(METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed")                     \
    XX(SEQ_CONFLICT, "seq_conflict", "expect_seq does not match the session's seq")        \
    XX(INVALID_TRANSITION, "invalid_transition", "transition not allowed from this state") \
    XX(INVALID_STATE, "invalid_state", "operation not allowed in this state")              \
    XX(MANDATE_INACTIVE, "mandate_inactive", "the session's mandate does not hold")        \
    XX(BODY_TOO_LARGE, "body_too_large", "request body too large")                         \
    XX(INVALID_VALUE, "invalid_value", "a field has an invalid value")                     \
    XX(RESERVED_KIND, "reserved_kind", "event kind is reserved to charter")                \
    XX(SHUTTING_DOWN, "shutting_down", "server is shutting down")                          \
    XX(NOMEM, "internal", "out of memory")                                                 \
    XX(IO, "internal", "storage error")                                                    \
    XX(INTERNAL, "internal", "internal error")                                             \
    XX(CONFIG, "config", "invalid configuration")                                          \
    XX(EXISTS, "exists", "already exists")                                                 \
    XX(NOT_SUBSET, "not_subset", "exceeds the authority it derives from")                  \
    XX(NO_CHANGE, "no_change", "the request changes nothing")                              \
    XX(SCOPE_LOCKED, "scope_locked", "the scope is locked")                                \
    XX(UNAVAILABLE, "unavailable", "a backing service is unavailable")

typedef enum ch_status {
#define CH__STATUS_ENUM(name, code, msg) CH_##name,
    CH_STATUS_MAP(CH__STATUS_ENUM)
#undef CH__STATUS_ENUM
        CH__STATUS_COUNT
} ch_status;

/* The human message for a status ("expect_seq does not match ..."). Never NULL. */
CH_API const char *ch_strerror(ch_status st);
/* The stable machine name of a status: the JSON error `code`. Never NULL. */
CH_API const char *ch_status_name(ch_status st);

/* An error with context: what went wrong, which field, and in which state. */
typedef struct ch_err {
    ch_status status;
    char message[256];
    char field[128];  /* dotted path of the offending input field, or "" */
    char state[16];   /* current state when that is the reason, or "" */
} ch_err;

/* Clears e to CH_OK. */
CH_API void ch_err_clear(ch_err *e);
/* Sets e (which may be NULL) and returns st. field may be NULL; fmt NULL uses
 * ch_strerror(st). */
CH_API ch_status ch_err_set(ch_err *e, ch_status st, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---------------------------------------------------------------------------------
 * Ids: "<prefix>_<ULID>". 48 bits of milliseconds then 80 random bits from
 * libsodium's CSPRNG, Crockford base32; monotonic within a millisecond in a process.
 * ------------------------------------------------------------------------------- */
#define CH_ID_MAX 48

/* Writes a new id with prefix ("sess") into out (CH_ID_MAX bytes). */
CH_API void ch_id_new(const char *prefix, char out[CH_ID_MAX]);
/* The same form with all 128 bits random (no time part): for ids that must not be
 * guessable, such as ephemeral scopes ("eph_..."). */
CH_API void ch_id_new_random(const char *prefix, char out[CH_ID_MAX]);
/* True when s is a well-formed id with this prefix. */
CH_API bool ch_id_valid(const char *prefix, const char *s);

/* ---------------------------------------------------------------------------------
 * Time and quantities
 * ------------------------------------------------------------------------------- */
/* Wall clock, milliseconds since the Unix epoch. */
CH_API int64_t ch_now_ms(void);
/* Monotonic clock in nanoseconds (for latencies). */
CH_API uint64_t ch_mono_ns(void);
/* Formats ms as RFC 3339 UTC with milliseconds; out holds at least 32 bytes. */
CH_API void ch_time_format(int64_t ms, char out[32]);
/* Parses "500ms", "30s", "5m", "24h", "7d" (or a bare "0") into milliseconds. */
/* Parses an RFC 3339 date-time (`2026-11-21T05:00:00Z`, fractions to milliseconds,
 * `Z` or a `±hh:mm` offset) into ms since the epoch; CH_INVALID_VALUE otherwise. */
CH_API ch_status ch_time_parse(const char *s, int64_t *ms);
CH_API ch_status ch_duration_parse(const char *s, int64_t *ms);
/* Parses a byte size: "1048576", "512KiB", "1MiB", "1MB", "2GiB". */
CH_API ch_status ch_size_parse(const char *s, uint64_t *bytes);

/* ---------------------------------------------------------------------------------
 * Canonical JSON and hashing
 * ------------------------------------------------------------------------------- */
/* Serializes v canonically: object keys sorted, no insignificant whitespace.
 * Returns a malloc'd NUL-terminated string (free()), or NULL on failure; *len (if
 * not NULL) receives its length. */
CH_API char *ch_json_canonical(const json_t *v, size_t *len);
/* SHA-256 (libsodium) of the canonical serialization of v. */
CH_API ch_status ch_json_sha256(const json_t *v, uint8_t out[32]);
/* Overwrites every string value in v (recursively) with zeros, for callers that held
 * a secret in a parsed tree; keys and numbers are left as they are. */
CH_API void ch_json_wipe(json_t *v);
/* Parses a request body: it must be UTF-8 JSON, at most 64 levels deep, and an
 * object. On failure fills e (bad_json / bad_request) and returns NULL. */
CH_API json_t *ch_json_parse_object(const char *buf, size_t len, ch_err *e);

/* ---------------------------------------------------------------------------------
 * Logging: one JSON object per line on stderr.
 * ------------------------------------------------------------------------------- */
typedef enum ch_log_level { CH_LOG_DEBUG, CH_LOG_INFO, CH_LOG_WARN, CH_LOG_ERROR } ch_log_level;

CH_API void ch_log_set_level(ch_log_level level);
CH_API ch_status ch_log_level_parse(const char *s, ch_log_level *out);
/* Logs event msg with fields built by jansson's json_pack from fmt (an object
 * format such as "{s:s, s:i}"), or no fields when fmt is NULL. */
CH_API void ch_log(ch_log_level level, const char *msg, const char *fmt, ...);

/* ---------------------------------------------------------------------------------
 * Configuration: defaults, then charter.yaml, then flags, then CHARTER_* env.
 * ------------------------------------------------------------------------------- */
typedef struct ch_retention {
    int64_t close_idle_after;      /* ms; 0 = never. open/active idle → closed */
    int64_t archive_closed_after;  /* ms; 0 = never. closed → archived */
    int64_t delete_archived_after; /* ms; 0 = never. archived → deleted */
    int64_t sweep_interval;        /* ms between sweeps */
} ch_retention;

/* ephemeral.*: the clock and engine of ephemeral scopes. Durations in ms. */
typedef struct ch_ephemeral_config {
    char engine[32];      /* "memory" (default), "sqlite", "redis" */
    char redis_url[256];  /* redis://HOST:PORT[/DB] */
    int64_t default_ttl;  /* 600s */
    int64_t max_ttl;      /* 3600s: no scope lives longer than this from its creation */
    int64_t idle_ttl;     /* 0 = none */
    int64_t command_ttl;  /* 60s: default lifetime of a `command` scope */
    int64_t gc_interval;  /* 30s: the sweep that backs up the timers */
    int64_t lock_grace;   /* 60s: extra time a locked scope gets at its deadline */
    bool purge_on_error;  /* an engine failure on a scope destroys the scope */
    bool log_evictions;   /* one log line (id, reason) per eviction */
    bool exact_expiry;    /* per-scope timers; false leaves expiry to the GC sweep */
} ch_ephemeral_config;

typedef struct ch_config {
    char listen[256];     /* "127.0.0.1:7433" */
    char data_dir[1024];  /* "./charter-data" */
    char store[32];       /* backend name: "sqlite" */
    int threads;          /* HTTP event loops; 0 = one per core */
    uint64_t max_body;    /* bytes; default 1 MiB */
    ch_log_level log_level;
    int64_t drain_timeout; /* ms SIGTERM waits for in-flight requests */
    ch_retention retention;
    int64_t max_staleness;    /* ms: mandates.max_staleness, longest artifact life (30s) */
    int64_t events_retention; /* ms: events.retention, stream history kept (7d; 0 = all) */
    bool core_dumps;          /* false: `charter serve` makes itself undumpable */
    ch_ephemeral_config ephemeral;
} ch_config;

/* Fills c with the built-in defaults. */
CH_API void ch_config_defaults(ch_config *c);
/* Sets one key by its dotted name ("sessions.retention.sweep_interval") from text. */
CH_API ch_status ch_config_set(ch_config *c, const char *key, const char *value, ch_err *e);
/* Applies a YAML file. Unknown keys are errors (a typo must not pass silently). */
CH_API ch_status ch_config_load_file(ch_config *c, const char *path, ch_err *e);
/* Applies CHARTER_<KEY> variables, the dotted key upper-cased with '_' for '.'. */
CH_API ch_status ch_config_load_env(ch_config *c, ch_err *e);
/* The config as a JSON object (for `charter serve --print-config`). */
CH_API json_t *ch_config_to_json(const ch_config *c);

/* ---------------------------------------------------------------------------------
 * Metrics: counters and histograms with atomic updates, rendered in Prometheus text.
 * ------------------------------------------------------------------------------- */
#define CH_HIST_BUCKETS 16

typedef struct ch_histogram {
    const double *bounds; /* upper bounds, CH_HIST_BUCKETS of them (last is +Inf) */
    uint64_t counts[CH_HIST_BUCKETS];
    uint64_t count;
    double sum;
} ch_histogram;

/* Bucket bounds for latencies in seconds and for sizes (batch counts). */
CH_API extern const double ch_hist_latency_bounds[CH_HIST_BUCKETS];
CH_API extern const double ch_hist_size_bounds[CH_HIST_BUCKETS];
CH_API void ch_histogram_observe(ch_histogram *h, double v);
/* Appends the Prometheus text of h with name and labels ("route=\"x\"" or "") to buf. */
typedef struct ch_buf ch_buf;
CH_API void ch_histogram_render(const ch_histogram *h, const char *name, const char *labels,
                                ch_buf *out);

/* A growable byte buffer (used for replies and metrics text). */
struct ch_buf {
    char *data;
    size_t len, cap;
};
CH_API void ch_buf_append(ch_buf *b, const void *p, size_t n);
CH_API void ch_buf_printf(ch_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
CH_API void ch_buf_free(ch_buf *b);

/* ---------------------------------------------------------------------------------
 * The database: one handle per process over a data dir. It owns the storage
 * backend, a pool of read connections, the writer thread (group commit) and the
 * retention sweeper.
 * ------------------------------------------------------------------------------- */
typedef struct ch_db ch_db;

/* Opens (creating if needed) the data dir of cfg and starts the writer. With
 * background true it also runs the background work that changes state on its own:
 * the retention sweep and the mandate expiry timer. Offline admin commands that open
 * the data dir beside a running server (charter keys create) pass false, so that only
 * the server acts on the clock. */
CH_API ch_status ch_db_open(const ch_config *cfg, bool background, ch_db **out, ch_err *e);
/* Drains queued writes (each is committed and completed), stops the threads, closes. */
CH_API void ch_db_close(ch_db *db);
/* Commit statistics for /metrics: batch sizes and commit (fsync) latency. The
 * histograms are owned by db and updated atomically. */
CH_API void ch_db_render_metrics(ch_db *db, ch_buf *out);

/* ---------------------------------------------------------------------------------
 * Tenants and API keys. A key is "chk_" + 43 base64url chars (32 random bytes); only
 * its SHA-256 is stored.
 * ------------------------------------------------------------------------------- */
#define CH_TENANT_MAX 65
#define CH_KEY_MAX 64

/* Creates tenant (if new) and a key for it; writes the key text to key_out. */
CH_API ch_status ch_key_create(ch_db *db, const char *tenant, char key_out[CH_KEY_MAX], ch_err *e);
/* Resolves a presented key to its tenant. CH_UNAUTHORIZED when unknown. */
CH_API ch_status ch_key_lookup(ch_db *db, const char *key, char tenant_out[CH_TENANT_MAX]);
/* Number of keys stored (0 on a fresh data dir). */
CH_API ch_status ch_key_count(ch_db *db, int64_t *n);
/* True for a valid tenant name: 1-64 of [a-z0-9_-]. */
CH_API bool ch_tenant_valid(const char *t);

/* ---------------------------------------------------------------------------------
 * Writes. Every write is a ch_req run by the writer thread inside a group commit.
 * ch_submit() validates on the calling thread; if that fails it returns the error
 * (in req->err too) and req->done is never called. Otherwise it returns CH_OK and
 * req->done(req) is called exactly once, on libcharter's syncer thread, after the
 * commit holding the write is fsynced (or after it failed). done must not block; it
 * typically hands the request to the caller's own thread. ch_call() is the blocking
 * form.
 * ------------------------------------------------------------------------------- */
typedef enum ch_op {
    CH_OP_SESSION_CREATE,  /* body: {user, agent, mandate?, labels?, budget?} */
    CH_OP_SESSION_APPEND,  /* id; body: one event or {events:[...]}, expect_seq? */
    CH_OP_SESSION_PAUSE,   /* id; body: {reason?} or NULL */
    CH_OP_SESSION_RESUME,  /* id; body: {} or NULL */
    CH_OP_SESSION_CLOSE,   /* id; body: {reason?} or NULL */
    CH_OP_SESSION_ARCHIVE, /* id; body: {reason?} or NULL */
    CH_OP_SESSION_COMPACT, /* id; body: {through_seq, summary} */
    CH_OP_FACT_PUT,        /* id, key; body: {value} */
    CH_OP_FACT_DELETE,     /* id, key */
    CH_OP_KEY_CREATE,      /* internal: see ch_key_create() */
    CH_OP_RETENTION_SWEEP, /* internal: one retention pass */
    CH_OP_MANDATE_CREATE,    /* body: see docs/api.md */
    CH_OP_MANDATE_DELEGATE,  /* id = parent; body: the child */
    CH_OP_MANDATE_PATCH,     /* id; body: {scope?, expires_at?, conditions?} */
    CH_OP_MANDATE_APPROVE,   /* id; body: {reason?} or NULL (as for the four below) */
    CH_OP_MANDATE_SUSPEND,   /* id */
    CH_OP_MANDATE_REINSTATE, /* id */
    CH_OP_MANDATE_REVOKE,    /* id */
    CH_OP_MANDATE_COMPLETE,  /* id */
    CH_OP_MANDATE_EXPIRE,    /* internal: body = array of ids whose deadline passed */
    CH_OP_AUDIT_FLUSH,       /* internal: writes queued check decisions */
    CH_OP_SCOPE_COMPLETE,    /* id = scope; body: {session?, keys?, transfer_secrets?} */
    CH_OP_STREAM_PUBLISH,    /* internal: body = array of {tenant, type, data} */
    CH__OP_COUNT
} ch_op;

typedef struct ch_req ch_req;
struct ch_req {
    /* input, set by the caller */
    ch_op op;
    char tenant[CH_TENANT_MAX];
    char id[CH_ID_MAX];   /* target session id */
    char *key;            /* fact key (borrowed; must outlive the request) */
    json_t *body;         /* request body; a reference is taken by ch_submit */
    void (*done)(ch_req *req);
    void *udata;
    /* output */
    ch_err err;     /* err.status == CH_OK on success */
    json_t *result; /* reply document on success; caller json_decref()s */
    /* private to libcharter */
    struct ch__req_priv *priv;
    ch_req *next;
};

/* Validates req and queues it for the writer. See above for the contract. */
CH_API ch_status ch_submit(ch_db *db, ch_req *req);
/* Submits req and waits for its completion; returns req->err.status. req->done and
 * req->udata are used internally and must not be set. */
CH_API ch_status ch_call(ch_db *db, ch_req *req);
/* Releases what a completed req holds (body, result, private data). */
CH_API void ch_req_dispose(ch_req *req);

/* ---------------------------------------------------------------------------------
 * Reads. They run on the calling thread against a pooled read connection and see
 * every acknowledged write. On success *out is a new reference the caller owns.
 * ------------------------------------------------------------------------------- */
typedef struct ch_session_query {
    const char *user;    /* NULL: any */
    const char *state;   /* NULL: any */
    const char *mandate; /* NULL: any */
    const char *cursor;  /* NULL: from the start */
    int limit;           /* 1..1000 */
} ch_session_query;

CH_API ch_status ch_session_get(ch_db *db, const char *tenant, const char *id, json_t **out,
                                ch_err *e);
/* {sessions:[...], next_cursor} */
CH_API ch_status ch_session_list(ch_db *db, const char *tenant, const ch_session_query *q,
                                 json_t **out, ch_err *e);
/* {events:[...], next_after}; limit 1..1000 */
CH_API ch_status ch_events_list(ch_db *db, const char *tenant, const char *id, int64_t after,
                                int limit, bool archived, json_t **out, ch_err *e);
/* {key, value, updated_at} */
CH_API ch_status ch_fact_get(ch_db *db, const char *tenant, const char *id, const char *key,
                             json_t **out, ch_err *e);
/* {facts:{...}} */
CH_API ch_status ch_facts_list(ch_db *db, const char *tenant, const char *id, json_t **out,
                               ch_err *e);
/* {session, facts, summary, events, next_after}; limit 1..10000 */
CH_API ch_status ch_bundle(ch_db *db, const char *tenant, const char *id, int limit,
                           json_t **out, ch_err *e);

/* ---------------------------------------------------------------------------------
 * Mandates: reads and the check. Writes are ch_req operations (CH_OP_MANDATE_*).
 * ------------------------------------------------------------------------------- */

/* The mandate's public JSON (see docs/api.md). */
CH_API ch_status ch_mandate_get(ch_db *db, const char *tenant, const char *id, json_t **out,
                                ch_err *e);
/* {mandate, ancestors:[...], descendants:[...]} */
CH_API ch_status ch_mandate_tree(ch_db *db, const char *tenant, const char *id, json_t **out,
                                 ch_err *e);
/* Issues a signed artifact for an active mandate; body {ttl}. {artifact, expires_at,
 * version}. */
CH_API ch_status ch_mandate_artifact(ch_db *db, const char *tenant, const char *id,
                                     const json_t *body, json_t **out, ch_err *e);
/* The public half of the artifact signing key, as a JWK (new reference). */
CH_API json_t *ch_signing_key(ch_db *db);

typedef struct ch_action {
    const char *tool, *lane, *resource, *cls;
} ch_action;

typedef struct ch_decision {
    bool allow;
    const char *reason;      /* "ok" or a deny reason (static) */
    int64_t mandate_version; /* 0 when the mandate is unknown */
    char decision_id[CH_ID_MAX];
    int64_t checked_at; /* ms */
} ch_decision;

/* The one check: is mandate (of tenant) valid now, and is action within its bounds?
 * Answered from memory; never blocks on storage. actor and session may be NULL.
 * Every decision is queued for the audit log. */
CH_API void ch_check(ch_db *db, const char *tenant, const char *mandate, const char *actor,
                     const char *session, const ch_action *action, ch_decision *out);
/* The HTTP form: body {mandate | artifact, actor?, session?, action}; *out is the reply
 * object. Fails only on a malformed body. */
CH_API ch_status ch_check_json(ch_db *db, const char *tenant, const json_t *body, json_t **out,
                               ch_err *e);
/* The same, with the reply appended to out as JSON text (the server's path: it builds
 * no JSON tree for the reply). */
CH_API ch_status ch_check_text(ch_db *db, const char *tenant, const json_t *body, ch_buf *out,
                               ch_err *e);

/* {records:[...], next_after}: audit records of tenant, of mandate's subtree when
 * mandate is not NULL; limit 1..1000. */
CH_API ch_status ch_audit_list(ch_db *db, const char *tenant, const char *mandate,
                               int64_t after, int limit, json_t **out, ch_err *e);

/* ---------------------------------------------------------------------------------
 * The event stream: mandate and session lifecycle events, persisted in commit order.
 * ------------------------------------------------------------------------------- */

/* {events:[{id, type, at, ...}], last_id}: at most limit (1..1000) events of tenant
 * with id > after. */
CH_API ch_status ch_stream_list(ch_db *db, const char *tenant, int64_t after, int limit,
                                json_t **out, ch_err *e);
/* The id of the last durable stream event (0 when none). */
CH_API int64_t ch_stream_last(ch_db *db);
/* Registers fn, called on libcharter's syncer thread with the last durable id each
 * time new stream events have been made durable. fn must not block. Set it before
 * writes start; one listener. */
CH_API void ch_db_on_stream(ch_db *db, void (*fn)(void *arg, int64_t last_id), void *arg);

/* ---------------------------------------------------------------------------------
 * Ephemeral scopes: short-lived JSON context for one agent and task, with a clock
 * (ttl, idle_ttl, auto-extension up to ephemeral.max_ttl), a lock, and a flow
 * (`command`, `scoped`, `secure`). They live in memory and in the configured engine,
 * never survive a restart, and are answered on the calling thread without touching
 * the durable store. Completion (CH_OP_SCOPE_COMPLETE) is a write: it copies chosen
 * keys into a session's facts through the writer, then purges the scope.
 *
 * Each call appends its reply, a JSON object's text, to out (see docs/api.md for the
 * shapes) and counts as a use of the scope (idle time restarts; auto_extend scopes
 * move their deadline). Another tenant's scope is CH_NOT_FOUND; a mutation of a locked
 * scope is CH_SCOPE_LOCKED.
 * ------------------------------------------------------------------------------- */
typedef enum ch_scope_verb {
    CH_SCOPE_LOCK,    /* body: NULL */
    CH_SCOPE_UNLOCK,  /* body: NULL */
    CH_SCOPE_EXTEND,  /* body: {ttl} */
    CH_SCOPE_UPGRADE, /* body: {ttl?} or NULL: a `command` scope becomes `scoped` */
} ch_scope_verb;

/* body: {agent, ttl?, idle_ttl?, flow?, auto_extend?, context?} → the scope. */
CH_API ch_status ch_scope_create(ch_db *db, const char *tenant, const json_t *body, ch_buf *out,
                                 ch_err *e);
CH_API ch_status ch_scope_get(ch_db *db, const char *tenant, const char *id, ch_buf *out,
                              ch_err *e);
/* body: {context}: keys set, a null value removes the key → the scope. */
CH_API ch_status ch_scope_merge(ch_db *db, const char *tenant, const char *id,
                                const json_t *body, ch_buf *out, ch_err *e);
/* body: {value} → {key, value, expires_at}. */
CH_API ch_status ch_scope_put_key(ch_db *db, const char *tenant, const char *id, const char *key,
                                  const json_t *body, ch_buf *out, ch_err *e);
/* → {key, value}; CH_NOT_FOUND (field "key") when the context has no such key. */
CH_API ch_status ch_scope_get_key(ch_db *db, const char *tenant, const char *id, const char *key,
                                  ch_buf *out, ch_err *e);
/* lock, unlock, extend, upgrade → the scope. */
CH_API ch_status ch_scope_act(ch_db *db, const char *tenant, const char *id, ch_scope_verb verb,
                              const json_t *body, ch_buf *out, ch_err *e);
/* Purges the scope (reason `purged`). */
CH_API ch_status ch_scope_delete(ch_db *db, const char *tenant, const char *id, ch_err *e);
/* The agent has exited: purges every scope of (tenant, agent), locked or not, with
 * reason `agent_exited` → {agent, purged}. */
CH_API ch_status ch_scope_purge_agent(ch_db *db, const char *tenant, const char *agent,
                                      ch_buf *out, ch_err *e);
/* Prometheus text of the scope metrics (appended to out). */
CH_API void ch_scope_render_metrics(ch_db *db, ch_buf *out);

/* ---------------------------------------------------------------------------------
 * Mandate artifacts: offline verification of the signed tokens that
 * POST /v1/mandates/{id}/artifact issues.
 * ------------------------------------------------------------------------------- */

/* Verifies an artifact against the server's public key, given as the JWK JSON text
 * that GET /v1/keys/signing returns (jwk_len bytes): token format, algorithm, key id,
 * Ed25519 signature, and expiry (exp must be later than now_ms). Returns CH_OK, or
 * CH_INVALID_VALUE with e saying which part failed. On success and when claims is not
 * NULL, *claims is a new reference to the payload object. */
CH_API ch_status ch_artifact_verify(const char *jwk, size_t jwk_len, const char *token,
                                    int64_t now_ms, json_t **claims, ch_err *e);

/* Decides one action from verified claims, offline. Only `read` and `write` may be
 * decided this way: `external` and `irreversible` answer false with *reason
 * "online_check_required" (fail closed). Otherwise *reason is "ok" or one of
 * "tool_out_of_scope", "lane_out_of_scope", "resource_out_of_scope",
 * "class_out_of_scope" (an unknown class is "class_out_of_scope"). */
CH_API bool ch_artifact_decide(const json_t *claims, const char *tool, const char *lane,
                               const char *resource, const char *cls, const char **reason);

#ifdef __cplusplus
}
#endif
#endif /* CHARTER_H */
