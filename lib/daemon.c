#include "daemon.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "commands.h"
#include "config_reload.h"
#include "control.h"
#include "events.h"
#include "filter.h"
#include "log.h"
#include "plugins.h"
#include "protocol.h"
#include "py_host.h"
#include "server.h"
#include "version.h"
#include "watch.h"

/* The history keeps at most this many events, within [daemon] history_bytes. */
#define HISTORY_EVENTS 1000
#define STOP_GRACE_MS 2000
#define STOP_DEADLINE_MS (STOP_GRACE_MS + 5000)

/* The components (in server, what commands see) and what only the daemon handles. */
struct daemon {
    struct server server; /* first: a struct server * of the daemon's is the daemon */
    uv_loop_t loop;
    int argc; /* the command line, kept to re-read the configuration */
    char **argv;
    struct filter *filter;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t stop_deadline;
    uv_timer_t watchdog;
    uint64_t loaded_generation; /* of the loaded-files list the watcher has */
    int exit_code;
};

static void daemon_stop(struct daemon *daemon, const char *reason);

static void server_send(struct server *server, uint64_t client, char *line, size_t len) {
    if (server->control)
        control_send_owned(server->control, client, line, len);
    else
        free(line);
}

static void server_stop(struct server *server, const char *reason) {
    daemon_stop((struct daemon *)server, reason);
}

/* ---- startup and the entry ---------------------------------------------------------- */

/* status "entry": name, state and, when it failed, the error (borrowed; NULL for none). */
static void set_entry_state(struct server *server, const char *state, json_t *error) {
    json_decref(server->entry);
    server->entry = json_pack("{s:s, s:s}", "name", server->config->entry, "state", state);
    if (server->entry && json_is_object(error))
        json_object_set(server->entry, "error", error);
    server_status_changed(server);
}

/* The entry function returned or raised (py_host's on_entry_end): an app that dies is an
 * error with its cause, in the log, in an event and in status; the daemon keeps serving. */
static void on_entry_end(json_t *end, void *data) {
    struct server *server = data;
    const char *name = json_string_value(json_object_get(end, "entry"));
    json_t *error = json_object_get(end, "error");
    bool failed = json_is_object(error);
    if (failed)
        log_error("entry %s failed: %s: %s (%s:%lld); the daemon keeps serving without the app",
                  name ? name : "?", json_string_value(json_object_get(error, "type")),
                  json_string_value(json_object_get(error, "message")),
                  json_string_value(json_object_get(error, "file")),
                  json_integer_value(json_object_get(error, "line")));
    else
        log_info("entry %s returned; the daemon keeps serving without the app", name ? name : "?");
    if (server->config->entry)
        set_entry_state(server, failed ? "failed" : "returned", error);
    events_publish(server->events, "entry_ended", end);
}

/* Polled roots compare the loaded modules' files every interval: the watcher gets the
 * list whenever a job changed it. */
static void update_loaded_files(void *data) {
    struct daemon *daemon = data;  /* the server, the daemon's first member */
    char **paths = NULL;
    size_t n = 0;
    if (!daemon->server.watch ||
        py_host_loaded_files(daemon->server.host, &daemon->loaded_generation, &paths, &n) <= 0)
        return;
    if (watch_set_loaded(daemon->server.watch, (const char *const *)paths, n) < 0)
        daemon->loaded_generation = 0;  /* out of memory: try again after the next job */
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
}

static void on_startup_done(struct py_job *job, void *data) {
    struct server *server = data;
    if (!job->ok) {
        const char *message = json_string_value(json_object_get(job->output, "message"));
        const char *type = json_string_value(json_object_get(job->output, "type"));
        log_error("startup failed: %s: %s", type ? type : "error", message ? message : "?");
        json_t *event = json_pack("{s:s, s:O}", "stage", "startup", "error", job->output);
        events_publish(server->events, "startup_error", event);
    } else {
        server_publish_import_errors(server, json_object_get(job->output, "errors"));
    }
    json_t *entry = json_object_get(job->output, "entry");
    if (server->config->entry && !server->entry) /* not overtaken by on_entry_end */
        set_entry_state(server, job->ok && json_is_true(json_object_get(entry, "ok")) ? "running"
                                                                                   : "not_started",
                        json_object_get(entry, "error"));
    if (job->ok && json_is_false(json_object_get(entry, "ok"))) {
        json_t *error = json_object_get(entry, "error");
        log_error("entry %s could not start: %s: %s; the daemon keeps serving without the app",
                  server->config->entry, json_string_value(json_object_get(error, "type")),
                  json_string_value(json_object_get(error, "message")));
        events_publish(server->events, "startup_error",
                       json_pack("{s:s, s:s, s:O}", "stage", "entry", "entry", server->config->entry,
                                 "error", error ? error : json_null()));
    }
    json_t *roots = json_array();
    for (size_t i = 0; i < server->config->n_watch_roots; i++)
        json_array_append_new(roots, json_string(server->config->watch_roots[i]));
    events_publish(server->events, "started",
                   json_pack("{s:s, s:I, s:o, s:I, s:I}", "version", PYHOT_VERSION,
                             "pid", (json_int_t)getpid(), "roots", roots,
                             "modules_loaded", (json_int_t)py_host_modules_loaded(server->host),
                             "watched_dirs", (json_int_t)(server->watch ? watch_dir_count(server->watch) : 0)));
    server->ready = true;
    sd_notify(0, "READY=1");
    log_info("ready: %zu modules loaded, %zu directories watched, socket %s",
             py_host_modules_loaded(server->host), server->watch ? watch_dir_count(server->watch) : 0,
             server->config->socket_path);
    py_job_free(job);
}

static void on_preload_done(struct py_job *job, void *data) {
    struct server *server = data;
    if (!job->ok) {
        log_warn("preload failed: %s", json_string_value(json_object_get(job->output, "message")));
    } else {
        server_publish_import_errors(server, json_object_get(job->output, "errors"));
        json_t *imported = json_object_get(job->output, "imported");
        if (json_array_size(imported) > 0)
            log_info("preloaded %zu modules", json_array_size(imported));
    }
    py_job_free(job);
}

/* ---- watcher: batch -> reload job -> events ------------------------------------------ */

/* A watcher batch's reload job. */
struct batch_job {
    struct server *server;
    uint64_t batch_id;
    uint64_t first_event_ns; /* latency start: the batch's first file event */
};

static void on_batch_done(struct py_job *job, void *data) {
    struct batch_job *bj = data;
    struct server *server = bj->server;
    if (job->ok)
        server_publish_reload(server, job, bj->batch_id, bj->first_event_ns, true);
    /* The watcher's batch is done: what piled up meanwhile goes out as one. */
    if (server->watch)
        watch_release(server->watch, WATCH_HOLD_BUSY);
    free(bj);
    py_job_free(job);
}

static void on_batch(struct watch *watch, struct watch_batch *batch, void *data) {
    struct server *server = data;
    if (server->plugins)
        plugins_take_batch(server->plugins, batch);
    if (batch->n_paths == 0) { /* plugin files only: the plugin host has them */
        watch_batch_free(batch);
        return;
    }
    json_t *paths = json_array();
    for (size_t i = 0; i < batch->n_paths; i++)
        json_array_append_new(paths, json_string(batch->paths[i]));
    struct batch_job *bj = calloc(1, sizeof(*bj));
    if (!bj) {
        log_error("out of memory; a batch of %zu paths is lost", batch->n_paths);
        json_decref(paths);
        watch_batch_free(batch);
        return;
    }
    bj->server = server;
    bj->batch_id = ++server->next_batch_id;
    bj->first_event_ns = batch->first_event_ns;
    log_debug("batch %llu: %zu paths", (unsigned long long)bj->batch_id, batch->n_paths);
    watch_batch_free(batch);
    int r = server_submit(server, PY_JOB_RELOAD,
                          json_pack("{s:o, s:I}", "paths", paths, "batch", (json_int_t)bj->batch_id),
                          server->config->reload_timeout_ms, on_batch_done, bj);
    if (r < 0) {
        free(bj);
        if (r != -ESHUTDOWN)
            log_error("cannot queue a reload: %s", strerror(-r));
        return;
    }
    /* One watcher batch at a time: changes made while it reloads wait and go as one. */
    watch_hold(watch, WATCH_HOLD_BUSY);
}

static void on_watch_error(struct watch *watch, const char *root, const char *message, void *data) {
    (void)watch;
    server_publish_watch_error(data, root, message);
}

static void on_watch_notice(struct watch *watch, const struct watch_notice *notice, void *data) {
    struct server *server = data;
    (void)watch;
    switch (notice->kind) {
    case WATCH_NOTICE_RESTORED:
        events_publish(server->events, "watch_restored",
                       json_pack("{s:s, s:I}", "root", notice->root, "watched_dirs",
                                 (json_int_t)notice->n_dirs));
        break;
    case WATCH_NOTICE_RESCAN: {
        struct watch_stats stats;
        watch_get_stats(server->watch, &stats);
        events_publish(server->events, "rescan",
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
        events_publish(server->events, "watch_held",
                       json_pack("{s:s, s:o}", "reason", notice->reason, "lock",
                                 notice->path ? json_string(notice->path) : json_null()));
        break;
    case WATCH_NOTICE_RELEASED:
        log_info("batches released (%s): %zu paths pending", notice->reason, notice->n_pending);
        events_publish(server->events, "watch_released",
                       json_pack("{s:s, s:I}", "reason", notice->reason, "pending",
                                 (json_int_t)notice->n_pending));
        break;
    }
}

/* ---- control and events -------------------------------------------------------------- */

static void on_request(struct control *control, uint64_t client, const char *line, size_t len,
                       void *data) {
    (void)control;
    commands_dispatch(data, client, line, len);
}

static int on_event(uint64_t subscriber, const char *line, size_t len, void *data) {
    struct server *server = data;
    if (!server->control)
        return -ENOTCONN;
    return control_send(server->control, subscriber, line, len);
}

static void on_disconnect(struct control *control, uint64_t client, void *data) {
    (void)control;
    commands_client_gone(data, client);
}

/* ---- stop --------------------------------------------------------------------------- */

static void on_stop_deadline(uv_timer_t *timer) {
    (void)timer;
    log_error("could not stop within %d ms (a job or an app thread does not end); exiting",
              STOP_DEADLINE_MS);
    _exit(1);
}

static void on_control_closed(void *data) {
    struct server *server = data;
    server->control = NULL;
}

static void on_host_stopped(void *data) {
    struct server *server = data;
    server->host = NULL;
    commands_host_stopped(server);
    /* Last: replies to jobs that finished while stopping still went out. */
    if (server->control)
        control_close(server->control, on_control_closed, server);
}

static void on_watch_closed(void *data) {
    struct server *server = data;
    server->watch = NULL;
}

static void daemon_stop(struct daemon *daemon, const char *reason) {
    struct server *server = &daemon->server;
    if (server->stopping)
        return;
    server->stopping = true;
    log_info("stopping: %s", reason);
    sd_notify(0, "STOPPING=1");
    events_publish(server->events, "stopping", json_pack("{s:s}", "reason", reason));
    uv_close((uv_handle_t *)&daemon->sigint, NULL);
    uv_close((uv_handle_t *)&daemon->sigterm, NULL);
    uv_close((uv_handle_t *)&daemon->sighup, NULL);
    uv_close((uv_handle_t *)&daemon->watchdog, NULL);
    uv_timer_start(&daemon->stop_deadline, on_stop_deadline, STOP_DEADLINE_MS, 0);
    uv_unref((uv_handle_t *)&daemon->stop_deadline);
    if (server->watch)
        watch_close(server->watch, on_watch_closed, server);
    if (server->host)
        py_host_stop(server->host, STOP_GRACE_MS, on_host_stopped, server);
    else if (server->control)
        control_close(server->control, on_control_closed, server);
}

static void on_signal(uv_signal_t *handle, int signum) {
    daemon_stop(handle->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_sighup(uv_signal_t *handle, int signum) {
    struct daemon *daemon = handle->data;
    (void)signum;
    config_reload(&daemon->server, daemon->argc, daemon->argv);
}

static void on_watchdog(uv_timer_t *timer) {
    (void)timer;
    /* Sent from the loop thread: a wedged loop stops the pings and systemd restarts us. */
    sd_notify(0, "WATCHDOG=1");
}

/* ---- run ---------------------------------------------------------------------------- */

/* The plugin host's loop half (plugins.c), and a watch on each plugin directory that no
 * watch root holds. Returns 0 or -ENOMEM (logged). */
static int start_plugins(struct server *server) {
    const struct config *cfg = server->config;
    char err[1024];
    struct plugins_options options = {
        .dirs = (const char *const *)cfg->plugin_dirs,
        .n_dirs = cfg->n_plugin_dirs,
        .roots = (const char *const *)cfg->watch_roots,
        .n_roots = cfg->n_watch_roots,
        .pattern = cfg->plugin_pattern,
        .api = cfg->plugin_api,
        .timeout_ms = cfg->reload_timeout_ms,
        .server = server,
    };
    if (plugins_new(&options, &server->plugins) < 0) {
        log_error("out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < cfg->n_plugin_dirs; i++) {
        const char *dir = cfg->plugin_dirs[i];
        if (!plugins_needs_watch(server->plugins, dir))
            continue;
        if (watch_add_root(server->watch, dir, err, sizeof(err)) < 0)
            server_publish_watch_error(server, dir, err);
        else
            log_info("watching plugin directory %s", dir);
    }
    return 0;
}

/* The control socket and the watcher with its roots. Returns 0 or a negative errno (logged). */
static int start_io(struct daemon *daemon) {
    struct server *server = &daemon->server;
    const struct config *cfg = server->config;
    char err[1024];
    struct control_options control_options = {
        .path = cfg->socket_path,
        .max_clients = cfg->max_clients,
        .max_output = cfg->max_output_bytes,
        .request_timeout_ms = cfg->request_timeout_ms,
        .has_group = cfg->has_socket_gid,
        .group = cfg->socket_gid,
        .on_request = on_request,
        .on_disconnect = on_disconnect,
        .data = server,
    };
    int r = control_listen(&daemon->loop, &control_options, &server->control, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }
    struct watch_options watch_options = {
        .settle_ms = cfg->settle_ms,
        .filter = daemon->filter,
        .backend = cfg->backend == CONFIG_BACKEND_UV     ? WATCH_BACKEND_UV
                   : cfg->backend == CONFIG_BACKEND_POLL ? WATCH_BACKEND_POLL
                                                         : WATCH_BACKEND_INOTIFY,
        .follow_symlinks = cfg->follow_symlinks,
        .defer_vcs_ms = cfg->defer_vcs_ms,
        .poll_interval_ms = cfg->poll_interval_ms,
        .poll_dirs = (const char *const *)cfg->poll_dirs,
        .n_poll_dirs = cfg->n_poll_dirs,
        .on_batch = on_batch,
        .on_error = on_watch_error,
        .on_notice = on_watch_notice,
        .data = server,
    };
    r = watch_new(&daemon->loop, &watch_options, &server->watch, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }
    /* Watching starts before the first imports, so an edit made meanwhile is not lost. */
    char how[PATH_MAX + 160];
    for (size_t i = 0; i < cfg->n_watch_roots; i++) {
        size_t dirs_before = watch_dir_count(server->watch);
        uint64_t began = uv_hrtime();
        r = watch_add_root(server->watch, cfg->watch_roots[i], err, sizeof(err));
        if (r < 0)
            server_publish_watch_error(server, cfg->watch_roots[i], err);
        else
            log_info("watching %s (%zu directories in %.1f ms) with %s", cfg->watch_roots[i],
                     watch_dir_count(server->watch) - dirs_before,
                     (double)(uv_hrtime() - began) / 1e6,
                     watch_root_describe(server->watch, watch_root_count(server->watch) - 1,
                                         how, sizeof(how)));
    }
    if (cfg->n_plugin_dirs > 0)
        return start_plugins(server);
    if (cfg->n_watch_roots == 0)
        log_warn("no watch roots: nothing will be reloaded on change (use --watch DIR)");
    return 0;
}

/* The first jobs: [python] preload, then the roots' imports and the entry. */
static int start_jobs(struct server *server) {
    const struct config *cfg = server->config;
    if (cfg->n_preload > 0) {
        /* [python] preload: before the roots' imports and the app, so runs find them warm. */
        json_t *modules = json_array();
        for (size_t i = 0; i < cfg->n_preload; i++)
            json_array_append_new(modules, json_string(cfg->preload[i]));
        if (server_submit(server, PY_JOB_PRELOAD, json_pack("{s:o}", "modules", modules),
                          cfg->exec_timeout_ms, on_preload_done, server) < 0)
            log_warn("could not queue the preload");
    }
    json_t *input = json_pack(
        "{s:b, s:o, s:s, s:s, s:I, s:I}", "import", cfg->import == CONFIG_IMPORT_ALL, "entry",
        cfg->entry ? json_string(cfg->entry) : json_null(), "strategy",
        cfg->strategy == CONFIG_STRATEGY_MODULE ? "module" : "dependents", "mode",
        cfg->mode == CONFIG_MODE_MODULE ? "module" : "definitions", "prefork",
        (json_int_t)cfg->run_prefork, "prefork_max_age_ms", (json_int_t)cfg->run_prefork_max_age_ms);
    log_info("modules load %s; reloads run %s",
             cfg->import == CONFIG_IMPORT_ALL
                 ? "at start (import = all: every module of the roots is imported)"
                 : "on demand (by the app, exec, run and plugins; import = all imports every "
                   "module at start)",
             cfg->mode == CONFIG_MODE_MODULE ? "whole modules (mode = module)"
                                             : "what changed (mode = definitions)");
    /* The first imports run an app's top level: they get the exec deadline, not reload's. */
    int r = server_submit(server, PY_JOB_STARTUP, input, cfg->exec_timeout_ms, on_startup_done,
                          server);
    /* Plugins after the app's start, so that the module of [plugins] api is set up. */
    if (r == 0 && server->plugins) {
        int queued = plugins_load_all(server->plugins);
        if (queued < 0)
            log_error("cannot queue the plugins: %s", strerror(-queued));
    }
    return r;
}

static int start(struct daemon *daemon) {
    struct server *server = &daemon->server;
    const struct config *cfg = server->config;
    char err[1024];
    int r = events_new(HISTORY_EVENTS, cfg->history_bytes, &server->events);
    if (r < 0) {
        log_error("out of memory");
        return r;
    }
    events_set_sink(server->events, on_event, server);

    r = filter_new((const char *const *)cfg->include, cfg->n_include,
                   (const char *const *)cfg->exclude, cfg->n_exclude, &daemon->filter, err,
                   sizeof(err));
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
        .on_loaded_files = update_loaded_files,
        .on_entry_end = on_entry_end,
        .data = server,
    };
    r = py_host_start(&daemon->loop, &host_options, &server->host, err, sizeof(err));
    if (r == 0)
        r = commands_start(server, err, sizeof(err));
    if (r < 0) {
        log_error("%s", err);
        return r;
    }
    r = start_io(daemon);
    return r < 0 ? r : start_jobs(server);
}

static void close_walk(uv_handle_t *handle, void *arg) {
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

/* SIGINT, SIGTERM, SIGHUP and the systemd watchdog. */
static void start_signals(struct daemon *daemon) {
    uv_timer_init(&daemon->loop, &daemon->stop_deadline);
    uv_signal_init(&daemon->loop, &daemon->sigint);
    uv_signal_init(&daemon->loop, &daemon->sigterm);
    uv_signal_init(&daemon->loop, &daemon->sighup);
    daemon->sigint.data = daemon->sigterm.data = daemon->sighup.data = daemon;
    uv_signal_start(&daemon->sigint, on_signal, SIGINT);
    uv_signal_start(&daemon->sigterm, on_signal, SIGTERM);
    uv_signal_start(&daemon->sighup, on_sighup, SIGHUP);
    uv_timer_init(&daemon->loop, &daemon->watchdog);
    uint64_t watchdog_usec = 0;
    if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec >= 2000) {
        /* sd_watchdog_enabled(3): ping at half the interval. */
        uv_timer_start(&daemon->watchdog, on_watchdog, watchdog_usec / 2000, watchdog_usec / 2000);
        uv_unref((uv_handle_t *)&daemon->watchdog);
        log_info("systemd watchdog: pinging every %llu ms", (unsigned long long)(watchdog_usec / 2000));
    }
}

int daemon_run(struct config *cfg, int argc, char **argv) {
    struct daemon *daemon = calloc(1, sizeof(*daemon));
    if (!daemon) {
        log_error("out of memory");
        return 1;
    }
    struct server *server = &daemon->server;
    server->loop = &daemon->loop;
    server->config = cfg;
    server->started_ns = uv_hrtime();
    server->send = server_send;
    server->stop = server_stop;
    daemon->argc = argc;
    daemon->argv = argv;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&daemon->loop);
    start_signals(daemon);
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
    commands_free(server);
    plugins_free(server->plugins);
    events_free(server->events);
    filter_free(daemon->filter);
    json_decref(server->last_batch);
    json_decref(server->entry);
    free(daemon);
    log_info("stopped");
    return code;
}
