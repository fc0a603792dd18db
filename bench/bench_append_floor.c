/*
 * bench_append_floor.c — the floor under charter's durable single appends: the same
 * HTTP front end and the same group-commit pipeline, with nothing in between.
 *
 * bench/run.sh drives this server with exactly the wrk load it sends to charter
 * (bench/wrk_append.lua: 64 connections, one event per POST), so the two figures
 * differ only by what charter does with a request that this program does not:
 * authenticate it, parse and validate the JSON, read and update the session in SQLite,
 * store the event, and count usage.
 *
 * Like `charter serve`, it runs N h2o evloop threads on one shared listening socket,
 * reads each POST body whole and answers 201 with {"first_seq":N,"last_seq":N}; any
 * other method gets 200 {"status":"ok"}, for readiness probes. Two modes:
 *
 *   reply   answers at once: the HTTP ceiling for this load (no storage at all).
 *   fsync   hands each body to one syncer thread, which appends every body queued
 *           meanwhile to a preallocated log file with one pwritev, fdatasyncs it, and passes the
 *           batch back to the loops through an h2o multithread queue; a reply is sent
 *           only after its body is on disk. That is charter's durability contract
 *           (group commit, acknowledged after the fsync, the loop never waits) at its
 *           cheapest: one sequential file, no index, no JSON, no database.
 *
 * Usage: bench_append_floor -m reply|fsync -l PORT [-t THREADS] [-f LOG_FILE]
 * It runs until SIGTERM or SIGINT and then prints one line for bench/run.sh:
 *
 *     FLOOR mode=M requests=N syncs=S bytes=B
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <h2o.h>

#define MAX_THREADS 16
#define MAX_IOV 1024 /* bodies per writev; a larger batch takes several */
/* The log is preallocated and written in a ring, like a WAL that is rewound: an
 * fdatasync then never has a file size to commit, only the data. */
#define LOG_BYTES (64 << 20)

typedef struct loop_thread {
    pthread_t tid;
    h2o_evloop_t *loop;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t done;
    h2o_socket_t *listener;
} loop_thread;

/* One POST waiting for its fsync. */
typedef struct pending {
    struct pending *next;
    h2o_req_t *req; /* NULL once the client is gone */
    struct pending **token;
    loop_thread *thread;
    h2o_multithread_message_t msg;
    char *body;
    size_t len;
    long long seq;
} pending;

static struct {
    bool durable;
    int listen_fd, log_fd, nthreads;
    h2o_globalconf_t conf;
    loop_thread threads[MAX_THREADS];
    atomic_bool stopping;
    atomic_llong requests, seq;
    atomic_llong syncs, bytes;
    off_t log_at; /* syncer only: where the next writev goes */
    /* the syncer's queue */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pending *head, *tail;
    bool syncer_stop;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static __thread loop_thread *current;

static void reply(h2o_req_t *req, long long seq)
{
    char *body = h2o_mem_alloc_pool(&req->pool, 64);
    int len = snprintf(body, 64, "{\"first_seq\":%lld,\"last_seq\":%lld}", seq, seq);
    req->res.status = 201;
    req->res.reason = "Created";
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    req->res.content_length = (size_t)len;
    h2o_send_inline(req, body, (size_t)len);
    atomic_fetch_add(&g.requests, 1);
}

static void on_req_dispose(void *p)
{
    pending **token = p;
    if (*token != NULL)
        (*token)->req = NULL;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    (void)self;
    if (!h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
        /* Any other method is a liveness probe (bench/run.sh waits on GET /healthz). */
        static const char ok[] = "{\"status\":\"ok\"}";
        req->res.status = 200;
        req->res.reason = "OK";
        req->res.content_length = sizeof(ok) - 1;
        h2o_send_inline(req, ok, sizeof(ok) - 1);
        return 0;
    }
    long long seq = atomic_fetch_add(&g.seq, 1) + 1;
    if (!g.durable) {
        reply(req, seq);
        return 0;
    }
    pending *p = calloc(1, sizeof(*p));
    if (p == NULL || (p->body = malloc(req->entity.len + 1)) == NULL) {
        free(p);
        h2o_send_error_503(req, "Service Unavailable", "out of memory", 0);
        return 0;
    }
    memcpy(p->body, req->entity.base, req->entity.len);
    p->body[req->entity.len] = '\n';
    p->len = req->entity.len + 1;
    p->seq = seq;
    p->req = req;
    p->thread = current;
    p->token = h2o_mem_alloc_shared(&req->pool, sizeof(*p->token), on_req_dispose);
    *p->token = p;
    pthread_mutex_lock(&g.mu);
    if (g.tail != NULL)
        g.tail->next = p;
    else
        g.head = p;
    g.tail = p;
    pthread_cond_signal(&g.cv);
    pthread_mutex_unlock(&g.mu);
    return 0;
}

/* Loop thread: bodies that are on disk; answer those whose client is still there. */
static void on_durable(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *msg =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&msg->link);
        pending *p = H2O_STRUCT_FROM_MEMBER(pending, msg, msg);
        if (p->req != NULL) {
            *p->token = NULL;
            reply(p->req, p->seq);
        }
        free(p->body);
        free(p);
    }
}

static int write_all(pending *list)
{
    struct iovec iov[MAX_IOV];
    while (list != NULL) {
        int n = 0;
        for (; list != NULL && n < MAX_IOV; list = list->next, n++)
            iov[n] = (struct iovec){.iov_base = list->body, .iov_len = list->len};
        for (int i = 0; i < n;) {
            if (g.log_at > LOG_BYTES - (1 << 20))
                g.log_at = 0;
            ssize_t w = pwritev(g.log_fd, iov + i, n - i, g.log_at);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return -1;
            g.log_at += w;
            atomic_fetch_add(&g.bytes, w);
            while (i < n && (size_t)w >= iov[i].iov_len)
                w -= (ssize_t)iov[i++].iov_len;
            if (i < n) {
                iov[i].iov_base = (char *)iov[i].iov_base + w;
                iov[i].iov_len -= (size_t)w;
            }
        }
    }
    return 0;
}

static void *syncer_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&g.mu);
        while (g.head == NULL && !g.syncer_stop)
            pthread_cond_wait(&g.cv, &g.mu);
        pending *list = g.head;
        g.head = g.tail = NULL;
        pthread_mutex_unlock(&g.mu);
        if (list == NULL)
            return NULL;
        if (write_all(list) != 0 || fdatasync(g.log_fd) != 0) {
            perror("bench_append_floor: log write");
            exit(1);
        }
        atomic_fetch_add(&g.syncs, 1);
        for (pending *p = list, *next; p != NULL; p = next) {
            next = p->next;
            h2o_multithread_send_message(&p->thread->done, &p->msg);
        }
    }
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    loop_thread *t = listener->data;
    if (err != NULL)
        return;
    for (int i = 0; i < 16; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            break;
        h2o_accept(&t->accept_ctx, sock);
    }
}

static void *loop_main(void *arg)
{
    loop_thread *t = arg;
    current = t;
    t->loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, t->loop, &g.conf);
    t->accept_ctx.ctx = &t->ctx;
    t->accept_ctx.hosts = g.conf.hosts;
    t->queue = h2o_multithread_create_queue(t->loop);
    h2o_multithread_register_receiver(t->queue, &t->done, on_durable);
    int fd = t == &g.threads[0] ? g.listen_fd : dup(g.listen_fd);
    t->listener = h2o_evloop_socket_create(t->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    t->listener->data = t;
    h2o_socket_read_start(t->listener, on_accept);
    while (!atomic_load(&g.stopping))
        h2o_evloop_run(t->loop, 50);
    return NULL;
}

static int listen_on(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4096) != 0) {
        perror("bench_append_floor: listen");
        exit(1);
    }
    return fd;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_append_floor -m reply|fsync -l PORT [-t THREADS] [-f LOG_FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *mode = NULL, *log_path = NULL;
    int port = 0, c;
    g.nthreads = 2;
    while ((c = getopt(argc, argv, "m:l:t:f:")) != -1) {
        switch (c) {
        case 'm':
            mode = optarg;
            break;
        case 'l':
            port = atoi(optarg);
            break;
        case 't':
            g.nthreads = atoi(optarg);
            break;
        case 'f':
            log_path = optarg;
            break;
        default:
            usage();
        }
    }
    if (mode == NULL || port <= 0 || port > 65535 || g.nthreads < 1 || g.nthreads > MAX_THREADS)
        usage();
    if (strcmp(mode, "fsync") == 0)
        g.durable = true;
    else if (strcmp(mode, "reply") != 0)
        usage();
    if (g.durable) {
        if (log_path == NULL)
            usage();
        g.log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (g.log_fd < 0 || posix_fallocate(g.log_fd, 0, LOG_BYTES) != 0 || fsync(g.log_fd) != 0) {
            perror(log_path);
            return 1;
        }
    }

    /* SIGTERM and SIGINT are taken by sigwait below, in the main thread only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    h2o_config_init(&g.conf);
    h2o_hostconf_t *host =
        h2o_config_register_host(&g.conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = on_req;
    g.listen_fd = listen_on(port);

    pthread_t syncer;
    if (g.durable && pthread_create(&syncer, NULL, syncer_main, NULL) != 0)
        return 1;
    for (int i = 0; i < g.nthreads; i++)
        if (pthread_create(&g.threads[i].tid, NULL, loop_main, &g.threads[i]) != 0)
            return 1;
    int sig;
    sigwait(&sigs, &sig);

    /* Report first: the loops may hold connections open, and the count is final. */
    printf("FLOOR mode=%s requests=%lld syncs=%lld bytes=%lld\n", mode,
           (long long)atomic_load(&g.requests), (long long)atomic_load(&g.syncs),
           (long long)atomic_load(&g.bytes));
    fflush(stdout);
    atomic_store(&g.stopping, true);
    for (int i = 0; i < g.nthreads; i++)
        pthread_join(g.threads[i].tid, NULL);
    if (g.durable) {
        pthread_mutex_lock(&g.mu);
        g.syncer_stop = true;
        pthread_cond_signal(&g.cv);
        pthread_mutex_unlock(&g.mu);
        pthread_join(syncer, NULL);
    }
    return 0;
}
