/*
 * config.c — charter's configuration: built-in defaults, then charter.yaml (libyaml),
 * then command-line flags, then CHARTER_* environment variables, each layer
 * overriding the one before. Every key is listed once in the table below, which
 * drives the YAML loader, the environment loader and --print-config alike.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "charter.h"

typedef enum {
    K_STRING,
    K_INT,
    K_SIZE,
    K_DURATION,
    K_LOG_LEVEL,
    K_LISTEN,
    K_BOOL,
    K_SECONDS
} key_kind;

typedef struct key_def {
    const char *name;
    key_kind kind;
    size_t offset;
    size_t size; /* for K_STRING: the buffer size */
} key_def;

#define FIELD(f) offsetof(ch_config, f), sizeof(((ch_config *)0)->f)

static const key_def keys[] = {
    {"listen", K_LISTEN, FIELD(listen)},
    {"data_dir", K_STRING, FIELD(data_dir)},
    {"store", K_STRING, FIELD(store)},
    {"threads", K_INT, FIELD(threads)},
    {"max_body", K_SIZE, FIELD(max_body)},
    {"log_level", K_LOG_LEVEL, FIELD(log_level)},
    {"drain_timeout", K_DURATION, FIELD(drain_timeout)},
    {"sessions.retention.close_idle_after", K_DURATION, FIELD(retention.close_idle_after)},
    {"sessions.retention.archive_closed_after", K_DURATION, FIELD(retention.archive_closed_after)},
    {"sessions.retention.delete_archived_after", K_DURATION,
     FIELD(retention.delete_archived_after)},
    {"sessions.retention.sweep_interval", K_DURATION, FIELD(retention.sweep_interval)},
    {"mandates.max_staleness", K_DURATION, FIELD(max_staleness)},
    {"events.retention", K_DURATION, FIELD(events_retention)},
    {"core_dumps", K_BOOL, FIELD(core_dumps)},
    {"ephemeral.engine", K_STRING, FIELD(ephemeral.engine)},
    {"ephemeral.redis_url", K_STRING, FIELD(ephemeral.redis_url)},
    {"ephemeral.default_ttl", K_SECONDS, FIELD(ephemeral.default_ttl)},
    {"ephemeral.max_ttl", K_SECONDS, FIELD(ephemeral.max_ttl)},
    {"ephemeral.idle_ttl", K_SECONDS, FIELD(ephemeral.idle_ttl)},
    {"ephemeral.command_ttl", K_SECONDS, FIELD(ephemeral.command_ttl)},
    {"ephemeral.gc_interval", K_DURATION, FIELD(ephemeral.gc_interval)},
    {"ephemeral.lock_grace", K_DURATION, FIELD(ephemeral.lock_grace)},
    {"ephemeral.purge_on_error", K_BOOL, FIELD(ephemeral.purge_on_error)},
    {"ephemeral.log_evictions", K_BOOL, FIELD(ephemeral.log_evictions)},
    {"ephemeral.exact_expiry", K_BOOL, FIELD(ephemeral.exact_expiry)},
};
#define NKEYS (sizeof(keys) / sizeof(keys[0]))

void ch_config_defaults(ch_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:7433");
    snprintf(c->data_dir, sizeof(c->data_dir), "./charter-data");
    snprintf(c->store, sizeof(c->store), "sqlite");
    c->threads = 0;
    c->max_body = 1 << 20;
    c->log_level = CH_LOG_INFO;
    c->drain_timeout = 10000;
    c->retention.close_idle_after = 7LL * 86400000;
    c->retention.archive_closed_after = 30LL * 86400000;
    c->retention.delete_archived_after = 0;
    c->retention.sweep_interval = 60000;
    c->max_staleness = 30000;
    c->events_retention = 7LL * 86400000;
    c->core_dumps = false;
    snprintf(c->ephemeral.engine, sizeof(c->ephemeral.engine), "memory");
    snprintf(c->ephemeral.redis_url, sizeof(c->ephemeral.redis_url), "redis://127.0.0.1:6379");
    c->ephemeral.default_ttl = 600000;
    c->ephemeral.max_ttl = 3600000;
    c->ephemeral.idle_ttl = 0;
    c->ephemeral.command_ttl = 60000;
    c->ephemeral.gc_interval = 30000;
    c->ephemeral.lock_grace = 60000;
    c->ephemeral.purge_on_error = true;
    c->ephemeral.log_evictions = true;
    c->ephemeral.exact_expiry = true;
}

static const key_def *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

static bool listen_valid(const char *v)
{
    const char *colon = strrchr(v, ':');
    if (colon == NULL || colon == v || colon[1] == '\0')
        return false;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    return *end == '\0' && port >= 0 && port <= 65535;
}

ch_status ch_config_set(ch_config *c, const char *key, const char *value, ch_err *e)
{
    const key_def *k = find_key(key);
    char *p;

    if (k == NULL)
        return ch_err_set(e, CH_CONFIG, key, "unknown config key '%s'", key);
    p = (char *)c + k->offset;
    switch (k->kind) {
    case K_LISTEN:
        if (!listen_valid(value))
            return ch_err_set(e, CH_CONFIG, key, "%s: expected HOST:PORT, got '%s'", key, value);
        /* fall through */
    case K_STRING:
        if (value[0] == '\0' || strlen(value) >= k->size)
            return ch_err_set(e, CH_CONFIG, key, "%s: empty or too long", key);
        memcpy(p, value, strlen(value) + 1);
        return CH_OK;
    case K_INT: {
        char *end;
        long n = strtol(value, &end, 10);
        if (value[0] == '\0' || *end != '\0' || n < 0 || n > 1024)
            return ch_err_set(e, CH_CONFIG, key, "%s: expected an integer 0-1024, got '%s'", key,
                              value);
        *(int *)p = (int)n;
        return CH_OK;
    }
    case K_SIZE: {
        uint64_t n;
        if (ch_size_parse(value, &n) != CH_OK || n == 0)
            return ch_err_set(e, CH_CONFIG, key, "%s: expected a size like 1MiB, got '%s'", key,
                              value);
        *(uint64_t *)p = n;
        return CH_OK;
    }
    case K_SECONDS:
    case K_DURATION: {
        int64_t ms;
        /* A time to live may be a bare number of seconds ("default_ttl: 600"); other
         * durations need their unit, so "10" is never guessed at. */
        if (k->kind == K_SECONDS && value[0] != '\0' &&
            strspn(value, "0123456789") == strlen(value) && strlen(value) < 12)
            ms = strtoll(value, NULL, 10) * 1000;
        else if (ch_duration_parse(value, &ms) != CH_OK)
            return ch_err_set(e, CH_CONFIG, key,
                              "%s: expected a duration like 500ms, 30s, 5m, 24h, 7d; got '%s'", key,
                              value);
        *(int64_t *)p = ms;
        return CH_OK;
    }
    case K_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "on") == 0 ||
            strcmp(value, "1") == 0)
            *(bool *)p = true;
        else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0 ||
                 strcmp(value, "off") == 0 || strcmp(value, "0") == 0)
            *(bool *)p = false;
        else
            return ch_err_set(e, CH_CONFIG, key, "%s: expected true or false, got '%s'", key,
                              value);
        return CH_OK;
    case K_LOG_LEVEL:
        if (ch_log_level_parse(value, (ch_log_level *)p) != CH_OK)
            return ch_err_set(e, CH_CONFIG, key, "%s: expected debug, info, warn or error", key);
        return CH_OK;
    }
    return ch_err_set(e, CH_INTERNAL, key, NULL);
}

/* Walks a YAML mapping, joining nested keys with '.', and sets each scalar leaf. */
static ch_status apply_node(ch_config *c, yaml_document_t *doc, yaml_node_t *node,
                            const char *prefix, int depth, ch_err *e)
{
    /* Every key is at most three levels deep; the cap also stops alias cycles. */
    if (depth > 4)
        return ch_err_set(e, CH_CONFIG, prefix, "%s: nested too deeply", prefix);
    if (node->type != YAML_MAPPING_NODE)
        return ch_err_set(e, CH_CONFIG, prefix, "%s: expected a mapping",
                          prefix[0] ? prefix : "top level");
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
         pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *kn = yaml_document_get_node(doc, pair->key);
        yaml_node_t *vn = yaml_document_get_node(doc, pair->value);
        char name[256];
        if (kn == NULL || vn == NULL || kn->type != YAML_SCALAR_NODE)
            return ch_err_set(e, CH_CONFIG, prefix, "keys must be plain scalars");
        snprintf(name, sizeof(name), "%s%s%s", prefix, prefix[0] ? "." : "",
                 (const char *)kn->data.scalar.value);
        ch_status st;
        if (vn->type == YAML_MAPPING_NODE) {
            st = apply_node(c, doc, vn, name, depth + 1, e);
        } else if (vn->type == YAML_SCALAR_NODE) {
            st = ch_config_set(c, name, (const char *)vn->data.scalar.value, e);
        } else {
            st = ch_err_set(e, CH_CONFIG, name, "%s: lists are not accepted here", name);
        }
        if (st != CH_OK)
            return st;
    }
    return CH_OK;
}

ch_status ch_config_load_file(ch_config *c, const char *path, ch_err *e)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    ch_status st = CH_OK;
    FILE *f = fopen(path, "rb");

    if (f == NULL)
        return ch_err_set(e, CH_CONFIG, NULL, "cannot open config %s: %m", path);
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        st = ch_err_set(e, CH_CONFIG, NULL, "%s:%zu:%zu: %s", path, parser.problem_mark.line + 1,
                        parser.problem_mark.column + 1,
                        parser.problem ? parser.problem : "YAML error");
        goto fail;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    /* An empty file is a valid, empty configuration. */
    if (root != NULL && !(root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0)) {
        st = apply_node(c, &doc, root, "", 0, e);
        if (st != CH_OK) {
            char msg[sizeof(e->message)];
            snprintf(msg, sizeof(msg), "%s", e->message);
            snprintf(e->message, sizeof(e->message), "%.100s: %.150s", path, msg);
        }
    }
    yaml_document_delete(&doc);
fail:
    yaml_parser_delete(&parser);
    fclose(f);
    return st;
}

ch_status ch_config_load_env(ch_config *c, ch_err *e)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char var[128] = "CHARTER_";
        size_t n = strlen(var);
        for (const char *s = keys[i].name; *s && n < sizeof(var) - 1; s++)
            var[n++] = *s == '.' ? '_' : (char)toupper((unsigned char)*s);
        var[n] = '\0';
        const char *v = getenv(var);
        if (v == NULL)
            continue;
        ch_status st = ch_config_set(c, keys[i].name, v, e);
        if (st != CH_OK) {
            char msg[sizeof(e->message)];
            snprintf(msg, sizeof(msg), "%s", e->message);
            snprintf(e->message, sizeof(e->message), "%.100s: %.150s", var, msg);
            return st;
        }
    }
    return CH_OK;
}

json_t *ch_config_to_json(const ch_config *c)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    json_t *root = json_object();
    for (size_t i = 0; i < NKEYS; i++) {
        const char *p = (const char *)c + keys[i].offset;
        json_t *v = NULL;
        switch (keys[i].kind) {
        case K_STRING:
        case K_LISTEN:
            v = json_string(p);
            break;
        case K_INT:
            v = json_integer(*(const int *)p);
            break;
        case K_SIZE:
            v = json_integer((json_int_t) * (const uint64_t *)p);
            break;
        case K_SECONDS:
        case K_DURATION: {
            char buf[32];
            snprintf(buf, sizeof(buf), "%lldms", (long long)*(const int64_t *)p);
            v = json_string(buf);
            break;
        }
        case K_LOG_LEVEL:
            v = json_string(levels[*(const ch_log_level *)p]);
            break;
        case K_BOOL:
            v = json_boolean(*(const bool *)p);
            break;
        }
        json_object_set_new(root, keys[i].name, v);
    }
    return root;
}
