#include "py_internal.h"

#include "py_adapter_aiohttp_source.h"
#include "py_adapter_django_source.h"
#include "py_adapter_fastapi_source.h"
#include "py_adapter_flask_source.h"
#include "py_adapter_sqlalchemy_source.h"
#include "py_adapters_source.h"
#include "py_api_source.h"

/* The public in-daemon module and the framework adapters, in the order they must load:
 * pyhot first (it needs _pyhot_reload), then what the adapters share, then each adapter,
 * which registers its hooks through pyhot (docs/reload.md, "Framework adapters"). */
static const struct {
    const char *name;
    const char *filename;
    const char *source;
} embedded_modules[] = {
    {"pyhot", "<pyhot>/py_api.py", py_api_source},
    {"_pyhot_adapters", "<pyhot>/py_adapters.py", py_adapters_source},
    {"_pyhot_adapter_flask", "<pyhot>/py_adapter_flask.py", py_adapter_flask_source},
    {"_pyhot_adapter_fastapi", "<pyhot>/py_adapter_fastapi.py", py_adapter_fastapi_source},
    {"_pyhot_adapter_django", "<pyhot>/py_adapter_django.py", py_adapter_django_source},
    {"_pyhot_adapter_aiohttp", "<pyhot>/py_adapter_aiohttp.py", py_adapter_aiohttp_source},
    {"_pyhot_adapter_sqlalchemy", "<pyhot>/py_adapter_sqlalchemy.py", py_adapter_sqlalchemy_source},
};

int py_api_init(void) {
    for (size_t i = 0; i < sizeof(embedded_modules) / sizeof(embedded_modules[0]); i++) {
        /* sys.modules holds the module from here on; our reference is not needed. */
        PyObject *module = py_module_from_source(embedded_modules[i].name, embedded_modules[i].filename,
                                                 embedded_modules[i].source);
        if (!module)
            return -1;
        Py_DECREF(module);
    }
    return 0;
}
