/*
 * store.c — the backend registry and the small helpers every backend shares
 * (session state names, record cleanup).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_BACKENDS 8

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static const ch_store_methods *registry[MAX_BACKENDS] = {&ch__sqlite_methods};
static int nregistry = 1;

ch_status ch_store_register(const ch_store_methods *m)
{
    ch_status st = CH_OK;
    if (m == NULL || m->name == NULL || m->version < 1)
        return CH_INVALID_VALUE;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < nregistry; i++) {
        if (strcmp(registry[i]->name, m->name) == 0) {
            st = CH_EXISTS;
            goto out;
        }
    }
    if (nregistry == MAX_BACKENDS) {
        st = CH_NOMEM;
        goto out;
    }
    registry[nregistry++] = m;
out:
    pthread_mutex_unlock(&registry_lock);
    return st;
}

const ch_store_methods *ch_store_find(const char *name)
{
    const ch_store_methods *m = NULL;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < nregistry; i++) {
        if (strcmp(registry[i]->name, name) == 0)
            m = registry[i];
    }
    pthread_mutex_unlock(&registry_lock);
    return m;
}

static const char *const state_names[] = {
#define XX(name, text) text,
    CH_SESSION_STATE_MAP(XX)
#undef XX
};

const char *ch_session_state_name(ch_session_state s)
{
    if ((unsigned)s >= CH__SESSION_STATE_COUNT)
        return NULL;
    return state_names[s];
}

int ch_session_state_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < CH__SESSION_STATE_COUNT; i++) {
        if (strcmp(state_names[i], name) == 0)
            return i;
    }
    return -1;
}

void ch_session_rec_clear(ch_session_rec *s)
{
    free(s->labels);
    free(s->budget);
    memset(s, 0, sizeof(*s));
}
