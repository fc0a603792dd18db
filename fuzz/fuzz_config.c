/*
 * fuzz_config.c — charter.yaml as an operator might write it: the bytes are loaded
 * with ch_config_load_file, and a NUL-terminated copy goes through the value parsers
 * (durations, sizes, and ch_config_set for every key).
 *
 * Besides "no crash, no leak": a failed load leaves an error message; a successful
 * one leaves a configuration that keeps every invariant the parsers promise.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "charter.h"

#define MAX_VALUE_COPY 256

static char dir[1024];
static char path[1100];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

static const char *config_path(void)
{
    const char *tmp = getenv("TMPDIR");
    if (path[0] != '\0')
        return path;
    snprintf(dir, sizeof(dir), "%s/charter-fuzz-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(path, sizeof(path), "%s/charter.yaml", dir);
    atexit(cleanup);
    return path;
}

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_config: %s: %s\n", what, detail);
    abort();
}

/* What every configuration the parsers accepted satisfies. With json, also that
 * --print-config can show every key (values from YAML are UTF-8, so they can). */
static void check_config(const ch_config *c, bool json)
{
    if (strchr(c->listen, ':') == NULL)
        fail("listen has no port", c->listen);
    if (c->data_dir[0] == '\0' || c->store[0] == '\0')
        fail("empty data_dir or store", c->data_dir);
    if (c->threads < 0 || c->threads > 1024)
        fail("threads out of range", "");
    if (c->max_body == 0)
        fail("max_body is 0", "");
    if ((unsigned)c->log_level > CH_LOG_ERROR)
        fail("log_level out of range", "");
    if (c->drain_timeout < 0 || c->retention.close_idle_after < 0 ||
        c->retention.archive_closed_after < 0 || c->retention.delete_archived_after < 0 ||
        c->retention.sweep_interval < 0 || c->max_staleness < 0 || c->events_retention < 0 ||
        c->ephemeral.default_ttl < 0 || c->ephemeral.max_ttl < 0 || c->ephemeral.idle_ttl < 0 ||
        c->ephemeral.command_ttl < 0 || c->ephemeral.gc_interval < 0 ||
        c->ephemeral.lock_grace < 0)
        fail("negative duration", "");
    if (c->ephemeral.engine[0] == '\0' || c->ephemeral.redis_url[0] == '\0')
        fail("empty ephemeral engine or redis_url", "");
    if (!json)
        return;
    json_t *j = ch_config_to_json(c);
    if (j == NULL || json_object_size(j) != 25)
        fail("ch_config_to_json lost keys", c->data_dir);
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const keys[] = {
        "listen",     "data_dir",  "store",         "threads",
        "max_body",   "log_level", "drain_timeout", "sessions.retention.sweep_interval",
        "no.such.key"};
    ch_config c;
    ch_err e;
    char value[MAX_VALUE_COPY + 1];

    FILE *f = fopen(config_path(), "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        fail("cannot write", path);

    ch_config_defaults(&c);
    ch_err_clear(&e);
    ch_status st = ch_config_load_file(&c, path, &e);
    if (st != CH_OK) {
        if (e.status != st || e.message[0] == '\0')
            fail("failed load without an error message", e.message);
    } else {
        check_config(&c, true);
    }

    /* The same bytes as one value. */
    size_t n = size < MAX_VALUE_COPY ? size : MAX_VALUE_COPY;
    memcpy(value, data, n);
    value[n] = '\0';
    int64_t ms = -1;
    if (ch_duration_parse(value, &ms) == CH_OK && ms < 0)
        fail("negative duration parsed", value);
    uint64_t bytes = 0;
    (void)ch_size_parse(value, &bytes);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        ch_config_defaults(&c);
        ch_err_clear(&e);
        if (ch_config_set(&c, keys[i], value, &e) != CH_OK) {
            if (e.message[0] == '\0')
                fail("ch_config_set failed without a message", keys[i]);
            continue;
        }
        /* Raw bytes may be any encoding (like an environment variable): no JSON check. */
        check_config(&c, false);
    }
    return 0;
}
