/*
 * test_id.c — "<prefix>_<ULID>" ids: format, validation, monotonic order within a
 * process and uniqueness across threads.
 */
#include <pthread.h>

#include "unit.h"

#include "charter.h"

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static void test_format(void **state)
{
    (void)state;
    char id[CH_ID_MAX];
    ch_id_new("sess", id);
    assert_int_equal(strlen(id), strlen("sess_") + 26);
    assert_memory_equal(id, "sess_", 5);
    for (int i = 5; i < 31; i++) {
        if (strchr(crockford, id[i]) == NULL)
            fail_msg("id %s has a non-Crockford character at %d", id, i);
    }
    /* 128 bits in 26 digits: the first digit carries 3 bits. */
    assert_true(id[5] <= '7');
    assert_true(ch_id_valid("sess", id));

    ch_id_new("k", id);
    assert_int_equal(strlen(id), 2 + 26);
    assert_true(ch_id_valid("k", id));
    assert_false(ch_id_valid("sess", id));
}

static void test_time_prefix(void **state)
{
    (void)state;
    /* The first 10 digits are the creation time in ms: decode and compare to now. */
    int64_t before = ch_now_ms();
    char id[CH_ID_MAX];
    ch_id_new("sess", id);
    int64_t after = ch_now_ms();
    uint64_t ms = 0;
    for (int i = 0; i < 10; i++)
        ms = ms * 32 + (uint64_t)(strchr(crockford, id[5 + i]) - crockford);
    /* Monotonic ids may run ahead of the clock by a little, never behind it. */
    assert_true((int64_t)ms >= before);
    assert_true((int64_t)ms <= after + 1000);
}

static void test_valid_rejects(void **state)
{
    (void)state;
    char id[CH_ID_MAX], bad[CH_ID_MAX + 8];
    ch_id_new("sess", id);
    assert_true(ch_id_valid("sess", id));

    /* wrong prefix */
    assert_false(ch_id_valid("ses", id));
    assert_false(ch_id_valid("sesss", id));
    assert_false(ch_id_valid("mand", id));
    snprintf(bad, sizeof(bad), "SESS%s", id + 4);
    assert_false(ch_id_valid("sess", bad));
    snprintf(bad, sizeof(bad), "sess-%s", id + 5);
    assert_false(ch_id_valid("sess", bad));
    snprintf(bad, sizeof(bad), "%s", id + 5); /* no prefix at all */
    assert_false(ch_id_valid("sess", bad));

    /* wrong length */
    snprintf(bad, sizeof(bad), "%.30s", id); /* 25 chars */
    assert_false(ch_id_valid("sess", bad));
    snprintf(bad, sizeof(bad), "%s0", id); /* 27 chars */
    assert_false(ch_id_valid("sess", bad));
    assert_false(ch_id_valid("sess", "sess_"));
    assert_false(ch_id_valid("sess", ""));
    assert_false(ch_id_valid("sess", NULL));

    /* lower case and the letters Crockford leaves out */
    const char *chars[] = {"a", "z", "I", "L", "O", "U", "i", "l", "o", "u", "-", "_", " ", "*"};
    for (size_t i = 0; i < sizeof(chars) / sizeof(chars[0]); i++) {
        snprintf(bad, sizeof(bad), "%s", id);
        bad[20] = chars[i][0];
        if (ch_id_valid("sess", bad))
            fail_msg("'%s' accepted with '%c'", bad, chars[i][0]);
    }
    /* first char above '7' overflows 128 bits */
    for (const char *c = "89ABZ"; *c; c++) {
        snprintf(bad, sizeof(bad), "%s", id);
        bad[5] = *c;
        assert_false(ch_id_valid("sess", bad));
    }
    snprintf(bad, sizeof(bad), "%s", id);
    bad[5] = '7';
    assert_true(ch_id_valid("sess", bad));
    assert_true(ch_id_valid("sess", "sess_00000000000000000000000000"));
    assert_true(ch_id_valid("sess", "sess_7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
    assert_false(ch_id_valid("sess", "sess_8ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
}

#define LOOP_IDS 100000

static void test_monotonic_tight_loop(void **state)
{
    (void)state;
    char(*ids)[CH_ID_MAX] = calloc(LOOP_IDS, CH_ID_MAX);
    assert_non_null(ids);
    for (int i = 0; i < LOOP_IDS; i++)
        ch_id_new("sess", ids[i]);
    for (int i = 1; i < LOOP_IDS; i++) {
        if (strcmp(ids[i - 1], ids[i]) >= 0)
            fail_msg("id %d (%s) is not after id %d (%s)", i, ids[i], i - 1, ids[i - 1]);
    }
    for (int i = 0; i < LOOP_IDS; i += 997)
        assert_true(ch_id_valid("sess", ids[i]));
    free(ids);
}

#define THREADS 4
#define PER_THREAD 20000

typedef struct thread_ids {
    char (*ids)[CH_ID_MAX];
} thread_ids;

static void *make_ids(void *arg)
{
    thread_ids *t = arg;
    for (int i = 0; i < PER_THREAD; i++)
        ch_id_new("sess", t->ids[i]);
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_unique_across_threads(void **state)
{
    (void)state;
    char(*all)[CH_ID_MAX] = calloc((size_t)THREADS * PER_THREAD, CH_ID_MAX);
    assert_non_null(all);
    pthread_t th[THREADS];
    thread_ids t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        t[i].ids = all + (size_t)i * PER_THREAD;
        assert_int_equal(pthread_create(&th[i], NULL, make_ids, &t[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    /* Each thread's own ids are strictly increasing too. */
    for (int i = 0; i < THREADS; i++) {
        for (int j = 1; j < PER_THREAD; j++)
            assert_true(strcmp(t[i].ids[j - 1], t[i].ids[j]) < 0);
    }
    qsort(all, (size_t)THREADS * PER_THREAD, CH_ID_MAX, cmp_id);
    for (size_t i = 1; i < (size_t)THREADS * PER_THREAD; i++) {
        if (strcmp(all[i - 1], all[i]) == 0)
            fail_msg("duplicate id %s", all[i]);
    }
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_time_prefix),
        cmocka_unit_test(test_valid_rejects),
        cmocka_unit_test(test_monotonic_tight_loop),
        cmocka_unit_test(test_unique_across_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
