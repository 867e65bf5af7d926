#ifndef PYHOT_DAEMON_H
#define PYHOT_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"
#include "events.h"

/*
 * The daemon: owns every component and wires them on the loop thread (DESIGN "Two
 * threads, one direction"): watch batches become reload jobs, finished jobs become
 * events and replies, control requests go to the command table (commands.c).
 */
struct daemon;

/* Runs the daemon with cfg (parsed from argc/argv by config_parse_args, then finished by
 * config_finish) until it is stopped by SIGINT, SIGTERM or the shutdown command. On SIGHUP
 * the configuration is read again from argv (argc entries, kept unchanged by the caller
 * until the call returns) and applied in place into *cfg; an invalid one is refused and
 * the running one kept. Returns the process exit code: 0 after a clean stop, 1 when it
 * could not start or failed at runtime (the reason is logged). */
int daemon_run(struct config *cfg, int argc, char **argv);

/* ---- for commands.c ---------------------------------------------------------------- */

/* Sends {"id": id, "ok": true, "result": result} to client; result is stolen. */
void daemon_reply_ok(struct daemon *daemon, uint64_t client, json_t *id, json_t *result);

/* Sends an error response; details (an object of extra error members, or NULL) stolen. */
void daemon_reply_error(struct daemon *daemon, uint64_t client, json_t *id, const char *code,
                        const char *message, json_t *details);

/* The status object of the status command (new reference). */
json_t *daemon_status(struct daemon *daemon);

/* Answers a status request with the status encoded (by jansson) afresh only when the
 * millisecond (uv_now), the last event, the running job, the queue, the module count, the
 * subscribers or a command (daemon_status_changed) changed since the last encoding: many
 * clients polling status share one encoding instead of paying one each. */
void daemon_reply_status(struct daemon *daemon, uint64_t client, json_t *id);

/* Something status shows changed without an event (a command ran): the next status is
 * encoded afresh. */
void daemon_status_changed(struct daemon *daemon);

/* Runs kind (py_host.h) with input (stolen) on the python thread and replies to client
 * with the job's output when it finishes. Returns 0, or a negative errno after replying
 * with an error itself. */
int daemon_submit_job(struct daemon *daemon, int kind, json_t *input, uint64_t client,
                      json_t *id);

/* The run command (docs/run.md): input (stolen) is the validated request {"path" |
 * "module", "argv", "globals", "cwd", "timeout_ms", "isolate", "memory_mb", "cpu_s"}.
 * Streams {"id", "stream", "data"} lines to client as the run writes and replies with the
 * run's result at its end. Returns 0, or a negative errno after replying with an error. */
int daemon_run_script(struct daemon *daemon, json_t *input, uint64_t client, json_t *id);

/* Runs started and not ended. */
size_t daemon_runs_active(struct daemon *daemon);

/* Makes client an event subscriber with filter (its lists are moved into the event bus
 * on success; see events_subscribe). Subscribing again replaces the filter. Returns 0,
 * -ENOTCONN (the client is gone or closing) or -ENOMEM. */
int daemon_subscribe(struct daemon *daemon, uint64_t client, struct events_filter *filter);

/* The event bus (history, replay), borrowed. */
struct events *daemon_events(struct daemon *daemon);

/* The most bytes of past events one history response or subscribe replay carries. */
size_t daemon_history_max_bytes(void);

/* The stats command's result (new reference): counters and the reload-duration and
 * save-to-reloaded latency histograms (docs/protocol.md, "stats"). */
json_t *daemon_stats(struct daemon *daemon);

/* The watch command: watches the directory at path (absolute) as a new root and queues
 * the job that puts it on sys.path and makes its modules reloadable (importing them when
 * [watch] import is all); client gets the reply when that job ends. The unwatch command:
 * stops watching the root at path (absolute; its modules stay loaded but are no longer
 * reloaded). Both reply with an error themselves when they cannot (bad_argument,
 * not_found, already_watched, watch_failed, shutting_down) and then return a negative
 * errno; 0 when the job is queued. */
int daemon_watch(struct daemon *daemon, uint64_t client, json_t *id, const char *path);
int daemon_unwatch(struct daemon *daemon, uint64_t client, json_t *id, const char *path);

/* The seq of the last event published. */
uint64_t daemon_last_seq(struct daemon *daemon);

/* Holds (pause true) or releases (false) the watcher's batches: while paused, changes
 * accumulate; on release they go out as one batch. *pending (may be NULL) receives the
 * number of paths waiting at the call (on release: the paths about to go out). Returns 0,
 * or -ESHUTDOWN when the watcher is closed. */
int daemon_pause(struct daemon *daemon, bool pause, size_t *pending);

/* Interrupts client's exec and repl statements: the running one gets KeyboardInterrupt
 * (gone: "the client disconnected"; else as Ctrl-C gives it) and replies when its code
 * returns; queued ones are answered at once with error "interrupted". *interrupted (may
 * be NULL) receives how many. Returns 0, or -ESHUTDOWN once the interpreter is stopped. */
int daemon_interrupt(struct daemon *daemon, uint64_t client, bool gone, size_t *interrupted);

/* Starts a clean stop (reason is logged and evented). Safe to call twice. */
void daemon_stop(struct daemon *daemon, const char *reason);

#endif
