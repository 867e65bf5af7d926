/* The configuration reload (SIGHUP; docs/configuration.md). */
#include "config_reload.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"
#include "watch.h"

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

/* The interpreter's side of a reload is applied. */
static void on_configure_done(struct py_job *job, void *data) {
    struct server *server = data;
    if (!job->ok)
        log_error("applying the new configuration in the interpreter failed: %s",
                  json_string_value(json_object_get(job->output, "message")));
    else
        server_publish_import_errors(server, json_object_get(job->output, "errors"));
    py_job_free(job);
}

void config_reload(struct server *server, int argc, char **argv_in) {
    notify_reloading();
    struct config fresh;
    char err[2048];
    char **argv = calloc((size_t)argc + 1, sizeof(*argv));
    int r = argv ? 0 : -ENOMEM;
    if (argv) {
        /* getopt permutes the array it is given: parse a copy. */
        memcpy(argv, argv_in, (size_t)argc * sizeof(*argv));
        config_init(&fresh);
        r = config_parse_args(&fresh, argc, argv, err, sizeof(err));
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
        events_publish(server->events, "config_error", json_pack("{s:s}", "message", err));
        sd_notify(0, "READY=1");
        return;
    }

    struct config *old = server->config;
    json_t *changed = json_array();
    json_t *restart = json_array();
    if (fresh.settle_ms != old->settle_ms) {
        if (server->watch)
            watch_set_settle(server->watch, fresh.settle_ms);
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
    if (fresh.strategy != old->strategy)
        json_array_append_new(changed, json_string("strategy"));
    if (fresh.import != old->import)
        json_array_append_new(changed, json_string("import"));
    if (fresh.mode != old->mode)
        json_array_append_new(changed, json_string("mode"));
    if (fresh.run_prefork != old->run_prefork)
        json_array_append_new(changed, json_string("prefork"));
    if (fresh.run_prefork_max_age_ms != old->run_prefork_max_age_ms)
        json_array_append_new(changed, json_string("prefork_max_age_ms"));

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
        if (server->watch && watch_remove_root(server->watch, json_string_value(root), err, sizeof(err)) < 0)
            log_warn("%s", err);
        else
            log_info("no longer watching %s", json_string_value(root));
    }
    json_array_foreach(added, i, root) {
        if (server->watch && watch_add_root(server->watch, json_string_value(root), err, sizeof(err)) < 0)
            server_publish_watch_error(server, json_string_value(root), err);
        else
            log_info("watching %s", json_string_value(root));
    }
    if (json_array_size(added) || json_array_size(removed))
        json_array_append_new(changed, json_string("watch_roots"));

    if (!strings_equal(fresh.socket_path, old->socket_path))
        json_array_append_new(restart, json_string("socket"));
    if (fresh.history_bytes != old->history_bytes)
        json_array_append_new(restart, json_string("history_bytes"));
    if (!strings_equal(fresh.entry, old->entry))
        json_array_append_new(restart, json_string("entry"));
    if (!strings_equal(fresh.venv, old->venv))
        json_array_append_new(restart, json_string("venv"));
    if (!lists_equal(fresh.python_paths, fresh.n_python_paths, old->python_paths, old->n_python_paths))
        json_array_append_new(restart, json_string("python_paths"));
    if (!lists_equal(fresh.plugin_dirs, fresh.n_plugin_dirs, old->plugin_dirs, old->n_plugin_dirs) ||
        !strings_equal(fresh.plugin_pattern, old->plugin_pattern) ||
        !strings_equal(fresh.plugin_api, old->plugin_api))
        json_array_append_new(restart, json_string("plugins"));
    if (!lists_equal(fresh.include, fresh.n_include, old->include, old->n_include) ||
        !lists_equal(fresh.exclude, fresh.n_exclude, old->exclude, old->n_exclude))
        json_array_append_new(restart, json_string("include/exclude"));
    if (fresh.backend != old->backend || fresh.poll_interval_ms != old->poll_interval_ms ||
        !lists_equal(fresh.poll_dirs, fresh.n_poll_dirs, old->poll_dirs, old->n_poll_dirs))
        json_array_append_new(restart, json_string("backend/poll/poll_interval_ms"));
    json_array_foreach(restart, i, root)
        log_warn("configuration reload: %s changed; it takes effect at the next restart",
                 json_string_value(root));

    /* The interpreter's side: roots, strategy, mode, the ready children's size and age. Runs
     * in order after any queued job. */
    json_t *input = json_pack(
        "{s:O, s:O, s:b, s:s, s:s, s:I, s:I}", "add_roots", added, "remove_roots", removed, "import",
        fresh.import == CONFIG_IMPORT_ALL, "strategy",
        fresh.strategy == CONFIG_STRATEGY_MODULE ? "module" : "dependents", "mode",
        fresh.mode == CONFIG_MODE_MODULE ? "module" : "definitions", "prefork",
        (json_int_t)fresh.run_prefork, "prefork_max_age_ms", (json_int_t)fresh.run_prefork_max_age_ms);
    if (server_submit(server, PY_JOB_CONFIGURE, input, fresh.exec_timeout_ms, on_configure_done,
                      server) < 0)
        log_warn("could not apply the new roots to the interpreter");
    json_decref(added);
    json_decref(removed);

    config_free(old);
    *old = fresh;
    log_info("configuration reloaded from %s", old->config_path ? old->config_path : "the command line");
    events_publish(server->events, "config_reloaded",
                   json_pack("{s:o, s:o}", "changed", changed, "restart_needed", restart));
    sd_notify(0, "READY=1");
}

