#include "daemon.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "control.h"
#include "events.h"
#include "filter.h"
#include "histogram.h"
#include "log.h"
#include "protocol.h"
#include "py_host.h"
#include "py_run.h"
#include "sandbox.h"
#include "version.h"
#include "watch.h"

#define HISTORY_EVENTS 1000
/* At most this many bytes of past events in one history response or subscribe replay:
 * well under a client's output cap, so that asking for history never drops a client. */
#define HISTORY_MAX_BYTES (1024 * 1024)
#define STOP_GRACE_MS 2000
#define STOP_DEADLINE_MS (STOP_GRACE_MS + 5000)

struct daemon {
    uv_loop_t loop;
    struct config *config;      /* main()'s; replaced in place by a configuration reload */
    int argc;                   /* the command line, kept to re-read the configuration */
    char **argv;
    struct filter *filter;
    struct events *events;
    struct py_host *host;
    struct control *control;
    struct watch *watch;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t stop_deadline;
    uv_timer_t watchdog;
    uint64_t started_ns;
    uint64_t next_batch_id;
    uint64_t batches;
    struct {
        uint64_t ok, error, rolled_back, skipped;
    } reloads;
    struct {
        uint64_t ok, error, rolled_back, skipped;
    } batch_results;
    struct histogram reload_ms;   /* duration_ms of each module reloaded ok */
    struct histogram latency_ms;  /* latency_ms of each file batch that applied (ok) */
    uint64_t responses, failed_responses;
    json_t *last_batch;
    char *status_cache;         /* the status result as encoded, see daemon_reply_status */
    size_t status_cache_len;
    uint64_t status_cache_key[8]; /* what it was encoded from, see daemon_reply_status */
    uint64_t status_generation;   /* bumped by every command but the read-only ones */
    struct run_entry *runs;       /* runs started and not ended */
    uint64_t next_run_id;
    struct {
        uint64_t total, isolated, sandboxed, failed, timed_out;
    } runs_ended;                 /* by the run events (docs/protocol.md) */
    bool ready;
    bool stopping;
    int exit_code;
};

/* What a job answers: a request's result, or the outcome of the watch or unwatch
 * command (a PY_JOB_CONFIGURE job). */
enum origin_purpose {
    PURPOSE_REQUEST = 0,  /* answer with the job's output */
    PURPOSE_WATCH,        /* the watch command: a root added */
    PURPOSE_UNWATCH,      /* the unwatch command: a root removed */
};

/* Who a job answers to: a client's request, or the watcher's batch (client 0). */
struct job_origin {
    struct daemon *daemon;
    uint64_t client;
    json_t *id;
    uint64_t batch_id;
    uint64_t first_event_ns; /* latency start: first file event, or the request's arrival */
    enum origin_purpose purpose;
    char *root;              /* PURPOSE_WATCH, PURPOSE_UNWATCH */
};

/* A run (the run command) until its end message: who gets its stream and its end. */
struct run_entry {
    uint64_t run_id;
    uint64_t client;   /* 0 once the client disconnected: output is dropped */
    json_t *id;
    bool isolate;
    bool sandbox;
    unsigned timeout_ms;
    uid_t peer_uid;    /* who asked for it (SO_PEERCRED), for the run event */
    pid_t peer_pid;
    char *target;      /* "path" or "module", for the run event */
    struct run_entry *next;
};

static struct run_entry *run_find(struct daemon *daemon, uint64_t run_id, bool unlink) {
    for (struct run_entry **p = &daemon->runs; *p; p = &(*p)->next) {
        if ((*p)->run_id == run_id) {
            struct run_entry *e = *p;
            if (unlink)
                *p = e->next;
            return e;
        }
    }
    return NULL;
}

static void run_entry_free(struct run_entry *e) {
    json_decref(e->id);
    free(e->target);
    free(e);
}

static void origin_free(struct job_origin *origin) {
    json_decref(origin->id);
    free(origin->root);
    free(origin);
}

/* ---- replies ------------------------------------------------------------------------ */

void daemon_reply_ok(struct daemon *daemon, uint64_t client, json_t *id, json_t *result) {
    size_t len;
    char *line = protocol_encode_ok(id, result, &len);
    daemon->responses++;
    if (line && daemon->control)
        control_send_owned(daemon->control, client, line, len);
    else
        free(line);
}

void daemon_status_changed(struct daemon *daemon) {
    daemon->status_generation++;
}

void daemon_reply_status(struct daemon *daemon, uint64_t client, json_t *id) {
    /* What status shows that can change without an event: the running job and the queue,
     * modules, subscribers, and whatever a command changed (status_generation). */
    uint64_t key[8] = {
        uv_now(&daemon->loop), events_last_seq(daemon->events),
        py_host_running(daemon->host, NULL, NULL), py_host_queued(daemon->host),
        py_host_modules_loaded(daemon->host),
        daemon->control ? control_subscriber_count(daemon->control) : 0,
        daemon->status_generation, daemon_runs_active(daemon),
    };
    if (!daemon->status_cache || memcmp(key, daemon->status_cache_key, sizeof(key)) != 0) {
        json_t *status = daemon_status(daemon);
        size_t n = 0;
        char *encoded = protocol_encode_value(status, &n);
        json_decref(status);
        if (!encoded) {
            daemon_reply_error(daemon, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
            return;
        }
        free(daemon->status_cache);
        daemon->status_cache = encoded;
        daemon->status_cache_len = n;
        memcpy(daemon->status_cache_key, key, sizeof(key));
    }
    size_t len;
    char *line = protocol_encode_ok_encoded(id, daemon->status_cache, daemon->status_cache_len, &len);
    daemon->responses++;
    if (line && daemon->control)
        control_send_owned(daemon->control, client, line, len);
    else
        free(line);
}

void daemon_reply_error(struct daemon *daemon, uint64_t client, json_t *id, const char *code,
                        const char *message, json_t *details) {
    size_t len;
    char *line = protocol_encode_error(id, code, message, details, &len);
    daemon->responses++;
    daemon->failed_responses++;
    if (line && daemon->control)
        control_send_owned(daemon->control, client, line, len);
    else
        free(line);
}

/* Replies with a job's error object {"code", "message", ...details}. */
static void reply_job_error(struct daemon *daemon, uint64_t client, json_t *id, json_t *error) {
    json_t *details = json_deep_copy(error);
    const char *code = json_string_value(json_object_get(error, "code"));
    const char *message = json_string_value(json_object_get(error, "message"));
    json_object_del(details, "code");
    json_object_del(details, "message");
    daemon_reply_error(daemon, client, id, code ? code : PROTOCOL_E_INTERNAL,
                       message ? message : "the job failed", details);
}

/* ---- jobs --------------------------------------------------------------------------- */

static void count_reload(struct daemon *daemon, const char *result) {
    if (!result)
        return;
    if (strcmp(result, "ok") == 0)
        daemon->reloads.ok++;
    else if (strcmp(result, "error") == 0)
        daemon->reloads.error++;
    else if (strcmp(result, "rolled_back") == 0)
        daemon->reloads.rolled_back++;
    else if (strcmp(result, "skipped") == 0)
        daemon->reloads.skipped++;
}

static void ensure_array(json_t *object, const char *key) {
    if (!json_is_array(json_object_get(object, key)))
        json_object_set_new(object, key, json_array());
}

/* Publishes the reload and batch events of a finished reload job; returns the batch event
 * (borrowed from the job's output). */
static json_t *publish_reload_result(struct daemon *daemon, struct py_job *job,
                                     struct job_origin *origin) {
    json_t *reloads = json_object_get(job->output, "reloads");
    json_t *batch = json_object_get(job->output, "batch");
    size_t i;
    json_t *reload;
    json_array_foreach(reloads, i, reload) {
        json_object_set_new(reload, "batch", json_integer((json_int_t)origin->batch_id));
        ensure_array(reload, "patched");
        ensure_array(reload, "replaced");
        const char *result = json_string_value(json_object_get(reload, "result"));
        count_reload(daemon, result);
        if (result && strcmp(result, "ok") == 0)
            histogram_add(&daemon->reload_ms, json_number_value(json_object_get(reload, "duration_ms")));
        events_publish(daemon->events, "reload", json_incref(reload));
    }
    if (!json_is_object(batch))
        return NULL;
    json_object_set_new(batch, "batch", json_integer((json_int_t)origin->batch_id));
    /* From the first file event to the end of the batch's last reload: the engine stamps
     * that moment with time.monotonic_ns(), the clock uv_hrtime() reads (CLOCK_MONOTONIC). */
    json_t *reloaded = json_object_get(batch, "reloaded_ns");
    uint64_t end_ns = json_is_integer(reloaded) ? (uint64_t)json_integer_value(reloaded) : job->finished_ns;
    json_object_del(batch, "reloaded_ns");
    double latency_ms = end_ns > origin->first_event_ns ? (double)(end_ns - origin->first_event_ns) / 1e6 : 0.0;
    json_object_set_new(batch, "latency_ms", json_real(latency_ms));
    daemon->batches++;
    const char *result = json_string_value(json_object_get(batch, "result"));
    if (result && strcmp(result, "ok") == 0) {
        daemon->batch_results.ok++;
        if (!origin->client) /* save -> reloaded: batches of file changes only */
            histogram_add(&daemon->latency_ms, latency_ms);
    } else if (result && strcmp(result, "error") == 0) {
        daemon->batch_results.error++;
    } else if (result && strcmp(result, "rolled_back") == 0) {
        daemon->batch_results.rolled_back++;
    } else if (result && strcmp(result, "skipped") == 0) {
        daemon->batch_results.skipped++;
    }
    events_publish(daemon->events, "batch", json_incref(batch));
    json_decref(daemon->last_batch);
    daemon->last_batch = json_incref(batch);
    return batch;
}

static void publish_import_errors(struct daemon *daemon, json_t *errors) {
    size_t i;
    json_t *error;
    json_array_foreach(errors, i, error) {
        log_warn("import of %s failed: %s: %s (%s:%lld)",
                 json_string_value(json_object_get(error, "module")),
                 json_string_value(json_object_get(error, "type")),
                 json_string_value(json_object_get(error, "message")),
                 json_string_value(json_object_get(error, "file")),
                 json_integer_value(json_object_get(error, "line")));
        events_publish(daemon->events, "import_error", json_incref(error));
    }
}

static void on_startup_done(struct daemon *daemon, struct py_job *job) {
    if (!job->ok) {
        const char *message = json_string_value(json_object_get(job->output, "message"));
        const char *type = json_string_value(json_object_get(job->output, "type"));
        log_error("startup failed: %s: %s", type ? type : "error", message ? message : "?");
        json_t *event = json_pack("{s:s, s:O}", "stage", "startup", "error", job->output);
        events_publish(daemon->events, "startup_error", event);
    } else {
        publish_import_errors(daemon, json_object_get(job->output, "errors"));
    }
    json_t *entry = json_object_get(job->output, "entry");
    if (job->ok && json_is_false(json_object_get(entry, "ok"))) {
        json_t *error = json_object_get(entry, "error");
        log_error("entry %s could not start: %s: %s; the daemon keeps serving without the app",
                  daemon->config->entry, json_string_value(json_object_get(error, "type")),
                  json_string_value(json_object_get(error, "message")));
        events_publish(daemon->events, "startup_error",
                       json_pack("{s:s, s:s, s:O}", "stage", "entry", "entry", daemon->config->entry,
                                 "error", error ? error : json_null()));
    }
    json_t *roots = json_array();
    for (size_t i = 0; i < daemon->config->n_watch_roots; i++)
        json_array_append_new(roots, json_string(daemon->config->watch_roots[i]));
    events_publish(daemon->events, "started",
                   json_pack("{s:s, s:I, s:o, s:I, s:I}", "version", PYHOT_VERSION,
                             "pid", (json_int_t)getpid(), "roots", roots,
                             "modules_loaded", (json_int_t)py_host_modules_loaded(daemon->host),
                             "watched_dirs", (json_int_t)(daemon->watch ? watch_dir_count(daemon->watch) : 0)));
    daemon->ready = true;
    sd_notify(0, "READY=1");
    log_info("ready: %zu modules loaded, %zu directories watched, socket %s",
             py_host_modules_loaded(daemon->host), daemon->watch ? watch_dir_count(daemon->watch) : 0,
             daemon->config->socket_path);
}

/* The watch and unwatch commands' jobs: the root is on (or off) the engine's list. */
static void on_root_job_done(struct daemon *daemon, struct py_job *job, struct job_origin *origin) {
    if (!job->ok) {
        reply_job_error(daemon, origin->client, origin->id, job->output);
        return;
    }
    size_t dirs = daemon->watch ? watch_dir_count(daemon->watch) : 0;
    if (origin->purpose == PURPOSE_UNWATCH) {
        daemon_reply_ok(daemon, origin->client, origin->id,
                        json_pack("{s:s, s:I}", "path", origin->root, "watched_dirs", (json_int_t)dirs));
        return;
    }
    json_t *errors = json_object_get(job->output, "errors");
    publish_import_errors(daemon, errors);
    json_t *imported = json_object_get(job->output, "imported");
    daemon_reply_ok(daemon, origin->client, origin->id,
                    json_pack("{s:s, s:I, s:O, s:O}", "path", origin->root, "watched_dirs",
                              (json_int_t)dirs, "imported", imported ? imported : json_array(),
                              "errors", errors ? errors : json_array()));
}

static void on_job_done(struct py_job *job, void *data) {
    struct job_origin *origin = data;
    struct daemon *daemon = origin->daemon;

    switch (job->kind) {
    case PY_JOB_STARTUP:
        on_startup_done(daemon, job);
        break;
    case PY_JOB_RELOAD: {
        json_t *batch = job->ok ? publish_reload_result(daemon, job, origin) : NULL;
        if (!origin->client) {
            /* The watcher's batch is done: what piled up meanwhile goes out as one. */
            if (daemon->watch)
                watch_release(daemon->watch, WATCH_HOLD_BUSY);
            break;
        }
        if (!job->ok) {
            reply_job_error(daemon, origin->client, origin->id, job->output);
            break;
        }
        const char *result = json_string_value(json_object_get(batch, "result"));
        if (result && (strcmp(result, "error") == 0 || strcmp(result, "rolled_back") == 0)) {
            json_t *error = json_object_get(batch, "error");
            json_t *details = json_is_object(error) ? json_deep_copy(error) : json_object();
            json_object_del(details, "message");
            json_object_set(details, "batch", batch);
            json_object_set(details, "reloads", json_object_get(job->output, "reloads"));
            const char *message = json_string_value(json_object_get(error, "message"));
            daemon_reply_error(daemon, origin->client, origin->id, PROTOCOL_E_RELOAD_FAILED,
                               message ? message : "the reload failed", details);
        } else {
            daemon_reply_ok(daemon, origin->client, origin->id, json_incref(job->output));
        }
        break;
    }
    case PY_JOB_CONFIGURE:
        if (origin->purpose == PURPOSE_WATCH || origin->purpose == PURPOSE_UNWATCH) {
            on_root_job_done(daemon, job, origin);
            break;
        }
        if (!job->ok)
            log_error("applying the new configuration in the interpreter failed: %s",
                      json_string_value(json_object_get(job->output, "message")));
        else
            publish_import_errors(daemon, json_object_get(job->output, "errors"));
        break;
    case PY_JOB_RUN: {
        uint64_t run_id = (uint64_t)json_integer_value(json_object_get(job->input, "run_id"));
        struct run_entry *entry = run_find(daemon, run_id, false);
        if (!job->ok) {
            if (entry) {
                run_find(daemon, run_id, true);
                if (entry->client)
                    reply_job_error(daemon, entry->client, entry->id, job->output);
                run_entry_free(entry);
            }
            break;
        }
        if (json_is_true(json_object_get(job->output, "isolated"))) {
            char err[256];
            int pid = (int)json_integer_value(json_object_get(job->output, "pid"));
            int out_fd = (int)json_integer_value(json_object_get(job->output, "stdout_fd"));
            int err_fd = (int)json_integer_value(json_object_get(job->output, "stderr_fd"));
            if (py_run_watch_child(run_id, pid, out_fd, err_fd, entry ? entry->timeout_ms : 0, err,
                                   sizeof(err)) < 0) {
                log_warn("%s", err);
                if (entry) {
                    run_find(daemon, run_id, true);
                    if (entry->client)
                        daemon_reply_error(daemon, entry->client, entry->id, PROTOCOL_E_INTERNAL, err,
                                           NULL);
                    run_entry_free(entry);
                }
            } else if (entry && !entry->client) {
                py_run_kill_child(run_id); /* its client left before the child started */
            }
        }
        break;
    }
    case PY_JOB_PRELOAD:
        if (!job->ok) {
            log_warn("preload failed: %s", json_string_value(json_object_get(job->output, "message")));
        } else {
            publish_import_errors(daemon, json_object_get(job->output, "errors"));
            json_t *imported = json_object_get(job->output, "imported");
            if (json_array_size(imported) > 0)
                log_info("preloaded %zu modules", json_array_size(imported));
        }
        break;
    case PY_JOB_REPL:
    case PY_JOB_EXEC:
    case PY_JOB_MODULES:
        if (job->ok)
            daemon_reply_ok(daemon, origin->client, origin->id, json_incref(job->output));
        else
            reply_job_error(daemon, origin->client, origin->id, job->output);
        break;
    }
    origin_free(origin);
    py_job_free(job);
}

static int submit(struct daemon *daemon, enum py_job_kind kind, json_t *input, unsigned timeout_ms,
                  struct job_origin *origin) {
    struct py_job *job = py_job_new(kind, input, timeout_ms, on_job_done, origin);
    if (!job) {
        origin_free(origin);
        return -ENOMEM;
    }
    int r = daemon->host ? py_host_submit(daemon->host, job) : -ESHUTDOWN;
    if (r < 0) {
        origin_free(origin);
        py_job_free(job);
    }
    return r;
}

/* Submits kind for client's request; purpose and root (copied; may be NULL) say what to do
 * with a call job's result. Replies with an error itself when it cannot. */
static int submit_request(struct daemon *daemon, int kind, json_t *input, uint64_t client,
                          json_t *id, enum origin_purpose purpose, const char *root) {
    struct job_origin *origin = calloc(1, sizeof(*origin));
    if (!origin || (root && !(origin->root = strdup(root)))) {
        free(origin);
        json_decref(input);
        daemon_reply_error(daemon, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return -ENOMEM;
    }
    origin->daemon = daemon;
    origin->client = client;
    origin->id = json_incref(id);
    origin->purpose = purpose;
    origin->first_event_ns = uv_hrtime();
    unsigned timeout = daemon->config->exec_timeout_ms;
    if (kind == PY_JOB_RELOAD) {
        origin->batch_id = ++daemon->next_batch_id;
        timeout = daemon->config->reload_timeout_ms;
    }
    int r = submit(daemon, kind, input, timeout, origin);
    if (r < 0)
        daemon_reply_error(daemon, client, id,
                           r == -ESHUTDOWN ? PROTOCOL_E_SHUTTING_DOWN : PROTOCOL_E_INTERNAL,
                           r == -ESHUTDOWN ? "pyhotd is stopping" : strerror(-r), NULL);
    return r;
}

int daemon_submit_job(struct daemon *daemon, int kind, json_t *input, uint64_t client, json_t *id) {
    return submit_request(daemon, kind, input, client, id, PURPOSE_REQUEST, NULL);
}

/* ---- watcher ------------------------------------------------------------------------ */

static void on_batch(struct watch *watch, struct watch_batch *batch, void *data) {
    struct daemon *daemon = data;
    (void)watch;
    json_t *paths = json_array();
    for (size_t i = 0; i < batch->n_paths; i++)
        json_array_append_new(paths, json_string(batch->paths[i]));
    struct job_origin *origin = calloc(1, sizeof(*origin));
    if (!origin) {
        log_error("out of memory; a batch of %zu paths is lost", batch->n_paths);
        json_decref(paths);
        watch_batch_free(batch);
        return;
    }
    origin->daemon = daemon;
    origin->batch_id = ++daemon->next_batch_id;
    origin->first_event_ns = batch->first_event_ns;
    log_debug("batch %llu: %zu paths", (unsigned long long)origin->batch_id, batch->n_paths);
    watch_batch_free(batch);
    int r = submit(daemon, PY_JOB_RELOAD, json_pack("{s:o}", "paths", paths),
                   daemon->config->reload_timeout_ms, origin);
    if (r < 0 && r != -ESHUTDOWN)
        log_error("cannot queue a reload: %s", strerror(-r));
    /* One watcher batch at a time: changes made while it reloads wait and go as one. */
    if (r == 0)
        watch_hold(watch, WATCH_HOLD_BUSY);
}

static const char *root_state_name(enum watch_root_state state) {
    return state == WATCH_ROOT_WATCHING ? "watching" : "failed";
}

static void on_watch_error(struct watch *watch, const char *root, const char *message, void *data) {
    struct daemon *daemon = data;
    log_error("%s", message);
    bool lost = false;
    for (size_t i = 0; watch && i < watch_root_count(watch); i++) {
        const char *path = watch_root_path(watch, i);
        if (path && strcmp(path, root) == 0) /* NULL: a slot whose root was removed */
            lost = watch_root_state(watch, i, NULL) == WATCH_ROOT_LOST;
    }
    events_publish(daemon->events, "watch_error",
                   json_pack("{s:s, s:s, s:s, s:b}", "root", root, "message", message, "state",
                             "failed", "lost", lost));
}

static void on_watch_notice(struct watch *watch, const struct watch_notice *notice, void *data) {
    struct daemon *daemon = data;
    (void)watch;
    switch (notice->kind) {
    case WATCH_NOTICE_RESTORED:
        events_publish(daemon->events, "watch_restored",
                       json_pack("{s:s, s:I}", "root", notice->root, "watched_dirs",
                                 (json_int_t)notice->n_dirs));
        break;
    case WATCH_NOTICE_RESCAN: {
        struct watch_stats stats;
        watch_get_stats(daemon->watch, &stats);
        events_publish(daemon->events, "rescan",
                       json_pack("{s:s, s:I, s:I, s:f, s:I}", "reason", notice->reason, "changed",
                                 (json_int_t)notice->n_changed, "watched_dirs",
                                 (json_int_t)notice->n_dirs, "duration_ms",
                                 (double)notice->duration_ns / 1e6, "rescans",
                                 (json_int_t)stats.rescans));
        break;
    }
    case WATCH_NOTICE_HELD:
        log_info("batches held (%s%s%s)", notice->reason, notice->path ? ": " : "",
                 notice->path ? notice->path : "");
        events_publish(daemon->events, "watch_held",
                       json_pack("{s:s, s:o}", "reason", notice->reason, "lock",
                                 notice->path ? json_string(notice->path) : json_null()));
        break;
    case WATCH_NOTICE_RELEASED:
        log_info("batches released (%s): %zu paths pending", notice->reason, notice->n_pending);
        events_publish(daemon->events, "watch_released",
                       json_pack("{s:s, s:I}", "reason", notice->reason, "pending",
                                 (json_int_t)notice->n_pending));
        break;
    }
}

int daemon_pause(struct daemon *daemon, bool pause, size_t *pending) {
    if (!daemon->watch)
        return -ESHUTDOWN;
    /* Read first: a release sends the pending paths out at once. */
    struct watch_stats stats;
    watch_get_stats(daemon->watch, &stats);
    if (pending)
        *pending = stats.pending;
    if (pause)
        watch_hold(daemon->watch, WATCH_HOLD_PAUSE);
    else
        watch_release(daemon->watch, WATCH_HOLD_PAUSE);
    return 0;
}

/* ---- control and events -------------------------------------------------------------- */

static void on_request(struct control *control, uint64_t client, const char *line, size_t len, void *data) {
    (void)control;
    commands_dispatch(data, client, line, len);
}

static int on_event(uint64_t subscriber, const char *line, size_t len, void *data) {
    struct daemon *daemon = data;
    if (!daemon->control)
        return -ENOTCONN;
    return control_send(daemon->control, subscriber, line, len);
}

static void on_disconnect(struct control *control, uint64_t client, void *data) {
    struct daemon *daemon = data;
    (void)control;
    events_unsubscribe(daemon->events, client);
    /* Its runs: an isolated one is killed; an in-process one runs on, its output dropped
     * (docs/run.md). */
    for (struct run_entry *e = daemon->runs; e; e = e->next) {
        if (e->client != client)
            continue;
        e->client = 0;
        if (e->isolate)
            py_run_kill_child(e->run_id);
    }
}

/* ---- runs --------------------------------------------------------------------------- */

/* An ended run: the run event and the counters status shows (docs/protocol.md). */
static void run_ended(struct daemon *daemon, struct run_entry *entry, json_t *result) {
    json_object_set_new(result, "sandboxed", json_boolean(entry->sandbox));
    json_t *exit_code = json_object_get(result, "exit_code");
    json_t *sig = json_object_get(result, "signal");
    bool timed_out = json_is_true(json_object_get(result, "timed_out"));
    daemon->runs_ended.total++;
    daemon->runs_ended.isolated += entry->isolate;
    daemon->runs_ended.sandboxed += entry->sandbox;
    daemon->runs_ended.timed_out += timed_out;
    daemon->runs_ended.failed += json_integer_value(exit_code) != 0 || json_integer_value(sig) != 0;
    json_t *event = json_pack("{s:I, s:s, s:i, s:i, s:b, s:b, s:O, s:O, s:b, s:O, s:O, s:O}",
                              "run", (json_int_t)entry->run_id, "script", entry->target ? entry->target : "",
                              "peer_uid", (int)entry->peer_uid, "peer_pid", (int)entry->peer_pid,
                              "isolated", entry->isolate, "sandboxed", entry->sandbox,
                              "exit_code", exit_code ? exit_code : json_null(),
                              "signal", sig ? sig : json_null(), "timed_out", timed_out,
                              "duration_ms", json_object_get(result, "duration_ms") ?: json_null(),
                              "cpu_ms", json_object_get(result, "cpu_ms") ?: json_null(),
                              "max_rss_kb", json_object_get(result, "max_rss_kb") ?: json_null());
    if (event && json_object_get(result, "signal_name"))
        json_object_set(event, "signal_name", json_object_get(result, "signal_name"));
    events_publish(daemon->events, "run", event);
}

static void on_run_message(uint64_t run_id, json_t *msg, void *data) {
    struct daemon *daemon = data;
    bool end = json_is_true(json_object_get(msg, "end"));
    struct run_entry *entry = run_find(daemon, run_id, end);
    if (end && entry)
        run_ended(daemon, entry, json_object_get(msg, "result"));
    if (entry && entry->client && daemon->control) {
        if (end) {
            daemon_reply_ok(daemon, entry->client, entry->id, json_incref(json_object_get(msg, "result")));
        } else {
            json_t *line_obj = json_pack("{s:O, s:O, s:O}", "id", entry->id, "stream",
                                         json_object_get(msg, "stream"), "data", json_object_get(msg, "data"));
            size_t len;
            char *line = line_obj ? json_dumps(line_obj, JSON_COMPACT) : NULL;
            json_decref(line_obj);
            if (line) {
                len = strlen(line);
                char *framed = realloc(line, len + 2);
                if (framed) {
                    framed[len] = '\n';
                    framed[len + 1] = '\0';
                    control_send_owned(daemon->control, entry->client, framed, len + 1);
                } else {
                    free(line);
                }
            }
        }
    }
    if (end && entry)
        run_entry_free(entry);
    json_decref(msg);
}

/* What a sandboxed run's child applies ([sandbox] of the configuration; docs/run.md): the
 * input's "sandbox" object, read by py_run.c. pids is the request's --pids, or NULL. */
static json_t *sandbox_settings(const struct config *cfg, json_t *pids) {
    json_t *read = json_array(), *write = json_array();
    for (size_t i = 0; i < cfg->n_sandbox_read; i++)
        json_array_append_new(read, json_string(cfg->sandbox_read[i]));
    for (size_t i = 0; i < cfg->n_sandbox_write; i++)
        json_array_append_new(write, json_string(cfg->sandbox_write[i]));
    return json_pack("{s:s, s:s, s:o, s:o, s:I, s:I}",
                     "network", cfg->sandbox_network == CONFIG_NETWORK_LOOPBACK ? "loopback" : "none",
                     "user", cfg->sandbox_user ? cfg->sandbox_user : "nobody", "read", read, "write", write,
                     "pids", json_is_integer(pids) ? json_integer_value(pids) : (json_int_t)cfg->sandbox_pids,
                     "tmp_size_mb", (json_int_t)cfg->sandbox_tmp_mb);
}

int daemon_run_script(struct daemon *daemon, json_t *input, uint64_t client, json_t *id) {
    struct run_entry *entry = calloc(1, sizeof(*entry));
    if (!entry) {
        json_decref(input);
        daemon_reply_error(daemon, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return -ENOMEM;
    }
    entry->run_id = ++daemon->next_run_id;
    entry->client = client;
    entry->id = json_incref(id);
    entry->isolate = json_is_true(json_object_get(input, "isolate"));
    entry->sandbox = json_is_true(json_object_get(input, "sandbox"));
    entry->timeout_ms = (unsigned)json_integer_value(json_object_get(input, "timeout_ms"));
    entry->peer_uid = (uid_t)-1;
    if (daemon->control)
        control_peer(daemon->control, client, &entry->peer_uid, &entry->peer_pid);
    const char *target = json_string_value(json_object_get(input, "path"));
    entry->target = strdup(target ? target : json_string_value(json_object_get(input, "module")) ?: "");
    if (entry->sandbox)
        json_object_set_new(input, "sandbox", sandbox_settings(daemon->config, json_object_get(input, "pids")));
    json_object_set_new(input, "run_id", json_integer((json_int_t)entry->run_id));
    entry->next = daemon->runs;
    daemon->runs = entry;
    struct job_origin *origin = calloc(1, sizeof(*origin));
    if (!origin) {
        json_decref(input);
        run_find(daemon, entry->run_id, true);
        run_entry_free(entry);
        daemon_reply_error(daemon, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return -ENOMEM;
    }
    origin->daemon = daemon;
    origin->client = client;
    origin->id = json_incref(id);
    uint64_t run_id = entry->run_id;
    /* The job itself only starts the run: it gets the exec deadline. */
    int r = submit(daemon, PY_JOB_RUN, input, daemon->config->exec_timeout_ms, origin);
    if (r < 0) {
        entry = run_find(daemon, run_id, true);
        run_entry_free(entry);
        daemon_reply_error(daemon, client, id,
                           r == -ESHUTDOWN ? PROTOCOL_E_SHUTTING_DOWN : PROTOCOL_E_INTERNAL,
                           r == -ESHUTDOWN ? "pyhotd is stopping" : strerror(-r), NULL);
    }
    return r;
}

size_t daemon_runs_active(struct daemon *daemon) {
    size_t n = 0;
    for (struct run_entry *e = daemon->runs; e; e = e->next)
        n++;
    return n;
}

int daemon_subscribe(struct daemon *daemon, uint64_t client, struct events_filter *filter) {
    int r = control_set_subscriber(daemon->control, client, true);
    if (r < 0)
        return r;
    r = events_subscribe(daemon->events, client, filter);
    if (r < 0)
        control_set_subscriber(daemon->control, client, false);
    return r;
}

struct events *daemon_events(struct daemon *daemon) {
    return daemon->events;
}

size_t daemon_history_max_bytes(void) {
    return HISTORY_MAX_BYTES;
}

json_t *daemon_stats(struct daemon *daemon) {
    struct control_stats cs;
    control_get_stats(daemon->control, &cs);
    json_t *reload_ms = histogram_to_json(&daemon->reload_ms);
    json_t *latency_ms = histogram_to_json(&daemon->latency_ms);
    return json_pack(
        "{s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I, s:I, s:I}, s:I, s:{s:I, s:I},"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}, s:o, s:o}",
        "uptime_ms", (json_int_t)((uv_hrtime() - daemon->started_ns) / 1000000),
        "reloads",
        "ok", (json_int_t)daemon->reloads.ok,
        "error", (json_int_t)daemon->reloads.error,
        "rolled_back", (json_int_t)daemon->reloads.rolled_back,
        "skipped", (json_int_t)daemon->reloads.skipped,
        "batches",
        "total", (json_int_t)daemon->batches,
        "ok", (json_int_t)daemon->batch_results.ok,
        "error", (json_int_t)daemon->batch_results.error,
        "rolled_back", (json_int_t)daemon->batch_results.rolled_back,
        "skipped", (json_int_t)daemon->batch_results.skipped,
        "events", (json_int_t)events_last_seq(daemon->events),
        "responses",
        "total", (json_int_t)daemon->responses,
        "failed", (json_int_t)daemon->failed_responses,
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

/* ---- watch and unwatch -------------------------------------------------------------- */

/* path without its trailing slashes, in buf. */
static const char *trim_slashes(const char *path, char *buf, size_t len) {
    snprintf(buf, len, "%s", path);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    return buf;
}

/* Whether path is root or lies below it. */
static bool path_under(const char *path, const char *root) {
    size_t n = strlen(root);
    return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/' ||
                                           (n == 1 && root[0] == '/'));
}

/* What watch and unwatch check first; replies with the error itself. Returns 0 or the
 * negative errno of the reply. */
static int check_root_request(struct daemon *daemon, uint64_t client, json_t *id, const char *path) {
    if (daemon->stopping || !daemon->watch) {
        daemon_reply_error(daemon, client, id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd is stopping", NULL);
        return -ESHUTDOWN;
    }
    if (path[0] != '/') {
        daemon_reply_error(daemon, client, id, PROTOCOL_E_BAD_ARGUMENT,
                           "argument \"path\" must be an absolute path", NULL);
        return -EINVAL;
    }
    return 0;
}

int daemon_watch(struct daemon *daemon, uint64_t client, json_t *id, const char *path) {
    char message[PATH_MAX + 200];
    int checked = check_root_request(daemon, client, id, path);
    if (checked < 0)
        return checked;
    char *real = realpath(path, NULL);
    struct stat st;
    if (!real || stat(real, &st) < 0) {
        int e = errno;
        snprintf(message, sizeof(message), "cannot watch %s: %s", path, strerror(e));
        daemon_reply_error(daemon, client, id, e == ENOENT || e == ENOTDIR ? PROTOCOL_E_NOT_FOUND
                                                                           : PROTOCOL_E_WATCH_FAILED,
                           message, NULL);
        free(real);
        return -e;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(message, sizeof(message), "cannot watch %s: not a directory", path);
        daemon_reply_error(daemon, client, id, PROTOCOL_E_BAD_ARGUMENT, message, NULL);
        free(real);
        return -ENOTDIR;
    }
    for (size_t i = 0; i < watch_root_count(daemon->watch); i++) {
        const char *root = watch_root_path(daemon->watch, i);
        const char *why = NULL;
        if (!root)
            continue; /* a slot whose root was removed */
        if (strcmp(real, root) == 0)
            why = "is already a watch root";
        else if (path_under(real, root))
            why = "is inside the watch root";
        else if (path_under(root, real))
            why = "contains the watch root";
        if (!why)
            continue;
        if (strcmp(real, root) == 0)
            snprintf(message, sizeof(message), "%s %s", real, why);
        else
            snprintf(message, sizeof(message), "%s %s %s", real, why, root);
        daemon_reply_error(daemon, client, id, PROTOCOL_E_ALREADY_WATCHED, message,
                           json_pack("{s:s}", "root", root));
        free(real);
        return -EEXIST;
    }
    char err[PATH_MAX + 300];
    int r = watch_add_root(daemon->watch, real, err, sizeof(err));
    if (r < 0) {
        char ignored[64];
        watch_remove_root(daemon->watch, real, ignored, sizeof(ignored));
        daemon_reply_error(daemon, client, id, PROTOCOL_E_WATCH_FAILED, err, NULL);
        free(real);
        return r;
    }
    log_info("watching %s (the watch command)", real);
    json_t *input = json_pack("{s:[s], s:[], s:b}", "add_roots", real, "remove_roots", "import",
                              daemon->config->import == CONFIG_IMPORT_ALL);
    r = submit_request(daemon, PY_JOB_CONFIGURE, input, client, id, PURPOSE_WATCH, real);
    free(real);
    return r;
}

int daemon_unwatch(struct daemon *daemon, uint64_t client, json_t *id, const char *path) {
    char message[PATH_MAX + 200], given[PATH_MAX];
    int checked = check_root_request(daemon, client, id, path);
    if (checked < 0)
        return checked;
    trim_slashes(path, given, sizeof(given));
    char *real = realpath(path, NULL);
    char *root = NULL;
    const char *inside = NULL;
    for (size_t i = 0; i < watch_root_count(daemon->watch) && !root; i++) {
        const char *r = watch_root_path(daemon->watch, i);
        if (!r)
            continue; /* a slot whose root was removed */
        if (strcmp(r, given) == 0 || (real && strcmp(r, real) == 0))
            root = strdup(r);
        else if (path_under(real ? real : given, r))
            inside = r;
    }
    free(real);
    if (!root) {
        if (inside)
            snprintf(message, sizeof(message), "%s is not a watch root (it is inside the watch "
                     "root %s)", given, inside);
        else
            snprintf(message, sizeof(message), "%s is not a watch root", given);
        daemon_reply_error(daemon, client, id, PROTOCOL_E_NOT_FOUND, message, NULL);
        return -ENOENT;
    }
    char err[PATH_MAX + 100];
    watch_remove_root(daemon->watch, root, err, sizeof(err));
    log_info("no longer watching %s (the unwatch command)", root);
    json_t *input = json_pack("{s:[], s:[s], s:b}", "add_roots", "remove_roots", root, "import", 0);
    int r = submit_request(daemon, PY_JOB_CONFIGURE, input, client, id, PURPOSE_UNWATCH, root);
    free(root);
    return r;
}

uint64_t daemon_last_seq(struct daemon *daemon) {
    return events_last_seq(daemon->events);
}

json_t *daemon_status(struct daemon *daemon) {
    json_t *roots = json_array();
    json_t *watch = json_null();
    if (daemon->watch) {
        for (size_t i = 0; i < watch_root_count(daemon->watch); i++) {
            const char *message = NULL;
            const char *path = watch_root_path(daemon->watch, i);
            if (!path)
                continue; /* removed by a configuration reload */
            enum watch_root_state state = watch_root_state(daemon->watch, i, &message);
            json_t *root = json_pack("{s:s, s:s}", "path", path, "state", root_state_name(state));
            if (state != WATCH_ROOT_WATCHING) {
                json_object_set_new(root, "error", json_string(message ? message : "not watched"));
                json_object_set_new(root, "lost", json_boolean(state == WATCH_ROOT_LOST));
            }
            json_array_append_new(roots, root);
        }
        struct watch_stats stats;
        watch_get_stats(daemon->watch, &stats);
        json_t *held = json_array();
        if (stats.holds & WATCH_HOLD_PAUSE)
            json_array_append_new(held, json_string("pause"));
        if (stats.holds & WATCH_HOLD_VCS)
            json_array_append_new(held, json_string("vcs"));
        if (stats.holds & WATCH_HOLD_BUSY)
            json_array_append_new(held, json_string("busy"));
        watch = json_pack("{s:s, s:I, s:I, s:I, s:b, s:o, s:o, s:b, s:I, s:f}",
                          "backend", stats.backend,
                          "watched_dirs", (json_int_t)stats.dirs,
                          "rescans", (json_int_t)stats.rescans,
                          "pending", (json_int_t)stats.pending,
                          "paused", (stats.holds & WATCH_HOLD_PAUSE) != 0,
                          "held", held,
                          "vcs_lock", stats.vcs_lock ? json_string(stats.vcs_lock) : json_null(),
                          "follow_symlinks", daemon->config->follow_symlinks,
                          "defer_vcs_ms", (json_int_t)daemon->config->defer_vcs_ms,
                          "setup_ms", (double)stats.setup_ns / 1e6);
    }
    const char *kind = NULL;
    uint64_t age_ms = 0;
    uint64_t job_id = py_host_running(daemon->host, &kind, &age_ms);
    json_t *job = job_id ? json_pack("{s:I, s:s, s:I}", "id", (json_int_t)job_id, "kind", kind,
                                     "age_ms", (json_int_t)age_ms)
                         : json_null();
    json_t *status = json_pack(
        "{s:s, s:I, s:I, s:s, s:s, s:I, s:o, s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:I, s:O, s:o, s:I, s:I, s:b, s:o}",
        "version", PYHOT_VERSION,
        "pid", (json_int_t)getpid(),
        "uptime_ms", (json_int_t)((uv_hrtime() - daemon->started_ns) / 1000000),
        "python", py_host_python_version(),
        "socket", daemon->config->socket_path,
        "settle_ms", (json_int_t)daemon->config->settle_ms,
        "roots", roots,
        "watched_dirs", (json_int_t)(daemon->watch ? watch_dir_count(daemon->watch) : 0),
        "modules_loaded", (json_int_t)py_host_modules_loaded(daemon->host),
        "reloads",
        "ok", (json_int_t)daemon->reloads.ok,
        "error", (json_int_t)daemon->reloads.error,
        "rolled_back", (json_int_t)daemon->reloads.rolled_back,
        "skipped", (json_int_t)daemon->reloads.skipped,
        "batches", (json_int_t)daemon->batches,
        "last_batch", daemon->last_batch ? daemon->last_batch : json_null(),
        "job", job,
        "queued_jobs", (json_int_t)py_host_queued(daemon->host),
        "subscribers", (json_int_t)control_subscriber_count(daemon->control),
        "ready", daemon->ready,
        "watch", watch);
    if (status) {
        json_object_set_new(status, "runs", json_integer((json_int_t)daemon_runs_active(daemon)));
        json_object_set_new(status, "runs_ended",
                            json_pack("{s:I, s:I, s:I, s:I, s:I}", "total", (json_int_t)daemon->runs_ended.total,
                                      "isolated", (json_int_t)daemon->runs_ended.isolated,
                                      "sandboxed", (json_int_t)daemon->runs_ended.sandboxed,
                                      "failed", (json_int_t)daemon->runs_ended.failed,
                                      "timed_out", (json_int_t)daemon->runs_ended.timed_out));
    }
    return status;
}

/* ---- stop --------------------------------------------------------------------------- */

static void on_stop_deadline(uv_timer_t *timer) {
    (void)timer;
    log_error("could not stop within %d ms (a job or an app thread does not end); exiting",
              STOP_DEADLINE_MS);
    _exit(1);
}

static void on_control_closed(void *data) {
    struct daemon *daemon = data;
    daemon->control = NULL;
}

static void on_host_stopped(void *data) {
    struct daemon *daemon = data;
    daemon->host = NULL;
    py_run_channel_close();
    sandbox_release(); /* the python thread that prepared it has ended */
    while (daemon->runs) {
        struct run_entry *e = daemon->runs;
        daemon->runs = e->next;
        if (e->client && daemon->control)
            daemon_reply_error(daemon, e->client, e->id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd stopped",
                               NULL);
        run_entry_free(e);
    }
    /* Last: replies to jobs that finished while stopping still went out. */
    if (daemon->control)
        control_close(daemon->control, on_control_closed, daemon);
}

static void on_watch_closed(void *data) {
    struct daemon *daemon = data;
    daemon->watch = NULL;
}

void daemon_stop(struct daemon *daemon, const char *reason) {
    if (daemon->stopping)
        return;
    daemon->stopping = true;
    log_info("stopping: %s", reason);
    sd_notify(0, "STOPPING=1");
    events_publish(daemon->events, "stopping", json_pack("{s:s}", "reason", reason));
    uv_close((uv_handle_t *)&daemon->sigint, NULL);
    uv_close((uv_handle_t *)&daemon->sigterm, NULL);
    uv_close((uv_handle_t *)&daemon->sighup, NULL);
    uv_close((uv_handle_t *)&daemon->watchdog, NULL);
    uv_timer_start(&daemon->stop_deadline, on_stop_deadline, STOP_DEADLINE_MS, 0);
    uv_unref((uv_handle_t *)&daemon->stop_deadline);
    if (daemon->watch)
        watch_close(daemon->watch, on_watch_closed, daemon);
    if (daemon->host)
        py_host_stop(daemon->host, STOP_GRACE_MS, on_host_stopped, daemon);
    else if (daemon->control)
        control_close(daemon->control, on_control_closed, daemon);
}

static void on_signal(uv_signal_t *handle, int signum) {
    daemon_stop(handle->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- configuration reload (SIGHUP) and watchdog -------------------------------------- */

/* sd_notify(3) RELOADING=1 must carry MONOTONIC_USEC (systemd.service(5), Type=notify-reload). */
static void notify_reloading(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

static bool strings_equal(const char *a, const char *b) {
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool lists_equal(char **a, size_t na, char **b, size_t nb) {
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

static bool list_contains(char **items, size_t n, const char *s) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(items[i], s) == 0)
            return true;
    return false;
}

/* Re-reads the configuration (the same command line: its file, then its overrides) and
 * applies what can change in a running daemon; the interpreter is never restarted. An
 * invalid configuration changes nothing. */
static void reload_config(struct daemon *daemon) {
    notify_reloading();
    struct config fresh;
    char err[2048];
    char **argv = calloc((size_t)daemon->argc + 1, sizeof(*argv));
    int r = argv ? 0 : -ENOMEM;
    if (argv) {
        /* getopt permutes the array it is given: parse a copy. */
        memcpy(argv, daemon->argv, (size_t)daemon->argc * sizeof(*argv));
        config_init(&fresh);
        r = config_parse_args(&fresh, daemon->argc, argv, err, sizeof(err));
        if (r == 0)
            r = config_finish(&fresh, err, sizeof(err));
        free(argv);
    } else {
        snprintf(err, sizeof(err), "out of memory");
    }
    if (r < 0) {
        if (argv)
            config_free(&fresh);
        log_error("configuration reload failed; the running configuration stays: %s", err);
        events_publish(daemon->events, "config_error", json_pack("{s:s}", "message", err));
        sd_notify(0, "READY=1");
        return;
    }

    struct config *old = daemon->config;
    json_t *changed = json_array();
    json_t *restart = json_array();
    if (fresh.settle_ms != old->settle_ms) {
        if (daemon->watch)
            watch_set_settle(daemon->watch, fresh.settle_ms);
        json_array_append_new(changed, json_string("settle_ms"));
    }
    if (fresh.log_level != old->log_level) {
        log_set_level(fresh.log_level);
        json_array_append_new(changed, json_string("log_level"));
    }
    if (fresh.reload_timeout_ms != old->reload_timeout_ms)
        json_array_append_new(changed, json_string("reload_timeout_ms"));
    if (fresh.exec_timeout_ms != old->exec_timeout_ms)
        json_array_append_new(changed, json_string("exec_timeout_ms"));
    if (fresh.strategy != old->strategy || fresh.import != old->import)
        json_array_append_new(changed, json_string(fresh.strategy != old->strategy ? "strategy" : "import"));

    /* Roots: added ones are watched, put on sys.path and (import = all) imported; removed
     * ones stop being watched and their modules stop being reloadable. */
    json_t *added = json_array(), *removed = json_array();
    for (size_t i = 0; i < fresh.n_watch_roots; i++)
        if (!list_contains(old->watch_roots, old->n_watch_roots, fresh.watch_roots[i]))
            json_array_append_new(added, json_string(fresh.watch_roots[i]));
    for (size_t i = 0; i < old->n_watch_roots; i++)
        if (!list_contains(fresh.watch_roots, fresh.n_watch_roots, old->watch_roots[i]))
            json_array_append_new(removed, json_string(old->watch_roots[i]));
    size_t i;
    json_t *root;
    json_array_foreach(removed, i, root) {
        if (daemon->watch && watch_remove_root(daemon->watch, json_string_value(root), err, sizeof(err)) < 0)
            log_warn("%s", err);
        else
            log_info("no longer watching %s", json_string_value(root));
    }
    json_array_foreach(added, i, root) {
        if (daemon->watch && watch_add_root(daemon->watch, json_string_value(root), err, sizeof(err)) < 0)
            on_watch_error(daemon->watch, json_string_value(root), err, daemon);
        else
            log_info("watching %s", json_string_value(root));
    }
    if (json_array_size(added) || json_array_size(removed))
        json_array_append_new(changed, json_string("watch_roots"));

    if (!strings_equal(fresh.socket_path, old->socket_path))
        json_array_append_new(restart, json_string("socket"));
    if (!strings_equal(fresh.entry, old->entry))
        json_array_append_new(restart, json_string("entry"));
    if (!strings_equal(fresh.venv, old->venv))
        json_array_append_new(restart, json_string("venv"));
    if (!lists_equal(fresh.python_paths, fresh.n_python_paths, old->python_paths, old->n_python_paths))
        json_array_append_new(restart, json_string("python_paths"));
    if (!lists_equal(fresh.include, fresh.n_include, old->include, old->n_include) ||
        !lists_equal(fresh.exclude, fresh.n_exclude, old->exclude, old->n_exclude))
        json_array_append_new(restart, json_string("include/exclude"));
    json_array_foreach(restart, i, root)
        log_warn("configuration reload: %s changed; it takes effect at the next restart",
                 json_string_value(root));

    /* The interpreter's side: roots, strategy. Runs in order after any queued job. */
    struct job_origin *origin = calloc(1, sizeof(*origin));
    if (origin) {
        origin->daemon = daemon;
        json_t *input = json_pack("{s:O, s:O, s:b, s:s}", "add_roots", added, "remove_roots", removed,
                                  "import", fresh.import == CONFIG_IMPORT_ALL, "strategy",
                                  fresh.strategy == CONFIG_STRATEGY_MODULE ? "module" : "dependents");
        if (submit(daemon, PY_JOB_CONFIGURE, input, fresh.exec_timeout_ms, origin) < 0)
            log_warn("could not apply the new roots to the interpreter");
    }
    json_decref(added);
    json_decref(removed);

    config_free(old);
    *old = fresh;
    log_info("configuration reloaded from %s", old->config_path ? old->config_path : "the command line");
    events_publish(daemon->events, "config_reloaded",
                   json_pack("{s:o, s:o}", "changed", changed, "restart_needed", restart));
    sd_notify(0, "READY=1");
}

static void on_sighup(uv_signal_t *handle, int signum) {
    (void)signum;
    reload_config(handle->data);
}

static void on_watchdog(uv_timer_t *timer) {
    (void)timer;
    /* Sent from the loop thread: a wedged loop stops the pings and systemd restarts us. */
    sd_notify(0, "WATCHDOG=1");
}

/* ---- run ---------------------------------------------------------------------------- */

static int start(struct daemon *daemon) {
    const struct config *cfg = daemon->config;
    char err[1024];
    int r = events_new(HISTORY_EVENTS, &daemon->events);
    if (r < 0) {
        log_error("out of memory");
        return r;
    }
    events_set_sink(daemon->events, on_event, daemon);

    r = filter_new((const char *const *)cfg->include, cfg->n_include,
                   (const char *const *)cfg->exclude, cfg->n_exclude, &daemon->filter, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }

    struct py_host_options host_options = {
        .roots = (const char *const *)cfg->watch_roots,
        .n_roots = cfg->n_watch_roots,
        .paths = (const char *const *)cfg->python_paths,
        .n_paths = cfg->n_python_paths,
        .venv = cfg->venv,
    };
    r = py_host_start(&daemon->loop, &host_options, &daemon->host, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }
    r = py_run_channel_open(&daemon->loop, on_run_message, daemon, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }

    struct control_options control_options = {
        .path = cfg->socket_path,
        .max_clients = cfg->max_clients,
        .max_output = cfg->max_output_bytes,
        .request_timeout_ms = cfg->request_timeout_ms,
        .has_group = cfg->has_socket_gid,
        .group = cfg->socket_gid,
        .on_request = on_request,
        .on_disconnect = on_disconnect,
        .data = daemon,
    };
    r = control_listen(&daemon->loop, &control_options, &daemon->control, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }

    struct watch_options watch_options = {
        .settle_ms = cfg->settle_ms,
        .filter = daemon->filter,
        .backend = cfg->backend == CONFIG_BACKEND_UV ? WATCH_BACKEND_UV : WATCH_BACKEND_INOTIFY,
        .follow_symlinks = cfg->follow_symlinks,
        .defer_vcs_ms = cfg->defer_vcs_ms,
        .on_batch = on_batch,
        .on_error = on_watch_error,
        .on_notice = on_watch_notice,
        .data = daemon,
    };
    r = watch_new(&daemon->loop, &watch_options, &daemon->watch, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }
    /* Watching starts before the first imports, so an edit made meanwhile is not lost. */
    for (size_t i = 0; i < cfg->n_watch_roots; i++) {
        size_t dirs_before = watch_dir_count(daemon->watch);
        uint64_t began = uv_hrtime();
        r = watch_add_root(daemon->watch, cfg->watch_roots[i], err, sizeof(err));
        if (r < 0)
            on_watch_error(daemon->watch, cfg->watch_roots[i], err, daemon);
        else
            log_info("watching %s (%zu directories in %.1f ms)", cfg->watch_roots[i],
                     watch_dir_count(daemon->watch) - dirs_before,
                     (double)(uv_hrtime() - began) / 1e6);
    }
    if (cfg->n_watch_roots == 0)
        log_warn("no watch roots: nothing will be reloaded on change (use --watch DIR)");

    struct job_origin *origin = calloc(1, sizeof(*origin));
    if (!origin)
        return -ENOMEM;
    origin->daemon = daemon;
    json_t *input = json_pack("{s:b, s:o, s:s}", "import", cfg->import == CONFIG_IMPORT_ALL, "entry",
                              cfg->entry ? json_string(cfg->entry) : json_null(), "strategy",
                              cfg->strategy == CONFIG_STRATEGY_MODULE ? "module" : "dependents");
    if (cfg->n_preload > 0) {
        /* [python] preload: before the roots' imports and the app, so runs find them warm. */
        struct job_origin *pre = calloc(1, sizeof(*pre));
        json_t *modules = json_array();
        for (size_t i = 0; i < cfg->n_preload; i++)
            json_array_append_new(modules, json_string(cfg->preload[i]));
        if (pre) {
            pre->daemon = daemon;
            if (submit(daemon, PY_JOB_PRELOAD, json_pack("{s:o}", "modules", modules),
                       cfg->exec_timeout_ms, pre) < 0)
                log_warn("could not queue the preload");
        } else {
            json_decref(modules);
        }
    }
    /* The first imports run an app's top level: they get the exec deadline, not reload's. */
    return submit(daemon, PY_JOB_STARTUP, input, cfg->exec_timeout_ms, origin);
}

static void close_walk(uv_handle_t *handle, void *arg) {
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

int daemon_run(struct config *cfg, int argc, char **argv) {
    struct daemon *daemon = calloc(1, sizeof(*daemon));
    if (!daemon) {
        log_error("out of memory");
        return 1;
    }
    daemon->config = cfg;
    daemon->argc = argc;
    daemon->argv = argv;
    daemon->started_ns = uv_hrtime();
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&daemon->loop);
    uv_timer_init(&daemon->loop, &daemon->stop_deadline);
    uv_signal_init(&daemon->loop, &daemon->sigint);
    uv_signal_init(&daemon->loop, &daemon->sigterm);
    daemon->sigint.data = daemon->sigterm.data = daemon;
    uv_signal_start(&daemon->sigint, on_signal, SIGINT);
    uv_signal_start(&daemon->sigterm, on_signal, SIGTERM);
    uv_signal_init(&daemon->loop, &daemon->sighup);
    daemon->sighup.data = daemon;
    uv_signal_start(&daemon->sighup, on_sighup, SIGHUP);
    uv_timer_init(&daemon->loop, &daemon->watchdog);
    uint64_t watchdog_usec = 0;
    if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec >= 2000) {
        /* sd_watchdog_enabled(3): ping at half the interval. */
        uv_timer_start(&daemon->watchdog, on_watchdog, watchdog_usec / 2000, watchdog_usec / 2000);
        uv_unref((uv_handle_t *)&daemon->watchdog);
        log_info("systemd watchdog: pinging every %llu ms", (unsigned long long)(watchdog_usec / 2000));
    }
    log_info("pyhotd %s (Python %s), pid %d", PYHOT_VERSION, py_host_python_version(), (int)getpid());

    if (start(daemon) < 0) {
        daemon->exit_code = 1;
        daemon_stop(daemon, "startup failed");
    }
    uv_run(&daemon->loop, UV_RUN_DEFAULT);

    uv_close((uv_handle_t *)&daemon->stop_deadline, NULL);
    uv_walk(&daemon->loop, close_walk, NULL);
    uv_run(&daemon->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&daemon->loop) != 0)
        log_warn("handles were still open at exit");
    int code = daemon->exit_code;
    events_free(daemon->events);
    filter_free(daemon->filter);
    json_decref(daemon->last_batch);
    free(daemon->status_cache);
    free(daemon);
    log_info("stopped");
    return code;
}
