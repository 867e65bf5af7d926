#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "protocol.h"
#include "watch.h"

/* ---- replies ------------------------------------------------------------------------ */

static void send_line(struct server *server, uint64_t client, char *line, size_t len) {
    server->counters.responses++;
    if (line)
        server->send(server, client, line, len);
}

void server_reply_ok(struct server *server, uint64_t client, json_t *id, json_t *result) {
    size_t len = 0;
    char *line = protocol_encode_ok(id, result, &len);
    send_line(server, client, line, len);
}

void server_reply_ok_encoded(struct server *server, uint64_t client, json_t *id,
                             const char *result, size_t result_len) {
    size_t len = 0;
    char *line = protocol_encode_ok_encoded(id, result, result_len, &len);
    send_line(server, client, line, len);
}

void server_reply_error(struct server *server, uint64_t client, json_t *id, const char *code,
                        const char *message, json_t *details) {
    size_t len = 0;
    char *line = protocol_encode_error(id, code, message, details, &len);
    server->counters.failed_responses++;
    send_line(server, client, line, len);
}

void server_reply_job_error(struct server *server, uint64_t client, json_t *id, json_t *error) {
    json_t *details = json_deep_copy(error);
    const char *code = json_string_value(json_object_get(error, "code"));
    const char *message = json_string_value(json_object_get(error, "message"));
    json_object_del(details, "code");
    json_object_del(details, "message");
    server_reply_error(server, client, id, code ? code : PROTOCOL_E_INTERNAL,
                       message ? message : "the job failed", details);
}

void server_reply_errno(struct server *server, uint64_t client, json_t *id, int r) {
    if (r == -ESHUTDOWN)
        server_reply_error(server, client, id, PROTOCOL_E_SHUTTING_DOWN, "pyhotd is stopping",
                           NULL);
    else
        server_reply_error(server, client, id, PROTOCOL_E_INTERNAL,
                           r == -ENOMEM ? "out of memory" : strerror(-r), NULL);
}

/* ---- jobs --------------------------------------------------------------------------- */

int server_submit(struct server *server, enum py_job_kind kind, json_t *input,
                  unsigned timeout_ms, py_job_done_cb done, void *data) {
    struct py_job *job = py_job_new(kind, input, timeout_ms, done, data);
    if (!job)
        return -ENOMEM;
    int r = server->host ? py_host_submit(server->host, job) : -ESHUTDOWN;
    if (r < 0)
        py_job_free(job);
    return r;
}

struct server_call *server_call_new(struct server *server, uint64_t client, json_t *id,
                                    size_t size) {
    struct server_call *call = calloc(1, size);
    if (!call) {
        server_reply_error(server, client, id, PROTOCOL_E_INTERNAL, "out of memory", NULL);
        return NULL;
    }
    call->server = server;
    call->client = client;
    call->id = json_incref(id);
    call->started_ns = uv_hrtime();
    return call;
}

void server_call_free(struct server_call *call) {
    if (!call)
        return;
    if (call->cleanup)
        call->cleanup(call);
    json_decref(call->id);
    free(call);
}

int server_submit_call(struct server_call *call, enum py_job_kind kind, json_t *input,
                       unsigned timeout_ms, py_job_done_cb done) {
    int r = server_submit(call->server, kind, input, timeout_ms, done, call);
    if (r < 0) {
        server_reply_errno(call->server, call->client, call->id, r);
        server_call_free(call);
    }
    return r;
}

void server_reply_job_done(struct py_job *job, void *data) {
    struct server_call *call = data;
    if (job->ok)
        server_reply_ok(call->server, call->client, call->id, json_incref(job->output));
    else
        server_reply_job_error(call->server, call->client, call->id, job->output);
    server_call_free(call);
    py_job_free(job);
}

/* ---- results ------------------------------------------------------------------------ */

static void count_result(const char *result, uint64_t *ok, uint64_t *error,
                         uint64_t *rolled_back, uint64_t *skipped) {
    if (!result)
        return;
    if (strcmp(result, "ok") == 0)
        (*ok)++;
    else if (strcmp(result, "error") == 0)
        (*error)++;
    else if (strcmp(result, "rolled_back") == 0)
        (*rolled_back)++;
    else if (strcmp(result, "skipped") == 0)
        (*skipped)++;
}

static void ensure_array(json_t *object, const char *key) {
    if (!json_is_array(json_object_get(object, key)))
        json_object_set_new(object, key, json_array());
}

json_t *server_publish_reload(struct server *server, struct py_job *job, uint64_t batch_id,
                              uint64_t first_event_ns, bool from_files) {
    struct server_counters *c = &server->counters;
    json_t *reloads = json_object_get(job->output, "reloads");
    json_t *batch = json_object_get(job->output, "batch");
    size_t i;
    json_t *reload;
    json_array_foreach(reloads, i, reload) {
        json_object_set_new(reload, "batch", json_integer((json_int_t)batch_id));
        ensure_array(reload, "patched");
        ensure_array(reload, "replaced");
        const char *result = json_string_value(json_object_get(reload, "result"));
        count_result(result, &c->reloads.ok, &c->reloads.error, &c->reloads.rolled_back,
                     &c->reloads.skipped);
        if (result && strcmp(result, "ok") == 0)
            histogram_add(&c->reload_ms, json_number_value(json_object_get(reload, "duration_ms")));
        events_publish(server->events, "reload", json_incref(reload));
    }
    if (!json_is_object(batch))
        return NULL;
    json_object_set_new(batch, "batch", json_integer((json_int_t)batch_id));
    /* From the first file event to the end of the batch's last reload: the engine stamps
     * that moment with time.monotonic_ns(), the clock uv_hrtime() reads (CLOCK_MONOTONIC). */
    json_t *reloaded = json_object_get(batch, "reloaded_ns");
    uint64_t end_ns = json_is_integer(reloaded) ? (uint64_t)json_integer_value(reloaded)
                                                : job->finished_ns;
    json_object_del(batch, "reloaded_ns");
    double latency_ms = end_ns > first_event_ns ? (double)(end_ns - first_event_ns) / 1e6 : 0.0;
    json_object_set_new(batch, "latency_ms", json_real(latency_ms));
    c->batches++;
    const char *result = json_string_value(json_object_get(batch, "result"));
    count_result(result, &c->batch_results.ok, &c->batch_results.error,
                 &c->batch_results.rolled_back, &c->batch_results.skipped);
    if (result && strcmp(result, "ok") == 0 && from_files) /* save -> reloaded */
        histogram_add(&c->latency_ms, latency_ms);
    events_publish(server->events, "batch", json_incref(batch));
    json_decref(server->last_batch);
    server->last_batch = json_incref(batch);
    return batch;
}

void server_publish_import_errors(struct server *server, json_t *errors) {
    size_t i;
    json_t *error;
    json_array_foreach(errors, i, error) {
        log_warn("import of %s failed: %s: %s (%s:%lld)",
                 json_string_value(json_object_get(error, "module")),
                 json_string_value(json_object_get(error, "type")),
                 json_string_value(json_object_get(error, "message")),
                 json_string_value(json_object_get(error, "file")),
                 json_integer_value(json_object_get(error, "line")));
        events_publish(server->events, "import_error", json_incref(error));
    }
}

void server_publish_watch_error(struct server *server, const char *root, const char *message) {
    log_error("%s", message);
    bool lost = false;
    for (size_t i = 0; server->watch && i < watch_root_count(server->watch); i++) {
        const char *path = watch_root_path(server->watch, i);
        if (path && strcmp(path, root) == 0) /* NULL: a slot whose root was removed */
            lost = watch_root_state(server->watch, i, NULL) == WATCH_ROOT_LOST;
    }
    events_publish(server->events, "watch_error",
                   json_pack("{s:s, s:s, s:s, s:b}", "root", root, "message", message, "state",
                             "failed", "lost", lost));
}
