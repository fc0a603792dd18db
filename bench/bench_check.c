/*
 * bench_check.c — the in-process cost of the mandate check, and of revoking a large
 * mandate tree.
 *
 * Both run through libcharter's public API on a database in a fresh temporary data
 * dir (ch_config_defaults, ch_db_open without the retention sweeper), like a C host
 * that links libcharter would.
 *
 *   check    A tree root → child → grandchild (depth 2), each with the same realistic
 *            scope (10 tools, 4 lanes, 10 resource patterns, prefixes among them,
 *            classes read/write/external). N calls of ch_check on the grandchild
 *            cycle over 10 actions, 8 allowed and 2 denied. Every decision is queued
 *            for the audit log and written by the writer thread in batches while the
 *            loop runs: that is part of the real cost and is kept. Nine batches in
 *            ten are timed as a whole (BATCH calls per clock_gettime pair; one call is
 *            close to the clock's resolution) and give the per-call median; every
 *            tenth batch times each call alone and gives the p99 (the clock's own cost,
 *            clock_ns, is included in those figures). Afterwards an audit flush is
 *            timed until every decision is written and fsynced (audit_drain_ms):
 *            the audit writer's rate, audit_rows_per_s, is what bounds a sustained
 *            check rate; audit_commits is the number of group commits it took, and
 *            audit_dropped the decisions the audit queue had to drop (from the
 *            charter_audit_dropped_total metric; "unknown" without it).
 *
 *   cascade  T times: a fresh tree of D descendants below one root (root max_depth 4;
 *            10 children, 10 grandchildren each, 10 great-grandchildren each, and the
 *            rest of D spread evenly as leaves at depth 4: 10 + 100 + 1000 + 8890 for
 *            D = 10,000), built with asynchronous ch_submit calls so they group-commit;
 *            optionally (-s) one session bound to every leaf; then
 *            ch_call(CH_OP_MANDATE_REVOKE) on the root is timed from submit to
 *            completion, that is including its commit and fsync. The revoke moves every
 *            descendant to `revoked` (stored, audited and announced on the event
 *            stream) and every bound session to `inert`, in one transaction.
 *
 * Output, one line per part, for bench/run.sh:
 *
 *     check median_ns=X p99_ns=Y n=N batch=B sample=S sample_median_ns=M mean_ns=A \
 *           clock_ns=C allow_pct=P audit_drain_ms=D audit_rows_per_s=R audit_commits=G \
 *           audit_dropped=K
 *     cascade sessions=S descendants=D trees=T median_ms=X max_ms=Y min_ms=Z runs=a,b,c \
 *           build_s=B
 *
 * Usage: bench_check [-n CHECKS] [-t TREES] [-d DESCENDANTS] [-s] [-m check|cascade|all]
 *                    [-D PARENT_DIR]
 *   -s  bind one session to every leaf of each cascade tree (reported as sessions=N)
 */
#include <ftw.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "charter.h"

#define TENANT "bench"
#define BATCH 100
#define SAMPLE_EVERY 10 /* every 10th batch times its calls one by one */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of sorted v. */
static uint64_t quantile(const uint64_t *v, size_t n, double q)
{
    return v[(size_t)(q * (double)(n - 1) + 0.5)];
}

static void die(const char *what, const ch_err *e)
{
    fprintf(stderr, "bench_check: %s: %s\n", what, e ? e->message : "failed");
    exit(1);
}

/* ---- the database ------------------------------------------------------------- */

static char g_dir[900];

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static ch_db *open_db(const char *parent)
{
    ch_config cfg;
    ch_err e;
    ch_db *db = NULL;
    if (snprintf(g_dir, sizeof(g_dir), "%s/bench-check-XXXXXX", parent) >= (int)sizeof(g_dir) ||
        mkdtemp(g_dir) == NULL) {
        perror("bench_check: temp dir");
        exit(1);
    }
    ch_config_defaults(&cfg);
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s/data", g_dir);
    ch_err_clear(&e);
    if (ch_db_open(&cfg, false, &db, &e) != CH_OK)
        die("ch_db_open", &e);
    return db;
}

static void close_db(ch_db *db)
{
    ch_db_close(db);
    nftw(g_dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The value of an unlabelled metric in ch_db_render_metrics' text (what /metrics
 * serves), or -1 when it is not there. */
static double metric(ch_db *db, const char *name)
{
    ch_buf b = {0};
    double v = -1;
    size_t n = strlen(name);
    ch_db_render_metrics(db, &b);
    ch_buf_append(&b, "", 1);
    for (const char *p = b.data; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    }
    ch_buf_free(&b);
    return v;
}

static json_t *jparse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    if (v == NULL) {
        fprintf(stderr, "bench_check: bad JSON %s: %s\n", text, jerr.text);
        exit(1);
    }
    return v;
}

/* One blocking write; body is stolen. Returns the result's "id" into id (if not NULL). */
static void call(ch_db *db, ch_op op, const char *target, json_t *body, char id[CH_ID_MAX])
{
    ch_req req;
    memset(&req, 0, sizeof(req));
    req.op = op;
    snprintf(req.tenant, sizeof(req.tenant), "%s", TENANT);
    if (target != NULL)
        snprintf(req.id, sizeof(req.id), "%s", target);
    req.body = body;
    if (ch_call(db, &req) != CH_OK)
        die("write", &req.err);
    if (id != NULL)
        snprintf(id, CH_ID_MAX, "%s", json_string_value(json_object_get(req.result, "id")));
    json_decref(body);
    ch_req_dispose(&req);
}

static void expiry(char out[32])
{
    ch_time_format(ch_now_ms() + 24 * 3600 * 1000, out);
}

/* The realistic scope of the check benchmark (and of bench/helper.py's check mandate). */
static const char *const SCOPE =
    "{\"tools\": [\"git\", \"shell\", \"browser\", \"python\", \"node\", \"psql\", \"kubectl\","
    " \"docker\", \"curl\", \"grep\"],"
    " \"lanes\": [\"repo\", \"web\", \"db\", \"ci\"],"
    " \"resources\": [\"repo:web/*\", \"repo:api/*\", \"repo:infra/README.md\","
    " \"db:analytics/*\", \"db:users\", \"docs:handbook/*\", \"ci:pipeline/web\","
    " \"ci:pipeline/api\", \"web:https://example.com/*\", \"repo:shared/lib/*\"],"
    " \"classes\": [\"read\", \"write\", \"external\"]}";

/* ---- check ------------------------------------------------------------------------ */

static const ch_action ACTIONS[] = {
    {"git", "repo", "repo:web/src/a.ts", "write"},
    {"git", "repo", "repo:api/handlers/login.go", "read"},
    {"shell", "repo", "repo:shared/lib/util.c", "write"},
    {"psql", "db", "db:analytics/events", "read"},
    {"curl", "web", "web:https://example.com/docs", "external"},
    {"kubectl", "ci", "ci:pipeline/web", "read"},
    {"git", "repo", "repo:infra/README.md", "write"},
    {"python", "db", "db:users", "read"},
    {"git", "repo", "repo:secrets/prod.env", "write"},   /* resource_out_of_scope */
    {"rm", "repo", "repo:web/src/a.ts", "irreversible"}, /* tool_out_of_scope */
};
#define NACTIONS (sizeof(ACTIONS) / sizeof(ACTIONS[0]))

static int bench_check(const char *parent, size_t n)
{
    ch_db *db = open_db(parent);
    char exp[32], root[CH_ID_MAX], child[CH_ID_MAX], leaf[CH_ID_MAX], body[2048];
    expiry(exp);
    snprintf(body, sizeof(body),
             "{\"approver\": \"alice\", \"purpose\": \"ship passkey login\", \"actor\": \"lead\","
             " \"expires_at\": \"%s\", \"max_depth\": 2, \"scope\": %s}",
             exp, SCOPE);
    call(db, CH_OP_MANDATE_CREATE, NULL, jparse(body), root);
    snprintf(
        body, sizeof(body),
        "{\"actor\": \"planner\", \"purpose\": \"plan the login work\", \"expires_at\": \"%s\","
        " \"scope\": %s}",
        exp, SCOPE);
    call(db, CH_OP_MANDATE_DELEGATE, root, jparse(body), child);
    snprintf(body, sizeof(body),
             "{\"actor\": \"coder\", \"purpose\": \"write the login code\", \"expires_at\": \"%s\","
             " \"scope\": %s}",
             exp, SCOPE);
    call(db, CH_OP_MANDATE_DELEGATE, child, jparse(body), leaf);

    /* Each action once, checked against its expected outcome. */
    for (size_t k = 0; k < NACTIONS; k++) {
        ch_decision d;
        ch_check(db, TENANT, leaf, "coder", NULL, &ACTIONS[k], &d);
        if (d.allow != (k < 8)) {
            fprintf(stderr, "bench_check: action %zu: allow=%d reason=%s\n", k, d.allow, d.reason);
            return 1;
        }
    }

    /* The clock's own cost, included in every single-call figure. */
    uint64_t c0 = now_ns();
    for (int i = 0; i < 1000; i++)
        (void)now_ns();
    uint64_t clock_ns = (now_ns() - c0) / 1001;

    size_t nbatches = (n + BATCH - 1) / BATCH, nb = 0, ns = 0, allowed = 0, done = 0;
    uint64_t *per_batch = malloc(nbatches * sizeof(uint64_t));
    uint64_t *single = malloc((nbatches / SAMPLE_EVERY + 1) * BATCH * sizeof(uint64_t));
    if (per_batch == NULL || single == NULL) {
        fprintf(stderr, "bench_check: no memory\n");
        return 1;
    }
    ch_decision d;
    size_t k = 0;
    double commits0 = metric(db, "charter_commit_seconds_count");
    uint64_t start = now_ns();
    for (size_t b = 0; b < nbatches; b++) {
        size_t m = n - done < BATCH ? n - done : BATCH;
        if (b % SAMPLE_EVERY == SAMPLE_EVERY - 1) {
            for (size_t i = 0; i < m; i++) {
                uint64_t t0 = now_ns();
                ch_check(db, TENANT, leaf, "coder", NULL, &ACTIONS[k], &d);
                single[ns++] = now_ns() - t0;
                allowed += d.allow;
                k = k + 1 == NACTIONS ? 0 : k + 1;
            }
        } else {
            uint64_t t0 = now_ns();
            for (size_t i = 0; i < m; i++) {
                ch_check(db, TENANT, leaf, "coder", NULL, &ACTIONS[k], &d);
                allowed += d.allow;
                k = k + 1 == NACTIONS ? 0 : k + 1;
            }
            per_batch[nb++] = (now_ns() - t0) / m;
        }
        done += m;
    }
    uint64_t loop_ns = now_ns() - start;
    /* Until every decision of the loop is in the audit log, committed and fsynced. */
    ch_req flush;
    memset(&flush, 0, sizeof(flush));
    flush.op = CH_OP_AUDIT_FLUSH;
    uint64_t f0 = now_ns();
    if (ch_call(db, &flush) != CH_OK)
        die("audit flush", &flush.err);
    ch_req_dispose(&flush);
    uint64_t drain_ns = now_ns() - f0;
    double dropped = metric(db, "charter_audit_dropped_total");
    double commits = metric(db, "charter_commit_seconds_count") - commits0;

    char dropped_text[32];
    snprintf(dropped_text, sizeof(dropped_text), "%.0f", dropped);
    qsort(per_batch, nb, sizeof(uint64_t), cmp_u64);
    qsort(single, ns, sizeof(uint64_t), cmp_u64);
    printf("check median_ns=%llu p99_ns=%llu n=%zu batch=%d sample=%zu sample_median_ns=%llu "
           "mean_ns=%.0f clock_ns=%llu allow_pct=%.0f audit_drain_ms=%.1f audit_rows_per_s=%.0f "
           "audit_commits=%.0f audit_dropped=%s\n",
           (unsigned long long)quantile(per_batch, nb, 0.5),
           (unsigned long long)quantile(single, ns, 0.99), n, BATCH, ns,
           (unsigned long long)quantile(single, ns, 0.5), (double)loop_ns / (double)n,
           (unsigned long long)clock_ns, 100.0 * (double)allowed / (double)n,
           (double)drain_ns / 1e6, (double)n / ((double)(loop_ns + drain_ns) / 1e9), commits,
           dropped < 0 ? "unknown" : dropped_text);
    fflush(stdout);
    free(per_batch);
    free(single);
    close_db(db);
    return 0;
}

/* ---- cascade ---------------------------------------------------------------------- */

/* Asynchronous writes: a group of jobs submitted together and waited for together. */
typedef struct group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t pending;
    int failed;
    char first_error[256];
} group;

typedef struct job {
    ch_req req; /* first: done() gets the req */
    group *g;
    char id[CH_ID_MAX]; /* the result's id */
} job;

static void job_done(ch_req *req)
{
    job *j = (job *)req;
    group *g = j->g;
    const char *id = json_string_value(json_object_get(req->result, "id"));
    if (req->err.status == CH_OK && id != NULL)
        snprintf(j->id, sizeof(j->id), "%s", id);
    pthread_mutex_lock(&g->mu);
    if (req->err.status != CH_OK && g->failed++ == 0)
        snprintf(g->first_error, sizeof(g->first_error), "%s", req->err.message);
    if (--g->pending == 0)
        pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Runs n writes (op on target[i] with body[i], bodies stolen) together; the result ids
 * go to ids[i]. */
static void run_group(ch_db *db, ch_op op, char (*target)[CH_ID_MAX], json_t **bodies, size_t n,
                      char (*ids)[CH_ID_MAX])
{
    group g = {.pending = n};
    job *jobs = calloc(n, sizeof(job));
    if (jobs == NULL) {
        fprintf(stderr, "bench_check: no memory\n");
        exit(1);
    }
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    for (size_t i = 0; i < n; i++) {
        job *j = &jobs[i];
        j->g = &g;
        j->req.op = op;
        snprintf(j->req.tenant, sizeof(j->req.tenant), "%s", TENANT);
        if (target != NULL)
            snprintf(j->req.id, sizeof(j->req.id), "%s", target[i]);
        j->req.body = bodies[i];
        j->req.done = job_done;
        if (ch_submit(db, &j->req) != CH_OK)
            die("submit", &j->req.err);
        json_decref(bodies[i]); /* ch_submit took its own reference */
    }
    pthread_mutex_lock(&g.mu);
    while (g.pending > 0)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    if (g.failed) {
        fprintf(stderr, "bench_check: %d of %zu writes failed; first: %s\n", g.failed, n,
                g.first_error);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        if (ids != NULL)
            memcpy(ids[i], jobs[i].id, CH_ID_MAX);
        ch_req_dispose(&jobs[i].req);
    }
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    free(jobs);
}

/* Builds one tree below a new root: 10 children, 10 grandchildren each, 10 below each
 * of those, and the rest of `descendants` as leaves at depth 4 (spread evenly), and
 * with sessions one session bound to each leaf (their number in *bound). Returns the
 * number of descendants created; the root's id in root, one leaf's in leaf. */
static size_t build_tree(ch_db *db, size_t descendants, bool sessions, char root[CH_ID_MAX],
                         char leaf[CH_ID_MAX], size_t *bound)
{
    static const size_t fan[3] = {10, 10, 10};
    char exp[32], body[1024];
    expiry(exp);
    snprintf(body, sizeof(body),
             "{\"approver\": \"alice\", \"purpose\": \"release train\", \"actor\": \"lead\","
             " \"expires_at\": \"%s\", \"max_depth\": 4, \"scope\": %s}",
             exp, SCOPE);
    call(db, CH_OP_MANDATE_CREATE, NULL, jparse(body), root);

    char(*level)[CH_ID_MAX] = malloc(CH_ID_MAX);
    if (level == NULL) {
        fprintf(stderr, "bench_check: no memory\n");
        exit(1);
    }
    memcpy(level[0], root, CH_ID_MAX);
    size_t nlevel = 1, total = 0;
    for (int depth = 1; depth <= 4 && total < descendants; depth++) {
        /* Children per parent at this depth; the last level takes what remains. */
        size_t want = depth <= 3 ? nlevel * fan[depth - 1] : descendants - total;
        if (want > descendants - total)
            want = descendants - total;
        char(*parents)[CH_ID_MAX] = malloc(want * CH_ID_MAX);
        char(*kids)[CH_ID_MAX] = malloc(want * CH_ID_MAX);
        json_t **bodies = malloc(want * sizeof(json_t *));
        if (parents == NULL || kids == NULL || bodies == NULL) {
            fprintf(stderr, "bench_check: no memory\n");
            exit(1);
        }
        for (size_t i = 0; i < want; i++) {
            memcpy(parents[i], level[i % nlevel], CH_ID_MAX);
            char actor[32];
            snprintf(actor, sizeof(actor), "agent-d%d", depth);
            bodies[i] = json_pack("{s:s, s:s, s:s, s:{s:[s,s], s:[s], s:[s,s], s:[s,s]}}", "actor",
                                  actor, "purpose", "part of the release train", "expires_at", exp,
                                  "scope", "tools", "git", "shell", "lanes", "repo", "resources",
                                  "repo:web/*", "repo:api/*", "classes", "read", "write");
        }
        run_group(db, CH_OP_MANDATE_DELEGATE, parents, bodies, want, kids);
        free(parents);
        free(bodies);
        free(level);
        level = kids;
        nlevel = want;
        total += want;
    }
    if (sessions) {
        /* One session per leaf: the last level's mandates. */
        json_t **bodies = malloc(nlevel * sizeof(json_t *));
        if (bodies == NULL) {
            fprintf(stderr, "bench_check: no memory\n");
            exit(1);
        }
        for (size_t i = 0; i < nlevel; i++)
            bodies[i] = json_pack("{s:s, s:s, s:s}", "user", "bench", "agent", "agent-d4",
                                  "mandate", level[i]);
        run_group(db, CH_OP_SESSION_CREATE, NULL, bodies, nlevel, NULL);
        free(bodies);
    }
    memcpy(leaf, level[nlevel - 1], CH_ID_MAX);
    free(level);
    *bound = sessions ? nlevel : 0;
    return total;
}

#define CASCADE_SETTLE_S 2

static int bench_cascade(const char *parent, int trees, size_t descendants, bool sessions)
{
    ch_db *db = open_db(parent);
    uint64_t *runs = calloc((size_t)trees, sizeof(uint64_t)), build = 0;
    size_t got = 0, bound = 0;
    char list[1024] = "";
    for (int t = 0; t < trees; t++) {
        char root[CH_ID_MAX], leaf[CH_ID_MAX];
        uint64_t b0 = now_ns();
        got = build_tree(db, descendants, sessions, root, leaf, &bound);
        build += now_ns() - b0;
        static const ch_action act = {"git", "repo", "repo:web/src/a.ts", "write"};
        ch_decision d;
        ch_check(db, TENANT, leaf, NULL, NULL, &act, &d);
        if (!d.allow) {
            fprintf(stderr, "bench_check: a leaf denies before the revoke: %s\n", d.reason);
            return 1;
        }
        /* The tree was built just now, in a burst of ~30,000 writes whose WAL frames the
         * checkpointer is still copying; a revoke comes later in real life. Let that
         * finish so the figure is the revoke's own cost, not the build's disk backlog. */
        sleep(CASCADE_SETTLE_S);
        uint64_t t0 = now_ns();
        call(db, CH_OP_MANDATE_REVOKE, root, jparse("{\"reason\": \"release cancelled\"}"), NULL);
        runs[t] = now_ns() - t0;
        ch_check(db, TENANT, leaf, NULL, NULL, &act, &d);
        if (d.allow) {
            fprintf(stderr, "bench_check: a leaf still allows after the revoke\n");
            return 1;
        }
        size_t len = strlen(list);
        snprintf(list + len, sizeof(list) - len, "%s%.1f", t ? "," : "", (double)runs[t] / 1e6);
    }
    qsort(runs, (size_t)trees, sizeof(uint64_t), cmp_u64);
    printf("cascade sessions=%zu descendants=%zu trees=%d median_ms=%.1f max_ms=%.1f min_ms=%.1f "
           "runs=%s build_s=%.1f\n",
           bound, got, trees, (double)quantile(runs, (size_t)trees, 0.5) / 1e6,
           (double)runs[trees - 1] / 1e6, (double)runs[0] / 1e6, list, (double)build / 1e9);
    fflush(stdout);
    free(runs);
    close_db(db);
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 1000000, descendants = 10000;
    int trees = 5, c;
    bool sessions = false;
    const char *mode = "all", *parent = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    while ((c = getopt(argc, argv, "n:t:d:sm:D:")) != -1) {
        switch (c) {
        case 'n':
            n = (size_t)atol(optarg);
            break;
        case 't':
            trees = atoi(optarg);
            break;
        case 'd':
            descendants = (size_t)atol(optarg);
            break;
        case 's':
            sessions = true;
            break;
        case 'm':
            mode = optarg;
            break;
        case 'D':
            parent = optarg;
            break;
        default:
            n = 0;
            break;
        }
    }
    bool do_check = strcmp(mode, "check") == 0 || strcmp(mode, "all") == 0;
    bool do_cascade = strcmp(mode, "cascade") == 0 || strcmp(mode, "all") == 0;
    if (optind != argc || n < BATCH || trees < 1 || trees > 100 || descendants < 1 ||
        (!do_check && !do_cascade)) {
        fprintf(stderr,
                "usage: bench_check [-n CHECKS>=%d] [-t TREES 1..100] [-d DESCENDANTS] "
                "[-s] [-m check|cascade|all] [-D PARENT_DIR]\n",
                BATCH);
        return 2;
    }
    ch_log_set_level(CH_LOG_WARN);
    if (do_check && bench_check(parent, n) != 0)
        return 1;
    if (do_cascade && bench_cascade(parent, trees, descendants, sessions) != 0)
        return 1;
    return 0;
}
