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
#define CH_ROUTE_MAP(XX)                                         \
    XX(HEALTHZ, "GET /healthz")                                  \
    XX(METRICS, "GET /metrics")                                  \
    XX(SESSION_CREATE, "POST /v1/sessions")                      \
    XX(SESSION_LIST, "GET /v1/sessions")                         \
    XX(SESSION_GET, "GET /v1/sessions/{id}")                     \
    XX(EVENTS_APPEND, "POST /v1/sessions/{id}/events")           \
    XX(EVENTS_LIST, "GET /v1/sessions/{id}/events")              \
    XX(FACTS_LIST, "GET /v1/sessions/{id}/facts")                \
    XX(FACT_GET, "GET /v1/sessions/{id}/facts/{key}")            \
    XX(FACT_PUT, "PUT /v1/sessions/{id}/facts/{key}")            \
    XX(FACT_DELETE, "DELETE /v1/sessions/{id}/facts/{key}")      \
    XX(SESSION_PAUSE, "POST /v1/sessions/{id}/pause")            \
    XX(SESSION_RESUME, "POST /v1/sessions/{id}/resume")          \
    XX(SESSION_CLOSE, "POST /v1/sessions/{id}/close")            \
    XX(SESSION_ARCHIVE, "POST /v1/sessions/{id}/archive")        \
    XX(SESSION_COMPACT, "POST /v1/sessions/{id}/compact")        \
    XX(BUNDLE, "GET /v1/sessions/{id}/bundle")                   \
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
    int shutdown_started; /* atomic: set by the loop once it saw `stopping` */
} ch_server_thread;

/* What every handler needs; one per process. */
typedef struct ch_server {
    ch_config cfg;
    ch_db *db;
    h2o_globalconf_t h2o;
    int listen_fd;
    int nthreads;
    ch_server_thread *threads;
    int stopping; /* atomic: a stop signal was seen; refuse new work, drain */
    int exiting;  /* atomic: drained; the loops return */
    int64_t inflight;       /* requests waiting on the writer (atomic) */
} ch_server;

extern ch_server ch__server;

/* Registers the request handler on the h2o configuration. */
void ch__http_register(h2o_globalconf_t *conf);
/* Delivers writer completions to the loop that owns them (receiver callback). */
void ch__http_on_completions(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages);

/* Request metrics. */
const char *ch__route_label(ch_route route);
void ch__metrics_observe(ch_route route, int status, uint64_t elapsed_ns);
void ch__metrics_render(ch_buf *out);

/* Sets the loop thread the calling thread runs (write completions go back to it). */
void ch__http_set_thread(ch_server_thread *t);

/* Entry point of `charter serve`. */
int ch__serve_main(int argc, char **argv);

#endif /* CHARTER_SERVER_H */
