/*
 * scope_memory.c — the in-process ephemeral scope engines.
 *
 * `memory` (the default) keeps each scope's context text in the slot charter keeps
 * beside the scope: one allocation per scope, no lookup of its own. `secure` is the
 * same with libsodium's guarded allocator: the pages are locked (never swapped),
 * marked to stay out of core dumps, fenced by guard pages, and zeroed when freed.
 * Every secure scope and every `command` scope is held in process memory whatever
 * engine is configured.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"

typedef struct text_blob {
    size_t len;
    char text[];
} text_blob;

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

static ch_status put_with(void *(*alloc)(size_t), void (*release)(void *), void **slot,
                          const char *text, size_t len)
{
    /* sodium_malloc places the block against its guard page, so the block is only
     * aligned when its size is a multiple of the alignment. */
    size_t size = sizeof(text_blob) + len + 1;
    size = (size + _Alignof(text_blob) - 1) & ~(_Alignof(text_blob) - 1);
    text_blob *b = alloc(size);
    if (b == NULL)
        return CH_NOMEM;
    b->len = len;
    memcpy(b->text, text, len);
    b->text[len] = '\0';
    if (*slot != NULL)
        release(*slot);
    *slot = b;
    return CH_OK;
}

static void secure_release(void *p)
{
    sodium_free(p); /* zeroes the whole region before unmapping it */
}

static ch_status memory_put(ch_scope_engine *en, const char *id, void **slot, const char *text,
                            size_t len, int64_t expires_at)
{
    return put_with(malloc, free, slot, text, len);
}

static ch_status secure_put(ch_scope_engine *en, const char *id, void **slot, const char *text,
                            size_t len, int64_t expires_at)
{
    return put_with(sodium_malloc, secure_release, slot, text, len);
}

static ch_status slot_get(ch_scope_engine *en, const char *id, void *const *slot,
                          ch_scope_text_cb cb, void *arg)
{
    const text_blob *b = *slot;
    if (b == NULL)
        return CH_NOT_FOUND;
    cb(arg, b->text, b->len);
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
};
