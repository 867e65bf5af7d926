/* The interpreter: modules, reload, exec, repl, interrupt (docs/protocol.md). Each is one job on the
 * python thread; the reply follows the job. */
#include <string.h>

#include "cmd.h"
#include "commands.h"
#include "log.h"
#include "protocol.h"
#include "server.h"

/* Queues kind for the request with the exec deadline; the reply is the job's output. */
static void submit_for_request(struct server *server, uint64_t client, json_t *id,
                               enum py_job_kind kind, json_t *input) {
    struct server_call *call = server_call_new(server, client, id, sizeof(*call));
    if (!call) {
        json_decref(input);
        return;
    }
    server_submit_call(call, kind, input, server->config->exec_timeout_ms, server_reply_job_done);
}

void cmd_modules(struct server *server, uint64_t client, const struct protocol_request *req) {
    const char *pattern = command_string(req, "pattern");
    submit_for_request(server, client, req->id, PY_JOB_MODULES,
                       json_pack("{s:o}", "pattern", pattern ? json_string(pattern) : json_null()));
}

void cmd_exec(struct server *server, uint64_t client, const struct protocol_request *req) {
    submit_for_request(server, client, req->id, PY_JOB_EXEC,
                       json_pack("{s:s}", "code", command_string(req, "code")));
}

void cmd_repl(struct server *server, uint64_t client, const struct protocol_request *req) {
    submit_for_request(server, client, req->id, PY_JOB_REPL,
                       json_pack("{s:s}", "source", command_string(req, "source")));
}

/* Whether job is an exec or repl statement of the client *arg. */
static bool is_statement_of(const struct py_job *job, void *arg) {
    const struct server_call *call = job->data;
    return job->done == server_reply_job_done &&
           (job->kind == PY_JOB_EXEC || job->kind == PY_JOB_REPL) &&
           call->client == *(const uint64_t *)arg;
}

/* Interrupts client's statements (py_host_cancel): the running one gets KeyboardInterrupt
 * and replies when its code returns; queued ones reply interrupted at once. */
static size_t interrupt_statements(struct server *server, uint64_t client, bool gone) {
    if (!server->host)
        return 0;
    return py_host_cancel(server->host, is_statement_of, &client,
                          gone ? PY_INTERRUPT_GONE : PY_INTERRUPT_CLIENT,
                          gone ? "the client disconnected" : "interrupted before it started");
}

void cmd_interrupt(struct server *server, uint64_t client, const struct protocol_request *req) {
    if (!server->host) {
        server_reply_error(server, client, req->id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd is stopping",
                           NULL);
        return;
    }
    size_t n = interrupt_statements(server, client, false);
    server_reply_ok(server, client, req->id, json_pack("{s:I}", "interrupted", (json_int_t)n));
}

void cmd_python_client_gone(struct server *server, uint64_t client) {
    /* No one waits for its statements any more. */
    size_t n = interrupt_statements(server, client, true);
    if (n > 0)
        log_info("client %llu disconnected: %zu of its exec and repl statements interrupted or "
                 "dropped", (unsigned long long)client, n);
}

/* A reload request waiting for its job: its batch id. */
struct reload_call {
    struct server_call call;
    uint64_t batch_id;
};

/* The batch's events go out as for a file batch; the reply is the batch, or reload_failed
 * with the batch and its reloads when it failed or was rolled back. */
static void on_reload_done(struct py_job *job, void *data) {
    struct reload_call *rc = data;
    struct server_call *call = &rc->call;
    struct server *server = call->server;
    if (!job->ok) {
        server_reply_job_error(server, call->client, call->id, job->output);
        server_call_free(call);
        py_job_free(job);
        return;
    }
    json_t *batch = server_publish_reload(server, job, rc->batch_id, call->started_ns, false);
    const char *result = json_string_value(json_object_get(batch, "result"));
    if (result && (strcmp(result, "error") == 0 || strcmp(result, "rolled_back") == 0)) {
        json_t *error = json_object_get(batch, "error");
        json_t *details = json_is_object(error) ? json_deep_copy(error) : json_object();
        json_object_del(details, "message");
        json_object_set(details, "batch", batch);
        json_object_set(details, "reloads", json_object_get(job->output, "reloads"));
        const char *message = json_string_value(json_object_get(error, "message"));
        server_reply_error(server, call->client, call->id, PROTOCOL_E_RELOAD_FAILED,
                           message ? message : "the reload failed", details);
    } else {
        server_reply_ok(server, call->client, call->id, json_incref(job->output));
    }
    server_call_free(call);
    py_job_free(job);
}

void cmd_reload(struct server *server, uint64_t client, const struct protocol_request *req) {
    json_t *targets = command_string_list(req, "targets");
    if (!targets) {
        server_reply_error(server, client, req->id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return;
    }
    struct reload_call *rc =
        (struct reload_call *)server_call_new(server, client, req->id, sizeof(*rc));
    if (!rc) {
        json_decref(targets);
        return;
    }
    rc->batch_id = ++server->next_batch_id;
    server_submit_call(&rc->call, PY_JOB_RELOAD,
                       json_pack("{s:o, s:I}", "targets", targets, "batch", (json_int_t)rc->batch_id),
                       server->config->reload_timeout_ms, on_reload_done);
}
