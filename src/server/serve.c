/*
 * serve.c — `charter serve`: configuration, the data dir's bootstrap key, the
 * listening socket, one h2o event loop per thread, and graceful shutdown.
 *
 * All loops share one listening socket (no SO_REUSEPORT, so a second server on the
 * same port fails to bind instead of silently splitting traffic). On SIGTERM or
 * SIGINT the loops stop accepting and answer new requests with 503; the main thread
 * waits until every write already submitted has been committed and answered (up to
 * drain_timeout), then stops the loops and closes the database.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"

ch_server ch__server;

static void usage(FILE *f)
{
    fprintf(f, "usage: charter serve [--config FILE] [--data-dir DIR] [--listen HOST:PORT]\n"
               "                     [--threads N] [--log-level debug|info|warn|error]\n"
               "                     [--print-config]\n"
               "\n"
               "Configuration is applied in order: built-in defaults, the YAML file given\n"
               "by --config, the flags, then CHARTER_* environment variables.\n");
}

/* Creates tenant "default" and writes its key to <data-dir>/bootstrap.key (0600) when
 * the data dir has no key at all (its first start). */
static int bootstrap(ch_db *db, const char *data_dir)
{
    int64_t n = 0;
    char key[CH_KEY_MAX], path[2048];
    ch_err e;

    if (ch_key_count(db, &n) != CH_OK) {
        ch_log(CH_LOG_ERROR, "cannot read keys", NULL);
        return -1;
    }
    if (n > 0)
        return 0;
    snprintf(path, sizeof(path), "%s/bootstrap.key", data_dir);
    if (ch_key_create(db, "default", key, &e) != CH_OK) {
        ch_log(CH_LOG_ERROR, "cannot create the bootstrap key", "{s:s}", "error", e.message);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0 || dprintf(fd, "%s\n", key) < 0 || fsync(fd) != 0) {
        ch_log(CH_LOG_ERROR,
               "cannot write the bootstrap key; create a key with `charter keys create`",
               "{s:s, s:s}", "path", path, "error", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    /* The file's directory entry must be durable too, or a crash could keep the key
     * (in the database) but lose the only copy of its text. */
    int dfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    ch_log(CH_LOG_INFO, "created tenant 'default'", "{s:s}", "key_file", path);
    return 0;
}

/* Holds an exclusive lock on <data-dir>/serve.lock for the life of the process, so a
 * second `charter serve` on the same data dir refuses to start. (Offline commands such
 * as `charter keys create` do not take it: they are meant to run beside a server.) */
static int lock_data_dir(const char *dir)
{
    char path[2048];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        ch_log(CH_LOG_ERROR, "cannot create the data dir", "{s:s, s:s}", "data_dir", dir, "error",
               strerror(errno));
        return -1;
    }
    snprintf(path, sizeof(path), "%s/serve.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ch_log(CH_LOG_ERROR, "the data dir is in use by another charter serve", "{s:s, s:s}",
               "data_dir", dir, "error", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return 0; /* the descriptor stays open, and the lock held, until exit */
}

static int open_listener(const char *listen_addr)
{
    char host[256];
    const char *colon = strrchr(listen_addr, ':');
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int fd = -1, one = 1;

    snprintf(host, sizeof(host), "%.*s", (int)(colon - listen_addr), listen_addr);
    /* "[::1]:7433" → "::1" */
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0) {
        ch_log(CH_LOG_ERROR, "cannot resolve listen address", "{s:s, s:s}", "listen", listen_addr,
               "error", gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        ch_log(CH_LOG_ERROR, "cannot listen", "{s:s, s:s}", "listen", listen_addr, "error",
               strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    ch_server_thread *t = listener->data;
    if (err != NULL)
        return;
    /* Accept a bounded number per wake-up so one loop does not starve the others. */
    for (int i = 0; i < 16; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            break;
        h2o_accept(&t->accept_ctx, sock);
    }
}

/* Builds this thread's loop, context, completion queue and listener handle. This must
 * run on the loop's own thread: h2o sockets take their buffers from per-thread
 * (__thread) allocators of the thread that creates them. */
static void loop_setup(ch_server_thread *t)
{
    ch_server *s = &ch__server;
    t->loop = h2o_evloop_create();
    h2o_context_init(&t->ctx, t->loop, &s->h2o);
    t->accept_ctx.ctx = &t->ctx;
    t->accept_ctx.hosts = s->h2o.hosts;
    t->queue = h2o_multithread_create_queue(t->loop);
    h2o_multithread_register_receiver(t->queue, &t->completions, ch__http_on_completions);
    ch__sse_setup(t);
    /* Each loop watches the shared listening socket through its own descriptor. */
    int fd = t->index == 0 ? s->listen_fd : dup(s->listen_fd);
    t->listener = h2o_evloop_socket_create(t->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    t->listener->data = t;
    h2o_socket_read_start(t->listener, on_accept);
    ch__http_set_thread(t);
}

static void *loop_main(void *arg)
{
    ch_server_thread *t = arg;
    char name[16];
    snprintf(name, sizeof(name), "ch-http-%d", t->index);
    pthread_setname_np(pthread_self(), name);
    loop_setup(t);
    while (!__atomic_load_n(&ch__server.exiting, __ATOMIC_ACQUIRE)) {
        if (__atomic_load_n(&ch__server.stopping, __ATOMIC_ACQUIRE) && !t->shutdown_started) {
            /* Between two runs of the loop no handler is active: any write a handler
             * accepted before it saw `stopping` is already counted in `inflight`. */
            __atomic_store_n(&t->shutdown_started, 1, __ATOMIC_RELEASE);
            h2o_socket_read_stop(t->listener);
            h2o_socket_close(t->listener);
            t->listener = NULL;
            h2o_context_request_shutdown(&t->ctx);
        }
        h2o_evloop_run(t->loop, 50);
        ch__sse_tick(t);
    }
    return NULL;
}

static int start_threads(ch_server *s)
{
    ch_server_thread *threads = calloc((size_t)s->nthreads, sizeof(*s->threads));
    if (threads == NULL)
        return -1;
    __atomic_store_n(&s->threads, threads, __ATOMIC_RELEASE);
    /* From now on, new stream events wake the loops' subscribers. */
    ch_db_on_stream(s->db, ch__sse_notify, NULL);
    for (int i = 0; i < s->nthreads; i++) {
        s->threads[i].index = i;
        if (pthread_create(&s->threads[i].tid, NULL, loop_main, &s->threads[i]) != 0)
            return -1;
    }
    return 0;
}

/* Parses flags into cfg (after the config file, before the environment). */
static int parse_flags(int argc, char **argv, ch_config *cfg, const char **config_file,
                       bool *print_config)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"data-dir", required_argument, NULL, 'd'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"log-level", required_argument, NULL, 'L'},
                                         {"print-config", no_argument, NULL, 'P'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    static const struct {
        int opt;
        const char *key;
    } keys[] = {{'d', "data_dir"}, {'l', "listen"}, {'t', "threads"}, {'L', "log_level"}};
    /* Two passes: the config file comes first whatever the flag order. */
    struct {
        const char *key, *value;
    } set[32];
    int nset = 0, c;
    ch_err e;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            *config_file = optarg;
            break;
        case 'P':
            *print_config = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case '?':
            usage(stderr);
            return 64;
        default:
            for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                if (keys[i].opt == c && nset < 32) {
                    set[nset].key = keys[i].key;
                    set[nset++].value = optarg;
                }
            }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "charter serve: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 64;
    }
    if (*config_file != NULL && ch_config_load_file(cfg, *config_file, &e) != CH_OK) {
        fprintf(stderr, "charter serve: %s\n", e.message);
        return 1;
    }
    for (int i = 0; i < nset; i++) {
        if (ch_config_set(cfg, set[i].key, set[i].value, &e) != CH_OK) {
            fprintf(stderr, "charter serve: %s\n", e.message);
            return 64;
        }
    }
    if (ch_config_load_env(cfg, &e) != CH_OK) {
        fprintf(stderr, "charter serve: %s\n", e.message);
        return 1;
    }
    return 0;
}

int ch__serve_main(int argc, char **argv)
{
    ch_server *s = &ch__server;
    const char *config_file = NULL;
    bool print_config = false;
    sigset_t sigs;
    ch_err e;
    int rc, sig = 0;

    ch_config_defaults(&s->cfg);
    rc = parse_flags(argc, argv, &s->cfg, &config_file, &print_config);
    if (rc != 0)
        return rc;
    if (print_config) {
        json_t *j = ch_config_to_json(&s->cfg);
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        fputc('\n', stdout);
        json_decref(j);
        return 0;
    }
    ch_log_set_level(s->cfg.log_level);
    s->nthreads = s->cfg.threads > 0 ? s->cfg.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (s->nthreads < 1)
        s->nthreads = 1;

    /* Signals are taken synchronously by the main thread only; each of them drains. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Everything charter creates in the data dir is the owner's alone. */
    umask(077);
    /* The process holds secrets (secure scopes, the signing key): unless told
     * otherwise, no core dump is ever written and other processes of the same user
     * cannot attach to read its memory. */
    if (!s->cfg.core_dumps) {
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none);
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    }

    /* Bind first: a port in use must fail before the data dir is touched. */
    s->listen_fd = open_listener(s->cfg.listen);
    if (s->listen_fd < 0)
        return 1;
    if (lock_data_dir(s->cfg.data_dir) != 0)
        return 1;
    if (ch_db_open(&s->cfg, true, &s->db, &e) != CH_OK) {
        ch_log(CH_LOG_ERROR, "cannot open the data dir", "{s:s, s:s}", "data_dir", s->cfg.data_dir,
               "error", e.message);
        return 1;
    }
    if (bootstrap(s->db, s->cfg.data_dir) != 0) {
        ch_db_close(s->db);
        return 1;
    }
    h2o_config_init(&s->h2o);
    /* h2o refuses bodies beyond its own limit itself, with a plain-text 413, before any
     * handler runs. Its limit is set well above max_body so that charter answers
     * (with the JSON error) every body up to 16 MiB or 16 × max_body. */
    uint64_t h2o_limit = s->cfg.max_body * 16;
    s->h2o.max_request_entity_size = (size_t)(h2o_limit < (16u << 20) ? (16u << 20) : h2o_limit);
    ch__http_register(&s->h2o);
    if (start_threads(s) != 0) {
        ch_log(CH_LOG_ERROR, "cannot start the event loops", NULL);
        return 1;
    }
    ch_log(CH_LOG_INFO, "listening", "{s:s, s:i, s:s, s:s, s:s}", "listen", s->cfg.listen,
           "threads", s->nthreads, "data_dir", s->cfg.data_dir, "store", s->cfg.store,
           "ephemeral_engine", s->cfg.ephemeral.engine);

    sigwait(&sigs, &sig);
    ch_log(CH_LOG_INFO, "draining", "{s:s}", "signal", strsignal(sig));
    __atomic_store_n(&s->stopping, 1, __ATOMIC_RELEASE);
    uint64_t deadline = ch_mono_ns() + (uint64_t)s->cfg.drain_timeout * 1000000u;
    /* First every loop acknowledges the stop (so no handler can still be about to
     * submit a write), then the writes in flight are waited for. */
    for (int i = 0; i < s->nthreads && ch_mono_ns() < deadline; i++) {
        while (!__atomic_load_n(&s->threads[i].shutdown_started, __ATOMIC_ACQUIRE) &&
               ch_mono_ns() < deadline)
            usleep(1000);
    }
    while (__atomic_load_n(&s->inflight, __ATOMIC_ACQUIRE) > 0 && ch_mono_ns() < deadline)
        usleep(2000);
    /* Let the loops flush the last replies before they stop. */
    usleep(100000);
    __atomic_store_n(&s->exiting, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i].tid, NULL);
    int64_t left = __atomic_load_n(&s->inflight, __ATOMIC_ACQUIRE);
    ch_db_close(s->db);
    ch_log(CH_LOG_INFO, "stopped", "{s:I}", "unanswered_writes", (json_int_t)left);
    return 0;
}
