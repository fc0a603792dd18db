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
    return st;
}
