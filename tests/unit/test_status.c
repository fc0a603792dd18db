/*
 * test_status.c — the status table (names, messages) and the ch_err helpers.
 */
#include "unit.h"

#include "charter.h"

/* NOMEM, IO and INTERNAL share the public code "internal" on purpose: a client must
 * not learn which kind of server fault happened. */
static bool is_internal_alias(ch_status st)
{
    return st == CH_NOMEM || st == CH_IO || st == CH_INTERNAL;
}

static void test_names_distinct_and_non_empty(void **state)
{
    (void)state;
    for (int i = 0; i < CH__STATUS_COUNT; i++) {
        const char *a = ch_status_name((ch_status)i);
        assert_non_null(a);
        assert_true(strlen(a) > 0);
        for (int j = i + 1; j < CH__STATUS_COUNT; j++) {
            const char *b = ch_status_name((ch_status)j);
            if (is_internal_alias((ch_status)i) && is_internal_alias((ch_status)j)) {
                assert_string_equal(a, "internal");
                assert_string_equal(b, "internal");
            } else if (strcmp(a, b) == 0) {
                fail_msg("statuses %d and %d share the name '%s'", i, j, a);
            }
        }
    }
}

static void test_names_known_values(void **state)
{
    (void)state;
    assert_string_equal(ch_status_name(CH_OK), "ok");
    assert_string_equal(ch_status_name(CH_BAD_JSON), "bad_json");
    assert_string_equal(ch_status_name(CH_SEQ_CONFLICT), "seq_conflict");
    assert_string_equal(ch_status_name(CH_INVALID_TRANSITION), "invalid_transition");
    assert_string_equal(ch_status_name(CH_RESERVED_KIND), "reserved_kind");
    assert_string_equal(ch_status_name(CH_NOMEM), "internal");
    assert_string_equal(ch_status_name(CH_IO), "internal");
    assert_string_equal(ch_status_name(CH_INTERNAL), "internal");
    assert_string_equal(ch_status_name(CH_CONFIG), "config");
    assert_string_equal(ch_status_name(CH_EXISTS), "exists");
    /* Names are JSON codes: lower-case snake_case. */
    for (int i = 0; i < CH__STATUS_COUNT; i++) {
        for (const char *c = ch_status_name((ch_status)i); *c; c++)
            assert_true((*c >= 'a' && *c <= 'z') || *c == '_');
    }
}

static void test_messages_distinct_and_non_empty(void **state)
{
    (void)state;
    for (int i = 0; i < CH__STATUS_COUNT; i++) {
        const char *a = ch_strerror((ch_status)i);
        assert_non_null(a);
        assert_true(strlen(a) > 0);
        for (int j = i + 1; j < CH__STATUS_COUNT; j++) {
            if (strcmp(a, ch_strerror((ch_status)j)) == 0)
                fail_msg("statuses %d and %d share the message '%s'", i, j, a);
        }
    }
    assert_string_equal(ch_strerror(CH_SEQ_CONFLICT),
                        "expect_seq does not match the session's seq");
}

static void test_out_of_range_is_safe(void **state)
{
    (void)state;
    const ch_status bad[] = {CH__STATUS_COUNT, (ch_status)(CH__STATUS_COUNT + 1), (ch_status)1000,
                             (ch_status)-1, (ch_status)0x7fffffff};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *n = ch_status_name(bad[i]);
        const char *m = ch_strerror(bad[i]);
        assert_non_null(n);
        assert_non_null(m);
        assert_true(strlen(n) > 0);
        assert_true(strlen(m) > 0);
    }
}

static void test_err_set_fills_field_and_message(void **state)
{
    (void)state;
    ch_err e;
    ch_err_clear(&e);
    snprintf(e.state, sizeof(e.state), "paused");
    ch_status st = ch_err_set(&e, CH_INVALID_VALUE, "usage.tokens", "value %d too big", 42);
    assert_int_equal(st, CH_INVALID_VALUE);
    assert_int_equal(e.status, CH_INVALID_VALUE);
    assert_string_equal(e.field, "usage.tokens");
    assert_string_equal(e.message, "value 42 too big");
    /* A new error does not inherit the state of an earlier one. */
    assert_string_equal(e.state, "");
}

static void test_err_set_null_field_and_fmt(void **state)
{
    (void)state;
    ch_err e;
    memset(&e, 'x', sizeof(e));
    ch_status st = ch_err_set(&e, CH_NOT_FOUND, NULL, NULL);
    assert_int_equal(st, CH_NOT_FOUND);
    assert_int_equal(e.status, CH_NOT_FOUND);
    assert_string_equal(e.field, "");
    assert_string_equal(e.message, ch_strerror(CH_NOT_FOUND));
    assert_string_equal(e.state, "");

    st = ch_err_set(&e, CH_SEQ_CONFLICT, "expect_seq", NULL);
    assert_string_equal(e.field, "expect_seq");
    assert_string_equal(e.message, ch_strerror(CH_SEQ_CONFLICT));
}

static void test_err_set_null_err(void **state)
{
    (void)state;
    assert_int_equal(ch_err_set(NULL, CH_IO, "x", "y %s", "z"), CH_IO);
    assert_int_equal(ch_err_set(NULL, CH_OK, NULL, NULL), CH_OK);
}

static void test_err_set_truncates(void **state)
{
    (void)state;
    char longf[400], longm[600];
    memset(longf, 'f', sizeof(longf) - 1);
    longf[sizeof(longf) - 1] = '\0';
    memset(longm, 'm', sizeof(longm) - 1);
    longm[sizeof(longm) - 1] = '\0';
    ch_err e;
    ch_err_set(&e, CH_BAD_REQUEST, longf, "%s", longm);
    assert_int_equal(strlen(e.field), sizeof(e.field) - 1);
    assert_int_equal(strlen(e.message), sizeof(e.message) - 1);
    assert_int_equal(e.field[0], 'f');
    assert_int_equal(e.message[0], 'm');
}

static void test_err_clear(void **state)
{
    (void)state;
    ch_err e;
    ch_err_set(&e, CH_INVALID_STATE, "x", "msg");
    snprintf(e.state, sizeof(e.state), "closed");
    ch_err_clear(&e);
    assert_int_equal(e.status, CH_OK);
    assert_string_equal(e.message, "");
    assert_string_equal(e.field, "");
    assert_string_equal(e.state, "");
}

/* Error text built from client bytes must always be valid UTF-8 (it is sent as JSON):
 * surrogates, overlongs, bytes above U+10FFFF and stray continuation bytes become '?',
 * a sequence cut short at the end is dropped, valid text is kept as it is. */
static void test_err_text_is_valid_utf8(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"\xED\xA0\x80", "???"},          /* UTF-16 surrogate */
        {"\xE0\x80\x80", "???"},          /* overlong */
        {"\xF5\x80\x80\x80", "????"},    /* above U+10FFFF */
        {"\xC0\xAF", "??"},               /* overlong '/' */
        {"a\x80" "b", "a?b"},              /* stray continuation byte */
        {"ok \xC3\xA9", "ok \xC3\xA9"},     /* valid: kept */
        {"\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80"}, /* valid 4-byte: kept */
        {"cut \xE2\x82", "cut "},          /* cut short at the end: dropped */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ch_err e;
        ch_err_set(&e, CH_UNKNOWN_FIELD, cases[i].in, "field %s", cases[i].in);
        assert_string_equal(e.field, cases[i].want);
        json_t *j = json_string(e.message);
        assert_non_null(j);
        json_decref(j);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_distinct_and_non_empty),
        cmocka_unit_test(test_err_text_is_valid_utf8),
        cmocka_unit_test(test_names_known_values),
        cmocka_unit_test(test_messages_distinct_and_non_empty),
        cmocka_unit_test(test_out_of_range_is_safe),
        cmocka_unit_test(test_err_set_fills_field_and_message),
        cmocka_unit_test(test_err_set_null_field_and_fmt),
        cmocka_unit_test(test_err_set_null_err),
        cmocka_unit_test(test_err_set_truncates),
        cmocka_unit_test(test_err_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
