/*
 * signing.c — the Ed25519 key that signs mandate artifacts, and their offline
 * verification (ch_artifact_verify, ch_artifact_decide in charter.h).
 *
 * An artifact is a JWS compact token: base64url(header) "." base64url(payload) "."
 * base64url(signature), all unpadded. The header is always
 * {"alg":"EdDSA","kid":K,"typ":"charter-artifact"}; verification takes the algorithm
 * from the key, never from the token, and only accepts a header that says the same.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/signing.h"
#include "mandates/scope.h"

#define KEY_FILE "signing.key"
#define KEY_TAG "ed25519:"
#define KEY_TAG_LEN (sizeof(KEY_TAG) - 1)
#define SEED_B64_LEN 43 /* 32 bytes, unpadded base64url */
#define KEY_TEXT_LEN (KEY_TAG_LEN + SEED_B64_LEN + 1)
#define KID_BYTES 12
#define KID_LEN 16 /* KID_BYTES in base64url */
#define TOKEN_MAX 65536
#define JWK_MAX 65536
#define TYP "charter-artifact"
#define B64 sodium_base64_VARIANT_URLSAFE_NO_PADDING

struct ch__signer {
    unsigned char *sk; /* crypto_sign_SECRETKEYBYTES in sodium_malloc memory, read-only */
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    char kid[KID_LEN + 1];
    char x[sodium_base64_ENCODED_LEN(crypto_sign_PUBLICKEYBYTES, B64)];
    char *header; /* base64url of the canonical header, the same for every artifact */
    size_t header_len;
};

/* base64url (unpadded) of bin as a malloc'd string, or NULL. */
static char *b64url(const void *bin, size_t n, size_t *len)
{
    size_t cap = sodium_base64_encoded_len(n, B64);
    char *s = malloc(cap);
    if (s == NULL)
        return NULL;
    sodium_bin2base64(s, cap, bin, n, B64);
    if (len != NULL)
        *len = cap - 1;
    return s;
}

/* Strict unpadded base64url of exactly want bytes (no padding, no whitespace, no
 * stray bits). */
static bool b64url_decode_exact(const char *s, size_t len, unsigned char *out, size_t want)
{
    size_t n = 0;
    return sodium_base642bin(out, want, s, len, NULL, &n, NULL, B64) == 0 && n == want;
}

/* Strict unpadded base64url of any length into a malloc'd buffer (*n bytes). */
static unsigned char *b64url_decode(const char *s, size_t len, size_t *n)
{
    unsigned char *out = malloc(len * 3 / 4 + 1);
    if (out == NULL)
        return NULL;
    if (sodium_base642bin(out, len * 3 / 4 + 1, s, len, NULL, n, NULL, B64) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---- the key file ---- */

/* Reads the seed from path. *found is false (and CH_OK returned) when there is no
 * file. */
static ch_status load_seed(const char *path, unsigned char seed[crypto_sign_SEEDBYTES], bool *found,
                           ch_err *e)
{
    char buf[KEY_TEXT_LEN + 2];
    size_t len = 0;
    struct stat st;
    ch_status rc = CH_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    *found = false;
    if (fd < 0) {
        if (errno == ENOENT)
            return CH_OK;
        return ch_err_set(e, CH_IO, NULL, "cannot open %s: %s", path, strerror(errno));
    }
    *found = true;
    if (fstat(fd, &st) != 0) {
        rc = ch_err_set(e, CH_IO, NULL, "cannot stat %s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ch_err_set(e, CH_CONFIG, NULL, "%s is not a regular file", path);
        goto done;
    }
    if ((st.st_mode & 077) != 0) {
        rc = ch_err_set(e, CH_CONFIG, NULL,
                        "%s may be accessed by group or others (mode %04o); it must be 0600", path,
                        (unsigned)(st.st_mode & 07777));
        goto done;
    }
    /* Read one byte more than a well-formed file holds, to notice a longer one. */
    while (len < sizeof(buf)) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = ch_err_set(e, CH_IO, NULL, "cannot read %s: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    /* "ed25519:" + 43 characters, and a final newline that may be missing. */
    if (len == KEY_TEXT_LEN && buf[len - 1] == '\n')
        len--;
    if (len != KEY_TEXT_LEN - 1 || memcmp(buf, KEY_TAG, KEY_TAG_LEN) != 0 ||
        !b64url_decode_exact(buf + KEY_TAG_LEN, SEED_B64_LEN, seed, crypto_sign_SEEDBYTES)) {
        rc = ch_err_set(e, CH_CONFIG, NULL,
                        "%s is not a charter signing key (one line: \"" KEY_TAG
                        "\" and 43 base64url characters)",
                        path);
        goto done;
    }
done:
    sodium_memzero(buf, sizeof(buf));
    close(fd);
    return rc;
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Creates path holding a new random seed. The text is written and fsynced under a
 * temporary name made with O_CREAT|O_EXCL (mode 0600), then link()ed to path, which
 * fails rather than replaces when path exists: a reader never sees a partial file,
 * and of two processes creating at once exactly one wins (the other gets CH_EXISTS
 * and loads the winner's key). Then the directory is fsynced so the entry is durable
 * before any artifact signed with the key is handed out. */
static ch_status create_seed(const char *dir, const char *path,
                             unsigned char seed[crypto_sign_SEEDBYTES], ch_err *e)
{
    char text[KEY_TEXT_LEN + 1], tmp[2048];
    uint32_t nonce = randombytes_random();
    ch_status rc = CH_OK;
    int fd, dfd;

    randombytes_buf(seed, crypto_sign_SEEDBYTES);
    memcpy(text, KEY_TAG, KEY_TAG_LEN);
    sodium_bin2base64(text + KEY_TAG_LEN, SEED_B64_LEN + 1, seed, crypto_sign_SEEDBYTES, B64);
    text[KEY_TEXT_LEN - 1] = '\n';
    text[KEY_TEXT_LEN] = '\0';
    snprintf(tmp, sizeof(tmp), "%s/." KEY_FILE ".%08x.tmp", dir, (unsigned)nonce);

    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = ch_err_set(e, CH_IO, NULL, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    if (!write_all(fd, text, KEY_TEXT_LEN) || fsync(fd) != 0) {
        rc = ch_err_set(e, CH_IO, NULL, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    close(fd);
    if (link(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        rc = err == EEXIST
                 ? CH_EXISTS
                 : ch_err_set(e, CH_IO, NULL, "cannot create %s: %s", path, strerror(err));
        goto done;
    }
    unlink(tmp);
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        rc = ch_err_set(e, CH_IO, NULL, "cannot fsync %s: %s", dir, strerror(errno));
        if (dfd >= 0)
            close(dfd);
        goto done;
    }
    close(dfd);
    ch_log(CH_LOG_INFO, "created the artifact signing key", "{s:s}", "path", path);
done:
    sodium_memzero(text, sizeof(text));
    return rc;
}

/* ---- the signer ---- */

static void key_id(const unsigned char pk[crypto_sign_PUBLICKEYBYTES], char kid[KID_LEN + 1])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, pk, crypto_sign_PUBLICKEYBYTES);
    sodium_bin2base64(kid, KID_LEN + 1, h, KID_BYTES, B64);
}

ch_status ch__signer_open(const char *data_dir, ch__signer **out, ch_err *e)
{
    unsigned char seed[crypto_sign_SEEDBYTES];
    char path[2048];
    bool found = false;
    ch__signer *s = NULL;
    json_t *h = NULL;
    char *hj = NULL;
    ch_status rc = CH_OK;

    *out = NULL;
    if (sodium_init() < 0)
        return ch_err_set(e, CH_INTERNAL, NULL, "libsodium cannot be initialized");
    if (data_dir == NULL ||
        (size_t)snprintf(path, sizeof(path), "%s/" KEY_FILE, data_dir) >= sizeof(path))
        return ch_err_set(e, CH_CONFIG, NULL, "data dir path is too long");
    /* Two attempts: if another process creates the file between our look and our
     * create, load theirs. */
    for (int attempt = 0; attempt < 2; attempt++) {
        rc = load_seed(path, seed, &found, e);
        if (rc != CH_OK || found)
            break;
        rc = create_seed(data_dir, path, seed, e);
        if (rc != CH_EXISTS) {
            found = rc == CH_OK;
            break;
        }
    }
    if (rc == CH_EXISTS)
        rc = ch_err_set(e, CH_IO, NULL, "%s keeps appearing and disappearing", path);
    if (rc != CH_OK)
        goto fail;

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    s->sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
    if (s->sk == NULL)
        goto nomem;
    crypto_sign_seed_keypair(s->pk, s->sk, seed);
    sodium_mprotect_readonly(s->sk);
    key_id(s->pk, s->kid);
    sodium_bin2base64(s->x, sizeof(s->x), s->pk, sizeof(s->pk), B64);
    h = json_pack("{s:s, s:s, s:s}", "alg", "EdDSA", "kid", s->kid, "typ", TYP);
    hj = h != NULL ? ch_json_canonical(h, NULL) : NULL;
    s->header = hj != NULL ? b64url(hj, strlen(hj), &s->header_len) : NULL;
    if (s->header == NULL)
        goto nomem;
    json_decref(h);
    free(hj);
    sodium_memzero(seed, sizeof(seed));
    *out = s;
    return CH_OK;
nomem:
    rc = ch_err_set(e, CH_NOMEM, NULL, NULL);
fail:
    json_decref(h);
    free(hj);
    sodium_memzero(seed, sizeof(seed));
    ch__signer_close(s);
    return rc;
}

void ch__signer_close(ch__signer *s)
{
    if (s == NULL)
        return;
    sodium_free(s->sk); /* wipes it */
    free(s->header);
    free(s);
}

const char *ch__signer_kid(const ch__signer *s)
{
    return s->kid;
}

json_t *ch__signer_jwk(const ch__signer *s)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "kty", "OKP", "crv", "Ed25519", "alg",
                     "EdDSA", "use", "sig", "kid", s->kid, "x", s->x);
}

char *ch__artifact_sign(const ch__signer *s, const json_t *payload)
{
    unsigned char sig[crypto_sign_BYTES];
    size_t plen, pcap, scap, input_len, total;
    char *pj, *tok;

    if (!json_is_object(payload))
        return NULL;
    pj = ch_json_canonical(payload, &plen);
    if (pj == NULL)
        return NULL;
    pcap = sodium_base64_encoded_len(plen, B64);
    scap = sodium_base64_ENCODED_LEN(crypto_sign_BYTES, B64);
    input_len = s->header_len + 1 + pcap - 1;
    total = input_len + 1 + scap;
    tok = malloc(total);
    if (tok == NULL) {
        free(pj);
        return NULL;
    }
    memcpy(tok, s->header, s->header_len);
    tok[s->header_len] = '.';
    sodium_bin2base64(tok + s->header_len + 1, pcap, (const unsigned char *)pj, plen, B64);
    free(pj);
    crypto_sign_detached(sig, NULL, (const unsigned char *)tok, input_len, s->sk);
    tok[input_len] = '.';
    sodium_bin2base64(tok + input_len + 1, scap, sig, sizeof(sig), B64);
    return tok;
}

/* ---- offline verification ---- */

/* The key of a JWK: kty OKP, crv Ed25519, x 32 bytes; alg and use, when present,
 * EdDSA and sig. kid (NUL-terminated, "" when absent) is copied to kid. */
static ch_status parse_jwk(const char *text, size_t len, unsigned char pk[32], char kid[128],
                           ch_err *e)
{
    json_t *k = NULL, *v;
    const char *x;
    ch_status rc = CH_INVALID_VALUE;

    kid[0] = '\0';
    if (text == NULL || len == 0 || len > JWK_MAX)
        return ch_err_set(e, rc, NULL, "public key: empty or larger than 64 KiB");
    k = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(k)) {
        ch_err_set(e, rc, NULL, "public key is not a JWK (a JSON object)");
        goto done;
    }
    if (!json_is_string(json_object_get(k, "kty")) ||
        strcmp(json_string_value(json_object_get(k, "kty")), "OKP") != 0 ||
        !json_is_string(json_object_get(k, "crv")) ||
        strcmp(json_string_value(json_object_get(k, "crv")), "Ed25519") != 0) {
        ch_err_set(e, rc, NULL, "public key is not an Ed25519 JWK (kty OKP, crv Ed25519)");
        goto done;
    }
    v = json_object_get(k, "alg");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "EdDSA") != 0)) {
        ch_err_set(e, rc, NULL, "public key: alg is not EdDSA");
        goto done;
    }
    v = json_object_get(k, "use");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), "sig") != 0)) {
        ch_err_set(e, rc, NULL, "public key: use is not sig");
        goto done;
    }
    v = json_object_get(k, "x");
    x = json_string_value(v);
    if (x == NULL || !b64url_decode_exact(x, json_string_length(v), pk, 32)) {
        ch_err_set(e, rc, NULL, "public key: x is not 32 bytes of unpadded base64url");
        goto done;
    }
    v = json_object_get(k, "kid");
    if (v != NULL) {
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= 128 ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            ch_err_set(e, rc, NULL, "public key: kid is not a string of 1 to 127 bytes");
            goto done;
        }
        memcpy(kid, json_string_value(v), json_string_length(v) + 1);
    }
    rc = CH_OK;
done:
    json_decref(k);
    return rc;
}

/* A base64url part of the token holding a JSON object, or NULL. */
static json_t *decode_object(const char *s, size_t len)
{
    size_t n = 0;
    unsigned char *bin = b64url_decode(s, len, &n);
    json_t *v;
    if (bin == NULL)
        return NULL;
    v = json_loadb((const char *)bin, n, JSON_REJECT_DUPLICATES, NULL);
    free(bin);
    if (v != NULL && !json_is_object(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

static bool string_is(const json_t *o, const char *key, const char *want)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL && strcmp(s, want) == 0;
}

ch_status ch_artifact_verify(const char *jwk, size_t jwk_len, const char *token, int64_t now_ms,
                             json_t **claims, ch_err *e)
{
    unsigned char pk[32], sig[crypto_sign_BYTES];
    char kid[128];
    json_t *hdr = NULL, *pl = NULL, *v;
    const char *d1, *d2;
    size_t len;
    ch__scope scope;
    ch_err se;
    ch_status rc = CH_INVALID_VALUE;

    if (claims != NULL)
        *claims = NULL;
    if (sodium_init() < 0)
        return ch_err_set(e, CH_INTERNAL, NULL, "libsodium cannot be initialized");
    if (parse_jwk(jwk, jwk_len, pk, kid, e) != CH_OK)
        return CH_INVALID_VALUE;

    /* Shape: exactly three non-empty parts; each is checked as strict base64url when
     * decoded (no padding, whitespace or stray bits). */
    if (token == NULL)
        return ch_err_set(e, rc, "artifact", "artifact is missing");
    len = strnlen(token, TOKEN_MAX + 1);
    if (len > TOKEN_MAX)
        return ch_err_set(e, rc, "artifact", "artifact is longer than %d bytes", TOKEN_MAX);
    d1 = memchr(token, '.', len);
    d2 = d1 != NULL ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL ||
        d1 == token || d2 == d1 + 1 || d2 + 1 == token + len)
        return ch_err_set(e, rc, "artifact",
                          "artifact is not a JWS compact token (three base64url parts)");

    /* The header names what the key must be: checked before the signature so that a
     * token for another key says so. */
    hdr = decode_object(token, (size_t)(d1 - token));
    if (hdr == NULL) {
        ch_err_set(e, rc, "artifact", "artifact header is not base64url of a JSON object");
        goto done;
    }
    if (!string_is(hdr, "alg", "EdDSA")) {
        ch_err_set(e, rc, "artifact", "artifact algorithm is not EdDSA");
        goto done;
    }
    if (!string_is(hdr, "typ", TYP)) {
        ch_err_set(e, rc, "artifact", "artifact type is not " TYP);
        goto done;
    }
    if (json_object_get(hdr, "crit") != NULL) {
        ch_err_set(e, rc, "artifact", "artifact header has critical extensions");
        goto done;
    }
    if (kid[0] != '\0' && !string_is(hdr, "kid", kid)) {
        ch_err_set(e, rc, "artifact", "key id does not match the public key's");
        goto done;
    }
    if (!b64url_decode_exact(d2 + 1, len - (size_t)(d2 + 1 - token), sig, sizeof(sig))) {
        ch_err_set(e, rc, "artifact", "artifact signature is not 64 bytes of base64url");
        goto done;
    }
    if (crypto_sign_verify_detached(sig, (const unsigned char *)token, (size_t)(d2 - token), pk) !=
        0) {
        ch_err_set(e, rc, "artifact", "signature does not verify");
        goto done;
    }

    /* Authentic from here on: the claims. */
    pl = decode_object(d1 + 1, (size_t)(d2 - d1 - 1));
    if (pl == NULL) {
        ch_err_set(e, rc, "artifact", "artifact payload is not a JSON object");
        goto done;
    }
    v = json_object_get(pl, "exp");
    if (!json_is_integer(v)) {
        ch_err_set(e, rc, "artifact", "artifact has no integer exp");
        goto done;
    }
    /* exp * 1000 > now_ms, without overflowing. */
    json_int_t exp = json_integer_value(v);
    bool live = exp > INT64_MAX / 1000   ? true
                : exp < INT64_MIN / 1000 ? false
                                         : (int64_t)exp * 1000 > now_ms;
    if (!live) {
        ch_err_set(e, rc, "artifact", "artifact expired");
        goto done;
    }
    if (!json_is_string(json_object_get(pl, "mdt")) ||
        !json_is_integer(json_object_get(pl, "ver"))) {
        ch_err_set(e, rc, "artifact", "artifact has no mdt string or ver integer");
        goto done;
    }
    if (!json_is_object(json_object_get(pl, "scope"))) {
        ch_err_set(e, rc, "artifact", "artifact has no scope object");
        goto done;
    }
    /* A scope that does not parse would make every later decision fail; say so now. */
    rc = ch__scope_parse(json_object_get(pl, "scope"), "scope", NULL, &scope, &se);
    if (rc != CH_OK) {
        rc = ch_err_set(e, rc == CH_NOMEM ? CH_NOMEM : CH_INVALID_VALUE, "artifact",
                        "artifact scope is invalid: %s", se.message);
        goto done;
    }
    ch__scope_free(&scope);
    if (claims != NULL) {
        *claims = pl;
        pl = NULL;
    }
    rc = CH_OK;
done:
    json_decref(hdr);
    json_decref(pl);
    return rc;
}

bool ch_artifact_decide(const json_t *claims, const char *tool, const char *lane,
                        const char *resource, const char *cls, const char **reason)
{
    static const char *const reasons[] = {
        [CH__ALLOW] = "ok",
        [CH__TOOL_OUT] = "tool_out_of_scope",
        [CH__LANE_OUT] = "lane_out_of_scope",
        [CH__RESOURCE_OUT] = "resource_out_of_scope",
        [CH__CLASS_OUT] = "class_out_of_scope",
    };
    unsigned bit = ch__class_parse(cls);
    const char *r;
    ch__scope scope;
    ch__verdict v;

    /* Fail closed: these classes need the live state of the mandate tree. */
    if (bit == CH__CLASS_EXTERNAL || bit == CH__CLASS_IRREVERSIBLE) {
        r = "online_check_required";
        v = CH__CLASS_OUT;
    } else if (!json_is_object(claims) || ch__scope_parse(json_object_get(claims, "scope"), "scope",
                                                          NULL, &scope, NULL) != CH_OK) {
        /* Not claims that ch_artifact_verify() accepted (or out of memory). */
        r = "artifact_invalid";
        v = CH__CLASS_OUT;
    } else {
        v = ch__scope_allows(&scope, tool, lane, resource, bit);
        ch__scope_free(&scope);
        r = reasons[v];
    }
    if (reason != NULL)
        *reason = r;
    return v == CH__ALLOW;
}
