#ifndef PYHOT_COMMANDS_H
#define PYHOT_COMMANDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

struct daemon;

/*
 * The command table: one entry per command, each a small handler. A handler answers
 * through daemon_reply_ok/daemon_reply_error, at once or when its job finishes. Adding a
 * command touches this table and docs/protocol.md only.
 */
struct command_entry {
    const char *name;
    const char *summary;   /* one line, for docs and errors */
    void (*exec)(struct daemon *daemon, uint64_t client, const struct protocol_request *req);
    bool read_only;        /* changes nothing status shows (its cached answer stays valid) */
};

/* The entry named name, or NULL. */
const struct command_entry *commands_find(const char *name);

/* The table, terminated by an entry whose name is NULL. */
const struct command_entry *commands_table(void);

/* Decodes one request line and runs its command; a line that does not decode, or names
 * no command, gets an error response, and the connection stays open. */
void commands_dispatch(struct daemon *daemon, uint64_t client, const char *line, size_t len);

#endif
