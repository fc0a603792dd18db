/*
 * time.c — clocks, RFC 3339 formatting, and parsing of durations and byte sizes as
 * they appear in charter.yaml, flags and the environment.
 */
#include <errno.h>
#include <stdint.h>
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
    /* Replies carry the time of each request: the date and time of day change once a
     * second, so each thread keeps the last second's text and only writes the
     * milliseconds. */
    static __thread int64_t cached_secs = INT64_MIN;
    static __thread char cached[24]; /* "YYYY-MM-DDTHH:MM:SS" */
    int64_t secs = ms / 1000;
    int frac = (int)(ms % 1000);
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    if (secs != cached_secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        /* Years are clamped to four digits so the text always fits. */
        int year = tm.tm_year + 1900;
        year = year < 0 ? 0 : year > 9999 ? 9999 : year;
        snprintf(cached, sizeof(cached), "%04d-%02u-%02uT%02u:%02u:%02u", year,
                 (unsigned)(tm.tm_mon + 1) % 100, (unsigned)tm.tm_mday % 100,
                 (unsigned)tm.tm_hour % 100, (unsigned)tm.tm_min % 100,
                 (unsigned)tm.tm_sec % 100);
        cached_secs = secs;
    }
    memcpy(out, cached, 19);
    out[19] = '.';
    out[20] = (char)('0' + frac / 100);
    out[21] = (char)('0' + frac / 10 % 10);
    out[22] = (char)('0' + frac % 10);
    out[23] = 'Z';
    out[24] = '\0';
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

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        *v = *v * 10 + (s[i] - '0');
    }
    return true;
}

ch_status ch_time_parse(const char *s, int64_t *ms)
{
    static const unsigned char mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec, frac = 0;

    if (s == NULL || strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' ||
        !digits(s + 5, 2, &mo) || s[7] != '-' || !digits(s + 8, 2, &d) ||
        (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) || s[13] != ':' ||
        !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &sec))
        return CH_INVALID_VALUE;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap) ||
        h > 23 || mi > 59 || sec > 60)
        return CH_INVALID_VALUE;
    const char *p = s + 19;
    if (*p == '.') {
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++) {
            if (n < 3)
                frac = frac * 10 + (*p - '0');
        }
        if (n == 0)
            return CH_INVALID_VALUE;
        for (; n < 3; n++)
            frac *= 10;
    }
    int offset = 0; /* minutes east of UTC */
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 ||
            om > 59)
            return CH_INVALID_VALUE;
        offset = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return CH_INVALID_VALUE;
    }
    if (*p != '\0')
        return CH_INVALID_VALUE;
    if (sec == 60) /* a leap second is read as the next second's start */
        sec = 59, frac = 999;
    int64_t secs = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
                   sec - (int64_t)offset * 60;
    *ms = secs * 1000 + frac;
    return CH_OK;
}
