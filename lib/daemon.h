#ifndef PYHOT_DAEMON_H
#define PYHOT_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"

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

/* Runs kind (py_host.h) with input (stolen) on the python thread and replies to client
 * with the job's output when it finishes. Returns 0, or a negative errno after replying
 * with an error itself. */
int daemon_submit_job(struct daemon *daemon, int kind, json_t *input, uint64_t client,
                      json_t *id);

/* Marks client as an event subscriber. Returns 0 or -ENOTCONN. */
int daemon_subscribe(struct daemon *daemon, uint64_t client);

/* The seq of the last event published. */
uint64_t daemon_last_seq(struct daemon *daemon);

/* Holds (pause true) or releases (false) the watcher's batches: while paused, changes
 * accumulate; on release they go out as one batch. *pending (may be NULL) receives the
 * number of paths waiting at the call (on release: the paths about to go out). Returns 0,
 * or -ESHUTDOWN when the watcher is closed. */
int daemon_pause(struct daemon *daemon, bool pause, size_t *pending);

/* Starts a clean stop (reason is logged and evented). Safe to call twice. */
void daemon_stop(struct daemon *daemon, const char *reason);

#endif
