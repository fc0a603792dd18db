/*
 * bench_sqlite_per_item.c — the baseline for durable single-event appends.
 *
 * This is the pattern most agent session stores use: one SQLite transaction per
 * appended item. Each of N threads owns one connection (WAL, synchronous=FULL,
 * busy_timeout) and one session, and appends to it in a loop:
 *
 *     BEGIN IMMEDIATE;
 *     SELECT seq FROM sessions WHERE id = ?;
 *     INSERT INTO events (session_id, seq, kind, role, content, at) VALUES (...);
 *     UPDATE sessions SET seq = ?, updated_at = ? WHERE id = ?;
 *     COMMIT;
 *
 * Every COMMIT is an fsync of the WAL, and the writers serialize on SQLite's single
 * write lock, so throughput is bounded by fsync latency (no group commit). The program
 * runs for a fixed time and prints one line of key=value pairs for bench/run.sh:
 *
 *     events=N seconds=S events_per_sec=X p50_ms=Y p99_ms=Z mean_ms=M max_ms=W
 *     busy_retries=R thread_min=A thread_max=B
 *
 * Latency is per append, from BEGIN IMMEDIATE (including waiting for the write lock)
 * to COMMIT returning. SQLite's busy handler sleeps and retries, so the lock is not
 * handed out in order: a thread that just committed often wins again while others
 * sleep. That shows as a long tail (mean and max well above p50) and as uneven
 * per-thread counts (thread_min/thread_max appends per thread).
 *
 * Usage: bench_sqlite_per_item [-d DB_PATH] [-t THREADS] [-s SECONDS]
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

/* The same payload that bench/run.sh POSTs to charter, stored as the event content. */
#define CONTENT_JSON "\"hello world, this is one user message appended by the benchmark\""

#define BUSY_TIMEOUT_MS 10000

/* Room for any struct tm the formatter could be handed, not just this century. */
#define TIME_BUF 96

static const char *SCHEMA_SQL = "CREATE TABLE IF NOT EXISTS sessions ("
                                "  id TEXT PRIMARY KEY,"
                                "  seq INTEGER NOT NULL DEFAULT 0,"
                                "  created_at TEXT NOT NULL,"
                                "  updated_at TEXT NOT NULL);"
                                "CREATE TABLE IF NOT EXISTS events ("
                                "  session_id TEXT NOT NULL,"
                                "  seq INTEGER NOT NULL,"
                                "  kind TEXT NOT NULL,"
                                "  role TEXT,"
                                "  content TEXT,"
                                "  at TEXT NOT NULL,"
                                "  PRIMARY KEY (session_id, seq)) WITHOUT ROWID;";

struct worker {
    pthread_t thread;
    int index;
    const char *db_path;
    sqlite3 *db;
    sqlite3_stmt *begin, *select_seq, *insert_event, *update_session, *commit, *rollback;
    char session_id[32];
    /* Per-append latencies in nanoseconds, grown as needed. */
    uint64_t *lat;
    size_t nlat, caplat;
    uint64_t busy_retries;
    int failed;
};

static atomic_int g_stop;

/* CLOCK_MONOTONIC time at which the run ends; appends that finish later are not
 * counted, so events/s is exactly appends-in-the-window / seconds. */
static uint64_t g_deadline_ns;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* RFC 3339 UTC with milliseconds, like charter's timestamps. */
static void format_now(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    unsigned ms;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    ms = (unsigned)(ts.tv_nsec / 1000000) % 1000u;
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

static int open_db(const char *path, sqlite3 **out)
{
    sqlite3 *db = NULL;
    char *errmsg = NULL;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                     &errmsg) != SQLITE_OK)
        goto fail;
    *out = db;
    return 0;

fail:
    fprintf(stderr, "bench_sqlite_per_item: open %s: %s\n", path,
            errmsg ? errmsg : (db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_free(errmsg);
    sqlite3_close(db);
    return -1;
}

static int prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_sqlite_per_item: prepare %s: %s\n", sql, sqlite3_errmsg(db));
        return -1;
    }
    return 0;
}

static int record_latency(struct worker *w, uint64_t ns)
{
    if (w->nlat == w->caplat) {
        size_t cap = w->caplat ? w->caplat * 2 : 4096;
        uint64_t *grown = realloc(w->lat, cap * sizeof(*grown));

        if (!grown)
            return -1;
        w->lat = grown;
        w->caplat = cap;
    }
    w->lat[w->nlat++] = ns;
    return 0;
}

/* Runs one step; a step that finds the database busy (past busy_timeout) reports it so
 * the whole transaction is retried, the way an application would. */
static int step_done(struct worker *w, sqlite3_stmt *stmt, int want)
{
    int rc = sqlite3_step(stmt);

    if (rc == want)
        return SQLITE_OK;
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        return SQLITE_BUSY;
    fprintf(stderr, "bench_sqlite_per_item: worker %d: %s\n", w->index, sqlite3_errmsg(w->db));
    return SQLITE_ERROR;
}

/* One append = one transaction. Returns SQLITE_OK, SQLITE_BUSY (retry) or SQLITE_ERROR. */
static int append_one(struct worker *w)
{
    char at[TIME_BUF];
    int64_t seq;
    int rc;

    format_now(at, sizeof(at));
    rc = step_done(w, w->begin, SQLITE_DONE);
    sqlite3_reset(w->begin);
    if (rc != SQLITE_OK)
        return rc;

    rc = step_done(w, w->select_seq, SQLITE_ROW);
    seq = rc == SQLITE_OK ? sqlite3_column_int64(w->select_seq, 0) + 1 : 0;
    sqlite3_reset(w->select_seq);
    if (rc != SQLITE_OK)
        goto fail;

    sqlite3_bind_int64(w->insert_event, 2, seq);
    sqlite3_bind_text(w->insert_event, 6, at, -1, SQLITE_TRANSIENT);
    rc = step_done(w, w->insert_event, SQLITE_DONE);
    sqlite3_reset(w->insert_event);
    if (rc != SQLITE_OK)
        goto fail;

    sqlite3_bind_int64(w->update_session, 1, seq);
    sqlite3_bind_text(w->update_session, 2, at, -1, SQLITE_TRANSIENT);
    rc = step_done(w, w->update_session, SQLITE_DONE);
    sqlite3_reset(w->update_session);
    if (rc != SQLITE_OK)
        goto fail;

    rc = step_done(w, w->commit, SQLITE_DONE);
    sqlite3_reset(w->commit);
    if (rc != SQLITE_OK)
        goto fail;
    return SQLITE_OK;

fail:
    sqlite3_step(w->rollback);
    sqlite3_reset(w->rollback);
    return rc;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        uint64_t t0 = now_ns(), t1;
        int rc = append_one(w);

        /* A retry is part of the same append: its latency runs from the first try. */
        while (rc == SQLITE_BUSY && !atomic_load_explicit(&g_stop, memory_order_relaxed)) {
            w->busy_retries++;
            rc = append_one(w);
        }
        if (rc == SQLITE_BUSY)
            break;
        if (rc != SQLITE_OK)
            goto fail;
        t1 = now_ns();
        if (t1 > g_deadline_ns)
            break;
        if (record_latency(w, t1 - t0) != 0)
            goto fail;
    }
    return NULL;

fail:
    w->failed = 1;
    atomic_store(&g_stop, 1);
    return NULL;
}

static int worker_open(struct worker *w)
{
    if (open_db(w->db_path, &w->db) != 0)
        return -1;
    if (prepare(w->db, "BEGIN IMMEDIATE", &w->begin) != 0 ||
        prepare(w->db, "SELECT seq FROM sessions WHERE id = ?1", &w->select_seq) != 0 ||
        prepare(w->db,
                "INSERT INTO events (session_id, seq, kind, role, content, at)"
                " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &w->insert_event) != 0 ||
        prepare(w->db, "UPDATE sessions SET seq = ?1, updated_at = ?2 WHERE id = ?3",
                &w->update_session) != 0 ||
        prepare(w->db, "COMMIT", &w->commit) != 0 || prepare(w->db, "ROLLBACK", &w->rollback) != 0)
        return -1;
    sqlite3_bind_text(w->select_seq, 1, w->session_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(w->insert_event, 1, w->session_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(w->insert_event, 3, "message", -1, SQLITE_STATIC);
    sqlite3_bind_text(w->insert_event, 4, "user", -1, SQLITE_STATIC);
    sqlite3_bind_text(w->insert_event, 5, CONTENT_JSON, -1, SQLITE_STATIC);
    sqlite3_bind_text(w->update_session, 3, w->session_id, -1, SQLITE_STATIC);
    return 0;
}

static void worker_close(struct worker *w)
{
    sqlite3_finalize(w->begin);
    sqlite3_finalize(w->select_seq);
    sqlite3_finalize(w->insert_event);
    sqlite3_finalize(w->update_session);
    sqlite3_finalize(w->commit);
    sqlite3_finalize(w->rollback);
    sqlite3_close(w->db);
    free(w->lat);
}

/* Creates the schema and one session row per worker. */
static int setup(const char *path, struct worker *workers, int nworkers)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    char at[TIME_BUF];
    int i;

    if (open_db(path, &db) != 0)
        goto fail;
    if (sqlite3_exec(db, SCHEMA_SQL, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        goto fail_sql;
    if (prepare(db, "INSERT INTO sessions (id, seq, created_at, updated_at) VALUES (?1, 0, ?2, ?2)",
                &ins) != 0)
        goto fail;
    format_now(at, sizeof(at));
    for (i = 0; i < nworkers; i++) {
        sqlite3_bind_text(ins, 1, workers[i].session_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, at, -1, SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE)
            goto fail_sql;
        sqlite3_reset(ins);
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail_sql;
    sqlite3_finalize(ins);
    sqlite3_close(db);
    return 0;

fail_sql:
    fprintf(stderr, "bench_sqlite_per_item: setup: %s\n", sqlite3_errmsg(db));
fail:
    sqlite3_finalize(ins);
    sqlite3_close(db);
    return -1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

static double percentile_ms(const uint64_t *sorted, size_t n, double p)
{
    size_t idx;

    if (n == 0)
        return 0.0;
    idx = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)sorted[idx] / 1e6;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_sqlite_per_item [-d DB_PATH] [-t THREADS] [-s SECONDS]\n");
}

int main(int argc, char **argv)
{
    const char *db_path = "bench_sqlite_per_item.db";
    int nworkers = 64, seconds = 10, started = 0, opt, i, rc = 1;
    struct worker *workers = NULL;
    uint64_t *all = NULL, busy = 0, sum = 0, t0;
    size_t tmin = SIZE_MAX, tmax = 0;
    size_t total = 0, off = 0;
    struct timespec pause;
    double elapsed;

    while ((opt = getopt(argc, argv, "d:t:s:h")) != -1) {
        switch (opt) {
        case 'd':
            db_path = optarg;
            break;
        case 't':
            nworkers = atoi(optarg);
            break;
        case 's':
            seconds = atoi(optarg);
            break;
        default:
            usage();
            return opt == 'h' ? 0 : 2;
        }
    }
    if (nworkers < 1 || nworkers > 4096 || seconds < 1) {
        usage();
        return 2;
    }

    workers = calloc((size_t)nworkers, sizeof(*workers));
    if (!workers)
        goto fail;
    for (i = 0; i < nworkers; i++) {
        workers[i].index = i;
        workers[i].db_path = db_path;
        snprintf(workers[i].session_id, sizeof(workers[i].session_id), "sess_bench_%04d", i);
    }
    if (setup(db_path, workers, nworkers) != 0)
        goto fail;
    for (i = 0; i < nworkers; i++) {
        if (worker_open(&workers[i]) != 0)
            goto fail;
    }

    t0 = now_ns();
    g_deadline_ns = t0 + (uint64_t)seconds * 1000000000u;
    for (i = 0; i < nworkers; i++) {
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
            atomic_store(&g_stop, 1);
            break;
        }
        started++;
    }
    pause.tv_sec = 0;
    pause.tv_nsec = 50 * 1000 * 1000;
    while (!atomic_load(&g_stop) && now_ns() < g_deadline_ns)
        nanosleep(&pause, NULL);
    atomic_store(&g_stop, 1);
    for (i = 0; i < started; i++)
        pthread_join(workers[i].thread, NULL);
    if (started < nworkers)
        goto fail;

    for (i = 0; i < nworkers; i++) {
        if (workers[i].failed)
            goto fail;
        total += workers[i].nlat;
        busy += workers[i].busy_retries;
        tmin = workers[i].nlat < tmin ? workers[i].nlat : tmin;
        tmax = workers[i].nlat > tmax ? workers[i].nlat : tmax;
    }
    all = malloc((total ? total : 1) * sizeof(*all));
    if (!all)
        goto fail;
    for (i = 0; i < nworkers; i++) {
        if (workers[i].nlat == 0)
            continue; /* a starved thread: lat is still NULL */
        memcpy(all + off, workers[i].lat, workers[i].nlat * sizeof(*all));
        off += workers[i].nlat;
    }
    for (off = 0; off < total; off++)
        sum += all[off];
    qsort(all, total, sizeof(*all), cmp_u64);
    elapsed = (double)seconds;
    printf("events=%zu seconds=%.3f events_per_sec=%.1f p50_ms=%.3f p99_ms=%.3f mean_ms=%.3f "
           "max_ms=%.3f busy_retries=%llu thread_min=%zu thread_max=%zu\n",
           total, elapsed, (double)total / elapsed, percentile_ms(all, total, 50.0),
           percentile_ms(all, total, 99.0), total ? (double)sum / (double)total / 1e6 : 0.0,
           total ? (double)all[total - 1] / 1e6 : 0.0, (unsigned long long)busy, tmin, tmax);
    rc = total > 0 ? 0 : 1;

fail:
    if (rc != 0)
        fprintf(stderr, "bench_sqlite_per_item: failed\n");
    if (workers) {
        for (i = 0; i < nworkers; i++)
            worker_close(&workers[i]);
    }
    free(workers);
    free(all);
    return rc;
}
