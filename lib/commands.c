#include "commands.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "server.h"

#define ERR_LEN 512

/* The commands, each in the file of its subject. */
command_exec_fn cmd_hello, cmd_ping, cmd_status, cmd_stats, cmd_shutdown; /* cmd_info.c */
command_exec_fn cmd_subscribe, cmd_history;                             /* cmd_events.c */
command_exec_fn cmd_watch, cmd_unwatch, cmd_pause, cmd_resume;          /* cmd_roots.c */
command_exec_fn cmd_modules, cmd_reload, cmd_exec, cmd_repl, cmd_interrupt; /* cmd_python.c */
command_exec_fn cmd_run;                                                /* cmd_runs.c */
command_exec_fn cmd_plugins;                                            /* cmd_plugins.c */
command_exec_fn cmd_metrics;                                            /* cmd_metrics.c */

#define STRING(n) {.name = n, .kind = COMMAND_ARG_STRING}
#define COUNT(n) {.name = n, .kind = COMMAND_ARG_INT, .min = 0, .max = INT32_MAX}
#define REQUIRED_STRING(n, why) {.name = n, .kind = COMMAND_ARG_STRING, .required = true, .missing = why}
#define FILTERS {.name = "events", .kind = COMMAND_ARG_ANY}, {.name = "modules", .kind = COMMAND_ARG_ANY}
#define ROOT_PATH {.name = "path", .kind = COMMAND_ARG_STRING, .required = true, .nonempty = true}

static const struct command_entry table[] = {
    {"hello", "protocol version, daemon and Python versions, pid, commands", cmd_hello, true, {}},
    {"ping", "check that the daemon answers", cmd_ping, true, {}},
    {"status", "uptime, roots, counters, last batch, the running job", cmd_status, true, {}},
    {"modules", "loaded modules (optionally matching \"pattern\", a glob)", cmd_modules, false,
     {STRING("pattern")}},
    {"reload", "reload \"targets\": module names or file paths", cmd_reload, false,
     {{.name = "targets", .kind = COMMAND_ARG_STRING_LIST, .required = true, .nonempty = true,
       .missing = "reload needs \"targets\": module names or file paths"}}},
    {"watch", "watch \"path\", a directory, as a new root", cmd_watch, false, {ROOT_PATH}},
    {"unwatch", "stop watching the root \"path\"", cmd_unwatch, false, {ROOT_PATH}},
    {"subscribe", "follow events (\"events\", \"modules\" filters; \"history\": N past ones first)",
     cmd_subscribe, false, {COUNT("history"), FILTERS}},
    {"history", "the last \"n\" events (default 100), with the filters of subscribe", cmd_history,
     true, {COUNT("n"), FILTERS}},
    {"stats", "counters, reload duration and save-to-reloaded latency histograms", cmd_stats, true,
     {}},
    {"metrics", "counters, histograms and gauges in the Prometheus text format", cmd_metrics, true,
     {}},
    {"plugins", "the plugins of the plugin directories: state, exports, last error", cmd_plugins,
     true, {}},
    {"exec", "run \"code\" in the interpreter's __main__ namespace", cmd_exec, false,
     {REQUIRED_STRING("code", "exec needs \"code\": Python source to run")}},
    {"run", "run a script (\"path\", \"module\" or \"source\") as __main__; output streams, then "
     "its exit code", cmd_run, false,
     {STRING("path"), STRING("module"), STRING("source"),
      {.name = "argv", .kind = COMMAND_ARG_STRING_LIST},
      STRING("cwd"), COUNT("timeout_ms"),
      {.name = "memory_mb", .kind = COMMAND_ARG_INT, .min = 0, .max = 1 << 24},
      COUNT("cpu_s"),
      {.name = "globals", .kind = COMMAND_ARG_OBJECT,
       .invalid = "argument \"globals\" must be an object of names to values"},
      {.name = "get", .kind = COMMAND_ARG_STRING_LIST},
      {.name = "isolate", .kind = COMMAND_ARG_BOOL}, {.name = "sandbox", .kind = COMMAND_ARG_BOOL},
      {.name = "pids", .kind = COMMAND_ARG_INT, .min = 1, .max = 65536}}},
    {"repl", "one console input (\"source\"): incomplete, or run with its output", cmd_repl, false,
     {REQUIRED_STRING("source", "repl needs \"source\": the lines typed so far")}},
    {"interrupt", "interrupt this connection's exec and repl statements (KeyboardInterrupt)",
     cmd_interrupt, false, {}},
    {"shutdown", "stop the daemon cleanly", cmd_shutdown, false, {}},
    {"pause", "hold reloads: changes accumulate until resume", cmd_pause, false, {}},
    {"resume", "end a pause: everything changed meanwhile reloads as one batch", cmd_resume, false,
     {}},
    {NULL, NULL, NULL, false, {}},
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

/* Checks one argument against its spec: 0, or a negative errno with err filled. */
static int check_arg(const struct protocol_request *req, const struct command_arg *arg, char *err,
                     size_t len) {
    json_t *value = json_object_get(req->root, arg->name);
    bool absent = !value || json_is_null(value);
    if (absent && !arg->required)
        return 0;
    int64_t n;
    const char *s;
    json_t *list = NULL;
    int r = 0;
    switch (arg->kind) {
    case COMMAND_ARG_STRING:
        r = protocol_arg_string(req, arg->name, &s, err, len);
        if (r == 0 && arg->nonempty && !s[0])
            r = -ENODATA;
        break;
    case COMMAND_ARG_STRING_LIST:
        r = protocol_arg_string_list(req, arg->name, &list, err, len);
        if (r == 0 && arg->nonempty && json_array_size(list) == 0)
            r = -ENODATA;
        json_decref(list);
        break;
    case COMMAND_ARG_INT:
        r = protocol_arg_int(req, arg->name, arg->min, arg->max, &n, err, len);
        break;
    case COMMAND_ARG_BOOL:
    case COMMAND_ARG_OBJECT:
        if (absent)
            r = -ENOENT;
        else if (arg->kind == COMMAND_ARG_BOOL ? !json_is_boolean(value) : !json_is_object(value))
            r = -EINVAL;
        if (r == -EINVAL)
            snprintf(err, len, "argument \"%s\" must be %s", arg->name,
                     arg->kind == COMMAND_ARG_BOOL ? "true or false" : "an object");
        break;
    case COMMAND_ARG_ANY:
        break;
    }
    if (r == -EINVAL && arg->invalid)
        snprintf(err, len, "%s", arg->invalid);
    else if (r == -ENODATA && !arg->missing)
        snprintf(err, len, "argument \"%s\" is empty", arg->name);
    else if ((r == -ENOENT || r == -ENODATA) && arg->missing)
        snprintf(err, len, "%s", arg->missing);
    return r == -ENODATA ? -EINVAL : r;
}

void command_reply_bad_argument(struct server *server, uint64_t client,
                                const struct protocol_request *req, int r, const char *err) {
    server_reply_error(server, client, req->id,
                       r == -ENOMEM ? PROTOCOL_E_INTERNAL : PROTOCOL_E_BAD_ARGUMENT,
                       r == -ENOMEM ? "out of memory" : err, NULL);
}

void commands_dispatch(struct server *server, uint64_t client, const char *line, size_t len) {
    struct protocol_request req;
    const char *code = NULL;
    json_t *id = NULL;
    char err[ERR_LEN];
    if (protocol_decode_request(line, len, &req, &code, &id, err, sizeof(err)) < 0) {
        server_reply_error(server, client, id, code, err, NULL);
        json_decref(id);
        return;
    }
    const struct command_entry *entry = commands_find(req.cmd);
    if (!entry) {
        char message[ERR_LEN];
        snprintf(message, sizeof(message), "unknown command '%.200s'", req.cmd);
        server_reply_error(server, client, req.id, PROTOCOL_E_UNKNOWN_COMMAND, message, NULL);
        protocol_request_clear(&req);
        return;
    }
    if (!entry->read_only)
        server_status_changed(server);
    int r = 0;
    for (const struct command_arg *arg = entry->args; r == 0 && arg->name; arg++)
        r = check_arg(&req, arg, err, sizeof(err));
    if (r < 0)
        command_reply_bad_argument(server, client, &req, r, err);
    else
        entry->exec(server, client, &req);
    protocol_request_clear(&req);
}

const char *command_string(const struct protocol_request *req, const char *name) {
    return json_string_value(json_object_get(req->root, name));
}

int64_t command_int(const struct protocol_request *req, const char *name, int64_t fallback) {
    json_t *value = json_object_get(req->root, name);
    return json_is_integer(value) ? (int64_t)json_integer_value(value) : fallback;
}

json_t *command_string_list(const struct protocol_request *req, const char *name) {
    json_t *value = json_object_get(req->root, name);
    if (json_is_string(value))
        return json_pack("[O]", value);
    return json_is_array(value) ? json_copy(value) : json_array();
}

/* ---- lifecycle ---------------------------------------------------------------------- */

int commands_start(struct server *server, char *err, size_t errlen) {
    server->commands = calloc(1, sizeof(*server->commands));
    if (!server->commands) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return cmd_runs_start(server, err, errlen);
}

void commands_client_gone(struct server *server, uint64_t client) {
    events_unsubscribe(server->events, client);
    if (server->commands)
        cmd_runs_client_gone(server, client);
    cmd_python_client_gone(server, client);
}

void commands_host_stopped(struct server *server) {
    if (server->commands)
        cmd_runs_host_stopped(server);
}

void commands_free(struct server *server) {
    if (!server->commands)
        return;
    cmd_info_free(server->commands);
    free(server->commands);
    server->commands = NULL;
}
