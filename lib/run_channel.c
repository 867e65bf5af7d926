/* The run channel (run_channel.h): run threads -> loop thread, and isolated children's
 * pipes, pidfd and kill timer. Loop-thread code: no Python here. */
#include "run_channel.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox.h"

#define PIPE_READ_SIZE (64 * 1024)
/* Most bytes of run --get values an isolated child may send back (py_run.py caps the
 * values at 8 MiB; this leaves room for their JSON around them). */
#define GLOBALS_MAX_BYTES (16 * 1024 * 1024)
#define GLOBALS_PIPE 2

/* ---- the channel: run threads -> loop thread ------------------------------------------ */

struct message {
    uint64_t run_id;
    json_t *msg;
    struct message *next;
};

struct child;

/* Static: run threads may post after the channel closed (they are dropped then), so the
 * struct outlives every handle. */
static struct {
    pthread_mutex_t mutex;     /* guards open, head, tail */
    bool open;
    struct message *head, *tail;
    uv_async_t async;          /* loop thread */
    uv_loop_t *loop;
    run_channel_message_cb cb;
    void *data;
    struct child *children;    /* loop thread only */
} channel = {.mutex = PTHREAD_MUTEX_INITIALIZER};

void run_channel_post(uint64_t run_id, json_t *msg) {
    struct message *m = msg ? malloc(sizeof(*m)) : NULL;
    if (!m) {
        json_decref(msg);
        return;
    }
    m->run_id = run_id;
    m->msg = msg;
    m->next = NULL;
    pthread_mutex_lock(&channel.mutex);
    if (!channel.open) {
        pthread_mutex_unlock(&channel.mutex);
        json_decref(msg);
        free(m);
        return;
    }
    if (channel.tail)
        channel.tail->next = m;
    else
        channel.head = m;
    channel.tail = m;
    uv_async_send(&channel.async);
    pthread_mutex_unlock(&channel.mutex);
}

static void on_channel_async(uv_async_t *async) {
    (void)async;
    pthread_mutex_lock(&channel.mutex);
    struct message *m = channel.head;
    channel.head = channel.tail = NULL;
    pthread_mutex_unlock(&channel.mutex);
    while (m) {
        struct message *next = m->next;
        channel.cb(m->run_id, m->msg, channel.data);
        free(m);
        m = next;
    }
}

int run_channel_open(uv_loop_t *loop, run_channel_message_cb cb, void *data, char *err,
                        size_t errlen) {
    pthread_mutex_lock(&channel.mutex);
    if (channel.open) {
        pthread_mutex_unlock(&channel.mutex);
        snprintf(err, errlen, "the run channel is already open");
        return -EBUSY;
    }
    channel.loop = loop;
    channel.cb = cb;
    channel.data = data;
    uv_async_init(loop, &channel.async, on_channel_async);
    channel.open = true;
    pthread_mutex_unlock(&channel.mutex);
    return 0;
}

/* ---- isolated children (loop thread) ---------------------------------------------------- */

struct child {
    uint64_t run_id;
    pid_t pid;
    int pidfd;
    uv_poll_t poll;            /* the pidfd: readable once the child exits */
    uv_pipe_t pipes[3];        /* stdout, stderr, and the run --get values (GLOBALS_PIPE) */
    int n_pipes;               /* 2, or 3 with the values' pipe */
    uv_timer_t timer;          /* wall timeout */
    int handles_open;
    bool eof[3];
    char *globals;             /* the values' JSON as read so far (malloc'd), or NULL */
    size_t globals_len;
    bool globals_too_big;      /* more than GLOBALS_MAX_BYTES came: dropped */
    bool exited;
    bool ended;                /* the end message went out */
    bool timed_out;
    int status;                /* waitpid's */
    struct rusage usage;       /* wait4's: the child's CPU time and peak RSS */
    uint64_t started_ns;
    char pending[2][4];        /* an incomplete UTF-8 sequence held for the next read */
    size_t n_pending[2];
    struct child *next;
};

static const char *const stream_names[2] = {"stdout", "stderr"};

static void child_unlink(struct child *c) {
    for (struct child **p = &channel.children; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            return;
        }
    }
}

static void on_child_handle_closed(uv_handle_t *handle) {
    struct child *c = handle->data;
    if (--c->handles_open == 0) {
        free(c->globals);
        free(c);
    }
}

static void child_close(struct child *c) {
    child_unlink(c);
    for (int i = 0; i < c->n_pipes; i++)
        if (!uv_is_closing((uv_handle_t *)&c->pipes[i]))
            uv_close((uv_handle_t *)&c->pipes[i], on_child_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->poll))
        uv_close((uv_handle_t *)&c->poll, on_child_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_child_handle_closed);
    if (c->pidfd >= 0) {
        /* uv_poll_t does not own its fd; closing it after uv_close is allowed (uv.h). */
        close(c->pidfd);
        c->pidfd = -1;
    }
}

/* Length of the longest prefix of s[0..len) that is valid UTF-8 and ends on a character
 * boundary; *bad is set when an invalid byte (not just a truncated tail) was met there. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t len, bool *bad) {
    size_t i = 0;
    *bad = false;
    while (i < len) {
        unsigned char b = s[i];
        size_t n = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3
                 : (b & 0xF8) == 0xF0 ? 4 : 0;
        if (n == 0 || (n == 2 && b < 0xC2) || (n == 4 && b > 0xF4)) {
            *bad = true;
            return i;
        }
        if (i + n > len)
            return i; /* truncated: wait for more */
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                *bad = true;
                return i;
            }
        }
        if ((n == 3 && b == 0xE0 && s[i + 1] < 0xA0) || (n == 3 && b == 0xED && s[i + 1] > 0x9F) ||
            (n == 4 && b == 0xF0 && s[i + 1] < 0x90) || (n == 4 && b == 0xF4 && s[i + 1] > 0x8F)) {
            *bad = true;
            return i;
        }
        i += n;
    }
    return i;
}

/* Posts bytes of stream (0 stdout, 1 stderr) as text: invalid bytes become U+FFFD, an
 * incomplete sequence at the end is held back for the next read (or flushed at EOF). */
static void child_emit(struct child *c, int stream, const char *data, size_t len, bool final) {
    size_t total = c->n_pending[stream] + len;
    unsigned char *buf = malloc(total ? total : 1);
    char *text = malloc(total * 3 + 1);
    if (!buf || !text) {
        free(buf);
        free(text);
        return;
    }
    memcpy(buf, c->pending[stream], c->n_pending[stream]);
    memcpy(buf + c->n_pending[stream], data, len);
    c->n_pending[stream] = 0;
    size_t in = 0, out = 0;
    while (in < total) {
        bool bad;
        size_t ok = utf8_valid_prefix(buf + in, total - in, &bad);
        memcpy(text + out, buf + in, ok);
        out += ok;
        in += ok;
        if (in == total)
            break;
        if (!bad && !final && total - in < 4) {
            memcpy(c->pending[stream], buf + in, total - in);
            c->n_pending[stream] = total - in;
            break;
        }
        memcpy(text + out, "\xEF\xBF\xBD", 3); /* U+FFFD for one bad byte */
        out += 3;
        in++;
    }
    if (out > 0)
        channel.cb(c->run_id, json_pack("{s:s, s:s%}", "stream", stream_names[stream], "data", text, out),
                   channel.data);
    free(buf);
    free(text);
}

/* The values the child sent for run --get ({"globals", "missing", "omitted"}) into result;
 * nothing when it sent none or something else. */
static void child_add_globals(struct child *c, json_t *result) {
    json_t *sent = c->globals && !c->globals_too_big ? json_loadb(c->globals, c->globals_len, 0, NULL)
                                                       : NULL;
    static const char *const keys[] = {"globals", "missing", "omitted"};
    for (size_t i = 0; json_is_object(sent) && i < sizeof(keys) / sizeof(keys[0]); i++)
        if (json_object_get(sent, keys[i]))
            json_object_set(result, keys[i], json_object_get(sent, keys[i]));
    json_decref(sent);
}

static void child_maybe_end(struct child *c) {
    if (c->ended || !c->exited)
        return;
    for (int i = 0; i < c->n_pipes; i++)
        if (!c->eof[i])
            return;
    c->ended = true;
    json_t *result = json_object();
    child_add_globals(c, result);
    if (WIFEXITED(c->status)) {
        json_object_set_new(result, "exit_code", json_integer(WEXITSTATUS(c->status)));
        json_object_set_new(result, "signal", json_null());
    } else {
        int sig = WIFSIGNALED(c->status) ? WTERMSIG(c->status) : 0;
        json_object_set_new(result, "exit_code", json_null());
        json_object_set_new(result, "signal", json_integer(sig));
        const char *name = sigabbrev_np(sig);
        char signame[32];
        snprintf(signame, sizeof(signame), "SIG%s", name ? name : "?");
        json_object_set_new(result, "signal_name", json_string(signame));
    }
    json_object_set_new(result, "timed_out", json_boolean(c->timed_out));
    json_object_set_new(result, "isolated", json_true());
    json_object_set_new(result, "pid", json_integer(c->pid));
    json_object_set_new(result, "duration_ms", json_real((double)(uv_hrtime() - c->started_ns) / 1e6));
    json_object_set_new(result, "cpu_ms", json_real((double)(c->usage.ru_utime.tv_sec + c->usage.ru_stime.tv_sec) * 1e3 +
                                                    (double)(c->usage.ru_utime.tv_usec + c->usage.ru_stime.tv_usec) / 1e3));
    json_object_set_new(result, "max_rss_kb", json_integer(c->usage.ru_maxrss));
    uint64_t run_id = c->run_id;
    child_close(c);
    channel.cb(run_id, json_pack("{s:b, s:o}", "end", 1, "result", result), channel.data);
}

static void on_pipe_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    (void)handle;
    (void)suggested;
    buf->base = malloc(PIPE_READ_SIZE);
    buf->len = buf->base ? PIPE_READ_SIZE : 0;
}

/* Appends bytes of the values' pipe, up to GLOBALS_MAX_BYTES. */
static void child_keep_globals(struct child *c, const char *data, size_t len) {
    if (c->globals_too_big)
        return;
    char *grown = c->globals_len + len <= GLOBALS_MAX_BYTES ? realloc(c->globals, c->globals_len + len) : NULL;
    if (!grown) {
        c->globals_too_big = true;
        return;
    }
    memcpy(grown + c->globals_len, data, len);
    c->globals = grown;
    c->globals_len += len;
}

static void on_pipe_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct child *c = stream->data;
    int which = (int)((uv_pipe_t *)stream - c->pipes);
    if (nread > 0 && which == GLOBALS_PIPE)
        child_keep_globals(c, buf->base, (size_t)nread);
    else if (nread > 0)
        child_emit(c, which, buf->base, (size_t)nread, false);
    free(buf->base);
    if (nread < 0) {
        if (which != GLOBALS_PIPE && c->n_pending[which])
            child_emit(c, which, "", 0, true);
        uv_read_stop(stream);
        c->eof[which] = true;
        child_maybe_end(c);
    }
}

/* SIGKILL to the child and, when it leads one (a sandboxed run), its process group. */
static void child_kill(pid_t pid) {
    sandbox_kill_group(pid);
    kill(pid, SIGKILL);
}

static void on_child_exit(uv_poll_t *poll, int status, int events) {
    struct child *c = poll->data;
    (void)status;
    (void)events;
    siginfo_t info = {0};
    if (waitid(P_PID, (id_t)c->pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid == 0)
        return; /* not yet (spurious wake-up) */
    /* Its descendants go with it: while it is an unreaped zombie its pid, and so the id of
     * the process group a sandboxed run made, cannot be reused. */
    sandbox_kill_group(c->pid);
    int st;
    pid_t r = wait4(c->pid, &st, 0, &c->usage);
    uv_poll_stop(poll);
    uv_timer_stop(&c->timer);
    c->exited = true;
    c->status = r == c->pid ? st : 0;
    child_maybe_end(c);
}

static void on_child_timeout(uv_timer_t *timer) {
    struct child *c = timer->data;
    if (c->exited)
        return;
    c->timed_out = true;
    child_kill(c->pid);
}

int run_channel_watch_child(uint64_t run_id, int pid, int out_fd, int err_fd, int globals_fd,
                            unsigned timeout_ms, char *err, size_t errlen) {
    struct child *c = calloc(1, sizeof(*c));
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int r = 0;
    if (!c || pidfd < 0) {
        r = c ? -errno : -ENOMEM;
        snprintf(err, errlen, "cannot watch the isolated run's process %d: %s", pid, strerror(-r));
        free(c);
        if (pidfd >= 0)
            close(pidfd);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(out_fd);
        close(err_fd);
        if (globals_fd >= 0)
            close(globals_fd);
        return r;
    }
    c->run_id = run_id;
    c->pid = pid;
    c->pidfd = pidfd;
    c->started_ns = uv_hrtime();
    int fds[3] = {out_fd, err_fd, globals_fd};
    c->n_pipes = globals_fd >= 0 ? 3 : 2;
    for (int i = 0; i < c->n_pipes; i++) {
        uv_pipe_init(channel.loop, &c->pipes[i], 0);
        c->pipes[i].data = c;
        c->handles_open++;
        if (uv_pipe_open(&c->pipes[i], fds[i]) < 0) {
            close(fds[i]);
            c->eof[i] = true;
        } else {
            uv_read_start((uv_stream_t *)&c->pipes[i], on_pipe_alloc, on_pipe_read);
        }
    }
    uv_poll_init(channel.loop, &c->poll, pidfd);
    c->poll.data = c;
    c->handles_open++;
    uv_poll_start(&c->poll, UV_READABLE, on_child_exit);
    uv_timer_init(channel.loop, &c->timer);
    c->timer.data = c;
    c->handles_open++;
    if (timeout_ms > 0)
        uv_timer_start(&c->timer, on_child_timeout, timeout_ms, 0);
    c->next = channel.children;
    channel.children = c;
    return r;
}

int run_channel_kill_child(uint64_t run_id) {
    for (struct child *c = channel.children; c; c = c->next) {
        if (c->run_id == run_id && !c->exited) {
            child_kill(c->pid);
            return 0;
        }
    }
    return -ESRCH;
}

static void on_channel_closed(uv_handle_t *handle) {
    (void)handle;
}

void run_channel_close(void) {
    pthread_mutex_lock(&channel.mutex);
    bool was_open = channel.open;
    channel.open = false;
    struct message *m = channel.head;
    channel.head = channel.tail = NULL;
    pthread_mutex_unlock(&channel.mutex);
    while (m) {
        struct message *next = m->next;
        json_decref(m->msg);
        free(m);
        m = next;
    }
    while (channel.children) {
        struct child *c = channel.children;
        if (!c->exited) {
            child_kill(c->pid);
            waitpid(c->pid, NULL, 0);
        }
        child_close(c);
    }
    if (was_open)
        uv_close((uv_handle_t *)&channel.async, on_channel_closed);
}
