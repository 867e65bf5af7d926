#include "py_internal.h"

#include "py_reload.h"

#include <stdio.h>

#include "protocol.h"
#include "py_reload_source.h"

static PyObject *engine; /* _pyhot_reload; python thread only */

int py_reload_init(void) {
    engine = py_module_from_source("_pyhot_reload", "<pyhot>/py_reload.py", py_reload_source);
    return engine ? 0 : -1;
}

int py_reload_configure(json_t *input, json_t **error) {
    static const char *const options[][2] = {{"strategy", "set_strategy"}, {"mode", "set_mode"}};
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++) {
        json_t *value = json_object_get(input, options[i][0]);
        if (!json_is_string(value))
            continue;
        json_t *args = json_pack("[O]", value);
        json_t *result = py_module_call(engine, options[i][1], args, error);
        json_decref(args);
        if (!result)
            return -1;
        json_decref(result);
    }
    return 0;
}

static json_t *resolve_targets(json_t *targets, json_t **error) {
    json_t *args = json_pack("[O]", targets);
    json_t *resolved = py_support_call("resolve_targets", args, error);
    json_decref(args);
    if (!resolved)
        return NULL;
    json_t *unknown = json_object_get(resolved, "unknown");
    if (json_array_size(unknown) > 0) {
        char message[512];
        snprintf(message, sizeof(message), "no loaded module or watched file named '%s'",
                 json_string_value(json_array_get(unknown, 0)));
        *error = json_pack("{s:s, s:s, s:O}", "code", PROTOCOL_E_NOT_FOUND, "message", message,
                           "unknown", unknown);
        json_decref(resolved);
        return NULL;
    }
    json_t *names = json_incref(json_object_get(resolved, "names"));
    json_decref(resolved);
    return names;
}

json_t *py_reload_run(json_t *input, json_t **error) {
    *error = NULL;
    json_t *paths = json_object_get(input, "paths");
    json_t *targets = json_object_get(input, "targets");
    json_t *names = NULL;
    if (json_array_size(targets) > 0) {
        names = resolve_targets(targets, error);
        if (!names)
            return NULL;
    }
    json_t *path_list = json_is_array(paths) ? json_incref(paths) : json_array();
    json_t *batch = json_object_get(input, "batch");
    json_t *args = json_pack("[ooO]", path_list, names ? names : json_array(),
                             json_is_integer(batch) ? batch : json_null());
    json_t *result = py_module_call(engine, "reload_batch", args, error);
    json_decref(args);
    return result;
}
