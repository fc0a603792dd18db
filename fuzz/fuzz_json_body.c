/*
 * fuzz_json_body.c — request bodies as the HTTP adapter hands them to libcharter:
 * the bytes go through ch_json_parse_object and, when they make an object, through
 * the validation of every write (ch_call with each op) against one data dir per
 * process, and through the check. The target session or mandate does not exist, so a
 * body that passes validation fails harmlessly with not_found in the writer (a create
 * succeeds and adds a session or a mandate).
 *
 * Beyond "no crash, no leak" it checks what a client would see:
 * - every error carries a status the HTTP layer maps to a 4xx (never internal);
 * - the error message, field and state are valid UTF-8, since the server puts them
 *   in a JSON reply (json_string() refuses anything else);
 * - the canonical form of a parsed body parses back to an equal object.
 */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "charter.h"

#define MISSING_SESSION "sess_01ARZ3NDEKTSV4RRFFQ69G5FAV"
#define MISSING_MANDATE "mdt_01ARZ3NDEKTSV4RRFFQ69G5FAV"
#define MAX_KEY_COPY 512

static ch_db *db;
static char dir[512]; /* leaves room in cfg.data_dir for "/data" */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void close_db(void)
{
    ch_db_close(db);
    db = NULL;
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The process's one db, opened on first use in a private temporary directory. */
static ch_db *get_db(void)
{
    ch_config cfg;
    ch_err e;
    const char *tmp = getenv("TMPDIR");

    if (db != NULL)
        return db;
    snprintf(dir, sizeof(dir), "%s/charter-fuzz-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    ch_config_defaults(&cfg);
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", dir);
    ch_log_set_level(CH_LOG_ERROR);
    ch_err_clear(&e);
    if (ch_db_open(&cfg, false, &db, &e) != CH_OK) {
        fprintf(stderr, "ch_db_open: %s\n", e.message);
        abort();
    }
    atexit(close_db);
    return db;
}

static void fail(const char *what, const ch_err *e)
{
    fprintf(stderr, "fuzz_json_body: %s (status %s, message '%s', field '%s')\n", what,
            ch_status_name(e->status), e->message, e->field);
    abort();
}

/* Text that ends up in a JSON reply must be valid UTF-8. */
static void check_utf8(const char *s, const char *what, const ch_err *e)
{
    json_t *j = json_string(s);
    if (j == NULL)
        fail(what, e);
    json_decref(j);
}

static void check_err(const ch_err *e)
{
    check_utf8(e->message, "error message is not valid UTF-8", e);
    check_utf8(e->field, "error field is not valid UTF-8", e);
    check_utf8(e->state, "error state is not valid UTF-8", e);
}

/* Statuses a bad body may produce: all of them client errors. */
static bool client_error(ch_status st)
{
    switch (st) {
    case CH_BAD_JSON:
    case CH_BAD_REQUEST:
    case CH_MISSING_FIELD:
    case CH_INVALID_TYPE:
    case CH_UNKNOWN_FIELD:
    case CH_INVALID_VALUE:
    case CH_RESERVED_KIND:
    case CH_NOT_SUBSET:
    case CH_NO_CHANGE:
        return true;
    default:
        return false;
    }
}

/* Runs op with body (and fact key) to completion and checks the outcome. */
static void run_op(ch_op op, json_t *body, char *key)
{
    ch_req req = {.op = op, .body = body, .key = key};
    snprintf(req.tenant, sizeof(req.tenant), "fuzz");
    bool mandate = op >= CH_OP_MANDATE_CREATE;
    bool create = op == CH_OP_SESSION_CREATE || op == CH_OP_MANDATE_CREATE;
    snprintf(req.id, sizeof(req.id), "%s", mandate ? MISSING_MANDATE : MISSING_SESSION);

    ch_status st = ch_call(get_db(), &req);
    if (st != req.err.status)
        fail("ch_call's status differs from req.err", &req.err);
    check_err(&req.err);
    if (st == CH_OK) {
        if (!create)
            fail("a write to a missing session or mandate succeeded", &req.err);
        if (!json_is_object(req.result) || json_object_get(req.result, "id") == NULL)
            fail("create succeeded without an id in the result", &req.err);
    } else {
        if (req.result != NULL)
            fail("a failed write left a result", &req.err);
        /* A session may name a mandate that is not active. */
        if (!client_error(st) && !(st == CH_NOT_FOUND && !create) &&
            !(st == CH_MANDATE_INACTIVE && op == CH_OP_SESSION_CREATE))
            fail("unexpected status", &req.err);
    }
    ch_req_dispose(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ch_op ops[] = {CH_OP_SESSION_CREATE,  CH_OP_SESSION_APPEND,
                                CH_OP_SESSION_COMPACT, CH_OP_FACT_PUT,
                                CH_OP_SESSION_PAUSE,   CH_OP_MANDATE_CREATE,
                                CH_OP_MANDATE_DELEGATE, CH_OP_MANDATE_PATCH,
                                CH_OP_MANDATE_REVOKE};
    ch_err e;
    char key[MAX_KEY_COPY + 1];

    ch_err_clear(&e);
    json_t *obj = ch_json_parse_object((const char *)data, size, &e);
    if (obj == NULL) {
        if (e.status != CH_BAD_JSON && e.status != CH_BAD_REQUEST)
            fail("parse failed with an unexpected status", &e);
        check_err(&e);
        return 0;
    }
    if (!json_is_object(obj))
        fail("parse returned a non-object", &e);

    /* The canonical text is what charter stores; it must read back the same. */
    size_t len = 0;
    char *canon = ch_json_canonical(obj, &len);
    if (canon == NULL)
        fail("no canonical form", &e);
    json_t *again = ch_json_parse_object(canon, len, &e);
    if (again == NULL || !json_equal(obj, again))
        fail("canonical form does not parse back to the same object", &e);
    json_decref(again);
    free(canon);

    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        run_op(ops[i], obj, (char *)"k");

    /* The check answers every well-formed body with a decision, never an internal
     * error; the artifact route too. */
    json_t *reply = NULL;
    ch_status st = ch_check_json(get_db(), "fuzz", obj, &reply, &e);
    check_err(&e);
    if (st == CH_OK ? !json_is_boolean(json_object_get(reply, "allow")) : !client_error(st))
        fail("the check failed with an unexpected status", &e);
    json_decref(reply);
    reply = NULL;
    ch_err_clear(&e);
    st = ch_mandate_artifact(get_db(), "fuzz", MISSING_MANDATE, obj, &reply, &e);
    check_err(&e);
    if (st != CH_NOT_FOUND && !client_error(st))
        fail("the artifact request failed with an unexpected status", &e);
    json_decref(reply);

    /* The input bytes as a fact key too (key validation: length, UTF-8). */
    size_t n = size < MAX_KEY_COPY ? size : MAX_KEY_COPY;
    memcpy(key, data, n);
    key[n] = '\0';
    run_op(CH_OP_FACT_PUT, obj, key);

    json_decref(obj);
    return 0;
}
