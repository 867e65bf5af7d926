#ifndef PYHOT_PY_INTERNAL_H
#define PYHOT_PY_INTERNAL_H

/*
 * Shared by the py_*.c files only (the only ones that include Python.h). Every function
 * here must be called on the python thread with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct sandbox_spec;

/* ---- py_json.c ---- */

/* Converts dict (str keys), list, tuple, str, int, float, bool and None to JSON; any other
 * object becomes its repr() string. Returns a new reference; NULL only on ENOMEM (the
 * Python error state is cleared either way). Depth is capped at 64 levels. */
json_t *py_to_json(PyObject *obj);

/* Converts a JSON value to a new Python reference (object -> dict, array -> list, ...).
 * Returns NULL with a Python exception set on failure. */
PyObject *py_from_json(json_t *value);

/* The pending exception as one normalised object with its traceback attached, and the
 * error state cleared (what PyErr_GetRaisedException does from 3.12 on). New reference,
 * or NULL when nothing was raised. */
PyObject *py_take_exception(void);

/* Turns the pending Python exception into a protocol error object {"code": code,
 * "message", "type", "file", "line", "traceback"} through _pyhot.describe_exception, and
 * clears it. Returns a new reference (never NULL except on ENOMEM). */
json_t *py_error_from_exception(const char *code);

/* The function that turns an exception into an error object for py_error_from_exception
 * (_pyhot.describe_exception; a new reference is kept), or NULL to drop it (before
 * Py_FinalizeEx). Without one, the error object has only type and message. */
void py_json_set_describe(PyObject *fn);

/* Calls module.<name>(*args) for any module object (borrowed), e.g. _pyhot_reload, where
 * args is a JSON array (borrowed; NULL: no arguments) converted to Python. Returns the
 * result converted to JSON (new reference), or NULL with *error set to a new error object
 * (internal_error when there is no such attribute, python_error when it raised). */
json_t *py_module_call(PyObject *module, const char *name, json_t *args, json_t **error);

/* Compiles source (a .py file of lib/ compiled into the daemon; filename "<pyhot>/FILE.py" names it
 * in tracebacks) and runs it as the module name, which sys.modules then holds. Returns a new
 * reference to the module, or NULL with a Python exception set. */
PyObject *py_module_from_source(const char *name, const char *filename, const char *source);

/* ---- py_host.c ---- */

/* Calls _pyhot.<name>(*args) where args is a JSON array (borrowed) converted to Python.
 * Returns the result converted to JSON (new reference), or NULL with *error set to a new
 * error object (py_error_from_exception with code python_error) when it raised. */
json_t *py_support_call(const char *name, json_t *args, json_t **error);

/* ---- py_reload.c ---- */

/* Compiles lib/py_reload.py (built in) and runs it as module _pyhot_reload, after _pyhot.
 * Returns 0, or -1 with a Python exception set. */
int py_reload_init(void);

/* Compiles and runs the built-in Python modules beside the engine: `pyhot` (lib/py_api.py,
 * the public in-daemon API) and the framework adapters (lib/py_adapter*.py), after
 * py_reload_init. Returns 0, or -1 with a Python exception set. */
int py_api_init(void);

/* Sets the engine's options from a job's input: "strategy" ("dependents" or "module") and
 * "mode" ("definitions" or "module"), each only when present. Returns 0, or -1 with *error
 * set to a new protocol error object. */
int py_reload_configure(json_t *input, json_t **error);

/* ---- py_run.c ---- */

/* Creates the _pyhot_run module in sys.modules: the C functions of lib/py_run.c (emit,
 * finish, register, unregister, cancel, sleep) and lib/py_run.py run in the same
 * namespace, after _pyhot. Keeps the original time.sleep. Returns 0, or -1 with a Python
 * exception set. */
int py_run_init(void);

/* Drops py_run's references before Py_FinalizeEx. */
void py_run_fini(void);

/* A PY_JOB_RUN job's work (docs/run.md): starts an in-process run on a thread of its own
 * (-> {"started": true, "thread": name}) or forks an isolated one (-> {"pid", "stdout_fd",
 * "stderr_fd", "isolated": true}; the loop thread owns the fds from then on). Returns at
 * once; NULL with *error set (a new protocol error object) when the run cannot start. */
json_t *py_run_start(json_t *input, json_t **error);

/* In a child forked for an isolated run (py_prefork.c), before its request: the run's
 * Python set-up that no request decides (py_run.py prepare_isolated), with its dry run
 * when dry_run (not when the request is already waiting: it would only come first).
 * Exits (status 2) when it fails. */
void py_run_child_prepare(bool dry_run);

/* In that child, once input (its request, as py_run_start got it) has come: the run's
 * working directory and rlimits, then for a sandboxed run (early: the settings it was
 * unshared with, NULL for a run only isolated) the rest of the sandbox (sandbox_restrict,
 * its read and write paths from input), the memory holder, the process limit
 * (sandbox_limit_processes), then the script. Never returns: the process exits
 * with the script's status, 2 when the run could not start, 125 when a sandbox step failed. */
__attribute__((noreturn)) void py_run_child_main(json_t *input, const struct sandbox_spec *early);

/* In that child: a sandbox step before the request failed (why); exits 125 with the message
 * every failed sandbox step gives. */
__attribute__((noreturn)) void py_run_child_refuse(const char *why);

/* In the daemon, right after it forked a ready child (isolated, or sandboxed): goes once
 * through what the hand-off of the last run of that kind did on this thread (the sandbox's
 * plan, the request's JSON), discarding the results. The fork left every page shared with
 * the child; the first write to each copies it (a page fault, about 2 us here), and this
 * takes those copies now, while idle, rather than in the next request's path. */
void py_run_rehearse(bool sandboxed);

/* ---- py_prefork.c: ready children (docs/run.md "Ready children") ---- */

/* Starts the isolated run of input (early NULL) or the sandboxed one (early: the settings
 * sandbox_unshare needs, built by py_run.c; the request-dependent ones are in input) in a
 * ready child of its kind whose interpreter state is current, or, when there is none, in
 * a child forked now (the pool's size and maximum age: py_prefork_configure). Returns the
 * job's output {"pid", "stdout_fd", "stderr_fd", "globals_fd", "isolated": true}
 * (run_channel.h), or NULL with *error set (a new protocol error object). */
json_t *py_prefork_start(json_t *input, const struct sandbox_spec *early, json_t **error);

/* Sets the pool's size and maximum age from input's "prefork" (0..PY_PREFORK_MAX) and
 * "prefork_max_age_ms" (ms, 0: none), each only when present: the startup and configure
 * jobs' input ([run] prefork, prefork_max_age_ms). The pool follows when idle (a smaller
 * size retires ready children). */
void py_prefork_configure(json_t *input);

/* Whether the pool has work now: a kind asked for with fewer ready children than its
 * size, or a stale child to retire, and neither a job that changed the interpreter's
 * state nor a hand-off whose run has not ended in the last PREFORK_QUIET_MS (py_prefork.c):
 * a fork then would hold up what the loop thread does for them. Python thread; the GIL
 * need not be held. */
bool py_prefork_due(void);

/* One piece of that work (at most one fork), for the python thread when no job waits. */
void py_prefork_step(void);

/* When the idle python thread should look at the pool again although no job came
 * (CLOCK_MONOTONIC ns; 0: not before a job): the end of a quiet period py_prefork_due
 * waits for, the oldest ready child's maximum age, or soon when retired children wait to
 * be reaped (those that are gone are reaped here). Python thread; the GIL need not be
 * held. */
uint64_t py_prefork_wake_ns(void);

/* The interpreter's state may have changed (a job ran, an in-process run ended): ready
 * children forked before are stale, retired instead of used. Any thread. */
void py_prefork_state_changed(void);

/* The interpreter's state as py_prefork_state_changed counts it: equal values, no job
 * between. Any thread. */
uint64_t py_prefork_generation(void);

/* The run of a hand-off ended (py_host_run_ended): the refill need not wait longer.
 * Any thread. */
void py_prefork_run_ended(void);

/* Kills and reaps every ready and retired child (the daemon's stop). Python thread. */
void py_prefork_fini(void);

/* Compiles lib/py_plugins.py (built in) and runs it as module _pyhot_plugins, after
 * _pyhot. Returns 0, or -1 with a Python exception set. py_plugins_fini drops the
 * reference before Py_FinalizeEx. */
int py_plugins_init(void);
void py_plugins_fini(void);

/* A PY_JOB_PLUGIN job's work (docs/plugins.md): input {"path": absolute, "api":
 * "MODULE:ATTR" | null}; loads, reloads or unloads the plugin file as its state on disk
 * says. Returns {"event": {name, path, result, duration_ms, error?} | null, "plugin":
 * {name, path, state, exports, loaded_at, error} | null} (new reference), or NULL with
 * *error set (a new protocol error object) when the host itself failed. */
json_t *py_plugins_load(json_t *input, json_t **error);

#endif
