/*
 * Unit tests of lib/metrics.c: every family with its HELP and TYPE, counter labels, the
 * histogram's cumulative buckets against histogram.c's, float formatting. promtool's
 * check of the daemon's real output is tests/integration/test_metrics.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

static char *render(const struct metrics_snapshot *s)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(s, &text, &len), 0);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_true(len > 0 && text[len - 1] == '\n');
    return text;
}

static void test_every_family_has_help_type_and_a_sample(void **state)
{
    static const char *const families[][2] = {
        {"pyhot_reloads_total", "counter"},       {"pyhot_batches_total", "counter"},
        {"pyhot_runs_total", "counter"},          {"pyhot_plugin_loads_total", "counter"},
        {"pyhot_rescans_total", "counter"},       {"pyhot_batch_latency_seconds", "histogram"},
        {"pyhot_reload_duration_seconds", "histogram"},
        {"pyhot_run_duration_seconds", "histogram"},
        {"pyhot_watched_directories", "gauge"},   {"pyhot_loaded_modules", "gauge"},
        {"pyhot_clients", "gauge"},               {"pyhot_subscribers", "gauge"},
        {"pyhot_pending_files", "gauge"},         {"pyhot_resident_memory_bytes", "gauge"},
        {"pyhot_start_time_seconds", "gauge"},     {"pyhot_prefork_runs_total", "counter"},
        {"pyhot_prefork_retired_total", "counter"}, {"pyhot_prefork_ready", "gauge"},
    };
    struct metrics_snapshot s = {0};
    char line[256];

    (void)state;
    char *text = render(&s);
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        snprintf(line, sizeof(line), "# TYPE %s %s\n", families[i][0], families[i][1]);
        assert_non_null(strstr(text, line));
        snprintf(line, sizeof(line), "# HELP %s ", families[i][0]);
        assert_non_null(strstr(text, line));
        snprintf(line, sizeof(line), "\n%s%s", families[i][0],
                 strcmp(families[i][1], "histogram") == 0 ? "_bucket{" : "");
        assert_non_null(strstr(text, line));
    }
    free(text);
}

static void test_counters_carry_every_result(void **state)
{
    struct metrics_snapshot s = {0};

    (void)state;
    s.reloads.ok = 7;
    s.reloads.rolled_back = 2;
    s.batches.skipped = 3;
    s.runs.timeout = 4;
    s.runs.signal = 1;
    s.plugins.removed = 5;
    s.rescans = 9;
    char *text = render(&s);
    assert_non_null(strstr(text, "\npyhot_reloads_total{result=\"ok\"} 7\n"));
    assert_non_null(strstr(text, "\npyhot_reloads_total{result=\"error\"} 0\n"));
    assert_non_null(strstr(text, "\npyhot_reloads_total{result=\"rolled_back\"} 2\n"));
    assert_non_null(strstr(text, "\npyhot_batches_total{result=\"skipped\"} 3\n"));
    assert_non_null(strstr(text, "\npyhot_runs_total{result=\"ok\"} 0\n"));
    assert_non_null(strstr(text, "\npyhot_runs_total{result=\"timeout\"} 4\n"));
    assert_non_null(strstr(text, "\npyhot_runs_total{result=\"signal\"} 1\n"));
    assert_non_null(strstr(text, "\npyhot_plugin_loads_total{result=\"loaded\"} 0\n"));
    assert_non_null(strstr(text, "\npyhot_plugin_loads_total{result=\"removed\"} 5\n"));
    assert_non_null(strstr(text, "\npyhot_rescans_total 9\n"));
    free(text);
}

/* The count on the line "NAME_bucket{le="LE"} N". */
static long long bucket(const char *text, const char *name, const char *le)
{
    char key[128];
    snprintf(key, sizeof(key), "\n%s_bucket{le=\"%s\"} ", name, le);
    const char *p = strstr(text, key);
    assert_non_null(p);
    return strtoll(p + strlen(key), NULL, 10);
}

static void test_histogram_buckets_are_cumulative_powers_of_two(void **state)
{
    struct histogram h;
    struct metrics_snapshot s = {0};

    (void)state;
    histogram_init(&h);
    histogram_add(&h, 0.0005);  /* 0.5 us: under the first bound */
    histogram_add(&h, 0.0015);  /* 1.5 us */
    histogram_add(&h, 0.003);   /* 3 us */
    histogram_add(&h, 3.0);     /* 3 ms */
    histogram_add(&h, 250.0);   /* 250 ms */
    s.reload_duration = &h;
    char *text = render(&s);
    const char *name = "pyhot_reload_duration_seconds";
    assert_int_equal(bucket(text, name, "1e-06"), 1);
    assert_int_equal(bucket(text, name, "2e-06"), 2);
    assert_int_equal(bucket(text, name, "4e-06"), 3);
    assert_int_equal(bucket(text, name, "0.002048"), 3);
    assert_int_equal(bucket(text, name, "0.004096"), 4);
    assert_int_equal(bucket(text, name, "0.262144"), 5);
    assert_int_equal(bucket(text, name, "+Inf"), 5);
    assert_non_null(strstr(text, "\npyhot_reload_duration_seconds_count 5\n"));
    assert_non_null(strstr(text, "\npyhot_reload_duration_seconds_sum 0.253005\n"));

    /* Every bound from 1 us to 2^39 us, in order, never decreasing. */
    long long previous = 0;
    for (int e = 0; e < HISTOGRAM_OCTAVES; e++) {
        char le[32];
        long long n = bucket(text, name, metrics_format_double(ldexp(1.0, e) / 1e6, le));
        assert_true(n >= previous);
        previous = n;
    }
    /* A histogram that is absent renders as empty. */
    assert_int_equal(bucket(text, "pyhot_run_duration_seconds", "+Inf"), 0);
    assert_non_null(strstr(text, "\npyhot_run_duration_seconds_sum 0\n"));
    free(text);
}

static void test_gauges(void **state)
{
    struct metrics_snapshot s = {0};

    (void)state;
    s.watched_directories = 12;
    s.loaded_modules = 345;
    s.clients = 2;
    s.subscribers = 1;
    s.pending_files = 3;
    s.resident_memory_bytes = 123456789;
    s.start_time_seconds = 1764680000.25;
    char *text = render(&s);
    assert_non_null(strstr(text, "\npyhot_watched_directories 12\n"));
    assert_non_null(strstr(text, "\npyhot_loaded_modules 345\n"));
    assert_non_null(strstr(text, "\npyhot_clients 2\n"));
    assert_non_null(strstr(text, "\npyhot_subscribers 1\n"));
    assert_non_null(strstr(text, "\npyhot_pending_files 3\n"));
    assert_non_null(strstr(text, "\npyhot_resident_memory_bytes 123456789\n"));
    assert_non_null(strstr(text, "\npyhot_start_time_seconds 1764680000.25\n"));
    free(text);
}

static void test_format_double_is_shortest_and_exact(void **state)
{
    static const double values[] = {0.0, 1e-06, 0.1, 1.0 / 3.0, 1764680000.123, 2.5e300, -7.0};
    char buf[32];

    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++)
        assert_true(strtod(metrics_format_double(values[i], buf), NULL) == values[i]);
    assert_string_equal(metrics_format_double(0.1, buf), "0.1");
    assert_string_equal(metrics_format_double(1e-06, buf), "1e-06");
    assert_string_equal(metrics_format_double(INFINITY, buf), "+Inf");
    assert_string_equal(metrics_format_double(-INFINITY, buf), "-Inf");
    assert_string_equal(metrics_format_double(NAN, buf), "NaN");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_family_has_help_type_and_a_sample),
        cmocka_unit_test(test_counters_carry_every_result),
        cmocka_unit_test(test_histogram_buckets_are_cumulative_powers_of_two),
        cmocka_unit_test(test_gauges),
        cmocka_unit_test(test_format_double_is_shortest_and_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
