/*
 * test_sessions.c — the sessions system of record through libcharter's public API:
 * writes through ch_call()/ch_submit() (group commit), reads, lifecycle, compaction,
 * facts, the resume bundle, tenant isolation, listing, retention, API keys and the
 * drain on ch_db_close(). Each test opens its own database in a fresh temp dir.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "unit.h"

#include "charter.h"

#define TENANT "acme"

typedef struct fixture {
    char dir[UNIT_PATH_MAX];
    ch_db *db;
} fixture;

/* ---- helpers --------------------------------------------------------------------- */

static ch_db *open_db(const char *dir, const ch_retention *ret, bool sweeper)
{
    ch_config cfg;
    ch_err e;
    ch_db *db = NULL;
    ch_config_defaults(&cfg);
    assert_true(snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", dir) <
                (int)sizeof(cfg.data_dir));
    if (ret != NULL)
        cfg.retention = *ret;
    ch_err_clear(&e);
    ch_status st = ch_db_open(&cfg, sweeper, &db, &e);
    if (st != CH_OK)
        fail_msg("ch_db_open: %s", e.message);
    assert_non_null(db);
    return db;
}

/* Opens a fresh database; on failure leaves nothing behind (cmocka does not run the
 * teardown of a failed setup). */
static int setup(void **state)
{
    char dir[UNIT_PATH_MAX];
    ch_config cfg;
    ch_err e;
    ch_db *db = NULL;
    unit_mkdtemp(dir);
    ch_config_defaults(&cfg);
    if (snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", dir) >= (int)sizeof(cfg.data_dir)) {
        unit_rm_rf(dir);
        return -1;
    }
    if (ch_db_open(&cfg, false, &db, &e) != CH_OK) {
        print_error("ch_db_open: %s\n", e.message);
        unit_rm_rf(dir);
        return -1;
    }
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        ch_db_close(db);
        unit_rm_rf(dir);
        return -1;
    }
    memcpy(f->dir, dir, sizeof(dir));
    f->db = db;
    *state = f;
    return 0;
}

/* For tests that open their own databases: just the temp dir. They keep the db they
 * have open in f->db so that a failing test still closes it. */
static int setup_dir(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    unit_mkdtemp(f->dir);
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

static json_t *jparse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        fail_msg("test JSON does not parse: %s: %s", text, jerr.text);
    return v;
}

/* Runs one write with ch_call(). body is borrowed (the test keeps its reference).
 * *res (if not NULL) receives a new reference to the result, *err a copy of the
 * error. Checks the ch_call contract: the status is err.status, a result exists
 * exactly on success. */
static ch_status run_json(ch_db *db, ch_op op, const char *tenant, const char *id, const char *key,
                          json_t *body, json_t **res, ch_err *err)
{
    ch_req req;
    memset(&req, 0, sizeof(req));
    req.op = op;
    snprintf(req.tenant, sizeof(req.tenant), "%s", tenant);
    if (id != NULL)
        snprintf(req.id, sizeof(req.id), "%s", id);
    req.key = (char *)key;
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

static ch_status run(ch_db *db, ch_op op, const char *tenant, const char *id, const char *key,
                     const char *body, json_t **res, ch_err *err)
{
    json_t *b = body ? jparse(body) : NULL;
    ch_status st = run_json(db, op, tenant, id, key, b, res, err);
    json_decref(b);
    return st;
}

/* Expects a write to fail with want (and field, when not NULL). */
#define expect_fail(db, op, tenant, id, key, body, want, field)                                    \
    expect_fail_at(__LINE__, db, op, tenant, id, key, body, want, field)

static void expect_fail_at(int line, ch_db *db, ch_op op, const char *tenant, const char *id,
                           const char *key, const char *body, ch_status want, const char *field)
{
    ch_err e;
    ch_status st = run(db, op, tenant, id, key, body, NULL, &e);
    if (st != want)
        fail_msg("line %d: %.200s: got %s (%s), want %s", line, body ? body : "(null)",
                 ch_status_name(st), e.message, ch_status_name(want));
    if (field != NULL && strcmp(e.field, field) != 0)
        fail_msg("line %d: %.200s: field '%s', want '%s'", line, body ? body : "(null)", e.field,
                 field);
}

/* Creates an active root mandate in tenant (expiring in an hour); its id in id. */
static void create_mandate(ch_db *db, const char *tenant, char id[CH_ID_MAX])
{
    char exp[32], body[256];
    json_t *res = NULL;
    ch_time_format(ch_now_ms() + 3600000, exp);
    snprintf(body, sizeof(body), "{\"approver\":\"alice\",\"expires_at\":\"%s\"}", exp);
    assert_int_equal(run(db, CH_OP_MANDATE_CREATE, tenant, NULL, NULL, body, &res, NULL), CH_OK);
    snprintf(id, CH_ID_MAX, "%s", json_string_value(json_object_get(res, "id")));
    json_decref(res);
}

static void create_session(ch_db *db, const char *tenant, const char *body, char id[CH_ID_MAX])
{
    json_t *res = NULL;
    ch_err e;
    ch_status st = run(db, CH_OP_SESSION_CREATE, tenant, NULL, NULL,
                       body ? body : "{\"user\":\"alice\",\"agent\":\"coder\"}", &res, &e);
    if (st != CH_OK)
        fail_msg("create: %s", e.message);
    const char *s = json_string_value(json_object_get(res, "id"));
    assert_non_null(s);
    snprintf(id, CH_ID_MAX, "%s", s);
    json_decref(res);
}

/* Appends n events {kind:"message", content:<first content + i>} in one batch. */
static void append_n(ch_db *db, const char *tenant, const char *id, int n, int first_content)
{
    json_t *events = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(
            events, json_pack("{s:s, s:i}", "kind", "message", "content", first_content + i));
    json_t *body = json_pack("{s:o}", "events", events);
    ch_err e;
    ch_status st = run_json(db, CH_OP_SESSION_APPEND, tenant, id, NULL, body, NULL, &e);
    json_decref(body);
    if (st != CH_OK)
        fail_msg("append: %s", e.message);
}

static json_t *get_session(ch_db *db, const char *tenant, const char *id)
{
    json_t *s = NULL;
    ch_err e;
    ch_status st = ch_session_get(db, tenant, id, &s, &e);
    if (st != CH_OK)
        fail_msg("ch_session_get %s: %s", id, e.message);
    return s;
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

/* The session's seq and state (copied to state_out). */
static int64_t session_seq(ch_db *db, const char *tenant, const char *id, char state_out[16])
{
    json_t *s = get_session(db, tenant, id);
    int64_t seq = jint(s, "seq");
    if (state_out != NULL)
        snprintf(state_out, 16, "%s", jstr(s, "state"));
    json_decref(s);
    return seq;
}

/* The events page (whole reply {events, next_after}). */
static json_t *events_page(ch_db *db, const char *tenant, const char *id, int64_t after, int limit,
                           bool archived)
{
    json_t *out = NULL;
    ch_err e;
    ch_status st = ch_events_list(db, tenant, id, after, limit, archived, &out, &e);
    if (st != CH_OK)
        fail_msg("ch_events_list: %s", e.message);
    assert_true(json_is_array(json_object_get(out, "events")));
    return out;
}

/* Asserts the seqs of an events array are exactly want[0..n). */
static void assert_seqs(const json_t *events, const int64_t *want, size_t n)
{
    if (json_array_size(events) != n) {
        char *t = json_dumps(events, JSON_COMPACT);
        fail_msg("%zu events, want %zu: %.400s", json_array_size(events), n, t);
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(jint(json_array_get(events, i), "seq"), want[i]);
}

/* Parses "YYYY-MM-DDTHH:MM:SS.mmmZ" into ms since the epoch. */
static int64_t parse_time(const char *s)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof(tm));
    assert_int_equal(strlen(s), 24);
    assert_int_equal(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                            &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
                     7);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* ---- create ---------------------------------------------------------------------- */

static void test_create(void **state)
{
    fixture *f = *state;
    json_t *res = NULL;
    int64_t before = ch_now_ms();
    assert_int_equal(run(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, NULL,
                         "{\"user\":\"alice\",\"agent\":\"coder\"}", &res, NULL),
                     CH_OK);
    int64_t after = ch_now_ms();
    const char *id = jstr(res, "id");
    assert_true(strncmp(id, "sess_", 5) == 0);
    assert_true(ch_id_valid("sess", id));
    assert_string_equal(jstr(res, "user"), "alice");
    assert_string_equal(jstr(res, "agent"), "coder");
    assert_true(json_is_null(json_object_get(res, "mandate")));
    assert_true(json_is_object(json_object_get(res, "labels")));
    assert_int_equal(json_object_size(json_object_get(res, "labels")), 0);
    assert_true(json_is_null(json_object_get(res, "budget")));
    json_t *usage = json_object_get(res, "usage");
    assert_int_equal(jint(usage, "tokens"), 0);
    assert_true(json_is_number(json_object_get(usage, "cost_usd")));
    assert_true(json_number_value(json_object_get(usage, "cost_usd")) == 0.0);
    assert_int_equal(jint(usage, "tool_calls"), 0);
    assert_string_equal(jstr(res, "state"), "open");
    assert_int_equal(jint(res, "seq"), 0);
    assert_int_equal(jint(res, "summary_seq"), 0);
    int64_t created = parse_time(jstr(res, "created_at"));
    assert_true(created >= before && created <= after);
    assert_string_equal(jstr(res, "created_at"), jstr(res, "updated_at"));

    /* The stored session reads back the same. */
    json_t *got = get_session(f->db, TENANT, id);
    assert_true(json_equal(got, res));
    json_decref(got);

    /* A fresh session has no events. */
    json_t *page = events_page(f->db, TENANT, id, 0, 100, false);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 0);
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    json_decref(res);

    /* All optional fields. */
    char mid[CH_ID_MAX], body[512];
    create_mandate(f->db, TENANT, mid);
    snprintf(body, sizeof(body),
             "{\"user\":\"bob\",\"agent\":\"ops\",\"mandate\":\"%s\","
             "\"labels\":{\"repo\":\"web\",\"team\":\"x\"},"
             "\"budget\":{\"tokens\":100000,\"cost_usd\":5.5,\"tool_calls\":200}}",
             mid);
    assert_int_equal(run(f->db, CH_OP_SESSION_CREATE, TENANT, NULL, NULL, body, &res, NULL), CH_OK);
    assert_string_equal(jstr(res, "mandate"), mid);
    json_t *want_labels = jparse("{\"repo\":\"web\",\"team\":\"x\"}");
    assert_true(json_equal(json_object_get(res, "labels"), want_labels));
    json_decref(want_labels);
    json_t *budget = json_object_get(res, "budget");
    assert_int_equal(jint(budget, "tokens"), 100000);
    assert_true(json_number_value(json_object_get(budget, "cost_usd")) == 5.5);
    assert_int_equal(jint(budget, "tool_calls"), 200);
    got = get_session(f->db, TENANT, jstr(res, "id"));
    assert_true(json_equal(got, res));
    json_decref(got);

    /* mandate: null is the same as absent */
    char id2[CH_ID_MAX];
    create_session(f->db, TENANT, "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":null}", id2);
    got = get_session(f->db, TENANT, id2);
    assert_true(json_is_null(json_object_get(got, "mandate")));
    /* ids increase in creation order */
    assert_true(strcmp(jstr(res, "id"), id2) < 0);
    json_decref(got);
    json_decref(res);
}

static void test_create_validation(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    const ch_op op = CH_OP_SESSION_CREATE;
    static const struct {
        const char *body;
        ch_status want;
        const char *field;
    } cases[] = {
        {"{\"agent\":\"a\"}", CH_MISSING_FIELD, "user"},
        {"{\"user\":\"u\"}", CH_MISSING_FIELD, "agent"},
        {"{\"user\":null,\"agent\":\"a\"}", CH_MISSING_FIELD, "user"},
        {"{}", CH_MISSING_FIELD, "user"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"colour\":\"red\"}", CH_UNKNOWN_FIELD, "colour"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"state\":\"active\"}", CH_UNKNOWN_FIELD, "state"},
        {"{\"user\":5,\"agent\":\"a\"}", CH_INVALID_TYPE, "user"},
        {"{\"user\":\"u\",\"agent\":[\"a\"]}", CH_INVALID_TYPE, "agent"},
        {"{\"user\":\"u\",\"agent\":true}", CH_INVALID_TYPE, "agent"},
        {"{\"user\":\"\",\"agent\":\"a\"}", CH_INVALID_VALUE, "user"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"mandate\":7}", CH_INVALID_TYPE, "mandate"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"\"}", CH_INVALID_VALUE, "mandate"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"labels\":[]}", CH_INVALID_TYPE, "labels"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"labels\":\"x\"}", CH_INVALID_TYPE, "labels"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"k\":1}}", CH_INVALID_TYPE, "labels.k"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"ok\":\"v\",\"k\":null}}", CH_INVALID_TYPE,
         "labels.k"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"k\":{\"x\":\"y\"}}}", CH_INVALID_TYPE,
         "labels.k"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"\":\"v\"}}", CH_INVALID_VALUE, NULL},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"x\":1}}", CH_UNKNOWN_FIELD, "budget.x"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":5}", CH_INVALID_TYPE, "budget"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"tokens\":-1}}", CH_INVALID_VALUE,
         "budget.tokens"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"tokens\":1.5}}", CH_INVALID_TYPE,
         "budget.tokens"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"tokens\":\"5\"}}", CH_INVALID_TYPE,
         "budget.tokens"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"cost_usd\":\"5\"}}", CH_INVALID_TYPE,
         "budget.cost_usd"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"cost_usd\":-0.5}}", CH_INVALID_VALUE,
         "budget.cost_usd"},
        {"{\"user\":\"u\",\"agent\":\"a\",\"budget\":{\"tool_calls\":-3}}", CH_INVALID_VALUE,
         "budget.tool_calls"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_fail(db, op, TENANT, NULL, NULL, cases[i].body, cases[i].want, cases[i].field);

    expect_fail(db, op, TENANT, NULL, NULL, NULL, CH_BAD_REQUEST, NULL);

    /* lengths: user/agent/mandate 1-256 bytes, label keys 1-128, label values <= 1024,
     * at most 64 labels */
    char big[1100], body[4096];
    memset(big, 'x', sizeof(big));
    big[256] = '\0';
    snprintf(body, sizeof(body), "{\"user\":\"%s\",\"agent\":\"a\"}", big);
    char id[CH_ID_MAX];
    create_session(db, TENANT, body, id); /* 256 bytes: accepted */
    /* a 256-byte mandate is well formed, but must name a mandate of the tenant */
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}", big);
    expect_fail(db, op, TENANT, NULL, NULL, body, CH_INVALID_VALUE, "mandate");
    big[256] = 'x';
    big[257] = '\0';
    snprintf(body, sizeof(body), "{\"user\":\"%s\",\"agent\":\"a\"}", big);
    expect_fail(db, op, TENANT, NULL, NULL, body, CH_INVALID_VALUE, "user");
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"%s\"}", big);
    expect_fail(db, op, TENANT, NULL, NULL, body, CH_INVALID_VALUE, "agent");
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"mandate\":\"%s\"}", big);
    expect_fail(db, op, TENANT, NULL, NULL, body, CH_INVALID_VALUE, "mandate");

    memset(big, 'k', sizeof(big));
    big[129] = '\0';
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"%s\":\"v\"}}", big);
    expect_fail(db, op, TENANT, NULL, NULL, body, CH_INVALID_VALUE, NULL);
    memset(big, 'v', sizeof(big));
    big[1025] = '\0';
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"k\":\"%s\"}}", big);
    expect_fail(db, op, TENANT, NULL, NULL, body, CH_INVALID_VALUE, "labels.k");
    big[1024] = '\0';
    snprintf(body, sizeof(body), "{\"user\":\"u\",\"agent\":\"a\",\"labels\":{\"k\":\"%s\"}}", big);
    create_session(db, TENANT, body, id);

    json_t *labels = json_object();
    for (int i = 0; i < 65; i++) {
        char k[16];
        snprintf(k, sizeof(k), "l%d", i);
        json_object_set_new(labels, k, json_string("v"));
    }
    json_t *b = json_pack("{s:s, s:s, s:O}", "user", "u", "agent", "a", "labels", labels);
    ch_err e;
    assert_int_equal(run_json(db, op, TENANT, NULL, NULL, b, NULL, &e), CH_INVALID_VALUE);
    assert_string_equal(e.field, "labels");
    json_decref(b);
    json_object_del(labels, "l64");
    b = json_pack("{s:s, s:s, s:O}", "user", "u", "agent", "a", "labels", labels);
    assert_int_equal(run_json(db, op, TENANT, NULL, NULL, b, NULL, &e), CH_OK);
    json_decref(b);
    json_decref(labels);

    /* A refused create stored nothing: only the three accepted sessions exist. */
    ch_session_query q = {.limit = 1000};
    json_t *list = NULL;
    assert_int_equal(ch_session_list(db, TENANT, &q, &list, &e), CH_OK);
    assert_int_equal(json_array_size(json_object_get(list, "sessions")), 3);
    json_decref(list);
}

/* ---- append ---------------------------------------------------------------------- */

static void test_append_single_and_batch(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX], st[16];
    json_t *res = NULL;
    create_session(db, TENANT, NULL, id);

    assert_int_equal(run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL,
                         "{\"kind\":\"message\",\"role\":\"user\",\"content\":\"hi\","
                         "\"usage\":{\"tokens\":10,\"cost_usd\":0.25,\"tool_calls\":1},"
                         "\"meta\":{\"m\":1},\"expect_seq\":0}",
                         &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "first_seq"), 1);
    assert_int_equal(jint(res, "last_seq"), 1);
    json_decref(res);
    /* open → active without a lifecycle event of its own */
    assert_int_equal(session_seq(db, TENANT, id, st), 1);
    assert_string_equal(st, "active");

    assert_int_equal(run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL,
                         "{\"events\":["
                         "{\"kind\":\"tool.call\",\"content\":{\"name\":\"ls\"},"
                         "\"usage\":{\"tool_calls\":2}},"
                         "{\"kind\":\"tool_result-2\",\"content\":[1,2,3],"
                         "\"usage\":{\"tokens\":5,\"cost_usd\":0.5}},"
                         "{\"kind\":\"message\",\"role\":\"assistant\",\"content\":null,"
                         "\"usage\":{\"tokens\":100}}"
                         "],\"expect_seq\":1}",
                         &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "first_seq"), 2);
    assert_int_equal(jint(res, "last_seq"), 4);
    json_decref(res);

    json_t *s = get_session(db, TENANT, id);
    assert_int_equal(jint(s, "seq"), 4);
    assert_string_equal(jstr(s, "state"), "active");
    json_t *usage = json_object_get(s, "usage");
    assert_int_equal(jint(usage, "tokens"), 115);
    assert_true(json_number_value(json_object_get(usage, "cost_usd")) == 0.75);
    assert_int_equal(jint(usage, "tool_calls"), 3);
    assert_true(parse_time(jstr(s, "updated_at")) >= parse_time(jstr(s, "created_at")));
    json_decref(s);

    /* The log holds exactly what was appended, plus seq and at; no lifecycle event. */
    json_t *page = events_page(db, TENANT, id, 0, 100, false);
    json_t *evs = json_object_get(page, "events");
    const int64_t want[] = {1, 2, 3, 4};
    assert_seqs(evs, want, 4);
    json_t *e0 = json_copy(json_array_get(evs, 0));
    assert_int_equal(strlen(jstr(e0, "at")), 24);
    json_object_del(e0, "at");
    json_t *want0 = jparse("{\"kind\":\"message\",\"role\":\"user\",\"content\":\"hi\","
                           "\"usage\":{\"tokens\":10,\"cost_usd\":0.25,\"tool_calls\":1},"
                           "\"meta\":{\"m\":1},\"seq\":1}");
    assert_true(json_equal(e0, want0));
    json_decref(e0);
    json_decref(want0);
    assert_string_equal(jstr(json_array_get(evs, 1), "kind"), "tool.call");
    assert_string_equal(jstr(json_array_get(evs, 2), "kind"), "tool_result-2");
    json_t *c2 = jparse("[1,2,3]");
    assert_true(json_equal(json_object_get(json_array_get(evs, 2), "content"), c2));
    json_decref(c2);
    assert_string_equal(jstr(json_array_get(evs, 3), "role"), "assistant");
    for (size_t i = 0; i < json_array_size(evs); i++) {
        assert_string_not_equal(jstr(json_array_get(evs, i), "kind"), "lifecycle");
        assert_null(json_object_get(json_array_get(evs, i), "expect_seq"));
    }
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);

    /* A batch of exactly 1000 events is accepted. */
    append_n(db, TENANT, id, 1000, 0);
    assert_int_equal(session_seq(db, TENANT, id, NULL), 1004);
}

static void test_append_seq_conflict(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX], st[16];
    ch_err e;
    create_session(db, TENANT, NULL, id);

    /* On an open session a conflict changes nothing, not even the state. */
    assert_int_equal(run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL,
                         "{\"kind\":\"message\",\"expect_seq\":3}", NULL, &e),
                     CH_SEQ_CONFLICT);
    assert_string_equal(e.field, "expect_seq");
    assert_int_equal(session_seq(db, TENANT, id, st), 0);
    assert_string_equal(st, "open");

    append_n(db, TENANT, id, 3, 1);
    json_t *before = get_session(db, TENANT, id);

    const char *bodies[] = {
        "{\"kind\":\"message\",\"expect_seq\":0,\"usage\":{\"tokens\":7}}",
        "{\"kind\":\"message\",\"expect_seq\":2}",
        "{\"kind\":\"message\",\"expect_seq\":4}",
        "{\"events\":[{\"kind\":\"a\"},{\"kind\":\"b\",\"usage\":{\"tokens\":1}}],"
        "\"expect_seq\":1}",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect_fail(db, CH_OP_SESSION_APPEND, TENANT, id, NULL, bodies[i], CH_SEQ_CONFLICT,
                    "expect_seq");

    /* Nothing was written: the session (seq, usage, updated_at) and the log are as
     * they were. */
    json_t *after = get_session(db, TENANT, id);
    assert_true(json_equal(before, after));
    json_decref(after);
    json_decref(before);
    json_t *page = events_page(db, TENANT, id, 0, 100, false);
    const int64_t want[] = {1, 2, 3};
    assert_seqs(json_object_get(page, "events"), want, 3);
    json_decref(page);

    /* The right expect_seq goes through. */
    json_t *res = NULL;
    assert_int_equal(run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL,
                         "{\"kind\":\"message\",\"expect_seq\":3}", &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "first_seq"), 4);
    json_decref(res);
}

static void test_append_validation(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    const ch_op op = CH_OP_SESSION_APPEND;
    char id[CH_ID_MAX], st[16];
    create_session(db, TENANT, NULL, id);

    static const struct {
        const char *body;
        ch_status want;
        const char *field;
    } cases[] = {
        {"{\"kind\":\"lifecycle\"}", CH_RESERVED_KIND, "kind"},
        {"{\"kind\":\"summary\",\"content\":\"x\"}", CH_RESERVED_KIND, "kind"},
        {"{\"events\":[{\"kind\":\"ok\"},{\"kind\":\"summary\"}]}", CH_RESERVED_KIND,
         "events[1].kind"},
        {"{\"events\":[{\"kind\":\"lifecycle\"}]}", CH_RESERVED_KIND, "events[0].kind"},
        {"{\"kind\":\"Message\"}", CH_INVALID_VALUE, "kind"},
        {"{\"kind\":\"a b\"}", CH_INVALID_VALUE, "kind"},
        {"{\"kind\":\"a/b\"}", CH_INVALID_VALUE, "kind"},
        {"{\"kind\":\"caf\\u00e9\"}", CH_INVALID_VALUE, "kind"},
        {"{\"kind\":\"\"}", CH_INVALID_VALUE, "kind"},
        {"{\"kind\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
         CH_INVALID_VALUE, "kind"}, /* 65 bytes */
        {"{\"events\":[{\"kind\":\"ok\"},{\"kind\":\"ok\"},{\"kind\":\"BAD\"}]}", CH_INVALID_VALUE,
         "events[2].kind"},
        {"{\"role\":\"user\"}", CH_MISSING_FIELD, "kind"},
        {"{\"kind\":5}", CH_INVALID_TYPE, "kind"},
        {"{\"kind\":\"m\",\"colour\":1}", CH_UNKNOWN_FIELD, "colour"},
        {"{\"kind\":\"m\",\"seq\":1}", CH_UNKNOWN_FIELD, "seq"},
        {"{\"events\":[{\"kind\":\"m\",\"expect_seq\":0}]}", CH_UNKNOWN_FIELD,
         "events[0].expect_seq"},
        {"{\"events\":[{\"kind\":\"m\"}],\"kind\":\"m\"}", CH_UNKNOWN_FIELD, "kind"},
        {"{\"events\":[]}", CH_INVALID_VALUE, "events"},
        {"{\"events\":{\"kind\":\"m\"}}", CH_INVALID_TYPE, "events"},
        {"{\"events\":[\"m\"]}", CH_INVALID_TYPE, "events[0]"},
        {"{\"events\":[{\"kind\":\"m\"},{}]}", CH_MISSING_FIELD, "events[1].kind"},
        {"{\"kind\":\"m\",\"role\":7}", CH_INVALID_TYPE, "role"},
        {"{\"kind\":\"m\",\"meta\":[1]}", CH_INVALID_TYPE, "meta"},
        {"{\"kind\":\"m\",\"usage\":5}", CH_INVALID_TYPE, "usage"},
        {"{\"kind\":\"m\",\"usage\":{\"tokens\":-1}}", CH_INVALID_VALUE, "usage.tokens"},
        {"{\"kind\":\"m\",\"usage\":{\"cost_usd\":-1}}", CH_INVALID_VALUE, "usage.cost_usd"},
        {"{\"kind\":\"m\",\"usage\":{\"foo\":1}}", CH_UNKNOWN_FIELD, "usage.foo"},
        {"{\"events\":[{\"kind\":\"m\",\"usage\":{\"tokens\":\"1\"}}]}", CH_INVALID_TYPE,
         "events[0].usage.tokens"},
        {"{\"kind\":\"m\",\"expect_seq\":-1}", CH_INVALID_VALUE, "expect_seq"},
        {"{\"kind\":\"m\",\"expect_seq\":\"0\"}", CH_INVALID_TYPE, "expect_seq"},
        {"{\"kind\":\"m\",\"expect_seq\":0.5}", CH_INVALID_TYPE, "expect_seq"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_fail(db, op, TENANT, id, NULL, cases[i].body, cases[i].want, cases[i].field);
    expect_fail(db, op, TENANT, id, NULL, NULL, CH_BAD_REQUEST, NULL);

    /* role: at most 64 bytes */
    char body[256], role[80];
    memset(role, 'r', sizeof(role));
    role[65] = '\0';
    snprintf(body, sizeof(body), "{\"kind\":\"m\",\"role\":\"%s\"}", role);
    expect_fail(db, op, TENANT, id, NULL, body, CH_INVALID_VALUE, "role");

    /* 1001 events: refused as a whole */
    json_t *events = json_array();
    for (int i = 0; i < 1001; i++)
        json_array_append_new(events, json_pack("{s:s}", "kind", "m"));
    json_t *b = json_pack("{s:o}", "events", events);
    ch_err e;
    assert_int_equal(run_json(db, op, TENANT, id, NULL, b, NULL, &e), CH_INVALID_VALUE);
    assert_string_equal(e.field, "events");
    json_decref(b);

    /* unknown session */
    char ghost[CH_ID_MAX];
    ch_id_new("sess", ghost);
    expect_fail(db, op, TENANT, ghost, NULL, "{\"kind\":\"m\"}", CH_NOT_FOUND, NULL);
    expect_fail(db, op, TENANT, "garbage", NULL, "{\"kind\":\"m\"}", CH_NOT_FOUND, NULL);

    /* Every refusal left the session untouched. */
    assert_int_equal(session_seq(db, TENANT, id, st), 0);
    assert_string_equal(st, "open");
    json_t *page = events_page(db, TENANT, id, 0, 100, false);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 0);
    json_decref(page);

    /* Kind characters that are allowed. */
    json_t *res = NULL;
    assert_int_equal(run(db, op, TENANT, id, NULL, "{\"kind\":\"a-z_0.9\"}", &res, NULL), CH_OK);
    json_decref(res);
}

/* ---- group commit ---------------------------------------------------------------- */

#define GC_THREADS 4
#define GC_ROUNDS 40

typedef struct gc_shared {
    ch_db *db;
    atomic_int done;
    atomic_int mismatches;
    atomic_int submit_failures;
    int total;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} gc_shared;

typedef struct gc_thread {
    gc_shared *sh;
    char id[CH_ID_MAX];
    char ghost[CH_ID_MAX];
    char key[32];
} gc_thread;

typedef struct gc_req {
    ch_req req;
    gc_shared *sh;
    ch_status want;
} gc_req;

static void gc_done(ch_req *req)
{
    gc_req *g = req->udata;
    gc_shared *sh = g->sh;
    if (req->err.status != g->want || (req->err.status == CH_OK) != (req->result != NULL))
        atomic_fetch_add(&sh->mismatches, 1);
    ch_req_dispose(req);
    free(g);
    pthread_mutex_lock(&sh->mu);
    if (atomic_fetch_add(&sh->done, 1) + 1 == sh->total)
        pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

static void gc_submit(gc_thread *t, ch_op op, const char *id, char *key, const char *body_text,
                      ch_status want)
{
    gc_req *g = calloc(1, sizeof(*g));
    json_t *body = json_loads(body_text, 0, NULL);
    if (g == NULL || body == NULL) {
        atomic_fetch_add(&t->sh->submit_failures, 1);
        free(g);
        json_decref(body);
        return;
    }
    g->sh = t->sh;
    g->want = want;
    g->req.op = op;
    snprintf(g->req.tenant, sizeof(g->req.tenant), "%s", TENANT);
    snprintf(g->req.id, sizeof(g->req.id), "%s", id);
    g->req.key = key;
    g->req.body = body;
    g->req.done = gc_done;
    g->req.udata = g;
    if (ch_submit(t->sh->db, &g->req) != CH_OK) {
        atomic_fetch_add(&t->sh->submit_failures, 1);
        ch_req_dispose(&g->req);
        free(g);
    }
    json_decref(body); /* ch_submit took its own reference */
}

static void *gc_main(void *arg)
{
    gc_thread *t = arg;
    char body[128];
    for (int i = 0; i < GC_ROUNDS; i++) {
        /* succeeds: one event whose content is the round number */
        snprintf(body, sizeof(body), "{\"kind\":\"message\",\"content\":%d}", i);
        gc_submit(t, CH_OP_SESSION_APPEND, t->id, NULL, body, CH_OK);
        /* fails in exec: expect_seq far ahead */
        gc_submit(t, CH_OP_SESSION_APPEND, t->id, NULL,
                  "{\"kind\":\"bad\",\"expect_seq\":1000000,\"usage\":{\"tokens\":99}}",
                  CH_SEQ_CONFLICT);
        /* fails in exec: unknown session */
        gc_submit(t, CH_OP_SESSION_APPEND, t->ghost, NULL, "{\"kind\":\"bad\"}", CH_NOT_FOUND);
        /* fails in exec: active sessions cannot be archived */
        gc_submit(t, CH_OP_SESSION_ARCHIVE, t->id, NULL, "{}", CH_INVALID_TRANSITION);
        /* succeeds: a fact holding the round number */
        snprintf(body, sizeof(body), "{\"value\":%d}", i);
        gc_submit(t, CH_OP_FACT_PUT, t->id, t->key, body, CH_OK);
        /* fails in exec: deleting a fact that does not exist */
        gc_submit(t, CH_OP_FACT_DELETE, t->id, "missing", "{}", CH_NOT_FOUND);
    }
    return NULL;
}

static uint64_t metric(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    if (p == NULL)
        fail_msg("metric %s missing", name);
    p = strchr(p, ' ');
    assert_non_null(p);
    return strtoull(p + 1, NULL, 10);
}

static void test_group_commit_isolation(void **state)
{
    fixture *f = *state;
    gc_shared sh;
    gc_thread t[GC_THREADS];
    pthread_t th[GC_THREADS];
    memset(&sh, 0, sizeof(sh));
    sh.db = f->db;
    sh.total = GC_THREADS * GC_ROUNDS * 6;
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.cv, NULL);
    for (int i = 0; i < GC_THREADS; i++) {
        memset(&t[i], 0, sizeof(t[i]));
        t[i].sh = &sh;
        create_session(f->db, TENANT, NULL, t[i].id);
        ch_id_new("sess", t[i].ghost);
        snprintf(t[i].key, sizeof(t[i].key), "round");
        /* seq 1: makes the session active */
        json_t *res = NULL;
        assert_int_equal(run(f->db, CH_OP_SESSION_APPEND, TENANT, t[i].id, NULL,
                             "{\"kind\":\"start\"}", &res, NULL),
                         CH_OK);
        json_decref(res);
    }
    for (int i = 0; i < GC_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, gc_main, &t[i]), 0);
    for (int i = 0; i < GC_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(atomic_load(&sh.submit_failures), 0);
    pthread_mutex_lock(&sh.mu);
    while (atomic_load(&sh.done) < sh.total)
        pthread_cond_wait(&sh.cv, &sh.mu);
    pthread_mutex_unlock(&sh.mu);
    assert_int_equal(atomic_load(&sh.done), sh.total);
    assert_int_equal(atomic_load(&sh.mismatches), 0);

    for (int i = 0; i < GC_THREADS; i++) {
        /* Exactly the successful appends, in submission order; nothing of the
         * failed ones (no usage, no extra events, no state change). */
        json_t *s = get_session(f->db, TENANT, t[i].id);
        assert_int_equal(jint(s, "seq"), 1 + GC_ROUNDS);
        assert_string_equal(jstr(s, "state"), "active");
        assert_int_equal(jint(json_object_get(s, "usage"), "tokens"), 0);
        json_decref(s);
        json_t *page = events_page(f->db, TENANT, t[i].id, 1, 1000, false);
        json_t *evs = json_object_get(page, "events");
        assert_int_equal(json_array_size(evs), GC_ROUNDS);
        for (int r = 0; r < GC_ROUNDS; r++) {
            json_t *ev = json_array_get(evs, (size_t)r);
            assert_int_equal(jint(ev, "seq"), 2 + r);
            assert_string_equal(jstr(ev, "kind"), "message");
            assert_int_equal(jint(ev, "content"), r);
        }
        json_decref(page);
        json_t *fact = NULL;
        ch_err e;
        assert_int_equal(ch_fact_get(f->db, TENANT, t[i].id, "round", &fact, &e), CH_OK);
        assert_int_equal(json_integer_value(json_object_get(fact, "value")), GC_ROUNDS - 1);
        json_decref(fact);
    }

    /* The writes really were grouped: fewer commits than requests. */
    ch_buf buf = {0};
    ch_db_render_metrics(f->db, &buf);
    ch_buf_append(&buf, "", 1);
    uint64_t commits = metric(buf.data, "charter_commit_batch_size_count");
    uint64_t reqs = metric(buf.data, "charter_commit_batch_size_sum");
    assert_true(reqs >= (uint64_t)sh.total);
    assert_true(commits < reqs);
    ch_buf_free(&buf);

    pthread_mutex_destroy(&sh.mu);
    pthread_cond_destroy(&sh.cv);
}

/* Reads see every acknowledged write: threads that append with ch_call() and read
 * straight back (each read on whichever pooled reader connection it gets) always find
 * what they just wrote, while the other threads keep the writer busy. */
#define RW_THREADS 4
#define RW_ROUNDS 30

typedef struct rw_thread {
    ch_db *db;
    char id[CH_ID_MAX];
    int errors;
} rw_thread;

static void *rw_main(void *arg)
{
    rw_thread *t = arg;
    for (int i = 0; i < RW_ROUNDS; i++) {
        ch_req req;
        memset(&req, 0, sizeof(req));
        req.op = CH_OP_SESSION_APPEND;
        snprintf(req.tenant, sizeof(req.tenant), TENANT);
        snprintf(req.id, sizeof(req.id), "%s", t->id);
        req.body = json_pack("{s:s, s:i}", "kind", "message", "content", i + 1);
        json_t *body = req.body;
        ch_status st = ch_call(t->db, &req);
        int64_t last =
            st == CH_OK ? json_integer_value(json_object_get(req.result, "last_seq")) : -1;
        ch_req_dispose(&req);
        json_decref(body);
        if (st != CH_OK || last != i + 1) {
            t->errors++;
            continue;
        }
        json_t *out = NULL;
        ch_err e;
        if (ch_session_get(t->db, TENANT, t->id, &out, &e) != CH_OK ||
            json_integer_value(json_object_get(out, "seq")) != last)
            t->errors++;
        json_decref(out);
        out = NULL;
        if (ch_events_list(t->db, TENANT, t->id, last - 1, 10, false, &out, &e) != CH_OK ||
            json_array_size(json_object_get(out, "events")) != 1 ||
            json_integer_value(json_object_get(json_array_get(json_object_get(out, "events"), 0),
                                               "content")) != i + 1)
            t->errors++;
        json_decref(out);
    }
    return NULL;
}

static void test_read_your_writes(void **state)
{
    fixture *f = *state;
    rw_thread t[RW_THREADS];
    pthread_t th[RW_THREADS];
    for (int i = 0; i < RW_THREADS; i++) {
        memset(&t[i], 0, sizeof(t[i]));
        t[i].db = f->db;
        create_session(f->db, TENANT, NULL, t[i].id);
    }
    for (int i = 0; i < RW_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, rw_main, &t[i]), 0);
    for (int i = 0; i < RW_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < RW_THREADS; i++) {
        assert_int_equal(t[i].errors, 0);
        assert_int_equal(session_seq(f->db, TENANT, t[i].id, NULL), RW_ROUNDS);
    }
}

typedef struct wait_one {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
} wait_one;

static void wait_done(ch_req *req)
{
    wait_one *w = req->udata;
    pthread_mutex_lock(&w->mu);
    w->calls++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void test_submit_contract(void **state)
{
    fixture *f = *state;
    char id[CH_ID_MAX];
    create_session(f->db, TENANT, NULL, id);
    wait_one w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

    /* A request refused by validation returns its error and never calls done. */
    ch_req bad;
    memset(&bad, 0, sizeof(bad));
    bad.op = CH_OP_SESSION_APPEND;
    snprintf(bad.tenant, sizeof(bad.tenant), TENANT);
    snprintf(bad.id, sizeof(bad.id), "%s", id);
    bad.body = jparse("{\"kind\":\"lifecycle\"}");
    bad.done = wait_done;
    bad.udata = &w;
    assert_int_equal(ch_submit(f->db, &bad), CH_RESERVED_KIND);
    assert_int_equal(bad.err.status, CH_RESERVED_KIND);
    assert_string_equal(bad.err.field, "kind");

    /* No done callback, or an unknown op: refused. */
    ch_req nodone;
    memset(&nodone, 0, sizeof(nodone));
    nodone.op = CH_OP_SESSION_CREATE;
    snprintf(nodone.tenant, sizeof(nodone.tenant), TENANT);
    nodone.body = jparse("{\"user\":\"u\",\"agent\":\"a\"}");
    assert_int_not_equal(ch_submit(f->db, &nodone), CH_OK);
    assert_int_not_equal(nodone.err.status, CH_OK);
    ch_req unknown;
    memset(&unknown, 0, sizeof(unknown));
    unknown.op = CH__OP_COUNT;
    unknown.done = wait_done;
    unknown.udata = &w;
    assert_int_equal(ch_submit(f->db, &unknown), CH_BAD_REQUEST);
    ch_req unknown2;
    memset(&unknown2, 0, sizeof(unknown2));
    unknown2.op = (ch_op)1000;
    assert_int_equal(ch_call(f->db, &unknown2), CH_BAD_REQUEST);

    /* A good request: done is called exactly once, after which the write is visible. */
    ch_req good;
    memset(&good, 0, sizeof(good));
    good.op = CH_OP_SESSION_APPEND;
    snprintf(good.tenant, sizeof(good.tenant), TENANT);
    snprintf(good.id, sizeof(good.id), "%s", id);
    good.body = jparse("{\"kind\":\"message\"}");
    good.done = wait_done;
    good.udata = &w;
    assert_int_equal(ch_submit(f->db, &good), CH_OK);
    pthread_mutex_lock(&w.mu);
    while (w.calls < 1)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    assert_int_equal(good.err.status, CH_OK);
    assert_int_equal(jint(good.result, "first_seq"), 1);
    assert_int_equal(session_seq(f->db, TENANT, id, NULL), 1);

    /* Flush the writer once more (ch_call), then check done was not called again. */
    json_t *res = NULL;
    assert_int_equal(
        run(f->db, CH_OP_SESSION_APPEND, TENANT, id, NULL, "{\"kind\":\"m\"}", &res, NULL), CH_OK);
    json_decref(res);
    pthread_mutex_lock(&w.mu);
    assert_int_equal(w.calls, 1);
    pthread_mutex_unlock(&w.mu);

    json_t *bodies[] = {bad.body, nodone.body, good.body};
    ch_req_dispose(&bad);
    ch_req_dispose(&nodone);
    ch_req_dispose(&unknown);
    ch_req_dispose(&unknown2);
    ch_req_dispose(&good);
    for (size_t i = 0; i < 3; i++)
        json_decref(bodies[i]);
}

/* ---- lifecycle ------------------------------------------------------------------- */

static const char *const state_names[] = {"open", "active", "paused", "closed", "archived"};
#define NSTATES 5

/* Creates a session and drives it into state `want` (one of state_names). */
static void make_in_state(ch_db *db, const char *want, char id[CH_ID_MAX])
{
    json_t *res = NULL;
    create_session(db, TENANT, NULL, id);
    if (strcmp(want, "open") == 0)
        return;
    if (strcmp(want, "active") == 0) {
        append_n(db, TENANT, id, 1, 0);
    } else if (strcmp(want, "paused") == 0) {
        append_n(db, TENANT, id, 1, 0);
        assert_int_equal(run(db, CH_OP_SESSION_PAUSE, TENANT, id, NULL, NULL, &res, NULL), CH_OK);
    } else if (strcmp(want, "closed") == 0) {
        append_n(db, TENANT, id, 2, 0);
        assert_int_equal(run(db, CH_OP_SESSION_CLOSE, TENANT, id, NULL, NULL, &res, NULL), CH_OK);
    } else if (strcmp(want, "archived") == 0) {
        assert_int_equal(run(db, CH_OP_SESSION_CLOSE, TENANT, id, NULL, NULL, &res, NULL), CH_OK);
        json_decref(res);
        assert_int_equal(run(db, CH_OP_SESSION_ARCHIVE, TENANT, id, NULL, NULL, &res, NULL), CH_OK);
    } else {
        fail_msg("unknown state %s", want);
    }
    json_decref(res);
    char st[16];
    session_seq(db, TENANT, id, st);
    assert_string_equal(st, want);
}

static void test_lifecycle_matrix(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    static const struct {
        ch_op op;
        const char *verb;
        const char *to;
        const char *from[NSTATES]; /* NULL-terminated */
    } calls[] = {
        {CH_OP_SESSION_PAUSE, "pause", "paused", {"open", "active", NULL}},
        {CH_OP_SESSION_RESUME, "resume", "active", {"paused", NULL}},
        {CH_OP_SESSION_CLOSE, "close", "closed", {"open", "active", "paused", NULL}},
        {CH_OP_SESSION_ARCHIVE, "archive", "archived", {"closed", NULL}},
    };
    int successes = 0, refusals = 0;
    for (size_t c = 0; c < sizeof(calls) / sizeof(calls[0]); c++) {
        for (int s = 0; s < NSTATES; s++) {
            const char *from = state_names[s];
            bool allowed = false;
            for (int k = 0; calls[c].from[k] != NULL; k++)
                allowed = allowed || strcmp(calls[c].from[k], from) == 0;
            char id[CH_ID_MAX], st[16];
            make_in_state(db, from, id);
            json_t *before = get_session(db, TENANT, id);
            int64_t seq0 = jint(before, "seq");
            json_t *res = NULL;
            ch_err e;
            /* Half of the calls give a reason (resume takes none). */
            const char *body = (s % 2 == 0 && calls[c].op != CH_OP_SESSION_RESUME)
                                   ? "{\"reason\":\"because\"}"
                                   : (s % 2 == 0 ? "{}" : NULL);
            ch_status rc = run(db, calls[c].op, TENANT, id, NULL, body, &res, &e);
            if (allowed) {
                if (rc != CH_OK)
                    fail_msg("%s from %s: %s", calls[c].verb, from, e.message);
                successes++;
                assert_string_equal(jstr(res, "state"), calls[c].to);
                assert_int_equal(jint(res, "seq"), seq0 + 1);
                assert_string_equal(jstr(res, "id"), id);
                json_t *now = get_session(db, TENANT, id);
                assert_true(json_equal(now, res));
                json_decref(now);
                /* one lifecycle event {from, to[, reason]} at seq0 + 1 */
                json_t *page = events_page(db, TENANT, id, seq0, 100, false);
                json_t *evs = json_object_get(page, "events");
                assert_int_equal(json_array_size(evs), 1);
                json_t *ev = json_array_get(evs, 0);
                assert_int_equal(jint(ev, "seq"), seq0 + 1);
                assert_string_equal(jstr(ev, "kind"), "lifecycle");
                json_t *content = json_object_get(ev, "content");
                assert_string_equal(jstr(content, "from"), from);
                assert_string_equal(jstr(content, "to"), calls[c].to);
                if (body != NULL && strstr(body, "reason") != NULL)
                    assert_string_equal(jstr(content, "reason"), "because");
                else
                    assert_null(json_object_get(content, "reason"));
                json_decref(page);
            } else {
                if (rc != CH_INVALID_TRANSITION)
                    fail_msg("%s from %s: got %s, want invalid_transition", calls[c].verb, from,
                             ch_status_name(rc));
                refusals++;
                assert_string_equal(e.state, from);
                json_t *now = get_session(db, TENANT, id);
                assert_true(json_equal(now, before)); /* seq, state, updated_at */
                json_decref(now);
                assert_int_equal(session_seq(db, TENANT, id, st), seq0);
                assert_string_equal(st, from);
            }
            json_decref(res);
            json_decref(before);
        }
    }
    assert_int_equal(successes, 2 + 1 + 3 + 1);
    assert_int_equal(refusals, 4 * NSTATES - successes);
}

static void test_lifecycle_sequence(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX], st[16];
    json_t *res = NULL;
    ch_err e;
    create_session(db, TENANT, NULL, id);
    /* open → paused → active → paused → active → closed → archived */
    const struct {
        ch_op op;
        const char *to;
    } steps[] = {
        {CH_OP_SESSION_PAUSE, "paused"}, {CH_OP_SESSION_RESUME, "active"},
        {CH_OP_SESSION_PAUSE, "paused"}, {CH_OP_SESSION_RESUME, "active"},
        {CH_OP_SESSION_CLOSE, "closed"}, {CH_OP_SESSION_ARCHIVE, "archived"},
    };
    const char *from = "open";
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        assert_int_equal(run(db, steps[i].op, TENANT, id, NULL, NULL, &res, NULL), CH_OK);
        assert_string_equal(jstr(res, "state"), steps[i].to);
        json_decref(res);
        json_t *page = events_page(db, TENANT, id, (int64_t)i, 1, false);
        json_t *ev = json_array_get(json_object_get(page, "events"), 0);
        assert_int_equal(jint(ev, "seq"), (int64_t)i + 1);
        assert_string_equal(jstr(json_object_get(ev, "content"), "from"), from);
        assert_string_equal(jstr(json_object_get(ev, "content"), "to"), steps[i].to);
        json_decref(page);
        from = steps[i].to;
    }
    assert_int_equal(session_seq(db, TENANT, id, st), 6);
    assert_string_equal(st, "archived");

    /* body validation for lifecycle calls */
    char id2[CH_ID_MAX];
    create_session(db, TENANT, NULL, id2);
    expect_fail(db, CH_OP_SESSION_PAUSE, TENANT, id2, NULL, "{\"why\":\"x\"}", CH_UNKNOWN_FIELD,
                "why");
    expect_fail(db, CH_OP_SESSION_CLOSE, TENANT, id2, NULL, "{\"reason\":5}", CH_INVALID_TYPE,
                "reason");
    expect_fail(db, CH_OP_SESSION_ARCHIVE, TENANT, id2, NULL, "{\"reason\":[]}", CH_INVALID_TYPE,
                "reason");
    expect_fail(db, CH_OP_SESSION_RESUME, TENANT, id2, NULL, "{\"reason\":\"x\",\"y\":1}",
                CH_UNKNOWN_FIELD, "y");
    char reason[1100], body[1200];
    memset(reason, 'r', sizeof(reason));
    reason[1025] = '\0';
    snprintf(body, sizeof(body), "{\"reason\":\"%s\"}", reason);
    expect_fail(db, CH_OP_SESSION_PAUSE, TENANT, id2, NULL, body, CH_INVALID_VALUE, "reason");
    assert_int_equal(session_seq(db, TENANT, id2, st), 0);
    assert_string_equal(st, "open");
    reason[1024] = '\0';
    snprintf(body, sizeof(body), "{\"reason\":\"%s\"}", reason);
    assert_int_equal(run(db, CH_OP_SESSION_PAUSE, TENANT, id2, NULL, body, &res, NULL), CH_OK);
    json_decref(res);
    /* unknown session */
    char ghost[CH_ID_MAX];
    ch_id_new("sess", ghost);
    assert_int_equal(run(db, CH_OP_SESSION_CLOSE, TENANT, ghost, NULL, NULL, NULL, &e),
                     CH_NOT_FOUND);
}

/* Resume takes no body fields (charter.h: "body: {} or NULL"; docs/api.md: only
 * close, pause and archive take an optional {reason}), so a reason is an unknown
 * field and changes nothing. */
/* Every lifecycle call takes an optional reason, recorded in its lifecycle event;
 * any other field is refused and changes nothing. */
static void test_transition_reason(void **state)
{
    fixture *f = *state;
    char id[CH_ID_MAX], st[16];
    json_t *res = NULL, *out = NULL;
    make_in_state(f->db, "paused", id);
    int64_t seq = session_seq(f->db, TENANT, id, NULL);
    expect_fail(f->db, CH_OP_SESSION_RESUME, TENANT, id, NULL, "{\"why\":\"back\"}",
                CH_UNKNOWN_FIELD, "why");
    assert_int_equal(session_seq(f->db, TENANT, id, st), seq);
    assert_string_equal(st, "paused");
    assert_int_equal(
        run(f->db, CH_OP_SESSION_RESUME, TENANT, id, NULL, "{\"reason\":\"back\"}", &res, NULL),
        CH_OK);
    json_decref(res);
    assert_int_equal(ch_events_list(f->db, TENANT, id, seq, 10, false, &out, NULL), CH_OK);
    json_t *ev = json_array_get(json_object_get(out, "events"), 0);
    assert_string_equal(json_string_value(json_object_get(ev, "kind")), "lifecycle");
    json_t *content = json_object_get(ev, "content");
    assert_string_equal(json_string_value(json_object_get(content, "to")), "active");
    assert_string_equal(json_string_value(json_object_get(content, "reason")), "back");
    json_decref(out);
}

static void test_refused_in_state(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    const char *refusing[] = {"paused", "closed", "archived"};
    for (size_t i = 0; i < 3; i++) {
        char id[CH_ID_MAX];
        make_in_state(db, refusing[i], id);
        json_t *before = get_session(db, TENANT, id);
        ch_err e;
        assert_int_equal(
            run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL, "{\"kind\":\"m\"}", NULL, &e),
            CH_INVALID_STATE);
        assert_string_equal(e.state, refusing[i]);
        assert_int_equal(run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL,
                             "{\"events\":[{\"kind\":\"m\"}]}", NULL, &e),
                         CH_INVALID_STATE);
        assert_string_equal(e.state, refusing[i]);
        json_t *after = get_session(db, TENANT, id);
        assert_true(json_equal(before, after));
        json_decref(after);
        json_decref(before);
    }

    /* Facts: writable in every state but archived. */
    for (int s = 0; s < NSTATES; s++) {
        char id[CH_ID_MAX];
        make_in_state(db, state_names[s], id);
        json_t *res = NULL;
        ch_err e;
        ch_status rc = run(db, CH_OP_FACT_PUT, TENANT, id, "k", "{\"value\":1}", &res, &e);
        json_decref(res);
        res = NULL;
        if (strcmp(state_names[s], "archived") == 0) {
            assert_int_equal(rc, CH_INVALID_STATE);
            assert_string_equal(e.state, "archived");
            assert_int_equal(run(db, CH_OP_FACT_DELETE, TENANT, id, "k", NULL, NULL, &e),
                             CH_INVALID_STATE);
            assert_string_equal(e.state, "archived");
            json_t *facts = NULL;
            assert_int_equal(ch_facts_list(db, TENANT, id, &facts, &e), CH_OK);
            assert_int_equal(json_object_size(json_object_get(facts, "facts")), 0);
            json_decref(facts);
        } else {
            if (rc != CH_OK)
                fail_msg("fact put in %s: %s", state_names[s], e.message);
            assert_int_equal(run(db, CH_OP_FACT_DELETE, TENANT, id, "k", NULL, &res, &e), CH_OK);
            json_decref(res);
        }
    }

    /* Compaction: allowed in every state but archived. */
    for (int s = 0; s < NSTATES; s++) {
        if (strcmp(state_names[s], "open") == 0)
            continue; /* seq 0: nothing to compact */
        char id[CH_ID_MAX];
        make_in_state(db, state_names[s], id);
        json_t *res = NULL;
        ch_err e;
        ch_status rc = run(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                           "{\"through_seq\":1,\"summary\":\"s\"}", &res, &e);
        json_decref(res);
        if (strcmp(state_names[s], "archived") == 0) {
            assert_int_equal(rc, CH_INVALID_STATE);
            assert_string_equal(e.state, "archived");
        } else if (rc != CH_OK) {
            fail_msg("compact in %s: %s", state_names[s], e.message);
        }
    }
}

/* ---- compaction ------------------------------------------------------------------ */

/* Asserts events[i] is an original message event with content == its seq. */
static void assert_originals(const json_t *evs, int64_t first, int64_t last)
{
    assert_int_equal(json_array_size(evs), (size_t)(last - first + 1));
    for (int64_t s = first; s <= last; s++) {
        json_t *ev = json_array_get(evs, (size_t)(s - first));
        assert_int_equal(jint(ev, "seq"), s);
        assert_string_equal(jstr(ev, "kind"), "message");
        assert_int_equal(jint(ev, "content"), s);
    }
}

static void test_compaction(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX];
    json_t *res = NULL, *page, *evs;
    create_session(db, TENANT, NULL, id);
    append_n(db, TENANT, id, 10, 1); /* seq 1..10, content == seq */
    assert_int_equal(
        run(db, CH_OP_FACT_PUT, TENANT, id, "goal", "{\"value\":{\"g\":1}}", &res, NULL), CH_OK);
    json_decref(res);

    assert_int_equal(run(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                         "{\"through_seq\":4,\"summary\":\"S1\"}", &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "summary_seq"), 4);
    assert_int_equal(jint(res, "archived"), 4);
    json_decref(res);
    json_t *s = get_session(db, TENANT, id);
    assert_int_equal(jint(s, "summary_seq"), 4);
    assert_int_equal(jint(s, "seq"), 10);
    assert_string_equal(jstr(s, "state"), "active");
    json_decref(s);

    /* live log: the summary at seq 4, then 5..10 */
    page = events_page(db, TENANT, id, 0, 100, false);
    evs = json_object_get(page, "events");
    assert_int_equal(json_array_size(evs), 7);
    assert_int_equal(jint(json_array_get(evs, 0), "seq"), 4);
    assert_string_equal(jstr(json_array_get(evs, 0), "kind"), "summary");
    assert_string_equal(jstr(json_array_get(evs, 0), "content"), "S1");
    for (int i = 1; i < 7; i++) {
        assert_int_equal(jint(json_array_get(evs, (size_t)i), "seq"), 4 + i);
        assert_int_equal(jint(json_array_get(evs, (size_t)i), "content"), 4 + i);
    }
    json_decref(page);
    /* live log after the summary */
    page = events_page(db, TENANT, id, 4, 100, false);
    assert_int_equal(jint(json_array_get(json_object_get(page, "events"), 0), "seq"), 5);
    json_decref(page);
    /* original history: 1..10 */
    page = events_page(db, TENANT, id, 0, 100, true);
    assert_originals(json_object_get(page, "events"), 1, 10);
    json_decref(page);

    /* through_seq must be after the current summary and at most seq */
    expect_fail(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                "{\"through_seq\":4,\"summary\":\"x\"}", CH_INVALID_VALUE, "through_seq");
    expect_fail(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                "{\"through_seq\":2,\"summary\":\"x\"}", CH_INVALID_VALUE, "through_seq");
    expect_fail(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                "{\"through_seq\":11,\"summary\":\"x\"}", CH_INVALID_VALUE, "through_seq");

    /* second compaction replaces the summary */
    assert_int_equal(run(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                         "{\"through_seq\":7,\"summary\":{\"text\":\"S2\"}}", &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "summary_seq"), 7);
    assert_int_equal(jint(res, "archived"), 3); /* 5, 6, 7; the old summary is dropped */
    json_decref(res);
    page = events_page(db, TENANT, id, 0, 100, false);
    evs = json_object_get(page, "events");
    const int64_t live[] = {7, 8, 9, 10};
    assert_seqs(evs, live, 4);
    assert_string_equal(jstr(json_array_get(evs, 0), "kind"), "summary");
    assert_string_equal(jstr(json_object_get(json_array_get(evs, 0), "content"), "text"), "S2");
    for (size_t i = 0; i < json_array_size(evs); i++) {
        if (i > 0)
            assert_string_equal(jstr(json_array_get(evs, i), "kind"), "message");
    }
    json_decref(page);
    /* the archive holds 1..7 contiguous (no summary), then the live 8..10 */
    page = events_page(db, TENANT, id, 0, 100, true);
    assert_originals(json_object_get(page, "events"), 1, 10);
    json_decref(page);
    /* paging through the original history */
    page = events_page(db, TENANT, id, 5, 3, true);
    assert_originals(json_object_get(page, "events"), 6, 8);
    assert_int_equal(json_integer_value(json_object_get(page, "next_after")), 8);
    json_decref(page);
    page = events_page(db, TENANT, id, 8, 3, true);
    assert_originals(json_object_get(page, "events"), 9, 10);
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);

    /* facts untouched */
    json_t *facts = NULL;
    ch_err e;
    assert_int_equal(ch_facts_list(db, TENANT, id, &facts, &e), CH_OK);
    json_t *want = jparse("{\"facts\":{\"goal\":{\"g\":1}}}");
    assert_true(json_equal(facts, want));
    json_decref(want);
    json_decref(facts);

    /* appends continue after seq; compacting through the very last seq leaves only the
     * summary live */
    assert_int_equal(run(db, CH_OP_SESSION_APPEND, TENANT, id, NULL,
                         "{\"kind\":\"message\",\"content\":11}", &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "first_seq"), 11);
    json_decref(res);
    assert_int_equal(run(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                         "{\"through_seq\":11,\"summary\":\"S3\"}", &res, NULL),
                     CH_OK);
    assert_int_equal(jint(res, "archived"), 4); /* 8..11 */
    json_decref(res);
    page = events_page(db, TENANT, id, 0, 100, false);
    const int64_t only[] = {11};
    assert_seqs(json_object_get(page, "events"), only, 1);
    assert_string_equal(jstr(json_array_get(json_object_get(page, "events"), 0), "content"), "S3");
    json_decref(page);
    page = events_page(db, TENANT, id, 0, 100, true);
    assert_originals(json_object_get(page, "events"), 1, 11);
    json_decref(page);
    assert_int_equal(session_seq(db, TENANT, id, NULL), 11);
}

static void test_compaction_validation(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    const ch_op op = CH_OP_SESSION_COMPACT;
    char id[CH_ID_MAX];
    create_session(db, TENANT, NULL, id);
    /* nothing to compact yet */
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":1,\"summary\":\"x\"}", CH_INVALID_VALUE,
                "through_seq");
    append_n(db, TENANT, id, 3, 1);
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":0,\"summary\":\"x\"}", CH_INVALID_VALUE,
                "through_seq");
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":-2,\"summary\":\"x\"}",
                CH_INVALID_VALUE, "through_seq");
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":\"2\",\"summary\":\"x\"}",
                CH_INVALID_TYPE, "through_seq");
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":1.5,\"summary\":\"x\"}",
                CH_INVALID_TYPE, "through_seq");
    expect_fail(db, op, TENANT, id, NULL, "{\"summary\":\"x\"}", CH_MISSING_FIELD, "through_seq");
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":2}", CH_MISSING_FIELD, "summary");
    expect_fail(db, op, TENANT, id, NULL, "{\"through_seq\":2,\"summary\":\"x\",\"z\":1}",
                CH_UNKNOWN_FIELD, "z");
    expect_fail(db, op, TENANT, id, NULL, NULL, CH_BAD_REQUEST, NULL);
    char ghost[CH_ID_MAX];
    ch_id_new("sess", ghost);
    expect_fail(db, op, TENANT, ghost, NULL, "{\"through_seq\":1,\"summary\":\"x\"}", CH_NOT_FOUND,
                NULL);
    /* nothing was compacted */
    json_t *s = get_session(db, TENANT, id);
    assert_int_equal(jint(s, "summary_seq"), 0);
    assert_int_equal(jint(s, "seq"), 3);
    json_decref(s);
    json_t *page = events_page(db, TENANT, id, 0, 100, false);
    assert_originals(json_object_get(page, "events"), 1, 3);
    json_decref(page);
}

/* ---- facts ----------------------------------------------------------------------- */

static void test_facts(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX];
    json_t *res = NULL, *got = NULL, *want;
    ch_err e;
    create_session(db, TENANT, NULL, id);

    int64_t before = ch_now_ms();
    assert_int_equal(
        run(db, CH_OP_FACT_PUT, TENANT, id, "plan", "{\"value\":{\"a\":[1,2]}}", &res, NULL),
        CH_OK);
    assert_string_equal(jstr(res, "key"), "plan");
    want = jparse("{\"a\":[1,2]}");
    assert_true(json_equal(json_object_get(res, "value"), want));
    int64_t at = parse_time(jstr(res, "updated_at"));
    assert_true(at >= before && at <= ch_now_ms());
    assert_int_equal(ch_fact_get(db, TENANT, id, "plan", &got, &e), CH_OK);
    assert_true(json_equal(got, res));
    json_decref(got);
    json_decref(res);

    /* several keys, including ones that look like paths and non-ASCII ones */
    const char *keys[] = {
        "a/b", "../../etc/passwd", "with space", "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", "%2F", "null"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char body[64];
        snprintf(body, sizeof(body), "{\"value\":%zu}", i);
        assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, keys[i], body, &res, NULL), CH_OK);
        json_decref(res);
    }
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        assert_int_equal(ch_fact_get(db, TENANT, id, keys[i], &got, &e), CH_OK);
        assert_string_equal(jstr(got, "key"), keys[i]);
        assert_int_equal(json_integer_value(json_object_get(got, "value")), (json_int_t)i);
        json_decref(got);
    }
    /* null and scalars are values too */
    assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, "nothing", "{\"value\":null}", &res, NULL),
                     CH_OK);
    json_decref(res);
    assert_int_equal(ch_fact_get(db, TENANT, id, "nothing", &got, &e), CH_OK);
    assert_true(json_is_null(json_object_get(got, "value")));
    json_decref(got);

    /* overwrite */
    assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, "plan", "{\"value\":\"v2\"}", &res, NULL),
                     CH_OK);
    json_decref(res);
    assert_int_equal(ch_fact_get(db, TENANT, id, "plan", &got, &e), CH_OK);
    assert_string_equal(jstr(got, "value"), "v2");
    json_decref(got);

    json_t *list = NULL;
    assert_int_equal(ch_facts_list(db, TENANT, id, &list, &e), CH_OK);
    json_t *facts = json_object_get(list, "facts");
    assert_int_equal(json_object_size(facts), 8);
    assert_string_equal(jstr(facts, "plan"), "v2");
    assert_true(json_is_null(json_object_get(facts, "nothing")));
    assert_int_equal(json_integer_value(json_object_get(facts, "a/b")), 0);
    json_decref(list);

    /* delete */
    assert_int_equal(run(db, CH_OP_FACT_DELETE, TENANT, id, "plan", NULL, &res, NULL), CH_OK);
    assert_string_equal(jstr(res, "key"), "plan");
    assert_true(json_is_true(json_object_get(res, "deleted")));
    json_decref(res);
    assert_int_equal(ch_fact_get(db, TENANT, id, "plan", &got, &e), CH_NOT_FOUND);
    assert_int_equal(run(db, CH_OP_FACT_DELETE, TENANT, id, "plan", NULL, NULL, &e), CH_NOT_FOUND);
    assert_int_equal(ch_fact_get(db, TENANT, id, "never", &got, &e), CH_NOT_FOUND);
    assert_int_equal(ch_facts_list(db, TENANT, id, &list, &e), CH_OK);
    assert_int_equal(json_object_size(json_object_get(list, "facts")), 7);
    assert_null(json_object_get(json_object_get(list, "facts"), "plan"));
    json_decref(list);

    /* body validation */
    expect_fail(db, CH_OP_FACT_PUT, TENANT, id, "k", "{}", CH_MISSING_FIELD, "value");
    expect_fail(db, CH_OP_FACT_PUT, TENANT, id, "k", "{\"value\":1,\"ttl\":5}", CH_UNKNOWN_FIELD,
                "ttl");
    expect_fail(db, CH_OP_FACT_PUT, TENANT, id, "k", NULL, CH_BAD_REQUEST, NULL);
    char ghost[CH_ID_MAX];
    ch_id_new("sess", ghost);
    expect_fail(db, CH_OP_FACT_PUT, TENANT, ghost, "k", "{\"value\":1}", CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_FACT_DELETE, TENANT, ghost, "k", NULL, CH_NOT_FOUND, NULL);
    assert_int_equal(ch_fact_get(db, TENANT, ghost, "k", &got, &e), CH_NOT_FOUND);
    assert_int_equal(ch_facts_list(db, TENANT, ghost, &list, &e), CH_NOT_FOUND);
    assert_int_equal(ch_fact_get(db, TENANT, id, "k", &got, &e), CH_NOT_FOUND);
    json_decref(want);
}

static void test_fact_limits(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX];
    json_t *res = NULL, *got = NULL;
    ch_err e;
    create_session(db, TENANT, NULL, id);

    /* A string of n characters serializes to n + 2 bytes. */
    char *text = malloc(64 * 1024);
    assert_non_null(text);
    memset(text, 'v', 64 * 1024);
    json_t *exact = json_pack("{s:s#}", "value", text, (int)(64 * 1024 - 2));
    json_t *over = json_pack("{s:s#}", "value", text, (int)(64 * 1024 - 1));
    free(text);
    assert_int_equal(run_json(db, CH_OP_FACT_PUT, TENANT, id, "big", exact, &res, &e), CH_OK);
    json_decref(res);
    assert_int_equal(ch_fact_get(db, TENANT, id, "big", &got, &e), CH_OK);
    assert_int_equal(json_string_length(json_object_get(got, "value")), 64 * 1024 - 2);
    json_decref(got);
    assert_int_equal(run_json(db, CH_OP_FACT_PUT, TENANT, id, "big2", over, NULL, &e),
                     CH_INVALID_VALUE);
    assert_string_equal(e.field, "value");
    assert_int_equal(ch_fact_get(db, TENANT, id, "big2", &got, &e), CH_NOT_FOUND);
    json_decref(exact);
    json_decref(over);

    /* keys: 1-256 bytes of valid UTF-8 */
    char key[300];
    memset(key, 'k', sizeof(key));
    key[256] = '\0';
    assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, key, "{\"value\":1}", &res, &e), CH_OK);
    json_decref(res);
    assert_int_equal(ch_fact_get(db, TENANT, id, key, &got, &e), CH_OK);
    json_decref(got);
    key[256] = 'k';
    key[257] = '\0';
    expect_fail(db, CH_OP_FACT_PUT, TENANT, id, key, "{\"value\":1}", CH_INVALID_VALUE, "key");
    expect_fail(db, CH_OP_FACT_DELETE, TENANT, id, key, NULL, CH_INVALID_VALUE, "key");
    expect_fail(db, CH_OP_FACT_PUT, TENANT, id, "", "{\"value\":1}", CH_INVALID_VALUE, "key");
    expect_fail(db, CH_OP_FACT_PUT, TENANT, id, NULL, "{\"value\":1}", CH_INVALID_VALUE, "key");
    expect_fail(db, CH_OP_FACT_DELETE, TENANT, id, "", NULL, CH_INVALID_VALUE, "key");
    const char *bad_utf8[] = {"\xff", "ab\xc3", "\xc0\xaf", "\xed\xa0\x80", "x\x80y"};
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
        expect_fail(db, CH_OP_FACT_PUT, TENANT, id, bad_utf8[i], "{\"value\":1}", CH_INVALID_VALUE,
                    "key");
        expect_fail(db, CH_OP_FACT_DELETE, TENANT, id, bad_utf8[i], NULL, CH_INVALID_VALUE, "key");
    }
    /* 256 bytes counted in bytes, not characters: 128 two-byte characters fit */
    char wide[300];
    for (int i = 0; i < 128; i++)
        memcpy(wide + 2 * i, "\xc3\xa9", 2);
    wide[256] = '\0';
    assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, wide, "{\"value\":2}", &res, &e), CH_OK);
    json_decref(res);

    json_t *list = NULL;
    assert_int_equal(ch_facts_list(db, TENANT, id, &list, &e), CH_OK);
    assert_int_equal(json_object_size(json_object_get(list, "facts")), 3);
    json_decref(list);
}

/* ---- bundle and paging ----------------------------------------------------------- */

static void test_bundle(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX];
    json_t *res = NULL, *b = NULL;
    ch_err e;
    create_session(db, TENANT, NULL, id);

    /* a fresh session */
    assert_int_equal(ch_bundle(db, TENANT, id, 1000, &b, &e), CH_OK);
    assert_string_equal(jstr(json_object_get(b, "session"), "id"), id);
    assert_int_equal(json_object_size(json_object_get(b, "facts")), 0);
    assert_true(json_is_null(json_object_get(b, "summary")));
    assert_int_equal(json_array_size(json_object_get(b, "events")), 0);
    assert_true(json_is_null(json_object_get(b, "next_after")));
    json_decref(b);

    append_n(db, TENANT, id, 5, 1);
    assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, "a", "{\"value\":1}", &res, NULL), CH_OK);
    json_decref(res);
    assert_int_equal(ch_bundle(db, TENANT, id, 1000, &b, &e), CH_OK);
    json_t *s = get_session(db, TENANT, id);
    assert_true(json_equal(json_object_get(b, "session"), s));
    json_decref(s);
    json_t *want = jparse("{\"a\":1}");
    assert_true(json_equal(json_object_get(b, "facts"), want));
    json_decref(want);
    assert_true(json_is_null(json_object_get(b, "summary")));
    assert_originals(json_object_get(b, "events"), 1, 5);
    assert_true(json_is_null(json_object_get(b, "next_after")));
    json_decref(b);

    assert_int_equal(ch_bundle(db, TENANT, id, 2, &b, &e), CH_OK);
    assert_originals(json_object_get(b, "events"), 1, 2);
    assert_int_equal(json_integer_value(json_object_get(b, "next_after")), 2);
    json_decref(b);
    assert_int_equal(ch_bundle(db, TENANT, id, 5, &b, &e), CH_OK);
    assert_originals(json_object_get(b, "events"), 1, 5);
    assert_true(json_is_null(json_object_get(b, "next_after")));
    json_decref(b);

    /* after a compaction: the summary, then the live events after it */
    assert_int_equal(run(db, CH_OP_SESSION_COMPACT, TENANT, id, NULL,
                         "{\"through_seq\":3,\"summary\":\"so far\"}", &res, NULL),
                     CH_OK);
    json_decref(res);
    assert_int_equal(ch_bundle(db, TENANT, id, 1000, &b, &e), CH_OK);
    json_t *sum = json_object_get(b, "summary");
    assert_int_equal(jint(sum, "seq"), 3);
    assert_string_equal(jstr(sum, "kind"), "summary");
    assert_string_equal(jstr(sum, "content"), "so far");
    assert_originals(json_object_get(b, "events"), 4, 5);
    assert_true(json_is_null(json_object_get(b, "next_after")));
    assert_int_equal(jint(json_object_get(b, "session"), "summary_seq"), 3);
    json_decref(b);
    assert_int_equal(ch_bundle(db, TENANT, id, 1, &b, &e), CH_OK);
    assert_originals(json_object_get(b, "events"), 4, 4);
    assert_int_equal(json_integer_value(json_object_get(b, "next_after")), 4);
    json_decref(b);
    /* next_after pages on with the events list */
    json_t *page = events_page(db, TENANT, id, 4, 100, false);
    assert_originals(json_object_get(page, "events"), 5, 5);
    json_decref(page);

    /* limit 1..10000 */
    assert_int_equal(ch_bundle(db, TENANT, id, 0, &b, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "limit");
    assert_int_equal(ch_bundle(db, TENANT, id, 10001, &b, &e), CH_BAD_REQUEST);
    assert_int_equal(ch_bundle(db, TENANT, id, -1, &b, &e), CH_BAD_REQUEST);
    assert_int_equal(ch_bundle(db, TENANT, id, 10000, &b, &e), CH_OK);
    json_decref(b);
    char ghost[CH_ID_MAX];
    ch_id_new("sess", ghost);
    assert_int_equal(ch_bundle(db, TENANT, ghost, 10, &b, &e), CH_NOT_FOUND);
}

static void test_events_paging(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX];
    json_t *page = NULL;
    ch_err e;
    create_session(db, TENANT, NULL, id);
    append_n(db, TENANT, id, 7, 1);

    /* walk with limit 3 via next_after */
    int64_t after = 0, seen = 0;
    int pages = 0;
    for (;;) {
        page = events_page(db, TENANT, id, after, 3, false);
        json_t *evs = json_object_get(page, "events");
        for (size_t i = 0; i < json_array_size(evs); i++)
            assert_int_equal(jint(json_array_get(evs, i), "seq"), ++seen);
        pages++;
        json_t *next = json_object_get(page, "next_after");
        if (json_is_null(next)) {
            json_decref(page);
            break;
        }
        after = json_integer_value(next);
        assert_int_equal(after, seen);
        json_decref(page);
        assert_true(pages < 10);
    }
    assert_int_equal(seen, 7);
    assert_int_equal(pages, 3);

    /* a page that ends exactly at the last event has no next_after */
    page = events_page(db, TENANT, id, 4, 3, false);
    assert_originals(json_object_get(page, "events"), 5, 7);
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    page = events_page(db, TENANT, id, 7, 3, false);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 0);
    assert_true(json_is_null(json_object_get(page, "next_after")));
    json_decref(page);
    page = events_page(db, TENANT, id, 100, 1000, false);
    assert_int_equal(json_array_size(json_object_get(page, "events")), 0);
    json_decref(page);

    assert_int_equal(ch_events_list(db, TENANT, id, 0, 0, false, &page, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "limit");
    assert_int_equal(ch_events_list(db, TENANT, id, 0, 1001, false, &page, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "limit");
    assert_int_equal(ch_events_list(db, TENANT, id, -1, 10, false, &page, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "after");
    char ghost[CH_ID_MAX];
    ch_id_new("sess", ghost);
    assert_int_equal(ch_events_list(db, TENANT, ghost, 0, 10, false, &page, &e), CH_NOT_FOUND);
    assert_int_equal(ch_events_list(db, TENANT, ghost, 0, 10, true, &page, &e), CH_NOT_FOUND);
    assert_int_equal(ch_session_get(db, TENANT, ghost, &page, &e), CH_NOT_FOUND);
    assert_int_equal(ch_session_get(db, TENANT, "not-an-id", &page, &e), CH_NOT_FOUND);
}

/* ---- tenants --------------------------------------------------------------------- */

static void test_tenant_isolation(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char id[CH_ID_MAX];
    json_t *res = NULL, *out = NULL;
    ch_err e;
    create_session(db, "a", NULL, id);
    append_n(db, "a", id, 3, 1);
    assert_int_equal(run(db, CH_OP_FACT_PUT, "a", id, "k", "{\"value\":1}", &res, NULL), CH_OK);
    json_decref(res);
    json_t *before = get_session(db, "a", id);

    /* every read */
    assert_int_equal(ch_session_get(db, "b", id, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_events_list(db, "b", id, 0, 10, false, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_events_list(db, "b", id, 0, 10, true, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_fact_get(db, "b", id, "k", &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_facts_list(db, "b", id, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_bundle(db, "b", id, 10, &out, &e), CH_NOT_FOUND);
    ch_session_query q = {.limit = 100};
    assert_int_equal(ch_session_list(db, "b", &q, &out, &e), CH_OK);
    assert_int_equal(json_array_size(json_object_get(out, "sessions")), 0);
    json_decref(out);

    /* every write */
    expect_fail(db, CH_OP_SESSION_APPEND, "b", id, NULL, "{\"kind\":\"m\"}", CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_SESSION_APPEND, "b", id, NULL, "{\"kind\":\"m\",\"expect_seq\":3}",
                CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_SESSION_PAUSE, "b", id, NULL, NULL, CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_SESSION_RESUME, "b", id, NULL, NULL, CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_SESSION_CLOSE, "b", id, NULL, NULL, CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_SESSION_ARCHIVE, "b", id, NULL, NULL, CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_SESSION_COMPACT, "b", id, NULL, "{\"through_seq\":2,\"summary\":\"x\"}",
                CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_FACT_PUT, "b", id, "k", "{\"value\":2}", CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_FACT_PUT, "b", id, "new", "{\"value\":2}", CH_NOT_FOUND, NULL);
    expect_fail(db, CH_OP_FACT_DELETE, "b", id, "k", NULL, CH_NOT_FOUND, NULL);

    /* a's session is exactly as it was */
    json_t *after = get_session(db, "a", id);
    assert_true(json_equal(before, after));
    json_decref(after);
    json_decref(before);
    assert_int_equal(ch_fact_get(db, "a", id, "k", &out, &e), CH_OK);
    assert_int_equal(json_integer_value(json_object_get(out, "value")), 1);
    json_decref(out);
    assert_int_equal(ch_facts_list(db, "a", id, &out, &e), CH_OK);
    assert_int_equal(json_object_size(json_object_get(out, "facts")), 1);
    json_decref(out);
    json_t *page = events_page(db, "a", id, 0, 100, false);
    assert_originals(json_object_get(page, "events"), 1, 3);
    json_decref(page);

    /* and the other way round */
    char idb[CH_ID_MAX];
    create_session(db, "b", NULL, idb);
    assert_int_equal(ch_session_get(db, "a", idb, &out, &e), CH_NOT_FOUND);
    expect_fail(db, CH_OP_SESSION_CLOSE, "a", idb, NULL, NULL, CH_NOT_FOUND, NULL);
    assert_int_equal(ch_session_list(db, "a", &q, &out, &e), CH_OK);
    json_t *sessions = json_object_get(out, "sessions");
    assert_int_equal(json_array_size(sessions), 1);
    assert_string_equal(jstr(json_array_get(sessions, 0), "id"), id);
    json_decref(out);
}

/* ---- listing --------------------------------------------------------------------- */

/* Walks the list with q (cursor reset) and writes the ids in order to ids; returns
 * the count and the number of pages. */
static int list_walk(ch_db *db, const char *tenant, ch_session_query q, char ids[][CH_ID_MAX],
                     int max, int *pages)
{
    int n = 0;
    char cursor[CH_ID_MAX];
    q.cursor = NULL;
    *pages = 0;
    for (;;) {
        json_t *out = NULL;
        ch_err e;
        if (ch_session_list(db, tenant, &q, &out, &e) != CH_OK)
            fail_msg("ch_session_list: %s", e.message);
        (*pages)++;
        json_t *sessions = json_object_get(out, "sessions");
        assert_true((int)json_array_size(sessions) <= q.limit);
        for (size_t i = 0; i < json_array_size(sessions); i++) {
            assert_true(n < max);
            snprintf(ids[n++], CH_ID_MAX, "%s", jstr(json_array_get(sessions, i), "id"));
        }
        json_t *next = json_object_get(out, "next_cursor");
        if (json_is_null(next)) {
            json_decref(out);
            break;
        }
        /* the cursor is the last id of the page */
        assert_true(json_array_size(sessions) > 0);
        assert_string_equal(json_string_value(next), ids[n - 1]);
        snprintf(cursor, sizeof(cursor), "%s", json_string_value(next));
        q.cursor = cursor;
        json_decref(out);
        assert_true(*pages <= max + 1);
    }
    return n;
}

static void test_list_pagination(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char created[7][CH_ID_MAX], seen[16][CH_ID_MAX];
    int pages;
    create_session(db, "other", NULL, seen[0]); /* another tenant's session never shows */
    for (int i = 0; i < 7; i++)
        create_session(db, TENANT, NULL, created[i]);

    ch_session_query q = {.limit = 2};
    int n = list_walk(db, TENANT, q, seen, 16, &pages);
    assert_int_equal(n, 7);
    assert_int_equal(pages, 4);
    for (int i = 0; i < 7; i++)
        assert_string_equal(seen[i], created[i]); /* creation order, each once */

    for (int limit = 1; limit <= 8; limit++) {
        q.limit = limit;
        n = list_walk(db, TENANT, q, seen, 16, &pages);
        assert_int_equal(n, 7);
        assert_int_equal(pages, (7 + limit - 1) / limit);
        for (int i = 0; i < 7; i++)
            assert_string_equal(seen[i], created[i]);
    }

    /* the sessions are the full objects */
    json_t *out = NULL;
    ch_err e;
    q.limit = 1;
    q.cursor = NULL;
    assert_int_equal(ch_session_list(db, TENANT, &q, &out, &e), CH_OK);
    json_t *first = get_session(db, TENANT, created[0]);
    assert_true(json_equal(json_array_get(json_object_get(out, "sessions"), 0), first));
    json_decref(first);
    json_decref(out);

    /* a cursor from the middle continues after it */
    q.limit = 100;
    q.cursor = created[4];
    assert_int_equal(ch_session_list(db, TENANT, &q, &out, &e), CH_OK);
    json_t *rest = json_object_get(out, "sessions");
    assert_int_equal(json_array_size(rest), 2);
    assert_string_equal(jstr(json_array_get(rest, 0), "id"), created[5]);
    assert_true(json_is_null(json_object_get(out, "next_cursor")));
    json_decref(out);

    /* bad queries */
    q.cursor = NULL;
    q.limit = 0;
    assert_int_equal(ch_session_list(db, TENANT, &q, &out, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "limit");
    q.limit = 1001;
    assert_int_equal(ch_session_list(db, TENANT, &q, &out, &e), CH_BAD_REQUEST);
    q.limit = 10;
    q.state = "sleeping";
    assert_int_equal(ch_session_list(db, TENANT, &q, &out, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "state");
    q.state = NULL;
    q.cursor = "garbage";
    assert_int_equal(ch_session_list(db, TENANT, &q, &out, &e), CH_BAD_REQUEST);
    assert_string_equal(e.field, "cursor");
}

static void test_list_filters(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char ids[7][CH_ID_MAX], seen[16][CH_ID_MAX];
    int pages;
    json_t *res = NULL;
    char m1[CH_ID_MAX];
    create_mandate(db, TENANT, m1);
    for (int i = 0; i < 7; i++) {
        char body[160];
        snprintf(body, sizeof(body), "{\"user\":\"u%d\",\"agent\":\"a\"%s%s%s}",
                 i % 2 == 0 ? 1 : 2, i == 6 ? ",\"mandate\":\"" : "", i == 6 ? m1 : "",
                 i == 6 ? "\"" : "");
        create_session(db, TENANT, body, ids[i]);
    }
    /* u1: 0, 2, 4, 6; u2: 1, 3, 5. Close 1 and 4, pause 5. */
    assert_int_equal(run(db, CH_OP_SESSION_CLOSE, TENANT, ids[1], NULL, NULL, &res, NULL), CH_OK);
    json_decref(res);
    assert_int_equal(run(db, CH_OP_SESSION_CLOSE, TENANT, ids[4], NULL, NULL, &res, NULL), CH_OK);
    json_decref(res);
    assert_int_equal(run(db, CH_OP_SESSION_PAUSE, TENANT, ids[5], NULL, NULL, &res, NULL), CH_OK);
    json_decref(res);

    const struct {
        const char *user, *state, *mandate;
        int want[7];
        int n;
    } cases[] = {
        {"u1", NULL, NULL, {0, 2, 4, 6}, 4}, {"u2", NULL, NULL, {1, 3, 5}, 3},
        {NULL, "closed", NULL, {1, 4}, 2},   {NULL, "open", NULL, {0, 2, 3, 6}, 4},
        {NULL, "paused", NULL, {5}, 1},      {NULL, "archived", NULL, {0}, 0},
        {"u1", "closed", NULL, {4}, 1},      {"u2", "open", NULL, {3}, 1},
        {NULL, NULL, m1, {6}, 1},            {"u2", NULL, m1, {0}, 0},
        {"nobody", NULL, NULL, {0}, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (int limit = 1; limit <= 3; limit += 2) {
            ch_session_query q = {.user = cases[c].user,
                                  .state = cases[c].state,
                                  .mandate = cases[c].mandate,
                                  .limit = limit};
            int n = list_walk(db, TENANT, q, seen, 16, &pages);
            if (n != cases[c].n)
                fail_msg("case %zu (limit %d): %d sessions, want %d", c, limit, n, cases[c].n);
            for (int i = 0; i < n; i++)
                assert_string_equal(seen[i], ids[cases[c].want[i]]);
        }
    }
}

/* ---- retention ------------------------------------------------------------------- */

static void test_retention(void **state)
{
    fixture *f = *state;
    const ch_retention ret = {.close_idle_after = 200,
                              .archive_closed_after = 200,
                              .delete_archived_after = 200,
                              .sweep_interval = 50};
    ch_db *db = f->db = open_db(f->dir, &ret, true);
    char id[CH_ID_MAX], paused[CH_ID_MAX];
    json_t *res = NULL;
    create_session(db, TENANT, NULL, paused);
    assert_int_equal(run(db, CH_OP_SESSION_PAUSE, TENANT, paused, NULL, NULL, &res, NULL), CH_OK);
    json_decref(res);
    create_session(db, TENANT, NULL, id);
    assert_int_equal(run(db, CH_OP_FACT_PUT, TENANT, id, "k", "{\"value\":1}", &res, NULL), CH_OK);
    json_decref(res);
    json_t *s0 = get_session(db, TENANT, id);
    int64_t touched = parse_time(jstr(s0, "updated_at"));
    json_decref(s0);

    bool saw_closed = false, saw_archived = false, deleted = false;
    json_t *history = NULL;
    uint64_t start = ch_mono_ns();
    while (ch_mono_ns() - start < 5000000000ull) {
        json_t *s = NULL;
        ch_err e;
        ch_status st = ch_session_get(db, TENANT, id, &s, &e);
        if (st == CH_NOT_FOUND) {
            deleted = true;
            break;
        }
        assert_int_equal(st, CH_OK);
        const char *name = jstr(s, "state");
        if (strcmp(name, "closed") == 0)
            saw_closed = true;
        if (strcmp(name, "archived") == 0 && !saw_archived) {
            saw_archived = true;
            history = events_page(db, TENANT, id, 0, 100, false);
        }
        json_decref(s);
        unit_sleep_ms(5);
    }
    assert_true(deleted);
    assert_true(saw_closed);
    assert_true(saw_archived);

    /* close and archive were lifecycle events with reason "retention", each after
     * the period of idleness */
    json_t *evs = json_object_get(history, "events");
    assert_int_equal(json_array_size(evs), 2);
    json_t *c0 = json_object_get(json_array_get(evs, 0), "content");
    json_t *c1 = json_object_get(json_array_get(evs, 1), "content");
    assert_string_equal(jstr(json_array_get(evs, 0), "kind"), "lifecycle");
    assert_string_equal(jstr(c0, "from"), "open");
    assert_string_equal(jstr(c0, "to"), "closed");
    assert_string_equal(jstr(c0, "reason"), "retention");
    assert_string_equal(jstr(c1, "from"), "closed");
    assert_string_equal(jstr(c1, "to"), "archived");
    assert_string_equal(jstr(c1, "reason"), "retention");
    int64_t closed_at = parse_time(jstr(json_array_get(evs, 0), "at"));
    int64_t archived_at = parse_time(jstr(json_array_get(evs, 1), "at"));
    assert_true(closed_at - touched >= 200);
    assert_true(archived_at - closed_at >= 200);
    json_decref(history);

    /* deleted with its facts and events */
    json_t *out = NULL;
    ch_err e;
    assert_int_equal(ch_facts_list(db, TENANT, id, &out, &e), CH_NOT_FOUND);
    assert_int_equal(ch_events_list(db, TENANT, id, 0, 10, true, &out, &e), CH_NOT_FOUND);
    /* paused sessions are not closed for idleness */
    char st[16];
    session_seq(db, TENANT, paused, st);
    assert_string_equal(st, "paused");
}

/* More sessions due than one pass handles (256): the sweeper goes straight on with
 * another pass instead of waiting for the next interval. A period of 0 disables its
 * step: closed sessions then stay closed. */
#define MANY 300

typedef struct many_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, ok;
} many_state;

static void many_done(ch_req *req)
{
    many_state *m = req->udata;
    pthread_mutex_lock(&m->mu);
    m->done++;
    if (req->err.status == CH_OK)
        m->ok++;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static int count_in_state(ch_db *db, const char *state_name)
{
    ch_session_query q = {.state = state_name, .limit = 1000};
    json_t *out = NULL;
    ch_err e;
    if (ch_session_list(db, TENANT, &q, &out, &e) != CH_OK)
        fail_msg("ch_session_list: %s", e.message);
    int n = (int)json_array_size(json_object_get(out, "sessions"));
    assert_true(json_is_null(json_object_get(out, "next_cursor")));
    json_decref(out);
    return n;
}

static void test_retention_many(void **state)
{
    fixture *f = *state;

    /* Create the sessions with no sweeper running (group commit via ch_submit). */
    ch_db *db = f->db = open_db(f->dir, NULL, false);
    many_state m = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    ch_req *reqs = calloc(MANY, sizeof(*reqs));
    assert_non_null(reqs);
    json_t *body = jparse("{\"user\":\"u\",\"agent\":\"a\"}");
    for (int i = 0; i < MANY; i++) {
        reqs[i].op = CH_OP_SESSION_CREATE;
        snprintf(reqs[i].tenant, sizeof(reqs[i].tenant), TENANT);
        reqs[i].body = body;
        reqs[i].done = many_done;
        reqs[i].udata = &m;
        assert_int_equal(ch_submit(db, &reqs[i]), CH_OK);
    }
    json_decref(body);
    pthread_mutex_lock(&m.mu);
    while (m.done < MANY)
        pthread_cond_wait(&m.cv, &m.mu);
    pthread_mutex_unlock(&m.mu);
    assert_int_equal(m.ok, MANY);
    for (int i = 0; i < MANY; i++)
        ch_req_dispose(&reqs[i]);
    free(reqs);
    ch_db_close(db);
    f->db = NULL;

    /* Let them all become idle, then reopen with a sweeper whose interval is long:
     * every session is due at its first pass. */
    unit_sleep_ms(250);
    const ch_retention ret = {.close_idle_after = 200,
                              .archive_closed_after = 0,
                              .delete_archived_after = 0,
                              .sweep_interval = 2000};
    db = f->db = open_db(f->dir, &ret, true);
    assert_int_equal(count_in_state(db, "open"), MANY);
    uint64_t start = ch_mono_ns(), first = 0;
    int closed = 0;
    while (ch_mono_ns() - start < 10000000000ull) {
        closed = count_in_state(db, "closed");
        if (closed > 0 && first == 0)
            first = ch_mono_ns();
        if (closed == MANY)
            break;
        unit_sleep_ms(10);
    }
    assert_int_equal(closed, MANY);
    assert_int_equal(count_in_state(db, "open"), 0);
    /* All of them within one interval of the first: the pass that stopped at its limit
     * was followed at once by another, not 2 s later. */
    uint64_t spread_ms = (ch_mono_ns() - first) / 1000000;
    if (spread_ms >= 1500)
        fail_msg("the last sessions closed %llu ms after the first ones",
                 (unsigned long long)spread_ms);
    /* archive_closed_after = 0: closed sessions stay closed */
    ch_db_close(db);
    f->db = NULL;
    const ch_retention fast = {.close_idle_after = 200,
                               .archive_closed_after = 0,
                               .delete_archived_after = 0,
                               .sweep_interval = 50};
    db = f->db = open_db(f->dir, &fast, true);
    unit_sleep_ms(400);
    assert_int_equal(count_in_state(db, "closed"), MANY);
    assert_int_equal(count_in_state(db, "archived"), 0);
}

/* With start_sweeper false no retention runs, however short its periods. */
static void test_no_sweeper(void **state)
{
    fixture *f = *state;
    char id[CH_ID_MAX], st[16];
    const ch_retention ret = {.close_idle_after = 50,
                              .archive_closed_after = 50,
                              .delete_archived_after = 50,
                              .sweep_interval = 20};
    ch_db *db = f->db = open_db(f->dir, &ret, false);
    create_session(db, TENANT, NULL, id);
    unit_sleep_ms(300);
    session_seq(db, TENANT, id, st);
    assert_string_equal(st, "open");
}

/* ---- opening --------------------------------------------------------------------- */

static void test_db_open_errors(void **state)
{
    fixture *f = *state;
    const char *dir = f->dir;
    char file[UNIT_PATH_MAX];
    ch_config cfg;
    ch_err e;
    ch_db *db = NULL;

    ch_config_defaults(&cfg);
    assert_true(snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", dir) <
                (int)sizeof(cfg.data_dir));
    snprintf(cfg.store, sizeof(cfg.store), "nosuchstore");
    ch_err_clear(&e);
    assert_int_equal(ch_db_open(&cfg, false, &db, &e), CH_CONFIG);
    assert_string_equal(e.field, "store");
    assert_null(db);

    /* the data dir is a regular file */
    unit_write_file(dir, "plain", "not a directory", file);
    ch_config_defaults(&cfg);
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s", file);
    ch_err_clear(&e);
    ch_status st = ch_db_open(&cfg, false, &db, &e);
    assert_int_not_equal(st, CH_OK);
    assert_int_equal(e.status, st);
    assert_null(db);

    /* a fresh data dir is created, and a second open of it works after a close */
    ch_config_defaults(&cfg);
    assert_true(snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/fresh", dir) <
                (int)sizeof(cfg.data_dir));
    assert_int_equal(ch_db_open(&cfg, true, &f->db, &e), CH_OK);
    ch_db_close(f->db);
    f->db = NULL;
    assert_int_equal(ch_db_open(&cfg, true, &f->db, &e), CH_OK);
    db = f->db;
    int64_t n = -1;
    assert_int_equal(ch_key_count(db, &n), CH_OK);
    assert_int_equal(n, 0);
    ch_db_close(NULL); /* a no-op */
}

/* ---- keys ------------------------------------------------------------------------ */

static void assert_key_format(const char *key)
{
    assert_int_equal(strlen(key), 4 + 43);
    assert_memory_equal(key, "chk_", 4);
    for (const char *c = key + 4; *c; c++) {
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_'))
            fail_msg("key %s has a non-base64url character '%c'", key, *c);
    }
}

static void test_keys(void **state)
{
    fixture *f = *state;
    ch_db *db = f->db;
    char k1[CH_KEY_MAX], k2[CH_KEY_MAX], k3[CH_KEY_MAX], tenant[CH_TENANT_MAX];
    int64_t n = -1;
    ch_err e;

    assert_int_equal(ch_key_count(db, &n), CH_OK);
    assert_int_equal(n, 0);

    assert_int_equal(ch_key_create(db, "acme", k1, &e), CH_OK);
    assert_key_format(k1);
    assert_int_equal(ch_key_lookup(db, k1, tenant), CH_OK);
    assert_string_equal(tenant, "acme");
    assert_int_equal(ch_key_count(db, &n), CH_OK);
    assert_int_equal(n, 1);

    assert_int_equal(ch_key_create(db, "acme", k2, &e), CH_OK);
    assert_key_format(k2);
    assert_string_not_equal(k1, k2);
    char t64[65];
    memset(t64, 'z', 64);
    t64[64] = '\0';
    assert_int_equal(ch_key_create(db, t64, k3, &e), CH_OK);
    assert_int_equal(ch_key_lookup(db, k2, tenant), CH_OK);
    assert_string_equal(tenant, "acme");
    assert_int_equal(ch_key_lookup(db, k3, tenant), CH_OK);
    assert_string_equal(tenant, t64);
    assert_int_equal(ch_key_lookup(db, k1, tenant), CH_OK);
    assert_string_equal(tenant, "acme");
    assert_int_equal(ch_key_count(db, &n), CH_OK);
    assert_int_equal(n, 3);

    /* unknown and malformed keys */
    char bad[CH_KEY_MAX + 8];
    snprintf(bad, sizeof(bad), "%s", k1);
    bad[10] = bad[10] == 'A' ? 'B' : 'A';
    assert_int_equal(ch_key_lookup(db, bad, tenant), CH_UNAUTHORIZED);
    snprintf(bad, sizeof(bad), "%sx", k1);
    assert_int_equal(ch_key_lookup(db, bad, tenant), CH_UNAUTHORIZED);
    snprintf(bad, sizeof(bad), "%.46s", k1);
    assert_int_equal(ch_key_lookup(db, bad, tenant), CH_UNAUTHORIZED);
    snprintf(bad, sizeof(bad), "xhk_%s", k1 + 4);
    assert_int_equal(ch_key_lookup(db, bad, tenant), CH_UNAUTHORIZED);
    assert_int_equal(ch_key_lookup(db, "chk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", tenant),
                     CH_UNAUTHORIZED);
    assert_int_equal(ch_key_lookup(db, "garbage", tenant), CH_UNAUTHORIZED);
    assert_int_equal(ch_key_lookup(db, "", tenant), CH_UNAUTHORIZED);
    assert_int_equal(ch_key_lookup(db, "chk_", tenant), CH_UNAUTHORIZED);
    assert_int_equal(ch_key_lookup(db, NULL, tenant), CH_UNAUTHORIZED);

    /* invalid tenants: nothing created */
    char t65[66];
    memset(t65, 'z', 65);
    t65[65] = '\0';
    const char *bad_tenants[] = {"", "Acme", "a b", "a/b", "a.b", "caf\xc3\xa9", t65};
    for (size_t i = 0; i < sizeof(bad_tenants) / sizeof(bad_tenants[0]); i++) {
        ch_err_clear(&e);
        if (ch_key_create(db, bad_tenants[i], k3, &e) != CH_INVALID_VALUE)
            fail_msg("tenant '%s' accepted", bad_tenants[i]);
        assert_int_equal(e.status, CH_INVALID_VALUE);
        assert_string_equal(e.field, "tenant");
        assert_false(ch_tenant_valid(bad_tenants[i]));
    }
    assert_int_equal(ch_key_create(db, NULL, k3, &e), CH_INVALID_VALUE);
    assert_false(ch_tenant_valid(NULL));
    assert_true(ch_tenant_valid("a"));
    assert_true(ch_tenant_valid("team-1_x"));
    assert_true(ch_tenant_valid(t64));
    assert_int_equal(ch_key_count(db, &n), CH_OK);
    assert_int_equal(n, 3);

    /* keys survive a reopen (only their hash is stored, and that is enough) */
    ch_db_close(f->db);
    f->db = open_db(f->dir, NULL, false);
    assert_int_equal(ch_key_lookup(f->db, k2, tenant), CH_OK);
    assert_string_equal(tenant, "acme");
    assert_int_equal(ch_key_count(f->db, &n), CH_OK);
    assert_int_equal(n, 3);
}

/* ---- close drains ---------------------------------------------------------------- */

#define DRAIN_N 1000

typedef struct drain_state {
    atomic_int done;
    atomic_int ok;
} drain_state;

static void drain_done(ch_req *req)
{
    drain_state *d = req->udata;
    if (req->err.status == CH_OK && req->result != NULL)
        atomic_fetch_add(&d->ok, 1);
    atomic_fetch_add(&d->done, 1);
}

static void test_close_drains(void **state)
{
    fixture *f = *state;
    char id[CH_ID_MAX];
    ch_db *db = f->db = open_db(f->dir, NULL, false);
    create_session(db, TENANT, NULL, id);

    drain_state d;
    atomic_init(&d.done, 0);
    atomic_init(&d.ok, 0);
    ch_req *reqs = calloc(DRAIN_N, sizeof(*reqs));
    assert_non_null(reqs);
    for (int i = 0; i < DRAIN_N; i++) {
        json_t *body = json_pack("{s:s, s:i}", "kind", "message", "content", i + 1);
        reqs[i].op = CH_OP_SESSION_APPEND;
        snprintf(reqs[i].tenant, sizeof(reqs[i].tenant), TENANT);
        snprintf(reqs[i].id, sizeof(reqs[i].id), "%s", id);
        reqs[i].body = body;
        reqs[i].done = drain_done;
        reqs[i].udata = &d;
        assert_int_equal(ch_submit(db, &reqs[i]), CH_OK);
        json_decref(body);
    }
    ch_db_close(db);
    f->db = NULL;
    assert_int_equal(atomic_load(&d.done), DRAIN_N);
    assert_int_equal(atomic_load(&d.ok), DRAIN_N);
    for (int i = 0; i < DRAIN_N; i++) {
        assert_int_equal(reqs[i].err.status, CH_OK);
        assert_int_equal(jint(reqs[i].result, "first_seq"), i + 1);
        ch_req_dispose(&reqs[i]);
    }
    free(reqs);

    /* everything is durable: reopen and read it all back */
    db = f->db = open_db(f->dir, NULL, false);
    char st[16];
    assert_int_equal(session_seq(db, TENANT, id, st), DRAIN_N);
    assert_string_equal(st, "active");
    int64_t after = 0;
    for (int p = 0; p < DRAIN_N / 500; p++) {
        json_t *page = events_page(db, TENANT, id, after, 500, false);
        assert_originals(json_object_get(page, "events"), after + 1, after + 500);
        after += 500;
        json_decref(page);
    }
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_create),
        T(test_create_validation),
        T(test_append_single_and_batch),
        T(test_append_seq_conflict),
        T(test_append_validation),
        T(test_group_commit_isolation),
        T(test_read_your_writes),
        T(test_submit_contract),
        T(test_lifecycle_matrix),
        T(test_lifecycle_sequence),
        T(test_transition_reason),
        T(test_refused_in_state),
        T(test_compaction),
        T(test_compaction_validation),
        T(test_facts),
        T(test_fact_limits),
        T(test_bundle),
        T(test_events_paging),
        T(test_tenant_isolation),
        T(test_list_pagination),
        T(test_list_filters),
        cmocka_unit_test_setup_teardown(test_retention, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_retention_many, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_no_sweeper, setup_dir, teardown),
        cmocka_unit_test_setup_teardown(test_db_open_errors, setup_dir, teardown),
        T(test_keys),
        cmocka_unit_test_setup_teardown(test_close_drains, setup_dir, teardown),
    };
#undef T
    /* Retention logs a line per pass that did something; keep the output readable. */
    ch_log_set_level(CH_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
