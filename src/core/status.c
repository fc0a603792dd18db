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

/* Cuts s back to a whole UTF-8 sequence and replaces any invalid byte by '?', so an
 * error message built from client input (a field name, a parser excerpt) can always
 * be sent as JSON. */
static void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3
                                 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        int ok = n > 0;
        for (int i = 1; ok && i < n; i++)
            ok = (p[i] & 0xC0) == 0x80;
        if (n == 2 && ok)
            ok = *p >= 0xC2;
        if (!ok) {
            if (n > 1 && p[1] == '\0') {
                *p = '\0'; /* a sequence cut short by truncation */
                return;
            }
            *p++ = '?';
            continue;
        }
        p += n;
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
