/*
 * status.c — the status table: names (JSON error codes) and messages generated from
 * CH_STATUS_MAP, and the ch_err helpers that carry field and state context.
 */
#include <stdio.h>
#include <string.h>

#include "charter.h"

static const char *const status_names[] = {
#define XX(name, code, msg) code,
    CH_STATUS_MAP(XX)
#undef XX
};

static const char *const status_messages[] = {
#define XX(name, code, msg) msg,
    CH_STATUS_MAP(XX)
#undef XX
};

const char *ch_status_name(ch_status st)
{
    if ((unsigned)st >= CH__STATUS_COUNT)
        return "internal";
    return status_names[st];
}

const char *ch_strerror(ch_status st)
{
    if ((unsigned)st >= CH__STATUS_COUNT)
        return "unknown status";
    return status_messages[st];
}

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0 if the bytes there are not one. */
static int utf8_seq(const unsigned char *p)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80 ? 4
                                                                                            : 0;
    }
    return 0;
}

/* Makes s valid UTF-8 in place: a sequence cut short at the end (by truncation) is
 * dropped and any other invalid byte becomes '?', so an error message built from
 * client input (a field name, a parser excerpt) can always be sent as JSON. */
static void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = utf8_seq(p);
        if (n > 0) {
            p += n;
            continue;
        }
        /* A valid lead byte followed only by continuation bytes up to the end, fewer
         * than it announces: a sequence cut short by truncation. */
        int want = *p >= 0xF0 && *p <= 0xF4 ? 4 : *p >= 0xE0 && *p <= 0xEF ? 3
                   : *p >= 0xC2 && *p <= 0xDF ? 2 : 0;
        int have = 1;
        while (have < want && (p[have] & 0xC0) == 0x80)
            have++;
        if (want > 0 && have < want && p[have] == '\0') {
            *p = '\0';
            return;
        }
        *p++ = '?';
    }
}

void ch_err_clear(ch_err *e)
{
    e->status = CH_OK;
    e->message[0] = '\0';
    e->field[0] = '\0';
    e->state[0] = '\0';
}

ch_status ch_err_set(ch_err *e, ch_status st, const char *field, const char *fmt, ...)
{
    if (e == NULL)
        return st;
    e->status = st;
    e->state[0] = '\0';
    snprintf(e->field, sizeof(e->field), "%s", field ? field : "");
    if (fmt == NULL) {
        snprintf(e->message, sizeof(e->message), "%s", ch_strerror(st));
    } else {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
        va_end(ap);
    }
    utf8_sanitize(e->message);
    utf8_sanitize(e->field);
    return st;
}
