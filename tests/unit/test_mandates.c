/*
 * test_mandates.c — mandates through libcharter's public API, on a real SQLite store
 * in a temp dir: create and its validation, the lifecycle matrix, delegation and its
 * subset rules, cascades over deep and wide trees, amendments (PATCH) with clipping,
 * every reason of the check, exact expiry, sessions following their mandate,
 * durability across a restart, undo inside a group commit (memory never diverges
 * from disk), the audit trail, the event stream and signed artifacts.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "unit.h"

#include <sodium.h>

#include "charter.h"
#include "mandates/mandates.h" /* the registry lock: see hold_writer() */

#define TENANT "acme"
#define OTHER "globex"
#define HOUR (3600 * 1000)

/* The scope most tests start from. */
#define FULL_SCOPE                                                                                 \
    "{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\",\"web\"],"                                 \
    "\"resources\":[\"repo:web/*\",\"doc:readme\"],\"classes\":[\"read\",\"write\",\"external\"]}"

/* A scope inside FULL_SCOPE that allows what chk_ok() asks. */
#define SMALL_SCOPE                                                                                \
    "{\"tools\":[\"git\"],\"lanes\":[\"repo\"],"                                                   \
    "\"resources\":[\"repo:web/*\"],\"classes\":[\"read\"]}"

typedef struct fixture {
    char dir[UNIT_PATH_MAX];
    ch_db *db;
} fixture;

/* ---- the database ---------------------------------------------------------------- */

/* Opens the database of dir/data with the expiry timer running (background work) but
 * no retention sweep. Returns the status of ch_db_open. */
static ch_status try_open(const char *dir, ch_db **db, ch_err *e)
{
    ch_config cfg;
    ch_config_defaults(&cfg);
    cfg.retention.sweep_interval = 0;
    ch_err_clear(e);
    if (snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", dir) >= (int)sizeof(cfg.data_dir))
        return ch_err_set(e, CH_CONFIG, NULL, "data dir path too long");
    return ch_db_open(&cfg, true, db, e);
}

static ch_db *open_at(const char *dir)
{
    ch_err e;
    ch_db *db = NULL;
    if (try_open(dir, &db, &e) != CH_OK)
        fail_msg("ch_db_open: %s", e.message);
    assert_non_null(db);
    return db;
}

/* Opens a fresh database; on failure leaves nothing behind (cmocka does not run the
 * teardown of a failed setup). */
static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    ch_err e;
    if (f == NULL)
        return -1;
    unit_mkdtemp(f->dir);
    if (try_open(f->dir, &f->db, &e) != CH_OK) {
        print_error("ch_db_open: %s\n", e.message);
        unit_rm_rf(f->dir);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ch_db_close(f->db); /* NULL: a no-op */
    unit_rm_rf(f->dir);
    free(f);
    return 0;
}

/* Closes the database (draining every queued write) and opens it again on the same
 * data dir: what the new handle answers comes from disk only. */
static void reopen(fixture *f)
{
    ch_db_close(f->db);
    f->db = NULL;
    f->db = open_at(f->dir);
}

/* ---- JSON ------------------------------------------------------------------------ */

static json_t *jparse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        fail_msg("test JSON does not parse: %.300s: %s", text, jerr.text);
    return v;
}

/* Parses the JSON text printf would make of fmt. */
static json_t *jfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *jfmt(const char *fmt, ...)
{
    va_list ap;
    char *text = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&text, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    json_t *v = jparse(text);
    free(text);
    return v;
}

static int64_t jint(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("'%s' is not an integer", k);
    return json_integer_value(v);
}

static const char *jstr(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        fail_msg("'%s' is not a string", k);
    return json_string_value(v);
}

/* Fails unless a and b are equal JSON, showing both. */
#define assert_json_equal(a, b) assert_json_equal_at(__LINE__, (a), (b))
static void assert_json_equal_at(int line, const json_t *a, const json_t *b)
{
    if (json_equal(a, b))
        return;
    char *ta = json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    char *tb = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    fail_msg("line %d: JSON differs:\n  %.1500s\n  %.1500s", line, ta ? ta : "?", tb ? tb : "?");
}

/* a equals the JSON text b. */
#define assert_json_text(a, b) assert_json_text_at(__LINE__, (a), (b))
static void assert_json_text_at(int line, const json_t *a, const char *b)
{
    json_t *v = jparse(b);
    assert_json_equal_at(line, a, v);
    json_decref(v);
}

static int64_t ms_of(const char *rfc3339)
{
    int64_t ms = 0;
    if (ch_time_parse(rfc3339, &ms) != CH_OK)
        fail_msg("not a time: %s", rfc3339);
    return ms;
}

/* ---- writes ---------------------------------------------------------------------- */

/* Runs one write with ch_call(). body is borrowed. *res (if not NULL) receives a new
 * reference to the result, *err a copy of the error. Checks the ch_call contract: the
 * status is err.status, and a result exists exactly on success. */
static ch_status run_json(ch_db *db, ch_op op, const char *tenant, const char *id, json_t *body,
                          json_t **res, ch_err *err)
{
    ch_req req;
    memset(&req, 0, sizeof(req));
    req.op = op;
    snprintf(req.tenant, sizeof(req.tenant), "%s", tenant);
    if (id != NULL)
        snprintf(req.id, sizeof(req.id), "%s", id);
    req.body = body;
    ch_status st = ch_call(db, &req);
    assert_int_equal(st, req.err.status);
    if (st == CH_OK) {
        assert_non_null(req.result);
    } else {
        assert_null(req.result);
        assert_true(strlen(req.err.message) > 0);
    }
    if (res != NULL)
        *res = json_incref(req.result);
    if (err != NULL)
        *err = req.err;
    ch_req_dispose(&req);
    return st;
}

static ch_status run(ch_db *db, ch_op op, const char *tenant, const char *id, const char *body,
                     json_t **res, ch_err *err)
{
    json_t *b = body ? jparse(body) : NULL;
    ch_status st = run_json(db, op, tenant, id, b, res, err);
    json_decref(b);
    return st;
}

/* A write that must succeed; returns its result (the caller releases it). */
#define must(db, op, tenant, id, body) must_at(__LINE__, db, op, tenant, id, body)
static json_t *must_at(int line, ch_db *db, ch_op op, const char *tenant, const char *id,
                       const char *body)
{
    json_t *res = NULL;
    ch_err e;
    if (run(db, op, tenant, id, body, &res, &e) != CH_OK)
        fail_msg("line %d: %.300s: %s (%s, field '%s')", line, body ? body : "(null)",
                 ch_status_name(e.status), e.message, e.field);
    return res;
}

/* Like must(), releasing the result. */
#define ok(db, op, tenant, id, body) json_decref(must_at(__LINE__, db, op, tenant, id, body))

/* A write that must fail with want; field and state (when not NULL) must match too. */
#define expect_fail(db, op, tenant, id, body, want, field, state)                                  \
    expect_fail_json_at(__LINE__, db, op, tenant, id, body, NULL, want, field, state)
#define expect_fail_json(db, op, tenant, id, jbody, want, field, state)                            \
    expect_fail_json_at(__LINE__, db, op, tenant, id, NULL, jbody, want, field, state)
static void expect_fail_json_at(int line, ch_db *db, ch_op op, const char *tenant, const char *id,
                                const char *body, json_t *jbody, ch_status want, const char *field,
                                const char *state)
{
    ch_err e;
    json_t *b = jbody ? json_incref(jbody) : body ? jparse(body) : NULL;
    char *text = b ? json_dumps(b, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    ch_status st = run_json(db, op, tenant, id, b, NULL, &e);
    json_decref(b);
    if (st != want) {
        fail_msg("line %d: %.200s: got %s (%s), want %s", line, text ? text : "(null)",
                 ch_status_name(st), e.message, ch_status_name(want));
    }
    if (field != NULL && strcmp(e.field, field) != 0)
        fail_msg("line %d: %.200s: field '%s', want '%s' (%s)", line, text ? text : "(null)",
                 e.field, field, e.message);
    if (state != NULL && strcmp(e.state, state) != 0)
        fail_msg("line %d: %.200s: state '%s', want '%s'", line, text ? text : "(null)", e.state,
                 state);
    free(text);
}

/* ---- mandates -------------------------------------------------------------------- */

/* Creates a root mandate of tenant: approver alice, FULL_SCOPE, expiring in an hour,
 * with the fields of the JSON object text extra (may be NULL) added or replacing those.
 * Its id goes to id; returns the mandate (the caller releases it). */
#define mk_root(db, tenant, extra, id) mk_root_at(__LINE__, db, tenant, extra, id)
static json_t *mk_root_at(int line, ch_db *db, const char *tenant, const char *extra,
                          char id[CH_ID_MAX])
{
    char exp[32];
    ch_err e;
    json_t *res = NULL;
    ch_time_format(ch_now_ms() + HOUR, exp);
    json_t *body = json_pack("{s:s, s:s, s:o}", "approver", "alice", "expires_at", exp, "scope",
                             jparse(FULL_SCOPE));
    if (extra != NULL) {
        json_t *x = jparse(extra);
        json_object_update(body, x);
        json_decref(x);
    }
    if (run_json(db, CH_OP_MANDATE_CREATE, tenant, NULL, body, &res, &e) != CH_OK)
        fail_msg("line %d: create: %s (field '%s')", line, e.message, e.field);
    json_decref(body);
    snprintf(id, CH_ID_MAX, "%s", jstr(res, "id"));
    return res;
}

static json_t *mget(ch_db *db, const char *tenant, const char *id)
{
    json_t *m = NULL;
    ch_err e;
    if (ch_mandate_get(db, tenant, id, &m, &e) != CH_OK)
        fail_msg("ch_mandate_get %s: %s", id, e.message);
    return m;
}

/* Delegates from parent to actor: purpose "sub-task", FULL_SCOPE, the parent's
 * expires_at, plus the fields of extra (may be NULL). The child's id goes to id;
 * returns the child (the caller releases it). */
#define mk_child(db, tenant, parent, actor, extra, id)                                             \
    mk_child_at(__LINE__, db, tenant, parent, actor, extra, id)
static json_t *mk_child_at(int line, ch_db *db, const char *tenant, const char *parent,
                           const char *actor, const char *extra, char id[CH_ID_MAX])
{
    ch_err e;
    json_t *res = NULL;
    json_t *p = mget(db, tenant, parent);
    json_t *body = json_pack("{s:s, s:s, s:o, s:O}", "actor", actor, "purpose", "sub-task", "scope",
                             jparse(FULL_SCOPE), "expires_at", json_object_get(p, "expires_at"));
    json_decref(p);
    if (extra != NULL) {
        json_t *x = jparse(extra);
        json_object_update(body, x);
        json_decref(x);
    }
    if (run_json(db, CH_OP_MANDATE_DELEGATE, tenant, parent, body, &res, &e) != CH_OK)
        fail_msg("line %d: delegate: %s (%s, field '%s')", line, ch_status_name(e.status),
                 e.message, e.field);
    json_decref(body);
    snprintf(id, CH_ID_MAX, "%s", jstr(res, "id"));
    return res;
}

/* The mandate's state, from ch_mandate_get (copied to out). */
static const char *mstate(ch_db *db, const char *tenant, const char *id, char out[16])
{
    json_t *m = mget(db, tenant, id);
    snprintf(out, 16, "%s", jstr(m, "state"));
    json_decref(m);
    return out;
}

#define assert_mstate(db, tenant, id, want)                                                        \
    do {                                                                                           \
        char st_[16];                                                                              \
        assert_string_equal(mstate(db, tenant, id, st_), want);                                    \
    } while (0)

static int64_t mversion(ch_db *db, const char *tenant, const char *id)
{
    json_t *m = mget(db, tenant, id);
    int64_t v = jint(m, "version");
    json_decref(m);
    return v;
}

/* ---- checks ---------------------------------------------------------------------- */

/* Checks action (tool, lane, resource, class) on mandate; returns the reason. */
static const char *chk(ch_db *db, const char *tenant, const char *mandate, const char *actor,
                       const char *tool, const char *lane, const char *resource, const char *cls,
                       ch_decision *out)
{
    ch_decision d;
    ch_action a = {tool, lane, resource, cls};
    if (out == NULL)
        out = &d;
    memset(out, 0, sizeof(*out));
    ch_check(db, tenant, mandate, actor, NULL, &a, out);
    assert_non_null(out->reason);
    assert_true(out->allow == (strcmp(out->reason, "ok") == 0));
    return out->reason;
}

/* The reason a check of an action inside FULL_SCOPE gets. */
static const char *chk_ok(ch_db *db, const char *tenant, const char *mandate)
{
    return chk(db, tenant, mandate, NULL, "git", "repo", "repo:web/src/a.ts", "read", NULL);
}

#define assert_reason(db, tenant, mandate, want)                                                   \
    assert_string_equal(chk_ok(db, tenant, mandate), want)

/* Waits until every check decision made so far is written: the flush that holds them
 * was queued before this one, or is this one. Returns its status. */
static ch_status try_flush_audit(ch_db *db)
{
    ch_req req;
    memset(&req, 0, sizeof(req));
    req.op = CH_OP_AUDIT_FLUSH;
    ch_status st = ch_call(db, &req);
    ch_req_dispose(&req);
    return st;
}

static void flush_audit(ch_db *db)
{
    assert_int_equal(try_flush_audit(db), CH_OK);
}

/* ---- sessions -------------------------------------------------------------------- */

static void mk_session(ch_db *db, const char *tenant, const char *mandate, char id[CH_ID_MAX])
{
    json_t *body = mandate ? json_pack("{s:s, s:s, s:s}", "user", "alice", "agent", "coder",
                                       "mandate", mandate)
                           : json_pack("{s:s, s:s}", "user", "alice", "agent", "coder");
    json_t *res = NULL;
    ch_err e;
    if (run_json(db, CH_OP_SESSION_CREATE, tenant, NULL, body, &res, &e) != CH_OK)
        fail_msg("session create: %s", e.message);
    json_decref(body);
    snprintf(id, CH_ID_MAX, "%s", jstr(res, "id"));
    json_decref(res);
}

static const char *sstate(ch_db *db, const char *tenant, const char *id, char out[16])
{
    json_t *s = NULL;
    ch_err e;
    if (ch_session_get(db, tenant, id, &s, &e) != CH_OK)
        fail_msg("ch_session_get %s: %s", id, e.message);
    snprintf(out, 16, "%s", jstr(s, "state"));
    json_decref(s);
    return out;
}

#define assert_sstate(db, tenant, id, want)                                                        \
    do {                                                                                           \
        char st_[16];                                                                              \
        assert_string_equal(sstate(db, tenant, id, st_), want);                                    \
    } while (0)

/* The session's last event (the caller releases it). */
static json_t *last_event(ch_db *db, const char *tenant, const char *id)
{
    json_t *page = NULL;
    ch_err e;
    if (ch_events_list(db, tenant, id, 0, 1000, false, &page, &e) != CH_OK)
        fail_msg("ch_events_list: %s", e.message);
    json_t *evs = json_object_get(page, "events");
    assert_true(json_array_size(evs) > 0);
    json_t *ev = json_incref(json_array_get(evs, json_array_size(evs) - 1));
    json_decref(page);
    return ev;
}

/* The session's last event is the lifecycle move {from, to, reason, mandate}. */
static void assert_moved(ch_db *db, const char *tenant, const char *id, const char *from,
                         const char *to, const char *reason, const char *cause)
{
    json_t *ev = last_event(db, tenant, id);
    assert_string_equal(jstr(ev, "kind"), "lifecycle");
    json_t *want = json_pack("{s:s, s:s, s:s, s:s}", "from", from, "to", to, "reason", reason,
                             "mandate", cause);
    assert_json_equal(json_object_get(ev, "content"), want);
    json_decref(want);
    json_decref(ev);
}

/* ---- the event stream ------------------------------------------------------------- */

/* Every stream event of tenant after `after` (the caller releases the array). */
static json_t *stream_after(ch_db *db, const char *tenant, int64_t after)
{
    json_t *all = json_array();
    for (;;) {
        json_t *page = NULL;
        ch_err e;
        if (ch_stream_list(db, tenant, after, 1000, &page, &e) != CH_OK)
            fail_msg("ch_stream_list: %s", e.message);
        json_t *evs = json_object_get(page, "events");
        size_t n = json_array_size(evs);
        json_array_extend(all, evs);
        if (n > 0)
            after = jint(page, "last_id");
        json_decref(page);
        if (n < 1000)
            break;
    }
    return all;
}

/* How many events of evs have type and mandate (NULL: any). */
static int count_events(const json_t *evs, const char *type, const char *mandate)
{
    size_t i;
    json_t *ev;
    int n = 0;
    json_array_foreach(evs, i, ev)
    {
        const char *t = json_string_value(json_object_get(ev, "type"));
        const char *m = json_string_value(json_object_get(ev, "mandate"));
        if (t && strcmp(t, type) == 0 && (mandate == NULL || (m && strcmp(m, mandate) == 0)))
            n++;
    }
    return n;
}

/* ---- group commits ---------------------------------------------------------------- */

typedef struct pending {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
} pending;

typedef struct sreq {
    ch_req req;
    pending *p;
} sreq;

static void sreq_done(ch_req *req)
{
    sreq *s = req->udata;
    pthread_mutex_lock(&s->p->mu);
    s->p->outstanding--;
    pthread_cond_broadcast(&s->p->cv);
    pthread_mutex_unlock(&s->p->mu);
}

/* Submits op with body (JSON text, may be NULL) through ch_submit; the request stays
 * in *s until pending_wait() returned and the caller disposed it. */
static void submit(ch_db *db, pending *p, sreq *s, ch_op op, const char *tenant, const char *id,
                   const char *body)
{
    memset(s, 0, sizeof(*s));
    s->p = p;
    s->req.op = op;
    snprintf(s->req.tenant, sizeof(s->req.tenant), "%s", tenant);
    if (id != NULL)
        snprintf(s->req.id, sizeof(s->req.id), "%s", id);
    s->req.body = body ? jparse(body) : NULL;
    s->req.done = sreq_done;
    s->req.udata = s;
    pthread_mutex_lock(&p->mu);
    p->outstanding++;
    pthread_mutex_unlock(&p->mu);
    json_t *b = s->req.body;
    if (ch_submit(db, &s->req) != CH_OK)
        fail_msg("ch_submit: %s", s->req.err.message);
    json_decref(b); /* ch_submit took its own reference */
}

static void pending_wait(pending *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->outstanding > 0)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* The value of a metric line of ch_db_render_metrics. */
static uint64_t metric(ch_db *db, const char *name)
{
    ch_buf buf = {0};
    ch_db_render_metrics(db, &buf);
    ch_buf_append(&buf, "", 1);
    const char *p = strstr(buf.data, name);
    if (p == NULL)
        fail_msg("metric %s missing", name);
    p = strchr(p, ' ');
    assert_non_null(p);
    uint64_t v = strtoull(p + 1, NULL, 10);
    ch_buf_free(&buf);
    return v;
}

/* The seq of a session, read from storage (no registry lock). */
static int64_t session_seq(ch_db *db, const char *id)
{
    json_t *s = NULL;
    ch_err e;
    if (ch_session_get(db, TENANT, id, &s, &e) != CH_OK)
        fail_msg("ch_session_get %s: %s", id, e.message);
    int64_t seq = jint(s, "seq");
    json_decref(s);
    return seq;
}

/* Makes the writes submitted between hold_writer() and release_writer() one group
 * commit. A scratch root mandate has a session (make them with mk_scratch()). The test
 * holds the mandate registry's read lock and appends usage to the scratch session: the
 * writer commits the append (which spent on the mandate), then waits for the write
 * lock to publish that spending, so whatever is submitted meanwhile queues up and the
 * writer takes the whole queue as its next batch once the lock is released. While the
 * lock is held nothing may take it again (it prefers the waiting writer): no check,
 * no mandate read, no metrics. */
typedef struct hold {
    fixture *f;
    pending p;
    sreq scratch;
    uint64_t commits, reqs; /* batch metrics before */
} hold;

/* A scratch mandate and its session, for hold_writer(). */
static void mk_scratch(ch_db *db, char z[CH_ID_MAX], char zs[CH_ID_MAX])
{
    json_decref(mk_root(db, TENANT, NULL, z));
    mk_session(db, TENANT, z, zs);
}

static void hold_writer(fixture *f, hold *h, const char *scratch_session)
{
    memset(h, 0, sizeof(*h));
    h->f = f;
    pthread_mutex_init(&h->p.mu, NULL);
    pthread_cond_init(&h->p.cv, NULL);
    h->commits = metric(f->db, "charter_commit_batch_size_count");
    h->reqs = metric(f->db, "charter_commit_batch_size_sum");
    int64_t seq = session_seq(f->db, scratch_session);
    ch__registry_rdlock(ch__db_registry(f->db));
    submit(f->db, &h->p, &h->scratch, CH_OP_SESSION_APPEND, TENANT, scratch_session,
           "{\"kind\":\"hold\",\"usage\":{\"tokens\":1}}");
    /* Once readers see the append, it is committed and the writer is on its way to
     * publishing it. */
    int64_t give_up = ch_now_ms() + 10000;
    while (session_seq(f->db, scratch_session) == seq) {
        if (ch_now_ms() > give_up)
            fail_msg("the writer never committed the scratch append");
        unit_sleep_ms(1);
    }
}

/* Lets the writer go on and waits for every request submitted since hold_writer();
 * checks they made exactly one batch after the scratch append's. */
static void release_writer(hold *h, int submitted)
{
    ch__registry_unlock(ch__db_registry(h->f->db));
    pending_wait(&h->p);
    assert_int_equal(h->scratch.req.err.status, CH_OK);
    ch_req_dispose(&h->scratch.req);
    assert_int_equal(metric(h->f->db, "charter_commit_batch_size_count") - h->commits, 2);
    assert_int_equal(metric(h->f->db, "charter_commit_batch_size_sum") - h->reqs,
                     (uint64_t)submitted + 1);
    pthread_mutex_destroy(&h->p.mu);
    pthread_cond_destroy(&h->p.cv);
}

/* Every mandate of ids, as memory answers (the caller releases the array). */
static json_t *snapshot(ch_db *db, const char *tenant, char (*ids)[CH_ID_MAX], int n)
{
    json_t *all = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(all, mget(db, tenant, ids[i]));
    return all;
}

/* What memory answers for ids equals what a fresh open of the data dir answers. */
static void assert_memory_is_disk(fixture *f, const char *tenant, char (*ids)[CH_ID_MAX], int n)
{
    json_t *before = snapshot(f->db, tenant, ids, n);
    int64_t stream_last = ch_stream_last(f->db);
    reopen(f);
    json_t *after = snapshot(f->db, tenant, ids, n);
    assert_json_equal(after, before);
    assert_int_equal(ch_stream_last(f->db), stream_last);
    json_decref(before);
    json_decref(after);
}

/* ---- create ---------------------------------------------------------------------- */

/* base64url (no padding) of the SHA-256 of the canonical JSON of {purpose, scope,
 * conditions} of mandate m, as returned. */
static void mission_hash_of(const json_t *m, char out[64])
{
    uint8_t h[32];
    json_t *mission =
        json_pack("{s:O, s:O, s:O}", "purpose", json_object_get(m, "purpose"), "scope",
                  json_object_get(m, "scope"), "conditions", json_object_get(m, "conditions"));
    assert_non_null(mission);
    assert_int_equal(ch_json_sha256(mission, h), CH_OK);
    json_decref(mission);
    sodium_bin2base64(out, 64, h, sizeof(h), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

/* mission_hash and mission_header of m are what the contract says. */
static void assert_mission(const json_t *m)
{
    char hash[64], header[1024];
    mission_hash_of(m, hash);
    assert_string_equal(jstr(m, "mission_hash"), hash);
    size_t n = (size_t)snprintf(header, sizeof(header), "approver=\"");
    for (const char *p = jstr(m, "approver"); *p; p++) {
        if (*p == '"' || *p == '\\')
            header[n++] = '\\';
        header[n++] = *p;
    }
    snprintf(header + n, sizeof(header) - n, "\"; s256=\"%s\"", hash);
    assert_string_equal(jstr(m, "mission_header"), header);
}

static void test_create_defaults(void **state)
{
    fixture *f = *state;
    char exp[32], body[256];
    ch_time_format(ch_now_ms() + HOUR, exp);
    snprintf(body, sizeof(body), "{\"approver\":\"alice\",\"expires_at\":\"%s\"}", exp);
    int64_t before = ch_now_ms();
    json_t *m = must(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, body);
    int64_t after = ch_now_ms();

    const char *id = jstr(m, "id");
    assert_true(ch_id_valid("mdt", id));
    assert_string_equal(jstr(m, "state"), "active");
    assert_int_equal(jint(m, "version"), 1);
    assert_int_equal(jint(m, "depth"), 0);
    assert_int_equal(jint(m, "max_depth"), 0);
    assert_string_equal(jstr(m, "purpose"), "");
    assert_string_equal(jstr(m, "approver"), "alice");
    assert_true(json_is_null(json_object_get(m, "actor")));
    assert_true(json_is_null(json_object_get(m, "evidence"))); /* present, null */
    assert_json_text(json_object_get(m, "scope"),
                     "{\"tools\":[],\"lanes\":[],\"resources\":[],\"classes\":[]}");
    assert_json_text(json_object_get(m, "conditions"), "{}");
    assert_string_equal(jstr(m, "expires_at"), exp);
    assert_true(json_is_null(json_object_get(m, "parent")));
    assert_string_equal(jstr(m, "root"), id);
    assert_true(json_is_null(json_object_get(m, "budget")));
    assert_json_text(json_object_get(m, "spent"),
                     "{\"tokens\":0,\"cost_usd\":0.0,\"tool_calls\":0}");
    assert_true(json_is_null(json_object_get(m, "reason")));
    int64_t created = ms_of(jstr(m, "created_at"));
    assert_true(created >= before && created <= after);
    assert_string_equal(jstr(m, "updated_at"), jstr(m, "created_at"));

    /* The mission hash, computed here from the canonical text itself. */
    static const char canonical[] = "{\"conditions\":{},\"purpose\":\"\",\"scope\":{\"classes\":[],"
                                    "\"lanes\":[],\"resources\":[],\"tools\":[]}}";
    uint8_t h[32];
    char hash[64], header[128];
    crypto_hash_sha256(h, (const unsigned char *)canonical, strlen(canonical));
    sodium_bin2base64(hash, sizeof(hash), h, sizeof(h), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert_string_equal(jstr(m, "mission_hash"), hash);
    assert_int_equal(strlen(hash), 43);
    snprintf(header, sizeof(header), "approver=\"alice\"; s256=\"%s\"", hash);
    assert_string_equal(jstr(m, "mission_header"), header);
    assert_mission(m);

    /* What the create answered is what a read answers. */
    json_t *got = mget(f->db, TENANT, id);
    assert_json_equal(got, m);
    json_decref(got);
    assert_reason(f->db, TENANT, id, "tool_out_of_scope"); /* an empty scope allows nothing */
    json_decref(m);
}

static void test_create_full(void **state)
{
    fixture *f = *state;
    json_t *m = must(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL,
                     "{\"purpose\":\"implement passkey login\",\"approver\":\"al\\\"i\\\\ce\","
                     "\"evidence\":{\"ticket\":\"SEC-142\"},\"actor\":\"coder\","
                     "\"scope\":{\"tools\":[\"shell\",\"git\",\"git\"],\"lanes\":[\"repo\"],"
                     "\"resources\":[\"repo:web/*\",\"a\",\"repo:web/*\"],"
                     "\"classes\":[\"write\",\"read\",\"irreversible\",\"read\"]},"
                     "\"conditions\":{\"env\":\"prod\",\"max_files\":20},"
                     "\"expires_at\":\"2099-01-01T01:30:00+02:00\",\"max_depth\":16,"
                     "\"budget\":{\"tokens\":2000000,\"cost_usd\":40.5,\"tool_calls\":5000},"
                     "\"state\":\"active\"}");
    assert_string_equal(jstr(m, "state"), "active");
    assert_string_equal(jstr(m, "purpose"), "implement passkey login");
    assert_string_equal(jstr(m, "approver"), "al\"i\\ce");
    assert_string_equal(jstr(m, "actor"), "coder");
    assert_json_text(json_object_get(m, "evidence"), "{\"ticket\":\"SEC-142\"}");
    /* Lists come back sorted and unique; classes in their fixed order. */
    assert_json_text(json_object_get(m, "scope"),
                     "{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\"],"
                     "\"resources\":[\"a\",\"repo:web/*\"],"
                     "\"classes\":[\"read\",\"write\",\"irreversible\"]}");
    assert_json_text(json_object_get(m, "conditions"), "{\"env\":\"prod\",\"max_files\":20}");
    assert_string_equal(jstr(m, "expires_at"), "2098-12-31T23:30:00.000Z");
    assert_int_equal(jint(m, "max_depth"), 16);
    assert_json_text(json_object_get(m, "budget"),
                     "{\"tokens\":2000000,\"cost_usd\":40.5,\"tool_calls\":5000}");
    assert_mission(m); /* the approver's quote and backslash are escaped in the header */
    assert_non_null(strstr(jstr(m, "mission_header"), "approver=\"al\\\"i\\\\ce\";"));

    /* A different purpose, scope or conditions gives a different hash. */
    char a[CH_ID_MAX], b[CH_ID_MAX];
    json_t *ma = mk_root(f->db, TENANT, "{\"purpose\":\"x\"}", a);
    json_t *mb = mk_root(f->db, TENANT, "{\"purpose\":\"y\"}", b);
    assert_string_not_equal(jstr(ma, "mission_hash"), jstr(mb, "mission_hash"));
    assert_mission(ma);
    assert_mission(mb);
    json_decref(ma);
    json_decref(mb);

    /* state "proposed": nothing may start yet. */
    char p[CH_ID_MAX];
    json_t *mp = mk_root(f->db, TENANT, "{\"state\":\"proposed\"}", p);
    assert_string_equal(jstr(mp, "state"), "proposed");
    assert_int_equal(jint(mp, "version"), 1);
    assert_reason(f->db, TENANT, p, "mandate_proposed");
    json_decref(mp);
    json_decref(m);
}

/* Expects CH_MANDATE_CREATE of body (a printf format given exp, a valid deadline) to
 * fail with want and field. */
#define create_fails(f, fmt, want, field) create_fails_at(__LINE__, f, fmt, want, field)
static void create_fails_at(int line, fixture *f, const char *fmt, ch_status want,
                            const char *field)
{
    char exp[32];
    char *body = NULL;
    ch_time_format(ch_now_ms() + HOUR, exp);
    assert_true(asprintf(&body, fmt, exp) > 0);
    expect_fail_json_at(line, f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, body, NULL, want, field,
                        NULL);
    free(body);
}

static void test_create_validation(void **state)
{
    fixture *f = *state;
    create_fails(f, "{\"expires_at\":\"%s\"}", CH_MISSING_FIELD, "approver");
    create_fails(f, "{\"approver\":null,\"expires_at\":\"%s\"}", CH_MISSING_FIELD, "approver");
    create_fails(f, "{\"approver\":\"alice\"}", CH_MISSING_FIELD, "expires_at");
    create_fails(f, "{\"approver\":\"\",\"expires_at\":\"%s\"}", CH_INVALID_VALUE, "approver");
    create_fails(f, "{\"approver\":7,\"expires_at\":\"%s\"}", CH_INVALID_TYPE, "approver");
    create_fails(f, "{\"approver\":\"alice\",\"expires_at\":\"tomorrow\"}", CH_INVALID_VALUE,
                 "expires_at");
    create_fails(f, "{\"approver\":\"alice\",\"expires_at\":\"2099-13-01T00:00:00Z\"}",
                 CH_INVALID_VALUE, "expires_at");
    create_fails(f, "{\"approver\":\"alice\",\"expires_at\":\"2099-01-01 00:00:00\"}",
                 CH_INVALID_VALUE, "expires_at");
    create_fails(f, "{\"approver\":\"alice\",\"expires_at\":\"2020-01-01T00:00:00Z\"}",
                 CH_INVALID_VALUE, "expires_at");
    create_fails(f, "{\"approver\":\"alice\",\"expires_at\":123}", CH_INVALID_TYPE, "expires_at");
    /* A deadline of now is not in the future. */
    char now[32], body[128];
    ch_time_format(ch_now_ms(), now);
    snprintf(body, sizeof(body), "{\"approver\":\"alice\",\"expires_at\":\"%s\"}", now);
    expect_fail(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, body, CH_INVALID_VALUE, "expires_at",
                NULL);

    /* Scopes. */
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"scope\":\"git\"}", CH_INVALID_TYPE,
                 "scope");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"scope\":{\"tools\":\"git\"}}",
                 CH_INVALID_TYPE, "scope.tools");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"scope\":{\"tools\":[1]}}",
                 CH_INVALID_TYPE, "scope.tools[0]");
    create_fails(f,
                 "{\"approver\":\"a\",\"expires_at\":\"%s\",\"scope\":{\"lanes\":[\"ok\",\"\"]}}",
                 CH_INVALID_VALUE, "scope.lanes[1]");
    create_fails(f,
                 "{\"approver\":\"a\",\"expires_at\":\"%s\",\"scope\":{\"resources\":[\"a*b\"]}}",
                 CH_INVALID_VALUE, "scope.resources[0]");
    create_fails(f,
                 "{\"approver\":\"a\",\"expires_at\":\"%s\","
                 "\"scope\":{\"classes\":[\"read\",\"delete\"]}}",
                 CH_INVALID_VALUE, "scope.classes[1]");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"scope\":{\"verbs\":[]}}",
                 CH_UNKNOWN_FIELD, "scope.verbs");
    char *long_tool = NULL;
    assert_true(asprintf(&long_tool,
                         "{\"approver\":\"a\",\"expires_at\":\"%%s\","
                         "\"scope\":{\"tools\":[\"%0257d\"]}}",
                         0) > 0);
    create_fails(f, long_tool, CH_INVALID_VALUE, "scope.tools[0]");
    free(long_tool);
    json_t *tools = json_array();
    for (int i = 0; i < 1025; i++)
        json_array_append_new(tools, json_sprintf("t%d", i));
    json_t *big = json_pack("{s:s, s:s, s:{s:o}}", "approver", "a", "expires_at",
                            "2099-01-01T00:00:00Z", "scope", "tools", tools);
    expect_fail_json(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, big, CH_INVALID_VALUE,
                     "scope.tools", NULL);
    json_decref(big);

    /* Other fields. */
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"colour\":\"red\"}",
                 CH_UNKNOWN_FIELD, "colour");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"max_depth\":17}", CH_INVALID_VALUE,
                 "max_depth");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"max_depth\":-1}", CH_INVALID_VALUE,
                 "max_depth");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"max_depth\":\"2\"}",
                 CH_INVALID_TYPE, "max_depth");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"budget\":5}", CH_INVALID_TYPE,
                 "budget");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"state\":\"revoked\"}",
                 CH_INVALID_VALUE, "state");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"conditions\":[]}", CH_INVALID_TYPE,
                 "conditions");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"actor\":\"\"}", CH_INVALID_VALUE,
                 "actor");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"purpose\":\"\"}", CH_INVALID_VALUE,
                 "purpose");
    char *long_purpose = NULL;
    assert_true(asprintf(&long_purpose,
                         "{\"approver\":\"a\",\"expires_at\":\"%%s\",\"purpose\":\"%04097d\"}",
                         0) > 0);
    create_fails(f, long_purpose, CH_INVALID_VALUE, "purpose");
    free(long_purpose);
    char *huge = malloc(70000);
    assert_non_null(huge);
    memset(huge, 'e', 69999);
    huge[69999] = '\0';
    json_t *hb = json_pack("{s:s, s:s, s:{s:s}}", "approver", "a", "expires_at",
                           "2099-01-01T00:00:00Z", "evidence", "log", huge);
    free(huge);
    expect_fail_json(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, hb, CH_INVALID_VALUE, "evidence",
                     NULL);
    json_decref(hb);
    expect_fail(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, NULL, CH_BAD_REQUEST, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, "[1]", CH_BAD_REQUEST, NULL, NULL);

    /* A refused request changed nothing: no mandate was announced. */
    json_t *evs = stream_after(f->db, TENANT, 0);
    assert_int_equal(json_array_size(evs), 0);
    json_decref(evs);
}

/* Budget errors name the budget's field ("budget.tokens", as sessions do). */
static void test_create_budget_fields(void **state)
{
    fixture *f = *state;
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"budget\":{\"tokens\":-1}}",
                 CH_INVALID_VALUE, "budget.tokens");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"budget\":{\"cost_usd\":-0.5}}",
                 CH_INVALID_VALUE, "budget.cost_usd");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"budget\":{\"tool_calls\":-3}}",
                 CH_INVALID_VALUE, "budget.tool_calls");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"budget\":{\"tokens\":\"1\"}}",
                 CH_INVALID_TYPE, "budget.tokens");
    create_fails(f, "{\"approver\":\"a\",\"expires_at\":\"%s\",\"budget\":{\"bogus\":1}}",
                 CH_UNKNOWN_FIELD, "budget.bogus");
}

/* ---- lifecycle ------------------------------------------------------------------- */

enum { S_PROPOSED, S_ACTIVE, S_SUSPENDED, S_REVOKED, S_EXPIRED, S_COMPLETED, S_COUNT };
static const char *const mstate_names[S_COUNT] = {"proposed", "active",  "suspended",
                                                  "revoked",  "expired", "completed"};

/* Makes a root mandate in state s (not S_EXPIRED). */
static void make_in_state(ch_db *db, int s, char id[CH_ID_MAX])
{
    json_decref(mk_root(db, TENANT, s == S_PROPOSED ? "{\"state\":\"proposed\"}" : NULL, id));
    if (s == S_SUSPENDED)
        ok(db, CH_OP_MANDATE_SUSPEND, TENANT, id, NULL);
    else if (s == S_REVOKED)
        ok(db, CH_OP_MANDATE_REVOKE, TENANT, id, NULL);
    else if (s == S_COMPLETED)
        ok(db, CH_OP_MANDATE_COMPLETE, TENANT, id, NULL);
    assert_mstate(db, TENANT, id, mstate_names[s]);
}

/* Every transition from every state: the allowed ones answer the mandate in its new
 * state (version unchanged), the others invalid_transition naming the current state. */
static void test_lifecycle_matrix(void **state)
{
    fixture *f = *state;
    static const ch_op ops[] = {CH_OP_MANDATE_APPROVE, CH_OP_MANDATE_SUSPEND,
                                CH_OP_MANDATE_REINSTATE, CH_OP_MANDATE_REVOKE,
                                CH_OP_MANDATE_COMPLETE};
    enum { NOPS = sizeof(ops) / sizeof(ops[0]) };
    /* to[op][from]: the resulting state, or -1 when not allowed. */
    static const int to[NOPS][S_COUNT] = {
        /* approve */ {S_ACTIVE, -1, -1, -1, -1, -1},
        /* suspend */ {-1, S_SUSPENDED, -1, -1, -1, -1},
        /* reinstate */ {-1, -1, S_ACTIVE, -1, -1, -1},
        /* revoke */ {S_REVOKED, S_REVOKED, S_REVOKED, -1, -1, -1},
        /* complete */ {-1, S_COMPLETED, S_COMPLETED, -1, -1, -1},
    };
    /* The expired ones first, so that one wait covers them all. */
    char expired[NOPS][CH_ID_MAX];
    char soon[32], body[128];
    int64_t deadline = 0;
    for (int o = 0; o < NOPS; o++) {
        deadline = ch_now_ms() + 150;
        ch_time_format(deadline, soon);
        snprintf(body, sizeof(body), "{\"approver\":\"alice\",\"expires_at\":\"%s\"}", soon);
        json_t *m = must(f->db, CH_OP_MANDATE_CREATE, TENANT, NULL, body);
        snprintf(expired[o], CH_ID_MAX, "%s", jstr(m, "id"));
        json_decref(m);
    }
    while (ch_now_ms() <= deadline)
        unit_sleep_ms(5);

    for (int o = 0; o < NOPS; o++) {
        for (int s = 0; s < S_COUNT; s++) {
            char id[CH_ID_MAX];
            if (s == S_EXPIRED)
                memcpy(id, expired[o], sizeof(id));
            else
                make_in_state(f->db, s, id);
            if (to[o][s] < 0) {
                expect_fail(f->db, ops[o], TENANT, id, NULL, CH_INVALID_TRANSITION, "",
                            mstate_names[s]);
                if (s != S_EXPIRED) /* (the expiry timer may have written the state) */
                    assert_mstate(f->db, TENANT, id, mstate_names[s]);
                continue;
            }
            json_t *m = must(f->db, ops[o], TENANT, id, o == 0 ? "{}" : NULL);
            assert_string_equal(jstr(m, "state"), mstate_names[to[o][s]]);
            assert_string_equal(jstr(m, "id"), id);
            assert_int_equal(jint(m, "version"), 1);
            json_t *got = mget(f->db, TENANT, id);
            assert_json_equal(got, m);
            json_decref(got);
            json_decref(m);
        }
    }
}

/* Reasons: recorded by suspend, revoke and complete, kept by reinstate (they tell
 * why the mandate was last stopped); validated; ids of another tenant are not found. */
static void test_lifecycle_reason(void **state)
{
    fixture *f = *state;
    char id[CH_ID_MAX], ghost[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, NULL, id));

    json_t *m = must(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, "{\"reason\":\"release freeze\"}");
    assert_string_equal(jstr(m, "reason"), "release freeze");
    json_decref(m);
    m = must(f->db, CH_OP_MANDATE_REINSTATE, TENANT, id, "{}");
    assert_string_equal(jstr(m, "reason"), "release freeze");
    assert_string_equal(jstr(m, "state"), "active");
    json_decref(m);
    /* A suspend without a reason keeps the last one too. */
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, NULL);
    m = must(f->db, CH_OP_MANDATE_REINSTATE, TENANT, id, NULL);
    assert_string_equal(jstr(m, "reason"), "release freeze");
    json_decref(m);

    char *long_reason = NULL;
    assert_true(asprintf(&long_reason, "{\"reason\":\"%01025d\"}", 0) > 0);
    expect_fail(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, long_reason, CH_INVALID_VALUE, "reason",
                NULL);
    free(long_reason);
    expect_fail(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, "{\"reason\":\"\"}", CH_INVALID_VALUE,
                "reason", NULL);
    expect_fail(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, "{\"reason\":1}", CH_INVALID_TYPE,
                "reason", NULL);
    expect_fail(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, "{\"why\":\"x\"}", CH_UNKNOWN_FIELD,
                "why", NULL);
    expect_fail(f->db, CH_OP_MANDATE_SUSPEND, TENANT, id, "[]", CH_BAD_REQUEST, NULL, NULL);
    assert_mstate(f->db, TENANT, id, "active");

    /* Unknown ids, malformed ids and another tenant's ids: not found. */
    ch_id_new("mdt", ghost);
    expect_fail(f->db, CH_OP_MANDATE_REVOKE, TENANT, ghost, NULL, CH_NOT_FOUND, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_REVOKE, TENANT, "nope", NULL, CH_NOT_FOUND, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_REVOKE, OTHER, id, NULL, CH_NOT_FOUND, NULL, NULL);
    json_t *out = NULL;
    ch_err e;
    assert_int_equal(ch_mandate_get(f->db, OTHER, id, &out, &e), CH_NOT_FOUND);
    assert_null(out);
    assert_int_equal(ch_mandate_tree(f->db, OTHER, id, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_mandate_get(f->db, TENANT, ghost, &out, &e), CH_NOT_FOUND);

    m = must(f->db, CH_OP_MANDATE_REVOKE, TENANT, id, "{\"reason\":\"leaked key\"}");
    assert_string_equal(jstr(m, "reason"), "leaked key");
    assert_string_equal(jstr(m, "state"), "revoked");
    json_decref(m);
}

/* ---- delegation ------------------------------------------------------------------ */

/* Delegating from parent with body (JSON text; the placeholder EXP may stand for the
 * parent's expires_at) must fail with want and field. */
#define delegate_fails(db, parent, body, want, field, state)                                       \
    delegate_fails_at(__LINE__, db, parent, body, want, field, state)
static void delegate_fails_at(int line, ch_db *db, const char *parent, const char *body,
                              ch_status want, const char *field, const char *state)
{
    json_t *p = mget(db, TENANT, parent);
    json_t *b = jparse(body);
    if (json_is_string(json_object_get(b, "expires_at")) &&
        strcmp(jstr(b, "expires_at"), "EXP") == 0)
        json_object_set(b, "expires_at", json_object_get(p, "expires_at"));
    json_decref(p);
    expect_fail_json_at(line, db, CH_OP_MANDATE_DELEGATE, TENANT, parent, NULL, b, want, field,
                        state);
    json_decref(b);
}

#define CHILD(extra)                                                                               \
    "{\"actor\":\"sub\",\"purpose\":\"p\",\"expires_at\":\"EXP\",\"scope\":{\"tools\":[\"git\"],"  \
    "\"lanes\":[\"repo\"],\"resources\":[\"repo:web/src/*\"],\"classes\":[\"read\"]}"              \
    ",\"budget\":{\"tokens\":10,\"cost_usd\":1,\"tool_calls\":1}" extra "}"

static void test_delegate_subset_rules(void **state)
{
    fixture *f = *state;
    char root[CH_ID_MAX], kid[CH_ID_MAX], s[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT,
                        "{\"actor\":\"coder\",\"max_depth\":2,\"conditions\":{\"env\":\"prod\"},"
                        "\"budget\":{\"tokens\":1000,\"cost_usd\":10,\"tool_calls\":100}}",
                        root));

    /* The baseline child is fine (checked at the end); each rule broken alone fails. */
    delegate_fails(f->db, root, CHILD(",\"scope\":{\"tools\":[\"git\",\"deploy\"]}"), CH_NOT_SUBSET,
                   "scope.tools", NULL);
    delegate_fails(f->db, root, CHILD(",\"scope\":{\"lanes\":[\"prod\"]}"), CH_NOT_SUBSET,
                   "scope.lanes", NULL);
    delegate_fails(f->db, root, CHILD(",\"scope\":{\"resources\":[\"repo:*\"]}"), CH_NOT_SUBSET,
                   "scope.resources", NULL);
    delegate_fails(f->db, root, CHILD(",\"scope\":{\"resources\":[\"doc:readme2\"]}"),
                   CH_NOT_SUBSET, "scope.resources", NULL);
    delegate_fails(f->db, root, CHILD(",\"scope\":{\"resources\":[\"doc:readme*\"]}"),
                   CH_NOT_SUBSET, "scope.resources", NULL);
    delegate_fails(f->db, root, CHILD(",\"scope\":{\"classes\":[\"irreversible\"]}"), CH_NOT_SUBSET,
                   "scope.classes", NULL);
    json_t *p = mget(f->db, TENANT, root);
    char later[32], body[1024];
    ch_time_format(ms_of(jstr(p, "expires_at")) + 1, later);
    json_decref(p);
    snprintf(body, sizeof(body), CHILD(",\"expires_at\":\"%s\""), later);
    delegate_fails(f->db, root, body, CH_NOT_SUBSET, "expires_at", NULL);
    delegate_fails(f->db, root, CHILD(",\"max_depth\":3"), CH_NOT_SUBSET, "depth", NULL);
    delegate_fails(f->db, root, CHILD(",\"actor\":\"coder\""), CH_NOT_SUBSET, "actor", NULL);
    delegate_fails(f->db, root, CHILD(",\"budget\":null"), CH_NOT_SUBSET, "budget", NULL);
    delegate_fails(f->db, root, CHILD(",\"budget\":{\"tokens\":10,\"cost_usd\":1}"), CH_NOT_SUBSET,
                   "budget", NULL);
    delegate_fails(f->db, root,
                   CHILD(",\"budget\":{\"tokens\":1001,\"cost_usd\":1,"
                         "\"tool_calls\":1}"),
                   CH_NOT_SUBSET, "budget", NULL);
    delegate_fails(f->db, root,
                   CHILD(",\"budget\":{\"tokens\":1,\"cost_usd\":10.5,"
                         "\"tool_calls\":1}"),
                   CH_NOT_SUBSET, "budget", NULL);
    delegate_fails(f->db, root, CHILD(",\"conditions\":{\"env\":\"dev\"}"), CH_NOT_SUBSET,
                   "conditions", NULL);

    /* Malformed children. */
    delegate_fails(f->db, root, "{\"purpose\":\"p\",\"expires_at\":\"EXP\",\"scope\":{}}",
                   CH_MISSING_FIELD, "actor", NULL);
    delegate_fails(f->db, root, "{\"actor\":\"a\",\"expires_at\":\"EXP\",\"scope\":{}}",
                   CH_MISSING_FIELD, "purpose", NULL);
    delegate_fails(f->db, root, "{\"actor\":\"a\",\"purpose\":\"p\",\"scope\":{}}",
                   CH_MISSING_FIELD, "expires_at", NULL);
    delegate_fails(f->db, root, "{\"actor\":\"a\",\"purpose\":\"p\",\"expires_at\":\"EXP\"}",
                   CH_MISSING_FIELD, "scope", NULL);
    delegate_fails(f->db, root, CHILD(",\"approver\":\"mallory\""), CH_UNKNOWN_FIELD, "approver",
                   NULL);
    delegate_fails(f->db, root, CHILD(",\"state\":\"proposed\""), CH_UNKNOWN_FIELD, "state", NULL);
    char ghost[CH_ID_MAX];
    ch_id_new("mdt", ghost);
    expect_fail(f->db, CH_OP_MANDATE_DELEGATE, TENANT, ghost,
                "{\"actor\":\"a\",\"purpose\":\"p\",\"expires_at\":\"2099-01-01T00:00:00Z\","
                "\"scope\":{}}",
                CH_NOT_FOUND, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_DELEGATE, OTHER, root,
                "{\"actor\":\"a\",\"purpose\":\"p\",\"expires_at\":\"2099-01-01T00:00:00Z\","
                "\"scope\":{}}",
                CH_NOT_FOUND, NULL, NULL);

    /* Nothing was delegated by any of that. */
    json_t *tree = NULL;
    ch_err e;
    assert_int_equal(ch_mandate_tree(f->db, TENANT, root, &tree, &e), CH_OK);
    assert_int_equal(json_array_size(json_object_get(tree, "descendants")), 0);
    json_decref(tree);

    /* The allowed edges of each rule. */
    json_decref(mk_child(f->db, TENANT, root, "sub",
                         "{\"scope\":{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\",\"web\"],"
                         "\"resources\":[\"repo:web/*\",\"doc:readme\",\"repo:web/x\"],"
                         "\"classes\":[\"read\",\"write\",\"external\"]},\"max_depth\":2,"
                         "\"budget\":{\"tokens\":1000,\"cost_usd\":10,\"tool_calls\":100},"
                         "\"conditions\":{\"env\":\"prod\",\"extra\":1}}",
                         kid));
    /* Spending on the root's sessions lowers what a new child may be given. */
    mk_session(f->db, TENANT, root, s);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s,
       "{\"kind\":\"llm\",\"usage\":{\"tokens\":300,\"cost_usd\":2.5,\"tool_calls\":10}}");
    delegate_fails(f->db, root,
                   CHILD(",\"budget\":{\"tokens\":701,\"cost_usd\":1,"
                         "\"tool_calls\":1}"),
                   CH_NOT_SUBSET, "budget", NULL);
    delegate_fails(f->db, root,
                   CHILD(",\"budget\":{\"tokens\":1,\"cost_usd\":7.6,"
                         "\"tool_calls\":1}"),
                   CH_NOT_SUBSET, "budget", NULL);
    delegate_fails(f->db, root,
                   CHILD(",\"budget\":{\"tokens\":1,\"cost_usd\":1,"
                         "\"tool_calls\":91}"),
                   CH_NOT_SUBSET, "budget", NULL);
    json_decref(mk_child(f->db, TENANT, root, "sub2",
                         "{\"budget\":{\"tokens\":700,\"cost_usd\":7.5,\"tool_calls\":90}}", kid));

    /* Depth: the root's max_depth 2 allows a grandchild, not a great-grandchild. */
    char g[CH_ID_MAX];
    json_decref(mk_child(f->db, TENANT, kid, "sub3",
                         "{\"budget\":{\"tokens\":1,\"cost_usd\":1,\"tool_calls\":1}}", g));
    delegate_fails(f->db, g,
                   CHILD(",\"actor\":\"sub4\",\"budget\":{\"tokens\":1,"
                         "\"cost_usd\":1,\"tool_calls\":1}"),
                   CH_NOT_SUBSET, "depth", NULL);
    /* A root with max_depth 0 cannot delegate at all. */
    char flat[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, NULL, flat));
    delegate_fails(f->db, flat, CHILD(""), CH_NOT_SUBSET, "depth", NULL);
    /* A root without an actor or a budget: any actor, any (or no) budget. */
    char open_root[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":1}", open_root));
    json_decref(mk_child(f->db, TENANT, open_root, "anyone", NULL, kid));
}

/* The parent must be active, with active ancestors. */
static void test_delegate_inactive_parent(void **state)
{
    fixture *f = *state;
    char root[CH_ID_MAX], kid[CH_ID_MAX], proposed[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":3}", root));
    json_decref(mk_child(f->db, TENANT, root, "sub", NULL, kid));

    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, root, NULL);
    delegate_fails(f->db, root, CHILD(""), CH_MANDATE_INACTIVE, NULL, "suspended");
    /* The child itself is active, but its parent is not: state names the parent's. */
    delegate_fails(f->db, kid, CHILD(",\"actor\":\"sub2\""), CH_MANDATE_INACTIVE, NULL,
                   "suspended");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, root, NULL);
    char g[CH_ID_MAX];
    json_decref(mk_child(f->db, TENANT, kid, "sub2", NULL, g));

    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":3,\"state\":\"proposed\"}", proposed));
    delegate_fails(f->db, proposed, CHILD(""), CH_MANDATE_INACTIVE, NULL, "proposed");
    ok(f->db, CH_OP_MANDATE_COMPLETE, TENANT, kid, NULL);
    delegate_fails(f->db, kid, CHILD(",\"actor\":\"sub3\""), CH_MANDATE_INACTIVE, NULL,
                   "completed");
    delegate_fails(f->db, g, CHILD(",\"actor\":\"sub3\""), CH_MANDATE_INACTIVE, NULL, "completed");
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, root, NULL);
    delegate_fails(f->db, root, CHILD(""), CH_MANDATE_INACTIVE, NULL, "revoked");
}

/* What a child inherits and what it gets of its own. */
static void test_delegate_child_fields(void **state)
{
    fixture *f = *state;
    char root[CH_ID_MAX], kid[CH_ID_MAX], g[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT,
                        "{\"approver\":\"alice\",\"actor\":\"lead\",\"max_depth\":3,"
                        "\"conditions\":{\"env\":\"prod\",\"region\":\"eu\"},"
                        "\"evidence\":{\"ticket\":\"SEC-1\"}}",
                        root));
    json_t *c = mk_child(f->db, TENANT, root, "coder",
                         "{\"purpose\":\"write tests\",\"conditions\":{\"env\":\"prod\",\"pr\":7},"
                         "\"evidence\":\"chat:42\",\"scope\":{\"tools\":[\"git\"],"
                         "\"lanes\":[\"repo\"],\"resources\":[\"repo:web/src/*\"],"
                         "\"classes\":[\"read\"]}}",
                         kid);
    assert_true(ch_id_valid("mdt", kid));
    assert_string_equal(jstr(c, "state"), "active");
    assert_int_equal(jint(c, "version"), 1);
    assert_string_equal(jstr(c, "parent"), root);
    assert_string_equal(jstr(c, "root"), root);
    assert_int_equal(jint(c, "depth"), 1);
    assert_int_equal(jint(c, "max_depth"), 3); /* the parent's, when not given */
    assert_string_equal(jstr(c, "approver"), "alice");
    assert_string_equal(jstr(c, "actor"), "coder");
    assert_string_equal(jstr(c, "purpose"), "write tests");
    assert_json_text(json_object_get(c, "evidence"), "\"chat:42\"");
    assert_json_text(json_object_get(c, "conditions"),
                     "{\"env\":\"prod\",\"region\":\"eu\",\"pr\":7}");
    assert_json_text(json_object_get(c, "scope"),
                     "{\"tools\":[\"git\"],\"lanes\":[\"repo\"],\"resources\":[\"repo:web/src/*\"],"
                     "\"classes\":[\"read\"]}");
    assert_true(json_is_null(json_object_get(c, "budget")));
    assert_mission(c);
    json_t *got = mget(f->db, TENANT, kid);
    assert_json_equal(got, c);
    json_decref(got);
    json_decref(c);

    json_t *gc = mk_child(f->db, TENANT, kid, "helper",
                          "{\"max_depth\":2,\"scope\":{\"tools\":[\"git\"]}}", g);
    assert_int_equal(jint(gc, "depth"), 2);
    assert_int_equal(jint(gc, "max_depth"), 2);
    assert_string_equal(jstr(gc, "root"), root);
    assert_string_equal(jstr(gc, "parent"), kid);
    assert_json_text(json_object_get(gc, "conditions"),
                     "{\"env\":\"prod\",\"region\":\"eu\",\"pr\":7}");
    json_decref(gc);

    /* The tree: ancestors from the root down, descendants depth first. */
    json_t *tree = NULL;
    ch_err e;
    assert_int_equal(ch_mandate_tree(f->db, TENANT, g, &tree, &e), CH_OK);
    assert_string_equal(jstr(tree, "mandate"), g);
    json_t *anc = json_object_get(tree, "ancestors");
    assert_int_equal(json_array_size(anc), 2);
    assert_string_equal(jstr(json_array_get(anc, 0), "id"), root);
    assert_true(json_is_null(json_object_get(json_array_get(anc, 0), "parent")));
    assert_string_equal(jstr(json_array_get(anc, 1), "id"), kid);
    assert_int_equal(jint(json_array_get(anc, 1), "depth"), 1);
    assert_string_equal(jstr(json_array_get(anc, 1), "actor"), "coder");
    assert_int_equal(json_array_size(json_object_get(tree, "descendants")), 0);
    json_decref(tree);
    char k2[CH_ID_MAX];
    json_decref(mk_child(f->db, TENANT, root, "other", NULL, k2));
    assert_int_equal(ch_mandate_tree(f->db, TENANT, root, &tree, &e), CH_OK);
    json_t *desc = json_object_get(tree, "descendants");
    assert_int_equal(json_array_size(desc), 3);
    assert_string_equal(jstr(json_array_get(desc, 0), "id"), kid);
    assert_string_equal(jstr(json_array_get(desc, 1), "id"), g);
    assert_string_equal(jstr(json_array_get(desc, 1), "parent"), kid);
    assert_string_equal(jstr(json_array_get(desc, 2), "id"), k2);
    assert_string_equal(jstr(json_array_get(desc, 2), "state"), "active");
    assert_int_equal(jint(json_array_get(desc, 2), "version"), 1);
    assert_int_equal(json_array_size(json_object_get(tree, "ancestors")), 0);
    json_decref(tree);
}

/* ---- cascades -------------------------------------------------------------------- */

/* A chain as deep as allowed (depth 16): one revoke of the root revokes all of it. */
static void test_cascade_deep(void **state)
{
    fixture *f = *state;
    enum { DEPTH = 16 };
    char ids[DEPTH + 1][CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":16}", ids[0]));
    for (int d = 1; d <= DEPTH; d++) {
        char actor[16];
        snprintf(actor, sizeof(actor), "a%d", d);
        json_t *c = mk_child(f->db, TENANT, ids[d - 1], actor, NULL, ids[d]);
        assert_int_equal(jint(c, "depth"), d);
        assert_string_equal(jstr(c, "root"), ids[0]);
        json_decref(c);
    }
    delegate_fails(f->db, ids[DEPTH], CHILD(""), CH_NOT_SUBSET, "depth", NULL);
    for (int d = 0; d <= DEPTH; d++)
        assert_reason(f->db, TENANT, ids[d], "ok");

    /* Suspending the middle stops its subtree, not what is above it. */
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, ids[8], NULL);
    for (int d = 0; d <= DEPTH; d++)
        assert_reason(f->db, TENANT, ids[d],
                      d < 8    ? "ok"
                      : d == 8 ? "mandate_suspended"
                               : "ancestor_inactive");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, ids[8], NULL);

    int64_t before = ch_stream_last(f->db);
    json_t *r = must(f->db, CH_OP_MANDATE_REVOKE, TENANT, ids[0], "{\"reason\":\"incident\"}");
    assert_string_equal(jstr(r, "state"), "revoked");
    json_decref(r);
    for (int d = 0; d <= DEPTH; d++) {
        json_t *m = mget(f->db, TENANT, ids[d]);
        assert_string_equal(jstr(m, "state"), "revoked");
        assert_string_equal(jstr(m, "reason"), "incident");
        assert_int_equal(jint(m, "version"), 1);
        json_decref(m);
        assert_reason(f->db, TENANT, ids[d], "mandate_revoked");
    }
    /* One event for the whole cascade: the root's, listing every descendant it reached,
     * parents first. */
    json_t *evs = stream_after(f->db, TENANT, before);
    assert_int_equal(json_array_size(evs), 1);
    json_t *ev = json_array_get(evs, 0);
    assert_string_equal(jstr(ev, "type"), "mandate.revoked");
    assert_string_equal(jstr(ev, "mandate"), ids[0]);
    assert_string_equal(jstr(ev, "cause"), ids[0]);
    assert_string_equal(jstr(ev, "reason"), "incident");
    json_t *reached = json_object_get(ev, "descendants");
    assert_int_equal(json_array_size(reached), DEPTH);
    for (int d = 1; d <= DEPTH; d++)
        assert_string_equal(json_string_value(json_array_get(reached, (size_t)d - 1)), ids[d]);
    json_decref(evs);
    /* Revoking again is refused anywhere in the chain. */
    expect_fail(f->db, CH_OP_MANDATE_REVOKE, TENANT, ids[DEPTH], NULL, CH_INVALID_TRANSITION, NULL,
                "revoked");
}

/* A wide tree (1000 children, delegated concurrently): suspend stops every child,
 * reinstate restores them, one revoke revokes them all. */
static void test_cascade_wide(void **state)
{
    fixture *f = *state;
    enum { WIDE = 1000 };
    char root[CH_ID_MAX];
    char(*kids)[CH_ID_MAX] = calloc(WIDE, CH_ID_MAX);
    sreq *reqs = calloc(WIDE, sizeof(sreq));
    pending p = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    assert_non_null(kids);
    assert_non_null(reqs);
    json_t *rm = mk_root(f->db, TENANT, "{\"max_depth\":1}", root);
    for (int i = 0; i < WIDE; i++) {
        char body[512];
        snprintf(body, sizeof(body),
                 "{\"actor\":\"w%d\",\"purpose\":\"shard %d\",\"expires_at\":\"%s\","
                 "\"scope\":" FULL_SCOPE "}",
                 i, i, jstr(rm, "expires_at"));
        submit(f->db, &p, &reqs[i], CH_OP_MANDATE_DELEGATE, TENANT, root, body);
    }
    json_decref(rm);
    pending_wait(&p);
    for (int i = 0; i < WIDE; i++) {
        if (reqs[i].req.err.status != CH_OK)
            fail_msg("delegate %d: %s", i, reqs[i].req.err.message);
        snprintf(kids[i], CH_ID_MAX, "%s", jstr(reqs[i].req.result, "id"));
        ch_req_dispose(&reqs[i].req);
    }
    free(reqs);

    json_t *tree = NULL;
    ch_err e;
    assert_int_equal(ch_mandate_tree(f->db, TENANT, root, &tree, &e), CH_OK);
    assert_int_equal(json_array_size(json_object_get(tree, "descendants")), WIDE);
    json_decref(tree);

    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, root, NULL);
    assert_reason(f->db, TENANT, root, "mandate_suspended");
    for (int i = 0; i < WIDE; i++) {
        assert_reason(f->db, TENANT, kids[i], "ancestor_inactive");
        assert_mstate(f->db, TENANT, kids[i], "active"); /* suspension does not cascade */
    }
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, root, NULL);
    for (int i = 0; i < WIDE; i++)
        assert_reason(f->db, TENANT, kids[i], "ok");

    int64_t before = ch_stream_last(f->db);
    flush_audit(f->db);
    uint64_t commits = metric(f->db, "charter_commit_batch_size_count");
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, root, "{\"reason\":\"wind down\"}");
    /* One call, one transaction. */
    assert_int_equal(metric(f->db, "charter_commit_batch_size_count") - commits, 1);
    assert_reason(f->db, TENANT, root, "mandate_revoked");
    for (int i = 0; i < WIDE; i++) {
        assert_reason(f->db, TENANT, kids[i], "mandate_revoked");
        assert_mstate(f->db, TENANT, kids[i], "revoked");
    }
    json_t *evs = stream_after(f->db, TENANT, before);
    assert_int_equal(count_events(evs, "mandate.revoked", NULL), 1);
    assert_int_equal(json_array_size(json_object_get(json_array_get(evs, 0), "descendants")),
                     WIDE);
    json_decref(evs);
    assert_int_equal(ch_mandate_tree(f->db, TENANT, root, &tree, &e), CH_OK);
    json_t *desc = json_object_get(tree, "descendants");
    for (size_t i = 0; i < json_array_size(desc); i++)
        assert_string_equal(jstr(json_array_get(desc, i), "state"), "revoked");
    json_decref(tree);
    free(kids);
}

/* Suspend, reinstate and complete over a small tree: the mandate's own reason, then
 * ancestor_inactive below it; complete leaves descendants' states as they were. */
static void test_cascade_suspend_complete(void **state)
{
    fixture *f = *state;
    char root[CH_ID_MAX], a[CH_ID_MAX], b[CH_ID_MAX], a1[CH_ID_MAX], other[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":2}", root));
    json_decref(mk_child(f->db, TENANT, root, "a", NULL, a));
    json_decref(mk_child(f->db, TENANT, root, "b", NULL, b));
    json_decref(mk_child(f->db, TENANT, a, "a1", NULL, a1));
    json_decref(mk_root(f->db, TENANT, NULL, other));

    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, root, NULL);
    assert_reason(f->db, TENANT, root, "mandate_suspended");
    assert_reason(f->db, TENANT, a, "ancestor_inactive");
    assert_reason(f->db, TENANT, b, "ancestor_inactive");
    assert_reason(f->db, TENANT, a1, "ancestor_inactive");
    assert_reason(f->db, TENANT, other, "ok");
    /* The descendants keep their own state and can be changed meanwhile. */
    assert_mstate(f->db, TENANT, a, "active");
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, a, NULL);
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, root, NULL);
    assert_reason(f->db, TENANT, root, "ok");
    assert_reason(f->db, TENANT, a, "mandate_suspended");
    assert_reason(f->db, TENANT, a1, "ancestor_inactive");
    assert_reason(f->db, TENANT, b, "ok");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, a, NULL);
    assert_reason(f->db, TENANT, a1, "ok");

    json_t *m = must(f->db, CH_OP_MANDATE_COMPLETE, TENANT, root, "{\"reason\":\"shipped\"}");
    assert_string_equal(jstr(m, "state"), "completed");
    assert_string_equal(jstr(m, "reason"), "shipped");
    json_decref(m);
    assert_reason(f->db, TENANT, root, "mandate_completed");
    assert_reason(f->db, TENANT, a, "ancestor_inactive");
    assert_reason(f->db, TENANT, b, "ancestor_inactive");
    assert_reason(f->db, TENANT, a1, "ancestor_inactive");
    assert_mstate(f->db, TENANT, a, "active");
    assert_mstate(f->db, TENANT, a1, "active");
    assert_reason(f->db, TENANT, other, "ok");
    /* Final: nothing brings it back. */
    expect_fail(f->db, CH_OP_MANDATE_REINSTATE, TENANT, root, NULL, CH_INVALID_TRANSITION, NULL,
                "completed");
    expect_fail(f->db, CH_OP_MANDATE_APPROVE, TENANT, root, NULL, CH_INVALID_TRANSITION, NULL,
                "completed");
}

/* ---- amendments (PATCH) ------------------------------------------------------------ */

/* The scope of mandate id is the JSON text want. */
#define assert_scope(db, id, want)                                                                 \
    do {                                                                                           \
        json_t *m_ = mget(db, TENANT, id);                                                         \
        assert_json_text(json_object_get(m_, "scope"), want);                                      \
        json_decref(m_);                                                                           \
    } while (0)

static void test_patch_narrow_and_clip(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX], g[CH_ID_MAX], n[CH_ID_MAX];
    json_t *rm = mk_root(f->db, TENANT, "{\"max_depth\":2}", r);
    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    json_decref(mk_child(f->db, TENANT, c, "g", NULL, g));
    json_decref(mk_child(f->db, TENANT, r, "n",
                         "{\"scope\":{\"tools\":[\"git\"],\"lanes\":[\"repo\"],"
                         "\"resources\":[\"doc:readme\"],\"classes\":[\"read\"]}}",
                         n));
    int64_t before = ch_stream_last(f->db);

    /* tools: R and every descendant not already inside are clipped, versions bumped. */
    json_t *m = must(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}");
    assert_int_equal(jint(m, "version"), 2);
    assert_json_text(json_object_get(m, "scope"),
                     "{\"tools\":[\"git\"],\"lanes\":[\"repo\",\"web\"],"
                     "\"resources\":[\"doc:readme\",\"repo:web/*\"],"
                     "\"classes\":[\"read\",\"write\",\"external\"]}");
    assert_mission(m);
    assert_string_not_equal(jstr(m, "mission_hash"), jstr(rm, "mission_hash"));
    assert_true(ms_of(jstr(m, "updated_at")) >= ms_of(jstr(rm, "updated_at")));
    json_decref(rm);
    json_decref(m);
    static const char after_tools[] = "{\"tools\":[\"git\"],\"lanes\":[\"repo\",\"web\"],"
                                      "\"resources\":[\"doc:readme\",\"repo:web/"
                                      "*\"],\"classes\":[\"read\",\"write\",\"external\"]}";
    assert_scope(f->db, c, after_tools);
    assert_scope(f->db, g, after_tools);
    assert_int_equal(mversion(f->db, TENANT, c), 2);
    assert_int_equal(mversion(f->db, TENANT, g), 2);
    assert_int_equal(mversion(f->db, TENANT, n), 1); /* already inside: untouched */
    m = mget(f->db, TENANT, g);
    assert_mission(m);
    json_decref(m);
    assert_string_equal(chk(f->db, TENANT, g, NULL, "shell", "repo", "repo:web/a", "read", NULL),
                        "tool_out_of_scope");
    json_t *evs = stream_after(f->db, TENANT, before);
    assert_int_equal(json_array_size(evs), 3);
    const char *order[] = {r, c, g};
    for (int i = 0; i < 3; i++) {
        json_t *ev = json_array_get(evs, (size_t)i);
        assert_string_equal(jstr(ev, "type"), "mandate.narrowed");
        assert_string_equal(jstr(ev, "mandate"), order[i]);
        assert_string_equal(jstr(ev, "cause"), r);
        assert_int_equal(jint(ev, "version"), 2);
        assert_json_text(json_object_get(ev, "scope"), after_tools);
    }
    json_decref(evs);

    /* lanes, resources (a narrower pattern replaces the wider one below), classes. */
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"lanes\":[\"repo\"]}}");
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r,
       "{\"scope\":{\"resources\":[\"repo:web/src/*\",\"doc:readme\"]}}");
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"classes\":[\"write\",\"read\"]}}");
    static const char narrowed[] =
        "{\"tools\":[\"git\"],\"lanes\":[\"repo\"],"
        "\"resources\":[\"doc:readme\",\"repo:web/src/*\"],\"classes\":[\"read\",\"write\"]}";
    assert_scope(f->db, r, narrowed);
    assert_scope(f->db, c, narrowed);
    assert_scope(f->db, g, narrowed);
    assert_int_equal(mversion(f->db, TENANT, r), 5);
    assert_int_equal(mversion(f->db, TENANT, c), 5);
    assert_int_equal(mversion(f->db, TENANT, g), 5);
    assert_int_equal(mversion(f->db, TENANT, n), 1);
    assert_string_equal(chk(f->db, TENANT, c, NULL, "git", "repo", "repo:web/a.ts", "read", NULL),
                        "resource_out_of_scope");
    assert_string_equal(
        chk(f->db, TENANT, c, NULL, "git", "repo", "repo:web/src/a.ts", "external", NULL),
        "class_out_of_scope");
    assert_reason(f->db, TENANT, g, "ok");

    /* Broadening is refused list by list; nothing changes. */
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r,
                "{\"scope\":{\"tools\":[\"git\",\"shell\"]}}", CH_NOT_SUBSET, "scope.tools", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"lanes\":[\"web\"]}}",
                CH_NOT_SUBSET, "scope.lanes", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r,
                "{\"scope\":{\"resources\":[\"repo:web/*\"]}}", CH_NOT_SUBSET, "scope.resources",
                NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"classes\":[\"external\"]}}",
                CH_NOT_SUBSET, "scope.classes", NULL);
    /* A child cannot be widened back to what its parent still allows either. */
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, n,
                "{\"scope\":{\"resources\":[\"doc:readme\",\"repo:web/src/*\"]}}", CH_NOT_SUBSET,
                "scope.resources", NULL);
    assert_int_equal(mversion(f->db, TENANT, r), 5);
    assert_scope(f->db, r, narrowed);

    /* Emptying a list is a narrowing too. */
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, n, "{\"scope\":{\"classes\":[]}}");
    assert_int_equal(mversion(f->db, TENANT, n), 2);
    assert_string_equal(chk(f->db, TENANT, n, NULL, "git", "repo", "doc:readme", "read", NULL),
                        "class_out_of_scope");
}

/* A final mandate in the middle of a tree is left as it is, but the live mandates below
 * it are still clipped: narrowing reaches every live descendant. */
static void test_patch_clips_below_final(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX], g[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":2}", r));
    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    json_decref(mk_child(f->db, TENANT, c, "g", NULL, g));
    json_decref(must(f->db, CH_OP_MANDATE_COMPLETE, TENANT, c, NULL));
    json_decref(must(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}"));
    assert_int_equal(mversion(f->db, TENANT, c), 1); /* completed: untouched */
    assert_int_equal(mversion(f->db, TENANT, g), 2);
    json_t *m = mget(f->db, TENANT, g);
    json_t *tools = json_object_get(json_object_get(m, "scope"), "tools");
    assert_int_equal(json_array_size(tools), 1);
    assert_string_equal(json_string_value(json_array_get(tools, 0)), "git");
    json_decref(m);
}

static void test_patch_no_change_and_conditions(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX];
    json_t *rm = mk_root(f->db, TENANT, "{\"max_depth\":1,\"conditions\":{\"env\":\"prod\"}}", r);
    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    char body[256];

    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{}", CH_NO_CHANGE, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r,
                "{\"scope\":{\"tools\":[\"shell\",\"git\"]}}", CH_NO_CHANGE, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{}}", CH_NO_CHANGE, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":{\"env\":\"prod\"}}",
                CH_NO_CHANGE, NULL, NULL);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", jstr(rm, "expires_at"));
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, body, CH_NO_CHANGE, NULL, NULL);
    assert_int_equal(mversion(f->db, TENANT, r), 1);

    /* Conditions keep every key; values may change and keys may be added. */
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":{}}", CH_NOT_SUBSET,
                "conditions", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":{\"region\":\"eu\"}}",
                CH_NOT_SUBSET, "conditions", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":null}", CH_NOT_SUBSET,
                "conditions", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":[]}", CH_INVALID_TYPE,
                "conditions", NULL);
    json_t *m = must(f->db, CH_OP_MANDATE_PATCH, TENANT, r,
                     "{\"conditions\":{\"env\":\"staging\",\"ticket\":1}}");
    assert_int_equal(jint(m, "version"), 2);
    assert_json_text(json_object_get(m, "conditions"), "{\"env\":\"staging\",\"ticket\":1}");
    assert_string_not_equal(jstr(m, "mission_hash"), jstr(rm, "mission_hash"));
    assert_mission(m);
    json_decref(m);
    /* The child holds its parent's conditions: it inherits the amendment. */
    assert_int_equal(mversion(f->db, TENANT, c), 2);
    m = mget(f->db, TENANT, c);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(m, "conditions"), "ticket")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(m, "conditions"), "env")), "staging");
    json_decref(m);
    /* ... and cannot change it on its own. */
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, c, "{\"conditions\":{\"env\":\"prod\",\"ticket\":1}}",
                CH_NOT_SUBSET, "conditions", NULL);

    /* Validation and state. */
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"purpose\":\"x\"}", CH_UNKNOWN_FIELD,
                "purpose", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":\"git\"}}",
                CH_INVALID_TYPE, "scope.tools", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"expires_at\":\"2020-01-01T00:00:00Z\"}",
                CH_INVALID_VALUE, "expires_at", NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, NULL, CH_BAD_REQUEST, NULL, NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, OTHER, r, "{\"scope\":{\"tools\":[]}}", CH_NOT_FOUND,
                NULL, NULL);
    char ghost[CH_ID_MAX];
    ch_id_new("mdt", ghost);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, ghost, "{\"scope\":{\"tools\":[]}}",
                CH_NOT_FOUND, NULL, NULL);
    /* Allowed while proposed and suspended, not once final. */
    char p[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"state\":\"proposed\"}", p));
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, p, "{\"scope\":{\"tools\":[\"git\"]}}");
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, r, NULL);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}");
    assert_mstate(f->db, TENANT, r, "suspended");
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, r, NULL);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[]}}",
                CH_INVALID_TRANSITION, NULL, "revoked");
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, c, "{\"scope\":{\"tools\":[]}}",
                CH_INVALID_TRANSITION, NULL, "revoked");
    json_decref(rm);
}

/* expires_at moves either way, never past the parent's; a shorter deadline moves the
 * descendants' that are later. */
static void test_patch_expires(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX], g[CH_ID_MAX], body[128], t[32];
    json_t *rm = mk_root(f->db, TENANT, "{\"max_depth\":2}", r);
    int64_t rexp = ms_of(jstr(rm, "expires_at"));
    json_decref(rm);
    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    json_decref(mk_child(f->db, TENANT, c, "g", NULL, g));

    ch_time_format(rexp + 1, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", t);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, c, body, CH_NOT_SUBSET, "expires_at", NULL);

    /* C earlier: G follows. */
    int64_t before = ch_stream_last(f->db);
    ch_time_format(rexp - 600000, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", t);
    json_t *old = mget(f->db, TENANT, c);
    json_t *m = must(f->db, CH_OP_MANDATE_PATCH, TENANT, c, body);
    assert_string_equal(jstr(m, "expires_at"), t);
    assert_int_equal(jint(m, "version"), 2);
    /* The deadline is not part of the mission: the hash stays. */
    assert_string_equal(jstr(m, "mission_hash"), jstr(old, "mission_hash"));
    json_decref(old);
    json_decref(m);
    m = mget(f->db, TENANT, g);
    assert_string_equal(jstr(m, "expires_at"), t);
    assert_int_equal(jint(m, "version"), 2);
    json_decref(m);
    json_t *evs = stream_after(f->db, TENANT, before);
    assert_int_equal(json_array_size(evs), 2);
    assert_string_equal(jstr(json_array_get(evs, 0), "type"), "mandate.amended");
    assert_string_equal(jstr(json_array_get(evs, 0), "mandate"), c);
    assert_string_equal(jstr(json_array_get(evs, 0), "expires_at"), t);
    assert_string_equal(jstr(json_array_get(evs, 1), "type"), "mandate.amended");
    assert_string_equal(jstr(json_array_get(evs, 1), "mandate"), g);
    assert_string_equal(jstr(json_array_get(evs, 1), "cause"), c);
    json_decref(evs);

    /* C later again (up to R's): G is not extended. */
    char rt[32];
    ch_time_format(rexp, rt);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", rt);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, c, body);
    m = mget(f->db, TENANT, c);
    assert_string_equal(jstr(m, "expires_at"), rt);
    assert_int_equal(jint(m, "version"), 3);
    json_decref(m);
    m = mget(f->db, TENANT, g);
    assert_string_equal(jstr(m, "expires_at"), t);
    assert_int_equal(jint(m, "version"), 2);
    json_decref(m);

    /* R much shorter: both move to it. */
    ch_time_format(ch_now_ms() + 1200000, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", t);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, body);
    const char *ids[] = {r, c, g};
    const int64_t versions[] = {2, 4, 3};
    for (int i = 0; i < 3; i++) {
        m = mget(f->db, TENANT, ids[i]);
        assert_string_equal(jstr(m, "expires_at"), t);
        assert_int_equal(jint(m, "version"), versions[i]);
        json_decref(m);
    }
    /* A later deadline for C is now past its parent's. */
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", rt);
    expect_fail(f->db, CH_OP_MANDATE_PATCH, TENANT, c, body, CH_NOT_SUBSET, "expires_at", NULL);
    /* Scope and deadline together: one version. */
    ch_time_format(ch_now_ms() + 600000, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\",\"scope\":{\"tools\":[\"git\"]}}", t);
    m = must(f->db, CH_OP_MANDATE_PATCH, TENANT, r, body);
    assert_int_equal(jint(m, "version"), 3);
    assert_string_equal(jstr(m, "expires_at"), t);
    json_decref(m);
    m = mget(f->db, TENANT, g);
    assert_string_equal(jstr(m, "expires_at"), t);
    assert_int_equal(jint(m, "version"), 4);
    json_decref(m);
}

/* ---- the check ------------------------------------------------------------------- */

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_check_reasons(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], ghost[CH_ID_MAX], kid[CH_ID_MAX], body[256];
    ch_decision d;
    json_decref(mk_root(f->db, TENANT, "{\"actor\":\"coder\",\"max_depth\":1}", r));
    json_decref(mk_child(f->db, TENANT, r, "helper", NULL, kid));

    int64_t t0 = ch_now_ms();
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "repo", "repo:web/src/a.ts", "read", &d),
                        "ok");
    assert_true(d.allow);
    assert_int_equal(d.mandate_version, 1);
    assert_true(ch_id_valid("dec", d.decision_id));
    assert_true(d.checked_at >= t0 && d.checked_at <= ch_now_ms());

    /* The scope, rule by rule (tool, lane, resource, class: the first failing wins). */
    assert_string_equal(chk(f->db, TENANT, r, "coder", "git", "repo", "repo:web/a", "read", NULL),
                        "ok");
    assert_string_equal(chk(f->db, TENANT, r, "other", "git", "repo", "repo:web/a", "read", NULL),
                        "actor_mismatch");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "deploy", "prod", "x", "bogus", NULL),
                        "tool_out_of_scope");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "shell", "prod", "x", "bogus", NULL),
                        "lane_out_of_scope");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "repo:api/x", "read", NULL),
                        "resource_out_of_scope");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "repo:web/", "write", NULL),
                        "ok");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "doc:readme", "external", NULL),
                        "ok");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "doc:readme/x", "read", NULL),
                        "resource_out_of_scope");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "doc:readm", "read", NULL),
                        "resource_out_of_scope");
    assert_string_equal(
        chk(f->db, TENANT, r, NULL, "git", "web", "doc:readme", "irreversible", NULL),
        "class_out_of_scope");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "doc:readme", "bogus", NULL),
                        "class_out_of_scope");
    assert_string_equal(chk(f->db, TENANT, r, NULL, "git", "web", "doc:readme", NULL, NULL),
                        "class_out_of_scope");

    /* Unknown mandates: no such id, another tenant's, none given. */
    ch_id_new("mdt", ghost);
    assert_string_equal(chk(f->db, TENANT, ghost, NULL, "git", "repo", "doc:readme", "read", &d),
                        "mandate_unknown");
    assert_int_equal(d.mandate_version, 0);
    assert_string_equal(chk(f->db, OTHER, r, NULL, "git", "repo", "doc:readme", "read", &d),
                        "mandate_unknown");
    assert_int_equal(d.mandate_version, 0);
    assert_string_equal(chk(f->db, TENANT, NULL, NULL, "git", "repo", "doc:readme", "read", NULL),
                        "mandate_unknown");
    assert_string_equal(chk(f->db, TENANT, "nope", NULL, "git", "repo", "doc:readme", "read", NULL),
                        "mandate_unknown");

    /* The mandate's own state, before anything else (an actor mismatch included). */
    char p[CH_ID_MAX], s[CH_ID_MAX], v[CH_ID_MAX], c[CH_ID_MAX], e[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"state\":\"proposed\",\"actor\":\"x\"}", p));
    make_in_state(f->db, S_SUSPENDED, s);
    make_in_state(f->db, S_REVOKED, v);
    make_in_state(f->db, S_COMPLETED, c);
    char soon[32];
    int64_t deadline = ch_now_ms() + 100;
    ch_time_format(deadline, soon);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", soon);
    json_decref(mk_root(f->db, TENANT, body, e));
    assert_string_equal(chk(f->db, TENANT, p, "y", "git", "repo", "doc:readme", "read", &d),
                        "mandate_proposed");
    assert_int_equal(d.mandate_version, 1);
    assert_reason(f->db, TENANT, s, "mandate_suspended");
    assert_reason(f->db, TENANT, v, "mandate_revoked");
    assert_reason(f->db, TENANT, c, "mandate_completed");
    while (ch_now_ms() <= deadline)
        unit_sleep_ms(5);
    assert_reason(f->db, TENANT, e, "mandate_expired");

    /* Below a mandate that does not hold. */
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, r, NULL);
    assert_string_equal(chk(f->db, TENANT, kid, "nobody", "x", "y", "z", "read", NULL),
                        "ancestor_inactive");
    assert_string_equal(chk(f->db, TENANT, r, "other", "git", "repo", "doc:readme", "read", NULL),
                        "mandate_suspended");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, r, NULL);
    assert_reason(f->db, TENANT, kid, "ok");

    /* mandate_version follows amendments. */
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}");
    chk(f->db, TENANT, r, NULL, "git", "repo", "doc:readme", "read", &d);
    assert_int_equal(d.mandate_version, 2);
    chk(f->db, TENANT, kid, NULL, "git", "repo", "doc:readme", "read", &d);
    assert_int_equal(d.mandate_version, 2);

    /* Decision ids are unique. */
    enum { N = 500 };
    char(*ids)[CH_ID_MAX] = calloc(N, CH_ID_MAX);
    assert_non_null(ids);
    for (int i = 0; i < N; i++) {
        chk(f->db, TENANT, i % 2 ? r : ghost, NULL, "git", "repo", "doc:readme", "read", &d);
        assert_true(ch_id_valid("dec", d.decision_id));
        memcpy(ids[i], d.decision_id, CH_ID_MAX);
    }
    qsort(ids, N, CH_ID_MAX, cmp_id);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}

/* spent reaches budget, on the mandate or any ancestor: usage of a child's session
 * counts against the root. */
static void test_check_budget(void **state)
{
    fixture *f = *state;
    char b[CH_ID_MAX], k1[CH_ID_MAX], k2[CH_ID_MAX], s1[CH_ID_MAX], s2[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":1,\"budget\":{\"tokens\":100}}", b));
    json_decref(mk_child(f->db, TENANT, b, "k1", "{\"budget\":{\"tokens\":100}}", k1));
    json_decref(mk_child(f->db, TENANT, b, "k2", "{\"budget\":{\"tokens\":50}}", k2));
    mk_session(f->db, TENANT, k1, s1);
    mk_session(f->db, TENANT, k2, s2);

    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s2, "{\"kind\":\"llm\",\"usage\":{\"tokens\":49}}");
    assert_reason(f->db, TENANT, k2, "ok");
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s2, "{\"kind\":\"llm\",\"usage\":{\"tokens\":1}}");
    assert_reason(f->db, TENANT, k2, "budget_exceeded");
    assert_reason(f->db, TENANT, b, "ok");
    assert_reason(f->db, TENANT, k1, "ok");
    /* Out of scope still says so first. */
    assert_string_equal(chk(f->db, TENANT, k2, NULL, "deploy", "repo", "x", "read", NULL),
                        "tool_out_of_scope");

    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s1,
       "{\"events\":[{\"kind\":\"llm\",\"usage\":{\"tokens\":20}},"
       "{\"kind\":\"llm\",\"usage\":{\"tokens\":30,\"cost_usd\":0.25,\"tool_calls\":2}}]}");
    assert_reason(f->db, TENANT, b, "budget_exceeded");
    assert_reason(f->db, TENANT, k1, "budget_exceeded"); /* its own 50 < 100: the root's */
    json_t *m = mget(f->db, TENANT, b);
    assert_json_text(json_object_get(m, "spent"),
                     "{\"tokens\":100,\"cost_usd\":0.25,\"tool_calls\":2}");
    json_decref(m);
    m = mget(f->db, TENANT, k1);
    assert_json_text(json_object_get(m, "spent"),
                     "{\"tokens\":50,\"cost_usd\":0.25,\"tool_calls\":2}");
    json_decref(m);
    m = mget(f->db, TENANT, k2);
    assert_json_text(json_object_get(m, "spent"),
                     "{\"tokens\":50,\"cost_usd\":0.0,\"tool_calls\":0}");
    json_decref(m);

    /* The other two dimensions. */
    char c[CH_ID_MAX], t[CH_ID_MAX], sc[CH_ID_MAX], st[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"budget\":{\"cost_usd\":1.5}}", c));
    json_decref(mk_root(f->db, TENANT, "{\"budget\":{\"tool_calls\":3}}", t));
    mk_session(f->db, TENANT, c, sc);
    mk_session(f->db, TENANT, t, st);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, sc, "{\"kind\":\"llm\",\"usage\":{\"cost_usd\":1.0}}");
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, st, "{\"kind\":\"llm\",\"usage\":{\"tool_calls\":2}}");
    assert_reason(f->db, TENANT, c, "ok");
    assert_reason(f->db, TENANT, t, "ok");
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, sc, "{\"kind\":\"llm\",\"usage\":{\"cost_usd\":0.5}}");
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, st, "{\"kind\":\"llm\",\"usage\":{\"tool_calls\":1}}");
    assert_reason(f->db, TENANT, c, "budget_exceeded");
    assert_reason(f->db, TENANT, t, "budget_exceeded");
    /* A budget of 0 allows nothing. */
    char z[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"budget\":{\"tokens\":0}}", z));
    assert_reason(f->db, TENANT, z, "budget_exceeded");

    /* Spending touches the mandate and its ancestors on every append, but their
     * deadlines do not move: the expiry timer holds one entry per live mandate. */
    uint64_t timers = metric(f->db, "\ncharter_mandate_timers");
    for (int i = 0; i < 200; i++)
        ok(f->db, CH_OP_SESSION_APPEND, TENANT, s1, "{\"kind\":\"llm\",\"usage\":{\"tokens\":1}}");
    assert_int_equal(metric(f->db, "\ncharter_mandate_timers"), timers);
    assert_int_equal(timers, 6); /* b, k1, k2, c, t, z */
}

/* ch_check_json: the HTTP form, its reply and its validation. */
static void test_check_json(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX];
    json_t *out = NULL;
    ch_err e;
    json_decref(mk_root(f->db, TENANT, "{\"actor\":\"coder\"}", r));

    json_t *body = jfmt("{\"mandate\":\"%s\",\"actor\":\"coder\",\"session\":\"sess_x\","
                        "\"action\":{\"tool\":\"git\",\"lane\":\"repo\",\"resource\":"
                        "\"repo:web/a\",\"class\":\"write\"}}",
                        r);
    assert_int_equal(ch_check_json(f->db, TENANT, body, &out, &e), CH_OK);
    json_decref(body);
    assert_true(json_is_true(json_object_get(out, "allow")));
    assert_string_equal(jstr(out, "reason"), "ok");
    assert_string_equal(jstr(out, "mandate"), r);
    assert_int_equal(jint(out, "mandate_version"), 1);
    assert_true(ch_id_valid("dec", jstr(out, "decision_id")));
    ms_of(jstr(out, "checked_at"));
    assert_int_equal(json_object_size(out), 6);
    json_decref(out);

    body = jfmt("{\"mandate\":\"mdt_nope\",\"action\":{\"tool\":\"git\",\"lane\":\"repo\","
                "\"resource\":\"a\",\"class\":\"read\"}}");
    assert_int_equal(ch_check_json(f->db, TENANT, body, &out, &e), CH_OK);
    json_decref(body);
    assert_true(json_is_false(json_object_get(out, "allow")));
    assert_string_equal(jstr(out, "reason"), "mandate_unknown");
    assert_true(json_is_null(json_object_get(out, "mandate_version")));
    json_decref(out);

    const struct {
        const char *body;
        ch_status st;
        const char *field;
    } bad[] = {
        {"{\"action\":{\"tool\":\"a\",\"lane\":\"b\",\"resource\":\"c\",\"class\":\"read\"}}",
         CH_MISSING_FIELD, "mandate"},
        {"{\"mandate\":\"m\",\"artifact\":\"a\",\"action\":{\"tool\":\"a\",\"lane\":\"b\","
         "\"resource\":\"c\",\"class\":\"read\"}}",
         CH_BAD_REQUEST, "artifact"},
        {"{\"mandate\":\"m\"}", CH_MISSING_FIELD, "action"},
        {"{\"mandate\":\"m\",\"action\":[]}", CH_INVALID_TYPE, "action"},
        {"{\"mandate\":\"m\",\"action\":{\"lane\":\"b\",\"resource\":\"c\",\"class\":\"read\"}}",
         CH_MISSING_FIELD, "action.tool"},
        {"{\"mandate\":\"m\",\"action\":{\"tool\":\"a\",\"lane\":\"b\",\"resource\":\"c\"}}",
         CH_MISSING_FIELD, "action.class"},
        {"{\"mandate\":\"m\",\"action\":{\"tool\":\"a\",\"lane\":\"b\",\"resource\":\"c\","
         "\"class\":\"delete\"}}",
         CH_INVALID_VALUE, "action.class"},
        {"{\"mandate\":\"m\",\"action\":{\"tool\":\"a\",\"lane\":\"b\",\"resource\":\"c\","
         "\"class\":\"read\",\"verb\":1}}",
         CH_UNKNOWN_FIELD, "action.verb"},
        {"{\"mandate\":\"m\",\"user\":\"u\",\"action\":{}}", CH_UNKNOWN_FIELD, "user"},
        {"{\"mandate\":7,\"action\":{}}", CH_INVALID_TYPE, "mandate"},
    };
    int wrong = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        body = jparse(bad[i].body);
        out = NULL;
        ch_err_clear(&e);
        ch_status st = ch_check_json(f->db, TENANT, body, &out, &e);
        json_decref(body);
        assert_null(out);
        if (st != bad[i].st || strcmp(e.field, bad[i].field) != 0) {
            print_error("%s: got %s field '%s', want %s field '%s'\n", bad[i].body,
                        ch_status_name(st), e.field, ch_status_name(bad[i].st), bad[i].field);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
    body = jparse("[]");
    assert_int_equal(ch_check_json(f->db, TENANT, body, &out, &e), CH_BAD_REQUEST);
    json_decref(body);
}

/* ---- artifacts ------------------------------------------------------------------- */

/* The signing key's JWK as text (the caller frees it). */
static char *jwk_text(ch_db *db)
{
    json_t *jwk = ch_signing_key(db);
    assert_non_null(jwk);
    assert_string_equal(jstr(jwk, "kty"), "OKP");
    assert_string_equal(jstr(jwk, "crv"), "Ed25519");
    assert_string_equal(jstr(jwk, "alg"), "EdDSA");
    char *text = json_dumps(jwk, JSON_COMPACT);
    json_decref(jwk);
    assert_non_null(text);
    return text;
}

/* Issues an artifact for id with body (JSON text); returns the reply. */
static json_t *artifact(ch_db *db, const char *tenant, const char *id, const char *body)
{
    json_t *b = body ? jparse(body) : NULL, *out = NULL;
    ch_err e;
    ch_err_clear(&e);
    if (ch_mandate_artifact(db, tenant, id, b, &out, &e) != CH_OK)
        fail_msg("artifact %s: %s", body ? body : "(null)", e.message);
    json_decref(b);
    return out;
}

#define artifact_fails(db, tenant, id, body, want, field, state)                                   \
    artifact_fails_at(__LINE__, db, tenant, id, body, want, field, state)
static void artifact_fails_at(int line, ch_db *db, const char *tenant, const char *id,
                              const char *body, ch_status want, const char *field,
                              const char *state)
{
    json_t *b = body ? jparse(body) : NULL, *out = NULL;
    ch_err e;
    ch_err_clear(&e);
    ch_status st = ch_mandate_artifact(db, tenant, id, b, &out, &e);
    json_decref(b);
    if (st != want)
        fail_msg("line %d: artifact %s: got %s (%s), want %s", line, body ? body : "(null)",
                 ch_status_name(st), e.message, ch_status_name(want));
    assert_null(out);
    if (field != NULL && strcmp(e.field, field) != 0)
        fail_msg("line %d: artifact %s: field '%s', want '%s'", line, body ? body : "(null)",
                 e.field, field);
    if (state != NULL && strcmp(e.state, state) != 0)
        fail_msg("line %d: artifact %s: state '%s', want '%s'", line, body ? body : "(null)",
                 e.state, state);
}

/* The reply of ch_check_json for {artifact: token, actor?, action}; returns reason
 * (copied to out). */
static const char *check_artifact(ch_db *db, const char *tenant, const char *token,
                                  const char *actor, char out[64], json_t **reply)
{
    json_t *body = json_pack("{s:s, s:{s:s, s:s, s:s, s:s}}", "artifact", token, "action", "tool",
                             "git", "lane", "repo", "resource", "repo:web/src/x", "class", "write");
    if (actor != NULL)
        json_object_set_new(body, "actor", json_string(actor));
    json_t *r = NULL;
    ch_err e;
    if (ch_check_json(db, tenant, body, &r, &e) != CH_OK)
        fail_msg("ch_check_json: %s", e.message);
    json_decref(body);
    snprintf(out, 64, "%s", jstr(r, "reason"));
    if (reply != NULL)
        *reply = r;
    else
        json_decref(r);
    return out;
}

static void test_artifacts(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], reason[64];
    json_t *m = mk_root(f->db, TENANT, "{\"actor\":\"coder\",\"max_depth\":1}", r);
    char *jwk = jwk_text(f->db);

    int64_t t0 = ch_now_ms();
    json_t *a = artifact(f->db, TENANT, r, "{\"ttl\":\"60s\"}");
    int64_t t1 = ch_now_ms();
    assert_int_equal(json_object_size(a), 3);
    assert_int_equal(jint(a, "version"), 1);
    const char *token = jstr(a, "artifact");
    json_t *claims = NULL;
    ch_err e;
    ch_err_clear(&e);
    if (ch_artifact_verify(jwk, strlen(jwk), token, ch_now_ms(), &claims, &e) != CH_OK)
        fail_msg("verify: %s", e.message);
    assert_string_equal(jstr(claims, "iss"), "charter");
    assert_string_equal(jstr(claims, "tenant"), TENANT);
    assert_string_equal(jstr(claims, "mdt"), r);
    assert_int_equal(jint(claims, "ver"), 1);
    assert_string_equal(jstr(claims, "actor"), "coder");
    assert_json_equal(json_object_get(claims, "scope"), json_object_get(m, "scope"));
    assert_string_equal(jstr(claims, "mission"), jstr(m, "mission_hash"));
    int64_t iat = jint(claims, "iat"), exp = jint(claims, "exp");
    assert_true(iat >= t0 / 1000 && iat <= t1 / 1000);
    /* ttl 60 s, but never longer than max_staleness (30 s by default). */
    assert_true(exp <= (t1 + 30000) / 1000);
    assert_true(exp >= (t0 + 30000) / 1000 - 1);
    assert_true(exp * 1000 <= ms_of(jstr(m, "expires_at")));
    assert_int_equal(ms_of(jstr(a, "expires_at")), exp * 1000);
    /* Decided offline: read and write only. */
    const char *why = NULL;
    assert_true(ch_artifact_decide(claims, "git", "repo", "repo:web/a", "read", &why));
    assert_string_equal(why, "ok");
    assert_false(ch_artifact_decide(claims, "git", "repo", "repo:web/a", "external", &why));
    assert_string_equal(why, "online_check_required");
    assert_false(ch_artifact_decide(claims, "deploy", "repo", "repo:web/a", "read", &why));
    assert_string_equal(why, "tool_out_of_scope");
    json_decref(claims);
    /* Not valid from its exp on. */
    assert_int_equal(ch_artifact_verify(jwk, strlen(jwk), token, exp * 1000, NULL, &e),
                     CH_INVALID_VALUE);

    /* The online check of an artifact. */
    json_t *reply = NULL;
    assert_string_equal(check_artifact(f->db, TENANT, token, NULL, reason, &reply), "ok");
    assert_true(json_is_true(json_object_get(reply, "allow")));
    assert_string_equal(jstr(reply, "mandate"), r);
    assert_int_equal(jint(reply, "mandate_version"), 1);
    json_decref(reply);
    assert_string_equal(check_artifact(f->db, TENANT, token, "mallory", reason, NULL),
                        "actor_mismatch");
    /* Another tenant cannot use it. */
    assert_string_equal(check_artifact(f->db, OTHER, token, NULL, reason, NULL), "mandate_unknown");

    /* Tampering with any part fails verification. */
    size_t len = strlen(token);
    char *bad = strdup(token);
    assert_non_null(bad);
    bad[len - 2] = bad[len - 2] == 'A' ? 'B' : 'A'; /* the signature */
    assert_string_equal(check_artifact(f->db, TENANT, bad, NULL, reason, &reply),
                        "artifact_invalid");
    assert_true(json_is_null(json_object_get(reply, "mandate")));
    assert_true(json_is_null(json_object_get(reply, "mandate_version")));
    assert_true(ch_id_valid("dec", jstr(reply, "decision_id")));
    json_decref(reply);
    assert_int_equal(ch_artifact_verify(jwk, strlen(jwk), bad, ch_now_ms(), NULL, &e),
                     CH_INVALID_VALUE);
    memcpy(bad, token, len);
    char *dot = strchr(bad, '.');
    dot[5] = dot[5] == 'A' ? 'B' : 'A'; /* the payload */
    assert_string_equal(check_artifact(f->db, TENANT, bad, NULL, reason, NULL), "artifact_invalid");
    free(bad);
    assert_string_equal(check_artifact(f->db, TENANT, "a.b.c", NULL, reason, NULL),
                        "artifact_invalid");
    assert_string_equal(check_artifact(f->db, TENANT, "x", NULL, reason, &reply),
                        "artifact_invalid");
    assert_false(json_is_true(json_object_get(reply, "allow")));
    json_decref(reply);

    /* After an amendment the artifact is stale (its signature still verifies). */
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}");
    assert_string_equal(check_artifact(f->db, TENANT, token, NULL, reason, &reply),
                        "artifact_stale");
    assert_false(json_is_true(json_object_get(reply, "allow")));
    assert_int_equal(jint(reply, "mandate_version"), 2);
    json_decref(reply);
    assert_int_equal(ch_artifact_verify(jwk, strlen(jwk), token, ch_now_ms(), NULL, &e), CH_OK);
    json_decref(a);
    a = artifact(f->db, TENANT, r, "{\"ttl\":10}");
    assert_int_equal(jint(a, "version"), 2);
    assert_true(ms_of(jstr(a, "expires_at")) <= ch_now_ms() + 10000);
    assert_string_equal(check_artifact(f->db, TENANT, jstr(a, "artifact"), NULL, reason, NULL),
                        "ok");
    /* A fresh artifact of a mandate that stopped holding: the state decides. */
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, r, NULL);
    assert_string_equal(check_artifact(f->db, TENANT, jstr(a, "artifact"), NULL, reason, NULL),
                        "mandate_suspended");
    json_decref(a);

    /* Only a mandate that holds gets one. */
    artifact_fails(f->db, TENANT, r, "{\"ttl\":\"30s\"}", CH_MANDATE_INACTIVE, NULL, "suspended");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, r, NULL);
    char kid[CH_ID_MAX], p[CH_ID_MAX], ghost[CH_ID_MAX];
    json_decref(mk_child(f->db, TENANT, r, "helper", "{\"scope\":{\"tools\":[\"git\"]}}", kid));
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, r, NULL);
    artifact_fails(f->db, TENANT, kid, "{\"ttl\":\"30s\"}", CH_MANDATE_INACTIVE, NULL, NULL);
    json_decref(mk_root(f->db, TENANT, "{\"state\":\"proposed\"}", p));
    artifact_fails(f->db, TENANT, p, "{\"ttl\":\"30s\"}", CH_MANDATE_INACTIVE, NULL, "proposed");
    ch_id_new("mdt", ghost);
    artifact_fails(f->db, TENANT, ghost, "{\"ttl\":\"30s\"}", CH_NOT_FOUND, NULL, NULL);
    artifact_fails(f->db, OTHER, p, "{\"ttl\":\"30s\"}", CH_NOT_FOUND, NULL, NULL);

    /* exp is also bounded by the mandate's deadline. */
    char soon[CH_ID_MAX], body[128], t[32];
    ch_time_format(ch_now_ms() + 5000, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", t);
    json_decref(mk_root(f->db, TENANT, body, soon));
    a = artifact(f->db, TENANT, soon, "{\"ttl\":\"1h\"}");
    assert_true(ms_of(jstr(a, "expires_at")) <= ms_of(t));
    assert_true(ms_of(jstr(a, "expires_at")) >= ms_of(t) - 1000);
    json_decref(a);
    json_decref(m);
    free(jwk);
}

static void test_artifact_ttl(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, NULL, r));
    artifact_fails(f->db, TENANT, r, NULL, CH_MISSING_FIELD, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{}", CH_MISSING_FIELD, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":null}", CH_MISSING_FIELD, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":\"0s\"}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":\"999ms\"}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":\"2h\"}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":\"abc\"}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":0}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":-1}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":3601}", CH_INVALID_VALUE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":true}", CH_INVALID_TYPE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":1.5}", CH_INVALID_TYPE, "ttl", NULL);
    artifact_fails(f->db, TENANT, r, "{\"ttl\":\"30s\",\"aud\":\"x\"}", CH_UNKNOWN_FIELD, "aud",
                   NULL);
    artifact_fails(f->db, TENANT, r, "[]", CH_BAD_REQUEST, NULL, NULL);
    json_decref(artifact(f->db, TENANT, r, "{\"ttl\":1}"));
    json_decref(artifact(f->db, TENANT, r, "{\"ttl\":\"1s\"}"));
    json_decref(artifact(f->db, TENANT, r, "{\"ttl\":3600}"));
    json_decref(artifact(f->db, TENANT, r, "{\"ttl\":\"1h\"}"));
}

/* A negative ttl in seconds is refused, however large. */
static void test_artifact_ttl_negative(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, NULL, r));
    artifact_fails(f->db, TENANT, r, "{\"ttl\":-9000000000000000}", CH_INVALID_VALUE, "ttl", NULL);
    /* -18446744073709521 * 1000 wraps around to 30616 (ms) in 64 bits. */
    artifact_fails(f->db, TENANT, r, "{\"ttl\":-18446744073709521}", CH_INVALID_VALUE, "ttl", NULL);
}

/* ---- expiry ---------------------------------------------------------------------- */

/* Checks deny from the deadline on, to the millisecond; the state change, the
 * sessions going inert and the stream events follow within a second. */
static void test_expiry_exact(void **state)
{
    fixture *f = *state;
    char m[CH_ID_MAX], c[CH_ID_MAX], s[CH_ID_MAX], sc[CH_ID_MAX], body[128], t[32];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":1}", m));
    json_decref(mk_child(f->db, TENANT, m, "c", NULL, c));
    mk_session(f->db, TENANT, m, s);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s, "{\"kind\":\"message\"}");
    mk_session(f->db, TENANT, c, sc);
    int64_t before = ch_stream_last(f->db);

    /* The deadline is set last, by a PATCH that also moves the child's. */
    int64_t deadline = ch_now_ms() + 200;
    ch_time_format(deadline, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", t);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, m, body);
    assert_true(ch_now_ms() < deadline - 5);
    assert_reason(f->db, TENANT, m, "ok");
    assert_reason(f->db, TENANT, c, "ok");

    while (ch_now_ms() < deadline - 20)
        unit_sleep_ms(1);
    /* Every check that began at or after the deadline denies; every check that ended
     * before it allows; the first deny comes within 10 ms of the deadline, or of the end
     * of the last allowed check when that ended later (this thread may be preempted
     * inside a check, on a busy machine). */
    int allowed = 0;
    int64_t prev_t1 = ch_now_ms();
    for (;;) {
        ch_decision d;
        int64_t t0 = ch_now_ms();
        chk(f->db, TENANT, m, NULL, "git", "repo", "doc:readme", "read", &d);
        int64_t t1 = ch_now_ms();
        if (d.allow) {
            if (t0 >= deadline || d.checked_at >= deadline)
                fail_msg("allowed at %lld, deadline %lld", (long long)t0, (long long)deadline);
            allowed++;
        } else {
            assert_string_equal(d.reason, "mandate_expired");
            if (t1 < deadline || d.checked_at < deadline)
                fail_msg("denied at %lld, before the deadline %lld", (long long)d.checked_at,
                         (long long)deadline);
            int64_t from = prev_t1 > deadline ? prev_t1 : deadline;
            if (d.checked_at > from + 10)
                fail_msg("first deny at %lld, %lld ms after the deadline", (long long)d.checked_at,
                         (long long)(d.checked_at - deadline));
            if (from > deadline + 10)
                print_message("(the last allowed check returned %lld ms after the deadline)\n",
                              (long long)(from - deadline));
            break;
        }
        if (t0 > deadline + 2000)
            fail_msg("still allowed 2 s after the deadline");
        prev_t1 = t1;
    }
    assert_true(allowed > 0);
    assert_reason(f->db, TENANT, c, "mandate_expired");
    /* Whether or not the timer has written it yet, no write treats it as holding. */
    json_t *sb = json_pack("{s:s, s:s, s:s}", "user", "u", "agent", "a", "mandate", m);
    ch_err e;
    assert_int_equal(run_json(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, sb, NULL, &e),
                     CH_MANDATE_INACTIVE);
    json_decref(sb);
    delegate_fails(f->db, m, CHILD(",\"actor\":\"late\",\"expires_at\":\"2099-01-01T00:00:00Z\""),
                   CH_MANDATE_INACTIVE, NULL, "expired");

    /* The timer makes it durable and visible. */
    int64_t seen = 0;
    while (seen == 0) {
        char st[16];
        if (strcmp(mstate(f->db, TENANT, m, st), "expired") == 0)
            seen = ch_now_ms();
        else if (ch_now_ms() > deadline + 3000)
            fail_msg("state still %s 3 s after the deadline", st);
        else
            unit_sleep_ms(2);
    }
    if (seen - deadline > 1000)
        fail_msg("state became expired %lld ms after the deadline", (long long)(seen - deadline));
    json_t *mm = mget(f->db, TENANT, m);
    assert_string_equal(jstr(mm, "reason"), "expired");
    assert_int_equal(jint(mm, "version"), 2);
    json_decref(mm);
    assert_mstate(f->db, TENANT, c, "expired");
    assert_sstate(f->db, TENANT, s, "inert");
    assert_moved(f->db, TENANT, s, "active", "inert", "mandate_expired", m);
    assert_sstate(f->db, TENANT, sc, "inert");
    assert_moved(f->db, TENANT, sc, "open", "inert", "mandate_expired", m);
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, s, NULL, CH_MANDATE_INACTIVE, NULL, "expired");
    expect_fail(f->db, CH_OP_SESSION_APPEND, TENANT, s, "{\"kind\":\"message\"}",
                CH_MANDATE_INACTIVE, NULL, "expired");
    expect_fail(f->db, CH_OP_SESSION_APPEND, TENANT, sc, "{\"kind\":\"message\"}",
                CH_MANDATE_INACTIVE, NULL, "expired");
    expect_fail(f->db, CH_OP_MANDATE_REVOKE, TENANT, m, NULL, CH_INVALID_TRANSITION, NULL,
                "expired");

    json_t *evs = stream_after(f->db, TENANT, before);
    /* mandate.amended ×2 (the PATCH), then the expiry. */
    assert_int_equal(count_events(evs, "mandate.amended", NULL), 2);
    /* One expiry for the subtree: m's, reaching c. */
    assert_int_equal(count_events(evs, "mandate.expired", m), 1);
    assert_int_equal(count_events(evs, "mandate.expired", c), 0);
    assert_int_equal(count_events(evs, "session.inert", NULL), 2);
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev)
    {
        if (strcmp(jstr(ev, "type"), "mandate.expired") == 0) {
            assert_string_equal(jstr(ev, "cause"), m);
            assert_string_equal(jstr(ev, "state"), "expired");
            assert_string_equal(jstr(ev, "reason"), "expired");
        }
    }
    json_decref(evs);
}

/* ---- sessions follow their mandate ------------------------------------------------ */

static void test_sessions_follow(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX], r2[CH_ID_MAX], p[CH_ID_MAX], ghost[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":1}", r));
    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    json_decref(mk_root(f->db, TENANT, NULL, r2));
    json_decref(mk_root(f->db, TENANT, "{\"state\":\"proposed\"}", p));
    ch_id_new("mdt", ghost);

    /* Binding: the mandate must exist in this tenant and hold. */
    char body[256];
    const char *unknown[] = {ghost, "nope"};
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}",
                 unknown[i]);
        expect_fail(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, body, CH_INVALID_VALUE, "mandate",
                    NULL);
    }
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}", r);
    expect_fail(f->db, CH_OP_SESSION_CREATE, OTHER, NULL, body, CH_INVALID_VALUE, "mandate", NULL);
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}", p);
    expect_fail(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, body, CH_MANDATE_INACTIVE, NULL,
                "proposed");

    char s_act[CH_ID_MAX], s_open[CH_ID_MAX], s_paused[CH_ID_MAX], s_closed[CH_ID_MAX],
        s_free[CH_ID_MAX], s_other[CH_ID_MAX];
    mk_session(f->db, TENANT, r, s_act);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s_act, "{\"kind\":\"message\"}");
    mk_session(f->db, TENANT, c, s_open);
    mk_session(f->db, TENANT, r, s_paused);
    ok(f->db, CH_OP_SESSION_PAUSE, TENANT, s_paused, NULL);
    mk_session(f->db, TENANT, r, s_closed);
    ok(f->db, CH_OP_SESSION_CLOSE, TENANT, s_closed, NULL);
    mk_session(f->db, TENANT, NULL, s_free);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s_free, "{\"kind\":\"message\"}");
    mk_session(f->db, TENANT, r2, s_other);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s_other, "{\"kind\":\"message\"}");
    json_t *sess = NULL;
    ch_err e;
    assert_int_equal(ch_session_get(f->db, TENANT, s_open, &sess, &e), CH_OK);
    assert_string_equal(jstr(sess, "mandate"), c);
    json_decref(sess);

    /* Suspend: every live session of the subtree goes inert, naming the cause. */
    int64_t before = ch_stream_last(f->db);
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, r, "{\"reason\":\"freeze\"}");
    assert_sstate(f->db, TENANT, s_act, "inert");
    assert_moved(f->db, TENANT, s_act, "active", "inert", "mandate_suspended", r);
    assert_sstate(f->db, TENANT, s_open, "inert");
    assert_moved(f->db, TENANT, s_open, "open", "inert", "mandate_suspended", r);
    assert_sstate(f->db, TENANT, s_paused, "inert");
    assert_moved(f->db, TENANT, s_paused, "paused", "inert", "mandate_suspended", r);
    assert_sstate(f->db, TENANT, s_closed, "closed");
    assert_sstate(f->db, TENANT, s_free, "active");
    assert_sstate(f->db, TENANT, s_other, "active");
    json_t *evs = stream_after(f->db, TENANT, before);
    assert_int_equal(json_array_size(evs), 4);
    assert_string_equal(jstr(json_array_get(evs, 0), "type"), "mandate.suspended");
    for (size_t i = 1; i < 4; i++) {
        json_t *ev = json_array_get(evs, i);
        assert_string_equal(jstr(ev, "type"), "session.inert");
        assert_string_equal(jstr(ev, "state"), "inert");
        assert_string_equal(jstr(ev, "reason"), "mandate_suspended");
    }
    json_decref(evs);

    /* While it does not hold: no new session, no resume; inert sessions take no events. */
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}", r);
    expect_fail(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, body, CH_MANDATE_INACTIVE, NULL,
                "suspended");
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}", c);
    /* (state: the ancestor's that does not hold) */
    expect_fail(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, body, CH_MANDATE_INACTIVE, NULL,
                "suspended");
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, s_act, NULL, CH_MANDATE_INACTIVE, NULL,
                "suspended");
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, s_open, NULL, CH_MANDATE_INACTIVE, NULL,
                "suspended");
    expect_fail(f->db, CH_OP_SESSION_APPEND, TENANT, s_act, "{\"kind\":\"message\"}",
                CH_MANDATE_INACTIVE, NULL, "suspended");
    expect_fail(f->db, CH_OP_SESSION_APPEND, TENANT, s_open, "{\"kind\":\"message\"}",
                CH_MANDATE_INACTIVE, NULL, "suspended");
    expect_fail(f->db, CH_OP_SESSION_PAUSE, TENANT, s_act, NULL, CH_INVALID_TRANSITION, NULL,
                "inert");
    assert_sstate(f->db, TENANT, s_act, "inert");

    /* Reinstate: nothing resumes by itself, but resume works again. */
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, r, NULL);
    assert_sstate(f->db, TENANT, s_act, "inert");
    /* The mandate holds; the session must resume before it takes events. */
    expect_fail(f->db, CH_OP_SESSION_APPEND, TENANT, s_act, "{\"kind\":\"message\"}",
                CH_INVALID_STATE, NULL, "inert");
    json_t *res = must(f->db, CH_OP_SESSION_RESUME, TENANT, s_act, NULL);
    assert_string_equal(jstr(res, "state"), "active");
    json_decref(res);
    json_t *ev = last_event(f->db, TENANT, s_act);
    assert_json_text(json_object_get(ev, "content"), "{\"from\":\"inert\",\"to\":\"active\"}");
    json_decref(ev);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, s_act, "{\"kind\":\"message\"}");
    ok(f->db, CH_OP_SESSION_RESUME, TENANT, s_open, NULL);
    ok(f->db, CH_OP_SESSION_RESUME, TENANT, s_paused, NULL);
    assert_sstate(f->db, TENANT, s_paused, "active");
    assert_sstate(f->db, TENANT, s_closed, "closed");
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, s_closed, NULL, CH_INVALID_TRANSITION, NULL,
                "closed");

    /* Revoking the child: its sessions only. */
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, c, NULL);
    assert_sstate(f->db, TENANT, s_open, "inert");
    assert_moved(f->db, TENANT, s_open, "active", "inert", "mandate_revoked", c);
    assert_sstate(f->db, TENANT, s_act, "active");
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, s_open, NULL, CH_MANDATE_INACTIVE, NULL,
                "revoked");
    ok(f->db, CH_OP_SESSION_CLOSE, TENANT, s_open, NULL);
    assert_sstate(f->db, TENANT, s_open, "closed");

    /* Completing the root. */
    ok(f->db, CH_OP_MANDATE_COMPLETE, TENANT, r, NULL);
    assert_moved(f->db, TENANT, s_act, "active", "inert", "mandate_completed", r);
    assert_moved(f->db, TENANT, s_paused, "active", "inert", "mandate_completed", r);
    assert_sstate(f->db, TENANT, s_open, "closed");
    assert_sstate(f->db, TENANT, s_closed, "closed");
    assert_sstate(f->db, TENANT, s_other, "active");
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, s_act, NULL, CH_MANDATE_INACTIVE, NULL,
                "completed");
}

/* ---- durability ------------------------------------------------------------------ */

static void test_restart(void **state)
{
    fixture *f = *state;
    enum { N = 6 };
    char ids[N][CH_ID_MAX]; /* r, c1, c2, g, r2, and another tenant's x */
    char sg[CH_ID_MAX], sr[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT,
                        "{\"max_depth\":2,\"budget\":{\"tokens\":1000,\"cost_usd\":9.5},"
                        "\"conditions\":{\"env\":\"prod\"},\"evidence\":[1,\"two\"],"
                        "\"purpose\":\"durable\",\"actor\":\"lead\"}",
                        ids[0]));
    json_decref(mk_child(f->db, TENANT, ids[0], "c1",
                         "{\"budget\":{\"tokens\":500,\"cost_usd\":5}}", ids[1]));
    json_decref(mk_child(f->db, TENANT, ids[0], "c2",
                         "{\"budget\":{\"tokens\":500,\"cost_usd\":5}}", ids[2]));
    json_decref(mk_child(f->db, TENANT, ids[1], "g",
                         "{\"budget\":{\"tokens\":100,\"cost_usd\":1},\"max_depth\":2}", ids[3]));
    json_decref(mk_root(f->db, TENANT, "{\"state\":\"proposed\"}", ids[4]));
    json_decref(mk_root(f->db, OTHER, NULL, ids[5]));
    mk_session(f->db, TENANT, ids[3], sg);
    mk_session(f->db, TENANT, ids[0], sr);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, sg,
       "{\"kind\":\"llm\",\"usage\":{\"tokens\":123,\"cost_usd\":0.5,\"tool_calls\":3}}");
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, ids[2], "{\"reason\":\"not needed\"}");
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, ids[0], "{\"scope\":{\"tools\":[\"git\"]}}");
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, ids[3], NULL);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, sr, "{\"kind\":\"llm\",\"usage\":{\"tokens\":7}}");

    const char *reasons[N];
    for (int i = 0; i < N; i++)
        reasons[i] = chk_ok(f->db, i == 5 ? OTHER : TENANT, ids[i]);
    assert_string_equal(reasons[0], "ok");
    assert_string_equal(reasons[2], "mandate_revoked");
    assert_string_equal(reasons[3], "mandate_suspended");
    assert_string_equal(reasons[4], "mandate_proposed");
    flush_audit(f->db);

    json_t *before = snapshot(f->db, TENANT, ids, N - 1), *tree = NULL, *audit = NULL,
           *audit_r = NULL, *other = NULL;
    ch_err e;
    json_array_append_new(before, mget(f->db, OTHER, ids[5]));
    assert_int_equal(ch_mandate_tree(f->db, TENANT, ids[0], &tree, &e), CH_OK);
    json_t *stream = stream_after(f->db, TENANT, 0), *stream_o = stream_after(f->db, OTHER, 0);
    assert_int_equal(ch_audit_list(f->db, TENANT, NULL, 0, 1000, &audit, &e), CH_OK);
    assert_int_equal(ch_audit_list(f->db, TENANT, ids[0], 0, 1000, &audit_r, &e), CH_OK);
    int64_t last = ch_stream_last(f->db);
    assert_true(last > 0);
    json_t *m = json_array_get(before, 0);
    assert_int_equal(jint(m, "version"), 2);
    assert_json_text(json_object_get(m, "spent"),
                     "{\"tokens\":130,\"cost_usd\":0.5,\"tool_calls\":3}");

    reopen(f);

    json_t *after = snapshot(f->db, TENANT, ids, N - 1);
    json_array_append_new(after, mget(f->db, OTHER, ids[5]));
    assert_json_equal(after, before);
    assert_int_equal(ch_mandate_tree(f->db, TENANT, ids[0], &other, &e), CH_OK);
    assert_json_equal(other, tree);
    json_decref(other);
    json_t *s2 = stream_after(f->db, TENANT, 0);
    assert_json_equal(s2, stream);
    json_decref(s2);
    s2 = stream_after(f->db, OTHER, 0);
    assert_json_equal(s2, stream_o);
    json_decref(s2);
    assert_int_equal(ch_stream_last(f->db), last);
    assert_int_equal(ch_audit_list(f->db, TENANT, NULL, 0, 1000, &other, &e), CH_OK);
    assert_json_equal(other, audit);
    json_decref(other);
    assert_int_equal(ch_audit_list(f->db, TENANT, ids[0], 0, 1000, &other, &e), CH_OK);
    assert_json_equal(other, audit_r);
    json_decref(other);
    for (int i = 0; i < N; i++)
        assert_string_equal(chk_ok(f->db, i == 5 ? OTHER : TENANT, ids[i]), reasons[i]);
    assert_string_equal(chk(f->db, TENANT, ids[1], NULL, "shell", "repo", "x", "read", NULL),
                        "tool_out_of_scope");
    assert_sstate(f->db, TENANT, sg, "inert");

    /* Writing goes on from where it was: versions, spending, the tree and stream ids. */
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, ids[0], "{\"scope\":{\"lanes\":[\"repo\"]}}");
    assert_int_equal(mversion(f->db, TENANT, ids[0]), 3);
    assert_int_equal(mversion(f->db, TENANT, ids[3]), 3);
    assert_true(ch_stream_last(f->db) > last);
    char g2[CH_ID_MAX];
    json_decref(mk_child(f->db, TENANT, ids[1], "g2",
                         "{\"budget\":{\"tokens\":377,\"cost_usd\":1},"
                         "\"scope\":{\"tools\":[\"git\"],\"lanes\":[\"repo\"]}}",
                         g2));
    delegate_fails(f->db, ids[1],
                   CHILD(",\"actor\":\"g3\",\"budget\":{\"tokens\":378,"
                         "\"cost_usd\":1}"),
                   CH_NOT_SUBSET, "budget", NULL);
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, ids[3], NULL);
    ok(f->db, CH_OP_SESSION_RESUME, TENANT, sg, NULL);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, sg, "{\"kind\":\"llm\",\"usage\":{\"tokens\":1}}");
    m = mget(f->db, TENANT, ids[0]);
    assert_int_equal(jint(json_object_get(m, "spent"), "tokens"), 131);
    json_decref(m);
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, ids[0], NULL);
    assert_mstate(f->db, TENANT, g2, "revoked");
    assert_mstate(f->db, TENANT, ids[3], "revoked");

    json_decref(before);
    json_decref(after);
    json_decref(tree);
    json_decref(stream);
    json_decref(stream_o);
    json_decref(audit);
    json_decref(audit_r);
}

/* ---- undo inside a group commit --------------------------------------------------- */

/* A tree where narrowing the root fails half way: ids[0] allows "a*" and "z*"; its
 * child ids[1] ("a1*") clips fine, its child ids[2] ("a*" and z1..z1000) cannot be
 * clipped to what clip_trap_body() leaves ("z*" and a1..a1000): that would take 2000
 * resources. */
static void mk_clip_trap(ch_db *db, char (*ids)[CH_ID_MAX])
{
    json_decref(
        mk_root(db, TENANT,
                "{\"max_depth\":1,\"conditions\":{\"k\":0},\"scope\":{\"tools\":[\"git\"],"
                "\"lanes\":[\"repo\"],\"resources\":[\"a*\",\"z*\"],\"classes\":[\"read\"]}}",
                ids[0]));
    json_decref(mk_child(db, TENANT, ids[0], "c1",
                         "{\"scope\":{\"tools\":[\"git\"],\"lanes\":[\"repo\"],"
                         "\"resources\":[\"a1*\"],\"classes\":[\"read\"]}}",
                         ids[1]));
    json_t *res = json_array();
    json_array_append_new(res, json_string("a*"));
    for (int i = 1; i <= 1000; i++)
        json_array_append_new(res, json_sprintf("z%d", i));
    json_t *m = mget(db, TENANT, ids[0]);
    json_t *body =
        json_pack("{s:s, s:s, s:O, s:{s:[s], s:[s], s:o, s:[s]}}", "actor", "c2", "purpose", "p",
                  "expires_at", json_object_get(m, "expires_at"), "scope", "tools", "git", "lanes",
                  "repo", "resources", res, "classes", "read");
    json_decref(m);
    assert_int_equal(run_json(db, CH_OP_MANDATE_DELEGATE, TENANT, ids[0], body, &m, NULL), CH_OK);
    snprintf(ids[2], CH_ID_MAX, "%s", jstr(m, "id"));
    json_decref(m);
    json_decref(body);
}

/* The PATCH body that trips mk_clip_trap()'s tree (the caller releases it). */
static json_t *clip_trap_body(void)
{
    json_t *narrow = json_array();
    json_array_append_new(narrow, json_string("z*"));
    for (int i = 1; i <= 1000; i++)
        json_array_append_new(narrow, json_sprintf("a%d", i));
    return json_pack("{s:{s:o}}", "scope", "resources", narrow);
}

/* A PATCH that fails after it changed the mandate and clipped one descendant (the
 * next descendant's clip would need more than 1024 resources) is undone in memory as
 * in storage. */
static void test_undo_failed_clip(void **state)
{
    fixture *f = *state;
    char ids[3][CH_ID_MAX];
    mk_clip_trap(f->db, ids);

    json_t *before = snapshot(f->db, TENANT, ids, 3);
    int64_t last = ch_stream_last(f->db);
    json_t *body = clip_trap_body();
    expect_fail_json(f->db, CH_OP_MANDATE_PATCH, TENANT, ids[0], body, CH_NOT_SUBSET,
                     "scope.resources", NULL);
    json_decref(body);

    json_t *now = snapshot(f->db, TENANT, ids, 3);
    assert_json_equal(now, before);
    json_decref(now);
    assert_int_equal(ch_stream_last(f->db), last);
    assert_string_equal(chk(f->db, TENANT, ids[1], NULL, "git", "repo", "a1x", "read", NULL), "ok");
    assert_string_equal(chk(f->db, TENANT, ids[0], NULL, "git", "repo", "a5000", "read", NULL),
                        "ok");
    /* The next write works on the undone state. */
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, ids[0], "{\"scope\":{\"resources\":[\"a*\"]}}");
    assert_int_equal(mversion(f->db, TENANT, ids[0]), 2);
    assert_int_equal(mversion(f->db, TENANT, ids[1]), 1);
    assert_int_equal(mversion(f->db, TENANT, ids[2]), 2);
    assert_scope(f->db, ids[2],
                 "{\"tools\":[\"git\"],\"lanes\":[\"repo\"],\"resources\":[\"a*\"],"
                 "\"classes\":[\"read\"]}");
    assert_memory_is_disk(f, TENANT, ids, 3);
    json_decref(before);
}

/* One group commit: requests that fail after others in the same batch changed the
 * same mandate (or delegated from it) leave exactly the others' work. */
static void test_undo_in_batch(void **state)
{
    fixture *f = *state;
    char z[CH_ID_MAX], zs[CH_ID_MAX], ids[8][CH_ID_MAX], ss[CH_ID_MAX], body[512];
    mk_scratch(f->db, z, zs);
    mk_clip_trap(f->db, ids + 5);
    json_t *trap_json = clip_trap_body();
    char *trap = json_dumps(trap_json, JSON_COMPACT);
    json_decref(trap_json);
    json_t *rm = mk_root(f->db, TENANT, "{\"max_depth\":1,\"conditions\":{\"k\":0}}", ids[0]);
    json_decref(mk_child(f->db, TENANT, ids[0], "s", NULL, ids[1]));
    mk_session(f->db, TENANT, ids[1], ss);
    ok(f->db, CH_OP_SESSION_APPEND, TENANT, ss, "{\"kind\":\"message\"}");
    flush_audit(f->db);
    int64_t before = ch_stream_last(f->db);
    const char *r = ids[0];

    hold h;
    sreq q[14];
    pending *p = &h.p;
    hold_writer(f, &h, zs);
    submit(f->db, p, &q[0], CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":{\"k\":1}}");
    submit(f->db, p, &q[1], CH_OP_MANDATE_PATCH, TENANT, r,
           "{\"scope\":{\"tools\":[\"git\",\"nuke\"]}}");
    submit(f->db, p, &q[2], CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":{\"k\":2}}");
    submit(f->db, p, &q[3], CH_OP_MANDATE_SUSPEND, TENANT, r, NULL);
    submit(f->db, p, &q[4], CH_OP_MANDATE_PATCH, TENANT, r, "{\"conditions\":{}}");
    submit(f->db, p, &q[5], CH_OP_MANDATE_REINSTATE, TENANT, r, NULL);
    snprintf(body, sizeof(body),
             "{\"actor\":\"d1\",\"purpose\":\"p\",\"expires_at\":\"%s\",\"scope\":" SMALL_SCOPE "}",
             jstr(rm, "expires_at"));
    submit(f->db, p, &q[6], CH_OP_MANDATE_DELEGATE, TENANT, r, body);
    snprintf(body, sizeof(body),
             "{\"actor\":\"d2\",\"purpose\":\"p\",\"expires_at\":\"%s\",\"scope\":{\"tools\":"
             "[\"nuke\"]}}",
             jstr(rm, "expires_at"));
    submit(f->db, p, &q[7], CH_OP_MANDATE_DELEGATE, TENANT, r, body);
    snprintf(body, sizeof(body),
             "{\"actor\":\"d3\",\"purpose\":\"p\",\"expires_at\":\"%s\",\"scope\":" SMALL_SCOPE "}",
             jstr(rm, "expires_at"));
    submit(f->db, p, &q[8], CH_OP_MANDATE_DELEGATE, TENANT, r, body);
    submit(f->db, p, &q[9], CH_OP_MANDATE_REVOKE, TENANT, ids[1], NULL);
    submit(f->db, p, &q[10], CH_OP_MANDATE_PATCH, TENANT, ids[1],
           "{\"scope\":{\"tools\":[\"git\"]}}");
    /* A PATCH that fails after it changed its mandate and a child, between two that
     * succeed on the same mandate. */
    submit(f->db, p, &q[11], CH_OP_MANDATE_PATCH, TENANT, ids[5], "{\"conditions\":{\"k\":1}}");
    submit(f->db, p, &q[12], CH_OP_MANDATE_PATCH, TENANT, ids[5], trap);
    submit(f->db, p, &q[13], CH_OP_MANDATE_PATCH, TENANT, ids[5], "{\"conditions\":{\"k\":2}}");
    release_writer(&h, 14);
    free(trap);

    static const ch_status want[14] = {
        CH_OK,         CH_NOT_SUBSET, CH_OK, CH_OK, CH_NOT_SUBSET,         CH_OK,
        CH_OK,         CH_NOT_SUBSET, CH_OK, CH_OK, CH_INVALID_TRANSITION, CH_OK,
        CH_NOT_SUBSET, CH_OK};
    for (int i = 0; i < 14; i++) {
        if (q[i].req.err.status != want[i])
            fail_msg("request %d: %s (%s), want %s", i, ch_status_name(q[i].req.err.status),
                     q[i].req.err.message, ch_status_name(want[i]));
        assert_true((q[i].req.result != NULL) == (want[i] == CH_OK));
    }
    snprintf(ids[2], CH_ID_MAX, "%s", jstr(q[6].req.result, "id"));
    snprintf(ids[3], CH_ID_MAX, "%s", jstr(q[8].req.result, "id"));
    snprintf(ids[4], CH_ID_MAX, "%s", z);
    /* Each answer was the state right after its own request. */
    assert_int_equal(jint(q[0].req.result, "version"), 2);
    assert_int_equal(jint(q[2].req.result, "version"), 3);
    assert_string_equal(jstr(q[3].req.result, "state"), "suspended");
    assert_string_equal(jstr(q[5].req.result, "state"), "active");
    assert_int_equal(jint(q[13].req.result, "version"), 3);
    for (int i = 0; i < 14; i++)
        ch_req_dispose(&q[i].req);

    json_t *m = mget(f->db, TENANT, r);
    assert_int_equal(jint(m, "version"), 3);
    assert_string_equal(jstr(m, "state"), "active");
    assert_json_text(json_object_get(m, "conditions"), "{\"k\":2}");
    assert_json_text(json_object_get(json_object_get(m, "scope"), "tools"), "[\"git\",\"shell\"]");
    assert_mission(m);
    json_decref(m);
    assert_mstate(f->db, TENANT, ids[1], "revoked");
    assert_sstate(f->db, TENANT, ss, "inert");
    json_t *tree = NULL;
    ch_err e;
    assert_int_equal(ch_mandate_tree(f->db, TENANT, r, &tree, &e), CH_OK);
    json_t *desc = json_object_get(tree, "descendants");
    assert_int_equal(json_array_size(desc), 3);
    assert_string_equal(jstr(json_array_get(desc, 0), "id"), ids[1]);
    assert_string_equal(jstr(json_array_get(desc, 1), "id"), ids[2]);
    assert_string_equal(jstr(json_array_get(desc, 2), "id"), ids[3]);
    json_decref(tree);
    assert_reason(f->db, TENANT, ids[2], "ok");
    assert_reason(f->db, TENANT, r, "ok");

    /* The stream holds the successful requests' events only, in commit order. */
    json_t *evs = stream_after(f->db, TENANT, before);
    /* A conditions amendment reaches the live descendants (they hold their parent's
     * conditions), each with its own event. */
    static const char *const types[] = {
        "mandate.amended",   "mandate.amended",    /* q0: r, then s */
        "mandate.amended",   "mandate.amended",    /* q2 */
        "mandate.suspended",                       /* q3 */
        "session.inert",     "mandate.reinstated", /* q5 */
        "mandate.created",                         /* q6 */
        "mandate.created",                         /* q8 */
        "mandate.revoked",                         /* q9 (the session is inert already) */
        "mandate.amended",   "mandate.amended",   "mandate.amended", /* q11: ids[5], 6, 7 */
        "mandate.amended",   "mandate.amended",   "mandate.amended", /* q13 */
    };
    enum { NT = sizeof(types) / sizeof(types[0]) };
    if (json_array_size(evs) != NT) {
        char *t = json_dumps(evs, JSON_COMPACT);
        fail_msg("%zu events, want %d: %.2000s", json_array_size(evs), (int)NT, t);
    }
    for (size_t i = 0; i < NT; i++)
        assert_string_equal(jstr(json_array_get(evs, i), "type"), types[i]);
    assert_string_equal(jstr(json_array_get(evs, 0), "mandate"), r);
    assert_string_equal(jstr(json_array_get(evs, 1), "mandate"), ids[1]);
    assert_string_equal(jstr(json_array_get(evs, 7), "parent"), r);
    json_decref(evs);
    json_decref(rm);

    /* The trapped tree: both conditions amendments, nothing of the failed narrowing. */
    m = mget(f->db, TENANT, ids[5]);
    assert_int_equal(jint(m, "version"), 3);
    assert_json_text(json_object_get(m, "conditions"), "{\"k\":2}");
    assert_json_text(json_object_get(json_object_get(m, "scope"), "resources"), "[\"a*\",\"z*\"]");
    assert_mission(m);
    json_decref(m);
    assert_int_equal(mversion(f->db, TENANT, ids[6]), 3); /* inherited both amendments */
    assert_int_equal(mversion(f->db, TENANT, ids[7]), 3);
    assert_scope(f->db, ids[6],
                 "{\"tools\":[\"git\"],\"lanes\":[\"repo\"],\"resources\":[\"a1*\"],"
                 "\"classes\":[\"read\"]}");

    assert_memory_is_disk(f, TENANT, ids, 8);
    assert_reason(f->db, TENANT, ids[3], "ok");
}

/* Many threads change one mandate at once (suspend, reinstate, narrowing PATCHes,
 * broadening PATCHes that must fail) while others amend its parent: batches mix
 * successes and failures on the same records; memory must still equal disk. */
#define UC_THREADS 4
#define UC_ROUNDS 40

typedef struct uc_thread {
    ch_db *db;
    int n;
    const char *m, *root;
    atomic_int *bad;
} uc_thread;

static void *uc_main(void *arg)
{
    uc_thread *t = arg;
    char body[128];
    for (int i = 0; i < UC_ROUNDS; i++) {
        ch_err e;
        int step = (i + t->n) % 4;
        ch_status st;
        if (step == 0) {
            st = run(t->db, CH_OP_MANDATE_SUSPEND, TENANT, t->m, NULL, NULL, &e);
            if (st != CH_OK && st != CH_INVALID_TRANSITION)
                atomic_fetch_add(t->bad, 1);
        } else if (step == 1) {
            st = run(t->db, CH_OP_MANDATE_REINSTATE, TENANT, t->m, NULL, NULL, &e);
            if (st != CH_OK && st != CH_INVALID_TRANSITION)
                atomic_fetch_add(t->bad, 1);
        } else if (step == 2) {
            /* An amendment of the parent that always changes something, then a
             * narrowing of m (NO_CHANGE once done, never NOT_SUBSET). */
            snprintf(body, sizeof(body), "{\"conditions\":{\"k\":%d}}", t->n * 1000 + i);
            st = run(t->db, CH_OP_MANDATE_PATCH, TENANT, t->root, body, NULL, &e);
            if (st != CH_OK)
                atomic_fetch_add(t->bad, 1);
            st = run(t->db, CH_OP_MANDATE_PATCH, TENANT, t->m,
                     i % 8 == 2 ? "{\"scope\":{\"classes\":[\"read\",\"write\"]}}"
                                : "{\"scope\":{\"lanes\":[\"repo\"]}}",
                     NULL, &e);
            if (st != CH_OK && st != CH_NO_CHANGE)
                atomic_fetch_add(t->bad, 1);
        } else {
            st = run(t->db, CH_OP_MANDATE_PATCH, TENANT, t->m,
                     "{\"scope\":{\"tools\":[\"git\",\"rm-rf\"]}}", NULL, &e);
            if (st != CH_NOT_SUBSET)
                atomic_fetch_add(t->bad, 1);
            st = run(t->db, CH_OP_MANDATE_PATCH, TENANT, t->root, "{\"conditions\":{}}", NULL, &e);
            if (st != CH_NOT_SUBSET)
                atomic_fetch_add(t->bad, 1);
        }
    }
    return NULL;
}

static void test_undo_concurrent(void **state)
{
    fixture *f = *state;
    char ids[3][CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":2,\"conditions\":{\"k\":0}}", ids[0]));
    json_decref(mk_child(f->db, TENANT, ids[0], "m", NULL, ids[1]));
    json_decref(mk_child(f->db, TENANT, ids[1], "g", NULL, ids[2]));
    atomic_int bad;
    atomic_init(&bad, 0);
    uc_thread t[UC_THREADS];
    pthread_t th[UC_THREADS];
    uint64_t commits = metric(f->db, "charter_commit_batch_size_count");
    uint64_t reqs = metric(f->db, "charter_commit_batch_size_sum");
    for (int i = 0; i < UC_THREADS; i++) {
        t[i] = (uc_thread){f->db, i, ids[1], ids[0], &bad};
        assert_int_equal(pthread_create(&th[i], NULL, uc_main, &t[i]), 0);
    }
    for (int i = 0; i < UC_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(atomic_load(&bad), 0);
    /* The writes were grouped. */
    assert_true(metric(f->db, "charter_commit_batch_size_count") - commits <
                metric(f->db, "charter_commit_batch_size_sum") - reqs);

    /* Every conditions PATCH of the root succeeded, each one version. */
    assert_int_equal(mversion(f->db, TENANT, ids[0]), 1 + UC_THREADS * UC_ROUNDS / 4);
    assert_scope(f->db, ids[1],
                 "{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\"],"
                 "\"resources\":[\"doc:readme\",\"repo:web/*\"],"
                 "\"classes\":[\"read\",\"write\"]}");
    assert_scope(f->db, ids[2],
                 "{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\"],"
                 "\"resources\":[\"doc:readme\",\"repo:web/*\"],"
                 "\"classes\":[\"read\",\"write\"]}");
    assert_int_equal(mversion(f->db, TENANT, ids[2]), mversion(f->db, TENANT, ids[1]));
    assert_memory_is_disk(f, TENANT, ids, 3);
}

/* ---- the audit trail ------------------------------------------------------------- */

/* Every record of tenant (and mandate's subtree when not NULL), paged by limit; checks
 * that the pages chain (next_after) and that ids increase. The caller releases it. */
static json_t *audit_walk(ch_db *db, const char *tenant, const char *mandate, int limit)
{
    json_t *all = json_array();
    int64_t after = 0, last = 0;
    for (;;) {
        json_t *page = NULL;
        ch_err e;
        if (ch_audit_list(db, tenant, mandate, after, limit, &page, &e) != CH_OK)
            fail_msg("ch_audit_list: %s", e.message);
        json_t *recs = json_object_get(page, "records"),
               *next = json_object_get(page, "next_after");
        assert_true(json_array_size(recs) <= (size_t)limit);
        size_t i;
        json_t *r;
        json_array_foreach(recs, i, r)
        {
            assert_true(jint(r, "id") > last);
            last = jint(r, "id");
        }
        json_array_extend(all, recs);
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        assert_int_equal(json_array_size(recs), limit);
        assert_int_equal(json_integer_value(next), last);
        after = json_integer_value(next);
        json_decref(page);
    }
    return all;
}

/* lineage of record r is exactly the ids given (NULL-terminated). */
static void assert_lineage(const json_t *r, const char *const *ids)
{
    json_t *l = json_object_get(r, "lineage");
    size_t n = 0;
    while (ids[n] != NULL)
        n++;
    assert_true(json_is_array(l));
    assert_int_equal(json_array_size(l), n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(json_string_value(json_array_get(l, i)), ids[i]);
}

static void test_audit(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX], g[CH_ID_MAX], r2[CH_ID_MAX], k2[CH_ID_MAX], x[CH_ID_MAX],
        ghost[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":2}", r));
    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    json_decref(mk_child(f->db, TENANT, c, "g", NULL, g));
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":1}", r2));
    json_decref(mk_child(f->db, TENANT, r2, "k2", NULL, k2));
    json_decref(mk_root(f->db, OTHER, NULL, x));
    ch_id_new("mdt", ghost);

    ch_decision dc, dg;
    ch_action a = {"git", "repo", "repo:web/a", "write"};
    ch_check(f->db, TENANT, c, "c", "sess_01", &a, &dc);
    assert_true(dc.allow);
    assert_reason(f->db, TENANT, r, "ok");
    chk(f->db, TENANT, g, NULL, "deploy", "repo", "x", "read", &dg);
    assert_reason(f->db, TENANT, r2, "ok");
    assert_reason(f->db, TENANT, k2, "ok");
    assert_reason(f->db, OTHER, x, "ok");
    assert_reason(f->db, TENANT, ghost, "mandate_unknown");
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, c, "{\"reason\":\"look\"}");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, c, NULL);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}");
    flush_audit(f->db);

    /* The root's subtree: its own records and its descendants', nothing else. */
    json_t *sub = audit_walk(f->db, TENANT, r, 1000);
    const char *const lr[] = {r, NULL}, *const lc[] = {r, c, NULL}, *const lg[] = {r, c, g, NULL};
    int checks = 0, created = 0, suspended = 0, reinstated = 0, narrowed = 0;
    size_t i;
    json_t *rec;
    json_array_foreach(sub, i, rec)
    {
        const char *mm = jstr(rec, "mandate"), *kind = jstr(rec, "kind");
        ms_of(jstr(rec, "at"));
        assert_lineage(rec, strcmp(mm, r) == 0 ? lr : strcmp(mm, c) == 0 ? lc : lg);
        if (strcmp(mm, r) != 0 && strcmp(mm, c) != 0 && strcmp(mm, g) != 0)
            fail_msg("record of %s in %s's subtree", mm, r);
        checks += strcmp(kind, "check") == 0;
        created += strcmp(kind, "mandate.created") == 0;
        suspended += strcmp(kind, "mandate.suspended") == 0;
        reinstated += strcmp(kind, "mandate.reinstated") == 0;
        narrowed += strcmp(kind, "mandate.narrowed") == 0;
        if (strcmp(kind, "check") == 0 && strcmp(mm, c) == 0) {
            assert_string_equal(jstr(rec, "decision_id"), dc.decision_id);
            assert_string_equal(jstr(rec, "actor"), "c");
            assert_string_equal(jstr(rec, "session"), "sess_01");
            assert_json_text(json_object_get(rec, "action"),
                             "{\"tool\":\"git\",\"lane\":\"repo\",\"resource\":\"repo:web/a\","
                             "\"class\":\"write\"}");
            assert_true(json_is_true(json_object_get(rec, "allow")));
            assert_string_equal(jstr(rec, "reason"), "ok");
            assert_int_equal(jint(rec, "mandate_version"), 1);
            assert_int_equal(ms_of(jstr(rec, "at")), dc.checked_at);
        }
        if (strcmp(kind, "check") == 0 && strcmp(mm, g) == 0) {
            assert_string_equal(jstr(rec, "decision_id"), dg.decision_id);
            assert_true(json_is_false(json_object_get(rec, "allow")));
            assert_string_equal(jstr(rec, "reason"), "tool_out_of_scope");
            assert_true(json_is_null(json_object_get(rec, "actor")));
            assert_true(json_is_null(json_object_get(rec, "session")));
        }
        if (strcmp(kind, "mandate.suspended") == 0) {
            assert_string_equal(mm, c);
            assert_string_equal(jstr(rec, "reason"), "look");
            assert_string_equal(jstr(rec, "state"), "suspended");
            assert_int_equal(jint(rec, "version"), 1);
            assert_string_equal(jstr(rec, "cause"), c);
            assert_true(json_is_null(json_object_get(rec, "allow")));
            assert_true(json_is_null(json_object_get(rec, "decision_id")));
            assert_true(json_is_null(json_object_get(rec, "action")));
            assert_true(json_is_null(json_object_get(rec, "session")));
        }
    }
    assert_int_equal(checks, 3);
    assert_int_equal(created, 3);
    assert_int_equal(suspended, 1);
    assert_int_equal(reinstated, 1);
    assert_int_equal(narrowed, 3);
    assert_int_equal(json_array_size(sub), 11);

    /* Paging gives the same records. */
    json_t *paged = audit_walk(f->db, TENANT, r, 2);
    assert_json_equal(paged, sub);
    json_decref(paged);
    paged = audit_walk(f->db, TENANT, r, 1);
    assert_json_equal(paged, sub);
    json_decref(paged);

    /* A middle mandate: itself and below. */
    json_t *mid = audit_walk(f->db, TENANT, c, 1000);
    json_array_foreach(mid, i, rec)
    {
        const char *mm = jstr(rec, "mandate");
        if (strcmp(mm, c) != 0 && strcmp(mm, g) != 0)
            fail_msg("record of %s in %s's subtree", mm, c);
    }
    assert_int_equal(json_array_size(mid), 8); /* 2 created, 2 checks, 2 changes, 2 narrowed */
    json_decref(mid);

    /* The whole tenant: the sibling tree and the unknown mandate too; not another tenant. */
    json_t *all = audit_walk(f->db, TENANT, NULL, 1000);
    int r2n = 0, ghostn = 0;
    json_array_foreach(all, i, rec)
    {
        json_t *mm = json_object_get(rec, "mandate");
        if (json_is_string(mm) && strcmp(json_string_value(mm), x) == 0)
            fail_msg("another tenant's record");
        if (json_is_string(mm) &&
            (strcmp(json_string_value(mm), r2) == 0 || strcmp(json_string_value(mm), k2) == 0))
            r2n++;
        if (json_is_string(mm) && strcmp(json_string_value(mm), ghost) == 0) {
            ghostn++;
            assert_int_equal(json_array_size(json_object_get(rec, "lineage")), 0);
            assert_string_equal(jstr(rec, "reason"), "mandate_unknown");
            assert_true(json_is_null(json_object_get(rec, "mandate_version")));
        }
    }
    assert_int_equal(r2n, 4); /* 2 created, 2 checks */
    assert_int_equal(ghostn, 1);
    assert_int_equal(json_array_size(all), json_array_size(sub) + 5);
    json_decref(all);
    json_t *xs = audit_walk(f->db, OTHER, NULL, 1000);
    assert_int_equal(json_array_size(xs), 2);
    json_decref(xs);
    json_decref(sub);

    /* Validation. */
    json_t *out = NULL;
    ch_err e;
    assert_int_equal(ch_audit_list(f->db, OTHER, r, 0, 10, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_audit_list(f->db, TENANT, ghost, 0, 10, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_audit_list(f->db, TENANT, NULL, 0, 0, &out, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "limit");
    assert_int_equal(ch_audit_list(f->db, TENANT, NULL, 0, 1001, &out, &e), CH_BAD_REQUEST);
    assert_int_equal(ch_audit_list(f->db, TENANT, NULL, -1, 10, &out, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "after");
    assert_null(out);
}

/* A check whose action leaves a field out (NULL: outside every scope, as ch_check
 * allows) is audited like any other, and does not cost the decisions queued around
 * it their records. */
static void test_audit_null_action(void **state)
{
    fixture *f = *state;
    enum { N = 201 };
    char r[CH_ID_MAX];
    json_decref(mk_root(f->db, TENANT, NULL, r));
    flush_audit(f->db);

    ch_decision d1;
    ch_action no_class = {"git", "repo", "repo:web/a", NULL};
    for (int i = 0; i < N; i++) {
        if (i == N / 2) {
            ch_check(f->db, TENANT, r, NULL, NULL, &no_class, &d1);
            assert_string_equal(d1.reason, "class_out_of_scope");
        } else {
            assert_string_equal(
                chk(f->db, TENANT, r, NULL, "git", "repo", "repo:web/a", "read", NULL), "ok");
        }
    }
    ch_status flushed = try_flush_audit(f->db);

    json_t *all = audit_walk(f->db, TENANT, r, 1000);
    int checks = 0;
    bool seen = false;
    size_t i;
    json_t *rec;
    json_array_foreach(all, i, rec)
    {
        if (strcmp(jstr(rec, "kind"), "check") != 0)
            continue;
        checks++;
        if (strcmp(jstr(rec, "decision_id"), d1.decision_id) == 0) {
            seen = true;
            assert_string_equal(jstr(rec, "reason"), "class_out_of_scope");
        }
    }
    json_decref(all);
    if (checks != N || !seen)
        fail_msg("%d checks, %d audited; the one without a class %s", N, checks,
                 seen ? "audited" : "lost");
    assert_int_equal(flushed, CH_OK);
}

/* ---- the event stream ------------------------------------------------------------- */

/* A mandate event's data (reason NULL: null). */
static json_t *mev(const char *m, const char *state, int version, const char *reason,
                   const char *cause)
{
    return json_pack("{s:s, s:s, s:i, s:o, s:s}", "mandate", m, "state", state, "version", version,
                     "reason", reason ? json_string(reason) : json_null(), "cause", cause);
}

/* A revoke or expiry event's data: mev plus the one descendant it reached. */
static json_t *mev_reached(json_t *ev, const char *descendant)
{
    json_object_set_new(ev, "descendants", json_pack("[s]", descendant));
    return ev;
}

/* A session event's data (from and reason NULL: null). */
static json_t *sev(const char *session, const char *state, const char *from, const char *mandate,
                   const char *reason)
{
    return json_pack("{s:s, s:s, s:o, s:s, s:o}", "session", session, "state", state, "from",
                     from ? json_string(from) : json_null(), "mandate", mandate, "reason",
                     reason ? json_string(reason) : json_null());
}

static _Atomic int64_t stream_seen;

static void on_stream(void *arg, int64_t last_id)
{
    (void)arg;
    atomic_store(&stream_seen, last_id);
}

#define NARROWED_SCOPE                                                                     \
    "{\"tools\":[\"git\"],\"lanes\":[\"repo\",\"web\"],\"resources\":[\"doc:readme\","      \
    "\"repo:web/*\"],\"classes\":[\"read\",\"write\",\"external\"]}"

static void test_stream(void **state)
{
    fixture *f = *state;
    char r[CH_ID_MAX], c[CH_ID_MAX], p[CH_ID_MAX], s[CH_ID_MAX], t[32], body[128];
    atomic_store(&stream_seen, 0);
    ch_db_on_stream(f->db, on_stream, NULL);
    assert_int_equal(ch_stream_last(f->db), 0);

    json_t *rm = mk_root(f->db, TENANT, "{\"max_depth\":1}", r);
    int64_t first = ch_stream_last(f->db);
    assert_true(first > 0);
    json_t *evs = stream_after(f->db, TENANT, 0);
    assert_int_equal(json_array_size(evs), 1);
    assert_int_equal(jint(json_array_get(evs, 0), "id"), first);
    json_decref(evs);

    json_decref(mk_child(f->db, TENANT, r, "c", NULL, c));
    mk_session(f->db, TENANT, c, s);
    ok(f->db, CH_OP_MANDATE_SUSPEND, TENANT, r, "{\"reason\":\"pause\"}");
    ok(f->db, CH_OP_MANDATE_REINSTATE, TENANT, r, NULL);
    ok(f->db, CH_OP_SESSION_RESUME, TENANT, s, NULL);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, "{\"scope\":{\"tools\":[\"git\"]}}");
    ch_time_format(ms_of(jstr(rm, "expires_at")) - 60000, t);
    snprintf(body, sizeof(body), "{\"expires_at\":\"%s\"}", t);
    ok(f->db, CH_OP_MANDATE_PATCH, TENANT, r, body);
    ok(f->db, CH_OP_SESSION_PAUSE, TENANT, s, "{\"reason\":\"lunch\"}");
    ok(f->db, CH_OP_MANDATE_REVOKE, TENANT, r, "{\"reason\":\"done\"}");
    ok(f->db, CH_OP_SESSION_CLOSE, TENANT, s, NULL);
    json_decref(mk_root(f->db, TENANT, "{\"state\":\"proposed\"}", p));
    ok(f->db, CH_OP_MANDATE_APPROVE, TENANT, p, NULL);
    ok(f->db, CH_OP_MANDATE_COMPLETE, TENANT, p, NULL);
    json_decref(rm);

    evs = stream_after(f->db, TENANT, 0);
    /* Each event without its id, type and at; NULL: the narrowings, checked below. */
    const struct {
        const char *type;
        json_t *want;
    } seq[] = {
        {"mandate.created", json_pack("{s:s, s:s, s:i, s:n}", "mandate", r, "state", "active",
                                      "version", 1, "parent")},
        {"mandate.created", json_pack("{s:s, s:s, s:i, s:s}", "mandate", c, "state", "active",
                                      "version", 1, "parent", r)},
        {"session.created", sev(s, "open", NULL, c, NULL)},
        {"mandate.suspended", mev(r, "suspended", 1, "pause", r)},
        {"session.inert", sev(s, "inert", "open", c, "mandate_suspended")},
        {"mandate.reinstated", mev(r, "active", 1, NULL, r)}, /* the call's reason */
        {"session.resumed", sev(s, "active", "inert", c, NULL)},
        {"mandate.narrowed", NULL},
        {"mandate.narrowed", NULL},
        /* An amendment carries the whole amended mission. */
        {"mandate.amended", json_pack("{s:s, s:i, s:s, s:s, s:o, s:{}}", "mandate", r, "version",
                                      3, "expires_at", t, "cause", r, "scope",
                                      json_loads(NARROWED_SCOPE, 0, NULL), "conditions")},
        {"mandate.amended", json_pack("{s:s, s:i, s:s, s:s, s:o, s:{}}", "mandate", c, "version",
                                      3, "expires_at", t, "cause", r, "scope",
                                      json_loads(NARROWED_SCOPE, 0, NULL), "conditions")},
        {"session.paused", sev(s, "paused", "active", c, "lunch")},
        {"mandate.revoked", mev_reached(mev(r, "revoked", 3, "done", r), c)},
        {"session.inert", sev(s, "inert", "paused", c, "mandate_revoked")},
        {"session.closed", sev(s, "closed", "inert", c, NULL)},
        {"mandate.created", json_pack("{s:s, s:s, s:i, s:n}", "mandate", p, "state", "proposed",
                                      "version", 1, "parent")},
        {"mandate.approved", mev(p, "active", 1, NULL, p)},
        {"mandate.completed", mev(p, "completed", 1, NULL, p)},
    };
    enum { NSEQ = sizeof(seq) / sizeof(seq[0]) };
    if (json_array_size(evs) != NSEQ) {
        char *text = json_dumps(evs, JSON_COMPACT);
        fail_msg("%zu events, want %d: %.3000s", json_array_size(evs), (int)NSEQ, text);
    }
    int64_t prev = 0;
    for (size_t i = 0; i < NSEQ; i++) {
        json_t *ev = json_deep_copy(json_array_get(evs, i));
        assert_string_equal(jstr(ev, "type"), seq[i].type);
        assert_true(jint(ev, "id") > prev);
        prev = jint(ev, "id");
        ms_of(jstr(ev, "at"));
        json_object_del(ev, "id");
        json_object_del(ev, "type");
        json_object_del(ev, "at");
        if (seq[i].want != NULL) {
            assert_json_equal(ev, seq[i].want);
        } else {
            assert_int_equal(jint(ev, "version"), 2);
            assert_string_equal(jstr(ev, "cause"), r);
            assert_json_text(json_object_get(ev, "scope"),
                             "{\"tools\":[\"git\"],\"lanes\":[\"repo\",\"web\"],"
                             "\"resources\":[\"doc:readme\",\"repo:web/*\"],"
                             "\"classes\":[\"read\",\"write\",\"external\"]}");
        }
        json_decref(ev);
    }
    for (size_t i = 0; i < NSEQ; i++)
        json_decref(seq[i].want);
    assert_string_equal(jstr(json_array_get(evs, 7), "mandate"), r);
    assert_string_equal(jstr(json_array_get(evs, 8), "mandate"), c);
    int64_t last = jint(json_array_get(evs, NSEQ - 1), "id");
    assert_int_equal(ch_stream_last(f->db), last);
    assert_int_equal(atomic_load(&stream_seen), last); /* the listener heard of it */

    /* Paging: after an id, at most limit, last_id says where the page ended. */
    json_t *page = NULL;
    ch_err e;
    int64_t id3 = jint(json_array_get(evs, 3), "id");
    assert_int_equal(ch_stream_list(f->db, TENANT, id3, 2, &page, &e), CH_OK);
    json_t *pe = json_object_get(page, "events");
    assert_int_equal(json_array_size(pe), 2);
    assert_json_equal(json_array_get(pe, 0), json_array_get(evs, 4));
    assert_json_equal(json_array_get(pe, 1), json_array_get(evs, 5));
    assert_int_equal(jint(page, "last_id"), jint(json_array_get(evs, 5), "id"));
    json_decref(page);
    assert_int_equal(ch_stream_list(f->db, TENANT, last, 10, &page, &e), CH_OK);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 0);
    assert_int_equal(jint(page, "last_id"), last);
    json_decref(page);

    /* Tenants have their own streams (sharing one sequence of ids). */
    json_t *o = stream_after(f->db, OTHER, 0);
    assert_int_equal(json_array_size(o), 0);
    json_decref(o);
    char x[CH_ID_MAX];
    json_decref(mk_root(f->db, OTHER, NULL, x));
    o = stream_after(f->db, OTHER, 0);
    assert_int_equal(json_array_size(o), 1);
    assert_true(jint(json_array_get(o, 0), "id") > last);
    assert_string_equal(jstr(json_array_get(o, 0), "mandate"), x);
    json_decref(o);
    json_t *again = stream_after(f->db, TENANT, 0);
    assert_json_equal(again, evs);
    json_decref(again);
    assert_true(ch_stream_last(f->db) > last);
    assert_int_equal(atomic_load(&stream_seen), ch_stream_last(f->db));
    json_decref(evs);

    assert_int_equal(ch_stream_list(f->db, TENANT, 0, 0, &page, &e), CH_BAD_REQUEST);
    assert_int_equal(ch_stream_list(f->db, TENANT, 0, 1001, &page, &e), CH_BAD_REQUEST);
    assert_int_equal(ch_stream_list(f->db, TENANT, -1, 10, &page, &e), CH_BAD_REQUEST);
}

/* ---- bugs that take the process down ---------------------------------------------- */

/* A batch that amends a mandate, spends on it (an append to a bound session) and
 * amends it again: publishing it must free each superseded record once. */
static void test_undo_spend_between_edits(void **state)
{
    fixture *f = *state;
    char z[CH_ID_MAX], zs[CH_ID_MAX], ids[2][CH_ID_MAX], s[CH_ID_MAX];
    mk_scratch(f->db, z, zs);
    json_decref(mk_root(f->db, TENANT, "{\"max_depth\":1,\"conditions\":{\"k\":0}}", ids[0]));
    json_decref(mk_child(f->db, TENANT, ids[0], "c", NULL, ids[1]));
    mk_session(f->db, TENANT, ids[1], s);
    flush_audit(f->db);

    hold h;
    sreq q[3];
    hold_writer(f, &h, zs);
    submit(f->db, &h.p, &q[0], CH_OP_MANDATE_PATCH, TENANT, ids[0], "{\"conditions\":{\"k\":1}}");
    submit(f->db, &h.p, &q[1], CH_OP_SESSION_APPEND, TENANT, s,
           "{\"kind\":\"llm\",\"usage\":{\"tokens\":5}}");
    submit(f->db, &h.p, &q[2], CH_OP_MANDATE_PATCH, TENANT, ids[0], "{\"conditions\":{\"k\":2}}");
    release_writer(&h, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(q[i].req.err.status, CH_OK);
        ch_req_dispose(&q[i].req);
    }
    json_t *m = mget(f->db, TENANT, ids[0]);
    assert_int_equal(jint(m, "version"), 3);
    assert_int_equal(jint(json_object_get(m, "spent"), "tokens"), 5);
    assert_json_text(json_object_get(m, "conditions"), "{\"k\":2}");
    json_decref(m);
    assert_memory_is_disk(f, TENANT, ids, 2);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_create_defaults),
        T(test_create_full),
        T(test_create_validation),
        T(test_create_budget_fields),
        T(test_lifecycle_matrix),
        T(test_lifecycle_reason),
        T(test_delegate_subset_rules),
        T(test_delegate_inactive_parent),
        T(test_delegate_child_fields),
        T(test_cascade_deep),
        T(test_cascade_wide),
        T(test_cascade_suspend_complete),
        T(test_patch_narrow_and_clip),
        T(test_patch_clips_below_final),
        T(test_patch_no_change_and_conditions),
        T(test_patch_expires),
        T(test_check_reasons),
        T(test_check_budget),
        T(test_check_json),
        T(test_artifacts),
        T(test_artifact_ttl),
        T(test_expiry_exact),
        T(test_sessions_follow),
        T(test_restart),
        T(test_undo_failed_clip),
        T(test_undo_in_batch),
        T(test_undo_concurrent),
        T(test_audit),
        T(test_audit_null_action),
        T(test_stream),
        /* Last: on the bugs they were written for, these end the process (signed
         * overflow under UBSan; a double free). */
        T(test_artifact_ttl_negative),
        T(test_undo_spend_between_edits),
    };
#undef T
    /* CMOCKA_TEST_FILTER="test_x*" runs only the matching tests. */
    const char *filter = getenv("CMOCKA_TEST_FILTER");
    if (filter != NULL && filter[0] != '\0')
        cmocka_set_test_filter(filter);
    ch_log_set_level(CH_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
