#ifndef PYHOT_SERVER_H
#define PYHOT_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"
#include "events.h"
#include "histogram.h"
#include "metrics.h"
#include "py_host.h"

/*
 * The server the commands (commands.c, cmd_*.c) run against: the daemon's components, its
 * counters, and the few calls a command needs — reply, submit a python job with its own
 * done callback, publish results. daemon.c fills one and wires it (DESIGN "Two threads,
 * one direction"); a unit test fills one with a capturing send and no host.
 *
 * Loop thread only. The component pointers are borrowed and may be NULL: host once it has
 * stopped, control and watch once closed (a command then answers shutting_down).
 */
struct control;
struct watch;
struct command_state; /* the commands' own state (status cache, runs), commands.c */
struct plugins;

struct server_counters {
    uint64_t batches;
    struct {
        uint64_t ok, error, rolled_back, skipped;
    } reloads, batch_results;
    uint64_t responses, failed_responses;
    struct histogram reload_ms;  /* duration_ms of each module reloaded ok */
    struct histogram latency_ms; /* latency_ms of each file batch that applied (ok) */
    struct {
        uint64_t total, isolated, sandboxed, failed, timed_out;
    } runs_ended;                /* one per run event (cmd_runs.c) */
    struct metrics_run_results runs; /* runs ended, by how (cmd_runs.c) */
    struct histogram run_ms;     /* duration_ms of each run that ended */
};

struct server {
    uv_loop_t *loop;
    struct config *config; /* replaced in place by a configuration reload */
    struct events *events;
    struct py_host *host;
    struct control *control;
    struct watch *watch;
    uint64_t started_ns;       /* uv_hrtime() at start */
    uint64_t next_batch_id;
    uint64_t status_generation; /* bumped by every command but the read-only ones */
    struct server_counters counters;
    json_t *last_batch;        /* the last batch event (owned), or NULL */
    json_t *entry;             /* status "entry" (owned): {"name", "state", "error"?}, or
                                  NULL without --entry */
    bool ready;                /* the startup job finished */
    bool stopping;
    struct command_state *commands;
    struct plugins *plugins;   /* plugin directories (plugins.c), or NULL without any */

    /* Sends line (len bytes, "\n"-terminated, malloc'd; stolen) to client: the daemon
     * queues it on the control socket, a test server keeps it. */
    void (*send)(struct server *server, uint64_t client, char *line, size_t len);
    /* Starts a clean stop (the shutdown command); reason is logged and evented. */
    void (*stop)(struct server *server, const char *reason);
};

/* The most bytes of past events one history response or subscribe replay carries: well
 * under a client's output cap, so that asking for history never drops a client. */
#define SERVER_HISTORY_MAX_BYTES (1024 * 1024)

/* ---- replies ----------------------------------------------------------------------- */

/* Sends {"id": id, "ok": true, "result": result} to client; result is stolen, id is not. */
void server_reply_ok(struct server *server, uint64_t client, json_t *id, json_t *result);

/* The same with result already encoded (result_len bytes of compact JSON, borrowed). */
void server_reply_ok_encoded(struct server *server, uint64_t client, json_t *id,
                             const char *result, size_t result_len);

/* Sends an error response; details (an object of extra error members, or NULL) stolen. */
void server_reply_error(struct server *server, uint64_t client, json_t *id, const char *code,
                        const char *message, json_t *details);

/* Replies with a failed job's error object {"code", "message", ...details} (borrowed). */
void server_reply_job_error(struct server *server, uint64_t client, json_t *id, json_t *error);

/* Replies shutting_down for -ESHUTDOWN, else internal_error with strerror(-r). */
void server_reply_errno(struct server *server, uint64_t client, json_t *id, int r);

/* ---- jobs --------------------------------------------------------------------------- */

/* Queues kind with input (stolen) and timeout_ms on the python thread; done(job, data)
 * runs on the loop thread when it ends and owns the job (py_job_free). Returns 0, or
 * -ENOMEM / -ESHUTDOWN (no host) with done never called and data untouched. */
int server_submit(struct server *server, enum py_job_kind kind, json_t *input,
                  unsigned timeout_ms, py_job_done_cb done, void *data);

/* A request waiting for its job: who gets the reply. A command needing more embeds it as
 * the first member of its own struct and sets cleanup for what it adds. */
struct server_call {
    struct server *server;
    uint64_t client;
    json_t *id;                                 /* owned */
    uint64_t started_ns;                        /* the request's arrival, uv_hrtime() */
    void (*cleanup)(struct server_call *call);  /* frees what a larger struct adds, or NULL */
};

/* Allocates size bytes (>= sizeof(struct server_call)), zeroed, as a call for client's
 * request id (a new reference is taken). NULL on ENOMEM, after replying internal_error. */
struct server_call *server_call_new(struct server *server, uint64_t client, json_t *id,
                                    size_t size);

/* Runs call->cleanup and frees the call. NULL is allowed. */
void server_call_free(struct server_call *call);

/* server_submit for a request: on failure replies the error to the call's client and frees
 * the call. Returns 0 or the negative errno. */
int server_submit_call(struct server_call *call, enum py_job_kind kind, json_t *input,
                       unsigned timeout_ms, py_job_done_cb done);

/* The done callback of a request answered with the job's output as it is: replies ok with
 * the output or the job's error, then frees the job and the call (data). */
void server_reply_job_done(struct py_job *job, void *data);

/* ---- results ------------------------------------------------------------------------ */

/* Publishes the reload and batch events of a finished, ok reload job as batch batch_id
 * (counters and histograms follow; latency from first_event_ns, uv_hrtime(); a file batch,
 * from_files, feeds the save-to-reloaded histogram). Returns the batch event, borrowed from
 * the job's output, or NULL when the output has none. */
json_t *server_publish_reload(struct server *server, struct py_job *job, uint64_t batch_id,
                              uint64_t first_event_ns, bool from_files);

/* Logs and publishes an import_error event for each of errors (a job's "errors" array,
 * borrowed; NULL is allowed). */
void server_publish_import_errors(struct server *server, json_t *errors);

/* Logs message and publishes the watch_error event of root (a root that could not be
 * watched, or was lost). */
void server_publish_watch_error(struct server *server, const char *root, const char *message);

/* Something status shows changed without an event (a command ran): the next status is
 * encoded afresh. */
static inline void server_status_changed(struct server *server) {
    server->status_generation++;
}

#endif
