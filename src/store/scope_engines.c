/*
 * scope_engines.c — the registry of ephemeral scope engines (see charter/store.h).
 */
#include <pthread.h>
#include <string.h>

#include "internal.h"

#define MAX_ENGINES 8

static pthread_mutex_t engines_lock = PTHREAD_MUTEX_INITIALIZER;
static const ch_scope_engine_methods *engines[MAX_ENGINES] = {
    &ch__scope_memory_methods, &ch__scope_sqlite_methods, &ch__scope_redis_methods};
static int nengines = 3;

ch_status ch_scope_engine_register(const ch_scope_engine_methods *m)
{
    ch_status st = CH_OK;
    if (m == NULL || m->name == NULL || m->version < 1 || m->open == NULL)
        return CH_INVALID_VALUE;
    pthread_mutex_lock(&engines_lock);
    for (int i = 0; i < nengines; i++) {
        if (strcmp(engines[i]->name, m->name) == 0) {
            st = CH_EXISTS;
            goto out;
        }
    }
    if (nengines == MAX_ENGINES) {
        st = CH_NOMEM;
        goto out;
    }
    engines[nengines++] = m;
out:
    pthread_mutex_unlock(&engines_lock);
    return st;
}

const ch_scope_engine_methods *ch_scope_engine_find(const char *name)
{
    const ch_scope_engine_methods *m = NULL;
    pthread_mutex_lock(&engines_lock);
    for (int i = 0; i < nengines; i++) {
        if (strcmp(engines[i]->name, name) == 0)
            m = engines[i];
    }
    pthread_mutex_unlock(&engines_lock);
    return m;
}
