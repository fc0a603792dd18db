/*
 * table.c — where live ephemeral scopes are kept and how they end: the sharded table,
 * the per-agent lists, the deadline heap, the timer thread with its GC sweep, the
 * outbox of stream events, and the scope metrics. See ephemeral.h for the design.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "ephemeral/ephemeral.h"

#define NSHARDS 64
#define POP_BATCH 1024

typedef struct shard {
    pthread_mutex_t mu;
    ch__escope **buckets;
    size_t nbuckets, n;
} __attribute__((aligned(64))) shard;

typedef struct heap_entry {
    int64_t at;
    ch__escope *s;
} heap_entry;

struct ch__eph {
    ch_db *db;
    ch_ephemeral_config cfg;
    ch_scope_engine *engine; /* the configured engine, for `scoped` */
    ch_scope_engine *memory; /* `command` */
    ch_scope_engine *secure; /* `secure` */

    shard shards[NSHARDS];

    /* The deadline heap, the outbox and the timer thread's wake-up. */
    pthread_mutex_t hmu;
    pthread_cond_t hcv;
    heap_entry *heap;
    size_t nheap, capheap;
    json_t *outbox; /* [{tenant, type, data}] waiting to be published */
    bool stop, started;
    pthread_t thread;

    /* (tenant, agent) → its scopes */
    pthread_mutex_t amu;
    ch__agent **abuckets;
    size_t nabuckets, nagents;

    /* Metrics (atomic). */
    int64_t live[3]; /* by flow */
    int64_t nlocked;
    int64_t bytes;
    uint64_t evictions[CH__EVICT_COUNT];
    uint64_t expiring;
    uint64_t unpublished; /* events dropped because the writer refused them */
    ch_histogram lateness;
};

static const char *const flow_names[] = {"command", "scoped", "secure"};
static const char *const reason_names[] = {
#define XX(name, text) text,
    CH__EVICT_REASONS(XX)
#undef XX
};

const char *ch__flow_name(int flow)
{
    return (unsigned)flow < 3 ? flow_names[flow] : "scoped";
}

const char *ch__evict_reason_name(int reason)
{
    return (unsigned)reason < CH__EVICT_COUNT ? reason_names[reason] : "error";
}

const ch_ephemeral_config *ch__eph_config(ch__eph *x)
{
    return &x->cfg;
}

ch_scope_engine *ch__eph_engine(ch__eph *x, ch__flow flow)
{
    return flow == CH__FLOW_SECURE ? x->secure : flow == CH__FLOW_COMMAND ? x->memory : x->engine;
}

static uint64_t hash_str(const char *s, uint64_t h)
{
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static uint64_t hash_id(const char *id)
{
    return hash_str(id, 0xcbf29ce484222325ULL);
}

static shard *shard_of(ch__eph *x, uint64_t h)
{
    return &x->shards[h % NSHARDS];
}

static ch__escope **bucket_of(shard *sh, uint64_t h)
{
    return &sh->buckets[(h / NSHARDS) & (sh->nbuckets - 1)];
}

/* ---- the deadline heap (hmu held) ----------------------------------------------- */

static void heap_place(ch__eph *x, size_t i, heap_entry e)
{
    x->heap[i] = e;
    e.s->heap_idx = (int32_t)i;
}

static void heap_up(ch__eph *x, size_t i)
{
    heap_entry e = x->heap[i];
    while (i > 0 && x->heap[(i - 1) / 2].at > e.at) {
        heap_place(x, i, x->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_place(x, i, e);
}

static void heap_down(ch__eph *x, size_t i)
{
    heap_entry e = x->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= x->nheap)
            break;
        if (c + 1 < x->nheap && x->heap[c + 1].at < x->heap[c].at)
            c++;
        if (x->heap[c].at >= e.at)
            break;
        heap_place(x, i, x->heap[c]);
        i = c;
    }
    heap_place(x, i, e);
}

static bool heap_push(ch__eph *x, ch__escope *s, int64_t at)
{
    if (x->nheap == x->capheap) {
        size_t cap = x->capheap ? x->capheap * 2 : 1024;
        heap_entry *h = realloc(x->heap, cap * sizeof(*h));
        if (h == NULL)
            return false; /* the GC sweep still ends the scope */
        x->heap = h;
        x->capheap = cap;
    }
    x->heap[x->nheap] = (heap_entry){at, s};
    heap_up(x, x->nheap++);
    return true;
}

static void heap_remove(ch__eph *x, ch__escope *s)
{
    size_t i = (size_t)s->heap_idx;
    s->heap_idx = -1;
    heap_entry last = x->heap[--x->nheap];
    if (i == x->nheap)
        return;
    x->heap[i] = last;
    last.s->heap_idx = (int32_t)i;
    heap_up(x, i);
    heap_down(x, (size_t)last.s->heap_idx);
}

/* When s may end next: its grace end, or the earlier of expiry and idle deadline. */
static int64_t due_of(const ch__escope *s, ch__evict_reason *reason)
{
    if (s->grace_until != 0) {
        if (reason)
            *reason = (ch__evict_reason)s->grace_reason;
        return s->grace_until;
    }
    int64_t idle = s->idle_ttl > 0 ? s->last_used + s->idle_ttl : INT64_MAX;
    if (reason)
        *reason = idle < s->expires_at ? CH__EVICT_IDLE : CH__EVICT_EXPIRED;
    return idle < s->expires_at ? idle : s->expires_at;
}

void ch__scope_rearm(ch__eph *x, ch__escope *s)
{
    if (!x->cfg.exact_expiry)
        return;
    pthread_mutex_lock(&x->hmu);
    if (s->heap_idx >= 0) {
        int64_t at = due_of(s, NULL);
        size_t i = (size_t)s->heap_idx;
        x->heap[i].at = at;
        heap_up(x, i);
        heap_down(x, (size_t)s->heap_idx);
        if (s->heap_idx == 0)
            pthread_cond_signal(&x->hcv);
    }
    /* heap_idx -1: the timer thread holds the entry and will look at s again. */
    pthread_mutex_unlock(&x->hmu);
}

/* ---- the outbox (hmu held) -------------------------------------------------------- */

static void outbox_add(ch__eph *x, const char *tenant, const char *type, json_t *data)
{
    json_t *item =
        data ? json_pack("{s:s, s:s, s:o}", "tenant", tenant, "type", type, "data", data) : NULL;
    if (item == NULL || json_array_append_new(x->outbox, item) != 0) {
        __atomic_fetch_add(&x->unpublished, 1, __ATOMIC_RELAXED);
        return;
    }
    if (json_array_size(x->outbox) == 1)
        pthread_cond_signal(&x->hcv);
}

static void publish_done(ch_req *req)
{
    ch_req_dispose(req);
    free(req);
}

/* Hands the events to the writer; they are durable and sent to subscribers once it
 * commits. A refused write (shutting down, storage failing) loses only notices. */
static void publish(ch__eph *x, json_t *events, bool wait)
{
    size_t n = json_array_size(events);
    if (n == 0) {
        json_decref(events);
        return;
    }
    ch_req *req = calloc(1, sizeof(*req));
    if (req == NULL) {
        __atomic_fetch_add(&x->unpublished, n, __ATOMIC_RELAXED);
        json_decref(events);
        return;
    }
    req->op = CH_OP_STREAM_PUBLISH;
    req->body = events;
    ch_status st;
    if (wait) {
        st = ch_call(x->db, req);
        ch_req_dispose(req);
        free(req);
    } else {
        req->done = publish_done;
        st = ch_submit(x->db, req);
        if (st != CH_OK) {
            ch_req_dispose(req);
            free(req);
        }
    }
    json_decref(events);
    if (st != CH_OK)
        __atomic_fetch_add(&x->unpublished, n, __ATOMIC_RELAXED);
}

/* ---- the table -------------------------------------------------------------------- */

static ch__escope *find_in(shard *sh, uint64_t h, const char *id)
{
    if (sh->nbuckets == 0)
        return NULL; /* nothing was ever stored in this shard */
    for (ch__escope *s = *bucket_of(sh, h); s != NULL; s = s->hnext) {
        if (strcmp(s->id, id) == 0)
            return s;
    }
    return NULL;
}

ch__escope *ch__scope_lock(ch__eph *x, const char *tenant, const char *id)
{
    uint64_t h = hash_id(id);
    shard *sh = shard_of(x, h);
    pthread_mutex_lock(&sh->mu);
    ch__escope *s = find_in(sh, h, id);
    if (s == NULL || (tenant != NULL && strcmp(s->agent->tenant, tenant) != 0)) {
        pthread_mutex_unlock(&sh->mu);
        return NULL;
    }
    return s;
}

void ch__scope_unlock(ch__eph *x, ch__escope *s)
{
    pthread_mutex_unlock(&shard_of(x, hash_id(s->id))->mu);
}

static bool shard_grow(shard *sh)
{
    size_t n = sh->nbuckets ? sh->nbuckets * 2 : 64;
    ch__escope **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return false;
    for (size_t i = 0; i < sh->nbuckets; i++) {
        for (ch__escope *s = sh->buckets[i], *next; s != NULL; s = next) {
            next = s->hnext;
            size_t j = (hash_id(s->id) / NSHARDS) & (n - 1);
            s->hnext = b[j];
            b[j] = s;
        }
    }
    free(sh->buckets);
    sh->buckets = b;
    sh->nbuckets = n;
    return true;
}

static uint64_t agent_hash(const char *tenant, const char *name)
{
    return hash_str(name, hash_str(tenant, 0xcbf29ce484222325ULL) * 0x100000001b3ULL);
}

static ch__agent **agent_slot(ch__eph *x, const char *tenant, const char *name)
{
    ch__agent **pp = &x->abuckets[agent_hash(tenant, name) & (x->nabuckets - 1)];
    while (*pp != NULL && (strcmp((*pp)->tenant, tenant) != 0 || strcmp((*pp)->name, name) != 0))
        pp = &(*pp)->hnext;
    return pp;
}

static bool agents_grow(ch__eph *x)
{
    size_t n = x->nabuckets * 2;
    ch__agent **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return false;
    for (size_t i = 0; i < x->nabuckets; i++) {
        for (ch__agent *a = x->abuckets[i], *next; a != NULL; a = next) {
            next = a->hnext;
            size_t j = agent_hash(a->tenant, a->name) & (n - 1);
            a->hnext = b[j];
            b[j] = a;
        }
    }
    free(x->abuckets);
    x->abuckets = b;
    x->nabuckets = n;
    return true;
}

/* Links s to (tenant, name), creating the agent entry. amu held. */
static ch_status agent_link(ch__eph *x, ch__escope *s, const char *tenant, const char *name)
{
    ch__agent **pp = agent_slot(x, tenant, name);
    ch__agent *a = *pp;
    if (a == NULL) {
        size_t len = strlen(name);
        a = calloc(1, sizeof(*a) + len + 1);
        json_t *js = json_string(name);
        a->json = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        json_decref(js);
        if (a == NULL || a->json == NULL) {
            if (a)
                free(a->json);
            free(a);
            return CH_NOMEM;
        }
        memcpy(a->name, name, len + 1);
        snprintf(a->tenant, sizeof(a->tenant), "%s", tenant);
        *pp = a;
        if (++x->nagents > x->nabuckets)
            agents_grow(x);
    }
    s->agent = a;
    s->aprev = NULL;
    s->anext = a->head;
    if (a->head)
        a->head->aprev = s;
    a->head = s;
    a->nscopes++;
    return CH_OK;
}

/* amu held. */
static void agent_unlink(ch__eph *x, ch__escope *s)
{
    ch__agent *a = s->agent;
    if (s->aprev)
        s->aprev->anext = s->anext;
    else
        a->head = s->anext;
    if (s->anext)
        s->anext->aprev = s->aprev;
    if (--a->nscopes == 0) {
        ch__agent **pp = agent_slot(x, a->tenant, a->name);
        *pp = a->hnext;
        x->nagents--;
        free(a->json);
        free(a);
    }
    s->agent = NULL;
}

ch_status ch__scope_insert(ch__eph *x, ch__escope *s, const char *tenant, const char *agent_name,
                           ch_err *e)
{
    uint64_t h = hash_id(s->id);
    shard *sh = shard_of(x, h);
    s->heap_idx = -1;
    pthread_mutex_lock(&sh->mu);
    if (sh->n >= sh->nbuckets && !shard_grow(sh) && sh->nbuckets == 0) {
        pthread_mutex_unlock(&sh->mu);
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    pthread_mutex_lock(&x->amu);
    ch_status st = agent_link(x, s, tenant, agent_name);
    pthread_mutex_unlock(&x->amu);
    if (st != CH_OK) {
        pthread_mutex_unlock(&sh->mu);
        return ch_err_set(e, st, NULL, NULL);
    }
    ch__escope **b = bucket_of(sh, h);
    s->hnext = *b;
    *b = s;
    sh->n++;
    if (x->cfg.exact_expiry) {
        pthread_mutex_lock(&x->hmu);
        heap_push(x, s, due_of(s, NULL));
        if (s->heap_idx == 0)
            pthread_cond_signal(&x->hcv);
        pthread_mutex_unlock(&x->hmu);
    }
    __atomic_fetch_add(&x->live[s->flow], 1, __ATOMIC_RELAXED);
    return CH_OK;
}

void ch__scope_bytes(ch__eph *x, ch__escope *s, size_t len)
{
    __atomic_fetch_add(&x->bytes, (int64_t)len - (int64_t)s->bytes, __ATOMIC_RELAXED);
    s->bytes = (uint32_t)len;
}

void ch__scope_flow_moved(ch__eph *x, ch__flow from, ch__flow to)
{
    __atomic_fetch_sub(&x->live[from], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&x->live[to], 1, __ATOMIC_RELAXED);
}

void ch__scope_locked(ch__eph *x, bool locked)
{
    __atomic_fetch_add(&x->nlocked, locked ? 1 : -1, __ATOMIC_RELAXED);
}

void ch__scope_evict(ch__eph *x, ch__escope *s, ch__evict_reason reason)
{
    uint64_t h = hash_id(s->id);
    shard *sh = shard_of(x, h);
    for (ch__escope **pp = bucket_of(sh, h); *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == s) {
            *pp = s->hnext;
            break;
        }
    }
    sh->n--;
    json_t *data = json_pack("{s:s, s:s, s:s, s:s}", "scope", s->id, "agent", s->agent->name,
                             "reason", reason_names[reason], "flow", flow_names[s->flow]);
    pthread_mutex_lock(&x->hmu);
    if (s->heap_idx >= 0)
        heap_remove(x, s);
    outbox_add(x, s->agent->tenant, "ephemeral.evicted", data);
    pthread_mutex_unlock(&x->hmu);
    if (x->cfg.log_evictions)
        ch_log(CH_LOG_INFO, "scope evicted", "{s:s, s:s, s:s, s:s}", "id", s->id, "tenant",
               s->agent->tenant, "agent", s->agent->name, "reason", reason_names[reason]);
    pthread_mutex_lock(&x->amu);
    agent_unlink(x, s);
    pthread_mutex_unlock(&x->amu);
    pthread_mutex_unlock(&sh->mu);

    /* Out of the table: nobody else can reach s now. */
    if (s->engine->methods->del(s->engine, s->id, &s->slot) != CH_OK)
        ch_log(CH_LOG_WARN, "engine could not drop an evicted scope's context", "{s:s, s:s}", "id",
               s->id, "engine", s->engine->methods->name);
    __atomic_fetch_sub(&x->live[s->flow], 1, __ATOMIC_RELAXED);
    if (s->locked)
        __atomic_fetch_sub(&x->nlocked, 1, __ATOMIC_RELAXED);
    __atomic_fetch_sub(&x->bytes, (int64_t)s->bytes, __ATOMIC_RELAXED);
    __atomic_fetch_add(&x->evictions[reason], 1, __ATOMIC_RELAXED);
    sodium_memzero(s, sizeof(*s));
    free(s);
}

void ch__scope_failed(ch__eph *x, ch__escope *s)
{
    if (x->cfg.purge_on_error)
        ch__scope_evict(x, s, CH__EVICT_ERROR);
    else
        ch__scope_unlock(x, s);
}

ch_status ch__scope_agent_ids(ch__eph *x, const char *tenant, const char *agent, char (**ids)[32],
                              size_t *n)
{
    *ids = NULL;
    *n = 0;
    pthread_mutex_lock(&x->amu);
    ch__agent *a = *agent_slot(x, tenant, agent);
    if (a != NULL) {
        *ids = malloc(a->nscopes * sizeof(**ids));
        if (*ids == NULL) {
            pthread_mutex_unlock(&x->amu);
            return CH_NOMEM;
        }
        for (ch__escope *s = a->head; s != NULL; s = s->anext)
            memcpy((*ids)[(*n)++], s->id, sizeof(s->id));
    }
    pthread_mutex_unlock(&x->amu);
    return CH_OK;
}

/* ---- ending scopes ---------------------------------------------------------------- */

/* Looks at s (shard locked) at time now: ends it (true, shard unlocked), or leaves it
 * alive (false, shard still locked) after starting its lock grace when a locked scope
 * has reached its deadline, and putting it back in the heap when the timer thread
 * holds its entry. */
bool ch__scope_settle(ch__eph *x, ch__escope *s, int64_t now)
{
    ch__evict_reason reason;
    int64_t due = due_of(s, &reason);

    if (now >= due && s->locked && s->grace_until == 0 && !s->completing) {
        /* A locked scope is warned and gets lock_grace more before it ends. */
        s->grace_until = due + x->cfg.lock_grace;
        s->grace_reason = (uint8_t)reason;
        char at[32], until[32];
        ch_time_format(due, at);
        ch_time_format(s->grace_until, until);
        json_t *data =
            json_pack("{s:s, s:s, s:s, s:s, s:s}", "scope", s->id, "agent", s->agent->name,
                      "reason", reason_names[reason], "due_at", at, "grace_until", until);
        __atomic_fetch_add(&x->expiring, 1, __ATOMIC_RELAXED);
        pthread_mutex_lock(&x->hmu);
        outbox_add(x, s->agent->tenant, "ephemeral.expiring", data);
        pthread_mutex_unlock(&x->hmu);
        due = s->grace_until;
    }
    if (now >= due) {
        /* Lateness to the microsecond: deadlines are whole milliseconds. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double late = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - (double)due / 1000.0;
        ch_histogram_observe(&x->lateness, late > 0 ? late : 0.0);
        ch__scope_evict(x, s, reason);
        return true;
    }
    if (x->cfg.exact_expiry) {
        pthread_mutex_lock(&x->hmu);
        if (s->heap_idx < 0)
            heap_push(x, s, due);
        pthread_mutex_unlock(&x->hmu);
    }
    return false;
}

static void decide(ch__eph *x, ch__escope *s, int64_t now)
{
    if (!ch__scope_settle(x, s, now))
        ch__scope_unlock(x, s);
}

/* The safety net: every scope past its deadline, whatever its timer did. */
static void gc_sweep(ch__eph *x)
{
    int64_t now = ch_now_ms();
    for (int i = 0; i < NSHARDS; i++) {
        shard *sh = &x->shards[i];
        char(*due)[32] = NULL;
        size_t n = 0, cap = 0;
        pthread_mutex_lock(&sh->mu);
        for (size_t b = 0; b < sh->nbuckets; b++) {
            for (ch__escope *s = sh->buckets[b]; s != NULL; s = s->hnext) {
                if (due_of(s, NULL) > now)
                    continue;
                if (n == cap) {
                    size_t c = cap ? cap * 2 : 64;
                    char(*d)[32] = realloc(due, c * sizeof(*d));
                    if (d == NULL)
                        break;
                    due = d;
                    cap = c;
                }
                memcpy(due[n++], s->id, sizeof(s->id));
            }
        }
        pthread_mutex_unlock(&sh->mu);
        for (size_t k = 0; k < n; k++) {
            ch__escope *s = ch__scope_lock(x, NULL, due[k]);
            if (s != NULL)
                decide(x, s, ch_now_ms());
        }
        free(due);
    }
}

static void *timer_main(void *arg)
{
    ch__eph *x = arg;
    pthread_setname_np(pthread_self(), "ch-scopes");
    int64_t next_gc = ch_now_ms() + x->cfg.gc_interval;
    char(*batch)[32] = malloc(POP_BATCH * sizeof(*batch));

    pthread_mutex_lock(&x->hmu);
    while (!x->stop) {
        int64_t now = ch_now_ms();
        if (json_array_size(x->outbox) > 0) {
            json_t *events = x->outbox;
            x->outbox = json_array();
            pthread_mutex_unlock(&x->hmu);
            publish(x, events, false);
            pthread_mutex_lock(&x->hmu);
            if (x->outbox == NULL)
                x->outbox = json_array(); /* out of memory: retried next turn */
            continue;
        }
        if (batch != NULL && x->nheap > 0 && x->heap[0].at <= now) {
            /* Take what is due; each scope is looked at under its own shard lock. */
            size_t n = 0;
            while (n < POP_BATCH && x->nheap > 0 && x->heap[0].at <= now) {
                ch__escope *s = x->heap[0].s;
                memcpy(batch[n++], s->id, sizeof(s->id));
                heap_remove(x, s);
            }
            pthread_mutex_unlock(&x->hmu);
            for (size_t i = 0; i < n; i++) {
                ch__escope *s = ch__scope_lock(x, NULL, batch[i]);
                if (s == NULL)
                    continue; /* ended meanwhile */
                if (s->heap_idx >= 0) {
                    ch__scope_unlock(x, s); /* already rearmed */
                    continue;
                }
                decide(x, s, ch_now_ms());
            }
            pthread_mutex_lock(&x->hmu);
            continue;
        }
        if (now >= next_gc) {
            pthread_mutex_unlock(&x->hmu);
            gc_sweep(x);
            next_gc = ch_now_ms() + x->cfg.gc_interval;
            pthread_mutex_lock(&x->hmu);
            continue;
        }
        int64_t wake = next_gc;
        if (x->nheap > 0 && x->heap[0].at < wake)
            wake = x->heap[0].at;
        struct timespec ts = {.tv_sec = wake / 1000, .tv_nsec = (wake % 1000) * 1000000};
        pthread_cond_timedwait(&x->hcv, &x->hmu, &ts);
    }
    pthread_mutex_unlock(&x->hmu);
    free(batch);
    return NULL;
}

/* ---- lifecycle -------------------------------------------------------------------- */

static ch_status open_engine(const char *name, const ch_config *cfg, ch_scope_engine **out,
                             ch_err *e)
{
    /* The guarded engine of secure scopes is not registered: it cannot be configured. */
    const ch_scope_engine_methods *m = ch_scope_engine_find(name);
    if (m == NULL)
        return ch_err_set(e, CH_CONFIG, "ephemeral.engine",
                          "unknown ephemeral engine '%s' (memory, sqlite or redis)", name);
    if (m->version < 1)
        return ch_err_set(e, CH_CONFIG, "ephemeral.engine", "engine '%s' is too old", name);
    return m->open(cfg, out, e);
}

ch_status ch__eph_open(ch_db *db, const ch_config *cfg, ch__eph **out, ch_err *e)
{
    const ch_ephemeral_config *ec = &cfg->ephemeral;
    if (ec->max_ttl <= 0 || ec->default_ttl <= 0 || ec->default_ttl > ec->max_ttl)
        return ch_err_set(e, CH_CONFIG, "ephemeral.default_ttl",
                          "ephemeral.default_ttl must be > 0 and at most ephemeral.max_ttl");
    if (ec->command_ttl <= 0 || ec->command_ttl > ec->max_ttl)
        return ch_err_set(e, CH_CONFIG, "ephemeral.command_ttl",
                          "ephemeral.command_ttl must be > 0 and at most ephemeral.max_ttl");
    if (ec->idle_ttl < 0 || ec->idle_ttl > ec->max_ttl)
        return ch_err_set(e, CH_CONFIG, "ephemeral.idle_ttl",
                          "ephemeral.idle_ttl must be at most ephemeral.max_ttl");
    if (ec->gc_interval <= 0)
        return ch_err_set(e, CH_CONFIG, "ephemeral.gc_interval",
                          "ephemeral.gc_interval must be > 0");

    ch__eph *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    x->db = db;
    x->cfg = *ec;
    x->lateness.bounds = ch_hist_latency_bounds;
    x->outbox = json_array();
    x->nabuckets = 256;
    x->abuckets = calloc(x->nabuckets, sizeof(*x->abuckets));
    pthread_mutex_init(&x->hmu, NULL);
    pthread_cond_init(&x->hcv, NULL);
    pthread_mutex_init(&x->amu, NULL);
    for (int i = 0; i < NSHARDS; i++)
        pthread_mutex_init(&x->shards[i].mu, NULL);
    if (x->outbox == NULL || x->abuckets == NULL) {
        ch_err_set(e, CH_NOMEM, NULL, NULL);
        goto fail;
    }
    if (open_engine("memory", cfg, &x->memory, e) != CH_OK ||
        ch__scope_secure_methods.open(cfg, &x->secure, e) != CH_OK ||
        open_engine(ec->engine, cfg, &x->engine, e) != CH_OK)
        goto fail;
    *out = x;
    return CH_OK;
fail:
    ch__eph_close(x);
    return e ? e->status : CH_INTERNAL;
}

void ch__eph_start(ch__eph *x)
{
    if (x != NULL && !x->started && pthread_create(&x->thread, NULL, timer_main, x) == 0)
        x->started = true;
}

void ch__eph_stop(ch__eph *x)
{
    if (x == NULL)
        return;
    if (x->started) {
        pthread_mutex_lock(&x->hmu);
        x->stop = true;
        pthread_cond_signal(&x->hcv);
        pthread_mutex_unlock(&x->hmu);
        pthread_join(x->thread, NULL);
        x->started = false;
    }
    pthread_mutex_lock(&x->hmu);
    json_t *events = x->outbox;
    x->outbox = json_array();
    pthread_mutex_unlock(&x->hmu);
    publish(x, events, true);
}

void ch__eph_close(ch__eph *x)
{
    if (x == NULL)
        return;
    size_t left = 0;
    for (int i = 0; i < NSHARDS; i++) {
        shard *sh = &x->shards[i];
        for (size_t b = 0; b < sh->nbuckets; b++) {
            for (ch__escope *s = sh->buckets[b], *next; s != NULL; s = next) {
                next = s->hnext;
                s->engine->methods->del(s->engine, s->id, &s->slot);
                sodium_memzero(s, sizeof(*s));
                free(s);
                left++;
            }
        }
        free(sh->buckets);
        pthread_mutex_destroy(&sh->mu);
    }
    if (left > 0)
        ch_log(CH_LOG_INFO, "ephemeral scopes discarded at shutdown", "{s:I}", "scopes",
               (json_int_t)left);
    for (size_t i = 0; x->abuckets && i < x->nabuckets; i++) {
        for (ch__agent *a = x->abuckets[i], *next; a != NULL; a = next) {
            next = a->hnext;
            free(a->json);
            free(a);
        }
    }
    free(x->abuckets);
    if (x->engine)
        x->engine->methods->close(x->engine);
    if (x->memory)
        x->memory->methods->close(x->memory);
    if (x->secure)
        x->secure->methods->close(x->secure);
    free(x->heap);
    json_decref(x->outbox);
    pthread_mutex_destroy(&x->hmu);
    pthread_cond_destroy(&x->hcv);
    pthread_mutex_destroy(&x->amu);
    free(x);
}

/* ---- metrics ---------------------------------------------------------------------- */

/* Remaining lifetime, in seconds: the data behind a TTL heatmap. */
static const double ttl_bounds[CH_HIST_BUCKETS] = {
    1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400, 1e300};

void ch_scope_render_metrics(ch_db *db, ch_buf *out)
{
    ch__eph *x = ch__db_eph(db);
    if (x == NULL)
        return;
    ch_histogram ttl = {.bounds = ttl_bounds};
    int64_t now = ch_now_ms();
    for (int i = 0; i < NSHARDS; i++) {
        shard *sh = &x->shards[i];
        pthread_mutex_lock(&sh->mu);
        for (size_t b = 0; b < sh->nbuckets; b++) {
            for (ch__escope *s = sh->buckets[b]; s != NULL; s = s->hnext) {
                int64_t left = due_of(s, NULL) - now;
                ch_histogram_observe(&ttl, left > 0 ? (double)left / 1000.0 : 0.0);
            }
        }
        pthread_mutex_unlock(&sh->mu);
    }
    int64_t live = 0;
    ch_buf_printf(out, "# HELP charter_scopes Live ephemeral scopes by flow.\n"
                       "# TYPE charter_scopes gauge\n");
    for (int f = 0; f < 3; f++) {
        int64_t n = __atomic_load_n(&x->live[f], __ATOMIC_RELAXED);
        live += n;
        ch_buf_printf(out, "charter_scopes{flow=\"%s\"} %lld\n", flow_names[f], (long long)n);
    }
    int64_t locked = __atomic_load_n(&x->nlocked, __ATOMIC_RELAXED);
    ch_buf_printf(out,
                  "# HELP charter_scopes_locked Live scopes that are locked.\n"
                  "# TYPE charter_scopes_locked gauge\ncharter_scopes_locked %lld\n"
                  "# HELP charter_scopes_locked_ratio Locked share of live scopes.\n"
                  "# TYPE charter_scopes_locked_ratio gauge\ncharter_scopes_locked_ratio %g\n"
                  "# HELP charter_scope_bytes Context bytes held by live scopes.\n"
                  "# TYPE charter_scope_bytes gauge\ncharter_scope_bytes %lld\n"
                  "# HELP charter_scope_timers Deadline timers armed.\n"
                  "# TYPE charter_scope_timers gauge\ncharter_scope_timers %zu\n",
                  (long long)locked, live > 0 ? (double)locked / (double)live : 0.0,
                  (long long)__atomic_load_n(&x->bytes, __ATOMIC_RELAXED),
                  __atomic_load_n(&x->nheap, __ATOMIC_RELAXED));
    ch_buf_printf(out, "# HELP charter_scope_evictions_total Scopes ended, by reason.\n"
                       "# TYPE charter_scope_evictions_total counter\n");
    for (int r = 0; r < CH__EVICT_COUNT; r++)
        ch_buf_printf(out, "charter_scope_evictions_total{reason=\"%s\"} %llu\n", reason_names[r],
                      (unsigned long long)__atomic_load_n(&x->evictions[r], __ATOMIC_RELAXED));
    ch_buf_printf(
        out,
        "# HELP charter_scope_expiring_total Locked scopes warned at their deadline (grace).\n"
        "# TYPE charter_scope_expiring_total counter\ncharter_scope_expiring_total %llu\n"
        "# HELP charter_scope_events_dropped_total Eviction notices the stream refused.\n"
        "# TYPE charter_scope_events_dropped_total counter\n"
        "charter_scope_events_dropped_total %llu\n",
        (unsigned long long)__atomic_load_n(&x->expiring, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&x->unpublished, __ATOMIC_RELAXED));
    ch_buf_printf(out, "# HELP charter_scope_ttl_remaining_seconds Time left of live scopes.\n"
                       "# TYPE charter_scope_ttl_remaining_seconds histogram\n");
    ch_histogram_render(&ttl, "charter_scope_ttl_remaining_seconds", "", out);
    ch_buf_printf(out, "# HELP charter_scope_expiry_lateness_seconds How late scopes ended "
                       "after their deadline.\n"
                       "# TYPE charter_scope_expiry_lateness_seconds histogram\n");
    ch_histogram_render(&x->lateness, "charter_scope_expiry_lateness_seconds", "", out);
}
