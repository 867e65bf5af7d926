/* Runs: the run command and its channel (docs/run.md, docs/protocol.md "run"). A run's job
 * only starts it; its output streams to the client as {"id", "stream", "data"} lines and
 * its end is the reply. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "commands.h"
#include "control.h"
#include "log.h"
#include "protocol.h"
#include "run_channel.h"
#include "sandbox.h"
#include "server.h"

#define ERR_LEN 512

/* run's "get": at most this many names. */
#define GET_NAMES_MAX 1000

/* A run until its end message: who gets its stream and its end. */
struct run_entry {
    uint64_t run_id;
    uint64_t client; /* 0 once the client disconnected: output is dropped */
    json_t *id;
    bool isolate;
    bool sandbox;
    unsigned timeout_ms;
    uid_t peer_uid;  /* who asked for it (SO_PEERCRED), for the run event */
    pid_t peer_pid;
    char *target;    /* "path" or "module", for the run event */
    json_t *get;       /* the names of "get", or NULL */
    struct run_entry *next;
};

/* The run job's done callback gets its server and run id. */
struct run_job {
    struct server *server;
    uint64_t run_id;
};

static struct run_entry *run_find(struct command_state *state, uint64_t run_id, bool unlink) {
    for (struct run_entry **p = &state->runs; *p; p = &(*p)->next) {
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
    if (!e)
        return;
    json_decref(e->id);
    free(e->target);
    json_decref(e->get);
    free(e);
}

/* Ends run_id with an error reply (when its client is still there); message NULL: the
 * job's error object error. */
static void run_fail(struct server *server, uint64_t run_id, const char *message, json_t *error) {
    struct run_entry *entry = run_find(server->commands, run_id, true);
    if (!entry)
        return;
    if (entry->client && message)
        server_reply_error(server, entry->client, entry->id, PROTOCOL_E_INTERNAL, message, NULL);
    else if (entry->client)
        server_reply_job_error(server, entry->client, entry->id, error);
    run_entry_free(entry);
}

size_t cmd_runs_active(struct server *server) {
    size_t n = 0;
    for (struct run_entry *e = server->commands ? server->commands->runs : NULL; e; e = e->next)
        n++;
    return n;
}

/* Sends one {"id", "stream", "data"} line of a run's output to its client. */
static void send_output(struct server *server, struct run_entry *entry, json_t *msg) {
    json_t *line_obj = json_pack("{s:O, s:O, s:O}", "id", entry->id, "stream",
                                 json_object_get(msg, "stream"), "data", json_object_get(msg, "data"));
    size_t len = 0;
    char *line = line_obj ? protocol_encode_line(line_obj, &len) : NULL;
    json_decref(line_obj);
    if (line)
        server->send(server, entry->client, line, len);
}

/* An ended run: the run event, logged and kept in the history, and the counters status
 * shows (docs/protocol.md). result (borrowed) gains "sandboxed". */
static void run_ended(struct server *server, const struct run_entry *entry, json_t *result) {
    json_object_set_new(result, "sandboxed", json_boolean(entry->sandbox));
    json_t *exit_code = json_object_get(result, "exit_code");
    json_t *sig = json_object_get(result, "signal");
    bool timed_out = json_is_true(json_object_get(result, "timed_out"));
    struct server_counters *n = &server->counters;
    n->runs_ended.total++;
    n->runs_ended.isolated += entry->isolate;
    n->runs_ended.sandboxed += entry->sandbox;
    n->runs_ended.timed_out += timed_out;
    n->runs_ended.failed += json_integer_value(exit_code) != 0 || json_integer_value(sig) != 0;
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
    events_publish(server->events, "run", event);
}

/* A run's end into the counters (metrics): how it ended, and its duration. */
static void count_run(struct server *server, json_t *result) {
    struct metrics_run_results *runs = &server->counters.runs;
    json_t *signal = json_object_get(result, "signal");
    if (json_is_true(json_object_get(result, "timed_out")))
        runs->timeout++;
    else if (json_is_integer(signal) && json_integer_value(signal) > 0)
        runs->signal++;
    else if (json_integer_value(json_object_get(result, "exit_code")) == 0 &&
             json_is_integer(json_object_get(result, "exit_code")))
        runs->ok++;
    else
        runs->error++;
    histogram_add(&server->counters.run_ms, json_number_value(json_object_get(result, "duration_ms")));
}

/* An isolated child that sent no values (a signal or its timeout ended it): every name of
 * "get" is missing, as the result of a run with "get" always says. */
static void complete_globals(struct run_entry *entry, json_t *result) {
    if (!entry->get || json_object_get(result, "globals"))
        return;
    json_t *missing = json_array();
    size_t i;
    json_t *name;
    json_array_foreach(entry->get, i, name)
        if (strcmp(json_string_value(name), "*") != 0)
            json_array_append(missing, name);
    json_object_set_new(result, "globals", json_object());
    json_object_set_new(result, "missing", missing);
}

static void on_run_message(uint64_t run_id, json_t *msg, void *data) {
    struct server *server = data;
    bool end = json_is_true(json_object_get(msg, "end"));
    struct run_entry *entry = run_find(server->commands, run_id, end);
    if (end && json_is_object(json_object_get(msg, "result"))) {
        if (entry)
            run_ended(server, entry, json_object_get(msg, "result"));
        count_run(server, json_object_get(msg, "result"));
        if (entry)
            complete_globals(entry, json_object_get(msg, "result"));
    }
    if (entry && entry->client && server->control) {
        if (end)
            server_reply_ok(server, entry->client, entry->id,
                            json_incref(json_object_get(msg, "result")));
        else
            send_output(server, entry, msg);
    }
    /* The run is over and its reply out: the ready children's refill may fork now without
     * holding up its output (or, after an in-process run, once the interpreter is quiet). */
    if (end && server->host)
        py_host_run_ended(server->host);
    if (end)
        run_entry_free(entry);
    json_decref(msg);
}

/* The run has started: an isolated one's child is handed to the channel. */
static void on_run_job_done(struct py_job *job, void *data) {
    struct run_job *rj = data;
    struct server *server = rj->server;
    uint64_t run_id = rj->run_id;
    free(rj);
    struct run_entry *entry = run_find(server->commands, run_id, false);
    if (!job->ok) {
        run_fail(server, run_id, NULL, job->output);
    } else if (json_is_true(json_object_get(job->output, "isolated"))) {
        char err[256];
        int pid = (int)json_integer_value(json_object_get(job->output, "pid"));
        int out_fd = (int)json_integer_value(json_object_get(job->output, "stdout_fd"));
        int err_fd = (int)json_integer_value(json_object_get(job->output, "stderr_fd"));
        json_t *globals_fd = json_object_get(job->output, "globals_fd");
        if (run_channel_watch_child(run_id, pid, out_fd, err_fd,
                                    json_is_integer(globals_fd) ? (int)json_integer_value(globals_fd) : -1,
                                    entry ? entry->timeout_ms : 0, err, sizeof(err)) < 0) {
            log_warn("%s", err);
            run_fail(server, run_id, err, NULL);
        } else if (entry && !entry->client) {
            run_channel_kill_child(run_id); /* its client left before the child started */
        }
    }
    py_job_free(job);
}

/* What a sandboxed run's child applies ([sandbox] of the configuration; docs/run.md): the
 * input's "sandbox" object, read by py_run.c; "uid" and "gid" (resolved by config_finish)
 * only when the daemon is root. pids is the request's, or NULL. */
static json_t *sandbox_settings(const struct config *cfg, json_t *pids) {
    json_t *read = json_array(), *write = json_array();
    for (size_t i = 0; i < cfg->n_sandbox_read; i++)
        json_array_append_new(read, json_string(cfg->sandbox_read[i]));
    for (size_t i = 0; i < cfg->n_sandbox_write; i++)
        json_array_append_new(write, json_string(cfg->sandbox_write[i]));
    json_t *settings = json_pack(
        "{s:s, s:o, s:o, s:I, s:I}",
        "network", cfg->sandbox_network == CONFIG_NETWORK_LOOPBACK ? "loopback" : "none",
        "read", read, "write", write,
        "pids", json_is_integer(pids) ? json_integer_value(pids) : (json_int_t)cfg->sandbox_pids,
        "tmp_size_mb", (json_int_t)cfg->sandbox_tmp_mb);
    if (settings && cfg->sandbox_change_user) {
        json_object_set_new(settings, "uid", json_integer((json_int_t)cfg->sandbox_uid));
        json_object_set_new(settings, "gid", json_integer((json_int_t)cfg->sandbox_gid));
    }
    return settings;
}

/* Starts the run of input (stolen; the validated request) for client. */
static void start_run(struct server *server, json_t *input, uint64_t client, json_t *id) {
    struct command_state *state = server->commands;
    struct run_entry *entry = calloc(1, sizeof(*entry));
    struct run_job *rj = calloc(1, sizeof(*rj));
    if (!entry || !rj) {
        free(entry);
        free(rj);
        json_decref(input);
        server_reply_error(server, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return;
    }
    entry->run_id = ++state->next_run_id;
    entry->client = client;
    entry->id = json_incref(id);
    entry->isolate = json_is_true(json_object_get(input, "isolate"));
    entry->sandbox = json_is_true(json_object_get(input, "sandbox"));
    entry->timeout_ms = (unsigned)json_integer_value(json_object_get(input, "timeout_ms"));
    entry->peer_uid = (uid_t)-1;
    if (server->control)
        control_peer(server->control, client, &entry->peer_uid, &entry->peer_pid);
    const char *target = json_string_value(json_object_get(input, "path"));
    entry->target = strdup(target ? target : json_string_value(json_object_get(input, "module")) ?: "");
    if (entry->sandbox)
        json_object_set_new(input, "sandbox", sandbox_settings(server->config, json_object_get(input, "pids")));
    entry->get = json_incref(json_object_get(input, "get"));
    if (entry->isolate) {
        json_object_set_new(input, "prefork", json_integer(server->config->run_prefork));
        json_object_set_new(input, "prefork_max_age_ms",
                            json_integer(server->config->run_prefork_max_age_ms));
    }
    json_object_set_new(input, "run_id", json_integer((json_int_t)entry->run_id));
    entry->next = state->runs;
    state->runs = entry;
    rj->server = server;
    rj->run_id = entry->run_id;
    /* The job itself only starts the run: it gets the exec deadline. */
    int r = server_submit(server, PY_JOB_RUN, input, server->config->exec_timeout_ms,
                          on_run_job_done, rj);
    if (r < 0) {
        free(rj);
        run_entry_free(run_find(state, entry->run_id, true));
        server_reply_errno(server, client, id, r);
    }
}

/* The rules between run's arguments that the table's spec cannot say; err is filled. */
static int check_run_args(const struct protocol_request *req, char *err, size_t len) {
    const char *path = command_string(req, "path"), *module = command_string(req, "module");
    const char *source = command_string(req, "source");
    if (!!path + !!module + !!source > 1) {
        snprintf(err, len, "run takes one of \"path\", \"module\" and \"source\"");
        return -EINVAL;
    }
    if (!path && !module && !source) {
        snprintf(err, len, "run needs \"path\" (a script, directory or zip), \"module\" or "
                 "\"source\" (the script's text)");
        return -EINVAL;
    }
    if ((path && !path[0]) || (module && !module[0])) {
        snprintf(err, len, "run: empty \"%s\"", path ? "path" : "module");
        return -EINVAL;
    }
    const char *process_wide = command_string(req, "cwd")      ? "cwd"
                               : command_int(req, "memory_mb", 0) ? "memory_mb"
                               : command_int(req, "cpu_s", 0)     ? "cpu_s"
                                                                  : NULL;
    bool sandboxed = json_is_true(json_object_get(req->root, "sandbox"));
    if (command_int(req, "pids", 0) && !sandboxed) {
        snprintf(err, len, "\"pids\" needs \"sandbox\": true");
        return -EINVAL;
    }
    /* A sandbox is an isolated run. */
    if (process_wide && !sandboxed && !json_is_true(json_object_get(req->root, "isolate"))) {
        /* The working directory and rlimits are process-wide: only a child can have its own. */
        snprintf(err, len, "\"%s\" needs \"isolate\": true (the daemon's working directory and "
                 "limits are shared by every run and the app)", process_wide);
        return -EINVAL;
    }
    json_t *get = json_object_get(req->root, "get");
    size_t i;
    json_t *name;
    if (json_array_size(get) > GET_NAMES_MAX) {
        snprintf(err, len, "argument \"get\" holds more than %d names", GET_NAMES_MAX);
        return -EINVAL;
    }
    json_array_foreach(get, i, name) {
        if (json_string_length(name) == 0) {
            snprintf(err, len, "argument \"get\": an empty name");
            return -EINVAL;
        }
    }
    return 0;
}

/* run: "path", "module" or "source", "argv", "globals", "get", "cwd", "timeout_ms", "isolate",
 * "memory_mb", "cpu_s", "sandbox" (implies isolate), "pids" (docs/protocol.md, docs/run.md). */
void cmd_run(struct server *server, uint64_t client, const struct protocol_request *req) {
    char err[ERR_LEN];
    int r = check_run_args(req, err, sizeof(err));
    json_t *argv = r == 0 ? command_string_list(req, "argv") : NULL;
    if (r == 0 && !argv)
        r = -ENOMEM;
    if (r < 0) {
        command_reply_bad_argument(server, client, req, r, err);
        return;
    }
    json_t *globals = json_object_get(req->root, "globals");
    json_t *input = json_pack(
        "{s:o, s:o, s:I, s:b, s:I, s:I}", "argv", argv, "globals",
        json_is_object(globals) ? json_incref(globals) : json_object(), "timeout_ms",
        (json_int_t)command_int(req, "timeout_ms", 0), "isolate",
        json_is_true(json_object_get(req->root, "isolate")) || json_is_true(json_object_get(req->root, "sandbox")),
        "memory_mb",
        (json_int_t)command_int(req, "memory_mb", 0), "cpu_s",
        (json_int_t)command_int(req, "cpu_s", 0));
    const char *names[] = {"path", "module", "source", "cwd"};
    for (size_t i = 0; input && i < sizeof(names) / sizeof(names[0]); i++)
        if (command_string(req, names[i]))
            json_object_set_new(input, names[i], json_string(command_string(req, names[i])));
    json_t *get = command_string_list(req, "get");
    if (input && json_array_size(get) > 0)
        json_object_set(input, "get", get);
    json_decref(get);
    if (!input) {
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return;
    }
    if (json_is_true(json_object_get(req->root, "sandbox"))) {
        json_object_set_new(input, "sandbox", json_true());
        if (command_int(req, "pids", 0))
            json_object_set_new(input, "pids", json_integer(command_int(req, "pids", 0)));
    }
    start_run(server, input, client, req->id);
}

int cmd_runs_start(struct server *server, char *err, size_t errlen) {
    int r = run_channel_open(server->loop, on_run_message, server, err, errlen);
    if (r == 0)
        server->commands->channel_open = true;
    return r;
}

void cmd_runs_client_gone(struct server *server, uint64_t client) {
    for (struct run_entry *e = server->commands->runs; e; e = e->next) {
        if (e->client != client)
            continue;
        e->client = 0;
        if (e->isolate)
            run_channel_kill_child(e->run_id);
    }
}

void cmd_runs_host_stopped(struct server *server) {
    struct command_state *state = server->commands;
    if (state->channel_open)
        run_channel_close();
    state->channel_open = false;
    while (state->runs) {
        struct run_entry *e = state->runs;
        state->runs = e->next;
        if (e->client && server->control)
            server_reply_error(server, e->client, e->id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd stopped",
                               NULL);
        run_entry_free(e);
    }
    sandbox_release(); /* the python thread that prepared it has ended */
}
