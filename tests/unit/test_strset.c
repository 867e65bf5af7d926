/*
 * Unit tests of lib/strset.c: each string once, insertion order kept across index growth,
 * copies owned by the set, steal and clear leaving a reusable set.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strset.h"

static void test_each_once_in_order(void **state) {
    (void)state;
    struct strset set;
    strset_init(&set);
    assert_false(strset_contains(&set, "a"));
    char buf[16];
    snprintf(buf, sizeof(buf), "b");
    assert_int_equal(strset_add(&set, buf), 1);
    buf[0] = 'z'; /* the set keeps its own copy */
    assert_int_equal(strset_add(&set, "a"), 1);
    assert_int_equal(strset_add(&set, "b"), 0);
    assert_int_equal(strset_add(&set, ""), 1);
    assert_true(strset_contains(&set, "b"));
    assert_true(strset_contains(&set, ""));
    assert_false(strset_contains(&set, "z"));
    assert_int_equal(set.len, 3);
    assert_string_equal(set.items[0], "b");
    assert_string_equal(set.items[1], "a");
    assert_string_equal(set.items[2], "");
    strset_clear(&set);
    assert_int_equal(set.len, 0);
    assert_false(strset_contains(&set, "a"));
    assert_int_equal(strset_add(&set, "a"), 1); /* reusable */
    strset_clear(&set);
}

/* Steal hands the items over in order and leaves the set reusable; an empty steal is NULL. */
static void test_steal_and_reuse(void **state) {
    (void)state;
    struct strset set;
    strset_init(&set);
    assert_false(strset_contains(&set, "a"));
    assert_int_equal(strset_add(&set, "b.py"), 1);
    assert_int_equal(strset_add(&set, "a.py"), 1);
    assert_int_equal(strset_add(&set, "b.py"), 0);
    assert_int_equal(strset_add(&set, ""), 1);
    assert_true(strset_contains(&set, "a.py"));
    assert_true(strset_contains(&set, ""));
    assert_false(strset_contains(&set, "c.py"));
    assert_int_equal(set.len, 3);
    assert_string_equal(set.items[0], "b.py");
    assert_string_equal(set.items[1], "a.py");
    assert_string_equal(set.items[2], "");

    size_t len = 0;
    char **items = strset_steal(&set, &len);
    assert_int_equal(len, 3);
    assert_string_equal(items[0], "b.py");
    for (size_t i = 0; i < len; i++)
        free(items[i]);
    free(items);
    assert_int_equal(set.len, 0);
    assert_false(strset_contains(&set, "a.py"));

    /* Reusable after steal; an empty steal gives NULL. */
    assert_int_equal(strset_add(&set, "x"), 1);
    strset_clear(&set);
    assert_false(strset_contains(&set, "x"));
    len = 99;
    assert_null(strset_steal(&set, &len));
    assert_int_equal(len, 0);
    strset_clear(&set);
}

/* Thousands of paths: the index grows many times and order and membership hold. */
static void test_growth_and_steal(void **state) {
    (void)state;
    enum { N = 5000 };
    struct strset set;
    char path[32];
    strset_init(&set);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(path, sizeof(path), "/app/m%d.py", i);
            assert_int_equal(strset_add(&set, path), round == 0 ? 1 : 0);
        }
    }
    assert_int_equal(set.len, N);
    for (int i = 0; i < N; i += 97) {
        snprintf(path, sizeof(path), "/app/m%d.py", i);
        assert_true(strset_contains(&set, path));
    }
    size_t len = 0;
    char **items = strset_steal(&set, &len);
    assert_int_equal(len, N);
    for (size_t i = 0; i < len; i++) {
        snprintf(path, sizeof(path), "/app/m%zu.py", i);
        assert_string_equal(items[i], path);
        free(items[i]);
    }
    free(items);
    assert_int_equal(set.len, 0);
    assert_false(strset_contains(&set, "/app/m1.py"));
    assert_null(strset_steal(&set, &len));
    assert_int_equal(strset_add(&set, "/app/m1.py"), 1);
    strset_clear(&set);
}

/* The index stays a power of two at most half full as it grows. */
static void test_index_load(void **state) {
    (void)state;
    struct strset set;
    strset_init(&set);
    char buf[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(buf, sizeof(buf), "pkg/mod%d.py", i);
        assert_int_equal(strset_add(&set, buf), 1);
    }
    for (int i = 0; i < 5000; i += 7) {
        snprintf(buf, sizeof(buf), "pkg/mod%d.py", i);
        assert_int_equal(strset_add(&set, buf), 0);
        assert_true(strset_contains(&set, buf));
    }
    assert_false(strset_contains(&set, "pkg/mod5000.py"));
    assert_int_equal(set.len, 5000);
    assert_true(set.n_slots >= 2 * set.len);
    assert_int_equal(set.n_slots & (set.n_slots - 1), 0);
    for (int i = 0; i < 5000; i += 499) {
        snprintf(buf, sizeof(buf), "pkg/mod%d.py", i);
        assert_string_equal(set.items[i], buf);
    }
    strset_clear(&set);
    assert_int_equal(set.len, 0);
    assert_null(set.items);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_once_in_order),
        cmocka_unit_test(test_steal_and_reuse),
        cmocka_unit_test(test_growth_and_steal),
        cmocka_unit_test(test_index_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
