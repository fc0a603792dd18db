/*
 * bench_artifact.c — the cost of deciding offline from a mandate artifact.
 *
 * A host that caches an artifact pays, per decision, one ch_artifact_verify (token
 * split, base64url, JSON, one Ed25519 verification, the scope parsed once to check
 * it) and one scope lookup. This program measures both:
 *
 *   1. a signer in a fresh temporary data dir signs one artifact whose scope has 10
 *      tools, 5 lanes and 10 resources; ch_artifact_verify is then timed N times, one
 *      clock_gettime pair per call;
 *   2. ch__scope_allows on a scope of 1000 tools (plus lanes and prefix resources),
 *      timed in batches of BATCH calls (a single call is close to the resolution of
 *      the clock) cycling over every tool, reported per call.
 *
 * The floor for (1) is printed beside it: crypto_sign_verify_detached alone over the
 * same signing input, so the line shows what the token handling adds to the
 * signature check itself.
 *
 * Output, one line each, for bench/run.sh:
 *
 *     artifact_verify median_us=X p99_us=Y n=N token_bytes=B
 *     ed25519_verify median_us=X p99_us=Y n=N
 *     scope_allows median_ns=X p99_ns=Y n=N tools=1000
 *
 * Usage: bench_artifact [-n VERIFY_CALLS]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "charter.h"
#include "core/signing.h"
#include "mandates/scope.h"

#define BATCH 64
#define ALLOWS_BATCHES 20000

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

/* Sorts v and returns its q-quantile (0..1). */
static uint64_t quantile(uint64_t *v, size_t n, double q)
{
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i];
}

static json_t *artifact_payload(int64_t now_s)
{
    json_t *tools = json_array(), *lanes = json_array(), *res = json_array();
    static const char *const tool_names[] = {"git",  "shell",   "browser", "python", "node",
                                             "psql", "kubectl", "docker",  "curl",   "grep"};
    static const char *const lane_names[] = {"repo", "web", "db", "ci", "docs"};
    static const char *const resources[] = {
        "repo:web/*",       "repo:api/*",      "repo:infra/README.md",
        "db:analytics/*",   "db:users",        "docs:handbook/*",
        "ci:pipeline/web",  "ci:pipeline/api", "web:https://example.com/*",
        "repo:shared/lib/*"};
    for (size_t i = 0; i < sizeof(tool_names) / sizeof(tool_names[0]); i++)
        json_array_append_new(tools, json_string(tool_names[i]));
    for (size_t i = 0; i < sizeof(lane_names) / sizeof(lane_names[0]); i++)
        json_array_append_new(lanes, json_string(lane_names[i]));
    for (size_t i = 0; i < sizeof(resources) / sizeof(resources[0]); i++)
        json_array_append_new(res, json_string(resources[i]));
    return json_pack("{s:s, s:s, s:s, s:i, s:s, s:{s:o, s:o, s:o, s:[s,s]}, s:s, s:I, s:I}", "iss",
                     "charter", "tenant", "default", "mdt", "mdt_01JD3V6Y7C8X9Q2W5E4R3T2Y1V", "ver",
                     7, "actor", "coder", "scope", "tools", tools, "lanes", lanes, "resources", res,
                     "classes", "read", "write", "mission",
                     "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg", "iat", (json_int_t)now_s, "exp",
                     (json_int_t)(now_s + 3600));
}

/* What one timed verification needs: the JWK text and token for the full check, the
 * decoded key and signature for the raw one. */
typedef struct verify_ctx {
    const char *jwk, *token;
    size_t jwk_len;
    int64_t now_ms;
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sig[crypto_sign_BYTES];
    size_t input_len; /* "header.payload" */
} verify_ctx;

static int full_verify(const verify_ctx *c)
{
    json_t *claims = NULL;
    ch_err e;
    ch_status st = ch_artifact_verify(c->jwk, c->jwk_len, c->token, c->now_ms, &claims, &e);
    json_decref(claims);
    if (st != CH_OK)
        fprintf(stderr, "bench_artifact: verify: %s\n", e.message);
    return st == CH_OK ? 0 : -1;
}

static int raw_verify(const verify_ctx *c)
{
    return crypto_sign_verify_detached(c->sig, (const unsigned char *)c->token, c->input_len,
                                       c->pk);
}

/* Calls fn(c) n times, each timed alone, into lat (sorted); -1 if a call failed. */
static int time_calls(int (*fn)(const verify_ctx *), const verify_ctx *c, uint64_t *lat, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        int rc = fn(c);
        lat[i] = now_ns() - t0;
        if (rc != 0)
            return -1;
    }
    qsort(lat, n, sizeof(uint64_t), cmp_u64);
    return 0;
}

static int bench_verify(size_t n)
{
    char dir[] = "/tmp/charter-bench-XXXXXX", path[sizeof(dir) + 32];
    ch__signer *signer = NULL;
    json_t *jwk = NULL;
    char *token = NULL, *jwk_text = NULL;
    verify_ctx c = {0};
    ch_err e;
    size_t got;
    int rc = 1;
    uint64_t *lat = malloc(n * sizeof(uint64_t));

    if (lat == NULL || mkdtemp(dir) == NULL) {
        perror("bench_artifact: temp dir");
        free(lat);
        return 1;
    }
    if (ch__signer_open(dir, &signer, &e) != CH_OK) {
        fprintf(stderr, "bench_artifact: %s\n", e.message);
        goto done;
    }
    c.now_ms = ch_now_ms();
    json_t *p = artifact_payload(c.now_ms / 1000);
    token = ch__artifact_sign(signer, p);
    json_decref(p);
    jwk = ch__signer_jwk(signer);
    jwk_text = jwk != NULL ? json_dumps(jwk, JSON_COMPACT) : NULL;
    if (token == NULL || jwk_text == NULL) {
        fprintf(stderr, "bench_artifact: cannot sign\n");
        goto done;
    }
    c.jwk = jwk_text;
    c.jwk_len = strlen(jwk_text);
    c.token = token;

    if (time_calls(full_verify, &c, lat, n) != 0)
        goto done;
    printf("artifact_verify median_us=%.2f p99_us=%.2f n=%zu token_bytes=%zu\n",
           (double)quantile(lat, n, 0.5) / 1e3, (double)quantile(lat, n, 0.99) / 1e3, n,
           strlen(token));

    /* The floor: the signature check alone, on the same input and key. */
    const char *x = json_string_value(json_object_get(jwk, "x")), *d2 = strrchr(token, '.');
    c.input_len = (size_t)(d2 - token);
    if (sodium_base642bin(c.pk, sizeof(c.pk), x, strlen(x), NULL, &got, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        sodium_base642bin(c.sig, sizeof(c.sig), d2 + 1, strlen(d2 + 1), NULL, &got, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
        time_calls(raw_verify, &c, lat, n) != 0) {
        fprintf(stderr, "bench_artifact: raw verify failed\n");
        goto done;
    }
    printf("ed25519_verify median_us=%.2f p99_us=%.2f n=%zu\n", (double)quantile(lat, n, 0.5) / 1e3,
           (double)quantile(lat, n, 0.99) / 1e3, n);
    rc = 0;
done:
    free(token);
    free(jwk_text);
    json_decref(jwk);
    ch__signer_close(signer);
    snprintf(path, sizeof(path), "%s/signing.key", dir);
    unlink(path);
    rmdir(dir);
    free(lat);
    return rc;
}

static int bench_allows(void)
{
    json_t *tools = json_array();
    char name[32];
    ch__scope s;
    ch_err e;
    uint64_t *lat = malloc(ALLOWS_BATCHES * sizeof(uint64_t));
    volatile unsigned sink = 0;

    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "tool-%04d", (i * 7919) % 1000);
        json_array_append_new(tools, json_string(name));
    }
    json_t *j = json_pack(
        "{s:o, s:[s,s,s,s,s], s:[s,s,s,s,s,s,s,s,s,s], s:[s,s]}", "tools", tools, "lanes", "repo",
        "web", "db", "ci", "docs", "resources", "repo:web/*", "repo:api/*", "repo:infra/README.md",
        "db:analytics/*", "db:users", "docs:handbook/*", "ci:pipeline/web", "ci:pipeline/api",
        "web:https://example.com/*", "repo:shared/lib/*", "classes", "read", "write");
    if (lat == NULL || ch__scope_parse(j, "scope", NULL, &s, &e) != CH_OK) {
        fprintf(stderr, "bench_artifact: scope: %s\n", lat == NULL ? "no memory" : e.message);
        json_decref(j);
        free(lat);
        return 1;
    }
    json_decref(j);
    /* Every call is allowed, so each walks all four checks (the worst case). */
    for (int b = 0; b < ALLOWS_BATCHES; b++) {
        char tool[BATCH][16];
        for (int k = 0; k < BATCH; k++)
            snprintf(tool[k], sizeof(tool[k]), "tool-%04d", (b * BATCH + k) % 1000);
        uint64_t t0 = now_ns();
        for (int k = 0; k < BATCH; k++)
            sink += ch__scope_allows(&s, tool[k], "web", "repo:web/src/components/Login.tsx",
                                     CH__CLASS_WRITE);
        lat[b] = (now_ns() - t0) / BATCH;
    }
    qsort(lat, ALLOWS_BATCHES, sizeof(uint64_t), cmp_u64);
    printf("scope_allows median_ns=%llu p99_ns=%llu n=%d tools=%u%s\n",
           (unsigned long long)quantile(lat, ALLOWS_BATCHES, 0.5),
           (unsigned long long)quantile(lat, ALLOWS_BATCHES, 0.99), ALLOWS_BATCHES * BATCH,
           s.tools.n, sink == 0 ? "" : " (unexpected denials)");
    ch__scope_free(&s);
    free(lat);
    return sink == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    size_t n = 20000;
    int c;
    while ((c = getopt(argc, argv, "n:")) != -1) {
        if (c == 'n' && atol(optarg) > 0) {
            n = (size_t)atol(optarg);
        } else {
            fprintf(stderr, "usage: bench_artifact [-n VERIFY_CALLS]\n");
            return 2;
        }
    }
    ch_log_set_level(CH_LOG_WARN);
    if (bench_verify(n) != 0)
        return 1;
    return bench_allows();
}
