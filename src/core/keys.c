/*
 * keys.c — tenants and their API keys. A key is "chk_" followed by 32 random bytes in
 * unpadded base64url; only its SHA-256 is stored, so a stolen database does not hold
 * usable keys. Keys carry 256 bits of entropy, which is why a plain (unsalted) hash is
 * enough here.
 */
#include <string.h>

#include <sodium.h>

#include "internal.h"

#define KEY_PREFIX "chk_"
#define KEY_RANDOM 32
#define KEY_TEXT_LEN (sizeof(KEY_PREFIX) - 1 + 43)

typedef struct key_prep {
    char key[CH_KEY_MAX];
    uint8_t hash[32];
} key_prep;

bool ch_tenant_valid(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static void hash_key(const char *key, uint8_t out[32])
{
    crypto_hash_sha256(out, (const unsigned char *)key, strlen(key));
}

static void prep_free(void *p)
{
    sodium_memzero(p, sizeof(key_prep));
    free(p);
}

static ch_status key_create_prepare(ch_db *db, ch_req *req)
{
    uint8_t raw[KEY_RANDOM];
    key_prep *p;

    if (!ch_tenant_valid(req->tenant))
        return ch_err_set(&req->err, CH_INVALID_VALUE, "tenant",
                          "tenant must be 1-64 characters of a-z, 0-9, '_' and '-'");
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return ch_err_set(&req->err, CH_NOMEM, NULL, NULL);
    randombytes_buf(raw, sizeof(raw));
    memcpy(p->key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    sodium_bin2base64(p->key + sizeof(KEY_PREFIX) - 1, sizeof(p->key) - sizeof(KEY_PREFIX) + 1, raw,
                      sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
    hash_key(p->key, p->hash);
    req->priv->prep = p;
    req->priv->prep_free = prep_free;
    return CH_OK;
}

static ch_status key_create_exec(ch_db *db, ch_store *w, ch_req *req)
{
    key_prep *p = req->priv->prep;
    ch_status st = w->methods->key_put(w, p->hash, req->tenant, ch_now_ms());
    if (st != CH_OK)
        return ch_err_set(&req->err, st, NULL, "cannot store the key");
    req->result = json_pack("{s:s}", "tenant", req->tenant);
    return CH_OK;
}

static const ch__op_def key_create_op = {.prepare = key_create_prepare, .exec = key_create_exec};

const ch__op_def *const ch__key_ops[CH__OP_COUNT] = {
    [CH_OP_KEY_CREATE] = &key_create_op,
};

ch_status ch_key_create(ch_db *db, const char *tenant, char key_out[CH_KEY_MAX], ch_err *e)
{
    ch_req req = {.op = CH_OP_KEY_CREATE};
    ch_status st;

    snprintf(req.tenant, sizeof(req.tenant), "%s", tenant ? tenant : "");
    if (!ch_tenant_valid(req.tenant) || strlen(tenant) >= sizeof(req.tenant))
        return ch_err_set(e, CH_INVALID_VALUE, "tenant",
                          "tenant must be 1-64 characters of a-z, 0-9, '_' and '-'");
    st = ch_call(db, &req);
    if (st == CH_OK) {
        memcpy(key_out, ((key_prep *)req.priv->prep)->key, CH_KEY_MAX);
    } else if (e != NULL) {
        *e = req.err;
    }
    ch_req_dispose(&req);
    return st;
}

ch_status ch_key_lookup(ch_db *db, const char *key, char tenant_out[CH_TENANT_MAX])
{
    uint8_t hash[32];
    ch_store *r;
    ch_status st;

    if (key == NULL || strlen(key) != KEY_TEXT_LEN ||
        strncmp(key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1) != 0)
        return CH_UNAUTHORIZED;
    hash_key(key, hash);
    r = ch__reader_get(db, NULL);
    if (r == NULL)
        return CH_IO;
    st = r->methods->key_get(r, hash, tenant_out);
    ch__reader_put(db, r);
    return st == CH_NOT_FOUND ? CH_UNAUTHORIZED : st;
}

ch_status ch_key_count(ch_db *db, int64_t *n)
{
    ch_store *r = ch__reader_get(db, NULL);
    if (r == NULL)
        return CH_IO;
    ch_status st = r->methods->key_count(r, n);
    ch__reader_put(db, r);
    return st;
}
