/*
 * internal.h — declarations shared between libcharter's modules (ch__ names), never
 * part of the public API.
 */
#ifndef CHARTER_INTERNAL_H
#define CHARTER_INTERNAL_H

#include <pthread.h>

#include "charter.h"
#include "charter/store.h"

/* One kind of write: prepare runs on the submitting thread (validation and any work
 * that needs no storage, so the writer thread does as little as possible); exec runs
 * on the writer thread inside a savepoint of the current group commit and fills
 * req->result, or req->err and returns its status (the savepoint is then undone). */
typedef struct ch__op_def {
    ch_status (*prepare)(ch_db *db, ch_req *req);
    ch_status (*exec)(ch_db *db, ch_store *w, ch_req *req);
    /* Optional: runs on the syncer thread once the request's outcome is final (its
     * commit durable, or failed), just before done(). */
    void (*finish)(ch_db *db, ch_req *req);
} ch__op_def;

/* What libcharter keeps per request between prepare and exec. */
struct ch__req_priv {
    void *prep;                  /* op-specific prepared data */
    void (*prep_free)(void *);   /* frees prep */
    pthread_mutex_t mu;          /* ch_call(): completion wait */
    pthread_cond_t cv;
    bool finished;
};

/* The operations defined by each module, indexed by ch_op (NULL where not theirs). */
extern const ch__op_def *const ch__session_ops[CH__OP_COUNT];
extern const ch__op_def *const ch__key_ops[CH__OP_COUNT];
extern const ch__op_def *const ch__mandate_ops[CH__OP_COUNT];
extern const ch__op_def *const ch__scope_ops[CH__OP_COUNT];

/* The db's backend, mandate registry, audit queue and signer. */
const ch_store_methods *ch__db_store(ch_db *db);
struct ch__registry *ch__db_registry(ch_db *db);
struct ch__audit_queue *ch__db_audit(ch_db *db);
const struct ch__signer *ch__db_signer(ch_db *db);

/* Appends the mandate metrics (decisions by reason, audit queue, mandates by state). */
void ch__mandate_metrics(ch_db *db, ch_buf *out);

/* The writer's pending mandate changes (registry.c): a request's changes are undone
 * back to the mark taken before it when its savepoint is undone; a batch's are
 * published after its commit. */
size_t ch__registry_mark(struct ch__registry *reg);
void ch__registry_undo(struct ch__registry *reg, size_t mark);
void ch__registry_publish(struct ch__registry *reg);

/* Appends an event to tenant's stream inside the current transaction (data is a JSON
 * object, stolen). Writer only. */
ch_status ch__stream_emit(ch_db *db, ch_store *w, const char *tenant, const char *type,
                          json_t *data, int64_t now);
/* The same with data already as JSON object text (not consumed). */
ch_status ch__stream_emit_text(ch_db *db, ch_store *w, const char *tenant, const char *type,
                               const char *data, int64_t now);
/* Writer: the highest stream id written by the current batch so far (db.c). */
void ch__db_stream_wrote(ch_db *db, int64_t id);

/* A session being created with `mandate`: CH_OK when the mandate exists in tenant and
 * holds; CH_INVALID_VALUE (unknown) or CH_MANDATE_INACTIVE. Writer only. */
ch_status ch__mandate_may_bind(ch_db *db, const char *tenant, const char *mandate, ch_err *e);
/* Does mandate (of tenant) hold now: it and every ancestor active and unexpired?
 * CH_OK or CH_MANDATE_INACTIVE (e->state: the mandate's state). Writer only. */
ch_status ch__mandate_may_continue(ch_db *db, const char *tenant, const char *mandate,
                                   ch_err *e);
/* Adds a session's usage to its mandate and every ancestor. Writer only. */
ch_status ch__mandate_spend(ch_db *db, ch_store *w, const char *tenant, const char *mandate,
                            int64_t tokens, double cost_usd, int64_t tool_calls);
/* Moves every open/active/paused session of tenant bound to mandate to `inert`, with
 * a lifecycle event (reason, and cause: the mandate whose change it was). */
ch_status ch__sessions_inert(ch_db *db, ch_store *w, const char *tenant, const char *mandate,
                             const char *reason, const char *cause, int64_t now);

/* The db's configuration (owned by db). */
const ch_config *ch__db_config(ch_db *db);

/* Borrows a reader connection from the pool; give it back with ch__reader_put. */
ch_store *ch__reader_get(ch_db *db, ch_err *e);
void ch__reader_put(ch_db *db, ch_store *r);

/* The built-in SQLite backend. */
extern const ch_store_methods ch__sqlite_methods;

/* The built-in ephemeral scope engines, and the one `secure` scopes always use:
 * process memory from libsodium's guarded allocator (locked, excluded from core
 * dumps, wiped when freed). It is not registered, so it cannot be configured away. */
extern const ch_scope_engine_methods ch__scope_memory_methods;
extern const ch_scope_engine_methods ch__scope_sqlite_methods;
extern const ch_scope_engine_methods ch__scope_redis_methods;
extern const ch_scope_engine_methods ch__scope_secure_methods;

/* "May this session continue?" — the one question every resume, append and move out
 * of `inert` asks before going on. Returns CH_OK, or CH_MANDATE_INACTIVE with e
 * filled. This is the seam the mandate layer plugs into. */
ch_status ch__session_may_continue(ch_db *db, ch_store *w, const ch_session_rec *s, ch_err *e);

/* Appends one charter-written event (lifecycle, summary) to s at s->seq + 1. */
ch_status ch__session_append_system(ch_store *w, ch_session_rec *s, const char *kind,
                                    json_t *content, int64_t now);

/* Writes each key of facts (an object) as a fact of session id (of tenant), in the
 * current transaction. An unknown session is CH_INVALID_VALUE naming "session". */
ch_status ch__session_put_facts(ch_store *w, const char *tenant, const char *id,
                               const json_t *facts, int64_t now, ch_err *e);

/* Builds the public JSON of a session record. */
json_t *ch__session_to_json(const ch_session_rec *s);

/* Sets err.state to the name of s's state (for invalid_transition/invalid_state). */
void ch__err_state(ch_err *e, ch_session_state s);

#endif /* CHARTER_INTERNAL_H */

/* ---- request field validation (fields.c) ----
 * Each helper names the offending field as prefix + name ("events[2].kind") and
 * returns the status it set in e. */

/* Fails with unknown_field on any key of obj not in allowed (NULL-terminated). */
ch_status ch__fields_known(const json_t *obj, const char *prefix, const char *const allowed[],
                           ch_err *e);
/* A string of 1..max bytes. Absent or null: *out = NULL, an error only if required. */
ch_status ch__field_string(const json_t *obj, const char *prefix, const char *name,
                           bool required, size_t max, const char **out, ch_err *e);
/* An integer in [min, max]. Absent: *present = false (error only if required). */
ch_status ch__field_int(const json_t *obj, const char *prefix, const char *name, bool required,
                        int64_t min, int64_t max, int64_t *out, bool *present, ch_err *e);
/* A number (integer or real) in [min, max]; absent: *present = false. */
ch_status ch__field_number(const json_t *obj, const char *prefix, const char *name, double min,
                           double max, double *out, bool *present, ch_err *e);
/* An object; absent or null: *out = NULL. */
ch_status ch__field_object(const json_t *obj, const char *prefix, const char *name,
                           json_t **out, ch_err *e);
