#ifndef PYHOT_CONTROL_H
#define PYHOT_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/*
 * The control socket server, loop thread only: a Unix stream socket speaking one request
 * per "\n"-terminated line. It owns the socket file, the connections, framing and limits;
 * what a line means is the request callback's business (commands.c).
 *
 * Clients are named by a 64-bit id that is never reused, so a reply to a request whose
 * client has gone in the meantime is simply dropped (control_send returns -ENOTCONN).
 *
 * Security (unix(7)): the socket's directory is created 0700 if missing and must otherwise
 * be a real directory (not a symlink), owned by the daemon's uid, with no group or other
 * access; the socket is bound under umask 0177 (so 0600); each peer's uid is read with
 * SO_PEERCRED and a peer that is neither the daemon's uid nor root is refused with an
 * error line and closed.
 */
struct control;

/* A complete request line (without "\n", not NUL-terminated), valid during the call. */
typedef void (*control_request_cb)(struct control *control, uint64_t client, const char *line,
                                   size_t len, void *data);

/* A client disconnected (its subscriptions are gone). May be NULL. */
typedef void (*control_disconnect_cb)(struct control *control, uint64_t client, void *data);

struct control_options {
    const char *path;            /* socket path; at most 107 bytes (sun_path) */
    size_t max_clients;          /* connections beyond it are refused; default 64 when 0 */
    size_t max_line;             /* bytes per request line; default PROTOCOL_MAX_LINE when 0 */
    size_t max_output;           /* bytes queued to one client before it is dropped as a
                                    slow consumer; default 4 MiB when 0 */
    control_request_cb on_request;
    control_disconnect_cb on_disconnect;
    void *data;
};

/* Creates the directory if needed, replaces a stale socket file (one no daemon answers
 * on), binds and listens. Returns 0 and sets *out, or a negative errno with a message in
 * err: -EADDRINUSE when a live daemon answers on path, -ENAMETOOLONG, -EPERM for a
 * directory that is not ours or not 0700. */
int control_listen(uv_loop_t *loop, const struct control_options *options,
                   struct control **out, char *err, size_t errlen);

/* Queues len bytes (a complete "\n"-terminated line) to client. Returns 0, -ENOTCONN
 * when the client is gone, or -ENOBUFS when it passed max_output (it is then closed). */
int control_send(struct control *control, uint64_t client, const char *line, size_t len);

/* Marks client as a subscriber (or not). Returns 0 or -ENOTCONN. */
int control_set_subscriber(struct control *control, uint64_t client, bool subscribed);

/* Sends line to every subscriber; returns how many it was queued to. Slow consumers
 * past max_output are closed. */
size_t control_publish(struct control *control, const char *line, size_t len);

/* Closes client once what is queued to it has been written. */
void control_close_client(struct control *control, uint64_t client);

size_t control_client_count(const struct control *control);
size_t control_subscriber_count(const struct control *control);

/* Closes the listener and every client and removes the socket file; close_cb(data) runs
 * once every handle is closed and the memory released. */
void control_close(struct control *control, void (*close_cb)(void *data), void *data);

#endif
