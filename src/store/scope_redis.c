/*
 * scope_redis.c — the `redis` ephemeral scope engine: each scope's context text is a
 * Redis string under `charter:eph:<id>`, so contexts live outside charter's process.
 *
 * charter's own timers decide when a scope ends; the key's Redis TTL is only a
 * backstop so that nothing outlives a charter that crashed. It is set past the
 * scope's deadline by a margin covering everything that may legitimately keep a
 * scope alive beyond it (the lock grace, then the GC sweep that backs up the timers),
 * so Redis never expires a key charter may still read.
 *
 * Connections: a pool of blocking hiredis contexts. A call takes an idle one (or
 * connects a new one when none is idle), runs one command and gives it back; several
 * threads therefore run commands at once, each on its own connection. A connection
 * that fails is closed, never pooled again. Needs Redis 6.2 or later (SET ... PXAT),
 * which open() checks.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "internal.h"

#define KEY_PREFIX "charter:eph:"
#define URL_FIELD "ephemeral.redis_url"
#define CONNECT_TIMEOUT_MS 2000
/* A command that gets no answer in this time fails the call (CH_UNAVAILABLE) rather
 * than holding a charter thread while Redis is stuck. */
#define COMMAND_TIMEOUT_MS 3000
/* Idle connections kept; one given back beyond this is closed. */
#define POOL_MAX 64
/* Keys per SCAN step (and so per UNLINK) when open() clears a previous run's keys. */
#define SCAN_COUNT "1000"

typedef struct redis_engine {
    ch_scope_engine base; /* must be first */
    char host[256];
    int port;
    int db;
    int64_t margin;     /* ms added to expires_at for the backstop TTL */
    pthread_mutex_t mu; /* guards idle and nidle */
    redisContext *idle[POOL_MAX];
    int nidle;
} redis_engine;

/* ---- helpers ----------------------------------------------------------------------- */

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* The PXAT of a scope that ends at expires_at. Redis rejects a non-positive one. */
static long long backstop(const redis_engine *r, int64_t expires_at)
{
    int64_t at = sat_add(expires_at, r->margin);
    return at < 1 ? 1 : (long long)at;
}

/*
 * hiredis sends with write(2). On a connection the server has reset, that raises
 * SIGPIPE, whose default action ends the process. `charter serve` ignores SIGPIPE, but
 * a host that links libcharter may not; so every exchange with Redis runs with
 * SIGPIPE blocked in the calling thread, and a SIGPIPE it raised is taken off the
 * pending set before the mask is restored. The failed write itself is reported by
 * hiredis as an I/O error (EPIPE) like any other.
 */
typedef struct sigpipe_guard {
    sigset_t old;
    bool was_blocked;
} sigpipe_guard;

static void sigpipe_block(sigpipe_guard *g)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &g->old);
    g->was_blocked = sigismember(&g->old, SIGPIPE) == 1;
}

static void sigpipe_unblock(sigpipe_guard *g)
{
    if (g->was_blocked)
        return; /* the caller blocks SIGPIPE itself: a pending one may be its own */
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        const struct timespec zero = {0, 0};
        sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static struct timeval ms_to_timeval(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* ---- URL --------------------------------------------------------------------------- */

static ch_status bad_url(ch_err *e, const char *url, const char *why)
{
    return ch_err_set(e, CH_CONFIG, URL_FIELD, "\"%s\" is not redis://HOST:PORT[/DB]: %s", url,
                      why);
}

/* Reads decimal digits at *p (at least one) into *out, failing past max. */
static bool parse_uint(const char **p, long max, long *out)
{
    const char *s = *p;
    long v = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (*s - '0');
        if (v > max)
            return false;
    }
    *p = s;
    *out = v;
    return true;
}

/* Parses redis://HOST:PORT[/DB] into r. HOST may be a bracketed IPv6 address. */
static ch_status parse_url(const char *url, redis_engine *r, ch_err *e)
{
    const char *p = url, *host, *host_end;
    long port, db = 0;

    if (strncmp(p, "redis://", 8) != 0)
        return bad_url(e, url, "the scheme must be redis://");
    p += 8;
    if (strchr(p, '@') != NULL)
        return bad_url(e, url, "credentials in the URL are not supported");
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL)
            return bad_url(e, url, "unclosed '[' in the host");
        p = host_end + 1;
    } else {
        host = p;
        host_end = p + strcspn(p, ":/[] \t");
        p = host_end;
    }
    if (host_end == host)
        return bad_url(e, url, "the host is missing");
    if ((size_t)(host_end - host) >= sizeof(r->host))
        return bad_url(e, url, "the host is too long");
    if (*p != ':')
        return bad_url(e, url, "the port is missing");
    p++;
    if (!parse_uint(&p, 65535, &port) || port == 0)
        return bad_url(e, url, "the port must be a number from 1 to 65535");
    if (*p == '/') {
        p++;
        if (!parse_uint(&p, 1000000, &db))
            return bad_url(e, url, "the database must be a number");
    }
    if (*p != '\0')
        return bad_url(e, url, "unexpected text after the port or database");
    memcpy(r->host, host, (size_t)(host_end - host));
    r->host[host_end - host] = '\0';
    r->port = (int)port;
    r->db = (int)db;
    return CH_OK;
}

/* ---- connections ------------------------------------------------------------------- */

/* Connects a new context and selects the database. Returns CH_UNAVAILABLE when the
 * server cannot be reached, CH_CONFIG when it refuses the database; err says why. */
static ch_status connect_one(redis_engine *r, redisContext **out, char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(r->host, r->port, ms_to_timeval(CONNECT_TIMEOUT_MS));
    ch_status rc = CH_UNAVAILABLE;

    if (c == NULL) {
        snprintf(err, errlen, "cannot connect to %s:%d: out of memory", r->host, r->port);
        return CH_UNAVAILABLE;
    }
    if (c->err != 0) {
        snprintf(err, errlen, "cannot connect to %s:%d: %s", r->host, r->port, c->errstr);
        goto fail;
    }
    /* The socket must not leak into programs the process starts. */
    int flags = fcntl(c->fd, F_GETFD);
    if (flags >= 0)
        fcntl(c->fd, F_SETFD, flags | FD_CLOEXEC);
    if (redisSetTimeout(c, ms_to_timeval(COMMAND_TIMEOUT_MS)) != REDIS_OK) {
        snprintf(err, errlen, "cannot set a timeout on %s:%d: %s", r->host, r->port, c->errstr);
        goto fail;
    }
    if (r->db != 0) {
        redisReply *rep = redisCommand(c, "SELECT %d", r->db);
        if (rep == NULL) {
            snprintf(err, errlen, "SELECT %d on %s:%d: %s", r->db, r->host, r->port, c->errstr);
            goto fail;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "%s:%d refuses database %d: %s", r->host, r->port, r->db,
                     rep->str);
            freeReplyObject(rep);
            rc = CH_CONFIG;
            goto fail;
        }
        freeReplyObject(rep);
    }
    *out = c;
    return CH_OK;
fail:
    redisFree(c);
    return rc;
}

static redisContext *pool_take(redis_engine *r)
{
    redisContext *c = NULL;
    pthread_mutex_lock(&r->mu);
    if (r->nidle > 0)
        c = r->idle[--r->nidle];
    pthread_mutex_unlock(&r->mu);
    return c;
}

static void pool_give(redis_engine *r, redisContext *c)
{
    pthread_mutex_lock(&r->mu);
    if (r->nidle < POOL_MAX) {
        r->idle[r->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    if (c != NULL)
        redisFree(c);
}

/*
 * Runs one command (hiredis format) on a pooled connection. CH_OK with the reply in
 * *out (the caller frees it), CH_IO when Redis answered with an error, CH_UNAVAILABLE
 * when it could not be reached or did not answer in time. Every failure is logged.
 *
 * An idle connection may have died since its last use (Redis restarted, a proxy timed
 * it out); a command that fails on one is sent again on a new connection, so a Redis
 * that came back is used at once. That is safe because each command the engine sends
 * is idempotent. A timeout is not retried: a stuck server would only double the wait.
 */
static ch_status run(redis_engine *r, const char *op, redisReply **out, const char *fmt, ...)
{
    char err[512] = "";
    ch_status rc = CH_UNAVAILABLE;
    sigpipe_guard g;

    *out = NULL;
    sigpipe_block(&g);
    for (int attempt = 0; attempt < 2; attempt++) {
        redisContext *c = attempt == 0 ? pool_take(r) : NULL;
        bool reused = c != NULL;
        if (c == NULL && connect_one(r, &c, err, sizeof(err)) != CH_OK)
            break;
        va_list ap;
        va_start(ap, fmt);
        redisReply *rep = redisvCommand(c, fmt, ap);
        va_end(ap);
        int saved_errno = errno;
        if (rep != NULL && c->err == 0) {
            pool_give(r, c);
            if (rep->type == REDIS_REPLY_ERROR) {
                ch_log(CH_LOG_ERROR, "redis scope engine error", "{s:s, s:s, s:i, s:s}", "op", op,
                       "host", r->host, "port", r->port, "error", rep->str);
                freeReplyObject(rep);
                rc = CH_IO;
            } else {
                *out = rep;
                rc = CH_OK;
            }
            goto out;
        }
        bool timed_out =
            c->err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK);
        if (timed_out)
            snprintf(err, sizeof(err), "%s:%d did not answer within %d ms", r->host, r->port,
                     COMMAND_TIMEOUT_MS);
        else
            snprintf(err, sizeof(err), "connection to %s:%d failed: %s", r->host, r->port,
                     c->errstr[0] ? c->errstr : "no reply");
        if (rep != NULL)
            freeReplyObject(rep);
        redisFree(c);
        if (!reused || timed_out)
            break;
    }
    ch_log(CH_LOG_ERROR, "redis scope engine unavailable", "{s:s, s:s}", "op", op, "error", err);
out:
    sigpipe_unblock(&g);
    return rc;
}

/* ---- open and close ---------------------------------------------------------------- */

/* Removes every key a previous run left: SCAN the key space for the prefix, UNLINK
 * each page of keys found. SCAN may return a key twice; UNLINK does not mind. */
static ch_status remove_leftovers(redisContext *c, char *err, size_t errlen)
{
    char cursor[32] = "0";
    redisReply *rep = NULL;
    const char **argv = NULL;
    size_t *argvlen = NULL;
    ch_status rc = CH_UNAVAILABLE;

    do {
        rep = redisCommand(c, "SCAN %s MATCH " KEY_PREFIX "* COUNT " SCAN_COUNT, cursor);
        if (rep == NULL) {
            snprintf(err, errlen, "SCAN: %s", c->errstr);
            goto fail;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "SCAN: %s", rep->str);
            rc = CH_CONFIG;
            goto fail;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
            rep->element[0]->type != REDIS_REPLY_STRING || rep->element[0]->len >= sizeof(cursor) ||
            rep->element[1]->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "SCAN: unexpected reply");
            rc = CH_IO;
            goto fail;
        }
        memcpy(cursor, rep->element[0]->str, rep->element[0]->len + 1);
        const redisReply *keys = rep->element[1];
        if (keys->elements > 0) {
            argv = malloc((keys->elements + 1) * sizeof(*argv));
            argvlen = malloc((keys->elements + 1) * sizeof(*argvlen));
            if (argv == NULL || argvlen == NULL) {
                snprintf(err, errlen, "out of memory");
                rc = CH_NOMEM;
                goto fail;
            }
            argv[0] = "UNLINK";
            argvlen[0] = 6;
            for (size_t i = 0; i < keys->elements; i++) {
                argv[i + 1] = keys->element[i]->str;
                argvlen[i + 1] = keys->element[i]->len;
            }
            redisReply *u = redisCommandArgv(c, (int)keys->elements + 1, argv, argvlen);
            if (u == NULL) {
                snprintf(err, errlen, "UNLINK: %s", c->errstr);
                goto fail;
            }
            bool refused = u->type == REDIS_REPLY_ERROR;
            if (refused)
                snprintf(err, errlen, "UNLINK: %s", u->str);
            freeReplyObject(u);
            if (refused) {
                rc = CH_CONFIG;
                goto fail;
            }
            free(argv);
            free(argvlen);
            argv = NULL;
            argvlen = NULL;
        }
        freeReplyObject(rep);
        rep = NULL;
    } while (strcmp(cursor, "0") != 0);
    return CH_OK;
fail:
    free(argv);
    free(argvlen);
    if (rep != NULL)
        freeReplyObject(rep);
    return rc;
}

/* Runs a command on c during open(), expecting a status reply. CH_UNAVAILABLE when the
 * connection fails, CH_CONFIG when Redis refuses (the message is Redis's). */
static ch_status open_command(redisContext *c, char *err, size_t errlen, const char *what,
                              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (rep == NULL) {
        snprintf(err, errlen, "%s: %s", what, c->errstr);
        return CH_UNAVAILABLE;
    }
    ch_status rc = CH_OK;
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s: %s", what, rep->str);
        rc = CH_CONFIG;
    }
    freeReplyObject(rep);
    return rc;
}

static void rd_close(ch_scope_engine *en)
{
    redis_engine *r = (redis_engine *)en;
    if (r == NULL)
        return;
    for (int i = 0; i < r->nidle; i++)
        redisFree(r->idle[i]);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static ch_status rd_open(const ch_config *cfg, ch_scope_engine **out, ch_err *e)
{
    const char *url = cfg->ephemeral.redis_url;
    redis_engine *r = calloc(1, sizeof(*r));
    redisContext *c = NULL;
    char err[512] = "";
    ch_status rc;
    sigpipe_guard g;

    if (r == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    r->base.methods = &ch__scope_redis_methods;
    pthread_mutex_init(&r->mu, NULL);
    r->margin = sat_add(sat_add(cfg->ephemeral.lock_grace, cfg->ephemeral.gc_interval), 1000);
    rc = parse_url(url, r, e);
    if (rc != CH_OK)
        goto fail;

    sigpipe_block(&g);
    rc = connect_one(r, &c, err, sizeof(err));
    if (rc == CH_OK)
        rc = open_command(c, err, sizeof(err), "PING", "PING");
    /* SET ... PXAT came with Redis 6.2: ask for it now rather than fail every put. The
     * probe key is gone at once (its deadline is long past) and matched by the sweep
     * below in any case. */
    if (rc == CH_OK)
        rc = open_command(c, err, sizeof(err), "SET ... PXAT (Redis 6.2 or later is needed)",
                          "SET " KEY_PREFIX "(probe) x PXAT 1");
    if (rc == CH_OK)
        rc = remove_leftovers(c, err, sizeof(err));
    sigpipe_unblock(&g);
    if (rc == CH_CONFIG) {
        ch_err_set(e, rc, URL_FIELD, "redis %s: %s", url, err);
        goto fail;
    }
    if (rc != CH_OK) {
        ch_err_set(e, rc, NULL, "redis %s: %s", url, err);
        goto fail;
    }
    pool_give(r, c);
    *out = &r->base;
    return CH_OK;
fail:
    if (c != NULL)
        redisFree(c);
    rd_close(&r->base);
    return e ? e->status : rc;
}

/* ---- scopes ------------------------------------------------------------------------ */

static ch_status rd_put(ch_scope_engine *en, const char *id, void **slot, const char *text,
                        size_t len, int64_t expires_at)
{
    redis_engine *r = (redis_engine *)en;
    redisReply *rep;
    ch_status rc = run(r, "put", &rep, "SET " KEY_PREFIX "%s %b PXAT %lld", id, len ? text : "",
                       len, backstop(r, expires_at));
    if (rep != NULL)
        freeReplyObject(rep);
    return rc;
}

static ch_status rd_get(ch_scope_engine *en, const char *id, void *const *slot, ch_scope_text_cb cb,
                        void *arg)
{
    redis_engine *r = (redis_engine *)en;
    redisReply *rep;
    ch_status rc = run(r, "get", &rep, "GET " KEY_PREFIX "%s", id);
    if (rc != CH_OK)
        return rc;
    if (rep->type == REDIS_REPLY_STRING) {
        cb(arg, rep->str, rep->len);
    } else if (rep->type == REDIS_REPLY_NIL) {
        rc = CH_NOT_FOUND;
    } else {
        ch_log(CH_LOG_ERROR, "redis scope engine error", "{s:s, s:s, s:i}", "op", "get", "error",
               "unexpected reply type", "type", rep->type);
        rc = CH_IO;
    }
    freeReplyObject(rep);
    return rc;
}

static ch_status rd_del(ch_scope_engine *en, const char *id, void **slot)
{
    redis_engine *r = (redis_engine *)en;
    redisReply *rep;
    ch_status rc = run(r, "del", &rep, "UNLINK " KEY_PREFIX "%s", id);
    if (rep != NULL)
        freeReplyObject(rep);
    *slot = NULL;
    return rc;
}

/* An id with no context stored is CH_OK: there is no backstop to move. */
static ch_status rd_expire(ch_scope_engine *en, const char *id, void *const *slot,
                           int64_t expires_at)
{
    redis_engine *r = (redis_engine *)en;
    redisReply *rep;
    ch_status rc =
        run(r, "expire", &rep, "PEXPIREAT " KEY_PREFIX "%s %lld", id, backstop(r, expires_at));
    if (rep != NULL)
        freeReplyObject(rep);
    return rc;
}

const ch_scope_engine_methods ch__scope_redis_methods = {
    .version = CH_SCOPE_ENGINE_VERSION,
    .name = "redis",
    .open = rd_open,
    .close = rd_close,
    .put = rd_put,
    .get = rd_get,
    .del = rd_del,
    .expire = rd_expire,
};
