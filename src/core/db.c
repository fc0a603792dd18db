/*
 * db.c — the ch_db handle: storage connections, the writer thread and the retention
 * sweeper.
 *
 * Writes are serialized through one writer thread. Requests queue up while the
 * previous batch is being processed; the writer then takes the whole queue and runs
 * it as one transaction (group commit), each request inside its own savepoint so a
 * request that fails is undone alone. A single writer keeps the per-session order
 * (seq) trivially total.
 *
 * Durability is pipelined: after COMMIT the writer hands the batch to the syncer
 * thread and starts on the next batch at once; the syncer calls the backend's sync()
 * (fsync) and only then completes the requests of every batch committed before it
 * started. No reply is sent before its data is on disk, yet the fsync of one batch
 * overlaps the execution of the next, and one fsync often covers several commits.
 *
 * Reads use a pool of reader connections, one per concurrently reading thread.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "core/signing.h"
#include "ephemeral/ephemeral.h"
#include "mandates/mandates.h"

#define MAX_BATCH 4096

struct ch_db {
    ch_config cfg;
    const ch_store_methods *m;
    ch_store *w; /* writer connection: writer thread only */

    pthread_mutex_t pool_mu;
    ch_store **pool;
    int npool, cappool;

    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    ch_req *q_head, *q_tail;
    bool stopping;
    pthread_t writer;

    pthread_mutex_t s_mu; /* committed requests waiting for their fsync */
    pthread_cond_t s_cv;
    ch_req *s_head, *s_tail;
    bool s_stopping;
    pthread_t syncer;

    bool has_sweeper;
    bool sweeper_stop;
    pthread_mutex_t sw_mu;
    pthread_cond_t sw_cv;
    pthread_t sweeper;

    ch_histogram batch_size;
    ch_histogram commit_seconds;
    ch_histogram fsync_seconds;
    uint64_t commit_failures;
    uint64_t fsync_failures;
    bool sync_failed; /* atomic: an fsync failed; no write is accepted any more */

    ch__registry *registry; /* every mandate, in memory */
    ch__audit_queue *audit; /* check decisions waiting for the writer */
    ch__signer *signer;     /* the artifact signing key */
    ch__eph *eph;           /* ephemeral scopes (NULL without background work) */

    /* The event stream: ids written by the running batch, committed, durable. */
    int64_t stream_batch;     /* writer only */
    int64_t stream_committed; /* atomic: written by the writer after commit */
    int64_t stream_durable;   /* atomic: set by the syncer after the fsync */
    void (*on_stream)(void *arg, int64_t last_id);
    void *on_stream_arg;
};

const ch_store_methods *ch__db_store(ch_db *db)
{
    return db->m;
}

ch__registry *ch__db_registry(ch_db *db)
{
    return db->registry;
}

ch__audit_queue *ch__db_audit(ch_db *db)
{
    return db->audit;
}

ch__eph *ch__db_eph(ch_db *db)
{
    return db->eph;
}

const ch__signer *ch__db_signer(ch_db *db)
{
    return db->signer;
}

void ch__db_stream_wrote(ch_db *db, int64_t id)
{
    if (id > db->stream_batch)
        db->stream_batch = id;
}

int64_t ch_stream_last(ch_db *db)
{
    return __atomic_load_n(&db->stream_durable, __ATOMIC_ACQUIRE);
}

void ch_db_on_stream(ch_db *db, void (*fn)(void *arg, int64_t last_id), void *arg)
{
    db->on_stream_arg = arg;
    __atomic_store_n(&db->on_stream, fn, __ATOMIC_RELEASE);
}

const ch_config *ch__db_config(ch_db *db)
{
    return &db->cfg;
}

static const ch__op_def *op_def(ch_op op)
{
    if ((unsigned)op >= CH__OP_COUNT)
        return NULL;
    if (ch__session_ops[op] != NULL)
        return ch__session_ops[op];
    if (ch__mandate_ops[op] != NULL)
        return ch__mandate_ops[op];
    if (ch__scope_ops[op] != NULL)
        return ch__scope_ops[op];
    return ch__key_ops[op];
}

ch_store *ch__reader_get(ch_db *db, ch_err *e)
{
    ch_store *r = NULL;
    pthread_mutex_lock(&db->pool_mu);
    if (db->npool > 0)
        r = db->pool[--db->npool];
    pthread_mutex_unlock(&db->pool_mu);
    if (r == NULL && db->m->open(db->cfg.data_dir, false, &r, e) != CH_OK)
        return NULL;
    return r;
}

void ch__reader_put(ch_db *db, ch_store *r)
{
    pthread_mutex_lock(&db->pool_mu);
    if (db->npool == db->cappool) {
        int cap = db->cappool ? db->cappool * 2 : 8;
        ch_store **p = realloc(db->pool, (size_t)cap * sizeof(*p));
        if (p == NULL) {
            pthread_mutex_unlock(&db->pool_mu);
            db->m->close(r);
            return;
        }
        db->pool = p;
        db->cappool = cap;
    }
    db->pool[db->npool++] = r;
    pthread_mutex_unlock(&db->pool_mu);
}

/* Runs one group commit over the list batch and completes every request in it. */
static void run_batch(ch_db *db, ch_req *batch, int n)
{
    ch_store *w = db->w;
    ch_status st = db->m->begin(w);

    if (st == CH_OK && __atomic_load_n(&db->sync_failed, __ATOMIC_ACQUIRE)) {
        db->m->rollback(w);
        st = CH_IO;
    }
    int64_t stream_before = db->stream_batch;
    for (ch_req *r = batch; r != NULL && st == CH_OK; r = r->next) {
        ch_status rs = db->m->savepoint(w);
        size_t mark = ch__registry_mark(db->registry);
        int64_t stream_mark = db->stream_batch;
        if (rs == CH_OK) {
            rs = op_def(r->op)->exec(db, w, r);
            if (rs != CH_OK) {
                ch__registry_undo(db->registry, mark);
                db->stream_batch = stream_mark;
            }
            if (rs != CH_OK && r->err.status == CH_OK)
                ch_err_set(&r->err, rs, NULL, NULL);
            if (rs != CH_OK) {
                json_decref(r->result);
                r->result = NULL;
            }
            /* If the savepoint cannot be undone (or SQLite already rolled the whole
             * transaction back after a storage error), what is in the transaction is
             * no longer known: the whole batch is abandoned below. */
            if (db->m->release(w, rs == CH_OK) != CH_OK)
                st = CH_IO;
        } else {
            st = CH_IO;
        }
    }
    if (st != CH_OK) {
        /* Nothing of this batch is committed: undo it and tell every request so. */
        db->m->rollback(w);
        ch__registry_undo(db->registry, 0);
        db->stream_batch = stream_before;
        for (ch_req *r = batch; r != NULL; r = r->next) {
            ch_err_set(&r->err, CH_IO, NULL, "storage error; nothing was written");
            json_decref(r->result);
            r->result = NULL;
        }
    } else {
        uint64_t t0 = ch_mono_ns();
        st = db->m->commit(w);
        ch_histogram_observe(&db->commit_seconds, (double)(ch_mono_ns() - t0) / 1e9);
        ch_histogram_observe(&db->batch_size, (double)n);
        if (st == CH_OK) {
            /* Visible to checks from now on; acknowledged only after the fsync. */
            ch__registry_publish(db->registry);
            __atomic_store_n(&db->stream_committed, db->stream_batch, __ATOMIC_RELEASE);
        } else {
            db->m->rollback(w);
            ch__registry_undo(db->registry, 0);
            db->stream_batch = stream_before;
            __atomic_fetch_add(&db->commit_failures, 1, __ATOMIC_RELAXED);
            for (ch_req *r = batch; r != NULL; r = r->next) {
                if (r->err.status == CH_OK) {
                    ch_err_set(&r->err, CH_IO, NULL, "commit failed; nothing was written");
                    json_decref(r->result);
                    r->result = NULL;
                }
            }
        }
    }
    /* Hand the batch to the syncer, which completes it once it is durable. */
    ch_req *last = batch;
    while (last->next != NULL)
        last = last->next;
    pthread_mutex_lock(&db->s_mu);
    if (db->s_tail != NULL)
        db->s_tail->next = batch;
    else
        db->s_head = batch;
    db->s_tail = last;
    pthread_cond_signal(&db->s_cv);
    pthread_mutex_unlock(&db->s_mu);
}

static void *syncer_main(void *arg)
{
    ch_db *db = arg;
    pthread_setname_np(pthread_self(), "ch-syncer");
    for (;;) {
        pthread_mutex_lock(&db->s_mu);
        while (db->s_head == NULL && !db->s_stopping)
            pthread_cond_wait(&db->s_cv, &db->s_mu);
        ch_req *list = db->s_head;
        db->s_head = db->s_tail = NULL;
        pthread_mutex_unlock(&db->s_mu);
        if (list == NULL)
            break;
        /* Every request on the list was committed before this sync begins. */
        int64_t stream = __atomic_load_n(&db->stream_committed, __ATOMIC_ACQUIRE);
        uint64_t t0 = ch_mono_ns();
        ch_status st = db->m->sync(db->w);
        ch_histogram_observe(&db->fsync_seconds, (double)(ch_mono_ns() - t0) / 1e9);
        if (st != CH_OK) {
            /* The batches are committed (and visible) but may not survive a power
             * loss; their writers are told so rather than acknowledged. A failed fsync
             * is final: the kernel may have dropped the unwritten pages, and a later
             * successful fsync would not bring them back, while WAL recovery stops at
             * the first missing frame and would discard everything after it. So no
             * later write is accepted until a restart has run recovery. */
            __atomic_fetch_add(&db->fsync_failures, 1, __ATOMIC_RELAXED);
            __atomic_store_n(&db->sync_failed, true, __ATOMIC_RELEASE);
            ch_log(CH_LOG_ERROR, "fsync failed; refusing writes until restarted", NULL);
        }
        if (st == CH_OK && stream > db->stream_durable) {
            __atomic_store_n(&db->stream_durable, stream, __ATOMIC_RELEASE);
            void (*fn)(void *, int64_t) = __atomic_load_n(&db->on_stream, __ATOMIC_ACQUIRE);
            if (fn != NULL)
                fn(db->on_stream_arg, stream);
        }
        /* done() may free the request: read the link first. */
        for (ch_req *r = list, *next; r != NULL; r = next) {
            next = r->next;
            r->next = NULL;
            if (st != CH_OK && r->err.status == CH_OK) {
                ch_err_set(&r->err, CH_IO, NULL, "the write could not be made durable");
                json_decref(r->result);
                r->result = NULL;
            }
            const ch__op_def *def = op_def(r->op);
            if (def->finish != NULL)
                def->finish(db, r);
            r->done(r);
        }
    }
    return NULL;
}

static void *writer_main(void *arg)
{
    ch_db *db = arg;
    pthread_setname_np(pthread_self(), "ch-writer");
    for (;;) {
        pthread_mutex_lock(&db->q_mu);
        while (db->q_head == NULL && !db->stopping)
            pthread_cond_wait(&db->q_cv, &db->q_mu);
        if (db->q_head == NULL) {
            pthread_mutex_unlock(&db->q_mu);
            break;
        }
        /* Take up to MAX_BATCH requests; the rest wait for the next commit. */
        ch_req *batch = db->q_head, *last = batch;
        int n = 1;
        while (last->next != NULL && n < MAX_BATCH) {
            last = last->next;
            n++;
        }
        db->q_head = last->next;
        if (db->q_head == NULL)
            db->q_tail = NULL;
        last->next = NULL;
        pthread_mutex_unlock(&db->q_mu);
        run_batch(db, batch, n);
    }
    return NULL;
}

ch_status ch_submit(ch_db *db, ch_req *req)
{
    const ch__op_def *def = op_def(req->op);
    ch_status st;

    ch_err_clear(&req->err);
    req->result = NULL;
    req->next = NULL;
    if (def == NULL || req->done == NULL)
        return ch_err_set(&req->err, CH_BAD_REQUEST, NULL, "unknown operation");
    if (req->priv == NULL) {
        req->priv = calloc(1, sizeof(*req->priv));
        if (req->priv == NULL)
            return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
        json_incref(req->body);
    }
    if (def->prepare != NULL) {
        st = def->prepare(db, req);
        if (st != CH_OK) {
            if (req->err.status == CH_OK)
                ch_err_set(&req->err, st, NULL, NULL);
            return st;
        }
    }
    /* Refused after prepare: finish() still runs, so an op can undo what its
     * prepare set up. */
    if (__atomic_load_n(&db->sync_failed, __ATOMIC_ACQUIRE)) {
        st = ch_err_set(&req->err, CH_IO, NULL,
                        "storage failed to sync; writes are refused until a restart");
        if (def->finish != NULL)
            def->finish(db, req);
        return st;
    }
    pthread_mutex_lock(&db->q_mu);
    if (db->stopping) {
        pthread_mutex_unlock(&db->q_mu);
        st = ch_err_set(&req->err, CH_SHUTTING_DOWN, NULL, NULL);
        if (def->finish != NULL)
            def->finish(db, req);
        return st;
    }
    if (db->q_tail != NULL)
        db->q_tail->next = req;
    else
        db->q_head = req;
    db->q_tail = req;
    pthread_cond_signal(&db->q_cv);
    pthread_mutex_unlock(&db->q_mu);
    return CH_OK;
}

static void call_done(ch_req *req)
{
    struct ch__req_priv *p = req->priv;
    pthread_mutex_lock(&p->mu);
    p->finished = true;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

ch_status ch_call(ch_db *db, ch_req *req)
{
    req->done = call_done;
    req->priv = calloc(1, sizeof(*req->priv));
    if (req->priv == NULL)
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    json_incref(req->body);
    pthread_mutex_init(&req->priv->mu, NULL);
    pthread_cond_init(&req->priv->cv, NULL);
    if (ch_submit(db, req) != CH_OK)
        return req->err.status;
    pthread_mutex_lock(&req->priv->mu);
    while (!req->priv->finished)
        pthread_cond_wait(&req->priv->cv, &req->priv->mu);
    pthread_mutex_unlock(&req->priv->mu);
    return req->err.status;
}

void ch_req_dispose(ch_req *req)
{
    if (req->priv != NULL) {
        if (req->priv->prep_free != NULL)
            req->priv->prep_free(req->priv->prep);
        if (req->done == call_done) {
            pthread_mutex_destroy(&req->priv->mu);
            pthread_cond_destroy(&req->priv->cv);
        }
        free(req->priv);
        req->priv = NULL;
        json_decref(req->body);
    }
    req->body = NULL;
    json_decref(req->result);
    req->result = NULL;
}

/* The retention sweeper: wakes every sweep_interval and runs one retention pass
 * through the writer, like any other write. */
static void *sweeper_main(void *arg)
{
    ch_db *db = arg;
    pthread_setname_np(pthread_self(), "ch-sweeper");
    pthread_mutex_lock(&db->sw_mu);
    while (!db->sweeper_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (db->cfg.retention.sweep_interval % 1000) * 1000000;
        ts.tv_sec += db->cfg.retention.sweep_interval / 1000 + ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&db->sw_cv, &db->sw_mu, &ts);
        if (db->sweeper_stop)
            break;
        pthread_mutex_unlock(&db->sw_mu);
        for (;;) {
            ch_req req = {.op = CH_OP_RETENTION_SWEEP};
            ch_status st = ch_call(db, &req);
            /* A pass handles a bounded number of sessions; go on while it was full. */
            bool more = st == CH_OK && json_is_true(json_object_get(req.result, "more"));
            if (st != CH_OK && st != CH_SHUTTING_DOWN)
                ch_log(CH_LOG_ERROR, "retention sweep failed", "{s:s}", "error",
                       req.err.message);
            ch_req_dispose(&req);
            if (!more || __atomic_load_n(&db->sweeper_stop, __ATOMIC_ACQUIRE))
                break;
        }
        pthread_mutex_lock(&db->sw_mu);
    }
    pthread_mutex_unlock(&db->sw_mu);
    return NULL;
}

ch_status ch_db_open(const ch_config *cfg, bool background, ch_db **out, ch_err *e)
{
    ch_db *db;

    if (sodium_init() < 0)
        return ch_err_set(e, CH_INTERNAL, NULL, "libsodium failed to initialize");
    db = calloc(1, sizeof(*db));
    if (db == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    db->cfg = *cfg;
    db->batch_size.bounds = ch_hist_size_bounds;
    db->commit_seconds.bounds = ch_hist_latency_bounds;
    pthread_mutex_init(&db->pool_mu, NULL);
    pthread_mutex_init(&db->q_mu, NULL);
    pthread_cond_init(&db->q_cv, NULL);
    pthread_mutex_init(&db->sw_mu, NULL);
    pthread_cond_init(&db->sw_cv, NULL);
    pthread_mutex_init(&db->s_mu, NULL);
    pthread_cond_init(&db->s_cv, NULL);
    db->fsync_seconds.bounds = ch_hist_latency_bounds;

    db->m = ch_store_find(cfg->store);
    if (db->m == NULL) {
        ch_err_set(e, CH_CONFIG, "store", "unknown store backend '%s'", cfg->store);
        goto fail;
    }
    if (db->m->version < 2) {
        ch_err_set(e, CH_CONFIG, "store", "store backend '%s' implements version %d; 2 is needed",
                   cfg->store, db->m->version);
        goto fail;
    }
    if (db->m->open(cfg->data_dir, true, &db->w, e) != CH_OK)
        goto fail;
    if (ch__signer_open(cfg->data_dir, &db->signer, e) != CH_OK ||
        ch__registry_open(db, db->w, &db->registry, e) != CH_OK)
        goto fail;
    /* Ephemeral scopes belong to the serving process: opening an engine clears what
     * it holds, which an offline admin command must never do to a running server. */
    if (background && ch__eph_open(db, cfg, &db->eph, e) != CH_OK) {
        db->eph = NULL;
        goto fail;
    }
    if ((db->audit = ch__audit_queue_new(db)) == NULL) {
        ch_err_set(e, CH_NOMEM, NULL, NULL);
        goto fail;
    }
    if (db->m->stream_last(db->w, &db->stream_durable) != CH_OK) {
        ch_err_set(e, CH_IO, NULL, "cannot read the event stream");
        goto fail;
    }
    db->stream_committed = db->stream_batch = db->stream_durable;
    if (pthread_create(&db->syncer, NULL, syncer_main, db) != 0) {
        ch_err_set(e, CH_INTERNAL, NULL, "cannot start the syncer thread");
        goto fail;
    }
    if (pthread_create(&db->writer, NULL, writer_main, db) != 0) {
        ch_err_set(e, CH_INTERNAL, NULL, "cannot start the writer thread");
        pthread_mutex_lock(&db->s_mu);
        db->s_stopping = true;
        pthread_cond_signal(&db->s_cv);
        pthread_mutex_unlock(&db->s_mu);
        pthread_join(db->syncer, NULL);
        goto fail;
    }
    ch__audit_queue_start(db->audit);
    if (background)
        ch__eph_start(db->eph);
    if (background)
        ch__registry_expiry_start(db->registry);
    if (background && cfg->retention.sweep_interval > 0) {
        if (pthread_create(&db->sweeper, NULL, sweeper_main, db) == 0)
            db->has_sweeper = true;
    }
    *out = db;
    return CH_OK;
fail:
    ch__eph_close(db->eph);
    ch__registry_close(db->registry);
    ch__audit_queue_free(db->audit);
    ch__signer_close(db->signer);
    if (db->w != NULL)
        db->m->close(db->w);
    free(db);
    return e ? e->status : CH_INTERNAL;
}

void ch_db_close(ch_db *db)
{
    if (db == NULL)
        return;
    if (db->has_sweeper) {
        pthread_mutex_lock(&db->sw_mu);
        __atomic_store_n(&db->sweeper_stop, true, __ATOMIC_RELEASE);
        pthread_cond_signal(&db->sw_cv);
        pthread_mutex_unlock(&db->sw_mu);
        pthread_join(db->sweeper, NULL);
    }
    /* No more expiries; scope notices and queued check decisions are written before
     * the writer stops. */
    ch__eph_stop(db->eph);
    ch__registry_expiry_stop(db->registry);
    ch__audit_queue_stop(db->audit);
    ch_req flush = {.op = CH_OP_AUDIT_FLUSH};
    ch_call(db, &flush);
    ch_req_dispose(&flush);
    /* The writer finishes everything already queued before it exits. */
    pthread_mutex_lock(&db->q_mu);
    db->stopping = true;
    pthread_cond_signal(&db->q_cv);
    pthread_mutex_unlock(&db->q_mu);
    pthread_join(db->writer, NULL);
    /* Then the syncer makes the last batches durable and completes them. */
    pthread_mutex_lock(&db->s_mu);
    db->s_stopping = true;
    pthread_cond_signal(&db->s_cv);
    pthread_mutex_unlock(&db->s_mu);
    pthread_join(db->syncer, NULL);

    ch__eph_close(db->eph);
    ch__registry_close(db->registry);
    ch__audit_queue_free(db->audit);
    ch__signer_close(db->signer);
    db->m->close(db->w);
    for (int i = 0; i < db->npool; i++)
        db->m->close(db->pool[i]);
    free(db->pool);
    pthread_mutex_destroy(&db->pool_mu);
    pthread_mutex_destroy(&db->q_mu);
    pthread_cond_destroy(&db->q_cv);
    pthread_mutex_destroy(&db->sw_mu);
    pthread_cond_destroy(&db->sw_cv);
    pthread_mutex_destroy(&db->s_mu);
    pthread_cond_destroy(&db->s_cv);
    free(db);
}

void ch_db_render_metrics(ch_db *db, ch_buf *out)
{
    ch_buf_printf(out, "# HELP charter_commit_batch_size Requests per group commit.\n"
                       "# TYPE charter_commit_batch_size histogram\n");
    ch_histogram_render(&db->batch_size, "charter_commit_batch_size", "", out);
    ch_buf_printf(out, "# HELP charter_commit_seconds Time to commit one batch (WAL write).\n"
                       "# TYPE charter_commit_seconds histogram\n");
    ch_histogram_render(&db->commit_seconds, "charter_commit_seconds", "", out);
    ch_buf_printf(out, "# HELP charter_fsync_seconds Time to make committed batches durable.\n"
                       "# TYPE charter_fsync_seconds histogram\n");
    ch_histogram_render(&db->fsync_seconds, "charter_fsync_seconds", "", out);
    ch_buf_printf(out,
                  "# HELP charter_commit_failures_total Group commits that failed.\n"
                  "# TYPE charter_commit_failures_total counter\n"
                  "charter_commit_failures_total %llu\n"
                  "# HELP charter_fsync_failures_total Syncs that failed (writes not acknowledged).\n"
                  "# TYPE charter_fsync_failures_total counter\n"
                  "charter_fsync_failures_total %llu\n",
                  (unsigned long long)__atomic_load_n(&db->commit_failures, __ATOMIC_RELAXED),
                  (unsigned long long)__atomic_load_n(&db->fsync_failures, __ATOMIC_RELAXED));
    ch__mandate_metrics(db, out);
    ch_scope_render_metrics(db, out);
}
