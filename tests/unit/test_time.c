/*
 * test_time.c — duration and size parsing, RFC 3339 formatting, and the clocks.
 */
#include "unit.h"

#include "charter.h"

static void test_duration_ok(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t ms;
    } cases[] = {
        {"500ms", 500},
        {"30s", 30000},
        {"5m", 300000},
        {"24h", 86400000},
        {"7d", 7LL * 86400000},
        {"0", 0},
        {"0ms", 0},
        {"0s", 0},
        {"1ms", 1},
        {"9223372036854775807ms", INT64_MAX},
        {"106751991167d", 106751991167LL * 86400000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int64_t ms = -42;
        if (ch_duration_parse(cases[i].text, &ms) != CH_OK)
            fail_msg("'%s' rejected", cases[i].text);
        assert_int_equal(ms, cases[i].ms);
    }
}

static void test_duration_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "5",
        "30",
        "-1s",
        "5x",
        "1.5s",
        "s",
        "ms",
        " 5s",
        "5s ",
        "5 s",
        "+5s",
        "5S",
        "5MS",
        "5sec",
        "5ss",
        "0x10s",
        "1e3ms",
        "5w",
        "5y",
        "1h30m",
        "9223372036854775808ms",    /* INT64_MAX + 1 */
        "99999999999999999999999s", /* beyond 64 bits */
        "9223372036854775807s",     /* overflows after the multiply */
        "106751991168d",            /* first day count that overflows */
        "18446744073709551615ms",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = -42;
        if (ch_duration_parse(bad[i], &ms) == CH_OK)
            fail_msg("'%s' accepted as %lld", bad[i], (long long)ms);
        assert_int_equal(ms, -42); /* untouched on failure */
    }
    int64_t ms = -42;
    assert_int_not_equal(ch_duration_parse(NULL, &ms), CH_OK);
}

static void test_size_ok(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        uint64_t bytes;
    } cases[] = {
        {"1MiB", 1048576},
        {"512KiB", 524288},
        {"1MB", 1000000},
        {"2GiB", 2147483648ULL},
        {"123", 123},
        {"1048576", 1048576},
        {"1KB", 1000},
        {"3GB", 3000000000ULL},
        {"0", 0},
        {"7B", 7},
        {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t b = 42;
        if (ch_size_parse(cases[i].text, &b) != CH_OK)
            fail_msg("'%s' rejected", cases[i].text);
        assert_int_equal(b, cases[i].bytes);
    }
}

static void test_size_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "abc",
        "MiB",
        "-1",
        "1.5MiB",
        "1 MiB",
        " 1",
        "1mib",
        "1Mib",
        "1XB",
        "1TiB",
        "1MiBs",
        "1k",
        "+1",
        "18446744073709551616",    /* UINT64_MAX + 1 */
        "18446744073709551615KiB", /* overflows after the multiply */
        "17179869184GiB",          /* 2^34 GiB = 2^64 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t b = 42;
        if (ch_size_parse(bad[i], &b) == CH_OK)
            fail_msg("'%s' accepted as %llu", bad[i], (unsigned long long)b);
        assert_int_equal(b, 42);
    }
    uint64_t b = 42;
    assert_int_not_equal(ch_size_parse(NULL, &b), CH_OK);
}

static void test_time_format_known(void **state)
{
    (void)state;
    static const struct {
        int64_t ms;
        const char *text;
    } cases[] = {
        {0, "1970-01-01T00:00:00.000Z"},
        {1700000000123LL, "2023-11-14T22:13:20.123Z"},
        {1, "1970-01-01T00:00:00.001Z"},
        {999, "1970-01-01T00:00:00.999Z"},
        {86400000, "1970-01-02T00:00:00.000Z"},
        {951782400000LL, "2000-02-29T00:00:00.000Z"}, /* leap day */
        {4102444799999LL, "2099-12-31T23:59:59.999Z"},
        {-1, "1969-12-31T23:59:59.999Z"}, /* before the epoch */
        {-1000, "1969-12-31T23:59:59.000Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[32];
        memset(out, 'x', sizeof(out));
        ch_time_format(cases[i].ms, out);
        assert_string_equal(out, cases[i].text);
    }
}

static void test_time_format_extremes(void **state)
{
    (void)state;
    /* Whatever the input, the text fits in 32 bytes and is NUL-terminated. */
    const int64_t extremes[] = {INT64_MAX, INT64_MIN, INT64_MAX / 1000, -62167219200001LL,
                                253402300800000LL};
    for (size_t i = 0; i < sizeof(extremes) / sizeof(extremes[0]); i++) {
        char out[40];
        memset(out, 'x', sizeof(out));
        ch_time_format(extremes[i], out);
        assert_true(memchr(out, '\0', 32) != NULL);
        assert_int_equal(out[32], 'x');
    }
}

static void test_clocks(void **state)
{
    (void)state;
    /* The wall clock is near time(2); the monotonic clock never goes backwards. */
    int64_t now = ch_now_ms();
    int64_t t = (int64_t)time(NULL) * 1000;
    assert_true(now >= t - 2000 && now <= t + 2000);
    uint64_t prev = ch_mono_ns();
    for (int i = 0; i < 1000; i++) {
        uint64_t cur = ch_mono_ns();
        assert_true(cur >= prev);
        prev = cur;
    }
    uint64_t a = ch_mono_ns();
    unit_sleep_ms(20);
    uint64_t b = ch_mono_ns();
    assert_true(b - a >= 19000000u); /* a real timer: at least the time slept */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_ok),
        cmocka_unit_test(test_duration_rejects),
        cmocka_unit_test(test_size_ok),
        cmocka_unit_test(test_size_rejects),
        cmocka_unit_test(test_time_format_known),
        cmocka_unit_test(test_time_format_extremes),
        cmocka_unit_test(test_clocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
