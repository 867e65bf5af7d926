#include "py_internal.h"

#include "run_channel.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"
#include "sandbox.h"
#include "py_run_source.h"

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
static PyObject *run_module;       /* _pyhot_run: the C functions and lib/py_run.py */
static json_t *last_input[2];      /* of the last isolated and sandboxed run: py_run_rehearse */
static struct {                    /* found_paths' last answer */
    uint64_t generation;
    char *target;
    json_t *paths;
} found_cache;

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
    run_channel_post(run_id, json_pack("{s:s, s:s%}", "stream", stream, "data", s, (size_t)len));
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
    run_channel_post(run_id, json_pack("{s:b, s:o}", "end", 1, "result", py_to_json(result)));
    /* What the run did to the interpreter is what ready children must not miss. */
    py_prefork_state_changed();
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
    PyModuleDef_HEAD_INIT, "_pyhot_run", "pyhot's runs (lib/py_run.c, lib/py_run.py)", -1, run_methods,
    NULL, NULL, NULL, NULL,
};

/* Creates _pyhot_run with the C functions above, registers it in sys.modules, then runs
 * lib/py_run.py (built in) in its namespace: one module, both halves. */
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
        PyModule_AddStringConstant(module, "__file__", "<pyhot>/py_run.py") < 0 ||
        PyDict_SetItemString(PyImport_GetModuleDict(), "_pyhot_run", module) < 0) {
        Py_DECREF(module);
        return -1;
    }
    /* As PyImport_ExecCodeModule does for a module of its own: __builtins__ first. */
    PyObject *globals = PyModule_GetDict(module); /* borrowed */
    PyObject *builtins = PyImport_ImportModule("builtins");
    PyObject *code = builtins && PyDict_SetItemString(globals, "__builtins__", builtins) == 0
                         ? Py_CompileString(py_run_source, "<pyhot>/py_run.py", Py_file_input)
                         : NULL;
    PyObject *result = code ? PyEval_EvalCode(code, globals, globals) : NULL;
    Py_XDECREF(builtins);
    Py_XDECREF(code);
    Py_XDECREF(result);
    if (!result) {
        Py_DECREF(module);
        return -1;
    }
    run_module = module;
    return 0;
}

void py_run_fini(void) {
    free(found_cache.target);
    json_decref(found_cache.paths);
    memset(&found_cache, 0, sizeof(found_cache));
    json_decref(last_input[0]);
    json_decref(last_input[1]);
    last_input[0] = last_input[1] = NULL;
    Py_CLEAR(run_module);
    Py_CLEAR(original_sleep);
}

/* ---- isolated runs: the sandbox's plan (python thread) and the child's side ------------- */

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

/* The paths py_run.py's sandbox_read_paths lists for target (NULL: a module or a text),
 * from the last call while the interpreter's state is the one it was asked in
 * (py_prefork_generation) and the target the same: that Python call is most of a plan's
 * time. A path gone since is skipped by the child (sandbox.h, found_paths). New reference,
 * or NULL with *error set. */
static json_t *found_paths(const char *target, json_t **error) {
    uint64_t generation = py_prefork_generation();
    if (found_cache.paths && found_cache.generation == generation &&
        (target && found_cache.target ? strcmp(target, found_cache.target) == 0
                                      : !target && !found_cache.target))
        return json_incref(found_cache.paths);
    json_t *args = json_pack("[s?]", target);
    json_t *paths = py_module_call(run_module, "sandbox_read_paths", args, error);
    json_decref(args);
    char *copy = paths && target ? strdup(target) : NULL;
    if (paths && (copy || !target)) {
        free(found_cache.target);
        json_decref(found_cache.paths);
        found_cache.target = copy;
        found_cache.paths = json_incref(paths);
        found_cache.generation = generation;
    }
    return paths;
}

/* A sandboxed run's plan (docs/run.md "Sandbox"), built on the python thread so that the
 * Python call for the import paths stays out of the child: into early, the settings a
 * child unshares with before its request (sandbox_unshare; no paths), and into input what
 * the child reads after it: "tmpdir", "sandbox_found", "sandbox_read" and "sandbox_write"
 * (the Landlock paths: sandbox_spec's found, read and write paths). input's "sandbox"
 * holds the settings (cmd_runs.c sandbox_settings; the user already resolved). Returns 0,
 * or -1 with *error set. */
static int sandbox_plan_build(json_t *input, struct sandbox_spec *early, json_t **error) {
    json_t *settings = json_object_get(input, "sandbox");
    char err[PATH_MAX + 128] = "";
    memset(early, 0, sizeof(*early));
    const char *network = json_string_value(json_object_get(settings, "network"));
    early->network = network && strcmp(network, "loopback") == 0 ? SANDBOX_NETWORK_LOOPBACK
                                                                  : SANDBOX_NETWORK_NONE;
    early->tmp_size_mb = (unsigned)json_integer_value(json_object_get(settings, "tmp_size_mb"));
    const char *base = getenv("TMPDIR");
    int r = sandbox_prepare(base && base[0] == '/' ? base : "/tmp", err, sizeof(err));
    json_t *uid = json_object_get(settings, "uid");
    if (json_is_integer(uid)) {
        early->change_user = true;
        early->uid = (uid_t)json_integer_value(uid);
        early->gid = (gid_t)json_integer_value(json_object_get(settings, "gid"));
    }
    if (r < 0) {
        *error = json_pack("{s:s, s:s}", "code", PROTOCOL_E_SANDBOX, "message", err);
        return -1;
    }
    json_t *found = found_paths(json_string_value(json_object_get(input, "path")), error);
    if (!found)
        return -1;
    json_t *write = json_deep_copy(json_object_get(settings, "write"));
    const char *cwd = json_string_value(json_object_get(input, "cwd"));
    if (write && cwd)
        json_array_append_new(write, json_string(cwd));
    early->tmpdir = sandbox_tmpdir();
    json_object_set_new(input, "sandbox_found", found);
    json_object_set(input, "sandbox_read", json_object_get(settings, "read") ?: json_array());
    json_object_set_new(input, "sandbox_write", write ? write : json_array());
    json_object_set_new(input, "tmpdir", json_string(early->tmpdir));
    return 0;
}

void py_run_child_prepare(bool dry_run) {
    json_t *error = NULL;
    json_t *args = json_pack("[b]", dry_run);
    json_t *done = args ? py_module_call(run_module, "prepare_isolated", args, &error) : NULL;
    json_decref(args);
    if (!done) {
        const char *tb = json_string_value(json_object_get(error, "traceback"));
        if (tb && write(2, tb, strlen(tb)) < 0)
            _exit(2);
        _exit(2);
    }
    json_decref(done);
}

void py_run_child_refuse(const char *why) {
    /* Exit status 125, as env(1) and timeout(1) use for their own failures. */
    char line[PATH_MAX + 512];
    int n = snprintf(line, sizeof(line), "pyhot: sandbox: %s; the script did not run\n", why);
    if (n > 0 && write(2, line, (size_t)n) < 0)
        _exit(125);
    _exit(125);
}

/* The paths of input's "sandbox_read" or "sandbox_write" as an array of its strings
 * (malloc'd; the child ends with _exit, which frees it). */
static const char *const *child_paths(json_t *input, const char *key, size_t *n) {
    json_t *list = json_object_get(input, key);
    *n = json_array_size(list);
    const char **paths = calloc(*n + 1, sizeof(*paths));
    if (!paths)
        child_fail("the sandbox's paths");
    for (size_t i = 0; i < *n; i++)
        paths[i] = json_string_value(json_array_get(list, i));
    return paths;
}

/* The run's memory holder: a process that shares the run's address space (clone(2) with
 * CLONE_VM, not CLONE_FILES) and only waits to be killed. The kernel tears an address
 * space down when the last process using it is gone (mmput, kernel/fork.c): without a
 * holder that is the run's own exit, about a millisecond for the daemon's image here,
 * between the script's end and the moment the daemon sees the run end. With one, the run's
 * process exits at once and the holder, killed then (its parent-death signal, and the
 * process group of a sandboxed run), tears the memory down off the run's path. It is
 * started after the whole sandbox but the process limit (it is as caged as the script and
 * counts against --pids; sandbox_limit_processes says why the limit comes after it), and
 * not when the daemon is PID 1: orphans go to PID 1 to be reaped, and the daemon reaps
 * only its own children. */
#define HOLDER_STACK_BYTES (64 * 1024)
static char holder_stack[HOLDER_STACK_BYTES] __attribute__((aligned(64)));

static int hold_memory(void *arg) {
    /* Raw system calls that do not fail here: the holder shares the run's memory, its
     * thread-local errno included, and must write nothing the run could see. Its own
     * copies of the run's descriptors go first, so that the run's pipes end with the run. */
    uint64_t all = ~0ULL;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, sizeof(all));
    syscall(SYS_close_range, 0U, ~0U, 0U);
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0L, 0L, 0L);
    if (syscall(SYS_getppid) != (long)(intptr_t)arg)
        syscall(SYS_exit, 0);
    for (;;)
        syscall(SYS_ppoll, NULL, 0L, NULL, NULL, 0L);
    return 0;
}

static void start_memory_holder(void) {
    pid_t self = getpid();
    if (getppid() == 1)
        return;
    /* No exit signal: a "clone" child, which wait(2) without __WALL or __WCLONE does not
     * consider (wait(2), NOTES), so the script's os.wait() and waitpid(-1) see only its own
     * children, and raise ChildProcessError when it has none. A failure (RLIMIT_NPROC:
     * --pids 1) only costs the run its teardown. */
    clone(hold_memory, holder_stack + sizeof(holder_stack), CLONE_VM, (void *)(intptr_t)self);
}

void py_run_child_main(json_t *input, const struct sandbox_spec *early) {
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
    /* The rest of the cage before any of the script's code, or no script at all. */
    struct sandbox_spec spec = {0};
    char why[PATH_MAX + 256];
    if (early) {
        spec = *early;
        spec.read_paths = child_paths(input, "sandbox_read", &spec.n_read);
        spec.found_paths = child_paths(input, "sandbox_found", &spec.n_found);
        spec.write_paths = child_paths(input, "sandbox_write", &spec.n_write);
        spec.pids = (unsigned)json_integer_value(json_object_get(json_object_get(input, "sandbox"), "pids"));
        if (sandbox_restrict(&spec, why, sizeof(why)) < 0)
            py_run_child_refuse(why);
    }
    start_memory_holder();
    if (early && sandbox_limit_processes(&spec, why, sizeof(why)) < 0)
        py_run_child_refuse(why);

    json_t *error = NULL;
    json_t *args = json_pack("[O]", input);
    json_t *code = py_module_call(run_module, "run_request", args, &error);
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

void py_run_rehearse(bool sandboxed) {
    /* Shallow copies here and in py_run_start: the plan only adds keys to the top level. */
    json_t *input = json_copy(last_input[sandboxed]);
    if (!input)
        return;
    json_t *error = NULL;
    struct sandbox_spec early;
    if (sandboxed)
        sandbox_plan_build(input, &early, &error);
    free(json_dumps(input, JSON_COMPACT));
    json_decref(error);
    json_decref(input);
}

json_t *py_run_start(json_t *input, json_t **error) {
    *error = NULL;
    if (json_is_true(json_object_get(input, "isolate"))) {
        struct sandbox_spec early;
        bool sandboxed = json_is_object(json_object_get(input, "sandbox"));
        json_decref(last_input[sandboxed]);
        last_input[sandboxed] = json_copy(input);
        if (sandboxed && sandbox_plan_build(input, &early, error) < 0)
            return NULL;
        return py_prefork_start(input, sandboxed ? &early : NULL, error);
    }
    json_t *args = json_pack("[O]", input);
    json_t *result = py_module_call(run_module, "start_run", args, error);
    json_decref(args);
    return result;
}
