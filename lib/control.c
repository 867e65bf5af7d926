#include "control.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "protocol.h"

#define DEFAULT_MAX_CLIENTS 64
#define DEFAULT_MAX_OUTPUT (4u * 1024 * 1024)
#define READ_CHUNK (64 * 1024)

struct client {
    struct control *control;
    uv_pipe_t pipe;
    uint64_t id;
    uid_t uid;
    char *in;            /* bytes received, not yet a complete line */
    size_t in_len, in_cap;
    size_t out_queued;   /* bytes handed to uv_write, not yet written */
    bool subscribed;
    bool closing;
    bool close_when_flushed;
    struct client *prev, *next;
};

struct write_req {
    uv_write_t req;
    struct client *client;
    size_t len;
    char data[];
};

struct control {
    uv_loop_t *loop;
    uv_pipe_t listener;
    struct control_options options;
    char *path;
    struct client *clients;
    size_t n_clients;
    size_t n_subscribers;
    uint64_t next_client_id;
    int open_handles;    /* listener + clients, for control_close */
    bool closing;
    void (*close_cb)(void *data);
    void *close_data;
};

static void maybe_finish_close(struct control *control) {
    if (!control->closing || control->open_handles > 0)
        return;
    void (*cb)(void *) = control->close_cb;
    void *data = control->close_data;
    free(control->path);
    free(control);
    if (cb)
        cb(data);
}

static void on_client_closed(uv_handle_t *handle) {
    struct client *client = handle->data;
    struct control *control = client->control;
    free(client->in);
    free(client);
    control->open_handles--;
    maybe_finish_close(control);
}

static void client_close(struct client *client) {
    if (client->closing)
        return;
    struct control *control = client->control;
    client->closing = true;
    if (client->subscribed)
        control->n_subscribers--;
    client->subscribed = false;
    if (client->prev)
        client->prev->next = client->next;
    else
        control->clients = client->next;
    if (client->next)
        client->next->prev = client->prev;
    control->n_clients--;
    if (control->options.on_disconnect && !control->closing)
        control->options.on_disconnect(control, client->id, control->options.data);
    uv_close((uv_handle_t *)&client->pipe, on_client_closed);
}

static struct client *find_client(struct control *control, uint64_t id) {
    for (struct client *c = control->clients; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

static void on_written(uv_write_t *req, int status) {
    struct write_req *w = (struct write_req *)req;
    struct client *client = w->client;
    client->out_queued -= w->len;
    free(w);
    if (client->closing)
        return;
    if (status < 0 && status != UV_ECANCELED) {
        log_debug("control: client %llu: write failed: %s", (unsigned long long)client->id,
                  uv_strerror(status));
        client_close(client);
        return;
    }
    if (client->close_when_flushed && client->out_queued == 0)
        client_close(client);
}

static int client_write(struct client *client, const char *data, size_t len) {
    struct control *control = client->control;
    if (client->closing)
        return -ENOTCONN;
    if (client->out_queued + len > control->options.max_output) {
        log_warn("control: client %llu stopped reading (%zu bytes queued); disconnecting it",
                 (unsigned long long)client->id, client->out_queued);
        client_close(client);
        return -ENOBUFS;
    }
    struct write_req *w = malloc(sizeof(*w) + len);
    if (!w)
        return -ENOMEM;
    memcpy(w->data, data, len);
    w->client = client;
    w->len = len;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    int r = uv_write(&w->req, (uv_stream_t *)&client->pipe, &buf, 1, on_written);
    if (r < 0) {
        free(w);
        client_close(client);
        return -ENOTCONN;
    }
    client->out_queued += len;
    return 0;
}

static void reply_error_and_close(struct client *client, const char *code, const char *message) {
    size_t len;
    char *line = protocol_encode_error(NULL, code, message, NULL, &len);
    if (line) {
        client_write(client, line, len);
        free(line);
    }
    client->close_when_flushed = true;
    uv_read_stop((uv_stream_t *)&client->pipe);
    if (client->out_queued == 0)
        client_close(client);
}

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
            snprintf(message, sizeof(message), "request line longer than %zu bytes",
                     control->options.max_line);
            reply_error_and_close(client, PROTOCOL_E_TOO_LARGE, message);
            return;
        }
        if (!nl) {
            if (append_input(client, data, take) < 0)
                reply_error_and_close(client, PROTOCOL_E_INTERNAL, "out of memory");
            return;
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
        if (line_len > 0 && line[line_len - 1] == '\r')
            line_len--;
        if (line_len > 0)
            control->options.on_request(control, client->id, line, line_len, control->options.data);
        client->in_len = 0;
        data += take + 1;
        len -= take + 1;
    }
}

static bool peer_allowed(struct client *client) {
    struct ucred cred;
    socklen_t cred_len = sizeof(cred);
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&client->pipe, &fd) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) < 0) {
        log_warn("control: cannot read peer credentials: %s", strerror(errno));
        return false;
    }
    client->uid = cred.uid;
    return cred.uid == geteuid() || cred.uid == 0;
}

static void on_connection(uv_stream_t *listener, int status) {
    struct control *control = listener->data;
    if (status < 0) {
        log_warn("control: accept failed: %s", uv_strerror(status));
        return;
    }
    struct client *client = calloc(1, sizeof(*client));
    if (!client) {
        log_error("control: out of memory accepting a client");
        return;
    }
    client->control = control;
    uv_pipe_init(control->loop, &client->pipe, 0);
    client->pipe.data = client;
    control->open_handles++;
    client->id = ++control->next_client_id;
    client->next = control->clients;
    if (control->clients)
        control->clients->prev = client;
    control->clients = client;
    control->n_clients++;
    if (uv_accept(listener, (uv_stream_t *)&client->pipe) < 0) {
        client_close(client);
        return;
    }
    if (!peer_allowed(client)) {
        log_warn("control: refused a peer with uid %u (only uid %u and root may connect)",
                 (unsigned)client->uid, (unsigned)geteuid());
        reply_error_and_close(client, PROTOCOL_E_PERMISSION,
                              "this socket only accepts the daemon's user and root");
        return;
    }
    if (control->n_clients > control->options.max_clients) {
        reply_error_and_close(client, PROTOCOL_E_TOO_MANY, "too many connections; try again later");
        return;
    }
    uv_read_start((uv_stream_t *)&client->pipe, on_alloc, on_read);
}

/* The socket's directory: created 0700 when missing (with missing parents), otherwise it
 * must be a directory of ours, reached without a symlink, that no one else can enter. */
static int prepare_directory(const char *path, char *err, size_t errlen) {
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    char *dir = dirname(copy);
    struct stat st;
    if (lstat(dir, &st) < 0) {
        if (errno != ENOENT) {
            snprintf(err, errlen, "cannot use socket directory %s: %s", dir, strerror(errno));
            return -errno;
        }
        /* Create missing parents (e.g. $XDG_RUNTIME_DIR/pyhot) one by one, the last 0700. */
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
    if ((st.st_mode & 077) != 0) {
        snprintf(err, errlen, "socket directory %s has mode %04o; it must be 0700 "
                              "(chmod 700 %s, or choose another --socket)",
                 dir, (unsigned)(st.st_mode & 07777), dir);
        return -EPERM;
    }
    return 0;
}

/* A socket file left by a daemon that died is replaced; one a live daemon answers on is not. */
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
    if (r == 0) {
        snprintf(err, errlen, "another pyhotd is already listening on %s", path);
        return -EADDRINUSE;
    }
    if (e == ECONNREFUSED) {
        log_info("control: replacing stale socket %s", path);
        if (unlink(path) < 0 && errno != ENOENT) {
            snprintf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
            return -errno;
        }
    }
    return 0;
}

static void on_listener_closed(uv_handle_t *handle) {
    struct control *control = handle->data;
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
    int r = prepare_directory(options->path, err, errlen);
    if (r < 0)
        return r;
    r = clear_stale_socket(options->path, err, errlen);
    if (r < 0)
        return r;

    struct control *control = calloc(1, sizeof(*control));
    if (!control || !(control->path = strdup(options->path))) {
        free(control);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    control->loop = loop;
    control->options = *options;
    if (!control->options.max_clients)
        control->options.max_clients = DEFAULT_MAX_CLIENTS;
    if (!control->options.max_line)
        control->options.max_line = PROTOCOL_MAX_LINE;
    if (!control->options.max_output)
        control->options.max_output = DEFAULT_MAX_OUTPUT;

    uv_pipe_init(loop, &control->listener, 0);
    control->listener.data = control;
    control->open_handles = 1;
    /* umask around bind(2): the socket is created 0600, never briefly wider. */
    mode_t old_mask = umask(0177);
    r = uv_pipe_bind(&control->listener, options->path);
    umask(old_mask);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&control->listener, 128, on_connection);
    if (r < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", options->path, uv_strerror(r));
        /* The handle's memory is released in its close callback, when the loop runs. */
        control->closing = true;
        uv_close((uv_handle_t *)&control->listener, on_listener_closed);
        return r;
    }
    chmod(options->path, 0600);
    *out = control;
    return 0;
}

int control_send(struct control *control, uint64_t client_id, const char *line, size_t len) {
    struct client *client = find_client(control, client_id);
    if (!client || client->closing)
        return -ENOTCONN;
    return client_write(client, line, len);
}

int control_set_subscriber(struct control *control, uint64_t client_id, bool subscribed) {
    struct client *client = find_client(control, client_id);
    if (!client || client->closing)
        return -ENOTCONN;
    if (client->subscribed != subscribed)
        control->n_subscribers += subscribed ? 1 : (size_t)-1;
    client->subscribed = subscribed;
    return 0;
}

size_t control_publish(struct control *control, const char *line, size_t len) {
    size_t sent = 0;
    struct client *next;
    for (struct client *c = control->clients; c; c = next) {
        next = c->next; /* a slow consumer is closed (unlinked) by client_write */
        if (c->subscribed && client_write(c, line, len) == 0)
            sent++;
    }
    return sent;
}

void control_close_client(struct control *control, uint64_t client_id) {
    struct client *client = find_client(control, client_id);
    if (!client || client->closing)
        return;
    client->close_when_flushed = true;
    uv_read_stop((uv_stream_t *)&client->pipe);
    if (client->out_queued == 0)
        client_close(client);
}

size_t control_client_count(const struct control *control) {
    return control->n_clients;
}

size_t control_subscriber_count(const struct control *control) {
    return control->n_subscribers;
}

void control_close(struct control *control, void (*close_cb)(void *data), void *data) {
    control->close_cb = close_cb;
    control->close_data = data;
    control->closing = true;
    if (unlink(control->path) < 0 && errno != ENOENT)
        log_warn("control: cannot remove %s: %s", control->path, strerror(errno));
    while (control->clients)
        client_close(control->clients);
    uv_close((uv_handle_t *)&control->listener, on_listener_closed);
}
