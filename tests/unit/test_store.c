/*
 * test_store.c — the backend registry, and the store conformance suite
 * (tests/store_conformance.h) run against the built-in SQLite backend.
 */
#include <sqlite3.h>

#include "unit.h"

#include "../store_conformance.h"
#include "internal.h"

/* Every data dir of this run lives under one private directory, removed at the end. */
static char base_dir[UNIT_PATH_MAX];
static int ndirs;

/* A data dir no earlier test used; it does not exist yet (the writer creates it). */
static const char *fresh_dir(void)
{
    static char dir[UNIT_PATH_MAX + 32];
    snprintf(dir, sizeof(dir), "%s/data-%d", base_dir, ++ndirs);
    return dir;
}

/* ---- registry -------------------------------------------------------------------- */

static void test_find_builtin(void **state)
{
    (void)state;
    const ch_store_methods *m = ch_store_find("sqlite");
    assert_ptr_equal(m, &ch__sqlite_methods);
    assert_string_equal(m->name, "sqlite");
    assert_int_equal(m->version, CH_STORE_VERSION);
    assert_null(ch_store_find("nosuch"));
    assert_null(ch_store_find(""));
    assert_null(ch_store_find("SQLITE")); /* names are exact */
}

static void test_register_duplicate(void **state)
{
    (void)state;
    ch_store_methods copy = ch__sqlite_methods;
    assert_int_equal(ch_store_register(&ch__sqlite_methods), CH_EXISTS);
    assert_int_equal(ch_store_register(&copy), CH_EXISTS);
    /* The registered table is still the original. */
    assert_ptr_equal(ch_store_find("sqlite"), &ch__sqlite_methods);
}

static void test_register_invalid(void **state)
{
    (void)state;
    ch_store_methods t = ch__sqlite_methods;
    assert_int_equal(ch_store_register(NULL), CH_INVALID_VALUE);
    t.name = NULL;
    assert_int_equal(ch_store_register(&t), CH_INVALID_VALUE);
    t = ch__sqlite_methods;
    t.name = "unversioned";
    t.version = 0;
    assert_int_equal(ch_store_register(&t), CH_INVALID_VALUE);
    t.version = -1;
    assert_int_equal(ch_store_register(&t), CH_INVALID_VALUE);
    assert_null(ch_store_find("unversioned"));
}

/* A new name registers once and is then found by that name. */
static void test_register_new(void **state)
{
    (void)state;
    static ch_store_methods alias;
    alias = ch__sqlite_methods;
    alias.name = "sqlite-alias";
    assert_int_equal(ch_store_register(&alias), CH_OK);
    assert_ptr_equal(ch_store_find("sqlite-alias"), &alias);
    assert_ptr_equal(ch_store_find("sqlite"), &ch__sqlite_methods);
    assert_int_equal(ch_store_register(&alias), CH_EXISTS);
}

/* ---- SQLite backend specifics --------------------------------------------------- */

/* Writes version into dir's charter.db as its schema version. */
static void set_schema_version(const char *dir, const char *version)
{
    char path[UNIT_PATH_MAX + 32], sql[128];
    sqlite3 *db;
    snprintf(path, sizeof(path), "%s/charter.db", dir);
    snprintf(sql, sizeof(sql), "UPDATE meta SET value = '%s' WHERE key = 'schema_version'",
             version);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

/* A data dir whose schema is newer than this build knows is refused by name, before
 * anything in it is touched; one at the current version opens again. */
static void test_sqlite_newer_schema(void **state)
{
    (void)state;
    char dir[UNIT_PATH_MAX];
    ch_store *w = NULL;
    ch_err e;

    unit_mkdtemp(dir);
    ch_err_clear(&e);
    assert_int_equal(ch__sqlite_methods.open(dir, true, &w, &e), CH_OK);
    ch__sqlite_methods.close(w);
    w = NULL;

    set_schema_version(dir, "99");
    ch_err_clear(&e);
    assert_int_equal(ch__sqlite_methods.open(dir, true, &w, &e), CH_IO);
    assert_null(w);
    assert_non_null(strstr(e.message, "schema version 99"));

    set_schema_version(dir, "3");
    ch_err_clear(&e);
    assert_int_equal(ch__sqlite_methods.open(dir, true, &w, &e), CH_OK);
    ch__sqlite_methods.close(w);
    unit_rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest registry[] = {
        cmocka_unit_test(test_find_builtin),
        cmocka_unit_test(test_register_duplicate),
        cmocka_unit_test(test_register_invalid),
        cmocka_unit_test(test_register_new),
        cmocka_unit_test(test_sqlite_newer_schema),
    };
    int failed = cmocka_run_group_tests_name("store_registry", registry, NULL, NULL);

    /* The suite provokes unique-key conflicts on purpose; the backend logs each as a
     * storage error on stderr. */
    unit_mkdtemp(base_dir);
    failed += ch_store_conformance_run(&ch__sqlite_methods, fresh_dir);
    unit_rm_rf(base_dir);
    return failed;
}
