/*
 * stream.c — the event stream: mandate and session lifecycle events, written in the
 * same transaction as the change they describe, so their ids follow commit order and
 * a subscriber that resumes after id N misses nothing. Subscribers (the server's SSE
 * route) are told when new entries are durable (ch_db_on_stream) and read them here;
 * an entry is listed only once it is durable.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

ch_status ch__stream_emit_text(ch_db *db, ch_store *w, const char *tenant, const char *type,
                               const char *data, int64_t now)
{
    int64_t id = 0;
    ch_status rc = ch__db_store(db)->stream_append(w, tenant, type, now, data, &id);
    if (rc == CH_OK)
        ch__db_stream_wrote(db, id);
    return rc;
}

ch_status ch__stream_emit(ch_db *db, ch_store *w, const char *tenant, const char *type,
                          json_t *data, int64_t now)
{
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (text == NULL)
        return CH_NOMEM;
    ch_status rc = ch__stream_emit_text(db, w, tenant, type, text, now);
    free(text);
    return rc;
}

typedef struct list_ctx {
    json_t *events;
    int64_t last;
    int64_t durable; /* the last durable id when the read began */
    bool nomem;
} list_ctx;

static int add_event(void *arg, const ch_stream_row *r)
{
    list_ctx *c = arg;
    char at[32];
    if (r->id > c->durable)
        return 1; /* committed, not yet fsynced: not shown until it is */
    json_t *ev = json_loadb(r->data, r->data_len, 0, NULL);
    if (!json_is_object(ev)) {
        json_decref(ev);
        ev = json_object();
    }
    ch_time_format(r->at, at);
    if (ev == NULL || json_object_set_new(ev, "id", json_integer(r->id)) != 0 ||
        json_object_set_new(ev, "type", json_string(r->type)) != 0 ||
        json_object_set_new(ev, "at", json_string(at)) != 0 ||
        json_array_append_new(c->events, ev) != 0) {
        c->nomem = true;
        return 1;
    }
    c->last = r->id;
    return 0;
}

ch_status ch_stream_list(ch_db *db, const char *tenant, int64_t after, int limit, json_t **out,
                         ch_err *e)
{
    if (limit < 1 || limit > 1000)
        return ch_err_set(e, CH_BAD_REQUEST, "limit", "limit must be 1..1000");
    if (after < 0)
        return ch_err_set(e, CH_BAD_REQUEST, "after", "after must be >= 0");
    ch_store *r = ch__reader_get(db, e);
    if (r == NULL)
        return e ? e->status : CH_IO;
    /* Only durable events are listed: an id a reader has seen must exist after any
     * crash, or a resume with Last-Event-ID could skip the event that reused it. */
    list_ctx c = {json_array(), after, ch_stream_last(db), false};
    ch_status rc = c.events ? ch__db_store(db)->stream_list(r, tenant, after, limit, add_event, &c)
                            : CH_NOMEM;
    ch__reader_put(db, r);
    if (rc == CH_OK && c.nomem)
        rc = CH_NOMEM;
    if (rc != CH_OK) {
        json_decref(c.events);
        return ch_err_set(e, rc, NULL, NULL);
    }
    *out = json_pack("{s:o, s:I}", "events", c.events, "last_id", (json_int_t)c.last);
    return *out ? CH_OK : ch_err_set(e, CH_NOMEM, NULL, NULL);
}
