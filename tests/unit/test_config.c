/*
 * test_config.c — configuration layers: defaults, ch_config_set, charter.yaml and
 * CHARTER_* environment variables, and the JSON rendering.
 */
#include "unit.h"

#include "charter.h"

/* Every key, as documented by its dotted name. */
static const char *const all_keys[] = {
    "listen",
    "data_dir",
    "store",
    "threads",
    "max_body",
    "log_level",
    "drain_timeout",
    "sessions.retention.close_idle_after",
    "sessions.retention.archive_closed_after",
    "sessions.retention.delete_archived_after",
    "sessions.retention.sweep_interval",
    "mandates.max_staleness",
    "events.retention",
    "core_dumps",
    "ephemeral.engine",
    "ephemeral.redis_url",
    "ephemeral.default_ttl",
    "ephemeral.max_ttl",
    "ephemeral.idle_ttl",
    "ephemeral.command_ttl",
    "ephemeral.gc_interval",
    "ephemeral.lock_grace",
    "ephemeral.purge_on_error",
    "ephemeral.log_evictions",
    "ephemeral.exact_expiry",
};
#define NKEYS (sizeof(all_keys) / sizeof(all_keys[0]))

/* The environment variable of each key. */
static const char *const all_vars[] = {
    "CHARTER_LISTEN",
    "CHARTER_DATA_DIR",
    "CHARTER_STORE",
    "CHARTER_THREADS",
    "CHARTER_MAX_BODY",
    "CHARTER_LOG_LEVEL",
    "CHARTER_DRAIN_TIMEOUT",
    "CHARTER_SESSIONS_RETENTION_CLOSE_IDLE_AFTER",
    "CHARTER_SESSIONS_RETENTION_ARCHIVE_CLOSED_AFTER",
    "CHARTER_SESSIONS_RETENTION_DELETE_ARCHIVED_AFTER",
    "CHARTER_SESSIONS_RETENTION_SWEEP_INTERVAL",
    "CHARTER_MANDATES_MAX_STALENESS",
    "CHARTER_EVENTS_RETENTION",
    "CHARTER_CORE_DUMPS",
    "CHARTER_EPHEMERAL_ENGINE",
    "CHARTER_EPHEMERAL_REDIS_URL",
    "CHARTER_EPHEMERAL_DEFAULT_TTL",
    "CHARTER_EPHEMERAL_MAX_TTL",
    "CHARTER_EPHEMERAL_IDLE_TTL",
    "CHARTER_EPHEMERAL_COMMAND_TTL",
    "CHARTER_EPHEMERAL_GC_INTERVAL",
    "CHARTER_EPHEMERAL_LOCK_GRACE",
    "CHARTER_EPHEMERAL_PURGE_ON_ERROR",
    "CHARTER_EPHEMERAL_LOG_EVICTIONS",
    "CHARTER_EPHEMERAL_EXACT_EXPIRY",
};

typedef struct fixture {
    char dir[UNIT_PATH_MAX];
} fixture;

static void clear_env(void)
{
    for (size_t i = 0; i < NKEYS; i++)
        unsetenv(all_vars[i]);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    unit_mkdtemp(f->dir);
    clear_env();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    clear_env();
    unit_rm_rf(f->dir);
    free(f);
    return 0;
}

static void test_defaults(void **state)
{
    (void)state;
    ch_config c;
    memset(&c, 0x5a, sizeof(c));
    ch_config_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1:7433");
    assert_string_equal(c.data_dir, "./charter-data");
    assert_string_equal(c.store, "sqlite");
    assert_int_equal(c.threads, 0);
    assert_int_equal(c.max_body, 1048576);
    assert_int_equal(c.log_level, CH_LOG_INFO);
    assert_int_equal(c.drain_timeout, 10000);
    assert_int_equal(c.retention.close_idle_after, 7LL * 86400000);
    assert_int_equal(c.retention.archive_closed_after, 30LL * 86400000);
    assert_int_equal(c.retention.delete_archived_after, 0);
    assert_int_equal(c.retention.sweep_interval, 60000);
}

static void test_set_each_key(void **state)
{
    (void)state;
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    ch_err_clear(&e);
    assert_int_equal(ch_config_set(&c, "listen", "0.0.0.0:8080", &e), CH_OK);
    assert_string_equal(c.listen, "0.0.0.0:8080");
    assert_int_equal(ch_config_set(&c, "listen", "[::1]:9", &e), CH_OK);
    assert_string_equal(c.listen, "[::1]:9");
    assert_int_equal(ch_config_set(&c, "data_dir", "/var/lib/charter", &e), CH_OK);
    assert_string_equal(c.data_dir, "/var/lib/charter");
    assert_int_equal(ch_config_set(&c, "store", "sqlite", &e), CH_OK);
    assert_string_equal(c.store, "sqlite");
    assert_int_equal(ch_config_set(&c, "threads", "8", &e), CH_OK);
    assert_int_equal(c.threads, 8);
    assert_int_equal(ch_config_set(&c, "threads", "0", &e), CH_OK);
    assert_int_equal(c.threads, 0);
    assert_int_equal(ch_config_set(&c, "max_body", "2MiB", &e), CH_OK);
    assert_int_equal(c.max_body, 2097152);
    assert_int_equal(ch_config_set(&c, "max_body", "4096", &e), CH_OK);
    assert_int_equal(c.max_body, 4096);
    assert_int_equal(ch_config_set(&c, "log_level", "debug", &e), CH_OK);
    assert_int_equal(c.log_level, CH_LOG_DEBUG);
    assert_int_equal(ch_config_set(&c, "log_level", "error", &e), CH_OK);
    assert_int_equal(c.log_level, CH_LOG_ERROR);
    assert_int_equal(ch_config_set(&c, "drain_timeout", "3s", &e), CH_OK);
    assert_int_equal(c.drain_timeout, 3000);
    assert_int_equal(ch_config_set(&c, "sessions.retention.close_idle_after", "2h", &e), CH_OK);
    assert_int_equal(c.retention.close_idle_after, 7200000);
    assert_int_equal(ch_config_set(&c, "sessions.retention.archive_closed_after", "1d", &e), CH_OK);
    assert_int_equal(c.retention.archive_closed_after, 86400000);
    assert_int_equal(ch_config_set(&c, "sessions.retention.delete_archived_after", "90d", &e),
                     CH_OK);
    assert_int_equal(c.retention.delete_archived_after, 90LL * 86400000);
    assert_int_equal(ch_config_set(&c, "sessions.retention.sweep_interval", "250ms", &e), CH_OK);
    assert_int_equal(c.retention.sweep_interval, 250);
    assert_int_equal(ch_config_set(&c, "sessions.retention.close_idle_after", "0", &e), CH_OK);
    assert_int_equal(c.retention.close_idle_after, 0);

    /* ephemeral.*: times to live take bare seconds as well as durations */
    assert_string_equal(c.ephemeral.engine, "memory");
    assert_int_equal(c.ephemeral.default_ttl, 600000);
    assert_int_equal(c.ephemeral.max_ttl, 3600000);
    assert_int_equal(c.ephemeral.gc_interval, 30000);
    assert_true(c.ephemeral.purge_on_error && c.ephemeral.log_evictions && c.ephemeral.exact_expiry);
    assert_false(c.core_dumps);
    assert_int_equal(ch_config_set(&c, "ephemeral.engine", "redis", &e), CH_OK);
    assert_string_equal(c.ephemeral.engine, "redis");
    assert_int_equal(ch_config_set(&c, "ephemeral.redis_url", "redis://10.0.0.1:6380/2", &e), CH_OK);
    assert_string_equal(c.ephemeral.redis_url, "redis://10.0.0.1:6380/2");
    assert_int_equal(ch_config_set(&c, "ephemeral.default_ttl", "120", &e), CH_OK);
    assert_int_equal(c.ephemeral.default_ttl, 120000);
    assert_int_equal(ch_config_set(&c, "ephemeral.max_ttl", "2h", &e), CH_OK);
    assert_int_equal(c.ephemeral.max_ttl, 7200000);
    assert_int_equal(ch_config_set(&c, "ephemeral.idle_ttl", "0", &e), CH_OK);
    assert_int_equal(c.ephemeral.idle_ttl, 0);
    assert_int_equal(ch_config_set(&c, "ephemeral.command_ttl", "1500ms", &e), CH_OK);
    assert_int_equal(c.ephemeral.command_ttl, 1500);
    assert_int_equal(ch_config_set(&c, "ephemeral.lock_grace", "5s", &e), CH_OK);
    assert_int_equal(c.ephemeral.lock_grace, 5000);
    assert_int_equal(ch_config_set(&c, "ephemeral.purge_on_error", "false", &e), CH_OK);
    assert_false(c.ephemeral.purge_on_error);
    assert_int_equal(ch_config_set(&c, "ephemeral.exact_expiry", "off", &e), CH_OK);
    assert_false(c.ephemeral.exact_expiry);
    assert_int_equal(ch_config_set(&c, "core_dumps", "true", &e), CH_OK);
    assert_true(c.core_dumps);
    /* a bare number is only seconds where a key says so */
    assert_int_equal(ch_config_set(&c, "ephemeral.gc_interval", "30", &e), CH_CONFIG);
    assert_int_equal(ch_config_set(&c, "ephemeral.log_evictions", "maybe", &e), CH_CONFIG);
    assert_string_equal(e.field, "ephemeral.log_evictions");
}

/* Expects ch_config_set(key, value) to fail with CH_CONFIG naming `field`, and the
 * config to be unchanged where the value did not parse. */
static void expect_set_error(const char *key, const char *value, const char *field)
{
    ch_config c, before;
    ch_err e;
    ch_config_defaults(&c);
    memcpy(&before, &c, sizeof(c));
    ch_err_clear(&e);
    ch_status st = ch_config_set(&c, key, value, &e);
    if (st == CH_OK)
        fail_msg("%s = '%s' accepted", key, value);
    assert_int_equal(st, CH_CONFIG);
    assert_int_equal(e.status, CH_CONFIG);
    assert_string_equal(e.field, field);
    assert_true(strlen(e.message) > 0);
    assert_non_null(strstr(e.message, key));
    assert_memory_equal(&c.listen, &before.listen, sizeof(c.listen));
    assert_memory_equal(&c.data_dir, &before.data_dir, sizeof(c.data_dir));
    assert_int_equal(c.threads, before.threads);
    assert_int_equal(c.log_level, before.log_level);
    assert_int_equal(c.drain_timeout, before.drain_timeout);
    assert_memory_equal(&c.retention, &before.retention, sizeof(c.retention));
}

static void test_set_errors(void **state)
{
    (void)state;
    expect_set_error("nope", "1", "nope");
    expect_set_error("Listen", "127.0.0.1:1", "Listen");
    expect_set_error("sessions.retention", "1s", "sessions.retention");
    expect_set_error("sessions.retention.bogus", "1s", "sessions.retention.bogus");
    expect_set_error("listen", "localhost", "listen");
    expect_set_error("listen", ":7433", "listen");
    expect_set_error("listen", "127.0.0.1:", "listen");
    expect_set_error("listen", "127.0.0.1:http", "listen");
    expect_set_error("listen", "127.0.0.1:65536", "listen");
    expect_set_error("listen", "127.0.0.1:-1", "listen");
    expect_set_error("listen", "", "listen");
    expect_set_error("data_dir", "", "data_dir");
    expect_set_error("threads", "many", "threads");
    expect_set_error("threads", "-1", "threads");
    expect_set_error("threads", "4x", "threads");
    expect_set_error("threads", "", "threads");
    expect_set_error("threads", "100000", "threads");
    expect_set_error("max_body", "lots", "max_body");
    expect_set_error("max_body", "1.5MiB", "max_body");
    expect_set_error("max_body", "", "max_body");
    expect_set_error("log_level", "verbose", "log_level");
    expect_set_error("log_level", "INFO", "log_level");
    expect_set_error("drain_timeout", "10", "drain_timeout");
    expect_set_error("drain_timeout", "soon", "drain_timeout");
    expect_set_error("sessions.retention.sweep_interval", "1.5s",
                     "sessions.retention.sweep_interval");
    expect_set_error("sessions.retention.close_idle_after", "-1s",
                     "sessions.retention.close_idle_after");
    expect_set_error("sessions.retention.archive_closed_after", "5",
                     "sessions.retention.archive_closed_after");

    /* A string too long for its buffer is refused, not truncated. */
    char big[2048];
    memset(big, 'd', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_set_error("data_dir", big, "data_dir");
}

static void test_set_max_body_zero(void **state)
{
    (void)state;
    /* A zero request-body limit would refuse every request: it is a config error. */
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    assert_int_equal(ch_config_set(&c, "max_body", "0", &e), CH_CONFIG);
    assert_string_equal(e.field, "max_body");
}

static void test_load_file(void **state)
{
    fixture *f = *state;
    char path[UNIT_PATH_MAX];
    unit_write_file(f->dir, "charter.yaml",
                    "# charter test config\n"
                    "listen: 127.0.0.1:9999\n"
                    "data_dir: /srv/charter\n"
                    "threads: 3\n"
                    "max_body: 2MiB\n"
                    "log_level: warn\n"
                    "drain_timeout: 5s\n"
                    "sessions:\n"
                    "  retention:\n"
                    "    close_idle_after: 12h\n"
                    "    archive_closed_after: 3d\n"
                    "    delete_archived_after: 60d\n"
                    "    sweep_interval: 30s\n",
                    path);
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    ch_err_clear(&e);
    assert_int_equal(ch_config_load_file(&c, path, &e), CH_OK);
    assert_string_equal(c.listen, "127.0.0.1:9999");
    assert_string_equal(c.data_dir, "/srv/charter");
    assert_string_equal(c.store, "sqlite"); /* untouched keys keep their defaults */
    assert_int_equal(c.threads, 3);
    assert_int_equal(c.max_body, 2097152);
    assert_int_equal(c.log_level, CH_LOG_WARN);
    assert_int_equal(c.drain_timeout, 5000);
    assert_int_equal(c.retention.close_idle_after, 12LL * 3600000);
    assert_int_equal(c.retention.archive_closed_after, 3LL * 86400000);
    assert_int_equal(c.retention.delete_archived_after, 60LL * 86400000);
    assert_int_equal(c.retention.sweep_interval, 30000);
}

static void test_load_file_flow_style(void **state)
{
    fixture *f = *state;
    char path[UNIT_PATH_MAX];
    unit_write_file(f->dir, "flow.yaml",
                    "sessions: {retention: {sweep_interval: 2m, close_idle_after: 0}}\n"
                    "max_body: \"512KiB\"\n",
                    path);
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    assert_int_equal(ch_config_load_file(&c, path, &e), CH_OK);
    assert_int_equal(c.retention.sweep_interval, 120000);
    assert_int_equal(c.retention.close_idle_after, 0);
    assert_int_equal(c.retention.archive_closed_after, 30LL * 86400000);
    assert_int_equal(c.max_body, 524288);
}

static void expect_file_error(fixture *f, const char *text, const char *field,
                              const char *in_message)
{
    char path[UNIT_PATH_MAX];
    unit_write_file(f->dir, "bad.yaml", text, path);
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    ch_err_clear(&e);
    ch_status st = ch_config_load_file(&c, path, &e);
    if (st == CH_OK)
        fail_msg("accepted: %s", text);
    assert_int_equal(st, CH_CONFIG);
    assert_int_equal(e.status, CH_CONFIG);
    assert_true(strlen(e.message) > 0);
    if (field != NULL)
        assert_string_equal(e.field, field);
    if (in_message != NULL && strstr(e.message, in_message) == NULL)
        fail_msg("message '%s' does not mention '%s'", e.message, in_message);
}

static void test_load_file_errors(void **state)
{
    fixture *f = *state;
    /* unknown keys, at the top and nested: the error names the dotted key */
    expect_file_error(f, "listne: 127.0.0.1:1\n", "listne", "listne");
    expect_file_error(f, "sessions:\n  retention:\n    sweep_intervall: 1s\n",
                      "sessions.retention.sweep_intervall", "sessions.retention.sweep_intervall");
    expect_file_error(f, "sessions:\n  retenshun:\n    sweep_interval: 1s\n",
                      "sessions.retenshun.sweep_interval", "retenshun");
    /* a known section given a scalar */
    expect_file_error(f, "sessions: 5\n", "sessions", "sessions");
    /* bad values */
    expect_file_error(f, "max_body: huge\n", "max_body", "max_body");
    expect_file_error(f, "sessions:\n  retention:\n    close_idle_after: 10\n",
                      "sessions.retention.close_idle_after", "close_idle_after");
    expect_file_error(f, "listen: nowhere\n", "listen", "listen");
    /* lists and non-mapping documents */
    expect_file_error(f, "listen: [a, b]\n", "listen", "listen");
    expect_file_error(f, "- listen\n- data_dir\n", NULL, NULL);
    expect_file_error(f, "just a string\n", NULL, NULL);
    /* malformed YAML */
    expect_file_error(f, "listen: [unclosed\n", NULL, NULL);
    expect_file_error(f, "a: b: c\n", NULL, NULL);
    expect_file_error(f, "sessions:\n  retention:\n sweep_interval: 1s\n  x: 1\n", NULL, NULL);
    expect_file_error(f, "\"unterminated: 1\n", NULL, NULL);
    expect_file_error(f, "\tlisten: 1\n", NULL, NULL);
}

static void test_load_file_empty_and_missing(void **state)
{
    fixture *f = *state;
    char path[UNIT_PATH_MAX];
    ch_config c, d;
    ch_err e;
    ch_config_defaults(&c);
    ch_config_defaults(&d);

    unit_write_file(f->dir, "empty.yaml", "", path);
    assert_int_equal(ch_config_load_file(&c, path, &e), CH_OK);
    assert_memory_equal(&c, &d, sizeof(c));

    unit_write_file(f->dir, "comments.yaml", "# nothing here\n\n", path);
    assert_int_equal(ch_config_load_file(&c, path, &e), CH_OK);
    assert_memory_equal(&c, &d, sizeof(c));

    /* an explicit empty document */
    unit_write_file(f->dir, "dashes.yaml", "---\n", path);
    assert_int_equal(ch_config_load_file(&c, path, &e), CH_OK);
    assert_memory_equal(&c, &d, sizeof(c));

    char missing[UNIT_PATH_MAX + 32];
    snprintf(missing, sizeof(missing), "%s/does-not-exist.yaml", f->dir);
    ch_err_clear(&e);
    assert_int_equal(ch_config_load_file(&c, missing, &e), CH_CONFIG);
    assert_int_equal(e.status, CH_CONFIG);
    assert_non_null(strstr(e.message, "does-not-exist.yaml"));

    /* a directory is not a config file */
    ch_err_clear(&e);
    assert_int_not_equal(ch_config_load_file(&c, f->dir, &e), CH_OK);
    assert_int_not_equal(e.status, CH_OK);
}

static void test_load_env(void **state)
{
    fixture *f = *state;
    char path[UNIT_PATH_MAX];
    unit_write_file(f->dir, "charter.yaml",
                    "listen: 127.0.0.1:1111\n"
                    "sessions:\n  retention:\n    sweep_interval: 10s\n"
                    "    close_idle_after: 1h\n",
                    path);
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    assert_int_equal(ch_config_load_file(&c, path, &e), CH_OK);
    assert_int_equal(c.retention.sweep_interval, 10000);

    /* nothing set: nothing changes */
    ch_config before;
    memcpy(&before, &c, sizeof(c));
    assert_int_equal(ch_config_load_env(&c, &e), CH_OK);
    assert_memory_equal(&c, &before, sizeof(c));

    assert_int_equal(setenv("CHARTER_LISTEN", "0.0.0.0:2222", 1), 0);
    assert_int_equal(setenv("CHARTER_SESSIONS_RETENTION_SWEEP_INTERVAL", "2s", 1), 0);
    assert_int_equal(setenv("CHARTER_MAX_BODY", "64KiB", 1), 0);
    assert_int_equal(setenv("CHARTER_LOG_LEVEL", "debug", 1), 0);
    assert_int_equal(setenv("CHARTER_DATA_DIR", "/tmp/x", 1), 0);
    assert_int_equal(setenv("CHARTER_THREADS", "2", 1), 0);
    assert_int_equal(setenv("CHARTER_DRAIN_TIMEOUT", "1m", 1), 0);
    assert_int_equal(setenv("CHARTER_SESSIONS_RETENTION_DELETE_ARCHIVED_AFTER", "5d", 1), 0);
    assert_int_equal(setenv("CHARTER_SESSIONS_RETENTION_ARCHIVE_CLOSED_AFTER", "6d", 1), 0);
    assert_int_equal(ch_config_load_env(&c, &e), CH_OK);
    assert_string_equal(c.listen, "0.0.0.0:2222");
    assert_int_equal(c.retention.sweep_interval, 2000);
    assert_int_equal(c.retention.close_idle_after, 3600000); /* from the file */
    assert_int_equal(c.retention.delete_archived_after, 5LL * 86400000);
    assert_int_equal(c.retention.archive_closed_after, 6LL * 86400000);
    assert_int_equal(c.max_body, 65536);
    assert_int_equal(c.log_level, CH_LOG_DEBUG);
    assert_string_equal(c.data_dir, "/tmp/x");
    assert_int_equal(c.threads, 2);
    assert_int_equal(c.drain_timeout, 60000);

    /* Lower-case or partial names are not read. */
    clear_env();
    assert_int_equal(setenv("charter_listen", "1.2.3.4:5", 1), 0);
    assert_int_equal(setenv("CHARTER_SESSIONS_SWEEP_INTERVAL", "1s", 1), 0);
    memcpy(&before, &c, sizeof(c));
    assert_int_equal(ch_config_load_env(&c, &e), CH_OK);
    assert_memory_equal(&c, &before, sizeof(c));
    unsetenv("charter_listen");
    unsetenv("CHARTER_SESSIONS_SWEEP_INTERVAL");
}

static void test_load_env_errors(void **state)
{
    (void)state;
    static const char *const bad[][3] = {
        {"CHARTER_LISTEN", "nowhere", "listen"},
        {"CHARTER_MAX_BODY", "lots", "max_body"},
        {"CHARTER_SESSIONS_RETENTION_SWEEP_INTERVAL", "2", "sessions.retention.sweep_interval"},
        {"CHARTER_LOG_LEVEL", "loud", "log_level"},
        {"CHARTER_THREADS", "x", "threads"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ch_config c;
        ch_err e;
        ch_config_defaults(&c);
        ch_err_clear(&e);
        assert_int_equal(setenv(bad[i][0], bad[i][1], 1), 0);
        ch_status st = ch_config_load_env(&c, &e);
        unsetenv(bad[i][0]);
        if (st == CH_OK)
            fail_msg("%s=%s accepted", bad[i][0], bad[i][1]);
        assert_int_equal(st, CH_CONFIG);
        assert_int_equal(e.status, CH_CONFIG);
        assert_string_equal(e.field, bad[i][2]);
        /* the message names the setting, so an operator can find it */
        if (strstr(e.message, bad[i][2]) == NULL)
            fail_msg("message '%s' does not name %s", e.message, bad[i][2]);
    }
}

static void test_to_json(void **state)
{
    (void)state;
    ch_config c;
    ch_err e;
    ch_config_defaults(&c);
    json_t *j = ch_config_to_json(&c);
    assert_non_null(j);
    assert_true(json_is_object(j));
    assert_int_equal(json_object_size(j), NKEYS);
    for (size_t i = 0; i < NKEYS; i++) {
        if (json_object_get(j, all_keys[i]) == NULL)
            fail_msg("key %s missing from the JSON", all_keys[i]);
    }
    assert_string_equal(json_string_value(json_object_get(j, "listen")), "127.0.0.1:7433");
    assert_string_equal(json_string_value(json_object_get(j, "data_dir")), "./charter-data");
    assert_string_equal(json_string_value(json_object_get(j, "store")), "sqlite");
    assert_string_equal(json_string_value(json_object_get(j, "log_level")), "info");
    assert_int_equal(json_integer_value(json_object_get(j, "max_body")), 1048576);
    assert_int_equal(json_integer_value(json_object_get(j, "threads")), 0);
    json_decref(j);

    /* The rendered values read back through ch_config_set give the same config. */
    assert_int_equal(ch_config_set(&c, "sessions.retention.sweep_interval", "1500ms", &e), CH_OK);
    assert_int_equal(ch_config_set(&c, "log_level", "warn", &e), CH_OK);
    assert_int_equal(ch_config_set(&c, "ephemeral.log_evictions", "false", &e), CH_OK);
    assert_int_equal(ch_config_set(&c, "ephemeral.idle_ttl", "45", &e), CH_OK);
    j = ch_config_to_json(&c);
    ch_config back;
    ch_config_defaults(&back);
    for (size_t i = 0; i < NKEYS; i++) {
        json_t *v = json_object_get(j, all_keys[i]);
        char text[1100];
        if (json_is_string(v))
            snprintf(text, sizeof(text), "%s", json_string_value(v));
        else if (json_is_boolean(v))
            snprintf(text, sizeof(text), "%s", json_is_true(v) ? "true" : "false");
        else
            snprintf(text, sizeof(text), "%lld", (long long)json_integer_value(v));
        if (ch_config_set(&back, all_keys[i], text, &e) != CH_OK)
            fail_msg("%s = '%s' from the JSON does not read back: %s", all_keys[i], text,
                     e.message);
    }
    assert_memory_equal(&back, &c, sizeof(c));
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_set_each_key),
        cmocka_unit_test(test_set_errors),
        cmocka_unit_test(test_set_max_body_zero),
        cmocka_unit_test_setup_teardown(test_load_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_file_flow_style, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_file_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_file_empty_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_env_errors, setup, teardown),
        cmocka_unit_test(test_to_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
