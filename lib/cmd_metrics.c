/* metrics: the daemon's counters, histograms and gauges in the Prometheus text exposition
 * format, version 0.0.4 (lib/metrics.h renders them; docs/protocol.md "metrics"). Answered
 * at once, on the loop thread, from what the daemon already counts. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "control.h"
#include "metrics.h"
#include "plugins.h"
#include "protocol.h"
#include "server.h"
#include "watch.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The resident set in bytes: /proc/self/statm's second field, in pages (proc(5)); 0 when
 * it cannot be read. */
static uint64_t resident_bytes(void) {
    unsigned long long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f) {
        if (fscanf(f, "%llu %llu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* The start in Unix seconds: the wall clock less the uptime, taken at the first scrape
 * and kept, so the gauge stays constant as Prometheus expects of a start time (one daemon
 * per process). */
static double start_time_seconds(const struct server *server) {
    static double start;
    if (start == 0.0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        start = (double)now.tv_sec + (double)now.tv_nsec / 1e9 -
                (double)(uv_hrtime() - server->started_ns) / 1e9;
    }
    return start;
}

void cmd_metrics(struct server *server, uint64_t client, const struct protocol_request *req) {
    const struct server_counters *c = &server->counters;
    struct metrics_snapshot s = {
        .reloads = {c->reloads.ok, c->reloads.error, c->reloads.rolled_back, c->reloads.skipped},
        .batches = {c->batch_results.ok, c->batch_results.error, c->batch_results.rolled_back,
                    c->batch_results.skipped},
        .runs = c->runs,
        .batch_latency = &c->latency_ms,
        .reload_duration = &c->reload_ms,
        .run_duration = &c->run_ms,
        .loaded_modules = server->host ? py_host_modules_loaded(server->host) : 0,
        .resident_memory_bytes = resident_bytes(),
        .start_time_seconds = start_time_seconds(server),
    };
    struct py_prefork_stats pool;
    py_prefork_stats(&pool);
    s.prefork = (struct metrics_prefork){pool.hits, pool.misses, pool.retired, pool.ready_isolated,
                                         pool.ready_sandboxed};
    if (server->plugins)
        plugins_get_counts(server->plugins, &s.plugins);
    if (server->watch) {
        struct watch_stats ws;
        watch_get_stats(server->watch, &ws);
        s.rescans = ws.rescans;
        s.watched_directories = ws.dirs;
        s.pending_files = ws.pending;
    }
    if (server->control) {
        struct control_stats cs;
        control_get_stats(server->control, &cs);
        s.clients = cs.clients;
        s.subscribers = cs.subscribers;
    }
    char *text = NULL;
    size_t len = 0;
    json_t *result = NULL;
    if (metrics_render(&s, &text, &len) == 0)
        result = json_pack("{s:s, s:s%}", "content_type", CONTENT_TYPE, "text", text, len);
    free(text);
    if (result)
        server_reply_ok(server, client, req->id, result);
    else
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
}
