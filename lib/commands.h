#ifndef PYHOT_COMMANDS_H
#define PYHOT_COMMANDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

struct server;

/*
 * The command table (commands.c): one entry per command with its argument spec, checked
 * once in commands_dispatch before the command runs, as config_keys does for the config
 * file. Each command lives with its completion in the file of its subject (lib/cmd_*.c):
 * information, events, roots, python, runs. A command answers through server_reply_*
 * (server.h), at once or from its job's done callback.
 *
 * Adding a command touches its subject's file, the table and docs/protocol.md.
 */

enum command_arg_kind {
    COMMAND_ARG_STRING,
    COMMAND_ARG_STRING_LIST, /* a string or an array of strings */
    COMMAND_ARG_INT,         /* within [min, max] */
    COMMAND_ARG_BOOL,
    COMMAND_ARG_OBJECT,
    COMMAND_ARG_ANY,         /* checked by the command itself (the event filters) */
};

/* One argument: a member of the request object. Absent and JSON null are the same. */
struct command_arg {
    const char *name;
    enum command_arg_kind kind;
    bool required;
    bool nonempty;       /* a string or list that must not be empty */
    int64_t min, max;    /* COMMAND_ARG_INT */
    const char *missing; /* the error when required and absent (or empty); NULL: generic */
    const char *invalid; /* the error when of the wrong type; NULL: generic */
};

#define COMMAND_MAX_ARGS 16 /* the last stays empty: the list ends there */

typedef void command_exec_fn(struct server *server, uint64_t client,
                             const struct protocol_request *req);

struct command_entry {
    const char *name;
    const char *summary;   /* one line, for docs and errors */
    command_exec_fn *exec; /* runs with every argument of args valid */
    bool read_only;        /* changes nothing status shows (its cached answer stays valid) */
    struct command_arg args[COMMAND_MAX_ARGS]; /* ends at the first without a name */
};

/* The entry named name, or NULL. */
const struct command_entry *commands_find(const char *name);

/* The table, terminated by an entry whose name is NULL. */
const struct command_entry *commands_table(void);

/* Decodes one request line of len bytes, checks its arguments against its entry's spec and
 * runs its command; a line that does not decode, names no command or has a bad argument
 * gets an error response (bad_argument names the argument), and the connection stays
 * open. */
void commands_dispatch(struct server *server, uint64_t client, const char *line, size_t len);

/* ---- the commands' lifecycle, called by the daemon ---------------------------------- */

/* Sets up the commands' own state on server (the run channel on server->loop). Returns 0,
 * or a negative errno with err filled. */
int commands_start(struct server *server, char *err, size_t errlen);

/* client disconnected: it is no longer a subscriber; its isolated runs are killed, its
 * in-process runs go on with their output dropped (docs/run.md); its exec and repl
 * statements are interrupted or dropped (docs/protocol.md, exec). */
void commands_client_gone(struct server *server, uint64_t client);

/* The python thread has stopped: runs still waiting get shutting_down, the run channel is
 * closed. Idempotent. */
void commands_host_stopped(struct server *server);

/* Frees the commands' state; nothing to do when commands_start never ran. */
void commands_free(struct server *server);

/* ---- for the cmd_*.c files ----------------------------------------------------------- */

/* The validated argument name of req: a string (borrowed) or NULL when absent. */
const char *command_string(const struct protocol_request *req, const char *name);

/* The validated integer argument name, or fallback when absent. */
int64_t command_int(const struct protocol_request *req, const char *name, int64_t fallback);

/* The validated string-list argument name as a new array of strings (a lone string made a
 * list of one); an empty array when absent; NULL on ENOMEM. */
json_t *command_string_list(const struct protocol_request *req, const char *name);

/* Replies bad_argument with err, or internal_error when r is -ENOMEM. */
void command_reply_bad_argument(struct server *server, uint64_t client,
                                const struct protocol_request *req, int r, const char *err);

#endif
