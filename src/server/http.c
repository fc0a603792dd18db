/*
 * http.c — routing, authentication and the handlers of the v1 API.
 *
 * Reads are answered on the loop thread. Writes are submitted to the library's
 * writer and answered when the writer hands the completion back to this loop through
 * an h2o multithread queue, so a loop never waits for an fsync. If the client goes
 * away before the completion arrives, the write still commits; only the reply is
 * dropped (the request's memory pool tells us through a dispose callback).
 */
#include <errno.h>
#include <string.h>

#include <sodium.h>

#include "server.h"

/* The one table from library status to HTTP status. */
static int http_status(ch_status st)
{
    switch (st) {
    case CH_OK:
        return 200;
    case CH_BAD_JSON:
    case CH_BAD_REQUEST:
    case CH_MISSING_FIELD:
    case CH_INVALID_TYPE:
    case CH_UNKNOWN_FIELD:
    case CH_NO_CHANGE:
        return 400;
    case CH_UNAUTHORIZED:
        return 401;
    case CH_NOT_FOUND:
        return 404;
    case CH_METHOD_NOT_ALLOWED:
        return 405;
    case CH_SEQ_CONFLICT:
    case CH_INVALID_TRANSITION:
    case CH_INVALID_STATE:
    case CH_MANDATE_INACTIVE:
    case CH_EXISTS:
        return 409;
    case CH_BODY_TOO_LARGE:
        return 413;
    case CH_SCOPE_LOCKED:
        return 423;
    case CH_INVALID_VALUE:
    case CH_RESERVED_KIND:
    case CH_NOT_SUBSET:
        return 422;
    case CH_SHUTTING_DOWN:
    case CH_UNAVAILABLE:
        return 503;
    default:
        return 500;
    }
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 423:
        return "Locked";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

/* Per-request state on the loop thread. */
typedef struct call {
    h2o_req_t *req;
    ch_route route;
    uint64_t t0;
} call;

static void send_text(call *c, int status, const char *type, const char *body, size_t len)
{
    h2o_req_t *req = c->req;
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
    /* h2o_send_inline leaves the length unset, which costs the connection its
     * keep-alive; it is known here. */
    req->res.content_length = len;
    h2o_send_inline(req, body, len);
    ch__metrics_observe(c->route, status, ch_mono_ns() - c->t0);
}

/* Sends v (consumed) as the JSON reply. */
static void send_json(call *c, int status, json_t *v)
{
    char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (text == NULL) {
        static const char oom[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        send_text(c, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    send_text(c, status, "application/json", text, strlen(text));
    free(text);
}

static void send_error(call *c, const ch_err *e)
{
    json_t *err = json_pack("{s:s, s:s}", "code", ch_status_name(e->status), "message",
                            e->message[0] ? e->message : ch_strerror(e->status));
    if (err == NULL) /* a message jansson refuses: send the code and the generic text */
        err = json_pack("{s:s, s:s}", "code", ch_status_name(e->status), "message",
                        ch_strerror(e->status));
    if (e->field[0])
        json_object_set_new(err, "field", json_string(e->field)); /* NULL: not set */
    if (e->state[0])
        json_object_set_new(err, "state", json_string(e->state));
    int status = http_status(e->status);
    if (status >= 500 && e->status != CH_SHUTTING_DOWN)
        ch_log(CH_LOG_ERROR, "request failed", "{s:s, s:s}", "route", ch__route_label(c->route),
               "error", e->message);
    send_json(c, status, json_pack("{s:o}", "error", err));
}

static void fail(call *c, ch_status st, const char *field, const char *msg)
{
    ch_err e;
    ch_err_set(&e, st, field, "%s", msg ? msg : ch_strerror(st));
    send_error(c, &e);
}

/* ---- asynchronous writes --------------------------------------------------------- */

typedef struct pending {
    ch_req creq;
    call c;
    int ok_status;
    ch_server_thread *thread;
    h2o_multithread_message_t msg;
    struct pending **token; /* in the request's pool; cleared when we answer */
    char key[512];          /* decoded fact key */
} pending;

/* The request's pool is being freed: the client is gone, forget the request. */
static void on_req_dispose(void *p)
{
    pending **token = p;
    if (*token != NULL)
        (*token)->c.req = NULL;
}

/* Writer thread: the write is durable (or failed); hand it to its loop. */
static void on_write_done(ch_req *creq)
{
    pending *p = (pending *)creq;
    h2o_multithread_send_message(&p->thread->completions, &p->msg);
}

void ch__http_on_completions(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *msg =
            H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&msg->link);
        pending *p = H2O_STRUCT_FROM_MEMBER(pending, msg, msg);
        if (p->c.req != NULL) {
            *p->token = NULL;
            if (p->creq.err.status == CH_OK) {
                send_json(&p->c, p->ok_status, p->creq.result);
                p->creq.result = NULL;
            } else {
                send_error(&p->c, &p->creq.err);
            }
        }
        ch_req_dispose(&p->creq);
        free(p);
        __atomic_fetch_sub(&ch__server.inflight, 1, __ATOMIC_RELEASE);
    }
}

/* Thread of the loop running this request. */
static __thread ch_server_thread *current_thread;

void ch__http_set_thread(ch_server_thread *t)
{
    current_thread = t;
}

/* Submits op for the session id (and fact key) with the parsed body (consumed). */
static void submit(call *c, ch_op op, const char *tenant, const char *id, const char *key,
                   json_t *body, int ok_status)
{
    pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        json_decref(body);
        fail(c, CH_NOMEM, NULL, NULL);
        return;
    }
    p->c = *c;
    p->ok_status = ok_status;
    p->thread = current_thread;
    p->creq.op = op;
    p->creq.body = body; /* ch_submit takes its own reference */
    p->creq.done = on_write_done;
    snprintf(p->creq.tenant, sizeof(p->creq.tenant), "%s", tenant);
    if (id != NULL)
        snprintf(p->creq.id, sizeof(p->creq.id), "%s", id);
    if (key != NULL) {
        snprintf(p->key, sizeof(p->key), "%s", key);
        p->creq.key = p->key;
    }
    ch_status st = ch_submit(ch__server.db, &p->creq);
    json_decref(body);
    if (st != CH_OK) {
        send_error(c, &p->creq.err);
        ch_req_dispose(&p->creq);
        free(p);
        return;
    }
    __atomic_fetch_add(&ch__server.inflight, 1, __ATOMIC_ACQUIRE);
    p->token = h2o_mem_alloc_shared(&c->req->pool, sizeof(*p->token), on_req_dispose);
    *p->token = p;
}

/* ---- request parsing ------------------------------------------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes src[0..n) into out (NUL-terminated). Returns the decoded length, -1
 * on a malformed escape or an encoded NUL, -2 when it does not fit. */
static ssize_t pct_decode(const char *src, size_t n, char *out, size_t cap, bool plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(src[i + 1]);
            int lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            ch = (char)(hi * 16 + lo);
            if (ch == '\0')
                return -1;
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        if (o + 1 >= cap)
            return -2;
        out[o++] = ch;
    }
    out[o] = '\0';
    return (ssize_t)o;
}

typedef struct query {
    const char *names[8];
    char values[8][300];
    bool seen[8];
} query;

/* Parses the query string against the allowed names; unknown names are refused. */
static ch_status parse_query(call *c, query *q, ch_err *e)
{
    h2o_req_t *req = c->req;
    if (req->query_at == SIZE_MAX)
        return CH_OK;
    const char *s = req->path.base + req->query_at + 1;
    const char *end = req->path.base + req->path.len;
    while (s < end) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(s, '=', (size_t)(stop - s));
        char name[64], value[300];
        if (stop == s) {
            s = stop + 1;
            continue;
        }
        const char *nend = eq ? eq : stop;
        if (pct_decode(s, (size_t)(nend - s), name, sizeof(name), true) < 0)
            return ch_err_set(e, CH_BAD_REQUEST, NULL, "malformed query string");
        if (pct_decode(eq ? eq + 1 : stop, eq ? (size_t)(stop - eq - 1) : 0, value, sizeof(value),
                       true) < 0)
            return ch_err_set(e, CH_BAD_REQUEST, name, "malformed query parameter '%.60s'", name);
        int idx = -1;
        for (int i = 0; i < 8 && q->names[i] != NULL; i++) {
            if (strcmp(q->names[i], name) == 0)
                idx = i;
        }
        if (idx < 0)
            return ch_err_set(e, CH_UNKNOWN_FIELD, name, "unknown query parameter '%.60s'", name);
        memcpy(q->values[idx], value, sizeof(value));
        q->seen[idx] = true;
        s = stop + 1;
    }
    return CH_OK;
}

/* The value of query parameter i as an integer (default when absent). */
static ch_status query_int(const query *q, int i, int64_t dflt, int64_t *out, ch_err *e)
{
    if (!q->seen[i]) {
        *out = dflt;
        return CH_OK;
    }
    char *end;
    errno = 0;
    long long v = strtoll(q->values[i], &end, 10);
    if (q->values[i][0] == '\0' || *end != '\0' || errno != 0)
        return ch_err_set(e, CH_BAD_REQUEST, q->names[i], "'%s' must be an integer", q->names[i]);
    *out = v;
    return CH_OK;
}

static const char *query_str(const query *q, int i)
{
    return q->seen[i] ? q->values[i] : NULL;
}

/* Parses the request body as a JSON object; NULL with e set on failure. An empty body
 * is NULL without error when allow_empty. */
static json_t *body_of(call *c, bool allow_empty, ch_err *e)
{
    h2o_req_t *req = c->req;
    ch_err_clear(e);
    if (req->entity.base == NULL || req->entity.len == 0) {
        if (!allow_empty)
            ch_err_set(e, CH_BAD_JSON, NULL, "request body is empty; a JSON object is required");
        return NULL;
    }
    if (req->entity.len > ch__server.cfg.max_body) {
        ch_err_set(e, CH_BODY_TOO_LARGE, NULL, "request body is larger than %llu bytes",
                   (unsigned long long)ch__server.cfg.max_body);
        return NULL;
    }
    return ch_json_parse_object(req->entity.base, req->entity.len, e);
}

/* ---- authentication -------------------------------------------------------------- */

/* A small per-thread cache of recently verified keys, so the hot path does not query
 * the store on every request. Entries expire after a few seconds. A cache entry is
 * named by a keyed SipHash-128 of the key under a secret drawn at start: no plaintext
 * key stays in memory, and without the secret nobody can make another key with the
 * same tag. It costs a small fraction of the SHA-256 the store lookup needs. */
#define AUTH_CACHE 64
#define AUTH_TTL_MS 5000

typedef struct auth_entry {
    uint8_t tag[crypto_shorthash_siphashx24_BYTES];
    char tenant[CH_TENANT_MAX];
    int64_t until;
} auth_entry;

static __thread auth_entry auth_cache[AUTH_CACHE];
static uint8_t auth_secret[crypto_shorthash_siphashx24_KEYBYTES];
static pthread_once_t auth_once = PTHREAD_ONCE_INIT;

static void auth_init(void)
{
    randombytes_buf(auth_secret, sizeof(auth_secret));
}

static ch_status authenticate(call *c, char tenant[CH_TENANT_MAX])
{
    h2o_req_t *req = c->req;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return CH_UNAUTHORIZED;
    h2o_iovec_t v = req->headers.entries[i].value;
    if (v.len < 8 || strncasecmp(v.base, "Bearer ", 7) != 0 || v.len - 7 >= CH_KEY_MAX)
        return CH_UNAUTHORIZED;
    char key[CH_KEY_MAX];
    memcpy(key, v.base + 7, v.len - 7);
    key[v.len - 7] = '\0';

    uint8_t tag[crypto_shorthash_siphashx24_BYTES];
    pthread_once(&auth_once, auth_init);
    crypto_shorthash_siphashx24(tag, (const unsigned char *)key, v.len - 7, auth_secret);
    auth_entry *slot = &auth_cache[tag[0] % AUTH_CACHE];
    int64_t now = ch_now_ms();
    if (slot->until > now && sodium_memcmp(slot->tag, tag, sizeof(tag)) == 0) {
        memcpy(tenant, slot->tenant, CH_TENANT_MAX);
        sodium_memzero(key, sizeof(key));
        return CH_OK;
    }
    ch_status st = ch_key_lookup(ch__server.db, key, tenant);
    sodium_memzero(key, sizeof(key));
    if (st == CH_OK) {
        memcpy(slot->tag, tag, sizeof(tag));
        memcpy(slot->tenant, tenant, CH_TENANT_MAX);
        slot->until = now + AUTH_TTL_MS;
    }
    return st;
}

/* ---- handlers -------------------------------------------------------------------- */

static void reply_read(call *c, ch_status st, json_t *out, const ch_err *e)
{
    if (st == CH_OK)
        send_json(c, 200, out);
    else
        send_error(c, e);
}

static void get_list(call *c, const char *tenant)
{
    query q = {.names = {"user", "state", "mandate", "limit", "cursor"}};
    ch_err e;
    int64_t limit = 0;
    json_t *out = NULL;
    ch_err_clear(&e);
    if (parse_query(c, &q, &e) != CH_OK || query_int(&q, 3, 50, &limit, &e) != CH_OK) {
        send_error(c, &e);
        return;
    }
    ch_session_query sq = {query_str(&q, 0), query_str(&q, 1), query_str(&q, 2), query_str(&q, 4),
                           limit < 0 || limit > 100000 ? 0 : (int)limit};
    ch_status st = ch_session_list(ch__server.db, tenant, &sq, &out, &e);
    reply_read(c, st, out, &e);
}

static void get_events(call *c, const char *tenant, const char *id)
{
    query q = {.names = {"after", "limit", "include"}};
    ch_err e;
    int64_t after = 0, limit = 0;
    json_t *out = NULL;
    ch_err_clear(&e);
    if (parse_query(c, &q, &e) != CH_OK || query_int(&q, 0, 0, &after, &e) != CH_OK ||
        query_int(&q, 1, 100, &limit, &e) != CH_OK) {
        send_error(c, &e);
        return;
    }
    const char *inc = query_str(&q, 2);
    if (inc != NULL && strcmp(inc, "archived") != 0) {
        fail(c, CH_BAD_REQUEST, "include", "include must be 'archived'");
        return;
    }
    ch_status st =
        ch_events_list(ch__server.db, tenant, id, after,
                       limit < 0 || limit > 100000 ? 0 : (int)limit, inc != NULL, &out, &e);
    reply_read(c, st, out, &e);
}

static void get_bundle(call *c, const char *tenant, const char *id)
{
    query q = {.names = {"limit"}};
    ch_err e;
    int64_t limit = 0;
    json_t *out = NULL;
    ch_err_clear(&e);
    if (parse_query(c, &q, &e) != CH_OK || query_int(&q, 0, 1000, &limit, &e) != CH_OK) {
        send_error(c, &e);
        return;
    }
    ch_status st = ch_bundle(ch__server.db, tenant, id,
                             limit < 0 || limit > 100000 ? 0 : (int)limit, &out, &e);
    reply_read(c, st, out, &e);
}

/* Refuses any query string on routes that take none. */
static bool no_query(call *c)
{
    query q = {.names = {NULL}};
    ch_err e;
    ch_err_clear(&e);
    if (parse_query(c, &q, &e) != CH_OK) {
        send_error(c, &e);
        return false;
    }
    return true;
}

static void handle_metrics(call *c)
{
    ch_buf b = {0};
    ch__metrics_render(&b);
    ch_db_render_metrics(ch__server.db, &b);
    ch_buf_printf(&b,
                  "# HELP charter_inflight_writes Writes waiting for their commit.\n"
                  "# TYPE charter_inflight_writes gauge\ncharter_inflight_writes %lld\n",
                  (long long)__atomic_load_n(&ch__server.inflight, __ATOMIC_RELAXED));
    send_text(c, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    ch_buf_free(&b);
}

static bool method_is(h2o_req_t *req, const char *m)
{
    return req->method.len == strlen(m) && memcmp(req->method.base, m, req->method.len) == 0;
}

/* Splits the raw path (before '?') into at most 6 segments after the leading '/'. */
static int split_path(h2o_req_t *req, h2o_iovec_t seg[6])
{
    size_t len = req->query_at == SIZE_MAX ? req->path.len : req->query_at;
    const char *p = req->path.base, *end = p + len;
    int n = 0;
    if (len == 0 || *p != '/')
        return -1;
    p++;
    while (p <= end && n < 6) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash ? slash : end;
        seg[n++] = h2o_iovec_init(p, (size_t)(stop - p));
        if (slash == NULL)
            return n;
        p = slash + 1;
    }
    return -1; /* too many segments */
}

static bool seg_is(h2o_iovec_t s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.base, lit, s.len) == 0;
}

/* Routes a /v1/sessions... request. seg[0] == "v1", seg[1] == "sessions". */
static void route_sessions(call *c, const char *tenant, h2o_iovec_t *seg, int n)
{
    h2o_req_t *req = c->req;
    static const struct {
        const char *verb;
        ch_op op;
        ch_route route;
    } actions[] = {
        {"pause", CH_OP_SESSION_PAUSE, CH_ROUTE_SESSION_PAUSE},
        {"resume", CH_OP_SESSION_RESUME, CH_ROUTE_SESSION_RESUME},
        {"close", CH_OP_SESSION_CLOSE, CH_ROUTE_SESSION_CLOSE},
        {"archive", CH_OP_SESSION_ARCHIVE, CH_ROUTE_SESSION_ARCHIVE},
        {"compact", CH_OP_SESSION_COMPACT, CH_ROUTE_SESSION_COMPACT},
    };
    ch_err e;
    char id[CH_ID_MAX];
    json_t *body;

    if (n == 2) {
        if (method_is(req, "POST")) {
            c->route = CH_ROUTE_SESSION_CREATE;
            if (!no_query(c))
                return;
            body = body_of(c, false, &e);
            if (body == NULL)
                send_error(c, &e);
            else
                submit(c, CH_OP_SESSION_CREATE, tenant, NULL, NULL, body, 201);
        } else if (method_is(req, "GET")) {
            c->route = CH_ROUTE_SESSION_LIST;
            get_list(c, tenant);
        } else {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET or POST on /v1/sessions");
        }
        return;
    }
    /* Every deeper route names a session: an id that is not well formed cannot exist. */
    if (seg[2].len >= sizeof(id)) {
        fail(c, CH_NOT_FOUND, NULL, "session not found");
        return;
    }
    memcpy(id, seg[2].base, seg[2].len);
    id[seg[2].len] = '\0';
    if (!ch_id_valid("sess", id)) {
        fail(c, CH_NOT_FOUND, NULL, "session not found");
        return;
    }
    if (n == 3) {
        c->route = CH_ROUTE_SESSION_GET;
        if (!method_is(req, "GET")) {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on a session");
            return;
        }
        json_t *out = NULL;
        ch_err_clear(&e);
        if (no_query(c)) {
            ch_status st = ch_session_get(ch__server.db, tenant, id, &out, &e);
            reply_read(c, st, out, &e);
        }
        return;
    }
    if (n == 4 && seg_is(seg[3], "events")) {
        if (method_is(req, "GET")) {
            c->route = CH_ROUTE_EVENTS_LIST;
            get_events(c, tenant, id);
        } else if (method_is(req, "POST")) {
            c->route = CH_ROUTE_EVENTS_APPEND;
            if (!no_query(c))
                return;
            body = body_of(c, false, &e);
            if (body == NULL)
                send_error(c, &e);
            else
                submit(c, CH_OP_SESSION_APPEND, tenant, id, NULL, body, 201);
        } else {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET or POST on events");
        }
        return;
    }
    if (n == 4 && seg_is(seg[3], "bundle")) {
        c->route = CH_ROUTE_BUNDLE;
        if (!method_is(req, "GET"))
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on bundle");
        else
            get_bundle(c, tenant, id);
        return;
    }
    if (n == 4 && seg_is(seg[3], "facts")) {
        c->route = CH_ROUTE_FACTS_LIST;
        json_t *out = NULL;
        ch_err_clear(&e);
        if (!method_is(req, "GET"))
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on facts");
        else if (no_query(c)) {
            ch_status st = ch_facts_list(ch__server.db, tenant, id, &out, &e);
            reply_read(c, st, out, &e);
        }
        return;
    }
    if (n == 5 && seg_is(seg[3], "facts")) {
        char key[512];
        ssize_t klen = pct_decode(seg[4].base, seg[4].len, key, sizeof(key), false);
        if (klen == -1) {
            fail(c, CH_BAD_REQUEST, "key", "malformed percent-encoding in the fact key");
            return;
        }
        if (klen < 0) {
            fail(c, CH_INVALID_VALUE, "key", "fact keys must be 1 to 256 bytes");
            return;
        }
        if (method_is(req, "GET")) {
            c->route = CH_ROUTE_FACT_GET;
            json_t *out = NULL;
            ch_err_clear(&e);
            if (no_query(c)) {
                ch_status st = ch_fact_get(ch__server.db, tenant, id, key, &out, &e);
                reply_read(c, st, out, &e);
            }
        } else if (method_is(req, "PUT")) {
            c->route = CH_ROUTE_FACT_PUT;
            if (!no_query(c))
                return;
            body = body_of(c, false, &e);
            if (body == NULL)
                send_error(c, &e);
            else
                submit(c, CH_OP_FACT_PUT, tenant, id, key, body, 200);
        } else if (method_is(req, "DELETE")) {
            c->route = CH_ROUTE_FACT_DELETE;
            if (no_query(c))
                submit(c, CH_OP_FACT_DELETE, tenant, id, key, NULL, 200);
        } else {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET, PUT or DELETE on a fact");
        }
        return;
    }
    if (n == 4) {
        for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
            if (!seg_is(seg[3], actions[i].verb))
                continue;
            c->route = actions[i].route;
            if (!method_is(req, "POST")) {
                fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST");
                return;
            }
            if (!no_query(c))
                return;
            /* Lifecycle calls take an optional body; compaction needs one. */
            body = body_of(c, actions[i].op != CH_OP_SESSION_COMPACT, &e);
            if (body == NULL && e.status != CH_OK)
                send_error(c, &e);
            else
                submit(c, actions[i].op, tenant, id, NULL, body, 200);
            return;
        }
    }
    fail(c, CH_NOT_FOUND, NULL, "no such route");
}

/* Copies path segment s into out as an id with the given prefix; false (and a 404
 * sent) when it cannot be one. */
static bool path_id(call *c, h2o_iovec_t s, const char *prefix, char out[CH_ID_MAX])
{
    if (s.len >= CH_ID_MAX) {
        fail(c, CH_NOT_FOUND, NULL, "not found");
        return false;
    }
    memcpy(out, s.base, s.len);
    out[s.len] = '\0';
    if (!ch_id_valid(prefix, out)) {
        fail(c, CH_NOT_FOUND, NULL, "not found");
        return false;
    }
    return true;
}

/* Submits a write whose body is required (or optional) and takes no query. */
static void submit_body(call *c, ch_op op, const char *tenant, const char *id, bool optional,
                        int ok_status)
{
    ch_err e;
    if (!no_query(c))
        return;
    json_t *body = body_of(c, optional, &e);
    if (body == NULL && e.status != CH_OK)
        send_error(c, &e);
    else
        submit(c, op, tenant, id, NULL, body, ok_status);
}

/* Routes /v1/mandates... seg[1] == "mandates". */
static void route_mandates(call *c, const char *tenant, h2o_iovec_t *seg, int n)
{
    h2o_req_t *req = c->req;
    static const struct {
        const char *verb;
        ch_op op;
        ch_route route;
        int ok_status;
    } actions[] = {
        {"approve", CH_OP_MANDATE_APPROVE, CH_ROUTE_MANDATE_APPROVE, 200},
        {"delegate", CH_OP_MANDATE_DELEGATE, CH_ROUTE_MANDATE_DELEGATE, 201},
        {"suspend", CH_OP_MANDATE_SUSPEND, CH_ROUTE_MANDATE_SUSPEND, 200},
        {"reinstate", CH_OP_MANDATE_REINSTATE, CH_ROUTE_MANDATE_REINSTATE, 200},
        {"revoke", CH_OP_MANDATE_REVOKE, CH_ROUTE_MANDATE_REVOKE, 200},
        {"complete", CH_OP_MANDATE_COMPLETE, CH_ROUTE_MANDATE_COMPLETE, 200},
    };
    char id[CH_ID_MAX];
    ch_err e;
    json_t *out = NULL;

    ch_err_clear(&e);
    if (n == 2) {
        c->route = CH_ROUTE_MANDATE_CREATE;
        if (!method_is(req, "POST"))
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST on /v1/mandates");
        else
            submit_body(c, CH_OP_MANDATE_CREATE, tenant, NULL, false, 201);
        return;
    }
    if (n > 4) {
        fail(c, CH_NOT_FOUND, NULL, "no such route");
        return;
    }
    if (!path_id(c, seg[2], "mdt", id))
        return;
    if (n == 3) {
        if (method_is(req, "GET")) {
            c->route = CH_ROUTE_MANDATE_GET;
            if (no_query(c)) {
                ch_status st = ch_mandate_get(ch__server.db, tenant, id, &out, &e);
                reply_read(c, st, out, &e);
            }
        } else if (method_is(req, "PATCH")) {
            c->route = CH_ROUTE_MANDATE_PATCH;
            submit_body(c, CH_OP_MANDATE_PATCH, tenant, id, false, 200);
        } else {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET or PATCH on a mandate");
        }
        return;
    }
    if (seg_is(seg[3], "tree")) {
        c->route = CH_ROUTE_MANDATE_TREE;
        if (!method_is(req, "GET"))
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on tree");
        else if (no_query(c)) {
            ch_status st = ch_mandate_tree(ch__server.db, tenant, id, &out, &e);
            reply_read(c, st, out, &e);
        }
        return;
    }
    if (seg_is(seg[3], "artifact")) {
        c->route = CH_ROUTE_MANDATE_ARTIFACT;
        if (!method_is(req, "POST")) {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST on artifact");
        } else if (no_query(c)) {
            json_t *body = body_of(c, false, &e);
            if (body == NULL) {
                send_error(c, &e);
                return;
            }
            ch_status st = ch_mandate_artifact(ch__server.db, tenant, id, body, &out, &e);
            json_decref(body);
            reply_read(c, st, out, &e);
        }
        return;
    }
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
        if (!seg_is(seg[3], actions[i].verb))
            continue;
        c->route = actions[i].route;
        if (!method_is(req, "POST"))
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST");
        else
            submit_body(c, actions[i].op, tenant, id, actions[i].op != CH_OP_MANDATE_DELEGATE,
                        actions[i].ok_status);
        return;
    }
    fail(c, CH_NOT_FOUND, NULL, "no such route");
}

/* ---- ephemeral scopes ------------------------------------------------------------ */

/* Sends a scope call's outcome. The request and reply may carry a secure scope's
 * secrets: every copy this layer made is wiped before it is released. */
static void reply_scope(call *c, ch_status st, int ok_status, json_t *body, ch_buf *out,
                        const ch_err *e)
{
    if (st == CH_OK)
        send_text(c, ok_status, "application/json", out->data ? out->data : "{}",
                  out->data ? out->len : 2);
    else
        send_error(c, e);
    if (out->data != NULL)
        sodium_memzero(out->data, out->cap);
    ch_buf_free(out);
    ch_json_wipe(body);
    json_decref(body);
    if (c->req->entity.base != NULL)
        sodium_memzero((char *)c->req->entity.base, c->req->entity.len);
}

/* Routes /v1/ephemeral... seg[1] == "ephemeral". */
static void route_ephemeral(call *c, const char *tenant, h2o_iovec_t *seg, int n)
{
    h2o_req_t *req = c->req;
    static const struct {
        const char *verb;
        ch_scope_verb v;
        ch_route route;
        bool body_ok;
    } actions[] = {
        {"lock", CH_SCOPE_LOCK, CH_ROUTE_SCOPE_LOCK, false},
        {"unlock", CH_SCOPE_UNLOCK, CH_ROUTE_SCOPE_UNLOCK, false},
        {"extend", CH_SCOPE_EXTEND, CH_ROUTE_SCOPE_EXTEND, true},
        {"upgrade", CH_SCOPE_UPGRADE, CH_ROUTE_SCOPE_UPGRADE, true},
    };
    char id[CH_ID_MAX];
    ch_err e;
    ch_buf out = {0};
    json_t *body = NULL;
    ch_status st;

    ch_err_clear(&e);
    if (n == 2) {
        c->route = CH_ROUTE_SCOPE_CREATE;
        if (!method_is(req, "POST")) {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST on /v1/ephemeral");
            return;
        }
        if (!no_query(c))
            return;
        if ((body = body_of(c, false, &e)) == NULL)
            st = e.status;
        else
            st = ch_scope_create(ch__server.db, tenant, body, &out, &e);
        reply_scope(c, st, 201, body, &out, &e);
        return;
    }
    if (n > 5) {
        fail(c, CH_NOT_FOUND, NULL, "no such route");
        return;
    }
    if (!path_id(c, seg[2], "eph", id))
        return;
    if (n == 3) {
        if (method_is(req, "GET")) {
            c->route = CH_ROUTE_SCOPE_GET;
            if (!no_query(c))
                return;
            st = ch_scope_get(ch__server.db, tenant, id, &out, &e);
        } else if (method_is(req, "PATCH")) {
            c->route = CH_ROUTE_SCOPE_PATCH;
            if (!no_query(c))
                return;
            if ((body = body_of(c, false, &e)) == NULL)
                st = e.status;
            else
                st = ch_scope_merge(ch__server.db, tenant, id, body, &out, &e);
        } else if (method_is(req, "DELETE")) {
            c->route = CH_ROUTE_SCOPE_DELETE;
            if (!no_query(c))
                return;
            st = ch_scope_delete(ch__server.db, tenant, id, &e);
            if (st == CH_OK)
                ch_buf_printf(&out, "{\"id\":\"%s\",\"purged\":true}", id);
        } else {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET, PATCH or DELETE on a scope");
            return;
        }
        reply_scope(c, st, 200, body, &out, &e);
        return;
    }
    if (n == 5) {
        char key[512];
        if (!seg_is(seg[3], "context")) {
            fail(c, CH_NOT_FOUND, NULL, "no such route");
            return;
        }
        ssize_t klen = pct_decode(seg[4].base, seg[4].len, key, sizeof(key), false);
        if (klen == -1) {
            fail(c, CH_BAD_REQUEST, "key", "malformed percent-encoding in the context key");
            return;
        }
        if (klen < 0 || klen > 256) {
            fail(c, CH_INVALID_VALUE, "key", "context keys must be 1 to 256 bytes");
            return;
        }
        if (method_is(req, "GET")) {
            c->route = CH_ROUTE_SCOPE_KEY_GET;
            if (!no_query(c))
                return;
            st = ch_scope_get_key(ch__server.db, tenant, id, key, &out, &e);
        } else if (method_is(req, "PUT")) {
            c->route = CH_ROUTE_SCOPE_KEY_PUT;
            if (!no_query(c))
                return;
            if ((body = body_of(c, false, &e)) == NULL)
                st = e.status;
            else
                st = ch_scope_put_key(ch__server.db, tenant, id, key, body, &out, &e);
        } else {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET or PUT on a context key");
            return;
        }
        reply_scope(c, st, 200, body, &out, &e);
        return;
    }
    /* n == 4: an action */
    if (seg_is(seg[3], "complete")) {
        c->route = CH_ROUTE_SCOPE_COMPLETE;
        if (!method_is(req, "POST"))
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST on complete");
        else
            submit_body(c, CH_OP_SCOPE_COMPLETE, tenant, id, true, 200);
        return;
    }
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
        if (!seg_is(seg[3], actions[i].verb))
            continue;
        c->route = actions[i].route;
        if (!method_is(req, "POST")) {
            fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST");
            return;
        }
        if (!no_query(c))
            return;
        body = body_of(c, true, &e);
        if (body == NULL && e.status != CH_OK)
            st = e.status;
        else
            st = ch_scope_act(ch__server.db, tenant, id, actions[i].v, body, &out, &e);
        reply_scope(c, st, 200, body, &out, &e);
        return;
    }
    fail(c, CH_NOT_FOUND, NULL, "no such route");
}

/* DELETE /v1/agents/{agent}/ephemeral: the agent has exited. */
static void route_agents(call *c, const char *tenant, h2o_iovec_t *seg, int n)
{
    char agent[512];
    ch_err e;
    ch_buf out = {0};
    if (n != 4 || !seg_is(seg[3], "ephemeral")) {
        fail(c, CH_NOT_FOUND, NULL, "no such route");
        return;
    }
    c->route = CH_ROUTE_AGENT_PURGE;
    if (!method_is(c->req, "DELETE")) {
        fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use DELETE on /v1/agents/{agent}/ephemeral");
        return;
    }
    ssize_t alen = pct_decode(seg[2].base, seg[2].len, agent, sizeof(agent), false);
    if (alen == -1) {
        fail(c, CH_BAD_REQUEST, "agent", "malformed percent-encoding in the agent");
        return;
    }
    if (alen <= 0 || alen > 256) {
        fail(c, CH_INVALID_VALUE, "agent", "agent must be 1 to 256 bytes");
        return;
    }
    if (!no_query(c))
        return;
    ch_err_clear(&e);
    ch_status st = ch_scope_purge_agent(ch__server.db, tenant, agent, &out, &e);
    reply_scope(c, st, 200, NULL, &out, &e);
}

static void handle_check(call *c, const char *tenant)
{
    ch_err e;
    c->route = CH_ROUTE_CHECK;
    if (!method_is(c->req, "POST")) {
        fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use POST on /v1/check");
        return;
    }
    if (!no_query(c))
        return;
    json_t *body = body_of(c, false, &e);
    if (body == NULL) {
        send_error(c, &e);
        return;
    }
    ch_buf reply = {0};
    ch_status st = ch_check_text(ch__server.db, tenant, body, &reply, &e);
    json_decref(body);
    if (st == CH_OK)
        send_text(c, 200, "application/json", reply.data, reply.len);
    else
        send_error(c, &e);
    ch_buf_free(&reply);
}

static void handle_audit(call *c, const char *tenant)
{
    query q = {.names = {"mandate", "after", "limit"}};
    ch_err e;
    int64_t after = 0, limit = 0;
    json_t *out = NULL;
    c->route = CH_ROUTE_AUDIT;
    ch_err_clear(&e);
    if (!method_is(c->req, "GET")) {
        fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on /v1/audit");
        return;
    }
    if (parse_query(c, &q, &e) != CH_OK || query_int(&q, 1, 0, &after, &e) != CH_OK ||
        query_int(&q, 2, 100, &limit, &e) != CH_OK) {
        send_error(c, &e);
        return;
    }
    const char *m = query_str(&q, 0);
    if (m != NULL && !ch_id_valid("mdt", m)) {
        fail(c, CH_NOT_FOUND, NULL, "no such mandate");
        return;
    }
    ch_status st = ch_audit_list(ch__server.db, tenant, m, after,
                                 limit < 0 || limit > 100000 ? 0 : (int)limit, &out, &e);
    reply_read(c, st, out, &e);
}

static void handle_stream(call *c, const char *tenant)
{
    query q = {.names = {"after"}};
    ch_err e;
    int64_t after = -1;
    c->route = CH_ROUTE_EVENT_STREAM;
    ch_err_clear(&e);
    if (!method_is(c->req, "GET")) {
        fail(c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on /v1/events");
        return;
    }
    if (parse_query(c, &q, &e) != CH_OK || query_int(&q, 0, -1, &after, &e) != CH_OK) {
        send_error(c, &e);
        return;
    }
    /* Last-Event-ID (set by a reconnecting EventSource) wins over ?after. */
    ssize_t h = h2o_find_header_by_str(&c->req->headers, H2O_STRLIT("last-event-id"), -1);
    if (h >= 0) {
        h2o_iovec_t v = c->req->headers.entries[h].value;
        char buf[32];
        char *end;
        if (v.len == 0 || v.len >= sizeof(buf)) {
            fail(c, CH_BAD_REQUEST, "Last-Event-ID", "Last-Event-ID must be an event id");
            return;
        }
        memcpy(buf, v.base, v.len);
        buf[v.len] = '\0';
        errno = 0;
        after = strtoll(buf, &end, 10);
        if (*end != '\0' || errno != 0 || after < 0) {
            fail(c, CH_BAD_REQUEST, "Last-Event-ID", "Last-Event-ID must be an event id");
            return;
        }
    } else if (q.seen[0] && after < 0) {
        fail(c, CH_BAD_REQUEST, "after", "after must be >= 0");
        return;
    }
    if (after < 0)
        after = ch_stream_last(ch__server.db); /* new events only */
    ch__metrics_observe(c->route, 200, ch_mono_ns() - c->t0);
    ch__sse_open(c->req, tenant, after);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    call c = {req, CH_ROUTE_OTHER, ch_mono_ns()};
    h2o_iovec_t seg[6];
    int n = split_path(req, seg);
    char tenant[CH_TENANT_MAX];

    if (__atomic_load_n(&ch__server.stopping, __ATOMIC_ACQUIRE)) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONNECTION, NULL,
                       H2O_STRLIT("close"));
        fail(&c, CH_SHUTTING_DOWN, NULL, "the server is shutting down");
        return 0;
    }
    if (n == 1 && seg_is(seg[0], "healthz")) {
        c.route = CH_ROUTE_HEALTHZ;
        static const char ok[] = "{\"status\":\"ok\"}";
        if (method_is(req, "GET") || method_is(req, "HEAD"))
            send_text(&c, 200, "application/json", ok, sizeof(ok) - 1);
        else
            fail(&c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on /healthz");
        return 0;
    }
    if (n == 1 && seg_is(seg[0], "metrics")) {
        c.route = CH_ROUTE_METRICS;
        if (method_is(req, "GET"))
            handle_metrics(&c);
        else
            fail(&c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on /metrics");
        return 0;
    }
    if (n < 2 || !seg_is(seg[0], "v1")) {
        fail(&c, CH_NOT_FOUND, NULL, "no such route");
        return 0;
    }
    ch_status st = authenticate(&c, tenant);
    if (st != CH_OK) {
        fail(&c, st, NULL,
             st == CH_UNAUTHORIZED ? "missing or invalid API key (Authorization: Bearer chk_...)"
                                   : "cannot verify the API key");
        return 0;
    }
    if (seg_is(seg[1], "sessions")) {
        route_sessions(&c, tenant, seg, n);
        return 0;
    }
    if (seg_is(seg[1], "mandates")) {
        route_mandates(&c, tenant, seg, n);
        return 0;
    }
    if (seg_is(seg[1], "ephemeral")) {
        route_ephemeral(&c, tenant, seg, n);
        return 0;
    }
    if (seg_is(seg[1], "agents")) {
        route_agents(&c, tenant, seg, n);
        return 0;
    }
    if (n == 2 && seg_is(seg[1], "check")) {
        handle_check(&c, tenant);
        return 0;
    }
    if (n == 2 && seg_is(seg[1], "audit")) {
        handle_audit(&c, tenant);
        return 0;
    }
    if (n == 2 && seg_is(seg[1], "events")) {
        handle_stream(&c, tenant);
        return 0;
    }
    if (n == 3 && seg_is(seg[1], "keys") && seg_is(seg[2], "signing")) {
        c.route = CH_ROUTE_SIGNING_KEY;
        if (!method_is(req, "GET"))
            fail(&c, CH_METHOD_NOT_ALLOWED, NULL, "use GET on /v1/keys/signing");
        else if (no_query(&c))
            send_json(&c, 200, ch_signing_key(ch__server.db));
        return 0;
    }
    fail(&c, CH_NOT_FOUND, NULL, "no such route");
    return 0;
}

void ch__http_register(h2o_globalconf_t *conf)
{
    h2o_hostconf_t *host =
        h2o_config_register_host(conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    h2o_handler_t *h = h2o_create_handler(path, sizeof(*h));
    h->on_req = on_req;
}
