/*
 * store_conformance.h — the conformance suite every storage backend must pass.
 *
 * It is written once against the vtable in include/charter/store.h and run for each
 * backend by a small test program:
 *
 *     #include "store_conformance.h"
 *     static const char *fresh_dir(void) { ... a data dir no other test uses ... }
 *     int main(void) { return ch_store_conformance_run(&my_methods, fresh_dir); }
 *
 * fresh_dir returns the path of a data dir that no earlier test used and that need
 * not exist yet (the writer's open must create it); the string must stay valid until
 * the next call. Every test gets its own data dir and an open writer connection, so
 * the tests are independent and may run in any order.
 *
 * Header-only (every function is static) so each backend's test program includes it
 * without a library. cmocka's headers come first, as cmocka requires.
 */
#ifndef CHARTER_TESTS_STORE_CONFORMANCE_H
#define CHARTER_TESTS_STORE_CONFORMANCE_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <setjmp.h> /* cmocka.h needs these three first */
#include <stdint.h>
#include <cmocka.h>

#include "charter.h"
#include "charter/store.h"

typedef struct conf_syncer {
    struct ch_conformance *c;
    pthread_t tid;
    atomic_bool stop;
    atomic_int calls;
    atomic_int failed; /* the failing status, CH_OK if none */
} conf_syncer;

/* What each test receives as its state. */
typedef struct ch_conformance {
    const ch_store_methods *m;
    const char *(*fresh_dir)(void);
    char dir[1024];      /* this test's data dir */
    ch_store *w;         /* the writer, opened by setup, closed by teardown */
    ch_store *r[2];      /* readers a test opened (closed by teardown) */
    conf_syncer *syncer; /* a running sync() thread (stopped by teardown) */
} ch_conformance;

/* ---- helpers ------------------------------------------------------------------- */

/* Fails the test unless got == want, naming both statuses. */
#define conf_status(got, want)                                                                     \
    do {                                                                                           \
        ch_status got_ = (got), want_ = (want);                                                    \
        if (got_ != want_)                                                                         \
            fail_msg("%s returned %s (%d), expected %s (%d)", #got, ch_strerror(got_), (int)got_,  \
                     ch_strerror(want_), (int)want_);                                              \
    } while (0)

#define conf_ok(expr) conf_status((expr), CH_OK)

static ch_conformance *conf_ctx(void **state)
{
    return (ch_conformance *)*state;
}

static ch_store *conf_open(ch_conformance *c, bool writer)
{
    ch_store *st = NULL;
    ch_err e;
    ch_err_clear(&e);
    ch_status rc = c->m->open(c->dir, writer, &st, &e);
    if (rc != CH_OK)
        fail_msg("open(%s, writer=%d): %s", c->dir, (int)writer, e.message);
    assert_non_null(st);
    assert_ptr_equal(st->methods, c->m);
    return st;
}

/* Opens reader slot i (0 or 1). */
static ch_store *conf_reader(ch_conformance *c, int i)
{
    assert_null(c->r[i]);
    c->r[i] = conf_open(c, false);
    return c->r[i];
}

/* Closes the writer and opens a new one on the same data dir. */
static void conf_reopen_writer(ch_conformance *c)
{
    c->m->close(c->w);
    c->w = NULL;
    c->w = conf_open(c, true);
}

static void conf_begin(ch_conformance *c)
{
    conf_ok(c->m->begin(c->w));
}

static void conf_commit(ch_conformance *c)
{
    conf_ok(c->m->commit(c->w));
}

/* The id of test session n: same length for every n, so id order is n order. */
static void conf_id(int n, char out[CH_ID_MAX])
{
    snprintf(out, CH_ID_MAX, "sess_%026d", n);
}

/* Fills r (zeroed or cleared) as session n of tenant. */
static void conf_fill(ch_session_rec *r, const char *tenant, int n, const char *user,
                      const char *mandate, ch_session_state state, int64_t updated_at)
{
    conf_id(n, r->id);
    snprintf(r->tenant, sizeof(r->tenant), "%s", tenant);
    snprintf(r->user, sizeof(r->user), "%s", user);
    snprintf(r->agent, sizeof(r->agent), "agent-%d", n);
    snprintf(r->mandate, sizeof(r->mandate), "%s", mandate);
    r->labels = strdup("{\"n\":\"x\"}");
    assert_non_null(r->labels);
    r->state = state;
    r->created_at = 1000 + n;
    r->updated_at = updated_at;
}

/* Inserts session n (in the writer's open transaction) and returns its sid. */
static int64_t conf_insert(ch_conformance *c, const char *tenant, int n, const char *user,
                           const char *mandate, ch_session_state state, int64_t updated_at)
{
    ch_session_rec r = {0};
    conf_fill(&r, tenant, n, user, mandate, state, updated_at);
    conf_ok(c->m->session_insert(c->w, &r));
    int64_t sid = r.sid;
    ch_session_rec_clear(&r);
    return sid;
}

/* The usual case: session n of tenant "t1", open, with events and facts to come. */
static int64_t conf_insert_simple(ch_conformance *c, int n)
{
    return conf_insert(c, "t1", n, "alice", "", CH_SESSION_OPEN, 5000 + n);
}

static void conf_event(ch_conformance *c, int64_t sid, int64_t seq, const char *body)
{
    ch_event_rec ev = {.seq = seq, .at = 100000 + seq, .body = body, .len = strlen(body)};
    conf_ok(c->m->event_insert(c->w, sid, &ev));
}

/* The body event n of a test session carries. */
static const char *conf_body(int64_t sid, int64_t seq, char out[64])
{
    snprintf(out, 64, "{\"kind\":\"message\",\"sid\":%lld,\"seq\":%lld}", (long long)sid,
             (long long)seq);
    return out;
}

/* Inserts events first..last of sid with conf_body bodies. */
static void conf_events(ch_conformance *c, int64_t sid, int64_t first, int64_t last)
{
    char body[64];
    for (int64_t s = first; s <= last; s++)
        conf_event(c, sid, s, conf_body(sid, s, body));
}

/* ---- collectors (callbacks copy what they need: pointers die after the call) ---- */

#define CONF_MAX 64

typedef struct conf_sessions {
    int n;
    int stop_after; /* return non-zero once n reaches it; 0: never */
    int calls;
    char ids[CONF_MAX][CH_ID_MAX];
    ch_session_rec recs[CONF_MAX]; /* full copies (labels/budget duplicated) */
} conf_sessions;

static int conf_session_cb(void *arg, const ch_session_rec *s)
{
    conf_sessions *cs = arg;
    cs->calls++;
    if (cs->n < CONF_MAX) {
        ch_session_rec *r = &cs->recs[cs->n];
        *r = *s;
        r->labels = s->labels ? strdup(s->labels) : NULL;
        r->budget = s->budget ? strdup(s->budget) : NULL;
        snprintf(cs->ids[cs->n], CH_ID_MAX, "%s", s->id);
        cs->n++;
    }
    return cs->stop_after > 0 && cs->n >= cs->stop_after;
}

static void conf_sessions_clear(conf_sessions *cs)
{
    for (int i = 0; i < cs->n && i < CONF_MAX; i++)
        ch_session_rec_clear(&cs->recs[i]);
    memset(cs, 0, sizeof(*cs));
}

/* Checks that cs holds exactly the sessions numbered ns[0..count) in that order. */
static void conf_expect_ids(const conf_sessions *cs, const int *ns, int count)
{
    char id[CH_ID_MAX];
    if (cs->n != count)
        fail_msg("scan returned %d sessions, expected %d", cs->n, count);
    for (int i = 0; i < count; i++) {
        conf_id(ns[i], id);
        assert_string_equal(cs->ids[i], id);
    }
}

/* Lists tenant's sessions through r into cs (cleared first). state -1: any. */
static void conf_list(ch_conformance *c, ch_store *r, conf_sessions *cs, const char *tenant,
                      const char *user, int state, const char *mandate, const char *after_id,
                      int limit)
{
    ch_session_filter f = {
        .user = user, .state = state, .mandate = mandate, .after_id = after_id, .limit = limit};
    conf_sessions_clear(cs);
    conf_ok(c->m->session_list(r, tenant, &f, conf_session_cb, cs));
}

typedef struct conf_events_seen {
    int n;
    int stop_after;
    int64_t seq[CONF_MAX];
    int64_t at[CONF_MAX];
    char *body[CONF_MAX]; /* malloc'd copies, len bytes + NUL */
    size_t len[CONF_MAX];
} conf_events_seen;

static int conf_event_cb(void *arg, const ch_event_rec *ev)
{
    conf_events_seen *es = arg;
    if (es->n < CONF_MAX) {
        es->seq[es->n] = ev->seq;
        es->at[es->n] = ev->at;
        es->len[es->n] = ev->len;
        es->body[es->n] = malloc(ev->len + 1);
        if (es->body[es->n] != NULL) {
            memcpy(es->body[es->n], ev->body, ev->len);
            es->body[es->n][ev->len] = '\0';
        }
        es->n++;
    }
    return es->stop_after > 0 && es->n >= es->stop_after;
}

static void conf_events_clear(conf_events_seen *es)
{
    for (int i = 0; i < es->n && i < CONF_MAX; i++)
        free(es->body[i]);
    memset(es, 0, sizeof(*es));
}

/* Lists events of sid and checks their seqs are exactly seqs[0..count). */
static void conf_expect_events(ch_conformance *c, ch_store *st, int64_t sid, int64_t after,
                               int limit, int64_t archived, const int64_t *seqs, int count)
{
    conf_events_seen es = {0};
    conf_ok(c->m->event_list(st, sid, after, limit, archived, conf_event_cb, &es));
    if (es.n != count) {
        int n = es.n;
        conf_events_clear(&es);
        fail_msg("event_list(after=%lld, limit=%d, archived=%lld) gave %d events, expected %d",
                 (long long)after, limit, (long long)archived, n, count);
    }
    for (int i = 0; i < count; i++) {
        if (es.seq[i] != seqs[i]) {
            int64_t got = es.seq[i];
            conf_events_clear(&es);
            fail_msg("event %d has seq %lld, expected %lld", i, (long long)got, (long long)seqs[i]);
        }
    }
    conf_events_clear(&es);
}

typedef struct conf_facts_seen {
    int n;
    int stop_after;
    char key[CONF_MAX][300];
    char *value[CONF_MAX]; /* malloc'd copies */
    size_t len[CONF_MAX];
    int64_t updated_at[CONF_MAX];
} conf_facts_seen;

static int conf_fact_cb(void *arg, const char *key, const char *value, size_t value_len,
                        int64_t updated_at)
{
    conf_facts_seen *fs = arg;
    if (fs->n < CONF_MAX) {
        snprintf(fs->key[fs->n], sizeof(fs->key[0]), "%s", key);
        fs->value[fs->n] = malloc(value_len + 1);
        if (fs->value[fs->n] != NULL) {
            memcpy(fs->value[fs->n], value, value_len);
            fs->value[fs->n][value_len] = '\0';
        }
        fs->len[fs->n] = value_len;
        fs->updated_at[fs->n] = updated_at;
        fs->n++;
    }
    return fs->stop_after > 0 && fs->n >= fs->stop_after;
}

static void conf_facts_clear(conf_facts_seen *fs)
{
    for (int i = 0; i < fs->n && i < CONF_MAX; i++)
        free(fs->value[i]);
    memset(fs, 0, sizeof(*fs));
}

/* fact_get of sid/key must give exactly value (and updated_at when >= 0). */
static void conf_expect_fact(ch_conformance *c, ch_store *st, int64_t sid, const char *key,
                             const char *value, int64_t updated_at)
{
    conf_facts_seen fs = {0};
    conf_ok(c->m->fact_get(st, sid, key, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 1);
    assert_string_equal(fs.key[0], key);
    assert_int_equal(fs.len[0], strlen(value));
    assert_string_equal(fs.value[0], value);
    if (updated_at >= 0)
        assert_int_equal(fs.updated_at[0], updated_at);
    conf_facts_clear(&fs);
}

static void conf_expect_no_fact(ch_conformance *c, ch_store *st, int64_t sid, const char *key)
{
    conf_facts_seen fs = {0};
    conf_status(c->m->fact_get(st, sid, key, conf_fact_cb, &fs), CH_NOT_FOUND);
    assert_int_equal(fs.n, 0); /* no callback for a missing fact */
    conf_facts_clear(&fs);
}

/* session_get of (tenant, id n) must succeed; the record goes to out (cleared). */
static void conf_get(ch_conformance *c, ch_store *st, const char *tenant, int n,
                     ch_session_rec *out)
{
    char id[CH_ID_MAX];
    conf_id(n, id);
    ch_session_rec_clear(out);
    conf_ok(c->m->session_get(st, tenant, id, out));
}

static void conf_expect_no_session(ch_conformance *c, ch_store *st, const char *tenant, int n)
{
    char id[CH_ID_MAX];
    ch_session_rec r = {0};
    conf_id(n, id);
    conf_status(c->m->session_get(st, tenant, id, &r), CH_NOT_FOUND);
    ch_session_rec_clear(&r);
}

static int64_t conf_key_count(ch_conformance *c, ch_store *st)
{
    int64_t n = -1;
    conf_ok(c->m->key_count(st, &n));
    return n;
}

/* ---- version 2 helpers: mandates, the event stream, the audit trail ---------------- */

/* Writes a mandate row with the doc text doc (its whole length) in the writer's open
 * transaction. */
static void conf_mandate_put(ch_conformance *c, const char *id, const char *tenant, const char *doc,
                             int64_t tokens, double cost_usd, int64_t tool_calls)
{
    ch_mandate_row row = {.id = id,
                          .tenant = tenant,
                          .doc = doc,
                          .doc_len = strlen(doc),
                          .spent_tokens = tokens,
                          .spent_cost_usd = cost_usd,
                          .spent_tool_calls = tool_calls};
    conf_ok(c->m->mandate_put(c->w, &row));
}

typedef struct conf_mandates_seen {
    int n;
    int stop_after;
    char id[CONF_MAX][CH_ID_MAX];
    char tenant[CONF_MAX][CH_TENANT_MAX];
    char *doc[CONF_MAX]; /* malloc'd copies, doc_len bytes + NUL */
    size_t doc_len[CONF_MAX];
    int64_t tokens[CONF_MAX];
    double cost_usd[CONF_MAX];
    int64_t tool_calls[CONF_MAX];
    char state[CONF_MAX][16]; /* "" when the row has none */
    char reason[CONF_MAX][64];
    bool has_reason[CONF_MAX];
    int64_t updated_at[CONF_MAX];
} conf_mandates_seen;

static int conf_mandate_cb(void *arg, const ch_mandate_row *m)
{
    conf_mandates_seen *ms = arg;
    if (ms->n < CONF_MAX) {
        int i = ms->n;
        snprintf(ms->id[i], CH_ID_MAX, "%s", m->id);
        snprintf(ms->tenant[i], CH_TENANT_MAX, "%s", m->tenant);
        ms->doc[i] = malloc(m->doc_len + 1);
        if (ms->doc[i] != NULL) {
            memcpy(ms->doc[i], m->doc, m->doc_len);
            ms->doc[i][m->doc_len] = '\0';
        }
        ms->doc_len[i] = m->doc_len;
        ms->tokens[i] = m->spent_tokens;
        ms->cost_usd[i] = m->spent_cost_usd;
        ms->tool_calls[i] = m->spent_tool_calls;
        snprintf(ms->state[i], sizeof(ms->state[i]), "%s", m->state ? m->state : "");
        snprintf(ms->reason[i], sizeof(ms->reason[i]), "%s", m->reason ? m->reason : "");
        ms->has_reason[i] = m->reason != NULL;
        ms->updated_at[i] = m->state ? m->updated_at : 0;
        ms->n++;
    }
    return ms->stop_after > 0 && ms->n >= ms->stop_after;
}

static void conf_mandates_clear(conf_mandates_seen *ms)
{
    for (int i = 0; i < ms->n && i < CONF_MAX; i++)
        free(ms->doc[i]);
    memset(ms, 0, sizeof(*ms));
}

/* Loads every mandate through st into ms (cleared first). */
static void conf_load(ch_conformance *c, ch_store *st, conf_mandates_seen *ms)
{
    conf_mandates_clear(ms);
    conf_ok(c->m->mandate_load(st, conf_mandate_cb, ms));
}

/* Mandate i of ms is exactly (id, tenant, doc, spending). */
static void conf_expect_mandate(const conf_mandates_seen *ms, int i, const char *id,
                                const char *tenant, const char *doc, int64_t tokens,
                                double cost_usd, int64_t tool_calls)
{
    if (i >= ms->n)
        fail_msg("mandate_load gave %d mandates, expected at least %d", ms->n, i + 1);
    assert_string_equal(ms->id[i], id);
    assert_string_equal(ms->tenant[i], tenant);
    assert_int_equal(ms->doc_len[i], strlen(doc));
    assert_string_equal(ms->doc[i], doc);
    assert_int_equal(ms->tokens[i], tokens);
    if (ms->cost_usd[i] != cost_usd)
        fail_msg("mandate %s spent_cost_usd %.17g, expected %.17g", id, ms->cost_usd[i], cost_usd);
    assert_int_equal(ms->tool_calls[i], tool_calls);
}

typedef struct conf_stream_seen {
    int n;
    int stop_after;
    int64_t id[CONF_MAX];
    int64_t at[CONF_MAX];
    char tenant[CONF_MAX][CH_TENANT_MAX];
    char type[CONF_MAX][64];
    char *data[CONF_MAX]; /* malloc'd copies */
    size_t data_len[CONF_MAX];
} conf_stream_seen;

static int conf_stream_cb(void *arg, const ch_stream_row *r)
{
    conf_stream_seen *ss = arg;
    if (ss->n < CONF_MAX) {
        int i = ss->n;
        ss->id[i] = r->id;
        ss->at[i] = r->at;
        snprintf(ss->tenant[i], CH_TENANT_MAX, "%s", r->tenant);
        snprintf(ss->type[i], sizeof(ss->type[i]), "%s", r->type);
        ss->data[i] = malloc(r->data_len + 1);
        if (ss->data[i] != NULL) {
            memcpy(ss->data[i], r->data, r->data_len);
            ss->data[i][r->data_len] = '\0';
        }
        ss->data_len[i] = r->data_len;
        ss->n++;
    }
    return ss->stop_after > 0 && ss->n >= ss->stop_after;
}

static void conf_stream_clear(conf_stream_seen *ss)
{
    for (int i = 0; i < ss->n && i < CONF_MAX; i++)
        free(ss->data[i]);
    memset(ss, 0, sizeof(*ss));
}

/* Appends one stream entry in the writer's open transaction; returns its id. */
static int64_t conf_stream_append(ch_conformance *c, const char *tenant, const char *type,
                                  int64_t at, const char *data)
{
    int64_t id = -1;
    conf_ok(c->m->stream_append(c->w, tenant, type, at, data, &id));
    assert_true(id > 0);
    return id;
}

/* stream_list of tenant through st must give exactly the entries ids[0..count). */
static void conf_expect_stream(ch_conformance *c, ch_store *st, const char *tenant, int64_t after,
                               int limit, const int64_t *ids, int count)
{
    conf_stream_seen ss = {0};
    conf_ok(c->m->stream_list(st, tenant, after, limit, conf_stream_cb, &ss));
    if (ss.n != count) {
        int n = ss.n;
        conf_stream_clear(&ss);
        fail_msg("stream_list(%s, after=%lld, limit=%d) gave %d entries, expected %d", tenant,
                 (long long)after, limit, n, count);
    }
    for (int i = 0; i < count; i++) {
        if (ss.id[i] != ids[i]) {
            int64_t got = ss.id[i];
            conf_stream_clear(&ss);
            fail_msg("stream entry %d has id %lld, expected %lld", i, (long long)got,
                     (long long)ids[i]);
        }
        assert_string_equal(ss.tenant[i], tenant);
    }
    conf_stream_clear(&ss);
}

static int64_t conf_stream_last(ch_conformance *c, ch_store *st)
{
    int64_t id = -1;
    conf_ok(c->m->stream_last(st, &id));
    return id;
}

typedef struct conf_audit_seen {
    int n;
    int stop_after;
    int64_t id[CONF_MAX];
    int64_t at[CONF_MAX];
    char tenant[CONF_MAX][CH_TENANT_MAX];
    char kind[CONF_MAX][64];
    char mandate[CONF_MAX][CH_ID_MAX];
    char lineage[CONF_MAX][256];
    char *data[CONF_MAX]; /* malloc'd copies */
    size_t data_len[CONF_MAX];
} conf_audit_seen;

static int conf_audit_cb(void *arg, const ch_audit_row *r)
{
    conf_audit_seen *as = arg;
    if (as->n < CONF_MAX) {
        int i = as->n;
        as->id[i] = r->id;
        as->at[i] = r->at;
        snprintf(as->tenant[i], CH_TENANT_MAX, "%s", r->tenant);
        snprintf(as->kind[i], sizeof(as->kind[i]), "%s", r->kind);
        snprintf(as->mandate[i], sizeof(as->mandate[i]), "%s", r->mandate ? r->mandate : "(null)");
        snprintf(as->lineage[i], sizeof(as->lineage[i]), "%s", r->lineage ? r->lineage : "(null)");
        as->data[i] = malloc(r->data_len + 1);
        if (as->data[i] != NULL) {
            memcpy(as->data[i], r->data, r->data_len);
            as->data[i][r->data_len] = '\0';
        }
        as->data_len[i] = r->data_len;
        as->n++;
    }
    return as->stop_after > 0 && as->n >= as->stop_after;
}

static void conf_audit_clear(conf_audit_seen *as)
{
    for (int i = 0; i < as->n && i < CONF_MAX; i++)
        free(as->data[i]);
    memset(as, 0, sizeof(*as));
}

/* Appends audit record n of tenant (data {"n":n}) in the writer's open transaction. */
static void conf_audit_append(ch_conformance *c, const char *tenant, int n, const char *kind,
                              const char *mandate, const char *lineage)
{
    char data[32];
    snprintf(data, sizeof(data), "{\"n\":%d}", n);
    ch_audit_row r = {.tenant = tenant,
                      .at = 1000 + n,
                      .kind = kind,
                      .mandate = mandate,
                      .lineage = lineage,
                      .data = data,
                      .data_len = strlen(data)};
    conf_ok(c->m->audit_append(c->w, &r));
}

/* audit_list through st into as (cleared first). */
static void conf_audit_list(ch_conformance *c, ch_store *st, conf_audit_seen *as,
                            const char *tenant, const char *prefix, int64_t after, int limit)
{
    conf_audit_clear(as);
    conf_ok(c->m->audit_list(st, tenant, prefix, after, limit, conf_audit_cb, as));
}

/* as holds exactly the records numbered ns[0..count) (their data is {"n":N}), in
 * that order, with strictly increasing ids. */
static void conf_expect_audit(const conf_audit_seen *as, const int *ns, int count)
{
    char data[32];
    if (as->n != count)
        fail_msg("audit_list gave %d records, expected %d", as->n, count);
    for (int i = 0; i < count; i++) {
        snprintf(data, sizeof(data), "{\"n\":%d}", ns[i]);
        assert_string_equal(as->data[i], data);
        assert_int_equal(as->data_len[i], strlen(data));
        assert_int_equal(as->at[i], 1000 + ns[i]);
        if (i > 0 && as->id[i] <= as->id[i - 1])
            fail_msg("audit ids out of order: %lld then %lld", (long long)as->id[i - 1],
                     (long long)as->id[i]);
    }
}

/* ---- setup / teardown ------------------------------------------------------------ */

static int conf_setup(void **state)
{
    ch_conformance *c = conf_ctx(state);
    const char *dir = c->fresh_dir();
    if (dir == NULL || strlen(dir) >= sizeof(c->dir))
        return -1;
    snprintf(c->dir, sizeof(c->dir), "%s", dir);
    c->w = NULL;
    c->r[0] = c->r[1] = NULL;
    c->syncer = NULL;
    ch_err e;
    ch_err_clear(&e);
    if (c->m->open(c->dir, true, &c->w, &e) != CH_OK) {
        print_error("open(%s, writer): %s\n", c->dir, e.message);
        return -1;
    }
    return 0;
}

static int conf_teardown(void **state)
{
    ch_conformance *c = conf_ctx(state);
    if (c->syncer != NULL) {
        atomic_store(&c->syncer->stop, true);
        pthread_join(c->syncer->tid, NULL);
        c->syncer = NULL;
    }
    for (int i = 0; i < 2; i++) {
        if (c->r[i] != NULL)
            c->m->close(c->r[i]);
        c->r[i] = NULL;
    }
    if (c->w != NULL)
        c->m->close(c->w);
    c->w = NULL;
    return 0;
}

/* ---- the tests ------------------------------------------------------------------- */

/* Every method of every version the table claims is present. */
static void conf_table_complete(void **state)
{
    const ch_store_methods *m = conf_ctx(state)->m;
    assert_true(m->version >= 1);
    assert_non_null(m->name);
    assert_true(strlen(m->name) > 0);
    /* version 1 */
    assert_non_null(m->open);
    assert_non_null(m->close);
    assert_non_null(m->begin);
    assert_non_null(m->commit);
    assert_non_null(m->sync);
    assert_non_null(m->rollback);
    assert_non_null(m->savepoint);
    assert_non_null(m->release);
    assert_non_null(m->read_begin);
    assert_non_null(m->read_end);
    assert_non_null(m->key_put);
    assert_non_null(m->key_get);
    assert_non_null(m->key_count);
    assert_non_null(m->session_insert);
    assert_non_null(m->session_get);
    assert_non_null(m->session_update);
    assert_non_null(m->session_delete);
    assert_non_null(m->session_list);
    assert_non_null(m->session_due);
    assert_non_null(m->event_insert);
    assert_non_null(m->event_list);
    assert_non_null(m->event_archive);
    assert_non_null(m->fact_put);
    assert_non_null(m->fact_get);
    assert_non_null(m->fact_delete);
    assert_non_null(m->fact_list);
    if (m->version < 2)
        return;
    /* version 2 */
    assert_non_null(m->session_by_mandate);
    assert_non_null(m->mandate_put);
    assert_non_null(m->mandate_spend);
    assert_non_null(m->mandate_set_state);
    assert_non_null(m->mandate_load);
    assert_non_null(m->stream_append);
    assert_non_null(m->stream_list);
    assert_non_null(m->stream_last);
    assert_non_null(m->stream_trim);
    assert_non_null(m->audit_append);
    assert_non_null(m->audit_list);
}

/* The writer's open created the data dir and the schema: a reader opened after it
 * can run every read on the empty store. */
static void conf_open_creates_schema(void **state)
{
    ch_conformance *c = conf_ctx(state);
    struct stat sb;
    assert_int_equal(stat(c->dir, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));

    ch_store *r = conf_reader(c, 0);
    uint8_t hash[32] = {1};
    char tenant[CH_TENANT_MAX] = "";
    conf_sessions cs = {0};
    ch_session_filter f = {.state = -1, .limit = 100};

    assert_int_equal(conf_key_count(c, r), 0);
    conf_status(c->m->key_get(r, hash, tenant), CH_NOT_FOUND);
    conf_expect_no_session(c, r, "t1", 1);
    conf_ok(c->m->session_list(r, "t1", &f, conf_session_cb, &cs));
    conf_ok(c->m->session_due(r, CH_SESSION_OPEN, INT64_MAX, 100, conf_session_cb, &cs));
    assert_int_equal(cs.calls, 0);
    conf_expect_events(c, r, 1, 0, 100, -1, NULL, 0);
    conf_expect_events(c, r, 1, 0, 100, 0, NULL, 0);
    conf_facts_seen fs = {0};
    conf_ok(c->m->fact_list(r, 1, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 0);
    conf_expect_no_fact(c, r, 1, "k");

    /* Opening a writer on an existing data dir keeps working (schema is idempotent). */
    conf_reopen_writer(c);
    assert_int_equal(conf_key_count(c, c->w), 0);
}

/* commit() then sync() makes the work durable: it survives closing every connection. */
static void conf_commit_durable(void **state)
{
    ch_conformance *c = conf_ctx(state);
    uint8_t hash[32];
    memset(hash, 0xab, sizeof(hash));

    conf_begin(c);
    conf_ok(c->m->key_put(c->w, hash, "t1", 77));
    int64_t sid = conf_insert_simple(c, 1);
    conf_events(c, sid, 1, 3);
    conf_ok(c->m->fact_put(c->w, sid, "k", "\"v\"", 99));
    conf_commit(c);
    conf_ok(c->m->sync(c->w));

    c->m->close(c->w);
    c->w = NULL;
    c->w = conf_open(c, true);
    ch_store *r = conf_reader(c, 0);

    char tenant[CH_TENANT_MAX] = "";
    conf_ok(c->m->key_get(r, hash, tenant));
    assert_string_equal(tenant, "t1");
    ch_session_rec s = {0};
    conf_get(c, r, "t1", 1, &s);
    assert_int_equal(s.sid, sid);
    ch_session_rec_clear(&s);
    int64_t seqs[] = {1, 2, 3};
    conf_expect_events(c, r, sid, 0, 100, -1, seqs, 3);
    conf_expect_fact(c, r, sid, "k", "\"v\"", 99);
}

/* sync() with nothing to make durable succeeds; so does sync() after a rollback. */
static void conf_sync_idle(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_ok(c->m->sync(c->w));
    conf_ok(c->m->sync(c->w));
    conf_begin(c);
    conf_insert_simple(c, 1);
    conf_ok(c->m->rollback(c->w));
    conf_ok(c->m->sync(c->w));
}

static void *conf_syncer_main(void *arg)
{
    conf_syncer *sy = arg;
    while (!atomic_load(&sy->stop)) {
        ch_status st = sy->c->m->sync(sy->c->w);
        if (st != CH_OK) {
            atomic_store(&sy->failed, (int)st);
            break;
        }
        atomic_fetch_add(&sy->calls, 1);
    }
    return NULL;
}

/* sync() runs on another thread while the writer keeps committing on the same
 * connection (libcharter's syncer overlaps the fsync of one batch with the next). */
static void conf_sync_concurrent(void **state)
{
    ch_conformance *c = conf_ctx(state);
    enum { N = 40 };
    static conf_syncer sy;
    conf_sessions cs = {0};

    sy.c = c;
    atomic_init(&sy.stop, false);
    atomic_init(&sy.calls, 0);
    atomic_init(&sy.failed, CH_OK);
    assert_int_equal(pthread_create(&sy.tid, NULL, conf_syncer_main, &sy), 0);
    c->syncer = &sy; /* so teardown stops it if an assertion fails below */
    for (int i = 1; i <= N; i++) {
        conf_begin(c);
        conf_ok(c->m->savepoint(c->w));
        int64_t sid = conf_insert_simple(c, i);
        conf_events(c, sid, 1, 3);
        conf_ok(c->m->release(c->w, true));
        conf_commit(c);
    }
    /* Make sure the syncer really ran (a late thread start could miss the loop). */
    while (atomic_load(&sy.calls) < 2 && atomic_load(&sy.failed) == CH_OK)
        ;
    c->syncer = NULL;
    atomic_store(&sy.stop, true);
    assert_int_equal(pthread_join(sy.tid, NULL), 0);
    conf_status((ch_status)atomic_load(&sy.failed), CH_OK);

    /* A sync() that begins after the last commit makes all of it durable. */
    conf_ok(c->m->sync(c->w));
    conf_reopen_writer(c);
    ch_store *r = conf_reader(c, 0);
    conf_list(c, r, &cs, "t1", NULL, -1, NULL, NULL, 1000);
    assert_int_equal(cs.n, N);
    for (int i = 0; i < N; i++)
        conf_expect_events(c, r, cs.recs[i].sid, 0, 100, -1, (int64_t[]){1, 2, 3}, 3);
    conf_sessions_clear(&cs);
}

/* rollback() discards the whole transaction, and the writer can begin again. */
static void conf_rollback_discards(void **state)
{
    ch_conformance *c = conf_ctx(state);
    uint8_t hash[32] = {7};

    conf_begin(c);
    conf_ok(c->m->key_put(c->w, hash, "t1", 1));
    int64_t sid = conf_insert_simple(c, 1);
    conf_events(c, sid, 1, 2);
    conf_ok(c->m->fact_put(c->w, sid, "k", "1", 1));
    conf_ok(c->m->rollback(c->w));

    ch_store *r = conf_reader(c, 0);
    assert_int_equal(conf_key_count(c, r), 0);
    conf_expect_no_session(c, r, "t1", 1);
    conf_expect_events(c, r, sid, 0, 100, -1, NULL, 0);
    conf_expect_no_fact(c, r, sid, "k");

    conf_begin(c);
    conf_insert_simple(c, 2);
    conf_commit(c);
    ch_session_rec s = {0};
    conf_get(c, r, "t1", 2, &s);
    ch_session_rec_clear(&s);
}

/* release(keep=false) undoes exactly the savepoint's work; what the transaction did
 * before the savepoint, and what later savepoints keep, is committed. This is what
 * lets one failing request of a group commit fail alone. */
static void conf_savepoint_undo(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0};

    conf_begin(c);
    int64_t sid1 = conf_insert_simple(c, 1);
    conf_events(c, sid1, 1, 2);
    conf_ok(c->m->fact_put(c->w, sid1, "k", "\"before\"", 10));

    conf_ok(c->m->savepoint(c->w)); /* a request that fails */
    conf_insert_simple(c, 2);
    conf_events(c, sid1, 3, 4);
    conf_ok(c->m->fact_put(c->w, sid1, "k", "\"during\"", 20));
    conf_ok(c->m->fact_put(c->w, sid1, "k2", "2", 20));
    conf_get(c, c->w, "t1", 1, &s);
    s.seq = 4;
    s.usage_tokens = 123;
    s.state = CH_SESSION_ACTIVE;
    conf_ok(c->m->session_update(c->w, &s));
    conf_ok(c->m->release(c->w, false));

    conf_ok(c->m->savepoint(c->w)); /* a request that succeeds */
    conf_insert_simple(c, 3);
    conf_ok(c->m->release(c->w, true));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_get(c, r, "t1", 1, &s);
    assert_int_equal(s.seq, 0);
    assert_int_equal(s.usage_tokens, 0);
    assert_int_equal(s.state, CH_SESSION_OPEN);
    conf_expect_no_session(c, r, "t1", 2);
    conf_get(c, r, "t1", 3, &s);
    ch_session_rec_clear(&s);
    int64_t seqs[] = {1, 2};
    conf_expect_events(c, r, sid1, 0, 100, -1, seqs, 2);
    conf_expect_fact(c, r, sid1, "k", "\"before\"", 10);
    conf_expect_no_fact(c, r, sid1, "k2");
}

/* release(keep=true) keeps the savepoint's work in the transaction. */
static void conf_savepoint_keep(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0};

    conf_begin(c);
    conf_ok(c->m->savepoint(c->w));
    int64_t sid = conf_insert_simple(c, 1);
    conf_events(c, sid, 1, 1);
    conf_ok(c->m->fact_put(c->w, sid, "k", "true", 5));
    conf_ok(c->m->release(c->w, true));
    conf_ok(c->m->savepoint(c->w));
    conf_events(c, sid, 2, 2);
    conf_ok(c->m->release(c->w, true));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_get(c, r, "t1", 1, &s);
    ch_session_rec_clear(&s);
    int64_t seqs[] = {1, 2};
    conf_expect_events(c, r, sid, 0, 100, -1, seqs, 2);
    conf_expect_fact(c, r, sid, "k", "true", 5);
}

/* release() ends the innermost savepoint. */
static void conf_savepoint_nested(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0};

    conf_begin(c);
    conf_ok(c->m->savepoint(c->w));
    conf_insert_simple(c, 1);
    conf_ok(c->m->savepoint(c->w));
    conf_insert_simple(c, 2);
    conf_ok(c->m->release(c->w, false)); /* undoes 2 only */
    conf_insert_simple(c, 3);
    conf_ok(c->m->release(c->w, true)); /* keeps 1 and 3 */
    conf_ok(c->m->savepoint(c->w));
    conf_insert_simple(c, 4);
    conf_ok(c->m->savepoint(c->w));
    conf_insert_simple(c, 5);
    conf_ok(c->m->release(c->w, true));
    conf_ok(c->m->release(c->w, false)); /* undoes 4 and 5 */
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_get(c, r, "t1", 1, &s);
    conf_get(c, r, "t1", 3, &s);
    ch_session_rec_clear(&s);
    conf_expect_no_session(c, r, "t1", 2);
    conf_expect_no_session(c, r, "t1", 4);
    conf_expect_no_session(c, r, "t1", 5);
}

/* A request whose storage call failed (a unique conflict here) is undone by
 * release(keep=false) and the transaction still commits the rest. */
static void conf_savepoint_after_failure(void **state)
{
    ch_conformance *c = conf_ctx(state);
    char body[64];
    ch_session_rec s = {0};

    conf_begin(c);
    int64_t sid = conf_insert_simple(c, 1);
    conf_events(c, sid, 1, 1);
    conf_ok(c->m->savepoint(c->w));
    conf_events(c, sid, 2, 2);
    ch_event_rec dup = {.seq = 1, .at = 1, .body = "{}", .len = 2};
    conf_status(c->m->event_insert(c->w, sid, &dup), CH_EXISTS);
    conf_ok(c->m->release(c->w, false));
    conf_ok(c->m->savepoint(c->w));
    conf_event(c, sid, 2, conf_body(sid, 2, body));
    conf_ok(c->m->release(c->w, true));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_get(c, r, "t1", 1, &s);
    ch_session_rec_clear(&s);
    int64_t seqs[] = {1, 2};
    conf_expect_events(c, r, sid, 0, 100, -1, seqs, 2);
}

/* Inside its transaction the writer reads its own uncommitted work (every request
 * of a group commit builds on the ones before it). */
static void conf_writer_sees_own_work(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0};

    conf_begin(c);
    int64_t sid = conf_insert_simple(c, 1);
    conf_ok(c->m->savepoint(c->w));
    conf_events(c, sid, 1, 2);
    conf_ok(c->m->fact_put(c->w, sid, "k", "1", 1));
    conf_ok(c->m->release(c->w, true));
    conf_get(c, c->w, "t1", 1, &s);
    assert_int_equal(s.sid, sid);
    ch_session_rec_clear(&s);
    int64_t seqs[] = {1, 2};
    conf_expect_events(c, c->w, sid, 0, 100, -1, seqs, 2);
    conf_expect_fact(c, c->w, sid, "k", "1", 1);
    conf_commit(c);
}

/* A reader never sees uncommitted work, and sees it once committed. A reader opened
 * while the writer is inside a transaction works too (the pool grows at any time). */
static void conf_reader_isolation(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_store *r0 = conf_reader(c, 0);
    ch_session_rec s = {0};
    uint8_t hash[32] = {3};
    char tenant[CH_TENANT_MAX] = "";

    conf_begin(c);
    conf_ok(c->m->key_put(c->w, hash, "t1", 1));
    int64_t sid = conf_insert_simple(c, 1);
    conf_events(c, sid, 1, 2);
    conf_ok(c->m->fact_put(c->w, sid, "k", "1", 1));

    ch_store *r1 = conf_reader(c, 1);
    for (int i = 0; i < 2; i++) {
        ch_store *r = i == 0 ? r0 : r1;
        conf_expect_no_session(c, r, "t1", 1);
        assert_int_equal(conf_key_count(c, r), 0);
        conf_status(c->m->key_get(r, hash, tenant), CH_NOT_FOUND);
        conf_expect_events(c, r, sid, 0, 100, -1, NULL, 0);
        conf_expect_no_fact(c, r, sid, "k");
    }
    conf_commit(c);

    int64_t seqs[] = {1, 2};
    for (int i = 0; i < 2; i++) {
        ch_store *r = i == 0 ? r0 : r1;
        conf_get(c, r, "t1", 1, &s);
        assert_int_equal(conf_key_count(c, r), 1);
        conf_ok(c->m->key_get(r, hash, tenant));
        assert_string_equal(tenant, "t1");
        conf_expect_events(c, r, sid, 0, 100, -1, seqs, 2);
        conf_expect_fact(c, r, sid, "k", "1", 1);
    }
    ch_session_rec_clear(&s);
}

/* read_begin()/read_end() give one snapshot: a commit that lands between two reads
 * inside it is not seen; after read_end() it is. */
static void conf_read_snapshot(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0};
    int64_t one[] = {1}, two[] = {1, 2};

    conf_begin(c);
    int64_t sid = conf_insert_simple(c, 1);
    conf_events(c, sid, 1, 1);
    conf_ok(c->m->fact_put(c->w, sid, "k", "\"old\"", 1));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->read_begin(r));
    conf_get(c, r, "t1", 1, &s);
    assert_int_equal(s.usage_tokens, 0);
    conf_expect_events(c, r, sid, 0, 100, -1, one, 1);

    conf_begin(c);
    ch_session_rec u = {0};
    conf_get(c, c->w, "t1", 1, &u);
    u.usage_tokens = 42;
    u.seq = 2;
    conf_ok(c->m->session_update(c->w, &u));
    ch_session_rec_clear(&u);
    conf_events(c, sid, 2, 2);
    conf_ok(c->m->fact_put(c->w, sid, "k", "\"new\"", 2));
    conf_insert_simple(c, 2);
    conf_commit(c);

    conf_get(c, r, "t1", 1, &s);
    assert_int_equal(s.usage_tokens, 0);
    assert_int_equal(s.seq, 0);
    conf_expect_events(c, r, sid, 0, 100, -1, one, 1);
    conf_expect_fact(c, r, sid, "k", "\"old\"", 1);
    conf_expect_no_session(c, r, "t1", 2);
    c->m->read_end(r);

    conf_get(c, r, "t1", 1, &s);
    assert_int_equal(s.usage_tokens, 42);
    conf_expect_events(c, r, sid, 0, 100, -1, two, 2);
    conf_expect_fact(c, r, sid, "k", "\"new\"", 2);
    conf_get(c, r, "t1", 2, &s);

    /* A new snapshot starts at read_begin. */
    conf_ok(c->m->read_begin(r));
    conf_get(c, r, "t1", 1, &s);
    assert_int_equal(s.usage_tokens, 42);
    c->m->read_end(r);
    ch_session_rec_clear(&s);
}

/* API keys: put/get/count; unknown is CH_NOT_FOUND; a duplicate hash is CH_EXISTS. */
static void conf_keys(void **state)
{
    ch_conformance *c = conf_ctx(state);
    uint8_t h1[32], h2[32], h3[32];
    char tenant[CH_TENANT_MAX] = "";
    char long_tenant[CH_TENANT_MAX];

    memset(h1, 0x11, sizeof(h1));
    memset(h2, 0x22, sizeof(h2));
    memset(h3, 0x11, sizeof(h3));
    h3[31] = 0x12; /* differs from h1 in the last byte only */
    memset(long_tenant, 'z', CH_TENANT_MAX - 1);
    long_tenant[CH_TENANT_MAX - 1] = '\0';

    conf_begin(c);
    conf_ok(c->m->key_put(c->w, h1, "acme", 1));
    conf_ok(c->m->key_put(c->w, h2, "acme", 2)); /* a second key for one tenant */
    conf_ok(c->m->key_put(c->w, h3, long_tenant, 3));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->key_get(r, h1, tenant));
    assert_string_equal(tenant, "acme");
    conf_ok(c->m->key_get(r, h2, tenant));
    assert_string_equal(tenant, "acme");
    conf_ok(c->m->key_get(r, h3, tenant));
    assert_string_equal(tenant, long_tenant);
    assert_int_equal(conf_key_count(c, r), 3);

    uint8_t unknown[32] = {0};
    conf_status(c->m->key_get(r, unknown, tenant), CH_NOT_FOUND);

    conf_begin(c);
    conf_ok(c->m->savepoint(c->w));
    conf_status(c->m->key_put(c->w, h1, "other", 4), CH_EXISTS);
    conf_ok(c->m->release(c->w, false));
    conf_commit(c);
    conf_ok(c->m->key_get(r, h1, tenant));
    assert_string_equal(tenant, "acme");
    assert_int_equal(conf_key_count(c, r), 3);
}

/* Compares every field of two session records. */
static void conf_expect_same(const ch_session_rec *a, const ch_session_rec *b)
{
    assert_int_equal(a->sid, b->sid);
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->tenant, b->tenant);
    assert_string_equal(a->user, b->user);
    assert_string_equal(a->agent, b->agent);
    assert_string_equal(a->mandate, b->mandate);
    assert_non_null(a->labels);
    assert_non_null(b->labels);
    assert_string_equal(a->labels, b->labels);
    if (a->budget == NULL || b->budget == NULL)
        assert_ptr_equal(a->budget, b->budget);
    else
        assert_string_equal(a->budget, b->budget);
    assert_int_equal(a->usage_tokens, b->usage_tokens);
    assert_true(a->usage_cost_usd == b->usage_cost_usd);
    assert_int_equal(a->usage_tool_calls, b->usage_tool_calls);
    assert_int_equal(a->state, b->state);
    assert_int_equal(a->seq, b->seq);
    assert_int_equal(a->summary_seq, b->summary_seq);
    assert_int_equal(a->created_at, b->created_at);
    assert_int_equal(a->updated_at, b->updated_at);
}

/* session_insert sets sid; session_get finds a session by (tenant, id) only. */
static void conf_session_insert_get(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec in = {0}, out = {0}, plain = {0};
    char id[CH_ID_MAX];

    /* Every string at its maximum length, non-ASCII text included. */
    conf_id(1, in.id);
    memset(in.tenant, 't', CH_TENANT_MAX - 1);
    memset(in.user, 'u', CH_NAME_MAX - 1);
    memset(in.agent, 'a', CH_NAME_MAX - 1);
    memcpy(in.agent, "\xc3\xa9l\xc3\xa8ve", 7);
    memset(in.mandate, 'm', CH_NAME_MAX - 1);
    in.labels = strdup("{\"env\":\"prod\",\"team\":\"\xe6\x97\xa5\xe6\x9c\xac\"}");
    in.budget = strdup("{\"cost_usd\":12.5,\"tokens\":1000000}");
    assert_non_null(in.labels);
    assert_non_null(in.budget);
    in.usage_tokens = 1000000000000LL;
    in.usage_cost_usd = 0.1;
    in.usage_tool_calls = 3;
    in.state = CH_SESSION_PAUSED;
    in.seq = 9;
    in.summary_seq = 4;
    in.created_at = 1700000000123LL;
    in.updated_at = INT64_MAX;

    /* labels NULL is stored as the empty object; budget NULL stays NULL. */
    conf_fill(&plain, "t2", 2, "bob", "", CH_SESSION_OPEN, 1);
    free(plain.labels);
    plain.labels = NULL;

    conf_begin(c);
    in.sid = -1;
    conf_ok(c->m->session_insert(c->w, &in));
    plain.sid = -1;
    conf_ok(c->m->session_insert(c->w, &plain));
    conf_commit(c);
    assert_true(in.sid != -1);
    assert_true(plain.sid != -1);
    assert_true(in.sid != plain.sid);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->session_get(r, in.tenant, in.id, &out));
    conf_expect_same(&out, &in);

    ch_session_rec_clear(&out);
    conf_get(c, r, "t2", 2, &out);
    assert_int_equal(out.sid, plain.sid);
    assert_non_null(out.labels);
    assert_string_equal(out.labels, "{}");
    assert_null(out.budget);
    assert_string_equal(out.mandate, "");
    assert_int_equal(out.state, CH_SESSION_OPEN);
    ch_session_rec_clear(&out);

    /* The wrong tenant, an unknown id, and a prefix of a real id are not found. */
    conf_status(c->m->session_get(r, "t2", in.id, &out), CH_NOT_FOUND);
    conf_expect_no_session(c, r, in.tenant, 2);
    conf_expect_no_session(c, r, "t2", 3);
    snprintf(id, sizeof(id), "%.10s", in.id);
    conf_status(c->m->session_get(r, in.tenant, id, &out), CH_NOT_FOUND);
    ch_session_rec_clear(&out);
    ch_session_rec_clear(&in);
    ch_session_rec_clear(&plain);
}

/* session_update stores every mutable field; what it reads back is what was written. */
static void conf_session_update(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0}, out = {0};
    static const double costs[] = {0.0, 0.1, 3.141592653589793, 1e-9, 999999999.99};

    conf_begin(c);
    int64_t sid = conf_insert(c, "t1", 1, "alice", "", CH_SESSION_OPEN, 10);
    conf_insert(c, "t1", 2, "bob", "", CH_SESSION_OPEN, 20);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);

    for (int st = 0; st < CH__SESSION_STATE_COUNT; st++) {
        conf_get(c, r, "t1", 1, &s);
        assert_int_equal(s.sid, sid);
        snprintf(s.user, sizeof(s.user), "user-%d", st);
        snprintf(s.agent, sizeof(s.agent), "agent-%d", st);
        if (st % 2)
            snprintf(s.mandate, sizeof(s.mandate), "mdt_%d", st);
        else
            s.mandate[0] = '\0';
        free(s.labels);
        s.labels = strdup(st % 2 ? "{}" : "{\"k\":\"v\",\"z\":\"\xe2\x82\xac\"}");
        free(s.budget);
        s.budget = st % 2 ? NULL : strdup("{\"tokens\":5}");
        s.usage_tokens = 1000LL * st + 1;
        s.usage_cost_usd = costs[st % 5];
        s.usage_tool_calls = st * 7;
        s.state = (ch_session_state)st;
        s.seq = 100 + st;
        s.summary_seq = st;
        s.updated_at = 2000 + st;

        conf_begin(c);
        conf_ok(c->m->session_update(c->w, &s));
        conf_commit(c);

        conf_get(c, r, "t1", 1, &out);
        conf_expect_same(&out, &s);
        assert_string_equal(ch_session_state_name(out.state),
                            ch_session_state_name((ch_session_state)st));
    }
    ch_session_rec_clear(&out);

    /* The other session is untouched. */
    conf_get(c, r, "t1", 2, &out);
    assert_string_equal(out.user, "bob");
    assert_int_equal(out.updated_at, 20);
    ch_session_rec_clear(&out);

    /* Updating a sid that does not exist is CH_NOT_FOUND and writes nothing. */
    conf_begin(c);
    int64_t real = s.sid;
    s.sid = real + 1000000;
    conf_status(c->m->session_update(c->w, &s), CH_NOT_FOUND);
    conf_commit(c);
    s.sid = real;
    ch_session_rec_clear(&s);
}

/* session_list: one tenant's sessions in id order, filtered, with a keyset cursor and
 * a limit. */
static void conf_session_list(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_sessions cs = {0};
    char cursor[CH_ID_MAX];
    ch_session_filter f;
    const int any = -1;

    conf_begin(c);
    /* Inserted out of id order on purpose. */
    conf_insert(c, "t1", 5, "alice", "", CH_SESSION_CLOSED, 50);
    conf_insert(c, "t1", 3, "alice", "m1", CH_SESSION_PAUSED, 30);
    conf_insert(c, "t2", 6, "alice", "m1", CH_SESSION_OPEN, 60);
    conf_insert(c, "t1", 1, "alice", "m1", CH_SESSION_OPEN, 10);
    conf_insert(c, "t1", 4, "bob", "m2", CH_SESSION_ACTIVE, 40);
    conf_insert(c, "t1", 2, "bob", "", CH_SESSION_ACTIVE, 20);
    conf_insert(c, "t2", 7, "alice", "", CH_SESSION_OPEN, 70);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);

    conf_list(c, r, &cs, "t1", NULL, any, NULL, NULL, 100);
    conf_expect_ids(&cs, (int[]){1, 2, 3, 4, 5}, 5);
    /* Records are complete. */
    assert_string_equal(cs.recs[3].user, "bob");
    assert_string_equal(cs.recs[3].mandate, "m2");
    assert_string_equal(cs.recs[3].agent, "agent-4");
    assert_string_equal(cs.recs[3].tenant, "t1");
    assert_int_equal(cs.recs[3].state, CH_SESSION_ACTIVE);
    assert_int_equal(cs.recs[3].updated_at, 40);
    assert_non_null(cs.recs[3].labels);
    assert_string_equal(cs.recs[3].labels, "{\"n\":\"x\"}");

    conf_list(c, r, &cs, "t1", "alice", any, NULL, NULL, 100);
    conf_expect_ids(&cs, (int[]){1, 3, 5}, 3);
    conf_list(c, r, &cs, "t1", NULL, CH_SESSION_ACTIVE, NULL, NULL, 100);
    conf_expect_ids(&cs, (int[]){2, 4}, 2);
    conf_list(c, r, &cs, "t1", NULL, any, "m1", NULL, 100);
    conf_expect_ids(&cs, (int[]){1, 3}, 2);
    conf_list(c, r, &cs, "t1", "bob", CH_SESSION_ACTIVE, NULL, NULL, 100);
    conf_expect_ids(&cs, (int[]){2, 4}, 2);
    conf_list(c, r, &cs, "t1", "alice", CH_SESSION_PAUSED, "m1", NULL, 100);
    conf_expect_ids(&cs, (int[]){3}, 1);
    conf_list(c, r, &cs, "t1", "carol", any, NULL, NULL, 100);
    conf_expect_ids(&cs, NULL, 0);
    conf_list(c, r, &cs, "t1", NULL, CH_SESSION_ARCHIVED, NULL, NULL, 100);
    conf_expect_ids(&cs, NULL, 0);

    /* Keyset cursor: ids strictly greater than after_id. */
    conf_id(2, cursor);
    conf_list(c, r, &cs, "t1", NULL, any, NULL, cursor, 100);
    conf_expect_ids(&cs, (int[]){3, 4, 5}, 3);
    conf_id(5, cursor);
    conf_list(c, r, &cs, "t1", NULL, any, NULL, cursor, 100);
    conf_expect_ids(&cs, NULL, 0);
    conf_id(2, cursor);
    conf_list(c, r, &cs, "t1", "alice", any, NULL, cursor, 100);
    conf_expect_ids(&cs, (int[]){3, 5}, 2);

    /* Paging with a limit. */
    conf_list(c, r, &cs, "t1", NULL, any, NULL, NULL, 2);
    conf_expect_ids(&cs, (int[]){1, 2}, 2);
    snprintf(cursor, sizeof(cursor), "%s", cs.ids[1]);
    conf_list(c, r, &cs, "t1", NULL, any, NULL, cursor, 2);
    conf_expect_ids(&cs, (int[]){3, 4}, 2);
    snprintf(cursor, sizeof(cursor), "%s", cs.ids[1]);
    conf_list(c, r, &cs, "t1", NULL, any, NULL, cursor, 2);
    conf_expect_ids(&cs, (int[]){5}, 1);
    conf_list(c, r, &cs, "t1", NULL, CH_SESSION_ACTIVE, NULL, NULL, 1);
    conf_expect_ids(&cs, (int[]){2}, 1);

    /* Tenants are separate. */
    conf_list(c, r, &cs, "t2", NULL, any, NULL, NULL, 100);
    conf_expect_ids(&cs, (int[]){6, 7}, 2);
    conf_list(c, r, &cs, "t3", NULL, any, NULL, NULL, 100);
    conf_expect_ids(&cs, NULL, 0);

    /* A callback returning non-zero stops the scan; the call still succeeds. */
    conf_sessions_clear(&cs);
    cs.stop_after = 2;
    f = (ch_session_filter){.state = -1, .limit = 100};
    conf_ok(c->m->session_list(r, "t1", &f, conf_session_cb, &cs));
    assert_int_equal(cs.calls, 2);
    conf_expect_ids(&cs, (int[]){1, 2}, 2);
    conf_sessions_clear(&cs);
}

/* session_due: sessions of any tenant in a state, idle since before `before`, oldest
 * first, at most limit. */
static void conf_session_due(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_sessions cs = {0};

    conf_begin(c);
    conf_insert(c, "t1", 1, "u", "", CH_SESSION_CLOSED, 100);
    conf_insert(c, "t2", 2, "u", "", CH_SESSION_CLOSED, 50);
    conf_insert(c, "t1", 3, "u", "", CH_SESSION_CLOSED, 300);
    conf_insert(c, "t1", 4, "u", "", CH_SESSION_ACTIVE, 10);
    conf_insert(c, "t2", 5, "u", "", CH_SESSION_CLOSED, 200);
    conf_insert(c, "t3", 6, "u", "", CH_SESSION_OPEN, 5);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);

    conf_ok(c->m->session_due(r, CH_SESSION_CLOSED, 250, 100, conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2, 1, 5}, 3);
    assert_string_equal(cs.recs[0].tenant, "t2");
    assert_int_equal(cs.recs[0].updated_at, 50);
    assert_int_equal(cs.recs[0].state, CH_SESSION_CLOSED);
    conf_sessions_clear(&cs);

    /* before is exclusive. */
    conf_ok(c->m->session_due(r, CH_SESSION_CLOSED, 100, 100, conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2}, 1);
    conf_sessions_clear(&cs);

    conf_ok(c->m->session_due(r, CH_SESSION_CLOSED, INT64_MAX, 2, conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2, 1}, 2);
    conf_sessions_clear(&cs);

    conf_ok(c->m->session_due(r, CH_SESSION_ACTIVE, 1000, 100, conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){4}, 1);
    conf_sessions_clear(&cs);

    conf_ok(c->m->session_due(r, CH_SESSION_ARCHIVED, INT64_MAX, 100, conf_session_cb, &cs));
    conf_expect_ids(&cs, NULL, 0);

    cs.stop_after = 1;
    conf_ok(c->m->session_due(r, CH_SESSION_CLOSED, INT64_MAX, 100, conf_session_cb, &cs));
    assert_int_equal(cs.calls, 1);
    conf_expect_ids(&cs, (int[]){2}, 1);
    conf_sessions_clear(&cs);

    /* The writer sees the same inside its transaction (the sweeper runs there). */
    conf_begin(c);
    conf_ok(c->m->session_due(c->w, CH_SESSION_CLOSED, 250, 100, conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2, 1, 5}, 3);
    conf_sessions_clear(&cs);
    conf_commit(c);
}

/* event_insert/event_list on the live log: seq order, after, limit, exact bodies. */
static void conf_events_list(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_events_seen es = {0};
    char body[64];

    conf_begin(c);
    int64_t s1 = conf_insert_simple(c, 1);
    int64_t s2 = conf_insert_simple(c, 2);
    conf_events(c, s2, 1, 2);
    /* Inserted out of seq order: listing is still in seq order. */
    conf_events(c, s1, 3, 5);
    conf_events(c, s1, 1, 2);
    /* The body is exactly len bytes, not up to a NUL. */
    static const char sliced[] = "{\"a\":1}TRAILING";
    ch_event_rec ev = {.seq = 6, .at = 0, .body = sliced, .len = 7};
    conf_ok(c->m->event_insert(c->w, s1, &ev));
    /* A large body. */
    size_t big_len = 200000;
    char *big = malloc(big_len + 1);
    assert_non_null(big);
    memset(big, 'x', big_len);
    big[0] = '"';
    big[big_len - 1] = '"';
    big[big_len] = '\0';
    ev = (ch_event_rec){.seq = 7, .at = INT64_MAX, .body = big, .len = big_len};
    conf_ok(c->m->event_insert(c->w, s1, &ev));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->event_list(r, s1, 0, 100, -1, conf_event_cb, &es));
    assert_int_equal(es.n, 7);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(es.seq[i], i + 1);
        assert_int_equal(es.at[i], 100000 + i + 1);
        conf_body(s1, i + 1, body);
        assert_int_equal(es.len[i], strlen(body));
        assert_string_equal(es.body[i], body);
    }
    assert_int_equal(es.seq[5], 6);
    assert_int_equal(es.at[5], 0);
    assert_int_equal(es.len[5], 7);
    assert_string_equal(es.body[5], "{\"a\":1}");
    assert_int_equal(es.seq[6], 7);
    assert_int_equal(es.at[6], INT64_MAX);
    assert_int_equal(es.len[6], big_len);
    assert_memory_equal(es.body[6], big, big_len);
    free(big);
    conf_events_clear(&es);

    conf_expect_events(c, r, s1, 3, 100, -1, (int64_t[]){4, 5, 6, 7}, 4);
    conf_expect_events(c, r, s1, 0, 2, -1, (int64_t[]){1, 2}, 2);
    conf_expect_events(c, r, s1, 2, 2, -1, (int64_t[]){3, 4}, 2);
    conf_expect_events(c, r, s1, 7, 100, -1, NULL, 0);
    conf_expect_events(c, r, s1, 100, 100, -1, NULL, 0);
    conf_expect_events(c, r, s2, 0, 100, -1, (int64_t[]){1, 2}, 2);

    /* Sessions do not mix: s2's bodies are its own. */
    conf_ok(c->m->event_list(r, s2, 0, 100, -1, conf_event_cb, &es));
    assert_int_equal(es.n, 2);
    assert_string_equal(es.body[1], conf_body(s2, 2, body));
    conf_events_clear(&es);

    /* With nothing archived, the archived view is the live log. */
    conf_expect_events(c, r, s2, 0, 100, 0, (int64_t[]){1, 2}, 2);

    /* A callback returning non-zero stops the scan. */
    es.stop_after = 3;
    conf_ok(c->m->event_list(r, s1, 0, 100, -1, conf_event_cb, &es));
    assert_int_equal(es.n, 3);
    conf_events_clear(&es);
}

/* A second event at an existing (sid, seq) is refused with CH_EXISTS and changes
 * nothing. */
static void conf_events_duplicate(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_events_seen es = {0};
    char body[64];

    conf_begin(c);
    int64_t s1 = conf_insert_simple(c, 1);
    int64_t s2 = conf_insert_simple(c, 2);
    conf_events(c, s1, 1, 3);
    conf_commit(c);

    conf_begin(c);
    conf_ok(c->m->savepoint(c->w));
    ch_event_rec ev = {.seq = 2, .at = 1, .body = "{\"dup\":true}", .len = 12};
    conf_status(c->m->event_insert(c->w, s1, &ev), CH_EXISTS);
    conf_ok(c->m->release(c->w, false));
    /* The same seq in another session is fine. */
    conf_ok(c->m->event_insert(c->w, s2, &ev));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->event_list(r, s1, 0, 100, -1, conf_event_cb, &es));
    assert_int_equal(es.n, 3);
    assert_string_equal(es.body[1], conf_body(s1, 2, body));
    conf_events_clear(&es);
    conf_expect_events(c, r, s2, 0, 100, -1, (int64_t[]){2}, 1);
}

/* event_archive and the archived view, through two compactions as the core does
 * them: archive through N (dropping the previous summary), then insert the new
 * summary at seq N. */
static void conf_event_archive(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_events_seen es = {0};
    char body[64];
    int64_t moved = -1;

    conf_begin(c);
    int64_t sid = conf_insert_simple(c, 1);
    int64_t other = conf_insert_simple(c, 2);
    conf_events(c, sid, 1, 6);
    conf_events(c, other, 1, 6);
    conf_commit(c);

    /* Compaction 1: through 3, no previous summary. */
    conf_begin(c);
    conf_ok(c->m->event_archive(c->w, sid, 3, 0, &moved));
    assert_int_equal(moved, 3);
    conf_event(c, sid, 3, "{\"kind\":\"summary\",\"n\":1}");
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_expect_events(c, r, sid, 0, 100, -1, (int64_t[]){3, 4, 5, 6}, 4);
    conf_ok(c->m->event_list(r, sid, 0, 100, -1, conf_event_cb, &es));
    assert_string_equal(es.body[0], "{\"kind\":\"summary\",\"n\":1}");
    conf_events_clear(&es);
    /* Original history: archived 1..3 (the originals, not the summary), then live > 3. */
    conf_ok(c->m->event_list(r, sid, 0, 100, 3, conf_event_cb, &es));
    assert_int_equal(es.n, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(es.seq[i], i + 1);
        assert_int_equal(es.at[i], 100000 + i + 1);
        assert_string_equal(es.body[i], conf_body(sid, i + 1, body));
    }
    conf_events_clear(&es);
    /* The other session is untouched. */
    conf_expect_events(c, r, other, 0, 100, -1, (int64_t[]){1, 2, 3, 4, 5, 6}, 6);

    /* Compaction 2: through 6, dropping the summary at 3. */
    conf_begin(c);
    conf_events(c, sid, 7, 8);
    conf_ok(c->m->event_archive(c->w, sid, 6, 3, &moved));
    assert_int_equal(moved, 3); /* 4, 5, 6; the old summary is dropped, not archived */
    conf_event(c, sid, 6, "{\"kind\":\"summary\",\"n\":2}");
    conf_commit(c);

    conf_expect_events(c, r, sid, 0, 100, -1, (int64_t[]){6, 7, 8}, 3);
    conf_ok(c->m->event_list(r, sid, 0, 100, 6, conf_event_cb, &es));
    assert_int_equal(es.n, 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(es.seq[i], i + 1);
        assert_string_equal(es.body[i], conf_body(sid, i + 1, body));
    }
    conf_events_clear(&es);
    /* after and limit apply to the archived view as a whole. */
    conf_expect_events(c, r, sid, 4, 100, 6, (int64_t[]){5, 6, 7, 8}, 4);
    conf_expect_events(c, r, sid, 0, 3, 6, (int64_t[]){1, 2, 3}, 3);
    conf_expect_events(c, r, sid, 5, 2, 6, (int64_t[]){6, 7}, 2);
    conf_expect_events(c, r, sid, 6, 100, 6, (int64_t[]){7, 8}, 2);
    conf_expect_events(c, r, sid, 8, 100, 6, NULL, 0);
    es.stop_after = 2;
    conf_ok(c->m->event_list(r, sid, 0, 100, 6, conf_event_cb, &es));
    assert_int_equal(es.n, 2);
    conf_events_clear(&es);

    /* Archiving when nothing is at or below through moves nothing. */
    conf_begin(c);
    moved = -1;
    conf_ok(c->m->event_archive(c->w, sid, 2, 0, &moved));
    assert_int_equal(moved, 0);
    conf_commit(c);
    conf_expect_events(c, r, sid, 0, 100, -1, (int64_t[]){6, 7, 8}, 3);
}

/* session_delete removes the session with its events, archive and facts. */
static void conf_session_delete(void **state)
{
    ch_conformance *c = conf_ctx(state);
    int64_t moved;
    ch_session_rec s = {0};

    conf_begin(c);
    int64_t sid = conf_insert_simple(c, 1);
    int64_t keep = conf_insert_simple(c, 2);
    conf_events(c, sid, 1, 4);
    conf_events(c, keep, 1, 4);
    conf_ok(c->m->event_archive(c->w, sid, 2, 0, &moved));
    conf_ok(c->m->event_archive(c->w, keep, 2, 0, &moved));
    conf_ok(c->m->fact_put(c->w, sid, "a", "1", 1));
    conf_ok(c->m->fact_put(c->w, sid, "b", "2", 1));
    conf_ok(c->m->fact_put(c->w, keep, "a", "3", 1));
    conf_commit(c);

    conf_begin(c);
    conf_ok(c->m->session_delete(c->w, sid));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_expect_no_session(c, r, "t1", 1);
    conf_expect_events(c, r, sid, 0, 100, -1, NULL, 0);
    conf_expect_events(c, r, sid, 0, 100, 0, NULL, 0);
    conf_expect_events(c, r, sid, 0, 100, 2, NULL, 0);
    conf_expect_no_fact(c, r, sid, "a");
    conf_facts_seen fs = {0};
    conf_ok(c->m->fact_list(r, sid, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 0);
    conf_sessions cs = {0};
    ch_session_filter f = {.state = -1, .limit = 100};
    conf_ok(c->m->session_list(r, "t1", &f, conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2}, 1);
    conf_sessions_clear(&cs);

    /* The other session keeps everything. */
    conf_get(c, r, "t1", 2, &s);
    ch_session_rec_clear(&s);
    conf_expect_events(c, r, keep, 0, 100, -1, (int64_t[]){3, 4}, 2);
    conf_expect_events(c, r, keep, 0, 100, 2, (int64_t[]){1, 2, 3, 4}, 4);
    conf_expect_fact(c, r, keep, "a", "3", 1);
}

/* ---- long histories: many commits, interleaved sessions ---------------------------
 * A backend may keep recent appends apart from older events and move them later (the
 * SQLite backend folds a tail log into its per-session table). These tests write
 * enough for that to happen several times and check every event at every step. */

typedef struct conf_walk {
    int64_t sid, next, count;
    int64_t first_bad; /* seq of the first wrong event, 0 if none */
} conf_walk;

static int conf_walk_cb(void *arg, const ch_event_rec *ev)
{
    conf_walk *w = arg;
    char body[64];
    conf_body(w->sid, ev->seq, body);
    if (w->first_bad == 0 && (ev->seq != w->next || ev->at != 100000 + ev->seq ||
                              ev->len != strlen(body) || memcmp(ev->body, body, ev->len) != 0))
        w->first_bad = ev->seq > 0 ? ev->seq : -1;
    w->next = ev->seq + 1;
    w->count++;
    return 0;
}

/* Lists sid's events after `after` (live log, or history when archived >= 0) and
 * checks they are exactly after+1..last, each with its conf_body body and time. */
static void conf_expect_run(ch_conformance *c, ch_store *st, int64_t sid, int64_t after,
                            int limit, int64_t archived, int64_t last)
{
    conf_walk w = {.sid = sid, .next = after + 1};
    conf_ok(c->m->event_list(st, sid, after, limit, archived, conf_walk_cb, &w));
    int64_t want = last > after ? last - after : 0;
    if (want > limit)
        want = limit;
    if (w.first_bad != 0 || w.count != want)
        fail_msg("event_list(sid=%lld, after=%lld, limit=%d, archived=%lld): %lld events, "
                 "expected %lld; first wrong seq %lld",
                 (long long)sid, (long long)after, limit, (long long)archived,
                 (long long)w.count, (long long)want, (long long)w.first_bad);
}

#define CONF_BIG 1000000

/* 3 sessions, 60 commits of 20 interleaved events each per session (3,600 events):
 * every read sees the whole history in order, at every step, from a reader opened
 * before the writes and from one opened after; a duplicate of an old seq or of the
 * newest is refused; archive, delete and a reopened writer keep it all straight. */
static void conf_events_long_history(void **state)
{
    ch_conformance *c = conf_ctx(state);
    char body[64];
    int64_t sid[3], last = 0, moved = -1;

    conf_begin(c);
    for (int i = 0; i < 3; i++)
        sid[i] = conf_insert_simple(c, i + 1);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);

    for (int commit = 0; commit < 60; commit++) {
        conf_begin(c);
        for (int k = 0; k < 20; k++) {
            last++;
            for (int i = 0; i < 3; i++)
                conf_event(c, sid[i], last, conf_body(sid[i], last, body));
        }
        conf_commit(c);
        if (commit % 7 == 0 || commit == 59) {
            for (int i = 0; i < 3; i++)
                conf_expect_run(c, r, sid[i], 0, CONF_BIG, -1, last);
            conf_expect_run(c, r, sid[1], last / 2, 10, -1, last);
            conf_expect_run(c, r, sid[2], last - 5, 100, -1, last);
        }
    }
    ch_store *r2 = conf_reader(c, 1);
    for (int i = 0; i < 3; i++)
        conf_expect_run(c, r2, sid[i], 0, CONF_BIG, -1, last);

    /* Duplicates, old and new, are refused and undone alone. */
    conf_begin(c);
    ch_event_rec dup = {.seq = 1, .at = 1, .body = "{}", .len = 2};
    conf_ok(c->m->savepoint(c->w));
    conf_status(c->m->event_insert(c->w, sid[0], &dup), CH_EXISTS);
    conf_ok(c->m->release(c->w, false));
    dup.seq = last;
    conf_ok(c->m->savepoint(c->w));
    conf_status(c->m->event_insert(c->w, sid[1], &dup), CH_EXISTS);
    conf_ok(c->m->release(c->w, false));
    conf_commit(c);

    /* Archive most of session 0, while its newest events are fresh. */
    conf_begin(c);
    conf_events(c, sid[0], last + 1, last + 10);
    conf_ok(c->m->event_archive(c->w, sid[0], 1000, 0, &moved));
    assert_int_equal(moved, 1000);
    conf_commit(c);
    conf_expect_run(c, r, sid[0], 1000, CONF_BIG, -1, last + 10);
    conf_expect_run(c, r, sid[0], 0, CONF_BIG, 1000, last + 10);
    conf_expect_run(c, r, sid[0], 990, 30, 1000, last + 10);

    /* Delete session 1: nothing of it is left anywhere; the others keep theirs. */
    conf_begin(c);
    conf_events(c, sid[1], last + 1, last + 3);
    conf_ok(c->m->session_delete(c->w, sid[1]));
    conf_commit(c);
    conf_expect_events(c, r, sid[1], 0, 100, -1, NULL, 0);
    conf_expect_events(c, r, sid[1], 0, 100, 0, NULL, 0);
    conf_expect_run(c, r, sid[2], 0, CONF_BIG, -1, last);

    /* A new writer (a restart) goes on where the last one stopped. */
    conf_reopen_writer(c);
    conf_begin(c);
    conf_events(c, sid[2], last + 1, last + 1500);
    conf_commit(c);
    conf_begin(c);
    conf_events(c, sid[2], last + 1501, last + 1510);
    conf_commit(c);
    conf_expect_run(c, r, sid[2], 0, CONF_BIG, -1, last + 1510);
    conf_expect_run(c, r2, sid[0], 1000, CONF_BIG, -1, last + 10);
}

/* A transaction rolled back after a long history leaves that history as it was, and
 * the next transaction works: even when the backend reorganized its storage inside
 * the transaction that was undone. */
static void conf_events_rollback_long(void **state)
{
    ch_conformance *c = conf_ctx(state);
    int64_t a, b, moved;

    conf_begin(c);
    a = conf_insert_simple(c, 1);
    b = conf_insert_simple(c, 2);
    conf_commit(c);
    for (int64_t from = 1; from <= 2400; from += 600) {
        conf_begin(c);
        conf_events(c, a, from, from + 599);
        conf_events(c, b, from, from + 599);
        conf_commit(c);
    }
    ch_store *r = conf_reader(c, 0);

    for (int round = 0; round < 3; round++) {
        conf_begin(c);
        conf_events(c, a, 2401, 2405);
        if (round == 1)
            conf_ok(c->m->event_archive(c->w, b, 2000, 0, &moved));
        if (round == 2)
            conf_ok(c->m->session_delete(c->w, b));
        conf_ok(c->m->rollback(c->w));
        conf_expect_run(c, r, a, 0, CONF_BIG, -1, 2400);
        conf_expect_run(c, r, b, 0, CONF_BIG, -1, 2400);
    }
    conf_begin(c);
    conf_events(c, a, 2401, 2405);
    conf_commit(c);
    conf_expect_run(c, r, a, 0, CONF_BIG, -1, 2405);
    conf_expect_run(c, r, b, 0, CONF_BIG, -1, 2400);
}

/* Version 3: session_progress (optional) stores seq, usage and updated_at, and
 * nothing else; a savepoint undoes it; an unknown sid is CH_NOT_FOUND. */
static void conf_v3_session_progress(void **state)
{
    ch_conformance *c = conf_ctx(state);
    ch_session_rec s = {0}, out = {0};
    char other_labels[] = "{\"x\":\"y\"}";

    if (c->m->version < 3 || c->m->session_progress == NULL)
        skip();
    conf_begin(c);
    conf_insert(c, "t1", 1, "alice", "mdt_a", CH_SESSION_ACTIVE, 10);
    conf_insert(c, "t1", 2, "bob", "", CH_SESSION_ACTIVE, 20);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);

    conf_get(c, r, "t1", 1, &s);
    s.seq = 42;
    s.usage_tokens = 1234;
    s.usage_cost_usd = 0.5;
    s.usage_tool_calls = 3;
    s.updated_at = 99;
    /* Fields session_progress must not store: */
    ch_session_rec changed = s;
    snprintf(changed.user, sizeof(changed.user), "mallory");
    snprintf(changed.mandate, sizeof(changed.mandate), "mdt_b");
    changed.state = CH_SESSION_CLOSED;
    changed.summary_seq = 7;
    changed.labels = other_labels;
    changed.budget = NULL;
    conf_begin(c);
    conf_ok(c->m->session_progress(c->w, &changed));
    conf_commit(c);
    conf_get(c, r, "t1", 1, &out);
    conf_expect_same(&out, &s);
    ch_session_rec_clear(&out);

    /* Undone by its savepoint. */
    conf_begin(c);
    conf_ok(c->m->savepoint(c->w));
    s.seq = 50;
    conf_ok(c->m->session_progress(c->w, &s));
    conf_ok(c->m->release(c->w, false));
    conf_commit(c);
    s.seq = 42;
    conf_get(c, r, "t1", 1, &out);
    conf_expect_same(&out, &s);
    ch_session_rec_clear(&out);

    /* The other session is untouched; an unknown sid is CH_NOT_FOUND. */
    conf_get(c, r, "t1", 2, &out);
    assert_int_equal(out.seq, 0);
    assert_int_equal(out.updated_at, 20);
    ch_session_rec_clear(&out);
    conf_begin(c);
    int64_t real = s.sid;
    s.sid = real + 1000000;
    conf_status(c->m->session_progress(c->w, &s), CH_NOT_FOUND);
    conf_commit(c);
    s.sid = real;
    ch_session_rec_clear(&s);
}

/* Appends n events first.. to sid through event_append, with conf_body bodies. */
static ch_status conf_append(ch_conformance *c, int64_t sid, int64_t first, int n)
{
    ch_event_rec *evs = calloc((size_t)n, sizeof(*evs));
    char (*bodies)[64] = calloc((size_t)n, sizeof(*bodies));
    assert_non_null(evs);
    assert_non_null(bodies);
    for (int i = 0; i < n; i++) {
        evs[i].seq = first + i;
        evs[i].at = 100000 + first + i;
        evs[i].body = conf_body(sid, first + i, bodies[i]);
        evs[i].len = strlen(bodies[i]);
    }
    ch_status rc = c->m->event_append(c->w, sid, evs, n);
    free(evs);
    free(bodies);
    return rc;
}

/* Version 3: event_append (optional) stores a run of events like event_insert each
 * would, whatever its size, and refuses (undone by the savepoint) a run that repeats
 * any seq, whether that seq came in a small append, a large one, or long ago. */
static void conf_v3_event_append(void **state)
{
    ch_conformance *c = conf_ctx(state);
    int64_t last = 0;

    if (c->m->version < 3 || c->m->event_append == NULL)
        skip();
    conf_begin(c);
    int64_t a = conf_insert_simple(c, 1);
    int64_t b = conf_insert_simple(c, 2);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);

    /* Small and large runs, interleaved over two sessions, over many commits. */
    static const int sizes[] = {1, 3, 150, 1, 1, 400, 2, 1000, 1, 5};
    for (int round = 0; round < 4; round++) {
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
            conf_begin(c);
            conf_ok(conf_append(c, a, last + 1, sizes[k]));
            conf_ok(conf_append(c, b, last + 1, sizes[k]));
            conf_commit(c);
            last += sizes[k];
        }
        conf_expect_run(c, r, a, 0, CONF_BIG, -1, last);
        conf_expect_run(c, r, b, last - 700, 300, -1, last);
    }

    /* Repeats are refused, whatever the size of either append. */
    const struct {
        int64_t back; /* first seq, counted back from last */
        int n;
    } dups[] = {{0, 1}, {0, 200}, {2, 3}, {1500, 1}, {1500, 300}, {last - 1, 150}, {9, 1000}};
    for (size_t k = 0; k < sizeof(dups) / sizeof(dups[0]); k++) {
        conf_begin(c);
        conf_ok(c->m->savepoint(c->w));
        conf_status(conf_append(c, a, last - dups[k].back, dups[k].n), CH_EXISTS);
        conf_ok(c->m->release(c->w, false));
        conf_commit(c);
    }
    conf_expect_run(c, r, a, 0, CONF_BIG, -1, last);

    /* Archive and delete see both kinds of append. */
    int64_t moved = -1;
    conf_begin(c);
    conf_ok(c->m->event_archive(c->w, a, last - 10, 0, &moved));
    assert_int_equal(moved, last - 10);
    conf_ok(c->m->session_delete(c->w, b));
    conf_commit(c);
    conf_expect_run(c, r, a, last - 10, CONF_BIG, -1, last);
    conf_expect_run(c, r, a, 0, CONF_BIG, last - 10, last);
    conf_expect_events(c, r, b, 0, 100, -1, NULL, 0);
}

/* Facts: upsert, get, delete (CH_NOT_FOUND when missing), list in key order. */
static void conf_facts(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_facts_seen fs = {0};
    char long_key[257];
    memset(long_key, 'k', 256);
    long_key[256] = '\0';
    static const char unicode_key[] = "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87"; /* "ключ" */

    conf_begin(c);
    int64_t s1 = conf_insert_simple(c, 1);
    int64_t s2 = conf_insert_simple(c, 2);
    conf_ok(c->m->fact_put(c->w, s1, "b", "{\"x\":[1,2]}", 10));
    conf_ok(c->m->fact_put(c->w, s1, "a", "\"first\"", 11));
    conf_ok(c->m->fact_put(c->w, s1, "c", "null", 12));
    conf_ok(c->m->fact_put(c->w, s1, long_key, "1", 13));
    conf_ok(c->m->fact_put(c->w, s1, unicode_key, "\"\xe2\x82\xac\"", 14));
    conf_ok(c->m->fact_put(c->w, s2, "a", "\"other\"", 15));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_expect_fact(c, r, s1, "a", "\"first\"", 11);
    conf_expect_fact(c, r, s1, "b", "{\"x\":[1,2]}", 10);
    conf_expect_fact(c, r, s1, "c", "null", 12);
    conf_expect_fact(c, r, s1, long_key, "1", 13);
    conf_expect_fact(c, r, s1, unicode_key, "\"\xe2\x82\xac\"", 14);
    conf_expect_fact(c, r, s2, "a", "\"other\"", 15);
    conf_expect_no_fact(c, r, s1, "d");
    conf_expect_no_fact(c, r, s2, "b");
    conf_expect_no_fact(c, r, s1, "A");

    /* Upsert replaces value and updated_at; other sessions' facts stay. */
    conf_begin(c);
    conf_ok(c->m->fact_put(c->w, s1, "a", "\"second\"", 20));
    conf_commit(c);
    conf_expect_fact(c, r, s1, "a", "\"second\"", 20);
    conf_expect_fact(c, r, s2, "a", "\"other\"", 15);

    /* List: every fact of the session, by key. */
    conf_ok(c->m->fact_list(r, s1, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 5);
    assert_string_equal(fs.key[0], "a");
    assert_string_equal(fs.value[0], "\"second\"");
    assert_int_equal(fs.updated_at[0], 20);
    assert_string_equal(fs.key[1], "b");
    assert_string_equal(fs.key[2], "c");
    assert_string_equal(fs.key[3], long_key);
    assert_string_equal(fs.key[4], unicode_key);
    assert_int_equal(fs.len[4], 5);
    conf_facts_clear(&fs);
    fs.stop_after = 2;
    conf_ok(c->m->fact_list(r, s1, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 2);
    conf_facts_clear(&fs);

    /* Delete: CH_NOT_FOUND when missing (also when the key exists in another session). */
    conf_begin(c);
    conf_ok(c->m->fact_delete(c->w, s1, "b"));
    conf_status(c->m->fact_delete(c->w, s1, "b"), CH_NOT_FOUND);
    conf_status(c->m->fact_delete(c->w, s1, "zz"), CH_NOT_FOUND);
    conf_status(c->m->fact_delete(c->w, s2, "c"), CH_NOT_FOUND);
    conf_commit(c);
    conf_expect_no_fact(c, r, s1, "b");
    conf_expect_fact(c, r, s1, "c", "null", 12);
    conf_ok(c->m->fact_list(r, s1, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 4);
    conf_facts_clear(&fs);
    conf_ok(c->m->fact_list(r, s2, conf_fact_cb, &fs));
    assert_int_equal(fs.n, 1);
    conf_facts_clear(&fs);
}

/* A fact value up to the 64 KiB the core allows round-trips byte for byte. */
static void conf_facts_large(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_facts_seen fs = {0};
    size_t n = 64 * 1024;
    char *v = malloc(n + 1);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (char)('a' + i % 26);
    v[0] = '"';
    v[n - 1] = '"';
    v[n] = '\0';

    conf_begin(c);
    int64_t sid = conf_insert_simple(c, 1);
    conf_ok(c->m->fact_put(c->w, sid, "big", v, 1));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->fact_get(r, sid, "big", conf_fact_cb, &fs));
    assert_int_equal(fs.n, 1);
    assert_int_equal(fs.len[0], n);
    assert_memory_equal(fs.value[0], v, n);
    conf_facts_clear(&fs);
    free(v);
}

/* ---- version 2: mandates, the event stream, the audit trail ----------------------- */

/* A fresh store answers every version-2 read with nothing. */
static void conf_v2_empty(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_mandates_seen ms = {0};
    conf_sessions cs = {0};
    conf_audit_seen as = {0};

    ch_store *r = conf_reader(c, 0);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 0);
    conf_ok(c->m->session_by_mandate(r, "t1", "m1", conf_session_cb, &cs));
    assert_int_equal(cs.calls, 0);
    conf_expect_stream(c, r, "t1", 0, 100, NULL, 0);
    assert_int_equal(conf_stream_last(c, r), 0);
    conf_audit_list(c, r, &as, "t1", NULL, 0, 100);
    assert_int_equal(as.n, 0);
    conf_audit_list(c, r, &as, "t1", "A/", 0, 100);
    assert_int_equal(as.n, 0);
    assert_int_equal(conf_stream_last(c, c->w), 0);
    conf_begin(c);
    conf_status(c->m->mandate_spend(c->w, "mdt_none", 1, 0, 0), CH_NOT_FOUND);
    conf_commit(c);
}

/* session_by_mandate: the sessions of one tenant bound to exactly that mandate, in id
 * order, whatever their state; sessions without a mandate ("") are never matched. */
static void conf_session_by_mandate(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_sessions cs = {0};
    ch_session_rec s = {0};

    conf_begin(c);
    /* Inserted out of id order on purpose. */
    conf_insert(c, "t1", 5, "u", "m1", CH_SESSION_CLOSED, 50);
    conf_insert(c, "t1", 2, "u", "m1", CH_SESSION_ACTIVE, 20);
    conf_insert(c, "t1", 3, "u", "m2", CH_SESSION_OPEN, 30);
    conf_insert(c, "t2", 4, "u", "m1", CH_SESSION_OPEN, 40);
    conf_insert(c, "t1", 1, "u", "", CH_SESSION_OPEN, 10);
    conf_insert(c, "t1", 6, "u", "", CH_SESSION_INERT, 60);
    conf_insert(c, "t1", 7, "u", "m10", CH_SESSION_PAUSED, 70);
    /* The writer sees its own uncommitted sessions (a cascade in the same batch as a
     * session's creation must reach it). */
    conf_ok(c->m->session_by_mandate(c->w, "t1", "m1", conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2, 5}, 2);
    conf_sessions_clear(&cs);
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_ok(c->m->session_by_mandate(r, "t1", "m1", conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){2, 5}, 2);
    /* Complete records. */
    assert_string_equal(cs.recs[0].tenant, "t1");
    assert_string_equal(cs.recs[0].mandate, "m1");
    assert_string_equal(cs.recs[0].agent, "agent-2");
    assert_int_equal(cs.recs[0].state, CH_SESSION_ACTIVE);
    assert_int_equal(cs.recs[0].updated_at, 20);
    assert_string_equal(cs.recs[0].labels, "{\"n\":\"x\"}");
    assert_int_equal(cs.recs[1].state, CH_SESSION_CLOSED);
    assert_true(cs.recs[0].sid != cs.recs[1].sid);
    conf_sessions_clear(&cs);

    const struct {
        const char *tenant, *mandate;
        int ids[2];
        int n;
    } cases[] = {
        {"t1", "m2", {3}, 1},  {"t2", "m1", {4}, 1}, {"t1", "m10", {7}, 1},
        {"t1", "", {0}, 0},  /* "" is "no mandate", never a mandate of its own */
        {"t1", "m", {0}, 0}, /* exact, not a prefix */
        {"t1", "m1 ", {0}, 0}, {"t3", "m1", {0}, 0}, {"t2", "m2", {0}, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        conf_ok(
            c->m->session_by_mandate(r, cases[i].tenant, cases[i].mandate, conf_session_cb, &cs));
        conf_expect_ids(&cs, cases[i].ids, cases[i].n);
        conf_sessions_clear(&cs);
    }

    /* A callback returning non-zero stops the scan. */
    cs.stop_after = 1;
    conf_ok(c->m->session_by_mandate(r, "t1", "m1", conf_session_cb, &cs));
    assert_int_equal(cs.calls, 1);
    conf_sessions_clear(&cs);

    /* session_update moves a session between mandates; the lookup follows it. */
    conf_begin(c);
    conf_get(c, c->w, "t1", 3, &s);
    snprintf(s.mandate, sizeof(s.mandate), "m1");
    conf_ok(c->m->session_update(c->w, &s));
    conf_get(c, c->w, "t1", 2, &s);
    s.mandate[0] = '\0';
    conf_ok(c->m->session_update(c->w, &s));
    conf_commit(c);
    ch_session_rec_clear(&s);
    conf_ok(c->m->session_by_mandate(r, "t1", "m1", conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){3, 5}, 2);
    conf_sessions_clear(&cs);
    conf_ok(c->m->session_by_mandate(r, "t1", "", conf_session_cb, &cs));
    conf_expect_ids(&cs, NULL, 0);
    conf_sessions_clear(&cs);
}

/* mandate_put inserts, then replaces the doc of an existing id and keeps its spending
 * and its place; mandate_spend accumulates; mandate_load gives every tenant's mandates
 * in insertion order with every field. */
static void conf_mandates(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_mandates_seen ms = {0};
    static const char doc_c[] = "{\"doc\":\"c\",\"parent\":null}";
    static const char doc_a[] = "{\"doc\":\"a\",\"parent\":\"mdt_c\"}";
    static const char doc_b[] = "{\"doc\":\"b\",\"t\":\"\xe2\x82\xac\"}";

    conf_begin(c);
    /* Insertion order differs from id order on purpose. */
    conf_mandate_put(c, "mdt_c", "t1", doc_c, 5, 0.5, 1);
    conf_mandate_put(c, "mdt_a", "t1", doc_a, 0, 0, 0);
    conf_mandate_put(c, "mdt_b", "t2", doc_b, 0, 0, 0);
    /* The writer sees its own work. */
    conf_load(c, c->w, &ms);
    assert_int_equal(ms.n, 3);
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 3);
    conf_expect_mandate(&ms, 0, "mdt_c", "t1", doc_c, 5, 0.5, 1);
    conf_expect_mandate(&ms, 1, "mdt_a", "t1", doc_a, 0, 0, 0);
    conf_expect_mandate(&ms, 2, "mdt_b", "t2", doc_b, 0, 0, 0);

    /* Spending accumulates; an unknown id is CH_NOT_FOUND and changes nothing. */
    conf_begin(c);
    conf_ok(c->m->mandate_spend(c->w, "mdt_c", 10, 0.25, 2));
    conf_ok(c->m->mandate_spend(c->w, "mdt_c", 1, 0, 0));
    conf_ok(c->m->mandate_spend(c->w, "mdt_a", 0, 1e-9, 7));
    conf_status(c->m->mandate_spend(c->w, "mdt_x", 1, 1, 1), CH_NOT_FOUND);
    conf_status(c->m->mandate_spend(c->w, "mdt_", 1, 1, 1), CH_NOT_FOUND);
    conf_commit(c);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 3);
    conf_expect_mandate(&ms, 0, "mdt_c", "t1", doc_c, 16, 0.75, 3);
    conf_expect_mandate(&ms, 1, "mdt_a", "t1", doc_a, 0, 1e-9, 7);
    conf_expect_mandate(&ms, 2, "mdt_b", "t2", doc_b, 0, 0, 0);

    /* Replacing: the doc changes, the spending (whatever the row says) and the place in
     * the load order do not. */
    static const char doc_c2[] = "{\"doc\":\"c\",\"version\":2}";
    conf_begin(c);
    conf_mandate_put(c, "mdt_c", "t1", doc_c2, 0, 0, 0);
    conf_mandate_put(c, "mdt_d", "t1", "{}", 0, 0, 0);
    conf_mandate_put(c, "mdt_b", "t2", doc_b, 999, 9.5, 999);
    conf_commit(c);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 4);
    conf_expect_mandate(&ms, 0, "mdt_c", "t1", doc_c2, 16, 0.75, 3);
    conf_expect_mandate(&ms, 1, "mdt_a", "t1", doc_a, 0, 1e-9, 7);
    conf_expect_mandate(&ms, 2, "mdt_b", "t2", doc_b, 0, 0, 0);
    conf_expect_mandate(&ms, 3, "mdt_d", "t1", "{}", 0, 0, 0);

    /* The doc is exactly doc_len bytes, not up to a NUL; a large doc round-trips. */
    static const char sliced[] = "{\"e\":1}TRAILING";
    size_t big_len = 100000;
    char *big = malloc(big_len + 1);
    assert_non_null(big);
    memset(big, 'x', big_len);
    big[0] = '"';
    big[big_len - 1] = '"';
    big[big_len] = '\0';
    conf_begin(c);
    ch_mandate_row row = {.id = "mdt_e", .tenant = "t1", .doc = sliced, .doc_len = 7};
    conf_ok(c->m->mandate_put(c->w, &row));
    row = (ch_mandate_row){.id = "mdt_f",
                           .tenant = "t1",
                           .doc = big,
                           .doc_len = big_len,
                           .spent_tokens = 1,
                           .spent_cost_usd = 2.5,
                           .spent_tool_calls = 3};
    conf_ok(c->m->mandate_put(c->w, &row));
    conf_commit(c);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 6);
    conf_expect_mandate(&ms, 4, "mdt_e", "t1", "{\"e\":1}", 0, 0, 0);
    assert_int_equal(ms.doc_len[5], big_len);
    assert_memory_equal(ms.doc[5], big, big_len);
    assert_int_equal(ms.tokens[5], 1);
    free(big);

    /* A callback returning non-zero stops the scan. */
    conf_mandates_clear(&ms);
    ms.stop_after = 2;
    conf_ok(c->m->mandate_load(r, conf_mandate_cb, &ms));
    assert_int_equal(ms.n, 2);
    conf_mandates_clear(&ms);
}

/* mandate_set_state: a lifecycle change stored beside the doc, given back by
 * mandate_load, cleared by the next mandate_put; undone with its savepoint; an unknown
 * id is CH_NOT_FOUND. */
static void conf_mandate_state(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_mandates_seen ms = {0};

    conf_begin(c);
    conf_mandate_put(c, "mdt_s", "t1", "{\"v\":1}", 0, 0, 0);
    conf_mandate_put(c, "mdt_t", "t1", "{\"v\":1}", 0, 0, 0);
    conf_commit(c);
    ch_store *r = conf_reader(c, 0);
    conf_load(c, r, &ms);
    assert_string_equal(ms.state[0], ""); /* none stored yet: the doc's */

    conf_begin(c);
    conf_ok(c->m->mandate_set_state(c->w, "mdt_s", "suspended", "audit", 1234));
    conf_ok(c->m->mandate_set_state(c->w, "mdt_t", "revoked", NULL, 99));
    conf_status(c->m->mandate_set_state(c->w, "mdt_x", "revoked", NULL, 1), CH_NOT_FOUND);
    conf_commit(c);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 2);
    assert_string_equal(ms.state[0], "suspended");
    assert_true(ms.has_reason[0]);
    assert_string_equal(ms.reason[0], "audit");
    assert_int_equal(ms.updated_at[0], 1234);
    assert_string_equal(ms.doc[0], "{\"v\":1}"); /* the doc is untouched */
    assert_string_equal(ms.state[1], "revoked");
    assert_false(ms.has_reason[1]);
    assert_int_equal(ms.updated_at[1], 99);

    /* Undone with its savepoint. */
    conf_begin(c);
    conf_ok(c->m->savepoint(c->w));
    conf_ok(c->m->mandate_set_state(c->w, "mdt_s", "active", NULL, 5));
    conf_ok(c->m->release(c->w, false));
    conf_commit(c);
    conf_load(c, r, &ms);
    assert_string_equal(ms.state[0], "suspended");

    /* A put (the doc now holds the state) clears it. */
    conf_begin(c);
    conf_mandate_put(c, "mdt_s", "t1", "{\"v\":2}", 0, 0, 0);
    conf_commit(c);
    conf_load(c, r, &ms);
    assert_string_equal(ms.state[0], "");
    assert_string_equal(ms.doc[0], "{\"v\":2}");
    assert_string_equal(ms.state[1], "revoked");
    conf_mandates_clear(&ms);
}

/* The event stream: ids strictly increase in append order across tenants; listing is
 * per tenant, after an id, limited; stream_last is the highest id; trimming deletes by
 * `at` and never lets an id be reused, not even across a reopen. */
static void conf_stream(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_stream_seen ss = {0};

    conf_begin(c);
    int64_t id1 = conf_stream_append(c, "t1", "mandate.created", 100, "{\"n\":1}");
    int64_t id2 = conf_stream_append(c, "t2", "session.created", 100, "{\"n\":2}");
    int64_t id3 =
        conf_stream_append(c, "t1", "mandate.revoked", 200, "{\"n\":3,\"r\":\"\xc3\xa9\"}");
    int64_t id4 = conf_stream_append(c, "t1", "session.inert", 300, "{\"n\":4}");
    assert_true(id1 < id2 && id2 < id3 && id3 < id4);
    /* The writer sees its own entries. */
    assert_int_equal(conf_stream_last(c, c->w), id4);
    conf_expect_stream(c, c->w, "t1", 0, 100, (int64_t[]){id1, id3, id4}, 3);
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    assert_int_equal(conf_stream_last(c, r), id4);
    conf_ok(c->m->stream_list(r, "t1", 0, 100, conf_stream_cb, &ss));
    assert_int_equal(ss.n, 3);
    assert_int_equal(ss.id[0], id1);
    assert_string_equal(ss.type[0], "mandate.created");
    assert_int_equal(ss.at[0], 100);
    assert_string_equal(ss.data[0], "{\"n\":1}");
    assert_int_equal(ss.data_len[0], 7);
    assert_string_equal(ss.type[1], "mandate.revoked");
    assert_int_equal(ss.at[1], 200);
    assert_string_equal(ss.data[1], "{\"n\":3,\"r\":\"\xc3\xa9\"}");
    assert_string_equal(ss.type[2], "session.inert");
    conf_stream_clear(&ss);

    conf_expect_stream(c, r, "t1", id1, 100, (int64_t[]){id3, id4}, 2);
    conf_expect_stream(c, r, "t1", id2, 100, (int64_t[]){id3, id4}, 2);
    conf_expect_stream(c, r, "t1", 0, 2, (int64_t[]){id1, id3}, 2);
    conf_expect_stream(c, r, "t1", id3, 1, (int64_t[]){id4}, 1);
    conf_expect_stream(c, r, "t1", id4, 100, NULL, 0);
    conf_expect_stream(c, r, "t2", 0, 100, (int64_t[]){id2}, 1);
    conf_expect_stream(c, r, "t2", id2, 100, NULL, 0);
    conf_expect_stream(c, r, "t3", 0, 100, NULL, 0);
    ss.stop_after = 1;
    conf_ok(c->m->stream_list(r, "t1", 0, 100, conf_stream_cb, &ss));
    assert_int_equal(ss.n, 1);
    conf_stream_clear(&ss);

    /* Trim deletes entries with at < before (of every tenant); at == before stays. */
    conf_begin(c);
    conf_ok(c->m->stream_trim(c->w, 200));
    conf_commit(c);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){id3, id4}, 2);
    conf_expect_stream(c, r, "t2", 0, 100, NULL, 0);
    assert_int_equal(conf_stream_last(c, r), id4);
    conf_begin(c);
    conf_ok(c->m->stream_trim(c->w, 200)); /* nothing left to trim */
    /* Ids follow append order, not `at`. */
    int64_t id5 = conf_stream_append(c, "t1", "mandate.amended", 50, "{\"n\":5}");
    assert_true(id5 > id4);
    conf_commit(c);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){id3, id4, id5}, 3);

    /* Trimming everything, the newest id included, never lets an id come back. */
    conf_begin(c);
    conf_ok(c->m->stream_trim(c->w, INT64_MAX));
    conf_commit(c);
    conf_expect_stream(c, r, "t1", 0, 100, NULL, 0);
    conf_begin(c);
    int64_t id6 = conf_stream_append(c, "t1", "mandate.created", 400, "{\"n\":6}");
    conf_commit(c);
    assert_true(id6 > id5);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){id6}, 1);
    assert_int_equal(conf_stream_last(c, r), id6);

    conf_begin(c);
    conf_ok(c->m->stream_trim(c->w, INT64_MAX));
    conf_commit(c);
    conf_ok(c->m->sync(c->w));
    c->m->close(c->r[0]);
    c->r[0] = NULL;
    conf_reopen_writer(c);
    conf_begin(c);
    int64_t id7 = conf_stream_append(c, "t1", "mandate.created", 500, "{\"n\":7}");
    conf_commit(c);
    assert_true(id7 > id6);
    r = conf_reader(c, 0);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){id7}, 1);
    assert_int_equal(conf_stream_last(c, r), id7);
}

/* Audit: records of a tenant in id order, all of them or those whose lineage starts
 * with a prefix (a subtree: "A/" holds "A/" and "A/B/", never "AB/" or "A0/"), paged
 * by after and limit. The prefix is bytes: no wildcard ('_', '%'), case matters. */
static void conf_audit(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_audit_seen as = {0};

    conf_begin(c);
    conf_audit_append(c, "t1", 1, "check", "A", "A/");
    conf_audit_append(c, "t1", 2, "mandate.created", "B", "A/B/");
    conf_audit_append(c, "t1", 3, "check", "AB", "AB/");
    conf_audit_append(c, "t1", 4, "check", "A0", "A0/");
    conf_audit_append(c, "t2", 5, "check", "A", "A/");
    conf_audit_append(c, "t1", 6, "check", "", ""); /* a check of an unknown mandate */
    conf_audit_append(c, "t1", 7, "mandate.revoked", "C", "A/B/C/");
    conf_audit_append(c, "t1", 8, "check", "A.", "A./");
    conf_audit_append(c, "t1", 9, "check", "A", "A/");
    conf_audit_append(c, "t1", 10, "check", "mdtX1", "mdtX1/");
    conf_audit_append(c, "t1", 11, "check", "mdt_1", "mdt_1/");
    conf_audit_append(c, "t1", 12, "check", "a", "a/");
    conf_audit_append(c, "t1", 13, "check", "m%", "m%/");
    /* The writer sees its own records. */
    conf_audit_list(c, c->w, &as, "t1", "A/", 0, 100);
    conf_expect_audit(&as, (int[]){1, 2, 7, 9}, 4);
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_audit_list(c, r, &as, "t1", NULL, 0, 100);
    conf_expect_audit(&as, (int[]){1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13}, 12);
    assert_string_equal(as.tenant[1], "t1");
    assert_string_equal(as.kind[1], "mandate.created");
    assert_string_equal(as.mandate[1], "B");
    assert_string_equal(as.lineage[1], "A/B/");
    assert_string_equal(as.mandate[4], "");
    assert_string_equal(as.lineage[4], "");
    assert_string_equal(as.kind[5], "mandate.revoked");
    int64_t ids[9];
    for (int i = 0; i < 8; i++)
        ids[i] = as.id[i];

    const struct {
        const char *tenant, *prefix;
        int ns[4];
        int n;
    } cases[] = {
        {"t1", "A/", {1, 2, 7, 9}, 4}, {"t1", "A/B/", {2, 7}, 2}, {"t1", "A/B/C/", {7}, 1},
        {"t1", "AB/", {3}, 1},         {"t1", "A0/", {4}, 1},     {"t1", "A./", {8}, 1},
        {"t2", "A/", {5}, 1},          {"t2", "A/B/", {0}, 0},    {"t1", "Z/", {0}, 0},
        {"t3", NULL, {0}, 0},          {"t1", "mdt_1/", {11}, 1}, {"t1", "mdtX1/", {10}, 1},
        {"t1", "a/", {12}, 1},         {"t1", "m%/", {13}, 1},    {"t1", "mdt", {10, 11}, 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        conf_audit_list(c, r, &as, cases[i].tenant, cases[i].prefix, 0, 100);
        conf_expect_audit(&as, cases[i].ns, cases[i].n);
    }

    /* Paging: after is an id (exclusive), limit caps the page; with and without a prefix. */
    conf_audit_list(c, r, &as, "t1", "A/", ids[0], 100);
    conf_expect_audit(&as, (int[]){2, 7, 9}, 3);
    conf_audit_list(c, r, &as, "t1", "A/", 0, 1);
    conf_expect_audit(&as, (int[]){1}, 1);
    conf_audit_list(c, r, &as, "t1", "A/", ids[1], 1);
    conf_expect_audit(&as, (int[]){7}, 1);
    conf_audit_list(c, r, &as, "t1", "A/", ids[7], 100);
    conf_expect_audit(&as, NULL, 0);
    conf_audit_list(c, r, &as, "t1", NULL, ids[2], 2);
    conf_expect_audit(&as, (int[]){4, 6}, 2);
    conf_audit_list(c, r, &as, "t1", NULL, ids[7], 100);
    conf_expect_audit(&as, (int[]){10, 11, 12, 13}, 4);

    /* A callback returning non-zero stops the scan. */
    conf_audit_clear(&as);
    as.stop_after = 2;
    conf_ok(c->m->audit_list(r, "t1", NULL, 0, 100, conf_audit_cb, &as));
    assert_int_equal(as.n, 2);
    conf_audit_clear(&as);
}

/* Every version-2 write is undone by release(keep=false) with the rest of its
 * savepoint, and kept by release(keep=true): a failing request of a group commit
 * leaves no mandate, spending, stream entry or audit record behind. */
static void conf_v2_savepoint_undo(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_mandates_seen ms = {0};
    conf_sessions cs = {0};
    conf_audit_seen as = {0};

    conf_begin(c);
    conf_mandate_put(c, "mdt_a", "t1", "{\"v\":1}", 0, 0, 0);
    int64_t first = conf_stream_append(c, "t1", "mandate.created", 1, "{\"n\":0}");
    conf_commit(c);

    conf_begin(c);
    conf_ok(c->m->savepoint(c->w)); /* a request that fails */
    conf_mandate_put(c, "mdt_x", "t1", "{\"v\":1}", 0, 0, 0);
    conf_mandate_put(c, "mdt_a", "t1", "{\"v\":2}", 0, 0, 0);
    conf_ok(c->m->mandate_spend(c->w, "mdt_a", 5, 0.5, 5));
    conf_stream_append(c, "t1", "mandate.narrowed", 2, "{\"n\":1}");
    conf_audit_append(c, "t1", 1, "mandate.narrowed", "mdt_a", "mdt_a/");
    conf_insert(c, "t1", 1, "u", "mdt_a", CH_SESSION_OPEN, 1);
    conf_ok(c->m->release(c->w, false));

    conf_ok(c->m->savepoint(c->w)); /* a request that succeeds */
    conf_ok(c->m->mandate_spend(c->w, "mdt_a", 1, 0.25, 1));
    int64_t kept = conf_stream_append(c, "t1", "mandate.suspended", 3, "{\"n\":2}");
    conf_audit_append(c, "t1", 2, "mandate.suspended", "mdt_a", "mdt_a/");
    conf_ok(c->m->release(c->w, true));

    conf_ok(c->m->savepoint(c->w)); /* nested: the inner one undone, the outer kept */
    conf_ok(c->m->savepoint(c->w));
    conf_stream_append(c, "t1", "mandate.revoked", 4, "{\"n\":3}");
    conf_ok(c->m->mandate_spend(c->w, "mdt_a", 100, 100, 100));
    conf_ok(c->m->release(c->w, false));
    conf_audit_append(c, "t1", 3, "check", "mdt_a", "mdt_a/");
    conf_ok(c->m->release(c->w, true));
    conf_commit(c);

    ch_store *r = conf_reader(c, 0);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 1);
    conf_expect_mandate(&ms, 0, "mdt_a", "t1", "{\"v\":1}", 1, 0.25, 1);
    conf_mandates_clear(&ms);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){first, kept}, 2);
    assert_int_equal(conf_stream_last(c, r), kept);
    conf_audit_list(c, r, &as, "t1", NULL, 0, 100);
    conf_expect_audit(&as, (int[]){2, 3}, 2);
    conf_audit_clear(&as);
    conf_ok(c->m->session_by_mandate(r, "t1", "mdt_a", conf_session_cb, &cs));
    assert_int_equal(cs.calls, 0);

    /* rollback() discards every version-2 write of the transaction. */
    conf_begin(c);
    conf_mandate_put(c, "mdt_y", "t1", "{}", 0, 0, 0);
    conf_ok(c->m->mandate_spend(c->w, "mdt_a", 7, 7, 7));
    conf_stream_append(c, "t1", "mandate.created", 5, "{}");
    conf_audit_append(c, "t1", 4, "check", "mdt_a", "mdt_a/");
    conf_ok(c->m->rollback(c->w));
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 1);
    conf_expect_mandate(&ms, 0, "mdt_a", "t1", "{\"v\":1}", 1, 0.25, 1);
    conf_mandates_clear(&ms);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){first, kept}, 2);
    conf_audit_list(c, r, &as, "t1", NULL, 0, 100);
    conf_expect_audit(&as, (int[]){2, 3}, 2);
    conf_audit_clear(&as);
}

/* Committed and synced version-2 data survives closing every connection, and a
 * reader sees nothing of an open transaction. */
static void conf_v2_durable(void **state)
{
    ch_conformance *c = conf_ctx(state);
    conf_mandates_seen ms = {0};
    conf_audit_seen as = {0};
    conf_sessions cs = {0};

    ch_store *r0 = conf_reader(c, 0);
    conf_begin(c);
    conf_mandate_put(c, "mdt_a", "t1", "{\"v\":1}", 0, 0, 0);
    conf_ok(c->m->mandate_spend(c->w, "mdt_a", 3, 1.5, 2));
    conf_insert(c, "t1", 1, "u", "mdt_a", CH_SESSION_ACTIVE, 1);
    int64_t id = conf_stream_append(c, "t1", "mandate.created", 1, "{\"n\":1}");
    conf_audit_append(c, "t1", 1, "mandate.created", "mdt_a", "mdt_a/");
    /* Not visible to a reader before the commit. */
    conf_load(c, r0, &ms);
    assert_int_equal(ms.n, 0);
    conf_expect_stream(c, r0, "t1", 0, 100, NULL, 0);
    assert_int_equal(conf_stream_last(c, r0), 0);
    conf_audit_list(c, r0, &as, "t1", NULL, 0, 100);
    assert_int_equal(as.n, 0);
    conf_ok(c->m->session_by_mandate(r0, "t1", "mdt_a", conf_session_cb, &cs));
    assert_int_equal(cs.calls, 0);
    conf_commit(c);
    conf_ok(c->m->sync(c->w));

    c->m->close(c->r[0]);
    c->r[0] = NULL;
    conf_reopen_writer(c);
    ch_store *r = conf_reader(c, 0);
    conf_load(c, r, &ms);
    assert_int_equal(ms.n, 1);
    conf_expect_mandate(&ms, 0, "mdt_a", "t1", "{\"v\":1}", 3, 1.5, 2);
    conf_mandates_clear(&ms);
    conf_expect_stream(c, r, "t1", 0, 100, (int64_t[]){id}, 1);
    assert_int_equal(conf_stream_last(c, r), id);
    assert_int_equal(conf_stream_last(c, c->w), id);
    conf_audit_list(c, r, &as, "t1", "mdt_a/", 0, 100);
    conf_expect_audit(&as, (int[]){1}, 1);
    conf_audit_clear(&as);
    conf_ok(c->m->session_by_mandate(r, "t1", "mdt_a", conf_session_cb, &cs));
    conf_expect_ids(&cs, (int[]){1}, 1);
    conf_sessions_clear(&cs);
}

/* ---- entry point ----------------------------------------------------------------- */

#define CONF_TEST(f) cmocka_unit_test_prestate_setup_teardown(f, conf_setup, conf_teardown, &ctx)

/* Runs the suite against m; fresh_dir gives each test a new data dir. Returns the
 * number of failed tests (cmocka's count), 0 when the backend conforms. */
__attribute__((unused)) static int ch_store_conformance_run(const ch_store_methods *m,
                                                            const char *(*fresh_dir)(void))
{
    static ch_conformance ctx;
    memset(&ctx, 0, sizeof(ctx));
    ctx.m = m;
    ctx.fresh_dir = fresh_dir;
    const struct CMUnitTest tests[] = {
        CONF_TEST(conf_table_complete),
        CONF_TEST(conf_open_creates_schema),
        CONF_TEST(conf_commit_durable),
        CONF_TEST(conf_sync_idle),
        CONF_TEST(conf_sync_concurrent),
        CONF_TEST(conf_rollback_discards),
        CONF_TEST(conf_savepoint_undo),
        CONF_TEST(conf_savepoint_keep),
        CONF_TEST(conf_savepoint_nested),
        CONF_TEST(conf_savepoint_after_failure),
        CONF_TEST(conf_writer_sees_own_work),
        CONF_TEST(conf_reader_isolation),
        CONF_TEST(conf_read_snapshot),
        CONF_TEST(conf_keys),
        CONF_TEST(conf_session_insert_get),
        CONF_TEST(conf_session_update),
        CONF_TEST(conf_session_list),
        CONF_TEST(conf_session_due),
        CONF_TEST(conf_events_list),
        CONF_TEST(conf_events_duplicate),
        CONF_TEST(conf_event_archive),
        CONF_TEST(conf_session_delete),
        CONF_TEST(conf_events_long_history),
        CONF_TEST(conf_events_rollback_long),
        CONF_TEST(conf_facts),
        CONF_TEST(conf_facts_large),
        /* version 2 */
        CONF_TEST(conf_v2_empty),
        CONF_TEST(conf_session_by_mandate),
        CONF_TEST(conf_mandates),
        CONF_TEST(conf_mandate_state),
        CONF_TEST(conf_stream),
        CONF_TEST(conf_audit),
        CONF_TEST(conf_v2_savepoint_undo),
        CONF_TEST(conf_v2_durable),
        /* version 3 */
        CONF_TEST(conf_v3_session_progress),
        CONF_TEST(conf_v3_event_append),
    };
    char group[64];
    snprintf(group, sizeof(group), "store_conformance(%s)", m->name ? m->name : "?");
    return _cmocka_run_group_tests(group, tests, sizeof(tests) / sizeof(tests[0]), NULL, NULL);
}

#undef CONF_TEST

#endif /* CHARTER_TESTS_STORE_CONFORMANCE_H */
