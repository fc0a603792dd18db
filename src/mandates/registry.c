/*
 * registry.c — every mandate in memory: lookup, the writer's pending versions with
 * their undo log, publication after commit, loading at open, and the expiry timer.
 *
 * Readers (checks, GETs) take the read lock and see only published records. The
 * writer changes records by copy (ch__registry_edit), logging what each request did so
 * that a request whose savepoint is undone is undone here too; after the batch commits,
 * ch__registry_publish swaps every pending record in under the write lock. Mandates
 * are never removed, so a pointer to one stays valid for the registry's lifetime.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "mandates/mandates.h"

typedef struct undo {
    ch__mandate *m;
    ch__mstate *old_next; /* what m->next was before this entry's change */
    ch__usage old_spent_next;
    bool edited;   /* this entry replaced m->next (ch__registry_edit) */
    bool inserted; /* m was created by this entry */
} undo;

typedef struct deadline {
    int64_t at;
    ch__mandate *m;
} deadline;

struct ch__registry {
    pthread_rwlock_t lock;
    ch__mandate **buckets;
    size_t nbuckets, count;

    /* writer only */
    undo *log;
    size_t nlog, caplog;
    ch__mandate **touched;
    size_t ntouched, captouched;

    /* the expiry timer: a min-heap of deadlines (entries may be stale) */
    pthread_mutex_t ex_mu;
    pthread_cond_t ex_cv;
    deadline *heap;
    size_t nheap, capheap;
    bool ex_stop, ex_running;
    pthread_t ex_thread;
    ch_db *db;
};

static const char *const state_names[] = {
#define CH__MSTATE_NAME(name, text) text,
    CH_MANDATE_STATE_MAP(CH__MSTATE_NAME)
#undef CH__MSTATE_NAME
};

const char *ch__mandate_state_name(int s)
{
    return s >= 0 && s < CH__M_STATE_COUNT ? state_names[s] : NULL;
}

int ch__mandate_state_parse(const char *name)
{
    for (int i = 0; i < CH__M_STATE_COUNT; i++) {
        if (name != NULL && strcmp(name, state_names[i]) == 0)
            return i;
    }
    return -1;
}

/* ---- records ------------------------------------------------------------------- */

void ch__mstate_free(ch__mstate *st)
{
    if (st == NULL)
        return;
    free(st->purpose);
    free(st->approver);
    free(st->actor);
    free(st->reason);
    json_decref(st->evidence);
    json_decref(st->conditions);
    ch__scope_free(&st->scope);
    free(st);
}

static char *dup_or_null(const char *s, bool *ok)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        *ok = false;
    return d;
}

ch__mstate *ch__mstate_copy(const ch__mstate *st)
{
    ch__mstate *c = calloc(1, sizeof(*c));
    bool ok = true;
    if (c == NULL)
        return NULL;
    *c = *st;
    memset(&c->scope, 0, sizeof(c->scope));
    c->purpose = dup_or_null(st->purpose, &ok);
    c->approver = dup_or_null(st->approver, &ok);
    c->actor = dup_or_null(st->actor, &ok);
    c->reason = dup_or_null(st->reason, &ok);
    c->evidence = st->evidence ? json_deep_copy(st->evidence) : NULL;
    c->conditions = json_deep_copy(st->conditions);
    if (!ok || (st->evidence && !c->evidence) || !c->conditions ||
        ch__scope_copy(&st->scope, &c->scope) != CH_OK) {
        ch__mstate_free(c);
        return NULL;
    }
    return c;
}

ch_status ch__mstate_hash(ch__mstate *st)
{
    uint8_t h[32];
    json_t *mission = json_pack("{s:s, s:o, s:O}", "purpose", st->purpose,
                                "scope", ch__scope_json(&st->scope), "conditions",
                                st->conditions);
    if (mission == NULL)
        return CH_NOMEM;
    ch_status rc = ch_json_sha256(mission, h);
    json_decref(mission);
    if (rc == CH_OK)
        sodium_bin2base64(st->mission_hash, sizeof(st->mission_hash), h, sizeof(h),
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return rc;
}

static json_t *budget_json(const ch__budget *b)
{
    if (!CH__BUDGET_ANY(b))
        return json_null();
    json_t *o = json_object();
    if (b->has_tokens)
        json_object_set_new(o, "tokens", json_integer(b->tokens));
    if (b->has_cost)
        json_object_set_new(o, "cost_usd", json_real(b->cost_usd));
    if (b->has_calls)
        json_object_set_new(o, "tool_calls", json_integer(b->tool_calls));
    return o;
}

static void budget_from(const json_t *o, ch__budget *b)
{
    json_t *v;
    memset(b, 0, sizeof(*b));
    if ((v = json_object_get(o, "tokens")) != NULL && json_is_integer(v))
        b->has_tokens = true, b->tokens = json_integer_value(v);
    if ((v = json_object_get(o, "cost_usd")) != NULL && json_is_number(v))
        b->has_cost = true, b->cost_usd = json_number_value(v);
    if ((v = json_object_get(o, "tool_calls")) != NULL && json_is_integer(v))
        b->has_calls = true, b->tool_calls = json_integer_value(v);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

json_t *ch__mstate_doc(const ch__mandate *m, const ch__mstate *st)
{
    return json_pack("{s:s, s:I, s:s, s:s, s:o, s:o, s:O?, s:o, s:O, s:I, s:i, s:o, s:o,"
                     " s:s, s:I, s:I}",
                     "state", ch__mandate_state_name(st->state), "version",
                     (json_int_t)st->version, "purpose", st->purpose, "approver",
                     st->approver, "actor", str_or_null(st->actor), "reason",
                     str_or_null(st->reason), "evidence", st->evidence, "scope",
                     ch__scope_json(&st->scope), "conditions", st->conditions, "expires_at",
                     (json_int_t)st->expires_at, "max_depth", st->max_depth, "budget",
                     budget_json(&st->budget), "parent",
                     m->parent ? json_string(m->parent->id) : json_null(), "mission_hash",
                     st->mission_hash, "created_at", (json_int_t)st->created_at,
                     "updated_at", (json_int_t)st->updated_at);
}

static char *doc_str(const json_t *doc, const char *k)
{
    const char *s = json_string_value(json_object_get(doc, k));
    return s ? strdup(s) : NULL;
}

ch__mstate *ch__mstate_from_doc(const json_t *doc, char parent[CH_ID_MAX])
{
    ch__mstate *st = calloc(1, sizeof(*st));
    ch_err e = {0};
    if (st == NULL)
        return NULL;
    st->state = ch__mandate_state_parse(json_string_value(json_object_get(doc, "state")));
    st->version = json_integer_value(json_object_get(doc, "version"));
    st->purpose = doc_str(doc, "purpose");
    st->approver = doc_str(doc, "approver");
    st->actor = doc_str(doc, "actor");
    st->reason = doc_str(doc, "reason");
    json_t *ev = json_object_get(doc, "evidence");
    st->evidence = ev && !json_is_null(ev) ? json_incref(ev) : NULL;
    st->conditions = json_incref(json_object_get(doc, "conditions"));
    st->expires_at = json_integer_value(json_object_get(doc, "expires_at"));
    st->max_depth = (int)json_integer_value(json_object_get(doc, "max_depth"));
    st->created_at = json_integer_value(json_object_get(doc, "created_at"));
    st->updated_at = json_integer_value(json_object_get(doc, "updated_at"));
    budget_from(json_object_get(doc, "budget"), &st->budget);
    const char *h = json_string_value(json_object_get(doc, "mission_hash"));
    snprintf(st->mission_hash, sizeof(st->mission_hash), "%s", h ? h : "");
    const char *p = json_string_value(json_object_get(doc, "parent"));
    snprintf(parent, CH_ID_MAX, "%s", p ? p : "");
    if (st->state < 0 || st->purpose == NULL || st->approver == NULL ||
        !json_is_object(st->conditions) ||
        ch__scope_parse(json_object_get(doc, "scope"), "scope", NULL, &st->scope, &e) != CH_OK) {
        ch__mstate_free(st);
        return NULL;
    }
    return st;
}

json_t *ch__mandate_json(const ch__mandate *m, bool writer_view, const ch__usage *spent)
{
    const ch__mstate *st = writer_view ? ch__mview(m) : m->cur;
    const ch__mandate *cause;
    int state = ch__mandate_state_at(m, ch_now_ms(), writer_view, &cause);
    const char *reason = st->reason;
    if (cause != m) /* revoked or expired by an ancestor: its reason */
        reason = (writer_view ? ch__mview(cause) : cause->cur)->reason;
    else if (state == CH__M_EXPIRED && st->state != CH__M_EXPIRED)
        reason = "expired";
    char exp[32], created[32], updated[32];
    const ch__mandate *root = m;
    while (root->parent != NULL)
        root = root->parent;
    ch_time_format(st->expires_at, exp);
    ch_time_format(st->created_at, created);
    ch_time_format(st->updated_at, updated);
    char header[CH_NAME_MAX * 2 + 96];
    /* The approver is quoted; a quote or backslash in it is escaped. */
    size_t n = 0;
    n += (size_t)snprintf(header, sizeof(header), "approver=\"");
    for (const char *p = st->approver; *p && n < sizeof(header) - 64; p++) {
        if (*p == '"' || *p == '\\')
            header[n++] = '\\';
        header[n++] = *p;
    }
    snprintf(header + n, sizeof(header) - n, "\"; s256=\"%s\"", st->mission_hash);
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:o, s:o, s:o, s:O, s:s, s:i, s:i, s:o,"
                     " s:s, s:o, s:{s:I, s:f, s:I}, s:s, s:s, s:o, s:s, s:s}",
                     "id", m->id, "state", ch__mandate_state_name(state), "version",
                     (json_int_t)st->version, "purpose", st->purpose, "approver", st->approver,
                     "evidence", st->evidence ? json_incref(st->evidence) : json_null(), "actor",
                     str_or_null(st->actor), "scope",
                     ch__scope_json(&st->scope), "conditions", st->conditions, "expires_at",
                     exp, "max_depth", st->max_depth, "depth", m->depth, "parent",
                     m->parent ? json_string(m->parent->id) : json_null(), "root", root->id,
                     "budget", budget_json(&st->budget), "spent", "tokens",
                     (json_int_t)spent->tokens, "cost_usd", spent->cost_usd, "tool_calls",
                     (json_int_t)spent->tool_calls, "mission_hash", st->mission_hash,
                     "mission_header", header, "reason", str_or_null(reason),
                     "created_at", created, "updated_at", updated);
}

int ch__mandate_state_at(const ch__mandate *m, int64_t now, bool writer_view,
                         const ch__mandate **cause)
{
    const ch__mstate *st = writer_view ? ch__mview(m) : m->cur;
    if (cause != NULL)
        *cause = m;
    if (CH__M_FINAL(st->state))
        return st->state;
    /* A revoke or an expiry reaches every descendant without writing it: the nearest
     * revoked or expired ancestor decides. */
    for (const ch__mandate *a = m->parent; a != NULL; a = a->parent) {
        const ch__mstate *ast = writer_view ? ch__mview(a) : a->cur;
        if (ast != NULL && (ast->state == CH__M_REVOKED || ast->state == CH__M_EXPIRED)) {
            if (cause != NULL)
                *cause = a;
            return ast->state;
        }
    }
    return now >= st->expires_at ? CH__M_EXPIRED : st->state;
}

int ch__mandate_effective(const ch__mandate *m, int64_t now, bool writer_view)
{
    return ch__mandate_state_at(m, now, writer_view, NULL);
}

const ch__mandate *ch__ancestor_not_holding(const ch__mandate *m, int64_t now, bool writer_view)
{
    for (const ch__mandate *a = m->parent; a != NULL; a = a->parent) {
        if (ch__mandate_effective(a, now, writer_view) != CH__M_ACTIVE)
            return a;
    }
    return NULL;
}

/* ---- the table ------------------------------------------------------------------ */

static size_t hash_id(const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)h;
}

void ch__registry_rdlock(ch__registry *reg)
{
    pthread_rwlock_rdlock(&reg->lock);
}

void ch__registry_unlock(ch__registry *reg)
{
    pthread_rwlock_unlock(&reg->lock);
}

ch__mandate *ch__registry_find(ch__registry *reg, const char *tenant, const char *id)
{
    if (reg->nbuckets == 0)
        return NULL;
    for (ch__mandate *m = reg->buckets[hash_id(id) & (reg->nbuckets - 1)]; m; m = m->hnext) {
        if (strcmp(m->id, id) == 0)
            return strcmp(m->tenant, tenant) == 0 ? m : NULL;
    }
    return NULL;
}

ch__mandate *ch__registry_find_any(ch__registry *reg, const char *id)
{
    if (reg->nbuckets == 0)
        return NULL;
    for (ch__mandate *m = reg->buckets[hash_id(id) & (reg->nbuckets - 1)]; m; m = m->hnext) {
        if (strcmp(m->id, id) == 0)
            return m;
    }
    return NULL;
}

size_t ch__registry_timers(ch__registry *reg)
{
    pthread_mutex_lock(&reg->ex_mu);
    size_t n = reg->nheap;
    pthread_mutex_unlock(&reg->ex_mu);
    return n;
}

void ch__registry_count(ch__registry *reg, uint64_t counts[CH__M_STATE_COUNT])
{
    int64_t now = ch_now_ms();
    pthread_rwlock_rdlock(&reg->lock);
    for (size_t i = 0; i < reg->nbuckets; i++) {
        for (ch__mandate *m = reg->buckets[i]; m; m = m->hnext) {
            if (m->cur != NULL)
                counts[ch__mandate_effective(m, now, false)]++;
        }
    }
    pthread_rwlock_unlock(&reg->lock);
}

/* Under the write lock. */
static ch_status table_add(ch__registry *reg, ch__mandate *m)
{
    if (reg->count + 1 > reg->nbuckets * 3 / 4) {
        size_t n = reg->nbuckets ? reg->nbuckets * 2 : 1024;
        ch__mandate **b = calloc(n, sizeof(*b));
        if (b == NULL)
            return CH_NOMEM;
        for (size_t i = 0; i < reg->nbuckets; i++) {
            for (ch__mandate *x = reg->buckets[i], *nx; x; x = nx) {
                nx = x->hnext;
                size_t j = hash_id(x->id) & (n - 1);
                x->hnext = b[j];
                b[j] = x;
            }
        }
        free(reg->buckets);
        reg->buckets = b;
        reg->nbuckets = n;
    }
    size_t j = hash_id(m->id) & (reg->nbuckets - 1);
    m->hnext = reg->buckets[j];
    reg->buckets[j] = m;
    reg->count++;
    return CH_OK;
}

/* Under the write lock. */
static void table_remove(ch__registry *reg, ch__mandate *m)
{
    ch__mandate **pp = &reg->buckets[hash_id(m->id) & (reg->nbuckets - 1)];
    while (*pp != NULL && *pp != m)
        pp = &(*pp)->hnext;
    if (*pp == m) {
        *pp = m->hnext;
        reg->count--;
    }
}

static void mandate_free(ch__mandate *m)
{
    ch__mstate_free(m->cur);
    ch__mstate_free(m->next);
    free(m->kids);
    free(m->lineage);
    free(m);
}

/* ---- the writer's pending changes ----------------------------------------------- */

static ch_status log_push(ch__registry *reg, ch__mandate *m, bool edited, bool inserted)
{
    if (reg->nlog == reg->caplog) {
        size_t cap = reg->caplog ? reg->caplog * 2 : 64;
        undo *l = realloc(reg->log, cap * sizeof(*l));
        if (l == NULL)
            return CH_NOMEM;
        reg->log = l;
        reg->caplog = cap;
    }
    if (!m->touched) {
        if (reg->ntouched == reg->captouched) {
            size_t cap = reg->captouched ? reg->captouched * 2 : 64;
            ch__mandate **t = realloc(reg->touched, cap * sizeof(*t));
            if (t == NULL)
                return CH_NOMEM;
            reg->touched = t;
            reg->captouched = cap;
        }
        reg->touched[reg->ntouched++] = m;
        m->touched = true;
    }
    reg->log[reg->nlog++] = (undo){m, m->next, m->spent_next, edited, inserted};
    return CH_OK;
}

ch__mstate *ch__registry_edit(ch__registry *reg, ch__mandate *m)
{
    ch__mstate *c = ch__mstate_copy(ch__mview(m));
    if (c == NULL || log_push(reg, m, true, false) != CH_OK) {
        ch__mstate_free(c);
        return NULL;
    }
    m->next = c;
    return c;
}

ch_status ch__registry_spend(ch__registry *reg, ch__mandate *m, const ch__usage *u)
{
    if (log_push(reg, m, false, false) != CH_OK)
        return CH_NOMEM;
    /* Saturating: a subtree's total may exceed what one session can hold, and a
     * wrapped total would read as budget left. */
    m->spent_next.tokens = u->tokens > INT64_MAX - m->spent_next.tokens
                               ? INT64_MAX
                               : m->spent_next.tokens + u->tokens;
    m->spent_next.cost_usd += u->cost_usd;
    m->spent_next.tool_calls = u->tool_calls > INT64_MAX - m->spent_next.tool_calls
                                   ? INT64_MAX
                                   : m->spent_next.tool_calls + u->tool_calls;
    return CH_OK;
}

ch_status ch__registry_insert(ch__registry *reg, const char *tenant, const char *id,
                              ch__mandate *parent, ch__mstate *st, ch__mandate **out)
{
    ch__mandate *m = calloc(1, sizeof(*m));
    size_t plen = parent ? strlen(parent->lineage) : 0;
    if (m == NULL || (m->lineage = malloc(plen + strlen(id) + 2)) == NULL) {
        free(m);
        ch__mstate_free(st);
        return CH_NOMEM;
    }
    snprintf(m->id, sizeof(m->id), "%s", id);
    snprintf(m->tenant, sizeof(m->tenant), "%s", tenant);
    sprintf(m->lineage, "%s%s/", parent ? parent->lineage : "", id);
    m->parent = parent;
    m->depth = parent ? parent->depth + 1 : 0;
    ch_status rc = CH_NOMEM;
    if (parent != NULL && parent->nkids == parent->capkids) {
        /* The array may move: readers walk it, so grow it under the write lock. */
        uint32_t cap = parent->capkids ? parent->capkids * 2 : 4;
        pthread_rwlock_wrlock(&reg->lock);
        ch__mandate **k = realloc(parent->kids, cap * sizeof(*k));
        if (k != NULL) {
            parent->kids = k;
            parent->capkids = cap;
        }
        pthread_rwlock_unlock(&reg->lock);
        if (k == NULL)
            goto fail;
    }
    if (log_push(reg, m, false, true) != CH_OK)
        goto fail;
    m->next = st;
    pthread_rwlock_wrlock(&reg->lock);
    rc = table_add(reg, m);
    if (rc == CH_OK && parent != NULL)
        parent->kids[parent->nkids++] = m;
    pthread_rwlock_unlock(&reg->lock);
    if (rc != CH_OK) {
        /* Undone with the request: the log entry frees m. */
        return rc;
    }
    *out = m;
    return CH_OK;
fail:
    free(m->lineage);
    free(m);
    ch__mstate_free(st);
    return rc;
}

size_t ch__registry_mark(ch__registry *reg)
{
    return reg->nlog;
}

void ch__registry_undo(ch__registry *reg, size_t mark)
{
    while (reg->nlog > mark) {
        undo *u = &reg->log[--reg->nlog];
        ch__mandate *m = u->m;
        if (u->inserted) {
            pthread_rwlock_wrlock(&reg->lock);
            if (reg->nbuckets > 0)
                table_remove(reg, m);
            if (m->parent != NULL && m->parent->nkids > 0 &&
                m->parent->kids[m->parent->nkids - 1] == m)
                m->parent->nkids--;
            pthread_rwlock_unlock(&reg->lock);
            /* Drop it from the touched list (it is there: log_push put it). */
            for (size_t i = 0; i < reg->ntouched; i++) {
                if (reg->touched[i] == m) {
                    reg->touched[i] = reg->touched[--reg->ntouched];
                    break;
                }
            }
            mandate_free(m);
            continue;
        }
        if (u->edited) {
            ch__mstate_free(m->next);
            m->next = u->old_next;
        }
        m->spent_next = u->old_spent_next;
    }
}

static void heap_push(ch__registry *reg, int64_t at, ch__mandate *m);

void ch__registry_publish(ch__registry *reg)
{
    bool wake = false;
    if (reg->ntouched == 0) {
        reg->nlog = 0;
        return;
    }
    /* Superseded pending records (an earlier request's version that a later edit in
     * the batch replaced) are freed: only m->next is kept. Each pending record is the
     * old_next of at most one edit. */
    for (size_t i = 0; i < reg->nlog; i++) {
        undo *u = &reg->log[i];
        if (u->edited && u->old_next != NULL)
            ch__mstate_free(u->old_next);
    }
    reg->nlog = 0;
    pthread_rwlock_wrlock(&reg->lock);
    for (size_t i = 0; i < reg->ntouched; i++) {
        ch__mandate *m = reg->touched[i];
        /* A new deadline (a new mandate, or one moved by a PATCH) needs a timer; a
         * mandate touched only by spending or a state change keeps the one it has. */
        m->new_deadline = false;
        if (m->next != NULL) {
            m->new_deadline = m->cur == NULL || m->cur->expires_at != m->next->expires_at;
            ch__mstate_free(m->cur);
            m->cur = m->next;
            m->next = NULL;
        }
        m->spent = m->spent_next;
    }
    pthread_rwlock_unlock(&reg->lock);
    for (size_t i = 0; i < reg->ntouched; i++) {
        ch__mandate *m = reg->touched[i];
        m->touched = false;
        if (m->new_deadline && !CH__M_FINAL(m->cur->state)) {
            heap_push(reg, m->cur->expires_at, m);
            wake = true;
        }
    }
    reg->ntouched = 0;
    if (wake) {
        pthread_mutex_lock(&reg->ex_mu);
        pthread_cond_signal(&reg->ex_cv);
        pthread_mutex_unlock(&reg->ex_mu);
    }
}

/* ---- loading -------------------------------------------------------------------- */

typedef struct load_ctx {
    ch__registry *reg;
    ch_status rc;
} load_ctx;

static int load_one(void *arg, const ch_mandate_row *row)
{
    load_ctx *c = arg;
    char parent_id[CH_ID_MAX];
    json_t *doc = json_loadb(row->doc, row->doc_len, 0, NULL);
    ch__mstate *st = doc ? ch__mstate_from_doc(doc, parent_id) : NULL;
    json_decref(doc);
    if (st == NULL) {
        ch_log(CH_LOG_ERROR, "unreadable mandate record", "{s:s}", "id", row->id);
        c->rc = CH_IO;
        return 1;
    }
    ch__mandate *parent = NULL;
    if (parent_id[0] != '\0' && (parent = ch__registry_find(c->reg, row->tenant, parent_id)) ==
                                    NULL) {
        ch_log(CH_LOG_ERROR, "mandate without its parent", "{s:s, s:s}", "id", row->id,
               "parent", parent_id);
        ch__mstate_free(st);
        c->rc = CH_IO;
        return 1;
    }
    if (row->state != NULL) { /* a lifecycle change stored after the doc */
        int state = ch__mandate_state_parse(row->state);
        char *reason = row->reason ? strdup(row->reason) : NULL;
        if (state < 0 || (row->reason && reason == NULL)) {
            ch_log(CH_LOG_ERROR, "unreadable mandate state", "{s:s}", "id", row->id);
            free(reason);
            ch__mstate_free(st);
            c->rc = CH_IO;
            return 1;
        }
        st->state = state;
        free(st->reason);
        st->reason = reason;
        st->updated_at = row->updated_at;
    }
    ch__mandate *m;
    if ((c->rc = ch__registry_insert(c->reg, row->tenant, row->id, parent, st, &m)) != CH_OK)
        return 1;
    /* Whether sessions are bound is not known here: assume so for live mandates. */
    m->bound = !CH__M_FINAL(st->state);
    m->spent = m->spent_next =
        (ch__usage){row->spent_tokens, row->spent_cost_usd, row->spent_tool_calls};
    return 0;
}

ch_status ch__registry_open(ch_db *db, ch_store *w, ch__registry **out, ch_err *e)
{
    ch__registry *reg = calloc(1, sizeof(*reg));
    if (reg == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    /* Checks hold the read lock briefly but may overlap without pause on many threads:
     * prefer the writer, so that publishing a revocation is never starved by them. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&reg->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&reg->ex_mu, NULL);
    pthread_cond_init(&reg->ex_cv, NULL);
    reg->db = db;
    load_ctx c = {reg, CH_OK};
    ch_status rc = ch__db_store(db)->mandate_load(w, load_one, &c);
    if (rc == CH_OK)
        rc = c.rc;
    if (rc != CH_OK) {
        ch__registry_undo(reg, 0);
        ch__registry_close(reg);
        return ch_err_set(e, rc, NULL, "cannot load mandates");
    }
    ch__registry_publish(reg);
    *out = reg;
    return CH_OK;
}

void ch__registry_close(ch__registry *reg)
{
    if (reg == NULL)
        return;
    ch__registry_expiry_stop(reg);
    for (size_t i = 0; i < reg->nbuckets; i++) {
        for (ch__mandate *m = reg->buckets[i], *nx; m; m = nx) {
            nx = m->hnext;
            mandate_free(m);
        }
    }
    free(reg->buckets);
    free(reg->log);
    free(reg->touched);
    free(reg->heap);
    pthread_rwlock_destroy(&reg->lock);
    pthread_mutex_destroy(&reg->ex_mu);
    pthread_cond_destroy(&reg->ex_cv);
    free(reg);
}

/* ---- the expiry timer ------------------------------------------------------------
 * Checks compare deadlines with the clock themselves, so a mandate denies from its
 * deadline on whether or not this timer has run. The timer makes the expiry durable
 * and visible: the state becomes `expired` (with its descendants), bound sessions go
 * inert, and the change is published on the event stream. */

static void heap_push(ch__registry *reg, int64_t at, ch__mandate *m)
{
    pthread_mutex_lock(&reg->ex_mu);
    if (reg->nheap == reg->capheap) {
        size_t cap = reg->capheap ? reg->capheap * 2 : 256;
        deadline *h = realloc(reg->heap, cap * sizeof(*h));
        if (h == NULL) {
            /* Checks still deny on time; the state change waits for a restart. */
            pthread_mutex_unlock(&reg->ex_mu);
            ch_log(CH_LOG_ERROR, "out of memory for an expiry timer", "{s:s}", "id", m->id);
            return;
        }
        reg->heap = h;
        reg->capheap = cap;
    }
    size_t i = reg->nheap++;
    while (i > 0 && reg->heap[(i - 1) / 2].at > at) {
        reg->heap[i] = reg->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    reg->heap[i] = (deadline){at, m};
    pthread_mutex_unlock(&reg->ex_mu);
}

/* Under ex_mu. */
static deadline heap_pop(ch__registry *reg)
{
    deadline top = reg->heap[0], last = reg->heap[--reg->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= reg->nheap)
            break;
        if (c + 1 < reg->nheap && reg->heap[c + 1].at < reg->heap[c].at)
            c++;
        if (reg->heap[c].at >= last.at)
            break;
        reg->heap[i] = reg->heap[c];
        i = c;
    }
    if (reg->nheap > 0)
        reg->heap[i] = last;
    return top;
}

static void *expiry_main(void *arg)
{
    ch__registry *reg = arg;
    pthread_setname_np(pthread_self(), "ch-expiry");
    pthread_mutex_lock(&reg->ex_mu);
    while (!reg->ex_stop) {
        int64_t now = ch_now_ms();
        if (reg->nheap == 0 || reg->heap[0].at > now) {
            if (reg->nheap == 0) {
                pthread_cond_wait(&reg->ex_cv, &reg->ex_mu);
            } else {
                int64_t at = reg->heap[0].at;
                struct timespec ts = {.tv_sec = at / 1000, .tv_nsec = (at % 1000) * 1000000};
                pthread_cond_timedwait(&reg->ex_cv, &reg->ex_mu, &ts);
            }
            continue;
        }
        /* Collect every mandate due now whose published record still says so. */
        json_t *ids = json_array();
        while (reg->nheap > 0 && reg->heap[0].at <= now) {
            deadline d = heap_pop(reg);
            pthread_rwlock_rdlock(&reg->lock);
            const ch__mstate *st = d.m->cur;
            /* Not due when it is final, or revoked or expired with an ancestor. */
            bool due = st != NULL && st->expires_at <= now &&
                       !CH__M_FINAL(ch__mandate_state_at(d.m, st->expires_at - 1, false, NULL));
            pthread_rwlock_unlock(&reg->lock);
            if (due)
                json_array_append_new(ids, json_string(d.m->id));
        }
        pthread_mutex_unlock(&reg->ex_mu);
        if (json_array_size(ids) > 0) {
            ch_req req = {.op = CH_OP_MANDATE_EXPIRE, .body = ids};
            ch_status rc = ch_call(reg->db, &req);
            if (rc != CH_OK && rc != CH_SHUTTING_DOWN) {
                /* Checks deny on time anyway; the state change is tried again. */
                ch_log(CH_LOG_ERROR, "expiring mandates failed; retrying in 1s", "{s:s}",
                       "error", req.err.message);
                size_t i;
                json_t *v;
                json_array_foreach(ids, i, v)
                {
                    ch__mandate *m = NULL;
                    pthread_rwlock_rdlock(&reg->lock);
                    m = ch__registry_find_any(reg, json_string_value(v));
                    pthread_rwlock_unlock(&reg->lock);
                    if (m != NULL)
                        heap_push(reg, ch_now_ms() + 1000, m);
                }
            }
            ch_req_dispose(&req);
        }
        json_decref(ids);
        pthread_mutex_lock(&reg->ex_mu);
    }
    pthread_mutex_unlock(&reg->ex_mu);
    return NULL;
}

void ch__registry_expiry_start(ch__registry *reg)
{
    if (pthread_create(&reg->ex_thread, NULL, expiry_main, reg) == 0)
        reg->ex_running = true;
    else
        ch_log(CH_LOG_ERROR, "cannot start the expiry timer thread", NULL);
}

void ch__registry_expiry_stop(ch__registry *reg)
{
    if (!reg->ex_running)
        return;
    pthread_mutex_lock(&reg->ex_mu);
    reg->ex_stop = true;
    pthread_cond_signal(&reg->ex_cv);
    pthread_mutex_unlock(&reg->ex_mu);
    pthread_join(reg->ex_thread, NULL);
    reg->ex_running = false;
}
