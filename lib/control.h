#ifndef PYHOT_CONTROL_H
#define PYHOT_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

/*
 * The control socket server, loop thread only: a Unix stream socket speaking one request
 * per "\n"-terminated line. It owns the socket file, its lock file, the connections,
 * framing and limits; what a line means is the request callback's business (commands.c).
 *
 * Clients are named by a 64-bit id that is never reused, so a reply to a request whose
 * client has gone in the meantime is simply dropped (control_send returns -ENOTCONN).
 *
 * Security (unix(7)):
 * - The socket's directory is created 0700 if missing (0710 with group socket_group when
 *   one is set) and must otherwise be a real directory (not a symlink), owned by the
 *   daemon's uid, with no access for others and, without socket_group, none for its group.
 * - The socket is bound under umask 0177, so it is 0600 from the first moment; with
 *   socket_group it is then chgrp'd and chmod'ed 0660.
 * - Each peer's credentials are read with SO_PEERCRED (and SO_PEERGROUPS, socket(7)): a
 *   peer is let in when its uid is the daemon's or root's, or, with socket_group, when
 *   that group is its primary or one of its supplementary groups. Others get one
 *   permission_denied line and are closed.
 * - One daemon per socket path: PATH.lock is held with flock(2) for the daemon's life. A
 *   second daemon fails to take it and leaves the live socket alone; a socket file left by
 *   a daemon that was killed (no lock holder, nobody answering) is replaced.
 *
 * Limits (each enforced here, each counted in control_stats):
 * - a request line longer than max_line: request_too_large, then closed;
 * - more than max_clients connections: too_many_clients, then closed;
 * - a client that stops reading while more than max_output bytes wait for it (a single
 *   message written to an empty queue is never refused): one final "overflow" notice is
 *   queued past the cap, reading stops, and the connection is closed once the notice is
 *   written or CONTROL_CLOSE_GRACE_MS later, whichever is first;
 * - a partial request line that is not completed within request_timeout_ms of its first
 *   byte: request_timeout, then closed;
 * - accept(2) failing with EMFILE, ENFILE, ENOBUFS or ENOMEM: accepting pauses (the
 *   listener is not polled) until a connection closes or CONTROL_ACCEPT_PAUSE_MS pass;
 *   waiting peers stay in the listen backlog. Nothing spins.
 */
struct control;

/* After an error line or an overflow notice, how long a client that does not read it is
 * given before it is closed anyway, ms. */
#define CONTROL_CLOSE_GRACE_MS 1000

/* How long accepting pauses after EMFILE and the like, ms. */
#define CONTROL_ACCEPT_PAUSE_MS 200

/* A complete request line (without "\n" or "\r\n", not NUL-terminated), valid during the
 * call. Never called with an empty line. */
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
    unsigned request_timeout_ms; /* a partial line older than this is refused and the
                                    connection closed; default 10000 when 0 */
    bool has_group;              /* socket_group: also admit members of group */
    gid_t group;
    control_request_cb on_request;
    control_disconnect_cb on_disconnect;
    void *data;
};

/* Counters since control_listen, and the current state. */
struct control_stats {
    size_t clients;              /* connections open now (admitted or being refused) */
    size_t subscribers;
    uint64_t accepted;           /* connections admitted */
    uint64_t refused_permission; /* peers of another uid/group */
    uint64_t refused_too_many;   /* beyond max_clients */
    uint64_t dropped_overflow;   /* slow consumers past max_output */
    uint64_t dropped_timeout;    /* partial requests past request_timeout_ms */
    uint64_t dropped_too_large;  /* request lines longer than max_line */
    uint64_t accept_pauses;      /* times accepting paused (EMFILE, ...) */
    bool accept_paused;          /* paused right now */
};

/* Creates the directory if needed, takes PATH.lock, replaces a stale socket file, binds
 * and listens. Returns 0 and sets *out, or a negative errno with a message in err:
 * -EADDRINUSE when another daemon holds the lock or answers on path, -ENAMETOOLONG,
 * -EPERM for a directory that is not ours, is a symlink or is open to others, -EEXIST for
 * a path that exists and is not a socket, or the errno of a failed system call (socket(2),
 * bind(2), listen(2), chown(2) for socket_group). On failure nothing is left behind but
 * a directory it created. */
int control_listen(uv_loop_t *loop, const struct control_options *options,
                   struct control **out, char *err, size_t errlen);

/* Queues len bytes (a complete "\n"-terminated line) to client, copying them (or writing
 * them at once when nothing is queued). Returns 0, -ENOTCONN when the client is gone or
 * closing, -ENOBUFS when it passed max_output (it got the overflow notice and is being
 * closed), or -ENOMEM. */
int control_send(struct control *control, uint64_t client, const char *line, size_t len);

/* The same, taking ownership of line (a malloc'd buffer, freed on every path), so that
 * a line queued behind others is not copied. */
int control_send_owned(struct control *control, uint64_t client, char *line, size_t len);

/* Marks client as a subscriber (or not), for the counts. Returns 0 or -ENOTCONN. */
int control_set_subscriber(struct control *control, uint64_t client, bool subscribed);

/* The peer credentials of client as SO_PEERCRED gave them at accept (socket(7)): *uid and
 * *pid ((uid_t)-1 and 0 when they could not be read). Returns 0 or -ENOTCONN. */
int control_peer(const struct control *control, uint64_t client, uid_t *uid, pid_t *pid);

/* Closes client once what is queued to it has been written (at most
 * CONTROL_CLOSE_GRACE_MS later). */
void control_close_client(struct control *control, uint64_t client);

size_t control_client_count(const struct control *control);
size_t control_subscriber_count(const struct control *control);

/* Fills *out with the counters. */
void control_get_stats(const struct control *control, struct control_stats *out);

/* Closes the listener and every client, removes the socket file and the lock file;
 * close_cb(data) runs once every handle is closed and the memory released. */
void control_close(struct control *control, void (*close_cb)(void *data), void *data);

#endif
