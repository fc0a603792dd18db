/*
 * scopes.c — the ephemeral scope API: create, read, change, lock, extend, upgrade,
 * delete, agent exit, and completion into a session's facts.
 *
 * Every call runs on the caller's thread under the scope's shard lock, so calls on
 * one scope are serialized and a read-modify-write of its context cannot lose an
 * update. Replies are built as JSON text straight into the caller's buffer: the
 * context is already canonical JSON text in its engine and is copied, not re-encoded.
 *
 * Secrets: a `secure` scope's context only ever exists in guarded memory, in the
 * jansson trees of the one request that reads or writes it, and in that request's
 * reply; the intermediate texts built here are wiped before they are freed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ephemeral/ephemeral.h"

#define MAX_CONTEXT (64 * 1024)
#define MAX_KEY 256
#define MAX_AGENT 256

static ch__eph *eph_of(ch_db *db, ch_err *e)
{
    ch__eph *x = ch__db_eph(db);
    if (x == NULL)
        ch_err_set(e, CH_UNAVAILABLE, NULL,
                   "ephemeral scopes are only served by a database opened with background work");
    return x;
}

/* Frees text, wiping it first when it may hold a secret. */
static void text_free(char *text, size_t len, bool secret)
{
    if (text != NULL && secret)
        sodium_memzero(text, len);
    free(text);
}

static void buf_wipe_free(ch_buf *b, bool secret)
{
    if (b->data != NULL && secret)
        sodium_memzero(b->data, b->cap);
    ch_buf_free(b);
}

/* ---- input ------------------------------------------------------------------------ */

/* A duration field: a number of seconds (fractions allowed, to the millisecond) or a
 * string such as "500ms", "30s", "5m". */
static ch_status field_duration(const json_t *obj, const char *name, bool zero_ok, int64_t *ms,
                                bool *present, ch_err *e)
{
    json_t *v = json_object_get(obj, name);
    *present = v != NULL && !json_is_null(v);
    if (!*present)
        return CH_OK;
    if (json_is_number(v)) {
        double secs = json_number_value(v);
        if (!isfinite(secs) || secs < 0 || secs > 1e9)
            return ch_err_set(e, CH_INVALID_VALUE, name, "'%s' must be a number of seconds", name);
        *ms = (int64_t)llround(secs * 1000.0);
    } else if (json_is_string(v)) {
        if (ch_duration_parse(json_string_value(v), ms) != CH_OK)
            return ch_err_set(e, CH_INVALID_VALUE, name,
                              "'%s' must be seconds or a duration like 500ms, 30s, 5m", name);
    } else {
        return ch_err_set(e, CH_INVALID_TYPE, name,
                          "'%s' must be a number of seconds or a duration string", name);
    }
    if (*ms == 0 && !zero_ok)
        return ch_err_set(e, CH_INVALID_VALUE, name, "'%s' must be greater than 0", name);
    return CH_OK;
}

static ch_status field_bool(const json_t *obj, const char *name, bool *out, ch_err *e)
{
    json_t *v = json_object_get(obj, name);
    if (v == NULL || json_is_null(v))
        return CH_OK;
    if (!json_is_boolean(v))
        return ch_err_set(e, CH_INVALID_TYPE, name, "'%s' must be true or false", name);
    *out = json_is_true(v);
    return CH_OK;
}

static ch_status check_key(const char *field, const char *key, ch_err *e)
{
    size_t n = strlen(key);
    if (n == 0 || n > MAX_KEY)
        return ch_err_set(e, CH_INVALID_VALUE, field, "context keys must be 1 to %d bytes",
                          MAX_KEY);
    json_t *probe = json_stringn(key, n); /* NULL unless valid UTF-8 */
    if (probe == NULL)
        return ch_err_set(e, CH_INVALID_VALUE, field, "context keys must be valid UTF-8");
    json_decref(probe);
    return CH_OK;
}

/* Every key of a context object is a valid key. */
static ch_status check_keys(const json_t *ctx, ch_err *e)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)ctx, k, v)
    {
        char field[300];
        snprintf(field, sizeof(field), "context.%.256s", k);
        if (check_key(field, k, e) != CH_OK)
            return e->status;
    }
    return CH_OK;
}

/* ---- output ----------------------------------------------------------------------- */

static void append_text(void *arg, const char *text, size_t len)
{
    ch_buf_append(arg, text, len);
}

#define LIT(out, s) ch_buf_append((out), (s), sizeof(s) - 1)

static void append_str(ch_buf *out, const char *s)
{
    ch_buf_append(out, s, strlen(s));
}

static void append_time(ch_buf *out, int64_t ms)
{
    char t[32];
    ch_time_format(ms, t);
    ch_buf_append(out, "\"", 1);
    append_str(out, t);
    ch_buf_append(out, "\"", 1);
}

/* Seconds with up to three decimals: 600, 1.5, 0.25. */
static void append_seconds(ch_buf *out, int64_t ms)
{
    char d[32];
    int n = sizeof(d);
    int64_t whole = ms / 1000, frac = ms % 1000;
    if (frac != 0) {
        int digits = 3;
        while (frac % 10 == 0) {
            frac /= 10;
            digits--;
        }
        while (digits-- > 0) {
            d[--n] = (char)('0' + frac % 10);
            frac /= 10;
        }
        d[--n] = '.';
    }
    do {
        d[--n] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole > 0 && n > 0);
    ch_buf_append(out, d + n, sizeof(d) - (size_t)n);
}

/* Appends s's public JSON to out. shard locked. This is the hot path of every read:
 * it copies, never formats through printf. */
static ch_status render(ch__eph *x, ch__escope *s, ch_buf *out, ch_err *e)
{
    size_t mark = out->len;
    LIT(out, "{\"id\":\"");
    append_str(out, s->id);
    LIT(out, "\",\"agent_id\":");
    append_str(out, s->agent->json);
    LIT(out, ",\"flow\":\"");
    append_str(out, ch__flow_name(s->flow));
    LIT(out, "\",\"created_at\":");
    append_time(out, s->created_at);
    LIT(out, ",\"expires_at\":");
    append_time(out, s->expires_at);
    LIT(out, ",\"last_used_at\":");
    append_time(out, s->last_used);
    LIT(out, ",\"ttl\":");
    append_seconds(out, s->ttl);
    LIT(out, ",\"idle_ttl\":");
    append_seconds(out, s->idle_ttl);
    if (s->auto_extend)
        LIT(out, ",\"auto_extend\":true");
    else
        LIT(out, ",\"auto_extend\":false");
    if (s->locked)
        LIT(out, ",\"locked\":true");
    else
        LIT(out, ",\"locked\":false");
    if (s->grace_until != 0) {
        LIT(out, ",\"grace_until\":");
        append_time(out, s->grace_until);
    }
    LIT(out, ",\"context\":");
    /* Every scope stores its context when it is created: an engine without it has lost
     * it (restarted empty, evicted under memory pressure), which is an engine failure. */
    ch_status st = s->engine->methods->get(s->engine, s->id, &s->slot, append_text, out);
    if (st == CH_NOT_FOUND)
        st = CH_IO;
    if (st != CH_OK) {
        out->len = mark;
        return ch_err_set(e, st, NULL, "the %s engine failed to read the context",
                          s->engine->methods->name);
    }
    LIT(out, "}");
    return CH_OK;
}

/* Reads s's context as a JSON object (new reference). shard locked. */
static ch_status load_context(ch__escope *s, json_t **ctx, ch_err *e)
{
    ch_buf b = {0};
    ch_status st = s->engine->methods->get(s->engine, s->id, &s->slot, append_text, &b);
    bool secret = s->flow == CH__FLOW_SECURE;
    if (st != CH_OK) {
        buf_wipe_free(&b, secret);
        if (st == CH_NOT_FOUND)
            return ch_err_set(e, CH_IO, NULL, "the %s engine has lost the scope's context",
                              s->engine->methods->name);
        return ch_err_set(e, st, NULL, "the %s engine failed to read the context",
                          s->engine->methods->name);
    }
    *ctx = json_loadb(b.data ? b.data : "{}", b.data ? b.len : 2, 0, NULL);
    buf_wipe_free(&b, secret);
    if (!json_is_object(*ctx)) {
        json_decref(*ctx);
        *ctx = NULL;
        return ch_err_set(e, CH_IO, NULL, "the stored context is not a JSON object");
    }
    return CH_OK;
}

/* Stores ctx as s's whole context. shard locked. */
static ch_status store_context(ch__eph *x, ch__escope *s, const json_t *ctx, ch_err *e)
{
    size_t len;
    char *text = ch_json_canonical(ctx, &len);
    bool secret = s->flow == CH__FLOW_SECURE;
    if (text == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    if (len > MAX_CONTEXT) {
        text_free(text, len, secret);
        return ch_err_set(e, CH_INVALID_VALUE, "context", "a context is at most %d bytes",
                          MAX_CONTEXT);
    }
    ch_status st = s->engine->methods->put(s->engine, s->id, &s->slot, text, len, s->expires_at);
    text_free(text, len, secret);
    if (st != CH_OK)
        return ch_err_set(e, st, NULL, "the %s engine failed to store the context",
                          s->engine->methods->name);
    ch__scope_bytes(x, s, len);
    s->backstop = s->expires_at;
    return CH_OK;
}

/* Tells the engine about a later expires_at when its backstop would otherwise come
 * first (at most about once a second per scope). */
static ch_status move_backstop(ch__escope *s, ch_err *e)
{
    const ch_scope_engine_methods *m = s->engine->methods;
    if (m->expire == NULL || s->expires_at - s->backstop < 1000)
        return CH_OK;
    ch_status st = m->expire(s->engine, s->id, &s->slot, s->expires_at);
    if (st != CH_OK)
        return ch_err_set(e, st, NULL, "the %s engine failed to move the expiry", m->name);
    s->backstop = s->expires_at;
    return CH_OK;
}

/* A use of s: idle time restarts, and an auto_extend scope moves its deadline to
 * now + ttl (never past created_at + max_ttl). Deadlines only move later here, so the
 * timer needs no news: it looks again when the old deadline comes. */
static ch_status use(ch__eph *x, ch__escope *s, int64_t now, ch_err *e)
{
    s->last_used = now;
    if (s->auto_extend && s->grace_until == 0) {
        int64_t until = now + s->ttl, cap = s->created_at + ch__eph_config(x)->max_ttl;
        if (until > cap)
            until = cap;
        if (until > s->expires_at) {
            s->expires_at = until;
            return move_backstop(s, e);
        }
    }
    return CH_OK;
}

/* Refuses a mutation of s (shard locked; unlocked on refusal). */
static ch_status may_mutate(ch__eph *x, ch__escope *s, ch_err *e)
{
    if (s->locked) {
        ch__scope_unlock(x, s);
        return ch_err_set(e, CH_SCOPE_LOCKED, NULL, "scope %s is locked; unlock it first", s->id);
    }
    if (s->completing) {
        ch__scope_unlock(x, s);
        return ch_err_set(e, CH_INVALID_STATE, NULL, "scope %s is being completed", s->id);
    }
    return CH_OK;
}

static ch__escope *find(ch__eph *x, const char *tenant, const char *id, ch_err *e)
{
    ch__escope *s = ch_id_valid("eph", id) ? ch__scope_lock(x, tenant, id) : NULL;
    /* A scope past its deadline is over even if no timer has ended it yet (the timer
     * is a moment away, or only the GC sweep runs): no request may use it. */
    if (s != NULL && ch__scope_settle(x, s, ch_now_ms()))
        s = NULL;
    if (s == NULL)
        ch_err_set(e, CH_NOT_FOUND, NULL, "scope not found");
    return s;
}

/* An engine failure on s: purge_on_error destroys the scope (fail-safe). */
static ch_status engine_failed(ch__eph *x, ch__escope *s, ch_err *e)
{
    if (e->status == CH_INVALID_VALUE || e->status == CH_NOMEM) {
        ch__scope_unlock(x, s); /* the request's fault (or ours), not the scope's */
        return e->status;
    }
    ch__scope_failed(x, s);
    return e->status;
}

/* ---- create ----------------------------------------------------------------------- */

static const char *const create_fields[] = {"agent",       "ttl",     "idle_ttl", "flow",
                                            "auto_extend", "context", NULL};

ch_status ch_scope_create(ch_db *db, const char *tenant, const json_t *body, ch_buf *out, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    const ch_ephemeral_config *cfg;
    const char *agent, *flow_name = NULL;
    int64_t ttl = 0, idle = 0;
    bool has_ttl, has_idle, auto_extend = false;
    int flow = CH__FLOW_SCOPED;
    json_t *ctx = NULL;

    ch_err_clear(e);
    if (x == NULL)
        return e->status;
    cfg = ch__eph_config(x);
    if (body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    if (ch__fields_known(body, "", create_fields, e) != CH_OK ||
        ch__field_string(body, "", "agent", true, MAX_AGENT, &agent, e) != CH_OK ||
        ch__field_string(body, "", "flow", false, 16, &flow_name, e) != CH_OK ||
        field_duration(body, "ttl", false, &ttl, &has_ttl, e) != CH_OK ||
        field_duration(body, "idle_ttl", true, &idle, &has_idle, e) != CH_OK ||
        field_bool(body, "auto_extend", &auto_extend, e) != CH_OK ||
        ch__field_object(body, "", "context", &ctx, e) != CH_OK)
        return e->status;
    if (flow_name != NULL) {
        if (strcmp(flow_name, "command") == 0)
            flow = CH__FLOW_COMMAND;
        else if (strcmp(flow_name, "secure") == 0)
            flow = CH__FLOW_SECURE;
        else if (strcmp(flow_name, "scoped") != 0)
            return ch_err_set(e, CH_INVALID_VALUE, "flow",
                              "flow must be \"command\", \"scoped\" or \"secure\"");
    }
    if (!has_ttl)
        ttl = flow == CH__FLOW_COMMAND ? cfg->command_ttl : cfg->default_ttl;
    if (ttl > cfg->max_ttl)
        return ch_err_set(e, CH_INVALID_VALUE, "ttl", "ttl is above ephemeral.max_ttl (%lld s)",
                          (long long)(cfg->max_ttl / 1000));
    if (!has_idle)
        idle = cfg->idle_ttl;
    if (idle > cfg->max_ttl)
        return ch_err_set(e, CH_INVALID_VALUE, "idle_ttl",
                          "idle_ttl is above ephemeral.max_ttl (%lld s)",
                          (long long)(cfg->max_ttl / 1000));
    if (ctx != NULL && check_keys(ctx, e) != CH_OK)
        return e->status;

    ch__escope *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    char id[CH_ID_MAX];
    ch_id_new_random("eph", id);
    memcpy(s->id, id, sizeof(s->id));
    s->flow = (uint8_t)flow;
    s->engine = ch__eph_engine(x, (ch__flow)flow);
    s->created_at = s->last_used = ch_now_ms();
    s->expires_at = s->created_at + ttl;
    s->ttl = ttl;
    s->idle_ttl = idle;
    s->auto_extend = auto_extend;
    s->heap_idx = -1;

    json_t *empty = NULL;
    if (ctx == NULL && (ctx = empty = json_object()) == NULL) {
        free(s);
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    /* No agent yet: store_context only needs the engine and the id. */
    ch_status st = store_context(x, s, ctx, e);
    json_decref(empty);
    if (st != CH_OK) {
        free(s);
        return st;
    }
    if (ch__scope_insert(x, s, tenant, agent, e) != CH_OK) {
        s->engine->methods->del(s->engine, s->id, &s->slot);
        ch__scope_bytes(x, s, 0);
        free(s);
        return e->status;
    }
    st = render(x, s, out, e);
    ch__scope_unlock(x, s);
    return st;
}

/* ---- reads ------------------------------------------------------------------------ */

ch_status ch_scope_get(ch_db *db, const char *tenant, const char *id, ch_buf *out, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    ch_err_clear(e);
    if (x == NULL)
        return e->status;
    ch__escope *s = find(x, tenant, id, e);
    if (s == NULL)
        return e->status;
    if (use(x, s, ch_now_ms(), e) != CH_OK || render(x, s, out, e) != CH_OK)
        return engine_failed(x, s, e);
    ch__scope_unlock(x, s);
    return CH_OK;
}

/* Appends {"key":k,"value":v} (and expires_at when with_expiry) to out. */
static ch_status render_key(ch__escope *s, const char *key, const json_t *value, bool with_expiry,
                            ch_buf *out, ch_err *e)
{
    json_t *k = json_string(key);
    char *ktext = k ? json_dumps(k, JSON_ENCODE_ANY) : NULL;
    char *vtext = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(k);
    if (ktext == NULL || vtext == NULL) {
        free(ktext);
        free(vtext);
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    ch_buf_printf(out, "{\"key\":%s,\"value\":", ktext);
    ch_buf_append(out, vtext, strlen(vtext));
    if (with_expiry) {
        char at[32];
        ch_time_format(s->expires_at, at);
        ch_buf_printf(out, ",\"expires_at\":\"%s\"", at);
    }
    ch_buf_append(out, "}", 1);
    free(ktext);
    text_free(vtext, strlen(vtext), s->flow == CH__FLOW_SECURE);
    return CH_OK;
}

static void context_free(json_t *ctx, bool secret)
{
    if (secret)
        ch_json_wipe(ctx);
    json_decref(ctx);
}

/* The engine's single-key methods, when it has them (NULL otherwise). */
static const ch_scope_engine_methods *keyed(const ch__escope *s)
{
    const ch_scope_engine_methods *m = s->engine->methods;
    return m->version >= 2 && m->put_key != NULL && m->get_key != NULL ? m : NULL;
}

/* key as JSON string text, quotes included (malloc'd). Keys are mostly plain
 * printable ASCII, whose JSON text is the key in quotes; anything else is left to
 * jansson's encoder. */
static char *key_text(const char *key)
{
    size_t n = 0;
    while (key[n] >= 0x20 && key[n] < 0x7f && key[n] != '"' && key[n] != '\\')
        n++;
    if (key[n] == '\0') {
        char *t = malloc(n + 3);
        if (t != NULL) {
            t[0] = '"';
            memcpy(t + 1, key, n);
            t[n + 1] = '"';
            t[n + 2] = '\0';
        }
        return t;
    }
    json_t *k = json_string(key);
    char *t = k ? json_dumps(k, JSON_ENCODE_ANY) : NULL;
    json_decref(k);
    return t;
}

ch_status ch_scope_get_key(ch_db *db, const char *tenant, const char *id, const char *key,
                           ch_buf *out, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    json_t *ctx = NULL;
    ch_err_clear(e);
    if (x == NULL || check_key("key", key, e) != CH_OK)
        return e->status;
    ch__escope *s = find(x, tenant, id, e);
    if (s == NULL)
        return e->status;
    bool secret = s->flow == CH__FLOW_SECURE;
    if (use(x, s, ch_now_ms(), e) != CH_OK)
        return engine_failed(x, s, e);
    const ch_scope_engine_methods *m = keyed(s);
    if (m != NULL) {
        /* One key, straight from the engine: {"key":K,"value":V} without parsing. */
        char *kt = key_text(key);
        if (kt == NULL) {
            ch__scope_unlock(x, s);
            return ch_err_set(e, CH_NOMEM, NULL, NULL);
        }
        size_t mark = out->len;
        LIT(out, "{\"key\":");
        append_str(out, kt);
        LIT(out, ",\"value\":");
        ch_status st = m->get_key(s->engine, s->id, &s->slot, kt, strlen(kt), append_text, out);
        free(kt);
        if (st == CH_OK) {
            LIT(out, "}");
            ch__scope_unlock(x, s);
            return CH_OK;
        }
        out->len = mark;
        if (st == CH_NOT_FOUND) {
            ch__scope_unlock(x, s);
            return ch_err_set(e, CH_NOT_FOUND, "key", "the context has no such key");
        }
        ch_err_set(e, st, NULL, "the %s engine failed to read the key", m->name);
        return engine_failed(x, s, e);
    }
    if (load_context(s, &ctx, e) != CH_OK)
        return engine_failed(x, s, e);
    json_t *v = json_object_get(ctx, key);
    ch_status st = v == NULL ? ch_err_set(e, CH_NOT_FOUND, "key", "the context has no such key")
                             : render_key(s, key, v, false, out, e);
    context_free(ctx, secret);
    ch__scope_unlock(x, s);
    return st;
}

/* ---- context writes --------------------------------------------------------------- */

/* Stores ctx (consumed) as s's context (shard locked; unlocked on failure). */
static ch_status rewrite(ch__eph *x, ch__escope *s, json_t *ctx, ch_err *e)
{
    ch_status st = store_context(x, s, ctx, e);
    context_free(ctx, s->flow == CH__FLOW_SECURE);
    if (st != CH_OK)
        return engine_failed(x, s, e);
    return CH_OK;
}

static const char *const merge_fields[] = {"context", NULL};

ch_status ch_scope_merge(ch_db *db, const char *tenant, const char *id, const json_t *body,
                         ch_buf *out, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    json_t *patch = NULL, *ctx = NULL;
    const char *k;
    json_t *v;

    ch_err_clear(e);
    if (x == NULL)
        return e->status;
    if (body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    if (ch__fields_known(body, "", merge_fields, e) != CH_OK ||
        ch__field_object(body, "", "context", &patch, e) != CH_OK)
        return e->status;
    if (patch == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "context", "'context' is required");
    if (check_keys(patch, e) != CH_OK)
        return e->status;
    ch__escope *s = find(x, tenant, id, e);
    if (s == NULL || may_mutate(x, s, e) != CH_OK)
        return e->status;
    if (load_context(s, &ctx, e) != CH_OK)
        return engine_failed(x, s, e);
    /* A merge patch, one level deep: keys are set, a null removes its key. */
    json_object_foreach(patch, k, v)
    {
        /* Copies: the context is wiped when secret, and must not reach into the body. */
        if (json_is_null(v))
            json_object_del(ctx, k);
        else if (json_object_set_new(ctx, k, json_deep_copy(v)) != 0) {
            context_free(ctx, s->flow == CH__FLOW_SECURE);
            ch__scope_unlock(x, s);
            return ch_err_set(e, CH_NOMEM, NULL, NULL);
        }
    }
    if (rewrite(x, s, ctx, e) != CH_OK)
        return e->status;
    ch_status st = use(x, s, ch_now_ms(), e);
    if (st == CH_OK)
        st = render(x, s, out, e);
    if (st != CH_OK)
        return engine_failed(x, s, e);
    ch__scope_unlock(x, s);
    return CH_OK;
}

static const char *const put_fields[] = {"value", NULL};

ch_status ch_scope_put_key(ch_db *db, const char *tenant, const char *id, const char *key,
                           const json_t *body, ch_buf *out, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    json_t *ctx = NULL, *value;

    ch_err_clear(e);
    if (x == NULL || check_key("key", key, e) != CH_OK)
        return e->status;
    if (body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    if (ch__fields_known(body, "", put_fields, e) != CH_OK)
        return e->status;
    if ((value = json_object_get(body, "value")) == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "value", "'value' is required");
    ch__escope *s = find(x, tenant, id, e);
    if (s == NULL || may_mutate(x, s, e) != CH_OK)
        return e->status;
    const ch_scope_engine_methods *m = keyed(s);
    if (m != NULL) {
        /* The engine sets the one key: the rest of the context is not parsed. */
        bool secret = s->flow == CH__FLOW_SECURE;
        size_t vlen = 0, total = 0;
        char *kt = key_text(key), *vt = ch_json_canonical(value, &vlen);
        ch_status st = kt && vt ? m->put_key(s->engine, s->id, &s->slot, kt, strlen(kt), vt, vlen,
                                             MAX_CONTEXT, s->expires_at, &total)
                                : CH_NOMEM;
        if (st == CH_OK) {
            ch__scope_bytes(x, s, total);
            st = use(x, s, ch_now_ms(), e);
            if (st == CH_OK) {
                LIT(out, "{\"key\":");
                append_str(out, kt);
                LIT(out, ",\"value\":");
                ch_buf_append(out, vt, vlen);
                LIT(out, ",\"expires_at\":");
                append_time(out, s->expires_at);
                LIT(out, "}");
            }
        } else if (st == CH_INVALID_VALUE) {
            ch_err_set(e, st, "value", "a context is at most %d bytes", MAX_CONTEXT);
        } else {
            ch_err_set(e, st, NULL, "the %s engine failed to store the key", m->name);
        }
        free(kt);
        text_free(vt, vlen, secret);
        if (st != CH_OK)
            return engine_failed(x, s, e);
        ch__scope_unlock(x, s);
        return CH_OK;
    }
    if (load_context(s, &ctx, e) != CH_OK)
        return engine_failed(x, s, e);
    if (json_object_set_new(ctx, key, json_deep_copy(value)) != 0) {
        context_free(ctx, s->flow == CH__FLOW_SECURE);
        ch__scope_unlock(x, s);
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    if (rewrite(x, s, ctx, e) != CH_OK)
        return e->status;
    ch_status st = use(x, s, ch_now_ms(), e);
    if (st == CH_OK)
        st = render_key(s, key, value, true, out, e);
    if (st != CH_OK)
        return engine_failed(x, s, e);
    ch__scope_unlock(x, s);
    return CH_OK;
}

/* ---- lock, unlock, extend, upgrade ------------------------------------------------ */

static const char *const ttl_fields[] = {"ttl", NULL};

/* The deadline a ttl asks for from now, within max_ttl of the scope's creation. */
static ch_status new_deadline(ch__eph *x, ch__escope *s, const json_t *body, bool required,
                              int64_t dflt, int64_t *ttl, int64_t *until, ch_err *e)
{
    bool present = false;
    if (body != NULL && (ch__fields_known(body, "", ttl_fields, e) != CH_OK ||
                         field_duration(body, "ttl", false, ttl, &present, e) != CH_OK))
        return e->status;
    if (!present && required)
        return ch_err_set(e, CH_MISSING_FIELD, "ttl", "'ttl' is required");
    if (!present)
        *ttl = dflt;
    int64_t cap = s->created_at + ch__eph_config(x)->max_ttl;
    *until = ch_now_ms() + *ttl;
    if (*until > cap) {
        char at[32];
        ch_time_format(cap, at);
        return ch_err_set(e, CH_INVALID_VALUE, "ttl",
                          "a scope lives at most ephemeral.max_ttl (%lld s) from its creation, "
                          "until %s",
                          (long long)(ch__eph_config(x)->max_ttl / 1000), at);
    }
    return CH_OK;
}

/* Moves s from the memory engine to the configured one (command → scoped). */
static ch_status upgrade(ch__eph *x, ch__escope *s, ch_err *e)
{
    json_t *ctx = NULL;
    if (load_context(s, &ctx, e) != CH_OK)
        return e->status;
    ch_scope_engine *from = s->engine;
    void *old = s->slot;
    s->engine = ch__eph_engine(x, CH__FLOW_SCOPED);
    s->slot = NULL;
    ch_status st = store_context(x, s, ctx, e);
    json_decref(ctx);
    if (st != CH_OK) {
        s->engine = from;
        s->slot = old;
        return st;
    }
    from->methods->del(from, s->id, &old);
    return CH_OK;
}

ch_status ch_scope_act(ch_db *db, const char *tenant, const char *id, ch_scope_verb verb,
                       const json_t *body, ch_buf *out, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    int64_t ttl = 0, until = 0;

    ch_err_clear(e);
    if (x == NULL)
        return e->status;
    if ((verb == CH_SCOPE_LOCK || verb == CH_SCOPE_UNLOCK) && body != NULL &&
        json_object_size(body) > 0)
        return ch_err_set(e, CH_UNKNOWN_FIELD,
                          json_object_iter_key(json_object_iter((json_t *)body)),
                          "lock and unlock take no fields");
    ch__escope *s = find(x, tenant, id, e);
    if (s == NULL)
        return e->status;
    switch (verb) {
    case CH_SCOPE_LOCK:
        if (s->locked) {
            ch__scope_unlock(x, s);
            return ch_err_set(e, CH_SCOPE_LOCKED, NULL, "scope %s is already locked", s->id);
        }
        s->locked = true;
        ch__scope_locked(x, true);
        break;
    case CH_SCOPE_UNLOCK:
        if (!s->locked) {
            ch__scope_unlock(x, s);
            ch_err_set(e, CH_INVALID_STATE, NULL, "scope %s is not locked", id);
            snprintf(e->state, sizeof(e->state), "unlocked");
            return e->status;
        }
        s->locked = false;
        ch__scope_locked(x, false);
        break;
    case CH_SCOPE_EXTEND:
        if (may_mutate(x, s, e) != CH_OK)
            return e->status;
        if (new_deadline(x, s, body, true, 0, &ttl, &until, e) != CH_OK) {
            ch__scope_unlock(x, s);
            return e->status;
        }
        bool earlier = until < s->expires_at || s->grace_until != 0;
        s->expires_at = until;
        s->ttl = ttl;
        s->grace_until = 0;
        if (earlier)
            ch__scope_rearm(x, s);
        if (move_backstop(s, e) != CH_OK)
            return engine_failed(x, s, e);
        break;
    case CH_SCOPE_UPGRADE:
        if (s->flow != CH__FLOW_COMMAND) {
            ch__scope_unlock(x, s);
            ch_err_set(e, CH_INVALID_STATE, NULL, "only a command scope can be upgraded");
            snprintf(e->state, sizeof(e->state), "%s", ch__flow_name(s->flow));
            return e->status;
        }
        if (may_mutate(x, s, e) != CH_OK)
            return e->status;
        if (new_deadline(x, s, body, false, ch__eph_config(x)->default_ttl, &ttl, &until, e) !=
            CH_OK) {
            ch__scope_unlock(x, s);
            return e->status;
        }
        /* The new deadline first: the engine's backstop is set from it. */
        int64_t was = s->expires_at;
        s->expires_at = until;
        if (upgrade(x, s, e) != CH_OK) {
            s->expires_at = was;
            return engine_failed(x, s, e);
        }
        bool sooner = until < was;
        s->ttl = ttl;
        s->flow = CH__FLOW_SCOPED;
        ch__scope_flow_moved(x, CH__FLOW_COMMAND, CH__FLOW_SCOPED);
        if (sooner)
            ch__scope_rearm(x, s);
        break;
    }
    if (use(x, s, ch_now_ms(), e) != CH_OK || render(x, s, out, e) != CH_OK)
        return engine_failed(x, s, e);
    ch__scope_unlock(x, s);
    return CH_OK;
}

/* ---- ending scopes ---------------------------------------------------------------- */

ch_status ch_scope_delete(ch_db *db, const char *tenant, const char *id, ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    ch_err_clear(e);
    if (x == NULL)
        return e->status;
    ch__escope *s = find(x, tenant, id, e);
    if (s == NULL || may_mutate(x, s, e) != CH_OK)
        return e->status;
    ch__scope_evict(x, s, CH__EVICT_PURGED);
    return CH_OK;
}

ch_status ch_scope_purge_agent(ch_db *db, const char *tenant, const char *agent, ch_buf *out,
                               ch_err *e)
{
    ch__eph *x = eph_of(db, e);
    char(*ids)[32] = NULL;
    size_t n = 0, purged = 0;

    ch_err_clear(e);
    if (x == NULL)
        return e->status;
    if (agent == NULL || agent[0] == '\0' || strlen(agent) > MAX_AGENT)
        return ch_err_set(e, CH_INVALID_VALUE, "agent", "agent must be 1 to %d bytes", MAX_AGENT);
    if (ch__scope_agent_ids(x, tenant, agent, &ids, &n) != CH_OK)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    /* The agent is gone: its scopes end whatever their lock says. */
    for (size_t i = 0; i < n; i++) {
        ch__escope *s = ch__scope_lock(x, tenant, ids[i]);
        if (s != NULL) {
            ch__scope_evict(x, s, CH__EVICT_AGENT_EXITED);
            purged++;
        }
    }
    free(ids);
    json_t *a = json_string(agent);
    char *atext = a ? json_dumps(a, JSON_ENCODE_ANY) : NULL;
    json_decref(a);
    if (atext == NULL)
        return ch_err_set(e, CH_INVALID_VALUE, "agent", "agent must be valid UTF-8");
    ch_buf_printf(out, "{\"agent\":%s,\"purged\":%zu}", atext, purged);
    free(atext);
    return CH_OK;
}

/* ---- completion (a write through the writer) ------------------------------------ */

static const char *const complete_fields[] = {"session", "keys", "transfer_secrets", NULL};

typedef struct complete_prep {
    char session[CH_ID_MAX]; /* "" when nothing is transferred */
    json_t *facts;           /* {key: value} to write */
    bool secret;
    bool lock_only; /* a secure scope kept (and locked) instead of transferred */
} complete_prep;

static void complete_prep_free(void *p)
{
    complete_prep *c = p;
    if (c != NULL)
        context_free(c->facts, c->secret);
    free(c);
}

static ch_status complete_prepare(ch_db *db, ch_req *req)
{
    ch_err *e = &req->err;
    ch__eph *x = eph_of(db, e);
    const char *session = NULL;
    bool transfer = false;
    json_t *keys, *ctx = NULL;

    if (x == NULL)
        return e->status;
    json_t *body = req->body;
    if (body != NULL &&
        (ch__fields_known(body, "", complete_fields, e) != CH_OK ||
         ch__field_string(body, "", "session", false, CH_ID_MAX - 1, &session, e) != CH_OK ||
         field_bool(body, "transfer_secrets", &transfer, e) != CH_OK))
        return e->status;
    keys = body ? json_object_get(body, "keys") : NULL;
    if (keys != NULL && !json_is_null(keys) && !json_is_array(keys))
        return ch_err_set(e, CH_INVALID_TYPE, "keys", "'keys' must be an array of context keys");
    size_t nkeys = json_array_size(keys);
    for (size_t i = 0; i < nkeys; i++) {
        char field[32];
        snprintf(field, sizeof(field), "keys[%zu]", i);
        if (!json_is_string(json_array_get(keys, i)))
            return ch_err_set(e, CH_INVALID_TYPE, field, "'%s' must be a string", field);
    }
    if (nkeys > 0 && session == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "session",
                          "'session' is required to transfer keys into its facts");
    if (session != NULL && !ch_id_valid("sess", session))
        return ch_err_set(e, CH_INVALID_VALUE, "session", "session %s not found", session);

    complete_prep *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    req->priv->prep = c;
    req->priv->prep_free = complete_prep_free;

    ch__escope *s = find(x, req->tenant, req->id, e);
    if (s == NULL || may_mutate(x, s, e) != CH_OK)
        return e->status;
    c->secret = s->flow == CH__FLOW_SECURE;
    if (session != NULL)
        snprintf(c->session, sizeof(c->session), "%s", session);
    if (c->secret && !transfer) {
        /* Secrets stay where they are: once the request succeeds the scope is locked
         * until it expires. */
        c->lock_only = true;
        s->completing = true;
        ch__scope_unlock(x, s);
        return CH_OK;
    }
    if (nkeys > 0 && load_context(s, &ctx, e) != CH_OK)
        return engine_failed(x, s, e);
    c->facts = json_object();
    for (size_t i = 0; i < nkeys && c->facts != NULL; i++) {
        const char *k = json_string_value(json_array_get(keys, i));
        json_t *v = json_object_get(ctx, k);
        if (v == NULL) {
            char field[32];
            snprintf(field, sizeof(field), "keys[%zu]", i);
            context_free(ctx, c->secret);
            ch__scope_unlock(x, s);
            return ch_err_set(e, CH_INVALID_VALUE, field, "the context has no key '%.64s'", k);
        }
        /* A copy: the context is wiped (when secret) before the facts are written. */
        json_object_set_new(c->facts, k, json_deep_copy(v));
    }
    context_free(ctx, c->secret);
    if (c->facts == NULL) {
        ch__scope_unlock(x, s);
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    /* No other change until the write is durable and the scope is purged. */
    s->completing = true;
    ch__scope_unlock(x, s);
    return CH_OK;
}

static ch_status complete_exec(ch_db *db, ch_store *w, ch_req *req)
{
    complete_prep *c = req->priv->prep;
    json_t *transferred = json_array();
    const char *k;
    json_t *v;

    if (transferred == NULL)
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    /* A named session must exist even when nothing is copied into it. */
    if (c->session[0] != '\0') {
        json_t *none = json_object();
        const json_t *facts = !c->lock_only && c->facts != NULL ? c->facts : none;
        ch_status st =
            none ? ch__session_put_facts(w, req->tenant, c->session, facts, ch_now_ms(), &req->err)
                 : ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
        json_decref(none);
        if (st != CH_OK) {
            json_decref(transferred);
            return st;
        }
        if (!c->lock_only)
            json_object_foreach(c->facts, k, v) json_array_append_new(transferred, json_string(k));
    }
    req->result = json_pack("{s:s, s:o, s:o, s:b, s:b}", "id", req->id, "session",
                            c->session[0] ? json_string(c->session) : json_null(), "transferred",
                            transferred, "purged", !c->lock_only, "locked", c->lock_only);
    return req->result ? CH_OK : ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
}

/* The facts are durable (or the write failed): purge the scope, or let it go on. */
static void complete_finish(ch_db *db, ch_req *req)
{
    complete_prep *c = req->priv->prep;
    ch__eph *x = ch__db_eph(db);
    if (x == NULL || c == NULL)
        return;
    ch__escope *s = ch__scope_lock(x, req->tenant, req->id);
    if (s == NULL || !s->completing) {
        if (s != NULL)
            ch__scope_unlock(x, s);
        return; /* ended meanwhile (its deadline came) */
    }
    s->completing = false;
    ch_status st = req->err.status;
    if (st == CH_OK && c->lock_only) {
        if (!s->locked) {
            s->locked = true;
            ch__scope_locked(x, true);
        }
        ch__scope_unlock(x, s);
    } else if (st == CH_OK)
        ch__scope_evict(x, s, CH__EVICT_PURGED);
    else if (st == CH_IO || st == CH_INTERNAL || st == CH_NOMEM)
        ch__scope_failed(x, s); /* the transfer failed on our side: fail safe */
    else
        ch__scope_unlock(x, s); /* the request's mistake: the scope is untouched */
}

/* ---- publishing the outbox (internal op) ---------------------------------------- */

static ch_status publish_exec(ch_db *db, ch_store *w, ch_req *req)
{
    size_t i;
    json_t *item;
    int64_t now = ch_now_ms();
    json_array_foreach(req->body, i, item)
    {
        json_t *data = json_object_get(item, "data");
        json_incref(data);
        ch_status st = ch__stream_emit(db, w, json_string_value(json_object_get(item, "tenant")),
                                       json_string_value(json_object_get(item, "type")), data, now);
        if (st != CH_OK)
            return ch_err_set(&req->err, st, NULL, "cannot publish scope events");
    }
    req->result = json_object();
    return CH_OK;
}

static const ch__op_def complete_op = {
    .prepare = complete_prepare, .exec = complete_exec, .finish = complete_finish};
static const ch__op_def publish_op = {.exec = publish_exec};

const ch__op_def *const ch__scope_ops[CH__OP_COUNT] = {
    [CH_OP_SCOPE_COMPLETE] = &complete_op,
    [CH_OP_STREAM_PUBLISH] = &publish_op,
};
