/*
 * check.c — the one check every resume, delegation and tool call passes, and the
 * audit trail of its decisions.
 *
 * A check reads only memory: the registry's published records under its read lock.
 * Its decision is queued for the audit log, and the audit flusher (thread ch-audit)
 * hands what has queued up to the writer as one AUDIT_FLUSH request at most every
 * AUDIT_FLUSH_MS, or sooner once AUDIT_BATCH decisions wait: a check never waits for
 * storage, and thousands of decisions share one commit. Mandate changes are audited by
 * the writer inside the change's own transaction (ch__audit_write).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/signing.h"
#include "mandates/mandates.h"

#define AUDIT_QUEUE_MAX 1000000 /* decisions waiting for the writer */
#define AUDIT_BATCH 8192        /* a flush starts at once beyond this many */
#define AUDIT_FLUSH_MS 5        /* otherwise decisions wait at most this long */
#define AUDIT_PACK 4096         /* decisions stored in one row at most */

typedef struct aitem {
    struct aitem *next;
    int64_t at, version;
    bool allow;
    const char *reason;
    char decision_id[CH_ID_MAX];
    const char *lineage; /* the mandate's (immutable, lives as long as the registry) */
    char *tenant, *mandate, *actor, *session, *tool, *lane, *resource, *cls;
    char buf[];
} aitem;

/* Every reason a check can answer, for the decision counters. */
static const char *const all_reasons[] = {
    "ok",
    "artifact_invalid",
    "artifact_stale",
    "mandate_unknown",
    "mandate_proposed",
    "mandate_suspended",
    "mandate_revoked",
    "mandate_expired",
    "mandate_completed",
    "ancestor_inactive",
    "actor_mismatch",
    "tool_out_of_scope",
    "lane_out_of_scope",
    "resource_out_of_scope",
    "class_out_of_scope",
    "budget_exceeded",
};
#define NREASONS (sizeof(all_reasons) / sizeof(all_reasons[0]))

struct ch__audit_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* wakes the flusher */
    aitem *head;       /* newest first */
    size_t n;
    bool stop, running;
    pthread_t flusher;
    ch_db *db;
    uint64_t dropped;
    uint64_t decisions[NREASONS]; /* atomic */
};

/* The audit flusher: waits for decisions, lets them gather for up to AUDIT_FLUSH_MS
 * (or until AUDIT_BATCH), then has the writer store them all and waits for that. */
static void *flusher_main(void *arg)
{
    ch__audit_queue *q = arg;
    pthread_setname_np(pthread_self(), "ch-audit");
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (q->n == 0 && !q->stop)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->stop)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += AUDIT_FLUSH_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (q->n < AUDIT_BATCH && !q->stop && pthread_cond_timedwait(&q->cv, &q->mu, &ts) == 0)
            ;
        pthread_mutex_unlock(&q->mu);
        ch_req req = {.op = CH_OP_AUDIT_FLUSH};
        ch_status rc = ch_call(q->db, &req); /* failures in the flush are logged by it */
        ch_req_dispose(&req);
        pthread_mutex_lock(&q->mu);
        if (rc != CH_OK && rc != CH_SHUTTING_DOWN && q->n > 0) {
            /* Writes are refused (a failed fsync stops them until a restart): what is
             * queued can never be written. Drop it, counted, rather than hold it. */
            for (aitem *it = q->head, *nx; it; it = nx) {
                nx = it->next;
                free(it);
            }
            __atomic_fetch_add(&q->dropped, q->n, __ATOMIC_RELAXED);
            ch_log(CH_LOG_ERROR, "audit flush refused; queued decisions dropped", "{s:I}",
                   "dropped", (json_int_t)q->n);
            q->head = NULL;
            q->n = 0;
        }
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

ch__audit_queue *ch__audit_queue_new(ch_db *db)
{
    ch__audit_queue *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->db = db;
    return q;
}

void ch__audit_queue_start(ch__audit_queue *q)
{
    if (pthread_create(&q->flusher, NULL, flusher_main, q) == 0)
        q->running = true;
    else
        ch_log(CH_LOG_ERROR, "cannot start the audit flusher; decisions are written at close",
               NULL);
}

void ch__audit_queue_stop(ch__audit_queue *q)
{
    if (q == NULL || !q->running)
        return;
    pthread_mutex_lock(&q->mu);
    q->stop = true;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->flusher, NULL);
    q->running = false;
}

void ch__audit_queue_free(ch__audit_queue *q)
{
    if (q == NULL)
        return;
    ch__audit_queue_stop(q);
    for (aitem *it = q->head, *nx; it; it = nx) {
        nx = it->next;
        free(it);
    }
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

static void count_decision(ch__audit_queue *q, const char *reason)
{
    for (size_t i = 0; i < NREASONS; i++) {
        if (all_reasons[i] == reason || strcmp(all_reasons[i], reason) == 0) {
            __atomic_fetch_add(&q->decisions[i], 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

void ch__mandate_metrics(ch_db *db, ch_buf *out)
{
    ch__audit_queue *q = ch__db_audit(db);
    ch_buf_printf(out, "# HELP charter_checks_total Check decisions, by reason.\n"
                       "# TYPE charter_checks_total counter\n");
    for (size_t i = 0; i < NREASONS; i++)
        ch_buf_printf(out, "charter_checks_total{reason=\"%s\"} %llu\n", all_reasons[i],
                      (unsigned long long)__atomic_load_n(&q->decisions[i], __ATOMIC_RELAXED));
    pthread_mutex_lock(&q->mu);
    size_t depth = q->n;
    pthread_mutex_unlock(&q->mu);
    ch_buf_printf(out,
                  "# HELP charter_audit_queue_depth Check decisions waiting to be written.\n"
                  "# TYPE charter_audit_queue_depth gauge\ncharter_audit_queue_depth %zu\n"
                  "# HELP charter_audit_dropped_total Decisions not audited (queue full).\n"
                  "# TYPE charter_audit_dropped_total counter\ncharter_audit_dropped_total %llu\n",
                  depth, (unsigned long long)__atomic_load_n(&q->dropped, __ATOMIC_RELAXED));
    uint64_t counts[CH__M_STATE_COUNT] = {0};
    ch__registry_count(ch__db_registry(db), counts);
    ch_buf_printf(out, "# HELP charter_mandates Mandates, by state.\n"
                       "# TYPE charter_mandates gauge\n");
    for (int i = 0; i < CH__M_STATE_COUNT; i++)
        ch_buf_printf(out, "charter_mandates{state=\"%s\"} %llu\n", ch__mandate_state_name(i),
                      (unsigned long long)counts[i]);
    ch_buf_printf(out,
                  "# HELP charter_mandate_timers Deadlines waiting in the expiry timer.\n"
                  "# TYPE charter_mandate_timers gauge\ncharter_mandate_timers %zu\n",
                  ch__registry_timers(ch__db_registry(db)));
}

/* Copies s into the item's buffer at *p. */
static char *put(char **p, const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = *p;
    size_t n = strlen(s) + 1;
    memcpy(d, s, n);
    *p += n;
    return d;
}

static void audit_push(ch_db *db, const char *tenant, const char *mandate, const char *lineage,
                       const char *actor, const char *session, const ch_action *a,
                       const ch_decision *d)
{
    ch__audit_queue *q = ch__db_audit(db);
    count_decision(q, d->reason);
    const char *strs[] = {tenant, mandate, actor, session, a->tool, a->lane, a->resource, a->cls};
    size_t len = 0;
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        len += strs[i] ? strlen(strs[i]) + 1 : 0;
    aitem *it = malloc(sizeof(*it) + len);
    if (it == NULL) {
        __atomic_fetch_add(&q->dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    char *p = it->buf;
    it->at = d->checked_at;
    it->version = d->mandate_version;
    it->allow = d->allow;
    it->reason = d->reason;
    memcpy(it->decision_id, d->decision_id, sizeof(it->decision_id));
    it->lineage = lineage;
    it->tenant = put(&p, tenant);
    it->mandate = put(&p, mandate);
    it->actor = put(&p, actor);
    it->session = put(&p, session);
    it->tool = put(&p, a->tool);
    it->lane = put(&p, a->lane);
    it->resource = put(&p, a->resource);
    it->cls = put(&p, a->cls);

    pthread_mutex_lock(&q->mu);
    if (q->n >= AUDIT_QUEUE_MAX) {
        pthread_mutex_unlock(&q->mu);
        free(it);
        if (__atomic_fetch_add(&q->dropped, 1, __ATOMIC_RELAXED) % 10000 == 0)
            ch_log(CH_LOG_ERROR, "audit queue full; decisions dropped from the audit log", NULL);
        return;
    }
    it->next = q->head;
    q->head = it;
    /* The flusher sleeps when the queue is empty, and waits for a full batch. */
    if (++q->n == 1 || q->n == AUDIT_BATCH)
        pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* Appends s as a JSON string (or null). The strings come from parsed JSON, so they are
 * valid UTF-8: only the quote, the backslash and control characters need escaping.
 * Thousands of decisions go through here per commit, hence no JSON tree. */
static void put_str(ch_buf *b, const char *s)
{
    if (s == NULL) {
        put_lit(b, "null");
        return;
    }
    put_lit(b, "\"");
    for (const char *run = s;; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch != '\0' && ch != '"' && ch != '\\' && ch >= 0x20)
            continue;
        ch_buf_append(b, run, (size_t)(s - run));
        if (ch == '\0')
            break;
        if (ch == '"' || ch == '\\')
            ch_buf_printf(b, "\\%c", ch);
        else
            ch_buf_printf(b, "\\u%04x", ch);
        run = s + 1;
    }
    put_lit(b, "\"");
}

/* The stored text of one decision (the fields its audit record shows). */
static void decision_text(ch_buf *b, const aitem *it)
{
    ch_buf_printf(b, "{\"at\":%lld,\"decision_id\":\"%s\",\"actor\":", (long long)it->at,
                  it->decision_id);
    put_str(b, it->actor);
    put_lit(b, ",\"session\":");
    put_str(b, it->session);
    put_lit(b, ",\"action\":{\"tool\":");
    put_str(b, it->tool);
    put_lit(b, ",\"lane\":");
    put_str(b, it->lane);
    put_lit(b, ",\"resource\":");
    put_str(b, it->resource);
    put_lit(b, ",\"class\":");
    put_str(b, it->cls);
    ch_buf_printf(b, "},\"allow\":%s,\"reason\":\"%s\",\"mandate_version\":",
                  it->allow ? "true" : "false", it->reason);
    if (it->version)
        ch_buf_printf(b, "%lld}", (long long)it->version);
    else
        put_lit(b, "null}");
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Do a and b belong in the same "checks" row (same tenant and mandate)? */
static bool same_run(const aitem *a, const aitem *b)
{
    return strcmp(a->tenant, b->tenant) == 0 && same_str(a->mandate, b->mandate) &&
           a->lineage == b->lineage;
}

static ch_status flush_exec(ch_db *db, ch_store *w, ch_req *req)
{
    ch__audit_queue *q = ch__db_audit(db);
    pthread_mutex_lock(&q->mu);
    aitem *list = q->head;
    q->head = NULL;
    q->n = 0;
    pthread_mutex_unlock(&q->mu);
    /* Oldest first. */
    aitem *rev = NULL;
    while (list != NULL) {
        aitem *nx = list->next;
        list->next = rev;
        rev = list;
        list = nx;
    }
    /* Each run of decisions on the same mandate is stored as one "checks" row whose data
     * is the array of its decisions: one row and one index entry for hundreds of them.
     * A decision's record id is the row id × AUDIT_PACK plus its place in the row. */
    ch_status rc = CH_OK;
    ch_buf text = {0};
    aitem *it = rev;
    while (it != NULL) {
        aitem *first = it;
        size_t n = 0;
        text.len = 0;
        put_lit(&text, "[");
        for (; it != NULL && n < AUDIT_PACK && same_run(first, it); it = it->next, n++) {
            if (n > 0)
                put_lit(&text, ",");
            decision_text(&text, it);
        }
        put_lit(&text, "]");
        if (rc == CH_OK && text.data == NULL)
            rc = CH_NOMEM;
        if (rc == CH_OK) {
            ch_audit_row row = {0,
                                first->tenant,
                                first->at,
                                "checks",
                                first->mandate ? first->mandate : "",
                                first->lineage ? first->lineage : "",
                                text.data,
                                text.len};
            rc = ch__db_store(db)->audit_append(w, &row);
        }
        while (first != it) {
            aitem *nx = first->next;
            free(first);
            first = nx;
        }
    }
    ch_buf_free(&text);
    if (rc != CH_OK)
        ch_log(CH_LOG_ERROR, "audit records lost", "{s:s}", "error", ch_strerror(rc));
    req->result = json_object();
    return rc;
}

const ch__op_def ch__audit_flush_op = {.exec = flush_exec};

ch_status ch__audit_write(ch_store *w, const ch__mandate *m, const char *kind, const char *data,
                          int64_t now)
{
    ch_audit_row row = {0, m->tenant, now, kind, m->id, m->lineage, data, strlen(data)};
    return w->methods->audit_append(w, &row);
}

/* ---- the check ------------------------------------------------------------------ */

static const char *const state_reasons[CH__M_STATE_COUNT] = {
    [CH__M_PROPOSED] = "mandate_proposed",   [CH__M_SUSPENDED] = "mandate_suspended",
    [CH__M_REVOKED] = "mandate_revoked",     [CH__M_EXPIRED] = "mandate_expired",
    [CH__M_COMPLETED] = "mandate_completed",
};

static const char *const verdict_reasons[] = {
    [CH__ALLOW] = "ok",
    [CH__TOOL_OUT] = "tool_out_of_scope",
    [CH__LANE_OUT] = "lane_out_of_scope",
    [CH__RESOURCE_OUT] = "resource_out_of_scope",
    [CH__CLASS_OUT] = "class_out_of_scope",
};

static bool over_budget(const ch__mandate *m)
{
    for (; m != NULL; m = m->parent) {
        const ch__budget *b = &m->cur->budget;
        const ch__usage *s = &m->spent;
        if ((b->has_tokens && s->tokens >= b->tokens) ||
            (b->has_cost && s->cost_usd >= b->cost_usd) ||
            (b->has_calls && s->tool_calls >= b->tool_calls))
            return true;
    }
    return false;
}

/* The check; want_version > 0 (an artifact's) also requires that version. */
static void check(ch_db *db, const char *tenant, const char *mandate, const char *actor,
                  const char *session, const ch_action *a, int64_t want_version, ch_decision *out)
{
    ch__registry *reg = ch__db_registry(db);
    int64_t now = ch_now_ms();
    const char *lineage = NULL;
    unsigned cls = a->cls ? ch__class_parse(a->cls) : 0;

    out->allow = false;
    out->mandate_version = 0;
    out->checked_at = now;
    ch__registry_rdlock(reg);
    ch__mandate *m = mandate ? ch__registry_find(reg, tenant, mandate) : NULL;
    const ch__mstate *st = m ? m->cur : NULL;
    if (st == NULL) {
        out->reason = "mandate_unknown";
    } else {
        lineage = m->lineage;
        out->mandate_version = st->version;
        int eff = ch__mandate_effective(m, now, false);
        if (want_version > 0 && want_version != st->version)
            out->reason = "artifact_stale";
        else if (eff != CH__M_ACTIVE)
            out->reason = state_reasons[eff];
        else if (ch__ancestor_not_holding(m, now, false) != NULL)
            out->reason = "ancestor_inactive";
        else if (actor != NULL && st->actor != NULL && strcmp(actor, st->actor) != 0)
            out->reason = "actor_mismatch";
        else {
            ch__verdict v =
                ch__scope_allows(&st->scope, a->tool ? a->tool : "", a->lane ? a->lane : "",
                                 a->resource ? a->resource : "", cls);
            if (v != CH__ALLOW)
                out->reason = verdict_reasons[v];
            else if (over_budget(m))
                out->reason = "budget_exceeded";
            else
                out->reason = "ok", out->allow = true;
        }
    }
    ch__registry_unlock(reg);
    ch_id_new("dec", out->decision_id);
    audit_push(db, tenant, mandate, lineage, actor, session, a, out);
}

void ch_check(ch_db *db, const char *tenant, const char *mandate, const char *actor,
              const char *session, const ch_action *action, ch_decision *out)
{
    check(db, tenant, mandate, actor, session, action, 0, out);
}

static const char *const check_fields[] = {"mandate", "artifact", "actor",
                                           "session", "action",   NULL};
static const char *const action_fields[] = {"tool", "lane", "resource", "class", NULL};

/* Parses a check request and decides it. *echo is the mandate the reply names (a
 * string of body or of *claims, which the caller releases), NULL when none. */
static ch_status check_request(ch_db *db, const char *tenant, const json_t *body,
                               ch_decision *d_out, const char **echo, json_t **claims_out,
                               ch_err *e)
{
    const char *mandate, *artifact, *actor, *session;
    ch_action a;
    json_t *act = NULL;
    ch_status rc;

    if (!json_is_object(body))
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "body must be a JSON object");
    if ((rc = ch__fields_known(body, NULL, check_fields, e)) != CH_OK ||
        (rc = ch__field_string(body, NULL, "mandate", false, 256, &mandate, e)) != CH_OK ||
        (rc = ch__field_string(body, NULL, "artifact", false, 65536, &artifact, e)) != CH_OK ||
        (rc = ch__field_string(body, NULL, "actor", false, 256, &actor, e)) != CH_OK ||
        (rc = ch__field_string(body, NULL, "session", false, 256, &session, e)) != CH_OK)
        return rc;
    if (mandate == NULL && artifact == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "mandate", "mandate (or artifact) is required");
    if (mandate != NULL && artifact != NULL)
        return ch_err_set(e, CH_BAD_REQUEST, "artifact", "give mandate or artifact, not both");
    if ((rc = ch__field_object(body, NULL, "action", &act, e)) != CH_OK)
        return rc;
    if (act == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "action", "action is required");
    if ((rc = ch__fields_known(act, "action.", action_fields, e)) != CH_OK ||
        (rc = ch__field_string(act, "action.", "tool", true, 256, &a.tool, e)) != CH_OK ||
        (rc = ch__field_string(act, "action.", "lane", true, 256, &a.lane, e)) != CH_OK ||
        (rc = ch__field_string(act, "action.", "resource", true, 4096, &a.resource, e)) != CH_OK ||
        (rc = ch__field_string(act, "action.", "class", true, 32, &a.cls, e)) != CH_OK)
        return rc;
    if (ch__class_parse(a.cls) == 0)
        return ch_err_set(e, CH_INVALID_VALUE, "action.class",
                          "class must be read, write, external or irreversible");

    ch_decision d;
    json_t *claims = NULL;
    *claims_out = NULL;
    if (artifact != NULL) {
        /* The artifact must verify against this server's key and be this tenant's. */
        json_t *jwk = ch_signing_key(db);
        char *jwk_text = jwk ? json_dumps(jwk, JSON_COMPACT) : NULL;
        json_decref(jwk);
        ch_err ae = {0};
        if (jwk_text == NULL)
            return ch_err_set(e, CH_NOMEM, NULL, NULL);
        rc = ch_artifact_verify(jwk_text, strlen(jwk_text), artifact, ch_now_ms(), &claims, &ae);
        free(jwk_text);
        const char *t = json_string_value(json_object_get(claims, "tenant"));
        mandate = json_string_value(json_object_get(claims, "mdt"));
        json_int_t ver = json_integer_value(json_object_get(claims, "ver"));
        if (rc != CH_OK || mandate == NULL || ver <= 0) {
            memset(&d, 0, sizeof(d));
            d.reason = "artifact_invalid";
            d.checked_at = ch_now_ms();
            ch_id_new("dec", d.decision_id);
            audit_push(db, tenant, NULL, NULL, actor, session, &a, &d);
            mandate = NULL;
        } else {
            check(db, tenant, t && strcmp(t, tenant) == 0 ? mandate : NULL, actor, session, &a, ver,
                  &d);
        }
    } else {
        check(db, tenant, mandate, actor, session, &a, 0, &d);
    }
    *d_out = d;
    *echo = mandate;
    *claims_out = claims;
    return CH_OK;
}

ch_status ch_check_text(ch_db *db, const char *tenant, const json_t *body, ch_buf *out, ch_err *e)
{
    ch_decision d;
    const char *mandate = NULL;
    json_t *claims = NULL;
    ch_status rc = check_request(db, tenant, body, &d, &mandate, &claims, e);
    if (rc != CH_OK)
        return rc;
    char at[32];
    ch_time_format(d.checked_at, at);
    /* Built piece by piece: this is every check's reply. */
    if (d.allow)
        put_lit(out, "{\"allow\":true,\"reason\":\"");
    else
        put_lit(out, "{\"allow\":false,\"reason\":\"");
    ch_buf_append(out, d.reason, strlen(d.reason));
    put_lit(out, "\",\"mandate\":");
    put_str(out, mandate);
    if (d.mandate_version)
        ch_buf_printf(out, ",\"mandate_version\":%lld", (long long)d.mandate_version);
    else
        put_lit(out, ",\"mandate_version\":null");
    put_lit(out, ",\"decision_id\":\"");
    ch_buf_append(out, d.decision_id, strlen(d.decision_id));
    put_lit(out, "\",\"checked_at\":\"");
    ch_buf_append(out, at, strlen(at));
    put_lit(out, "\"}");
    json_decref(claims);
    return out->data ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
}

ch_status ch_check_json(ch_db *db, const char *tenant, const json_t *body, json_t **out, ch_err *e)
{
    ch_buf text = {0};
    ch_status rc = ch_check_text(db, tenant, body, &text, e);
    if (rc == CH_OK && (*out = json_loadb(text.data, text.len, 0, NULL)) == NULL)
        rc = ch_err_set(e, CH_NOMEM, NULL, NULL);
    ch_buf_free(&text);
    return rc;
}

/* ---- the audit trail ------------------------------------------------------------ */

typedef struct audit_ctx {
    json_t *records;
    int64_t after; /* record ids up to this one are skipped */
    int want;      /* records to collect (one more than a page) */
    int n;
    bool nomem;
} audit_ctx;

/* Appends one record: rec is its stored object (consumed), completed with the row's
 * id, time, kind, mandate and lineage. */
static int add_one(audit_ctx *c, const ch_audit_row *r, json_t *rec, int64_t id, int64_t at,
                   const char *kind)
{
    char when[32];
    json_t *lineage = json_array();
    if (!json_is_object(rec)) {
        json_decref(rec);
        rec = json_object();
    }
    for (const char *p = r->lineage; p && *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        json_array_append_new(lineage, json_stringn(p, n));
        p += n + (slash != NULL);
    }
    ch_time_format(at, when);
    /* Fields a record kind does not have are null. */
    static const char *const optional[] = {"actor",  "session",         "action",      "allow",
                                           "reason", "mandate_version", "decision_id", NULL};
    for (int i = 0; rec && optional[i]; i++) {
        if (json_object_get(rec, optional[i]) == NULL)
            json_object_set_new(rec, optional[i], json_null());
    }
    if (rec == NULL || lineage == NULL || json_object_set_new(rec, "id", json_integer(id)) != 0 ||
        json_object_set_new(rec, "at", json_string(when)) != 0 ||
        json_object_set_new(rec, "kind", json_string(kind)) != 0 ||
        json_object_set_new(rec, "mandate",
                            r->mandate[0] ? json_string(r->mandate) : json_null()) != 0 ||
        json_object_set_new(rec, "lineage", lineage) != 0 ||
        json_array_append_new(c->records, rec) != 0) {
        json_decref(lineage);
        c->nomem = true;
        return 1;
    }
    return ++c->n >= c->want;
}

static int add_record(void *arg, const ch_audit_row *r)
{
    audit_ctx *c = arg;
    json_t *data = json_loadb(r->data, r->data_len, 0, NULL);
    int stop = 0;
    if (strcmp(r->kind, "checks") == 0 && json_is_array(data)) {
        size_t k;
        json_t *d;
        json_array_foreach(data, k, d)
        {
            int64_t id = r->id * AUDIT_PACK + (int64_t)k;
            if (id <= c->after)
                continue;
            int64_t at = json_integer_value(json_object_get(d, "at"));
            json_object_del(d, "at");
            if ((stop = add_one(c, r, json_incref(d), id, at, "check")) != 0)
                break;
        }
        json_decref(data);
        return stop;
    }
    if (r->id * AUDIT_PACK <= c->after) {
        json_decref(data);
        return 0;
    }
    return add_one(c, r, data, r->id * AUDIT_PACK, r->at, r->kind);
}

ch_status ch_audit_list(ch_db *db, const char *tenant, const char *mandate, int64_t after,
                        int limit, json_t **out, ch_err *e)
{
    char *prefix = NULL;
    if (limit < 1 || limit > 1000)
        return ch_err_set(e, CH_BAD_REQUEST, "limit", "limit must be 1..1000");
    if (after < 0)
        return ch_err_set(e, CH_BAD_REQUEST, "after", "after must be >= 0");
    if (mandate != NULL) {
        ch__registry *reg = ch__db_registry(db);
        ch__registry_rdlock(reg);
        ch__mandate *m = ch__registry_find(reg, tenant, mandate);
        if (m != NULL && m->cur != NULL)
            prefix = strdup(m->lineage);
        ch__registry_unlock(reg);
        if (prefix == NULL)
            return ch_err_set(e, CH_NOT_FOUND, NULL, "no such mandate");
    }
    ch_store *r = ch__reader_get(db, e);
    if (r == NULL) {
        free(prefix);
        return e ? e->status : CH_IO;
    }
    /* One more than asked tells whether there is a next page. Rows are read from the
     * one holding record `after` on; each row gives at least one record past it but
     * that first one, so limit + 2 rows always suffice. */
    audit_ctx c = {json_array(), after, limit + 1, 0, false};
    ch_status rc = c.records
                       ? ch__db_store(db)->audit_list(r, tenant, prefix, after / AUDIT_PACK - 1,
                                                      limit + 2, add_record, &c)
                       : CH_NOMEM;
    ch__reader_put(db, r);
    free(prefix);
    if (rc == CH_OK && c.nomem)
        rc = CH_NOMEM;
    if (rc != CH_OK) {
        json_decref(c.records);
        return ch_err_set(e, rc, NULL, NULL);
    }
    json_t *next = json_null();
    if (c.n > limit) {
        json_array_remove(c.records, (size_t)limit);
        json_t *lastrec = json_array_get(c.records, (size_t)limit - 1);
        next = json_incref(json_object_get(lastrec, "id"));
    }
    *out = json_pack("{s:o, s:o}", "records", c.records, "next_after", next);
    return *out ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
}
