#ifndef PYHOT_PY_INTERNAL_H
#define PYHOT_PY_INTERNAL_H

/*
 * Shared by the py_*.c files only (the only ones that include Python.h). Every function
 * here must be called on the python thread with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <jansson.h>

/* Converts dict (str keys), list, tuple, str, int, float, bool and None to JSON; any other
 * object becomes its repr() string. Returns a new reference; NULL only on ENOMEM (the
 * Python error state is cleared either way). Depth is capped at 64 levels. */
json_t *py_to_json(PyObject *obj);

/* Converts a JSON value to a new Python reference (object -> dict, array -> list, ...).
 * Returns NULL with a Python exception set on failure. */
PyObject *py_from_json(json_t *value);

/* Turns the pending Python exception into a protocol error object {"code": code,
 * "message", "type", "file", "line", "traceback"} through _pyhot.describe_exception, and
 * clears it. Returns a new reference (never NULL except on ENOMEM). */
json_t *py_error_from_exception(const char *code);

/* Calls _pyhot.<name>(*args) where args is a JSON array (borrowed) converted to Python.
 * Returns the result converted to JSON (new reference), or NULL with *error set to a new
 * error object (py_error_from_exception with code python_error) when it raised. */
json_t *py_support_call(const char *name, json_t *args, json_t **error);

/* The same for any module object (borrowed), e.g. _pyhot_reload. */
json_t *py_module_call(PyObject *module, const char *name, json_t *args, json_t **error);

/* Compiles lib/py_reload.py (built in) and runs it as module _pyhot_reload, after _pyhot.
 * Returns 0, or -1 with a Python exception set. */
int py_reload_init(void);

/* Sets the reload strategy ("dependents" or "module"). Returns 0, or -1 with *error set
 * to a new protocol error object. */
int py_reload_set_strategy(const char *strategy, json_t **error);

/* Creates the _pyhot_run module (lib/py_run.c: emit, finish, register, unregister,
 * cancel, sleep) in sys.modules and keeps the original time.sleep. Returns 0, or -1 with
 * a Python exception set. */
int py_run_init(void);

/* Drops py_run's references before Py_FinalizeEx. */
void py_run_fini(void);

/* A PY_JOB_RUN job's work (docs/run.md): starts an in-process run on a thread of its own
 * (-> {"started": true, "thread": name}) or forks an isolated one (-> {"pid", "stdout_fd",
 * "stderr_fd", "isolated": true}; the loop thread owns the fds from then on). Returns at
 * once; NULL with *error set (a new protocol error object) when the run cannot start. */
json_t *py_run_start(json_t *input, json_t **error);

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
