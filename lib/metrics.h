#ifndef PYHOT_METRICS_H
#define PYHOT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "histogram.h"

/*
 * The Prometheus text exposition format, version 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/), rendered from a snapshot
 * of the daemon's counters, histograms and gauges. Pure: no I/O, no clock, no allocation
 * but the returned text; any thread. docs/protocol.md ("metrics") lists the families.
 *
 * Histograms come from struct histogram (histogram.h): its buckets split each power of two
 * of microseconds in HISTOGRAM_SUB, so the cumulative count at every power of two is
 * exact; those are the `le` bounds rendered (1 us, 2 us, ... 2^39 us, then +Inf), the same
 * set on every scrape. A value exactly on a bound counts in the next bucket (histogram.c's
 * buckets are [from, to)), a difference Prometheus' quantile estimates cannot see.
 */

/* Results of a reload (a module) or a batch: the `result` of their events. */
struct metrics_reload_results {
    uint64_t ok, error, rolled_back, skipped;
};

/* Runs by how they ended: exit code 0, another exit code, killed by their timeout, ended
 * by a signal (an isolated child). */
struct metrics_run_results {
    uint64_t ok, error, timeout, signal;
};

/* Plugin events by result (docs/plugins.md). */
struct metrics_plugin_results {
    uint64_t loaded, reloaded, error, removed;
};

/* Ready children of isolated and sandboxed runs (docs/run.md "Ready children"). */
struct metrics_prefork {
    uint64_t hits, misses;        /* pyhot_prefork_runs_total{result="hit"|"miss"} */
    uint64_t retired;             /* pyhot_prefork_retired_total */
    uint64_t ready_isolated;      /* pyhot_prefork_ready{kind="isolated"} */
    uint64_t ready_sandboxed;     /* pyhot_prefork_ready{kind="sandboxed"} */
};

struct metrics_snapshot {
    struct metrics_reload_results reloads;   /* pyhot_reloads_total{result} */
    struct metrics_reload_results batches;   /* pyhot_batches_total{result} */
    struct metrics_run_results runs;         /* pyhot_runs_total{result} */
    struct metrics_plugin_results plugins;   /* pyhot_plugin_loads_total{result} */
    uint64_t rescans;                        /* pyhot_rescans_total */
    struct metrics_prefork prefork;

    /* Borrowed for the call; NULL renders an empty histogram. Values in ms (histogram.h),
     * rendered in seconds. */
    const struct histogram *batch_latency;   /* pyhot_batch_latency_seconds */
    const struct histogram *reload_duration; /* pyhot_reload_duration_seconds */
    const struct histogram *run_duration;    /* pyhot_run_duration_seconds */

    uint64_t watched_directories;            /* pyhot_watched_directories */
    uint64_t loaded_modules;                 /* pyhot_loaded_modules: len(sys.modules) */
    uint64_t clients;                        /* pyhot_clients: control connections open */
    uint64_t subscribers;                    /* pyhot_subscribers */
    uint64_t pending_files;                  /* pyhot_pending_files: paths awaiting a batch */
    uint64_t resident_memory_bytes;          /* pyhot_resident_memory_bytes */
    double start_time_seconds;               /* pyhot_start_time_seconds: Unix time */
};

/* Renders snapshot as exposition text: every family with its # HELP and # TYPE lines,
 * every label value of a counter present (0 included), lines ending in "\n". On success
 * returns 0 and sets *out (malloc'd, NUL-terminated, the caller frees it) and *len
 * (bytes, without the NUL); -ENOMEM otherwise, *out untouched. */
int metrics_render(const struct metrics_snapshot *snapshot, char **out, size_t *len);

/* Writes v as the exposition format reads a float (Go's strconv.ParseFloat): the shortest
 * decimal that reads back as v, "+Inf", "-Inf" or "NaN". buf must hold 32 bytes. Returns
 * buf. */
char *metrics_format_double(double v, char buf[32]);

#endif
