/*
 * mandates.c — writes to mandates: create, delegate, amend (PATCH), the lifecycle
 * transitions with their cascades, and expiry; plus the hooks sessions use (may a
 * session bind to this mandate, spending of session usage).
 *
 * Each write runs on the writer thread inside its request's savepoint: it changes the
 * registry's pending records (undone with the savepoint on failure), stores them, and
 * appends its stream events and audit records in the same transaction.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mandates/mandates.h"

#define MAX_DEPTH 16
#define EVIDENCE_MAX (64 * 1024)
#define PURPOSE_MAX 4096
#define REASON_MAX 1024

/* ---- validation ------------------------------------------------------------------ */

static const char *const budget_fields[] = {"tokens", "cost_usd", "tool_calls", NULL};

static ch_status parse_budget(const json_t *body, ch__budget *b, ch_err *e)
{
    json_t *o = NULL;
    bool present;
    memset(b, 0, sizeof(*b));
    ch_status rc = ch__field_object(body, NULL, "budget", &o, e);
    if (rc != CH_OK || o == NULL)
        return rc;
    if ((rc = ch__fields_known(o, "budget.", budget_fields, e)) != CH_OK ||
        (rc = ch__field_int(o, "budget.", "tokens", false, 0, INT64_C(1) << 53, &b->tokens,
                            &present, e)) != CH_OK)
        return rc;
    b->has_tokens = present;
    if ((rc = ch__field_number(o, "budget.", "cost_usd", 0, 1e15, &b->cost_usd, &present, e)) !=
        CH_OK)
        return rc;
    b->has_cost = present;
    if ((rc = ch__field_int(o, "budget.", "tool_calls", false, 0, INT64_C(1) << 53, &b->tool_calls,
                            &present, e)) != CH_OK)
        return rc;
    b->has_calls = present;
    return CH_OK;
}

static ch_status parse_expires(const json_t *body, bool required, int64_t now, int64_t *out,
                               bool *present, ch_err *e)
{
    const char *s;
    ch_status rc = ch__field_string(body, NULL, "expires_at", required, 64, &s, e);
    *present = s != NULL;
    if (rc != CH_OK || s == NULL)
        return rc;
    if (ch_time_parse(s, out) != CH_OK)
        return ch_err_set(e, CH_INVALID_VALUE, "expires_at",
                          "expires_at must be an RFC 3339 date-time");
    if (*out <= now)
        return ch_err_set(e, CH_INVALID_VALUE, "expires_at", "expires_at is not in the future");
    return CH_OK;
}

static ch_status parse_conditions(const json_t *body, json_t **out, ch_err *e)
{
    json_t *c = NULL;
    ch_status rc = ch__field_object(body, NULL, "conditions", &c, e);
    if (rc != CH_OK)
        return rc;
    *out = c ? json_deep_copy(c) : json_object();
    if (*out == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    char *text = json_dumps(*out, JSON_COMPACT);
    size_t n = text ? strlen(text) : 0;
    free(text);
    if (n > EVIDENCE_MAX) {
        json_decref(*out);
        *out = NULL;
        return ch_err_set(e, CH_INVALID_VALUE, "conditions", "conditions exceed 64 KiB");
    }
    return CH_OK;
}

static ch_status parse_evidence(const json_t *body, json_t **out, ch_err *e)
{
    json_t *v = json_object_get(body, "evidence");
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return CH_OK;
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t n = text ? strlen(text) : 0;
    free(text);
    if (n > EVIDENCE_MAX)
        return ch_err_set(e, CH_INVALID_VALUE, "evidence", "evidence exceeds 64 KiB");
    *out = json_deep_copy(v);
    return *out ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
}

static char *dup_opt(const char *s)
{
    return s ? strdup(s) : NULL;
}

typedef struct mprep {
    ch__mstate *st; /* the new record (create, delegate) */
    bool has_max_depth;
} mprep;

static void mprep_free(void *p)
{
    mprep *m = p;
    if (m != NULL)
        ch__mstate_free(m->st);
    free(m);
}

static ch_status set_prep(ch_req *req, mprep *p)
{
    req->priv->prep = p;
    req->priv->prep_free = mprep_free;
    return CH_OK;
}

/* The fields shared by create and delegate. */
static ch_status parse_record(const json_t *body, bool delegate, int64_t now, mprep *p, ch_err *e)
{
    const char *purpose, *approver = NULL, *actor;
    bool present;
    int64_t max_depth = 0;
    ch__mstate *st = p->st;
    ch_status rc;

    if ((rc = ch__field_string(body, NULL, "purpose", delegate, PURPOSE_MAX, &purpose, e)) !=
            CH_OK ||
        (!delegate &&
         (rc = ch__field_string(body, NULL, "approver", true, 256, &approver, e)) != CH_OK) ||
        (rc = ch__field_string(body, NULL, "actor", delegate, 256, &actor, e)) != CH_OK ||
        (rc = parse_evidence(body, &st->evidence, e)) != CH_OK ||
        (rc = parse_conditions(body, &st->conditions, e)) != CH_OK ||
        (rc = parse_expires(body, true, now, &st->expires_at, &present, e)) != CH_OK ||
        (rc = ch__field_int(body, NULL, "max_depth", false, 0, MAX_DEPTH, &max_depth,
                            &p->has_max_depth, e)) != CH_OK ||
        (rc = parse_budget(body, &st->budget, e)) != CH_OK)
        return rc;
    json_t *scope = json_object_get(body, "scope");
    if (delegate && scope == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "scope", "scope is required");
    if (scope != NULL && !json_is_null(scope)) {
        if ((rc = ch__scope_parse(scope, "scope", NULL, &st->scope, e)) != CH_OK)
            return rc;
    }
    st->purpose = strdup(purpose ? purpose : "");
    st->approver = dup_opt(approver);
    st->actor = dup_opt(actor);
    st->max_depth = (int)max_depth;
    if (st->purpose == NULL || (approver && st->approver == NULL) || (actor && !st->actor))
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    return CH_OK;
}

static const char *const create_fields[] = {"purpose", "approver",   "evidence",   "actor",
                                            "scope",   "conditions", "expires_at", "max_depth",
                                            "budget",  "state",      NULL};
static const char *const delegate_fields[] = {"actor",      "purpose",   "scope",
                                              "expires_at", "max_depth", "budget",
                                              "conditions", "evidence",  NULL};

static ch_status record_prepare(ch_db *db, ch_req *req, bool delegate)
{
    mprep *p = calloc(1, sizeof(*p));
    ch_status rc;
    if (p == NULL || (p->st = calloc(1, sizeof(*p->st))) == NULL) {
        free(p);
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    }
    set_prep(req, p);
    if (!json_is_object(req->body))
        return ch_err_set(&req->err, CH_BAD_REQUEST, NULL, "body must be a JSON object");
    if (delegate && !ch_id_valid("mdt", req->id))
        return ch_err_set(&req->err, CH_NOT_FOUND, NULL, "no such mandate");
    rc = ch__fields_known(req->body, NULL, delegate ? delegate_fields : create_fields, &req->err);
    if (rc == CH_OK)
        rc = parse_record(req->body, delegate, ch_now_ms(), p, &req->err);
    if (rc != CH_OK)
        return rc;
    p->st->state = CH__M_ACTIVE;
    if (!delegate) {
        const char *state;
        if ((rc = ch__field_string(req->body, NULL, "state", false, 16, &state, &req->err)) !=
            CH_OK)
            return rc;
        if (state != NULL && strcmp(state, "proposed") == 0)
            p->st->state = CH__M_PROPOSED;
        else if (state != NULL && strcmp(state, "active") != 0)
            return ch_err_set(&req->err, CH_INVALID_VALUE, "state",
                              "state must be \"active\" or \"proposed\"");
    }
    return CH_OK;
}

static ch_status create_prepare(ch_db *db, ch_req *req)
{
    return record_prepare(db, req, false);
}

static ch_status delegate_prepare(ch_db *db, ch_req *req)
{
    return record_prepare(db, req, true);
}

/* ---- storing and publishing changes -------------------------------------------- */

static ch_status persist(ch_db *db, ch_store *w, const ch__mandate *m)
{
    const ch__mstate *st = ch__mview(m);
    json_t *doc = ch__mstate_doc(m, st);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL)
        return CH_NOMEM;
    ch_mandate_row row = {.id = m->id,
                          .tenant = m->tenant,
                          .doc = text,
                          .doc_len = strlen(text),
                          .spent_tokens = m->spent_next.tokens,
                          .spent_cost_usd = m->spent_next.cost_usd,
                          .spent_tool_calls = m->spent_next.tool_calls};
    ch_status rc = ch__db_store(db)->mandate_put(w, &row);
    free(text);
    return rc;
}

/* Stream event and audit record for a change of m (data is stolen). */
static ch_status announce(ch_db *db, ch_store *w, const ch__mandate *m, const char *type,
                          json_t *data, int64_t now)
{
    if (data == NULL)
        return CH_NOMEM;
    json_object_set_new(data, "mandate", json_string(m->id));
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (text == NULL)
        return CH_NOMEM;
    ch_status rc = ch__audit_write(w, m, type, text, now);
    if (rc == CH_OK)
        rc = ch__stream_emit_text(db, w, m->tenant, type, text, now);
    free(text);
    return rc;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* ---- create and delegate -------------------------------------------------------- */

static ch_status finish_insert(ch_db *db, ch_store *w, ch_req *req, ch__mandate *parent,
                               int64_t now)
{
    mprep *p = req->priv->prep;
    ch__mstate *st = p->st;
    char id[CH_ID_MAX];
    ch__mandate *m;

    st->version = 1;
    st->created_at = st->updated_at = now;
    if (ch__mstate_hash(st) != CH_OK)
        return CH_NOMEM;
    ch_id_new("mdt", id);
    p->st = NULL; /* the registry owns it now, whatever happens */
    ch_status rc = ch__registry_insert(ch__db_registry(db), req->tenant, id, parent, st, &m);
    if (rc == CH_OK)
        rc = persist(db, w, m);
    if (rc == CH_OK)
        rc = announce(db, w, m, "mandate.created",
                      json_pack("{s:s, s:I, s:o}", "state", ch__mandate_state_name(st->state),
                                "version", (json_int_t)st->version, "parent",
                                str_or_null(parent ? parent->id : NULL)),
                      now);
    if (rc == CH_OK && (req->result = ch__mandate_json(m, true, &m->spent_next)) == NULL)
        rc = CH_NOMEM;
    return rc;
}

static ch_status create_exec(ch_db *db, ch_store *w, ch_req *req)
{
    return finish_insert(db, w, req, NULL, ch_now_ms());
}

/* Sets e->state (after ch_err_set, which clears it) to the mandate state s. */
static ch_status with_state(ch_err *e, ch_status st, int s)
{
    snprintf(e->state, sizeof(e->state), "%s", ch__mandate_state_name(s));
    return st;
}

static ch_status inactive(ch_err *e, const ch__mandate *m, int eff, const char *what)
{
    ch_err_set(e, CH_MANDATE_INACTIVE, NULL, "mandate %s %s", m->id, what);
    return with_state(e, CH_MANDATE_INACTIVE, eff);
}

/* Does m hold now in the writer's view? CH_OK or CH_MANDATE_INACTIVE in e. */
static ch_status holds(const ch__mandate *m, int64_t now, ch_err *e)
{
    int eff = ch__mandate_effective(m, now, true);
    if (eff != CH__M_ACTIVE)
        return inactive(e, m, eff, eff == CH__M_PROPOSED ? "is not approved yet" : "is not active");
    const ch__mandate *a = ch__ancestor_not_holding(m, now, true);
    if (a != NULL) {
        int aeff = ch__mandate_effective(a, now, true);
        ch_err_set(e, CH_MANDATE_INACTIVE, NULL, "mandate %s has an ancestor, %s, that is %s",
                   m->id, a->id, ch__mandate_state_name(aeff));
        return with_state(e, CH_MANDATE_INACTIVE, aeff);
    }
    return CH_OK;
}

static ch_status delegate_exec(ch_db *db, ch_store *w, ch_req *req)
{
    mprep *p = req->priv->prep;
    ch__mstate *c = p->st;
    int64_t now = ch_now_ms();
    ch_err *e = &req->err;
    ch__mandate *parent = ch__registry_find(ch__db_registry(db), req->tenant, req->id);
    if (parent == NULL)
        return ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    const ch__mstate *pv = ch__mview(parent);
    ch_status rc = holds(parent, now, e);
    if (rc != CH_OK)
        return rc;
    if ((rc = ch__scope_subset(&c->scope, &pv->scope, "scope", e)) != CH_OK)
        return rc;
    if (c->expires_at > pv->expires_at)
        return ch_err_set(e, CH_NOT_SUBSET, "expires_at", "expires_at is later than the parent's");
    if (parent->depth + 1 > pv->max_depth)
        return ch_err_set(e, CH_NOT_SUBSET, "depth", "depth %d exceeds the tree's max_depth %d",
                          parent->depth + 1, pv->max_depth);
    if (!p->has_max_depth)
        c->max_depth = pv->max_depth;
    else if (c->max_depth > pv->max_depth)
        return ch_err_set(e, CH_NOT_SUBSET, "depth", "max_depth %d exceeds the parent's %d",
                          c->max_depth, pv->max_depth);
    if (pv->actor != NULL && strcmp(pv->actor, c->actor) == 0)
        return ch_err_set(e, CH_NOT_SUBSET, "actor",
                          "a child mandate needs its own actor, not the parent's");
    /* Budget: within the parent's remaining, dimension by dimension. */
    const ch__budget *pb = &pv->budget;
    const ch__usage *ps = &parent->spent_next;
    if ((pb->has_tokens && (!c->budget.has_tokens || c->budget.tokens > pb->tokens - ps->tokens)) ||
        (pb->has_cost &&
         (!c->budget.has_cost || c->budget.cost_usd > pb->cost_usd - ps->cost_usd + 1e-9)) ||
        (pb->has_calls &&
         (!c->budget.has_calls || c->budget.tool_calls > pb->tool_calls - ps->tool_calls)))
        return ch_err_set(e, CH_NOT_SUBSET, "budget",
                          "budget exceeds what remains of the parent's");
    /* Conditions: the parent's, plus the child's own; never a parent's one changed. */
    const char *k;
    json_t *v;
    json_object_foreach(pv->conditions, k, v)
    {
        json_t *mine = json_object_get(c->conditions, k);
        if (mine != NULL && !json_equal(mine, v))
            return ch_err_set(e, CH_NOT_SUBSET, "conditions",
                              "condition \"%s\" differs from the parent's", k);
        if (mine == NULL && json_object_set(c->conditions, k, v) != 0)
            return CH_NOMEM;
    }
    c->approver = strdup(pv->approver);
    if (c->approver == NULL)
        return CH_NOMEM;
    return finish_insert(db, w, req, parent, now);
}

/* ---- amendments ----------------------------------------------------------------- */

static const char *const patch_fields[] = {"scope", "expires_at", "conditions", NULL};

static ch_status patch_prepare(ch_db *db, ch_req *req)
{
    ch_err *e = &req->err;
    int64_t exp;
    bool present;
    json_t *cond = NULL;
    if (!ch_id_valid("mdt", req->id))
        return ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    if (!json_is_object(req->body))
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "body must be a JSON object");
    ch_status rc = ch__fields_known(req->body, NULL, patch_fields, e);
    if (rc == CH_OK)
        rc = parse_expires(req->body, false, ch_now_ms(), &exp, &present, e);
    if (rc == CH_OK)
        rc = parse_conditions(req->body, &cond, e);
    json_decref(cond);
    if (rc == CH_OK) {
        json_t *s = json_object_get(req->body, "scope");
        ch__scope sc = {0};
        if (s != NULL && (rc = ch__scope_parse(s, "scope", NULL, &sc, e)) == CH_OK)
            ch__scope_free(&sc);
    }
    if (rc == CH_OK && json_object_size(req->body) == 0)
        return ch_err_set(e, CH_NO_CHANGE, NULL, "nothing to change");
    return rc;
}

/* Bumps the version of an edited record and refreshes what depends on its mission. */
static ch_status amended(ch__mstate *st, int64_t now)
{
    st->version++;
    st->updated_at = now;
    return ch__mstate_hash(st);
}

/* The event of an amendment of m (its record st): `mandate.narrowed` when the scope
 * changed, else `mandate.amended`; either carries the whole amended mission. */
static ch_status announce_amended(ch_db *db, ch_store *w, const ch__mandate *m,
                                  const ch__mstate *st, bool narrowed, const ch__mandate *cause,
                                  int64_t now)
{
    char exp[32];
    ch_time_format(st->expires_at, exp);
    return announce(db, w, m, narrowed ? "mandate.narrowed" : "mandate.amended",
                    json_pack("{s:I, s:o, s:s, s:O, s:s}", "version", (json_int_t)st->version,
                              "scope", ch__scope_json(&st->scope), "expires_at", exp, "conditions",
                              st->conditions, "cause", cause->id),
                    now);
}

/* Sets on *conds (a copy is made on the first change) every condition of bound that it
 * does not have with the same value; *changed says whether one was set. */
static ch_status inherit_conditions(const json_t *own, const json_t *bound, json_t **merged,
                                    bool *changed)
{
    const char *k;
    json_t *v;
    *merged = NULL;
    *changed = false;
    json_object_foreach((json_t *)bound, k, v)
    {
        json_t *mine = json_object_get(own, k);
        if (mine != NULL && json_equal(mine, v))
            continue;
        if (*merged == NULL && (*merged = json_deep_copy(own)) == NULL)
            return CH_NOMEM;
        if (json_object_set(*merged, k, v) != 0)
            return CH_NOMEM;
        *changed = true;
    }
    return CH_OK;
}

/* Clips the live mandates below m to bound (a scope) and deadline. A live descendant
 * already inside them needs nothing, and neither do the mandates below it (they are
 * inside it); a final one is left as it is, but the live mandates below it are clipped
 * too. */
static ch_status clip_below(ch_db *db, ch_store *w, ch__mandate *m, const ch__scope *bound,
                            int64_t deadline, const json_t *conds, const ch__mandate *cause,
                            int64_t now, ch_err *e)
{
    for (uint32_t i = 0; i < m->nkids; i++) {
        ch__mandate *k = m->kids[i];
        const ch__mstate *kv = ch__mview(k);
        ch_status rc;
        if (kv->state == CH__M_REVOKED || kv->state == CH__M_EXPIRED)
            continue; /* it and everything below it are final */
        if (CH__M_FINAL(kv->state)) {
            if ((rc = clip_below(db, w, k, bound, deadline, conds, cause, now, e)) != CH_OK)
                return rc;
            continue;
        }
        ch__scope clipped = {0};
        bool changed = false;
        rc = ch__scope_copy(&kv->scope, &clipped);
        if (rc == CH_OK)
            rc = ch__scope_clip(&clipped, bound, &changed);
        bool later = kv->expires_at > deadline;
        json_t *merged = NULL;
        bool cond_changed = false;
        if (rc == CH_OK)
            rc = inherit_conditions(kv->conditions, conds, &merged, &cond_changed);
        if (rc != CH_OK || (!changed && !later && !cond_changed)) {
            ch__scope_free(&clipped);
            json_decref(merged);
            if (rc == CH_INVALID_VALUE)
                return ch_err_set(e, CH_NOT_SUBSET, "scope.resources",
                                  "narrowing would leave descendant %s with more than 1024 "
                                  "resources",
                                  k->id);
            if (rc != CH_OK)
                return rc;
            continue;
        }
        ch__mstate *st = ch__registry_edit(ch__db_registry(db), k);
        if (st == NULL) {
            ch__scope_free(&clipped);
            json_decref(merged);
            return CH_NOMEM;
        }
        ch__scope_free(&st->scope);
        st->scope = clipped;
        if (later)
            st->expires_at = deadline;
        if (cond_changed) {
            json_decref(st->conditions);
            st->conditions = merged;
        }
        if ((rc = amended(st, now)) != CH_OK || (rc = persist(db, w, k)) != CH_OK ||
            (rc = announce_amended(db, w, k, st, changed, cause, now)) != CH_OK ||
            (rc = clip_below(db, w, k, &st->scope, st->expires_at, st->conditions, cause, now,
                             e)) != CH_OK)
            return rc;
    }
    return CH_OK;
}

static ch_status patch_exec(ch_db *db, ch_store *w, ch_req *req)
{
    ch_err *e = &req->err;
    int64_t now = ch_now_ms();
    ch__mandate *m = ch__registry_find(ch__db_registry(db), req->tenant, req->id);
    if (m == NULL)
        return ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    const ch__mstate *v = ch__mview(m);
    int eff = ch__mandate_effective(m, now, true);
    if (CH__M_FINAL(eff)) {
        ch_err_set(e, CH_INVALID_TRANSITION, NULL, "a %s mandate cannot be amended",
                   ch__mandate_state_name(eff));
        return with_state(e, CH_INVALID_TRANSITION, eff);
    }
    ch__scope scope = {0};
    json_t *cond = NULL;
    int64_t exp = v->expires_at;
    bool has_exp = false, scope_changed = false, cond_changed = false;
    ch_status rc = CH_OK;
    json_t *js = json_object_get(req->body, "scope");
    if (js != NULL) {
        if ((rc = ch__scope_parse(js, "scope", &v->scope, &scope, e)) != CH_OK ||
            (rc = ch__scope_subset(&scope, &v->scope, "scope", e)) != CH_OK)
            goto out;
        scope_changed = !ch__scope_equal(&scope, &v->scope);
    }
    if ((rc = parse_expires(req->body, false, now, &exp, &has_exp, e)) != CH_OK)
        goto out;
    if (has_exp && m->parent != NULL && exp > ch__mview(m->parent)->expires_at) {
        rc = ch_err_set(e, CH_NOT_SUBSET, "expires_at", "expires_at is later than the parent's");
        goto out;
    }
    bool exp_changed = has_exp && exp != v->expires_at;
    if (json_object_get(req->body, "conditions") != NULL) {
        if ((rc = parse_conditions(req->body, &cond, e)) != CH_OK)
            goto out;
        const char *k;
        json_t *val;
        json_object_foreach(v->conditions, k, val)
        {
            if (json_object_get(cond, k) == NULL) {
                rc = ch_err_set(e, CH_NOT_SUBSET, "conditions",
                                "condition \"%s\" cannot be removed", k);
                goto out;
            }
        }
        /* A delegated mandate holds its parent's conditions as they are. */
        json_object_foreach(m->parent ? ch__mview(m->parent)->conditions : NULL, k, val)
        {
            if (!json_equal(json_object_get(cond, k), val)) {
                rc = ch_err_set(e, CH_NOT_SUBSET, "conditions",
                                "condition \"%s\" is the parent's and cannot change", k);
                goto out;
            }
        }
        cond_changed = !json_equal(cond, v->conditions);
    }
    if (!scope_changed && !exp_changed && !cond_changed) {
        rc = ch_err_set(e, CH_NO_CHANGE, NULL, "nothing to change");
        goto out;
    }
    ch__mstate *st = ch__registry_edit(ch__db_registry(db), m);
    if (st == NULL) {
        rc = CH_NOMEM;
        goto out;
    }
    if (scope_changed) {
        ch__scope_free(&st->scope);
        st->scope = scope;
        memset(&scope, 0, sizeof(scope));
    }
    st->expires_at = exp;
    if (cond_changed) {
        json_decref(st->conditions);
        st->conditions = cond;
        cond = NULL;
    }
    if ((rc = amended(st, now)) != CH_OK || (rc = persist(db, w, m)) != CH_OK)
        goto out;
    rc = announce_amended(db, w, m, st, scope_changed, m, now);
    if (rc == CH_OK)
        rc = clip_below(db, w, m, &st->scope, st->expires_at, st->conditions, m, now, e);
    if (rc == CH_OK && (req->result = ch__mandate_json(m, true, &m->spent_next)) == NULL)
        rc = CH_NOMEM;
out:
    ch__scope_free(&scope);
    json_decref(cond);
    return rc;
}

/* ---- lifecycle ------------------------------------------------------------------ */

typedef struct mtransition {
    const char *event; /* stream/audit type */
    const char *verb;
    unsigned from; /* bit set of effective states it is allowed from */
    int to;
} mtransition;

#define MBIT(s) (1u << CH__M_##s)

static const mtransition mtransitions[CH__OP_COUNT] = {
    [CH_OP_MANDATE_APPROVE] = {"mandate.approved", "approve", MBIT(PROPOSED), CH__M_ACTIVE},
    [CH_OP_MANDATE_SUSPEND] = {"mandate.suspended", "suspend", MBIT(ACTIVE), CH__M_SUSPENDED},
    [CH_OP_MANDATE_REINSTATE] = {"mandate.reinstated", "reinstate", MBIT(SUSPENDED), CH__M_ACTIVE},
    [CH_OP_MANDATE_REVOKE] = {"mandate.revoked", "revoke",
                              MBIT(PROPOSED) | MBIT(ACTIVE) | MBIT(SUSPENDED), CH__M_REVOKED},
    [CH_OP_MANDATE_COMPLETE] = {"mandate.completed", "complete", MBIT(ACTIVE) | MBIT(SUSPENDED),
                                CH__M_COMPLETED},
};

static const char *const reason_fields[] = {"reason", NULL};

typedef struct reason_prep {
    char *reason;
} reason_prep;

static void reason_prep_free(void *p)
{
    reason_prep *r = p;
    if (r != NULL)
        free(r->reason);
    free(r);
}

static ch_status transition_prepare(ch_db *db, ch_req *req)
{
    const char *reason = NULL;
    ch_status rc;
    if (!ch_id_valid("mdt", req->id))
        return ch_err_set(&req->err, CH_NOT_FOUND, NULL, "no such mandate");
    if (req->body != NULL && !json_is_object(req->body))
        return ch_err_set(&req->err, CH_BAD_REQUEST, NULL, "body must be a JSON object");
    if (req->body != NULL &&
        ((rc = ch__fields_known(req->body, NULL, reason_fields, &req->err)) != CH_OK ||
         (rc = ch__field_string(req->body, NULL, "reason", false, REASON_MAX, &reason,
                                &req->err)) != CH_OK))
        return rc;
    reason_prep *p = calloc(1, sizeof(*p));
    if (p == NULL || (reason && (p->reason = strdup(reason)) == NULL)) {
        free(p);
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    }
    req->priv->prep = p;
    req->priv->prep_free = reason_prep_free;
    return CH_OK;
}

/* Moves m to state `to`, announcing it (event) with reason and cause. */
static ch_status set_state(ch_db *db, ch_store *w, ch__mandate *m, int to, const char *event,
                           const char *reason, const ch__mandate *cause, ch__mandate *const *desc,
                           size_t ndesc, int64_t now)
{
    ch__mstate *st = ch__registry_edit(ch__db_registry(db), m);
    if (st == NULL)
        return CH_NOMEM;
    st->state = to;
    /* `reason` stays the one given to the last suspend or revoke (or "expired"). */
    if (reason != NULL) {
        free(st->reason);
        if ((st->reason = strdup(reason)) == NULL)
            return CH_NOMEM;
    }
    st->updated_at = now;
    /* Only the lifecycle fields change: the record's doc is not rewritten. */
    ch_status rc =
        ch__db_store(db)->mandate_set_state(w, m->id, ch__mandate_state_name(to), st->reason, now);
    if (rc != CH_OK)
        return rc;
    /* The event's text is built directly: a cascade writes one per descendant. The
     * reason is the only free text; jansson encodes it. */
    char *reason_json = NULL;
    if (reason != NULL) {
        json_t *r = json_string(reason);
        reason_json = r ? json_dumps(r, JSON_ENCODE_ANY) : NULL;
        json_decref(r);
        if (reason_json == NULL)
            return CH_NOMEM;
    }
    ch_buf text = {0};
    ch_buf_printf(&text,
                  "{\"state\":\"%s\",\"version\":%lld,\"reason\":%s,\"cause\":\"%s\","
                  "\"mandate\":\"%s\"",
                  ch__mandate_state_name(to), (long long)st->version,
                  reason_json ? reason_json : "null", cause->id, m->id);
    free(reason_json);
    if (to == CH__M_REVOKED || to == CH__M_EXPIRED) {
        /* Ids are base32: nothing to escape. */
        put_lit(&text, ",\"descendants\":[");
        for (size_t i = 0; i < ndesc; i++)
            ch_buf_printf(&text, "%s\"%s\"", i ? "," : "", desc[i]->id);
        put_lit(&text, "]");
    }
    put_lit(&text, "}");
    if (text.data == NULL)
        return CH_NOMEM;
    rc = ch__audit_write(w, m, event, text.data, now);
    if (rc == CH_OK)
        rc = ch__stream_emit_text(db, w, m->tenant, event, text.data, now);
    ch_buf_free(&text);
    return rc;
}

/* The mandates of a subtree that are not final yet, parents first. */
typedef struct live_list {
    ch__mandate **v;
    size_t n, cap;
} live_list;

static ch_status live_add(live_list *l, ch__mandate *m)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        ch__mandate **v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return CH_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = m;
    return CH_OK;
}

/* Collects m's descendants whose state is not final yet (writer's view), whatever the
 * clock says: one whose deadline passed with m's is still to be moved now. A completed
 * mandate is final but does not cascade: the mandates below it are looked at too. */
static ch_status collect_live(ch__mandate *m, live_list *l)
{
    for (uint32_t i = 0; i < m->nkids; i++) {
        ch__mandate *k = m->kids[i];
        int s = ch__mandate_state_at(k, INT64_MIN, true, NULL);
        ch_status rc = CH_OK;
        if (!CH__M_FINAL(s))
            rc = live_add(l, k);
        if (rc == CH_OK && s != CH__M_REVOKED && s != CH__M_EXPIRED)
            rc = collect_live(k, l);
        if (rc != CH_OK)
            return rc;
    }
    return CH_OK;
}

/* Moves m to `to` (a state in which it stops holding, or back to active), with its
 * event. When it stops holding, the sessions bound to it and to its live descendants go
 * inert. A revoke or an expiry reaches every live descendant at once: they are not
 * written one by one (their state follows from m's, see ch__mandate_state_at), and the
 * event of m lists them under "descendants". So a tree of any size is revoked with one
 * record, one event and one audit entry. */
static ch_status change_state(ch_db *db, ch_store *w, ch__mandate *m, int to, const char *event,
                              const char *reason, int64_t now)
{
    live_list live = {0};
    ch_status rc = CH_OK;
    bool stops = to != CH__M_ACTIVE;
    bool cascades = to == CH__M_REVOKED || to == CH__M_EXPIRED;
    if (stops)
        rc = collect_live(m, &live);
    if (rc == CH_OK)
        rc = set_state(db, w, m, to, event, reason, m, cascades ? live.v : NULL,
                       cascades ? live.n : 0, now);
    if (rc == CH_OK && stops) {
        char sreason[48];
        snprintf(sreason, sizeof(sreason), "mandate_%s", ch__mandate_state_name(to));
        if (m->bound)
            rc = ch__sessions_inert(db, w, m->tenant, m->id, sreason, m->id, now);
        for (size_t i = 0; rc == CH_OK && i < live.n; i++) {
            if (live.v[i]->bound)
                rc = ch__sessions_inert(db, w, m->tenant, live.v[i]->id, sreason, m->id, now);
        }
    }
    free(live.v);
    return rc;
}

static ch_status transition_exec(ch_db *db, ch_store *w, ch_req *req)
{
    const mtransition *t = &mtransitions[req->op];
    reason_prep *p = req->priv->prep;
    ch_err *e = &req->err;
    int64_t now = ch_now_ms();
    ch__mandate *m = ch__registry_find(ch__db_registry(db), req->tenant, req->id);
    if (m == NULL)
        return ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    int eff = ch__mandate_effective(m, now, true);
    if (!(t->from & (1u << eff))) {
        ch_err_set(e, CH_INVALID_TRANSITION, NULL, "cannot %s a mandate that is %s", t->verb,
                   ch__mandate_state_name(eff));
        return with_state(e, CH_INVALID_TRANSITION, eff);
    }
    ch_status rc = change_state(db, w, m, t->to, t->event, p->reason, now);
    if (rc == CH_OK && (req->result = ch__mandate_json(m, true, &m->spent_next)) == NULL)
        rc = CH_NOMEM;
    return rc;
}

static int by_depth(const void *a, const void *b)
{
    const ch__mandate *x = *(ch__mandate *const *)a, *y = *(ch__mandate *const *)b;
    return (x->depth > y->depth) - (x->depth < y->depth);
}

/* The expiry timer's request: every listed mandate whose deadline has passed (in the
 * writer's view: a PATCH may have moved it) expires with its subtree. Ancestors go
 * first, so a subtree that expires at once is one change. */
static ch_status expire_exec(ch_db *db, ch_store *w, ch_req *req)
{
    int64_t now = ch_now_ms();
    size_t i, n = 0;
    json_t *v;
    ch__registry *reg = ch__db_registry(db);
    ch__mandate **due = calloc(json_array_size(req->body) + 1, sizeof(*due));
    if (due == NULL)
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    json_array_foreach(req->body, i, v)
    {
        const char *id = json_string_value(v);
        /* The timer is not a tenant: find the id in any tenant. */
        ch__mandate *m = id ? ch__registry_find_any(reg, id) : NULL;
        if (m != NULL)
            due[n++] = m;
    }
    qsort(due, n, sizeof(*due), by_depth);
    ch_status rc = CH_OK;
    for (i = 0; i < n && rc == CH_OK; i++) {
        ch__mandate *m = due[i];
        const ch__mstate *st = ch__mview(m);
        /* Already final, by itself or through an ancestor (maybe expired just now). */
        if (st->expires_at > now ||
            CH__M_FINAL(ch__mandate_state_at(m, st->expires_at - 1, true, NULL)))
            continue;
        rc = change_state(db, w, m, CH__M_EXPIRED, "mandate.expired", "expired", now);
        if (rc != CH_OK)
            ch_err_set(&req->err, rc, NULL, "cannot expire %s", m->id);
    }
    free(due);
    if (rc == CH_OK)
        req->result = json_object();
    return rc;
}

/* ---- what sessions ask ---------------------------------------------------------- */

ch_status ch__mandate_may_bind(ch_db *db, const char *tenant, const char *mandate, ch_err *e)
{
    ch__mandate *m = ch__registry_find(ch__db_registry(db), tenant, mandate);
    if (m == NULL)
        return ch_err_set(e, CH_INVALID_VALUE, "mandate", "no such mandate: %s", mandate);
    ch_status rc = holds(m, ch_now_ms(), e);
    /* Set even if the create is undone: a cascade then merely looks for sessions. */
    if (rc == CH_OK)
        m->bound = true;
    return rc;
}

ch_status ch__mandate_may_continue(ch_db *db, const char *tenant, const char *mandate, ch_err *e)
{
    ch__mandate *m = ch__registry_find(ch__db_registry(db), tenant, mandate);
    if (m == NULL)
        return ch_err_set(e, CH_MANDATE_INACTIVE, NULL, "mandate %s is unknown", mandate);
    return holds(m, ch_now_ms(), e);
}

ch_status ch__mandate_spend(ch_db *db, ch_store *w, const char *tenant, const char *mandate,
                            int64_t tokens, double cost_usd, int64_t tool_calls)
{
    ch__usage u = {tokens, cost_usd, tool_calls};
    if (mandate[0] == '\0' || (tokens == 0 && cost_usd == 0 && tool_calls == 0))
        return CH_OK;
    ch__mandate *m = ch__registry_find(ch__db_registry(db), tenant, mandate);
    for (; m != NULL; m = m->parent) {
        ch_status rc = ch__registry_spend(ch__db_registry(db), m, &u);
        if (rc == CH_OK)
            rc = ch__db_store(db)->mandate_spend(w, m->id, tokens, cost_usd, tool_calls);
        if (rc != CH_OK)
            return rc;
    }
    return CH_OK;
}

static const ch__op_def create_op = {.prepare = create_prepare, .exec = create_exec};
static const ch__op_def delegate_op = {.prepare = delegate_prepare, .exec = delegate_exec};
static const ch__op_def patch_op = {.prepare = patch_prepare, .exec = patch_exec};
static const ch__op_def transition_op = {.prepare = transition_prepare, .exec = transition_exec};
static const ch__op_def expire_op = {.exec = expire_exec};

const ch__op_def *const ch__mandate_ops[CH__OP_COUNT] = {
    [CH_OP_MANDATE_CREATE] = &create_op,      [CH_OP_MANDATE_DELEGATE] = &delegate_op,
    [CH_OP_MANDATE_PATCH] = &patch_op,        [CH_OP_MANDATE_APPROVE] = &transition_op,
    [CH_OP_MANDATE_SUSPEND] = &transition_op, [CH_OP_MANDATE_REINSTATE] = &transition_op,
    [CH_OP_MANDATE_REVOKE] = &transition_op,  [CH_OP_MANDATE_COMPLETE] = &transition_op,
    [CH_OP_MANDATE_EXPIRE] = &expire_op,      [CH_OP_AUDIT_FLUSH] = &ch__audit_flush_op,
};
