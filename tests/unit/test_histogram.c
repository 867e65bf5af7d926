/*
 * Unit tests of lib/histogram.c: bucket layout, percentiles against exact ones, clamping
 * to min and max, the JSON form.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "histogram.h"

static void test_empty(void **state) {
    struct histogram h;
    json_t *j;

    (void)state;
    histogram_init(&h);
    assert_true(histogram_percentile(&h, 50) == 0.0);
    j = histogram_to_json(&h);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 0);
    assert_true(json_is_null(json_object_get(j, "p99")));
    assert_int_equal(json_array_size(json_object_get(j, "buckets")), 0);
    json_decref(j);
}

static void test_buckets_are_contiguous_and_at_most_an_eighth_wide(void **state) {
    double prev_to = 0, from, to;

    (void)state;
    for (size_t i = 0; i < HISTOGRAM_BUCKETS; i++) {
        histogram_bucket_bounds(i, &from, &to);
        assert_true(from == prev_to);
        assert_true(to > from);
        if (i > 0)
            assert_true((to - from) / from <= 0.125 + 1e-12);
        prev_to = to;
    }
}

static void test_a_value_lands_in_its_bucket(void **state) {
    static const double values[] = { 0, 0.0004, 0.001, 0.0011, 0.05, 1.0, 1.24, 7.9, 8.0,
                                      123.456, 99999.0, 1e12 };

    (void)state;
    for (size_t k = 0; k < sizeof(values) / sizeof(values[0]); k++) {
        struct histogram h;
        size_t found = HISTOGRAM_BUCKETS;

        histogram_init(&h);
        histogram_add(&h, values[k]);
        for (size_t i = 0; i < HISTOGRAM_BUCKETS; i++)
            if (h.buckets[i])
                found = i;
        assert_true(found < HISTOGRAM_BUCKETS);
        if (found < HISTOGRAM_BUCKETS - 1) {
            double from, to;

            histogram_bucket_bounds(found, &from, &to);
            assert_true(values[k] >= from - 1e-12 && values[k] < to);
        }
        /* One value: every percentile is that value exactly (clamped to min and max). */
        assert_true(histogram_percentile(&h, 50) == values[k]);
        assert_true(histogram_percentile(&h, 99) == values[k]);
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void test_percentiles_within_an_eighth_of_the_exact_ones(void **state) {
    enum { N = 10000 };
    static double values[N];
    struct histogram h;
    static const double ps[] = { 1, 10, 50, 90, 99, 99.9, 100 };

    (void)state;
    histogram_init(&h);
    srand(42);
    for (int i = 0; i < N; i++) {
        /* log-uniform from 0.01 ms to 100 ms */
        values[i] = 0.01 * pow(10.0, 4.0 * rand() / (double)RAND_MAX);
        histogram_add(&h, values[i]);
    }
    qsort(values, N, sizeof(values[0]), cmp);
    for (size_t k = 0; k < sizeof(ps) / sizeof(ps[0]); k++) {
        size_t rank = (size_t)ceil(ps[k] / 100.0 * N);
        double exact = values[rank - 1], got = histogram_percentile(&h, ps[k]);

        assert_true(got >= exact);
        assert_true(got <= exact * 1.125 + 1e-9);
    }
    assert_true(h.min_ms == values[0] && h.max_ms == values[N - 1]);
    assert_int_equal(h.count, N);
}

static void test_json(void **state) {
    struct histogram h;
    json_t *j, *buckets, *b;
    size_t i;
    long long total = 0;

    (void)state;
    histogram_init(&h);
    histogram_add(&h, 1.0);
    histogram_add(&h, 1.0);
    histogram_add(&h, 4.0);
    histogram_add(&h, -3.0);  /* counts as 0 */
    j = histogram_to_json(&h);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), 4);
    assert_true(json_real_value(json_object_get(j, "min")) == 0.0);
    assert_true(json_real_value(json_object_get(j, "max")) == 4.0);
    assert_true(json_real_value(json_object_get(j, "mean")) == 1.5);
    /* 1 ms = 1000 us lies in [960, 1024) us: the bucket's upper bound */
    assert_true(json_real_value(json_object_get(j, "p50")) == 1.024);
    buckets = json_object_get(j, "buckets");
    json_array_foreach(buckets, i, b) {
        total += json_integer_value(json_object_get(b, "count"));
        if (i > 0)
            assert_true(json_real_value(json_object_get(b, "from")) ==
                        json_real_value(json_object_get(json_array_get(buckets, i - 1), "to")));
    }
    assert_int_equal(total, 4);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(buckets, 0), "count")), 1);
    json_decref(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_buckets_are_contiguous_and_at_most_an_eighth_wide),
        cmocka_unit_test(test_a_value_lands_in_its_bucket),
        cmocka_unit_test(test_percentiles_within_an_eighth_of_the_exact_ones),
        cmocka_unit_test(test_json),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
