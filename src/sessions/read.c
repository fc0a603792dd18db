/*
 * read.c — reads of sessions, events, facts and the resume bundle, and the public
 * JSON of a session. Reads run on the caller's thread over a pooled reader
 * connection; multi-part reads (event pages, the bundle) run in one read transaction
 * so they see one consistent snapshot.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

json_t *ch__session_to_json(const ch_session_rec *s)
{
    char created[32], updated[32];
    json_t *labels = json_loads(s->labels ? s->labels : "{}", 0, NULL);
    json_t *budget = s->budget ? json_loads(s->budget, 0, NULL) : json_null();

    ch_time_format(s->created_at, created);
    ch_time_format(s->updated_at, updated);
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:{s:I, s:f, s:I}, s:s, s:I, s:I, s:s, s:s}",
                     "id", s->id, "user", s->user, "agent", s->agent, "mandate",
                     s->mandate[0] ? json_string(s->mandate) : json_null(), "labels",
                     labels ? labels : json_object(), "budget", budget ? budget : json_null(),
                     "usage", "tokens", (json_int_t)s->usage_tokens, "cost_usd",
                     s->usage_cost_usd, "tool_calls", (json_int_t)s->usage_tool_calls, "state",
                     ch_session_state_name(s->state), "seq", (json_int_t)s->seq, "summary_seq",
                     (json_int_t)s->summary_seq, "created_at", created, "updated_at", updated);
}

/* The read functions accept e == NULL; they then report into a local ch_err. */
#define LOCAL_ERR(e)                                                                       \
    ch_err local_err_;                                                                     \
    if ((e) == NULL)                                                                       \
    (e) = &local_err_

/* Borrows a reader and loads the session (tenant-scoped) into s. */
static ch_store *open_session(ch_db *db, const char *tenant, const char *id, ch_session_rec *s,
                              ch_err *e)
{
    ch_store *r = ch__reader_get(db, e);
    if (r == NULL)
        return NULL;
    if (r->methods->read_begin(r) != CH_OK) {
        ch_err_set(e, CH_IO, NULL, "storage unavailable");
        ch__reader_put(db, r);
        return NULL;
    }
    ch_status st = r->methods->session_get(r, tenant, id, s);
    if (st != CH_OK) {
        if (st == CH_NOT_FOUND)
            ch_err_set(e, st, NULL, "session %s not found", id);
        else
            ch_err_set(e, st, NULL, "cannot read the session");
        r->methods->read_end(r);
        ch__reader_put(db, r);
        return NULL;
    }
    return r;
}

static void close_session(ch_db *db, ch_store *r, ch_session_rec *s)
{
    r->methods->read_end(r);
    ch__reader_put(db, r);
    ch_session_rec_clear(s);
}

ch_status ch_session_get(ch_db *db, const char *tenant, const char *id, json_t **out, ch_err *e)
{
    LOCAL_ERR(e);
    ch_session_rec s = {0};
    ch_store *r = open_session(db, tenant, id, &s, e);
    if (r == NULL)
        return e->status;
    *out = ch__session_to_json(&s);
    close_session(db, r, &s);
    return CH_OK;
}

typedef struct list_acc {
    json_t *arr;
    int limit;
    bool more;
    char last[CH_ID_MAX];
} list_acc;

static int add_session(void *arg, const ch_session_rec *s)
{
    list_acc *a = arg;
    if ((int)json_array_size(a->arr) == a->limit) {
        a->more = true;
        return 1;
    }
    json_array_append_new(a->arr, ch__session_to_json(s));
    snprintf(a->last, sizeof(a->last), "%s", s->id);
    return 0;
}

ch_status ch_session_list(ch_db *db, const char *tenant, const ch_session_query *q, json_t **out,
                          ch_err *e)
{
    LOCAL_ERR(e);
    ch_session_filter f = {q->user, -1, q->mandate, q->cursor, q->limit + 1};
    list_acc a = {json_array(), q->limit, false, ""};
    ch_store *r;
    ch_status st;

    if (q->limit < 1 || q->limit > 1000)
        st = ch_err_set(e, CH_BAD_REQUEST, "limit", "limit must be 1 to 1000");
    else if (q->state != NULL && (f.state = ch_session_state_parse(q->state)) < 0)
        st = ch_err_set(e, CH_BAD_REQUEST, "state", "unknown state '%s'", q->state);
    else if (q->cursor != NULL && !ch_id_valid("sess", q->cursor))
        st = ch_err_set(e, CH_BAD_REQUEST, "cursor", "malformed cursor");
    else
        st = CH_OK;
    if (st != CH_OK)
        goto fail;
    r = ch__reader_get(db, e);
    if (r == NULL) {
        st = e->status;
        goto fail;
    }
    st = r->methods->session_list(r, tenant, &f, add_session, &a);
    ch__reader_put(db, r);
    if (st != CH_OK) {
        ch_err_set(e, st, NULL, "cannot list sessions");
        goto fail;
    }
    *out = json_pack("{s:o, s:o}", "sessions", a.arr, "next_cursor",
                     a.more ? json_string(a.last) : json_null());
    return CH_OK;
fail:
    json_decref(a.arr);
    return st;
}

/* ---- events ---------------------------------------------------------------------- */

typedef struct event_acc {
    json_t *arr;
    int limit;
    bool more;
    int64_t last;
} event_acc;

static json_t *event_to_json(const ch_event_rec *ev)
{
    char at[32];
    json_t *o = json_loadb(ev->body, ev->len, 0, NULL);
    if (o == NULL)
        o = json_object();
    ch_time_format(ev->at, at);
    json_object_set_new(o, "seq", json_integer(ev->seq));
    json_object_set_new(o, "at", json_string(at));
    return o;
}

static int add_event(void *arg, const ch_event_rec *ev)
{
    event_acc *a = arg;
    if ((int)json_array_size(a->arr) == a->limit) {
        a->more = true;
        return 1;
    }
    json_array_append_new(a->arr, event_to_json(ev));
    a->last = ev->seq;
    return 0;
}

static int take_one(void *arg, const ch_event_rec *ev)
{
    *(json_t **)arg = event_to_json(ev);
    return 1;
}

/* Reads up to limit events after `after` into a new {events, next_after} pair. */
static ch_status read_events(ch_store *r, const ch_session_rec *s, int64_t after, int limit,
                             bool archived, json_t **events, json_t **next_after)
{
    event_acc a = {json_array(), limit, false, after};
    ch_status st = r->methods->event_list(r, s->sid, after, limit + 1,
                                          archived ? s->summary_seq : -1, add_event, &a);
    if (st != CH_OK) {
        json_decref(a.arr);
        return st;
    }
    *events = a.arr;
    *next_after = a.more ? json_integer(a.last) : json_null();
    return CH_OK;
}

ch_status ch_events_list(ch_db *db, const char *tenant, const char *id, int64_t after, int limit,
                         bool archived, json_t **out, ch_err *e)
{
    LOCAL_ERR(e);
    ch_session_rec s = {0};
    json_t *events, *next;
    if (limit < 1 || limit > 1000)
        return ch_err_set(e, CH_BAD_REQUEST, "limit", "limit must be 1 to 1000");
    if (after < 0)
        return ch_err_set(e, CH_BAD_REQUEST, "after", "after must be 0 or more");
    ch_store *r = open_session(db, tenant, id, &s, e);
    if (r == NULL)
        return e->status;
    ch_status st = read_events(r, &s, after, limit, archived, &events, &next);
    close_session(db, r, &s);
    if (st != CH_OK)
        return ch_err_set(e, st, NULL, "cannot read events");
    *out = json_pack("{s:o, s:o}", "events", events, "next_after", next);
    return CH_OK;
}

/* ---- facts ----------------------------------------------------------------------- */

static int fact_one(void *arg, const char *key, const char *value, size_t len, int64_t at)
{
    char ts[32];
    ch_time_format(at, ts);
    json_t *v = json_loadb(value, len, JSON_DECODE_ANY, NULL);
    *(json_t **)arg = json_pack("{s:s, s:o, s:s}", "key", key, "value", v ? v : json_null(),
                                "updated_at", ts);
    return 1;
}

static int fact_add(void *arg, const char *key, const char *value, size_t len, int64_t at)
{
    json_t *v = json_loadb(value, len, JSON_DECODE_ANY, NULL);
    json_object_set_new((json_t *)arg, key, v ? v : json_null());
    return 0;
}

ch_status ch_fact_get(ch_db *db, const char *tenant, const char *id, const char *key,
                      json_t **out, ch_err *e)
{
    LOCAL_ERR(e);
    ch_session_rec s = {0};
    json_t *fact = NULL;
    ch_store *r = open_session(db, tenant, id, &s, e);
    if (r == NULL)
        return e->status;
    ch_status st = r->methods->fact_get(r, s.sid, key, fact_one, &fact);
    close_session(db, r, &s);
    if (st == CH_NOT_FOUND)
        return ch_err_set(e, st, "key", "fact not found");
    if (st != CH_OK)
        return ch_err_set(e, st, NULL, "cannot read the fact");
    *out = fact;
    return CH_OK;
}

static ch_status read_facts(ch_store *r, const ch_session_rec *s, json_t **facts)
{
    *facts = json_object();
    ch_status st = r->methods->fact_list(r, s->sid, fact_add, *facts);
    if (st != CH_OK) {
        json_decref(*facts);
        *facts = NULL;
    }
    return st;
}

ch_status ch_facts_list(ch_db *db, const char *tenant, const char *id, json_t **out, ch_err *e)
{
    LOCAL_ERR(e);
    ch_session_rec s = {0};
    json_t *facts;
    ch_store *r = open_session(db, tenant, id, &s, e);
    if (r == NULL)
        return e->status;
    ch_status st = read_facts(r, &s, &facts);
    close_session(db, r, &s);
    if (st != CH_OK)
        return ch_err_set(e, st, NULL, "cannot read facts");
    *out = json_pack("{s:o}", "facts", facts);
    return CH_OK;
}

/* ---- bundle ---------------------------------------------------------------------- */

/* Everything a harness needs to resume, from one snapshot: the session, its facts, the
 * live summary and the live events after it. Every part is an indexed range read, so
 * the cost does not depend on how much history was archived. */
ch_status ch_bundle(ch_db *db, const char *tenant, const char *id, int limit, json_t **out,
                    ch_err *e)
{
    LOCAL_ERR(e);
    ch_session_rec s = {0};
    json_t *facts = NULL, *summary = NULL, *events = NULL, *next = NULL;
    ch_status st;

    if (limit < 1 || limit > 10000)
        return ch_err_set(e, CH_BAD_REQUEST, "limit", "limit must be 1 to 10000");
    ch_store *r = open_session(db, tenant, id, &s, e);
    if (r == NULL)
        return e->status;
    st = read_facts(r, &s, &facts);
    if (st == CH_OK && s.summary_seq > 0)
        st = r->methods->event_list(r, s.sid, s.summary_seq - 1, 1, -1, take_one, &summary);
    if (st == CH_OK)
        st = read_events(r, &s, s.summary_seq, limit, false, &events, &next);
    if (st == CH_OK)
        *out = json_pack("{s:o, s:o, s:o, s:o, s:o}", "session", ch__session_to_json(&s),
                         "facts", facts, "summary", summary ? summary : json_null(), "events",
                         events, "next_after", next);
    close_session(db, r, &s);
    if (st != CH_OK) {
        json_decref(facts);
        json_decref(summary);
        return ch_err_set(e, st, NULL, "cannot read the bundle");
    }
    return CH_OK;
}
