/*
 * test_scope.c — mandate scopes: parsing (every error with its field), rendering,
 * containment, clipping and the per-action decision, including randomized checks of
 * the prefix index against a plain linear scan.
 */
#include "unit.h"

#include "charter.h"
#include "mandates/scope.h"

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (v == NULL)
        fail_msg("test JSON does not parse: %s: %s", text, jerr.text);
    return v;
}

/* Parses text (a scope object) or fails the test. */
static ch__scope parse_ok(const char *text)
{
    ch__scope s;
    ch_err e;
    ch_err_clear(&e);
    json_t *j = load(text);
    ch_status st = ch__scope_parse(j, "scope", NULL, &s, &e);
    if (st != CH_OK)
        fail_msg("scope %s: %s (%s)", text, e.message, e.field);
    json_decref(j);
    return s;
}

static void assert_empty(const ch__scope *s)
{
    assert_null(s->tools.v);
    assert_int_equal(s->tools.n, 0);
    assert_null(s->lanes.v);
    assert_int_equal(s->lanes.n, 0);
    assert_null(s->resources.v);
    assert_int_equal(s->resources.n, 0);
    assert_null(s->prefixes);
    assert_int_equal(s->nprefixes, 0);
    assert_int_equal(s->classes, 0);
}

/* Parsing text with field prefix fails with st naming field; out stays empty. */
static void parse_fails(const char *text, const char *prefix, ch_status st, const char *field)
{
    ch__scope s;
    ch_err e;
    ch_err_clear(&e);
    memset(&s, 0xA5, sizeof(s)); /* out must be reset even on failure */
    json_t *j = load(text);
    ch_status got = ch__scope_parse(j, prefix, NULL, &s, &e);
    json_decref(j);
    if (got != st || e.status != st || strcmp(e.field, field) != 0)
        fail_msg("scope %s: want %s field '%s', got %s field '%s' (%s)", text, ch_status_name(st),
                 field, ch_status_name(got), e.field, e.message);
    assert_true(e.message[0] != '\0');
    assert_empty(&s);
    ch__scope_free(&s);
}

/* The canonical JSON of s equals want. */
static void assert_json(const ch__scope *s, const char *want)
{
    json_t *j = ch__scope_json(s);
    assert_non_null(j);
    char *got = ch_json_canonical(j, NULL);
    assert_non_null(got);
    if (strcmp(got, want) != 0)
        fail_msg("scope JSON\n got %s\nwant %s", got, want);
    free(got);
    json_decref(j);
}

/* ---- classes ---- */

static void test_class_names(void **state)
{
    (void)state;
    assert_int_equal(ch__class_parse("read"), CH__CLASS_READ);
    assert_int_equal(ch__class_parse("write"), CH__CLASS_WRITE);
    assert_int_equal(ch__class_parse("external"), CH__CLASS_EXTERNAL);
    assert_int_equal(ch__class_parse("irreversible"), CH__CLASS_IRREVERSIBLE);
    assert_int_equal(ch__class_parse("Read"), 0);
    assert_int_equal(ch__class_parse(""), 0);
    assert_int_equal(ch__class_parse(NULL), 0);
    assert_string_equal(ch__class_name(CH__CLASS_READ), "read");
    assert_string_equal(ch__class_name(CH__CLASS_WRITE), "write");
    assert_string_equal(ch__class_name(CH__CLASS_EXTERNAL), "external");
    assert_string_equal(ch__class_name(CH__CLASS_IRREVERSIBLE), "irreversible");
    assert_null(ch__class_name(0));
    assert_null(ch__class_name(3));
    assert_null(ch__class_name(16));
}

/* ---- parsing ---- */

static void test_parse_sorts_and_dedups(void **state)
{
    (void)state;
    ch__scope s = parse_ok("{\"tools\":[\"shell\",\"git\",\"shell\",\"browser\",\"git\"],"
                           "\"lanes\":[\"repo\",\"repo\"],"
                           "\"resources\":[\"repo:web/*\",\"doc:a\",\"repo:web/*\",\"*\"],"
                           "\"classes\":[\"irreversible\",\"read\",\"read\",\"external\"]}");
    assert_int_equal(s.tools.n, 3);
    assert_string_equal(s.tools.v[0], "browser");
    assert_string_equal(s.tools.v[1], "git");
    assert_string_equal(s.tools.v[2], "shell");
    assert_int_equal(s.lanes.n, 1);
    assert_int_equal(s.resources.n, 3);
    assert_string_equal(s.resources.v[0], "*");
    assert_string_equal(s.resources.v[1], "doc:a");
    assert_string_equal(s.resources.v[2], "repo:web/*");
    assert_int_equal(s.classes, CH__CLASS_READ | CH__CLASS_EXTERNAL | CH__CLASS_IRREVERSIBLE);
    /* Classes in their fixed order, not alphabetical. */
    assert_json(&s, "{\"classes\":[\"read\",\"external\",\"irreversible\"],"
                    "\"lanes\":[\"repo\"],\"resources\":[\"*\",\"doc:a\",\"repo:web/*\"],"
                    "\"tools\":[\"browser\",\"git\",\"shell\"]}");
    ch__scope_free(&s);
    assert_empty(&s);
    ch__scope_free(&s); /* safe twice */
    assert_empty(&s);
}

static void test_parse_absent_and_null(void **state)
{
    (void)state;
    ch__scope s = parse_ok("{}");
    assert_empty(&s);
    assert_json(&s, "{\"classes\":[],\"lanes\":[],\"resources\":[],\"tools\":[]}");
    ch__scope_free(&s);
    s = parse_ok("{\"tools\":null,\"lanes\":null,\"resources\":null,\"classes\":null}");
    assert_empty(&s);
    ch__scope_free(&s);
    s = parse_ok("{\"tools\":[],\"lanes\":[],\"resources\":[],\"classes\":[]}");
    assert_empty(&s);
    ch__scope_free(&s);
}

static void test_parse_errors(void **state)
{
    (void)state;
    parse_fails("[]", "scope", CH_INVALID_TYPE, "scope");
    parse_fails("\"tools\"", "scope", CH_INVALID_TYPE, "scope");
    parse_fails("null", "scope", CH_INVALID_TYPE, "scope");
    parse_fails("{\"tools\":[],\"xyz\":1}", "scope", CH_UNKNOWN_FIELD, "scope.xyz");
    parse_fails("{\"tool\":[\"git\"]}", "scope", CH_UNKNOWN_FIELD, "scope.tool");
    parse_fails("{\"tools\":\"git\"}", "scope", CH_INVALID_TYPE, "scope.tools");
    parse_fails("{\"lanes\":{}}", "scope", CH_INVALID_TYPE, "scope.lanes");
    parse_fails("{\"resources\":1}", "scope", CH_INVALID_TYPE, "scope.resources");
    parse_fails("{\"classes\":\"read\"}", "scope", CH_INVALID_TYPE, "scope.classes");
    parse_fails("{\"tools\":[\"a\",\"b\",\"c\",4]}", "scope", CH_INVALID_TYPE, "scope.tools[3]");
    parse_fails("{\"lanes\":[null]}", "scope", CH_INVALID_TYPE, "scope.lanes[0]");
    parse_fails("{\"resources\":[\"x\",[]]}", "scope", CH_INVALID_TYPE, "scope.resources[1]");
    parse_fails("{\"classes\":[\"read\",1]}", "scope", CH_INVALID_TYPE, "scope.classes[1]");
    parse_fails("{\"tools\":[\"\"]}", "scope", CH_INVALID_VALUE, "scope.tools[0]");
    parse_fails("{\"lanes\":[\"a\\u0000b\"]}", "scope", CH_INVALID_VALUE, "scope.lanes[0]");
    parse_fails("{\"classes\":[\"read\",\"admin\"]}", "scope", CH_INVALID_VALUE,
                "scope.classes[1]");
    parse_fails("{\"classes\":[\"read\\u0000\"]}", "scope", CH_INVALID_VALUE, "scope.classes[0]");
    /* '*' only as the last character of a resource. */
    parse_fails("{\"resources\":[\"a*b\"]}", "scope", CH_INVALID_VALUE, "scope.resources[0]");
    parse_fails("{\"resources\":[\"ok\",\"*x\"]}", "scope", CH_INVALID_VALUE, "scope.resources[1]");
    parse_fails("{\"resources\":[\"**\"]}", "scope", CH_INVALID_VALUE, "scope.resources[0]");
    parse_fails("{\"resources\":[\"repo:*/*\"]}", "scope", CH_INVALID_VALUE, "scope.resources[0]");
    /* The first bad list wins, in the order tools, lanes, resources, classes. */
    parse_fails("{\"classes\":[\"x\"],\"tools\":[1]}", "scope", CH_INVALID_TYPE, "scope.tools[0]");
    /* The prefix is the caller's. */
    parse_fails("{\"lanes\":[2]}", "delegate.scope", CH_INVALID_TYPE, "delegate.scope.lanes[0]");
    parse_fails("{\"x\":1}", "delegate.scope", CH_UNKNOWN_FIELD, "delegate.scope.x");
    parse_fails("1", "delegate.scope", CH_INVALID_TYPE, "delegate.scope");
}

static void test_parse_limits(void **state)
{
    (void)state;
    char big[300];
    json_t *j, *a;
    ch__scope s;
    ch_err e;

    /* 256 bytes is the longest entry. */
    memset(big, 'x', 256);
    big[256] = '\0';
    j = json_pack("{s:[s]}", "tools", big);
    assert_int_equal(ch__scope_parse(j, "scope", NULL, &s, &e), CH_OK);
    assert_int_equal(strlen(s.tools.v[0]), 256);
    ch__scope_free(&s);
    json_decref(j);
    big[256] = 'x';
    big[257] = '\0';
    j = json_pack("{s:[s, s]}", "resources", "a", big);
    assert_int_equal(ch__scope_parse(j, "scope", NULL, &s, &e), CH_INVALID_VALUE);
    assert_string_equal(e.field, "scope.resources[1]");
    assert_empty(&s);
    json_decref(j);

    /* 1024 entries is the most; duplicates still count as entries. */
    a = json_array();
    for (int i = 0; i < 1024; i++) {
        char name[16];
        snprintf(name, sizeof(name), "t%04d", 1023 - i);
        json_array_append_new(a, json_string(name));
    }
    j = json_pack("{s:O}", "tools", a);
    assert_int_equal(ch__scope_parse(j, "scope", NULL, &s, &e), CH_OK);
    assert_int_equal(s.tools.n, 1024);
    assert_string_equal(s.tools.v[0], "t0000");
    assert_string_equal(s.tools.v[1023], "t1023");
    ch__scope_free(&s);
    json_decref(j);
    json_array_append_new(a, json_string("t0000"));
    j = json_pack("{s:O}", "tools", a);
    assert_int_equal(ch__scope_parse(j, "scope", NULL, &s, &e), CH_INVALID_VALUE);
    assert_string_equal(e.field, "scope.tools");
    assert_empty(&s);
    json_decref(j);
    json_decref(a);
}

static void test_parse_with_base(void **state)
{
    (void)state;
    ch__scope base = parse_ok("{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\"],"
                              "\"resources\":[\"repo:web/*\",\"doc:a\"],"
                              "\"classes\":[\"read\",\"write\"]}");
    ch__scope s;
    ch_err e;
    json_t *j = load("{\"tools\":[\"git\"],\"lanes\":null}");

    /* Absent lists come from base; a given list (even null) replaces it. */
    assert_int_equal(ch__scope_parse(j, "scope", &base, &s, &e), CH_OK);
    assert_json(&s, "{\"classes\":[\"read\",\"write\"],\"lanes\":[],"
                    "\"resources\":[\"doc:a\",\"repo:web/*\"],\"tools\":[\"git\"]}");
    /* The copied resources are indexed too. */
    assert_int_equal(ch__scope_allows(&s, "git", "x", "repo:web/a", CH__CLASS_READ), CH__LANE_OUT);
    ch__scope_free(&s);
    json_decref(j);

    j = load("{}");
    assert_int_equal(ch__scope_parse(j, "scope", &base, &s, &e), CH_OK);
    assert_true(ch__scope_equal(&s, &base));
    assert_true(s.tools.v != base.tools.v); /* a deep copy */
    assert_int_equal(s.nprefixes, 1);
    ch__scope_free(&s);
    json_decref(j);

    j = load("{\"classes\":[]}");
    assert_int_equal(ch__scope_parse(j, "scope", &base, &s, &e), CH_OK);
    assert_int_equal(s.classes, 0);
    assert_int_equal(s.tools.n, 2);
    ch__scope_free(&s);
    json_decref(j);

    /* Errors still name the field, and leave nothing allocated. */
    j = load("{\"resources\":[\"a*b\"]}");
    assert_int_equal(ch__scope_parse(j, "scope", &base, &s, &e), CH_INVALID_VALUE);
    assert_string_equal(e.field, "scope.resources[0]");
    assert_empty(&s);
    json_decref(j);
    ch__scope_free(&base);
}

/* ---- equal and copy ---- */

static void test_equal_and_copy(void **state)
{
    (void)state;
    ch__scope a = parse_ok("{\"tools\":[\"b\",\"a\"],\"lanes\":[\"l\"],"
                           "\"resources\":[\"r/*\",\"x\"],\"classes\":[\"write\",\"read\"]}");
    ch__scope b = parse_ok("{\"tools\":[\"a\",\"b\",\"a\"],\"lanes\":[\"l\"],"
                           "\"resources\":[\"x\",\"r/*\"],\"classes\":[\"read\",\"write\"]}");
    ch__scope c, d;
    assert_true(ch__scope_equal(&a, &b));
    assert_int_equal(ch__scope_copy(&a, &c), CH_OK);
    assert_true(ch__scope_equal(&a, &c));
    assert_true(c.tools.v != a.tools.v && c.tools.v[0] != a.tools.v[0]);
    assert_int_equal(c.nprefixes, 1);
    assert_true(c.prefixes[0].s == c.resources.v[0]); /* indexes its own strings */
    assert_int_equal(ch__scope_allows(&c, "a", "l", "r/deep/x", CH__CLASS_WRITE), CH__ALLOW);
    ch__scope_free(&a); /* the copy does not depend on the original */
    assert_int_equal(ch__scope_allows(&c, "b", "l", "r/", CH__CLASS_READ), CH__ALLOW);

    const char *differ[] = {
        "{\"tools\":[\"a\"],\"lanes\":[\"l\"],\"resources\":[\"r/*\",\"x\"],"
        "\"classes\":[\"read\",\"write\"]}",
        "{\"tools\":[\"a\",\"b\"],\"lanes\":[\"m\"],\"resources\":[\"r/*\",\"x\"],"
        "\"classes\":[\"read\",\"write\"]}",
        "{\"tools\":[\"a\",\"b\"],\"lanes\":[\"l\"],\"resources\":[\"r*\",\"x\"],"
        "\"classes\":[\"read\",\"write\"]}",
        "{\"tools\":[\"a\",\"b\"],\"lanes\":[\"l\"],\"resources\":[\"r/*\",\"x\"],"
        "\"classes\":[\"read\"]}",
    };
    for (size_t i = 0; i < sizeof(differ) / sizeof(differ[0]); i++) {
        d = parse_ok(differ[i]);
        if (ch__scope_equal(&b, &d))
            fail_msg("equal to %s", differ[i]);
        ch__scope_free(&d);
    }

    /* An empty scope copies to an empty scope. */
    d = parse_ok("{}");
    ch__scope_free(&c);
    assert_int_equal(ch__scope_copy(&d, &c), CH_OK);
    assert_empty(&c);
    assert_true(ch__scope_equal(&c, &d));
    ch__scope_free(&b);
    ch__scope_free(&c);
    ch__scope_free(&d);
}

/* ---- subset ---- */

/* child ⊆ parent gives st (and field when not OK). */
static void subset_is(const char *child, const char *parent, ch_status st, const char *field)
{
    ch__scope c = parse_ok(child), p = parse_ok(parent);
    ch_err e;
    ch_err_clear(&e);
    ch_status got = ch__scope_subset(&c, &p, "scope", &e);
    if (got != st || (st != CH_OK && strcmp(e.field, field) != 0))
        fail_msg("%s ⊆ %s: want %s '%s', got %s '%s' (%s)", child, parent, ch_status_name(st),
                 field ? field : "", ch_status_name(got), e.field, e.message);
    ch__scope_free(&c);
    ch__scope_free(&p);
}

static void test_subset_lists(void **state)
{
    (void)state;
    const char *parent = "{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\",\"web\"],"
                         "\"classes\":[\"read\",\"write\"]}";
    subset_is("{}", parent, CH_OK, NULL);
    subset_is(parent, parent, CH_OK, NULL);
    subset_is("{\"tools\":[\"git\"],\"lanes\":[\"web\"],\"classes\":[\"write\"]}", parent, CH_OK,
              NULL);
    subset_is("{\"tools\":[\"git\",\"deploy\"]}", parent, CH_NOT_SUBSET, "scope.tools");
    subset_is("{\"lanes\":[\"prod\"]}", parent, CH_NOT_SUBSET, "scope.lanes");
    subset_is("{\"classes\":[\"read\",\"external\"]}", parent, CH_NOT_SUBSET, "scope.classes");
    subset_is("{\"classes\":[\"irreversible\"]}", parent, CH_NOT_SUBSET, "scope.classes");
    /* Nothing is a subset of an empty scope but the empty scope. */
    subset_is("{}", "{}", CH_OK, NULL);
    subset_is("{\"tools\":[\"git\"]}", "{}", CH_NOT_SUBSET, "scope.tools");
    /* The first failing rule, in the order tools, lanes, resources, classes. */
    subset_is("{\"classes\":[\"external\"],\"resources\":[\"x\"],\"lanes\":[\"z\"],"
              "\"tools\":[\"deploy\"]}",
              parent, CH_NOT_SUBSET, "scope.tools");
    subset_is("{\"classes\":[\"external\"],\"resources\":[\"x\"],\"lanes\":[\"z\"]}", parent,
              CH_NOT_SUBSET, "scope.lanes");
    subset_is("{\"classes\":[\"external\"],\"resources\":[\"x\"]}", parent, CH_NOT_SUBSET,
              "scope.resources");

    /* The message names the entry, and the prefix is the caller's. */
    ch__scope c = parse_ok("{\"tools\":[\"deploy\"]}"), p = parse_ok(parent);
    ch_err e;
    assert_int_equal(ch__scope_subset(&c, &p, "patch.scope", &e), CH_NOT_SUBSET);
    assert_string_equal(e.field, "patch.scope.tools");
    assert_string_equal(e.message, "tool \"deploy\" is not in the parent's scope");
    ch__scope_free(&c);
    c = parse_ok("{\"classes\":[\"read\",\"irreversible\"]}");
    assert_int_equal(ch__scope_subset(&c, &p, "scope", &e), CH_NOT_SUBSET);
    assert_non_null(strstr(e.message, "\"irreversible\""));
    ch__scope_free(&c);
    c = parse_ok("{\"lanes\":[\"web\",\"prod\"]}");
    assert_int_equal(ch__scope_subset(&c, &p, "scope", &e), CH_NOT_SUBSET);
    assert_non_null(strstr(e.message, "\"prod\""));
    ch__scope_free(&c);
    ch__scope_free(&p);
}

static void test_subset_resources(void **state)
{
    (void)state;
    const char *parent = "{\"resources\":[\"doc:readme\",\"repo:web/*\",\"db:*\"]}";
#define RES(list) "{\"resources\":" list "}"
    /* exact in exact */
    subset_is(RES("[\"doc:readme\"]"), parent, CH_OK, NULL);
    subset_is(RES("[\"doc:readme2\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    subset_is(RES("[\"doc:readm\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    /* exact in prefix, including an empty remainder */
    subset_is(RES("[\"repo:web/src/a.ts\"]"), parent, CH_OK, NULL);
    subset_is(RES("[\"repo:web/\"]"), parent, CH_OK, NULL);
    subset_is(RES("[\"repo:web\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    subset_is(RES("[\"repo:api/x\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    /* prefix in prefix */
    subset_is(RES("[\"repo:web/*\"]"), parent, CH_OK, NULL);
    subset_is(RES("[\"repo:web/src/*\"]"), parent, CH_OK, NULL);
    subset_is(RES("[\"repo:web/x*\"]"), parent, CH_OK, NULL);
    subset_is(RES("[\"repo:*\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    subset_is(RES("[\"repo:web*\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    /* a prefix is never inside an exact entry, even one it would cover */
    subset_is(RES("[\"doc:readme*\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    subset_is(RES("[\"doc:*\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    /* '*' covers everything and is inside only '*' */
    subset_is(RES("[\"*\",\"a\",\"b*\"]"), RES("[\"*\"]"), CH_OK, NULL);
    subset_is(RES("[\"*\"]"), parent, CH_NOT_SUBSET, "scope.resources");
    subset_is(RES("[\"*\"]"), RES("[\"*\"]"), CH_OK, NULL);
    /* several entries, the failing one named */
    ch__scope c = parse_ok(RES("[\"db:x\",\"repo:web/a\",\"repo:api/b\"]")), p = parse_ok(parent);
    ch_err e;
    assert_int_equal(ch__scope_subset(&c, &p, "scope", &e), CH_NOT_SUBSET);
    assert_non_null(strstr(e.message, "\"repo:api/b\""));
    ch__scope_free(&c);
    ch__scope_free(&p);
#undef RES
}

/* ---- clip ---- */

/* Clips s by bound; checks the result's JSON, the changed flag and idempotence. */
static void clip_is(const char *s_text, const char *bound_text, const char *want, bool changed)
{
    ch__scope s = parse_ok(s_text), b = parse_ok(bound_text);
    bool ch = !changed;
    assert_int_equal(ch__scope_clip(&s, &b, &ch), CH_OK);
    if (ch != changed)
        fail_msg("clip %s by %s: changed %d, want %d", s_text, bound_text, ch, changed);
    assert_json(&s, want);
    /* The result lies inside the bound, and clipping again changes nothing. */
    assert_int_equal(ch__scope_subset(&s, &b, "scope", NULL), CH_OK);
    assert_int_equal(ch__scope_clip(&s, &b, &ch), CH_OK);
    assert_false(ch);
    assert_json(&s, want);
    ch__scope_free(&s);
    ch__scope_free(&b);
}

static void test_clip(void **state)
{
    (void)state;
    /* Lists and classes are intersected. */
    clip_is("{\"tools\":[\"git\",\"shell\",\"deploy\"],\"lanes\":[\"a\",\"b\"],"
            "\"classes\":[\"read\",\"write\",\"external\"]}",
            "{\"tools\":[\"git\",\"deploy\",\"x\"],\"lanes\":[\"b\",\"c\"],"
            "\"classes\":[\"write\",\"external\",\"irreversible\"]}",
            "{\"classes\":[\"write\",\"external\"],\"lanes\":[\"b\"],\"resources\":[],"
            "\"tools\":[\"deploy\",\"git\"]}",
            true);
    /* Already inside: unchanged. */
    clip_is("{\"tools\":[\"git\"],\"resources\":[\"repo:web/src/*\",\"doc:a\"],"
            "\"classes\":[\"read\"]}",
            "{\"tools\":[\"git\",\"shell\"],\"resources\":[\"repo:web/*\",\"doc:a\"],"
            "\"classes\":[\"read\",\"write\"]}",
            "{\"classes\":[\"read\"],\"lanes\":[],\"resources\":[\"doc:a\",\"repo:web/src/*\"],"
            "\"tools\":[\"git\"]}",
            false);
    /* A narrower prefix of the bound replaces a wider one of s, with the bound's exact
     * entries inside it; entries inside nothing are dropped. */
    clip_is("{\"resources\":[\"repo:web/*\",\"doc:a\",\"db:x\"]}",
            "{\"resources\":[\"repo:web/src/*\",\"repo:web/README\",\"repo:api/*\",\"db:*\"]}",
            "{\"classes\":[],\"lanes\":[],\"resources\":[\"db:x\",\"repo:web/README\","
            "\"repo:web/src/*\"],\"tools\":[]}",
            true);
    /* '*' in s takes all of the bound; '*' in the bound keeps all of s. */
    clip_is("{\"resources\":[\"*\"]}", "{\"resources\":[\"b*\",\"a\"]}",
            "{\"classes\":[],\"lanes\":[],\"resources\":[\"a\",\"b*\"],\"tools\":[]}", true);
    clip_is("{\"resources\":[\"b*\",\"a\"]}", "{\"resources\":[\"*\"]}",
            "{\"classes\":[],\"lanes\":[],\"resources\":[\"a\",\"b*\"],\"tools\":[]}", false);
    /* Two patterns of s taking the same entries of the bound: no duplicates. */
    clip_is("{\"resources\":[\"r*\",\"r/*\",\"r/a/*\"]}", "{\"resources\":[\"r/a/b*\",\"r/a/c\"]}",
            "{\"classes\":[],\"lanes\":[],\"resources\":[\"r/a/b*\",\"r/a/c\"],\"tools\":[]}",
            true);
    /* An exact entry of s that equals a pattern's prefix is not inside the pattern. */
    clip_is("{\"resources\":[\"r/\",\"r\"]}", "{\"resources\":[\"r/*\"]}",
            "{\"classes\":[],\"lanes\":[],\"resources\":[\"r/\"],\"tools\":[]}", true);
    /* Clipping by an empty scope empties everything. */
    clip_is("{\"tools\":[\"a\"],\"lanes\":[\"b\"],\"resources\":[\"*\"],\"classes\":[\"read\"]}",
            "{}", "{\"classes\":[],\"lanes\":[],\"resources\":[],\"tools\":[]}", true);

    /* The clipped scope's index is rebuilt: the new prefix decides. */
    ch__scope s = parse_ok("{\"tools\":[\"t\"],\"lanes\":[\"l\"],\"resources\":[\"repo:*\"],"
                           "\"classes\":[\"read\"]}");
    ch__scope b = parse_ok("{\"tools\":[\"t\"],\"lanes\":[\"l\"],"
                           "\"resources\":[\"repo:web/*\"],\"classes\":[\"read\"]}");
    assert_int_equal(ch__scope_allows(&s, "t", "l", "repo:api/x", CH__CLASS_READ), CH__ALLOW);
    assert_int_equal(ch__scope_clip(&s, &b, NULL), CH_OK);
    assert_int_equal(ch__scope_allows(&s, "t", "l", "repo:api/x", CH__CLASS_READ),
                     CH__RESOURCE_OUT);
    assert_int_equal(ch__scope_allows(&s, "t", "l", "repo:web/x", CH__CLASS_READ), CH__ALLOW);
    ch__scope_free(&s);
    ch__scope_free(&b);
}

/* A scope whose resources are pattern and n exact entries made from exact_fmt. */
static ch__scope many(const char *pattern, const char *exact_fmt, int n)
{
    json_t *res = json_array();
    char r[32];
    json_array_append_new(res, json_string(pattern));
    for (int i = 0; i < n; i++) {
        snprintf(r, sizeof(r), exact_fmt, i);
        json_array_append_new(res, json_string(r));
    }
    json_t *j = json_pack("{s:o}", "resources", res);
    ch__scope s;
    ch_err e;
    if (ch__scope_parse(j, "scope", NULL, &s, &e) != CH_OK)
        fail_msg("many: %s", e.message);
    json_decref(j);
    return s;
}

static void test_clip_limit(void **state)
{
    (void)state;
    /* {"z*", a...} ∩ {"a*", z...} is every exact entry of both: 2 x 600 does not fit in
     * one scope, so the clip is refused and s left as it was. */
    ch__scope s = many("z*", "a%04d", 600), b = many("a*", "z%04d", 600), before;
    bool changed = true;
    assert_int_equal(ch__scope_copy(&s, &before), CH_OK);
    assert_int_equal(ch__scope_clip(&s, &b, &changed), CH_INVALID_VALUE);
    assert_false(changed);
    assert_true(ch__scope_equal(&s, &before));
    assert_int_equal(ch__scope_allows(&s, "t", "l", "z9", 1), CH__TOOL_OUT); /* still usable */
    ch__scope_free(&s);
    ch__scope_free(&b);
    ch__scope_free(&before);

    /* 512 + 512 = 1024 fits. */
    s = many("z*", "a%04d", 512);
    b = many("a*", "z%04d", 512);
    assert_int_equal(ch__scope_clip(&s, &b, &changed), CH_OK);
    assert_true(changed);
    assert_int_equal(s.resources.n, 1024);
    assert_int_equal(s.nprefixes, 0);
    ch__scope_free(&s);
    ch__scope_free(&b);
}

/* ---- allows ---- */

static void test_allows_verdicts(void **state)
{
    (void)state;
    ch__scope s = parse_ok("{\"tools\":[\"git\",\"shell\"],\"lanes\":[\"repo\"],"
                           "\"resources\":[\"repo:web/*\",\"doc:readme\"],"
                           "\"classes\":[\"read\",\"write\"]}");
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "repo:web/src/a.ts", CH__CLASS_READ),
                     CH__ALLOW);
    assert_int_equal(ch__scope_allows(&s, "shell", "repo", "doc:readme", CH__CLASS_WRITE),
                     CH__ALLOW);
    assert_int_equal(ch__scope_allows(&s, "deploy", "repo", "doc:readme", CH__CLASS_READ),
                     CH__TOOL_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "prod", "doc:readme", CH__CLASS_READ),
                     CH__LANE_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "doc:other", CH__CLASS_READ),
                     CH__RESOURCE_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "doc:readme", CH__CLASS_EXTERNAL),
                     CH__CLASS_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "doc:readme", CH__CLASS_IRREVERSIBLE),
                     CH__CLASS_OUT);
    /* Unknown, absent or combined class bits are out. */
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "doc:readme", 0), CH__CLASS_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "doc:readme", 16), CH__CLASS_OUT);
    assert_int_equal(
        ch__scope_allows(&s, "git", "repo", "doc:readme", CH__CLASS_READ | CH__CLASS_WRITE),
        CH__CLASS_OUT);
    /* Order: tool, lane, resource, class. */
    assert_int_equal(ch__scope_allows(&s, "x", "x", "x", 0), CH__TOOL_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "x", "x", 0), CH__LANE_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "x", 0), CH__RESOURCE_OUT);
    /* NULL strings are outside. */
    assert_int_equal(ch__scope_allows(&s, NULL, "repo", "doc:readme", 1), CH__TOOL_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", NULL, "doc:readme", 1), CH__LANE_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repo", NULL, 1), CH__RESOURCE_OUT);
    /* Names are exact: no case folding, no prefixes. */
    assert_int_equal(ch__scope_allows(&s, "Git", "repo", "doc:readme", 1), CH__TOOL_OUT);
    assert_int_equal(ch__scope_allows(&s, "gi", "repo", "doc:readme", 1), CH__TOOL_OUT);
    assert_int_equal(ch__scope_allows(&s, "git", "repos", "doc:readme", 1), CH__LANE_OUT);
    ch__scope_free(&s);

    /* An empty scope allows nothing. */
    s = parse_ok("{}");
    assert_int_equal(ch__scope_allows(&s, "git", "repo", "x", 1), CH__TOOL_OUT);
    ch__scope_free(&s);

    /* A '*' in a tool name is a plain character. */
    s = parse_ok("{\"tools\":[\"*\"],\"lanes\":[\"l\"],\"resources\":[\"*\"],"
                 "\"classes\":[\"read\"]}");
    assert_int_equal(ch__scope_allows(&s, "git", "l", "x", 1), CH__TOOL_OUT);
    assert_int_equal(ch__scope_allows(&s, "*", "l", "x", 1), CH__ALLOW);
    ch__scope_free(&s);
}

static void test_allows_resources(void **state)
{
    (void)state;
    ch__scope s = parse_ok("{\"tools\":[\"t\"],\"lanes\":[\"l\"],\"classes\":[\"read\"],"
                           "\"resources\":[\"repo:web/*\",\"a*\",\"ab/x*\",\"ab/y\",\"b\","
                           "\"c/d/*\",\"c/*\",\"c/d/e/*\"]}");
#define R(r) ch__scope_allows(&s, "t", "l", (r), CH__CLASS_READ)
    assert_int_equal(R("repo:web/src/a.ts"), CH__ALLOW);
    assert_int_equal(R("repo:web/"), CH__ALLOW); /* empty remainder */
    assert_int_equal(R("repo:web/x*"), CH__ALLOW);
    assert_int_equal(R("repo:web/*"), CH__ALLOW);
    assert_int_equal(R("repo:web"), CH__RESOURCE_OUT);
    assert_int_equal(R("repo:we"), CH__RESOURCE_OUT);
    assert_int_equal(R("repo:webx"), CH__RESOURCE_OUT);
    /* "ab/x*" sorts between "a" and "ab/z": the covering "a*" must still be found. */
    assert_int_equal(R("ab/z"), CH__ALLOW);
    assert_int_equal(R("a"), CH__ALLOW);
    assert_int_equal(R("b"), CH__ALLOW);
    assert_int_equal(R("b/"), CH__RESOURCE_OUT);
    assert_int_equal(R("c/d/e/f"), CH__ALLOW);
    assert_int_equal(R("c/z"), CH__ALLOW);
    assert_int_equal(R("c"), CH__RESOURCE_OUT);
    assert_int_equal(R(""), CH__RESOURCE_OUT);
    /* Covered patterns are left out of the index: "a*" covers "ab/x*", and the
     * "c/" pattern covers the two longer "c/d" ones. */
    assert_int_equal(s.nprefixes, 3);
    ch__scope_free(&s);

    s = parse_ok("{\"tools\":[\"t\"],\"lanes\":[\"l\"],\"classes\":[\"read\"],"
                 "\"resources\":[\"*\",\"x\"]}");
    assert_int_equal(R(""), CH__ALLOW);
    assert_int_equal(R("anything at all"), CH__ALLOW);
    assert_int_equal(R("\xff\xfe"), CH__ALLOW);
    ch__scope_free(&s);

    /* Bytes above 0x7f sort after ASCII (unsigned comparison throughout). */
    s = parse_ok("{\"tools\":[\"t\"],\"lanes\":[\"l\"],\"classes\":[\"read\"],"
                 "\"resources\":[\"caf\\u00e9/*\",\"cafe/*\",\"caf!*\"]}");
    assert_int_equal(R("caf\xc3\xa9/menu"), CH__ALLOW);
    assert_int_equal(R("cafe/menu"), CH__ALLOW);
    assert_int_equal(R("caf!x"), CH__ALLOW);
    assert_int_equal(R("caf/menu"), CH__RESOURCE_OUT);
    ch__scope_free(&s);
#undef R
}

/* ---- randomized cross-checks ---- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

/* A random string over a small alphabet, so that prefixes collide often. */
static void rnd_str(char *out, unsigned maxlen)
{
    static const char alpha[] = "ab/\xc3";
    unsigned n = rnd(maxlen + 1);
    for (unsigned i = 0; i < n; i++)
        out[i] = alpha[rnd(sizeof(alpha) - 1)];
    out[n] = '\0';
}

/* Random resources list: exact entries and patterns (the '*' alone sometimes). */
static ch__scope rnd_scope(unsigned max_entries)
{
    json_t *res = json_array();
    unsigned n = rnd(max_entries + 1);
    for (unsigned i = 0; i < n; i++) {
        char r[16];
        rnd_str(r, 5);
        if (rnd(2) == 0) {
            size_t len = strlen(r);
            r[len] = '*';
            r[len + 1] = '\0';
        } else if (r[0] == '\0') {
            strcpy(r, "a");
        }
        json_array_append_new(res, json_string_nocheck(r));
    }
    json_t *j = json_pack("{s:[s], s:[s], s:[s], s:o}", "tools", "t", "lanes", "l", "classes",
                          "read", "resources", res);
    ch__scope s;
    ch_err e;
    if (ch__scope_parse(j, "scope", NULL, &s, &e) != CH_OK)
        fail_msg("random scope: %s", e.message);
    json_decref(j);
    return s;
}

/* The definition, by linear scan. */
static bool naive_covers(const ch__scope *s, const char *r)
{
    for (uint32_t i = 0; i < s->resources.n; i++) {
        const char *p = s->resources.v[i];
        size_t n = strlen(p);
        if (p[n - 1] == '*' ? strncmp(p, r, n - 1) == 0 : strcmp(p, r) == 0)
            return true;
    }
    return false;
}

static bool fast_covers(const ch__scope *s, const char *r)
{
    return ch__scope_allows(s, "t", "l", r, CH__CLASS_READ) == CH__ALLOW;
}

static void test_random_against_linear_scan(void **state)
{
    (void)state;
    for (int round = 0; round < 2000; round++) {
        ch__scope a = rnd_scope(12), b = rnd_scope(12), c;
        assert_int_equal(ch__scope_copy(&a, &c), CH_OK);
        assert_int_equal(ch__scope_clip(&c, &b, NULL), CH_OK);
        for (int k = 0; k < 40; k++) {
            char r[16];
            rnd_str(r, 6);
            if (rnd(8) == 0)
                strcat(r, "*");
            bool in_a = naive_covers(&a, r), in_b = naive_covers(&b, r);
            if (fast_covers(&a, r) != in_a)
                fail_msg("round %d: resource '%s' covered %d by index, %d by scan", round, r, !in_a,
                         in_a);
            /* Clipping is exactly the intersection of what the two cover. */
            if (fast_covers(&c, r) != (in_a && in_b))
                fail_msg("round %d: clip covers '%s' %d, want %d", round, r, !(in_a && in_b),
                         in_a && in_b);
        }
        /* Subset agrees with the definition: every entry of c lies inside b and a. */
        assert_int_equal(ch__scope_subset(&c, &b, "scope", NULL), CH_OK);
        assert_int_equal(ch__scope_subset(&c, &a, "scope", NULL), CH_OK);
        bool a_in_b = true;
        for (uint32_t i = 0; i < a.resources.n && a_in_b; i++) {
            const char *p = a.resources.v[i];
            bool inside = false;
            for (uint32_t j = 0; j < b.resources.n && !inside; j++) {
                const char *q = b.resources.v[j];
                size_t n = strlen(q);
                inside = q[n - 1] == '*' ? strncmp(q, p, n - 1) == 0 : strcmp(p, q) == 0;
            }
            a_in_b = inside;
        }
        assert_int_equal(ch__scope_subset(&a, &b, "scope", NULL) == CH_OK, a_in_b);
        ch__scope_free(&a);
        ch__scope_free(&b);
        ch__scope_free(&c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_names),
        cmocka_unit_test(test_parse_sorts_and_dedups),
        cmocka_unit_test(test_parse_absent_and_null),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_limits),
        cmocka_unit_test(test_parse_with_base),
        cmocka_unit_test(test_equal_and_copy),
        cmocka_unit_test(test_subset_lists),
        cmocka_unit_test(test_subset_resources),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_clip_limit),
        cmocka_unit_test(test_allows_verdicts),
        cmocka_unit_test(test_allows_resources),
        cmocka_unit_test(test_random_against_linear_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
