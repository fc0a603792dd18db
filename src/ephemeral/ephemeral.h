/*
 * ephemeral.h — ephemeral scopes inside libcharter.
 *
 * Every live scope is a ch__escope in memory: its owner, flow, clock and lock. Its
 * context text lives in an engine (the configured one for `scoped` scopes; process
 * memory for `command`, guarded memory for `secure`), reached through the scope's
 * slot. charter alone decides when a scope ends:
 *
 * - the table (table.c) shards scopes by id, each shard under its own mutex, and
 *   keeps a list of scopes per (tenant, agent) for agent exit;
 * - one min-heap holds one entry per scope, at or before the moment it may end. Uses
 *   only move deadlines later, so they never touch the heap: when an entry comes due
 *   the timer thread looks at the scope and either ends it, starts its lock grace, or
 *   puts it back at its new deadline. Only a deadline that moves earlier (an extend
 *   that shortens) moves its entry;
 * - the GC sweep walks every shard each gc_interval and ends whatever is past due,
 *   which is all the expiry there is when exact_expiry is off;
 * - evictions and lock warnings go to an outbox that the timer thread publishes on
 *   the event stream through the writer, many per write.
 *
 * Lock order: shard, then heap (which also guards the outbox), then agents.
 */
#ifndef CHARTER_EPHEMERAL_H
#define CHARTER_EPHEMERAL_H

#include "internal.h"

typedef enum ch__flow { CH__FLOW_COMMAND, CH__FLOW_SCOPED, CH__FLOW_SECURE } ch__flow;

#define CH__EVICT_REASONS(XX)                                                                      \
    XX(EXPIRED, "expired")                                                                         \
    XX(IDLE, "idle") XX(AGENT_EXITED, "agent_exited") XX(PURGED, "purged") XX(ERROR, "error")

typedef enum ch__evict_reason {
#define CH__EVICT_ENUM(name, text) CH__EVICT_##name,
    CH__EVICT_REASONS(CH__EVICT_ENUM)
#undef CH__EVICT_ENUM
        CH__EVICT_COUNT
} ch__evict_reason;

typedef struct ch__agent ch__agent;

typedef struct ch__escope {
    struct ch__escope *hnext;                  /* shard bucket chain */
    struct ch__escope *anext, *aprev;          /* the agent's scopes */
    ch__agent *agent;                          /* owner: tenant and agent name */
    ch_scope_engine *engine;                   /* where the context lives */
    void *slot;                                /* the engine's word */
    int64_t created_at, expires_at, last_used; /* ms since the epoch */
    int64_t grace_until;                       /* lock grace: 0, or when it ends */
    int64_t backstop;                          /* expires_at last given to the engine */
    int64_t ttl, idle_ttl;                     /* ms; idle_ttl 0 = none */
    uint32_t bytes;                            /* context text length */
    int32_t heap_idx;                          /* -1: not in the heap */
    uint8_t flow;                              /* ch__flow */
    uint8_t grace_reason;                      /* ch__evict_reason the grace will end with */
    bool locked, auto_extend, completing;
    char id[31]; /* "eph_" + 26 */
} ch__escope;

struct ch__agent {
    ch__agent *hnext;
    ch__escope *head;
    size_t nscopes;
    char tenant[CH_TENANT_MAX];
    char *json; /* the agent name as a JSON string, quotes included */
    char name[];
};

typedef struct ch__eph ch__eph;

/* Opens the engines for cfg (clearing what a previous run left) and the table. */
ch_status ch__eph_open(ch_db *db, const ch_config *cfg, ch__eph **out, ch_err *e);
/* Starts the timer thread (timers, GC sweep, publishing). */
void ch__eph_start(ch__eph *x);
/* Stops the timer thread and publishes what is left in the outbox (blocking). */
void ch__eph_stop(ch__eph *x);
/* Frees every scope (secure ones are wiped) and closes the engines. */
void ch__eph_close(ch__eph *x);
ch__eph *ch__db_eph(ch_db *db);

const ch_ephemeral_config *ch__eph_config(ch__eph *x);
ch_scope_engine *ch__eph_engine(ch__eph *x, ch__flow flow);

/* Finds id and locks its shard; NULL (nothing locked) when unknown or when it belongs
 * to another tenant. Release with ch__scope_unlock. */
ch__escope *ch__scope_lock(ch__eph *x, const char *tenant, const char *id);
void ch__scope_unlock(ch__eph *x, ch__escope *s);

/* Adds a new scope (s->id, clock and owner fields set; agent_name is the agent) and
 * returns with its shard locked, as ch__scope_lock does. */
ch_status ch__scope_insert(ch__eph *x, ch__escope *s, const char *tenant, const char *agent_name,
                           ch_err *e);
/* Ends s (shard locked): removes it everywhere, drops its context, counts and
 * publishes the eviction, frees s, and unlocks the shard. */
void ch__scope_evict(ch__eph *x, ch__escope *s, ch__evict_reason reason);
/* Looks at s (shard locked) now: true when it has ended (evicted, shard unlocked);
 * false when it lives on (shard still locked), possibly in its lock grace. */
bool ch__scope_settle(ch__eph *x, ch__escope *s, int64_t now);
/* The deadline of s moved earlier: moves its timer entry. */
void ch__scope_rearm(ch__eph *x, ch__escope *s);
/* s's context is now len bytes: sets s->bytes and the total held. */
void ch__scope_bytes(ch__eph *x, ch__escope *s, size_t len);
/* A scope moved from one flow to another (upgrade). */
void ch__scope_flow_moved(ch__eph *x, ch__flow from, ch__flow to);
/* Counts a lock or unlock. */
void ch__scope_locked(ch__eph *x, bool locked);
/* The ids of tenant/agent's scopes (malloc'd array of CH_ID_MAX strings). */
ch_status ch__scope_agent_ids(ch__eph *x, const char *tenant, const char *agent, char (**ids)[32],
                              size_t *n);
/* An engine call failed on s: with purge_on_error the scope is evicted (reason `error`,
 * shard unlocked); otherwise only the shard is unlocked. */
void ch__scope_failed(ch__eph *x, ch__escope *s);

const char *ch__flow_name(int flow);
const char *ch__evict_reason_name(int reason);

#endif /* CHARTER_EPHEMERAL_H */
