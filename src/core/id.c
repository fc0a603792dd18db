/*
 * id.c — "<prefix>_<ULID>" identifiers.
 *
 * A ULID is 48 bits of Unix milliseconds followed by 80 random bits, written as 26
 * Crockford base32 characters, so ids sort by creation time. Within one millisecond
 * the random part of the previous id is incremented instead of redrawn, which keeps
 * ids strictly increasing inside a process (list pagination relies on that order).
 * The random bits come from libsodium's CSPRNG.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "charter.h"

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static bool digit[256]; /* the Crockford digits, for ch_id_valid */

/* libsodium must be initialized before its CSPRNG is used. */
__attribute__((constructor)) static void init_sodium(void)
{
    if (sodium_init() < 0)
        abort();
    for (const char *c = crockford; *c; c++)
        digit[(unsigned char)*c] = true;
}

static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t last_ms;
static uint8_t last_rand[10];

/* Increments the 80-bit big-endian random part; returns false on overflow. */
static bool rand_increment(uint8_t r[10])
{
    for (int i = 9; i >= 0; i--) {
        if (++r[i] != 0)
            return true;
    }
    return false;
}

static void encode(uint64_t ms, const uint8_t r[10], char out[27])
{
    uint8_t b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)(ms >> (40 - 8 * i));
    memcpy(b + 6, r, 10);
    /* 128 bits → 26 base32 digits; the first digit carries only the top 3 bits. */
    unsigned __int128 v = 0;
    for (int i = 0; i < 16; i++)
        v = (v << 8) | b[i];
    for (int i = 25; i >= 0; i--) {
        out[i] = crockford[(unsigned)(v & 31)];
        v >>= 5;
    }
    out[26] = '\0';
}

void ch_id_new(const char *prefix, char out[CH_ID_MAX])
{
    uint64_t ms = (uint64_t)ch_now_ms();
    uint8_t r[10];

    pthread_mutex_lock(&id_lock);
    if (ms <= last_ms) {
        /* Same (or an earlier, after a clock step) millisecond: stay monotonic. */
        ms = last_ms;
        if (!rand_increment(last_rand)) {
            ms = ++last_ms;
            randombytes_buf(last_rand, sizeof(last_rand));
        }
    } else {
        last_ms = ms;
        randombytes_buf(last_rand, sizeof(last_rand));
    }
    memcpy(r, last_rand, sizeof(r));
    pthread_mutex_unlock(&id_lock);

    size_t plen = strlen(prefix);
    if (plen > CH_ID_MAX - 28)
        plen = CH_ID_MAX - 28;
    memcpy(out, prefix, plen);
    out[plen] = '_';
    encode(ms, r, out + plen + 1);
}

void ch_id_new_random(const char *prefix, char out[CH_ID_MAX])
{
    uint8_t b[16];
    randombytes_buf(b, sizeof(b));
    uint64_t hi = 0;
    for (int i = 0; i < 6; i++)
        hi = (hi << 8) | b[i];
    size_t plen = strlen(prefix);
    if (plen > CH_ID_MAX - 28)
        plen = CH_ID_MAX - 28;
    memcpy(out, prefix, plen);
    out[plen] = '_';
    encode(hi, b + 6, out + plen + 1);
    sodium_memzero(b, sizeof(b));
}

bool ch_id_valid(const char *prefix, const char *s)
{
    size_t plen = strlen(prefix);
    if (s == NULL || strncmp(s, prefix, plen) != 0 || s[plen] != '_')
        return false;
    s += plen + 1;
    if (s[0] < '0' || s[0] > '7')
        return false;
    /* Every request path with an id comes through here: a table, not a search. */
    for (int i = 0; i < 26; i++) {
        if (!digit[(unsigned char)s[i]])
            return false;
    }
    return s[26] == '\0';
}
