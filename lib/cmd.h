#ifndef PYHOT_CMD_H
#define PYHOT_CMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

/*
 * What the cmd_*.c files share among themselves (not the daemon's business): the commands'
 * own state on the server, and what one subject asks of another.
 */

struct run_entry;

struct command_state {
    /* cmd_info.c: the status result as last encoded, and what it was encoded from */
    char *status_cache;
    size_t status_cache_len;
    uint64_t status_cache_key[8];
    /* cmd_runs.c: runs started and not ended */
    struct run_entry *runs;
    uint64_t next_run_id;
    bool channel_open;
};

/* cmd_info.c: frees the status cache. */
void cmd_info_free(struct command_state *state);

/* cmd_python.c: client left: its exec and repl statements are interrupted (the running
 * one gets KeyboardInterrupt) or dropped (queued ones). */
void cmd_python_client_gone(struct server *server, uint64_t client);

/* cmd_runs.c: runs started and not ended. */
size_t cmd_runs_active(struct server *server);

/* cmd_runs.c: opens the run channel (run_channel.h) on server->loop. */
int cmd_runs_start(struct server *server, char *err, size_t errlen);

/* cmd_runs.c: client left: its isolated runs are killed, the others' output dropped. */
void cmd_runs_client_gone(struct server *server, uint64_t client);

/* cmd_runs.c: the python thread stopped: waiting runs get shutting_down; channel closed. */
void cmd_runs_host_stopped(struct server *server);

#endif
