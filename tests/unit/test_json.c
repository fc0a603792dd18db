/*
 * test_json.c — canonical JSON, its SHA-256, and the request-body parser.
 */
#include "unit.h"

#include "charter.h"

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (v == NULL)
        fail_msg("test JSON does not parse: %s: %s", text, jerr.text);
    return v;
}

static void hex(const uint8_t h[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static void test_canonical_sorts_recursively(void **state)
{
    (void)state;
    json_t *v = load("{\"b\":1,\"a\":{\"d\":[1,2],\"c\":null}}");
    size_t len = 0;
    char *s = ch_json_canonical(v, &len);
    assert_non_null(s);
    assert_string_equal(s, "{\"a\":{\"c\":null,\"d\":[1,2]},\"b\":1}");
    assert_int_equal(len, strlen(s));
    free(s);
    json_decref(v);

    /* Objects inside arrays are sorted too; array order is kept. */
    v = load(" { \"z\" : [ {\"y\": 1, \"x\": 2}, 3, \"s t\" ] ,\n\t\"m\": true } ");
    s = ch_json_canonical(v, NULL);
    assert_non_null(s);
    assert_string_equal(s, "{\"m\":true,\"z\":[{\"x\":2,\"y\":1},3,\"s t\"]}");
    free(s);
    json_decref(v);
}

static void test_canonical_scalars(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"\"hi\"", "\"hi\""}, {"1", "1"},   {"null", "null"},
        {"[]", "[]"},         {"{}", "{}"}, {"\"caf\\u00e9\"", "\"caf\xc3\xa9\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *v = load(cases[i][0]);
        char *s = ch_json_canonical(v, NULL);
        assert_non_null(s);
        assert_string_equal(s, cases[i][1]);
        free(s);
        json_decref(v);
    }
}

static void test_canonical_order_independent(void **state)
{
    (void)state;
    json_t *a = json_object(), *b = json_object();
    json_t *ai = json_object(), *bi = json_object();
    /* a: keys inserted z, m, a; b: a, m, z — including a nested object. */
    json_object_set_new(ai, "q", json_integer(1));
    json_object_set_new(ai, "p", json_string("x"));
    json_object_set_new(a, "z", json_true());
    json_object_set_new(a, "m", ai);
    json_object_set_new(a, "a", json_pack("[i,s]", 1, "two"));
    json_object_set_new(bi, "p", json_string("x"));
    json_object_set_new(bi, "q", json_integer(1));
    json_object_set_new(b, "a", json_pack("[i,s]", 1, "two"));
    json_object_set_new(b, "m", bi);
    json_object_set_new(b, "z", json_true());

    char *sa = ch_json_canonical(a, NULL), *sb = ch_json_canonical(b, NULL);
    assert_non_null(sa);
    assert_non_null(sb);
    assert_string_equal(sa, sb);
    assert_string_equal(sa, "{\"a\":[1,\"two\"],\"m\":{\"p\":\"x\",\"q\":1},\"z\":true}");

    uint8_t ha[32], hb[32];
    assert_int_equal(ch_json_sha256(a, ha), CH_OK);
    assert_int_equal(ch_json_sha256(b, hb), CH_OK);
    assert_memory_equal(ha, hb, 32);

    /* A different value hashes differently. */
    json_object_set_new(b, "z", json_false());
    assert_int_equal(ch_json_sha256(b, hb), CH_OK);
    assert_memory_not_equal(ha, hb, 32);

    free(sa);
    free(sb);
    json_decref(a);
    json_decref(b);
}

static void test_sha256_known_vector(void **state)
{
    (void)state;
    /* printf '%s' '{"a":{"c":null,"d":[1,2]},"b":1}' | sha256sum */
    json_t *v = load("{\"b\":1,\"a\":{\"d\":[1,2],\"c\":null}}");
    uint8_t h[32];
    char text[65];
    assert_int_equal(ch_json_sha256(v, h), CH_OK);
    hex(h, text);
    assert_string_equal(text, "041841b488c2c0db2414925a20ed62f7bba49881bc1bfa5bb9f663304d94a936");
    json_decref(v);
}

/* Parses text with ch_json_parse_object and expects failure with want. */
static void expect_parse_error(const char *buf, size_t len, ch_status want)
{
    ch_err e;
    ch_err_clear(&e);
    json_t *v = ch_json_parse_object(buf, len, &e);
    if (v != NULL) {
        json_decref(v);
        fail_msg("'%.60s' parsed", buf);
    }
    if (e.status != want)
        fail_msg("'%.60s': got %s (%s), want %s", buf, ch_status_name(e.status), e.message,
                 ch_status_name(want));
    assert_true(strlen(e.message) > 0);
}

static void test_parse_object_ok(void **state)
{
    (void)state;
    const char *text = "{\"user\":\"alice\",\"n\":[1,{\"x\":null}],\"u\":\"\\u00e9\xe2\x82\xac\"}";
    ch_err e;
    ch_err_clear(&e);
    json_t *v = ch_json_parse_object(text, strlen(text), &e);
    assert_non_null(v);
    assert_int_equal(e.status, CH_OK);
    assert_string_equal(json_string_value(json_object_get(v, "user")), "alice");
    assert_string_equal(json_string_value(json_object_get(v, "u")), "\xc3\xa9\xe2\x82\xac");
    json_decref(v);

    /* len bounds the input: trailing bytes outside it are not read. */
    const char *more = "{}garbage";
    v = ch_json_parse_object(more, 2, &e);
    assert_non_null(v);
    assert_int_equal(json_object_size(v), 0);
    json_decref(v);
}

static void test_parse_object_errors(void **state)
{
    (void)state;
    expect_parse_error("", 0, CH_BAD_JSON);
    expect_parse_error("   ", 3, CH_BAD_JSON);
    expect_parse_error("{", 1, CH_BAD_JSON);
    expect_parse_error("{\"a\":}", 6, CH_BAD_JSON);
    expect_parse_error("{'a':1}", 7, CH_BAD_JSON);
    expect_parse_error("{\"a\":1,}", 8, CH_BAD_JSON);
    expect_parse_error("{\"a\":1} {}", 10, CH_BAD_JSON);
    expect_parse_error("{\"a\":1}x", 8, CH_BAD_JSON);
    expect_parse_error("nul", 3, CH_BAD_JSON);
    /* invalid UTF-8: a lone continuation byte, a truncated sequence, an overlong form,
     * a surrogate encoded directly */
    expect_parse_error("{\"a\":\"\x80\"}", 9, CH_BAD_JSON);
    expect_parse_error("{\"a\":\"\xc3\"}", 9, CH_BAD_JSON);
    expect_parse_error("{\"a\":\"\xc0\xaf\"}", 10, CH_BAD_JSON);
    expect_parse_error("{\"a\":\"\xed\xa0\x80\"}", 11, CH_BAD_JSON);
    expect_parse_error("{\"\xff\":1}", 6, CH_BAD_JSON);
    /* NUL: as an escape in a string, and as a raw byte inside the buffer */
    expect_parse_error("{\"a\":\"x\\u0000y\"}", 16, CH_BAD_JSON);
    expect_parse_error("{\"a\":1}\0", 8, CH_BAD_JSON);
    /* duplicate keys, also nested */
    expect_parse_error("{\"a\":1,\"a\":2}", 13, CH_BAD_JSON);
    expect_parse_error("{\"x\":{\"a\":1,\"a\":1}}", 19, CH_BAD_JSON);
}

/* Valid JSON that is not an object is bad_request ("body is not a JSON object"),
 * not bad_json: the body parsed, it has the wrong shape. */
static void test_parse_array_is_bad_request(void **state)
{
    (void)state;
    expect_parse_error("[1,2]", 5, CH_BAD_REQUEST);
    expect_parse_error("[]", 2, CH_BAD_REQUEST);
    expect_parse_error(" [{}] ", 6, CH_BAD_REQUEST);
}

static void test_parse_scalar_is_bad_request(void **state)
{
    (void)state;
    expect_parse_error("\"str\"", 5, CH_BAD_REQUEST);
    expect_parse_error("42", 2, CH_BAD_REQUEST);
    expect_parse_error("null", 4, CH_BAD_REQUEST);
    expect_parse_error("true", 4, CH_BAD_REQUEST);
}

/* Builds a body nested `levels` containers deep (the root object is level 1):
 * {"a":{"a":...[ ... ]}} alternating objects and arrays, with 1 in the middle. */
static char *nested(int levels)
{
    size_t cap = (size_t)levels * 8 + 16, n = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    for (int i = 0; i < levels; i++) {
        if (i % 2 == 0) {
            memcpy(s + n, "{\"a\":", 5);
            n += 5;
        } else {
            s[n++] = '[';
        }
    }
    s[n++] = '1';
    for (int i = levels - 1; i >= 0; i--)
        s[n++] = i % 2 == 0 ? '}' : ']';
    s[n] = '\0';
    return s;
}

static void test_parse_object_depth(void **state)
{
    (void)state;
    ch_err e;
    for (int levels = 1; levels <= 64; levels += 63) {
        char *s = nested(levels);
        json_t *v = ch_json_parse_object(s, strlen(s), &e);
        if (v == NULL)
            fail_msg("%d levels refused: %s", levels, e.message);
        json_decref(v);
        free(s);
    }
    /* 64 levels of objects only, innermost empty */
    {
        char s[64 * 5 + 64 + 1];
        size_t n = 0;
        for (int i = 0; i < 63; i++) {
            memcpy(s + n, "{\"k\":", 5);
            n += 5;
        }
        s[n++] = '{';
        for (int i = 0; i < 64; i++)
            s[n++] = '}';
        s[n] = '\0';
        json_t *v = ch_json_parse_object(s, n, &e);
        assert_non_null(v);
        json_decref(v);
    }
    const int too_deep[] = {65, 66, 100, 2047, 2048, 2049, 5000, 100000};
    for (size_t i = 0; i < sizeof(too_deep) / sizeof(too_deep[0]); i++) {
        char *s = nested(too_deep[i]);
        expect_parse_error(s, strlen(s), CH_BAD_JSON);
        free(s);
    }
    /* A deep value beside a shallow one is still too deep. */
    {
        char *inner = nested(64); /* becomes levels 2..65 under the root */
        size_t len = strlen(inner) + 32;
        char *s = malloc(len);
        assert_non_null(s);
        snprintf(s, len, "{\"ok\":1,\"deep\":%s}", inner);
        expect_parse_error(s, strlen(s), CH_BAD_JSON);
        free(s);
        free(inner);
    }
}

static void test_parse_object_null_err(void **state)
{
    (void)state;
    /* e may be NULL (ch_err_set accepts NULL). */
    assert_null(ch_json_parse_object("[", 1, NULL));
    assert_null(ch_json_parse_object("", 0, NULL));
    assert_null(ch_json_parse_object("[]", 2, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canonical_sorts_recursively),
        cmocka_unit_test(test_canonical_scalars),
        cmocka_unit_test(test_canonical_order_independent),
        cmocka_unit_test(test_sha256_known_vector),
        cmocka_unit_test(test_parse_object_ok),
        cmocka_unit_test(test_parse_object_errors),
        cmocka_unit_test(test_parse_array_is_bad_request),
        cmocka_unit_test(test_parse_scalar_is_bad_request),
        cmocka_unit_test(test_parse_object_depth),
        cmocka_unit_test(test_parse_object_null_err),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
