/* Watch roots: watch, unwatch, pause, resume (docs/protocol.md, docs/watching.md). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "log.h"
#include "protocol.h"
#include "server.h"
#include "watch.h"

/* A watch or unwatch waiting for its PY_JOB_CONFIGURE job. */
struct root_call {
    struct server_call call;
    char *root;
    bool watch; /* false: unwatch */
};

static void root_call_cleanup(struct server_call *call) {
    free(((struct root_call *)call)->root);
}

/* The root is on (or off) the engine's list: the reply. */
static void on_root_job_done(struct py_job *job, void *data) {
    struct root_call *rc = data;
    struct server_call *call = &rc->call;
    struct server *server = call->server;
    size_t dirs = server->watch ? watch_dir_count(server->watch) : 0;
    if (!job->ok) {
        server_reply_job_error(server, call->client, call->id, job->output);
    } else if (!rc->watch) {
        server_reply_ok(server, call->client, call->id,
                        json_pack("{s:s, s:I}", "path", rc->root, "watched_dirs", (json_int_t)dirs));
    } else {
        json_t *errors = json_object_get(job->output, "errors");
        server_publish_import_errors(server, errors);
        json_t *imported = json_object_get(job->output, "imported");
        server_reply_ok(server, call->client, call->id,
                        json_pack("{s:s, s:I, s:O, s:O}", "path", rc->root, "watched_dirs",
                                  (json_int_t)dirs, "imported", imported ? imported : json_array(),
                                  "errors", errors ? errors : json_array()));
    }
    server_call_free(call);
    py_job_free(job);
}

/* Queues the interpreter's side of a watch or unwatch of root; the reply follows the job. */
static void submit_root_job(struct server *server, uint64_t client, json_t *id, bool watch,
                            const char *root) {
    struct root_call *rc =
        (struct root_call *)server_call_new(server, client, id, sizeof(struct root_call));
    if (!rc)
        return;
    rc->call.cleanup = root_call_cleanup;
    rc->watch = watch;
    rc->root = strdup(root);
    if (!rc->root) {
        server_reply_error(server, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        server_call_free(&rc->call);
        return;
    }
    json_t *input = watch ? json_pack("{s:[s], s:[], s:b}", "add_roots", root, "remove_roots",
                                      "import", server->config->import == CONFIG_IMPORT_ALL)
                          : json_pack("{s:[], s:[s], s:b}", "add_roots", "remove_roots", root,
                                      "import", 0);
    server_submit_call(&rc->call, PY_JOB_CONFIGURE, input, server->config->exec_timeout_ms,
                       on_root_job_done);
}

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
    return strncmp(path, root, n) == 0 &&
           (path[n] == '\0' || path[n] == '/' || (n == 1 && root[0] == '/'));
}

/* What watch and unwatch check first; replies with the error itself. Returns 0 or the
 * negative errno of the reply. */
static int check_root_request(struct server *server, uint64_t client, json_t *id,
                              const char *path) {
    if (server->stopping || !server->watch) {
        server_reply_error(server, client, id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd is stopping", NULL);
        return -ESHUTDOWN;
    }
    if (path[0] != '/') {
        server_reply_error(server, client, id, PROTOCOL_E_BAD_ARGUMENT,
                           "argument \"path\" must be an absolute path", NULL);
        return -EINVAL;
    }
    return 0;
}

/* The root of the watch tree that real (a realpath) is, lies in or holds, with why in
 * message; NULL when it overlaps none. */
static const char *overlapping_root(struct watch *watch, const char *real, char *message,
                                    size_t len) {
    for (size_t i = 0; i < watch_root_count(watch); i++) {
        const char *root = watch_root_path(watch, i);
        if (!root)
            continue; /* a slot whose root was removed */
        if (strcmp(real, root) == 0) {
            snprintf(message, len, "%s is already a watch root", real);
            return root;
        }
        const char *why = path_under(real, root)   ? "is inside the watch root"
                          : path_under(root, real) ? "contains the watch root"
                                                   : NULL;
        if (why) {
            snprintf(message, len, "%s %s %s", real, why, root);
            return root;
        }
    }
    return NULL;
}

/* watch: "path", an absolute directory, becomes a new root; the reply follows the job that
 * puts it on sys.path and makes its modules reloadable (importing them with [watch]
 * import = all). Errors: bad_argument, not_found, already_watched, watch_failed,
 * shutting_down. */
void cmd_watch(struct server *server, uint64_t client, const struct protocol_request *req) {
    const char *path = command_string(req, "path");
    char message[PATH_MAX + 200];
    if (check_root_request(server, client, req->id, path) < 0)
        return;
    char *real = realpath(path, NULL);
    struct stat st;
    if (!real || stat(real, &st) < 0) {
        int e = errno;
        snprintf(message, sizeof(message), "cannot watch %s: %s", path, strerror(e));
        server_reply_error(server, client, req->id,
                           e == ENOENT || e == ENOTDIR ? PROTOCOL_E_NOT_FOUND
                                                       : PROTOCOL_E_WATCH_FAILED,
                           message, NULL);
        free(real);
        return;
    }
    const char *root = NULL;
    if (!S_ISDIR(st.st_mode)) {
        snprintf(message, sizeof(message), "cannot watch %s: not a directory", path);
        server_reply_error(server, client, req->id, PROTOCOL_E_BAD_ARGUMENT, message, NULL);
    } else if ((root = overlapping_root(server->watch, real, message, sizeof(message)))) {
        server_reply_error(server, client, req->id, PROTOCOL_E_ALREADY_WATCHED, message,
                           json_pack("{s:s}", "root", root));
    } else {
        char err[PATH_MAX + 300];
        if (watch_add_root(server->watch, real, err, sizeof(err)) < 0) {
            char ignored[64];
            watch_remove_root(server->watch, real, ignored, sizeof(ignored));
            server_reply_error(server, client, req->id, PROTOCOL_E_WATCH_FAILED, err, NULL);
        } else {
            char how[PATH_MAX + 160];
            log_info("watching %s (the watch command) with %s", real,
                     watch_root_describe(server->watch, watch_root_count(server->watch) - 1,
                                         how, sizeof(how)));
            submit_root_job(server, client, req->id, true, real);
        }
    }
    free(real);
}

/* unwatch: stops watching the root "path" (absolute); its modules stay loaded but are no
 * longer reloaded. Errors: bad_argument, not_found, shutting_down. */
void cmd_unwatch(struct server *server, uint64_t client, const struct protocol_request *req) {
    const char *path = command_string(req, "path");
    char message[PATH_MAX + 200], given[PATH_MAX];
    if (check_root_request(server, client, req->id, path) < 0)
        return;
    trim_slashes(path, given, sizeof(given));
    char *real = realpath(path, NULL);
    char *root = NULL;
    const char *inside = NULL;
    for (size_t i = 0; i < watch_root_count(server->watch) && !root; i++) {
        const char *r = watch_root_path(server->watch, i);
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
            snprintf(message, sizeof(message),
                     "%s is not a watch root (it is inside the watch root %s)", given, inside);
        else
            snprintf(message, sizeof(message), "%s is not a watch root", given);
        server_reply_error(server, client, req->id, PROTOCOL_E_NOT_FOUND, message, NULL);
        return;
    }
    char err[PATH_MAX + 100];
    watch_remove_root(server->watch, root, err, sizeof(err));
    log_info("no longer watching %s (the unwatch command)", root);
    submit_root_job(server, client, req->id, false, root);
    free(root);
}

/* Holds (pause) or releases (resume) the watcher's batches: while paused, changes
 * accumulate; on release they go out as one batch. The reply carries the paths waiting at
 * the call (on release: the paths about to go out). */
static void pause_or_resume(struct server *server, uint64_t client,
                            const struct protocol_request *req, bool pause) {
    if (!server->watch) {
        server_reply_error(server, client, req->id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd is stopping",
                           NULL);
        return;
    }
    /* Read first: a release sends the pending paths out at once. */
    struct watch_stats stats;
    watch_get_stats(server->watch, &stats);
    if (pause)
        watch_hold(server->watch, WATCH_HOLD_PAUSE);
    else
        watch_release(server->watch, WATCH_HOLD_PAUSE);
    server_reply_ok(server, client, req->id,
                    json_pack("{s:b, s:I}", "paused", pause, "pending", (json_int_t)stats.pending));
}

void cmd_pause(struct server *server, uint64_t client, const struct protocol_request *req) {
    pause_or_resume(server, client, req, true);
}

void cmd_resume(struct server *server, uint64_t client, const struct protocol_request *req) {
    pause_or_resume(server, client, req, false);
}
