/* Information about the daemon itself: hello, ping, status (with its cache), stats, and
 * shutdown (docs/protocol.md). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd.h"
#include "commands.h"
#include "control.h"
#include "protocol.h"
#include "server.h"
#include "version.h"
#include "watch.h"

void cmd_hello(struct server *server, uint64_t client, const struct protocol_request *req) {
    json_t *commands = json_array();
    for (const struct command_entry *e = commands_table(); e->name; e++)
        json_array_append_new(commands, json_string(e->name));
    server_reply_ok(server, client, req->id,
                    json_pack("{s:i, s:s, s:s, s:I, s:o}", "protocol", PROTOCOL_VERSION,
                              "version", PYHOT_VERSION, "python", py_host_python_version(),
                              "pid", (json_int_t)getpid(), "commands", commands));
}

void cmd_ping(struct server *server, uint64_t client, const struct protocol_request *req) {
    server_reply_ok(server, client, req->id,
                    json_pack("{s:b, s:s, s:I}", "pong", 1, "version", PYHOT_VERSION,
                              "pid", (json_int_t)getpid()));
}

static const char *root_state_name(enum watch_root_state state) {
    return state == WATCH_ROOT_WATCHING ? "watching" : "failed";
}

/* The mounts inside root i that are polled beside inotify: [{"path", "why", "error"?}]. */
static json_t *polled_trees(struct watch *w, size_t i) {
    json_t *polled = json_array();
    for (size_t k = 0; k < watch_root_polled_count(w, i); k++) {
        const char *why = NULL, *problem = NULL;
        const char *top = watch_root_polled(w, i, k, &why, &problem);
        json_t *tree = json_pack("{s:s, s:s}", "path", top, "why", why);
        if (problem)
            json_object_set_new(tree, "error", json_string(problem));
        json_array_append_new(polled, tree);
    }
    return polled;
}

static json_t *watch_status(struct server *server, json_t *roots) {
    struct watch *w = server->watch;
    for (size_t i = 0; i < watch_root_count(w); i++) {
        const char *message = NULL;
        const char *path = watch_root_path(w, i);
        if (!path)
            continue; /* removed by unwatch or a configuration reload */
        enum watch_root_state state = watch_root_state(w, i, &message);
        const char *why = NULL;
        const char *method = watch_root_method(w, i, &why);
        json_t *root = json_pack("{s:s, s:s, s:s, s:s, s:o}", "path", path, "state",
                                 root_state_name(state), "watched_by", method, "why",
                                 why ? why : "", "polled", polled_trees(w, i));
        if (state != WATCH_ROOT_WATCHING) {
            json_object_set_new(root, "error", json_string(message ? message : "not watched"));
            json_object_set_new(root, "lost", json_boolean(state == WATCH_ROOT_LOST));
        }
        json_array_append_new(roots, root);
    }
    struct watch_stats stats;
    watch_get_stats(w, &stats);
    json_t *held = json_array();
    if (stats.holds & WATCH_HOLD_PAUSE)
        json_array_append_new(held, json_string("pause"));
    if (stats.holds & WATCH_HOLD_VCS)
        json_array_append_new(held, json_string("vcs"));
    if (stats.holds & WATCH_HOLD_BUSY)
        json_array_append_new(held, json_string("busy"));
    return json_pack("{s:s, s:I, s:I, s:I, s:b, s:o, s:o, s:b, s:I, s:f, s:I, s:{s:I, s:I, "
                     "s:I, s:I, s:I}}",
                     "backend", stats.backend,
                     "watched_dirs", (json_int_t)stats.dirs,
                     "rescans", (json_int_t)stats.rescans,
                     "pending", (json_int_t)stats.pending,
                     "paused", (stats.holds & WATCH_HOLD_PAUSE) != 0,
                     "held", held,
                     "vcs_lock", stats.vcs_lock ? json_string(stats.vcs_lock) : json_null(),
                     "follow_symlinks", server->config->follow_symlinks,
                     "defer_vcs_ms", (json_int_t)server->config->defer_vcs_ms,
                     "setup_ms", (double)stats.setup_ns / 1e6,
                     "fast_batches", (json_int_t)stats.fast_batches,
                     "poll",
                     "interval_ms", (json_int_t)stats.poll_interval_ms,
                     "dirs", (json_int_t)stats.polled_dirs,
                     "files", (json_int_t)stats.polled_files,
                     "loaded_files", (json_int_t)stats.polled_loaded,
                     "cycles", (json_int_t)stats.poll_cycles);
}

/* The status command's result (new reference; docs/protocol.md, "status"). */
static json_t *status_result(struct server *server) {
    const struct server_counters *c = &server->counters;
    json_t *roots = json_array();
    json_t *watch = server->watch ? watch_status(server, roots) : json_null();
    const char *kind = NULL;
    uint64_t age_ms = 0;
    uint64_t job_id = py_host_running(server->host, &kind, &age_ms);
    json_t *job = job_id ? json_pack("{s:I, s:s, s:I}", "id", (json_int_t)job_id, "kind", kind,
                                     "age_ms", (json_int_t)age_ms)
                         : json_null();
    json_t *status = json_pack(
        "{s:s, s:I, s:I, s:s, s:s, s:I, s:o, s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:I, s:O, s:o, "
        "s:I, s:I, s:b, s:o}",
        "version", PYHOT_VERSION,
        "pid", (json_int_t)getpid(),
        "uptime_ms", (json_int_t)((uv_hrtime() - server->started_ns) / 1000000),
        "python", py_host_python_version(),
        "socket", server->config->socket_path,
        "settle_ms", (json_int_t)server->config->settle_ms,
        "roots", roots,
        "watched_dirs", (json_int_t)(server->watch ? watch_dir_count(server->watch) : 0),
        "modules_loaded", (json_int_t)py_host_modules_loaded(server->host),
        "reloads",
        "ok", (json_int_t)c->reloads.ok,
        "error", (json_int_t)c->reloads.error,
        "rolled_back", (json_int_t)c->reloads.rolled_back,
        "skipped", (json_int_t)c->reloads.skipped,
        "batches", (json_int_t)c->batches,
        "last_batch", server->last_batch ? server->last_batch : json_null(),
        "job", job,
        "queued_jobs", (json_int_t)py_host_queued(server->host),
        "subscribers",
        (json_int_t)(server->control ? control_subscriber_count(server->control) : 0),
        "ready", server->ready,
        "watch", watch);
    if (status) {
        json_object_set_new(status, "runs", json_integer((json_int_t)cmd_runs_active(server)));
        const struct server_counters *n = &server->counters;
        json_object_set_new(status, "runs_ended",
                            json_pack("{s:I, s:I, s:I, s:I, s:I}", "total", (json_int_t)n->runs_ended.total,
                                      "isolated", (json_int_t)n->runs_ended.isolated,
                                      "sandboxed", (json_int_t)n->runs_ended.sandboxed,
                                      "failed", (json_int_t)n->runs_ended.failed,
                                      "timed_out", (json_int_t)n->runs_ended.timed_out));
        struct py_prefork_stats pool;
        py_prefork_stats(&pool);
        json_object_set_new(status, "prefork",
                            json_pack("{s:{s:i, s:i}, s:I, s:I, s:I}", "ready", "isolated",
                                      (int)pool.ready_isolated, "sandboxed", (int)pool.ready_sandboxed,
                                      "hits", (json_int_t)pool.hits, "misses", (json_int_t)pool.misses,
                                      "retired", (json_int_t)pool.retired));
        json_object_set(status, "entry", server->entry ? server->entry : json_null());
    }
    return status;
}

/* The status is encoded (by jansson) afresh only when the millisecond (uv_now), the last
 * event, the running job, the queue, the module count, the subscribers, the runs or a
 * command (server_status_changed) changed since the last encoding: many clients polling
 * status share one encoding instead of paying one each. */
void cmd_status(struct server *server, uint64_t client, const struct protocol_request *req) {
    struct command_state *state = server->commands;
    uint64_t key[8] = {
        uv_now(server->loop), events_last_seq(server->events),
        py_host_running(server->host, NULL, NULL), py_host_queued(server->host),
        py_host_modules_loaded(server->host),
        server->control ? control_subscriber_count(server->control) : 0,
        server->status_generation, cmd_runs_active(server),
    };
    _Static_assert(sizeof(key) == sizeof(state->status_cache_key), "status cache key");
    if (!state->status_cache || memcmp(key, state->status_cache_key, sizeof(key)) != 0) {
        json_t *status = status_result(server);
        size_t n = 0;
        char *encoded = protocol_encode_value(status, &n);
        json_decref(status);
        if (!encoded) {
            server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
            return;
        }
        free(state->status_cache);
        state->status_cache = encoded;
        state->status_cache_len = n;
        memcpy(state->status_cache_key, key, sizeof(key));
    }
    server_reply_ok_encoded(server, client, req->id, state->status_cache, state->status_cache_len);
}

void cmd_info_free(struct command_state *state) {
    free(state->status_cache);
    state->status_cache = NULL;
}

/* The stats command's result (new reference; docs/protocol.md, "stats"). */
static json_t *stats_result(struct server *server) {
    const struct server_counters *c = &server->counters;
    struct control_stats cs = {0};
    if (server->control)
        control_get_stats(server->control, &cs);
    json_t *reload_ms = histogram_to_json(&c->reload_ms);
    json_t *latency_ms = histogram_to_json(&c->latency_ms);
    return json_pack(
        "{s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:{s:I, s:I},"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}, s:o, s:o}",
        "uptime_ms", (json_int_t)((uv_hrtime() - server->started_ns) / 1000000),
        "reloads",
        "ok", (json_int_t)c->reloads.ok,
        "error", (json_int_t)c->reloads.error,
        "rolled_back", (json_int_t)c->reloads.rolled_back,
        "skipped", (json_int_t)c->reloads.skipped,
        "batches",
        "total", (json_int_t)c->batches,
        "ok", (json_int_t)c->batch_results.ok,
        "error", (json_int_t)c->batch_results.error,
        "rolled_back", (json_int_t)c->batch_results.rolled_back,
        "skipped", (json_int_t)c->batch_results.skipped,
        "events", (json_int_t)events_last_seq(server->events),
        "responses",
        "total", (json_int_t)c->responses,
        "failed", (json_int_t)c->failed_responses,
        "connections",
        "open", (json_int_t)cs.clients,
        "subscribers", (json_int_t)cs.subscribers,
        "accepted", (json_int_t)cs.accepted,
        "refused_permission", (json_int_t)cs.refused_permission,
        "refused_too_many", (json_int_t)cs.refused_too_many,
        "dropped_overflow", (json_int_t)cs.dropped_overflow,
        "dropped_timeout", (json_int_t)cs.dropped_timeout,
        "dropped_too_large", (json_int_t)cs.dropped_too_large,
        "accept_pauses", (json_int_t)cs.accept_pauses,
        "accept_paused", cs.accept_paused,
        "reload_ms", reload_ms ? reload_ms : json_null(),
        "latency_ms", latency_ms ? latency_ms : json_null());
}

void cmd_stats(struct server *server, uint64_t client, const struct protocol_request *req) {
    json_t *stats = stats_result(server);
    if (!stats)
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
    else
        server_reply_ok(server, client, req->id, stats);
}

void cmd_shutdown(struct server *server, uint64_t client, const struct protocol_request *req) {
    server_reply_ok(server, client, req->id, json_pack("{s:b}", "stopping", 1));
    server->stop(server, "shutdown requested over the control socket");
}
