#include "py_internal.h"

#include "py_plugins_source.h"

static PyObject *plugin_host; /* _pyhot_plugins; python thread only */

int py_plugins_init(void) {
    plugin_host = py_module_from_source("_pyhot_plugins", "<pyhot>/py_plugins.py", py_plugins_source);
    return plugin_host ? 0 : -1;
}

void py_plugins_fini(void) {
    Py_CLEAR(plugin_host);
}

json_t *py_plugins_load(json_t *input, json_t **error) {
    json_t *api = json_object_get(input, "api");
    json_t *args = json_pack("[OO]", json_object_get(input, "path"), api ? api : json_null());
    json_t *result = py_module_call(plugin_host, "load", args, error);
    json_decref(args);
    return result;
}
