/* PyObject <-> JSON (py_internal.h): the conversions every py_*.c file uses, and Python
 * errors as protocol error objects. Python thread, GIL held. */
#include "py_internal.h"

#include "protocol.h"

/* _pyhot.describe_exception, or NULL before the support module is loaded. */
static PyObject *describe_exception;

void py_json_set_describe(PyObject *fn) {
    Py_XINCREF(fn);
    Py_XSETREF(describe_exception, fn);
}

PyObject *py_take_exception(void) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (!type)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static json_t *to_json_depth(PyObject *obj, int depth) {
    if (depth > 64)
        return json_string("<too deep>");
    if (obj == Py_None)
        return json_null();
    if (PyBool_Check(obj))
        return json_boolean(obj == Py_True);
    if (PyLong_Check(obj)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (!overflow && !(v == -1 && PyErr_Occurred()))
            return json_integer(v);
        PyErr_Clear();
    }
    if (PyFloat_Check(obj))
        return json_real(PyFloat_AS_DOUBLE(obj));
    if (PyUnicode_Check(obj)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(obj, &len);
        if (s)
            return json_stringn(s, (size_t)len);
        PyErr_Clear();
        /* lone surrogates (e.g. from surrogateescape file names) */
        PyObject *bytes = PyUnicode_AsEncodedString(obj, "utf-8", "backslashreplace");
        if (!bytes) {
            PyErr_Clear();
            return json_string("<unencodable>");
        }
        json_t *j = json_stringn(PyBytes_AS_STRING(bytes), (size_t)PyBytes_GET_SIZE(bytes));
        Py_DECREF(bytes);
        return j;
    }
    if (PyDict_Check(obj)) {
        json_t *o = json_object();
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (o && PyDict_Next(obj, &pos, &key, &value)) {
            const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
            if (!k) {
                PyErr_Clear();
                continue;
            }
            json_object_set_new(o, k, to_json_depth(value, depth + 1));
        }
        return o;
    }
    if (PyList_Check(obj) || PyTuple_Check(obj)) {
        PyObject *seq = PySequence_Fast(obj, "sequence");
        if (!seq) {
            PyErr_Clear();
            return json_null();
        }
        json_t *a = json_array();
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        for (Py_ssize_t i = 0; a && i < n; i++)
            json_array_append_new(a, to_json_depth(PySequence_Fast_GET_ITEM(seq, i), depth + 1));
        Py_DECREF(seq);
        return a;
    }
    PyObject *r = PyObject_Repr(obj);
    if (!r) {
        PyErr_Clear();
        return json_string("<unrepresentable>");
    }
    json_t *j = to_json_depth(r, depth + 1);
    Py_DECREF(r);
    return j;
}

json_t *py_to_json(PyObject *obj) {
    return to_json_depth(obj, 0);
}

PyObject *py_from_json(json_t *value) {
    switch (json_typeof(value)) {
    case JSON_NULL:
        Py_RETURN_NONE;
    case JSON_TRUE:
        Py_RETURN_TRUE;
    case JSON_FALSE:
        Py_RETURN_FALSE;
    case JSON_INTEGER:
        return PyLong_FromLongLong(json_integer_value(value));
    case JSON_REAL:
        return PyFloat_FromDouble(json_real_value(value));
    case JSON_STRING:
        return PyUnicode_DecodeUTF8(json_string_value(value), (Py_ssize_t)json_string_length(value),
                                    "surrogateescape");
    case JSON_ARRAY: {
        size_t n = json_array_size(value);
        PyObject *list = PyList_New((Py_ssize_t)n);
        if (!list)
            return NULL;
        for (size_t i = 0; i < n; i++) {
            PyObject *item = py_from_json(json_array_get(value, i));
            if (!item) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        }
        return list;
    }
    case JSON_OBJECT: {
        PyObject *dict = PyDict_New();
        const char *key;
        json_t *member;
        if (!dict)
            return NULL;
        json_object_foreach(value, key, member) {
            PyObject *item = py_from_json(member);
            if (!item || PyDict_SetItemString(dict, key, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(dict);
                return NULL;
            }
            Py_DECREF(item);
        }
        return dict;
    }
    }
    PyErr_SetString(PyExc_TypeError, "unknown JSON type");
    return NULL;
}

json_t *py_error_from_exception(const char *code) {
    PyObject *exc = py_take_exception();
    json_t *error = NULL;
    if (exc && describe_exception) {
        PyObject *described = PyObject_CallOneArg(describe_exception, exc);
        if (described) {
            error = py_to_json(described);
            Py_DECREF(described);
        } else {
            PyErr_Clear();
        }
    }
    if (!error || !json_is_object(error)) {
        json_decref(error);
        error = json_object();
        if (exc) {
            PyObject *s = PyObject_Str(exc);
            const char *m = s ? PyUnicode_AsUTF8(s) : NULL;
            json_object_set_new(error, "type", json_string(Py_TYPE(exc)->tp_name));
            json_object_set_new(error, "message", json_string(m ? m : "?"));
            Py_XDECREF(s);
            PyErr_Clear();
        }
    }
    Py_XDECREF(exc);
    json_object_set_new(error, "code", json_string(code));
    if (!json_object_get(error, "message"))
        json_object_set_new(error, "message", json_string("Python error"));
    return error;
}

json_t *py_module_call(PyObject *module, const char *name, json_t *args, json_t **error) {
    *error = NULL;
    PyObject *fn = PyObject_GetAttrString(module, name);
    if (!fn) {
        *error = py_error_from_exception(PROTOCOL_E_INTERNAL);
        return NULL;
    }
    PyObject *list = args ? py_from_json(args) : PyList_New(0);
    PyObject *tuple = list ? PySequence_Tuple(list) : NULL;
    Py_XDECREF(list);
    PyObject *result = tuple ? PyObject_CallObject(fn, tuple) : NULL;
    Py_XDECREF(tuple);
    Py_DECREF(fn);
    if (!result) {
        *error = py_error_from_exception(PROTOCOL_E_PYTHON);
        return NULL;
    }
    json_t *j = py_to_json(result);
    Py_DECREF(result);
    return j;
}

PyObject *py_module_from_source(const char *name, const char *filename, const char *source) {
    PyObject *code = Py_CompileString(source, filename, Py_file_input);
    if (!code)
        return NULL;
    PyObject *module = PyImport_ExecCodeModule(name, code);
    Py_DECREF(code);
    return module;
}
