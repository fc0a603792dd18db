/*
 * test_scope_engines.c — the ephemeral scope engine conformance suite (the contract in
 * charter/store.h), run against every built-in engine: "memory", "sqlite", "redis"
 * and the unregistered secure engine; then what is particular to SQLite (the file)
 * and to Redis (key names, the backstop TTL, URL parsing, a server that goes away).
 *
 * Redis runs as a private redis-server started by this test on a free loopback port,
 * with no persistence and its own directory; it is stopped at the end even when a
 * test fails, and dies with this process if the test crashes (PR_SET_PDEATHSIG).
 * A missing /usr/bin/redis-server fails the test: CI installs it (scripts/deps.sh).
 */
#include "unit.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <hiredis/hiredis.h>
#include <sodium.h>

#include "internal.h"

#define REDIS_SERVER "/usr/bin/redis-server"
#define KEY_PREFIX "charter:eph:"
#define BIG_LEN (64 * 1024)

/* One engine under test. The group state of its cmocka group. */
typedef struct suite {
    const char *name;
    const ch_scope_engine_methods *m;
    char dir[UNIT_PATH_MAX]; /* private temp dir; each test's data dir is under it */
    int ndirs;
    ch_config cfg;       /* data_dir set by each test's setup */
    ch_scope_engine *en; /* open for the duration of a test */
} suite;

/* The suite whose group is about to run (group_setup hands it to the tests). */
static suite *current;

/* ---- the private Redis server ------------------------------------------------------ */

typedef struct redis_server {
    pid_t pid; /* -1 when not running */
    int port;
    char dir[UNIT_PATH_MAX];
} redis_server;

static redis_server server = {.pid = -1};

/* A loopback port nobody listens on right now: bind port 0, read what the kernel
 * chose, let it go. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t alen = sizeof(a);
    int port = -1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool server_answers(int port)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    bool ok = false;
    if (c != NULL && c->err == 0) {
        redisReply *r = redisCommand(c, "PING");
        ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r != NULL)
            freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

static void server_stop(redis_server *sv)
{
    if (sv->pid <= 0)
        return;
    kill(sv->pid, SIGTERM);
    while (waitpid(sv->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    sv->pid = -1;
}

/* Starts redis-server on sv->port and waits until it answers PING. Returns 0, or -1
 * after printing why. */
static int server_start(redis_server *sv)
{
    char port[16], log[UNIT_PATH_MAX + 16];
    pid_t parent = getpid();

    if (access(REDIS_SERVER, X_OK) != 0) {
        print_error("%s is missing (%s): install redis-server (scripts/deps.sh)\n", REDIS_SERVER,
                    strerror(errno));
        return -1;
    }
    snprintf(port, sizeof(port), "%d", sv->port);
    snprintf(log, sizeof(log), "%s/redis.log", sv->dir);
    pid_t pid = fork();
    if (pid < 0) {
        print_error("fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* The server must not outlive this test, even one that crashes. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        closefrom(STDERR_FILENO + 1); /* the engine's sockets must stay ours */
        execl(REDIS_SERVER, "redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "",
              "--appendonly", "no", "--daemonize", "no", "--dir", sv->dir, (char *)NULL);
        _exit(127);
    }
    sv->pid = pid;
    for (int i = 0; i < 250; i++) { /* 5 s */
        if (server_answers(sv->port))
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            sv->pid = -1;
            print_error("redis-server exited at start; see %s\n", log);
            return -1;
        }
        unit_sleep_ms(20);
    }
    print_error("redis-server does not answer on port %d; see %s\n", sv->port, log);
    server_stop(sv);
    return -1;
}

/* A connection of the test's own to the private server, in database db. */
static redisContext *admin(int db)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", server.port, tv);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    if (db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", db);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STATUS);
        freeReplyObject(r);
    }
    return c;
}

/* Runs a command expected to give an integer (EXISTS, PTTL, DBSIZE) and returns it. */
static long long admin_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* ---- fixtures ---------------------------------------------------------------------- */

static int group_setup(void **state)
{
    suite *s = current;
    const char *tmp = getenv("TMPDIR");
    snprintf(s->dir, sizeof(s->dir), "%s/charter-unit-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(s->dir) == NULL) {
        print_error("mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    ch_config_defaults(&s->cfg);
    if (strcmp(s->name, "redis") == 0) {
        snprintf(server.dir, sizeof(server.dir), "%s", s->dir);
        server.port = free_port();
        if (server.port < 0 || server_start(&server) != 0) {
            unit_rm_rf(s->dir);
            return -1;
        }
        snprintf(s->cfg.ephemeral.redis_url, sizeof(s->cfg.ephemeral.redis_url),
                 "redis://127.0.0.1:%d", server.port);
    }
    *state = s;
    return 0;
}

static int group_teardown(void **state)
{
    suite *s = *state;
    if (s == NULL)
        return 0; /* group_setup failed and cleaned up after itself */
    if (strcmp(s->name, "redis") == 0)
        server_stop(&server);
    unit_rm_rf(s->dir);
    return 0;
}

/* Each test gets a freshly opened engine on a data dir that does not exist yet. */
static int engine_setup(void **state)
{
    suite *s = *state;
    ch_err e = {0};
    int n = snprintf(s->cfg.data_dir, sizeof(s->cfg.data_dir), "%s/data-%d", s->dir, ++s->ndirs);
    assert_true(n > 0 && (size_t)n < sizeof(s->cfg.data_dir));
    s->en = NULL;
    ch_status rc = s->m->open(&s->cfg, &s->en, &e);
    if (rc != CH_OK) {
        print_error("%s: open: %s (%s)\n", s->name, ch_status_name(rc), e.message);
        return -1;
    }
    assert_non_null(s->en);
    assert_ptr_equal(s->en->methods, s->m);
    return 0;
}

static int engine_teardown(void **state)
{
    suite *s = *state;
    if (s->en != NULL)
        s->m->close(s->en);
    s->en = NULL;
    return 0;
}

/* Closes the engine and opens it again on the same config: a restart. */
static void reopen(suite *s)
{
    ch_err e = {0};
    s->m->close(s->en);
    s->en = NULL;
    ch_status rc = s->m->open(&s->cfg, &s->en, &e);
    if (rc != CH_OK)
        fail_msg("%s: reopen: %s (%s)", s->name, ch_status_name(rc), e.message);
}

/* ---- helpers ----------------------------------------------------------------------- */

/* What a get() handed to its callback, copied. */
typedef struct got {
    char *text;
    size_t len;
    int calls;
} got;

static void on_text(void *arg, const char *text, size_t len)
{
    got *g = arg;
    g->calls++;
    free(g->text);
    g->text = malloc(len + 1);
    if (g->text == NULL)
        return;
    memcpy(g->text, text, len);
    g->text[len] = '\0';
    g->len = len;
}

static void got_clear(got *g)
{
    free(g->text);
    memset(g, 0, sizeof(*g));
}

static ch_status put_text(suite *s, const char *id, void **slot, const char *text, size_t len)
{
    return s->m->put(s->en, id, slot, text, len, ch_now_ms() + 60000);
}

/* Asserts that id's context is exactly want (len bytes), delivered by one callback. */
static void assert_context(suite *s, const char *id, void *const *slot, const char *want,
                           size_t len)
{
    got g = {0};
    ch_status rc = s->m->get(s->en, id, slot, on_text, &g);
    if (rc != CH_OK)
        fail_msg("%s: get %s: %s", s->name, id, ch_status_name(rc));
    assert_int_equal(g.calls, 1);
    assert_non_null(g.text);
    assert_int_equal(g.len, len);
    assert_memory_equal(g.text, want, len);
    got_clear(&g);
}

static void assert_absent(suite *s, const char *id, void *const *slot)
{
    got g = {0};
    assert_int_equal(s->m->get(s->en, id, slot, on_text, &g), CH_NOT_FOUND);
    assert_int_equal(g.calls, 0); /* a callback is never called when the call failed */
    got_clear(&g);
}

/* 64 KiB that use every byte value, NUL and 0xff included. */
static char *big_text(unsigned seed)
{
    char *t = malloc(BIG_LEN);
    assert_non_null(t);
    for (size_t i = 0; i < BIG_LEN; i++)
        t[i] = (char)(unsigned char)(i * 31 + seed);
    return t;
}

/* ---- the conformance suite --------------------------------------------------------- */

static void test_round_trip(void **state)
{
    suite *s = *state;
    void *small = NULL, *empty = NULL, *big = NULL;
    static const char json[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char *bytes = big_text(7);

    assert_int_equal(put_text(s, "rt-small", &small, json, strlen(json)), CH_OK);
    assert_int_equal(put_text(s, "rt-empty", &empty, "", 0), CH_OK);
    assert_int_equal(put_text(s, "rt-big", &big, bytes, BIG_LEN), CH_OK);
    assert_context(s, "rt-small", &small, json, strlen(json));
    assert_context(s, "rt-empty", &empty, "", 0);
    assert_context(s, "rt-big", &big, bytes, BIG_LEN);
    /* A get changes nothing: the same bytes again. */
    assert_context(s, "rt-big", &big, bytes, BIG_LEN);

    assert_int_equal(s->m->del(s->en, "rt-small", &small), CH_OK);
    assert_int_equal(s->m->del(s->en, "rt-empty", &empty), CH_OK);
    assert_int_equal(s->m->del(s->en, "rt-big", &big), CH_OK);
    free(bytes);
}

/* Single-key access (version 2, optional): set, replace and read one key without the
 * rest of the context changing; the whole text stays the object charter would write;
 * the size limit refuses and changes nothing; a context stored in another form is
 * still reachable key by key. Engines without put_key/get_key skip it. */
static void test_keys(void **state)
{
    suite *s = *state;
    if (s->m->version < 2 || s->m->put_key == NULL || s->m->get_key == NULL)
        return;
    void *slot = NULL;
    size_t total = 0;
    static const char ctx[] = "{\"a\":1,\"c\":{\"x\":[true,null]}}";
    assert_int_equal(put_text(s, "k", &slot, ctx, strlen(ctx)), CH_OK);
    assert_int_equal(s->m->put_key(s->en, "k", &slot, "\"b\"", 3, "\"two\"", 5, 65536,
                                   ch_now_ms() + 60000, &total),
                     CH_OK);
    static const char after[] = "{\"a\":1,\"b\":\"two\",\"c\":{\"x\":[true,null]}}";
    assert_int_equal(total, strlen(after));
    assert_context(s, "k", &slot, after, strlen(after));
    assert_int_equal(s->m->put_key(s->en, "k", &slot, "\"a\"", 3, "[1,2]", 5, 65536,
                                   ch_now_ms() + 60000, &total),
                     CH_OK);
    static const char replaced[] = "{\"a\":[1,2],\"b\":\"two\",\"c\":{\"x\":[true,null]}}";
    assert_context(s, "k", &slot, replaced, strlen(replaced));
    got g = {0};
    assert_int_equal(s->m->get_key(s->en, "k", &slot, "\"c\"", 3, on_text, &g), CH_OK);
    assert_string_equal(g.text, "{\"x\":[true,null]}");
    got_clear(&g);
    assert_int_equal(s->m->get_key(s->en, "k", &slot, "\"zz\"", 4, on_text, &g), CH_NOT_FOUND);
    assert_int_equal(g.calls, 0);
    /* over the limit: refused, nothing changed */
    assert_int_equal(
        s->m->put_key(s->en, "k", &slot, "\"d\"", 3, "12345", 5, 20, ch_now_ms() + 60000, &total),
        CH_INVALID_VALUE);
    assert_context(s, "k", &slot, replaced, strlen(replaced));
    /* a first key into an empty slot */
    void *fresh = NULL;
    assert_int_equal(
        s->m->put_key(s->en, "k2", &fresh, "\"q\"", 3, "0", 1, 65536, ch_now_ms() + 60000, &total),
        CH_OK);
    assert_context(s, "k2", &fresh, "{\"q\":0}", 7);
    /* stored in another form (spaces, unsorted): kept as given, still reachable */
    static const char loose[] = "{ \"z\": 1, \"y\": \"w\" }";
    assert_int_equal(put_text(s, "k3", &fresh, loose, strlen(loose)), CH_OK);
    assert_context(s, "k3", &fresh, loose, strlen(loose));
    assert_int_equal(s->m->get_key(s->en, "k3", &fresh, "\"y\"", 3, on_text, &g), CH_OK);
    assert_string_equal(g.text, "\"w\"");
    got_clear(&g);
    assert_int_equal(
        s->m->put_key(s->en, "k3", &fresh, "\"x\"", 3, "2", 1, 65536, ch_now_ms() + 60000, &total),
        CH_OK);
    static const char indexed[] = "{\"x\":2,\"y\":\"w\",\"z\":1}";
    assert_context(s, "k3", &fresh, indexed, strlen(indexed));
    assert_int_equal(s->m->del(s->en, "k", &slot), CH_OK);
    assert_int_equal(s->m->del(s->en, "k3", &fresh), CH_OK);
}

static void test_replace(void **state)
{
    suite *s = *state;
    void *slot = NULL;
    char *a = big_text(1), *b = big_text(2);

    assert_int_equal(put_text(s, "rp", &slot, a, BIG_LEN), CH_OK);
    assert_int_equal(put_text(s, "rp", &slot, "{\"v\":2}", 7), CH_OK); /* shorter */
    assert_context(s, "rp", &slot, "{\"v\":2}", 7);
    assert_int_equal(put_text(s, "rp", &slot, b, BIG_LEN), CH_OK); /* longer */
    assert_context(s, "rp", &slot, b, BIG_LEN);
    assert_int_equal(put_text(s, "rp", &slot, "", 0), CH_OK);
    assert_context(s, "rp", &slot, "", 0);

    assert_int_equal(s->m->del(s->en, "rp", &slot), CH_OK);
    free(a);
    free(b);
}

static void test_get_unknown(void **state)
{
    suite *s = *state;
    void *slot = NULL;
    assert_absent(s, "never-stored", &slot);
    assert_null(slot);
}

static void test_del(void **state)
{
    suite *s = *state;
    void *slot = NULL, *other = NULL;

    assert_int_equal(put_text(s, "del-a", &slot, "{\"a\":1}", 7), CH_OK);
    assert_int_equal(put_text(s, "del-b", &other, "{\"b\":1}", 7), CH_OK);
    assert_int_equal(s->m->del(s->en, "del-a", &slot), CH_OK);
    assert_null(slot);
    assert_absent(s, "del-a", &slot);
    assert_context(s, "del-b", &other, "{\"b\":1}", 7); /* only id's context went */
    /* Deleting what is not there is fine, twice or never stored. */
    assert_int_equal(s->m->del(s->en, "del-a", &slot), CH_OK);
    assert_null(slot);
    void *none = NULL;
    assert_int_equal(s->m->del(s->en, "del-never-stored", &none), CH_OK);
    assert_null(none);
    /* A deleted id can be stored again. */
    assert_int_equal(put_text(s, "del-a", &slot, "{\"a\":2}", 7), CH_OK);
    assert_context(s, "del-a", &slot, "{\"a\":2}", 7);

    assert_int_equal(s->m->del(s->en, "del-a", &slot), CH_OK);
    assert_int_equal(s->m->del(s->en, "del-b", &other), CH_OK);
}

/* Each id has its own slot, NULL before the first put, passed by address to put and
 * del and to get and expire as the engine left it; scopes never see each other's. */
enum { NSLOTS = 16 };

static void test_slots(void **state)
{
    suite *s = *state;
    void *slots[NSLOTS] = {0};
    char id[32], text[64];

    for (int i = 0; i < NSLOTS; i++) {
        snprintf(id, sizeof(id), "slot-%d", i);
        snprintf(text, sizeof(text), "{\"i\":%d}", i);
        assert_int_equal(put_text(s, id, &slots[i], text, strlen(text)), CH_OK);
    }
    /* Replace the odd ones; the even ones must keep their text. */
    for (int i = 1; i < NSLOTS; i += 2) {
        snprintf(id, sizeof(id), "slot-%d", i);
        snprintf(text, sizeof(text), "{\"i\":%d,\"again\":true}", i);
        assert_int_equal(put_text(s, id, &slots[i], text, strlen(text)), CH_OK);
    }
    for (int i = 0; i < NSLOTS; i++) {
        snprintf(id, sizeof(id), "slot-%d", i);
        if (i % 2)
            snprintf(text, sizeof(text), "{\"i\":%d,\"again\":true}", i);
        else
            snprintf(text, sizeof(text), "{\"i\":%d}", i);
        assert_context(s, id, &slots[i], text, strlen(text));
    }
    for (int i = 0; i < NSLOTS; i++) {
        snprintf(id, sizeof(id), "slot-%d", i);
        assert_int_equal(s->m->del(s->en, id, &slots[i]), CH_OK);
        assert_null(slots[i]);
    }
}

/* ---- many ids from several threads ---- */

enum { NTHREADS = 4, PER_THREAD = 250 };

typedef struct worker {
    suite *s;
    int n;
    int errors;
    char first[200]; /* the first error, for the report */
} worker;

static void worker_fail(worker *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void worker_fail(worker *w, const char *fmt, ...)
{
    if (w->errors++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->first, sizeof(w->first), fmt, ap);
        va_end(ap);
    }
}

/* The text of id i in round r: its length varies from a few bytes to ~3 KiB. */
static size_t worker_text(char *buf, size_t cap, int t, int i, int r)
{
    int n = snprintf(buf, cap, "{\"t\":%d,\"i\":%d,\"r\":%d,\"pad\":\"", t, i, r);
    int pad = (i * 37 + r * 11) % 3000;
    for (int k = 0; k < pad && (size_t)n + 3 < cap; k++)
        buf[n++] = (char)('a' + (k + i + r) % 26);
    buf[n++] = '"';
    buf[n++] = '}';
    return (size_t)n;
}

/* Checks id i against round r (r < 0: must be absent). */
static void worker_check(worker *w, void **slots, int i, int r)
{
    char id[32], want[3200];
    got g = {0};
    snprintf(id, sizeof(id), "w%d-%d", w->n, i);
    ch_status rc = w->s->m->get(w->s->en, id, &slots[i], on_text, &g);
    if (r < 0) {
        if (rc != CH_NOT_FOUND || g.calls != 0)
            worker_fail(w, "%s: deleted, but get gave %s", id, ch_status_name(rc));
    } else {
        size_t len = worker_text(want, sizeof(want), w->n, i, r);
        if (rc != CH_OK)
            worker_fail(w, "%s: get: %s", id, ch_status_name(rc));
        else if (g.calls != 1 || g.text == NULL || g.len != len || memcmp(g.text, want, len) != 0)
            worker_fail(w, "%s: round %d: wrong context (%zu bytes)", id, r, g.len);
    }
    got_clear(&g);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    void *slots[PER_THREAD] = {0};
    char id[32], text[3200];

    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < PER_THREAD; i++) {
            snprintf(id, sizeof(id), "w%d-%d", w->n, i);
            size_t len = worker_text(text, sizeof(text), w->n, i, r);
            ch_status rc = w->s->m->put(w->s->en, id, &slots[i], text, len, ch_now_ms() + 60000);
            if (rc != CH_OK)
                worker_fail(w, "%s: put: %s", id, ch_status_name(rc));
        }
        for (int i = 0; i < PER_THREAD; i++)
            worker_check(w, slots, i, r);
    }
    for (int i = 0; i < PER_THREAD; i += 2) {
        snprintf(id, sizeof(id), "w%d-%d", w->n, i);
        if (w->s->m->del(w->s->en, id, &slots[i]) != CH_OK || slots[i] != NULL)
            worker_fail(w, "%s: del failed or left the slot set", id);
    }
    for (int i = 0; i < PER_THREAD; i++)
        worker_check(w, slots, i, i % 2 ? 1 : -1);
    for (int i = 1; i < PER_THREAD; i += 2) {
        snprintf(id, sizeof(id), "w%d-%d", w->n, i);
        if (w->s->m->del(w->s->en, id, &slots[i]) != CH_OK)
            worker_fail(w, "%s: del failed", id);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    suite *s = *state;
    worker w[NTHREADS];
    pthread_t tid[NTHREADS];

    for (int t = 0; t < NTHREADS; t++) {
        w[t] = (worker){.s = s, .n = t};
        assert_int_equal(pthread_create(&tid[t], NULL, worker_main, &w[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_join(tid[t], NULL), 0);
    for (int t = 0; t < NTHREADS; t++) {
        if (w[t].errors != 0)
            fail_msg("%s: thread %d: %d errors, first: %s", s->name, t, w[t].errors, w[t].first);
    }
}

/* A restart forgets every scope. charter's slots die with its process, so after the
 * restart each id is asked for with a fresh NULL slot. */
static void test_reopen_clears(void **state)
{
    suite *s = *state;
    void *old[3] = {0}, *fresh = NULL;
    static const char *const ids[3] = {"ro-a", "ro-b", "ro-big"};
    char *bytes = big_text(3);

    assert_int_equal(put_text(s, ids[0], &old[0], "{\"a\":1}", 7), CH_OK);
    assert_int_equal(put_text(s, ids[1], &old[1], "{\"b\":1}", 7), CH_OK);
    assert_int_equal(put_text(s, ids[2], &old[2], bytes, BIG_LEN), CH_OK);
    reopen(s);
    for (int i = 0; i < 3; i++)
        assert_absent(s, ids[i], &fresh);
    /* Still fully usable after the restart. */
    assert_int_equal(put_text(s, ids[0], &fresh, "{\"a\":2}", 7), CH_OK);
    assert_context(s, ids[0], &fresh, "{\"a\":2}", 7);
    assert_int_equal(s->m->del(s->en, ids[0], &fresh), CH_OK);
    /* The in-process engines still hold the old texts in the old slots: give them back
     * (a no-op for the engines that address by id, whose contexts are gone). */
    for (int i = 0; i < 3; i++)
        assert_int_equal(s->m->del(s->en, ids[i], &old[i]), CH_OK);
    free(bytes);
}

static void test_expire(void **state)
{
    suite *s = *state;
    void *slot = NULL, *none = NULL;

    if (s->m->expire == NULL) {
        /* Only the engines with nothing that acts on time may go without. */
        assert_true(strcmp(s->name, "redis") != 0);
        return;
    }
    int64_t now = ch_now_ms();
    assert_int_equal(s->m->put(s->en, "ex", &slot, "{\"x\":1}", 7, now + 60000), CH_OK);
    assert_int_equal(s->m->expire(s->en, "ex", &slot, now + 120000), CH_OK);
    assert_context(s, "ex", &slot, "{\"x\":1}", 7);
    /* Earlier is allowed too (a shortened scope); the context stays until charter
     * deletes it, since the backstop lies past the deadline. */
    assert_int_equal(s->m->expire(s->en, "ex", &slot, now + 30000), CH_OK);
    assert_context(s, "ex", &slot, "{\"x\":1}", 7);
    /* No context stored: nothing to move. */
    assert_int_equal(s->m->expire(s->en, "ex-never-stored", &none, now + 60000), CH_OK);
    assert_int_equal(s->m->del(s->en, "ex", &slot), CH_OK);
}

/* ---- SQLite ------------------------------------------------------------------------ */

static void write_junk(const char *dir, const char *name)
{
    char path[UNIT_PATH_MAX];
    unit_write_file(dir, name, "this is not a database", path);
}

static bool exists_in(const char *dir, const char *name)
{
    char path[UNIT_PATH_MAX * 2];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return stat(path, &st) == 0;
}

static void test_sqlite_file(void **state)
{
    suite *s = *state;
    const char *dir = s->cfg.data_dir;
    struct stat st;
    void *slot = NULL;

    /* open() made the missing data dir, private, and the file in it. */
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_true(exists_in(dir, "ephemeral.db"));
    assert_int_equal(put_text(s, "f", &slot, "{\"f\":1}", 7), CH_OK);

    /* A closed engine leaves nothing behind. */
    s->m->close(s->en);
    s->en = NULL;
    assert_false(exists_in(dir, "ephemeral.db"));

    /* What a crashed run may leave: a torn file and its journals. open() must not
     * read any of it. */
    write_junk(dir, "ephemeral.db");
    write_junk(dir, "ephemeral.db-journal");
    write_junk(dir, "ephemeral.db-wal");
    write_junk(dir, "ephemeral.db-shm");
    ch_err e = {0};
    assert_int_equal(s->m->open(&s->cfg, &s->en, &e), CH_OK);
    assert_false(exists_in(dir, "ephemeral.db-journal"));
    assert_false(exists_in(dir, "ephemeral.db-wal"));
    assert_false(exists_in(dir, "ephemeral.db-shm"));
    slot = NULL;
    assert_absent(s, "f", &slot);
    assert_int_equal(put_text(s, "f", &slot, "{\"f\":2}", 7), CH_OK);
    assert_context(s, "f", &slot, "{\"f\":2}", 7);
    /* journal_mode=MEMORY: no journal file appears beside the database. */
    assert_false(exists_in(dir, "ephemeral.db-journal"));
    assert_false(exists_in(dir, "ephemeral.db-wal"));
}

static void test_sqlite_bad_dir(void **state)
{
    suite *s = *state;
    ch_config cfg = s->cfg;
    ch_scope_engine *en = NULL;
    ch_err e = {0};
    char file[UNIT_PATH_MAX];

    /* A data dir under a regular file cannot be created. */
    unit_write_file(s->dir, "plain-file", "x", file);
    int n = snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/sub", file);
    assert_true(n > 0 && (size_t)n < sizeof(cfg.data_dir));
    assert_int_equal(s->m->open(&cfg, &en, &e), CH_IO);
    assert_null(en);
    assert_non_null(strstr(e.message, "cannot create data dir"));
}

/* ---- Redis ------------------------------------------------------------------------- */

static int64_t redis_margin(const suite *s)
{
    return s->cfg.ephemeral.lock_grace + s->cfg.ephemeral.gc_interval + 1000;
}

static void test_redis_keys(void **state)
{
    suite *s = *state;
    redisContext *c = admin(0);
    void *slot = NULL;
    char *bytes = big_text(5);

    assert_int_equal(put_text(s, "k1", &slot, bytes, BIG_LEN), CH_OK);
    assert_null(slot); /* addressed by id: the slot is not used */
    redisReply *r = redisCommand(c, "GET " KEY_PREFIX "k1");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_int_equal(r->len, BIG_LEN);
    assert_memory_equal(r->str, bytes, BIG_LEN);
    freeReplyObject(r);
    assert_int_equal(s->m->del(s->en, "k1", &slot), CH_OK);
    assert_int_equal(admin_int(c, "EXISTS " KEY_PREFIX "k1"), 0);
    redisFree(c);
    free(bytes);
}

/* The key's TTL is the backstop: past expires_at by the margin, moved by expire(). */
static void test_redis_backstop_ttl(void **state)
{
    suite *s = *state;
    redisContext *c = admin(0);
    void *slot = NULL;
    int64_t margin = redis_margin(s), now = ch_now_ms();
    const long long slack = 5000; /* time this test may take, sanitizers included */

    assert_int_equal(s->m->put(s->en, "ttl", &slot, "{}", 2, now + 10000), CH_OK);
    long long pttl = admin_int(c, "PTTL " KEY_PREFIX "ttl");
    assert_true(pttl > 0);
    assert_in_range(pttl, 10000 + margin - slack, 10000 + margin);

    assert_int_equal(s->m->expire(s->en, "ttl", &slot, now + 20000), CH_OK);
    pttl = admin_int(c, "PTTL " KEY_PREFIX "ttl");
    assert_in_range(pttl, 20000 + margin - slack, 20000 + margin);

    /* A put sets the backstop again from its own expires_at. */
    assert_int_equal(s->m->put(s->en, "ttl", &slot, "{}", 2, now + 5000), CH_OK);
    pttl = admin_int(c, "PTTL " KEY_PREFIX "ttl");
    assert_in_range(pttl, 5000 + margin - slack, 5000 + margin);

    assert_int_equal(s->m->del(s->en, "ttl", &slot), CH_OK);
    redisFree(c);
}

/* open() removes every key a previous run left, in several SCAN steps, and nothing
 * that is not charter's. */
static void test_redis_open_clears_leftovers(void **state)
{
    suite *s = *state;
    redisContext *c = admin(0);
    enum { LEFT = 2500 };

    for (int i = 0; i < LEFT; i++)
        redisAppendCommand(c, "SET " KEY_PREFIX "left-%d {}", i);
    redisAppendCommand(c, "SET other:keep yes");
    redisAppendCommand(c, "SET charter:ephemeral-lookalike yes");
    for (int i = 0; i < LEFT + 2; i++) {
        void *reply = NULL;
        assert_int_equal(redisGetReply(c, &reply), REDIS_OK);
        freeReplyObject(reply);
    }
    assert_int_equal(admin_int(c, "DBSIZE"), LEFT + 2);

    reopen(s);
    assert_int_equal(admin_int(c, "DBSIZE"), 2);
    assert_int_equal(admin_int(c, "EXISTS other:keep charter:ephemeral-lookalike"), 2);
    assert_int_equal(admin_int(c, "DEL other:keep charter:ephemeral-lookalike"), 2);
    redisFree(c);
}

/* redis://HOST:PORT/DB selects the database on every connection. */
static void test_redis_database(void **state)
{
    suite *s = *state;
    ch_config cfg = s->cfg;
    ch_scope_engine *en = NULL;
    ch_err e = {0};
    void *slot = NULL;
    redisContext *c0 = admin(0), *c3 = admin(3);

    snprintf(cfg.ephemeral.redis_url, sizeof(cfg.ephemeral.redis_url), "redis://127.0.0.1:%d/3",
             server.port);
    assert_int_equal(s->m->open(&cfg, &en, &e), CH_OK);
    assert_int_equal(s->m->put(en, "db3", &slot, "{}", 2, ch_now_ms() + 1000), CH_OK);
    assert_int_equal(admin_int(c3, "EXISTS " KEY_PREFIX "db3"), 1);
    assert_int_equal(admin_int(c0, "EXISTS " KEY_PREFIX "db3"), 0);
    assert_int_equal(s->m->del(en, "db3", &slot), CH_OK);
    assert_int_equal(admin_int(c3, "EXISTS " KEY_PREFIX "db3"), 0);
    s->m->close(en);
    redisFree(c0);
    redisFree(c3);
}

static void test_redis_bad_url(void **state)
{
    suite *s = *state;
    static const char *const bad[] = {
        "",
        "http://127.0.0.1:6379",
        "redis://",
        "redis://127.0.0.1",
        "redis://127.0.0.1:",
        "redis://:6379",
        "redis://127.0.0.1:0",
        "redis://127.0.0.1:65536",
        "redis://127.0.0.1:63x79",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1:6379/zero",
        "redis://127.0.0.1:6379/0/1",
        "redis://user:secret@127.0.0.1:6379",
        "redis://[::1:6379",
        "redis://127.0.0.1 :6379",
    };
    ch_config cfg = s->cfg;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ch_scope_engine *en = NULL;
        ch_err e = {0};
        snprintf(cfg.ephemeral.redis_url, sizeof(cfg.ephemeral.redis_url), "%s", bad[i]);
        ch_status rc = s->m->open(&cfg, &en, &e);
        if (rc != CH_CONFIG)
            fail_msg("\"%s\": %s, expected config", bad[i], ch_status_name(rc));
        assert_string_equal(e.field, "ephemeral.redis_url");
        assert_null(en);
    }

    /* Well-formed, but the server refuses the database: a config error too. */
    ch_scope_engine *en = NULL;
    ch_err e = {0};
    snprintf(cfg.ephemeral.redis_url, sizeof(cfg.ephemeral.redis_url), "redis://127.0.0.1:%d/99999",
             server.port);
    assert_int_equal(s->m->open(&cfg, &en, &e), CH_CONFIG);
    assert_string_equal(e.field, "ephemeral.redis_url");
    assert_non_null(strstr(e.message, "99999"));
    assert_null(en);

    /* Well-formed, nobody listening: unavailable. */
    int port = free_port();
    assert_true(port > 0);
    snprintf(cfg.ephemeral.redis_url, sizeof(cfg.ephemeral.redis_url), "redis://127.0.0.1:%d",
             port);
    assert_int_equal(s->m->open(&cfg, &en, &e), CH_UNAVAILABLE);
    assert_non_null(strstr(e.message, "cannot connect"));
    assert_null(en);

    /* A bracketed IPv6 loopback parses (and is refused the same way when closed). */
    snprintf(cfg.ephemeral.redis_url, sizeof(cfg.ephemeral.redis_url), "redis://[::1]:%d/0", port);
    assert_int_equal(s->m->open(&cfg, &en, &e), CH_UNAVAILABLE);
    assert_null(en);
}

/* Redis goes away: every call is CH_UNAVAILABLE, and once it is back (same port, no
 * data) the very next call succeeds — both when it came back before the next call
 * (the pooled connections are stale) and after calls failed in between. Runs last:
 * it restarts the server. */
static void test_redis_goes_away(void **state)
{
    suite *s = *state;
    void *slot = NULL;
    got g = {0};

    /* Restarted between two calls: the idle connection is dead, the call is not. */
    assert_int_equal(put_text(s, "away", &slot, "{\"v\":1}", 7), CH_OK);
    server_stop(&server);
    assert_int_equal(server_start(&server), 0);
    assert_absent(s, "away", &slot); /* reached: the new server has no data */
    assert_int_equal(put_text(s, "away", &slot, "{\"v\":2}", 7), CH_OK);

    /* Down: each operation says so. */
    server_stop(&server);
    assert_int_equal(put_text(s, "away", &slot, "{\"v\":3}", 7), CH_UNAVAILABLE);
    assert_int_equal(s->m->get(s->en, "away", &slot, on_text, &g), CH_UNAVAILABLE);
    assert_int_equal(g.calls, 0);
    assert_int_equal(s->m->expire(s->en, "away", &slot, ch_now_ms() + 1000), CH_UNAVAILABLE);
    assert_int_equal(s->m->del(s->en, "away", &slot), CH_UNAVAILABLE);

    /* Back: the next call succeeds. */
    assert_int_equal(server_start(&server), 0);
    assert_int_equal(put_text(s, "away", &slot, "{\"v\":4}", 7), CH_OK);
    assert_context(s, "away", &slot, "{\"v\":4}", 7);
    assert_int_equal(s->m->del(s->en, "away", &slot), CH_OK);
}

/* ---- main -------------------------------------------------------------------------- */

#define ENGINE_TEST(f) cmocka_unit_test_setup_teardown(f, engine_setup, engine_teardown)

static int run_suite(suite *s)
{
    const struct CMUnitTest common[] = {
        ENGINE_TEST(test_round_trip),    ENGINE_TEST(test_replace), ENGINE_TEST(test_get_unknown),
        ENGINE_TEST(test_del),           ENGINE_TEST(test_slots),   ENGINE_TEST(test_concurrent),
        ENGINE_TEST(test_reopen_clears), ENGINE_TEST(test_expire),  ENGINE_TEST(test_keys),
    };
    const struct CMUnitTest sqlite_tests[] = {
        ENGINE_TEST(test_sqlite_file),
        ENGINE_TEST(test_sqlite_bad_dir),
    };
    const struct CMUnitTest redis_tests[] = {
        ENGINE_TEST(test_redis_keys),
        ENGINE_TEST(test_redis_backstop_ttl),
        ENGINE_TEST(test_redis_open_clears_leftovers),
        ENGINE_TEST(test_redis_database),
        ENGINE_TEST(test_redis_bad_url),
        ENGINE_TEST(test_redis_goes_away), /* last: restarts the server */
    };
    /* One group per engine: the common cases, then the engine's own. */
    struct CMUnitTest tests[sizeof(common) / sizeof(common[0]) + 8];
    size_t n = 0;
    for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
        tests[n++] = common[i];
    if (strcmp(s->name, "sqlite") == 0) {
        for (size_t i = 0; i < sizeof(sqlite_tests) / sizeof(sqlite_tests[0]); i++)
            tests[n++] = sqlite_tests[i];
    } else if (strcmp(s->name, "redis") == 0) {
        for (size_t i = 0; i < sizeof(redis_tests) / sizeof(redis_tests[0]); i++)
            tests[n++] = redis_tests[i];
    }
    current = s;
    return _cmocka_run_group_tests(s->name, tests, n, group_setup, group_teardown);
}

int main(void)
{
    static suite suites[] = {
        {.name = "memory"},
        {.name = "secure"},
        {.name = "sqlite"},
        {.name = "redis"},
    };
    int failed = 0;

    /* As ch_db_open does before any engine is used: the secure engine allocates with
     * sodium_malloc. */
    if (sodium_init() < 0)
        return 1;
    for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++) {
        suite *s = &suites[i];
        s->m = strcmp(s->name, "secure") == 0 ? &ch__scope_secure_methods
                                              : ch_scope_engine_find(s->name);
        if (s->m == NULL) {
            fprintf(stderr, "engine \"%s\" is not registered\n", s->name);
            failed++;
            continue;
        }
        if (s->m->version != CH_SCOPE_ENGINE_VERSION || strcmp(s->m->name, s->name) != 0) {
            fprintf(stderr, "engine \"%s\": bad table (version %d, name %s)\n", s->name,
                    s->m->version, s->m->name);
            failed++;
            continue;
        }
        failed += run_suite(s);
    }
    return failed;
}
