#include "py_internal.h"

#include "py_host.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "protocol.h"
#include "py_reload.h"
#include "py_support_source.h"

#define DEADLINE_RESEND_MS 1000
/* How long a running exec or repl statement may hold back a queued reload before it is
 * interrupted for it (docs/protocol.md, exec). */
#define PREEMPT_AFTER_MS 1000

struct py_host {
    uv_loop_t *loop;
    uv_async_t async;          /* python thread -> loop: a job started, finished, or exited */
    uv_timer_t deadline_timer;
    uv_timer_t preempt_timer;  /* a reload waits behind an exec or repl statement */
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mutex;     /* guards everything below up to the atomics */
    pthread_cond_t cond;       /* jobs queued, stop requested, init done */
    struct py_job *queue_head, *queue_tail;
    size_t queued;
    struct py_job *done_head, *done_tail;
    struct py_job *running;
    bool init_done;
    int init_status;
    char init_error[512];
    bool stopping;
    bool exited;
    json_t *entry_end;         /* the entry's end, for on_entry_end (see _entry_ended) */
    uint64_t armed_at_submit;  /* id of the job whose deadline the loop armed at submission */
    char **loaded;             /* the index's files after the last job that changed it */
    size_t n_loaded;
    uint64_t loaded_generation; /* bumped with each new list */
    uint64_t loaded_notified;  /* loop thread: the generation on_loaded_files was told of */
    void (*on_loaded_files)(void *data);

    /* loop thread only */
    uint64_t next_job_id;
    uint64_t deadline_job_id;  /* the running job the deadline timer is armed for */
    uint64_t preempt_job_id;   /* the running statement the preempt timer is armed for */
    unsigned grace_ms;
    void (*close_cb)(void *data);
    void *close_data;
    int handles_open;

    /* copied options, read by the python thread during init */
    char **roots;
    size_t n_roots;
    char **paths;
    size_t n_paths;
    char *venv;
    void (*on_entry_end)(json_t *end, void *data);
    void *data;

    atomic_uint_fast64_t current_job_id;   /* job running Python code now, 0 = none */
    atomic_uint_fast64_t interrupt_job_id; /* job being interrupted (deadline, cancel) */
    atomic_int interrupt_reason;           /* why: enum py_interrupt */
    atomic_size_t modules_loaded;

    /* python thread only */
    long index_generation;     /* the index generation the last list was taken at */
};

/* One interpreter per process: the SIGUSR1 handler, a plain C function called by the
 * eval loop, reaches the host through this. */
static struct py_host *the_host;
static PyObject *support_module;  /* _pyhot, python thread only */

static const char *const job_kind_names[] = {
    [PY_JOB_STARTUP] = "startup",
    [PY_JOB_RELOAD] = "reload",
    [PY_JOB_EXEC] = "exec",
    [PY_JOB_MODULES] = "modules",
    [PY_JOB_CONFIGURE] = "configure",
    [PY_JOB_RUN] = "run",
    [PY_JOB_PRELOAD] = "preload",
    [PY_JOB_REPL] = "repl",
    [PY_JOB_PLUGIN] = "plugin",
};

const char *py_job_kind_name(enum py_job_kind kind) {
    if ((size_t)kind < sizeof(job_kind_names) / sizeof(job_kind_names[0]))
        return job_kind_names[kind];
    return "unknown";
}

const char *py_host_python_version(void) {
    return PY_VERSION;
}

int py_host_block_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    return -pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* ---- the support module ------------------------------------------------------------- */

json_t *py_support_call(const char *name, json_t *args, json_t **error) {
    return py_module_call(support_module, name, args, error);
}

/* ---- interpreter setup (python thread) ---------------------------------------------- */

/* _pyhot._interrupt_due() -> int: while the running job is the one being interrupted, why
 * (enum py_interrupt: 1 deadline, 2 the client's interrupt, 3 the client left, 4 a reload
 * waits), else 0. The SIGUSR1 handler (_pyhot._deadline_handler, which CPython runs on
 * this thread between bytecodes and right after a blocking call returns EINTR) raises the
 * matching exception, so busy loops, time.sleep and blocking reads are interrupted alike,
 * and a late signal never hits the next job. */
static PyObject *interrupt_due(PyObject *self, PyObject *unused) {
    uint64_t target = atomic_load(&the_host->interrupt_job_id);
    bool due = target != 0 && target == atomic_load(&the_host->current_job_id);
    return PyLong_FromLong(due ? atomic_load(&the_host->interrupt_reason) : 0);
}

static PyMethodDef interrupt_due_def = {
    "_interrupt_due", interrupt_due, METH_NOARGS,
    "Why the running job is being interrupted (1..4), or 0 (set by pyhotd)."};

/* _pyhot._entry_ended(end): the entry's thread reports that the entry function returned
 * or raised (end: a dict, see py_host_options.on_entry_end); the loop thread hears it
 * through the host's async handle. Any thread, GIL held. */
static PyObject *entry_ended(PyObject *self, PyObject *end) {
    (void)self;
    json_t *j = py_to_json(end);
    pthread_mutex_lock(&the_host->mutex);
    json_decref(the_host->entry_end);
    the_host->entry_end = j;
    pthread_mutex_unlock(&the_host->mutex);
    uv_async_send(&the_host->async);
    Py_RETURN_NONE;
}

static PyMethodDef entry_ended_def = {
    "_entry_ended", entry_ended, METH_O,
    "_entry_ended(end): the entry function returned or raised (set by pyhotd)."};

static int fail_init(struct py_host *host, const char *what) {
    PyObject *exc = py_take_exception();
    PyObject *s = exc ? PyObject_Str(exc) : NULL;
    const char *m = s ? PyUnicode_AsUTF8(s) : NULL;
    snprintf(host->init_error, sizeof(host->init_error), "%s: %s", what, m ? m : "unknown error");
    Py_XDECREF(s);
    Py_XDECREF(exc);
    PyErr_Clear();
    return -EINVAL;
}

static PyObject *string_list(char **items, size_t n) {
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *s = PyUnicode_DecodeFSDefault(items[i]);
        if (!s) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

static int interpreter_init(struct py_host *host) {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    /* Our signals are the loop thread's business; only SIGUSR1 is Python's, set below. */
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, PYHOT_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(status))
        /* sys.executable must be a real interpreter: subprocess and multiprocessing start it. */
        status = PyConfig_SetBytesString(&config, &config.executable, PYHOT_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        snprintf(host->init_error, sizeof(host->init_error), "Python initialisation failed: %s%s%s",
                 status.func ? status.func : "", status.func ? ": " : "",
                 status.err_msg ? status.err_msg : "unknown error");
        return -EINVAL;
    }

    support_module = py_module_from_source("_pyhot", "<pyhot>/py_support.py", py_support_source);
    if (!support_module)
        return fail_init(host, "loading the support module");
    PyObject *describe = PyObject_GetAttrString(support_module, "describe_exception");
    if (!describe)
        return fail_init(host, "loading the support module");
    py_json_set_describe(describe);
    Py_DECREF(describe);

    PyObject *roots = string_list(host->roots, host->n_roots);
    PyObject *paths = string_list(host->paths, host->n_paths);
    PyObject *r = roots && paths ? PyObject_CallMethod(support_module, "configure", "OOz", roots,
                                                       paths, host->venv) : NULL;
    Py_XDECREF(roots);
    Py_XDECREF(paths);
    if (!r)
        return fail_init(host, "setting sys.path");
    Py_DECREF(r);

    PyObject *due = PyCFunction_New(&interrupt_due_def, NULL);
    if (!due || PyObject_SetAttrString(support_module, "_interrupt_due", due) < 0) {
        Py_XDECREF(due);
        return fail_init(host, "installing the deadline check");
    }
    Py_DECREF(due);
    PyObject *ended = PyCFunction_New(&entry_ended_def, NULL);
    if (!ended || PyObject_SetAttrString(support_module, "_entry_ended", ended) < 0) {
        Py_XDECREF(ended);
        return fail_init(host, "installing the entry report");
    }
    Py_DECREF(ended);
    PyObject *handler = PyObject_GetAttrString(support_module, "_deadline_handler");
    PyObject *signal_module = handler ? PyImport_ImportModule("signal") : NULL;
    r = signal_module ? PyObject_CallMethod(signal_module, "signal", "iO", SIGUSR1, handler) : NULL;
    Py_XDECREF(signal_module);
    Py_XDECREF(handler);
    if (!r)
        return fail_init(host, "installing the deadline handler");
    Py_DECREF(r);

    if (py_reload_init() < 0)
        return fail_init(host, "loading the reload engine");
    if (py_plugins_init() < 0)
        return fail_init(host, "loading the plugin host");
    if (py_api_init() < 0)
        return fail_init(host, "loading the pyhot module and the framework adapters");
    if (py_run_init() < 0)
        return fail_init(host, "loading the run support");

    atomic_store(&host->modules_loaded, (size_t)PyDict_Size(PyImport_GetModuleDict()));
    return 0;
}

/* ---- jobs (python thread) ----------------------------------------------------------- */

static void job_fail(struct py_job *job, json_t *error) {
    job->ok = false;
    json_decref(job->output);
    job->output = error;
}

static void job_set(struct py_job *job, json_t *result, json_t *error) {
    if (result) {
        job->ok = true;
        json_decref(job->output);
        job->output = result;
    } else {
        job_fail(job, error);
    }
}

static void run_startup(struct py_job *job) {
    json_t *result = json_object();
    json_t *error = NULL;
    py_prefork_configure(job->input);
    if (py_reload_configure(job->input, &error) < 0) {
        job_fail(job, error);
        json_decref(result);
        return;
    }
    if (json_is_true(json_object_get(job->input, "import"))) {
        json_t *imported = py_support_call("import_roots", NULL, &error);
        if (!imported) {
            job_fail(job, error);
            json_decref(result);
            return;
        }
        json_object_update(result, imported);
        json_decref(imported);
    }
    json_t *entry = json_object_get(job->input, "entry");
    if (json_is_string(entry)) {
        json_t *args = json_pack("[O]", entry);
        json_t *started = py_support_call("start_entry", args, &error);
        json_decref(args);
        if (!started) {
            job_fail(job, error);
            json_decref(result);
            return;
        }
        json_object_set_new(result, "entry", started);
    }
    job_set(job, result, NULL);
}

static void run_exec(struct py_job *job) {
    json_t *error = NULL;
    json_t *args = json_pack("[O]", json_object_get(job->input, "code"));
    json_t *reply = py_support_call("exec_code", args, &error);
    json_decref(args);
    if (!reply) {
        job_fail(job, error);
        return;
    }
    if (json_is_true(json_object_get(reply, "ok"))) {
        json_object_del(reply, "ok");
        job_set(job, reply, NULL);
        return;
    }
    /* The code raised: the error object, with the output captured before it. */
    json_t *err = json_deep_copy(json_object_get(reply, "error"));
    if (!json_is_object(err)) {
        json_decref(err);
        err = json_object();
    }
    json_object_set_new(err, "code", json_string(PROTOCOL_E_PYTHON));
    json_object_set(err, "stdout", json_object_get(reply, "stdout"));
    json_object_set(err, "stderr", json_object_get(reply, "stderr"));
    json_decref(reply);
    job_fail(job, err);
}

static void run_modules(struct py_job *job) {
    json_t *error = NULL;
    json_t *args = json_pack("[O]", json_object_get(job->input, "pattern") ? json_object_get(job->input, "pattern") : json_null());
    json_t *result = py_support_call("list_modules", args, &error);
    json_decref(args);
    job_set(job, result, error);
}

static void run_configure(struct py_job *job) {
    json_t *error = NULL;
    py_prefork_configure(job->input);
    if (py_reload_configure(job->input, &error) < 0) {
        job_fail(job, error);
        return;
    }
    json_t *args = json_pack("[OOb]", json_object_get(job->input, "add_roots"),
                             json_object_get(job->input, "remove_roots"),
                             json_is_true(json_object_get(job->input, "import")));
    json_t *result = py_support_call("update_roots", args, &error);
    json_decref(args);
    job_set(job, result, error);
}

static void publish_loaded(struct py_host *host);

static void run_job(struct py_host *host, struct py_job *job) {
    switch (job->kind) {
    case PY_JOB_STARTUP:
        run_startup(job);
        break;
    case PY_JOB_RELOAD: {
        json_t *error = NULL;
        json_t *result = py_reload_run(job->input, &error);
        job_set(job, result, error);
        break;
    }
    case PY_JOB_EXEC:
        run_exec(job);
        break;
    case PY_JOB_MODULES:
        run_modules(job);
        break;
    case PY_JOB_CONFIGURE:
        run_configure(job);
        break;
    case PY_JOB_RUN: {
        json_t *error = NULL;
        json_t *result = py_run_start(job->input, &error);
        job_set(job, result, error);
        break;
    }
    case PY_JOB_PRELOAD: {
        json_t *error = NULL;
        json_t *args = json_pack("[O]", json_object_get(job->input, "modules"));
        json_t *result = py_support_call("preload", args, &error);
        json_decref(args);
        job_set(job, result, error);
        break;
    }
    case PY_JOB_REPL: {
        json_t *error = NULL;
        json_t *args = json_pack("[O]", json_object_get(job->input, "source"));
        json_t *result = py_support_call("repl_input", args, &error);
        json_decref(args);
        job_set(job, result, error);
        break;
    }
    case PY_JOB_PLUGIN: {
        json_t *error = NULL;
        json_t *result = py_plugins_load(job->input, &error);
        job_set(job, result, error);
        break;
    }
    }
    /* What raised while our mark was on this job is the interrupt's doing. */
    if (atomic_load(&host->interrupt_job_id) == job->id) {
        bool timeout = atomic_load(&host->interrupt_reason) == PY_INTERRUPT_DEADLINE;
        job->timed_out = timeout;
        if (!job->ok && json_is_object(job->output))
            json_object_set_new(job->output, "code",
                                json_string(timeout ? PROTOCOL_E_TIMEOUT : PROTOCOL_E_INTERRUPTED));
    }
    if (PyErr_Occurred())
        PyErr_Clear();
    /* Every job but the start of an isolated run may have changed the interpreter's state:
     * ready children forked before it are stale (py_prefork.c). */
    if (job->kind != PY_JOB_RUN || !json_is_true(json_object_get(job->input, "isolate")))
        py_prefork_state_changed();
    atomic_store(&host->modules_loaded, (size_t)PyDict_Size(PyImport_GetModuleDict()));
    if (host->init_status == 0)
        publish_loaded(host);
}

/* Hands the loop thread the files of the loaded modules under the roots
 * (_pyhot.loaded_files) when the index changed since the last time: plain C strings under
 * the mutex, so no PyObject leaves this thread. Python thread, GIL held. */
static void publish_loaded(struct py_host *host) {
    PyObject *r = PyObject_CallMethod(support_module, "loaded_files", "l",
                                      host->index_generation);
    PyObject *list = r && PyTuple_Check(r) && PyTuple_Size(r) == 2 ? PyTuple_GetItem(r, 1)
                                                                   : NULL;
    long generation = list ? PyLong_AsLong(PyTuple_GetItem(r, 0)) : -1;
    if (!list || !PyList_Check(list) || generation < 0) {
        Py_XDECREF(r);  /* None: nothing changed */
        PyErr_Clear();
        return;
    }
    Py_ssize_t n = PyList_Size(list);
    char **paths = calloc((size_t)n + 1, sizeof(*paths));
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; paths && i < n; i++) {
        PyObject *item = PyList_GetItem(list, i);
        const char *path = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        char *copy = path ? strdup(path) : NULL;
        if (path && !copy)
            break;
        if (copy)
            paths[k++] = copy;
    }
    Py_DECREF(r);
    PyErr_Clear();
    if (!paths)
        return;
    host->index_generation = generation;
    pthread_mutex_lock(&host->mutex);
    char **old = host->loaded;
    size_t n_old = host->n_loaded;
    host->loaded = paths;
    host->n_loaded = (size_t)k;
    host->loaded_generation++;
    pthread_mutex_unlock(&host->mutex);
    for (size_t i = 0; i < n_old; i++)
        free(old[i]);
    free(old);
}

/* Waits on host->cond (mutex held) until signalled or, when wake_ns is not 0, until then
 * (CLOCK_MONOTONIC ns; the condition variable's clock is CLOCK_REALTIME). */
static void wait_for_work(struct py_host *host, uint64_t wake_ns) {
    if (wake_ns == 0) {
        pthread_cond_wait(&host->cond, &host->mutex);
        return;
    }
    struct timespec mono, deadline;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    uint64_t now = (uint64_t)mono.tv_sec * 1000000000ULL + (uint64_t)mono.tv_nsec;
    if (wake_ns <= now)
        return;
    uint64_t wait = wake_ns - now;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)(wait / 1000000000ULL);
    deadline.tv_nsec += (long)(wait % 1000000000ULL);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&host->cond, &host->mutex, &deadline);
}

static void *python_thread_main(void *arg) {
    struct py_host *host = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    int r = interpreter_init(host);
    PyThreadState *state = NULL;
    if (r == 0)
        state = PyEval_SaveThread(); /* app threads run while we wait for jobs */
    pthread_mutex_lock(&host->mutex);
    host->init_done = true;
    host->init_status = r;
    pthread_cond_broadcast(&host->cond);
    pthread_mutex_unlock(&host->mutex);
    if (r < 0)
        return NULL;

    for (;;) {
        pthread_mutex_lock(&host->mutex);
        while (!host->queue_head && !host->stopping) {
            if (py_prefork_due()) {
                /* Idle: the ready children's refill, one fork at a time, so that a job
                 * queued meanwhile waits for one fork at most (as behind a run's). */
                pthread_mutex_unlock(&host->mutex);
                PyEval_RestoreThread(state);
                py_prefork_step();
                state = PyEval_SaveThread();
                pthread_mutex_lock(&host->mutex);
                continue;
            }
            wait_for_work(host, py_prefork_wake_ns());
        }
        if (host->stopping) {
            pthread_mutex_unlock(&host->mutex);
            break;
        }
        struct py_job *job = host->queue_head;
        host->queue_head = job->next;
        if (!host->queue_head)
            host->queue_tail = NULL;
        host->queued--;
        job->next = NULL;
        job->started_ns = uv_hrtime();
        host->running = job;
        bool armed = job->id == host->armed_at_submit;
        pthread_mutex_unlock(&host->mutex);
        /* A job that waited in the queue has its deadline armed by the loop thread once it
         * hears the job started; one submitted to an idle host was armed at submission,
         * which spares the save -> reload path a syscall and a wake-up of the loop. */
        if (!armed)
            uv_async_send(&host->async);

        PyEval_RestoreThread(state);
        atomic_store(&host->current_job_id, job->id);
        run_job(host, job);
        atomic_store(&host->current_job_id, 0);
        state = PyEval_SaveThread();

        job->finished_ns = uv_hrtime();
        pthread_mutex_lock(&host->mutex);
        host->running = NULL;
        if (host->done_tail)
            host->done_tail->next = job;
        else
            host->done_head = job;
        host->done_tail = job;
        pthread_mutex_unlock(&host->mutex);
        uv_async_send(&host->async);
    }

    py_prefork_fini();
    PyEval_RestoreThread(state);
    py_run_fini();
    py_plugins_fini();
    py_json_set_describe(NULL);
    Py_CLEAR(support_module);
    if (Py_FinalizeEx() < 0)
        log_warn("python: flushing buffered output failed at exit");
    pthread_mutex_lock(&host->mutex);
    host->exited = true;
    pthread_mutex_unlock(&host->mutex);
    uv_async_send(&host->async);
    return NULL;
}

/* ---- loop thread -------------------------------------------------------------------- */

static void on_deadline(uv_timer_t *timer);

/* Interrupts the running job job_id for reason (the first reason stays until it ends):
 * marks it and signals the python thread, then again every DEADLINE_RESEND_MS while it
 * runs, in case the code caught the exception. */
static void interrupt_running(struct py_host *host, uint64_t job_id, enum py_interrupt reason) {
    if (atomic_load(&host->interrupt_job_id) != job_id) {
        atomic_store(&host->interrupt_reason, (int)reason);
        atomic_store(&host->interrupt_job_id, job_id);
    }
    host->deadline_job_id = job_id;
    pthread_kill(host->thread, SIGUSR1);
    uv_timer_start(&host->deadline_timer, on_deadline, DEADLINE_RESEND_MS, 0);
}

static void on_deadline(uv_timer_t *timer) {
    struct py_host *host = timer->data;
    pthread_mutex_lock(&host->mutex);
    bool still_running = host->running && host->running->id == host->deadline_job_id;
    pthread_mutex_unlock(&host->mutex);
    if (!still_running)
        return;
    if (atomic_load(&host->interrupt_job_id) != host->deadline_job_id)
        log_warn("job %llu passed its deadline; interrupting it",
                 (unsigned long long)host->deadline_job_id);
    interrupt_running(host, host->deadline_job_id, PY_INTERRUPT_DEADLINE);
}

static bool preemptible(const struct py_job *job) {
    return job->kind == PY_JOB_EXEC || job->kind == PY_JOB_REPL;
}

/* The id of the running job when it is an exec or repl statement with a reload queued
 * behind it, else 0. */
static uint64_t statement_holding_a_reload(struct py_host *host) {
    uint64_t id = 0;
    pthread_mutex_lock(&host->mutex);
    if (host->running && preemptible(host->running))
        for (struct py_job *q = host->queue_head; q && !id; q = q->next)
            if (q->kind == PY_JOB_RELOAD)
                id = host->running->id;
    pthread_mutex_unlock(&host->mutex);
    return id;
}

/* The running job, if it is an exec or repl statement with a reload queued behind it, is
 * interrupted once PREEMPT_AFTER_MS have passed since both were so: a statement does not
 * hold reloads back for its whole deadline. Loop thread. */
static void on_preempt(uv_timer_t *timer) {
    struct py_host *host = timer->data;
    uint64_t id = statement_holding_a_reload(host);
    if (id && atomic_load(&host->interrupt_job_id) != id) {
        log_info("job %llu (a statement) is interrupted: a reload has waited %d ms behind it",
                 (unsigned long long)id, PREEMPT_AFTER_MS);
        interrupt_running(host, id, PY_INTERRUPT_PREEMPT);
    }
}

/* Arms the preempt timer for the running statement when a reload is queued behind it
 * (once per statement), and stops it when none is. */
static void arm_preempt(struct py_host *host) {
    uint64_t id = statement_holding_a_reload(host);
    if (!id) {
        uv_timer_stop(&host->preempt_timer);
        host->preempt_job_id = 0;
    } else if (id != host->preempt_job_id) {
        host->preempt_job_id = id;
        uv_timer_start(&host->preempt_timer, on_preempt, PREEMPT_AFTER_MS, 0);
    }
}

static void arm_deadline(struct py_host *host) {
    pthread_mutex_lock(&host->mutex);
    struct py_job *job = host->running;
    uint64_t id = job ? job->id : 0;
    uint64_t started = job ? job->started_ns : 0;
    unsigned timeout = job ? job->timeout_ms : 0;
    pthread_mutex_unlock(&host->mutex);
    if (id == host->deadline_job_id)
        return;
    host->deadline_job_id = id;
    if (!id) {
        uv_timer_stop(&host->deadline_timer);
        return;
    }
    uint64_t now = uv_hrtime();
    uint64_t elapsed_ms = now > started ? (now - started) / 1000000 : 0;
    uint64_t wait = host->stopping && host->grace_ms < timeout ? host->grace_ms : timeout;
    uv_timer_start(&host->deadline_timer, on_deadline, elapsed_ms >= wait ? 0 : wait - elapsed_ms, 0);
}

static void on_handle_closed(uv_handle_t *handle) {
    struct py_host *host = handle->data;
    if (--host->handles_open > 0)
        return;
    void (*cb)(void *) = host->close_cb;
    void *data = host->close_data;
    for (size_t i = 0; i < host->n_roots; i++)
        free(host->roots[i]);
    for (size_t i = 0; i < host->n_paths; i++)
        free(host->paths[i]);
    free(host->roots);
    free(host->paths);
    free(host->venv);
    for (size_t i = 0; i < host->n_loaded; i++)
        free(host->loaded[i]);
    free(host->loaded);
    json_decref(host->entry_end);
    pthread_mutex_destroy(&host->mutex);
    pthread_cond_destroy(&host->cond);
    the_host = NULL;
    free(host);
    if (cb)
        cb(data);
}

static void on_async(uv_async_t *async) {
    struct py_host *host = async->data;
    pthread_mutex_lock(&host->mutex);
    struct py_job *done = host->done_head;
    host->done_head = host->done_tail = NULL;
    bool exited = host->exited;
    uint64_t loaded_generation = host->loaded_generation;
    json_t *entry_end = host->entry_end;
    host->entry_end = NULL;
    pthread_mutex_unlock(&host->mutex);

    if (loaded_generation != host->loaded_notified && host->on_loaded_files) {
        host->loaded_notified = loaded_generation;
        host->on_loaded_files(host->data);
    }
    if (entry_end && host->on_entry_end)
        host->on_entry_end(entry_end, host->data);
    else
        json_decref(entry_end);

    while (done) {
        struct py_job *next = done->next;
        done->next = NULL;
        done->done(done, done->data);
        done = next;
    }
    if (exited) {
        if (host->thread_started) {
            pthread_join(host->thread, NULL);
            host->thread_started = false;
            uv_close((uv_handle_t *)&host->async, on_handle_closed);
            uv_close((uv_handle_t *)&host->deadline_timer, on_handle_closed);
            uv_close((uv_handle_t *)&host->preempt_timer, on_handle_closed);
        }
        return;
    }
    arm_deadline(host);
    arm_preempt(host);
}

static char **copy_strings(const char *const *items, size_t n) {
    char **copy = calloc(n + 1, sizeof(*copy));
    for (size_t i = 0; copy && i < n; i++) {
        copy[i] = strdup(items[i]);
        if (!copy[i]) {
            while (i > 0)
                free(copy[--i]);
            free(copy);
            return NULL;
        }
    }
    return copy;
}

int py_host_start(uv_loop_t *loop, const struct py_host_options *options,
                  struct py_host **out, char *err, size_t errlen) {
    if (the_host) {
        snprintf(err, errlen, "the interpreter is already running");
        return -EBUSY;
    }
    struct py_host *host = calloc(1, sizeof(*host));
    if (!host) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    host->loop = loop;
    host->roots = copy_strings(options->roots, options->n_roots);
    host->n_roots = options->n_roots;
    host->paths = copy_strings(options->paths, options->n_paths);
    host->n_paths = options->n_paths;
    host->venv = options->venv ? strdup(options->venv) : NULL;
    host->on_loaded_files = options->on_loaded_files;
    host->on_entry_end = options->on_entry_end;
    host->data = options->data;
    pthread_mutex_init(&host->mutex, NULL);
    pthread_cond_init(&host->cond, NULL);
    if (!host->roots || !host->paths) {
        host->handles_open = 0;
        snprintf(err, errlen, "out of memory");
        free(host->roots);
        free(host->paths);
        free(host);
        return -ENOMEM;
    }
    uv_async_init(loop, &host->async, on_async);
    host->async.data = host;
    uv_timer_init(loop, &host->deadline_timer);
    host->deadline_timer.data = host;
    uv_timer_init(loop, &host->preempt_timer);
    host->preempt_timer.data = host;
    host->handles_open = 3;
    the_host = host;

    int r = -pthread_create(&host->thread, NULL, python_thread_main, host);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the python thread: %s", strerror(-r));
        goto fail;
    }
    host->thread_started = true;
    pthread_mutex_lock(&host->mutex);
    while (!host->init_done)
        pthread_cond_wait(&host->cond, &host->mutex);
    r = host->init_status;
    pthread_mutex_unlock(&host->mutex);
    if (r < 0) {
        snprintf(err, errlen, "%s", host->init_error);
        pthread_join(host->thread, NULL);
        host->thread_started = false;
        goto fail;
    }
    *out = host;
    return 0;

fail:
    uv_close((uv_handle_t *)&host->async, on_handle_closed);
    uv_close((uv_handle_t *)&host->deadline_timer, on_handle_closed);
    uv_close((uv_handle_t *)&host->preempt_timer, on_handle_closed);
    return r;
}

struct py_job *py_job_new(enum py_job_kind kind, json_t *input, unsigned timeout_ms,
                          py_job_done_cb done, void *data) {
    struct py_job *job = calloc(1, sizeof(*job));
    if (!job) {
        json_decref(input);
        return NULL;
    }
    job->kind = kind;
    job->input = input ? input : json_object();
    job->timeout_ms = timeout_ms;
    job->done = done;
    job->data = data;
    return job;
}

void py_job_free(struct py_job *job) {
    if (!job)
        return;
    json_decref(job->input);
    json_decref(job->output);
    free(job);
}

int py_host_submit(struct py_host *host, struct py_job *job) {
    pthread_mutex_lock(&host->mutex);
    if (host->stopping) {
        pthread_mutex_unlock(&host->mutex);
        return -ESHUTDOWN;
    }
    job->id = ++host->next_job_id;
    job->next = NULL;
    bool idle = !host->running && !host->queue_head;
    if (idle)
        host->armed_at_submit = job->id;
    if (host->queue_tail)
        host->queue_tail->next = job;
    else
        host->queue_head = job;
    host->queue_tail = job;
    host->queued++;
    pthread_cond_signal(&host->cond);
    pthread_mutex_unlock(&host->mutex);
    if (idle) {
        /* It starts now: its deadline runs from here (the start differs by microseconds). */
        host->deadline_job_id = job->id;
        uv_timer_start(&host->deadline_timer, on_deadline, job->timeout_ms, 0);
    } else if (job->kind == PY_JOB_RELOAD) {
        arm_preempt(host);
    }
    return 0;
}

size_t py_host_cancel(struct py_host *host, bool (*match)(const struct py_job *job, void *arg),
                      void *arg, enum py_interrupt reason, const char *message) {
    struct py_job *cancelled = NULL, **tail = &cancelled;
    uint64_t running = 0;
    size_t n = 0;
    pthread_mutex_lock(&host->mutex);
    for (struct py_job **p = &host->queue_head; *p;) {
        struct py_job *job = *p;
        if (!match(job, arg)) {
            p = &job->next;
            continue;
        }
        *p = job->next;
        if (host->queue_tail == job)
            host->queue_tail = NULL;
        host->queued--;
        job->next = NULL;
        *tail = job;
        tail = &job->next;
    }
    if (!host->queue_tail) /* the tail was cancelled: find the new one */
        for (struct py_job *q = host->queue_head; q; q = q->next)
            host->queue_tail = q;
    if (host->running && match(host->running, arg))
        running = host->running->id;
    pthread_mutex_unlock(&host->mutex);

    if (running && atomic_load(&host->interrupt_job_id) != running) {
        interrupt_running(host, running, reason);
        n++;
    }
    while (cancelled) {
        struct py_job *next = cancelled->next;
        cancelled->next = NULL;
        job_fail(cancelled, json_pack("{s:s, s:s}", "code", PROTOCOL_E_INTERRUPTED, "message",
                                      message));
        cancelled->done(cancelled, cancelled->data);
        cancelled = next;
        n++;
    }
    return n;
}

uint64_t py_host_running(struct py_host *host, const char **kind, uint64_t *age_ms) {
    uint64_t id = 0;
    pthread_mutex_lock(&host->mutex);
    if (host->running) {
        id = host->running->id;
        if (kind)
            *kind = py_job_kind_name(host->running->kind);
        if (age_ms)
            *age_ms = (uv_hrtime() - host->running->started_ns) / 1000000;
    }
    pthread_mutex_unlock(&host->mutex);
    return id;
}

void py_host_run_ended(struct py_host *host) {
    py_prefork_run_ended();
    pthread_mutex_lock(&host->mutex);
    pthread_cond_signal(&host->cond);
    pthread_mutex_unlock(&host->mutex);
}

size_t py_host_queued(struct py_host *host) {
    pthread_mutex_lock(&host->mutex);
    size_t n = host->queued;
    pthread_mutex_unlock(&host->mutex);
    return n;
}

int py_host_loaded_files(struct py_host *host, uint64_t *generation, char ***paths, size_t *n) {
    pthread_mutex_lock(&host->mutex);
    if (host->loaded_generation == *generation) {
        pthread_mutex_unlock(&host->mutex);
        return 0;
    }
    char **copy = calloc(host->n_loaded + 1, sizeof(*copy));
    size_t k = 0;
    for (; copy && k < host->n_loaded; k++)
        if (!(copy[k] = strdup(host->loaded[k])))
            break;
    bool complete = copy && k == host->n_loaded;
    if (complete)
        *generation = host->loaded_generation;
    pthread_mutex_unlock(&host->mutex);
    if (!complete) {
        for (size_t i = 0; copy && i < k; i++)
            free(copy[i]);
        free(copy);
        return -ENOMEM;
    }
    *paths = copy;
    *n = k;
    return 1;
}

size_t py_host_modules_loaded(struct py_host *host) {
    return atomic_load(&host->modules_loaded);
}

void py_host_stop(struct py_host *host, unsigned grace_ms, void (*close_cb)(void *data), void *data) {
    host->close_cb = close_cb;
    host->close_data = data;
    host->grace_ms = grace_ms;
    pthread_mutex_lock(&host->mutex);
    host->stopping = true;
    struct py_job *queued = host->queue_head;
    host->queue_head = host->queue_tail = NULL;
    host->queued = 0;
    pthread_cond_broadcast(&host->cond);
    pthread_mutex_unlock(&host->mutex);

    while (queued) {
        struct py_job *next = queued->next;
        queued->next = NULL;
        json_t *error = json_pack("{s:s, s:s}", "code", PROTOCOL_E_SHUTTING_DOWN,
                                  "message", "pyhotd is stopping");
        job_fail(queued, error);
        queued->done(queued, queued->data);
        queued = next;
    }
    /* The running job, if any, gets grace_ms before it is interrupted. */
    host->deadline_job_id = 0;
    arm_deadline(host);
}
