#ifndef PYHOT_PY_HOST_H
#define PYHOT_PY_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

/*
 * The python thread. It initialises the embedded interpreter (so CPython treats it as
 * the main thread: signal handlers and pending calls run on it), then takes jobs from a
 * queue, runs each with the GIL held, and posts the finished job back to the loop thread
 * through a uv_async_t. The loop thread never waits on it (except once, at start, until
 * the interpreter is initialised).
 *
 * Deadlines: every job has one. When it passes, the loop thread marks the job's id and
 * sends SIGUSR1 to the python thread; the Python-level handler (registered with
 * signal.signal, so CPython runs it between bytecodes and after EINTR, see
 * Modules/signalmodule.c) raises TimeoutError if the marked id is still the running job.
 * A late signal never hits the next job. The signal is re-sent every second until the
 * job ends, in case the code caught the first TimeoutError.
 *
 * SIGUSR1 must be blocked in every other thread: py_host_block_signals() does that for
 * the calling thread, and must be called in main() before any thread is created.
 *
 * No PyObject leaves this component: job inputs and outputs are jansson values, owned by
 * the job, handed between threads with the job (one owner at a time).
 */
struct py_host;

enum py_job_kind {
    PY_JOB_STARTUP,  /* input {"import": bool, "entry": str|null} -> import roots, start entry */
    PY_JOB_RELOAD,   /* input {"paths": [..], "targets": [..]} -> {"reloads","batch"} or error */
    PY_JOB_EXEC,     /* input {"code": str} -> {"stdout","stderr","value"} or error */
    PY_JOB_MODULES,  /* input {"pattern": str|null} -> {"modules": [...]} */
    PY_JOB_CONFIGURE, /* input {"add_roots", "remove_roots", "import", "strategy", "mode",
                         "prefork", "prefork_max_age_ms" (the last four optional)} ->
                         {"imported", "errors"}: a configuration reload's interpreter side */
    PY_JOB_RUN,      /* input: the run request (docs/run.md) + "run_id" -> started, or for
                        --isolate {"pid", "stdout_fd", "stderr_fd"} (run_channel.h) */
    PY_JOB_PRELOAD,  /* input {"modules": [..]} -> {"imported": [..], "errors": [..]} */
    PY_JOB_REPL,     /* input {"source": str} -> {"incomplete": bool, "stdout", "stderr"} */
    PY_JOB_PLUGIN,   /* input {"path", "api"} -> {"event", "plugin"} (py_plugins_load) */
};

/* Why a running job is interrupted; the python thread raises (lib/py_support.py):
 * TimeoutError for its deadline, KeyboardInterrupt for the others. */
enum py_interrupt {
    PY_INTERRUPT_DEADLINE = 1,   /* its deadline passed */
    PY_INTERRUPT_CLIENT = 2,     /* its client asked (the interrupt command: Ctrl-C) */
    PY_INTERRUPT_GONE = 3,       /* its client disconnected */
    PY_INTERRUPT_PREEMPT = 4,    /* an exec or repl statement held a queued reload back */
};

struct py_job;
typedef void (*py_job_done_cb)(struct py_job *job, void *data);

struct py_job {
    uint64_t id;              /* set by py_host_submit */
    enum py_job_kind kind;
    unsigned timeout_ms;      /* deadline from the moment the job starts running */
    json_t *input;            /* owned by the job */

    /* Filled by the python thread, read on the loop thread in done(). */
    bool ok;                  /* false: output holds {"code", "message", ...error details} */
    json_t *output;           /* owned by the job */
    bool timed_out;           /* the deadline passed while it ran */
    uint64_t started_ns;      /* uv_hrtime() */
    uint64_t finished_ns;

    py_job_done_cb done;      /* called on the loop thread; the callee owns the job */
    void *data;
    struct py_job *next;      /* queue link, owned by py_host while queued */
};

struct py_host_options {
    const char *const *roots;     /* watch roots (realpaths): first on sys.path, and only
                                     modules under them are reloadable */
    size_t n_roots;
    const char *const *paths;     /* further sys.path entries, after the roots */
    size_t n_paths;
    const char *venv;             /* a virtual environment to import from, or NULL */
    /* Called on the loop thread, before the finished jobs' callbacks, when a job changed
     * the list py_host_loaded_files returns; may be NULL. */
    void (*on_loaded_files)(void *data);
    /* Called on the loop thread when the entry's function (--entry) ended: end is
     * {"entry": "MODULE:FUNCTION", "state": "returned" | "failed", "error": {...} when it
     * raised}, owned by the callee. May be NULL. */
    void (*on_entry_end)(json_t *end, void *data);
    void *data;
};

/* Blocks SIGUSR1 in the calling thread (and so in threads it creates later). Call from
 * main() before any thread exists. Returns 0 or a negative errno. */
int py_host_block_signals(void);

/* Starts the python thread, initialises the interpreter and waits until that is done.
 * Returns 0 and sets *out, or a negative errno with a message in err (e.g. PyConfig
 * failure). The host posts finished jobs on loop. */
int py_host_start(uv_loop_t *loop, const struct py_host_options *options,
                  struct py_host **out, char *err, size_t errlen);

/* Allocates a job of kind with input (stolen) and timeout_ms; NULL on ENOMEM (input is
 * released). */
struct py_job *py_job_new(enum py_job_kind kind, json_t *input, unsigned timeout_ms,
                          py_job_done_cb done, void *data);

/* Frees a job, its input and output. NULL is allowed. */
void py_job_free(struct py_job *job);

/* Queues job (the host owns it until done() hands it back). Returns 0, or -ESHUTDOWN
 * when the host is stopping (the job is not taken). Loop thread only. */
int py_host_submit(struct py_host *host, struct py_job *job);

/* Cancels the jobs for which match(job, arg) is true: queued ones leave the queue and are
 * finished (done() called now) with ok=false, code "interrupted" and message; the running
 * one is interrupted for reason as a deadline interrupts (SIGUSR1; its code gets the
 * exception of reason) and finishes when its code returns. Returns how many were
 * cancelled or interrupted. Loop thread only.
 *
 * Besides, an exec or repl job that runs while a reload job waits in the queue is
 * interrupted with PY_INTERRUPT_PREEMPT after PREEMPT_AFTER_MS (1000 ms, py_host.c). */
size_t py_host_cancel(struct py_host *host, bool (*match)(const struct py_job *job, void *arg),
                      void *arg, enum py_interrupt reason, const char *message);

/* What the python thread runs now: 0 when idle, else fills the job's id, kind name and
 * age in ms. Never waits on the python thread beyond a short mutex. */
uint64_t py_host_running(struct py_host *host, const char **kind, uint64_t *age_ms);

/* Jobs queued and not yet started. */
size_t py_host_queued(struct py_host *host);

/* The files (absolute, realpath'd) of the loaded modules under the watch roots, as the
 * reload engine's index held them after the last job that changed it. When the list is
 * newer than *generation (0 at first), sets *paths (a malloc'd array of malloc'd strings
 * the caller frees) and *n, updates *generation and returns 1; returns 0 when nothing
 * changed, -ENOMEM. Loop thread; never waits on the python thread beyond a short mutex. */
int py_host_loaded_files(struct py_host *host, uint64_t *generation, char ***paths, size_t *n);

/* len(sys.modules) after the last job. */
size_t py_host_modules_loaded(struct py_host *host);

/* "3.11.2": the embedded interpreter's version (static string). */
const char *py_host_python_version(void);

/* Name of a job kind ("startup", "reload", "exec", "modules", "configure", "run",
 * "preload", "repl", "plugin"). */
const char *py_job_kind_name(enum py_job_kind kind);

/* Ready children (docs/run.md "Ready children"): isolated and sandboxed runs' children
 * forked before their requests. At most PY_PREFORK_MAX per kind ([run] prefork). */
#define PY_PREFORK_MAX 16

struct py_prefork_stats {
    unsigned ready_isolated;   /* ready now, per kind */
    unsigned ready_sandboxed;
    uint64_t hits;             /* runs handed to a ready child */
    uint64_t misses;           /* runs that forked their own child */
    uint64_t retired;          /* ready children killed unused (stale, settings changed) */
};

/* The pool's counters, from any thread (lib/py_prefork.c). */
void py_prefork_stats(struct py_prefork_stats *out);

/* A run ended (its reply is out): the python thread, when idle, may refill the ready
 * children now rather than a while after the hand-off (a fork stalls the page faults of
 * the daemon's other threads while it copies the page tables, so it waits until the run's
 * output has gone), or after an in-process run once the interpreter has been quiet for a
 * while (lib/py_prefork.c). Loop thread. */
void py_host_run_ended(struct py_host *host);

/* Stops the host: queued jobs are finished with ok=false, code "shutting_down"; the
 * running job gets grace_ms to end, then is interrupted; the interpreter is finalised
 * (Py_FinalizeEx) and the thread joined; then the libuv handles are closed and
 * close_cb(data) runs from the loop. Loop thread only; the loop must keep running. */
void py_host_stop(struct py_host *host, unsigned grace_ms, void (*close_cb)(void *data),
                  void *data);

#endif
