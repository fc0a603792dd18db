/*
 * charter/store.h — the storage backend interface, for backend authors.
 *
 * A backend is a versioned table of functions (ch_store_methods) registered by name.
 * Each ch_store is one connection; a backend subclasses it by putting `ch_store` first
 * in its own struct. libcharter opens one writer connection (used only by the writer
 * thread, which batches many requests into one transaction: group commit) and a pool
 * of reader connections (each used by one thread at a time).
 *
 * Contract every backend keeps (tests/unit/test_store.c checks it for each one):
 * - commit() makes a transaction visible; sync() makes every transaction committed
 *   before it was called durable (fsynced). libcharter acknowledges a write only
 *   after a sync() that began after its commit returned. sync() may run on another
 *   thread while the writer commits the next transaction on the same connection,
 *   which is what lets fsync overlap with the next batch's work;
 * - a reader sees every transaction committed before its read began;
 * - savepoint()/release(keep=false) undo exactly the work since the savepoint, so one
 *   failing request in a batch never affects the others;
 * - "not found" is CH_NOT_FOUND, nothing else; storage failures are CH_IO.
 *
 * Methods above a version mark are valid for tables whose `version` is at least it.
 */
#ifndef CHARTER_STORE_H
#define CHARTER_STORE_H

#include "charter.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CH_STORE_VERSION 3

/* Session states. The names are the public `state` values. Add new states last. */
#define CH_SESSION_STATE_MAP(XX)                                                           \
    XX(OPEN, "open") XX(ACTIVE, "active") XX(PAUSED, "paused") XX(INERT, "inert")          \
        XX(CLOSED, "closed") XX(ARCHIVED, "archived")

typedef enum ch_session_state {
#define CH__STATE_ENUM(name, text) CH_SESSION_##name,
    CH_SESSION_STATE_MAP(CH__STATE_ENUM)
#undef CH__STATE_ENUM
        CH__SESSION_STATE_COUNT
} ch_session_state;

/* "open", "active", ...; NULL for an out-of-range value. */
CH_API const char *ch_session_state_name(ch_session_state s);
/* Parses a state name; returns -1 when unknown. */
CH_API int ch_session_state_parse(const char *name);

#define CH_NAME_MAX 257 /* user, agent, mandate: at most 256 bytes */

/* One session row. Strings are NUL-terminated; labels and budget are canonical JSON
 * text owned by the record (malloc'd; ch_session_rec_clear frees them). */
typedef struct ch_session_rec {
    int64_t sid; /* backend's internal key, set by session_insert */
    char id[CH_ID_MAX];
    char tenant[CH_TENANT_MAX];
    char user[CH_NAME_MAX];
    char agent[CH_NAME_MAX];
    char mandate[CH_NAME_MAX]; /* "" when the session has no mandate */
    char *labels;              /* JSON object text, never NULL once stored */
    char *budget;              /* JSON object text, or NULL */
    int64_t usage_tokens;
    double usage_cost_usd;
    int64_t usage_tool_calls;
    ch_session_state state;
    int64_t seq;         /* last event's seq; 0 when none */
    int64_t summary_seq; /* seq of the live summary event; 0 when never compacted */
    int64_t created_at;  /* ms since the epoch */
    int64_t updated_at;  /* ms; last write of any kind (retention measures idleness by it) */
} ch_session_rec;

CH_API void ch_session_rec_clear(ch_session_rec *s);

/* One event as stored: body is the canonical JSON of what was appended (kind, role,
 * content, usage, meta) without seq and at. */
typedef struct ch_event_rec {
    int64_t seq;
    int64_t at;
    const char *body;
    size_t len;
} ch_event_rec;

typedef struct ch_session_filter {
    const char *user;     /* NULL: any */
    int state;            /* -1: any */
    const char *mandate;  /* NULL: any */
    const char *after_id; /* keyset cursor: ids strictly greater; NULL: from the start */
    int limit;
} ch_session_filter;

/* Callbacks return 0 to continue, non-zero to stop early. Pointers they receive are
 * valid only during the call. */
typedef int (*ch_session_cb)(void *arg, const ch_session_rec *s);
typedef int (*ch_event_cb)(void *arg, const ch_event_rec *ev);
typedef int (*ch_fact_cb)(void *arg, const char *key, const char *value, size_t value_len,
                          int64_t updated_at);

/* One mandate as stored: doc is a JSON object with every field of the mandate except
 * its spending, which is kept apart because every append with usage updates it. A
 * lifecycle change (state, reason, updated_at) is stored by mandate_set_state without
 * rewriting the doc: when state is not NULL, those three override the doc's. */
typedef struct ch_mandate_row {
    const char *id;
    const char *tenant;
    const char *doc;
    size_t doc_len;
    int64_t spent_tokens;
    double spent_cost_usd;
    int64_t spent_tool_calls;
    const char *state;  /* NULL: the doc's */
    const char *reason; /* with state: NULL for none */
    int64_t updated_at; /* with state */
} ch_mandate_row;

/* One entry of a tenant's event stream (mandate and session lifecycle events). ids
 * increase in commit order and are never reused. data is a JSON object's text. */
typedef struct ch_stream_row {
    int64_t id;
    const char *tenant;
    const char *type;
    int64_t at;
    const char *data;
    size_t data_len;
} ch_stream_row;

/* One audit record. lineage is the ids from the root mandate down to `mandate`, each
 * followed by '/', so a subtree is a prefix range. data is a JSON object's text. */
typedef struct ch_audit_row {
    int64_t id;
    const char *tenant;
    int64_t at;
    const char *kind;
    const char *mandate; /* "" when none */
    const char *lineage; /* "" when none */
    const char *data;
    size_t data_len;
} ch_audit_row;

typedef int (*ch_mandate_cb)(void *arg, const ch_mandate_row *m);
typedef int (*ch_stream_cb)(void *arg, const ch_stream_row *r);
typedef int (*ch_audit_cb)(void *arg, const ch_audit_row *r);

typedef struct ch_store ch_store;
typedef struct ch_store_methods ch_store_methods;

struct ch_store {
    const ch_store_methods *methods;
};

struct ch_store_methods {
    int version;      /* the CH_STORE_VERSION this table implements */
    const char *name; /* "sqlite" */

    /* ---- version 1 ---- */

    /* Opens a connection on data_dir (creating dir and schema when writer is true). */
    ch_status (*open)(const char *data_dir, bool writer, ch_store **out, ch_err *e);
    void (*close)(ch_store *st);

    /* Write transactions (writer connection only). See the contract above for how
     * commit() and sync() divide visibility and durability. */
    ch_status (*begin)(ch_store *st);
    ch_status (*commit)(ch_store *st);
    ch_status (*sync)(ch_store *st);
    ch_status (*rollback)(ch_store *st);
    ch_status (*savepoint)(ch_store *st);
    /* Ends the innermost savepoint, keeping its work or undoing it. */
    ch_status (*release)(ch_store *st, bool keep);

    /* A consistent snapshot for several reads on one connection. */
    ch_status (*read_begin)(ch_store *st);
    void (*read_end)(ch_store *st);

    /* Tenants and API keys (only hashes are stored). */
    ch_status (*key_put)(ch_store *st, const uint8_t hash[32], const char *tenant, int64_t now);
    ch_status (*key_get)(ch_store *st, const uint8_t hash[32], char tenant[CH_TENANT_MAX]);
    ch_status (*key_count)(ch_store *st, int64_t *n);

    /* Sessions. session_get fails with CH_NOT_FOUND when id is unknown or belongs to
     * another tenant. out must be zeroed or cleared; the caller clears it after. */
    ch_status (*session_insert)(ch_store *st, ch_session_rec *s);
    ch_status (*session_get)(ch_store *st, const char *tenant, const char *id,
                             ch_session_rec *out);
    ch_status (*session_update)(ch_store *st, const ch_session_rec *s);
    /* Deletes the session with its events, archived events and facts. */
    ch_status (*session_delete)(ch_store *st, int64_t sid);
    /* Sessions of tenant in id order, filtered. */
    ch_status (*session_list)(ch_store *st, const char *tenant, const ch_session_filter *f,
                              ch_session_cb cb, void *arg);
    /* Sessions of any tenant in state whose updated_at < before, oldest first. */
    ch_status (*session_due)(ch_store *st, ch_session_state state, int64_t before, int limit,
                             ch_session_cb cb, void *arg);

    /* Events. event_list gives, in seq order, at most limit events with seq > after:
     * with archived < 0 the live log; otherwise the original history, i.e. archived
     * events followed by live events with seq > archived (the summary's seq). */
    ch_status (*event_insert)(ch_store *st, int64_t sid, const ch_event_rec *ev);
    ch_status (*event_list)(ch_store *st, int64_t sid, int64_t after, int limit,
                            int64_t archived, ch_event_cb cb, void *arg);
    /* Moves live events with seq <= through into the archive, except the one at
     * drop_seq (a superseded summary, dropped; 0 for none). *moved = events archived. */
    ch_status (*event_archive)(ch_store *st, int64_t sid, int64_t through, int64_t drop_seq,
                               int64_t *moved);

    /* Facts: value is JSON text. fact_get/fact_delete fail with CH_NOT_FOUND. */
    ch_status (*fact_put)(ch_store *st, int64_t sid, const char *key, const char *value,
                          int64_t now);
    ch_status (*fact_get)(ch_store *st, int64_t sid, const char *key, ch_fact_cb cb, void *arg);
    ch_status (*fact_delete)(ch_store *st, int64_t sid, const char *key);
    ch_status (*fact_list)(ch_store *st, int64_t sid, ch_fact_cb cb, void *arg);

    /* ---- version 2 ---- */

    /* Sessions of tenant bound to mandate, in id order. */
    ch_status (*session_by_mandate)(ch_store *st, const char *tenant, const char *mandate,
                                    ch_session_cb cb, void *arg);

    /* Mandates. mandate_put inserts, or replaces the doc of an existing id (its spending
     * is kept); mandate_spend adds to a mandate's spending (the integer totals saturate at
 * INT64_MAX); mandate_load gives every
     * mandate of every tenant, each after its parent (insertion order). */
    ch_status (*mandate_put)(ch_store *st, const ch_mandate_row *m);
    ch_status (*mandate_spend)(ch_store *st, const char *id, int64_t tokens, double cost_usd,
                               int64_t tool_calls);
    /* Stores a lifecycle change (reason may be NULL); CH_NOT_FOUND for an unknown id.
     * mandate_put clears it (its doc then holds the state). */
    ch_status (*mandate_set_state)(ch_store *st, const char *id, const char *state,
                                   const char *reason, int64_t updated_at);
    ch_status (*mandate_load)(ch_store *st, ch_mandate_cb cb, void *arg);

    /* The event stream. stream_append sets *id; stream_list gives, in id order, at most
     * limit entries of tenant with id > after; stream_last gives the highest id (0 when
     * empty); stream_trim deletes entries older than before (a backend may bound the
     * work of one call: the retention sweep calls it every sweep_interval). */
    ch_status (*stream_append)(ch_store *st, const char *tenant, const char *type, int64_t at,
                               const char *data, int64_t *id);
    ch_status (*stream_list)(ch_store *st, const char *tenant, int64_t after, int limit,
                             ch_stream_cb cb, void *arg);
    ch_status (*stream_last)(ch_store *st, int64_t *id);
    ch_status (*stream_trim)(ch_store *st, int64_t before);

    /* Audit. audit_append assigns the id; audit_list gives, in id order, at most limit
     * records of tenant with id > after whose lineage starts with lineage_prefix (NULL:
     * all). */
    ch_status (*audit_append)(ch_store *st, const ch_audit_row *r);
    ch_status (*audit_list)(ch_store *st, const char *tenant, const char *lineage_prefix,
                            int64_t after, int limit, ch_audit_cb cb, void *arg);

    /* ---- version 3 ---- */

    /* Optional (NULL: libcharter calls session_update): stores what an append changed
     * in session s, which is only seq, the usage totals and updated_at. Appends are
     * the hot path, and a backend can then leave every other column and its indexes
     * untouched. CH_NOT_FOUND when the session does not exist. */
    ch_status (*session_progress)(ch_store *st, const ch_session_rec *s);
    /* Optional (NULL: libcharter calls event_insert for each): inserts the n events of
     * one append to sid, whose seqs follow each other, as event_insert would each
     * (CH_EXISTS for a seq sid already has). A backend sees the whole append at once,
     * so it can lay out a large one differently from a single event. */
    ch_status (*event_append)(ch_store *st, int64_t sid, const ch_event_rec *evs, int n);
};

/* ---------------------------------------------------------------------------------
 * Ephemeral scope engines: where the context of a `scoped` ephemeral scope lives.
 *
 * charter keeps every scope's clock, lock, flow and owner in its own memory and
 * decides expiry itself (timers, then the GC sweep); an engine only holds context
 * text. So an engine needs no notion of time beyond a backstop: `expires_at` is the
 * scope's deadline when the call was made. charter may still read the context for up
 * to ephemeral.lock_grace + ephemeral.gc_interval after it (a locked scope's grace, a
 * sweep that finds a scope late), so an engine that expires data on its own keeps it
 * at least that much longer (the Redis engine adds both and one second) — that only
 * serves to make sure nothing outlives a crashed server.
 *
 * Contract every engine keeps (tests/unit/test_scope_engines.c checks it for each):
 * - open() removes every scope a previous run left behind: scopes never survive a
 *   restart;
 * - calls for one scope id never overlap (charter serializes them), calls for
 *   different ids may come from several threads at once;
 * - `slot` is one pointer charter keeps beside each scope for the engine's own use
 *   (NULL before the first put; the memory engine keeps the text there). Engines that
 *   address context by id ignore it;
 * - get() hands the text to cb, valid only during the call; CH_NOT_FOUND when the
 *   scope has no context stored;
 * - failures to reach the engine are CH_UNAVAILABLE, other storage failures CH_IO.
 * ------------------------------------------------------------------------------- */
#define CH_SCOPE_ENGINE_VERSION 2

typedef struct ch_scope_engine ch_scope_engine;
typedef struct ch_scope_engine_methods ch_scope_engine_methods;
typedef void (*ch_scope_text_cb)(void *arg, const char *text, size_t len);

struct ch_scope_engine {
    const ch_scope_engine_methods *methods;
};

struct ch_scope_engine_methods {
    int version;      /* the CH_SCOPE_ENGINE_VERSION this table implements */
    const char *name; /* "memory", "sqlite", "redis" */

    /* Opens the engine for cfg (data_dir, ephemeral.redis_url) and removes what a
     * previous run left. */
    ch_status (*open)(const ch_config *cfg, ch_scope_engine **out, ch_err *e);
    void (*close)(ch_scope_engine *en);

    /* Stores text (len bytes, a JSON object) as the whole context of id. */
    ch_status (*put)(ch_scope_engine *en, const char *id, void **slot, const char *text,
                     size_t len, int64_t expires_at);
    ch_status (*get)(ch_scope_engine *en, const char *id, void *const *slot, ch_scope_text_cb cb,
                     void *arg);
    /* Removes id's context (CH_OK when there was none) and clears *slot. */
    ch_status (*del)(ch_scope_engine *en, const char *id, void **slot);
    /* Moves the backstop; NULL when the engine has none. */
    ch_status (*expire)(ch_scope_engine *en, const char *id, void *const *slot,
                        int64_t expires_at);

    /* ---- version 2: optional single-key access ----
     * An engine that can reach one key of a context without reading and rewriting the
     * whole text sets these (NULL otherwise: charter then reads, changes and puts the
     * whole context). `key` is the key as JSON string text, quotes included; `value`
     * is a JSON value's text. put_key sets or replaces the key, refusing with
     * CH_INVALID_VALUE (and changing nothing) when the whole context would exceed max
     * bytes, and sets *total to the context's new length. get_key hands the value text
     * to cb; CH_NOT_FOUND when the context has no such key. */
    ch_status (*put_key)(ch_scope_engine *en, const char *id, void **slot, const char *key,
                         size_t klen, const char *value, size_t vlen, size_t max,
                         int64_t expires_at, size_t *total);
    ch_status (*get_key)(ch_scope_engine *en, const char *id, void *const *slot, const char *key,
                         size_t klen, ch_scope_text_cb cb, void *arg);
};

/* Registers an engine under methods->name (before ch_db_open). The built-in "memory",
 * "sqlite" and "redis" engines are always registered. CH_EXISTS if the name is taken. */
CH_API ch_status ch_scope_engine_register(const ch_scope_engine_methods *methods);
/* The engine registered under name, or NULL. */
CH_API const ch_scope_engine_methods *ch_scope_engine_find(const char *name);

/* Registers a backend under methods->name (before ch_db_open). The built-in "sqlite"
 * backend is always registered. CH_EXISTS if the name is taken. */
CH_API ch_status ch_store_register(const ch_store_methods *methods);
/* The backend registered under name, or NULL. */
CH_API const ch_store_methods *ch_store_find(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* CHARTER_STORE_H */
