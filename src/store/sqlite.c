/*
 * sqlite.c — the embedded default storage backend: one SQLite database file,
 * `<data-dir>/charter.db`, in WAL mode.
 *
 * Durability is synchronous=FULL's, split in two: the writer connection commits with
 * synchronous=OFF (its COMMIT writes the WAL frames and returns) and sync() then
 * fdatasyncs the WAL file, from another thread, while the writer already runs the next
 * batch. Nothing is acknowledged before that fsync. Checkpoints run on their own
 * connection with synchronous=FULL, so the WAL is fsynced before any frame is copied
 * into the database file and the database file after.
 *
 * Each connection caches its prepared statements (prepared on first use with
 * SQLITE_PREPARE_PERSISTENT). Event bodies are stored as canonical JSON text, keyed
 * by (session rowid, seq) in WITHOUT ROWID tables so a session's events are contiguous
 * on disk and a range read is one b-tree walk.
 *
 * Appended events do not go there directly. A commit writes every page it dirtied to
 * the WAL whole (then the fsync and the checkpoint write it again), and appends to
 * many sessions would each dirty their own session's page of `events`: one 4 KiB page
 * per appended event. So appends go to `events_tail`, a plain log in arrival order,
 * where the events of one commit share a page or two. Once the tail holds FOLD_ROWS
 * events, the writer folds it into `events` in (session, seq) order at the start of a
 * batch, in that batch's transaction: each session's page is then written once per
 * fold instead of once per event. An append of at least a page of events has pages of
 * its own anyway: it goes straight to `events` (event_append).
 *
 * A (session, seq) is in one of the two tables at most (the tail's unique index and
 * a lookup in events refuse a duplicate), readers merge both in seq order in one
 * statement (one snapshot), and whatever moves events out of `events` (compaction)
 * folds the tail first. The tail stays small, so its index fits in a few pages that
 * all the events of a commit share.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "internal.h"

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS tenants(name TEXT PRIMARY KEY, created_at INTEGER NOT NULL)"
    " WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS api_keys(hash BLOB PRIMARY KEY, tenant TEXT NOT NULL,"
    " created_at INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS sessions("
    " sid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,"
    " user TEXT NOT NULL, agent TEXT NOT NULL, mandate TEXT NOT NULL,"
    " labels TEXT NOT NULL, budget TEXT,"
    " usage_tokens INTEGER NOT NULL, usage_cost_usd REAL NOT NULL,"
    " usage_tool_calls INTEGER NOT NULL, state TEXT NOT NULL,"
    " seq INTEGER NOT NULL, summary_seq INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS sessions_by_tenant ON sessions(tenant, id);"
    "CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions(state);"
    "CREATE TABLE IF NOT EXISTS events(sid INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " at INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY(sid, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS events_archive(sid INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " at INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY(sid, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS facts(sid INTEGER NOT NULL, key TEXT NOT NULL,"
    " value TEXT NOT NULL, updated_at INTEGER NOT NULL, PRIMARY KEY(sid, key)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS sessions_by_mandate ON sessions(tenant, mandate, id)"
    " WHERE mandate <> '';"
    "CREATE TABLE IF NOT EXISTS mandates(mid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    " tenant TEXT NOT NULL, doc TEXT NOT NULL, spent_tokens INTEGER NOT NULL DEFAULT 0,"
    " spent_cost_usd REAL NOT NULL DEFAULT 0, spent_tool_calls INTEGER NOT NULL DEFAULT 0,"
    " state TEXT, reason TEXT, updated_at INTEGER);"
    "CREATE TABLE IF NOT EXISTS stream(id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " tenant TEXT NOT NULL, type TEXT NOT NULL, at INTEGER NOT NULL, data TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS stream_by_tenant ON stream(tenant, id);"
    "CREATE TABLE IF NOT EXISTS audit(id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " tenant TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL, mandate TEXT NOT NULL,"
    " lineage TEXT NOT NULL, data TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS audit_by_lineage ON audit(tenant, lineage, id);"
    "CREATE TABLE IF NOT EXISTS events_tail(pos INTEGER PRIMARY KEY, sid INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, at INTEGER NOT NULL, body TEXT NOT NULL);"
    "CREATE UNIQUE INDEX IF NOT EXISTS events_tail_by_session ON events_tail(sid, seq);"
    "INSERT OR IGNORE INTO meta(key, value) VALUES('schema_version', '3');"
    "UPDATE meta SET value = '3' WHERE key = 'schema_version';";

#define SCHEMA_VERSION 3

/* Appended events wait in events_tail until it holds this many (see above). A reader
 * scans at most this many rows besides its own session's. */
#define FOLD_ROWS 1024

#define SESSION_COLS                                                                      \
    "sid, id, tenant, user, agent, mandate, labels, budget, usage_tokens, usage_cost_usd, " \
    "usage_tool_calls, state, seq, summary_seq, created_at, updated_at"

/* Every statement a connection uses, prepared lazily and kept for its lifetime. */
enum stmt_id {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SAVEPOINT,
    S_RELEASE,
    S_ROLLBACK_TO,
    S_READ_BEGIN,
    S_READ_END,
    S_TENANT_PUT,
    S_KEY_PUT,
    S_KEY_GET,
    S_KEY_COUNT,
    S_SESSION_INSERT,
    S_SESSION_GET,
    S_SESSION_UPDATE,
    S_SESSION_PROGRESS,
    S_SESSION_DELETE,
    S_SESSION_DELETE_EVENTS,
    S_SESSION_DELETE_TAIL,
    S_SESSION_DELETE_ARCHIVE,
    S_SESSION_DELETE_FACTS,
    S_SESSION_LIST,
    S_SESSION_DUE,
    S_EVENT_FOLDED,
    S_EVENT_INSERT,
    S_EVENT_IN_TAIL,
    S_EVENT_INSERT_FOLDED,
    S_EVENT_LIST,
    S_EVENT_LIST_ARCHIVED,
    S_EVENT_ARCHIVE_COPY,
    S_EVENT_ARCHIVE_DELETE,
    S_TAIL_COUNT,
    S_TAIL_FOLD,
    S_TAIL_CLEAR,
    S_FACT_PUT,
    S_FACT_GET,
    S_FACT_DELETE,
    S_FACT_LIST,
    S_SESSION_BY_MANDATE,
    S_MANDATE_PUT,
    S_MANDATE_SPEND,
    S_MANDATE_LOAD,
    S_MANDATE_SET_STATE,
    S_STREAM_APPEND,
    S_STREAM_LIST,
    S_STREAM_LAST,
    S_STREAM_TRIM,
    S_AUDIT_APPEND,
    S_AUDIT_LIST,
    S_AUDIT_LIST_SUBTREE,
    S__COUNT
};

static const char *const stmt_sql[S__COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SAVEPOINT] = "SAVEPOINT req",
    [S_RELEASE] = "RELEASE req",
    [S_ROLLBACK_TO] = "ROLLBACK TO req",
    [S_READ_BEGIN] = "BEGIN",
    [S_READ_END] = "COMMIT",
    [S_TENANT_PUT] = "INSERT OR IGNORE INTO tenants(name, created_at) VALUES(?1, ?2)",
    [S_KEY_PUT] = "INSERT INTO api_keys(hash, tenant, created_at) VALUES(?1, ?2, ?3)",
    [S_KEY_GET] = "SELECT tenant FROM api_keys WHERE hash = ?1",
    [S_KEY_COUNT] = "SELECT count(*) FROM api_keys",
    [S_SESSION_INSERT] = "INSERT INTO sessions(" SESSION_COLS ") VALUES(NULL, ?2, ?3, ?4, ?5, ?6,"
                         " ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    [S_SESSION_GET] = "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1 AND tenant = ?2",
    [S_SESSION_UPDATE] = "UPDATE sessions SET user = ?4, agent = ?5, mandate = ?6, labels = ?7,"
                         " budget = ?8, usage_tokens = ?9, usage_cost_usd = ?10,"
                         " usage_tool_calls = ?11, state = ?12, seq = ?13, summary_seq = ?14,"
                         " updated_at = ?16 WHERE sid = ?1",
    /* Sets no indexed column, so no index entry is rewritten. */
    [S_SESSION_PROGRESS] = "UPDATE sessions SET usage_tokens = ?2, usage_cost_usd = ?3,"
                           " usage_tool_calls = ?4, seq = ?5, updated_at = ?6 WHERE sid = ?1",
    [S_SESSION_DELETE] = "DELETE FROM sessions WHERE sid = ?1",
    [S_SESSION_DELETE_EVENTS] = "DELETE FROM events WHERE sid = ?1",
    [S_SESSION_DELETE_TAIL] = "DELETE FROM events_tail WHERE sid = ?1",
    [S_SESSION_DELETE_ARCHIVE] = "DELETE FROM events_archive WHERE sid = ?1",
    [S_SESSION_DELETE_FACTS] = "DELETE FROM facts WHERE sid = ?1",
    [S_SESSION_LIST] = "SELECT " SESSION_COLS " FROM sessions WHERE tenant = ?1 AND id > ?2"
                       " AND (?3 IS NULL OR user = ?3) AND (?4 IS NULL OR state = ?4)"
                       " AND (?5 IS NULL OR mandate = ?5) ORDER BY id LIMIT ?6",
    [S_SESSION_DUE] = "SELECT " SESSION_COLS " FROM sessions WHERE state = ?1 AND updated_at < ?2"
                      " ORDER BY updated_at LIMIT ?3",
    /* A seq taken in the tail fails its unique index; one already folded, S_EVENT_FOLDED.
     * (Not one INSERT ... SELECT: that form makes SQLite copy every page the statement
     * changes into a statement journal first, and the tail's last page is shared.) */
    [S_EVENT_FOLDED] = "SELECT 1 FROM events WHERE sid = ?1 AND seq BETWEEN ?2 AND ?3",
    [S_EVENT_INSERT] = "INSERT INTO events_tail(sid, seq, at, body) VALUES(?1, ?2, ?3, ?4)",
    [S_EVENT_IN_TAIL] = "SELECT 1 FROM events_tail WHERE sid = ?1 AND seq BETWEEN ?2 AND ?3",
    [S_EVENT_INSERT_FOLDED] = "INSERT INTO events(sid, seq, at, body) VALUES(?1, ?2, ?3, ?4)",
    /* Compound SELECTs with ORDER BY are merged arm by arm (each arm in seq order), so
     * a read stops after limit rows however long the history is. */
    [S_EVENT_LIST] = "SELECT seq, at, body FROM events WHERE sid = ?1 AND seq > ?2"
                     " UNION ALL SELECT seq, at, body FROM events_tail WHERE sid = ?1"
                     " AND seq > ?2 ORDER BY seq LIMIT ?3",
    [S_EVENT_LIST_ARCHIVED] = "SELECT seq, at, body FROM events_archive WHERE sid = ?1 AND seq > ?2"
                              " UNION ALL SELECT seq, at, body FROM events WHERE sid = ?1"
                              " AND seq > max(?2, ?4) UNION ALL SELECT seq, at, body"
                              " FROM events_tail WHERE sid = ?1 AND seq > max(?2, ?4)"
                              " ORDER BY seq LIMIT ?3",
    [S_EVENT_ARCHIVE_COPY] = "INSERT INTO events_archive(sid, seq, at, body)"
                             " SELECT sid, seq, at, body FROM events"
                             " WHERE sid = ?1 AND seq <= ?2 AND seq <> ?3",
    [S_EVENT_ARCHIVE_DELETE] = "DELETE FROM events WHERE sid = ?1 AND seq <= ?2",
    [S_TAIL_COUNT] = "SELECT count(*) FROM events_tail",
    [S_TAIL_FOLD] = "INSERT INTO events(sid, seq, at, body)"
                    " SELECT sid, seq, at, body FROM events_tail ORDER BY sid, seq",
    [S_TAIL_CLEAR] = "DELETE FROM events_tail",
    [S_FACT_PUT] = "INSERT INTO facts(sid, key, value, updated_at) VALUES(?1, ?2, ?3, ?4)"
                   " ON CONFLICT(sid, key) DO UPDATE SET value = excluded.value,"
                   " updated_at = excluded.updated_at",
    [S_FACT_GET] = "SELECT key, value, updated_at FROM facts WHERE sid = ?1 AND key = ?2",
    [S_FACT_DELETE] = "DELETE FROM facts WHERE sid = ?1 AND key = ?2",
    [S_FACT_LIST] = "SELECT key, value, updated_at FROM facts WHERE sid = ?1 ORDER BY key",
    [S_SESSION_BY_MANDATE] = "SELECT " SESSION_COLS " FROM sessions WHERE tenant = ?1"
                             " AND mandate = ?2 AND mandate <> '' ORDER BY id",
    [S_MANDATE_PUT] = "INSERT INTO mandates(id, tenant, doc, spent_tokens, spent_cost_usd,"
                      " spent_tool_calls) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"
                      " ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, state = NULL,"
                      " reason = NULL, updated_at = NULL",
    [S_MANDATE_SET_STATE] = "UPDATE mandates SET state = ?2, reason = ?3, updated_at = ?4"
                            " WHERE id = ?1",
    /* Saturating at the largest integer, like the registry's totals. */
    [S_MANDATE_SPEND] = "UPDATE mandates SET spent_tokens = CASE WHEN spent_tokens >"
                        " 9223372036854775807 - ?2 THEN 9223372036854775807"
                        " ELSE spent_tokens + ?2 END, spent_cost_usd = spent_cost_usd + ?3,"
                        " spent_tool_calls = CASE WHEN spent_tool_calls >"
                        " 9223372036854775807 - ?4 THEN 9223372036854775807"
                        " ELSE spent_tool_calls + ?4 END WHERE id = ?1",
    [S_MANDATE_LOAD] = "SELECT id, tenant, doc, spent_tokens, spent_cost_usd, spent_tool_calls,"
                       " state, reason, updated_at FROM mandates ORDER BY mid",
    [S_STREAM_APPEND] = "INSERT INTO stream(tenant, type, at, data) VALUES(?1, ?2, ?3, ?4)",
    [S_STREAM_LIST] = "SELECT id, tenant, type, at, data FROM stream WHERE tenant = ?1"
                      " AND id > ?2 ORDER BY id LIMIT ?3",
    [S_STREAM_LAST] = "SELECT coalesce(max(id), 0) FROM stream",
    /* Ids follow commit order, so the old entries are a prefix of the table: they are
     * found among its first 100,000 rows (a bounded scan per trim), without an index on
     * `at` that every append would pay for. */
    [S_STREAM_TRIM] = "DELETE FROM stream WHERE id <= (SELECT max(id) FROM (SELECT id, at"
                      " FROM stream ORDER BY id LIMIT 100000) WHERE at < ?1)",
    [S_AUDIT_APPEND] = "INSERT INTO audit(tenant, at, kind, mandate, lineage, data)"
                       " VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [S_AUDIT_LIST] = "SELECT id, tenant, at, kind, mandate, lineage, data FROM audit"
                     " WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    /* A subtree is the lineage range [prefix, prefix with its final '/' raised to '0'). */
    [S_AUDIT_LIST_SUBTREE] = "SELECT id, tenant, at, kind, mandate, lineage, data FROM audit"
                             " WHERE tenant = ?1 AND lineage >= ?4 AND lineage < ?5"
                             " AND id > ?2 ORDER BY id LIMIT ?3",
};

/* The checkpointer: the writer connection never checkpoints itself (that would put a
 * burst of random writes and an fsync of the database file into some unlucky
 * commit). A WAL hook wakes this thread, which copies WAL frames back into the
 * database on its own connection while the writer keeps committing. */
typedef struct checkpointer {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool wake, stop;
    sqlite3 *db;
} checkpointer;

typedef struct sqlite_store {
    ch_store base; /* must be first */
    sqlite3 *db;
    sqlite3_stmt *stmts[S__COUNT];
    checkpointer *ckpt; /* writer connections only */
    char wal_path[2100];
    int wal_fd;         /* writer: the WAL file, for sync(); -1 until opened */
    ino_t wal_ino;
    int64_t tail_rows;  /* writer: rows in events_tail; -1 after a rollback (recounted) */
} sqlite_store;

#define CHECKPOINT_PAGES 8192  /* wake the checkpointer once the WAL holds this many */
#define RESTART_PAGES 32768    /* past this (128 MiB), rewind the WAL */

static ch_status io_error(sqlite_store *s, const char *what)
{
    ch_log(CH_LOG_ERROR, "sqlite error", "{s:s, s:s, s:i}", "op", what, "error",
           sqlite3_errmsg(s->db), "code", sqlite3_extended_errcode(s->db));
    return CH_IO;
}

/* The cached statement id, reset and with bindings cleared, ready to bind. */
static sqlite3_stmt *stmt(sqlite_store *s, enum stmt_id id)
{
    sqlite3_stmt *st = s->stmts[id];
    if (st == NULL) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
            SQLITE_OK) {
            io_error(s, stmt_sql[id]);
            return NULL;
        }
        s->stmts[id] = st;
    }
    return st;
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* Runs a statement that returns no rows. */
static ch_status exec_stmt(sqlite_store *s, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    done(st);
    if (rc == SQLITE_DONE)
        return CH_OK;
    if (rc == SQLITE_CONSTRAINT)
        return CH_EXISTS;
    return io_error(s, sqlite3_sql(st));
}

static ch_status simple(ch_store *base, enum stmt_id id)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3_stmt *st = stmt(s, id);
    return st ? exec_stmt(s, st) : CH_IO;
}

static ch_status exec_script(sqlite_store *s, const char *sql, ch_err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        ch_err_set(e, CH_IO, NULL, "sqlite: %s", msg ? msg : "error");
        sqlite3_free(msg);
        return CH_IO;
    }
    return CH_OK;
}

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
    checkpointer *c = arg;
    if (pages >= CHECKPOINT_PAGES) {
        pthread_mutex_lock(&c->mu);
        c->wake = true;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return SQLITE_OK;
}

static void *checkpointer_main(void *arg)
{
    checkpointer *c = arg;
    pthread_setname_np(pthread_self(), "ch-checkpoint");
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        while (!c->wake && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        c->wake = false;
        pthread_mutex_unlock(&c->mu);
        int log = 0, done = 0;
        /* PASSIVE copies frames without blocking the writer or readers. Under steady
         * writes it never quite catches up, and the WAL is only rewound from its start
         * once everything was copied; so when the WAL has grown large, a RESTART
         * follows, which waits for a gap between two commits, copies the few frames
         * left, and makes the next commit start the WAL over. */
        int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        if (rc == SQLITE_OK && log >= RESTART_PAGES)
            rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_RESTART, &log, &done);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            ch_log(CH_LOG_WARN, "checkpoint failed", "{s:s}", "error", sqlite3_errmsg(c->db));
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void checkpointer_stop(sqlite_store *s)
{
    checkpointer *c = s->ckpt;
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->tid, NULL);
    /* A last full checkpoint so a cleanly stopped data dir is one file again. */
    sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    sqlite3_close(c->db);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    s->ckpt = NULL;
}

static ch_status checkpointer_start(sqlite_store *s, const char *path, ch_err *e)
{
    checkpointer *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        ch_err_set(e, CH_IO, NULL, "cannot open %s for checkpoints", path);
        goto fail;
    }
    sqlite3_busy_timeout(c->db, 10000);
    /* A connection learns that the database is in WAL mode only once it has read it. */
    if (sqlite3_exec(c->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                     NULL) != SQLITE_OK) {
        ch_err_set(e, CH_IO, NULL, "cannot prepare the checkpointer: %s", sqlite3_errmsg(c->db));
        goto fail;
    }
    if (pthread_create(&c->tid, NULL, checkpointer_main, c) != 0) {
        ch_err_set(e, CH_INTERNAL, NULL, "cannot start the checkpointer");
        goto fail;
    }
    s->ckpt = c;
    sqlite3_wal_hook(s->db, on_wal_commit, c);
    return CH_OK;
fail:
    sqlite3_close(c->db);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    return e ? e->status : CH_IO;
}

static void s_close(ch_store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    if (s == NULL)
        return;
    for (int i = 0; i < S__COUNT; i++)
        sqlite3_finalize(s->stmts[i]);
    if (s->ckpt != NULL)
        sqlite3_wal_hook(s->db, NULL, NULL);
    sqlite3_close(s->db);
    checkpointer_stop(s);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    free(s);
}

/* fdatasync of the WAL through our own descriptor (fsync acts on the file, whichever
 * descriptor names it). Reopened if SQLite ever replaced the file. */
static ch_status s_sync(ch_store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    struct stat st;
    /* Runs on the syncer thread while the writer uses s->db: it must not touch the
     * SQLite handle, not even for an error message. */
    if (stat(s->wal_path, &st) != 0) {
        if (errno == ENOENT)
            return CH_OK;
        ch_log(CH_LOG_ERROR, "cannot stat the WAL", "{s:s}", "error", strerror(errno));
        return CH_IO;
    }
    if (s->wal_fd < 0 || st.st_ino != s->wal_ino) {
        if (s->wal_fd >= 0)
            close(s->wal_fd);
        s->wal_fd = open(s->wal_path, O_RDONLY | O_CLOEXEC);
        if (s->wal_fd < 0) {
            ch_log(CH_LOG_ERROR, "cannot open the WAL", "{s:s}", "error", strerror(errno));
            return CH_IO;
        }
        s->wal_ino = st.st_ino;
    }
    if (fdatasync(s->wal_fd) != 0) {
        ch_log(CH_LOG_ERROR, "fdatasync of the WAL failed", "{s:s}", "error", strerror(errno));
        return CH_IO;
    }
    return CH_OK;
}

static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* A database a newer charter wrote may hold data this one cannot see (events_tail came
 * with version 3): refuse it rather than serve part of it. */
static ch_status schema_check(sqlite_store *s, const char *path, ch_err *e)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE key = 'schema_version'", -1, &st,
                           NULL) != SQLITE_OK)
        return CH_OK; /* a new database: there is no meta table yet */
    int version = 0;
    if (sqlite3_step(st) == SQLITE_ROW)
        version = atoi((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (version > SCHEMA_VERSION)
        return ch_err_set(e, CH_IO, NULL,
                          "%s has schema version %d; this charter knows up to %d: upgrade charter",
                          path, version, SCHEMA_VERSION);
    return CH_OK;
}

static ch_status s_open(const char *data_dir, bool writer, ch_store **out, ch_err *e)
{
    char path[2048];
    sqlite_store *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return ch_err_set(e, CH_NOMEM, NULL, NULL);
    s->base.methods = &ch__sqlite_methods;
    s->wal_fd = -1;
    s->tail_rows = -1;
    if (writer && mkdir(data_dir, 0700) != 0 && errno != EEXIST) {
        ch_err_set(e, CH_IO, NULL, "cannot create data dir %s: %s", data_dir, strerror(errno));
        goto fail;
    }
    snprintf(path, sizeof(path), "%s/charter.db", data_dir);
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (writer ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        ch_err_set(e, CH_IO, NULL, "cannot open %s: %s", path,
                   s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto fail;
    }
    /* Other processes (charter keys create) may write too: wait for their short
     * transactions rather than failing. */
    sqlite3_busy_timeout(s->db, 10000);
    if (exec_script(s, "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                       " PRAGMA foreign_keys=OFF; PRAGMA cache_size=-65536;",
                    e) != CH_OK)
        goto fail;
    if (writer && exec_script(s, "BEGIN IMMEDIATE;", e) == CH_OK) {
        if (schema_check(s, path, e) != CH_OK || exec_script(s, schema_sql, e) != CH_OK) {
            exec_script(s, "ROLLBACK;", NULL);
            goto fail;
        }
        if (exec_script(s, "COMMIT;", e) != CH_OK)
            goto fail;
    } else if (writer) {
        goto fail;
    }
    snprintf(s->wal_path, sizeof(s->wal_path), "%s-wal", path);
    /* journal_size_limit: after the WAL is rewound, it is truncated back to 64 MiB.
     * temp_store=MEMORY: each request runs in a savepoint, and a page that an earlier
     * request of the batch changed (the tail's last page, a session's row) is copied
     * to the statement journal before the request changes it again; in memory that is
     * a memcpy instead of a write to a temp file. */
    if (writer && (exec_script(s,
                               "PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=OFF;"
                               " PRAGMA journal_size_limit=67108864; PRAGMA temp_store=MEMORY;",
                               e) != CH_OK ||
                   checkpointer_start(s, path, e) != CH_OK))
        goto fail;
    /* Make the WAL file and its directory entry durable before anything is written. */
    if (writer && (s_sync(&s->base) != CH_OK || sync_dir(data_dir) != 0)) {
        ch_err_set(e, CH_IO, NULL, "cannot sync %s: %s", data_dir, strerror(errno));
        goto fail;
    }
    *out = &s->base;
    return CH_OK;
fail:
    s_close(&s->base);
    return e ? e->status : CH_IO;
}

/* Moves every tail event into events, inside the open transaction. */
static ch_status tail_fold(sqlite_store *s)
{
    ch_status rc = simple(&s->base, S_TAIL_FOLD);
    if (rc == CH_OK)
        rc = simple(&s->base, S_TAIL_CLEAR);
    if (rc == CH_OK)
        s->tail_rows = 0;
    return rc;
}

static ch_status tail_count(sqlite_store *s)
{
    sqlite3_stmt *st = stmt(s, S_TAIL_COUNT);
    if (st == NULL)
        return CH_IO;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        s->tail_rows = sqlite3_column_int64(st, 0);
    done(st);
    return rc == SQLITE_ROW ? CH_OK : io_error(s, "tail count");
}

static ch_status s_begin(ch_store *b)
{
    sqlite_store *s = (sqlite_store *)b;
    ch_status rc = simple(b, S_BEGIN);
    if (rc == CH_OK && s->tail_rows < 0)
        rc = tail_count(s);
    if (rc == CH_OK && s->tail_rows >= FOLD_ROWS)
        rc = tail_fold(s);
    if (rc != CH_OK && !sqlite3_get_autocommit(s->db))
        simple(b, S_ROLLBACK);
    return rc;
}
static ch_status s_commit(ch_store *b)
{
    return simple(b, S_COMMIT);
}
static ch_status s_rollback(ch_store *b)
{
    ((sqlite_store *)b)->tail_rows = -1;
    return simple(b, S_ROLLBACK);
}
static ch_status s_savepoint(ch_store *b)
{
    return simple(b, S_SAVEPOINT);
}
static ch_status s_release(ch_store *b, bool keep)
{
    if (!keep) {
        ((sqlite_store *)b)->tail_rows = -1;
        ch_status st = simple(b, S_ROLLBACK_TO);
        if (st != CH_OK)
            return st;
    }
    return simple(b, S_RELEASE);
}
static ch_status s_read_begin(ch_store *b)
{
    return simple(b, S_READ_BEGIN);
}
static void s_read_end(ch_store *b)
{
    simple(b, S_READ_END);
}

static ch_status s_key_put(ch_store *b, const uint8_t hash[32], const char *tenant, int64_t now)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_TENANT_PUT);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    ch_status rc = exec_stmt(s, st);
    if (rc != CH_OK)
        return rc;
    st = stmt(s, S_KEY_PUT);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    return exec_stmt(s, st);
}

static ch_status s_key_get(ch_store *b, const uint8_t hash[32], char tenant[CH_TENANT_MAX])
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_KEY_GET);
    ch_status rc = CH_NOT_FOUND;
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        snprintf(tenant, CH_TENANT_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
        rc = CH_OK;
    } else if (r != SQLITE_DONE) {
        rc = io_error(s, "key_get");
    }
    done(st);
    return rc;
}

/* Runs a statement without parameters that returns one integer. */
static ch_status scalar(sqlite_store *s, enum stmt_id id, const char *what, int64_t *out)
{
    sqlite3_stmt *st = stmt(s, id);
    ch_status rc = CH_OK;
    if (st == NULL)
        return CH_IO;
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        rc = io_error(s, what);
    done(st);
    return rc;
}

static ch_status s_key_count(ch_store *b, int64_t *n)
{
    return scalar((sqlite_store *)b, S_KEY_COUNT, "key_count", n);
}

static void bind_session(sqlite3_stmt *st, const ch_session_rec *r)
{
    sqlite3_bind_int64(st, 1, r->sid);
    sqlite3_bind_text(st, 2, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->user, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->agent, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->mandate, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, r->labels ? r->labels : "{}", -1, SQLITE_STATIC);
    if (r->budget)
        sqlite3_bind_text(st, 8, r->budget, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 8);
    sqlite3_bind_int64(st, 9, r->usage_tokens);
    sqlite3_bind_double(st, 10, r->usage_cost_usd);
    sqlite3_bind_int64(st, 11, r->usage_tool_calls);
    sqlite3_bind_text(st, 12, ch_session_state_name(r->state), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 13, r->seq);
    sqlite3_bind_int64(st, 14, r->summary_seq);
    sqlite3_bind_int64(st, 15, r->created_at);
    sqlite3_bind_int64(st, 16, r->updated_at);
}

static char *dup_col(sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return NULL;
    return strdup((const char *)sqlite3_column_text(st, col));
}

static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t n)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(dst, n, "%s", t ? (const char *)t : "");
}

static void read_session(sqlite3_stmt *st, ch_session_rec *r)
{
    ch_session_rec_clear(r);
    r->sid = sqlite3_column_int64(st, 0);
    copy_col(st, 1, r->id, sizeof(r->id));
    copy_col(st, 2, r->tenant, sizeof(r->tenant));
    copy_col(st, 3, r->user, sizeof(r->user));
    copy_col(st, 4, r->agent, sizeof(r->agent));
    copy_col(st, 5, r->mandate, sizeof(r->mandate));
    r->labels = dup_col(st, 6);
    r->budget = dup_col(st, 7);
    r->usage_tokens = sqlite3_column_int64(st, 8);
    r->usage_cost_usd = sqlite3_column_double(st, 9);
    r->usage_tool_calls = sqlite3_column_int64(st, 10);
    int state = ch_session_state_parse((const char *)sqlite3_column_text(st, 11));
    r->state = state < 0 ? CH_SESSION_CLOSED : (ch_session_state)state;
    r->seq = sqlite3_column_int64(st, 12);
    r->summary_seq = sqlite3_column_int64(st, 13);
    r->created_at = sqlite3_column_int64(st, 14);
    r->updated_at = sqlite3_column_int64(st, 15);
}

static ch_status s_session_insert(ch_store *b, ch_session_rec *r)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_INSERT);
    if (st == NULL)
        return CH_IO;
    bind_session(st, r);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK)
        r->sid = sqlite3_last_insert_rowid(s->db);
    return rc;
}

static ch_status s_session_get(ch_store *b, const char *tenant, const char *id,
                               ch_session_rec *out)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_GET);
    ch_status rc = CH_NOT_FOUND;
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, tenant, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        read_session(st, out);
        rc = CH_OK;
    } else if (r != SQLITE_DONE) {
        rc = io_error(s, "session_get");
    }
    done(st);
    return rc;
}

static ch_status s_session_update(ch_store *b, const ch_session_rec *r)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_UPDATE);
    if (st == NULL)
        return CH_IO;
    bind_session(st, r);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK && sqlite3_changes(s->db) == 0)
        rc = CH_NOT_FOUND;
    return rc;
}

static ch_status s_session_progress(ch_store *b, const ch_session_rec *r)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_PROGRESS);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, r->sid);
    sqlite3_bind_int64(st, 2, r->usage_tokens);
    sqlite3_bind_double(st, 3, r->usage_cost_usd);
    sqlite3_bind_int64(st, 4, r->usage_tool_calls);
    sqlite3_bind_int64(st, 5, r->seq);
    sqlite3_bind_int64(st, 6, r->updated_at);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK && sqlite3_changes(s->db) == 0)
        rc = CH_NOT_FOUND;
    return rc;
}

static ch_status s_session_delete(ch_store *b, int64_t sid)
{
    sqlite_store *s = (sqlite_store *)b;
    static const enum stmt_id steps[] = {S_SESSION_DELETE_EVENTS, S_SESSION_DELETE_TAIL,
                                         S_SESSION_DELETE_ARCHIVE, S_SESSION_DELETE_FACTS,
                                         S_SESSION_DELETE};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        sqlite3_stmt *st = stmt(s, steps[i]);
        if (st == NULL)
            return CH_IO;
        sqlite3_bind_int64(st, 1, sid);
        ch_status rc = exec_stmt(s, st);
        if (rc != CH_OK)
            return rc;
    }
    return CH_OK;
}

/* Steps st, handing each session row to cb. */
static ch_status each_session(sqlite_store *s, sqlite3_stmt *st, ch_session_cb cb, void *arg)
{
    ch_session_rec r = {0};
    ch_status rc = CH_OK;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        read_session(st, &r);
        if (cb(arg, &r) != 0)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = io_error(s, "session scan");
    ch_session_rec_clear(&r);
    done(st);
    return rc;
}

static ch_status s_session_list(ch_store *b, const char *tenant, const ch_session_filter *f,
                                ch_session_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_LIST);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, f->after_id ? f->after_id : "", -1, SQLITE_STATIC);
    if (f->user)
        sqlite3_bind_text(st, 3, f->user, -1, SQLITE_STATIC);
    if (f->state >= 0)
        sqlite3_bind_text(st, 4, ch_session_state_name((ch_session_state)f->state), -1,
                          SQLITE_STATIC);
    if (f->mandate)
        sqlite3_bind_text(st, 5, f->mandate, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, f->limit);
    return each_session(s, st, cb, arg);
}

static ch_status s_session_due(ch_store *b, ch_session_state state, int64_t before, int limit,
                               ch_session_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_DUE);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, ch_session_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, before);
    sqlite3_bind_int(st, 3, limit);
    return each_session(s, st, cb, arg);
}

/* CH_EXISTS when the table statement id looks in has an event of sid with a seq in
 * [from, to]; CH_OK when it has none. */
static ch_status seq_taken(sqlite_store *s, enum stmt_id id, int64_t sid, int64_t from,
                           int64_t to)
{
    sqlite3_stmt *st = stmt(s, id);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_int64(st, 2, from);
    sqlite3_bind_int64(st, 3, to);
    int step = sqlite3_step(st);
    done(st);
    if (step == SQLITE_ROW)
        return CH_EXISTS;
    return step == SQLITE_DONE ? CH_OK : io_error(s, "event seq check");
}

/* Inserts ev of sid with statement id (into the tail or into events). */
static ch_status put_event(sqlite_store *s, enum stmt_id id, int64_t sid, const ch_event_rec *ev)
{
    sqlite3_stmt *st = stmt(s, id);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_int64(st, 2, ev->seq);
    sqlite3_bind_int64(st, 3, ev->at);
    sqlite3_bind_text(st, 4, ev->body, (int)ev->len, SQLITE_STATIC);
    return exec_stmt(s, st);
}

static ch_status s_event_insert(ch_store *b, int64_t sid, const ch_event_rec *ev)
{
    sqlite_store *s = (sqlite_store *)b;
    ch_status rc = seq_taken(s, S_EVENT_FOLDED, sid, ev->seq, ev->seq);
    if (rc == CH_OK)
        rc = put_event(s, S_EVENT_INSERT, sid, ev);
    if (rc == CH_OK && s->tail_rows >= 0)
        s->tail_rows++;
    return rc;
}

/* An append that fills a page or more dirties pages of its own wherever it goes: it is
 * written to events directly rather than twice (tail, then fold). */
#define DIRECT_BYTES 4096

static ch_status s_event_append(ch_store *b, int64_t sid, const ch_event_rec *evs, int n)
{
    sqlite_store *s = (sqlite_store *)b;
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += evs[i].len;
    bool direct = bytes >= DIRECT_BYTES;
    /* events' primary key refuses a seq already folded; this, one still in the tail. */
    ch_status rc = direct ? seq_taken(s, S_EVENT_IN_TAIL, sid, evs[0].seq, evs[n - 1].seq) : CH_OK;
    for (int i = 0; i < n && rc == CH_OK; i++)
        rc = direct ? put_event(s, S_EVENT_INSERT_FOLDED, sid, &evs[i])
                    : s_event_insert(b, sid, &evs[i]);
    return rc;
}

static ch_status s_event_list(ch_store *b, int64_t sid, int64_t after, int limit,
                              int64_t archived, ch_event_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, archived < 0 ? S_EVENT_LIST : S_EVENT_LIST_ARCHIVED);
    ch_status rc = CH_OK;
    int step;
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int(st, 3, limit);
    if (archived >= 0)
        sqlite3_bind_int64(st, 4, archived);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ch_event_rec ev = {
            .seq = sqlite3_column_int64(st, 0),
            .at = sqlite3_column_int64(st, 1),
            .body = (const char *)sqlite3_column_text(st, 2),
            .len = (size_t)sqlite3_column_bytes(st, 2),
        };
        if (cb(arg, &ev) != 0)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = io_error(s, "event_list");
    done(st);
    return rc;
}

static ch_status s_event_archive(ch_store *b, int64_t sid, int64_t through, int64_t drop_seq,
                                 int64_t *moved)
{
    sqlite_store *s = (sqlite_store *)b;
    /* The events to archive must all be in events, and stay before the tail's. */
    ch_status rc = tail_fold(s);
    if (rc != CH_OK)
        return rc;
    sqlite3_stmt *st = stmt(s, S_EVENT_ARCHIVE_COPY);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_int64(st, 2, through);
    sqlite3_bind_int64(st, 3, drop_seq);
    rc = exec_stmt(s, st);
    if (rc != CH_OK)
        return rc;
    *moved = sqlite3_changes(s->db);
    st = stmt(s, S_EVENT_ARCHIVE_DELETE);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_int64(st, 2, through);
    return exec_stmt(s, st);
}

static ch_status s_fact_put(ch_store *b, int64_t sid, const char *key, const char *value,
                            int64_t now)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_FACT_PUT);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now);
    return exec_stmt(s, st);
}

static ch_status each_fact(sqlite_store *s, sqlite3_stmt *st, ch_fact_cb cb, void *arg,
                           bool need_one)
{
    ch_status rc = need_one ? CH_NOT_FOUND : CH_OK;
    int step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        rc = CH_OK;
        if (cb(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1),
               sqlite3_column_int64(st, 2)) != 0)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = io_error(s, "fact scan");
    done(st);
    return rc;
}

static ch_status s_fact_get(ch_store *b, int64_t sid, const char *key, ch_fact_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_FACT_GET);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    return each_fact(s, st, cb, arg, true);
}

static ch_status s_fact_delete(ch_store *b, int64_t sid, const char *key)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_FACT_DELETE);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK && sqlite3_changes(s->db) == 0)
        rc = CH_NOT_FOUND;
    return rc;
}

static ch_status s_fact_list(ch_store *b, int64_t sid, ch_fact_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_FACT_LIST);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, sid);
    return each_fact(s, st, cb, arg, false);
}

static ch_status s_session_by_mandate(ch_store *b, const char *tenant, const char *mandate,
                                      ch_session_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_SESSION_BY_MANDATE);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, mandate, -1, SQLITE_STATIC);
    return each_session(s, st, cb, arg);
}

static ch_status s_mandate_put(ch_store *b, const ch_mandate_row *m)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_MANDATE_PUT);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->doc, (int)m->doc_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, m->spent_tokens);
    sqlite3_bind_double(st, 5, m->spent_cost_usd);
    sqlite3_bind_int64(st, 6, m->spent_tool_calls);
    return exec_stmt(s, st);
}

static ch_status s_mandate_spend(ch_store *b, const char *id, int64_t tokens, double cost_usd,
                                 int64_t tool_calls)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_MANDATE_SPEND);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, tokens);
    sqlite3_bind_double(st, 3, cost_usd);
    sqlite3_bind_int64(st, 4, tool_calls);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK && sqlite3_changes(s->db) == 0)
        rc = CH_NOT_FOUND;
    return rc;
}

static ch_status s_mandate_set_state(ch_store *b, const char *id, const char *state,
                                     const char *reason, int64_t updated_at)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_MANDATE_SET_STATE);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    if (reason != NULL)
        sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, updated_at);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK && sqlite3_changes(s->db) == 0)
        rc = CH_NOT_FOUND;
    return rc;
}

static ch_status s_mandate_load(ch_store *b, ch_mandate_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_MANDATE_LOAD);
    ch_status rc = CH_OK;
    int step;
    if (st == NULL)
        return CH_IO;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ch_mandate_row m = {
            .id = (const char *)sqlite3_column_text(st, 0),
            .tenant = (const char *)sqlite3_column_text(st, 1),
            .doc = (const char *)sqlite3_column_text(st, 2),
            .doc_len = (size_t)sqlite3_column_bytes(st, 2),
            .spent_tokens = sqlite3_column_int64(st, 3),
            .spent_cost_usd = sqlite3_column_double(st, 4),
            .spent_tool_calls = sqlite3_column_int64(st, 5),
            .state = (const char *)sqlite3_column_text(st, 6),
            .reason = (const char *)sqlite3_column_text(st, 7),
            .updated_at = sqlite3_column_int64(st, 8),
        };
        if (cb(arg, &m) != 0)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = io_error(s, "mandate_load");
    done(st);
    return rc;
}

static ch_status s_stream_append(ch_store *b, const char *tenant, const char *type, int64_t at,
                                 const char *data, int64_t *id)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_STREAM_APPEND);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, at);
    sqlite3_bind_text(st, 4, data, -1, SQLITE_STATIC);
    ch_status rc = exec_stmt(s, st);
    if (rc == CH_OK)
        *id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

static ch_status s_stream_list(ch_store *b, const char *tenant, int64_t after, int limit,
                               ch_stream_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_STREAM_LIST);
    ch_status rc = CH_OK;
    int step;
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int(st, 3, limit);
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ch_stream_row r = {
            .id = sqlite3_column_int64(st, 0),
            .tenant = (const char *)sqlite3_column_text(st, 1),
            .type = (const char *)sqlite3_column_text(st, 2),
            .at = sqlite3_column_int64(st, 3),
            .data = (const char *)sqlite3_column_text(st, 4),
            .data_len = (size_t)sqlite3_column_bytes(st, 4),
        };
        if (cb(arg, &r) != 0)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = io_error(s, "stream_list");
    done(st);
    return rc;
}

static ch_status s_stream_last(ch_store *b, int64_t *id)
{
    return scalar((sqlite_store *)b, S_STREAM_LAST, "stream_last", id);
}

static ch_status s_stream_trim(ch_store *b, int64_t before)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_STREAM_TRIM);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_int64(st, 1, before);
    return exec_stmt(s, st);
}

static ch_status s_audit_append(ch_store *b, const ch_audit_row *r)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, S_AUDIT_APPEND);
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, r->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, r->at);
    sqlite3_bind_text(st, 3, r->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->mandate ? r->mandate : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->lineage ? r->lineage : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, r->data, (int)r->data_len, SQLITE_STATIC);
    return exec_stmt(s, st);
}

static ch_status s_audit_list(ch_store *b, const char *tenant, const char *lineage_prefix,
                              int64_t after, int limit, ch_audit_cb cb, void *arg)
{
    sqlite_store *s = (sqlite_store *)b;
    sqlite3_stmt *st = stmt(s, lineage_prefix ? S_AUDIT_LIST_SUBTREE : S_AUDIT_LIST);
    char *upper = NULL;
    ch_status rc = CH_OK;
    int step;
    if (st == NULL)
        return CH_IO;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int(st, 3, limit);
    if (lineage_prefix) {
        /* Lineages end in '/': every lineage below prefix sorts before prefix with
         * that '/' replaced by '0', the next byte. */
        size_t n = strlen(lineage_prefix);
        upper = strdup(lineage_prefix);
        if (upper == NULL) {
            done(st);
            return CH_NOMEM;
        }
        if (n > 0)
            upper[n - 1] = (char)(upper[n - 1] + 1);
        sqlite3_bind_text(st, 4, lineage_prefix, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, upper, -1, SQLITE_STATIC);
    }
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        ch_audit_row r = {
            .id = sqlite3_column_int64(st, 0),
            .tenant = (const char *)sqlite3_column_text(st, 1),
            .at = sqlite3_column_int64(st, 2),
            .kind = (const char *)sqlite3_column_text(st, 3),
            .mandate = (const char *)sqlite3_column_text(st, 4),
            .lineage = (const char *)sqlite3_column_text(st, 5),
            .data = (const char *)sqlite3_column_text(st, 6),
            .data_len = (size_t)sqlite3_column_bytes(st, 6),
        };
        if (cb(arg, &r) != 0)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = io_error(s, "audit_list");
    done(st);
    free(upper);
    return rc;
}

const ch_store_methods ch__sqlite_methods = {
    .version = 3,
    .name = "sqlite",
    .open = s_open,
    .close = s_close,
    .begin = s_begin,
    .commit = s_commit,
    .sync = s_sync,
    .rollback = s_rollback,
    .savepoint = s_savepoint,
    .release = s_release,
    .read_begin = s_read_begin,
    .read_end = s_read_end,
    .key_put = s_key_put,
    .key_get = s_key_get,
    .key_count = s_key_count,
    .session_insert = s_session_insert,
    .session_get = s_session_get,
    .session_update = s_session_update,
    .session_delete = s_session_delete,
    .session_list = s_session_list,
    .session_due = s_session_due,
    .event_insert = s_event_insert,
    .event_list = s_event_list,
    .event_archive = s_event_archive,
    .fact_put = s_fact_put,
    .fact_get = s_fact_get,
    .fact_delete = s_fact_delete,
    .fact_list = s_fact_list,
    .session_by_mandate = s_session_by_mandate,
    .mandate_put = s_mandate_put,
    .mandate_spend = s_mandate_spend,
    .mandate_load = s_mandate_load,
    .mandate_set_state = s_mandate_set_state,
    .stream_append = s_stream_append,
    .stream_list = s_stream_list,
    .stream_last = s_stream_last,
    .stream_trim = s_stream_trim,
    .audit_append = s_audit_append,
    .audit_list = s_audit_list,
    .session_progress = s_session_progress,
    .event_append = s_event_append,
};
