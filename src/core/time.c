/*
 * time.c — clocks, RFC 3339 formatting, and parsing of durations and byte sizes as
 * they appear in charter.yaml, flags and the environment.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "charter.h"

int64_t ch_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t ch_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void ch_time_format(int64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    struct tm tm;
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    gmtime_r(&secs, &tm);
    /* Years are clamped to four digits so the text always fits. */
    int year = tm.tm_year + 1900;
    year = year < 0 ? 0 : year > 9999 ? 9999 : year;
    snprintf(out, 32, "%04d-%02u-%02uT%02u:%02u:%02u.%03uZ", year, (unsigned)(tm.tm_mon + 1) % 100,
             (unsigned)tm.tm_mday % 100, (unsigned)tm.tm_hour % 100, (unsigned)tm.tm_min % 100,
             (unsigned)tm.tm_sec % 100, (unsigned)frac % 1000);
}

/* Parses a non-negative decimal number and returns where its digits end. */
static const char *parse_uint(const char *s, uint64_t *v)
{
    char *end;
    if (*s < '0' || *s > '9')
        return NULL;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno != 0)
        return NULL;
    *v = n;
    return end;
}

ch_status ch_duration_parse(const char *s, int64_t *ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    uint64_t n;
    const char *end = s ? parse_uint(s, &n) : NULL;

    if (end == NULL)
        return CH_INVALID_VALUE;
    if (*end == '\0') {
        /* A bare number is allowed only for 0: "30" is ambiguous (seconds? ms?). */
        if (n != 0)
            return CH_INVALID_VALUE;
        *ms = 0;
        return CH_OK;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            if (n > (uint64_t)INT64_MAX / units[i].ms)
                return CH_INVALID_VALUE;
            *ms = (int64_t)(n * units[i].ms);
            return CH_OK;
        }
    }
    return CH_INVALID_VALUE;
}

ch_status ch_size_parse(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1},           {"B", 1},          {"KiB", 1024},   {"KB", 1000},
                 {"MiB", 1 << 20},  {"MB", 1000000},   {"GiB", 1 << 30}, {"GB", 1000000000}};
    uint64_t n;
    const char *end = s ? parse_uint(s, &n) : NULL;

    if (end == NULL)
        return CH_INVALID_VALUE;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            if (n > UINT64_MAX / units[i].mult)
                return CH_INVALID_VALUE;
            *bytes = n * units[i].mult;
            return CH_OK;
        }
    }
    return CH_INVALID_VALUE;
}
