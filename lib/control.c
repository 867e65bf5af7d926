/*
 * The control socket server (control.h): the listener (a socket of our own on a
 * uv_poll_t, so that accept(2) failures are ours to handle), one uv_pipe_t per client,
 * line framing, limits, peer credentials, the socket file and its lock.
 */
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "protocol.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59 /* Linux 4.13, asm-generic/socket.h */
#endif

#define DEFAULT_MAX_CLIENTS 64
#define DEFAULT_MAX_OUTPUT (4u * 1024 * 1024)
#define DEFAULT_REQUEST_TIMEOUT_MS 10000
#define LISTEN_BACKLOG 128
#define READ_CHUNK (64 * 1024)
#define ACCEPTS_PER_WAKE 64
#define MS 1000000ull

struct client {
    struct control *control;
    uv_pipe_t pipe;
    uint64_t id;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    char *in;                 /* bytes received, not yet a complete line */
    size_t in_len, in_cap;
    uint64_t partial_since;   /* uv_hrtime() of the first byte of the partial line, or 0 */
    uint64_t close_deadline;  /* closing: uv_hrtime() when it is closed anyway, or 0 */
    size_t out_queued;        /* bytes handed to uv_write, not yet written */
    bool subscribed;
    bool closing;             /* uv_close called */
    bool close_when_flushed;  /* nothing more is read or sent; closed once flushed */
    struct client *prev, *next;
};

struct write_req {
    uv_write_t req;
    struct client *client;
    size_t len;
    char *buf;                /* data, or the caller's buffer (owned) */
    char data[];
};

struct control {
    uv_loop_t *loop;
    int listen_fd;
    uv_poll_t listener;
    uv_timer_t deadline_timer;  /* the earliest client deadline */
    uint64_t timer_due;         /* when deadline_timer fires, or 0 when stopped */
    uv_timer_t accept_timer;    /* resumes accepting after a pause */
    bool accept_paused;
    struct control_options options;
    char *path;
    char *lock_path;
    int lock_fd;
    struct client *clients;
    uint64_t next_client_id;
    int open_handles;           /* listener, two timers, clients: for control_close */
    bool closing;
    struct control_stats stats;
    void (*close_cb)(void *data);
    void *close_data;
};

static void on_listener_readable(uv_poll_t *poll, int status, int events);

/* ---- lifetime ----------------------------------------------------------------------- */

static void maybe_finish_close(struct control *control) {
    if (!control->closing || control->open_handles > 0)
        return;
    void (*cb)(void *) = control->close_cb;
    void *data = control->close_data;
    free(control->path);
    free(control->lock_path);
    free(control);
    if (cb)
        cb(data);
}

static void resume_accept(struct control *control) {
    if (!control->accept_paused || control->closing)
        return;
    control->accept_paused = false;
    uv_timer_stop(&control->accept_timer);
    uv_poll_start(&control->listener, UV_READABLE, on_listener_readable);
}

static void on_client_closed(uv_handle_t *handle) {
    struct client *client = handle->data;
    struct control *control = client->control;
    free(client->in);
    free(client);
    control->open_handles--;
    /* A descriptor was freed: accepting may work again. */
    resume_accept(control);
    maybe_finish_close(control);
}

static void client_close(struct client *client) {
    if (client->closing)
        return;
    struct control *control = client->control;
    client->closing = true;
    if (client->subscribed)
        control->stats.subscribers--;
    client->subscribed = false;
    if (client->prev)
        client->prev->next = client->next;
    else
        control->clients = client->next;
    if (client->next)
        client->next->prev = client->prev;
    control->stats.clients--;
    if (control->options.on_disconnect && !control->closing)
        control->options.on_disconnect(control, client->id, control->options.data);
    /* Pending writes are cancelled: their callbacks run (UV_ECANCELED) before ours. */
    uv_close((uv_handle_t *)&client->pipe, on_client_closed);
}

static struct client *find_client(struct control *control, uint64_t id) {
    for (struct client *c = control->clients; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* ---- deadlines ---------------------------------------------------------------------- */

static void on_deadline(uv_timer_t *timer);

/* Makes sure the timer fires no later than at (uv_hrtime() units). */
static void arm_deadline(struct control *control, uint64_t at) {
    if (control->closing || (control->timer_due != 0 && control->timer_due <= at))
        return;
    uint64_t now = uv_hrtime();
    uint64_t wait_ms = at > now ? (at - now + MS - 1) / MS : 0;
    control->timer_due = at;
    uv_timer_start(&control->deadline_timer, on_deadline, wait_ms, 0);
}

/* No more reading or sending: the client is closed once what is queued is written, or
 * CONTROL_CLOSE_GRACE_MS from now if it does not read it. */
static void client_finish(struct client *client) {
    if (client->closing || client->close_when_flushed)
        return;
    client->close_when_flushed = true;
    client->partial_since = 0;
    uv_read_stop((uv_stream_t *)&client->pipe);
    if (client->out_queued == 0) {
        client_close(client);
        return;
    }
    client->close_deadline = uv_hrtime() + CONTROL_CLOSE_GRACE_MS * MS;
    arm_deadline(client->control, client->close_deadline);
}

/* ---- writing ------------------------------------------------------------------------ */

static void on_written(uv_write_t *req, int status) {
    struct write_req *w = (struct write_req *)req;
    struct client *client = w->client;
    client->out_queued -= w->len;
    if (w->buf != w->data)
        free(w->buf);
    free(w);
    if (client->closing)
        return;
    if (status < 0) {
        log_debug("control: client %llu: write failed: %s", (unsigned long long)client->id,
                  uv_strerror(status));
        client_close(client);
        return;
    }
    if (client->close_when_flushed && client->out_queued == 0)
        client_close(client);
}

/* Writes data (len bytes) to client past any cap: at once when nothing is queued and the
 * socket takes it, else queued. owned, when not NULL, is data's malloc'd buffer: it is
 * freed on every path (or queued as is, without a copy). */
static int client_write_raw(struct client *client, const char *data, size_t len, char *owned) {
    if (client->out_queued == 0) {
        uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&client->pipe, &buf, 1);
        if (n >= 0 && (size_t)n == len) {
            free(owned);
            return 0;
        }
        if (n < 0 && n != UV_EAGAIN) {
            free(owned);
            client_close(client);
            return -ENOTCONN;
        }
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
    }
    struct write_req *w;
    if (owned && data == owned) {
        w = malloc(sizeof(*w));
        if (w)
            w->buf = owned;
    } else {
        w = malloc(sizeof(*w) + len);
        if (w) {
            memcpy(w->data, data, len);
            w->buf = w->data;
        }
        free(owned);
    }
    if (!w) {
        if (owned && data == owned)
            free(owned);
        return -ENOMEM;
    }
    w->client = client;
    w->len = len;
    uv_buf_t buf = uv_buf_init(w->buf, (unsigned)len);
    int r = uv_write(&w->req, (uv_stream_t *)&client->pipe, &buf, 1, on_written);
    if (r < 0) {
        if (w->buf != w->data)
            free(w->buf);
        free(w);
        client_close(client);
        return -ENOTCONN;
    }
    client->out_queued += len;
    return 0;
}

/* The last line a slow consumer gets: its queue passed max_output. */
static void client_overflow(struct client *client) {
    struct control *control = client->control;
    control->stats.dropped_overflow++;
    log_warn("control: client %llu (uid %u) stopped reading with %zu bytes waiting (limit %zu); "
             "disconnecting it", (unsigned long long)client->id, (unsigned)client->uid,
             client->out_queued, control->options.max_output);
    char time_buf[40];
    char message[200];
    snprintf(message, sizeof(message),
             "this connection stopped reading while more than %zu bytes waited for it; it is "
             "closed, and nothing after this notice was sent", control->options.max_output);
    json_t *notice = json_pack("{s:s, s:s, s:I, s:I, s:s}", "event", "overflow", "time",
                               protocol_format_time(time_buf, sizeof(time_buf)),
                               "queued_bytes", (json_int_t)client->out_queued, "limit_bytes",
                               (json_int_t)control->options.max_output, "message", message);
    size_t len = 0;
    char *line = notice ? protocol_encode_line(notice, &len) : NULL;
    json_decref(notice);
    if (line)
        client_write_raw(client, line, len, line);
    if (!client->closing)
        client_finish(client);
}

static int client_write(struct client *client, const char *data, size_t len, char *owned) {
    struct control *control = client->control;
    if (client->closing || client->close_when_flushed) {
        free(owned);
        return -ENOTCONN;
    }
    /* A message written to an empty queue always goes: the cap is on the backlog. */
    if (client->out_queued > 0 && client->out_queued + len > control->options.max_output) {
        free(owned);
        client_overflow(client);
        return -ENOBUFS;
    }
    return client_write_raw(client, data, len, owned);
}

/* Sends an error line (id null) and closes the client after it. */
static void reply_error_and_close(struct client *client, const char *code, const char *message) {
    size_t len;
    char *line = protocol_encode_error(NULL, code, message, NULL, &len);
    if (line)
        client_write(client, line, len, line);
    client_finish(client);
}

/* ---- deadlines (the timer) ---------------------------------------------------------- */

static void on_deadline(uv_timer_t *timer) {
    struct control *control = timer->data;
    uint64_t now = uv_hrtime();
    uint64_t timeout = (uint64_t)control->options.request_timeout_ms * MS;
    uint64_t next_due = 0;
    struct client *next;
    control->timer_due = 0;
    for (struct client *c = control->clients; c; c = next) {
        next = c->next; /* c may be unlinked below; its memory stays until its close cb */
        if (c->close_deadline && c->close_deadline <= now) {
            client_close(c);
            continue;
        }
        if (c->partial_since && c->partial_since + timeout <= now) {
            char message[160];
            control->stats.dropped_timeout++;
            log_info("control: client %llu sent part of a request line and did not finish it "
                     "within %u ms; closing it", (unsigned long long)c->id,
                     control->options.request_timeout_ms);
            snprintf(message, sizeof(message), "the request line was not completed within %u ms",
                     control->options.request_timeout_ms);
            reply_error_and_close(c, PROTOCOL_E_REQUEST_TIMEOUT, message);
            if (c->closing)
                continue;
        }
        uint64_t due = c->close_deadline ? c->close_deadline
                       : c->partial_since ? c->partial_since + timeout : 0;
        if (due && (!next_due || due < next_due))
            next_due = due;
    }
    if (next_due)
        arm_deadline(control, next_due);
}

/* ---- reading ------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    static char chunk[READ_CHUNK]; /* loop thread only; consumed before the next read */
    (void)handle;
    (void)suggested;
    *buf = uv_buf_init(chunk, sizeof(chunk));
}

static int append_input(struct client *client, const char *data, size_t len) {
    if (client->in_len + len > client->in_cap) {
        size_t cap = client->in_cap ? client->in_cap : 4096;
        while (cap < client->in_len + len)
            cap *= 2;
        char *in = realloc(client->in, cap);
        if (!in)
            return -ENOMEM;
        client->in = in;
        client->in_cap = cap;
    }
    memcpy(client->in + client->in_len, data, len);
    client->in_len += len;
    return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct client *client = stream->data;
    struct control *control = client->control;
    if (nread < 0) {
        client_close(client);
        return;
    }
    const char *data = buf->base;
    size_t len = (size_t)nread;
    while (len > 0 && !client->closing && !client->close_when_flushed) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (client->in_len + take > control->options.max_line) {
            char message[128];
            control->stats.dropped_too_large++;
            snprintf(message, sizeof(message), "request line longer than %zu bytes",
                     control->options.max_line);
            reply_error_and_close(client, PROTOCOL_E_TOO_LARGE, message);
            return;
        }
        if (!nl) {
            if (append_input(client, data, take) < 0)
                reply_error_and_close(client, PROTOCOL_E_INTERNAL, "out of memory");
            break;
        }
        const char *line = data;
        size_t line_len = take;
        if (client->in_len > 0) {
            if (append_input(client, data, take) < 0) {
                reply_error_and_close(client, PROTOCOL_E_INTERNAL, "out of memory");
                return;
            }
            line = client->in;
            line_len = client->in_len;
        }
        client->in_len = 0;
        client->partial_since = 0;
        if (line_len > 0 && line[line_len - 1] == '\r')
            line_len--;
        if (line_len > 0)
            control->options.on_request(control, client->id, line, line_len, control->options.data);
        data += take + 1;
        len -= take + 1;
    }
    if (client->closing || client->close_when_flushed)
        return;
    if (client->in_len > 0 && client->partial_since == 0) {
        client->partial_since = uv_hrtime();
        arm_deadline(control, client->partial_since +
                                  (uint64_t)control->options.request_timeout_ms * MS);
    }
    /* A long line's buffer is not kept once the line is done. */
    if (client->in_len == 0 && client->in_cap > 64 * 1024) {
        free(client->in);
        client->in = NULL;
        client->in_cap = 0;
    }
}

/* ---- accepting ---------------------------------------------------------------------- */

/* Whether group is one of the peer's supplementary groups (SO_PEERGROUPS, socket(7)). */
static bool peer_in_group(int fd, gid_t group) {
    gid_t small[64];
    gid_t *groups = small;
    socklen_t len = sizeof(small);
    bool found = false;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
        if (errno != ERANGE)
            return false;
        groups = malloc(len);
        if (!groups || getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0) {
            free(groups);
            return false;
        }
    }
    for (size_t i = 0; i < len / sizeof(gid_t); i++)
        found |= groups[i] == group;
    if (groups != small)
        free(groups);
    return found;
}

static void on_accept_resume(uv_timer_t *timer) {
    resume_accept(timer->data);
}

/* accept(2) ran out of descriptors or memory: stop polling the listener for a while
 * (OpenSMTPD's control.c does the same) instead of waking up for the same error again. */
static void pause_accept(struct control *control, int error) {
    if (!control->accept_paused) {
        if (control->stats.accept_pauses == 0 || error != EMFILE)
            log_warn("control: cannot accept connections: %s; pausing accept for %d ms "
                     "(peers wait in the backlog)%s", strerror(error), CONTROL_ACCEPT_PAUSE_MS,
                     error == EMFILE ? ": raise the open files limit (LimitNOFILE=, ulimit -n)" : "");
        control->stats.accept_pauses++;
    }
    control->accept_paused = true;
    uv_poll_stop(&control->listener);
    uv_timer_start(&control->accept_timer, on_accept_resume, CONTROL_ACCEPT_PAUSE_MS, 0);
}

static void accept_client(struct control *control, int fd) {
    struct ucred cred = {.uid = (uid_t)-1, .gid = (gid_t)-1};
    socklen_t cred_len = sizeof(cred);
    bool have_cred = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0;
    if (!have_cred)
        log_warn("control: cannot read a peer's credentials: %s", strerror(errno));

    struct client *client = calloc(1, sizeof(*client));
    if (!client) {
        log_error("control: out of memory accepting a client");
        close(fd);
        return;
    }
    client->control = control;
    client->uid = cred.uid;
    client->gid = cred.gid;
    client->pid = cred.pid;
    uv_pipe_init(control->loop, &client->pipe, 0);
    client->pipe.data = client;
    control->open_handles++;
    client->id = ++control->next_client_id;
    client->next = control->clients;
    if (control->clients)
        control->clients->prev = client;
    control->clients = client;
    control->stats.clients++;
    int r = uv_pipe_open(&client->pipe, fd);
    if (r < 0) {
        log_warn("control: cannot use an accepted connection: %s", uv_strerror(r));
        close(fd);
        client_close(client);
        return;
    }

    const struct control_options *o = &control->options;
    bool allowed = have_cred &&
                   (cred.uid == geteuid() || cred.uid == 0 ||
                    (o->has_group && (cred.gid == o->group || peer_in_group(fd, o->group))));
    if (!allowed) {
        control->stats.refused_permission++;
        if (o->has_group)
            log_warn("control: refused a peer with uid %u, gid %u, pid %d (only uid %u, root "
                     "and members of group %u may connect)", (unsigned)cred.uid,
                     (unsigned)cred.gid, (int)cred.pid, (unsigned)geteuid(), (unsigned)o->group);
        else
            log_warn("control: refused a peer with uid %u, pid %d (only uid %u and root may "
                     "connect)", (unsigned)cred.uid, (int)cred.pid, (unsigned)geteuid());
        reply_error_and_close(client, PROTOCOL_E_PERMISSION,
                              o->has_group ? "this socket only accepts the daemon's user, root "
                                             "and members of its socket_group"
                                           : "this socket only accepts the daemon's user and root");
        return;
    }
    if (control->stats.clients > o->max_clients) {
        char message[128];
        control->stats.refused_too_many++;
        log_warn("control: refused a connection: %zu connections are open (max_clients)",
                 o->max_clients);
        snprintf(message, sizeof(message), "too many connections (max_clients is %zu); try again "
                 "later", o->max_clients);
        reply_error_and_close(client, PROTOCOL_E_TOO_MANY, message);
        return;
    }
    control->stats.accepted++;
    uv_read_start((uv_stream_t *)&client->pipe, on_alloc, on_read);
}

static void on_listener_readable(uv_poll_t *poll, int status, int events) {
    struct control *control = poll->data;
    (void)events;
    if (status < 0) {
        log_warn("control: polling the listener failed: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPTS_PER_WAKE && !control->closing; i++) {
        int fd = accept4(control->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EINTR || e == ECONNABORTED)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                pause_accept(control, e);
                return;
            }
            log_warn("control: accept failed: %s", strerror(e));
            return;
        }
        accept_client(control, fd);
    }
}

/* ---- setting up --------------------------------------------------------------------- */

/* The socket's directory: created when missing (with missing parents), 0700, or 0710 and
 * group `group` with socket_group; otherwise it must be a directory of ours, reached
 * without a symlink, that others cannot enter (nor the group, without socket_group). */
static int prepare_directory(const char *path, const struct control_options *o, char *err,
                             size_t errlen) {
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    char *dir = dirname(copy);
    struct stat st;
    if (lstat(dir, &st) < 0) {
        if (errno != ENOENT) {
            snprintf(err, errlen, "cannot use socket directory %s: %s", dir, strerror(errno));
            return -errno;
        }
        /* Create missing parents (e.g. $XDG_RUNTIME_DIR/pyhot) one by one, 0700. */
        char partial[PATH_MAX];
        size_t n = strlen(dir);
        for (size_t i = 1; i <= n; i++) {
            if (dir[i] != '/' && dir[i] != '\0')
                continue;
            memcpy(partial, dir, i);
            partial[i] = '\0';
            if (mkdir(partial, 0700) < 0 && errno != EEXIST) {
                snprintf(err, errlen, "cannot create socket directory %s: %s", partial, strerror(errno));
                return -errno;
            }
        }
        if (o->has_group && (chown(dir, (uid_t)-1, o->group) < 0 || chmod(dir, 0710) < 0)) {
            snprintf(err, errlen, "cannot give socket directory %s to group %u: %s", dir,
                     (unsigned)o->group, strerror(errno));
            return -errno;
        }
        if (lstat(dir, &st) < 0) {
            snprintf(err, errlen, "cannot use socket directory %s: %s", dir, strerror(errno));
            return -errno;
        }
    }
    if (S_ISLNK(st.st_mode)) {
        snprintf(err, errlen, "socket directory %s is a symlink; refusing to use it", dir);
        return -EPERM;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "socket directory %s is not a directory", dir);
        return -ENOTDIR;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen, "socket directory %s belongs to uid %u, not to this daemon's uid %u",
                 dir, (unsigned)st.st_uid, (unsigned)geteuid());
        return -EPERM;
    }
    unsigned mode = (unsigned)(st.st_mode & 07777);
    if (!o->has_group && (mode & 077) != 0) {
        snprintf(err, errlen, "socket directory %s has mode %04o; it must be 0700 "
                              "(chmod 700 %s, or choose another --socket)", dir, mode, dir);
        return -EPERM;
    }
    if (o->has_group && ((mode & 027) != 0 || ((mode & 070) != 0 && st.st_gid != o->group))) {
        snprintf(err, errlen, "socket directory %s has mode %04o and group %u; with socket_group "
                              "it must be 0700, or 0710/0750 with group %u (chmod 710 %s; "
                              "chgrp %u %s)", dir, mode, (unsigned)st.st_gid,
                 (unsigned)o->group, dir, (unsigned)o->group, dir);
        return -EPERM;
    }
    if (o->has_group && (mode & 010) == 0)
        log_warn("control: socket_group is set but %s has mode %04o: members of group %u cannot "
                 "reach the socket (chgrp %u %s; chmod 710 %s)", dir, mode, (unsigned)o->group,
                 (unsigned)o->group, dir, dir);
    return 0;
}

/* Takes PATH.lock (flock(2), held until control_close) so that one daemon at a time owns
 * path. The lock file may be unlinked by a daemon that stops while we wait for it: the
 * lock is only ours if the file we locked is still the one at lock_path. */
static int take_lock(const char *lock_path, const char *path, int *out, char *err, size_t errlen) {
    for (int attempt = 0; attempt < 10; attempt++) {
        int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open lock file %s: %s", lock_path, strerror(errno));
            return -errno;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK) {
                snprintf(err, errlen, "another pyhotd is already listening on %s (it holds %s)",
                         path, lock_path);
                return -EADDRINUSE;
            }
            snprintf(err, errlen, "cannot lock %s: %s", lock_path, strerror(e));
            return -e;
        }
        struct stat held, now;
        if (fstat(fd, &held) == 0 && lstat(lock_path, &now) == 0 && held.st_dev == now.st_dev &&
            held.st_ino == now.st_ino) {
            *out = fd;
            return 0;
        }
        close(fd); /* unlinked (or replaced) while we waited: try the new one */
    }
    snprintf(err, errlen, "cannot take %s: it keeps being replaced", lock_path);
    return -EAGAIN;
}

/* A socket file that no daemon answers on (left by one that was killed) is replaced; one
 * that a live listener answers on is not. */
static int clear_stale_socket(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; refusing to replace it", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    int r = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    int e = errno;
    close(fd);
    if (r == 0 || e == EAGAIN) {
        snprintf(err, errlen, "another pyhotd is already listening on %s", path);
        return -EADDRINUSE;
    }
    log_info("control: replacing stale socket %s", path);
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
        return -errno;
    }
    return 0;
}

/* socket(2), bind(2) under umask 0177, the group's mode, listen(2). Returns the fd or a
 * negative errno with a message in err; on failure no socket file is left. */
static int bind_socket(const char *path, const struct control_options *o, char *err,
                       size_t errlen) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    /* umask around bind(2): the socket is created 0600, never briefly wider. */
    mode_t old_mask = umask(0177);
    int r = bind(fd, (struct sockaddr *)&addr, sizeof(addr));
    int e = errno;
    umask(old_mask);
    if (r < 0) {
        snprintf(err, errlen, "cannot bind %s: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    if (o->has_group && (chown(path, (uid_t)-1, o->group) < 0 || chmod(path, 0660) < 0)) {
        e = errno;
        snprintf(err, errlen, "cannot give socket %s to group %u: %s", path, (unsigned)o->group,
                 strerror(e));
        unlink(path);
        close(fd);
        return -e;
    }
    if (listen(fd, LISTEN_BACKLOG) < 0) {
        e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(e));
        unlink(path);
        close(fd);
        return -e;
    }
    return fd;
}

static void on_handle_closed(uv_handle_t *handle) {
    struct control *control = handle->data;
    if (handle == (uv_handle_t *)&control->listener)
        close(control->listen_fd);
    control->open_handles--;
    maybe_finish_close(control);
}

int control_listen(uv_loop_t *loop, const struct control_options *options,
                   struct control **out, char *err, size_t errlen) {
    struct sockaddr_un addr;
    if (strlen(options->path) >= sizeof(addr.sun_path)) {
        snprintf(err, errlen, "socket path %s is longer than %zu bytes (unix(7) sun_path)",
                 options->path, sizeof(addr.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    int r = prepare_directory(options->path, options, err, errlen);
    if (r < 0)
        return r;

    struct control *control = calloc(1, sizeof(*control));
    if (!control || !(control->path = strdup(options->path)) ||
        asprintf(&control->lock_path, "%s.lock", options->path) < 0) {
        if (control)
            free(control->path);
        free(control);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    control->lock_fd = -1;
    r = take_lock(control->lock_path, control->path, &control->lock_fd, err, errlen);
    if (r == 0)
        r = clear_stale_socket(control->path, err, errlen);
    if (r == 0)
        r = control->listen_fd = bind_socket(control->path, options, err, errlen);
    if (r >= 0) {
        r = uv_poll_init(loop, &control->listener, control->listen_fd);
        if (r < 0) {
            snprintf(err, errlen, "cannot poll %s: %s", control->path, uv_strerror(r));
            unlink(control->path);
            close(control->listen_fd);
        }
    }
    if (r < 0) {
        if (control->lock_fd >= 0) { /* ours: nobody else owns this path */
            unlink(control->lock_path);
            close(control->lock_fd);
        }
        free(control->path);
        free(control->lock_path);
        free(control);
        return r;
    }

    control->loop = loop;
    control->options = *options;
    control->options.path = control->path;
    if (!control->options.max_clients)
        control->options.max_clients = DEFAULT_MAX_CLIENTS;
    if (!control->options.max_line)
        control->options.max_line = PROTOCOL_MAX_LINE;
    if (!control->options.max_output)
        control->options.max_output = DEFAULT_MAX_OUTPUT;
    if (!control->options.request_timeout_ms)
        control->options.request_timeout_ms = DEFAULT_REQUEST_TIMEOUT_MS;
    control->listener.data = control;
    uv_timer_init(loop, &control->deadline_timer);
    control->deadline_timer.data = control;
    uv_timer_init(loop, &control->accept_timer);
    control->accept_timer.data = control;
    control->open_handles = 3;
    uv_poll_start(&control->listener, UV_READABLE, on_listener_readable);
    *out = control;
    return 0;
}

/* ---- the rest of the API ------------------------------------------------------------ */

int control_send(struct control *control, uint64_t client_id, const char *line, size_t len) {
    struct client *client = find_client(control, client_id);
    if (!client)
        return -ENOTCONN;
    return client_write(client, line, len, NULL);
}

int control_send_owned(struct control *control, uint64_t client_id, char *line, size_t len) {
    struct client *client = find_client(control, client_id);
    if (!client) {
        free(line);
        return -ENOTCONN;
    }
    return client_write(client, line, len, line);
}

int control_set_subscriber(struct control *control, uint64_t client_id, bool subscribed) {
    struct client *client = find_client(control, client_id);
    if (!client || client->closing || client->close_when_flushed)
        return -ENOTCONN;
    if (client->subscribed != subscribed)
        control->stats.subscribers += subscribed ? 1 : (size_t)-1;
    client->subscribed = subscribed;
    return 0;
}

int control_peer(const struct control *control, uint64_t client_id, uid_t *uid, pid_t *pid) {
    struct client *client = find_client((struct control *)control, client_id);
    if (!client)
        return -ENOTCONN;
    *uid = client->uid;
    *pid = client->pid;
    return 0;
}

void control_close_client(struct control *control, uint64_t client_id) {
    struct client *client = find_client(control, client_id);
    if (client)
        client_finish(client);
}

size_t control_client_count(const struct control *control) {
    return control->stats.clients;
}

size_t control_subscriber_count(const struct control *control) {
    return control->stats.subscribers;
}

void control_get_stats(const struct control *control, struct control_stats *out) {
    *out = control->stats;
    out->accept_paused = control->accept_paused;
}

void control_close(struct control *control, void (*close_cb)(void *data), void *data) {
    control->close_cb = close_cb;
    control->close_data = data;
    control->closing = true;
    if (unlink(control->path) < 0 && errno != ENOENT)
        log_warn("control: cannot remove %s: %s", control->path, strerror(errno));
    /* Unlinked while held: a daemon waiting on the old file sees it replaced (take_lock). */
    unlink(control->lock_path);
    close(control->lock_fd);
    control->lock_fd = -1;
    while (control->clients)
        client_close(control->clients);
    uv_close((uv_handle_t *)&control->listener, on_handle_closed);
    uv_close((uv_handle_t *)&control->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&control->accept_timer, on_handle_closed);
}
