/*
 * util.c — small helpers of the command line: allocation that exits on failure,
 * strict number parsing and reading a whole file (or stdin).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

_Noreturn void ch__oom(void)
{
    fputs("charter: out of memory\n", stderr);
    exit(CH__EXIT_FAIL);
}

void *ch__xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (q == NULL)
        ch__oom();
    return q;
}

char *ch__xstrdup(const char *s)
{
    char *d = strdup(s);

    if (d == NULL)
        ch__oom();
    return d;
}

char *ch__xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        ch__oom();
    return s;
}

json_t *ch__json_object(void)
{
    json_t *o = json_object();

    if (o == NULL)
        ch__oom();
    return o;
}

void ch__json_set(json_t *o, const char *key, json_t *v)
{
    if (v == NULL || json_object_set_new(o, key, v) != 0)
        ch__oom();
}

bool ch__parse_int(const char *s, long long *out)
{
    char *end = NULL;
    long long v;

    if (s == NULL || *s == '\0')
        return false;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return false;
    *out = v;
    return true;
}

bool ch__parse_real(const char *s, double *out)
{
    char *end = NULL;
    double v;

    if (s == NULL || *s == '\0')
        return false;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v))
        return false;
    *out = v;
    return true;
}

char *ch__read_file(const char *path, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int saved;

    if (f == NULL)
        return NULL;
    for (;;) {
        size_t got;

        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 8192;
            buf = ch__xrealloc(buf, cap);
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f))
        goto fail;
    if (!is_stdin)
        fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;

fail:
    saved = errno ? errno : EIO;
    if (!is_stdin)
        fclose(f);
    free(buf);
    errno = saved;
    return NULL;
}
