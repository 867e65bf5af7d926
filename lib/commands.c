#include "commands.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "py_host.h"
#include "version.h"

#define ERR_LEN 512

static void cmd_ping(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:b, s:s, s:I}", "pong", 1, "version", PYHOT_VERSION,
                              "pid", (json_int_t)getpid()));
}

static void cmd_status(struct daemon *daemon, uint64_t client, const struct protocol_request *req) {
    daemon_reply_ok(daemon, client, req->id, daemon_status(daemon));
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
    if (daemon_subscribe(daemon, client) < 0)
        return;
    daemon_reply_ok(daemon, client, req->id,
                    json_pack("{s:b, s:I}", "subscribed", 1, "seq", (json_int_t)daemon_last_seq(daemon)));
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
    {"ping", "check that the daemon answers", cmd_ping},
    {"status", "uptime, roots, counters, last batch, the running job", cmd_status},
    {"modules", "loaded modules (optionally matching \"pattern\", a glob)", cmd_modules},
    {"reload", "reload \"targets\": module names or file paths", cmd_reload},
    {"subscribe", "follow events on this connection", cmd_subscribe},
    {"exec", "run \"code\" in the interpreter's __main__ namespace", cmd_exec},
    {"shutdown", "stop the daemon cleanly", cmd_shutdown},
    {"pause", "hold reloads: changes accumulate until resume", cmd_pause},
    {"resume", "end a pause: everything changed meanwhile reloads as one batch", cmd_resume},
    {NULL, NULL, NULL},
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
    if (!entry) {
        char message[ERR_LEN];
        snprintf(message, sizeof(message), "unknown command '%.200s'", req.cmd);
        daemon_reply_error(daemon, client, req.id, PROTOCOL_E_UNKNOWN_COMMAND, message, NULL);
    } else {
        entry->exec(daemon, client, &req);
    }
    protocol_request_clear(&req);
}
