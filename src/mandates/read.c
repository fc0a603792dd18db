/*
 * read.c — reads of mandates (one mandate, its tree) and the signed artifacts issued
 * for them. All are answered from the registry's published records under its read
 * lock.
 */
#include <stdlib.h>
#include <string.h>

#include "core/signing.h"
#include "mandates/mandates.h"

ch_status ch_mandate_get(ch_db *db, const char *tenant, const char *id, json_t **out, ch_err *e)
{
    ch__registry *reg = ch__db_registry(db);
    ch__registry_rdlock(reg);
    ch__mandate *m = ch__registry_find(reg, tenant, id);
    *out = m && m->cur ? ch__mandate_json(m, false, &m->spent) : NULL;
    bool found = m && m->cur;
    ch__registry_unlock(reg);
    if (!found)
        return ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    return *out ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
}

static json_t *tree_entry(const ch__mandate *m, int64_t now)
{
    char exp[32];
    ch_time_format(m->cur->expires_at, exp);
    return json_pack("{s:s, s:o, s:i, s:s, s:I, s:o, s:s}", "id", m->id, "parent",
                     m->parent ? json_string(m->parent->id) : json_null(), "depth", m->depth,
                     "state", ch__mandate_state_name(ch__mandate_effective(m, now, false)),
                     "version", (json_int_t)m->cur->version, "actor",
                     m->cur->actor ? json_string(m->cur->actor) : json_null(), "expires_at",
                     exp);
}

static int add_subtree(json_t *arr, const ch__mandate *m, int64_t now)
{
    for (uint32_t i = 0; i < m->nkids; i++) {
        const ch__mandate *k = m->kids[i];
        if (k->cur == NULL) /* created by a batch not yet committed */
            continue;
        if (json_array_append_new(arr, tree_entry(k, now)) != 0 || add_subtree(arr, k, now) != 0)
            return -1;
    }
    return 0;
}

ch_status ch_mandate_tree(ch_db *db, const char *tenant, const char *id, json_t **out,
                          ch_err *e)
{
    ch__registry *reg = ch__db_registry(db);
    int64_t now = ch_now_ms();
    json_t *anc = json_array(), *desc = json_array();
    ch_status rc = CH_OK;
    ch__registry_rdlock(reg);
    ch__mandate *m = ch__registry_find(reg, tenant, id);
    if (m == NULL || m->cur == NULL) {
        rc = ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    } else {
        for (const ch__mandate *a = m->parent; a != NULL; a = a->parent) {
            if (json_array_insert_new(anc, 0, tree_entry(a, now)) != 0)
                rc = CH_NOMEM;
        }
        if (add_subtree(desc, m, now) != 0)
            rc = CH_NOMEM;
    }
    ch__registry_unlock(reg);
    if (rc == CH_OK &&
        (*out = json_pack("{s:s, s:O, s:O}", "mandate", id, "ancestors", anc, "descendants",
                          desc)) == NULL)
        rc = CH_NOMEM;
    json_decref(anc);
    json_decref(desc);
    if (rc == CH_NOMEM)
        ch_err_set(e, rc, NULL, NULL);
    return rc;
}

json_t *ch_signing_key(ch_db *db)
{
    return ch__signer_jwk(ch__db_signer(db));
}

static const char *const artifact_fields[] = {"ttl", NULL};

ch_status ch_mandate_artifact(ch_db *db, const char *tenant, const char *id, const json_t *body,
                              json_t **out, ch_err *e)
{
    int64_t ttl = 0;
    json_t *t;
    ch_status rc;

    if (body != NULL && !json_is_object(body))
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "body must be a JSON object");
    if (body != NULL && (rc = ch__fields_known(body, NULL, artifact_fields, e)) != CH_OK)
        return rc;
    t = body ? json_object_get(body, "ttl") : NULL;
    if (t == NULL || json_is_null(t))
        return ch_err_set(e, CH_MISSING_FIELD, "ttl", "ttl is required");
    if (json_is_integer(t)) {
        json_int_t secs = json_integer_value(t);
        ttl = secs < 1 ? 0 : secs > 3600 ? 3600001 : secs * 1000;
    }
    else if (!json_is_string(t))
        return ch_err_set(e, CH_INVALID_TYPE, "ttl", "ttl must be a duration string or seconds");
    else if (ch_duration_parse(json_string_value(t), &ttl) != CH_OK)
        return ch_err_set(e, CH_INVALID_VALUE, "ttl", "ttl is not a duration (\"30s\", \"5m\")");
    if (ttl < 1000 || ttl > 3600000)
        return ch_err_set(e, CH_INVALID_VALUE, "ttl", "ttl must be 1s..1h");

    ch__registry *reg = ch__db_registry(db);
    int64_t now = ch_now_ms();
    json_t *payload = NULL;
    int64_t exp = 0, version = 0;
    ch__registry_rdlock(reg);
    ch__mandate *m = ch__registry_find(reg, tenant, id);
    const ch__mstate *st = m ? m->cur : NULL;
    if (st == NULL) {
        rc = ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    } else if (ch__mandate_effective(m, now, false) != CH__M_ACTIVE ||
               ch__ancestor_not_holding(m, now, false) != NULL) {
        rc = ch_err_set(e, CH_MANDATE_INACTIVE, NULL, "mandate %s does not hold", id);
        snprintf(e->state, sizeof(e->state), "%s",
                 ch__mandate_state_name(ch__mandate_effective(m, now, false)));
    } else {
        int64_t stale = ch__db_config(db)->max_staleness;
        exp = now + (ttl < stale ? ttl : stale);
        if (exp > st->expires_at)
            exp = st->expires_at;
        exp /= 1000; /* whole seconds, rounded down: never later than the bound */
        version = st->version;
        payload = json_pack("{s:s, s:s, s:s, s:I, s:o, s:o, s:s, s:I, s:I}", "iss", "charter",
                            "tenant", tenant, "mdt", m->id, "ver", (json_int_t)version, "actor",
                            st->actor ? json_string(st->actor) : json_null(), "scope",
                            ch__scope_json(&st->scope), "mission", st->mission_hash, "iat",
                            (json_int_t)(now / 1000), "exp", (json_int_t)exp);
        rc = payload ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
    }
    ch__registry_unlock(reg);
    if (rc != CH_OK)
        return rc;
    char *token = ch__artifact_sign(ch__db_signer(db), payload);
    json_decref(payload);
    if (token == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    char expires[32];
    ch_time_format(exp * 1000, expires);
    *out = json_pack("{s:s, s:s, s:I}", "artifact", token, "expires_at", expires, "version",
                     (json_int_t)version);
    free(token);
    return *out ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
}
