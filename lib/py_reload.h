#ifndef PYHOT_PY_RELOAD_H
#define PYHOT_PY_RELOAD_H

#include <jansson.h>

/*
 * The reload engine's entry on the python thread (GIL held; called by py_host.c for
 * PY_JOB_RELOAD jobs). docs/reload.md describes the semantics; the steps that are Python
 * by nature (the sys.modules index, compile, snapshot, importlib.reload, rollback) are in
 * lib/py_support.py, compiled into the daemon.
 *
 * input: {"paths": [absolute paths from a batch], "targets": [module names or paths from a
 *         reload command]}; either may be absent.
 * Returns a new reference to {"reloads": [reload event bodies], "batch": batch event
 * body}, where a failed batch is still a result (its "result" says error/rolled_back).
 * Returns NULL with *error set (a new protocol error object) when the request itself is
 * wrong: code "not_found" for a target that names no loaded module or watched file, or
 * "python_error" when the engine itself raised.
 */
json_t *py_reload_run(json_t *input, json_t **error);

#endif
