#ifndef PYHOT_DAEMON_H
#define PYHOT_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "events.h"

/*
 * The daemon: owns every component and wires them on the loop thread (DESIGN "Two
 * threads, one direction"): watch batches become reload jobs, finished jobs become
 * events, control requests go to the command table (commands.c), which runs them against
 * the daemon's struct server (server.h).
 */

/* Runs the daemon with cfg (parsed from argc/argv by config_parse_args, then finished by
 * config_finish) until it is stopped by SIGINT, SIGTERM or the shutdown command. On SIGHUP
 * the configuration is read again from argv (argc entries, kept unchanged by the caller
 * until the call returns) and applied in place into *cfg; an invalid one is refused and
 * the running one kept. Returns the process exit code: 0 after a clean stop, 1 when it
 * could not start or failed at runtime (the reason is logged). */
int daemon_run(struct config *cfg, int argc, char **argv);

#endif
