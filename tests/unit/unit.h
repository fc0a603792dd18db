/*
 * unit.h — helpers shared by the cmocka unit tests: private temporary directories
 * and files, and recursive removal. Header-only; every helper is static inline.
 */
#ifndef CHARTER_TESTS_UNIT_H
#define CHARTER_TESTS_UNIT_H

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h> /* cmocka.h needs these three first */
#include <stdint.h>
#include <cmocka.h>

#define UNIT_PATH_MAX 1024

/* Creates a fresh private directory ($TMPDIR or /tmp)/charter-unit-XXXXXX and writes
 * its path to out. Fails the test when it cannot. */
static inline void unit_mkdtemp(char out[UNIT_PATH_MAX])
{
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    int n = snprintf(out, UNIT_PATH_MAX, "%s/charter-unit-XXXXXX", tmp);
    assert_true(n > 0 && n < UNIT_PATH_MAX);
    assert_non_null(mkdtemp(out));
}

static inline int unit_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes path and everything under it (depth first, symlinks not followed). */
static inline void unit_rm_rf(const char *path)
{
    int rc = nftw(path, unit_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    assert_true(rc == 0 || errno == ENOENT);
}

/* Writes text to dir/name and puts the file's path in out. */
static inline void unit_write_file(const char *dir, const char *name, const char *text,
                                   char out[UNIT_PATH_MAX])
{
    int n = snprintf(out, UNIT_PATH_MAX, "%s/%s", dir, name);
    assert_true(n > 0 && n < UNIT_PATH_MAX);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    size_t len = strlen(text);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Sleeps for ms milliseconds. */
static inline void unit_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#endif /* CHARTER_TESTS_UNIT_H */
