/*
 * log.c — structured logs: one JSON object per line on stderr,
 * {"ts":..., "level":..., "msg":..., <fields>}. Lines are written with one write(2)
 * so lines from different threads never interleave.
 */
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "charter.h"

static atomic_int min_level = CH_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ch_log_set_level(ch_log_level level)
{
    atomic_store(&min_level, (int)level);
}

ch_status ch_log_level_parse(const char *s, ch_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (ch_log_level)i;
            return CH_OK;
        }
    }
    return CH_INVALID_VALUE;
}

void ch_log(ch_log_level level, const char *msg, const char *fmt, ...)
{
    char ts[32];
    json_t *line;

    if ((int)level < atomic_load_explicit(&min_level, memory_order_relaxed))
        return;
    ch_time_format(ch_now_ms(), ts);
    line = json_pack("{s:s, s:s, s:s}", "ts", ts, "level", level_names[level], "msg", msg);
    if (line == NULL)
        return;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        json_t *fields = json_vpack_ex(NULL, 0, fmt, ap);
        va_end(ap);
        if (fields != NULL)
            json_object_update_missing(line, fields);
        json_decref(fields);
    }

    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(line);
    if (text == NULL)
        return;
    size_t n = strlen(text);
    text[n] = '\n';
    /* The terminating NUL becomes the newline; json_dumps allocated n + 1 bytes. */
    ssize_t w = write(STDERR_FILENO, text, n + 1);
    (void)w;
    free(text);
}
