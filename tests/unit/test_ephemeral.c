/*
 * test_ephemeral.c — ephemeral scopes in-process: the clock (exact expiry, idle,
 * auto-extension and its cap, extend and shorten, lock grace), the timer heap under
 * random changes, agent exit, completion into a session's facts, the stream notices
 * and the counters, against a real database.
 */
#include "unit.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct fixture {
    char dir[UNIT_PATH_MAX];
    ch_db *db;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    ch_config cfg;
    ch_err e;
    if (f == NULL)
        return -1;
    unit_mkdtemp(f->dir);
    ch_config_defaults(&cfg);
    cfg.retention.sweep_interval = 0;
    cfg.ephemeral.max_ttl = 5000;
    cfg.ephemeral.default_ttl = 2000;
    cfg.ephemeral.command_ttl = 1000;
    cfg.ephemeral.gc_interval = 60000; /* only the timers end scopes in these tests */
    cfg.ephemeral.lock_grace = 300;
    cfg.ephemeral.log_evictions = false;
    if (snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", f->dir) >=
            (int)sizeof(cfg.data_dir) ||
        ch_db_open(&cfg, true, &f->db, &e) != CH_OK) {
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
    ch_db_close(f->db);
    unit_rm_rf(f->dir);
    free(f);
    return 0;
}

/* Creates a scope from JSON text; returns the reply (caller json_decref()s). */
static json_t *create(ch_db *db, const char *tenant, const char *body_text)
{
    json_t *body = json_loads(body_text, 0, NULL);
    ch_buf out = {0};
    ch_err e;
    assert_non_null(body);
    if (ch_scope_create(db, tenant, body, &out, &e) != CH_OK)
        fail_msg("create %s: %s", body_text, e.message);
    json_decref(body);
    json_t *r = json_loads(out.data, 0, NULL);
    ch_buf_free(&out);
    assert_non_null(r);
    return r;
}

static int64_t time_of(const json_t *scope, const char *field)
{
    int64_t ms = 0;
    assert_int_equal(ch_time_parse(json_string_value(json_object_get(scope, field)), &ms), CH_OK);
    return ms;
}

static ch_status get(ch_db *db, const char *tenant, const char *id, json_t **scope)
{
    ch_buf out = {0};
    ch_err e;
    ch_status st = ch_scope_get(db, tenant, id, &out, &e);
    if (scope != NULL)
        *scope = st == CH_OK ? json_loads(out.data, 0, NULL) : NULL;
    ch_buf_free(&out);
    return st;
}

static ch_status act(ch_db *db, const char *id, ch_scope_verb verb, const char *body_text)
{
    json_t *body = body_text ? json_loads(body_text, 0, NULL) : NULL;
    ch_buf out = {0};
    ch_err e;
    ch_status st = ch_scope_act(db, "t1", id, verb, body, &out, &e);
    json_decref(body);
    ch_buf_free(&out);
    return st;
}

/* The value of one sample line ("name{labels} value") in the metrics text; fails the
 * test when there is no such line (a HELP or TYPE line never matches). */
static double metric(ch_db *db, const char *line_start)
{
    ch_buf b = {0};
    char needle[256];
    ch_buf_append(&b, "\n", 1);
    ch_scope_render_metrics(db, &b);
    snprintf(needle, sizeof(needle), "\n%s", line_start);
    const char *p = strstr(b.data, needle);
    if (p == NULL)
        fail_msg("no metric line '%s'", line_start);
    double v = strtod(p + strlen(needle), NULL);
    ch_buf_free(&b);
    return v;
}

static void test_create_defaults_and_errors(void **state)
{
    fixture *f = *state;
    json_t *s = create(f->db, "t1", "{\"agent\":\"a\",\"context\":{\"k\":[1,2]}}");
    const char *id = json_string_value(json_object_get(s, "id"));
    assert_true(ch_id_valid("eph", id));
    assert_string_equal(json_string_value(json_object_get(s, "flow")), "scoped");
    assert_int_equal(json_integer_value(json_object_get(s, "ttl")), 2);
    assert_int_equal(time_of(s, "expires_at") - time_of(s, "created_at"), 2000);
    assert_true(json_is_false(json_object_get(s, "locked")));
    json_t *k = json_object_get(json_object_get(s, "context"), "k");
    assert_int_equal(json_array_size(k), 2);
    json_decref(s);

    s = create(f->db, "t1", "{\"agent\":\"a\",\"flow\":\"command\"}");
    assert_int_equal(time_of(s, "expires_at") - time_of(s, "created_at"), 1000);
    json_decref(s);
    s = create(f->db, "t1", "{\"agent\":\"a\",\"ttl\":\"1500ms\",\"idle_ttl\":0.25}");
    assert_true(json_real_value(json_object_get(s, "ttl")) == 1.5);
    assert_true(json_real_value(json_object_get(s, "idle_ttl")) == 0.25);
    json_decref(s);

    static const struct {
        const char *body;
        ch_status st;
        const char *field;
    } bad[] = {
        {"{}", CH_MISSING_FIELD, "agent"},
        {"{\"agent\":\"a\",\"ttl\":6}", CH_INVALID_VALUE, "ttl"},
        {"{\"agent\":\"a\",\"ttl\":0}", CH_INVALID_VALUE, "ttl"},
        {"{\"agent\":\"a\",\"ttl\":-1}", CH_INVALID_VALUE, "ttl"},
        {"{\"agent\":\"a\",\"ttl\":\"soon\"}", CH_INVALID_VALUE, "ttl"},
        {"{\"agent\":\"a\",\"ttl\":true}", CH_INVALID_TYPE, "ttl"},
        {"{\"agent\":\"a\",\"flow\":\"bogus\"}", CH_INVALID_VALUE, "flow"},
        {"{\"agent\":\"a\",\"auto_extend\":1}", CH_INVALID_TYPE, "auto_extend"},
        {"{\"agent\":\"a\",\"context\":[]}", CH_INVALID_TYPE, "context"},
        {"{\"agent\":\"a\",\"expires\":1}", CH_UNKNOWN_FIELD, "expires"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *body = json_loads(bad[i].body, 0, NULL);
        ch_buf out = {0};
        ch_err e;
        ch_status st = ch_scope_create(f->db, "t1", body, &out, &e);
        if (st != bad[i].st || strcmp(e.field, bad[i].field) != 0)
            fail_msg("%s: got %s field '%s'", bad[i].body, ch_status_name(st), e.field);
        assert_int_equal(out.len, 0);
        json_decref(body);
    }
    assert_int_equal((int)metric(f->db, "charter_scopes{flow=\"scoped\"} "), 2);
    assert_int_equal((int)metric(f->db, "charter_scopes{flow=\"command\"} "), 1);
}

/* No scope ends before its deadline, and every one has ended soon after it (the GC
 * sweep is a minute away: only the timers can do it). */
static void test_exact_expiry(void **state)
{
    fixture *f = *state;
    enum { N = 300 };
    char ids[N][CH_ID_MAX];
    int64_t due[N];
    bool gone[N] = {false};
    for (int i = 0; i < N; i++) {
        char body[96];
        snprintf(body, sizeof(body), "{\"agent\":\"a%d\",\"ttl\":\"%dms\"}", i % 7,
                 100 + (i * 37) % 500);
        json_t *s = create(f->db, "t1", body);
        snprintf(ids[i], sizeof(ids[i]), "%s", json_string_value(json_object_get(s, "id")));
        due[i] = time_of(s, "expires_at");
        json_decref(s);
    }
    int64_t last = 0;
    for (int i = 0; i < N; i++)
        last = due[i] > last ? due[i] : last;
    int left = N;
    while (left > 0) {
        int64_t before = ch_now_ms();
        for (int i = 0; i < N; i++) {
            if (gone[i])
                continue;
            if (get(f->db, "t1", ids[i], NULL) == CH_NOT_FOUND) {
                if (before < due[i] && ch_now_ms() < due[i])
                    fail_msg("scope %d ended %lld ms early", i, (long long)(due[i] - ch_now_ms()));
                gone[i] = true;
                left--;
            }
        }
        if (ch_now_ms() > last + 2000)
            fail_msg("%d scopes outlived their deadline by 2 s", left);
        unit_sleep_ms(5);
    }
    assert_int_equal((int)metric(f->db, "charter_scope_evictions_total{reason=\"expired\"} "), N);
    assert_int_equal((int)metric(f->db, "charter_scope_timers "), 0);
    assert_int_equal((int)metric(f->db, "charter_scope_expiry_lateness_seconds_count "), N);
}

/* Random extends (longer and shorter) and deletes: each scope ends at its latest
 * deadline, whatever happened to its timer entry. */
static void test_heap_random_changes(void **state)
{
    fixture *f = *state;
    enum { N = 400 };
    char ids[N][CH_ID_MAX];
    int64_t due[N];
    bool deleted[N] = {false};
    srand(7);
    for (int i = 0; i < N; i++) {
        char body[96];
        snprintf(body, sizeof(body), "{\"agent\":\"b\",\"ttl\":\"%dms\"}", 200 + rand() % 400);
        json_t *s = create(f->db, "t1", body);
        snprintf(ids[i], sizeof(ids[i]), "%s", json_string_value(json_object_get(s, "id")));
        due[i] = time_of(s, "expires_at");
        json_decref(s);
    }
    for (int i = 0; i < N; i++) {
        int what = rand() % 4;
        if (what == 0) {
            ch_err e;
            assert_int_equal(ch_scope_delete(f->db, "t1", ids[i], &e), CH_OK);
            deleted[i] = true;
        } else if (what == 1 || what == 2) {
            char body[48];
            snprintf(body, sizeof(body), "{\"ttl\":\"%dms\"}", 50 + rand() % 700);
            int64_t before = ch_now_ms();
            assert_int_equal(act(f->db, ids[i], CH_SCOPE_EXTEND, body), CH_OK);
            json_t *s = NULL;
            assert_int_equal(get(f->db, "t1", ids[i], &s), CH_OK);
            due[i] = time_of(s, "expires_at");
            assert_true(due[i] >= before + 50);
            json_decref(s);
        }
    }
    int64_t deadline = ch_now_ms() + 3000;
    for (;;) {
        int alive = 0;
        int64_t now = ch_now_ms();
        for (int i = 0; i < N; i++) {
            ch_status st = get(f->db, "t1", ids[i], NULL);
            if (deleted[i]) {
                assert_int_equal(st, CH_NOT_FOUND);
                continue;
            }
            if (st == CH_OK)
                alive++;
            else if (now < due[i] && ch_now_ms() < due[i])
                fail_msg("scope %d ended %lld ms before its deadline", i,
                         (long long)(due[i] - ch_now_ms()));
        }
        if (alive == 0)
            break;
        if (ch_now_ms() > deadline)
            fail_msg("%d scopes outlived their deadlines", alive);
        unit_sleep_ms(10);
    }
}

static void test_idle_and_auto_extend(void **state)
{
    fixture *f = *state;
    json_t *s = create(f->db, "t1", "{\"agent\":\"a\",\"ttl\":4,\"idle_ttl\":\"300ms\"}");
    char id[CH_ID_MAX];
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    for (int i = 0; i < 5; i++) { /* used every 150 ms: idle never comes */
        unit_sleep_ms(150);
        assert_int_equal(get(f->db, "t1", id, NULL), CH_OK);
    }
    unit_sleep_ms(600);
    assert_int_equal(get(f->db, "t1", id, NULL), CH_NOT_FOUND);
    assert_int_equal((int)metric(f->db, "charter_scope_evictions_total{reason=\"idle\"} "), 1);

    /* auto_extend: each use moves expires_at to now + ttl, never past max_ttl (5 s) */
    s = create(f->db, "t1", "{\"agent\":\"a\",\"ttl\":\"400ms\",\"auto_extend\":true}");
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(s, "id")));
    int64_t created = time_of(s, "created_at");
    json_decref(s);
    for (int i = 0; i < 4; i++) {
        unit_sleep_ms(250);
        json_t *g = NULL;
        assert_int_equal(get(f->db, "t1", id, &g), CH_OK);
        assert_true(time_of(g, "expires_at") >= time_of(g, "last_used_at") + 400 - 1);
        assert_true(time_of(g, "expires_at") <= created + 5000);
        json_decref(g);
    }
    assert_int_equal(act(f->db, id, CH_SCOPE_EXTEND, "{\"ttl\":\"6s\"}"), CH_INVALID_VALUE);
    unit_sleep_ms(700);
    assert_int_equal(get(f->db, "t1", id, NULL), CH_NOT_FOUND);
}

static void test_lock_grace(void **state)
{
    fixture *f = *state;
    json_t *s = create(f->db, "t1", "{\"agent\":\"a\",\"ttl\":\"200ms\",\"context\":{\"x\":1}}");
    char id[CH_ID_MAX];
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    assert_int_equal(act(f->db, id, CH_SCOPE_LOCK, NULL), CH_OK);
    assert_int_equal(act(f->db, id, CH_SCOPE_LOCK, NULL), CH_SCOPE_LOCKED);
    assert_int_equal(act(f->db, id, CH_SCOPE_EXTEND, "{\"ttl\":1}"), CH_SCOPE_LOCKED);
    json_t *body = json_loads("{\"value\":2}", 0, NULL);
    ch_buf out = {0};
    ch_err e;
    assert_int_equal(ch_scope_put_key(f->db, "t1", id, "x", body, &out, &e), CH_SCOPE_LOCKED);
    assert_int_equal(ch_scope_delete(f->db, "t1", id, &e), CH_SCOPE_LOCKED);
    json_decref(body);
    assert_int_equal((int)metric(f->db, "charter_scopes_locked "), 1);

    unit_sleep_ms(320); /* past the deadline, inside the 300 ms grace */
    json_t *g = NULL;
    assert_int_equal(get(f->db, "t1", id, &g), CH_OK);
    assert_non_null(json_object_get(g, "grace_until"));
    assert_int_equal(time_of(g, "grace_until") - time_of(g, "expires_at"), 300);
    json_decref(g);
    assert_int_equal((int)metric(f->db, "charter_scope_expiring_total "), 1);
    unit_sleep_ms(400);
    assert_int_equal(get(f->db, "t1", id, NULL), CH_NOT_FOUND);
    assert_int_equal((int)metric(f->db, "charter_scopes_locked "), 0);
    ch_buf_free(&out);

    /* the stream has the warning, then the eviction, without the context */
    json_t *events = NULL;
    int64_t until = ch_now_ms() + 2000;
    for (;;) {
        assert_int_equal(ch_stream_list(f->db, "t1", 0, 100, &events, &e), CH_OK);
        if (json_array_size(json_object_get(events, "events")) >= 2 || ch_now_ms() > until)
            break;
        json_decref(events);
        unit_sleep_ms(20);
    }
    json_t *list = json_object_get(events, "events");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "type")),
                        "ephemeral.expiring");
    json_t *ev = json_array_get(list, 1);
    assert_string_equal(json_string_value(json_object_get(ev, "type")), "ephemeral.evicted");
    assert_string_equal(json_string_value(json_object_get(ev, "scope")), id);
    assert_string_equal(json_string_value(json_object_get(ev, "reason")), "expired");
    assert_null(json_object_get(ev, "context"));
    json_decref(events);
}

static void test_agent_exit_and_tenants(void **state)
{
    fixture *f = *state;
    char mine[3][CH_ID_MAX], other[CH_ID_MAX], theirs[CH_ID_MAX];
    for (int i = 0; i < 3; i++) {
        json_t *s = create(f->db, "t1", "{\"agent\":\"worker/1\",\"ttl\":4}");
        snprintf(mine[i], sizeof(mine[i]), "%s", json_string_value(json_object_get(s, "id")));
        json_decref(s);
    }
    json_t *s = create(f->db, "t1", "{\"agent\":\"worker/2\",\"ttl\":4}");
    snprintf(other, sizeof(other), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    s = create(f->db, "t2", "{\"agent\":\"worker/1\",\"ttl\":4}");
    snprintf(theirs, sizeof(theirs), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    assert_int_equal(act(f->db, mine[1], CH_SCOPE_LOCK, NULL), CH_OK);

    /* another tenant's scope does not exist for t1 */
    assert_int_equal(get(f->db, "t1", theirs, NULL), CH_NOT_FOUND);

    ch_buf out = {0};
    ch_err e;
    assert_int_equal(ch_scope_purge_agent(f->db, "t1", "worker/1", &out, &e), CH_OK);
    json_t *r = json_loads(out.data, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(r, "purged")), 3);
    json_decref(r);
    ch_buf_free(&out);
    for (int i = 0; i < 3; i++)
        assert_int_equal(get(f->db, "t1", mine[i], NULL), CH_NOT_FOUND);
    assert_int_equal(get(f->db, "t1", other, NULL), CH_OK);
    assert_int_equal(get(f->db, "t2", theirs, NULL), CH_OK);
    assert_int_equal((int)metric(f->db, "charter_scope_evictions_total{reason=\"agent_exited\"} "),
                     3);
}

static void test_complete_into_facts(void **state)
{
    fixture *f = *state;
    ch_req req = {.op = CH_OP_SESSION_CREATE};
    snprintf(req.tenant, sizeof(req.tenant), "t1");
    req.body = json_pack("{s:s, s:s}", "user", "u", "agent", "a");
    assert_int_equal(ch_call(f->db, &req), CH_OK);
    char sess[CH_ID_MAX];
    snprintf(sess, sizeof(sess), "%s", json_string_value(json_object_get(req.result, "id")));
    json_decref(req.body);
    ch_req_dispose(&req);

    json_t *s =
        create(f->db, "t1", "{\"agent\":\"a\",\"context\":{\"plan\":{\"step\":3},\"tmp\":1}}");
    char id[CH_ID_MAX];
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);

    /* a key the context lacks: nothing written, the scope untouched */
    ch_req bad = {.op = CH_OP_SCOPE_COMPLETE};
    snprintf(bad.tenant, sizeof(bad.tenant), "t1");
    snprintf(bad.id, sizeof(bad.id), "%s", id);
    bad.body = json_pack("{s:s, s:[s, s]}", "session", sess, "keys", "plan", "nope");
    assert_int_equal(ch_call(f->db, &bad), CH_INVALID_VALUE);
    assert_string_equal(bad.err.field, "keys[1]");
    json_decref(bad.body);
    ch_req_dispose(&bad);
    assert_int_equal(get(f->db, "t1", id, NULL), CH_OK);

    ch_req done = {.op = CH_OP_SCOPE_COMPLETE};
    snprintf(done.tenant, sizeof(done.tenant), "t1");
    snprintf(done.id, sizeof(done.id), "%s", id);
    done.body = json_pack("{s:s, s:[s]}", "session", sess, "keys", "plan");
    assert_int_equal(ch_call(f->db, &done), CH_OK);
    assert_true(json_is_true(json_object_get(done.result, "purged")));
    json_decref(done.body);
    ch_req_dispose(&done);
    assert_int_equal(get(f->db, "t1", id, NULL), CH_NOT_FOUND);

    json_t *fact = NULL;
    ch_err e;
    assert_int_equal(ch_fact_get(f->db, "t1", sess, "plan", &fact, &e), CH_OK);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(fact, "value"), "step")),
                     3);
    json_decref(fact);
    assert_int_equal(ch_fact_get(f->db, "t1", sess, "tmp", &fact, &e), CH_NOT_FOUND);

    /* a secure scope is locked instead of transferred unless asked */
    s = create(f->db, "t1",
               "{\"agent\":\"a\",\"flow\":\"secure\",\"context\":{\"token\":\"s3cr3t\"}}");
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    ch_req sec = {.op = CH_OP_SCOPE_COMPLETE};
    snprintf(sec.tenant, sizeof(sec.tenant), "t1");
    snprintf(sec.id, sizeof(sec.id), "%s", id);
    sec.body = json_pack("{s:s, s:[s]}", "session", sess, "keys", "token");
    assert_int_equal(ch_call(f->db, &sec), CH_OK);
    assert_true(json_is_true(json_object_get(sec.result, "locked")));
    assert_int_equal(json_array_size(json_object_get(sec.result, "transferred")), 0);
    json_decref(sec.body);
    ch_req_dispose(&sec);
    json_t *g = NULL;
    assert_int_equal(get(f->db, "t1", id, &g), CH_OK);
    assert_true(json_is_true(json_object_get(g, "locked")));
    json_decref(g);
    assert_int_equal(ch_fact_get(f->db, "t1", sess, "token", &fact, &e), CH_NOT_FOUND);
}

static void test_upgrade_and_context(void **state)
{
    fixture *f = *state;
    json_t *s = create(f->db, "t1", "{\"agent\":\"a\",\"flow\":\"command\",\"context\":{\"q\":1}}");
    char id[CH_ID_MAX];
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    assert_int_equal(act(f->db, id, CH_SCOPE_UPGRADE, NULL), CH_OK);
    json_t *g = NULL;
    assert_int_equal(get(f->db, "t1", id, &g), CH_OK);
    assert_string_equal(json_string_value(json_object_get(g, "flow")), "scoped");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(g, "context"), "q")), 1);
    json_decref(g);
    assert_int_equal(act(f->db, id, CH_SCOPE_UPGRADE, NULL), CH_INVALID_STATE);

    json_t *patch = json_loads("{\"context\":{\"q\":null,\"r\":\"x\"}}", 0, NULL);
    ch_buf out = {0};
    ch_err e;
    assert_int_equal(ch_scope_merge(f->db, "t1", id, patch, &out, &e), CH_OK);
    json_decref(patch);
    json_t *r = json_loads(out.data, 0, NULL);
    json_t *ctx = json_object_get(r, "context");
    assert_null(json_object_get(ctx, "q"));
    assert_string_equal(json_string_value(json_object_get(ctx, "r")), "x");
    json_decref(r);
    ch_buf_free(&out);
    assert_int_equal(ch_scope_get_key(f->db, "t1", id, "q", &out, &e), CH_NOT_FOUND);
    assert_string_equal(e.field, "key");
    ch_buf_free(&out);
    assert_int_equal((int)metric(f->db, "charter_scope_bytes "), (int)strlen("{\"r\":\"x\"}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_defaults_and_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exact_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heap_random_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_and_auto_extend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_grace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_exit_and_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_complete_into_facts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_and_context, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
