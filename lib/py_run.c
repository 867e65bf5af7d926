#include "py_internal.h"

#include "py_run.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"
#include "sandbox.h"

#define PIPE_READ_SIZE (64 * 1024)

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
    py_run_message_cb cb;
    void *data;
    struct child *children;    /* loop thread only */
} channel = {.mutex = PTHREAD_MUTEX_INITIALIZER};

/* Posts msg (stolen) for run_id from any thread. */
static void channel_post(uint64_t run_id, json_t *msg) {
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

int py_run_channel_open(uv_loop_t *loop, py_run_message_cb cb, void *data, char *err,
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
    uv_pipe_t pipes[2];        /* stdout, stderr */
    uv_timer_t timer;          /* wall timeout */
    int handles_open;
    bool eof[2];
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
    if (--c->handles_open == 0)
        free(c);
}

static void child_close(struct child *c) {
    child_unlink(c);
    for (int i = 0; i < 2; i++)
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

static void child_maybe_end(struct child *c) {
    if (c->ended || !c->exited || !c->eof[0] || !c->eof[1])
        return;
    c->ended = true;
    json_t *result = json_object();
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

static void on_pipe_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    struct child *c = stream->data;
    int which = stream == (uv_stream_t *)&c->pipes[0] ? 0 : 1;
    if (nread > 0)
        child_emit(c, which, buf->base, (size_t)nread, false);
    free(buf->base);
    if (nread < 0) {
        if (c->n_pending[which])
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

int py_run_watch_child(uint64_t run_id, int pid, int out_fd, int err_fd, unsigned timeout_ms,
                       char *err, size_t errlen) {
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
        return r;
    }
    c->run_id = run_id;
    c->pid = pid;
    c->pidfd = pidfd;
    c->started_ns = uv_hrtime();
    int fds[2] = {out_fd, err_fd};
    for (int i = 0; i < 2; i++) {
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

int py_run_kill_child(uint64_t run_id) {
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

void py_run_channel_close(void) {
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

/* ---- run threads: registry, cancel, sleep (python side, GIL held unless said) ----------- */

struct run_slot {
    uint64_t run_id;
    unsigned long ident;       /* PyThread_get_thread_ident() of the run's thread */
    bool cancelled;            /* its timeout passed */
    bool in_sleep;             /* in run_sleep, GIL released */
    bool wake;                 /* run_sleep must raise TimeoutError */
    struct run_slot *next;
};

static pthread_mutex_t slots_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slots_cond;  /* CLOCK_MONOTONIC; initialised in py_run_init */
static struct run_slot *slots;
static PyObject *original_sleep;   /* time.sleep as it was before runs replaced it */

static struct run_slot *slot_find_ident(unsigned long ident) {
    for (struct run_slot *s = slots; s; s = s->next)
        if (s->ident == ident)
            return s;
    return NULL;
}

static struct run_slot *slot_find_run(uint64_t run_id) {
    for (struct run_slot *s = slots; s; s = s->next)
        if (s->run_id == run_id)
            return s;
    return NULL;
}

/* _pyhot_run.emit(run_id, stream, text): text goes to the run's client now. */
static PyObject *run_emit(PyObject *self, PyObject *args) {
    unsigned long long run_id;
    const char *stream;
    PyObject *text;
    (void)self;
    if (!PyArg_ParseTuple(args, "KsU", &run_id, &stream, &text))
        return NULL;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(text, &len);
    PyObject *bytes = NULL;
    if (!s) {
        PyErr_Clear();
        bytes = PyUnicode_AsEncodedString(text, "utf-8", "backslashreplace");
        if (!bytes)
            return NULL;
        s = PyBytes_AS_STRING(bytes);
        len = PyBytes_GET_SIZE(bytes);
    }
    channel_post(run_id, json_pack("{s:s, s:s%}", "stream", stream, "data", s, (size_t)len));
    Py_XDECREF(bytes);
    Py_RETURN_NONE;
}

/* _pyhot_run.finish(run_id, result): the run's end message. */
static PyObject *run_finish(PyObject *self, PyObject *args) {
    unsigned long long run_id;
    PyObject *result;
    (void)self;
    if (!PyArg_ParseTuple(args, "KO!", &run_id, &PyDict_Type, &result))
        return NULL;
    channel_post(run_id, json_pack("{s:b, s:o}", "end", 1, "result", py_to_json(result)));
    Py_RETURN_NONE;
}

/* _pyhot_run.register(run_id): the calling thread runs run_id. */
static PyObject *run_register(PyObject *self, PyObject *args) {
    unsigned long long run_id;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &run_id))
        return NULL;
    struct run_slot *s = calloc(1, sizeof(*s));
    if (!s)
        return PyErr_NoMemory();
    s->run_id = run_id;
    s->ident = PyThread_get_thread_ident();
    pthread_mutex_lock(&slots_mutex);
    s->next = slots;
    slots = s;
    pthread_mutex_unlock(&slots_mutex);
    Py_RETURN_NONE;
}

/* _pyhot_run.unregister(run_id) -> bool: whether the run was cancelled. Also drops an
 * interrupt that was aimed at the thread but not delivered yet. */
static PyObject *run_unregister(PyObject *self, PyObject *args) {
    unsigned long long run_id;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &run_id))
        return NULL;
    bool cancelled = false;
    pthread_mutex_lock(&slots_mutex);
    for (struct run_slot **p = &slots; *p; p = &(*p)->next) {
        if ((*p)->run_id == run_id) {
            struct run_slot *s = *p;
            *p = s->next;
            cancelled = s->cancelled;
            PyThreadState_SetAsyncExc(s->ident, NULL);
            free(s);
            break;
        }
    }
    pthread_mutex_unlock(&slots_mutex);
    return PyBool_FromLong(cancelled);
}

/* _pyhot_run.cancel(run_id) -> bool: interrupts the run's thread with TimeoutError: a
 * thread in time.sleep (ours) wakes and raises; any other gets an asynchronous exception,
 * raised at its next bytecode (PyThreadState_SetAsyncExc). False if run_id is not running. */
static PyObject *run_cancel(PyObject *self, PyObject *args) {
    unsigned long long run_id;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &run_id))
        return NULL;
    pthread_mutex_lock(&slots_mutex);
    struct run_slot *s = slot_find_run(run_id);
    if (s) {
        s->cancelled = true;
        if (s->in_sleep) {
            s->wake = true;
            pthread_cond_broadcast(&slots_cond);
        } else {
            PyThreadState_SetAsyncExc(s->ident, PyExc_TimeoutError);
        }
    }
    pthread_mutex_unlock(&slots_mutex);
    return PyBool_FromLong(s != NULL);
}

/* time.sleep while runs exist: on a run's thread, sleeps on a condition variable with the
 * GIL released and raises TimeoutError when the run is cancelled; on any other thread it
 * is the original time.sleep (so the python thread's SIGUSR1 deadline still works). */
static PyObject *run_sleep(PyObject *self, PyObject *arg) {
    (void)self;
    unsigned long ident = PyThread_get_thread_ident();
    pthread_mutex_lock(&slots_mutex);
    struct run_slot *s = slot_find_ident(ident);
    pthread_mutex_unlock(&slots_mutex);
    if (!s)
        return PyObject_CallOneArg(original_sleep, arg);
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "'%.200s' object cannot be interpreted as an integer",
                         Py_TYPE(arg)->tp_name);
        }
        return NULL;
    }
    if (isnan(secs)) {
        PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
        return NULL;
    }
    if (secs < 0) {
        PyErr_SetString(PyExc_ValueError, "sleep length must be non-negative");
        return NULL;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = floor(secs);
    if (whole > 1e9)
        whole = 1e9;
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((secs - floor(secs)) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    bool woken = false;
    pthread_mutex_lock(&slots_mutex);
    s->in_sleep = true;
    pthread_mutex_unlock(&slots_mutex);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&slots_mutex);
    while (!s->wake) {
        int r = pthread_cond_timedwait(&slots_cond, &slots_mutex, &deadline);
        if (r == ETIMEDOUT)
            break;
    }
    woken = s->wake;
    s->wake = false;
    s->in_sleep = false;
    pthread_mutex_unlock(&slots_mutex);
    Py_END_ALLOW_THREADS
    if (woken) {
        PyErr_SetString(PyExc_TimeoutError, "pyhot: the run passed its timeout");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef run_methods[] = {
    {"emit", run_emit, METH_VARARGS, "emit(run_id, stream, text): stream text to the run's client"},
    {"finish", run_finish, METH_VARARGS, "finish(run_id, result): the run's end"},
    {"register", run_register, METH_VARARGS, "register(run_id): this thread runs run_id"},
    {"unregister", run_unregister, METH_VARARGS, "unregister(run_id) -> cancelled"},
    {"cancel", run_cancel, METH_VARARGS, "cancel(run_id) -> bool: TimeoutError in the run"},
    {"sleep", run_sleep, METH_O,
     "sleep(seconds)\n\nDelay execution for a given number of seconds (time.sleep; pyhot's "
     "version is interrupted by a run's timeout)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef run_module_def = {
    PyModuleDef_HEAD_INIT, "_pyhot_run", "pyhot's runs (lib/py_run.c)", -1, run_methods,
    NULL, NULL, NULL, NULL,
};

int py_run_init(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&slots_cond, &attr);
    pthread_condattr_destroy(&attr);

    PyObject *time_module = PyImport_ImportModule("time");
    if (!time_module)
        return -1;
    original_sleep = PyObject_GetAttrString(time_module, "sleep");
    Py_DECREF(time_module);
    if (!original_sleep)
        return -1;
    PyObject *module = PyModule_Create(&run_module_def);
    if (!module)
        return -1;
    if (PyModule_AddObjectRef(module, "original_sleep", original_sleep) < 0 ||
        PyDict_SetItemString(PyImport_GetModuleDict(), "_pyhot_run", module) < 0) {
        Py_DECREF(module);
        return -1;
    }
    Py_DECREF(module);
    return 0;
}

void py_run_fini(void) {
    Py_CLEAR(original_sleep);
}

/* ---- isolated runs: the fork (python thread, GIL held) ---------------------------------- */

/* The address space now, in bytes (/proc/self/statm's first field), or 0. */
static unsigned long long address_space_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long pages = 0;
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return pages * (unsigned long long)sysconf(_SC_PAGESIZE);
}

static void child_fail(const char *what) {
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "pyhot: isolated run: %s: %s\n", what, strerror(errno));
    if (n > 0 && write(2, buf, (size_t)n) < 0)
        _exit(2);
    _exit(2);
}

/* A sandboxed run's plan (docs/run.md "Sandbox"), built on the python thread before the
 * fork, so that the user lookup (NSS), the Python call for the import paths and the
 * allocations stay out of the child; the child reads its copy. */
struct sandbox_plan {
    struct sandbox_spec spec;
    json_t *read;             /* owned: the read paths; spec's strings point into it */
    json_t *write;            /* owned: the write paths */
    const char **paths;       /* spec.read_paths then spec.write_paths, malloc'd */
};

static void sandbox_plan_free(struct sandbox_plan *plan) {
    json_decref(plan->read);
    json_decref(plan->write);
    free(plan->paths);
    memset(plan, 0, sizeof(*plan));
}

/* The last [sandbox] user resolved: NSS is asked again only when the name changes. */
static struct {
    char name[256];
    uid_t uid;
    gid_t gid;
} user_cache;

static int resolve_user_cached(const char *user, uid_t *uid, gid_t *gid, char *err, size_t errlen) {
    if (user_cache.name[0] && strcmp(user_cache.name, user) == 0) {
        *uid = user_cache.uid;
        *gid = user_cache.gid;
        return 0;
    }
    int r = sandbox_resolve_user(user, uid, gid, err, errlen);
    if (r == 0 && strlen(user) < sizeof(user_cache.name)) {
        snprintf(user_cache.name, sizeof(user_cache.name), "%s", user);
        user_cache.uid = *uid;
        user_cache.gid = *gid;
    }
    return r;
}

/* Builds plan from input's "sandbox" settings (daemon.c sandbox_settings). Returns 0, or -1
 * with *error set (the plan freed). */
static int sandbox_plan_build(json_t *input, struct sandbox_plan *plan, json_t **error) {
    json_t *settings = json_object_get(input, "sandbox");
    char err[PATH_MAX + 128] = "";
    memset(plan, 0, sizeof(*plan));
    const char *network = json_string_value(json_object_get(settings, "network"));
    plan->spec.network = network && strcmp(network, "loopback") == 0 ? SANDBOX_NETWORK_LOOPBACK
                                                                     : SANDBOX_NETWORK_NONE;
    plan->spec.pids = (unsigned)json_integer_value(json_object_get(settings, "pids"));
    plan->spec.tmp_size_mb = (unsigned)json_integer_value(json_object_get(settings, "tmp_size_mb"));
    const char *base = getenv("TMPDIR");
    int r = sandbox_prepare(base && base[0] == '/' ? base : "/tmp", err, sizeof(err));
    if (r == 0 && geteuid() == 0) {
        const char *user = json_string_value(json_object_get(settings, "user"));
        plan->spec.change_user = true;
        r = resolve_user_cached(user ? user : "nobody", &plan->spec.uid, &plan->spec.gid, err, sizeof(err));
    }
    json_t *args = json_pack("[O]", input);
    plan->read = r == 0 ? py_support_call("sandbox_read_paths", args, error) : NULL;
    json_decref(args);
    if (r == 0 && !plan->read)
        return -1;
    plan->write = json_deep_copy(json_object_get(settings, "write"));
    if (plan->read && plan->write) {
        json_array_extend(plan->read, json_object_get(settings, "read"));
        const char *cwd = json_string_value(json_object_get(input, "cwd"));
        if (cwd)
            json_array_append_new(plan->write, json_string(cwd));
    }
    size_t n_read = json_array_size(plan->read), n_write = json_array_size(plan->write);
    plan->paths = r == 0 ? calloc(n_read + n_write + 1, sizeof(*plan->paths)) : NULL;
    if (!plan->paths) {
        *error = json_pack("{s:s, s:s}", "code", PROTOCOL_E_SANDBOX, "message",
                           err[0] ? err : "out of memory");
        sandbox_plan_free(plan);
        return -1;
    }
    for (size_t i = 0; i < n_read; i++)
        plan->paths[i] = json_string_value(json_array_get(plan->read, i));
    for (size_t i = 0; i < n_write; i++)
        plan->paths[n_read + i] = json_string_value(json_array_get(plan->write, i));
    plan->spec.read_paths = plan->paths;
    plan->spec.n_read = n_read;
    plan->spec.write_paths = plan->paths + n_read;
    plan->spec.n_write = n_write;
    plan->spec.tmpdir = sandbox_tmpdir();
    json_object_set_new(input, "tmpdir", json_string(plan->spec.tmpdir));
    return 0;
}

/* The child: never returns. sandbox is NULL for a run that is only isolated. */
static void child_main(json_t *input, int out_w, int err_w, const struct sandbox_spec *sandbox) {
    if (dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
        _exit(2);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0 && null != 0) {
        dup2(null, 0);
        close(null);
    }
    /* Nothing of the daemon's: its socket, inotify, epoll, eventfds. */
    syscall(SYS_close_range, 3U, ~0U, 0U);
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);

    json_int_t memory_mb = json_integer_value(json_object_get(input, "memory_mb"));
    json_int_t cpu_s = json_integer_value(json_object_get(input, "cpu_s"));
    if (memory_mb > 0) {
        rlim_t limit = (rlim_t)address_space_now() + (rlim_t)memory_mb * 1024 * 1024;
        struct rlimit rl = {limit, limit};
        if (setrlimit(RLIMIT_AS, &rl) < 0)
            child_fail("setrlimit(RLIMIT_AS)");
    }
    if (cpu_s > 0) {
        struct rlimit rl = {(rlim_t)cpu_s, (rlim_t)cpu_s + 1};
        if (setrlimit(RLIMIT_CPU, &rl) < 0)
            child_fail("setrlimit(RLIMIT_CPU)");
    }
    const char *cwd = json_string_value(json_object_get(input, "cwd"));
    if (cwd && chdir(cwd) < 0)
        child_fail(cwd);
    if (sandbox) {
        /* Every layer before any of the script's code, or the script does not run at all
         * (exit status 125, as env(1) and timeout(1) use for their own failures). */
        char why[PATH_MAX + 256];
        if (sandbox_enter(sandbox, why, sizeof(why)) < 0) {
            char line[sizeof(why) + 64];
            int n = snprintf(line, sizeof(line), "pyhot: sandbox: %s; the script did not run\n", why);
            if (n > 0 && write(2, line, (size_t)n) < 0)
                _exit(125);
            _exit(125);
        }
    }

    json_t *error = NULL;
    json_t *args = json_pack("[O]", input);
    json_t *code = py_support_call("run_isolated", args, &error);
    int status = 1;
    if (code && json_is_integer(code))
        status = (int)(json_integer_value(code) & 0xff);
    else if (error) {
        const char *tb = json_string_value(json_object_get(error, "traceback"));
        if (tb && write(2, tb, strlen(tb)) < 0)
            status = 1;
    }
    _exit(status);
}

static json_t *start_isolated(json_t *input, json_t **error) {
    int out[2], err[2];
    struct sandbox_plan plan;
    bool sandboxed = json_is_object(json_object_get(input, "sandbox"));
    if (sandboxed && sandbox_plan_build(input, &plan, error) < 0)
        return NULL;
    if (pipe2(out, O_CLOEXEC) < 0) {
        if (sandboxed)
            sandbox_plan_free(&plan);
        *error = json_pack("{s:s, s:s}", "code", PROTOCOL_E_INTERNAL, "message", strerror(errno));
        return NULL;
    }
    if (pipe2(err, O_CLOEXEC) < 0) {
        *error = json_pack("{s:s, s:s}", "code", PROTOCOL_E_INTERNAL, "message", strerror(errno));
        if (sandboxed)
            sandbox_plan_free(&plan);
        close(out[0]);
        close(out[1]);
        return NULL;
    }
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        child_main(input, out[1], err[1], sandboxed ? &plan.spec : NULL);
        _exit(2);
    }
    int e = errno;
    PyOS_AfterFork_Parent();
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
        close(out[0]);
        close(err[0]);
        *error = json_pack("{s:s, s:s}", "code", PROTOCOL_E_INTERNAL, "message", strerror(e));
        if (sandboxed)
            sandbox_plan_free(&plan);
        return NULL;
    }
    json_t *output = json_pack("{s:i, s:i, s:i, s:b}", "pid", (int)pid, "stdout_fd", out[0], "stderr_fd",
                               err[0], "isolated", 1);
    if (sandboxed)
        sandbox_plan_free(&plan);
    return output;
}

json_t *py_run_start(json_t *input, json_t **error) {
    *error = NULL;
    if (json_is_true(json_object_get(input, "isolate")))
        return start_isolated(input, error);
    json_t *args = json_pack("[O]", input);
    json_t *result = py_support_call("start_run", args, error);
    json_decref(args);
    return result;
}
