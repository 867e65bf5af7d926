#include "commands.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "events.h"
#include "py_host.h"
#include "version.h"

#define ERR_LEN 512

/* history without "n": the last this many events. */
#define HISTORY_DEFAULT 100

static const struct command_entry table[];

static void reply_bad_argument(struct daemon *daemon, uint64_t client,
                               const struct protocol_request *req, int r, const char *err) {
    daemon_reply_error(daemon, client, req->id,
                       r == -ENOMEM ? PROTOCOL_E_INTERNAL : PROTOCOL_E_BAD_ARGUMENT,
                       r == -ENOMEM ? "out of memory" : err, NULL);
}

/* The optional count argument `name` (0..INT32_MAX) into *out; replies and returns < 0
 * when it is there but wrong. */
static int optional_count(struct daemon *daemon, uint64_t client, const struct protocol_request *req,
                          const char *name, int64_t *out) {
    char err[ERR_LEN];
    int r = protocol_arg_int(req, name, 0, INT32_MAX, out, err, sizeof(err));
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        reply_bad_argument(daemon, client, req, r, err);
    return r;
}

/* The filter arguments "events" and "modules" into *filter; replies and returns < 0 when
 * they are wrong. */
static int filter_args(struct daemon *daemon, uint64_t client, const struct protocol_request *req,
                       struct events_filter *filter) {
    char err[ERR_LEN];
    int r = events_filter_parse(json_object_get(req->root, "events"),
                                json_object_get(req->root, "modules"), filter, err, sizeof(err));
    if (r < 0)
        reply_bad_argument(daemon, client, req, r, err);
    return r;
}

static void cmd_hello(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    json_t *commands = json_array();
    for (const struct command_entry *e = table; e->name; e++)
        json_array_append_new(commands, json_string(e->name));
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:i, s:s, s:s, s:I, s:o}", "protocol", PROTOCOL_VERSION,
                              "version", PYHOT_VERSION, "python", py_host_python_version(),
                              "pid", (json_int_t)getpid(), "commands", commands));
}

static void cmd_ping(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:b, s:s, s:I}", "pong", 1, "version", PYHOT_VERSION,
                              "pid", (json_int_t)getpid()));
}

static void cmd_status(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    daemon_reply_status(daemon, client, req->id);
}

static void cmd_modules(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    char err[ERR_LEN];
    const char *pattern = NULL;
    int r = protocol_arg_string(req, "pattern", &pattern, err, sizeof(err));
    if (r < 0 && r != -ENOENT) {
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_BAD_ARGUMENT, err, NULL);
        return;
    }
    json_t *input = json_pack("{s:o}", "pattern", pattern ? json_string(pattern) : json_null());
    daemon_submit_job(daemon, PY_JOB_MODULES, input, client, req->id);
}

static void cmd_reload(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    char err[ERR_LEN];
    json_t *targets = NULL;
    int r = protocol_arg_string_list(req, "targets", &targets, err, sizeof(err));
    if (r == -ENOENT || (r == 0 && json_array_size(targets) == 0)) {
        json_decref(targets);
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_BAD_ARGUMENT,
                           "reload needs \"targets\": module names or file paths", NULL);
        return;
    }
    if (r < 0) {
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_BAD_ARGUMENT, err, NULL);
        return;
    }
    daemon_submit_job(daemon, PY_JOB_RELOAD, json_pack("{s:o}", "targets", targets), client, req->id);
}

static void cmd_subscribe(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    struct events_filter filter;
    int64_t history = 0;
    if (optional_count(daemon, client, req, "history", &history) < 0 ||
        filter_args(daemon, client, req, &filter) < 0)
        return;
    /* The replay follows the response: count it first (nothing is published in between). */
    struct events *events = daemon_events(daemon);
    bool truncated = false;
    size_t replay = 0;
    if (history > 0) {
        json_t *past = events_history(events, (size_t)history, &filter, daemon_history_max_bytes(),
                                      &truncated);
        replay = json_array_size(past);
        json_decref(past);
    }
    int r = daemon_subscribe(daemon, client, &filter);
    events_filter_clear(&filter);
    if (r == -ENOMEM)
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
    if (r < 0)
        return;
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:b, s:I, s:I, s:b}", "subscribed", 1, "seq",
                              (json_int_t)daemon_last_seq(daemon), "history", (json_int_t)replay,
                              "truncated", truncated));
    if (replay > 0)
        events_replay(events, client, replay, daemon_history_max_bytes(), NULL);
}

static void cmd_history(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    struct events_filter filter;
    int64_t n = HISTORY_DEFAULT;
    if (optional_count(daemon, client, req, "n", &n) < 0 ||
        filter_args(daemon, client, req, &filter) < 0)
        return;
    bool truncated = false;
    json_t *past = events_history(daemon_events(daemon), (size_t)n, &filter,
                                  daemon_history_max_bytes(), &truncated);
    events_filter_clear(&filter);
    if (!past) {
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return;
    }
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:o, s:I, s:b}", "events", past, "seq",
                              (json_int_t)daemon_last_seq(daemon), "truncated", truncated));
}

static void cmd_stats(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    json_t *stats = daemon_stats(daemon);
    if (!stats)
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
    else
        daemon_reply_ok(daemon, client, req->id, stats);
}

/* watch and unwatch: "path", an absolute directory. */
static void cmd_watch_or_unwatch(struct daemon *daemon, uint64_t client,
                                 const struct protocol_request *req, bool watch) {
    char err[ERR_LEN];
    const char *path = NULL;
    int r = protocol_arg_string(req, "path", &path, err, sizeof(err));
    if (r == 0 && path[0] == '\0') {
        r = -EINVAL;
        snprintf(err, sizeof(err), "argument \"path\" is empty");
    }
    if (r < 0) {
        reply_bad_argument(daemon, client, req, r, err);
        return;
    }
    if (watch)
        daemon_watch(daemon, client, req->id, path);
    else
        daemon_unwatch(daemon, client, req->id, path);
}

static void cmd_watch(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    cmd_watch_or_unwatch(daemon, client, req, true);
}

static void cmd_unwatch(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    cmd_watch_or_unwatch(daemon, client, req, false);
}

static void cmd_exec(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    char err[ERR_LEN];
    const char *code = NULL;
    int r = protocol_arg_string(req, "code", &code, err, sizeof(err));
    if (r < 0) {
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_BAD_ARGUMENT,
                           r == -ENOENT ? "exec needs \"code\": Python source to run" : err, NULL);
        return;
    }
    daemon_submit_job(daemon, PY_JOB_EXEC, json_pack("{s:s}", "code", code), client, req->id);
}

/* run: "path" or "module", "argv", "globals", "cwd", "timeout_ms", "isolate", "memory_mb",
 * "cpu_s", "sandbox" (implies isolate), "pids" (docs/protocol.md, docs/run.md). */
static void cmd_run(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    char err[ERR_LEN];
    const char *path = NULL, *module = NULL, *cwd = NULL;
    json_t *argv = NULL;
    int64_t timeout_ms = 0, memory_mb = 0, cpu_s = 0, pids = 0;
    int r = protocol_arg_string(req, "path", &path, err, sizeof(err));
    if (r == -ENOENT)
        r = protocol_arg_string(req, "module", &module, err, sizeof(err));
    else if (r == 0 && json_object_get(req->root, "module")) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "run takes \"path\" or \"module\", not both");
    }
    if (r == -ENOENT) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "run needs \"path\" (a script, directory or zip) or \"module\"");
    }
    if (r == 0 && ((path && !path[0]) || (module && !module[0]))) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "run: empty \"%s\"", path ? "path" : "module");
    }
    if (r == 0) {
        r = protocol_arg_string_list(req, "argv", &argv, err, sizeof(err));
        if (r == -ENOENT) {
            argv = json_array();
            r = 0;
        }
    }
    if (r == 0) {
        r = protocol_arg_string(req, "cwd", &cwd, err, sizeof(err));
        r = r == -ENOENT ? 0 : r;
    }
    if (r == 0) {
        r = protocol_arg_int(req, "timeout_ms", 0, INT32_MAX, &timeout_ms, err, sizeof(err));
        r = r == -ENOENT ? 0 : r;
    }
    if (r == 0) {
        r = protocol_arg_int(req, "memory_mb", 0, 1 << 24, &memory_mb, err, sizeof(err));
        r = r == -ENOENT ? 0 : r;
    }
    if (r == 0) {
        r = protocol_arg_int(req, "cpu_s", 0, INT32_MAX, &cpu_s, err, sizeof(err));
        r = r == -ENOENT ? 0 : r;
    }
    json_t *globals = json_object_get(req->root, "globals");
    if (r == 0 && globals && !json_is_object(globals) && !json_is_null(globals)) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "argument \"globals\" must be an object of names to values");
    }
    if (r == 0) {
        r = protocol_arg_int(req, "pids", 1, 65536, &pids, err, sizeof(err));
        r = r == -ENOENT ? 0 : r;
    }
    json_t *isolate = json_object_get(req->root, "isolate");
    json_t *sandbox = json_object_get(req->root, "sandbox");
    if (r == 0 && ((isolate && !json_is_boolean(isolate)) || (sandbox && !json_is_boolean(sandbox)))) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "argument \"%s\" must be true or false",
                 isolate && !json_is_boolean(isolate) ? "isolate" : "sandbox");
    }
    bool sandboxed = json_is_true(sandbox);
    bool isolated = json_is_true(isolate) || sandboxed; /* a sandbox is an isolated run */
    if (r == 0 && pids && !sandboxed) {
        r = -EINVAL;
        snprintf(err, sizeof(err), "\"pids\" needs \"sandbox\": true");
    }
    if (r == 0 && !isolated && (cwd || memory_mb || cpu_s)) {
        /* The working directory and rlimits are process-wide: only a child can have its own. */
        r = -EINVAL;
        snprintf(err, sizeof(err), "\"%s\" needs \"isolate\": true (the daemon's working directory "
                 "and limits are shared by every run and the app)", cwd ? "cwd" : memory_mb ? "memory_mb" : "cpu_s");
    }
    if (r < 0) {
        json_decref(argv);
        reply_bad_argument(daemon, client, req, r, err);
        return;
    }
    json_t *input = json_pack("{s:o, s:o, s:I, s:b, s:I, s:I}", "argv", argv, "globals",
                              json_is_object(globals) ? json_incref(globals) : json_object(), "timeout_ms",
                              (json_int_t)timeout_ms, "isolate", isolated, "memory_mb",
                              (json_int_t)memory_mb, "cpu_s", (json_int_t)cpu_s);
    if (path)
        json_object_set_new(input, "path", json_string(path));
    if (module)
        json_object_set_new(input, "module", json_string(module));
    if (cwd)
        json_object_set_new(input, "cwd", json_string(cwd));
    if (sandboxed)
        json_object_set_new(input, "sandbox", json_true());
    if (pids)
        json_object_set_new(input, "pids", json_integer(pids));
    daemon_run_script(daemon, input, client, req->id);
}

/* repl: one input of the console, "source" (docs/protocol.md). */
static void cmd_repl(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    char err[ERR_LEN];
    const char *source = NULL;
    int r = protocol_arg_string(req, "source", &source, err, sizeof(err));
    if (r < 0) {
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_BAD_ARGUMENT,
                           r == -ENOENT ? "repl needs \"source\": the lines typed so far" : err, NULL);
        return;
    }
    daemon_submit_job(daemon, PY_JOB_REPL, json_pack("{s:s}", "source", source), client, req->id);
}

static void cmd_shutdown(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    daemon_reply_ok(daemon, client, req->id, json_pack("{s:b}", "stopping", 1));
    daemon_stop(daemon, "shutdown requested over the control socket");
}

static void cmd_pause_resume(struct daemon *daemon, uint64_t client,
                             const struct protocol_request *req, bool pause) {
    size_t pending = 0;
    if (daemon_pause(daemon, pause, &pending) < 0) {
        daemon_reply_error(daemon, client, req->id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd is stopping",
                           NULL);
        return;
    }
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:b, s:I}", "paused", pause, "pending", (json_int_t)pending));
}

static void cmd_pause(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    cmd_pause_resume(daemon, client, req, true);
}

static void cmd_resume(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    cmd_pause_resume(daemon, client, req, false);
}

static const struct command_entry table[] = {
    {"hello", "protocol version, daemon and Python versions, pid, commands", cmd_hello, true},
    {"ping", "check that the daemon answers", cmd_ping, true},
    {"status", "uptime, roots, counters, last batch, the running job", cmd_status, true},
    {"modules", "loaded modules (optionally matching \"pattern\", a glob)", cmd_modules, false},
    {"reload", "reload \"targets\": module names or file paths", cmd_reload, false},
    {"watch", "watch \"path\", a directory, as a new root", cmd_watch, false},
    {"unwatch", "stop watching the root \"path\"", cmd_unwatch, false},
    {"subscribe", "follow events (\"events\", \"modules\" filters; \"history\": N past ones first)",
     cmd_subscribe, false},
    {"history", "the last \"n\" events (default 100), with the filters of subscribe", cmd_history, true},
    {"stats", "counters, reload duration and save-to-reloaded latency histograms", cmd_stats, true},
    {"exec", "run \"code\" in the interpreter's __main__ namespace", cmd_exec, false},
    {"run", "run a script (\"path\") or \"module\" as __main__; output streams, then its exit code",
     cmd_run, false},
    {"repl", "one console input (\"source\"): incomplete, or run with its output", cmd_repl, false},
    {"shutdown", "stop the daemon cleanly", cmd_shutdown, false},
    {"pause", "hold reloads: changes accumulate until resume", cmd_pause, false},
    {"resume", "end a pause: everything changed meanwhile reloads as one batch", cmd_resume, false},
    {NULL, NULL, NULL, false},
};

const struct command_entry *commands_table(void) {
    return table;
}

const struct command_entry *commands_find(const char *name) {
    for (const struct command_entry *e = table; e->name; e++)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

void commands_dispatch(struct daemon *daemon, uint64_t client, const char *line, size_t len) {
    struct protocol_request req;
    const char *code = NULL;
    json_t *id = NULL;
    char err[ERR_LEN];
    if (protocol_decode_request(line, len, &req, &code, &id, err, sizeof(err)) < 0) {
        daemon_reply_error(daemon, client, id, code, err, NULL);
        json_decref(id);
        return;
    }
    const struct command_entry *entry = commands_find(req.cmd);
    if (entry && !entry->read_only)
        daemon_status_changed(daemon);
    if (!entry) {
        char message[ERR_LEN];
        snprintf(message, sizeof(message), "unknown command '%.200s'", req.cmd);
        daemon_reply_error(daemon, client, req.id, PROTOCOL_E_UNKNOWN_COMMAND, message, NULL);
    } else {
        entry->exec(daemon, client, &req);
    }
    protocol_request_clear(&req);
}
