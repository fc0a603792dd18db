/*
 * server.h — the HTTP adapter: per-thread event loops (serve.c), routing and handlers
 * (http.c), and request metrics (metrics.c). All behaviour lives in libcharter; this
 * layer only turns HTTP into library calls and results into JSON replies.
 */
#ifndef CHARTER_SERVER_H
#define CHARTER_SERVER_H

#define H2O_USE_LIBUV 0
#include <h2o.h>

#include "charter.h"

/* Routes, for dispatch and metrics labels. */
#define CH_ROUTE_MAP(XX)                                                                           \
    XX(HEALTHZ, "GET /healthz")                                                                    \
    XX(METRICS, "GET /metrics")                                                                    \
    XX(SESSION_CREATE, "POST /v1/sessions")                                                        \
    XX(SESSION_LIST, "GET /v1/sessions")                                                           \
    XX(SESSION_GET, "GET /v1/sessions/{id}")                                                       \
    XX(EVENTS_APPEND, "POST /v1/sessions/{id}/events")                                             \
    XX(EVENTS_LIST, "GET /v1/sessions/{id}/events")                                                \
    XX(FACTS_LIST, "GET /v1/sessions/{id}/facts")                                                  \
    XX(FACT_GET, "GET /v1/sessions/{id}/facts/{key}")                                              \
    XX(FACT_PUT, "PUT /v1/sessions/{id}/facts/{key}")                                              \
    XX(FACT_DELETE, "DELETE /v1/sessions/{id}/facts/{key}")                                        \
    XX(SESSION_PAUSE, "POST /v1/sessions/{id}/pause")                                              \
    XX(SESSION_RESUME, "POST /v1/sessions/{id}/resume")                                            \
    XX(SESSION_CLOSE, "POST /v1/sessions/{id}/close")                                              \
    XX(SESSION_ARCHIVE, "POST /v1/sessions/{id}/archive")                                          \
    XX(SESSION_COMPACT, "POST /v1/sessions/{id}/compact")                                          \
    XX(BUNDLE, "GET /v1/sessions/{id}/bundle")                                                     \
    XX(MANDATE_CREATE, "POST /v1/mandates")                                                        \
    XX(MANDATE_GET, "GET /v1/mandates/{id}")                                                       \
    XX(MANDATE_PATCH, "PATCH /v1/mandates/{id}")                                                   \
    XX(MANDATE_TREE, "GET /v1/mandates/{id}/tree")                                                 \
    XX(MANDATE_APPROVE, "POST /v1/mandates/{id}/approve")                                          \
    XX(MANDATE_DELEGATE, "POST /v1/mandates/{id}/delegate")                                        \
    XX(MANDATE_SUSPEND, "POST /v1/mandates/{id}/suspend")                                          \
    XX(MANDATE_REINSTATE, "POST /v1/mandates/{id}/reinstate")                                      \
    XX(MANDATE_REVOKE, "POST /v1/mandates/{id}/revoke")                                            \
    XX(MANDATE_COMPLETE, "POST /v1/mandates/{id}/complete")                                        \
    XX(MANDATE_ARTIFACT, "POST /v1/mandates/{id}/artifact")                                        \
    XX(CHECK, "POST /v1/check")                                                                    \
    XX(SIGNING_KEY, "GET /v1/keys/signing")                                                        \
    XX(AUDIT, "GET /v1/audit")                                                                     \
    XX(EVENT_STREAM, "GET /v1/events")                                                             \
    XX(SCOPE_CREATE, "POST /v1/ephemeral")                                                         \
    XX(SCOPE_GET, "GET /v1/ephemeral/{id}")                                                        \
    XX(SCOPE_PATCH, "PATCH /v1/ephemeral/{id}")                                                    \
    XX(SCOPE_DELETE, "DELETE /v1/ephemeral/{id}")                                                  \
    XX(SCOPE_KEY_GET, "GET /v1/ephemeral/{id}/context/{key}")                                      \
    XX(SCOPE_KEY_PUT, "PUT /v1/ephemeral/{id}/context/{key}")                                      \
    XX(SCOPE_LOCK, "POST /v1/ephemeral/{id}/lock")                                                 \
    XX(SCOPE_UNLOCK, "POST /v1/ephemeral/{id}/unlock")                                             \
    XX(SCOPE_EXTEND, "POST /v1/ephemeral/{id}/extend")                                             \
    XX(SCOPE_UPGRADE, "POST /v1/ephemeral/{id}/upgrade")                                           \
    XX(SCOPE_COMPLETE, "POST /v1/ephemeral/{id}/complete")                                         \
    XX(AGENT_PURGE, "DELETE /v1/agents/{agent}/ephemeral")                                         \
    XX(OTHER, "other")

typedef enum ch_route {
#define CH__ROUTE_ENUM(name, label) CH_ROUTE_##name,
    CH_ROUTE_MAP(CH__ROUTE_ENUM)
#undef CH__ROUTE_ENUM
        CH__ROUTE_COUNT
} ch_route;

/* One event loop thread. */
typedef struct ch_server_thread {
    int index;
    pthread_t tid;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listener;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t completions; /* writer → this loop */
    int shutdown_started;                   /* atomic: set by the loop once it saw `stopping` */
    /* Event stream subscribers on this loop, and their wake-up from the syncer. */
    struct ch__sse_sub *sse_subs;
    h2o_multithread_receiver_t sse_wake;
    h2o_multithread_message_t sse_msg;
    int sse_wake_pending; /* atomic: sse_msg is queued */
    int sse_ready;        /* atomic: sse_wake is registered */
} ch_server_thread;

/* What every handler needs; one per process. */
typedef struct ch_server {
    ch_config cfg;
    ch_db *db;
    h2o_globalconf_t h2o;
    int listen_fd;
    int nthreads;
    ch_server_thread *threads;
    int stopping;     /* atomic: a stop signal was seen; refuse new work, drain */
    int exiting;      /* atomic: drained; the loops return */
    int64_t inflight; /* requests waiting on the writer (atomic) */
} ch_server;

extern ch_server ch__server;

/* Registers the request handler on the h2o configuration. */
void ch__http_register(h2o_globalconf_t *conf);
/* Delivers writer completions to the loop that owns them (receiver callback). */
void ch__http_on_completions(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages);

/* The event stream (sse.c). ch__sse_open answers req with a stream of tenant's events
 * after `after`. ch__sse_setup registers the loop's wake-up; ch__sse_tick runs on each
 * turn of the loop (keep-alives; ends every stream once the server stops);
 * ch__sse_notify is the db's stream listener. */
void ch__sse_open(h2o_req_t *req, const char *tenant, int64_t after);
void ch__sse_setup(ch_server_thread *t);
void ch__sse_tick(ch_server_thread *t);
void ch__sse_notify(void *arg, int64_t last_id);

/* Request metrics. */
const char *ch__route_label(ch_route route);
void ch__metrics_observe(ch_route route, int status, uint64_t elapsed_ns);
void ch__metrics_render(ch_buf *out);

/* Sets the loop thread the calling thread runs (write completions go back to it). */
void ch__http_set_thread(ch_server_thread *t);

/* Entry point of `charter serve`. */
int ch__serve_main(int argc, char **argv);

#endif /* CHARTER_SERVER_H */
