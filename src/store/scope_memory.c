/*
 * scope_memory.c — the in-process ephemeral scope engines.
 *
 * `memory` (the default) keeps each scope's context in the slot charter keeps beside
 * the scope: one allocation per scope, no lookup of its own. `secure` is the same with
 * libsodium's guarded allocator: the pages are locked (never swapped), marked to stay
 * out of core dumps, fenced by guard pages, and zeroed when freed. Every secure scope
 * and every `command` scope is held in process memory whatever engine is configured.
 *
 * The allocation holds the context's JSON text and, before it, an index of its
 * members (where each key and value sits in the text, sorted by key). Reading the
 * whole context hands out the text as it is; reading or setting one key finds it in
 * the index and copies bytes around it. The text is only parsed when a whole context
 * is stored (creation, merge), to build the index.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"

typedef struct member {
    uint32_t koff, klen; /* the key: JSON string text, quotes included */
    uint32_t voff, vlen; /* its value: JSON text */
} member;

typedef struct text_blob {
    uint32_t len;     /* text length */
    uint32_t n;       /* members in the index */
    uint32_t indexed; /* 0: text stored as given, with no index (not an object as
                         charter writes them; the engine stores any text) */
    member m[];       /* then the text, NUL-terminated */
} text_blob;

static char *blob_text(const text_blob *b)
{
    return (char *)&b->m[b->n];
}

static ch_scope_engine memory_engine = {&ch__scope_memory_methods};
static ch_scope_engine secure_engine = {&ch__scope_secure_methods};

static ch_status memory_open(const ch_config *cfg, ch_scope_engine **out, ch_err *e)
{
    *out = &memory_engine; /* stateless: scopes live in their slots */
    return CH_OK;
}

static ch_status secure_open(const ch_config *cfg, ch_scope_engine **out, ch_err *e)
{
    *out = &secure_engine;
    return CH_OK;
}

static void engine_close(ch_scope_engine *en)
{
}

typedef struct allocator {
    void *(*alloc)(size_t);
    void (*release)(void *);
    bool secret; /* wipe scratch copies */
} allocator;

static void secure_release(void *p)
{
    sodium_free(p); /* zeroes the whole region before unmapping it */
}

static const allocator plain = {malloc, free, false};
static const allocator guarded = {sodium_malloc, secure_release, true};

static text_blob *blob_new(const allocator *a, uint32_t n, size_t len)
{
    /* sodium_malloc places the block against its guard page, so the block is only
     * aligned when its size is a multiple of the alignment. */
    size_t size = sizeof(text_blob) + n * sizeof(member) + len + 1;
    size = (size + _Alignof(text_blob) - 1) & ~(_Alignof(text_blob) - 1);
    text_blob *b = a->alloc(size);
    if (b != NULL) {
        b->len = (uint32_t)len;
        b->n = n;
        b->indexed = 1;
    }
    return b;
}

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c != 0 ? c : (alen > blen) - (alen < blen);
}

/* The index of key in b, or -(insertion point) - 1. */
static long find_key(const text_blob *b, const char *key, size_t klen)
{
    const char *t = blob_text(b);
    long lo = 0, hi = (long)b->n - 1;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        int c = key_cmp(t + b->m[mid].koff, b->m[mid].klen, key, klen);
        if (c == 0)
            return mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -lo - 1;
}

typedef struct piece {
    const char *k, *v;
    size_t klen, vlen;
} piece;

static int piece_cmp(const void *a, const void *b)
{
    const piece *x = a, *y = b;
    return key_cmp(x->k, x->klen, y->k, y->klen);
}

/* Writes n members (sorted) as `{k:v,...}` into a new blob with its index. */
static text_blob *blob_build(const allocator *a, const piece *p, uint32_t n)
{
    size_t len = 2 + (n > 0 ? n - 1 : 0);
    for (uint32_t i = 0; i < n; i++)
        len += p[i].klen + 1 + p[i].vlen;
    if (len > UINT32_MAX)
        return NULL;
    text_blob *b = blob_new(a, n, len);
    if (b == NULL)
        return NULL;
    char *t = blob_text(b);
    size_t o = 0;
    t[o++] = '{';
    for (uint32_t i = 0; i < n; i++) {
        if (i > 0)
            t[o++] = ',';
        b->m[i].koff = (uint32_t)o;
        b->m[i].klen = (uint32_t)p[i].klen;
        memcpy(t + o, p[i].k, p[i].klen);
        o += p[i].klen;
        t[o++] = ':';
        b->m[i].voff = (uint32_t)o;
        b->m[i].vlen = (uint32_t)p[i].vlen;
        memcpy(t + o, p[i].v, p[i].vlen);
        o += p[i].vlen;
    }
    t[o++] = '}';
    t[o] = '\0';
    return b;
}

static void scratch_free(char *s, bool secret)
{
    if (s != NULL && secret)
        sodium_memzero(s, strlen(s));
    free(s);
}

/* The indexed form of the object text (NULL when it is not one, or out of memory). */
static text_blob *blob_index(const allocator *a, const char *text, size_t len)
{
    json_t *obj = json_loadb(text, len, 0, NULL);
    if (!json_is_object(obj)) {
        json_decref(obj);
        return NULL;
    }
    size_t n = json_object_size(obj);
    piece *p = calloc(n ? n : 1, sizeof(*p));
    char **owned = calloc(n ? 2 * n : 1, sizeof(*owned));
    bool ok = p != NULL && owned != NULL;
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(obj, k, v)
    {
        if (!ok)
            break;
        json_t *ks = json_string(k);
        owned[2 * i] = ks ? json_dumps(ks, JSON_ENCODE_ANY) : NULL;
        owned[2 * i + 1] = ch_json_canonical(v, NULL);
        json_decref(ks);
        ok = owned[2 * i] != NULL && owned[2 * i + 1] != NULL;
        if (ok)
            p[i] = (piece){owned[2 * i], owned[2 * i + 1], strlen(owned[2 * i]),
                           strlen(owned[2 * i + 1])};
        i++;
    }
    text_blob *b = NULL;
    if (ok) {
        qsort(p, n, sizeof(*p), piece_cmp);
        b = blob_build(a, p, (uint32_t)n);
    }
    for (size_t j = 0; owned != NULL && j < 2 * i; j++)
        scratch_free(owned[j], a->secret);
    free(owned);
    free(p);
    if (a->secret)
        ch_json_wipe(obj);
    json_decref(obj);
    return b;
}

/* Stores a whole context. An object in the form charter writes (compact, sorted) gets
 * its index; any other text is kept byte for byte and indexed on its first put_key. */
static ch_status put_with(const allocator *a, void **slot, const char *text, size_t len)
{
    if (len > UINT32_MAX)
        return CH_INVALID_VALUE;
    text_blob *b = blob_index(a, text, len);
    if (b != NULL && (b->len != len || memcmp(blob_text(b), text, len) != 0)) {
        a->release(b);
        b = NULL;
    }
    if (b == NULL) {
        if ((b = blob_new(a, 0, len)) == NULL)
            return CH_NOMEM;
        b->indexed = 0;
        memcpy(blob_text(b), text, len);
        blob_text(b)[len] = '\0';
    }
    if (*slot != NULL)
        a->release(*slot);
    *slot = b;
    return CH_OK;
}

/* Sets one key by copying the text around it; nothing is parsed. */
static ch_status put_key_with(const allocator *a, void **slot, const char *key, size_t klen,
                              const char *value, size_t vlen, size_t max, size_t *total)
{
    static const text_blob empty = {2, 0, 1};
    if (*slot != NULL && !((text_blob *)*slot)->indexed) {
        text_blob *ix = blob_index(a, blob_text(*slot), ((text_blob *)*slot)->len);
        if (ix == NULL)
            return CH_IO; /* the stored text is not an object */
        a->release(*slot);
        *slot = ix;
    }
    const text_blob *old = *slot != NULL ? *slot : &empty;
    const char *t = *slot != NULL ? blob_text(old) : "{}";
    long at = find_key(old, key, klen);
    uint32_t n = old->n + (at < 0 ? 1 : 0);
    piece stack[16], *p = n <= 16 ? stack : malloc(n * sizeof(*p));
    if (p == NULL)
        return CH_NOMEM;
    size_t pos = at < 0 ? (size_t)(-at - 1) : (size_t)at, j = 0;
    for (uint32_t i = 0; i < old->n; i++) {
        if (i == pos)
            p[j++] = (piece){key, value, klen, vlen};
        if (at >= 0 && i == pos)
            continue; /* replaced */
        p[j++] = (piece){t + old->m[i].koff, t + old->m[i].voff, old->m[i].klen, old->m[i].vlen};
    }
    if (pos == old->n)
        p[j++] = (piece){key, value, klen, vlen};
    size_t len = 2 + (n > 0 ? n - 1 : 0);
    for (uint32_t i = 0; i < n; i++)
        len += p[i].klen + 1 + p[i].vlen;
    ch_status st = CH_OK;
    text_blob *b = NULL;
    if (len > max)
        st = CH_INVALID_VALUE;
    else if ((b = blob_build(a, p, n)) == NULL)
        st = CH_NOMEM;
    if (p != stack)
        free(p);
    if (st != CH_OK)
        return st;
    if (*slot != NULL)
        a->release(*slot);
    *slot = b;
    *total = b->len;
    return CH_OK;
}

static ch_status memory_put(ch_scope_engine *en, const char *id, void **slot, const char *text,
                            size_t len, int64_t expires_at)
{
    return put_with(&plain, slot, text, len);
}

static ch_status secure_put(ch_scope_engine *en, const char *id, void **slot, const char *text,
                            size_t len, int64_t expires_at)
{
    return put_with(&guarded, slot, text, len);
}

static ch_status memory_put_key(ch_scope_engine *en, const char *id, void **slot, const char *key,
                                size_t klen, const char *value, size_t vlen, size_t max,
                                int64_t expires_at, size_t *total)
{
    return put_key_with(&plain, slot, key, klen, value, vlen, max, total);
}

static ch_status secure_put_key(ch_scope_engine *en, const char *id, void **slot, const char *key,
                                size_t klen, const char *value, size_t vlen, size_t max,
                                int64_t expires_at, size_t *total)
{
    return put_key_with(&guarded, slot, key, klen, value, vlen, max, total);
}

static ch_status slot_get(ch_scope_engine *en, const char *id, void *const *slot,
                          ch_scope_text_cb cb, void *arg)
{
    const text_blob *b = *slot;
    if (b == NULL)
        return CH_NOT_FOUND;
    cb(arg, blob_text(b), b->len);
    return CH_OK;
}

static ch_status slot_get_key(ch_scope_engine *en, const char *id, void *const *slot,
                              const char *key, size_t klen, ch_scope_text_cb cb, void *arg)
{
    const text_blob *b = *slot;
    if (b != NULL && !b->indexed) {
        /* Kept as given (not in charter's form): look the key up the slow way. */
        json_t *obj = json_loadb(blob_text(b), b->len, 0, NULL);
        json_t *k = json_loadb(key, klen, JSON_DECODE_ANY, NULL);
        json_t *v = json_is_string(k) ? json_object_get(obj, json_string_value(k)) : NULL;
        char *text = v ? ch_json_canonical(v, NULL) : NULL;
        if (text != NULL)
            cb(arg, text, strlen(text));
        ch_status st = !json_is_object(obj) ? CH_IO
                       : v == NULL          ? CH_NOT_FOUND
                       : text == NULL       ? CH_NOMEM
                                            : CH_OK;
        if (text != NULL && en == &secure_engine)
            sodium_memzero(text, strlen(text));
        free(text);
        if (en == &secure_engine)
            ch_json_wipe(obj);
        json_decref(obj);
        json_decref(k);
        return st;
    }
    long at = b != NULL ? find_key(b, key, klen) : -1;
    if (at < 0)
        return CH_NOT_FOUND;
    cb(arg, blob_text(b) + b->m[at].voff, b->m[at].vlen);
    return CH_OK;
}

static ch_status memory_del(ch_scope_engine *en, const char *id, void **slot)
{
    free(*slot);
    *slot = NULL;
    return CH_OK;
}

static ch_status secure_del(ch_scope_engine *en, const char *id, void **slot)
{
    if (*slot != NULL)
        sodium_free(*slot);
    *slot = NULL;
    return CH_OK;
}

const ch_scope_engine_methods ch__scope_memory_methods = {
    .version = CH_SCOPE_ENGINE_VERSION,
    .name = "memory",
    .open = memory_open,
    .close = engine_close,
    .put = memory_put,
    .get = slot_get,
    .del = memory_del,
    .expire = NULL,
    .put_key = memory_put_key,
    .get_key = slot_get_key,
};

const ch_scope_engine_methods ch__scope_secure_methods = {
    .version = CH_SCOPE_ENGINE_VERSION,
    .name = "secure",
    .open = secure_open,
    .close = engine_close,
    .put = secure_put,
    .get = slot_get,
    .del = secure_del,
    .expire = NULL,
    .put_key = secure_put_key,
    .get_key = slot_get_key,
};
