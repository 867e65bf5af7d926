/*
 * Prometheus text exposition (metrics.h). Written into an open_memstream(3) buffer: the
 * text grows with the families, and one stream error check at the end covers every line.
 */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

/* le bounds: 2^0 .. 2^LAST_OCTAVE us. Octave HISTOGRAM_OCTAVES - 1 is the last one whose
 * upper edge is exact (larger values are clamped into the last bucket). */
#define LAST_OCTAVE (HISTOGRAM_OCTAVES - 1)

char *metrics_format_double(double v, char buf[32]) {
    if (isnan(v)) {
        snprintf(buf, 32, "NaN");
        return buf;
    }
    if (isinf(v)) {
        snprintf(buf, 32, v > 0 ? "+Inf" : "-Inf");
        return buf;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, 32, "%.*g", precision, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

static void family(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void labelled(FILE *f, const char *name, const char *result, uint64_t value) {
    fprintf(f, "%s{result=\"%s\"} %" PRIu64 "\n", name, result, value);
}

static void reload_results(FILE *f, const char *name, const char *help,
                           const struct metrics_reload_results *r) {
    family(f, name, "counter", help);
    labelled(f, name, "ok", r->ok);
    labelled(f, name, "error", r->error);
    labelled(f, name, "rolled_back", r->rolled_back);
    labelled(f, name, "skipped", r->skipped);
}

static void gauge(FILE *f, const char *name, const char *help, uint64_t value) {
    family(f, name, "gauge", help);
    fprintf(f, "%s %" PRIu64 "\n", name, value);
}

static void histogram(FILE *f, const char *name, const char *help, const struct histogram *h) {
    static const struct histogram empty;
    char le[32], sum[32];
    if (!h)
        h = &empty;
    family(f, name, "histogram", help);
    /* Octave e holds buckets 1 + e * SUB .. e * SUB + SUB; bucket 0 holds values under 1 us. */
    uint64_t cumulative = h->buckets[0];
    for (int e = 0; e <= LAST_OCTAVE; e++) {
        if (e > 0)
            for (size_t i = 1 + (size_t)(e - 1) * HISTOGRAM_SUB; i <= (size_t)e * HISTOGRAM_SUB; i++)
                cumulative += h->buckets[i];
        fprintf(f, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name,
                metrics_format_double(ldexp(1.0, e) / 1e6, le), cumulative);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, h->count);
    fprintf(f, "%s_sum %s\n", name, metrics_format_double(h->sum_ms / 1000.0, sum));
    fprintf(f, "%s_count %" PRIu64 "\n", name, h->count);
}

int metrics_render(const struct metrics_snapshot *s, char **out, size_t *len) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (!f)
        return -ENOMEM;

    reload_results(f, "pyhot_reloads_total", "Modules reloaded, by the result of their reload event.",
                   &s->reloads);
    reload_results(f, "pyhot_batches_total", "Reload batches, by the result of their batch event.",
                   &s->batches);
    family(f, "pyhot_runs_total", "counter",
           "Runs ended: ok (exit 0), error (another exit code), timeout, signal.");
    labelled(f, "pyhot_runs_total", "ok", s->runs.ok);
    labelled(f, "pyhot_runs_total", "error", s->runs.error);
    labelled(f, "pyhot_runs_total", "timeout", s->runs.timeout);
    labelled(f, "pyhot_runs_total", "signal", s->runs.signal);
    family(f, "pyhot_plugin_loads_total", "counter", "Plugin events, by result.");
    labelled(f, "pyhot_plugin_loads_total", "loaded", s->plugins.loaded);
    labelled(f, "pyhot_plugin_loads_total", "reloaded", s->plugins.reloaded);
    labelled(f, "pyhot_plugin_loads_total", "error", s->plugins.error);
    labelled(f, "pyhot_plugin_loads_total", "removed", s->plugins.removed);
    family(f, "pyhot_prefork_runs_total", "counter",
           "Isolated and sandboxed runs: hit (handed to a ready child), miss (forked at the "
           "request).");
    labelled(f, "pyhot_prefork_runs_total", "hit", s->prefork.hits);
    labelled(f, "pyhot_prefork_runs_total", "miss", s->prefork.misses);
    family(f, "pyhot_prefork_retired_total", "counter",
           "Ready children killed unused: stale after a job, too old, or their settings changed.");
    fprintf(f, "pyhot_prefork_retired_total %" PRIu64 "\n", s->prefork.retired);
    family(f, "pyhot_rescans_total", "counter",
           "Rescans of the watch roots after the kernel's event queue overflowed.");
    fprintf(f, "pyhot_rescans_total %" PRIu64 "\n", s->rescans);

    histogram(f, "pyhot_batch_latency_seconds",
              "From the first file event of a batch to the end of its last reload (batches "
              "that applied).",
              s->batch_latency);
    histogram(f, "pyhot_reload_duration_seconds", "Duration of each module reload that succeeded.",
              s->reload_duration);
    histogram(f, "pyhot_run_duration_seconds", "Duration of each run, from start to end.",
              s->run_duration);

    gauge(f, "pyhot_watched_directories", "Directories watched.", s->watched_directories);
    gauge(f, "pyhot_loaded_modules", "Modules in the interpreter's sys.modules.", s->loaded_modules);
    gauge(f, "pyhot_clients", "Control socket connections open.", s->clients);
    gauge(f, "pyhot_subscribers", "Clients subscribed to events.", s->subscribers);
    gauge(f, "pyhot_pending_files", "Changed files waiting for the next batch.", s->pending_files);
    family(f, "pyhot_prefork_ready", "gauge", "Ready children waiting for a run, by kind.");
    fprintf(f, "pyhot_prefork_ready{kind=\"isolated\"} %" PRIu64 "\n", s->prefork.ready_isolated);
    fprintf(f, "pyhot_prefork_ready{kind=\"sandboxed\"} %" PRIu64 "\n", s->prefork.ready_sandboxed);
    gauge(f, "pyhot_resident_memory_bytes", "Resident memory of the daemon, in bytes.",
          s->resident_memory_bytes);
    char start[32];
    family(f, "pyhot_start_time_seconds", "gauge", "Start time of the daemon since the Unix epoch, in seconds.");
    fprintf(f, "pyhot_start_time_seconds %s\n", metrics_format_double(s->start_time_seconds, start));

    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) {
        free(text);
        return -ENOMEM;
    }
    *out = text;
    *len = size;
    return 0;
}
