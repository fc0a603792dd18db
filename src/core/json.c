/*
 * json.c — canonical JSON (sorted keys, no insignificant whitespace), its SHA-256,
 * and the one parser every request body goes through.
 */
#include <string.h>

#include <sodium.h>

#include "charter.h"

#define MAX_DEPTH 64

char *ch_json_canonical(const json_t *v, size_t *len)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (s != NULL && len != NULL)
        *len = strlen(s);
    return s;
}

ch_status ch_json_sha256(const json_t *v, uint8_t out[32])
{
    size_t len;
    char *s = ch_json_canonical(v, &len);
    if (s == NULL)
        return CH_NOMEM;
    crypto_hash_sha256(out, (const unsigned char *)s, len);
    free(s);
    return CH_OK;
}

/* Depth of the deepest container in v (a scalar is 0). */
static int depth_of(const json_t *v, int limit)
{
    int max = 0;
    if (limit < 0)
        return 1;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            int d = depth_of(x, limit - 1);
            if (d > max)
                max = d;
        }
        return max + 1;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            int d = depth_of(x, limit - 1);
            if (d > max)
                max = d;
        }
        return max + 1;
    }
    return 0;
}

json_t *ch_json_parse_object(const char *buf, size_t len, ch_err *e)
{
    json_error_t jerr;
    json_t *v;

    if (len == 0) {
        ch_err_set(e, CH_BAD_JSON, NULL, "request body is empty; a JSON object is required");
        return NULL;
    }
    /* jansson rejects invalid UTF-8 and NUL bytes in strings; duplicate keys are
     * refused too, since two values for one field make the request ambiguous. jansson
     * limits nesting to 2048 on its own; the 64-level rule is checked after. */
    v = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (v == NULL) {
        ch_err_set(e, CH_BAD_JSON, NULL, "invalid JSON at line %d column %d: %s", jerr.line,
                   jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        ch_err_set(e, CH_BAD_REQUEST, NULL, "request body must be a JSON object");
        return NULL;
    }
    if (depth_of(v, MAX_DEPTH) > MAX_DEPTH) {
        json_decref(v);
        ch_err_set(e, CH_BAD_JSON, NULL, "JSON nested deeper than %d levels", MAX_DEPTH);
        return NULL;
    }
    return v;
}

void ch_json_wipe(json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;

    if (v == NULL)
        return;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        json_object_foreach(v, k, x)
            ch_json_wipe(x);
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, x)
            ch_json_wipe(x);
        break;
    case JSON_STRING:
        /* jansson owns the bytes; the tree is the caller's and about to be released. */
        sodium_memzero((char *)json_string_value(v), json_string_length(v));
        break;
    default:
        break;
    }
}
