/*
 * scope_sqlite.c — the `sqlite` ephemeral scope engine: context text in a volatile
 * SQLite file, `<data-dir>/ephemeral.db`, so that large contexts live on disk (in the
 * page cache) instead of in charter's heap.
 *
 * The file is scratch state, never a system of record: open() deletes whatever a
 * previous run left (with its -journal, -wal and -shm files) and creates it afresh,
 * and close() deletes it again, so a scope's context never outlives the process that
 * held the scope. That is what makes the cheap settings below safe.
 *
 * One connection serves every thread, guarded by one mutex: each call is a single
 * short statement on a b-tree keyed by scope id, so there is little to gain from more
 * connections, and one connection lets the file be locked exclusively once.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "internal.h"

#define DB_FILE "ephemeral.db"

/*
 * journal_mode=MEMORY, synchronous=OFF, locking_mode=EXCLUSIVE:
 * - synchronous=OFF: nothing is ever fsynced. A crash can leave a torn file, and the
 *   next open() deletes it unread, so durability would buy nothing.
 * - journal_mode=MEMORY rather than OFF: the rollback journal stays in memory (no
 *   journal file, no extra writes), but a statement that fails half-way (disk full,
 *   an I/O error while writing the overflow pages of a large context) is still rolled
 *   back. With OFF it could not be, and the file the running process keeps using
 *   could be left corrupt. A crash mid-write loses the journal, which again does not
 *   matter since the file is discarded at the next start.
 * - not WAL: WAL writes every page twice (log, then checkpoint) and pays for a
 *   checkpointer; its benefit, readers beside a writer on other connections, is of no
 *   use with a single connection.
 * - locking_mode=EXCLUSIVE: the one connection takes the file lock on its first write
 *   and keeps it, instead of locking and unlocking the file on every statement.
 * - cache_size: 8 MiB of page cache at most. Choosing this engine over `memory` means
 *   choosing to keep contexts out of the heap; a larger cache would undo that.
 */
static const char setup_sql[] =
    "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE;"
    " PRAGMA cache_size=-8192; PRAGMA temp_store=MEMORY;"
    " CREATE TABLE scope(id TEXT PRIMARY KEY, context TEXT NOT NULL,"
    " expires_at INTEGER NOT NULL) WITHOUT ROWID;";

enum stmt_id { S_PUT, S_GET, S_DEL, S__COUNT };

static const char *const stmt_sql[S__COUNT] = {
    /* An upsert updates the row in place; INSERT OR REPLACE would delete and reinsert. */
    [S_PUT] = "INSERT INTO scope(id, context, expires_at) VALUES(?1, ?2, ?3)"
              " ON CONFLICT(id) DO UPDATE SET context = excluded.context,"
              " expires_at = excluded.expires_at",
    [S_GET] = "SELECT context FROM scope WHERE id = ?1",
    [S_DEL] = "DELETE FROM scope WHERE id = ?1",
};

typedef struct sqlite_engine {
    ch_scope_engine base; /* must be first */
    pthread_mutex_t mu;   /* guards db and stmts: one statement runs at a time */
    sqlite3 *db;
    sqlite3_stmt *stmts[S__COUNT];
    bool own_files; /* open() cleared the place: close() removes what is there */
    char path[sizeof(((ch_config *)0)->data_dir) + sizeof("/" DB_FILE "-journal")];
} sqlite_engine;

static const char *const leftover_suffixes[] = {"", "-journal", "-wal", "-shm"};

/* Logs the connection's last error; called with mu held (the message belongs to the
 * connection's last call). */
static ch_status io_error(sqlite_engine *s, const char *op)
{
    ch_log(CH_LOG_ERROR, "sqlite scope engine error", "{s:s, s:s, s:s, s:i}", "op", op, "file",
           s->path, "error", sqlite3_errmsg(s->db), "code", sqlite3_extended_errcode(s->db));
    return CH_IO;
}

/* Deletes the database file and every file SQLite may keep beside it. */
static ch_status remove_files(const char *path, ch_err *e)
{
    char p[sizeof(((sqlite_engine *)0)->path)];
    for (size_t i = 0; i < sizeof(leftover_suffixes) / sizeof(leftover_suffixes[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, leftover_suffixes[i]);
        if (unlink(p) != 0 && errno != ENOENT)
            return ch_err_set(e, CH_IO, NULL, "cannot remove %s: %s", p, strerror(errno));
    }
    return CH_OK;
}

static void sq_close(ch_scope_engine *en)
{
    sqlite_engine *s = (sqlite_engine *)en;
    if (s == NULL)
        return;
    for (int i = 0; i < S__COUNT; i++)
        sqlite3_finalize(s->stmts[i]);
    sqlite3_close(s->db);
    /* Nothing in the file is of use to anyone once the engine is closed, and contexts
     * may be sensitive: leave nothing behind. */
    ch_err e;
    if (s->own_files && remove_files(s->path, &e) != CH_OK)
        ch_log(CH_LOG_WARN, "cannot remove the ephemeral scope file", "{s:s}", "error", e.message);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static ch_status sq_open(const ch_config *cfg, ch_scope_engine **out, ch_err *e)
{
    sqlite_engine *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    s->base.methods = &ch__scope_sqlite_methods;
    pthread_mutex_init(&s->mu, NULL);

    if ((size_t)snprintf(s->path, sizeof(s->path), "%s/" DB_FILE, cfg->data_dir) >=
        sizeof(s->path)) {
        ch_err_set(e, CH_CONFIG, "data_dir", "data_dir is too long");
        goto fail;
    }
    if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
        ch_err_set(e, CH_IO, "data_dir", "cannot create data dir %s: %s", cfg->data_dir,
                   strerror(errno));
        goto fail;
    }
    if (remove_files(s->path, e) != CH_OK)
        goto fail;
    s->own_files = true;
    /* NOMUTEX: s->mu already serializes every use of the connection, and has to,
     * since a statement's row stays current from step to reset. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(s->path, &s->db, flags, NULL) != SQLITE_OK) {
        ch_err_set(e, CH_IO, NULL, "cannot create %s: %s", s->path,
                   s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    char *msg = NULL;
    if (sqlite3_exec(s->db, setup_sql, NULL, NULL, &msg) != SQLITE_OK) {
        ch_err_set(e, CH_IO, NULL, "cannot set up %s: %s", s->path, msg ? msg : "error");
        sqlite3_free(msg);
        goto fail;
    }
    for (int i = 0; i < S__COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmts[i],
                               NULL) != SQLITE_OK) {
            ch_err_set(e, CH_IO, NULL, "cannot prepare a statement on %s: %s", s->path,
                       sqlite3_errmsg(s->db));
            goto fail;
        }
    }
    *out = &s->base;
    return CH_OK;
fail:
    sq_close(&s->base);
    return e ? e->status : CH_IO;
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st); /* put binds the caller's text SQLITE_STATIC */
}

static ch_status sq_put(ch_scope_engine *en, const char *id, void **slot, const char *text,
                        size_t len, int64_t expires_at)
{
    sqlite_engine *s = (sqlite_engine *)en;
    ch_status rc = CH_OK;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = s->stmts[S_PUT];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    /* Bound with its length, the text is stored byte for byte. */
    if (sqlite3_bind_text64(st, 2, len ? text : "", len, SQLITE_STATIC, SQLITE_UTF8) != SQLITE_OK) {
        rc = io_error(s, "put"); /* SQLITE_TOOBIG: over SQLite's 1 GB string limit */
    } else {
        sqlite3_bind_int64(st, 3, expires_at);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = io_error(s, "put");
    }
    done(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* cb runs with the engine's mutex held (the text is the current row's), so it must
 * only copy or parse the text, as charter's callbacks do. */
static ch_status sq_get(ch_scope_engine *en, const char *id, void *const *slot, ch_scope_text_cb cb,
                        void *arg)
{
    sqlite_engine *s = (sqlite_engine *)en;
    ch_status rc = CH_NOT_FOUND;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = s->stmts[S_GET];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(st, 0);
        int len = sqlite3_column_bytes(st, 0);
        if (text == NULL && sqlite3_errcode(s->db) == SQLITE_NOMEM) {
            rc = CH_NOMEM;
        } else {
            cb(arg, text ? text : "", (size_t)len);
            rc = CH_OK;
        }
    } else if (r != SQLITE_DONE) {
        rc = io_error(s, "get");
    }
    done(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ch_status sq_del(ch_scope_engine *en, const char *id, void **slot)
{
    sqlite_engine *s = (sqlite_engine *)en;
    ch_status rc = CH_OK;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = s->stmts[S_DEL];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = io_error(s, "del");
    done(st);
    pthread_mutex_unlock(&s->mu);
    *slot = NULL;
    return rc;
}

/* expire is NULL: nothing in this engine acts on time (charter's timers decide expiry
 * and the file is cleared at every start), so moving the deadline would cost a write
 * per extension for no effect. expires_at holds the deadline given at the last put,
 * for whoever inspects the file. */
const ch_scope_engine_methods ch__scope_sqlite_methods = {
    .version = CH_SCOPE_ENGINE_VERSION,
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .put = sq_put,
    .get = sq_get,
    .del = sq_del,
    .expire = NULL,
};
