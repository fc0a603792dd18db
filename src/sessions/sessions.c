/*
 * sessions.c — writes to sessions: create, append, lifecycle transitions, compaction
 * and facts.
 *
 * Each write is a ch__op_def: `prepare` validates the request and precomputes what
 * needs no storage (canonical event bodies, usage totals) on the caller's thread;
 * `exec` runs on the writer thread inside the group commit and does only the storage
 * work and the checks that depend on current state (state, expect_seq).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_BATCH_EVENTS 1000
#define MAX_FACT_VALUE (64 * 1024)
#define MAX_FACT_KEY 256
#define MAX_LABELS 64
#define MAX_REASON 1024
#define MAX_KIND 64
#define MAX_ROLE 64
#define MAX_USAGE_INT 1000000000000LL /* per event: 10^12 tokens / tool calls */
#define MAX_USAGE_COST 1e9

void ch__err_state(ch_err *e, ch_session_state s)
{
    snprintf(e->state, sizeof(e->state), "%s", ch_session_state_name(s));
}

/* ---- create ---------------------------------------------------------------------- */

static const char *const create_fields[] = {"user", "agent", "mandate", "labels", "budget", NULL};
static const char *const budget_fields[] = {"tokens", "cost_usd", "tool_calls", NULL};

static void rec_free(void *p)
{
    ch_session_rec_clear(p);
    free(p);
}

static ch_status validate_labels(json_t *labels, ch_err *e)
{
    const char *k;
    json_t *v;
    if (json_object_size(labels) > MAX_LABELS)
        return ch_err_set(e, CH_INVALID_VALUE, "labels", "at most %d labels", MAX_LABELS);
    json_object_foreach(labels, k, v)
    {
        char f[128];
        snprintf(f, sizeof(f), "labels.%.100s", k);
        if (strlen(k) == 0 || strlen(k) > 128)
            return ch_err_set(e, CH_INVALID_VALUE, f, "label keys must be 1 to 128 bytes");
        if (!json_is_string(v))
            return ch_err_set(e, CH_INVALID_TYPE, f, "label values must be strings");
        if (json_string_length(v) > 1024)
            return ch_err_set(e, CH_INVALID_VALUE, f, "label values are at most 1024 bytes");
    }
    return CH_OK;
}

/* Validates a {tokens, cost_usd, tool_calls} object (budget or usage). */
static ch_status validate_usage(json_t *u, const char *prefix, int64_t *tokens, double *cost,
                                int64_t *calls, ch_err *e)
{
    bool present;
    ch_status st = ch__fields_known(u, prefix, budget_fields, e);
    if (st == CH_OK)
        st = ch__field_int(u, prefix, "tokens", false, 0, MAX_USAGE_INT, tokens, &present, e);
    if (st == CH_OK)
        st = ch__field_number(u, prefix, "cost_usd", 0, MAX_USAGE_COST, cost, &present, e);
    if (st == CH_OK)
        st = ch__field_int(u, prefix, "tool_calls", false, 0, MAX_USAGE_INT, calls, &present, e);
    return st;
}

static ch_status create_prepare(ch_db *db, ch_req *req)
{
    ch_err *e = &req->err;
    const char *user, *agent, *mandate;
    json_t *labels, *budget;
    ch_session_rec *r;
    int64_t t = 0, c = 0;
    double cost = 0;

    if (req->body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    if (ch__fields_known(req->body, "", create_fields, e) ||
        ch__field_string(req->body, "", "user", true, CH_NAME_MAX - 1, &user, e) ||
        ch__field_string(req->body, "", "agent", true, CH_NAME_MAX - 1, &agent, e) ||
        ch__field_string(req->body, "", "mandate", false, CH_NAME_MAX - 1, &mandate, e) ||
        ch__field_object(req->body, "", "labels", &labels, e) ||
        ch__field_object(req->body, "", "budget", &budget, e))
        return e->status;
    if (labels != NULL && validate_labels(labels, e) != CH_OK)
        return e->status;
    if (budget != NULL && validate_usage(budget, "budget.", &t, &cost, &c, e) != CH_OK)
        return e->status;

    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    snprintf(r->tenant, sizeof(r->tenant), "%s", req->tenant);
    snprintf(r->user, sizeof(r->user), "%s", user);
    snprintf(r->agent, sizeof(r->agent), "%s", agent);
    snprintf(r->mandate, sizeof(r->mandate), "%s", mandate ? mandate : "");
    r->labels = labels ? ch_json_canonical(labels, NULL) : strdup("{}");
    r->budget = budget ? ch_json_canonical(budget, NULL) : NULL;
    r->state = CH_SESSION_OPEN;
    req->priv->prep = r;
    req->priv->prep_free = rec_free;
    if (r->labels == NULL || (budget != NULL && r->budget == NULL))
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    return CH_OK;
}

static ch_status create_exec(ch_db *db, ch_store *w, ch_req *req)
{
    ch_session_rec *r = req->priv->prep;
    /* The id is drawn here, on the writer thread, so ids increase in commit order and
     * a cursor walk over the list sees sessions in the order they became visible. */
    ch_id_new("sess", r->id);
    r->created_at = r->updated_at = ch_now_ms();
    ch_status st;
    if (r->mandate[0] != '\0' &&
        (st = ch__mandate_may_bind(db, req->tenant, r->mandate, &req->err)) != CH_OK)
        return st;
    st = w->methods->session_insert(w, r);
    if (st != CH_OK)
        return ch_err_set(&req->err, st, NULL, "cannot store the session");
    st = ch__stream_emit(db, w, r->tenant, "session.created",
                         json_pack("{s:s, s:s, s:n, s:o, s:n}", "session", r->id, "state", "open",
                                   "from", "mandate",
                                   r->mandate[0] ? json_string(r->mandate) : json_null(), "reason"),
                         r->created_at);
    if (st != CH_OK)
        return ch_err_set(&req->err, st, NULL, "cannot store the session");
    req->result = ch__session_to_json(r);
    return CH_OK;
}

/* ---- shared by the writes on one session ---------------------------------------- */

/* Loads the request's session into s (zeroed) or fails with not_found. */
static ch_status load(ch_store *w, ch_req *req, ch_session_rec *s)
{
    ch_status st = w->methods->session_get(w, req->tenant, req->id, s);
    if (st == CH_NOT_FOUND)
        return ch_err_set(&req->err, st, NULL, "session %s not found", req->id);
    if (st != CH_OK)
        return ch_err_set(&req->err, st, NULL, "cannot read the session");
    return CH_OK;
}

static ch_status not_in_state(ch_req *req, const ch_session_rec *s, const char *what)
{
    ch_err_set(&req->err, CH_INVALID_STATE, NULL, "cannot %s a session that is %s", what,
               ch_session_state_name(s->state));
    ch__err_state(&req->err, s->state);
    return CH_INVALID_STATE;
}

ch_status ch__session_append_system(ch_store *w, ch_session_rec *s, const char *kind,
                                    json_t *content, int64_t now)
{
    json_t *ev = json_pack("{s:s, s:O}", "kind", kind, "content", content);
    size_t len;
    char *body = ev ? ch_json_canonical(ev, &len) : NULL;
    ch_status st = CH_NOMEM;
    json_decref(ev);
    if (body != NULL) {
        ch_event_rec rec = {.seq = s->seq + 1, .at = now, .body = body, .len = len};
        st = w->methods->event_insert(w, s->sid, &rec);
        if (st == CH_OK)
            s->seq = rec.seq;
        free(body);
    }
    return st;
}

/* ---- append ---------------------------------------------------------------------- */

static const char *const event_fields[] = {"kind", "role", "content", "usage", "meta", NULL};
static const char *const single_fields[] = {"kind", "role",       "content", "usage",
                                            "meta", "expect_seq", NULL};
static const char *const batch_fields[] = {"events", "expect_seq", NULL};

typedef struct append_prep {
    int n;
    char **bodies;
    size_t *lens;
    int64_t expect_seq; /* -1: none */
    int64_t tokens, tool_calls;
    double cost_usd;
} append_prep;

static void append_prep_free(void *p)
{
    append_prep *a = p;
    if (a == NULL)
        return;
    for (int i = 0; i < a->n; i++)
        free(a->bodies[i]);
    free(a->bodies);
    free(a->lens);
    free(a);
}

static bool kind_valid(const char *k)
{
    for (const char *c = k; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.' ||
              *c == '-'))
            return false;
    }
    return true;
}

/* Validates one event and stores its canonical body at index i of a. */
static ch_status prepare_event(json_t *ev, const char *prefix, append_prep *a, int i,
                               const char *const allowed[], ch_err *e)
{
    const char *kind, *role;
    json_t *usage, *meta, *body;
    char f[128];

    if (ch__fields_known(ev, prefix, allowed, e) ||
        ch__field_string(ev, prefix, "kind", true, MAX_KIND, &kind, e) ||
        ch__field_object(ev, prefix, "usage", &usage, e) ||
        ch__field_object(ev, prefix, "meta", &meta, e))
        return e->status;
    /* role may be empty: "" is a role some harnesses use for system turns. */
    role = NULL;
    json_t *rv = json_object_get(ev, "role");
    snprintf(f, sizeof(f), "%srole", prefix);
    if (rv != NULL && !json_is_null(rv)) {
        if (!json_is_string(rv))
            return ch_err_set(e, CH_INVALID_TYPE, f, "'%s' must be a string", f);
        if (json_string_length(rv) > MAX_ROLE ||
            strlen(json_string_value(rv)) != json_string_length(rv))
            return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' must be at most %d bytes, without NUL",
                              f, MAX_ROLE);
        role = json_string_value(rv);
    }
    snprintf(f, sizeof(f), "%skind", prefix);
    if (!kind_valid(kind))
        return ch_err_set(e, CH_INVALID_VALUE, f, "'%s' must be made of a-z, 0-9, '_', '.', '-'",
                          f);
    if (strcmp(kind, "lifecycle") == 0 || strcmp(kind, "summary") == 0)
        return ch_err_set(e, CH_RESERVED_KIND, f, "events of kind '%s' are written by charter only",
                          kind);
    if (usage != NULL) {
        int64_t t = 0, c = 0;
        double cost = 0;
        char up[128];
        snprintf(up, sizeof(up), "%susage.", prefix);
        if (validate_usage(usage, up, &t, &cost, &c, e) != CH_OK)
            return e->status;
        a->tokens += t;
        a->cost_usd += cost;
        a->tool_calls += c;
    }
    /* The stored body is the event as appended, without expect_seq and without nulls
     * standing for absent optional fields. */
    body = json_object();
    json_object_set(body, "kind", json_object_get(ev, "kind"));
    if (role != NULL)
        json_object_set(body, "role", json_object_get(ev, "role"));
    if (json_object_get(ev, "content") != NULL)
        json_object_set(body, "content", json_object_get(ev, "content"));
    if (usage != NULL)
        json_object_set(body, "usage", usage);
    if (meta != NULL)
        json_object_set(body, "meta", meta);
    a->bodies[i] = ch_json_canonical(body, &a->lens[i]);
    json_decref(body);
    if (a->bodies[i] == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    return CH_OK;
}

static ch_status append_prepare(ch_db *db, ch_req *req)
{
    ch_err *e = &req->err;
    json_t *events = NULL;
    bool has_expect;
    int64_t expect = -1;
    append_prep *a;

    if (req->body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    bool batch = json_object_get(req->body, "events") != NULL;
    if (batch) {
        if (ch__fields_known(req->body, "", batch_fields, e) != CH_OK)
            return e->status;
        events = json_object_get(req->body, "events");
        if (!json_is_array(events))
            return ch_err_set(e, CH_INVALID_TYPE, "events", "'events' must be an array");
        if (json_array_size(events) == 0 || json_array_size(events) > MAX_BATCH_EVENTS)
            return ch_err_set(e, CH_INVALID_VALUE, "events", "'events' must hold 1 to %d events",
                              MAX_BATCH_EVENTS);
    }
    if (ch__field_int(req->body, "", "expect_seq", false, 0, INT64_MAX, &expect, &has_expect, e))
        return e->status;

    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    req->priv->prep = a;
    req->priv->prep_free = append_prep_free;
    int n = batch ? (int)json_array_size(events) : 1;
    a->bodies = calloc((size_t)n, sizeof(*a->bodies));
    a->lens = calloc((size_t)n, sizeof(*a->lens));
    if (a->bodies == NULL || a->lens == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    a->n = n;
    a->expect_seq = has_expect ? expect : -1;
    if (!batch)
        return prepare_event(req->body, "", a, 0, single_fields, e);
    for (int i = 0; i < n; i++) {
        char prefix[32];
        json_t *ev = json_array_get(events, (size_t)i);
        snprintf(prefix, sizeof(prefix), "events[%d].", i);
        if (!json_is_object(ev)) {
            snprintf(prefix, sizeof(prefix), "events[%d]", i);
            return ch_err_set(e, CH_INVALID_TYPE, prefix, "'%s' must be an object", prefix);
        }
        if (prepare_event(ev, prefix, a, i, event_fields, e) != CH_OK)
            return e->status;
    }
    return CH_OK;
}

static ch_status append_exec(ch_db *db, ch_store *w, ch_req *req)
{
    append_prep *a = req->priv->prep;
    ch_session_rec s = {0};
    ch_status st = load(w, req, &s);
    int64_t now = ch_now_ms();

    if (st != CH_OK)
        goto out;
    /* An inert session whose mandate does not hold is refused for that reason first:
     * it says what must change (the mandate), not only what the session is. */
    if (s.state == CH_SESSION_INERT &&
        (st = ch__session_may_continue(db, w, &s, &req->err)) != CH_OK)
        goto out;
    if (s.state != CH_SESSION_OPEN && s.state != CH_SESSION_ACTIVE) {
        st = not_in_state(req, &s, "append to");
        goto out;
    }
    st = ch__session_may_continue(db, w, &s, &req->err);
    if (st != CH_OK)
        goto out;
    if (s.usage_tokens > INT64_MAX - a->tokens || s.usage_tool_calls > INT64_MAX - a->tool_calls ||
        s.usage_cost_usd + a->cost_usd > 9e15) {
        st = ch_err_set(&req->err, CH_INVALID_VALUE, "usage",
                        "the session's usage totals would overflow");
        goto out;
    }
    if (a->expect_seq >= 0 && a->expect_seq != s.seq) {
        st = ch_err_set(&req->err, CH_SEQ_CONFLICT, "expect_seq",
                        "expect_seq is %lld but the session is at seq %lld",
                        (long long)a->expect_seq, (long long)s.seq);
        goto out;
    }
    /* An active session keeps its state: only seq, usage and updated_at change. */
    bool progress_only = s.state == CH_SESSION_ACTIVE && w->methods->version >= 3 &&
                         w->methods->session_progress != NULL;
    int64_t first = s.seq + 1;
    ch_event_rec one, *evs = a->n == 1 ? &one : calloc((size_t)a->n, sizeof(*evs));
    if (evs == NULL) {
        st = ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
        goto out;
    }
    for (int i = 0; i < a->n; i++)
        evs[i] = (ch_event_rec){
            .seq = first + i, .at = now, .body = a->bodies[i], .len = a->lens[i]};
    if (w->methods->version >= 3 && w->methods->event_append != NULL) {
        st = w->methods->event_append(w, s.sid, evs, a->n);
    } else {
        st = CH_OK;
        for (int i = 0; i < a->n && st == CH_OK; i++)
            st = w->methods->event_insert(w, s.sid, &evs[i]);
    }
    if (evs != &one)
        free(evs);
    if (st != CH_OK) {
        ch_err_set(&req->err, st, NULL, "cannot store the event");
        goto out;
    }
    s.seq = first + a->n - 1;
    s.usage_tokens += a->tokens;
    s.usage_cost_usd += a->cost_usd;
    s.usage_tool_calls += a->tool_calls;
    if (s.state == CH_SESSION_OPEN)
        s.state = CH_SESSION_ACTIVE;
    s.updated_at = now;
    st = progress_only ? w->methods->session_progress(w, &s) : w->methods->session_update(w, &s);
    if (st == CH_OK)
        st = ch__mandate_spend(db, w, s.tenant, s.mandate, a->tokens, a->cost_usd, a->tool_calls);
    if (st != CH_OK) {
        ch_err_set(&req->err, st, NULL, "cannot update the session");
        goto out;
    }
    req->result =
        json_pack("{s:I, s:I}", "first_seq", (json_int_t)first, "last_seq", (json_int_t)s.seq);
out:
    ch_session_rec_clear(&s);
    return st;
}

/* ---- lifecycle ------------------------------------------------------------------- */

static const char *const reason_fields[] = {"reason", NULL};

typedef struct transition {
    const char *verb;
    unsigned from; /* bit set of states the call is allowed from */
    ch_session_state to;
} transition;

#define BIT(s) (1u << CH_SESSION_##s)

static const transition transitions[] = {
    [CH_OP_SESSION_PAUSE] = {"pause", BIT(OPEN) | BIT(ACTIVE), CH_SESSION_PAUSED},
    [CH_OP_SESSION_RESUME] = {"resume", BIT(PAUSED) | BIT(INERT), CH_SESSION_ACTIVE},
    [CH_OP_SESSION_CLOSE] = {"close", BIT(OPEN) | BIT(ACTIVE) | BIT(PAUSED) | BIT(INERT),
                             CH_SESSION_CLOSED},
    [CH_OP_SESSION_ARCHIVE] = {"archive", BIT(CLOSED), CH_SESSION_ARCHIVED},
};

static ch_status transition_prepare(ch_db *db, ch_req *req)
{
    const char *reason;
    if (req->body == NULL)
        return CH_OK;
    if (ch__fields_known(req->body, "", reason_fields, &req->err) ||
        ch__field_string(req->body, "", "reason", false, MAX_REASON, &reason, &req->err))
        return req->err.status;
    return CH_OK;
}

/* The stream event type of a move to each state. */
static const char *const moved_to[CH__SESSION_STATE_COUNT] = {
    [CH_SESSION_ACTIVE] = "session.resumed",    [CH_SESSION_PAUSED] = "session.paused",
    [CH_SESSION_INERT] = "session.inert",       [CH_SESSION_CLOSED] = "session.closed",
    [CH_SESSION_ARCHIVED] = "session.archived",
};

/* Moves s to `to`, logging a lifecycle event with reason (may be NULL) and cause (the
 * mandate whose change moved it; may be NULL), and announcing it on the stream. */
static ch_status move(ch_db *db, ch_store *w, ch_session_rec *s, ch_session_state to,
                      const char *reason, const char *cause, int64_t now)
{
    const char *from = ch_session_state_name(s->state);
    json_t *content = json_pack("{s:s, s:s}", "from", from, "to", ch_session_state_name(to));
    if (content == NULL)
        return CH_NOMEM;
    if (reason != NULL)
        json_object_set_new(content, "reason", json_string(reason));
    if (cause != NULL)
        json_object_set_new(content, "mandate", json_string(cause));
    ch_status st = ch__session_append_system(w, s, "lifecycle", content, now);
    json_decref(content);
    if (st != CH_OK)
        return st;
    s->state = to;
    s->updated_at = now;
    st = w->methods->session_update(w, s);
    if (st == CH_OK && moved_to[to] != NULL)
        st = ch__stream_emit(db, w, s->tenant, moved_to[to],
                             json_pack("{s:s, s:s, s:s, s:o, s:o}", "session", s->id, "state",
                                       ch_session_state_name(to), "from", from, "mandate",
                                       s->mandate[0] ? json_string(s->mandate) : json_null(),
                                       "reason", reason ? json_string(reason) : json_null()),
                             now);
    return st;
}

typedef struct bound_list {
    char (*ids)[CH_ID_MAX];
    size_t n, cap;
    bool nomem;
} bound_list;

static int collect_bound(void *arg, const ch_session_rec *s)
{
    bound_list *l = arg;
    if (s->state != CH_SESSION_OPEN && s->state != CH_SESSION_ACTIVE &&
        s->state != CH_SESSION_PAUSED)
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *p = realloc(l->ids, cap * sizeof(*l->ids));
        if (p == NULL) {
            l->nomem = true;
            return 1;
        }
        l->ids = p;
        l->cap = cap;
    }
    memcpy(l->ids[l->n++], s->id, CH_ID_MAX);
    return 0;
}

ch_status ch__sessions_inert(ch_db *db, ch_store *w, const char *tenant, const char *mandate,
                             const char *reason, const char *cause, int64_t now)
{
    bound_list l = {0};
    /* Collected first: the sessions are updated after the scan is over. */
    ch_status st = w->methods->session_by_mandate(w, tenant, mandate, collect_bound, &l);
    if (st == CH_OK && l.nomem)
        st = CH_NOMEM;
    for (size_t i = 0; i < l.n && st == CH_OK; i++) {
        ch_session_rec s = {0};
        st = w->methods->session_get(w, tenant, l.ids[i], &s);
        if (st == CH_OK)
            st = move(db, w, &s, CH_SESSION_INERT, reason, cause, now);
        ch_session_rec_clear(&s);
    }
    free(l.ids);
    return st;
}

static ch_status transition_exec(ch_db *db, ch_store *w, ch_req *req)
{
    const transition *t = &transitions[req->op];
    const char *reason = json_string_value(json_object_get(req->body, "reason"));
    ch_session_rec s = {0};
    ch_status st = load(w, req, &s);

    if (st != CH_OK)
        goto out;
    if ((t->from & (1u << s.state)) == 0) {
        st = ch_err_set(&req->err, CH_INVALID_TRANSITION, NULL, "cannot %s a session that is %s",
                        t->verb, ch_session_state_name(s.state));
        ch__err_state(&req->err, s.state);
        goto out;
    }
    if (req->op == CH_OP_SESSION_RESUME) {
        st = ch__session_may_continue(db, w, &s, &req->err);
        if (st != CH_OK)
            goto out;
    }
    st = move(db, w, &s, t->to, reason, NULL, ch_now_ms());
    if (st != CH_OK) {
        ch_err_set(&req->err, st, NULL, "cannot update the session");
        goto out;
    }
    req->result = ch__session_to_json(&s);
out:
    ch_session_rec_clear(&s);
    return st;
}

/* ---- compaction ------------------------------------------------------------------ */

static const char *const compact_fields[] = {"through_seq", "summary", NULL};

static ch_status compact_prepare(ch_db *db, ch_req *req)
{
    ch_err *e = &req->err;
    int64_t through;
    if (req->body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    if (ch__fields_known(req->body, "", compact_fields, e) ||
        ch__field_int(req->body, "", "through_seq", true, 1, INT64_MAX, &through, NULL, e))
        return e->status;
    if (json_object_get(req->body, "summary") == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "summary", "'summary' is required");
    return CH_OK;
}

static ch_status compact_exec(ch_db *db, ch_store *w, ch_req *req)
{
    int64_t through = json_integer_value(json_object_get(req->body, "through_seq"));
    json_t *summary = json_object_get(req->body, "summary");
    ch_session_rec s = {0};
    int64_t moved = 0, now = ch_now_ms();
    ch_status st = load(w, req, &s);

    if (st != CH_OK)
        goto out;
    if (s.state == CH_SESSION_ARCHIVED) {
        st = not_in_state(req, &s, "compact");
        goto out;
    }
    if (through <= s.summary_seq || through > s.seq) {
        st = ch_err_set(&req->err, CH_INVALID_VALUE, "through_seq",
                        "through_seq must be after the current summary (%lld) and at most the "
                        "session's seq (%lld)",
                        (long long)s.summary_seq, (long long)s.seq);
        goto out;
    }
    st = w->methods->event_archive(w, s.sid, through, s.summary_seq, &moved);
    if (st == CH_OK) {
        json_t *ev = json_pack("{s:s, s:O}", "kind", "summary", "content", summary);
        size_t len;
        char *body = ev ? ch_json_canonical(ev, &len) : NULL;
        json_decref(ev);
        if (body == NULL) {
            st = CH_NOMEM;
        } else {
            ch_event_rec rec = {.seq = through, .at = now, .body = body, .len = len};
            st = w->methods->event_insert(w, s.sid, &rec);
            free(body);
        }
    }
    if (st == CH_OK) {
        s.summary_seq = through;
        s.updated_at = now;
        st = w->methods->session_update(w, &s);
    }
    if (st != CH_OK) {
        ch_err_set(&req->err, st, NULL, "cannot compact the session");
        goto out;
    }
    req->result =
        json_pack("{s:I, s:I}", "summary_seq", (json_int_t)through, "archived", (json_int_t)moved);
out:
    ch_session_rec_clear(&s);
    return st;
}

/* ---- facts ----------------------------------------------------------------------- */

static const char *const fact_fields[] = {"value", NULL};

typedef struct fact_prep {
    char *value; /* canonical JSON text */
} fact_prep;

static void fact_prep_free(void *p)
{
    fact_prep *f = p;
    if (f != NULL)
        free(f->value);
    free(f);
}

/* Fact keys are opaque strings: 1-256 bytes of valid UTF-8 without NUL. They are only
 * ever used as database keys, never as paths. */
static ch_status check_fact_key(ch_req *req)
{
    size_t n = req->key ? strlen(req->key) : 0;
    if (n == 0 || n > MAX_FACT_KEY)
        return ch_err_set(&req->err, CH_INVALID_VALUE, "key", "fact keys must be 1 to %d bytes",
                          MAX_FACT_KEY);
    json_t *probe = json_stringn(req->key, n);
    if (probe == NULL)
        return ch_err_set(&req->err, CH_INVALID_VALUE, "key", "fact keys must be valid UTF-8");
    json_decref(probe);
    return CH_OK;
}

static ch_status fact_put_prepare(ch_db *db, ch_req *req)
{
    ch_err *e = &req->err;
    fact_prep *f;
    size_t len;

    if (check_fact_key(req) != CH_OK)
        return e->status;
    if (req->body == NULL)
        return ch_err_set(e, CH_BAD_REQUEST, NULL, "a JSON object body is required");
    if (ch__fields_known(req->body, "", fact_fields, e) != CH_OK)
        return e->status;
    json_t *value = json_object_get(req->body, "value");
    if (value == NULL)
        return ch_err_set(e, CH_MISSING_FIELD, "value", "'value' is required");
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    req->priv->prep = f;
    req->priv->prep_free = fact_prep_free;
    f->value = ch_json_canonical(value, &len);
    if (f->value == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    if (len > MAX_FACT_VALUE)
        return ch_err_set(e, CH_INVALID_VALUE, "value", "fact values are at most %d bytes",
                          MAX_FACT_VALUE);
    return CH_OK;
}

static ch_status fact_put_exec(ch_db *db, ch_store *w, ch_req *req)
{
    fact_prep *f = req->priv->prep;
    ch_session_rec s = {0};
    int64_t now = ch_now_ms();
    ch_status st = load(w, req, &s);
    char at[32];

    if (st != CH_OK)
        goto out;
    if (s.state == CH_SESSION_ARCHIVED) {
        st = not_in_state(req, &s, "write facts of");
        goto out;
    }
    st = w->methods->fact_put(w, s.sid, req->key, f->value, now);
    if (st == CH_OK) {
        s.updated_at = now;
        st = w->methods->session_update(w, &s);
    }
    if (st != CH_OK) {
        ch_err_set(&req->err, st, NULL, "cannot store the fact");
        goto out;
    }
    ch_time_format(now, at);
    req->result = json_pack("{s:s, s:O, s:s}", "key", req->key, "value",
                            json_object_get(req->body, "value"), "updated_at", at);
out:
    ch_session_rec_clear(&s);
    return st;
}

ch_status ch__session_put_facts(ch_store *w, const char *tenant, const char *id,
                                const json_t *facts, int64_t now, ch_err *e)
{
    ch_session_rec s = {0};
    const char *key;
    json_t *value;
    ch_status st = w->methods->session_get(w, tenant, id, &s);

    if (st == CH_NOT_FOUND) {
        ch_err_set(e, CH_INVALID_VALUE, "session", "session %s not found", id);
        goto out;
    }
    if (st != CH_OK) {
        ch_err_set(e, st, NULL, "cannot read the session");
        goto out;
    }
    if (s.state == CH_SESSION_ARCHIVED) {
        st =
            ch_err_set(e, CH_INVALID_STATE, "session", "cannot write facts of a session that is %s",
                       ch_session_state_name(s.state));
        ch__err_state(e, s.state);
        goto out;
    }
    json_object_foreach((json_t *)facts, key, value)
    {
        size_t len;
        char *text = ch_json_canonical(value, &len);
        if (text == NULL) {
            st = ch_err_set(e, CH_NOMEM, NULL, NULL);
            goto out;
        }
        if (strlen(key) > MAX_FACT_KEY || len > MAX_FACT_VALUE) {
            free(text);
            st = ch_err_set(e, CH_INVALID_VALUE, "keys", "'%.64s' does not fit in a fact", key);
            goto out;
        }
        st = w->methods->fact_put(w, s.sid, key, text, now);
        free(text);
        if (st != CH_OK) {
            ch_err_set(e, st, NULL, "cannot store the fact");
            goto out;
        }
    }
    s.updated_at = now;
    st = w->methods->session_update(w, &s);
    if (st != CH_OK)
        ch_err_set(e, st, NULL, "cannot update the session");
out:
    ch_session_rec_clear(&s);
    return st;
}

static ch_status fact_delete_prepare(ch_db *db, ch_req *req)
{
    return check_fact_key(req);
}

static ch_status fact_delete_exec(ch_db *db, ch_store *w, ch_req *req)
{
    ch_session_rec s = {0};
    int64_t now = ch_now_ms();
    ch_status st = load(w, req, &s);

    if (st != CH_OK)
        goto out;
    if (s.state == CH_SESSION_ARCHIVED) {
        st = not_in_state(req, &s, "delete facts of");
        goto out;
    }
    st = w->methods->fact_delete(w, s.sid, req->key);
    if (st == CH_NOT_FOUND) {
        ch_err_set(&req->err, st, "key", "fact not found");
        goto out;
    }
    if (st == CH_OK) {
        s.updated_at = now;
        st = w->methods->session_update(w, &s);
    }
    if (st != CH_OK) {
        ch_err_set(&req->err, st, NULL, "cannot delete the fact");
        goto out;
    }
    req->result = json_pack("{s:s, s:b}", "key", req->key, "deleted", 1);
out:
    ch_session_rec_clear(&s);
    return st;
}

/* ---- retention ------------------------------------------------------------------- */

#define SWEEP_LIMIT 256

typedef struct due_list {
    ch_session_rec *recs;
    int n;
} due_list;

static int collect_due(void *arg, const ch_session_rec *s)
{
    due_list *d = arg;
    ch_session_rec *r = &d->recs[d->n++];
    *r = *s;
    r->labels = s->labels ? strdup(s->labels) : NULL;
    r->budget = s->budget ? strdup(s->budget) : NULL;
    return d->n == SWEEP_LIMIT;
}

/* One retention pass: closes idle open/active sessions, archives old closed ones,
 * deletes old archived ones; at most SWEEP_LIMIT sessions, "more" says if it stopped
 * at that limit. Each session's move is a lifecycle event with reason "retention". */
static ch_status retention_exec(ch_db *db, ch_store *w, ch_req *req)
{
    const ch_retention *rp = &ch__db_config(db)->retention;
    static const struct {
        ch_session_state from;
        ch_session_state to; /* CH__SESSION_STATE_COUNT: delete */
    } steps[] = {{CH_SESSION_OPEN, CH_SESSION_CLOSED},
                 {CH_SESSION_ACTIVE, CH_SESSION_CLOSED},
                 {CH_SESSION_CLOSED, CH_SESSION_ARCHIVED},
                 {CH_SESSION_ARCHIVED, CH__SESSION_STATE_COUNT}};
    int64_t counts[3] = {0, 0, 0}; /* closed, archived, deleted */
    int64_t now = ch_now_ms();
    ch_status st = CH_OK;
    due_list d = {calloc(SWEEP_LIMIT, sizeof(ch_session_rec)), 0};

    if (d.recs == NULL)
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]) && st == CH_OK; i++) {
        int64_t period = steps[i].from == CH_SESSION_CLOSED     ? rp->archive_closed_after
                         : steps[i].from == CH_SESSION_ARCHIVED ? rp->delete_archived_after
                                                                : rp->close_idle_after;
        if (period <= 0 || d.n == SWEEP_LIMIT)
            continue;
        int start = d.n;
        st = w->methods->session_due(w, steps[i].from, now - period, SWEEP_LIMIT - d.n, collect_due,
                                     &d);
        for (int j = start; j < d.n && st == CH_OK; j++) {
            if (steps[i].to == CH__SESSION_STATE_COUNT) {
                st = w->methods->session_delete(w, d.recs[j].sid);
                if (st == CH_OK)
                    st = ch__stream_emit(
                        db, w, d.recs[j].tenant, "session.deleted",
                        json_pack("{s:s, s:n, s:s, s:o, s:s}", "session", d.recs[j].id, "state",
                                  "from", "archived", "mandate",
                                  d.recs[j].mandate[0] ? json_string(d.recs[j].mandate)
                                                       : json_null(),
                                  "reason", "retention"),
                        now);
                counts[2]++;
            } else {
                st = move(db, w, &d.recs[j], steps[i].to, "retention", NULL, now);
                counts[steps[i].to == CH_SESSION_CLOSED ? 0 : 1]++;
            }
        }
    }
    /* The event stream keeps events.retention of history. */
    int64_t keep = ch__db_config(db)->events_retention;
    if (st == CH_OK && keep > 0)
        st = w->methods->stream_trim(w, now - keep);
    bool more = d.n == SWEEP_LIMIT;
    for (int j = 0; j < d.n; j++)
        ch_session_rec_clear(&d.recs[j]);
    free(d.recs);
    if (st != CH_OK)
        return ch_err_set(&req->err, st, NULL, "retention pass failed");
    if (counts[0] + counts[1] + counts[2] > 0)
        ch_log(CH_LOG_INFO, "retention", "{s:I, s:I, s:I}", "closed", (json_int_t)counts[0],
               "archived", (json_int_t)counts[1], "deleted", (json_int_t)counts[2]);
    req->result = json_pack("{s:b, s:I, s:I, s:I}", "more", more, "closed", (json_int_t)counts[0],
                            "archived", (json_int_t)counts[1], "deleted", (json_int_t)counts[2]);
    return CH_OK;
}

/* ---- the table ------------------------------------------------------------------- */

static const ch__op_def create_op = {.prepare = create_prepare, .exec = create_exec};
static const ch__op_def append_op = {.prepare = append_prepare, .exec = append_exec};
static const ch__op_def transition_op = {.prepare = transition_prepare, .exec = transition_exec};
static const ch__op_def compact_op = {.prepare = compact_prepare, .exec = compact_exec};
static const ch__op_def fact_put_op = {.prepare = fact_put_prepare, .exec = fact_put_exec};
static const ch__op_def fact_delete_op = {.prepare = fact_delete_prepare, .exec = fact_delete_exec};
static const ch__op_def retention_op = {.exec = retention_exec};

const ch__op_def *const ch__session_ops[CH__OP_COUNT] = {
    [CH_OP_SESSION_CREATE] = &create_op,    [CH_OP_SESSION_APPEND] = &append_op,
    [CH_OP_SESSION_PAUSE] = &transition_op, [CH_OP_SESSION_RESUME] = &transition_op,
    [CH_OP_SESSION_CLOSE] = &transition_op, [CH_OP_SESSION_ARCHIVE] = &transition_op,
    [CH_OP_SESSION_COMPACT] = &compact_op,  [CH_OP_FACT_PUT] = &fact_put_op,
    [CH_OP_FACT_DELETE] = &fact_delete_op,  [CH_OP_RETENTION_SWEEP] = &retention_op,
};
