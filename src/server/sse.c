/*
 * sse.c — GET /v1/events: the tenant's mandate and session lifecycle events as
 * Server-Sent Events.
 *
 * Each subscriber lives on the loop thread that accepted it. When new events become
 * durable, the syncer wakes every loop (one queued message per loop at most); the loop
 * then has each idle subscriber read what follows its last id from the store and send
 * it. A subscriber has at most one write in flight: h2o calls `proceed` when it is
 * done, and the subscriber then reads on. Only durable events are ever sent, so an id
 * a client has seen always exists after a crash and Last-Event-ID resumes exactly.
 */
#include <stdlib.h>
#include <string.h>

#include "server.h"

#define KEEPALIVE_MS 10000
#define BATCH 256

typedef struct ch__sse_sub sse_sub;
struct ch__sse_sub {
    h2o_generator_t gen; /* must be first: h2o hands it back */
    h2o_req_t *req;
    ch_server_thread *t;
    sse_sub *prev, *next;
    char tenant[CH_TENANT_MAX];
    int64_t last;    /* id of the last event sent */
    bool busy;       /* a write is in flight */
    bool ending;     /* the server is stopping: finish after this write */
    int64_t written; /* ms of the last write (keep-alives) */
    ch_buf out;      /* what is being sent; valid until proceed */
};

static void unlink_sub(sse_sub *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        s->t->sse_subs = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
}

static void free_sub(sse_sub *s)
{
    unlink_sub(s);
    ch_buf_free(&s->out);
    free(s);
}

static void send_out(sse_sub *s, h2o_send_state_t state)
{
    h2o_iovec_t buf = h2o_iovec_init(s->out.data, s->out.len);
    s->written = ch_now_ms();
    if (state == H2O_SEND_STATE_FINAL) {
        h2o_req_t *req = s->req;
        /* The request may be disposed inside h2o_send: forget it first. */
        free_sub(s);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
        return;
    }
    s->busy = true;
    h2o_send(s->req, &buf, 1, state);
}

/* Reads the events after s->last and sends them; nothing when there are none. */
static void pump(sse_sub *s)
{
    json_t *page = NULL;
    ch_err e;
    if (s->busy)
        return;
    if (s->ending) {
        send_out(s, H2O_SEND_STATE_FINAL);
        return;
    }
    s->out.len = 0;
    ch_err_clear(&e);
    if (ch_stream_list(ch__server.db, s->tenant, s->last, BATCH, &page, &e) != CH_OK) {
        ch_log(CH_LOG_WARN, "event stream read failed", "{s:s}", "error", e.message);
        return;
    }
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(page, "events"), i, ev)
    {
        char *data = json_dumps(ev, JSON_COMPACT);
        if (data == NULL)
            break;
        json_int_t id = json_integer_value(json_object_get(ev, "id"));
        ch_buf_printf(&s->out, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)id,
                      json_string_value(json_object_get(ev, "type")), data);
        free(data);
        s->last = id;
    }
    json_decref(page);
    if (s->out.len > 0)
        send_out(s, H2O_SEND_STATE_IN_PROGRESS);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    sse_sub *s = (sse_sub *)gen;
    s->busy = false;
    pump(s);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    /* The client went away (or the connection was closed): req is being disposed. */
    free_sub((sse_sub *)gen);
}

void ch__sse_open(h2o_req_t *req, const char *tenant, int64_t after)
{
    ch_server_thread *t = NULL;
    for (int i = 0; i < ch__server.nthreads; i++) {
        if (&ch__server.threads[i].ctx == req->conn->ctx)
            t = &ch__server.threads[i];
    }
    sse_sub *s = t ? calloc(1, sizeof(*s)) : NULL;
    if (s == NULL) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        req->res.status = 500;
        req->res.reason = "Internal Server Error";
        h2o_send_inline(req, oom, sizeof(oom) - 1);
        return;
    }
    s->gen.proceed = on_proceed;
    s->gen.stop = on_stop;
    s->req = req;
    s->t = t;
    s->last = after;
    snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
    s->next = t->sse_subs;
    if (s->next != NULL)
        s->next->prev = s;
    t->sse_subs = s;

    req->res.status = 200;
    req->res.reason = "OK";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("text/event-stream"));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                   H2O_STRLIT("no-cache"));
    h2o_start_response(req, &s->gen);
    /* The first write opens the stream at once (headers and a comment); what is
     * already there follows when it completes. */
    ch_buf_printf(&s->out, ": charter event stream\nretry: 1000\n\n");
    send_out(s, H2O_SEND_STATE_IN_PROGRESS);
}

static void on_wake(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
    ch_server_thread *t = H2O_STRUCT_FROM_MEMBER(ch_server_thread, sse_wake, rx);
    while (!h2o_linklist_is_empty(messages))
        h2o_linklist_unlink(messages->next);
    /* Cleared before reading, so an event made durable from now on wakes us again. */
    __atomic_store_n(&t->sse_wake_pending, 0, __ATOMIC_SEQ_CST);
    for (sse_sub *s = t->sse_subs, *next; s != NULL; s = next) {
        next = s->next; /* pump may end and free s */
        pump(s);
    }
}

void ch__sse_setup(ch_server_thread *t)
{
    h2o_multithread_register_receiver(t->queue, &t->sse_wake, on_wake);
    __atomic_store_n(&t->sse_ready, 1, __ATOMIC_RELEASE);
}

void ch__sse_notify(void *arg, int64_t last_id)
{
    (void)arg;
    (void)last_id;
    for (int i = 0; i < ch__server.nthreads; i++) {
        ch_server_thread *t = &ch__server.threads[i];
        if (!__atomic_load_n(&t->sse_ready, __ATOMIC_ACQUIRE) ||
            __atomic_exchange_n(&t->sse_wake_pending, 1, __ATOMIC_SEQ_CST))
            continue;
        memset(&t->sse_msg, 0, sizeof(t->sse_msg));
        h2o_multithread_send_message(&t->sse_wake, &t->sse_msg);
    }
}

void ch__sse_tick(ch_server_thread *t)
{
    static const char ka[] = ": keep-alive\n\n";
    bool stopping = __atomic_load_n(&ch__server.stopping, __ATOMIC_ACQUIRE);
    int64_t now = ch_now_ms();
    for (sse_sub *s = t->sse_subs, *next; s != NULL; s = next) {
        next = s->next;
        if (stopping)
            s->ending = true;
        if (s->busy)
            continue;
        if (s->ending) {
            send_out(s, H2O_SEND_STATE_FINAL);
        } else if (now - s->written >= KEEPALIVE_MS) {
            s->out.len = 0;
            ch_buf_append(&s->out, ka, sizeof(ka) - 1);
            send_out(s, H2O_SEND_STATE_IN_PROGRESS);
        }
    }
}
