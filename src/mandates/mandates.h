/*
 * mandates.h — the mandate module's private declarations: the in-memory registry that
 * answers checks, and the records it holds.
 *
 * Every mandate of every tenant is held in memory (loaded at open); the store is its
 * durable copy. The writer thread is the only one that changes the registry. Each
 * mandate has a published version (`cur`), read by checks and reads under the
 * registry's read lock, and, while a batch is running, the writer's pending version
 * (`next`). A batch's changes are published under the write lock right after its
 * commit, so a check never sees a change that was not committed, and a change is
 * visible before its request is acknowledged (which only happens after the fsync that
 * follows the commit).
 */
#ifndef CHARTER_MANDATES_H
#define CHARTER_MANDATES_H

#include "internal.h"
#include "mandates/scope.h"

#define CH_MANDATE_STATE_MAP(XX)                                                           \
    XX(PROPOSED, "proposed") XX(ACTIVE, "active") XX(SUSPENDED, "suspended")               \
        XX(REVOKED, "revoked") XX(EXPIRED, "expired") XX(COMPLETED, "completed")

typedef enum ch__mandate_state {
#define CH__MSTATE_ENUM(name, text) CH__M_##name,
    CH_MANDATE_STATE_MAP(CH__MSTATE_ENUM)
#undef CH__MSTATE_ENUM
        CH__M_STATE_COUNT
} ch__mandate_state;

const char *ch__mandate_state_name(int s);
int ch__mandate_state_parse(const char *name);
/* revoked, expired and completed are final. */
#define CH__M_FINAL(s) ((s) >= CH__M_REVOKED)

/* Appends a string literal to a ch_buf. */
#define put_lit(b, lit) ch_buf_append((b), (lit), sizeof(lit) - 1)

typedef struct ch__usage {
    int64_t tokens;
    double cost_usd;
    int64_t tool_calls;
} ch__usage;

/* A budget: each limit applies only when its has_ flag is set. */
typedef struct ch__budget {
    bool has_tokens, has_cost, has_calls;
    int64_t tokens;
    double cost_usd;
    int64_t tool_calls;
} ch__budget;

#define CH__BUDGET_ANY(b) ((b)->has_tokens || (b)->has_cost || (b)->has_calls)

/* One version of a mandate's record; immutable once published. */
typedef struct ch__mstate {
    int state;
    int64_t version;
    int64_t expires_at, created_at, updated_at; /* ms */
    int max_depth;
    char *purpose, *approver;
    char *actor;  /* NULL: any actor */
    char *reason; /* NULL: none */
    json_t *evidence;   /* NULL: none */
    json_t *conditions; /* an object, never NULL */
    ch__scope scope;
    ch__budget budget;
    char mission_hash[48]; /* base64url, no padding */
} ch__mstate;

typedef struct ch__mandate ch__mandate;
struct ch__mandate {
    char id[CH_ID_MAX];
    char tenant[CH_TENANT_MAX];
    ch__mandate *parent;
    ch__mandate **kids;
    uint32_t nkids, capkids;
    int depth;
    char *lineage; /* "root/…/id/" */
    ch__mstate *cur;  /* published; NULL until the creating batch commits */
    ch__mstate *next; /* writer only: the pending version, NULL when none */
    ch__usage spent;      /* published spending of its sessions and its subtree's */
    ch__usage spent_next; /* writer only */
    bool touched;         /* writer only: on the batch's touched list */
    bool bound;           /* writer only: a session may be bound to it */
    bool new_deadline;    /* writer only: publish saw its deadline change */
    ch__mandate *hnext;   /* hash chain */
};

typedef struct ch__registry ch__registry;

/* ---- registry.c ---- */

ch_status ch__registry_open(ch_db *db, ch_store *w, ch__registry **out, ch_err *e);
void ch__registry_close(ch__registry *reg);

void ch__registry_rdlock(ch__registry *reg);
void ch__registry_unlock(ch__registry *reg);
/* The mandate id of tenant, or NULL. Readers: under the read lock, and only `cur`
 * (which may be NULL: not yet committed) may be used. */
ch__mandate *ch__registry_find(ch__registry *reg, const char *tenant, const char *id);

/* The mandate id of any tenant, or NULL (for the expiry timer). */
ch__mandate *ch__registry_find_any(ch__registry *reg, const char *id);

/* Counts published mandates by their state now. */
void ch__registry_count(ch__registry *reg, uint64_t counts[CH__M_STATE_COUNT]);
/* Deadlines waiting in the expiry timer (at most one per live mandate and deadline). */
size_t ch__registry_timers(ch__registry *reg);

/* Writer only. The writer's view of m: its pending version, else its published one. */
static inline const ch__mstate *ch__mview(const ch__mandate *m)
{
    return m->next ? m->next : m->cur;
}
/* Writer only: a pending copy of m's record to change (logged for undo). NULL on
 * allocation failure. */
ch__mstate *ch__registry_edit(ch__registry *reg, ch__mandate *m);
/* Writer only: adds to m's pending spending (logged for undo). */
ch_status ch__registry_spend(ch__registry *reg, ch__mandate *m, const ch__usage *u);
/* Writer only: adds a new mandate with record st (owned by the registry from now,
 * even on failure) under parent (NULL for a root). */
ch_status ch__registry_insert(ch__registry *reg, const char *tenant, const char *id,
                              ch__mandate *parent, ch__mstate *st, ch__mandate **out);

/* The state of m at now, as everything outside the store sees it: its record's,
 * unless that is not final and a revoked or expired ancestor made it so (a revoke or an
 * expiry cascades to every descendant without writing them), or its deadline has
 * passed. *cause (when not NULL) is the mandate whose record says so. writer_view
 * selects the writer's view (writer thread) or the published one (read lock). */
int ch__mandate_state_at(const ch__mandate *m, int64_t now, bool writer_view,
                         const ch__mandate **cause);
int ch__mandate_effective(const ch__mandate *m, int64_t now, bool writer_view);
/* The nearest ancestor of m that does not hold at now (not active, or expired), or
 * NULL when every ancestor holds. writer_view as for ch__mandate_state_at. */
const ch__mandate *ch__ancestor_not_holding(const ch__mandate *m, int64_t now, bool writer_view);

/* Record helpers. */
ch__mstate *ch__mstate_copy(const ch__mstate *st);
void ch__mstate_free(ch__mstate *st);
/* Sets st->mission_hash from purpose, scope and conditions. */
ch_status ch__mstate_hash(ch__mstate *st);
/* The stored form of a record and back. */
json_t *ch__mstate_doc(const ch__mandate *m, const ch__mstate *st);
ch__mstate *ch__mstate_from_doc(const json_t *doc, char parent[CH_ID_MAX]);
/* The public JSON of a mandate (published view when writer_view is false). */
json_t *ch__mandate_json(const ch__mandate *m, bool writer_view, const ch__usage *spent);

/* Starts and stops the expiry timer thread (ch-expiry). */
void ch__registry_expiry_start(ch__registry *reg);
void ch__registry_expiry_stop(ch__registry *reg);

/* ---- check.c ---- */

/* The audit queue (check decisions, written by the writer in batches). */
typedef struct ch__audit_queue ch__audit_queue;
ch__audit_queue *ch__audit_queue_new(ch_db *db);
/* Starts and stops the flusher thread (stop waits for its last flush). */
void ch__audit_queue_start(ch__audit_queue *q);
void ch__audit_queue_stop(ch__audit_queue *q);
void ch__audit_queue_free(ch__audit_queue *q);
/* The writer's op that writes the queued decisions. */
extern const ch__op_def ch__audit_flush_op;
/* Appends one audit record of a mandate change (data: JSON object text) inside the
 * current transaction. */
ch_status ch__audit_write(ch_store *w, const ch__mandate *m, const char *kind, const char *data,
                          int64_t now);

#endif /* CHARTER_MANDATES_H */
