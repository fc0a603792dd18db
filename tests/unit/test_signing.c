/*
 * test_signing.c — the artifact signing key (its file, its JWK) and offline
 * verification: a round trip, then every way a token must be refused, then the
 * offline decision for each class and reason.
 */
#include <dirent.h>

#include "unit.h"

#include <sodium.h>

#include "charter.h"
#include "core/signing.h"

#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING

typedef struct fixture {
    char dir[UNIT_PATH_MAX];
    ch__signer *signer;
    char *jwk; /* JSON text of the signer's JWK */
    int64_t now_ms;
} fixture;

static char *jwk_text(const ch__signer *s)
{
    json_t *j = ch__signer_jwk(s);
    assert_non_null(j);
    char *t = json_dumps(j, JSON_COMPACT);
    assert_non_null(t);
    json_decref(j);
    return t;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    ch_err e;
    assert_non_null(f);
    unit_mkdtemp(f->dir);
    if (ch__signer_open(f->dir, &f->signer, &e) != CH_OK)
        fail_msg("signer_open: %s", e.message);
    f->jwk = jwk_text(f->signer);
    f->now_ms = ch_now_ms();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ch__signer_close(f->signer);
    free(f->jwk);
    unit_rm_rf(f->dir);
    free(f);
    return 0;
}

/* A realistic payload expiring exp_s seconds from the fixture's now. */
static json_t *payload(const fixture *f, int64_t exp_s)
{
    json_t *p = json_pack(
        "{s:s, s:s, s:s, s:i, s:s, s:{s:[s,s], s:[s], s:[s,s], s:[s,s,s]}, s:s, s:I, s:I}", "iss",
        "charter", "tenant", "default", "mdt", "mdt_01JD3V6Y7C8X9Q2W5E4R3T2Y1V", "ver", 3, "actor",
        "coder", "scope", "tools", "git", "shell", "lanes", "repo", "resources", "repo:web/*",
        "doc:readme", "classes", "read", "write", "external", "mission",
        "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg", "iat", (json_int_t)(f->now_ms / 1000), "exp",
        (json_int_t)(f->now_ms / 1000 + exp_s));
    assert_non_null(p);
    return p;
}

static char *sign(const fixture *f, json_t *p)
{
    char *t = ch__artifact_sign(f->signer, p);
    assert_non_null(t);
    json_decref(p);
    return t;
}

static char *b64(const void *bin, size_t n)
{
    size_t cap = sodium_base64_encoded_len(n, B64);
    char *s = malloc(cap);
    assert_non_null(s);
    sodium_bin2base64(s, cap, bin, n, B64);
    return s;
}

/* Verifies token against jwk at now_ms; expects a refusal whose message contains
 * want (or any message when want is NULL). */
static void refused(const char *jwk, const char *token, int64_t now_ms, const char *want)
{
    ch_err e;
    json_t *claims = (json_t *)1;
    ch_err_clear(&e);
    ch_status st = ch_artifact_verify(jwk, strlen(jwk), token, now_ms, &claims, &e);
    if (st != CH_INVALID_VALUE || e.status != CH_INVALID_VALUE)
        fail_msg("token %.80s: want invalid_value, got %s (%s)", token, ch_status_name(st),
                 e.message);
    assert_null(claims);
    if (want != NULL && strstr(e.message, want) == NULL)
        fail_msg("token %.80s: message '%s' does not say '%s'", token, e.message, want);
}

static void accepted(const char *jwk, const char *token, int64_t now_ms)
{
    ch_err e;
    ch_err_clear(&e);
    if (ch_artifact_verify(jwk, strlen(jwk), token, now_ms, NULL, &e) != CH_OK)
        fail_msg("token refused: %s", e.message);
}

/* ---- the key file ---- */

static void test_key_file(void **state)
{
    fixture *f = *state;
    char path[UNIT_PATH_MAX + 16], buf[128];
    struct stat st;
    ch__signer *again;
    ch_err e;

    snprintf(path, sizeof(path), "%s/signing.key", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    assert_int_equal(n, 8 + 43 + 1);
    assert_memory_equal(buf, "ed25519:", 8);
    assert_int_equal(buf[n - 1], '\n');

    /* Nothing else was left in the directory (the temporary name is gone). */
    DIR *d = opendir(f->dir);
    struct dirent *de;
    int entries = 0;
    assert_non_null(d);
    while ((de = readdir(d)) != NULL)
        entries += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    closedir(d);
    assert_int_equal(entries, 1);

    /* Reopening loads the same key. */
    assert_int_equal(ch__signer_open(f->dir, &again, &e), CH_OK);
    assert_string_equal(ch__signer_kid(again), ch__signer_kid(f->signer));
    char *jwk2 = jwk_text(again);
    assert_string_equal(jwk2, f->jwk);
    free(jwk2);
    /* A token signed by one handle verifies with the other's key. */
    json_t *p = payload(f, 30);
    char *t = ch__artifact_sign(again, p);
    json_decref(p);
    ch__signer_close(again);
    assert_non_null(t);
    accepted(f->jwk, t, f->now_ms);
    free(t);
}

static void test_jwk(void **state)
{
    fixture *f = *state;
    json_t *j = ch__signer_jwk(f->signer);
    const char *x, *kid;
    unsigned char pk[32], h[32];
    size_t n = 0;

    assert_string_equal(json_string_value(json_object_get(j, "kty")), "OKP");
    assert_string_equal(json_string_value(json_object_get(j, "crv")), "Ed25519");
    assert_string_equal(json_string_value(json_object_get(j, "alg")), "EdDSA");
    assert_string_equal(json_string_value(json_object_get(j, "use")), "sig");
    assert_int_equal(json_object_size(j), 6);
    x = json_string_value(json_object_get(j, "x"));
    kid = json_string_value(json_object_get(j, "kid"));
    assert_int_equal(strlen(x), 43);
    assert_int_equal(strlen(kid), 16);
    assert_int_equal(sodium_base642bin(pk, sizeof(pk), x, strlen(x), NULL, &n, NULL, B64), 0);
    assert_int_equal(n, 32);
    /* kid = base64url of the first 12 bytes of SHA-256(public key). */
    crypto_hash_sha256(h, pk, sizeof(pk));
    char *want = b64(h, 12);
    assert_string_equal(kid, want);
    assert_string_equal(ch__signer_kid(f->signer), want);
    free(want);
    json_decref(j);
}

static void test_key_file_refused(void **state)
{
    (void)state;
    char dir[UNIT_PATH_MAX], path[UNIT_PATH_MAX];
    ch__signer *s = (ch__signer *)1;
    ch_err e;
    const char *bad[] = {
        "",
        "garbage\n",
        "ed25519:AAAA\n",                                             /* too short */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\n",    /* extra line */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",      /* padding */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB\n",      /* stray bits */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+A\n",      /* not base64url */
        "x25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",      /* wrong tag */
        "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", /* too long */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        unit_mkdtemp(dir);
        unit_write_file(dir, "signing.key", bad[i], path);
        assert_int_equal(chmod(path, 0600), 0);
        ch_err_clear(&e);
        if (ch__signer_open(dir, &s, &e) != CH_CONFIG)
            fail_msg("key file '%s' accepted (%s)", bad[i], e.message);
        assert_null(s);
        assert_non_null(strstr(e.message, "signing.key"));
        unit_rm_rf(dir);
        s = (ch__signer *)1;
    }

    /* A well-formed key is taken with or without its final newline... */
    unit_mkdtemp(dir);
    unit_write_file(dir, "signing.key", "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                    path);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(ch__signer_open(dir, &s, &e), CH_OK);
    ch__signer_close(s);
    /* ...but not when others may read it. */
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(ch__signer_open(dir, &s, &e), CH_CONFIG);
    assert_non_null(strstr(e.message, "0600"));
    assert_null(s);
    /* A directory in its place is refused too. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(ch__signer_open(dir, &s, &e), CH_CONFIG);
    unit_rm_rf(dir);

    /* A data dir that does not exist is an I/O error. */
    assert_int_equal(ch__signer_open("/nonexistent/charter-unit", &s, &e), CH_IO);
    assert_null(s);
}

/* ---- sign and verify ---- */

static void test_round_trip(void **state)
{
    fixture *f = *state;
    json_t *p = payload(f, 30), *claims = NULL;
    char *t = ch__artifact_sign(f->signer, p);
    ch_err e;

    assert_non_null(t);
    assert_int_equal(ch_artifact_verify(f->jwk, strlen(f->jwk), t, f->now_ms, &claims, &e), CH_OK);
    assert_non_null(claims);
    assert_true(json_equal(claims, p));
    json_decref(claims);

    /* The header is the canonical JSON of {alg, kid, typ}; the payload canonical too. */
    const char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
    assert_null(strchr(d2 + 1, '.'));
    char want_h[128];
    snprintf(want_h, sizeof(want_h),
             "{\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"charter-artifact\"}",
             ch__signer_kid(f->signer));
    char *hb = b64(want_h, strlen(want_h));
    assert_int_equal((size_t)(d1 - t), strlen(hb));
    assert_memory_equal(t, hb, strlen(hb));
    free(hb);
    char *pc = ch_json_canonical(p, NULL), *pb = b64(pc, strlen(pc));
    assert_int_equal((size_t)(d2 - d1 - 1), strlen(pb));
    assert_memory_equal(d1 + 1, pb, strlen(pb));
    assert_int_equal(strlen(d2 + 1), 86); /* 64 bytes */
    free(pc);
    free(pb);

    /* claims may be NULL; e may be NULL. */
    assert_int_equal(ch_artifact_verify(f->jwk, strlen(f->jwk), t, f->now_ms, NULL, NULL), CH_OK);
    /* jwk_len is honoured: the text need not be NUL-terminated. */
    size_t jl = strlen(f->jwk);
    char *jwk_nt = malloc(jl + 8);
    memcpy(jwk_nt, f->jwk, jl);
    memcpy(jwk_nt + jl, "garbage", 8);
    assert_int_equal(ch_artifact_verify(jwk_nt, jl, t, f->now_ms, NULL, &e), CH_OK);
    free(jwk_nt);

    /* Signing a non-object is refused. */
    json_t *arr = json_array();
    assert_null(ch__artifact_sign(f->signer, arr));
    json_decref(arr);
    json_decref(p);
    free(t);
}

/* Changes one character of t at i to another base64url character. */
static void flip(char *t, size_t i)
{
    t[i] = t[i] == 'A' ? 'B' : 'A';
}

static void test_tampering(void **state)
{
    fixture *f = *state;
    char *t = sign(f, payload(f, 30));
    size_t d1 = (size_t)(strchr(t, '.') - t), d2 = (size_t)(strrchr(t, '.') - t);
    char *c;

    accepted(f->jwk, t, f->now_ms);
    /* One character changed in each part. The header's change breaks its JSON or a
     * field; the payload's and signature's the signature. */
    for (size_t i = 0; i < d1; i++) {
        c = strdup(t);
        flip(c, i);
        refused(f->jwk, c, f->now_ms, NULL);
        free(c);
    }
    for (size_t i = d1 + 1; i < d2; i += 7) {
        c = strdup(t);
        flip(c, i);
        refused(f->jwk, c, f->now_ms, i + 1 == d2 ? NULL : "signature does not verify");
        free(c);
    }
    for (size_t i = d2 + 1; t[i + 1] != '\0'; i++) {
        c = strdup(t);
        flip(c, i);
        refused(f->jwk, c, f->now_ms, "signature does not verify");
        free(c);
    }
    /* The last signature character carries 4 stray bits: any change is refused
     * (strict base64url, so one signature has exactly one encoding). */
    c = strdup(t);
    size_t last = strlen(c) - 1;
    for (const char *alt = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"; *alt;
         alt++) {
        if (*alt == t[last])
            continue;
        c[last] = *alt;
        refused(f->jwk, c, f->now_ms, NULL);
    }
    free(c);
    /* A payload swapped in from another token of the same key. */
    char *t2 = sign(f, payload(f, 3600));
    size_t e1 = (size_t)(strchr(t2, '.') - t2), e2 = (size_t)(strrchr(t2, '.') - t2);
    c = malloc(strlen(t) + strlen(t2));
    snprintf(c, strlen(t) + strlen(t2), "%.*s%.*s%s", (int)d1, t, (int)(e2 - e1), t2 + e1, t + d2);
    refused(f->jwk, c, f->now_ms, "signature does not verify");
    free(c);
    free(t2);
    free(t);
}

static void test_wrong_key(void **state)
{
    fixture *f = *state;
    char dir[UNIT_PATH_MAX];
    ch__signer *other;
    ch_err e;

    unit_mkdtemp(dir);
    assert_int_equal(ch__signer_open(dir, &other, &e), CH_OK);
    assert_string_not_equal(ch__signer_kid(other), ch__signer_kid(f->signer));
    json_t *p = payload(f, 30);
    char *t = ch__artifact_sign(other, p);
    json_decref(p);
    assert_non_null(t);
    /* With a kid in the JWK, the header's kid gives it away. */
    refused(f->jwk, t, f->now_ms, "key id does not match");
    /* Without one, the signature does. */
    json_t *j = ch__signer_jwk(f->signer);
    json_object_del(j, "kid");
    char *nokid = json_dumps(j, 0);
    refused(nokid, t, f->now_ms, "signature does not verify");
    /* And a key-less JWK still verifies the right signer's tokens. */
    char *mine = sign(f, payload(f, 30));
    accepted(nokid, mine, f->now_ms);
    free(mine);
    free(nokid);
    json_decref(j);
    /* A JWK whose kid is not the key's own. */
    j = ch__signer_jwk(f->signer);
    json_object_set_new(j, "kid", json_string("AAAAAAAAAAAAAAAA"));
    char *badkid = json_dumps(j, 0);
    mine = sign(f, payload(f, 30));
    refused(badkid, mine, f->now_ms, "key id does not match");
    free(mine);
    free(badkid);
    json_decref(j);
    free(t);
    ch__signer_close(other);
    unit_rm_rf(dir);
}

static void test_expiry(void **state)
{
    fixture *f = *state;
    int64_t now_s = f->now_ms / 1000;
    char *t = sign(f, payload(f, 30)); /* exp = now_s + 30 */

    accepted(f->jwk, t, f->now_ms);
    accepted(f->jwk, t, (now_s + 30) * 1000 - 1); /* the last millisecond */
    refused(f->jwk, t, (now_s + 30) * 1000, "artifact expired");
    refused(f->jwk, t, (now_s + 31) * 1000, "artifact expired");
    free(t);
    t = sign(f, payload(f, -1));
    refused(f->jwk, t, f->now_ms, "artifact expired");
    free(t);
    /* Extreme values neither overflow nor pass by accident. */
    json_t *p = payload(f, 0);
    json_object_set_new(p, "exp", json_integer(INT64_MAX));
    t = sign(f, p);
    accepted(f->jwk, t, f->now_ms);
    accepted(f->jwk, t, INT64_MAX);
    free(t);
    p = payload(f, 0);
    json_object_set_new(p, "exp", json_integer(INT64_MIN));
    t = sign(f, p);
    refused(f->jwk, t, f->now_ms, "artifact expired");
    refused(f->jwk, t, INT64_MIN, "artifact expired");
    free(t);
}

/* Signs payload p after del (a key to remove) or set (key, JSON value). */
static void claims_refused(const fixture *f, const char *del, const char *set_key,
                           const char *set_json, const char *want)
{
    json_t *p = payload(f, 30);
    if (del != NULL)
        json_object_del(p, del);
    if (set_key != NULL)
        json_object_set_new(p, set_key, json_loads(set_json, JSON_DECODE_ANY, NULL));
    char *t = sign(f, p);
    refused(f->jwk, t, f->now_ms, want);
    free(t);
}

static void test_claims(void **state)
{
    fixture *f = *state;
    claims_refused(f, "exp", NULL, NULL, "exp");
    claims_refused(f, NULL, "exp", "\"1999999999\"", "exp");
    claims_refused(f, NULL, "exp", "1999999999.5", "exp");
    claims_refused(f, "mdt", NULL, NULL, "mdt");
    claims_refused(f, NULL, "mdt", "7", "mdt");
    claims_refused(f, "ver", NULL, NULL, "ver");
    claims_refused(f, NULL, "ver", "\"3\"", "ver");
    claims_refused(f, "scope", NULL, NULL, "scope");
    claims_refused(f, NULL, "scope", "[]", "scope");
    claims_refused(f, NULL, "scope", "{\"tools\":\"git\"}", "scope.tools");
    claims_refused(f, NULL, "scope", "{\"resources\":[\"a*b\"]}", "scope.resources[0]");
}

/* A token with the given header JSON over a real payload and signature part. */
static char *with_header(const fixture *f, const char *header_json)
{
    char *t = sign(f, payload(f, 30));
    char *h = b64(header_json, strlen(header_json));
    const char *rest = strchr(t, '.');
    size_t n = strlen(h) + strlen(rest) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%s%s", h, rest);
    free(h);
    free(t);
    return out;
}

static void test_header(void **state)
{
    fixture *f = *state;
    const char *kid = ch__signer_kid(f->signer);
    char h[256];
    char *t;
    struct {
        const char *fmt;
        const char *want;
    } cases[] = {
        {"{\"alg\":\"HS256\",\"kid\":\"%s\",\"typ\":\"charter-artifact\"}", "algorithm"},
        {"{\"alg\":\"none\",\"kid\":\"%s\",\"typ\":\"charter-artifact\"}", "algorithm"},
        {"{\"alg\":\"eddsa\",\"kid\":\"%s\",\"typ\":\"charter-artifact\"}", "algorithm"},
        {"{\"kid\":\"%s\",\"typ\":\"charter-artifact\"}", "algorithm"},
        {"{\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"JWT\"}", "type"},
        {"{\"alg\":\"EdDSA\",\"kid\":\"%s\"}", "type"},
        {"{\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"charter-artifact\",\"crit\":[\"b64\"]}",
         "critical"},
        {"{\"alg\":\"EdDSA\",\"kid\":\"x%s\",\"typ\":\"charter-artifact\"}", "key id"},
        {"{\"alg\":\"EdDSA\",\"typ\":\"charter-artifact\",\"x\":\"%s\"}", "key id"},
        {"{\"alg\":\"EdDSA\",\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"charter-artifact\"}",
         "header"},
        {"[\"%s\"]", "header"},
        {"\"%s\"", "header"},
        {"{\"alg\":\"EdDSA\",\"kid\":\"%s\"", "header"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(h, sizeof(h), cases[i].fmt, kid);
        t = with_header(f, h);
        refused(f->jwk, t, f->now_ms, cases[i].want);
        free(t);
    }
    /* The genuine header, re-encoded by hand, is accepted: the checks above are not
     * refusing everything. */
    snprintf(h, sizeof(h), "{\"alg\":\"EdDSA\",\"kid\":\"%s\",\"typ\":\"charter-artifact\"}", kid);
    t = with_header(f, h);
    accepted(f->jwk, t, f->now_ms);
    free(t);
    /* Same fields in another order: the signature covers the header bytes. */
    snprintf(h, sizeof(h), "{\"typ\":\"charter-artifact\",\"alg\":\"EdDSA\",\"kid\":\"%s\"}", kid);
    t = with_header(f, h);
    refused(f->jwk, t, f->now_ms, "signature does not verify");
    free(t);
}

static void test_format(void **state)
{
    fixture *f = *state;
    char *t = sign(f, payload(f, 30));
    size_t len = strlen(t), d1 = (size_t)(strchr(t, '.') - t), d2 = (size_t)(strrchr(t, '.') - t);
    char *c = malloc(len + 64);

    /* Two parts (one dot), four parts, empty parts. */
    snprintf(c, len + 64, "%.*s", (int)d2, t);
    refused(f->jwk, c, f->now_ms, "three");
    snprintf(c, len + 64, "%s.AAAA", t);
    refused(f->jwk, c, f->now_ms, "three");
    snprintf(c, len + 64, "%s.", t);
    refused(f->jwk, c, f->now_ms, "three");
    snprintf(c, len + 64, ".%s", t);
    refused(f->jwk, c, f->now_ms, "three");
    snprintf(c, len + 64, "%.*s..%s", (int)d1, t, t + d2 + 1);
    refused(f->jwk, c, f->now_ms, "three");
    refused(f->jwk, "..", f->now_ms, "three");
    refused(f->jwk, "", f->now_ms, "three");
    refused(f->jwk, "abc", f->now_ms, "three");
    /* Padding, whitespace and non-base64url characters in each part. */
    const char *junk[] = {"=", "==", " ", "\n", "+", "/", "%"};
    for (size_t k = 0; k < sizeof(junk) / sizeof(junk[0]); k++) {
        size_t at[] = {d1, d2, len};
        for (size_t p = 0; p < 3; p++) {
            snprintf(c, len + 64, "%.*s%s%s", (int)at[p], t, junk[k], t + at[p]);
            refused(f->jwk, c, f->now_ms, NULL);
        }
    }
    /* A missing token; an over-long one. */
    ch_err e;
    assert_int_equal(ch_artifact_verify(f->jwk, strlen(f->jwk), NULL, f->now_ms, NULL, &e),
                     CH_INVALID_VALUE);
    char *big = malloc(70000);
    memset(big, 'A', 69999);
    big[69999] = '\0';
    big[10] = '.';
    big[20] = '.';
    refused(f->jwk, big, f->now_ms, "longer");
    free(big);
    free(c);
    free(t);
}

static void test_bad_jwk(void **state)
{
    fixture *f = *state;
    char *t = sign(f, payload(f, 30));
    json_t *good = json_loads(f->jwk, 0, NULL);
    const char *x = json_string_value(json_object_get(good, "x"));
    char buf[512];
    const char *bad[] = {
        "",
        "not json",
        "[]",
        "{\"kty\":\"RSA\",\"crv\":\"Ed25519\",\"x\":\"%s\"}",
        "{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"%s\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%sAA\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%.40s\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s=\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":7,\"y\":\"%s\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"alg\":\"RS256\",\"x\":\"%s\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"use\":\"enc\",\"x\":\"%s\"}",
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":5,\"x\":\"%s\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(buf, sizeof(buf), bad[i], x);
        refused(buf, t, f->now_ms, "public key");
    }
    /* A minimal JWK (no alg, use or kid) is enough. */
    snprintf(buf, sizeof(buf), "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"}", x);
    accepted(buf, t, f->now_ms);
    ch_err e;
    assert_int_equal(ch_artifact_verify(NULL, 0, t, f->now_ms, NULL, &e), CH_INVALID_VALUE);
    json_decref(good);
    free(t);
}

/* ---- the offline decision ---- */

static void decide_is(const json_t *claims, const char *tool, const char *lane,
                      const char *resource, const char *cls, bool allow, const char *reason)
{
    const char *r = NULL;
    bool got = ch_artifact_decide(claims, tool, lane, resource, cls, &r);
    if (got != allow || r == NULL || strcmp(r, reason) != 0)
        fail_msg("decide %s/%s/%s/%s: got %d %s, want %d %s", tool ? tool : "(null)",
                 lane ? lane : "(null)", resource ? resource : "(null)", cls ? cls : "(null)",
                 got, r ? r : "(null)", allow, reason);
}

static void test_decide(void **state)
{
    fixture *f = *state;
    char *t = sign(f, payload(f, 30));
    json_t *c = NULL;
    ch_err e;
    assert_int_equal(ch_artifact_verify(f->jwk, strlen(f->jwk), t, f->now_ms, &c, &e), CH_OK);
    /* The scope of payload(): tools git and shell, lane repo, resources doc:readme and
     * the repo:web/ prefix, classes read, write and external. */
    decide_is(c, "git", "repo", "repo:web/src/a.ts", "read", true, "ok");
    decide_is(c, "shell", "repo", "doc:readme", "write", true, "ok");
    /* external is in scope, but never decided offline; irreversible neither, and that
     * comes before any scope rule. */
    decide_is(c, "git", "repo", "doc:readme", "external", false, "online_check_required");
    decide_is(c, "git", "repo", "doc:readme", "irreversible", false, "online_check_required");
    decide_is(c, "deploy", "prod", "x", "irreversible", false, "online_check_required");
    decide_is(c, "deploy", "repo", "doc:readme", "read", false, "tool_out_of_scope");
    decide_is(c, "git", "prod", "doc:readme", "read", false, "lane_out_of_scope");
    decide_is(c, "git", "repo", "repo:api/x", "read", false, "resource_out_of_scope");
    decide_is(c, "git", "repo", "doc:readme", "admin", false, "class_out_of_scope");
    decide_is(c, "git", "repo", "doc:readme", NULL, false, "class_out_of_scope");
    decide_is(c, "deploy", "repo", "doc:readme", "admin", false, "tool_out_of_scope");
    /* reason may be NULL. */
    assert_true(ch_artifact_decide(c, "git", "repo", "doc:readme", "read", NULL));
    json_decref(c);
    free(t);

    /* A class missing from the scope. */
    json_t *p = payload(f, 30);
    json_object_set_new(json_object_get(p, "scope"), "classes", json_pack("[s]", "read"));
    decide_is(p, "git", "repo", "doc:readme", "write", false, "class_out_of_scope");
    decide_is(p, "git", "repo", "doc:readme", "read", true, "ok");
    /* Claims that are not a verified payload fail closed. */
    json_object_set_new(p, "scope", json_string("everything"));
    decide_is(p, "git", "repo", "doc:readme", "read", false, "artifact_invalid");
    decide_is(NULL, "git", "repo", "doc:readme", "read", false, "artifact_invalid");
    decide_is(NULL, "git", "repo", "doc:readme", "external", false, "online_check_required");
    json_decref(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwk, setup, teardown),
        cmocka_unit_test(test_key_file_refused),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_jwk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decide, setup, teardown),
    };
    ch_log_set_level(CH_LOG_WARN); /* no line per key created */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
